/* docker_util — pure helpers of the Docker runtime; see docker_util.h. */
#include "docker_util.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <stdarg.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static void set_errf(char **errp, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_errf(char **errp, const char *fmt, ...)
{
	va_list ap;

	if (!errp)
		return;
	va_start(ap, fmt);
	if (vasprintf(errp, fmt, ap) < 0)
		*errp = NULL;
	va_end(ap);
}

/* ---- image references ------------------------------------------------ */

/* [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)* */
static int path_component_ok(const char *s, size_t n)
{
	size_t i = 0;

	if (n == 0)
		return 0;
	while (i < n) {
		size_t run = 0;
		while (i < n && (islower((unsigned char)s[i]) || isdigit((unsigned char)s[i])))
			i++, run++;
		if (run == 0)
			return 0;
		if (i == n)
			return 1;
		if (s[i] == '.') {
			i++;
		} else if (s[i] == '_') {
			i++;
			if (i < n && s[i] == '_')
				i++;
		} else if (s[i] == '-') {
			while (i < n && s[i] == '-')
				i++;
		} else {
			return 0;
		}
		if (i == n)
			return 0; /* separator must be followed by alphanumerics */
	}
	return 1;
}

/* host[:port], host made of [A-Za-z0-9.-] or [ipv6] */
static int domain_ok(const char *s, size_t n)
{
	size_t i = 0;

	if (n == 0)
		return 0;
	if (s[0] == '[') {
		while (i < n && s[i] != ']')
			i++;
		if (i == n)
			return 0;
		i++;
	} else {
		while (i < n && (isalnum((unsigned char)s[i]) || s[i] == '.' || s[i] == '-'))
			i++;
		if (i == 0)
			return 0;
	}
	if (i == n)
		return 1;
	if (s[i] != ':' || i + 1 == n)
		return 0;
	for (i++; i < n; i++)
		if (!isdigit((unsigned char)s[i]))
			return 0;
	return 1;
}

static int tag_ok(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > 128 || !(isalnum((unsigned char)s[0]) || s[0] == '_'))
		return 0;
	for (size_t i = 1; i < n; i++)
		if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == '.' || s[i] == '-'))
			return 0;
	return 1;
}

static int digest_ok(const char *s)
{
	if (strncmp(s, "sha256:", 7) != 0 || strlen(s + 7) != 64)
		return 0;
	for (const char *p = s + 7; *p; p++)
		if (!isdigit((unsigned char)*p) && !(*p >= 'a' && *p <= 'f'))
			return 0;
	return 1;
}

int docker_image_parse(const char *ref, struct image_ref *out, char **errp)
{
	char buf[1024];
	char *at, *colon, *slash, *path;
	const char *why = NULL;

	memset(out, 0, sizeof(*out));
	if (!ref || !*ref) {
		set_errf(errp, "bad image reference \"\": empty");
		return -1;
	}
	if (strlen(ref) >= sizeof(buf)) {
		set_errf(errp, "bad image reference: longer than %zu characters", sizeof(buf) - 1);
		return -1;
	}
	snprintf(buf, sizeof(buf), "%s", ref);

	at = strchr(buf, '@');
	if (at) {
		*at = '\0';
		if (!digest_ok(at + 1)) {
			why = "digest must be sha256: followed by 64 lower-case hex digits";
			goto bad;
		}
		snprintf(out->digest, sizeof(out->digest), "%s", at + 1);
	}
	slash = strrchr(buf, '/');
	colon = strrchr(slash ? slash : buf, ':');
	if (colon) {
		*colon = '\0';
		if (!tag_ok(colon + 1)) {
			why = "tag must be 1-128 of A-Z a-z 0-9 _ . - (not starting with . or -)";
			goto bad;
		}
		snprintf(out->tag, sizeof(out->tag), "%s", colon + 1);
	} else if (!at) {
		snprintf(out->tag, sizeof(out->tag), "latest");
	}
	if (strlen(buf) > 255) {
		why = "name longer than 255 characters";
		goto bad;
	}

	/* a first component with '.' or ':' or "localhost" is a registry */
	path = buf;
	slash = strchr(buf, '/');
	if (slash && (memchr(buf, '.', (size_t)(slash - buf)) || memchr(buf, ':', (size_t)(slash - buf)) ||
	    (slash - buf == 9 && strncmp(buf, "localhost", 9) == 0) || buf[0] == '[')) {
		if (!domain_ok(buf, (size_t)(slash - buf))) {
			why = "registry must be host or host:port";
			goto bad;
		}
		snprintf(out->registry, sizeof(out->registry), "%.*s", (int)(slash - buf), buf);
		path = slash + 1;
	} else {
		snprintf(out->registry, sizeof(out->registry), "docker.io");
	}
	for (const char *c = path;;) {
		const char *e = strchr(c, '/');
		size_t n = e ? (size_t)(e - c) : strlen(c);
		if (!path_component_ok(c, n)) {
			why = "repository path components must be lower-case letters and digits, "
			      "separated by . _ __ or -";
			goto bad;
		}
		if (!e)
			break;
		c = e + 1;
	}
	snprintf(out->name, sizeof(out->name), "%.255s", buf);
	if (strcmp(out->registry, "docker.io") == 0 && !strchr(path, '/'))
		snprintf(out->repo, sizeof(out->repo), "library/%.247s", path);
	else
		snprintf(out->repo, sizeof(out->repo), "%.255s", path);
	return 0;
bad:
	set_errf(errp, "bad image reference \"%s\": %s", ref, why);
	memset(out, 0, sizeof(*out));
	return -1;
}

