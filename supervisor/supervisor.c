/* supervisor — one state machine per service: starts the live instance,
 * health-checks it, restarts it with backoff, replaces it when unhealthy
 * for too long, adopts running instances at start, keeps state.json.
 * Swaps are in swap.c. See include/supervisor.h. */
#include "supervisor.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "backoff.h"
#include "health.h"
#include "log.h"
#include "snapshot.h"
#include "state.h"
#include "supervisor_int.h"

#define LAST_LOG_LINES 30

static void ms_to_tv(uint64_t ms, struct timeval *tv)
{
	tv->tv_sec = (time_t)(ms / 1000);
	tv->tv_usec = (suseconds_t)(ms % 1000) * 1000;
}

static void arm(struct event *ev, uint64_t ms)
{
	struct timeval tv;

	ms_to_tv(ms, &tv);
	evtimer_add(ev, &tv);
}

static void set_err(char **errp, const char *msg)
{
	if (errp != NULL) {
		free(*errp);
		*errp = strdup(msg);
	}
}

const char *svc_state_name(enum svc_state st)
{
	static const char *names[] = { "starting", "running", "unhealthy", "restarting",
		"crashloop", "failed", "stopped", "swapping" };

	return (size_t)st < sizeof(names) / sizeof(names[0]) ? names[st] : "?";
}

void svc_set_state(struct service *svc, enum svc_state st, const char *reason)
{
	if (svc->state == st)
		return;
	log_info("service state service=%s from=%s to=%s reason=%s", svc->name,
		svc_state_name(svc->state), svc_state_name(st), log_q(reason));
	svc->state = st;
}

const char *svc_other_color(const char *color)
{
	return strcmp(color, "blue") == 0 ? "green" : "blue";
}

struct service *sup_service(struct supervisor *s, const char *name)
{
	for (size_t i = 0; i < s->n; i++)
		if (s->svcs[i]->conf != NULL && strcmp(s->svcs[i]->name, name) == 0)
			return s->svcs[i];
	return NULL;
}

void sup_changed(struct supervisor *s)
{
	if (s->changed != NULL && !s->shutting_down)
		s->changed(s->changed_arg);
}

const char *sup_health_host(const struct supervisor *s, const struct svc_conf *c)
{
	if (c->health_host[0] != '\0')
		return c->health_host;
	return s->cfg->domains.n > 0 ? s->cfg->domains.v[0] : "localhost";
}

void sup_persist(struct supervisor *s)
{
	char *err = NULL;

	for (size_t i = 0; i < s->n; i++) {
		struct service *svc = s->svcs[i];
		struct state_service *ss;

		if (svc->conf == NULL || (ss = state_service(s->state, svc->name, true)) == NULL)
			continue;
		/* not deployed until its first release command is done: a pmd
		 * stopped meanwhile runs it again at its next start */
		if (svc->release_pending)
			continue;
		snprintf(ss->image, sizeof(ss->image), "%s", svc->image);
		snprintf(ss->color, sizeof(ss->color), "%s", svc->color);
		snprintf(ss->instance_id, sizeof(ss->instance_id), "%s",
			svc->live != NULL ? svc->live->rt->id : "");
	}
	if (sup_state_write(s, s->state, &err) == 0) {
		if (s->persist_failures > 0)
			log_info("state saved again after failed writes failures=%u", s->persist_failures);
		s->persist_failures = 0;
		s->persist_error[0] = '\0';
		evtimer_del(s->persist_timer);
	} else {
		uint64_t delay = backoff_delay_ms(++s->persist_failures);

		s->persist_failures_total++;
		snprintf(s->persist_error, sizeof(s->persist_error), "%s", err != NULL ? err : "write failed");
		log_error("state not saved, retrying attempt=%u in_ms=%llu error=%s", s->persist_failures,
			(unsigned long long)delay, log_q(s->persist_error));
		arm(s->persist_timer, delay);
	}
	free(err);
}

int sup_state_write(struct supervisor *s, const struct state *st, char **errp)
{
	char path[1024];

	snprintf(path, sizeof(path), "%s/state.json", s->cfg->state_dir);
	return state_save(st, path, errp);
}

static void persist_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	sup_persist(arg);
}

void sup_note_deployed(const struct instance *inst)
{
	struct state_service *ss;

	if (inst->rt->image_id[0] == '\0' ||
	    (ss = state_service(inst->svc->sup->state, inst->svc->name, true)) == NULL)
		return;
	state_add_deployed(ss, inst->rt->image, inst->rt->image_id);
}

/* Ports ------------------------------------------------------------------- */

static bool port_in_use(struct supervisor *s, int port)
{
	for (size_t i = 0; i < s->n; i++)
		for (struct instance *in = s->svcs[i]->instances; in != NULL; in = in->next)
			if (in->rt->host_port == port)
				return true;
	return false;
}

/* A free port on 127.0.0.1 that no instance of ours holds; 0 on failure. */
static int pick_port(struct supervisor *s)
{
	for (int tries = 0; tries < 32; tries++) {
		struct sockaddr_in sa = { .sin_family = AF_INET };
		socklen_t len = sizeof(sa);
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port = 0;

		if (fd < 0)
			return 0;
		sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
		    getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
			port = ntohs(sa.sin_port);
		close(fd);
		if (port > 0 && !port_in_use(s, port))
			return port;
	}
	return 0;
}

/* Instances ----------------------------------------------------------------- */

static void inst_health(void *arg, struct health *h, bool pass, bool changed);
static void inst_exited(void *arg, struct rt_instance *rt, int code, bool oom);
static void svc_crashed(struct service *svc, const char *why);
static void start_timeout_cb(evutil_socket_t fd, short what, void *arg);
static void unhealthy_timeout_cb(evutil_socket_t fd, short what, void *arg);
static void remove_retry_cb(evutil_socket_t fd, short what, void *arg);
static void removed_gone(void *arg, struct instance *inst);
static void svc_try_restart(struct service *svc);

struct instance *inst_new(struct service *svc, const char *image, const char *color)
{
	struct instance *inst = calloc(1, sizeof(*inst));

	if (inst == NULL || (inst->rt = rt_instance_new(svc->name, color)) == NULL) {
		free(inst);
		return NULL;
	}
	inst->svc = svc;
	inst->stop_timeout_ms = svc->conf->stop_timeout_ms;
	snprintf(inst->rt->image, sizeof(inst->rt->image), "%s", image);
	inst->start_timer = evtimer_new(svc->sup->base, start_timeout_cb, inst);
	inst->unhealthy_timer = evtimer_new(svc->sup->base, unhealthy_timeout_cb, inst);
	inst->remove_timer = evtimer_new(svc->sup->base, remove_retry_cb, inst);
	if (inst->start_timer == NULL || inst->unhealthy_timer == NULL || inst->remove_timer == NULL) {
		if (inst->start_timer != NULL)
			event_free(inst->start_timer);
		if (inst->unhealthy_timer != NULL)
			event_free(inst->unhealthy_timer);
		if (inst->remove_timer != NULL)
			event_free(inst->remove_timer);
		rt_instance_free(inst->rt);
		free(inst);
		return NULL;
	}
	inst->next = svc->instances;
	svc->instances = inst;
	return inst;
}

