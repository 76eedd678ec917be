// UNIT-DEPS: acme/renew.c acme/certstore.c acme/jws.c core/fsutil.c
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "acme.h"
#include "certstore.h"

#define DAY 86400

static void test_lifetime_rule(void **state)
{
	(void)state;
	time_t nb = 1700000000;
	/* 90 days: renew with 30 days left */
	assert_int_equal(acme_renewal_time(nb, nb + 90 * DAY), nb + 60 * DAY);
	/* 45 days: 15 left */
	assert_int_equal(acme_renewal_time(nb, nb + 45 * DAY), nb + 30 * DAY);
	/* exactly 10 days is not "shorter than 10 days": a third */
	assert_int_equal(acme_renewal_time(nb, nb + 10 * DAY), nb + 10 * DAY - 10 * DAY / 3);
	/* 6-day shortlived: half */
	assert_int_equal(acme_renewal_time(nb, nb + 6 * DAY), nb + 3 * DAY);
	/* 160 hours (Let's Encrypt shortlived) */
	assert_int_equal(acme_renewal_time(nb, nb + 160 * 3600), nb + 80 * 3600);
	/* 60 seconds (tests) */
	assert_int_equal(acme_renewal_time(nb, nb + 60), nb + 30);
	/* broken dates: due at not_after at the latest */
	assert_int_equal(acme_renewal_time(nb, nb), nb);
}

static void test_ari_pick(void **state)
{
	(void)state;
	time_t s = 1700000000, e = s + 2 * DAY;
	assert_int_equal(acme_ari_pick(s, e, 0), s);
	assert_int_equal(acme_ari_pick(s, e, 2 * DAY), e);
	assert_int_equal(acme_ari_pick(s, e, 2 * DAY + 1), s);
	uint64_t r = 88172645463325252ull;
	time_t lo = e, hi = s;
	for (int i = 0; i < 1000; i++) {
		r ^= r << 13; r ^= r >> 7; r ^= r << 17;
		time_t t = acme_ari_pick(s, e, r);
		assert_true(t >= s && t <= e);
		if (t < lo) lo = t;
		if (t > hi) hi = t;
	}
	/* spread over the window, not stuck at one end */
	assert_true(lo < s + DAY / 4 && hi > e - DAY / 4);
	/* empty or inverted windows: the start */
	assert_int_equal(acme_ari_pick(s, s, 12345), s);
	assert_int_equal(acme_ari_pick(e, s, 12345), e);
}

static void test_backoff(void **state)
{
	(void)state;
	const uint64_t base[] = { 60000, 600000, 6000000, 86400000, 86400000 };
	for (unsigned f = 1; f <= 5; f++) {
		uint64_t b = base[f - 1];
		assert_int_equal(acme_backoff_ms(f, 0), b - b / 10);
		assert_int_equal(acme_backoff_ms(f, b / 5), b + b / 10);
		for (uint64_t r = 1; r < 100000; r += 7919) {
			uint64_t v = acme_backoff_ms(f, r * 2654435761u);
			assert_true(v >= b - b / 10 && v <= b + b / 10);
		}
	}
	assert_int_equal(acme_backoff_ms(100, 0), 86400000 - 8640000);
}

static void test_times(void **state)
{
	(void)state;
	time_t t;
	assert_int_equal(acme_parse_time("2025-01-02T03:04:05Z", &t), 0);
	assert_int_equal(t, 1735787045);
	assert_int_equal(acme_parse_time("2025-01-02T03:04:05.123456789Z", &t), 0);
	assert_int_equal(t, 1735787045);
	assert_int_equal(acme_parse_time("2025-01-02T05:04:05+02:00", &t), 0);
	assert_int_equal(t, 1735787045);
	assert_int_equal(acme_parse_time("2025-01-01T22:04:05-05:00", &t), 0);
	assert_int_equal(t, 1735787045);
	assert_int_equal(acme_parse_time("2025-01-02 03:04:05Z", &t), -1);
	assert_int_equal(acme_parse_time("2025-01-02T03:04:05", &t), -1);
	assert_int_equal(acme_parse_time("2025-01-02T03:04:05Zjunk", &t), -1);
	char buf[32];
	acme_format_time(1735787045, buf, sizeof(buf));
	assert_string_equal(buf, "2025-01-02T03:04:05Z");
}

static void test_ari_cert_id(void **state)
{
	(void)state;
	/* RFC 9773 §4.1 example: keyIdentifier 69:88:5B:...:C8:D4, serial
	 * 00:87:65:43:21 */
	static const unsigned char aki[] = { 0x69, 0x88, 0x5B, 0x6B, 0x87, 0x46, 0x40, 0x41, 0xE1, 0xB3,
		0x7B, 0x84, 0x7B, 0xA0, 0xAE, 0x2C, 0xDE, 0x01, 0xC8, 0xD4 };
	static const unsigned char serial[] = { 0x00, 0x87, 0x65, 0x43, 0x21 };
	char *id = certstore_ari_id_raw(aki, sizeof(aki), serial, sizeof(serial));
	assert_string_equal(id, "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE");
	free(id);
	/* from a bundle; no AKI: no ID */
	struct cert_bundle b;
	memset(&b, 0, sizeof(b));
	memcpy(b.serial, serial, sizeof(serial));
	b.serial_len = sizeof(serial);
	assert_null(certstore_ari_id(&b));
	memcpy(b.aki, aki, sizeof(aki));
	b.aki_len = sizeof(aki);
	id = certstore_ari_id(&b);
	assert_string_equal(id, "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE");
	free(id);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_lifetime_rule),
		cmocka_unit_test(test_ari_pick),
		cmocka_unit_test(test_backoff),
		cmocka_unit_test(test_times),
		cmocka_unit_test(test_ari_cert_id),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
