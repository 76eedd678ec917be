/* daemon — the main thread's context. See include/daemon.h. */
#include "daemon.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <event2/event.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "fsutil.h"
#include "httpc.h"
#include "log.h"
#include "proxy.h"
#include "snapshot.h"
#include "supervisor.h"
#include "tls.h"

static char *xstrdup_or_null(const char *s)
{
	return (s && *s) ? strdup(s) : NULL;
}

/* Longest prefix first; on equal prefixes host-specific routes first. */
static int route_cmp(const void *a, const void *b)
{
	const struct snap_route *x = a, *y = b;
	if (x->prefix_len != y->prefix_len)
		return x->prefix_len > y->prefix_len ? -1 : 1;
	return (y->host != NULL) - (x->host != NULL);
}

/* Every [static] into the snapshot; a folder is opened here (O_PATH), the
 * workers resolve files beneath it. A folder that cannot be opened (gone
 * since the config was checked) is logged and left out: requests for it
 * then follow the routes. -1 only when out of memory. */
static int fill_statics(const struct pmd_config *cfg, struct snapshot *s)
{
	if (cfg->n_statics == 0)
		return 0;
	s->statics = calloc(cfg->n_statics, sizeof(*s->statics));
	if (!s->statics)
		return -1;
	for (size_t i = 0; i < cfg->n_statics; i++) {
		const struct static_conf *sc = &cfg->statics[i];
		struct snap_static *st = &s->statics[s->n_statics];
		int dirfd = -1;
		if (*sc->dir && (dirfd = open(sc->dir, O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0) {
			log_warn("static folder cannot be opened, not served static=%s dir=%s error=%s",
				sc->name, log_q(sc->dir), log_q(strerror(errno)));
			continue;
		}
		st->dirfd = dirfd;
		st->name = strdup(sc->name);
		st->path = strdup(sc->path);
		st->path_len = strlen(sc->path);
		st->file = xstrdup_or_null(sc->file);
		st->content_type = xstrdup_or_null(sc->content_type);
		st->fallback = sc->fallback == STATIC_FALLBACK_ROUTE;
		s->n_statics++;
		if (!st->name || !st->path || (*sc->file && !st->file) || (*sc->content_type && !st->content_type))
			return -1;
	}
	return 0;
}

static int fill_routes(const struct pmd_config *cfg, struct snapshot *s)
{
	if (cfg->n_routes == 0)
		return 0;
	s->routes = calloc(cfg->n_routes, sizeof(*s->routes));
	if (!s->routes)
		return -1;
	for (size_t i = 0; i < cfg->n_routes; i++) {
		const struct route_conf *rc = &cfg->routes[i];
		struct snap_route *r = &s->routes[i];
		r->name = xstrdup_or_null(rc->name);
		r->prefix = strdup(rc->prefix);
		r->prefix_len = strlen(rc->prefix);
		r->host = xstrdup_or_null(rc->host);
		r->service = rc->svc_index;
		r->upstream_idle_timeout_ms = rc->upstream_idle_timeout_ms;
		s->n_routes++;
		if (!r->prefix || (rc->host[0] && !r->host) || (rc->name && rc->name[0] && !r->name))
			return -1;
	}
	qsort(s->routes, s->n_routes, sizeof(*s->routes), route_cmp);
	return 0;
}

static void fill_settings(const struct pmd_config *cfg, struct proxy_settings *ps)
{
	config_proxy_settings(cfg, ps);
	ps->hsts = (cfg->tls_mode != TLS_OFF) ? xstrdup_or_null(cfg->hsts) : NULL;
}

/* Services with no supervisor yet (before start): names only, no instance,
 * so requests are held rather than refused. */
static int fill_services_empty(const struct pmd_config *cfg, struct snapshot *s)
{
	if (cfg->n_services == 0)
		return 0;
	s->services = calloc(cfg->n_services, sizeof(*s->services));
	if (!s->services)
		return -1;
	for (size_t i = 0; i < cfg->n_services; i++) {
		s->services[i].name = strdup(cfg->services[i].name);
		s->n_services++;
		if (!s->services[i].name)
			return -1;
	}
	return 0;
}

void pmd_republish(struct pmd *d)
{
	struct snapshot *s = snapshot_new();
	if (!s)
		goto fail;
	fill_settings(d->cfg, &s->ps);
	s->ps.lb_draining = d->draining;
	if (fill_routes(d->cfg, s) < 0 || fill_statics(d->cfg, s) < 0)
		goto fail;
	if (d->sup ? supervisor_fill_snapshot(d->sup, s) < 0 : fill_services_empty(d->cfg, s) < 0)
		goto fail;
	if (d->tls && tlsmgr_fill_snapshot(d->tls, s) < 0)
		goto fail;
	snapshot_publish(s);
	return;
fail:
	/* keep serving the previous snapshot; the next change retries */
	log_error("snapshot not published error=\"out of memory\"");
	snapshot_release(s);
}

void pmd_set_draining(struct pmd *d, bool draining)
{
	if (d->draining != draining)
		log_info("%s lb_health_path=%s", draining ? "draining: the load balancer health check answers 503"
			: "undrained: the load balancer health check answers 200",
			log_q(d->cfg->lb_health_path[0] ? d->cfg->lb_health_path : "(off)"));
	d->draining = draining;
	pmd_republish(d);
}

static int same_listeners(const struct listen_addr *a, size_t na,
	const struct listen_addr *b, size_t nb)
{
	if (na != nb)
		return 0;
	for (size_t i = 0; i < na; i++)
		if (strcmp(a[i].text, b[i].text) != 0)
			return 0;
	return 1;
}

static char *join_lines(const struct strlist *l)
{
	size_t len = 1;
	for (size_t i = 0; i < l->n; i++)
		len += strlen(l->v[i]) + 1;
	char *s = malloc(len), *p = s;
	if (!s)
		return NULL;
	for (size_t i = 0; i < l->n; i++)
		p += snprintf(p, len - (size_t)(p - s), "%s%s", i ? "\n" : "", l->v[i]);
	*p = '\0';
	return s;
}

int pmd_reload(struct pmd *d, char **errp)
{
	struct pmd_config *ncfg = NULL;
	struct strlist errs = { 0 };
	int rc = -1;
	if (config_load(d->cfg->path, &ncfg, &errs) < 0 || config_check_files(ncfg, &errs) < 0) {
		*errp = join_lines(&errs);
		log_error("reload refused, keeping the running configuration errors=%zu", errs.n);
		for (size_t i = 0; i < errs.n; i++)
			log_error("config error=%s", log_q(errs.v[i]));
		goto out;
	}
	if (!same_listeners(d->cfg->http_listen, d->cfg->n_http_listen,
			ncfg->http_listen, ncfg->n_http_listen) ||
	    !same_listeners(d->cfg->https_listen, d->cfg->n_https_listen,
			ncfg->https_listen, ncfg->n_https_listen) ||
	    d->cfg->workers != ncfg->workers || (d->cfg->tls_mode == TLS_OFF) != (ncfg->tls_mode == TLS_OFF))
		log_warn("listener, workers or TLS on/off changes take effect at the next restart of pmd");
	if (d->sup && supervisor_reload(d->sup, ncfg, errp) < 0)
		goto out;
	if (d->tls && tlsmgr_reload(d->tls, ncfg, errp) < 0)
		log_warn("tls reload failed, keeping the current certificates error=%s", log_q(*errp));
	free(*errp);
	*errp = NULL;
	log_setup((enum log_level)ncfg->log_level, (enum log_format)ncfg->log_format);
	struct pmd_config *old = d->cfg;
	d->cfg = ncfg;
	ncfg = NULL;
	pmd_republish(d);
	config_free(old);
	log_info("configuration reloaded file=%s", log_q(d->cfg->path));
	rc = 0;
out:
	config_free(ncfg);
	strlist_free(&errs);
	return rc;
}

/* ---- free disk space ------------------------------------------------------ */

#define DISK_CHECK_S 60
#define DISK_LOW_PERCENT 10
#define DOCKER_INFO_TIMEOUT_MS 5000

struct pmd_disk {
	struct pmd *d;
	struct event *timer;
	struct httpc_req *info;     /* GET /info in flight, or NULL */
	char *docker_root;          /* DockerRootDir once Docker told it */
	bool low_state, low_docker; /* under DISK_LOW_PERCENT at the last check */
};

struct disk_use {
	unsigned long long free, total; /* bytes available to pmd, size */
};

static int disk_use(const char *path, struct disk_use *u)
{
	struct statvfs sv;
	if (statvfs(path, &sv) < 0 || sv.f_blocks == 0)
		return -1;
	u->free = (unsigned long long)sv.f_bavail * sv.f_frsize;
	u->total = (unsigned long long)sv.f_blocks * sv.f_frsize;
	return 0;
}

static double free_percent(const struct disk_use *u)
{
	return 100.0 * (double)u->free / (double)u->total;
}

/* Logs a warning when `path` falls under the threshold, and once when it
 * is back above; *low remembers which side it was on. */
static void disk_check_one(const char *what, const char *path, bool *low)
{
	struct disk_use u;
	if (disk_use(path, &u) < 0)
		return;
	bool now_low = free_percent(&u) < DISK_LOW_PERCENT;
	if (now_low && !*low)
		log_warn("low disk space what=%s path=%s free_bytes=%llu total_bytes=%llu free_percent=%.1f",
			what, log_q(path), u.free, u.total, free_percent(&u));
	else if (!now_low && *low)
		log_info("disk space back above %d%% what=%s path=%s free_percent=%.1f",
			DISK_LOW_PERCENT, what, log_q(path), free_percent(&u));
	*low = now_low;
}

static void on_docker_info(void *arg, const struct httpc_response *res)
{
	struct pmd_disk *dk = arg;
	dk->info = NULL;
	cJSON *doc = (res->status == 200 && res->body) ? cJSON_Parse(res->body) : NULL;
	const cJSON *root = cJSON_GetObjectItemCaseSensitive(doc, "DockerRootDir");
	if (cJSON_IsString(root) && root->valuestring[0] == '/') {
		free(dk->docker_root);
		dk->docker_root = strdup(root->valuestring);
		if (dk->docker_root)
			disk_check_one("docker_root", dk->docker_root, &dk->low_docker);
	} else {
		log_debug("docker data root unknown, asking again later status=%ld error=%s",
			res->status, log_q(res->error ? res->error : "no DockerRootDir in /info"));
	}
	cJSON_Delete(doc);
}

static bool uses_docker(const struct pmd_config *cfg)
{
	for (size_t i = 0; i < cfg->n_services; i++)
		if (cfg->services[i].runtime == RUNTIME_DOCKER)
			return true;
	return false;
}

static void on_disk_timer(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct pmd_disk *dk = arg;
	const struct pmd_config *cfg = dk->d->cfg;
	disk_check_one("state_dir", cfg->state_dir, &dk->low_state);
	if (dk->docker_root) {
		disk_check_one("docker_root", dk->docker_root, &dk->low_docker);
	} else if (!dk->info && dk->d->httpc && uses_docker(cfg)) {
		struct httpc_opts o = {
			.url = "http://docker/info",
			.unix_socket = cfg->docker_socket,
			.timeout_ms = DOCKER_INFO_TIMEOUT_MS,
			.on_done = on_docker_info,
			.arg = dk,
		};
		char *err = NULL;
		if (!(dk->info = httpc_request(dk->d->httpc, &o, &err)))
			log_debug("docker /info not sent error=%s", log_q(err ? err : "unknown"));
		free(err);
	}
}

int pmd_disk_start(struct pmd *d)
{
	struct timeval every = { DISK_CHECK_S, 0 };
	struct pmd_disk *dk = calloc(1, sizeof(*dk));
	if (!dk)
		return -1;
	dk->d = d;
	if (!(dk->timer = event_new(d->base, -1, EV_PERSIST, on_disk_timer, dk)) || evtimer_add(dk->timer, &every) < 0) {
		if (dk->timer)
			event_free(dk->timer);
		free(dk);
		return -1;
	}
	d->disk = dk;
	on_disk_timer(-1, 0, dk);
	return 0;
}

void pmd_disk_stop(struct pmd *d)
{
	struct pmd_disk *dk = d->disk;
	if (!dk)
		return;
	if (dk->info)
		httpc_cancel(dk->info);
	event_free(dk->timer);
	free(dk->docker_root);
	free(dk);
	d->disk = NULL;
}

/* {path, free_bytes, total_bytes, free_percent}, or null when path is
 * unknown or cannot be looked at. */
static cJSON *disk_json(const char *path)
{
	struct disk_use u;
	if (!path || disk_use(path, &u) < 0)
		return cJSON_CreateNull();
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "path", path);
	cJSON_AddNumberToObject(o, "free_bytes", (double)u.free);
	cJSON_AddNumberToObject(o, "total_bytes", (double)u.total);
	cJSON_AddNumberToObject(o, "free_percent", (double)(long long)(free_percent(&u) * 10) / 10);
	cJSON_AddBoolToObject(o, "low", free_percent(&u) < DISK_LOW_PERCENT);
	return o;
}

static const char *tls_mode_name(enum tls_mode m)
{
	static const char *names[] = { "acme", "files", "self-signed", "off" };
	return names[m];
}

cJSON *pmd_status_json(struct pmd *d)
{
	cJSON *root = cJSON_CreateObject();
	cJSON_AddStringToObject(root, "version", PMD_VERSION);
	cJSON_AddNumberToObject(root, "uptime_s", (double)(time(NULL) - d->started));
	cJSON_AddNumberToObject(root, "pid", (double)getpid());
	cJSON_AddBoolToObject(root, "draining", d->draining);
	cJSON_AddStringToObject(root, "lb_health_path", d->cfg->lb_health_path);
	cJSON *svcs = d->sup ? supervisor_status_json(d->sup) : cJSON_CreateObject();
	cJSON_AddItemToObject(root, "services", svcs);
	if (d->sup)
		cJSON_AddItemToObject(root, "state_file", supervisor_state_file_json(d->sup));
	/* the image in pmd.ini (`image` is the one swapped in): pmctl --ssh
	 * allows swaps within its repository only */
	for (size_t i = 0; i < d->cfg->n_services; i++) {
		cJSON *so = cJSON_GetObjectItemCaseSensitive(svcs, d->cfg->services[i].name);
		if (cJSON_IsObject(so))
			cJSON_AddStringToObject(so, "configured_image", d->cfg->services[i].image);
	}
	cJSON *tls = d->tls ? tlsmgr_status_json(d->tls) : NULL;
	if (!tls) {
		tls = cJSON_CreateObject();
		cJSON_AddStringToObject(tls, "mode", tls_mode_name(d->cfg->tls_mode));
	}
	cJSON_AddItemToObject(root, "tls", tls);
	struct proxy_stats st = { 0 };
	if (d->proxy)
		proxy_get_stats(d->proxy, &st);
	cJSON *px = cJSON_AddObjectToObject(root, "proxy");
	cJSON_AddNumberToObject(px, "connections", (double)st.connections);
	cJSON_AddNumberToObject(px, "connections_total", (double)st.connections_total);
	cJSON_AddNumberToObject(px, "requests_total", (double)st.requests_total);
	cJSON *rs = cJSON_AddObjectToObject(px, "responses");
	for (int i = 1; i <= 5; i++) {
		char k[4] = { (char)('0' + i), 'x', 'x', 0 };
		cJSON_AddNumberToObject(rs, k, (double)st.responses[i]);
	}
	cJSON_AddNumberToObject(px, "bytes_in", (double)st.bytes_in);
	cJSON_AddNumberToObject(px, "bytes_out", (double)st.bytes_out);
	cJSON_AddNumberToObject(px, "upstream_errors", (double)st.upstream_errors);
	cJSON_AddNumberToObject(px, "held", (double)st.held);
	cJSON_AddNumberToObject(px, "tls_handshakes", (double)st.tls_handshakes);
	cJSON_AddNumberToObject(px, "drain_timeouts", (double)st.drain_timeouts);
	cJSON_AddNumberToObject(px, "h2_connections", (double)st.h2_connections);
	cJSON_AddNumberToObject(px, "h2_streams_total", (double)st.h2_streams_total);
	cJSON_AddNumberToObject(px, "workers", d->cfg->workers);
	cJSON *disk = cJSON_AddObjectToObject(root, "disk");
	cJSON_AddItemToObject(disk, "state_dir", disk_json(d->cfg->state_dir));
	cJSON_AddItemToObject(disk, "docker_root", disk_json(d->disk ? d->disk->docker_root : NULL));
	return root;
}
