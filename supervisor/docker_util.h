/* docker_util — pure helpers of the Docker runtime (no I/O, no event
 * loop), unit-tested on their own: image references, registry credentials
 * from Docker's config.json, the create payload, log stream
 * demultiplexing, pull progress lines, inspect/list documents and error
 * bodies. Strings returned are malloc'd (caller frees) unless noted. */
#ifndef PMD_DOCKER_UTIL_H
#define PMD_DOCKER_UTIL_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

/* ---- image references --------------------------------------------- */

/* "127.0.0.1:5000/pm/backend:v2" → registry "127.0.0.1:5000", name
 * "127.0.0.1:5000/pm/backend" (as written, what /images/create?fromImage=
 * takes), repo "pm/backend", tag "v2". Docker Hub names ("busybox",
 * "library/busybox") get registry "docker.io". No tag and no digest: tag
 * "latest". With a digest ("name@sha256:<64 hex>") tag may be "" . */
struct image_ref {
	char registry[256];
	char name[512];
	char repo[256];
	char tag[129];
	char digest[80];
};

/* Parse and validate per Docker's reference grammar (lower-case path
 * components, tag [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}, sha256 digests).
 * 0, or -1 with *errp ("bad image reference \"X\": ..."). */
int docker_image_parse(const char *ref, struct image_ref *out, char **errp);

/* ---- registry credentials ------------------------------------------ */

/* From the text of a Docker config.json, the value of X-Registry-Auth for
 * `registry` (as in struct image_ref): base64url of {"username","password",
 * "serveraddress"} (from "auth": base64 "user:pass", or "username" and
 * "password") or {"identitytoken","serveraddress"}. Keys of "auths" may be
 * written as "host", "https://host", "https://host/v1/"; docker.io also
 * matches "index.docker.io" and "registry-1.docker.io".
 * Returns 0 with *header set, 0 with *header NULL when the file has no
 * entry for the registry (anonymous pull), -1 with *errp when the file is
 * not valid JSON or the entry is malformed. `where` names the file in
 * messages. */
int docker_registry_auth(const char *config_json, const char *where, const char *registry,
	char **header, char **errp);

/* ---- create --------------------------------------------------------- */

/* Split a command line into argv like a POSIX shell does for words only:
 * whitespace separates, '...' and "..." quote, backslash escapes (outside
 * single quotes). No expansion, no operators: `command` is passed to Docker
 * as the exec form of CMD (as Docker Compose does with a string command);
 * write `sh -c '...'` for a shell. NULL-terminated, free with
 * docker_argv_free; NULL with *errp on an unterminated quote. */
char **docker_split_command(const char *cmd, char **errp);
void docker_argv_free(char **argv);

struct docker_create {
	const char *service, *color, *image;
	const char *command;        /* NULL or "": the image's CMD */
	char *const *env;           /* "K=V", NULL-terminated */
	const struct strlist *volumes; /* Docker Binds ("vol:/path[:ro]") or NULL */
	enum net_mode network;
	int host_port;              /* host mode: the port the app listens on
	                             * (label pmd.port, for adoption) */
	int container_port;         /* bridge mode: published on 127.0.0.1:ephemeral */
};

/* Body of POST /containers/create: labels pmd.managed=true, pmd.service,
 * pmd.color, pmd.image (and pmd.port in host mode); Env; Cmd; restart
 * policy "no"; json-file logs capped 10m x 3; Binds; NetworkMode host, or
 * bridge with ExposedPorts/PortBindings to 127.0.0.1 and HostPort "".
 * NULL with *errp (bad command quoting). */
char *docker_create_json(const struct docker_create *c, char **errp);

/* ---- logs ------------------------------------------------------------- */

/* Incremental demultiplexer of Docker's attach/logs stream: frames of an
 * 8-byte header {stream, 0, 0, 0, size big-endian u32} and payload. A
 * stream whose first bytes are not such a header (a TTY container) is
 * passed through as raw (stream 1). Zero-initialise before use. */
struct docker_demux {
	unsigned char hdr[8];
	size_t hdr_len;
	size_t remaining;           /* payload bytes left in the current frame */
	int stream;
	int mode;                   /* 0 undecided, 1 multiplexed, 2 raw */
};
typedef void (*docker_demux_fn)(void *arg, int stream, const char *data, size_t len);
void docker_demux_feed(struct docker_demux *d, const char *data, size_t len,
	docker_demux_fn out, void *arg);

/* ---- pull progress ----------------------------------------------------- */

#define DOCKER_PULL_MAX_LAYERS 128
struct docker_pull {
	char ids[DOCKER_PULL_MAX_LAYERS][16];
	bool done[DOCKER_PULL_MAX_LAYERS];
	size_t n;
};

/* One NDJSON line of POST /images/create (st zero-initialised per pull).
 * Returns 1 when there is a line for the user in out ("layer 3/7 done",
 * "layer 2/7 12.5MiB/40.0MiB", "Status: Downloaded newer image for X"),
 * 2 for a download progress line (same format; callers may throttle it),
 * 0 when the line carries nothing to show, -1 when it reports an error
 * (*errp = docker_pull_error_text of it). */
int docker_pull_line(struct docker_pull *st, const char *line, size_t len,
	char *out, size_t outsz, char **errp);

/* A pull error from the registry as one clear sentence: a hint (the image
 * or tag does not exist / the registry refused the credentials / the
 * registry cannot be reached) followed by Docker's own words. */
char *docker_pull_error_text(const char *docker_msg);

/* ---- documents from the engine ----------------------------------------- */

/* "message" of a Docker error body, else the body itself (trimmed), else
 * "HTTP <status>". */
char *docker_error_text(const char *body, long status);

struct docker_container {
	char id[80], name[96], service[64], color[8], image[512];
	char image_id[80];          /* inspect: the image ID ("sha256:...") it runs */
	bool managed, running, oom, tty;
	int exit_code;
	int host_port;              /* pmd.port label, else the 127.0.0.1 binding */
	long created;               /* list: unix seconds */
};

/* GET /containers/ID/json; container_port picks the bridge binding
 * ("<port>/tcp"), 0 takes the first. 0, or -1 with *errp. */
int docker_parse_inspect(const char *json, int container_port, struct docker_container *out,
	char **errp);
/* GET /containers/json: the array; *out malloc'd (n entries). */
int docker_parse_list(const char *json, struct docker_container **out, size_t *n, char **errp);

/* "1.43" → 143; 0 when unparsable. */
int docker_api_version_num(const char *v);

#endif
