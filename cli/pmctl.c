/* pmctl — the command-line client of pmd's control socket (SPEC.md,
 * "Commands" and "Control API"). Standalone: links cJSON and client.c only.
 *
 * Exit codes: 0 success, 1 the operation failed, 2 usage error, 3 cannot
 * reach the socket / permission denied, 4 conflict (a swap is running). */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "client.h"

enum { EX_OK = 0, EX_FAILED = 1, EX_USAGE = 2, EX_UNREACHABLE = CLIENT_EXIT_UNREACHABLE,
       EX_CONFLICT = 4 };

#define DEFAULT_SOCKET "/run/pmd/control.sock"
#define REQUEST_TIMEOUT_MS 60000
#define MAX_SWAP_PAIRS 32
#define MAX_EVENT_LINE (1u << 20)

static const char *socket_path;
static bool ssh_mode;             /* --ssh: arguments checked by ssh_allowed */
static int ssh_allowed(const char *service, const char *image);

static void __attribute__((format(printf, 1, 2))) say_err(const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	fputs("pmctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static int __attribute__((format(printf, 2, 3))) usage_error(const char *cmd, const char *fmt, ...)
{
	va_list ap;

	fputs("pmctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry 'pmctl %s%s--help'.\n", cmd ? cmd : "", cmd ? " " : "");
	return EX_USAGE;
}

/* Help ------------------------------------------------------------------- */

struct command {
	const char *name;
	int (*run)(int argc, char **argv);
	const char *synopsis;
	const char *help;
};

static const struct command *commands_table(void);

static void print_global_help(FILE *f)
{
	fprintf(f,
		"Usage: pmctl [-s SOCKET] COMMAND [ARGS]\n"
		"\n"
		"Control a running pmd over its control socket.\n"
		"\n"
		"Commands:\n");
	for (const struct command *c = commands_table(); c->name; c++)
		fprintf(f, "  %s\n", c->synopsis);
	fprintf(f,
		"\n"
		"Options:\n"
		"  -s, --socket SOCKET  control socket (default: $PMD_SOCKET, else " DEFAULT_SOCKET ")\n"
		"  -h, --help           this help; 'pmctl COMMAND --help' for a command\n"
		"  -V, --version        print the version\n"
		"      --ssh            forced-command mode for authorized_keys: run the command in\n"
		"                       $SSH_ORIGINAL_COMMAND if it is status, swap, rollback,\n"
		"                       restart or logs\n"
		"\n"
		"Exit status: 0 success, 1 the operation failed, 2 usage error,\n"
		"3 cannot reach the socket or permission denied, 4 conflict (a swap of that\n"
		"service is already running).\n");
}

static void print_command_help(const struct command *c)
{
	printf("Usage: pmctl [-s SOCKET] %s\n\n%s", c->synopsis, c->help);
}

/* Argument parsing ------------------------------------------------------- */

/* The value of option `name` at argv[*i] ("--tail 5" or "--tail=5");
 * NULL when argv[*i] is not that option. Sets *missing when the value is
 * absent. */
static const char *opt_value(int argc, char **argv, int *i, const char *name, bool *missing)
{
	size_t n = strlen(name);
	const char *a = argv[*i];

	if (strncmp(a, name, n) != 0)
		return NULL;
	if (a[n] == '=')
		return a + n + 1;
	if (a[n] != '\0')
		return NULL;
	if (*i + 1 >= argc) {
		*missing = true;
		return NULL;
	}
	return argv[++*i];
}

/* Digits followed by ms, s, m, h or d (as in pmd.ini); > 0. */
static int parse_duration(const char *s, uint64_t *ms)
{
	static const struct { const char *unit; uint64_t mul; } units[] = {
		{ "ms", 1 }, { "s", 1000 }, { "m", 60000 }, { "h", 3600000 }, { "d", 86400000 },
	};
	size_t nd = strspn(s, "0123456789");
	uint64_t v = 0;

	if (nd == 0 || nd > 12)
		return -1;
	for (size_t i = 0; i < nd; i++)
		v = v * 10 + (uint64_t)(s[i] - '0');
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
		if (strcmp(s + nd, units[i].unit) == 0) {
			*ms = v * units[i].mul;
			return *ms > 0 ? 0 : -1;
		}
	return -1;
}

/* Service names go into the request path: letters, digits, . _ - */
static bool valid_service(const char *s)
{
	if (!*s || strlen(s) > 128)
		return false;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s) && *s != '.' && *s != '_' && *s != '-')
			return false;
	return true;
}

static bool valid_image(const char *s)
{
	if (!*s || strlen(s) > 512)
		return false;
	for (; *s; s++)
		if ((unsigned char)*s <= ' ' || *s == 0x7f)
			return false;
	return true;
}

/* Options common to every command: -s/--socket and -h/--help. Returns 1
 * when argv[*i] was one of them (help printed: *help set), 0 when not,
 * -1 on a usage error. */
static int common_option(int argc, char **argv, int *i, const struct command *cmd, bool *help)
{
	bool missing = false;
	const char *v;

	if (strcmp(argv[*i], "-h") == 0 || strcmp(argv[*i], "--help") == 0) {
		print_command_help(cmd);
		*help = true;
		return 1;
	}
	if ((v = opt_value(argc, argv, i, "--socket", &missing)) || (v = opt_value(argc, argv, i, "-s", &missing))) {
		socket_path = v;
		return 1;
	}
	if (missing) {
		usage_error(cmd->name, "%s: expected a value", argv[*i]);
		return -1;
	}
	return 0;
}

/* Talking to pmd --------------------------------------------------------- */

/* Connect and send; on failure print what to do and return the exit code
 * (3), else 0. */
