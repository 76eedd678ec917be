/* Unit tests for core/config.c: value parsers, defaults, the SPEC example,
 * and every error class with its exact FILE:LINE message. */
// UNIT-DEPS: core/config.c core/log.c
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

/* Loads `text` as "pmd.ini"; returns the errors joined by "\n" (malloc'd,
 * "" when it loaded). *cfg is set on success, NULL otherwise. */
static char *load(const char *text, struct pmd_config **cfg)
{
	struct strlist errs = { 0 };
	size_t len = 1;
	*cfg = NULL;
	int rc = config_load_string("pmd.ini", text, cfg, &errs);
	for (size_t i = 0; i < errs.n; i++)
		len += strlen(errs.v[i]) + 1;
	char *out = calloc(1, len);
	assert_non_null(out);
	for (size_t i = 0, o = 0; i < errs.n; i++)
		o += (size_t)snprintf(out + o, len - o, "%s%s", i ? "\n" : "", errs.v[i]);
	assert_int_equal(rc, errs.n ? -1 : 0);
	if (rc == 0)
		assert_non_null(*cfg);
	else
		assert_null(*cfg);
	strlist_free(&errs);
	return out;
}

/* Asserts that `text` is refused with exactly `want` (lines joined by \n). */
static void expect_errors(const char *text, const char *want)
{
	struct pmd_config *cfg;
	char *got = load(text, &cfg);
	if (strcmp(got, want) != 0)
		fail_msg("config:\n%s\nwant:\n%s\ngot:\n%s", text, want, got);
	free(got);
}

static struct pmd_config *expect_ok(const char *text)
{
	struct pmd_config *cfg;
	char *got = load(text, &cfg);
	if (*got)
		fail_msg("config:\n%s\nunexpected errors:\n%s", text, got);
	free(got);
	return cfg;
}

#define NO_TLS "[tls]\nmode = off\n"

/* ---- value parsers ---- */

static void test_durations(void **state)
{
	(void)state;
	static const struct {
		const char *s;
		uint64_t ms;
	} ok[] = {
		{ "0", 0 }, { "0s", 0 }, { "1ms", 1 }, { "30s", 30000 }, { "5m", 300000 }, { "2h", 7200000 },
		{ "1d", 86400000 }, { "007s", 7000 }, { "18446744073709551615ms", UINT64_MAX },
		{ "213503982334d", 213503982334ull * 86400000ull },
	};
	static const char *const bad[] = {
		"", "30x", "-1s", "+1s", "1.5m", "30", "00", "s", " 30s", "30s ", "30 s", "30S", "1sec",
		"18446744073709551616ms", /* digits overflow */
		"213503982335d",          /* multiplication overflows */
		"18446744073709551615s",
	};
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		uint64_t ms = 12345;
		if (config_parse_duration(ok[i].s, &ms) != 0)
			fail_msg("refused %s", ok[i].s);
		assert_true(ms == ok[i].ms);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		uint64_t ms = 12345;
		if (config_parse_duration(bad[i], &ms) != -1)
			fail_msg("accepted \"%s\"", bad[i]);
		assert_true(ms == 12345);
	}
}

static void test_status_ranges(void **state)
{
	static const char *const bad[] = { "", "2xx", "99", "600", "300-200", "200-", "-299",
		"200-299-300", " 200", "200 - 299" };
	int lo = 1, hi = 1;

	(void)state;
	assert_int_equal(config_parse_status_range("200-299", &lo, &hi), 0);
	assert_int_equal(lo, 200);
	assert_int_equal(hi, 299);
	assert_int_equal(config_parse_status_range("204", &lo, &hi), 0);
	assert_int_equal(lo, 204);
	assert_int_equal(hi, 204);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (config_parse_status_range(bad[i], &lo, &hi) != -1)
			fail_msg("accepted \"%s\"", bad[i]);
}

static void test_sizes(void **state)
{
	(void)state;
	static const struct {
		const char *s;
		uint64_t b;
	} ok[] = {
		{ "0", 0 }, { "512", 512 }, { "16k", 16384 }, { "16K", 16384 }, { "100m", 104857600 },
		{ "1g", 1073741824 }, { "17179869183g", 17179869183ull << 30 },
	};
	static const char *const bad[] = {
		"", "k", "1t", "1.5k", "-1", "16kb", " 16k", "16 k", "17179869184g", "99999999999999999999",
	};
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		uint64_t b = 7;
		if (config_parse_size(ok[i].s, &b) != 0)
			fail_msg("refused %s", ok[i].s);
		assert_true(b == ok[i].b);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		uint64_t b = 7;
		if (config_parse_size(bad[i], &b) != -1)
			fail_msg("accepted \"%s\"", bad[i]);
	}
}

static void test_listen(void **state)
{
	(void)state;
	struct listen_addr a;

	assert_int_equal(config_parse_listen("0.0.0.0:80", &a), 0);
	assert_string_equal(a.text, "0.0.0.0:80");
	assert_int_equal(a.ss.ss_family, AF_INET);
	assert_int_equal(a.sslen, sizeof(struct sockaddr_in));
	const struct sockaddr_in *sin = (const void *)&a.ss;
	assert_int_equal(ntohs(sin->sin_port), 80);
	assert_int_equal(sin->sin_addr.s_addr, htonl(INADDR_ANY));

	assert_int_equal(config_parse_listen("127.0.0.1:8080", &a), 0);
	assert_int_equal(ntohl(sin->sin_addr.s_addr), 0x7f000001);
	assert_int_equal(ntohs(sin->sin_port), 8080);

	assert_int_equal(config_parse_listen("[::]:443", &a), 0);
	assert_string_equal(a.text, "[::]:443");
	assert_int_equal(a.ss.ss_family, AF_INET6);
	assert_int_equal(a.sslen, sizeof(struct sockaddr_in6));
	const struct sockaddr_in6 *sin6 = (const void *)&a.ss;
	assert_int_equal(ntohs(sin6->sin6_port), 443);
	assert_true(IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr));

	assert_int_equal(config_parse_listen("[::1]:65535", &a), 0);
	assert_true(IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr));
	assert_int_equal(ntohs(sin6->sin6_port), 65535);

	static const char *const bad[] = {
		"localhost:80", "0.0.0.0", "0.0.0.0:0", "0.0.0.0:65536", "0.0.0.0:http", "[::]443", "::1:80",
		"[::1]", "1.2.3.4:80x", ":80", "[fe80::1%eth0]:80", "1.2.3:80", "", "[::]:", "0.0.0.0: 80",
		"256.0.0.1:80",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memset(&a, 0x5a, sizeof(a));
		if (config_parse_listen(bad[i], &a) != -1)
			fail_msg("accepted \"%s\"", bad[i]);
	}
}

