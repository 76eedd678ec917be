"""HTTP/2 on the TLS listeners (proxy/h2.c): real clients (curl --http2,
nghttp, python3-h2) against pmd in front of an HTTP/1.1 backend; the
request features of the HTTP/1.1 path over h2; malformed requests refused
before any backend sees them; the known attacks with bounded memory, each
followed by a legitimate client that is still served."""
import json
import os
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
    text = p.control("GET", "/metrics").text
    streams = [l for l in text.splitlines() if l.startswith("pmd_proxy_h2_streams_total ")]
    assert streams and float(streams[0].split()[1]) >= 152, text[-1500:]
    assert "pmd_proxy_h2_connections_total" in text and "\npmd_proxy_h2_connections " in text


# -- a streaming origin and a raw HTTP/2 client --------------------------------

class Origin:
    """HTTP/1.1 origin for bodies too large for pmdtest.BackendServer:
    GET /big?n=N streams N bytes (Content-Length), POST /sink counts the body
    slowly (so that pmd's flow control, not the client, sets the pace), GET
    /sse sends one event, waits for .go, sends another; GET /slow answers
    once .go is set. .seen lists the request targets."""

    def __init__(self):
        import http.server
        import threading
        self.go = threading.Event()
        self.seen = []
        self.lock = threading.Lock()
        origin = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def reply(self, body, ctype="text/plain"):
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                with origin.lock:
                    origin.seen.append(self.path)
                if self.path.startswith("/api/v1/health/"):
                    return self.reply(b"ok")
                if self.path.startswith("/big"):
                    n = int(self.path.split("n=")[1])
                    self.send_response(200)
                    self.send_header("Content-Length", str(n))
                    self.end_headers()
                    chunk = b"z" * 65536
                    while n > 0:
                        k = min(n, len(chunk))
                        self.wfile.write(chunk[:k])
                        n -= k
                    return None
                if self.path == "/sse":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for i, ev in enumerate((b"data: one\n\n", b"data: two\n\n")):
                        if i:
                            origin.go.wait(30)
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(ev), ev))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                    return None
                if self.path == "/cut":          # promises more than it sends
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    self.wfile.write(b"only this")
                    self.wfile.flush()
                    self.close_connection = True
                    return None
                if self.path == "/slow":
                    origin.go.wait(30)
                    return self.reply(b"slow done")
                return self.reply(b"hello from " + self.path.encode())

            def do_POST(self):
                import time
                with origin.lock:
                    origin.seen.append(self.path)
                got = 0
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        while size:
                            d = self.rfile.read(min(size, 65536))
                            got += len(d)
                            size -= len(d)
                            time.sleep(0.0005)
                        self.rfile.readline()
                else:
                    n = int(self.headers.get("Content-Length", "0"))
                    while got < n:
                        d = self.rfile.read(min(n - got, 65536))
                        if not d:
                            break
                        got += len(d)
                        time.sleep(0.0005)
                return self.reply(str(got).encode())

        class S(http.server.ThreadingHTTPServer):
            request_queue_size = 256
            daemon_threads = True

        self.port = pmdtest.free_port()
        self.httpd = S(("127.0.0.1", self.port), H)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def close(self):
        self.go.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def origin():
    o = Origin()
    yield o
    o.close()


# Under ASan freed memory waits in a quarantine (256 MB by default) before
# reuse, which would show as RSS growth with throughput: keep it small for
# the tests that bound RSS.
RSS_ENV = {"ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0") +
           ":quarantine_size_mb=1:thread_local_quarantine_size_kb=64"}


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class RssWatch:
    """Samples a process's RSS in a thread until stopped; .peak in kB."""

    def __init__(self, pid):
        import threading
        self.pid, self.peak, self.stop_ev = pid, rss_kb(pid), threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop_ev.wait(0.02):
            self.peak = max(self.peak, rss_kb(self.pid))

    def stop(self):
        self.stop_ev.set()
        self.t.join(5)
        return self.peak


