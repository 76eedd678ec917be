/* jws — the cryptographic pieces of ACME requests (RFC 8555 §6.2, RFC 7515,
 * RFC 7518 §3.4, RFC 7638): base64url, the P-256 account key's JWK and its
 * thumbprint, and ES256 flattened-JSON JWS objects. No I/O. */
#ifndef PMD_JWS_H
#define PMD_JWS_H

#include <stddef.h>

#include <openssl/evp.h>

/* base64url without padding. Returns a malloc'd NUL-terminated string, or
 * NULL on allocation failure. */
char *jws_b64url(const void *data, size_t len);
/* Decode base64url (padding and whitespace refused). Returns a malloc'd
 * buffer (length in *outlen, NUL-terminated for convenience) or NULL when
 * the input is not base64url. */
unsigned char *jws_b64url_decode(const char *s, size_t len, size_t *outlen);

/* The public JWK of a P-256 key in the canonical form of RFC 7638 §3
 * (members crv, kty, x, y in that order, no whitespace), malloc'd; NULL if
 * the key is not P-256. */
char *jws_jwk_json(EVP_PKEY *key);
/* base64url(SHA-256(canonical JWK)), malloc'd; NULL on failure. */
char *jws_thumbprint(EVP_PKEY *key);

/* ES256: sign `len` bytes with a P-256 key; the signature is the raw
 * 64-byte r||s of RFC 7518 §3.4, not DER. 0 / -1. */
int jws_sign_es256(EVP_PKEY *key, const void *data, size_t len, unsigned char sig[64]);

/* A flattened JWS JSON serialization (RFC 8555 §6.2), malloc'd, or NULL.
 * kid NULL: the protected header carries the "jwk" (newAccount); else "kid".
 * payload NULL: empty payload (POST-as-GET); else the JSON text to send. */
char *jws_build(EVP_PKEY *key, const char *kid, const char *nonce, const char *url,
	const char *payload);

#endif
