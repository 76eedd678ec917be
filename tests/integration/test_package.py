"""The Debian package (`make deb`, debian/): built once per tree (cached in
build/pkgtest/, so the second pass of `make check` reuses it), lintian
clean, then installed on this machine with dpkg -i, upgraded to a rebuilt
package with a higher version, removed and purged — and the machine is left
as it was (the deploy group too, when the test made it).

Runs as root only, and only where nothing of pmd is installed: it never
touches a real installation (/etc/pmd, /var/lib/pmd, a pmd package). There
is no systemd PID 1 here: the maintainer scripts must work without it.
"""
import grp
import hashlib
import os
import re
import shutil
import stat
import subprocess

import pytest

import pmdtest

REPO = pmdtest.REPO
VERSION = open(os.path.join(REPO, "VERSION")).read().strip()
BUMPED = VERSION + "+upgradetest1"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="installs a package: needs root"),
    pytest.mark.skipif(not shutil.which("dpkg-buildpackage") or not shutil.which("dh"),
                       reason="needs dpkg-dev and debhelper (tests/deps.sh)"),
]


def run(*args, check=True, timeout=300, **kw):
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check:
        assert r.returncode == 0, f"{args}: {r.stdout}{r.stderr}"
    return r


def tree_hash():
    """sha256 of every file `make deb` copies (names and contents)."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(REPO):
        top = root == REPO
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not (top and d in ("build", ".git")))
        for f in sorted(files):
            p = os.path.join(root, f)
            if top and f == ".git":
                continue
            h.update(os.path.relpath(p, REPO).encode() + b"\0")
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as fh:
                    h.update(fh.read())
    return h.hexdigest()[:16]


@pytest.fixture(scope="module")
def debs():
    """(package of the tree, the same rebuilt with version BUMPED)."""
    out = os.path.join(REPO, "build", "pkgtest", tree_hash())
    v1 = os.path.join(out, f"pmd_{VERSION}_amd64.deb")
    v2 = os.path.join(out, f"pmd_{BUMPED}_amd64.deb")
    if not os.path.exists(v2):
        shutil.rmtree(os.path.join(REPO, "build", "pkgtest"), ignore_errors=True)
        # `make deb` as a user types it, not with an outer make's variables
        env = {k: v for k, v in os.environ.items()
               if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "SANITIZE", "BUILD")}
        run("make", "-s", "deb", f"DEB_DIR={out}", cwd=REPO, env=env, timeout=900)
        # the upgrade: the same package rebuilt with a higher version
        tmp = os.path.join(out, "v2")
        run("dpkg-deb", "-R", v1, tmp)
        control = os.path.join(tmp, "DEBIAN", "control")
        text = open(control).read().replace(f"\nVersion: {VERSION}\n", f"\nVersion: {BUMPED}\n")
        assert f"Version: {BUMPED}" in text
        open(control, "w").write(text)
        run("dpkg-deb", "--root-owner-group", "-b", tmp, v2)
        shutil.rmtree(tmp)
    return v1, v2


def test_lintian_clean(debs):
    if not shutil.which("lintian"):
        pytest.skip("needs lintian (tests/deps.sh)")
    r = run("lintian", "--pedantic", "-I", "--fail-on", "none", debs[0], check=False, timeout=600)
    tags = [l for l in r.stdout.splitlines() if l[:2] in ("E:", "W:", "I:", "P:")]
    assert tags == [], r.stdout


def dpkg_status():
    r = run("dpkg-query", "-W", "-f=${Version} ${db:Status-Status}", "pmd", check=False)
    return r.stdout.strip() if r.returncode == 0 else ""


def mode(path):
    st = os.stat(path)
    return stat.S_IFMT(st.st_mode), st.st_mode & 0o7777, st.st_uid, st.st_gid


def deploy_gid():
    try:
        return grp.getgrnam("deploy").gr_gid
    except KeyError:
        return None


@pytest.fixture
def machine():
    """A machine with nothing of pmd on it (else the test skips), left so
    afterwards: the package purged, its folders and (when the test made
    it) the deploy group gone. Yields the environment for dpkg."""
    if dpkg_status():
        pytest.skip("a pmd package is known to dpkg on this machine: not touching it")
    for p in ("/etc/pmd", "/var/lib/pmd", "/usr/sbin/pmd", "/usr/bin/pmctl"):
        if os.path.lexists(p):
            pytest.skip(f"{p} exists on this machine: not touching it")
    had_group = deploy_gid() is not None
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    yield env
    if dpkg_status():
        run("dpkg", "--purge", "pmd", check=False, env=env)
    for p in ("/etc/pmd", "/var/lib/pmd"):
        shutil.rmtree(p, ignore_errors=True)
    if not had_group and deploy_gid() is not None:
        run("groupdel", "deploy", check=False)
    assert (deploy_gid() is not None) == had_group


def test_install_upgrade_remove_purge(debs, machine):
    v1, v2 = debs
    env = machine
    # -- install --------------------------------------------------------
    r = run("dpkg", "-i", v1, env=env)
    assert dpkg_status() == f"{VERSION} installed", r.stdout + r.stderr
    assert mode("/usr/sbin/pmd") == (stat.S_IFREG, 0o755, 0, 0)
    assert mode("/usr/bin/pmctl") == (stat.S_IFREG, 0o755, 0, 0)
    assert mode("/etc/pmd") == (stat.S_IFDIR, 0o755, 0, 0)
    assert mode("/etc/pmd/pmd.ini") == (stat.S_IFREG, 0o640, 0, 0)
    assert mode("/var/lib/pmd") == (stat.S_IFDIR, 0o750, 0, 0)
    assert deploy_gid() is not None
    files = run("dpkg", "-L", "pmd").stdout.split()
    owned = [f for f in files if os.path.isfile(f)]     # what purge must take away
    unit = [f for f in files if f.endswith("/systemd/system/pmd.service")]
    assert len(unit) == 1, files
    for f in ("/usr/share/man/man8/pmd.8.gz", "/usr/share/man/man1/pmctl.1.gz",
              "/usr/share/man/man5/pmd.ini.5.gz", "/usr/share/doc/pmd/examples/pmd.ini",
              "/usr/share/doc/pmd/examples/cloud-init.yaml", "/usr/share/doc/pmd/copyright"):
        assert f in files and os.path.isfile(f), f
    assert run("dpkg-query", "-W", "-f=${Conffiles}", "pmd").stdout.split()[0] == "/etc/pmd/pmd.ini"
    assert run("/usr/sbin/pmd", "version").stdout.startswith(f"pmd {VERSION}\n")
    assert run("/usr/bin/pmctl", "--version", check=False).returncode == 0
    # the example config parses; what it lacks here is the droplet's own
    # files (/opt/pm/..., the static volume), each named with FILE:LINE
    r = run("/usr/sbin/pmd", "check", "-c", "/etc/pmd/pmd.ini", check=False)
    problems = r.stderr.splitlines()
    assert r.returncode == 0 or problems and all(
        re.match(r"/etc/pmd/pmd\.ini:\d+: .*No such file or directory$", l) for l in problems), r.stderr
    text = open(unit[0]).read()
    assert "ExecStart=/usr/sbin/pmd run -c /etc/pmd/pmd.ini" in text and "/usr/local" not in text
    if shutil.which("systemd-analyze"):
        r = run("systemd-analyze", "verify", unit[0], check=False)
        assert (r.returncode, r.stderr) == (0, ""), r.stderr
    # not enabled on a fresh install (the example config needs editing)
    assert not os.path.exists("/etc/systemd/system/multi-user.target.wants/pmd.service")

    # -- upgrade: the admin's config and pmd's state are kept -------------
    with open("/etc/pmd/pmd.ini", "a") as f:
        f.write("; edited by the admin\n")
    with open("/var/lib/pmd/state.json", "w") as f:
        f.write("{}\n")
    r = run("dpkg", "-i", v2, env=env)
    assert dpkg_status() == f"{BUMPED} installed", r.stdout + r.stderr
    assert open("/etc/pmd/pmd.ini").read().endswith("; edited by the admin\n")
    assert not os.path.exists("/etc/pmd/pmd.ini.dpkg-dist")
    assert open("/var/lib/pmd/state.json").read() == "{}\n"
    assert mode("/var/lib/pmd")[1] == 0o750

    # -- remove keeps config and state; purge takes them ------------------
    run("dpkg", "--remove", "pmd", env=env)
    assert dpkg_status() == f"{BUMPED} config-files"
    assert not os.path.exists("/usr/sbin/pmd") and not os.path.exists(unit[0])
    assert os.path.exists("/etc/pmd/pmd.ini") and os.path.exists("/var/lib/pmd/state.json")
    run("dpkg", "--purge", "pmd", env=env)
    assert dpkg_status() == ""
    for f in owned + ["/etc/pmd", "/var/lib/pmd", "/usr/share/doc/pmd"]:
        assert not os.path.lexists(f), f


def test_config_written_before_install_is_kept(debs, machine):
    """cloud-init writes /etc/pmd/pmd.ini before it installs the package
    with --force-confold: that file stays, the packaged one lands beside it."""
    os.makedirs("/etc/pmd")
    with open("/etc/pmd/pmd.ini", "w") as f:
        f.write("; the droplet's own\n")
    run("dpkg", "-i", "--force-confold", debs[0], env=machine, stdin=subprocess.DEVNULL)
    assert dpkg_status() == f"{VERSION} installed"
    assert open("/etc/pmd/pmd.ini").read() == "; the droplet's own\n"
    assert os.path.isfile("/etc/pmd/pmd.ini.dpkg-dist")
    run("dpkg", "--purge", "pmd", env=machine)
    assert not os.path.exists("/etc/pmd")


def test_maintainer_scripts_never_touch_containers(debs, tmp_path):
    """Upgrade and remove stop pmd at most (gracefully: its containers keep
    running and are adopted by the next pmd); nothing stops a container."""
    run("dpkg-deb", "-e", debs[0], str(tmp_path / "ctl"))
    scripts = {n: (tmp_path / "ctl" / n).read_text()
               for n in ("preinst", "postinst", "prerm", "postrm") if (tmp_path / "ctl" / n).exists()}
    for name, text in scripts.items():
        code = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#"))
        assert "docker" not in code, name
    assert "preinst" not in scripts                    # nothing stopped before an upgrade
    prerm = scripts["prerm"]
    assert 'deb-systemd-invoke stop' in prerm and '"$1" = remove' in prerm, prerm
    # the upgrade hands a running pmd over to the new binary (SIGUSR2: no
    # request refused) after the new files are in place, and only when the
    # new pmd accepts the config; it never restarts it (stop, then start)
    postinst = scripts["postinst"]
    check = postinst.index("if pmd check -c /etc/pmd/pmd.ini >/dev/null; then")
    assert postinst.index("systemctl kill -s USR2 --kill-who=main pmd.service", check) > check
    assert "try-restart" not in postinst and "restart pmd.service" not in postinst
    assert "restart pmd.socket" not in postinst and "restart 'pmd.socket'" not in postinst
    # no unit is stopped before or restarted by debhelper for an upgrade
    assert "_dh_action" not in postinst and "pmd.socket" in postinst
