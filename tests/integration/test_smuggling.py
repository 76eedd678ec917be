"""Security and robustness of the proxy data path (issue 3): malformed and
ambiguous requests, bad upstream responses, slow clients, max_connections,
request bodies that break off. The real pmd on 127.0.0.1 in front of Python
backends (`runtime = external`).

REQUESTS (the first table) go raw to pmd in front of a TCP sink: a backend
that answers only pmd's health checks and records every other byte it
receives. Two kinds of rows:

- "head" rows are refusable from the request head alone. Checked: the exact
  status, `Connection: close` and one answer only, pmd closes the
  connection, and the sink received **zero bytes** (nothing was forwarded,
  not even the head).
- "body" rows have a valid head (so pmd forwards it while the body streams)
  and a bad chunked body. They are sent in two writes: the head and any
  valid body prefix, then — once the sink has the head — the bad part.
  Checked: the exact status (the sink never answers, so pmd still can), pmd
  closes the client connection, pmd closes the upstream connection, and the
  upstream never received the bad bytes, anything after them, or a
  terminating last-chunk (so it never saw a complete request).

RESPONSES (the second table) come from a fake backend that answers each
path with fixed bytes. "502" rows are refusable from the response head:
the client gets a 502 and pmd closes the upstream connection. "cut" rows
fail mid-body, after the head went to the client: the client connection
is cut, and what the client got is not a complete message.
"""
import selectors
import socket
import struct
import threading
import time

import pytest

import pmdtest
from pmdtest import wait_for

HEALTH = b"GET /__health HTTP/1.1\r\n"
HEALTH_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
MAX_BODY = 1024


class Conn:
    """What one backend connection received (health requests excluded)."""

    def __init__(self):
        self.data = bytearray()
        self.closed = threading.Event()   # the peer (pmd) closed or reset it


