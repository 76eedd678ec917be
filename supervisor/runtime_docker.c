/* runtime_docker — instances are containers, driven through the Docker
 * Engine API over cfg->docker_socket with httpc (never blocking).
 *
 * Every operation is a `struct op`: a small state machine whose steps are
 * Docker calls chained by their completion callbacks; it ends in
 * op_finish(), which reports to the supervisor once and frees it. An
 * instance's priv (`struct dpriv`) holds its watchers: the
 * `POST /containers/ID/wait` long-poll (exit detection, no polling) and a
 * followed log stream that keeps inst->logs current (so the last lines of
 * a crashed container are known even after it is removed).
 *
 * API version: `GET /version` once per engine; min(ApiVersion, 1.43).
 * command: split into words (quotes honoured, no shell) and passed as the
 * exec form of CMD, like Docker Compose does with a string `command`.
 * Registry credentials are read from registry_auth_file when a pull starts
 * and live only in the pull's X-Registry-Auth header. */
#include "runtime.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <event2/event.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "docker_util.h"
#include "fsutil.h"
#include "httpc.h"
#include "log.h"

#define API_MAX 143                   /* newest API version we speak */
#define CALL_TIMEOUT_MS 60000L        /* ordinary Engine calls */
#define AUTH_FILE_MAX (1u << 20)
#define ONCE_LOG_LINES 200

struct op;
typedef void (*op_step)(struct op *op, const struct httpc_response *res);

enum op_kind { OP_PULL, OP_START, OP_STOP, OP_ONCE, OP_LOGS, OP_LIST, OP_ADOPT, OP_PRUNE };

struct op {
	enum op_kind kind;
	struct runtime_ctx *rt;
	struct rt_instance *inst;      /* start, stop, logs, adopt */
	struct httpc_req *req;         /* the call in flight */
	op_step next;                  /* its continuation */
	op_step after_version;         /* first step, once the API version is known */
	struct op *wait_next;          /* list of ops waiting for the version */
	struct op *prev, *next_op;     /* live_ops */
	int linked;                    /* in live_ops */
	int deferred;                  /* op_fail_later's event is pending */
	char what[640];                /* "docker create pm-backend-green" */
	char name[128], id[128], image[512];
	char *body;                    /* create payload; pull: first line of the answer */
	char *auth;                    /* X-Registry-Auth header line */
	char *err;                     /* first error seen */
	char *auth_file;               /* start: registry_auth_file, for a pull of a missing image */
	int retried, pulled, container_port, exit_code;
	bool relay;                    /* run_once: log_relay of the service */
	char svc_name[64];             /* run_once, prune: the service */
	enum net_mode network;
	unsigned long timeout_ms;
	/* pull */
	struct docker_pull pull;
	char *line;                    /* NDJSON line being assembled */
	size_t line_len, line_cap;
	time_t last_progress;
	uint64_t pull_timeout_ms, stall_ms;
	struct event *stall;           /* no byte of the pull's answer for stall_ms */
	/* logs, run_once */
	struct logring *out;
	struct docker_demux demux;
	int tail;
	/* prune */
	struct rt_image *imgs;
	size_t n_imgs, i_img;
	cJSON *ctrs;                   /* the container list: images in use */
	/* callbacks */
	rt_done_fn done;
	rt_progress_fn progress;
	rt_exit_fn on_exit;
	rt_once_fn once_done;
	rt_logs_fn logs_done;
	rt_list_fn list_done;
	rt_pruned_fn pruned;
	void *arg;
};

/* Per instance: the watchers of a started or adopted container. */
struct dpriv {
	struct runtime_ctx *rt;
	struct httpc_req *wait_req, *logs_req;
	struct event *retry;           /* re-attach after the engine went away */
	unsigned retry_ms;
	struct docker_demux demux;
	rt_exit_fn on_exit;
	void *exit_arg;
	int exit_reported, stopping;
	int container_port;
	bool relay;                    /* log_relay: output lines into pmd's log */
};

/* Every op not yet finished: an instance released with ops still in flight
 * (pmd stopping while a start runs) abandons them (docker_release); ops
 * alive when pmd exits stay reachable from here, abandoned with the
 * process like their requests in httpc. */
static struct op *live_ops;

/* ---- API version, per engine socket ----------------------------------- */

static struct {
	struct httpc *httpc;            /* cache is per httpc and socket */
	char socket[256];
	char prefix[16];                /* "/v1.41"; "" = unknown */
	int asking;
	struct op *waiting;
} ver;

static void op_call(struct op *op, const char *method, const char *path, const char *body,
	long timeout_ms, httpc_data_fn on_data, op_step next);
static void op_finish(struct op *op);

static void op_fail(struct op *op, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void op_fail(struct op *op, const char *fmt, ...)
{
	va_list ap;
	char *m = NULL;

	va_start(ap, fmt);
	if (vasprintf(&m, fmt, ap) < 0)
		m = NULL;
	va_end(ap);
	if (!op->err)
		op->err = m;
	else
		free(m);
	op_finish(op);
}

/* op_fail with "<what>: <Docker's message or transport error>". */
static void op_fail_res(struct op *op, const struct httpc_response *res)
{
	char *m;

	if (res->error) {
		op_fail(op, "%s: cannot reach the Docker engine at %s: %s", op->what,
			op->rt->cfg->docker_socket, res->error);
		return;
	}
	m = docker_error_text(res->body, res->status);
	op_fail(op, "%s: %s", op->what, m ? m : "failed");
	free(m);
}

static void version_done(void *arg, const struct httpc_response *res)
{
	struct runtime_ctx *rt = arg;
	struct op *w = ver.waiting, *next;
	cJSON *j = NULL;
	int v = 0;
	char *err = NULL;

	ver.asking = 0;
	ver.waiting = NULL;
	if (res->status == 200 && (j = cJSON_Parse(res->body)))
		v = docker_api_version_num(cJSON_GetStringValue(cJSON_GetObjectItem(j, "ApiVersion")));
	cJSON_Delete(j);
	if (v > 0) {
		if (v > API_MAX)
			v = API_MAX;
		snprintf(ver.prefix, sizeof(ver.prefix), "/v%d.%d", v / 100, v % 100);
		log_info("docker engine found socket=%s api=%s", log_q(rt->cfg->docker_socket), ver.prefix + 1);
	} else if (asprintf(&err, "cannot reach the Docker engine at %s: %s", rt->cfg->docker_socket,
	    res->error ? res->error : "unexpected answer to GET /version") < 0) {
		err = NULL;
	}
	for (; w; w = next) {
		next = w->wait_next;
		if (v > 0)
			w->after_version(w, NULL);
		else
			op_fail(w, "%s: %s", w->what, err ? err : "no Docker engine");
	}
	free(err);
}

/* Run op->after_version once the API version of the engine is known. */
static void op_begin(struct op *op, op_step first)
{
	struct runtime_ctx *rt = op->rt;
	struct httpc_opts o = { 0 };
	char *err = NULL;

	op->after_version = first;
	if (ver.httpc != rt->httpc || strcmp(ver.socket, rt->cfg->docker_socket) != 0) {
		ver.httpc = rt->httpc;
		snprintf(ver.socket, sizeof(ver.socket), "%s", rt->cfg->docker_socket);
		ver.prefix[0] = '\0';
		ver.asking = 0;
		ver.waiting = NULL;
	}
	if (ver.prefix[0]) {
		first(op, NULL);
		return;
	}
	op->wait_next = ver.waiting;
	ver.waiting = op;
	if (ver.asking)
		return;
	o.url = "http://docker/version";
	o.unix_socket = rt->cfg->docker_socket;
	o.timeout_ms = 10000;
	o.on_done = version_done;
	o.arg = rt;
	if (httpc_request(rt->httpc, &o, &err)) {
		ver.asking = 1;
		return;
	}
	ver.waiting = NULL;
	op_fail(op, "%s: %s", op->what, err ? err : "cannot start a request");
	free(err);
}

/* ---- calls ------------------------------------------------------------- */

static void op_call_done(void *arg, const struct httpc_response *res)
{
	struct op *op = arg;

	op->req = NULL;
	op->next(op, res);
}

/* Percent-encode s for a query value into out. */
static void urlenc(const char *s, char *out, size_t outsz)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = 0;

	for (; *s && o + 4 < outsz; s++) {
		unsigned char c = (unsigned char)*s;
		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		    c == '-' || c == '_' || c == '.' || c == '~') {
			out[o++] = (char)c;
		} else {
			out[o++] = '%';
			out[o++] = hex[c >> 4];
			out[o++] = hex[c & 15];
		}
	}
	out[o] = '\0';
}

