/* libFuzzer harness: the config parser on arbitrary text (config_load_string)
 * and the value parsers on the raw input. Checked with abort(): it returns 0
 * exactly when no error is reported; every error is one line starting with
 * "fuzz.ini:"; a loaded config holds no NULL string, resolved route indexes
 * name the right service, https_listen is empty when TLS is off, values are
 * within the table's bounds; parsing the same text twice gives the same
 * errors. ASan reports leaks of either outcome. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

#define CHECK(x) do { if (!(x)) abort(); } while (0)

static void check_list(const struct strlist *l)
{
	CHECK(l->n <= l->cap);
	for (size_t i = 0; i < l->n; i++)
		CHECK(l->v[i] != NULL);
}

static void check_config(const struct pmd_config *c)
{
	CHECK(c->path && c->state_dir && c->control_socket && c->control_group && c->docker_socket);
	CHECK(c->hsts && c->acme_directory && c->acme_email && c->acme_ca_file && c->acme_profile);
	CHECK(c->cert_file && c->key_file);
	CHECK(c->workers >= 1 && c->workers <= 64);
	CHECK(c->max_header_bytes >= 1024 && c->max_header_bytes <= 1024 * 1024);
	CHECK(c->n_http_listen + c->n_https_listen > 0);
	if (c->tls_mode == TLS_OFF)
		CHECK(c->n_https_listen == 0 && c->https_listen == NULL);
	if (c->tls_mode == TLS_ACME)
		CHECK(c->domains.n > 0);
	check_list(&c->domains);
	for (size_t i = 0; i < c->n_services; i++) {
		const struct svc_conf *s = &c->services[i];
		CHECK(s->name && s->address && s->image && s->command && s->env_file);
		CHECK(s->registry_auth_file && s->release_command && s->health_path && s->health_host);
		CHECK(s->port >= 1 && s->port <= 65535);
		CHECK(s->healthy_threshold >= 1 && s->healthy_threshold <= 100);
		CHECK(config_service(c, s->name) == s);
		CHECK(s->runtime != RUNTIME_DOCKER || *s->image);
		CHECK(s->runtime != RUNTIME_EXEC || (*s->command && s->volumes.n == 0));
		CHECK(s->runtime != RUNTIME_EXTERNAL || (*s->address && !*s->image));
		check_list(&s->env);
		check_list(&s->required_env);
		check_list(&s->volumes);
	}
	for (size_t i = 0; i < c->n_routes; i++) {
		const struct route_conf *r = &c->routes[i];
		CHECK(r->name && r->prefix[0] == '/' && r->host && r->service);
		CHECK(r->svc_index >= 0 && (size_t)r->svc_index < c->n_services);
		CHECK(strcmp(c->services[r->svc_index].name, r->service) == 0);
	}
	for (size_t i = 0; i < c->n_statics; i++) {
		const struct static_conf *s = &c->statics[i];
		CHECK(s->name && s->path[0] == '/' && s->file && s->dir && s->content_type);
		CHECK(!*s->file != !*s->dir);   /* a file or a folder */
	}
}

/* Loads text; returns the errors (caller frees) after checking the result. */
static struct strlist load(const char *text)
{
	struct strlist errs = { 0 };
	struct pmd_config *c = NULL;
	int rc = config_load_string("fuzz.ini", text, &c, &errs);
	CHECK(rc == 0 || rc == -1);
	CHECK((rc == 0) == (errs.n == 0));
	CHECK((rc == 0) == (c != NULL));
	for (size_t i = 0; i < errs.n; i++)
		CHECK(strncmp(errs.v[i], "fuzz.ini:", 9) == 0 && !strchr(errs.v[i], '\n'));
	if (c)
		check_config(c);
	config_free(c);
	return errs;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1);
	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';

	struct strlist a = load(text), b = load(text);
	CHECK(a.n == b.n);
	for (size_t i = 0; i < a.n; i++)
		CHECK(strcmp(a.v[i], b.v[i]) == 0);
	strlist_free(&a);
	strlist_free(&b);

	uint64_t v;
	struct listen_addr la;
	if (size < 64) {
		config_parse_duration(text, &v);
		config_parse_size(text, &v);
		if (config_parse_listen(text, &la) == 0)
			CHECK(strcmp(la.text, text) == 0 && la.sslen > 0);
	}
	free(text);
	return 0;
}