/* Keep the output of inst (gone) among the service's last few instances
 * (drained, replaced, crashed, failed candidates); the ring moves over. */
static void retain(struct service *svc, struct instance *inst)
{
	struct retained *r;

	if (inst->rt->id[0] == '\0' || inst->rt->logs == NULL || !(inst->started || inst->exited))
		return;   /* never ran under this pmd (a stray removed at start) */
	if (svc->n_retained == SVC_RETAINED)
		logring_free(svc->retained[--svc->n_retained].logs);
	memmove(&svc->retained[1], &svc->retained[0], svc->n_retained * sizeof(svc->retained[0]));
	svc->n_retained++;
	r = &svc->retained[0];
	memset(r, 0, sizeof(*r));
	snprintf(r->id, sizeof(r->id), "%s", inst->rt->id);
	snprintf(r->color, sizeof(r->color), "%s", inst->rt->color);
	snprintf(r->image, sizeof(r->image), "%s", inst->rt->image);
	r->started_at = inst->rt->started_at;
	r->ended_at = (long)time(NULL);
	r->has_exit = inst->exited;
	r->exit_code = inst->exit_code;
	logring_flush(inst->rt->logs);
	r->logs = inst->rt->logs;
	inst->rt->logs = NULL;
}

/* Unlink and free; the runtime is done with it. */
static void inst_free(struct instance *inst)
{
	struct service *svc = inst->svc;

	for (struct instance **pp = &svc->instances; *pp != NULL; pp = &(*pp)->next)
		if (*pp == inst) {
			*pp = inst->next;
			break;
		}
	if (svc->live == inst)
		svc->live = NULL;
	if (svc->swap != NULL)
		swap_forget_instance(svc->swap, inst);
	health_free(inst->health);
	event_free(inst->start_timer);
	event_free(inst->unhealthy_timer);
	event_free(inst->remove_timer);
	backend_unref(inst->be);
	svc->ops->release(inst->rt);
	retain(svc, inst);
	rt_instance_free(inst->rt);
	free(inst);
}

static void health_begin(struct instance *inst)
{
	struct service *svc = inst->svc;
	const struct svc_conf *c = svc->conf;
	struct health_params p = {
		.addr = inst->rt->addr,
		.path = c->health_path,
		.host = sup_health_host(svc->sup, c),
		.interval_ms = c->health_interval_ms,
		.timeout_ms = c->health_timeout_ms,
		.healthy_threshold = c->healthy_threshold,
		.unhealthy_threshold = c->unhealthy_threshold,
		.first_threshold = inst->adopted ? 1 : 0,
		.https = svc->sup->cfg->tls_mode != TLS_OFF,
	};

	/* checked at load: the range parses */
	(void)config_parse_status_range(c->health_status, &p.status_lo, &p.status_hi);

	inst->health = health_new(svc->sup->base, svc->sup->httpc, &p, inst_health, inst);
	if (inst->health == NULL)
		log_error("health checks not started service=%s error=\"out of memory\"", svc->name);
}

static void inst_started(void *arg, int ok, const char *err)
{
	struct instance *inst = arg;
	struct service *svc = inst->svc;

	if (!ok) {
		log_warn("instance not started service=%s color=%s error=%s", svc->name,
			inst->rt->color, log_q(err));
		if (inst->gate != NULL) {
			swap_inst_started(inst->gate, inst, 0, err);
		} else {
			snprintf(svc->error, sizeof(svc->error), "%s", err != NULL ? err : "start failed");
			if (svc->live == inst)
				svc->live = NULL;
			svc_crashed(svc, svc->error);
		}
		/* A container was created (its removal after the failure may
		 * have failed too): remove it for sure, retried as a leftover,
		 * rather than leave it `Created`. */
		if (svc->ops == &runtime_docker_ops && inst->rt->id[0] != '\0' &&
		    !svc->sup->shutting_down)
			inst_stop(inst, NULL, NULL);
		else
			inst_free(inst);
		return;
	}
	inst->started = true;
	inst->be = backend_new(svc->name, inst->rt->color, inst->rt->addr);
	if (inst->be == NULL)
		log_error("no backend for instance service=%s addr=%s", svc->name, inst->rt->addr);
	log_info("instance started service=%s color=%s id=%s addr=%s image=%s", svc->name,
		inst->rt->color, inst->rt->id, inst->rt->addr, log_q(inst->rt->image));
	sup_note_deployed(inst);
	health_begin(inst);
	if (inst->gate != NULL) {
		swap_inst_started(inst->gate, inst, 1, NULL);
		return;
	}
	if (svc->live == inst && !inst->adopted)
		arm(inst->start_timer, svc->conf->start_timeout_ms);
	sup_persist(svc->sup);
}

int inst_launch(struct instance *inst, char **errp)
{
	struct service *svc = inst->svc;
	const struct svc_conf *c = svc->conf;
	char **env = NULL, *err = NULL;

	if (c->runtime == RUNTIME_EXEC || (c->runtime == RUNTIME_DOCKER && c->network == NET_HOST)) {
		inst->rt->host_port = pick_port(svc->sup);
		if (inst->rt->host_port == 0) {
			set_err(errp, "no free port on 127.0.0.1");
			goto fail;
		}
	}
	if (c->runtime != RUNTIME_EXTERNAL) {
		env = runtime_env_build(c, inst->rt->host_port > 0 ? inst->rt->host_port : c->port, &err);
		if (env == NULL) {
			set_err(errp, err != NULL ? err : "cannot build the environment");
			free(err);
			goto fail;
		}
	}
	log_info("instance starting service=%s color=%s image=%s port=%d", svc->name,
		inst->rt->color, log_q(inst->rt->image), inst->rt->host_port);
	svc->ops->start(&svc->sup->rt, c, inst->rt, env, inst_exited, inst_started, inst);
	runtime_env_free(env);
	return 0;
fail:
	log_warn("instance refused service=%s error=%s", svc->name, log_q(errp ? *errp : ""));
	inst_free(inst);
	return -1;
}

static void inst_stopped(void *arg, int ok, const char *err)
{
	struct instance *inst = arg;
	struct service *svc = inst->svc;
	inst_gone_fn fn = inst->on_gone;
	void *fn_arg = inst->gone_arg;

	if (!ok && !svc->sup->shutting_down && svc->ops == &runtime_docker_ops) {
		/* A leftover: still there (engine restarting, 500 on stop or
		 * delete). Shown in /status, removal retried with backoff until
		 * it succeeds; whoever waited for it (a swap) goes on. */
		uint64_t delay = backoff_delay_ms(++inst->remove_failures);

		inst->leftover = true;
		snprintf(inst->remove_error, sizeof(inst->remove_error), "%s", err != NULL ? err : "");
		log_warn("instance not removed, retrying service=%s color=%s id=%s attempt=%u "
			"in_ms=%llu error=%s", svc->name, inst->rt->color, inst->rt->id,
			inst->remove_failures, (unsigned long long)delay, log_q(err));
		arm(inst->remove_timer, delay);
		inst->on_gone = NULL;
		if (fn != NULL && fn != removed_gone)
			fn(fn_arg, inst);
		return;
	}
	if (!ok)
		log_warn("instance not removed cleanly service=%s id=%s error=%s", svc->name,
			inst->rt->id, log_q(err));
	else
		log_info("instance removed service=%s color=%s id=%s attempts=%u", svc->name,
			inst->rt->color, inst->rt->id, inst->remove_failures + 1);
	if (inst->leftover && svc->conf == NULL) {
		fn = removed_gone;    /* the service went away by a reload meanwhile */
		fn_arg = svc;
	}
	inst_free(inst);
	if (svc->restart_due)
		svc_try_restart(svc);
	/* Last: a removed service is freed by its last instance's fn. */
	if (fn != NULL)
		fn(fn_arg, NULL);
}

