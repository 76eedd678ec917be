"""The control socket of the real pmd: /status shape, errors (400/404/405/
408/431), NDJSON swap streams, 409, a requester leaving mid-swap, /metrics,
/reload, socket ownership and SO_PEERCRED access control."""
import grp
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time

import pytest

import pmdtest

BACKEND = {"runtime": "exec", "command": pmdtest.demo_backend_command(), "port": 8000,
           "health_interval": "200ms", "healthy_threshold": 2}


def backend_pmd(pmd_factory, pmd_extra=None, backend_extra=None):
    sections = {"service backend": dict(BACKEND, **(backend_extra or {})),
                "route api": {"prefix": "/", "service": "backend"}}
    if pmd_extra:
        sections["pmd"] = pmd_extra
    p = pmd_factory(sections, start=False)
    p.socket = (pmd_extra or {}).get("control_socket", p.socket)
    p.start()
    p.wait_healthy("backend")
    return p


def raw(sock_path, data, timeout=15.0):
    """Send bytes, read until the server closes; returns the bytes."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(sock_path)
    try:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
    finally:
        s.close()


def test_status_document(pmd_factory):
    p = backend_pmd(pmd_factory)
    r = p.control("GET", "/status")
    assert r.status == 200
    assert r.headers["Content-Type"] == "application/json"
    st = r.json()
    assert re.match(r"^\d+\.\d+\.\d+", st["version"])
    assert isinstance(st["uptime_s"], (int, float))
    svc = st["services"]["backend"]
    for key in ("state", "image", "previous_image", "instances", "last_swap"):
        assert key in svc, key
    inst = svc["instances"][0]
    for key in ("id", "color", "image", "port", "healthy", "started_at", "restarts"):
        assert key in inst, key
    assert inst["healthy"] is True
    assert st["tls"]["mode"] == "off"
    assert {"connections", "requests_total"} <= set(st["proxy"])

    r = p.pmctl("status")
    assert r.returncode == 0, r.stderr
    assert re.search(r"(?m)^backend\s+\S+\s+(blue|green)\s+\S+\s+healthy\s", r.stdout), r.stdout
    r = p.pmctl("status", "--json")
    assert json.loads(r.stdout)["services"]["backend"]["instances"][0]["id"] == inst["id"]


def test_errors_are_json_and_start_nothing(pmd_factory):
    p = backend_pmd(pmd_factory)
    before = p.service("backend")

    def err(method, path, body=None, status=400, raw_body=None):
        if raw_body is not None:
            conn = pmdtest.UnixHTTPConnection(p.socket)
            conn.request(method, path, body=raw_body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            r = pmdtest.Response(resp, resp.read())
            conn.close()
        else:
            r = p.control(method, path, body)
        assert r.status == status, (method, path, r)
        doc = r.json()
        assert doc["ok"] is False and doc["error"], doc
        return r, doc["error"]

    r, e = err("GET", "/nope", status=404)
    r, e = err("POST", "/status", status=405)
    assert r.headers["Allow"] == "GET"
    r, e = err("GET", "/swap", status=405)
    assert r.headers["Allow"] == "POST"
    r, e = err("GET", "/services/backend/restart", status=405)
    r, e = err("POST", "/services/backend/frobnicate", status=404)
    r, e = err("POST", "/services/backend/swap", raw_body=b'{"image":', status=400)
    assert "malformed JSON" in e
    r, e = err("POST", "/services/backend/swap", raw_body=b'{"image":"a"} x', status=400)
    assert "trailing data" in e
    r, e = err("POST", "/services/backend/swap", {"image": 5})
    assert e == "image: expected an image reference string"
    r, e = err("POST", "/services/backend/swap", {"image": "a", "bogus": 1})
    assert e == 'unknown field "bogus"'
    r, e = err("POST", "/services/backend/swap", {"image": "a", "timeout": "9x"})
    assert "timeout: expected a duration" in e
    r, e = err("POST", "/services/backend/swap", raw_body=b"[1]")
    assert "expected a JSON object" in e
    r, e = err("POST", "/swap", {"services": {}})
    r, e = err("POST", "/swap", {"services": {"backend": 1}})
    r, e = err("POST", "/services/nosuch/swap", {"image": "a"}, status=404)
    r, e = err("GET", "/services/nosuch/logs", status=404)
    r, e = err("GET", "/services/backend/logs?tail=0", status=400)
    r, e = err("GET", "/services/backend/logs?tail=x", status=400)

    after = p.service("backend")
    assert after["last_swap"] == before["last_swap"]
    assert [i["id"] for i in after["instances"]] == [i["id"] for i in before["instances"]]


def test_bad_http_is_refused(pmd_factory):
    p = backend_pmd(pmd_factory)
    out = raw(p.socket, b"GET /status HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 431 "), out[:100]
    out = raw(p.socket, b"GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 "), out[:100]
    out = raw(p.socket, b"POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 413 "), out[:100]
    t0 = time.monotonic()
    out = raw(p.socket, b"GET /status HTTP/1.1\r\nHost: x\r\n", timeout=20)
    assert out.startswith(b"HTTP/1.1 408 "), out[:100]
    assert 9 <= time.monotonic() - t0 < 15


def test_keep_alive_and_pipelining(pmd_factory):
    p = backend_pmd(pmd_factory)
    out = raw(p.socket, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n"
                        b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    statuses = re.findall(rb"HTTP/1.1 (\d+) ", out)
    assert statuses[:3] == [b"200", b"404", b"200"], out[:300]


def test_chunked_request_body(pmd_factory):
    p = backend_pmd(pmd_factory)
    body = b'{"image": 7}'
    req = (b"POST /services/backend/swap HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
           b"Connection: close\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    out = raw(p.socket, req)
    assert out.startswith(b"HTTP/1.1 400 "), out[:200]
    assert b"image: expected an image reference string" in out


def test_restart_streams_ndjson_and_409(pmd_factory):
    p = backend_pmd(pmd_factory)
    old = p.service("backend")["instances"][0]
    results = {}

    def first():
        conn = pmdtest.UnixHTTPConnection(p.socket, timeout=60)
        conn.request("POST", "/services/backend/restart")
        resp = conn.getresponse()
        results["status"] = resp.status
        results["headers"] = dict(resp.headers)
        results["events"] = [json.loads(l) for l in resp if l.strip()]
        conn.close()

    t = threading.Thread(target=first)
    t.start()
    pmdtest.wait_for(lambda: p.service("backend")["state"] == "swapping", 10, what="swap running")
    r = p.control("POST", "/services/backend/restart")
    assert r.status == 409, r
    assert "backend" in r.json()["error"]
    c = p.pmctl("restart", "backend")
    assert c.returncode == 4, c.stderr
    t.join(60)
    assert results["status"] == 200
    assert results["headers"]["Content-Type"] == "application/x-ndjson"
    assert results["headers"]["Transfer-Encoding"] == "chunked"
    ev = results["events"]
    names = [e.get("event") for e in ev[:-1]]
    assert "health" in names and "switch" in names, names
    assert ev[-1]["ok"] is True, ev[-1]
    new = p.service("backend")["instances"]
    assert [i["color"] for i in new] == ["green" if old["color"] == "blue" else "blue"]


def test_requester_leaving_mid_swap_does_not_stop_it(pmd_factory):
    p = backend_pmd(pmd_factory)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(p.socket)
    s.sendall(b"POST /services/backend/restart HTTP/1.1\r\nHost: x\r\n\r\n")
    assert s.recv(100).startswith(b"HTTP/1.1 200 ")
    s.close()
    p.wait_log(r"control: client went away, swap continues")
    sw = pmdtest.wait_for(lambda: (p.service("backend")["last_swap"] or {}).get("result"), 30,
                          what="swap finished")
    assert sw == "ok"


def test_pmctl_swap_against_pmd(pmd_factory, tmp_path):
    # exec substitutes ${IMAGE}: "broken:*" images crash at start
    script = tmp_path / "app.sh"
    script.write_text('#!/bin/sh\ncase "$1" in broken*) echo "cannot reach the database" >&2; exit 3;; esac\n'
                      f'exec {pmdtest.demo_backend_command()}\n')
    script.chmod(0o755)
    p = backend_pmd(pmd_factory, backend_extra={"command": f"{script} ${{IMAGE}}", "image": "good:1",
                                                "restart": "never"})
    r = p.pmctl("swap", "backend", "broken:1", "--timeout", "3s")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "swap of backend to broken:1 failed:" in r.stderr
    assert "cannot reach the database" in r.stderr     # the failed instance's last lines
    live = p.service("backend")
    assert live["image"] == "good:1" and live["instances"][0]["healthy"] is True

    r = p.pmctl("swap", "backend", "good:2")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert re.search(r"(?m)^\[\d\d:\d\d:\d\d\] backend health 2/2$", r.stdout), r.stdout
    assert "swap of backend to good:2: done, live" in r.stdout
    assert p.service("backend")["image"] == "good:2"
    r = p.pmctl("rollback", "backend")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert p.service("backend")["image"] == "good:1"


def test_logs_and_reload(pmd_factory):
    p = backend_pmd(pmd_factory)
    r = p.control("GET", "/services/backend/logs?tail=2")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    assert 1 <= len(r.text.splitlines()) <= 2
    c = p.pmctl("logs", "backend", "--tail", "1")
    assert c.returncode == 0 and len(c.stdout.splitlines()) == 1, c

    r = p.control("POST", "/reload")
    assert r.status == 200 and r.json()["ok"] is True, r
    p.config_path.write_text(p.config_text + "\n[pmd]\nbogus_key = 1\n")
    r = p.control("POST", "/reload")
    assert r.status == 422
    assert "pmd.ini:" in r.json()["error"]
    c = p.pmctl("reload")
    assert c.returncode == 1 and "reload failed: " in c.stderr and "bogus_key" in c.stderr
    p.config_path.write_text(p.config_text)


METRIC_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"'
                         r'(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*\})? (-?[0-9.e+]+|NaN|[+-]Inf)$')


def test_metrics_text_format(pmd_factory):
    p = backend_pmd(pmd_factory)
    p.get("/api/v1/health/")
    r = p.control("GET", "/metrics")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    typed = set()
    samples = {}
    for line in r.text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if line.startswith("#"):
            continue
        m = METRIC_LINE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        assert m.group(1) in typed or re.sub(r"_(bucket|sum|count)$", "", m.group(1)) in typed, \
            f"sample before its # TYPE: {line!r}"
        samples[m.group(1) + (m.group(2) or "")] = float(m.group(4))
    assert samples['pmd_build_info{version="%s"}' % p.status()["version"]] == 1
    assert samples['pmd_http_requests_total{route="api",code="2xx"}'] >= 1
    assert samples['pmd_http_responses_total{code="2xx"}'] >= 1
    assert "pmd_uptime_seconds" in samples


# -- the socket and who may use it -------------------------------------------

@pytest.fixture
def shared_dir():
    """A folder other users can traverse (pytest's tmp_path is 0700)."""
    d = tempfile.mkdtemp(prefix="pmd-control-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def as_nobody(*extra, cmd):
    return subprocess.run(["setpriv", "--reuid=nobody", *extra, *cmd],
                          capture_output=True, text=True, timeout=30)


CURL_STATUS = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
               "--unix-socket"]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_socket_ownership_and_peer_credentials(pmd_factory, shared_dir):
    group = grp.getgrgid(1)            # "daemon": a group nobody is not in
    sock = os.path.join(shared_dir, "run", "control.sock")
    p = backend_pmd(pmd_factory, pmd_extra={"control_socket": sock, "control_group": group.gr_name})

    d = os.stat(os.path.dirname(sock))
    assert stat.S_IMODE(d.st_mode) == 0o750 and d.st_gid == group.gr_gid
    s = os.stat(sock)
    assert stat.S_ISSOCK(s.st_mode)
    assert stat.S_IMODE(s.st_mode) == 0o660 and (s.st_uid, s.st_gid) == (0, group.gr_gid)

    # a member through a supplementary group, and through the primary group
    r = as_nobody("--regid=nogroup", f"--groups={group.gr_gid}", cmd=[pmdtest.PMCTL, "-s", sock, "status"])
    assert r.returncode == 0, r.stderr
    r = as_nobody(f"--regid={group.gr_gid}", "--clear-groups", cmd=CURL_STATUS + [sock, "http://pmd/status"])
    assert r.stdout == "200", r

    # not a member: the filesystem refuses first, pmctl says what to do
    r = as_nobody("--regid=nogroup", "--clear-groups", cmd=[pmdtest.PMCTL, "-s", sock, "status"])
    assert r.returncode == 3
    assert f"add user 'nobody' to group '{group.gr_name}' (see control_group)" in r.stderr

    # ... and with the permissions opened up by mistake, SO_PEERCRED does
    os.chmod(os.path.dirname(sock), 0o755)
    os.chmod(sock, 0o666)
    r = as_nobody("--regid=nogroup", "--clear-groups", cmd=CURL_STATUS + [sock, "http://pmd/status"])
    assert r.stdout == "000", r
    p.wait_log(r"control: refused\"? uid=%d" % int(subprocess.check_output(["id", "-u", "nobody"])))
    r = as_nobody("--regid=nogroup", "--clear-groups", cmd=[pmdtest.PMCTL, "-s", sock, "restart", "backend"])
    assert r.returncode == 3
    assert "not allowed" in r.stderr
    assert p.service("backend")["last_swap"] is None


def test_stale_socket_is_replaced_and_a_live_one_is_not(pmd_factory, tmp_path):
    stale = str(tmp_path / "stale" / "control.sock")
    os.makedirs(os.path.dirname(stale))
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(stale)
    s.close()                          # a socket file nobody listens on
    p = backend_pmd(pmd_factory, pmd_extra={"control_socket": stale})
    assert p.status()["services"]["backend"]

    other = pmdtest.Pmd(tmp_path, {"pmd": {"control_socket": stale}}, name="second")
    r = subprocess.run([pmdtest.PMD, "run", "-c", str(other.config_path)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode != 0
    assert f"another pmd is running on {stale}" in r.stdout + r.stderr
    assert p.status()["services"]["backend"]    # the first one still answers
