"""pmd's promise, measured: no request a client sends during a swap fails
because of the swap (SPEC.md "Blue/green swap — the guarantee").

A bounded load (loadgen.Load: keep-alive and new-connection clients, GET and
POST with echoed bodies, one long streaming response, one WebSocket, every
answer checked for status 200 and the version that served it) runs through
each swap of a Docker service (network = host, images pulled from the test
registry with credentials):

  (a) v1 -> v2                  (e) a tag that does not exist
  (b) health endpoint says 500  (f) rollback
  (c) crashes at start          (g) backend and frontend in one POST /swap
  (d) release command fails

Zero failed requests in each; afterwards the right image serves; the
stream started before the swap arrives intact; the WebSocket on the old
instance keeps working through the drain and is closed with 1012 at its
end, not at its start. The same load against the seed's procedure
(`docker rm -f` + `docker run` of the new image behind pmd as an external
service) gives the "before" figure, printed, not asserted. Then `kill -9`
of pmd in each phase of a swap, and a restart: one live instance, the
right one in state.json, no stray container, the service answers.

Needs tests/services.sh (dockerd, registry, the zd and frontend images).
"""
import http.client
import json
import os
import signal
import threading
import time

import pytest

import pmdtest
from loadgen import Load

ENV = ("PMD_TEST_DOCKER_SOCKET", "PMD_TEST_REGISTRY", "PMD_TEST_REGISTRY_AUTH_FILE",
       "PMD_TEST_IMAGE_ZD", "PMD_TEST_IMAGE_FRONTEND", "PMD_TEST_IMAGE_FRONTEND_V2")
pytestmark = pytest.mark.skipif(any(not os.environ.get(n) for n in ENV),
                                reason="needs the test dockerd, registry and images "
                                       "(tests/services.sh)")

DRAIN_S = 10          # drain_timeout: the WebSocket keeps the old instance busy to its end
STREAM = (60, 150)    # lines, ms: ~9 s, started before the swap, ends inside the drain
RELEASE = "/usr/bin/python3 /app/zdapp.py release"

RESULTS = []          # (scenario, summary) for the module's closing report


def zd(tag):
    return f"{os.environ['PMD_TEST_IMAGE_ZD']}:{tag}"


def fe(n):
    return os.environ["PMD_TEST_IMAGE_FRONTEND" + ("_V2" if n == 2 else "")]


def service_conf(image, health_path, port, **over):
    c = {"runtime": "docker", "image": image, "network": "host", "port": port,
         "pull": "always", "registry_auth_file": os.environ["PMD_TEST_REGISTRY_AUTH_FILE"],
         "health_path": health_path, "health_interval": "250ms", "health_timeout": "1s",
         "healthy_threshold": 2, "unhealthy_threshold": 3, "start_timeout": "8s",
         "drain_timeout": f"{DRAIN_S}s", "stop_timeout": "5s", "restart": "always"}
    c.update(over)
    return c


def remove_containers(*services):
    for svc in services:
        ids = pmdtest.docker("ps", "-aq", "--filter", f"label=pmd.service={svc}",
                             check=False).stdout.split()
        if ids:
            pmdtest.docker("rm", "-f", *ids, check=False)


def containers(svc):
    """[(id, running, image)] of every container of svc, stopped ones too."""
    out = pmdtest.docker("ps", "-a", "--no-trunc", "--filter", f"label=pmd.service={svc}",
                         "--format", "{{.ID}} {{.State}} {{.Image}} {{.Names}}").stdout
    return [tuple(line.split()) for line in out.splitlines() if line.strip()]


def control_events(pmd, method, path, body=None, on_event=None, timeout=120.0):
    """A streaming control request; every event gets "_t" (monotonic time of
    arrival). on_event(ev) is called as each arrives. Returns (status,
    events); a stream cut short (pmd killed) ends the list."""
    conn = pmdtest.UnixHTTPConnection(pmd.socket, timeout=timeout)
    events = []
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data,
                     headers={"Content-Type": "application/json"} if data else {})
        resp = conn.getresponse()
        try:
            for line in resp:
                if line.strip():
                    ev = json.loads(line)
                    ev["_t"] = time.monotonic()
                    events.append(ev)
                    if on_event is not None:
                        on_event(ev)
        except (OSError, ValueError, http.client.HTTPException):
            pass
        return resp.status, events
    finally:
        conn.close()


def first(events, name):
    return next((e for e in events if e.get("event") == name), None)