static void remove_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	struct instance *inst = arg;
	struct service *svc = inst->svc;

	(void)fd;
	(void)what;
	log_info("removing leftover instance service=%s color=%s id=%s attempt=%u", svc->name,
		inst->rt->color, inst->rt->id, inst->remove_failures + 1);
	svc->ops->stop(&svc->sup->rt, inst->rt, (unsigned long)inst->stop_timeout_ms,
		inst_stopped, inst);
}

void inst_stop(struct instance *inst, inst_gone_fn fn, void *arg)
{
	struct service *svc = inst->svc;

	inst->on_gone = fn;
	inst->gone_arg = arg;
	if (inst->stopping)
		return;
	inst->stopping = true;
	inst->gate = NULL;
	health_free(inst->health);
	inst->health = NULL;
	evtimer_del(inst->start_timer);
	evtimer_del(inst->unhealthy_timer);
	if (inst->be != NULL)
		atomic_store(&inst->be->draining, 1);
	if (svc->live == inst)
		svc->live = NULL;
	log_info("instance stopping service=%s color=%s id=%s", svc->name, inst->rt->color,
		inst->rt->id);
	svc->ops->stop(&svc->sup->rt, inst->rt, (unsigned long)inst->stop_timeout_ms,
		inst_stopped, inst);
}

/* A copy of the last max lines of ring (NULL ring: empty); NULL on
 * allocation failure. */
static struct logring *ring_dup(const struct logring *ring, size_t max)
{
	size_t n = logring_count(ring);
	struct logring *c = logring_new(max);

	for (size_t k = n > max ? n - max : 0; c != NULL && k < n; k++) {
		const char *l = logring_line(ring, k);

		logring_push(c, l, strlen(l));
	}
	return c;
}

static void copy_logs(struct service *svc, const struct logring *from)
{
	logring_free(svc->last_logs);
	svc->last_logs = ring_dup(from, LAST_LOG_LINES);
}

static void logs_at_exit(void *arg, int ok, const char *err, struct logring *lines)
{
	struct service *svc = arg;

	(void)err;
	if (ok && lines != NULL && logring_count(lines) > 0)
		copy_logs(svc, lines);
}

static void inst_exited(void *arg, struct rt_instance *rt, int code, bool oom)
{
	struct instance *inst = arg;
	struct service *svc = inst->svc;
	bool routed = inst == svc->live && inst->health != NULL &&
		health_state(inst->health) == HEALTH_HEALTHY;
	char why[160];

	(void)rt;
	inst->exited = true;
	inst->exit_code = code;
	if (inst->stopping)
		return;   /* expected; inst_stopped frees it */
	log_warn("instance exited service=%s color=%s id=%s exit_code=%d oom_killed=%d",
		svc->name, inst->rt->color, inst->rt->id, code, oom);
	health_free(inst->health);
	inst->health = NULL;
	svc->has_exit = true;
	svc->last_exit_code = code;
	svc->oom_killed = oom;
	copy_logs(svc, inst->rt->logs);
	/* Docker keeps the output in the container: fetch it before removal. */
	if (logring_count(inst->rt->logs) == 0 && svc->ops->logs != NULL &&
	    svc->ops != &runtime_exec_ops)
		svc->ops->logs(&svc->sup->rt, inst->rt, LAST_LOG_LINES, logs_at_exit, svc);
	if (inst->gate != NULL) {
		swap_inst_exited(inst->gate, inst, code, oom);
		return;
	}
	if (inst == svc->live) {
		svc->live = NULL;
		snprintf(why, sizeof(why), "exited with code %d%s%s", code,
			oom ? " (OOM-killed)" : "", inst->was_healthy ? "" : " before it became healthy");
		snprintf(svc->error, sizeof(svc->error), "%s", why);
		if (routed)
			sup_changed(svc->sup);
		svc_crashed(svc, why);
	}
	inst_stop(inst, NULL, NULL);
}

/* Restarts ------------------------------------------------------------------ */

static bool restart_wanted(const struct service *svc)
{
	switch (svc->conf->restart) {
	case RESTART_ALWAYS:
		return true;
	case RESTART_ON_FAILURE:
		return !svc->has_exit || svc->last_exit_code != 0;
	case RESTART_NEVER:
		return false;
	}
	return false;
}

/* The live instance is gone (exit, start failure, never healthy). */
static void svc_crashed(struct service *svc, const char *why)
{
	uint64_t delay;

	evtimer_del(svc->stable_timer);
	if (svc->swap != NULL || svc->sup->shutting_down || svc->conf == NULL)
		return;   /* the swap decides what lives; svc_settle after it */
	if (!restart_wanted(svc)) {
		svc_set_state(svc, SVC_STOPPED, why);
		return;
	}
	svc->crashes++;
	delay = backoff_delay_ms(svc->crashes);
	svc_set_state(svc, svc->crashes >= 3 || strstr(why, "before it became healthy") != NULL ||
		svc->state == SVC_STARTING || svc->state == SVC_CRASHLOOP ?
		SVC_CRASHLOOP : SVC_RESTARTING, why);
	log_info("restart scheduled service=%s in_ms=%llu crashes=%u", svc->name,
		(unsigned long long)delay, svc->crashes);
	svc->restart_due = false;
	arm(svc->restart_timer, delay);
}

static void removed_gone(void *arg, struct instance *inst);
static void svc_start_live(struct service *svc);

/* The first start of a service never deployed on this host (no state, no
 * container of it): like a swap, its release_command (the migrations) runs
 * once in a one-off instance of the image before the first instance starts.
 * Crash restarts, adoptions and later starts skip it. A failure counts as a
 * crash: retried with the backoff, shown in status with its output. */
static bool first_release_ended(struct service *svc)
{
	svc->release_busy = false;
	if (svc->conf == NULL) {            /* removed by a reload meanwhile */
		removed_gone(svc, NULL);
		return false;
	}
	return !svc->sup->shutting_down;
}

static void first_release_failed(struct service *svc, const char *why, const struct logring *out)
{
	snprintf(svc->error, sizeof(svc->error), "%s", why);
	copy_logs(svc, out);
	log_warn("first release command failed service=%s error=%s", svc->name, log_q(why));
	svc_crashed(svc, why);
}

static void first_release_done(void *arg, int exit_code, const char *err, struct logring *output)
{
	struct service *svc = arg;
	char why[600];

	if (!first_release_ended(svc))
		return;
	if (exit_code == 0) {
		log_info("release command done, starting the first instance service=%s", svc->name);
		svc->release_pending = false;
		svc_start_live(svc);
		return;
	}
	if (exit_code < 0)
		snprintf(why, sizeof(why), "release command could not run: %s", err ? err : "unknown error");
	else
		snprintf(why, sizeof(why), "release command exited with code %d", exit_code);
	first_release_failed(svc, why, output);
}

