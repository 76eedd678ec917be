/* pmd — main(): command line, start-up order, signals, graceful stop.
 * The only place that exits. */
#include <curl/curl.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <ini.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "control.h"
#include "daemon.h"
#include "fsutil.h"
#include "httpc.h"
#include "listenfds.h"
#include "log.h"
#include "proxy.h"
#include "sdnotify.h"
#include "snapshot.h"
#include "supervisor.h"
#include "tls.h"

#define DEFAULT_CONFIG "/etc/pmd/pmd.ini"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: pmd run [-c FILE]     run in the foreground (default " DEFAULT_CONFIG ")\n"
		"       pmd check [-c FILE]   validate the configuration and exit\n"
		"       pmd version           version and library versions\n");
}

static int cmd_version(void)
{
	curl_version_info_data *cv = curl_version_info(CURLVERSION_NOW);
	printf("pmd %s\n", PMD_VERSION);
	printf("libevent %s\n", event_get_version());
	printf("%s\n", OpenSSL_version(OPENSSL_VERSION));
	printf("libcurl %s\n", cv->version);
	printf("cJSON %s\n", cJSON_Version());
	return 0;
}

/* Load the config; on failure print every problem and return NULL. */
static struct pmd_config *load(const char *path)
{
	struct pmd_config *cfg = NULL;
	struct strlist errs = { 0 };
	if (config_load(path, &cfg, &errs) < 0 || config_check_files(cfg, &errs) < 0) {
		config_free(cfg);
		for (size_t i = 0; i < errs.n; i++)
			fprintf(stderr, "%s\n", errs.v[i]);
		if (errs.n == 0)
			fprintf(stderr, "%s: invalid configuration\n", path);
		cfg = NULL;
	}
	strlist_free(&errs);
	return cfg;
}

static int cmd_check(const char *path)
{
	struct pmd_config *cfg = load(path);
	if (!cfg)
		return 1;
	config_free(cfg);
	printf("configuration ok\n");
	return 0;
}

/* Run ---------------------------------------------------------------------- */

enum stop_phase { STOP_NONE = 0, STOP_DRAIN, STOP_TUNNELS, STOP_CHILDREN };

#define TUNNEL_CLOSE_MS 1000   /* for WebSocket close frames to go out */
#define HANDOVER_MAX 512       /* listening sockets passed to a new pmd */

/* SIGUSR2: a new pmd started with our listeners (listenfds_spawn); it
 * writes one byte to the pipe once it serves, or the pipe ends without. */
struct handover {
	pid_t pid;                 /* > 0 while one runs or has taken over */
	int rfd;
	struct event *ev;          /* readable rfd */
	struct event *reap;        /* it failed: wait for its exit status */
};

struct runctx {
	struct pmd d;
	struct event *sigterm, *sigint, *sighup, *sigusr2;
	struct event *stop_timer, *watchdog;
	enum stop_phase phase;
	struct timespec deadline;
	const char *config_path;
	char exe[PATH_MAX];        /* this binary, for the hand-over (an upgrade replaces it) */
	struct handover ho;
	bool handed_over;          /* the new pmd serves; we only finish */
};

static long ms_until(const struct timespec *t)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (t->tv_sec - now.tv_sec) * 1000 + (t->tv_nsec - now.tv_nsec) / 1000000;
}

static void set_deadline(struct timespec *t, uint64_t ms)
{
	clock_gettime(CLOCK_MONOTONIC, t);
	t->tv_sec += (time_t)(ms / 1000);
	t->tv_nsec += (long)(ms % 1000) * 1000000;
	if (t->tv_nsec >= 1000000000) {
		t->tv_sec++;
		t->tv_nsec -= 1000000000;
	}
}

/* Graceful stop, a state machine driven by one 50 ms timer: STOP_DRAIN
 * waits until every client connection but the tunnels is done (requests
 * answered, idle keep-alive connections closed; see proxy_stop_accepting)
 * or the drain deadline; STOP_TUNNELS closes WebSockets with 1001 and
 * waits briefly for them; then the supervisor stops its processes and
 * STOP_CHILDREN waits for them (or their stop_timeout); then the loop
 * ends. Containers are left running. */
/* Whether the current phase waits on (`waiting`, deadline not passed):
 * then the tick is re-armed. */