/* ---- registry credentials ------------------------------------------- */

/* "https://host/v1/" → "host" into out. */
static void registry_host(const char *key, char *out, size_t outsz)
{
	const char *p = strstr(key, "://");
	size_t n;

	p = p ? p + 3 : key;
	n = strcspn(p, "/");
	snprintf(out, outsz, "%.*s", (int)n, p);
}

static int is_docker_hub(const char *host)
{
	return strcmp(host, "docker.io") == 0 || strcmp(host, "index.docker.io") == 0 ||
	       strcmp(host, "registry-1.docker.io") == 0;
}

/* Standard base64 (with padding) → malloc'd NUL-terminated bytes. */
static char *b64_decode(const char *s, size_t *outlen)
{
	size_t n = strlen(s), pad = 0;
	unsigned char *out;
	int r;

	if (n == 0 || n % 4 != 0)
		return NULL;
	out = malloc(n / 4 * 3 + 1);
	if (!out)
		return NULL;
	r = EVP_DecodeBlock(out, (const unsigned char *)s, (int)n);
	if (r < 0) {
		free(out);
		return NULL;
	}
	if (s[n - 1] == '=')
		pad++;
	if (s[n - 2] == '=')
		pad++;
	*outlen = (size_t)r - pad;
	out[*outlen] = '\0';
	return (char *)out;
}

/* base64url (with padding, as Docker's URLEncoding) of s. */
static char *b64url_encode(const char *s)
{
	size_t n = strlen(s);
	char *out = malloc((n + 2) / 3 * 4 + 1);

	if (!out)
		return NULL;
	EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)s, (int)n);
	for (char *p = out; *p; p++) {
		if (*p == '+')
			*p = '-';
		else if (*p == '/')
			*p = '_';
	}
	return out;
}

static const char *json_str(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	return cJSON_IsString(v) && v->valuestring[0] ? v->valuestring : NULL;
}

int docker_registry_auth(const char *config_json, const char *where, const char *registry,
	char **header, char **errp)
{
	cJSON *root = NULL, *auths, *entry, *found = NULL, *out = NULL;
	char host[256], *decoded = NULL, *text = NULL;
	const char *user = NULL, *pass = NULL, *token, *server = NULL;
	int rc = -1;

	*header = NULL;
	root = cJSON_Parse(config_json);
	if (!cJSON_IsObject(root)) {
		set_errf(errp, "%s: not a JSON object (expected Docker's config.json)", where);
		goto out;
	}
	auths = cJSON_GetObjectItemCaseSensitive(root, "auths");
	cJSON_ArrayForEach(entry, auths) {
		registry_host(entry->string, host, sizeof(host));
		if (strcmp(host, registry) == 0 || (is_docker_hub(host) && is_docker_hub(registry))) {
			found = entry;
			server = entry->string;
			break;
		}
	}
	if (!found) {
		rc = 0;
		goto out;
	}
	out = cJSON_CreateObject();
	token = json_str(found, "identitytoken");
	if (token) {
		cJSON_AddStringToObject(out, "identitytoken", token);
	} else if (json_str(found, "auth")) {
		size_t len = 0;
		char *sep;

		decoded = b64_decode(json_str(found, "auth"), &len);
		sep = decoded ? memchr(decoded, ':', len) : NULL;
		if (!sep) {
			set_errf(errp, "%s: auths.\"%s\".auth: expected base64 of \"user:password\"", where, server);
			goto out;
		}
		*sep = '\0';
		user = decoded;
		pass = sep + 1;
	} else {
		user = json_str(found, "username");
		pass = json_str(found, "password");
		if (!user || !pass) {
			set_errf(errp, "%s: auths.\"%s\": expected \"auth\", \"username\"/\"password\" or \"identitytoken\"",
				where, server);
			goto out;
		}
	}
	if (user) {
		cJSON_AddStringToObject(out, "username", user);
		cJSON_AddStringToObject(out, "password", pass);
	}
	cJSON_AddStringToObject(out, "serveraddress", server);
	text = cJSON_PrintUnformatted(out);
	*header = text ? b64url_encode(text) : NULL;
	if (!*header) {
		set_errf(errp, "%s: out of memory", where);
		goto out;
	}
	rc = 0;
out:
	if (text) {
		explicit_bzero(text, strlen(text));
		free(text);
	}
	if (decoded) {
		explicit_bzero(decoded, strlen(decoded));
		free(decoded);
	}
	cJSON_Delete(out);
	cJSON_Delete(root);
	return rc;
}