static struct httpc_req *docker_request(struct runtime_ctx *rt, const char *method, const char *path,
	const char *body, const char *header, long timeout_ms, httpc_data_fn on_data,
	httpc_done_fn done, void *arg, char **errp)
{
	char url[2048];
	const char *hdrs[3] = { NULL, NULL, NULL };
	struct httpc_opts o = { 0 };
	int h = 0;

	snprintf(url, sizeof(url), "http://docker%s%s", ver.prefix, path);
	if (body)
		hdrs[h++] = "Content-Type: application/json";
	if (header)
		hdrs[h++] = header;
	o.method = method;
	o.url = url;
	o.unix_socket = rt->cfg->docker_socket;
	o.headers = hdrs;
	o.body = body;
	o.body_len = body ? strlen(body) : 0;
	o.timeout_ms = timeout_ms;
	o.connect_timeout_ms = 5000;
	o.max_body = 32u << 20;
	o.on_data = on_data;
	o.on_done = done;
	o.arg = arg;
	return httpc_request(rt->httpc, &o, errp);
}

static void op_call(struct op *op, const char *method, const char *path, const char *body,
	long timeout_ms, httpc_data_fn on_data, op_step next)
{
	char *err = NULL;

	op->next = next;
	op->req = docker_request(op->rt, method, path, body, op->kind == OP_PULL ? op->auth : NULL,
		timeout_ms, on_data, op_call_done, op, &err);
	if (!op->req) {
		op_fail(op, "%s: %s", op->what, err ? err : "cannot start a request");
		free(err);
	}
}

static struct op *op_new(enum op_kind kind, struct runtime_ctx *rt, void *arg)
{
	struct op *op = calloc(1, sizeof(*op));

	if (op) {
		op->kind = kind;
		op->rt = rt;
		op->arg = arg;
		op->next_op = live_ops;
		if (live_ops)
			live_ops->prev = op;
		live_ops = op;
		op->linked = 1;
	}
	return op;
}

/* Take op out of live_ops (once). */
static void op_unlink(struct op *op)
{
	if (!op->linked)
		return;
	op->linked = 0;
	if (op->prev)
		op->prev->next_op = op->next_op;
	else
		live_ops = op->next_op;
	if (op->next_op)
		op->next_op->prev = op->prev;
	op->prev = op->next_op = NULL;
}

/* NULL ok. */
static void op_free(struct op *op)
{
	if (!op)
		return;
	op_unlink(op);
	free(op->body);
	if (op->auth) {
		explicit_bzero(op->auth, strlen(op->auth));
		free(op->auth);
	}
	free(op->err);
	free(op->auth_file);
	free(op->line);
	if (op->stall)
		event_free(op->stall);
	logring_free(op->out);
	free(op->imgs);
	cJSON_Delete(op->ctrs);
	free(op);
}

/* Report the result to the supervisor and free op. */
static void op_finish(struct op *op)
{
	int ok = op->err == NULL;

	op_unlink(op); /* the callback may release op->inst: not ours to abandon then */
	switch (op->kind) {
	case OP_PULL: case OP_START: case OP_STOP: case OP_ADOPT:
		if (op->done)
			op->done(op->arg, ok, op->err);
		break;
	case OP_PRUNE:
		op->pruned(op->arg, ok, op->err, op->imgs, op->n_imgs);
		break;
	case OP_ONCE:
		op->once_done(op->arg, ok ? op->exit_code : -1, op->err, op->out);
		break;
	case OP_LOGS:
		op->logs_done(op->arg, ok, op->err, op->out);
		break;
	case OP_LIST:
		op->list_done(op->arg, 0, op->err, NULL, 0);
		break;
	}
	op_free(op);
}

/* An op that failed before any call: report from the loop, not from
 * inside the supervisor's call. */
static void op_fail_later_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	op_finish(arg);
}

static void op_fail_later(struct op *op, char *err)
{
	struct timeval now = { 0, 0 };

	op->err = err ? err : strdup("out of memory");
	op->deferred = 1;
	if (event_base_once(op->rt->base, -1, EV_TIMEOUT, op_fail_later_cb, op, &now) < 0)
		op_finish(op);
}

/* ---- watchers: exit (wait) and output (followed logs) ------------------ */

static void watch_start(struct rt_instance *inst);
static void relay_new(struct rt_instance *inst, size_t before);

static void report_exit(struct rt_instance *inst, int code, bool oom)
{
	struct dpriv *p = inst->priv;
	size_t before;

	if (p->exit_reported)
		return;
	p->exit_reported = 1;
	before = logring_total(inst->logs);
	logring_flush(inst->logs);
	relay_new(inst, before);
	log_info("container exited service=%s id=%.12s exit_code=%d oom_killed=%d", inst->service,
		inst->id, code, oom);
	if (p->on_exit)
		p->on_exit(p->exit_arg, inst, code, oom);
}