static int open_request(struct client *c, const char *method, const char *target,
	const char *body, int timeout_ms)
{
	char err[512];
	bool unanswered = false;

	if (client_connect(c, socket_path, err, sizeof(err)) < 0) {
		say_err("%s", err);
		return EX_UNREACHABLE;
	}
	c->timeout_ms = timeout_ms;
	if (client_request(c, method, target, body, body ? strlen(body) : 0, &unanswered, err, sizeof(err)) < 0) {
		if (unanswered) {
			/* what pmd does to a peer outside control_group */
			char hint[512];
			client_permission_hint(socket_path, hint, sizeof(hint));
			say_err("%s (this user is not allowed): %s", err, hint);
		} else {
			say_err("%s", err);
		}
		client_close(c);
		return EX_UNREACHABLE;
	}
	return 0;
}

/* The error of a non-2xx JSON answer, printed; returns the exit code. */
static int report_http_error(struct client *c, const char *what)
{
	char err[512];
	size_t len = 0;
	char *body = client_read_all(c, &len, err, sizeof(err));
	cJSON *doc = body ? cJSON_Parse(body) : NULL;
	const cJSON *e = cJSON_GetObjectItemCaseSensitive(doc, "error");

	if (cJSON_IsString(e))
		say_err("%s: %s", what, e->valuestring);
	else
		say_err("%s: pmd answered %d%s%.200s", what, c->status, body && *body ? ": " : "", body ? body : "");
	cJSON_Delete(doc);
	free(body);
	return c->status == 409 ? EX_CONFLICT : EX_FAILED;
}

/* GET/POST with a JSON answer; *doc receives it on 2xx. 0 or an exit code. */
static int simple_request(const char *method, const char *target, const char *body,
	const char *what, char **raw, cJSON **doc)
{
	struct client c;
	char err[512];
	size_t len;
	int rc = open_request(&c, method, target, body, REQUEST_TIMEOUT_MS);

	if (rc)
		return rc;
	if (c.status < 200 || c.status > 299) {
		rc = report_http_error(&c, what);
		client_close(&c);
		return rc;
	}
	*raw = client_read_all(&c, &len, err, sizeof(err));
	client_close(&c);
	if (!*raw) {
		say_err("%s: %s", what, err);
		return EX_FAILED;
	}
	if (doc && !(*doc = cJSON_Parse(*raw))) {
		say_err("%s: pmd sent malformed JSON", what);
		free(*raw);
		*raw = NULL;
		return EX_FAILED;
	}
	return 0;
}

/* status ----------------------------------------------------------------- */

static void fmt_age(long long s, char *buf, size_t len)
{
	if (s < 0)
		s = 0;
	if (s >= 86400)
		snprintf(buf, len, "%lldd%lldh", s / 86400, s % 86400 / 3600);
	else if (s >= 3600)
		snprintf(buf, len, "%lldh%lldm", s / 3600, s % 3600 / 60);
	else if (s >= 60)
		snprintf(buf, len, "%lldm%llds", s / 60, s % 60);
	else
		snprintf(buf, len, "%llds", s);
}

/* A time given as seconds since the epoch or as an RFC 3339 UTC string. */
static bool json_time(const cJSON *v, time_t *out)
{
	struct tm tm;

	if (cJSON_IsNumber(v) && v->valuedouble > 0) {
		*out = (time_t)v->valuedouble;
		return true;
	}
	if (!cJSON_IsString(v))
		return false;
	memset(&tm, 0, sizeof(tm));
	const char *rest = strptime(v->valuestring, "%Y-%m-%dT%H:%M:%S", &tm);
	if (!rest)
		return false;
	*out = timegm(&tm);
	return true;
}

static const char *jstr(const cJSON *o, const char *key, const char *dflt)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	return cJSON_IsString(v) && v->valuestring[0] ? v->valuestring : dflt;
}

static double jnum(const cJSON *o, const char *key, double dflt)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

#define NCOLS 7
struct table {
	char *(*rows)[NCOLS];
	size_t n, cap;
	size_t width[NCOLS];
};

static int table_add(struct table *t, const char *const cells[NCOLS])
{
	if (t->n == t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 8;
		void *p = realloc(t->rows, cap * sizeof(*t->rows));
		if (!p)
			return -1;
		t->rows = p;
		t->cap = cap;
	}
	for (int i = 0; i < NCOLS; i++) {
		t->rows[t->n][i] = strdup(cells[i]);
		size_t w = strlen(cells[i]);
		if (w > t->width[i])
			t->width[i] = w;
	}
	t->n++;
	return 0;
}

static void table_print_free(struct table *t)
{
	for (size_t r = 0; r < t->n; r++) {
		for (int i = 0; i < NCOLS; i++) {
			const char *s = t->rows[r][i] ? t->rows[r][i] : "?";
			if (i == NCOLS - 1)
				printf("%s\n", s);
			else
				printf("%-*s  ", (int)t->width[i], s);
			free(t->rows[r][i]);
		}
	}
	free(t->rows);
}

static void instance_health(const cJSON *inst, char *buf, size_t len)
{
	const cJSON *h = cJSON_GetObjectItemCaseSensitive(inst, "healthy");
	const char *health = jstr(inst, "health", NULL);
	const char *role = jstr(inst, "role", NULL);

	if (!health)
		health = cJSON_IsTrue(h) ? "healthy" : cJSON_IsFalse(h) ? "unhealthy" : "-";
	if (role && strcmp(role, "live") != 0 && strcmp(role, health) != 0)
		snprintf(buf, len, "%s (%s)", health, role);
	else
		snprintf(buf, len, "%s", health);
}

