"""Fixtures shared by every integration test. Helpers live in pmdtest.py.

Fixtures of the peers skip the test when tests/services.sh did not start
that peer (the variable is absent), so `pytest tests/integration` works
anywhere; `make check` starts them.
"""
import os

import pytest

import pmdtest


@pytest.fixture
def pmd_factory(tmp_path):
    """pmd_factory(sections=None, **kw) -> a started pmdtest.Pmd (start=False
    to get it unstarted). Every pmd made is stopped at teardown, with the
    checks of Pmd.stop (no process left, no sanitizer report, exit 0)."""
    made = []

    def make(sections=None, start=True, **kw):
        kw.setdefault("name", f"pmd{len(made)}")
        p = pmdtest.Pmd(tmp_path, sections, **kw)
        made.append(p)
        if start:
            p.start()
        return p

    yield make
    errors = []
    for p in made:
        try:
            p.stop()
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        pytest.fail("\n\n".join(errors))


@pytest.fixture
def free_port():
    return pmdtest.free_port


@pytest.fixture
def backend_server():
    """A started pmdtest.BackendServer (closed at teardown)."""
    with pmdtest.BackendServer() as b:
        yield b


def _need(*names):
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (started by tests/services.sh)")
    return {n: os.environ[n] for n in names}


@pytest.fixture
def docker_env():
    """The test dockerd: {"PMD_TEST_DOCKER_SOCKET": path}. Containers made by
    pmd (label pmd.service) are removed at teardown."""
    env = _need("PMD_TEST_DOCKER_SOCKET")
    yield env
    pmdtest.docker_rm_pmd_containers()


@pytest.fixture
def registry():
    """The test registry with htpasswd auth and the pushed test images:
    keys PMD_TEST_REGISTRY, PMD_TEST_REGISTRY_USER/_PASSWORD/_AUTH_FILE,
    PMD_TEST_IMAGE_BACKEND/_V2/_BROKEN, PMD_TEST_IMAGE_FRONTEND."""
    return _need("PMD_TEST_REGISTRY", "PMD_TEST_REGISTRY_USER", "PMD_TEST_REGISTRY_PASSWORD",
                 "PMD_TEST_REGISTRY_AUTH_FILE", "PMD_TEST_IMAGE_BACKEND",
                 "PMD_TEST_IMAGE_BACKEND_V2", "PMD_TEST_IMAGE_BACKEND_BROKEN",
                 "PMD_TEST_IMAGE_FRONTEND")


@pytest.fixture
def pebble():
    """Pebble: keys PMD_TEST_PEBBLE_DIR (directory URL), _CA (acme_ca_file),
    _MGMT, _HTTP_PORT (pmd's http_listen port for http-01), _TLS_PORT,
    PMD_TEST_CHALLTESTSRV. One Pebble serves the whole run: tests that use
    it must not run in parallel on the same validation port."""
    return _need("PMD_TEST_PEBBLE_DIR", "PMD_TEST_PEBBLE_CA", "PMD_TEST_PEBBLE_MGMT",
                 "PMD_TEST_PEBBLE_HTTP_PORT", "PMD_TEST_PEBBLE_TLS_PORT",
                 "PMD_TEST_CHALLTESTSRV")


# Parallel runs (pytest-xdist, `-n N --dist loadgroup`): tests that share one
# peer run on one worker, one after the other. The test dockerd is shared
# (docker_env's teardown removes every pmd container), and so is Pebble's
# http-01 validation port. test_package's tests share one package build (a
# module fixture: one per worker otherwise, racing in one folder) and the
# machine's dpkg database. Everything else runs wherever there is room.
_DOCKER_MODULES = {"test_docker", "test_zero_downtime"}
_PEBBLE_MODULES = {"test_acme"}
_ONE_WORKER_MODULES = {"test_package"}


@pytest.hookimpl(tryfirst=True)   # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        mod = item.module.__name__.rsplit(".", 1)[-1]
        names = set(getattr(item, "fixturenames", ()))
        if mod in _ONE_WORKER_MODULES:
            item.add_marker(pytest.mark.xdist_group(mod))
        elif mod in _DOCKER_MODULES or names & {"docker_env", "registry"}:
            item.add_marker(pytest.mark.xdist_group("docker"))
        elif mod in _PEBBLE_MODULES or names & {"pebble", "own_pebble"}:
            item.add_marker(pytest.mark.xdist_group("pebble"))
