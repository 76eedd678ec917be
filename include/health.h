/* health — periodic HTTP health checks of one instance (SPEC.md
 * health_path, health_host, health_interval, health_timeout, thresholds),
 * through httpc. Main thread only.
 *
 * Model (one for every runtime): an instance is `starting` until
 * `healthy_threshold` consecutive passes; `healthy` until
 * `unhealthy_threshold` consecutive failures make it `unhealthy`; back to
 * `healthy` after `healthy_threshold` passes. A check passes on an answer
 * whose status is within [status_lo, status_hi] (health_status, 2xx by
 * default: a redirect is not health) within health_timeout. */
#ifndef PMD_HEALTH_H
#define PMD_HEALTH_H

#include <stdbool.h>
#include <stdint.h>

struct event_base;
struct httpc;
struct health;

enum health_state { HEALTH_STARTING = 0, HEALTH_HEALTHY, HEALTH_UNHEALTHY };

struct health_params {
	const char *addr;          /* "127.0.0.1:8001"; copied */
	const char *path;          /* "/api/v1/health/"; copied */
	const char *host;          /* Host header; copied */
	int status_lo, status_hi;  /* passing statuses; 0, 0 = 200-299 */
	bool https;                /* send X-Forwarded-Proto: https (TLS is on) */
	uint64_t interval_ms, timeout_ms;
	int healthy_threshold, unhealthy_threshold;
	/* Passes that make a `starting` instance healthy; 0 = healthy_threshold.
	 * Adopted instances use 1: they were serving before pmd restarted. */
	int first_threshold;
};

/* Called after every check with its outcome and whether the state changed.
 * The callee may health_free(h). */
typedef void (*health_fn)(void *arg, struct health *h, bool pass, bool changed);

/* Starts checking at once. NULL on allocation failure. */
struct health *health_new(struct event_base *base, struct httpc *httpc,
	const struct health_params *p, health_fn fn, void *arg);
void health_free(struct health *h);     /* NULL ok; cancels the check in flight */

enum health_state health_state(const struct health *h);
int health_passes(const struct health *h);    /* consecutive */
int health_fails(const struct health *h);     /* consecutive */
/* Why the last check failed ("HTTP 301 (expected 200-299)",
 * "connection refused"), or "". */
const char *health_last_error(const struct health *h);
const char *health_state_name(enum health_state st);

/* The transition function: the state after a check, with the consecutive
 * counters updated in place. first_threshold as in health_params. */
enum health_state health_next(enum health_state st, bool pass, int *passes, int *fails,
	int healthy_threshold, int unhealthy_threshold, int first_threshold);

#endif
