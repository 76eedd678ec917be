/* tls — server TLS contexts (Mozilla "intermediate" profile) and the TLS
 * manager that keeps the current context and ACME challenges in the
 * snapshot.
 *
 * Context policy (tls_ctx_new): TLS 1.2 and 1.3 only; TLS 1.2 suites ECDHE
 * (ECDSA or RSA) with AES-GCM or ChaCha20-Poly1305; TLS 1.3 default suites;
 * groups X25519, P-256, P-384; no renegotiation; the client's cipher order
 * (intermediate); ALPN answers h2 (when the connection offers it:
 * tls_offer_h2) or http/1.1 (no ALPN from the client is fine); SNI picks among the loaded certificates (exact name, then a
 * wildcard, else the first); SSL_MODE_RELEASE_BUFFERS keeps idle
 * connections small.
 *
 * Session resumption uses stateless tickets only (no server-side session
 * cache, so nothing is shared between worker threads). Ticket keys are ours,
 * not OpenSSL's per-context defaults: a `tls_ticket_keys` set holds the
 * current key (encrypts and decrypts) and the previous one (decrypts, and
 * the ticket is renewed). The manager rotates every 12 h by building a new
 * context with a new set {fresh, old current} and republishing; sets are
 * immutable and refcounted, so the worker threads read them without locks,
 * and a ticket stays usable for 12 to 24 h. */
#ifndef PMD_TLS_H
#define PMD_TLS_H

#include <stddef.h>

#include <openssl/ssl.h>

#include "config.h"

struct cert_bundle;
struct tls_ticket_keys;

/* A new set: a fresh random current key, and prev's current key (if prev)
 * as the previous one. NULL on failure. */
struct tls_ticket_keys *tls_ticket_keys_new(const struct tls_ticket_keys *prev);
void tls_ticket_keys_unref(struct tls_ticket_keys *k);   /* NULL ok */

/* A server SSL_CTX serving certs[0..n) (n >= 1; certs[0] is the default),
 * each up-ref'd and released with the context, with ticket keys `keys`
 * (up-ref'd). Caller owns one reference (SSL_CTX_free). NULL + errp. */
SSL_CTX *tls_ctx_new(struct cert_bundle *const *certs, size_t n,
	struct tls_ticket_keys *keys, char **errp);

/* Let ALPN pick h2 on this connection (before the handshake). */
void tls_offer_h2(SSL *ssl, bool on);

/* ---- TLS manager (acme/tlsmgr.c) ---- */
struct tlsmgr;
struct pmd;
struct snapshot;
struct cJSON;

/* Set up per cfg->tls_mode: files loads cert_file/key_file; self-signed
 * generates a P-256 certificate for [tls] domains (or localhost and
 * 127.0.0.1) at start; acme loads STATE_DIR/certs when valid for the
 * domains, else serves a temporary self-signed one, and starts the ACME
 * client. NULL + errp on fatal configuration problems only (e.g. files
 * unreadable in files mode). Does not publish: the caller does. */
struct tlsmgr *tlsmgr_new(struct pmd *d, char **errp);
void tlsmgr_free(struct tlsmgr *t);               /* NULL ok */
/* Fill snap->tls_ctx (one SSL_CTX reference, owned by the snapshot) and
 * snap->challenges (malloc'd copies, freed by snapshot_release). 0 / -1. */
int tlsmgr_fill_snapshot(struct tlsmgr *t, struct snapshot *snap);
/* {mode, domains, not_after, issuer, next_renewal, ari_window:{start,end},
 * last_error}; times are RFC 3339 UTC strings or null. */
struct cJSON *tlsmgr_status_json(struct tlsmgr *t);
/* SIGHUP with the new (validated) config: files mode reloads cert/key, acme
 * takes the new settings and re-checks, self-signed regenerates when the
 * domains changed. The caller republishes. 0, or -1 with errp (the current
 * certificate keeps being served). */
int tlsmgr_reload(struct tlsmgr *t, const struct pmd_config *cfg, char **errp);
/* Prometheus lines: pmd_certificate_expiry_timestamp_seconds. `evbuffer`
 * is a struct evbuffer *. */
void tlsmgr_metrics(struct tlsmgr *t, void *evbuffer);

#endif
