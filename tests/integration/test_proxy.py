"""The proxy data path end to end: the real pmd in front of Python backends
(`runtime = external`), real sockets on 127.0.0.1.

Covers routing by prefix, keep-alive on both sides, chunked request bodies,
streaming and server-sent events, pipelining, WebSocket through a 101,
Expect: 100-continue, 503 after hold_timeout, 502 on a refused upstream,
504 on a slow one, X-Forwarded-* / X-Request-Id and hop-by-hop removal.
"""
import base64
import hashlib
import socket
import threading
import time

import pytest

import pmdtest
from pmdtest import http_request, wait_for


def svc(address, **kw):
    d = {"runtime": "external", "address": address, "health_path": "/api/v1/health/",
         "health_interval": "1s", "healthy_threshold": 1, "unhealthy_threshold": 100}
    d.update(kw)
    return d


def start_pmd(pmd_factory, routes, services, **proxy):
    """routes: [(name, prefix, service)]; services: {name: address}."""
    sections = {"proxy": dict(proxy)}
    for name, addr in services.items():
        sections[f"service {name}"] = svc(addr)
    for name, prefix, service in routes:
        sections[f"route {name}"] = {"prefix": prefix, "service": service}
    return pmd_factory(sections)


def wait_routed(p, path="/"):
    wait_for(lambda: http_request(p.http_port, path, timeout=3).status == 200, timeout=15,
             what=f"pmd routing {path}")


def recv_until(sock, marker, limit=1 << 20, timeout=5.0):
    sock.settimeout(timeout)
    buf = b""
    while marker not in buf:
        d = sock.recv(65536)
        if not d:
            break
        buf += d
        assert len(buf) < limit
    return buf


def recv_all(sock, timeout=5.0):
    sock.settimeout(timeout)
    buf = b""
    while True:
        d = sock.recv(65536)
        if not d:
            return buf
        buf += d