static void print_services(const cJSON *svcs, time_t now)
{
	struct table t = { 0 };
	static const char *const head[NCOLS] = { "SERVICE", "STATE", "COLOR", "IMAGE", "HEALTH", "UPTIME", "RESTARTS" };
	const cJSON *svc;

	table_add(&t, head);
	cJSON_ArrayForEach(svc, svcs) {
		const char *state = jstr(svc, "state", "-");
		const cJSON *insts = cJSON_GetObjectItemCaseSensitive(svc, "instances");
		const cJSON *inst;
		bool any = false;
		cJSON_ArrayForEach(inst, insts) {
			char health[64], uptime[32] = "-", restarts[24];
			time_t started;
			if (json_time(cJSON_GetObjectItemCaseSensitive(inst, "started_at"), &started))
				fmt_age((long long)(now - started), uptime, sizeof(uptime));
			instance_health(inst, health, sizeof(health));
			snprintf(restarts, sizeof(restarts), "%.0f", jnum(inst, "restarts", 0));
			const char *cells[NCOLS] = { svc->string, state, jstr(inst, "color", "-"),
				jstr(inst, "image", jstr(svc, "image", "-")), health, uptime, restarts };
			table_add(&t, cells);
			any = true;
		}
		if (!any) {
			const char *cells[NCOLS] = { svc->string, state, "-", jstr(svc, "image", "-"), "-", "-", "-" };
			table_add(&t, cells);
		}
	}
	table_print_free(&t);

	cJSON_ArrayForEach(svc, svcs) {
		const cJSON *ls = cJSON_GetObjectItemCaseSensitive(svc, "last_swap");
		char ago[32] = "", took[32] = "";
		time_t at;
		if (jstr(svc, "error", NULL))
			printf("%s: %s\n", svc->string, jstr(svc, "error", ""));
		if (!cJSON_IsObject(ls))
			continue;
		if (json_time(cJSON_GetObjectItemCaseSensitive(ls, "started_at"), &at)) {
			fmt_age((long long)(now - at), ago, sizeof(ago));
			snprintf(ago + strlen(ago), sizeof(ago) - strlen(ago), " ago");
		}
		if (jnum(ls, "duration_ms", -1) >= 0)
			snprintf(took, sizeof(took), ", took %.1fs", jnum(ls, "duration_ms", 0) / 1000.0);
		printf("last %s of %s: %s %s, %s%s%s%s\n", jstr(ls, "kind", "swap"), svc->string,
			jstr(ls, "image", "-"), jstr(ls, "result", "-"), ago, took,
			jstr(ls, "error", NULL) ? ": " : "", jstr(ls, "error", ""));
	}
}

static void print_tls(const cJSON *tls, time_t now)
{
	const char *mode = jstr(tls, "mode", "off");
	const cJSON *doms = cJSON_GetObjectItemCaseSensitive(tls, "domains"), *d;
	char line[1024];
	size_t n = 0;
	time_t exp;

	n += (size_t)snprintf(line + n, sizeof(line) - n, "TLS: %s", mode);
	cJSON_ArrayForEach(d, doms) {
		if (cJSON_IsString(d) && n < sizeof(line))
			n += (size_t)snprintf(line + n, sizeof(line) - n, "%s%s", d == doms->child ? " " : ", ",
				d->valuestring);
	}
	if (n < sizeof(line) && json_time(cJSON_GetObjectItemCaseSensitive(tls, "not_after"), &exp)) {
		long long days = ((long long)exp - (long long)now) / 86400;
		if (exp < now)
			n += (size_t)snprintf(line + n, sizeof(line) - n, "; certificate EXPIRED %lld days ago",
				-days);
		else
			n += (size_t)snprintf(line + n, sizeof(line) - n, "; certificate expires in %lld day%s (%s)",
				days, days == 1 ? "" : "s", jstr(tls, "not_after", ""));
	}
	if (n < sizeof(line) && jstr(tls, "last_error", NULL))
		snprintf(line + n, sizeof(line) - n, "; last error: %s", jstr(tls, "last_error", ""));
	printf("%s\n", line);
}

static void print_proxy(const cJSON *px)
{
	const cJSON *rs = cJSON_GetObjectItemCaseSensitive(px, "responses");

	printf("Proxy: %.0f connections open (%.0f HTTP/2), %.0f requests, %.0f 5xx, %.0f upstream errors\n",
		jnum(px, "connections", 0), jnum(px, "h2_connections", 0), jnum(px, "requests_total", 0),
		jnum(rs, "5xx", 0), jnum(px, "upstream_errors", 0));
}

/* Loud when state.json cannot be written (pmd retries it). */
static void print_state_file(const cJSON *sf)
{
	if (!sf || !cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(sf, "saved")))
		return;
	printf("STATE NOT SAVED: %s cannot be written (%.0f failed attempts, retrying): %s\n",
		jstr(sf, "path", "state.json"), jnum(sf, "failures", 0), jstr(sf, "error", "unknown error"));
}

static int cmd_status(int argc, char **argv);
static int cmd_swap(int argc, char **argv);
static int cmd_rollback(int argc, char **argv);
static int cmd_restart(int argc, char **argv);
static int cmd_logs(int argc, char **argv);
static int cmd_reload(int argc, char **argv);
static int cmd_drain(int argc, char **argv);
static int cmd_undrain(int argc, char **argv);