/* ---- whole files ---- */

static void test_defaults(void **state)
{
	(void)state;
	struct pmd_config *c = expect_ok(NO_TLS "[service backend]\nimage = img:1\n"
					 "[route web]\nprefix = /\nservice = backend\n");
	assert_string_equal(c->path, "pmd.ini");
	assert_string_equal(c->state_dir, "/var/lib/pmd");
	assert_string_equal(c->control_socket, "/run/pmd/control.sock");
	assert_string_equal(c->control_group, "deploy");
	assert_string_equal(c->docker_socket, "/var/run/docker.sock");
	assert_int_equal(c->log_format, LOG_LOGFMT);
	assert_int_equal(c->log_level, LOG_INFO);

	assert_int_equal(c->n_http_listen, 1);
	assert_string_equal(c->http_listen[0].text, "0.0.0.0:80");
	assert_int_equal(c->n_https_listen, 0); /* mode = off: not bound */
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	assert_int_equal(c->workers, cpus > 64 ? 64 : cpus);
	assert_true(c->redirect_https);
	assert_string_equal(c->hsts, "max-age=31536000");
	assert_int_equal(c->max_connections, 10000);
	assert_true(c->max_header_bytes == 16384);
	assert_true(c->max_body_bytes == 100u << 20);
	assert_true(c->client_header_timeout_ms == 10000);
	assert_true(c->idle_timeout_ms == 60000);
	assert_true(c->upstream_connect_timeout_ms == 5000);
	assert_true(c->upstream_response_timeout_ms == 60000);
	assert_true(c->hold_timeout_ms == 10000);
	assert_true(c->access_log);

	assert_int_equal(c->tls_mode, TLS_OFF);
	assert_int_equal(c->domains.n, 0);
	assert_string_equal(c->acme_directory, "https://acme-v02.api.letsencrypt.org/directory");
	assert_string_equal(c->acme_email, "");
	assert_string_equal(c->acme_ca_file, "");
	assert_string_equal(c->acme_profile, "");
	assert_string_equal(c->cert_file, "");
	assert_string_equal(c->key_file, "");

	assert_int_equal(c->n_services, 1);
	const struct svc_conf *s = &c->services[0];
	assert_string_equal(s->name, "backend");
	assert_int_equal(s->line, 3);
	assert_int_equal(s->runtime, RUNTIME_DOCKER);
	assert_string_equal(s->address, "");
	assert_string_equal(s->image, "img:1");
	assert_string_equal(s->command, "");
	assert_string_equal(s->env_file, "");
	assert_int_equal(s->env.n, 0);
	assert_int_equal(s->required_env.n, 0);
	assert_int_equal(s->port, 8000);
	assert_int_equal(s->network, NET_BRIDGE);
	assert_int_equal(s->volumes.n, 0);
	assert_int_equal(s->pull, PULL_ALWAYS);
	assert_string_equal(s->registry_auth_file, "");
	assert_string_equal(s->release_command, "");
	assert_string_equal(s->health_path, "/api/v1/health/");
	assert_string_equal(s->health_host, "");
	assert_string_equal(s->health_status, "200-299");
	assert_true(s->health_interval_ms == 2000);
	assert_true(s->health_timeout_ms == 2000);
	assert_int_equal(s->healthy_threshold, 2);
	assert_int_equal(s->unhealthy_threshold, 3);
	assert_true(s->start_timeout_ms == 120000);
	assert_true(s->drain_timeout_ms == 30000);
	assert_true(s->stop_timeout_ms == 10000);
	assert_int_equal(s->restart, RESTART_ALWAYS);
	assert_true(s->unhealthy_restart_ms == 60000);
	assert_int_equal(s->keep_images, 3);

	assert_int_equal(c->n_routes, 1);
	assert_string_equal(c->routes[0].host, "");
	assert_int_equal(c->routes[0].svc_index, 0);
	assert_int_equal(c->n_statics, 0);
	config_free(c);
}

