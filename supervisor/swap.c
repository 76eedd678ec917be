/* swap — the blue/green swap machine (SPEC.md "Blue/green swap — the
 * guarantee"): per service pull → release command → start candidate on the
 * other colour → health gate; once every service of the request is gated,
 * switch all in one publish → drain the old instances → stop and remove
 * them → persist → prune. Any failure before the switch stops and removes
 * every candidate and leaves the live instances untouched. */
#include <cjson/cJSON.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "snapshot.h"
#include "supervisor_int.h"

#define DRAIN_POLL_MS 50
#define TUNNEL_GRACE_MS 500
#define FAIL_LOG_LINES 30

enum swap_phase {
	SWP_BEGIN = 0,   /* deferred first step */
	SWP_GATE,        /* items pulling, releasing, starting, health-gating */
	SWP_DRAIN,       /* switched; old instances finish their requests */
	SWP_GRACE,       /* tunnels told to close; short wait */
	SWP_STOP,        /* old instances stopping */
	SWP_ABORT,       /* failed before the switch: candidates being removed */
};

enum item_phase { IT_PULL = 0, IT_RELEASE, IT_START, IT_HEALTH, IT_READY, IT_IDLE };

struct swap_item {
	struct swap *w;
	struct service *svc;
	char image[512];
	char old_image[512];
	enum item_phase phase;
	bool busy;                    /* a runtime callback is outstanding */
	struct instance *cand;
	struct instance *old;
	struct event *deadline;
};

struct swap {
	struct swap *next;            /* supervisor's list */
	struct supervisor *s;
	enum swap_kind kind;
	enum swap_phase phase;
	struct swap_item *items;
	size_t n;
	uint64_t timeout_ms;
	swap_event_fn on_event;
	swap_done_fn on_done;
	void *arg;
	bool detached;
	struct event *tick;
	long started_at;
	struct timespec t0, drain_t0;
	long last_inflight;
	int stops_pending;
	char error[1024];
	struct logring *fail_logs;
};

static const char *kind_name(enum swap_kind k)
{
	return k == SWAP_ROLLBACK ? "rollback" : k == SWAP_RESTART ? "restart" : "swap";
}

static long elapsed_ms(const struct timespec *t0)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (long)((now.tv_sec - t0->tv_sec) * 1000 + (now.tv_nsec - t0->tv_nsec) / 1000000);
}

static void arm_ms(struct event *ev, uint64_t ms)
{
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };

	evtimer_add(ev, &tv);
}

/* Emit and free an event object. */
static void emit(struct swap *w, cJSON *ev)
{
	if (!w->detached && w->on_event != NULL)
		w->on_event(w->arg, ev);
	cJSON_Delete(ev);
}

static cJSON *progress_new(const char *name, const struct swap_item *it)
{
	cJSON *ev = cJSON_CreateObject();

	cJSON_AddStringToObject(ev, "event", name);
	if (it != NULL) {
		cJSON_AddStringToObject(ev, "service", it->svc->name);
		cJSON_AddStringToObject(ev, "image", it->image);
	}
	return ev;
}

static void swap_fail(struct swap *w, struct swap_item *it, const char *error,
	const struct logring *logs);
static void item_next(struct swap_item *it);
static void maybe_finish_abort(struct swap *w);
static void prune(struct swap_item *it);