static const struct command commands[] = {
	{ "status", cmd_status, "status [--json]",
	  "Services, instances, health, images, certificate expiry and proxy counters as\n"
	  "a table.\n\n"
	  "  --json   print the /status document as pmd sends it\n" },
	{ "swap", cmd_swap, "swap SERVICE IMAGE [SERVICE IMAGE ...] [--timeout DUR] | swap --cancel SERVICE",
	  "Blue/green swap: pull, release command, start the candidate beside the live\n"
	  "instance, health gate, switch, drain. Several services in one call are one\n"
	  "unit: all candidates are gated, then all switch together, or none does.\n"
	  "Progress is printed as it happens (one line per event when stdout is not a\n"
	  "terminal). Exit 0 when the new image is live; 1 with the reason and the\n"
	  "failed instance's last log lines otherwise; 4 when a swap of the service is\n"
	  "already running.\n\n"
	  "  --timeout DUR   health gate deadline (ms, s, m, h, d; default: each\n"
	  "                  service's start_timeout)\n"
	  "  --cancel        end the running swap of SERVICE before its switch: the\n"
	  "                  pull is abandoned, candidates removed, live untouched;\n"
	  "                  exit 4 when no swap of SERVICE is running or it has\n"
	  "                  switched already (it only drains then)\n" },
	{ "rollback", cmd_rollback, "rollback SERVICE [--timeout DUR]",
	  "Swap back to the previous image, with the same gating as swap.\n" },
	{ "restart", cmd_restart, "restart SERVICE [--timeout DUR]",
	  "Replace the live instance with a fresh one of the same image, with the same\n"
	  "gating as swap (no downtime).\n" },
	{ "logs", cmd_logs, "logs SERVICE [--tail N] [--previous | --instance ID]",
	  "The last lines of the service's live instance, or of an earlier one: pmd\n"
	  "keeps the last 200 lines of each of the last 5 instances (drained, replaced,\n"
	  "crashed) in memory until it restarts.\n\n"
	  "  --tail N        number of lines (default 100)\n"
	  "  --previous      the newest instance that is not live (draining or gone)\n"
	  "  --instance ID   that instance (ID or a unique prefix; pmctl status --json\n"
	  "                  lists instances and previous_instances)\n" },
	{ "reload", cmd_reload, "reload",
	  "Re-read pmd's configuration, as SIGHUP does, without dropping connections.\n" },
	{ "drain", cmd_drain, "drain",
	  "Take this pmd out of its load balancer: [proxy] lb_health_path answers 503\n"
	  "from now on, while every request is still served. Wait for the balancer's\n"
	  "health check to notice (interval x unhealthy threshold) before swapping.\n"
	  "Until undrain or a restart of pmd.\n" },
	{ "undrain", cmd_undrain, "undrain",
	  "Put this pmd back into its load balancer: lb_health_path answers 200 again\n"
	  "(503 while a service has no live instance).\n" },
	{ NULL, NULL, NULL, NULL },
};

static const struct command *commands_table(void)
{
	return commands;
}

static const struct command *find_command(const char *name)
{
	for (const struct command *c = commands; c->name; c++)
		if (strcmp(c->name, name) == 0)
			return c;
	return NULL;
}

static int cmd_status(int argc, char **argv)
{
	const struct command *cmd = find_command("status");
	bool json = false, help = false;
	char *raw = NULL;
	cJSON *doc = NULL;

	for (int i = 1; i < argc; i++) {
		int r = common_option(argc, argv, &i, cmd, &help);
		if (r < 0)
			return EX_USAGE;
		if (help)
			return EX_OK;
		if (r)
			continue;
		if (strcmp(argv[i], "--json") == 0)
			json = true;
		else
			return usage_error("status", "unexpected argument '%s'", argv[i]);
	}
	int rc = simple_request("GET", "/status", NULL, "status", &raw, json ? NULL : &doc);
	if (rc)
		return rc;
	if (json) {
		size_t n = strlen(raw);
		fputs(raw, stdout);
		if (n == 0 || raw[n - 1] != '\n')
			putchar('\n');
		free(raw);
		return EX_OK;
	}
	time_t now = time(NULL);
	char up[32];
	fmt_age((long long)jnum(doc, "uptime_s", 0), up, sizeof(up));
	printf("pmd %s, up %s\n", jstr(doc, "version", "?"), up);
	if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(doc, "draining"))) {
		const char *hp = jstr(doc, "lb_health_path", "");
		printf("DRAINING: %s answers 503 to the load balancer (pmctl undrain)\n",
			hp[0] ? hp : "lb_health_path (not set)");
	}
	putchar('\n');
	print_services(cJSON_GetObjectItemCaseSensitive(doc, "services"), now);
	putchar('\n');
	print_tls(cJSON_GetObjectItemCaseSensitive(doc, "tls"), now);
	print_proxy(cJSON_GetObjectItemCaseSensitive(doc, "proxy"));
	print_state_file(cJSON_GetObjectItemCaseSensitive(doc, "state_file"));
	cJSON_Delete(doc);
	free(raw);
	return EX_OK;
}

/* swap, rollback, restart ------------------------------------------------ */

struct progress {
	bool tty;
	int cols;
	bool line_open;             /* a live line is on screen (tty) */
	char last_key[192];         /* service + event of the live line */
	char *buf;                  /* partial NDJSON line */
	size_t len, cap;
	bool overflow;
	cJSON *result;              /* the last line, once seen */
};

/* Fields of an event shown in its own words by describe_event. */
static bool shown_field(const char *ev, const char *key)
{
	static const char *const common[] = { "event", "service", "image", "detail", NULL };
	static const struct { const char *event, *keys[6]; } own[] = {
		{ "release", { "command", "exit_code", NULL } },
		{ "start", { "color", "id", "addr", NULL } },
		{ "health", { "pass", "passes", "fails", "needed", "error", NULL } },
		{ "switch", { "color", NULL } },
		{ "drain", { "inflight", NULL } },
	};

	for (size_t i = 0; common[i]; i++)
		if (strcmp(key, common[i]) == 0)
			return true;
	for (size_t i = 0; i < sizeof(own) / sizeof(own[0]); i++)
		if (strcmp(ev, own[i].event) == 0)
			for (size_t k = 0; own[i].keys[k]; k++)
				if (strcmp(key, own[i].keys[k]) == 0)
					return true;
	return false;
}

/* One progress event as a line: "backend pull reg/pm/backend:v3: layer 2/7
 * 12.3MiB/45.6MiB", "backend health 1/2", "drain: 3 requests in flight".
 * Fields not known here are appended as key=value. */
