/* listenfds — listening sockets pmd is given instead of binding them:
 * the sd_listen_fds(3) protocol without libsystemd (LISTEN_PID = our pid,
 * LISTEN_FDS = n sockets from fd 3 on, optional LISTEN_FDNAMES "a:b:..."),
 * used by systemd socket activation (conf/pmd.socket) and by a pmd handing
 * its listeners over to its successor (SIGUSR2, listenfds_spawn).
 *
 * Main thread, at start: listenfds_init() once, then the modules that bind
 * take what matches their configured address (listenfds_take_*, matched
 * by getsockname, not by name), then listenfds_close_unused(). */
#ifndef PMD_LISTENFDS_H
#define PMD_LISTENFDS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

/* Read and unset LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES; the sockets become
 * close-on-exec and non-blocking. Returns how many were given (0 when none or not for us). */
size_t listenfds_init(void);
/* Up to cap inherited listening TCP sockets bound to exactly `sa` (family,
 * address, port) into fds; they are the caller's from now on. Count. */
size_t listenfds_take_inet(const struct sockaddr *sa, int *fds, size_t cap);
/* The inherited listening unix socket bound to `path`, the caller's from
 * now on; -1 when none. */
int listenfds_take_unix(const char *path);
/* Close every inherited socket nobody took, each with a warning naming it
 * (a pmd.socket address that pmd.ini does not listen on). */
void listenfds_close_unused(void);

/* Start `exe argv...` as a child that inherits fds[0..n) as its listening
 * sockets (LISTEN_FDS, LISTEN_FDNAMES from names, LISTEN_PID set to the
 * child) and `ready_fd` as PMD_READY_FD; WATCHDOG_PID follows the child.
 * Nothing is closed in the parent. Returns the pid, or -1 with errno. */
pid_t listenfds_spawn(const char *exe, char *const argv[], const int *fds,
	const char *const *names, size_t n, int ready_fd);

#endif
