/* http — strict, incremental, in-place HTTP/1.x parser (RFC 9112).
 *
 * Single pass over the head with 256-entry class tables, no allocation,
 * no per-byte function calls. Errors are decided by the bytes seen so far,
 * so a prefix of a message yields -2 or the same -1 verdict as the whole
 * message: feeding byte by byte gives the same result as feeding at once.
 *
 * Strict choices beyond the letter of RFC 9112 (all refuse, never guess):
 * leading empty lines before the request-line (400), repeated
 * Content-Length even with identical values (400), HTTP/x.y other than
 * 1.0 and 1.1 (505, including 1.2), empty Host (400), non-token elements
 * in Connection (400), any expectation other than 100-continue (417),
 * Content_Length and Transfer_Encoding in requests (400: framing headers
 * to CGI/WSGI servers, which read '-' and '_' alike). */
#include "http.h"

#include <string.h>

enum {
	C_TCHAR = 1,   /* token character (RFC 9110 5.6.2) */
	C_FIELD = 2,   /* field-vchar / obs-text / SP / HTAB */
	C_VCHAR = 4,   /* visible ASCII: request-target bytes */
	C_HEX = 8,
	C_REGNAME = 16, /* unreserved / sub-delims / '%' (uri-host reg-name) */
	C_QDTEXT = 32, /* quoted-string text */
};

#define IN(c, lo, hi) ((c) >= (lo) && (c) <= (hi))
#define ALNUM(c) (IN(c, '0', '9') || IN(c, 'a', 'z') || IN(c, 'A', 'Z'))
#define TCHAR(c) (ALNUM(c) || (c) == '!' || (c) == '#' || (c) == '$' || \
	(c) == '%' || (c) == '&' || (c) == '\'' || (c) == '*' || (c) == '+' || \
	(c) == '-' || (c) == '.' || (c) == '^' || (c) == '_' || (c) == '`' || \
	(c) == '|' || (c) == '~')
#define VCHAR(c) IN(c, 0x21, 0x7e)
#define FIELD(c) (VCHAR(c) || (c) >= 0x80 || (c) == ' ' || (c) == '\t')
#define HEX(c) (IN(c, '0', '9') || IN(c, 'a', 'f') || IN(c, 'A', 'F'))
#define REGNAME(c) (ALNUM(c) || (c) == '-' || (c) == '.' || (c) == '_' || \
	(c) == '~' || (c) == '!' || (c) == '$' || (c) == '&' || (c) == '\'' || \
	(c) == '(' || (c) == ')' || (c) == '*' || (c) == '+' || (c) == ',' || \
	(c) == ';' || (c) == '=' || (c) == '%')
#define QDTEXT(c) ((c) == '\t' || (c) == ' ' || (c) == 0x21 || \
	IN(c, 0x23, 0x5b) || IN(c, 0x5d, 0x7e) || (c) >= 0x80)
#define CLS(c) ((TCHAR(c) ? C_TCHAR : 0) | (FIELD(c) ? C_FIELD : 0) | \
	(VCHAR(c) ? C_VCHAR : 0) | (HEX(c) ? C_HEX : 0) | \
	(REGNAME(c) ? C_REGNAME : 0) | (QDTEXT(c) ? C_QDTEXT : 0))
#define R4(b) CLS(b), CLS((b) + 1), CLS((b) + 2), CLS((b) + 3)
#define R16(b) R4(b), R4((b) + 4), R4((b) + 8), R4((b) + 12)
#define R64(b) R16(b), R16((b) + 16), R16((b) + 32), R16((b) + 48)

static const unsigned char cls[256] = {
	R64(0), R64(64), R64(128), R64(192)
};

#define IS(c, k) (cls[(unsigned char)(c)] & (k))
#define OWS(c) ((c) == ' ' || (c) == '\t')

/* Chunk-size line (with extensions) and trailer section limits. */
#define CHUNK_LINE_MAX 4096
#define TRAILERS_MAX 16384

/* Word-at-a-time scanning (SWAR): 8 bytes per step while none of them
 * needs a closer look. The lowest flagged byte of a word is exact (borrows
 * only spill upwards), so on little-endian the scan stops on that byte and
 * the byte loop after it decides; elsewhere it stops at the word start. */
