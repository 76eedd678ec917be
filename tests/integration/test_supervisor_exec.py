"""The supervisor with the exec runtime: restarts with backoff, crash loops,
unhealthy instances replaced (gated), required_env, swaps, rollback and
state.json — against the real pmd, apps in python3's standard library."""
import json
import os
import signal
import subprocess
import threading
import time

import pytest

import pmdtest

APP = r'''
import http.server, os, sys
port = int(os.environ["PORT"])
tag = sys.argv[1] if len(sys.argv) > 1 else ""
bad_flag = os.environ.get("BAD_FLAG", "")
if tag == "crash":
    print("boom: cannot connect to the database", flush=True)
    sys.exit(3)

seen_health = []

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health" and not seen_health:
            seen_health.append(1)
            print(f"health check host={self.headers.get('Host')}", flush=True)
        bad = tag == "sick" or (bad_flag and os.path.exists(bad_flag))
        code = 500 if bad else 200
        if self.path == "/health" and tag in ("redirect", "django"):
            # Django's SECURE_SSL_REDIRECT: plain http is sent to https
            # unless the proxy says the request came over TLS
            proto = self.headers.get("X-Forwarded-Proto")
            print(f"health check proto={proto}", flush=True)
            if tag == "redirect" or proto != "https":
                code = 301
        body = json.dumps({"tag": tag, "pid": os.getpid(), "path": self.path,
                           "node": os.environ.get("NODE", ""),
                           "host": self.headers.get("Host")}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

import json
print(f"app {tag} listening on {port}", flush=True)
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
'''


def app_sections(tmp_path, **over):
    app = tmp_path / "app.py"
    app.write_text(APP)
    svc = {
        "runtime": "exec",
        "image": "v1",
        "command": f"{pmdtest.PYTHON} {app} ${{IMAGE}}",
        "env": f"BAD_FLAG={tmp_path / 'bad'}",
        "health_path": "/health",
        "health_host": "app.test",
        "health_interval": "200ms",
        "health_timeout": "1s",
        "healthy_threshold": 2,
        "unhealthy_threshold": 2,
        "start_timeout": "10s",
        "drain_timeout": "2s",
        "stop_timeout": "2s",
    }
    svc.update(over)
    return {"service app": svc, "route all": {"prefix": "/", "service": "app"}}


def live_pid(p):
    inst = [i for i in p.service("app")["instances"] if i.get("healthy")]
    assert len(inst) == 1, inst
    return int(inst[0]["id"].split("-", 1)[1])


def test_serves_restarts_after_kill_and_counts(pmd_factory, tmp_path):
    p = pmd_factory(app_sections(tmp_path))
    svc = p.wait_healthy("app")
    assert svc["state"] == "running"
    assert svc["image"] == "v1"
    inst = svc["instances"][0]
    assert inst["color"] == "blue" and inst["port"] > 0 and inst["restarts"] == 0
    r = p.get("/x")
    assert r.status == 200, r
    assert r.json()["tag"] == "v1"
    # the health checks carried health_host; the app's output reached pmd's log
    p.wait_log(r'msg="app output" service=app color=blue line="app v1 listening')
    p.wait_log(r'msg="app output" service=app color=blue line="health check host=app.test"')

    old = live_pid(p)
    os.kill(old, signal.SIGKILL)
    pmdtest.wait_for(lambda: p.service("app")["restarts"] == 1, 10, what="restart counted")
    svc = p.wait_healthy("app")
    assert live_pid(p) != old
    assert svc["last_exit_code"] == 137
    assert svc["instances"][0]["restarts"] == 1
    assert p.get("/x").status == 200
    p.wait_log(r'msg="service state" service=app from=running to=restarting')


