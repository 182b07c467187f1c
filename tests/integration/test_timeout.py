"""Sandboxes stop by themselves when timeoutMinutes elapses, and say why."""

from __future__ import annotations

import time

from .._server import ServerProcess
from ._host import sandbox_traces


def test_sandbox_times_out(server: ServerProcess) -> None:
    with server.client() as api:
        detail = api.post("/api/sandbox", json={"timeoutMinutes": 1}).json()
        keeper = api.post("/api/sandbox", json={"timeoutMinutes": 10}).json()
        try:
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
        finally:
            api.put(f"/api/sandbox/{keeper['id']}/stop")
