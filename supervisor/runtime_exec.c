/* runtime_exec — an instance is a child process group: `/bin/sh -c COMMAND`
 * (${IMAGE} replaced by the instance's image) in its own process group, stdin /dev/null, stdout+stderr through one pipe read line
 * by line into the instance's logring and pmd's log. Children are reaped
 * from libevent's SIGCHLD signal event with waitpid(pid, WNOHANG) per
 * child of ours, never blocking and never reaping other modules' children.
 * Stop: SIGTERM to the group, SIGKILL after the timeout. */
#include "runtime.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define LINE_MAX_BYTES 2048

struct exec_priv {
	struct exec_priv *next;          /* registry of running children */
	struct rt_instance *inst;
	struct event_base *base;
	int out_fd;
	struct event *out_ev;
	struct event *kill_timer;        /* stop / run_once timeout: SIGKILL */
	char line[LINE_MAX_BYTES];
	size_t line_len;
	bool running, timed_out, quiet;
	rt_exit_fn on_exit;
	void *exit_arg;
	rt_done_fn stop_done;
	void *stop_arg;
	rt_once_fn once_done;            /* run_once: the instance is ours */
	void *once_arg;
	unsigned long once_timeout_ms;
};

static struct exec_priv *children;
static struct event *sigchld_ev;

static void ms_to_tv(unsigned long ms, struct timeval *tv)
{
	tv->tv_sec = (time_t)(ms / 1000);
	tv->tv_usec = (suseconds_t)(ms % 1000) * 1000;
}

/* ${IMAGE} replaced by image; malloc'd, NULL on allocation failure. */
static char *substitute_image(const char *command, const char *image)
{
	static const char var[] = "${IMAGE}";
	size_t n = 0, ilen = strlen(image), cap;
	const char *p;
	char *out, *o;

	for (p = command; (p = strstr(p, var)) != NULL; p += sizeof(var) - 1)
		n++;
	cap = strlen(command) + n * ilen + 1;
	out = malloc(cap);
	if (out == NULL)
		return NULL;
	o = out;
	for (p = command; *p != '\0';) {
		if (strncmp(p, var, sizeof(var) - 1) == 0) {
			memcpy(o, image, ilen);
			o += ilen;
			p += sizeof(var) - 1;
		} else {
			*o++ = *p++;
		}
	}
	*o = '\0';
	return out;
}

/* The shell line of a command: ${IMAGE} substituted, and a simple
 * command (no ; & | ( ) or newline) run as `exec COMMAND`, so that the
 * instance's pid is the program itself and PR_SET_PDEATHSIG reaches it. */
static char *shell_line(const char *command, const char *image)
{
	char *sub = substitute_image(command, image), *out = NULL;

	if (sub == NULL || strpbrk(sub, ";&|()\n") != NULL || strncmp(sub, "exec ", 5) == 0)
		return sub;
	if (asprintf(&out, "exec %s", sub) < 0)
		out = NULL;
	free(sub);
	return out;
}

/* One complete line of output: into the ring and pmd's log. */
static void emit_line(struct exec_priv *p, const char *line, size_t len)
{
	struct rt_instance *i = p->inst;

	if (len > 0 && line[len - 1] == '\r')
		len--;
	logring_push(i->logs, line, len);
	if (!p->quiet)
		log_info("app output service=%s color=%s line=%s", i->service, i->color,
			log_q(logring_line(i->logs, logring_count(i->logs) - 1)));
}

static void feed(struct exec_priv *p, const char *data, size_t len)
{
	for (size_t k = 0; k < len; k++) {
		if (data[k] == '\n') {
			emit_line(p, p->line, p->line_len);
			p->line_len = 0;
		} else if (p->line_len < sizeof(p->line)) {
			p->line[p->line_len++] = data[k];
		}
	}
}

static void close_output(struct exec_priv *p)
{
	if (p->line_len > 0) {
		emit_line(p, p->line, p->line_len);
		p->line_len = 0;
	}
	if (p->out_ev != NULL) {
		event_free(p->out_ev);
		p->out_ev = NULL;
	}
	if (p->out_fd >= 0) {
		close(p->out_fd);
		p->out_fd = -1;
	}
}

