"""[static] folders end to end: the real pmd serving a folder as Django's
collectstatic leaves it (and a SPA's frontend behind it), on 127.0.0.1.

Covers content types and caching (hashed names immutable), ETag /
Last-Modified / 304, HEAD, single ranges (206, 416), precompressed .br / .gz
siblings by Accept-Encoding, no listing, a table of traversal attempts
(raw bytes on a socket, so no client library normalises them), fallback to
the routes, the longest prefix between folders and routes, TLS bodies, and
`pmd check` / reload refusing a missing folder with FILE:LINE.
"""
import email.utils
import gzip
import hashlib
import http.client
import os
import socket
import ssl
import time
import subprocess

import pytest

import pmdtest

SECRET = b"TOP-SECRET-OUTSIDE-THE-FOLDER"
BIG = bytes(range(256)) * 4096           # 1 MiB, every byte value


def make_tree(tmp):
    """Django's STATIC_ROOT after collectstatic (ManifestStaticFilesStorage,
    whitenoise compression), plus a secret next to it."""
    root = tmp / "static_data"
    (root / "admin" / "css").mkdir(parents=True)
    (root / "admin" / "js").mkdir(parents=True)
    (root / "media").mkdir()
    css = b"body { color: #333 }\n" * 50
    (root / "admin/css/base.css").write_bytes(css)
    (root / "admin/css/base.0123456789ab.css").write_bytes(css)
    (root / "admin/css/base.0123456789ab.css.gz").write_bytes(gzip.compress(css))
    (root / "admin/css/base.0123456789ab.css.br").write_bytes(b"BROTLI" + css[:20])
    (root / "admin/js/app.mjs").write_bytes(b"export {};\n")
    (root / "media/logo.svg").write_bytes(b"<svg/>")
    (root / "media/font.woff2").write_bytes(b"wOF2")
    (root / "big.bin").write_bytes(BIG)
    (root / "empty.txt").write_bytes(b"")
    (root / ".env").write_bytes(SECRET)
    (tmp / "secret.txt").write_bytes(SECRET)
    os.symlink(tmp / "secret.txt", root / "abs-link.txt")          # leaves the folder
    os.symlink("../secret.txt", root / "rel-link.txt")             # leaves the folder
    os.symlink("admin", root / "admin-link")                       # stays inside
    os.mkfifo(root / "fifo.css")                                   # never opened for reading
    return root


def static_pmd(pmd_factory, tmp_path, extra=None, **st):
    root = make_tree(tmp_path)
    keys = {"path": "/static/", "dir": str(root)}
    keys.update(st)
    sections = {"static django": keys}
    sections.update(extra or {})
    return pmd_factory(sections), root


