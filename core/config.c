/* config — pmd.ini parsed with inih, driven by one key table. See
 * include/config.h.
 *
 * How a file is read: inih does the INI syntax; our own line reader feeds it
 * and, seeing every line first, numbers the lines, handles section headers
 * (inih does not call the handler for them) and reports syntax errors (inih
 * only returns the first one). The handler then only sees `key = value`
 * lines and continuation lines. A value is applied once all its lines are in:
 * an indented line after a key continues that key's value, joined with one
 * space. Lines longer than inih's fixed 200-byte buffer are handled by the
 * reader (long_line), up to LONG_LINE_MAX characters.
 *
 * Every problem is collected with its line, sorted by line at the end and
 * returned as "FILE:LINE: message" ("FILE: message" when no line applies,
 * e.g. a default that conflicts with a missing section). */
#include "config.h"
#include "snapshot.h"
#include "log.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <ini.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_FILE_BYTES (1u << 20)

/* ---- strlist ---------------------------------------------------------- */

int strlist_push(struct strlist *l, const char *s)
{
	char *dup = strdup(s);
	if (!dup)
		return -1;
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 4;
		char **v = realloc(l->v, cap * sizeof(*v));
		if (!v) {
			free(dup);
			return -1;
		}
		l->v = v;
		l->cap = cap;
	}
	l->v[l->n++] = dup;
	return 0;
}

/* Leaves l empty and reusable. */
void strlist_free(struct strlist *l)
{
	if (!l)
		return;
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i]);
	free(l->v);
	l->v = NULL;
	l->n = l->cap = 0;
}

/* ---- value parsers ------------------------------------------------------ */

/* Exactly n decimal digits (n > 0) without overflow. */
static int parse_digits(const char *s, size_t n, uint64_t *out)
{
	uint64_t v = 0;
	if (n == 0)
		return -1;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		unsigned d = (unsigned)(s[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	*out = v;
	return 0;
}

/* digits followed by one of units[] (an empty unit name means none). */
struct unit {
	const char *name;
	uint64_t mul;
};

static int parse_with_unit(const char *s, const struct unit *units, uint64_t *out)
{
	size_t nd = strspn(s, "0123456789");
	uint64_t v;
	if (parse_digits(s, nd, &v) < 0)
		return -1;
	for (const struct unit *u = units; u->name; u++) {
		if (strcmp(s + nd, u->name) != 0)
			continue;
		if (v > UINT64_MAX / u->mul)
			return -1;
		*out = v * u->mul;
		return 0;
	}
	return -1;
}

static const struct unit dur_units[] = {
	{ "ms", 1 }, { "s", 1000 }, { "m", 60000 }, { "h", 3600000 },
	{ "d", 86400000 }, { NULL, 0 },
};

static const struct unit size_units[] = {
	{ "", 1 }, { "k", 1ull << 10 }, { "K", 1ull << 10 }, { "m", 1ull << 20 },
	{ "M", 1ull << 20 }, { "g", 1ull << 30 }, { "G", 1ull << 30 },
	{ NULL, 0 },
};

int config_parse_duration(const char *s, uint64_t *ms)
{
	if (strcmp(s, "0") == 0) {
		*ms = 0;
		return 0;
	}
	return parse_with_unit(s, dur_units, ms);
}

int config_parse_size(const char *s, uint64_t *bytes)
{
	return parse_with_unit(s, size_units, bytes);
}

int config_parse_status_range(const char *s, int *lo, int *hi)
{
	const char *dash = strchr(s, '-');
	uint64_t a, b;

	if (parse_digits(s, dash ? (size_t)(dash - s) : strlen(s), &a) < 0)
		return -1;
	if (!dash)
		b = a;
	else if (parse_digits(dash + 1, strlen(dash + 1), &b) < 0)
		return -1;
	if (a < 100 || b > 599 || a > b)
		return -1;
	*lo = (int)a;
	*hi = (int)b;
	return 0;
}

static int parse_port(const char *s, int *port)
{
	uint64_t v;
	if (parse_digits(s, strlen(s), &v) < 0 || v < 1 || v > 65535)
		return -1;
	*port = (int)v;
	return 0;
}

int config_parse_listen(const char *s, struct listen_addr *out)
{
	char host[64];
	const char *portp;
	int port;
	struct listen_addr a;

	memset(&a, 0, sizeof(a));
	if (strlen(s) >= sizeof(a.text))
		return -1;
	if (s[0] == '[') {
		const char *close = strchr(s, ']');
		if (!close || close[1] != ':' || (size_t)(close - s - 1) >= sizeof(host))
			return -1;
		memcpy(host, s + 1, (size_t)(close - s - 1));
		host[close - s - 1] = '\0';
		portp = close + 2;
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&a.ss;
		if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1 || parse_port(portp, &port) < 0)
			return -1;
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)port);
		a.sslen = sizeof(*sin6);
	} else {
		const char *colon = strchr(s, ':');
		if (!colon || (size_t)(colon - s) >= sizeof(host))
			return -1;
		memcpy(host, s, (size_t)(colon - s));
		host[colon - s] = '\0';
		portp = colon + 1;
		struct sockaddr_in *sin = (struct sockaddr_in *)&a.ss;
		if (inet_pton(AF_INET, host, &sin->sin_addr) != 1 || parse_port(portp, &port) < 0)
			return -1;
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)port);
		a.sslen = sizeof(*sin);
	}
	snprintf(a.text, sizeof(a.text), "%s", s);
	*out = a;
	return 0;
}

static bool listen_same(const struct listen_addr *a, const struct listen_addr *b)
{
	return a->sslen == b->sslen && memcmp(&a->ss, &b->ss, a->sslen) == 0;
}

/* Same family and port, one of them the wildcard address: with SO_REUSEPORT
 * both binds succeed and the kernel splits connections between them. */
static bool listen_overlap(const struct listen_addr *a, const struct listen_addr *b)
{
	if (a->ss.ss_family != b->ss.ss_family)
		return false;
	if (a->ss.ss_family == AF_INET) {
		const struct sockaddr_in *x = (const void *)&a->ss, *y = (const void *)&b->ss;
		return x->sin_port == y->sin_port &&
		       (x->sin_addr.s_addr == htonl(INADDR_ANY) || y->sin_addr.s_addr == htonl(INADDR_ANY));
	}
	const struct sockaddr_in6 *x = (const void *)&a->ss, *y = (const void *)&b->ss;
	return x->sin6_port == y->sin6_port &&
	       (IN6_IS_ADDR_UNSPECIFIED(&x->sin6_addr) || IN6_IS_ADDR_UNSPECIFIED(&y->sin6_addr));
}

static int parse_bool(const char *s, bool *out)
{
	static const char *const yes[] = { "true", "yes", "on", "1" };
	static const char *const no[] = { "false", "no", "off", "0" };
	for (size_t i = 0; i < 4; i++) {
		if (strcasecmp(s, yes[i]) == 0) {
			*out = true;
			return 0;
		}
		if (strcasecmp(s, no[i]) == 0) {
			*out = false;
			return 0;
		}
	}
	return -1;
}

static int online_cpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n < 1 ? 1 : n > 64 ? 64 : (int)n;
}

/* ---- item checks (what a string value may look like) --------------------- */

/* Paths may be relative: they resolve against pmd's working directory. */
static bool chk_path(const char *s) { return s[0] != '\0'; }

static bool chk_urlpath(const char *s)
{
	if (s[0] != '/')
		return false;
	for (const char *p = s; *p; p++)
		if ((unsigned char)*p <= ' ' || *p == 0x7f)
			return false;
	return true;
}

/* [proxy] lb_health_path: "" (off) or a path that fits
 * proxy_settings.lb_health_path, without a query or fragment */
static bool chk_lb_health_path(const char *s)
{
	return !*s || (chk_urlpath(s) && strlen(s) < sizeof(((struct proxy_settings *)0)->lb_health_path)
	               && !strpbrk(s, "?#"));
}

/* route prefix, static path: "" is reported as a missing key instead */
static bool chk_urlpath_opt(const char *s) { return !*s || chk_urlpath(s); }

static bool chk_status_range(const char *s)
{
	int lo, hi;
	return config_parse_status_range(s, &lo, &hi) == 0;
}

static bool chk_url(const char *s)
{
	return (strncmp(s, "https://", 8) == 0 && s[8]) || (strncmp(s, "http://", 7) == 0 && s[7]);
}

static bool chk_email(const char *s)
{
	const char *at = strchr(s, '@');
	return !*s || (at && at != s && at[1] && !strpbrk(s, " \t"));
}

