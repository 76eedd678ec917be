"""The supervisor with the Docker runtime against the real engine and
registry started by tests/services.sh: pulls with credentials, start and
route, restarts, crash loops, unhealthy replacement, required_env,
adoption after kill -9, a corrupt state file, foreign containers,
keep_images and a stale candidate.

Every container runs with network = host and binds 127.0.0.1:$PORT (the
test dockerd has no bridge). Images come from the test registry
(tests/images/build.sh); the busybox frontend image doubles as a shell
for ad-hoc apps (`command = sh -c '...'`)."""
import base64
import json
import os
import shutil
import socket
import threading
import time

import pytest

import pmdtest
from pmdtest import docker, wait_for

NEEDED = ("PMD_TEST_DOCKER_SOCKET", "PMD_TEST_REGISTRY", "PMD_TEST_REGISTRY_AUTH_FILE",
          "PMD_TEST_IMAGE_BACKEND", "PMD_TEST_IMAGE_BACKEND_V2", "PMD_TEST_IMAGE_FRONTEND",
          "PMD_TEST_DOCKER_IMAGE")
if not all(os.environ.get(n) for n in NEEDED):
    pytest.skip("needs the test dockerd and registry (tests/services.sh)", allow_module_level=True)

E = {n: os.environ[n] for n in NEEDED}
BACKEND, BACKEND_V2 = E["PMD_TEST_IMAGE_BACKEND"], E["PMD_TEST_IMAGE_BACKEND_V2"]
FRONTEND, BUSYBOX = E["PMD_TEST_IMAGE_FRONTEND"], E["PMD_TEST_DOCKER_IMAGE"]
AUTH_FILE = E["PMD_TEST_REGISTRY_AUTH_FILE"]
FOREIGN = ("pmdtest-foreign", "pm-clash-blue")

# A busybox web app whose health is a file: remove /tmp/w/health (docker
# exec) and its health checks fail.
FLAG_APP = ("sh -c 'mkdir -p /tmp/w && echo ok > /tmp/w/health && "
            "exec httpd -f -p 127.0.0.1:$PORT -h /tmp/w'")


def pmd_containers(**labels):
    """Containers with pmd.managed=true (and the given labels), running or not:
    [{id, name, state, labels}]."""
    args = ["ps", "-a", "--no-trunc", "--filter", "label=pmd.managed=true"]
    for k, v in labels.items():
        args += ["--filter", f"label=pmd.{k}={v}"]
    out = docker(*args, "--format", "{{json .}}").stdout
    res = []
    for line in out.splitlines():
        d = json.loads(line)
        res.append({"id": d["ID"], "name": d["Names"], "state": d["State"],
                    "labels": dict(kv.split("=", 1) for kv in d["Labels"].split(",") if kv)})
    return res


def inspect(name):
    return json.loads(docker("inspect", name).stdout)[0]


def image_present(ref):
    return docker("image", "inspect", ref, check=False).returncode == 0


def remove_all():
    ids = docker("ps", "-aq", "--filter", "label=pmd.managed=true").stdout.split()
    ids += [n for n in FOREIGN if docker("inspect", n, check=False).returncode == 0]
    if ids:
        docker("rm", "-f", *ids, check=False)


@pytest.fixture(autouse=True)
def clean_containers():
    """No pmd container before a test; none left after it (pmd itself is
    stopped first: this fixture is set up before pmd_factory)."""
    remove_all()
    yield
    remove_all()


def backend_conf(**over):
    c = {
        "runtime": "docker",
        "image": BACKEND,
        "network": "host",
        "registry_auth_file": AUTH_FILE,
        "pull": "always",
        "health_path": "/api/v1/health/",
        "health_interval": "200ms",
        "health_timeout": "1s",
        "healthy_threshold": 1,
        "unhealthy_threshold": 2,
        "start_timeout": "30s",
        "drain_timeout": "1s",
        "stop_timeout": "2s",
    }
    c.update(over)
    return c


def frontend_conf(**over):
    return backend_conf(**dict({"image": FRONTEND, "health_path": "/index.html"}, **over))


def stack(backend=None, frontend=None):
    """Sections of the two-service stack: /api/ -> backend, / -> frontend."""
    sec = {"service backend": backend_conf(**(backend or {})),
           "route api": {"prefix": "/api/", "service": "backend"}}
    if frontend is not False:
        sec["service frontend"] = frontend_conf(**(frontend or {}))
        sec["route web"] = {"prefix": "/", "service": "frontend"}
    return sec


