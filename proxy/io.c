/* io — sockets of the proxy data path (see proxy_int.h for the contract).
 *
 * Why not bufferevent_socket for plain TCP: it asks the kernel how much is
 * readable (ioctl FIONREAD) before every read and arms EV_WRITE
 * (epoll_ctl) for every response, then disarms it: four syscalls per
 * request that a speculative write and a fixed-size read avoid.
 *
 * TLS runs on the same events with SSL_read/SSL_write on the fd (no
 * bufferevent_openssl: it stacks a socket bufferevent under a BIO of its
 * own, which costs a copy, FIONREAD and callbacks per record). OpenSSL may need the other direction to
 * make progress: SSL_read can ask for a write (key update) and SSL_write
 * for a read; `rd_wants_wr` / `wr_wants_rd` record that, and the event of
 * that direction retries the blocked operation. Records a read left inside
 * OpenSSL (SSL_has_pending) are not announced by the fd: the read event is
 * activated by hand. The thread's OpenSSL error queue is kept empty by
 * clearing it wherever an error was looked at, not before every call. */
#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "proxy_int.h"

#define READ_SIZE 16384
#define TLS_RECORD 16384           /* plaintext per SSL_write (one record) */
#define TLS_READ_BATCH (4 * READ_SIZE) /* per read event, then let others run */

static void dirty_unlink(struct io *io)
{
	if (!io->dirty)
		return;
	if (io->dprev)
		io->dprev->dnext = io->dnext;
	else
		io->w->dirty = io->dnext;
	if (io->dnext)
		io->dnext->dprev = io->dprev;
	io->dnext = io->dprev = NULL;
	io->dirty = false;
}

static void dirty_push(struct io *io)
{
	if (io->dirty || !io->open)
		return;
	io->dirty = true;
	io->dprev = NULL;
	io->dnext = io->w->dirty;
	if (io->w->dirty)
		io->w->dirty->dprev = io;
	io->w->dirty = io;
}

static bool rd_wanted(const struct io *io)
{
	if (io->ssl && (!io->hs_done || io->wr_wants_rd))
		return !io->eof;
	return io->rd_on && !io->eof && !io->connecting &&
		!(io->rd_high && evbuffer_get_length(io->in) >= io->rd_high);
}

static void rd_arm(struct io *io)
{
	bool want = rd_wanted(io);
	if (io->h2s) {               /* memory: announce what came while paused */
		if (want && io->mem_new)
			event_active(&io->rev, EV_READ, 1);
		return;
	}
	if (want && !io->rd_added) {
		event_add(&io->rev, NULL);
		/* bytes OpenSSL holds, or an end seen behind data: no fd event */
		if (io->ssl && (io->rd_again || io->pend_end || SSL_has_pending(io->ssl)))
			event_active(&io->rev, EV_READ, 1);
	} else if (!want && io->rd_added) {
		event_del(&io->rev);
	}
	io->rd_added = want;
}

static void wr_arm(struct io *io, bool want)
{
	if (io->h2s)
		return;
	want = want || io->rd_wants_wr;
	if (want && !io->wr_added)
		event_add(&io->wev, NULL);
	else if (!want && io->wr_added)
		event_del(&io->wev);
	io->wr_added = want;
}

/* SSL_write what is queued, one record at a time, until OpenSSL would
 * block. Returns bytes written, or -1 with errno (EAGAIN: blocked). A
 * blocked write is retried with the same length (OpenSSL's rule; the
 * buffer may move: SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER). */
