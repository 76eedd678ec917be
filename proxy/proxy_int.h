/* proxy internals shared by proxy/proxy.c (workers, listeners, lifecycle,
 * stats, access log) and proxy/conn.c (client connections, requests,
 * upstream pools). Everything here is touched by one worker thread only,
 * except where a field says otherwise. */
#ifndef PMD_PROXY_INT_H
#define PMD_PROXY_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/listener.h>

#include "http.h"
#include "proxy.h"
#include "snapshot.h"
#include "static.h"

/* Per-worker counters: written by the worker only (relaxed load + store, no
 * locked instruction on the hot path), read by proxy_get_stats. */
struct wstats {
	_Atomic uint64_t connections, connections_total, requests_total;
	_Atomic uint64_t responses[6];
	_Atomic uint64_t bytes_in, bytes_out, upstream_errors, held, tls_handshakes;
	_Atomic long inflight;           /* requests and tunnels in progress */
	_Atomic uint64_t h2_connections, h2_connections_total, h2_streams_total;
	_Atomic long tunnels;            /* client connections in CS_TUNNEL */
	_Atomic uint64_t drain_timeouts; /* requests ended because their instance was stopped */
};

/* Per-worker, per-route request counters (same single-writer rule).
 * Slot 0 is PROXY_ROUTE_NONE; a slot's name is written before n_rs is
 * raised past it (release), so readers see only complete names. */
#define RSLOTS 64
struct rstat {
	char name[64];
	_Atomic uint64_t codes[6];
	_Atomic uint64_t le[PROXY_DURATION_BUCKETS];
	_Atomic uint64_t sum_us;
};

#define RSTAT_ADD(r, field, n) atomic_store_explicit(&(r)->field, \
	atomic_load_explicit(&(r)->field, memory_order_relaxed) + (n), memory_order_relaxed)

#define STAT_ADD(w, field, n) atomic_store_explicit(&(w)->st.field, \
	atomic_load_explicit(&(w)->st.field, memory_order_relaxed) + (n), memory_order_relaxed)

struct listener_slot {
	struct worker *w;
	struct evconnlistener *lev;      /* owns fd once created */
	int fd;
	bool tls;
	const char *text;                /* address as configured (owned by proxy) */
};

struct conn;
struct upstream;
struct io;

/* io — one socket with an input and an output evbuffer (proxy/io.c).
 * Plain TCP uses raw events: read(2) straight into the input buffer (no
 * FIONREAD), and writes are speculative: whatever is added to the output
 * is written at the end of the current callback (worker_flush), EV_WRITE
 * is armed only when the kernel would block (no evbuffer callbacks: see
 * io_in/io_out). TLS does the same with
 * SSL_read/SSL_write on the fd; the end of its handshake is reported as
 * BEV_EVENT_CONNECTED, and a clean close sends close_notify. Callbacks
 * receive BEV_EVENT_* flags. */
typedef void (*io_cb)(struct io *io, void *arg);
typedef void (*io_event_cb)(struct io *io, short what, void *arg);

struct io {
	struct worker *w;
	int fd;
	void *ssl;                       /* SSL * (TLS), else NULL */
	size_t tls_wlen;                 /* length of a blocked SSL_write, to retry */
	struct event rev, wev;
	struct evbuffer *in, *out;
	io_cb readcb, writecb;
	io_event_cb eventcb;
	void *arg;
	size_t rd_high, wr_low;
	bool rd_on, rd_added, wr_added, connecting, eof, dirty, open;
	bool hs_done, tls_failed;        /* TLS: handshake done; no clean close_notify */
	bool rd_wants_wr, wr_wants_rd;   /* TLS: the other direction is needed */
	bool rd_again;                   /* TLS: read more (or report the end) next turn */
	bool sendfile;                   /* plain: the output may hold file segments */
	short pend_end;                  /* TLS: EOF/ERROR seen behind data, not reported yet */
	struct io *dnext, *dprev;        /* worker->dirty */
	struct h2stream *h2s;            /* memory io of an HTTP/2 stream, else NULL */
	bool mem_new;                    /* memory: input or an end not yet announced */
};

/* Plain socket (fd nonblocking; `connecting`: a connect is in progress and
 * CONNECTED or ERROR is reported). 0 / -1 (fd not closed on failure). */
int io_init_plain(struct io *io, struct worker *w, int fd, bool connecting);
/* TLS server side on fd with ssl (both owned by io on success). */
int io_init_tls(struct io *io, struct worker *w, int fd, void *ssl);
/* Memory io of one HTTP/2 stream (proxy/h2.c): no socket. The stream
 * writes the request into `in` and announces it with io_mem_feed (or an
 * end with io_mem_end); the read callback runs on its own turn while
 * reading is on, as for a socket. What the connection layer adds to `out`
 * is handed to h2_stream_flush at the end of the callback; the stream
 * takes it at the pace of the HTTP/2 client and calls io_mem_writable,
 * which runs the write callback (own turn) once `out` is at the low
 * watermark. io_close hands the rest of `out` to h2_stream_closed. */
