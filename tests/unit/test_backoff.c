// UNIT-DEPS: supervisor/backoff.c supervisor/health.c core/httpc.c core/log.c
/* Restart backoff arithmetic and the health model's transition function. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "backoff.h"
#include "health.h"

static void test_backoff(void **unused)
{
	(void)unused;
	assert_int_equal(backoff_delay_ms(0), 1000);
	assert_int_equal(backoff_delay_ms(1), 1000);
	assert_int_equal(backoff_delay_ms(2), 2000);
	assert_int_equal(backoff_delay_ms(3), 4000);
	assert_int_equal(backoff_delay_ms(6), 32000);
	assert_int_equal(backoff_delay_ms(7), 60000);
	assert_int_equal(backoff_delay_ms(8), 60000);
	assert_int_equal(backoff_delay_ms(1000000), 60000);
}

static void test_health_model(void **unused)
{
	enum health_state st = HEALTH_STARTING;
	int p = 0, f = 0;

	(void)unused;
	/* starting: failures never make it unhealthy, 2 passes make it healthy */
	for (int i = 0; i < 10; i++)
		st = health_next(st, false, &p, &f, 2, 3, 0);
	assert_int_equal(st, HEALTH_STARTING);
	assert_int_equal(f, 10);
	st = health_next(st, true, &p, &f, 2, 3, 0);
	assert_int_equal(st, HEALTH_STARTING);
	st = health_next(st, true, &p, &f, 2, 3, 0);
	assert_int_equal(st, HEALTH_HEALTHY);
	/* healthy: 2 failures then a pass keep it healthy, 3 in a row do not */
	st = health_next(st, false, &p, &f, 2, 3, 0);
	st = health_next(st, false, &p, &f, 2, 3, 0);
	st = health_next(st, true, &p, &f, 2, 3, 0);
	assert_int_equal(st, HEALTH_HEALTHY);
	for (int i = 0; i < 3; i++)
		st = health_next(st, false, &p, &f, 2, 3, 0);
	assert_int_equal(st, HEALTH_UNHEALTHY);
	/* unhealthy: back after healthy_threshold passes */
	st = health_next(st, true, &p, &f, 2, 3, 0);
	assert_int_equal(st, HEALTH_UNHEALTHY);
	st = health_next(st, true, &p, &f, 2, 3, 0);
	assert_int_equal(st, HEALTH_HEALTHY);
}

static void test_health_adopted(void **unused)
{
	enum health_state st = HEALTH_STARTING;
	int p = 0, f = 0;

	(void)unused;
	st = health_next(st, true, &p, &f, 3, 3, 1);
	assert_int_equal(st, HEALTH_HEALTHY);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_backoff),
		cmocka_unit_test(test_health_model),
		cmocka_unit_test(test_health_adopted),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
