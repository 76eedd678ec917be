"""A bounded load generator for the zero-downtime tests (standard library,
threads, 127.0.0.1 only).

Load(port, ...) runs, until stop() or its time limit:
- `keepalive` clients, each on one persistent connection, alternating
  GET /api/v1/version and POST /api/v1/echo with a body (Content-Length or
  chunked) whose echo is checked byte for byte;
- `fresh` clients opening a new connection for every request (same mix);
- `frontend` clients (when frontend_versions is given) fetching
  /version.txt on new connections;
- one long streaming response (GET /api/v1/stream), started first, that
  must arrive complete, every line from one version, in order;
- one WebSocket (hand-rolled client: upgrade, masked text frames, echoes
  checked). A close frame with a code in `ws_close_codes` (default 1012
  "service restart", the end of a drain; 1001 "going away" when pmd itself
  stops) is recorded and the client reconnects; any other end is a failure.

Every answer must be 200 and name a version in `versions` (backend) or
`frontend_versions` (frontend): the sets can be changed while the load runs
(set_versions) and a response outside them is a failure. Failures are kept
with their details (time, client, request, what went wrong).
"""

import base64
import hashlib
import http.client
import json
import os
import random
import socket
import struct
import threading
import time

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Failure(Exception):
    pass


def _now():
    return time.monotonic()


