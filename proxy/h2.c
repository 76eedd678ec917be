/* h2 — HTTP/2 on the TLS listeners (libnghttp2, RFC 9113), translated to
 * the HTTP/1.1 request path of conn.c.
 *
 * Each stream is one request conn (conn_stream_open) whose client side is
 * a memory io: the stream's checked header fields become an HTTP/1.1
 * request head (h2req.c) in the conn's input, request DATA follows
 * (chunked when the client sent no content-length; trailers are dropped,
 * as the HTTP/1.1 path drops chunked trailers). So routing, X-Forwarded-*,
 * X-Request-Id, static routes, ACME challenges, holding, drain counting,
 * pooling, timeouts, access log and metrics are those of HTTP/1.1. What
 * the conn answers (HTTP/1.1 heads, 1xx included, and a framed body) is
 * parsed back (http_parse_response, body_move) into HEADERS and DATA.
 *
 * Bounded memory and CPU:
 * - request bodies: the receive window is given back (WINDOW_UPDATE) only
 *   as the conn moves bytes on to the upstream, so at most H2_STREAM_WINDOW
 *   per stream and H2_CONN_WINDOW per connection wait in pmd;
 * - responses: the conn pauses its upstream above H2_OUT_HIGH bytes of
 *   output; the stream takes them into `send` (one refill at a time) only
 *   when nghttp2 asks for DATA, i.e. the client's window is open and the
 *   socket output is below H2_SOCK_HIGH. A client that never opens its
 *   window stalls its upstreams (idle / response timeouts apply);
 * - frames out are produced only while the socket output is below
 *   H2_SOCK_HIGH, and the socket is not read above it, so SETTINGS and
 *   PING acknowledgements cannot pile up (floods cost CPU per byte read);
 * - header blocks: max_header_bytes per stream (then RST_STREAM), at most
 *   H2_MAX_CONTINUATIONS CONTINUATION frames per block (then the
 *   connection ends: CONTINUATION flood), HPACK table 4096 bytes;
 * - rapid reset: every RST_STREAM from the client takes a token from a
 *   bucket of H2_RST_BURST refilled at H2_RST_RATE/s; empty: GOAWAY
 *   ENHANCE_YOUR_CALM. A stream reset before its conn's first read never
 *   reaches a backend (the conn reads on its own event turn);
 * - streams: SETTINGS_MAX_CONCURRENT_STREAMS = max_concurrent_streams.
 *
 * Re-entrancy: nghttp2 is driven from the session's read callback and its
 * own send event (ev_send), never from inside a conn callback, so a
 * stream's conn may be freed from nghttp2's on_stream_close; the conns'
 * callbacks run on their io's own turns (io_mem_feed, io_mem_writable).
 *
 * nghttp2 API floor: everything used is in 1.43 (Ubuntu 22.04) but
 * nghttp2_option_set_stream_reset_rate_limit (1.57) and
 * nghttp2_option_set_max_continuations (1.61), used when built against
 * those versions in addition to our own bucket and CONTINUATION cap.
 *
 * Lifetime: a struct h2stream lives while nghttp2 has the stream open
 * (`closed` false) or its conn exists (`io`); it goes with the later of
 * the two. Stop: a shutdown notice (GOAWAY with the largest stream id),
 * H2_STOP_NOTICE_MS later GOAWAY naming the last stream taken; the
 * connection closes once those streams ended. Idle: no stream conn for
 * client_header_timeout (before the first request) or idle_timeout:
 * GOAWAY and close. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <nghttp2/nghttp2.h>

#include "log.h"
#include "proxy_int.h"

#define H2_STREAM_WINDOW (256 * 1024)
#define H2_CONN_WINDOW (1024 * 1024)
#define H2_OUT_HIGH (64 * 1024)
#define H2_OUT_LOW (16 * 1024)
#define H2_SOCK_HIGH (64 * 1024)
#define H2_SOCK_LOW (16 * 1024)
#define H2_MAX_CONTINUATIONS 8
#define H2_RST_BURST 1000
#define H2_RST_RATE 33
#define H2_RES_MAX_HEAD (64 * 1024 + 4096)
#define H2_HEADER_SLACK 1024
#define H2_STOP_NOTICE_MS 1000      /* stopping: shutdown notice, then the last GOAWAY */        /* over max_header_bytes: the conn answers 431 */

