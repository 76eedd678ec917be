"""Faults that must not break the swap guarantee (issue 10): a pull that
stalls (a registry that stops sending mid-blob, behind a stalling TCP
proxy; a Docker socket that accepts and never answers), a swap cancelled
by the operator, old instances whose removal fails, a state_dir that
cannot be written, a newer instance than state.json at start.

The registry and dockerd are the real ones of tests/services.sh; the fake
Docker socket is used only where dockerd cannot misbehave on demand."""
import base64
import io
import json
import os
import socket
import socketserver
import tarfile
import threading
import uuid

import pytest

from pmdtest import docker, relay, serve_unix, wait_for

@pytest.fixture
def dk(docker_env, registry):
    """The test dockerd and registry (conftest's fixtures remove pmd's
    containers after), and the second frontend image."""
    if not os.environ.get("PMD_TEST_IMAGE_FRONTEND_V2"):
        pytest.skip("needs PMD_TEST_IMAGE_FRONTEND_V2 (tests/services.sh)")
    return dict(docker_env, **registry,
                PMD_TEST_IMAGE_FRONTEND_V2=os.environ["PMD_TEST_IMAGE_FRONTEND_V2"])


def web_conf(env, **over):
    """A busybox web server (the frontend image) on the host network."""
    c = {
        "runtime": "docker",
        "image": env["PMD_TEST_IMAGE_FRONTEND"],
        "network": "host",
        "registry_auth_file": env["PMD_TEST_REGISTRY_AUTH_FILE"],
        "pull": "missing",
        "health_path": "/index.html",
        "health_interval": "200ms",
        "health_timeout": "1s",
        "healthy_threshold": 1,
        "unhealthy_threshold": 2,
        "start_timeout": "30s",
        "drain_timeout": "1s",
        "stop_timeout": "1s",
    }
    c.update(over)
    return c


def one(name, conf):
    return {f"service {name}": conf, "route all": {"prefix": "/", "service": name}}


def close_all(socks):
    for c in socks:
        try:
            c.close()
        except OSError:
            pass


def swap(p, svc, image, timeout=60):
    code, events = p.control_stream("POST", f"/services/{svc}/swap", {"image": image},
                                    timeout=timeout)
    return code, (events[-1] if events else None), events


# -- a Docker socket that accepts and never answers ---------------------------

class FakeEngine:
    """A unix socket that answers GET /version and GET /containers/json
    (so pmd gets going) and then accepts every other call and never
    answers it."""

    def __init__(self, path):
        self.path = path
        self.calls = []
        self.held = []
        self.stop = threading.Event()
        self.sock = serve_unix(path, self._serve)

    def _serve(self, c):
        buf = b""
        c.settimeout(0.2)
        while not self.stop.is_set():
            while b"\r\n\r\n" not in buf:
                try:
                    d = c.recv(65536)
                except socket.timeout:
                    if self.stop.is_set():
                        return
                    continue
                except OSError:
                    return
                if not d:
                    return
                buf += d
            head, buf = buf.split(b"\r\n\r\n", 1)
            line = head.split(b"\r\n", 1)[0].decode()
            self.calls.append(line)
            method, path = line.split(" ")[:2]
            if method == "GET" and path.endswith("/version"):
                body = b'{"ApiVersion":"1.43","Version":"24.0.0"}'
            elif method == "GET" and "/containers/json" in path:
                body = b"[]"
            else:
                self.held.append(c)   # accepted, never answered
                return
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    def close(self):
        self.stop.set()
        close_all(self.held)
        self.sock.close()


