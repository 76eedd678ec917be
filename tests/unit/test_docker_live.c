// UNIT-DEPS: supervisor/runtime_docker.c supervisor/docker_util.c core/httpc.c core/log.c core/fsutil.c core/logring.c
/* The Docker runtime against a real engine. Skipped unless
 * PMD_TEST_DOCKER_SOCKET names the engine's socket; uses the local image
 * in PMD_TEST_DOCKER_IMAGE (default bbtest:1: busybox with sh, httpd). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <event2/event.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "httpc.h"
#include "runtime.h"

static struct event_base *base;
static struct httpc *hc;
static struct pmd_config cfg;
static struct runtime_ctx rt;
static const char *image;
static struct svc_conf svc;

static int timed_out;
static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what; (void)arg;
	timed_out = 1;
}

static int run_until(const int *flag, int ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	struct event *t = evtimer_new(base, deadline_cb, NULL);

	timed_out = 0;
	evtimer_add(t, &tv);
	while (!*flag && !timed_out)
		event_base_loop(base, EVLOOP_ONCE);
	event_free(t);
	return *flag ? 0 : -1;
}

static int free_port(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001) };
	socklen_t sl = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port;

	bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	getsockname(fd, (struct sockaddr *)&sa, &sl);
	port = ntohs(sa.sin_port);
	close(fd);
	return port;
}

static int setup(void **state)
{
	(void)state;
	const char *sock = getenv("PMD_TEST_DOCKER_SOCKET");

	if (!sock || !*sock)
		return 0;
	image = getenv("PMD_TEST_DOCKER_IMAGE");
	if (!image || !*image)
		image = "bbtest:1";
	base = event_base_new();
	hc = httpc_new(base);
	cfg.docker_socket = (char *)sock;
	rt.base = base;
	rt.httpc = hc;
	rt.cfg = &cfg;
	svc.name = "pmdtest";
	svc.image = (char *)image;
	svc.command = "";
	svc.env_file = "";
	svc.registry_auth_file = "/nonexistent/config.json";
	svc.network = NET_HOST;
	svc.pull = PULL_MISSING;
	svc.port = 8000;
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	httpc_free(hc);
	if (base)
		event_base_free(base);
	return 0;
}

#define NEED_DOCKER() do { if (!hc) skip(); } while (0)

struct res {
	int called, ok, exit_code, exited, exit_calls;
	char err[1024];
	char lines[4096];
	int n_progress;
	struct rt_found found[32];
	size_t n_found;
};

static void done_cb(void *arg, int ok, const char *err)
{
	struct res *r = arg;
	r->called = 1;
	r->ok = ok;
	snprintf(r->err, sizeof(r->err), "%s", err ? err : "");
}

static void progress_cb(void *arg, const char *line)
{
	(void)line;
	((struct res *)arg)->n_progress++;
}

static void exit_cb(void *arg, struct rt_instance *inst, int code, bool oom)
{
	struct res *r = arg;
	(void)inst;
	(void)oom;
	r->exited = 1;
	r->exit_calls++;
	r->exit_code = code;
}

static void join_lines(struct res *r, struct logring *lines)
{
	size_t o = 0;
	for (size_t i = 0; lines && i < logring_count(lines); i++)
		o += (size_t)snprintf(r->lines + o, sizeof(r->lines) - o, "%s\n", logring_line(lines, i));
}

static void logs_cb(void *arg, int ok, const char *err, struct logring *lines)
{
	struct res *r = arg;
	done_cb(arg, ok, err);
	join_lines(r, lines);
}

static void once_cb(void *arg, int code, const char *err, struct logring *out)
{
	struct res *r = arg;
	r->called = 1;
	r->exit_code = code;
	snprintf(r->err, sizeof(r->err), "%s", err ? err : "");
	join_lines(r, out);
}

static void list_cb(void *arg, int ok, const char *err, struct rt_found *f, size_t n)
{
	struct res *r = arg;
	done_cb(arg, ok, err);
	for (size_t i = 0; i < n && i < 32; i++)
		r->found[i] = f[i];
	r->n_found = n;
}

static struct rt_instance *inst_new(const char *color, int port)
{
	struct rt_instance *i = calloc(1, sizeof(*i));
	i->logs = logring_new(100);
	snprintf(i->service, sizeof(i->service), "pmdtest");
	snprintf(i->color, sizeof(i->color), "%s", color);
	snprintf(i->name, sizeof(i->name), "pm-pmdtest-%s", color);
	snprintf(i->image, sizeof(i->image), "%s", image);
	i->host_port = port;
	return i;
}

static void inst_free(struct rt_instance *i)
{
	runtime_docker_ops.release(i);
	logring_free(i->logs);
	free(i);
}

static void test_pull(void **state)
{
	(void)state;
	NEED_DOCKER();
	struct res r = { 0 };

	/* present and pull = missing: no registry contacted */
	runtime_docker_ops.pull(&rt, &svc, image, progress_cb, done_cb, &r);
	assert_int_equal(r.called, 0); /* never synchronous */
	assert_int_equal(run_until(&r.called, 10000), 0);
	assert_true(r.ok);

	/* a registry that is down: a clear error */
	struct svc_conf s2 = svc;
	char img[64];
	memset(&r, 0, sizeof(r));
	s2.pull = PULL_ALWAYS;
	snprintf(img, sizeof(img), "127.0.0.1:%d/pm/none:v1", free_port());
	runtime_docker_ops.pull(&rt, &s2, img, progress_cb, done_cb, &r);
	assert_int_equal(run_until(&r.called, 30000), 0);
	assert_false(r.ok);
	assert_non_null(strstr(r.err, "docker pull 127.0.0.1:"));
	if (!strstr(r.err, "the registry cannot be reached"))
		fail_msg("unexpected error: %s", r.err);

	/* a bad reference never reaches the engine */
	memset(&r, 0, sizeof(r));
	runtime_docker_ops.pull(&rt, &s2, "Bad/Name", progress_cb, done_cb, &r);
	assert_int_equal(run_until(&r.called, 1000), 0);
	assert_false(r.ok);
	assert_non_null(strstr(r.err, "bad image reference"));
}

