/* config — pmd.ini: the key table of SPEC.md parsed with inih.
 *
 * The table {section, key, type, default, min, max} in core/config.c drives
 * parsing, defaults, `pmd check` and the reference docs. Durations are kept
 * in milliseconds, sizes in bytes. All strings are owned by the config and
 * freed by config_free(); empty optional strings are "" (never NULL). */
#ifndef PMD_CONFIG_H
#define PMD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

/* A growable list of owned strings (repeatable and comma-separated keys). */
struct strlist {
	char **v;
	size_t n, cap;
};
int strlist_push(struct strlist *l, const char *s); /* copies s; 0/-1 */
void strlist_free(struct strlist *l);

struct listen_addr {
	char text[96];                /* as written, e.g. "[::]:443" */
	struct sockaddr_storage ss;   /* resolved numeric address */
	socklen_t sslen;
};

enum runtime_kind { RUNTIME_DOCKER = 0, RUNTIME_EXEC, RUNTIME_EXTERNAL };
enum net_mode { NET_BRIDGE = 0, NET_HOST };
enum pull_policy { PULL_ALWAYS = 0, PULL_MISSING };
enum restart_policy { RESTART_ALWAYS = 0, RESTART_ON_FAILURE, RESTART_NEVER };
enum tls_mode { TLS_ACME = 0, TLS_FILES, TLS_SELF_SIGNED, TLS_OFF };

struct svc_conf {
	char *name;             /* from [service NAME] */
	int line;               /* line of the section header */
	enum runtime_kind runtime;
	char *address;          /* external: "host:port" */
	char *image;
	char *command;
	char *env_file;
	struct strlist env;     /* "KEY=VALUE", repeatable */
	struct strlist required_env;
	int port;
	enum net_mode network;
	struct strlist volumes; /* docker only, repeatable */
	enum pull_policy pull;
	uint64_t pull_timeout_ms;       /* a whole pull */
	uint64_t pull_stall_timeout_ms; /* a pull with no progress this long is aborted */
	char *registry_auth_file;
	char *release_command;
	char *health_path;
	char *health_host;      /* "" = first of [tls] domains, else "localhost" */
	char *health_status;    /* statuses that pass: "200-299" (config_parse_status_range) */
	uint64_t health_interval_ms, health_timeout_ms;
	int healthy_threshold, unhealthy_threshold;
	uint64_t start_timeout_ms, drain_timeout_ms, stop_timeout_ms;
	enum restart_policy restart;
	uint64_t unhealthy_restart_ms; /* 0 disables */
	int keep_images;
	bool log_relay;         /* instance output lines also go to pmd's log */
};

struct route_conf {
	char *name;
	int line;
	char *prefix;           /* starts with '/' */
	char *host;             /* "" = any host */
	char *service;
	int svc_index;          /* index into pmd_config.services */
	uint64_t upstream_idle_timeout_ms;  /* 0: [proxy] upstream_idle_timeout */
};

/* [static NAME]: `file` at the exact `path`, or folder `dir` under the
 * prefix `path` (ends in '/'); one of file and dir is set. */
struct static_conf {
	char *name;
	int line;
	char *path;
	char *file;             /* "" = a folder */
	char *dir;              /* "" = a file */
	int fallback;           /* enum static_fallback (dir only) */
	char *content_type;     /* file only; "" = by extension */
	int src_line;           /* line of the file or dir key (config_check_files) */
};

enum static_fallback { STATIC_FALLBACK_NONE, STATIC_FALLBACK_ROUTE };

struct pmd_config {
	char *path;             /* file it was read from */

	/* [pmd] */
	char *state_dir, *control_socket, *control_group, *docker_socket;
	int log_format;         /* enum log_format */
	int log_level;          /* enum log_level */

	/* [proxy] */
	struct listen_addr *http_listen;  size_t n_http_listen;
	struct listen_addr *https_listen; size_t n_https_listen;
	int workers;            /* resolved: "auto" = number of CPUs */
	bool redirect_https;
	char *hsts;             /* "" disables */
	int max_connections;
	uint64_t max_header_bytes, max_body_bytes;
	uint64_t client_header_timeout_ms, idle_timeout_ms;
	uint64_t upstream_connect_timeout_ms, upstream_response_timeout_ms;
	uint64_t upstream_idle_timeout_ms;  /* between response body bytes; 0 = off */
	uint64_t hold_timeout_ms;
	bool access_log;
	char *lb_health_path;   /* "" = off */
	bool http2;
	int max_concurrent_streams;

	/* [tls] */
	enum tls_mode tls_mode;
	struct strlist domains;
	char *acme_directory, *acme_email, *acme_ca_file, *acme_profile;
	char *cert_file, *key_file;

	struct svc_conf *services;  size_t n_services;
	struct route_conf *routes;  size_t n_routes;
	struct static_conf *statics; size_t n_statics;
};

/* Parse and validate `path`. On success returns 0 and *out (caller frees with
 * config_free). On failure returns -1, *out untouched, and appends every
 * problem found as "FILE:LINE: message" to errs (not just the first), sorted
 * by line; "FILE: message" when no line applies (unreadable file, or a
 * default that needs a section the file lacks: no [tls] with mode acme).
 * With [tls] mode = off, https_listen is left empty (n_https_listen 0). */
int config_load(const char *path, struct pmd_config **out, struct strlist *errs);
/* As config_load, with the file's text given; `name` is used in messages
 * (tests, fuzzing). */
int config_load_string(const char *name, const char *text, struct pmd_config **out, struct strlist *errs);
void config_free(struct pmd_config *c);
/* What config_load cannot see from the text: every [static] file is an
 * openable regular file and every folder an openable, searchable folder
 * (relative paths against the current directory, as pmd run opens them).
 * Returns 0, or -1 with one "FILE:LINE: message" per problem appended to
 * errs. `pmd check`, `pmd run` and reloads call it after config_load. */
int config_check_files(const struct pmd_config *c, struct strlist *errs);
/* The key table, one "SECTION<TAB>KEY<TAB>DEFAULT" line per key (section
 * without NAME: service, route, static; DEFAULT empty when there is none),
 * so tests can hold pmd.ini(5) against it (`pmd keys`). */
void config_keys_dump(FILE *f);

const struct svc_conf *config_service(const struct pmd_config *c, const char *name);
/* The longest drain_timeout of any service (30 s without services), and the
 * longest stop_timeout: how long a graceful stop may take. */
uint64_t config_max_drain_ms(const struct pmd_config *c);
uint64_t config_max_stop_ms(const struct pmd_config *c);
/* The proxy knobs of the config (include/snapshot.h); ps->hsts is left to
 * the caller, who owns that string. */
struct proxy_settings;
void config_proxy_settings(const struct pmd_config *c, struct proxy_settings *ps);

/* Strict value parsers shared with the control API ("30s", "1.5m" is
 * refused; units ms s m h d). 0 or -1. */
int config_parse_duration(const char *s, uint64_t *ms);
/* "16k", "100m", "1g", or plain bytes. 0 or -1. */
int config_parse_size(const char *s, uint64_t *bytes);
/* "200-299" or "204": an HTTP status range within 100..599. 0 or -1. */
int config_parse_status_range(const char *s, int *lo, int *hi);
/* "127.0.0.1:80", "[::]:443", "0.0.0.0:8080". 0 or -1. */
int config_parse_listen(const char *s, struct listen_addr *out);

#endif
