/* acme — the ACME order state machine (see include/acme.h).
 *
 *   IDLE/BACKOFF --timer--> DIRECTORY --(no kid)--> ACCOUNT --+
 *                               |                             |
 *                               +------------<----------------+
 *                               v  decide()
 *      RENEWAL_INFO (ARI) --not due--> IDLE        not due --> IDLE
 *              | due                                 | due / no cert
 *              v                                     v
 *            ORDER --pending--> AUTHZ (each) --> CHALLENGE (each)
 *              |                                     |
 *              | ready/processing/valid              v
 *              +--------> POLL_ORDER <-------- POLL_AUTHZ (each)
 *                          | ready: FINALIZE --> POLL_ORDER
 *                          | valid: CERT --> store, issued() --> IDLE
 * Any failure --> BACKOFF (timer) --> DIRECTORY.
 *
 * Exactly one HTTP request is in flight at a time (a->req), or the timer is
 * armed, or (only transiently, inside a callback) neither. */
#include "acme.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <event2/event.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "certstore.h"
#include "csr.h"
#include "fsutil.h"
#include "httpc.h"
#include "jws.h"
#include "log.h"

#define HOUR 3600
#define RECHECK_MAX (12 * HOUR)        /* check at least twice a day */
#define REQ_TIMEOUT_MS 30000
#define MAX_NONCES 8
#define MAX_BADNONCE_RETRIES 5
#define MAX_POLLS 120
#define POLL_MAX_MS 1000
#define ERR_PREFIX "urn:ietf:params:acme:error:"

enum acme_state {
	AS_IDLE,          /* timer armed for the next check */
	AS_DIRECTORY,     /* GET the directory */
	AS_ACCOUNT,       /* POST newAccount */
	AS_RENEWAL_INFO,  /* GET renewalInfo/CERTID (ARI) */
	AS_ORDER,         /* POST newOrder */
	AS_AUTHZ,         /* POST-as-GET each authorization */
	AS_CHALLENGE,     /* POST {} to each pending http-01 challenge */
	AS_POLL_AUTHZ,    /* POST-as-GET each authorization until valid */
	AS_POLL_ORDER,    /* POST-as-GET the order until ready / valid */
	AS_FINALIZE,      /* POST the CSR */
	AS_CERT,          /* POST-as-GET the certificate chain */
	AS_BACKOFF,       /* after a failure; timer armed for the retry */
};

static const char *const state_names[] = {
	"idle", "directory", "account", "renewal-info", "order", "authz",
	"challenge", "poll-authz", "poll-order", "finalize", "cert", "backoff",
};

enum req_kind { REQ_GET, REQ_NONCE, REQ_POST };

struct conf_copy {
	char *directory, *email, *ca_file, *profile, *state_dir;
	char **domains;
	size_t n_domains;
};

struct acme {
	struct event_base *base;
	struct httpc *h;
	struct conf_copy c;
	acme_changed_fn changed;
	acme_issued_fn issued;
	void *arg;

	enum acme_state state;
	struct event *timer;
	struct httpc_req *req;
	enum req_kind req_kind;

	/* directory */
	char *new_nonce, *new_account, *new_order, *renewal_info;
	/* account */
	EVP_PKEY *account_key;
	char *thumbprint;
	char *kid;
	char *nonces[MAX_NONCES];
	size_t n_nonces;
	/* the POST in progress (kept to resend after badNonce) */
	char *post_url, *post_payload;
	int post_tries;

	/* served certificate */
	struct cert_bundle *cert;
	int cert_temporary;
	char *cert_origin;         /* directory that issued cert; NULL unknown */
	time_t next_check;         /* when the timer fires (status) */
	time_t renew_at;           /* when the current certificate is due */
	time_t ari_start, ari_end; /* 0: no window known */
	time_t ari_pick;

	/* the order in progress */
	char *replaces;            /* ARI cert ID of the certificate replaced */
	int replaces_refused;      /* the server refused `replaces`: order without */
	char *order_url, *finalize_url, *cert_url;
	char **authzs;
	size_t n_authzs, cursor;
	struct acme_challenge *chals;
	size_t n_chals;
	int polls;
	EVP_PKEY *cert_key;

	unsigned failures;
	char *last_error;
};

struct resp {
	long status;
	cJSON *json;
	const char *body;
	size_t body_len;
	const char *head;          /* the last response head */
	long retry_after;          /* seconds, -1 absent */
};

static void enter(struct acme *a, enum acme_state s);
static void fail(struct acme *a, const char *type, const char *detail, long retry_after);
static void on_http(void *arg, const struct httpc_response *res);

/* ---- small helpers ---- */

static void replace_str(char **dst, const char *src)
{
	free(*dst);
	*dst = src ? strdup(src) : NULL;
}

static uint64_t rnd64(void)
{
	uint64_t r = 0;
	if (RAND_bytes((unsigned char *)&r, sizeof(r)) != 1)
		r = (uint64_t)time(NULL) * 2654435761u;
	return r;
}