class Backend:
    """TCP backend on 127.0.0.1: answers `GET /__health` requests at the
    start of a connection, then hands the connection to serve(sock, conn,
    first_bytes) in its own thread. The default serve() is a sink."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.lock = threading.Lock()
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._conn, args=(c,), daemon=True).start()

    def _conn(self, c):
        buf = b""
        try:
            c.settimeout(30)
            while True:
                d = c.recv(65536)
                if not d:
                    return
                buf += d
                while buf.startswith(HEALTH) and b"\r\n\r\n" in buf:
                    buf = buf.split(b"\r\n\r\n", 1)[1]
                    c.sendall(HEALTH_OK)
                if buf and not HEALTH.startswith(buf[:len(HEALTH)]):
                    break
            conn = Conn()
            with self.lock:
                self.conns.append(conn)
            self.serve(c, conn, buf)
        except OSError:
            pass
        finally:
            c.close()

    def serve(self, c, conn, first):
        """Sink: record everything until pmd closes the connection."""
        conn.data += first
        try:
            while True:
                d = c.recv(65536)
                if not d:
                    break
                conn.data += d
        except socket.timeout:
            return
        except OSError:
            pass
        conn.closed.set()

    def snapshot(self):
        with self.lock:
            return len(self.conns)

    def since(self, n):
        with self.lock:
            return self.conns[n:]

    def received(self):
        with self.lock:
            return sum(len(c.data) for c in self.conns)

    def close(self):
        self.stopped = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def start_pmd(tmp_path_factory, backend, name, **proxy):
    tmp = tmp_path_factory.mktemp(name)
    sections = {
        "proxy": {"max_header_bytes": "16k", "max_body_bytes": MAX_BODY,
                  "access_log": False, **proxy},
        "service app": {"runtime": "external", "address": backend.address,
                        "health_path": "/__health", "health_interval": "1s",
                        "healthy_threshold": 1, "unhealthy_threshold": 100},
        "route all": {"prefix": "/", "service": "app"},
    }
    p = pmdtest.Pmd(tmp, sections, name=name).start()
    p.wait_healthy("app", timeout=15)
    return p


@pytest.fixture(scope="module")
def sink_pmd(tmp_path_factory):
    sink = Backend()
    p = start_pmd(tmp_path_factory, sink, "sink", upstream_response_timeout="2s")
    yield p, sink
    try:
        p.stop()
    finally:
        sink.close()


def read_to_eof(s, timeout=5.0):
    """(bytes, how): how is "eof", "reset" or "timeout"."""
    s.settimeout(timeout)
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            d = s.recv(65536)
        except ConnectionResetError:
            return buf, "reset"
        except socket.timeout:
            break
        if not d:
            return buf, "eof"
        buf += d
    return buf, "timeout"


def status_of(data):
    assert data.startswith(b"HTTP/1.1 "), f"not an HTTP answer: {data[:200]!r}"
    return int(data[9:12])


# ---------------------------------------------------------------------------
# Table 1: requests.  (id, bytes, status) for head rows; body rows are
# (id, (first write, second write), status, never): `never` must not reach
# the upstream (a marker placed at or after the error).

H = b"Host: a\r\n"
P = b"POST /t HTTP/1.1\r\n" + H
G = b"GET /t HTTP/1.1\r\n" + H
CH = P + b"Transfer-Encoding: chunked\r\n\r\n"

HEAD_ROWS = [
    # Content-Length and Transfer-Encoding together (CL.TE / TE.CL)
    ("cl-then-te", P + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-then-cl", P + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n", 400),
    ("cl-and-te-gzip", P + b"Content-Length: 4\r\nTransfer-Encoding: gzip\r\n\r\nabcd", 400),
    # Content-Length: differing, repeated, lists, malformed
    ("cl-differing", P + b"Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", 400),
    ("cl-repeated-same", P + b"Content-Length: 4\r\nContent-Length: 4\r\n\r\nabcd", 400),
    ("cl-list-differing", P + b"Content-Length: 1, 2\r\n\r\nab", 400),
    ("cl-list-same", P + b"Content-Length: 4, 4\r\n\r\nabcd", 400),
    ("cl-plus-sign", P + b"Content-Length: +4\r\n\r\nabcd", 400),
    ("cl-negative", P + b"Content-Length: -1\r\n\r\n", 400),
    ("cl-hex", P + b"Content-Length: 0x4\r\n\r\nabcd", 400),
    ("cl-inner-space", P + b"Content-Length: 4 4\r\n\r\nabcd", 400),
    ("cl-decimal-point", P + b"Content-Length: 4.0\r\n\r\nabcd", 400),
    ("cl-empty", P + b"Content-Length:\r\n\r\n", 400),
    ("cl-overflow", P + b"Content-Length: 184467440737095516160\r\n\r\n", 400),
    ("cl-over-max-body", P + b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1), 413),
    ("cl-max-uint64", P + b"Content-Length: 18446744073709551615\r\n\r\n", 413),
    ("cl-space-before-colon", P + b"Content-Length : 4\r\n\r\nabcd", 400),
    ("cl-underscore", P + b"Content_Length: 4\r\n\r\nabcd", 400),   # WSGI reads it as CONTENT_LENGTH
    # Transfer-Encoding other than one final chunked
    ("te-unknown-gzip", P + b"Transfer-Encoding: gzip\r\n\r\n", 501),
    ("te-xchunked", P + b"Transfer-Encoding: xchunked\r\n\r\n", 501),
    ("te-identity", P + b"Transfer-Encoding: identity\r\n\r\n", 501),
    ("te-gzip-then-chunked", P + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("te-chunked-not-last", P + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
    ("te-chunked-not-last-2-fields", P + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n", 400),
    ("te-chunked-twice", P + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-chunked-two-fields", P + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ("te-chunked-semicolon", P + b"Transfer-Encoding: chunked;\r\n\r\n0\r\n\r\n", 400),
    ("te-chunked-param", P + b"Transfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n", 400),
    ("te-trailing-garbage", P + b"Transfer-Encoding: chunked garbage\r\n\r\n0\r\n\r\n", 400),
    ("te-empty", P + b"Transfer-Encoding:\r\n\r\n", 400),
    ("te-underscore", P + b"Transfer_Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-space-before-colon", P + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-tab-before-colon", P + b"Transfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-vertical-tab", P + b"Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n", 400),
    ("te-form-feed-after", P + b"Transfer-Encoding: chunked\x0c\r\n\r\n0\r\n\r\n", 400),
    ("te-obs-fold", P + b"X-A: b\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-http10", b"POST /t HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    # field syntax
    ("obs-fold", G + b"X-A: b\r\n c\r\n\r\n", 400),
    ("space-before-first-header", b"GET /t HTTP/1.1\r\n Host: a\r\n\r\n", 400),
    ("tab-before-first-header", b"GET /t HTTP/1.1\r\n\tHost: a\r\n\r\n", 400),
    ("space-before-colon", G + b"X-A : b\r\n\r\n", 400),
    ("bare-cr-in-value", G + b"X-A: b\rc\r\n\r\n", 400),
    ("bare-cr-line-end", G + b"X-A: b\r\r\n\r\n", 400),
    ("bare-lf-line-end", G + b"X-A: b\nX-B: c\r\n\r\n", 400),
    ("bare-lf-everywhere", b"GET /t HTTP/1.1\nHost: a\n\n", 400),
    ("bare-lf-end-of-head", G + b"\n", 400),
    ("nul-in-value", G + b"X-A: b\x00c\r\n\r\n", 400),
    ("ctl-in-value", G + b"X-A: b\x01c\r\n\r\n", 400),
    ("del-in-value", G + b"X-A: b\x7fc\r\n\r\n", 400),
    ("esc-in-value", G + b"X-A: \x1b[31m\r\n\r\n", 400),
    ("name-non-token", G + b"X(A): b\r\n\r\n", 400),
    ("name-at-sign", G + b"X@A: b\r\n\r\n", 400),
    ("name-obs-text", G + b"X-\xe9: b\r\n\r\n", 400),
    ("name-empty", G + b": b\r\n\r\n", 400),
    ("name-nul", G + b"X\x00A: b\r\n\r\n", 400),
    ("no-colon", G + b"X-A b\r\n\r\n", 400),
    # Host
    ("host-missing", b"GET /t HTTP/1.1\r\nX-A: b\r\n\r\n", 400),
    ("host-repeated", G + H + b"\r\n", 400),
    ("host-repeated-differing", G + b"Host: b\r\n\r\n", 400),
    ("host-empty", b"GET /t HTTP/1.1\r\nHost:\r\n\r\n", 400),
    ("host-with-space", b"GET /t HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    ("host-userinfo", b"GET /t HTTP/1.1\r\nHost: u@a\r\n\r\n", 400),
    ("host-bad-port", b"GET /t HTTP/1.1\r\nHost: a:80x\r\n\r\n", 400),
    ("host-list", b"GET /t HTTP/1.1\r\nHost: a, b\r\n\r\n", 400),
    ("absolute-form-other-host", b"GET http://b/t HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("absolute-form-empty-authority", b"GET http:///t HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("absolute-form-userinfo", b"GET http://a@b/t HTTP/1.1\r\nHost: a@b\r\n\r\n", 400),
    ("target-relative", b"GET t HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("asterisk-form-get", b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    # request-line: method, target, version
    ("method-non-token", b"G(T /t HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("method-empty", b" /t HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("connect", b"CONNECT a:443 HTTP/1.1\r\n" + H + b"\r\n", 501),
    ("leading-crlf", b"\r\n" + G + b"\r\n", 400),
    ("double-space", b"GET  /t HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("tab-separator", b"GET\t/t HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("space-in-target", b"GET /t x HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("nul-in-target", b"GET /t\x00 HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("obs-text-in-target", b"GET /t\xff HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("http-0.9", b"GET /t\r\n\r\n", 400),
    ("version-lowercase", b"GET /t http/1.1\r\n" + H + b"\r\n", 400),
    ("version-1.10", b"GET /t HTTP/1.10\r\n" + H + b"\r\n", 400),
    ("version-no-minor", b"GET /t HTTP/1\r\n" + H + b"\r\n", 400),
    ("version-trailing-space", b"GET /t HTTP/1.1 \r\n" + H + b"\r\n", 400),
    ("version-1.2", b"GET /t HTTP/1.2\r\n" + H + b"\r\n", 505),
    ("version-2.0", b"GET /t HTTP/2.0\r\n" + H + b"\r\n", 505),
    ("version-0.9", b"GET /t HTTP/0.9\r\n" + H + b"\r\n", 505),
    ("bad-connection-list", G + b"Connection: close;\r\n\r\n", 400),
    ("expect-unknown", P + b"Expect: 200-ok\r\nContent-Length: 1\r\n\r\nx", 417),
    # limits
    ("request-line-over-8k", b"GET /" + b"a" * 8200 + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
    ("head-over-max-header-bytes", G + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(20))
     + b"\r\n", 431),
    ("over-100-fields", G + b"".join(b"X-%d: v\r\n" % i for i in range(100)) + b"\r\n", 431),
]

BODY_ROWS = [
    # (id, (head + valid prefix, bad part), status, never)
    ("chunk-size-0x", (CH, b"0x10\r\n" + b"A" * 16 + b"\r\n0\r\n\r\n"), 400, b"0x10"),
    ("chunk-size-negative", (CH, b"-1\r\nSMUGGLED\r\n0\r\n\r\n"), 400, b"SMUGGLED"),
    ("chunk-size-leading-space", (CH, b" 5\r\nhello\r\n0\r\n\r\n"), 400, b"hello"),
    ("chunk-size-empty", (CH, b"\r\nSMUGGLED\r\n0\r\n\r\n"), 400, b"SMUGGLED"),
    ("chunk-size-non-hex", (CH, b"5z\r\nhello\r\n0\r\n\r\n"), 400, b"hello"),
    ("chunk-size-overflow", (CH, b"10000000000000005\r\nhello\r\n0\r\n\r\n"), 400, b"hello"),
    ("chunk-size-over-max-body", (CH, b"%x\r\n" % (MAX_BODY + 1) + b"SMUGGLED"), 413, b"SMUGGLED"),
    ("chunks-total-over-max-body", (CH + b"200\r\n" + b"a" * 0x200 + b"\r\n",
                                    b"201\r\n" + b"SMUGGLED" * 64 + b"\r\n0\r\n\r\n"), 413, b"SMUGGLED"),
    ("chunk-ext-empty-value", (CH, b"5;ext=\r\nhello\r\n0\r\n\r\n"), 400, b"hello"),
    ("chunk-ext-bare-semicolon", (CH, b"5;\r\nhello\r\n0\r\n\r\n"), 400, b"hello"),
    ("chunk-ext-unterminated-quote", (CH, b'5;a="b\r\nhello\r\n0\r\n\r\n'), 400, b"hello"),
    ("chunk-ext-ctl", (CH, b"5;a\x01\r\nhello\r\n0\r\n\r\n"), 400, b"hello"),
    ("chunk-line-bare-lf", (CH, b"5\nhello\r\n0\r\n\r\n"), 400, b"hello"),
    ("chunk-line-bare-cr", (CH, b"5\rhello\r\n0\r\n\r\n"), 400, b"hello"),
    ("chunk-data-no-crlf", (CH + b"5\r\nhello", b"XXGET /SMUGGLED HTTP/1.1\r\nHost: a\r\n\r\n"),
     400, b"SMUGGLED"),
    ("chunk-data-bare-lf", (CH + b"5\r\nhello", b"\n0\r\n\r\nGET /SMUGGLED HTTP/1.1\r\n\r\n"),
     400, b"SMUGGLED"),
    ("chunk-data-too-long", (CH + b"3\r\nabc", b"def\r\n0\r\n\r\n"), 400, b"def"),
    ("last-chunk-bare-lf", (CH, b"0\n\n"), 400, None),
    ("trailer-obs-fold", (CH + b"5\r\nhello\r\n", b"0\r\nX-T: a\r\n b\r\n\r\n"), 400, None),
    ("trailer-nul", (CH + b"5\r\nhello\r\n", b"0\r\nX-T: a\x00b\r\n\r\n"), 400, None),
    ("trailer-space-before-colon", (CH + b"5\r\nhello\r\n", b"0\r\nX-T : a\r\n\r\n"), 400, None),
    ("trailer-bare-lf", (CH + b"5\r\nhello\r\n", b"0\r\nX-T: a\n\r\n"), 400, None),
]


def send_rows(port, parts, sink, n0):
    """Send `parts` on a new connection (the second write once the sink
    has a forwarded head); return (answer, how)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(parts[0])
        if len(parts) > 1:
            wait_for(lambda: any(b"\r\n\r\n" in c.data for c in sink.since(n0)), timeout=5,
                     what="the request head at the sink")
            s.sendall(parts[1])
        return read_to_eof(s)
    finally:
        s.close()