/* Unlink from the supervisor, record, report, free. */
static void swap_end(struct swap *w, bool ok)
{
	struct supervisor *s = w->s;
	long dur = elapsed_ms(&w->t0);
	cJSON *res = cJSON_CreateObject();

	for (struct swap **pp = &s->swaps; *pp != NULL; pp = &(*pp)->next)
		if (*pp == w) {
			*pp = w->next;
			break;
		}
	for (size_t i = 0; i < w->n; i++) {
		struct swap_item *it = &w->items[i];
		struct service *svc = it->svc;
		struct state_service *ss = state_service(s->state, svc->name, true);
		struct state_swap rec = { .started_at = w->started_at, .duration_ms = dur };

		event_free(it->deadline);
		svc->swap = NULL;
		if (ok)
			svc->swaps_ok++;
		else
			svc->swaps_failed++;
		snprintf(rec.kind, sizeof(rec.kind), "%s", kind_name(w->kind));
		snprintf(rec.image, sizeof(rec.image), "%s", it->image);
		snprintf(rec.result, sizeof(rec.result), "%s", ok ? "ok" : "failed");
		snprintf(rec.error, sizeof(rec.error), "%.500s", ok ? "" : w->error);
		if (ss != NULL) {
			if (ok && strcmp(it->old_image, it->image) != 0) {
				state_push_previous(ss, it->old_image);
				state_remove_previous(ss, it->image);
			}
			state_record_swap(ss, &rec);
		}
		log_info("swap finished service=%s kind=%s image=%s result=%s duration_ms=%ld error=%s",
			svc->name, rec.kind, log_q(it->image), rec.result, dur, log_q(rec.error));
		svc_settle(svc);
	}
	sup_persist(s);
	/* last (old instances gone, previous images recorded): an image is
	 * kept while a container of it exists */
	for (size_t i = 0; ok && i < w->n; i++)
		prune(&w->items[i]);
	cJSON_AddBoolToObject(res, "ok", ok);
	if (!ok) {
		cJSON *logs = cJSON_AddArrayToObject(res, "logs");

		cJSON_AddStringToObject(res, "error", w->error);
		for (size_t k = 0; w->fail_logs != NULL && k < logring_count(w->fail_logs); k++)
			cJSON_AddItemToArray(logs, cJSON_CreateString(logring_line(w->fail_logs, k)));
	} else {
		cJSON *imgs = cJSON_AddObjectToObject(res, "services");

		for (size_t i = 0; i < w->n; i++)
			cJSON_AddStringToObject(imgs, w->items[i].svc->name, w->items[i].image);
	}
	cJSON_AddNumberToObject(res, "duration_ms", (double)dur);
	if (!w->detached && w->on_done != NULL)
		w->on_done(w->arg, res);
	cJSON_Delete(res);
	event_free(w->tick);
	logring_free(w->fail_logs);
	free(w->items);
	free(w);
}

/* Prune ------------------------------------------------------------------- */

struct prune_arg {
	struct supervisor *s;
	char name[64];
};

/* Forget what the runtime removed; what must stay is tried again after
 * the next swap. */
static void pruned(void *arg, int ok, const char *err, const struct rt_image *imgs, size_t n)
{
	struct prune_arg *pa = arg;
	struct state_service *ss = state_service(pa->s->state, pa->name, false);
	bool changed = false;

	if (!ok)
		log_warn("old images not pruned service=%s error=%s", pa->name, log_q(err));
	for (size_t i = 0; ss != NULL && i < n; i++)
		if (imgs[i].gone) {
			state_remove_deployed(ss, imgs[i].ref, imgs[i].id);
			changed = true;
		}
	if (changed && !pa->s->shutting_down)
		sup_persist(pa->s);
	free(pa);
}

/* keep_images: the live image and the newest previous ones stay (by name:
 * the newest image that ran under it); of the rest, only images that
 * instances of the service ran (state's deployed list) are removed, also
 * an older image of a name that was pulled again (`:latest`). */
static void prune(struct swap_item *it)
{
	struct service *svc = it->svc;
	struct state_service *ss = state_service(svc->sup->state, svc->name, false);
	const char *keep[STATE_MAX_PREVIOUS + 1];
	struct rt_image victims[STATE_MAX_DEPLOYED];
	size_t n_keep = 0, n = 0, want = svc->conf->keep_images > 0 ? (size_t)svc->conf->keep_images : 1;
	struct prune_arg *pa;

	if (svc->ops->prune == NULL || ss == NULL)
		return;
	keep[n_keep++] = svc->image;
	for (size_t k = 0; k < ss->n_previous && n_keep < want; k++)
		keep[n_keep++] = ss->previous[k];
	for (size_t d = 0; d < ss->n_deployed; d++) {
		bool kept = false;

		for (size_t k = 0; k < n_keep && !kept; k++)
			kept = strcmp(ss->deployed[d].ref, keep[k]) == 0;
		for (size_t later = d + 1; kept && later < ss->n_deployed; later++)
			kept = strcmp(ss->deployed[later].ref, ss->deployed[d].ref) != 0;
		if (kept)
			continue;
		memset(&victims[n], 0, sizeof(victims[n]));
		snprintf(victims[n].ref, sizeof(victims[n].ref), "%s", ss->deployed[d].ref);
		snprintf(victims[n].id, sizeof(victims[n].id), "%s", ss->deployed[d].id);
		n++;
	}
	if (n == 0 || (pa = calloc(1, sizeof(*pa))) == NULL)
		return;
	pa->s = svc->sup;
	snprintf(pa->name, sizeof(pa->name), "%s", svc->name);
	svc->ops->prune(&svc->sup->rt, svc->conf, victims, n, pruned, pa);
}