struct h2stream {
	struct h2sess *s;
	struct h2stream *next, *prev;
	int32_t id;
	struct io *io;               /* the conn's client side; NULL once it is freed */
	struct h2req rq;             /* header fields until the head is built */
	bool head_done, chunked, req_end, closed, deferred;
	bool res_final, bad;
	bool is_head;
	size_t in_mark;              /* length of io->in after our last append */
	size_t in_free;              /* bytes of io->in that are no DATA (head, framing) */
	uint64_t unconsumed;         /* DATA bytes not given back as window yet */
	struct body rs;              /* the conn's response body framing */
	struct evbuffer *send;       /* response body, de-framed, for DATA */
};

struct h2sess {
	struct worker *w;
	struct conn *c;
	struct io *io;               /* c's TLS socket */
	nghttp2_session *ng;
	struct event ev_send, timer;
	struct h2stream *streams;
	size_t n_conns;              /* streams with a conn */
	bool any, stopping, goaway_final, dying, rd_paused, timer_on;
	int ncont;                   /* CONTINUATION frames of the current block */
	double rst_tokens;
	uint64_t rst_ms;
};

static void sess_sched(struct h2sess *s)
{
	if (!s->dying)
		event_active(&s->ev_send, EV_WRITE, 1);
}

/* Arm the idle timer when no stream has a conn. */
static void sess_idle_check(struct h2sess *s)
{
	if (s->dying || s->stopping)
		return;                  /* stopping: the timer sends the last GOAWAY */
	if (s->n_conns) {
		if (s->timer_on)
			event_del(&s->timer);
		s->timer_on = false;
		return;
	}
	if (s->timer_on)
		return;
	const struct proxy_settings *ps = worker_settings(s->w);
	uint64_t ms = s->any ? ps->idle_timeout_ms : ps->client_header_timeout_ms;
	event_add(&s->timer, worker_tv(s->w, ms));
	s->timer_on = true;
}

static void stream_free(struct h2stream *st)
{
	struct h2sess *s = st->s;
	if (st->prev)
		st->prev->next = st->next;
	else
		s->streams = st->next;
	if (st->next)
		st->next->prev = st->prev;
	h2req_free(&st->rq);
	if (st->send)
		evbuffer_free(st->send);
	free(st);
}

/* Give request window back for what the conn took out of its input. */
static void stream_consume(struct h2stream *st)
{
	struct evbuffer *in = st->io->in;
	size_t cur = evbuffer_get_length(in);
	if (cur >= st->in_mark) {
		st->in_mark = cur;
		return;
	}
	size_t gone = st->in_mark - cur;
	st->in_mark = cur;
	size_t nd = gone < st->in_free ? gone : st->in_free;
	st->in_free -= nd;
	gone -= nd;
	if (gone > st->unconsumed)
		gone = (size_t)st->unconsumed;
	if (!gone || st->closed)
		return;
	st->unconsumed -= gone;
	nghttp2_session_consume(st->s->ng, st->id, gone);
	sess_sched(st->s);
}

/* Append to the conn's input: DATA bytes (window) or framing. */
static void stream_feed(struct h2stream *st, const void *p, size_t n, bool data)
{
	evbuffer_add(st->io->in, p, n);
	st->in_mark = evbuffer_get_length(st->io->in);
	if (data)
		st->unconsumed += n;
	else
		st->in_free += n;
}

static ssize_t data_read(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len,
	uint32_t *flags, nghttp2_data_source *src, void *arg);

