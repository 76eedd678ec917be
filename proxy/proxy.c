/* proxy — worker threads, listeners, lifecycle, stats and the access log
 * batch. The per-connection data path is in proxy/conn.c.
 *
 * Each worker has its own event_base and its own SO_REUSEPORT socket on
 * every listen address (the kernel spreads connections over them); nothing
 * but the snapshot, backend counters and the connection count is shared.
 * Other threads talk to a worker only through event_active() on one of its
 * events (wake, stop, resume): libevent is set up with pthreads by main. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>

#include "listenfds.h"
#include "log.h"
#include "proxy_int.h"

#define LISTEN_BACKLOG 1024
#define GIVEN_MAX 64                 /* given sockets used per address */
#define LOG_BATCH_LINES 64
#define LOG_FLUSH_MS 100

/* The snapshot listener cannot be unregistered: it reaches the proxy
 * through this pointer, cleared by proxy_free. */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static struct proxy *g_proxy;
static bool g_listener_added;

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *s = NULL;
	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		s = NULL;
	va_end(ap);
	return s;
}

/* Worker helpers (used by conn.c) ----------------------------------------- */

const struct proxy_settings *worker_settings(struct worker *w)
{
	return w->snap ? &w->snap->ps : &w->p->defaults;
}

/* The counter slot of route name `name`, added when new; 0 (PROXY_ROUTE_NONE)
 * when unnamed or when every slot is taken. */
static int rslot_find(struct worker *w, const char *name)
{
	size_t n = atomic_load_explicit(&w->n_rs, memory_order_relaxed);
	if (!name || !name[0] || !w->rs)
		return 0;
	for (size_t i = 1; i < n; i++)
		if (strcmp(w->rs[i].name, name) == 0)
			return (int)i;
	if (n >= RSLOTS)
		return 0;
	snprintf(w->rs[n].name, sizeof(w->rs[n].name), "%s", name);
	atomic_store_explicit(&w->n_rs, n + 1, memory_order_release);
	return (int)n;
}

/* Map the routes of the worker's snapshot to counter slots (on a snapshot
 * change only; requests then index route_slot directly). */
static void rslot_map(struct worker *w)
{
	const struct snapshot *s = w->snap;
	if (s->n_routes > w->cap_route_slot) {
		int *np = realloc(w->route_slot, s->n_routes * sizeof(*np));
		if (!np) {
			free(w->route_slot);
			w->route_slot = NULL;
			w->cap_route_slot = 0;
			return;
		}
		w->route_slot = np;
		w->cap_route_slot = s->n_routes;
	}
	for (size_t i = 0; i < s->n_routes; i++)
		w->route_slot[i] = rslot_find(w, s->routes[i].name);
}

void worker_refresh_snapshot(struct worker *w)
{
	if (snapshot_generation() == w->gen && w->snap)
		return;
	struct snapshot *s = snapshot_acquire();
	if (!s)
		return;
	snapshot_release(w->snap);
	w->snap = s;
	w->gen = s->generation;
	rslot_map(w);
}

int worker_route_slot(struct worker *w, size_t route)
{
	return w->snap && route < w->snap->n_routes && route < w->cap_route_slot
		? w->route_slot[route] : 0;
}

const double proxy_duration_bounds[PROXY_DURATION_BUCKETS - 1] = {
	0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10 };
static const uint64_t bounds_us[PROXY_DURATION_BUCKETS - 1] = {
	5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000 };

void worker_count_request(struct worker *w, int slot, int status, uint64_t dur_us)
{
	if (!w->rs)
		return;
	struct rstat *r = &w->rs[slot];
	int b = 0;
	while (b < PROXY_DURATION_BUCKETS - 1 && dur_us > bounds_us[b])
		b++;
	if (status >= 100 && status < 600)
		RSTAT_ADD(r, codes[status / 100], 1);
	RSTAT_ADD(r, le[b], 1);
	RSTAT_ADD(r, sum_us, dur_us);
}

/* CLOCK_MONOTONIC through the vDSO: no base lock (libevent's cached time
 * takes it), fine enough for the duration histogram. */