static void describe_event(const cJSON *ev, char *out, size_t len)
{
	const char *name = jstr(ev, "event", "event");
	const char *svc = jstr(ev, "service", NULL);
	const char *detail = jstr(ev, "detail", NULL);
	size_t n = 0;
	const cJSON *it;

#define OUT(...) do { if (n < len) n += (size_t)snprintf(out + n, len - n, __VA_ARGS__); } while (0)
	OUT("%s%s%s", svc ? svc : "", svc ? " " : "", name);
	if (strcmp(name, "pull") == 0) {
		OUT(" %s", jstr(ev, "image", ""));
	} else if (strcmp(name, "release") == 0) {
		if (cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(ev, "exit_code")))
			OUT(": exited with code %.0f", jnum(ev, "exit_code", 0));
		else
			OUT(": running `%s`", jstr(ev, "command", "release_command"));
	} else if (strcmp(name, "start") == 0) {
		OUT(" %s candidate", jstr(ev, "color", "?"));
		if (jstr(ev, "image", NULL))
			OUT(" %s", jstr(ev, "image", ""));
		if (jstr(ev, "addr", NULL))
			OUT(" at %s", jstr(ev, "addr", ""));
	} else if (strcmp(name, "health") == 0) {
		OUT(" %.0f/%.0f", jnum(ev, "passes", 0), jnum(ev, "needed", 0));
		if (cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(ev, "pass")))
			OUT(" (check failed: %s)", jstr(ev, "error", "no detail"));
	} else if (strcmp(name, "switch") == 0) {
		OUT(": %s is live", jstr(ev, "color", "the candidate"));
	} else if (strcmp(name, "drain") == 0) {
		OUT(": %.0f request%s in flight on the old instance", jnum(ev, "inflight", 0),
			jnum(ev, "inflight", 0) == 1 ? "" : "s");
	}
	if (detail)
		OUT(": %s", detail);
	cJSON_ArrayForEach(it, ev) {
		if (shown_field(name, it->string))
			continue;
		if (cJSON_IsString(it))
			OUT(" %s=%s", it->string, it->valuestring);
		else if (cJSON_IsNumber(it))
			OUT(" %s=%g", it->string, it->valuedouble);
		else if (cJSON_IsBool(it))
			OUT(" %s=%s", it->string, cJSON_IsTrue(it) ? "true" : "false");
	}
#undef OUT
}

static void progress_event(struct progress *p, const cJSON *ev)
{
	char text[1024], key[192];

	describe_event(ev, text, sizeof(text));
	if (!p->tty) {
		char ts[16];
		time_t now = time(NULL);
		struct tm tm;
		strftime(ts, sizeof(ts), "%H:%M:%S", localtime_r(&now, &tm));
		printf("[%s] %s\n", ts, text);
		fflush(stdout);
		return;
	}
	/* A new phase keeps the previous line on screen; repeated events of
	 * one phase (pull progress, health checks) rewrite it. */
	snprintf(key, sizeof(key), "%s/%s", jstr(ev, "service", ""), jstr(ev, "event", ""));
	if (p->line_open && strcmp(key, p->last_key) != 0)
		putchar('\n');
	snprintf(p->last_key, sizeof(p->last_key), "%s", key);
	int width = p->cols > 4 ? p->cols - 1 : 79;
	printf("\r\033[K%.*s", width, text);
	fflush(stdout);
	p->line_open = true;
}

static void progress_line(struct progress *p, const char *line, size_t len)
{
	cJSON *obj = cJSON_ParseWithLength(line, len);

	if (!obj) {
		if (len)
			say_err("pmd sent a malformed progress line: %.*s", (int)(len > 200 ? 200 : len), line);
		return;
	}
	if (cJSON_GetObjectItemCaseSensitive(obj, "ok")) {
		cJSON_Delete(p->result);
		p->result = obj;
		return;
	}
	progress_event(p, obj);
	cJSON_Delete(obj);
}

static void progress_data(void *arg, const char *data, size_t len)
{
	struct progress *p = arg;

	for (size_t i = 0; i < len; i++) {
		if (data[i] == '\n') {
			if (!p->overflow)
				progress_line(p, p->buf, p->len);
			p->len = 0;
			p->overflow = false;
			continue;
		}
		if (p->overflow)
			continue;
		if (p->len + 1 >= p->cap) {
			size_t cap = p->cap ? p->cap * 2 : 1024;
			char *nb = cap <= MAX_EVENT_LINE ? realloc(p->buf, cap) : NULL;
			if (!nb) {
				p->overflow = true;
				continue;
			}
			p->buf = nb;
			p->cap = cap;
		}
		p->buf[p->len++] = data[i];
	}
}

/* Run a swap request and show its progress. `what` names it in messages. */
static int run_swap(const char *target, const char *body, const char *what)
{
	struct client c;
	struct progress p = { 0 };
	char err[512];
	int rc = open_request(&c, "POST", target, body, 0);

	if (rc)
		return rc;
	if (c.status != 200) {
		rc = report_http_error(&c, what);
		client_close(&c);
		return rc;
	}
	p.tty = isatty(STDOUT_FILENO);
	if (p.tty) {
		struct winsize ws;
		p.cols = ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 ? ws.ws_col : 80;
	}
	int body_rc = client_read_body(&c, progress_data, &p, err, sizeof(err));
	client_close(&c);
	if (p.len && !p.overflow)
		progress_line(&p, p.buf, p.len);    /* a last line without newline */
	if (p.line_open)
		putchar('\n');
	fflush(stdout);

	if (!p.result) {
		say_err("connection to pmd lost during %s%s%s; check `pmctl status`", what,
			body_rc < 0 ? ": " : "", body_rc < 0 ? err : "");
		rc = EX_FAILED;
	} else if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(p.result, "ok"))) {
		if (jnum(p.result, "duration_ms", -1) >= 0)
			printf("%s: done, live after %.1fs\n", what, jnum(p.result, "duration_ms", 0) / 1000.0);
		else
			printf("%s: done, live\n", what);
		rc = EX_OK;
	} else {
		const cJSON *logs = cJSON_GetObjectItemCaseSensitive(p.result, "logs"), *l;
		say_err("%s failed: %s", what, jstr(p.result, "error", "no reason given"));
		if (cJSON_GetArraySize(logs) > 0) {
			fprintf(stderr, "last log lines of the failed instance:\n");
			cJSON_ArrayForEach(l, logs)
				if (cJSON_IsString(l))
					fprintf(stderr, "  | %s\n", l->valuestring);
		}
		rc = EX_FAILED;
	}
	cJSON_Delete(p.result);
	free(p.buf);
	return rc;
}

