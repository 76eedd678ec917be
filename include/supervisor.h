/* supervisor — one state machine per service: starts, health-checks,
 * restarts (exponential backoff 1s..60s), replaces unhealthy instances,
 * swaps (supervisor/swap.c), persists state.json, adopts at start.
 * Main thread only. Publishes routing changes by calling the `changed`
 * hook given at creation (the daemon rebuilds and publishes a snapshot). */
#ifndef PMD_SUPERVISOR_H
#define PMD_SUPERVISOR_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

struct event_base;
struct httpc;
struct snapshot;
struct cJSON;
struct supervisor;

typedef void (*supervisor_changed_fn)(void *arg);

/* NULL on failure (errp set). The config must outlive the supervisor or be
 * replaced by supervisor_reload(). */
struct supervisor *supervisor_new(struct event_base *base, struct httpc *httpc,
	const struct pmd_config *cfg, supervisor_changed_fn changed, void *arg, char **errp);
/* Load state.json, adopt or start every service. 0 / -1 (errp). */
int supervisor_start(struct supervisor *s, char **errp);
/* Validate and apply a new config: services added are started, removed ones
 * stopped, changed settings apply to the next instance. The caller keeps
 * ownership of cfg and frees the old one after this returns 0. */
int supervisor_reload(struct supervisor *s, const struct pmd_config *cfg, char **errp);
/* pmd stops: stop timers and health checks; instances keep running (they
 * are adopted at the next start), exec children are stopped. */
void supervisor_shutdown(struct supervisor *s);
/* After supervisor_shutdown: processes still being stopped (the loop must
 * keep running until this is 0 or their stop_timeout has passed). */
int supervisor_pending(const struct supervisor *s);
void supervisor_free(struct supervisor *s);   /* NULL ok */

/* Fill snap->services (config order, names copied, live backends ref'd). */
int supervisor_fill_snapshot(struct supervisor *s, struct snapshot *snap);

/* The "services" object of /status (SPEC.md "Control API"). Caller frees. */
struct cJSON *supervisor_status_json(struct supervisor *s);
/* The "state_file" object of /status: {path, saved, error, failures}
 * (saved false while writes of state.json fail and are retried). */
struct cJSON *supervisor_state_file_json(struct supervisor *s);
/* Prometheus lines for services (restarts, health, swaps). Appends to buf
 * (an evbuffer). */
void supervisor_metrics(struct supervisor *s, void *evbuffer);

/* Swaps ------------------------------------------------------------------ */

enum swap_kind { SWAP_IMAGE = 0, SWAP_ROLLBACK, SWAP_RESTART };

/* Progress events: one JSON object each, e.g. {"event":"pull","service":
 * "backend","detail":"..."}; the final result {"ok":true|false,"error":...,
 * "logs":[...]}. Objects are owned by the supervisor; valid during the call. */
typedef void (*swap_event_fn)(void *arg, const struct cJSON *event);
typedef void (*swap_done_fn)(void *arg, const struct cJSON *result);

struct swap_request {
	enum swap_kind kind;
	size_t n;
	const char *const *services;
	const char *const *images;   /* SWAP_IMAGE only */
	uint64_t timeout_ms;         /* 0: each service's start_timeout */
	swap_event_fn on_event;
	swap_done_fn on_done;
	void *arg;
};

/* Start a swap. Returns a handle, or NULL with *status = 404 (unknown
 * service), 400 (bad image reference, no previous image for rollback),
 * 409 (a swap of one of the services is already running) and *errp set. */
struct swap *supervisor_swap(struct supervisor *s, const struct swap_request *req,
	int *status, char **errp);
/* The requester went away: the swap goes on, its callbacks are not called. */
void swap_detach(struct swap *w);
/* Cancel the running swap of `service` (every service of its unit): a
 * pull in flight is abandoned, candidates are stopped and removed, the
 * live instances stay; the swap's requester gets ok:false, "cancelled".
 * A release command already running is let finish (it is bounded by the
 * swap's timeout). 0, or -1 with *status = 404 (unknown service), 409 (no
 * swap running, or it has switched already: it only drains now) and
 * *errp set. */
int supervisor_swap_cancel(struct supervisor *s, const char *service, int *status, char **errp);

/* Last `tail` lines of one instance of a service. Which: `instance` (an ID
 * or a unique prefix of one, live or among the last few gone instances),
 * else with `previous` the newest instance that is not live (stopping, or
 * gone: drained, replaced, crashed), else the live instance (the last
 * instance's output when none is live). Gone instances keep their last
 * lines in memory (not across pmd restarts). 0 when done will be called;
 * -1 with *status (404 unknown service or instance, 400 ambiguous prefix,
 * 503) and *errp. */
typedef void (*supervisor_logs_fn)(void *arg, int ok, const char *err,
	const char *const *lines, size_t n);
int supervisor_logs(struct supervisor *s, const char *service, int tail, const char *instance,
	bool previous, supervisor_logs_fn done, void *arg, int *status, char **errp);

#endif
