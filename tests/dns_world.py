"""The tests' upstream resolver: dnsmasq in a network namespace of their own, behind a
veth, at a TEST-NET-3 address. Every test server is pointed at it (--dns-upstream), so a
sandbox's lookup never reaches the host's own resolvers nor anything off the machine.

It knows a few names (NAMES; ``*.wild.test`` too), those a test gives it
(``set_names``: an addn-hosts file, reloaded at once, answered with TTL 0), and says
NXDOMAIN for the rest; its log (``queries()``) shows what reached it. Started once per
test process, at first use (or at session start, see conftest.py), removed at exit.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

NAMES = {"allowed.test": "198.51.100.20", "other.test": "198.51.100.21"}
WILD = ("wild.test", "198.51.100.22")


@dataclass
class DnsWorld:
    netns: str
    host_if: str
    gateway: str
    address: str  # where dnsmasq answers
    log: Path
    hosts: Path  # the names tests set
    proc: subprocess.Popen[bytes]

    def queries(self) -> list[str]:
        """The names dnsmasq was asked for, in order."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        return [line.split("query[", 1)[1].split(" ")[1] for line in lines if "query[" in line]

    def set_names(self, names: dict[str, str]) -> None:
        """Make each name resolve to its address (and forget the names set before), then
        wait until dnsmasq answers so."""
        self.hosts.write_text("".join(f"{a} {n}\n" for n, a in names.items()))
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if all(_ask(self.address, n) == a for n, a in names.items()):
                return
            time.sleep(0.05)
        raise RuntimeError(f"dnsmasq did not take the names {names}")


_world: DnsWorld | None = None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def dns_world() -> DnsWorld:
    global _world
    if _world is not None:
        return _world
    if shutil.which("dnsmasq") is None:
        raise RuntimeError("the tests need dnsmasq (scripts/install.sh test installs "
                           "dnsmasq-base)")
    tag = f"{os.getpid() % 100000:05d}"
    block = 4 * (os.getpid() % 60 + 1)  # a /30 of 203.0.113.0/24: test runs side by side
    netns, host_if = f"spt-dns-{tag}", f"sptd{tag}"
    gateway, address = f"203.0.113.{block + 1}", f"203.0.113.{block + 2}"
    subprocess.run(["ip", "link", "del", host_if], capture_output=True)  # a killed run's
    subprocess.run(["ip", "netns", "del", netns], capture_output=True)
    _ip("netns", "add", netns)
    _ip("link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", netns)
    _ip("addr", "add", f"{gateway}/30", "dev", host_if)
    _ip("link", "set", host_if, "up")
    _ip("-n", netns, "addr", "add", f"{address}/30", "dev", "eth0")
    _ip("-n", netns, "link", "set", "eth0", "up")
    _ip("-n", netns, "link", "set", "lo", "up")
    log = Path(tempfile.mkdtemp(prefix="sandport-dns-world-")) / "queries.log"
    hosts = log.parent / "hosts"
    hosts.write_text("")
    args = ["ip", "netns", "exec", netns, "dnsmasq", "--keep-in-foreground",
            "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces",
            f"--listen-address={address}", "--port=53", "--user=root", "--pid-file=",
            "--log-queries", f"--log-facility={log}",
            f"--address=/{WILD[0]}/{WILD[1]}", f"--addn-hosts={hosts}"]
    args += [f"--host-record={name},{addr}" for name, addr in NAMES.items()]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    world = DnsWorld(netns, host_if, gateway, address, log, hosts, proc)
    deadline = time.monotonic() + 10
    while not log.exists() and time.monotonic() < deadline:
        if proc.poll() is not None:
            _remove(world)
            raise RuntimeError("dnsmasq did not start in the tests' DNS namespace")
        time.sleep(0.05)
    _world = world
    atexit.register(_remove, world)
    return world


def _remove(world: DnsWorld) -> None:
    world.proc.kill()
    world.proc.wait()
    subprocess.run(["ip", "link", "del", world.host_if], capture_output=True)
    subprocess.run(["ip", "netns", "del", world.netns], capture_output=True)
    shutil.rmtree(world.log.parent, ignore_errors=True)


def _ask(server: str, name: str) -> str | None:
    """The first A record dnsmasq gives for ``name`` (a query from the host, over the veth)."""
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    query = os.urandom(2) + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + labels + b"\0\0\1\0\1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        try:
            s.sendto(query, (server, 53))
            reply = s.recv(4096)
        except OSError:
            return None
    if reply[:2] != query[:2] or reply[3] & 0xF or int.from_bytes(reply[6:8]) == 0:
        return None
    pos = len(query)  # the question is echoed; answers follow, names compressed (2 bytes)
    while pos + 12 <= len(reply):
        kind = int.from_bytes(reply[pos + 2:pos + 4])
        size = int.from_bytes(reply[pos + 10:pos + 12])
        if kind == 1 and size == 4:
            return socket.inet_ntoa(reply[pos + 12:pos + 16])
        pos += 12 + size
    return None