/* Parse [SERVICE IMAGE ...] [--timeout DUR]. `pairs`: positionals come in
 * SERVICE IMAGE pairs (swap) or are exactly one SERVICE. */
static int parse_swap_args(int argc, char **argv, const struct command *cmd, bool pairs,
	const char **pos, int *npos, const char **timeout, bool *cancel, bool *help)
{
	*npos = 0;
	*timeout = NULL;
	for (int i = 1; i < argc; i++) {
		bool missing = false;
		const char *v;
		int r = common_option(argc, argv, &i, cmd, help);
		if (r < 0)
			return EX_USAGE;
		if (*help)
			return EX_OK;
		if (r)
			continue;
		if ((v = opt_value(argc, argv, &i, "--timeout", &missing))) {
			uint64_t ms;
			if (parse_duration(v, &ms) < 0)
				return usage_error(cmd->name, "--timeout: expected a duration like 90s (ms, s, m, h, d), got '%s'", v);
			*timeout = v;
			continue;
		}
		if (missing)
			return usage_error(cmd->name, "%s: expected a value", argv[i]);
		if (cancel && strcmp(argv[i], "--cancel") == 0) {
			*cancel = true;
			continue;
		}
		if (argv[i][0] == '-')
			return usage_error(cmd->name, "unknown option '%s'", argv[i]);
		if (*npos == 2 * MAX_SWAP_PAIRS)
			return usage_error(cmd->name, "at most %d services in one swap", MAX_SWAP_PAIRS);
		pos[(*npos)++] = argv[i];
	}
	if (cancel && *cancel) {
		if (*timeout)
			return usage_error(cmd->name, "--cancel takes no --timeout");
		pairs = false;   /* swap --cancel SERVICE */
	}
	if (pairs && (*npos == 0 || *npos % 2))
		return usage_error(cmd->name, "expected SERVICE IMAGE pairs, got %d argument%s", *npos,
			*npos == 1 ? "" : "s");
	if (!pairs && *npos != 1)
		return usage_error(cmd->name, "expected one SERVICE, got %d arguments", *npos);
	for (int i = 0; i < *npos; i += pairs ? 2 : 1) {
		if (!valid_service(pos[i]))
			return usage_error(cmd->name, "'%s' is not a service name (letters, digits, . _ -)", pos[i]);
		if (pairs && !valid_image(pos[i + 1]))
			return usage_error(cmd->name, "'%s' is not an image reference", pos[i + 1]);
		for (int j = 0; j < i; j += 2)
			if (strcmp(pos[i], pos[j]) == 0)
				return usage_error(cmd->name, "service '%s' given twice", pos[i]);
		int rc = ssh_mode ? ssh_allowed(pos[i], pairs ? pos[i + 1] : NULL) : EX_OK;
		if (rc)
			return rc;
	}
	return EX_OK;
}

/* swap --cancel SERVICE: the running swap's own pmctl reports the end. */
static int swap_cancel(const char *service)
{
	char target[256], what[300];
	char *raw = NULL;
	int rc;

	snprintf(target, sizeof(target), "/services/%s/cancel", service);
	snprintf(what, sizeof(what), "cancel of the swap of %s", service);
	rc = simple_request("POST", target, NULL, what, &raw, NULL);
	if (rc == 0)
		printf("swap of %s cancelled: candidates removed, the live instance untouched\n", service);
	free(raw);
	return rc;
}

static int cmd_swap(int argc, char **argv)
{
	const struct command *cmd = find_command("swap");
	const char *pos[2 * MAX_SWAP_PAIRS], *timeout;
	char target[256], what[256];
	int npos;
	bool help = false, cancel = false;
	int rc = parse_swap_args(argc, argv, cmd, true, pos, &npos, &timeout, &cancel, &help);

	if (rc || help)
		return rc;
	if (cancel)
		return swap_cancel(pos[0]);
	cJSON *body = cJSON_CreateObject();
	if (npos == 2) {
		cJSON_AddStringToObject(body, "image", pos[1]);
		snprintf(target, sizeof(target), "/services/%s/swap", pos[0]);
		snprintf(what, sizeof(what), "swap of %s to %s", pos[0], pos[1]);
	} else {
		cJSON *svcs = cJSON_AddObjectToObject(body, "services");
		for (int i = 0; i < npos; i += 2)
			cJSON_AddStringToObject(svcs, pos[i], pos[i + 1]);
		snprintf(target, sizeof(target), "/swap");
		snprintf(what, sizeof(what), "swap of %d services", npos / 2);
	}
	if (timeout)
		cJSON_AddStringToObject(body, "timeout", timeout);
	char *s = cJSON_PrintUnformatted(body);
	cJSON_Delete(body);
	if (!s) {
		say_err("out of memory");
		return EX_FAILED;
	}
	rc = run_swap(target, s, what);
	free(s);
	return rc;
}