uint64_t worker_now_us(struct worker *w)
{
	(void)w;
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

uint64_t worker_now_ms(struct worker *w)
{
	return worker_now_us(w) / 1000;
}

const struct timeval *worker_tv(struct worker *w, uint64_t ms)
{
	for (int i = 0; i < w->n_tcache; i++)
		if (w->tcache[i].ms == ms)
			return w->tcache[i].tv;
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000 * 1000) };
	const struct timeval *ct = NULL;
	if (w->n_tcache < (int)(sizeof(w->tcache) / sizeof(w->tcache[0])) &&
	    (ct = event_base_init_common_timeout(w->base, &tv))) {
		w->tcache[w->n_tcache].ms = ms;
		w->tcache[w->n_tcache].tv = ct;
		w->n_tcache++;
		return ct;
	}
	/* cache full (settings changed many times): a plain timeout; the
	 * caller's event_add copies it before the next call */
	static __thread struct timeval plain;
	plain = tv;
	return &plain;
}

uint64_t worker_random(struct worker *w)
{
	uint64_t x = w->rng;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	w->rng = x;
	return x;
}

const char *worker_timestamp(struct worker *w)
{
	struct timeval tv;
	event_base_gettimeofday_cached(w->base, &tv);
	if (tv.tv_sec != w->ts_sec) {
		struct tm tm;
		gmtime_r(&tv.tv_sec, &tm);
		strftime(w->ts_text, sizeof(w->ts_text), "%Y-%m-%dT%H:%M:%S", &tm);
		w->ts_sec = tv.tv_sec;
	}
	static __thread char buf[32];
	snprintf(buf, sizeof(buf), "%s.%03dZ", w->ts_text, (int)(tv.tv_usec / 1000));
	return buf;
}

/* Access log batch ---------------------------------------------------------- */

static void accesslog_flush(struct worker *w)
{
	if (w->loglen) /* log_raw adds the final newline */
		log_raw(w->logbuf, w->loglen - 1);
	w->loglen = 0;
	w->loglines = 0;
}

void accesslog_add(struct worker *w, const char *line, size_t len)
{
	if (!w->logbuf)
		return;
	if (w->loglen + len + 1 > LOGBUF_SIZE)
		accesslog_flush(w);
	if (len + 1 > LOGBUF_SIZE)
		return;
	memcpy(w->logbuf + w->loglen, line, len);
	w->logbuf[w->loglen + len] = '\n';
	w->loglen += len + 1;
	if (++w->loglines >= LOG_BATCH_LINES) {
		accesslog_flush(w);
		return;
	}
	if (!w->log_armed) {
		struct timeval tv = { 0, LOG_FLUSH_MS * 1000 };
		evtimer_add(w->ev_log, &tv);
		w->log_armed = true;
	}
}

static void on_log_timer(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct worker *w = arg;
	w->log_armed = false;
	accesslog_flush(w);
}

/* Listeners and connection cap ---------------------------------------------- */

static void listeners_enable(struct worker *w, bool on)
{
	for (size_t i = 0; i < w->n_ls; i++)
		if (w->ls[i].lev) {
			if (on)
				evconnlistener_enable(w->ls[i].lev);
			else
				evconnlistener_disable(w->ls[i].lev);
		}
}

static int max_conns(struct worker *w)
{
	int m = worker_settings(w)->max_connections;
	return m > 0 ? m : 10000;
}

/* Accepting pauses in every worker once max_connections is reached (the
 * listeners of SO_REUSEPORT workers share the load, so one paused worker
 * alone would leave the others accepting); connections another worker
 * accepted before it saw the pause are served. */
static void cap_check_all(struct proxy *p)
{
	for (int i = 0; i < p->nw; i++)
		if (p->w[i].ev_cap)
			event_active(p->w[i].ev_cap, EV_TIMEOUT, 0);
}

static void worker_pause(struct worker *w, int n)
{
	if (w->paused)
		return;
	w->paused = true;
	atomic_fetch_add(&w->p->n_paused, 1);
	listeners_enable(w, false);
	log_warn("max_connections reached, accepting paused worker=%d connections=%d", w->idx, n);
}