/* A DNS name: labels of letters, digits, '-' and '_' joined by dots. */
static bool is_hostname(const char *s, size_t n)
{
	size_t label = 0;
	if (n == 0 || n > 253)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '.') {
			if (label == 0)
				return false;
			label = 0;
		} else if (isalnum(c) || c == '-' || c == '_') {
			if (++label > 63)
				return false;
		} else {
			return false;
		}
	}
	return label > 0;
}

/* host, IPv4, or [IPv6], followed by ":port" when port is allowed/required. */
static bool is_hostport(const char *s, bool port_ok, bool port_needed)
{
	const char *end;
	if (s[0] == '[') {
		char buf[64];
		struct in6_addr a6;
		const char *close = strchr(s, ']');
		if (!close || (size_t)(close - s - 1) >= sizeof(buf))
			return false;
		memcpy(buf, s + 1, (size_t)(close - s - 1));
		buf[close - s - 1] = '\0';
		if (inet_pton(AF_INET6, buf, &a6) != 1)
			return false;
		end = close + 1;
	} else {
		end = s + strcspn(s, ":");
		if (!is_hostname(s, (size_t)(end - s)))
			return false;
	}
	int port;
	if (*end == '\0')
		return !port_needed;
	return port_ok && *end == ':' && parse_port(end + 1, &port) == 0;
}

static bool chk_domain(const char *s) { return is_hostname(s, strlen(s)); }
static bool chk_host_opt(const char *s) { return !*s || is_hostport(s, true, false); }
static bool chk_address_opt(const char *s) { return !*s || is_hostport(s, true, true); }

static bool is_name(const char *s, size_t n)
{
	if (n == 0 || !isalnum((unsigned char)s[0]))
		return false;
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)s[i]) && !strchr("._-", s[i]))
			return false;
	return true;
}

static bool chk_svcref_opt(const char *s) { return !*s || is_name(s, strlen(s)); }

static size_t envname_len(const char *s)
{
	size_t n = 0;
	if (!isalpha((unsigned char)s[0]) && s[0] != '_')
		return 0;
	while (isalnum((unsigned char)s[n]) || s[n] == '_')
		n++;
	return n;
}

static bool chk_envname(const char *s)
{
	size_t n = envname_len(s);
	return n > 0 && s[n] == '\0';
}

static bool chk_envkv(const char *s)
{
	size_t n = envname_len(s);
	return n > 0 && s[n] == '=';
}

/* SOURCE:/container/path[:options] */
static bool chk_volume(const char *s)
{
	const char *colon = strchr(s, ':');
	return colon && colon != s && colon[1] == '/' && !strpbrk(s, " \t");
}

/* ---- the key table ------------------------------------------------------ */

enum skind { S_PMD, S_PROXY, S_TLS, S_SERVICE, S_ROUTE, S_STATIC, S_COUNT };
static const char *const skind_names[S_COUNT] = { "pmd", "proxy", "tls", "service", "route", "static" };
#define NAMED(k) ((k) >= S_SERVICE)

enum ktype {
	T_STR,    /* char *; `check` validates */
	T_BOOL,   /* bool */
	T_INT,    /* int in [min, max]; F_AUTO also takes "auto" (CPU count) */
	T_DUR,    /* uint64_t ms in [min, max] */
	T_SIZE,   /* uint64_t bytes in [min, max] */
	T_ENUM,   /* int: index in choices, or via enum_parse */
	T_LISTEN, /* struct listen_addr * at off, size_t count at off_n */
	T_LIST,   /* struct strlist from a comma-separated value */
	T_MULTI,  /* struct strlist, one item per occurrence (repeatable key) */
};

#define F_AUTO 1u

struct key {
	enum skind sect;
	const char *name;
	enum ktype type;
	const char *def;             /* default, parsed like a value from the file */
	int64_t min, max;            /* T_INT: value, T_DUR: ms, T_SIZE: bytes */
	size_t off, off_n;
	const char *const *choices;  /* T_ENUM: names in enum order, NULL-terminated */
	int (*enum_parse)(const char *s, int *out); /* T_ENUM: used instead of choices' order */
	bool (*check)(const char *item); /* T_STR, T_LIST, T_MULTI items */
	const char *expect;          /* what check accepts, for messages */
	unsigned flags;
};

static int level_parse(const char *s, int *out)
{
	enum log_level l;
	if (log_level_parse(s, &l) < 0)
		return -1;
	*out = (int)l;
	return 0;
}

static int format_parse(const char *s, int *out)
{
	enum log_format f;
	if (log_format_parse(s, &f) < 0)
		return -1;
	*out = (int)f;
	return 0;
}

_Static_assert(sizeof(enum tls_mode) == sizeof(int) && sizeof(enum runtime_kind) == sizeof(int) &&
	       sizeof(enum net_mode) == sizeof(int) && sizeof(enum pull_policy) == sizeof(int) &&
	       sizeof(enum restart_policy) == sizeof(int) && sizeof(enum static_fallback) == sizeof(int),
	       "enum fields are stored as int");

static const char *const level_names[] = { "debug", "info", "warn", "error", NULL };
static const char *const format_names[] = { "logfmt", "json", NULL };
static const char *const tls_names[] = { "acme", "files", "self-signed", "off", NULL };
static const char *const runtime_names[] = { "docker", "exec", "external", NULL };
static const char *const net_names[] = { "bridge", "host", NULL };
static const char *const pull_names[] = { "always", "missing", NULL };
static const char *const restart_names[] = { "always", "on-failure", "never", NULL };
static const char *const fallback_names[] = { "none", "route", NULL };

#define SECOND 1000
#define DAY (86400 * 1000LL)
#define DUR_MAX (7 * DAY)
#define P(f) offsetof(struct pmd_config, f)
#define SV(f) offsetof(struct svc_conf, f)
#define RT(f) offsetof(struct route_conf, f)
#define ST(f) offsetof(struct static_conf, f)
#define PATH .check = chk_path, .expect = "a path"
#define URLPATH .check = chk_urlpath, .expect = "a path starting with /"
#define URLPATH_OPT .check = chk_urlpath_opt, .expect = "a path starting with /"
#define DUR(lo) .type = T_DUR, .min = (lo), .max = DUR_MAX

/* Every key of SPEC.md's configuration block. Defaults are SPEC's, except
 * deployment-specific examples (image, domains, ...), which default to "". */