#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull
#define ANY_LESS(x, n) (((x) - ONES * (n)) & ~(x) & HIGHS)   /* n <= 128 */
#define ANY_ZERO(x) (((x) - ONES) & ~(x) & HIGHS)
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define FIRST_FLAGGED(m) ((size_t)__builtin_ctzll(m) >> 3)
#else
#define FIRST_FLAGGED(m) ((size_t)0)
#endif

static inline uint64_t load8(const unsigned char *p)
{
	uint64_t x;

	memcpy(&x, p, 8);
	return x;
}

/* Skips bytes 0x20-0x7e and 0x80-0xff (HTAB is left to the byte loop). */
static inline const unsigned char *skip_field_words(const unsigned char *p,
	const unsigned char *end)
{
	while (end - p >= 8) {
		uint64_t x = load8(p);
		uint64_t m = ANY_LESS(x, 0x20) | ANY_ZERO(x ^ (ONES * 0x7f));
		if (m)
			return p + FIRST_FLAGGED(m);
		p += 8;
	}
	return p;
}

/* Skips visible ASCII 0x21-0x7e. */
static inline const unsigned char *skip_vchar_words(const unsigned char *p,
	const unsigned char *end)
{
	while (end - p >= 8) {
		uint64_t x = load8(p);
		uint64_t m = ANY_LESS(x, 0x21) | (x & HIGHS) |
			ANY_ZERO(x ^ (ONES * 0x7f));
		if (m)
			return p + FIRST_FLAGGED(m);
		p += 8;
	}
	return p;
}

static inline unsigned char lower(unsigned char c)
{
	return IN(c, 'A', 'Z') ? (unsigned char)(c | 0x20) : c;
}

/* Case-insensitive equality of two byte runs of length n. */
static bool ci_eq(const char *a, const char *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
			return false;
	return true;
}

bool http_token_eq(const char *a, size_t alen, const char *lit)
{
	size_t i;

	for (i = 0; i < alen; i++) {
		if (lit[i] == '\0' || lower((unsigned char)a[i]) !=
		    lower((unsigned char)lit[i]))
			return false;
	}
	return lit[i] == '\0';
}

const struct http_header *http_find_header(const struct http_header *h,
	size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (http_token_eq(h[i].name, h[i].name_len, name))
			return &h[i];
	return NULL;
}

const char *http_reason(int status)
{
	switch (status) {
	case 100: return "Continue";
	case 101: return "Switching Protocols";
	case 200: return "OK";
	case 201: return "Created";
	case 202: return "Accepted";
	case 204: return "No Content";
	case 206: return "Partial Content";
	case 301: return "Moved Permanently";
	case 302: return "Found";
	case 303: return "See Other";
	case 304: return "Not Modified";
	case 307: return "Temporary Redirect";
	case 308: return "Permanent Redirect";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 409: return "Conflict";
	case 411: return "Length Required";
	case 413: return "Content Too Large";
	case 414: return "URI Too Long";
	case 415: return "Unsupported Media Type";
	case 417: return "Expectation Failed";
	case 421: return "Misdirected Request";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	case 505: return "HTTP Version Not Supported";
	}
	if (status >= 100 && status < 200) return "Informational";
	if (status >= 200 && status < 300) return "Success";
	if (status >= 300 && status < 400) return "Redirection";
	if (status >= 400 && status < 500) return "Client Error";
	return "Server Error";
}

/* One field line "name: value CRLF" at *pp, not beyond end. Returns 1 with
 * *h filled and *pp past the CRLF, -2 when the line is incomplete, -1 with
 * *err when malformed. The caller has excluded a line starting with CR,
 * LF, SP or HTAB. */
static int field_line(const unsigned char **pp, const unsigned char *end,
	struct http_header *h, const char **err)
{
	const unsigned char *p = *pp, *name = p, *value, *vend;

	while (end - p >= 4 && IS(p[0], C_TCHAR) && IS(p[1], C_TCHAR) &&
	    IS(p[2], C_TCHAR) && IS(p[3], C_TCHAR))
		p += 4;
	while (p < end && IS(*p, C_TCHAR))
		p++;
	if (p == end)
		return -2;
	if (*p != ':') {
		*err = OWS(*p) ? "whitespace before colon in header field"
			: "invalid character in header field name";
		return -1;
	}
	if (p == name) {
		*err = "empty header field name";
		return -1;
	}
	h->name = (const char *)name;
	h->name_len = (size_t)(p - name);
	p++;
	while (p < end && OWS(*p))
		p++;
	value = p;
	p = skip_field_words(p, end);
	while (p < end && IS(*p, C_FIELD))
		p++;
	if (p == end)
		return -2;
	if (*p != '\r') {
		*err = *p == '\n' ? "bare LF in header field"
			: "control character in header field value";
		return -1;
	}
	if (p + 1 == end)
		return -2;
	if (p[1] != '\n') {
		*err = "bare CR in header field";
		return -1;
	}
	vend = p;
	while (vend > value && OWS(vend[-1]))
		vend--;
	h->value = (const char *)value;
	h->value_len = (size_t)(vend - value);
	*pp = p + 2;
	return 1;
}