int io_init_mem(struct io *io, struct worker *w, struct h2stream *st);
void io_mem_feed(struct io *io);
void io_mem_end(struct io *io, short what);
void io_mem_writable(struct io *io);
void io_setcb(struct io *io, io_cb r, io_cb wr, io_event_cb ev, void *arg);
void io_read_on(struct io *io, bool on);
void io_set_read_high(struct io *io, size_t high);   /* 0 = unlimited */
void io_set_write_low(struct io *io, size_t low);
/* The buffers, for the connection layer. Taking one marks the io for the
 * end of the callback (worker_flush): what was added to the output is
 * written, and reading paused at the high watermark resumes once the input
 * was consumed. So nothing touches them but through these. */
struct evbuffer *io_in(struct io *io);
struct evbuffer *io_out(struct io *io);
/* Re-arm reading if it was paused at the high watermark. */
void io_read_update(struct io *io);
void io_shutdown_wr(struct io *io);
/* TLS record buffers: a new connection gives them back after every
 * record (SSL_MODE_RELEASE_BUFFERS: idle connections stay small); `keep`
 * holds them while requests follow each other (no malloc/free per
 * record), !keep gives them back now and from then on. */
void io_keep_buffers(struct io *io, bool keep);
/* Plain sockets: file segments added to the output from now on go out
 * with sendfile(2) (the buffer drains to the fd), and a write that stops at
 * one (writev does) goes on with it in the same turn. false on TLS and
 * on HTTP/2 streams (memory ios): read the file into the output instead. */
bool io_sendfile(struct io *io);
/* Try to write what is queued now (no callbacks). */
void io_flush_now(struct io *io);
/* Make the coming io_close reset the connection (RST, SO_LINGER 0) after
 * writing what the kernel takes now: for a peer that must not mistake the
 * end for a clean one. */
void io_reset_on_close(struct io *io);
/* Close the socket and free the buffers; the struct itself is the caller's. */
void io_close(struct io *io);
/* Write every dirty io of the worker; call at the end of each callback. */
void worker_flush(struct worker *w);

/* Idle keep-alive upstream connections to one backend (by backend id). */
struct pool {
	uint64_t be_id;
	struct upstream *idle;           /* most recently used first */
	unsigned n_idle;
};

struct worker {
	struct proxy *p;
	int idx;
	pthread_t thr;
	bool thr_started;
	struct event_base *base;
	struct listener_slot *ls;
	size_t n_ls;
	struct event *ev_wake;           /* snapshot published (any thread) */
	struct event *ev_stop;           /* stop accepting (any thread) */
	struct event *ev_cap;            /* connection count crossed the cap (any thread) */
	struct event *ev_tick;           /* 1 s housekeeping */
	struct event *ev_log;            /* access log flush timer */
	struct snapshot *snap;           /* current as of the last check */
	uint64_t gen;
	struct conn *conns;              /* every client connection */
	struct conn *held;               /* requests waiting for a live instance */
	struct io *dirty;                /* ios with output to write */
	struct pool *pools;
	size_t n_pools, cap_pools;
	struct wstats st;
	struct rstat *rs;                /* RSLOTS route counters */
	_Atomic size_t n_rs;
	int *route_slot;                 /* snap->routes[i] -> rs index */
	size_t cap_route_slot;
	uint64_t rng;                    /* xorshift64 state */
	unsigned rr;                     /* round-robin start for backend choice */
	bool stopping;                   /* stop accepting was requested */
	bool paused;                     /* listeners disabled at max_connections */
	bool log_armed;
	char *logbuf;                    /* access log lines not yet written */
	size_t loglen;
	int loglines;
	time_t ts_sec;                   /* second ts_text was formatted for */
	char ts_text[24];
	struct { uint64_t ms; const struct timeval *tv; } tcache[16];
	int n_tcache;
	struct static_cache *sc;         /* open [static] files (proxy/static.c) */
	struct http_request req;         /* scratch: the request being parsed */
	struct http_response res;        /* scratch: the response being parsed */
};

struct proxy {
	struct worker *w;
	int nw;
	struct proxy_settings defaults;  /* used until the first snapshot */
	int https_port;                  /* for 308 redirects; 443 = omitted */
	bool have_https;
	char **addr_text;                /* listener addresses (owned) */
	size_t n_addr_text;
	atomic_int nconns;               /* client connections across workers */
	atomic_int n_paused;             /* workers paused at the cap */
	atomic_int stop_step;            /* 1 stop accepting, 2 close tunnels too */
	bool started;
};

#define LOGBUF_SIZE 32768