def test_crash_loop_with_backoff_and_logs(pmd_factory, tmp_path):
    p = pmd_factory(app_sections(tmp_path, image="crash"))
    svc = pmdtest.wait_for(lambda: (lambda s: s if s["state"] == "crashloop" else None)(
        p.service("app")), 10, interval=0.1, what="crashloop")
    assert svc["last_exit_code"] == 3
    assert "boom: cannot connect to the database" in svc["last_logs"]
    assert "exited with code 3" in svc["error"]
    # backoff 1s, 2s, 4s: three restarts take at least 1+2 s between them
    t0 = time.monotonic()
    pmdtest.wait_for(lambda: p.service("app")["restarts"] >= 3, 15, interval=0.1,
                     what="three restarts")
    log = p.log_text()
    assert 'msg="restart scheduled" service=app in_ms=1000' in log
    assert 'msg="restart scheduled" service=app in_ms=2000' in log
    assert 'msg="restart scheduled" service=app in_ms=4000' in log
    assert time.monotonic() - t0 > 2.0
    # no live instance: requests are held, then refused (503), never sent anywhere
    r = p.get("/x", timeout=30)
    assert r.status == 503, r


def test_unhealthy_instance_is_replaced(pmd_factory, tmp_path):
    p = pmd_factory(app_sections(tmp_path, unhealthy_restart="1s"))
    p.wait_healthy("app")
    old = live_pid(p)
    bad = tmp_path / "bad"
    bad.write_text("")
    pmdtest.wait_for(lambda: p.service("app")["state"] in ("unhealthy", "swapping"), 10,
                     interval=0.1, what="unhealthy")
    p.wait_log(r'msg="instance unhealthy too long, replacing" service=app', 10)
    p.wait_log(r'msg="swap started" service=app kind=restart', 5)
    bad.unlink()   # the fresh instance (and the old) pass again
    pmdtest.wait_for(lambda: (lambda s: s["state"] == "running" and s["color"] == "green"
                              and len(s["instances"]) == 1)(p.service("app")), 20,
                     interval=0.1, what="replacement live")
    assert live_pid(p) != old
    assert p.service("app")["last_swap"]["kind"] == "restart"
    assert p.get("/x").status == 200


def test_missing_required_env_is_refused(pmd_factory, tmp_path):
    p = pmd_factory(app_sections(tmp_path, required_env="DATABASE_URL, SECRET_KEY",
                                 env=["SECRET_KEY=s3cret"]))
    svc = pmdtest.wait_for(lambda: (lambda s: s if s["state"] == "failed" else None)(
        p.service("app")), 10, interval=0.1, what="failed")
    assert "DATABASE_URL" in svc["error"]
    assert "SECRET_KEY" not in svc["error"]
    assert svc["instances"] == []
    assert not p.children()


def test_swap_rollback_and_failed_swaps(pmd_factory, tmp_path):
    p = pmd_factory(app_sections(tmp_path, start_timeout="3s"))
    p.wait_healthy("app")

    st, events = p.control_stream("POST", "/services/app/swap", {"image": "v2"})
    assert st == 200, events
    kinds = [e.get("event") for e in events]
    assert kinds.index("start") < kinds.index("health") < kinds.index("switch") \
        < kinds.index("drain") < kinds.index("done"), kinds
    assert events[-1]["ok"] is True, events[-1]
    assert p.get("/x").json()["tag"] == "v2"
    svc = p.service("app")
    assert svc["image"] == "v2" and svc["previous_image"] == "v1" and svc["color"] == "green"

    # a candidate that exits at once: live untouched, logs returned
    st, events = p.control_stream("POST", "/services/app/swap", {"image": "crash"})
    res = events[-1]
    assert res["ok"] is False
    assert "exited with code 3" in res["error"]
    assert "boom: cannot connect to the database" in res["logs"]
    assert p.get("/x").json()["tag"] == "v2"

    # a candidate that never gets healthy: the gate times out
    st, events = p.control_stream("POST", "/services/app/swap", {"image": "sick"})
    res = events[-1]
    assert res["ok"] is False and "not healthy within 3000ms" in res["error"], res
    assert "HTTP 500" in res["error"]
    svc = p.service("app")
    assert svc["image"] == "v2" and len(svc["instances"]) == 1
    assert svc["last_swap"]["result"] == "failed"

    st, events = p.control_stream("POST", "/services/app/rollback")
    assert events[-1]["ok"] is True, events
    assert p.get("/x").json()["tag"] == "v1"
    assert p.service("app")["previous_image"] == "v2"

    state = json.loads((tmp_path / "pmd0" / "state" / "state.json").read_text())
    app = state["services"]["app"]
    assert app["image"] == "v1" and app["previous_images"][0] == "v2"
    assert [h["result"] for h in app["history"]] == ["ok", "failed", "failed", "ok"]


