/* conn — one client connection on a proxy worker: request heads parsed in
 * place, routed on the worker's snapshot, forwarded to a pooled upstream
 * connection, bodies streamed both ways, responses answered in order.
 *
 * Life of a request (enum cstate):
 *   CS_HEAD   waiting for / parsing a request head (client_header_timeout,
 *             idle_timeout between keep-alive requests)
 *   CS_HELD   the service has no live instance: the head stays in the client
 *             input, reading is paused, retried on every new snapshot, 503
 *             after hold_timeout
 *   CS_PROXY  forwarded: request body streams client -> upstream, response
 *             head parsed, body streams upstream -> client
 *   CS_FILE   a [static] file body is being queued (file_pump), a piece per
 *             write turn; idle_timeout without the client taking a byte
 *   CS_TUNNEL after a 101: bytes both ways until a side closes
 *   CS_LINGER answer written; half-close, discard input, then free
 *
 * Ownership: a conn owns its socket (struct io), timer and (while proxying) its
 * upstream; it holds one backend reference and one backend->inflight count
 * from the moment a backend is chosen until the request (or tunnel) ends.
 *
 * Expect: 100-continue is answered by pmd itself once a backend is chosen
 * (the Expect header is not forwarded), so the client never waits on an
 * upstream that ignores Expect and never sees two 100s.
 *
 * A client's EOF while its request waits for the response: TCP cannot tell
 * a half-close (shutdown(SHUT_WR) after the request, which HTTP/1.1 allows)
 * from a client that is gone, short of writing to it. So the request goes
 * on and its response is written, then the connection closes; but while
 * the proxy stops (SIGTERM) or the request's instance drains (a swap), a
 * request whose client sent EOF and has no response head yet is abandoned:
 * upstream closed (not pooled), in-flight released, logged as 499. Nobody
 * waits on an answer that likely has no reader.
 *
 * Bodiless requests keep their head in the client input until the response
 * head arrives: a request that fails on a reused upstream connection before
 * any response byte is re-parsed from there and retried once on a fresh
 * connection (idempotent methods only). */
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event_struct.h>
#include <openssl/ssl.h>

#include "log.h"
#include "proxy_int.h"
#include "tls.h"

#define HIGH_WATER (256 * 1024)        /* pause the other side above this */
#define LOW_WATER (64 * 1024)          /* resume below this */
#define RES_MAX_HEAD (64 * 1024)       /* upstream response heads */
#define FRAMING_WINDOW 16384           /* chunk framing is looked at in this window */
#define LINGER_MS 2000                 /* wait for the client's FIN after our last byte */
#define FILE_SEGMENT (1024 * 1024)     /* sendfile: bytes queued per file segment */
#define FILE_READ (64 * 1024)          /* TLS: bytes per pread of a file body */
#define POOL_MAX_IDLE 256              /* idle upstreams per backend per worker */
#define STOP_IDLE_MS 1000              /* stopping: an idle keep-alive connection may still send one request */
#define ACME_PREFIX "/.well-known/acme-challenge/"

enum cstate { CS_HEAD, CS_HELD, CS_PROXY, CS_FILE, CS_TUNNEL, CS_LINGER, CS_H2 };
enum tkind { T_NONE, T_HEADER, T_IDLE, T_HOLD, T_CONNECT, T_RESPONSE, T_ACTIVITY, T_LINGER };

struct upstream {
	struct worker *w;
	struct io io;
	struct backend *be;            /* reference */
	struct conn *c;                /* owner, NULL when idle or retiring */
	struct upstream *next;         /* pool idle list */
	uint64_t idle_since;
	bool reused, connected, retiring;
};

struct conn {
	struct worker *w;
	struct io io;
	struct event timer;
	struct conn *next, *prev;      /* worker->conns */
	struct conn *hnext, *hprev;    /* worker->held */
	struct upstream *up;
	struct backend *be;            /* reference + inflight for the request */
	struct h2sess *h2;             /* CS_H2: the HTTP/2 session on io */
	size_t out_high;               /* pause the upstream above this much client output */
	enum cstate state;
	enum tkind tkind;
	bool tls, held_linked;
	bool req_active, resumed, in_head_loop;
	bool head_kept;                /* request head still in the client input */
	bool req_done, res_head_done, res_started, retried;
	bool is_head, keep_alive, minor0, upgrade, idempotent;
	bool close_after, client_eof, client_paused, up_paused;
	bool up_reusable;              /* the upstream may serve another request */
	int status;
	const char *reason;            /* why pmd ended the request (access log), or NULL */
	uint64_t route_idle_ms;        /* the route's upstream_idle_timeout, 0 = the proxy's */
	int rslot;                     /* route counter slot of the request */
	int tls_busy;                  /* TLS requests since the last quiet tick */
	uint32_t head_len;
	uint64_t start_us, last_ms, act_ms;
	uint64_t due_ms;               /* deadline of tkind */
	uint64_t armed_ms;             /* when the timer event fires, 0 = not armed */
	uint64_t bytes_in, bytes_out;
	struct body rq, rs;
	struct static_body fbody;      /* CS_FILE: the rest of the file to queue */
	size_t fmark;                  /* CS_FILE: output length when last looked at */
	char method[16];
	char rid[40];
	char target[128];
	char ip[46];
};

static void conn_free(struct conn *c);
static void conn_try_head(struct conn *c);
static void conn_finish_request(struct conn *c);
static void conn_begin_error_request(struct conn *c, size_t bytes_in);
static void client_read(struct io *io, void *arg);
static void up_read(struct io *io, void *arg);
static void up_write(struct io *io, void *arg);
static void up_event(struct io *io, short what, void *arg);

/* Small bounded writer into reserved evbuffer space. */
struct wb {
	char *p;
	size_t n, cap;
	bool over;
};

static inline void wb_put(struct wb *b, const void *s, size_t n)
{
	if (b->over || n > b->cap - b->n) {
		b->over = true;
		return;
	}
	memcpy(b->p + b->n, s, n);
	b->n += n;
}
#define WB_LIT(b, s) wb_put((b), (s), sizeof(s) - 1)

static void wb_u64(struct wb *b, uint64_t v)
{
	char tmp[24];
	int i = (int)sizeof(tmp);
	do {
		tmp[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	wb_put(b, tmp + i, sizeof(tmp) - (size_t)i);
}

/* Timers ---------------------------------------------------------------
 *
 * One timer per connection, re-armed lazily: a state change records the
 * kind and its due time, and touches the event only when the new deadline
 * is earlier than the armed one. A timer that fires before the current
 * deadline re-arms for the rest. A keep-alive request changes the timeout
 * three or four times; this keeps event_add (a base lock, a queue move)
 * off the per-request path. */

/* `common`: ms is a configured timeout (a libevent common timeout, O(1));
 * else the rest of one, a plain timer. */
static void timer_arm(struct conn *c, uint64_t due, uint64_t ms, bool common)
{
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000 * 1000) };
	event_add(&c->timer, common ? worker_tv(c->w, ms) : &tv);
	c->armed_ms = due;
}

static void timer_set(struct conn *c, enum tkind kind, uint64_t ms)
{
	c->tkind = kind;
	if (kind == T_NONE)
		return;              /* a firing with T_NONE does nothing */
	uint64_t due = worker_now_ms(c->w) + ms;
	c->due_ms = due;
	if (!c->armed_ms || c->armed_ms > due)
		timer_arm(c, due, ms, true);
}

/* An inactivity timer that is not re-armed on every read: reads only stamp
 * last_ms; when it fires it re-arms for what is left. */
static void timer_activity(struct conn *c, uint64_t ms)
{
	c->act_ms = ms;
	c->last_ms = worker_now_ms(c->w);
	timer_set(c, T_ACTIVITY, ms);
}

/* Header classification -------------------------------------------------- */

enum hclass { H_OTHER, H_HOP, H_UPGRADE, H_XFF, H_XFP, H_XFH, H_XRID, H_EXPECT, H_HOST, H_HSTS };

static enum hclass hdr_class(const char *n, size_t l)
{
	switch (l) {
	case 2:
		return http_token_eq(n, l, "te") ? H_HOP : H_OTHER;
	case 4:
		return http_token_eq(n, l, "host") ? H_HOST : H_OTHER;
	case 6:
		return http_token_eq(n, l, "expect") ? H_EXPECT : H_OTHER;
	case 7:
		if (http_token_eq(n, l, "upgrade"))
			return H_UPGRADE;
		return http_token_eq(n, l, "trailer") ? H_HOP : H_OTHER;
	case 10:
		return (http_token_eq(n, l, "connection") || http_token_eq(n, l, "keep-alive")) ? H_HOP : H_OTHER;
	case 12:
		return http_token_eq(n, l, "x-request-id") ? H_XRID : H_OTHER;
	case 15:
		return http_token_eq(n, l, "x-forwarded-for") ? H_XFF : H_OTHER;
	case 16:
		if (http_token_eq(n, l, "x-forwarded-host"))
			return H_XFH;
		return http_token_eq(n, l, "proxy-connection") ? H_HOP : H_OTHER;
	case 17:
		if (http_token_eq(n, l, "x-forwarded-proto"))
			return H_XFP;
		return http_token_eq(n, l, "transfer-encoding") ? H_HOP : H_OTHER;
	case 25:
		return http_token_eq(n, l, "strict-transport-security") ? H_HSTS : H_OTHER;
	default:
		return H_OTHER;
	}
}

/* Tokens of the Connection header(s): further hop-by-hop header names. */
struct ctokens {
	struct { const char *p; size_t n; } t[16];
	int n;
};

