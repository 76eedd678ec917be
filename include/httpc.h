/* httpc — the one asynchronous HTTP client of pmd: libcurl's multi
 * interface driven by the main thread's libevent base
 * (curl_multi_socket_action, one event per socket, one timer).
 * Used for Docker (unix socket), health checks, ACME and registries.
 * Nothing in pmd calls curl_easy_perform. Main thread only. */
#ifndef PMD_HTTPC_H
#define PMD_HTTPC_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct httpc;
struct httpc_req;

struct httpc_response {
	long status;              /* 0 when no response (see error) */
	int curl_code;            /* CURLcode, 0 on transport success */
	const char *error;        /* transport error text, or NULL */
	const char *body;         /* NUL-terminated; NULL when streamed */
	size_t body_len;
	const char *headers;      /* raw response head(s), NUL-terminated */
	double total_s;
};

/* Called once per request on completion, success or not (not after
 * httpc_cancel). `res` is valid only during the call. */
typedef void (*httpc_done_fn)(void *arg, const struct httpc_response *res);
/* Streaming: called with each piece of the body as it arrives; return 0 to
 * continue, -1 to abort the transfer (done is then called with an error). */
typedef int (*httpc_data_fn)(void *arg, const char *data, size_t len);

struct httpc_opts {
	const char *method;        /* default GET, or POST when body set */
	const char *url;           /* for unix sockets: http://docker/v1.41/... */
	const char *unix_socket;   /* NULL: TCP */
	const char *const *headers;/* NULL-terminated "Name: value" list */
	const char *body;          /* copied */
	size_t body_len;
	long timeout_ms;           /* whole transfer; 0 = none */
	long connect_timeout_ms;   /* 0 = curl default */
	const char *ca_file;       /* extra CA bundle, trusted besides the system's */
	int insecure;              /* do not verify TLS peer */
	size_t max_body;           /* buffered bodies over this fail; 0 = 8 MiB */
	httpc_data_fn on_data;     /* set: body is streamed, not buffered */
	httpc_done_fn on_done;
	void *arg;
};

struct httpc *httpc_new(struct event_base *base);   /* NULL on failure */
void httpc_free(struct httpc *h);                     /* cancels all, no callbacks */

/* Start a request. Returns a handle (valid until on_done has been called or
 * httpc_cancel) or NULL on immediate failure (errp set, no callback). */
struct httpc_req *httpc_request(struct httpc *h, const struct httpc_opts *o, char **errp);
/* Abort an in-flight request; its callbacks are not called. */
void httpc_cancel(struct httpc_req *r);
/* Number of transfers in flight (tests, status). */
int httpc_active(const struct httpc *h);

#endif
