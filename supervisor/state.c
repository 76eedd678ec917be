/* state — state.json. See include/state.h. */
#include "state.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"

#define STATE_MAX_BYTES (4u << 20)

struct state *state_new(void)
{
	return calloc(1, sizeof(struct state));
}

void state_free(struct state *st)
{
	if (st == NULL)
		return;
	free(st->svcs);
	free(st);
}

struct state_service *state_service(struct state *st, const char *name, bool create)
{
	struct state_service *v;

	for (size_t i = 0; i < st->n; i++)
		if (strcmp(st->svcs[i].name, name) == 0)
			return &st->svcs[i];
	if (!create)
		return NULL;
	v = realloc(st->svcs, (st->n + 1) * sizeof(*v));
	if (v == NULL)
		return NULL;
	st->svcs = v;
	memset(&v[st->n], 0, sizeof(v[st->n]));
	snprintf(v[st->n].name, sizeof(v[st->n].name), "%s", name);
	return &v[st->n++];
}

void state_push_previous(struct state_service *ss, const char *image)
{
	size_t at = ss->n_previous;

	if (image[0] == '\0')
		return;
	for (size_t i = 0; i < ss->n_previous; i++)
		if (strcmp(ss->previous[i], image) == 0) {
			at = i;
			break;
		}
	if (at == ss->n_previous) {
		if (ss->n_previous < STATE_MAX_PREVIOUS)
			ss->n_previous++;
		at = ss->n_previous - 1;
	}
	memmove(ss->previous[1], ss->previous[0], at * sizeof(ss->previous[0]));
	snprintf(ss->previous[0], sizeof(ss->previous[0]), "%s", image);
}

void state_remove_previous(struct state_service *ss, const char *image)
{
	for (size_t i = 0; i < ss->n_previous; i++)
		if (strcmp(ss->previous[i], image) == 0) {
			memmove(ss->previous[i], ss->previous[i + 1],
				(ss->n_previous - i - 1) * sizeof(ss->previous[0]));
			ss->n_previous--;
			return;
		}
}

void state_add_deployed(struct state_service *ss, const char *ref, const char *id)
{
	if (ref[0] == '\0')
		return;
	for (size_t i = 0; i < ss->n_deployed; i++)
		if (strcmp(ss->deployed[i].ref, ref) == 0 && strcmp(ss->deployed[i].id, id) == 0) {
			memmove(&ss->deployed[i], &ss->deployed[i + 1],
				(ss->n_deployed - i - 1) * sizeof(ss->deployed[0]));
			ss->n_deployed--;
			break;
		}
	if (ss->n_deployed == STATE_MAX_DEPLOYED) {
		memmove(&ss->deployed[0], &ss->deployed[1], (STATE_MAX_DEPLOYED - 1) * sizeof(ss->deployed[0]));
		ss->n_deployed--;
	}
	snprintf(ss->deployed[ss->n_deployed].ref, sizeof(ss->deployed[0].ref), "%s", ref);
	snprintf(ss->deployed[ss->n_deployed].id, sizeof(ss->deployed[0].id), "%s", id);
	ss->n_deployed++;
}

void state_remove_deployed(struct state_service *ss, const char *ref, const char *id)
{
	for (size_t i = 0; i < ss->n_deployed; i++)
		if (strcmp(ss->deployed[i].ref, ref) == 0 && strcmp(ss->deployed[i].id, id) == 0) {
			memmove(&ss->deployed[i], &ss->deployed[i + 1],
				(ss->n_deployed - i - 1) * sizeof(ss->deployed[0]));
			ss->n_deployed--;
			return;
		}
}

void state_record_swap(struct state_service *ss, const struct state_swap *sw)
{
	ss->last_swap = *sw;
	ss->has_last_swap = true;
	if (ss->n_history < STATE_HISTORY)
		ss->n_history++;
	memmove(&ss->history[1], &ss->history[0], (ss->n_history - 1) * sizeof(ss->history[0]));
	ss->history[0] = *sw;
}

cJSON *state_swap_to_json(const struct state_swap *sw)
{
	cJSON *o = cJSON_CreateObject();

	cJSON_AddStringToObject(o, "kind", sw->kind);
	cJSON_AddStringToObject(o, "image", sw->image);
	cJSON_AddStringToObject(o, "result", sw->result);
	cJSON_AddNumberToObject(o, "started_at", (double)sw->started_at);
	cJSON_AddNumberToObject(o, "duration_ms", (double)sw->duration_ms);
	if (sw->error[0] != '\0')
		cJSON_AddStringToObject(o, "error", sw->error);
	return o;
}