def test_health_gate_refuses_redirects(pmd_factory, tmp_path):
    """A health view that redirects (SECURE_SSL_REDIRECT) does not pass the
    gate: 2xx only by default, the status seen is named; with TLS on the
    checks say X-Forwarded-Proto: https, as proxied requests do."""
    sections = app_sections(tmp_path, start_timeout="2s")
    sections["proxy"] = {"https_listen": f"127.0.0.1:{pmdtest.free_port()}"}
    sections["tls"] = {"mode": "self-signed"}
    p = pmd_factory(sections)
    p.wait_healthy("app")
    st, events = p.control_stream("POST", "/services/app/swap", {"image": "redirect"})
    res = events[-1]
    assert res["ok"] is False, res
    assert "HTTP 301 (expected 200-299)" in res["error"], res
    assert any(e.get("event") == "health" and e.get("pass") is False for e in events), events
    assert p.service("app")["image"] == "v1"
    # the app redirects plain http only: with the header it answers 200
    st, events = p.control_stream("POST", "/services/app/swap", {"image": "django"})
    assert events[-1]["ok"] is True, events
    p.wait_log(r'line="health check proto=https"')
    assert "health check proto=None" not in p.log_text()


def test_health_status_range_is_configurable(pmd_factory, tmp_path):
    p = pmd_factory(app_sections(tmp_path, image="redirect", health_status="200-399"))
    assert p.wait_healthy("app")["image"] == "redirect"
    # TLS off: no X-Forwarded-Proto
    p.wait_log(r'line="health check proto=None"')


def swapped_to_v2_and_stopped(pmd_factory, sections):
    """A first pmd (pmd0) that swapped app from v1 to v2, stopped."""
    p = pmd_factory(sections)
    p.wait_healthy("app")
    st, events = p.control_stream("POST", "/services/app/swap", {"image": "v2"})
    assert events[-1]["ok"] is True, events
    p.stop()


def test_truncated_state_keeps_previous_image(pmd_factory, tmp_path):
    """state.json cut short: its copy state.json.prev still knows the live
    and the previous image (rollback still possible)."""
    sections = app_sections(tmp_path)
    swapped_to_v2_and_stopped(pmd_factory, sections)
    path = tmp_path / "pmd0" / "state" / "state.json"
    os.truncate(path, path.stat().st_size // 2)
    p2 = pmd_factory(sections, start=False, name="pmd0")
    p2.start()
    svc = p2.wait_healthy("app")
    p2.wait_log(r'msg="state file unusable, using its copy"')
    assert svc["image"] == "v2" and svc["previous_image"] == "v1", svc
    assert json.loads(path.read_text())["services"]["app"]["previous_images"] == ["v1"]


def test_unwritable_state_dir_fails_the_swap_before_the_switch(pmd_factory, tmp_path):
    """state_dir on a full tmpfs: the swap is not switched (exit 1 with the
    reason, the live instance serves on); the failed writes are retried,
    shown in /status and metrics, and recover once there is room."""
    p = pmd_factory(app_sections(tmp_path), start=False)
    os.makedirs(p.state_dir)
    mnt = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", p.state_dir],
                         capture_output=True, text=True)
    if mnt.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mnt.stderr.strip()}")
    try:
        p.start()
        p.wait_healthy("app")
        fill = os.path.join(p.state_dir, "fill")
        subprocess.run(["dd", "if=/dev/zero", f"of={fill}", "bs=4k"], capture_output=True)
        r = p.pmctl("swap", "app", "v2")
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "state.json cannot be written, not switched" in r.stderr, r.stderr
        assert "No space left on device" in r.stderr, r.stderr
        svc = p.service("app")
        assert svc["image"] == "v1" and p.get("/x").json()["tag"] == "v1"
        assert [i["role"] for i in svc["instances"]] == ["live"], svc
        sf = p.status()["state_file"]
        assert sf["saved"] is False and "No space left" in sf["error"], sf
        out = p.pmctl("status").stdout
        assert "STATE NOT SAVED:" in out and "No space left" in out, out
        metrics = p.control("GET", "/metrics").text
        assert "pmd_state_saved 0" in metrics, metrics
        p.wait_log(r'msg="state not saved, retrying" attempt=1')
        os.unlink(fill)
        pmdtest.wait_for(lambda: p.status()["state_file"]["saved"], 10, what="state saved again")
        p.wait_log(r'msg="state saved again after failed writes"')
        r = p.pmctl("swap", "app", "v2")
        assert r.returncode == 0, (r.stdout, r.stderr)
        p.stop()
        state = json.loads(open(os.path.join(p.state_dir, "state.json")).read())
        assert state["services"]["app"]["image"] == "v2"
    finally:
        p.stop(check=False)
        subprocess.run(["umount", p.state_dir], check=True)