static const struct key keys[] = {
	{ .sect = S_PMD, .name = "state_dir", .def = "/var/lib/pmd", .off = P(state_dir), PATH },
	{ .sect = S_PMD, .name = "control_socket", .def = "/run/pmd/control.sock", .off = P(control_socket), PATH },
	{ .sect = S_PMD, .name = "control_group", .def = "deploy", .off = P(control_group) },
	{ .sect = S_PMD, .name = "docker_socket", .def = "/var/run/docker.sock", .off = P(docker_socket), PATH },
	{ .sect = S_PMD, .name = "log_format", .type = T_ENUM, .def = "logfmt", .off = P(log_format),
	  .choices = format_names, .enum_parse = format_parse },
	{ .sect = S_PMD, .name = "log_level", .type = T_ENUM, .def = "info", .off = P(log_level),
	  .choices = level_names, .enum_parse = level_parse },

	/* An empty listen list binds nothing on that scheme; https_listen is
	 * dropped (count 0) when [tls] mode = off. */
	{ .sect = S_PROXY, .name = "http_listen", .type = T_LISTEN, .def = "0.0.0.0:80",
	  .off = P(http_listen), .off_n = P(n_http_listen) },
	{ .sect = S_PROXY, .name = "https_listen", .type = T_LISTEN, .def = "0.0.0.0:443",
	  .off = P(https_listen), .off_n = P(n_https_listen) },
	{ .sect = S_PROXY, .name = "workers", .type = T_INT, .def = "auto", .min = 1, .max = 64,
	  .off = P(workers), .flags = F_AUTO },
	{ .sect = S_PROXY, .name = "redirect_https", .type = T_BOOL, .def = "true", .off = P(redirect_https) },
	{ .sect = S_PROXY, .name = "hsts", .def = "max-age=31536000", .off = P(hsts) },
	{ .sect = S_PROXY, .name = "max_connections", .type = T_INT, .def = "10000", .min = 1, .max = 1000000,
	  .off = P(max_connections) },
	{ .sect = S_PROXY, .name = "max_header_bytes", .type = T_SIZE, .def = "16k", .min = 1 << 10, .max = 1 << 20,
	  .off = P(max_header_bytes) },
	{ .sect = S_PROXY, .name = "max_body_bytes", .type = T_SIZE, .def = "100m", .min = 1, .max = 1LL << 40,
	  .off = P(max_body_bytes) },
	{ .sect = S_PROXY, .name = "client_header_timeout", DUR(1), .def = "10s", .off = P(client_header_timeout_ms) },
	{ .sect = S_PROXY, .name = "idle_timeout", DUR(1), .def = "60s", .off = P(idle_timeout_ms) },
	{ .sect = S_PROXY, .name = "upstream_connect_timeout", DUR(1), .def = "5s", .off = P(upstream_connect_timeout_ms) },
	{ .sect = S_PROXY, .name = "upstream_response_timeout", DUR(1), .def = "60s",
	  .off = P(upstream_response_timeout_ms) },
	{ .sect = S_PROXY, .name = "upstream_idle_timeout", DUR(0), .def = "300s",
	  .off = P(upstream_idle_timeout_ms) },
	{ .sect = S_PROXY, .name = "hold_timeout", DUR(0), .def = "10s", .off = P(hold_timeout_ms) },
	{ .sect = S_PROXY, .name = "access_log", .type = T_BOOL, .def = "true", .off = P(access_log) },
	{ .sect = S_PROXY, .name = "lb_health_path", .def = "", .off = P(lb_health_path),
	  .check = chk_lb_health_path, .expect = "a path starting with / (at most 127 bytes, no ? or #)" },
	{ .sect = S_PROXY, .name = "http2", .type = T_BOOL, .def = "true", .off = P(http2) },
	{ .sect = S_PROXY, .name = "max_concurrent_streams", .type = T_INT, .def = "100", .min = 1, .max = 10000,
	  .off = P(max_concurrent_streams) },

	{ .sect = S_TLS, .name = "mode", .type = T_ENUM, .def = "acme", .off = P(tls_mode), .choices = tls_names },
	{ .sect = S_TLS, .name = "domains", .type = T_LIST, .def = "", .off = P(domains),
	  .check = chk_domain, .expect = "host names like example.com" },
	{ .sect = S_TLS, .name = "acme_directory", .def = "https://acme-v02.api.letsencrypt.org/directory",
	  .off = P(acme_directory), .check = chk_url, .expect = "a URL like https://host/directory" },
	{ .sect = S_TLS, .name = "acme_email", .def = "", .off = P(acme_email),
	  .check = chk_email, .expect = "an email address" },
	{ .sect = S_TLS, .name = "acme_ca_file", .def = "", .off = P(acme_ca_file) },
	{ .sect = S_TLS, .name = "acme_profile", .def = "", .off = P(acme_profile) },
	{ .sect = S_TLS, .name = "cert_file", .def = "", .off = P(cert_file) },
	{ .sect = S_TLS, .name = "key_file", .def = "", .off = P(key_file) },

	{ .sect = S_SERVICE, .name = "runtime", .type = T_ENUM, .def = "docker", .off = SV(runtime),
	  .choices = runtime_names },
	{ .sect = S_SERVICE, .name = "address", .def = "", .off = SV(address),
	  .check = chk_address_opt, .expect = "host:port like 127.0.0.1:8000" },
	{ .sect = S_SERVICE, .name = "image", .def = "", .off = SV(image) },
	{ .sect = S_SERVICE, .name = "command", .def = "", .off = SV(command) },
	{ .sect = S_SERVICE, .name = "env_file", .def = "", .off = SV(env_file) },
	{ .sect = S_SERVICE, .name = "env", .type = T_MULTI, .off = SV(env),
	  .check = chk_envkv, .expect = "NAME=VALUE" },
	{ .sect = S_SERVICE, .name = "required_env", .type = T_LIST, .def = "", .off = SV(required_env),
	  .check = chk_envname, .expect = "variable names like DATABASE_URL" },
	{ .sect = S_SERVICE, .name = "port", .type = T_INT, .def = "8000", .min = 1, .max = 65535, .off = SV(port) },
	{ .sect = S_SERVICE, .name = "network", .type = T_ENUM, .def = "bridge", .off = SV(network), .choices = net_names },
	{ .sect = S_SERVICE, .name = "volumes", .type = T_MULTI, .off = SV(volumes),
	  .check = chk_volume, .expect = "SOURCE:/path[:options]" },
	{ .sect = S_SERVICE, .name = "pull", .type = T_ENUM, .def = "always", .off = SV(pull), .choices = pull_names },
	{ .sect = S_SERVICE, .name = "pull_timeout", DUR(1), .def = "15m", .off = SV(pull_timeout_ms) },
	{ .sect = S_SERVICE, .name = "pull_stall_timeout", DUR(1), .def = "60s",
	  .off = SV(pull_stall_timeout_ms) },
	{ .sect = S_SERVICE, .name = "registry_auth_file", .def = "", .off = SV(registry_auth_file) },
	{ .sect = S_SERVICE, .name = "release_command", .def = "", .off = SV(release_command) },
	{ .sect = S_SERVICE, .name = "health_path", .def = "/api/v1/health/", .off = SV(health_path), URLPATH },
	{ .sect = S_SERVICE, .name = "health_host", .def = "", .off = SV(health_host),
	  .check = chk_host_opt, .expect = "a host name like example.com" },
	{ .sect = S_SERVICE, .name = "health_status", .def = "200-299", .off = SV(health_status),
	  .check = chk_status_range, .expect = "an HTTP status or range like 200-299" },
	{ .sect = S_SERVICE, .name = "health_interval", DUR(1), .def = "2s", .off = SV(health_interval_ms) },
	{ .sect = S_SERVICE, .name = "health_timeout", DUR(1), .def = "2s", .off = SV(health_timeout_ms) },
	{ .sect = S_SERVICE, .name = "healthy_threshold", .type = T_INT, .def = "2", .min = 1, .max = 100,
	  .off = SV(healthy_threshold) },
	{ .sect = S_SERVICE, .name = "unhealthy_threshold", .type = T_INT, .def = "3", .min = 1, .max = 100,
	  .off = SV(unhealthy_threshold) },
	{ .sect = S_SERVICE, .name = "start_timeout", DUR(1), .def = "120s", .off = SV(start_timeout_ms) },
	{ .sect = S_SERVICE, .name = "drain_timeout", DUR(0), .def = "30s", .off = SV(drain_timeout_ms) },
	{ .sect = S_SERVICE, .name = "stop_timeout", DUR(0), .def = "10s", .off = SV(stop_timeout_ms) },
	{ .sect = S_SERVICE, .name = "restart", .type = T_ENUM, .def = "always", .off = SV(restart),
	  .choices = restart_names },
	{ .sect = S_SERVICE, .name = "unhealthy_restart", DUR(0), .def = "60s", .off = SV(unhealthy_restart_ms) },
	{ .sect = S_SERVICE, .name = "log_relay", .type = T_BOOL, .def = "true", .off = SV(log_relay) },
	{ .sect = S_SERVICE, .name = "keep_images", .type = T_INT, .def = "3", .min = 0, .max = 100,
	  .off = SV(keep_images) },

	{ .sect = S_ROUTE, .name = "prefix", .def = "", .off = RT(prefix), URLPATH_OPT },
	{ .sect = S_ROUTE, .name = "host", .def = "", .off = RT(host),
	  .check = chk_host_opt, .expect = "a host name like example.com" },
	{ .sect = S_ROUTE, .name = "service", .def = "", .off = RT(service),
	  .check = chk_svcref_opt, .expect = "a service name" },
	{ .sect = S_ROUTE, .name = "upstream_idle_timeout", DUR(0), .off = RT(upstream_idle_timeout_ms) },

	{ .sect = S_STATIC, .name = "path", .def = "", .off = ST(path), URLPATH_OPT },
	{ .sect = S_STATIC, .name = "file", .def = "", .off = ST(file) },
	{ .sect = S_STATIC, .name = "dir", .def = "", .off = ST(dir) },
	{ .sect = S_STATIC, .name = "fallback", .type = T_ENUM, .def = "none", .off = ST(fallback),
	  .choices = fallback_names },
	{ .sect = S_STATIC, .name = "content_type", .def = "", .off = ST(content_type) }, /* "": by file extension */
};
#define N_KEYS (sizeof(keys) / sizeof(keys[0]))

static const struct key *find_key(enum skind s, const char *name)
{
	for (size_t i = 0; i < N_KEYS; i++)
		if (keys[i].sect == s && strcmp(keys[i].name, name) == 0)
			return &keys[i];
	return NULL;
}

#define KEY_INDEX(k) ((size_t)((k) - keys))

void config_keys_dump(FILE *f)
{
	for (size_t i = 0; i < N_KEYS; i++)
		fprintf(f, "%s\t%s\t%s\n", skind_names[keys[i].sect], keys[i].name,
			keys[i].def ? keys[i].def : "");
}

/* ---- applying one value -------------------------------------------------- */

/* `s` with quotes, backslashes and control bytes escaped, cut at 60 bytes
 * ("..." appended), into buf. */
