/* daemon — the main thread's context: owns the config and every module,
 * rebuilds and publishes the snapshot when something routing-related
 * changes, reloads the config. */
#ifndef PMD_DAEMON_H
#define PMD_DAEMON_H

#include <stdbool.h>
#include <time.h>

#include "config.h"

struct event_base;
struct httpc;
struct supervisor;
struct proxy;
struct control;
struct tlsmgr;
struct cJSON;
struct pmd_disk;

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
	bool draining;               /* pmctl drain: lb_health_path answers 503 */
	struct pmd_disk *disk;       /* free-space watch, see pmd_disk_start */
};

/* Build a snapshot from cfg + supervisor (+ TLS and ACME when present) and
 * publish it. Main thread. */
void pmd_republish(struct pmd *d);
/* pmctl drain / undrain: take this pmd out of (or back into) its load
 * balancer by the answer of [proxy] lb_health_path; requests keep being
 * served either way. Not kept across a restart of pmd. Main thread. */
void pmd_set_draining(struct pmd *d, bool draining);
/* Re-read d->cfg->path; apply only if valid. 0, or -1 with *errp (all
 * problems, one per line). Listener changes need a restart (said in errp
 * as a warning, not applied). */
int pmd_reload(struct pmd *d, char **errp);
/* Watch free space of state_dir and of Docker's data root (DockerRootDir
 * of GET /info, asked for when a service runs on docker): checked now and
 * every minute with statvfs, a warning logged when one falls under 10 %
 * free, and shown in /status under "disk". Main thread. 0 or -1. */
int pmd_disk_start(struct pmd *d);
/* Stops the watch and cancels its Docker request; safe when not started. */
void pmd_disk_stop(struct pmd *d);
/* The /status document (caller frees). */
struct cJSON *pmd_status_json(struct pmd *d);

#endif