/* Value of header `name` in the last response head, trimmed, into buf. */
static int head_get(const char *head, const char *name, char *buf, size_t cap)
{
	const char *p = head, *q;
	size_t nlen = strlen(name);
	/* the last head starts at the last status line */
	while ((q = strstr(p, "\nHTTP/")))
		p = q + 1;
	for (const char *line = p; line && *line; line = strchr(line, '\n')) {
		if (*line == '\n')
			line++;
		if (strncasecmp(line, name, nlen) == 0 && line[nlen] == ':') {
			const char *v = line + nlen + 1, *e;
			while (*v == ' ' || *v == '\t')
				v++;
			for (e = v; *e && *e != '\r' && *e != '\n'; e++)
				;
			while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
				e--;
			if ((size_t)(e - v) >= cap)
				return -1;
			memcpy(buf, v, (size_t)(e - v));
			buf[e - v] = '\0';
			return 0;
		}
	}
	return -1;
}

/* Retry-After: delta-seconds or an HTTP-date; -1 when absent. */
static long retry_after(const char *head)
{
	char v[64];
	struct tm tm;
	if (head_get(head, "Retry-After", v, sizeof(v)) < 0)
		return -1;
	char *end;
	long s = strtol(v, &end, 10);
	if (end != v && *end == '\0')
		return s < 0 ? 0 : s;
	memset(&tm, 0, sizeof(tm));
	if (strptime(v, "%a, %d %b %Y %H:%M:%S GMT", &tm)) {
		time_t t = timegm(&tm) - time(NULL);
		return t < 0 ? 0 : (long)t;
	}
	return -1;
}

static const char *jstr(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void arm_timer(struct acme *a, uint64_t ms)
{
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000 * 1000) };
	evtimer_add(a->timer, &tv);
}

static void clear_order(struct acme *a)
{
	int had = a->n_chals > 0;
	for (size_t i = 0; i < a->n_authzs; i++)
		free(a->authzs[i]);
	free(a->authzs);
	a->authzs = NULL;
	a->n_authzs = a->cursor = 0;
	for (size_t i = 0; i < a->n_chals; i++) {
		free(a->chals[i].token);
		free(a->chals[i].key_authorization);
		free(a->chals[i].url);
		free(a->chals[i].authz);
	}
	free(a->chals);
	a->chals = NULL;
	a->n_chals = 0;
	replace_str(&a->order_url, NULL);
	replace_str(&a->finalize_url, NULL);
	replace_str(&a->cert_url, NULL);
	EVP_PKEY_free(a->cert_key);
	a->cert_key = NULL;
	a->polls = 0;
	if (had && a->changed)
		a->changed(a->arg);
}

/* ---- requests ---- */

static int start_request(struct acme *a, enum req_kind kind, const char *method,
	const char *url, const char *body)
{
	static const char *const jose[] = { "Content-Type: application/jose+json",
		"User-Agent: pmd/" PMD_VERSION, NULL };
	static const char *const plain[] = { "User-Agent: pmd/" PMD_VERSION, NULL };
	struct httpc_opts o = {
		.method = method, .url = url, .headers = body ? jose : plain,
		.body = body, .body_len = body ? strlen(body) : 0,
		.timeout_ms = REQ_TIMEOUT_MS, .connect_timeout_ms = 10000,
		.ca_file = a->c.ca_file, .on_done = on_http, .arg = a,
	};
	char *err = NULL;
	a->req_kind = kind;
	if (!(a->req = httpc_request(a->h, &o, &err))) {
		fail(a, "client", err ? err : "cannot start an HTTP request", -1);
		free(err);
		return -1;
	}
	return 0;
}

/* Sign and send a->post_url/post_payload, fetching a nonce first if none. */
static void send_post(struct acme *a)
{
	if (a->n_nonces == 0) {
		start_request(a, REQ_NONCE, "HEAD", a->new_nonce, NULL);
		return;
	}
	char *nonce = a->nonces[--a->n_nonces];
	char *jws = jws_build(a->account_key, a->kid, nonce, a->post_url, a->post_payload);
	free(nonce);
	if (!jws) {
		fail(a, "client", "cannot sign the request", -1);
		return;
	}
	start_request(a, REQ_POST, "POST", a->post_url, jws);
	free(jws);
}

/* POST a JWS to url; payload NULL = POST-as-GET. Response goes to the
 * current state's handler. */
static void post(struct acme *a, const char *url, const char *payload)
{
	replace_str(&a->post_url, url);
	replace_str(&a->post_payload, payload);
	a->post_tries = 0;
	send_post(a);
}

static void post_json(struct acme *a, const char *url, cJSON *payload)
{
	char *s = cJSON_PrintUnformatted(payload);
	if (!s) {
		fail(a, "client", "out of memory", -1);
		return;
	}
	post(a, url, s);
	free(s);
}

static void keep_nonce(struct acme *a, const char *head)
{
	char v[256];
	if (head_get(head, "Replay-Nonce", v, sizeof(v)) < 0 || !v[0])
		return;
	if (a->n_nonces == MAX_NONCES) {
		free(a->nonces[0]);
		memmove(a->nonces, a->nonces + 1, (MAX_NONCES - 1) * sizeof(a->nonces[0]));
		a->n_nonces--;
	}
	if ((a->nonces[a->n_nonces] = strdup(v)))
		a->n_nonces++;
}

/* ---- account ---- */

static int account_paths(const struct acme *a, char *key, char *json, size_t cap)
{
	return snprintf(key, cap, "%s/acme/account.key", a->c.state_dir) >= (int)cap ||
	       snprintf(json, cap, "%s/acme/account.json", a->c.state_dir) >= (int)cap ? -1 : 0;
}

