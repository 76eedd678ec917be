/* tlsmgr — keeps the TLS context and the ACME challenges the proxy serves
 * (see include/tls.h): loads or generates certificates per [tls] mode, runs
 * the ACME client in acme mode, rotates session ticket keys, and republishes
 * the snapshot when any of it changes. Main thread only. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/event.h>

#include "acme.h"
#include "certstore.h"
#include "csr.h"
#include "daemon.h"
#include "log.h"
#include "snapshot.h"
#include "tls.h"

#define TICKET_ROTATE_S (12 * 3600)
#define SELFSIGNED_DAYS 365
#define TEMPORARY_DAYS 30

struct tlsmgr {
	struct pmd *d;
	enum tls_mode mode;
	char **names;               /* [tls] domains, or localhost + 127.0.0.1 */
	size_t n_names;
	struct cert_bundle *cert;   /* served */
	int temporary;              /* acme mode: self-signed until issued */
	struct tls_ticket_keys *keys;
	SSL_CTX *ctx;
	struct event *rotate;
	struct acme *acme;
	char *last_error;           /* files/self-signed problems at reload */
};

static const char *mode_name(enum tls_mode m)
{
	static const char *const names[] = { "acme", "files", "self-signed", "off" };
	return (unsigned)m < 4 ? names[m] : "?";
}

