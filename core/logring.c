/* logring — bounded ring of text lines; see include/logring.h. */
#include "logring.h"

#include <stdlib.h>
#include <string.h>

#define LINE_MAX_BYTES 2048
#define ELLIPSIS "..."

struct logring {
	char **lines;        /* max slots, each malloc'd or NULL */
	size_t max, head, n; /* head: index of the oldest line */
	size_t total;        /* lines pushed ever */
	char part[LINE_MAX_BYTES + 1]; /* pending partial line of logring_feed */
	size_t part_len;
	int part_cut;        /* the pending line overflowed: rest is dropped */
};

struct logring *logring_new(size_t max_lines)
{
	struct logring *r;

	if (max_lines == 0)
		max_lines = 1;
	r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	r->lines = calloc(max_lines, sizeof(*r->lines));
	if (!r->lines) {
		free(r);
		return NULL;
	}
	r->max = max_lines;
	return r;
}

void logring_free(struct logring *r)
{
	if (!r)
		return;
	for (size_t i = 0; i < r->max; i++)
		free(r->lines[i]);
	free(r->lines);
	free(r);
}

/* Store one line; cut marks a line that had more bytes than were given. */
static void push_line(struct logring *r, const char *line, size_t len, int cut)
{
	size_t keep = len, slot;
	char *s;

	if (len > LINE_MAX_BYTES || cut) {
		cut = 1;
		if (keep > LINE_MAX_BYTES - strlen(ELLIPSIS))
			keep = LINE_MAX_BYTES - strlen(ELLIPSIS);
	}
	if (keep > 0 && line[keep - 1] == '\r' && !cut)
		keep--;
	s = malloc(keep + (cut ? strlen(ELLIPSIS) : 0) + 1);
	if (!s)
		return; /* dropping a log line beats failing the caller */
	memcpy(s, line, keep);
	if (cut)
		memcpy(s + keep, ELLIPSIS, strlen(ELLIPSIS)), keep += strlen(ELLIPSIS);
	s[keep] = '\0';

	r->total++;
	if (r->n == r->max) {
		free(r->lines[r->head]);
		r->lines[r->head] = s;
		r->head = (r->head + 1) % r->max;
		return;
	}
	slot = (r->head + r->n) % r->max;
	r->lines[slot] = s;
	r->n++;
}

void logring_push(struct logring *r, const char *line, size_t len)
{
	if (r)
		push_line(r, line, len, 0);
}

/* Append to the pending partial line, remembering an overflow. */
static void part_append(struct logring *r, const char *data, size_t len)
{
	size_t room = LINE_MAX_BYTES - r->part_len;

	if (len > room) {
		len = room;
		r->part_cut = 1;
	}
	memcpy(r->part + r->part_len, data, len);
	r->part_len += len;
}

void logring_feed(struct logring *r, const char *data, size_t len)
{
	if (!r)
		return;
	while (len > 0) {
		const char *nl = memchr(data, '\n', len);
		size_t seg = nl ? (size_t)(nl - data) : len;

		if (!nl) {
			part_append(r, data, seg);
			return;
		}
		if (r->part_len == 0 && !r->part_cut) {
			push_line(r, data, seg, 0);
		} else {
			part_append(r, data, seg);
			push_line(r, r->part, r->part_len, r->part_cut);
			r->part_len = 0;
			r->part_cut = 0;
		}
		data += seg + 1;
		len -= seg + 1;
	}
}

void logring_flush(struct logring *r)
{
	if (!r || (r->part_len == 0 && !r->part_cut))
		return;
	push_line(r, r->part, r->part_len, r->part_cut);
	r->part_len = 0;
	r->part_cut = 0;
}

size_t logring_count(const struct logring *r)
{
	return r ? r->n : 0;
}

size_t logring_total(const struct logring *r)
{
	return r ? r->total : 0;
}

const char *logring_line(const struct logring *r, size_t i)
{
	if (!r || i >= r->n)
		return NULL;
	return r->lines[(r->head + i) % r->max];
}