static void on_accept(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa,
	int salen, void *arg)
{
	(void)lev;
	struct listener_slot *ls = arg;
	struct worker *w = ls->w;
	struct proxy *p = w->p;
	int n = atomic_fetch_add(&p->nconns, 1) + 1;
	if (n >= max_conns(w) && !w->paused) {
		worker_pause(w, n);
		cap_check_all(p);
	}
	conn_accept(w, fd, sa, salen, ls->tls);
}

void worker_conn_closed(struct worker *w)
{
	struct proxy *p = w->p;
	int n = atomic_fetch_sub(&p->nconns, 1) - 1;
	if (!p->started || atomic_load(&p->n_paused) == 0 || n >= max_conns(w))
		return;
	cap_check_all(p);
}

/* The connection count crossed the cap: pause or resume accepting. */
static void on_cap(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct worker *w = arg;
	int n = atomic_load(&w->p->nconns);
	if (n >= max_conns(w)) {
		if (!w->stopping)
			worker_pause(w, n);
		return;
	}
	if (!w->paused)
		return;
	w->paused = false;
	atomic_fetch_sub(&w->p->n_paused, 1);
	if (!w->stopping) {
		listeners_enable(w, true);
		log_info("accepting again worker=%d", w->idx);
	}
}

static void on_accept_error(struct evconnlistener *lev, void *arg)
{
	struct listener_slot *ls = arg;
	int e = EVUTIL_SOCKET_ERROR();
	log_warn("accept failed address=%s error=%s", ls->text, log_q(strerror(e)));
	/* out of descriptors: pause this listener, the tick retries */
	if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM)
		evconnlistener_disable(lev);
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	conn_on_snapshot(arg);
}

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct worker *w = arg;
	if (!w->stopping) {
		w->stopping = true;
		for (size_t i = 0; i < w->n_ls; i++)
			if (w->ls[i].lev) {
				evconnlistener_free(w->ls[i].lev);
				w->ls[i].lev = NULL;
				w->ls[i].fd = -1;
			}
		conn_close_idle(w);
	}
	if (atomic_load(&w->p->stop_step) >= 2)
		conn_close_tunnels(w);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct worker *w = arg;
	if (!w->paused && !w->stopping)
		listeners_enable(w, true);   /* after an EMFILE pause */
	conn_tick(w);
}

static void snapshot_published(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&g_lock);
	struct proxy *p = g_proxy;
	if (p && p->started)
		for (int i = 0; i < p->nw; i++)
			event_active(p->w[i].ev_wake, EV_TIMEOUT, 0);
	pthread_mutex_unlock(&g_lock);
}

/* Binding ------------------------------------------------------------------- */

static int bind_one(const struct listen_addr *a, bool reuseport, char **errp)
{
	int one = 1;
	int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto fail;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
		goto fail;
	if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
		goto fail;
	if (a->ss.ss_family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0)
		goto fail;
	if (bind(fd, (const struct sockaddr *)&a->ss, a->sslen) < 0)
		goto fail;
	if (reuseport && listen(fd, LISTEN_BACKLOG) < 0)
		goto fail;
	return fd;
fail:
	*errp = xasprintf("cannot listen on %s: %s", a->text, strerror(errno));
	if (fd >= 0)
		close(fd);
	return -1;
}

/* A probe bind without SO_REUSEPORT first: another process listening with
 * SO_REUSEPORT (a second pmd) would otherwise share the port silently. */
static int probe_addr(const struct listen_addr *a, char **errp)
{
	int fd = bind_one(a, false, errp);
	if (fd < 0)
		return -1;
	close(fd);
	return 0;
}