/* After the switch --------------------------------------------------------- */

/* inst is gone, or (leftover) its removal failed and is being retried:
 * the new image is live either way. */
static void old_gone(void *arg, struct instance *inst)
{
	struct swap *w = arg;

	if (inst != NULL && inst->leftover) {
		cJSON *ev = progress_new("leftover", NULL);

		cJSON_AddStringToObject(ev, "service", inst->svc->name);
		cJSON_AddStringToObject(ev, "id", inst->rt->id);
		cJSON_AddStringToObject(ev, "error", inst->remove_error);
		emit(w, ev);
	}
	if (--w->stops_pending > 0)
		return;
	emit(w, progress_new("done", NULL));
	swap_end(w, true);
}

static void stop_old(struct swap *w)
{
	w->phase = SWP_STOP;
	w->stops_pending = 1;   /* held until every stop is issued */
	for (size_t i = 0; i < w->n; i++) {
		struct swap_item *it = &w->items[i];

		if (it->old == NULL)
			continue;
		w->stops_pending++;
		inst_stop(it->old, old_gone, w);
	}
	old_gone(w, NULL);
}

static long old_inflight(const struct swap *w)
{
	long n = 0;

	for (size_t i = 0; i < w->n; i++)
		if (w->items[i].old != NULL && w->items[i].old->be != NULL)
			n += atomic_load(&w->items[i].old->be->inflight);
	return n;
}

static uint64_t drain_timeout(const struct swap *w)
{
	uint64_t t = 0;

	for (size_t i = 0; i < w->n; i++)
		if (w->items[i].svc->conf->drain_timeout_ms > t)
			t = w->items[i].svc->conf->drain_timeout_ms;
	return t;
}

static void drain_poll(struct swap *w)
{
	long n = old_inflight(w);

	if (n != w->last_inflight) {
		cJSON *ev = progress_new("drain", NULL);

		cJSON_AddNumberToObject(ev, "inflight", (double)n);
		emit(w, ev);
		w->last_inflight = n;
	}
	int timed_out = elapsed_ms(&w->drain_t0) >= (long)drain_timeout(w);
	if (n > 0 && !timed_out) {
		arm_ms(w->tick, DRAIN_POLL_MS);
		return;
	}
	if (n > 0) {
		/* end of the drain: WebSockets get their close (1012) rather
		 * than a cut; requests keep being relayed while the instance
		 * stops (SIGTERM, then stop_timeout): most servers finish them */
		log_warn("drain timeout, stopping with requests in flight inflight=%ld", n);
		for (size_t i = 0; i < w->n; i++)
			if (w->items[i].old != NULL && w->items[i].old->be != NULL) {
				atomic_store(&w->items[i].old->be->close_tunnels, 1);
				atomic_store(&w->items[i].old->be->drain_over, 1);
			}
	}
	w->phase = SWP_GRACE;
	arm_ms(w->tick, TUNNEL_GRACE_MS);
}

/* After the grace: stop the old instances, unless a request that picked
 * one from a snapshot read just before the switch is still running (then
 * drain on, within drain_timeout). */
static void grace_over(struct swap *w)
{
	if (old_inflight(w) > 0 && elapsed_ms(&w->drain_t0) < (long)drain_timeout(w)) {
		w->phase = SWP_DRAIN;
		drain_poll(w);
		return;
	}
	stop_old(w);
}

