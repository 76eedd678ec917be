"""pmctl against a fake control server: output formats and every exit code.

pmctl is a client, so its behaviour (request shapes, table, progress lines,
exit codes 0-4, messages saying what to do) is tested here against a small
unix-socket HTTP server with canned answers; test_control.py runs it
against the real pmd.
"""
import json
import os
import pty
import re
import select
import shutil
import socket
import socketserver
import stat
import subprocess
import tempfile
import threading
import time

import pytest

import pmdtest

PMCTL = pmdtest.PMCTL

def status_doc(now):
    """A /status document as pmd sends it, its times relative to now."""
    return {
        "version": "9.9.9",
        "uptime_s": 3 * 3600 + 120,
        "services": {
            "backend": {
                "state": "live",
                "image": "reg.example/pm/backend:v2",
                "previous_image": "reg.example/pm/backend:v1",
                "instances": [
                    {"id": "b1", "color": "blue", "image": "reg.example/pm/backend:v2",
                     "port": 40001, "healthy": True, "started_at": now - 3725, "restarts": 2},
                    {"id": "g1", "color": "green", "image": "reg.example/pm/backend:v3",
                     "port": 40002, "healthy": False, "health": "starting", "role": "candidate",
                     "started_at": now - 5, "restarts": 0},
                ],
                "last_swap": {"kind": "swap", "image": "reg.example/pm/backend:v2",
                              "result": "ok", "started_at": now - 600, "duration_ms": 12400},
            },
            "frontend": {"state": "crashloop", "image": "reg.example/pm/frontend:v1",
                         "instances": [], "error": "exited with code 1"},
        },
        "tls": {"mode": "acme", "domains": ["meatscentral.com", "www.meatscentral.com"],
                "not_after": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 62 * 86400 + 3600)),
                "issuer": "Pebble", "last_error": "rate limited"},
        "proxy": {"connections": 7, "h2_connections": 2, "requests_total": 12345,
                  "responses": {"1xx": 0, "2xx": 12000, "3xx": 300, "4xx": 40, "5xx": 5},
                  "upstream_errors": 3},
    }


IMG3 = "reg.example/pm/backend:v3"
# the shapes supervisor/swap.c emits
SWAP_EVENTS = [
    {"event": "pull", "service": "backend", "image": IMG3, "detail": "layer 1/2 1.0MiB/2.0MiB"},
    {"event": "pull", "service": "backend", "image": IMG3, "detail": "layers 2/2 done"},
    {"event": "release", "service": "backend", "image": IMG3, "command": "manage.py migrate"},
    {"event": "release", "service": "backend", "image": IMG3, "exit_code": 0},
    {"event": "start", "service": "backend", "image": IMG3, "color": "green"},
    {"event": "health", "service": "backend", "image": IMG3, "pass": False, "passes": 0,
     "fails": 1, "needed": 2, "error": "HTTP 500"},
    {"event": "health", "service": "backend", "image": IMG3, "pass": True, "passes": 1,
     "fails": 0, "needed": 2},
    {"event": "health", "service": "backend", "image": IMG3, "pass": True, "passes": 2,
     "fails": 0, "needed": 2},
    {"event": "switch", "service": "backend", "image": IMG3, "color": "green"},
    {"event": "drain", "inflight": 2},
    {"event": "drain", "inflight": 0},
    {"event": "done"},
    {"event": "prune", "service": "backend", "removed": 1},
]
SWAP_LINES = [
    "backend pull reg.example/pm/backend:v3: layer 1/2 1.0MiB/2.0MiB",
    "backend pull reg.example/pm/backend:v3: layers 2/2 done",
    "backend release: running `manage.py migrate`",
    "backend release: exited with code 0",
    "backend start green candidate reg.example/pm/backend:v3",
    "backend health 0/2 (check failed: HTTP 500)",
    "backend health 1/2",
    "backend health 2/2",
    "backend switch: green is live",
    "drain: 2 requests in flight on the old instance",
    "drain: 0 requests in flight on the old instance",
    "done",
    "backend prune removed=1",   # an event pmctl does not know: generic fields
]


