/* certstore — certificates on disk and in memory (see include/certstore.h). */
#include "certstore.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <arpa/inet.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "fsutil.h"
#include "jws.h"

#define PEM_MAX (1024 * 1024)

static void set_errf(char **errp, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_errf(char **errp, const char *fmt, ...)
{
	va_list ap;
	char *m = NULL;
	if (!errp)
		return;
	va_start(ap, fmt);
	if (vasprintf(&m, fmt, ap) < 0)
		m = NULL;
	va_end(ap);
	*errp = m;
}

struct cert_bundle *certstore_ref(struct cert_bundle *b)
{
	if (b)
		atomic_fetch_add(&b->refs, 1);
	return b;
}

void certstore_unref(struct cert_bundle *b)
{
	if (!b || atomic_fetch_sub(&b->refs, 1) != 1)
		return;
	X509_free(b->leaf);
	sk_X509_pop_free(b->chain, X509_free);
	EVP_PKEY_free(b->key);
	for (size_t i = 0; i < b->n_names; i++)
		free(b->names[i]);
	free(b->names);
	free(b);
}

static time_t asn1_time_t(const ASN1_TIME *t)
{
	struct tm tm;
	if (!t || ASN1_TIME_to_tm(t, &tm) != 1)
		return 0;
	return timegm(&tm);
}

/* Content octets of the serial's DER INTEGER (tag and length stripped). */
static int serial_bytes(X509 *x, unsigned char *out, size_t cap, size_t *lenp)
{
	unsigned char *der = NULL;
	int len = i2d_ASN1_INTEGER(X509_get0_serialNumber(x), &der);
	int rc = -1;
	if (len < 2)
		goto out;
	size_t hdr = 2;
	if (der[1] & 0x80)
		hdr += der[1] & 0x7f;
	if ((size_t)len <= hdr || (size_t)len - hdr > cap)
		goto out;
	memcpy(out, der + hdr, (size_t)len - hdr);
	*lenp = (size_t)len - hdr;
	rc = 0;
out:
	OPENSSL_free(der);
	return rc;
}

static int collect_names(struct cert_bundle *b)
{
	GENERAL_NAMES *gens = X509_get_ext_d2i(b->leaf, NID_subject_alt_name, NULL, NULL);
	int rc = -1, n = gens ? sk_GENERAL_NAME_num(gens) : 0;
	if (n > 0 && !(b->names = calloc((size_t)n, sizeof(*b->names))))
		goto out;
	for (int i = 0; i < n; i++) {
		const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
		char *s = NULL;
		if (g->type == GEN_DNS) {
			const ASN1_IA5STRING *d = g->d.dNSName;
			s = strndup((const char *)ASN1_STRING_get0_data(d), (size_t)ASN1_STRING_length(d));
		} else if (g->type == GEN_IPADD) {
			char buf[INET6_ADDRSTRLEN];
			int alen = ASN1_STRING_length(g->d.iPAddress);
			const unsigned char *a = ASN1_STRING_get0_data(g->d.iPAddress);
			if ((alen == 4 && inet_ntop(AF_INET, a, buf, sizeof(buf))) ||
			    (alen == 16 && inet_ntop(AF_INET6, a, buf, sizeof(buf))))
				s = strdup(buf);
		} else {
			continue;
		}
		if (!s)
			continue;
		b->names[b->n_names++] = s;
	}
	rc = 0;
out:
	GENERAL_NAMES_free(gens);
	return rc;
}

/* Fill the derived fields of a bundle whose leaf and key are set. */
static int bundle_fields(struct cert_bundle *b, const char *what, char **errp)
{
	const ASN1_OCTET_STRING *aki = X509_get0_authority_key_id(b->leaf);
	BIO *bio = NULL;
	if (X509_check_private_key(b->leaf, b->key) != 1) {
		set_errf(errp, "%s: the private key does not match the certificate", what);
		return -1;
	}
	b->not_before = asn1_time_t(X509_get0_notBefore(b->leaf));
	b->not_after = asn1_time_t(X509_get0_notAfter(b->leaf));
	if (!b->not_before || !b->not_after) {
		set_errf(errp, "%s: unreadable validity dates", what);
		return -1;
	}
	if (aki && (size_t)ASN1_STRING_length(aki) <= sizeof(b->aki)) {
		b->aki_len = (size_t)ASN1_STRING_length(aki);
		memcpy(b->aki, ASN1_STRING_get0_data(aki), b->aki_len);
	}
	if (serial_bytes(b->leaf, b->serial, sizeof(b->serial), &b->serial_len) < 0 ||
	    collect_names(b) < 0 || !(bio = BIO_new(BIO_s_mem()))) {
		set_errf(errp, "%s: cannot read the serial number or names", what);
		return -1;
	}
	X509_NAME_print_ex(bio, X509_get_issuer_name(b->leaf), 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB);
	int n = BIO_read(bio, b->issuer, (int)sizeof(b->issuer) - 1);
	b->issuer[n > 0 ? n : 0] = '\0';
	BIO_free(bio);
	return 0;
}

static struct cert_bundle *bundle_alloc(void)
{
	struct cert_bundle *b = calloc(1, sizeof(*b));
	if (b)
		atomic_init(&b->refs, 1);
	return b;
}

struct cert_bundle *certstore_parse(const char *pem, size_t len, EVP_PKEY *key,
	const char *what, char **errp)
{
	struct cert_bundle *b = bundle_alloc();
	BIO *bio = BIO_new_mem_buf(pem, (int)len);
	X509 *x;
	ERR_clear_error();
	if (!b || !bio || !(b->chain = sk_X509_new_null())) {
		set_errf(errp, "%s: out of memory", what);
		goto fail;
	}
	if (!(b->leaf = PEM_read_bio_X509(bio, NULL, NULL, NULL))) {
		set_errf(errp, "%s: no PEM certificate found", what);
		goto fail;
	}
	X509 *prev = b->leaf;
	while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL))) {
		if (!sk_X509_push(b->chain, x)) {
			X509_free(x);
			set_errf(errp, "%s: out of memory", what);
			goto fail;
		}
		if (X509_NAME_cmp(X509_get_issuer_name(prev), X509_get_subject_name(x)) != 0) {
			set_errf(errp, "%s: certificate %d of the chain did not issue the one before it",
				what, sk_X509_num(b->chain) + 1);
			goto fail;
		}
		prev = x;
	}
	/* the loop ends at "no more PEM blocks"; anything else is a damaged file */
	unsigned long e = ERR_peek_last_error();
	if (e && !(ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE)) {
		set_errf(errp, "%s: certificate %d is damaged or truncated", what, sk_X509_num(b->chain) + 2);
		goto fail;
	}
	ERR_clear_error();
	EVP_PKEY_up_ref(key);
	b->key = key;
	if (bundle_fields(b, what, errp) < 0)
		goto fail;
	BIO_free(bio);
	return b;