/* Read what the pipe has now; at EOF close it. */
static void read_output(evutil_socket_t fd, short what, void *arg)
{
	struct exec_priv *p = arg;
	char buf[16384];

	(void)fd;
	(void)what;
	for (int rounds = 0; rounds < 64 && p->out_fd >= 0; rounds++) {
		ssize_t n = read(p->out_fd, buf, sizeof(buf));

		if (n > 0) {
			feed(p, buf, (size_t)n);
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		close_output(p);
	}
}

static void registry_remove(struct exec_priv *p)
{
	for (struct exec_priv **pp = &children; *pp != NULL; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			break;
		}
	p->next = NULL;
	if (children == NULL && sigchld_ev != NULL) {
		event_free(sigchld_ev);
		sigchld_ev = NULL;
	}
}

/* The child `p` is gone with wait status `status`. */
static void child_exited(struct exec_priv *p, int status)
{
	struct rt_instance *i = p->inst;
	int code = WIFEXITED(status) ? WEXITSTATUS(status)
		: WIFSIGNALED(status) ? 128 + WTERMSIG(status) : -1;
	rt_done_fn stop_done = p->stop_done;
	void *stop_arg = p->stop_arg;

	p->running = false;
	registry_remove(p);
	read_output(p->out_fd, EV_READ, p);
	close_output(p);
	/* Whatever the group left behind goes with it. */
	kill(-i->pid, SIGKILL);
	if (p->kill_timer != NULL)
		evtimer_del(p->kill_timer);
	log_info("process exited service=%s color=%s pid=%d exit_code=%d", i->service, i->color,
		(int)i->pid, code);
	if (p->once_done != NULL) {
		rt_once_fn done = p->once_done;
		void *arg = p->once_arg;
		char err[128] = "";

		if (p->timed_out)
			snprintf(err, sizeof(err), "timed out after %lums", p->once_timeout_ms);
		done(arg, p->timed_out ? -1 : code, p->timed_out ? err : NULL, i->logs);
		runtime_exec_ops.release(i);
		rt_instance_free(i);
		return;
	}
	p->stop_done = NULL;
	/* Callbacks last: either may free the instance (stop_done after on_exit
	 * by contract; the supervisor frees once both have been seen). */
	if (p->on_exit != NULL)
		p->on_exit(p->exit_arg, i, code, false);
	if (stop_done != NULL)
		stop_done(stop_arg, 1, NULL);
}

static void on_sigchld(evutil_socket_t sig, short what, void *arg)
{
	struct exec_priv *p, *next;

	(void)sig;
	(void)what;
	(void)arg;
	/* Bounded: each child of ours is looked at once per signal. */
	for (p = children; p != NULL; p = next) {
		int status;
		pid_t r;

		next = p->next;
		r = waitpid(p->inst->pid, &status, WNOHANG);
		if (r == p->inst->pid) {
			child_exited(p, status);
			/* callbacks may have changed the registry: rescan */
			next = children;
		}
	}
}

static void kill_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct exec_priv *p = arg;

	(void)fd;
	(void)what;
	if (!p->running)
		return;
	if (p->once_done != NULL)
		p->timed_out = true;
	log_warn("process did not stop in time, killing service=%s color=%s pid=%d",
		p->inst->service, p->inst->color, (int)p->inst->pid);
	kill(-p->inst->pid, SIGKILL);
}

/* Fork and exec `/bin/sh -c command` with env in a new process group;
 * output on the pipe returned in *out_fd (non-blocking). Only
 * async-signal-safe calls between fork and exec. -1 with *err. */
