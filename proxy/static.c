/* static — [static] files and folders, see include/static.h.
 *
 * Disk on the event loop: a cache miss costs openat2 + fstat of the file
 * and of its .br/.gz siblings (metadata, normally in the dentry and inode
 * caches); hits cost nothing until STATIC_CACHE_TTL_MS has passed, then the
 * entry is opened again, so a file replaced on disk (collectstatic) is
 * picked up within that time. Bodies go out with sendfile(2) on plain
 * sockets (the kernel reads the page cache) and with bounded pread(2)
 * calls on TLS, a piece per write turn: a cold disk stalls a worker for
 * one read at most, like nginx without aio threads. Nothing is read into
 * memory ahead of the socket.
 *
 * Why not a thread pool for open/stat: a hit is the common case (the
 * cache), a miss is a metadata lookup the kernel usually answers from its
 * caches, and handing each miss to a thread and back costs two wakeups on
 * every first request and a queue of requests whose sockets must wait.
 *
 * Resolution beneath a folder is openat2(RESOLVE_BENEATH |
 * RESOLVE_NO_MAGICLINKS) on the folder's fd (Linux 5.6): symlinks inside
 * the folder work, any that leads out of it fails with EXDEV. Where
 * openat2 is missing (ENOSYS: an older kernel, or a seccomp filter such as
 * an old Docker default profile) each component is opened with
 * O_NOFOLLOW instead, so every symlink is refused. */
#include "static.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "log.h"

#define REL_MAX 1024
#define NBUCKETS 1024                /* power of two, >= STATIC_CACHE_MAX */

/* MIME types ---------------------------------------------------------------- */

static const struct {
	const char *ext, *type;
} mime[] = {
	{ "css", "text/css; charset=utf-8" },
	{ "js", "application/javascript" },
	{ "mjs", "application/javascript" },
	{ "cjs", "application/javascript" },
	{ "map", "application/json" },
	{ "json", "application/json" },
	{ "webmanifest", "application/manifest+json" },
	{ "html", "text/html; charset=utf-8" },
	{ "htm", "text/html; charset=utf-8" },
	{ "txt", "text/plain; charset=utf-8" },
	{ "md", "text/markdown; charset=utf-8" },
	{ "csv", "text/csv; charset=utf-8" },
	{ "xml", "application/xml" },
	{ "svg", "image/svg+xml" },
	{ "png", "image/png" },
	{ "jpg", "image/jpeg" },
	{ "jpeg", "image/jpeg" },
	{ "gif", "image/gif" },
	{ "webp", "image/webp" },
	{ "avif", "image/avif" },
	{ "ico", "image/x-icon" },
	{ "bmp", "image/bmp" },
	{ "woff", "font/woff" },
	{ "woff2", "font/woff2" },
	{ "ttf", "font/ttf" },
	{ "otf", "font/otf" },
	{ "eot", "application/vnd.ms-fontobject" },
	{ "wasm", "application/wasm" },
	{ "pdf", "application/pdf" },
	{ "zip", "application/zip" },
	{ "gz", "application/gzip" },
	{ "mp4", "video/mp4" },
	{ "webm", "video/webm" },
	{ "mp3", "audio/mpeg" },
	{ "ogg", "audio/ogg" },
	{ "wav", "audio/wav" },
};

const char *static_mime_type(const char *name)
{
	const char *slash = strrchr(name, '/');
	const char *dot = strrchr(slash ? slash : name, '.');
	if (dot)
		for (size_t i = 0; i < sizeof(mime) / sizeof(mime[0]); i++)
			if (strcasecmp(dot + 1, mime[i].ext) == 0)
				return mime[i].type;
	return "application/octet-stream";
}

