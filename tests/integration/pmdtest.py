"""Shared helpers of pmd's integration tests (standard library only).

- free_port(): a free TCP port on 127.0.0.1.
- Pmd: writes a config into a temp folder, runs `$PMD_BUILD/pmd run -c`,
  talks to its control socket, runs pmctl, stops it by PID and checks that
  it left no process behind and reported no sanitizer error.
- BackendServer: an in-process threaded HTTP server with /api/v1/health/
  and JSON endpoints, for `runtime = external` services and as a peer.
- http_request(): one request with http.client, returning a Response.
- wait_for(): poll a predicate, bounded in time.
- docker(): the docker CLI against the test dockerd.

Everything binds and connects on 127.0.0.1 only.
"""

import http.client
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("PMD_BUILD") or os.path.join(REPO, "build")
PMD = os.path.join(BUILD, "pmd")
PMCTL = os.path.join(BUILD, "pmctl")
PYTHON = "/usr/bin/python3"
DEMO_DIR = os.path.join(REPO, "examples", "demo")

# Lines a sanitizer prints when it finds a bug (ASan, LSan, UBSan).
SANITIZER_RE = re.compile(r"ERROR: (Address|Leak|Thread)Sanitizer|runtime error: ")


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_unix(path, handle, backlog=64):
    """Listen on the unix socket path; every connection accepted goes to
    handle(conn) in a thread of its own, until the returned listening
    socket is closed (the accept loop notices within 0.2 s)."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(backlog)
    srv.settimeout(0.2)

    def loop():
        while True:
            try:
                c, _ = srv.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            c.settimeout(None)
            threading.Thread(target=handle, args=(c,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return srv


def relay(src, dst):
    """Copy src to dst until src ends or fails, then half-close dst (its
    reader sees EOF, as from the real peer)."""
    try:
        while True:
            d = src.recv(65536)
            if not d:
                break
            dst.sendall(d)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def wait_for(pred, timeout=10.0, interval=0.05, what="condition"):
    """Call pred() until it returns a true value (returned) or timeout
    seconds pass (AssertionError). Exceptions count as false."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - polled condition may raise until ready
            last = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                                 + (f" (last error: {last!r})" if last else ""))
        time.sleep(interval)


def in_threads(calls, meanwhile=None, timeout=30.0):
    """Run each (fn, args) of calls in a thread of its own, meanwhile() (if
    given) in this one, then wait for the threads. Returns meanwhile's value."""
    threads = [threading.Thread(target=fn, args=args) for fn, args in calls]
    for t in threads:
        t.start()
    try:
        return meanwhile() if meanwhile is not None else None
    finally:
        for t in threads:
            t.join(timeout)


class Response:
    """status, reason, headers (http.client.HTTPMessage), body (bytes)."""

    def __init__(self, resp, body):
        self.status = resp.status
        self.reason = resp.reason
        self.headers = resp.headers
        self.body = body
        self.version = resp.version

    def json(self):
        return json.loads(self.body)

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def __repr__(self):
        return f"<Response {self.status} {self.body[:200]!r}>"


def http_request(port, path="/", method="GET", headers=None, body=None,
                 host="127.0.0.1", timeout=10.0, conn=None):
    """One HTTP/1.1 request to host:port. Pass conn (an
    http.client.HTTPConnection) to reuse a keep-alive connection."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Response(resp, resp.read())
    finally:
        if own:
            conn.close()


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over an AF_UNIX socket (the control socket)."""

    def __init__(self, path, timeout=30.0):
        super().__init__("pmd", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.unix_path)
        except OSError:
            s.close()
            raise
        self.sock = s


def _ini_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def render_ini(sections):
    """{"section name": {key: value or [values]}} -> INI text. A list value
    is a repeatable key (one line per item)."""
    out = []
    for name, keys in sections.items():
        out.append(f"[{name}]")
        for k, v in keys.items():
            for item in (v if isinstance(v, (list, tuple)) else [v]):
                out.append(f"{k} = {_ini_value(item)}")
        out.append("")
    return "\n".join(out)


