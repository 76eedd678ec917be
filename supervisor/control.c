/* control — the local control socket (SPEC.md "Control API"): HTTP/1.1 +
 * JSON over a unix socket on the main thread's event_base.
 *
 * Every accepted peer is checked with SO_PEERCRED before a byte is read:
 * root, pmd's own euid, or a member of control_group (primary gid,
 * supplementary groups of the peer process, or the user's groups in the
 * group database). Requests are bounded (head 16 KiB, body 64 KiB, 10 s to
 * send them) and parsed with the project's strict parser (http.h).
 *
 * A connection is in one of three states: READING a request, BUSY with an
 * asynchronous answer (a swap streaming NDJSON, a log read), or CLOSING
 * (flushing its last answer). Bytes that arrive while BUSY wait in the
 * input buffer (bounded by a read watermark) and are parsed afterwards. */
#include "control.h"

#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "config.h"
#include "daemon.h"
#include "http.h"
#include "listenfds.h"
#include "log.h"
#include "metrics.h"
#include "supervisor.h"

#define CTL_MAX_HEAD        (16 * 1024)
#define CTL_MAX_BODY        (64 * 1024)
/* Raw request bytes kept at most (a chunked body carries framing). */
#define CTL_MAX_RAW         (CTL_MAX_HEAD + 2 * CTL_MAX_BODY)
#define CTL_HEAD_TIMEOUT_S  10
#define CTL_WRITE_TIMEOUT_S 60
#define CTL_MAX_CONNS       128
#define CTL_MAX_SWAP_SVCS   32
#define CTL_DEFAULT_TAIL    100
#define CTL_MAX_TAIL        10000

struct conn;

struct control {
	struct pmd *d;
	struct evconnlistener *listener;
	char *path;                 /* the socket we serve; unlinked at free unless handed over */
	struct conn *conns;         /* every open connection */
	size_t n_conns;
};

enum conn_state { CONN_READING = 0, CONN_BUSY, CONN_CLOSING };

struct conn {
	struct control *ctl;        /* NULL once orphaned (see logs_pending) */
	struct bufferevent *bev;    /* NULL once orphaned */
	struct event *timer;        /* request head/body deadline */
	struct conn *prev, *next;
	uid_t uid;
	pid_t pid;
	enum conn_state state;

	/* request being read */
	size_t head_len;            /* 0 until the head is complete */
	enum http_body body_kind;
	uint64_t content_length;
	struct http_chunked chunked;
	size_t chunk_off;           /* raw chunked bytes consumed after the head */
	struct evbuffer *body;      /* decoded chunked body */

	/* answer being produced */
	bool keep_alive;
	bool http10;                /* no chunked framing: the body ends at close */
	bool head_sent;
	struct swap *swap;          /* running swap whose callbacks write here */
	bool in_swap_call;          /* inside supervisor_swap() */
	bool swap_done;
	bool logs_pending;          /* supervisor_logs() has not called back */
};

static void conn_read_cb(struct bufferevent *bev, void *arg);

/* Connections ------------------------------------------------------------ */

static void conn_unlink(struct conn *c)
{
	if (!c->ctl)
		return;
	if (c->prev)
		c->prev->next = c->next;
	else
		c->ctl->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->ctl->n_conns--;
	c->ctl = NULL;
	c->prev = c->next = NULL;
}

static void conn_free(struct conn *c)
{
	conn_unlink(c);
	if (c->swap && !c->swap_done)
		swap_detach(c->swap);
	c->swap = NULL;
	if (c->bev)
		bufferevent_free(c->bev);
	if (c->timer)
		event_free(c->timer);
	if (c->body)
		evbuffer_free(c->body);
	free(c);
}

/* The peer is gone (or pmd stops). A running swap goes on without its
 * requester; a pending log read keeps the struct until it calls back. */
static void conn_close(struct conn *c)
{
	if (c->swap && !c->swap_done) {
		log_info("control: client went away, swap continues uid=%u", (unsigned)c->uid);
		swap_detach(c->swap);
		c->swap = NULL;
	}
	if (!c->logs_pending) {
		conn_free(c);
		return;
	}
	conn_unlink(c);
	if (c->bev) {
		bufferevent_free(c->bev);
		c->bev = NULL;
	}
	if (c->timer) {
		event_free(c->timer);
		c->timer = NULL;
	}
}

static void conn_reset_request(struct conn *c)
{
	c->head_len = 0;
	c->body_kind = HTTP_BODY_NONE;
	c->content_length = 0;
	c->chunk_off = 0;
	if (c->body)
		evbuffer_drain(c->body, evbuffer_get_length(c->body));
	c->head_sent = false;
	c->swap_done = false;
	c->http10 = false;
}

static void conn_arm_timer(struct conn *c)
{
	struct timeval tv = { CTL_HEAD_TIMEOUT_S, 0 };
	evtimer_add(c->timer, &tv);
}

/* The answer to the current request is complete in the output buffer. */
static void conn_finish(struct conn *c)
{
	if (!c->bev)
		return;
	if (!c->keep_alive || !c->ctl) {
		c->state = CONN_CLOSING;
		bufferevent_disable(c->bev, EV_READ);
		/* conn_write_cb frees once the output is flushed */
		return;
	}
	c->state = CONN_READING;
	conn_reset_request(c);
	conn_arm_timer(c);
	/* A pipelined request may already be waiting; parse it from the loop,
	 * not from inside whichever callback finished this answer. */
	bufferevent_trigger(c->bev, EV_READ, BEV_TRIG_DEFER_CALLBACKS | BEV_TRIG_IGNORE_WATERMARKS);
}