static const char *escaped(const char *s, char *buf, size_t len)
{
	size_t o = 0, i;
	for (i = 0; s[i] && i < 60 && o + 8 < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '"' || c == '\\')
			o += (size_t)snprintf(buf + o, len - o, "\\%c", c);
		else if (c < 0x20 || c == 0x7f)
			o += (size_t)snprintf(buf + o, len - o, "\\x%02x", c);
		else
			buf[o++] = (char)c;
	}
	snprintf(buf + o, len - o, "%s", s[i] ? "..." : "");
	return buf;
}

/* escaped(s) in double quotes */
static const char *quoted(const char *s, char *buf, size_t len)
{
	char e[256];
	snprintf(buf, len, "\"%s\"", escaped(s, e, sizeof(e)));
	return buf;
}

static void fmt_dur(uint64_t ms, char *buf, size_t len)
{
	static const struct unit order[] = { { "d", 86400000 }, { "h", 3600000 }, { "m", 60000 },
					     { "s", 1000 }, { "ms", 1 }, { NULL, 0 } };
	if (ms == 0) {
		snprintf(buf, len, "0");
		return;
	}
	for (const struct unit *u = order; u->name; u++)
		if (ms % u->mul == 0) {
			snprintf(buf, len, "%" PRIu64 "%s", ms / u->mul, u->name);
			return;
		}
}

static void fmt_size(uint64_t b, char *buf, size_t len)
{
	static const struct unit order[] = { { "g", 1u << 30 }, { "m", 1u << 20 }, { "k", 1u << 10 }, { NULL, 0 } };
	for (const struct unit *u = order; u->name; u++)
		if (b >= u->mul && b % u->mul == 0) {
			snprintf(buf, len, "%" PRIu64 "%s", b / u->mul, u->name);
			return;
		}
	snprintf(buf, len, "%" PRIu64, b);
}

static void fmt_choices(const char *const *c, char *buf, size_t len)
{
	size_t o = 0;
	buf[0] = '\0';
	for (size_t i = 0; c[i] && o < len; i++)
		o += (size_t)snprintf(buf + o, len - o, "%s%s", i == 0 ? "" : c[i + 1] ? ", " : " or ", c[i]);
}

/* Splits a comma-separated value into trimmed items, each passing k->check,
 * appended to out. An empty value is an empty list. 0, -1 bad item (its text
 * in bad), -2 out of memory. */
static int split_list(const struct key *k, const char *val, struct strlist *out, char *bad, size_t badlen)
{
	const char *p = val;
	char item[256];
	while (*p == ' ' || *p == '\t')
		p++;
	if (!*p)
		return 0;
	for (;;) {
		const char *comma = strchr(p, ',');
		const char *end = comma ? comma : p + strlen(p);
		while (p < end && (*p == ' ' || *p == '\t'))
			p++;
		const char *e = end;
		while (e > p && (e[-1] == ' ' || e[-1] == '\t'))
			e--;
		size_t n = (size_t)(e - p);
		if (n >= sizeof(item)) {
			snprintf(bad, badlen, "%.*s", (int)n, p);
			return -1;
		}
		memcpy(item, p, n);
		item[n] = '\0';
		if (n == 0 || (k->check && !k->check(item))) {
			snprintf(bad, badlen, "%s", item);
			return -1;
		}
		if (out && strlist_push(out, item) < 0)
			return -2;
		if (!comma)
			return 0;
		p = comma + 1;
	}
}

enum { SET_OK = 0, SET_BAD = -1, SET_OOM = -2 };

/* Parses `val` for key k into the section struct `obj`. SET_BAD fills err
 * with "expected ..., got ..."; obj keeps its previous value then. */
static int set_value(const struct key *k, void *obj, const char *val, char *err, size_t errlen)
{
	char *field = (char *)obj + k->off;
	char q[256], lo[32], hi[32], what[256];
	uint64_t u;

	switch (k->type) {
	case T_STR: {
		if (k->check && !k->check(val))
			goto bad_check;
		char *dup = NULL;
		if (k->check == chk_path && val[0] != '/') {
			/* relative [pmd] paths are resolved against the folder pmd
			 * starts in, once, so a later chdir cannot move them */
			char cwd[4096];
			if (!getcwd(cwd, sizeof(cwd)) || asprintf(&dup, "%s/%s", cwd, val) < 0)
				dup = NULL;
		} else {
			dup = strdup(val);
		}
		if (!dup)
			return SET_OOM;
		free(*(char **)field);
		*(char **)field = dup;
		return SET_OK;
	}
	case T_BOOL:
		if (parse_bool(val, (bool *)field) < 0) {
			snprintf(err, errlen, "expected true or false (yes/no, on/off, 1/0), got %s",
				 quoted(val, q, sizeof(q)));
			return SET_BAD;
		}
		return SET_OK;
	case T_INT: {
		if ((k->flags & F_AUTO) && strcmp(val, "auto") == 0) {
			*(int *)field = online_cpus();
			return SET_OK;
		}
		if (parse_digits(val, strlen(val), &u) < 0 || u < (uint64_t)k->min || u > (uint64_t)k->max) {
			snprintf(err, errlen, "expected %san integer from %" PRId64 " to %" PRId64 ", got %s",
				 (k->flags & F_AUTO) ? "auto or " : "", k->min, k->max, quoted(val, q, sizeof(q)));
			return SET_BAD;
		}
		*(int *)field = (int)u;
		return SET_OK;
	}
	case T_DUR:
	case T_SIZE: {
		bool dur = k->type == T_DUR;
		if ((dur ? config_parse_duration : config_parse_size)(val, &u) < 0) {
			snprintf(err, errlen, "expected a %s, got %s",
				 dur ? "duration like 30s" : "size like 16k (k, m, g or bytes)", quoted(val, q, sizeof(q)));
			return SET_BAD;
		}
		if (u < (uint64_t)k->min || u > (uint64_t)k->max) {
			void (*fmt)(uint64_t, char *, size_t) = dur ? fmt_dur : fmt_size;
			fmt((uint64_t)k->min, lo, sizeof(lo));
			fmt((uint64_t)k->max, hi, sizeof(hi));
			snprintf(err, errlen, "expected a %s from %s to %s, got %s", dur ? "duration" : "size", lo, hi,
				 quoted(val, q, sizeof(q)));
			return SET_BAD;
		}
		*(uint64_t *)field = u;
		return SET_OK;
	}
	case T_ENUM: {
		int v = -1;
		if (k->enum_parse) {
			if (k->enum_parse(val, &v) < 0)
				v = -1;
		} else {
			for (int i = 0; k->choices[i]; i++)
				if (strcmp(val, k->choices[i]) == 0)
					v = i;
		}
		if (v < 0) {
			fmt_choices(k->choices, what, sizeof(what));
			snprintf(err, errlen, "expected %s, got %s", what, quoted(val, q, sizeof(q)));
			return SET_BAD;
		}
		*(int *)field = v;
		return SET_OK;
	}
	case T_LISTEN: {
		struct strlist items = { 0 };
		struct listen_addr *arr = NULL;
		int rc = split_list(k, val, &items, what, sizeof(what));
		if (rc == SET_OK && items.n && !(arr = calloc(items.n, sizeof(*arr))))
			rc = SET_OOM;
		for (size_t i = 0; rc == SET_OK && i < items.n; i++)
			if (config_parse_listen(items.v[i], &arr[i]) < 0) {
				snprintf(what, sizeof(what), "%s", items.v[i]);
				rc = SET_BAD;
			}
		if (rc == SET_BAD)
			snprintf(err, errlen, "expected a numeric address like 0.0.0.0:80 or [::]:443, got %s",
				 quoted(what, q, sizeof(q)));
		if (rc == SET_OK) {
			free(*(struct listen_addr **)field);
			*(struct listen_addr **)field = arr;
			*(size_t *)((char *)obj + k->off_n) = items.n;
			arr = NULL;
		}
		free(arr);
		strlist_free(&items);
		return rc;
	}
	case T_LIST: {
		struct strlist items = { 0 };
		int rc = split_list(k, val, &items, what, sizeof(what));
		if (rc == SET_BAD)
			snprintf(err, errlen, "expected a comma-separated list of %s, got %s", k->expect,
				 quoted(what, q, sizeof(q)));
		if (rc == SET_OK) {
			strlist_free((struct strlist *)field);
			*(struct strlist *)field = items;
		} else {
			strlist_free(&items);
		}
		return rc;
	}
	case T_MULTI:
		if (k->check && !k->check(val))
			goto bad_check;
		return strlist_push((struct strlist *)field, val) < 0 ? SET_OOM : SET_OK;
	}
	return SET_BAD;

bad_check:
	snprintf(err, errlen, "expected %s, got %s", k->expect, quoted(val, q, sizeof(q)));
	return SET_BAD;
}

