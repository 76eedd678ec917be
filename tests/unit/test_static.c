/* Unit tests for proxy/static.c: MIME types, hashed names, and the request
 * path rules that keep a folder's files from leading out of it. */
// UNIT-DEPS: proxy/static.c proxy/http.c core/log.c
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "static.h"

static void test_mime_types(void **state)
{
	(void)state;
	static const struct {
		const char *name, *type;
	} t[] = {
		{ "a/site.css", "text/css; charset=utf-8" }, { "app.JS", "application/javascript" },
		{ "m.mjs", "application/javascript" }, { "main.js.map", "application/json" },
		{ "x.json", "application/json" }, { "i.svg", "image/svg+xml" }, { "i.png", "image/png" },
		{ "i.jpg", "image/jpeg" }, { "i.jpeg", "image/jpeg" }, { "i.gif", "image/gif" },
		{ "i.webp", "image/webp" }, { "i.avif", "image/avif" }, { "favicon.ico", "image/x-icon" },
		{ "f.woff", "font/woff" }, { "f.woff2", "font/woff2" }, { "f.ttf", "font/ttf" },
		{ "robots.txt", "text/plain; charset=utf-8" }, { "index.html", "text/html; charset=utf-8" },
		{ "feed.xml", "application/xml" }, { "m.wasm", "application/wasm" }, { "d.pdf", "application/pdf" },
		{ "blob", "application/octet-stream" }, { "x.d/blob", "application/octet-stream" },
		{ "x.unknown", "application/octet-stream" },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		if (strcmp(static_mime_type(t[i].name), t[i].type) != 0)
			fail_msg("%s: want %s, got %s", t[i].name, t[i].type, static_mime_type(t[i].name));
}

static void test_hashed_names(void **state)
{
	(void)state;
	static const char *const yes[] = {
		"admin/css/base.0123456789ab.css",     /* Django ManifestStaticFilesStorage */
		"static/js/main.1a2b3c4d.js",          /* Create React App */
		"static/js/2.1a2b3c4d.chunk.js",
		"static/media/logo.6ce24c58023cc2f8fd88fe9d219db6c6.svg",
		"css/base.0123456789ab.css.gz",
	};
	static const char *const no[] = {
		"admin/css/base.css", "main.js", "1a2b3c4d.js", "x/1a2b3c4d", "app.1a2b3c4.js" /* 7 */,
		"app.1a2b3c4g.js", "deadbeef00.d/app.js", "v.0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0.js",
	};
	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
		if (!static_name_hashed(yes[i], strlen(yes[i])))
			fail_msg("%s should count as hashed", yes[i]);
	for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
		if (static_name_hashed(no[i], strlen(no[i])))
			fail_msg("%s should not count as hashed", no[i]);
}

static void test_rel_paths(void **state)
{
	(void)state;
	static const struct {
		const char *path, *want;         /* want NULL: refused (-1), "-2": a folder */
	} t[] = {
		{ "/static/admin/css/base.css", "admin/css/base.css" },
		{ "/static/a%20b.txt", "a b.txt" },
		{ "/static/caf%C3%A9.css", "caf\xc3\xa9.css" },
		{ "/static/x..y.css", "x..y.css" },
		{ "/static/a/b.c.d", "a/b.c.d" },
		{ "/static/", "-2" },                    /* the folder itself: no listing */
		{ "/static/admin/", "-2" },              /* a folder */
		{ "/static/../etc/passwd", NULL },
		{ "/static/a/../../etc/passwd", NULL },
		{ "/static/..", NULL },
		{ "/static/./a.css", NULL },
		{ "/static/%2e%2e/etc/passwd", NULL },
		{ "/static/%2E%2E/etc/passwd", NULL },
		{ "/static/.%2e/etc/passwd", NULL },
		{ "/static/a%2f..%2f..%2fetc/passwd", NULL },
		{ "/static/a%2Fb", NULL },
		{ "/static/..%5c..%5cetc/passwd", NULL },
		{ "/static/a\\b", NULL },
		{ "/static/a%00.css", NULL },
		{ "/static/a%0a.css", NULL },
		{ "/static/a%7f.css", NULL },
		{ "/static/a%zz.css", NULL },
		{ "/static/a%2", NULL },
		{ "/static/a%", NULL },
		{ "/static//etc/passwd", NULL },
		{ "/static/a//b", NULL },
		{ "/static/.env", NULL },                /* hidden files */
		{ "/static/.git/config", NULL },
		{ "/static/a/.htpasswd", NULL },
	};
	char out[256];
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		int r = static_rel_path(t[i].path, strlen(t[i].path), 8, out, sizeof(out));
		if (t[i].want && strcmp(t[i].want, "-2") == 0) {
			if (r != -2)
				fail_msg("%s: want -2 (a folder), got %d", t[i].path, r);
			continue;
		}
		if (t[i].want && (r != 0 || strcmp(out, t[i].want) != 0))
			fail_msg("%s: want \"%s\", got %d \"%s\"", t[i].path, t[i].want, r, r == 0 ? out : "");
		if (!t[i].want && r != -1)
			fail_msg("%s: should be refused, got %d", t[i].path, r);
	}
	/* raw NUL inside the length, and a name longer than the buffer */
	assert_int_equal(static_rel_path("/static/a\0b", 11, 8, out, sizeof(out)), -1);
	assert_int_equal(static_rel_path("/static/abcdef", 14, 8, out, 6), -1);
	assert_int_equal(static_rel_path("/static/abcde", 13, 8, out, 6), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mime_types),
		cmocka_unit_test(test_hashed_names),
		cmocka_unit_test(test_rel_paths),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