static int swap_like(int argc, char **argv, const char *name)
{
	const struct command *cmd = find_command(name);
	const char *pos[2 * MAX_SWAP_PAIRS], *timeout;
	char target[256], what[256];
	int npos;
	bool help = false;
	int rc = parse_swap_args(argc, argv, cmd, false, pos, &npos, &timeout, NULL, &help);

	if (rc || help)
		return rc;
	char *s = NULL;
	if (timeout) {
		cJSON *body = cJSON_CreateObject();
		cJSON_AddStringToObject(body, "timeout", timeout);
		s = cJSON_PrintUnformatted(body);
		cJSON_Delete(body);
	}
	snprintf(target, sizeof(target), "/services/%s/%s", pos[0], name);
	snprintf(what, sizeof(what), "%s of %s", name, pos[0]);
	rc = run_swap(target, s, what);
	free(s);
	return rc;
}

static int cmd_rollback(int argc, char **argv)
{
	return swap_like(argc, argv, "rollback");
}

static int cmd_restart(int argc, char **argv)
{
	return swap_like(argc, argv, "restart");
}

/* logs, reload ----------------------------------------------------------- */

static void write_out(void *arg, const char *data, size_t len)
{
	(void)arg;
	fwrite(data, 1, len, stdout);
}

static int cmd_logs(int argc, char **argv)
{
	const struct command *cmd = find_command("logs");
	const char *svc = NULL, *inst = NULL;
	long tail = 100;
	bool help = false, previous = false;

	for (int i = 1; i < argc; i++) {
		bool missing = false;
		const char *v;
		int r = common_option(argc, argv, &i, cmd, &help);
		if (r < 0)
			return EX_USAGE;
		if (help)
			return EX_OK;
		if (r)
			continue;
		if ((v = opt_value(argc, argv, &i, "--tail", &missing))) {
			char *end = NULL;
			errno = 0;
			tail = strtol(v, &end, 10);
			if (errno || !isdigit((unsigned char)*v) || *end || tail < 1 || tail > 10000)
				return usage_error("logs", "--tail: expected a number of lines 1..10000, got '%s'", v);
			continue;
		}
		if ((v = opt_value(argc, argv, &i, "--instance", &missing))) {
			if (!valid_service(v) || strlen(v) > 79)
				return usage_error("logs", "--instance: expected an instance ID, got '%s'", v);
			inst = v;
			continue;
		}
		if (strcmp(argv[i], "--previous") == 0) {
			previous = true;
			continue;
		}
		if (missing)
			return usage_error("logs", "%s: expected a value", argv[i]);
		if (argv[i][0] == '-')
			return usage_error("logs", "unknown option '%s'", argv[i]);
		if (svc)
			return usage_error("logs", "expected one SERVICE, got '%s' and '%s'", svc, argv[i]);
		svc = argv[i];
	}
	if (!svc)
		return usage_error("logs", "expected a SERVICE");
	if (!valid_service(svc))
		return usage_error("logs", "'%s' is not a service name (letters, digits, . _ -)", svc);
	if (previous && inst)
		return usage_error("logs", "give either --previous or --instance, not both");
	int allowed = ssh_mode ? ssh_allowed(svc, NULL) : EX_OK;
	if (allowed)
		return allowed;

	char target[256], err[512];
	struct client c;
	snprintf(target, sizeof(target), "/services/%s/logs?tail=%ld%s%s%s", svc, tail,
		previous ? "&previous=1" : "", inst ? "&instance=" : "", inst ? inst : "");
	int rc = open_request(&c, "GET", target, NULL, REQUEST_TIMEOUT_MS);
	if (rc)
		return rc;
	if (c.status != 200) {
		rc = report_http_error(&c, "logs");
	} else if (client_read_body(&c, write_out, NULL, err, sizeof(err)) < 0) {
		say_err("logs: %s", err);
		rc = EX_FAILED;
	}
	client_close(&c);
	fflush(stdout);
	return rc;
}

/* A command without arguments that POSTs to `target`: prints `done`, and
 * pmd's "warning" when there is one, on success. */
static int post_action(int argc, char **argv, const char *name, const char *target, const char *done)
{
	const struct command *cmd = find_command(name);
	bool help = false;
	char *raw = NULL;
	cJSON *doc = NULL;
	char failed[64];

	for (int i = 1; i < argc; i++) {
		int r = common_option(argc, argv, &i, cmd, &help);
		if (r < 0)
			return EX_USAGE;
		if (help)
			return EX_OK;
		if (!r)
			return usage_error(name, "unexpected argument '%s'", argv[i]);
	}
	snprintf(failed, sizeof(failed), "%s failed", name);
	int rc = simple_request("POST", target, NULL, failed, &raw, &doc);
	if (rc)
		return rc;
	if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(doc, "ok"))) {
		if (jstr(doc, "warning", NULL))
			say_err("%s: %s", name, jstr(doc, "warning", ""));
		printf("%s\n", done);
	} else {
		say_err("%s: %s", failed, jstr(doc, "error", "no reason given"));
		rc = EX_FAILED;
	}
	cJSON_Delete(doc);
	free(raw);
	return rc;
}

static int cmd_reload(int argc, char **argv)
{
	return post_action(argc, argv, "reload", "/reload", "configuration reloaded");
}

/* drain, undrain ----------------------------------------------------------- */

static int cmd_drain(int argc, char **argv)
{
	return post_action(argc, argv, "drain", "/drain", "draining: the load balancer health check answers 503");
}

static int cmd_undrain(int argc, char **argv)
{
	return post_action(argc, argv, "undrain", "/undrain", "undrained: the load balancer health check answers 200");
}

/* --ssh ------------------------------------------------------------------ */

/* Length of the repository part of an image reference: without
 * "@digest" and without ":tag" (a colon after the last slash; one before it
 * is a registry port). */
static size_t image_repo_len(const char *ref)
{
	size_t n = strcspn(ref, "@");
	const char *slash = memrchr(ref, '/', n);
	const char *colon = memrchr(ref, ':', n);
	return colon && (!slash || colon > slash) ? (size_t)(colon - ref) : n;
}