def h2conn(port, settings=None):
    """A TLS socket with ALPN h2 and an h2 client connection on it; the
    client's own checks are off so that tests can send what they like."""
    import h2.config
    import h2.connection
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                        server_hostname="localhost")
    assert s.selected_alpn_protocol() == "h2"
    cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                    validate_outbound_headers=False,
                                    normalize_outbound_headers=False,
                                    validate_inbound_headers=False)
    c = h2.connection.H2Connection(config=cfg)
    c.initiate_connection()
    if settings:
        c.update_settings(settings)
    s.sendall(c.data_to_send())
    return s, c


def req_headers(port, path="/", method="GET", extra=()):
    return [(":method", method), (":scheme", "https"), (":authority", f"127.0.0.1:{port}"),
            (":path", path), *extra]


def recv_until(s, done, feed, timeout=20):
    """Feed what s receives to feed(bytes) until done() is true, the
    connection ends, or timeout s pass; feed returns False to stop."""
    import time
    end = time.monotonic() + timeout
    s.settimeout(0.5)
    while not done() and time.monotonic() < end:
        try:
            d = s.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionError, ssl.SSLError):
            return
        if not d or feed(d) is False:
            return


def pump(s, c, until, timeout=20):
    """Read frames until until(events_so_far) is true or the connection
    ends; returns the events."""
    events = []

    def feed(d):
        events.extend(c.receive_data(d))
        out = c.data_to_send()
        if out:
            try:
                s.sendall(out)
            except (ConnectionError, ssl.SSLError):
                return False
        return True

    recv_until(s, lambda: until(events), feed, timeout)
    return events


def kinds(events):
    return [type(e).__name__ for e in events]


def test_big_download_and_upload_keep_rss_flat(pmd_factory, origin, tmp_path):
    """200 MB down and 100 MB up over h2, each slower on the far side than
    the near one: pmd's RSS stays within a few MB of where it started
    (flow control is tied to the upstream, nothing is buffered whole)."""
    p = start(pmd_factory, origin, env=RSS_ENV)
    pid = p.proc.pid
    curl(p, "/warm")
    base = rss_kb(pid)
    w = RssWatch(pid)
    n = 200 << 20
    r = subprocess.run(["curl", "-sk", "--http2", "--limit-rate", "80M", "-o", "/dev/null", "-w",
                        "%{http_version} %{http_code} %{size_download}",
                        f"https://127.0.0.1:{p.https_port}/big?n={n}"],
                       capture_output=True, timeout=120)
    assert r.stdout.decode().split() == ["2", "200", str(n)], r
    up = tmp_path / "up.bin"
    with open(up, "wb") as f:
        f.truncate(100 << 20)
    ver, code, body = curl(p, "/sink", "--data-binary", f"@{up}", timeout=120)
    assert (ver, code, body) == ("2", 200, str(100 << 20).encode())
    peak = w.stop()
    assert peak - base < 24 * 1024, f"RSS grew from {base} kB to {peak} kB"


def test_sse_event_by_event(pmd_factory, origin):
    """An event reaches the h2 client while the origin still holds back the
    next one: nothing waits for a buffer to fill."""
    import h2.events
    p = start(pmd_factory, origin)
    s, c = h2conn(p.https_port)
    c.send_headers(1, req_headers(p.https_port, "/sse"), end_stream=True)
    s.sendall(c.data_to_send())
    got = b""

    def first(evs):
        nonlocal got
        got = b"".join(e.data for e in evs if isinstance(e, h2.events.DataReceived))
        return b"data: one\n\n" in got
    evs = pump(s, c, first)
    assert b"data: one\n\n" in got and b"two" not in got, kinds(evs)
    origin.go.set()
    evs = pump(s, c, lambda e: any(isinstance(x, h2.events.StreamEnded) for x in e))
    rest = b"".join(e.data for e in evs if isinstance(e, h2.events.DataReceived))
    assert rest.endswith(b"data: two\n\n"), kinds(evs)
    s.close()


def read_frames(s, until, timeout=20):
    """Raw frames from s (hyperframe) until until(frames) or the end."""
    from hyperframe.frame import Frame
    frames, buf = [], bytearray()

    def feed(d):
        buf.extend(d)
        while len(buf) >= 9:
            f, length = Frame.parse_frame_header(memoryview(bytes(buf[:9])))
            if len(buf) < 9 + length:
                break
            f.parse_body(memoryview(bytes(buf[9:9 + length])))
            frames.append(f)
            del buf[:9 + length]
        return True

    recv_until(s, lambda: until(frames), feed, timeout)
    return frames


