// UNIT-DEPS: core/httpc.c core/log.c
/* httpc against a real local HTTP server: a python3 http.server child
 * serving on 127.0.0.1 (ephemeral port) and on a unix socket. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "httpc.h"

static const char server_py[] =
"import sys, time, threading, socketserver\n"
"from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer\n"
"class H(BaseHTTPRequestHandler):\n"
"    protocol_version = 'HTTP/1.1'\n"
"    def log_message(self, *a): pass\n"
"    def reply(self, code, body, extra=()):\n"
"        self.send_response(code)\n"
"        self.send_header('Content-Length', str(len(body)))\n"
"        for k, v in extra: self.send_header(k, v)\n"
"        self.end_headers()\n"
"        self.wfile.write(body)\n"
"    def do_GET(self):\n"
"        if self.path == '/hello': self.reply(200, b'hello world', [('X-Test', 'yes')])\n"
"        elif self.path == '/slow':\n"
"            time.sleep(1.5); self.reply(200, b'late')\n"
"        elif self.path == '/big': self.reply(200, b'x' * 100000)\n"
"        elif self.path == '/stream':\n"
"            self.send_response(200); self.send_header('Transfer-Encoding', 'chunked'); self.end_headers()\n"
"            for i in range(3):\n"
"                d = ('piece%d\\n' % i).encode()\n"
"                self.wfile.write(b'%x\\r\\n%s\\r\\n' % (len(d), d)); self.wfile.flush(); time.sleep(0.15)\n"
"            self.wfile.write(b'0\\r\\n\\r\\n')\n"
"        else: self.reply(404, b'not found')\n"
"    def do_POST(self):\n"
"        body = self.rfile.read(int(self.headers.get('Content-Length', '0')))\n"
"        self.reply(201, body, [('X-Echo', self.headers.get('X-Echo', ''))])\n"
"    def do_DELETE(self): self.reply(200, b'DELETE')\n"
"class T(ThreadingHTTPServer):\n"
"    request_queue_size = 256\n"
"    def handle_error(self, *a): pass\n"
"class U(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):\n"
"    daemon_threads = True\n"
"    def handle_error(self, *a): pass\n"
"t = T(('127.0.0.1', 0), H)\n"
"u = U(sys.argv[1], H)\n"
"for s in (t, u): threading.Thread(target=s.serve_forever, daemon=True).start()\n"
"print(t.server_address[1], flush=True)\n"
"sys.stdin.read()\n";

static pid_t server_pid = -1;
static int server_stdin = -1;
static int port;
static char sock_path[96], script_path[64], base_url[64];

static struct event_base *base;
static struct httpc *hc;

static int start_server(void **state)
{
	int in[2], out[2];
	char line[32] = "";
	FILE *f;
	int fd;

	(void)state;
	snprintf(script_path, sizeof(script_path), "/tmp/pmd-httpc-XXXXXX");
	fd = mkstemp(script_path);
	if (fd < 0 || write(fd, server_py, strlen(server_py)) != (ssize_t)strlen(server_py))
		return -1;
	close(fd);
	snprintf(sock_path, sizeof(sock_path), "%s.sock", script_path);
	if (pipe(in) < 0 || pipe(out) < 0)
		return -1;
	server_pid = fork();
	if (server_pid == 0) {
		dup2(in[0], 0);
		dup2(out[1], 1);
		close(in[1]);
		close(out[0]);
		execl("/usr/bin/python3", "python3", script_path, sock_path, (char *)NULL);
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	server_stdin = in[1];
	f = fdopen(out[0], "r");
	if (!f || !fgets(line, sizeof(line), f))
		return -1;
	fclose(f);
	port = atoi(line);
	snprintf(base_url, sizeof(base_url), "http://127.0.0.1:%d", port);
	signal(SIGPIPE, SIG_IGN);
	return port > 0 ? 0 : -1;
}

static int stop_server(void **state)
{
	(void)state;
	if (server_stdin >= 0)
		close(server_stdin);
	if (server_pid > 0) {
		kill(server_pid, SIGTERM);
		waitpid(server_pid, NULL, 0);
	}
	unlink(script_path);
	unlink(sock_path);
	return 0;
}

static int setup(void **state)
{
	(void)state;
	base = event_base_new();
	hc = httpc_new(base);
	return base && hc ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	httpc_free(hc);
	event_base_free(base);
	return 0;
}

static int timed_out;

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	timed_out = 1;
}

/* Run the loop until *flag >= want or ms passed. Returns 0 when reached. */
static int run_until(const int *flag, int want, int ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	struct event *t = evtimer_new(base, deadline_cb, NULL);

	timed_out = 0;
	evtimer_add(t, &tv);
	while (*flag < want && !timed_out)
		event_base_loop(base, EVLOOP_ONCE);
	event_free(t);
	return *flag >= want ? 0 : -1;
}