static pid_t spawn(const char *command, char *const *env, int *out_fd, char *err, size_t errsize)
{
	char *const argv[] = { "/bin/sh", "-c", (char *)command, NULL };
	int fds[2] = { -1, -1 }, devnull = -1;
	pid_t parent = getpid(), pid = -1;

	if (pipe2(fds, O_CLOEXEC) < 0 ||
	    (devnull = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0) {
		snprintf(err, errsize, "cannot create a pipe: %s", strerror(errno));
		goto out;
	}
	pid = fork();
	if (pid < 0) {
		snprintf(err, errsize, "fork: %s", strerror(errno));
		goto out;
	}
	if (pid == 0) {
		static const char msg[] = "pmd: cannot execute /bin/sh\n";
		struct sigaction sa;
		sigset_t none;

		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = SIG_DFL;
		for (int s = 1; s < NSIG; s++)
			sigaction(s, &sa, NULL);
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		setpgid(0, 0);
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (getppid() != parent)
			_exit(127);
		if (dup2(devnull, 0) < 0 || dup2(fds[1], 1) < 0 || dup2(fds[1], 2) < 0)
			_exit(127);
		/* pmd's listening sockets and everything else stay behind. */
		close_range(3, ~0U, 0);
		execve(argv[0], argv, env);
		if (write(2, msg, sizeof(msg) - 1) < 0)
			_exit(127);
		_exit(127);
	}
	setpgid(pid, pid);   /* also from here: no window where a kill misses */
	fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK);
	*out_fd = fds[0];
	fds[0] = -1;
out:
	if (fds[0] >= 0)
		close(fds[0]);
	if (fds[1] >= 0)
		close(fds[1]);
	if (devnull >= 0)
		close(devnull);
	return pid;
}

/* Run command for inst (priv allocated here). 0 / -1 with err. */
static int launch(struct event_base *base, struct rt_instance *inst, const char *command,
	char *const *env, char *err, size_t errsize)
{
	struct exec_priv *p = calloc(1, sizeof(*p));
	char *cmd = NULL;
	int rc = -1;

	if (p == NULL || (cmd = shell_line(command, inst->image)) == NULL) {
		snprintf(err, errsize, "out of memory");
		goto out;
	}
	p->inst = inst;
	p->base = base;
	p->out_fd = -1;
	if (sigchld_ev == NULL) {
		sigchld_ev = evsignal_new(base, SIGCHLD, on_sigchld, NULL);
		if (sigchld_ev == NULL || evsignal_add(sigchld_ev, NULL) < 0) {
			snprintf(err, errsize, "cannot watch SIGCHLD");
			event_free(sigchld_ev);
			sigchld_ev = NULL;
			goto out;
		}
	}
	p->kill_timer = evtimer_new(base, kill_timeout, p);
	if (p->kill_timer == NULL) {
		snprintf(err, errsize, "out of memory");
		goto out;
	}
	inst->pid = spawn(cmd, env, &p->out_fd, err, errsize);
	if (inst->pid < 0)
		goto out;
	p->running = true;
	p->next = children;
	children = p;
	p->out_ev = event_new(base, p->out_fd, EV_READ | EV_PERSIST, read_output, p);
	if (p->out_ev != NULL)
		event_add(p->out_ev, NULL);
	inst->priv = p;
	inst->started_at = (long)time(NULL);
	p = NULL;
	rc = 0;
out:
	if (p != NULL) {
		if (children == NULL && sigchld_ev != NULL) {
			event_free(sigchld_ev);
			sigchld_ev = NULL;
		}
		if (p->kill_timer != NULL)
			event_free(p->kill_timer);
		free(p);
	}
	free(cmd);
	return rc;
}

static void exec_start(struct runtime_ctx *rt, const struct svc_conf *svc, struct rt_instance *inst,
	char *const *env, rt_exit_fn on_exit, rt_done_fn done, void *arg)
{
	char err[256];
	struct exec_priv *p;

	if (launch(rt->base, inst, svc->command, env, err, sizeof(err)) < 0) {
		done(arg, 0, err);
		return;
	}
	p = inst->priv;
	p->quiet = !svc->log_relay;
	p->on_exit = on_exit;
	p->exit_arg = arg;
	snprintf(inst->id, sizeof(inst->id), "pid-%d", (int)inst->pid);
	snprintf(inst->addr, sizeof(inst->addr), "127.0.0.1:%d", inst->host_port);
	log_info("process started service=%s color=%s pid=%d port=%d", inst->service, inst->color,
		(int)inst->pid, inst->host_port);
	done(arg, 1, NULL);
}