/* Writing answers -------------------------------------------------------- */

static void send_head(struct conn *c, int status, const char *ctype, long long length,
	const char *extra)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);

	evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n", status,
		http_reason(status), ctype);
	if (length >= 0)
		evbuffer_add_printf(out, "Content-Length: %lld\r\n", length);
	else if (!c->http10)
		evbuffer_add_printf(out, "Transfer-Encoding: chunked\r\n");
	else
		c->keep_alive = false;
	if (extra)
		evbuffer_add_printf(out, "%s", extra);
	if (!c->keep_alive)
		evbuffer_add_printf(out, "Connection: close\r\n");
	evbuffer_add(out, "\r\n", 2);
	c->head_sent = true;
}

static void send_body(struct conn *c, int status, const char *ctype, const char *body,
	size_t len, const char *extra)
{
	send_head(c, status, ctype, (long long)len, extra);
	evbuffer_add(bufferevent_get_output(c->bev), body, len);
	conn_finish(c);
}

/* Send doc (consumed) followed by a newline; `extra` header lines or NULL. */
static void send_json_ex(struct conn *c, int status, cJSON *doc, bool pretty, const char *extra)
{
	char *s = doc ? (pretty ? cJSON_Print(doc) : cJSON_PrintUnformatted(doc)) : NULL;

	cJSON_Delete(doc);
	if (!s) {
		static const char oom[] = "{\"ok\":false,\"error\":\"out of memory\"}\n";
		c->keep_alive = false;
		send_body(c, 500, "application/json", oom, sizeof(oom) - 1, NULL);
		return;
	}
	size_t n = strlen(s);
	send_head(c, status, "application/json", (long long)n + 1, extra);
	struct evbuffer *out = bufferevent_get_output(c->bev);
	evbuffer_add(out, s, n);
	evbuffer_add(out, "\n", 1);
	free(s);
	conn_finish(c);
}

static void send_json(struct conn *c, int status, cJSON *doc, bool pretty)
{
	send_json_ex(c, status, doc, pretty, NULL);
}

static cJSON *result_doc(bool ok, const char *error)
{
	cJSON *r = cJSON_CreateObject();

	if (!r)
		return NULL;
	cJSON_AddBoolToObject(r, "ok", ok);
	if (error)
		cJSON_AddStringToObject(r, "error", error);
	else
		cJSON_AddNullToObject(r, "error");
	return r;
}

static void send_error(struct conn *c, int status, const char *msg)
{
	send_json(c, status, result_doc(false, msg), false);
}

static void send_error_allow(struct conn *c, const char *allow)
{
	char extra[64], msg[96];

	snprintf(extra, sizeof(extra), "Allow: %s\r\n", allow);
	snprintf(msg, sizeof(msg), "method not allowed: use %s", allow);
	send_json_ex(c, 405, result_doc(false, msg), false, extra);
}

/* One NDJSON line of a streamed answer (the head is sent first). */
static void stream_line(struct conn *c, const cJSON *obj)
{
	char *s = cJSON_PrintUnformatted(obj);
	struct evbuffer *out = bufferevent_get_output(c->bev);

	if (!s)
		return;
	if (!c->head_sent)
		send_head(c, 200, "application/x-ndjson", -1, NULL);
	size_t n = strlen(s);
	if (!c->http10)
		evbuffer_add_printf(out, "%zx\r\n", n + 1);
	evbuffer_add(out, s, n);
	evbuffer_add(out, c->http10 ? "\n" : "\n\r\n", c->http10 ? 1 : 3);
	free(s);
}

static void stream_end(struct conn *c)
{
	if (!c->http10)
		evbuffer_add(bufferevent_get_output(c->bev), "0\r\n\r\n", 5);
	conn_finish(c);
}

/* Swaps ------------------------------------------------------------------ */

static void swap_event_cb(void *arg, const cJSON *event)
{
	struct conn *c = arg;

	if (c->bev)
		stream_line(c, event);
}

static void swap_done_cb(void *arg, const cJSON *result)
{
	struct conn *c = arg;

	c->swap = NULL;
	c->swap_done = true;
	if (!c->bev)
		return;
	stream_line(c, result);
	if (!c->in_swap_call)
		stream_end(c);
}

/* What a swap request asks for, pointing into its parsed body. */
struct swap_args {
	const char *services[CTL_MAX_SWAP_SVCS];
	const char *images[CTL_MAX_SWAP_SVCS];
	size_t n;
	uint64_t timeout_ms;
};

/* Parse a request body: an object (or nothing when `optional`). NULL with
 * err set when it is not JSON or not an object. *doc is the parsed body
 * (caller frees); an empty optional body yields an empty object. */
static cJSON *parse_object(const char *body, size_t len, bool optional, char *err, size_t errlen)
{
	const char *end = NULL;
	cJSON *doc;

	if (len == 0) {
		if (optional)
			return cJSON_CreateObject();
		snprintf(err, errlen, "expected a JSON object body, got an empty body");
		return NULL;
	}
	doc = cJSON_ParseWithLengthOpts(body, len, &end, false);
	if (!doc) {
		const char *at = cJSON_GetErrorPtr();
		size_t off = at && at >= body && at <= body + len ? (size_t)(at - body) : 0;
		snprintf(err, errlen, "malformed JSON body near byte %zu", off);
		return NULL;
	}
	while (end && end < body + len && (*end == ' ' || *end == '\n' || *end == '\r' || *end == '\t'))
		end++;
	if (end && end < body + len) {
		snprintf(err, errlen, "malformed JSON body: trailing data at byte %zu", (size_t)(end - body));
		cJSON_Delete(doc);
		return NULL;
	}
	if (!cJSON_IsObject(doc)) {
		snprintf(err, errlen, "expected a JSON object body");
		cJSON_Delete(doc);
		return NULL;
	}
	return doc;
}