/* ---- create ---------------------------------------------------------- */

void docker_argv_free(char **argv)
{
	if (!argv)
		return;
	for (char **p = argv; *p; p++)
		free(*p);
	free(argv);
}

char **docker_split_command(const char *cmd, char **errp)
{
	size_t n = 0, cap = 8, wl = 0, len = strlen(cmd);
	char **argv = calloc(cap, sizeof(*argv));
	char *word = malloc(len + 1);
	const char *p = cmd;
	int in_word = 0;

	if (!argv || !word)
		goto fail;
	for (;;) {
		char c = *p;
		if (c == '\0' || c == ' ' || c == '\t' || c == '\n') {
			if (in_word) {
				if (n + 2 > cap) {
					char **na = realloc(argv, (cap *= 2) * sizeof(*argv));
					if (!na)
						goto fail;
					argv = na;
				}
				argv[n] = strndup(word, wl);
				if (!argv[n])
					goto fail;
				argv[++n] = NULL;
				wl = 0;
				in_word = 0;
			}
			if (c == '\0')
				break;
			p++;
			continue;
		}
		in_word = 1;
		if (c == '\'') {
			const char *e = strchr(p + 1, '\'');
			if (!e) {
				set_errf(errp, "command: unterminated ' in \"%s\"", cmd);
				goto fail;
			}
			memcpy(word + wl, p + 1, (size_t)(e - p - 1));
			wl += (size_t)(e - p - 1);
			p = e + 1;
		} else if (c == '"') {
			for (p++; *p && *p != '"'; p++) {
				if (*p == '\\' && (p[1] == '"' || p[1] == '\\' || p[1] == '$' || p[1] == '`'))
					p++;
				word[wl++] = *p;
			}
			if (*p != '"') {
				set_errf(errp, "command: unterminated \" in \"%s\"", cmd);
				goto fail;
			}
			p++;
		} else if (c == '\\' && p[1]) {
			word[wl++] = p[1];
			p += 2;
		} else {
			word[wl++] = c;
			p++;
		}
	}
	free(word);
	return argv;
fail:
	free(word);
	docker_argv_free(argv);
	return NULL;
}

