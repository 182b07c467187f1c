"""The operator's caps on sandboxes' networks (control/netcaps.py): --internet-access,
--default-internet-access and --never-allow, tried against the egress tests' "world" (a
network namespace of the tests, TEST-NET-2 addresses and a link-local one)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from sandport import Sandbox

from .._server import ServerProcess
from ._world import World, reach

Servers = Callable[..., ServerProcess]


@pytest.fixture
def sandboxes_on() -> Iterator[Callable[[ServerProcess], Callable[..., Sandbox]]]:
    made: list[Sandbox] = []

    def on(srv: ServerProcess) -> Callable[..., Sandbox]:
        def make(**kwargs: object) -> Sandbox:
            sb = Sandbox.create("python", api_key=srv.api_key, base_url=srv.base_url,
                                **kwargs)  # type: ignore[arg-type]
            made.append(sb)
            return sb
        return make
    yield on
    for sb in made:
        sb.close()


def test_the_default_never_allows_link_local_and_the_host(
        fresh_server: Servers, world: World,
        sandboxes_on: Callable[[ServerProcess], Callable[..., Sandbox]]) -> None:
    srv = fresh_server(env={"SANDPORT_NEVER_ALLOW": "link-local,host"})
    with srv.client() as api:
        for entry, inside in ((f"{world.link_local}/32", "169.254.0.0/16"),
                              ("169.254.169.254", "169.254.0.0/16"),
                              (world.first, world.gateway.rsplit(".", 1)[0])):
            made = api.post("/api/sandbox", json={"imageName": "python",
                                                  "network": {"allowOut": ["1.1.1.1", entry]}})
            assert made.status_code == 403, made.text
            message = made.json()["message"]
            assert "allowOut[1]" in message and "--never-allow" in message
            assert inside in message
    # a wider allowOut is taken; what is never allowed inside it stays closed
    sb = sandboxes_on(srv)(network={"allowOut": ["0.0.0.0/0"]})
    assert reach(sb, world.link_local, world.first) == ["blocked", "blocked"]
    with srv.client() as api:
        url = f"/api/sandbox/{sb.id}/network"
        refused = api.put(url, json={"allowOut": [f"{world.link_local}/32"]})
        assert refused.status_code == 403
        assert api.get(f"/api/sandbox/{sb.id}").json()["network"]["allowOut"] == ["0.0.0.0/0"]


def test_never_allow_beats_allow_out_and_the_internet(
        fresh_server: Servers, world: World,
        sandboxes_on: Callable[[ServerProcess], Callable[..., Sandbox]]) -> None:
    srv = fresh_server(env={"SANDPORT_NEVER_ALLOW": f"{world.second}/32"})
    sb = sandboxes_on(srv)(network={"allowInternetAccess": True,
                                    "allowOut": ["198.51.100.0/24"]})
    assert reach(sb, world.first, world.second) == [f"world {world.first}", "blocked"]


def test_an_internet_cap_gives_the_sandbox_without_the_internet(
        fresh_server: Servers, world: World,
        sandboxes_on: Callable[[ServerProcess], Callable[..., Sandbox]]) -> None:
    srv = fresh_server(env={"SANDPORT_INTERNET_ACCESS": "deny"})
    sb = sandboxes_on(srv)(network={"allowInternetAccess": True})
    network = sb.info.network
    assert network["allowInternetAccess"] is False and network["internetAccessCapped"] is True
    assert reach(sb, world.first) == ["blocked"]
    with srv.client() as api:
        url = f"/api/sandbox/{sb.id}/network"
        changed = api.put(url, json={"allowOut": [world.second]})  # still asks for it
        assert changed.status_code == 200
        assert changed.json()["network"]["internetAccessCapped"] is True
        dropped = api.put(url, json={"allowInternetAccess": False})
        assert "internetAccessCapped" not in dropped.json()["network"]
    assert reach(sb, world.first, world.second) == ["blocked", f"world {world.second}"]


def test_the_default_for_a_create_that_says_nothing(
        fresh_server: Servers, world: World,
        sandboxes_on: Callable[[ServerProcess], Callable[..., Sandbox]]) -> None:
    srv = fresh_server(env={"SANDPORT_DEFAULT_INTERNET_ACCESS": "on"})
    make = sandboxes_on(srv)
    said_nothing, said_no = make(), make(network={"allowInternetAccess": False})
    assert said_nothing.info.network["allowInternetAccess"] is True
    assert said_no.info.network["allowInternetAccess"] is False
    assert reach(said_nothing, world.first) == [f"world {world.first}"]
    assert reach(said_no, world.first) == ["blocked"]
    assert said_nothing.exec("getent hosts allowed.test").exit_code == 0  # and a resolver


def test_a_restart_with_other_caps_applies_them_to_running_sandboxes(
        fresh_server: Servers, world: World,
        sandboxes_on: Callable[[ServerProcess], Callable[..., Sandbox]]) -> None:
    srv = fresh_server()
    sb = sandboxes_on(srv)(network={"allowInternetAccess": True,
                                    "allowOut": [f"{world.second}/32"]})
    both = [f"world {world.first}", f"world {world.second}"]
    assert reach(sb, world.first, world.second) == both

    def network() -> dict[str, object]:
        with srv.client() as api:
            found: dict[str, object] = api.get(f"/api/sandbox/{sb.id}").json()["network"]
            return found

    srv.stop()
    srv.env = {"SANDPORT_INTERNET_ACCESS": "deny",
               "SANDPORT_NEVER_ALLOW": f"169.254.169.254/32,{world.second}/32"}
    srv.start()
    assert reach(sb, world.first, world.second) == ["blocked", "blocked"]
    narrowed = network()
    assert narrowed["allowInternetAccess"] is False and narrowed["internetAccessCapped"]
    assert narrowed["allowOut"] == [f"{world.second}/32"]  # kept, and refused by the cap
    srv.stop()
    srv.env = {}
    srv.start()  # the caps lifted: what it asked for comes back
    assert reach(sb, world.first, world.second) == both
    assert network()["allowInternetAccess"] is True and "internetAccessCapped" not in network()
    srv.assert_clean_log()


@pytest.mark.parametrize("env, message", [
    ({"SANDPORT_INTERNET_ACCESS": "maybe"}, "internet_access"),
    ({"SANDPORT_DEFAULT_INTERNET_ACCESS": "sometimes"}, "default_internet_access"),
    ({"SANDPORT_NEVER_ALLOW": "10.0.0.0/8,metadata"}, "never_allow"),
])
def test_bad_caps_stop_the_server_with_a_message(tmp_path: object, env: dict[str, str],
                                                 message: str) -> None:
    import os
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "sandport", "serve", "--data-dir",
                           f"{tmp_path}/data", "--listen", "127.0.0.1:18998"],
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr


def test_tightening_a_policy_cuts_the_flows_it_now_forbids(
        make_sandbox: Callable[..., Sandbox], world: World, server: ServerProcess) -> None:
    """A connection open to the world stops carrying data once the policy no longer lets
    that address out (the sandbox's filter judges every packet, not only the first)."""
    import time

    from ._world import ECHO_PORT
    sb = make_sandbox(network={"allowInternetAccess": True})
    sb.files.write("/tmp/talk.py", f"""
import socket, time
s = socket.create_connection(("{world.first}", {ECHO_PORT}), timeout=2)
while True:
    try:
        s.sendall(b"x")
        print("echo", s.recv(1) == b"x", flush=True)
    except OSError as exc:
        print("cut", type(exc).__name__, flush=True)
        break
    time.sleep(0.1)
""")
    talker = sb.processes.start("python3 -u /tmp/talk.py")
    time.sleep(1.5)
    with server.client() as api:
        changed = api.put(f"/api/sandbox/{sb.id}/network", json={"allowInternetAccess": False})
        assert changed.status_code == 200
    out = talker.wait(timeout=30).stdout
    assert "echo True" in out and "cut" in out, out