/* Check the members of a swap body: `allowed` is a NULL-terminated list of
 * keys; "timeout" (a duration string) is always allowed. 0 / -1 + err. */
static int check_body_keys(const cJSON *doc, const char *const *allowed, struct swap_args *a,
	char *err, size_t errlen)
{
	const cJSON *it;

	cJSON_ArrayForEach(it, doc) {
		bool ok = false;
		for (size_t i = 0; allowed[i]; i++)
			if (strcmp(it->string, allowed[i]) == 0)
				ok = true;
		if (strcmp(it->string, "timeout") == 0) {
			if (!cJSON_IsString(it) || config_parse_duration(it->valuestring, &a->timeout_ms) < 0
			    || a->timeout_ms == 0) {
				char *v = cJSON_PrintUnformatted(it);
				snprintf(err, errlen, "timeout: expected a duration like \"90s\", got %s",
					v ? v : "?");
				free(v);
				return -1;
			}
			ok = true;
		}
		if (!ok) {
			snprintf(err, errlen, "unknown field \"%s\"", it->string);
			return -1;
		}
	}
	return 0;
}

static int parse_swap_all(const cJSON *doc, struct swap_args *a, char *err, size_t errlen)
{
	static const char *const keys[] = { "services", NULL };
	const cJSON *svcs = cJSON_GetObjectItemCaseSensitive(doc, "services"), *it;

	if (check_body_keys(doc, keys, a, err, errlen) < 0)
		return -1;
	if (!cJSON_IsObject(svcs) || !svcs->child) {
		snprintf(err, errlen, "services: expected an object {\"SERVICE\": \"IMAGE\", ...} with at least one service");
		return -1;
	}
	cJSON_ArrayForEach(it, svcs) {
		if (a->n == CTL_MAX_SWAP_SVCS) {
			snprintf(err, errlen, "services: at most %d services in one swap", CTL_MAX_SWAP_SVCS);
			return -1;
		}
		if (!cJSON_IsString(it) || !it->valuestring[0]) {
			snprintf(err, errlen, "services.%s: expected an image reference string", it->string);
			return -1;
		}
		for (size_t i = 0; i < a->n; i++)
			if (strcmp(a->services[i], it->string) == 0) {
				snprintf(err, errlen, "services: \"%s\" given twice", it->string);
				return -1;
			}
		a->services[a->n] = it->string;
		a->images[a->n] = it->valuestring;
		a->n++;
	}
	return 0;
}

static int parse_swap_one(const cJSON *doc, enum swap_kind kind, struct swap_args *a,
	char *err, size_t errlen)
{
	static const char *const image_keys[] = { "image", NULL };
	static const char *const no_keys[] = { NULL };

	if (check_body_keys(doc, kind == SWAP_IMAGE ? image_keys : no_keys, a, err, errlen) < 0)
		return -1;
	if (kind == SWAP_IMAGE) {
		const cJSON *img = cJSON_GetObjectItemCaseSensitive(doc, "image");
		if (!cJSON_IsString(img) || !img->valuestring[0]) {
			snprintf(err, errlen, "image: expected an image reference string");
			return -1;
		}
		a->images[0] = img->valuestring;
	}
	return 0;
}

static const char *kind_name(enum swap_kind k)
{
	return k == SWAP_ROLLBACK ? "rollback" : k == SWAP_RESTART ? "restart" : "swap";
}

/* `name` is the service of /services/NAME/...; NULL for POST /swap. */
static void handle_swap(struct conn *c, enum swap_kind kind, const char *name,
	const char *body, size_t len)
{
	struct swap_args a;
	char err[512];
	cJSON *doc;
	char *serr = NULL;
	int status = 500;

	memset(&a, 0, sizeof(a));
	doc = parse_object(body, len, kind != SWAP_IMAGE, err, sizeof(err));
	if (!doc) {
		send_error(c, 400, err);
		return;
	}
	if (name) {
		a.services[0] = name;
		a.n = 1;
		if (parse_swap_one(doc, kind, &a, err, sizeof(err)) < 0) {
			cJSON_Delete(doc);
			send_error(c, 400, err);
			return;
		}
	} else if (parse_swap_all(doc, &a, err, sizeof(err)) < 0) {
		cJSON_Delete(doc);
		send_error(c, 400, err);
		return;
	}

	struct swap_request req = {
		.kind = kind,
		.n = a.n,
		.services = a.services,
		.images = kind == SWAP_IMAGE ? a.images : NULL,
		.timeout_ms = a.timeout_ms,
		.on_event = swap_event_cb,
		.on_done = swap_done_cb,
		.arg = c,
	};
	char first[256];
	snprintf(first, sizeof(first), "%s%s", a.services[0], a.n > 1 ? ",..." : "");
	log_info("control: %s requested services=%s n=%zu uid=%u pid=%d", kind_name(kind),
		first, a.n, (unsigned)c->uid, (int)c->pid);

	c->state = CONN_BUSY;
	c->in_swap_call = true;
	struct swap *w = supervisor_swap(c->ctl->d->sup, &req, &status, &serr);
	c->in_swap_call = false;
	cJSON_Delete(doc);

	if (!w && !c->swap_done) {
		const char *msg = serr ? serr : "swap refused";
		log_info("control: %s refused status=%d error=%s", kind_name(kind), status, log_q(msg));
		if (c->head_sent) {
			/* progress was already streamed: the status line is gone */
			cJSON *r = result_doc(false, msg);
			if (r)
				stream_line(c, r);
			cJSON_Delete(r);
			stream_end(c);
		} else {
			send_error(c, status >= 400 && status < 600 ? status : 500, msg);
		}
	} else if (c->swap_done) {
		/* finished inside the call; the handle (if any) is spent */
		stream_end(c);
	} else {
		c->swap = w;
		if (!c->head_sent)
			send_head(c, 200, "application/x-ndjson", -1, NULL);
	}
	free(serr);
}