cJSON *state_to_json(const struct state *st)
{
	cJSON *doc = cJSON_CreateObject();
	cJSON *svcs = cJSON_AddObjectToObject(doc, "services");

	cJSON_AddNumberToObject(doc, "version", 1);
	for (size_t i = 0; i < st->n; i++) {
		const struct state_service *ss = &st->svcs[i];
		cJSON *o = cJSON_AddObjectToObject(svcs, ss->name);
		cJSON *prev = cJSON_AddArrayToObject(o, "previous_images");
		cJSON *hist = cJSON_AddArrayToObject(o, "history");
		cJSON *dep = cJSON_AddArrayToObject(o, "deployed_images");

		cJSON_AddStringToObject(o, "image", ss->image);
		cJSON_AddStringToObject(o, "color", ss->color);
		cJSON_AddStringToObject(o, "instance_id", ss->instance_id);
		for (size_t j = 0; j < ss->n_previous; j++)
			cJSON_AddItemToArray(prev, cJSON_CreateString(ss->previous[j]));
		if (ss->has_last_swap)
			cJSON_AddItemToObject(o, "last_swap", state_swap_to_json(&ss->last_swap));
		for (size_t j = 0; j < ss->n_history; j++)
			cJSON_AddItemToArray(hist, state_swap_to_json(&ss->history[j]));
		for (size_t j = 0; j < ss->n_deployed; j++) {
			cJSON *d = cJSON_CreateObject();

			cJSON_AddStringToObject(d, "ref", ss->deployed[j].ref);
			cJSON_AddStringToObject(d, "id", ss->deployed[j].id);
			cJSON_AddItemToArray(dep, d);
		}
	}
	return doc;
}

static void seterr(char **errp, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void seterr(char **errp, const char *fmt, ...)
{
	va_list ap;

	if (errp == NULL)
		return;
	free(*errp);
	*errp = NULL;
	va_start(ap, fmt);
	if (vasprintf(errp, fmt, ap) < 0)
		*errp = NULL;
	va_end(ap);
}

/* Copy the string member `key` of o into buf; absent is "" when optional.
 * 0 / -1 with errp naming where. */
static int get_str(const cJSON *o, const char *where, const char *key, char *buf, size_t size,
	bool optional, char **errp)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	buf[0] = '\0';
	if (v == NULL && optional)
		return 0;
	if (!cJSON_IsString(v)) {
		seterr(errp, "%s.%s: expected a string", where, key);
		return -1;
	}
	if (strlen(v->valuestring) >= size) {
		seterr(errp, "%s.%s: longer than %zu bytes", where, key, size - 1);
		return -1;
	}
	snprintf(buf, size, "%s", v->valuestring);
	return 0;
}

static int get_num(const cJSON *o, const char *where, const char *key, long *out, char **errp)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	if (!cJSON_IsNumber(v)) {
		seterr(errp, "%s.%s: expected a number", where, key);
		return -1;
	}
	*out = (long)v->valuedouble;
	return 0;
}

static int swap_from_json(const cJSON *o, const char *where, struct state_swap *sw, char **errp)
{
	memset(sw, 0, sizeof(*sw));
	if (!cJSON_IsObject(o)) {
		seterr(errp, "%s: expected an object", where);
		return -1;
	}
	if (get_str(o, where, "kind", sw->kind, sizeof(sw->kind), false, errp) < 0 ||
	    get_str(o, where, "image", sw->image, sizeof(sw->image), false, errp) < 0 ||
	    get_str(o, where, "result", sw->result, sizeof(sw->result), false, errp) < 0 ||
	    get_num(o, where, "started_at", &sw->started_at, errp) < 0 ||
	    get_num(o, where, "duration_ms", &sw->duration_ms, errp) < 0 ||
	    get_str(o, where, "error", sw->error, sizeof(sw->error), true, errp) < 0)
		return -1;
	return 0;
}

static int service_from_json(const cJSON *o, struct state_service *ss, char **errp)
{
	char where[128];
	const cJSON *prev, *hist, *last, *dep, *it;

	snprintf(where, sizeof(where), "services.%s", ss->name);
	if (!cJSON_IsObject(o)) {
		seterr(errp, "%s: expected an object", where);
		return -1;
	}
	if (get_str(o, where, "image", ss->image, sizeof(ss->image), false, errp) < 0 ||
	    get_str(o, where, "color", ss->color, sizeof(ss->color), false, errp) < 0 ||
	    get_str(o, where, "instance_id", ss->instance_id, sizeof(ss->instance_id), true, errp) < 0)
		return -1;
	prev = cJSON_GetObjectItemCaseSensitive(o, "previous_images");
	if (prev != NULL && !cJSON_IsArray(prev)) {
		seterr(errp, "%s.previous_images: expected an array", where);
		return -1;
	}
	cJSON_ArrayForEach(it, prev) {
		if (!cJSON_IsString(it) || strlen(it->valuestring) >= sizeof(ss->previous[0])) {
			seterr(errp, "%s.previous_images: expected image names", where);
			return -1;
		}
		if (ss->n_previous < STATE_MAX_PREVIOUS)
			snprintf(ss->previous[ss->n_previous++], sizeof(ss->previous[0]), "%s",
				it->valuestring);
	}
	last = cJSON_GetObjectItemCaseSensitive(o, "last_swap");
	if (last != NULL) {
		char w[160];

		snprintf(w, sizeof(w), "%s.last_swap", where);
		if (swap_from_json(last, w, &ss->last_swap, errp) < 0)
			return -1;
		ss->has_last_swap = true;
	}
	hist = cJSON_GetObjectItemCaseSensitive(o, "history");
	if (hist != NULL && !cJSON_IsArray(hist)) {
		seterr(errp, "%s.history: expected an array", where);
		return -1;
	}
	cJSON_ArrayForEach(it, hist) {
		char w[160];

		if (ss->n_history == STATE_HISTORY)
			break;
		snprintf(w, sizeof(w), "%s.history[%zu]", where, ss->n_history);
		if (swap_from_json(it, w, &ss->history[ss->n_history], errp) < 0)
			return -1;
		ss->n_history++;
	}
	/* absent in files of older versions: nothing known to prune */
	dep = cJSON_GetObjectItemCaseSensitive(o, "deployed_images");
	if (dep != NULL && !cJSON_IsArray(dep)) {
		seterr(errp, "%s.deployed_images: expected an array", where);
		return -1;
	}
	cJSON_ArrayForEach(it, dep) {
		char w[160], ref[sizeof(ss->deployed[0].ref)], id[sizeof(ss->deployed[0].id)];

		snprintf(w, sizeof(w), "%s.deployed_images[]", where);
		if (!cJSON_IsObject(it)) {
			seterr(errp, "%s: expected an object", w);
			return -1;
		}
		if (get_str(it, w, "ref", ref, sizeof(ref), false, errp) < 0 ||
		    get_str(it, w, "id", id, sizeof(id), true, errp) < 0)
			return -1;
		state_add_deployed(ss, ref, id);
	}
	return 0;
}

