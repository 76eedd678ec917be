// UNIT-DEPS: proxy/http.c
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

#define MAX_HEAD 16384
#define MAX_BODY (1u << 20)
#define RAW(s) s, sizeof(s) - 1

/* ---- requests: status 0 = accepted ---- */

struct req_case {
	const char *name;
	const char *raw;
	size_t len;
	int status;
};

#define H11 " HTTP/1.1\r\nHost: a.example\r\n"

static const struct req_case req_cases[] = {
	/* accepted */
	{ "simple", RAW("GET /" H11 "\r\n"), 0 },
	{ "query", RAW("GET /p?q=1&r" H11 "\r\n"), 0 },
	{ "lowercase method token", RAW("get /" H11 "\r\n"), 0 },
	{ "extension method", RAW("PURGE /" H11 "\r\n"), 0 },
	{ "http10 no host", RAW("GET / HTTP/1.0\r\n\r\n"), 0 },
	{ "host with port", RAW("GET / HTTP/1.1\r\nHost: a.example:8080\r\n\r\n"), 0 },
	{ "host ipv6", RAW("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n"), 0 },
	{ "content-length", RAW("POST /" H11 "Content-Length: 5\r\n\r\n"), 0 },
	{ "content-length leading zeros", RAW("POST /" H11 "Content-Length: 007\r\n\r\n"), 0 },
	{ "chunked", RAW("POST /" H11 "Transfer-Encoding: chunked\r\n\r\n"), 0 },
	{ "chunked case and ows", RAW("POST /" H11 "Transfer-Encoding:  ChUnKeD \t\r\n\r\n"), 0 },
	{ "chunked empty list elements", RAW("POST /" H11 "Transfer-Encoding: , chunked ,\r\n\r\n"), 0 },
	{ "absolute-form", RAW("GET http://a.example/x?y" H11 "\r\n"), 0 },
	{ "absolute-form case-insensitive", RAW("GET HTTP://A.EXAMPLE/x" H11 "\r\n"), 0 },
	{ "options asterisk", RAW("OPTIONS *" H11 "\r\n"), 0 },
	{ "obs-text value", RAW("GET /" H11 "X-A: caf\xc3\xa9\r\n\r\n"), 0 },
	{ "empty value", RAW("GET /" H11 "X-Empty:\r\n\r\n"), 0 },
	{ "underscore in other names", RAW("GET /" H11 "X_Custom: 1\r\nContent_Type: x\r\n\r\n"), 0 },
	{ "expect 100-continue", RAW("POST /" H11 "Expect: 100-Continue\r\nContent-Length: 1\r\n\r\n"), 0 },

	/* request-line */
	{ "bad method char", RAW("GE(T /" H11 "\r\n"), 400 },
	{ "method with slash", RAW("GE/T /" H11 "\r\n"), 400 },
	{ "leading space", RAW(" GET /" H11 "\r\n"), 400 },
	{ "leading empty line", RAW("\r\nGET /" H11 "\r\n"), 400 },
	{ "leading bare LF", RAW("\nGET /" H11 "\r\n"), 400 },
	{ "tab separator", RAW("GET\t/" H11 "\r\n"), 400 },
	{ "double space", RAW("GET  /" H11 "\r\n"), 400 },
	{ "space in target", RAW("GET /a b" H11 "\r\n"), 400 },
	{ "NUL in target", RAW("GET /a\0b" H11 "\r\n"), 400 },
	{ "DEL in target", RAW("GET /a\x7f" H11 "\r\n"), 400 },
	{ "high byte in target", RAW("GET /caf\xc3\xa9" H11 "\r\n"), 400 },
	{ "CTL in target", RAW("GET /a\x01" H11 "\r\n"), 400 },
	{ "http/0.9 line", RAW("GET /\r\n\r\n"), 400 },
	{ "trailing space after version", RAW("GET / HTTP/1.1 \r\nHost: a\r\n\r\n"), 400 },
	{ "lowercase version", RAW("GET / http/1.1\r\nHost: a\r\n\r\n"), 400 },
	{ "version one digit", RAW("GET / HTTP/1\r\nHost: a\r\n\r\n"), 400 },
	{ "version two digits", RAW("GET / HTTP/1.10\r\nHost: a\r\n\r\n"), 400 },
	{ "version major two digits", RAW("GET / HTTP/11.1\r\nHost: a\r\n\r\n"), 400 },
	{ "version 2.0", RAW("GET / HTTP/2.0\r\nHost: a\r\n\r\n"), 505 },
	{ "version 0.9", RAW("GET / HTTP/0.9\r\nHost: a\r\n\r\n"), 505 },
	{ "version 1.2", RAW("GET / HTTP/1.2\r\nHost: a\r\n\r\n"), 505 },
	{ "bare LF after request-line", RAW("GET / HTTP/1.1\nHost: a\r\n\r\n"), 400 },
	{ "bare CR after request-line", RAW("GET / HTTP/1.1\rHost: a\r\n\r\n"), 400 },
	{ "relative target", RAW("GET a/b" H11 "\r\n"), 400 },
	{ "asterisk outside OPTIONS", RAW("GET *" H11 "\r\n"), 400 },
	{ "authority-form outside CONNECT", RAW("GET a.example:80" H11 "\r\n"), 400 },
	{ "CONNECT", RAW("CONNECT a.example:443" H11 "\r\n"), 501 },
	{ "unknown scheme", RAW("GET ftp://a.example/" H11 "\r\n"), 400 },
	{ "absolute-form empty authority", RAW("GET http:///x" H11 "\r\n"), 400 },
	{ "absolute-form userinfo", RAW("GET http://u@a.example/" H11 "\r\n"), 400 },
	{ "absolute-form differs from Host", RAW("GET http://b.example/" H11 "\r\n"), 400 },

	/* header syntax */
	{ "space in name", RAW("GET /" H11 "X Y: z\r\n\r\n"), 400 },
	{ "space before colon", RAW("GET /" H11 "Content-Length : 5\r\n\r\n"), 400 },
	{ "tab before colon", RAW("GET /" H11 "Transfer-Encoding\t: chunked\r\n\r\n"), 400 },
	{ "empty name", RAW("GET /" H11 ": z\r\n\r\n"), 400 },
	{ "CTL in name", RAW("GET /" H11 "X\x01: z\r\n\r\n"), 400 },
	{ "high byte in name", RAW("GET /" H11 "X\xc3\xa9: z\r\n\r\n"), 400 },
	{ "missing colon", RAW("GET /" H11 "X-Y\r\n\r\n"), 400 },
	{ "obs-fold", RAW("GET /" H11 "X-A: b\r\n c\r\n\r\n"), 400 },
	{ "obs-fold tab", RAW("GET /" H11 "X-A: b\r\n\tTransfer-Encoding: chunked\r\n\r\n"), 400 },
	{ "whitespace before first header", RAW("GET / HTTP/1.1\r\n Host: a\r\n\r\n"), 400 },
	{ "NUL in value", RAW("GET /" H11 "X: a\0b\r\n\r\n"), 400 },
	{ "CTL in value", RAW("GET /" H11 "X: a\x0b" "b\r\n\r\n"), 400 },
	{ "DEL in value", RAW("GET /" H11 "X: a\x7f\r\n\r\n"), 400 },
	{ "bare CR in value", RAW("GET /" H11 "X: a\rb\r\n\r\n"), 400 },
	{ "bare LF in field", RAW("GET /" H11 "X: a\nY: b\r\n\r\n"), 400 },
	{ "bare LF ending head", RAW("GET /" H11 "\n"), 400 },
	{ "bare CR ending head", RAW("GET /" H11 "\rX"), 400 },

	/* Host */
	{ "missing Host", RAW("GET / HTTP/1.1\r\n\r\n"), 400 },
	{ "repeated Host", RAW("GET /" H11 "Host: a.example\r\n\r\n"), 400 },
	{ "repeated Host http10", RAW("GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n"), 400 },
	{ "empty Host", RAW("GET / HTTP/1.1\r\nHost:\r\n\r\n"), 400 },
	{ "Host with space", RAW("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), 400 },
	{ "Host with userinfo", RAW("GET / HTTP/1.1\r\nHost: u@a\r\n\r\n"), 400 },
	{ "Host with slash", RAW("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"), 400 },
	{ "Host empty port", RAW("GET / HTTP/1.1\r\nHost: a:\r\n\r\n"), 400 },
	{ "Host long port", RAW("GET / HTTP/1.1\r\nHost: a:123456\r\n\r\n"), 400 },
	{ "Host bad pct", RAW("GET / HTTP/1.1\r\nHost: a%zz\r\n\r\n"), 400 },

	/* Content-Length */
	{ "CL plus sign", RAW("POST /" H11 "Content-Length: +5\r\n\r\n"), 400 },
	{ "CL negative", RAW("POST /" H11 "Content-Length: -1\r\n\r\n"), 400 },
	{ "CL hex", RAW("POST /" H11 "Content-Length: 0x5\r\n\r\n"), 400 },
	{ "CL inner space", RAW("POST /" H11 "Content-Length: 1 2\r\n\r\n"), 400 },
	{ "CL comma list same", RAW("POST /" H11 "Content-Length: 5, 5\r\n\r\n"), 400 },
	{ "CL comma list differ", RAW("POST /" H11 "Content-Length: 5, 6\r\n\r\n"), 400 },
	{ "CL empty", RAW("POST /" H11 "Content-Length:\r\n\r\n"), 400 },
	{ "CL overflow", RAW("POST /" H11 "Content-Length: 18446744073709551616\r\n\r\n"), 400 },
	{ "CL duplicate identical", RAW("POST /" H11 "Content-Length: 5\r\nContent-Length: 5\r\n\r\n"), 400 },
	{ "CL duplicate differing", RAW("POST /" H11 "Content-Length: 5\r\ncontent-length: 6\r\n\r\n"), 400 },
	{ "CL too large", RAW("POST /" H11 "Content-Length: 1048577\r\n\r\n"), 413 },
	{ "CL max uint64", RAW("POST /" H11 "Content-Length: 18446744073709551615\r\n\r\n"), 413 },

	/* Transfer-Encoding */
	{ "CL and TE", RAW("POST /" H11 "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"), 400 },
	{ "TE and CL", RAW("POST /" H11 "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"), 400 },
	{ "TE in http10", RAW("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), 400 },
	{ "TE gzip", RAW("POST /" H11 "Transfer-Encoding: gzip\r\n\r\n"), 501 },
	{ "TE identity", RAW("POST /" H11 "Transfer-Encoding: identity\r\n\r\n"), 501 },
	{ "TE gzip, chunked", RAW("POST /" H11 "Transfer-Encoding: gzip, chunked\r\n\r\n"), 501 },
	{ "TE chunked, gzip", RAW("POST /" H11 "Transfer-Encoding: chunked, gzip\r\n\r\n"), 400 },
	{ "TE split headers gzip", RAW("POST /" H11 "Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n"), 400 },
	{ "TE chunked twice", RAW("POST /" H11 "Transfer-Encoding: chunked, chunked\r\n\r\n"), 400 },
	{ "TE chunked in two headers", RAW("POST /" H11 "Transfer-Encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n"), 400 },
	{ "TE empty", RAW("POST /" H11 "Transfer-Encoding:\r\n\r\n"), 400 },
	{ "TE only commas", RAW("POST /" H11 "Transfer-Encoding: ,,\r\n\r\n"), 400 },
	{ "Transfer_Encoding", RAW("POST /" H11 "Transfer_Encoding: chunked\r\n\r\n"), 400 },
	{ "Content_Length", RAW("POST /" H11 "content_length: 5\r\n\r\n"), 400 },
	{ "TE chunked with parameter", RAW("POST /" H11 "Transfer-Encoding: chunked;q=1\r\n\r\n"), 400 },
	{ "TE quoted", RAW("POST /" H11 "Transfer-Encoding: \"chunked\"\r\n\r\n"), 400 },
	{ "TE chunked with junk", RAW("POST /" H11 "Transfer-Encoding: chunked x\r\n\r\n"), 400 },
	{ "TE with vertical tab", RAW("POST /" H11 "Transfer-Encoding: \x0b" "chunked\r\n\r\n"), 400 },

	/* other semantics */
	{ "expectation other", RAW("POST /" H11 "Expect: 200-ok\r\n\r\n"), 417 },
	{ "Connection malformed", RAW("GET /" H11 "Connection: close;\r\n\r\n"), 400 },
};

static void check_request_case(const struct req_case *c)
{
	struct http_request req;
	int r = http_parse_request(c->raw, c->len, MAX_HEAD, MAX_BODY, &req);

	if (c->status == 0) {
		if (r != (int)c->len)
			fail_msg("%s: expected %zu consumed, got %d (%d %s)",
				c->name, c->len, r, req.status,
				req.error ? req.error : "");
	} else {
		if (r != -1 || req.status != c->status)
			fail_msg("%s: expected -1/%d, got %d/%d", c->name,
				c->status, r, req.status);
		assert_non_null(req.error);
	}
	/* every prefix: incomplete, or the same verdict */
	for (size_t n = 0; n < c->len; n++) {
		r = http_parse_request(c->raw, n, MAX_HEAD, MAX_BODY, &req);
		if (r == -2)
			continue;
		if (r != -1 || req.status != c->status)
			fail_msg("%s: prefix %zu gave %d/%d", c->name, n, r,
				req.status);
	}
}

static void test_request_table(void **state)
{
	(void)state;
	assert_true(sizeof req_cases / sizeof req_cases[0] >= 50);
	for (size_t i = 0; i < sizeof req_cases / sizeof req_cases[0]; i++)
		check_request_case(&req_cases[i]);
}

static int parse_req(const char *s, struct http_request *req)
{
	return http_parse_request(s, strlen(s), MAX_HEAD, MAX_BODY, req);
}

static void assert_span(const char *p, size_t n, const char *want)
{
	assert_int_equal(n, strlen(want));
	assert_memory_equal(p, want, n);
}

static void test_request_fields(void **state)
{
	struct http_request req;
	const char *s;
	(void)state;

	s = "GET /p/q?x=1 HTTP/1.1\r\nHost: a.example\r\nX-A:   b c \t\r\n\r\nNEXT";
	assert_int_equal(parse_req(s, &req), (int)strlen(s) - 4);
	assert_span(req.method, req.method_len, "GET");
	assert_span(req.target, req.target_len, "/p/q?x=1");
	assert_span(req.path, req.path_len, "/p/q");
	assert_span(req.host, req.host_len, "a.example");
	assert_int_equal(req.minor_version, 1);
	assert_int_equal(req.n_headers, 2);
	assert_span(req.headers[1].name, req.headers[1].name_len, "X-A");
	assert_span(req.headers[1].value, req.headers[1].value_len, "b c");
	assert_true(req.keep_alive);
	assert_false(req.is_head);
	assert_int_equal(req.body, HTTP_BODY_NONE);

	s = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0042\r\n\r\n";
	assert_true(parse_req(s, &req) > 0);
	assert_int_equal(req.body, HTTP_BODY_LENGTH);
	assert_int_equal(req.content_length, 42);

	s = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n";
	assert_true(parse_req(s, &req) > 0);
	assert_int_equal(req.body, HTTP_BODY_NONE);

	s = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
	assert_true(parse_req(s, &req) > 0);
	assert_int_equal(req.body, HTTP_BODY_CHUNKED);

	s = "GET http://b.example:81?q HTTP/1.1\r\nHost: B.example:81\r\n\r\n";
	assert_true(parse_req(s, &req) > 0);
	assert_span(req.path, req.path_len, "/");
	assert_span(req.host, req.host_len, "B.example:81");

	s = "GET http://b.example/x/y?q HTTP/1.0\r\n\r\n";
	assert_true(parse_req(s, &req) > 0);
	assert_span(req.path, req.path_len, "/x/y");
	assert_span(req.host, req.host_len, "b.example");
	assert_false(req.keep_alive);

	s = "HEAD / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n";
	assert_true(parse_req(s, &req) > 0);
	assert_true(req.is_head);
	assert_true(req.keep_alive);
	assert_null(req.host);

	s = "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n";
	assert_true(parse_req(s, &req) > 0);
	assert_false(req.keep_alive);

	s = "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n"
		"Upgrade: websocket\r\n\r\n";
	assert_true(parse_req(s, &req) > 0);
	assert_true(req.upgrade);
	s = "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n";
	assert_true(parse_req(s, &req) > 0);
	assert_false(req.upgrade);
	s = "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n";
	assert_true(parse_req(s, &req) > 0);
	assert_false(req.upgrade);

	s = "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n";
	assert_true(parse_req(s, &req) > 0);
	assert_true(req.expect_continue);
	s = "POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n";
	assert_true(parse_req(s, &req) > 0);
	assert_false(req.expect_continue);

	s = "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n";
	assert_true(parse_req(s, &req) > 0);
	assert_span(req.path, req.path_len, "*");
}

/* Builds "GET /aaa... HTTP/1.1\r\nHost: a\r\n\r\n" with a line of
 * `line` bytes including CRLF. */
static char *long_line(size_t line)
{
	char *s = malloc(line + 64);
	size_t tlen = line - strlen("GET  HTTP/1.1\r\n");

	assert_non_null(s);
	memcpy(s, "GET /", 5);
	memset(s + 5, 'a', tlen - 1);
	snprintf(s + 4 + tlen, 64, " HTTP/1.1\r\nHost: a\r\n\r\n");
	return s;
}

static void test_request_limits(void **state)
{
	struct http_request req;
	char *s;
	(void)state;

	s = long_line(HTTP_MAX_REQUEST_LINE);
	assert_int_equal(parse_req(s, &req), (int)strlen(s));
	free(s);
	s = long_line(HTTP_MAX_REQUEST_LINE + 1);
	assert_int_equal(parse_req(s, &req), -1);
	assert_int_equal(req.status, 414);
	/* incomplete but already over the limit */
	assert_int_equal(http_parse_request(s, HTTP_MAX_REQUEST_LINE, MAX_HEAD,
		MAX_BODY, &req), -1);
	assert_int_equal(req.status, 414);
	assert_int_equal(http_parse_request(s, HTTP_MAX_REQUEST_LINE - 1,
		MAX_HEAD, MAX_BODY, &req), -2);
	free(s);

	/* HTTP_MAX_HEADERS fields pass, one more is 431 */
	size_t cap = 64 + (HTTP_MAX_HEADERS + 1) * 16, n;
	s = malloc(cap);
	assert_non_null(s);
	n = (size_t)snprintf(s, cap, "GET / HTTP/1.1\r\nHost: a\r\n");
	for (int i = 1; i < HTTP_MAX_HEADERS; i++)
		n += (size_t)snprintf(s + n, cap - n, "X-%03d: v\r\n", i);
	snprintf(s + n, cap - n, "\r\n");
	assert_int_equal(parse_req(s, &req), (int)n + 2);
	assert_int_equal(req.n_headers, HTTP_MAX_HEADERS);
	n += (size_t)snprintf(s + n, cap - n, "X-Over: v\r\n");
	snprintf(s + n, cap - n, "\r\n");
	assert_int_equal(parse_req(s, &req), -1);
	assert_int_equal(req.status, 431);
	/* incomplete, already over the count */
	assert_int_equal(http_parse_request(s, n, MAX_HEAD, MAX_BODY, &req), -1);
	assert_int_equal(req.status, 431);
	free(s);

	/* head size: exactly max_head passes, one byte more is 431 */
	const char *h = "GET / HTTP/1.1\r\nHost: a\r\nX: 0123456789\r\n\r\n";
	size_t hl = strlen(h);
	assert_int_equal(http_parse_request(h, hl, hl, MAX_BODY, &req), (int)hl);
	assert_int_equal(http_parse_request(h, hl, hl - 1, MAX_BODY, &req), -1);
	assert_int_equal(req.status, 431);
	assert_int_equal(http_parse_request(h, hl - 1, hl - 1, MAX_BODY, &req), -1);
	assert_int_equal(req.status, 431);
	assert_int_equal(http_parse_request(h, hl - 2, hl - 1, MAX_BODY, &req), -2);
	/* a request line longer than a small max_head is 431, not 414 */
	assert_int_equal(http_parse_request(h, hl, 10, MAX_BODY, &req), -1);
	assert_int_equal(req.status, 431);

	/* max_body 0 = unlimited */
	h = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551615\r\n\r\n";
	assert_true(http_parse_request(h, strlen(h), MAX_HEAD, 0, &req) > 0);
	assert_true(req.content_length == UINT64_MAX);
}

static void test_request_incremental(void **state)
{
	const char *s = "POST /upload?x HTTP/1.1\r\nHost: a.example\r\n"
		"Transfer-Encoding: chunked\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
	size_t len = strlen(s);
	struct http_request req;
	(void)state;

	for (size_t n = 0; n < len; n++)
		assert_int_equal(http_parse_request(s, n, MAX_HEAD, MAX_BODY, &req), -2);
	assert_int_equal(http_parse_request(s, len, MAX_HEAD, MAX_BODY, &req), (int)len);
	assert_int_equal(req.body, HTTP_BODY_CHUNKED);
	assert_int_equal(req.n_headers, 3);
	assert_span(req.path, req.path_len, "/upload");
}

/* The value and target scanners go 8 bytes at a time: a byte at every
 * offset of a long value or target must be judged like a lone byte. */
static void test_request_every_offset(void **state)
{
	static const unsigned char bad_value[] = { 0x00, 0x01, 0x0b, 0x1f, 0x7f, '\n' };
	static const unsigned char ok_value[] = { '\t', 0x80, 0xff, ' ', 0x7e };
	static const unsigned char bad_target[] = { 0x00, 0x1f, 0x7f, 0x80, 0xff, '\t' };
	char buf[256];
	struct http_request req;
	(void)state;

	for (size_t off = 0; off < 40; off++) {
		for (size_t i = 0; i < sizeof bad_value; i++) {
			int n = snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: a\r\n"
				"X: %040d\r\n\r\n", 0);
			buf[28 + off] = (char)bad_value[i];
			assert_int_equal(http_parse_request(buf, (size_t)n, MAX_HEAD,
				MAX_BODY, &req), -1);
			assert_int_equal(req.status, 400);
		}
		for (size_t i = 0; i < sizeof ok_value; i++) {
			int n = snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: a\r\n"
				"X: %040d\r\n\r\n", 0);
			buf[28 + off] = (char)ok_value[i];
			assert_int_equal(http_parse_request(buf, (size_t)n, MAX_HEAD,
				MAX_BODY, &req), n);
			bool ows = ok_value[i] == ' ' || ok_value[i] == '\t';
			size_t start = off == 0 && ows ? 29 : 28;  /* OWS trimmed */
			size_t want = ows && (off == 0 || off == 39) ? 39 : 40;
			assert_int_equal(req.headers[1].value_len, want);
			assert_ptr_equal(req.headers[1].value, buf + start);
		}
		for (size_t i = 0; i < sizeof bad_target; i++) {
			int n = snprintf(buf, sizeof buf, "GET /%040d HTTP/1.1\r\n"
				"Host: a\r\n\r\n", 0);
			buf[5 + off] = (char)bad_target[i];
			assert_int_equal(http_parse_request(buf, (size_t)n, MAX_HEAD,
				MAX_BODY, &req), -1);
			assert_int_equal(req.status, 400);
		}
	}
}

/* ---- responses ---- */

struct res_case {
	const char *name;
	const char *raw;
	size_t len;
	bool head;
	int result;              /* 1 = accepted, -1 = 502 */
	enum http_body body;
	uint64_t cl;
	bool keep_alive;
};

static const struct res_case res_cases[] = {
	{ "content-length", RAW("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"), false, 1, HTTP_BODY_LENGTH, 5, true },
	{ "chunked", RAW("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), false, 1, HTTP_BODY_CHUNKED, 0, true },
	{ "gzip, chunked", RAW("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), false, 1, HTTP_BODY_CHUNKED, 0, true },
	{ "chunked not last", RAW("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"), false, 1, HTTP_BODY_CLOSE, 0, false },
	{ "TE gzip only", RAW("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"), false, 1, HTTP_BODY_CLOSE, 0, false },
	{ "no framing", RAW("HTTP/1.1 200 OK\r\n\r\n"), false, 1, HTTP_BODY_CLOSE, 0, false },
	{ "204", RAW("HTTP/1.1 204 No Content\r\n\r\n"), false, 1, HTTP_BODY_NONE, 0, true },
	{ "304 with CL", RAW("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"), false, 1, HTTP_BODY_NONE, 0, true },
	{ "HEAD with CL", RAW("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"), true, 1, HTTP_BODY_NONE, 0, true },
	{ "HEAD with chunked", RAW("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), true, 1, HTTP_BODY_NONE, 0, true },
	{ "100 continue", RAW("HTTP/1.1 100 Continue\r\n\r\n"), false, 1, HTTP_BODY_NONE, 0, true },
	{ "101", RAW("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"), false, 1, HTTP_BODY_NONE, 0, true },
	{ "CL zero", RAW("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), false, 1, HTTP_BODY_NONE, 0, true },
	{ "no reason", RAW("HTTP/1.1 200\r\nContent-Length: 1\r\n\r\n"), false, 1, HTTP_BODY_LENGTH, 1, true },
	{ "empty reason", RAW("HTTP/1.1 404 \r\nContent-Length: 1\r\n\r\n"), false, 1, HTTP_BODY_LENGTH, 1, true },
	{ "http10", RAW("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n"), false, 1, HTTP_BODY_LENGTH, 1, false },
	{ "http10 keep-alive", RAW("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n"), false, 1, HTTP_BODY_LENGTH, 1, true },
	{ "close", RAW("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n"), false, 1, HTTP_BODY_LENGTH, 1, false },
	{ "CL and TE", RAW("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"), false, -1, 0, 0, false },
	{ "CL and TE on 204", RAW("HTTP/1.1 204 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"), false, -1, 0, 0, false },
	{ "bad CL", RAW("HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\n"), false, -1, 0, 0, false },
	{ "repeated CL", RAW("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"), false, -1, 0, 0, false },
	{ "chunked twice", RAW("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"), false, -1, 0, 0, false },
	{ "TE in http10", RAW("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), false, -1, 0, 0, false },
	{ "http2", RAW("HTTP/2.0 200 OK\r\n\r\n"), false, -1, 0, 0, false },
	{ "http12", RAW("HTTP/1.2 200 OK\r\n\r\n"), false, -1, 0, 0, false },
	{ "two digit status", RAW("HTTP/1.1 20 OK\r\n\r\n"), false, -1, 0, 0, false },
	{ "four digit status", RAW("HTTP/1.1 2000 OK\r\n\r\n"), false, -1, 0, 0, false },
	{ "status 600", RAW("HTTP/1.1 600 X\r\n\r\n"), false, -1, 0, 0, false },
	{ "status 099", RAW("HTTP/1.1 099 X\r\n\r\n"), false, -1, 0, 0, false },
	{ "CTL in reason", RAW("HTTP/1.1 200 O\x01K\r\n\r\n"), false, -1, 0, 0, false },
	{ "bare LF", RAW("HTTP/1.1 200 OK\nContent-Length: 1\r\n\r\n"), false, -1, 0, 0, false },
	{ "obs-fold", RAW("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n"), false, -1, 0, 0, false },
	{ "space before colon", RAW("HTTP/1.1 200 OK\r\nContent-Length : 1\r\n\r\n"), false, -1, 0, 0, false },
	{ "garbage", RAW("garbage\r\n\r\n"), false, -1, 0, 0, false },
};

static void test_response_table(void **state)
{
	struct http_response res;
	(void)state;

	for (size_t i = 0; i < sizeof res_cases / sizeof res_cases[0]; i++) {
		const struct res_case *c = &res_cases[i];
		int r = http_parse_response(c->raw, c->len, MAX_HEAD, c->head, &res);
		if (c->result == 1) {
			if (r != (int)c->len || res.body != c->body ||
			    res.content_length != c->cl ||
			    res.keep_alive != c->keep_alive)
				fail_msg("%s: got %d body=%d cl=%llu ka=%d (%s)",
					c->name, r, res.body,
					(unsigned long long)res.content_length,
					res.keep_alive, res.error ? res.error : "");
		} else if (r != -1 || res.status != 502 || res.error == NULL) {
			fail_msg("%s: expected -1/502, got %d/%d", c->name, r,
				res.status);
		}
		for (size_t n = 0; n < c->len; n++) {
			r = http_parse_response(c->raw, n, MAX_HEAD, c->head, &res);
			if (r != -2 && !(r == -1 && c->result == -1))
				fail_msg("%s: prefix %zu gave %d", c->name, n, r);
		}
	}
}

static void test_response_fields(void **state)
{
	struct http_response res;
	const char *s = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
		"Connection: Upgrade\r\n\r\n\x81\x05hello";
	(void)state;

	assert_int_equal(http_parse_response(s, strlen(s), MAX_HEAD, false, &res),
		(int)strlen(s) - 7);
	assert_int_equal(res.status_code, 101);
	assert_true(res.upgrade);
	assert_span(res.reason, res.reason_len, "Switching Protocols");
	assert_int_equal(res.n_headers, 2);

	s = "HTTP/1.1 200 OK\r\nX: 1\r\n\r\n";
	assert_int_equal(http_parse_response(s, strlen(s), 10, false, &res), -1);
	assert_int_equal(res.status, 502);
	assert_int_equal(http_parse_response(s, 5, 10, false, &res), -2);
}

/* ---- chunked decoder ---- */

/* Feeds `in` as a stream arriving in two pieces split at `split` (or one
 * byte at a time when bytewise), keeping unconsumed framing bytes as a
 * caller would; data is copied to out. In the data state the decoder gets
 * a NULL buffer. Returns 0 at the end of the body (*used = bytes consumed),
 * -1 malformed, -2 the input ended first. */
static int decode(const char *in, size_t n, size_t split, bool bytewise,
	uint64_t max_body, char *out, size_t *outlen, size_t *used,
	struct http_chunked *c)
{
	size_t avail = bytewise ? (n > 0) : split, pos = 0;
	int is_data;

	http_chunked_init(c, max_body);
	*outlen = 0;
	for (int guard = 0; guard < 100000; guard++) {
		int r;
		if (http_chunked_in_data(c))
			r = http_chunked_step(c, NULL, avail - pos, &is_data);
		else
			r = http_chunked_step(c, in + pos, avail - pos, &is_data);
		if (r == 0) {
			*used = pos;
			return 0;
		}
		if (r == -1)
			return -1;
		if (r == -2) {
			if (avail == n)
				return -2;
			avail = bytewise ? avail + 1 : n;
			continue;
		}
		assert_true((size_t)r <= avail - pos);
		if (is_data) {
			memcpy(out + *outlen, in + pos, (size_t)r);
			*outlen += (size_t)r;
		}
		pos += (size_t)r;
		assert_true(c->total == *outlen);
	}
	fail_msg("decoder did not terminate");
	return -1;
}

struct chunk_case {
	const char *name;
	const char *raw;
	size_t len;
	int result;              /* 0 ok, -1 malformed, -2 truncated */
	const char *data;
	size_t used;             /* 0 = whole input */
};

static const struct chunk_case chunk_cases[] = {
	{ "simple", RAW("5\r\nhello\r\n0\r\n\r\n"), 0, "hello", 0 },
	{ "two chunks", RAW("3\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n"), 0, "abc0123456789", 0 },
	{ "hex lower upper", RAW("a\r\n0123456789\r\n0\r\n\r\n"), 0, "0123456789", 0 },
	{ "leading zeros", RAW("0003\r\nabc\r\n000\r\n\r\n"), 0, "abc", 0 },
	{ "extensions", RAW("3;a=b;c=\"x\\\"y\";d\r\nabc\r\n0;e\r\n\r\n"), 0, "abc", 0 },
	{ "extension BWS", RAW("3 ; a = b\r\nabc\r\n0\r\n\r\n"), 0, "abc", 0 },
	{ "trailers", RAW("3\r\nabc\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\n"), 0, "abc", 0 },
	{ "pipelined bytes left", RAW("1\r\na\r\n0\r\n\r\nGET"), 0, "a", 11 },
	{ "empty body", RAW("0\r\n\r\n"), 0, "", 0 },
	{ "truncated data", RAW("5\r\nhel"), -2, NULL, 0 },
	{ "truncated trailer", RAW("0\r\nX: 1\r\n"), -2, NULL, 0 },
	{ "negative", RAW("-5\r\nhello\r\n0\r\n\r\n"), -1, NULL, 0 },
	{ "plus", RAW("+5\r\nhello\r\n0\r\n\r\n"), -1, NULL, 0 },
	{ "leading space", RAW(" 5\r\nhello\r\n0\r\n\r\n"), -1, NULL, 0 },
	{ "trailing space", RAW("5 \r\nhello\r\n0\r\n\r\n"), -1, NULL, 0 },
	{ "0x prefix", RAW("0x5\r\nhello\r\n0\r\n\r\n"), -1, NULL, 0 },
	{ "empty size", RAW("\r\nhello\r\n0\r\n\r\n"), -1, NULL, 0 },
	{ "non hex", RAW("g\r\n"), -1, NULL, 0 },
	{ "bare LF size", RAW("5\nhello\r\n0\r\n\r\n"), -1, NULL, 0 },
	{ "bare CR size", RAW("5\rhello\r\n0\r\n\r\n"), -1, NULL, 0 },
	{ "data too long", RAW("5\r\nhelloX\r\n0\r\n\r\n"), -1, NULL, 0 },
	{ "data bare LF", RAW("5\r\nhello\n0\r\n\r\n"), -1, NULL, 0 },
	{ "data CR only", RAW("5\r\nhello\rX0\r\n\r\n"), -1, NULL, 0 },
	{ "overflow", RAW("10000000000000000\r\n"), -1, NULL, 0 },
	{ "empty ext name", RAW("5;\r\nhello\r\n0\r\n\r\n"), -1, NULL, 0 },
	{ "ext missing value", RAW("5;a=\r\nhello\r\n0\r\n\r\n"), -1, NULL, 0 },
	{ "ext bad char", RAW("5;a=b c\r\nhello\r\n0\r\n\r\n"), -1, NULL, 0 },
	{ "ext unterminated quote", RAW("5;a=\"b\r\nhello\r\n0\r\n\r\n"), -1, NULL, 0 },
	{ "ext NUL", RAW("5;a\0\r\nhello\r\n0\r\n\r\n"), -1, NULL, 0 },
	{ "bad trailer name", RAW("0\r\nX Y: 1\r\n\r\n"), -1, NULL, 0 },
	{ "trailer obs-fold", RAW("0\r\nX: 1\r\n 2\r\n\r\n"), -1, NULL, 0 },
	{ "trailer CTL", RAW("0\r\nX: \x01\r\n\r\n"), -1, NULL, 0 },
	{ "end bare LF", RAW("0\r\n\n"), -1, NULL, 0 },
};

static void test_chunked_table(void **state)
{
	static char out[256];
	struct http_chunked c;
	size_t outlen, used;
	(void)state;

	for (size_t i = 0; i < sizeof chunk_cases / sizeof chunk_cases[0]; i++) {
		const struct chunk_case *k = &chunk_cases[i];
		size_t want_used = k->used ? k->used : k->len;
		for (size_t split = 0; split <= k->len + 1; split++) {
			bool bytewise = split == k->len + 1;
			int r = decode(k->raw, k->len, bytewise ? 0 : split,
				bytewise, 0, out, &outlen, &used, &c);
			if (r != k->result)
				fail_msg("%s split %zu: got %d", k->name, split, r);
			if (r != 0)
				continue;
			if (used != want_used || outlen != strlen(k->data) ||
			    memcmp(out, k->data, outlen) != 0)
				fail_msg("%s split %zu: wrong data or length",
					k->name, split);
			/* after the end, the decoder stays ended */
			int is_data;
			assert_int_equal(http_chunked_step(&c, "x", 1, &is_data), 0);
		}
	}
}

static void test_chunked_limits(void **state)
{
	static char out[64], big[20000];
	struct http_chunked c;
	size_t outlen, used, n;
	int is_data;
	(void)state;

	/* max_body is checked at the size line: 5 + 4 > 8 */
	const char *s = "5\r\nhello\r\n4\r\nabcd\r\n0\r\n\r\n";
	assert_int_equal(decode(s, strlen(s), strlen(s), false, 8, out, &outlen,
		&used, &c), -1);
	assert_true(c.too_large);
	assert_int_equal(c.total, 5);
	assert_int_equal(decode(s, strlen(s), strlen(s), false, 9, out, &outlen,
		&used, &c), 0);
	assert_false(c.too_large);

	/* a size line at the limit is refused, shorter ones pass */
	n = (size_t)snprintf(big, sizeof big, "1;");
	memset(big + n, 'a', 5000);
	assert_int_equal(decode(big, n + 5000, n + 5000, false, 0, out, &outlen,
		&used, &c), -1);
	http_chunked_init(&c, 0);
	assert_int_equal(http_chunked_step(&c, big, 4095, &is_data), -2);
	assert_int_equal(http_chunked_step(&c, big, 4096, &is_data), -1);

	/* trailers over 16 KiB in total */
	n = (size_t)snprintf(big, sizeof big, "0\r\n");
	for (int i = 0; n < 17000; i++)
		n += (size_t)snprintf(big + n, sizeof big - n,
			"X-%04d: %0100d\r\n", i, 0);
	n += (size_t)snprintf(big + n, sizeof big - n, "\r\n");
	assert_int_equal(decode(big, n, n, false, 0, out, &outlen, &used, &c), -1);
	assert_int_equal(decode(big, 3000, 3000, false, 0, out, &outlen, &used,
		&c), -2);

	/* largest size accepted, data state hands out what is there */
	http_chunked_init(&c, 0);
	assert_int_equal(http_chunked_step(&c, "ffffffffffffffff\r\n", 18,
		&is_data), 18);
	assert_int_equal(is_data, 0);
	assert_true(http_chunked_in_data(&c));
	assert_int_equal(http_chunked_step(&c, NULL, 1000, &is_data), 1000);
	assert_int_equal(is_data, 1);
	assert_int_equal(c.remaining, UINT64_MAX - 1000);
	assert_int_equal(http_chunked_step(&c, NULL, 0, &is_data), -2);
}

/* ---- helpers ---- */

static void test_helpers(void **state)
{
	struct http_header h[2] = {
		{ "Host", 4, "a", 1 }, { "X-Forwarded-For", 15, "b", 1 },
	};
	(void)state;

	assert_true(http_token_eq("Content-LENGTH", 14, "content-length"));
	assert_false(http_token_eq("Content-Length", 13, "content-length"));
	assert_false(http_token_eq("Content-Lengths", 15, "content-length"));
	assert_true(http_token_eq("", 0, ""));
	assert_ptr_equal(http_find_header(h, 2, "x-forwarded-for"), &h[1]);
	assert_ptr_equal(http_find_header(h, 2, "HOST"), &h[0]);
	assert_null(http_find_header(h, 2, "x-forwarded"));
	assert_string_equal(http_reason(502), "Bad Gateway");
	assert_string_equal(http_reason(431), "Request Header Fields Too Large");
	assert_string_equal(http_reason(505), "HTTP Version Not Supported");
	assert_string_equal(http_reason(299), "Success");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_request_table),
		cmocka_unit_test(test_request_fields),
		cmocka_unit_test(test_request_limits),
		cmocka_unit_test(test_request_incremental),
		cmocka_unit_test(test_request_every_offset),
		cmocka_unit_test(test_response_table),
		cmocka_unit_test(test_response_fields),
		cmocka_unit_test(test_chunked_table),
		cmocka_unit_test(test_chunked_limits),
		cmocka_unit_test(test_helpers),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