static void exit_inspected(void *arg, const struct httpc_response *res)
{
	struct rt_instance *inst = arg;
	struct dpriv *p = inst->priv;
	struct docker_container c;

	p->wait_req = NULL;
	if (res->status == 200 && docker_parse_inspect(res->body, 0, &c, NULL) == 0) {
		if (p->retry_ms > 1000)
			log_info("docker engine reachable again service=%s id=%.12s running=%d",
				inst->service, inst->id, c.running);
		p->retry_ms = 1000;
		if (c.running) {
			watch_start(inst); /* the wait ended early: watch again */
			return;
		}
		report_exit(inst, c.exit_code, c.oom);
	} else if (res->status == 404) {
		log_warn("container vanished service=%s id=%.12s", inst->service, inst->id);
		report_exit(inst, 137, false);
	} else {
		/* the engine went away: try again with backoff */
		struct timeval tv = { p->retry_ms / 1000, (p->retry_ms % 1000) * 1000 };
		log_warn("docker engine unreachable, watching again service=%s id=%.12s in_ms=%u error=%s",
			inst->service, inst->id, p->retry_ms, log_q(res->error ? res->error : "unexpected answer"));
		evtimer_add(p->retry, &tv);
		p->retry_ms = p->retry_ms * 2 > 30000 ? 30000 : p->retry_ms * 2;
	}
}

static void inspect_for_exit(struct rt_instance *inst)
{
	struct dpriv *p = inst->priv;
	char path[160];

	snprintf(path, sizeof(path), "/containers/%s/json", inst->id);
	p->wait_req = docker_request(p->rt, "GET", path, NULL, NULL, CALL_TIMEOUT_MS, NULL,
		exit_inspected, inst, NULL);
}

static void wait_done(void *arg, const struct httpc_response *res)
{
	struct rt_instance *inst = arg;
	struct dpriv *p = inst->priv;

	p->wait_req = NULL;
	if (p->stopping)
		return; /* the stop reports the exit */
	if (res->status == 200)
		p->retry_ms = 1000;
	/* the exit code and OOM flag come from inspect (also after errors) */
	inspect_for_exit(inst);
}

static void logs_piece(void *arg, int stream, const char *data, size_t len)
{
	(void)stream;
	logring_feed(arg, data, len);
}

/* log_relay: the lines inst->logs got since it had `before` in total,
 * into pmd's log like the exec runtime's (the newest ones the ring kept). */
static void relay_new(struct rt_instance *inst, size_t before)
{
	struct dpriv *p = inst->priv;
	size_t n = logring_count(inst->logs), fresh = logring_total(inst->logs) - before;

	if (!p->relay)
		return;
	for (size_t k = fresh < n ? n - fresh : 0; k < n; k++)
		log_info("app output service=%s color=%s line=%s", inst->service, inst->color,
			log_q(logring_line(inst->logs, k)));
}

static int follow_data(void *arg, const char *data, size_t len)
{
	struct rt_instance *inst = arg;
	struct dpriv *p = inst->priv;
	size_t before = logring_total(inst->logs);

	docker_demux_feed(&p->demux, data, len, logs_piece, inst->logs);
	relay_new(inst, before);
	return 0;
}

static void follow_done(void *arg, const struct httpc_response *res)
{
	struct rt_instance *inst = arg;
	struct dpriv *p = inst->priv;
	size_t before = logring_total(inst->logs);

	(void)res;
	p->logs_req = NULL;
	logring_flush(inst->logs);
	relay_new(inst, before);
}

static void watch_start(struct rt_instance *inst)
{
	struct dpriv *p = inst->priv;
	char path[200];

	if (!p->wait_req) {
		snprintf(path, sizeof(path), "/containers/%s/wait?condition=not-running", inst->id);
		p->wait_req = docker_request(p->rt, "POST", path, NULL, NULL, 0, NULL, wait_done, inst, NULL);
		if (!p->wait_req)
			log_error("cannot watch container service=%s id=%.12s", inst->service, inst->id);
	}
	if (!p->logs_req) {
		memset(&p->demux, 0, sizeof(p->demux));
		snprintf(path, sizeof(path), "/containers/%s/logs?follow=1&stdout=1&stderr=1&tail=%d",
			inst->id, logring_count(inst->logs) ? 0 : 200);
		p->logs_req = docker_request(p->rt, "GET", path, NULL, NULL, 0, follow_data,
			follow_done, inst, NULL);
	}
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	inspect_for_exit(arg);
}

static struct dpriv *priv_for(struct runtime_ctx *rt, struct rt_instance *inst, rt_exit_fn on_exit,
	void *arg)
{
	struct dpriv *p = inst->priv;

	if (!p) {
		p = calloc(1, sizeof(*p));
		if (!p)
			return NULL;
		p->retry = evtimer_new(rt->base, retry_cb, inst);
		if (!p->retry) {
			free(p);
			return NULL;
		}
		inst->priv = p;
	}
	p->rt = rt;
	p->on_exit = on_exit;
	p->exit_arg = arg;
	p->retry_ms = 1000;
	return p;
}

static void missing_pulled(void *arg, int ok, const char *err);

/* Drop op and the pull it started, with no callback (its instance is
 * gone). */
static void op_abandon(struct op *op)
{
	for (struct op *o = live_ops, *nx; o; o = nx) {
		nx = o->next_op;
		if (o->arg == op && o->done == missing_pulled)
			op_abandon(o);
	}
	for (struct op **pp = &ver.waiting; *pp; pp = &(*pp)->wait_next)
		if (*pp == op) {
			*pp = op->wait_next;
			break;
		}
	httpc_cancel(op->req);
	op->req = NULL;
	op_free(op);
}

static void docker_pull_cancel(struct runtime_ctx *rt, void *arg)
{
	(void)rt;
	for (struct op *o = live_ops, *nx; o; o = nx) {
		nx = o->next_op;
		if (o->kind != OP_PULL || o->arg != arg)
			continue;
		log_info("docker pull cancelled image=%s", log_q(o->image));
		if (o->deferred) {
			/* its pending event still points at it: report to no one */
			o->done = NULL;
			o->progress = NULL;
			continue;
		}
		op_abandon(o);
		nx = live_ops;
	}
}

static void docker_release(struct rt_instance *inst)
{
	struct dpriv *p = inst ? inst->priv : NULL;

	for (struct op *o = live_ops, *nx; inst && o; o = nx) {
		nx = o->next_op;
		/* a deferred op keeps its pending event's pointer valid */
		if (o->inst == inst && !o->deferred) {
			log_debug("docker call abandoned what=%s", log_q(o->what));
			op_abandon(o);
			nx = live_ops; /* the list may have lost other entries */
		}
	}
	if (!p)
		return;
	httpc_cancel(p->wait_req);
	httpc_cancel(p->logs_req);
	event_free(p->retry);
	free(p);
	inst->priv = NULL;
}

/* ---- pull ------------------------------------------------------------- */

static void arm_stall(struct op *op)
{
	struct timeval tv = { (time_t)(op->stall_ms / 1000), (suseconds_t)(op->stall_ms % 1000) * 1000 };

	evtimer_add(op->stall, &tv);
}

