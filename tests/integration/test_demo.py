"""The demo (conf/demo.ini + examples/demo) works as the README says."""
import http.client
import os
import re
import ssl

import pmdtest

DEMO_INI = os.path.join(pmdtest.REPO, "conf", "demo.ini")


def demo_copy(tmp_path):
    """A pmd on conf/demo.ini with its listener, state and socket moved to a
    free port and tmp_path; run from the repository root like `make demo`."""
    port, tls_port = pmdtest.free_port(), pmdtest.free_port()
    p = pmdtest.Pmd(tmp_path, config_text="", http_port=port, cwd=pmdtest.REPO)
    p.https_port = tls_port
    text = open(DEMO_INI).read()
    subs = {"state_dir": p.state_dir, "control_socket": p.socket,
            "http_listen": f"127.0.0.1:{port}", "https_listen": f"127.0.0.1:{tls_port}"}
    for key, value in subs.items():
        text, n = re.subn(rf"(?m)^{key}\s*=.*$", f"{key} = {value}", text)
        assert n == 1, f"{key} is not set once in {DEMO_INI}"
    p.config_path.write_text(text)
    return p


def test_demo_config_is_valid():
    r = pmdtest.pmd_check(DEMO_INI, cwd=pmdtest.REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "configuration ok" in r.stdout + r.stderr


def test_demo_serves_api_frontend_and_env_config(tmp_path):
    p = demo_copy(tmp_path)
    p.start()
    try:
        p.wait_healthy("backend")
        p.wait_healthy("frontend")

        r = p.get("/api/v1/health/")
        assert r.status == 200, r
        assert r.json() == {"status": "ok"}

        hello = p.get("/api/v1/hello").json()
        assert hello["message"] == "hello from the backend"
        assert hello["forwarded_for"] == "127.0.0.1"
        assert hello["request_id"]

        r = p.get("/")
        assert r.status == 200, r
        assert "<h1>pmd demo</h1>" in r.text

        r = p.get("/env-config.js")
        assert r.status == 200, r
        assert r.headers["Content-Type"].startswith("application/javascript")
        assert "window.ENV" in r.text

        r = p.get("/api/v1/nothing-here")
        assert r.status == 404  # the backend's answer, passed through

        # HTTPS with the self-signed certificate made at start
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        c = http.client.HTTPSConnection("127.0.0.1", p.https_port, context=ctx, timeout=10)
        c.request("GET", "/api/v1/hello")
        r = c.getresponse()
        assert r.status == 200 and b"hello from the backend" in r.read()
        assert r.getheader("Strict-Transport-Security") == "max-age=31536000"
        cert = c.sock.getpeercert(binary_form=True)
        c.close()
        assert cert
        assert p.status()["tls"]["mode"] == "self-signed"

        st = p.pmctl("status")
        assert st.returncode == 0, st.stderr
        assert "backend" in st.stdout and "frontend" in st.stdout
    finally:
        p.stop()
