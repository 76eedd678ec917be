// UNIT-DEPS: supervisor/docker_util.c
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../supervisor/docker_util.h"

static void test_image_refs(void **state)
{
	(void)state;
	struct image_ref r;
	char *err = NULL;

	assert_int_equal(docker_image_parse("registry.digitalocean.com/pm/backend:prod-latest", &r, &err), 0);
	assert_string_equal(r.registry, "registry.digitalocean.com");
	assert_string_equal(r.name, "registry.digitalocean.com/pm/backend");
	assert_string_equal(r.repo, "pm/backend");
	assert_string_equal(r.tag, "prod-latest");
	assert_string_equal(r.digest, "");

	assert_int_equal(docker_image_parse("127.0.0.1:5000/pm/frontend", &r, &err), 0);
	assert_string_equal(r.registry, "127.0.0.1:5000");
	assert_string_equal(r.repo, "pm/frontend");
	assert_string_equal(r.tag, "latest");

	assert_int_equal(docker_image_parse("busybox", &r, &err), 0);
	assert_string_equal(r.registry, "docker.io");
	assert_string_equal(r.name, "busybox");
	assert_string_equal(r.repo, "library/busybox");
	assert_string_equal(r.tag, "latest");

	assert_int_equal(docker_image_parse("localhost/app:1", &r, &err), 0);
	assert_string_equal(r.registry, "localhost");
	assert_int_equal(docker_image_parse("my_org/my-app.x:v1.2_3", &r, &err), 0);
	assert_string_equal(r.registry, "docker.io");
	assert_string_equal(r.repo, "my_org/my-app.x");

	assert_int_equal(docker_image_parse("localhost:5000/a/b@sha256:"
		"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", &r, &err), 0);
	assert_string_equal(r.tag, "");
	assert_string_equal(r.digest, "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
	assert_string_equal(r.name, "localhost:5000/a/b");
	assert_null(err);
}

static void test_bad_image_refs(void **state)
{
	(void)state;
	static const char *const bad[] = {
		"", "Busybox", "pm/Backend:1", "a b", "pm//x", "pm/x:", "pm/x:-tag", "pm/x:tag with space",
		"pm/x@sha256:abc", "pm/x@md5:0123", "host:port/x", "-x", "x-", "x__y_", "a/b:c:d",
		"registry.io/pm/x;rm -rf /", NULL
	};
	struct image_ref r;

	for (const char *const *b = bad; *b; b++) {
		char *err = NULL;
		if (docker_image_parse(*b, &r, &err) != -1)
			fail_msg("accepted bad reference \"%s\"", *b);
		assert_non_null(err);
		assert_non_null(strstr(err, "bad image reference"));
		free(err);
	}
}

/* Decode the base64url header back to JSON. */
static cJSON *decode_header(const char *h)
{
	char buf[1024];
	unsigned char out[1024];
	size_t n = strlen(h);
	int r;

	snprintf(buf, sizeof(buf), "%s", h);
	for (char *p = buf; *p; p++)
		*p = *p == '-' ? '+' : *p == '_' ? '/' : *p;
	r = EVP_DecodeBlock(out, (unsigned char *)buf, (int)n);
	assert_true(r > 0);
	out[r] = '\0';
	return cJSON_Parse((char *)out);
}

static const char *jstr(cJSON *j, const char *k)
{
	return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, k));
}