static void ctokens_collect(struct ctokens *ct, const struct http_header *h, size_t nh)
{
	ct->n = 0;
	for (size_t i = 0; i < nh; i++) {
		if (h[i].name_len != 10 || !http_token_eq(h[i].name, 10, "connection"))
			continue;
		const char *s = h[i].value, *end = s + h[i].value_len;
		while (s < end && ct->n < 16) {
			while (s < end && (*s == ' ' || *s == '\t' || *s == ','))
				s++;
			const char *st = s;
			while (s < end && *s != ',' && *s != ' ' && *s != '\t')
				s++;
			if (s > st) {
				ct->t[ct->n].p = st;
				ct->t[ct->n].n = (size_t)(s - st);
				ct->n++;
			}
		}
	}
}

static bool ctokens_has(const struct ctokens *ct, const char *name, size_t len)
{
	for (int i = 0; i < ct->n; i++)
		if (ct->t[i].n == len && strncasecmp(ct->t[i].p, name, len) == 0)
			return true;
	return false;
}

/* Request ids ----------------------------------------------------------- */

static bool rid_sane(const char *s, size_t n)
{
	if (n == 0 || n >= sizeof(((struct conn *)0)->rid))
		return false;
	for (size_t i = 0; i < n; i++) {
		char ch = s[i];
		if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		      ch == '-' || ch == '_' || ch == '.'))
			return false;
	}
	return true;
}

static void rid_generate(struct worker *w, char *out)
{
	static const char hex[] = "0123456789abcdef";
	uint64_t r = worker_random(w);
	for (int i = 0; i < 16; i++) {
		out[i] = hex[r & 15];
		r >>= 4;
	}
	out[16] = '\0';
}

/* Access log ------------------------------------------------------------ */

/* Append `s` escaped for a logfmt "..." or JSON string. */
static void esc_put(struct wb *b, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)s[i];
		if (ch == '"' || ch == '\\') {
			char e[2] = { '\\', (char)ch };
			wb_put(b, e, 2);
		} else if (ch < 0x20 || ch == 0x7f) {
			char e[8];
			int k = snprintf(e, sizeof(e), "\\u%04x", ch);
			wb_put(b, e, (size_t)k);
		} else {
			wb_put(b, &s[i], 1);
		}
	}
}

static void conn_log(struct conn *c, const struct proxy_settings *ps)
{
	if (!ps->access_log)
		return;
	char line[768];
	struct wb b = { line, 0, sizeof(line), false };
	uint64_t now = worker_now_us(c->w);
	uint64_t dur = (now >= c->start_us ? now - c->start_us : 0) / 1000;
	const char *ts = worker_timestamp(c->w);
	const char *upname = c->be ? c->be->addr_text : "-";
	const char *proto = c->io.h2s ? "h2" : c->minor0 ? "http/1.0" : "http/1.1";
	size_t tlen = strlen(c->target);
	if (ps->log_json) {
		WB_LIT(&b, "{\"ts\":\"");
		wb_put(&b, ts, strlen(ts));
		WB_LIT(&b, "\",\"level\":\"info\",\"msg\":\"request\",\"client\":\"");
		wb_put(&b, c->ip, strlen(c->ip));
		WB_LIT(&b, "\",\"method\":\"");
		esc_put(&b, c->method, strlen(c->method));
		WB_LIT(&b, "\",\"target\":\"");
		esc_put(&b, c->target, tlen);
		WB_LIT(&b, "\",\"status\":");
		wb_u64(&b, (uint64_t)c->status);
		WB_LIT(&b, ",\"bytes_in\":");
		wb_u64(&b, c->bytes_in);
		WB_LIT(&b, ",\"bytes_out\":");
		wb_u64(&b, c->bytes_out);
		WB_LIT(&b, ",\"duration_ms\":");
		wb_u64(&b, dur);
		WB_LIT(&b, ",\"upstream\":\"");
		wb_put(&b, upname, strlen(upname));
		WB_LIT(&b, "\",\"request_id\":\"");
		wb_put(&b, c->rid, strlen(c->rid));
		if (c->reason) {
			WB_LIT(&b, "\",\"reason\":\"");
			wb_put(&b, c->reason, strlen(c->reason));
		}
		WB_LIT(&b, "\",\"proto\":\"");
		wb_put(&b, proto, strlen(proto));
		WB_LIT(&b, "\"}");
	} else {
		WB_LIT(&b, "ts=");
		wb_put(&b, ts, strlen(ts));
		WB_LIT(&b, " level=info msg=request client=");
		wb_put(&b, c->ip, strlen(c->ip));
		WB_LIT(&b, " method=");
		esc_put(&b, c->method, strlen(c->method));
		WB_LIT(&b, " target=\"");
		esc_put(&b, c->target, tlen);
		WB_LIT(&b, "\" status=");
		wb_u64(&b, (uint64_t)c->status);
		WB_LIT(&b, " bytes_in=");
		wb_u64(&b, c->bytes_in);
		WB_LIT(&b, " bytes_out=");
		wb_u64(&b, c->bytes_out);
		WB_LIT(&b, " duration_ms=");
		wb_u64(&b, dur);
		WB_LIT(&b, " upstream=");
		wb_put(&b, upname, strlen(upname));
		WB_LIT(&b, " request_id=");
		wb_put(&b, c->rid, strlen(c->rid));
		if (c->reason) {
			WB_LIT(&b, " reason=");
			wb_put(&b, c->reason, strlen(c->reason));
		}
		WB_LIT(&b, " proto=");
		wb_put(&b, proto, strlen(proto));
	}
	if (!b.over)
		accesslog_add(c->w, line, b.n);
}

/* Upstreams and pools ------------------------------------------------------ */

static void upstream_free(struct upstream *u)
{
	if (!u)
		return;
	io_close(&u->io);
	backend_unref(u->be);
	free(u);
}

static struct pool *pool_find(struct worker *w, uint64_t id, bool create)
{
	for (size_t i = 0; i < w->n_pools; i++)
		if (w->pools[i].be_id == id)
			return &w->pools[i];
	if (!create)
		return NULL;
	for (size_t i = 0; i < w->n_pools; i++)
		if (!w->pools[i].idle) {       /* reuse an empty slot */
			w->pools[i].be_id = id;
			return &w->pools[i];
		}
	if (w->n_pools == w->cap_pools) {
		size_t cap = w->cap_pools ? w->cap_pools * 2 : 8;
		struct pool *np = realloc(w->pools, cap * sizeof(*np));
		if (!np)
			return NULL;
		w->pools = np;
		w->cap_pools = cap;
	}
	struct pool *pl = &w->pools[w->n_pools++];
	pl->be_id = id;
	pl->idle = NULL;
	pl->n_idle = 0;
	return pl;
}

static void pool_unlink(struct worker *w, struct upstream *u)
{
	struct pool *pl = pool_find(w, u->be->id, false);
	if (!pl)
		return;
	for (struct upstream **pp = &pl->idle; *pp; pp = &(*pp)->next)
		if (*pp == u) {
			*pp = u->next;
			pl->n_idle--;
			return;
		}
}

/* An idle pooled connection said something (EOF, error, or unsolicited
 * bytes): it cannot be reused. */
static void idle_read(struct io *io, void *arg)
{
	(void)io;
	struct upstream *u = arg;
	pool_unlink(u->w, u);
	upstream_free(u);
}

static void idle_event(struct io *io, short what, void *arg)
{
	(void)what;
	idle_read(io, arg);
}

static void pool_put(struct upstream *u)
{
	struct worker *w = u->w;
	struct pool *pl = atomic_load_explicit(&u->be->draining, memory_order_relaxed) ? NULL
		: pool_find(w, u->be->id, true);
	if (!pl || pl->n_idle >= POOL_MAX_IDLE) {
		upstream_free(u);
		return;
	}
	u->c = NULL;
	u->reused = true;
	u->idle_since = worker_now_ms(w);
	io_setcb(&u->io, idle_read, NULL, idle_event, u);
	io_read_on(&u->io, true);
	u->next = pl->idle;
	pl->idle = u;
	pl->n_idle++;
}

static struct upstream *pool_get(struct worker *w, const struct backend *be)
{
	struct pool *pl = pool_find(w, be->id, false);
	if (!pl || !pl->idle)
		return NULL;
	struct upstream *u = pl->idle;
	pl->idle = u->next;
	pl->n_idle--;
	u->next = NULL;
	return u;
}

/* Detached upstream: write what is queued for it (a close frame, the
 * last bytes of a tunnel) if the socket takes it now, then free. */
static void upstream_retire(struct upstream *u)
{
	if (!u)
		return;
	u->c = NULL;
	io_flush_now(&u->io);
	upstream_free(u);
}

/* Start a connection to be; NULL with errno on immediate failure
 * (ECONNREFUSED on loopback is usually immediate). */
static struct upstream *upstream_connect(struct worker *w, struct backend *be)
{
	int fd = socket(be->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return NULL;
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (const struct sockaddr *)&be->addr, be->addrlen) < 0 && errno != EINPROGRESS) {
		int e = errno;
		close(fd);
		errno = e;
		return NULL;
	}
	struct upstream *u = calloc(1, sizeof(*u));
	if (!u || io_init_plain(&u->io, w, fd, true) < 0) {
		close(fd);
		free(u);
		errno = ENOMEM;
		return NULL;
	}
	u->w = w;
	u->be = backend_ref(be);
	io_set_write_low(&u->io, LOW_WATER);
	return u;
}

static void upstream_attach(struct conn *c, struct upstream *u)
{
	c->up = u;
	u->c = c;
	io_setcb(&u->io, up_read, up_write, up_event, u);
	io_read_on(&u->io, true);
}

/* Drop the connection's upstream: back to the pool if reusable. */
static void conn_release_upstream(struct conn *c, bool reusable)
{
	struct upstream *u = c->up;
	if (!u)
		return;
	c->up = NULL;
	if (reusable && evbuffer_get_length(io_in(&u->io)) == 0)
		pool_put(u);
	else
		upstream_free(u);
}