static void switch_all(struct swap *w)
{
	for (size_t i = 0; i < w->n; i++) {
		struct swap_item *it = &w->items[i];
		struct service *svc = it->svc;
		cJSON *ev = progress_new("switch", it);

		evtimer_del(it->deadline);
		it->old = svc->live;
		if (it->old != NULL && it->old->be != NULL)
			atomic_store(&it->old->be->draining, 1);
		svc_make_live(svc, it->cand);
		it->cand = NULL;
		cJSON_AddStringToObject(ev, "color", svc->color);
		emit(w, ev);
		log_info("switched service=%s color=%s image=%s", svc->name, svc->color,
			log_q(svc->image));
	}
	/* One publish: every service of the request moves together. */
	sup_changed(w->s);
	sup_persist(w->s);
	w->phase = SWP_DRAIN;
	w->last_inflight = -1;
	clock_gettime(CLOCK_MONOTONIC, &w->drain_t0);
	/* first look after one poll period: a worker that read the previous
	 * snapshot just before the publish has counted its request by then */
	arm_ms(w->tick, DRAIN_POLL_MS);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct swap *w = arg;

	(void)fd;
	(void)what;
	switch (w->phase) {
	case SWP_BEGIN:
		w->phase = SWP_GATE;
		for (size_t i = 0; i < w->n && w->phase == SWP_GATE; i++)
			item_next(&w->items[i]);
		break;
	case SWP_DRAIN:
		drain_poll(w);
		break;
	case SWP_GRACE:
		grace_over(w);
		break;
	case SWP_GATE:
	case SWP_STOP:
	case SWP_ABORT:
		break;
	}
}

/* Before the switch ---------------------------------------------------------- */

static void copy_fail_logs(struct swap *w, const struct logring *from)
{
	size_t n;

	if (from == NULL || w->fail_logs != NULL)
		return;
	w->fail_logs = logring_new(FAIL_LOG_LINES);
	n = logring_count(from);
	for (size_t k = n > FAIL_LOG_LINES ? n - FAIL_LOG_LINES : 0;
	     w->fail_logs != NULL && k < n; k++) {
		const char *l = logring_line(from, k);

		logring_push(w->fail_logs, l, strlen(l));
	}
}

static void cand_gone(void *arg, struct instance *inst)
{
	struct swap *w = arg;

	(void)inst;
	if (--w->stops_pending == 0)
		swap_end(w, false);
}

/* Abort: once no runtime callback is outstanding, remove every candidate;
 * report when the last is gone. stops_pending holds one count while stops
 * are issued (a stop may complete at once). */
static void maybe_finish_abort(struct swap *w)
{
	for (size_t i = 0; i < w->n; i++)
		if (w->items[i].busy)
			return;
	w->stops_pending++;
	for (size_t i = 0; i < w->n; i++) {
		struct swap_item *it = &w->items[i];
		struct instance *c = it->cand;

		if (c == NULL)
			continue;
		it->cand = NULL;
		w->stops_pending++;
		inst_stop(c, cand_gone, w);
	}
	cand_gone(w, NULL);
}

static void swap_fail(struct swap *w, struct swap_item *it, const char *error,
	const struct logring *logs)
{
	if (w->phase == SWP_ABORT)
		return;
	w->phase = SWP_ABORT;
	if (it != NULL)
		snprintf(w->error, sizeof(w->error), "%s: %s", it->svc->name, error);
	else
		snprintf(w->error, sizeof(w->error), "%s", error);
	copy_fail_logs(w, logs);
	log_warn("swap failed, removing candidates error=%s", log_q(w->error));
	for (size_t i = 0; i < w->n; i++) {
		evtimer_del(w->items[i].deadline);
		w->items[i].phase = IT_IDLE;
	}
	maybe_finish_abort(w);
}

/* Write state.json as it will be after the switch (each service on its
 * candidate, the old image first of the previous ones), before anything
 * is switched: a swap that cannot be recorded does not go live (a pmd
 * restart would not know the new instance). 0 / -1 with *errp. */
