"""Egress policy: real packet filtering in each sandbox's namespace, tried against a "world"
that the test builds on this machine (a network namespace behind a veth, with addresses from
TEST-NET-2 and one link-local address), never against real outside addresses."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from sandport import Sandbox

from .._server import ServerProcess
from ._world import MakeSandbox, World, reach


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
        for bad in ({"allowOut": ["world..example"]}, {"denyOut": ["world.example"]},
                    {"denyOut": "1.2.3.4"},
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