/* Logs ------------------------------------------------------------------- */

static void logs_done_cb(void *arg, int ok, const char *err, const char *const *lines, size_t n)
{
	struct conn *c = arg;

	c->logs_pending = false;
	if (!c->bev) {
		conn_free(c);           /* orphaned: the client left meanwhile */
		return;
	}
	if (!ok) {
		send_error(c, 503, err ? err : "logs unavailable");
		return;
	}
	size_t total = 0;
	for (size_t i = 0; i < n; i++)
		total += strlen(lines[i]) + 1;
	send_head(c, 200, "text/plain; charset=utf-8", (long long)total, NULL);
	struct evbuffer *out = bufferevent_get_output(c->bev);
	for (size_t i = 0; i < n; i++) {
		evbuffer_add(out, lines[i], strlen(lines[i]));
		evbuffer_add(out, "\n", 1);
	}
	conn_finish(c);
}

/* Value of `key` in a query string "a=1&b=2" (no decoding: values are
 * numbers). NULL when absent; *vlen set. */
static const char *query_get(const char *q, size_t qlen, const char *key, size_t *vlen)
{
	size_t klen = strlen(key);
	const char *p = q, *end = q + qlen;

	while (p < end) {
		const char *amp = memchr(p, '&', (size_t)(end - p));
		const char *e = amp ? amp : end;
		if ((size_t)(e - p) > klen && strncmp(p, key, klen) == 0 && p[klen] == '=') {
			*vlen = (size_t)(e - p) - klen - 1;
			return p + klen + 1;
		}
		p = e + 1;
	}
	return NULL;
}

static void handle_logs(struct conn *c, const char *name, const char *query, size_t qlen)
{
	int tail = CTL_DEFAULT_TAIL;
	size_t vlen = 0;
	const char *v = query_get(query, qlen, "tail", &vlen);
	char *serr = NULL;

	if (v) {
		char num[16];
		char *end = NULL;
		long t = -1;
		if (vlen > 0 && vlen < sizeof(num)) {
			memcpy(num, v, vlen);
			num[vlen] = '\0';
			errno = 0;
			t = strtol(num, &end, 10);
			if (errno || *end || num[0] == '-' || num[0] == '+')
				t = -1;
		}
		if (t < 1 || t > CTL_MAX_TAIL) {
			char err[128];
			snprintf(err, sizeof(err), "tail: expected a number of lines 1..%d, got \"%.*s\"",
				CTL_MAX_TAIL, (int)(vlen < 32 ? vlen : 32), v);
			send_error(c, 400, err);
			return;
		}
		tail = (int)t;
	}
	char inst[80] = "";
	bool previous = false;
	int status = 503;
	if ((v = query_get(query, qlen, "instance", &vlen)) != NULL) {
		bool okid = vlen > 0 && vlen < sizeof(inst);
		for (size_t i = 0; okid && i < vlen; i++)
			okid = isalnum((unsigned char)v[i]) || v[i] == '-' || v[i] == '_' || v[i] == '.';
		if (!okid) {
			send_error(c, 400, "instance: expected an instance ID or a prefix of one (letters, digits, - _ .)");
			return;
		}
		memcpy(inst, v, vlen);
		inst[vlen] = '\0';
	}
	if ((v = query_get(query, qlen, "previous", &vlen)) != NULL) {
		if (vlen == 1 && (v[0] == '1' || v[0] == '0')) {
			previous = v[0] == '1';
		} else {
			send_error(c, 400, "previous: expected 1 or 0");
			return;
		}
	}
	if (previous && inst[0] != '\0') {
		send_error(c, 400, "give either instance or previous, not both");
		return;
	}
	if (!config_service(c->ctl->d->cfg, name)) {
		char err[384];
		snprintf(err, sizeof(err), "unknown service \"%s\"", name);
		send_error(c, 404, err);
		return;
	}
	c->state = CONN_BUSY;
	c->logs_pending = true;
	if (supervisor_logs(c->ctl->d->sup, name, tail, inst, previous, logs_done_cb, c, &status,
	    &serr) < 0) {
		c->logs_pending = false;
		send_error(c, status, serr ? serr : "logs unavailable");
	}
	free(serr);
}

/* Other endpoints -------------------------------------------------------- */

static void handle_status(struct conn *c)
{
	cJSON *doc = pmd_status_json(c->ctl->d);

	send_json(c, doc ? 200 : 500, doc ? doc : result_doc(false, "cannot build status"), true);
}