/* Load STATE_DIR/acme/account.key or create it; read the stored account URL
 * when it belongs to the configured directory. */
static int account_load(struct acme *a, char **errp)
{
	char kpath[PATH_MAX], jpath[PATH_MAX], dir[PATH_MAX];
	size_t len = 0;
	char *pem = NULL, *js = NULL;
	cJSON *o = NULL;
	int rc = -1;
	snprintf(dir, sizeof(dir), "%s/acme", a->c.state_dir);
	if (account_paths(a, kpath, jpath, sizeof(kpath)) < 0 || fs_mkdirs(dir, 0700, errp) < 0)
		goto out;
	if ((pem = fs_read_file(kpath, 65536, &len, NULL))) {
		if (!(a->account_key = certstore_key_parse(pem, len))) {
			if (asprintf(errp, "%s: not a PEM private key (remove it to create a new ACME account)", kpath) < 0)
				*errp = NULL;
			goto out;
		}
	} else if (errno == ENOENT) {
		if (!(a->account_key = csr_key_new()) || !(pem = certstore_key_pem(a->account_key, &len)) ||
		    fs_write_atomic(kpath, pem, len, 0600, errp) < 0)
			goto out;
		log_info("acme account key created path=%s", log_q(kpath));
	} else {
		if (asprintf(errp, "%s: %s", kpath, strerror(errno)) < 0)
			*errp = NULL;
		goto out;
	}
	if (!(a->thumbprint = jws_thumbprint(a->account_key))) {
		if (asprintf(errp, "%s: the ACME account key must be an EC P-256 key", kpath) < 0)
			*errp = NULL;
		goto out;
	}
	if ((js = fs_read_file(jpath, 65536, NULL, NULL)) && (o = cJSON_Parse(js))) {
		const char *url = jstr(o, "url"), *d = jstr(o, "directory");
		if (url && d && strcmp(d, a->c.directory) == 0)
			replace_str(&a->kid, url);
	}
	rc = 0;
out:
	if (pem)
		OPENSSL_cleanse(pem, len);
	free(pem);
	free(js);
	cJSON_Delete(o);
	return rc;
}

static void account_store(struct acme *a)
{
	char kpath[PATH_MAX], jpath[PATH_MAX];
	cJSON *o = cJSON_CreateObject();
	char *s = NULL, *err = NULL;
	if (account_paths(a, kpath, jpath, sizeof(kpath)) < 0 || !o ||
	    !cJSON_AddStringToObject(o, "url", a->kid) ||
	    !cJSON_AddStringToObject(o, "directory", a->c.directory) ||
	    !(s = cJSON_Print(o)) || fs_write_atomic(jpath, s, strlen(s), 0600, &err) < 0)
		log_warn("acme account URL not stored error=%s", log_q(err ? err : "out of memory"));
	free(err);
	free(s);
	cJSON_Delete(o);
}

/* ---- scheduling ---- */

static void schedule_check(struct acme *a, time_t when)
{
	time_t now = time(NULL);
	if (when > now + RECHECK_MAX)
		when = now + RECHECK_MAX;
	if (when < now)
		when = now;
	a->next_check = when;
	enter(a, AS_IDLE);
	arm_timer(a, (uint64_t)(when - now) * 1000);
}

/* A certificate worth keeping: real, covering every domain, and from the
 * configured CA (switching from staging to production re-orders). */
static int have_cert(const struct acme *a)
{
	return a->cert && !a->cert_temporary &&
	       certstore_covers(a->cert, (const char *const *)a->c.domains, a->c.n_domains) &&
	       (!a->cert_origin || strcmp(a->cert_origin, a->c.directory) == 0);
}

/* After the directory (and account): renewal info, an order, or sleep. */
static void decide(struct acme *a)
{
	time_t now = time(NULL);
	replace_str(&a->replaces, NULL);
	if (!have_cert(a)) {
		enter(a, AS_ORDER);
		return;
	}
	a->renew_at = acme_renewal_time(a->cert->not_before, a->cert->not_after);
	if (a->renewal_info && a->cert->aki_len) {
		enter(a, AS_RENEWAL_INFO);
		return;
	}
	if (now >= a->renew_at) {
		enter(a, AS_ORDER);
		return;
	}
	schedule_check(a, a->renew_at);
}

/* ---- state handlers: one per state that waits for a response ---- */

static void on_directory(struct acme *a, const struct resp *r)
{
	const char *nn = jstr(r->json, "newNonce"), *na = jstr(r->json, "newAccount"),
		*no = jstr(r->json, "newOrder");
	if (!nn || !na || !no) {
		fail(a, "malformed", "the directory lacks newNonce, newAccount or newOrder", -1);
		return;
	}
	replace_str(&a->new_nonce, nn);
	replace_str(&a->new_account, na);
	replace_str(&a->new_order, no);
	replace_str(&a->renewal_info, jstr(r->json, "renewalInfo"));
	const cJSON *profiles = cJSON_GetObjectItemCaseSensitive(
		cJSON_GetObjectItemCaseSensitive(r->json, "meta"), "profiles");
	if (a->c.profile && cJSON_IsObject(profiles) &&
	    !cJSON_GetObjectItemCaseSensitive(profiles, a->c.profile)) {
		char msg[512];
		size_t off = (size_t)snprintf(msg, sizeof(msg), "acme_profile %s is not offered by the server; it offers:", a->c.profile);
		for (const cJSON *p = profiles->child; p && off < sizeof(msg); p = p->next)
			off += (size_t)snprintf(msg + off, sizeof(msg) - off, " %s", p->string);
		fail(a, "config", msg, -1);
		return;
	}
	if (a->kid)
		decide(a);
	else
		enter(a, AS_ACCOUNT);
}