static int addr_port(const struct listen_addr *a)
{
	if (a->ss.ss_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
	return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
}

/* Knobs used before the first snapshot arrives: no TLS context yet, so no
 * redirect and no HSTS. */
static void settings_from_config(const struct pmd_config *cfg, struct proxy_settings *ps)
{
	config_proxy_settings(cfg, ps);
	ps->redirect_https = false;
	ps->hsts = NULL;
}

static const struct listen_addr *cfg_addr(const struct pmd_config *cfg, size_t i)
{
	return i < cfg->n_http_listen ? &cfg->http_listen[i] : &cfg->https_listen[i - cfg->n_http_listen];
}

/* Sockets given for address i (socket activation, hand-over): with at
 * least one per worker, worker wi takes every k-th one (k = workers); with
 * fewer, workers share them (a dup each). None: each binds its own. */
static size_t given_count(size_t n_given, int nw, int wi)
{
	if (n_given == 0 || (int)n_given <= nw)
		return 1;
	return n_given / (size_t)nw + ((size_t)wi < n_given % (size_t)nw);
}

struct proxy *proxy_new(const struct pmd_config *cfg, char **errp)
{
	struct proxy *p = calloc(1, sizeof(*p));
	size_t n_https = cfg->tls_mode == TLS_OFF ? 0 : cfg->n_https_listen;
	size_t n_addr = cfg->n_http_listen + n_https;
	int *given = NULL;           /* GIVEN_MAX per address */
	size_t *n_given = NULL;
	if (!p || !(given = calloc(n_addr ? n_addr * GIVEN_MAX : 1, sizeof(*given))) ||
	    !(n_given = calloc(n_addr ? n_addr : 1, sizeof(*n_given))))
		goto nomem;
	p->nw = cfg->workers > 0 ? cfg->workers : 1;
	settings_from_config(cfg, &p->defaults);
	p->https_port = 443;
	if (n_https) {
		p->have_https = true;
		p->https_port = addr_port(&cfg->https_listen[0]);
	}
	if (!(p->addr_text = calloc(n_addr ? n_addr : 1, sizeof(char *))) ||
	    !(p->w = calloc((size_t)p->nw, sizeof(*p->w))))
		goto nomem;
	for (size_t i = 0; i < n_addr; i++) {
		const struct listen_addr *a = cfg_addr(cfg, i);
		if (!(p->addr_text[i] = strdup(a->text)))
			goto nomem;
		p->n_addr_text++;
		n_given[i] = listenfds_take_inet((const struct sockaddr *)&a->ss, given + i * GIVEN_MAX, GIVEN_MAX);
		if (n_given[i])
			log_info("listening on given sockets address=%s sockets=%zu", a->text, n_given[i]);
		else if (probe_addr(a, errp) < 0)
			goto fail;
	}
	for (int wi = 0; wi < p->nw; wi++) {
		struct worker *w = &p->w[wi];
		size_t n_ls = 0;
		w->p = p;
		w->idx = wi;
		for (size_t i = 0; i < n_addr; i++)
			n_ls += given_count(n_given[i], p->nw, wi);
		if (!(w->ls = calloc(n_ls ? n_ls : 1, sizeof(*w->ls))))
			goto nomem;
		for (size_t i = 0; i < n_addr; i++) {
			const int *gf = given + i * GIVEN_MAX;
			for (size_t k = 0; k < given_count(n_given[i], p->nw, wi); k++) {
				struct listener_slot *ls = &w->ls[w->n_ls++];
				ls->w = w;
				ls->tls = i >= cfg->n_http_listen;
				ls->text = p->addr_text[i];
				if (n_given[i] == 0)
					ls->fd = bind_one(cfg_addr(cfg, i), true, errp);
				else if ((int)n_given[i] > p->nw || (size_t)wi < n_given[i])
					ls->fd = gf[(size_t)wi + k * (size_t)p->nw];
				else if ((ls->fd = fcntl(gf[(size_t)wi % n_given[i]], F_DUPFD_CLOEXEC, 3)) < 0)
					*errp = xasprintf("cannot share the socket of %s: %s", ls->text, strerror(errno));
				if (ls->fd < 0)
					goto fail;
			}
		}
	}
	free(given);
	free(n_given);
	return p;
nomem:
	*errp = xasprintf("proxy: out of memory");
fail:
	/* given sockets no worker holds yet are closed too: pmd exits */
	for (size_t i = 0; given && n_given && i < n_addr; i++)
		for (size_t k = 0; k < n_given[i]; k++) {
			bool held = false;
			for (int wi = 0; p && p->w && wi < p->nw; wi++)
				for (size_t j = 0; p->w[wi].ls && j < p->w[wi].n_ls; j++)
					held = held || p->w[wi].ls[j].fd == given[i * GIVEN_MAX + k];
			if (!held)
				close(given[i * GIVEN_MAX + k]);
		}
	free(given);
	free(n_given);
	proxy_free(p);
	return NULL;
}

size_t proxy_listen_fds(struct proxy *p, int *fds, const char **names, size_t cap)
{
	size_t n = 0;
	for (int wi = 0; p && wi < p->nw; wi++)
		for (size_t i = 0; i < p->w[wi].n_ls && n < cap; i++) {
			const struct listener_slot *ls = &p->w[wi].ls[i];
			if (ls->fd < 0)
				continue;
			fds[n] = ls->fd;
			names[n++] = ls->tls ? "https" : "http";
		}
	return n;
}

/* Threads ------------------------------------------------------------------- */

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	event_base_loop(w->base, EVLOOP_NO_EXIT_ON_EMPTY);
	return NULL;
}

