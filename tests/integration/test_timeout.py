"""Sandboxes stop by themselves when timeoutMinutes elapses, and say why."""

from __future__ import annotations

import time

import httpx

from .._server import ServerProcess
from ._host import sandbox_traces


def test_sandbox_times_out(server: ServerProcess) -> None:
    """One minute-long wait for four deadlines: stop (the default), pause (onTimeout),
    a deadline moved later by POST /timeout, and a sandbox that was never due."""
    with server.client() as api:
        detail = api.post("/api/sandbox", json={"timeoutMinutes": 1}).json()
        keeper = api.post("/api/sandbox", json={"timeoutMinutes": 10}).json()
        pauser = api.post("/api/sandbox", json={"timeoutMinutes": 1, "onTimeout": "pause"}).json()
        moved = api.post("/api/sandbox", json={"timeoutMinutes": 1}).json()
        try:
            assert pauser["onTimeout"] == "pause" and detail["onTimeout"] == "stop"
            later = api.post(f"/api/sandbox/{moved['id']}/timeout", json={"timeoutMinutes": 5})
            assert later.status_code == 200 and later.json()["expiresAt"] > moved["expiresAt"]
            assert later.json()["timeoutMinutes"] == 5
            bad = api.post(f"/api/sandbox/{moved['id']}/timeout", json={"timeoutMinutes": 0})
            assert bad.status_code == 400
            pause_mark = _exec(server, pauser, "echo state > /tmp/state")
            assert pause_mark["result"]["exitCode"] == 0
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                current = api.get(f"/api/sandbox/{detail['id']}").json()
                if current["status"] != "active":
                    break
                time.sleep(1)
            assert current["status"] == "closed"
            assert current["closeReason"] == "timeout"
            lived_s = (current["endTime"] - current["startTime"]) / 1000
            assert 59 <= lived_s <= 70
            assert sandbox_traces(server.data_dir, detail["id"]) == []
            assert api.get(f"/api/sandbox/{keeper['id']}").json()["status"] == "active"
            deadline = time.monotonic() + 20  # created after `detail`: due a little later
            while (paused := api.get(f"/api/sandbox/{pauser['id']}").json())["status"] \
                    == "active" and time.monotonic() < deadline:
                time.sleep(0.5)
            assert (paused["status"], paused["expiresAt"]) == ("paused", None)
            assert api.get(f"/api/sandbox/{moved['id']}").json()["status"] == "active"
            assert api.post(f"/api/sandbox/{pauser['id']}/resume").json()["status"] == "active"
            assert _exec(server, pauser, "cat /tmp/state")["result"]["stdout"] == "state\n"
        finally:
            for sandbox in (keeper, pauser, moved):
                api.put(f"/api/sandbox/{sandbox['id']}/stop")


def _exec(server: ServerProcess, detail: dict[str, object], command: str) -> dict[str, object]:
    runtime = detail["runtime"]
    assert isinstance(runtime, dict)
    host = str(runtime["baseUrl"]).split("//")[1]
    answer = httpx.post(f"{server.base_url}/sandbox/exec", json={"command": command},
                        headers={"host": host, "authorization": f"Bearer {detail['token']}"},
                        timeout=30)
    assert answer.status_code == 200, answer.text
    result: dict[str, object] = answer.json()
    return result