static void on_account(struct acme *a, const struct resp *r)
{
	char loc[1024];
	if (head_get(r->head, "Location", loc, sizeof(loc)) < 0 || !loc[0]) {
		fail(a, "malformed", "newAccount answered without a Location", -1);
		return;
	}
	replace_str(&a->kid, loc);
	log_info("acme account ready url=%s created=%s", log_q(loc), r->status == 201 ? "yes" : "no");
	account_store(a);
	decide(a);
}

static void on_renewal_info(struct acme *a, const struct resp *r)
{
	const cJSON *w = cJSON_GetObjectItemCaseSensitive(r->json, "suggestedWindow");
	const char *s = jstr(w, "start"), *e = jstr(w, "end");
	time_t start, end, now = time(NULL);
	if (r->status != 200 || !s || !e || acme_parse_time(s, &start) < 0 || acme_parse_time(e, &end) < 0) {
		/* ARI is advisory: fall back to the lifetime rule */
		log_warn("acme renewal info unusable, using the lifetime rule status=%ld", r->status);
		a->ari_pick = 0;
		a->ari_start = a->ari_end = 0;
		if (now >= a->renew_at)
			enter(a, AS_ORDER);
		else
			schedule_check(a, a->renew_at);
		return;
	}
	if (start != a->ari_start || end != a->ari_end || !a->ari_pick) {
		a->ari_start = start;
		a->ari_end = end;
		a->ari_pick = acme_ari_pick(start, end, rnd64());
		char b1[32], b2[32], b3[32];
		acme_format_time(start, b1, sizeof(b1));
		acme_format_time(end, b2, sizeof(b2));
		acme_format_time(a->ari_pick, b3, sizeof(b3));
		log_info("acme renewal window start=%s end=%s renew_at=%s", b1, b2, b3);
	}
	a->renew_at = a->ari_pick;
	if (now >= a->ari_pick) {
		if (!a->replaces_refused)
			a->replaces = certstore_ari_id(a->cert);
		enter(a, AS_ORDER);
		return;
	}
	time_t recheck = now + (r->retry_after > 0 ? r->retry_after : RECHECK_MAX);
	if (recheck < now + 60)
		recheck = now + 60;
	schedule_check(a, recheck < a->ari_pick ? recheck : a->ari_pick);
}

/* Continue an order according to its status. */
static void order_next(struct acme *a, const cJSON *order)
{
	const char *st = jstr(order, "status");
	if (jstr(order, "finalize"))
		replace_str(&a->finalize_url, jstr(order, "finalize"));
	if (jstr(order, "certificate"))
		replace_str(&a->cert_url, jstr(order, "certificate"));
	if (!st) {
		fail(a, "malformed", "order without status", -1);
	} else if (!strcmp(st, "valid") && a->cert_url) {
		enter(a, AS_CERT);
	} else if (!strcmp(st, "ready") && a->state != AS_FINALIZE) {
		enter(a, AS_FINALIZE);
	} else if (!strcmp(st, "pending") && a->state == AS_ORDER) {
		enter(a, AS_AUTHZ);
	} else if (!strcmp(st, "pending") || !strcmp(st, "processing") || !strcmp(st, "ready") || !strcmp(st, "valid")) {
		enter(a, AS_POLL_ORDER);
	} else {
		const cJSON *err = cJSON_GetObjectItemCaseSensitive(order, "error");
		fail(a, jstr(err, "type") ? jstr(err, "type") : "orderInvalid",
			jstr(err, "detail") ? jstr(err, "detail") : st, -1);
	}
}

static void on_order(struct acme *a, const struct resp *r)
{
	char loc[1024];
	const cJSON *az = cJSON_GetObjectItemCaseSensitive(r->json, "authorizations");
	if (head_get(r->head, "Location", loc, sizeof(loc)) < 0 || !cJSON_IsArray(az)) {
		fail(a, "malformed", "newOrder answered without Location or authorizations", -1);
		return;
	}
	replace_str(&a->order_url, loc);
	int n = cJSON_GetArraySize(az);
	if (n > 0 && !(a->authzs = calloc((size_t)n, sizeof(*a->authzs)))) {
		fail(a, "client", "out of memory", -1);
		return;
	}
	for (const cJSON *x = az->child; x; x = x->next)
		if (cJSON_IsString(x) && (a->authzs[a->n_authzs] = strdup(x->valuestring)))
			a->n_authzs++;
	log_info("acme order created url=%s authorizations=%zu status=%s", log_q(loc), a->n_authzs,
		jstr(r->json, "status") ? jstr(r->json, "status") : "?");
	order_next(a, r->json);
}

