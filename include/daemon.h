/* daemon — the main thread's context: owns the config and every module,
 * rebuilds and publishes the snapshot when something routing-related
 * changes, reloads the config. */
#ifndef PMD_DAEMON_H
#define PMD_DAEMON_H

#include <time.h>

#include "config.h"

struct event_base;
struct httpc;
struct supervisor;
struct proxy;
struct control;
struct tlsmgr;
struct cJSON;

struct pmd {
	struct event_base *base;
	struct pmd_config *cfg;
	struct httpc *httpc;
	struct supervisor *sup;
	struct proxy *proxy;
	struct control *control;
	struct tlsmgr *tls;          /* NULL when [tls] mode = off */
	time_t started;
	int stopping;
};

/* Build a snapshot from cfg + supervisor (+ TLS and ACME when present) and
 * publish it. Main thread. */
void pmd_republish(struct pmd *d);
/* Re-read d->cfg->path; apply only if valid. 0, or -1 with *errp (all
 * problems, one per line). Listener changes need a restart (said in errp
 * as a warning, not applied). */
int pmd_reload(struct pmd *d, char **errp);
/* The /status document (caller frees). */
struct cJSON *pmd_status_json(struct pmd *d);

#endif
