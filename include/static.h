/* static — files and folders pmd serves itself ([static NAME], proxy/static.c).
 *
 * A small interface between a protocol and the files, so that HTTP/1.1
 * (proxy/conn.c) and HTTP/2 answer alike: a request goes in (method, path,
 * the few headers that matter), a reply comes out (status, header fields,
 * and a body source: a range of an open file, or a short text). The
 * protocol writes the head its own way and moves the body with
 * static_body_segment (sendfile on plain sockets) or static_body_read
 * (bounded reads, for TLS and HTTP/2 frames).
 *
 * Open files are cached per worker (struct static_cache, one thread only):
 * open + fstat of a path happen once per STATIC_CACHE_TTL_MS, and the cache
 * is emptied when the snapshot changes (reload). Paths under a folder are
 * resolved beneath it (openat2 RESOLVE_BENEATH): `..`, encoded slashes,
 * backslashes, NUL and symlinks leaving the folder are refused. */
#ifndef PMD_STATIC_H
#define PMD_STATIC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http.h"
#include "snapshot.h"

struct evbuffer;

#define STATIC_CACHE_TTL_MS 2000   /* a cached open file is re-opened after this */
#define STATIC_CACHE_MAX 512       /* entries per worker (each up to 3 files) */
#define STATIC_MAX_HDRS 8

struct static_cache;
struct static_file;

/* Content-Type by the name's extension (case-insensitive), e.g. "text/css;
 * charset=utf-8"; "application/octet-stream" when unknown. */
const char *static_mime_type(const char *name);

/* True for a hashed (content-addressed) file name: a dot-separated part of
 * the last segment, neither first nor last, of 8 to 64 hex digits
 * (Django ManifestStaticFilesStorage "base.0123456789ab.css", Create
 * React App "main.1a2b3c4d.js", "2.1a2b3c4d.chunk.js"). */
bool static_name_hashed(const char *name, size_t len);

/* The path below a folder route: `path` (raw, no query) minus the first
 * `skip` bytes, percent-decoded into out[0..cap) (NUL-terminated). 0 for
 * a plain relative file name; -2 for a folder (nothing, or a trailing '/':
 * there is no listing); -1 for anything else: "." or ".." segments (also
 * encoded), segments starting with '.', empty segments, encoded '/', '\\'
 * raw or encoded, NUL or other control bytes raw or encoded, bad escapes,
 * longer than cap. */
int static_rel_path(const char *path, size_t len, size_t skip, char *out, size_t cap);

struct static_cache *static_cache_new(void);
void static_cache_free(struct static_cache *c);     /* NULL ok */

struct static_req {
	const char *method; size_t method_len;
	const char *path;   size_t path_len;    /* without the query */
	const struct http_header *headers; size_t n_headers;
};

/* A range of one open file, or nothing (f NULL). Holds a reference on the
 * file (static_body_release drops it); copies of it must not both be
 * released. */
struct static_body {
	struct static_file *f;
	uint64_t off, left;
};

struct static_hdr {
	const char *name;        /* "ETag" (HTTP/1.1 spelling) */
	const char *lname;       /* "etag" (HTTP/2 spelling) */
	char value[80];
};

struct static_reply {
	int status;              /* 200, 206, 304, 404, 405, 416, 500 */
	const char *content_type;
	uint64_t length;         /* Content-Length (0 for 304) */
	struct static_hdr hdrs[STATIC_MAX_HDRS];  /* besides Content-Type/-Length */
	size_t n_hdrs;
	struct static_body body; /* status 200/206 and not HEAD: the bytes to send */
	const char *text;        /* else a short body (length bytes), or NULL */
};

/* Answer `rq` from static `st` of snapshot `snap` (its generation keys the
 * cache). Returns 1 with *out filled (call static_body_release on
 * out->body once done), or 0: not answered, route the request (a folder
 * with fallback = route has no such file, or the method is not GET or
 * HEAD). Never blocks on more than the
 * open/fstat of a cache miss. */
int static_serve(struct static_cache *c, const struct snapshot *snap, const struct snap_static *st,
	const struct static_req *rq, struct static_reply *out);

/* The reply's header fields as HTTP/1.1 lines ("ETag: ...\r\n"), into
 * buf[0..cap) NUL-terminated. Returns the length, or -1 if cap is short. */
int static_reply_lines(const struct static_reply *r, char *buf, size_t cap);

/* Queue up to `max` bytes of the body on `out` as a file segment (sendfile
 * when out drains to a socket: EVBUFFER_FLAG_DRAINS_TO_FD). Advances the
 * body. Bytes queued, or -1. */
int64_t static_body_segment(struct static_body *b, struct evbuffer *out, uint64_t max);
/* Read up to `max` bytes of the body into `out` (pread: bounded blocking
 * on disk). Advances the body. Bytes read (0 only when nothing is left),
 * or -1 (read error, or the file shrank). */
int64_t static_body_read(struct static_body *b, struct evbuffer *out, size_t max);
/* Read up to `len` bytes of the body into buf (HTTP/2 DATA frames).
 * Same returns as static_body_read. */
int64_t static_body_read_buf(struct static_body *b, void *buf, size_t len);
void static_body_release(struct static_body *b);

#endif