static int tls_write(struct io *io)
{
	int total = 0;
	if (!io->hs_done) {
		errno = EAGAIN;
		return -1;
	}
	io->wr_wants_rd = false;
	for (;;) {
		size_t len = evbuffer_get_length(io->out);
		if (!len)
			return total;
		size_t sz = io->tls_wlen ? io->tls_wlen : len < TLS_RECORD ? len : TLS_RECORD;
		/* small pieces (a head, then a body) go out as one record */
		const void *p = evbuffer_pullup(io->out, (ev_ssize_t)sz);
		if (!p) {
			errno = ENOMEM;
			return -1;
		}
		int n = SSL_write(io->ssl, p, (int)sz);
		if (n > 0) {
			io->tls_wlen = 0;
			evbuffer_drain(io->out, (size_t)n);
			total += n;
			continue;
		}
		io->tls_wlen = sz;
		switch (SSL_get_error(io->ssl, n)) {
		case SSL_ERROR_WANT_WRITE:
			break;
		case SSL_ERROR_WANT_READ:
			io->wr_wants_rd = true;
			rd_arm(io);
			break;
		default:
			io->tls_failed = true;
			if (!errno || errno == EAGAIN || errno == EINTR)
				errno = EPIPE;
			ERR_clear_error();
			return -1;
		}
		if (total)
			return total;
		errno = EAGAIN;
		return -1;
	}
}

/* Write what is queued; report errors and the low watermark. Returns -1 if
 * a callback may have freed the io. */
static int io_write_out(struct io *io, bool callbacks)
{
	size_t len = evbuffer_get_length(io->out);
	if (!len || io->connecting || !io->open) {
		if (!len)
			wr_arm(io, false);
		return 0;
	}
	errno = 0;
	int n = io->ssl ? tls_write(io) : evbuffer_write(io->out, io->fd);
	if (n > 0 && io->sendfile && evbuffer_get_length(io->out)) {
		errno = 0;
		int m = evbuffer_write(io->out, io->fd);   /* the file segment after a head */
		n = m > 0 ? n + m : n;
	}
	/* libevent reports a blocked sendfile as 0 with errno EAGAIN; 0 without
	 * it is sendfile at the end of a file that shrank: an error, not a
	 * write to retry forever */
	if (n == 0 && len) {
		n = -1;
		if (errno != EAGAIN && errno != EINTR)
			errno = EIO;
	}
	if (n < 0 && errno != EAGAIN && errno != EINTR) {
		wr_arm(io, false);
		if (callbacks && io->eventcb) {
			io->eventcb(io, BEV_EVENT_ERROR | BEV_EVENT_WRITING, io->arg);
			return -1;
		}
		return 0;
	}
	size_t left = evbuffer_get_length(io->out);
	wr_arm(io, left > 0);
	if (callbacks && n > 0 && left <= io->wr_low && io->writecb) {
		io->writecb(io, io->arg);
		return -1;
	}
	return 0;
}

/* Every io whose buffers the connection layer took (io_in/io_out): resume
 * reading consumed below the high watermark, write what was queued. */
void worker_flush(struct worker *w)
{
	while (w->dirty) {
		struct io *io = w->dirty;
		dirty_unlink(io);
		rd_arm(io);
		if (io->h2s)
			h2_stream_flush(io->h2s);
		else
			io_write_out(io, true);
	}
}

struct evbuffer *io_in(struct io *io)
{
	dirty_push(io);
	return io->in;
}

struct evbuffer *io_out(struct io *io)
{
	dirty_push(io);
	return io->out;
}

void io_flush_now(struct io *io)
{
	dirty_unlink(io);
	if (io->h2s)
		h2_stream_flush(io->h2s);
	else
		io_write_out(io, false);
}

