"""Every kind of bad request gets the right 4xx and a JSON error, and disturbs nothing."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

import httpx
import pytest

from .._server import ServerProcess


def _assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message"} and body["message"]
    if code is not None:
        assert body["error"] == code
    return body


@pytest.fixture
def sandbox(server: ServerProcess) -> Iterator[dict]:
    with server.client() as api:
        detail = api.post("/api/sandbox", json={"imageName": "python"}).json()
        yield detail
        api.put(f"/api/sandbox/{detail['id']}/stop")


def _exec(detail: dict, token: str | None, body: object = None,
          sandbox_id: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    base = detail["runtime"]["baseUrl"]
    if sandbox_id is not None:
        base = base.replace(detail["id"], sandbox_id)  # another sandbox's runtime host
    return httpx.post(f"{base}/sandbox/exec", headers=headers,
                      json={"command": "echo ran"} if body is None else body, timeout=30)


@pytest.mark.parametrize("body", [
    b"{not json", b"", b"[1, 2]", b'"text"', b"\xff\xfe",
])
def test_malformed_bodies(server: ServerProcess, body: bytes) -> None:
    with server.client() as api:
        r = api.post("/api/sandbox", content=body,
                     headers={"content-type": "application/json"})
        _assert_error(r, 400)


@pytest.mark.parametrize("body, mentions", [
    ({"vcpus": "two"}, "vcpus"),
    ({"vcpus": True}, "vcpus"),
    ({"vcpus": -1}, "vcpus"),
    ({"vcpus": 10_000}, "vcpus"),
    ({"memMiB": 0}, "memMiB"),
    ({"memMiB": 10**9}, "memMiB"),
    ({"memMiB": 1.5}, "memMiB"),
    ({"diskSizeMiB": -5}, "diskSizeMiB"),
    ({"timeoutMinutes": 0}, "timeoutMinutes"),
    ({"timeoutMinutes": 10**12}, "timeoutMinutes"),
    ({"imageName": 7}, "imageName"),
    ({"imageName": "../../etc"}, "imageName"),
    ({"env": ["A=1"]}, "env"),
    ({"env": {"A": 1}}, "env"),
    ({"env": {"BAD NAME": "x"}}, "env"),
    ({"colour": "blue"}, "colour"),
])
def test_invalid_create_fields(server: ServerProcess, body: dict, mentions: str) -> None:
    with server.client() as api:
        before = api.get("/api/sandboxes").json()["totalCount"]
        error = _assert_error(api.post("/api/sandbox", json=body), 400, "invalid_request")
        assert mentions in error["message"]
        assert api.get("/api/sandboxes").json()["totalCount"] == before  # nothing was made


def test_unknown_image_names_the_images(server: ServerProcess) -> None:
    # "nosuch" is no local image, so it is Docker Hub's library/nosuch: the test servers'
    # docker.io goes to a loopback port that refuses (tests/_server.py).
    with server.client() as api:
        before = api.get("/api/sandboxes").json()["totalCount"]
        error = _assert_error(api.post("/api/sandbox", json={"imageName": "nosuch"}), 502,
                              "registry_error")
        assert "docker.io" in error["message"] and "'nosuch'" in error["message"]
        for name in ("base", "python", "node"):
            assert name in error["message"]
        assert api.get("/api/sandboxes").json()["totalCount"] == before


def test_api_key_required(server: ServerProcess) -> None:
    url = f"{server.base_url}/api/sandboxes"
    _assert_error(httpx.get(url), 401, "unauthorized")
    _assert_error(httpx.get(url, headers={"x-api-key": "spk_wrong"}), 401, "unauthorized")
    _assert_error(httpx.post(f"{server.base_url}/api/sandbox", json={},
                             headers={"x-api-key": server.api_key + "x"}), 401)


def test_unknown_sandbox_and_routes(server: ServerProcess) -> None:
    with server.client() as api:
        _assert_error(api.get("/api/sandbox/" + "0" * 20), 404, "sandbox_not_found")
        _assert_error(api.get("/api/sandbox/not-an-id"), 404, "sandbox_not_found")
        _assert_error(api.put("/api/sandbox/" + "f" * 20 + "/stop"), 404)
        _assert_error(api.get("/api/nope"), 404, "not_found")
        _assert_error(api.delete("/api/sandboxes"), 405)
        _assert_error(api.get("/api/sandboxes", params={"status": "weird"}), 400)
        _assert_error(api.get("/api/sandboxes", params={"limit": 1000}), 400)
        _assert_error(api.get("/api/sandboxes", params={"page": "-1"}), 400)
        _assert_error(api.get("/api/sandboxes", params={"sort": "x"}), 400)


def test_oversized_body(server: ServerProcess) -> None:
    with server.client() as api:
        big = b'{"env": {"A": "' + b"x" * (2 * 1024 * 1024) + b'"}}'
        _assert_error(api.post("/api/sandbox", content=big), 413, "payload_too_large")


def test_runtime_token_checks(server: ServerProcess, sandbox: dict) -> None:
    with server.client() as api:
        other = api.post("/api/sandbox", json={}).json()
        try:
            _assert_error(_exec(sandbox, None), 401)
            _assert_error(_exec(sandbox, "spt_wrong"), 401)
            _assert_error(_exec(sandbox, sandbox["token"] + "x"), 401)
            _assert_error(_exec(sandbox, other["token"]), 401)  # another sandbox's token
            _assert_error(_exec(sandbox, sandbox["token"], sandbox_id=other["id"]), 401)
            r = httpx.post(f"{sandbox['runtime']['baseUrl']}/sandbox/exec",
                           headers={"Authorization": f"Basic {sandbox['token']}"},
                           json={"command": "true"})
            _assert_error(r, 401)
            _assert_error(_exec(sandbox, sandbox["token"], sandbox_id="0" * 20), 404)
            assert _exec(sandbox, sandbox["token"]).json()["result"]["stdout"] == "ran\n"
            assert _exec(other, other["token"]).json()["result"]["stdout"] == "ran\n"
        finally:
            api.put(f"/api/sandbox/{other['id']}/stop")


def test_expired_runtime_token(server: ServerProcess, sandbox: dict) -> None:
    # Age the token in the store itself, as time would.
    db = sqlite3.connect(server.data_dir / "sandport.db")
    with db:
        db.execute("UPDATE sandboxes SET token_expires_at=? WHERE id=?",
                   (time.time() - 1, sandbox["id"]))
    db.close()
    error = _assert_error(_exec(sandbox, sandbox["token"]), 401)
    assert "expired" in error["message"]


@pytest.mark.parametrize("body", [
    {}, {"command": ""}, {"command": 5}, {"command": "true", "timeoutMs": True},
    {"command": "true", "timeoutMs": 0}, {"command": "true", "cwd": "relative"},
    {"command": "true", "env": {"A": 1}}, {"command": "true", "shell": "bash"},
    ["true"],
])
def test_invalid_exec_bodies(server: ServerProcess, sandbox: dict, body: object) -> None:
    _assert_error(_exec(sandbox, sandbox["token"], body), 400)


def test_exec_on_stopped_sandbox(server: ServerProcess, sandbox: dict) -> None:
    with server.client() as api:
        api.put(f"/api/sandbox/{sandbox['id']}/stop")
    _assert_error(_exec(sandbox, sandbox["token"]), 409, "sandbox_not_running")


def test_bad_input_disturbs_nothing(server: ServerProcess, sandbox: dict) -> None:
    with server.client() as api:
        for body in (b"{", b"[]", b'{"memMiB": 0}'):
            api.post("/api/sandbox", content=body)
        _exec(sandbox, "spt_wrong")
        assert api.get(f"/api/sandbox/{sandbox['id']}").json()["status"] == "active"
    assert _exec(sandbox, sandbox["token"]).json()["result"]["exitCode"] == 0