def report(name, load, extra=""):
    s = load.summary()
    line = f"zero-downtime {name}: {s['sent']} requests sent, {s['failed']} failed"
    if s["failed"]:
        line += f" (over {s['failing_s']}s)"
    line += extra
    print(line)
    RESULTS.append(line)
    return s


@pytest.fixture(scope="module", autouse=True)
def closing_report(request):
    """Print every scenario's figures at the end of the module, where
    `make check` (pytest -q, output captured) shows them too."""
    yield
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None and RESULTS:
        tr.write_line("")
        for line in RESULTS:
            tr.write_line(line)


@pytest.fixture(scope="module")
def zd_pmd(tmp_path_factory):
    """One pmd for scenarios (a)-(g): services api (zd:1, release command)
    and web (frontend:1), routes /api/ and /."""
    remove_containers("api", "web")
    p = pmdtest.Pmd(tmp_path_factory.mktemp("zd"), {
        "proxy": {"workers": 2},
        "service api": service_conf(zd(1), "/api/v1/health/", 8000, release_command=RELEASE),
        "service web": service_conf(fe(1), "/version.txt", 80),
        "route api": {"prefix": "/api/", "service": "api"},
        "route web": {"prefix": "/", "service": "web"},
    })
    p.start()
    try:
        p.wait_healthy("api", timeout=60)
        p.wait_healthy("web", timeout=60)
        yield p
    finally:
        try:
            p.stop()
        finally:
            remove_containers("api", "web")


def swap_under_load(pmd, name, method, path, body, before, after, ok,
                    fe_before=None, fe_after=None, websocket=True):
    """Run the load, make the control request, keep the load a while after it,
    check: the request's result, zero failures, who serves afterwards, the
    stream. Returns (events, load)."""
    allowed = {before, after} if ok else {before}
    fe_allowed = ({fe_before, fe_after} if ok else {fe_before}) if fe_before else None
    load = Load(pmd.http_port, allowed, frontend_versions=fe_allowed, stream=STREAM,
                keepalive=6, fresh=6, websocket=websocket).start()
    try:
        pmdtest.wait_for(lambda: load.ok >= 20 and (load.ws_echoes or not websocket), 20,
                         what="the load to get answers")
        status, events = control_events(pmd, method, path, body)
        t_done = time.monotonic()
        time.sleep(1.5)
    finally:
        load.stop()
    res = events[-1] if events else {}
    s = report(name, load, f" (swap {'ok' if res.get('ok') else 'failed: ' + str(res.get('error'))})")
    assert status == 200, (status, events)
    assert res.get("ok") is ok, f"expected ok={ok}: {res}"
    assert not load.failures, (f"{len(load.failures)} of {s['sent']} requests failed during "
                               f"{name}:\n" + "\n".join(map(str, load.failures[:20])))
    # Who serves once the swap is over.
    assert load.versions_after(t_done) == {after if ok else before}, load.versions_after(t_done)
    st = load.stream_result
    assert st is not None and st["complete"], st
    assert st["version"] == before, st
    if ok:
        # Requests sent once the switch was published all reach the new instance.
        drain = first(events, "drain")
        assert drain is not None, events
        assert load.versions_after(drain["_t"] + 0.2) == {after}
        # The stream started on the old instance before the swap and ended after the switch.
        assert st["t_start"] < first(events, "switch")["_t"] < st["t_end"], (st, events)
    else:
        assert first(events, "switch") is None, events
    if fe_before:
        with load.lock:
            fe_seen = {v for (ts, _, c, v) in load.served if ts >= t_done and c.startswith("frontend")}
        assert fe_seen == {fe_after if ok else fe_before}, fe_seen
    return events, load


def check_live(pmd, svc, image, version, path="/api/v1/version"):
    st = pmd.service(svc)
    assert st["image"] == image, st
    assert [i["image"] for i in st["instances"]] == [image], st["instances"]
    assert [c[1] for c in containers(svc)] == ["running"], containers(svc)
    r = pmd.get(path)
    assert r.status == 200 and (r.json()["version"] if path.startswith("/api") else
                                r.text.strip()) == version, r


# -- (a)-(g) ------------------------------------------------------------------