static const char spec_config[] =
	"; SPEC.md's example, with every key\n"
	"[pmd]\n"
	"state_dir = /var/lib/pmd            ; state.json, certs/, acme account\n"
	"control_socket = /run/pmd/control.sock\n"
	"control_group = deploy\n"
	"docker_socket = /var/run/docker.sock\n"
	"log_format = json\n"
	"log_level = debug\n"
	"\n"
	"[proxy]\n"
	"http_listen = 0.0.0.0:80, [::]:80\n"
	"https_listen = 0.0.0.0:443,[::]:443\n"
	"workers = 4\n"
	"redirect_https = no\n"
	"hsts = max-age=31536000; includeSubDomains\n"
	"max_connections = 20000\n"
	"max_header_bytes = 32k\n"
	"max_body_bytes = 1g\n"
	"client_header_timeout = 15s\n"
	"idle_timeout = 2m\n"
	"upstream_connect_timeout = 500ms\n"
	"upstream_response_timeout = 1h\n"
	"hold_timeout = 0\n"
	"access_log = off\n"
	"\n"
	"[tls]\n"
	"mode = acme\n"
	"domains = meatscentral.com, www.meatscentral.com\n"
	"acme_directory = https://127.0.0.1:14000/dir\n"
	"acme_email = ops@meatscentral.com\n"
	"acme_ca_file = /etc/pebble/ca.pem\n"
	"acme_profile = shortlived\n"
	"cert_file =\n"
	"key_file =\n"
	"\n"
	"[service backend]\n"
	"runtime = docker\n"
	"image = registry.digitalocean.com/pm/backend:prod-latest\n"
	"command = gunicorn config.wsgi\n"
	"  --workers 3   ; continued\n"
	"env_file = /opt/pm/backend/.env\n"
	"env = DJANGO_SETTINGS_MODULE=config.settings.production  ; repeatable\n"
	"env = EMPTY=\n"
	"required_env = DATABASE_URL, SECRET_KEY\n"
	"port = 8001\n"
	"network = host\n"
	"volumes = static_data:/app/static\n"
	"volumes = /srv/media:/app/media:ro\n"
	"pull = missing\n"
	"registry_auth_file = /root/.docker/config.json\n"
	"release_command = python manage.py migrate --noinput\n"
	"health_path = /api/v1/health/\n"
	"health_host = meatscentral.com\n"
	"health_interval = 3s\n"
	"health_timeout = 1500ms\n"
	"healthy_threshold = 1\n"
	"unhealthy_threshold = 100\n"
	"start_timeout = 5m\n"
	"drain_timeout = 0\n"
	"stop_timeout = 20s\n"
	"restart = on-failure\n"
	"unhealthy_restart = 0\n"
	"keep_images = 0\n"
	"\n"
	"[service frontend]\n"
	"runtime = exec\n"
	"command = python3 -m http.server ${PORT}\n"
	"health_path = /\n"
	"restart = never\n"
	"\n"
	"[service bench]\n"
	"runtime = external\n"
	"address = 127.0.0.1:9000\n"
	"\n"
	"[route api]\n"
	"prefix = /api/\n"
	"host = meatscentral.com\n"
	"service = backend\n"
	"\n"
	"[route web]\n"
	"prefix = /\n"
	"service = frontend\n"
	"\n"
	"[static env-config]\n"
	"path = /env-config.js\n"
	"file = /opt/pm/frontend/env-config.js\n"
	"\n"
	"[static robots]\n"
	"path = /robots.txt\n"
	"file = /opt/pm/robots\n"
	"content_type = text/plain\n";

static void check_spec_config(struct pmd_config *c)
{
	assert_int_equal(c->log_format, LOG_JSON);
	assert_int_equal(c->log_level, LOG_DEBUG);
	assert_int_equal(c->n_http_listen, 2);
	assert_string_equal(c->http_listen[1].text, "[::]:80");
	assert_int_equal(c->http_listen[1].ss.ss_family, AF_INET6);
	assert_int_equal(c->n_https_listen, 2);
	assert_string_equal(c->https_listen[0].text, "0.0.0.0:443");
	assert_string_equal(c->https_listen[1].text, "[::]:443");
	assert_int_equal(c->workers, 4);
	assert_false(c->redirect_https);
	assert_string_equal(c->hsts, "max-age=31536000; includeSubDomains");
	assert_int_equal(c->max_connections, 20000);
	assert_true(c->max_header_bytes == 32768);
	assert_true(c->max_body_bytes == 1u << 30);
	assert_true(c->client_header_timeout_ms == 15000);
	assert_true(c->idle_timeout_ms == 120000);
	assert_true(c->upstream_connect_timeout_ms == 500);
	assert_true(c->upstream_response_timeout_ms == 3600000);
	assert_true(c->hold_timeout_ms == 0);
	assert_false(c->access_log);

	assert_int_equal(c->tls_mode, TLS_ACME);
	assert_int_equal(c->domains.n, 2);
	assert_string_equal(c->domains.v[0], "meatscentral.com");
	assert_string_equal(c->domains.v[1], "www.meatscentral.com");
	assert_string_equal(c->acme_directory, "https://127.0.0.1:14000/dir");
	assert_string_equal(c->acme_email, "ops@meatscentral.com");
	assert_string_equal(c->acme_ca_file, "/etc/pebble/ca.pem");
	assert_string_equal(c->acme_profile, "shortlived");
	assert_string_equal(c->cert_file, "");

	assert_int_equal(c->n_services, 3);
	const struct svc_conf *b = config_service(c, "backend");
	assert_ptr_equal(b, &c->services[0]);
	assert_int_equal(b->line, 36);
	assert_string_equal(b->image, "registry.digitalocean.com/pm/backend:prod-latest");
	assert_string_equal(b->command, "gunicorn config.wsgi --workers 3");
	assert_string_equal(b->env_file, "/opt/pm/backend/.env");
	assert_int_equal(b->env.n, 2);
	assert_string_equal(b->env.v[0], "DJANGO_SETTINGS_MODULE=config.settings.production");
	assert_string_equal(b->env.v[1], "EMPTY=");
	assert_int_equal(b->required_env.n, 2);
	assert_string_equal(b->required_env.v[1], "SECRET_KEY");
	assert_int_equal(b->port, 8001);
	assert_int_equal(b->network, NET_HOST);
	assert_int_equal(b->volumes.n, 2);
	assert_string_equal(b->volumes.v[0], "static_data:/app/static");
	assert_string_equal(b->volumes.v[1], "/srv/media:/app/media:ro");
	assert_int_equal(b->pull, PULL_MISSING);
	assert_string_equal(b->registry_auth_file, "/root/.docker/config.json");
	assert_string_equal(b->release_command, "python manage.py migrate --noinput");
	assert_string_equal(b->health_host, "meatscentral.com");
	assert_true(b->health_interval_ms == 3000);
	assert_true(b->health_timeout_ms == 1500);
	assert_int_equal(b->healthy_threshold, 1);
	assert_int_equal(b->unhealthy_threshold, 100);
	assert_true(b->start_timeout_ms == 300000);
	assert_true(b->drain_timeout_ms == 0);
	assert_true(b->stop_timeout_ms == 20000);
	assert_int_equal(b->restart, RESTART_ON_FAILURE);
	assert_true(b->unhealthy_restart_ms == 0);
	assert_int_equal(b->keep_images, 0);

	const struct svc_conf *f = config_service(c, "frontend");
	assert_non_null(f);
	assert_int_equal(f->runtime, RUNTIME_EXEC);
	assert_string_equal(f->command, "python3 -m http.server ${PORT}");
	assert_string_equal(f->image, "");
	assert_int_equal(f->restart, RESTART_NEVER);
	const struct svc_conf *x = config_service(c, "bench");
	assert_non_null(x);
	assert_int_equal(x->runtime, RUNTIME_EXTERNAL);
	assert_string_equal(x->address, "127.0.0.1:9000");
	assert_null(config_service(c, "nope"));

	assert_int_equal(c->n_routes, 2);
	assert_string_equal(c->routes[0].name, "api");
	assert_string_equal(c->routes[0].prefix, "/api/");
	assert_string_equal(c->routes[0].host, "meatscentral.com");
	assert_int_equal(c->routes[0].svc_index, 0);
	assert_int_equal(c->routes[1].svc_index, 1);
	assert_string_equal(c->routes[1].service, "frontend");

	assert_int_equal(c->n_statics, 2);
	assert_string_equal(c->statics[0].name, "env-config");
	assert_string_equal(c->statics[0].path, "/env-config.js");
	assert_string_equal(c->statics[0].file, "/opt/pm/frontend/env-config.js");
	assert_string_equal(c->statics[0].content_type, "");   /* by extension when served */
	assert_string_equal(c->statics[1].content_type, "text/plain");
}