static void on_authz(struct acme *a, const struct resp *r)
{
	const char *st = jstr(r->json, "status");
	const char *ident = jstr(cJSON_GetObjectItemCaseSensitive(r->json, "identifier"), "value");
	if (st && !strcmp(st, "pending")) {
		const cJSON *c = NULL, *list = cJSON_GetObjectItemCaseSensitive(r->json, "challenges");
		cJSON_ArrayForEach(c, list) {
			const char *type = jstr(c, "type");
			if (type && !strcmp(type, "http-01"))
				break;
		}
		const char *token = jstr(c, "token"), *url = jstr(c, "url");
		if (!c || !token || !url) {
			fail(a, "unsupportedChallenge", "the server offers no http-01 challenge", -1);
			return;
		}
		struct acme_challenge *nc = realloc(a->chals, (a->n_chals + 1) * sizeof(*nc));
		if (!nc) {
			fail(a, "client", "out of memory", -1);
			return;
		}
		a->chals = nc;
		struct acme_challenge *ch = &a->chals[a->n_chals];
		memset(ch, 0, sizeof(*ch));
		if (asprintf(&ch->key_authorization, "%s.%s", token, a->thumbprint) < 0)
			ch->key_authorization = NULL;
		ch->token = strdup(token);
		ch->url = strdup(url);
		ch->authz = strdup(a->authzs[a->cursor]);
		a->n_chals++;
		if (!ch->token || !ch->url || !ch->authz || !ch->key_authorization) {
			fail(a, "client", "out of memory", -1);
			return;
		}
		log_info("acme http-01 challenge identifier=%s token=%s", log_q(ident ? ident : "?"), log_q(token));
	} else if (!st || strcmp(st, "valid") != 0) {
		char msg[512];
		snprintf(msg, sizeof(msg), "authorization for %s is %s", ident ? ident : "?", st ? st : "without status");
		fail(a, "unauthorized", msg, -1);
		return;
	}
	if (++a->cursor < a->n_authzs) {
		post(a, a->authzs[a->cursor], NULL);
		return;
	}
	a->cursor = 0;
	if (a->n_chals == 0) {
		enter(a, AS_POLL_ORDER);
		return;
	}
	if (a->changed)
		a->changed(a->arg);  /* publish the key authorizations first */
	enter(a, AS_CHALLENGE);
}

static void on_challenge(struct acme *a, const struct resp *r)
{
	(void)r;
	if (++a->cursor < a->n_chals) {
		cJSON *empty = cJSON_CreateObject();
		post_json(a, a->chals[a->cursor].url, empty);
		cJSON_Delete(empty);
		return;
	}
	a->cursor = 0;
	enter(a, AS_POLL_AUTHZ);
}

/* Wait before polling again: Retry-After when given (capped at a minute),
 * else 100 ms doubling up to POLL_MAX_MS. */
static void poll_later(struct acme *a, const struct resp *r)
{
	if (++a->polls > MAX_POLLS) {
		fail(a, "timeout", "the server did not finish validating in time", -1);
		return;
	}
	uint64_t ms = 100u << (a->polls < 4 ? a->polls - 1 : 3);
	if (ms > POLL_MAX_MS)
		ms = POLL_MAX_MS;
	if (r->retry_after >= 0)
		ms = (uint64_t)(r->retry_after > 60 ? 60 : r->retry_after) * 1000;
	arm_timer(a, ms);
}

/* First problem found in the challenges of an invalid authorization. */
static const cJSON *authz_error(const cJSON *authz)
{
	const cJSON *c;
	cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(authz, "challenges")) {
		const cJSON *e = cJSON_GetObjectItemCaseSensitive(c, "error");
		if (e)
			return e;
	}
	return NULL;
}

static void on_poll_authz(struct acme *a, const struct resp *r)
{
	const char *st = jstr(r->json, "status");
	if (st && !strcmp(st, "valid")) {
		a->polls = 0;
		if (++a->cursor < a->n_chals) {
			post(a, a->chals[a->cursor].authz, NULL);
			return;
		}
		a->cursor = 0;
		enter(a, AS_POLL_ORDER);
	} else if (st && (!strcmp(st, "pending") || !strcmp(st, "processing"))) {
		poll_later(a, r);
	} else {
		const cJSON *e = authz_error(r->json);
		fail(a, jstr(e, "type") ? jstr(e, "type") : "unauthorized",
			jstr(e, "detail") ? jstr(e, "detail") : "authorization failed", -1);
	}
}

static void on_poll_order(struct acme *a, const struct resp *r)
{
	const char *st = jstr(r->json, "status");
	if (st && (!strcmp(st, "processing") || !strcmp(st, "pending") ||
		   (!strcmp(st, "valid") && !jstr(r->json, "certificate")))) {
		poll_later(a, r);
		return;
	}
	a->polls = 0;
	order_next(a, r->json);
}

static void on_cert(struct acme *a, const struct resp *r)
{
	char *err = NULL;
	struct cert_bundle *b = certstore_parse(r->body, r->body_len, a->cert_key, "issued certificate", &err);
	if (!b || !certstore_covers(b, (const char *const *)a->c.domains, a->c.n_domains)) {
		fail(a, "badCertificate", err ? err : "the issued certificate does not cover every domain", -1);
		goto out;
	}
	if (certstore_save(a->c.state_dir, r->body, r->body_len, a->cert_key, &err) < 0 ||
	    certstore_save_origin(a->c.state_dir, a->c.directory, &err) < 0) {
		fail(a, "store", err, -1);
		goto out;
	}
	char na[32];
	acme_format_time(b->not_after, na, sizeof(na));
	log_info("acme certificate issued not_after=%s issuer=%s", na, log_q(b->issuer));
	a->failures = 0;
	replace_str(&a->last_error, NULL);
	a->replaces_refused = 0;
	a->ari_start = a->ari_end = a->ari_pick = 0;
	if (a->issued)
		a->issued(a->arg, b);
	acme_set_cert(a, b, 0);  /* also when the owner did not */
	clear_order(a);
	schedule_check(a, a->renew_at);
out:
	certstore_unref(b);
	free(err);
}