static bool hop_header(const char *n, size_t l)
{
	return (l == 10 && (http_token_eq(n, l, "connection") || http_token_eq(n, l, "keep-alive"))) ||
		(l == 16 && http_token_eq(n, l, "proxy-connection")) ||
		(l == 17 && http_token_eq(n, l, "transfer-encoding")) ||
		(l == 7 && http_token_eq(n, l, "upgrade")) ||
		(l == 2 && http_token_eq(n, l, "te"));
}

/* One HTTP/1.1 response head from the conn as HEADERS. Returns 0, -1 when
 * the head is not complete yet, -2 when it cannot be sent. */
static int stream_head(struct h2stream *st)
{
	struct evbuffer *out = st->io->out;
	size_t len = evbuffer_get_length(out);
	size_t n = len < H2_RES_MAX_HEAD ? len : H2_RES_MAX_HEAD;
	const char *buf = (const char *)evbuffer_pullup(out, (ev_ssize_t)n);
	struct http_response *res = &st->s->w->res;
	int r = buf ? http_parse_response(buf, n, H2_RES_MAX_HEAD, st->is_head, res) : -1;
	if (r == -2 && n < H2_RES_MAX_HEAD)
		return -1;
	if (r <= 0 || res->status_code == 101)
		return -2;
	nghttp2_nv nva[HTTP_MAX_HEADERS + 1];
	char status[4];
	size_t k = 0;
	char *names = malloc((size_t)r);
	if (!names)
		return -2;
	size_t used = 0;
	status[0] = (char)('0' + res->status_code / 100);
	status[1] = (char)('0' + res->status_code / 10 % 10);
	status[2] = (char)('0' + res->status_code % 10);
	status[3] = '\0';
	nva[k++] = (nghttp2_nv){ (uint8_t *)":status", (uint8_t *)status, 7, 3, NGHTTP2_NV_FLAG_NONE };
	for (size_t i = 0; i < res->n_headers; i++) {
		const struct http_header *h = &res->headers[i];
		if (hop_header(h->name, h->name_len))
			continue;
		char *lc = names + used;
		for (size_t j = 0; j < h->name_len; j++) {
			char ch = h->name[j];
			lc[j] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
		}
		used += h->name_len;
		nva[k++] = (nghttp2_nv){ (uint8_t *)lc, (uint8_t *)h->value, h->name_len, h->value_len,
			NGHTTP2_NV_FLAG_NONE };
	}
	int e;
	bool final = res->status_code >= 200;
	if (!final) {
		e = nghttp2_submit_headers(st->s->ng, NGHTTP2_FLAG_NONE, st->id, NULL, nva, k, NULL);
	} else {
		body_init(&st->rs, res->body, res->content_length, 0, false);
		nghttp2_data_provider dp = { .source.ptr = st, .read_callback = data_read };
		e = nghttp2_submit_response(st->s->ng, st->id, nva, k, st->rs.done ? NULL : &dp);
		st->res_final = true;
	}
	free(names);
	evbuffer_drain(out, (size_t)r);
	return e == 0 ? 0 : -2;
}

/* De-frame what the conn wrote of the body into `send`. -1: malformed. */
static int stream_refill(struct h2stream *st)
{
	if (!st->io || st->rs.done || !evbuffer_get_length(st->io->out))
		return 0;
	if (body_move(&st->rs, st->io->out, st->send) < 0)
		return -1;
	if (evbuffer_get_length(st->io->out) <= st->io->wr_low)
		io_mem_writable(st->io);
	return 0;
}

static void stream_reset(struct h2stream *st, uint32_t code)
{
	if (st->closed || st->bad)
		return;
	st->bad = true;
	nghttp2_submit_rst_stream(st->s->ng, NGHTTP2_FLAG_NONE, st->id, code);
	sess_sched(st->s);
}

