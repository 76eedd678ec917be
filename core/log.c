/* log — logfmt/JSON lines on stderr. See include/log.h. */
#include "log.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static _Atomic int cur_level = LOG_INFO;
static _Atomic int cur_format = LOG_LOGFMT;

static const char *level_names[] = { "debug", "info", "warn", "error" };

void log_setup(enum log_level level, enum log_format format)
{
	atomic_store(&cur_level, (int)level);
	atomic_store(&cur_format, (int)format);
}

int log_level_parse(const char *s, enum log_level *out)
{
	for (int i = 0; i < 4; i++)
		if (strcmp(s, level_names[i]) == 0) {
			*out = (enum log_level)i;
			return 0;
		}
	return -1;
}

int log_format_parse(const char *s, enum log_format *out)
{
	if (strcmp(s, "logfmt") == 0)
		*out = LOG_LOGFMT;
	else if (strcmp(s, "json") == 0)
		*out = LOG_JSON;
	else
		return -1;
	return 0;
}

int log_enabled(enum log_level level)
{
	return (int)level >= atomic_load(&cur_level);
}

/* Bounded appender over a fixed line buffer. */
struct line {
	char buf[4096];
	size_t len;
};

static void put(struct line *l, const char *s, size_t n)
{
	size_t room = sizeof(l->buf) - 2 - l->len; /* keep room for "\n" */
	if (n > room)
		n = room;
	memcpy(l->buf + l->len, s, n);
	l->len += n;
}

static void puts_(struct line *l, const char *s) { put(l, s, strlen(s)); }

/* Append s[0..n) escaped for a JSON string or a logfmt quoted value. */
static void put_escaped(struct line *l, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		char esc[8];
		if (c == '"' || c == '\\') {
			esc[0] = '\\';
			esc[1] = (char)c;
			put(l, esc, 2);
		} else if (c < 0x20 || c == 0x7f) {
			int k = snprintf(esc, sizeof(esc), "\\u%04x", c);
			put(l, esc, (size_t)k);
		} else {
			put(l, (const char *)&c, 1);
		}
	}
}

static int is_key_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
}

/* Does a field (key=...) start at p (p at a word start)? */
static int field_at(const char *p)
{
	const char *q = p;
	while (is_key_char(*q))
		q++;
	return q > p && *q == '=';
}

/* Length of a field value starting at p: quoted ("..." with \ escapes) or
 * up to the next space. */
static size_t value_len(const char *p)
{
	if (*p == '"') {
		size_t i = 1;
		while (p[i] && p[i] != '"') {
			if (p[i] == '\\' && p[i + 1])
				i++;
			i++;
		}
		return p[i] == '"' ? i + 1 : i;
	}
	size_t i = 0;
	while (p[i] && p[i] != ' ')
		i++;
	return i;
}

static void put_timestamp(struct line *l)
{
	struct timespec ts;
	struct tm tm;
	char tb[40];
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	size_t n = strftime(tb, sizeof(tb), "%Y-%m-%dT%H:%M:%S", &tm);
	n += (size_t)snprintf(tb + n, sizeof(tb) - n, ".%03ldZ", ts.tv_nsec / 1000000);
	put(l, tb, n);
}

static int all_numeric(const char *v, size_t n)
{
	if (n == 0 || n > 18)
		return 0;
	size_t i = (v[0] == '-') ? 1 : 0;
	if (i == n)
		return 0;
	if (v[i] == '0' && n - i > 1)
		return 0;
	for (; i < n; i++)
		if (v[i] < '0' || v[i] > '9')
			return 0;
	return 1;
}

void log_vmsg(enum log_level level, const char *fmt, va_list ap)
{
	if (!log_enabled(level))
		return;
	char text[3072];
	vsnprintf(text, sizeof(text), fmt, ap);

	/* message = words before the first field */
	const char *p = text, *msg_end = text;
	const char *fields = NULL;
	while (*p) {
		if ((p == text || p[-1] == ' ') && field_at(p)) {
			fields = p;
			break;
		}
		p++;
		if (*p == '\0' || *p == ' ')
			msg_end = p;
	}
	size_t msg_len = (size_t)(msg_end - text);
	while (msg_len && text[msg_len - 1] == ' ')
		msg_len--;

	struct line l = { .len = 0 };
	int json = atomic_load(&cur_format) == LOG_JSON;
	if (json) {
		puts_(&l, "{\"ts\":\"");
		put_timestamp(&l);
		puts_(&l, "\",\"level\":\"");
		puts_(&l, level_names[level]);
		puts_(&l, "\",\"msg\":\"");
		put_escaped(&l, text, msg_len);
		puts_(&l, "\"");
	} else {
		puts_(&l, "ts=");
		put_timestamp(&l);
		puts_(&l, " level=");
		puts_(&l, level_names[level]);
		puts_(&l, " msg=\"");
		put_escaped(&l, text, msg_len);
		puts_(&l, "\"");
	}
	p = fields;
	while (p && *p) {
		while (*p == ' ')
			p++;
		if (!*p)
			break;
		const char *k = p;
		while (is_key_char(*p))
			p++;
		if (*p != '=') { /* stray word after fields: keep it in logfmt */
			const char *w = k;
			while (*p && *p != ' ')
				p++;
			if (!json) {
				puts_(&l, " ");
				put(&l, w, (size_t)(p - w));
			}
			continue;
		}
		size_t klen = (size_t)(p - k);
		p++;
		size_t vlen = value_len(p);
		const char *v = p;
		p += vlen;
		if (json) {
			puts_(&l, ",\"");
			put(&l, k, klen);
			puts_(&l, "\":");
			if (vlen >= 2 && v[0] == '"' && v[vlen - 1] == '"') {
				/* already escaped with JSON-compatible escapes */
				put(&l, v, vlen);
			} else if (all_numeric(v, vlen)) {
				put(&l, v, vlen);
			} else {
				puts_(&l, "\"");
				put_escaped(&l, v, vlen);
				puts_(&l, "\"");
			}
		} else {
			puts_(&l, " ");
			put(&l, k, klen + 1 + vlen);
		}
	}
	if (json)
		puts_(&l, "}");
	l.buf[l.len++] = '\n';
	ssize_t w = write(STDERR_FILENO, l.buf, l.len);
	(void)w;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vmsg(level, fmt, ap);
	va_end(ap);
}

void log_syserr(const char *fmt, ...)
{
	int saved = errno;
	char text[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	log_msg(LOG_WARN, "%s error=%s", text, log_q(strerror(saved)));
	errno = saved;
}

const char *log_q(const char *s)
{
	static _Thread_local char slots[4][512];
	static _Thread_local unsigned next;
	char *b = slots[next++ % 4];
	size_t n = 0, cap = sizeof(slots[0]);
	b[n++] = '"';
	for (; s && *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (n + 8 >= cap - 4) {
			memcpy(b + n, "...", 3);
			n += 3;
			break;
		}
		if (c == '"' || c == '\\') {
			b[n++] = '\\';
			b[n++] = (char)c;
		} else if (c < 0x20 || c == 0x7f) {
			n += (size_t)snprintf(b + n, cap - n, "\\u%04x", c);
		} else {
			b[n++] = (char)c;
		}
	}
	b[n++] = '"';
	b[n] = '\0';
	return b;
}

void log_raw(const char *line, size_t len)
{
	struct iovec iov[2] = { { (void *)line, len }, { "\n", 1 } };
	ssize_t w = writev(STDERR_FILENO, iov, 2);
	(void)w;
}