def test_silent_docker_socket_pull_stall_and_cancel(pmd_factory, tmp_path):
    """A Docker engine that takes the pull and never answers: the swap
    ends with an error naming the stall, later swaps are accepted (no
    409), and `pmctl swap --cancel` ends a swap cleanly at once."""
    eng = FakeEngine(str(tmp_path / "docker.sock"))
    try:
        conf = {"runtime": "docker", "image": "registry.test/app:1", "network": "host",
                "health_path": "/", "start_timeout": "30s", "pull_stall_timeout": "1s"}
        p = pmd_factory({"pmd": {"docker_socket": eng.path},
                         "service app": conf,
                         "service other": dict(conf, pull_stall_timeout="60s"),
                         "route all": {"prefix": "/", "service": "app"}})
        for _ in range(2):   # the second one is not refused as "already running"
            code, res, events = swap(p, "app", "registry.test/app:2", timeout=20)
            assert code == 200, events
            assert res["ok"] is False, res
            assert "no progress for 1000ms (pull_stall_timeout)" in res["error"], res
            assert p.service("app")["state"] != "swapping"
        assert any(c.startswith("POST /v1.43/images/create") for c in eng.calls), eng.calls

        # cancel: the swap's own requester gets the reason, at once
        out = {}
        t = threading.Thread(target=lambda: out.update(r=swap(p, "other", "registry.test/app:2",
                                                               timeout=20)))
        t.start()
        wait_for(lambda: p.service("other")["state"] == "swapping", 10, what="swap running")
        wait_for(lambda: sum("images/create" in c for c in eng.calls) >= 3, 10,
                 what="pull of the swap sent")
        r = p.pmctl("swap", "--cancel", "other")
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert "cancelled" in r.stdout
        t.join(10)
        code, res, events = out["r"]
        assert res["ok"] is False and "cancelled (pmctl swap --cancel other)" in res["error"], res
        svc = p.service("other")
        assert svc["state"] != "swapping"
        assert svc["last_swap"]["result"] == "failed"
        # nothing to cancel any more: a conflict (exit 4) that says so
        r = p.pmctl("swap", "--cancel", "other")
        assert r.returncode == 4 and "no swap of service other is running" in r.stderr, r.stderr
        p.wait_log(r'msg="docker pull cancelled"')
    finally:
        eng.close()


# -- a registry that stops sending mid-blob ------------------------------------

