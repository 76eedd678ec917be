/* listenfds — see include/listenfds.h. */
#include "listenfds.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"

#define FDS_START 3
#define FDS_MAX 256

extern char **environ;

struct given {
	int fd;                      /* -1 once taken or closed */
	char name[64];
};

static struct given g_fds[FDS_MAX];
static size_t g_n;

static bool parse_num(const char *s, long *out)
{
	char *end;
	if (!s || !*s)
		return false;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || *end || v < 0)
		return false;
	*out = v;
	return true;
}

size_t listenfds_init(void)
{
	long pid = 0, n = 0;
	const char *names = getenv("LISTEN_FDNAMES");
	bool ours = parse_num(getenv("LISTEN_PID"), &pid) && pid == (long)getpid() &&
		parse_num(getenv("LISTEN_FDS"), &n) && n > 0;
	if (ours && n > FDS_MAX) {
		log_warn("socket activation: too many sockets, using the first ones given=%ld max=%d", n, FDS_MAX);
		n = FDS_MAX;
	}
	for (long i = 0; ours && i < n; i++) {
		struct given *g = &g_fds[g_n++];
		g->fd = FDS_START + (int)i;
		fcntl(g->fd, F_SETFD, FD_CLOEXEC);
		/* systemd hands them blocking: an accept loop would then block
		 * its worker once the queue is empty */
		int fl = fcntl(g->fd, F_GETFL);
		if (fl >= 0)
			fcntl(g->fd, F_SETFL, fl | O_NONBLOCK);
		/* the i-th ':'-separated name, if any */
		const char *p = names;
		for (long k = 0; p && k < i; k++)
			if ((p = strchr(p, ':')))
				p++;
		size_t len = p ? strcspn(p, ":") : 0;
		snprintf(g->name, sizeof(g->name), "%.*s", (int)(len < sizeof(g->name) ? len : sizeof(g->name) - 1),
			len ? p : "unknown");
	}
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");
	return g_n;
}

static bool is_listening(int fd)
{
	int on = 0;
	socklen_t len = sizeof(on);
	return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) == 0 && on;
}

static bool same_inet(const struct sockaddr *a, const struct sockaddr_storage *b)
{
	if (a->sa_family != b->ss_family)
		return false;
	if (a->sa_family == AF_INET) {
		const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
		return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
	}
	if (a->sa_family == AF_INET6) {
		const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
		return x->sin6_port == y->sin6_port &&
			memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
	}
	return false;
}

size_t listenfds_take_inet(const struct sockaddr *sa, int *fds, size_t cap)
{
	size_t n = 0;
	for (size_t i = 0; i < g_n && n < cap; i++) {
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		if (g_fds[i].fd < 0 || getsockname(g_fds[i].fd, (struct sockaddr *)&ss, &len) < 0 ||
		    !same_inet(sa, &ss) || !is_listening(g_fds[i].fd))
			continue;
		fds[n++] = g_fds[i].fd;
		g_fds[i].fd = -1;
	}
	return n;
}

int listenfds_take_unix(const char *path)
{
	for (size_t i = 0; i < g_n; i++) {
		struct sockaddr_un sun;
		socklen_t len = sizeof(sun);
		if (g_fds[i].fd < 0 || getsockname(g_fds[i].fd, (struct sockaddr *)&sun, &len) < 0 ||
		    sun.sun_family != AF_UNIX || len <= offsetof(struct sockaddr_un, sun_path) ||
		    strncmp(sun.sun_path, path, sizeof(sun.sun_path)) != 0 || !is_listening(g_fds[i].fd))
			continue;
		int fd = g_fds[i].fd;
		g_fds[i].fd = -1;
		return fd;
	}
	return -1;
}

void listenfds_close_unused(void)
{
	for (size_t i = 0; i < g_n; i++) {
		if (g_fds[i].fd < 0)
			continue;
		log_warn("socket activation: a given socket matches no http_listen, https_listen or "
			"control_socket address, closed fd=%d name=%s", g_fds[i].fd, log_q(g_fds[i].name));
		close(g_fds[i].fd);
		g_fds[i].fd = -1;
	}
}