def test_goaway_on_stop_finishes_streams(pmd_factory, origin):
    """SIGTERM with a stream in flight: GOAWAY (NO_ERROR) first, then the
    stream's response completes, then pmd exits 0. (Raw frames: python-h2
    stops at a GOAWAY.)"""
    import signal
    p = start(pmd_factory, origin)
    s, c = h2conn(p.https_port)
    c.send_headers(1, req_headers(p.https_port, "/slow"), end_stream=True)
    s.sendall(c.data_to_send())
    wait_for(lambda: "/slow" in origin.seen, what="the origin got the request")
    # the stream is a request in flight (what a swap's drain waits for)
    inflight = [l for l in p.control("GET", "/metrics").text.splitlines()
                if l.startswith("pmd_http_requests_in_flight ")]
    assert inflight == ["pmd_http_requests_in_flight 1"], inflight
    p.signal(signal.SIGTERM)
    fr = read_frames(s, lambda f: any(type(x).__name__ == "GoAwayFrame" for x in f))
    ga = [f for f in fr if type(f).__name__ == "GoAwayFrame"]
    # first the notice (refuses nothing), then the GOAWAY naming stream 1
    assert ga and ga[0].error_code == 0 and ga[0].last_stream_id == 2**31 - 1, fr
    assert not any(f.stream_id == 1 for f in fr)
    if len(ga) < 2:
        ga += frames_of(read_frames(s, lambda f: frames_of(f, "GoAwayFrame")), "GoAwayFrame")
    assert ga[-1].last_stream_id == 1 and ga[-1].error_code == 0, ga
    origin.go.set()
    fr = read_frames(s, lambda fs: any(f.stream_id == 1 and "END_STREAM" in f.flags for f in fs))
    data = b"".join(f.data for f in fr if type(f).__name__ == "DataFrame" and f.stream_id == 1)
    assert data == b"slow done", fr
    p.proc.wait(15)
    assert p.proc.returncode == 0


# -- malformed requests and attacks (raw frames) --------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def raw_conn(port, settings=None):
    """A TLS socket with ALPN h2, the client preface and SETTINGS sent;
    returns (socket, hpack encoder)."""
    import hpack
    from hyperframe.frame import SettingsFrame
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                        server_hostname="localhost")
    assert s.selected_alpn_protocol() == "h2"
    sf = SettingsFrame(0)
    sf.settings = dict(settings or {})
    s.sendall(PREFACE + sf.serialize())
    return s, hpack.Encoder()


def headers_frame(sid, block, end_stream=True, end_headers=True):
    from hyperframe.frame import HeadersFrame
    flags = (["END_STREAM"] if end_stream else []) + (["END_HEADERS"] if end_headers else [])
    return HeadersFrame(sid, data=block, flags=flags).serialize()


def frames_of(fr, name, sid=None):
    return [f for f in fr if type(f).__name__ == name and (sid is None or f.stream_id == sid)]


def legit(p, path="/legit"):
    """A well-behaved client is served."""
    ver, code, body = curl(p, path, timeout=30)
    assert (ver, code) == ("2", 200) and body == b"hello from " + path.encode()


