/* libFuzzer harness: the chunked decoder fed the same stream two ways —
 * all at once, and in pieces whose sizes come from the input's first byte
 * (a caller keeping unconsumed framing bytes, as over evbuffers) — with
 * NULL buffers in the data state. Checked with abort(): each step takes no
 * more than it was given, total equals the data handed out and never
 * exceeds the bytes fed nor max_body, the end is sticky, and both feeds
 * agree on the outcome, the data and the bytes consumed. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

#define CHECK(x) do { if (!(x)) abort(); } while (0)

struct outcome {
	int result;              /* 0 end, -1 malformed, -2 input ended */
	size_t used;
	size_t outlen;
	bool too_large;
};

static void decode(const char *in, size_t n, size_t piece, uint64_t max_body,
	char *out, struct outcome *o)
{
	struct http_chunked c;
	size_t avail = piece < n ? piece : n, pos = 0;
	int is_data;

	http_chunked_init(&c, max_body);
	o->outlen = 0;
	for (;;) {
		int r = http_chunked_in_data(&c)
			? http_chunked_step(&c, NULL, avail - pos, &is_data)
			: http_chunked_step(&c, in + pos, avail - pos, &is_data);
		CHECK(r >= -2);
		if (r == 0) {
			CHECK(http_chunked_step(&c, in + pos, avail - pos,
				&is_data) == 0);
			o->result = 0;
			break;
		}
		if (r == -1) {
			o->result = -1;
			break;
		}
		if (r == -2) {
			if (avail == n) {
				o->result = -2;
				break;
			}
			avail = avail + piece < n ? avail + piece : n;
			continue;
		}
		CHECK((size_t)r <= avail - pos);
		if (is_data) {
			memcpy(out + o->outlen, in + pos, (size_t)r);
			o->outlen += (size_t)r;
		}
		pos += (size_t)r;
		CHECK(c.total == o->outlen && c.total <= pos);
		CHECK(max_body == 0 || c.total <= max_body);
		CHECK(c.trailer_bytes <= 16384);
	}
	o->used = pos;
	o->too_large = c.too_large;
	CHECK(!c.too_large || o->result == -1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	size_t piece = data[0] ? data[0] : 1;
	uint64_t max_body = data[1] & 0x80 ? data[1] & 0x7f : 0;
	const char *in = (const char *)data + 2;
	size_t n = size - 2;
	char *a = malloc(n + 1), *b = malloc(n + 1);
	struct outcome oa, ob;

	CHECK(a != NULL && b != NULL);
	decode(in, n, n, max_body, a, &oa);
	decode(in, n, piece, max_body, b, &ob);
	CHECK(oa.result == ob.result && oa.too_large == ob.too_large);
	CHECK(oa.outlen == ob.outlen && memcmp(a, b, oa.outlen) == 0);
	if (oa.result == 0)
		CHECK(oa.used == ob.used);
	free(a);
	free(b);
	return 0;
}
