/* libFuzzer harness: http_parse_response on arbitrary bytes, both as the
 * answer to a GET and to a HEAD, invariants checked with abort(): result
 * range, pointers inside the head, 502 on refusal, bodiless statuses,
 * read-until-close never keep-alive, prefixes never disagree. */
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

static int run(const char *buf, size_t len, size_t max_head, bool head,
	struct http_response *res)
{
	int r = http_parse_response(buf, len, max_head, head, res);

	CHECK(r == -2 || r == -1 || (r > 0 && (size_t)r <= len &&
		(size_t)r <= max_head));
	if (r == -1)
		CHECK(res->status == 502 && res->error != NULL);
	if (r <= 0)
		return r;
	size_t n = (size_t)r;
	CHECK(res->status_code >= 100 && res->status_code <= 599);
	CHECK(res->minor_version == 0 || res->minor_version == 1);
	inside(res->reason, res->reason_len, buf, n);
	CHECK(res->n_headers <= HTTP_MAX_HEADERS);
	for (size_t i = 0; i < res->n_headers; i++) {
		inside(res->headers[i].name, res->headers[i].name_len, buf, n);
		inside(res->headers[i].value, res->headers[i].value_len, buf, n);
	}
	if (head || res->status_code < 200 || res->status_code == 204 ||
	    res->status_code == 304)
		CHECK(res->body == HTTP_BODY_NONE);
	if (res->body == HTTP_BODY_CLOSE)
		CHECK(!res->keep_alive);
	if (res->body == HTTP_BODY_LENGTH)
		CHECK(res->content_length > 0);
	CHECK(res->upgrade == (res->status_code == 101));
	return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct http_response res, sub;
	const char *buf = (const char *)data;

	for (int head = 0; head < 2; head++) {
		int r = run(buf, size, 16384, head, &res);
		if (size > 0) {
			int s = run(buf, size - 1, 16384, head, &sub);
			if (r > 0 && size - 1 >= (size_t)r)
				CHECK(s == r);
			else
				CHECK(s == -2 || (s == -1 && r == -1));
		}
	}
	run(buf, size, 48, false, &sub);
	return 0;
}