static void test_lifecycle(void **state)
{
	(void)state;
	NEED_DOCKER();
	struct res r = { 0 }, l = { 0 };
	int port = free_port();
	char cmd[128], *env[] = { "GREETING=hello from pmd", NULL };
	struct svc_conf s = svc;
	struct rt_instance *inst = inst_new("blue", port);

	snprintf(cmd, sizeof(cmd), "sh -c 'echo $GREETING; echo to-stderr >&2; exec httpd -f -p 127.0.0.1:%d'", port);
	s.command = cmd;
	runtime_docker_ops.start(&rt, &s, inst, env, exit_cb, done_cb, &r);
	assert_int_equal(run_until(&r.called, 30000), 0);
	assert_string_equal(r.err, "");
	assert_true(r.ok);
	assert_true(strlen(inst->id) >= 12);
	char want[64];
	snprintf(want, sizeof(want), "127.0.0.1:%d", port);
	assert_string_equal(inst->addr, want);

	/* output reaches the instance's ring (followed logs) */
	int never = 0;
	run_until(&never, 1500);
	runtime_docker_ops.logs(&rt, inst, 10, logs_cb, &l);
	assert_int_equal(run_until(&l.called, 10000), 0);
	assert_true(l.ok);
	assert_non_null(strstr(l.lines, "hello from pmd\n"));
	assert_non_null(strstr(l.lines, "to-stderr\n"));
	assert_true(logring_count(inst->logs) >= 2);

	/* listed with its labels */
	memset(&l, 0, sizeof(l));
	runtime_docker_ops.list(&rt, list_cb, &l);
	assert_int_equal(run_until(&l.called, 10000), 0);
	assert_true(l.ok);
	int seen = 0;
	for (size_t i = 0; i < l.n_found; i++)
		if (strcmp(l.found[i].id, inst->id) == 0) {
			seen = 1;
			assert_string_equal(l.found[i].service, "pmdtest");
			assert_string_equal(l.found[i].color, "blue");
			assert_string_equal(l.found[i].image, image);
			assert_int_equal(l.found[i].host_port, port);
			assert_true(l.found[i].running);
		}
	assert_true(seen);

	/* adopt it from a second record (as after a restart of pmd) */
	struct rt_instance *again = inst_new("blue", 0);
	snprintf(again->id, sizeof(again->id), "%s", inst->id);
	memset(&l, 0, sizeof(l));
	runtime_docker_ops.adopt(&rt, &s, again, exit_cb, done_cb, &l);
	assert_int_equal(run_until(&l.called, 10000), 0);
	assert_true(l.ok);
	assert_string_equal(again->addr, want);
	inst_free(again);

	/* stop: exit reported once, then removed */
	memset(&r, 0, sizeof(r));
	runtime_docker_ops.stop(&rt, inst, 2000, done_cb, &r);
	assert_int_equal(run_until(&r.called, 30000), 0);
	assert_true(r.ok);
	assert_int_equal(r.exit_calls, 1);
	inst_free(inst);
}