static void on_read(evutil_socket_t fd, short what, void *arg)
{
	(void)what;
	struct io *io = arg;
	struct worker *w = io->w;
	struct evbuffer_iovec v;
	if (evbuffer_reserve_space(io->in, READ_SIZE, &v, 1) < 1)
		return;
	ssize_t n = read(fd, v.iov_base, v.iov_len < READ_SIZE ? v.iov_len : READ_SIZE);
	if (n > 0) {
		v.iov_len = (size_t)n;
		evbuffer_commit_space(io->in, &v, 1);
		if (io->rd_high && evbuffer_get_length(io->in) >= io->rd_high)
			rd_arm(io);
		io->readcb(io, io->arg);
	} else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
		io->eof = true;
		rd_arm(io);
		io->eventcb(io, n == 0 ? BEV_EVENT_EOF | BEV_EVENT_READING
			: BEV_EVENT_ERROR | BEV_EVENT_READING, io->arg);
	}
	worker_flush(w);
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
	(void)what;
	struct io *io = arg;
	struct worker *w = io->w;
	if (io->connecting) {
		int err = 0;
		socklen_t len = sizeof(err);
		io->connecting = false;
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
			err = errno;
		if (err) {
			wr_arm(io, false);
			errno = err;
			io->eventcb(io, BEV_EVENT_ERROR | BEV_EVENT_WRITING, io->arg);
			worker_flush(w);
			return;
		}
		rd_arm(io);
		wr_arm(io, false);
		dirty_push(io);          /* what was queued while connecting */
		io->eventcb(io, BEV_EVENT_CONNECTED, io->arg);
		worker_flush(w);
		return;
	}
	dirty_unlink(io);
	io_write_out(io, true);
	worker_flush(w);
}

/* The buffers and both events of io on fd: 0, or -1 with nothing left
 * allocated (fd untouched). */
static int io_setup(struct io *io, struct worker *w, int fd, event_callback_fn rd, event_callback_fn wr)
{
	io->w = w;
	io->fd = fd;
	io->in = evbuffer_new();
	io->out = evbuffer_new();
	if (io->in && io->out &&
	    event_assign(&io->rev, w->base, fd, EV_READ | EV_PERSIST, rd, io) == 0 &&
	    event_assign(&io->wev, w->base, fd, EV_WRITE | EV_PERSIST, wr, io) == 0)
		return 0;
	if (io->in)
		evbuffer_free(io->in);
	if (io->out)
		evbuffer_free(io->out);
	io->in = io->out = NULL;
	return -1;
}

int io_init_plain(struct io *io, struct worker *w, int fd, bool connecting)
{
	io->ssl = NULL;
	if (io_setup(io, w, fd, on_read, on_write) < 0)
		return -1;
	io->open = true;
	io->connecting = connecting;
	if (connecting)
		wr_arm(io, true);
	return 0;
}

/* Drive the handshake. Returns 1 when done (CONNECTED was reported),
 * 0 when it waits for the socket, -1 when a callback may have freed io. */
static int tls_handshake(struct io *io)
{
	ERR_clear_error();
	int r = SSL_do_handshake(io->ssl);
	if (r == 1) {
		io->hs_done = true;
		wr_arm(io, evbuffer_get_length(io->out) > 0);
		rd_arm(io);
		if (evbuffer_get_length(io->out))
			dirty_push(io);
		io->eventcb(io, BEV_EVENT_CONNECTED, io->arg);
		return 1;
	}
	switch (SSL_get_error(io->ssl, r)) {
	case SSL_ERROR_WANT_READ:
		wr_arm(io, false);
		return 0;
	case SSL_ERROR_WANT_WRITE:
		wr_arm(io, true);
		return 0;
	default:
		ERR_clear_error();
		io->tls_failed = true;
		io->eof = true;
		rd_arm(io);
		wr_arm(io, false);
		io->eventcb(io, BEV_EVENT_ERROR | BEV_EVENT_READING, io->arg);
		return -1;
	}
}

/* How a TLS read ended: close_notify, or a TCP end without it (tolerated:
 * the HTTP framing says whether a message was complete), or an error. */
