"""upstream_response_timeout bounds the wait for the response head only; the
pause between body bytes is bounded by [proxy] upstream_idle_timeout, and a
stream cut by it is logged as such (reason=upstream_idle_timeout).

A real upstream (RawServer) sends server-sent events through the real pmd:
one stream with an event every 2 s under a 1 s response timeout must arrive
whole; one that goes quiet for longer than the idle timeout is cut (the
chunked body never ends) and its access log line names the reason; the
same pause on a route with a longer [route] upstream_idle_timeout is fine."""
import socket
import time

from pmdtest import in_threads
from test_proxy import RawServer, recv_until, svc

EVERY_S = 2.0


def sse(c, head):
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n")
    events = 3 if head.startswith(b"GET /events ") else 1
    for i in range(events):
        data = f"data: {i}\n\n".encode()
        c.sendall(b"%x\r\n%s\r\n" % (len(data), data))
        if i + 1 < events:
            time.sleep(EVERY_S)
    if not head.startswith(b"GET /events "):
        time.sleep(4.5)             # longer than [proxy] upstream_idle_timeout
    c.sendall(b"0\r\n\r\n")


def read_stream(port, path, out):
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode())
        t0 = time.monotonic()
        out["data"] = recv_until(s, b"\r\n0\r\n\r\n", timeout=15)
        out["s"] = time.monotonic() - t0


def test_sse_outlives_response_timeout_idle_timeout_cuts(pmd_factory):
    up = RawServer(sse)
    try:
        p = pmd_factory({
            "proxy": {"upstream_response_timeout": "1s", "upstream_idle_timeout": "3s"},
            "service web": svc(up.address),
            "route all": {"prefix": "/", "service": "web"},
            # this route allows longer pauses than [proxy]
            "route patient": {"prefix": "/patient", "service": "web",
                              "upstream_idle_timeout": "10s"}})
        p.wait_healthy("web")
        slow, quiet, patient = {}, {}, {}
        in_threads([(read_stream, (p.http_port, "/events", slow)),
                    (read_stream, (p.http_port, "/quiet", quiet)),
                    (read_stream, (p.http_port, "/patient", patient))])
        # events 2 s apart under a 1 s response timeout: all three, then the end
        assert slow["data"].startswith(b"HTTP/1.1 200"), slow["data"][:200]
        for i in range(3):
            assert f"data: {i}\n\n".encode() in slow["data"]
        assert slow["data"].endswith(b"\r\n0\r\n\r\n")
        # the same pause on a route with a 10 s idle timeout: whole
        assert b"data: 0" in patient["data"] and patient["data"].endswith(b"\r\n0\r\n\r\n")
        # quiet for 4.5 s with a 3 s idle timeout: cut, the body never ends
        assert b"data: 0" in quiet["data"]
        assert not quiet["data"].endswith(b"0\r\n\r\n"), quiet["data"]
        line = p.wait_log(r"msg=request [^\n]*target=\"/quiet\"[^\n]*").group(0)
        assert "status=200" in line and "reason=upstream_idle_timeout" in line, line
        ok = p.wait_log(r"msg=request [^\n]*target=\"/events\"[^\n]*").group(0)
        assert "reason=" not in ok, ok
    finally:
        up.close()
