/* logring — a bounded ring of text lines (an instance's last output lines).
 * Not thread-safe: main thread only. */
#ifndef PMD_LOGRING_H
#define PMD_LOGRING_H

#include <stddef.h>

struct logring;

/* Keeps at most max_lines lines of at most 2 KiB each (longer lines are cut
 * with "..."). NULL on allocation failure. */
struct logring *logring_new(size_t max_lines);
void logring_free(struct logring *r);                  /* NULL ok */
/* Append one line (without its newline). */
void logring_push(struct logring *r, const char *line, size_t len);
/* Feed raw output; complete lines are pushed, a partial tail is kept until
 * its newline (or logring_flush). */
void logring_feed(struct logring *r, const char *data, size_t len);
void logring_flush(struct logring *r);
size_t logring_count(const struct logring *r);
/* Lines pushed since logring_new (kept or not): the difference of two
 * readings is how many of the newest lines are new. */
size_t logring_total(const struct logring *r);
/* i-th line, 0 = oldest kept; NULL past the end. */
const char *logring_line(const struct logring *r, size_t i);

#endif
