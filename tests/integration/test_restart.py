"""Restarting or upgrading pmd itself fails no request (README "Restarts and
upgrades of pmd").

A bounded load (loadgen.Load: keep-alive and new-connection clients, one
stream, one WebSocket) runs through restarts of pmd in front of an exec
service (tests/images/zdapp.py), in two ways:

  handover    SIGUSR2: the running pmd starts a new pmd on its listening
              sockets and control socket; both serve until the new one is
              ready, then the old one finishes its requests and exits;
  activation  the sockets belong to a parent, as with systemd's pmd.socket:
              SIGTERM, wait for the old pmd to exit (as `systemctl restart`
              does), start a new one on the same sockets.

Zero failed requests; the stream started before a restart arrives whole;
the WebSocket gets close code 1001 (going away), not a cut. And
systemd-socket-activate itself hands pmd its socket (a socket for an
address pmd.ini does not name is closed with a warning).

run_restarts() is also the measurement of bench/restart.py (mode `plain`:
SIGTERM, wait, start again, pmd binding its own sockets: today's figure
without socket activation).
"""
import os
import signal
import socket
import time

import pytest

import pmdtest
from loadgen import Load

APP = os.path.join(pmdtest.REPO, "tests", "images", "zdapp.py")
# the parent side of socket activation: fd argv[1] becomes fd 3, then exec
WRAP = ("import os, sys; os.dup2(int(sys.argv[1]), 3); "
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1', LISTEN_FDNAMES='http'); "
        "os.execv(sys.argv[2], sys.argv[2:])")


def sections():
    return {"service web": {"runtime": "exec", "command": f"{pmdtest.PYTHON} {APP}",
                            "env": "APP_VERSION=1", "health_path": "/api/v1/health/",
                            "health_interval": "100ms", "healthy_threshold": 1,
                            "start_timeout": "10s", "drain_timeout": "10s",
                            "stop_timeout": "5s"},
            "route all": {"prefix": "/", "service": "web"}}