static void test_registry_auth(void **state)
{
	(void)state;
	/* dXNlcjpwYTpzcw== = "user:pa:ss" (a colon in the password) */
	const char *cfg = "{\"auths\":{"
		"\"https://index.docker.io/v1/\":{\"auth\":\"aHViOmh1YnB3\"},"
		"\"127.0.0.1:5000\":{\"auth\":\"dXNlcjpwYTpzcw==\"},"
		"\"https://registry.digitalocean.com\":{\"username\":\"tok\",\"password\":\"tok\"},"
		"\"ghcr.io\":{\"identitytoken\":\"IDTOKEN\"},"
		"\"bad.example\":{\"auth\":\"bm9jb2xvbg==\"}},"
		"\"credsStore\":\"\"}";
	char *h = NULL, *err = NULL;
	cJSON *j;

	assert_int_equal(docker_registry_auth(cfg, "cfg.json", "127.0.0.1:5000", &h, &err), 0);
	assert_non_null(h);
	assert_null(strpbrk(h, "+/"));
	j = decode_header(h);
	assert_string_equal(jstr(j, "username"), "user");
	assert_string_equal(jstr(j, "password"), "pa:ss");
	assert_string_equal(jstr(j, "serveraddress"), "127.0.0.1:5000");
	cJSON_Delete(j);
	free(h);

	assert_int_equal(docker_registry_auth(cfg, "cfg.json", "docker.io", &h, &err), 0);
	j = decode_header(h);
	assert_string_equal(jstr(j, "username"), "hub");
	assert_string_equal(jstr(j, "password"), "hubpw");
	cJSON_Delete(j);
	free(h);

	assert_int_equal(docker_registry_auth(cfg, "cfg.json", "registry.digitalocean.com", &h, &err), 0);
	j = decode_header(h);
	assert_string_equal(jstr(j, "username"), "tok");
	assert_string_equal(jstr(j, "serveraddress"), "https://registry.digitalocean.com");
	cJSON_Delete(j);
	free(h);

	assert_int_equal(docker_registry_auth(cfg, "cfg.json", "ghcr.io", &h, &err), 0);
	j = decode_header(h);
	assert_string_equal(jstr(j, "identitytoken"), "IDTOKEN");
	assert_null(jstr(j, "username"));
	cJSON_Delete(j);
	free(h);

	/* no entry: anonymous */
	assert_int_equal(docker_registry_auth(cfg, "cfg.json", "quay.io", &h, &err), 0);
	assert_null(h);
	assert_null(err);

	assert_int_equal(docker_registry_auth(cfg, "cfg.json", "bad.example", &h, &err), -1);
	assert_string_equal(err, "cfg.json: auths.\"bad.example\".auth: expected base64 of \"user:password\"");
	free(err);
	err = NULL;
	assert_int_equal(docker_registry_auth("{nope", "/root/.docker/config.json", "x", &h, &err), -1);
	assert_non_null(strstr(err, "/root/.docker/config.json: not a JSON object"));
	free(err);
}

static void test_split_command(void **state)
{
	(void)state;
	char **a, *err = NULL;

	a = docker_split_command("  gunicorn  -b '0.0.0.0:8000' --name \"my \\\"app\\\"\" a\\ b ''", &err);
	assert_non_null(a);
	assert_string_equal(a[0], "gunicorn");
	assert_string_equal(a[1], "-b");
	assert_string_equal(a[2], "0.0.0.0:8000");
	assert_string_equal(a[3], "--name");
	assert_string_equal(a[4], "my \"app\"");
	assert_string_equal(a[5], "a b");
	assert_string_equal(a[6], "");
	assert_null(a[7]);
	docker_argv_free(a);

	assert_null(docker_split_command("sh -c 'echo", &err));
	assert_non_null(strstr(err, "unterminated '"));
	free(err);
}

static void test_create_json(void **state)
{
	(void)state;
	char *env[] = { "A=1", "PORT=8000", NULL };
	char *vols[] = { "static_data:/app/static" };
	struct strlist vl = { .v = vols, .n = 1 };
	struct docker_create c = {
		.service = "backend", .color = "green", .image = "127.0.0.1:5000/pm/backend:v2",
		.command = "python manage.py runserver '0.0.0.0:8000'", .env = env, .volumes = &vl,
		.network = NET_BRIDGE, .container_port = 8000,
	};
	char *s, *err = NULL;
	cJSON *j, *hc, *l, *pb;

	s = docker_create_json(&c, &err);
	assert_non_null(s);
	j = cJSON_Parse(s);
	assert_string_equal(jstr(j, "Image"), "127.0.0.1:5000/pm/backend:v2");
	l = cJSON_GetObjectItem(j, "Labels");
	assert_string_equal(jstr(l, "pmd.managed"), "true");
	assert_string_equal(jstr(l, "pmd.service"), "backend");
	assert_string_equal(jstr(l, "pmd.color"), "green");
	assert_string_equal(jstr(l, "pmd.image"), "127.0.0.1:5000/pm/backend:v2");
	assert_null(cJSON_GetObjectItem(l, "pmd.port"));
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "Env")), 2);
	assert_string_equal(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "Env"), 1)->valuestring, "PORT=8000");
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "Cmd")), 4);
	assert_string_equal(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "Cmd"), 3)->valuestring, "0.0.0.0:8000");
	assert_non_null(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "ExposedPorts"), "8000/tcp"));
	hc = cJSON_GetObjectItem(j, "HostConfig");
	assert_string_equal(jstr(hc, "NetworkMode"), "bridge");
	assert_string_equal(jstr(cJSON_GetObjectItem(hc, "RestartPolicy"), "Name"), "no");
	assert_string_equal(jstr(cJSON_GetObjectItem(hc, "LogConfig"), "Type"), "json-file");
	assert_string_equal(jstr(cJSON_GetObjectItem(cJSON_GetObjectItem(hc, "LogConfig"), "Config"), "max-size"), "10m");
	assert_string_equal(cJSON_GetArrayItem(cJSON_GetObjectItem(hc, "Binds"), 0)->valuestring, "static_data:/app/static");
	pb = cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetObjectItem(hc, "PortBindings"), "8000/tcp"), 0);
	assert_string_equal(jstr(pb, "HostIp"), "127.0.0.1");
	assert_string_equal(jstr(pb, "HostPort"), "");
	cJSON_Delete(j);
	free(s);

	/* host mode: no port publishing, the port is a label; no command: no Cmd */
	c.network = NET_HOST;
	c.host_port = 41001;
	c.command = "";
	c.volumes = NULL;
	s = docker_create_json(&c, &err);
	j = cJSON_Parse(s);
	hc = cJSON_GetObjectItem(j, "HostConfig");
	assert_string_equal(jstr(hc, "NetworkMode"), "host");
	assert_null(cJSON_GetObjectItem(hc, "PortBindings"));
	assert_null(cJSON_GetObjectItem(j, "ExposedPorts"));
	assert_null(cJSON_GetObjectItem(j, "Cmd"));
	assert_string_equal(jstr(cJSON_GetObjectItem(j, "Labels"), "pmd.port"), "41001");
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(hc, "Binds")), 0);
	cJSON_Delete(j);
	free(s);

	c.command = "bad 'quote";
	assert_null(docker_create_json(&c, &err));
	assert_non_null(err);
	free(err);
}