class RawServer:
    """A TCP server on 127.0.0.1 that answers the health check itself and
    hands every other connection (with the request head already read) to
    handler(sock, head) in a thread."""

    def __init__(self, handler):
        self.handler = handler
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._loop, daemon=True).start()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def _loop(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            while True:
                head = recv_until(c, b"\r\n\r\n", timeout=30)
                if not head:
                    return
                if head.startswith(b"GET /api/v1/health/"):
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    continue
                self.handler(c, head)
                return
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self.sock.close()


@pytest.fixture
def raw_server():
    made = []

    def make(handler):
        s = RawServer(handler)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


def test_routing_by_prefix(pmd_factory):
    with pmdtest.BackendServer("api") as api, pmdtest.BackendServer("web") as web:
        p = start_pmd(pmd_factory, [("api", "/api/", "api"), ("web", "/", "web")],
                      {"api": api.address, "web": web.address})
        wait_routed(p, "/api/v1/x")
        wait_routed(p, "/")
        assert http_request(p.http_port, "/api/v1/items").json()["name"] == "api"
        assert http_request(p.http_port, "/apix").json()["name"] == "web"
        assert http_request(p.http_port, "/index.html").json()["name"] == "web"


def test_prefix_with_slash_redirects_the_bare_path(pmd_factory):
    """A route "/admin/" beside an SPA at "/": "/admin" is sent to
    "/admin/" with a 308 (query kept), as nginx does for a location ending
    in "/"; "/administrator" and a route written without the slash are plain
    prefixes."""
    with pmdtest.BackendServer("admin") as admin, pmdtest.BackendServer("spa") as spa, \
            pmdtest.BackendServer("api") as api:
        p = start_pmd(pmd_factory, [("admin", "/admin/", "admin"), ("spa", "/", "spa"),
                                    ("api", "/api", "api")],
                      {"admin": admin.address, "spa": spa.address, "api": api.address})
        wait_routed(p, "/admin/")
        wait_routed(p, "/")
        r = http_request(p.http_port, "/admin")
        assert r.status == 308 and r.headers["Location"] == "/admin/", (r, r.headers)
        r = http_request(p.http_port, "/admin?next=/x&a=1", method="POST", body=b"k=v")
        assert r.status == 308 and r.headers["Location"] == "/admin/?next=/x&a=1", r
        assert http_request(p.http_port, "/admin/login/").json()["name"] == "admin"
        assert http_request(p.http_port, "/administrator").json()["name"] == "spa"
        assert http_request(p.http_port, "/api").json()["name"] == "api"
        assert http_request(p.http_port, "/api/").json()["name"] == "api"


def test_keepalive_reuse_both_sides(pmd_factory):
    with pmdtest.BackendServer() as b:
        p = start_pmd(pmd_factory, [("all", "/", "web")], {"web": b.address})
        wait_routed(p)
        conn = socket.create_connection(("127.0.0.1", p.http_port))
        for i in range(5):
            conn.sendall(f"GET /ka/{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = recv_until(conn, b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0]
                         .split(b":")[1])
            body = head.split(b"\r\n\r\n", 1)[1]
            while len(body) < length:
                body += conn.recv(65536)
        conn.close()
        upstream_conns = {r["conn"] for r in b.requests if r["path"].startswith("/ka/")}
        assert len(upstream_conns) == 1, "the upstream connection was not reused"


def test_chunked_request_body_intact(pmd_factory):
    with pmdtest.BackendServer() as b:
        p = start_pmd(pmd_factory, [("all", "/", "web")], {"web": b.address})
        wait_routed(p)
        payload = bytes(range(256)) * 1000
        s = socket.create_connection(("127.0.0.1", p.http_port))
        s.sendall(b"POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                  b"Connection: close\r\n\r\n")
        for i in range(0, len(payload), 7001):      # odd chunk sizes, several writes
            part = payload[i:i + 7001]
            s.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        s.sendall(b"0\r\n\r\n")
        resp = recv_all(s)
        s.close()
        assert resp.startswith(b"HTTP/1.1 200")
        rec = [r for r in b.requests if r["path"] == "/api/v1/echo"][0]
        assert rec["body"] == payload
        assert rec["headers"].get("Transfer-Encoding") == "chunked"


def test_streaming_and_sse_arrive_incrementally(pmd_factory, raw_server):
    go = threading.Event()

    def sse(c, head):
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        ev = b"data: first\n\n"
        c.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
        go.wait(10)                                   # the client must see "first" before this
        ev = b"data: second\n\n"
        c.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(ev), ev))

    srv = raw_server(sse)
    p = start_pmd(pmd_factory, [("all", "/", "web")], {"web": srv.address})
    wait_for(lambda: b"200" in _get_status(p, "/api/v1/health/"), timeout=15, what="routing")
    s = socket.create_connection(("127.0.0.1", p.http_port))
    s.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
    got = recv_until(s, b"data: first", timeout=5)
    assert b"data: first" in got and b"second" not in got
    go.set()
    got += recv_until(s, b"0\r\n\r\n", timeout=5)
    assert b"data: second" in got
    s.close()


def _get_status(p, path):
    s = socket.create_connection(("127.0.0.1", p.http_port), timeout=3)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    r = recv_all(s, timeout=3)
    s.close()
    return r.split(b"\r\n", 1)[0]