static void exec_stop(struct runtime_ctx *rt, struct rt_instance *inst, unsigned long timeout_ms,
	rt_done_fn done, void *arg)
{
	struct exec_priv *p = inst->priv;
	struct timeval tv;

	(void)rt;
	if (p == NULL || !p->running) {
		done(arg, 1, NULL);
		return;
	}
	p->stop_done = done;
	p->stop_arg = arg;
	kill(-inst->pid, SIGTERM);
	ms_to_tv(timeout_ms, &tv);
	evtimer_add(p->kill_timer, &tv);
}

static void exec_run_once(struct runtime_ctx *rt, const struct svc_conf *svc, const char *image,
	const char *command, char *const *env, unsigned long timeout_ms, rt_once_fn done, void *arg)
{
	struct rt_instance *inst = rt_instance_new(svc->name, "once");
	struct exec_priv *p;
	char err[256] = "out of memory";
	struct timeval tv;

	if (inst == NULL) {
		done(arg, -1, err, NULL);
		return;
	}
	snprintf(inst->image, sizeof(inst->image), "%s", image);
	if (launch(rt->base, inst, command, env, err, sizeof(err)) < 0) {
		done(arg, -1, err, inst->logs);
		rt_instance_free(inst);
		return;
	}
	p = inst->priv;
	p->quiet = !svc->log_relay;
	p->once_done = done;
	p->once_arg = arg;
	p->once_timeout_ms = timeout_ms;
	if (timeout_ms > 0) {
		ms_to_tv(timeout_ms, &tv);
		evtimer_add(p->kill_timer, &tv);
	}
}

struct logs_job {
	struct logring *ring;
	rt_logs_fn done;
	void *arg;
};

static void logs_deliver(evutil_socket_t fd, short what, void *arg)
{
	struct logs_job *j = arg;

	(void)fd;
	(void)what;
	j->done(j->arg, 1, NULL, j->ring);
	logring_free(j->ring);
	free(j);
}

/* A copy of the last `tail` lines, delivered from the loop (the caller's
 * callback never runs inside its own call). */
static void exec_logs(struct runtime_ctx *rt, struct rt_instance *inst, int tail,
	rt_logs_fn done, void *arg)
{
	struct logs_job *j = calloc(1, sizeof(*j));
	size_t n = logring_count(inst->logs), from;

	if (j == NULL || (j->ring = logring_new(tail > 0 ? (size_t)tail : 1)) == NULL) {
		free(j);
		done(arg, 0, "out of memory", NULL);
		return;
	}
	from = tail > 0 && (size_t)tail < n ? n - (size_t)tail : 0;
	for (size_t k = from; k < n; k++) {
		const char *l = logring_line(inst->logs, k);

		logring_push(j->ring, l, strlen(l));
	}
	j->done = done;
	j->arg = arg;
	if (event_base_once(rt->base, -1, EV_TIMEOUT, logs_deliver, j, NULL) < 0) {
		logring_free(j->ring);
		free(j);
		done(arg, 0, "out of memory", NULL);
	}
}

/* Frees priv. A child still running (pmd shutting down) is killed with its
 * group: exec instances do not outlive pmd. */
static void exec_release(struct rt_instance *inst)
{
	struct exec_priv *p = inst->priv;

	if (p == NULL)
		return;
	if (p->running) {
		kill(-inst->pid, SIGKILL);
		registry_remove(p);
	}
	close_output(p);
	if (p->kill_timer != NULL)
		event_free(p->kill_timer);
	free(p);
	inst->priv = NULL;
}

const struct runtime_ops runtime_exec_ops = {
	.name = "exec",
	.start = exec_start,
	.stop = exec_stop,
	.run_once = exec_run_once,
	.logs = exec_logs,
	.release = exec_release,
};