static void free_fields(enum skind s, void *obj)
{
	for (size_t i = 0; i < N_KEYS; i++) {
		const struct key *k = &keys[i];
		char *field = (char *)obj + k->off;
		if (k->sect != s)
			continue;
		if (k->type == T_STR)
			free(*(char **)field);
		else if (k->type == T_LISTEN)
			free(*(struct listen_addr **)field);
		else if (k->type == T_LIST || k->type == T_MULTI)
			strlist_free((struct strlist *)field);
	}
}

/* Fills every key of section kind s in obj with its default. -1 only when
 * out of memory (a default that does not parse is a bug of the table, and is
 * caught by the unit tests). */
static int set_defaults(enum skind s, void *obj)
{
	char err[256];
	for (size_t i = 0; i < N_KEYS; i++)
		if (keys[i].sect == s && keys[i].def && set_value(&keys[i], obj, keys[i].def, err, sizeof(err)) != SET_OK)
			return -1;
	return 0;
}

/* ---- parse state ----------------------------------------------------------- */

/* One section header met in the file. */
struct sect {
	enum skind kind;
	int line;
	size_t index;          /* named: index into services/routes/statics */
	void *scratch;         /* named duplicate: parsed for errors, then dropped */
	const char *name;      /* named: points into the config (or scratch) */
	int seen[N_KEYS];      /* line each key was first set on, 0 = default */
	bool bad[N_KEYS];      /* a value of that key was refused */
};

struct perr {
	int line;
	size_t seq;
	char *msg;
};

struct ctx {
	const char *file;                 /* name for messages */
	const char *buf;
	size_t len, pos;
	int lineno;
	struct pmd_config *cfg;

	struct sect *sects;
	size_t n_sects, cap_sects;
	long cur;                         /* sects index keys go to; CUR_* below */
	long global[3];                   /* sects index of [pmd] [proxy] [tls], -1 */

	bool cont;                        /* the current line continues a value */
	bool has_prev;                    /* inih's prev_name is set */
	long pend_sect;                   /* value being collected, applied on flush */
	const struct key *pend_key;
	int pend_line;
	char *pend_val;
	char *long_val;                   /* value of a line too long for inih (long_line) */

	struct perr *errv;
	size_t n_err, cap_err;
	bool oom;
};

#define CUR_NONE (-1)    /* before the first section */
#define CUR_IGNORE (-2)  /* inside a section that was refused */