/* ---- transitions ---- */

static void enter(struct acme *a, enum acme_state s)
{
	if (s != a->state)
		log_info("acme state from=%s to=%s", state_names[a->state], state_names[s]);
	a->state = s;
	event_del(a->timer);
	switch (s) {
	case AS_IDLE:
	case AS_BACKOFF:
		break;  /* the caller arms the timer */
	case AS_DIRECTORY:
		start_request(a, REQ_GET, "GET", a->c.directory, NULL);
		break;
	case AS_ACCOUNT: {
		cJSON *p = cJSON_CreateObject(), *contact = cJSON_AddArrayToObject(p, "contact");
		char mail[512];
		cJSON_AddBoolToObject(p, "termsOfServiceAgreed", 1);
		if (a->c.email) {
			snprintf(mail, sizeof(mail), "mailto:%s", a->c.email);
			cJSON_AddItemToArray(contact, cJSON_CreateString(mail));
		}
		replace_str(&a->kid, NULL);  /* newAccount is signed with the jwk */
		post_json(a, a->new_account, p);
		cJSON_Delete(p);
		break;
	}
	case AS_RENEWAL_INFO: {
		char *id = certstore_ari_id(a->cert), *url = NULL;
		if (!id || asprintf(&url, "%s%s%s", a->renewal_info,
				a->renewal_info[strlen(a->renewal_info) - 1] == '/' ? "" : "/", id) < 0)
			url = NULL;
		if (url)
			start_request(a, REQ_GET, "GET", url, NULL);
		else
			fail(a, "client", "out of memory", -1);
		free(id);
		free(url);
		break;
	}
	case AS_ORDER: {
		clear_order(a);
		cJSON *p = cJSON_CreateObject(), *ids = cJSON_AddArrayToObject(p, "identifiers");
		for (size_t i = 0; i < a->c.n_domains; i++) {
			cJSON *id = cJSON_CreateObject();
			ASN1_OCTET_STRING *ip = a2i_IPADDRESS(a->c.domains[i]);
			cJSON_AddStringToObject(id, "type", ip ? "ip" : "dns");
			cJSON_AddStringToObject(id, "value", a->c.domains[i]);
			cJSON_AddItemToArray(ids, id);
			ASN1_OCTET_STRING_free(ip);
		}
		if (a->c.profile)
			cJSON_AddStringToObject(p, "profile", a->c.profile);
		if (a->replaces)
			cJSON_AddStringToObject(p, "replaces", a->replaces);
		post_json(a, a->new_order, p);
		cJSON_Delete(p);
		break;
	}
	case AS_AUTHZ:
		a->cursor = 0;
		if (a->n_authzs == 0)
			enter(a, AS_POLL_ORDER);
		else
			post(a, a->authzs[0], NULL);
		break;
	case AS_CHALLENGE: {
		cJSON *empty = cJSON_CreateObject();
		a->cursor = 0;
		post_json(a, a->chals[0].url, empty);
		cJSON_Delete(empty);
		break;
	}
	case AS_POLL_AUTHZ:
		a->cursor = 0;
		a->polls = 0;
		post(a, a->chals[0].authz, NULL);
		break;
	case AS_POLL_ORDER:
		post(a, a->order_url, NULL);
		break;
	case AS_FINALIZE: {
		char *err = NULL, *b64 = NULL;
		size_t len = 0;
		unsigned char *der = NULL;
		EVP_PKEY_free(a->cert_key);
		if (!(a->cert_key = csr_key_new()) ||
		    !(der = csr_build_der(a->cert_key, (const char *const *)a->c.domains, a->c.n_domains, &len, &err)) ||
		    !(b64 = jws_b64url(der, len))) {
			fail(a, "client", err ? err : "cannot build the CSR", -1);
		} else {
			cJSON *p = cJSON_CreateObject();
			cJSON_AddStringToObject(p, "csr", b64);
			post_json(a, a->finalize_url, p);
			cJSON_Delete(p);
		}
		free(err);
		free(der);
		free(b64);
		break;
	}
	case AS_CERT:
		post(a, a->cert_url, NULL);
		break;
	}
}

static void fail(struct acme *a, const char *type, const char *detail, long ra)
{
	const char *t = type ? type : "unknown";
	if (!strncmp(t, ERR_PREFIX, strlen(ERR_PREFIX)))
		t += strlen(ERR_PREFIX);
	char *msg = NULL;
	if (asprintf(&msg, "%s: %s", t, detail ? detail : "") < 0)
		msg = NULL;
	free(a->last_error);
	a->last_error = msg;
	a->failures++;
	uint64_t ms = acme_backoff_ms(a->failures, rnd64());
	if (ra >= 0 && (uint64_t)ra * 1000 > ms)
		ms = (uint64_t)ra * 1000;
	log_warn("acme failed state=%s type=%s detail=%s failures=%u retry_in_s=%llu",
		state_names[a->state], log_q(t), log_q(detail ? detail : ""), a->failures,
		(unsigned long long)(ms / 1000));
	clear_order(a);
	a->next_check = time(NULL) + (time_t)(ms / 1000);
	enter(a, AS_BACKOFF);
	arm_timer(a, ms);
}