/* Header fields from p through the blank line, within [p, end). Returns the
 * offset from buf past the blank line, -2 incomplete, -1 with *err
 * (*too_many set when over HTTP_MAX_HEADERS). */
static long parse_headers(const unsigned char *buf, const unsigned char *p,
	const unsigned char *end, struct http_header *hdrs, size_t *n,
	const char **err, bool *too_many)
{
	int r;

	for (;;) {
		if (p == end)
			return -2;
		switch (*p) {
		case '\r':
			if (p + 1 == end)
				return -2;
			if (p[1] != '\n') {
				*err = "bare CR at end of head";
				return -1;
			}
			return (long)(p + 2 - buf);
		case '\n':
			*err = "bare LF in head";
			return -1;
		case ' ':
		case '\t':
			*err = *n == 0 ? "whitespace before first header field"
				: "obsolete line folding";
			return -1;
		}
		if (*n == HTTP_MAX_HEADERS) {
			*err = "too many header fields";
			*too_many = true;
			return -1;
		}
		r = field_line(&p, end, &hdrs[*n], err);
		if (r != 1)
			return r;
		(*n)++;
	}
}

/* 1*DIGIT, decimal, no overflow. */
static int parse_content_length(const char *v, size_t n, uint64_t *out)
{
	uint64_t x = 0;

	if (n == 0)
		return -1;
	for (size_t i = 0; i < n; i++) {
		unsigned d = (unsigned char)v[i] - '0';
		if (d > 9 || x > (UINT64_MAX - d) / 10)
			return -1;
		x = x * 10 + d;
	}
	*out = x;
	return 0;
}

/* Elements of the Transfer-Encoding fields, combined in order. */
struct te_info {
	unsigned chunked;        /* times "chunked" appears */
	unsigned unknown;        /* other codings */
	unsigned elements;
	bool chunked_last;
	bool bad;                /* syntax error, or parameters on chunked */
};

static const unsigned char *skip_ows(const unsigned char *p,
	const unsigned char *end)
{
	while (p < end && OWS(*p))
		p++;
	return p;
}

/* token / quoted-string at p; returns the byte after it or NULL. */
static const unsigned char *token_or_quoted(const unsigned char *p,
	const unsigned char *end)
{
	const unsigned char *s = p;

	if (p < end && *p == '"') {
		for (p++; p < end; p++) {
			if (*p == '"')
				return p + 1;
			if (*p == '\\') {
				if (++p == end || !IS(*p, C_FIELD))
					return NULL;
			} else if (!IS(*p, C_QDTEXT)) {
				return NULL;
			}
		}
		return NULL;
	}
	while (p < end && IS(*p, C_TCHAR))
		p++;
	return p == s ? NULL : p;
}

/* One list value "a, b ;p=v, c" (RFC 9110 5.6.1: empty elements ignored):
 * calls back per element with its token and whether it had parameters.
 * Returns -1 on a syntax error. */
typedef void (*elem_fn)(void *arg, const char *tok, size_t len, bool params);

static int list_scan(const char *value, size_t len, elem_fn fn, void *arg)
{
	const unsigned char *p = (const unsigned char *)value, *end = p + len;

	for (;;) {
		const unsigned char *tok;
		bool params = false;

		p = skip_ows(p, end);
		if (p == end)
			return 0;
		if (*p == ',') {
			p++;
			continue;
		}
		tok = p;
		while (p < end && IS(*p, C_TCHAR))
			p++;
		if (p == tok)
			return -1;
		fn(arg, (const char *)tok, (size_t)(p - tok), false);
		for (;;) {
			const unsigned char *q = skip_ows(p, end);
			if (q == end || *q != ';') {
				p = q;
				break;
			}
			params = true;
			q = skip_ows(q + 1, end);
			p = q;
			while (p < end && IS(*p, C_TCHAR))
				p++;
			if (p == q)
				return -1;
			q = skip_ows(p, end);
			if (q == end || *q != '=')
				return -1;
			p = token_or_quoted(skip_ows(q + 1, end), end);
			if (p == NULL)
				return -1;
		}
		if (params)
			fn(arg, NULL, 0, true);
		if (p != end && *p != ',')
			return -1;
	}
}