def test_a_swap_v1_to_v2(zd_pmd):
    events, load = swap_under_load(zd_pmd, "(a) swap v1->v2", "POST", "/services/api/swap",
                                   {"image": zd(2)}, "1", "2", True)
    check_live(zd_pmd, "api", zd(2), "2")
    names = [e.get("event") for e in events]
    for step in ("pull", "release", "start", "health", "switch", "drain", "done"):
        assert step in names, names
    # The WebSocket opened on v1 kept working during the drain and was
    # closed with 1012 at its end, not at its start.
    switch = first(events, "switch")["_t"]
    assert any(v == "1" and t > switch + 1 for t, v in load.ws_echoes), load.ws_echoes[-5:]
    closes = [(t - switch, code) for t, code in load.ws_closes]
    assert len(closes) == 1 and closes[0][1] == 1012, closes
    assert DRAIN_S - 0.5 <= closes[0][0] <= DRAIN_S + 3, closes
    print(f"zero-downtime (a): WebSocket closed with 1012 {closes[0][0]:.2f}s after the "
          f"switch (drain_timeout {DRAIN_S}s)")


def test_b_health_500(zd_pmd):
    events, _ = swap_under_load(zd_pmd, "(b) health 500", "POST", "/services/api/swap",
                                {"image": zd("unhealthy")}, "2", "unhealthy", False)
    assert "not healthy" in events[-1]["error"], events[-1]
    check_live(zd_pmd, "api", zd(2), "2")


def test_c_crash_at_start(zd_pmd):
    events, _ = swap_under_load(zd_pmd, "(c) crash at start", "POST", "/services/api/swap",
                                {"image": zd("crash")}, "2", "crash", False)
    res = events[-1]
    assert "exited with code 3" in res["error"], res
    assert any("APP_CRASH=1" in line for line in res.get("logs", [])), res
    check_live(zd_pmd, "api", zd(2), "2")


def test_d_release_fails(zd_pmd):
    events, _ = swap_under_load(zd_pmd, "(d) release command fails", "POST",
                                "/services/api/swap", {"image": zd("relfail")}, "2", "relfail",
                                False)
    res = events[-1]
    assert "release command exited with code 1" in res["error"], res
    assert first(events, "start") is None, events
    check_live(zd_pmd, "api", zd(2), "2")


def test_e_missing_tag(zd_pmd):
    events, _ = swap_under_load(zd_pmd, "(e) missing tag", "POST", "/services/api/swap",
                                {"image": zd("no-such-tag")}, "2", "none", False)
    assert "pull" in events[-1]["error"], events[-1]
    check_live(zd_pmd, "api", zd(2), "2")


def test_f_rollback(zd_pmd):
    """Without a WebSocket the drain ends when the old instance's last
    request (the stream) ends, before drain_timeout."""
    assert zd_pmd.service("api")["previous_image"] == zd(1)
    events, load = swap_under_load(zd_pmd, "(f) rollback", "POST", "/services/api/rollback",
                                   None, "2", "1", True, websocket=False)
    switch = first(events, "switch")["_t"]
    drained = [e["_t"] for e in events if e.get("event") == "drain" and e["inflight"] == 0]
    assert drained, events
    assert load.stream_result["t_end"] - 0.2 < drained[0] < switch + DRAIN_S - 1, \
        (load.stream_result, events)
    check_live(zd_pmd, "api", zd(1), "1")
    assert zd_pmd.service("api")["previous_image"] == zd(2)


def test_g_unit_swap(zd_pmd):
    events, _ = swap_under_load(zd_pmd, "(g) unit swap api+web", "POST", "/swap",
                                {"services": {"api": zd(2), "web": fe(2)}}, "1", "2", True,
                                fe_before="frontend 1", fe_after="frontend 2")
    switches = [e for e in events if e.get("event") == "switch"]
    assert sorted(e["service"] for e in switches) == ["api", "web"], switches
    check_live(zd_pmd, "api", zd(2), "2")
    check_live(zd_pmd, "web", fe(2), "frontend 2", path="/version.txt")


# -- the "before" figure --------------------------------------------------------