def test_state_survives_restart_and_corrupt_state(pmd_factory, tmp_path):
    sections = app_sections(tmp_path)
    swapped_to_v2_and_stopped(pmd_factory, sections)

    p2 = pmd_factory(sections, start=False, name="pmd0")
    p2.start()
    p2.wait_healthy("app")
    assert p2.get("/x").json()["tag"] == "v2"   # the swapped image, from state.json
    p2.stop()

    for name in ("state.json", "state.json.prev"):   # no good copy left
        (tmp_path / "pmd0" / "state" / name).write_text("{not json")
    p3 = pmd_factory(sections, start=False, name="pmd0")
    p3.start()
    p3.wait_healthy("app")
    p3.wait_log(r'msg="state file unusable, rebuilding it from what runs"')
    assert p3.get("/x").json()["tag"] == "v1"
    pmdtest.wait_for(lambda: json.loads((tmp_path / "pmd0" / "state" / "state.json")
                                        .read_text())["services"]["app"]["image"] == "v1",
                     5, what="state rewritten")


def test_concurrent_swap_conflicts(pmd_factory, tmp_path):
    p = pmd_factory(app_sections(tmp_path, start_timeout="3s"))
    p.wait_healthy("app")
    out = {}
    t = threading.Thread(target=lambda: out.setdefault(
        "first", p.control_stream("POST", "/services/app/swap", {"image": "sick"})))
    t.start()
    pmdtest.wait_for(lambda: p.service("app")["state"] == "swapping", 5, interval=0.02,
                     what="swapping")
    r = p.control("POST", "/services/app/swap", {"image": "v2"})
    assert r.status == 409, r
    t.join(30)
    assert out["first"][1][-1]["ok"] is False


def test_stop_leaves_no_process(pmd_factory, tmp_path):
    p = pmd_factory(app_sections(tmp_path))
    p.wait_healthy("app")
    kid = live_pid(p)
    assert kid in p.children()
    assert p.stop() == 0          # Pmd.stop checks no descendant is left
    assert not pmdtest._alive(kid)


def test_unit_swap_of_two_services_all_or_none(pmd_factory, tmp_path):
    sections = app_sections(tmp_path, start_timeout="3s")
    web = dict(sections["service app"])
    sections["service web"] = web
    sections["route web"] = {"prefix": "/web/", "service": "web"}
    p = pmd_factory(sections)
    p.wait_healthy("app")
    p.wait_healthy("web")

    # one candidate crashes: neither service moves
    st, events = p.control_stream("POST", "/swap", {"services": {"app": "v2", "web": "crash"}})
    assert events[-1]["ok"] is False, events[-1]
    assert "web: candidate exited with code 3" in events[-1]["error"]
    assert not any(e.get("event") == "switch" for e in events)
    assert p.get("/x").json()["tag"] == "v1"
    assert p.get("/web/x").json()["tag"] == "v1"
    assert p.service("app")["instances"][0]["image"] == "v1"

    # both healthy: one switch event per service, both live afterwards
    st, events = p.control_stream("POST", "/swap", {"services": {"app": "v2", "web": "v2"}})
    assert events[-1]["ok"] is True, events[-1]
    switches = [e["service"] for e in events if e.get("event") == "switch"]
    assert sorted(switches) == ["app", "web"]
    assert p.get("/x").json()["tag"] == "v2"
    assert p.get("/web/x").json()["tag"] == "v2"


