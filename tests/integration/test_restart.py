"""The store is the truth: restarts (clean or crash) lose nothing and leak nothing."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import httpx

from .._server import ServerProcess
from ._host import host_footprint, sandbox_traces
from ._invariants import assert_invariants


def _exec(detail: dict, command: str) -> dict:
    r = httpx.post(f"{detail['runtime']['baseUrl']}/sandbox/exec",
                   headers={"Authorization": f"Bearer {detail['token']}"},
                   json={"command": command}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["result"]


def test_sandboxes_survive_clean_and_crash_restarts(
    fresh_server: Callable[..., ServerProcess],
) -> None:
    first = fresh_server()
    with first.client() as api:
        kept = api.post("/api/sandbox", json={"exposedPorts": [{"port": 3000}]}).json()
        closed = api.post("/api/sandbox", json={}).json()
        api.put(f"/api/sandbox/{closed['id']}/stop")
        api.post(f"/api/sandbox/{kept['id']}/expose", json={"port": 3001, "auth": True})
    _exec(kept, "echo state > /root/state; mkdir -p /srv/www && echo served > /srv/www/f && "
          "cd /srv/www && setsid python3 -m http.server 3000 >/dev/null 2>&1 &")

    for restart in ("clean", "crash"):
        if restart == "clean":
            first.stop()
        else:
            first.crash()
        first = fresh_server(first.data_dir, first.port)
        assert_invariants(first.data_dir)
        with first.client() as api:
            again = api.get(f"/api/sandbox/{kept['id']}").json()
            assert again["status"] == "active", restart
            assert again["token"] == kept["token"]
            assert api.get(f"/api/sandbox/{closed['id']}").json()["status"] == "closed"
        assert _exec(kept, "cat /root/state")["stdout"] == "state\n"  # same container
        # its public URLs and their auth come back with it
        port_url = f"http://3000-{kept['id']}.localhost:{first.port}/f"
        for _ in range(50):
            served = httpx.get(port_url, timeout=10)
            if served.status_code != 502:
                break
            time.sleep(0.1)
        assert served.text == "served\n", restart
        private = f"http://3001-{kept['id']}.localhost:{first.port}/"
        assert httpx.get(private, timeout=10).status_code == 401


def test_container_lost_while_server_down(fresh_server: Callable[..., ServerProcess]) -> None:
    srv = fresh_server()
    before = host_footprint(srv.data_dir)
    with srv.client() as api:
        lost = api.post("/api/sandbox", json={}).json()
        kept = api.post("/api/sandbox", json={}).json()
    srv.crash()
    # the container dies while no server watches it
    subprocess.run(["runc", "--root", str(srv.data_dir / "runc"), "kill", lost["id"], "KILL"],
                   check=True)
    srv = fresh_server(srv.data_dir, srv.port)
    assert_invariants(srv.data_dir)
    with srv.client() as api:
        record = api.get(f"/api/sandbox/{lost['id']}").json()
        assert record["status"] == "closed"
        assert record["closeReason"] == "container exited while the server was down"
        assert api.get(f"/api/sandbox/{kept['id']}").json()["status"] == "active"
        api.put(f"/api/sandbox/{kept['id']}/stop")
    assert sandbox_traces(srv.data_dir, lost["id"]) == []
    assert host_footprint(srv.data_dir) == before


def test_container_killed_under_a_running_server(
    fresh_server: Callable[..., ServerProcess],
) -> None:
    srv = fresh_server()
    with srv.client() as api:
        detail = api.post("/api/sandbox", json={}).json()
        subprocess.run(["runc", "--root", str(srv.data_dir / "runc"), "kill", detail["id"],
                        "KILL"], check=True)
        for _ in range(100):
            record = api.get(f"/api/sandbox/{detail['id']}").json()
            if record["status"] != "active":
                break
            time.sleep(0.1)
        assert record["status"] == "closed"
        assert record["closeReason"] == "container exited"
    assert sandbox_traces(srv.data_dir, detail["id"]) == []
