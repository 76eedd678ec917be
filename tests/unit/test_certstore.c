// UNIT-DEPS: acme/certstore.c acme/csr.c acme/jws.c core/fsutil.c
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "certstore.h"
#include "csr.h"
#include "fsutil.h"

static char dir[64];

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof(dir), "/tmp/pmd-certstore-XXXXXX");
	return mkdtemp(dir) ? 0 : -1;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static int teardown(void **state)
{
	(void)state;
	return nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

static const char *const names[] = { "example.test", "www.example.test" };

/* A leaf for `names` with serial 0x87654321, issued by a throwaway CA (so it
 * has an authorityKeyIdentifier); PEM leaf+CA appended to *pem. */
static X509 *issue(EVP_PKEY *leaf_key, char **pem, size_t *pemlen)
{
	EVP_PKEY *ca_key = csr_key_new();
	const char *ca_name[] = { "Test CA" };
	X509 *ca = csr_selfsigned(ca_key, ca_name, 1, 10, NULL);
	X509 *x = csr_selfsigned(leaf_key, names, 2, 90, NULL);  /* then re-issued by ca */
	assert_non_null(ca);
	assert_non_null(x);
	ASN1_INTEGER *serial = ASN1_INTEGER_new();
	ASN1_INTEGER_set_uint64(serial, 0x87654321);
	X509_set_serialNumber(x, serial);
	ASN1_INTEGER_free(serial);
	X509_set_issuer_name(x, X509_get_subject_name(ca));
	X509V3_CTX ctx;
	X509V3_set_ctx(&ctx, ca, x, NULL, NULL, 0);
	X509_EXTENSION *aki = X509V3_EXT_conf_nid(NULL, &ctx, NID_authority_key_identifier, "keyid:always");
	assert_non_null(aki);
	X509_add_ext(x, aki, -1);
	X509_EXTENSION_free(aki);
	assert_true(X509_sign(x, ca_key, EVP_sha256()) > 0);
	BIO *b = BIO_new(BIO_s_mem());
	PEM_write_bio_X509(b, x);
	PEM_write_bio_X509(b, ca);
	char *data;
	long n = BIO_get_mem_data(b, &data);
	*pem = strndup(data, (size_t)n);
	*pemlen = (size_t)n;
	BIO_free(b);
	X509_free(ca);
	EVP_PKEY_free(ca_key);
	return x;
}

static void test_roundtrip(void **state)
{
	(void)state;
	EVP_PKEY *key = csr_key_new();
	char *pem, *err = NULL;
	size_t len;
	X509 *x = issue(key, &pem, &len);

	/* nothing stored yet: ENOENT */
	assert_null(certstore_load(dir, &err));
	assert_int_equal(errno, ENOENT);
	free(err);
	err = NULL;

	assert_int_equal(certstore_save(dir, pem, len, key, &err), 0);
	char path[128];
	struct stat st;
	snprintf(path, sizeof(path), "%s/certs/key.pem", dir);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	snprintf(path, sizeof(path), "%s/certs", dir);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0700);

	struct cert_bundle *b = certstore_load(dir, &err);
	assert_non_null(b);
	assert_int_equal(X509_cmp(b->leaf, x), 0);
	assert_int_equal(sk_X509_num(b->chain), 1);
	assert_int_equal(EVP_PKEY_eq(b->key, key), 1);
	assert_string_equal(b->issuer, "CN=Test CA");
	assert_int_equal(b->n_names, 2);
	assert_string_equal(b->names[1], "www.example.test");
	assert_true(b->not_after - b->not_before == 90 * 86400 + 3600);
	assert_int_equal(certstore_covers(b, names, 2), 1);
	const char *other[] = { "example.test", "api.example.test" };
	assert_int_equal(certstore_covers(b, other, 2), 0);
	const char *upper[] = { "WWW.Example.Test" };
	assert_int_equal(certstore_covers(b, upper, 1), 1);
	/* serial 0x87654321 has its high bit set: DER adds a 0x00 */
	assert_int_equal(b->serial_len, 5);
	assert_memory_equal(b->serial, "\x00\x87\x65\x43\x21", 5);
	assert_int_equal(b->aki_len, 20);
	certstore_unref(b);
	X509_free(x);
	free(pem);
	EVP_PKEY_free(key);
}

static void test_corrupt(void **state)
{
	(void)state;
	EVP_PKEY *key = csr_key_new(), *other = csr_key_new();
	char *pem, *err = NULL, path[128];
	size_t len;
	X509 *x = issue(key, &pem, &len);

	/* key and certificate that do not belong together */
	assert_int_equal(certstore_save(dir, pem, len, other, &err), 0);
	assert_null(certstore_load(dir, &err));
	assert_int_not_equal(errno, ENOENT);
	assert_non_null(strstr(err, "does not match"));
	free(err);
	err = NULL;

	/* truncated certificate file */
	assert_int_equal(certstore_save(dir, pem, len, key, &err), 0);
	snprintf(path, sizeof(path), "%s/certs/fullchain.pem", dir);
	assert_int_equal(fs_write_atomic(path, pem, len / 3, 0644, &err), 0);
	assert_null(certstore_load(dir, &err));
	assert_int_not_equal(errno, ENOENT);
	assert_non_null(strstr(err, "fullchain.pem"));
	free(err);
	err = NULL;

	/* leaf intact, issuer certificate cut in the middle */
	assert_int_equal(fs_write_atomic(path, pem, len * 3 / 4, 0644, &err), 0);
	assert_null(certstore_load(dir, &err));
	assert_non_null(strstr(err, "certificate 2 is damaged or truncated"));
	free(err);
	err = NULL;

	/* chain that does not belong to the leaf: the leaf twice */
	char *twice = malloc(2 * len);
	const char *end = strstr(pem, "-----END CERTIFICATE-----\n") + strlen("-----END CERTIFICATE-----\n");
	size_t leaf_len = (size_t)(end - pem);
	memcpy(twice, pem, leaf_len);
	memcpy(twice + leaf_len, pem, leaf_len);
	assert_int_equal(fs_write_atomic(path, twice, 2 * leaf_len, 0644, &err), 0);
	assert_null(certstore_load(dir, &err));
	assert_non_null(strstr(err, "did not issue"));
	free(err);
	err = NULL;
	free(twice);

	/* garbage key */
	assert_int_equal(certstore_save(dir, pem, len, key, &err), 0);
	snprintf(path, sizeof(path), "%s/certs/key.pem", dir);
	assert_int_equal(fs_write_atomic(path, "garbage\n", 8, 0600, &err), 0);
	assert_null(certstore_load(dir, &err));
	assert_non_null(strstr(err, "no PEM private key"));
	free(err);

	X509_free(x);
	free(pem);
	EVP_PKEY_free(key);
	EVP_PKEY_free(other);
}

static void test_key_pem(void **state)
{
	(void)state;
	EVP_PKEY *key = csr_key_new();
	size_t len;
	char *pem = certstore_key_pem(key, &len);
	assert_non_null(strstr(pem, "BEGIN PRIVATE KEY"));
	EVP_PKEY *back = certstore_key_parse(pem, len);
	assert_int_equal(EVP_PKEY_eq(back, key), 1);
	assert_null(certstore_key_parse("nope", 4));
	free(pem);
	EVP_PKEY_free(back);
	EVP_PKEY_free(key);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_roundtrip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_corrupt, setup, teardown),
		cmocka_unit_test(test_key_pem),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
