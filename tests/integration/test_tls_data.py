"""The proxy's own TLS layer (SSL_read/SSL_write on the socket): large
bodies both ways through backpressure, pipelined requests in one record,
keep-alive over many requests, close_notify at a clean close, a client
that goes away mid-response, and the handshake counter."""
import hashlib
import socket
import ssl
import time

import pytest

import pmdtest
from pmdtest import wait_for


def ctx(version=None):
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    if version:
        c.minimum_version = c.maximum_version = version
    return c


def connect(port, version=None):
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx(version).wrap_socket(raw, server_hostname="localhost")


def read_response(s, buf=b""):
    """One response with Content-Length from s; returns (head, body, rest)."""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        assert d, f"closed before a response head: {buf[:200]!r}"
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    n = int([l.split(b":", 1)[1] for l in head.split(b"\r\n")
             if l.lower().startswith(b"content-length:")][0])
    while len(rest) < n:
        d = s.recv(1 << 20)
        assert d, "closed mid-body"
        rest += d
    return head, rest[:n], rest[n:]


def start(pmd_factory, backend, routes=(("all", "/"),)):
    """pmd with HTTP and HTTPS (self-signed) listeners, service "backend" at
    `backend`, routes [(name, prefix)] to it; .https_port set."""
    port = pmdtest.free_port()
    sections = {
        "proxy": {"https_listen": f"127.0.0.1:{port}", "redirect_https": False},
        "tls": {"mode": "self-signed"},
        "service backend": {"runtime": "external", "address": backend.address,
                            "health_path": "/api/v1/health/", "health_interval": "1s",
                            "healthy_threshold": 1},
    }
    for name, prefix in routes:
        sections[f"route {name}"] = {"prefix": prefix, "service": "backend"}
    p = pmd_factory(sections)
    p.https_port = port
    p.wait_healthy("backend")
    return p


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_large_bodies_and_pipelining(pmd_factory, backend_server, version):
    big = 8 << 20
    backend_server.routes["/big"] = lambda rec: (200, {"data": "x" * big})
    backend_server.routes["/sum"] = lambda rec: (
        200, {"len": len(rec["body"]), "sha": hashlib.sha256(rec["body"]).hexdigest()})
    p = start(pmd_factory, backend_server)
    with connect(p.https_port, version) as s:
        assert s.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
        # download through pmd's output backpressure, read slowly at first
        s.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.5)
        head, body, rest = read_response(s)
        assert head.startswith(b"HTTP/1.1 200") and len(body) == big + len('{"data": ""}')
        # upload: 16 MiB in one go, pmd pauses reading above its high mark
        data = bytes(range(256)) * (1 << 16)
        s.sendall(b"POST /sum HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
        head, body, rest = read_response(s, rest)
        assert hashlib.sha256(data).hexdigest().encode() in body and b'"len": %d' % len(data) in body
        # three pipelined requests in one write (one TLS record)
        s.sendall(b"".join(b"GET /p%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(3)))
        for i in range(3):
            head, body, rest = read_response(s, rest)
            assert b'"/p%d"' % i in body
        # many keep-alive requests on the one connection
        for i in range(200):
            s.sendall(b"GET /k%d HTTP/1.1\r\nHost: t\r\n\r\n" % i)
            head, body, rest = read_response(s, rest)
            assert b'"/k%d"' % i in body


def test_close_notify_and_handshakes(pmd_factory, backend_server):
    p = start(pmd_factory, backend_server)
    before = p.status()
    with connect(p.https_port) as s:
        s.sendall(b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        head, body, rest = read_response(s)
        assert b"Connection: close" in head
        # pmd ends with close_notify: a clean TLS end, not a bare TCP EOF
        s.settimeout(5)
        assert s.recv(100) == b""
    # a client that leaves mid-response does not disturb the next one
    backend_server.routes["/big"] = lambda rec: (200, {"data": "y" * (4 << 20)})
    s = connect(p.https_port)
    s.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
    s.recv(1000)
    s.close()
    with connect(p.https_port) as s2:
        s2.sendall(b"GET /b HTTP/1.1\r\nHost: t\r\n\r\n")
        head, body, rest = read_response(s2)
        assert head.startswith(b"HTTP/1.1 200")
    wait_for(lambda: p.status()["proxy"]["connections"] == 0, timeout=10, what="connections closed")
    hs = p.status()["proxy"]["tls_handshakes"] - before["proxy"]["tls_handshakes"]
    assert hs == 3


@pytest.mark.parametrize("tls", [False, True])
def test_pipelined_beyond_input_high_watermark(pmd_factory, backend_server, tls):
    """Far more pipelined requests than pmd buffers from one client (reading
    pauses at its high watermark and must resume as the heads are answered)."""
    p = start(pmd_factory, backend_server)
    n = 40
    reqs = b"".join(b"GET /pipe/%d HTTP/1.1\r\nHost: t\r\nX-Pad: %s\r\n\r\n" % (i, b"p" * 4000)
                    for i in range(n))
    assert len(reqs) > 2 * 65536
    s = connect(p.https_port) if tls else socket.create_connection(("127.0.0.1", p.http_port),
                                                                  timeout=10)
    with s:
        s.sendall(reqs)          # the answers (small) wait in our receive buffer
        rest = b""
        for i in range(n):
            head, body, rest = read_response(s, rest)
            assert b'"/pipe/%d"' % i in body
