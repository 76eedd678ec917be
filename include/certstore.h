/* certstore — certificates on disk and in memory.
 *
 * On disk (acme mode): STATE_DIR/certs/fullchain.pem (leaf then issuers, as
 * the CA sent it) and STATE_DIR/certs/key.pem (0600), each replaced
 * atomically (fs_write_atomic: temp, fsync, rename, fsync dir). The key is
 * written first; a crash between the two renames leaves a pair that does not
 * match, which certstore_load reports like any other corruption, and the
 * caller orders a new certificate.
 *
 * In memory: a refcounted, immutable `struct cert_bundle` (leaf, chain, key
 * and the fields renewal needs). Bundles are shared by the TLS contexts the
 * proxy workers hold, so ref/unref are atomic; nothing writes a bundle after
 * it was returned. */
#ifndef PMD_CERTSTORE_H
#define PMD_CERTSTORE_H

#include <stdatomic.h>
#include <stddef.h>
#include <sys/types.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

struct cert_bundle {
	atomic_int refs;
	X509 *leaf;
	STACK_OF(X509) *chain;       /* issuers after the leaf; maybe empty */
	EVP_PKEY *key;
	time_t not_before, not_after;
	char issuer[256];            /* RFC 2253 text of the issuer name */
	char **names;                /* subjectAltName dNSName / iPAddress text */
	size_t n_names;
	unsigned char aki[64];       /* authorityKeyIdentifier keyIdentifier */
	size_t aki_len;              /* 0 when absent */
	unsigned char serial[64];    /* DER content octets of the serial */
	size_t serial_len;
};

/* Build a bundle from PEM certificates (leaf first) and a key; the key is
 * up-ref'd (caller keeps its reference). Checks that the key matches the
 * leaf. NULL + errp ("cert.pem: no certificate found", ...); `what` names
 * the source in messages. */
struct cert_bundle *certstore_parse(const char *pem, size_t len, EVP_PKEY *key,
	const char *what, char **errp);
/* Bundle around an existing leaf (up-ref'd) and key (up-ref'd), no chain. */
struct cert_bundle *certstore_from_x509(X509 *leaf, EVP_PKEY *key, char **errp);
/* Load PEM files: cert_file (leaf + chain) and key_file. NULL + errp. */
struct cert_bundle *certstore_load_files(const char *cert_file, const char *key_file, char **errp);
/* Load STATE_DIR/certs. NULL + errp; errno ENOENT when no certificate was
 * ever stored (as opposed to a corrupted one). */
struct cert_bundle *certstore_load(const char *state_dir, char **errp);
/* Store the PEM chain and key under STATE_DIR/certs (created 0700). 0/-1 errp. */
/* The ACME directory URL a stored certificate was issued by, kept in
 * STATE_DIR/certs/directory beside it: save is atomic (0/-1 errp); load
 * returns a malloc'd string or NULL when none was recorded. */
int certstore_save_origin(const char *state_dir, const char *directory, char **errp);
char *certstore_load_origin(const char *state_dir);
int certstore_save(const char *state_dir, const char *chain_pem, size_t len,
	EVP_PKEY *key, char **errp);

struct cert_bundle *certstore_ref(struct cert_bundle *b);
void certstore_unref(struct cert_bundle *b);   /* NULL ok */

/* 1 when every name is among the bundle's SANs (case-insensitive), else 0. */
int certstore_covers(const struct cert_bundle *b, const char *const *names, size_t n);

/* ARI certificate identifier (RFC 9773 §4.1):
 * base64url(AKI keyIdentifier) "." base64url(serial DER content octets).
 * malloc'd; NULL when the certificate has no AKI. */
char *certstore_ari_id(const struct cert_bundle *b);
char *certstore_ari_id_raw(const unsigned char *aki, size_t aki_len,
	const unsigned char *serial, size_t serial_len);

/* PKCS#8 PEM of a private key, malloc'd (length in *lenp), or NULL. */
char *certstore_key_pem(EVP_PKEY *key, size_t *lenp);
/* A private key from PEM text; NULL if none. */
EVP_PKEY *certstore_key_parse(const char *pem, size_t len);

#endif