def one(name, conf):
    """Sections of a single service `name` routed at /."""
    return {f"service {name}": conf, "route all": {"prefix": "/", "service": name}}


def state_is(p, svc, state):
    s = p.service(svc)
    return s if s["state"] == state else None


def live(p, svc):
    """The live instance of svc in /status."""
    insts = [i for i in p.service(svc)["instances"] if i.get("role", "live") == "live"]
    assert len(insts) == 1, p.service(svc)
    return insts[0]


def swap(p, svc, image):
    """POST /services/SVC/swap; returns (status, last event)."""
    code, events = p.control_stream("POST", f"/services/{svc}/swap", {"image": image},
                                    timeout=120)
    return code, events[-1] if events else None, events


def test_pull_with_credentials_start_and_route(pmd_factory):
    for img in (BACKEND, FRONTEND):  # make the first start pull them
        docker("rmi", "-f", img, check=False)
    p = pmd_factory(stack())
    be = p.wait_healthy("backend", 60)
    fe = p.wait_healthy("frontend", 60)
    assert be["state"] == "running" and fe["state"] == "running"
    assert be["image"] == BACKEND and fe["image"] == FRONTEND
    assert image_present(BACKEND) and image_present(FRONTEND)

    r = p.get("/api/v1/version")
    assert r.status == 200 and r.json() == {"version": "1"}, r
    r = p.get("/")
    assert r.status == 200 and b"pmd test frontend" in r.body, r

    # the containers: named by colour, labelled, host network, PORT = the
    # port pmd routes to, no restart policy of Docker's own
    inst = live(p, "backend")
    c = inspect("pm-backend-blue")
    assert c["Id"] == inst["id"]
    labels = c["Config"]["Labels"]
    assert labels["pmd.managed"] == "true" and labels["pmd.service"] == "backend"
    assert labels["pmd.color"] == "blue" and labels["pmd.image"] == BACKEND
    assert c["HostConfig"]["NetworkMode"] == "host"
    assert c["HostConfig"]["RestartPolicy"]["Name"] == "no"
    env = p.get("/api/v1/env").json()
    assert env["PORT"] == str(inst["port"])
    assert inspect("pm-frontend-blue")["Id"] == live(p, "frontend")["id"]

    # the live container's output (gunicorn's access log)
    r = p.pmctl("logs", "backend", "--tail", "5")
    assert r.returncode == 0 and "GET /api/v1/env" in r.stdout, r


def test_bad_credentials_and_missing_tag(pmd_factory, tmp_path):
    auth = tmp_path / "config.json"
    auth.write_text(open(AUTH_FILE).read())
    p = pmd_factory(stack(backend={"registry_auth_file": str(auth)}, frontend=False))
    p.wait_healthy("backend", 60)
    old = live(p, "backend")["id"]

    # a tag the registry does not have
    missing = BACKEND.rsplit(":", 1)[0] + ":no-such-tag"
    code, last, _ = swap(p, "backend", missing)
    assert code == 200 and last["ok"] is False, last
    assert "no-such-tag" in last["error"], last
    assert "does not exist in the registry" in last["error"], last

    # a wrong password (the file is read at each pull)
    doc = json.loads(auth.read_text())
    for entry in doc["auths"].values():
        user = base64.b64decode(entry["auth"]).decode().split(":", 1)[0]
        entry["auth"] = base64.b64encode(f"{user}:wrong-password".encode()).decode()
    auth.write_text(json.dumps(doc))
    code, last, _ = swap(p, "backend", BACKEND_V2)
    assert code == 200 and last["ok"] is False, last
    assert "refused the credentials" in last["error"], last

    # the live instance was never touched
    assert live(p, "backend")["id"] == old
    assert p.get("/api/v1/version").json() == {"version": "1"}

    # a first start with wrong credentials: the service says why
    docker("rmi", "-f", BACKEND_V2, check=False)
    q = pmd_factory(one("api", backend_conf(registry_auth_file=str(auth), image=BACKEND_V2)),
                    name="q")
    s = wait_for(lambda: (lambda s: s if s.get("error") else None)(q.service("api")), 30,
                 what="an error on the service")
    assert s["state"] in ("crashloop", "restarting", "failed"), s
    assert "refused the credentials" in s["error"] and BACKEND_V2 in s["error"], s
    assert not pmd_containers(service="api")