static bool stop_wait(struct runctx *rc, bool waiting)
{
	struct timeval tick = { 0, 50000 };
	if (!waiting || ms_until(&rc->deadline) <= 0)
		return false;
	evtimer_add(rc->stop_timer, &tick);
	return true;
}

static void on_stop_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct runctx *rc = arg;
	if (rc->phase == STOP_DRAIN) {
		long busy = proxy_busy(rc->d.proxy);
		if (stop_wait(rc, busy > 0))
			return;
		if (busy > 0)
			log_warn("drain timeout reached, closing in-flight requests connections=%ld", busy);
		rc->phase = STOP_TUNNELS;
		proxy_close_tunnels(rc->d.proxy);
		set_deadline(&rc->deadline, TUNNEL_CLOSE_MS);
	}
	if (rc->phase == STOP_TUNNELS) {
		if (stop_wait(rc, proxy_connections(rc->d.proxy) > 0))
			return;
		rc->phase = STOP_CHILDREN;
		supervisor_shutdown(rc->d.sup);
		set_deadline(&rc->deadline, config_max_stop_ms(rc->d.cfg) + 1000);
	}
	int pending = supervisor_pending(rc->d.sup);
	if (stop_wait(rc, pending > 0))
		return;
	if (pending > 0)
		log_warn("processes did not stop in time pending=%d", pending);
	event_base_loopexit(rc->d.base, NULL);
}

static void begin_stop(struct runctx *rc, int sig)
{
	rc->d.stopping = 1;
	if (!rc->handed_over)        /* else systemd's main process is the new pmd */
		sdnotify("STOPPING=1");
	uint64_t drain_ms = config_max_drain_ms(rc->d.cfg);
	log_info("stopping: no new connections, finishing in-flight requests signal=%d drain_timeout_ms=%llu",
		sig, (unsigned long long)drain_ms);
	proxy_stop_accepting(rc->d.proxy);
	rc->phase = STOP_DRAIN;
	set_deadline(&rc->deadline, drain_ms);
	on_stop_tick(-1, 0, rc);
}

static void on_stop_signal(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	struct runctx *rc = arg;
	if (rc->d.stopping) {
		log_warn("second stop signal, exiting now signal=%d", (int)sig);
		event_base_loopexit(rc->d.base, NULL);
		return;
	}
	begin_stop(rc, (int)sig);
}

/* Hand-over ------------------------------------------------------------------ */