/* Backend choice: least in-flight among live, round-robin among equals. */
static struct backend *pick_backend(struct worker *w, const struct snap_service *svc)
{
	size_t n = svc->n_live;
	if (n == 1)
		return atomic_load_explicit(&svc->live[0]->draining, memory_order_relaxed) ? NULL : svc->live[0];
	struct backend *best = NULL;
	long bi = 0;
	size_t start = n ? w->rr++ % n : 0;
	for (size_t i = 0; i < n; i++) {
		struct backend *b = svc->live[(start + i) % n];
		if (atomic_load_explicit(&b->draining, memory_order_relaxed))
			continue;
		long v = atomic_load_explicit(&b->inflight, memory_order_relaxed);
		if (!best || v < bi) {
			best = b;
			bi = v;
		}
	}
	return best;
}

/* Client side helpers ------------------------------------------------------ */

static void conn_drop_head(struct conn *c)
{
	if (c->head_kept) {
		evbuffer_drain(io_in(&c->io), c->head_len);
		c->head_kept = false;
	}
}

static void held_unlink(struct conn *c)
{
	if (!c->held_linked)
		return;
	if (c->hprev)
		c->hprev->hnext = c->hnext;
	else
		c->w->held = c->hnext;
	if (c->hnext)
		c->hnext->hprev = c->hprev;
	c->hnext = c->hprev = NULL;
	c->held_linked = false;
}

/* Tunnels are counted apart (proxy_busy): the graceful stop waits for the
 * other connections, then closes tunnels. */
static void tunnel_enter(struct conn *c)
{
	c->state = CS_TUNNEL;
	STAT_ADD(c->w, tunnels, 1);
}

static void tunnel_leave(struct conn *c)
{
	if (c->state == CS_TUNNEL)
		STAT_ADD(c->w, tunnels, -1);
}

/* Close after what is queued for the client has been written: half-close,
 * discard what the client still sends until its FIN or LINGER_MS, then
 * free (closing with unread input would reset the connection and could
 * destroy the answer before the client read it). */
static void conn_linger(struct conn *c)
{
	if (c->req_active)
		conn_finish_request(c);
	held_unlink(c);
	static_body_release(&c->fbody);
	if (c->up) {
		upstream_free(c->up);
		c->up = NULL;
	}
	tunnel_leave(c);
	c->state = CS_LINGER;
	timer_set(c, T_LINGER, LINGER_MS);
	io_set_write_low(&c->io, 0);
	io_set_read_high(&c->io, 0);
	io_read_on(&c->io, true);
	/* an HTTP/2 stream has no FIN to wait for: its end is the stream's */
	if ((c->client_eof || c->io.h2s) && evbuffer_get_length(io_out(&c->io)) == 0) {
		conn_free(c);
		return;
	}
	evbuffer_drain(io_in(&c->io), evbuffer_get_length(io_in(&c->io)));
	if (evbuffer_get_length(io_out(&c->io)) == 0 && !c->tls)
		io_shutdown_wr(&c->io);
}

/* Account and log the request that just ended; release its backend. */
static void conn_finish_request(struct conn *c)
{
	struct worker *w = c->w;
	const struct proxy_settings *ps = worker_settings(w);
	if (!c->req_active)
		return;
	c->req_active = false;
	if (c->status >= 100 && c->status < 600)
		STAT_ADD(w, responses[c->status / 100], 1);
	STAT_ADD(w, bytes_in, c->bytes_in);
	STAT_ADD(w, bytes_out, c->bytes_out);
	if (c->status == 0)
		c->status = 499;         /* client went away before an answer */
	uint64_t now = worker_now_us(w);
	worker_count_request(w, c->rslot, c->status, now >= c->start_us ? now - c->start_us : 0);
	conn_log(c, ps);
	if (c->be) {
		atomic_fetch_sub_explicit(&c->be->inflight, 1, memory_order_relaxed);
		backend_unref(c->be);
		c->be = NULL;
		STAT_ADD(w, inflight, -1);
	}
}

/* The response to the current request is complete in the client output. */
static void conn_next(struct conn *c)
{
	conn_finish_request(c);
	conn_drop_head(c);
	/* stopping: a response whose head went out before did not say
	 * Connection: close, so the client may still send on it (the next
	 * answer says it; see conn_close_idle) */
	if (c->close_after || (c->client_eof && evbuffer_get_length(io_in(&c->io)) == 0)) {
		conn_linger(c);
		return;
	}
	const struct proxy_settings *ps = worker_settings(c->w);
	c->state = CS_HEAD;
	c->resumed = false;
	c->retried = false;
	if (c->client_paused) {
		c->client_paused = false;
		io_read_on(&c->io, true);
	}
	if (evbuffer_get_length(io_in(&c->io)) == 0) {
		timer_set(c, T_IDLE, c->w->stopping && ps->idle_timeout_ms > STOP_IDLE_MS ? STOP_IDLE_MS
			: ps->idle_timeout_ms);
		return;
	}
	timer_set(c, T_HEADER, ps->client_header_timeout_ms);
	if (!c->in_head_loop)
		conn_try_head(c);
}

/* The head of an answer from pmd itself, with Content-Length blen (none on
 * a 304). `extra` are complete header lines. The body, if any, follows. */