char *docker_create_json(const struct docker_create *c, char **errp)
{
	cJSON *root = cJSON_CreateObject(), *labels, *env, *hc, *lc, *cfg, *binds, *arr;
	char **argv = NULL, *text = NULL, portkey[32], num[16];

	if (!root)
		goto out;
	cJSON_AddStringToObject(root, "Image", c->image);
	labels = cJSON_AddObjectToObject(root, "Labels");
	cJSON_AddStringToObject(labels, "pmd.managed", "true");
	cJSON_AddStringToObject(labels, "pmd.service", c->service);
	cJSON_AddStringToObject(labels, "pmd.color", c->color);
	cJSON_AddStringToObject(labels, "pmd.image", c->image);
	if (c->network == NET_HOST && c->host_port > 0) {
		snprintf(num, sizeof(num), "%d", c->host_port);
		cJSON_AddStringToObject(labels, "pmd.port", num);
	}
	env = cJSON_AddArrayToObject(root, "Env");
	for (char *const *e = c->env; e && *e; e++)
		cJSON_AddItemToArray(env, cJSON_CreateString(*e));
	if (c->command && c->command[0]) {
		argv = docker_split_command(c->command, errp);
		if (!argv)
			goto out;
		arr = cJSON_AddArrayToObject(root, "Cmd");
		for (char **a = argv; *a; a++)
			cJSON_AddItemToArray(arr, cJSON_CreateString(*a));
	}

	hc = cJSON_AddObjectToObject(root, "HostConfig");
	cJSON_AddStringToObject(cJSON_AddObjectToObject(hc, "RestartPolicy"), "Name", "no");
	lc = cJSON_AddObjectToObject(hc, "LogConfig");
	cJSON_AddStringToObject(lc, "Type", "json-file");
	cfg = cJSON_AddObjectToObject(lc, "Config");
	cJSON_AddStringToObject(cfg, "max-size", "10m");
	cJSON_AddStringToObject(cfg, "max-file", "3");
	binds = cJSON_AddArrayToObject(hc, "Binds");
	for (size_t i = 0; c->volumes && i < c->volumes->n; i++)
		cJSON_AddItemToArray(binds, cJSON_CreateString(c->volumes->v[i]));
	if (c->network == NET_HOST) {
		cJSON_AddStringToObject(hc, "NetworkMode", "host");
	} else {
		cJSON *pb, *b;

		cJSON_AddStringToObject(hc, "NetworkMode", "bridge");
		snprintf(portkey, sizeof(portkey), "%d/tcp", c->container_port);
		cJSON_AddObjectToObject(cJSON_AddObjectToObject(root, "ExposedPorts"), portkey);
		pb = cJSON_AddArrayToObject(cJSON_AddObjectToObject(hc, "PortBindings"), portkey);
		b = cJSON_CreateObject();
		cJSON_AddStringToObject(b, "HostIp", "127.0.0.1");
		cJSON_AddStringToObject(b, "HostPort", "");
		cJSON_AddItemToArray(pb, b);
	}
	text = cJSON_PrintUnformatted(root);
	if (!text)
		set_errf(errp, "docker create: out of memory");
out:
	docker_argv_free(argv);
	cJSON_Delete(root);
	return text;
}

/* ---- logs ----------------------------------------------------------- */

void docker_demux_feed(struct docker_demux *d, const char *data, size_t len,
	docker_demux_fn out, void *arg)
{
	while (len > 0) {
		if (d->mode == 2) {
			out(arg, 1, data, len);
			return;
		}
		if (d->remaining > 0) {
			size_t n = len < d->remaining ? len : d->remaining;
			out(arg, d->stream, data, n);
			d->remaining -= n;
			data += n;
			len -= n;
			continue;
		}
		/* collect a header */
		while (len > 0 && d->hdr_len < 8) {
			d->hdr[d->hdr_len++] = (unsigned char)*data++;
			len--;
			if (d->mode == 0 && (d->hdr[0] > 2 || (d->hdr_len > 1 && d->hdr_len <= 4 &&
			    d->hdr[d->hdr_len - 1] != 0))) {
				/* not a frame header: a TTY's raw stream */
				d->mode = 2;
				out(arg, 1, (const char *)d->hdr, d->hdr_len);
				d->hdr_len = 0;
				break;
			}
		}
		if (d->hdr_len == 8) {
			d->mode = 1;
			d->stream = d->hdr[0];
			d->remaining = (size_t)d->hdr[4] << 24 | (size_t)d->hdr[5] << 16 |
				       (size_t)d->hdr[6] << 8 | d->hdr[7];
			d->hdr_len = 0;
		}
	}
}

/* ---- pull progress ----------------------------------------------------- */

static void fmt_size(double b, char *out, size_t n)
{
	if (b >= 1024.0 * 1024.0)
		snprintf(out, n, "%.1fMiB", b / (1024.0 * 1024.0));
	else
		snprintf(out, n, "%.1fKiB", b / 1024.0);
}

/* Index of layer id, added when new; -1 when the table is full. */
static int layer_index(struct docker_pull *st, const char *id)
{
	for (size_t i = 0; i < st->n; i++)
		if (strcmp(st->ids[i], id) == 0)
			return (int)i;
	if (st->n == DOCKER_PULL_MAX_LAYERS)
		return -1;
	snprintf(st->ids[st->n], sizeof(st->ids[0]), "%s", id);
	st->done[st->n] = false;
	return (int)st->n++;
}

