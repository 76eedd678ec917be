// UNIT-DEPS: acme/jws.c
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/pem.h>

#include "jws.h"

/* A fixed P-256 key. Its JWK and thumbprint below were derived
 * independently: `openssl ec -text` for the public point, then python3
 * json.dumps(sort_keys, compact) + hashlib.sha256 + urlsafe_b64encode. */
static const char fixed_key_pem[] =
	"-----BEGIN PRIVATE KEY-----\n"
	"MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgR7Oq5Z5cL0y581I1\n"
	"6g01D8JPXcXiu9yfDMh0CoY64puhRANCAAQnrPsZ8ey29tKBxpcH7NM8iiBUdh8m\n"
	"FmitJiRpAX5wBaNdPUL3/JU15o/ku0KMXImi69hcx5iWu8Ekdi8Hf0hG\n"
	"-----END PRIVATE KEY-----\n";
static const char fixed_jwk[] =
	"{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"J6z7GfHstvbSgcaXB-zTPIogVHYfJhZorSYkaQF-cAU\","
	"\"y\":\"o109Qvf8lTXmj-S7QoxciaLr2FzHmJa7wSR2Lwd_SEY\"}";
static const char fixed_thumbprint[] = "-qZIOA5rFE8AyIySONmrIsdmxmemAVWSHS1h8e5iImc";

static EVP_PKEY *fixed_key(void)
{
	BIO *b = BIO_new_mem_buf(fixed_key_pem, -1);
	EVP_PKEY *k = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
	BIO_free(b);
	assert_non_null(k);
	return k;
}

static void check_enc(const void *in, size_t len, const char *want)
{
	char *s = jws_b64url(in, len);
	assert_string_equal(s, want);
	size_t olen = 99;
	unsigned char *d = jws_b64url_decode(s, strlen(s), &olen);
	assert_non_null(d);
	assert_int_equal(olen, len);
	if (len)
		assert_memory_equal(d, in, len);
	free(d);
	free(s);
}

static void test_b64url(void **state)
{
	(void)state;
	/* RFC 4648 §10 vectors, minus padding */
	check_enc("", 0, "");
	check_enc("f", 1, "Zg");
	check_enc("fo", 2, "Zm8");
	check_enc("foo", 3, "Zm9v");
	check_enc("foob", 4, "Zm9vYg");
	check_enc("fooba", 5, "Zm9vYmE");
	check_enc("foobar", 6, "Zm9vYmFy");
	/* the url-safe alphabet: 0xfb 0xff -> "+/8" in base64 */
	check_enc("\xfb\xff", 2, "-_8");
	check_enc("\x03\xe0", 2, "A-A");
	size_t n;
	assert_null(jws_b64url_decode("Zg==", 4, &n));  /* padding refused */
	assert_null(jws_b64url_decode("Zh", 2, &n));    /* non-zero leftover bits */
	assert_null(jws_b64url_decode("Z", 1, &n));     /* impossible length */
	assert_null(jws_b64url_decode("a+b/", 4, &n));  /* base64, not base64url */
}

static void test_jwk_thumbprint(void **state)
{
	(void)state;
	EVP_PKEY *k = fixed_key();
	char *jwk = jws_jwk_json(k), *tp = jws_thumbprint(k);
	assert_string_equal(jwk, fixed_jwk);
	assert_string_equal(tp, fixed_thumbprint);
	free(jwk);
	free(tp);
	EVP_PKEY_free(k);
	/* not P-256: refused */
	EVP_PKEY *p384 = EVP_EC_gen("P-384");
	assert_null(jws_jwk_json(p384));
	EVP_PKEY_free(p384);
}