static void test_crash_detected(void **state)
{
	(void)state;
	NEED_DOCKER();
	struct res r = { 0 };
	struct svc_conf s = svc;
	struct rt_instance *inst = inst_new("green", free_port());
	char *env[] = { NULL };

	s.command = "sh -c 'echo dying; exit 7'";
	runtime_docker_ops.start(&rt, &s, inst, env, exit_cb, done_cb, &r);
	assert_int_equal(run_until(&r.called, 30000), 0);
	assert_true(r.ok);
	assert_int_equal(run_until(&r.exited, 30000), 0);
	assert_int_equal(r.exit_code, 7);
	assert_int_equal(r.exit_calls, 1);

	/* start again under the same name: the exited one is replaced */
	struct rt_instance *inst2 = inst_new("green", free_port());
	struct res r2 = { 0 };
	s.command = "sleep 30";
	runtime_docker_ops.start(&rt, &s, inst2, env, exit_cb, done_cb, &r2);
	assert_int_equal(run_until(&r2.called, 30000), 0);
	assert_string_equal(r2.err, "");
	assert_string_not_equal(inst2->id, inst->id);
	memset(&r2, 0, sizeof(r2));
	runtime_docker_ops.stop(&rt, inst2, 1000, done_cb, &r2);
	assert_int_equal(run_until(&r2.called, 30000), 0);
	assert_true(r2.ok);
	inst_free(inst2);
	inst_free(inst);

	/* a command that cannot run: error names the container, nothing left */
	struct rt_instance *inst3 = inst_new("blue", free_port());
	memset(&r, 0, sizeof(r));
	s.command = "/no/such/binary";
	runtime_docker_ops.start(&rt, &s, inst3, env, exit_cb, done_cb, &r);
	assert_int_equal(run_until(&r.called, 30000), 0);
	assert_false(r.ok);
	assert_non_null(strstr(r.err, "docker start pm-pmdtest-blue: "));
	inst_free(inst3);
}

static void test_run_once(void **state)
{
	(void)state;
	NEED_DOCKER();
	struct res r = { 0 };
	char *env[] = { "WHO=migrations", NULL };

	runtime_docker_ops.run_once(&rt, &svc, image, "sh -c 'echo running $WHO; exit 3'", env, 30000, once_cb, &r);
	assert_int_equal(run_until(&r.called, 30000), 0);
	assert_string_equal(r.err, "");
	assert_int_equal(r.exit_code, 3);
	assert_string_equal(r.lines, "running migrations\n");

	memset(&r, 0, sizeof(r));
	runtime_docker_ops.run_once(&rt, &svc, image, "sleep 30", env, 1000, once_cb, &r);
	assert_int_equal(run_until(&r.called, 30000), 0);
	assert_int_equal(r.exit_code, -1);
	assert_non_null(strstr(r.err, "did not finish within 1s"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pull),
		cmocka_unit_test(test_lifecycle),
		cmocka_unit_test(test_crash_detected),
		cmocka_unit_test(test_run_once),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