def test_killed_container_is_restarted_with_backoff(pmd_factory):
    p = pmd_factory(stack(frontend=False))
    p.wait_healthy("backend", 60)
    first = live(p, "backend")["id"]
    docker("kill", "pm-backend-blue")
    wait_for(lambda: p.service("backend")["restarts"] == 1, 15, interval=0.1,
             what="restart counted")
    p.wait_healthy("backend", 30)
    second = live(p, "backend")["id"]
    assert second != first
    s = p.service("backend")
    assert s["last_exit_code"] == 137 and s["instances"][0]["restarts"] == 1, s
    assert [c["id"] for c in pmd_containers(service="backend")] == [second]
    assert p.get("/api/v1/version").status == 200
    p.wait_log(r'msg="restart scheduled" service=backend in_ms=1000')

    # a second crash soon after: the backoff doubles
    docker("kill", "pm-backend-blue")
    wait_for(lambda: p.service("backend")["restarts"] == 2, 15, interval=0.1,
             what="second restart")
    p.wait_log(r'msg="restart scheduled" service=backend in_ms=2000')
    p.wait_healthy("backend", 30)
    assert p.get("/api/v1/version").status == 200


def test_image_that_exits_at_once_is_a_crash_loop(pmd_factory):
    conf = frontend_conf(command="sh -c 'echo boom: cannot reach the database; exit 3'")
    p = pmd_factory(one("app", conf))
    s = wait_for(lambda: state_is(p, "app", "crashloop"), 30, interval=0.1, what="crashloop")
    s = wait_for(lambda: (lambda s: s if s.get("last_logs") else None)(p.service("app")), 10,
                 what="last_logs")
    assert s["last_exit_code"] == 3, s
    assert any("boom: cannot reach the database" in line for line in s["last_logs"]), s
    assert "exited with code 3" in s["error"], s
    wait_for(lambda: p.service("app")["restarts"] >= 2, 15, interval=0.1, what="restarts")
    assert p.service("app")["state"] == "crashloop"
    r = p.pmctl("logs", "app")
    assert "boom: cannot reach the database" in r.stdout, r


def test_backend_turning_unhealthy_is_replaced(pmd_factory):
    conf = frontend_conf(command=FLAG_APP, health_path="/health", unhealthy_restart="1s")
    p = pmd_factory(one("app", conf))
    p.wait_healthy("app", 60)
    old = live(p, "app")
    assert p.get("/health").status == 200
    docker("exec", f"pm-app-{old['color']}", "rm", "/tmp/w/health")
    wait_for(lambda: state_is(p, "app", "unhealthy"), 10, interval=0.1, what="unhealthy")
    assert "health check failing" in p.service("app")["error"]

    def replaced():
        s = p.service("app")
        ins = [i for i in s["instances"] if i["id"] != old["id"]]
        return s if s["state"] == "running" and len(s["instances"]) == 1 and ins and \
            ins[0]["healthy"] else None
    s = wait_for(replaced, 30, interval=0.1, what="a healthy replacement")
    new = s["instances"][0]
    assert new["color"] != old["color"]
    assert p.get("/health").status == 200
    assert [c["id"] for c in pmd_containers(service="app")] == [new["id"]]


def test_missing_required_env_is_refused_with_the_key_names(pmd_factory, tmp_path):
    env_file = tmp_path / "app.env"
    env_file.write_text("# settings\nSECRET_KEY=s3cret\n")
    conf = backend_conf(required_env="DATABASE_URL, SECRET_KEY, REDIS_URL",
                        env_file=str(env_file), env="REDIS_URL=redis://127.0.0.1")
    p = pmd_factory(one("backend", conf))
    s = wait_for(lambda: (lambda s: s if s.get("error") else None)(p.service("backend")), 10,
                 what="an error")
    assert "DATABASE_URL" in s["error"], s
    assert "SECRET_KEY" not in s["error"] and "REDIS_URL" not in s["error"], s
    assert s["state"] == "failed", s
    assert not pmd_containers(service="backend")

    # provided: it starts, and the container sees all three
    env_file.write_text("SECRET_KEY=s3cret\nDATABASE_URL=postgres://db/x\n")
    code, events = p.control_stream("POST", "/services/backend/restart")
    assert events[-1]["ok"] is True, events[-1]
    env = p.get("/api/v1/env").json()
    assert env["DATABASE_URL"] == "postgres://db/x" and env["SECRET_KEY"] == "s3cret"
    assert env["REDIS_URL"] == "redis://127.0.0.1"