static short tls_read_end(struct io *io, int n)
{
	int e = SSL_get_error(io->ssl, n);
	unsigned long err = ERR_peek_error();
	ERR_clear_error();
	if (e == SSL_ERROR_ZERO_RETURN)
		return BEV_EVENT_EOF;
	io->tls_failed = true;       /* no close_notify back */
	if (e == SSL_ERROR_SYSCALL && err == 0 && errno == 0)
		return BEV_EVENT_EOF;
	if (e == SSL_ERROR_SSL && ERR_GET_REASON(err) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
		return BEV_EVENT_EOF;
	return BEV_EVENT_ERROR;
}

/* Read what OpenSSL has for us into the input, then one read callback.
 * An end (close_notify, EOF, error) behind data is kept in pend_end and
 * reported on the next turn, so the data reaches the callback first. */
static void tls_read(struct io *io)
{
	size_t got = 0;
	short end = io->pend_end;
	io->rd_wants_wr = false;
	if (!io->rd_on || io->eof || (io->rd_high && evbuffer_get_length(io->in) >= io->rd_high)) {
		rd_arm(io);          /* paused: rd_arm comes back here on resume */
		return;
	}
	io->rd_again = false;
	while (!end && got < TLS_READ_BATCH &&
	       !(io->rd_high && evbuffer_get_length(io->in) >= io->rd_high)) {
		struct evbuffer_iovec v;
		if (evbuffer_reserve_space(io->in, READ_SIZE, &v, 1) < 1) {
			end = BEV_EVENT_ERROR;
			break;
		}
		errno = 0;
		int n = SSL_read(io->ssl, v.iov_base, (int)(v.iov_len < READ_SIZE ? v.iov_len : READ_SIZE));
		if (n > 0) {
			v.iov_len = (size_t)n;
			evbuffer_commit_space(io->in, &v, 1);
			got += (size_t)n;
			/* read-ahead took what the socket had, up to its buffer:
			 * nothing held means nothing to read but what the fd will
			 * announce (no read(2) just to see EAGAIN) */
			if (!SSL_has_pending(io->ssl))
				break;
			continue;
		}
		int e = SSL_get_error(io->ssl, n);
		if (e == SSL_ERROR_WANT_READ)
			break;
		if (e == SSL_ERROR_WANT_WRITE) {
			io->rd_wants_wr = true;
			wr_arm(io, evbuffer_get_length(io->out) > 0);
			break;
		}
		end = tls_read_end(io, n);
	}
	if (got) {
		io->pend_end = end;
		if (end || got >= TLS_READ_BATCH || SSL_has_pending(io->ssl)) {
			io->rd_again = true;
			event_active(&io->rev, EV_READ, 1);
		}
		rd_arm(io);
		io->readcb(io, io->arg);
		return;
	}
	if (end) {
		io->pend_end = 0;
		io->eof = true;
		rd_arm(io);
		io->eventcb(io, end | BEV_EVENT_READING, io->arg);
	}
}

static void tls_on_read(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct io *io = arg;
	struct worker *w = io->w;
	if (!io->hs_done) {
		if (tls_handshake(io) < 1) {
			worker_flush(w);
			return;
		}
	}
	if (io->wr_wants_rd) {       /* SSL_write waited for this */
		/* the write's callbacks may end this turn: read on the next */
		event_active(&io->rev, EV_READ, 1);
		dirty_unlink(io);
		if (io_write_out(io, true) < 0) {
			worker_flush(w);
			return;
		}
	}
	tls_read(io);
	worker_flush(w);
}

static void tls_on_write(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct io *io = arg;
	struct worker *w = io->w;
	if (!io->hs_done) {
		if (tls_handshake(io) < 1) {
			worker_flush(w);
			return;
		}
	}
	if (io->rd_wants_wr) {       /* SSL_read waited for this */
		io->rd_wants_wr = false;
		event_active(&io->rev, EV_READ, 1);
	}
	dirty_unlink(io);
	io_write_out(io, true);
	worker_flush(w);
}

int io_init_tls(struct io *io, struct worker *w, int fd, void *ssl)
{
	if (!SSL_set_fd(ssl, fd) || io_setup(io, w, fd, tls_on_read, tls_on_write) < 0)
		return -1;
	SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
		SSL_MODE_RELEASE_BUFFERS);
	SSL_set_read_ahead(ssl, 1);  /* a record's header and body in one read(2) */
	SSL_set_accept_state(ssl);
	io->ssl = ssl;
	io->open = true;
	rd_arm(io);                  /* the ClientHello */
	return 0;
}

static void mem_on_read(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct io *io = arg;
	struct worker *w = io->w;
	if (io->pend_end) {
		short end = io->pend_end;
		io->pend_end = 0;
		io->eof = true;
		io->eventcb(io, end | BEV_EVENT_READING, io->arg);
	} else if (rd_wanted(io)) {
		io->mem_new = false;
		io->readcb(io, io->arg);
	}                            /* else rd_arm announces it on resume */
	worker_flush(w);
}

