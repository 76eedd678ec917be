/* libFuzzer harness: arbitrary bytes after the client preface into an
 * nghttp2 server session configured like proxy/h2.c (no auto window
 * update, no closed streams), whose header callbacks feed h2req as
 * h2.c does. Every HTTP/1.1 head h2req builds is checked with abort():
 * the strict HTTP/1.1 parser takes it whole as exactly one request, with
 * the method and path of the pseudo-headers, the authority as Host, no
 * connection-specific field, and a body framing that matches what h2req
 * said (chunked or content-length or none). So no HTTP/2 input can make
 * pmd send a backend a head that means something else. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <nghttp2/nghttp2.h>

#include "proxy_int.h"

#define CHECK(x) do { if (!(x)) abort(); } while (0)
#define MAX_HEAD 16384
#define MAX_STREAMS 64

struct fstream {
	int32_t id;
	bool used, bad;
	struct h2req rq;
};

static struct fstream streams[MAX_STREAMS];

static struct fstream *find(int32_t id, bool create)
{
	for (int i = 0; i < MAX_STREAMS; i++)
		if (streams[i].used && streams[i].id == id)
			return &streams[i];
	if (!create)
		return NULL;
	for (int i = 0; i < MAX_STREAMS; i++)
		if (!streams[i].used) {
			streams[i].used = true;
			streams[i].id = id;
			streams[i].bad = false;
			h2req_init(&streams[i].rq, MAX_HEAD);
			return &streams[i];
		}
	return NULL;
}

static void drop(struct fstream *st)
{
	h2req_free(&st->rq);
	st->used = false;
}

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *f, void *arg)
{
	(void)ng;
	(void)arg;
	if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST)
		find(f->hd.stream_id, true);
	return 0;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *n, size_t nl,
	const uint8_t *v, size_t vl, uint8_t flags, void *arg)
{
	(void)ng;
	(void)flags;
	(void)arg;
	struct fstream *st = find(f->hd.stream_id, false);
	if (st && !st->bad && f->headers.cat == NGHTTP2_HCAT_REQUEST && h2req_field(&st->rq, n, nl, v, vl) != 0)
		st->bad = true;
	return 0;
}

static bool has_header(const struct http_request *req, const char *name)
{
	return http_find_header(req->headers, req->n_headers, name) != NULL;
}

/* The invariants of one head built from a complete header block. */
static void check_head(struct fstream *st, bool end)
{
	struct evbuffer *out = evbuffer_new();
	bool chunked;
	CHECK(out);
	char *method = st->rq.method.len ? strndup(st->rq.method.p, st->rq.method.len) : NULL;
	char *path = st->rq.path.len ? strndup(st->rq.path.p, st->rq.path.len) : NULL;
	char *auth = st->rq.authority.len ? strndup(st->rq.authority.p, st->rq.authority.len) : NULL;
	bool has_cl = st->rq.has_cl;
	if (h2req_head(&st->rq, end, out, &chunked) == 0) {
		size_t len = evbuffer_get_length(out);
		const char *buf = (const char *)evbuffer_pullup(out, -1);
		static struct http_request req;
		CHECK(method && path);
		int r = http_parse_request(buf, len, MAX_HEAD * 2, UINT64_MAX, &req);
		/* refusals by the HTTP/1.1 parser (a 400 to the client) are fine;
		 * what it takes must be exactly this head and mean the same */
		if (r > 0) {
			CHECK((size_t)r == len);
			CHECK(req.method_len == strlen(method) && memcmp(req.method, method, req.method_len) == 0);
			CHECK(req.target_len == strlen(path) && memcmp(req.target, path, req.target_len) == 0);
			if (auth)
				CHECK(req.host_len == strlen(auth) && memcmp(req.host, auth, req.host_len) == 0);
			CHECK(!has_header(&req, "upgrade") && !has_header(&req, "keep-alive") &&
			      !has_header(&req, "proxy-connection"));
			CHECK(!req.keep_alive && !req.upgrade);
			if (chunked)
				CHECK(req.body == HTTP_BODY_CHUNKED && !end && !has_cl);
			else if (has_cl)
				CHECK(req.body == HTTP_BODY_LENGTH || req.body == HTTP_BODY_NONE);
			else
				CHECK(req.body == HTTP_BODY_NONE);
			for (size_t i = 0; i < req.n_headers; i++) {
				CHECK(!memchr(req.headers[i].value, '\r', req.headers[i].value_len));
				CHECK(!memchr(req.headers[i].value, '\n', req.headers[i].value_len));
			}
		}
	}
	free(method);
	free(path);
	free(auth);
	evbuffer_free(out);
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *arg)
{
	(void)ng;
	(void)arg;
	if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
		return 0;
	struct fstream *st = find(f->hd.stream_id, false);
	if (!st)
		return 0;
	if (!st->bad)
		check_head(st, f->hd.flags & NGHTTP2_FLAG_END_STREAM);
	drop(st);
	return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t code, void *arg)
{
	(void)ng;
	(void)code;
	(void)arg;
	struct fstream *st = find(id, false);
	if (st)
		drop(st);
	return 0;
}

static int on_data(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *d, size_t len, void *arg)
{
	(void)flags;
	(void)d;
	(void)arg;
	nghttp2_session_consume(ng, id, len);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint8_t preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
	nghttp2_session_callbacks *cb;
	nghttp2_option *opt;
	nghttp2_session *ng;
	CHECK(nghttp2_session_callbacks_new(&cb) == 0 && nghttp2_option_new(&opt) == 0);
	nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
	nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
	nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
	nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
	nghttp2_option_set_no_auto_window_update(opt, 1);
	nghttp2_option_set_no_closed_streams(opt, 1);
	CHECK(nghttp2_session_server_new2(&ng, cb, NULL, opt) == 0);
	nghttp2_session_callbacks_del(cb);
	nghttp2_option_del(opt);
	nghttp2_settings_entry iv[] = { { NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 16 } };
	nghttp2_submit_settings(ng, NGHTTP2_FLAG_NONE, iv, 1);
	if (nghttp2_session_mem_recv(ng, preface, sizeof(preface) - 1) == (ssize_t)(sizeof(preface) - 1)) {
		/* in two pieces, split where the first byte says: frames cut anywhere */
		size_t cut = size ? data[0] % (size + 1) : 0;
		if (nghttp2_session_mem_recv(ng, data, cut) >= 0)
			nghttp2_session_mem_recv(ng, data + cut, size - cut);
		const uint8_t *o;
		while (nghttp2_session_mem_send(ng, &o) > 0)
			;
	}
	nghttp2_session_del(ng);
	for (int i = 0; i < MAX_STREAMS; i++)
		if (streams[i].used)
			drop(&streams[i]);
	return 0;
}