static void test_spec_config(void **state)
{
	(void)state;
	struct pmd_config *c = expect_ok(spec_config);
	check_spec_config(c);
	config_free(c);
}

/* The same document through a real file, and a missing file. */
static void test_load_file(void **state)
{
	(void)state;
	char path[] = "/tmp/pmd-test-config-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, spec_config, sizeof(spec_config) - 1), (ssize_t)(sizeof(spec_config) - 1));
	close(fd);

	struct strlist errs = { 0 };
	struct pmd_config *c = NULL;
	assert_int_equal(config_load(path, &c, &errs), 0);
	assert_int_equal(errs.n, 0);
	assert_string_equal(c->path, path);
	check_spec_config(c);
	config_free(c);
	unlink(path);

	c = NULL;
	assert_int_equal(config_load(path, &c, &errs), -1);
	assert_null(c);
	assert_int_equal(errs.n, 1);
	char want[128];
	snprintf(want, sizeof(want), "%s: cannot read: No such file or directory", path);
	assert_string_equal(errs.v[0], want);
	strlist_free(&errs);

	assert_int_equal(config_load("/tmp", &c, &errs), -1);
	assert_int_equal(errs.n, 1);
	assert_string_equal(errs.v[0], "/tmp: cannot read: Is a directory");
	strlist_free(&errs);
}

/* [static]: one file or one folder, and what each excludes. */
static void test_static_sections(void **state)
{
	(void)state;
	struct pmd_config *c = expect_ok(NO_TLS
					 "[static a]\npath = /a\nfile = /x/app.JS\n"
					 "[static b]\npath = /static/\ndir = /srv/static\nfallback = route\n"
					 "[static c]\npath = /media/\ndir = /srv/media\n");
	assert_int_equal(c->n_statics, 3);
	assert_int_equal(c->n_services, 0); /* a proxy with statics only is fine */
	assert_string_equal(c->statics[0].content_type, "");   /* by extension, when served */
	assert_string_equal(c->statics[0].dir, "");
	assert_int_equal(c->statics[0].src_line, 5);
	assert_string_equal(c->statics[1].dir, "/srv/static");
	assert_string_equal(c->statics[1].file, "");
	assert_int_equal(c->statics[1].fallback, STATIC_FALLBACK_ROUTE);
	assert_int_equal(c->statics[1].src_line, 8);
	assert_int_equal(c->statics[2].fallback, STATIC_FALLBACK_NONE);
	config_free(c);

	expect_errors(NO_TLS "[static a]\npath = /a\n",
		      "pmd.ini:3: [static a]: missing file (one file) or dir (a folder)");
	expect_errors(NO_TLS "[static a]\npath = /a/\nfile = /x\ndir = /y\n",
		      "pmd.ini:6: [static a]: file and dir exclude each other: one file at path, or one folder under it");
	expect_errors(NO_TLS "[static a]\npath = /static\ndir = /y\n",
		      "pmd.ini:4: path: a folder is served under a prefix ending in /, got \"/static\" (try \"/static/\")");
	expect_errors(NO_TLS "[static a]\npath = /s/\ndir = /y\ncontent_type = text/css\n",
		      "pmd.ini:6: content_type: applies to file =; the files of a folder are typed by extension");
	expect_errors(NO_TLS "[static a]\npath = /a\nfile = /y\nfallback = route\n",
		      "pmd.ini:6: fallback: applies to dir = (a file missing from the folder)");
	expect_errors(NO_TLS "[static a]\npath = /s/\ndir = /y\nfallback = frontend\n",
		      "pmd.ini:6: fallback: expected none or route, got \"frontend\"");
}

