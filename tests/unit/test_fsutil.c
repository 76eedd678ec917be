// UNIT-DEPS: core/fsutil.c
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"

static char dir[64];

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof(dir), "/tmp/pmd-fsutil-XXXXXX");
	return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	DIR *d = opendir(dir);
	struct dirent *e;
	char p[512];

	while (d && (e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
		unlink(p);
	}
	if (d)
		closedir(d);
	return rmdir(dir);
}

static int count_entries(void)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

static void test_write_read_mode(void **state)
{
	(void)state;
	char path[128], *err = NULL, *data;
	struct stat st;
	size_t len = 0;

	snprintf(path, sizeof(path), "%s/key.pem", dir);
	assert_int_equal(fs_write_atomic(path, "secret\n", 7, 0600, &err), 0);
	assert_null(err);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	data = fs_read_file(path, 1024, &len, &err);
	assert_non_null(data);
	assert_int_equal(len, 7);
	assert_string_equal(data, "secret\n");
	free(data);

	/* replace with other content and mode; no temp file left behind */
	assert_int_equal(fs_write_atomic(path, "{}", 2, 0644, &err), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0644);
	data = fs_read_file(path, 1024, NULL, &err);
	assert_string_equal(data, "{}");
	free(data);
	assert_int_equal(count_entries(), 1);
}

static void test_failure_keeps_old_file(void **state)
{
	(void)state;
	char path[128], *err = NULL, *data, big[65536];
	struct rlimit old, lim;

	snprintf(path, sizeof(path), "%s/state.json", dir);
	assert_int_equal(fs_write_atomic(path, "old", 3, 0600, &err), 0);

	/* a file size limit makes the write of the temp file fail (EFBIG) */
	memset(big, 'n', sizeof(big));
	signal(SIGXFSZ, SIG_IGN);
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	lim = old;
	lim.rlim_cur = 1024;
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
	assert_int_equal(fs_write_atomic(path, big, sizeof(big), 0600, &err), -1);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	assert_non_null(err);
	assert_non_null(strstr(err, path));
	assert_non_null(strstr(err, "too large"));
	free(err);

	data = fs_read_file(path, 1024, NULL, NULL);
	assert_string_equal(data, "old");
	free(data);
	assert_int_equal(count_entries(), 1);

	/* a missing folder is reported with the path */
	err = NULL;
	assert_int_equal(fs_write_atomic("/nonexistent-pmd/x", "a", 1, 0600, &err), -1);
	assert_string_equal(err, "write /nonexistent-pmd/x: No such file or directory");
	free(err);
}

static void test_read_errors(void **state)
{
	(void)state;
	char path[128], *err = NULL;

	snprintf(path, sizeof(path), "%s/missing", dir);
	assert_null(fs_read_file(path, 10, NULL, &err));
	assert_int_equal(errno, ENOENT);
	assert_non_null(strstr(err, "No such file or directory"));
	free(err);

	snprintf(path, sizeof(path), "%s/big", dir);
	assert_int_equal(fs_write_atomic(path, "0123456789A", 11, 0600, NULL), 0);
	err = NULL;
	assert_null(fs_read_file(path, 10, NULL, &err));
	assert_int_equal(errno, EFBIG);
	assert_string_equal(strstr(err, ": larger"), ": larger than 10 bytes");
	free(err);
	/* exactly at the cap is fine */
	char *d = fs_read_file(path, 11, NULL, NULL);
	assert_string_equal(d, "0123456789A");
	free(d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_write_read_mode, setup, teardown),
		cmocka_unit_test_setup_teardown(test_failure_keeps_old_file, setup, teardown),
		cmocka_unit_test_setup_teardown(test_read_errors, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
