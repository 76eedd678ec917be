/* csr — X.509 objects pmd builds itself: P-256 keys, the certificate
 * signing request sent to ACME's finalize (RFC 8555 §7.4), and self-signed
 * certificates (tls mode self-signed, and the temporary certificate served
 * in acme mode until the first one is issued). No I/O. */
#ifndef PMD_CSR_H
#define PMD_CSR_H

#include <stddef.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

/* A fresh P-256 key (caller frees with EVP_PKEY_free), NULL on failure. */
EVP_PKEY *csr_key_new(void);

/* A DER CSR signed with `key` (SHA-256) whose subjectAltName holds every
 * name (dNSName, or iPAddress for IPv4/IPv6 literals) and whose subject CN
 * is the first name when it fits in 64 bytes. Returns the malloc'd DER
 * (length in *lenp), or NULL with *errp set. */
unsigned char *csr_build_der(EVP_PKEY *key, const char *const *names, size_t n,
	size_t *lenp, char **errp);

/* A self-signed certificate for `names` (as in csr_build_der) valid from an
 * hour ago for `days` days, serverAuth, signed with `key`. NULL + errp. */
X509 *csr_selfsigned(EVP_PKEY *key, const char *const *names, size_t n, int days, char **errp);

#endif
