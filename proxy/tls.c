/* tls — server SSL_CTX construction and ticket keys (see include/tls.h). */
#include "tls.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/rand.h>

#include "certstore.h"

#define TLS12_CIPHERS \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:" \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:" \
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define TLS13_SUITES "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
#define TLS_GROUPS "X25519:P-256:P-384"

struct ticket_key {
	unsigned char name[16];
	unsigned char aes[32];
	unsigned char hmac[32];
};

struct tls_ticket_keys {
	atomic_int refs;
	struct ticket_key cur, prev;
	int has_prev;
};

/* What a context references: certificates for SNI, ticket keys. Freed with
 * the context (ex_data free callback), possibly on a worker thread. */
struct ctx_data {
	struct tls_ticket_keys *keys;
	size_t n;
	struct cert_bundle *certs[];
};

static int ctx_index = -1;
static pthread_once_t ctx_index_once = PTHREAD_ONCE_INIT;

static void ctx_data_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
	(void)parent; (void)ad; (void)idx; (void)argl; (void)argp;
	struct ctx_data *cd = ptr;
	if (!cd)
		return;
	for (size_t i = 0; i < cd->n; i++)
		certstore_unref(cd->certs[i]);
	tls_ticket_keys_unref(cd->keys);
	free(cd);
}

static void ctx_index_init(void)
{
	ctx_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, ctx_data_free);
}

struct tls_ticket_keys *tls_ticket_keys_new(const struct tls_ticket_keys *prev)
{
	struct tls_ticket_keys *k = calloc(1, sizeof(*k));
	if (!k)
		return NULL;
	atomic_init(&k->refs, 1);
	if (RAND_bytes((unsigned char *)&k->cur, sizeof(k->cur)) != 1) {
		free(k);
		return NULL;
	}
	if (prev) {
		k->prev = prev->cur;
		k->has_prev = 1;
	}
	return k;
}

void tls_ticket_keys_unref(struct tls_ticket_keys *k)
{
	if (!k || atomic_fetch_sub(&k->refs, 1) != 1)
		return;
	OPENSSL_cleanse(k, sizeof(*k));
	free(k);
}

static int ticket_init(const struct ticket_key *k, unsigned char *iv, EVP_CIPHER_CTX *cctx,
	EVP_MAC_CTX *hctx, int enc)
{
	OSSL_PARAM params[] = {
		OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)k->hmac, sizeof(k->hmac)),
		OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
		OSSL_PARAM_construct_end(),
	};
	if (EVP_MAC_CTX_set_params(hctx, params) != 1)
		return -1;
	if (enc)
		return EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv) == 1 ? 0 : -1;
	return EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv) == 1 ? 0 : -1;
}

/* OpenSSL's ticket key callback: 1 ok, 2 ok and renew the ticket (made with
 * the previous key), 0 unknown key (full handshake), -1 error. */
static int ticket_cb(SSL *ssl, unsigned char key_name[16], unsigned char *iv,
	EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int enc)
{
	const struct ctx_data *cd = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ctx_index);
	if (!cd || !cd->keys)
		return -1;
	const struct tls_ticket_keys *k = cd->keys;
	if (enc) {
		if (RAND_bytes(iv, EVP_CIPHER_get_iv_length(EVP_aes_256_cbc())) != 1)
			return -1;
		memcpy(key_name, k->cur.name, 16);
		return ticket_init(&k->cur, iv, cctx, hctx, 1) == 0 ? 1 : -1;
	}
	if (memcmp(key_name, k->cur.name, 16) == 0)
		return ticket_init(&k->cur, iv, cctx, hctx, 0) == 0 ? 1 : -1;
	if (k->has_prev && memcmp(key_name, k->prev.name, 16) == 0)
		return ticket_init(&k->prev, iv, cctx, hctx, 0) == 0 ? 2 : -1;
	return 0;
}

static int alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
	const unsigned char *in, unsigned int inlen, void *arg)
{
	(void)arg;
	/* server preference: h2 first when offered (tls_offer_h2) */
	static const unsigned char both[] = "\x02h2\x08http/1.1";
	const unsigned char *ours = SSL_get_app_data(ssl) ? both : both + 3;
	unsigned ourlen = SSL_get_app_data(ssl) ? sizeof(both) - 1 : sizeof(both) - 4;
	unsigned char *sel = NULL;
	if (SSL_select_next_proto(&sel, outlen, ours, ourlen, in, inlen) != OPENSSL_NPN_NEGOTIATED)
		return SSL_TLSEXT_ERR_NOACK;
	*out = sel;
	return SSL_TLSEXT_ERR_OK;
}