def test_malformed_requests_are_reset_before_any_backend(pmd_factory, origin):
    """RFC 9113 §8: each malformed request gets RST_STREAM PROTOCOL_ERROR
    (or the connection ends) and the origin never sees it."""
    p = start(pmd_factory, origin)
    port = p.https_port
    cases = [
        [("x-Upper", "1")],                                   # uppercase name
        [("connection", "keep-alive")],                       # connection-specific
        [("transfer-encoding", "chunked")],
        [("upgrade", "websocket")],
        [("te", "gzip")],
        [("x-a", "1"), (":path", "/twice")],                  # pseudo after regular
        [("x-sp", " lead")],                                  # leading whitespace
        [("x-nl", "a\nb")],                                   # newline in a value
        [("host", "other.example")],                          # Host != :authority
    ]
    for i, extra in enumerate(cases):
        s, enc = raw_conn(port)
        path = f"/bad{i}"
        hdrs = req_headers(port, path)
        if extra and extra[-1][0] == ":path":
            hdrs = hdrs[:3] + extra
        else:
            hdrs = hdrs + extra
        s.sendall(headers_frame(1, enc.encode(hdrs)))
        fr = read_frames(s, lambda f: frames_of(f, "RstStreamFrame", 1) or frames_of(f, "GoAwayFrame"))
        rst = frames_of(fr, "RstStreamFrame", 1)
        ga = frames_of(fr, "GoAwayFrame")
        assert (rst and rst[0].error_code == 1) or (ga and ga[0].error_code == 1), (extra, fr)
        assert not frames_of(fr, "HeadersFrame", 1)
        s.close()
    # a missing :path, CONNECT, and RFC 8441's extended CONNECT (pmd does
    # not send SETTINGS_ENABLE_CONNECT_PROTOCOL: WebSockets use HTTP/1.1)
    for hdrs in ([(":method", "GET"), (":scheme", "https"), (":authority", "x")],
                 [(":method", "CONNECT"), (":authority", "127.0.0.1:1")],
                 [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
                  (":path", "/bad-ws"), (":authority", "x")]):
        s, enc = raw_conn(port)
        s.sendall(headers_frame(1, enc.encode(hdrs)))
        fr = read_frames(s, lambda f: frames_of(f, "RstStreamFrame", 1) or frames_of(f, "GoAwayFrame"))
        assert frames_of(fr, "RstStreamFrame", 1) or frames_of(fr, "GoAwayFrame"), fr
        s.close()
    # more DATA than content-length: refused before the bytes go anywhere
    from hyperframe.frame import DataFrame
    s, enc = raw_conn(port)
    s.sendall(headers_frame(1, enc.encode(req_headers(port, "/clen", "POST", [("content-length", "3")])),
                            end_stream=False) +
              DataFrame(1, data=b"0123456789", flags=["END_STREAM"]).serialize())
    fr = read_frames(s, lambda f: frames_of(f, "RstStreamFrame", 1) or frames_of(f, "GoAwayFrame"))
    assert frames_of(fr, "RstStreamFrame", 1) or frames_of(fr, "GoAwayFrame"), fr
    assert not frames_of(fr, "HeadersFrame", 1)
    s.close()
    legit(p)
    assert not [t for t in origin.seen if t.startswith("/bad")], origin.seen


def test_rapid_reset_is_cut_off(pmd_factory, origin):
    """CVE-2023-44487: HEADERS + RST_STREAM over and over. pmd ends the
    connection with GOAWAY ENHANCE_YOUR_CALM after its budget of resets,
    almost nothing reached the origin, and others are still served."""
    from hyperframe.frame import RstStreamFrame
    p = start(pmd_factory, origin)
    s, enc = raw_conn(p.https_port)
    block = enc.encode(req_headers(p.https_port, "/reset"))
    batch = b""
    sid = 1
    sent_ok = True
    for _ in range(3000):
        batch += headers_frame(sid, block) + RstStreamFrame(sid, error_code=8).serialize()
        sid += 2
        if len(batch) > 32768:
            try:
                s.sendall(batch)
            except (ConnectionError, ssl.SSLError, socket.timeout):
                sent_ok = False
                break
            batch = b""
            block = enc.encode(req_headers(p.https_port, "/reset"))
    fr = read_frames(s, lambda f: frames_of(f, "GoAwayFrame"))
    ga = frames_of(fr, "GoAwayFrame")
    assert ga and ga[-1].error_code == 11, (sent_ok, fr[-5:])
    s.close()
    assert origin.seen.count("/reset") < 100, len(origin.seen)
    legit(p)


def test_continuation_flood_ends_the_connection(pmd_factory, origin):
    """A header block that never ends (HEADERS, then CONTINUATION after
    CONTINUATION): the connection ends after a few frames."""
    from hyperframe.frame import ContinuationFrame
    p = start(pmd_factory, origin)
    s, enc = raw_conn(p.https_port)
    block = enc.encode(req_headers(p.https_port, "/cont"))
    s.sendall(headers_frame(1, block, end_headers=False))
    sent = 0
    try:
        for i in range(2000):
            s.sendall(ContinuationFrame(1, data=enc.encode([("x-c%d" % i, "v" * 50)])).serialize())
            sent += 1
    except (ConnectionError, ssl.SSLError, socket.timeout):
        pass
    fr = read_frames(s, lambda f: frames_of(f, "GoAwayFrame"), timeout=10)
    assert frames_of(fr, "GoAwayFrame") or sent < 2000, fr
    s.close()
    assert "/cont" not in origin.seen
    legit(p)


