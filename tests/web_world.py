"""The name tests' "web": HTTP, HTTPS, a port-22 banner and a UDP 443 echo in a network
namespace of their own behind a veth, on four addresses of a /24 of 198.18.0.0/15 (the
benchmarking range: never routed off this machine), with names for them in the tests'
resolver (tests/dns_world.py) and a certificate for those names from a test CA.

Every answer says which address it was reached on and what it was asked, so a test sees
where a connection really went: ``web <address> sni=<name> host=<Host> path=<path>``. The
servers note each request in ``requests()``. ``GET /big?bytes=N`` sends N bytes. A request
with ``Upgrade`` gets a 101 and then an echo of whatever follows.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ._ca import TestCA
from .dns_world import dns_world

WILD = "wild.web.test"
CERT_NAMES = ("allowed.web.test", "other.web.test", "denied.web.test", WILD, f"*.{WILD}",
              f"*.b.{WILD}")

SERVE = r"""
import socket, ssl, sys, threading
cert, key, log = sys.argv[1:4]
addresses = sys.argv[4:]
lock = threading.Lock()
def note(line):
    with lock, open(log, "a") as f:
        f.write(line + "\n")
def head(conn, buf):
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            return None, buf
        buf += data
    text, rest = buf.split(b"\r\n\r\n", 1)
    return text.decode("latin-1"), rest
def http(conn, local, sni):
    buf = b""
    while True:
        text, buf = head(conn, buf)
        if text is None:
            return
        lines = text.split("\r\n")
        path = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "?"
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        host = fields.get("host", "")
        note(f"{local} {'https' if sni is not None else 'http'} sni={sni} host={host} {path}")
        size = int(fields.get("content-length", "0") or 0)
        while len(buf) < size:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
        buf = buf[size:]
        if "upgrade" in fields:
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\n"
                         b"Connection: Upgrade\r\n\r\n" + buf)
            while data := conn.recv(65536):
                conn.sendall(data)
            return
        if path.startswith("/big?bytes="):
            total = int(path.split("=", 1)[1])
            conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n".encode())
            block = b"x" * 262144
            while total > 0:
                conn.sendall(block[:total])
                total -= min(total, len(block))
            continue
        body = f"web {local} sni={sni} host={host} path={path}\n".encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
def serve(conn, tls):
    try:
        local = conn.getsockname()[0]
        if tls is None:
            http(conn, local, None)
            return
        seen = []
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.sni_callback = lambda s, name, c: seen.append(name) and None
        conn.settimeout(10)
        wrapped = ctx.wrap_socket(conn, server_side=True)
        wrapped.settimeout(None)
        http(wrapped, local, seen[0] if seen else "")
    except (OSError, ValueError):
        pass
    finally:
        conn.close()
def banner(conn):
    conn.sendall(f"ssh {conn.getsockname()[0]}\n".encode())
    conn.close()
def listen(port, handle):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(256)
    while True:
        conn = s.accept()[0]
        threading.Thread(target=handle, args=(conn,), daemon=True).start()
def udp_echo(address):  # one socket per address: answers come from the address asked
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((address, 443))
    while True:
        data, peer = u.recvfrom(65536)
        u.sendto(b"echo " + data, peer)
for port, handle in ((80, lambda c: serve(c, None)), (443, lambda c: serve(c, True)),
                     (22, banner)):
    threading.Thread(target=listen, args=(port, handle), daemon=True).start()
