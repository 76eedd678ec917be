/* csr — P-256 keys, CSRs and self-signed certificates (see include/csr.h). */
#include "csr.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>
#include <openssl/x509v3.h>

EVP_PKEY *csr_key_new(void)
{
	return EVP_EC_gen("P-256");
}

static void set_err(char **errp, const char *what, const char *name)
{
	char buf[320];
	if (!errp)
		return;
	snprintf(buf, sizeof(buf), "%s%s%s", what, name ? ": " : "", name ? name : "");
	*errp = strdup(buf);
}

/* The subjectAltName extension value for names; NULL + errp. */
static GENERAL_NAMES *san_names(const char *const *names, size_t n, char **errp)
{
	GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
	if (!gens || n == 0) {
		set_err(errp, n ? "out of memory" : "a certificate needs at least one name", NULL);
		goto fail;
	}
	for (size_t i = 0; i < n; i++) {
		GENERAL_NAME *g = GENERAL_NAME_new();
		ASN1_OCTET_STRING *ip = a2i_IPADDRESS(names[i]);
		if (!g) {
			ASN1_OCTET_STRING_free(ip);
			set_err(errp, "out of memory", NULL);
			goto fail;
		}
		if (ip) {
			GENERAL_NAME_set0_value(g, GEN_IPADD, ip);
		} else {
			ASN1_IA5STRING *s = ASN1_IA5STRING_new();
			if (!s || !ASN1_STRING_set(s, names[i], (int)strlen(names[i]))) {
				ASN1_IA5STRING_free(s);
				GENERAL_NAME_free(g);
				set_err(errp, "out of memory", NULL);
				goto fail;
			}
			GENERAL_NAME_set0_value(g, GEN_DNS, s);
		}
		if (!sk_GENERAL_NAME_push(gens, g)) {
			GENERAL_NAME_free(g);
			set_err(errp, "out of memory", NULL);
			goto fail;
		}
	}
	return gens;
fail:
	GENERAL_NAMES_free(gens);
	return NULL;
}

/* A subject name with CN = first name when it fits (RFC 5280 ub-common-name). */
static X509_NAME *subject_name(const char *const *names, size_t n)
{
	X509_NAME *nm = X509_NAME_new();
	if (nm && n > 0 && strlen(names[0]) <= 64 &&
	    !X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC, (const unsigned char *)names[0], -1, -1, 0)) {
		X509_NAME_free(nm);
		return NULL;
	}
	return nm;
}

unsigned char *csr_build_der(EVP_PKEY *key, const char *const *names, size_t n,
	size_t *lenp, char **errp)
{
	X509_REQ *req = X509_REQ_new();
	X509_NAME *subj = NULL;
	GENERAL_NAMES *gens = NULL;
	STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
	X509_EXTENSION *ext = NULL;
	unsigned char *der = NULL, *p;
	int len;
	if (!req || !exts || !(subj = subject_name(names, n))) {
		set_err(errp, "out of memory", NULL);
		goto out;
	}
	if (!(gens = san_names(names, n, errp)))
		goto out;
	if (!X509_REQ_set_version(req, 0) || !X509_REQ_set_subject_name(req, subj) ||
	    !X509_REQ_set_pubkey(req, key) ||
	    !(ext = X509V3_EXT_i2d(NID_subject_alt_name, 0, gens)) ||
	    !sk_X509_EXTENSION_push(exts, ext)) {
		X509_EXTENSION_free(ext);
		set_err(errp, "cannot build the certificate request", NULL);
		goto out;
	}
	if (!X509_REQ_add_extensions(req, exts) || X509_REQ_sign(req, key, EVP_sha256()) <= 0) {
		set_err(errp, "cannot sign the certificate request", NULL);
		goto out;
	}
	if ((len = i2d_X509_REQ(req, NULL)) <= 0 || !(der = malloc((size_t)len))) {
		set_err(errp, "cannot encode the certificate request", NULL);
		goto out;
	}
	p = der;
	i2d_X509_REQ(req, &p);
	*lenp = (size_t)len;
out:
	sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
	GENERAL_NAMES_free(gens);
	X509_NAME_free(subj);
	X509_REQ_free(req);
	return der;
}

/* Add extension nid with a config-syntax value (fixed strings only). */
static int add_ext(X509 *x, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509V3_set_ctx_nodb(&ctx);
	X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
	X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
	int ok = e && X509_add_ext(x, e, -1);
	X509_EXTENSION_free(e);
	return ok ? 0 : -1;
}

X509 *csr_selfsigned(EVP_PKEY *key, const char *const *names, size_t n, int days, char **errp)
{
	X509 *x = X509_new();
	X509_NAME *subj = NULL;
	GENERAL_NAMES *gens = NULL;
	ASN1_INTEGER *serial = NULL;
	BIGNUM *bn = NULL;
	unsigned char rnd[16];
	if (!x || !(subj = subject_name(names, n))) {
		set_err(errp, "out of memory", NULL);
		goto fail;
	}
	if (!(gens = san_names(names, n, errp)))
		goto fail;
	if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
		set_err(errp, "no randomness for the certificate serial", NULL);
		goto fail;
	}
	rnd[0] &= 0x7f; /* positive */
	if (!(bn = BN_bin2bn(rnd, sizeof(rnd), NULL)) || !(serial = BN_to_ASN1_INTEGER(bn, NULL)) ||
	    !X509_set_version(x, 2) || !X509_set_serialNumber(x, serial) ||
	    !X509_set_subject_name(x, subj) || !X509_set_issuer_name(x, subj) ||
	    !X509_gmtime_adj(X509_getm_notBefore(x), -3600) ||
	    !X509_gmtime_adj(X509_getm_notAfter(x), (long)days * 86400) ||
	    !X509_set_pubkey(x, key) ||
	    !X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, X509V3_ADD_DEFAULT) ||
	    add_ext(x, NID_basic_constraints, "critical,CA:FALSE") < 0 ||
	    add_ext(x, NID_key_usage, "critical,digitalSignature") < 0 ||
	    add_ext(x, NID_ext_key_usage, "serverAuth") < 0 ||
	    add_ext(x, NID_subject_key_identifier, "hash") < 0 ||
	    X509_sign(x, key, EVP_sha256()) <= 0) {
		set_err(errp, "cannot build the self-signed certificate for", names[0]);
		goto fail;
	}
	goto out;
fail:
	X509_free(x);
	x = NULL;
out:
	BN_free(bn);
	ASN1_INTEGER_free(serial);
	GENERAL_NAMES_free(gens);
	X509_NAME_free(subj);
	return x;
}