static int worker_setup(struct worker *w, char **errp)
{
	uint64_t seed = 0;
	if (getrandom(&seed, sizeof(seed), 0) != (ssize_t)sizeof(seed))
		seed = (uint64_t)time(NULL) ^ ((uint64_t)w->idx << 32);
	w->rng = seed ? seed : 0x9e3779b97f4a7c15ull;
	if (!(w->base = event_base_new()) ||
	    !(w->ev_wake = event_new(w->base, -1, 0, on_wake, w)) ||
	    !(w->ev_stop = event_new(w->base, -1, 0, on_stop, w)) ||
	    !(w->ev_cap = event_new(w->base, -1, 0, on_cap, w)) ||
	    !(w->ev_tick = event_new(w->base, -1, EV_PERSIST, on_tick, w)) ||
	    !(w->ev_log = evtimer_new(w->base, on_log_timer, w)) ||
	    !(w->logbuf = malloc(LOGBUF_SIZE)) ||
	    !(w->rs = calloc(RSLOTS, sizeof(*w->rs))) ||
	    !(w->sc = static_cache_new())) {
		*errp = xasprintf("proxy worker %d: cannot create its event loop", w->idx);
		return -1;
	}
	snprintf(w->rs[0].name, sizeof(w->rs[0].name), "%s", PROXY_ROUTE_NONE);
	atomic_store_explicit(&w->n_rs, 1, memory_order_release);
	struct timeval tick = { 1, 0 };
	evtimer_add(w->ev_tick, &tick);
	for (size_t i = 0; i < w->n_ls; i++) {
		struct listener_slot *ls = &w->ls[i];
		ls->lev = evconnlistener_new(w->base, on_accept, ls,
			LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0, ls->fd);
		if (!ls->lev) {
			*errp = xasprintf("proxy worker %d: cannot listen on %s", w->idx, ls->text);
			return -1;
		}
		evconnlistener_set_error_cb(ls->lev, on_accept_error);
	}
	return 0;
}

int proxy_start(struct proxy *p, char **errp)
{
	for (int i = 0; i < p->nw; i++)
		if (worker_setup(&p->w[i], errp) < 0)
			return -1;
	pthread_mutex_lock(&g_lock);
	g_proxy = p;
	p->started = true;
	bool add = !g_listener_added;
	g_listener_added = true;
	pthread_mutex_unlock(&g_lock);
	if (add && snapshot_add_listener(snapshot_published, NULL) < 0) {
		*errp = xasprintf("proxy: cannot register for snapshot updates");
		return -1;
	}
	for (int i = 0; i < p->nw; i++) {
		struct worker *w = &p->w[i];
		int e = pthread_create(&w->thr, NULL, worker_main, w);
		if (e) {
			*errp = xasprintf("proxy: cannot start worker thread %d: %s", i, strerror(e));
			return -1;
		}
		w->thr_started = true;
	}
	log_info("proxy started workers=%d listeners=%zu", p->nw, p->n_addr_text);
	return 0;
}

static void stop_step(struct proxy *p, int step)
{
	if (!p || !p->started)
		return;
	atomic_store(&p->stop_step, step);
	for (int i = 0; i < p->nw; i++)
		event_active(p->w[i].ev_stop, EV_TIMEOUT, 0);
}

void proxy_stop_accepting(struct proxy *p)
{
	stop_step(p, 1);
}

void proxy_close_tunnels(struct proxy *p)
{
	stop_step(p, 2);
}

long proxy_connections(struct proxy *p)
{
	return p ? atomic_load(&p->nconns) : 0;
}

