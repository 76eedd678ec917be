// UNIT-DEPS: acme/csr.c
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/x509v3.h>

#include "csr.h"

static const char *const names[] = { "example.test", "www.example.test", "127.0.0.1", "::1" };

/* Assert that gens holds exactly `names`: DNS names as dNSName, IP
 * literals as iPAddress, in order. */
static void check_sans(const GENERAL_NAMES *gens)
{
	assert_non_null(gens);
	assert_int_equal(sk_GENERAL_NAME_num(gens), 4);
	for (int i = 0; i < 2; i++) {
		const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
		assert_int_equal(g->type, GEN_DNS);
		assert_string_equal((const char *)ASN1_STRING_get0_data(g->d.dNSName), names[i]);
	}
	const GENERAL_NAME *v4 = sk_GENERAL_NAME_value(gens, 2), *v6 = sk_GENERAL_NAME_value(gens, 3);
	unsigned char a4[4], a6[16];
	inet_pton(AF_INET, "127.0.0.1", a4);
	inet_pton(AF_INET6, "::1", a6);
	assert_int_equal(v4->type, GEN_IPADD);
	assert_int_equal(ASN1_STRING_length(v4->d.iPAddress), 4);
	assert_memory_equal(ASN1_STRING_get0_data(v4->d.iPAddress), a4, 4);
	assert_int_equal(v6->type, GEN_IPADD);
	assert_int_equal(ASN1_STRING_length(v6->d.iPAddress), 16);
	assert_memory_equal(ASN1_STRING_get0_data(v6->d.iPAddress), a6, 16);
}

static void check_p256(EVP_PKEY *pub)
{
	char curve[32];
	assert_int_equal(EVP_PKEY_get_base_id(pub), EVP_PKEY_EC);
	assert_int_equal(EVP_PKEY_get_utf8_string_param(pub, OSSL_PKEY_PARAM_GROUP_NAME, curve, sizeof(curve), NULL), 1);
	assert_string_equal(curve, "prime256v1");
}

static void test_csr_contents(void **state)
{
	(void)state;
	EVP_PKEY *key = csr_key_new();
	char *err = NULL;
	size_t len = 0;
	unsigned char *der = csr_build_der(key, names, 4, &len, &err);
	assert_non_null(der);
	const unsigned char *p = der;
	X509_REQ *req = d2i_X509_REQ(NULL, &p, (long)len);
	assert_non_null(req);
	assert_ptr_equal(p, der + len);
	EVP_PKEY *pub = X509_REQ_get0_pubkey(req);
	check_p256(pub);
	assert_int_equal(EVP_PKEY_eq(pub, key), 1);
	assert_int_equal(X509_REQ_verify(req, pub), 1);
	assert_int_equal(X509_REQ_get_signature_nid(req), NID_ecdsa_with_SHA256);
	char cn[128];
	assert_true(X509_NAME_get_text_by_NID(X509_REQ_get_subject_name(req), NID_commonName, cn, sizeof(cn)) > 0);
	assert_string_equal(cn, "example.test");
	STACK_OF(X509_EXTENSION) *exts = X509_REQ_get_extensions(req);
	assert_int_equal(sk_X509_EXTENSION_num(exts), 1);
	GENERAL_NAMES *gens = X509V3_EXT_d2i(sk_X509_EXTENSION_value(exts, 0));
	check_sans(gens);
	GENERAL_NAMES_free(gens);
	sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
	X509_REQ_free(req);
	free(der);
	/* no names: refused with a message */
	assert_null(csr_build_der(key, names, 0, &len, &err));
	assert_non_null(err);
	free(err);
	EVP_PKEY_free(key);
}

static void test_selfsigned(void **state)
{
	(void)state;
	EVP_PKEY *key = csr_key_new();
	char *err = NULL;
	X509 *x = csr_selfsigned(key, names, 4, 365, &err);
	assert_non_null(x);
	check_p256(X509_get0_pubkey(x));
	assert_int_equal(X509_verify(x, key), 1);
	GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
	check_sans(gens);
	GENERAL_NAMES_free(gens);
	time_t now = time(NULL);
	assert_true(X509_cmp_time(X509_get0_notBefore(x), &now) < 0);
	time_t in364 = now + 364 * 86400, in366 = now + 366 * 86400;
	assert_true(X509_cmp_time(X509_get0_notAfter(x), &in364) > 0);
	assert_true(X509_cmp_time(X509_get0_notAfter(x), &in366) < 0);
	assert_int_equal(X509_check_host(x, "www.example.test", 0, 0, NULL), 1);
	assert_int_equal(X509_check_ip_asc(x, "127.0.0.1", 0), 1);
	assert_true(X509_get_extended_key_usage(x) & XKU_SSL_SERVER);
	X509_free(x);
	EVP_PKEY_free(key);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_csr_contents),
		cmocka_unit_test(test_selfsigned),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