def test_kill9_then_restart_adopts_the_same_containers(pmd_factory):
    sections = stack()
    p = pmd_factory(sections)
    p.wait_healthy("backend", 60)
    p.wait_healthy("frontend", 60)
    ids = {s: live(p, s)["id"] for s in ("backend", "frontend")}
    started = {s: inspect(ids[s])["State"]["StartedAt"] for s in ids}
    p.kill9()
    # pmd is gone; the apps are not
    for s in ids:
        assert inspect(ids[s])["State"]["Running"]

    seen = len(p.log_text())
    q = pmd_factory(sections, name=p.dir.name, http_port=p.http_port)
    for s in ids:
        st = q.wait_healthy(s, 30)
        assert live(q, s)["id"] == ids[s], st
        assert st["restarts"] == 0
        c = inspect(ids[s])
        assert c["State"]["StartedAt"] == started[s] and c["State"]["Running"]
    assert q.get("/api/v1/version").json() == {"version": "1"}
    assert b"pmd test frontend" in q.get("/").body
    q.wait_log(r'msg="instance adopted" service=backend')
    assert len(pmd_containers()) == 2
    assert "instance starting" not in q.log_text()[seen:]


def test_corrupt_state_file_is_rebuilt_from_labels(pmd_factory):
    sections = stack(frontend=False)
    p = pmd_factory(sections)
    p.wait_healthy("backend", 60)
    r = p.pmctl("swap", "backend", BACKEND_V2)
    assert r.returncode == 0, r
    assert "pull" in r.stdout and BACKEND_V2 in r.stdout, r
    inst = live(p, "backend")
    assert inst["color"] == "green"
    started = inspect(inst["id"])["State"]["StartedAt"]
    p.stop()
    state = os.path.join(p.state_dir, "state.json")
    with open(state, "w") as f:
        f.write('{"services": {"backend": ')   # truncated

    q = pmd_factory(sections, name=p.dir.name, http_port=p.http_port)
    s = q.wait_healthy("backend", 30)
    assert live(q, "backend")["id"] == inst["id"]
    assert inspect(inst["id"])["State"]["StartedAt"] == started
    assert s["image"] == BACKEND_V2 and s["color"] == "green" and s["restarts"] == 0
    assert q.get("/api/v1/version").json() == {"version": "2"}
    q.wait_log(r'state file unusable')
    # rebuilt: valid JSON naming the adopted container
    doc = wait_for(lambda: json.load(open(state)), 10, what="state.json rewritten")
    assert inst["id"] in json.dumps(doc)
    assert [c["id"] for c in pmd_containers()] == [inst["id"]]


def test_foreign_containers_are_left_alone(pmd_factory):
    docker("run", "-d", "--name", FOREIGN[0], "--network", "host", BUSYBOX, "sleep", "300")
    # a container of someone else's under the name pmd would use
    docker("run", "-d", "--name", FOREIGN[1], "--network", "host", BUSYBOX, "sleep", "300")
    ids = {n: inspect(n)["Id"] for n in FOREIGN}
    sections = stack(frontend=False)
    sections.update(one("clash", frontend_conf(image=BUSYBOX, pull="missing")))
    sections["route all"]["prefix"] = "/clash/"
    p = pmd_factory(sections)
    p.wait_healthy("backend", 60)
    s = wait_for(lambda: (lambda s: s if s.get("error") else None)(p.service("clash")), 20,
                 what="clash error")
    assert "not managed by pmd" in s["error"] and FOREIGN[1] in s["error"], s
    p.stop()
    for n in FOREIGN:
        c = inspect(n)
        assert c["Id"] == ids[n] and c["State"]["Running"], n
    assert docker("inspect", "pm-backend-blue", check=False).returncode == 0