static void te_elem(void *arg, const char *tok, size_t len, bool params)
{
	struct te_info *t = arg;

	if (params) {       /* parameters of the element just reported */
		if (t->chunked_last)
			t->bad = true;
		return;
	}
	t->elements++;
	t->chunked_last = http_token_eq(tok, len, "chunked");
	if (t->chunked_last)
		t->chunked++;
	else
		t->unknown++;
}

struct conn_info {
	bool close, keep_alive, upgrade;
};

static void conn_elem(void *arg, const char *tok, size_t len, bool params)
{
	struct conn_info *c = arg;

	if (params)
		return;
	if (http_token_eq(tok, len, "close"))
		c->close = true;
	else if (http_token_eq(tok, len, "keep-alive"))
		c->keep_alive = true;
	else if (http_token_eq(tok, len, "upgrade"))
		c->upgrade = true;
}

/* A name that is `lit` once '_' is read as '-' (and has a '_'): CGI and
 * WSGI servers (Gunicorn) map both to '_', so "Content_Length" could frame
 * a body there while pmd ignores it. */
static bool underscore_alias(const char *n, size_t len, const char *lit)
{
	bool any = false;
	size_t i;

	for (i = 0; i < len; i++) {
		unsigned char a = (unsigned char)n[i];
		if (lit[i] == '\0')
			return false;
		if (a == '_') {
			any = true;
			a = '-';
		}
		if (lower(a) != (unsigned char)lit[i])
			return false;
	}
	return any && lit[i] == '\0';
}

/* Framing headers shared by requests and responses. */
struct framing {
	struct te_info te;
	struct conn_info conn;
	unsigned n_cl, n_te, n_host, n_upgrade;
	const struct http_header *host;
	uint64_t cl;
	bool cl_bad, conn_bad, expect_other, expect_continue;
	bool alias;              /* Content_Length, Transfer_Encoding */
};

static void scan_framing(const struct http_header *h, size_t n,
	struct framing *f)
{
	memset(f, 0, sizeof *f);
	for (size_t i = 0; i < n; i++, h++) {
		switch (h->name_len) {
		case 4:
			if (http_token_eq(h->name, 4, "host")) {
				f->n_host++;
				f->host = h;
			}
			break;
		case 6:
			if (http_token_eq(h->name, 6, "expect")) {
				if (http_token_eq(h->value, h->value_len,
				    "100-continue"))
					f->expect_continue = true;
				else
					f->expect_other = true;
			}
			break;
		case 7:
			if (http_token_eq(h->name, 7, "upgrade") &&
			    h->value_len > 0)
				f->n_upgrade++;
			break;
		case 10:
			if (http_token_eq(h->name, 10, "connection") &&
			    list_scan(h->value, h->value_len, conn_elem,
			    &f->conn) < 0)
				f->conn_bad = true;
			break;
		case 14:
			if (http_token_eq(h->name, 14, "content-length")) {
				f->n_cl++;
				if (parse_content_length(h->value, h->value_len,
				    &f->cl) < 0)
					f->cl_bad = true;
			} else if (underscore_alias(h->name, 14, "content-length")) {
				f->alias = true;
			}
			break;
		case 17:
			if (http_token_eq(h->name, 17, "transfer-encoding")) {
				f->n_te++;
				if (list_scan(h->value, h->value_len, te_elem,
				    &f->te) < 0)
					f->te.bad = true;
			} else if (underscore_alias(h->name, 17, "transfer-encoding")) {
				f->alias = true;
			}
			break;
		}
	}
	if (f->n_te > 0 && f->te.elements == 0)
		f->te.bad = true;
}

/* uri-host [ ":" port ]: reg-name (pct-encoded checked) or IP-literal in
 * brackets; port 1 to 5 digits. */