struct result {
	int calls;
	long status;
	int curl_code;
	char error[256];
	char body[200000];
	size_t body_len;
	int body_null;
	char headers[4096];
	int pieces;
};

static void done_cb(void *arg, const struct httpc_response *res)
{
	struct result *r = arg;

	r->calls++;
	r->status = res->status;
	r->curl_code = res->curl_code;
	snprintf(r->error, sizeof(r->error), "%s", res->error ? res->error : "");
	r->body_null = res->body == NULL;
	if (res->body) {
		memcpy(r->body, res->body, res->body_len + 1);
		r->body_len = res->body_len;
	}
	snprintf(r->headers, sizeof(r->headers), "%s", res->headers ? res->headers : "");
}

static struct httpc_req *fetch(const char *url, struct result *r, long timeout_ms)
{
	struct httpc_opts o = { 0 };

	o.url = url;
	o.timeout_ms = timeout_ms;
	o.on_done = done_cb;
	o.arg = r;
	return httpc_request(hc, &o, NULL);
}

static struct httpc_req *get(const char *path, struct result *r, long timeout_ms)
{
	char url[128];

	snprintf(url, sizeof(url), "%s%s", base_url, path);
	return fetch(url, r, timeout_ms);
}

static void test_get(void **state)
{
	(void)state;
	static struct result r;

	assert_non_null(get("/hello", &r, 5000));
	assert_int_equal(httpc_active(hc), 1);
	assert_int_equal(run_until(&r.calls, 1, 5000), 0);
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.status, 200);
	assert_int_equal(r.curl_code, 0);
	assert_string_equal(r.error, "");
	assert_string_equal(r.body, "hello world");
	assert_int_equal(r.body_len, 11);
	assert_non_null(strstr(r.headers, "X-Test: yes\r\n"));
	assert_int_equal(httpc_active(hc), 0);
}

static void test_post_echo_and_headers(void **state)
{
	(void)state;
	static struct result r;
	char body[8] = "abc\0def";
	const char *hdrs[] = { "X-Echo: hi there", "Content-Type: application/octet-stream", NULL };
	struct httpc_opts o = { 0 };
	char url[128];

	snprintf(url, sizeof(url), "%s/echo", base_url);
	o.url = url;
	o.headers = hdrs;
	o.body = body;
	o.body_len = 7;
	o.on_done = done_cb;
	o.arg = &r;
	assert_non_null(httpc_request(hc, &o, NULL));
	memset(body, 'Z', sizeof(body)); /* the body was copied */
	assert_int_equal(run_until(&r.calls, 1, 5000), 0);
	assert_int_equal(r.status, 201);
	assert_int_equal(r.body_len, 7);
	assert_memory_equal(r.body, "abc\0def", 7);
	assert_non_null(strstr(r.headers, "X-Echo: hi there\r\n"));

	/* other methods */
	memset(&r, 0, sizeof(r));
	o.method = "DELETE";
	o.body = NULL;
	o.body_len = 0;
	assert_non_null(httpc_request(hc, &o, NULL));
	assert_int_equal(run_until(&r.calls, 1, 5000), 0);
	assert_string_equal(r.body, "DELETE");

	/* POST without a body */
	memset(&r, 0, sizeof(r));
	o.method = "POST";
	assert_non_null(httpc_request(hc, &o, NULL));
	assert_int_equal(run_until(&r.calls, 1, 5000), 0);
	assert_int_equal(r.status, 201);
	assert_int_equal(r.body_len, 0);
}

