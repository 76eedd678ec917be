/* fsutil — files on disk written atomically, and read with a size cap.
 * Blocking file I/O on small local files (state.json, certificates, keys);
 * callers keep them small. */
#ifndef PMD_FSUTIL_H
#define PMD_FSUTIL_H

#include <stddef.h>
#include <sys/types.h>

/* Replace `path` with `len` bytes of `data` atomically: a temp file in the
 * same folder is written with `mode` (e.g. 0600 for keys), fsync'd, renamed
 * over path, and the folder fsync'd. On failure the old file is untouched,
 * the temp file removed, -1 returned and *errp set (caller frees) to
 * "write /x/state.json: No space left on device". 0 on success. */
int fs_write_atomic(const char *path, const void *data, size_t len, mode_t mode, char **errp);

/* Read the whole of `path` (at most max bytes; larger files fail). Returns a
 * malloc'd NUL-terminated buffer (length in *lenp when not NULL), or NULL
 * with *errp set ("read /x: No such file or directory", "read /x: larger
 * than 1048576 bytes"). errno is kept from the failing call (ENOENT, EFBIG
 * when too large) so callers can tell a missing file apart. */
char *fs_read_file(const char *path, size_t max, size_t *lenp, char **errp);

/* mkdir -p: every missing folder of path is made with mode (existing ones
 * are left as they are). 0, or -1 with *errp ("mkdir /x/y: Permission
 * denied"). */
int fs_mkdirs(const char *path, mode_t mode, char **errp);

#endif