static bool host_valid(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s, *end = p + n;

	if (n == 0)
		return false;
	if (*p == '[') {
		const unsigned char *q = ++p;
		while (p < end && (IS(*p, C_HEX) || *p == ':' || *p == '.'))
			p++;
		if (p == q || p == end || *p != ']')
			return false;
		p++;
	} else {
		const unsigned char *q = p;
		while (p < end && IS(*p, C_REGNAME)) {
			if (*p == '%' && (end - p < 3 || !IS(p[1], C_HEX) ||
			    !IS(p[2], C_HEX)))
				return false;
			p++;
		}
		if (p == q)
			return false;
	}
	if (p == end)
		return true;
	if (*p != ':' || end - p < 2 || end - p > 6)
		return false;
	for (p++; p < end; p++)
		if (!IN(*p, '0', '9'))
			return false;
	return true;
}

static int req_fail(struct http_request *req, int status, const char *error)
{
	req->status = status;
	req->error = error;
	return -1;
}

/* Target form, path and host (RFC 9112 3.2); host is the Host field when
 * present (the absolute-form authority must then match it), else the
 * absolute-form authority. */
static int req_target(struct http_request *req, const struct framing *f)
{
	const char *t = req->target, *end = t + req->target_len, *q;
	size_t skip = 0;

	if (f->host != NULL) {
		req->host = f->host->value;
		req->host_len = f->host->value_len;
	}
	if (t[0] == '/') {
		q = memchr(t, '?', req->target_len);
		req->path = t;
		req->path_len = (size_t)((q ? q : end) - t);
		return 0;
	}
	if (req->target_len == 1 && t[0] == '*') {
		if (req->method_len != 7 || memcmp(req->method, "OPTIONS", 7) != 0)
			return req_fail(req, 400, "asterisk-form target outside OPTIONS");
		req->path = t;
		req->path_len = 1;
		return 0;
	}
	if (req->target_len > 7 && ci_eq(t, "http://", 7))
		skip = 7;
	else if (req->target_len > 8 && ci_eq(t, "https://", 8))
		skip = 8;
	if (skip == 0)
		return req_fail(req, 400, "invalid request-target");
	const char *auth = t + skip, *a = auth;
	while (a < end && *a != '/' && *a != '?')
		a++;
	size_t auth_len = (size_t)(a - auth);
	if (!host_valid(auth, auth_len))
		return req_fail(req, 400, "invalid authority in absolute-form target");
	if (f->host != NULL && (f->host->value_len != auth_len ||
	    !ci_eq(auth, f->host->value, auth_len)))
		return req_fail(req, 400, "absolute-form authority differs from Host");
	if (f->host == NULL) {
		req->host = auth;
		req->host_len = auth_len;
	}
	if (a < end && *a == '/') {
		q = memchr(a, '?', (size_t)(end - a));
		req->path = a;
		req->path_len = (size_t)((q ? q : end) - a);
	} else {
		req->path = "/";
		req->path_len = 1;
	}
	return 0;
}

/* Semantics of a complete, syntactically valid head. */
static int req_semantics(struct http_request *req, uint64_t max_body)
{
	struct framing f;
	bool v11 = req->minor_version == 1;

	scan_framing(req->headers, req->n_headers, &f);
	if (req->method_len == 7 && memcmp(req->method, "CONNECT", 7) == 0)
		return req_fail(req, 501, "CONNECT is not supported");
	req->is_head = req->method_len == 4 && memcmp(req->method, "HEAD", 4) == 0;
	if (f.n_host > 1)
		return req_fail(req, 400, "repeated Host header field");
	if (f.n_host == 0 && v11)
		return req_fail(req, 400, "missing Host header field");
	if (f.host != NULL && !host_valid(f.host->value, f.host->value_len))
		return req_fail(req, 400, "invalid Host header field");
	if (req_target(req, &f) < 0)
		return -1;
	if (f.alias)
		return req_fail(req, 400, "Content_Length or Transfer_Encoding header field");
	if (f.n_cl > 0 && f.n_te > 0)
		return req_fail(req, 400, "both Content-Length and Transfer-Encoding");
	if (f.n_te > 0) {
		if (!v11)
			return req_fail(req, 400, "Transfer-Encoding in an HTTP/1.0 request");
		if (f.te.bad)
			return req_fail(req, 400, "malformed Transfer-Encoding");
		if (f.te.chunked > 1)
			return req_fail(req, 400, "chunked applied more than once");
		/* RFC 9112 6.3: chunked present but not final leaves the
		 * length undeterminable (400, a MUST), which outranks the
		 * unknown coding after it (501, a SHOULD). */
		if (f.te.chunked == 1 && !f.te.chunked_last)
			return req_fail(req, 400, "chunked is not the final transfer coding");
		if (f.te.unknown > 0)
			return req_fail(req, 501, "unsupported transfer coding");
		req->body = HTTP_BODY_CHUNKED;
	} else if (f.n_cl > 0) {
		/* Strict: a repeated Content-Length is refused even when the
		 * values are identical (RFC 9112 6.3 allows merging them). */
		if (f.n_cl > 1)
			return req_fail(req, 400, "repeated Content-Length");
		if (f.cl_bad)
			return req_fail(req, 400, "invalid Content-Length");
		if (max_body > 0 && f.cl > max_body)
			return req_fail(req, 413, "request body too large");
		req->content_length = f.cl;
		req->body = f.cl > 0 ? HTTP_BODY_LENGTH : HTTP_BODY_NONE;
	}
	if (f.conn_bad)
		return req_fail(req, 400, "malformed Connection header field");
	if (f.expect_other)
		return req_fail(req, 417, "unsupported expectation");
	/* RFC 9110 10.1.1: 100-continue in an HTTP/1.0 request is ignored. */
	req->expect_continue = f.expect_continue && v11;
	req->keep_alive = !f.conn.close && (v11 || f.conn.keep_alive);
	req->upgrade = f.conn.upgrade && f.n_upgrade > 0;
	return 0;
}

