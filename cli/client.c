/* client — pmctl's HTTP/1.1 client over the control socket. See client.h. */
#include "client.h"

#include <errno.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define CLIENT_MAX_BODY (64u << 20)

void client_permission_hint(const char *path, char *err, size_t errlen)
{
	struct passwd *pw = getpwuid(getuid());
	struct stat st;
	char user[64], dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct group *gr = NULL;

	if (pw)
		snprintf(user, sizeof(user), "%s", pw->pw_name);
	else
		snprintf(user, sizeof(user), "%u", (unsigned)getuid());
	snprintf(dir, sizeof(dir), "%s", path);
	char *slash = strrchr(dir, '/');
	if (slash && slash != dir)
		*slash = '\0';
	if (stat(path, &st) == 0 || stat(dir, &st) == 0)
		gr = getgrgid(st.st_gid);
	if (gr && gr->gr_gid != 0)
		snprintf(err, errlen, "permission denied on %s: add user '%s' to group '%s' (see control_group)",
			path, user, gr->gr_name);
	else
		snprintf(err, errlen, "permission denied on %s: add user '%s' to pmd's control_group "
			"(see pmd.ini) or run as root", path, user);
}

int client_connect(struct client *c, const char *path, char *err, size_t errlen)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };

	memset(c, 0, sizeof(*c));
	c->fd = -1;
	c->socket_path = path;
	c->content_length = -1;
	if (strlen(path) >= sizeof(sun.sun_path)) {
		snprintf(err, errlen, "socket path too long (max %zu bytes): %s", sizeof(sun.sun_path) - 1, path);
		return -1;
	}
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		snprintf(err, errlen, "cannot create a socket: %s", strerror(errno));
		return -1;
	}
	if (connect(c->fd, (struct sockaddr *)&sun, sizeof(sun)) == 0)
		return 0;
	int e = errno;
	close(c->fd);
	c->fd = -1;
	if (e == EACCES || e == EPERM)
		client_permission_hint(path, err, errlen);
	else if (e == ENOENT || e == ENOTDIR)
		snprintf(err, errlen, "pmd is not running (no socket at %s)", path);
	else if (e == ECONNREFUSED)
		snprintf(err, errlen, "pmd is not running (nothing listens on %s)", path);
	else
		snprintf(err, errlen, "cannot connect to %s: %s", path, strerror(e));
	return -1;
}

