"""The zero-downtime test backend (tests/integration/test_zero_downtime.py):
a threaded HTTP/1.1 server (standard library only) on 127.0.0.1:$PORT whose
every answer names APP_VERSION, so the load generator can tell which image
served it.

/api/v1/health/          200 {"ok": true, "version"}; APP_HEALTH_STATUS overrides the status
/api/v1/version          {"version"}
/api/v1/echo  (POST)     {"version", "len", "body"} (Content-Length or chunked body)
/api/v1/stream?n=N&ms=M  chunked, N lines "VERSION I\\n", one every M ms
/api/v1/slow?ms=M        {"version"} after M ms
/api/v1/ws               WebSocket: each text frame is answered "VERSION:TEXT"
anything else            {"version", "path"}

APP_CRASH=1: exit 3 at start, before listening. `zdapp.py release` is the
release command: sleeps APP_RELEASE_SLEEP seconds, exits APP_RELEASE_EXIT.
SIGTERM: stop listening, let requests in progress finish (up to
APP_STOP_GRACE seconds, default 5; idle keep-alive connections do not
wait), exit 0.
"""
import base64
import hashlib
import http.server
import json
import os
import signal
import socketserver
import struct
import sys
import threading
import time
import urllib.parse

VERSION = os.environ.get("APP_VERSION", "0")
BUSY = [0]                       # requests being answered (not idle keep-alive)
BUSY_LOCK = threading.Lock()
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def release():
    print(f"release {VERSION}: migrating", flush=True)
    time.sleep(float(os.environ.get("APP_RELEASE_SLEEP", "0")))
    code = int(os.environ.get("APP_RELEASE_EXIT", "0"))
    print(f"release {VERSION}: exit {code}", flush=True)
    sys.exit(code)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, code, doc):
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def handle_one_request(self):
        # Counted from the first byte of a request head to the end of its answer.
        if not self.rfile.peek(1):
            self.close_connection = True
            return
        with BUSY_LOCK:
            BUSY[0] += 1
        try:
            super().handle_one_request()
        finally:
            with BUSY_LOCK:
                BUSY[0] -= 1

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/api/v1/health/":
            code = int(os.environ.get("APP_HEALTH_STATUS", "200"))
            return self.reply(code, {"ok": code == 200, "version": VERSION})
        if url.path == "/api/v1/version":
            return self.reply(200, {"version": VERSION})
        if url.path == "/api/v1/stream":
            return self.stream(int(q.get("n", "10")), int(q.get("ms", "100")))
        if url.path == "/api/v1/slow":
            time.sleep(int(q.get("ms", "1000")) / 1000)
            return self.reply(200, {"version": VERSION})
        if url.path == "/api/v1/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            return self.websocket()
        return self.reply(200, {"version": VERSION, "path": self.path})

    def do_POST(self):
        body = self.read_body()
        self.reply(200, {"version": VERSION, "len": len(body),
                         "body": body.decode("latin-1")})

    def stream(self, n, ms):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(n):
            line = f"{VERSION} {i}\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
            time.sleep(ms / 1000)
        self.wfile.write(b"0\r\n\r\n")

    def websocket(self):
        key = self.headers.get("Sec-WebSocket-Key", "").encode()
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            op, n = head[0] & 0x0F, head[1] & 0x7F
            if n == 126:
                n = struct.unpack("!H", self.rfile.read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(n)))
            if op == 0x8:
                self.wfile.write(bytes([0x88, len(data)]) + data)
                self.wfile.flush()
                return
            if op == 0x1:
                out = f"{VERSION}:".encode() + data
                self.wfile.write(bytes([0x81, 126]) + struct.pack("!H", len(out)) + out
                                 if len(out) > 125 else bytes([0x81, len(out)]) + out)
                self.wfile.flush()


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = int(os.environ.get("APP_BACKLOG", "2048"))  # gunicorn's default


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "release":
        release()
    if os.environ.get("APP_CRASH") == "1":
        print(f"app {VERSION}: cannot start: APP_CRASH=1", flush=True)
        sys.exit(3)
    srv = Server(("127.0.0.1", int(os.environ.get("PORT", "8000"))), Handler)

    def term(*_):
        threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, term)
    print(f"app {VERSION}: listening on {srv.server_address}", flush=True)
    srv.serve_forever(poll_interval=0.1)
    srv.server_close()
    # Requests in progress run on daemon threads: let them finish (idle
    # keep-alive connections do not count).
    deadline = time.monotonic() + float(os.environ.get("APP_STOP_GRACE", "5"))
    while BUSY[0] > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    print(f"app {VERSION}: stopped", flush=True)


if __name__ == "__main__":
    main()