static int persist_before_switch(struct swap *w, char **errp)
{
	struct state after = { .n = w->s->state->n };
	int rc = -1;

	after.svcs = malloc((after.n > 0 ? after.n : 1) * sizeof(*after.svcs));
	if (after.svcs == NULL) {
		*errp = strdup("out of memory");
		return -1;
	}
	memcpy(after.svcs, w->s->state->svcs, after.n * sizeof(*after.svcs));
	for (size_t i = 0; i < w->n; i++) {
		struct swap_item *it = &w->items[i];
		struct state_service *ss = state_service(&after, it->svc->name, true);

		if (ss == NULL) {
			*errp = strdup("out of memory");
			goto out;
		}
		snprintf(ss->image, sizeof(ss->image), "%s", it->image);
		snprintf(ss->color, sizeof(ss->color), "%s", it->cand->rt->color);
		snprintf(ss->instance_id, sizeof(ss->instance_id), "%s", it->cand->rt->id);
		if (strcmp(it->old_image, it->image) != 0) {
			state_push_previous(ss, it->old_image);
			state_remove_previous(ss, it->image);
		}
	}
	rc = sup_state_write(w->s, &after, errp);
out:
	free(after.svcs);
	return rc;
}

static void item_ready(struct swap_item *it)
{
	struct swap *w = it->w;
	char *err = NULL, msg[800];

	it->phase = IT_READY;
	evtimer_del(it->deadline);
	for (size_t i = 0; i < w->n; i++)
		if (w->items[i].phase != IT_READY)
			return;
	if (persist_before_switch(w, &err) < 0) {
		snprintf(msg, sizeof(msg), "state.json cannot be written, not switched (the live "
			"instances keep serving): %s", err != NULL ? err : "write failed");
		free(err);
		swap_fail(w, NULL, msg, NULL);
		return;
	}
	switch_all(w);
}

static void pull_progress(void *arg, const char *line)
{
	struct swap_item *it = arg;
	cJSON *ev;

	if (it->w->phase == SWP_ABORT)
		return;
	ev = progress_new("pull", it);
	cJSON_AddStringToObject(ev, "detail", line);
	emit(it->w, ev);
}

static void pull_done(void *arg, int ok, const char *err)
{
	struct swap_item *it = arg;
	struct swap *w = it->w;

	it->busy = false;
	if (w->phase == SWP_ABORT) {
		maybe_finish_abort(w);
		return;
	}
	if (!ok) {
		char msg[800];

		snprintf(msg, sizeof(msg), "pull %s failed: %s", it->image, err != NULL ? err : "");
		swap_fail(w, it, msg, NULL);
		return;
	}
	it->phase = IT_RELEASE;
	item_next(it);
}

static void release_done(void *arg, int code, const char *err, struct logring *output)
{
	struct swap_item *it = arg;
	struct swap *w = it->w;
	cJSON *ev;

	it->busy = false;
	if (w->phase == SWP_ABORT) {
		maybe_finish_abort(w);
		return;
	}
	ev = progress_new("release", it);
	cJSON_AddNumberToObject(ev, "exit_code", code);
	emit(w, ev);
	if (code != 0) {
		char msg[600];

		if (code < 0)
			snprintf(msg, sizeof(msg), "release command could not run: %s",
				err != NULL ? err : "unknown error");
		else
			snprintf(msg, sizeof(msg), "release command exited with code %d", code);
		swap_fail(w, it, msg, output);
		return;
	}
	it->phase = IT_START;
	item_next(it);
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct swap_item *it = arg;
	char msg[600];

	(void)fd;
	(void)what;
	snprintf(msg, sizeof(msg), "not healthy within %llums (last check: %s)",
		(unsigned long long)it->w->timeout_ms,
		it->cand != NULL && it->cand->health != NULL ? health_last_error(it->cand->health)
		: "none");
	swap_fail(it->w, it, msg, it->cand != NULL ? it->cand->rt->logs : NULL);
}

