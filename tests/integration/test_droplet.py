"""The droplet's side of pmd (issue 7): systemd notifications, the shipped
files in conf/ and man/, `make install` and `make dist`, `pmctl --ssh`
against a real pmd, [static] routes, versions and the disk report.

Tools that a machine may lack (systemd-analyze, cloud-init, man) skip their
test; `make deps` installs them.
"""
import email.utils
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import time

import pytest

import pmdtest

REPO = pmdtest.REPO
CONF = os.path.join(REPO, "conf")
MAN = os.path.join(REPO, "man")
VERSION = open(os.path.join(REPO, "VERSION")).read().strip()


def need(tool):
    path = shutil.which(tool)
    if not path:
        pytest.skip(f"{tool} is not installed (make deps)")
    return path


# -- sd_notify ------------------------------------------------------------------

class NotifySocket:
    """A NOTIFY_SOCKET: a unix datagram socket collecting what pmd sends."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.got = []

    def next(self, timeout=10.0):
        """The next datagram (str); AssertionError after timeout."""
        self.sock.settimeout(timeout)
        try:
            msg = self.sock.recv(4096).decode()
        except socket.timeout:
            raise AssertionError(f"no notification in {timeout}s; so far {self.got}") from None
        self.got.append(msg)
        return msg

    def wait(self, want, timeout=10.0):
        """Read datagrams until `want`; return them all, `want` last."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            msg = self.next(max(0.01, deadline - time.monotonic()))
            seen.append(msg)
            if msg == want:
                return seen

    def close(self):
        self.sock.close()


def notify_env(sock, watchdog_usec=None, watchdog_pid=None):
    env = {"NOTIFY_SOCKET": sock.path}
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    if watchdog_pid is not None:
        env["WATCHDOG_PID"] = str(watchdog_pid)
    return env


def test_sd_notify_ready_watchdog_reload_stopping(pmd_factory, tmp_path):
    ns = NotifySocket(tmp_path / "notify.sock")
    try:
        p = pmd_factory(start=False, env=notify_env(ns, watchdog_usec=400000))
        p.env.pop("WATCHDOG_PID", None)  # set by a systemd running the tests
        p.start(wait=False)
        first = ns.next()
        assert first == "READY=1", ns.got
        # READY=1 means serving: both sockets accept at this very moment
        with socket.create_connection(("127.0.0.1", p.http_port), timeout=1):
            pass
        assert p.control("GET", "/status").status == 200

        # WATCHDOG=1 at half of WATCHDOG_USEC (200 ms): several in 1.5 s
        t0 = time.monotonic()
        beats = []
        while time.monotonic() - t0 < 1.5:
            msg = ns.next(2.0)
            assert msg == "WATCHDOG=1", ns.got
            beats.append(time.monotonic())
        assert 3 <= len(beats) <= 12, beats
        gaps = [b - a for a, b in zip(beats, beats[1:])]
        assert all(0.1 < g < 0.7 for g in gaps), gaps  # 0.2 s, with slack for a busy CI

        # SIGHUP: RELOADING=1, then READY=1 again
        p.reload()
        seen = [m for m in ns.wait("READY=1") if m != "WATCHDOG=1"]
        assert seen == ["RELOADING=1", "READY=1"], ns.got
        p.wait_log(r"configuration reloaded")

        # SIGTERM: STOPPING=1, then pmd exits 0 (checked by stop())
        p.signal(signal.SIGTERM)
        seen = [m for m in ns.wait("STOPPING=1") if m != "WATCHDOG=1"]
        assert seen == ["STOPPING=1"], ns.got
        assert p.proc.wait(15) == 0
        p.stop()
    finally:
        ns.close()


def test_sd_notify_watchdog_only_for_its_own_pid(pmd_factory, tmp_path):
    """WATCHDOG_PID naming another process (a wrapper's): no WATCHDOG=1."""
    ns = NotifySocket(tmp_path / "notify.sock")
    try:
        p = pmd_factory(start=False, env=notify_env(ns, watchdog_usec=200000, watchdog_pid=1))
        p.start(wait=False)
        assert ns.next() == "READY=1"
        with pytest.raises(AssertionError, match="no notification"):
            ns.next(1.0)
    finally:
        ns.close()


def test_without_notify_socket_pmd_runs(pmd_factory):
    p = pmd_factory(start=False)
    p.env.pop("NOTIFY_SOCKET", None)
    p.start()
    assert p.status()["version"] == VERSION