static int pull_data(void *arg, const char *data, size_t len)
{
	struct op *op = arg;

	arm_stall(op);

	for (size_t i = 0; i < len; i++) {
		char out[160];
		char *err = NULL;
		int r;

		if (data[i] != '\n') {
			if (op->line_len + 2 > op->line_cap) {
				size_t ncap = op->line_cap ? op->line_cap * 2 : 1024;
				char *n;
				if (ncap > (1u << 20))
					return -1;
				n = realloc(op->line, ncap);
				if (!n)
					return -1;
				op->line = n;
				op->line_cap = ncap;
			}
			op->line[op->line_len++] = data[i];
			continue;
		}
		/* the first line is the error document when the status is not 200 */
		if (!op->body)
			op->body = strndup(op->line ? op->line : "", op->line_len);
		r = docker_pull_line(&op->pull, op->line ? op->line : "", op->line_len, out, sizeof(out), &err);
		op->line_len = 0;
		if (r < 0) {
			if (!op->err && asprintf(&op->err, "%s: %s", op->what, err ? err : "failed") < 0)
				op->err = NULL;
			free(err);
		} else if (r == 1 || (r == 2 && time(NULL) != op->last_progress)) {
			op->last_progress = time(NULL);
			if (op->progress)
				op->progress(op->arg, out);
		}
	}
	return 0;
}

/* The engine sent nothing for stall_ms: a registry that stopped sending
 * mid-blob, or an engine that accepted the call and never answers. */
static void pull_stalled(evutil_socket_t fd, short what, void *arg)
{
	struct op *op = arg;

	(void)fd;
	(void)what;
	httpc_cancel(op->req);
	op->req = NULL;
	log_warn("docker pull stalled, aborting image=%s stall_ms=%llu", log_q(op->image),
		(unsigned long long)op->stall_ms);
	op_fail(op, "%s: no progress for %llums (pull_stall_timeout): the registry or the "
		"Docker engine stalled", op->what, (unsigned long long)op->stall_ms);
}

static void pull_done(struct op *op, const struct httpc_response *res)
{
	if (res->curl_code == CURLE_OPERATION_TIMEDOUT && !op->err) {
		op_fail(op, "%s: not finished within %llums (pull_timeout)", op->what,
			(unsigned long long)op->pull_timeout_ms);
		return;
	}
	if (res->status != 200 && !op->err) {
		char *m;

		if (!op->body && op->line_len)
			op->body = strndup(op->line, op->line_len);
		m = res->error ? NULL : docker_error_text(op->body, res->status);
		char *t = m ? docker_pull_error_text(m) : NULL;

		if (res->error)
			op_fail(op, "%s: cannot reach the Docker engine at %s: %s", op->what,
				op->rt->cfg->docker_socket, res->error);
		else
			op_fail(op, "%s: %s", op->what, t ? t : "failed");
		free(m);
		free(t);
		return;
	}
	if (!op->err && res->error)
		op_fail(op, "%s: %s", op->what, res->error);
	else
		op_finish(op);
}

static void pull_go(struct op *op, const struct httpc_response *res)
{
	struct image_ref r;
	char path[1600], name[1100], tag[300];

	(void)res;
	docker_image_parse(op->image, &r, NULL);
	urlenc(r.name, name, sizeof(name));
	urlenc(r.digest[0] ? r.digest : r.tag, tag, sizeof(tag));
	snprintf(path, sizeof(path), "/images/create?fromImage=%s&tag=%s", name, tag);
	if (op->progress)
		op->progress(op->arg, "pulling");
	op_call(op, "POST", path, NULL, (long)op->pull_timeout_ms, pull_data, pull_done);
	if (op->req)
		arm_stall(op);
}

static void pull_checked(struct op *op, const struct httpc_response *res)
{
	if (res->status == 200) {
		if (op->progress)
			op->progress(op->arg, "image present, not pulled (pull = missing)");
		op_finish(op);
	} else if (res->status == 404) {
		pull_go(op, NULL);
	} else {
		op_fail_res(op, res);
	}
}

static void pull_first(struct op *op, const struct httpc_response *res)
{
	char path[1200], name[1100];

	(void)res;
	if (op->retried) { /* pull = missing: look first */
		urlenc(op->image, name, sizeof(name));
		snprintf(path, sizeof(path), "/images/%s/json", name);
		op_call(op, "GET", path, NULL, CALL_TIMEOUT_MS, NULL, pull_checked);
		return;
	}
	pull_go(op, NULL);
}

/* Credentials for the image's registry: 0 (op->auth set or anonymous), or
 * -1 with *errp. A missing auth file means anonymous pulls. */
static int pull_auth(struct op *op, const struct svc_conf *svc, const char *registry, char **errp)
{
	char *text, *hdr = NULL;
	int rc;

	if (!svc->registry_auth_file || !svc->registry_auth_file[0])
		return 0;
	text = fs_read_file(svc->registry_auth_file, AUTH_FILE_MAX, NULL, NULL);
	if (!text) {
		if (errno == ENOENT) {
			log_debug("no registry_auth_file, pulling anonymously path=%s",
				log_q(svc->registry_auth_file));
			return 0;
		}
		if (asprintf(errp, "registry_auth_file %s: %s", svc->registry_auth_file, strerror(errno)) < 0)
			*errp = NULL;
		return -1;
	}
	rc = docker_registry_auth(text, svc->registry_auth_file, registry, &hdr, errp);
	explicit_bzero(text, strlen(text));
	free(text);
	if (rc < 0 || !hdr)
		return rc;
	rc = asprintf(&op->auth, "X-Registry-Auth: %s", hdr) < 0 ? -1 : 0;
	explicit_bzero(hdr, strlen(hdr));
	free(hdr);
	return rc;
}

static void docker_pull(struct runtime_ctx *rt, const struct svc_conf *svc, const char *image,
	rt_progress_fn progress, rt_done_fn done, void *arg)
{
	struct op *op = op_new(OP_PULL, rt, arg);
	struct image_ref r;
	char *err = NULL, *e2 = NULL;

	if (!op) {
		done(arg, 0, "out of memory");
		return;
	}
	op->done = done;
	op->progress = progress;
	snprintf(op->image, sizeof(op->image), "%s", image);
	snprintf(op->what, sizeof(op->what), "docker pull %s", image);
	op->retried = svc->pull == PULL_MISSING;
	op->pull_timeout_ms = svc->pull_timeout_ms;
	op->stall_ms = svc->pull_stall_timeout_ms > 0 ? svc->pull_stall_timeout_ms : 60000;
	if (!(op->stall = evtimer_new(rt->base, pull_stalled, op))) {
		op_fail_later(op, NULL);
		return;
	}
	if (docker_image_parse(image, &r, &err) < 0 || pull_auth(op, svc, r.registry, &err) < 0) {
		if (asprintf(&e2, "%s: %s", op->what, err ? err : "failed") < 0)
			e2 = NULL;
		free(err);
		op_fail_later(op, e2);
		return;
	}
	op_begin(op, pull_first);
}

/* ---- create (start, run_once) ----------------------------------------- */

static void create_call(struct op *op);

/* Remove the container we created, then report op->err. */
static void removed_after_failure(struct op *op, const struct httpc_response *res)
{
	if (res->status != 204 && res->status != 404) {
		char *m = res->error ? strdup(res->error) : docker_error_text(res->body, res->status);

		log_warn("container not removed after a failed start name=%s id=%.12s error=%s",
			op->name, op->id, log_q(m ? m : "failed"));
		free(m);
	}
	op_finish(op);
}