/* Run the item's current step. */
static void item_next(struct swap_item *it)
{
	struct swap *w = it->w;
	struct service *svc = it->svc;
	const struct svc_conf *c = svc->conf;
	char *err = NULL;

	switch (it->phase) {
	case IT_PULL:
		if (svc->ops->pull == NULL) {
			it->phase = IT_RELEASE;
			item_next(it);
			return;
		}
		emit(w, progress_new("pull", it));
		it->busy = true;
		svc->ops->pull(&svc->sup->rt, c, it->image, pull_progress, pull_done, it);
		return;
	case IT_RELEASE: {
		char **env;
		cJSON *ev;

		if (c->release_command[0] == '\0' || w->kind == SWAP_RESTART) {
			it->phase = IT_START;
			item_next(it);
			return;
		}
		if (svc->ops->run_once == NULL) {
			swap_fail(w, it, "release_command needs a runtime that runs instances", NULL);
			return;
		}
		env = runtime_env_build(c, c->port, &err);
		if (env == NULL) {
			swap_fail(w, it, err != NULL ? err : "cannot build the environment", NULL);
			free(err);
			return;
		}
		ev = progress_new("release", it);
		cJSON_AddStringToObject(ev, "command", c->release_command);
		emit(w, ev);
		it->busy = true;
		svc->ops->run_once(&svc->sup->rt, c, it->image, c->release_command, env,
			(unsigned long)w->timeout_ms, release_done, it);
		runtime_env_free(env);
		return;
	}
	case IT_START: {
		const char *color = svc_other_color(svc->color);
		struct instance *inst = inst_new(svc, it->image, color);
		cJSON *ev;

		if (inst == NULL) {
			swap_fail(w, it, "out of memory", NULL);
			return;
		}
		ev = progress_new("start", it);
		cJSON_AddStringToObject(ev, "color", color);
		emit(w, ev);
		inst->gate = it;
		it->cand = inst;
		it->busy = true;
		it->phase = IT_HEALTH;
		arm_ms(it->deadline, w->timeout_ms);
		if (inst_launch(inst, &err) < 0) {
			it->cand = NULL;
			it->busy = false;
			swap_fail(w, it, err, NULL);
			free(err);
		}
		return;
	}
	case IT_HEALTH:
	case IT_READY:
	case IT_IDLE:
		return;
	}
}

/* Instance events (from supervisor.c) --------------------------------------- */

void swap_inst_started(struct swap_item *it, struct instance *inst, int ok, const char *err)
{
	struct swap *w = it->w;
	char msg[700];

	it->busy = false;
	if (!ok) {
		/* supervisor.c frees inst after this returns */
		it->cand = NULL;
		if (w->phase == SWP_ABORT) {
			maybe_finish_abort(w);
			return;
		}
		snprintf(msg, sizeof(msg), "candidate did not start: %s", err != NULL ? err : "");
		swap_fail(w, it, msg, inst->rt->logs);
		return;
	}
	if (w->phase == SWP_ABORT) {
		maybe_finish_abort(w);
		return;
	}
	{
		cJSON *ev = progress_new("start", it);

		cJSON_AddStringToObject(ev, "color", inst->rt->color);
		cJSON_AddStringToObject(ev, "id", inst->rt->id);
		cJSON_AddStringToObject(ev, "addr", inst->rt->addr);
		emit(w, ev);
	}
}

void swap_inst_health(struct swap_item *it, struct instance *inst, bool pass, bool changed)
{
	struct swap *w = it->w;
	cJSON *ev;

	if (w->phase != SWP_GATE || it->phase != IT_HEALTH)
		return;
	ev = progress_new("health", it);
	cJSON_AddBoolToObject(ev, "pass", pass);
	cJSON_AddNumberToObject(ev, "passes", health_passes(inst->health));
	cJSON_AddNumberToObject(ev, "fails", health_fails(inst->health));
	cJSON_AddNumberToObject(ev, "needed", it->svc->conf->healthy_threshold);
	if (!pass)
		cJSON_AddStringToObject(ev, "error", health_last_error(inst->health));
	emit(w, ev);
	if (changed && health_state(inst->health) == HEALTH_HEALTHY)
		item_ready(it);
}

void swap_forget_instance(struct swap *w, struct instance *inst)
{
	for (size_t i = 0; i < w->n; i++) {
		if (w->items[i].old == inst)
			w->items[i].old = NULL;
		if (w->items[i].cand == inst)
			w->items[i].cand = NULL;
	}
}

