"""Nothing is left behind: 20 create/stop cycles leave the host as they found it."""

from __future__ import annotations

from .._server import ServerProcess
from ._host import host_footprint, sandbox_traces


def test_twenty_cycles_leave_no_trace(server: ServerProcess) -> None:
    before = host_footprint(server.data_dir)
    ids = []
    with server.client() as api:
        for _ in range(20):
            detail = api.post("/api/sandbox", json={"imageName": "python"}).json()
            ids.append(detail["id"])
            during = host_footprint(server.data_dir)
            assert during["netns"] == before["netns"] + 1
            assert during["overlay mounts"] == before["overlay mounts"] + 1
            api.put(f"/api/sandbox/{detail['id']}/stop")
    assert host_footprint(server.data_dir) == before
    for sandbox_id in ids:
        assert sandbox_traces(server.data_dir, sandbox_id) == []