static void dispatch(struct acme *a, const struct resp *r)
{
	switch (a->state) {
	case AS_DIRECTORY:    on_directory(a, r); break;
	case AS_ACCOUNT:      on_account(a, r); break;
	case AS_ORDER:        on_order(a, r); break;
	case AS_AUTHZ:        on_authz(a, r); break;
	case AS_CHALLENGE:    on_challenge(a, r); break;
	case AS_POLL_AUTHZ:   on_poll_authz(a, r); break;
	case AS_POLL_ORDER:   on_poll_order(a, r); break;
	case AS_FINALIZE:     order_next(a, r->json); break;
	case AS_CERT:         on_cert(a, r); break;
	case AS_RENEWAL_INFO: /* answered in on_http, whatever the status */
	case AS_IDLE:
	case AS_BACKOFF:      break;
	}
}

static void on_http(void *arg, const struct httpc_response *res)
{
	struct acme *a = arg;
	struct resp r = { .status = res->status, .body = res->body, .body_len = res->body_len,
		.head = res->headers ? res->headers : "", .retry_after = -1 };
	a->req = NULL;
	keep_nonce(a, r.head);
	if (a->state == AS_RENEWAL_INFO) {
		/* ARI is advisory: any answer, or none, is handled there */
		if (res->curl_code == 0 && r.body && r.body_len && r.body[0] == '{')
			r.json = cJSON_ParseWithLength(r.body, r.body_len);
		if (res->curl_code != 0)
			r.status = 0;
		r.retry_after = retry_after(r.head);
		on_renewal_info(a, &r);
		cJSON_Delete(r.json);
		return;
	}
	if (res->curl_code != 0 || res->status == 0) {
		fail(a, "connection", res->error ? res->error : "no response", -1);
		return;
	}
	if (a->req_kind == REQ_NONCE) {
		if (a->n_nonces == 0)
			fail(a, "badNonce", "newNonce answered without Replay-Nonce", -1);
		else
			send_post(a);
		return;
	}
	r.retry_after = retry_after(r.head);
	if (r.body && r.body_len && r.body[0] == '{')
		r.json = cJSON_ParseWithLength(r.body, r.body_len);
	const char *ptype = r.status >= 400 ? jstr(r.json, "type") : NULL;
	if (a->req_kind == REQ_POST && ptype && !strcmp(ptype, ERR_PREFIX "badNonce") &&
	    ++a->post_tries <= MAX_BADNONCE_RETRIES) {
		log_info("acme nonce rejected, retrying url=%s try=%d", log_q(a->post_url), a->post_tries);
		send_post(a);
	} else if (ptype && a->kid && a->state != AS_ACCOUNT && !strcmp(ptype, ERR_PREFIX "accountDoesNotExist")) {
		log_warn("acme account unknown to the server, registering again url=%s", log_q(a->kid));
		replace_str(&a->kid, NULL);
		enter(a, AS_ACCOUNT);
	} else if (ptype && a->replaces && a->state == AS_ORDER &&
		   (!strcmp(ptype, ERR_PREFIX "alreadyReplaced") || r.status == 409)) {
		log_warn("acme server refused replaces, ordering without it detail=%s", log_q(jstr(r.json, "detail") ? jstr(r.json, "detail") : ""));
		a->replaces_refused = 1;
		replace_str(&a->replaces, NULL);
		enter(a, AS_ORDER);
	} else if (r.status >= 400) {
		char detail[600];
		snprintf(detail, sizeof(detail), "HTTP %ld: %s", r.status,
			jstr(r.json, "detail") ? jstr(r.json, "detail") : "no problem document");
		fail(a, ptype ? ptype : (r.status == 503 ? "serviceUnavailable" : "http"), detail, r.retry_after);
	} else if (a->state != AS_CERT && !r.json && a->state != AS_CHALLENGE) {
		fail(a, "malformed", "the server did not answer with a JSON object", -1);
	} else {
		dispatch(a, &r);
	}
	cJSON_Delete(r.json);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	struct acme *a = arg;
	switch (a->state) {
	case AS_POLL_AUTHZ:
		post(a, a->chals[a->cursor].authz, NULL);
		break;
	case AS_POLL_ORDER:
		post(a, a->order_url, NULL);
		break;
	default:
		enter(a, AS_DIRECTORY);
		break;
	}
}

/* ---- lifecycle ---- */

static void conf_free(struct conf_copy *c)
{
	free(c->directory);
	free(c->email);
	free(c->ca_file);
	free(c->profile);
	free(c->state_dir);
	for (size_t i = 0; i < c->n_domains; i++)
		free(c->domains[i]);
	free(c->domains);
	memset(c, 0, sizeof(*c));
}

static char *dup_opt(const char *s)
{
	return s && s[0] ? strdup(s) : NULL;
}