static void fail_and_remove(struct op *op, char *err)
{
	char path[160];

	if (!op->err)
		op->err = err;
	else
		free(err);
	snprintf(path, sizeof(path), "/containers/%s?force=true&v=false", op->id);
	op_call(op, "DELETE", path, NULL, CALL_TIMEOUT_MS, NULL, removed_after_failure);
}

static void stale_gone(struct op *op, const struct httpc_response *res)
{
	(void)res; /* 200 removed, 404 already gone: the create says the rest */
	create_call(op);
}

static void stale_removed(struct op *op, const struct httpc_response *res)
{
	char path[200];

	if (res->status == 409) {
		/* someone (our own removal of a dead instance) is removing it */
		snprintf(path, sizeof(path), "/containers/%s/wait?condition=removed", op->id);
		op_call(op, "POST", path, NULL, CALL_TIMEOUT_MS, NULL, stale_gone);
		return;
	}
	if (res->status != 204 && res->status != 404) {
		op_fail_res(op, res);
		return;
	}
	create_call(op);
}

static void stale_inspected(struct op *op, const struct httpc_response *res)
{
	struct docker_container c;
	char path[200];

	if (res->status == 404) { /* gone in the meantime */
		create_call(op);
		return;
	}
	if (res->status != 200 || docker_parse_inspect(res->body, 0, &c, NULL) < 0) {
		op_fail_res(op, res);
		return;
	}
	if (!c.managed) {
		op_fail(op, "%s: a container named %s exists and is not managed by pmd (no label "
			"pmd.managed=true); remove or rename it", op->what, op->name);
		return;
	}
	log_info("removing stale container name=%s id=%.12s running=%d", op->name, c.id, c.running);
	snprintf(op->id, sizeof(op->id), "%s", c.id); /* until created() sets ours */
	snprintf(path, sizeof(path), "/containers/%s?force=true&v=false", c.id);
	op_call(op, "DELETE", path, NULL, CALL_TIMEOUT_MS, NULL, stale_removed);
}

static void start_called(struct op *op, const struct httpc_response *res);
static void once_waited(struct op *op, const struct httpc_response *res);

static void missing_progress(void *arg, const char *line)
{
	struct op *op = arg;

	log_info("pulling a missing image name=%s image=%s progress=%s", op->name,
		log_q(op->image), log_q(line));
}

static void missing_pulled(void *arg, int ok, const char *err)
{
	struct op *op = arg;

	if (!ok) {
		op_fail(op, "%s", err ? err : "pull failed");
		return;
	}
	create_call(op);
}

/* The image of a container being started is not in the engine (first start
 * on a new host, or pruned): pull it with the service's credentials, like
 * `docker run` does, then create again. */
static void pull_missing(struct op *op)
{
	struct svc_conf sc = { .pull = PULL_ALWAYS, .registry_auth_file = op->auth_file,
		.pull_timeout_ms = op->pull_timeout_ms, .pull_stall_timeout_ms = op->stall_ms };

	op->pulled = 1;
	log_info("image not present, pulling it name=%s image=%s", op->name, log_q(op->image));
	docker_pull(op->rt, &sc, op->image, missing_progress, missing_pulled, op);
}

static void created(struct op *op, const struct httpc_response *res)
{
	cJSON *j;
	char path[160];

	if (res->status == 409 && !op->retried) {
		op->retried = 1;
		snprintf(path, sizeof(path), "/containers/%s/json", op->name);
		op_call(op, "GET", path, NULL, CALL_TIMEOUT_MS, NULL, stale_inspected);
		return;
	}
	if (res->status == 404 && !res->error && op->kind == OP_START && !op->pulled) {
		pull_missing(op);
		return;
	}
	if (res->status == 404 && !res->error) {
		char *m = docker_error_text(res->body, res->status);
		op_fail(op, "%s: image %s is not present (pull it first): %s", op->what, op->image,
			m ? m : "");
		free(m);
		return;
	}
	if (res->status != 201) {
		op_fail_res(op, res);
		return;
	}
	j = cJSON_Parse(res->body);
	snprintf(op->id, sizeof(op->id), "%s", cJSON_GetStringValue(cJSON_GetObjectItem(j, "Id")) ?
		cJSON_GetStringValue(cJSON_GetObjectItem(j, "Id")) : "");
	cJSON_Delete(j);
	if (!op->id[0]) {
		op_fail(op, "%s: no container id in the answer", op->what);
		return;
	}
	if (op->inst)
		snprintf(op->inst->id, sizeof(op->inst->id), "%.79s", op->id);
	snprintf(op->what, sizeof(op->what), "docker start %s", op->name);
	snprintf(path, sizeof(path), "/containers/%s/start", op->id);
	op_call(op, "POST", path, NULL, CALL_TIMEOUT_MS, NULL, start_called);
}

static void create_call(struct op *op)
{
	char path[200];

	snprintf(op->what, sizeof(op->what), "docker create %s", op->name);
	snprintf(path, sizeof(path), "/containers/create?name=%s", op->name);
	op_call(op, "POST", path, op->body, CALL_TIMEOUT_MS, NULL, created);
}

static void create_first(struct op *op, const struct httpc_response *res)
{
	(void)res;
	create_call(op);
}

/* Build op->body for svc; 0, or -1 with *errp. */
static int build_create(struct op *op, const struct svc_conf *svc, const char *color,
	char *const *env, int host_port, char **errp)
{
	struct docker_create c = {
		.service = svc->name, .color = color, .image = op->image,
		.command = op->kind == OP_ONCE ? NULL : svc->command, .env = env,
		.volumes = &svc->volumes, .network = svc->network, .host_port = host_port,
		.container_port = svc->port,
	};
	struct image_ref r;

	if (docker_image_parse(op->image, &r, errp) < 0)
		return -1;
	op->body = docker_create_json(&c, errp);
	return op->body ? 0 : -1;
}

/* ---- start ------------------------------------------------------------ */

static void start_inspected(struct op *op, const struct httpc_response *res)
{
	struct rt_instance *inst = op->inst;
	struct docker_container c;
	struct dpriv *p;
	char *err = NULL;

	if (res->status != 200 || docker_parse_inspect(res->body, op->container_port, &c, &err) < 0) {
		free(err);
		if (res->error || res->status != 200) {
			char *m = res->error ? strdup(res->error) : docker_error_text(res->body, res->status);
			if (asprintf(&err, "docker inspect %s: %s", op->name, m ? m : "failed") < 0)
				err = NULL;
			free(m);
		} else if (asprintf(&err, "docker inspect %s: unexpected answer", op->name) < 0) {
			err = NULL;
		}
		fail_and_remove(op, err);
		return;
	}
	if (op->network == NET_BRIDGE) {
		if (c.host_port <= 0) {
			if (asprintf(&err, "docker start %s: no host port published for %d/tcp", op->name,
			    op->container_port) < 0)
				err = NULL;
			fail_and_remove(op, err);
			return;
		}
		inst->host_port = c.host_port;
	}
	snprintf(inst->addr, sizeof(inst->addr), "127.0.0.1:%d", inst->host_port);
	snprintf(inst->image_id, sizeof(inst->image_id), "%s", c.image_id);
	inst->started_at = (long)time(NULL);
	p = inst->priv;
	p->container_port = op->container_port;
	watch_start(inst);
	op_finish(op);
}

