/* daemon — the main thread's context. See include/daemon.h. */
#include "daemon.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fsutil.h"
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

static void http_date(time_t t, char *buf, size_t len)
{
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(buf, len, "%a, %d %b %Y %H:%M:%S GMT", &tm);
}

/* Read every [static] file into the snapshot. A file that cannot be read is
 * logged and left out (requests for it then follow the routes). */
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
		char *err = NULL;
		size_t len = 0;
		char *body = fs_read_file(sc->file, 8u << 20, &len, &err);
		if (!body) {
			log_warn("static file unreadable, not served static=%s file=%s error=%s",
				sc->name, log_q(sc->file), log_q(err));
			free(err);
			continue;
		}
		struct stat sb;
		time_t mtime = stat(sc->file, &sb) == 0 ? sb.st_mtime : time(NULL);
		st->path = strdup(sc->path);
		st->content_type = strdup(sc->content_type);
		st->body = body;
		st->body_len = len;
		/* weak validator from size and mtime, like nginx */
		snprintf(st->etag, sizeof(st->etag), "\"%lx-%zx\"", (unsigned long)mtime, len);
		http_date(mtime, st->last_modified, sizeof(st->last_modified));
		s->n_statics++;
		if (!st->path || !st->content_type)
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
		r->prefix = strdup(rc->prefix);
		r->prefix_len = strlen(rc->prefix);
		r->host = xstrdup_or_null(rc->host);
		r->service = rc->svc_index;
		s->n_routes++;
		if (!r->prefix || (rc->host[0] && !r->host))
			return -1;
	}
	qsort(s->routes, s->n_routes, sizeof(*s->routes), route_cmp);
	return 0;
}

static uint64_t max_drain_ms(const struct pmd_config *cfg)
{
	uint64_t ms = 0;
	for (size_t i = 0; i < cfg->n_services; i++)
		if (cfg->services[i].drain_timeout_ms > ms)
			ms = cfg->services[i].drain_timeout_ms;
	return cfg->n_services ? ms : 30000;
}

static void fill_settings(const struct pmd_config *cfg, struct proxy_settings *ps)
{
	ps->redirect_https = cfg->redirect_https && cfg->tls_mode != TLS_OFF;
	ps->hsts = (cfg->tls_mode != TLS_OFF) ? xstrdup_or_null(cfg->hsts) : NULL;
	ps->max_connections = cfg->max_connections;
	ps->max_header_bytes = cfg->max_header_bytes;
	ps->max_body_bytes = cfg->max_body_bytes;
	ps->client_header_timeout_ms = cfg->client_header_timeout_ms;
	ps->idle_timeout_ms = cfg->idle_timeout_ms;
	ps->upstream_connect_timeout_ms = cfg->upstream_connect_timeout_ms;
	ps->upstream_response_timeout_ms = cfg->upstream_response_timeout_ms;
	ps->hold_timeout_ms = cfg->hold_timeout_ms;
	ps->drain_timeout_ms = max_drain_ms(cfg);
	ps->access_log = cfg->access_log;
	ps->log_json = cfg->log_format; /* LOG_JSON == 1 */
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
	if (config_load(d->cfg->path, &ncfg, &errs) < 0) {
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
	cJSON *svcs = d->sup ? supervisor_status_json(d->sup) : cJSON_CreateObject();
	cJSON_AddItemToObject(root, "services", svcs);
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
	cJSON_AddNumberToObject(px, "workers", d->cfg->workers);
	return root;
}