static void first_release_run(void *arg, int ok, const char *err)
{
	struct service *svc = arg;
	const struct svc_conf *c = svc->conf;
	char why[600], *eerr = NULL, **env;

	if (svc->conf == NULL || svc->sup->shutting_down) {
		first_release_ended(svc);
		return;
	}
	if (!ok) {
		first_release_ended(svc);
		snprintf(why, sizeof(why), "pull before the release command failed: %s", err ? err : "unknown error");
		first_release_failed(svc, why, NULL);
		return;
	}
	if ((env = runtime_env_build(c, c->port, &eerr)) == NULL) {
		first_release_ended(svc);
		first_release_failed(svc, eerr ? eerr : "cannot build the environment", NULL);
		free(eerr);
		return;
	}
	log_info("running the release command before the first start service=%s command=%s",
		svc->name, log_q(c->release_command));
	svc->ops->run_once(&svc->sup->rt, c, svc->image, c->release_command, env,
		(unsigned long)c->start_timeout_ms, first_release_done, svc);
	runtime_env_free(env);
}

/* Start a live instance of svc->image on svc->color. */
static void svc_start_live(struct service *svc)
{
	struct instance *inst;
	char *err = NULL;

	if (svc->release_pending && svc->conf->release_command[0] != '\0' && svc->ops->run_once != NULL) {
		if (svc->release_busy)
			return;
		svc->release_busy = true;
		svc_set_state(svc, SVC_STARTING, "release command before the first start");
		if (svc->ops->pull != NULL)
			svc->ops->pull(&svc->sup->rt, svc->conf, svc->image, NULL, first_release_run, svc);
		else
			first_release_run(svc, 1, NULL);
		return;
	}

	svc->release_pending = false;
	if (svc->color[0] == '\0')
		snprintf(svc->color, sizeof(svc->color), "blue");
	inst = inst_new(svc, svc->image, svc->color);
	if (inst == NULL) {
		log_error("instance not created service=%s error=\"out of memory\"", svc->name);
		return;
	}
	svc->live = inst;
	if (svc->state != SVC_CRASHLOOP)
		svc_set_state(svc, SVC_STARTING, "instance starting");
	if (inst_launch(inst, &err) < 0) {
		snprintf(svc->error, sizeof(svc->error), "%s", err);
		svc_set_state(svc, SVC_FAILED, err);
	}
	free(err);
}

static void svc_try_restart(struct service *svc)
{
	if (svc->swap != NULL || svc->live != NULL || svc->conf == NULL || svc->sup->shutting_down) {
		svc->restart_due = false;
		return;
	}
	/* Docker names are per colour: the dead one must be removed first. */
	for (struct instance *in = svc->instances; in != NULL; in = in->next)
		if (strcmp(in->rt->color, svc->color) == 0) {
			svc->restart_due = true;
			return;
		}
	svc->restart_due = false;
	svc->restarts++;
	log_info("restarting service=%s restarts=%lu", svc->name, svc->restarts);
	svc_start_live(svc);
}

static void restart_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	svc_try_restart(arg);
}

static void stable_cb(evutil_socket_t fd, short what, void *arg)
{
	struct service *svc = arg;

	(void)fd;
	(void)what;
	if (svc->crashes > 0)
		log_info("backoff reset service=%s crashes=%u", svc->name, svc->crashes);
	svc->crashes = 0;
}

static void start_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct instance *inst = arg;
	struct service *svc = inst->svc;
	char why[400];

	(void)fd;
	(void)what;
	if (inst != svc->live || inst->stopping || inst->was_healthy)
		return;
	snprintf(why, sizeof(why), "not healthy within %llums (last check: %s)",
		(unsigned long long)svc->conf->start_timeout_ms,
		inst->health != NULL ? health_last_error(inst->health) : "none");
	snprintf(svc->error, sizeof(svc->error), "%s", why);
	copy_logs(svc, inst->rt->logs);
	svc->live = NULL;
	inst_stop(inst, NULL, NULL);
	svc_crashed(svc, why);
}

static void unhealthy_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct instance *inst = arg;
	struct service *svc = inst->svc;

	(void)fd;
	(void)what;
	if (inst != svc->live || inst->stopping || inst->health == NULL ||
	    health_state(inst->health) != HEALTH_UNHEALTHY)
		return;
	log_warn("instance unhealthy too long, replacing service=%s id=%s for_ms=%llu", svc->name,
		inst->rt->id, (unsigned long long)svc->conf->unhealthy_restart_ms);
	if (swap_internal_restart(svc->sup, svc) < 0)
		arm(inst->unhealthy_timer, svc->conf->unhealthy_restart_ms);
}

static void on_live_health(struct service *svc, struct instance *inst)
{
	const struct svc_conf *c = svc->conf;

	switch (health_state(inst->health)) {
	case HEALTH_HEALTHY:
		inst->was_healthy = true;
		evtimer_del(inst->start_timer);
		evtimer_del(inst->unhealthy_timer);
		svc->error[0] = '\0';
		if (svc->swap == NULL)
			svc_set_state(svc, SVC_RUNNING, "health checks pass");
		arm(svc->stable_timer, BACKOFF_RESET_MS);
		break;
	case HEALTH_UNHEALTHY:
		evtimer_del(svc->stable_timer);
		snprintf(svc->error, sizeof(svc->error), "health check failing: %s",
			health_last_error(inst->health));
		if (svc->swap == NULL)
			svc_set_state(svc, SVC_UNHEALTHY, svc->error);
		if (c->unhealthy_restart_ms > 0)
			arm(inst->unhealthy_timer, c->unhealthy_restart_ms);
		break;
	case HEALTH_STARTING:
		break;
	}
	sup_changed(svc->sup);
}

static void inst_health(void *arg, struct health *h, bool pass, bool changed)
{
	struct instance *inst = arg;
	struct service *svc = inst->svc;

	(void)h;
	if (inst->gate != NULL) {
		swap_inst_health(inst->gate, inst, pass, changed);
		return;
	}
	if (changed && inst == svc->live && svc->conf != NULL) {
		log_info("instance health service=%s color=%s id=%s health=%s", svc->name,
			inst->rt->color, inst->rt->id, health_state_name(health_state(inst->health)));
		on_live_health(svc, inst);
	}
}

void svc_make_live(struct service *svc, struct instance *inst)
{
	inst->gate = NULL;
	svc->live = inst;
	snprintf(svc->image, sizeof(svc->image), "%s", inst->rt->image);
	snprintf(svc->color, sizeof(svc->color), "%s", inst->rt->color);
	svc->crashes = 0;
	svc->error[0] = '\0';
	inst->was_healthy = inst->health != NULL && health_state(inst->health) == HEALTH_HEALTHY;
	if (inst->was_healthy)
		arm(svc->stable_timer, BACKOFF_RESET_MS);
}