/* The conn added output: heads become HEADERS, body bytes wait for DATA. */
static void stream_output(struct h2stream *st)
{
	while (!st->res_final && evbuffer_get_length(st->io->out)) {
		int r = stream_head(st);
		if (r == -1)
			return;
		if (r < 0) {
			stream_reset(st, NGHTTP2_INTERNAL_ERROR);
			return;
		}
		sess_sched(st->s);
	}
	if (!st->res_final)
		return;
	if (!evbuffer_get_length(st->send) && stream_refill(st) < 0) {
		stream_reset(st, NGHTTP2_INTERNAL_ERROR);
		return;
	}
	if (st->deferred && (evbuffer_get_length(st->send) || st->rs.done)) {
		st->deferred = false;
		nghttp2_session_resume_data(st->s->ng, st->id);
		sess_sched(st->s);
	}
}

void h2_stream_flush(struct h2stream *st)
{
	if (st->s->dying || st->closed || st->bad || !st->io)
		return;
	stream_consume(st);
	stream_output(st);
}

void h2_stream_closed(struct h2stream *st, bool reset)
{
	struct h2sess *s = st->s;
	if (s->dying) {
		st->io = NULL;
		return;
	}
	if (!st->closed && !st->bad) {
		stream_output(st);
		/* the rest of the body: it is in memory already, the conn goes */
		if (st->res_final && !st->rs.done && body_move(&st->rs, st->io->out, st->send) < 0)
			reset = true;
		if (st->res_final && st->rs.kind == HTTP_BODY_CLOSE && !reset)
			st->rs.done = true;
		if (reset || !st->res_final || !st->rs.done)
			stream_reset(st, NGHTTP2_INTERNAL_ERROR);
		else if (st->deferred) {
			st->deferred = false;
			nghttp2_session_resume_data(s->ng, st->id);
		}
		if (st->unconsumed)
			nghttp2_session_consume(s->ng, st->id, (size_t)st->unconsumed);
	} else if (st->unconsumed) {
		nghttp2_session_consume_connection(s->ng, (size_t)st->unconsumed);
	}
	st->unconsumed = 0;
	st->io = NULL;
	s->n_conns--;
	sess_sched(s);
	sess_idle_check(s);
	if (st->closed)
		stream_free(st);
}

/* nghttp2 callbacks ------------------------------------------------------ */

static ssize_t data_read(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len,
	uint32_t *flags, nghttp2_data_source *src, void *arg)
{
	(void)ng;
	(void)id;
	(void)arg;
	struct h2stream *st = src->ptr;
	if (!evbuffer_get_length(st->send) && stream_refill(st) < 0)
		return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
	int n = evbuffer_remove(st->send, buf, len);
	if (n < 0)
		return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
	if (!evbuffer_get_length(st->send) && st->rs.done) {
		*flags |= NGHTTP2_DATA_FLAG_EOF;
		return n;
	}
	if (n == 0) {
		if (!st->io)
			return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;   /* gone, incomplete */
		st->deferred = true;
		return NGHTTP2_ERR_DEFERRED;
	}
	return n;
}

static int on_begin_frame(nghttp2_session *ng, const nghttp2_frame_hd *hd, void *arg)
{
	(void)ng;
	struct h2sess *s = arg;
	if (hd->type == NGHTTP2_HEADERS)
		s->ncont = 0;
	else if (hd->type == NGHTTP2_CONTINUATION && ++s->ncont > H2_MAX_CONTINUATIONS)
		return NGHTTP2_ERR_CALLBACK_FAILURE;   /* CONTINUATION flood */
	return 0;
}

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *f, void *arg)
{
	struct h2sess *s = arg;
	if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
		return 0;
	struct h2stream *st = calloc(1, sizeof(*st));
	if (!st || !(st->send = evbuffer_new())) {
		free(st);
		return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
	}
	st->s = s;
	st->id = f->hd.stream_id;
	h2req_init(&st->rq, (size_t)worker_settings(s->w)->max_header_bytes + H2_HEADER_SLACK);
	st->next = s->streams;
	if (s->streams)
		s->streams->prev = st;
	s->streams = st;
	nghttp2_session_set_stream_user_data(ng, st->id, st);
	return 0;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
	const uint8_t *value, size_t vlen, uint8_t flags, void *arg)
{
	(void)flags;
	(void)arg;
	struct h2stream *st = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
	if (!st || st->head_done || st->bad)
		return 0;                /* trailers are dropped; the rest of a refused block too */
	int e = h2req_field(&st->rq, name, nlen, value, vlen);
	if (e != 0)                  /* malformed: PROTOCOL_ERROR; too large: REFUSED_STREAM */
		stream_reset(st, e == -1 ? NGHTTP2_PROTOCOL_ERROR : NGHTTP2_REFUSED_STREAM);
	return 0;
}