int docker_pull_line(struct docker_pull *st, const char *line, size_t len,
	char *out, size_t outsz, char **errp)
{
	cJSON *j = cJSON_ParseWithLength(line, len);
	const char *status, *id, *err;
	const cJSON *detail;
	int rc = 0, idx;

	if (!j)
		return 0;
	err = json_str(j, "error");
	if (!err)
		err = json_str(cJSON_GetObjectItemCaseSensitive(j, "errorDetail"), "message");
	if (err) {
		if (errp)
			*errp = docker_pull_error_text(err);
		rc = -1;
		goto out;
	}
	status = json_str(j, "status");
	id = json_str(j, "id");
	if (!status)
		goto out;
	if (!id || strncmp(status, "Pulling from", 12) == 0) {
		snprintf(out, outsz, "%s%s%s", status, id ? " " : "", id ? id : "");
		rc = 1;
		goto out;
	}
	idx = layer_index(st, id);
	if (idx < 0)
		goto out;
	if (strcmp(status, "Pull complete") == 0 || strcmp(status, "Already exists") == 0) {
		size_t done = 0;

		st->done[idx] = true;
		for (size_t i = 0; i < st->n; i++)
			done += st->done[i];
		snprintf(out, outsz, "layers %zu/%zu done", done, st->n);
		rc = 1;
	} else if (strcmp(status, "Downloading") == 0) {
		double cur, tot;
		char a[32], b[32];

		detail = cJSON_GetObjectItemCaseSensitive(j, "progressDetail");
		cur = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(detail, "current"));
		tot = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(detail, "total"));
		if (!(tot > 0) || !(cur >= 0))
			goto out;
		fmt_size(cur, a, sizeof(a));
		fmt_size(tot, b, sizeof(b));
		snprintf(out, outsz, "layer %d/%zu %s/%s", idx + 1, st->n, a, b);
		rc = 2;
	}
out:
	cJSON_Delete(j);
	return rc;
}

static int contains_ci(const char *hay, const char *needle)
{
	return strcasestr(hay, needle) != NULL;
}

char *docker_pull_error_text(const char *msg)
{
	static const char *const auth[] = { "unauthorized", "authentication required",
		"no basic auth credentials", "incorrect username or password", "access denied",
		"access to the resource is denied", NULL };
	static const char *const missing[] = { "manifest unknown", "not found", "does not exist",
		"name unknown", NULL };
	static const char *const down[] = { "connection refused", "no such host", "timeout",
		"dial tcp", "network is unreachable", "tls:", "server gave http response",
		"connection reset", NULL };
	const char *hint = NULL;
	char *s = NULL;

	for (const char *const *p = auth; !hint && *p; p++)
		if (contains_ci(msg, *p))
			hint = "the registry refused the credentials (check registry_auth_file)";
	for (const char *const *p = missing; !hint && *p; p++)
		if (contains_ci(msg, *p))
			hint = "the image or tag does not exist in the registry";
	for (const char *const *p = down; !hint && *p; p++)
		if (contains_ci(msg, *p))
			hint = "the registry cannot be reached";
	if (hint ? asprintf(&s, "%s: %s", hint, msg) < 0 : !(s = strdup(msg)))
		s = NULL;
	return s;
}

/* ---- documents from the engine --------------------------------------- */

char *docker_error_text(const char *body, long status)
{
	cJSON *j = body ? cJSON_Parse(body) : NULL;
	const char *m = json_str(j, "message");
	char *s = NULL;

	if (m) {
		s = strdup(m);
	} else if (body && *body) {
		size_t n = strlen(body);
		while (n > 0 && isspace((unsigned char)body[n - 1]))
			n--;
		if (n > 300)
			n = 300;
		s = strndup(body, n);
	} else if (asprintf(&s, "HTTP %ld", status) < 0) {
		s = NULL;
	}
	cJSON_Delete(j);
	return s;
}

/* Labels of a container into out. */
static void read_labels(const cJSON *labels, struct docker_container *out)
{
	const char *v;

	out->managed = (v = json_str(labels, "pmd.managed")) && strcmp(v, "true") == 0;
	if ((v = json_str(labels, "pmd.service")))
		snprintf(out->service, sizeof(out->service), "%s", v);
	if ((v = json_str(labels, "pmd.color")))
		snprintf(out->color, sizeof(out->color), "%s", v);
	if ((v = json_str(labels, "pmd.image")))
		snprintf(out->image, sizeof(out->image), "%s", v);
	if ((v = json_str(labels, "pmd.port")))
		out->host_port = atoi(v);
}

