/* state — state.json in state_dir: what pmd must remember across its own
 * restarts, per service: the live image, colour and instance id, previous
 * images (rollback, keep_images), the images its instances ran (the only
 * ones keep_images prunes), the last swap and a short deploy history.
 * Files of older versions without some lists load with those lists empty.
 * Written atomically after every change (fs_write_atomic). Main thread. */
#ifndef PMD_STATE_H
#define PMD_STATE_H

#include <stdbool.h>
#include <stddef.h>

struct cJSON;

#define STATE_MAX_PREVIOUS 16
#define STATE_HISTORY 10
#define STATE_MAX_DEPLOYED 32

/* An image an instance of the service ran (what keep_images may prune):
 * the reference it was started by and the image ID it resolved to. */
struct state_image {
	char ref[512];
	char id[80];             /* "sha256:..."; "" unknown */
};

/* One swap (image swap, rollback or restart) as remembered. */
struct state_swap {
	char kind[16];           /* "swap" | "rollback" | "restart" */
	char image[512];
	char result[16];         /* "ok" | "failed" */
	long started_at;         /* unix seconds */
	long duration_ms;
	char error[512];         /* "" when ok */
};

struct state_service {
	char name[64];
	char image[512];         /* live image, "" unknown */
	char color[8];           /* live colour, "" unknown */
	char instance_id[80];
	char previous[STATE_MAX_PREVIOUS][512];   /* newest first */
	size_t n_previous;
	bool has_last_swap;
	struct state_swap last_swap;
	struct state_swap history[STATE_HISTORY]; /* newest first */
	size_t n_history;
	struct state_image deployed[STATE_MAX_DEPLOYED]; /* oldest first */
	size_t n_deployed;
};

struct state {
	struct state_service *svcs;
	size_t n;
};

struct state *state_new(void);           /* empty; NULL on allocation failure */
void state_free(struct state *st);       /* NULL ok */

/* The entry of `name`, created empty when create is set (NULL if absent or
 * on allocation failure). Pointers stay valid until the next create. */
struct state_service *state_service(struct state *st, const char *name, bool create);

/* Make `image` the newest previous image (moved to the front when already
 * listed; the oldest beyond STATE_MAX_PREVIOUS dropped). "" is ignored. */
void state_push_previous(struct state_service *ss, const char *image);
/* Drop `image` from the previous images (it is live again). */
void state_remove_previous(struct state_service *ss, const char *image);
/* Remember that an instance ran ref (image id): appended as the newest,
 * replacing an older entry of the same ref and id (a ref re-pulled as
 * another image, `:latest`, is a new entry: the old image stays known and
 * prunable); the oldest beyond
 * STATE_MAX_DEPLOYED is forgotten (then never pruned). "" ref is ignored. */
void state_add_deployed(struct state_service *ss, const char *ref, const char *id);
/* Forget the entry of ref with that id (pruned or gone). */
void state_remove_deployed(struct state_service *ss, const char *ref, const char *id);
/* Record a finished swap: last_swap and the front of history. */
void state_record_swap(struct state_service *ss, const struct state_swap *sw);

struct cJSON *state_to_json(const struct state *st);
/* One swap record as in state.json and /status. */
struct cJSON *state_swap_to_json(const struct state_swap *sw);
/* NULL with *errp ("services.backend.image: expected a string")
 * when the document does not have the expected shape. */
struct state *state_from_json(const struct cJSON *doc, char **errp);

/* Load `path`. Returns 0 with *out, 1 when the file does not exist (*out
 * empty state), -1 when it cannot be read or is corrupt (*errp says why
 * and where; *out is an empty state to rebuild), 2 when it is missing or
 * unusable (*errp says why) and *out was loaded from the copy `path`.prev
 * instead. */
int state_load(const char *path, struct state **out, char **errp);
/* Write `path`.prev, then `path`, each atomically (mode 0600): a
 * truncated or lost state.json leaves a complete copy beside it.
 * 0 / -1 with *errp. */
int state_save(const struct state *st, const char *path, char **errp);

#endif
