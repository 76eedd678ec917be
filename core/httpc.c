/* httpc — libcurl multi on the main libevent base; see include/httpc.h.
 *
 * curl tells us which sockets to watch (sock_cb) and when to time out
 * (timer_cb); libevent tells curl what happened (curl_multi_socket_action).
 * User callbacks run in two places: on_data from inside
 * curl_multi_socket_action (curl forbids multi calls there, so adds and
 * cancels made then are deferred until it returns), and on_done from
 * finish_done() outside curl, where anything may be called. */
#include "httpc.h"

/* The libcurl floor is 7.81 (Ubuntu 22.04): see limit_protocols(). */
#ifdef PMD_FORCE_CURL_PROTOCOLS_LEGACY
#define CURL_DISABLE_DEPRECATION 1 /* CURLOPT_PROTOCOLS is deprecated since 7.85 */
#endif
#include <curl/curl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"

#define DEFAULT_MAX_BODY (8u << 20)
#define MAX_HEADER_BYTES (64u << 10)

enum req_state {
	REQ_PENDING,   /* created inside curl: added once curl returns */
	REQ_RUNNING,   /* in the multi */
	REQ_CANCELLED, /* cancelled inside curl: removed once curl returns */
	REQ_IN_DONE,   /* on_done running: cancel is a no-op */
};

struct sockinfo {
	struct httpc *h;
	curl_socket_t fd;
	struct event *ev;
	struct sockinfo *prev, *next;
};

struct httpc_req {
	struct httpc *h;
	CURL *easy;
	struct curl_slist *hdrs;
	enum req_state state;
	httpc_data_fn on_data;
	httpc_done_fn on_done;
	void *arg;
	size_t max_body;
	char *body;              /* buffered response body */
	size_t body_len, body_cap;
	char *head;              /* raw response head(s) */
	size_t head_len, head_cap;
	int too_large, receiver_abort;
	char *ca_file;           /* extra CA bundle, added to the system's */
	char errbuf[CURL_ERROR_SIZE];
	struct httpc_req *prev, *next;
};