long proxy_busy(struct proxy *p)
{
	long n = proxy_connections(p);
	for (int i = 0; p && i < p->nw; i++)
		n -= atomic_load_explicit(&p->w[i].st.tunnels, memory_order_relaxed);
	return n > 0 ? n : 0;
}

long proxy_inflight(struct proxy *p)
{
	long n = 0;
	if (!p)
		return 0;
	for (int i = 0; i < p->nw; i++)
		n += atomic_load_explicit(&p->w[i].st.inflight, memory_order_relaxed);
	return n;
}

void proxy_get_stats(struct proxy *p, struct proxy_stats *out)
{
	memset(out, 0, sizeof(*out));
	if (!p)
		return;
#define SUM(f) out->f += atomic_load_explicit(&w->st.f, memory_order_relaxed)
	for (int i = 0; i < p->nw; i++) {
		struct worker *w = &p->w[i];
		SUM(connections);
		SUM(connections_total);
		SUM(requests_total);
		for (int k = 0; k < 6; k++)
			SUM(responses[k]);
		SUM(bytes_in);
		SUM(bytes_out);
		SUM(upstream_errors);
		SUM(held);
		SUM(tls_handshakes);
		SUM(drain_timeouts);
		SUM(h2_connections);
		SUM(h2_connections_total);
		SUM(h2_streams_total);
	}
#undef SUM
}

struct proxy_route_stats *proxy_get_route_stats(struct proxy *p, size_t *np)
{
	struct proxy_route_stats *out = NULL;
	size_t n = 0;
	*np = 0;
	if (!p || !(out = calloc((size_t)p->nw * RSLOTS, sizeof(*out))))
		return NULL;
#define LD(x) atomic_load_explicit(&(x), memory_order_relaxed)
	for (int i = 0; i < p->nw; i++) {
		struct worker *w = &p->w[i];
		size_t nrs = w->rs ? atomic_load_explicit(&w->n_rs, memory_order_acquire) : 0;
		for (size_t k = 0; k < nrs; k++) {
			const struct rstat *r = &w->rs[k];
			size_t j = 0;
			while (j < n && strcmp(out[j].name, r->name) != 0)
				j++;
			if (j == n)
				snprintf(out[n++].name, sizeof(out[j].name), "%s", r->name);
			for (int c = 0; c < 6; c++)
				out[j].requests[c] += LD(r->codes[c]);
			for (int b = 0; b < PROXY_DURATION_BUCKETS; b++) {
				uint64_t v = LD(r->le[b]);
				out[j].duration[b] += v;
				out[j].duration_count += v;
			}
			out[j].duration_sum += (double)LD(r->sum_us) / 1e6;
		}
	}
#undef LD
	*np = n;
	return out;
}

static void worker_free(struct worker *w)
{
	if (w->base)
		conn_free_all(w);
	if (w->logbuf)
		accesslog_flush(w);
	for (size_t i = 0; i < w->n_ls; i++) {
		if (w->ls[i].lev)
			evconnlistener_free(w->ls[i].lev);
		else if (w->ls[i].fd >= 0)
			close(w->ls[i].fd);
	}
	free(w->ls);
	struct event *evs[] = { w->ev_wake, w->ev_stop, w->ev_cap, w->ev_tick, w->ev_log };
	for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
		if (evs[i])
			event_free(evs[i]);
	if (w->base)
		event_base_free(w->base);
	free(w->logbuf);
	free(w->rs);
	free(w->route_slot);
	static_cache_free(w->sc);
	snapshot_release(w->snap);
}

void proxy_free(struct proxy *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&g_lock);
	if (g_proxy == p)
		g_proxy = NULL;
	pthread_mutex_unlock(&g_lock);
	p->started = false;
	for (int i = 0; p->w && i < p->nw; i++)
		if (p->w[i].thr_started)
			event_base_loopbreak(p->w[i].base);
	for (int i = 0; p->w && i < p->nw; i++)
		if (p->w[i].thr_started)
			pthread_join(p->w[i].thr, NULL);
	for (int i = 0; p->w && i < p->nw; i++)
		worker_free(&p->w[i]);
	free(p->w);
	for (size_t i = 0; i < p->n_addr_text; i++)
		free(p->addr_text[i]);
	free(p->addr_text);
	free(p);
}