int docker_parse_inspect(const char *json, int container_port, struct docker_container *out,
	char **errp)
{
	cJSON *j = cJSON_Parse(json);
	const cJSON *state, *config, *ports, *port, *b;
	const char *v;
	char key[32];
	int rc = -1;

	memset(out, 0, sizeof(*out));
	if (!cJSON_IsObject(j) || !json_str(j, "Id")) {
		set_errf(errp, "docker inspect: unexpected answer (no Id)");
		goto out;
	}
	snprintf(out->id, sizeof(out->id), "%s", json_str(j, "Id"));
	if ((v = json_str(j, "Name")))
		snprintf(out->name, sizeof(out->name), "%s", v[0] == '/' ? v + 1 : v);
	config = cJSON_GetObjectItemCaseSensitive(j, "Config");
	read_labels(cJSON_GetObjectItemCaseSensitive(config, "Labels"), out);
	out->tty = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(config, "Tty"));
	if (!out->image[0] && (v = json_str(config, "Image")))
		snprintf(out->image, sizeof(out->image), "%s", v);
	if ((v = json_str(j, "Image")))
		snprintf(out->image_id, sizeof(out->image_id), "%s", v);
	state = cJSON_GetObjectItemCaseSensitive(j, "State");
	out->running = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(state, "Running"));
	out->oom = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(state, "OOMKilled"));
	out->exit_code = (int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(state, "ExitCode"));
	if (out->exit_code < 0)
		out->exit_code = 0;

	ports = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "NetworkSettings"), "Ports");
	if (container_port > 0) {
		snprintf(key, sizeof(key), "%d/tcp", container_port);
		port = cJSON_GetObjectItemCaseSensitive(ports, key);
	} else {
		port = ports ? ports->child : NULL;
	}
	cJSON_ArrayForEach(b, port) {
		const char *ip = json_str(b, "HostIp"), *hp = json_str(b, "HostPort");
		if (hp && (!ip || strcmp(ip, "127.0.0.1") == 0 || strcmp(ip, "0.0.0.0") == 0)) {
			out->host_port = atoi(hp);
			break;
		}
	}
	rc = 0;
out:
	cJSON_Delete(j);
	return rc;
}

int docker_parse_list(const char *json, struct docker_container **outp, size_t *np, char **errp)
{
	cJSON *j = cJSON_Parse(json), *c;
	struct docker_container *out = NULL;
	size_t n = 0;
	int rc = -1;

	*outp = NULL;
	*np = 0;
	if (!cJSON_IsArray(j)) {
		set_errf(errp, "docker list: unexpected answer (not an array)");
		goto out;
	}
	out = calloc((size_t)cJSON_GetArraySize(j) + 1, sizeof(*out));
	if (!out) {
		set_errf(errp, "docker list: out of memory");
		goto out;
	}
	cJSON_ArrayForEach(c, j) {
		struct docker_container *d = &out[n];
		const cJSON *names = cJSON_GetObjectItemCaseSensitive(c, "Names"), *p;
		const char *v;

		if (!json_str(c, "Id"))
			continue;
		snprintf(d->id, sizeof(d->id), "%s", json_str(c, "Id"));
		if (cJSON_IsString(cJSON_GetArrayItem(names, 0))) {
			v = cJSON_GetArrayItem(names, 0)->valuestring;
			snprintf(d->name, sizeof(d->name), "%s", v[0] == '/' ? v + 1 : v);
		}
		read_labels(cJSON_GetObjectItemCaseSensitive(c, "Labels"), d);
		if (!d->image[0] && (v = json_str(c, "Image")))
			snprintf(d->image, sizeof(d->image), "%s", v);
		d->running = (v = json_str(c, "State")) && strcmp(v, "running") == 0;
		d->created = (long)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(c, "Created"));
		cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(c, "Ports")) {
			const char *ip = json_str(p, "IP");
			double pub = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(p, "PublicPort"));
			if (!d->host_port && pub > 0 && (!ip || strcmp(ip, "127.0.0.1") == 0))
				d->host_port = (int)pub;
		}
		n++;
	}
	*outp = out;
	*np = n;
	out = NULL;
	rc = 0;
out:
	free(out);
	cJSON_Delete(j);
	return rc;
}

int docker_api_version_num(const char *v)
{
	int maj = 0, min = 0;

	if (!v || sscanf(v, "%d.%d", &maj, &min) != 2 || maj < 1 || min < 0 || min > 99)
		return 0;
	return maj * 100 + min;
}
