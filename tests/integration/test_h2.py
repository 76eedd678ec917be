"""HTTP/2 on the TLS listeners (proxy/h2.c): real clients (curl --http2,
nghttp, python3-h2) against pmd in front of an HTTP/1.1 backend; the
request features of the HTTP/1.1 path over h2; malformed requests refused
before any backend sees them; the known attacks with bounded memory, each
followed by a legitimate client that is still served."""
import json
import socket
import ssl
import subprocess

import pytest

import pmdtest
from pmdtest import wait_for


def start(pmd_factory, backend, extra_proxy=None, **kw):
    port = pmdtest.free_port()
    proxy = {"https_listen": f"127.0.0.1:{port}", "redirect_https": False}
    proxy.update(extra_proxy or {})
    sections = {
        "proxy": proxy,
        "tls": {"mode": "self-signed"},
        "service backend": {"runtime": "external", "address": backend.address,
                            "health_path": "/api/v1/health/", "health_interval": "1s",
                            "healthy_threshold": 1},
        "route all": {"prefix": "/", "service": "backend"},
    }
    p = pmd_factory(sections, **kw)
    p.https_port = port
    p.wait_healthy("backend")
    return p


def curl(p, path, *args, timeout=60):
    r = subprocess.run(["curl", "-sk", "--http2", "-o", "-", "-w", "\n%{http_version} %{http_code}",
                        *args, f"https://127.0.0.1:{p.https_port}{path}"],
                       capture_output=True, timeout=timeout)
    body, _, tail = r.stdout.rpartition(b"\n")
    ver, code = tail.decode().split()
    return ver, int(code), body


def test_curl_h2_basics(pmd_factory, backend_server):
    p = start(pmd_factory, backend_server)
    ver, code, body = curl(p, "/api/v1/echo?x=1", "-H", "X-Request-Id: abc-123",
                           "-H", "Cookie: a=1", "-H", "Cookie: b=2")
    assert (ver, code) == ("2", 200), body
    doc = json.loads(body)
    h = {k.lower(): v for k, v in doc["headers"].items()}
    assert doc["path"] == "/api/v1/echo?x=1" and doc["method"] == "GET"
    assert h["x-forwarded-proto"] == "https" and h["x-forwarded-for"] == "127.0.0.1"
    assert h["x-request-id"] == "abc-123" and h["host"] == f"127.0.0.1:{p.https_port}"
    assert h["cookie"] == "a=1; b=2"
    # a body, with and without content-length
    ver, code, body = curl(p, "/api/v1/echo", "--data-binary", "hello")
    assert (ver, code) == ("2", 200) and json.loads(body)["body"] == "hello"
    ver, code, body = curl(p, "/api/v1/echo", "-H", "Transfer-Encoding: chunked", "--data-binary", "x" * 100000)
    assert (ver, code) == ("2", 200) and json.loads(body)["body"] == "x" * 100000
    # the access log names the protocol
    wait_for(lambda: "proto=h2" in p.log_text(), what="h2 in the access log")


def test_nghttp_many_streams_one_connection(pmd_factory, backend_server):
    """nghttp multiplexes 150 requests over one connection (more than
    max_concurrent_streams: it queues them); every one is answered, HEAD and
    pmd's own answers (404 from the ACME path) too; status counts it."""
    p = start(pmd_factory, backend_server)
    base = f"https://127.0.0.1:{p.https_port}"
    urls = [f"{base}/api/v1/echo?i={i}" for i in range(150)]
    r = subprocess.run(["nghttp", "-ns", "-m", "1", *urls], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().count(" 200 ") >= 150 or r.stdout.decode().count("200") >= 150, r.stdout[-2000:]
    seen = {rec["path"] for rec in backend_server.requests}
    assert all(f"/api/v1/echo?i={i}" in seen for i in range(150))
    ver, code, body = curl(p, "/.well-known/acme-challenge/nope")
    assert (ver, code) == ("2", 404) and b"unknown ACME challenge token" in body
    r = subprocess.run(["curl", "-sk", "--http2", "-I", f"{base}/api/v1/echo"], capture_output=True, timeout=30)
    assert r.stdout.startswith(b"HTTP/2 200") and b"content-length:" in r.stdout.lower(), r.stdout
    st = p.status()["proxy"]
    assert st["h2_streams_total"] >= 152