static void free_names(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

/* Copy cfg's domains (or the local defaults) into *out. 0 / -1. */
static int copy_names(const struct pmd_config *cfg, char ***out, size_t *n)
{
	static const char *const local[] = { "localhost", "127.0.0.1" };
	const char *const *src = cfg->domains.n ? (const char *const *)cfg->domains.v : local;
	size_t cnt = cfg->domains.n ? cfg->domains.n : 2;
	char **v = calloc(cnt, sizeof(*v));
	if (!v)
		return -1;
	for (size_t i = 0; i < cnt; i++)
		if (!(v[i] = strdup(src[i]))) {
			free_names(v, i);
			return -1;
		}
	*out = v;
	*n = cnt;
	return 0;
}

static int same_names(char **a, size_t na, char **b, size_t nb)
{
	if (na != nb)
		return 0;
	for (size_t i = 0; i < na; i++)
		if (strcmp(a[i], b[i]) != 0)
			return 0;
	return 1;
}

/* Serve bundle b from now on (a new context). 0 / -1 errp. */
static int install(struct tlsmgr *t, struct cert_bundle *b, int temporary, char **errp)
{
	SSL_CTX *ctx = tls_ctx_new(&b, 1, t->keys, errp);
	if (!ctx)
		return -1;
	SSL_CTX_free(t->ctx);
	t->ctx = ctx;
	certstore_ref(b);
	certstore_unref(t->cert);
	t->cert = b;
	t->temporary = temporary;
	return 0;
}

static struct cert_bundle *selfsigned(char **names, size_t n, int days, char **errp)
{
	EVP_PKEY *key = csr_key_new();
	X509 *x = key ? csr_selfsigned(key, (const char *const *)names, n, days, errp) : NULL;
	struct cert_bundle *b = x ? certstore_from_x509(x, key, errp) : NULL;
	if (!key)
		*errp = strdup("cannot generate a P-256 key");
	X509_free(x);
	EVP_PKEY_free(key);
	return b;
}

static void on_acme_changed(void *arg)
{
	struct tlsmgr *t = arg;
	pmd_republish(t->d);
}

static void on_acme_issued(void *arg, struct cert_bundle *b)
{
	struct tlsmgr *t = arg;
	char *err = NULL;
	if (install(t, b, 0, &err) < 0) {
		log_error("new certificate not installed error=%s", log_q(err ? err : "?"));
		free(err);
		return;
	}
	log_info("tls certificate installed issuer=%s", log_q(b->issuer));
	pmd_republish(t->d);
}

static void on_rotate(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	struct tlsmgr *t = arg;
	struct tls_ticket_keys *k = tls_ticket_keys_new(t->keys);
	char *err = NULL;
	if (!k)
		return;
	tls_ticket_keys_unref(t->keys);
	t->keys = k;
	if (t->cert && install(t, t->cert, t->temporary, &err) < 0) {
		log_error("tls ticket key rotation failed error=%s", log_q(err ? err : "?"));
		free(err);
		return;
	}
	log_info("tls session ticket keys rotated");
	pmd_republish(t->d);
}

static void acme_conf_from(const struct pmd_config *cfg, char **names, size_t n, struct acme_conf *ac)
{
	ac->directory = cfg->acme_directory;
	ac->email = cfg->acme_email;
	ac->ca_file = cfg->acme_ca_file;
	ac->profile = cfg->acme_profile;
	ac->state_dir = cfg->state_dir;
	ac->domains = (const char *const *)names;
	ac->n_domains = n;
}

/* acme mode: the stored certificate when usable, else a temporary one. */
static int start_acme(struct tlsmgr *t, const struct pmd_config *cfg, char **errp)
{
	char *err = NULL;
	struct cert_bundle *b = certstore_load(cfg->state_dir, &err);
	int temporary = 0;
	if (!b) {
		if (errno == ENOENT)
			log_info("no stored certificate yet, serving a temporary self-signed one");
		else
			log_warn("stored certificate unusable, ordering a new one error=%s", log_q(err ? err : "?"));
	} else if (!certstore_covers(b, (const char *const *)t->names, t->n_names)) {
		log_info("stored certificate does not cover every domain, ordering a new one");
		certstore_unref(b);
		b = NULL;
	} else if (b->not_after <= time(NULL)) {
		log_warn("stored certificate expired, ordering a new one");
		certstore_unref(b);
		b = NULL;
	}
	free(err);
	if (b) {
		char na[32];
		acme_format_time(b->not_after, na, sizeof(na));
		log_info("stored certificate loaded not_after=%s issuer=%s", na, log_q(b->issuer));
	} else {
		temporary = 1;
		if (!(b = selfsigned(t->names, t->n_names, TEMPORARY_DAYS, errp)))
			return -1;
	}
	int rc = install(t, b, temporary, errp);
	if (rc == 0) {
		struct acme_conf ac;
		acme_conf_from(cfg, t->names, t->n_names, &ac);
		if (!(t->acme = acme_new(t->d->base, t->d->httpc, &ac, on_acme_changed, on_acme_issued, t, errp)))
			rc = -1;
		else
			acme_set_cert(t->acme, b, temporary);
	}
	certstore_unref(b);
	return rc;
}

/* Bring t to cfg's mode and settings. On failure the served context is
 * unchanged. 0 / -1 errp. */
static int apply(struct tlsmgr *t, const struct pmd_config *cfg, char **errp)
{
	char **names = NULL;
	size_t n = 0;
	struct cert_bundle *b = NULL;
	int rc = -1;
	if (copy_names(cfg, &names, &n) < 0) {
		*errp = strdup("out of memory");
		return -1;
	}
	int changed = t->mode != cfg->tls_mode || !same_names(names, n, t->names, t->n_names);
	switch (cfg->tls_mode) {
	case TLS_FILES:
		if (!(b = certstore_load_files(cfg->cert_file, cfg->key_file, errp)) ||
		    install(t, b, 0, errp) < 0)
			goto out;
		break;
	case TLS_SELF_SIGNED:
		if (!changed && t->cert)
			break;
		if (!(b = selfsigned(names, n, SELFSIGNED_DAYS, errp)) || install(t, b, 0, errp) < 0)
			goto out;
		break;
	case TLS_ACME:
		if (t->acme) {
			struct acme_conf ac;
			acme_conf_from(cfg, names, n, &ac);
			if (acme_reconfigure(t->acme, &ac, errp) < 0)
				goto out;
		}
		break;
	case TLS_OFF:
		*errp = strdup("tls mode off needs a restart of pmd");
		goto out;
	}
	if (cfg->tls_mode != TLS_ACME) {
		acme_free(t->acme);
		t->acme = NULL;
	}
	free_names(t->names, t->n_names);
	t->names = names;
	t->n_names = n;
	names = NULL;
	n = 0;
	t->mode = cfg->tls_mode;
	rc = 0;
	if (cfg->tls_mode == TLS_ACME && !t->acme)
		rc = start_acme(t, cfg, errp);
	if (rc == 0 && b)
		log_info("tls certificate loaded mode=%s issuer=%s", mode_name(t->mode), log_q(b->issuer));
out:
	free_names(names, n);
	certstore_unref(b);
	free(t->last_error);
	t->last_error = rc < 0 && *errp ? strdup(*errp) : NULL;
	return rc;
}

struct tlsmgr *tlsmgr_new(struct pmd *d, char **errp)
{
	struct tlsmgr *t = calloc(1, sizeof(*t));
	struct timeval tv = { TICKET_ROTATE_S, 0 };
	if (!t || !(t->keys = tls_ticket_keys_new(NULL)) ||
	    !(t->rotate = event_new(d->base, -1, EV_PERSIST, on_rotate, t)) ||
	    event_add(t->rotate, &tv) < 0) {
		*errp = strdup("out of memory");
		goto fail;
	}
	t->d = d;
	t->mode = TLS_OFF;  /* apply() moves it to the configured mode */
	if (apply(t, d->cfg, errp) < 0)
		goto fail;
	return t;
fail:
	tlsmgr_free(t);
	return NULL;
}

void tlsmgr_free(struct tlsmgr *t)
{
	if (!t)
		return;
	acme_free(t->acme);
	if (t->rotate)
		event_free(t->rotate);
	SSL_CTX_free(t->ctx);
	certstore_unref(t->cert);
	tls_ticket_keys_unref(t->keys);
	free_names(t->names, t->n_names);
	free(t->last_error);
	free(t);
}

int tlsmgr_fill_snapshot(struct tlsmgr *t, struct snapshot *snap)
{
	const struct acme_challenge *ch = NULL;
	size_t n = t->acme ? acme_challenges(t->acme, &ch) : 0;
	if (n) {
		if (!(snap->challenges = calloc(n, sizeof(*snap->challenges))))
			return -1;
		for (size_t i = 0; i < n; i++) {
			struct snap_challenge *sc = &snap->challenges[snap->n_challenges++];
			sc->token = strdup(ch[i].token);
			sc->key_authorization = strdup(ch[i].key_authorization);
			if (!sc->token || !sc->key_authorization)
				return -1;  /* snapshot_release frees what was copied */
		}
	}
	if (t->ctx && SSL_CTX_up_ref(t->ctx) == 1)
		snap->tls_ctx = t->ctx;
	return 0;
}

static void add_time(cJSON *o, const char *key, time_t v)
{
	char buf[32];
	if (!v) {
		cJSON_AddNullToObject(o, key);
		return;
	}
	acme_format_time(v, buf, sizeof(buf));
	cJSON_AddStringToObject(o, key, buf);
}

cJSON *tlsmgr_status_json(struct tlsmgr *t)
{
	cJSON *o = cJSON_CreateObject(), *doms;
	if (!o)
		return NULL;
	cJSON_AddStringToObject(o, "mode", mode_name(t->mode));
	if ((doms = cJSON_AddArrayToObject(o, "domains")))
		for (size_t i = 0; i < t->n_names; i++)
			cJSON_AddItemToArray(doms, cJSON_CreateString(t->names[i]));
	add_time(o, "not_after", t->cert ? t->cert->not_after : 0);
	if (t->cert)
		cJSON_AddStringToObject(o, "issuer", t->cert->issuer);
	else
		cJSON_AddNullToObject(o, "issuer");
	cJSON_AddBoolToObject(o, "temporary", t->temporary);
	if (t->acme) {
		acme_status_json(t->acme, o);
	} else {
		cJSON_AddNullToObject(o, "next_renewal");
		cJSON_AddNullToObject(o, "ari_window");
		if (t->last_error)
			cJSON_AddStringToObject(o, "last_error", t->last_error);
		else
			cJSON_AddNullToObject(o, "last_error");
	}
	return o;
}

int tlsmgr_reload(struct tlsmgr *t, const struct pmd_config *cfg, char **errp)
{
	return apply(t, cfg, errp);
}

void tlsmgr_metrics(struct tlsmgr *t, void *evbuffer)
{
	struct evbuffer *out = evbuffer;
	if (!t->cert)
		return;
	evbuffer_add_printf(out,
		"# HELP pmd_certificate_expiry_timestamp_seconds Expiry (notAfter) of the served certificate.\n"
		"# TYPE pmd_certificate_expiry_timestamp_seconds gauge\n");
	for (size_t i = 0; i < t->n_names; i++)
		evbuffer_add_printf(out, "pmd_certificate_expiry_timestamp_seconds{domain=\"%s\",temporary=\"%s\"} %lld\n",
			t->names[i], t->temporary ? "true" : "false", (long long)t->cert->not_after);
}
