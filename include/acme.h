/* acme — the ACME client (RFC 8555) with ARI renewal (RFC 9773): an explicit
 * order state machine on the main event loop; all HTTP through httpc.
 *
 * The client keeps the account (P-256 key, created once, stored 0600 in
 * STATE_DIR/acme/account.key, account URL in STATE_DIR/acme/account.json,
 * reused by kid), decides when the served certificate is due, orders a new
 * one with HTTP-01, stores it (certstore) and hands it to its owner (the TLS
 * manager) through a callback. Failures are never fatal: they are logged
 * with the problem type and detail, kept for /status, and retried with
 * backoff (1 min, 10 min, 100 min, then daily, ±10 % jitter; Retry-After
 * honoured when longer). Main thread only. */
#ifndef PMD_ACME_H
#define PMD_ACME_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

struct event_base;
struct httpc;
struct cert_bundle;
struct cJSON;
struct acme;

struct acme_conf {
	const char *directory;      /* directory URL */
	const char *email;          /* "" or NULL: no contact */
	const char *ca_file;        /* extra CA for the ACME server; "" none */
	const char *profile;        /* "" or NULL: none */
	const char *state_dir;
	const char *const *domains;
	size_t n_domains;
};

struct acme_challenge {
	char *token;
	char *key_authorization;    /* token "." base64url(JWK thumbprint) */
	char *url;                  /* challenge URL (POST {} to respond) */
	char *authz;                /* its authorization URL (polled) */
};

/* The set of HTTP-01 challenges to answer changed (acme_challenges). */
typedef void (*acme_changed_fn)(void *arg);
/* A new certificate was issued and stored; `b` is borrowed (ref to keep).
 * The owner installs it and later calls acme_set_cert. */
typedef void (*acme_issued_fn)(void *arg, struct cert_bundle *b);

/* Load or create the account key and start: the first check runs on the
 * loop right away. NULL + errp when the state folder or an existing account
 * key is unusable (the only fatal problems). */
struct acme *acme_new(struct event_base *base, struct httpc *h, const struct acme_conf *c,
	acme_changed_fn changed, acme_issued_fn issued, void *arg, char **errp);
void acme_free(struct acme *a);   /* NULL ok; cancels in-flight requests */

/* The certificate being served, for scheduling and ARI `replaces`; NULL or
 * temporary: none yet, order now. Takes a reference. */
void acme_set_cert(struct acme *a, struct cert_bundle *b, int temporary);
/* New settings (reload): copied; the client re-checks at once unless an
 * order is in progress. 0 / -1 errp. */
int acme_reconfigure(struct acme *a, const struct acme_conf *c, char **errp);
/* The challenges to answer now (valid until the next changed callback). */
size_t acme_challenges(const struct acme *a, const struct acme_challenge **out);
/* Add next_renewal, ari_window {start, end} and last_error to `o`. */
void acme_status_json(const struct acme *a, struct cJSON *o);

/* ---- renewal arithmetic (acme/renew.c), pure functions ---- */
/* Without ARI: renew when a third of the lifetime is left, half for
 * certificates valid less than 10 days. */
time_t acme_renewal_time(time_t not_before, time_t not_after);
/* A uniformly random second in [start, end] given random bits; start when
 * the window is empty or inverted. */
time_t acme_ari_pick(time_t start, time_t end, uint64_t rnd);
/* Delay before retry number `failures` (1-based): 1 min, 10 min, 100 min,
 * then 1 day; ±10 % jitter from rnd. Milliseconds. */
uint64_t acme_backoff_ms(unsigned failures, uint64_t rnd);
/* RFC 3339 ("2025-01-02T03:04:05Z", fractions and offsets accepted). 0 / -1. */
int acme_parse_time(const char *s, time_t *out);
/* RFC 3339 UTC "YYYY-MM-DDTHH:MM:SSZ" into buf (>= 21 bytes). */
void acme_format_time(time_t t, char *buf, size_t cap);

#endif
