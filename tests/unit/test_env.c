// UNIT-DEPS: supervisor/runtime_env.c core/fsutil.c
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime.h"

static char path[64];

static void write_file(const char *text)
{
	FILE *f;

	snprintf(path, sizeof(path), "/tmp/pmd-env-XXXXXX");
	close(mkstemp(path));
	f = fopen(path, "w");
	fputs(text, f);
	fclose(f);
}

static struct svc_conf svc_with(const char *env_file)
{
	struct svc_conf s;

	memset(&s, 0, sizeof(s));
	s.name = "backend";
	s.env_file = (char *)env_file;
	return s;
}

/* A strlist over a static array (the tests do not free them). */
#define SL(...) ((struct strlist){ .v = (char *[]){ __VA_ARGS__ }, \
	.n = sizeof((char *[]){ __VA_ARGS__ }) / sizeof(char *) })

static size_t count(char **env)
{
	size_t n = 0;
	while (env[n])
		n++;
	return n;
}

static void test_env_file_format(void **state)
{
	(void)state;
	struct svc_conf s;
	char **env, *err = NULL;

	setenv("PMD_TEST_PASSTHRU", "from-pmd", 1);
	unsetenv("PMD_TEST_UNSET");
	write_file("# comment\n"
		"\n"
		"  DATABASE_URL=postgres://u:p@db/x?a=1\n"
		"QUOTED=\"kept as is\"\n"
		"SPACES= a b \n"
		"EMPTY=\n"
		"   # indented comment\n"
		"CRLF=yes\r\n"
		"PMD_TEST_PASSTHRU\n"
		"PMD_TEST_UNSET\n"
		"DATABASE_URL=second wins");
	s = svc_with(path);
	s.env = SL("DJANGO_SETTINGS_MODULE=config.settings", "EMPTY=now set", "PORT=1");
	env = runtime_env_build(&s, 8123, &err);
	assert_null(err);
	assert_non_null(env);
	assert_string_equal(env[0], "DATABASE_URL=second wins");
	assert_string_equal(env[1], "QUOTED=\"kept as is\"");
	assert_string_equal(env[2], "SPACES= a b ");
	assert_string_equal(env[3], "EMPTY=now set");
	assert_string_equal(env[4], "CRLF=yes");
	assert_string_equal(env[5], "PMD_TEST_PASSTHRU=from-pmd");
	assert_string_equal(env[6], "DJANGO_SETTINGS_MODULE=config.settings");
	assert_string_equal(env[7], "PORT=8123");
	assert_int_equal(count(env), 8);
	runtime_env_free(env);
	unlink(path);
}

static void test_no_env_file_no_port(void **state)
{
	(void)state;
	struct svc_conf s = svc_with("");
	char **env, *err = NULL;

	env = runtime_env_build(&s, 0, &err);
	assert_non_null(env);
	assert_null(env[0]);
	runtime_env_free(env);
	runtime_env_free(NULL);
}

/* exec instances get a PATH unless the service sets one; containers never
 * (their image has its own). */
static void test_exec_path(void **state)
{
	(void)state;
	struct svc_conf s = svc_with("");
	char **env, *err = NULL, *saved = getenv("PATH") ? strdup(getenv("PATH")) : NULL;

	s.runtime = RUNTIME_EXEC;
	setenv("PATH", "/opt/x/bin:/usr/bin", 1);
	env = runtime_env_build(&s, 8000, &err);
	assert_string_equal(env[0], "PATH=/opt/x/bin:/usr/bin");
	assert_string_equal(env[1], "PORT=8000");
	runtime_env_free(env);
	unsetenv("PATH");
	env = runtime_env_build(&s, 0, &err);
	assert_string_equal(env[0], "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
	assert_int_equal(count(env), 1);
	runtime_env_free(env);
	s.env = SL("PATH=/mine");
	env = runtime_env_build(&s, 0, &err);
	assert_string_equal(env[0], "PATH=/mine");
	assert_int_equal(count(env), 1);
	runtime_env_free(env);
	s.runtime = RUNTIME_DOCKER;
	s.env = SL("A=1");
	env = runtime_env_build(&s, 0, &err);
	assert_int_equal(count(env), 1);
	runtime_env_free(env);
	if (saved != NULL)
		setenv("PATH", saved, 1);
	free(saved);
}

static void test_required_env(void **state)
{
	(void)state;
	struct svc_conf s;
	char **env, *err = NULL;

	write_file("SECRET_KEY=\nOTHER=1\n");
	s = svc_with(path);
	s.required_env = SL("DATABASE_URL", "OTHER", "SECRET_KEY");
	env = runtime_env_build(&s, 8000, &err);
	assert_null(env);
	assert_non_null(err);
	assert_non_null(strstr(err, "missing required_env: DATABASE_URL, SECRET_KEY"));
	free(err);

	s.env = SL("DATABASE_URL=x", "SECRET_KEY=y");
	err = NULL;
	env = runtime_env_build(&s, 8000, &err);
	assert_non_null(env);
	assert_null(err);
	runtime_env_free(env);
	unlink(path);
}

static void test_errors(void **state)
{
	(void)state;
	struct svc_conf s = svc_with("/nonexistent/pmd.env");
	char *err = NULL;

	assert_null(runtime_env_build(&s, 0, &err));
	assert_string_equal(err, "env_file /nonexistent/pmd.env: No such file or directory");
	free(err);

	write_file("A=1\nBAD KEY=2\n");
	s = svc_with(path);
	err = NULL;
	assert_null(runtime_env_build(&s, 0, &err));
	assert_non_null(strstr(err, ":2: variable name \"BAD KEY\" contains whitespace"));
	assert_non_null(strstr(err, path));
	free(err);

	write_file("=value\n");
	err = NULL;
	assert_null(runtime_env_build(&s, 0, &err));
	assert_non_null(strstr(err, ":1: no variable name before '='"));
	free(err);
	unlink(path);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_env_file_format),
		cmocka_unit_test(test_no_env_file_no_port),
		cmocka_unit_test(test_required_env),
		cmocka_unit_test(test_exec_path),
		cmocka_unit_test(test_errors),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