static void handle_reload(struct conn *c)
{
	char *err = NULL;
	int rc = pmd_reload(c->ctl->d, &err);
	cJSON *doc;

	log_info("control: reload requested uid=%u result=%s", (unsigned)c->uid, rc == 0 ? "ok" : "failed");
	if (rc == 0) {
		doc = result_doc(true, NULL);
		/* a successful reload may still carry a warning (listener changes
		 * need a restart) */
		if (doc && err)
			cJSON_AddStringToObject(doc, "warning", err);
	} else {
		doc = result_doc(false, err ? err : "reload failed");
	}
	free(err);
	send_json(c, rc == 0 ? 200 : 422, doc, false);
}

static void handle_cancel(struct conn *c, const char *svc)
{
	char *err = NULL;
	int status = 500;
	int rc = supervisor_swap_cancel(c->ctl->d->sup, svc, &status, &err);

	log_info("control: swap cancel requested service=%s uid=%u result=%s", svc,
		(unsigned)c->uid, rc == 0 ? "ok" : "refused");
	if (rc == 0)
		send_json(c, 200, result_doc(true, NULL), false);
	else
		send_error(c, status, err ? err : "cancel refused");
	free(err);
}

/* POST /drain, /undrain: {"ok":true,"draining":BOOL} */
static void handle_drain(struct conn *c, bool draining)
{
	cJSON *doc;

	log_info("control: %s requested uid=%u", draining ? "drain" : "undrain", (unsigned)c->uid);
	pmd_set_draining(c->ctl->d, draining);
	doc = result_doc(true, NULL);
	if (doc)
		cJSON_AddBoolToObject(doc, "draining", draining);
	send_json(c, 200, doc, false);
}

static void handle_metrics(struct conn *c)
{
	struct evbuffer *buf = evbuffer_new();

	if (!buf) {
		send_error(c, 500, "out of memory");
		return;
	}
	metrics_render(c->ctl->d, buf);
	send_head(c, 200, "text/plain; version=0.0.4; charset=utf-8",
		(long long)evbuffer_get_length(buf), NULL);
	evbuffer_add_buffer(bufferevent_get_output(c->bev), buf);
	evbuffer_free(buf);
	conn_finish(c);
}

/* Routing ---------------------------------------------------------------- */

static bool path_is(const struct http_request *r, const char *p)
{
	return r->path_len == strlen(p) && memcmp(r->path, p, r->path_len) == 0;
}

/* True when the method is `want`; otherwise answers 405. */
static bool method_is(struct conn *c, const struct http_request *r, const char *want)
{
	if (r->method_len == strlen(want) && memcmp(r->method, want, r->method_len) == 0)
		return true;
	send_error_allow(c, want);
	return false;
}

static void dispatch(struct conn *c, const struct http_request *r, const char *body, size_t len)
{
	static const char svc_prefix[] = "/services/";
	const char *q = memchr(r->target, '?', r->target_len);
	const char *query = q ? q + 1 : "";
	size_t qlen = q ? r->target_len - (size_t)(q + 1 - r->target) : 0;

	if (log_enabled(LOG_DEBUG)) {
		char path[256];
		snprintf(path, sizeof(path), "%.*s", (int)r->path_len, r->path);
		log_debug("control: request method=%.*s path=%s uid=%u", (int)r->method_len, r->method,
			log_q(path), (unsigned)c->uid);
	}

	if (path_is(r, "/status")) {
		if (method_is(c, r, "GET"))
			handle_status(c);
	} else if (path_is(r, "/metrics")) {
		if (method_is(c, r, "GET"))
			handle_metrics(c);
	} else if (path_is(r, "/reload")) {
		if (method_is(c, r, "POST"))
			handle_reload(c);
	} else if (path_is(r, "/drain") || path_is(r, "/undrain")) {
		if (method_is(c, r, "POST"))
			handle_drain(c, r->path_len == sizeof("/drain") - 1);
	} else if (path_is(r, "/swap")) {
		if (method_is(c, r, "POST"))
			handle_swap(c, SWAP_IMAGE, NULL, body, len);
	} else if (r->path_len > sizeof(svc_prefix) - 1
	           && memcmp(r->path, svc_prefix, sizeof(svc_prefix) - 1) == 0) {
		const char *name = r->path + sizeof(svc_prefix) - 1;
		const char *end = r->path + r->path_len;
		const char *slash = memchr(name, '/', (size_t)(end - name));
		char svc[256];
		if (!slash || slash == name || (size_t)(slash - name) >= sizeof(svc)) {
			send_error(c, 404, "not found: use /services/NAME/{swap,rollback,restart,cancel,logs}");
			return;
		}
		memcpy(svc, name, (size_t)(slash - name));
		svc[slash - name] = '\0';
		const char *act = slash + 1;
		size_t alen = (size_t)(end - act);
#define ACT(s) (alen == sizeof(s) - 1 && memcmp(act, s, alen) == 0)
		if (ACT("swap")) {
			if (method_is(c, r, "POST"))
				handle_swap(c, SWAP_IMAGE, svc, body, len);
		} else if (ACT("rollback")) {
			if (method_is(c, r, "POST"))
				handle_swap(c, SWAP_ROLLBACK, svc, body, len);
		} else if (ACT("restart")) {
			if (method_is(c, r, "POST"))
				handle_swap(c, SWAP_RESTART, svc, body, len);
		} else if (ACT("cancel")) {
			if (method_is(c, r, "POST"))
				handle_cancel(c, svc);
		} else if (ACT("logs")) {
			if (method_is(c, r, "GET"))
				handle_logs(c, svc, query, qlen);
		} else {
			send_error(c, 404, "not found: use /services/NAME/{swap,rollback,restart,cancel,logs}");
		}
#undef ACT
	} else {
		send_error(c, 404, "not found: endpoints are /status, /metrics, /reload, /drain, /undrain, /swap, /services/NAME/...");
	}
}