static void start_called(struct op *op, const struct httpc_response *res)
{
	char path[160];
	char *m, *err = NULL;

	if (res->status != 204 && res->status != 304) {
		m = res->error ? strdup(res->error) : docker_error_text(res->body, res->status);
		if (asprintf(&err, "%s: %s", op->what, m ? m : "failed") < 0)
			err = NULL;
		free(m);
		fail_and_remove(op, err);
		return;
	}
	if (op->kind == OP_ONCE) {
		char wpath[200];
		snprintf(op->what, sizeof(op->what), "release command in %s", op->name);
		snprintf(wpath, sizeof(wpath), "/containers/%s/wait?condition=not-running", op->id);
		op_call(op, "POST", wpath, NULL, (long)op->timeout_ms, NULL, once_waited);
		return;
	}
	snprintf(path, sizeof(path), "/containers/%s/json", op->id);
	op_call(op, "GET", path, NULL, CALL_TIMEOUT_MS, NULL, start_inspected);
}

static void docker_start(struct runtime_ctx *rt, const struct svc_conf *svc, struct rt_instance *inst,
	char *const *env, rt_exit_fn on_exit, rt_done_fn done, void *arg)
{
	struct op *op = op_new(OP_START, rt, arg);
	char *err = NULL, *e2 = NULL;

	if (!op || !priv_for(rt, inst, on_exit, arg)) {
		op_free(op);
		done(arg, 0, "out of memory");
		return;
	}
	((struct dpriv *)inst->priv)->relay = svc->log_relay;
	op->inst = inst;
	op->done = done;
	op->network = svc->network;
	op->container_port = svc->port;
	op->pull_timeout_ms = svc->pull_timeout_ms;
	op->stall_ms = svc->pull_stall_timeout_ms;
	snprintf(op->name, sizeof(op->name), "%s", inst->name);
	snprintf(op->image, sizeof(op->image), "%s", inst->image);
	snprintf(op->what, sizeof(op->what), "docker create %s", op->name);
	if (svc->registry_auth_file && !(op->auth_file = strdup(svc->registry_auth_file))) {
		op_free(op);
		done(arg, 0, "out of memory");
		return;
	}
	if (build_create(op, svc, inst->color, env, inst->host_port, &err) < 0) {
		if (asprintf(&e2, "%s: %s", op->what, err ? err : "failed") < 0)
			e2 = NULL;
		free(err);
		op_fail_later(op, e2);
		return;
	}
	op_begin(op, create_first);
}

/* ---- stop ------------------------------------------------------------- */

/* Last step of stop and run_once: the container is gone, whatever the
 * answer said. */
static void op_last_step(struct op *op, const struct httpc_response *res)
{
	(void)res;
	op_finish(op);
}

static void stop_removed(struct op *op, const struct httpc_response *res)
{
	char path[200];

	if (res->status == 409) { /* a removal is already in progress (a create's stale cleanup) */
		snprintf(path, sizeof(path), "/containers/%s/wait?condition=removed", op->id);
		op_call(op, "POST", path, NULL, CALL_TIMEOUT_MS, NULL, op_last_step);
		return;
	}
	if (res->status != 204 && res->status != 404) {
		op_fail_res(op, res);
		return;
	}
	op_finish(op);
}

static void stop_remove(struct op *op)
{
	char path[160];

	snprintf(op->what, sizeof(op->what), "docker rm %s", op->name);
	snprintf(path, sizeof(path), "/containers/%s?force=true&v=false", op->id);
	op_call(op, "DELETE", path, NULL, CALL_TIMEOUT_MS, NULL, stop_removed);
}

static void stop_inspected(struct op *op, const struct httpc_response *res)
{
	struct docker_container c;

	if (res->status == 200 && docker_parse_inspect(res->body, 0, &c, NULL) == 0)
		report_exit(op->inst, c.exit_code, c.oom);
	else
		report_exit(op->inst, 137, false);
	stop_remove(op);
}

static void stopped(struct op *op, const struct httpc_response *res)
{
	char path[160];

	if (res->status == 404) {
		report_exit(op->inst, 137, false);
		op_finish(op);
		return;
	}
	if (res->status != 204 && res->status != 304) {
		op_fail_res(op, res);
		return;
	}
	snprintf(path, sizeof(path), "/containers/%s/json", op->id);
	op_call(op, "GET", path, NULL, CALL_TIMEOUT_MS, NULL, stop_inspected);
}

static void stop_first(struct op *op, const struct httpc_response *res)
{
	char path[200];
	unsigned long secs = (op->timeout_ms + 999) / 1000;

	(void)res;
	snprintf(path, sizeof(path), "/containers/%s/stop?t=%lu", op->id, secs);
	op_call(op, "POST", path, NULL, (long)(secs * 1000 + 30000), NULL, stopped);
}

static void docker_stop(struct runtime_ctx *rt, struct rt_instance *inst, unsigned long timeout_ms,
	rt_done_fn done, void *arg)
{
	struct op *op = op_new(OP_STOP, rt, arg);
	struct dpriv *p = inst->priv;

	if (!op || (!p && !(p = priv_for(rt, inst, NULL, NULL)))) {
		op_free(op);
		done(arg, 0, "out of memory");
		return;
	}
	p->stopping = 1;
	httpc_cancel(p->wait_req);
	p->wait_req = NULL;
	evtimer_del(p->retry);
	op->inst = inst;
	op->done = done;
	op->timeout_ms = timeout_ms;
	snprintf(op->id, sizeof(op->id), "%s", inst->id[0] ? inst->id : inst->name);
	snprintf(op->name, sizeof(op->name), "%s", inst->name);
	snprintf(op->what, sizeof(op->what), "docker stop %s", inst->name);
	op_begin(op, stop_first);
}

/* ---- run_once ----------------------------------------------------------- */

static void once_logs(struct op *op, const struct httpc_response *res)
{
	char path[160];

	if (res->status == 200 && res->body) {
		memset(&op->demux, 0, sizeof(op->demux));
		docker_demux_feed(&op->demux, res->body, res->body_len, logs_piece, op->out);
		logring_flush(op->out);
		for (size_t k = 0; op->relay && k < logring_count(op->out); k++)
			log_info("app output service=%s color=once line=%s", op->svc_name,
				log_q(logring_line(op->out, k)));
	}
	snprintf(path, sizeof(path), "/containers/%s?force=true&v=false", op->id);
	op_call(op, "DELETE", path, NULL, CALL_TIMEOUT_MS, NULL, op_last_step);
}

static void once_fetch_logs(struct op *op)
{
	char path[200];

	snprintf(path, sizeof(path), "/containers/%s/logs?stdout=1&stderr=1&tail=%d", op->id, ONCE_LOG_LINES);
	op_call(op, "GET", path, NULL, CALL_TIMEOUT_MS, NULL, once_logs);
}