void tls_offer_h2(SSL *ssl, bool on)
{
	static char mark;
	SSL_set_app_data(ssl, on ? &mark : NULL);
}

/* Does `name` (from SNI) match `pattern` (a SAN): exactly, or through a
 * leading "*." covering exactly one label. */
static int name_match(const char *pattern, const char *name, int wildcard)
{
	if (!wildcard)
		return strcasecmp(pattern, name) == 0;
	if (strncmp(pattern, "*.", 2) != 0)
		return 0;
	const char *dot = strchr(name, '.');
	return dot && dot != name && strcasecmp(pattern + 1, dot) == 0;
}

static int sni_cb(SSL *ssl, int *alert, void *arg)
{
	(void)alert; (void)arg;
	const struct ctx_data *cd = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ctx_index);
	const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
	if (!cd || !name || cd->n < 2)
		return SSL_TLSEXT_ERR_OK;
	for (int wild = 0; wild < 2; wild++)
		for (size_t i = 0; i < cd->n; i++)
			for (size_t j = 0; j < cd->certs[i]->n_names; j++)
				if (name_match(cd->certs[i]->names[j], name, wild)) {
					const struct cert_bundle *b = cd->certs[i];
					if (i > 0 && SSL_use_cert_and_key(ssl, b->leaf, b->key, b->chain, 1) != 1)
						return SSL_TLSEXT_ERR_ALERT_FATAL;
					return SSL_TLSEXT_ERR_OK;
				}
	return SSL_TLSEXT_ERR_OK;
}

static char *ssl_err(const char *what)
{
	char buf[256], *m = NULL;
	unsigned long e = ERR_get_error();
	ERR_error_string_n(e, buf, sizeof(buf));
	ERR_clear_error();
	if (asprintf(&m, "%s: %s", what, e ? buf : "unknown error") < 0)
		m = NULL;
	return m;
}

SSL_CTX *tls_ctx_new(struct cert_bundle *const *certs, size_t n,
	struct tls_ticket_keys *keys, char **errp)
{
	SSL_CTX *ctx = NULL;
	struct ctx_data *cd = NULL;
	const char *step = "out of memory";
	pthread_once(&ctx_index_once, ctx_index_init);
	if (n == 0 || ctx_index < 0 || !(ctx = SSL_CTX_new(TLS_server_method())))
		goto fail;
	if (!(cd = calloc(1, sizeof(*cd) + n * sizeof(cd->certs[0]))))
		goto fail;
	for (size_t i = 0; i < n; i++)
		cd->certs[cd->n++] = certstore_ref(certs[i]);
	if (keys) {
		atomic_fetch_add(&keys->refs, 1);
		cd->keys = keys;
	}
	if (!SSL_CTX_set_ex_data(ctx, ctx_index, cd))
		goto fail;
	cd = NULL; /* owned by ctx */
	step = "TLS policy";
	if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
	    !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) ||
	    !SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS) ||
	    !SSL_CTX_set_ciphersuites(ctx, TLS13_SUITES) ||
	    !SSL_CTX_set1_groups_list(ctx, TLS_GROUPS))
		goto fail;
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
	SSL_CTX_clear_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_num_tickets(ctx, 1);
	if (keys)
		SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb);
	else
		SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
	SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, NULL);
	SSL_CTX_set_tlsext_servername_callback(ctx, sni_cb);
	step = "certificate and key";
	if (SSL_CTX_use_cert_and_key(ctx, certs[0]->leaf, certs[0]->key, certs[0]->chain, 1) != 1)
		goto fail;
	return ctx;
fail:
	if (cd) {
		for (size_t i = 0; i < cd->n; i++)
			certstore_unref(cd->certs[i]);
		tls_ticket_keys_unref(cd->keys);
		free(cd);
	}
	SSL_CTX_free(ctx);
	if (errp)
		*errp = ssl_err(step);
	return NULL;
}
