/* http — strict, incremental, in-place HTTP/1.x parser (RFC 9112), in the
 * style of picohttpparser. Used for client requests and upstream responses.
 *
 * Return convention of the parse functions: >0 bytes consumed (the whole
 * head, through the blank line), -2 incomplete (call again with more bytes;
 * the parser re-scans from the start, heads are small), -1 malformed: the
 * message must be refused and the connection closed; `status` says which
 * answer to give (400, 413, 414, 431, 501, 505, or 502 for responses) and
 * `error` a short reason for the log and the error body.
 * Pointers in the result point into the caller's buffer. */
#ifndef PMD_HTTP_H
#define PMD_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HTTP_MAX_HEADERS 100
#define HTTP_MAX_REQUEST_LINE 8192

struct http_header {
	const char *name;
	size_t name_len;
	const char *value;       /* leading/trailing OWS stripped */
	size_t value_len;
};

enum http_body {
	HTTP_BODY_NONE = 0,      /* no body */
	HTTP_BODY_LENGTH,        /* content_length bytes */
	HTTP_BODY_CHUNKED,       /* Transfer-Encoding: chunked */
	HTTP_BODY_CLOSE,         /* responses only: until the upstream closes */
};

struct http_request {
	const char *method;  size_t method_len;
	const char *target;  size_t target_len;   /* as sent */
	const char *path;    size_t path_len;     /* target without query, origin-form */
	int minor_version;                        /* 0 or 1 */
	struct http_header headers[HTTP_MAX_HEADERS];
	size_t n_headers;
	/* derived, validated */
	const char *host;    size_t host_len;     /* Host (or absolute-form authority) */
	enum http_body body;
	uint64_t content_length;
	bool keep_alive;         /* per version + Connection */
	bool expect_continue;    /* Expect: 100-continue */
	bool upgrade;            /* Connection: upgrade + Upgrade present */
	bool is_head;
	/* set on -1 */
	int status;
	const char *error;
};

/* Limits: the request line may not exceed HTTP_MAX_REQUEST_LINE (414), the
 * head may not exceed max_head bytes or HTTP_MAX_HEADERS fields (431), a
 * Content-Length over max_body is 413. */
int http_parse_request(const char *buf, size_t len, size_t max_head,
	uint64_t max_body, struct http_request *req);

struct http_response {
	int status_code;
	int minor_version;
	const char *reason;  size_t reason_len;
	struct http_header headers[HTTP_MAX_HEADERS];
	size_t n_headers;
	enum http_body body;
	uint64_t content_length;
	bool keep_alive;
	bool upgrade;            /* 101 Switching Protocols */
	int status;              /* set on -1: 502 */
	const char *error;
};

/* `request_was_head` and the status decide bodiless responses (1xx, 204,
 * 304, HEAD). 1xx other than 101 are returned like any head: the caller
 * forwards them and parses the next one. */
int http_parse_response(const char *buf, size_t len, size_t max_head,
	bool request_was_head, struct http_response *res);

/* Incremental chunked-body decoder for streaming through evbuffers.
 * http_chunked_step() looks at the bytes at the current position:
 *   >0: that many bytes are one kind: *is_data = 1 body data (forward them;
 *       in the data state `buf` may be NULL, only `len` is looked at),
 *       *is_data = 0 framing (chunk size line, CRLF, trailers: drop them);
 *    0: the body ended (last chunk and trailers consumed, nothing taken);
 *   -2: need more bytes (framing is incomplete in buf[0..len));
 *   -1: malformed (bad size, overflow, extension, missing CRLF, bad trailer).
 * Chunk-size lines and trailer fields are limited to small sizes. */
struct http_chunked {
	int state;
	uint64_t remaining;      /* data bytes left in the current chunk */
	uint64_t total;          /* body bytes so far */
	uint64_t max_body;       /* 0 = unlimited; over it -> -1 with too_large */
	size_t trailer_bytes;
	bool too_large;
};
void http_chunked_init(struct http_chunked *c, uint64_t max_body);
int http_chunked_step(struct http_chunked *c, const char *buf, size_t len, int *is_data);
bool http_chunked_in_data(const struct http_chunked *c);

/* Helpers */
const struct http_header *http_find_header(const struct http_header *h, size_t n,
	const char *name);                    /* case-insensitive, first match */
bool http_token_eq(const char *a, size_t alen, const char *lit); /* case-insensitive */
const char *http_reason(int status);     /* "Bad Gateway" ... */

#endif