def test_keep_images_prunes_older_images(pmd_factory):
    for img in (BACKEND, BACKEND_V2):
        docker("rmi", "-f", img, check=False)
    p = pmd_factory(stack(backend={"keep_images": 1}, frontend=False))
    p.wait_healthy("backend", 60)
    assert image_present(BACKEND)
    code, last, _ = swap(p, "backend", BACKEND_V2)
    assert last["ok"] is True, last
    wait_for(lambda: not image_present(BACKEND), 20, what=f"{BACKEND} pruned")
    assert image_present(BACKEND_V2)
    assert image_present(BUSYBOX)  # other repositories are not touched
    assert p.get("/api/v1/version").json() == {"version": "2"}


def test_keep_images_removes_the_service_names_only(pmd_factory):
    """Only the name the old instance ran goes: a second tag of the same
    image in the service's repository and its name in another repository
    stay (pmd never ran them)."""
    repo = BACKEND.rsplit(":", 1)[0]
    for img in (BACKEND, BACKEND_V2):
        docker("rmi", "-f", img, check=False)
    p = pmd_factory(stack(backend={"keep_images": 1}, frontend=False))
    p.wait_healthy("backend", 60)
    docker("tag", BACKEND, f"{repo}:1-alias")
    docker("tag", BACKEND, "pmdtest-other:1")
    try:
        assert swap(p, "backend", BACKEND_V2)[1]["ok"] is True
        wait_for(lambda: not image_present(BACKEND), 20, what="the old image's name removed")
        assert image_present(f"{repo}:1-alias") and image_present("pmdtest-other:1")
        assert "image not removed" not in p.log_text()
    finally:
        docker("rmi", "pmdtest-other:1", f"{repo}:1-alias", check=False)


def local_images(repo, tags):
    """Distinct local-only images repo:TAG (busybox plus a label), as if
    loaded with `docker load`; returns their IDs."""
    ids = {}
    for t in tags:
        docker("rmi", "-f", f"{repo}:{t}", check=False)
        name = f"pmdtest-mk-{t}"
        docker("rm", "-f", name, check=False)
        docker("create", "--name", name, BUSYBOX, "true")
        docker("commit", "--change", f"LABEL pmdtest.tag={t}", name, f"{repo}:{t}")
        docker("rm", "-f", name)
        ids[t] = inspect(f"{repo}:{t}")["Id"]
    return ids


def test_keep_images_prunes_only_images_the_service_ran(pmd_factory):
    """Tags loaded locally (pull = missing) that pmd never ran survive the
    swaps; the service's own old image is still pruned; state.json lists
    what ran."""
    repo = "pmdtest-keep"
    ids = local_images(repo, ("0", "1", "2", "bad"))
    conf = frontend_conf(image=f"{repo}:0", pull="missing", keep_images=1, command=FLAG_APP,
                         health_path="/health", registry_auth_file="")
    try:
        p = pmd_factory(one("app", conf))
        p.wait_healthy("app", 30)
        assert swap(p, "app", f"{repo}:1")[1]["ok"] is True
        wait_for(lambda: not image_present(f"{repo}:0"), 20, what=":0 (ran before) pruned")
        assert image_present(f"{repo}:2") and image_present(f"{repo}:bad")
        assert swap(p, "app", f"{repo}:2")[1]["ok"] is True
        wait_for(lambda: not image_present(f"{repo}:1"), 20, what=":1 (ran before) pruned")
        assert image_present(f"{repo}:2") and image_present(f"{repo}:bad")
        st = json.loads((p.dir / "state" / "state.json").read_text())
        assert st["services"]["app"]["deployed_images"] == [
            {"ref": f"{repo}:2", "id": ids["2"]}], st
        # :2 loaded again as another image (a moving tag): the old one goes by ID
        new2 = local_images(repo, ("2",))["2"]
        assert new2 != ids["2"] and image_present(ids["2"])
        assert swap(p, "app", f"{repo}:2")[1]["ok"] is True
        assert live(p, "app")["image"] == f"{repo}:2"
        wait_for(lambda: not image_present(ids["2"]), 20, what="the old image of :2 pruned")
        assert image_present(f"{repo}:2") and image_present(f"{repo}:bad")
    finally:
        for t in ("0", "1", "2", "bad"):
            docker("rmi", "-f", f"{repo}:{t}", check=False)