# -- versions -------------------------------------------------------------------

def test_pmd_version_and_pmctl_version():
    r = subprocess.run([pmdtest.PMD, "version"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"pmd {VERSION}"
    for lib in ("libevent ", "OpenSSL ", "libcurl ", "cJSON "):
        assert any(line.startswith(lib) and re.search(r"\d+\.\d+", line) for line in lines), (lib, lines)
    r = subprocess.run([pmdtest.PMCTL, "--version"], capture_output=True, text=True, timeout=10)
    assert (r.returncode, r.stdout) == (0, f"pmctl {VERSION}\n")


# -- [static] routes -------------------------------------------------------------

def test_static_route_content_type_and_caching(pmd_factory, tmp_path):
    js = tmp_path / "env-config.js"
    js.write_text('window.ENV = { API_BASE_URL: "/api/v1" };\n')
    css = tmp_path / "site.css"
    css.write_text("body { margin: 0 }\n")
    p = pmd_factory({
        "static env-config": {"path": "/env-config.js", "file": str(js),
                              "content_type": "application/javascript"},
        "static css": {"path": "/site.css", "file": str(css)},  # type by extension
    })
    r = p.get("/env-config.js")
    assert r.status == 200
    assert r.body == js.read_bytes()
    assert r.headers["Content-Type"].startswith("application/javascript")
    assert r.headers["Content-Length"] == str(len(js.read_bytes()))
    assert r.headers["Cache-Control"] == "no-cache"
    etag = r.headers["ETag"]
    assert re.fullmatch(r'W?/?"[^"]+"', etag), etag
    lm = email.utils.parsedate_to_datetime(r.headers["Last-Modified"])
    assert int(lm.timestamp()) == int(js.stat().st_mtime)

    r = p.get("/site.css")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/css")

    # revalidation
    r = p.get("/env-config.js", headers={"If-None-Match": etag})
    assert r.status == 304 and r.body == b"" and r.headers["ETag"] == etag
    r = p.get("/env-config.js", headers={"If-None-Match": '"something-else"'})
    assert r.status == 200 and r.body == js.read_bytes()

    # HEAD: the headers of GET, no body
    r = p.request("HEAD", "/env-config.js")
    assert r.status == 200 and r.body == b""
    assert r.headers["Content-Length"] == str(len(js.read_bytes()))
    assert r.headers["ETag"] == etag
    r = p.request("POST", "/env-config.js", body=b"x")
    assert r.status == 405 and "GET" in r.headers["Allow"]

    # a new file is served after a reload, with a new validator
    time.sleep(1.1)  # a different mtime second
    js.write_text('window.ENV = { API_BASE_URL: "https://api.example/v1" };\n')
    p.reload()
    pmdtest.wait_for(lambda: p.get("/env-config.js").body == js.read_bytes(), what="new file")
    r = p.get("/env-config.js", headers={"If-None-Match": etag})
    assert r.status == 200 and r.headers["ETag"] != etag


# -- /status disk ------------------------------------------------------------------

def test_status_reports_free_disk_of_state_dir(pmd_factory):
    p = pmd_factory()
    disk = p.status()["disk"]
    sd = disk["state_dir"]
    assert sd["path"] == p.state_dir
    st = os.statvfs(p.state_dir)
    total = st.f_blocks * st.f_frsize
    assert sd["total_bytes"] == total
    # free space moves a little between the two looks
    assert abs(sd["free_bytes"] - st.f_bavail * st.f_frsize) < max(64 << 20, total // 100)
    assert 0 <= sd["free_percent"] <= 100
    assert sd["low"] == (sd["free_percent"] < 10)
    assert disk["docker_root"] is None  # no docker service configured


def test_low_disk_warning(pmd_factory, tmp_path):
    """state_dir on a small tmpfs filled past 90 %: a warning at start."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        with open(mnt / "filler", "wb") as f:
            f.write(b"\0" * (3900 << 10))
        p = pmd_factory({"pmd": {"state_dir": str(mnt / "state")}})
        p.wait_log(r"level=warn msg=\"low disk space\" what=state_dir .*free_percent=")
        sd = p.status()["disk"]["state_dir"]
        assert sd["low"] is True and sd["free_percent"] < 10
        p.stop()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_status_reports_docker_data_root(pmd_factory, docker_env):
    image = os.environ.get("PMD_TEST_DOCKER_IMAGE")
    if not image:
        pytest.skip("needs PMD_TEST_DOCKER_IMAGE (tests/services.sh)")
    info = json.loads(pmdtest.docker("info", "--format", "{{json .DockerRootDir}}").stdout)
    p = pmd_factory({
        "pmd": {"docker_socket": docker_env["PMD_TEST_DOCKER_SOCKET"]},
        "service web": {"image": image, "pull": "missing", "network": "host", "health_path": "/",
                        "command": "sh -c 'mkdir -p /tmp/w && echo ok > /tmp/w/index.html && "
                                   "exec httpd -f -p 127.0.0.1:$PORT -h /tmp/w'"},
        "route all": {"prefix": "/", "service": "web"},
    })
    root = pmdtest.wait_for(lambda: p.status()["disk"]["docker_root"], what="docker_root in /status")
    assert root["path"] == info
    assert root["total_bytes"] == os.statvfs(info).f_blocks * os.statvfs(info).f_frsize


# -- pmctl --ssh against a real pmd ----------------------------------------------

SSH_APP = r'''
import http.server, os, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = sys.argv[1].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
print("app serving image", sys.argv[1], flush=True)
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
'''

REPO_IMG = "registry.example/pm/app"
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def ssh_pmd(pmd_factory, tmp_path):
    app = tmp_path / "app.py"
    app.write_text(SSH_APP)
    svc = {"runtime": "exec", "command": f"{pmdtest.PYTHON} {app} ${{IMAGE}}",
           "health_path": "/", "health_interval": "200ms", "healthy_threshold": 1,
           "start_timeout": "10s", "drain_timeout": "1s", "stop_timeout": "2s"}
    p = pmd_factory({
        "service app": dict(svc, image=f"{REPO_IMG}:v1"),
        "service worker": dict(svc, command=f"{pmdtest.PYTHON} {app} plain"),
        "route all": {"prefix": "/", "service": "app"},
    })
    p.wait_healthy("app")
    p.wait_healthy("worker")
    return p


def ssh(p, command, *extra):
    """pmctl --ssh as sshd runs a forced command (socket from PMD_SOCKET)."""
    return subprocess.run([pmdtest.PMCTL, "--ssh", *extra], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, PMD_SOCKET=p.socket,
                                               SSH_ORIGINAL_COMMAND=command))


def test_ssh_allows_the_deploy_commands(ssh_pmd):
    p = ssh_pmd
    r = ssh(p, "status")
    assert r.returncode == 0, r.stderr
    assert "app" in r.stdout and "worker" in r.stdout
    r = ssh(p, "pmctl status --json")
    assert r.returncode == 0 and json.loads(r.stdout)["services"]["app"]["configured_image"] == f"{REPO_IMG}:v1"

    r = ssh(p, f"pmctl swap app {REPO_IMG}:v2 --timeout 30s")
    assert r.returncode == 0, r.stdout + r.stderr
    assert p.service("app")["image"] == f"{REPO_IMG}:v2"
    assert p.get("/").text == f"{REPO_IMG}:v2"

    r = ssh(p, f"/usr/local/bin/pmctl swap app {REPO_IMG}@{DIGEST}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert p.get("/").text == f"{REPO_IMG}@{DIGEST}"

    r = ssh(p, "pmctl rollback app")
    assert r.returncode == 0, r.stdout + r.stderr
    assert p.get("/").text == f"{REPO_IMG}:v2"

    before = p.service("app")["instances"][0]["id"]
    r = ssh(p, "pmctl restart app")
    assert r.returncode == 0, r.stdout + r.stderr
    assert p.service("app")["instances"][0]["id"] != before

    r = ssh(p, "pmctl logs app --tail 5")
    assert r.returncode == 0, r.stderr
    assert "app serving image" in r.stdout
    r = ssh(p, "logs worker")
    assert r.returncode == 0 and "app serving image plain" in r.stdout


SSH_REFUSED = [
    (f"pmctl swap app {REPO_IMG}:v2;reboot", "character ';' not allowed"),
    ("pmctl swap app $(id)", "character '$' not allowed"),
    ("pmctl swap app `id`", "character '`' not allowed"),
    ("status | sh", "character '|' not allowed"),
    ("status && reboot", "character '&' not allowed"),
    ("status > /etc/passwd", "character '>' not allowed"),
    ("status\nreboot", "character '\n' not allowed"),
    ("pmctl swap app 'x y'", "character ''' not allowed"),
    ("pmctl reload", "'reload' is not allowed"),
    ("rm -rf /var/lib/pmd", "'rm' is not allowed"),
    ("bash", "'bash' is not allowed"),
    ("pmctl", "'' is not allowed"),
    ("", "no command given"),
    ("pmctl -s /tmp/other.sock status", "the socket cannot be chosen"),
    ("pmctl status --socket=/tmp/other.sock", "the socket cannot be chosen"),
    (f"pmctl swap nosuch {REPO_IMG}:v2", "unknown service 'nosuch'; pmd runs: app, worker"),
    ("pmctl rollback nosuch", "unknown service 'nosuch'"),
    ("pmctl restart nosuch", "unknown service 'nosuch'"),
    ("pmctl logs nosuch", "unknown service 'nosuch'"),
    (f"pmctl swap app {REPO_IMG}:v2 nosuch {REPO_IMG}:v2", "unknown service 'nosuch'"),
    ("pmctl swap app registry.example/other/app:v2", "not in the repository of service 'app'"),
    ("pmctl swap app registry.example/pm/app-evil:v2", "not in the repository"),
    ("pmctl swap app registry.example/pm/app/inner:v2", "not in the repository"),
    ("pmctl swap app evil.example/pm/app:v2", "not in the repository"),
    ("pmctl swap app registry.example:5000/pm/app:v2", "not in the repository"),
    ("pmctl swap app app:v2", "not in the repository"),
    (f"pmctl swap worker {REPO_IMG}:v2", "service 'worker' has no configured image"),
    ("pmctl swap app", "expected SERVICE IMAGE pairs"),
]


def test_ssh_refuses(ssh_pmd):
    """Each refused with exit 2 and its reason; nothing reaches pmd's
    services (same image, instances and swap record afterwards)."""
    p = ssh_pmd
    before = p.service("app")
    wrong = []
    for command, message in SSH_REFUSED:
        r = ssh(p, command)
        if r.returncode != 2 or message not in r.stderr:
            wrong.append((command, r.returncode, r.stdout, r.stderr))
    assert not wrong, wrong
    after = p.service("app")
    assert after["image"] == before["image"] == f"{REPO_IMG}:v1"
    assert after.get("last_swap") == before.get("last_swap")
    assert [i["id"] for i in after["instances"]] == [i["id"] for i in before["instances"]]
    log = p.log_text()
    assert 'msg="control: request" method=GET' in log  # the log shows requests
    assert 'msg="control: request" method=POST' not in log


def test_ssh_takes_no_arguments_of_its_own(ssh_pmd):
    r = ssh(ssh_pmd, "status", "status")
    assert r.returncode == 2 and "--ssh takes no command line arguments" in r.stderr


# -- shipped configuration -------------------------------------------------------

def cloud_init_ini():
    """The /etc/pmd/pmd.ini that conf/cloud-init.yaml writes."""
    yaml = pytest.importorskip("yaml")
    with open(os.path.join(CONF, "cloud-init.yaml")) as f:
        doc = yaml.safe_load(f)
    files = {w["path"]: w for w in doc["write_files"]}
    return doc, files


SHIPPED = sorted(glob.glob(os.path.join(CONF, "*.ini")))


def test_every_environment_is_shipped():
    names = {os.path.basename(f) for f in SHIPPED}
    assert {"pmd.ini", "uat.ini", "dev.ini", "demo.ini"} <= names


STATIC_KEY = re.compile(r"^(file|dir) = (/\S+)")


def mirror_static_paths(text, root):
    """text with every absolute [static] file or dir moved under root, where
    an empty file or folder is made (the droplet's do not exist here)."""
    out = []
    for line in text.splitlines():
        m = STATIC_KEY.match(line)
        if m:
            target = root / m.group(2).lstrip("/")
            if m.group(1) == "dir":
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text("")
            line = f"{m.group(1)} = {target}"
        out.append(line)
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_shipped_config_passes_check(path, tmp_path):
    text = open(path).read()
    # [static] files and folders must exist; relative ones (demo.ini) are
    # the repository's, as `make demo` runs it from there
    good = tmp_path / ("ok-" + os.path.basename(path))
    good.write_text(mirror_static_paths(text, tmp_path / "root"))
    r = pmdtest.pmd_check(good, cwd=REPO)
    assert (r.returncode, r.stdout, r.stderr) == (0, "configuration ok\n", "")
    # where they are missing, check names each one with FILE:LINE
    missing = [(i + 1, m.group(2)) for i, line in enumerate(text.splitlines())
               if (m := STATIC_KEY.match(line)) and not os.path.exists(m.group(2))]
    if missing:
        r = pmdtest.pmd_check(path, cwd=REPO)
        assert r.returncode == 1 and r.stdout == "", r
        for line, target in missing:
            assert f"{path}:{line}: " in r.stderr and f"cannot open {target}: No such file" in r.stderr, r.stderr
    # check is not a rubber stamp: one bad key in a copy is reported
    bad = tmp_path / os.path.basename(path)
    text = open(path).read()
    bad.write_text(text.replace("[proxy]\n", "[proxy]\nworkerz = 2\n", 1))
    r = pmdtest.pmd_check(bad, cwd=tmp_path)
    line = text.splitlines().index("[proxy]") + 2
    assert r.returncode == 1 and f"{bad}:{line}:" in r.stderr and "workerz" in r.stderr, r.stderr


def test_environment_specifics():
    """PROD and UAT need PostgreSQL (required_env DATABASE_URL) and serve
    env-config.js; DEV runs SQLite on a volume."""
    def read(name):
        return open(os.path.join(CONF, name)).read()
    for name, domain, tag in [("pmd.ini", "meatscentral.com", "prod-latest"),
                              ("uat.ini", "uat.meatscentral.com", "uat-latest")]:
        t = read(name)
        assert re.search(r"^required_env = DATABASE_URL, SECRET_KEY$", t, re.M), name
        assert re.search(rf"^domains = {re.escape(domain)}\b", t, re.M), name
        assert f"/backend:{tag}" in t and f"/frontend:{tag}" in t, name
        assert "[static env-config]" in t and "path = /env-config.js" in t, name
    # Django's static files from the volume the backend writes them to
    for name in ("pmd.ini", "uat.ini", "dev.ini"):
        t = read(name)
        assert re.search(r"^volumes = static_data:/app/static$", t, re.M), name
        assert re.search(r"^\[static django\]\npath = /static/\n"
                         r"dir = /var/lib/docker/volumes/static_data/_data\nfallback = route$", t, re.M), name
        assert "[route static]" not in t, name
        # each release fills the volume: Docker copies an image into it only once
        assert re.search(r"^release_command = .*manage\.py collectstatic --noinput", t, re.M), name
    dev = read("dev.ini")
    assert "domains = dev.meatscentral.com" in dev
    assert re.search(r"^env = DATABASE_URL=sqlite:////app/data/db.sqlite3$", dev, re.M)
    assert re.search(r"^volumes = \w+:/app/data$", dev, re.M)


def test_cloud_init_schema():
    need("cloud-init")
    r = subprocess.run(["cloud-init", "schema", "--config-file", os.path.join(CONF, "cloud-init.yaml")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Valid cloud-config" in r.stdout


def test_cloud_init_contents(tmp_path):
    doc, files = cloud_init_ini()
    deploy = [u for u in doc["users"] if isinstance(u, dict) and u["name"] == "deploy"][0]
    assert "deploy" in deploy["groups"]
    for key in deploy["ssh_authorized_keys"]:
        assert key.startswith('restrict,command="/usr/bin/pmctl --ssh" '), key
    assert "docker.io" in doc["packages"] and "ufw" in doc["packages"]
    # the droplet gets the .deb, no compiler
    assert not {"build-essential", "gcc", "make", "libssl-dev"} & set(doc["packages"]), doc["packages"]
    cmds = [" ".join(c) if isinstance(c, list) else c for c in doc["runcmd"]]
    allowed = sorted(c.split()[-1] for c in cmds if c.startswith("ufw allow"))
    assert allowed == ["22/tcp", "443/tcp", "80/tcp"]
    assert "ufw default deny incoming" in cmds and "ufw --force enable" in cmds
    assert "systemctl enable --now docker" in cmds
    assert cmds[-1] == "systemctl enable --now pmd"
    install = [c for c in cmds if c.startswith("env DEBIAN_FRONTEND=noninteractive apt-get install -y")]
    assert len(install) == 1 and "--force-confold" in install[0] and install[0].endswith(".deb"), cmds
    fetch = [c for c in cmds if c.startswith("curl -fsSL -o ")]
    assert fetch and fetch[0].split()[3] == install[0].split()[-1], cmds
    assert cmds.index(fetch[0]) < cmds.index(install[0]) < cmds.index("systemctl enable --now pmd")
    assert not any("make" in c.split() for c in cmds)
    # the config it writes passes `pmd check` (its [static] paths made here)
    ini = tmp_path / "pmd.ini"
    ini.write_text(mirror_static_paths(files["/etc/pmd/pmd.ini"]["content"], tmp_path / "root"))
    r = pmdtest.pmd_check(ini)
    assert r.returncode == 0, r.stderr
    assert files["/opt/pm/backend/.env"]["permissions"] == "0600"


def test_authorized_keys_example():
    lines = [l for l in open(os.path.join(CONF, "authorized_keys.example"))
             if l.strip() and not l.startswith("#")]
    assert lines and all(l.startswith('restrict,command="/usr/bin/pmctl --ssh" ssh-') for l in lines)


def test_deploy_workflow():
    yaml = pytest.importorskip("yaml")
    with open(os.path.join(CONF, "deploy.yml")) as f:
        wf = yaml.safe_load(f)
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads `on` as true
    assert on["push"]["branches"] == ["development", "uat", "main"]
    job = wf["jobs"]["deploy"]
    assert "production" in job["environment"]
    script = "\n".join(s.get("run", "") for s in job["steps"])
    assert "set -euo pipefail" in script
    for tag in ('$ENV-$sha', '$ENV-latest'):
        assert tag in script
    assert re.search(r"ssh deploy@.+? pmctl swap \\\n\s+backend \S+ \\\n\s+frontend \S+", script), script


def test_release_workflow():
    """conf/release.yml: on a tag, make deb on the oldest Ubuntu, lintian,
    an install on the newest, then the .deb as a release asset."""
    yaml = pytest.importorskip("yaml")
    with open(os.path.join(CONF, "release.yml")) as f:
        wf = yaml.safe_load(f)
    on = wf.get("on", wf.get(True))
    assert on == {"push": {"tags": ["v*"]}}
    jobs = wf["jobs"]
    assert jobs["build"]["runs-on"] == "ubuntu-22.04" and jobs["install-test"]["runs-on"] == "ubuntu-24.04"
    run = {name: "\n".join(s.get("run", "") for s in job["steps"]) for name, job in jobs.items()}
    assert "make deb" in run["build"] and "lintian" in run["build"]
    for pkg in ("debhelper", "dpkg-dev", "fakeroot", "libcurl4-openssl-dev", "libnghttp2-dev"):
        assert pkg in run["build"], pkg
    assert "apt-get install -y ./pmd_" in run["install-test"] and "pmd version" in run["install-test"]
    assert jobs["publish"]["needs"] == ["build", "install-test"]
    assert jobs["publish"]["permissions"] == {"contents": "write"}
    assert 'gh release create "$GITHUB_REF_NAME" pmd_*_amd64.deb' in run["publish"]


def test_debian_changelog_version_is_VERSION():
    first = open(os.path.join(REPO, "debian", "changelog")).readline()
    assert first.startswith(f"pmd ({VERSION}) "), first


# -- systemd unit and make install -------------------------------------------------

def make(*args, cwd=REPO, timeout=300):
    """`make` as a user types it: not the variables of an outer `make check
    SANITIZE=1` (MAKEFLAGS carries them into every make below it)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "SANITIZE", "BUILD")}
    r = subprocess.run(["make", "-s", *args], cwd=cwd, capture_output=True, text=True,
                       timeout=timeout, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


EXPECTED_TREE = {
    "bin/pmctl": 0o755, "sbin/pmd": 0o755,
    "share/man/man1/pmctl.1": 0o644, "share/man/man5/pmd.ini.5": 0o644,
    "share/man/man8/pmd.8": 0o644, "lib/systemd/system/pmd.service": 0o644,
    "lib/systemd/system/pmd.socket": 0o644,
    "share/doc/pmd/examples/pmd.ini": 0o644, "share/doc/pmd/examples/uat.ini": 0o644,
    "share/doc/pmd/examples/dev.ini": 0o644, "share/doc/pmd/examples/cloud-init.yaml": 0o644,
    "share/doc/pmd/examples/deploy.yml": 0o644, "share/doc/pmd/examples/release.yml": 0o644,
    "share/doc/pmd/examples/authorized_keys.example": 0o644,
}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """`make install DESTDIR=... PREFIX=/usr/local` (of the default build)."""
    dest = tmp_path_factory.mktemp("destdir")
    make("install", f"DESTDIR={dest}", "PREFIX=/usr/local")
    return dest, dest / "usr/local"


def test_make_checks_library_versions():
    """The Makefile refuses to build against a library older than its
    minimum (README "Supported systems"), naming each one, and needs no
    library for `make deps` / `make clean`."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    r = subprocess.run(["make", "-n", "all", "MIN_VERSIONS=libcurl:99.0.0 inih:53 nosuchlib:1"],
                       cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode != 0
    assert "libraries missing or too old: libcurl>=99.0.0(found:" in r.stderr, r.stderr
    assert "nosuchlib>=1(found:none)" in r.stderr and "inih>=" not in r.stderr, r.stderr
    r = subprocess.run(["make", "-n", "clean", "MIN_VERSIONS=libcurl:99.0.0"], cwd=REPO,
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    # the shipped minimums hold on this machine, and match the README
    readme = open(os.path.join(REPO, "README.md")).read()
    mk = open(os.path.join(REPO, "Makefile")).read()
    mins = re.search(r"^MIN_VERSIONS := ((?:.*\\\n)*.*)$", mk, re.M).group(1).replace("\\\n", " ").split()
    names = {"libcurl": "libcurl", "openssl": "OpenSSL", "libevent_core": "libevent", "libcjson": "cJSON",
             "inih": "inih", "libnghttp2": "nghttp2"}
    assert {m.split(":")[0] for m in mins} >= set(names), mins
    for m in mins:
        lib, ver = m.split(":")
        if lib in names:
            assert re.search(rf"^\| {names[lib]} \| {re.escape(ver)} \|", readme, re.M), (lib, ver)


def test_make_install_tree(installed):
    dest, prefix = installed
    found = {}
    for root, _, files in os.walk(dest):
        for f in files:
            full = os.path.join(root, f)
            found[os.path.relpath(full, prefix)] = os.stat(full).st_mode & 0o777
    assert found == EXPECTED_TREE
    r = subprocess.run([str(prefix / "sbin/pmd"), "version"], capture_output=True, text=True)
    assert r.stdout.startswith(f"pmd {VERSION}\n")
    unit = (prefix / "lib/systemd/system/pmd.service").read_text()
    assert "ExecStart=/usr/local/sbin/pmd run -c /etc/pmd/pmd.ini" in unit


def test_make_install_prefix_reaches_the_unit(tmp_path):
    make("install", f"DESTDIR={tmp_path}", "PREFIX=/usr")
    unit = (tmp_path / "usr/lib/systemd/system/pmd.service").read_text()
    assert "ExecStart=/usr/sbin/pmd run -c /etc/pmd/pmd.ini" in unit
    assert "/usr/local/" not in unit


def unit_settings(text):
    out = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


def test_systemd_unit_verifies(installed, tmp_path):
    analyze = need("systemd-analyze")
    dest, prefix = installed
    text = (prefix / "lib/systemd/system/pmd.service").read_text()
    # verify checks that ExecStart's binary exists: point it at the tree
    # make install just wrote, and MANPATH at its man pages (Documentation=)
    unit = tmp_path / "pmd.service"
    unit.write_text(text.replace("/usr/local/sbin/pmd", str(prefix / "sbin/pmd")))
    sock = tmp_path / "pmd.socket"
    sock.write_text((prefix / "lib/systemd/system/pmd.socket").read_text())
    r = subprocess.run([analyze, "verify", str(unit), str(sock)], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, MANPATH=str(prefix / "share/man")))
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    s = unit_settings(text)
    # all: the pmd a SIGUSR2 hand-over starts says MAINPID= (man pmd(8))
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["all"]
    k = unit_settings(sock.read_text())
    assert k["ListenStream"] == ["0.0.0.0:80", "0.0.0.0:443"] and k["Service"] == ["pmd.service"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["Restart"] == ["on-failure"]
    assert s["RuntimeDirectory"] == ["pmd"] and s["StateDirectory"] == ["pmd"]
    assert "WatchdogSec" in s
    assert s["ExecStartPre"] == ["/usr/local/sbin/pmd check -c /etc/pmd/pmd.ini"]
    assert "CAP_NET_BIND_SERVICE" in s["CapabilityBoundingSet"][0]
    assert s["WantedBy"] == ["multi-user.target"]


def test_systemd_verify_catches_a_broken_unit(tmp_path):
    """The verify above can fail: a typo in a directive is reported."""
    analyze = need("systemd-analyze")
    text = open(os.path.join(CONF, "pmd.service")).read()
    unit = tmp_path / "pmd.service"
    unit.write_text(text.replace("/usr/local/sbin/pmd", pmdtest.PMD)
                    .replace("Restart=on-failure", "Restartt=on-failure"))
    r = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True,
                       timeout=120)
    assert "Restartt" in r.stderr


# -- man pages ----------------------------------------------------------------------

PAGES = ["pmd.8", "pmctl.1", "pmd.ini.5"]


@pytest.mark.parametrize("page", PAGES)
def test_man_page_renders_cleanly(page):
    need("man")
    r = subprocess.run(["man", "--warnings", "-l", os.path.join(MAN, page)], capture_output=True,
                       text=True, timeout=60, env=dict(os.environ, MANWIDTH="80"))
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    text = re.sub(r".\x08", "", r.stdout)  # bold and underline overstrikes
    assert "NAME" in text and "SEE ALSO" in text
    assert max(len(l) for l in text.splitlines()) <= 80


def man_keys():
    """{(section, key): default} from man/pmd.ini.5's `.BR key " = default"`
    items under `.SH "[section]"` headings."""
    keys, sect = {}, None
    for line in open(os.path.join(MAN, "pmd.ini.5")):
        m = re.match(r'\.SH "\[(\w+)[^\]]*\]"', line)
        if m:
            sect = m.group(1)
            continue
        if line.startswith(".SH"):
            sect = None
            continue
        m = re.match(r'\.BR (\w+) " = (.*)"$', line.rstrip("\n"))
        if m and sect:
            keys[(sect, m.group(1))] = m.group(2).replace("\\-", "-")
    return keys


def table_keys():
    r = subprocess.run([pmdtest.PMD, "keys"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0
    keys = {}
    for line in r.stdout.splitlines():
        sect, key, default = line.split("\t")
        keys[(sect, key)] = default
    return keys


def test_man_page_lists_every_key_with_its_default():
    table, man = table_keys(), man_keys()
    assert len(table) > 50
    assert sorted(table) == sorted(man), (set(table) ^ set(man))
    for k, default in table.items():
        if default:
            assert man[k] == default, (k, man[k], default)
        else:  # no default: the page says what empty means, in parentheses
            assert re.fullmatch(r"\(.+\)", man[k]), (k, man[k])


def test_spec_defaults_match_the_table():
    """SPEC.md's configuration block (shared/) agrees with the table where
    it gives a generic default (not a deployment example)."""
    spec = os.path.join(os.path.dirname(REPO), "shared", "SPEC.md")
    if not os.path.exists(spec):
        pytest.skip("no shared/SPEC.md beside the repository")
    text = open(spec).read()
    block = text[text.index("```ini"):text.index("```", text.index("```ini") + 6)]
    table, sect, checked = table_keys(), None, 0
    for line in block.splitlines():
        m = re.match(r"\[(\w+)", line)
        if m:
            sect = m.group(1)
            continue
        m = re.match(r"(\w+) = ?([^;]*?)\s*(;.*)?$", line)
        if m and sect and table.get((sect, m.group(1))):
            assert table[(sect, m.group(1))] == m.group(2).strip(), (sect, m.group(1))
            checked += 1
    assert checked > 30


# -- make dist ---------------------------------------------------------------------

def test_make_dist_tarball_builds(tmp_path):
    r = make("dist")
    tarball = os.path.join(REPO, r.stdout.strip().splitlines()[-1])
    assert os.path.basename(tarball) == f"pmd-{VERSION}.tar.gz"
    with tarfile.open(tarball) as t:
        names = t.getnames()
        committed = subprocess.run(["git", "ls-tree", "-r", "--name-only", "HEAD"], cwd=REPO,
                                   capture_output=True, text=True, check=True).stdout.split()
        for must in ("Makefile", "VERSION", "core/main.c", "cli/pmctl.c", "include/config.h",
                     "man/pmd.8", "conf/pmd.service", "conf/cloud-init.yaml", "tests/deps.sh"):
            assert f"pmd-{VERSION}/{must}" in names, must
        assert {f"pmd-{VERSION}/{n}" for n in committed} <= set(names)
        assert not any("/build/" in n or n.endswith(".o") for n in names)
        t.extractall(tmp_path)
    src = tmp_path / f"pmd-{VERSION}"
    make("-j2", cwd=src, timeout=600)
    r = subprocess.run([str(src / "build/pmd"), "version"], capture_output=True, text=True)
    assert r.stdout.startswith(f"pmd {VERSION}\n")
    r = subprocess.run([str(src / "build/pmctl"), "--version"], capture_output=True, text=True)
    assert r.stdout == f"pmctl {VERSION}\n"