def raw(port, data, timeout=5.0):
    """Send raw bytes, read to EOF (the requests say Connection: close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            b = s.recv(65536)
            if not b:
                return out
            out += b


def status_of(resp):
    return int(resp.split(b" ", 2)[1]) if resp.startswith(b"HTTP/1.1 ") else None


def test_folder_types_caching_validators_head(pmd_factory, tmp_path):
    p, root = static_pmd(pmd_factory, tmp_path)
    types = {
        "/static/admin/css/base.css": "text/css; charset=utf-8",
        "/static/admin/js/app.mjs": "application/javascript",
        "/static/media/logo.svg": "image/svg+xml",
        "/static/media/font.woff2": "font/woff2",
        "/static/big.bin": "application/octet-stream",
        "/static/empty.txt": "text/plain; charset=utf-8",
    }
    for path, ctype in types.items():
        r = p.get(path)
        assert r.status == 200, (path, r)
        assert r.headers["Content-Type"] == ctype, path
        assert r.body == (root / path[len("/static/"):]).read_bytes(), path
        assert r.headers["Content-Length"] == str(len(r.body))
        assert r.headers["Accept-Ranges"] == "bytes"
    # hashed names are immutable, others revalidate
    r = p.get("/static/admin/css/base.0123456789ab.css")
    assert r.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    r = p.get("/static/admin/css/base.css")
    assert r.headers["Cache-Control"] == "no-cache"
    assert "Vary" not in r.headers  # no precompressed sibling
    etag, lm = r.headers["ETag"], r.headers["Last-Modified"]
    assert int(email.utils.parsedate_to_datetime(lm).timestamp()) == \
        int((root / "admin/css/base.css").stat().st_mtime)

    # 304 by If-None-Match (lists, weak form, *) and by If-Modified-Since
    for inm in (etag, f'"x", {etag}', f"W/{etag}", "*"):
        r = p.get("/static/admin/css/base.css", headers={"If-None-Match": inm})
        assert r.status == 304 and r.body == b"" and r.headers["ETag"] == etag, inm
    r = p.get("/static/admin/css/base.css", headers={"If-None-Match": '"other"'})
    assert r.status == 200 and len(r.body) > 0
    r = p.get("/static/admin/css/base.css", headers={"If-Modified-Since": lm})
    assert r.status == 304
    r = p.get("/static/admin/css/base.css", headers={"If-Modified-Since": "Thu, 01 Jan 1970 00:00:01 GMT"})
    assert r.status == 200
    # If-None-Match wins over If-Modified-Since
    r = p.get("/static/admin/css/base.css", headers={"If-None-Match": '"other"', "If-Modified-Since": lm})
    assert r.status == 200

    # HEAD: GET's headers, no body; other methods 405
    r = p.request("HEAD", "/static/big.bin")
    assert r.status == 200 and r.body == b"" and r.headers["Content-Length"] == str(len(BIG))
    r = p.request("POST", "/static/big.bin", body=b"x")
    assert r.status == 405 and r.headers["Allow"] == "GET, HEAD"

    # no listing, no folders, no special files
    for path in ("/static/", "/static/admin/", "/static/admin", "/static/admin/css",
                 "/static/nope.css", "/static/fifo.css", "/static/admin/css/base.css/x"):
        r = p.get(path)
        assert r.status == 404, path
    # a symlink that stays inside is fine
    assert p.get("/static/admin-link/css/base.css").body == (root / "admin/css/base.css").read_bytes()

    # a file replaced on disk is picked up (the open-file cache expires)
    (root / "admin/css/base.css").write_bytes(b"new {}\n")
    pmdtest.wait_for(lambda: p.get("/static/admin/css/base.css").body == b"new {}\n", what="new file")


def test_ranges(pmd_factory, tmp_path):
    p, _ = static_pmd(pmd_factory, tmp_path)
    r = p.get("/static/big.bin")
    etag, lm = r.headers["ETag"], r.headers["Last-Modified"]
    n = len(BIG)
    cases = [
        ("bytes=0-99", 206, 0, 100),
        ("bytes=1000-", 206, 1000, n - 1000),
        ("bytes=-500", 206, n - 500, 500),
        ("bytes=-99999999", 206, 0, n),
        ("bytes=100-99999999", 206, 100, n - 100),
        ("bytes=5-5", 206, 5, 1),
    ]
    for rng, code, off, length in cases:
        r = p.get("/static/big.bin", headers={"Range": rng})
        assert r.status == code, rng
        assert r.body == BIG[off:off + length], rng
        assert r.headers["Content-Range"] == f"bytes {off}-{off + length - 1}/{n}", rng
        assert r.headers["Content-Length"] == str(length)
    for rng in (f"bytes={n}-", "bytes=-0", f"bytes={n + 10}-{n + 20}"):
        r = p.get("/static/big.bin", headers={"Range": rng})
        assert r.status == 416 and r.headers["Content-Range"] == f"bytes */{n}", rng
    r = p.get("/static/empty.txt", headers={"Range": "bytes=0-"})
    assert r.status == 416 and r.headers["Content-Range"] == "bytes */0"
    # ignored: several ranges, other units, junk, reversed -> the whole file
    for rng in ("bytes=0-1,5-6", "items=0-1", "bytes=abc", "bytes=9-3"):
        r = p.get("/static/big.bin", headers={"Range": rng})
        assert r.status == 200 and r.body == BIG, rng
    # If-Range: the range only for the same file
    for ir, code in ((etag, 206), (lm, 206), ('"stale"', 200), ("Thu, 01 Jan 1970 00:00:01 GMT", 200)):
        r = p.get("/static/big.bin", headers={"Range": "bytes=0-9", "If-Range": ir})
        assert r.status == code, ir
        assert r.body == (BIG[:10] if code == 206 else BIG)
    r = p.request("HEAD", "/static/big.bin", headers={"Range": "bytes=0-9"})
    assert r.status == 206 and r.body == b"" and r.headers["Content-Length"] == "10"


def test_precompressed_siblings(pmd_factory, tmp_path):
    p, root = static_pmd(pmd_factory, tmp_path)
    path = "/static/admin/css/base.0123456789ab.css"
    ident = (root / "admin/css/base.0123456789ab.css").read_bytes()
    gz = (root / "admin/css/base.0123456789ab.css.gz").read_bytes()
    br = (root / "admin/css/base.0123456789ab.css.br").read_bytes()
    table = [
        (None, None, ident),
        ("gzip", "gzip", gz),
        ("gzip, deflate, br", "br", br),
        ("br;q=0.5, gzip", "gzip", gz),
        ("br;q=0, gzip;q=0", None, ident),
        ("GZIP", "gzip", gz),
        ("*", "br", br),
        ("*;q=0", None, ident),
        ("identity", None, ident),
        ("deflate", None, ident),
        ("gzip;q=0.001, br;q=0.002", "br", br),
    ]
    etags = set()
    for ae, coding, body in table:
        r = p.get(path, headers={"Accept-Encoding": ae} if ae else {})
        assert r.status == 200, ae
        assert r.headers.get("Content-Encoding") == coding, ae
        assert r.body == body, ae
        assert r.headers["Vary"] == "Accept-Encoding", ae
        assert r.headers["Content-Type"] == "text/css; charset=utf-8", ae
        etags.add((coding, r.headers["ETag"]))
    assert len({e for _, e in etags}) == 3    # one validator per representation
    assert gzip.decompress(p.get(path, headers={"Accept-Encoding": "gzip"}).body) == ident
    gz_etag = next(e for c, e in etags if c == "gzip")
    r = p.get(path, headers={"Accept-Encoding": "gzip", "If-None-Match": gz_etag})
    assert r.status == 304 and r.headers["Vary"] == "Accept-Encoding"
    r = p.get(path, headers={"If-None-Match": gz_etag})
    assert r.status == 200 and r.body == ident
    # a range of the compressed representation
    r = p.get(path, headers={"Accept-Encoding": "gzip", "Range": "bytes=0-9"})
    assert r.status == 206 and r.body == gz[:10] and r.headers["Content-Encoding"] == "gzip"
    # the sibling itself can be asked for by name
    r = p.get(path + ".gz")
    assert r.status == 200 and r.body == gz and r.headers["Content-Type"] == "application/gzip"


# Each attempt must answer 404 (or 400 from the request parser) and never
# the secret: raw request targets, sent as bytes.
TRAVERSAL = [
    b"/static/../secret.txt",
    b"/static/admin/../../secret.txt",
    b"/static/%2e%2e/secret.txt",
    b"/static/%2E%2E/secret.txt",
    b"/static/.%2e/secret.txt",
    b"/static/%2e%2e%2fsecret.txt",
    b"/static/admin%2f..%2f..%2fsecret.txt",
    b"/static/..%5csecret.txt",
    b"/static/..\\secret.txt",
    b"/static/admin\\..\\..\\secret.txt",
    b"/static/%5c..%5csecret.txt",
    b"/static/abs-link.txt",
    b"/static/rel-link.txt",
    b"/static/admin-link/../../secret.txt",
    b"/static/.env",
    b"/static/%2eenv",
    b"/static//secret.txt",
    b"/static/big.bin%00.css",
    b"/static/big.bin%00",
    b"/static/%00",
    b"/static/a%0d%0aX-Injected: 1",
    b"/static/%",
    b"/static/%zz",
    b"/static/" + b"a/" * 600 + b"x.css",
]


def test_traversal_attempts(pmd_factory, tmp_path):
    with pmdtest.BackendServer("frontend") as fe:
        p, _ = static_pmd(pmd_factory, tmp_path, fallback="route", extra={
            "service frontend": {"runtime": "external", "address": fe.address,
                                 "health_path": "/api/v1/health/", "health_interval": "1s",
                                 "healthy_threshold": 1},
            "route web": {"prefix": "/", "service": "frontend"},
        })
        p.wait_healthy("frontend")
        before = len(fe.requests)
        for target in TRAVERSAL + [b"/static/a\x00b", b"/static/a\x01b"]:
            resp = raw(p.http_port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            code = status_of(resp)
            assert code in (400, 404), (target, resp[:200])
            assert SECRET not in resp, target
        # none of them went on to the frontend (fallback is for missing files only)
        paths = [r["path"] for r in fe.requests[before:] if not r["path"].startswith("/api/v1/health/")]
        assert paths == []
        # the same connection is still good for real files after a refusal
        c = http.client.HTTPConnection("127.0.0.1", p.http_port, timeout=5)
        for target in ("/static/..%2fsecret.txt", "/static/big.bin"):
            c.request("GET", target)
            r = c.getresponse()
            body = r.read()
            assert (r.status, SECRET in body) in ((404, False), (200, False))
        assert body == BIG
        c.close()


def test_fallback_and_longest_prefix(pmd_factory, tmp_path):
    """The SPA's /static/js/... live in the frontend image, Django's
    /static/admin/... in the static_data volume: one prefix, fallback =
    route, and a route with a longer prefix wins over the folder."""
    with pmdtest.BackendServer("frontend") as fe, pmdtest.BackendServer("backend") as be:
        svc = {"runtime": "external", "health_path": "/api/v1/health/", "health_interval": "1s",
               "healthy_threshold": 1}
        p, root = static_pmd(pmd_factory, tmp_path, fallback="route", extra={
            "service frontend": dict(svc, address=fe.address),
            "service backend": dict(svc, address=be.address),
            "route web": {"prefix": "/", "service": "frontend"},
            "route special": {"prefix": "/static/admin/js/", "service": "backend"},
        })
        p.wait_healthy("frontend")
        p.wait_healthy("backend")
        r = p.get("/static/admin/css/base.css")
        assert r.status == 200 and r.body == (root / "admin/css/base.css").read_bytes()
        r = p.get("/static/js/main.1a2b3c4d.js")       # not in the folder: the frontend's
        assert r.status == 200 and r.json()["name"] == "frontend"
        assert r.json()["path"] == "/static/js/main.1a2b3c4d.js"
        r = p.get("/static/admin/js/app.mjs")          # longer route prefix: the backend's
        assert r.json()["name"] == "backend"
        r = p.get("/static/admin/")                    # a folder: the frontend's too
        assert r.json()["name"] == "frontend"
        r = p.request("POST", "/static/admin/css/base.css", body=b"x")   # files are read-only
        assert r.status == 200 and r.json()["name"] == "frontend" and r.json()["method"] == "POST"

    # without fallback a missing file is a 404 of pmd's own
    p2, _ = static_pmd(pmd_factory, tmp_path / "two")
    r = p2.get("/static/js/main.1a2b3c4d.js")
    assert r.status == 404 and b"no such file" in r.body


def test_tls_bodies_and_pipelining(pmd_factory, tmp_path):
    root = make_tree(tmp_path)
    port = pmdtest.free_port()
    p = pmd_factory({"proxy": {"https_listen": f"127.0.0.1:{port}", "redirect_https": False},
                     "tls": {"mode": "self-signed"},
                     "static django": {"path": "/static/", "dir": str(root)}})
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    pmdtest.wait_for(lambda: _tls_get(port, ctx, "/static/empty.txt")[0] == 200, what="https")
    code, headers, body = _tls_get(port, ctx, "/static/big.bin")
    assert code == 200 and hashlib.sha256(body).digest() == hashlib.sha256(BIG).digest()
    code, headers, body = _tls_get(port, ctx, "/static/big.bin", {"Range": "bytes=1000-1999"})
    assert code == 206 and body == BIG[1000:2000]
    # three pipelined requests on plain HTTP: answers in order, bodies intact
    req = b"".join(b"GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (t, b"Connection: close\r\n" if last else b"")
                   for t, last in ((b"/static/big.bin", False), (b"/static/media/logo.svg", False),
                                   (b"/static/big.bin", True)))
    resp = raw(p.http_port, req, timeout=10)
    assert resp.count(b"HTTP/1.1 200 OK") == 3
    parts = resp.split(b"\r\n\r\n")
    assert parts[1].startswith(BIG) and parts[2].startswith(b"<svg/>") and parts[3] == BIG


def test_http2_streams(pmd_factory, tmp_path):
    """The same answers over HTTP/2 (curl --http2): a stream is a request
    conn on a memory io, so the body is read in bounded pieces."""
    root = make_tree(tmp_path)
    port = pmdtest.free_port()
    pmd_factory({"proxy": {"https_listen": f"127.0.0.1:{port}", "redirect_https": False},
                 "tls": {"mode": "self-signed"},
                 "static django": {"path": "/static/", "dir": str(root)}})

    def curl(path, *args):
        out = tmp_path / "out.bin"
        r = subprocess.run(["curl", "-sk", "--http2", "-D", "-", "-o", str(out), *args,
                            f"https://127.0.0.1:{port}{path}"], capture_output=True, timeout=30)
        return r.stdout.decode("latin-1"), out.read_bytes() if out.exists() else b""
    pmdtest.wait_for(lambda: curl("/static/empty.txt")[0].startswith("HTTP/2 200"), what="https")
    head, body = curl("/static/big.bin")
    assert head.startswith("HTTP/2 200") and body == BIG, head
    head, body = curl("/static/big.bin", "-r", "100-199")
    assert head.startswith("HTTP/2 206") and body == BIG[100:200]
    assert "content-range: bytes 100-199/1048576" in head.lower()
    head, body = curl("/static/admin/css/base.0123456789ab.css", "-H", "Accept-Encoding: gzip")
    assert "content-encoding: gzip" in head.lower() and "vary: accept-encoding" in head.lower()
    assert body == (root / "admin/css/base.0123456789ab.css.gz").read_bytes()
    assert "cache-control: public, max-age=31536000, immutable" in head.lower()
    head, _ = curl("/static/../secret.txt", "--path-as-is")
    assert head.startswith("HTTP/2 404"), head


def _tls_get(port, ctx, path, headers=None):
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, r.headers, r.read()
    except OSError:
        return None, None, None
    finally:
        c.close()


def test_check_and_reload_refuse_missing_folder(pmd_factory, tmp_path):
    p, root = static_pmd(pmd_factory, tmp_path)
    assert p.get("/static/admin/css/base.css").status == 200
    good = p.config_text
    lines = good.splitlines()
    line = lines.index(f"dir = {root}") + 1
    bad = good.replace(f"dir = {root}", f"dir = {tmp_path}/gone")
    p.config_path.write_text(bad)
    r = p.check()
    assert r.returncode == 1
    assert f"{p.config_path}:{line}: [static django] dir: cannot open {tmp_path}/gone: " \
           "No such file or directory" in r.stderr, r.stderr
    c = p.pmctl("reload")
    assert c.returncode == 1 and f"pmd.ini:{line}:" in c.stderr and "gone" in c.stderr, c
    assert p.get("/static/admin/css/base.css").status == 200   # the running config goes on
    # a file where a folder is expected, and a folder where a file is
    p.config_path.write_text(good.replace(f"dir = {root}", f"dir = {root}/big.bin"))
    r = p.check()
    assert r.returncode == 1 and f":{line}: [static django] dir: {root}/big.bin is not a folder" in r.stderr
    p.config_path.write_text(good.replace(f"dir = {root}", f"file = {root}").replace("path = /static/", "path = /s"))
    r = p.check()
    assert r.returncode == 1 and f":{line}: [static django] file: {root} is a folder" in r.stderr, r.stderr
    p.config_path.write_text(good)
    assert p.pmctl("reload").returncode == 0


# A launcher that makes openat2(2) fail with ENOSYS (a seccomp filter, as an
# old kernel or an old Docker seccomp profile would), then runs pmd.
NO_OPENAT2 = r'''
import ctypes, os, struct, sys
ld, jeq, ret = 0x20, 0x15, 0x06
prog = [(ld, 0, 0, 4), (jeq, 0, 3, 0xc000003e),          # x86_64 only
        (ld, 0, 0, 0), (jeq, 0, 1, 437),                  # __NR_openat2
        (ret, 0, 0, 0x00050000 | 38), (ret, 0, 0, 0x7fff0000)]  # ENOSYS, else allow
buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in prog))
fprog = struct.pack("HxxxxxxP", len(prog), ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0                    # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.c_char_p(fprog), 0, 0) == 0  # PR_SET_SECCOMP, FILTER
os.execv(sys.argv[1], sys.argv[1:])
'''


def test_without_openat2_every_symlink_is_refused(pmd_factory, tmp_path, monkeypatch):
    if os.uname().machine != "x86_64":
        pytest.skip("the seccomp filter is written for x86_64")
    launcher = tmp_path / "pmd-no-openat2"
    launcher.write_text(f"#!/bin/sh\nexec /usr/bin/python3 -c '{NO_OPENAT2}' {pmdtest.PMD} \"$@\"\n")
    launcher.chmod(0o755)
    monkeypatch.setattr(pmdtest, "PMD", str(launcher))
    p, root = static_pmd(pmd_factory, tmp_path)
    r = p.get("/static/admin/css/base.css")
    assert r.status == 200 and r.body == (root / "admin/css/base.css").read_bytes()
    p.wait_log(r"openat2 is not available")
    for target in (b"/static/admin-link/css/base.css", b"/static/abs-link.txt", b"/static/rel-link.txt",
                   b"/static/%2e%2e/secret.txt", b"/static/../secret.txt"):
        resp = raw(p.http_port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status_of(resp) in (400, 404) and SECRET not in resp, target
    assert p.get("/static/big.bin").body == BIG


def test_slow_reader_gets_the_whole_file(pmd_factory, tmp_path):
    """A client that reads slowly but steadily is not cut by idle_timeout:
    what counts is that it takes bytes, not that pmd queues new ones."""
    root = tmp_path / "www"
    root.mkdir()
    data = os.urandom(6 << 20)
    (root / "big.bin").write_bytes(data)
    p = pmd_factory({"proxy": {"idle_timeout": "300ms"}, "static s": {"path": "/s/", "dir": str(root)}})
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.settimeout(10)
    s.connect(("127.0.0.1", p.http_port))
    s.sendall(b"GET /s/big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    got = b""
    deadline = time.monotonic() + 60          # bounded: ~3 MB/s for 6 MiB is ~2 s
    while time.monotonic() < deadline:
        b = s.recv(32768)
        if not b:
            break
        got += b
        time.sleep(0.01)
    s.close()
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and len(body) == len(data) and body == data, (head, len(body))