def test_before_seed_procedure(pmd_factory, free_port):
    """The seed's deploy: `docker rm -f` the app, `docker run` the new image on
    the same port. Behind pmd (runtime = external) with the same load; the
    failure count is reported, not asserted."""
    port = free_port()
    name = f"pmd-zd-seed-{port}"
    for tag in (1, 2):
        pmdtest.docker("pull", "-q", zd(tag))

    def run(tag):
        pmdtest.docker("run", "-d", "--name", name, "--network", "host", "-e", f"PORT={port}",
                       zd(tag))

    try:
        run(1)
        pmd = pmd_factory({
            "service api": {"runtime": "external", "address": f"127.0.0.1:{port}",
                            "health_path": "/api/v1/health/", "health_interval": "250ms",
                            "health_timeout": "1s", "healthy_threshold": 2,
                            "unhealthy_threshold": 3},
            "route api": {"prefix": "/api/", "service": "api"},
        })
        pmd.wait_healthy("api", timeout=30)
        load = Load(pmd.http_port, {"1", "2"}, stream=STREAM).start()
        try:
            pmdtest.wait_for(lambda: load.ok >= 20 and load.ws_echoes, 20,
                             what="the load to get answers")
            pmdtest.docker("rm", "-f", name)
            run(2)
            pmdtest.wait_for(lambda: pmd.get("/api/v1/version").json()["version"] == "2", 30,
                             interval=0.1, what="v2 answering")
            t_up = time.monotonic()
            time.sleep(1.5)
        finally:
            load.stop()
        report("BEFORE (seed: docker rm -f + docker run, not asserted)", load)
        kinds = {}
        for f in load.failures:
            kinds[f["error"][:60]] = kinds.get(f["error"][:60], 0) + 1
        print(f"zero-downtime BEFORE failures by kind: {kinds}")
        assert load.versions_after(t_up) == {"2"}
    finally:
        pmdtest.docker("rm", "-f", name, check=False)
        for tag in (1, 2):
            pmdtest.docker("rmi", zd(tag), check=False)


# -- kill -9 in each phase -------------------------------------------------------


PHASES = ("pull", "release", "start", "health", "drain")


def test_kill9_in_each_phase(tmp_path):
    """kill -9 of pmd in each swap phase, then a restart: exactly one live
    instance, state.json names it, no stray candidate or release container,
    the service answers with the image the phase implies (the old one
    before the switch, the new one after)."""
    remove_containers("k9")
    pmd = pmdtest.Pmd(tmp_path, {
        "service k9": service_conf(zd(1), "/api/v1/health/", 8000, release_command=RELEASE,
                                    env="APP_RELEASE_SLEEP=2", healthy_threshold=6,
                                    health_interval="300ms", drain_timeout="8s"),
        "route api": {"prefix": "/api/", "service": "k9"},
    })
    state_path = os.path.join(pmd.state_dir, "state.json")
    pmd.start()
    current = "1"
    try:
        pmd.wait_healthy("k9", timeout=60)
        for phase in PHASES:
            target = "2" if current == "1" else "1"
            stream = None
            if phase == "drain":
                # A request in flight on the old instance keeps it draining.
                stream = Load(pmd.http_port, {current}, keepalive=0, fresh=0,
                              websocket=False, stream=(40, 150)).start()
                time.sleep(0.8)
            killed = threading.Event()

            def on_event(ev, phase=phase):
                if ev.get("event") != phase or killed.is_set():
                    return
                if phase == "release":
                    # Once the one-off container runs, so that it is left behind.
                    pmdtest.wait_for(lambda: any(c[3].startswith("pm-k9-once") and
                                                 c[1] == "running" for c in containers("k9")),
                                     10, interval=0.05, what="the release container")
                killed.set()
                pmd.proc.send_signal(signal.SIGKILL)

            control_events(pmd, "POST", "/services/k9/swap", {"image": zd(target)},
                           on_event=on_event)
            assert killed.is_set(), f"no {phase} event seen"
            pmd.proc.wait(10)
            pmd.kill9()
            if stream is not None:
                stream.stop(1)
            if phase == "drain":
                current = target
            pmd.start()

            def settled():
                st = pmd.service("k9")
                ids = [i["id"] for i in st["instances"]]
                cs = containers("k9")
                return (st["state"] == "running" and len(ids) == 1 and
                        [c[0] for c in cs] == ids and cs[0][1] == "running" and st)
            st = pmdtest.wait_for(settled, 40, interval=0.2,
                                  what=f"one live instance after kill -9 in {phase}")
            with open(state_path) as f:
                saved = json.load(f)["services"]["k9"]
            assert saved["image"] == zd(current), (phase, saved)
            assert saved["instance_id"] == st["instances"][0]["id"], (phase, saved, st)
            assert saved["color"] == st["instances"][0]["color"], (phase, saved, st)
            assert st["image"] == zd(current), (phase, st)
            r = pmd.get("/api/v1/version")
            assert r.status == 200 and r.json()["version"] == current, (phase, r)
            print(f"zero-downtime kill -9 during {phase}: restarted, {zd(current)} live "
                  f"({st['instances'][0]['color']}), one container")
    finally:
        try:
            pmd.stop()
        finally:
            remove_containers("k9")