def test_hpack_bomb_is_refused_in_bounded_memory(pmd_factory, origin):
    """One 4 kB header in the HPACK table, then header blocks that repeat it
    thousands of times (tens of MB decoded per block): each stream is reset
    at max_header_bytes, RSS stays flat, nothing reaches the origin."""
    p = start(pmd_factory, origin, env=RSS_ENV)
    pid = p.proc.pid
    legit(p, "/warm")
    base = rss_kb(pid)
    w = RssWatch(pid)
    s, enc = raw_conn(p.https_port)
    resets = 0
    for i in range(40):
        hdrs = req_headers(p.https_port, "/bomb")
        block = enc.encode(hdrs + ([("x-bomb", "a" * 4000)] if i == 0 else []))
        block += b"\xbe" * 12000            # index 62: the newest table entry, x-bomb
        s.sendall(headers_frame(1 + 2 * i, block))
    fr = read_frames(s, lambda f: len(frames_of(f, "RstStreamFrame")) >= 40 or frames_of(f, "GoAwayFrame"))
    resets = len(frames_of(fr, "RstStreamFrame"))
    assert resets >= 40 or frames_of(fr, "GoAwayFrame"), fr[-5:]
    assert not frames_of(fr, "HeadersFrame")
    s.close()
    peak = w.stop()
    assert peak - base < 16 * 1024, f"RSS grew from {base} kB to {peak} kB"
    assert "/bomb" not in origin.seen
    legit(p)