def test_keep_images_keeps_the_previous_one(pmd_factory):
    for img in (BACKEND, BACKEND_V2):
        docker("rmi", "-f", img, check=False)
    p = pmd_factory(stack(backend={"keep_images": 2}, frontend=False))
    p.wait_healthy("backend", 60)
    code, last, _ = swap(p, "backend", BACKEND_V2)
    assert last["ok"] is True, last
    p.wait_log(r'msg="instance removed" service=backend color=blue')
    time.sleep(1)  # a prune would have run by now
    assert image_present(BACKEND) and image_present(BACKEND_V2)
    # rollback works from the kept image
    code, events = p.control_stream("POST", "/services/backend/rollback")
    assert events[-1]["ok"] is True, events[-1]
    assert p.get("/api/v1/version").json() == {"version": "1"}


def test_keep_images_counts_images_pinned_by_digest(pmd_factory):
    docker("pull", "-q", BACKEND_V2)
    pinned = docker("image", "inspect", "--format", "{{index .RepoDigests 0}}",
                    BACKEND_V2).stdout.strip()
    assert "@sha256:" in pinned
    for img in (BACKEND, BACKEND_V2):
        docker("rmi", "-f", img, check=False)
    p = pmd_factory(stack(backend={"keep_images": 2}, frontend=False))
    p.wait_healthy("backend", 60)
    assert swap(p, "backend", pinned)[1]["ok"] is True
    assert swap(p, "backend", BACKEND)[1]["ok"] is True
    p.wait_log(r'msg="instance removed" service=backend color=green')
    time.sleep(1)  # a prune would have run by now
    assert image_present(pinned), "the previous image (by digest) was pruned"
    assert p.get("/api/v1/version").json() == {"version": "1"}


def test_stale_candidate_is_removed_at_start(pmd_factory):
    sections = stack(frontend=False)
    p = pmd_factory(sections)
    p.wait_healthy("backend", 60)
    blue = live(p, "backend")["id"]
    p.kill9()
    # what a kill -9 in the middle of a swap leaves: a green candidate
    port = pmdtest.free_port()
    docker("run", "-d", "--name", "pm-backend-green", "--network", "host",
           "--label", "pmd.managed=true", "--label", "pmd.service=backend",
           "--label", "pmd.color=green", "--label", f"pmd.image={BACKEND_V2}",
           "--label", f"pmd.port={port}", BUSYBOX, "sleep", "300")
    green = inspect("pm-backend-green")["Id"]

    q = pmd_factory(sections, name=p.dir.name, http_port=p.http_port)
    q.wait_healthy("backend", 30)
    assert live(q, "backend")["id"] == blue
    wait_for(lambda: docker("inspect", green, check=False).returncode != 0, 20,
             what="the stale candidate removed")
    assert [c["id"] for c in pmd_containers()] == [blue]
    assert q.service("backend")["restarts"] == 0
    assert q.get("/api/v1/version").json() == {"version": "1"}


def test_release_command_runs_in_a_one_off_container(pmd_factory):
    # the test images say their version in APP_VERSION: v1 migrates, v2 fails
    conf = backend_conf(release_command="sh -c 'echo migrating $MIGRATE_DB; "
                                        "test \"$APP_VERSION\" = 2 && exit 4; exit 0'",
                        env="MIGRATE_DB=main")
    p = pmd_factory(one("backend", conf))
    p.wait_healthy("backend", 60)  # the first start ran it (v1: exit 0)
    assert "release command done, starting the first instance" in p.log_text()
    old = live(p, "backend")["id"]
    code, last, events = swap(p, "backend", BACKEND_V2)
    assert last["ok"] is False, last
    assert "release command exited with code 4" in last["error"], last
    assert any("migrating main" in line for line in last["logs"]), last
    rel = [e for e in events if e.get("event") == "release"]
    assert rel and rel[-1]["exit_code"] == 4, events
    # nothing of the swap is left: no candidate, no one-off container
    assert [c["id"] for c in pmd_containers()] == [old]
    assert live(p, "backend")["id"] == old
    assert p.get("/api/v1/version").json() == {"version": "1"}


