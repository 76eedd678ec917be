/* proxy — the data path: `workers` threads, each with its own event_base
 * and SO_REUSEPORT listeners on every http/https address. Reads routing
 * from the current snapshot only; never touches Docker, ACME or state. */
#ifndef PMD_PROXY_H
#define PMD_PROXY_H

#include <stdint.h>

#include "config.h"

struct proxy;

/* Bind every listener for every worker (errors such as EADDRINUSE are
 * reported here, before READY). Threads are not started. NULL + errp. */
struct proxy *proxy_new(const struct pmd_config *cfg, char **errp);
/* Start the worker threads. 0 / -1. */
int proxy_start(struct proxy *p, char **errp);
/* Graceful stop, step 1 (any thread): stop accepting, close idle
 * keep-alive connections (after a short grace; responses from now on say
 * Connection: close); in-flight requests and tunnels continue. */
void proxy_stop_accepting(struct proxy *p);
/* Graceful stop, step 2: WebSocket tunnels get close code 1001 and end. */
void proxy_close_tunnels(struct proxy *p);
/* Requests and tunnels in flight across workers. */
long proxy_inflight(struct proxy *p);
/* Open client connections; proxy_busy: those that are not tunnels. */
long proxy_connections(struct proxy *p);
long proxy_busy(struct proxy *p);
/* The listening sockets of every worker (for a hand-over to a new pmd):
 * up to cap fds with names "http" / "https". Main thread, before the
 * stop. Count. The proxy keeps owning them. */
size_t proxy_listen_fds(struct proxy *p, int *fds, const char **names, size_t cap);
/* Stop the loops, join the threads, close everything, free. NULL ok. */
void proxy_free(struct proxy *p);

struct proxy_stats {
	uint64_t connections;        /* open client connections now */
	uint64_t connections_total;
	uint64_t requests_total;
	uint64_t responses[6];       /* [1]..[5] = 1xx..5xx */
	uint64_t bytes_in, bytes_out;
	uint64_t upstream_errors;    /* 502 + 504 */
	uint64_t held;               /* requests held waiting for an instance */
	uint64_t tls_handshakes;
	uint64_t drain_timeouts;     /* requests an instance stopped at the end of a drain did not finish */
	uint64_t h2_connections;     /* open HTTP/2 client connections now */
	uint64_t h2_connections_total, h2_streams_total;
};
void proxy_get_stats(struct proxy *p, struct proxy_stats *out);

/* Requests of one route, summed over the workers. Routes are told apart by
 * their config name; PROXY_ROUTE_NONE ("-") collects the requests no route
 * answered (static files, ACME challenges, redirects, 404s, requests
 * refused before routing). A request that ended without an answer (the
 * client went away) counts as 4xx (499 in the access log). */
#define PROXY_ROUTE_NONE "-"
#define PROXY_DURATION_BUCKETS 12    /* the last one is +Inf */
/* Upper bounds of the duration buckets in seconds (all but +Inf). */
extern const double proxy_duration_bounds[PROXY_DURATION_BUCKETS - 1];
struct proxy_route_stats {
	char name[64];
	uint64_t requests[6];        /* [1]..[5] = 1xx..5xx */
	uint64_t duration[PROXY_DURATION_BUCKETS];  /* per bucket, not cumulative */
	uint64_t duration_count;
	double duration_sum;         /* seconds */
};
/* Every route seen so far, in first-seen order: a malloc'd array (caller
 * frees) with *n entries; NULL (and *n = 0) when out of memory or p NULL. */
struct proxy_route_stats *proxy_get_route_stats(struct proxy *p, size_t *n);

#endif