static void conn_head(struct conn *c, int status, const char *extra, const char *ctype,
	uint64_t blen, bool close)
{
	const struct proxy_settings *ps = worker_settings(c->w);
	struct evbuffer *out = io_out(&c->io);
	if (c->rq.kind != HTTP_BODY_NONE && !c->rq.done)
		close = true;            /* its body was not read */
	if (!c->keep_alive || c->w->stopping)
		close = true;
	c->close_after = c->close_after || close;
	char head[1536], clen[48] = "";
	if (status != 304)
		snprintf(clen, sizeof(clen), "Content-Length: %" PRIu64 "\r\n", blen);
	int n = snprintf(head, sizeof(head),
		"HTTP/1.1 %d %s\r\nContent-Type: %s\r\n%s%s%s%s%s%s\r\n",
		status, http_reason(status), ctype ? ctype : "text/plain; charset=utf-8", clen,
		extra ? extra : "",
		(c->tls && ps->hsts) ? "Strict-Transport-Security: " : "",
		(c->tls && ps->hsts) ? ps->hsts : "",
		(c->tls && ps->hsts) ? "\r\n" : "",
		c->close_after ? "Connection: close\r\n" : (c->minor0 ? "Connection: keep-alive\r\n" : ""));
	if (n < 0 || (size_t)n >= sizeof(head))
		n = snprintf(head, sizeof(head), "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
	evbuffer_add(out, head, (size_t)n);
	c->bytes_out += (uint64_t)n;
	c->status = status;
	if (c->up) {
		upstream_free(c->up);
		c->up = NULL;
	}
}

/* Answer the current request from pmd itself. `extra` are complete header
 * lines; body may be NULL. HEAD gets the headers only. */
static void conn_local(struct conn *c, int status, const char *extra, const char *ctype,
	const char *body, size_t blen, bool close)
{
	conn_head(c, status, extra, ctype, blen, close);
	if (body && blen && !c->is_head) {
		evbuffer_add(io_out(&c->io), body, blen);
		c->bytes_out += blen;
	}
	conn_next(c);
}

/* A short error answer saying which error: "502 Bad Gateway: why". */
static void conn_error(struct conn *c, int status, const char *why, bool close)
{
	char body[256];
	int n = snprintf(body, sizeof(body), "%d %s: %s\n", status, http_reason(status), why);
	if (n < 0 || (size_t)n >= sizeof(body))
		n = (int)sizeof(body) - 1;
	if (status == 502 || status == 504)
		STAT_ADD(c->w, upstream_errors, 1);
	conn_local(c, status, status == 503 ? "Retry-After: 1\r\n" : NULL, NULL, body, (size_t)n, close);
}

/* Request head rewriting -------------------------------------------------- */

/* The origin-form part of a request target (absolute-form -> path?query). */
static void origin_form(const char *t, size_t n, const char **out, size_t *outn)
{
	if (n && (t[0] == '/' || t[0] == '*')) {
		*out = t;
		*outn = n;
		return;
	}
	const char *s = memmem(t, n, "://", 3);
	const char *p = s ? memchr(s + 3, '/', n - (size_t)(s + 3 - t)) : NULL;
	if (!p) {
		const char *q = s ? memchr(s + 3, '?', n - (size_t)(s + 3 - t)) : NULL;
		if (q) {   /* "http://h?x" has the path "/" */
			*out = q;
			*outn = n - (size_t)(q - t);
			return;
		}
		*out = "/";
		*outn = 1;
		return;
	}
	*out = p;
	*outn = n - (size_t)(p - t);
}

/* Write the request head for the upstream into `out` in one reserved run. */
static int emit_request_head(struct conn *c, const struct http_request *req, struct evbuffer *out)
{
	size_t cap = c->head_len + req->host_len + 600 + strlen(c->ip);
	struct evbuffer_iovec v;
	if (evbuffer_reserve_space(out, (ev_ssize_t)cap, &v, 1) < 1)
		return -1;
	struct wb b = { v.iov_base, 0, cap, false };
	struct ctokens ct = { .n = 0 };
	const char *tg;
	size_t tgn;
	bool seen_xff = false, seen_host = false;

	origin_form(req->target, req->target_len, &tg, &tgn);
	wb_put(&b, req->method, req->method_len);
	WB_LIT(&b, " ");
	if (tg[0] == '?')
		WB_LIT(&b, "/");
	wb_put(&b, tg, tgn);
	WB_LIT(&b, " HTTP/1.1\r\n");
	ctokens_collect(&ct, req->headers, req->n_headers);
	for (size_t i = 0; i < req->n_headers; i++) {
		const struct http_header *h = &req->headers[i];
		switch (hdr_class(h->name, h->name_len)) {
		case H_HOP:
		case H_XFP:
		case H_XFH:
		case H_XRID:
			continue;
		case H_XFF:
			seen_xff = true;
			continue;
		case H_UPGRADE:
			if (!c->upgrade)
				continue;
			break;
		case H_EXPECT:
			if (req->expect_continue)
				continue;
			break;
		case H_HOST:
			seen_host = true;
			break;
		default:
			if (ct.n && ctokens_has(&ct, h->name, h->name_len))
				continue;
			break;
		}
		wb_put(&b, h->name, h->name_len);
		WB_LIT(&b, ": ");
		wb_put(&b, h->value, h->value_len);
		WB_LIT(&b, "\r\n");
	}
	if (!seen_host && req->host_len) {
		WB_LIT(&b, "Host: ");
		wb_put(&b, req->host, req->host_len);
		WB_LIT(&b, "\r\n");
	}
	WB_LIT(&b, "X-Forwarded-For: ");
	if (seen_xff)
		for (size_t i = 0; i < req->n_headers; i++) {
			const struct http_header *h = &req->headers[i];
			if (h->name_len == 15 && hdr_class(h->name, 15) == H_XFF && h->value_len) {
				wb_put(&b, h->value, h->value_len);
				WB_LIT(&b, ", ");
			}
		}
	wb_put(&b, c->ip, strlen(c->ip));
	if (c->tls)
		WB_LIT(&b, "\r\nX-Forwarded-Proto: https\r\n");
	else
		WB_LIT(&b, "\r\nX-Forwarded-Proto: http\r\n");
	if (req->host_len) {
		WB_LIT(&b, "X-Forwarded-Host: ");
		wb_put(&b, req->host, req->host_len);
		WB_LIT(&b, "\r\n");
	}
	WB_LIT(&b, "X-Request-Id: ");
	wb_put(&b, c->rid, strlen(c->rid));
	WB_LIT(&b, "\r\n");
	if (req->body == HTTP_BODY_CHUNKED)
		WB_LIT(&b, "Transfer-Encoding: chunked\r\n");
	if (c->upgrade)
		WB_LIT(&b, "Connection: upgrade\r\n\r\n");
	else
		WB_LIT(&b, "Connection: keep-alive\r\n\r\n");
	if (b.over)
		return -1;
	v.iov_len = b.n;
	return evbuffer_commit_space(out, &v, 1);
}

/* Response head for the client; sets c->rs framing and close_after. */
static int emit_response_head(struct conn *c, const struct http_response *res, struct evbuffer *out)
{
	const struct proxy_settings *ps = worker_settings(c->w);
	size_t hsts_len = (c->tls && ps->hsts) ? strlen(ps->hsts) : 0;
	size_t rawlen = 64 + res->reason_len;
	for (size_t i = 0; i < res->n_headers; i++)
		rawlen += res->headers[i].name_len + res->headers[i].value_len + 4;
	size_t cap = rawlen + hsts_len + 160;
	struct evbuffer_iovec v;
	if (evbuffer_reserve_space(out, (ev_ssize_t)cap, &v, 1) < 1)
		return -1;
	struct wb b = { v.iov_base, 0, cap, false };
	struct ctokens ct;
	bool info = res->status_code < 200;
	bool tunnel = res->status_code == 101;

	WB_LIT(&b, "HTTP/1.1 ");
	wb_u64(&b, (uint64_t)res->status_code);
	WB_LIT(&b, " ");
	wb_put(&b, res->reason, res->reason_len);
	WB_LIT(&b, "\r\n");
	ctokens_collect(&ct, res->headers, res->n_headers);
	for (size_t i = 0; i < res->n_headers; i++) {
		const struct http_header *h = &res->headers[i];
		switch (hdr_class(h->name, h->name_len)) {
		case H_HOP:
			continue;
		case H_UPGRADE:
			if (!tunnel)
				continue;
			break;
		case H_HSTS:
			if (hsts_len)
				continue;
			break;
		default:
			if (ct.n && ctokens_has(&ct, h->name, h->name_len))
				continue;
			break;
		}
		wb_put(&b, h->name, h->name_len);
		WB_LIT(&b, ": ");
		wb_put(&b, h->value, h->value_len);
		WB_LIT(&b, "\r\n");
	}
	if (hsts_len && !info) {
		WB_LIT(&b, "Strict-Transport-Security: ");
		wb_put(&b, ps->hsts, hsts_len);
		WB_LIT(&b, "\r\n");
	}
	if (tunnel) {
		WB_LIT(&b, "Connection: upgrade\r\n");
	} else if (!info) {
		if (c->rs.out_chunked)
			WB_LIT(&b, "Transfer-Encoding: chunked\r\n");
		if (c->w->stopping)
			c->close_after = true;   /* said now, so the client does not reuse it */
		if (c->close_after)
			WB_LIT(&b, "Connection: close\r\n");
		else if (c->minor0)
			WB_LIT(&b, "Connection: keep-alive\r\n");
	}
	WB_LIT(&b, "\r\n");
	if (b.over)
		return -1;
	v.iov_len = b.n;
	c->bytes_out += b.n;
	return evbuffer_commit_space(out, &v, 1);
}

/* Bodies ------------------------------------------------------------------- */

void body_init(struct body *bd, enum http_body kind, uint64_t len, uint64_t max_body, bool out_chunked)
{
	bd->kind = kind;
	bd->out_chunked = out_chunked;
	bd->remaining = len;
	bd->done = kind == HTTP_BODY_NONE || (kind == HTTP_BODY_LENGTH && len == 0);
	if (kind == HTTP_BODY_CHUNKED)
		http_chunked_init(&bd->ck, max_body);
}

static void chunk_out(struct evbuffer *src, struct evbuffer *dst, size_t n, bool framed)
{
	if (framed) {
		char sz[20];
		int k = snprintf(sz, sizeof(sz), "%zx\r\n", n);
		evbuffer_add(dst, sz, (size_t)k);
	}
	evbuffer_remove_buffer(src, dst, n);
	if (framed)
		evbuffer_add(dst, "\r\n", 2);
}

/* Move what is available of a body from src to dst. Returns bytes written
 * to dst (for accounting) or -1 on malformed chunking (-2 when too large).
 * Sets bd->done at the end of the body. */
int64_t body_move(struct body *bd, struct evbuffer *src, struct evbuffer *dst)
{
	size_t avail = evbuffer_get_length(src);
	int64_t moved = 0;
	if (bd->done || avail == 0)
		return 0;
	switch (bd->kind) {
	case HTTP_BODY_LENGTH: {
		size_t n = avail < bd->remaining ? avail : (size_t)bd->remaining;
		if (bd->out_chunked) {
			chunk_out(src, dst, n, true);
		} else {
			evbuffer_remove_buffer(src, dst, n);
		}
		bd->remaining -= n;
		bd->done = bd->remaining == 0;
		if (bd->done && bd->out_chunked)
			evbuffer_add(dst, "0\r\n\r\n", 5);
		return (int64_t)n;
	}
	case HTTP_BODY_CLOSE:
		if (bd->out_chunked)
			chunk_out(src, dst, avail, true);
		else
			evbuffer_remove_buffer(src, dst, avail);
		return (int64_t)avail;
	case HTTP_BODY_CHUNKED:
		for (;;) {
			avail = evbuffer_get_length(src);
			int is_data = 0, r;
			if (http_chunked_in_data(&bd->ck)) {
				if (!avail)
					break;
				r = http_chunked_step(&bd->ck, NULL, avail, &is_data);
			} else {
				size_t win = avail < FRAMING_WINDOW ? avail : FRAMING_WINDOW;
				const char *p = win ? (const char *)evbuffer_pullup(src, (ev_ssize_t)win) : "";
				r = http_chunked_step(&bd->ck, p, win, &is_data);
				if (r == -2 && win == FRAMING_WINDOW)
					return -1;
			}
			if (r == -2)
				break;
			if (r < 0)
				return bd->ck.too_large ? -2 : -1;
			if (r == 0) {
				bd->done = true;
				if (bd->out_chunked)
					evbuffer_add(dst, "0\r\n\r\n", 5);
				break;
			}
			if (is_data) {
				chunk_out(src, dst, (size_t)r, bd->out_chunked);
				moved += r;
			} else {
				evbuffer_drain(src, (size_t)r);
			}
		}
		return moved;
	default:
		bd->done = true;
		return 0;
	}
}

/* Routing and forwarding ------------------------------------------------- */

static bool method_idempotent(const char *m, size_t n)
{
	return (n == 3 && (memcmp(m, "GET", 3) == 0 || memcmp(m, "PUT", 3) == 0)) ||
		(n == 4 && memcmp(m, "HEAD", 4) == 0) ||
		(n == 6 && memcmp(m, "DELETE", 6) == 0) ||
		(n == 7 && memcmp(m, "OPTIONS", 7) == 0) ||
		(n == 5 && memcmp(m, "TRACE", 5) == 0);
}

static void request_body_pump(struct conn *c);

/* Send the parsed request to `be`: on a pooled connection when allowed,
 * else a fresh one. Answers 502 itself when no connection can be started. */
static void conn_forward(struct conn *c, const struct http_request *req, struct backend *be, bool allow_pool)
{
	struct worker *w = c->w;
	const struct proxy_settings *ps = worker_settings(w);
	struct upstream *u = allow_pool ? pool_get(w, be) : NULL;
	if (!c->be) {
		c->be = backend_ref(be);
		atomic_fetch_add_explicit(&be->inflight, 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&be->requests, 1, memory_order_relaxed);
		STAT_ADD(w, inflight, 1);
	}
	if (!u && !(u = upstream_connect(w, be))) {
		bool refused = errno == ECONNREFUSED;
		c->state = CS_PROXY;
		conn_error(c, 502, refused ? "upstream backend refused the connection"
			: "cannot connect to the upstream backend", false);
		return;
	}
	upstream_attach(c, u);
	c->state = CS_PROXY;
	c->res_head_done = c->res_started = false;
	if (emit_request_head(c, req, io_out(&u->io)) < 0) {
		conn_error(c, 500, "cannot rewrite the request head", true);
		return;
	}
	if (req->body == HTTP_BODY_NONE) {
		c->req_done = true;
	} else {
		conn_drop_head(c);
		c->req_done = false;
		if (req->expect_continue && !c->minor0 &&
		    evbuffer_get_length(io_in(&c->io)) == 0)
			evbuffer_add(io_out(&c->io), "HTTP/1.1 100 Continue\r\n\r\n", 25);
	}
	c->client_paused = false;
	io_read_on(&c->io, true);
	if (!u->connected)
		timer_set(c, T_CONNECT, ps->upstream_connect_timeout_ms);
	else if (c->req_done)
		timer_set(c, T_RESPONSE, ps->upstream_response_timeout_ms);
	else
		timer_activity(c, ps->idle_timeout_ms);
	if (!c->req_done)
		request_body_pump(c);
}

static void conn_hold(struct conn *c, const struct proxy_settings *ps)
{
	c->state = CS_HELD;
	c->client_paused = true;
	io_read_on(&c->io, false);
	if (!c->held_linked) {
		c->hnext = c->w->held;
		c->hprev = NULL;
		if (c->w->held)
			c->w->held->hprev = c;
		c->w->held = c;
		c->held_linked = true;
	}
	if (!c->resumed) {           /* a retry keeps the first deadline */
		STAT_ADD(c->w, held, 1);
		timer_set(c, T_HOLD, ps->hold_timeout_ms);
	}
}

static void copy_trunc(char *dst, size_t cap, const char *s, size_t n)
{
	if (n >= cap) {
		memcpy(dst, s, cap - 4);
		memcpy(dst + cap - 4, "...", 4);
		return;
	}
	memcpy(dst, s, n);
	dst[n] = '\0';
}

static void conn_redirect(struct conn *c, const struct http_request *req)
{
	struct proxy *p = c->w->p;
	size_t hl = req->host_len;
	const char *h = req->host;
	/* strip a port: "host:8080", "[::1]:8080" */
	for (size_t i = hl; i > 0; i--) {
		if (h[i - 1] == ':') {
			hl = i - 1;
			break;
		}
		if (h[i - 1] == ']' || !(h[i - 1] >= '0' && h[i - 1] <= '9'))
			break;
	}
	const char *tg;
	size_t tgn;
	origin_form(req->target, req->target_len, &tg, &tgn);
	char port[16] = "";
	if (p->https_port != 443)
		snprintf(port, sizeof(port), ":%d", p->https_port);
	size_t cap = hl + tgn + 64;
	char *loc = malloc(cap);
	if (!loc) {
		conn_error(c, 500, "out of memory", true);
		return;
	}
	int n = snprintf(loc, cap, "Location: https://%.*s%s%.*s\r\n", (int)hl, h, port, (int)tgn, tg);
	static const char body[] = "308 Permanent Redirect: use https\n";
	conn_local(c, 308, n > 0 ? loc : NULL, NULL, body, sizeof(body) - 1, false);
	free(loc);
}

/* "/admin" when the route is "/admin/": 308 to "/admin/" (query kept), a
 * relative Location so that scheme and host stay what the client used. */
static void conn_slash_redirect(struct conn *c, const struct http_request *req)
{
	const char *tg, *q;
	size_t tgn, cap;
	origin_form(req->target, req->target_len, &tg, &tgn);
	q = memchr(tg, '?', tgn);
	cap = req->path_len + (q ? tgn - (size_t)(q - tg) : 0) + 32;
	char *loc = malloc(cap);
	if (!loc) {
		conn_error(c, 500, "out of memory", true);
		return;
	}
	int n = snprintf(loc, cap, "Location: %.*s/%.*s\r\n", (int)req->path_len, req->path,
			 q ? (int)(tgn - (size_t)(q - tg)) : 0, q ? q : "");
	static const char body[] = "308 Permanent Redirect: the route ends in /\n";
	conn_local(c, 308, n > 0 ? loc : NULL, NULL, body, sizeof(body) - 1, false);
	free(loc);
}

/* Queue the next piece of a file body: file segments (sendfile) on plain
 * sockets, bounded reads on TLS and HTTP/2, up to out_high in the output;
 * the client's write callback (its low watermark) asks for more. The
 * request ends once the last byte is queued and the output is down to the
 * low watermark, so a slow reader is timed by its progress (fmark,
 * T_ACTIVITY) and not by idle_timeout between requests. */
static void file_pump(struct conn *c)
{
	struct evbuffer *out = io_out(&c->io);
	size_t have = evbuffer_get_length(out);
	while (c->fbody.left && have < c->out_high) {
		int64_t n = c->io.sendfile ? static_body_segment(&c->fbody, out, FILE_SEGMENT)
			: static_body_read(&c->fbody, out, FILE_READ);
		if (n <= 0) {
			log_warn("static file read failed request_id=%s error=%s", c->rid, log_q(strerror(errno)));
			conn_linger(c);      /* short of Content-Length: the client can tell */
			return;
		}
		c->bytes_out += (uint64_t)n;
		have += (size_t)n;
	}
	c->fmark = have;
	c->last_ms = worker_now_ms(c->w);
	if (c->fbody.left == 0) {
		static_body_release(&c->fbody);   /* queued segments hold the file */
		if (have <= c->io.wr_low)
			conn_next(c);
	}
}

/* [static] st answers req, or (0) a folder with fallback = route has no
 * such file and the request goes on to the routes. */
static bool conn_static(struct conn *c, const struct http_request *req, const struct snap_static *st)
{
	struct static_req rq = { req->method, req->method_len, req->path, req->path_len,
		req->headers, req->n_headers };
	struct static_reply r;
	char extra[STATIC_MAX_HDRS * 100];
	if (!static_serve(c->w->sc, c->w->snap, st, &rq, &r))
		return false;
	if (static_reply_lines(&r, extra, sizeof(extra)) < 0)
		extra[0] = '\0';        /* cannot happen: the values are bounded */
	if (!r.body.f) {             /* HEAD, 304, errors, empty files */
		conn_local(c, r.status, extra, r.content_type, r.text, (size_t)r.length, false);
		return true;
	}
	conn_head(c, r.status, extra, r.content_type, r.length, false);
	c->fbody = r.body;
	c->state = CS_FILE;
	io_sendfile(&c->io);
	timer_activity(c, worker_settings(c->w)->idle_timeout_ms);
	file_pump(c);
	return true;
}

/* [proxy] lb_health_path, asked by a load balancer in front of several
 * pmds: 503 while draining (pmctl drain) or while a service has no live
 * instance (its requests would be held), else 200. Any host, GET or HEAD;
 * never cached. */
static void conn_lb_health(struct conn *c, const struct http_request *req, const struct snapshot *s,
	const struct proxy_settings *ps)
{
	static const char nocache[] = "Cache-Control: no-store\r\n";
	if (!(req->method_len == 3 && memcmp(req->method, "GET", 3) == 0) && !c->is_head) {
		static const char body[] = "405 Method Not Allowed: health check, use GET or HEAD\n";
		conn_local(c, 405, "Allow: GET, HEAD\r\n", NULL, body, sizeof(body) - 1, false);
		return;
	}
	if (ps->lb_draining) {
		static const char body[] = "draining\n";
		conn_local(c, 503, nocache, "text/plain", body, sizeof(body) - 1, false);
		return;
	}
	for (size_t i = 0; i < s->n_services; i++) {
		if (s->services[i].n_live == 0) {
			char body[128];
			int n = snprintf(body, sizeof(body), "no live instance of %s\n", s->services[i].name);
			conn_local(c, 503, nocache, "text/plain", body, n > 0 ? strlen(body) : 0, false);
			return;
		}
	}
	static const char body[] = "ok\n";
	conn_local(c, 200, nocache, "text/plain", body, sizeof(body) - 1, false);
}

/* A complete request head is at the start of the client input (`req` was
 * parsed from it just now). Route it and answer or forward it. */
static void conn_request(struct conn *c, const struct http_request *req)
{
	struct worker *w = c->w;
	if (!c->resumed) {
		worker_refresh_snapshot(w);
		STAT_ADD(w, requests_total, 1);
		if (c->tls && ++c->tls_busy == 2)
			io_keep_buffers(&c->io, true);   /* a keep-alive client at work */
		c->req_active = true;
		c->start_us = worker_now_us(w);
		c->rslot = 0;
		c->bytes_in = c->head_len;
		c->bytes_out = 0;
		c->status = 0;
		c->reason = NULL;
		c->route_idle_ms = 0;
		copy_trunc(c->method, sizeof(c->method), req->method, req->method_len);
		copy_trunc(c->target, sizeof(c->target), req->target, req->target_len);
		const struct http_header *xr = http_find_header(req->headers, req->n_headers, "x-request-id");
		if (xr && rid_sane(xr->value, xr->value_len)) {
			memcpy(c->rid, xr->value, xr->value_len);
			c->rid[xr->value_len] = '\0';
		} else {
			rid_generate(w, c->rid);
		}
	}
	const struct proxy_settings *ps = worker_settings(w);
	const struct snapshot *s = w->snap;
	c->head_kept = true;
	c->req_done = false;
	c->close_after = false;
	c->is_head = req->is_head;
	c->keep_alive = req->keep_alive;
	c->minor0 = req->minor_version == 0;
	c->upgrade = req->upgrade;
	c->idempotent = method_idempotent(req->method, req->method_len);
	body_init(&c->rq, req->body, req->content_length, ps->max_body_bytes, req->body == HTTP_BODY_CHUNKED);
	body_init(&c->rs, HTTP_BODY_NONE, 0, 0, false);

	if (!s) {                    /* nothing published yet: wait for it */
		conn_hold(c, ps);
		return;
	}
	if (req->path_len >= sizeof(ACME_PREFIX) - 1 &&
	    memcmp(req->path, ACME_PREFIX, sizeof(ACME_PREFIX) - 1) == 0) {
		const char *tok = req->path + sizeof(ACME_PREFIX) - 1;
		size_t tl = req->path_len - (sizeof(ACME_PREFIX) - 1);
		const struct snap_challenge *ch = snapshot_challenge(s, tok, tl);
		if (ch) {
			conn_local(c, 200, NULL, "text/plain", ch->key_authorization,
				strlen(ch->key_authorization), false);
		} else {
			static const char body[] = "404 Not Found: unknown ACME challenge token\n";
			conn_local(c, 404, NULL, NULL, body, sizeof(body) - 1, false);
		}
		return;
	}
	if (ps->lb_health_path[0] && req->path_len == strlen(ps->lb_health_path) &&
	    memcmp(req->path, ps->lb_health_path, req->path_len) == 0) {
		conn_lb_health(c, req, s, ps);
		return;
	}
	if (!c->tls && ps->redirect_https && s->tls_ctx && w->p->have_https) {
		conn_redirect(c, req);
		return;
	}
	const struct snap_static *st = snapshot_static(s, req->path, req->path_len);
	const struct snap_route *rt = snapshot_route(s, req->host, req->host_len, req->path, req->path_len);
	/* "/admin" with a route "/admin/" and nothing matching it as long */
	if (!(st && (st->file || st->path_len >= req->path_len)) && (!rt || rt->prefix_len < req->path_len) &&
	    snapshot_route_slash(s, req->host, req->host_len, req->path, req->path_len)) {
		conn_slash_redirect(c, req);
		return;
	}
	/* a folder yields to a route with a longer prefix */
	if (st && (st->file || !rt || rt->prefix_len <= st->path_len) && conn_static(c, req, st))
		return;
	if (!rt || rt->service < 0 || (size_t)rt->service >= s->n_services) {
		static const char body[] = "404 Not Found: no route for this host and path\n";
		conn_local(c, 404, NULL, NULL, body, sizeof(body) - 1, false);
		return;
	}
	c->rslot = worker_route_slot(w, (size_t)(rt - s->routes));
	c->route_idle_ms = rt->upstream_idle_timeout_ms;
	const struct snap_service *svc = &s->services[rt->service];
	struct backend *be = pick_backend(w, svc);
	if (!be) {
		conn_hold(c, ps);
		return;
	}
	held_unlink(c);
	conn_forward(c, req, be, true);
}

/* Parse as many request heads as the client input holds, one at a time:
 * the next is looked at only once the current response is complete. */
static void conn_try_head(struct conn *c)
{
	struct worker *w = c->w;
	struct evbuffer *in = io_in(&c->io);
	c->in_head_loop = true;
	while (c->state == CS_HEAD) {
		size_t len = evbuffer_get_length(in);
		if (len == 0)
			break;
		const struct proxy_settings *ps = worker_settings(w);
		if (c->tkind == T_IDLE)
			timer_set(c, T_HEADER, ps->client_header_timeout_ms);
		size_t maxh = (size_t)ps->max_header_bytes;
		size_t n = len < maxh + 1 ? len : maxh + 1;
		const char *buf = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
		int r = http_parse_request(buf, n, maxh, ps->max_body_bytes, &w->req);
		if (r == -2 && n <= maxh)
			break;
		if (r <= 0) {
			conn_begin_error_request(c, len);
			held_unlink(c);
			int st = r == -2 ? 431 : w->req.status ? w->req.status : 400;
			conn_error(c, st, r == -2 ? "request head too large"
				: w->req.error ? w->req.error : "malformed request", true);
			break;
		}
		c->head_len = (uint32_t)r;
		conn_request(c, &w->req);
	}
	c->in_head_loop = false;
}

/* Re-parse the head kept in the client input (after a hold or for a retry).
 * Returns the request or NULL (then the connection has been answered). */
static const struct http_request *conn_reparse(struct conn *c)
{
	struct worker *w = c->w;
	const struct proxy_settings *ps = worker_settings(w);
	struct evbuffer *in = io_in(&c->io);
	const char *buf = (const char *)evbuffer_pullup(in, c->head_len);
	if (!buf || http_parse_request(buf, c->head_len, c->head_len + 1 > ps->max_header_bytes ?
			c->head_len + 1 : (size_t)ps->max_header_bytes,
			ps->max_body_bytes, &w->req) != (int)c->head_len) {
		conn_error(c, 500, "lost the request head", true);
		return NULL;
	}
	return &w->req;
}

/* Client -> upstream body. */
static void request_body_pump(struct conn *c)
{
	struct evbuffer *in = io_in(&c->io);
	struct evbuffer *out = io_out(&c->up->io);
	size_t before = evbuffer_get_length(in);
	int64_t r = body_move(&c->rq, in, out);
	c->bytes_in += before - evbuffer_get_length(in);
	c->last_ms = worker_now_ms(c->w);
	if (r < 0) {
		if (c->res_head_done) {
			conn_linger(c);
			return;
		}
		if (r == -2)
			conn_error(c, 413, "request body larger than max_body_bytes", true);
		else
			conn_error(c, 400, "malformed chunked request body", true);
		return;
	}
	if (c->rq.done) {
		c->req_done = true;
		if (c->res_head_done && c->rs.done) {
			return;
		}
		if (!c->res_head_done && c->up->connected)
			timer_set(c, T_RESPONSE, worker_settings(c->w)->upstream_response_timeout_ms);
		return;
	}
	if (evbuffer_get_length(out) > HIGH_WATER && !c->client_paused) {
		c->client_paused = true;
		io_read_on(&c->io, false);
	}
}

/* Response done: back to the pool or closed, then the next request. */
static void conn_response_done(struct conn *c)
{
	if (!c->req_done) {          /* answered before the body was sent */
		c->close_after = true;
		conn_release_upstream(c, false);
	} else {
		conn_release_upstream(c, c->up_reusable);
	}
	conn_next(c);
}

/* The response cannot be completed after its head went to the client:
 * end the client connection so that the client can tell. With
 * Content-Length or chunked framing a close before the end says so; a
 * body that ends with the connection (read-until-close, or chunked passed
 * un-framed to an HTTP/1.0 client) would look complete after a clean
 * close, so that connection is reset instead. */
static void conn_cut(struct conn *c)
{
	if (c->rs.out_chunked || c->rs.kind == HTTP_BODY_LENGTH) {
		conn_linger(c);
		return;
	}
	io_reset_on_close(&c->io);
	conn_free(c);
}

/* The request's instance was told to stop at the end of a swap's drain
 * (drain_over) and did not finish it: pmd's decision, logged and counted
 * as such (reason=drain_timeout). */
static bool conn_drain_cut(struct conn *c)
{
	if (!c->be || !atomic_load_explicit(&c->be->drain_over, memory_order_relaxed))
		return false;
	c->reason = "drain_timeout";
	STAT_ADD(c->w, drain_timeouts, 1);
	return true;
}

static void conn_upstream_fail(struct conn *c, int status, const char *why)
{
	bool drained = conn_drain_cut(c);
	if (c->res_head_done) {      /* too late for an answer: cut it */
		if (!drained)
			STAT_ADD(c->w, upstream_errors, 1);
		conn_cut(c);
		return;
	}
	if (drained) {
		status = 503;
		why = "the instance was stopped at the end of its drain (drain_timeout)";
	}
	conn_error(c, status, why, !c->req_done);
}

/* Upstream -> client body. */
static void response_body_pump(struct conn *c)
{
	struct evbuffer *in = io_in(&c->up->io);
	struct evbuffer *out = io_out(&c->io);
	size_t before = evbuffer_get_length(out);
	int64_t r = body_move(&c->rs, in, out);
	c->bytes_out += evbuffer_get_length(out) - before;
	c->last_ms = worker_now_ms(c->w);
	if (r < 0) {
		log_warn("upstream sent a malformed chunked body upstream=%s request_id=%s",
			c->be ? c->be->addr_text : "-", c->rid);
		conn_upstream_fail(c, 502, "upstream sent a malformed body");
		return;
	}
	if (c->rs.done) {
		conn_response_done(c);
		return;
	}
	if (evbuffer_get_length(out) > c->out_high && !c->up_paused) {
		c->up_paused = true;
		io_read_on(&c->up->io, false);
	}
}

/* Tunnel: whatever arrived on either side goes to the other. */
static void tunnel_pump(struct conn *c)
{
	struct evbuffer *cin = io_in(&c->io), *cout = io_out(&c->io);
	struct evbuffer *uin = io_in(&c->up->io), *uout = io_out(&c->up->io);
	size_t a = evbuffer_get_length(cin), b = evbuffer_get_length(uin);
	if (a) {
		evbuffer_add_buffer(uout, cin);
		c->bytes_in += a;
	}
	if (b) {
		evbuffer_add_buffer(cout, uin);
		c->bytes_out += b;
	}
	c->last_ms = worker_now_ms(c->w);
	if (evbuffer_get_length(uout) > HIGH_WATER && !c->client_paused) {
		c->client_paused = true;
		io_read_on(&c->io, false);
	}
	if (evbuffer_get_length(cout) > HIGH_WATER && !c->up_paused) {
		c->up_paused = true;
		io_read_on(&c->up->io, false);
	}
}

/* WebSocket close frames (RFC 6455 5.5.1) with `code` (1012 "service
 * restart": the instance drains; 1001 "going away": pmd stops): unmasked
 * towards the client, masked towards the upstream. */
static void tunnel_close(struct conn *c, unsigned code)
{
	unsigned char hi = (unsigned char)(code >> 8), lo = (unsigned char)code;
	const unsigned char to_client[4] = { 0x88, 0x02, hi, lo };
	evbuffer_add(io_out(&c->io), to_client, sizeof(to_client));
	if (c->up) {
		uint64_t r = worker_random(c->w);
		unsigned char m[4] = { (unsigned char)r, (unsigned char)(r >> 8),
			(unsigned char)(r >> 16), (unsigned char)(r >> 24) };
		unsigned char to_up[8] = { 0x88, 0x82, m[0], m[1], m[2], m[3],
			(unsigned char)(hi ^ m[0]), (unsigned char)(lo ^ m[1]) };
		evbuffer_add(io_out(&c->up->io), to_up, sizeof(to_up));
		upstream_retire(c->up);
		c->up = NULL;
	}
	conn_linger(c);
}

static void up_read(struct io *io, void *arg)
{
	struct upstream *u = arg;
	struct conn *c = u->c;
	if (!c)
		return;
	if (c->state == CS_TUNNEL) {
		tunnel_pump(c);
		return;
	}
	if (c->state != CS_PROXY)
		return;
	struct worker *w = c->w;
	struct evbuffer *in = io_in(io);
	struct evbuffer *out = io_out(&c->io);
	c->res_started = true;
	while (!c->res_head_done) {
		size_t len = evbuffer_get_length(in);
		if (!len)
			return;
		size_t n = len < RES_MAX_HEAD ? len : RES_MAX_HEAD;
		const char *buf = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
		int r = http_parse_response(buf, n, RES_MAX_HEAD, c->is_head, &w->res);
		if (r == -2 && n < RES_MAX_HEAD)
			return;
		if (r <= 0) {
			log_warn("upstream sent a malformed response upstream=%s error=%s request_id=%s",
				c->be ? c->be->addr_text : "-",
				log_q(r == -2 ? "head too large" : w->res.error ? w->res.error : "malformed"), c->rid);
			conn_upstream_fail(c, 502, "upstream sent a malformed response");
			return;
		}
		conn_drop_head(c);       /* an answer started: no retry any more */
		const struct http_response *res = &w->res;
		if (res->status_code == 101) {
			if (!c->upgrade) {
				conn_upstream_fail(c, 502, "upstream switched protocols without an Upgrade request");
				return;
			}
			c->status = 101;
			emit_response_head(c, res, out);
			evbuffer_drain(in, (size_t)r);
			tunnel_enter(c);
			c->res_head_done = true;
			timer_activity(c, worker_settings(w)->idle_timeout_ms);
			io_set_read_high(&c->io, 0);
			if (!c->client_paused)
				io_read_on(&c->io, true);
			tunnel_pump(c);
			return;
		}
		if (res->status_code < 200) {
			if (!c->minor0)
				emit_response_head(c, res, out);
			evbuffer_drain(in, (size_t)r);
			continue;
		}
		c->status = res->status_code;
		c->res_head_done = true;
		c->up_reusable = res->keep_alive && res->body != HTTP_BODY_CLOSE;
		bool chunked_out = false;
		if (res->body == HTTP_BODY_CHUNKED) {
			if (c->minor0)
				c->close_after = true;
			else
				chunked_out = true;
		}
		if (res->body == HTTP_BODY_CLOSE || !c->keep_alive || !c->req_done)
			c->close_after = true;
		body_init(&c->rs, res->body, res->content_length, 0, chunked_out);
		if (emit_response_head(c, res, out) < 0) {
			c->res_head_done = false;
			conn_upstream_fail(c, 502, "upstream response head too large to rewrite");
			return;
		}
		evbuffer_drain(in, (size_t)r);
		/* the response timeout ended with the head; the body may pause */
		uint64_t idle = c->route_idle_ms ? c->route_idle_ms : worker_settings(w)->upstream_idle_timeout_ms;
		if (idle)
			timer_activity(c, idle);
		else
			timer_set(c, T_NONE, 0);
	}
	response_body_pump(c);
}

static void up_write(struct io *io, void *arg)
{
	struct upstream *u = arg;
	struct conn *c = u->c;
	if (!c || !c->client_paused || c->state == CS_HELD)
		return;
	if (evbuffer_get_length(io_out(io)) > LOW_WATER)
		return;
	c->client_paused = false;
	io_read_on(&c->io, true);
}

static void up_event(struct io *io, short what, void *arg)
{
	struct upstream *u = arg;
	struct conn *c = u->c;
	if (!c) {
		upstream_free(u);
		return;
	}
	if (what & BEV_EVENT_CONNECTED) {
		const struct proxy_settings *ps = worker_settings(c->w);
		u->connected = true;
		if (c->state == CS_PROXY && !c->res_head_done) {
			if (c->req_done)
				timer_set(c, T_RESPONSE, ps->upstream_response_timeout_ms);
			else
				timer_activity(c, ps->idle_timeout_ms);
		}
		return;
	}
	int err = EVUTIL_SOCKET_ERROR();
	if (c->state == CS_TUNNEL) {
		tunnel_pump(c);
		c->up = NULL;
		upstream_free(u);
		conn_linger(c);
		return;
	}
	if (!u->connected) {
		log_warn("upstream connect failed upstream=%s error=%s request_id=%s",
			u->be->addr_text, log_q(strerror(err)), c->rid);
		conn_upstream_fail(c, 502, err == ECONNREFUSED ? "upstream backend refused the connection"
			: "cannot connect to the upstream backend");
		return;
	}
	if (c->res_head_done) {
		if (c->rs.kind == HTTP_BODY_CLOSE && !(what & BEV_EVENT_ERROR)) {
			c->rs.done = true;
			c->up_reusable = false;
			conn_response_done(c);
		} else {
			conn_upstream_fail(c, 502, "upstream closed the connection mid-response");
		}
		return;
	}
	if (u->reused && !c->res_started && c->head_kept && c->idempotent && !c->retried &&
	    evbuffer_get_length(io_in(io)) == 0) {
		/* the pooled connection was closed under us: once more, fresh */
		c->retried = true;
		c->up = NULL;
		upstream_free(u);
		const struct http_request *req = conn_reparse(c);
		if (req)
			conn_forward(c, req, c->be, false);
		return;
	}
	conn_upstream_fail(c, 502, c->res_started ? "upstream sent an incomplete response"
		: "upstream closed the connection without a response");
}

/* Client callbacks ------------------------------------------------------- */

static void client_read(struct io *io, void *arg)
{
	struct conn *c = arg;
	switch (c->state) {
	case CS_HEAD:
		conn_try_head(c);
		break;
	case CS_PROXY:
		if (!c->req_done && !c->head_kept && c->up)
			request_body_pump(c);
		break;               /* else: pipelined bytes wait their turn */
	case CS_TUNNEL:
		tunnel_pump(c);
		break;
	case CS_LINGER:
		evbuffer_drain(io_in(io), evbuffer_get_length(io_in(io)));
		break;
	case CS_HELD:
	case CS_H2:
	case CS_FILE:
		break;               /* pipelined bytes wait their turn */
	}
}

static void client_write(struct io *io, void *arg)
{
	struct conn *c = arg;
	struct evbuffer *out = io_out(io);
	if (c->state == CS_LINGER) {
		if (evbuffer_get_length(out))
			return;
		if (c->tls || c->client_eof) {
			conn_free(c);
			return;
		}
		io_shutdown_wr(io);
		return;
	}
	if (c->state == CS_FILE) {
		file_pump(c);
		return;
	}
	if (c->up_paused && c->up && evbuffer_get_length(out) <= LOW_WATER) {
		c->up_paused = false;
		io_read_on(&c->up->io, true);
	}
}

/* See "A client's EOF" at the top. */
static bool conn_abandoned(const struct conn *c)
{
	return c->client_eof && c->state == CS_PROXY && !c->res_head_done &&
		(c->w->stopping || (c->be && atomic_load_explicit(&c->be->draining, memory_order_relaxed)));
}

static void client_event(struct io *io, short what, void *arg)
{
	struct conn *c = arg;
	if (what & BEV_EVENT_CONNECTED) {
		const unsigned char *alpn = NULL;
		unsigned alen = 0;
		STAT_ADD(c->w, tls_handshakes, 1);
		SSL_get0_alpn_selected(io->ssl, &alpn, &alen);
		if (alen == 2 && memcmp(alpn, "h2", 2) == 0) {
			c->state = CS_H2;
			timer_set(c, T_NONE, 0);
			if (!(c->h2 = h2_start(c, &c->io)))
				conn_free(c);
		}
		return;
	}
	if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR)) {
		c->client_eof = true;
		switch (c->state) {
		case CS_PROXY:
			if (c->req_done && !conn_abandoned(c))
				return;      /* half-close after a request: still answer it */
			break;
		case CS_TUNNEL:
			tunnel_pump(c);
			upstream_retire(c->up);
			c->up = NULL;
			break;
		case CS_LINGER:
			if (evbuffer_get_length(io_out(&c->io)))
				return;
			break;
		default:
			break;
		}
	}
	conn_free(c);
}