void svc_settle(struct service *svc)
{
	struct instance *l = svc->live;

	if (svc->conf == NULL)
		return;
	if (l == NULL) {
		svc_crashed(svc, svc->error[0] != '\0' ? svc->error : "no live instance");
		return;
	}
	switch (l->health != NULL ? health_state(l->health) : HEALTH_STARTING) {
	case HEALTH_HEALTHY:
		svc_set_state(svc, SVC_RUNNING, "swap ended");
		break;
	case HEALTH_UNHEALTHY:
		svc_set_state(svc, SVC_UNHEALTHY, "swap ended");
		if (svc->conf->unhealthy_restart_ms > 0)
			arm(l->unhealthy_timer, svc->conf->unhealthy_restart_ms);
		break;
	case HEALTH_STARTING:
		svc_set_state(svc, SVC_STARTING, "swap ended");
		break;
	}
}

/* Services ------------------------------------------------------------------ */

static struct service *svc_new(struct supervisor *s, const struct svc_conf *c)
{
	struct service *svc = calloc(1, sizeof(*svc));

	if (svc == NULL)
		return NULL;
	svc->sup = s;
	svc->conf = c;
	svc->ops = runtime_for(c->runtime);
	snprintf(svc->name, sizeof(svc->name), "%s", c->name);
	snprintf(svc->image, sizeof(svc->image), "%s", c->image);
	svc->state = SVC_STOPPED;
	svc->restart_timer = evtimer_new(s->base, restart_cb, svc);
	svc->stable_timer = evtimer_new(s->base, stable_cb, svc);
	if (svc->restart_timer == NULL || svc->stable_timer == NULL) {
		if (svc->restart_timer != NULL)
			event_free(svc->restart_timer);
		if (svc->stable_timer != NULL)
			event_free(svc->stable_timer);
		free(svc);
		return NULL;
	}
	return svc;
}

/* Every instance must be gone (or abandoned at shutdown) before this. */
static void svc_free(struct service *svc)
{
	while (svc->instances != NULL)
		inst_free(svc->instances);
	event_free(svc->restart_timer);
	event_free(svc->stable_timer);
	logring_free(svc->last_logs);
	for (size_t i = 0; i < svc->n_retained; i++)
		logring_free(svc->retained[i].logs);
	free(svc);
}

static int add_service(struct supervisor *s, const struct svc_conf *c)
{
	struct service **v = realloc(s->svcs, (s->n + 1) * sizeof(*v));

	if (v == NULL)
		return -1;
	s->svcs = v;
	v[s->n] = svc_new(s, c);
	if (v[s->n] == NULL)
		return -1;
	s->n++;
	return 0;
}

struct supervisor *supervisor_new(struct event_base *base, struct httpc *httpc,
	const struct pmd_config *cfg, supervisor_changed_fn changed, void *arg, char **errp)
{
	struct supervisor *s = calloc(1, sizeof(*s));

	if (s == NULL || (s->state = state_new()) == NULL ||
	    (s->persist_timer = evtimer_new(base, persist_retry_cb, s)) == NULL)
		goto fail;
	s->base = base;
	s->httpc = httpc;
	s->cfg = cfg;
	s->rt.base = base;
	s->rt.httpc = httpc;
	s->rt.cfg = cfg;
	s->changed = changed;
	s->changed_arg = arg;
	for (size_t i = 0; i < cfg->n_services; i++)
		if (add_service(s, &cfg->services[i]) < 0)
			goto fail;
	return s;
fail:
	set_err(errp, "supervisor: out of memory");
	supervisor_free(s);
	return NULL;
}

/* Image and colour the service starts with: what state.json remembers
 * (a swap may have made a newer image live), else the config. */
static void svc_from_state(struct supervisor *s, struct service *svc)
{
	struct state_service *ss = state_service(s->state, svc->name, false);

	svc->release_pending = ss == NULL || ss->image[0] == '\0';
	if (ss == NULL)
		return;
	if (ss->image[0] != '\0' && svc->conf->runtime != RUNTIME_EXTERNAL)
		snprintf(svc->image, sizeof(svc->image), "%s", ss->image);
	if (strcmp(ss->color, "blue") == 0 || strcmp(ss->color, "green") == 0)
		snprintf(svc->color, sizeof(svc->color), "%s", ss->color);
}

/* Adoption (docker) ------------------------------------------------------- */

static void adopted_cb(void *arg, int ok, const char *err)
{
	struct instance *inst = arg;
	struct service *svc = inst->svc;

	if (!ok) {
		log_warn("instance not adopted, starting a new one service=%s id=%s error=%s",
			svc->name, inst->rt->id, log_q(err));
		svc->live = NULL;
		inst_stop(inst, NULL, NULL);
		svc_start_live(svc);
		return;
	}
	inst->started = true;
	inst->be = backend_new(svc->name, inst->rt->color, inst->rt->addr);
	log_info("instance adopted service=%s color=%s id=%s addr=%s image=%s", svc->name,
		inst->rt->color, inst->rt->id, inst->rt->addr, log_q(inst->rt->image));
	sup_note_deployed(inst);
	health_begin(inst);
	sup_persist(svc->sup);
}

static void stray_gone(void *arg, struct instance *inst)
{
	(void)arg;
	(void)inst;
}

/* An instance record for something found running (or left over). */
static struct instance *inst_found(struct service *svc, const struct rt_found *f)
{
	struct instance *inst = inst_new(svc, f->image, f->color);

	if (inst == NULL)
		return NULL;
	snprintf(inst->rt->id, sizeof(inst->rt->id), "%s", f->id);
	snprintf(inst->rt->name, sizeof(inst->rt->name), "%s", f->name);
	inst->rt->host_port = f->host_port;
	snprintf(inst->rt->addr, sizeof(inst->rt->addr), "127.0.0.1:%d", f->host_port);
	return inst;
}

/* Pick the instance to adopt for svc among found: the colour state.json
 * names, or without a state the only running one. When the colour
 * state.json names is not running but another instance is, that one went
 * live after the last write of state.json (a swap whose record was lost):
 * it is adopted (the newest), never removed as a stray. */
static const struct rt_found *pick_adoptee(struct supervisor *s, struct service *svc,
	const struct rt_found *found, size_t n)
{
	struct state_service *ss = state_service(s->state, svc->name, false);
	const struct rt_found *pick = NULL, *newest = NULL;
	size_t running = 0;
	bool named = ss != NULL && ss->color[0] != '\0';

	for (size_t i = 0; i < n; i++) {
		const struct rt_found *f = &found[i];

		if (strcmp(f->service, svc->name) != 0 || !f->running ||
		    (strcmp(f->color, "blue") != 0 && strcmp(f->color, "green") != 0))
			continue;
		running++;
		if (newest == NULL || f->created > newest->created)
			newest = f;
		if (named) {
			if (strcmp(f->color, ss->color) == 0)
				pick = f;
		} else if (pick == NULL) {
			pick = f;
		}
	}
	if (running > 1 && !named)
		log_warn("several running instances and no state, adopting one service=%s color=%s",
			svc->name, pick->color);
	if (pick == NULL && newest != NULL) {
		log_warn("adopting an instance state.json does not name service=%s color=%s id=%s "
			"image=%s reason=\"the colour state.json names (%s) is not running: this one "
			"went live after state.json was last written\"", svc->name, newest->color,
			newest->id, log_q(newest->image), ss->color);
		pick = newest;
	}
	return pick;
}