void swap_inst_exited(struct swap_item *it, struct instance *inst, int code, bool oom)
{
	struct swap *w = it->w;
	char msg[200];

	snprintf(msg, sizeof(msg), "candidate exited with code %d%s before it became healthy", code,
		oom ? " (OOM-killed)" : "");
	copy_fail_logs(w, inst->rt->logs);
	if (w->phase == SWP_ABORT) {
		maybe_finish_abort(w);
		return;
	}
	swap_fail(w, it, msg, inst->rt->logs);
}

/* Entry points ------------------------------------------------------------ */

/* An image reference as Docker takes it: no spaces or control bytes. */
static bool image_ok(const char *img)
{
	size_t n = strlen(img);

	if (n == 0 || n >= 512)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)img[i] <= ' ' || img[i] == 0x7f)
			return false;
	return true;
}

static void fail_status(int *status, int code, char **errp, const char *msg)
{
	*status = code;
	if (errp != NULL) {
		free(*errp);
		*errp = strdup(msg);
	}
}

struct swap *supervisor_swap(struct supervisor *s, const struct swap_request *req,
	int *status, char **errp)
{
	struct swap *w = NULL;
	char msg[700];

	*status = 400;
	if (req->n == 0) {
		fail_status(status, 400, errp, "no service to swap");
		return NULL;
	}
	for (size_t i = 0; i < req->n; i++) {
		struct service *svc = sup_service(s, req->services[i]);
		struct state_service *ss;

		if (svc == NULL) {
			snprintf(msg, sizeof(msg), "unknown service %s", req->services[i]);
			fail_status(status, 404, errp, msg);
			return NULL;
		}
		for (size_t j = 0; j < i; j++)
			if (strcmp(req->services[j], req->services[i]) == 0) {
				snprintf(msg, sizeof(msg), "service %s named twice", svc->name);
				fail_status(status, 400, errp, msg);
				return NULL;
			}
		if (svc->conf->runtime == RUNTIME_EXTERNAL) {
			snprintf(msg, sizeof(msg), "service %s runs elsewhere (runtime = external): "
				"nothing to swap", svc->name);
			fail_status(status, 400, errp, msg);
			return NULL;
		}
		if (req->kind == SWAP_IMAGE && !image_ok(req->images[i])) {
			snprintf(msg, sizeof(msg), "service %s: bad image reference \"%s\"", svc->name,
				req->images[i]);
			fail_status(status, 400, errp, msg);
			return NULL;
		}
		ss = state_service(s->state, svc->name, false);
		if (req->kind == SWAP_ROLLBACK && (ss == NULL || ss->n_previous == 0)) {
			snprintf(msg, sizeof(msg), "service %s has no previous image to roll back to",
				svc->name);
			fail_status(status, 400, errp, msg);
			return NULL;
		}
		if (svc->swap != NULL) {
			snprintf(msg, sizeof(msg), "a swap of service %s is already running", svc->name);
			fail_status(status, 409, errp, msg);
			return NULL;
		}
	}
	w = calloc(1, sizeof(*w));
	if (w == NULL || (w->items = calloc(req->n, sizeof(*w->items))) == NULL ||
	    (w->tick = evtimer_new(s->base, tick_cb, w)) == NULL)
		goto oom;
	w->s = s;
	w->n = req->n;
	w->kind = req->kind;
	w->on_event = req->on_event;
	w->on_done = req->on_done;
	w->arg = req->arg;
	w->started_at = (long)time(NULL);
	clock_gettime(CLOCK_MONOTONIC, &w->t0);
	for (size_t i = 0; i < req->n; i++) {
		struct swap_item *it = &w->items[i];
		struct service *svc = sup_service(s, req->services[i]);
		struct state_service *ss = state_service(s->state, svc->name, false);
		const char *img = req->kind == SWAP_IMAGE ? req->images[i]
			: req->kind == SWAP_ROLLBACK ? ss->previous[0] : svc->image;

		it->w = w;
		it->svc = svc;
		snprintf(it->image, sizeof(it->image), "%s", img);
		snprintf(it->old_image, sizeof(it->old_image), "%s", svc->image);
		it->deadline = evtimer_new(s->base, deadline_cb, it);
		if (it->deadline == NULL)
			goto oom;
		if (req->timeout_ms > w->timeout_ms || (req->timeout_ms == 0 &&
		    svc->conf->start_timeout_ms > w->timeout_ms))
			w->timeout_ms = req->timeout_ms > 0 ? req->timeout_ms : svc->conf->start_timeout_ms;
	}
	for (size_t i = 0; i < w->n; i++) {
		struct service *svc = w->items[i].svc;

		svc->swap = w;
		evtimer_del(svc->restart_timer);
		svc->restart_due = false;
		svc_set_state(svc, SVC_SWAPPING, kind_name(w->kind));
		log_info("swap started service=%s kind=%s image=%s", svc->name, kind_name(w->kind),
			log_q(w->items[i].image));
	}
	w->next = s->swaps;
	s->swaps = w;
	/* From the loop: the caller gets its handle before any callback. */
	arm_ms(w->tick, 0);
	return w;
oom:
	if (w != NULL) {
		for (size_t i = 0; w->items != NULL && i < req->n; i++)
			if (w->items[i].deadline != NULL)
				event_free(w->items[i].deadline);
		if (w->tick != NULL)
			event_free(w->tick);
		free(w->items);
		free(w);
	}
	fail_status(status, 500, errp, "out of memory");
	return NULL;
}