def check_answer(data, how, status):
    assert how == "eof", f"pmd did not close the connection ({how}); got {data[:300]!r}"
    assert status_of(data) == status, data[:300]
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"\r\nConnection: close\r\n" in head + b"\r\n", head
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    assert len(body) == length, "more than one answer, or a truncated one"
    assert b"%d" % status in body, body      # the body says which error


@pytest.mark.parametrize("rid,raw,status", HEAD_ROWS, ids=[r[0] for r in HEAD_ROWS])
def test_bad_request_head_refused_nothing_forwarded(sink_pmd, rid, raw, status):
    p, sink = sink_pmd
    n0 = sink.snapshot()
    before = sink.received()
    data, how = send_rows(p.http_port, (raw,), sink, n0)
    check_answer(data, how, status)
    time.sleep(0.05)    # anything forwarded would have been written before the answer
    assert sink.received() == before, f"the backend received bytes: {[bytes(c.data) for c in sink.since(n0)]}"
    assert sink.snapshot() == n0, "pmd opened an upstream connection and sent on it"


@pytest.mark.parametrize("rid,parts,status,never", BODY_ROWS, ids=[r[0] for r in BODY_ROWS])
def test_bad_request_body_cut_upstream(sink_pmd, rid, parts, status, never):
    p, sink = sink_pmd
    n0 = sink.snapshot()
    data, how = send_rows(p.http_port, parts, sink, n0)
    check_answer(data, how, status)
    ups = sink.since(n0)
    assert len(ups) == 1, f"expected one upstream connection, got {len(ups)}"
    up = ups[0]
    assert up.closed.wait(3), "pmd kept the upstream connection open"
    head, _, body = bytes(up.data).partition(b"\r\n\r\n")
    assert head.startswith(b"POST /t HTTP/1.1\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert not body.endswith(b"0\r\n\r\n"), f"the upstream got a complete body: {body[-100:]!r}"
    if never is not None:
        assert never not in body, f"the bad bytes reached the upstream: {body[-200:]!r}"


def test_valid_requests_reach_the_sink(sink_pmd):
    """The control row: the same sink does receive what is valid (so the
    zero-byte assertions above can fail)."""
    p, sink = sink_pmd
    n0 = sink.snapshot()
    s = socket.create_connection(("127.0.0.1", p.http_port), timeout=5)
    s.sendall(P + b"Content-Length: 007\r\n\r\nabcdefg")   # leading zeros are decimal
    wait_for(lambda: any(c.data.endswith(b"abcdefg") for c in sink.since(n0)), timeout=5,
             what="a valid request at the sink")
    up = sink.since(n0)[0]
    assert b"Content-Length: 007\r\n" in up.data or b"Content-Length: 7\r\n" in up.data
    data, how = read_to_eof(s)                 # the sink never answers
    s.close()
    assert status_of(data) == 504, data[:200]
    assert up.closed.wait(3)


def test_request_hidden_in_a_body_is_not_a_request(tmp_path_factory):
    """GET with Content-Length: 5 and a second request after it: the five
    bytes are the first request's body, the rest is parsed by pmd (and
    refused), never passed through as a request of its own."""
    with pmdtest.BackendServer() as b:
        b.routes["/__health"] = lambda rec: (200, {"ok": True})
        sink = type("A", (), {"address": b.address})
        p = start_pmd(tmp_path_factory, sink, "hidden")
        try:
            s = socket.create_connection(("127.0.0.1", p.http_port), timeout=5)
            s.sendall(b"GET /first HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"
                      b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
            data, how = read_to_eof(s)
            s.close()
            assert how == "eof"
            assert data.startswith(b"HTTP/1.1 200"), data[:200]
            second = data[data.index(b"HTTP/1.1 ", 9):]
            assert status_of(second) == 400, second
            reqs = [r for r in b.requests if r["path"] != "/__health"]
            assert [(r["path"], r["body"]) for r in reqs] == [("/first", b"GET /")]
        finally:
            p.stop()


# ---------------------------------------------------------------------------
# Table 2: upstream responses, one path each on a fake backend.

class FakeUpstream(Backend):
    """Answers GET /r/ID with RESPONSES[ID]; records whether pmd closed the
    connection afterwards (`closed` of its Conn)."""

    def __init__(self, rows):
        self.rows = {r[0]: r for r in rows}
        self.by_id = {}
        super().__init__()

    def serve(self, c, conn, first):
        buf = first
        while b"\r\n\r\n" not in buf:
            d = c.recv(65536)
            if not d:
                return
            buf += d
        rid = buf.split(b" ", 2)[1].decode().rsplit("/", 1)[1]
        conn.data += buf
        self.by_id[rid] = conn
        _, resp, _, upstream_closes = self.rows[rid]
        try:
            c.sendall(resp)
            if upstream_closes:
                c.shutdown(socket.SHUT_WR)
            c.settimeout(10)
            while c.recv(65536):
                pass
        except socket.timeout:
            return                      # pmd kept it open
        except OSError:
            pass
        conn.closed.set()


def complete(data):
    """Whether data holds one complete response (by its own framing)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    lines = head.lower().split(b"\r\n")
    cl = [ln.split(b":", 1)[1].strip() for ln in lines if ln.startswith(b"content-length:")]
    if cl:
        return len(body) >= int(cl[0])
    if any(ln.startswith(b"transfer-encoding:") and b"chunked" in ln for ln in lines):
        while True:
            line, sep, body = body.partition(b"\r\n")
            if not sep:
                return False
            try:
                n = int(line.split(b";")[0], 16)
            except ValueError:
                return False
            if n == 0:
                return body.startswith(b"\r\n")
            if len(body) < n + 2 or body[n:n + 2] != b"\r\n":
                return False
            body = body[n + 2:]
    return True


OK = b"HTTP/1.1 200 OK\r\n"
BIG = b"X-Big: " + b"b" * 8000 + b"\r\n"

RESPONSE_ROWS = [
    # (id, response bytes, expect "502" | "cut", the upstream closes itself)
    ("cl-and-te", OK + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "502", False),
    ("te-and-cl", OK + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", "502", False),
    ("cl-differing", OK + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\nabc", "502", False),
    ("cl-repeated", OK + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\nab", "502", False),
    ("cl-list", OK + b"Content-Length: 2, 2\r\n\r\nab", "502", False),
    ("cl-negative", OK + b"Content-Length: -1\r\n\r\n", "502", False),
    ("cl-plus", OK + b"Content-Length: +2\r\n\r\nab", "502", False),
    ("cl-hex", OK + b"Content-Length: 0x2\r\n\r\nab", "502", False),
    ("te-chunked-twice", OK + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", "502", False),
    ("te-in-http10", b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "502", False),
    ("status-4-digits", b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", "502", False),
    ("status-2-digits", b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n", "502", False),
    ("status-out-of-range", b"HTTP/1.1 099 X\r\nContent-Length: 0\r\n\r\n", "502", False),
    ("status-letters", b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n", "502", False),
    ("status-no-version", b"200 OK\r\nContent-Length: 0\r\n\r\n", "502", False),
    ("status-garbage", b"garbage\r\n\r\n", "502", False),
    ("status-http2", b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", "502", False),
    ("status-http2-short", b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n", "502", False),
    ("status-http0.9", b"<html>hello</html>", "502", True),
    ("status-bare-lf", b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", "502", False),
    ("header-nul", OK + b"X-A: a\x00b\r\nContent-Length: 0\r\n\r\n", "502", False),
    ("header-ctl", OK + b"X-A: a\x01b\r\nContent-Length: 0\r\n\r\n", "502", False),
    ("header-bare-cr", OK + b"X-A: a\rb\r\nContent-Length: 0\r\n\r\n", "502", False),
    ("header-obs-fold", OK + b"X-A: a\r\n b\r\nContent-Length: 0\r\n\r\n", "502", False),
    ("header-space-before-colon", OK + b"Content-Length : 0\r\n\r\n", "502", False),
    ("header-space-before-first", OK + b" X-A: a\r\nContent-Length: 0\r\n\r\n", "502", False),
    ("header-name-non-token", OK + b"X(A): a\r\nContent-Length: 0\r\n\r\n", "502", False),
    ("head-too-large", OK + BIG * 9 + b"Content-Length: 0\r\n\r\n", "502", False),
    ("101-without-upgrade", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", "502", False),
    ("closed-before-answer", b"", "502", True),
    ("closed-mid-head", OK + b"Content-Len", "502", True),
    # failures after the head went to the client
    ("closed-mid-body-cl", OK + b"Content-Length: 100\r\n\r\n" + b"x" * 10, "cut", True),
    ("closed-mid-body-chunked", OK + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", "cut", True),
    ("closed-mid-chunk", OK + b"Transfer-Encoding: chunked\r\n\r\n10\r\nhello", "cut", True),
    ("bad-chunk-size", OK + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", "cut", False),
    ("bad-chunk-size-later", OK + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n-1\r\n0\r\n\r\n",
     "cut", False),
    ("chunk-size-0x", OK + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", "cut", False),
    ("chunk-no-crlf", OK + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", "cut", False),
    ("chunk-bad-ext", OK + b"Transfer-Encoding: chunked\r\n\r\n5;=\r\nhello\r\n0\r\n\r\n", "cut", False),
    ("chunk-overflow", OK + b"Transfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n",
     "cut", False),
    ("bad-trailer", OK + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX: a\r\n b\r\n\r\n",
     "cut", False),
]


@pytest.fixture(scope="module")
def fake_pmd(tmp_path_factory):
    up = FakeUpstream(RESPONSE_ROWS)
    p = start_pmd(tmp_path_factory, up, "fake", upstream_response_timeout="5s")
    yield p, up
    try:
        p.stop()
    finally:
        up.close()


@pytest.mark.parametrize("rid,resp,expect,up_closes", RESPONSE_ROWS, ids=[r[0] for r in RESPONSE_ROWS])
def test_bad_upstream_response(fake_pmd, rid, resp, expect, up_closes):
    p, up = fake_pmd
    s = socket.create_connection(("127.0.0.1", p.http_port), timeout=5)
    s.sendall(b"GET /r/%s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % rid.encode())
    data, how = read_to_eof(s, timeout=8)
    s.close()
    assert how in ("eof", "reset"), f"pmd did not close the client connection: {data[:300]!r}"
    if expect == "502":
        assert status_of(data) == 502, data[:300]
        assert b"502 Bad Gateway: upstream" in data
    else:
        assert status_of(data) == 200, data[:300]
        assert not complete(data), f"a cut response looks complete: {data[:300]!r}"
    conn = wait_for(lambda: up.by_id.get(rid), timeout=5, what="the request at the fake upstream")
    if not up_closes:
        assert conn.closed.wait(3), "pmd kept the upstream connection open"


# Response splitting: an upstream that sends more than its framing says.
# The extra bytes must never become the answer to the client's next
# request (pmd does not reuse an upstream connection with unread bytes).
SPLIT = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED"
SPLIT_ROWS = [
    ("extra-after-cl", b"GET", OK + b"Content-Length: 2\r\n\r\nok" + SPLIT),
    ("body-after-204", b"GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 8\r\n\r\n" + SPLIT),
    ("body-after-304", b"GET", b"HTTP/1.1 304 Not Modified\r\n\r\n" + SPLIT),
    ("body-after-head", b"HEAD", OK + b"Content-Length: 2\r\n\r\n" + SPLIT),
    ("extra-after-chunked", b"GET", OK + b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n" + SPLIT),
]


class SplitUpstream(Backend):
    """Keep-alive backend: /s/ID answers with SPLIT_ROWS[ID] (in one
    write), /plain with "plain"."""

    def serve(self, c, conn, first):
        buf = first
        rows = {r[0]: r[2] for r in SPLIT_ROWS}
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                head, _, buf = buf.partition(b"\r\n\r\n")
                conn.data += head + b"\r\n\r\n"
                path = head.split(b" ", 2)[1].decode()
                if path == "/plain":
                    c.sendall(OK + b"Content-Length: 5\r\n\r\nplain")
                else:
                    c.sendall(rows[path.rsplit("/", 1)[1]])
        except OSError:
            pass
        finally:
            conn.closed.set()


@pytest.fixture(scope="module")
def split_pmd(tmp_path_factory):
    up = SplitUpstream()
    p = start_pmd(tmp_path_factory, up, "split")
    yield p, up
    try:
        p.stop()
    finally:
        up.close()


@pytest.mark.parametrize("rid,method,resp", SPLIT_ROWS, ids=[r[0] for r in SPLIT_ROWS])
def test_extra_upstream_bytes_never_answer_the_next_request(split_pmd, rid, method, resp):
    p, up = split_pmd
    s = socket.create_connection(("127.0.0.1", p.http_port), timeout=5)
    s.sendall(b"%s /s/%s HTTP/1.1\r\nHost: a\r\n\r\n" % (method, rid.encode()))
    time.sleep(0.3)                      # the extra bytes are at pmd by now
    s.sendall(b"GET /plain HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    data, how = read_to_eof(s)
    s.close()
    assert how == "eof", (how, data)
    assert b"SMUGGLED" not in data, data
    assert data.endswith(b"\r\n\r\nplain"), data
    assert data.count(b"HTTP/1.1 ") == 2, data


# Responses whose end the client can only see as the connection closing
# (a read-until-close body, or chunked re-framed for an HTTP/1.0 client):
# when the upstream fails mid-body, a clean close would pass the truncated
# body off as complete, so pmd resets the client connection instead.
# (id, response bytes, how the upstream ends: "fin" | "rst", client
# HTTP minor version, what the client sees: "eof" | "reset")
CLOSE_ROWS = [
    ("close-framed-ends-with-fin", OK + b"\r\nall of it", "fin", 1, "eof"),
    ("close-framed-ends-with-rst", OK + b"\r\npart of it", "rst", 1, "reset"),
    ("http10-chunked-complete", OK + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
     "fin", 0, "eof"),
    ("http10-chunked-closed-mid-body", OK + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
     "fin", 0, "reset"),
    ("http10-chunked-bad-chunk", OK + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
     "fin", 0, "reset"),
    ("http10-cl-closed-mid-body", OK + b"Content-Length: 100\r\n\r\nhello", "fin", 0, "eof"),
]


class CloseUpstream(Backend):
    def __init__(self):
        self.rows = {r[0]: r for r in CLOSE_ROWS}
        super().__init__()

    def serve(self, c, conn, first):
        buf = first
        while b"\r\n\r\n" not in buf:
            d = c.recv(65536)
            if not d:
                return
            buf += d
        rid = buf.split(b" ", 2)[1].decode().rsplit("/", 1)[1]
        _, resp, end, _, _ = self.rows[rid]
        c.sendall(resp)
        time.sleep(0.2)                 # the client has the partial body by now
        if end == "rst":
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.closed.set()


@pytest.mark.parametrize("rid,resp,end,minor,expect", CLOSE_ROWS, ids=[r[0] for r in CLOSE_ROWS])
def test_close_framed_response_failure_resets_client(tmp_path_factory, rid, resp, end, minor, expect):
    up = CloseUpstream()
    p = start_pmd(tmp_path_factory, up, "closeframed")
    try:
        s = socket.create_connection(("127.0.0.1", p.http_port), timeout=5)
        s.sendall(b"GET /c/%s HTTP/1.%d\r\nHost: a\r\n\r\n" % (rid.encode(), minor))
        time.sleep(0.5)                 # let the answer arrive before reading it
        data, how = read_to_eof(s)
        s.close()
        assert how == expect, (how, data[:300])
        if expect == "eof" and rid != "http10-cl-closed-mid-body":
            assert data.endswith(b"all of it") or data.endswith(b"abc"), data
    finally:
        p.stop()
        up.close()


# ---------------------------------------------------------------------------
# Slow clients, max_connections, a request body that breaks off.

def test_slow_clients_get_408_and_do_not_delay_others(tmp_path_factory):
    """200 connections trickle a request head a byte every 0.5 s: a normal
    client is answered promptly meanwhile, and every trickler gets a 408
    at client_header_timeout (2 s) although it keeps sending."""
    with pmdtest.BackendServer() as b:
        b.routes["/__health"] = lambda rec: (200, {"ok": True})
        up = type("A", (), {"address": b.address})
        p = start_pmd(tmp_path_factory, up, "slow", client_header_timeout="2s")
        try:
            n, head = 200, b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * 64
            sel = selectors.DefaultSelector()
            socks = []
            t0 = time.monotonic()
            for i in range(n):
                s = socket.create_connection(("127.0.0.1", p.http_port), timeout=5)
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ, i)
                socks.append(s)
            got = [b""] * n
            done = [None] * n           # time of EOF, from t0
            sent = 0
            normal = None
            next_byte = time.monotonic()
            while None in done and time.monotonic() - t0 < 8:
                now = time.monotonic()
                if now >= next_byte and sent < len(head):
                    for i, s in enumerate(socks):
                        if done[i] is None:
                            try:
                                s.send(head[sent:sent + 1])
                            except OSError:
                                pass
                    sent += 1
                    next_byte = now + 0.5
                if normal is None and now - t0 > 1.0:
                    t1 = time.monotonic()
                    r = pmdtest.http_request(p.http_port, "/normal", timeout=5)
                    normal = (r.status, time.monotonic() - t1)
                for key, _ in sel.select(timeout=0.05):
                    i = key.data
                    try:
                        d = key.fileobj.recv(65536)
                    except ConnectionResetError:
                        d = b""
                    if d:
                        got[i] += d
                    else:
                        done[i] = time.monotonic() - t0
                        sel.unregister(key.fileobj)
            for s in socks:
                s.close()
            assert normal is not None and normal[0] == 200
            assert normal[1] < 1.0, f"a normal request took {normal[1]:.2f}s among the slow ones"
            assert all(d is not None for d in done), f"{done.count(None)} slow connections left open"
            assert all(g.startswith(b"HTTP/1.1 408 ") for g in got), \
                [g[:40] for g in got if not g.startswith(b"HTTP/1.1 408 ")][:5]
            assert min(done) >= 1.8, f"closed early at {min(done):.2f}s"
            assert max(done) < 4.5, f"closed late at {max(done):.2f}s"
            assert sent >= 4, "the slow clients were still sending when cut"
        finally:
            p.stop()


def test_max_connections_pauses_accepting(tmp_path_factory):
    """max_connections = 20: with 20 open, the 21st is not served until one
    closes; the control socket keeps working meanwhile."""
    with pmdtest.BackendServer() as b:
        b.routes["/__health"] = lambda rec: (200, {"ok": True})
        up = type("A", (), {"address": b.address})
        p = start_pmd(tmp_path_factory, up, "cap", max_connections=20, workers=2)
        try:
            idle = [socket.create_connection(("127.0.0.1", p.http_port), timeout=5) for _ in range(20)]
            wait_for(lambda: p.status()["proxy"]["connections"] == 20, timeout=5,
                     what="20 connections accepted")
            time.sleep(0.2)
            extra = socket.create_connection(("127.0.0.1", p.http_port), timeout=5)  # kernel backlog
            extra.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            extra.settimeout(1.5)
            with pytest.raises(socket.timeout):
                extra.recv(1)
            st = p.status()                       # control socket still answers
            assert st["proxy"]["connections"] == 20
            r = p.pmctl("status")
            assert r.returncode == 0, r.stderr
            idle.pop().close()
            data, how = read_to_eof(extra, timeout=5)
            assert how == "eof" and data.startswith(b"HTTP/1.1 200"), (how, data[:200])
            extra.close()
            for s in idle:
                s.close()
        finally:
            p.stop()


def test_chunked_request_body_breaking_off(tmp_path_factory):
    """The client sends half a chunked body and closes: pmd closes the
    upstream connection (which saw no last-chunk) and forwards nothing
    more on it; the next request goes on a fresh upstream connection."""
    sink = Backend()
    p = start_pmd(tmp_path_factory, sink, "breakoff")
    try:
        n0 = sink.snapshot()
        s = socket.create_connection(("127.0.0.1", p.http_port), timeout=5)
        s.sendall(CH + b"10\r\n0123456789")        # 10 of 16 bytes of the first chunk
        wait_for(lambda: any(b"0123456789" in c.data for c in sink.since(n0)), timeout=5,
                 what="the partial body at the upstream")
        s.close()
        up = sink.since(n0)[0]
        assert up.closed.wait(3), "pmd kept the upstream connection of a broken-off request"
        body = bytes(up.data).partition(b"\r\n\r\n")[2]
        assert body == b"a\r\n0123456789\r\n", body     # re-framed as it came, no last-chunk
        # Half-close variant: shutdown(SHUT_WR) mid-body is the same.
        n1 = sink.snapshot()
        s = socket.create_connection(("127.0.0.1", p.http_port), timeout=5)
        s.sendall(CH + b"10\r\nabcdef")
        wait_for(lambda: any(b"abcdef" in c.data for c in sink.since(n1)), timeout=5,
                 what="the partial body at the upstream")
        s.shutdown(socket.SHUT_WR)
        data, how = read_to_eof(s)
        s.close()
        assert how in ("eof", "reset")
        assert not data.startswith(b"HTTP/1.1 2"), data[:200]
        up2 = sink.since(n1)[0]
        assert up2.closed.wait(3)
        assert up2 is not up
        body2 = bytes(up2.data).partition(b"\r\n\r\n")[2]
        assert body2 == b"6\r\nabcdef\r\n", body2
        # Nothing further arrived on the first upstream connection.
        assert bytes(up.data).count(b"HTTP/1.1\r\n") == 1
    finally:
        p.stop()
        sink.close()