/* The service name a held request waits for, for the 503 body. */
static void held_service_name(struct conn *c, char *why, size_t cap)
{
	struct worker *w = c->w;
	const struct proxy_settings *ps = worker_settings(w);
	struct evbuffer *in = io_in(&c->io);
	const char *buf = (const char *)evbuffer_pullup(in, c->head_len);
	snprintf(why, cap, "no healthy instance of the service");
	if (!w->snap) {
		snprintf(why, cap, "no routing state published yet");
		return;
	}
	if (!buf || http_parse_request(buf, c->head_len, c->head_len + (size_t)ps->max_header_bytes,
			UINT64_MAX, &w->req) != (int)c->head_len)
		return;
	const struct snap_route *rt = snapshot_route(w->snap, w->req.host, w->req.host_len,
		w->req.path, w->req.path_len);
	if (rt && rt->service >= 0 && (size_t)rt->service < w->snap->n_services)
		snprintf(why, cap, "no healthy instance of %s", w->snap->services[rt->service].name);
}

static void conn_begin_error_request(struct conn *c, size_t bytes_in)
{
	if (!c->req_active) {
		STAT_ADD(c->w, requests_total, 1);
		c->req_active = true;
		c->start_us = worker_now_us(c->w);
		c->rslot = 0;
		c->bytes_in = bytes_in;
		c->bytes_out = 0;
		c->reason = NULL;
		snprintf(c->method, sizeof(c->method), "-");
		snprintf(c->target, sizeof(c->target), "-");
		rid_generate(c->w, c->rid);
	}
	c->keep_alive = false;
	c->is_head = false;
	c->minor0 = false;
	body_init(&c->rq, HTTP_BODY_NONE, 0, 0, false);
}

