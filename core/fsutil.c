/* fsutil — atomic writes and capped reads; see include/fsutil.h. */
#include "fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* *errp = "VERB PATH: strerror(err)"; errno is left as err. */
static void set_err(char **errp, const char *verb, const char *path, int err)
{
	if (errp) {
		char *m = NULL;
		if (asprintf(&m, "%s %s: %s", verb, path, strerror(err)) < 0)
			m = NULL;
		*errp = m;
	}
	errno = err;
}

static int write_all(int fd, const char *p, size_t len)
{
	while (len > 0) {
		ssize_t w = write(fd, p, len);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

int fs_write_atomic(const char *path, const void *data, size_t len, mode_t mode, char **errp)
{
	char tmp[PATH_MAX], dir[PATH_MAX];
	const char *slash;
	int fd = -1, dfd = -1, rc = -1, err;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp.XXXXXX", path) >= (int)sizeof(tmp)) {
		set_err(errp, "write", path, ENAMETOOLONG);
		return -1;
	}
	slash = strrchr(path, '/');
	if (!slash)
		snprintf(dir, sizeof(dir), ".");
	else if (slash == path)
		snprintf(dir, sizeof(dir), "/");
	else
		snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);

	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		set_err(errp, "write", path, errno);
		tmp[0] = '\0';
		goto out;
	}
	if (fchmod(fd, mode) < 0 || write_all(fd, data, len) < 0 || fsync(fd) < 0) {
		set_err(errp, "write", path, errno);
		goto out;
	}
	if (close(fd) < 0) {
		fd = -1;
		set_err(errp, "write", path, errno);
		goto out;
	}
	fd = -1;
	if (rename(tmp, path) < 0) {
		set_err(errp, "rename", path, errno);
		goto out;
	}
	tmp[0] = '\0';
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0 || fsync(dfd) < 0) {
		set_err(errp, "fsync folder of", path, errno);
		goto out;
	}
	rc = 0;
out:
	err = errno;
	if (fd >= 0)
		close(fd);
	if (dfd >= 0)
		close(dfd);
	if (tmp[0])
		unlink(tmp);
	errno = err;
	return rc;
}

char *fs_read_file(const char *path, size_t max, size_t *lenp, char **errp)
{
	char *buf = NULL, *ret = NULL;
	size_t len = 0;
	int fd;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		set_err(errp, "read", path, errno);
		return NULL;
	}
	buf = malloc(max + 1);
	if (!buf) {
		set_err(errp, "read", path, ENOMEM);
		goto out;
	}
	/* read up to max+1 bytes: one more than allowed tells "too large" */
	for (;;) {
		ssize_t r = read(fd, buf + len, max + 1 - len);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			set_err(errp, "read", path, errno);
			goto out;
		}
		if (r == 0)
			break;
		len += (size_t)r;
		if (len > max) {
			if (errp && asprintf(errp, "read %s: larger than %zu bytes", path, max) < 0)
				*errp = NULL;
			errno = EFBIG;
			goto out;
		}
	}
	buf[len] = '\0';
	if (lenp)
		*lenp = len;
	ret = buf;
	buf = NULL;
out:
	{
		int err = errno;
		free(buf);
		close(fd);
		errno = err;
	}
	return ret;
}

int fs_mkdirs(const char *path, mode_t mode, char **errp)
{
	char buf[PATH_MAX];
	if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf)) {
		set_err(errp, "mkdir", path, ENAMETOOLONG);
		return -1;
	}
	for (char *p = buf + 1;; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		char c = *p;
		*p = '\0';
		struct stat sb;
		if (mkdir(buf, mode) < 0 && errno != EEXIST) {
			set_err(errp, "mkdir", buf, errno);
			return -1;
		}
		if (stat(buf, &sb) < 0) {
			set_err(errp, "mkdir", buf, errno);
			return -1;
		}
		if (!S_ISDIR(sb.st_mode)) {
			set_err(errp, "mkdir", buf, ENOTDIR);
			return -1;
		}
		*p = c;
		if (!c)
			break;
	}
	return 0;
}