fail:
	BIO_free(bio);
	certstore_unref(b);
	return NULL;
}

struct cert_bundle *certstore_from_x509(X509 *leaf, EVP_PKEY *key, char **errp)
{
	struct cert_bundle *b = bundle_alloc();
	if (!b || !(b->chain = sk_X509_new_null())) {
		set_errf(errp, "out of memory");
		certstore_unref(b);
		return NULL;
	}
	X509_up_ref(leaf);
	b->leaf = leaf;
	EVP_PKEY_up_ref(key);
	b->key = key;
	if (bundle_fields(b, "self-signed certificate", errp) < 0) {
		certstore_unref(b);
		return NULL;
	}
	return b;
}

EVP_PKEY *certstore_key_parse(const char *pem, size_t len)
{
	BIO *bio = BIO_new_mem_buf(pem, (int)len);
	EVP_PKEY *k = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
	BIO_free(bio);
	return k;
}

char *certstore_key_pem(EVP_PKEY *key, size_t *lenp)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *out = NULL, *data;
	long n;
	if (!bio || PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL) != 1 ||
	    (n = BIO_get_mem_data(bio, &data)) <= 0 || !(out = malloc((size_t)n + 1)))
		goto out;
	memcpy(out, data, (size_t)n);
	out[n] = '\0';
	if (lenp)
		*lenp = (size_t)n;