/* Reading requests ------------------------------------------------------- */

/* A request cannot be read: answer and close. */
static void refuse_request(struct conn *c, int status, const char *msg)
{
	log_info("control: bad request status=%d error=%s uid=%u", status, log_q(msg), (unsigned)c->uid);
	c->keep_alive = false;
	c->state = CONN_BUSY;
	send_error(c, status, msg);
}

/* Advance the chunked decoder over newly arrived bytes. 1 complete, 0 need
 * more, -1 answered an error. */
static int read_chunked(struct conn *c, struct evbuffer *in)
{
	size_t len = evbuffer_get_length(in);
	const char *p = (const char *)evbuffer_pullup(in, -1);

	for (;;) {
		size_t off = c->head_len + c->chunk_off;
		int is_data = 0;
		int n = http_chunked_step(&c->chunked, p + off, len - off, &is_data);
		if (n == 0)
			return 1;
		if (n == -2)
			return 0;
		if (n < 0) {
			refuse_request(c, c->chunked.too_large ? 413 : 400,
				c->chunked.too_large ? "request body too large (max 64 KiB)"
				                     : "malformed chunked request body");
			return -1;
		}
		if (is_data)
			evbuffer_add(c->body, p + off, (size_t)n);
		c->chunk_off += (size_t)n;
	}
}

static void conn_process(struct conn *c)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);
	struct http_request req;
	size_t len = evbuffer_get_length(in);

	if (c->state != CONN_READING || len == 0)
		return;
	if (c->head_len == 0) {
		size_t n = len < CTL_MAX_HEAD + 1 ? len : CTL_MAX_HEAD + 1;
		const char *p = (const char *)evbuffer_pullup(in, (ssize_t)n);
		int r = http_parse_request(p, n, CTL_MAX_HEAD, CTL_MAX_BODY, &req);
		if (r == -2 && n > CTL_MAX_HEAD) {
			refuse_request(c, 431, "request head too large (max 16 KiB)");
			return;
		}
		if (r == -2)
			return;
		if (r < 0) {
			refuse_request(c, req.status ? req.status : 400,
				req.error ? req.error : "malformed request");
			return;
		}
		c->head_len = (size_t)r;
		c->body_kind = req.body;
		c->content_length = req.content_length;
		if (req.body == HTTP_BODY_CHUNKED) {
			if (!c->body && !(c->body = evbuffer_new())) {
				refuse_request(c, 500, "out of memory");
				return;
			}
			http_chunked_init(&c->chunked, CTL_MAX_BODY);
		}
		if (req.expect_continue && req.body != HTTP_BODY_NONE)
			evbuffer_add_printf(bufferevent_get_output(c->bev), "HTTP/1.1 100 Continue\r\n\r\n");
	}
	if (len > CTL_MAX_RAW) {
		refuse_request(c, 413, "request too large");
		return;
	}

	size_t raw_len = c->head_len;
	const char *body = NULL;
	size_t body_len = 0;
	if (c->body_kind == HTTP_BODY_LENGTH) {
		if (len - c->head_len < c->content_length)
			return;
		body_len = (size_t)c->content_length;
		raw_len += body_len;
	} else if (c->body_kind == HTTP_BODY_CHUNKED) {
		int r = read_chunked(c, in);
		if (r <= 0)
			return;
		raw_len += c->chunk_off;
		body_len = evbuffer_get_length(c->body);
		body = body_len ? (const char *)evbuffer_pullup(c->body, -1) : NULL;
	}

	/* The whole request is here: parse its head again in place (pointers
	 * into the linear input) and answer. */
	const char *p = (const char *)evbuffer_pullup(in, (ssize_t)raw_len);
	if (http_parse_request(p, c->head_len, CTL_MAX_HEAD, CTL_MAX_BODY, &req) != (int)c->head_len) {
		refuse_request(c, 500, "request changed while reading");
		return;
	}
	if (c->body_kind == HTTP_BODY_LENGTH)
		body = p + c->head_len;
	evtimer_del(c->timer);
	c->keep_alive = req.keep_alive;
	c->http10 = req.minor_version == 0;
	c->state = CONN_BUSY;
	dispatch(c, &req, body ? body : "", body_len);
	/* The request is answered or being answered; its bytes go. Pipelined
	 * bytes after it stay for conn_finish's deferred read. */
	if (c->bev)
		evbuffer_drain(in, raw_len);
}

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	conn_process(arg);
}

static void conn_write_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;
	char sink[16384];

	if (c->state != CONN_CLOSING || evbuffer_get_length(bufferevent_get_output(bev)) > 0)
		return;
	/* Closing a unix socket with unread bytes makes the peer's next read
	 * fail with ECONNRESET instead of seeing the end of our answer; take
	 * what the peer already sent (bounded) first. */
	for (int i = 0; i < 64 && read(bufferevent_getfd(bev), sink, sizeof(sink)) > 0; i++)
		;
	conn_free(c);
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;

	if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)))
		return;
	if (!(what & BEV_EVENT_EOF) || (c->swap && !c->swap_done)) {
		conn_close(c);
		return;
	}
	/* The peer finished sending: answer what it asked, then close. */
	c->keep_alive = false;
	if (c->state == CONN_BUSY)
		return;
	c->state = CONN_CLOSING;
	if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
		conn_free(c);
}