static int conf_copy(struct conf_copy *dst, const struct acme_conf *c, char **errp)
{
	memset(dst, 0, sizeof(*dst));
	if (!c->directory || !c->directory[0] || !c->state_dir || c->n_domains == 0) {
		*errp = strdup("acme needs acme_directory, state_dir and at least one domain");
		return -1;
	}
	dst->directory = strdup(c->directory);
	dst->state_dir = strdup(c->state_dir);
	dst->email = dup_opt(c->email);
	dst->ca_file = dup_opt(c->ca_file);
	dst->profile = dup_opt(c->profile);
	dst->domains = calloc(c->n_domains, sizeof(char *));
	int bad = !dst->directory || !dst->state_dir || !dst->domains ||
		  (c->email && c->email[0] && !dst->email) || (c->ca_file && c->ca_file[0] && !dst->ca_file) ||
		  (c->profile && c->profile[0] && !dst->profile);
	for (size_t i = 0; !bad && i < c->n_domains; i++)
		if (!(dst->domains[dst->n_domains++] = strdup(c->domains[i])))
			bad = 1;
	if (bad) {
		conf_free(dst);
		*errp = strdup("out of memory");
		return -1;
	}
	return 0;
}

struct acme *acme_new(struct event_base *base, struct httpc *h, const struct acme_conf *c,
	acme_changed_fn changed, acme_issued_fn issued, void *arg, char **errp)
{
	struct acme *a = calloc(1, sizeof(*a));
	if (!a) {
		*errp = strdup("out of memory");
		return NULL;
	}
	a->base = base;
	a->h = h;
	a->changed = changed;
	a->issued = issued;
	a->arg = arg;
	a->state = AS_IDLE;
	if (conf_copy(&a->c, c, errp) < 0 || account_load(a, errp) < 0)
		goto fail;
	if (!(a->timer = evtimer_new(base, on_timer, a))) {
		*errp = strdup("out of memory");
		goto fail;
	}
	a->next_check = time(NULL);
	arm_timer(a, 0);
	return a;
fail:
	acme_free(a);
	return NULL;
}

void acme_free(struct acme *a)
{
	if (!a)
		return;
	if (a->req)
		httpc_cancel(a->req);
	if (a->timer)
		event_free(a->timer);
	a->changed = NULL;
	clear_order(a);
	conf_free(&a->c);
	free(a->new_nonce);
	free(a->new_account);
	free(a->new_order);
	free(a->renewal_info);
	EVP_PKEY_free(a->account_key);
	free(a->thumbprint);
	free(a->kid);
	for (size_t i = 0; i < a->n_nonces; i++)
		free(a->nonces[i]);
	free(a->post_url);
	free(a->post_payload);
	certstore_unref(a->cert);
	free(a->replaces);
	free(a->last_error);
	free(a->cert_origin);
	free(a);
}

static void note_foreign_cert(const struct acme *a)
{
	if (a->cert_origin && strcmp(a->cert_origin, a->c.directory) != 0)
		log_info("stored certificate comes from another ACME directory, ordering a new one issued_by=%s",
			log_q(a->cert_origin));
}

void acme_set_cert(struct acme *a, struct cert_bundle *b, int temporary)
{
	if (b == a->cert && temporary == a->cert_temporary)
		return;
	certstore_ref(b);
	certstore_unref(a->cert);
	a->cert = b;
	a->cert_temporary = temporary;
	a->renew_at = b && !temporary ? acme_renewal_time(b->not_before, b->not_after) : 0;
	free(a->cert_origin);
	a->cert_origin = b && !temporary ? certstore_load_origin(a->c.state_dir) : NULL;
	note_foreign_cert(a);
}

int acme_reconfigure(struct acme *a, const struct acme_conf *c, char **errp)
{
	struct conf_copy nc;
	if (conf_copy(&nc, c, errp) < 0)
		return -1;
	int dir_changed = strcmp(nc.directory, a->c.directory) != 0;
	conf_free(&a->c);
	a->c = nc;
	if (dir_changed) {
		replace_str(&a->kid, NULL);  /* a new CA: register there */
		note_foreign_cert(a);
	}
	if (a->state == AS_IDLE || a->state == AS_BACKOFF) {
		a->failures = 0;
		a->next_check = time(NULL);
		arm_timer(a, 0);
	}
	return 0;
}

size_t acme_challenges(const struct acme *a, const struct acme_challenge **out)
{
	*out = a->chals;
	return a->n_chals;
}

static void add_time(cJSON *o, const char *key, time_t t)
{
	char buf[32];
	if (!t) {
		cJSON_AddNullToObject(o, key);
		return;
	}
	acme_format_time(t, buf, sizeof(buf));
	cJSON_AddStringToObject(o, key, buf);
}

void acme_status_json(const struct acme *a, cJSON *o)
{
	time_t next = a->state == AS_IDLE || a->state == AS_BACKOFF ? a->next_check : time(NULL);
	if (have_cert(a) && a->renew_at > next)
		next = a->renew_at;
	add_time(o, "next_renewal", next);
	if (a->ari_start) {
		cJSON *w = cJSON_AddObjectToObject(o, "ari_window");
		add_time(w, "start", a->ari_start);
		add_time(w, "end", a->ari_end);
	} else {
		cJSON_AddNullToObject(o, "ari_window");
	}
	if (a->last_error)
		cJSON_AddStringToObject(o, "last_error", a->last_error);
	else
		cJSON_AddNullToObject(o, "last_error");
	cJSON_AddStringToObject(o, "acme_state", state_names[a->state]);
}
