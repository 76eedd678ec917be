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
 * keep-alive connections; in-flight requests continue. */
void proxy_stop_accepting(struct proxy *p);
/* Requests and tunnels in flight across workers. */
long proxy_inflight(struct proxy *p);
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
};
void proxy_get_stats(struct proxy *p, struct proxy_stats *out);

#endif
