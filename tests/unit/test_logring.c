// UNIT-DEPS: core/logring.c
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "logring.h"

static void test_push_and_wrap(void **state)
{
	(void)state;
	struct logring *r = logring_new(3);
	char buf[16];

	assert_non_null(r);
	assert_int_equal(logring_count(r), 0);
	assert_null(logring_line(r, 0));
	for (int i = 0; i < 5; i++) {
		int n = snprintf(buf, sizeof(buf), "line%d", i);
		logring_push(r, buf, (size_t)n);
	}
	assert_int_equal(logring_count(r), 3);
	assert_string_equal(logring_line(r, 0), "line2");
	assert_string_equal(logring_line(r, 1), "line3");
	assert_string_equal(logring_line(r, 2), "line4");
	assert_null(logring_line(r, 3));
	logring_free(r);
}

static void test_feed_partial_lines(void **state)
{
	(void)state;
	struct logring *r = logring_new(10);

	logring_feed(r, "hel", 3);
	assert_int_equal(logring_count(r), 0);
	logring_feed(r, "lo\nwor", 6);
	assert_int_equal(logring_count(r), 1);
	assert_string_equal(logring_line(r, 0), "hello");
	logring_feed(r, "ld\r\n\nlast", 9);
	assert_int_equal(logring_count(r), 3);
	assert_string_equal(logring_line(r, 1), "world");
	assert_string_equal(logring_line(r, 2), "");
	logring_flush(r);
	assert_int_equal(logring_count(r), 4);
	assert_string_equal(logring_line(r, 3), "last");
	logring_flush(r); /* nothing pending: no empty line added */
	assert_int_equal(logring_count(r), 4);
	logring_free(r);
}

static void test_long_lines_cut(void **state)
{
	(void)state;
	struct logring *r = logring_new(4);
	char big[5000];

	memset(big, 'x', sizeof(big));
	logring_push(r, big, sizeof(big));
	assert_int_equal(strlen(logring_line(r, 0)), 2048);
	assert_string_equal(logring_line(r, 0) + 2045, "...");

	/* fed in pieces, longer than a line: cut once, next line intact */
	logring_feed(r, big, 3000);
	logring_feed(r, big, 3000);
	logring_feed(r, "\nok\n", 4);
	assert_int_equal(logring_count(r), 3);
	assert_int_equal(strlen(logring_line(r, 1)), 2048);
	assert_string_equal(logring_line(r, 1) + 2045, "...");
	assert_string_equal(logring_line(r, 2), "ok");
	logring_free(r);
	logring_free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_push_and_wrap),
		cmocka_unit_test(test_feed_partial_lines),
		cmocka_unit_test(test_long_lines_cut),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
