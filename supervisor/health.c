/* health — periodic HTTP checks of one instance. See include/health.h. */
#include "health.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "httpc.h"
#include "log.h"

struct health {
	struct event_base *base;
	struct httpc *httpc;
	struct event *timer;
	struct httpc_req *req;
	char url[640];
	char host_hdr[300];
	int status_lo, status_hi;
	bool https;
	uint64_t interval_ms, timeout_ms;
	int healthy_threshold, unhealthy_threshold, first_threshold;
	enum health_state st;
	int passes, fails;
	char last_error[256];
	health_fn fn;
	void *arg;
};

const char *health_state_name(enum health_state st)
{
	switch (st) {
	case HEALTH_STARTING:
		return "starting";
	case HEALTH_HEALTHY:
		return "healthy";
	case HEALTH_UNHEALTHY:
		return "unhealthy";
	}
	return "?";
}

enum health_state health_next(enum health_state st, bool pass, int *passes, int *fails,
	int healthy_threshold, int unhealthy_threshold, int first_threshold)
{
	int need = healthy_threshold;

	if (pass) {
		(*passes)++;
		*fails = 0;
	} else {
		(*fails)++;
		*passes = 0;
	}
	switch (st) {
	case HEALTH_STARTING:
		if (first_threshold > 0)
			need = first_threshold;
		return pass && *passes >= need ? HEALTH_HEALTHY : HEALTH_STARTING;
	case HEALTH_HEALTHY:
		return !pass && *fails >= unhealthy_threshold ? HEALTH_UNHEALTHY : HEALTH_HEALTHY;
	case HEALTH_UNHEALTHY:
		return pass && *passes >= need ? HEALTH_HEALTHY : HEALTH_UNHEALTHY;
	}
	return st;
}

static void arm(struct health *h, uint64_t ms)
{
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };

	evtimer_add(h->timer, &tv);
}

static void check_done(void *arg, const struct httpc_response *res)
{
	struct health *h = arg;
	enum health_state before = h->st;
	bool pass = res->status >= h->status_lo && res->status <= h->status_hi;

	h->req = NULL;
	if (pass)
		h->last_error[0] = '\0';
	else if (res->status > 0)
		snprintf(h->last_error, sizeof(h->last_error), "HTTP %ld (expected %d-%d)",
			res->status, h->status_lo, h->status_hi);
	else
		snprintf(h->last_error, sizeof(h->last_error), "%s",
			res->error != NULL ? res->error : "no answer");
	h->st = health_next(h->st, pass, &h->passes, &h->fails, h->healthy_threshold,
		h->unhealthy_threshold, h->first_threshold);
	log_debug("health check url=%s pass=%d passes=%d fails=%d error=%s", h->url, pass,
		h->passes, h->fails, log_q(h->last_error));
	arm(h, h->interval_ms);
	/* Last: the callee may free h. */
	h->fn(h->arg, h, pass, h->st != before);
}

static void check_start(evutil_socket_t fd, short what, void *arg)
{
	struct health *h = arg;
	const char *headers[] = { h->host_hdr, h->https ? "X-Forwarded-Proto: https" : NULL, NULL };
	struct httpc_opts o = {
		.url = h->url,
		.headers = headers,
		.timeout_ms = (long)h->timeout_ms,
		.connect_timeout_ms = (long)h->timeout_ms,
		.max_body = 64 * 1024,
		.on_done = check_done,
		.arg = h,
	};
	char *err = NULL;

	(void)fd;
	(void)what;
	h->req = httpc_request(h->httpc, &o, &err);
	if (h->req == NULL) {
		struct httpc_response res = { .error = err != NULL ? err : "request failed" };

		check_done(h, &res);   /* may free h */
		free(err);
	}
}

struct health *health_new(struct event_base *base, struct httpc *httpc,
	const struct health_params *p, health_fn fn, void *arg)
{
	struct health *h = calloc(1, sizeof(*h));

	if (h == NULL)
		return NULL;
	h->base = base;
	h->httpc = httpc;
	snprintf(h->url, sizeof(h->url), "http://%s%s", p->addr, p->path);
	snprintf(h->host_hdr, sizeof(h->host_hdr), "Host: %s", p->host);
	h->status_lo = p->status_lo > 0 ? p->status_lo : 200;
	h->status_hi = p->status_hi > 0 ? p->status_hi : 299;
	h->https = p->https;
	h->interval_ms = p->interval_ms > 0 ? p->interval_ms : 1000;
	h->timeout_ms = p->timeout_ms > 0 ? p->timeout_ms : 1000;
	h->healthy_threshold = p->healthy_threshold > 0 ? p->healthy_threshold : 1;
	h->unhealthy_threshold = p->unhealthy_threshold > 0 ? p->unhealthy_threshold : 1;
	h->first_threshold = p->first_threshold;
	h->fn = fn;
	h->arg = arg;
	h->timer = evtimer_new(base, check_start, h);
	if (h->timer == NULL) {
		free(h);
		return NULL;
	}
	arm(h, 0);
	return h;
}

void health_free(struct health *h)
{
	if (h == NULL)
		return;
	if (h->req != NULL)
		httpc_cancel(h->req);
	event_free(h->timer);
	free(h);
}

enum health_state health_state(const struct health *h)
{
	return h->st;
}

int health_passes(const struct health *h)
{
	return h->passes;
}

int health_fails(const struct health *h)
{
	return h->fails;
}

const char *health_last_error(const struct health *h)
{
	return h->last_error;
}