static void once_killed(struct op *op, const struct httpc_response *res)
{
	(void)res;
	once_fetch_logs(op);
}

static void once_waited(struct op *op, const struct httpc_response *res)
{
	char path[160];
	cJSON *j;

	if (res->curl_code == 28 /* CURLE_OPERATION_TIMEDOUT */) {
		if (asprintf(&op->err, "%s: did not finish within %lus; killed", op->what,
		    op->timeout_ms / 1000) < 0)
			op->err = NULL;
		snprintf(path, sizeof(path), "/containers/%s/kill", op->id);
		op_call(op, "POST", path, NULL, CALL_TIMEOUT_MS, NULL, once_killed);
		return;
	}
	if (res->status != 200) {
		char *m = res->error ? strdup(res->error) : docker_error_text(res->body, res->status);
		if (asprintf(&op->err, "%s: %s", op->what, m ? m : "failed") < 0)
			op->err = NULL;
		free(m);
		once_fetch_logs(op);
		return;
	}
	j = cJSON_Parse(res->body);
	op->exit_code = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(j, "StatusCode"));
	cJSON_Delete(j);
	once_fetch_logs(op);
}

static void docker_run_once(struct runtime_ctx *rt, const struct svc_conf *svc, const char *image,
	const char *command, char *const *env, unsigned long timeout_ms, rt_once_fn done, void *arg)
{
	struct op *op = op_new(OP_ONCE, rt, arg);
	struct docker_create c;
	unsigned rnd;
	char *err = NULL, *e2 = NULL;
	struct image_ref r;

	if (!op || !(op->out = logring_new(ONCE_LOG_LINES))) {
		if (op)
			op_free(op);
		done(arg, -1, "out of memory", NULL);
		return;
	}
	op->once_done = done;
	op->relay = svc->log_relay;
	snprintf(op->svc_name, sizeof(op->svc_name), "%s", svc->name);
	op->timeout_ms = timeout_ms;
	op->exit_code = -1;
	op->network = svc->network;
	if (getentropy(&rnd, sizeof(rnd)) < 0)
		rnd = (unsigned)time(NULL) ^ (unsigned)(uintptr_t)op;
	snprintf(op->name, sizeof(op->name), "pm-%s-once-%08x", svc->name, rnd);
	snprintf(op->image, sizeof(op->image), "%s", image);
	snprintf(op->what, sizeof(op->what), "docker create %s", op->name);
	memset(&c, 0, sizeof(c));
	c.service = svc->name;
	c.color = "once";
	c.image = image;
	c.command = command;
	c.env = env;
	c.volumes = &svc->volumes;
	c.network = NET_HOST; /* a one-off task listens nowhere: no port to publish */
	if (docker_image_parse(image, &r, &err) < 0 || !(op->body = docker_create_json(&c, &err))) {
		if (asprintf(&e2, "%s: %s", op->what, err ? err : "failed") < 0)
			e2 = NULL;
		free(err);
		op_fail_later(op, e2);
		return;
	}
	op_begin(op, create_first);
}

/* ---- logs ----------------------------------------------------------------- */

static void logs_got(struct op *op, const struct httpc_response *res)
{
	if (res->status != 200) {
		op_fail_res(op, res);
		return;
	}
	docker_demux_feed(&op->demux, res->body, res->body_len, logs_piece, op->out);
	logring_flush(op->out);
	op_finish(op);
}

static void logs_first(struct op *op, const struct httpc_response *res)
{
	char path[200];

	(void)res;
	snprintf(path, sizeof(path), "/containers/%s/logs?stdout=1&stderr=1&tail=%d", op->id, op->tail);
	op_call(op, "GET", path, NULL, CALL_TIMEOUT_MS, NULL, logs_got);
}

static void docker_logs(struct runtime_ctx *rt, struct rt_instance *inst, int tail,
	rt_logs_fn done, void *arg)
{
	struct op *op = op_new(OP_LOGS, rt, arg);

	if (tail <= 0)
		tail = 100;
	if (!op || !(op->out = logring_new((size_t)tail))) {
		op_free(op);
		done(arg, 0, "out of memory", NULL);
		return;
	}
	op->logs_done = done;
	op->tail = tail;
	snprintf(op->id, sizeof(op->id), "%s", inst->id[0] ? inst->id : inst->name);
	snprintf(op->what, sizeof(op->what), "docker logs %s", inst->name);
	op_begin(op, logs_first);
}

/* ---- list ----------------------------------------------------------------- */

static void listed(struct op *op, const struct httpc_response *res)
{
	struct docker_container *c = NULL;
	struct rt_found *f = NULL;
	size_t n = 0, k = 0;
	char *err = NULL;

	if (res->status != 200) {
		op_fail_res(op, res);
		return;
	}
	if (docker_parse_list(res->body, &c, &n, &err) < 0) {
		op->err = err;
		op_finish(op);
		return;
	}
	f = calloc(n + 1, sizeof(*f));
	for (size_t i = 0; f && i < n; i++) {
		if (!c[i].managed || !c[i].service[0])
			continue;
		snprintf(f[k].id, sizeof(f[k].id), "%s", c[i].id);
		snprintf(f[k].name, sizeof(f[k].name), "%s", c[i].name);
		snprintf(f[k].service, sizeof(f[k].service), "%s", c[i].service);
		snprintf(f[k].color, sizeof(f[k].color), "%s", c[i].color);
		snprintf(f[k].image, sizeof(f[k].image), "%s", c[i].image);
		f[k].host_port = c[i].host_port;
		f[k].running = c[i].running;
		f[k].created = c[i].created;
		k++;
	}
	if (!f) {
		op_fail(op, "%s: out of memory", op->what);
	} else {
		op_unlink(op);
		op->list_done(op->arg, 1, NULL, f, k);
		op_free(op);
	}
	free(f);
	free(c);
}

static void list_first(struct op *op, const struct httpc_response *res)
{
	char filt[128];
	char path[256];

	(void)res;
	urlenc("{\"label\":[\"pmd.managed=true\"]}", filt, sizeof(filt));
	snprintf(path, sizeof(path), "/containers/json?all=1&filters=%s", filt);
	op_call(op, "GET", path, NULL, CALL_TIMEOUT_MS, NULL, listed);
}

static void docker_list(struct runtime_ctx *rt, rt_list_fn done, void *arg)
{
	struct op *op = op_new(OP_LIST, rt, arg);

	if (!op) {
		done(arg, 0, "out of memory", NULL, 0);
		return;
	}
	op->list_done = done;
	snprintf(op->what, sizeof(op->what), "docker list containers");
	op_begin(op, list_first);
}

/* ---- adopt ------------------------------------------------------------ */

