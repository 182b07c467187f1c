"""TLS on the edge (``--tls-cert``/``--tls-key``), and what it makes possible: E2B code that
sets only ``E2B_DOMAIN`` and ``E2B_API_KEY`` (so the SDK speaks HTTPS to ``api.{domain}``
and to each sandbox's ``49983-{id}.{domain}``) runs unchanged.

The SDK resolves those names itself: it runs in a child process with its own mount
namespace, whose ``/etc/hosts`` (bind-mounted from a file of the test's) sends them to
loopback; the host's own files are untouched. It trusts the test CA through
``SSL_CERT_FILE``, as an operator's clients would trust theirs.
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from .._ca import TestCA
from .._server import ServerProcess, free_port

DOMAIN = "sandport.test"

MAKE = r'''
from e2b import Sandbox
print(Sandbox.create(template="python", timeout=120).sandbox_id)
'''
USE = r'''
import json, os, ssl, sys, time
import httpx
from e2b import Sandbox

sb = Sandbox.connect(sys.argv[1])
found = {"envd_url": sb.envd_api_url}
found["echo"] = sb.commands.run("echo over tls").stdout
sb.files.write("/tmp/www/t.txt", "a file over tls")
found["read"] = sb.files.read("/tmp/www/t.txt")
sb.commands.run("cd /tmp/www && python3 -m http.server 8000", background=True)
url = f"https://{sb.get_host(8000)}/t.txt"
for _ in range(100):
    answer = httpx.get(url, verify=ssl.create_default_context(
        cafile=os.environ["SSL_CERT_FILE"]))
    if answer.status_code == 200:
        break
    time.sleep(0.1)
found["port"] = answer.text
found["listed"] = [s.sandbox_id for s in Sandbox.list().next_items()]
found["killed"] = sb.kill()
print(json.dumps(found))
'''


def _in_own_names(tmp_path: Path, env: dict[str, str], names: list[str], script: str,
                  *args: str) -> str:
    """``script`` run by a Python whose /etc/hosts sends ``names`` to loopback and whose
    resolver is a closed loopback port: no name it looks up leaves this host."""
    hosts, resolv = tmp_path / "hosts", tmp_path / "resolv.conf"
    # (::1 too: a resolver that finds no AAAA record here would ask the closed port, and
    # wait out its timeouts; nothing listens on ::1, so the client goes on to 127.0.0.1)
    hosts.write_text(f"127.0.0.1 localhost {' '.join(names)}\n::1 {' '.join(names)}\n")
    resolv.write_text("nameserver 127.0.0.9\n")  # (nothing listens there: refused at once)
    run = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount --bind "$0" /etc/hosts && mount --bind "$1" /etc/resolv.conf && '
         'shift && exec "$@"', str(hosts), str(resolv), sys.executable, "-c", script,
         *args], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout.strip().splitlines()[-1]


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[ServerProcess, TestCA]]:
    ca = TestCA(tmp_path)
    cert, key, _ = ca.issue("edge", dns_names=(f"*.{DOMAIN}",), ips=("127.0.0.1",))
    port = free_port()
    srv = ServerProcess(tmp_path / "data", port, tls=(cert, key, ca.ca_file), env={
        "SANDPORT_PUBLIC_URL_TEMPLATE": f"https://{{port}}-{{id}}.{DOMAIN}:{port}"}).start()
    yield srv, ca
    srv.stop_all_sandboxes()
    srv.stop()


def test_e2b_domain_alone_over_tls(tls_server: tuple[ServerProcess, TestCA],
                                   tmp_path: Path) -> None:
    srv, ca = tls_server
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path),
           "E2B_DOMAIN": f"{DOMAIN}:{srv.port}", "E2B_API_KEY": srv.api_key,
           "SSL_CERT_FILE": str(ca.ca_file)}
    api = f"api.{DOMAIN}"
    sandbox_id = _in_own_names(tmp_path, env, [api], MAKE)
    found = json.loads(_in_own_names(
        tmp_path, env, [api, f"49983-{sandbox_id}.{DOMAIN}", f"8000-{sandbox_id}.{DOMAIN}"],
        USE, sandbox_id))
    assert found["envd_url"] == f"https://49983-{sandbox_id}.{DOMAIN}:{srv.port}"
    assert found["echo"] == "over tls\n" and found["read"] == "a file over tls"
    assert found["port"] == "a file over tls"  # a sandbox port's URL, over the same TLS
    assert sandbox_id in found["listed"] and found["killed"] is True
    srv.assert_clean_log()


def _served_certificate(port: int, ca: Path, name: str) -> x509.Certificate:
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=name) as tls:
        assert tls.selected_alpn_protocol() in (None, "http/1.1")
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_sighup_reloads_the_certificate(tls_server: tuple[ServerProcess, TestCA]) -> None:
    srv, ca = tls_server
    assert srv.tls is not None and srv.proc is not None
    cert_file, key_file, _ = srv.tls
    name = f"api.{DOMAIN}"
    first = _served_certificate(srv.port, ca.ca_file, name)
    renewed_cert, renewed_key, renewed = ca.issue("renewed", dns_names=(f"*.{DOMAIN}",),
                                                  ips=("127.0.0.1",))
    cert_file.write_bytes(renewed_cert.read_bytes())
    key_file.write_bytes(renewed_key.read_bytes())
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while _served_certificate(srv.port, ca.ca_file, name).serial_number != \
            renewed.serial_number and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _served_certificate(srv.port, ca.ca_file, name).serial_number == \
        renewed.serial_number != first.serial_number
    # a broken pair is refused and logged; what is served stays
    key_file.write_text("not a key")
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "not reloaded" not in srv.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "the TLS certificate was not reloaded" in srv.log()
    assert _served_certificate(srv.port, ca.ca_file, name).serial_number == \
        renewed.serial_number
    assert srv.proc.poll() is None
    with srv.client() as api:
        assert api.get("/api/health").status_code == 200
    # plain HTTP on the TLS port gets no answer it could mistake for one
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{srv.port}/api/health", timeout=5)


def test_tls_settings_are_checked(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    cert, key, _ = ca.issue("edge", dns_names=(f"*.{DOMAIN}",))
    broken = tmp_path / "broken.pem"
    broken.write_text("nothing here")
    for args, said in (([f"--tls-cert={cert}"], "tls_cert and tls_key go together"),
                       ([f"--tls-cert={cert}", f"--tls-key={broken}"],
                        "not a certificate chain and its key"),
                       ([f"--tls-cert={tmp_path / 'none.pem'}", f"--tls-key={key}"],
                        "cannot read")):
        run = subprocess.run([sys.executable, "-m", "sandport", "serve", "--data-dir",
                              str(tmp_path / "data"), "--listen", f"127.0.0.1:{free_port()}",
                              *args], capture_output=True, text=True, timeout=120)
        assert run.returncode != 0 and said in run.stderr, run.stderr[-2000:]
        assert "Traceback" not in run.stderr


def test_silent_handshakes_are_cut_and_counted_once_done(tmp_path: Path) -> None:
    """Connections that never shake hands go within the handshake deadline (the header
    timeout here) and meanwhile take no client's room; once shaken, a connection counts
    against its address's limit as a plain one does."""
    ca = TestCA(tmp_path)
    cert, key, _ = ca.issue("edge", dns_names=(f"*.{DOMAIN}",), ips=("127.0.0.1",))
    srv = ServerProcess(tmp_path / "data", tls=(cert, key, ca.ca_file), env={
        "SANDPORT_MAX_CONNECTIONS_PER_ADDRESS": "3", "SANDPORT_HEADER_TIMEOUT_S": "2"}).start()
    try:
        silent = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(8)]
        with srv.client() as api:  # served meanwhile
            assert api.get("/api/health").status_code == 200
        started = time.monotonic()
        for held in silent:
            held.settimeout(10)
            try:
                assert held.recv(100) == b""
            except ConnectionResetError:
                pass
        assert time.monotonic() - started < 6
        context = ssl.create_default_context(cafile=str(ca.ca_file))
        shaken = [context.wrap_socket(socket.create_connection(("127.0.0.1", srv.port)),
                                      server_hostname=f"api.{DOMAIN}") for _ in range(3)]
        for conn in shaken:
            conn.sendall(f"GET /api/health HTTP/1.1\r\nHost: api.{DOMAIN}\r\n\r\n".encode())
            assert conn.recv(100).startswith(b"HTTP/1.1 200")
        refused = httpx.get(f"{srv.base_url}/api/health", verify=srv.verify, timeout=5)
        assert refused.status_code == 503 and "connections" in refused.text  # 3 held
        for sock in (*silent, *shaken):
            sock.close()
        srv.assert_clean_log()
    finally:
        srv.stop()