static void conn_timer_fire(struct conn *c)
{
	enum tkind k = c->tkind;
	uint64_t now = worker_now_ms(c->w);
	c->armed_ms = 0;
	if (k == T_NONE)
		return;
	if (k != T_ACTIVITY && now < c->due_ms) {
		timer_arm(c, c->due_ms, c->due_ms - now, false);   /* fired for an earlier deadline */
		return;
	}
	c->tkind = T_NONE;
	switch (k) {
	case T_HEADER: {
		size_t have = evbuffer_get_length(io_in(&c->io));
		if (have == 0) {     /* said nothing at all: just close */
			conn_free(c);
			return;
		}
		conn_begin_error_request(c, have);
		conn_error(c, 408, "request head not received in time", true);
		return;
	}
	case T_IDLE:
	case T_LINGER:
		conn_free(c);
		return;
	case T_HOLD: {
		char why[160];
		held_unlink(c);
		held_service_name(c, why, sizeof(why));
		conn_error(c, 503, why, false);
		return;
	}
	case T_CONNECT:
		conn_upstream_fail(c, 502, "upstream connect timed out");
		return;
	case T_RESPONSE:
		conn_upstream_fail(c, 504, "upstream did not answer in time");
		return;
	case T_ACTIVITY: {
		uint64_t idle = now - c->last_ms;
		if (idle < c->act_ms) {
			c->tkind = T_ACTIVITY;
			timer_arm(c, now + c->act_ms - idle, c->act_ms - idle, false);
			return;
		}
		if (c->state == CS_PROXY && !c->res_head_done && !c->req_done) {
			conn_error(c, 408, "request body not received in time", true);
			return;
		}
		if (c->state == CS_FILE && evbuffer_get_length(io_out(&c->io)) < c->fmark) {
			c->fmark = evbuffer_get_length(io_out(&c->io));   /* the client reads: slowly */
			timer_activity(c, c->act_ms);
			return;
		}
		if (c->state == CS_PROXY && c->res_head_done) {
			STAT_ADD(c->w, upstream_errors, 1);
			c->reason = "upstream_idle_timeout";
			conn_cut(c);
			return;
		}
		conn_linger(c);
		return;
	}
	case T_NONE:
		break;
	}
}

