"""The control and runtime APIs over plain HTTP, as the README's curl commands use them."""

from __future__ import annotations

import httpx

from .._server import ServerProcess

DETAIL_FIELDS = {"id", "status", "createdAt", "vcpus", "memMiB", "diskSizeMiB", "runtime",
                 "token", "tokenExpiresAt", "exposedPorts", "timeoutMinutes", "closeReason",
                 "teamId", "imageName", "startTime", "endTime", "updatedAt", "region"}


def _exec(detail: dict, command: str, **extra: object) -> httpx.Response:
    return httpx.post(f"{detail['runtime']['baseUrl']}/sandbox/exec",
                      headers={"Authorization": f"Bearer {detail['token']}"},
                      json={"command": command, **extra}, timeout=60)


def test_create_exec_get_list_stop(server: ServerProcess) -> None:
    with server.client() as api:
        created = api.post("/api/sandbox", json={"imageName": "python", "timeoutMinutes": 10})
        assert created.status_code == 200, created.text
        detail = created.json()
        assert DETAIL_FIELDS <= set(detail)
        assert detail["status"] == "active"
        assert detail["timeoutMinutes"] == 10
        assert detail["runtime"]["transport"] == "regional_proxy"
        port = server.port
        assert detail["runtime"]["baseUrl"] == f"http://4001-{detail['id']}.localhost:{port}"
        assert detail["runtime"]["host"] == f"{detail['id']}.localhost"
        assert detail["token"]

        ran = _exec(detail, "echo out; echo err >&2; exit 7")
        assert ran.status_code == 200, ran.text
        assert ran.json() == {"result": {"stdout": "out\n", "stderr": "err\n", "exitCode": 7}}

        got = api.get(f"/api/sandbox/{detail['id']}").json()
        assert got["id"] == detail["id"] and got["status"] == "active"
        assert got["token"] == detail["token"]

        listed = api.get("/api/sandboxes", params={"status": "active", "page": 1, "limit": 20})
        assert listed.status_code == 200
        page = listed.json()
        assert set(page) == {"sandboxes", "totalCount", "page", "perPage"}
        assert page["page"] == 1 and page["perPage"] == 20
        assert detail["id"] in {s["id"] for s in page["sandboxes"]}

        stopped = api.put(f"/api/sandbox/{detail['id']}/stop")
        assert stopped.status_code == 200
        assert stopped.json()["status"] == "closed"
        assert stopped.json()["closeReason"] == "stopped by request"
        again = api.put(f"/api/sandbox/{detail['id']}/stop")
        assert again.status_code == 200 and again.json()["status"] == "closed"

        closed = api.get("/api/sandboxes", params={"status": "closed", "limit": 100}).json()
        assert detail["id"] in {s["id"] for s in closed["sandboxes"]}
        active = api.get("/api/sandboxes", params={"status": "active", "limit": 100}).json()
        assert detail["id"] not in {s["id"] for s in active["sandboxes"]}
        assert api.get(f"/api/sandbox/{detail['id']}").json()["endTime"] is not None


def test_exec_options_cwd_env_timeout(server: ServerProcess) -> None:
    with server.client() as api:
        detail = api.post("/api/sandbox", json={"imageName": "python",
                                                "env": {"FROM_CREATE": "c"}}).json()
        try:
            ran = _exec(detail, 'pwd; echo "$FROM_CREATE $FROM_EXEC"', cwd="/tmp",
                        env={"FROM_EXEC": "e"}).json()["result"]
            assert ran["stdout"] == "/tmp\nc e\n"
            slow = _exec(detail, "sleep 30", timeoutMs=500).json()["result"]
            assert slow["exitCode"] == 124 and slow["timedOut"] is True
            # The timed-out command is gone from the sandbox, not left running.
            ps = _exec(detail, "ps -eo comm=").json()["result"]["stdout"].split()
            assert "sleep" not in ps
            missing = _exec(detail, "true", cwd="/does/not/exist")
            assert missing.status_code == 400 and "/does/not/exist" in missing.json()["message"]
            background = _exec(detail, "sleep 600 & echo started").json()["result"]
            assert background == {"stdout": "started\n", "stderr": "", "exitCode": 0}
            big = _exec(detail, "head -c 5000000 /dev/zero | tr '\\0' x").json()["result"]
            assert len(big["stdout"]) == 5_000_000
        finally:
            api.put(f"/api/sandbox/{detail['id']}/stop")


def test_list_pages(server: ServerProcess) -> None:
    with server.client() as api:
        ids = [api.post("/api/sandbox", json={}).json()["id"] for _ in range(3)]
        try:
            first = api.get("/api/sandboxes", params={"limit": 2, "page": 1}).json()
            second = api.get("/api/sandboxes", params={"limit": 2, "page": 2}).json()
            assert len(first["sandboxes"]) == 2
            assert first["totalCount"] == second["totalCount"] >= 3
            seen = [s["id"] for s in first["sandboxes"] + second["sandboxes"]]
            assert len(set(seen)) == len(seen)  # no sandbox on two pages
            assert set(ids[1:]) <= set(seen)  # newest first
            assert "token" not in first["sandboxes"][0]
        finally:
            for sandbox_id in ids:
                api.put(f"/api/sandbox/{sandbox_id}/stop")


def test_openapi_document(server: ServerProcess) -> None:
    doc = httpx.get(f"{server.base_url}/api/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert {"/api/sandbox", "/api/sandbox/{id}", "/api/sandboxes",
            "/api/sandbox/{id}/stop"} <= set(doc["paths"])
    assert {"/sandbox/processes", "/sandbox/files/read", "/sandbox/pty"} <= set(doc["paths"])
    assert doc["paths"]["/sandbox/processes"]["servers"][0]["url"] == "{runtimeBaseUrl}"
