/* snapshot — the immutable routing state the main thread publishes and the
 * proxy workers read (DESIGN.md "Shape of the program").
 *
 * The main thread builds a complete `struct snapshot` and hands it to
 * snapshot_publish(); from then on nobody writes it. Workers take a
 * reference with snapshot_acquire() and drop it with snapshot_release();
 * the last release frees it. Per-instance state that must change while a
 * snapshot is live (in-flight count, draining) lives in `struct backend`,
 * which is refcounted on its own and shared by consecutive snapshots. */
#ifndef PMD_SNAPSHOT_H
#define PMD_SNAPSHOT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* One running instance the proxy can send requests to. Created by the
 * supervisor (main thread), referenced by snapshots, and by each request a
 * worker is proxying to it. */
struct backend {
	atomic_int refs;
	uint64_t id;                    /* unique for the life of the process */
	char service[64];
	char color[8];                  /* "blue" | "green" | "" */
	struct sockaddr_storage addr;
	socklen_t addrlen;
	char addr_text[64];             /* "127.0.0.1:8001" */
	atomic_long inflight;           /* requests (and tunnels) in progress */
	atomic_ulong requests;          /* total requests sent */
	atomic_int draining;            /* no new requests; finish in-flight */
	atomic_int close_tunnels;       /* end of drain: close WebSockets (1012) */
	atomic_int drain_over;          /* end of drain: the instance was told to stop; a
	                                 * request it does not finish ends as drain_timeout */
};

/* NULL on allocation failure or an unparsable address ("host:port",
 * numeric IPv4/IPv6). refs starts at 1, owned by the caller. */
struct backend *backend_new(const char *service, const char *color, const char *addr_text);
struct backend *backend_ref(struct backend *b);
void backend_unref(struct backend *b);       /* NULL ok */

struct snap_service {
	char *name;
	struct backend **live;   /* healthy instances taking new requests */
	size_t n_live;           /* 0: hold the request up to hold_timeout, then 503 */
};

struct snap_route {
	char *name;              /* [route NAME] (metrics label); NULL = unnamed */
	char *prefix;
	size_t prefix_len;
	char *host;              /* NULL = any host */
	int service;             /* index into services */
	uint64_t upstream_idle_timeout_ms;  /* 0: the proxy setting */
};

/* [static NAME]: one file at an exact path, or a folder under a prefix.
 * Served by proxy/static.c. */
struct snap_static {
	char *name;
	char *path;              /* file: the exact path; folder: a prefix ending in '/' */
	size_t path_len;
	char *file;              /* file: absolute path, opened by the workers; folder: NULL */
	int dirfd;               /* folder: O_PATH fd of it (closed with the snapshot); else -1 */
	bool fallback;           /* folder: a missing file goes on to the routes */
	char *content_type;      /* file: its Content-Type; folder: NULL (by extension) */
};

struct snap_challenge {
	char *token;
	char *key_authorization;
};

/* Proxy knobs copied from the config at build time. */
struct proxy_settings {
	bool redirect_https;
	char *hsts;              /* NULL disables */
	int max_connections;
	uint64_t max_header_bytes, max_body_bytes;
	uint64_t client_header_timeout_ms, idle_timeout_ms;
	uint64_t upstream_connect_timeout_ms, upstream_response_timeout_ms; /* to the response head */
	uint64_t upstream_idle_timeout_ms;   /* between response body bytes; 0 = off */
	uint64_t hold_timeout_ms;
	uint64_t drain_timeout_ms;
	bool access_log;
	int log_json;
	/* [proxy] lb_health_path ("" = off): answered by the proxy itself,
	 * 200 normally, 503 while lb_draining (pmctl drain) or while a service
	 * has no live instance. */
	char lb_health_path[128];
	bool lb_draining;
	bool http2;              /* offer h2 in ALPN */
	int max_concurrent_streams;  /* per HTTP/2 connection */
};

struct snapshot {
	atomic_int refs;
	uint64_t generation;     /* set by snapshot_publish */
	struct proxy_settings ps;
	struct snap_route *routes;   size_t n_routes;   /* longest prefix first */
	struct snap_service *services; size_t n_services;
	struct snap_static *statics; size_t n_statics;
	struct snap_challenge *challenges; size_t n_challenges;
	void *tls_ctx;           /* SSL_CTX * (SNI picks among certs), or NULL */
};

/* Allocate an empty snapshot (refs = 1). NULL on failure. */
struct snapshot *snapshot_new(void);
/* Free everything a snapshot owns; used by the last release. */
void snapshot_release(struct snapshot *s);   /* NULL ok */

/* Main thread: make s current (takes ownership) and drop the previous one.
 * Wakes the registered listeners (proxy workers) so held requests retry. */
void snapshot_publish(struct snapshot *s);
/* Any thread: a reference to the current snapshot (NULL before the first
 * publish). Cheap: a mutex-protected pointer load + atomic increment. */
struct snapshot *snapshot_acquire(void);
/* Generation of the current snapshot, lock-free: workers compare it to the
 * one they hold and re-acquire only when it changed. */
uint64_t snapshot_generation(void);

/* Called (on the publishing thread) after every publish. At most 64. */
typedef void (*snapshot_listener_fn)(void *arg);
int snapshot_add_listener(snapshot_listener_fn fn, void *arg);

/* Route lookup: longest prefix match among routes whose host is NULL or
 * equals `host` (case-insensitive, port ignored). Returns the route or NULL. */
const struct snap_route *snapshot_route(const struct snapshot *s,
	const char *host, size_t host_len, const char *path, size_t path_len);
/* A route whose prefix is path plus '/' ("/admin/" for "/admin"), or
 * NULL: pmd answers such a request with a 308 to the slash form, like nginx
 * does for a location ending in '/'. Host matched as by snapshot_route. */
const struct snap_route *snapshot_route_slash(const struct snapshot *s,
	const char *host, size_t host_len, const char *path, size_t path_len);
/* The [static] answering `path`: a file whose path equals it, else the
 * folder with the longest prefix of it, or NULL. */
const struct snap_static *snapshot_static(const struct snapshot *s,
	const char *path, size_t path_len);
const struct snap_challenge *snapshot_challenge(const struct snapshot *s,
	const char *token, size_t token_len);

/* Drop all published state (shutdown). */
void snapshot_shutdown(void);

#endif
