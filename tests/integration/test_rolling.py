"""Several pmds behind a load balancer (README "Scaling out"): the
[proxy] lb_health_path answer, pmctl drain / undrain, and a rolling deploy
through three pmds behind HAProxy standing in for a DigitalOcean Load
Balancer (`option httpchk` on lb_health_path, as the balancer's HTTP health
check), under a bounded load, with zero failed requests.

Everything on 127.0.0.1; the apps are python3 standard-library processes
(runtime = exec), so no Docker is needed.
"""
import http.client
import json
import os
import socket
import subprocess
import threading
import time

import pytest

import pmdtest
from test_supervisor_exec import APP   # answers {"tag", "node", "path", ...}

HAPROXY = "/usr/sbin/haproxy"
HEALTH = "/.pmd/health"



def sections(tmp_path, node, **proxy):
    app = tmp_path / "app.py"
    app.write_text(APP)
    return {
        "proxy": dict({"lb_health_path": HEALTH}, **proxy),
        "service app": {
            "runtime": "exec", "image": "v1",
            "command": f"{pmdtest.PYTHON} {app} ${{IMAGE}}",
            "env": f"NODE={node}",
            "health_path": "/health", "health_interval": "200ms", "health_timeout": "1s",
            "healthy_threshold": 2, "unhealthy_threshold": 2, "start_timeout": "10s",
            "drain_timeout": "1s", "stop_timeout": "2s",
        },
        "route all": {"prefix": "/", "service": "app"},
    }


def test_lb_health_path_answers(pmd_factory, tmp_path):
    """200 / 503 while draining / 503 with no live instance; GET and HEAD
    only; the app never sees the path; pmctl drain, undrain and status."""
    p = pmd_factory(sections(tmp_path, "1"))
    p.wait_healthy("app")
    r = p.get(HEALTH, headers={"Host": "any.example"})
    assert (r.status, r.body) == (200, b"ok\n"), r
    assert r.headers["Cache-Control"] == "no-store"
    assert p.request("HEAD", HEALTH).status == 200
    r = p.request("POST", HEALTH, body=b"x")
    assert r.status == 405 and r.headers["Allow"] == "GET, HEAD", r
    # a path next to it is the app's
    assert p.get(HEALTH + "x").json()["path"] == HEALTH + "x"
    assert p.get(HEALTH + "?a=1").status == 200 and p.get(HEALTH + "?a=1").body == b"ok\n"

    out = p.pmctl("drain")
    assert out.returncode == 0, out
    assert "draining" in out.stdout
    r = p.get(HEALTH)
    assert (r.status, r.body) == (503, b"draining\n"), r
    assert p.get("/still-served").json()["tag"] == "v1"     # traffic still served
    st = p.status()
    assert st["draining"] is True and st["lb_health_path"] == HEALTH
    out = p.pmctl("status")
    assert f"DRAINING: {HEALTH} answers 503" in out.stdout, out
    assert p.pmctl("drain").returncode == 0                  # idempotent
    p.wait_log(r'msg="draining: the load balancer health check answers 503"')

    out = p.pmctl("undrain")
    assert out.returncode == 0 and "undrained" in out.stdout, out
    assert p.get(HEALTH).status == 200
    assert p.status()["draining"] is False
    assert "DRAINING" not in p.pmctl("status").stdout
    assert p.pmctl("drain", "extra").returncode == 2

    # a drain may come from CI's forced-command key
    out = p.pmctl("--ssh", env={"SSH_ORIGINAL_COMMAND": "pmctl drain"})
    assert out.returncode == 0, out
    assert p.get(HEALTH).status == 503
    out = p.pmctl("--ssh", env={"SSH_ORIGINAL_COMMAND": "undrain"})
    assert out.returncode == 0 and p.get(HEALTH).status == 200, out

    # the control endpoints themselves
    r = p.control("POST", "/drain")
    assert r.status == 200 and r.json()["ok"] is True and r.json()["draining"] is True, r
    assert p.control("GET", "/drain").status == 405
    assert p.control("POST", "/undrain").json()["draining"] is False


def test_lb_health_no_live_instance_and_config(pmd_factory, tmp_path):
    """A pmd whose service has no live instance is not healthy for the
    balancer; a bad lb_health_path is refused with FILE:LINE."""
    s = sections(tmp_path, "1")
    s["service app"]["command"] = f"{pmdtest.PYTHON} -c 'import sys; sys.exit(3)'"
    p = pmd_factory(s)
    r = p.get(HEALTH)
    assert (r.status, r.body) == (503, b"no live instance of app\n"), r

    bad = tmp_path / "bad.ini"
    for value, what in (("health", "a path starting with /"), ("/a?b", "no ? or #"),
                        ("/" + "a" * 130, "at most 127 bytes")):
        bad.write_text(f"[proxy]\nhttp_listen = 127.0.0.1:1\nlb_health_path = {value}\n[tls]\nmode = off\n")
        r = pmdtest.pmd_check(bad)
        assert r.returncode != 0 and f"{bad}:3:" in r.stdout + r.stderr and what in r.stdout + r.stderr, r
    # off by default: the path is the app's
    off = sections(tmp_path, "2")
    del off["proxy"]["lb_health_path"]
    q = pmd_factory(off)
    q.wait_healthy("app")
    assert q.get(HEALTH).json()["path"] == HEALTH


