/* io — sockets of the proxy data path (see proxy_int.h for the contract).
 *
 * Why not bufferevent_socket for plain TCP: it asks the kernel how much is
 * readable (ioctl FIONREAD) before every read and arms EV_WRITE
 * (epoll_ctl) for every response, then disarms it: four syscalls per
 * request that a speculative write and a fixed-size read avoid. */
#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/ssl.h>

#include "proxy_int.h"

#define READ_SIZE 16384

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
	if (io->dirty)
		return;
	io->dirty = true;
	io->dprev = NULL;
	io->dnext = io->w->dirty;
	if (io->w->dirty)
		io->w->dirty->dprev = io;
	io->w->dirty = io;
}

static void out_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
	(void)buf;
	if (info->n_added)
		dirty_push(arg);
}

static void rd_arm(struct io *io)
{
	bool want = io->rd_on && !io->eof && !io->connecting &&
		!(io->rd_high && evbuffer_get_length(io->in) >= io->rd_high);
	if (want && !io->rd_added)
		event_add(&io->rev, NULL);
	else if (!want && io->rd_added)
		event_del(&io->rev);
	io->rd_added = want;
}

static void wr_arm(struct io *io, bool want)
{
	if (want && !io->wr_added)
		event_add(&io->wev, NULL);
	else if (!want && io->wr_added)
		event_del(&io->wev);
	io->wr_added = want;
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
	int n = evbuffer_write(io->out, io->fd);
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

void worker_flush(struct worker *w)
{
	while (w->dirty) {
		struct io *io = w->dirty;
		dirty_unlink(io);
		io_write_out(io, true);
	}
}

void io_flush_now(struct io *io)
{
	if (io->bev)
		return;
	dirty_unlink(io);
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

int io_init_plain(struct io *io, struct worker *w, int fd, bool connecting)
{
	io->w = w;
	io->fd = fd;
	io->bev = NULL;
	io->in = evbuffer_new();
	io->out = evbuffer_new();
	if (!io->in || !io->out || !evbuffer_add_cb(io->out, out_cb, io) ||
	    event_assign(&io->rev, w->base, fd, EV_READ | EV_PERSIST, on_read, io) < 0 ||
	    event_assign(&io->wev, w->base, fd, EV_WRITE | EV_PERSIST, on_write, io) < 0) {
		if (io->in)
			evbuffer_free(io->in);
		if (io->out)
			evbuffer_free(io->out);
		io->in = io->out = NULL;
		return -1;
	}
	io->open = true;
	io->connecting = connecting;
	if (connecting)
		wr_arm(io, true);
	return 0;
}

static void tls_read(struct bufferevent *bev, void *arg)
{
	(void)bev;
	struct io *io = arg;
	struct worker *w = io->w;
	io->readcb(io, io->arg);
	worker_flush(w);
}

static void tls_write(struct bufferevent *bev, void *arg)
{
	(void)bev;
	struct io *io = arg;
	struct worker *w = io->w;
	if (io->writecb)
		io->writecb(io, io->arg);
	worker_flush(w);
}

static void tls_event(struct bufferevent *bev, short what, void *arg)
{
	(void)bev;
	struct io *io = arg;
	struct worker *w = io->w;
	io->eventcb(io, what, io->arg);
	worker_flush(w);
}

int io_init_tls(struct io *io, struct worker *w, int fd, void *ssl)
{
	io->w = w;
	io->fd = fd;
	io->bev = bufferevent_openssl_socket_new(w->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
		BEV_OPT_CLOSE_ON_FREE);
	if (!io->bev)
		return -1;
	bufferevent_openssl_set_allow_dirty_shutdown(io->bev, 1);
	io->in = bufferevent_get_input(io->bev);
	io->out = bufferevent_get_output(io->bev);
	io->open = true;
	bufferevent_setcb(io->bev, tls_read, tls_write, tls_event, io);
	bufferevent_enable(io->bev, EV_WRITE);
	return 0;
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
	if (io->bev) {
		if (on)
			bufferevent_enable(io->bev, EV_READ);
		else
			bufferevent_disable(io->bev, EV_READ);
		return;
	}
	rd_arm(io);
}

void io_read_update(struct io *io)
{
	if (!io->bev)
		rd_arm(io);
}

void io_set_read_high(struct io *io, size_t high)
{
	io->rd_high = high;
	if (io->bev)
		bufferevent_setwatermark(io->bev, EV_READ, 0, high);
	else
		rd_arm(io);
}

void io_set_write_low(struct io *io, size_t low)
{
	io->wr_low = low;
	if (io->bev)
		bufferevent_setwatermark(io->bev, EV_WRITE, low, 0);
}

void io_shutdown_wr(struct io *io)
{
	if (!io->bev)
		shutdown(io->fd, SHUT_WR);
}

void io_reset_on_close(struct io *io)
{
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };
	if (!io->open)
		return;
	io_flush_now(io);
	setsockopt(io->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
}

void io_close(struct io *io)
{
	if (!io->open)
		return;
	io->open = false;
	dirty_unlink(io);
	if (io->bev) {
		bufferevent_free(io->bev);
		io->bev = NULL;
		return;
	}
	event_del(&io->rev);
	event_del(&io->wev);
	evbuffer_free(io->in);
	evbuffer_free(io->out);
	close(io->fd);
}