int http_parse_request(const char *buf, size_t len, size_t max_head,
	uint64_t max_body, struct http_request *req)
{
	static const char http_name[] = "HTTP/";
	const unsigned char *b = (const unsigned char *)buf, *p = b, *end, *s;
	size_t rl_limit = max_head < HTTP_MAX_REQUEST_LINE ? max_head
		: HTTP_MAX_REQUEST_LINE;
	const char *err = NULL;
	bool too_many = false;
	int major, minor;
	long r;

	req->method = req->target = req->path = req->host = NULL;
	req->method_len = req->target_len = req->path_len = req->host_len = 0;
	req->minor_version = 0;
	req->n_headers = 0;
	req->body = HTTP_BODY_NONE;
	req->content_length = 0;
	req->keep_alive = req->expect_continue = req->upgrade = false;
	req->is_head = false;
	req->status = 0;
	req->error = NULL;

	/* request-line: the whole line, CRLF included, within rl_limit */
	end = b + (len < rl_limit ? len : rl_limit);
	while (p < end && IS(*p, C_TCHAR))
		p++;
	if (p == end)
		goto line_incomplete;
	if (*p != ' ' || p == b)
		return req_fail(req, 400, p == b && (*p == '\r' || *p == '\n')
			? "empty line before request-line" : "invalid method");
	req->method = buf;
	req->method_len = (size_t)(p - b);
	s = ++p;
	p = skip_vchar_words(p, end);
	while (p < end && IS(*p, C_VCHAR))
		p++;
	if (p == end)
		goto line_incomplete;
	if (*p != ' ' || p == s)
		return req_fail(req, 400, *p == '\r' || *p == '\n'
			? "missing HTTP version" : p == s ? "empty request-target"
			: "invalid character in request-target");
	req->target = (const char *)s;
	req->target_len = (size_t)(p - s);
	p++;
	for (int i = 0; i < 5; i++, p++) {
		if (p == end)
			goto line_incomplete;
		if (*p != http_name[i])
			return req_fail(req, 400, "malformed HTTP version");
	}
	if (p == end)
		goto line_incomplete;
	if (!IN(*p, '0', '9'))
		return req_fail(req, 400, "malformed HTTP version");
	major = *p++ - '0';
	if (p == end)
		goto line_incomplete;
	if (*p++ != '.')
		return req_fail(req, 400, "malformed HTTP version");
	if (p == end)
		goto line_incomplete;
	if (!IN(*p, '0', '9'))
		return req_fail(req, 400, "malformed HTTP version");
	minor = *p++ - '0';
	if (p == end)
		goto line_incomplete;
	if (*p != '\r')
		return req_fail(req, 400, *p == '\n' ? "bare LF after request-line"
			: "malformed HTTP version");
	if (++p == end)
		goto line_incomplete;
	if (*p++ != '\n')
		return req_fail(req, 400, "bare CR in request-line");
	if (major != 1 || minor > 1)
		return req_fail(req, 505, "unsupported HTTP version");
	req->minor_version = minor;

	end = b + (len < max_head ? len : max_head);
	r = parse_headers(b, p, end, req->headers, &req->n_headers, &err,
		&too_many);
	if (r == -2) {
		if (len >= max_head)
			return req_fail(req, 431, "request head too large");
		return -2;
	}
	if (r == -1)
		return req_fail(req, too_many ? 431 : 400, err);
	if (req_semantics(req, max_body) < 0)
		return -1;
	return (int)r;

line_incomplete:
	if (len >= rl_limit)
		return req_fail(req, rl_limit == HTTP_MAX_REQUEST_LINE ? 414 : 431,
			rl_limit == HTTP_MAX_REQUEST_LINE ? "request-line too long"
			: "request head too large");
	return -2;
}