class StallingProxy:
    """TCP proxy in front of the registry: relays everything, except that
    once `stall_after` bytes of a blob download went through, it stops
    relaying that answer (the connection stays open, nothing more comes)."""

    def __init__(self, target, stall_after=256 * 1024):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.stall_after = stall_after
        self.stalled = threading.Event()
        self.done = threading.Event()
        self.conns = []
        proxy = self

        class H(socketserver.BaseRequestHandler):
            def handle(self):
                proxy._relay(self.request)

        class S(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = S(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _relay(self, client):
        up = socket.create_connection(self.target)
        self.conns += [client, up]
        blob = {"on": False}

        def c2s():
            try:
                while True:
                    d = client.recv(65536)
                    if not d:
                        break
                    if b"/blobs/sha256:" in d and d.startswith(b"GET"):
                        blob["on"] = True
                    up.sendall(d)
            except OSError:
                pass

        threading.Thread(target=c2s, daemon=True).start()
        sent = 0
        try:
            while True:
                d = up.recv(65536)
                if not d:
                    break
                if blob["on"]:
                    if sent + len(d) > self.stall_after:
                        client.sendall(d[:self.stall_after - sent])
                        self.stalled.set()
                        self.done.wait()    # hold: nothing more is relayed
                        return
                    sent += len(d)
                client.sendall(d)
        except OSError:
            pass

    def close(self):
        self.done.set()
        self.server.shutdown()
        close_all(self.conns)
        self.server.server_close()


def random_image(env, tmp_path):
    """A one-layer image of 4 MiB random bytes pushed to the test registry
    and removed from dockerd, so a pull must download the blob."""
    ref = f"{env['PMD_TEST_REGISTRY']}/pmd-test/stall:{uuid.uuid4().hex[:12]}"
    tar = tmp_path / "layer.tar"
    with tarfile.open(tar, "w") as t:
        data = os.urandom(4 << 20)
        info = tarfile.TarInfo("blob.bin")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    docker("import", str(tar), ref)
    docker("push", ref)
    docker("rmi", "-f", ref)
    return ref


def test_registry_stalling_mid_blob_aborts_the_swap(pmd_factory, tmp_path, dk):
    ref = random_image(dk, tmp_path)
    proxy = StallingProxy(dk["PMD_TEST_REGISTRY"])
    try:
        via = ref.replace(dk["PMD_TEST_REGISTRY"], f"127.0.0.1:{proxy.port}", 1)
        auth = base64.b64encode(f"{dk['PMD_TEST_REGISTRY_USER']}:"
                                f"{dk['PMD_TEST_REGISTRY_PASSWORD']}".encode()).decode()
        auth_file = tmp_path / "auth.json"
        auth_file.write_text(json.dumps({"auths": {
            dk["PMD_TEST_REGISTRY"]: {"auth": auth}, f"127.0.0.1:{proxy.port}": {"auth": auth}}}))
        p = pmd_factory(one("web", web_conf(dk, registry_auth_file=str(auth_file),
                                            pull="always", pull_stall_timeout="2s")))
        p.wait_healthy("web", 60)
        code, res, events = swap(p, "web", via, timeout=60)
        assert proxy.stalled.is_set(), "the pull never reached the blob"
        assert res["ok"] is False, res
        assert "no progress for 2000ms (pull_stall_timeout)" in res["error"], res
        svc = p.service("web")
        assert svc["state"] == "running" and svc["image"] == dk["PMD_TEST_IMAGE_FRONTEND"], svc
        assert p.get("/index.html").status == 200
        # the next swap is not refused and goes live
        code, res, events = swap(p, "web", dk["PMD_TEST_IMAGE_FRONTEND_V2"], timeout=60)
        assert res["ok"] is True, events
    finally:
        proxy.close()


# -- an engine whose stop / delete / start fail on demand ------------------------

class FaultyEngine:
    """A unix socket in front of the real dockerd that relays every call,
    except those `fail(method, path)` picks while faults are on: those get
    a 500 {"message": "engine restarting (injected)"} and are never sent
    to dockerd. Each request is looked at as it starts (curl sends a
    request head in one piece; there is no pipelining)."""

    def __init__(self, path, real):
        self.path, self.real = path, real
        self.fail = None
        self.failed = []
        self.stop = threading.Event()
        self.conns = []
        self.sock = serve_unix(path, self._accepted)

    def _accepted(self, c):
        up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        up.connect(self.real)
        self.conns += [c, up]
        threading.Thread(target=relay, args=(up, c), daemon=True).start()
        self._c2s(c, up)

    def _c2s(self, c, up):
        try:
            while True:
                d = c.recv(65536)
                if not d:
                    break
                words = d.split(b"\r\n", 1)[0].split(b" ")
                fail = self.fail
                if len(words) == 3 and words[2].startswith(b"HTTP/") and fail and \
                        fail(words[0].decode(), words[1].decode()):
                    self.failed.append(f"{words[0].decode()} {words[1].decode()}")
                    body = b'{"message":"engine restarting (injected)"}'
                    c.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: "
                              b"application/json\r\nConnection: close\r\nContent-Length: "
                              b"%d\r\n\r\n%s" % (len(body), body))
                    break
                up.sendall(d)
        except OSError:
            pass
        for s in (c, up):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.stop.set()
        close_all(self.conns)
        self.sock.close()


def containers(name):
    """States of the containers called `name` ([] when there is none)."""
    out = docker("ps", "-a", "--filter", f"name=^{name}$", "--format", "{{.State}}").stdout
    return out.split()


def instances(p, svc, role):
    return [i for i in p.service(svc)["instances"] if i["role"] == role]


def test_failed_removals_are_retried_and_shown(pmd_factory, tmp_path, dk):
    """stop/delete of the old instance answer 500 after the switch: the
    swap is done (the new image serves), the old container is listed as
    `leftover` with the error, and removed by the retries once the engine
    answers again. A candidate whose start and removal fail does not stay
    `Created`."""
    eng = FaultyEngine(str(tmp_path / "docker.sock"), dk["PMD_TEST_DOCKER_SOCKET"])
    try:
        p = pmd_factory(dict(one("web", web_conf(dk)),
                             pmd={"docker_socket": eng.path}))
        p.wait_healthy("web", 60)
        assert containers("pm-web-blue") == ["running"]
        eng.fail = lambda m, path: (m == "DELETE" and "/containers/" in path) or \
            (m == "POST" and "/stop?" in path)
        code, res, events = swap(p, "web", dk["PMD_TEST_IMAGE_FRONTEND_V2"])
        assert res["ok"] is True, events
        assert any(e.get("event") == "leftover" for e in events), events
        assert p.get("/index.html").status == 200
        left = wait_for(lambda: instances(p, "web", "leftover"), 10, what="leftover listed")
        assert left[0]["color"] == "blue" and "engine restarting" in left[0]["error"], left
        assert containers("pm-web-blue") == ["running"]
        assert any("/stop" in f for f in eng.failed), eng.failed
        p.wait_log(r'msg="instance not removed, retrying" service=web color=blue')
        eng.fail = None
        wait_for(lambda: not instances(p, "web", "leftover"), 15, what="leftover removed")
        wait_for(lambda: containers("pm-web-blue") == [], 10, what="old container gone")

        # a candidate that cannot start, and whose removal fails too
        eng.fail = lambda m, path: (m == "DELETE" and "/containers/" in path) or \
            (m == "POST" and path.endswith("/start"))
        code, res, events = swap(p, "web", dk["PMD_TEST_IMAGE_FRONTEND"])
        assert res["ok"] is False and "engine restarting" in res["error"], res
        p.wait_log(r'msg="instance not removed, retrying" service=web color=blue')
        assert containers("pm-web-blue") == ["created"]
        eng.fail = None
        wait_for(lambda: containers("pm-web-blue") == [], 15, what="candidate removed")
        wait_for(lambda: not instances(p, "web", "leftover"), 10, what="no leftover")
        assert p.service("web")["image"] == dk["PMD_TEST_IMAGE_FRONTEND_V2"]
    finally:
        eng.close()


def test_instance_newer_than_state_is_adopted(pmd_factory, tmp_path, dk):
    """A swap went live but state.json still names the old colour (it
    could not be written; an older pmd reported the swap done anyway): at
    the next start the running new instance is adopted, not removed as a
    stray with the old image started again."""
    sections = one("web", web_conf(dk))
    p = pmd_factory(sections)
    p.wait_healthy("web", 60)
    state_dir = tmp_path / "pmd0" / "state"
    before = {n: (state_dir / n).read_text() for n in ("state.json", "state.json.prev")
              if (state_dir / n).exists()}
    code, res, events = swap(p, "web", dk["PMD_TEST_IMAGE_FRONTEND_V2"])
    assert res["ok"] is True, events
    green = [i for i in p.service("web")["instances"] if i["role"] == "live"][0]
    assert green["color"] == "green"
    p.stop()
    for n, text in before.items():     # the swap's record is lost
        (state_dir / n).write_text(text)
    assert json.loads(before["state.json"])["services"]["web"]["color"] == "blue"

    p2 = pmd_factory(sections, start=False, name="pmd0")
    p2.start()
    svc = p2.wait_healthy("web", 30)
    p2.wait_log(r'msg="adopting an instance state.json does not name" service=web color=green')
    assert svc["image"] == dk["PMD_TEST_IMAGE_FRONTEND_V2"], svc
    assert svc["previous_image"] == dk["PMD_TEST_IMAGE_FRONTEND"], svc
    assert [(i["id"], i["role"]) for i in svc["instances"]] == [(green["id"], "live")], svc
    assert containers("pm-web-green") == ["running"] and containers("pm-web-blue") == []
    assert "removing stray instance" not in p2.log_text()
    wait_for(lambda: json.loads((state_dir / "state.json").read_text())
             ["services"]["web"]["color"] == "green", 10, what="state.json records green")