static void conn_timer(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct conn *c = arg;
	struct worker *w = c->w;
	conn_timer_fire(c);
	worker_flush(w);
}

/* Worker entry points ------------------------------------------------------ */

/* The parts of a new client conn both kinds share: callbacks, timer,
 * worker->conns. */
static void conn_link(struct conn *c, struct worker *w, bool tls, size_t out_high)
{
	evtimer_assign(&c->timer, w->base, conn_timer, c);
	c->w = w;
	c->tls = tls;
	c->state = CS_HEAD;
	c->out_high = out_high;
	snprintf(c->rid, sizeof(c->rid), "-");
	io_setcb(&c->io, client_read, client_write, client_event, c);
	io_set_write_low(&c->io, LOW_WATER);
	c->next = w->conns;
	if (w->conns)
		w->conns->prev = c;
	w->conns = c;
}

struct io *conn_stream_open(struct conn *parent, struct h2stream *st, size_t out_high, size_t out_low)
{
	struct worker *w = parent->w;
	struct conn *c = calloc(1, sizeof(*c));
	if (!c || io_init_mem(&c->io, w, st) < 0) {
		free(c);
		return NULL;
	}
	memcpy(c->ip, parent->ip, sizeof(c->ip));
	conn_link(c, w, parent->tls, out_high);
	io_set_write_low(&c->io, out_low);
	timer_set(c, T_HEADER, worker_settings(w)->client_header_timeout_ms);
	io_read_on(&c->io, true);
	return &c->io;
}