static void adopt_service(struct supervisor *s, struct service *svc, const struct rt_found *found,
	size_t n)
{
	const struct rt_found *pick = pick_adoptee(s, svc, found, n);
	struct state_service *ss;

	for (size_t i = 0; i < n; i++) {
		struct instance *inst;

		/* deployed here before; a one-off (release) container is not:
		 * its command may have been cut short */
		if (strcmp(found[i].service, svc->name) == 0 && strcmp(found[i].color, "once") != 0)
			svc->release_pending = false;
		if (strcmp(found[i].service, svc->name) != 0 || &found[i] == pick)
			continue;
		inst = inst_found(svc, &found[i]);
		if (inst == NULL)
			continue;
		log_info("removing stray instance service=%s color=%s id=%s running=%d", svc->name,
			found[i].color, found[i].id, found[i].running);
		inst->stop_timeout_ms = svc->conf->stop_timeout_ms;
		inst_stop(inst, stray_gone, NULL);
	}
	if (pick == NULL) {
		svc_start_live(svc);
		return;
	}
	svc->live = inst_found(svc, pick);
	if (svc->live == NULL)
		return;
	svc->live->adopted = true;
	ss = state_service(s->state, svc->name, false);
	if (ss != NULL && ss->image[0] != '\0' && strcmp(ss->image, pick->image) != 0) {
		/* the unrecorded swap: what state.json named was before it */
		state_push_previous(ss, ss->image);
		state_remove_previous(ss, pick->image);
	}
	snprintf(svc->image, sizeof(svc->image), "%s", pick->image);
	snprintf(svc->color, sizeof(svc->color), "%s", pick->color);
	svc_set_state(svc, SVC_STARTING, "adopting the running instance");
	svc->ops->adopt(&s->rt, svc->conf, svc->live->rt, inst_exited, adopted_cb, svc->live);
}

static void listed_cb(void *arg, int ok, const char *err, struct rt_found *found, size_t n)
{
	struct supervisor *s = arg;

	if (!ok) {
		log_error("cannot list running instances, starting fresh ones error=%s", log_q(err));
		n = 0;
	}
	for (size_t i = 0; i < n; i++)
		if (sup_service(s, found[i].service) == NULL)
			log_info("leaving alone an instance of an unknown service service=%s id=%s",
				found[i].service, found[i].id);
	for (size_t i = 0; i < s->n; i++) {
		struct service *svc = s->svcs[i];

		if (svc->conf == NULL || svc->ops->list == NULL || svc->live != NULL)
			continue;
		if (svc->ops->adopt != NULL)
			adopt_service(s, svc, found, n);
		else
			svc_start_live(svc);
	}
}

int supervisor_start(struct supervisor *s, char **errp)
{
	char path[1024], *err = NULL;
	const struct runtime_ops *lister = NULL;
	int rc;

	(void)errp;
	snprintf(path, sizeof(path), "%s/state.json", s->cfg->state_dir);
	state_free(s->state);
	s->state = NULL;
	rc = state_load(path, &s->state, &err);
	if (rc < 0)
		log_error("state file unusable, rebuilding it from what runs error=%s", log_q(err));
	else if (rc == 2)
		log_warn("state file unusable, using its copy path=%s.prev error=%s", log_q(path),
			log_q(err));
	else if (rc > 0)
		log_info("no state file yet path=%s", log_q(path));
	free(err);
	if (s->state == NULL) {
		set_err(errp, "supervisor: out of memory");
		return -1;
	}
	s->started = true;
	for (size_t i = 0; i < s->n; i++) {
		struct service *svc = s->svcs[i];

		svc_from_state(s, svc);
		if (svc->ops->list != NULL)
			lister = svc->ops;
		else
			svc_start_live(svc);
	}
	if (lister != NULL)
		lister->list(&s->rt, listed_cb, s);
	return 0;
}

/* Reload ------------------------------------------------------------------ */

static void removed_gone(void *arg, struct instance *inst)
{
	struct service *svc = arg;

	(void)inst;
	if (svc->instances != NULL)
		return;
	for (size_t i = 0; i < svc->sup->n; i++)
		if (svc->sup->svcs[i] == svc) {
			memmove(&svc->sup->svcs[i], &svc->sup->svcs[i + 1],
				(svc->sup->n - i - 1) * sizeof(svc->sup->svcs[0]));
			svc->sup->n--;
			break;
		}
	svc_free(svc);
}

int supervisor_reload(struct supervisor *s, const struct pmd_config *cfg, char **errp)
{
	for (size_t i = 0; i < s->n; i++) {
		struct service *svc = s->svcs[i];
		const struct svc_conf *c;

		if (svc->conf == NULL)
			continue;
		c = config_service(cfg, svc->name);
		if (svc->swap != NULL && (c == NULL || c->runtime != svc->conf->runtime)) {
			char msg[200];

			snprintf(msg, sizeof(msg), "service %s is being swapped; reload after the swap",
				svc->name);
			set_err(errp, msg);
			return -1;
		}
		if (c != NULL && c->runtime != svc->conf->runtime && svc->instances != NULL) {
			char msg[200];

			snprintf(msg, sizeof(msg), "service %s: runtime cannot change while it runs; "
				"remove the service, reload, then add it again", svc->name);
			set_err(errp, msg);
			return -1;
		}
	}
	s->cfg = cfg;
	s->rt.cfg = cfg;
	for (size_t i = 0; i < s->n; i++) {
		struct service *svc = s->svcs[i];

		if (svc->conf == NULL)
			continue;
		svc->conf = config_service(cfg, svc->name);
		if (svc->conf != NULL)
			continue;
		log_info("service removed by reload, stopping it service=%s", svc->name);
		evtimer_del(svc->restart_timer);
		evtimer_del(svc->stable_timer);
		svc->live = NULL;
		if (svc->release_busy)
			continue;   /* freed when the release command ends */
		if (svc->instances == NULL) {
			removed_gone(svc, NULL);
			i--;
			continue;
		}
		for (struct instance *in = svc->instances, *nx; in != NULL; in = nx) {
			nx = in->next;
			inst_stop(in, removed_gone, svc);
		}
	}
	for (size_t i = 0; i < cfg->n_services; i++) {
		if (sup_service(s, cfg->services[i].name) != NULL)
			continue;
		if (add_service(s, &cfg->services[i]) < 0) {
			set_err(errp, "supervisor: out of memory");
			return -1;
		}
		log_info("service added by reload service=%s", cfg->services[i].name);
		svc_from_state(s, s->svcs[s->n - 1]);
		if (s->started)
			svc_start_live(s->svcs[s->n - 1]);
	}
	return 0;
}

void supervisor_shutdown(struct supervisor *s)
{
	if (s == NULL || s->shutting_down)
		return;
	s->shutting_down = true;
	swap_shutdown_all(s);
	for (size_t i = 0; i < s->n; i++) {
		struct service *svc = s->svcs[i];

		evtimer_del(svc->restart_timer);
		evtimer_del(svc->stable_timer);
		for (struct instance *in = svc->instances, *nx; in != NULL; in = nx) {
			nx = in->next;
			health_free(in->health);
			in->health = NULL;
			evtimer_del(in->start_timer);
			evtimer_del(in->unhealthy_timer);
			evtimer_del(in->remove_timer);
			/* Containers are adopted at the next start; processes are not. */
			if (svc->ops == &runtime_exec_ops && in->started && !in->exited)
				inst_stop(in, NULL, NULL);
		}
	}
}