/* The request's header block is complete: hand it to a new conn. */
static void stream_start(struct h2sess *s, struct h2stream *st, bool end)
{
	bool chunked;
	struct evbuffer *head = evbuffer_new();
	st->head_done = true;
	st->req_end = end;
	if (!head) {
		stream_reset(st, NGHTTP2_INTERNAL_ERROR);
		return;
	}
	if (h2req_head(&st->rq, end, head, &chunked) < 0) {
		evbuffer_free(head);
		stream_reset(st, NGHTTP2_PROTOCOL_ERROR);
		return;
	}
	st->chunked = chunked;
	st->is_head = st->rq.method.len == 4 && memcmp(st->rq.method.p, "HEAD", 4) == 0;
	h2req_free(&st->rq);
	if (!(st->io = conn_stream_open(s->c, st, H2_OUT_HIGH, H2_OUT_LOW))) {
		evbuffer_free(head);
		stream_reset(st, NGHTTP2_INTERNAL_ERROR);
		return;
	}
	s->n_conns++;
	s->any = true;
	STAT_ADD(s->w, h2_streams_total, 1);
	sess_idle_check(s);
	size_t hl = evbuffer_get_length(head);
	evbuffer_add_buffer(st->io->in, head);
	evbuffer_free(head);
	st->in_mark = evbuffer_get_length(st->io->in);
	st->in_free += hl;
	io_mem_feed(st->io);
}

static void stream_end_request(struct h2stream *st)
{
	if (st->req_end || !st->io)
		return;
	st->req_end = true;
	if (st->chunked) {
		stream_feed(st, "0\r\n\r\n", 5, false);
		io_mem_feed(st->io);
	}
}

static bool rst_allowed(struct h2sess *s)
{
	uint64_t now = worker_now_ms(s->w);
	s->rst_tokens += (double)(now - s->rst_ms) * H2_RST_RATE / 1000.0;
	if (s->rst_tokens > H2_RST_BURST)
		s->rst_tokens = H2_RST_BURST;
	s->rst_ms = now;
	if (s->rst_tokens < 1)
		return false;
	s->rst_tokens -= 1;
	return true;
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *arg)
{
	struct h2sess *s = arg;
	struct h2stream *st = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
	bool end = f->hd.flags & NGHTTP2_FLAG_END_STREAM;
	switch (f->hd.type) {
	case NGHTTP2_HEADERS:
		if (!st || st->bad)
			return 0;
		if (!st->head_done) {
			if (f->headers.cat == NGHTTP2_HCAT_REQUEST)
				stream_start(s, st, end);
		} else if (end) {
			stream_end_request(st);
		}
		return 0;
	case NGHTTP2_DATA:
		if (st && end)
			stream_end_request(st);
		return 0;
	case NGHTTP2_RST_STREAM:
		if (!rst_allowed(s)) {
			log_warn("http2: too many stream resets (rapid reset), closing the connection");
			nghttp2_session_terminate_session(ng, NGHTTP2_ENHANCE_YOUR_CALM);
		}
		return 0;
	default:
		return 0;
	}
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data,
	size_t len, void *arg)
{
	(void)flags;
	(void)arg;
	struct h2stream *st = nghttp2_session_get_stream_user_data(ng, id);
	if (!st || !st->io || st->req_end || st->bad) {
		nghttp2_session_consume(ng, id, len);    /* nobody reads it */
		return 0;
	}
	if (st->chunked) {
		char sz[20];
		int k = snprintf(sz, sizeof(sz), "%zx\r\n", len);
		stream_feed(st, sz, (size_t)k, false);
		stream_feed(st, data, len, true);
		stream_feed(st, "\r\n", 2, false);
	} else {
		stream_feed(st, data, len, true);
	}
	io_mem_feed(st->io);
	return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t code, void *arg)
{
	(void)code;
	(void)arg;
	struct h2stream *st = nghttp2_session_get_stream_user_data(ng, id);
	if (!st)
		return 0;
	nghttp2_session_set_stream_user_data(ng, id, NULL);
	st->closed = true;
	if (st->io)
		conn_stream_close(st->io);   /* h2_stream_closed frees st */
	else
		stream_free(st);
	return 0;
}