static void conn_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;

	(void)fd;
	(void)what;
	if (c->state != CONN_READING)
		return;
	if (evbuffer_get_length(bufferevent_get_input(c->bev)) == 0) {
		conn_close(c);          /* idle keep-alive connection */
		return;
	}
	refuse_request(c, 408, "request not received in time (10s)");
}

/* Access control --------------------------------------------------------- */

/* getgrnam_r/getpwuid_r with a growing buffer. *buf is the caller's to
 * free. 0 found, -1 not found or failure. */
static int lookup_group(const char *name, struct group *gr, char **buf)
{
	size_t size = 4096;
	struct group *res = NULL;

	for (;;) {
		char *nb = realloc(*buf, size);
		if (!nb)
			return -1;
		*buf = nb;
		int rc = getgrnam_r(name, gr, *buf, size, &res);
		if (rc == ERANGE && size < (1u << 20)) {
			size *= 2;
			continue;
		}
		return rc == 0 && res ? 0 : -1;
	}
}

static int lookup_user(uid_t uid, struct passwd *pw, char **buf)
{
	size_t size = 4096;
	struct passwd *res = NULL;

	for (;;) {
		char *nb = realloc(*buf, size);
		if (!nb)
			return -1;
		*buf = nb;
		int rc = getpwuid_r(uid, pw, *buf, size, &res);
		if (rc == ERANGE && size < (1u << 20)) {
			size *= 2;
			continue;
		}
		return rc == 0 && res ? 0 : -1;
	}
}

static bool gid_in(gid_t gid, const gid_t *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (v[i] == gid)
			return true;
	return false;
}

/* root, pmd's own euid, or a member of control_group. */
static bool peer_allowed(const struct control *ctl, int fd, const struct ucred *cr)
{
	struct group gr;
	struct passwd pw;
	char *gbuf = NULL, *pbuf = NULL;
	gid_t groups[256];
	bool ok = false;

	if (cr->uid == 0 || cr->uid == geteuid())
		return true;
	if (lookup_group(ctl->d->cfg->control_group, &gr, &gbuf) < 0)
		goto out;
	if (cr->gid == gr.gr_gid) {
		ok = true;
		goto out;
	}
	/* supplementary groups of the peer process itself */
	socklen_t glen = sizeof(groups);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &glen) == 0
	    && gid_in(gr.gr_gid, groups, glen / sizeof(gid_t))) {
		ok = true;
		goto out;
	}
	/* the user's memberships in the group database */
	if (lookup_user(cr->uid, &pw, &pbuf) < 0)
		goto out;
	for (char **m = gr.gr_mem; m && *m; m++)
		if (strcmp(*m, pw.pw_name) == 0) {
			ok = true;
			goto out;
		}
	int ng = (int)(sizeof(groups) / sizeof(groups[0]));
	if (getgrouplist(pw.pw_name, pw.pw_gid, groups, &ng) >= 0 && gid_in(gr.gr_gid, groups, (size_t)ng))
		ok = true;
out:
	free(gbuf);
	free(pbuf);
	return ok;
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
	int salen, void *arg)
{
	struct control *ctl = arg;
	struct ucred cr;
	socklen_t crlen = sizeof(cr);
	struct conn *c = NULL;

	(void)l;
	(void)sa;
	(void)salen;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &crlen) < 0) {
		log_syserr("control: SO_PEERCRED failed, connection closed");
		goto fail;
	}
	if (!peer_allowed(ctl, fd, &cr)) {
		log_warn("control: refused uid=%u gid=%u pid=%d group=%s", (unsigned)cr.uid,
			(unsigned)cr.gid, (int)cr.pid, ctl->d->cfg->control_group);
		goto fail;
	}
	if (ctl->n_conns >= CTL_MAX_CONNS) {
		log_warn("control: too many connections, closed uid=%u max=%d", (unsigned)cr.uid, CTL_MAX_CONNS);
		goto fail;
	}
	c = calloc(1, sizeof(*c));
	if (!c)
		goto fail;
	c->uid = cr.uid;
	c->pid = cr.pid;
	c->bev = bufferevent_socket_new(ctl->d->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (!c->bev)
		goto fail;
	fd = -1;                    /* owned by the bufferevent */
	c->timer = evtimer_new(ctl->d->base, conn_timeout_cb, c);
	if (!c->timer)
		goto fail;
	c->ctl = ctl;
	c->next = ctl->conns;
	if (ctl->conns)
		ctl->conns->prev = c;
	ctl->conns = c;
	ctl->n_conns++;
	bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
	bufferevent_setwatermark(c->bev, EV_READ, 0, CTL_MAX_RAW + 1);
	/* a peer that stops reading its answer is dropped */
	struct timeval wt = { CTL_WRITE_TIMEOUT_S, 0 };
	bufferevent_set_timeouts(c->bev, NULL, &wt);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	conn_arm_timer(c);
	log_debug("control: connection uid=%u pid=%d", (unsigned)cr.uid, (int)cr.pid);
	return;
fail:
	if (c)
		conn_free(c);
	if (fd >= 0)
		evutil_closesocket(fd);
}

/* Socket set-up ---------------------------------------------------------- */