/* proxy.c */
const struct proxy_settings *worker_settings(struct worker *w);
void worker_refresh_snapshot(struct worker *w);
uint64_t worker_now_ms(struct worker *w);
uint64_t worker_now_us(struct worker *w);
/* Counter slot of w->snap->routes[route]. */
int worker_route_slot(struct worker *w, size_t route);
/* Count one finished request of route slot `slot` (see struct rstat). */
void worker_count_request(struct worker *w, int slot, int status, uint64_t dur_us);
/* A common-timeout timeval for `ms` on this worker's base (O(1) timers). */
const struct timeval *worker_tv(struct worker *w, uint64_t ms);
uint64_t worker_random(struct worker *w);
/* Called when a client connection closes (max_connections bookkeeping). */
void worker_conn_closed(struct worker *w);
/* Append one access log line (without newline) to the worker's batch. */
void accesslog_add(struct worker *w, const char *line, size_t len);
/* Current UTC time as "2026-11-28T17:42:13.123Z" (worker-cached). */
const char *worker_timestamp(struct worker *w);

/* One message body being moved from an input evbuffer to an output one
 * (conn.c; h2.c takes response bodies apart with it). */
struct body {
	enum http_body kind;
	bool out_chunked;              /* re-frame as chunked on the way out */
	bool done;
	uint64_t remaining;            /* HTTP_BODY_LENGTH */
	struct http_chunked ck;        /* HTTP_BODY_CHUNKED */
};
void body_init(struct body *bd, enum http_body kind, uint64_t len, uint64_t max_body, bool out_chunked);
/* Move what is available of a body from src to dst. Returns bytes written
 * to dst (for accounting) or -1 on malformed chunking (-2 when too large).
 * Sets bd->done at the end of the body. */
int64_t body_move(struct body *bd, struct evbuffer *src, struct evbuffer *dst);

/* conn.c */
/* A request conn for one HTTP/2 stream of `parent` (a CS_H2 conn): its
 * client side is a memory io (io_init_mem) the stream feeds with an
 * HTTP/1.1 request head and body; the upstream pauses above out_high
 * bytes of response output, resumes at out_low. NULL when out of memory. */
struct io *conn_stream_open(struct conn *parent, struct h2stream *st, size_t out_high, size_t out_low);
/* The stream's client is gone: free its conn now (logged as 499 if it
 * had no answer yet). Its io_close calls h2_stream_closed. */
void conn_stream_close(struct io *io);
/* Close a client connection now (h2.c: the session ended). */
void conn_end(struct conn *c);
void conn_accept(struct worker *w, int fd, const struct sockaddr *sa, int salen, bool tls);
/* New snapshot: retry held requests, drop idle upstreams of stale backends. */
void conn_on_snapshot(struct worker *w);
/* Periodic: idle upstream expiry, close tunnels (1012) of drained backends,
 * abandon requests to draining backends whose client sent EOF. */
void conn_tick(struct worker *w);
/* Stop accepting: idle keep-alive client connections close after a short
 * grace (a request sent meanwhile is answered with Connection: close);
 * requests whose client sent EOF before an answer close now (see conn.c). */
void conn_close_idle(struct worker *w);
/* Graceful stop, the end: WebSocket tunnels get close code 1001. */
void conn_close_tunnels(struct worker *w);
/* Worker shutdown: free every connection and pooled upstream. */
void conn_free_all(struct worker *w);

/* h2req.c — an HTTP/2 request's header fields to an HTTP/1.1 head. */
struct h2buf {
	char *p;
	size_t len, cap;
};
struct h2req {
	struct h2buf fields;             /* regular fields, "name: value\r\n" */
	struct h2buf cookie;             /* cookie crumbs joined by "; " */
	struct h2buf method, path, authority, host;
	bool scheme, regular_seen, has_cl;
	size_t total, max;               /* bytes kept, limit */
};
void h2req_init(struct h2req *r, size_t max);
void h2req_free(struct h2req *r);
/* One field: 0, -1 malformed (RFC 9113 §8: stream error), -2 over max
 * (or out of memory). */
int h2req_field(struct h2req *r, const uint8_t *name, size_t nlen, const uint8_t *value, size_t vlen);
/* Append the HTTP/1.1 head to out: 0, or -1 malformed (a pseudo-header
 * missing, CONNECT, Host naming another authority). `end_stream`: the
 * request has no DATA; else, without content-length, *chunked is set and
 * the body must be sent chunked. */
int h2req_head(struct h2req *r, bool end_stream, struct evbuffer *out, bool *chunked);

/* h2.c — HTTP/2 sessions on TLS client connections (ALPN h2). */
struct h2sess;
/* Take over conn c's io (handshake done, ALPN h2): the server preface is
 * queued. NULL when out of memory (the caller frees c). */
struct h2sess *h2_start(struct conn *c, struct io *io);
/* Free the session and every stream's conn (no callbacks to c). */
void h2_free(struct h2sess *s);
/* Graceful stop: GOAWAY; the connection closes once its streams ended. */
void h2_shutdown(struct h2sess *s);
/* io.c -> h2.c for memory ios: the conn added output or consumed input;
 * the conn is being freed (`reset`: the response must not look complete). */
void h2_stream_flush(struct h2stream *st);
void h2_stream_closed(struct h2stream *st, bool reset);

#endif