int supervisor_pending(const struct supervisor *s)
{
	int n = 0;
	for (size_t i = 0; s && i < s->n; i++)
		for (const struct instance *in = s->svcs[i]->instances; in; in = in->next)
			if (s->svcs[i]->ops == &runtime_exec_ops && in->started && !in->exited)
				n++;
	return n;
}

void supervisor_free(struct supervisor *s)
{
	if (s == NULL)
		return;
	s->shutting_down = true;
	swap_free_all(s);
	for (size_t i = 0; i < s->n; i++)
		svc_free(s->svcs[i]);
	free(s->svcs);
	state_free(s->state);
	if (s->persist_timer != NULL)
		event_free(s->persist_timer);
	free(s);
}

/* Snapshot, status, metrics, logs ---------------------------------------- */

static bool inst_routed(const struct service *svc, const struct instance *in)
{
	return in == svc->live && in->be != NULL && !in->stopping && in->health != NULL &&
		health_state(in->health) == HEALTH_HEALTHY;
}

int supervisor_fill_snapshot(struct supervisor *s, struct snapshot *snap)
{
	const struct pmd_config *cfg = s->cfg;

	if (cfg->n_services == 0)
		return 0;
	snap->services = calloc(cfg->n_services, sizeof(*snap->services));
	if (snap->services == NULL)
		return -1;
	for (size_t i = 0; i < cfg->n_services; i++) {
		struct snap_service *ss = &snap->services[snap->n_services++];
		struct service *svc = sup_service(s, cfg->services[i].name);

		ss->name = strdup(cfg->services[i].name);
		if (ss->name == NULL)
			return -1;
		if (svc == NULL || svc->live == NULL || !inst_routed(svc, svc->live))
			continue;
		ss->live = calloc(1, sizeof(*ss->live));
		if (ss->live == NULL)
			return -1;
		ss->live[ss->n_live++] = backend_ref(svc->live->be);
	}
	return 0;
}

static const char *inst_health_name(const struct instance *in)
{
	if (in->stopping)
		return "stopping";
	if (in->health == NULL)
		return in->started ? "unknown" : "starting";
	return health_state_name(health_state(in->health));
}

static cJSON *service_json(struct supervisor *s, struct service *svc)
{
	struct state_service *ss = state_service(s->state, svc->name, false);
	cJSON *o = cJSON_CreateObject(), *insts, *hist;

	cJSON_AddStringToObject(o, "state", svc->swap != NULL ? "swapping" : svc_state_name(svc->state));
	cJSON_AddStringToObject(o, "runtime", svc->ops->name);
	cJSON_AddStringToObject(o, "image", svc->image);
	cJSON_AddStringToObject(o, "color", svc->color);
	if (ss != NULL && ss->n_previous > 0)
		cJSON_AddStringToObject(o, "previous_image", ss->previous[0]);
	else
		cJSON_AddNullToObject(o, "previous_image");
	insts = cJSON_AddArrayToObject(o, "instances");
	for (struct instance *in = svc->instances; in != NULL; in = in->next) {
		cJSON *io = cJSON_CreateObject();
		const char *role = in == svc->live ? "live" : in->leftover ? "leftover"
			: in->stopping ? "stopping" : "candidate";

		cJSON_AddStringToObject(io, "id", in->rt->id);
		cJSON_AddStringToObject(io, "color", in->rt->color);
		cJSON_AddStringToObject(io, "image", in->rt->image);
		cJSON_AddNumberToObject(io, "port", in->rt->host_port);
		cJSON_AddStringToObject(io, "addr", in->rt->addr);
		cJSON_AddBoolToObject(io, "healthy", in->health != NULL && !in->stopping &&
			health_state(in->health) == HEALTH_HEALTHY);
		cJSON_AddStringToObject(io, "health", inst_health_name(in));
		cJSON_AddStringToObject(io, "role", role);
		if (in->leftover)
			cJSON_AddStringToObject(io, "error", in->remove_error);
		cJSON_AddBoolToObject(io, "routed", inst_routed(svc, in));
		cJSON_AddNumberToObject(io, "started_at", (double)in->rt->started_at);
		cJSON_AddNumberToObject(io, "restarts", (double)svc->restarts);
		cJSON_AddItemToArray(insts, io);
	}
	insts = cJSON_AddArrayToObject(o, "previous_instances");
	for (size_t k = 0; k < svc->n_retained; k++) {
		const struct retained *r = &svc->retained[k];
		cJSON *io = cJSON_CreateObject();

		cJSON_AddStringToObject(io, "id", r->id);
		cJSON_AddStringToObject(io, "color", r->color);
		cJSON_AddStringToObject(io, "image", r->image);
		cJSON_AddNumberToObject(io, "started_at", (double)r->started_at);
		cJSON_AddNumberToObject(io, "ended_at", (double)r->ended_at);
		if (r->has_exit)
			cJSON_AddNumberToObject(io, "exit_code", r->exit_code);
		else
			cJSON_AddNullToObject(io, "exit_code");
		cJSON_AddItemToArray(insts, io);
	}
	cJSON_AddNumberToObject(o, "restarts", (double)svc->restarts);
	if (svc->has_exit)
		cJSON_AddNumberToObject(o, "last_exit_code", svc->last_exit_code);
	else
		cJSON_AddNullToObject(o, "last_exit_code");
	cJSON_AddBoolToObject(o, "oom_killed", svc->oom_killed);
	if (svc->error[0] != '\0')
		cJSON_AddStringToObject(o, "error", svc->error);
	if (svc->last_logs != NULL && (svc->state == SVC_CRASHLOOP || svc->state == SVC_RESTARTING ||
	    svc->state == SVC_STOPPED || svc->state == SVC_FAILED)) {
		cJSON *ll = cJSON_AddArrayToObject(o, "last_logs");

		for (size_t k = 0; k < logring_count(svc->last_logs); k++)
			cJSON_AddItemToArray(ll, cJSON_CreateString(logring_line(svc->last_logs, k)));
	}
	if (ss != NULL && ss->has_last_swap)
		cJSON_AddItemToObject(o, "last_swap", state_swap_to_json(&ss->last_swap));
	else
		cJSON_AddNullToObject(o, "last_swap");
	hist = cJSON_AddArrayToObject(o, "history");
	for (size_t k = 0; ss != NULL && k < ss->n_history; k++)
		cJSON_AddItemToArray(hist, state_swap_to_json(&ss->history[k]));
	return o;
}

cJSON *supervisor_state_file_json(struct supervisor *s)
{
	cJSON *o = cJSON_CreateObject();
	char path[1024];

	snprintf(path, sizeof(path), "%s/state.json", s->cfg->state_dir);
	cJSON_AddStringToObject(o, "path", path);
	cJSON_AddBoolToObject(o, "saved", s->persist_error[0] == '\0');
	if (s->persist_error[0] != '\0')
		cJSON_AddStringToObject(o, "error", s->persist_error);
	else
		cJSON_AddNullToObject(o, "error");
	cJSON_AddNumberToObject(o, "failures", (double)s->persist_failures);
	return o;
}

cJSON *supervisor_status_json(struct supervisor *s)
{
	cJSON *o = cJSON_CreateObject();

	for (size_t i = 0; i < s->n; i++)
		if (s->svcs[i]->conf != NULL)
			cJSON_AddItemToObject(o, s->svcs[i]->name, service_json(s, s->svcs[i]));
	return o;
}