/* Create the folder of the socket (0750, group `gid` when root) if it is
 * missing; existing folders are left as they are. */
static int make_socket_dir(const char *path, gid_t gid, bool set_group, char **errp)
{
	char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char *slash;
	struct stat st;

	snprintf(dir, sizeof(dir), "%s", path);
	slash = strrchr(dir, '/');
	if (!slash || slash == dir)
		return 0;
	*slash = '\0';
	if (stat(dir, &st) == 0)
		return 0;
	/* create every missing component; only the last one is ours to shape */
	for (char *p = dir + 1; ; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		char saved = *p;
		*p = '\0';
		if (mkdir(dir, 0750) < 0 && errno != EEXIST) {
			if (asprintf(errp, "control_socket: cannot create folder %s: %s", dir, strerror(errno)) < 0)
				*errp = NULL;
			return -1;
		}
		*p = saved;
		if (saved == '\0')
			break;
	}
	if (chmod(dir, 0750) < 0 || (set_group && chown(dir, 0, gid) < 0)) {
		if (asprintf(errp, "control_socket: cannot set owner/mode of %s: %s", dir, strerror(errno)) < 0)
			*errp = NULL;
		return -1;
	}
	return 0;
}

/* A socket file left at path: remove it if nothing answers there. */
static int clear_stale_socket(const char *path, char **errp)
{
	struct stat st;
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd = -1, rc = -1;

	if (lstat(path, &st) < 0) {
		if (errno == ENOENT)
			return 0;
		if (asprintf(errp, "control_socket: cannot stat %s: %s", path, strerror(errno)) < 0)
			*errp = NULL;
		return -1;
	}
	if (!S_ISSOCK(st.st_mode)) {
		if (asprintf(errp, "control_socket: %s exists and is not a socket", path) < 0)
			*errp = NULL;
		return -1;
	}
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto syserr;
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0 || errno == EAGAIN) {
		if (asprintf(errp, "another pmd is running on %s", path) < 0)
			*errp = NULL;
		goto out;
	}
	if (errno != ECONNREFUSED)
		goto syserr;
	if (unlink(path) < 0 && errno != ENOENT)
		goto syserr;
	log_info("control: removed stale socket path=%s", path);
	rc = 0;
	goto out;
syserr:
	if (asprintf(errp, "control_socket: %s: %s", path, strerror(errno)) < 0)
		*errp = NULL;
out:
	if (fd >= 0)
		close(fd);
	return rc;
}

struct control *control_new(struct pmd *d, char **errp)
{
	const char *path = d->cfg->control_socket;
	const char *group = d->cfg->control_group;
	struct control *c = NULL;
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct group gr;
	char *gbuf = NULL;
	bool have_group = false, bound = false, is_root = geteuid() == 0;
	int fd = -1;

	*errp = NULL;
	if (strlen(path) >= sizeof(sun.sun_path) || path[0] != '/') {
		if (asprintf(errp, "control_socket: expected an absolute path shorter than %zu bytes, got \"%s\"",
			sizeof(sun.sun_path), path) < 0)
			*errp = NULL;
		goto fail;
	}
	if (lookup_group(group, &gr, &gbuf) == 0)
		have_group = true;
	else
		log_warn("control: group not found, socket keeps pmd's group group=%s path=%s", group, path);
	/* handed over by the pmd this one replaces: already bound, owned and
	 * listening (and the path is that pmd's until it is gone) */
	if ((fd = listenfds_take_unix(path)) >= 0) {
		log_info("control socket given path=%s", path);
	} else {
		if (make_socket_dir(path, have_group ? gr.gr_gid : 0, have_group && is_root, errp) < 0
		    || clear_stale_socket(path, errp) < 0)
			goto fail;
		snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0)
			goto syserr;
		bound = true;
		/* owner and mode are set before listen(): no one connects meanwhile */
		if (chmod(path, 0660) < 0 || (is_root && have_group && chown(path, 0, gr.gr_gid) < 0)
		    || listen(fd, 64) < 0)
			goto syserr;
	}

	c = calloc(1, sizeof(*c));
	if (!c || !(c->path = strdup(path)))
		goto oom;
	c->d = d;
	c->listener = evconnlistener_new(d->base, accept_cb, c,
		LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0, fd);
	if (!c->listener)
		goto oom;
	fd = -1;
	log_info("control socket listening path=%s group=%s", path, have_group ? group : "(pmd's own)");
	free(gbuf);
	return c;

oom:
	errno = ENOMEM;
syserr:
	if (asprintf(errp, "control_socket: %s: %s", path, strerror(errno)) < 0)
		*errp = NULL;
fail:
	if (fd >= 0)
		close(fd);
	if (bound)
		unlink(path);
	if (c)
		free(c->path);
	free(c);
	free(gbuf);
	return NULL;
}

int control_listen_fd(struct control *c)
{
	return c && c->listener ? evconnlistener_get_fd(c->listener) : -1;
}

void control_handed_over(struct control *c)
{
	if (!c || !c->listener)
		return;
	evconnlistener_free(c->listener);
	c->listener = NULL;
	free(c->path);
	c->path = NULL;
}

void control_free(struct control *c)
{
	if (!c)
		return;
	if (c->listener)
		evconnlistener_free(c->listener);
	while (c->conns)
		conn_close(c->conns);
	if (c->path && unlink(c->path) < 0 && errno != ENOENT)
		log_syserr("control: cannot remove socket path=%s", c->path);
	free(c->path);
	free(c);
}
