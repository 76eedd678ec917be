#!/usr/bin/env python3
"""Demo backend: a small JSON API on 127.0.0.1:$PORT (standard library only).

GET /api/v1/health/  {"status": "ok"}
GET /api/v1/hello    {"message": "hello from the backend", "pid": ..., "forwarded_for": ...}
GET /api/v1/time     {"time": ISO-8601 UTC, "unix": seconds}
"""
import datetime
import http.server
import json
import os
import signal
import sys
import time


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "demo-backend"

    def reply(self, code, doc):
        body = json.dumps(doc).encode() + b"\n"
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/api/v1/health/":
            self.reply(200, {"status": "ok"})
        elif path == "/api/v1/hello":
            self.reply(200, {"message": "hello from the backend", "pid": os.getpid(),
                             "forwarded_for": self.headers.get("X-Forwarded-For"),
                             "request_id": self.headers.get("X-Request-Id")})
        elif path == "/api/v1/time":
            now = time.time()
            iso = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat()
            self.reply(200, {"time": iso, "unix": now})
        else:
            self.reply(404, {"error": "not found", "path": path})

    do_HEAD = do_GET

    def log_message(self, fmt, *args):
        # pmd's access log already records every request (and the health
        # checks would flood this one).
        pass


def main():
    port = int(os.environ.get("PORT", "8000"))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    httpd.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"backend: listening on 127.0.0.1:{port}", flush=True)
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()


if __name__ == "__main__":
    main()