/* Verify a raw r||s ES256 signature by converting it back to DER. */
static int verify_raw(EVP_PKEY *k, const void *data, size_t len, const unsigned char *sig, size_t siglen)
{
	if (siglen != 64)
		return 0;
	ECDSA_SIG *es = ECDSA_SIG_new();
	BIGNUM *r = BN_bin2bn(sig, 32, NULL), *s = BN_bin2bn(sig + 32, 32, NULL);
	ECDSA_SIG_set0(es, r, s);
	unsigned char *der = NULL;
	int dlen = i2d_ECDSA_SIG(es, &der);
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	int ok = EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, k) == 1 &&
		 EVP_DigestVerify(md, der, (size_t)dlen, data, len) == 1;
	EVP_MD_CTX_free(md);
	OPENSSL_free(der);
	ECDSA_SIG_free(es);
	return ok;
}

static void test_sign_shape(void **state)
{
	(void)state;
	EVP_PKEY *k = fixed_key();
	unsigned char sig[64];
	for (int i = 0; i < 20; i++) {  /* r or s with leading zero bytes must still be 32 bytes */
		char msg[32];
		snprintf(msg, sizeof(msg), "message %d", i);
		assert_int_equal(jws_sign_es256(k, msg, strlen(msg), sig), 0);
		assert_true(verify_raw(k, msg, strlen(msg), sig, 64));
		assert_false(verify_raw(k, "other", 5, sig, 64));
	}
	EVP_PKEY_free(k);
}

static char *decode_str(const char *b64)
{
	size_t n;
	return (char *)jws_b64url_decode(b64, strlen(b64), &n);
}

static void check_jws(EVP_PKEY *k, const char *kid, const char *payload)
{
	char *s = jws_build(k, kid, "NONCE1", "https://ca.test/new-order", payload);
	assert_non_null(s);
	cJSON *o = cJSON_Parse(s);
	assert_non_null(o);
	const char *prot = cJSON_GetObjectItem(o, "protected")->valuestring;
	const char *pay = cJSON_GetObjectItem(o, "payload")->valuestring;
	const char *sig = cJSON_GetObjectItem(o, "signature")->valuestring;
	char *hdr = decode_str(prot);
	cJSON *h = cJSON_Parse(hdr);
	assert_string_equal(cJSON_GetObjectItem(h, "alg")->valuestring, "ES256");
	assert_string_equal(cJSON_GetObjectItem(h, "nonce")->valuestring, "NONCE1");
	assert_string_equal(cJSON_GetObjectItem(h, "url")->valuestring, "https://ca.test/new-order");
	if (kid) {
		assert_string_equal(cJSON_GetObjectItem(h, "kid")->valuestring, kid);
		assert_null(cJSON_GetObjectItem(h, "jwk"));
	} else {
		char *jwk = cJSON_PrintUnformatted(cJSON_GetObjectItem(h, "jwk"));
		assert_string_equal(jwk, fixed_jwk);
		assert_null(cJSON_GetObjectItem(h, "kid"));
		free(jwk);
	}
	if (payload) {
		char *p = decode_str(pay);
		assert_string_equal(p, payload);
		free(p);
	} else {
		assert_string_equal(pay, "");  /* POST-as-GET */
	}
	size_t siglen;
	unsigned char *raw = jws_b64url_decode(sig, strlen(sig), &siglen);
	assert_int_equal(siglen, 64);
	char input[4096];
	snprintf(input, sizeof(input), "%s.%s", prot, pay);
	assert_true(verify_raw(k, input, strlen(input), raw, siglen));
	free(raw);
	free(hdr);
	cJSON_Delete(h);
	cJSON_Delete(o);
	free(s);
}

static void test_jws_build(void **state)
{
	(void)state;
	EVP_PKEY *k = fixed_key();
	check_jws(k, NULL, "{\"termsOfServiceAgreed\":true}");
	check_jws(k, "https://ca.test/acct/1", "{}");
	check_jws(k, "https://ca.test/acct/1", NULL);
	EVP_PKEY_free(k);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_b64url),
		cmocka_unit_test(test_jwk_thumbprint),
		cmocka_unit_test(test_sign_shape),
		cmocka_unit_test(test_jws_build),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
