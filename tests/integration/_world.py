"""The egress tests' "world": a network namespace behind a veth, with addresses from
TEST-NET-2 and one link-local address, and a TCP server there that says who it is; and
``reach``, a TCP connect from inside a sandbox to some of its addresses."""

from __future__ import annotations

import random
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from sandport import Sandbox

MakeSandbox = Callable[..., Sandbox]
WORLD_PORT = 7777
ECHO_PORT = WORLD_PORT + 1  # an echo server there: a connection that stays open
SERVE = f"""
import socket, threading
def echo(c):
    while (data := c.recv(4096)):
        c.sendall(data)
    c.close()
def echoes():
    e = socket.socket(); e.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    e.bind(("0.0.0.0", {ECHO_PORT})); e.listen(64)
    while True:
        threading.Thread(target=echo, args=(e.accept()[0],), daemon=True).start()
threading.Thread(target=echoes, daemon=True).start()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {WORLD_PORT})); s.listen(64)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(("world " + c.getsockname()[0] + "\\n").encode()); c.close()
"""


@dataclass
class World:
    netns: str
    host_if: str
    gateway: str  # the host's end
    first: str  # two addresses of the world
    second: str
    link_local: str  # a link-local address (as cloud metadata services use), also the world's


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def world() -> Iterator[World]:
    tag = secrets.token_hex(3)
    block = 8 * random.randrange(32)  # a /29 of 198.51.100.0/24: test runs side by side
    w = World(f"spt-world-{tag}", f"sptw{tag}", f"198.51.100.{block + 1}",
              f"198.51.100.{block + 2}", f"198.51.100.{block + 3}",
              f"169.254.{random.randrange(100, 200)}.{random.randrange(2, 250)}")
    _ip("netns", "add", w.netns)
    server = None
    try:
        _ip("link", "add", w.host_if, "type", "veth", "peer", "name", "eth0", "netns", w.netns)
        _ip("addr", "add", f"{w.gateway}/29", "dev", w.host_if)
        _ip("link", "set", w.host_if, "up")
        _ip("route", "add", f"{w.link_local}/32", "dev", w.host_if)
        for address in (f"{w.first}/29", f"{w.second}/29", f"{w.link_local}/32"):
            _ip("-n", w.netns, "addr", "add", address, "dev", "eth0")
        _ip("-n", w.netns, "link", "set", "eth0", "up")
        _ip("-n", w.netns, "link", "set", "lo", "up")
        _ip("-n", w.netns, "route", "add", "default", "via", w.gateway)
        server = subprocess.Popen(["ip", "netns", "exec", w.netns, sys.executable, "-c", SERVE],
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield w
    finally:
        if server is not None:
            server.kill()
            server.wait()
            if server.stdout is not None:
                server.stdout.close()
        subprocess.run(["ip", "route", "del", f"{w.link_local}/32"], capture_output=True)
        subprocess.run(["ip", "link", "del", w.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", w.netns], capture_output=True)


def reach(sb: Sandbox, *addresses: str, port: int = WORLD_PORT) -> list[str]:
    """What a TCP connect from inside the sandbox gets, per address: "world <address>"
    (the world answered), "open" (connected, nothing said), "refused", "blocked" (ICMP
    admin-prohibited / unreachable) or "timeout"."""
    code = f"""
import errno, socket
for host in {list(addresses)!r}:
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((host, {port}))
    except ConnectionRefusedError:
        print("refused")
    except socket.timeout:
        print("timeout")
    except OSError as e:
        print("blocked" if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES)
              else f"error {{e.errno}}")
    else:
        try:
            print(s.makefile().readline().strip() or "open")
        except OSError:
            print("open")  # connected; it says nothing first
"""
    ran = sb.exec(f"python3 - <<'PY'\n{code}\nPY", timeout=60)
    assert ran.exit_code == 0, ran.stderr
    return ran.stdout.splitlines()
