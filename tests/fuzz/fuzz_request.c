/* libFuzzer harness: http_parse_request on arbitrary bytes, with the
 * parser's invariants checked (abort() on violation):
 *  - the result is -2, -1 with a known status and an error, or 0 < r <= len
 *    and r <= max_head;
 *  - every pointer in the result lies inside the consumed head (path may be
 *    the literal "/" for an absolute-form target without a path);
 *  - the derived fields are consistent (version, body kind, length limit);
 *  - shorter prefixes never succeed and never disagree on a refusal. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

#define CHECK(x) do { if (!(x)) abort(); } while (0)

static void inside(const char *p, size_t n, const char *b, size_t len)
{
	CHECK(p != NULL);
	CHECK(p >= b && n <= len && (size_t)(p - b) <= len - n);
}

static int run(const char *buf, size_t len, size_t max_head, uint64_t max_body,
	struct http_request *req)
{
	int r = http_parse_request(buf, len, max_head, max_body, req);

	CHECK(r == -2 || r == -1 || (r > 0 && (size_t)r <= len &&
		(size_t)r <= max_head));
	if (r == -1) {
		CHECK(req->error != NULL);
		CHECK(req->status == 400 || req->status == 413 ||
			req->status == 414 || req->status == 417 ||
			req->status == 431 || req->status == 501 ||
			req->status == 505);
	}
	if (r <= 0)
		return r;
	size_t n = (size_t)r;
	CHECK(n >= 16);     /* "M / HTTP/1.0\r\n\r\n" */
	CHECK(memcmp(buf + n - 4, "\r\n\r\n", 4) == 0);
	inside(req->method, req->method_len, buf, n);
	inside(req->target, req->target_len, buf, n);
	CHECK(req->method_len > 0 && req->target_len > 0);
	if (req->path_len == 1 && req->path[0] == '/' &&
	    (req->path < buf || req->path >= buf + n))
		; /* literal "/" */
	else
		inside(req->path, req->path_len, buf, n);
	if (req->host != NULL)
		inside(req->host, req->host_len, buf, n);
	CHECK(req->host != NULL || req->minor_version == 0);
	CHECK(req->minor_version == 0 || req->minor_version == 1);
	CHECK(req->n_headers <= HTTP_MAX_HEADERS);
	for (size_t i = 0; i < req->n_headers; i++) {
		const struct http_header *h = &req->headers[i];
		inside(h->name, h->name_len, buf, n);
		inside(h->value, h->value_len, buf, n);
		CHECK(h->name_len > 0);
		CHECK(memchr(h->value, '\r', h->value_len) == NULL);
		CHECK(memchr(h->value, '\n', h->value_len) == NULL);
		CHECK(memchr(h->value, '\0', h->value_len) == NULL);
	}
	CHECK(req->body == HTTP_BODY_NONE || req->body == HTTP_BODY_LENGTH ||
		req->body == HTTP_BODY_CHUNKED);
	if (req->body == HTTP_BODY_LENGTH)
		CHECK(req->content_length > 0 &&
			(max_body == 0 || req->content_length <= max_body));
	if (req->body == HTTP_BODY_CHUNKED)
		CHECK(req->minor_version == 1 &&
			http_find_header(req->headers, req->n_headers,
			"content-length") == NULL);
	return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct http_request req, sub;
	const char *buf = (const char *)data;
	int r, s;

	r = run(buf, size, 16384, 1 << 20, &req);
	int status = req.status;
	/* prefixes: incomplete, or the same refusal */
	size_t cuts[2] = { size / 2, size > 0 ? size - 1 : 0 };
	for (int i = 0; i < 2; i++) {
		s = run(buf, cuts[i], 16384, 1 << 20, &sub);
		if (r > 0 && cuts[i] >= (size_t)r)
			CHECK(s == r);
		else
			CHECK(s == -2 || (s == -1 && r == -1 &&
				sub.status == status));
	}
	/* a small head limit exercises the 414/431 paths */
	run(buf, size, 64, 10, &sub);
	return 0;
}