def test_pipelined_requests_answered_in_order(pmd_factory):
    with pmdtest.BackendServer() as b:
        p = start_pmd(pmd_factory, [("all", "/", "web")], {"web": b.address})
        wait_routed(p)
        s = socket.create_connection(("127.0.0.1", p.http_port))
        s.sendall(b"".join(f"GET /p{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(4))
                  + b"GET /p4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = recv_all(s)
        s.close()
        order = [int(x) for x in
                 __import__("re").findall(rb'"path": "/p(\d)"', data)]
        assert order == [0, 1, 2, 3, 4]
        assert data.count(b"HTTP/1.1 200") == 5


def test_websocket_echo_through_101(pmd_factory, raw_server):
    def ws(c, head):
        key = [h.split(b":", 1)[1].strip() for h in head.split(b"\r\n")
               if h.lower().startswith(b"sec-websocket-key")][0]
        assert b"upgrade" in head.lower()
        acc = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + acc + b"\r\n\r\n")
        c.settimeout(10)
        while True:
            d = c.recv(65536)
            if not d:
                return
            c.sendall(d)

    srv = raw_server(ws)
    p = start_pmd(pmd_factory, [("all", "/", "web")], {"web": srv.address}, idle_timeout="2s")
    wait_for(lambda: b"200" in _get_status(p, "/api/v1/health/"), timeout=15, what="routing")
    s = socket.create_connection(("127.0.0.1", p.http_port))
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = recv_until(s, b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
    for i in range(3):                        # active tunnel outlives idle_timeout (2 s)
        msg = b"frame-%d" % i
        s.sendall(msg)
        assert recv_until(s, msg) == msg
        time.sleep(1)
    s.close()


def test_expect_100_continue(pmd_factory):
    with pmdtest.BackendServer() as b:
        p = start_pmd(pmd_factory, [("all", "/", "web")], {"web": b.address})
        wait_routed(p)
        s = socket.create_connection(("127.0.0.1", p.http_port))
        s.sendall(b"POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                  b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
        interim = recv_until(s, b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
        s.sendall(b"hello")
        resp = recv_all(s)
        s.close()
        assert resp.startswith(b"HTTP/1.1 200")
        assert b'"body": "hello"' in resp


def test_503_after_hold_timeout(pmd_factory):
    with pmdtest.BackendServer() as b:
        b.healthy = False                     # never live: requests are held
        p = start_pmd(pmd_factory, [("all", "/", "web")], {"web": b.address}, hold_timeout="1s")
        t = time.monotonic()
        r = http_request(p.http_port, "/anything", timeout=10)
        took = time.monotonic() - t
        assert r.status == 503
        assert r.headers.get("Retry-After") == "1"
        assert "no healthy instance of web" in r.text
        assert 0.9 <= took < 5


def test_held_request_served_when_instance_becomes_healthy(pmd_factory):
    with pmdtest.BackendServer() as b:
        b.healthy = False
        p = start_pmd(pmd_factory, [("all", "/", "web")], {"web": b.address}, hold_timeout="8s")
        threading.Timer(1.0, lambda: setattr(b, "healthy", True)).start()
        r = http_request(p.http_port, "/held", timeout=15)
        assert r.status == 200
        assert r.json()["path"] == "/held"


def test_502_when_upstream_refuses(pmd_factory, raw_server):
    def once(c, head):
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    srv = raw_server(once)                    # closes every connection: nothing pooled
    p = start_pmd(pmd_factory, [("all", "/", "web")], {"web": srv.address})
    wait_for(lambda: b"200" in _get_status(p, "/x"), timeout=15, what="routing")
    srv.close()                               # still live in the snapshot (unhealthy_threshold 100)
    r = http_request(p.http_port, "/gone")
    assert r.status == 502
    assert r.text == "502 Bad Gateway: upstream backend refused the connection\n"


def test_504_when_upstream_is_slow(pmd_factory):
    with pmdtest.BackendServer() as b:
        b.routes["/slow"] = lambda rec: (time.sleep(3), (200, {"late": True}))[1]
        p = start_pmd(pmd_factory, [("all", "/", "web")], {"web": b.address},
                      upstream_response_timeout="1s")
        wait_routed(p)
        t = time.monotonic()
        r = http_request(p.http_port, "/slow")
        assert r.status == 504
        assert time.monotonic() - t < 2.9
        assert "504 Gateway Timeout" in r.text


def test_forwarded_headers_request_id_and_hop_by_hop(pmd_factory):
    with pmdtest.BackendServer() as b:
        p = start_pmd(pmd_factory, [("all", "/", "web")], {"web": b.address})
        wait_routed(p)
        r = http_request(p.http_port, "/api/v1/echo", headers={
            "Host": "shop.example", "X-Forwarded-For": "203.0.113.9",
            "Connection": "keep-alive, X-Secret", "X-Secret": "drop me",
            "Keep-Alive": "timeout=5", "TE": "trailers", "Proxy-Connection": "keep-alive",
            "X-Forwarded-Proto": "https", "X-Kept": "yes"})
        h = {k.lower(): v for k, v in r.json()["headers"].items()}
        assert h["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
        assert h["x-forwarded-proto"] == "http"      # the client's claim is replaced
        assert h["x-forwarded-host"] == "shop.example"
        assert len(h["x-request-id"]) == 16
        assert h["x-kept"] == "yes"
        for gone in ("x-secret", "keep-alive", "te", "proxy-connection"):
            assert gone not in h, gone
        assert h["connection"] == "keep-alive"
        # a sane request id from the client is kept
        r = http_request(p.http_port, "/api/v1/echo", headers={"X-Request-Id": "abc-123"})
        assert r.json()["headers"]["X-Request-Id"] == "abc-123"
        # and the request is in the access log with it
        p.wait_log(r"request_id=abc-123")


def test_https_forwarding_hsts_and_redirect(pmd_factory):
    import ssl
    with pmdtest.BackendServer() as b:
        https = pmdtest.free_port()
        p = pmd_factory({"proxy": {"https_listen": f"127.0.0.1:{https}", "hsts": "max-age=60"},
                         "tls": {"mode": "self-signed", "domains": "localhost"},
                         "service web": svc(b.address),
                         "route all": {"prefix": "/", "service": "web"}})
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE

        def get_https():
            raw = socket.create_connection(("127.0.0.1", https), timeout=5)
            s = ctx.wrap_socket(raw, server_hostname="localhost")
            s.sendall(b"GET /api/v1/echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = recv_all(s)
            s.close()
            return data
        data = wait_for(lambda: (lambda d: d if d.startswith(b"HTTP/1.1 200") else None)(get_https()),
                        timeout=15, what="https routing")
        assert b"Strict-Transport-Security: max-age=60\r\n" in data
        assert b'"X-Forwarded-Proto": "https"' in data
        # plain HTTP is redirected, except ACME challenges (404 for an unknown token)
        s = socket.create_connection(("127.0.0.1", p.http_port), timeout=5)
        s.sendall(b"GET /a?b=1 HTTP/1.1\r\nHost: localhost:8080\r\nConnection: close\r\n\r\n")
        data = recv_all(s)
        s.close()
        assert data.startswith(b"HTTP/1.1 308")
        assert f"Location: https://localhost:{https}/a?b=1\r\n".encode() in data
        assert b"Strict-Transport-Security" not in data
        assert _get_status(p, "/.well-known/acme-challenge/unknown").startswith(b"HTTP/1.1 404")


def test_sigterm_finishes_inflight_and_stops_accepting(pmd_factory):
    import signal
    with pmdtest.BackendServer() as b:
        b.routes["/slow"] = lambda rec: (time.sleep(1.5), (200, {"done": True}))[1]
        p = start_pmd(pmd_factory, [("all", "/", "web")], {"web": b.address})
        wait_routed(p)
        idle = socket.create_connection(("127.0.0.1", p.http_port))   # idle keep-alive
        result = {}
        t = threading.Thread(target=lambda: result.update(r=http_request(p.http_port, "/slow")))
        t.start()
        wait_for(lambda: any(r["path"] == "/slow" for r in b.requests), timeout=5, what="slow request")
        p.signal(signal.SIGTERM)
        idle.settimeout(5)
        assert idle.recv(10) == b""                  # idle keep-alive connection closed
        t.join(10)
        assert result["r"].status == 200 and result["r"].json() == {"done": True}
        p.proc.wait(10)
        assert p.proc.returncode == 0