def test_first_start_runs_release_command_once(pmd_factory, tmp_path):
    """A service never deployed here runs its release_command (migrations)
    before its first instance starts; a failing one keeps it from starting
    (crash loop with the output), and a restart of pmd does not run it again
    once the service is deployed."""
    marker = tmp_path / "migrated"
    fail_flag = tmp_path / "fail-release"
    fail_flag.write_text("1")
    script = tmp_path / "migrate.py"
    script.write_text("import os, sys\n"
                      "print('migrating', flush=True)\n"
                      f"sys.exit(5) if os.path.exists({str(fail_flag)!r}) else "
                      f"open({str(marker)!r}, 'a').write('x')\n")
    release = f"{pmdtest.PYTHON} {script}"
    p = pmd_factory(app_sections(tmp_path, release_command=release))
    svc = pmdtest.wait_for(lambda: (lambda s: s if s["state"] == "crashloop" else None)(p.service("app")),
                           15, what="crash loop after the failing release command")
    assert "release command exited with code 5" in svc["error"]
    assert any("migrating" in line for line in svc.get("last_logs", [])), svc
    assert not svc["instances"] or not any(i.get("healthy") for i in svc["instances"])
    assert not marker.exists()

    fail_flag.unlink()                     # the next try (backoff) succeeds
    svc = p.wait_healthy("app", timeout=20)
    assert marker.read_text() == "x"       # ran exactly once
    assert p.get("/").status == 200

    p.stop()
    p.start()
    p.wait_healthy("app")
    assert marker.read_text() == "x"       # deployed: not run again at start


def test_old_instance_dying_during_the_drain(pmd_factory, tmp_path):
    """The old instance dies on its own while the swap drains it (a
    `docker rm -f`, an OOM kill): the swap ends cleanly, the new image
    serves, and pmd stops cleanly afterwards (no use of the dead instance)."""
    import socket
    p = pmd_factory(app_sections(tmp_path, drain_timeout="10s"))
    p.wait_healthy("app")
    old_pid = live_pid(p)
    # a request in flight on the old instance: its body never comes
    s = socket.create_connection(("127.0.0.1", p.http_port), timeout=10)
    s.sendall(b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n")
    result = {}
    t = threading.Thread(target=lambda: result.setdefault(
        "swap", p.control_stream("POST", "/services/app/swap", {"image": "v2"})))
    t.start()
    p.wait_log(r'msg="switched" service=app', 15)
    pmdtest.wait_for(lambda: p.service("app")["state"] == "swapping", 5, what="draining")
    os.kill(old_pid, signal.SIGKILL)
    t.join(20)
    s.close()
    st, events = result["swap"]
    assert events[-1]["ok"] is True, events[-1]
    assert p.get("/x").json()["tag"] == "v2"
    assert p.service("app")["state"] == "running"


PATH_APP = r'''
import http.server, os, sys
print("path=" + os.environ.get("PATH", "<none>"), flush=True)
print(f"argc={len(sys.argv)}", flush=True)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
'''


def test_long_command_line_and_default_path(pmd_factory, tmp_path):
    """A 1000+ character `command =` line (over inih's 200-byte buffer) is
    read whole; an exec instance gets a PATH: pmd's, or a default when pmd
    has none, unless the service sets one."""
    app = tmp_path / "pathapp.py"
    app.write_text(PATH_APP)
    long_cmd = f"{pmdtest.PYTHON} {app} " + " ".join(["argument"] * 120)
    assert len(long_cmd) > 1000
    base = {"runtime": "exec", "health_path": "/", "health_interval": "200ms",
            "healthy_threshold": 1}
    sections = {
        "service a": dict(base, command=long_cmd),
        "route a": {"prefix": "/", "service": "a"},
        "service b": dict(base, command=f"{pmdtest.PYTHON} {app}", env="PATH=/opt/mine/bin"),
        "route b": {"prefix": "/b/", "service": "b"},
    }
    p = pmd_factory(sections, env={"PATH": ""})
    assert max(len(l) for l in p.config_path.read_text().splitlines()) > 1000
    p.wait_healthy("a")
    p.wait_healthy("b")
    p.wait_log(r'msg="app output" service=a color=blue line="argc=121"')
    p.wait_log(r'msg="app output" service=a color=blue '
               r'line="path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"')
    p.wait_log(r'msg="app output" service=b color=blue line="path=/opt/mine/bin"')
    r = p.check()
    assert r.returncode == 0, r.stdout + r.stderr