class FakePmd:
    """A unix-socket HTTP/1.1 server. `routes` maps (METHOD, PATH) to a
    function(body_bytes) -> action; actions: ("json", status, obj),
    ("text", status, str), ("stream", [objects], result_or_None, delay),
    ("close",) closes without answering. Requests are recorded."""

    def __init__(self, path):
        self.path = path
        self.requests = []
        self.routes = {}
        fake = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                fake._handle(self.request)

        self.server = socketserver.ThreadingUnixStreamServer(path, Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        if os.path.exists(self.path):
            os.unlink(self.path)

    def _handle(self, s):
        s.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
        n = int(headers.get("content-length", "0"))
        while len(body) < n:
            body += s.recv(65536)
        self.requests.append({"method": method, "target": target, "headers": headers,
                              "body": json.loads(body) if body else None})
        path = target.split("?", 1)[0]
        fn = self.routes.get((method, path))
        action = fn(body) if fn else ("json", 404, {"ok": False, "error": "not found"})
        kind = action[0]
        if kind == "close":
            return
        if kind in ("json", "text"):
            payload = (json.dumps(action[2]) + "\n") if kind == "json" else action[2]
            payload = payload.encode()
            ctype = "application/json" if kind == "json" else "text/plain"
            s.sendall(f"HTTP/1.1 {action[1]} X\r\nContent-Type: {ctype}\r\n"
                      f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
            return
        events, result, delay = action[1], action[2], action[3]
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                  b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        for ev in events + ([result] if result is not None else []):
            line = (json.dumps(ev) + "\n").encode()
            s.sendall(b"%x\r\n%s\r\n" % (len(line), line))
            time.sleep(delay)
        if result is not None:
            s.sendall(b"0\r\n\r\n")
        # result None: the connection just ends mid-stream


@pytest.fixture
def fake(tmp_path):
    f = FakePmd(str(tmp_path / "control.sock"))
    yield f
    f.close()


def run(sock, *args, env=None, timeout=30):
    e = dict(os.environ)
    e.pop("PMD_SOCKET", None)
    e.update(env or {})
    argv = [PMCTL] + (["-s", sock] if sock else []) + list(args)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=e)


# -- status ------------------------------------------------------------------

def test_status_table(fake):
    fake.routes[("GET", "/status")] = lambda b: ("json", 200, status_doc(time.time()))
    r = run(fake.path, "status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "pmd 9.9.9, up 3h2m"
    hdr = next(i for i, l in enumerate(lines) if l.startswith("SERVICE"))
    assert lines[hdr].split() == ["SERVICE", "STATE", "COLOR", "IMAGE", "HEALTH", "UPTIME", "RESTARTS"]
    rows = [l.split() for l in lines[hdr + 1:hdr + 4]]
    assert rows[0] == ["backend", "live", "blue", "reg.example/pm/backend:v2", "healthy", "1h2m", "2"]
    assert rows[1][:6] == ["backend", "live", "green", "reg.example/pm/backend:v3", "starting", "(candidate)"]
    assert rows[1][7] == "0"
    assert rows[2] == ["frontend", "crashloop", "-", "reg.example/pm/frontend:v1", "-", "-", "-"]
    assert "frontend: exited with code 1" in lines
    # columns are aligned: every row's IMAGE starts where the header's does
    col = lines[hdr].index("IMAGE")
    for l in lines[hdr + 1:hdr + 4]:
        assert l[col - 2:col] == "  " and l[col] != " "
    assert "last swap of backend: reg.example/pm/backend:v2 ok, 10m0s ago, took 12.4s" in r.stdout
    tls = next(l for l in lines if l.startswith("TLS:"))
    assert "acme meatscentral.com, www.meatscentral.com" in tls
    assert "expires in 62 days" in tls
    assert "last error: rate limited" in tls
    assert "Proxy: 7 connections open (2 HTTP/2), 12345 requests, 5 5xx, 3 upstream errors" in r.stdout
    assert fake.requests[0]["method"] == "GET" and fake.requests[0]["target"] == "/status"


def test_status_json_prints_the_document(fake):
    fake.routes[("GET", "/status")] = lambda b: ("json", 200, status_doc(time.time()))
    r = run(fake.path, "status", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["services"]["backend"]["instances"][0]["id"] == "b1"
    assert json.loads(r.stdout)["tls"]["issuer"] == "Pebble"


def test_socket_from_environment(fake):
    fake.routes[("GET", "/status")] = lambda b: ("json", 200, status_doc(time.time()))
    r = run(None, "status", env={"PMD_SOCKET": fake.path})
    assert r.returncode == 0, r.stderr
    assert "backend" in r.stdout


def test_status_server_error_is_exit_1(fake):
    fake.routes[("GET", "/status")] = lambda b: ("json", 500, {"ok": False, "error": "boom"})
    r = run(fake.path, "status")
    assert r.returncode == 1
    assert "status: boom" in r.stderr


# -- swap --------------------------------------------------------------------

def test_swap_success_plain_lines(fake):
    fake.routes[("POST", "/services/backend/swap")] = lambda b: (
        "stream", SWAP_EVENTS, {"ok": True, "services": {"backend": IMG3}, "duration_ms": 12345}, 0)
    r = run(fake.path, "swap", "backend", IMG3, "--timeout", "90s")
    assert r.returncode == 0, r.stderr
    req = fake.requests[0]
    assert req["method"] == "POST" and req["target"] == "/services/backend/swap"
    assert req["body"] == {"image": IMG3, "timeout": "90s"}
    assert req["headers"]["content-type"] == "application/json"
    lines = r.stdout.splitlines()
    # one timestamped line per event, in order, then the result
    assert len(lines) == len(SWAP_EVENTS) + 1
    assert all(re.match(r"^\[\d\d:\d\d:\d\d\] ", l) for l in lines[:-1])
    assert [l[11:] for l in lines[:-1]] == SWAP_LINES
    assert "\r" not in r.stdout and "\x1b" not in r.stdout
    assert lines[-1] == f"swap of backend to {IMG3}: done, live after 12.3s"


def test_swap_several_services_is_one_request(fake):
    fake.routes[("POST", "/swap")] = lambda b: ("stream", [], {"ok": True, "error": None}, 0)
    r = run(fake.path, "swap", "backend", "b:2", "frontend", "f:2", "--timeout=5m")
    assert r.returncode == 0, r.stderr
    assert fake.requests[0]["body"] == {"services": {"backend": "b:2", "frontend": "f:2"},
                                        "timeout": "5m"}


def test_swap_failure_prints_reason_and_logs(fake):
    result = {"ok": False, "error": "health gate not passed within 20s: GET /api/v1/health/ answered 500",
              "logs": ["Traceback (most recent call last):", "ValueError: no DATABASE_URL"]}
    fake.routes[("POST", "/services/backend/swap")] = lambda b: ("stream", SWAP_EVENTS[:4], result, 0)
    r = run(fake.path, "swap", "backend", "img:bad")
    assert r.returncode == 1
    assert "swap of backend to img:bad failed: health gate not passed within 20s" in r.stderr
    assert "last log lines of the failed instance:" in r.stderr
    assert "  | ValueError: no DATABASE_URL" in r.stderr


def test_swap_conflict_is_exit_4(fake):
    fake.routes[("POST", "/services/backend/swap")] = lambda b: (
        "json", 409, {"ok": False, "error": "a swap of backend is already running"})
    r = run(fake.path, "swap", "backend", "img:2")
    assert r.returncode == 4
    assert "a swap of backend is already running" in r.stderr


def test_swap_refused_input_is_exit_1(fake):
    fake.routes[("POST", "/services/nosuch/swap")] = lambda b: (
        "json", 404, {"ok": False, "error": "unknown service \"nosuch\""})
    r = run(fake.path, "swap", "nosuch", "img:2")
    assert r.returncode == 1
    assert 'unknown service "nosuch"' in r.stderr


def test_swap_connection_lost_mid_stream(fake):
    fake.routes[("POST", "/services/backend/swap")] = lambda b: ("stream", SWAP_EVENTS[:2], None, 0)
    r = run(fake.path, "swap", "backend", "img:2")
    assert r.returncode == 1
    assert "connection to pmd lost during swap of backend to img:2" in r.stderr
    assert "check `pmctl status`" in r.stderr
    assert SWAP_LINES[1] in r.stdout


def test_rollback_and_restart_paths(fake):
    ok = lambda b: ("stream", [{"event": "switch", "service": "backend"}], {"ok": True, "error": None}, 0)
    fake.routes[("POST", "/services/backend/rollback")] = ok
    fake.routes[("POST", "/services/backend/restart")] = ok
    r = run(fake.path, "rollback", "backend")
    assert r.returncode == 0, r.stderr
    assert "rollback of backend: done, live" in r.stdout
    r = run(fake.path, "restart", "backend", "--timeout", "30s")
    assert r.returncode == 0, r.stderr
    assert fake.requests[0]["body"] is None
    assert fake.requests[1]["body"] == {"timeout": "30s"}


def read_pty(argv, env, timeout=20):
    """Run argv with stdout on a pseudo-terminal; (exit code, output)."""
    master, slave = pty.openpty()
    p = subprocess.Popen(argv, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([master], [], [], 0.2)
        if r:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif p.poll() is not None:
            break
    os.close(master)
    return p.wait(5), out.decode(errors="replace")


def test_swap_on_a_terminal_rewrites_one_line_per_phase(fake):
    fake.routes[("POST", "/services/backend/swap")] = lambda b: (
        "stream", SWAP_EVENTS, {"ok": True, "error": None}, 0.05)
    rc, out = read_pty([PMCTL, "-s", fake.path, "swap", "backend", "img:3"], dict(os.environ))
    assert rc == 0, out
    # repeated events of one phase rewrite the line in place
    assert ("\r\x1b[Kbackend health 0/2 (check failed: HTTP 500)\r\x1b[Kbackend health 1/2"
            "\r\x1b[Kbackend health 2/2\r\n") in out
    # a new phase leaves the previous one on its own line
    assert "layers 2/2 done\r\n\r\x1b[Kbackend release" in out
    assert "[" not in out.split("\r\x1b[K")[1][:1]   # no timestamps on a terminal
    assert "done, live" in out


# -- logs, reload ------------------------------------------------------------

def test_logs(fake):
    fake.routes[("GET", "/services/backend/logs")] = lambda b: ("text", 200, "one\ntwo\n")
    r = run(fake.path, "logs", "backend", "--tail", "5")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "one\ntwo\n"
    assert fake.requests[0]["target"] == "/services/backend/logs?tail=5"
    r = run(fake.path, "logs", "backend")
    assert fake.requests[1]["target"] == "/services/backend/logs?tail=100"


def test_reload(fake):
    answers = [("json", 200, {"ok": True, "error": None}),
               ("json", 422, {"ok": False, "error": "pmd.ini:3: unknown key \"bogus\""})]
    fake.routes[("POST", "/reload")] = lambda b: answers.pop(0)
    r = run(fake.path, "reload")
    assert r.returncode == 0, r.stderr
    assert "configuration reloaded" in r.stdout
    r = run(fake.path, "reload")
    assert r.returncode == 1
    assert 'reload failed: pmd.ini:3: unknown key "bogus"' in r.stderr


# -- reaching the socket ------------------------------------------------------

def test_no_socket_is_exit_3(tmp_path):
    r = run(str(tmp_path / "none.sock"), "status")
    assert r.returncode == 3
    assert f"pmd is not running (no socket at {tmp_path / 'none.sock'})" in r.stderr


def test_stale_socket_is_exit_3(tmp_path):
    path = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()  # bound, never listened: connect is refused
    r = run(path, "swap", "backend", "img:1")
    assert r.returncode == 3
    assert "pmd is not running" in r.stderr


def test_closed_without_answer_is_exit_3(fake):
    fake.routes[("GET", "/status")] = lambda b: ("close",)
    r = run(fake.path, "status")
    assert r.returncode == 3
    assert "closed the connection without answering" in r.stderr
    assert "not allowed" in r.stderr


@pytest.fixture
def shared_dir():
    """A folder other users can traverse (pytest's tmp_path is 0700)."""
    d = tempfile.mkdtemp(prefix="pmctl-test-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_permission_denied_names_user_and_group(shared_dir):
    import grp
    path = os.path.join(shared_dir, "control.sock")
    f = FakePmd(path)
    try:
        group = grp.getgrgid(1).gr_name   # "daemon": nobody is not a member
        os.chown(path, 0, 1)
        os.chmod(path, 0o660)
        r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                            PMCTL, "-s", path, "status"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 3, r.stderr
        assert (f"permission denied on {path}: add user 'nobody' to group '{group}' "
                "(see control_group)") in r.stderr
        assert f.requests == []
    finally:
        f.close()


# -- usage -------------------------------------------------------------------

@pytest.mark.parametrize("args,msg", [
    ([], "Usage: pmctl"),
    (["frobnicate"], "unknown command 'frobnicate'"),
    (["--bogus"], "unknown option '--bogus'"),
    (["swap", "backend"], "expected SERVICE IMAGE pairs, got 1 argument"),
    (["swap", "backend", "img", "frontend"], "expected SERVICE IMAGE pairs, got 3 arguments"),
    (["swap", "backend", "img", "--timeout", "90x"], "--timeout: expected a duration like 90s"),
    (["swap", "backend", "img", "--timeout"], "--timeout: expected a value"),
    (["swap", "back/end", "img"], "'back/end' is not a service name"),
    (["swap", "backend", "a", "backend", "b"], "service 'backend' given twice"),
    (["rollback"], "expected one SERVICE, got 0 arguments"),
    (["restart", "a", "b"], "expected one SERVICE, got 2 arguments"),
    (["logs", "backend", "--tail", "0"], "--tail: expected a number of lines"),
    (["logs"], "expected a SERVICE"),
    (["status", "--yaml"], "unexpected argument '--yaml'"),
    (["reload", "now"], "unexpected argument 'now'"),
])
def test_usage_errors_are_exit_2(fake, args, msg):
    r = run(fake.path, *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert msg in r.stderr
    assert fake.requests == []   # nothing was sent


@pytest.mark.parametrize("cmd", ["status", "swap", "rollback", "restart", "logs", "reload"])
def test_command_help(cmd):
    r = run(None, cmd, "--help")
    assert r.returncode == 0
    assert r.stdout.startswith(f"Usage: pmctl [-s SOCKET] {cmd}")


def test_global_help_and_version():
    r = run(None, "--help")
    assert r.returncode == 0
    for cmd in ("status", "swap SERVICE IMAGE", "rollback", "restart", "logs", "reload"):
        assert cmd in r.stdout
    assert "3 cannot reach the socket" in r.stdout
    r = run(None, "--version")
    assert r.returncode == 0
    assert re.match(r"^pmctl \d+\.\d+\.\d+\n$", r.stdout)


# -- --ssh forced command -----------------------------------------------------

def test_ssh_forced_command(fake):
    fake.routes[("GET", "/status")] = lambda b: ("json", 200, status_doc(time.time()))
    fake.routes[("POST", "/services/backend/swap")] = lambda b: ("stream", [], {"ok": True, "error": None}, 0)
    ok = run(fake.path, "--ssh", env={"SSH_ORIGINAL_COMMAND": "pmctl status"})
    assert ok.returncode == 0, ok.stderr
    assert "SERVICE" in ok.stdout
    ok = run(fake.path, "--ssh", env={"SSH_ORIGINAL_COMMAND": "pmctl swap backend reg.example/pm/backend:uat-abc1234 --timeout 300s"})
    assert ok.returncode == 0, ok.stderr
    assert fake.requests[-1]["body"] == {"image": "reg.example/pm/backend:uat-abc1234", "timeout": "300s"}
    n = len(fake.requests)
    for cmd, msg in [("pmctl reload", "'reload' is not allowed"),
                     ("pmctl swap backend img;rm -rf /", "character ';' not allowed"),
                     ("pmctl -s /tmp/other.sock status", "the socket cannot be chosen"),
                     ("bash", "'bash' is not allowed"),
                     ("", "no command given")]:
        r = run(fake.path, "--ssh", env={"SSH_ORIGINAL_COMMAND": cmd})
        assert r.returncode == 2, (cmd, r.stderr)
        assert msg in r.stderr, (cmd, r.stderr)
    assert len(fake.requests) == n