for address in addresses:
    threading.Thread(target=udp_echo, args=(address,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""


@dataclass
class WebWorld:
    netns: str
    host_if: str
    gateway: str  # the host's end
    allowed: str  # the addresses: allowed.web.test, other.web.test, denied.web.test
    other: str
    denied: str
    stray: str  # an address no name points at
    ca: TestCA
    directory: Path
    proc: subprocess.Popen[str] | None = None
    names: dict[str, str] = field(default_factory=dict)

    @property
    def ca_pem(self) -> str:
        return self.ca.ca_file.read_text()

    def requests(self) -> list[str]:
        """``<address> <http|https> sni=<name> host=<Host> <path>``, one per request."""
        try:
            return (self.directory / "requests.log").read_text().splitlines()
        except FileNotFoundError:
            return []

    def point(self, name: str, address: str) -> None:
        """Make ``name`` resolve to ``address`` (the tests' resolver, at once)."""
        self.names[name] = address
        dns_world().set_names(self.names)

    def reset_names(self) -> None:
        self.names = {"allowed.web.test": self.allowed, "other.web.test": self.other,
                      "denied.web.test": self.denied, WILD: self.other,
                      f"a.{WILD}": self.other, f"deep.b.{WILD}": self.other}
        dns_world().set_names(self.names)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None
        dns_world().set_names({})
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def web_world() -> WebWorld:
    """Start the web (stop it with ``.stop()``)."""
    tag = f"{os.getpid() % 100000:05d}"
    net = f"198.18.{os.getpid() % 256}"  # a /24 per test process: runs side by side
    directory = Path(tempfile.mkdtemp(prefix="sandport-web-world-"))
    ca = TestCA(directory)
    cert, key, _ = ca.issue("web", dns_names=CERT_NAMES)
    world = WebWorld(f"spt-web-{tag}", f"sptn{tag}", f"{net}.1", f"{net}.10", f"{net}.11",
                     f"{net}.12", f"{net}.13", ca, directory)
    subprocess.run(["ip", "link", "del", world.host_if], capture_output=True)  # a killed run's
    subprocess.run(["ip", "netns", "del", world.netns], capture_output=True)
    try:
        _ip("netns", "add", world.netns)
        _ip("link", "add", world.host_if, "type", "veth", "peer", "name", "eth0",
            "netns", world.netns)
        _ip("addr", "add", f"{world.gateway}/24", "dev", world.host_if)
        _ip("link", "set", world.host_if, "up")
        for address in (world.allowed, world.other, world.denied, world.stray):
            _ip("-n", world.netns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", world.netns, "link", "set", "eth0", "up")
        _ip("-n", world.netns, "link", "set", "lo", "up")
        _ip("-n", world.netns, "route", "add", "default", "via", world.gateway)
        world.proc = subprocess.Popen(
            ["ip", "netns", "exec", world.netns, sys.executable, "-c", SERVE, str(cert),
             str(key), str(directory / "requests.log"), world.allowed, world.other,
             world.denied, world.stray], stdout=subprocess.PIPE, text=True)
        assert world.proc.stdout is not None
        if world.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the web world's servers did not start")
        world.reset_names()
    except BaseException:
        world.stop()
        raise
    return world


FETCH = r"""
import socket, ssl, sys, time
ctx = ssl.create_default_context(cafile="/tmp/web-ca.pem")
def connect(dial, port):
    s = socket.socket(); s.settimeout(5)
    try:
        s.connect((dial, port))
    except ConnectionRefusedError:
        return None, "refused"
    except socket.timeout:
        return None, "timeout"
    except OSError as e:
        return None, f"blocked {e.errno}"
    return s, None
def answer(s):
    data = b""
    try:
        while b"\r\n\r\n" not in data or len(data) < length(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        return "timeout"
    except ssl.SSLError as e:
        return "denied" if "ACCESS_DENIED" in str(e) else f"tls {e.reason}"
    except OSError as e:
        return f"closed {e.errno}"
    if not data:
        return "closed"
    status = data.split(b" ", 2)[1].decode()
    body = data.split(b"\r\n\r\n", 1)[1].decode(errors="replace").strip()
    return body if status == "200" else f"status {status}"
def length(data):
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
    for line in head.split("\r\n"):
        if line.startswith("content-length:"):
            return len(head) + 4 + int(line.split(":")[1])
    return len(head) + 4
def fetch(scheme, dial, name, host=None, path="/"):
    s, why = connect(dial, 443 if scheme == "https" else 80)
    if s is None:
        return why
    try:
        if scheme == "https":
            try:
                s = ctx.wrap_socket(s, server_hostname=name)
            except ssl.SSLError as e:
                return "denied" if "ACCESS_DENIED" in str(e) else f"tls {e.reason}"
            except OSError as e:
                return f"closed {e.errno}"
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host or name}\r\n\r\n".encode())
        return answer(s)
    finally:
        s.close()
"""


def fetch(sb: object, *asks: tuple[str, ...]) -> list[str]:
    """Each ask, ``(scheme, address to dial, name[, Host, path])``, from inside ``sb``: the
    web's answer (``web <address> ...``), ``denied`` (a TLS access_denied alert), ``status
    403`` (the gate's page), ``blocked <errno>``, ``refused``, ``timeout`` or ``closed``."""
    code = FETCH + "".join(f"print(fetch(*{list(ask)!r}))\n" for ask in asks)
    ran = sb.exec(f"python3 - <<'PY'\n{code}\nPY", timeout=120)  # type: ignore[attr-defined]
    assert ran.exit_code == 0, ran.stderr
    lines: list[str] = ran.stdout.splitlines()
    return lines


def trust(sb: object, world: WebWorld) -> None:
    """The web's CA, where FETCH looks for it."""
    sb.files.write("/tmp/web-ca.pem", world.ca_pem)  # type: ignore[attr-defined]