struct sink {
	char out[2][256];
	size_t len[2];
	int calls;
};

static void sink_cb(void *arg, int stream, const char *data, size_t len)
{
	struct sink *s = arg;
	int i = stream == 2 ? 1 : 0;

	memcpy(s->out[i] + s->len[i], data, len);
	s->len[i] += len;
	s->out[i][s->len[i]] = '\0';
	s->calls++;
}

static void test_demux(void **state)
{
	(void)state;
	static const char frames[] =
		"\x01\0\0\0\0\0\0\x06hello\n"
		"\x02\0\0\0\0\0\0\x0boops error\n"
		"\x01\0\0\0\0\0\0\x06world\n";
	size_t n = sizeof(frames) - 1;

	/* every way of cutting the stream in two, and byte by byte */
	for (size_t cut = 0; cut <= n; cut++) {
		struct docker_demux d = { 0 };
		struct sink s = { 0 };
		docker_demux_feed(&d, frames, cut, sink_cb, &s);
		docker_demux_feed(&d, frames + cut, n - cut, sink_cb, &s);
		assert_string_equal(s.out[0], "hello\nworld\n");
		assert_string_equal(s.out[1], "oops error\n");
	}
	struct docker_demux d = { 0 };
	struct sink s = { 0 };
	for (size_t i = 0; i < n; i++)
		docker_demux_feed(&d, frames + i, 1, sink_cb, &s);
	assert_string_equal(s.out[0], "hello\nworld\n");
	assert_string_equal(s.out[1], "oops error\n");

	/* a TTY container: raw text passes through as stdout */
	struct docker_demux r = { 0 };
	struct sink t = { 0 };
	docker_demux_feed(&r, "tty ", 4, sink_cb, &t);
	docker_demux_feed(&r, "output\n", 7, sink_cb, &t);
	assert_string_equal(t.out[0], "tty output\n");
	assert_int_equal(t.len[1], 0);
}

static void test_pull_lines(void **state)
{
	(void)state;
	struct docker_pull st;
	char out[128], *err = NULL;
	const char *l;

	memset(&st, 0, sizeof(st));
#define LINE(s) (l = (s), docker_pull_line(&st, l, strlen(l), out, sizeof(out), &err))
	assert_int_equal(LINE("{\"status\":\"Pulling from pm/backend\",\"id\":\"v2\"}"), 1);
	assert_string_equal(out, "Pulling from pm/backend v2");
	assert_int_equal(LINE("{\"status\":\"Pulling fs layer\",\"progressDetail\":{},\"id\":\"aaa\"}"), 0);
	assert_int_equal(LINE("{\"status\":\"Already exists\",\"progressDetail\":{},\"id\":\"bbb\"}"), 1);
	assert_string_equal(out, "layers 1/2 done");
	assert_int_equal(LINE("{\"status\":\"Downloading\",\"progressDetail\":{\"current\":13107200,"
		"\"total\":41943040},\"progress\":\"[==>  ]\",\"id\":\"aaa\"}"), 2);
	assert_string_equal(out, "layer 1/2 12.5MiB/40.0MiB");
	assert_int_equal(LINE("{\"status\":\"Download complete\",\"progressDetail\":{},\"id\":\"aaa\"}"), 0);
	assert_int_equal(LINE("{\"status\":\"Pull complete\",\"progressDetail\":{},\"id\":\"aaa\"}"), 1);
	assert_string_equal(out, "layers 2/2 done");
	assert_int_equal(LINE("{\"status\":\"Digest: sha256:abcd\"}"), 1);
	assert_int_equal(LINE("{\"status\":\"Status: Downloaded newer image for x:v2\"}"), 1);
	assert_string_equal(out, "Status: Downloaded newer image for x:v2");
	assert_int_equal(LINE("not json"), 0);

	assert_int_equal(LINE("{\"errorDetail\":{\"message\":\"manifest for 127.0.0.1:5000/pm/x:nope not found: "
		"manifest unknown: manifest unknown\"},\"error\":\"manifest for 127.0.0.1:5000/pm/x:nope not found\"}"), -1);
	assert_non_null(strstr(err, "the image or tag does not exist in the registry: manifest for"));
	free(err);
	assert_int_equal(LINE("{\"error\":\"Head \\\"http://127.0.0.1:5000/v2/pm/x/manifests/v1\\\": no basic auth credentials\"}"), -1);
	assert_non_null(strstr(err, "the registry refused the credentials"));
	free(err);
	assert_int_equal(LINE("{\"error\":\"Get \\\"http://127.0.0.1:1/v2/\\\": dial tcp 127.0.0.1:1: connect: connection refused\"}"), -1);
	assert_non_null(strstr(err, "the registry cannot be reached: Get"));
	free(err);
#undef LINE
}

