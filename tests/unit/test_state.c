// UNIT-DEPS: supervisor/state.c core/fsutil.c core/log.c
/* state.json: round trip, previous images, history cap, corrupt and
 * missing files. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fsutil.h"
#include "state.h"

static char dir[64];
static char path[128];

static int setup(void **st)
{
	(void)st;
	snprintf(dir, sizeof(dir), "/tmp/pmd-state-XXXXXX");
	if (mkdtemp(dir) == NULL)
		return -1;
	snprintf(path, sizeof(path), "%s/state.json", dir);
	return 0;
}

static int teardown(void **st)
{
	char prev[160];

	(void)st;
	snprintf(prev, sizeof(prev), "%s.prev", path);
	unlink(prev);
	unlink(path);
	rmdir(dir);
	return 0;
}

static void test_round_trip(void **unused)
{
	struct state *st = state_new(), *back = NULL;
	struct state_service *ss;
	struct state_swap sw = { .kind = "swap", .image = "reg/app:v2", .result = "failed",
		.started_at = 1700000000, .duration_ms = 1234, .error = "backend: not healthy" };
	char *err = NULL;

	(void)unused;
	ss = state_service(st, "backend", true);
	assert_non_null(ss);
	snprintf(ss->image, sizeof(ss->image), "reg/app:v1");
	snprintf(ss->color, sizeof(ss->color), "green");
	snprintf(ss->instance_id, sizeof(ss->instance_id), "abc123");
	state_push_previous(ss, "reg/app:v0");
	state_record_swap(ss, &sw);
	assert_non_null(state_service(st, "frontend", true));

	assert_int_equal(state_save(st, path, &err), 0);
	assert_int_equal(state_load(path, &back, &err), 0);
	assert_null(err);
	assert_int_equal(back->n, 2);
	ss = state_service(back, "backend", false);
	assert_non_null(ss);
	assert_string_equal(ss->image, "reg/app:v1");
	assert_string_equal(ss->color, "green");
	assert_string_equal(ss->instance_id, "abc123");
	assert_int_equal(ss->n_previous, 1);
	assert_string_equal(ss->previous[0], "reg/app:v0");
	assert_true(ss->has_last_swap);
	assert_string_equal(ss->last_swap.result, "failed");
	assert_string_equal(ss->last_swap.error, "backend: not healthy");
	assert_int_equal(ss->last_swap.duration_ms, 1234);
	assert_int_equal(ss->last_swap.started_at, 1700000000);
	assert_int_equal(ss->n_history, 1);
	assert_string_equal(ss->history[0].image, "reg/app:v2");
	assert_false(state_service(back, "frontend", false)->has_last_swap);
	state_free(st);
	state_free(back);
}

static void test_previous_images(void **unused)
{
	struct state *st = state_new();
	struct state_service *ss = state_service(st, "web", true);
	char img[32];

	(void)unused;
	state_push_previous(ss, "a");
	state_push_previous(ss, "b");
	state_push_previous(ss, "a");      /* moves to the front, no duplicate */
	state_push_previous(ss, "");       /* ignored */
	assert_int_equal(ss->n_previous, 2);
	assert_string_equal(ss->previous[0], "a");
	assert_string_equal(ss->previous[1], "b");
	state_remove_previous(ss, "a");
	assert_int_equal(ss->n_previous, 1);
	assert_string_equal(ss->previous[0], "b");
	for (int i = 0; i < STATE_MAX_PREVIOUS + 5; i++) {
		snprintf(img, sizeof(img), "img%d", i);
		state_push_previous(ss, img);
	}
	assert_int_equal(ss->n_previous, STATE_MAX_PREVIOUS);
	snprintf(img, sizeof(img), "img%d", STATE_MAX_PREVIOUS + 4);
	assert_string_equal(ss->previous[0], img);
	state_free(st);
}

/* deployed_images: oldest first, a ref deployed again moves to the end,
 * capped, round trip; a file of an older version (no list) loads empty. */
