/* h2req — the header fields of an HTTP/2 request, as nghttp2 delivers them
 * (it has checked framing, HPACK, pseudo-header order and
 * content-length), checked again against RFC 9113 §8 and turned into one
 * HTTP/1.1 request head for conn.c. The head is built from validated
 * pieces only, so it cannot say anything the fields did not: no CR/LF/NUL
 * anywhere, lowercase token names, no connection-specific fields, one
 * Host (from :authority), cookie crumbs joined (§8.2.3). conn.c parses it
 * again with the strict HTTP/1.1 parser before anything reaches a backend. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

#include "proxy_int.h"

static bool tchar(unsigned char ch, bool upper_ok)
{
	if ((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || (upper_ok && ch >= 'A' && ch <= 'Z'))
		return true;
	return ch && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static bool token(const uint8_t *s, size_t n, bool upper_ok)
{
	for (size_t i = 0; i < n; i++)
		if (!tchar(s[i], upper_ok))
			return false;
	return n > 0;
}

/* A field value: visible ASCII, SP, HTAB and obs-text; no CR/LF/NUL, and no
 * whitespace at either end (§8.2.1). */
static bool value_ok(const uint8_t *v, size_t n)
{
	if (n && (v[0] == ' ' || v[0] == '\t' || v[n - 1] == ' ' || v[n - 1] == '\t'))
		return false;
	for (size_t i = 0; i < n; i++)
		if ((v[i] < 0x20 && v[i] != '\t') || v[i] == 0x7f)
			return false;
	return true;
}

/* No whitespace or controls at all (:path, :authority, :method). */
static bool visible(const uint8_t *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (v[i] <= 0x20 || v[i] == 0x7f)
			return false;
	return n > 0;
}

static bool name_is(const uint8_t *n, size_t nl, const char *lit)
{
	return nl == strlen(lit) && memcmp(n, lit, nl) == 0;
}

static int put(struct h2req *r, struct h2buf *b, const void *s, size_t n)
{
	if (n > r->max - r->total)
		return -2;
	if (!n)
		return 0;
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p)
			return -2;
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	r->total += n;
	return 0;
}

static int pseudo(struct h2req *r, struct h2buf *b, const uint8_t *v, size_t vl)
{
	if (b->len || r->regular_seen)
		return -1;               /* twice, or after a regular field */
	return put(r, b, v, vl);
}

void h2req_init(struct h2req *r, size_t max)
{
	memset(r, 0, sizeof(*r));
	r->max = max;
}

void h2req_free(struct h2req *r)
{
	free(r->fields.p);
	free(r->cookie.p);
	free(r->method.p);
	free(r->path.p);
	free(r->authority.p);
	free(r->host.p);
	memset(r, 0, sizeof(*r));
}

int h2req_field(struct h2req *r, const uint8_t *n, size_t nl, const uint8_t *v, size_t vl)
{
	if (!value_ok(v, vl))
		return -1;
	if (nl && n[0] == ':') {
		if (name_is(n, nl, ":method"))
			return token(v, vl, true) ? pseudo(r, &r->method, v, vl) : -1;
		if (name_is(n, nl, ":path"))
			return visible(v, vl) ? pseudo(r, &r->path, v, vl) : -1;
		if (name_is(n, nl, ":authority"))
			return visible(v, vl) && !memchr(v, '@', vl) ? pseudo(r, &r->authority, v, vl) : -1;
		if (name_is(n, nl, ":scheme")) {
			if (r->scheme || r->regular_seen || !(name_is(v, vl, "https") || name_is(v, vl, "http")))
				return -1;
			r->scheme = true;
			return 0;
		}
		return -1;                /* :protocol (no RFC 8441) or unknown */
	}
	if (!token(n, nl, false))
		return -1;               /* uppercase or not a token */
	r->regular_seen = true;
	if (name_is(n, nl, "connection") || name_is(n, nl, "keep-alive") ||
	    name_is(n, nl, "proxy-connection") || name_is(n, nl, "transfer-encoding") ||
	    name_is(n, nl, "upgrade"))
		return -1;               /* connection-specific (§8.2.2) */
	if (name_is(n, nl, "te"))
		return name_is(v, vl, "trailers") ? 0 : -1;
	if (name_is(n, nl, "host"))
		return r->host.len ? -1 : visible(v, vl) ? put(r, &r->host, v, vl) : -1;
	if (name_is(n, nl, "cookie")) {
		int e = r->cookie.len ? put(r, &r->cookie, "; ", 2) : 0;
		return e ? e : put(r, &r->cookie, v, vl);
	}
	if (name_is(n, nl, "content-length"))
		r->has_cl = true;
	int e;
	if ((e = put(r, &r->fields, n, nl)) || (e = put(r, &r->fields, ": ", 2)) ||
	    (e = put(r, &r->fields, v, vl)) || (e = put(r, &r->fields, "\r\n", 2)))
		return e;
	return 0;
}

int h2req_head(struct h2req *r, bool end_stream, struct evbuffer *out, bool *chunked)
{
	const struct h2buf *host = r->authority.len ? &r->authority : &r->host;
	*chunked = false;
	if (!r->method.len || !r->scheme || !r->path.len || !host->len)
		return -1;               /* CONNECT (no :scheme/:path) lands here too */
	if (r->path.p[0] != '/' && !(r->path.len == 1 && r->path.p[0] == '*' &&
	    r->method.len == 7 && memcmp(r->method.p, "OPTIONS", 7) == 0))
		return -1;
	if (r->host.len && r->authority.len &&
	    (r->host.len != r->authority.len || strncasecmp(r->host.p, r->authority.p, r->host.len) != 0))
		return -1;               /* §8.3.1: Host must name the same */
	evbuffer_add(out, r->method.p, r->method.len);
	evbuffer_add(out, " ", 1);
	evbuffer_add(out, r->path.p, r->path.len);
	evbuffer_add(out, " HTTP/1.1\r\nhost: ", 17);
	evbuffer_add(out, host->p, host->len);
	evbuffer_add(out, "\r\n", 2);
	if (r->fields.len)
		evbuffer_add(out, r->fields.p, r->fields.len);
	if (r->cookie.len) {
		evbuffer_add(out, "cookie: ", 8);
		evbuffer_add(out, r->cookie.p, r->cookie.len);
		evbuffer_add(out, "\r\n", 2);
	}
	if (!end_stream && !r->has_cl) {
		evbuffer_add(out, "transfer-encoding: chunked\r\n", 28);
		*chunked = true;
	}
	/* one request per conn: the conn ends with its response */
	evbuffer_add(out, "connection: close\r\n\r\n", 21);
	return 0;
}
