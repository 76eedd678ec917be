"""ACME against Pebble: issuance through real HTTP-01 on pmd's own HTTP
listener, chain verified with `openssl s_client` against Pebble's root,
restart reusing account and certificate, corrupted stored certificate
re-ordered, renewal of a short certificate installed while a connection
stays open, nonce rejections, and Pebble down -> back off -> recover.

Tests marked "own Pebble" start a private pebble + pebble-challtestsrv on
free loopback ports (stopped by PID at teardown) because they need settings
the shared one does not have."""
import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.request
import uuid

import pytest

import pmdtest
from test_tls import served_cert, tls_connect


def s_client_verify(port, servername, root):
    p = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                        "-servername", servername, "-verify_return_error",
                        "-CAfile", str(root), "-verify_hostname", servername],
                       input=b"", capture_output=True, timeout=10)
    return (p.stdout + p.stderr).decode("utf-8", "replace")


def fetch_root(mgmt, ca, dest):
    ctx = ssl.create_default_context(cafile=ca)
    with urllib.request.urlopen(f"{mgmt}/roots/0", context=ctx, timeout=10) as r:
        dest.write_bytes(r.read())
    return dest


def names():
    tag = uuid.uuid4().hex[:8]
    return [f"a-{tag}.pmd.test", f"www.a-{tag}.pmd.test"]


def acme_pmd(pmd_factory, peb, domains, name="acme", extra_tls=None, **kw):
    https = kw.pop("https_port", None) or pmdtest.free_port()
    tls = {"mode": "acme", "domains": ", ".join(domains),
           "acme_directory": peb["PMD_TEST_PEBBLE_DIR"], "acme_email": "ops@pmd.test",
           "acme_ca_file": peb["PMD_TEST_PEBBLE_CA"]}
    tls.update(extra_tls or {})
    p = pmd_factory({"proxy": {"https_listen": f"127.0.0.1:{https}"}, "tls": tls},
                    http_port=int(peb["PMD_TEST_PEBBLE_HTTP_PORT"]), name=name, **kw)
    p.https_port = https
    return p


def wait_issued(p, timeout=30, after=None):
    """Wait until /status shows a non-temporary certificate (different from
    `after` when given); returns the tls object."""
    def ok():
        t = p.status()["tls"]
        return t if (not t["temporary"] and t["issuer"].startswith("CN=Pebble")
                     and t["not_after"] != after) else None
    return pmdtest.wait_for(ok, timeout, interval=0.1, what="certificate issued")


