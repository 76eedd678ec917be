"""A client's EOF while its request waits for the upstream (proxy/conn.c,
"A client's EOF"): a half-closed client still gets its response; a client
that left is abandoned when pmd stops (SIGTERM does not wait the drain out
for it; the upstream connection is closed, the request logged as 499)."""
import socket
import threading
import time

from pmdtest import wait_for
from test_proxy import RawServer, recv_until, start_pmd


class Upstream(RawServer):
    """Answers /slow after `delay` seconds; /hang never, and records when pmd
    closes that upstream connection."""

    def __init__(self, delay=1.0):
        self.delay = delay
        self.closed_by_pmd = threading.Event()
        self.got = threading.Event()
        super().__init__(self.handle)

    def handle(self, c, head):
        self.got.set()
        if head.startswith(b"GET /slow "):
            time.sleep(self.delay)
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nslow!")
            return
        c.settimeout(30)
        try:
            if c.recv(1) == b"":
                self.closed_by_pmd.set()
        except OSError:
            self.closed_by_pmd.set()


def test_half_close_still_gets_response(pmd_factory):
    up = Upstream(delay=1.0)
    try:
        p = start_pmd(pmd_factory, [("all", "/", "web")], {"web": up.address})
        p.wait_healthy("web")
        with socket.create_connection(("127.0.0.1", p.http_port), timeout=10) as s:
            s.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            s.shutdown(socket.SHUT_WR)
            data = recv_until(s, b"slow!", timeout=10)
            assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"slow!")
            assert s.recv(100) == b""           # and then pmd closes
    finally:
        up.close()


def test_gone_client_abandoned_at_stop(pmd_factory):
    up = Upstream()
    try:
        p = start_pmd(pmd_factory, [("all", "/", "web")], {"web": up.address})
        p.wait_healthy("web")
        s = socket.create_connection(("127.0.0.1", p.http_port), timeout=10)
        s.sendall(b"GET /hang HTTP/1.1\r\nHost: t\r\n\r\n")
        assert up.got.wait(10)
        s.close()                               # gone, before any answer
        wait_for(lambda: p.status()["proxy"]["connections"] == 1, timeout=5,
                 what="the request still waiting (no stop yet)")
        assert not up.closed_by_pmd.is_set()
        t = time.monotonic()
        p.stop()                                # SIGTERM, waits for the exit
        assert time.monotonic() - t < 5, "the drain waited for an abandoned request"
        assert up.closed_by_pmd.wait(5)
        assert "status=499" in p.log_text() and 'target="/hang"' in p.log_text()
    finally:
        up.close()