static bool is_hex(char ch)
{
	return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

bool static_name_hashed(const char *name, size_t len)
{
	const char *base = name;
	for (size_t i = 0; i < len; i++)
		if (name[i] == '/')
			base = name + i + 1;
	const char *end = name + len;
	const char *p = memchr(base, '.', (size_t)(end - base));
	while (p) {                  /* p: the dot before a middle part */
		const char *q = memchr(p + 1, '.', (size_t)(end - p - 1));
		if (!q)
			return false;    /* p + 1 .. end is the extension */
		size_t n = (size_t)(q - p - 1);
		bool hex = n >= 8 && n <= 64;
		for (size_t i = 0; hex && i < n; i++)
			hex = is_hex(p[1 + i]);
		if (hex)
			return true;
		p = q;
	}
	return false;
}

/* Request paths ------------------------------------------------------------- */

static int hexval(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	ch = (char)(ch | 0x20);
	return ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

int static_rel_path(const char *path, size_t len, size_t skip, char *out, size_t cap)
{
	size_t n = 0, seg = 0;       /* seg: start of the current segment in out */
	if (skip > len || cap == 0)
		return -1;
	for (size_t i = skip; i < len; i++) {
		unsigned char ch = (unsigned char)path[i];
		bool enc = false;
		if (ch == '%') {
			int hi = i + 2 < len ? hexval(path[i + 1]) : -1, lo = hi >= 0 ? hexval(path[i + 2]) : -1;
			if (lo < 0)
				return -1;
			ch = (unsigned char)(hi << 4 | lo);
			i += 2;
			enc = true;
		}
		if (ch < 0x20 || ch == 0x7f || ch == '\\' || (enc && ch == '/'))
			return -1;
		if (ch == '/') {
			if (n == seg)
				return -1;   /* empty segment: "//" */
			seg = n + 1;
		} else if (n == seg && ch == '.') {
			return -1;           /* ".", "..", ".hidden" */
		}
		if (n + 1 >= cap)
			return -1;
		out[n++] = (char)ch;
	}
	out[n] = '\0';
	return n == seg ? -2 : 0;    /* nothing, or a trailing '/': a folder */
}

/* Opening files ------------------------------------------------------------- */

#define OPEN_FLAGS (O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY)

/* Each component with O_NOFOLLOW: no symlink at all (openat2 fallback). */
static int open_walk(int dirfd, const char *rel)
{
	char part[REL_MAX];
	int fd = dirfd;
	const char *p = rel;
	for (;;) {
		const char *slash = strchr(p, '/');
		size_t n = slash ? (size_t)(slash - p) : strlen(p);
		if (n >= sizeof(part)) {
			errno = ENAMETOOLONG;
			break;
		}
		memcpy(part, p, n);
		part[n] = '\0';
		int next = openat(fd, part, slash ? O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC
			: OPEN_FLAGS | O_NOFOLLOW);
		int e = errno;
		if (fd != dirfd)
			close(fd);
		errno = e;
		if (next < 0 || !slash)
			return next;
		fd = next;
		p = slash + 1;
	}
	if (fd != dirfd)
		close(fd);
	return -1;
}

/* rel (from static_rel_path) beneath dirfd; -1 with errno (EXDEV, ELOOP:
 * the path would leave the folder). */
static int open_beneath(int dirfd, const char *rel)
{
	static _Atomic int no_openat2;
	if (!no_openat2) {
		struct open_how how = { .flags = OPEN_FLAGS,
			.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS };
		long fd = syscall(SYS_openat2, dirfd, rel, &how, sizeof(how));
		if (fd >= 0 || errno != ENOSYS)
			return (int)fd;
		no_openat2 = 1;
		log_warn("openat2 is not available (ENOSYS): [static] folders refuse every symlink");
	}
	return open_walk(dirfd, rel);
}

/* The cache ----------------------------------------------------------------- */

enum { REP_ID, REP_BR, REP_GZ, N_REP };
static const char *const rep_suffix[N_REP] = { "", ".br", ".gz" };
static const char *const rep_coding[N_REP] = { NULL, "br", "gzip" };

struct static_file {
	int refs;
	struct evbuffer_file_segment *seg;  /* owns the fd (EVBUF_FS_CLOSE_ON_FREE) */
	int fd;
	uint64_t size;
	time_t mtime;
	char etag[40];
	char last_modified[32];             /* IMF-fixdate */
};

struct entry {
	struct entry *hnext;                /* bucket chain */
	struct entry *lprev, *lnext;        /* most recently used first */
	uint64_t hash;
	uint64_t opened_ms;
	const struct snap_static *st;       /* of the generation the cache holds */
	struct static_file *rep[N_REP];     /* NULL: none */
	bool hashed;
	char rel[];
};

struct static_cache {
	uint64_t gen;
	struct entry *bucket[NBUCKETS];
	struct entry *lru_head, *lru_tail;
	size_t n;
};

static void file_unref(struct static_file *f)
{
	if (!f || --f->refs > 0)
		return;
	evbuffer_file_segment_free(f->seg); /* closes fd once no buffer holds it */
	free(f);
}

static void http_date(time_t t, char *buf, size_t len)
{
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(buf, len, "%a, %d %b %Y %H:%M:%S GMT", &tm);
}

/* A regular file from an open fd (taken: closed on failure); `tag` tells
 * a precompressed sibling's ETag apart ("" for the file itself). NULL with
 * errno: EISDIR for a folder, ENOENT for anything else that is no regular
 * file (so it reads as missing), ENOMEM. */
static struct static_file *file_new(int fd, const char *tag)
{
	struct stat sb;
	struct static_file *f = NULL;
	if (fstat(fd, &sb) < 0)
		goto fail;
	if (!S_ISREG(sb.st_mode)) {
		errno = S_ISDIR(sb.st_mode) ? EISDIR : ENOENT;
		goto fail;
	}
	if (!(f = calloc(1, sizeof(*f))))
		goto fail;
	f->seg = evbuffer_file_segment_new(fd, 0, sb.st_size,
		EVBUF_FS_CLOSE_ON_FREE | EVBUF_FS_DISABLE_LOCKING);
	if (!f->seg) {
		errno = ENOMEM;
		goto fail;
	}
	f->refs = 1;
	f->fd = fd;
	f->size = (uint64_t)sb.st_size;
	f->mtime = sb.st_mtime;
	/* validator from mtime and size, like nginx */
	snprintf(f->etag, sizeof(f->etag), "\"%llx-%llx%s%s\"", (unsigned long long)sb.st_mtime,
		(unsigned long long)sb.st_size, *tag ? "-" : "", tag);
	http_date(sb.st_mtime, f->last_modified, sizeof(f->last_modified));
	return f;
fail:;
	int e = errno;
	free(f);
	close(fd);
	errno = e;
	return NULL;
}

static int open_rep(const struct snap_static *st, const char *rel, int rep)
{
	char name[PATH_MAX + 8];
	const char *base = st->file ? st->file : rel;
	if ((size_t)snprintf(name, sizeof(name), "%s%s", base, rep_suffix[rep]) >= sizeof(name)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	return st->file ? open(name, OPEN_FLAGS) : open_beneath(st->dirfd, name);
}

static uint64_t hash_key(const struct snap_static *st, const char *rel)
{
	uint64_t h = 1469598103934665603ull ^ (uint64_t)(uintptr_t)st;
	for (const char *p = rel; *p; p++)
		h = (h ^ (unsigned char)*p) * 1099511628211ull;
	return h;
}

static void lru_unlink(struct static_cache *c, struct entry *e)
{
	if (e->lprev)
		e->lprev->lnext = e->lnext;
	else
		c->lru_head = e->lnext;
	if (e->lnext)
		e->lnext->lprev = e->lprev;
	else
		c->lru_tail = e->lprev;
	e->lprev = e->lnext = NULL;
}

static void lru_push(struct static_cache *c, struct entry *e)
{
	e->lprev = NULL;
	e->lnext = c->lru_head;
	if (c->lru_head)
		c->lru_head->lprev = e;
	c->lru_head = e;
	if (!c->lru_tail)
		c->lru_tail = e;
}

static void entry_drop(struct static_cache *c, struct entry *e)
{
	struct entry **pp = &c->bucket[e->hash & (NBUCKETS - 1)];
	while (*pp != e)
		pp = &(*pp)->hnext;
	*pp = e->hnext;
	lru_unlink(c, e);
	for (int i = 0; i < N_REP; i++)
		file_unref(e->rep[i]);
	free(e);
	c->n--;
}

static void cache_clear(struct static_cache *c)
{
	while (c->lru_head)
		entry_drop(c, c->lru_head);
}

struct static_cache *static_cache_new(void)
{
	return calloc(1, sizeof(struct static_cache));
}

void static_cache_free(struct static_cache *c)
{
	if (!c)
		return;
	cache_clear(c);
	free(c);
}

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The entry of rel under st, opened now if missing or stale. NULL with
 * errno when the file cannot be served (ENOENT, EISDIR, EXDEV, ...). */
static struct entry *cache_get(struct static_cache *c, const struct snapshot *snap,
	const struct snap_static *st, const char *rel)
{
	if (c->gen != snap->generation) {
		cache_clear(c);
		c->gen = snap->generation;
	}
	uint64_t h = hash_key(st, rel), now = now_ms();
	struct entry *e;
	for (e = c->bucket[h & (NBUCKETS - 1)]; e; e = e->hnext)
		if (e->hash == h && e->st == st && strcmp(e->rel, rel) == 0)
			break;
	if (e && now - e->opened_ms < STATIC_CACHE_TTL_MS) {
		if (e != c->lru_head) {
			lru_unlink(c, e);
			lru_push(c, e);
		}
		return e;
	}
	if (e)
		entry_drop(c, e);
	int fd = open_rep(st, rel, REP_ID);
	struct static_file *id = fd >= 0 ? file_new(fd, "") : NULL;
	if (!id)
		return NULL;
	size_t rl = strlen(rel);
	if (!(e = calloc(1, sizeof(*e) + rl + 1))) {
		file_unref(id);
		errno = ENOMEM;
		return NULL;
	}
	memcpy(e->rel, rel, rl + 1);
	e->hash = h;
	e->st = st;
	e->opened_ms = now;
	e->rep[REP_ID] = id;
	e->hashed = !st->file && static_name_hashed(rel, rl);
	for (int i = REP_BR; i < N_REP; i++)
		if ((fd = open_rep(st, rel, i)) >= 0)
			e->rep[i] = file_new(fd, rep_suffix[i] + 1);   /* NULL: that sibling is not served */
	if (c->n >= STATIC_CACHE_MAX)
		entry_drop(c, c->lru_tail);
	e->hnext = c->bucket[h & (NBUCKETS - 1)];
	c->bucket[h & (NBUCKETS - 1)] = e;
	lru_push(c, e);
	c->n++;
	return e;
}

/* Request headers ----------------------------------------------------------- */

static const struct http_header *hdr(const struct static_req *rq, const char *name)
{
	return http_find_header(rq->headers, rq->n_headers, name);
}

static const char *skip_ows(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t'))
		p++;
	return p;
}

/* q (0..1000) of `coding` in an Accept-Encoding value; -1 if neither it
 * nor "*" is listed. */
static int accept_q(const char *v, size_t n, const char *coding)
{
	const char *p = v, *end = v + n;
	int star = -1, q_of = -1;
	while (p < end) {
		p = skip_ows(p, end);
		const char *t = p;
		while (p < end && *p != ',' && *p != ';' && *p != ' ' && *p != '\t')
			p++;
		size_t tl = (size_t)(p - t);
		int q = 1000;
		while (p < end && *p != ',') {       /* parameters: only q counts */
			p = skip_ows(p, end);
			if (p < end && *p == ';') {
				p = skip_ows(p + 1, end);
				if (end - p >= 2 && (p[0] | 0x20) == 'q' && p[1] == '=') {
					p += 2;
					int val = 0, digits = 0, scale = 1000;
					if (p < end && (*p == '0' || *p == '1')) {
						val = (*p++ - '0') * 1000;
						if (p < end && *p == '.')
							for (p++; p < end && *p >= '0' && *p <= '9' && digits < 3; digits++)
								val += (*p++ - '0') * (scale /= 10);
					}
					q = val > 1000 ? 1000 : val;
				}
			}
			while (p < end && *p != ',' && *p != ';')
				p++;
		}
		if (tl == 1 && *t == '*')
			star = q;
		else if (tl && http_token_eq(t, tl, coding))
			q_of = q;
		if (p < end)
			p++;                          /* ',' */
	}
	return q_of >= 0 ? q_of : star;
}

/* Does an If-None-Match list hold etag (weak comparison) or "*"? */
static bool etag_listed(const char *v, size_t n, const char *etag)
{
	const char *p = v, *end = v + n;
	size_t el = strlen(etag);
	while (p < end) {
		p = skip_ows(p, end);
		if (p < end && *p == '*')
			return true;
		if (end - p >= 2 && p[0] == 'W' && p[1] == '/')
			p += 2;
		const char *t = p;
		if (p < end && *p == '"') {
			const char *q = memchr(p + 1, '"', (size_t)(end - p - 1));
			p = q ? q + 1 : end;
		}
		if ((size_t)(p - t) == el && memcmp(t, etag, el) == 0)
			return true;
		while (p < end && *p != ',')
			p++;
		if (p < end)
			p++;
	}
	return false;
}

/* An HTTP date (IMF-fixdate); -1 if it is not one. */
static time_t parse_date(const char *v, size_t n)
{
	char buf[64];
	struct tm tm = { 0 };
	if (n == 0 || n >= sizeof(buf))
		return -1;
	memcpy(buf, v, n);
	buf[n] = '\0';
	const char *end = strptime(buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
	return end && *end == '\0' ? timegm(&tm) : -1;
}

static bool parse_u64(const char **pp, const char *end, uint64_t *out)
{
	const char *p = *pp;
	uint64_t v = 0;
	if (p >= end || *p < '0' || *p > '9')
		return false;
	for (; p < end && *p >= '0' && *p <= '9'; p++) {
		if (v > (UINT64_MAX - 9) / 10)
			return false;
		v = v * 10 + (uint64_t)(*p - '0');
	}
	*pp = p;
	*out = v;
	return true;
}

/* One "bytes=" range of a file of `size` bytes: 1 with *off and *len, -1
 * unsatisfiable (416), 0 ignore it (malformed, other unit, several
 * ranges: the whole file is sent, RFC 9110 14.2). */
static int parse_range(const char *v, size_t n, uint64_t size, uint64_t *off, uint64_t *len)
{
	const char *p = v, *end = v + n;
	uint64_t a = 0, b = 0;
	bool have_a, have_b;
	if (n < 6 || strncasecmp(p, "bytes=", 6) != 0)
		return 0;
	p = skip_ows(p + 6, end);
	have_a = parse_u64(&p, end, &a);
	p = skip_ows(p, end);
	if (p >= end || *p++ != '-')
		return 0;
	p = skip_ows(p, end);
	have_b = parse_u64(&p, end, &b);
	p = skip_ows(p, end);
	if (p != end || (!have_a && !have_b))
		return 0;                /* several ranges, or junk */
	if (!have_a) {                   /* suffix: the last b bytes */
		if (b == 0 || size == 0)
			return -1;
		*len = b < size ? b : size;
		*off = size - *len;
		return 1;
	}
	if (have_b && b < a)
		return 0;
	if (a >= size)
		return -1;
	if (!have_b || b >= size)
		b = size - 1;
	*off = a;
	*len = b - a + 1;
	return 1;
}

/* Replies ------------------------------------------------------------------- */

static void add_hdr(struct static_reply *r, const char *name, const char *lname, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void add_hdr(struct static_reply *r, const char *name, const char *lname, const char *fmt, ...)
{
	if (r->n_hdrs >= STATIC_MAX_HDRS)
		return;
	struct static_hdr *h = &r->hdrs[r->n_hdrs++];
	va_list ap;
	h->name = name;
	h->lname = lname;
	va_start(ap, fmt);
	vsnprintf(h->value, sizeof(h->value), fmt, ap);
	va_end(ap);
}

static int reply_text(struct static_reply *r, int status, const char *text)
{
	r->status = status;
	r->content_type = "text/plain; charset=utf-8";
	r->text = text;
	r->length = strlen(text);
	return 1;
}

int static_reply_lines(const struct static_reply *r, char *buf, size_t cap)
{
	size_t n = 0;
	if (cap == 0)
		return -1;
	buf[0] = '\0';
	for (size_t i = 0; i < r->n_hdrs; i++) {
		int k = snprintf(buf + n, cap - n, "%s: %s\r\n", r->hdrs[i].name, r->hdrs[i].value);
		if (k < 0 || (size_t)k >= cap - n)
			return -1;
		n += (size_t)k;
	}
	return (int)n;
}

static bool method_is(const struct static_req *rq, const char *m)
{
	size_t n = strlen(m);
	return rq->method_len == n && memcmp(rq->method, m, n) == 0;
}

/* The representation to send: the best acceptable precompressed sibling
 * (higher q; on a tie br, the smaller), else the file itself. */
static int choose_rep(const struct entry *e, const struct static_req *rq)
{
	const struct http_header *ae = hdr(rq, "accept-encoding");
	int best = REP_ID, best_q = 0;
	if (!ae)
		return REP_ID;
	for (int i = REP_BR; i < N_REP; i++) {
		int q = e->rep[i] ? accept_q(ae->value, ae->value_len, rep_coding[i]) : -1;
		if (q > best_q)
			best = i, best_q = q;
	}
	return best;
}

int static_serve(struct static_cache *c, const struct snapshot *snap, const struct snap_static *st,
	const struct static_req *rq, struct static_reply *out)
{
	char rel[REL_MAX];
	memset(out, 0, sizeof(*out));
	bool head = method_is(rq, "HEAD");
	if (!head && !method_is(rq, "GET")) {
		if (st->fallback)
			return 0;        /* files are read-only: a POST is for the routes */
		add_hdr(out, "Allow", "allow", "GET, HEAD");
		return reply_text(out, 405, "405 Method Not Allowed: static file, use GET or HEAD\n");
	}
	int rp = st->file ? 0 : static_rel_path(rq->path, rq->path_len, st->path_len, rel, sizeof(rel));
	if (st->file)
		rel[0] = '\0';
	if (rp == -1)                /* never passed on: the routes see no traversal attempt */
		return reply_text(out, 404, "404 Not Found: not a file name this folder serves\n");
	struct entry *e = NULL;
	errno = EISDIR;
	if (rp == 0)
		e = cache_get(c, snap, st, rel);
	if (!e) {
		if (errno == ENOENT || errno == ENOTDIR || errno == EISDIR) {
			if (st->fallback)
				return 0;
			return reply_text(out, 404, "404 Not Found: no such file\n");
		}
		if (errno == EACCES || errno == EPERM)
			return reply_text(out, 403, "403 Forbidden: file not readable\n");
		if (errno == EXDEV || errno == ELOOP || errno == ENAMETOOLONG)
			return reply_text(out, 404, "404 Not Found: not a file name this folder serves\n");
		log_warn("static file cannot be opened static=%s path=%s error=%s", st->name,
			log_q(st->file ? st->file : rel), log_q(strerror(errno)));
		return reply_text(out, 500, "500 Internal Server Error: cannot open the file\n");
	}
	int ri = choose_rep(e, rq);
	struct static_file *f = e->rep[ri];
	bool variants = e->rep[REP_BR] || e->rep[REP_GZ];

	out->content_type = st->content_type ? st->content_type : static_mime_type(st->file ? st->file : rel);
	add_hdr(out, "ETag", "etag", "%s", f->etag);
	add_hdr(out, "Last-Modified", "last-modified", "%s", f->last_modified);
	add_hdr(out, "Cache-Control", "cache-control", "%s",
		e->hashed ? "public, max-age=31536000, immutable" : "no-cache");
	if (variants)
		add_hdr(out, "Vary", "vary", "Accept-Encoding");

	const struct http_header *inm = hdr(rq, "if-none-match"), *ims = hdr(rq, "if-modified-since");
	time_t since = !inm && ims ? parse_date(ims->value, ims->value_len) : -1;
	if ((inm && etag_listed(inm->value, inm->value_len, f->etag)) || (since >= 0 && f->mtime <= since)) {
		out->status = 304;
		out->length = 0;
		return 1;
	}
	if (rep_coding[ri])
		add_hdr(out, "Content-Encoding", "content-encoding", "%s", rep_coding[ri]);
	add_hdr(out, "Accept-Ranges", "accept-ranges", "bytes");
	uint64_t off = 0, len = f->size;
	const struct http_header *rg = hdr(rq, "range"), *ir = hdr(rq, "if-range");
	/* If-Range: the range only if the file is the one the client has */
	if (rg && ir && !((ir->value_len == strlen(f->etag) && memcmp(ir->value, f->etag, ir->value_len) == 0) ||
			  (ir->value_len == strlen(f->last_modified) &&
			   memcmp(ir->value, f->last_modified, ir->value_len) == 0)))
		rg = NULL;
	int rr = rg ? parse_range(rg->value, rg->value_len, f->size, &off, &len) : 0;
	if (rr < 0) {
		add_hdr(out, "Content-Range", "content-range", "bytes */%llu", (unsigned long long)f->size);
		return reply_text(out, 416, "416 Range Not Satisfiable\n");
	}
	out->status = 200;
	if (rr > 0) {
		out->status = 206;
		add_hdr(out, "Content-Range", "content-range", "bytes %llu-%llu/%llu", (unsigned long long)off,
			(unsigned long long)(off + len - 1), (unsigned long long)f->size);
	}
	out->length = len;
	if (!head && len) {
		f->refs++;
		out->body = (struct static_body){ f, off, len };
	}
	return 1;
}

/* Bodies -------------------------------------------------------------------- */

int64_t static_body_segment(struct static_body *b, struct evbuffer *out, uint64_t max)
{
	uint64_t n = b->left < max ? b->left : max;
	if (!b->f || n == 0)
		return 0;
	if (evbuffer_add_file_segment(out, b->f->seg, (ev_off_t)b->off, (ev_off_t)n) < 0)
		return -1;
	b->off += n;
	b->left -= n;
	return (int64_t)n;
}

int64_t static_body_read_buf(struct static_body *b, void *buf, size_t len)
{
	size_t want = b->left < len ? (size_t)b->left : len;
	if (!b->f || want == 0)
		return 0;
	ssize_t n;
	do
		n = pread(b->f->fd, buf, want, (off_t)b->off);
	while (n < 0 && errno == EINTR);
	if (n <= 0) {
		if (n == 0)
			errno = EIO;     /* the file shrank under us */
		return -1;
	}
	b->off += (uint64_t)n;
	b->left -= (uint64_t)n;
	return n;
}

int64_t static_body_read(struct static_body *b, struct evbuffer *out, size_t max)
{
	struct evbuffer_iovec v;
	size_t want = b->left < max ? (size_t)b->left : max;
	if (!b->f || want == 0)
		return 0;
	if (evbuffer_reserve_space(out, (ev_ssize_t)want, &v, 1) < 1)
		return -1;
	int64_t n = static_body_read_buf(b, v.iov_base, v.iov_len < want ? v.iov_len : want);
	if (n < 0)
		return -1;
	v.iov_len = (size_t)n;
	evbuffer_commit_space(out, &v, 1);
	return n;
}

void static_body_release(struct static_body *b)
{
	file_unref(b->f);
	b->f = NULL;
	b->left = 0;
}