static void mem_on_write(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct io *io = arg;
	struct worker *w = io->w;
	if (io->writecb && evbuffer_get_length(io->out) <= io->wr_low)
		io->writecb(io, io->arg);
	worker_flush(w);
}

int io_init_mem(struct io *io, struct worker *w, struct h2stream *st)
{
	if (io_setup(io, w, -1, mem_on_read, mem_on_write) < 0)
		return -1;
	io->h2s = st;
	io->open = true;
	io->hs_done = true;
	return 0;
}

void io_mem_feed(struct io *io)
{
	if (!io->open)
		return;
	io->mem_new = true;
	rd_arm(io);
}

void io_mem_end(struct io *io, short what)
{
	if (!io->open || io->eof || io->pend_end)
		return;
	io->pend_end = what;
	io->mem_new = true;
	/* an end is reported even while reading is paused (a socket's
	 * error event is too): the conn must let go of the stream */
	event_active(&io->rev, EV_READ, 1);
}

void io_mem_writable(struct io *io)
{
	if (!io->open)
		return;
	event_active(&io->wev, EV_WRITE, 1);
}

void io_setcb(struct io *io, io_cb r, io_cb wr, io_event_cb ev, void *arg)
{
	io->readcb = r;
	io->writecb = wr;
	io->eventcb = ev;
	io->arg = arg;
}

void io_read_on(struct io *io, bool on)
{
	io->rd_on = on;
	rd_arm(io);
}

void io_read_update(struct io *io)
{
	rd_arm(io);
}

void io_set_read_high(struct io *io, size_t high)
{
	io->rd_high = high;
	rd_arm(io);
}

void io_set_write_low(struct io *io, size_t low)
{
	io->wr_low = low;
}

bool io_sendfile(struct io *io)
{
	if (io->ssl || io->h2s)
		return false;
	if (!io->sendfile)
		evbuffer_set_flags(io->out, EVBUFFER_FLAG_DRAINS_TO_FD);
	io->sendfile = true;
	return true;
}

void io_keep_buffers(struct io *io, bool keep)
{
	if (!io->ssl)
		return;
	if (keep) {
		SSL_clear_mode(io->ssl, SSL_MODE_RELEASE_BUFFERS);
		return;
	}
	SSL_set_mode(io->ssl, SSL_MODE_RELEASE_BUFFERS);
	if (io->hs_done && !evbuffer_get_length(io->out))
		SSL_free_buffers(io->ssl);   /* 0 (kept) while a record is pending */
}

void io_shutdown_wr(struct io *io)
{
	if (io->h2s)
		return;              /* the stream ends with the response */
	if (io->ssl && io->hs_done && !io->tls_failed) {
		SSL_shutdown(io->ssl);       /* close_notify, if the socket takes it */
		ERR_clear_error();
	}
	shutdown(io->fd, SHUT_WR);
}

void io_reset_on_close(struct io *io)
{
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };
	if (!io->open)
		return;
	io_flush_now(io);
	io->tls_failed = true;       /* no close_notify (memory: RST_STREAM) */
	if (!io->h2s)
		setsockopt(io->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
}

void io_close(struct io *io)
{
	if (!io->open)
		return;
	io->open = false;
	dirty_unlink(io);
	event_del(&io->rev);
	event_del(&io->wev);
	if (io->ssl) {
		if (io->hs_done && !io->tls_failed && !(SSL_get_shutdown(io->ssl) & SSL_SENT_SHUTDOWN)) {
			SSL_shutdown(io->ssl);
			ERR_clear_error();
		}
		SSL_free(io->ssl);
		io->ssl = NULL;
	}
	if (io->h2s)
		h2_stream_closed(io->h2s, io->tls_failed);
	evbuffer_free(io->in);
	evbuffer_free(io->out);
	if (io->fd >= 0)
		close(io->fd);
}
