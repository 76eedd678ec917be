/* snapshot — publish/acquire of the immutable routing state. See
 * include/snapshot.h.
 *
 * Readers hold references; the main thread swaps the current pointer under
 * a mutex that also covers the reader's load+increment, so a snapshot can
 * never be freed between a reader loading it and taking its reference.
 * Workers avoid even that lock on the hot path by comparing the lock-free
 * generation counter with the one they hold. */
#include "snapshot.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static pthread_mutex_t cur_lock = PTHREAD_MUTEX_INITIALIZER;
static struct snapshot *cur;
static atomic_ullong cur_gen;
static uint64_t next_gen = 1;

static struct {
	snapshot_listener_fn fn;
	void *arg;
} listeners[64];
static int n_listeners;

/* Backends ---------------------------------------------------------------- */

static atomic_ullong next_backend_id = 1;

/* "127.0.0.1:8000", "[::1]:8000", "localhost:8000" (localhost = 127.0.0.1). */
static int parse_addr(const char *text, struct sockaddr_storage *ss, socklen_t *len)
{
	char host[64];
	const char *colon, *h = text;
	size_t hl;
	if (text[0] == '[') {
		const char *end = strchr(text, ']');
		if (!end || end[1] != ':')
			return -1;
		h = text + 1;
		hl = (size_t)(end - h);
		colon = end + 1;
	} else {
		colon = strrchr(text, ':');
		if (!colon)
			return -1;
		hl = (size_t)(colon - text);
	}
	if (hl == 0 || hl >= sizeof(host))
		return -1;
	memcpy(host, h, hl);
	host[hl] = '\0';
	char *endp;
	long port = strtol(colon + 1, &endp, 10);
	if (*endp || port < 1 || port > 65535 || colon[1] == '\0')
		return -1;
	if (strcmp(host, "localhost") == 0)
		snprintf(host, sizeof(host), "127.0.0.1");
	memset(ss, 0, sizeof(*ss));
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)port);
		*len = sizeof(*sin);
	} else if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)port);
		*len = sizeof(*sin6);
	} else {
		return -1;
	}
	return 0;
}

struct backend *backend_new(const char *service, const char *color, const char *addr_text)
{
	struct backend *b = calloc(1, sizeof(*b));
	if (!b)
		return NULL;
	if (parse_addr(addr_text, &b->addr, &b->addrlen) < 0) {
		free(b);
		return NULL;
	}
	atomic_init(&b->refs, 1);
	b->id = atomic_fetch_add(&next_backend_id, 1);
	snprintf(b->service, sizeof(b->service), "%s", service);
	snprintf(b->color, sizeof(b->color), "%s", color ? color : "");
	snprintf(b->addr_text, sizeof(b->addr_text), "%s", addr_text);
	return b;
}

struct backend *backend_ref(struct backend *b)
{
	if (b)
		atomic_fetch_add(&b->refs, 1);
	return b;
}

void backend_unref(struct backend *b)
{
	if (b && atomic_fetch_sub(&b->refs, 1) == 1)
		free(b);
}

/* Snapshots ---------------------------------------------------------------- */

struct snapshot *snapshot_new(void)
{
	struct snapshot *s = calloc(1, sizeof(*s));
	if (s)
		atomic_init(&s->refs, 1);
	return s;
}

static void snapshot_destroy(struct snapshot *s)
{
	for (size_t i = 0; i < s->n_routes; i++) {
		free(s->routes[i].name);
		free(s->routes[i].prefix);
		free(s->routes[i].host);
	}
	free(s->routes);
	for (size_t i = 0; i < s->n_services; i++) {
		for (size_t j = 0; j < s->services[i].n_live; j++)
			backend_unref(s->services[i].live[j]);
		free(s->services[i].live);
		free(s->services[i].name);
	}
	free(s->services);
	for (size_t i = 0; i < s->n_statics; i++) {
		struct snap_static *st = &s->statics[i];
		free(st->name);
		free(st->path);
		free(st->file);
		free(st->content_type);
		if (st->dirfd >= 0)
			close(st->dirfd);
	}
	free(s->statics);
	for (size_t i = 0; i < s->n_challenges; i++) {
		free(s->challenges[i].token);
		free(s->challenges[i].key_authorization);
	}
	free(s->challenges);
	free(s->ps.hsts);
	if (s->tls_ctx)
		SSL_CTX_free(s->tls_ctx);
	free(s);
}