def test_settings_ping_window_update_floods(pmd_factory, origin):
    """Floods of SETTINGS, PING and WINDOW_UPDATE from a client that never
    reads: pmd stops reading it once its acknowledgements pile up (or ends
    it), memory stays flat, and others are served meanwhile."""
    from hyperframe.frame import PingFrame, SettingsFrame, WindowUpdateFrame
    p = start(pmd_factory, origin, env=RSS_ENV)
    pid = p.proc.pid
    legit(p, "/warm")
    base = rss_kb(pid)
    w = RssWatch(pid)
    for frame in (SettingsFrame(0), PingFrame(0, opaque_data=b"12345678"),
                  WindowUpdateFrame(0, window_increment=1)):
        s, _ = raw_conn(p.https_port)
        s.settimeout(3)
        one = frame.serialize()
        chunk = one * (16384 // len(one))
        stalled = False
        try:
            for _ in range(400):        # up to ~6 MB of frames
                s.sendall(chunk)
        except (socket.timeout, ConnectionError, ssl.SSLError):
            stalled = True
        if not isinstance(frame, WindowUpdateFrame):
            assert stalled, f"pmd read {type(frame).__name__} frames forever without acknowledging"
        legit(p)
        s.close()
    peak = w.stop()
    assert peak - base < 16 * 1024, f"RSS grew from {base} kB to {peak} kB"


def test_zero_window_readers_and_too_many_streams(pmd_factory, origin):
    """A client that opens 150 streams of a 50 MB download with a zero
    window and never reads: at most max_concurrent_streams reach the origin,
    the rest are refused, pmd's memory stays bounded (the upstreams are
    paused), and another client is served meanwhile."""
    p = start(pmd_factory, origin, env=RSS_ENV)
    pid = p.proc.pid
    legit(p, "/warm")
    base = rss_kb(pid)
    w = RssWatch(pid)
    s, enc = raw_conn(p.https_port, {0x4: 0})          # SETTINGS_INITIAL_WINDOW_SIZE = 0
    out = b""
    for i in range(150):
        out += headers_frame(1 + 2 * i, enc.encode(req_headers(p.https_port, f"/big?n={50 << 20}")))
    s.sendall(out)
    fr = read_frames(s, lambda f: len(frames_of(f, "HeadersFrame")) + len(frames_of(f, "RstStreamFrame")) >= 150,
                     timeout=30)
    answered = {f.stream_id for f in frames_of(fr, "HeadersFrame")}
    refused = {f.stream_id for f in frames_of(fr, "RstStreamFrame")}
    assert len(answered) <= 100 and len(refused) >= 50, (len(answered), len(refused))
    wait_for(lambda: len([t for t in origin.seen if t.startswith("/big")]) >= len(answered),
             what="the origin's answers")
    legit(p)
    import time
    time.sleep(1)                     # let the upstreams run into their bounds
    peak = w.stop()
    assert len([t for t in origin.seen if t.startswith("/big")]) <= 100
    assert peak - base < 48 * 1024, f"RSS grew from {base} kB to {peak} kB for {len(answered)} streams"
    s.close()


def test_chromium_loads_the_demo_over_h2(tmp_path):
    """Headless chromium loads the demo (conf/demo.ini) over HTTPS: the
    page arrives, chromium's net log says h2 was negotiated, and pmd's
    access log has the page and its assets as proto=h2."""
    import shutil
    from test_demo import demo_copy
    chromium = shutil.which("chromium")
    if not chromium:
        pytest.skip("chromium is not installed (tests/deps.sh)")
    p = demo_copy(tmp_path)
    p.start()
    try:
        p.wait_healthy("backend")
        p.wait_healthy("frontend")
        ver, code, _ = curl(p, "/api/v1/hello")
        assert (ver, code) == ("2", 200)
        prof = tmp_path / "chromium"
        netlog = tmp_path / "net.json"
        r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                            "--no-first-run", "--disable-background-networking",
                            "--disable-component-update", "--disable-sync", f"--user-data-dir={prof}",
                            "--ignore-certificate-errors", f"--log-net-log={netlog}",
                            "--dump-dom", f"https://127.0.0.1:{p.https_port}/"],
                           capture_output=True, timeout=90)
        assert b"<h1>pmd demo</h1>" in r.stdout, r.stderr[-2000:]
        assert '"negotiated_protocol":"h2"' in netlog.read_text()
        wait_for(lambda: 'target="/" status=200' in p.log_text(), what="the page in the access log")
        page = [l for l in p.log_text().splitlines() if 'target="/" status=200' in l]
        assert page and all(l.endswith("proto=h2") for l in page), page
    finally:
        p.stop()


def test_hold_100_continue_and_idle_timeout(pmd_factory, backend_server):
    """Over h2 as over HTTP/1.1: a request waits while the service has no
    live instance and is served once it has one; Expect: 100-continue gets
    a 100 from pmd before the body is sent; an idle connection is closed
    with GOAWAY after idle_timeout."""
    import threading
    import h2.events
    backend_server.healthy = False
    port = pmdtest.free_port()
    sections = {
        "proxy": {"https_listen": f"127.0.0.1:{port}", "redirect_https": False,
                  "idle_timeout": "1s", "hold_timeout": "20s"},
        "tls": {"mode": "self-signed"},
        "service backend": {"runtime": "external", "address": backend_server.address,
                            "health_path": "/api/v1/health/", "health_interval": "1s",
                            "healthy_threshold": 1},
        "route all": {"prefix": "/", "service": "backend"},
    }
    p = pmd_factory(sections)
    p.https_port = port
    res = {}
    t = threading.Thread(target=lambda: res.update(r=curl(p, "/api/v1/echo?held=1")))
    t.start()
    wait_for(lambda: p.status()["proxy"]["held"] >= 1, what="the request held")
    backend_server.healthy = True
    t.join(30)
    ver, code, body = res["r"]
    assert (ver, code) == ("2", 200) and json.loads(body)["path"] == "/api/v1/echo?held=1"

    s, c = h2conn(port)
    c.send_headers(1, req_headers(port, "/api/v1/echo", "POST",
                                  [("content-length", "5"), ("expect", "100-continue")]))
    s.sendall(c.data_to_send())
    evs = pump(s, c, lambda e: any(isinstance(x, h2.events.InformationalResponseReceived) for x in e))
    info = [e for e in evs if isinstance(e, h2.events.InformationalResponseReceived)]
    assert info and dict(info[0].headers)[":status"] == "100", kinds(evs)
    c.send_data(1, b"hello", end_stream=True)
    s.sendall(c.data_to_send())
    evs = pump(s, c, lambda e: any(isinstance(x, h2.events.StreamEnded) for x in e))
    resp = [e for e in evs if isinstance(e, h2.events.ResponseReceived)]
    body = b"".join(e.data for e in evs if isinstance(e, h2.events.DataReceived))
    assert resp and dict(resp[0].headers)[":status"] == "200" and json.loads(body)["body"] == "hello"
    # then nothing: GOAWAY after idle_timeout, and the connection ends
    evs = pump(s, c, lambda e: any(isinstance(x, h2.events.ConnectionTerminated) for x in e), timeout=15)
    assert any(isinstance(x, h2.events.ConnectionTerminated) and x.error_code == 0 for x in evs), kinds(evs)
    s.settimeout(5)
    try:
        assert s.recv(100) == b""
    except (ConnectionError, ssl.SSLError):
        pass
    s.close()