/* config_check_files: what is on disk, with the line of file or dir. */
static void test_static_files_on_disk(void **state)
{
	(void)state;
	char dir[] = "/tmp/pmd-test-static-XXXXXX", file[64], text[1024];
	assert_non_null(mkdtemp(dir));
	snprintf(file, sizeof(file), "%s/env.js", dir);
	FILE *f = fopen(file, "w");
	assert_non_null(f);
	fputs("window.ENV = {};\n", f);
	fclose(f);

	struct pmd_config *c;
	struct strlist errs = { 0 };
	snprintf(text, sizeof(text), NO_TLS "[static f]\npath = /env.js\nfile = %s\n"
		 "[static d]\npath = /s/\ndir = %s\n", file, dir);
	c = expect_ok(text);
	assert_int_equal(config_check_files(c, &errs), 0);
	assert_int_equal(errs.n, 0);
	config_free(c);

	snprintf(text, sizeof(text), NO_TLS "[static f]\npath = /x\nfile = %s/missing.js\n"
		 "[static g]\npath = /y\n\nfile = %s\n"
		 "[static d]\npath = /s/\ndir = %s\n"
		 "[static e]\npath = /t/\ndir = %s/nope\n", dir, dir, file, dir);
	c = expect_ok(text);
	assert_int_equal(config_check_files(c, &errs), -1);
	assert_int_equal(errs.n, 4);
	char want[4][256];
	snprintf(want[0], sizeof(want[0]), "pmd.ini:5: [static f] file: cannot open %s/missing.js: "
		 "No such file or directory", dir);
	snprintf(want[1], sizeof(want[1]), "pmd.ini:9: [static g] file: %s is a folder (serve a folder with dir =)", dir);
	snprintf(want[2], sizeof(want[2]), "pmd.ini:12: [static d] dir: %s is not a folder (serve one file with file =)", file);
	snprintf(want[3], sizeof(want[3]), "pmd.ini:15: [static e] dir: cannot open %s/nope: No such file or directory", dir);
	for (int i = 0; i < 4; i++)
		assert_string_equal(errs.v[i], want[i]);
	strlist_free(&errs);
	config_free(c);
	unlink(file);
	rmdir(dir);
}

static void test_values(void **state)
{
	(void)state;
	struct pmd_config *c = expect_ok("[proxy]\nworkers = auto\nredirect_https = YES\naccess_log = 0\n"
					 "https_listen = 127.0.0.1:8443\nhttp_listen =\n"
					 "[tls]\nmode = self-signed\n"
					 "[service s]\nruntime = external\naddress = [::1]:8080\nhealth_host = localhost:8080\n"
					 "[service t]\nruntime = external\naddress = localhost:1\n"
					 "[route r]\nprefix = /\nservice = s\n");
	assert_true(c->workers >= 1 && c->workers <= 64);
	assert_true(c->redirect_https);
	assert_false(c->access_log);
	assert_int_equal(c->n_http_listen, 0);
	assert_int_equal(c->n_https_listen, 1);
	assert_int_equal(c->tls_mode, TLS_SELF_SIGNED);
	assert_string_equal(c->services[0].address, "[::1]:8080");
	assert_string_equal(c->services[0].health_host, "localhost:8080");
	config_free(c);

	c = expect_ok("[tls]\nmode = files\ncert_file = /c.pem\nkey_file = /k.pem\n");
	assert_int_equal(c->tls_mode, TLS_FILES);
	assert_int_equal(c->n_https_listen, 1);
	assert_string_equal(c->cert_file, "/c.pem");
	config_free(c);
}

/* ---- errors ---- */

static void test_file_level_errors(void **state)
{
	(void)state;
	expect_errors(NO_TLS "[pmd]\nlog_level = info\n[pmd]\nlog_level = warn\n[proxies]\nworkers = 2\n"
		      "[service]\n[service a b]\n[pmd x]\n",
		      "pmd.ini:5: duplicate section [pmd] (first at line 3)\n"
		      "pmd.ini:6: log_level: duplicate key in [pmd] (first at line 4)\n"
		      "pmd.ini:7: unknown section [proxies]: expected [pmd], [proxy], [tls], [service NAME], "
		      "[route NAME] or [static NAME]\n"
		      "pmd.ini:9: section [service] needs a name: [service NAME]\n"
		      "pmd.ini:10: service name: expected letters, digits, '.', '_' or '-', got \"a b\"\n"
		      "pmd.ini:11: unknown section [pmd x]: expected [pmd], [proxy], [tls], [service NAME], "
		      "[route NAME] or [static NAME]");
	expect_errors("workers = 2\n" NO_TLS "[proxy\nthis line has no equals sign\n[proxy] junk\n",
		      "pmd.ini:1: key \"workers\" is outside of any section: expected a [section] header first\n"
		      "pmd.ini:4: expected a section header like [proxy], got no closing ]\n"
		      "pmd.ini:5: expected \"key = value\" or a [section] header, got \"this line has no equals sign\"\n"
		      "pmd.ini:6: unexpected text after the section header");

	size_t big = 70000;
	char *longline = malloc(big + 100);
	assert_non_null(longline);
	snprintf(longline, big + 100, NO_TLS "[pmd]\nstate_dir = /%0*d\n", (int)big, 0);
	expect_errors(longline, "pmd.ini:4: line too long: expected at most 65536 characters, got 70013 "
				"(continue a long value on indented lines)");
	free(longline);
}

/* Lines longer than inih's 200-byte buffer: values as inih would give
 * them (trimmed, inline comment cut), continuations, a long continuation,
 * and what follows still parsed. */