static int res_fail(struct http_response *res, const char *error)
{
	res->status = 502;
	res->error = error;
	return -1;
}

int http_parse_response(const char *buf, size_t len, size_t max_head,
	bool request_was_head, struct http_response *res)
{
	static const char http_name[] = "HTTP/1.";
	const unsigned char *b = (const unsigned char *)buf, *p = b, *end;
	const char *err = NULL;
	bool too_many = false;
	struct framing f;
	int code = 0;
	long r;

	res->status_code = 0;
	res->minor_version = 0;
	res->reason = NULL;
	res->reason_len = 0;
	res->n_headers = 0;
	res->body = HTTP_BODY_NONE;
	res->content_length = 0;
	res->keep_alive = res->upgrade = false;
	res->status = 0;
	res->error = NULL;

	end = b + (len < max_head ? len : max_head);
	/* status-line = HTTP-version SP 3DIGIT SP [reason] CRLF; the SP
	 * before an empty reason may be missing (common, harmless). */
	for (int i = 0; i < 7; i++, p++) {
		if (p == end)
			goto incomplete;
		if (*p != http_name[i])
			return res_fail(res, "malformed status-line");
	}
	if (p == end)
		goto incomplete;
	if (*p != '0' && *p != '1')
		return res_fail(res, "unsupported HTTP version in response");
	res->minor_version = *p++ - '0';
	if (p == end)
		goto incomplete;
	if (*p++ != ' ')
		return res_fail(res, "malformed status-line");
	for (int i = 0; i < 3; i++, p++) {
		if (p == end)
			goto incomplete;
		if (!IN(*p, '0', '9'))
			return res_fail(res, "malformed status code");
		code = code * 10 + (*p - '0');
	}
	if (code < 100 || code > 599)
		return res_fail(res, "status code out of range");
	res->status_code = code;
	if (p == end)
		goto incomplete;
	if (*p == ' ') {
		const unsigned char *s = ++p;
		while (p < end && IS(*p, C_FIELD))
			p++;
		res->reason = (const char *)s;
		res->reason_len = (size_t)(p - s);
	} else {
		res->reason = (const char *)p;
	}
	if (p == end)
		goto incomplete;
	if (*p != '\r')
		return res_fail(res, *p == '\n' ? "bare LF in status-line"
			: "malformed status-line");
	if (++p == end)
		goto incomplete;
	if (*p++ != '\n')
		return res_fail(res, "bare CR in status-line");

	r = parse_headers(b, p, end, res->headers, &res->n_headers, &err,
		&too_many);
	if (r == -2)
		goto incomplete;
	if (r == -1)
		return res_fail(res, err);

	scan_framing(res->headers, res->n_headers, &f);
	if (f.n_cl > 0 && f.n_te > 0)
		return res_fail(res, "both Content-Length and Transfer-Encoding");
	if (f.n_cl > 1)
		return res_fail(res, "repeated Content-Length");
	if (f.cl_bad)
		return res_fail(res, "invalid Content-Length");
	if (f.n_te > 0 && res->minor_version == 0)
		return res_fail(res, "Transfer-Encoding in an HTTP/1.0 response");
	if (f.te.bad || f.te.chunked > 1)
		return res_fail(res, "malformed Transfer-Encoding");
	if (f.conn_bad)
		return res_fail(res, "malformed Connection header field");

	res->upgrade = code == 101;
	res->keep_alive = !f.conn.close &&
		(res->minor_version == 1 || f.conn.keep_alive);
	if (request_was_head || code < 200 || code == 204 || code == 304) {
		res->body = HTTP_BODY_NONE;
	} else if (f.n_te > 0) {
		/* RFC 9112 6.3: chunked not final -> read until close */
		res->body = f.te.chunked_last ? HTTP_BODY_CHUNKED : HTTP_BODY_CLOSE;
	} else if (f.n_cl > 0) {
		res->content_length = f.cl;
		res->body = f.cl > 0 ? HTTP_BODY_LENGTH : HTTP_BODY_NONE;
	} else {
		res->body = HTTP_BODY_CLOSE;
	}
	if (res->body == HTTP_BODY_CLOSE)
		res->keep_alive = false;
	return (int)r;

incomplete:
	if (len >= max_head)
		return res_fail(res, "response head too large");
	return -2;
}