def test_static_folder_over_h2(pmd_factory, origin, tmp_path):
    """A [static] folder is served to h2 clients (read into the stream, no
    sendfile on a memory io), whole, with its validators."""
    import hashlib
    d = tmp_path / "www"
    d.mkdir()
    blob = os.urandom(3 << 20)
    (d / "big.bin").write_bytes(blob)
    port = pmdtest.free_port()
    p = pmd_factory({
        "proxy": {"https_listen": f"127.0.0.1:{port}", "redirect_https": False},
        "tls": {"mode": "self-signed"},
        "static files": {"path": "/files/", "dir": str(d)},
        "service backend": {"runtime": "external", "address": origin.address,
                            "health_path": "/api/v1/health/", "health_interval": "1s",
                            "healthy_threshold": 1},
        "route all": {"prefix": "/", "service": "backend"},
    })
    p.https_port = port
    ver, code, body = curl(p, "/files/big.bin")
    assert (ver, code) == ("2", 200)
    assert hashlib.sha256(body).digest() == hashlib.sha256(blob).digest()
    r = subprocess.run(["curl", "-sk", "--http2", "-I", f"https://127.0.0.1:{port}/files/big.bin"],
                       capture_output=True, timeout=30)
    assert r.stdout.startswith(b"HTTP/2 200") and b"etag:" in r.stdout.lower(), r.stdout
    assert not [t for t in origin.seen if t.startswith("/files")]


def test_truncated_upstream_response_resets_the_stream(pmd_factory, origin):
    """The origin closes before its Content-Length: the h2 client gets the
    bytes there were, then RST_STREAM (never a clean END_STREAM), and the
    connection keeps serving other streams."""
    import h2.events
    p = start(pmd_factory, origin)
    s, c = h2conn(p.https_port)
    c.send_headers(1, req_headers(p.https_port, "/cut"), end_stream=True)
    s.sendall(c.data_to_send())
    evs = pump(s, c, lambda e: any(isinstance(x, (h2.events.StreamReset, h2.events.StreamEnded)) for x in e))
    assert any(isinstance(x, h2.events.StreamReset) for x in evs), kinds(evs)
    assert not any(isinstance(x, h2.events.StreamEnded) for x in evs)
    c.send_headers(3, req_headers(p.https_port, "/after"), end_stream=True)
    s.sendall(c.data_to_send())
    evs = pump(s, c, lambda e: any(isinstance(x, h2.events.StreamEnded) for x in e))
    assert b"".join(e.data for e in evs if isinstance(e, h2.events.DataReceived)) == b"hello from /after"
    s.close()


def test_http2_false_offers_http11_only(pmd_factory, backend_server):
    """[proxy] http2 = false: ALPN answers http/1.1 even to a client that
    prefers h2, and requests work as before."""
    p = start(pmd_factory, backend_server, {"http2": False})
    ver, code, _ = curl(p, "/api/v1/echo")
    assert (ver, code) == ("1.1", 200)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", p.https_port), timeout=10),
                         server_hostname="localhost") as s:
        assert s.selected_alpn_protocol() == "http/1.1"
    assert p.status()["proxy"]["h2_connections"] == 0
