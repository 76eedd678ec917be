"""The end of a swap's drain (supervisor/swap.c drain_poll): requests still
running at drain_timeout are not cut there. The old instance gets SIGTERM
(stop with stop_timeout) while pmd keeps relaying what it answers; a request
it does not finish ends with 503, its access log line says
reason=drain_timeout, and pmd_proxy_drain_timeouts_total counts it.

Real processes: an exec service (tests/images/zdapp.py, which finishes
requests in progress for APP_STOP_GRACE seconds after SIGTERM, then exits)
and `POST /services/web/restart` through the control socket."""
import os
import time

import pmdtest

APP = os.path.join(pmdtest.REPO, "tests", "images", "zdapp.py")


def get(port, path, out):
    t0 = time.monotonic()
    try:
        r = pmdtest.http_request(port, path, timeout=30)
        out.update(status=r.status, body=r.body)
    except Exception as e:  # noqa: BLE001 - the old pmd cut it: recorded, asserted below
        out.update(status=None, error=f"{type(e).__name__}: {e}")
    out["s"] = time.monotonic() - t0


def test_requests_outlive_the_drain_deadline(pmd_factory):
    p = pmd_factory({
        "service web": {"runtime": "exec", "command": f"{pmdtest.PYTHON} {APP}",
                        "env": ["APP_VERSION=1", "APP_STOP_GRACE=3"],
                        "health_path": "/api/v1/health/", "health_interval": "100ms",
                        "healthy_threshold": 1, "start_timeout": "10s",
                        "drain_timeout": "1s", "stop_timeout": "10s"},
        "route all": {"prefix": "/", "service": "web"}})
    p.wait_healthy("web")
    done, cut = {}, {}
    def restart():
        time.sleep(0.3)             # both are on the old instance
        return p.control_stream("POST", "/services/web/restart", timeout=60)
    status, events = pmdtest.in_threads(
        [(get, (p.http_port, "/api/v1/slow?ms=2500", done)),
         (get, (p.http_port, "/api/v1/slow?ms=20000", cut))], restart)
    assert status == 200 and events[-1].get("ok") is True, events
    # past drain_timeout (1 s), finished by the stopping instance
    assert done["status"] == 200, done
    # not finished within the app's stop grace: pmd's decision, said so
    assert cut["status"] == 503 and b"drain_timeout" in cut["body"], cut
    line = p.wait_log(r"msg=request [^\n]*target=\"/api/v1/slow\?ms=20000\"[^\n]*").group(0)
    assert "status=503" in line and "reason=drain_timeout" in line, line
    ok = p.wait_log(r"msg=request [^\n]*target=\"/api/v1/slow\?ms=2500\"[^\n]*").group(0)
    assert "status=200" in ok and "reason=" not in ok, ok
    assert p.status()["proxy"]["drain_timeouts"] == 1
    metrics = p.control("GET", "/metrics").text
    assert "pmd_proxy_drain_timeouts_total 1" in metrics