void client_close(struct client *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

/* Read more bytes into buf (compacting first). >0 read, 0 EOF, -1 error. */
static int fill(struct client *c, char *err, size_t errlen)
{
	if (c->off == c->len) {
		c->off = c->len = 0;
	} else if (c->off > 0) {
		memmove(c->buf, c->buf + c->off, c->len - c->off);
		c->len -= c->off;
		c->off = 0;
	}
	if (c->len == sizeof(c->buf)) {
		snprintf(err, errlen, "response line or head from pmd too long");
		return -1;
	}
	for (;;) {
		struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
		int pr = poll(&pfd, 1, c->timeout_ms > 0 ? c->timeout_ms : -1);
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr == 0) {
			snprintf(err, errlen, "pmd did not answer within %d s", c->timeout_ms / 1000);
			return -1;
		}
		ssize_t n = read(c->fd, c->buf + c->len, sizeof(c->buf) - c->len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == ECONNRESET)
			n = 0;          /* pmd closed with our bytes unread */
		if (n < 0) {
			snprintf(err, errlen, "reading from %s: %s", c->socket_path, strerror(errno));
			return -1;
		}
		c->len += (size_t)n;
		return (int)(n > 0);
	}
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Parse the head at buf[off..off+n) (through the blank line). */
static int parse_head(struct client *c, size_t n, char *err, size_t errlen)
{
	char *p = c->buf + c->off, *end = p + n;
	char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
	int minor;

	c->chunked = false;
	c->content_length = -1;
	c->content_type[0] = '\0';
	if (sscanf(p, "HTTP/1.%d %3d", &minor, &c->status) != 2 || c->status < 100 || c->status > 599) {
		snprintf(err, errlen, "pmd sent a malformed answer");
		return -1;
	}
	for (p = eol + 2; p < end; p = eol + 2) {
		eol = memmem(p, (size_t)(end - p), "\r\n", 2);
		if (!eol || eol == p)
			break;
		char *colon = memchr(p, ':', (size_t)(eol - p));
		if (!colon)
			continue;
		char *v = colon + 1;
		while (v < eol && (*v == ' ' || *v == '\t'))
			v++;
		size_t nlen = (size_t)(colon - p), vlen = (size_t)(eol - v);
		if (nlen == 12 && strncasecmp(p, "Content-Type", 12) == 0) {
			snprintf(c->content_type, sizeof(c->content_type), "%.*s", (int)vlen, v);
		} else if (nlen == 14 && strncasecmp(p, "Content-Length", 14) == 0) {
			char *e = NULL;
			c->content_length = strtoll(v, &e, 10);
			if (e == v || c->content_length < 0) {
				snprintf(err, errlen, "pmd sent a malformed Content-Length");
				return -1;
			}
		} else if (nlen == 17 && strncasecmp(p, "Transfer-Encoding", 17) == 0) {
			c->chunked = vlen >= 7 && strncasecmp(eol - 7, "chunked", 7) == 0;
		}
	}
	c->off += n;
	return 0;
}

int client_request(struct client *c, const char *method, const char *target,
	const char *body, size_t body_len, bool *unanswered, char *err, size_t errlen)
{
	char head[1024];
	int n;

	*unanswered = false;
	if (body)
		n = snprintf(head, sizeof(head), "%s %s HTTP/1.1\r\nHost: pmd\r\nUser-Agent: pmctl/%s\r\n"
			"Accept: */*\r\nConnection: close\r\nContent-Type: application/json\r\n"
			"Content-Length: %zu\r\n\r\n", method, target, PMD_VERSION, body_len);
	else
		n = snprintf(head, sizeof(head), "%s %s HTTP/1.1\r\nHost: pmd\r\nUser-Agent: pmctl/%s\r\n"
			"Accept: */*\r\nConnection: close\r\n\r\n", method, target, PMD_VERSION);
	if (n < 0 || (size_t)n >= sizeof(head)) {
		snprintf(err, errlen, "request target too long");
		return -1;
	}
	bool sent = write_all(c->fd, head, (size_t)n) == 0 && (!body || write_all(c->fd, body, body_len) == 0);
	int send_errno = errno;

	/* Whatever happened to the write, an answer may be waiting (pmd answers
	 * bad requests and closes). */
	for (;;) {
		char *p = c->buf + c->off;
		char *blank = c->len > c->off ? memmem(p, c->len - c->off, "\r\n\r\n", 4) : NULL;
		if (blank) {
			if (parse_head(c, (size_t)(blank + 4 - p), err, errlen) < 0)
				return -1;
			if (c->status >= 100 && c->status < 200)
				continue;       /* 100 Continue and friends */
			return 0;
		}
		int r = fill(c, err, errlen);
		if (r < 0)
			return -1;
		if (r == 0) {
			if (c->len == 0)
				break;
			snprintf(err, errlen, "pmd closed the connection in the middle of its answer");
			return -1;
		}
	}
	*unanswered = true;
	snprintf(err, errlen, "pmd closed the connection without answering%s%s",
		sent ? "" : ": ", sent ? "" : strerror(send_errno));
	return -1;
}

/* Deliver up to `want` buffered-or-read body bytes. */
static int pass_data(struct client *c, unsigned long long want, client_data_fn on_data, void *arg,
	char *err, size_t errlen)
{
	while (want > 0) {
		if (c->off == c->len) {
			int r = fill(c, err, errlen);
			if (r < 0)
				return -1;
			if (r == 0) {
				snprintf(err, errlen, "connection closed before the end of the answer");
				return -1;
			}
		}
		size_t n = c->len - c->off;
		if (n > want)
			n = (size_t)want;
		on_data(arg, c->buf + c->off, n);
		c->off += n;
		want -= n;
	}
	return 0;
}

/* A CRLF-terminated line at buf[off..): returns its length (without CRLF)
 * and *line, consuming it; -1 on error/EOF. */
static long take_line(struct client *c, char **line, char *err, size_t errlen)
{
	for (;;) {
		char *p = c->buf + c->off;
		char *eol = c->len > c->off ? memmem(p, c->len - c->off, "\r\n", 2) : NULL;
		if (eol) {
			*line = p;
			c->off += (size_t)(eol + 2 - p);
			return (long)(eol - p);
		}
		int r = fill(c, err, errlen);
		if (r < 0)
			return -1;
		if (r == 0) {
			snprintf(err, errlen, "connection closed before the end of the answer");
			return -1;
		}
	}
}

int client_read_body(struct client *c, client_data_fn on_data, void *arg, char *err, size_t errlen)
{
	err[0] = '\0';
	if (!c->chunked && c->content_length >= 0)
		return pass_data(c, (unsigned long long)c->content_length, on_data, arg, err, errlen);
	if (!c->chunked) {
		for (;;) {
			if (c->off < c->len) {
				on_data(arg, c->buf + c->off, c->len - c->off);
				c->off = c->len;
			}
			int r = fill(c, err, errlen);
			if (r <= 0)
				return r;
		}
	}
	for (;;) {
		char *line, *end;
		long n = take_line(c, &line, err, errlen);
		if (n < 0)
			return -1;
		unsigned long long size = strtoull(line, &end, 16);
		if (end == line || (end != line + n && *end != ';')) {
			snprintf(err, errlen, "pmd sent a malformed chunk");
			return -1;
		}
		if (size == 0)
			break;
		if (pass_data(c, size, on_data, arg, err, errlen) < 0 || take_line(c, &line, err, errlen) != 0) {
			if (!err[0])
				snprintf(err, errlen, "pmd sent a malformed chunk");
			return -1;
		}
	}
	for (;;) {                  /* trailers, up to the blank line */
		char *line;
		long n = take_line(c, &line, err, errlen);
		if (n < 0)
			return -1;
		if (n == 0)
			return 0;
	}
}

struct acc {
	char *p;
	size_t len, cap;
	int failed;
};

static void acc_add(void *arg, const char *data, size_t len)
{
	struct acc *a = arg;

	if (a->failed)
		return;
	if (a->len + len + 1 > a->cap) {
		size_t cap = a->cap ? a->cap : 4096;
		while (cap < a->len + len + 1)
			cap *= 2;
		char *np = cap <= CLIENT_MAX_BODY ? realloc(a->p, cap) : NULL;
		if (!np) {
			a->failed = 1;
			return;
		}
		a->p = np;
		a->cap = cap;
	}
	memcpy(a->p + a->len, data, len);
	a->len += len;
	a->p[a->len] = '\0';
}

char *client_read_all(struct client *c, size_t *len, char *err, size_t errlen)
{
	struct acc a = { 0 };

	if (client_read_body(c, acc_add, &a, err, errlen) < 0 || a.failed) {
		if (a.failed)
			snprintf(err, errlen, "answer from pmd too large");
		free(a.p);
		return NULL;
	}
	if (!a.p && !(a.p = calloc(1, 1))) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	*len = a.len;
	return a.p;
}