class HAProxy:
    """haproxy -db on 127.0.0.1:port, one server per pmd, health-checked
    on HEALTH every 200 ms (fall 2, rise 2), with an admin stats socket."""

    def __init__(self, tmp, pmds):
        self.port = pmdtest.free_port()
        self.sock = str(tmp / "haproxy.sock")
        servers = "\n".join(f"    server pmd{i} 127.0.0.1:{p.http_port} check"
                            for i, p in enumerate(pmds, 1))
        cfg = tmp / "haproxy.cfg"
        cfg.write_text(f"""global
    stats socket {self.sock} mode 600 level admin
    maxconn 500
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout check 1s
    retries 0
frontend fe
    bind 127.0.0.1:{self.port}
    default_backend pmds
backend pmds
    balance roundrobin
    option httpchk GET {HEALTH}
    http-check expect status 200
    default-server inter 200ms fall 2 rise 2
{servers}
""")
        subprocess.run([HAPROXY, "-c", "-q", "-f", str(cfg)], check=True, timeout=30)
        self.log = open(tmp / "haproxy.log", "wb")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def status(self):
        """{server name: "UP" | "DOWN" | ...} from `show stat`."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(self.sock)
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        head = lines[0].lstrip("# ").split(",")
        out = {}
        for line in lines[1:]:
            row = dict(zip(head, line.split(",")))
            if row.get("pxname") == "pmds" and row.get("svname", "").startswith("pmd"):
                out[row["svname"]] = row["status"].split()[0]
        return out

    def wait(self, server, state, timeout=10):
        return pmdtest.wait_for(lambda: self.status().get(server) == state, timeout, 0.05,
                                what=f"haproxy {server} {state}")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


class Load:
    """`clients` threads sending GETs through the balancer on keep-alive
    connections until stop(), at most max_requests each and max_seconds in
    all. Every answer must be 200 from the app; each is recorded as
    (start time, node, tag)."""

    def __init__(self, port, clients=4, max_requests=4000, max_seconds=90):
        self.port, self.max_requests = port, max_requests
        self.deadline = time.monotonic() + max_seconds
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.ok, self.failures = [], []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(clients)]
        for t in self.threads:
            t.start()

    def _run(self, i):
        conn = None
        for n in range(self.max_requests):
            if self.done.is_set() or time.monotonic() > self.deadline:
                break
            t0 = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", f"/c{i}/{n}")
                r = conn.getresponse()
                body = r.read()
                if r.status != 200:
                    raise AssertionError(f"status {r.status}: {body[:100]!r}")
                doc = json.loads(body)
                with self.lock:
                    self.ok.append((t0, doc["node"], doc["tag"]))
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except Exception as e:  # noqa: BLE001 - every failure is recorded
                with self.lock:
                    self.failures.append((t0, i, n, repr(e)))
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(0.002)
        if conn is not None:
            conn.close()

    def stop(self):
        self.done.set()
        for t in self.threads:
            t.join(30)


@pytest.mark.skipif(not os.access(HAPROXY, os.X_OK), reason="needs haproxy (tests/deps.sh)")
def test_rolling_deploy_behind_haproxy(pmd_factory, tmp_path):
    pmds = [pmd_factory(sections(tmp_path, str(i)), name=f"pmd{i}") for i in (1, 2, 3)]
    for p in pmds:
        p.wait_healthy("app")
    lb = HAProxy(tmp_path, pmds)
    load = None
    try:
        for i in (1, 2, 3):
            lb.wait(f"pmd{i}", "UP")
        load = Load(lb.port)
        pmdtest.wait_for(lambda: {n for _, n, _ in load.ok} == {"1", "2", "3"}, 10,
                         what="every node serving")
        windows = []
        for i, p in enumerate(pmds, 1):
            out = p.pmctl("drain")
            assert out.returncode == 0, out
            lb.wait(f"pmd{i}", "DOWN")
            down_at = time.monotonic()
            out = p.pmctl("swap", "app", "v2", "--timeout", "20s")
            assert out.returncode == 0, out
            assert p.get("/x").json()["tag"] == "v2"
            time.sleep(0.3)          # requests keep flowing to the other two
            up_from = time.monotonic()
            out = p.pmctl("undrain")
            assert out.returncode == 0, out
            lb.wait(f"pmd{i}", "UP")
            windows.append((str(i), down_at, up_from))
        time.sleep(0.5)
    finally:
        if load:
            load.stop()
        lb.stop()

    assert load.failures == [], load.failures[:10]
    # the balancer sent a drained pmd no request once it had marked it down
    for node, down_at, up_from in windows:
        late = [r for r in load.ok if r[1] == node and down_at < r[0] < up_from]
        assert late == [], (node, late[:5])
    # every node served v1 before its swap and v2 after it
    last = {}
    for t0, node, tag in sorted(load.ok):
        assert not (last.get(node) == "v2" and tag == "v1"), (node, t0)
        last[node] = tag
    assert last == {"1": "v2", "2": "v2", "3": "v2"}, last
    print(f"\nrolling deploy through 3 pmds behind haproxy: {len(load.ok)} requests, "
          f"{len(load.failures)} failed")
