/* supervisor_int — what supervisor.c (services, instances, restarts,
 * adoption, status) and swap.c (the blue/green swap machine) share.
 * Private to supervisor/. Main thread only. */
#ifndef PMD_SUPERVISOR_INT_H
#define PMD_SUPERVISOR_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "health.h"
#include "runtime.h"
#include "state.h"
#include "supervisor.h"

struct event;
struct backend;
struct swap;
struct swap_item;

/* A service as users see it in /status. */
enum svc_state {
	SVC_STARTING = 0,   /* live instance up, not yet healthy */
	SVC_RUNNING,        /* live instance healthy and routed */
	SVC_UNHEALTHY,      /* live instance failing its checks, not routed */
	SVC_RESTARTING,     /* live instance died; restart after backoff */
	SVC_CRASHLOOP,      /* dies again and again (or never got healthy) */
	SVC_FAILED,         /* cannot be started as configured (error says why) */
	SVC_STOPPED,        /* exited, restart policy says leave it */
	SVC_SWAPPING,       /* a swap of the service is running */
};

/* An instance that is gone (drained, replaced, failed, crashed): what
 * `pmctl logs --previous / --instance` shows. */
#define SVC_RETAINED 5
struct retained {
	char id[80], color[8], image[512];
	long started_at, ended_at;   /* unix seconds */
	bool has_exit;
	int exit_code;
	struct logring *logs;        /* its last lines (the instance's own ring) */
};

struct instance;
/* inst: NULL when gone, else a leftover (see inst_stop). */
typedef void (*inst_gone_fn)(void *arg, struct instance *inst);

struct instance {
	struct instance *next;        /* service's list */
	struct service *svc;
	struct rt_instance *rt;
	struct backend *be;           /* once started */
	struct health *health;        /* while started and not stopping */
	struct swap_item *gate;       /* candidate of a swap: events go there */
	struct event *start_timer;    /* live, not healthy within start_timeout */
	struct event *unhealthy_timer;/* unhealthy_restart */
	struct event *remove_timer;   /* leftover: next removal attempt */
	uint64_t stop_timeout_ms;
	unsigned remove_failures;     /* leftover: consecutive failed removals */
	char remove_error[256];       /* leftover: why the last removal failed */
	bool adopted, started, exited, stopping, was_healthy;
	int exit_code;                /* when exited */
	bool leftover;                /* its removal failed: retried with backoff */
	inst_gone_fn on_gone;         /* stop finished and instance freed */
	void *gone_arg;
};

struct service {
	struct supervisor *sup;
	const struct svc_conf *conf;  /* NULL once removed by a reload */
	const struct runtime_ops *ops;
	char name[64];
	enum svc_state state;
	struct instance *instances;   /* every instance not yet gone */
	struct instance *live;        /* routed when healthy */
	char image[512];              /* image of the live instance (or next) */
	char color[8];                /* colour of the live instance */
	unsigned crashes;             /* consecutive, for the backoff */
	unsigned long restarts;
	bool has_exit, oom_killed;
	int last_exit_code;
	char error[512];              /* why it is failed / crashlooping */
	struct logring *last_logs;    /* output of the last instance that died */
	struct retained retained[SVC_RETAINED]; /* gone instances, newest first */
	size_t n_retained;
	struct event *restart_timer;
	struct event *stable_timer;   /* healthy for BACKOFF_RESET_MS: crashes = 0 */
	bool restart_due;             /* timer fired, waiting for the colour to free */
	bool release_pending;         /* never deployed here: release_command first */
	bool release_busy;            /* that first release is running */
	struct swap *swap;            /* running swap, or NULL */
	unsigned long swaps_ok, swaps_failed;
};

struct supervisor {
	struct event_base *base;
	struct httpc *httpc;
	const struct pmd_config *cfg;
	struct runtime_ctx rt;
	supervisor_changed_fn changed;
	void *changed_arg;
	struct service **svcs;
	size_t n;
	struct state *state;
	struct swap *swaps;           /* running swaps (swap.c's list) */
	struct event *persist_timer;  /* state.json not written: next attempt */
	unsigned persist_failures;    /* consecutive failed writes */
	unsigned long persist_failures_total;
	char persist_error[512];      /* why the last write failed; "" when saved */
	bool started, shutting_down;
};

/* supervisor.c, for swap.c ------------------------------------------------ */

struct service *sup_service(struct supervisor *s, const char *name);
void sup_changed(struct supervisor *s);
/* Record live image/colour/id of every service in state.json. A failed
 * write is logged, shown in /status (state_file) and metrics, and retried
 * with backoff until a write succeeds. */
void sup_persist(struct supervisor *s);
/* Write st as state_dir/state.json (and its .prev copy). 0 / -1 with *errp. */
int sup_state_write(struct supervisor *s, const struct state *st, char **errp);
/* Remember in the state (saved with the next sup_persist) that inst runs
 * its image: keep_images prunes only images so recorded. */
void sup_note_deployed(const struct instance *inst);
void svc_set_state(struct service *svc, enum svc_state st, const char *reason);
const char *svc_state_name(enum svc_state st);
/* The service's state from its live instance (after a swap ended); restarts
 * a missing live instance per the restart policy. */
void svc_settle(struct service *svc);
const char *svc_other_color(const char *color);

/* A new instance of svc (not started): NULL on allocation failure. */
struct instance *inst_new(struct service *svc, const char *image, const char *color);
/* Start it: 0 when the runtime was asked (outcome through the callbacks,
 * possibly before this returns), -1 with *errp when it cannot be started
 * at all (missing required_env, ...): the instance is freed. */
int inst_launch(struct instance *inst, char **errp);
/* Stop and remove; fn(arg, NULL) once it is gone and freed. When the
 * removal fails (docker), the instance stays listed as a leftover whose
 * removal is retried with backoff, and fn(arg, inst) is called at the
 * first failure (inst valid during the call). */
void inst_stop(struct instance *inst, inst_gone_fn fn, void *arg);
/* A candidate becomes the live instance (swap switch); no publish. */
void svc_make_live(struct service *svc, struct instance *inst);
/* health_host default: first [tls] domain, else "localhost". */
const char *sup_health_host(const struct supervisor *s, const struct svc_conf *c);

/* swap.c, for supervisor.c ------------------------------------------------ */

void swap_inst_started(struct swap_item *it, struct instance *inst, int ok, const char *err);
void swap_inst_health(struct swap_item *it, struct instance *inst, bool pass, bool changed);
void swap_inst_exited(struct swap_item *it, struct instance *inst, int code, bool oom);
/* An instance a swap points at (old or candidate) is being freed, e.g. the
 * old instance died on its own during the drain: drop the pointers. */
void swap_forget_instance(struct swap *w, struct instance *inst);
/* Replace the live instance of svc with a fresh one of its image, gated
 * (unhealthy_restart). 0 / -1 when a swap cannot start now. */
int swap_internal_restart(struct supervisor *s, struct service *svc);
/* Shutdown: detach and stop every swap's timers (candidates are left to
 * supervisor_free). */
void swap_shutdown_all(struct supervisor *s);
void swap_free_all(struct supervisor *s);

#endif