struct httpc {
	struct event_base *base;
	CURLM *multi;
	struct event *timer;
	int in_curl;             /* depth of curl_multi_socket_action calls */
	int deferred;            /* some request is PENDING or CANCELLED */
	int active;              /* requests started and not finished */
	struct httpc_req *reqs;  /* every request not yet freed */
	struct sockinfo *socks;  /* every socket curl asked us to watch */
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc;

static void global_init(void)
{
	global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* *errp = prefix + detail (caller frees). */
static void set_err(char **errp, const char *prefix, const char *detail)
{
	if (errp && asprintf(errp, "%s%s", prefix, detail) < 0)
		*errp = NULL;
}

/* ---- request lifecycle ---------------------------------------------- */

static void req_unlink(struct httpc_req *r)
{
	struct httpc *h = r->h;

	if (r->prev)
		r->prev->next = r->next;
	else
		h->reqs = r->next;
	if (r->next)
		r->next->prev = r->prev;
	r->prev = r->next = NULL;
}

/* Unlink, take out of the multi when `in_multi`, free everything. */
static void req_destroy(struct httpc_req *r, int in_multi)
{
	if (in_multi) {
		curl_multi_remove_handle(r->h->multi, r->easy);
		r->h->active--;
	}
	req_unlink(r);
	curl_easy_cleanup(r->easy);
	curl_slist_free_all(r->hdrs);
	free(r->body);
	free(r->head);
	free(r->ca_file);
	free(r);
}

/* Grow *buf to hold need bytes plus a NUL. 0 / -1. */
static int buf_reserve(char **buf, size_t *cap, size_t need)
{
	size_t ncap;
	char *n;

	if (need + 1 <= *cap)
		return 0;
	ncap = *cap ? *cap : 1024;
	while (ncap < need + 1)
		ncap *= 2;
	n = realloc(*buf, ncap);
	if (!n)
		return -1;
	*buf = n;
	*cap = ncap;
	return 0;
}

static size_t write_cb(char *data, size_t size, size_t nmemb, void *userp)
{
	struct httpc_req *r = userp;
	size_t len = size * nmemb;

	if (r->state == REQ_CANCELLED)
		return 0;
	if (r->on_data) {
		if (r->on_data(r->arg, data, len) < 0) {
			r->receiver_abort = 1;
			return 0;
		}
		/* on_data may have cancelled this very request */
		return r->state == REQ_CANCELLED ? 0 : len;
	}
	if (r->body_len + len > r->max_body) {
		r->too_large = 1;
		return 0;
	}
	if (buf_reserve(&r->body, &r->body_cap, r->body_len + len) < 0)
		return 0;
	memcpy(r->body + r->body_len, data, len);
	r->body_len += len;
	r->body[r->body_len] = '\0';
	return len;
}

static size_t header_cb(char *data, size_t size, size_t nmemb, void *userp)
{
	struct httpc_req *r = userp;
	size_t len = size * nmemb;

	if (r->head_len + len > MAX_HEADER_BYTES)
		return len; /* keep the first heads; the transfer goes on */
	if (buf_reserve(&r->head, &r->head_cap, r->head_len + len) < 0)
		return len;
	memcpy(r->head + r->head_len, data, len);
	r->head_len += len;
	r->head[r->head_len] = '\0';
	return len;
}

/* Call on_done for a finished transfer, then free it. */
static void finish(struct httpc_req *r, CURLcode code)
{
	struct httpc_response res;
	char msg[CURL_ERROR_SIZE + 64];

	memset(&res, 0, sizeof(res));
	curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &res.status);
	curl_easy_getinfo(r->easy, CURLINFO_TOTAL_TIME, &res.total_s);
	res.curl_code = (int)code;
	if (code != CURLE_OK) {
		if (r->too_large)
			snprintf(msg, sizeof(msg), "response body larger than %zu bytes", r->max_body);
		else if (r->receiver_abort)
			snprintf(msg, sizeof(msg), "transfer aborted by receiver");
		else
			snprintf(msg, sizeof(msg), "%s", r->errbuf[0] ? r->errbuf : curl_easy_strerror(code));
		res.error = msg;
		if (res.curl_code == 0)
			res.curl_code = -1;
	}
	if (!r->on_data) {
		res.body = r->body ? r->body : "";
		res.body_len = r->body_len;
	}
	res.headers = r->head ? r->head : "";

	curl_multi_remove_handle(r->h->multi, r->easy);
	r->h->active--;
	r->state = REQ_IN_DONE;
	if (r->on_done)
		r->on_done(r->arg, &res);
	req_destroy(r, 0);
}

/* Deliver every finished transfer. Only called outside curl. */
static void check_done(struct httpc *h)
{
	CURLMsg *m;
	int left;

	while ((m = curl_multi_info_read(h->multi, &left))) {
		struct httpc_req *r = NULL;

		if (m->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
		finish(r, m->data.result);
	}
}

/* Apply adds and cancels made while curl was running. */
static void run_deferred(struct httpc *h)
{
	struct httpc_req *r, *next;

	while (h->deferred) {
		h->deferred = 0;
		for (r = h->reqs; r; r = next) {
			next = r->next;
			if (r->state == REQ_CANCELLED) {
				req_destroy(r, 1);
			} else if (r->state == REQ_PENDING) {
				CURLMcode mc = curl_multi_add_handle(h->multi, r->easy);
				struct httpc_response res;

				if (mc == CURLM_OK) {
					r->state = REQ_RUNNING;
					continue;
				}
				memset(&res, 0, sizeof(res));
				res.curl_code = -1;
				res.error = curl_multi_strerror(mc);
				res.headers = "";
				h->active--;
				r->state = REQ_IN_DONE;
				if (r->on_done)
					r->on_done(r->arg, &res);
				req_destroy(r, 0);
				/* the callback may have changed the list: rescan */
				h->deferred = 1;
				break;
			}
		}
	}
}

static void socket_action(struct httpc *h, curl_socket_t fd, int ev_bitmask)
{
	int running = 0;

	h->in_curl++;
	curl_multi_socket_action(h->multi, fd, ev_bitmask, &running);
	h->in_curl--;
	if (h->in_curl)
		return;
	run_deferred(h);
	check_done(h);
}

/* ---- curl <-> libevent ---------------------------------------------- */

static void event_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sockinfo *si = arg;
	int action = (what & EV_READ ? CURL_CSELECT_IN : 0) | (what & EV_WRITE ? CURL_CSELECT_OUT : 0);

	socket_action(si->h, fd, action);
}

static void timer_ev_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	socket_action(arg, CURL_SOCKET_TIMEOUT, 0);
}

