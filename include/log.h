/* log — the one logger of pmd: logfmt (default) or JSON lines on stderr.
 *
 * A message is a printf format whose text before the first `key=value` token
 * is the human message and the rest are fields:
 *     log_info("instance started service=%s color=%s pid=%d", ...);
 * logfmt:  ts=2026-11-28T17:42:13.123Z level=info msg="instance started" service=backend ...
 * json:    {"ts":"...","level":"info","msg":"instance started","service":"backend",...}
 * Values containing spaces or quotes must be passed through log_q() (or
 * quoted by the caller with %s inside "..." and no inner quotes).
 * Thread-safe: one write(2) per line. Never exits; only main() exits. */
#ifndef PMD_LOG_H
#define PMD_LOG_H

#include <stdarg.h>
#include <stddef.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };
enum log_format { LOG_LOGFMT = 0, LOG_JSON };

/* Set level and format; callable at any time (reload). Default info/logfmt. */
void log_setup(enum log_level level, enum log_format format);
/* Parse "debug|info|warn|error" / "logfmt|json": 0 or -1. */
int log_level_parse(const char *s, enum log_level *out);
int log_format_parse(const char *s, enum log_format *out);
int log_enabled(enum log_level level);

void log_msg(enum log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void log_vmsg(enum log_level level, const char *fmt, va_list ap)
	__attribute__((format(printf, 2, 0)));

#define log_debug(...) do { if (log_enabled(LOG_DEBUG)) log_msg(LOG_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
/* Like log_warn, with error="strerror(errno)" appended. */
void log_syserr(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Quote a value for a field: returns a pointer to a thread-local buffer
 * (one of 4 rotating slots of 512 bytes) holding "..." with \" and \\
 * escaped and control bytes as \xNN; truncated with ... when longer. */
const char *log_q(const char *s);

/* Write a preformatted line (access log) as is, newline added. */
void log_raw(const char *line, size_t len);

#endif