static void test_long_lines(void **state)
{
	(void)state;
	char cmd[1001], text[4096];
	memset(cmd, 'a', sizeof(cmd) - 1);
	cmd[sizeof(cmd) - 1] = '\0';
	memcpy(cmd, "/bin/app ", 9);
	snprintf(text, sizeof(text), NO_TLS "[service w]\nruntime = exec\ncommand =   %s   ; a comment\n"
		 "  --more\n  %s\nenv: K=%s\nport = 9000\n", cmd, cmd + 9, cmd + 9);
	struct pmd_config *c = expect_ok(text);
	const struct svc_conf *s = &c->services[0];
	assert_int_equal(strlen(s->command), 1000 + 7 + 1 + 991);
	assert_memory_equal(s->command, cmd, 1000);
	assert_memory_equal(s->command + 1000, " --more ", 8);
	assert_int_equal(s->env.n, 1);
	assert_int_equal(strlen(s->env.v[0]), 2 + 991);
	assert_int_equal(s->port, 9000);
	config_free(c);
	/* a long line is still checked: unknown key, bad value, no '=' */
	snprintf(text, sizeof(text), NO_TLS "[service w]\nruntime = exec\ncommand = x\nnope = %s\n"
		 "port = %s\n%s\n", cmd, cmd, cmd);
	struct pmd_config *bad;
	char *got = load(text, &bad);
	assert_non_null(strstr(got, "pmd.ini:6: unknown key \"nope\" in [service w]\n"
				    "pmd.ini:7: port: expected an integer"));
	assert_non_null(strstr(got, "\npmd.ini:8: expected \"key = value\" or a [section] header"));
	assert_null(strstr(got, "too long"));
	free(got);
}

static void test_key_errors(void **state)
{
	(void)state;
	expect_errors(NO_TLS "[proxy]\nworker = 2\nidle_timeout = 30x\nidle_timeout = 1s\n"
		      "[service backend]\nimage = x\nprot = 80\ndrain_timeout = -1s\n",
		      "pmd.ini:4: unknown key \"worker\" in [proxy]\n"
		      "pmd.ini:5: idle_timeout: expected a duration like 30s, got \"30x\"\n"
		      "pmd.ini:6: idle_timeout: duplicate key in [proxy] (first at line 5)\n"
		      "pmd.ini:9: unknown key \"prot\" in [service backend]\n"
		      "pmd.ini:10: drain_timeout: expected a duration like 30s, got \"-1s\"");
}

static void test_bad_values(void **state)
{
	(void)state;
	expect_errors(NO_TLS
		      "[pmd]\n"
		      "state_dir =\n"
		      "log_format = text\n"
		      "log_level = trace\n"
		      "[proxy]\n"
		      "workers = 0\n"
		      "redirect_https = maybe\n"
		      "max_connections = 1000001\n"
		      "max_header_bytes = 2m\n"
		      "max_body_bytes = 1t\n"
		      "client_header_timeout = 0\n"
		      "idle_timeout = 8d\n"
		      "http_listen = 0.0.0.0:80, localhost:81\n"
		      "[service s]\n"
		      "image = i\n"
		      "runtime = podman\n"
		      "port = 65536\n"
		      "healthy_threshold = 0\n"
		      "keep_images = 101\n"
		      "health_interval = 1.5s\n"
		      "health_path = health\n"
		      "env = 1BAD=x\n"
		      "env = NOEQUALS\n"
		      "required_env = A, B-C\n"
		      "volumes = data\n"
		      "address = example.com\n",
		      "pmd.ini:4: state_dir: expected a path, got \"\"\n"
		      "pmd.ini:5: log_format: expected logfmt or json, got \"text\"\n"
		      "pmd.ini:6: log_level: expected debug, info, warn or error, got \"trace\"\n"
		      "pmd.ini:8: workers: expected auto or an integer from 1 to 64, got \"0\"\n"
		      "pmd.ini:9: redirect_https: expected true or false (yes/no, on/off, 1/0), got \"maybe\"\n"
		      "pmd.ini:10: max_connections: expected an integer from 1 to 1000000, got \"1000001\"\n"
		      "pmd.ini:11: max_header_bytes: expected a size from 1k to 1m, got \"2m\"\n"
		      "pmd.ini:12: max_body_bytes: expected a size like 16k (k, m, g or bytes), got \"1t\"\n"
		      "pmd.ini:13: client_header_timeout: expected a duration from 1ms to 7d, got \"0\"\n"
		      "pmd.ini:14: idle_timeout: expected a duration from 1ms to 7d, got \"8d\"\n"
		      "pmd.ini:15: http_listen: expected a numeric address like 0.0.0.0:80 or [::]:443, got \"localhost:81\"\n"
		      "pmd.ini:18: runtime: expected docker, exec or external, got \"podman\"\n"
		      "pmd.ini:19: port: expected an integer from 1 to 65535, got \"65536\"\n"
		      "pmd.ini:20: healthy_threshold: expected an integer from 1 to 100, got \"0\"\n"
		      "pmd.ini:21: keep_images: expected an integer from 0 to 100, got \"101\"\n"
		      "pmd.ini:22: health_interval: expected a duration like 30s, got \"1.5s\"\n"
		      "pmd.ini:23: health_path: expected a path starting with /, got \"health\"\n"
		      "pmd.ini:24: env: expected NAME=VALUE, got \"1BAD=x\"\n"
		      "pmd.ini:25: env: expected NAME=VALUE, got \"NOEQUALS\"\n"
		      "pmd.ini:26: required_env: expected a comma-separated list of variable names like DATABASE_URL, got \"B-C\"\n"
		      "pmd.ini:27: volumes: expected SOURCE:/path[:options], got \"data\"\n"
		      "pmd.ini:28: address: expected host:port like 127.0.0.1:8000, got \"example.com\"");
	expect_errors("[tls]\nmode = acme\ndomains = example.com,, www.example.com\nacme_email = nobody\n"
		      "acme_directory = ftp://x\n",
		      "pmd.ini:3: domains: expected a comma-separated list of host names like example.com, got \"\"\n"
		      "pmd.ini:4: acme_email: expected an email address, got \"nobody\"\n"
		      "pmd.ini:5: acme_directory: expected a URL like https://host/directory, got \"ftp://x\"");
	/* control bytes and quotes in a bad value are escaped */
	expect_errors(NO_TLS "[proxy]\nworkers = \"a\"\tb\n",
		      "pmd.ini:4: workers: expected auto or an integer from 1 to 64, got \"\\\"a\\\"\\x09b\"");
}