void conn_stream_close(struct io *io)
{
	conn_free(io->arg);
}

void conn_end(struct conn *c)
{
	conn_free(c);
}

void conn_accept(struct worker *w, int fd, const struct sockaddr *sa, int salen, bool tls)
{
	struct conn *c = NULL;
	SSL *ssl = NULL;
	(void)salen;
	worker_refresh_snapshot(w);
	const struct proxy_settings *ps = worker_settings(w);
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (!(c = calloc(1, sizeof(*c))))
		goto fail;
	if (sa->sa_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, c->ip, sizeof(c->ip));
	else if (sa->sa_family == AF_INET6)
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, c->ip, sizeof(c->ip));
	else
		snprintf(c->ip, sizeof(c->ip), "unknown");
	if (tls) {
		SSL_CTX *ctx = w->snap ? w->snap->tls_ctx : NULL;
		if (!ctx || !(ssl = SSL_new(ctx)))
			goto fail;
		tls_offer_h2(ssl, ps->http2);
		if (io_init_tls(&c->io, w, fd, ssl) < 0)
			goto fail;
	} else if (io_init_plain(&c->io, w, fd, false) < 0) {
		goto fail;
	}
	ssl = NULL;
	fd = -1;                     /* owned by c->io */
	conn_link(c, w, tls, HIGH_WATER);
	size_t rhigh = ps->max_header_bytes + 4096 > LOW_WATER ? (size_t)ps->max_header_bytes + 4096 : LOW_WATER;
	io_set_read_high(&c->io, rhigh);
	STAT_ADD(w, connections, 1);
	STAT_ADD(w, connections_total, 1);
	timer_set(c, T_HEADER, ps->client_header_timeout_ms);
	io_read_on(&c->io, true);
	return;
fail:
	if (ssl)
		SSL_free(ssl);
	if (fd >= 0)
		close(fd);
	free(c);
	worker_conn_closed(w);
}

static void conn_free(struct conn *c)
{
	struct worker *w = c->w;
	if (c->h2) {
		h2_free(c->h2);          /* its streams' conns first */
		c->h2 = NULL;
	}
	conn_finish_request(c);
	held_unlink(c);
	static_body_release(&c->fbody);
	if (c->up)
		upstream_free(c->up);
	tunnel_leave(c);
	if (c->prev)
		c->prev->next = c->next;
	else
		w->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	event_del(&c->timer);
	bool stream = c->io.h2s != NULL;
	io_close(&c->io);
	free(c);
	if (stream)
		return;              /* not a connection of its own */
	STAT_ADD(w, connections, -1);
	worker_conn_closed(w);
}

static bool backend_current(const struct snapshot *s, const struct backend *be)
{
	if (!s || atomic_load_explicit(&be->draining, memory_order_relaxed))
		return false;
	for (size_t i = 0; i < s->n_services; i++)
		for (size_t j = 0; j < s->services[i].n_live; j++)
			if (s->services[i].live[j] == be)
				return true;
	return false;
}

/* Free idle upstreams of backends gone from the snapshot, draining, or
 * idle longer than `max_idle_ms` (0: keep). */
static void pools_sweep(struct worker *w, uint64_t max_idle_ms)
{
	uint64_t now = worker_now_ms(w);
	for (size_t i = 0; i < w->n_pools; i++) {
		struct pool *pl = &w->pools[i];
		for (struct upstream **pp = &pl->idle; *pp;) {
			struct upstream *u = *pp;
			if (!backend_current(w->snap, u->be) || (max_idle_ms && now - u->idle_since >= max_idle_ms)) {
				*pp = u->next;
				pl->n_idle--;
				upstream_free(u);
				continue;
			}
			pp = &u->next;
		}
	}
}

void conn_on_snapshot(struct worker *w)
{
	worker_refresh_snapshot(w);
	pools_sweep(w, 0);
	struct conn *c = w->held, *next;
	for (; c; c = next) {
		next = c->hnext;
		held_unlink(c);
		c->resumed = true;
		c->state = CS_HEAD;
		const struct http_request *req = conn_reparse(c);
		if (req)
			conn_request(c, req);
	}
	worker_flush(w);
}

void conn_tick(struct worker *w)
{
	worker_refresh_snapshot(w);
	pools_sweep(w, worker_settings(w)->idle_timeout_ms);
	struct conn *c = w->conns, *next;
	for (; c; c = next) {
		next = c->next;
		if (conn_abandoned(c)) {
			conn_free(c);
			continue;
		}
		if (c->tls_busy && c->state == CS_HEAD && !c->req_active) {
			c->tls_busy = 0;         /* quiet at this tick: small again */
			io_keep_buffers(&c->io, false);
		}
		/* requests go on: the instance is stopping and may finish them */
		if (c->state == CS_TUNNEL && c->be &&
		    atomic_load_explicit(&c->be->close_tunnels, memory_order_relaxed))
			tunnel_close(c, 1012);
	}
	worker_flush(w);
}

void conn_close_idle(struct worker *w)
{
	struct conn *c = w->conns, *next;
	for (; c; c = next) {
		next = c->next;
		if (c->h2) {
			h2_shutdown(c->h2);  /* GOAWAY; closes itself once its streams ended */
			continue;
		}
		if (conn_abandoned(c))
			conn_free(c);
		else if (c->state == CS_HEAD && !c->req_active && evbuffer_get_length(io_in(&c->io)) == 0)
			timer_set(c, T_IDLE, STOP_IDLE_MS);   /* a request sent meanwhile gets Connection: close */
	}
	worker_flush(w);
}

void conn_close_tunnels(struct worker *w)
{
	struct conn *c = w->conns, *next;
	for (; c; c = next) {
		next = c->next;
		if (c->state == CS_TUNNEL)
			tunnel_close(c, 1001);
	}
	worker_flush(w);
}

void conn_free_all(struct worker *w)
{
	while (w->conns)
		conn_free(w->conns);
	for (size_t i = 0; i < w->n_pools; i++)
		while (w->pools[i].idle) {
			struct upstream *u = w->pools[i].idle;
			w->pools[i].idle = u->next;
			upstream_free(u);
		}
	free(w->pools);
	w->pools = NULL;
	w->n_pools = w->cap_pools = 0;
}