static void sock_free(struct sockinfo *si)
{
	struct httpc *h = si->h;

	if (si->prev)
		si->prev->next = si->next;
	else
		h->socks = si->next;
	if (si->next)
		si->next->prev = si->prev;
	event_free(si->ev);
	free(si);
}

static int sock_cb(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp)
{
	struct httpc *h = userp;
	struct sockinfo *si = socketp;
	short kind;

	(void)e;
	if (what == CURL_POLL_REMOVE) {
		if (si)
			sock_free(si);
		curl_multi_assign(h->multi, fd, NULL);
		return 0;
	}
	kind = EV_PERSIST | (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0);
	if (!si) {
		si = calloc(1, sizeof(*si));
		if (!si)
			return -1;
		si->h = h;
		si->fd = fd;
		si->next = h->socks;
		if (h->socks)
			h->socks->prev = si;
		h->socks = si;
		curl_multi_assign(h->multi, fd, si);
	} else {
		event_free(si->ev);
	}
	si->ev = event_new(h->base, fd, kind, event_cb, si);
	if (!si->ev || event_add(si->ev, NULL) < 0) {
		log_error("httpc cannot watch socket fd=%d", (int)fd);
		return -1;
	}
	return 0;
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	struct httpc *h = userp;
	struct timeval tv;

	(void)multi;
	if (timeout_ms < 0) {
		evtimer_del(h->timer);
		return 0;
	}
	tv.tv_sec = timeout_ms / 1000;
	tv.tv_usec = (timeout_ms % 1000) * 1000;
	return evtimer_add(h->timer, &tv);
}

/* ---- public --------------------------------------------------------- */

struct httpc *httpc_new(struct event_base *base)
{
	struct httpc *h;

	pthread_once(&global_once, global_init);
	if (global_rc != CURLE_OK) {
		log_error("curl_global_init failed error=%s", log_q(curl_easy_strerror(global_rc)));
		return NULL;
	}
	h = calloc(1, sizeof(*h));
	if (!h)
		return NULL;
	h->base = base;
	h->multi = curl_multi_init();
	h->timer = evtimer_new(base, timer_ev_cb, h);
	if (!h->multi || !h->timer) {
		httpc_free(h);
		return NULL;
	}
	curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
	curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
	curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
	curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
	return h;
}

void httpc_free(struct httpc *h)
{
	if (!h)
		return;
	while (h->reqs)
		req_destroy(h->reqs, h->reqs->state != REQ_PENDING);
	if (h->multi)
		curl_multi_cleanup(h->multi);
	while (h->socks)
		sock_free(h->socks);
	if (h->timer)
		event_free(h->timer);
	free(h);
}

/* Does the NULL-terminated header list set `name`? */
static int has_header(const char *const *hdrs, const char *name)
{
	size_t n = strlen(name);

	for (; hdrs && *hdrs; hdrs++)
		if (strncasecmp(*hdrs, name, n) == 0 && (*hdrs)[n] == ':')
			return 1;
	return 0;
}

/* OpenSSL context hook: add the request's extra CA bundle to the trust
 * store curl has already filled from the system bundle. */
static CURLcode add_ca_cb(CURL *e, void *sslctx, void *arg)
{
	(void)e;
	struct httpc_req *r = arg;
	X509_STORE *st = SSL_CTX_get_cert_store(sslctx);
	if (!st || X509_STORE_load_file(st, r->ca_file) != 1) {
		ERR_clear_error();
		snprintf(r->errbuf, sizeof(r->errbuf), "cannot load the CA bundle %s", r->ca_file);
		return CURLE_SSL_CACERT_BADFILE;
	}
	return CURLE_OK;
}

/* Allow http and https only (no file://, ftp://, … from a URL that came
 * from a config or a peer). CURLOPT_PROTOCOLS_STR is 7.85.0 and newer;
 * older libcurl (7.81 on Ubuntu 22.04) has the bitmask CURLOPT_PROTOCOLS.
 * PMD_FORCE_CURL_PROTOCOLS_LEGACY compiles the older branch on a newer
 * libcurl (tests/unit/test_httpc_legacy.c). */
static CURLcode limit_protocols(CURL *e)
{
#if LIBCURL_VERSION_NUM >= 0x075500 && !defined(PMD_FORCE_CURL_PROTOCOLS_LEGACY)
	return curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#else
	return curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
}