static void test_deployed_images(void **unused)
{
	struct state *st = state_new(), *back = NULL;
	struct state_service *ss = state_service(st, "app", true), *bs;
	const char *old_doc = "{\"version\":1,\"services\":{\"app\":{\"image\":\"r/app:1\","
		"\"color\":\"blue\",\"previous_images\":[\"r/app:0\"],\"history\":[]}}}";
	cJSON *doc;
	char *err = NULL, ref[32];

	(void)unused;
	state_add_deployed(ss, "r/app:1", "sha256:1");
	state_add_deployed(ss, "r/app:2", "sha256:2");
	state_add_deployed(ss, "r/app:1", "sha256:1");        /* again: moves to the end */
	state_add_deployed(ss, "r/app:1", "sha256:1b");       /* pulled again: a new image */
	state_add_deployed(ss, "", "sha256:x");
	assert_int_equal(ss->n_deployed, 3);
	assert_string_equal(ss->deployed[0].ref, "r/app:2");
	assert_string_equal(ss->deployed[1].ref, "r/app:1");
	assert_string_equal(ss->deployed[1].id, "sha256:1");
	assert_string_equal(ss->deployed[2].id, "sha256:1b");
	state_remove_deployed(ss, "r/app:1", "sha256:1");
	assert_int_equal(ss->n_deployed, 2);
	assert_string_equal(ss->deployed[1].id, "sha256:1b");

	doc = state_to_json(st);
	back = state_from_json(doc, &err);
	cJSON_Delete(doc);
	assert_non_null(back);
	bs = state_service(back, "app", false);
	assert_int_equal(bs->n_deployed, 2);
	assert_string_equal(bs->deployed[1].id, "sha256:1b");
	state_remove_deployed(bs, "r/app:1", "sha256:1b");
	assert_int_equal(bs->n_deployed, 1);
	state_free(back);

	for (int i = 0; i < STATE_MAX_DEPLOYED + 3; i++) {
		snprintf(ref, sizeof(ref), "r/app:%d", 100 + i);
		state_add_deployed(ss, ref, "sha256:n");
	}
	assert_int_equal(ss->n_deployed, STATE_MAX_DEPLOYED);
	assert_string_equal(ss->deployed[0].ref, "r/app:103");
	state_free(st);

	doc = cJSON_Parse(old_doc);
	back = state_from_json(doc, &err);
	cJSON_Delete(doc);
	assert_non_null(back);
	assert_int_equal(state_service(back, "app", false)->n_deployed, 0);
	assert_string_equal(state_service(back, "app", false)->image, "r/app:1");
	state_free(back);

	doc = cJSON_Parse("{\"services\":{\"app\":{\"image\":\"a\",\"color\":\"\","
		"\"deployed_images\":[{\"id\":\"sha256:1\"}]}}}");
	assert_null(state_from_json(doc, &err));
	assert_non_null(strstr(err, "services.app.deployed_images[].ref"));
	cJSON_Delete(doc);
	free(err);
}

static void test_history_cap(void **unused)
{
	struct state *st = state_new();
	struct state_service *ss = state_service(st, "web", true);
	struct state_swap sw = { .kind = "swap", .result = "ok" };

	(void)unused;
	for (int i = 0; i < STATE_HISTORY + 3; i++) {
		snprintf(sw.image, sizeof(sw.image), "v%d", i);
		state_record_swap(ss, &sw);
	}
	assert_int_equal(ss->n_history, STATE_HISTORY);
	assert_string_equal(ss->history[0].image, "v12");
	assert_string_equal(ss->history[STATE_HISTORY - 1].image, "v3");
	assert_string_equal(ss->last_swap.image, "v12");
	state_free(st);
}

static void test_missing_file(void **unused)
{
	struct state *st = NULL;
	char *err = NULL;

	(void)unused;
	assert_int_equal(state_load(path, &st, &err), 1);
	assert_null(err);
	assert_non_null(st);
	assert_int_equal(st->n, 0);
	state_free(st);
}

static void load_expect_corrupt(const char *text, const char *want)
{
	struct state *st = NULL;
	char *err = NULL;

	assert_int_equal(fs_write_atomic(path, text, strlen(text), 0600, &err), 0);
	assert_int_equal(state_load(path, &st, &err), -1);
	assert_non_null(err);
	if (strstr(err, want) == NULL)
		fail_msg("error \"%s\" does not mention \"%s\"", err, want);
	assert_non_null(strstr(err, path));
	assert_non_null(st);          /* empty, to be rebuilt */
	assert_int_equal(st->n, 0);
	state_free(st);
	free(err);
}

static void test_corrupt(void **unused)
{
	(void)unused;
	load_expect_corrupt("{\"services\": {\"backend\": {\"image\": 1", "not valid JSON");
	load_expect_corrupt("[1,2]", "expected an object with \"services\"");
	load_expect_corrupt("{\"services\": {\"backend\": {\"image\": 5, \"color\": \"blue\"}}}",
		"services.backend.image: expected a string");
	load_expect_corrupt("{\"services\": {\"backend\": {\"image\": \"x\", \"color\": \"blue\","
		" \"history\": [{\"kind\": \"swap\"}]}}}", "services.backend.history[0].image");
}

/* state.json cut short (a full disk, a crash of something else): the
 * copy beside it still has the previous images. */
static void test_truncated_falls_back_to_prev(void **unused)
{
	struct state *st = state_new(), *back = NULL;
	struct state_service *ss = state_service(st, "backend", true);
	char *err = NULL;

	(void)unused;
	snprintf(ss->image, sizeof(ss->image), "reg/app:v2");
	state_push_previous(ss, "reg/app:v1");
	assert_int_equal(state_save(st, path, &err), 0);
	assert_int_equal(truncate(path, 20), 0);
	assert_int_equal(state_load(path, &back, &err), 2);
	assert_non_null(err);
	assert_non_null(strstr(err, "not valid JSON"));
	ss = state_service(back, "backend", false);
	assert_non_null(ss);
	assert_string_equal(ss->image, "reg/app:v2");
	assert_int_equal(ss->n_previous, 1);
	assert_string_equal(ss->previous[0], "reg/app:v1");
	state_free(back);
	free(err);
	err = NULL;
	/* lost altogether: the copy too */
	assert_int_equal(unlink(path), 0);
	assert_int_equal(state_load(path, &back, &err), 2);
	assert_int_equal(back->n, 1);
	state_free(back);
	free(err);
	state_free(st);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
		cmocka_unit_test(test_previous_images),
		cmocka_unit_test(test_history_cap),
		cmocka_unit_test(test_deployed_images),
		cmocka_unit_test_setup_teardown(test_missing_file, setup, teardown),
		cmocka_unit_test_setup_teardown(test_corrupt, setup, teardown),
		cmocka_unit_test_setup_teardown(test_truncated_falls_back_to_prev, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