def test_interrupted_first_release_runs_again(pmd_factory, tmp_path):
    """pmd stopped while the first start's release command runs: at the
    next start the release runs again before the app starts, whether the
    state folder was kept (another service's start wrote state.json
    meanwhile) or removed (only the one-off container is left)."""
    data = tmp_path / "data"
    data.mkdir()
    # runs 1 and 2 are cut short (they sleep), run 3 finishes
    release = ("sh -c 'echo run >> /data/runs; "
               "test $(wc -l < /data/runs) -ge 3 || exec sleep 120'")
    sections = {
        "service app": frontend_conf(image=BUSYBOX, pull="missing", command=FLAG_APP,
                                     health_path="/health", registry_auth_file="",
                                     release_command=release, volumes=f"{data}:/data"),
        "route app": {"prefix": "/", "service": "app"},
        "service web": frontend_conf(image=BUSYBOX, pull="missing", command=FLAG_APP,
                                     health_path="/health", registry_auth_file=""),
        "route web": {"prefix": "/web/", "service": "web"},
    }
    runs = data / "runs"
    p = pmd_factory(sections)
    p.wait_healthy("web", 30)
    wait_for(lambda: runs.exists() and runs.read_text().count("run") == 1, 20,
             what="the first release running")
    p.stop()
    assert p.dir.joinpath("state", "state.json").exists()
    q = pmd_factory(sections, name=p.dir.name, http_port=p.http_port)   # state kept
    wait_for(lambda: runs.read_text().count("run") == 2, 30, what="the release run again")
    assert q.service("app")["state"] == "starting", q.service("app")
    q.stop()
    shutil.rmtree(q.state_dir)
    assert pmd_containers(color="once"), "the cut release container is left over"
    r = pmd_factory(sections, name=p.dir.name, http_port=p.http_port)   # state removed
    r.wait_healthy("app", 60)
    assert runs.read_text().count("run") == 3
    assert "release command done, starting the first instance" in r.log_text()
    wait_for(lambda: not pmd_containers(color="once"), 20, what="the cut release container removed")


# Prints one line no other instance prints, then serves like FLAG_APP.
MARKED_APP = ("sh -c 'echo \"marker $(cat /proc/sys/kernel/random/uuid)\"; "
              "mkdir -p /tmp/w && echo ok > /tmp/w/health && "
              "exec httpd -f -p 127.0.0.1:$PORT -h /tmp/w'")


def marker(text):
    """The marker lines in text (pmctl logs output)."""
    return [l for l in text.splitlines() if l.startswith("marker ")]


def test_logs_of_previous_instances_and_relay(pmd_factory):
    """Container output goes to pmd's log (log_relay, default on; off for
    `quiet`); the last lines of a replaced and of a crashed instance stay
    retrievable with --previous and --instance."""
    conf = dict(image=BUSYBOX, pull="missing", command=MARKED_APP, health_path="/health",
                registry_auth_file="")
    p = pmd_factory({"service app": frontend_conf(**conf),
                     "route app": {"prefix": "/", "service": "app"},
                     "service quiet": frontend_conf(log_relay=False, **conf),
                     "route quiet": {"prefix": "/q/", "service": "quiet"}})
    p.wait_healthy("app", 30)
    p.wait_healthy("quiet", 30)
    first = live(p, "app")["id"]
    m1 = wait_for(lambda: marker(p.pmctl("logs", "app").stdout), 10, what="app output")
    p.wait_log(r'msg="app output" service=app color=blue line="' + m1[0])
    mq = wait_for(lambda: marker(p.pmctl("logs", "quiet").stdout), 10, what="quiet output")
    assert mq[0] not in p.log_text()

    r = p.pmctl("restart", "app")          # replaced (drained, removed)
    assert r.returncode == 0, r.stderr
    second = live(p, "app")["id"]
    assert second != first
    m2 = wait_for(lambda: marker(p.pmctl("logs", "app").stdout), 10, what="new app output")
    assert m2 != m1
    wait_for(lambda: not [c for c in pmd_containers(service="app") if c["id"] == first], 20,
             what="the replaced instance removed")
    r = p.pmctl("logs", "app", "--previous")
    assert r.returncode == 0 and marker(r.stdout) == m1, (r.stdout, r.stderr)
    r = p.pmctl("logs", "app", "--instance", first[:12], "--tail", "1")
    assert r.returncode == 0 and marker(r.stdout) == m1, (r.stdout, r.stderr)

    docker("kill", second)                 # crashed; restarted
    wait_for(lambda: live(p, "app")["id"] not in (first, second), 30, what="a new instance")
    prev = p.service("app")["previous_instances"]
    assert [i["id"] for i in prev[:2]] == [second, first], prev
    assert prev[0]["exit_code"] == 137, prev
    r = p.pmctl("logs", "app", "--previous")
    assert marker(r.stdout) == m2, r.stdout
    r = p.pmctl("logs", "app", "--instance", "0123456789ab")
    assert r.returncode == 1 and "no instance 0123456789ab of app" in r.stderr, r.stderr