def _children(pid):
    """PIDs of the live descendants of pid (from /proc)."""
    parents = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if fields[0] == "Z":
            continue
        parents.setdefault(int(fields[1]), []).append(int(d))
    found, todo = [], [pid]
    while todo:
        for c in parents.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


def _in_dir(path):
    """PIDs of live processes whose working directory is path or below."""
    path = os.path.realpath(path)
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{d}/cwd")
        except OSError:
            continue
        if cwd.endswith(" (deleted)"):
            cwd = cwd[:-len(" (deleted)")]
        if (cwd == path or cwd.startswith(path + "/")) and _alive(int(d)):
            found.append(int(d))
    return found


def _alive(pid):
    """True if pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] != "Z"


class Pmd:
    """One pmd under test, all of its files in `tmp` (a pathlib.Path).

    sections: {"section": {key: value}} merged over defaults that keep
    everything in tmp and on loopback: [pmd] state_dir, control_socket,
    control_group = root, log_level = debug, docker_socket (the test dockerd
    when there is one); [proxy] http_listen = 127.0.0.1:<free port>,
    workers = 2; [tls] mode = off. Pass config_text instead to write a file
    verbatim (then http_ports/socket must match it, or pass them).
    """

    def __init__(self, tmp, sections=None, config_text=None, http_port=None,
                 name="pmd", env=None, cwd=None):
        self.tmp = tmp
        self.dir = tmp / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "pmd.ini"
        self.log_path = self.dir / "pmd.log"
        self.socket = str(self.dir / "control.sock")
        self.state_dir = str(self.dir / "state")
        self.http_port = http_port or free_port()
        self.env = dict(os.environ, **(env or {}))
        self.cwd = str(cwd or self.dir)  # relative paths in the config resolve here
        self.proc = None
        self.wrapper = []           # command words before pmd (socket activation)
        self.pass_fds = ()          # descriptors pmd inherits
        self._log = None
        self._children = set()
        self._sampler = None
        if config_text is None:
            merged = {
                "pmd": {
                    "state_dir": self.state_dir,
                    "control_socket": self.socket,
                    "control_group": "root",
                    "log_level": "debug",
                },
                "proxy": {"http_listen": f"127.0.0.1:{self.http_port}", "workers": 2},
                "tls": {"mode": "off"},
            }
            docker = os.environ.get("PMD_TEST_DOCKER_SOCKET")
            if docker:
                merged["pmd"]["docker_socket"] = docker
            for sec, keys in (sections or {}).items():
                merged.setdefault(sec, {}).update(keys)
            config_text = render_ini(merged)
        self.config_text = config_text
        self.config_path.write_text(config_text)

    # -- lifecycle ---------------------------------------------------------

    def start(self, wait=True, timeout=20.0):
        """Start `pmd run -c`; with wait, return once the control socket
        answers /status and the HTTP listener accepts."""
        assert os.access(PMD, os.X_OK), f"{PMD} is not built (make, or set PMD_BUILD)"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.wrapper + [PMD, "run", "-c", str(self.config_path)],
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=self.env,
                                     cwd=self.cwd, pass_fds=self.pass_fds)
        # Remember every descendant while pmd runs: one that is orphaned
        # before stop() (a wrapper shell exited, say) is still pmd's.
        self._sampler = threading.Thread(target=self._sample, args=(self.proc,), daemon=True)
        self._sampler.start()
        if wait:
            self.wait_ready(timeout)
        return self

    def _sample(self, proc):
        while proc.poll() is None:
            self._children.update(_children(proc.pid))
            time.sleep(0.2)

    def wait_ready(self, timeout=20.0):
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"pmd exited with {self.proc.returncode}:\n"
                                     + self.log_tail())
            self.status()
            with socket.create_connection(("127.0.0.1", self.http_port), timeout=1):
                pass
            return True
        try:
            wait_for(ready, timeout, what="pmd control socket and listener")
        except AssertionError as e:
            if self.proc.poll() is not None:
                raise
            raise AssertionError(f"{e}\n--- pmd log ---\n{self.log_tail()}") from None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def reload(self):
        """SIGHUP."""
        self.signal(signal.SIGHUP)

    def stop(self, timeout=10.0, check=True):
        """SIGTERM, SIGKILL after timeout. With check: pmd exited 0, its
        child processes are gone (up to a grace period for their own
        stop_timeout) and its log holds no sanitizer report."""
        if self.proc is None:
            return None
        self._children.update(_children(self.proc.pid))
        killed = False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                killed = True
                self.proc.kill()
                self.proc.wait(10)
        rc = self.proc.returncode
        self._log.close()
        self._sampler.join(5)
        if self.cwd.startswith(str(self.dir)):
            self._children.update(_in_dir(self.cwd))
        left = []
        deadline = time.monotonic() + 15
        while True:
            left = [p for p in self._children if _alive(p)]
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        for p in left:  # never leave them behind, even when the check fails
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        self.proc = None
        if check:
            log = self.log_text()
            assert not killed, f"pmd ignored SIGTERM for {timeout}s:\n{self.log_tail(log)}"
            assert not left, f"pmd left processes behind: {left}\n{self.log_tail(log)}"
            assert not SANITIZER_RE.search(log), f"sanitizer report:\n{self.log_tail(log, 80)}"
            assert rc == 0, f"pmd exited with {rc} after SIGTERM:\n{self.log_tail(log)}"
        return rc

    def kill9(self):
        """SIGKILL pmd alone (its instances keep running, as after a crash)."""
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()
        self._sampler.join(5)
        self.proc = None

    def children(self):
        """Live descendant PIDs of pmd (its exec instances and theirs);
        remembered, so that stop() also checks they are gone."""
        kids = _children(self.proc.pid)
        self._children.update(kids)
        return kids

    # -- observing ---------------------------------------------------------

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, text=None, n=40):
        lines = (self.log_text() if text is None else text).splitlines()
        return "\n".join(lines[-n:])

    def wait_log(self, pattern, timeout=10.0):
        """Wait until the log matches regex pattern; return the match."""
        rx = re.compile(pattern)
        return wait_for(lambda: rx.search(self.log_text()), timeout,
                        what=f"log line matching {pattern!r}")

    def url(self, path="/"):
        return f"http://127.0.0.1:{self.http_port}{path}"

    def get(self, path="/", **kw):
        return http_request(self.http_port, path, **kw)

    def request(self, method, path, **kw):
        return http_request(self.http_port, path, method=method, **kw)

    # -- control socket and pmctl -----------------------------------------

    def control(self, method, path, body=None, timeout=60.0):
        """One request on the control socket; body (dict) is sent as JSON.
        Returns a Response."""
        conn = UnixHTTPConnection(self.socket, timeout=timeout)
        try:
            headers = {}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return Response(resp, resp.read())
        finally:
            conn.close()

    def control_stream(self, method, path, body=None, timeout=300.0):
        """A streaming control request (swap, rollback, restart): returns
        (status, [JSON objects, one per line, as they arrived])."""
        conn = UnixHTTPConnection(self.socket, timeout=timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data,
                         headers={"Content-Type": "application/json"} if data else {})
            resp = conn.getresponse()
            events = []
            for line in resp:
                line = line.strip()
                if line:
                    events.append(json.loads(line))
            return resp.status, events
        finally:
            conn.close()

    def status(self):
        """The /status document."""
        r = self.control("GET", "/status", timeout=10.0)
        assert r.status == 200, r
        return r.json()

    def service(self, name):
        return self.status()["services"][name]

    def wait_healthy(self, service, timeout=20.0):
        """Wait until service has a healthy instance; return its status."""
        def healthy():
            s = self.service(service)
            return s if any(i.get("healthy") for i in s.get("instances", [])) else None
        return wait_for(healthy, timeout, interval=0.1, what=f"{service} healthy")

    def pmctl(self, *args, timeout=120.0, input=None, env=None):
        """Run `pmctl -s SOCKET ARGS...`; returns CompletedProcess (text)."""
        assert os.access(PMCTL, os.X_OK), f"{PMCTL} is not built"
        return subprocess.run([PMCTL, "-s", self.socket, *args], capture_output=True,
                              text=True, timeout=timeout, input=input,
                              env=dict(self.env, **(env or {})))

    def check(self, config_path=None):
        """`pmd check -c FILE` (this pmd's config by default)."""
        return pmd_check(config_path or self.config_path, env=self.env, cwd=self.cwd)


def pmd_check(path, env=None, cwd=None):
    """Run `pmd check -c path`; CompletedProcess with text output."""
    assert os.access(PMD, os.X_OK), f"{PMD} is not built"
    return subprocess.run([PMD, "check", "-c", str(path)], capture_output=True, text=True,
                          timeout=30, env=env, cwd=cwd)


def demo_backend_command():
    """exec `command` running the demo backend (binds 127.0.0.1:$PORT)."""
    return f"{PYTHON} {os.path.join(DEMO_DIR, 'backend.py')}"


def demo_frontend_command():
    """exec `command` running the demo static frontend (127.0.0.1:$PORT)."""
    return f"{PYTHON} {os.path.join(DEMO_DIR, 'frontend.py')}"


def docker(*args, check=True, timeout=120):
    """Run the docker CLI against the test dockerd; CompletedProcess (text)."""
    sock = os.environ["PMD_TEST_DOCKER_SOCKET"]
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                          check=check, env=dict(os.environ, DOCKER_HOST=f"unix://{sock}"))