static void test_timeout(void **state)
{
	(void)state;
	static struct result r;

	assert_non_null(get("/slow", &r, 300));
	assert_int_equal(run_until(&r.calls, 1, 1200), 0);
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.status, 0);
	assert_int_equal(r.curl_code, CURLE_OPERATION_TIMEDOUT);
	assert_non_null(strstr(r.error, "imed out"));
}

static void test_refused(void **state)
{
	(void)state;
	static struct result r;
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001) };
	socklen_t sl = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	char url[64];

	/* a port that was just free */
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
	close(fd);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/", ntohs(sa.sin_port));
	assert_non_null(fetch(url, &r, 0));
	assert_int_equal(run_until(&r.calls, 1, 5000), 0);
	assert_int_equal(r.curl_code, CURLE_COULDNT_CONNECT);
	assert_int_equal(r.status, 0);
	assert_true(strlen(r.error) > 0);
}

static int data_cb(void *arg, const char *data, size_t len)
{
	struct result *r = arg;

	r->pieces++;
	memcpy(r->body + r->body_len, data, len);
	r->body_len += len;
	return 0;
}

/* Only http and https: a file:// or ftp:// URL fails without being read. */
static void test_other_protocols_refused(void **state)
{
	(void)state;
	static const char *urls[] = { "file:///etc/passwd", "ftp://127.0.0.1:9/", "gopher://127.0.0.1:9/" };

	for (size_t i = 0; i < sizeof(urls) / sizeof(urls[0]); i++) {
		static struct result r;

		memset(&r, 0, sizeof(r));
		assert_non_null(fetch(urls[i], &r, 0));
		assert_int_equal(run_until(&r.calls, 1, 5000), 0);
		assert_int_equal(r.curl_code, CURLE_UNSUPPORTED_PROTOCOL);
		assert_int_equal(r.status, 0);
		assert_null(strstr(r.body, "root:"));
	}
}

static void test_streaming(void **state)
{
	(void)state;
	static struct result r;
	char url[128];
	struct httpc_opts o = { 0 };

	snprintf(url, sizeof(url), "%s/stream", base_url);
	o.url = url;
	o.on_data = data_cb;
	o.on_done = done_cb;
	o.arg = &r;
	assert_non_null(httpc_request(hc, &o, NULL));
	assert_int_equal(run_until(&r.calls, 1, 5000), 0);
	assert_int_equal(r.status, 200);
	assert_true(r.body_null);
	assert_true(r.pieces >= 3);
	assert_string_equal(r.body, "piece0\npiece1\npiece2\n");
}

static int abort_cb(void *arg, const char *data, size_t len)
{
	(void)data;
	(void)len;
	((struct result *)arg)->pieces++;
	return -1;
}

static void test_limits_and_abort(void **state)
{
	(void)state;
	static struct result r, s;
	char url[128];
	struct httpc_opts o = { 0 };

	snprintf(url, sizeof(url), "%s/big", base_url);
	o.url = url;
	o.max_body = 1000;
	o.on_done = done_cb;
	o.arg = &r;
	assert_non_null(httpc_request(hc, &o, NULL));
	assert_int_equal(run_until(&r.calls, 1, 5000), 0);
	assert_string_equal(r.error, "response body larger than 1000 bytes");
	assert_int_not_equal(r.curl_code, 0);

	o.max_body = 0;
	o.on_data = abort_cb;
	o.arg = &s;
	assert_non_null(httpc_request(hc, &o, NULL));
	assert_int_equal(run_until(&s.calls, 1, 5000), 0);
	assert_int_equal(s.pieces, 1);
	assert_string_equal(s.error, "transfer aborted by receiver");
}

/* A's done callback cancels B and starts C. */
static struct httpc_req *req_b;
static struct result ra, rb, rc;

static void done_a(void *arg, const struct httpc_response *res)
{
	done_cb(arg, res);
	httpc_cancel(req_b);
	assert_non_null(get("/hello", &rc, 5000));
}