static void test_missing_required(void **state)
{
	(void)state;
	expect_errors(NO_TLS
		      "[service d]\n"
		      "[service e]\nruntime = exec\nvolumes = v:/v\n"
		      "[service x]\nruntime = external\nimage = nginx\n"
		      "[service y]\nruntime = docker\nimage = i\naddress = 127.0.0.1:1\n"
		      "[route r]\n"
		      "[static s]\n",
		      "pmd.ini:3: [service d]: missing image (needed with runtime = docker)\n"
		      "pmd.ini:4: [service e]: missing command (needed with runtime = exec)\n"
		      "pmd.ini:6: volumes: only supported with runtime = docker\n"
		      "pmd.ini:7: [service x]: missing address (needed with runtime = external)\n"
		      "pmd.ini:9: image: not used with runtime = external (pmd does not run this service)\n"
		      "pmd.ini:13: address: only used with runtime = external\n"
		      "pmd.ini:14: [route r]: missing prefix\n"
		      "pmd.ini:14: [route r]: missing service\n"
		      "pmd.ini:15: [static s]: missing path\n"
		      "pmd.ini:15: [static s]: missing file (one file) or dir (a folder)");
}

static void test_cross_section(void **state)
{
	(void)state;
	expect_errors(NO_TLS
		      "[service web]\nruntime = exec\ncommand = x\n"
		      "[service web]\nruntime = exec\ncommand = y\nport = 0\n"
		      "[route a]\nprefix = /\nservice = wbe\n"
		      "[route b]\nservice = web\nprefix = /\n"
		      "[route c]\nprefix = /\nhost = example.com\nservice = web\n"
		      "[route d]\nprefix = api/\nservice = web\n"
		      "[static s]\npath = env.js\nfile = /f\n"
		      "[static t]\npath = /e.js\nfile = /f\n"
		      "[static u]\npath = /e.js\nfile = /g\n",
		      "pmd.ini:6: duplicate section [service web] (first at line 3)\n"
		      "pmd.ini:9: port: expected an integer from 1 to 65535, got \"0\"\n"
		      "pmd.ini:12: service: no [service wbe] is defined\n"
		      "pmd.ini:15: [route b]: same host and prefix as [route a] (line 10)\n"
		      "pmd.ini:21: prefix: expected a path starting with /, got \"api/\"\n"
		      "pmd.ini:24: path: expected a path starting with /, got \"env.js\"\n"
		      "pmd.ini:30: path: /e.js is also served by [static t] (line 26)");
}

static void test_tls_errors(void **state)
{
	(void)state;
	expect_errors("[pmd]\n", "pmd.ini: [tls] mode = acme (the default) needs domains: set domains, or mode = off");
	expect_errors("[tls]\nacme_email = a@b.c\n",
		      "pmd.ini:1: [tls] mode = acme (the default) needs domains: set domains, or mode = off");
	expect_errors("[tls]\nacme_email = a@b.c\nmode = acme\n",
		      "pmd.ini:3: [tls] mode = acme needs domains: set domains, or mode = off");
	expect_errors("[tls]\nmode = files\nkey_file = /k\n", "pmd.ini:2: [tls] mode = files needs cert_file");
	expect_errors("[tls]\nmode = files\n",
		      "pmd.ini:2: [tls] mode = files needs cert_file\npmd.ini:2: [tls] mode = files needs key_file");
	/* a refused mode does not also complain about what that mode needs */
	expect_errors("[tls]\nmode = on\n", "pmd.ini:2: mode: expected acme, files, self-signed or off, got \"on\"");
}

static void test_listen_conflicts(void **state)
{
	(void)state;
	expect_errors("[proxy]\nhttp_listen = 0.0.0.0:8080, 0.0.0.0:8080\n" NO_TLS,
		      "pmd.ini:2: http_listen: 0.0.0.0:8080 is listed twice");
	expect_errors("[tls]\nmode = self-signed\n[proxy]\nhttp_listen = 127.0.0.1:80\nhttps_listen = 127.0.0.1:80\n",
		      "pmd.ini:5: https_listen: 127.0.0.1:80 is also listed in http_listen");
	/* the default https_listen clashes with a written http_listen */
	expect_errors("[tls]\nmode = self-signed\n[proxy]\nhttp_listen = 0.0.0.0:443\n",
		      "pmd.ini:4: http_listen: 0.0.0.0:443 is also listed in https_listen");
	expect_errors("[proxy]\nhttp_listen = 0.0.0.0:80, 127.0.0.1:80, [::]:80, [::1]:80\n" NO_TLS,
		      "pmd.ini:2: http_listen: 127.0.0.1:80 overlaps 0.0.0.0:80\n"
		      "pmd.ini:2: http_listen: [::1]:80 overlaps [::]:80");
	/* with tls off, https_listen is not bound and cannot clash */
	struct pmd_config *c = expect_ok("[proxy]\nhttp_listen = 0.0.0.0:443\n" NO_TLS);
	assert_int_equal(c->n_https_listen, 0);
	assert_null(c->https_listen);
	config_free(c);
	expect_errors("[proxy]\nhttp_listen =\n" NO_TLS,
		      "pmd.ini:2: http_listen: empty and no https_listen is bound: pmd would listen nowhere");
}