out:
	BIO_free(bio);
	return out;
}

struct cert_bundle *certstore_load_files(const char *cert_file, const char *key_file, char **errp)
{
	size_t clen = 0, klen = 0;
	char *cpem = NULL, *kpem = NULL;
	EVP_PKEY *key = NULL;
	struct cert_bundle *b = NULL;
	int err = 0;
	if (!(cpem = fs_read_file(cert_file, PEM_MAX, &clen, errp)) ||
	    !(kpem = fs_read_file(key_file, PEM_MAX, &klen, errp))) {
		err = errno;
		goto out;
	}
	if (!(key = certstore_key_parse(kpem, klen))) {
		set_errf(errp, "%s: no PEM private key found", key_file);
		err = EINVAL;
		goto out;
	}
	if (!(b = certstore_parse(cpem, clen, key, cert_file, errp)))
		err = EINVAL;
out:
	if (kpem)
		OPENSSL_cleanse(kpem, klen);
	free(kpem);
	free(cpem);
	EVP_PKEY_free(key);
	errno = err;
	return b;
}

struct cert_bundle *certstore_load(const char *state_dir, char **errp)
{
	char cf[PATH_MAX], kf[PATH_MAX];
	snprintf(cf, sizeof(cf), "%s/certs/fullchain.pem", state_dir);
	snprintf(kf, sizeof(kf), "%s/certs/key.pem", state_dir);
	return certstore_load_files(cf, kf, errp);
}

int certstore_save(const char *state_dir, const char *chain_pem, size_t len,
	EVP_PKEY *key, char **errp)
{
	char dir[PATH_MAX], path[PATH_MAX + 16];
	size_t klen = 0;
	char *kpem = NULL;
	int rc = -1;
	snprintf(dir, sizeof(dir), "%s/certs", state_dir);
	if (fs_mkdirs(dir, 0700, errp) < 0)
		goto out;
	if (!(kpem = certstore_key_pem(key, &klen))) {
		set_errf(errp, "%s: cannot encode the private key", dir);
		goto out;
	}
	snprintf(path, sizeof(path), "%s/key.pem", dir);
	if (fs_write_atomic(path, kpem, klen, 0600, errp) < 0)
		goto out;
	snprintf(path, sizeof(path), "%s/fullchain.pem", dir);
	if (fs_write_atomic(path, chain_pem, len, 0644, errp) < 0)
		goto out;
	rc = 0;
out:
	if (kpem)
		OPENSSL_cleanse(kpem, klen);
	free(kpem);
	return rc;
}

int certstore_save_origin(const char *state_dir, const char *directory, char **errp)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/certs/directory", state_dir);
	return fs_write_atomic(path, directory, strlen(directory), 0644, errp);
}

char *certstore_load_origin(const char *state_dir)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/certs/directory", state_dir);
	char *s = fs_read_file(path, 4096, NULL, NULL);
	if (s)
		s[strcspn(s, "\r\n")] = '\0';
	return s;
}

int certstore_covers(const struct cert_bundle *b, const char *const *names, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		size_t j = 0;
		while (j < b->n_names && strcasecmp(b->names[j], names[i]) != 0)
			j++;
		if (j == b->n_names)
			return 0;
	}
	return 1;
}

char *certstore_ari_id_raw(const unsigned char *aki, size_t aki_len,
	const unsigned char *serial, size_t serial_len)
{
	char *a = jws_b64url(aki, aki_len), *s = jws_b64url(serial, serial_len), *out = NULL;
	if (a && s && asprintf(&out, "%s.%s", a, s) < 0)
		out = NULL;
	free(a);
	free(s);
	return out;
}

char *certstore_ari_id(const struct cert_bundle *b)
{
	if (!b->aki_len || !b->serial_len)
		return NULL;
	return certstore_ari_id_raw(b->aki, b->aki_len, b->serial, b->serial_len);
}