class OwnPebble:
    """A private pebble + pebble-challtestsrv on free loopback ports."""

    def __init__(self, tmp, env=None, validity=None):
        if not shutil.which("pebble") or not shutil.which("pebble-challtestsrv"):
            pytest.skip("pebble is not installed")
        self.dir = tmp / "own-pebble"
        self.dir.mkdir(exist_ok=True)
        d = self.dir
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                       check=True, capture_output=True)
        self.port, self.mport, self.dport, self.cport, self.hport = (
            pmdtest.free_port() for _ in range(5))
        conf = {"listenAddress": f"127.0.0.1:{self.port}",
                "managementListenAddress": f"127.0.0.1:{self.mport}",
                "certificate": str(d / "cert.pem"), "privateKey": str(d / "key.pem"),
                "httpPort": self.hport, "tlsPort": pmdtest.free_port(),
                "ocspResponderURL": "", "externalAccountBindingRequired": False}
        if validity:
            conf["certificateValidityPeriod"] = validity
        (d / "pebble.json").write_text(json.dumps({"pebble": conf}))
        self.env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", **(env or {}))
        self.chall = subprocess.Popen(
            ["pebble-challtestsrv", "-management", f"127.0.0.1:{self.cport}",
             "-dns01", f"127.0.0.1:{self.dport}", "-http01", "", "-https01", "",
             "-tlsalpn01", "", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.proc = None
        self.start()

    def start(self):
        self.log = open(self.dir / "pebble.log", "ab")
        self.proc = subprocess.Popen(["pebble", "-config", str(self.dir / "pebble.json"),
                                      "-dnsserver", f"127.0.0.1:{self.dport}"],
                                     env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        ctx = ssl.create_default_context(cafile=str(self.dir / "cert.pem"))
        pmdtest.wait_for(lambda: urllib.request.urlopen(self.env_vars()["PMD_TEST_PEBBLE_DIR"],
                                                        context=ctx, timeout=2),
                         20, interval=0.2, what="pebble up")

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
            self.log.close()

    def close(self):
        self.stop()
        self.chall.terminate()
        self.chall.wait(10)

    def env_vars(self):
        return {"PMD_TEST_PEBBLE_DIR": f"https://127.0.0.1:{self.port}/dir",
                "PMD_TEST_PEBBLE_CA": str(self.dir / "cert.pem"),
                "PMD_TEST_PEBBLE_MGMT": f"https://127.0.0.1:{self.mport}",
                "PMD_TEST_PEBBLE_HTTP_PORT": str(self.hport)}


@pytest.fixture
def own_pebble(tmp_path):
    made = []

    def make(**kw):
        made.append(OwnPebble(tmp_path, **kw))
        return made[-1]
    yield make
    for p in made:
        p.close()


def test_issue_verify_restart(pmd_factory, pebble, tmp_path):
    doms = names()
    p = acme_pmd(pmd_factory, pebble, doms)
    # served at once with a temporary certificate, then the real one
    tls = wait_issued(p)
    assert tls["mode"] == "acme" and tls["domains"] == doms
    assert tls["last_error"] is None and tls["next_renewal"]
    root = fetch_root(pebble["PMD_TEST_PEBBLE_MGMT"], pebble["PMD_TEST_PEBBLE_CA"], tmp_path / "root.pem")
    for n in doms:
        out = s_client_verify(p.https_port, n, root)
        assert "Verify return code: 0 (ok)" in out, out
    state = p.state_dir
    assert os.stat(f"{state}/certs/key.pem").st_mode & 0o777 == 0o600
    assert os.stat(f"{state}/acme/account.key").st_mode & 0o777 == 0o600
    account_key = open(f"{state}/acme/account.key", "rb").read()
    der = served_cert(p.https_port, doms[0])
    log = p.log_text()
    assert log.count("acme order created") == 1
    assert "acme http-01 challenge" in log
    p.stop()

    # restart: same account, same certificate, no new order
    mark = len(p.log_text())
    p.start()
    p.wait_log(r"acme state\" from=directory to=idle", 15)
    after = p.log_text()[mark:]
    assert "stored certificate loaded" in after
    assert "acme order created" not in after and "account ready" not in after
    assert open(f"{state}/acme/account.key", "rb").read() == account_key
    assert served_cert(p.https_port, doms[0]) == der
    assert p.status()["tls"]["temporary"] is False


def test_corrupted_certificate_is_reordered(pmd_factory, pebble, tmp_path):
    doms = names()
    p = acme_pmd(pmd_factory, pebble, doms)
    first = wait_issued(p)
    p.stop()
    chain = f"{p.state_dir}/certs/fullchain.pem"
    data = open(chain, "rb").read()
    with open(chain, "wb") as f:
        f.write(data[:len(data) // 2])
    mark = len(p.log_text())
    p.start()
    p.wait_log(r"stored certificate unusable, ordering a new one", 10)
    wait_issued(p, after=None)
    assert "acme order created" in p.log_text()[mark:]
    root = fetch_root(pebble["PMD_TEST_PEBBLE_MGMT"], pebble["PMD_TEST_PEBBLE_CA"], tmp_path / "root.pem")
    assert "Verify return code: 0 (ok)" in s_client_verify(p.https_port, doms[1], root)
    assert first["issuer"].startswith("CN=Pebble")


def test_new_directory_reorders_without_restart(pmd_factory, pebble, tmp_path):
    """Staging -> production: a certificate from another ACME directory is
    kept serving until the new CA's arrives, which comes without a restart
    (the same Pebble under another URL stands in for the second CA)."""
    doms = names()
    p = acme_pmd(pmd_factory, pebble, doms)
    first = wait_issued(p)
    origin = open(f"{p.state_dir}/certs/directory").read()
    assert origin == pebble["PMD_TEST_PEBBLE_DIR"]
    other = origin.replace("127.0.0.1", "localhost")
    assert other != origin
    mark = len(p.log_text())
    p.config_path.write_text(p.config_path.read_text().replace(origin, other))
    p.reload()
    p.wait_log(r"stored certificate comes from another ACME directory", 10)
    pmdtest.wait_for(lambda: "acme certificate issued" in p.log_text()[mark:], 30,
                     what="certificate from the new directory")
    assert open(f"{p.state_dir}/certs/directory").read() == other
    assert p.status()["tls"]["temporary"] is False
    # and a restart keeps it: same directory now, no new order
    p.stop()
    mark = len(p.log_text())
    p.start()
    p.wait_log(r"acme state\" from=directory to=idle", 15)
    assert "acme order created" not in p.log_text()[mark:]


def test_short_certificate_renews_with_connection_open(pmd_factory, own_pebble, tmp_path):
    peb = own_pebble(validity=20)
    env = peb.env_vars()
    doms = names()
    p = acme_pmd(pmd_factory, env, doms)
    first = wait_issued(p)
    der1 = served_cert(p.https_port, doms[0])
    held = tls_connect(p.https_port, doms[0])
    held.sendall(f"GET /a HTTP/1.1\r\nHost: {doms[0]}\r\n\r\n".encode())
    assert held.recv(4096).startswith(b"HTTP/1.1 ")
    # 20 s lifetime: due with half of it left, ~10 s after issuance
    second = wait_issued(p, timeout=30, after=first["not_after"])
    assert second["not_after"] > first["not_after"]
    assert served_cert(p.https_port, doms[0]) != der1
    held.sendall(f"GET /b HTTP/1.1\r\nHost: {doms[0]}\r\nConnection: close\r\n\r\n".encode())
    assert held.recv(4096).startswith(b"HTTP/1.1 ")
    held.close()
    root = fetch_root(env["PMD_TEST_PEBBLE_MGMT"], env["PMD_TEST_PEBBLE_CA"], tmp_path / "root.pem")
    assert "Verify return code: 0 (ok)" in s_client_verify(p.https_port, doms[0], root)


def test_nonce_rejections_still_issue(pmd_factory, own_pebble):
    # Pebble rejects 30 % of good nonces: every request may be retried
    peb = own_pebble(env={"PEBBLE_WFE_NONCEREJECT": "30"})
    p = acme_pmd(pmd_factory, peb.env_vars(), names())
    wait_issued(p, timeout=30)
    assert p.status()["tls"]["last_error"] is None


def test_pebble_down_backs_off_and_recovers(pmd_factory, own_pebble):
    """Slow (about 65 s): the first retry comes after 1 min +/- 10 %."""
    peb = own_pebble()
    env = peb.env_vars()
    peb.stop()
    doms = names()
    p = acme_pmd(pmd_factory, env, doms)
    p.wait_log(r"acme failed\" state=directory type=\"connection\"", 10)
    tls = p.status()["tls"]
    assert tls["temporary"] is True and tls["last_error"].startswith("connection:")
    # HTTPS and the HTTP listener keep working on the temporary certificate
    assert served_cert(p.https_port, doms[0])
    assert p.get("/.well-known/acme-challenge/unknown").status == 404
    retry = time.strptime(tls["next_renewal"], "%Y-%m-%dT%H:%M:%SZ")
    delay = time.mktime(retry) - time.mktime(time.gmtime())
    assert 50 <= delay <= 70, tls
    peb.start()
    tls = wait_issued(p, timeout=90)
    assert tls["last_error"] is None


class AriFront:
    """A small HTTPS responder in front of Pebble 2.4 (which has no ARI):
    forwards every request to Pebble with its own Host (Pebble builds its
    URLs from Host, so the whole protocol flows through here), adds
    `renewalInfo` to the directory, answers renewalInfo/CERTID with
    `window` (a pair of epoch seconds), and records newOrder payloads."""

    def __init__(self, peb):
        import base64
        import http.server
        import threading
        self.window = None
        self.profiles = None
        self.order_error = None   # (status, problem type, Retry-After)
        self.ari_ids = []
        self.orders = []
        self.port = pmdtest.free_port()
        base = f"https://127.0.0.1:{self.port}"
        pctx = ssl.create_default_context(cafile=str(peb.dir / "cert.pem"))
        front = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def reply(self, code, body, headers):
                self.send_response(code)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def forward(self, body=None):
                req = urllib.request.Request(f"https://127.0.0.1:{peb.port}{self.path}", data=body,
                                             method=self.command,
                                             headers={"Host": f"127.0.0.1:{front.port}",
                                                      "Content-Type": "application/jose+json"})
                try:
                    r = urllib.request.urlopen(req, context=pctx)
                except urllib.error.HTTPError as e:
                    r = e
                data = r.read()
                keep = ("Location", "Replay-Nonce", "Link", "Retry-After", "Content-Type")
                return r.status, data, [(k, v) for k, v in r.headers.items() if k in keep]

            def do_HEAD(self):
                self.reply(*self.forward())

            def do_GET(self):
                if self.path.startswith("/renewal-info/") and not front.window:
                    self.reply(404, b"{}", [("Content-Type", "application/problem+json")])
                    return
                if self.path.startswith("/renewal-info/"):
                    front.ari_ids.append(self.path[len("/renewal-info/"):])
                    fmt = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
                    s, e = front.window
                    body = json.dumps({"suggestedWindow": {"start": fmt(s), "end": fmt(e)}}).encode()
                    self.reply(200, body, [("Content-Type", "application/json"), ("Retry-After", "3600")])
                    return
                status, data, headers = self.forward()
                if self.path == "/dir":
                    d = json.loads(data)
                    d["renewalInfo"] = f"{base}/renewal-info"
                    if front.profiles:
                        d["meta"]["profiles"] = front.profiles
                    data = json.dumps(d).encode()
                self.reply(status, data, headers)

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/order-plz":
                    payload = json.loads(body)["payload"]
                    front.orders.append(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))
                    if front.order_error:
                        status, ptype, ra = front.order_error
                        problem = json.dumps({"type": f"urn:ietf:params:acme:error:{ptype}",
                                              "detail": "too many certificates (test)"}).encode()
                        self.reply(status, problem, [("Content-Type", "application/problem+json"),
                                                     ("Retry-After", str(ra))])
                        return
                self.reply(*self.forward(body))

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), H)
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sctx.load_cert_chain(str(peb.dir / "cert.pem"), str(peb.dir / "key.pem"))
        self.httpd.socket = sctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"{base}/dir"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def ari_cert_id(pem_path):
    """RFC 9773 cert ID computed with openssl, independently of pmd."""
    import base64
    import re
    text = subprocess.run(["openssl", "x509", "-in", str(pem_path), "-noout", "-serial",
                           "-ext", "authorityKeyIdentifier"], capture_output=True, text=True,
                          check=True).stdout
    hexs = re.search(r"serial=([0-9A-F]+)", text).group(1)
    serial = bytes.fromhex(hexs if len(hexs) % 2 == 0 else "0" + hexs)
    if serial[0] & 0x80:
        serial = b"\0" + serial
    aki = bytes.fromhex(re.search(r"((?:[0-9A-F]{2}:){19}[0-9A-F]{2})", text).group(1).replace(":", ""))
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    return f"{b64(aki)}.{b64(serial)}"


def test_ari_window_and_replaces(pmd_factory, own_pebble):
    # no nonce rejections: each order is recorded once
    peb = own_pebble(env={"PEBBLE_WFE_NONCEREJECT": "0"})
    front = AriFront(peb)
    try:
        env = dict(peb.env_vars(), PMD_TEST_PEBBLE_DIR=front.url)
        now = time.time()
        front.window = (now + 86400, now + 2 * 86400)
        doms = names()
        p = acme_pmd(pmd_factory, env, doms)
        wait_issued(p)
        assert "replaces" not in front.orders[0]
        p.stop()
        # restart: ARI is asked, the window is in the future: no order
        mark = len(p.log_text())
        p.start()
        p.wait_log(r"acme renewal window", 10)
        cert_id = ari_cert_id(f"{p.state_dir}/certs/fullchain.pem")
        assert front.ari_ids == [cert_id]
        tls = p.status()["tls"]
        start, end = (time.mktime(time.strptime(tls["ari_window"][k], "%Y-%m-%dT%H:%M:%SZ"))
                      for k in ("start", "end"))
        assert abs(start - time.mktime(time.gmtime(front.window[0]))) <= 1
        assert abs(end - time.mktime(time.gmtime(front.window[1]))) <= 1
        nr = time.mktime(time.strptime(tls["next_renewal"], "%Y-%m-%dT%H:%M:%SZ"))
        assert start - 1 <= nr <= end + 1, tls
        assert "acme order created" not in p.log_text()[mark:]
        # the CA moves the window into the past: renew now, with `replaces`
        front.window = (now - 7200, now - 3600)
        p.reload()
        pmdtest.wait_for(lambda: len(front.orders) == 2, 20, what="renewal order")
        assert front.orders[1]["replaces"] == cert_id
        pmdtest.wait_for(lambda: p.log_text().count("acme certificate issued") == 2, 20,
                         what="renewed certificate")
        assert ari_cert_id(f"{p.state_dir}/certs/fullchain.pem") != cert_id
        # renewalInfo failing (404) is not an ACME failure: lifetime rule
        front.window = None
        mark = len(p.log_text())
        p.reload()
        p.wait_log(r"acme renewal info unusable, using the lifetime rule\" status=404", 10)
        assert p.status()["tls"]["last_error"] is None
        assert "acme failed" not in p.log_text()[mark:]
    finally:
        front.close()


def test_profile_checked_and_sent(pmd_factory, own_pebble):
    peb = own_pebble(env={"PEBBLE_WFE_NONCEREJECT": "0"})
    front = AriFront(peb)
    try:
        front.profiles = {"classic": "90 days", "shortlived": "6 days"}
        env = dict(peb.env_vars(), PMD_TEST_PEBBLE_DIR=front.url)
        p = acme_pmd(pmd_factory, env, names(), extra_tls={"acme_profile": "shortlived"})
        wait_issued(p)
        assert front.orders[0]["profile"] == "shortlived"
        p.stop()
        # a profile the server does not list: no order, the reason in /status
        q = acme_pmd(pmd_factory, env, names(), name="other", extra_tls={"acme_profile": "tlsserver"})
        err = pmdtest.wait_for(lambda: q.status()["tls"]["last_error"], 10, what="profile error")
        assert "acme_profile tlsserver is not offered" in err and "shortlived" in err, err
        assert len(front.orders) == 1
        assert q.status()["tls"]["temporary"] is True
    finally:
        front.close()


def test_rate_limited_honours_retry_after(pmd_factory, own_pebble):
    peb = own_pebble(env={"PEBBLE_WFE_NONCEREJECT": "0"})
    front = AriFront(peb)
    try:
        front.order_error = (429, "rateLimited", 7200)
        env = dict(peb.env_vars(), PMD_TEST_PEBBLE_DIR=front.url)
        p = acme_pmd(pmd_factory, env, names())
        p.wait_log(r"acme failed\" state=order type=\"rateLimited\"", 10)
        tls = p.status()["tls"]
        assert tls["last_error"].startswith("rateLimited: HTTP 429: too many certificates"), tls
        assert tls["temporary"] is True
        retry = time.mktime(time.strptime(tls["next_renewal"], "%Y-%m-%dT%H:%M:%SZ"))
        delay = retry - time.mktime(time.gmtime())
        # Retry-After (2 h) wins over the first backoff step (1 min)
        assert 7190 <= delay <= 7210, tls
        assert len(front.orders) == 1
    finally:
        front.close()
