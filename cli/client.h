/* client — pmctl's small HTTP/1.1 client over pmd's unix control socket.
 * Blocking, one request per connection (Connection: close), bounded
 * response heads; bodies are delivered as they arrive (Content-Length,
 * chunked, or until close) so NDJSON progress streams can be shown live. */
#ifndef PMCTL_CLIENT_H
#define PMCTL_CLIENT_H

#include <stdbool.h>
#include <stddef.h>

/* Exit status for "cannot reach the socket / permission denied". */
#define CLIENT_EXIT_UNREACHABLE 3

struct client {
	int fd;
	const char *socket_path;
	int timeout_ms;              /* per read; 0 = wait as long as it takes */
	char buf[16384];             /* bytes received, not yet consumed */
	size_t off, len;
	/* response head */
	int status;
	char content_type[128];
	bool chunked;
	long long content_length;    /* -1: until close (or chunked) */
};

/* Connect to path. 0, or -1 with a message saying what to do in err
 * (permission denied names the user and the socket's group). */
int client_connect(struct client *c, const char *path, char *err, size_t errlen);
void client_close(struct client *c);
/* "permission denied on SOCKET: add user 'ci' to group 'deploy' (see
 * control_group)": the group owning the socket, or its folder when the
 * socket cannot be looked at. */
void client_permission_hint(const char *path, char *err, size_t errlen);

/* Send a request (body may be NULL) and read the response head. 0, or -1
 * with err set; *unanswered is set when pmd closed the connection before
 * sending a byte (what it does to peers it does not serve). */
int client_request(struct client *c, const char *method, const char *target,
	const char *body, size_t body_len, bool *unanswered, char *err, size_t errlen);

/* Read the response body, calling on_data for each piece as it arrives.
 * 0 when the body is complete, -1 when the connection was lost or the
 * framing is broken (err set). */
typedef void (*client_data_fn)(void *arg, const char *data, size_t len);
int client_read_body(struct client *c, client_data_fn on_data, void *arg, char *err, size_t errlen);

/* Read the whole body into a malloc'd NUL-terminated string. NULL + err. */
char *client_read_all(struct client *c, size_t *len, char *err, size_t errlen);

#endif