static void test_cancel(void **state)
{
	(void)state;
	static struct result r;
	struct httpc_req *q;
	struct httpc_opts o = { 0 };
	char url[128];
	int never = 0;

	q = get("/slow", &r, 5000);
	assert_non_null(q);
	/* let the request reach the server before cancelling */
	run_until(&never, 1, 100);
	httpc_cancel(q);
	assert_int_equal(httpc_active(hc), 0);
	run_until(&never, 1, 300);
	assert_int_equal(r.calls, 0);

	snprintf(url, sizeof(url), "%s/hello", base_url);
	o.url = url;
	o.on_done = done_a;
	o.arg = &ra;
	req_b = get("/slow", &rb, 5000);
	assert_non_null(httpc_request(hc, &o, NULL));
	assert_int_equal(run_until(&rc.calls, 1, 5000), 0);
	assert_int_equal(ra.calls, 1);
	assert_int_equal(rc.status, 200);
	run_until(&never, 1, 1700); /* past the time /slow answers */
	assert_int_equal(rb.calls, 0);
	assert_int_equal(httpc_active(hc), 0);
}

/* Cancelling from inside a streaming callback (inside curl). */
static struct httpc_req *req_s;
static int cancel_in_data(void *arg, const char *data, size_t len)
{
	(void)data;
	(void)len;
	((struct result *)arg)->pieces++;
	httpc_cancel(req_s);
	return 0;
}

static void test_cancel_inside_data(void **state)
{
	(void)state;
	static struct result r;
	char url[128];
	struct httpc_opts o = { 0 };
	int never = 0;

	snprintf(url, sizeof(url), "%s/stream", base_url);
	o.url = url;
	o.on_data = cancel_in_data;
	o.on_done = done_cb;
	o.arg = &r;
	req_s = httpc_request(hc, &o, NULL);
	assert_non_null(req_s);
	run_until(&never, 1, 800);
	assert_int_equal(r.pieces, 1);
	assert_int_equal(r.calls, 0);
	assert_int_equal(httpc_active(hc), 0);
}

static void test_unix_socket(void **state)
{
	(void)state;
	static struct result r;
	struct httpc_opts o = { 0 };

	o.url = "http://localhost/hello";
	o.unix_socket = sock_path;
	o.on_done = done_cb;
	o.arg = &r;
	assert_non_null(httpc_request(hc, &o, NULL));
	assert_int_equal(run_until(&r.calls, 1, 5000), 0);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body, "hello world");
}

static int many_done;
static int many_ok;

static void many_cb(void *arg, const struct httpc_response *res)
{
	(void)arg;
	many_done++;
	if (res->status == 200 && strcmp(res->body, "hello world") == 0)
		many_ok++;
}

static void test_concurrent(void **state)
{
	(void)state;
	char url[128];
	struct httpc_opts o = { 0 };

	snprintf(url, sizeof(url), "%s/hello", base_url);
	o.url = url;
	o.timeout_ms = 20000;
	o.on_done = many_cb;
	for (int i = 0; i < 100; i++)
		assert_non_null(httpc_request(hc, &o, NULL));
	assert_int_equal(httpc_active(hc), 100);
	assert_int_equal(run_until(&many_done, 100, 25000), 0);
	assert_int_equal(many_ok, 100);
	assert_int_equal(httpc_active(hc), 0);
}

static void test_free_in_flight(void **state)
{
	(void)state;
	static struct result r;
	int never = 0;

	assert_non_null(get("/slow", &r, 5000));
	assert_non_null(get("/slow", &r, 5000));
	run_until(&never, 1, 50);
	httpc_free(hc);
	hc = httpc_new(base); /* teardown frees it */
	run_until(&never, 1, 200);
	assert_int_equal(r.calls, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_get, setup, teardown),
		cmocka_unit_test_setup_teardown(test_post_echo_and_headers, setup, teardown),
		cmocka_unit_test_setup_teardown(test_timeout, setup, teardown),
		cmocka_unit_test_setup_teardown(test_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_other_protocols_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_streaming, setup, teardown),
		cmocka_unit_test_setup_teardown(test_limits_and_abort, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cancel_inside_data, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unix_socket, setup, teardown),
		cmocka_unit_test_setup_teardown(test_concurrent, setup, teardown),
		cmocka_unit_test_setup_teardown(test_free_in_flight, setup, teardown),
	};
	return cmocka_run_group_tests(tests, start_server, stop_server);
}