class Load:
    def __init__(self, port, versions, frontend_versions=None, keepalive=4, fresh=4,
                 frontend=2, stream=(60, 150), websocket=True, max_seconds=120,
                 max_requests=20000, pause=0.005, timeout=30.0, ws_close_codes=(1012,)):
        self.port = port
        self.versions = set(versions)
        self.frontend_versions = set(frontend_versions) if frontend_versions else None
        self.keepalive, self.fresh = keepalive, fresh
        self.frontend = frontend if frontend_versions else 0
        self.stream_spec = stream            # (lines, ms between lines) or None
        self.websocket = websocket
        self.ws_close_codes = tuple(ws_close_codes)
        self.max_seconds = max_seconds
        self.max_requests = max_requests     # per client
        self.pause = pause
        self.timeout = timeout
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.threads = []
        self.sent = 0
        self.ok = 0
        self.failures = []
        self.served = []                     # (t_start, t_end, client, version)
        self.stream_result = None            # dict once the stream ended
        self.ws_closes = []                  # (t, code) of close frames received
        self.ws_echoes = []                  # (t, version) of WebSocket echoes
        self.t0 = None

    # -- bookkeeping -------------------------------------------------------

    def set_versions(self, versions, frontend_versions=None):
        with self.lock:
            self.versions = set(versions)
            if frontend_versions is not None:
                self.frontend_versions = set(frontend_versions)

    def _fail(self, client, what, detail, t_start):
        with self.lock:
            self.failures.append({"t": round(t_start - self.t0, 3), "client": client,
                                  "request": what, "error": str(detail)[:300]})

    def _served(self, client, version, t_start, frontend=False):
        with self.lock:
            allowed = self.frontend_versions if frontend else self.versions
            if version not in allowed:
                self.failures.append({"t": round(t_start - self.t0, 3), "client": client,
                                      "request": "version", "error":
                                      f"served by {version!r}, expected one of {sorted(allowed)}"})
                return
            self.ok += 1
            self.served.append((t_start, _now(), client, version))

    def _count(self):
        with self.lock:
            self.sent += 1

    def _running(self, n):
        return (not self.stop_ev.is_set() and n < self.max_requests
                and _now() - self.t0 < self.max_seconds)

    # -- HTTP clients --------------------------------------------------------

    def _one(self, conn, client, i, rnd):
        """One request on conn; raises Failure with the reason."""
        if i % 2 == 0:
            conn.request("GET", "/api/v1/version")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise Failure(f"GET /api/v1/version: {resp.status} {body[:200]!r}")
            return json.loads(body)["version"]
        payload = os.urandom(rnd.randint(0, 48 * 1024)).hex().encode()[:rnd.randint(1, 64 * 1024)]
        if i % 4 == 1:
            conn.request("POST", "/api/v1/echo", body=payload,
                         headers={"Content-Type": "application/octet-stream"})
        else:
            chunks = [payload[k:k + 7000] for k in range(0, len(payload), 7000)]
            conn.request("POST", "/api/v1/echo", body=iter(chunks), encode_chunked=True,
                         headers={"Content-Type": "application/octet-stream"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise Failure(f"POST /api/v1/echo: {resp.status} {body[:200]!r}")
        doc = json.loads(body)
        if doc["body"].encode("latin-1") != payload:
            raise Failure(f"POST /api/v1/echo: body of {len(payload)} bytes came back as "
                          f"{doc['len']} bytes, not the same")
        return doc["version"]

    def _http_client(self, client, keepalive):
        rnd = random.Random(client)
        conn = None
        n = 0
        while self._running(n):
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            t = _now()
            self._count()
            what = "GET" if n % 2 == 0 else "POST"
            try:
                v = self._one(conn, client, n, rnd)
                self._served(client, v, t)
            except Exception as e:  # noqa: BLE001 - every error is a failed request
                self._fail(client, what, f"{type(e).__name__}: {e}", t)
                conn.close()
                conn = None
            if not keepalive and conn is not None:
                conn.close()
                conn = None
            n += 1
            time.sleep(self.pause)
        if conn is not None:
            conn.close()

    def _frontend_client(self, client):
        n = 0
        while self._running(n):
            t = _now()
            self._count()
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                conn.request("GET", "/version.txt")
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    raise Failure(f"GET /version.txt: {resp.status} {body[:200]!r}")
                self._served(client, body.decode().strip(), t, frontend=True)
            except Exception as e:  # noqa: BLE001
                self._fail(client, "GET /version.txt", f"{type(e).__name__}: {e}", t)
            finally:
                conn.close()
            n += 1
            time.sleep(self.pause * 4)

    # -- the long stream -------------------------------------------------------

    def _stream(self):
        lines, ms = self.stream_spec
        t = _now()
        self._count()
        got = []
        res = {"t_start": t, "lines": 0, "complete": False, "version": None}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            conn.request("GET", f"/api/v1/stream?n={lines}&ms={ms}")
            resp = conn.getresponse()
            if resp.status != 200:
                raise Failure(f"stream: {resp.status}")
            while True:
                line = resp.readline()
                if not line:
                    break
                got.append(line.decode().split())
                res["lines"] = len(got)
            res["t_end"] = _now()
            versions = {g[0] for g in got}
            if len(got) != lines or [int(g[1]) for g in got] != list(range(lines)):
                raise Failure(f"stream: {len(got)} of {lines} lines, or out of order")
            if len(versions) != 1:
                raise Failure(f"stream: lines from several versions {versions}")
            res["version"] = versions.pop()
            res["complete"] = True
            self._served("stream", res["version"], t)
        except Exception as e:  # noqa: BLE001
            res["t_end"] = _now()
            res["error"] = f"{type(e).__name__}: {e}"
            self._fail("stream", "GET /api/v1/stream", res["error"] + f" after {len(got)} lines", t)
        finally:
            conn.close()
            self.stream_result = res

    # -- the WebSocket -----------------------------------------------------------

    @staticmethod
    def _recv_exact(sock, n):
        buf = b""
        while len(buf) < n:
            part = sock.recv(n - len(buf))
            if not part:
                raise Failure(f"WebSocket: connection ended without a close frame "
                              f"({len(buf)} of {n} bytes of a frame)")
            buf += part
        return buf

    def _ws_frame(self, sock):
        head = self._recv_exact(sock, 2)
        n = head[1] & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._recv_exact(sock, 2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._recv_exact(sock, 8))[0]
        if head[1] & 0x80:
            raise Failure("WebSocket: server frame is masked")
        return head[0] & 0x0F, self._recv_exact(sock, n)

    @staticmethod
    def _ws_send(sock, op, data):
        mask = os.urandom(4)
        n = len(data)
        head = bytes([0x80 | op]) + (bytes([0x80 | n]) if n < 126
                                     else bytes([0x80 | 126]) + struct.pack("!H", n))
        sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _ws_connect(self):
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        key = base64.b64encode(os.urandom(16))
        sock.sendall(b"GET /api/v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                     b"Sec-WebSocket-Key: " + key + b"\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            part = sock.recv(1)
            if not part:
                sock.close()
                raise Failure(f"WebSocket: connection closed during the upgrade: {head!r}")
            head += part
        status = head.split(b"\r\n", 1)[0]
        want = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        if b" 101 " not in status + b" " or want not in head:
            sock.close()
            raise Failure(f"WebSocket: upgrade refused: {head[:300]!r}")
        return sock

    def _ws(self):
        n = 0
        sock = None
        while self._running(n):
            t = _now()
            self._count()
            try:
                if sock is None:
                    sock = self._ws_connect()
                msg = f"hello {n}".encode()
                self._ws_send(sock, 0x1, msg)
                op, data = self._ws_frame(sock)
                if op == 0x8:
                    code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
                    with self.lock:
                        self.ws_closes.append((_now(), code))
                    if code not in self.ws_close_codes:
                        raise Failure(f"WebSocket: close frame with code {code}")
                    sock.close()
                    sock = None
                    continue
                ver, _, echo = data.partition(b":")
                if op != 0x1 or echo != msg:
                    raise Failure(f"WebSocket: sent {msg!r}, got opcode {op} {data[:100]!r}")
                with self.lock:
                    self.ws_echoes.append((_now(), ver.decode()))
                self._served("ws", ver.decode(), t)
            except Exception as e:  # noqa: BLE001
                self._fail("ws", "WebSocket", f"{type(e).__name__}: {e}", t)
                if sock is not None:
                    sock.close()
                sock = None
            n += 1
            time.sleep(0.1)
        if sock is not None:
            try:
                self._ws_send(sock, 0x8, struct.pack("!H", 1000))
            except OSError:
                pass
            sock.close()

    # -- control ---------------------------------------------------------------

    def start(self):
        self.t0 = _now()
        targets = []
        if self.stream_spec:
            targets.append((self._stream, ()))
        if self.websocket:
            targets.append((self._ws, ()))
        targets += [(self._http_client, (f"keepalive-{k}", True)) for k in range(self.keepalive)]
        targets += [(self._http_client, (f"fresh-{k}", False)) for k in range(self.fresh)]
        targets += [(self._frontend_client, (f"frontend-{k}",)) for k in range(self.frontend)]
        for fn, args in targets:
            th = threading.Thread(target=fn, args=args, daemon=True)
            th.start()
            self.threads.append(th)
        return self

    def stop(self, timeout=None):
        """Stop the clients, wait for them (the stream runs to its end)."""
        self.stop_ev.set()
        deadline = _now() + (timeout if timeout is not None else self.timeout + 5)
        for th in self.threads:
            th.join(max(0.1, deadline - _now()))
        alive = [th for th in self.threads if th.is_alive()]
        if alive:
            self._fail("load", "stop", f"{len(alive)} clients still running at stop", _now())
        return self

    def versions_after(self, t):
        """Versions of the backend that answered the requests sent at or
        after monotonic t (not counting the stream and the WebSocket, which
        stay where they were opened, nor the frontend)."""
        with self.lock:
            return {v for (ts, _, c, v) in self.served
                    if ts >= t and c not in ("stream", "ws") and not c.startswith("frontend")}

    def summary(self):
        with self.lock:
            ts = [f["t"] for f in self.failures]
            return {"sent": self.sent, "ok": self.ok, "failed": len(self.failures),
                    "failing_s": round(max(ts) - min(ts), 2) if ts else 0.0,
                    "ws_closes": [c for _, c in self.ws_closes],
                    "stream": {k: v for k, v in (self.stream_result or {}).items()
                               if not k.startswith("t_")}}