/* Configure r->easy from o. 0, or -1 with *errp. */
static int setup_easy(struct httpc_req *r, const struct httpc_opts *o, char **errp)
{
	CURL *e = r->easy;
	const char *method = o->method ? o->method : (o->body ? "POST" : "GET");
	struct curl_slist *l;

	curl_easy_setopt(e, CURLOPT_URL, o->url);
	curl_easy_setopt(e, CURLOPT_PRIVATE, r);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
	if (limit_protocols(e) != CURLE_OK) {
		set_err(errp, "", "httpc: cannot restrict the protocols to http and https");
		return -1;
	}
	if (o->unix_socket)
		curl_easy_setopt(e, CURLOPT_UNIX_SOCKET_PATH, o->unix_socket);
	if (o->timeout_ms > 0)
		curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, o->timeout_ms);
	if (o->connect_timeout_ms > 0)
		curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, o->connect_timeout_ms);
	if (o->ca_file && o->ca_file[0]) {
		if (!(r->ca_file = strdup(o->ca_file))) {
			*errp = strdup("out of memory");
			return -1;
		}
		curl_easy_setopt(e, CURLOPT_SSL_CTX_FUNCTION, add_ca_cb);
		curl_easy_setopt(e, CURLOPT_SSL_CTX_DATA, r);
	}
	if (o->insecure) {
		curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
		curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
	}

	if (strcmp(method, "HEAD") == 0) {
		curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
	} else if (o->body || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0) {
		curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(o->body ? o->body_len : 0));
		if (curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, o->body ? o->body : "") != CURLE_OK) {
			set_err(errp, "", "httpc: cannot copy the request body");
			return -1;
		}
	}
	if (strcmp(method, "GET") != 0 && strcmp(method, "POST") != 0 && strcmp(method, "HEAD") != 0)
		curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);

	for (const char *const *hp = o->headers; hp && *hp; hp++) {
		l = curl_slist_append(r->hdrs, *hp);
		if (!l)
			goto nomem;
		r->hdrs = l;
	}
	/* no 100-continue round trip: our peers answer bodies directly */
	if (!has_header(o->headers, "Expect")) {
		l = curl_slist_append(r->hdrs, "Expect:");
		if (!l)
			goto nomem;
		r->hdrs = l;
	}
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->hdrs);
	return 0;
nomem:
	set_err(errp, "", "httpc: out of memory");
	return -1;
}

struct httpc_req *httpc_request(struct httpc *h, const struct httpc_opts *o, char **errp)
{
	struct httpc_req *r;
	CURLMcode mc;

	if (!o->url) {
		set_err(errp, "", "httpc: no URL");
		return NULL;
	}
	r = calloc(1, sizeof(*r));
	if (!r || !(r->easy = curl_easy_init())) {
		free(r);
		set_err(errp, "", "httpc: out of memory");
		return NULL;
	}
	r->h = h;
	r->on_data = o->on_data;
	r->on_done = o->on_done;
	r->arg = o->arg;
	r->max_body = o->max_body ? o->max_body : DEFAULT_MAX_BODY;
	r->state = REQ_PENDING;
	r->next = h->reqs;
	if (h->reqs)
		h->reqs->prev = r;
	h->reqs = r;

	if (setup_easy(r, o, errp) < 0) {
		req_destroy(r, 0);
		return NULL;
	}
	h->active++;
	if (h->in_curl) {
		h->deferred = 1;
		return r;
	}
	mc = curl_multi_add_handle(h->multi, r->easy);
	if (mc != CURLM_OK) {
		h->active--;
		set_err(errp, "httpc: ", curl_multi_strerror(mc));
		req_destroy(r, 0);
		return NULL;
	}
	r->state = REQ_RUNNING;
	return r;
}

void httpc_cancel(struct httpc_req *r)
{
	struct httpc *h;

	if (!r || r->state == REQ_IN_DONE || r->state == REQ_CANCELLED)
		return;
	h = r->h;
	if (r->state == REQ_PENDING) {
		h->active--;
		req_destroy(r, 0);
	} else if (h->in_curl) {
		r->state = REQ_CANCELLED;
		h->deferred = 1;
	} else {
		req_destroy(r, 1);
	}
}

int httpc_active(const struct httpc *h)
{
	return h ? h->active : 0;
}