void snapshot_release(struct snapshot *s)
{
	if (s && atomic_fetch_sub(&s->refs, 1) == 1)
		snapshot_destroy(s);
}

void snapshot_publish(struct snapshot *s)
{
	pthread_mutex_lock(&cur_lock);
	struct snapshot *old = cur;
	s->generation = next_gen++;
	cur = s;
	atomic_store(&cur_gen, s->generation);
	pthread_mutex_unlock(&cur_lock);
	snapshot_release(old);
	for (int i = 0; i < n_listeners; i++)
		listeners[i].fn(listeners[i].arg);
}

struct snapshot *snapshot_acquire(void)
{
	pthread_mutex_lock(&cur_lock);
	struct snapshot *s = cur;
	if (s)
		atomic_fetch_add(&s->refs, 1);
	pthread_mutex_unlock(&cur_lock);
	return s;
}

uint64_t snapshot_generation(void)
{
	return atomic_load(&cur_gen);
}

int snapshot_add_listener(snapshot_listener_fn fn, void *arg)
{
	if (n_listeners >= (int)(sizeof(listeners) / sizeof(listeners[0])))
		return -1;
	listeners[n_listeners].fn = fn;
	listeners[n_listeners].arg = arg;
	n_listeners++;
	return 0;
}

void snapshot_shutdown(void)
{
	pthread_mutex_lock(&cur_lock);
	struct snapshot *old = cur;
	cur = NULL;
	n_listeners = 0;
	pthread_mutex_unlock(&cur_lock);
	snapshot_release(old);
}

/* Lookups ----------------------------------------------------------------- */

static int host_matches(const char *want, const char *host, size_t host_len)
{
	/* ignore a port; hosts compare case-insensitively */
	size_t n = host_len;
	if (n && host[0] != '[') {
		const char *c = memchr(host, ':', n);
		if (c)
			n = (size_t)(c - host);
	} else if (n) {
		const char *c = memchr(host, ']', n);
		if (c)
			n = (size_t)(c - host) + 1;
	}
	return strlen(want) == n && strncasecmp(want, host, n) == 0;
}

const struct snap_route *snapshot_route(const struct snapshot *s,
	const char *host, size_t host_len, const char *path, size_t path_len)
{
	/* routes are sorted longest prefix first; host-specific routes of the
	 * same length come before host-less ones */
	for (size_t i = 0; i < s->n_routes; i++) {
		const struct snap_route *r = &s->routes[i];
		if (r->prefix_len > path_len || memcmp(r->prefix, path, r->prefix_len) != 0)
			continue;
		if (r->host && !(host && host_matches(r->host, host, host_len)))
			continue;
		return r;
	}
	return NULL;
}

const struct snap_route *snapshot_route_slash(const struct snapshot *s,
	const char *host, size_t host_len, const char *path, size_t path_len)
{
	if (path_len == 0 || path[path_len - 1] == '/')
		return NULL;
	for (size_t i = 0; i < s->n_routes; i++) {
		const struct snap_route *r = &s->routes[i];
		if (r->prefix_len != path_len + 1 || r->prefix[path_len] != '/' ||
		    memcmp(r->prefix, path, path_len) != 0)
			continue;
		if (r->host && !(host && host_matches(r->host, host, host_len)))
			continue;
		return r;
	}
	return NULL;
}

const struct snap_static *snapshot_static(const struct snapshot *s,
	const char *path, size_t path_len)
{
	const struct snap_static *best = NULL;
	for (size_t i = 0; i < s->n_statics; i++) {
		const struct snap_static *st = &s->statics[i];
		if (st->file) {
			if (st->path_len == path_len && memcmp(st->path, path, path_len) == 0)
				return st;
		} else if (st->path_len <= path_len && memcmp(st->path, path, st->path_len) == 0 &&
			   (!best || st->path_len > best->path_len)) {
			best = st;
		}
	}
	return best;
}

const struct snap_challenge *snapshot_challenge(const struct snapshot *s,
	const char *token, size_t token_len)
{
	for (size_t i = 0; i < s->n_challenges; i++) {
		const struct snap_challenge *c = &s->challenges[i];
		if (strlen(c->token) == token_len && memcmp(c->token, token, token_len) == 0)
			return c;
	}
	return NULL;
}