/* Hand-over to a new process -------------------------------------------- */

static bool env_skip(const char *e)
{
	static const char *const drop[] = { "LISTEN_PID=", "LISTEN_FDS=", "LISTEN_FDNAMES=",
		"PMD_READY_FD=", "WATCHDOG_PID=" };
	for (size_t i = 0; i < sizeof(drop) / sizeof(drop[0]); i++)
		if (strncmp(e, drop[i], strlen(drop[i])) == 0)
			return true;
	return false;
}

/* The decimal of v, NUL-terminated, at dst (async-signal-safe). */
static void put_pid(char *dst, pid_t v)
{
	char tmp[24];
	int i = (int)sizeof(tmp);
	do {
		tmp[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v && i > 0);
	size_t n = sizeof(tmp) - (size_t)i;
	memcpy(dst, tmp + i, n);
	dst[n] = '\0';
}

pid_t listenfds_spawn(const char *exe, char *const argv[], const int *fds,
	const char *const *names, size_t n, int ready_fd)
{
	size_t ne = 0, total = n + 1;
	char **env = NULL, *fdnames = NULL;
	char listen_fds[32], ready[32], listen_pid[40] = "LISTEN_PID=", watchdog_pid[40] = "WATCHDOG_PID=";
	int *tmp = NULL, saved = 0;
	size_t ntmp = 0, names_len = 1;
	pid_t pid = -1;
	bool watchdog = getenv("WATCHDOG_USEC") != NULL;

	for (char **e = environ; *e; e++)
		ne++;
	for (size_t i = 0; i < n; i++)
		names_len += strlen(names[i]) + 1;
	if (!(env = calloc(ne + 6, sizeof(*env))) || !(fdnames = malloc(names_len + 15)) ||
	    !(tmp = calloc(total, sizeof(*tmp)))) {
		errno = ENOMEM;
		goto out;
	}
	/* copies above every target fd: the child's dup2 calls cannot clobber
	 * a source that is still to be moved */
	for (size_t i = 0; i < total; i++) {
		int src = i < n ? fds[i] : ready_fd;
		if ((tmp[i] = fcntl(src, F_DUPFD_CLOEXEC, FDS_START + (int)total)) < 0)
			goto out;
		ntmp++;
	}
	size_t k = 0, o = (size_t)snprintf(fdnames, names_len + 15, "LISTEN_FDNAMES=");
	for (char **e = environ; *e; e++)
		if (!env_skip(*e))
			env[k++] = *e;
	for (size_t i = 0; i < n; i++)
		o += (size_t)snprintf(fdnames + o, names_len + 15 - o, "%s%s", i ? ":" : "", names[i]);
	snprintf(listen_fds, sizeof(listen_fds), "LISTEN_FDS=%zu", n);
	snprintf(ready, sizeof(ready), "PMD_READY_FD=%d", FDS_START + (int)n);
	env[k++] = listen_fds;
	env[k++] = fdnames;
	env[k++] = ready;
	env[k++] = listen_pid;
	if (watchdog)
		env[k++] = watchdog_pid;
	env[k] = NULL;

	pid = fork();
	if (pid == 0) {
		/* the child of a threaded process: async-signal-safe calls only */
		pid_t self = getpid();
		put_pid(listen_pid + strlen("LISTEN_PID="), self);
		put_pid(watchdog_pid + strlen("WATCHDOG_PID="), self);
		for (size_t i = 0; i < total; i++)
			if (dup2(tmp[i], FDS_START + (int)i) < 0)
				_exit(127);
		close_range((unsigned)(FDS_START + (int)total), ~0U, 0);
		execve(exe, argv, env);
		_exit(127);
	}
out:
	saved = errno;
	for (size_t i = 0; i < ntmp; i++)
		close(tmp[i]);
	free(tmp);
	free(fdnames);
	free(env);
	errno = saved;
	return pid;
}