void supervisor_metrics(struct supervisor *s, void *evbuffer)
{
	struct evbuffer *b = evbuffer;

	evbuffer_add_printf(b, "# HELP pmd_service_up Instance of a service healthy and routed.\n"
		"# TYPE pmd_service_up gauge\n");
	for (size_t i = 0; i < s->n; i++) {
		struct service *svc = s->svcs[i];

		if (svc->conf == NULL)
			continue;
		for (struct instance *in = svc->instances; in != NULL; in = in->next)
			evbuffer_add_printf(b, "pmd_service_up{service=\"%s\",color=\"%s\"} %d\n",
				svc->name, in->rt->color, inst_routed(svc, in) ? 1 : 0);
	}
	evbuffer_add_printf(b, "# HELP pmd_restarts_total Restarts of crashed instances.\n"
		"# TYPE pmd_restarts_total counter\n");
	for (size_t i = 0; i < s->n; i++)
		if (s->svcs[i]->conf != NULL)
			evbuffer_add_printf(b, "pmd_restarts_total{service=\"%s\"} %lu\n",
				s->svcs[i]->name, s->svcs[i]->restarts);
	evbuffer_add_printf(b, "# HELP pmd_state_saved 1 when the last write of state.json "
		"succeeded.\n# TYPE pmd_state_saved gauge\npmd_state_saved %d\n"
		"# HELP pmd_state_save_failures_total Failed writes of state.json.\n"
		"# TYPE pmd_state_save_failures_total counter\npmd_state_save_failures_total %lu\n",
		s->persist_error[0] == '\0', s->persist_failures_total);
	evbuffer_add_printf(b, "# HELP pmd_swaps_total Swaps by result.\n"
		"# TYPE pmd_swaps_total counter\n");
	for (size_t i = 0; i < s->n; i++) {
		struct service *svc = s->svcs[i];

		if (svc->conf == NULL)
			continue;
		evbuffer_add_printf(b, "pmd_swaps_total{service=\"%s\",result=\"ok\"} %lu\n",
			svc->name, svc->swaps_ok);
		evbuffer_add_printf(b, "pmd_swaps_total{service=\"%s\",result=\"failed\"} %lu\n",
			svc->name, svc->swaps_failed);
	}
}

struct logs_req {
	supervisor_logs_fn done;
	void *arg;
	int tail;
	struct logring *copy;   /* no live instance: the last one's output */
};

static void deliver_ring(struct logs_req *r, int ok, const char *err, const struct logring *ring)
{
	size_t n = ring != NULL ? logring_count(ring) : 0, from;
	const char **lines = calloc(n > 0 ? n : 1, sizeof(*lines));

	if (lines == NULL) {
		r->done(r->arg, 0, "out of memory", NULL, 0);
		return;
	}
	from = r->tail > 0 && (size_t)r->tail < n ? n - (size_t)r->tail : 0;
	for (size_t k = from; k < n; k++)
		lines[k - from] = logring_line(ring, k);
	r->done(r->arg, ok, err, lines, n - from);
	free(lines);
}

static void logs_cb(void *arg, int ok, const char *err, struct logring *lines)
{
	struct logs_req *r = arg;

	deliver_ring(r, ok, err, lines);
	free(r);
}

static void logs_copy_cb(evutil_socket_t fd, short what, void *arg)
{
	struct logs_req *r = arg;

	(void)fd;
	(void)what;
	deliver_ring(r, 1, NULL, r->copy);
	logring_free(r->copy);
	free(r);
}

/* The ring of the instance `want` (ID or prefix) of svc, current or
 * retained; *live set when it is the live instance. 0, -1 not found, -2
 * ambiguous. */
static int find_instance_logs(struct service *svc, const char *want, const struct logring **ring,
	struct instance **live)
{
	size_t wl = strlen(want);
	int found = 0;

	*live = NULL;
	for (struct instance *in = svc->instances; in != NULL; in = in->next)
		if (in->rt->id[0] != '\0' && strncmp(in->rt->id, want, wl) == 0) {
			found++;
			*ring = in->rt->logs;
			*live = in == svc->live && in->started ? in : NULL;
		}
	for (size_t i = 0; i < svc->n_retained; i++)
		if (strncmp(svc->retained[i].id, want, wl) == 0) {
			found++;
			*ring = svc->retained[i].logs;
		}
	return found == 0 ? -1 : found > 1 ? -2 : 0;
}

/* The ring of the newest instance of svc that is not live: a stopping one
 * (draining), else the newest gone one. -1 when there is none. */
static int previous_logs(struct service *svc, const struct logring **ring)
{
	const struct instance *best = NULL;

	for (const struct instance *in = svc->instances; in != NULL; in = in->next)
		if (in != svc->live && (in->stopping || in->exited) &&
		    (best == NULL || in->rt->started_at > best->rt->started_at))
			best = in;
	if (best != NULL) {
		*ring = best->rt->logs;
		return 0;
	}
	if (svc->n_retained == 0)
		return -1;
	*ring = svc->retained[0].logs;
	return 0;
}

int supervisor_logs(struct supervisor *s, const char *service, int tail, const char *instance,
	bool previous, supervisor_logs_fn done, void *arg, int *status, char **errp)
{
	struct service *svc = sup_service(s, service);
	const struct logring *ring = NULL;
	struct instance *live = NULL;
	struct logs_req *r;
	char msg[256];

	*status = 404;
	if (svc == NULL) {
		snprintf(msg, sizeof(msg), "unknown service %s", service);
		set_err(errp, msg);
		return -1;
	}
	if (instance != NULL && instance[0] != '\0') {
		int rc = find_instance_logs(svc, instance, &ring, &live);

		if (rc < 0) {
			*status = rc == -2 ? 400 : 404;
			snprintf(msg, sizeof(msg), rc == -2 ? "instance %.80s of %s: ambiguous, give more of the ID" :
				"no instance %.80s of %s (pmctl status --json lists instances and previous_instances)",
				instance, service);
			set_err(errp, msg);
			return -1;
		}
	} else if (previous) {
		if (previous_logs(svc, &ring) < 0) {
			snprintf(msg, sizeof(msg), "no previous instance of %s since pmd started", service);
			set_err(errp, msg);
			return -1;
		}
	} else if (svc->live != NULL && svc->live->started) {
		live = svc->live;
	} else {
		ring = svc->last_logs;   /* nothing live: what the last instance printed before it died */
	}
	*status = 503;
	r = calloc(1, sizeof(*r));
	if (r == NULL) {
		set_err(errp, "out of memory");
		return -1;
	}
	r->done = done;
	r->arg = arg;
	r->tail = tail;
	if (live != NULL && svc->ops->logs != NULL) {
		svc->ops->logs(&s->rt, live->rt, tail, logs_cb, r);
		return 0;
	}
	if (live != NULL)
		ring = live->rt->logs;
	r->copy = ring_dup(ring, logring_count(ring) > 0 ? logring_count(ring) : 1);
	if (r->copy == NULL || event_base_once(s->base, -1, EV_TIMEOUT, logs_copy_cb, r, NULL) < 0) {
		logring_free(r->copy);
		free(r);
		set_err(errp, "out of memory");
		return -1;
	}
	return 0;
}