/* Errors from every stage come back together, in line order. */
static void test_many_errors_at_once(void **state)
{
	(void)state;
	expect_errors("[route web]\nprefix = /\nservice = front\n"
		      "[service back]\nruntime = exec\ncommand = run\nstop_timeout = forever\ncolour = blue\n"
		      "[tls]\nmode = acme\n"
		      "[bogus]\nkey = ignored inside an unknown section\n"
		      "[proxy]\nhttp_listen = 0.0.0.0:80,0.0.0.0:80\n",
		      "pmd.ini:3: service: no [service front] is defined\n"
		      "pmd.ini:7: stop_timeout: expected a duration like 30s, got \"forever\"\n"
		      "pmd.ini:8: unknown key \"colour\" in [service back]\n"
		      "pmd.ini:10: [tls] mode = acme needs domains: set domains, or mode = off\n"
		      "pmd.ini:11: unknown section [bogus]: expected [pmd], [proxy], [tls], [service NAME], "
		      "[route NAME] or [static NAME]\n"
		      "pmd.ini:14: http_listen: 0.0.0.0:80 is listed twice");
}

static void test_repeatable_and_continuation(void **state)
{
	(void)state;
	struct pmd_config *c = expect_ok(NO_TLS
					 "[service w]\nruntime = exec\n"
					 "command = /usr/bin/app\n"
					 "    --flag a   ; comment on a continuation\n"
					 "\n"
					 "    --flag b\n"
					 "env = A=1\n"
					 "env = B=2 = two\n"
					 "env = A=3\n"
					 "required_env = A,\n"
					 "  B\n");
	const struct svc_conf *s = &c->services[0];
	assert_string_equal(s->command, "/usr/bin/app --flag a --flag b");
	assert_int_equal(s->env.n, 3);
	assert_string_equal(s->env.v[0], "A=1");
	assert_string_equal(s->env.v[1], "B=2 = two");
	assert_string_equal(s->env.v[2], "A=3");
	assert_int_equal(s->required_env.n, 2);
	assert_string_equal(s->required_env.v[1], "B");
	config_free(c);
	/* a continuation belongs to its key: a bad joined value is reported at the key's line */
	expect_errors(NO_TLS "[proxy]\nidle_timeout = 30s\n  45s\n",
		      "pmd.ini:4: idle_timeout: expected a duration like 30s, got \"30s 45s\"");
}

/* What inih accepts around the values: BOM, CRLF, comments of any length,
 * "key: value". */
static void test_syntax_details(void **state)
{
	(void)state;
	char text[1024];
	snprintf(text, sizeof(text), "\xEF\xBB\xBF; %0300d\r\n[tls]\r\nmode: off\r\n# %0300d\r\n"
		 "[proxy]   ; the proxy\r\nworkers = 3 ; three\r\nhsts =\r\n", 0, 0);
	struct pmd_config *c = expect_ok(text);
	assert_int_equal(c->tls_mode, TLS_OFF);
	assert_int_equal(c->workers, 3);
	assert_string_equal(c->hsts, "");
	config_free(c);
}

static void test_file_too_large(void **state)
{
	(void)state;
	char path[] = "/tmp/pmd-test-config-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	static char comment[4096];
	memset(comment, ';', sizeof(comment));
	comment[sizeof(comment) - 1] = '\n';
	for (int i = 0; i < 257; i++) /* 1 MiB + 1 KiB */
		assert_int_equal(write(fd, comment, sizeof(comment)), (ssize_t)sizeof(comment));
	close(fd);
	struct strlist errs = { 0 };
	struct pmd_config *c = NULL;
	assert_int_equal(config_load(path, &c, &errs), -1);
	assert_null(c);
	assert_int_equal(errs.n, 1);
	char want[128];
	snprintf(want, sizeof(want), "%s: cannot read: File too large", path);
	assert_string_equal(errs.v[0], want);
	strlist_free(&errs);
	unlink(path);
}

static void test_strlist(void **state)
{
	(void)state;
	struct strlist l = { 0 };
	for (int i = 0; i < 100; i++) {
		char b[16];
		snprintf(b, sizeof(b), "s%d", i);
		assert_int_equal(strlist_push(&l, b), 0);
	}
	assert_int_equal(l.n, 100);
	assert_string_equal(l.v[99], "s99");
	strlist_free(&l);
	assert_int_equal(l.n, 0);
	assert_null(l.v);
	strlist_free(&l);
	strlist_free(NULL);
	config_free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_durations),
		cmocka_unit_test(test_status_ranges),
		cmocka_unit_test(test_sizes),
		cmocka_unit_test(test_listen),
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_spec_config),
		cmocka_unit_test(test_load_file),
		cmocka_unit_test(test_static_sections),
		cmocka_unit_test(test_static_files_on_disk),
		cmocka_unit_test(test_values),
		cmocka_unit_test(test_file_level_errors),
		cmocka_unit_test(test_key_errors),
		cmocka_unit_test(test_bad_values),
		cmocka_unit_test(test_missing_required),
		cmocka_unit_test(test_cross_section),
		cmocka_unit_test(test_tls_errors),
		cmocka_unit_test(test_listen_conflicts),
		cmocka_unit_test(test_many_errors_at_once),
		cmocka_unit_test(test_repeatable_and_continuation),
		cmocka_unit_test(test_syntax_details),
		cmocka_unit_test(test_long_lines),
		cmocka_unit_test(test_file_too_large),
		cmocka_unit_test(test_strlist),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