struct state *state_from_json(const cJSON *doc, char **errp)
{
	struct state *st = state_new();
	const cJSON *svcs, *it;

	if (st == NULL) {
		seterr(errp, "out of memory");
		return NULL;
	}
	svcs = cJSON_GetObjectItemCaseSensitive(doc, "services");
	if (!cJSON_IsObject(doc) || !cJSON_IsObject(svcs)) {
		seterr(errp, "expected an object with \"services\"");
		goto fail;
	}
	cJSON_ArrayForEach(it, svcs) {
		struct state_service *ss;

		if (it->string == NULL || it->string[0] == '\0' ||
		    strlen(it->string) >= sizeof(ss->name)) {
			seterr(errp, "services: bad service name");
			goto fail;
		}
		ss = state_service(st, it->string, true);
		if (ss == NULL) {
			seterr(errp, "out of memory");
			goto fail;
		}
		if (service_from_json(it, ss, errp) < 0)
			goto fail;
	}
	return st;
fail:
	state_free(st);
	return NULL;
}

/* One file: 0 with *out, 1 absent, -1 unreadable or corrupt (*errp).
 * *out is an empty state unless 0 (NULL only on allocation failure). */
static int load_one(const char *path, struct state **out, char **errp)
{
	char *text = NULL, *err = NULL;
	cJSON *doc = NULL;
	struct state *st = NULL;
	int rc = -1;

	text = fs_read_file(path, STATE_MAX_BYTES, NULL, &err);
	if (text == NULL) {
		rc = errno == ENOENT ? 1 : -1;
		if (rc < 0)
			seterr(errp, "%s", err != NULL ? err : "read failed");
		goto out;
	}
	doc = cJSON_Parse(text);
	if (doc == NULL) {
		seterr(errp, "%s: not valid JSON", path);
		goto out;
	}
	st = state_from_json(doc, &err);
	if (st == NULL) {
		seterr(errp, "%s: %s", path, err != NULL ? err : "bad state");
		goto out;
	}
	rc = 0;
out:
	if (st == NULL)
		st = state_new();
	*out = st;
	cJSON_Delete(doc);
	free(text);
	free(err);
	return st == NULL ? -1 : rc;
}

int state_load(const char *path, struct state **out, char **errp)
{
	char prev[4096], *perr = NULL;
	struct state *alt = NULL;
	int rc = load_one(path, out, errp);

	if (rc == 0 || *out == NULL)
		return rc;
	snprintf(prev, sizeof(prev), "%s.prev", path);
	if (load_one(prev, &alt, &perr) == 0) {
		if (rc > 0)
			seterr(errp, "%s: no such file", path);
		state_free(*out);
		*out = alt;
		rc = 2;
	} else {
		state_free(alt);
	}
	free(perr);
	return rc;
}

int state_save(const struct state *st, const char *path, char **errp)
{
	char prev[4096];
	cJSON *doc = state_to_json(st);
	char *text = doc != NULL ? cJSON_Print(doc) : NULL;
	int rc = -1;

	if (text == NULL) {
		seterr(errp, "write %s: out of memory", path);
		goto out;
	}
	/* the copy first: whichever write a crash or a full disk interrupts,
	 * one complete file survives */
	if (snprintf(prev, sizeof(prev), "%s.prev", path) >= (int)sizeof(prev)) {
		seterr(errp, "write %s: path too long", path);
		goto out;
	}
	if (fs_write_atomic(prev, text, strlen(text), 0600, errp) < 0)
		goto out;
	rc = fs_write_atomic(path, text, strlen(text), 0600, errp);
out:
	free(text);
	cJSON_Delete(doc);
	return rc;
}