def _gone(pid, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def run_restarts(p, mode, restarts, load_kw, gap=1.0, service="web", versions=("1",)):
    """Start p (a pmdtest.Pmd not started), run the load (answers must name
    one of `versions`), restart pmd `restarts` times `gap` s apart, stop the
    load. Returns (load, pid of the pmd serving at the end)."""
    listener = None
    if mode == "activation":
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", p.http_port))
        listener.listen(1024)
        p.wrapper = [pmdtest.PYTHON, "-c", WRAP, str(listener.fileno())]
        p.pass_fds = (listener.fileno(),)
    p.start()
    p.wait_healthy(service, timeout=60)
    pid = p.proc.pid
    load = Load(p.http_port, set(versions), **load_kw).start()
    try:
        for _ in range(restarts):
            time.sleep(gap)
            if mode == "handover":
                os.kill(pid, signal.SIGUSR2)
                old = pid
                pid = pmdtest.wait_for(lambda: p.status()["pid"] != old and p.status()["pid"],
                                       20, what="the new pmd answering /status")
                if p.proc is not None and p.proc.pid == old:
                    assert p.proc.wait(30) == 0, p.log_tail()
                else:
                    assert _gone(old, 30), f"old pmd {old} still running\n{p.log_tail()}"
            else:
                p.stop()
                started = time.monotonic()
                while True:  # without socket activation the port may still be taken
                    p.start(wait=False)
                    try:
                        p.wait_ready(20)
                        break
                    except AssertionError:
                        if p.proc.poll() is None or time.monotonic() - started > 30:
                            raise
                pid = p.proc.pid
        time.sleep(gap)
    finally:
        load.stop()
        if listener is not None:
            listener.close()
    return load, pid


def stop_pid(p, pid):
    """Stop the pmd a hand-over started (not our child): SIGTERM, gone,
    and no sanitizer report in the shared log."""
    if p.proc is not None and p.proc.pid == pid:
        p.stop()
        return
    os.kill(pid, signal.SIGTERM)
    assert _gone(pid, 30), p.log_tail()
    assert not pmdtest.SANITIZER_RE.search(p.log_text()), p.log_tail(n=80)


LOAD = {"keepalive": 2, "fresh": 2, "frontend": 0, "stream": (25, 100), "websocket": True,
        "ws_close_codes": (1001,), "max_seconds": 60}


def check(load, restarts):
    s = load.summary()
    print(f"restart: {s['sent']} requests, {s['failed']} failed over {restarts} restarts")
    assert s["failed"] == 0, load.failures[:10]
    assert s["stream"]["complete"], s
    assert 1001 in s["ws_closes"], s     # closed by the old pmd, then reconnected


def test_handover_under_load(pmd_factory):
    p = pmd_factory(sections(), start=False)
    load, pid = run_restarts(p, "handover", 2, LOAD)
    try:
        check(load, 2)
        log = p.log_text()
        assert log.count("the new pmd serves, handing over") == 2, p.log_tail()
        assert "listening on given sockets" in log and "control socket given" in log
        assert p.get("/api/v1/version").status == 200
    finally:
        stop_pid(p, pid)


DOCKER_ENV = ("PMD_TEST_DOCKER_SOCKET", "PMD_TEST_REGISTRY_AUTH_FILE", "PMD_TEST_IMAGE_ZD")


def handover_containers():
    out = pmdtest.docker("ps", "-aq", "--no-trunc", "--filter", "label=pmd.service=handover",
                         check=False).stdout
    return out.split()


@pytest.mark.skipif(any(not os.environ.get(n) for n in DOCKER_ENV),
                    reason="needs the test dockerd, registry and images (tests/services.sh)")
def test_handover_docker_keeps_the_container(pmd_factory, docker_env, registry):
    """The production case: the new pmd adopts the running container (no
    restart of it, no second one) and no request fails. (docker_env puts it
    on the xdist worker of the other Docker tests, whose teardown removes
    every pmd container: elsewhere they removed this one mid-test.)"""
    for c in handover_containers():
        pmdtest.docker("rm", "-f", c, check=False)
    p = pmd_factory({"service handover": {
        "runtime": "docker", "image": os.environ["PMD_TEST_IMAGE_ZD"] + ":1", "network": "host",
        "port": pmdtest.free_port(), "pull": "missing",
        "registry_auth_file": os.environ["PMD_TEST_REGISTRY_AUTH_FILE"],
        "health_path": "/api/v1/health/", "health_interval": "250ms", "healthy_threshold": 2,
        "start_timeout": "20s", "drain_timeout": "10s", "stop_timeout": "5s"},
        "route all": {"prefix": "/", "service": "handover"}}, start=False)
    try:
        load, pid = run_restarts(p, "handover", 2, dict(LOAD, stream=None), service="handover")
        try:
            s = load.summary()
            assert s["failed"] == 0, load.failures[:10]
            assert 1001 in s["ws_closes"], s
            ids = handover_containers()
            assert len(ids) == 1, ids
            log = p.log_text()
            assert log.count('msg="instance adopted" service=handover') == 2, p.log_tail()
            assert log.count('msg="instance starting" service=handover') == 1, p.log_tail()
        finally:
            stop_pid(p, pid)
    finally:
        for c in handover_containers():
            pmdtest.docker("rm", "-f", c, check=False)


def test_socket_activation_restart_under_load(pmd_factory):
    p = pmd_factory(sections(), start=False)
    load, pid = run_restarts(p, "activation", 2, LOAD)
    check(load, 2)
    assert p.log_text().count("listening on given sockets\" address=127.0.0.1") == 3


def test_systemd_socket_activate(pmd_factory):
    p = pmd_factory({"route all": {"prefix": "/", "service": "web"},
                     "service web": sections()["service web"]}, start=False)
    extra = pmdtest.free_port()
    p.wrapper = ["systemd-socket-activate", "-l", f"127.0.0.1:{p.http_port}",
                 "-l", f"127.0.0.1:{extra}", "--fdname=http"]
    p.start(wait=False)
    # it execs pmd on the first connection; that one waits in the queue
    pmdtest.wait_for(lambda: socket.create_connection(("127.0.0.1", p.http_port), 1).close()
                     or True, 10, what="systemd-socket-activate listening")
    p.wait_ready()
    p.wait_healthy("web")
    assert p.get("/api/v1/version").status == 200
    assert p.proc.pid == int(p.status()["pid"])     # it exec'd pmd in place
    log = p.log_text()
    assert "listening on given sockets\" address=127.0.0.1" in log
    assert "matches no http_listen" in log and "closed" in log
    with pytest.raises(ConnectionRefusedError):  # the unused socket is closed
        socket.create_connection(("127.0.0.1", extra), timeout=2)