enum { CH_SIZE = 0, CH_DATA, CH_DATA_CRLF, CH_TRAILER, CH_DONE };

void http_chunked_init(struct http_chunked *c, uint64_t max_body)
{
	memset(c, 0, sizeof *c);
	c->state = CH_SIZE;
	c->max_body = max_body;
}

bool http_chunked_in_data(const struct http_chunked *c)
{
	return c->state == CH_DATA;
}

/* chunk = chunk-size [ chunk-ext ] CRLF, the whole line within
 * CHUNK_LINE_MAX; chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] ). */
static int chunk_size_line(struct http_chunked *c, const unsigned char *b,
	size_t len)
{
	size_t lim = len < CHUNK_LINE_MAX ? len : CHUNK_LINE_MAX;
	const unsigned char *lf = memchr(b, '\n', lim), *p = b, *end, *q;
	uint64_t size = 0;

	if (lf == NULL)
		return len >= CHUNK_LINE_MAX ? -1 : -2;
	if (lf == b || lf[-1] != '\r')
		return -1;
	end = lf - 1;
	while (p < end && IS(*p, C_HEX)) {
		if (size >> 60)
			return -1;
		size = size << 4 | (uint64_t)(*p <= '9' ? *p - '0'
			: (*p | 0x20) - 'a' + 10);
		p++;
	}
	if (p == b)
		return -1;
	for (;;) {
		q = skip_ows(p, end);
		if (q == end || *q != ';')
			break;
		q = skip_ows(q + 1, end);
		p = q;
		while (p < end && IS(*p, C_TCHAR))
			p++;
		if (p == q)
			return -1;
		q = skip_ows(p, end);
		if (q < end && *q == '=') {
			p = token_or_quoted(skip_ows(q + 1, end), end);
			if (p == NULL)
				return -1;
		}
	}
	if (p != end)
		return -1;
	if (size == 0) {
		c->state = CH_TRAILER;
	} else {
		if (c->max_body > 0 && size > c->max_body - c->total) {
			c->too_large = true;
			return -1;
		}
		c->remaining = size;
		c->state = CH_DATA;
	}
	return (int)(lf + 1 - b);
}

/* One trailer field line (validated like a header, then dropped) or the
 * final CRLF. */
static int chunk_trailer(struct http_chunked *c, const unsigned char *b,
	size_t len)
{
	size_t budget = TRAILERS_MAX - c->trailer_bytes;
	const unsigned char *p = b;
	struct http_header h;
	const char *err;
	int r;

	if (len == 0)
		return -2;
	if (b[0] == '\r') {
		if (len < 2)
			return -2;
		if (b[1] != '\n')
			return -1;
		c->state = CH_DONE;
		return 2;
	}
	if (b[0] == '\n' || OWS(b[0]))
		return -1;
	r = field_line(&p, b + (len < budget ? len : budget), &h, &err);
	if (r == -2)
		return len >= budget ? -1 : -2;
	if (r < 0)
		return -1;
	c->trailer_bytes += (size_t)(p - b);
	return (int)(p - b);
}

int http_chunked_step(struct http_chunked *c, const char *buf, size_t len,
	int *is_data)
{
	const unsigned char *b = (const unsigned char *)buf;
	size_t n;

	*is_data = 0;
	switch (c->state) {
	case CH_SIZE:
		return chunk_size_line(c, b, len);
	case CH_DATA:
		if (len == 0)
			return -2;
		n = len < c->remaining ? len : (size_t)c->remaining;
		if (n > (1u << 30))
			n = 1u << 30;
		c->remaining -= n;
		c->total += n;
		if (c->remaining == 0)
			c->state = CH_DATA_CRLF;
		*is_data = 1;
		return (int)n;
	case CH_DATA_CRLF:
		if (len == 0)
			return -2;
		if (b[0] != '\r')
			return -1;
		if (len < 2)
			return -2;
		if (b[1] != '\n')
			return -1;
		c->state = CH_SIZE;
		return 2;
	case CH_TRAILER:
		return chunk_trailer(c, b, len);
	default:
		return 0;
	}
}
