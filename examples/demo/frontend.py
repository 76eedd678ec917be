#!/usr/bin/env python3
"""Demo frontend: serves the files of examples/demo/static on 127.0.0.1:$PORT
(standard library only), as the production frontend's nginx would."""
import functools
import http.server
import os
import signal
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "demo-frontend"

    def log_message(self, fmt, *args):
        # pmd's access log already records every request (and the health
        # checks would flood this one).
        pass


def main():
    port = int(os.environ.get("PORT", "3000"))
    handler = functools.partial(Handler, directory=ROOT)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    httpd.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"frontend: serving {ROOT} on 127.0.0.1:{port}", flush=True)
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()


if __name__ == "__main__":
    main()