/* Under --ssh, `service` must be one pmd runs and `image` (NULL: no image
 * given) a reference to the repository of the service's configured image,
 * any tag or digest. pmd's /status tells both (fetched once). EX_OK, or the
 * exit code after saying why not. */
static int ssh_allowed(const char *service, const char *image)
{
	static cJSON *status;
	char *raw = NULL;

	if (!status) {
		int rc = simple_request("GET", "/status", NULL, "--ssh: reading the services from pmd", &raw, &status);
		free(raw);
		if (rc)
			return rc;
	}
	const cJSON *svcs = cJSON_GetObjectItemCaseSensitive(status, "services");
	const cJSON *svc = cJSON_GetObjectItemCaseSensitive(svcs, service), *s;
	if (!cJSON_IsObject(svc)) {
		char names[512];
		size_t o = 0;
		names[0] = '\0';
		cJSON_ArrayForEach(s, svcs)
			if (s->string && o < sizeof(names))
				o += (size_t)snprintf(names + o, sizeof(names) - o, "%s%s", o ? ", " : "", s->string);
		return usage_error(NULL, "--ssh: unknown service '%s'; pmd runs: %s", service, o ? names : "none");
	}
	if (!image)
		return EX_OK;
	const char *conf = jstr(svc, "configured_image", "");
	if (!*conf)
		conf = jstr(svc, "image", "");
	size_t n = image_repo_len(conf);
	if (n == 0)
		return usage_error(NULL, "--ssh: service '%s' has no configured image, so none may be swapped in over ssh",
			service);
	if (image_repo_len(image) != n || strncmp(image, conf, n) != 0)
		return usage_error(NULL, "--ssh: image '%s' is not in the repository of service '%s' (%.*s); any tag of that repository is allowed",
			image, service, (int)n, conf);
	return EX_OK;
}

/* A forced command (authorized_keys command="pmctl --ssh"): run the
 * client's SSH_ORIGINAL_COMMAND if it is one of the allowed commands with
 * plain arguments. No shell is involved; words are split on blanks. */
static int run_ssh(void)
{
	static const char *const allowed[] = { "status", "swap", "rollback", "restart", "logs", "drain", "undrain",
		NULL };
	const char *orig = getenv("SSH_ORIGINAL_COMMAND");
	char *words[2 * MAX_SWAP_PAIRS + 16];
	int n = 0;

	if (!orig || !*orig)
		return usage_error(NULL, "--ssh: no command given; this key may run: pmctl status|swap|rollback|restart|logs|drain|undrain");
	char *copy = strdup(orig);
	if (!copy) {
		say_err("out of memory");
		return EX_FAILED;
	}
	for (char *tok, *save = NULL, *s = copy; (tok = strtok_r(s, " \t", &save)); s = NULL) {
		for (const char *p = tok; *p; p++)
			if (!isalnum((unsigned char)*p) && !strchr("._:/@+=,-", *p)) {
				char bad = *p;
				free(copy);
				return usage_error(NULL, "--ssh: character '%c' not allowed in arguments", bad);
			}
		if (n == (int)(sizeof(words) / sizeof(words[0])) - 1) {
			free(copy);
			return usage_error(NULL, "--ssh: too many arguments");
		}
		words[n++] = tok;
	}
	words[n] = NULL;
	int first = 0;
	if (n > 0 && (strcmp(words[0], "pmctl") == 0
	              || (strlen(words[0]) > 6 && strcmp(words[0] + strlen(words[0]) - 6, "/pmctl") == 0)))
		first = 1;
	int rc = -1;
	for (int i = first; i < n && rc < 0; i++)
		if (strcmp(words[i], "-s") == 0 || strncmp(words[i], "--socket", 8) == 0)
			rc = usage_error(NULL, "--ssh: the socket cannot be chosen");
	if (rc < 0 && first < n) {
		for (int k = 0; allowed[k]; k++)
			if (strcmp(words[first], allowed[k]) == 0)
				rc = find_command(allowed[k])->run(n - first, words + first);
	}
	if (rc < 0)
		rc = usage_error(NULL, "--ssh: '%s' is not allowed; this key may run: pmctl status|swap|rollback|restart|logs|drain|undrain",
			first < n ? words[first] : "");
	free(copy);
	return rc;
}

int main(int argc, char **argv)
{
	int i = 1;
	bool ssh = false;

	socket_path = getenv("PMD_SOCKET");
	if (!socket_path || !*socket_path)
		socket_path = DEFAULT_SOCKET;
	for (; i < argc && argv[i][0] == '-'; i++) {
		bool missing = false;
		const char *v;
		if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			print_global_help(stdout);
			return EX_OK;
		}
		if (strcmp(argv[i], "-V") == 0 || strcmp(argv[i], "--version") == 0) {
			printf("pmctl %s\n", PMD_VERSION);
			return EX_OK;
		}
		if (strcmp(argv[i], "--ssh") == 0) {
			ssh = true;
			continue;
		}
		if ((v = opt_value(argc, argv, &i, "--socket", &missing)) || (v = opt_value(argc, argv, &i, "-s", &missing))) {
			socket_path = v;
			continue;
		}
		if (missing)
			return usage_error(NULL, "%s: expected a value", argv[i]);
		return usage_error(NULL, "unknown option '%s'", argv[i]);
	}
	if (ssh) {
		ssh_mode = true;
		return i < argc ? usage_error(NULL, "--ssh takes no command line arguments") : run_ssh();
	}
	if (i >= argc) {
		print_global_help(stderr);
		return EX_USAGE;
	}
	const struct command *cmd = find_command(argv[i]);
	if (!cmd)
		return usage_error(NULL, "unknown command '%s'", argv[i]);
	return cmd->run(argc - i, argv + i);
}
