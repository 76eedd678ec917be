"""TLS termination: self-signed and files modes, protocol policy (TLS 1.1
refused, 1.2 and 1.3 accepted, ALPN http/1.1), ticket resumption, and a
files-mode certificate replaced on SIGHUP without a restart."""
import http.client
import re
import socket
import ssl
import subprocess

import pmdtest


def s_client(port, *args, servername="localhost", stdin=b"", timeout=10):
    """Run `openssl s_client` against 127.0.0.1:port; returns its output."""
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
           "-servername", servername, *args]
    p = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout)
    return (p.stdout + p.stderr).decode("utf-8", "replace")


def unverified_ctx():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def tls_connect(port, servername="localhost"):
    """A TLS connection to 127.0.0.1:port that accepts any certificate."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return unverified_ctx().wrap_socket(raw, server_hostname=servername)


def served_cert(port, servername="localhost"):
    """The leaf certificate the server presents (DER)."""
    with tls_connect(port, servername) as s:
        return s.getpeercert(binary_form=True)


def tls_pmd(pmd_factory, tls, **kw):
    port = pmdtest.free_port()
    p = pmd_factory({"proxy": {"https_listen": f"127.0.0.1:{port}"}, "tls": tls}, **kw)
    p.https_port = port
    pmdtest.wait_for(lambda: served_cert(port), 10, what="https listener")
    return p


def make_cert(d, name, cn="files.test"):
    key, crt = d / f"{name}.key", d / f"{name}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", f"/CN={cn}",
                    "-addext", f"subjectAltName=DNS:{cn}",
                    "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True)
    der = subprocess.run(["openssl", "x509", "-in", str(crt), "-outform", "DER"],
                         check=True, capture_output=True).stdout
    return crt, key, der


def test_self_signed_policy(pmd_factory):
    p = tls_pmd(pmd_factory, {"mode": "self-signed"})
    port = p.https_port
    old = s_client(port, "-tls1_1")
    assert "Cipher is (NONE)" in old or "alert protocol version" in old, old
    for flag, proto in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        out = s_client(port, flag, "-alpn", "h2,http/1.1")
        assert f"New, {proto}, Cipher is" in out, out
        assert "ALPN protocol: h2" in out, out     # [proxy] http2 = true
        out = s_client(port, flag, "-alpn", "http/1.1")
        assert "ALPN protocol: http/1.1" in out, out
    # TLS 1.2: ECDHE with AEAD only; CBC and static RSA are refused
    out = s_client(port, "-tls1_2", "-cipher", "AES128-SHA:ECDHE-ECDSA-AES128-SHA")
    assert "Cipher is (NONE)" in out or "handshake failure" in out, out
    out = s_client(port, "-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305")
    assert "Cipher is ECDHE-ECDSA-CHACHA20-POLY1305" in out, out
    # the certificate names localhost and 127.0.0.1 (no [tls] domains)
    text = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-text"],
                          input=served_cert(port), capture_output=True, check=True).stdout.decode()
    assert "DNS:localhost" in text and "IP Address:127.0.0.1" in text, text
    assert "prime256v1" in text or "P-256" in text, text
    st = p.status()["tls"]
    assert st["mode"] == "self-signed"
    assert st["domains"] == ["localhost", "127.0.0.1"]
    assert st["not_after"] and st["issuer"] == "CN=localhost"
    # requests work over TLS
    c = http.client.HTTPSConnection("127.0.0.1", port, context=unverified_ctx(), timeout=5)
    c.request("GET", "/nothing-here")
    r = c.getresponse()
    r.read()
    assert r.status in (404, 503)
    c.close()


def test_ticket_resumption(pmd_factory, tmp_path):
    p = tls_pmd(pmd_factory, {"mode": "self-signed"})
    for flag in ("-tls1_2", "-tls1_3"):
        sess = tmp_path / f"sess{flag}.pem"
        # keep stdin open a moment so the TLS 1.3 ticket arrives
        subprocess.run(f"sleep 0.5 | openssl s_client -connect 127.0.0.1:{p.https_port} {flag} "
                       f"-sess_out {sess}", shell=True, capture_output=True, timeout=10)
        out = subprocess.run(f"sleep 0.3 | openssl s_client -connect 127.0.0.1:{p.https_port} {flag} "
                             f"-sess_in {sess}", shell=True, capture_output=True, timeout=10).stdout.decode()
        assert re.search(r"^Reused, TLSv1\.[23]", out, re.M), out


def test_files_mode_and_reload(pmd_factory, tmp_path):
    crt, key, der1 = make_cert(tmp_path, "one")
    p = tls_pmd(pmd_factory, {"mode": "files", "cert_file": str(crt), "key_file": str(key)})
    assert served_cert(p.https_port, "files.test") == der1
    assert p.status()["tls"]["mode"] == "files"
    # a renewed certificate written in place is served after SIGHUP, without
    # restarting pmd; a connection opened before keeps working
    held = tls_connect(p.https_port, "files.test")
    _, _, der2 = make_cert(tmp_path, "one")
    assert der2 != der1
    pid = p.proc.pid
    p.reload()
    pmdtest.wait_for(lambda: served_cert(p.https_port, "files.test") == der2, 10,
                     what="new certificate served")
    assert p.proc.pid == pid and p.proc.poll() is None
    held.sendall(b"GET /x HTTP/1.1\r\nHost: files.test\r\nConnection: close\r\n\r\n")
    assert held.recv(100).startswith(b"HTTP/1.1 ")
    held.close()
    # a broken file at reload keeps the current certificate
    key.write_text("garbage\n")
    p.reload()
    p.wait_log(r"tls reload failed", 10)
    assert served_cert(p.https_port, "files.test") == der2


def test_files_mode_unreadable_is_fatal(pmd_factory, tmp_path):
    p = pmd_factory({"proxy": {"https_listen": f"127.0.0.1:{pmdtest.free_port()}"},
                     "tls": {"mode": "files", "cert_file": str(tmp_path / "missing.pem"),
                             "key_file": str(tmp_path / "missing.key")}}, start=False)
    p.start(wait=False)
    rc = p.proc.wait(10)
    assert rc != 0
    assert "missing.pem" in p.log_text()
    p.proc = None
