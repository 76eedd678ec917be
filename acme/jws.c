/* jws — base64url, JWK, RFC 7638 thumbprint, ES256 JWS (see include/jws.h). */
#include "jws.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/sha.h>

static const char b64url_alphabet[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

char *jws_b64url(const void *data, size_t len)
{
	const unsigned char *p = data;
	char *out = malloc(len / 3 * 4 + 5), *o = out;
	if (!out)
		return NULL;
	size_t i = 0;
	for (; i + 3 <= len; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
		*o++ = b64url_alphabet[v >> 18 & 63];
		*o++ = b64url_alphabet[v >> 12 & 63];
		*o++ = b64url_alphabet[v >> 6 & 63];
		*o++ = b64url_alphabet[v & 63];
	}
	if (len - i == 1) {
		uint32_t v = (uint32_t)p[i] << 16;
		*o++ = b64url_alphabet[v >> 18 & 63];
		*o++ = b64url_alphabet[v >> 12 & 63];
	} else if (len - i == 2) {
		uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
		*o++ = b64url_alphabet[v >> 18 & 63];
		*o++ = b64url_alphabet[v >> 12 & 63];
		*o++ = b64url_alphabet[v >> 6 & 63];
	}
	*o = '\0';
	return out;
}

static int b64url_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '-')
		return 62;
	if (c == '_')
		return 63;
	return -1;
}

unsigned char *jws_b64url_decode(const char *s, size_t len, size_t *outlen)
{
	if (len % 4 == 1)
		return NULL;
	unsigned char *out = malloc(len / 4 * 3 + 3), *o = out;
	if (!out)
		return NULL;
	uint32_t acc = 0;
	int bits = 0;
	for (size_t i = 0; i < len; i++) {
		int v = b64url_value((unsigned char)s[i]);
		if (v < 0) {
			free(out);
			return NULL;
		}
		acc = acc << 6 | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			*o++ = (unsigned char)(acc >> bits);
			acc &= (1u << bits) - 1;
		}
	}
	/* leftover bits must be zero (canonical encoding) */
	if (acc != 0) {
		free(out);
		return NULL;
	}
	*o = '\0';
	*outlen = (size_t)(o - out);
	return out;
}

/* The 32-byte big-endian X and Y coordinates of a P-256 key. 0 / -1. */
static int ec_point_xy(EVP_PKEY *key, unsigned char x[32], unsigned char y[32])
{
	char curve[32];
	BIGNUM *bx = NULL, *by = NULL;
	int rc = -1;
	if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, curve, sizeof(curve), NULL) != 1 ||
	    strcmp(curve, "prime256v1") != 0)
		goto out;
	if (EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_EC_PUB_X, &bx) != 1 ||
	    EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_EC_PUB_Y, &by) != 1)
		goto out;
	if (BN_bn2binpad(bx, x, 32) != 32 || BN_bn2binpad(by, y, 32) != 32)
		goto out;
	rc = 0;
out:
	BN_free(bx);
	BN_free(by);
	return rc;
}

/* cJSON prints members in insertion order, which gives the lexicographic
 * order RFC 7638 requires when inserted as below. */
static cJSON *jwk_object(EVP_PKEY *key)
{
	unsigned char x[32], y[32];
	char *bx = NULL, *by = NULL;
	cJSON *o = NULL;
	if (ec_point_xy(key, x, y) < 0 || !(bx = jws_b64url(x, 32)) || !(by = jws_b64url(y, 32)))
		goto out;
	if (!(o = cJSON_CreateObject()) ||
	    !cJSON_AddStringToObject(o, "crv", "P-256") || !cJSON_AddStringToObject(o, "kty", "EC") ||
	    !cJSON_AddStringToObject(o, "x", bx) || !cJSON_AddStringToObject(o, "y", by)) {
		cJSON_Delete(o);
		o = NULL;
	}
out:
	free(bx);
	free(by);
	return o;
}

char *jws_jwk_json(EVP_PKEY *key)
{
	cJSON *o = jwk_object(key);
	char *s = o ? cJSON_PrintUnformatted(o) : NULL;
	cJSON_Delete(o);
	return s;
}

char *jws_thumbprint(EVP_PKEY *key)
{
	unsigned char md[SHA256_DIGEST_LENGTH];
	char *jwk = jws_jwk_json(key);
	if (!jwk)
		return NULL;
	SHA256((const unsigned char *)jwk, strlen(jwk), md);
	free(jwk);
	return jws_b64url(md, sizeof(md));
}

int jws_sign_es256(EVP_PKEY *key, const void *data, size_t len, unsigned char sig[64])
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned char der[80];
	size_t derlen = sizeof(der);
	ECDSA_SIG *es = NULL;
	int rc = -1;
	if (!md || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) != 1 ||
	    EVP_DigestSign(md, der, &derlen, data, len) != 1)
		goto out;
	const unsigned char *p = der;
	if (!(es = d2i_ECDSA_SIG(NULL, &p, (long)derlen)))
		goto out;
	if (BN_bn2binpad(ECDSA_SIG_get0_r(es), sig, 32) != 32 ||
	    BN_bn2binpad(ECDSA_SIG_get0_s(es), sig + 32, 32) != 32)
		goto out;
	rc = 0;
out:
	ECDSA_SIG_free(es);
	EVP_MD_CTX_free(md);
	return rc;
}

char *jws_build(EVP_PKEY *key, const char *kid, const char *nonce, const char *url,
	const char *payload)
{
	cJSON *hdr = cJSON_CreateObject(), *jws = cJSON_CreateObject(), *jwk = NULL;
	char *hdr_json = NULL, *b64_hdr = NULL, *b64_payload = NULL, *input = NULL, *b64_sig = NULL;
	char *out = NULL;
	unsigned char sig[64];
	if (!hdr || !jws || !cJSON_AddStringToObject(hdr, "alg", "ES256"))
		goto out;
	if (kid) {
		if (!cJSON_AddStringToObject(hdr, "kid", kid))
			goto out;
	} else {
		if (!(jwk = jwk_object(key)))
			goto out;
		cJSON_AddItemToObject(hdr, "jwk", jwk);
	}
	if (!cJSON_AddStringToObject(hdr, "nonce", nonce) || !cJSON_AddStringToObject(hdr, "url", url))
		goto out;
	if (!(hdr_json = cJSON_PrintUnformatted(hdr)) ||
	    !(b64_hdr = jws_b64url(hdr_json, strlen(hdr_json))) ||
	    !(b64_payload = payload ? jws_b64url(payload, strlen(payload)) : strdup("")))
		goto out;
	size_t ilen = strlen(b64_hdr) + 1 + strlen(b64_payload) + 1;
	if (!(input = malloc(ilen)))
		goto out;
	snprintf(input, ilen, "%s.%s", b64_hdr, b64_payload);
	if (jws_sign_es256(key, input, ilen - 1, sig) < 0 || !(b64_sig = jws_b64url(sig, sizeof(sig))))
		goto out;
	if (!cJSON_AddStringToObject(jws, "protected", b64_hdr) ||
	    !cJSON_AddStringToObject(jws, "payload", b64_payload) ||
	    !cJSON_AddStringToObject(jws, "signature", b64_sig))
		goto out;
	out = cJSON_PrintUnformatted(jws);
out:
	cJSON_Delete(hdr);
	cJSON_Delete(jws);
	free(hdr_json);
	free(b64_hdr);
	free(b64_payload);
	free(input);
	free(b64_sig);
	return out;
}
