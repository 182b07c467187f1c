"""Egress policy: real packet filtering in each sandbox's namespace, tried against a "world"
that the test builds on this machine (a network namespace behind a veth, with addresses from
TEST-NET-2 and one link-local address), never against real outside addresses."""

from __future__ import annotations

import random
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from sandport import Sandbox

from .._server import ServerProcess

MakeSandbox = Callable[..., Sandbox]
WORLD_PORT = 7777
SERVE = f"""
import socket, threading
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


def test_no_egress_by_default(make_sandbox: MakeSandbox, world: World) -> None:
    sb = make_sandbox()
    assert sb.info.network["allowInternetAccess"] is False
    # the world is up (the host reaches it) but the sandbox is refused at once
    assert reach(sb, world.first, world.link_local) == ["blocked", "blocked"]


def test_internet_access_and_what_it_never_includes(make_sandbox: MakeSandbox, world: World,
                                                    server: ServerProcess) -> None:
    sb = make_sandbox(network={"allowInternetAccess": True, "denyOut": [world.second]})
    other = make_sandbox()
    other.exec("setsid python3 -m http.server 8000 >/dev/null 2>&1 &")
    other_ip = other.exec("hostname -i").stdout.strip()
    assert reach(sb, world.first, world.second, world.link_local) == [
        f"world {world.first}", "blocked", "blocked"]
    # the host's addresses (its end of the veth: the control API is on the host) and the
    # other sandboxes stay out of reach whatever the policy says
    gateway = sb.exec("getent hosts host.sandport.internal").stdout.split()[0]
    assert reach(sb, gateway, port=server.port) == ["blocked"]
    assert reach(sb, other_ip, port=8000)[0] in ("blocked", "timeout")


def test_allow_out_wins_and_policy_changes_while_running(make_sandbox: MakeSandbox,
                                                         world: World,
                                                         server: ServerProcess) -> None:
    sb = make_sandbox(network={"allowOut": [f"{world.link_local}/32", world.second]})
    assert reach(sb, world.first, world.second, world.link_local) == [
        "blocked", f"world {world.second}", f"world {world.link_local}"]
    with server.client() as api:
        url = f"/api/sandbox/{sb.id}/network"
        opened = api.put(url, json={"allowInternetAccess": True, "allowOut": []})
        assert opened.status_code == 200, opened.text
        assert opened.json()["network"]["allowInternetAccess"] is True
        assert reach(sb, world.first, world.link_local) == [f"world {world.first}", "blocked"]
        closed = api.post(url, json={"allowInternetAccess": False})
        assert closed.json()["network"]["allowOut"] == []
        assert reach(sb, world.first) == ["blocked"]
        assert api.get(f"/api/sandbox/{sb.id}").json()["network"]["allowInternetAccess"] is False
        # bad input changes nothing
        for bad in ({"allowOut": ["world.example"]}, {"denyOut": "1.2.3.4"},
                    {"allowInternetAccess": 1}, {"egress": True}, []):
            answer = api.put(url, json=bad)
            assert answer.status_code == 400 and answer.json()["message"], bad
        assert reach(sb, world.second) == ["blocked"]
        assert api.put(f"/api/sandbox/{'0' * 20}/network", json={}).status_code == 404
        sb.stop()
        assert api.put(url, json={"allowInternetAccess": True}).status_code == 409


def test_sandbox_cannot_lift_its_own_policy(make_sandbox: MakeSandbox, world: World) -> None:
    sb = make_sandbox()
    status = sb.exec("grep CapEff /proc/self/status").stdout.split()[1]
    assert not int(status, 16) & (1 << 12)  # no CAP_NET_ADMIN, so no touching its filter
    tried = sb.exec("ip route add 198.51.100.0/24 dev eth0 2>&1 || true;"
                    " ip link set eth0 down 2>&1 || true").stdout
    assert reach(sb, world.first) == ["blocked"], tried


def test_egress_survives_a_server_restart(fresh_server: Callable[..., ServerProcess],
                                          world: World) -> None:
    server = fresh_server()
    sb = Sandbox.create(api_key=server.api_key, base_url=server.base_url,
                        network={"allowOut": [world.first]})
    try:
        assert reach(sb, world.first, world.second) == [f"world {world.first}", "blocked"]
        server.stop()
        server.start()
        assert reach(sb, world.first, world.second) == [f"world {world.first}", "blocked"]
        detail = httpx.get(f"{server.base_url}/api/sandbox/{sb.id}",
                           headers={"x-api-key": server.api_key}).json()
        assert detail["network"]["allowOut"] == [f"{world.first}/32"]
    finally:
        sb.stop()
        sb.close()


def test_no_way_into_another_servers_sandboxes(fresh_server: Callable[..., ServerProcess],
                                                make_sandbox: MakeSandbox) -> None:
    """Two servers on one host with different subnets: a sandbox allowed out to the other
    subnet still never reaches a sandbox there (not its agent, not its servers), even one
    that may go out itself (so replies would have a way back)."""
    other = fresh_server(env={"SANDPORT_SUBNET": "10.78.0.0/16"})
    target = Sandbox.create(api_key=other.api_key, base_url=other.base_url,
                            network={"allowInternetAccess": True})
    try:
        target.exec("setsid python3 -m http.server 8000 >/dev/null 2>&1 &")
        target_ip = target.exec("hostname -i").stdout.strip()
        assert target_ip.startswith("10.78.")
        prober = make_sandbox(network={"allowOut": ["10.78.0.0/16"],
                                       "allowInternetAccess": True})
        for port in (4001, 8000):  # the agent, a server
            assert reach(prober, target_ip, port=port)[0] in ("blocked", "timeout"), port
    finally:
        target.stop()
        target.close()