static void adopt_inspected(struct op *op, const struct httpc_response *res)
{
	struct rt_instance *inst = op->inst;
	struct docker_container c;

	if (res->status != 200 || docker_parse_inspect(res->body, op->container_port, &c, NULL) < 0) {
		op_fail_res(op, res);
		return;
	}
	if (!c.running) {
		op_fail(op, "%s: the container is not running (exit code %d)", op->what, c.exit_code);
		return;
	}
	snprintf(inst->id, sizeof(inst->id), "%s", c.id);
	if (c.host_port > 0)
		inst->host_port = c.host_port;
	if (inst->host_port <= 0) {
		op_fail(op, "%s: cannot tell which port it listens on (no pmd.port label, no published port)",
			op->what);
		return;
	}
	if (!inst->image[0])
		snprintf(inst->image, sizeof(inst->image), "%s", c.image);
	snprintf(inst->image_id, sizeof(inst->image_id), "%s", c.image_id);
	snprintf(inst->addr, sizeof(inst->addr), "127.0.0.1:%d", inst->host_port);
	if (!inst->started_at)
		inst->started_at = (long)time(NULL);
	watch_start(inst);
	op_finish(op);
}

static void adopt_first(struct op *op, const struct httpc_response *res)
{
	char path[200];

	(void)res;
	snprintf(path, sizeof(path), "/containers/%s/json", op->id);
	op_call(op, "GET", path, NULL, CALL_TIMEOUT_MS, NULL, adopt_inspected);
}

static void docker_adopt(struct runtime_ctx *rt, const struct svc_conf *svc, struct rt_instance *inst,
	rt_exit_fn on_exit, rt_done_fn done, void *arg)
{
	struct op *op = op_new(OP_ADOPT, rt, arg);

	if (!op || !priv_for(rt, inst, on_exit, arg)) {
		op_free(op);
		done(arg, 0, "out of memory");
		return;
	}
	((struct dpriv *)inst->priv)->relay = svc->log_relay;
	op->inst = inst;
	op->done = done;
	op->container_port = svc->network == NET_BRIDGE ? svc->port : 0;
	snprintf(op->id, sizeof(op->id), "%s", inst->id[0] ? inst->id : inst->name);
	snprintf(op->what, sizeof(op->what), "docker adopt %s", inst->name);
	op_begin(op, adopt_first);
}

/* ---- prune ------------------------------------------------------------- */

/* One image after the other: inspect it by ID, then remove the name it
 * ran under (Docker deletes the image with its last name) or, when that
 * name has moved to another image and nothing names this one, the image by
 * ID. Names pmd never ran (other tags of the repository) are never touched. */
static void prune_next(struct op *op);

static struct rt_image *prune_cur(struct op *op)
{
	return &op->imgs[op->i_img - 1];
}

static void prune_removed(struct op *op, const struct httpc_response *res)
{
	struct rt_image *im = prune_cur(op);

	if (res->status == 200 || res->status == 404) {
		im->gone = true;
		if (res->status == 200)
			log_info("image removed service=%s ref=%s id=%.19s", op->svc_name, log_q(im->ref), im->id);
	} else {
		char *m = res->error ? strdup(res->error) : docker_error_text(res->body, res->status);
		log_warn("image not removed service=%s ref=%s error=%s", op->svc_name, log_q(im->ref),
			log_q(m ? m : "failed"));
		free(m);
	}
	prune_next(op);
}

/* Does the string array `refs` hold s? */
static int names(const cJSON *refs, const char *s)
{
	const cJSON *t;

	cJSON_ArrayForEach(t, refs)
		if (cJSON_IsString(t) && strcmp(t->valuestring, s) == 0)
			return 1;
	return 0;
}

static void prune_inspected(struct op *op, const struct httpc_response *res)
{
	struct rt_image *im = prune_cur(op);
	cJSON *doc;
	const cJSON *tags, *digests;
	char path[700];
	int by_name, unnamed;

	if (res->status == 404) {           /* removed by someone else */
		im->gone = true;
		prune_next(op);
		return;
	}
	if (res->status != 200 || !(doc = cJSON_Parse(res->body))) {
		op_fail_res(op, res);
		return;
	}
	tags = cJSON_GetObjectItemCaseSensitive(doc, "RepoTags");
	digests = cJSON_GetObjectItemCaseSensitive(doc, "RepoDigests");
	by_name = names(tags, im->ref) || names(digests, im->ref);
	unnamed = cJSON_GetArraySize(tags) == 0;
	cJSON_Delete(doc);
	if (!by_name && !unnamed) {
		/* its name moved on and other names hold it: not ours any more */
		log_info("image kept, its name now names another image service=%s ref=%s id=%.19s",
			op->svc_name, log_q(im->ref), im->id);
		im->gone = true;
		prune_next(op);
		return;
	}
	snprintf(path, sizeof(path), "/images/%s", by_name ? im->ref : im->id);
	op_call(op, "DELETE", path, NULL, CALL_TIMEOUT_MS, NULL, prune_removed);
}

static void prune_next(struct op *op)
{
	char path[200];

	while (op->i_img < op->n_imgs) {
		struct rt_image *im = &op->imgs[op->i_img++];
		const cJSON *c;
		int used = 0;

		cJSON_ArrayForEach(c, op->ctrs) {
			const char *cid = cJSON_GetStringValue(cJSON_GetObjectItem(c, "ImageID"));
			used |= cid && strcmp(cid, im->id) == 0;
		}
		if (used || im->id[0] == '\0')
			continue;
		snprintf(path, sizeof(path), "/images/%s/json", im->id);
		op_call(op, "GET", path, NULL, CALL_TIMEOUT_MS, NULL, prune_inspected);
		return;
	}
	op_finish(op);
}

static void prune_containers(struct op *op, const struct httpc_response *res)
{
	if (res->status != 200 || !(op->ctrs = cJSON_Parse(res->body))) {
		op_fail_res(op, res);
		return;
	}
	prune_next(op);
}

static void prune_first(struct op *op, const struct httpc_response *res)
{
	(void)res;
	op_call(op, "GET", "/containers/json?all=1", NULL, CALL_TIMEOUT_MS, NULL, prune_containers);
}

static void docker_prune(struct runtime_ctx *rt, const struct svc_conf *svc, const struct rt_image *imgs,
	size_t n, rt_pruned_fn done, void *arg)
{
	struct op *op = op_new(OP_PRUNE, rt, arg);

	if (!op || !(op->imgs = calloc(n + 1, sizeof(*op->imgs)))) {
		op_free(op);
		done(arg, 0, "out of memory", imgs, 0);
		return;
	}
	op->pruned = done;
	memcpy(op->imgs, imgs, n * sizeof(*imgs));
	op->n_imgs = n;
	snprintf(op->svc_name, sizeof(op->svc_name), "%s", svc->name);
	snprintf(op->what, sizeof(op->what), "docker prune %s", svc->name);
	op_begin(op, prune_first);
}

const struct runtime_ops runtime_docker_ops = {
	.name = "docker",
	.pull = docker_pull,
	.pull_cancel = docker_pull_cancel,
	.start = docker_start,
	.stop = docker_stop,
	.run_once = docker_run_once,
	.logs = docker_logs,
	.list = docker_list,
	.adopt = docker_adopt,
	.prune = docker_prune,
	.release = docker_release,
};
