/* runtime_env — the environment of an instance: env_file, env, PORT,
 * checked against required_env. See runtime_env_build in runtime.h.
 *
 * env_file follows Docker's --env-file format: one KEY=VALUE a line,
 * leading whitespace ignored, lines starting with '#' and blank lines
 * skipped, the value taken literally (no quotes, no escapes, no
 * expansion); a line KEY without '=' takes KEY's value from pmd's own
 * environment (skipped when unset). A trailing '\r' (a file edited on
 * Windows) is dropped. `env` entries follow the same rules. An exec
 * instance that sets no PATH gets pmd's (DEFAULT_PATH when pmd has none). */
#include "runtime.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"

#define ENV_FILE_MAX (1u << 20)
/* exec instances when pmd itself has no PATH (Debian's default) */
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

struct envset {
	char **v;
	size_t n, cap;
};

/* Length of the key of "K=V" (or of "K"). */
static size_t key_len(const char *kv)
{
	return strcspn(kv, "=");
}

/* Set "K=V" (owned copy), replacing an earlier K. 0 / -1. */
static int env_set(struct envset *e, const char *kv, size_t len)
{
	size_t kl = key_len(kv);
	char *copy = strndup(kv, len);

	if (!copy)
		return -1;
	for (size_t i = 0; i < e->n; i++) {
		if (key_len(e->v[i]) == kl && strncmp(e->v[i], kv, kl) == 0) {
			free(e->v[i]);
			e->v[i] = copy;
			return 0;
		}
	}
	if (e->n + 2 > e->cap) {
		size_t ncap = e->cap ? e->cap * 2 : 32;
		char **nv = realloc(e->v, ncap * sizeof(*nv));
		if (!nv) {
			free(copy);
			return -1;
		}
		e->v = nv;
		e->cap = ncap;
	}
	e->v[e->n++] = copy;
	e->v[e->n] = NULL;
	return 0;
}

static const char *env_get(const struct envset *e, const char *key)
{
	size_t kl = strlen(key);

	for (size_t i = 0; i < e->n; i++)
		if (key_len(e->v[i]) == kl && strncmp(e->v[i], key, kl) == 0)
			return e->v[i] + kl + 1;
	return NULL;
}

/* One entry (a line of env_file, or an `env` value) of len bytes. `where`
 * prefixes messages ("env_file /x:3", "env"). 0 / -1 (errp). */
static int env_entry(struct envset *e, const char *s, size_t len, const char *where, char **errp)
{
	size_t kl;

	while (len > 0 && isspace((unsigned char)*s))
		s++, len--;
	if (len > 0 && s[len - 1] == '\r')
		len--;
	if (len == 0 || s[0] == '#')
		return 0;
	kl = 0;
	while (kl < len && s[kl] != '=')
		kl++;
	if (kl == 0) {
		if (asprintf(errp, "%s: no variable name before '=' in \"%.*s\"", where, (int)len, s) < 0)
			*errp = NULL;
		return -1;
	}
	for (size_t i = 0; i < kl; i++) {
		if (isspace((unsigned char)s[i])) {
			if (asprintf(errp, "%s: variable name \"%.*s\" contains whitespace", where, (int)kl, s) < 0)
				*errp = NULL;
			return -1;
		}
	}
	if (kl == len) {
		/* KEY alone: pmd's own value, if any */
		char key[256];
		const char *val;
		char *kv = NULL;
		int rc;

		snprintf(key, sizeof(key), "%.*s", (int)len, s);
		val = getenv(key);
		if (!val)
			return 0;
		if (asprintf(&kv, "%s=%s", key, val) < 0)
			goto nomem;
		rc = env_set(e, kv, strlen(kv));
		free(kv);
		if (rc < 0)
			goto nomem;
		return 0;
	}
	if (env_set(e, s, len) == 0)
		return 0;
nomem:
	if (asprintf(errp, "%s: out of memory", where) < 0)
		*errp = NULL;
	return -1;
}

static int read_env_file(struct envset *e, const char *path, char **errp)
{
	char *text, *line, where[4200];
	size_t len = 0;
	int lineno = 0, rc = 0;

	text = fs_read_file(path, ENV_FILE_MAX, &len, NULL);
	if (!text) {
		if (asprintf(errp, "env_file %s: %s", path, errno == EFBIG ?
		    "larger than 1 MiB" : strerror(errno)) < 0)
			*errp = NULL;
		return -1;
	}
	for (line = text; rc == 0 && line < text + len;) {
		char *nl = memchr(line, '\n', (size_t)(text + len - line));
		size_t n = nl ? (size_t)(nl - line) : (size_t)(text + len - line);

		lineno++;
		snprintf(where, sizeof(where), "env_file %s:%d", path, lineno);
		rc = env_entry(e, line, n, where, errp);
		line += n + 1;
	}
	free(text);
	return rc;
}

void runtime_env_free(char **env)
{
	if (!env)
		return;
	for (char **p = env; *p; p++)
		free(*p);
	free(env);
}

char **runtime_env_build(const struct svc_conf *svc, int port, char **errp)
{
	struct envset e = { 0 };
	char portkv[32], *missing = NULL;
	size_t mlen = 0;
	FILE *m = NULL;

	*errp = NULL;
	/* an empty set is still a NULL-terminated array */
	e.cap = 32;
	e.v = calloc(e.cap, sizeof(*e.v));
	if (!e.v)
		goto nomem;

	if (svc->env_file && svc->env_file[0] && read_env_file(&e, svc->env_file, errp) < 0)
		goto fail;
	for (size_t i = 0; i < svc->env.n; i++)
		if (env_entry(&e, svc->env.v[i], strlen(svc->env.v[i]), "env", errp) < 0)
			goto fail;
	/* a process gets only this environment: without PATH its programs
	 * (and their children) find nothing; a container has its image's */
	if (svc->runtime == RUNTIME_EXEC && !env_get(&e, "PATH")) {
		const char *path = getenv("PATH");
		char *kv = NULL;

		if (asprintf(&kv, "PATH=%s", path != NULL && path[0] != '\0' ? path : DEFAULT_PATH) < 0)
			goto nomem;
		int rc = env_set(&e, kv, strlen(kv));
		free(kv);
		if (rc < 0)
			goto nomem;
	}
	if (port > 0) {
		snprintf(portkv, sizeof(portkv), "PORT=%d", port);
		if (env_set(&e, portkv, strlen(portkv)) < 0)
			goto nomem;
	}

	for (size_t i = 0; i < svc->required_env.n; i++) {
		const char *v = env_get(&e, svc->required_env.v[i]);
		if (v && v[0])
			continue;
		if (!m && !(m = open_memstream(&missing, &mlen)))
			goto nomem;
		fprintf(m, "%s%s", ftell(m) ? ", " : "", svc->required_env.v[i]);
	}
	if (m) {
		fclose(m);
		if (asprintf(errp, "missing required_env: %s (set them in env_file or env; an empty value counts as missing)",
		    missing) < 0)
			*errp = NULL;
		free(missing);
		goto fail;
	}
	return e.v;
nomem:
	free(*errp);
	if (asprintf(errp, "service %s: out of memory building the environment", svc->name) < 0)
		*errp = NULL;
fail:
	runtime_env_free(e.v);
	return NULL;
}
