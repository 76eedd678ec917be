/* runtime — how an instance of a service is run: docker (Engine API through
 * httpc), exec (a child process group) or external (an address pmd only
 * routes to and health-checks). The supervisor drives every runtime through
 * `struct runtime_ops`; all operations are asynchronous on the main loop and
 * report through callbacks, never block.
 *
 * Ownership: the supervisor allocates `struct rt_instance` with
 * rt_instance_new() and frees it with rt_instance_free() after the runtime
 * has reported it stopped (or it never started). A runtime keeps its own
 * per-instance data in `priv` and frees it in ops->release(). */
#ifndef PMD_RUNTIME_H
#define PMD_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "config.h"
#include "logring.h"

struct event_base;
struct httpc;

struct rt_instance {
	char id[80];             /* container id, "pid-1234", or the address */
	char name[96];           /* pm-<service>-<color> */
	char service[64];
	char color[8];           /* "blue" | "green" | "once" */
	char image[512];
	char image_id[80];       /* docker: the image ID it runs ("" unknown) */
	int host_port;           /* where pmd reaches it on 127.0.0.1 */
	char addr[64];           /* "127.0.0.1:PORT" (or external address) */
	pid_t pid;               /* exec */
	struct logring *logs;    /* last lines of output (always allocated) */
	long started_at;         /* unix seconds */
	void *priv;              /* runtime's own */
};

struct rt_instance *rt_instance_new(const char *service, const char *color);
void rt_instance_free(struct rt_instance *i);    /* NULL ok; frees logs */

/* ok = 1 success, 0 failure with err (a complete sentence for users). */
typedef void (*rt_done_fn)(void *arg, int ok, const char *err);
/* An instance ended on its own or after stop: exit code (128+signal when
 * killed), whether the kernel OOM-killed it. Called once per started
 * instance, also after ops->stop. */
typedef void (*rt_exit_fn)(void *arg, struct rt_instance *inst, int exit_code, bool oom);
/* Progress of a pull: a short line such as "layer 3/7 12.5MiB/40.0MiB". */
typedef void (*rt_progress_fn)(void *arg, const char *line);
/* Result of run_once: exit code (-1 when it could not run: err set) and the
 * last lines of its output. */
typedef void (*rt_once_fn)(void *arg, int exit_code, const char *err, struct logring *output);
/* Logs fetched: lines oldest first. */
typedef void (*rt_logs_fn)(void *arg, int ok, const char *err, struct logring *lines);

/* An image keep_images may remove: the reference an instance was started
 * by and the image ID it ran. gone: set by prune when it is removed (or
 * was already gone); left unset when it must stay (in use, removal failed). */
struct rt_image {
	char ref[512];
	char id[80];
	bool gone;
};
typedef void (*rt_pruned_fn)(void *arg, int ok, const char *err, const struct rt_image *imgs,
	size_t n);

/* Adoption: an instance found running at start (docker labels). */
struct rt_found {
	char id[80], name[96], service[64], color[8], image[512];
	int host_port;
	bool running;
	long created;            /* unix seconds */
};
typedef void (*rt_list_fn)(void *arg, int ok, const char *err, struct rt_found *found, size_t n);

struct runtime_ctx {
	struct event_base *base;
	struct httpc *httpc;
	const struct pmd_config *cfg;   /* current config (replaced on reload) */
};

struct runtime_ops {
	const char *name;
	/* Make `image` available (docker pull per svc->pull with credentials).
	 * Fails when it takes longer than svc->pull_timeout_ms or makes no
	 * progress for svc->pull_stall_timeout_ms (the error says which). */
	void (*pull)(struct runtime_ctx *rt, const struct svc_conf *svc, const char *image,
		rt_progress_fn progress, rt_done_fn done, void *arg);
	/* Abandon the pull started with `arg`: neither progress nor done is
	 * called for it afterwards. No-op when there is none. */
	void (*pull_cancel)(struct runtime_ctx *rt, void *arg);
	/* Start inst (inst->image, ->color, ->host_port set by the supervisor
	 * for host networking). env is the service's full environment
	 * ("K=V", NULL-terminated, PORT included). On success inst->id and
	 * inst->addr are filled. on_exit is kept for the instance's life. */
	void (*start)(struct runtime_ctx *rt, const struct svc_conf *svc, struct rt_instance *inst,
		char *const *env, rt_exit_fn on_exit, rt_done_fn done, void *arg);
	/* SIGTERM (docker stop), SIGKILL after timeout_ms, then remove. done is
	 * called when it is gone; on_exit is called too. */
	void (*stop)(struct runtime_ctx *rt, struct rt_instance *inst, unsigned long timeout_ms,
		rt_done_fn done, void *arg);
	/* Run svc->release_command once in a new instance of image, wait for it. */
	void (*run_once)(struct runtime_ctx *rt, const struct svc_conf *svc, const char *image,
		const char *command, char *const *env, unsigned long timeout_ms,
		rt_once_fn done, void *arg);
	/* Last `tail` lines of an instance's output. */
	void (*logs)(struct runtime_ctx *rt, struct rt_instance *inst, int tail,
		rt_logs_fn done, void *arg);
	/* Instances of pmd found at start (docker only; NULL otherwise). */
	void (*list)(struct runtime_ctx *rt, rt_list_fn done, void *arg);
	/* Attach to a found instance (adoption) and watch its exit. */
	void (*adopt)(struct runtime_ctx *rt, const struct svc_conf *svc, struct rt_instance *inst,
		rt_exit_fn on_exit, rt_done_fn done, void *arg);
	/* Remove the images that instances of svc ran and that it no longer
	 * keeps: each name in imgs only (never another name of the image),
	 * never an image a container uses; an image whose name now names
	 * another image goes by its ID only when nothing names it. done gets
	 * imgs back with `gone` set. */
	void (*prune)(struct runtime_ctx *rt, const struct svc_conf *svc, const struct rt_image *imgs,
		size_t n, rt_pruned_fn done, void *arg);
	/* Free priv of an instance that is gone. */
	void (*release)(struct rt_instance *inst);
};

extern const struct runtime_ops runtime_exec_ops;
extern const struct runtime_ops runtime_docker_ops;
extern const struct runtime_ops runtime_external_ops;

const struct runtime_ops *runtime_for(enum runtime_kind k);

/* Environment of an instance: env_file (Docker env-file format: KEY=VALUE,
 * '#' comments, blank lines, no quote processing), then `env` entries, then
 * PORT=port when port > 0; for runtime = exec PATH (pmd's, else
 * /usr/local/sbin:...:/bin) when neither sets it. Later keys override
 * earlier ones. Checks
 * required_env. Returns a NULL-terminated array (free with
 * runtime_env_free) or NULL with *errp set ("missing required_env:
 * DATABASE_URL, SECRET_KEY", "env_file /x: No such file or directory"). */
char **runtime_env_build(const struct svc_conf *svc, int port, char **errp);
void runtime_env_free(char **env);

#endif