/* Session I/O ------------------------------------------------------------ */

static void sess_close(struct h2sess *s)
{
	conn_end(s->c);              /* h2_free via conn_free */
}

/* Produce frames while the socket output is below H2_SOCK_HIGH. Returns -1
 * when the session was closed (s is gone). */
static int sess_send(struct h2sess *s)
{
	struct evbuffer *out = io_out(s->io);
	while (evbuffer_get_length(out) < H2_SOCK_HIGH) {
		const uint8_t *data;
		ssize_t n = nghttp2_session_mem_send(s->ng, &data);
		if (n < 0) {
			sess_close(s);
			return -1;
		}
		if (n == 0)
			break;
		evbuffer_add(out, data, (size_t)n);
	}
	if ((!nghttp2_session_want_read(s->ng) && !nghttp2_session_want_write(s->ng)) ||
	    (s->goaway_final && !s->streams && !nghttp2_session_want_write(s->ng))) {
		if (!evbuffer_get_length(out)) {
			sess_close(s);
			return -1;
		}
		io_set_write_low(s->io, 0);  /* close once the last frames are out */
	}
	bool full = evbuffer_get_length(out) >= H2_SOCK_HIGH;
	if (full != s->rd_paused) {
		s->rd_paused = full;
		io_read_on(s->io, !full);
	}
	return 0;
}

static void on_send_ev(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct h2sess *s = arg;
	struct worker *w = s->w;
	sess_send(s);
	worker_flush(w);
}

static void sess_read(struct io *io, void *arg)
{
	struct h2sess *s = arg;
	struct evbuffer *in = io_in(io);
	size_t len;
	while ((len = evbuffer_get_length(in)) > 0) {
		struct evbuffer_iovec v;
		if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
			break;
		ssize_t n = nghttp2_session_mem_recv(s->ng, v.iov_base, v.iov_len);
		if (n < 0) {
			if (n != NGHTTP2_ERR_BAD_CLIENT_MAGIC)
				log_debug("http2: session error: %s", nghttp2_strerror((int)n));
			if (sess_send(s) == 0) {     /* the GOAWAY nghttp2 queued, if any */
				io_flush_now(s->io);
				sess_close(s);
			}
			return;
		}
		evbuffer_drain(in, (size_t)n);
	}
	sess_send(s);
}

static void sess_write(struct io *io, void *arg)
{
	(void)io;
	sess_send(arg);
}

static void sess_event(struct io *io, short what, void *arg)
{
	(void)io;
	(void)what;
	sess_close(arg);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct h2sess *s = arg;
	struct worker *w = s->w;
	s->timer_on = false;
	if (s->stopping) {           /* the notice had its second: the last GOAWAY */
		s->goaway_final = true;
		nghttp2_submit_goaway(s->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(s->ng),
			NGHTTP2_NO_ERROR, NULL, 0);
		sess_send(s);
		worker_flush(w);
		return;
	}
	if (s->n_conns)
		return;
	nghttp2_session_terminate_session(s->ng, NGHTTP2_NO_ERROR);
	sess_send(s);
	worker_flush(w);
}

