/* Snapshot publish/acquire under threads, and route/static lookups. */
// UNIT-DEPS: core/snapshot.c
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "snapshot.h"

static struct snap_route mkroute(const char *prefix, const char *host, int svc)
{
	struct snap_route r = { .name = NULL, .prefix = strdup(prefix), .prefix_len = strlen(prefix),
		.host = host ? strdup(host) : NULL, .service = svc };
	return r;
}

/* A snapshot whose single service's name encodes its generation number:
 * readers check the two agree, which fails if they see freed memory. */
static struct snapshot *make_snap(uint64_t tag)
{
	struct snapshot *s = snapshot_new();
	assert_non_null(s);
	s->services = calloc(1, sizeof(*s->services));
	s->services[0].name = malloc(32);
	snprintf(s->services[0].name, 32, "%llu", (unsigned long long)tag);
	s->services[0].live = calloc(1, sizeof(struct backend *));
	s->services[0].live[0] = backend_new("svc", "blue", "127.0.0.1:8000");
	s->services[0].n_live = 1;
	s->n_services = 1;
	s->ps.hold_timeout_ms = tag;
	return s;
}

static atomic_int stop_readers;
static atomic_long reads_done;

static void *reader(void *arg)
{
	(void)arg;
	uint64_t last = 0;
	while (!atomic_load(&stop_readers)) {
		struct snapshot *s = snapshot_acquire();
		if (!s)
			continue;
		char want[32];
		snprintf(want, sizeof(want), "%llu", (unsigned long long)s->ps.hold_timeout_ms);
		if (strcmp(want, s->services[0].name) != 0)
			abort();
		if (s->generation < last) /* generations never go back */
			abort();
		last = s->generation;
		struct backend *b = backend_ref(s->services[0].live[0]);
		atomic_fetch_add(&b->inflight, 1);
		snapshot_release(s);
		/* the backend outlives the snapshot it came from */
		atomic_fetch_sub(&b->inflight, 1);
		backend_unref(b);
		atomic_fetch_add(&reads_done, 1);
	}
	return NULL;
}

static int listener_calls;
static void count_listener(void *arg) { (void)arg; listener_calls++; }

static void test_publish_under_readers(void **state)
{
	(void)state;
	pthread_t t[3];
	assert_int_equal(snapshot_add_listener(count_listener, NULL), 0);
	snapshot_publish(make_snap(1));
	for (int i = 0; i < 3; i++)
		assert_int_equal(pthread_create(&t[i], NULL, reader, NULL), 0);
	for (uint64_t g = 2; g < 20000; g++)
		snapshot_publish(make_snap(g));
	atomic_store(&stop_readers, 1);
	for (int i = 0; i < 3; i++)
		pthread_join(t[i], NULL);
	assert_true(atomic_load(&reads_done) > 0);
	assert_int_equal(listener_calls, 19999);
	struct snapshot *s = snapshot_acquire();
	assert_string_equal(s->services[0].name, "19999");
	assert_int_equal(snapshot_generation(), s->generation);
	snapshot_release(s);
	snapshot_shutdown();
	assert_null(snapshot_acquire());
}

static void test_routes(void **state)
{
	(void)state;
	struct snapshot *s = snapshot_new();
	s->routes = calloc(4, sizeof(*s->routes));
	/* already sorted as the daemon sorts them: longest first, host first */
	s->routes[0] = mkroute("/api/v2/", NULL, 2);
	s->routes[1] = mkroute("/api/", "admin.example.com", 3);
	s->routes[2] = mkroute("/api/", NULL, 0);
	s->routes[3] = mkroute("/", NULL, 1);
	s->n_routes = 4;
	const struct snap_route *r;
	r = snapshot_route(s, "x", 1, "/api/v1/health/", 15);
	assert_int_equal(r->service, 0);
	r = snapshot_route(s, "x", 1, "/api/v2/items", 13);
	assert_int_equal(r->service, 2);
	r = snapshot_route(s, "ADMIN.example.com:443", 21, "/api/x", 6);
	assert_int_equal(r->service, 3);
	r = snapshot_route(s, "admin.example.com.evil", 22, "/api/x", 6);
	assert_int_equal(r->service, 0);
	r = snapshot_route(s, "x", 1, "/apix", 5);
	assert_int_equal(r->service, 1);
	r = snapshot_route(s, "x", 1, "/api", 4); /* prefix is "/api/": no match */
	assert_int_equal(r->service, 1);
	s->n_routes = 3; /* without "/" */
	assert_null(snapshot_route(s, "x", 1, "/index.html", 11));
	s->n_routes = 4;
	snapshot_release(s);
}

static void test_backend_addr(void **state)
{
	(void)state;
	struct backend *b = backend_new("s", "green", "[::1]:9000");
	assert_non_null(b);
	assert_int_equal(b->addr.ss_family, AF_INET6);
	backend_unref(b);
	b = backend_new("s", "blue", "localhost:80");
	assert_non_null(b);
	assert_int_equal(b->addr.ss_family, AF_INET);
	backend_unref(b);
	assert_null(backend_new("s", "blue", "127.0.0.1"));
	assert_null(backend_new("s", "blue", "127.0.0.1:0"));
	assert_null(backend_new("s", "blue", "127.0.0.1:70000"));
	assert_null(backend_new("s", "blue", "example.com:80"));
	assert_null(backend_new("s", "blue", "[::1:80"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_publish_under_readers),
		cmocka_unit_test(test_routes),
		cmocka_unit_test(test_backend_addr),
	};
	return cmocka_run_group_tests_name("snapshot", tests, NULL, NULL);
}