int supervisor_swap_cancel(struct supervisor *s, const char *service, int *status, char **errp)
{
	struct service *svc = sup_service(s, service);
	struct swap *w = svc != NULL ? svc->swap : NULL;
	char msg[300];

	if (svc == NULL) {
		snprintf(msg, sizeof(msg), "unknown service %s", service);
		fail_status(status, 404, errp, msg);
		return -1;
	}
	if (w == NULL) {
		snprintf(msg, sizeof(msg), "no swap of service %s is running", svc->name);
		fail_status(status, 409, errp, msg);
		return -1;
	}
	if (w->phase != SWP_BEGIN && w->phase != SWP_GATE && w->phase != SWP_ABORT) {
		snprintf(msg, sizeof(msg), "the swap of service %s has switched already; the old "
			"instance is draining", svc->name);
		fail_status(status, 409, errp, msg);
		return -1;
	}
	log_info("swap cancel requested service=%s", svc->name);
	if (w->phase == SWP_ABORT)
		return 0;   /* failing already: candidates are being removed */
	for (size_t i = 0; i < w->n; i++) {
		struct swap_item *it = &w->items[i];

		if (it->busy && it->phase == IT_PULL && it->svc->ops->pull_cancel != NULL) {
			it->svc->ops->pull_cancel(&s->rt, it);
			it->busy = false;
		}
	}
	snprintf(msg, sizeof(msg), "cancelled (pmctl swap --cancel %s)", svc->name);
	/* may end and free w */
	swap_fail(w, NULL, msg, NULL);
	return 0;
}

void swap_detach(struct swap *w)
{
	if (w != NULL)
		w->detached = true;
}

int swap_internal_restart(struct supervisor *s, struct service *svc)
{
	const char *names[] = { svc->name };
	struct swap_request req = { .kind = SWAP_RESTART, .n = 1, .services = names };
	int status;
	char *err = NULL;
	struct swap *w = supervisor_swap(s, &req, &status, &err);

	if (w == NULL)
		log_warn("replacement not started service=%s error=%s", svc->name, log_q(err));
	free(err);
	return w != NULL ? 0 : -1;
}

void swap_shutdown_all(struct supervisor *s)
{
	for (struct swap *w = s->swaps; w != NULL; w = w->next) {
		w->detached = true;
		evtimer_del(w->tick);
		for (size_t i = 0; i < w->n; i++)
			evtimer_del(w->items[i].deadline);
	}
}

/* supervisor_free: instances are freed with their services; drop the swaps
 * without callbacks. */
void swap_free_all(struct supervisor *s)
{
	while (s->swaps != NULL) {
		struct swap *w = s->swaps;

		s->swaps = w->next;
		for (size_t i = 0; i < w->n; i++) {
			w->items[i].svc->swap = NULL;
			if (w->items[i].cand != NULL)
				w->items[i].cand->gate = NULL;
			event_free(w->items[i].deadline);
		}
		event_free(w->tick);
		logring_free(w->fail_logs);
		free(w->items);
		free(w);
	}
}