struct h2sess *h2_start(struct conn *c, struct io *io)
{
	struct worker *w = io->w;
	const struct proxy_settings *ps = worker_settings(w);
	nghttp2_session_callbacks *cb = NULL;
	nghttp2_option *opt = NULL;
	struct h2sess *s = calloc(1, sizeof(*s));
	if (!s || nghttp2_session_callbacks_new(&cb) != 0 || nghttp2_option_new(&opt) != 0)
		goto fail;
	nghttp2_session_callbacks_set_on_begin_frame_callback(cb, on_begin_frame);
	nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
	nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
	nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
	nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
	nghttp2_option_set_no_auto_window_update(opt, 1);
	nghttp2_option_set_no_closed_streams(opt, 1);   /* no priority tree: idle stays small */
	nghttp2_option_set_max_outbound_ack(opt, 1000);
	nghttp2_option_set_max_settings(opt, 32);
#if NGHTTP2_VERSION_NUM >= 0x013900
	nghttp2_option_set_stream_reset_rate_limit(opt, H2_RST_BURST, H2_RST_RATE);
#endif
#if NGHTTP2_VERSION_NUM >= 0x013d00
	nghttp2_option_set_max_continuations(opt, H2_MAX_CONTINUATIONS);
#endif
	s->w = w;
	s->c = c;
	s->io = io;
	s->rst_tokens = H2_RST_BURST;
	s->rst_ms = worker_now_ms(w);
	if (nghttp2_session_server_new2(&s->ng, cb, s, opt) != 0) {
		s->ng = NULL;
		goto fail;
	}
	nghttp2_settings_entry iv[] = {
		{ NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, (uint32_t)ps->max_concurrent_streams },
		{ NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_STREAM_WINDOW },
		{ NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, (uint32_t)ps->max_header_bytes },
		{ NGHTTP2_SETTINGS_ENABLE_PUSH, 0 },
	};
	if (nghttp2_submit_settings(s->ng, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0])) != 0 ||
	    nghttp2_submit_window_update(s->ng, NGHTTP2_FLAG_NONE, 0,
		    H2_CONN_WINDOW - NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE) != 0)
		goto fail;
	event_assign(&s->ev_send, w->base, -1, 0, on_send_ev, s);
	evtimer_assign(&s->timer, w->base, on_timer, s);
	nghttp2_session_callbacks_del(cb);
	nghttp2_option_del(opt);
	io_setcb(io, sess_read, sess_write, sess_event, s);
	io_set_write_low(io, H2_SOCK_LOW);
	STAT_ADD(w, h2_connections, 1);
	STAT_ADD(w, h2_connections_total, 1);
	sess_idle_check(s);
	sess_sched(s);
	return s;
fail:
	if (cb)
		nghttp2_session_callbacks_del(cb);
	if (opt)
		nghttp2_option_del(opt);
	if (s && s->ng)
		nghttp2_session_del(s->ng);
	free(s);
	return NULL;
}

void h2_shutdown(struct h2sess *s)
{
	if (s->stopping)
		return;
	s->stopping = true;
	/* RFC 9113 §6.8: a GOAWAY that refuses nothing yet, then one naming
	 * the last stream taken; a request already on the wire is served */
	nghttp2_submit_shutdown_notice(s->ng);
	if (s->timer_on)
		event_del(&s->timer);
	event_add(&s->timer, worker_tv(s->w, H2_STOP_NOTICE_MS));
	s->timer_on = true;
	sess_sched(s);
}

void h2_free(struct h2sess *s)
{
	s->dying = true;
	for (struct h2stream *st = s->streams; st; st = st->next)
		if (st->io)
			conn_stream_close(st->io);   /* st->io = NULL, st stays */
	while (s->streams)
		stream_free(s->streams);
	event_del(&s->ev_send);
	event_del(&s->timer);
	nghttp2_session_del(s->ng);
	STAT_ADD(s->w, h2_connections, -1);
	free(s);
}