def docker_rm_pmd_containers():
    ids = docker("ps", "-aq", "--filter", "label=pmd.service").stdout.split()
    if ids:
        docker("rm", "-f", *ids, check=False)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, code, doc, headers=None):
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self):
        srv = self.server.owner
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self._read_chunked()
        else:
            body = self.rfile.read(int(length)) if length else b""
        rec = {"method": self.command, "path": self.path,
               "headers": dict(self.headers.items()), "body": body,
               "peer": self.client_address, "conn": id(self.connection)}
        with srv.lock:
            srv.requests.append(rec)
        handler = srv.routes.get(self.path.split("?", 1)[0])
        if handler is not None:
            code, doc = handler(rec)
            return self._reply(code, doc)
        if self.path.startswith("/api/v1/health/"):
            return self._reply(200 if srv.healthy else 503, {"ok": srv.healthy, "name": srv.name})
        if self.path.startswith("/api/v1/echo"):
            return self._reply(200, {"method": self.command, "path": self.path,
                                     "headers": rec["headers"],
                                     "body": body.decode("latin-1"), "name": srv.name})
        return self._reply(200, {"name": srv.name, "path": self.path, "method": self.command})

    def _read_chunked(self):
        out = b""
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return out
            out += self.rfile.read(size)
            self.rfile.readline()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 256     # many streams of one HTTP/2 client connect at once


class BackendServer:
    """In-process threaded HTTP/1.1 server on 127.0.0.1:port.

    GET /api/v1/health/ -> 200 {"ok": true} (503 when .healthy is False);
    /api/v1/echo... -> the request as JSON (method, path, headers, body);
    anything else -> {"name", "path", "method"}. .routes maps a path to
    fn(request_record) -> (status, doc). .requests records every request.
    Use as a context manager or call close()."""

    def __init__(self, name="backend", port=None):
        self.name = name
        self.healthy = True
        self.routes = {}
        self.requests = []
        self.lock = threading.Lock()
        self.port = port or free_port()
        self.httpd = _Server(("127.0.0.1", self.port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
