/* metrics — Prometheus text exposition (format 0.0.4) of GET /metrics.
 * See include/metrics.h. */
#include "metrics.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>

#include "daemon.h"
#include "proxy.h"
#include "supervisor.h"
#include "tls.h"

static void family(struct evbuffer *out, const char *name, const char *type, const char *help)
{
	evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void counter(struct evbuffer *out, const char *name, const char *help, uint64_t v)
{
	family(out, name, "counter", help);
	evbuffer_add_printf(out, "%s %" PRIu64 "\n", name, v);
}

/* A label value escaped per the text format (backslash, quote, newline). */
static void label_escape(char *dst, size_t cap, const char *s)
{
	size_t k = 0;
	for (; *s && k + 3 < cap; s++) {
		if (*s == '\\' || *s == '"' || *s == '\n') {
			dst[k++] = '\\';
			dst[k++] = *s == '\n' ? 'n' : *s;
		} else {
			dst[k++] = *s;
		}
	}
	dst[k] = '\0';
}

static void route_metrics(struct proxy *p, struct evbuffer *out)
{
	size_t n = 0;
	struct proxy_route_stats *rs = proxy_get_route_stats(p, &n);

	for (size_t i = 0; i < n; i++) {
		char esc[sizeof(rs[i].name)];
		label_escape(esc, sizeof(esc), rs[i].name);
		memcpy(rs[i].name, esc, sizeof(esc));
	}

	family(out, "pmd_http_requests_total", "counter",
		"Requests by route and status class (route \"-\": answered without a route; "
		"a client gone before the answer counts as 4xx).");
	for (size_t i = 0; i < n; i++)
		for (int c = 1; c <= 5; c++)
			evbuffer_add_printf(out, "pmd_http_requests_total{route=\"%s\",code=\"%dxx\"} %" PRIu64 "\n",
				rs[i].name, c, rs[i].requests[c]);
	family(out, "pmd_http_request_duration_seconds", "histogram",
		"Time from the request head to the end of the answer, by route.");
	for (size_t i = 0; i < n; i++) {
		uint64_t cum = 0;
		for (int b = 0; b < PROXY_DURATION_BUCKETS; b++) {
			cum += rs[i].duration[b];
			if (b < PROXY_DURATION_BUCKETS - 1)
				evbuffer_add_printf(out, "pmd_http_request_duration_seconds_bucket{route=\"%s\",le=\"%g\"} %" PRIu64 "\n",
					rs[i].name, proxy_duration_bounds[b], cum);
			else
				evbuffer_add_printf(out, "pmd_http_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} %" PRIu64 "\n",
					rs[i].name, cum);
		}
		evbuffer_add_printf(out, "pmd_http_request_duration_seconds_sum{route=\"%s\"} %.6f\n",
			rs[i].name, rs[i].duration_sum);
		evbuffer_add_printf(out, "pmd_http_request_duration_seconds_count{route=\"%s\"} %" PRIu64 "\n",
			rs[i].name, rs[i].duration_count);
	}
	free(rs);
}

static void proxy_metrics(struct proxy *p, struct evbuffer *out)
{
	struct proxy_stats st;

	proxy_get_stats(p, &st);
	family(out, "pmd_proxy_connections", "gauge", "Client connections open now.");
	evbuffer_add_printf(out, "pmd_proxy_connections %" PRIu64 "\n", st.connections);
	counter(out, "pmd_proxy_connections_total", "Client connections accepted.", st.connections_total);
	route_metrics(p, out);
	family(out, "pmd_http_requests_in_flight", "gauge",
		"Requests (and WebSocket tunnels) being proxied to an instance now.");
	evbuffer_add_printf(out, "pmd_http_requests_in_flight %ld\n", proxy_inflight(p));
	family(out, "pmd_http_responses_total", "counter", "Responses sent by the proxy, by status class.");
	for (int i = 1; i <= 5; i++)
		evbuffer_add_printf(out, "pmd_http_responses_total{code=\"%dxx\"} %" PRIu64 "\n", i,
			st.responses[i]);
	counter(out, "pmd_proxy_received_bytes_total", "Bytes received from clients.", st.bytes_in);
	counter(out, "pmd_proxy_sent_bytes_total", "Bytes sent to clients.", st.bytes_out);
	counter(out, "pmd_upstream_errors_total", "Upstream failures answered 502 or 504.", st.upstream_errors);
	counter(out, "pmd_held_requests_total", "Requests held waiting for a live instance.", st.held);
	counter(out, "pmd_tls_handshakes_total", "TLS handshakes completed.", st.tls_handshakes);
	counter(out, "pmd_proxy_drain_timeouts_total",
		"Requests ended because their instance was stopped at the end of a drain.", st.drain_timeouts);
	family(out, "pmd_proxy_h2_connections", "gauge", "HTTP/2 client connections open now.");
	evbuffer_add_printf(out, "pmd_proxy_h2_connections %" PRIu64 "\n", st.h2_connections);
	counter(out, "pmd_proxy_h2_connections_total", "HTTP/2 client connections (ALPN h2).",
		st.h2_connections_total);
	counter(out, "pmd_proxy_h2_streams_total", "HTTP/2 streams handed to the request path.",
		st.h2_streams_total);
}

void metrics_render(struct pmd *d, struct evbuffer *out)
{
	time_t now = time(NULL);

	family(out, "pmd_build_info", "gauge", "Version of the running pmd.");
	evbuffer_add_printf(out, "pmd_build_info{version=\"%s\"} 1\n", PMD_VERSION);
	family(out, "pmd_start_time_seconds", "gauge", "Start time of pmd, seconds since the epoch.");
	evbuffer_add_printf(out, "pmd_start_time_seconds %lld\n", (long long)d->started);
	family(out, "pmd_uptime_seconds", "gauge", "Seconds since pmd started.");
	evbuffer_add_printf(out, "pmd_uptime_seconds %lld\n",
		(long long)(now > d->started ? now - d->started : 0));
	if (d->proxy)
		proxy_metrics(d->proxy, out);
	if (d->tls)
		tlsmgr_metrics(d->tls, out);
	if (d->sup)
		supervisor_metrics(d->sup, out);
}