static void test_documents(void **state)
{
	(void)state;
	char *s, *err = NULL;
	struct docker_container c, *list;
	size_t n;

	s = docker_error_text("{\"message\":\"No such container: x\"}\n", 404);
	assert_string_equal(s, "No such container: x");
	free(s);
	s = docker_error_text("page not found\n", 404);
	assert_string_equal(s, "page not found");
	free(s);
	s = docker_error_text("", 500);
	assert_string_equal(s, "HTTP 500");
	free(s);

	assert_int_equal(docker_parse_inspect("{\"Id\":\"abc123\",\"Name\":\"/pm-backend-blue\","
		"\"Config\":{\"Image\":\"img:1\",\"Tty\":false,\"Labels\":{\"pmd.managed\":\"true\",\"pmd.service\":\"backend\","
		"\"pmd.color\":\"blue\",\"pmd.image\":\"reg/pm/backend:1\"}},"
		"\"State\":{\"Running\":false,\"ExitCode\":137,\"OOMKilled\":true},"
		"\"NetworkSettings\":{\"Ports\":{\"8000/tcp\":[{\"HostIp\":\"127.0.0.1\",\"HostPort\":\"49153\"}]}}}",
		8000, &c, &err), 0);
	assert_string_equal(c.id, "abc123");
	assert_string_equal(c.name, "pm-backend-blue");
	assert_true(c.managed);
	assert_string_equal(c.service, "backend");
	assert_string_equal(c.color, "blue");
	assert_string_equal(c.image, "reg/pm/backend:1");
	assert_false(c.running);
	assert_true(c.oom);
	assert_int_equal(c.exit_code, 137);
	assert_int_equal(c.host_port, 49153);

	assert_int_equal(docker_parse_inspect("[]", 0, &c, &err), -1);
	free(err);

	assert_int_equal(docker_parse_list("[{\"Id\":\"a1\",\"Names\":[\"/pm-web-green\"],\"Image\":\"x\","
		"\"Labels\":{\"pmd.managed\":\"true\",\"pmd.service\":\"web\",\"pmd.color\":\"green\",\"pmd.port\":\"41000\"},"
		"\"State\":\"running\",\"Ports\":[]},"
		"{\"Id\":\"b2\",\"Names\":[\"/other\"],\"Image\":\"nginx\",\"Labels\":{},\"State\":\"exited\","
		"\"Ports\":[{\"IP\":\"127.0.0.1\",\"PrivatePort\":80,\"PublicPort\":32768,\"Type\":\"tcp\"}]}]",
		&list, &n, &err), 0);
	assert_int_equal(n, 2);
	assert_string_equal(list[0].name, "pm-web-green");
	assert_true(list[0].running);
	assert_int_equal(list[0].host_port, 41000);
	assert_false(list[1].managed);
	assert_false(list[1].running);
	assert_string_equal(list[1].image, "nginx");
	assert_int_equal(list[1].host_port, 32768);
	free(list);

	assert_int_equal(docker_api_version_num("1.41"), 141);
	assert_int_equal(docker_api_version_num("1.43"), 143);
	assert_int_equal(docker_api_version_num("x"), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_image_refs),
		cmocka_unit_test(test_bad_image_refs),
		cmocka_unit_test(test_registry_auth),
		cmocka_unit_test(test_split_command),
		cmocka_unit_test(test_create_json),
		cmocka_unit_test(test_demux),
		cmocka_unit_test(test_pull_lines),
		cmocka_unit_test(test_documents),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