static void on_handover_reap(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct runctx *rc = arg;
	int st;
	pid_t r = waitpid(rc->ho.pid, &st, WNOHANG);
	if (r == 0)
		return;
	if (r == rc->ho.pid)
		log_error("the new pmd did not start, this one keeps serving pid=%d status=%d",
			(int)r, WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
	event_free(rc->ho.reap);
	rc->ho.reap = NULL;
	rc->ho.pid = 0;
}

static void on_handover_pipe(evutil_socket_t fd, short what, void *arg)
{
	(void)what;
	struct runctx *rc = arg;
	char b;
	ssize_t r = read(fd, &b, 1);
	if (r < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	event_free(rc->ho.ev);
	rc->ho.ev = NULL;
	close(rc->ho.rfd);
	rc->ho.rfd = -1;
	if (r == 1) {
		log_info("the new pmd serves, handing over pid=%d", (int)rc->ho.pid);
		rc->handed_over = true;
		control_handed_over(rc->d.control);
		if (!rc->d.stopping)
			begin_stop(rc, SIGUSR2);
		return;
	}
	struct timeval every = { 0, 100000 };
	rc->ho.reap = event_new(rc->d.base, -1, EV_PERSIST, on_handover_reap, rc);
	if (!rc->ho.reap || evtimer_add(rc->ho.reap, &every) < 0)
		log_error("the new pmd did not start, this one keeps serving pid=%d", (int)rc->ho.pid);
}

/* SIGUSR2: start a new pmd (this binary, as it is on disk now) on our
 * listening sockets and the control socket; both serve until it is ready,
 * then this one stops gracefully (begin_stop). If it fails, nothing
 * changes here. */
static void on_usr2(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	struct runctx *rc = arg;
	int fds[HANDOVER_MAX + 1], pfd[2];
	const char *names[HANDOVER_MAX + 1];
	if (rc->d.stopping || rc->ho.pid > 0) {
		log_warn("SIGUSR2 ignored reason=%s", rc->d.stopping ? "stopping" : "hand-over in progress");
		return;
	}
	size_t n = proxy_listen_fds(rc->d.proxy, fds, names, HANDOVER_MAX);
	int cfd = control_listen_fd(rc->d.control);
	if (cfd >= 0) {
		fds[n] = cfd;
		names[n++] = "control";
	}
	if (pipe2(pfd, O_CLOEXEC) < 0) {
		log_syserr("hand-over: cannot create a pipe");
		return;
	}
	char *argv[] = { rc->exe, "run", "-c", (char *)rc->config_path, NULL };
	pid_t pid = listenfds_spawn(rc->exe, argv, fds, names, n, pfd[1]);
	int e = errno;
	close(pfd[1]);
	if (pid < 0) {
		close(pfd[0]);
		log_error("hand-over: cannot start a new pmd exe=%s error=%s", log_q(rc->exe), log_q(strerror(e)));
		return;
	}
	rc->ho.pid = pid;
	rc->ho.rfd = pfd[0];
	rc->ho.ev = event_new(rc->d.base, pfd[0], EV_READ | EV_PERSIST, on_handover_pipe, rc);
	if (!rc->ho.ev || event_add(rc->ho.ev, NULL) < 0)
		log_error("hand-over: cannot watch the new pmd pid=%d", (int)pid);
	log_info("hand-over: new pmd started on our sockets pid=%d exe=%s sockets=%zu",
		(int)pid, log_q(rc->exe), n);
}

/* PMD_READY_FD (set by the pmd handing over to us): -1 when absent. */
static int take_ready_fd(void)
{
	const char *v = getenv("PMD_READY_FD");
	char *end;
	long fd = v ? strtol(v, &end, 10) : -1;
	if (!v || *end || fd < 3 || fd > INT_MAX || fcntl((int)fd, F_SETFD, FD_CLOEXEC) < 0)
		fd = -1;
	unsetenv("PMD_READY_FD");
	return (int)fd;
}

/* Started by a hand-over: become systemd's main process, then tell the
 * old pmd that we serve. */
static void tell_ready(int ready_fd)
{
	char msg[64];
	if (ready_fd < 0) {
		sdnotify("READY=1");
		return;
	}
	snprintf(msg, sizeof(msg), "MAINPID=%d\nREADY=1", (int)getpid());
	sdnotify(msg);
	if (write(ready_fd, "R", 1) != 1)
		log_warn("hand-over: the old pmd is gone error=%s", log_q(strerror(errno)));
	close(ready_fd);
}

static void on_hup(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	struct runctx *rc = arg;
	char *err = NULL;
	sdnotify("RELOADING=1");
	if (pmd_reload(&rc->d, &err) < 0)
		log_error("SIGHUP reload failed error=%s", log_q(err ? err : "unknown"));
	free(err);
	sdnotify("READY=1");
}

static void on_watchdog(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	sdnotify("WATCHDOG=1");
}

static void on_supervisor_changed(void *arg)
{
	pmd_republish(arg);
}

static int cmd_run(const char *path)
{
	struct runctx rc = { .ho = { .rfd = -1 } };
	struct pmd *d = &rc.d;
	char *err = NULL;
	int status = 1;
	int ready_fd = take_ready_fd();

	signal(SIGPIPE, SIG_IGN);
	listenfds_init();
	rc.config_path = path;
	ssize_t el = readlink("/proc/self/exe", rc.exe, sizeof(rc.exe) - 1);
	rc.exe[el > 0 ? el : 0] = '\0';
	d->cfg = load(path);
	if (!d->cfg)
		return 1;
	log_setup((enum log_level)d->cfg->log_level, (enum log_format)d->cfg->log_format);
	d->started = time(NULL);
	if (evthread_use_pthreads() < 0 || !(d->base = event_base_new())) {
		log_error("cannot create the event loop");
		goto out;
	}
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || !(d->httpc = httpc_new(d->base))) {
		log_error("cannot initialise the HTTP client");
		goto out;
	}
	if (fs_mkdirs(d->cfg->state_dir, 0700, &err) < 0)
		goto fail;
	/* Bind before anything else so a busy port fails fast. */
	if (!(d->proxy = proxy_new(d->cfg, &err)))
		goto fail;
	if (d->cfg->tls_mode != TLS_OFF && !(d->tls = tlsmgr_new(d, &err)))
		goto fail;
	pmd_republish(d); /* routes and statics; services hold until healthy */
	/* The control socket next: a second pmd on the same socket stops here,
	 * before it serves anything. Requests reach it only from the loop,
	 * when every module exists. */
	if (!(d->control = control_new(d, &err)))
		goto fail;
	listenfds_close_unused();
	if (proxy_start(d->proxy, &err) < 0)
		goto fail;
	if (!(d->sup = supervisor_new(d->base, d->httpc, d->cfg, on_supervisor_changed, d, &err)))
		goto fail;
	if (supervisor_start(d->sup, &err) < 0)
		goto fail;
	pmd_republish(d);
	if (pmd_disk_start(d) < 0) {
		log_error("cannot start the disk space watch");
		goto out;
	}

	rc.sigterm = evsignal_new(d->base, SIGTERM, on_stop_signal, &rc);
	rc.sigint = evsignal_new(d->base, SIGINT, on_stop_signal, &rc);
	rc.sighup = evsignal_new(d->base, SIGHUP, on_hup, &rc);
	rc.sigusr2 = evsignal_new(d->base, SIGUSR2, on_usr2, &rc);
	rc.stop_timer = evtimer_new(d->base, on_stop_tick, &rc);
	if (!rc.sigterm || !rc.sigint || !rc.sighup || !rc.sigusr2 || !rc.stop_timer ||
	    evsignal_add(rc.sigterm, NULL) || evsignal_add(rc.sigint, NULL) || evsignal_add(rc.sighup, NULL) ||
	    evsignal_add(rc.sigusr2, NULL)) {
		log_error("cannot install signal handlers");
		goto out;
	}
	uint64_t wd = sdnotify_watchdog_usec();
	if (wd) {
		struct timeval tv = { (time_t)(wd / 2 / 1000000), (suseconds_t)(wd / 2 % 1000000) };
		rc.watchdog = event_new(d->base, -1, EV_PERSIST, on_watchdog, &rc);
		if (rc.watchdog)
			evtimer_add(rc.watchdog, &tv);
	}
	log_info("pmd started version=%s config=%s workers=%d services=%zu",
		PMD_VERSION, log_q(path), d->cfg->workers, d->cfg->n_services);
	tell_ready(ready_fd);
	ready_fd = -1;
	event_base_dispatch(d->base);
	log_info("pmd stopped");
	status = 0;
	goto out;
fail:
	log_error("pmd cannot start error=%s", log_q(err ? err : "unknown"));
out:
	free(err);
	if (d->sup)
		supervisor_shutdown(d->sup);
	pmd_disk_stop(d);
	control_free(d->control);
	proxy_free(d->proxy);
	supervisor_free(d->sup);
	tlsmgr_free(d->tls);
	snapshot_shutdown();
	httpc_free(d->httpc);
	if (rc.sigterm)
		event_free(rc.sigterm);
	if (rc.sigint)
		event_free(rc.sigint);
	if (rc.sighup)
		event_free(rc.sighup);
	if (rc.sigusr2)
		event_free(rc.sigusr2);
	if (rc.ho.ev)
		event_free(rc.ho.ev);
	if (rc.ho.reap)
		event_free(rc.ho.reap);
	if (rc.ho.rfd >= 0)
		close(rc.ho.rfd);
	if (ready_fd >= 0)
		close(ready_fd);
	if (rc.stop_timer)
		event_free(rc.stop_timer);
	if (rc.watchdog)
		event_free(rc.watchdog);
	if (d->base)
		event_base_free(d->base);
	config_free(d->cfg);
	curl_global_cleanup();
	return status;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	const char *cmd = argv[1];
	const char *path = DEFAULT_CONFIG;
	if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0)
		return cmd_version();
	if (strcmp(cmd, "keys") == 0) { /* undocumented: the key table, for tests */
		config_keys_dump(stdout);
		return 0;
	}
	if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
		usage(stdout);
		return 0;
	}
	for (int i = 2; i < argc; i++) {
		if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) && i + 1 < argc) {
			path = argv[++i];
		} else {
			fprintf(stderr, "pmd: unexpected argument \"%s\"\n", argv[i]);
			usage(stderr);
			return 2;
		}
	}
	if (strcmp(cmd, "check") == 0)
		return cmd_check(path);
	if (strcmp(cmd, "run") == 0)
		return cmd_run(path);
	fprintf(stderr, "pmd: unknown command \"%s\"\n", cmd);
	usage(stderr);
	return 2;
}
