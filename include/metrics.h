/* metrics — the Prometheus text exposition served at GET /metrics
 * (text format 0.0.4). Main thread. */
#ifndef PMD_METRICS_H
#define PMD_METRICS_H

struct pmd;
struct evbuffer;

/* Append every metric of the daemon (build info, uptime, proxy counters,
 * TLS certificate expiry, supervisor_metrics) to out. */
void metrics_render(struct pmd *d, struct evbuffer *out);

#endif