def test_containers_that_died_while_pmd_was_down_are_replaced(pmd_factory):
    """A reboot of the host: pmd and the containers all stopped (restart
    policy no); pmd starts them again and removes the dead ones."""
    sections = stack()
    p = pmd_factory(sections)
    p.wait_healthy("backend", 60)
    p.wait_healthy("frontend", 60)
    dead = {s: live(p, s)["id"] for s in ("backend", "frontend")}
    p.kill9()
    docker("kill", *dead.values())
    seen = len(p.log_text())
    q = pmd_factory(sections, name=p.dir.name, http_port=p.http_port)
    for s in dead:
        st = q.wait_healthy(s, 30)
        assert live(q, s)["id"] != dead[s]
        assert st["restarts"] == 0, st   # a fresh start, not a crash
    assert "to=crashloop" not in q.log_text()[seen:]
    assert q.get("/api/v1/version").json() == {"version": "1"}
    assert b"pmd test frontend" in q.get("/").body
    ids = sorted(c["id"] for c in pmd_containers())
    assert ids == sorted(live(q, s)["id"] for s in dead)


class EngineProxy:
    """A unix socket that forwards to the test dockerd's, which the test
    can take away (every connection cut, nothing listening) and bring back:
    the engine going away and returning, as pmd sees it."""

    def __init__(self, path):
        self.path = str(path)
        self.target = E["PMD_TEST_DOCKER_SOCKET"]
        self.conns = []
        self.lock = threading.Lock()
        self.srv = None
        self.up()

    def up(self):
        self.srv = pmdtest.serve_unix(self.path, self._accepted)

    def down(self):
        srv, self.srv = self.srv, None
        srv.shutdown(socket.SHUT_RDWR)
        srv.close()
        os.unlink(self.path)
        with self.lock:
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self.conns = []

    def _accepted(self, a):
        b = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        b.connect(self.target)
        with self.lock:
            self.conns += [a, b]
        threading.Thread(target=pmdtest.relay, args=(b, a), daemon=True).start()
        pmdtest.relay(a, b)

    def close(self):
        if self.srv is not None:
            self.down()


def test_engine_going_away_and_back(pmd_factory, tmp_path):
    """The Docker engine restarts (here: its socket goes away for a few
    seconds): pmd keeps routing to the container that still answers,
    reconnects with backoff, and watches the container again."""
    engine = EngineProxy(tmp_path / "engine.sock")
    try:
        sections = stack(frontend=False)
        sections["pmd"] = {"docker_socket": engine.path}
        p = pmd_factory(sections)
        p.wait_healthy("backend", 60)
        first = live(p, "backend")["id"]

        engine.down()
        p.wait_log(r'msg="docker engine unreachable, watching again" service=backend')
        for _ in range(10):   # still served, straight from the container
            assert p.get("/api/v1/version").json() == {"version": "1"}
            time.sleep(0.2)
        s = p.service("backend")
        assert s["state"] == "running" and s["restarts"] == 0, s
        code, last, _ = swap(p, "backend", BACKEND_V2)
        assert last["ok"] is False and "cannot reach the Docker engine" in last["error"], last
        assert engine.path in last["error"], last
        p.wait_log(r'msg="docker engine unreachable, watching again" service=backend '
                   r'id=\w+ in_ms=2000')   # backing off
        engine.up()

        # watched again: a crash after the engine came back is seen
        p.wait_log(r'msg="docker engine reachable again" service=backend id=\w+ running=1', 10)
        assert live(p, "backend")["id"] == first
        docker("kill", "pm-backend-blue")
        wait_for(lambda: p.service("backend")["restarts"] == 1, 20, interval=0.1,
                 what="the crash seen after the engine came back")
        p.wait_healthy("backend", 30)
        assert live(p, "backend")["id"] != first
        p.stop()
    finally:
        engine.close()