static void add_err(struct ctx *x, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void add_err(struct ctx *x, int line, const char *fmt, ...)
{
	va_list ap;
	char *msg = NULL;
	va_start(ap, fmt);
	int n = vasprintf(&msg, fmt, ap);
	va_end(ap);
	if (n < 0) {
		x->oom = true;
		return;
	}
	if (x->n_err == x->cap_err) {
		size_t cap = x->cap_err ? x->cap_err * 2 : 8;
		struct perr *v = realloc(x->errv, cap * sizeof(*v));
		if (!v) {
			free(msg);
			x->oom = true;
			return;
		}
		x->errv = v;
		x->cap_err = cap;
	}
	x->errv[x->n_err] = (struct perr){ line, x->n_err, msg };
	x->n_err++;
}

/* Where the structs of a named section kind live in pmd_config. */
static const struct named {
	size_t size, name_off, line_off, arr_off, n_off;
} named[S_COUNT] = {
	[S_SERVICE] = { sizeof(struct svc_conf), SV(name), SV(line), P(services), P(n_services) },
	[S_ROUTE] = { sizeof(struct route_conf), RT(name), RT(line), P(routes), P(n_routes) },
	[S_STATIC] = { sizeof(struct static_conf), ST(name), ST(line), P(statics), P(n_statics) },
};

#define FIELD(obj, off, type) ((type *)((char *)(obj) + (off)))

/* The element array of a named kind (through memcpy: its declared type is
 * struct svc_conf * etc.). */
static char *named_array(const struct pmd_config *c, enum skind k)
{
	char *arr;
	memcpy(&arr, (const char *)c + named[k].arr_off, sizeof(arr));
	return arr;
}

static void *sect_obj(struct ctx *x, const struct sect *s)
{
	if (s->scratch)
		return s->scratch;
	if (!NAMED(s->kind))
		return x->cfg;
	return named_array(x->cfg, s->kind) + s->index * named[s->kind].size;
}

/* "[service backend]" or "[proxy]" */
static const char *sect_label(const struct sect *s, char *buf, size_t len)
{
	if (NAMED(s->kind))
		snprintf(buf, len, "[%s %s]", skind_names[s->kind], s->name);
	else
		snprintf(buf, len, "[%s]", skind_names[s->kind]);
	return buf;
}

static void flush_pending(struct ctx *x)
{
	char err[512];
	if (!x->pend_val)
		return;
	struct sect *s = &x->sects[x->pend_sect];
	int rc = set_value(x->pend_key, sect_obj(x, s), x->pend_val, err, sizeof(err));
	if (rc == SET_OOM)
		x->oom = true;
	if (rc == SET_BAD) {
		s->bad[KEY_INDEX(x->pend_key)] = true;
		add_err(x, x->pend_line, "%s: %s", x->pend_key->name, err);
	}
	free(x->pend_val);
	x->pend_val = NULL;
}

static void free_named(enum skind k, void *obj)
{
	free_fields(k, obj);
	free(*FIELD(obj, named[k].name_off, char *));
}

static struct sect *new_sect(struct ctx *x, enum skind kind, int line)
{
	if (x->n_sects == x->cap_sects) {
		size_t cap = x->cap_sects ? x->cap_sects * 2 : 8;
		struct sect *v = realloc(x->sects, cap * sizeof(*v));
		if (!v) {
			x->oom = true;
			return NULL;
		}
		x->sects = v;
		x->cap_sects = cap;
	}
	struct sect *s = &x->sects[x->n_sects];
	memset(s, 0, sizeof(*s));
	s->kind = kind;
	s->line = line;
	return s;
}

/* Creates the struct of a named section: appended to the config, or a
 * scratch one when the name is taken (the section is still checked). */
static void open_named(struct ctx *x, enum skind kind, const char *name, int line)
{
	const struct named *d = &named[kind];
	size_t *n = FIELD(x->cfg, d->n_off, size_t);
	void *obj = NULL;
	int first_line = 0;

	for (size_t i = 0; i < x->n_sects; i++)
		if (x->sects[i].kind == kind && !x->sects[i].scratch && x->sects[i].name &&
		    strcmp(x->sects[i].name, name) == 0)
			first_line = x->sects[i].line;
	struct sect *s = new_sect(x, kind, line);
	if (!s)
		goto fail;
	if (first_line) {
		add_err(x, line, "duplicate section [%s %s] (first at line %d)", skind_names[kind], name, first_line);
		obj = s->scratch = calloc(1, d->size);
	} else {
		char *grown = realloc(named_array(x->cfg, kind), (*n + 1) * d->size);
		if (!grown)
			goto fail;
		memcpy((char *)x->cfg + d->arr_off, &grown, sizeof(grown));
		s->index = (*n)++;
		obj = grown + s->index * d->size;
		memset(obj, 0, d->size);
	}
	if (!obj)
		goto fail;
	x->n_sects++;
	x->cur = (long)(x->n_sects - 1);
	char **namep = FIELD(obj, d->name_off, char *);
	*namep = strdup(name);
	s->name = *namep;
	*FIELD(obj, d->line_off, int) = line;
	if (!*namep || set_defaults(kind, obj) < 0)
		x->oom = true;
	return;
fail:
	x->oom = true;
	x->cur = CUR_IGNORE;
}

static void open_global(struct ctx *x, enum skind kind, int line)
{
	long *g = &x->global[kind];
	if (*g >= 0) {
		add_err(x, line, "duplicate section [%s] (first at line %d)", skind_names[kind], x->sects[*g].line);
		x->cur = *g; /* keys still count, and clash with the first section's */
		return;
	}
	if (!new_sect(x, kind, line)) {
		x->cur = CUR_IGNORE;
		return;
	}
	*g = x->cur = (long)x->n_sects++;
}

/* A "[...]" line; start points at '['. */
static void section_header(struct ctx *x, const char *start, int line)
{
	char text[128], word[16];
	const char *close = start + 1;
	bool space = false;

	x->cur = CUR_IGNORE;
	/* inih ends the header at ']' or at an inline comment. */
	while (*close && *close != ']' && !(space && *close == ';')) {
		space = isspace((unsigned char)*close);
		close++;
	}
	if (*close != ']') {
		add_err(x, line, "expected a section header like [proxy], got no closing ]");
		return;
	}
	const char *after = close + 1;
	while (isspace((unsigned char)*after))
		after++;
	if (*after && *after != ';' && *after != '#')
		add_err(x, line, "unexpected text after the section header");

	const char *p = start + 1;
	while (p < close && isspace((unsigned char)*p))
		p++;
	const char *wend = p;
	while (wend < close && !isspace((unsigned char)*wend))
		wend++;
	const char *name = wend;
	while (name < close && isspace((unsigned char)*name))
		name++;
	const char *nend = close;
	while (nend > name && isspace((unsigned char)nend[-1]))
		nend--;
	snprintf(text, sizeof(text), "%.*s", (int)(close - start - 1), start + 1);
	snprintf(word, sizeof(word), "%.*s", (int)(wend - p), p);

	int kind = -1;
	for (int k = 0; k < S_COUNT; k++)
		if ((size_t)(wend - p) < sizeof(word) && strcmp(word, skind_names[k]) == 0)
			kind = k;
	if (kind < 0 || (!NAMED(kind) && name < nend)) {
		char e[256];
		add_err(x, line, "unknown section [%s]: expected [pmd], [proxy], [tls], [service NAME], "
			"[route NAME] or [static NAME]", escaped(text, e, sizeof(e)));
		return;
	}
	if (!NAMED(kind)) {
		open_global(x, (enum skind)kind, line);
		return;
	}
	if (name == nend) {
		add_err(x, line, "section [%s] needs a name: [%s NAME]", skind_names[kind], skind_names[kind]);
		return;
	}
	if (!is_name(name, (size_t)(nend - name)) || nend - name > 64) {
		char q[256], n[128];
		snprintf(n, sizeof(n), "%.*s", (int)(nend - name), name);
		add_err(x, line, "%s name: expected letters, digits, '.', '_' or '-', got %s", skind_names[kind],
			quoted(n, q, sizeof(q)));
		return;
	}
	char nm[80];
	snprintf(nm, sizeof(nm), "%.*s", (int)(nend - name), name);
	open_named(x, (enum skind)kind, nm, line);
}

/* ---- inih glue ------------------------------------------------------------ */

#define LONG_LINE_MAX 65536   /* characters of one line */

/* Mirrors how inih classifies `line` (see ini.c: comment, continuation,
 * section, key), so that the reader knows what the handler is about to be
 * called for; handles section headers and syntax errors itself. */
static void classify(struct ctx *x, const char *line, int lineno)
{
	const char *start = line, *p;
	bool space = false;
	char q[256];

	x->cont = false;
	if (lineno == 1 && strncmp(start, "\xEF\xBB\xBF", 3) == 0)
		start += 3;
	while (isspace((unsigned char)*start))
		start++;
	if (!*start || *start == ';' || *start == '#')
		return;
	if (x->has_prev && start > line) {
		x->cont = true;
		return;
	}
	flush_pending(x);
	if (*start == '[') {
		x->has_prev = false;
		section_header(x, start, lineno);
		return;
	}
	for (p = start; *p && *p != '=' && *p != ':' && !(space && *p == ';'); p++)
		space = isspace((unsigned char)*p);
	if (*p == '=' || *p == ':') {
		while (p > start && isspace((unsigned char)p[-1]))
			p--;
		x->has_prev = p > start;
		return;
	}
	char text[256];
	size_t n = strcspn(start, "\r\n");
	snprintf(text, sizeof(text), "%.*s", (int)(n < 200 ? n : 200), start);
	add_err(x, lineno, "expected \"key = value\" or a [section] header, got %s", quoted(text, q, sizeof(q)));
}

static void append_pending(struct ctx *x, const char *value);

/* A line longer than inih's buffer (r55 has a fixed one of 200 bytes,
 * INI_ALLOW_REALLOC is off in Debian's and Ubuntu's builds), handled here
 * as inih would: a `key = value` line reaches inih as "key =" with the
 * value kept in x->long_val for the handler; a continuation line is
 * appended to the pending value at once. Anything else is classified and
 * reported as usual. Writes what inih gets into str (room for num). */
static void long_line(struct ctx *x, const char *p, size_t content, char *str, int num)
{
	char *line = strndup(p, content), *q, *v, *start;
	bool space = false;

	str[0] = '\n';
	str[1] = '\0';
	if (line == NULL) {
		x->oom = true;
		return;
	}
	classify(x, line, x->lineno);
	start = line + (x->lineno == 1 && strncmp(line, "\xEF\xBB\xBF", 3) == 0 ? 3 : 0);
	while (isspace((unsigned char)*start))
		start++;
	if (x->cont) {
		if (x->pend_val)
			append_pending(x, start);
		goto out;
	}
	if (!x->has_prev)
		goto out;                 /* a header or a syntax error: reported */
	for (q = start; *q && *q != '=' && *q != ':' && !(space && *q == ';'); q++)
		space = isspace((unsigned char)*q);
	if (*q != '=' && *q != ':')
		goto out;                 /* no `=`: reported by classify */
	if ((size_t)(q - line) + 3 > (size_t)num) {
		add_err(x, x->lineno, "line too long: a key of %zu characters", (size_t)(q - start));
		x->has_prev = false;
		goto out;
	}
	memcpy(str, line, (size_t)(q - line) + 1);
	str[q - line + 1] = '\n';
	str[q - line + 2] = '\0';
	/* inih: an inline comment starts at ';' after a blank; then trimmed */
	space = false;
	for (v = q + 1; *v && !(space && *v == ';'); v++)
		space = isspace((unsigned char)*v);
	*v = '\0';
	for (v = q + 1; isspace((unsigned char)*v); v++)
		;
	q = v + strlen(v);
	while (q > v && isspace((unsigned char)q[-1]))
		*--q = '\0';
	x->long_val = strdup(v);
	if (x->long_val == NULL)
		x->oom = true;
out:
	free(line);
}

/* fgets-like reader over the buffer for inih: numbers lines, refuses NUL
 * bytes, hands lines over inih's buffer to long_line, classifies. */
static char *reader(char *str, int num, void *stream)
{
	struct ctx *x = stream;
	free(x->long_val);
	x->long_val = NULL;
	if (x->pos >= x->len || num < 4)
		return NULL;
	const char *p = x->buf + x->pos;
	const char *nl = memchr(p, '\n', x->len - x->pos);
	size_t n = nl ? (size_t)(nl - p) + 1 : x->len - x->pos;
	size_t content = n;
	x->pos += n;
	x->lineno++;
	if (content && p[content - 1] == '\n')
		content--;
	if (content && p[content - 1] == '\r')
		content--;
	if (memchr(p, '\0', n)) {
		add_err(x, x->lineno, "unexpected NUL byte");
		n = 0;
	} else if (content > (size_t)num - 3) {
		size_t bom = x->lineno == 1 && strncmp(p, "\xEF\xBB\xBF", 3) == 0 ? 3 : 0;
		size_t lead = bom + strspn(p + bom, " \t");
		if (p[lead] == ';' || p[lead] == '#') {
			n = 0;
		} else if (content > LONG_LINE_MAX) {
			add_err(x, x->lineno, "line too long: expected at most %d characters, got %zu "
				"(continue a long value on indented lines)", LONG_LINE_MAX, content);
			n = 0;
		} else {
			long_line(x, p, content, str, num);
			return str;
		}
	}
	if (n == 0) {
		str[0] = '\n';
		str[1] = '\0';
	} else {
		memcpy(str, p, n);
		str[n] = '\0';
	}
	classify(x, str, x->lineno);
	return str;
}

/* Adds a continuation line to the pending value, joined by one space. */
static void append_pending(struct ctx *x, const char *value)
{
	const char *p = value;
	bool space = false;
	/* inih r55 leaves inline comments on continuation lines */
	for (; *p && !(space && *p == ';'); p++)
		space = isspace((unsigned char)*p);
	while (p > value && isspace((unsigned char)p[-1]))
		p--;
	size_t add = (size_t)(p - value), old = strlen(x->pend_val);
	if (add == 0)
		return;
	char *v = realloc(x->pend_val, old + add + 2);
	if (!v) {
		x->oom = true;
		return;
	}
	size_t o = old;
	if (old)
		v[o++] = ' ';
	memcpy(v + o, value, add);
	v[o + add] = '\0';
	x->pend_val = v;
}

static int handler(void *user, const char *section, const char *name, const char *value)
{
	struct ctx *x = user;
	char q[256], label[128];
	(void)section; /* the reader tracked the section, with its line */

	if (x->cont) {
		if (x->pend_val)
			append_pending(x, value);
		return 1;
	}
	if (x->cur == CUR_NONE) {
		add_err(x, x->lineno, "key %s is outside of any section: expected a [section] header first",
			quoted(name, q, sizeof(q)));
		return 1;
	}
	if (x->cur == CUR_IGNORE)
		return 1;
	struct sect *s = &x->sects[x->cur];
	const struct key *k = find_key(s->kind, name);
	if (!k) {
		add_err(x, x->lineno, "unknown key %s in %s", quoted(name, q, sizeof(q)), sect_label(s, label, sizeof(label)));
		return 1;
	}
	size_t i = KEY_INDEX(k);
	if (s->seen[i] && k->type != T_MULTI) {
		add_err(x, x->lineno, "%s: duplicate key in %s (first at line %d)", k->name,
			sect_label(s, label, sizeof(label)), s->seen[i]);
		return 1;
	}
	if (!s->seen[i])
		s->seen[i] = x->lineno;
	x->pend_val = strdup(x->long_val ? x->long_val : value);
	if (!x->pend_val)
		x->oom = true;
	x->pend_key = k;
	x->pend_sect = x->cur;
	x->pend_line = x->lineno;
	return 1;
}

/* ---- checks across keys and sections -------------------------------------- */

/* Line of key `name` in s, 0 when it was not written (s NULL: no section). */
static int key_seen(const struct sect *s, const char *name)
{
	return s ? s->seen[KEY_INDEX(find_key(s->kind, name))] : 0;
}

/* Line of key `name` in s, else of s's header, else 0 (s NULL: no section). */
static int key_line(const struct sect *s, const char *name)
{
	int l = key_seen(s, name);
	return l ? l : s ? s->line : 0;
}

static bool key_bad(const struct sect *s, const char *name)
{
	return s && s->bad[KEY_INDEX(find_key(s->kind, name))];
}

static struct sect *global_sect(struct ctx *x, enum skind k)
{
	return x->global[k] >= 0 ? &x->sects[x->global[k]] : NULL;
}

static void check_service(struct ctx *x, struct sect *s)
{
	const struct svc_conf *v = &x->cfg->services[s->index];
	if (key_bad(s, "runtime"))
		return;
	if (v->runtime == RUNTIME_DOCKER && !*v->image)
		add_err(x, s->line, "[service %s]: missing image (needed with runtime = docker)", v->name);
	if (v->runtime == RUNTIME_EXEC && !*v->command)
		add_err(x, s->line, "[service %s]: missing command (needed with runtime = exec)", v->name);
	if (v->runtime == RUNTIME_EXTERNAL && !*v->address && !key_bad(s, "address"))
		add_err(x, s->line, "[service %s]: missing address (needed with runtime = external)", v->name);
	if (v->runtime == RUNTIME_EXTERNAL && *v->image)
		add_err(x, key_line(s, "image"), "image: not used with runtime = external (pmd does not run this service)");
	if (v->runtime != RUNTIME_EXTERNAL && *v->address)
		add_err(x, key_line(s, "address"), "address: only used with runtime = external");
	if (v->runtime != RUNTIME_DOCKER && v->volumes.n)
		add_err(x, key_line(s, "volumes"), "volumes: only supported with runtime = docker");
}

static void check_route(struct ctx *x, struct sect *s)
{
	struct pmd_config *c = x->cfg;
	struct route_conf *r = &c->routes[s->index];
	r->svc_index = -1;
	if (!*r->prefix && !key_bad(s, "prefix"))
		add_err(x, s->line, "[route %s]: missing prefix", r->name);
	if (!*r->service && !key_bad(s, "service"))
		add_err(x, s->line, "[route %s]: missing service", r->name);
	if (*r->service) {
		for (size_t i = 0; i < c->n_services; i++)
			if (strcmp(c->services[i].name, r->service) == 0)
				r->svc_index = (int)i;
		if (r->svc_index < 0)
			add_err(x, key_line(s, "service"), "service: no [service %s] is defined", r->service);
	}
	for (size_t j = 0; j < s->index && *r->prefix; j++) {
		const struct route_conf *o = &c->routes[j];
		if (strcmp(o->prefix, r->prefix) == 0 && strcasecmp(o->host, r->host) == 0)
			add_err(x, key_line(s, "prefix"), "[route %s]: same host and prefix as [route %s] (line %d)",
				r->name, o->name, o->line);
	}
}

static void check_static(struct ctx *x, struct sect *s)
{
	struct pmd_config *c = x->cfg;
	struct static_conf *st = &c->statics[s->index];
	bool file = *st->file, dir = *st->dir;
	st->src_line = key_line(s, file ? "file" : "dir");
	if (!*st->path && !key_bad(s, "path"))
		add_err(x, s->line, "[static %s]: missing path", st->name);
	if (!file && !dir)
		add_err(x, s->line, "[static %s]: missing file (one file) or dir (a folder)", st->name);
	if (file && dir)
		add_err(x, key_line(s, "dir"), "[static %s]: file and dir exclude each other: "
			"one file at path, or one folder under it", st->name);
	if (dir && *st->path && st->path[strlen(st->path) - 1] != '/')
		add_err(x, key_line(s, "path"), "path: a folder is served under a prefix ending in /, "
			"got \"%s\" (try \"%s/\")", st->path, st->path);
	if (dir && *st->content_type)
		add_err(x, key_line(s, "content_type"), "content_type: applies to file =; "
			"the files of a folder are typed by extension");
	if (!dir && st->fallback != STATIC_FALLBACK_NONE && !key_bad(s, "fallback"))
		add_err(x, key_line(s, "fallback"), "fallback: applies to dir = (a file missing from the folder)");
	for (size_t j = 0; j < s->index && *st->path; j++)
		if (strcmp(c->statics[j].path, st->path) == 0)
			add_err(x, key_line(s, "path"), "path: %s is also served by [static %s] (line %d)", st->path,
				c->statics[j].name, c->statics[j].line);
}

static void check_tls(struct ctx *x)
{
	struct pmd_config *c = x->cfg;
	struct sect *t = global_sect(x, S_TLS);
	const char *dflt = key_seen(t, "mode") ? "" : " (the default)";
	int line = key_line(t, "mode");
	if (key_bad(t, "mode"))
		return;
	if (c->tls_mode == TLS_ACME && c->domains.n == 0 && !key_bad(t, "domains"))
		add_err(x, line, "[tls] mode = acme%s needs domains: set domains, or mode = off", dflt);
	if (c->tls_mode == TLS_FILES && !*c->cert_file)
		add_err(x, line, "[tls] mode = files needs cert_file");
	if (c->tls_mode == TLS_FILES && !*c->key_file)
		add_err(x, line, "[tls] mode = files needs key_file");
}

struct lentry {
	const struct listen_addr *a;
	const char *key;
	int line;
};

static void check_listen(struct ctx *x)
{
	struct pmd_config *c = x->cfg;
	struct sect *p = global_sect(x, S_PROXY);
	bool https = c->tls_mode != TLS_OFF && !key_bad(global_sect(x, S_TLS), "mode");
	struct lentry *e = calloc(c->n_http_listen + c->n_https_listen + 1, sizeof(*e));
	size_t n = 0;

	if (!e) {
		x->oom = true;
		return;
	}
	if (!key_bad(p, "http_listen"))
		for (size_t i = 0; i < c->n_http_listen; i++)
			e[n++] = (struct lentry){ &c->http_listen[i], "http_listen", key_seen(p, "http_listen") };
	if (https && !key_bad(p, "https_listen"))
		for (size_t i = 0; i < c->n_https_listen; i++)
			e[n++] = (struct lentry){ &c->https_listen[i], "https_listen", key_seen(p, "https_listen") };
	for (size_t j = 1; j < n; j++)
		for (size_t i = 0; i < j; i++) {
			bool same = listen_same(e[i].a, e[j].a);
			if (!same && !listen_overlap(e[i].a, e[j].a))
				continue;
			/* blame the entry the user wrote last */
			const struct lentry *w = &e[j], *o = &e[i];
			if (w->line < o->line) {
				w = &e[i];
				o = &e[j];
			}
			bool one = strcmp(w->key, o->key) == 0;
			if (same && one)
				add_err(x, w->line, "%s: %s is listed twice", w->key, w->a->text);
			else if (same)
				add_err(x, w->line, "%s: %s is also listed in %s", w->key, w->a->text, o->key);
			else
				add_err(x, w->line, "%s: %s overlaps %s%s%s", w->key, w->a->text, o->a->text,
					one ? "" : " in ", one ? "" : o->key);
		}
	free(e);
	if (!https) {
		free(c->https_listen);
		c->https_listen = NULL;
		c->n_https_listen = 0;
	}
	if (c->n_http_listen == 0 && c->n_https_listen == 0 && !key_bad(p, "http_listen") && !key_bad(p, "https_listen"))
		add_err(x, key_line(p, "http_listen"), "http_listen: empty and no https_listen is bound: "
			"pmd would listen nowhere");
}

static void finalize(struct ctx *x)
{
	for (size_t i = 0; i < x->n_sects; i++) {
		struct sect *s = &x->sects[i];
		if (s->scratch)
			continue;
		if (s->kind == S_SERVICE)
			check_service(x, s);
		else if (s->kind == S_ROUTE)
			check_route(x, s);
		else if (s->kind == S_STATIC)
			check_static(x, s);
	}
	check_tls(x);
	check_listen(x);
}

/* ---- load / free ------------------------------------------------------------ */

static int cmp_err(const void *a, const void *b)
{
	const struct perr *x = a, *y = b;
	if (x->line != y->line)
		return x->line < y->line ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Parses buf[0..len) read from `file`. See config_load. */
static int parse_buffer(const char *file, const char *buf, size_t len, struct pmd_config **out,
			struct strlist *errs)
{
	struct ctx x = { .file = file, .buf = buf, .len = len, .cur = CUR_NONE, .global = { -1, -1, -1 } };
	int rc = -1;

	x.cfg = calloc(1, sizeof(*x.cfg));
	if (!x.cfg || !(x.cfg->path = strdup(file)) || set_defaults(S_PMD, x.cfg) < 0 ||
	    set_defaults(S_PROXY, x.cfg) < 0 || set_defaults(S_TLS, x.cfg) < 0) {
		x.oom = true;
		goto out;
	}
	int r = ini_parse_stream(reader, &x, handler, &x);
	free(x.long_val);
	x.long_val = NULL;
	flush_pending(&x);
	if (r < 0)
		x.oom = true;
	if (r > 0) {
		bool known = false;
		for (size_t i = 0; i < x.n_err; i++)
			known = known || x.errv[i].line == r;
		if (!known)
			add_err(&x, r, "syntax error");
	}
	if (!x.oom)
		finalize(&x);
out:
	if (x.n_err)
		qsort(x.errv, x.n_err, sizeof(*x.errv), cmp_err);
	for (size_t i = 0; i < x.n_err; i++) {
		char *line = NULL;
		int n = x.errv[i].line ? asprintf(&line, "%s:%d: %s", file, x.errv[i].line, x.errv[i].msg)
				       : asprintf(&line, "%s: %s", file, x.errv[i].msg);
		if (n >= 0)
			strlist_push(errs, line);
		free(line);
		free(x.errv[i].msg);
	}
	if (x.oom) {
		char line[512];
		snprintf(line, sizeof(line), "%s: out of memory", file);
		strlist_push(errs, line);
	}
	if (x.n_err == 0 && !x.oom) {
		*out = x.cfg;
		x.cfg = NULL;
		rc = 0;
	}
	for (size_t i = 0; i < x.n_sects; i++)
		if (x.sects[i].scratch) {
			free_named(x.sects[i].kind, x.sects[i].scratch);
			free(x.sects[i].scratch);
		}
	free(x.sects);
	free(x.errv);
	free(x.pend_val);
	config_free(x.cfg);
	return rc;
}

int config_load_string(const char *name, const char *text, struct pmd_config **out, struct strlist *errs)
{
	return parse_buffer(name, text, strlen(text), out, errs);
}

int config_load(const char *path, struct pmd_config **out, struct strlist *errs)
{
	char *buf = malloc(MAX_FILE_BYTES + 1), line[512];
	size_t len = 0, n;
	int rc = -1, err = 0;
	FILE *f = fopen(path, "r");

	if (!f || !buf) {
		err = !f ? errno : ENOMEM;
		goto out;
	}
	while (len <= MAX_FILE_BYTES && (n = fread(buf + len, 1, MAX_FILE_BYTES + 1 - len, f)) > 0)
		len += n;
	if (ferror(f))
		err = errno ? errno : EIO;
	else if (len > MAX_FILE_BYTES)
		err = EFBIG;
	else
		rc = parse_buffer(path, buf, len, out, errs);
out:
	if (err) {
		snprintf(line, sizeof(line), "%s: cannot read: %s", path, strerror(err));
		strlist_push(errs, line);
	}
	if (f)
		fclose(f);
	free(buf);
	return rc;
}

void config_free(struct pmd_config *c)
{
	if (!c)
		return;
	free_fields(S_PMD, c);
	free_fields(S_PROXY, c);
	free_fields(S_TLS, c);
	for (size_t i = 0; i < c->n_services; i++)
		free_named(S_SERVICE, &c->services[i]);
	for (size_t i = 0; i < c->n_routes; i++)
		free_named(S_ROUTE, &c->routes[i]);
	for (size_t i = 0; i < c->n_statics; i++)
		free_named(S_STATIC, &c->statics[i]);
	free(c->services);
	free(c->routes);
	free(c->statics);
	free(c->path);
	free(c);
}

/* One [static]'s file or folder on disk; NULL when fine, else the problem
 * in buf. */
static const char *static_problem(const struct static_conf *st, char *buf, size_t len)
{
	const char *key = *st->file ? "file" : "dir", *path = *st->file ? st->file : st->dir;
	struct stat sb;
	int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		snprintf(buf, len, "%s: cannot open %s: %s", key, path, strerror(errno));
		return buf;
	}
	int r = fstat(fd, &sb);
	close(fd);
	if (r < 0)
		snprintf(buf, len, "%s: cannot stat %s: %s", key, path, strerror(errno));
	else if (*st->file && S_ISDIR(sb.st_mode))
		snprintf(buf, len, "file: %s is a folder (serve a folder with dir =)", path);
	else if (*st->file && !S_ISREG(sb.st_mode))
		snprintf(buf, len, "file: %s is not a regular file", path);
	else if (*st->dir && !S_ISDIR(sb.st_mode))
		snprintf(buf, len, "dir: %s is not a folder (serve one file with file =)", path);
	else if (*st->dir && access(path, X_OK) < 0)
		snprintf(buf, len, "dir: cannot search %s: %s", path, strerror(errno));
	else
		return NULL;
	return buf;
}

int config_check_files(const struct pmd_config *c, struct strlist *errs)
{
	int rc = 0;
	for (size_t i = 0; i < c->n_statics; i++) {
		char msg[PATH_MAX + 128], line[PATH_MAX + 512];
		const struct static_conf *st = &c->statics[i];
		if (!static_problem(st, msg, sizeof(msg)))
			continue;
		snprintf(line, sizeof(line), "%s:%d: [static %s] %s", c->path, st->src_line, st->name, msg);
		strlist_push(errs, line);
		rc = -1;
	}
	return rc;
}

const struct svc_conf *config_service(const struct pmd_config *c, const char *name)
{
	for (size_t i = 0; c && i < c->n_services; i++)
		if (strcmp(c->services[i].name, name) == 0)
			return &c->services[i];
	return NULL;
}

uint64_t config_max_drain_ms(const struct pmd_config *c)
{
	uint64_t ms = 0;
	for (size_t i = 0; i < c->n_services; i++)
		if (c->services[i].drain_timeout_ms > ms)
			ms = c->services[i].drain_timeout_ms;
	return c->n_services ? ms : 30000;
}

uint64_t config_max_stop_ms(const struct pmd_config *c)
{
	uint64_t ms = 0;
	for (size_t i = 0; i < c->n_services; i++)
		if (c->services[i].stop_timeout_ms > ms)
			ms = c->services[i].stop_timeout_ms;
	return ms;
}

void config_proxy_settings(const struct pmd_config *c, struct proxy_settings *ps)
{
	ps->redirect_https = c->redirect_https && c->tls_mode != TLS_OFF;
	ps->max_connections = c->max_connections;
	ps->max_header_bytes = c->max_header_bytes;
	ps->max_body_bytes = c->max_body_bytes;
	ps->client_header_timeout_ms = c->client_header_timeout_ms;
	ps->idle_timeout_ms = c->idle_timeout_ms;
	ps->upstream_connect_timeout_ms = c->upstream_connect_timeout_ms;
	ps->upstream_response_timeout_ms = c->upstream_response_timeout_ms;
	ps->upstream_idle_timeout_ms = c->upstream_idle_timeout_ms;
	ps->hold_timeout_ms = c->hold_timeout_ms;
	ps->drain_timeout_ms = config_max_drain_ms(c);
	ps->access_log = c->access_log;
	ps->http2 = c->http2;
	ps->max_concurrent_streams = c->max_concurrent_streams;
	ps->log_json = c->log_format == LOG_JSON;
	snprintf(ps->lb_health_path, sizeof(ps->lb_health_path), "%s", c->lb_health_path ? c->lb_health_path : "");
	ps->lb_draining = false;
}
