"""The official E2B SDK (PyPI ``e2b``, pinned), unchanged, against a real ``sandport serve``:
pointed at it only by the environment (``E2B_API_URL``, ``E2B_API_KEY``), its control-plane
calls work on sandboxes that are the same records the Hyperbrowser face shows.

(The in-sandbox API the SDK calls envd, for commands and files: test_e2b_envd.py.)
Every key has an E2B-form twin (``e2b_`` and 40 hex), accepted wherever the key is.
"""

from __future__ import annotations

import datetime
import re
import secrets
from collections.abc import Callable, Iterator

import httpx
import pytest
from e2b import Sandbox, SandboxQuery, SandboxState
from e2b.exceptions import AuthenticationException, SandboxException, SandboxNotFoundException

from sandport import Sandbox as Ours
from sandport.ids import e2b_twin

from .._server import ServerProcess


@pytest.fixture
def e2b_env(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The environment an E2B user sets; a tag their sandboxes carry in their metadata."""
    monkeypatch.setenv("E2B_API_URL", server.base_url)
    monkeypatch.setenv("E2B_API_KEY", server.api_key)
    run = secrets.token_hex(4)
    yield run
    key = {"api_key": server.api_key}  # (a test may have set another in the environment)
    for listed in Sandbox.list(query=SandboxQuery(metadata={"run": run}), **key).next_items():
        Sandbox.kill(listed.sandbox_id, **key)


def test_create_info_timeout_and_kill(e2b_env: str, server: ServerProcess) -> None:
    sb = Sandbox.create(template="python", timeout=120, metadata={"run": e2b_env, "who": "a b"},
                        envs={"GREETING": "hi"})
    info = sb.get_info()
    assert (info.sandbox_id, info.template_id, info.state) == (sb.sandbox_id, "python",
                                                               SandboxState.RUNNING)
    assert info.metadata == {"run": e2b_env, "who": "a b"}
    assert info.cpu_count >= 1 and info.memory_mb >= 128
    assert 115 <= (info.end_at - info.started_at).total_seconds() <= 125
    assert sb.get_host(3000) == f"3000-{sb.sandbox_id}.localhost:{server.port}"
    sb.set_timeout(900)
    later = Sandbox.get_info(sb.sandbox_id)
    assert 890 <= (later.end_at - datetime.datetime.now(datetime.UTC)).total_seconds() <= 905
    # the same sandbox through the other face, and what the E2B create asked for
    with server.client() as api:
        detail = api.get(f"/api/sandbox/{sb.sandbox_id}").json()
        assert detail["status"] == "active" and detail["imageName"] == "python"
        assert detail["network"]["openPorts"] is True  # E2B's ports need no expose
        assert "GREETING" not in str(detail)  # (the detail never shows the env)
    # a real sandbox, with the env asked for: sandport's own SDK runs in it
    ours = Ours.connect(sb.sandbox_id, api_key=server.api_key, base_url=server.base_url)
    try:
        assert ours.exec("echo $GREETING").stdout == "hi\n"
    finally:
        ours.close()
    assert sb.kill() is True
    assert Sandbox.kill(sb.sandbox_id) is False  # gone: 404, which the SDK says as False
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(sb.sandbox_id)
    with server.client() as api:
        assert api.get(f"/api/sandbox/{sb.sandbox_id}").json()["status"] == "closed"


def test_list_by_metadata_state_and_pages(e2b_env: str) -> None:
    made = [Sandbox.create(template="python", metadata={"run": e2b_env, "n": str(i)})
            for i in range(3)]
    pages = Sandbox.list(query=SandboxQuery(metadata={"run": e2b_env}), limit=2)
    first = pages.next_items()
    assert pages.has_next and len(first) == 2
    second = pages.next_items()
    assert not pages.has_next and len(second) == 1
    seen = [s.sandbox_id for s in first + second]
    assert seen == [s.sandbox_id for s in reversed(made)]  # newest first, each once
    only = Sandbox.list(query=SandboxQuery(metadata={"run": e2b_env, "n": "1"})).next_items()
    assert [s.sandbox_id for s in only] == [made[1].sandbox_id]
    assert made[0].pause() is True
    paused = Sandbox.list(query=SandboxQuery(metadata={"run": e2b_env},
                                             state=[SandboxState.PAUSED])).next_items()
    assert [s.sandbox_id for s in paused] == [made[0].sandbox_id]
    running = Sandbox.list(query=SandboxQuery(metadata={"run": e2b_env},
                                              state=[SandboxState.RUNNING],
                                              template="python")).next_items()
    assert {s.sandbox_id for s in running} == {made[1].sandbox_id, made[2].sandbox_id}
    assert Sandbox.list(query=SandboxQuery(metadata={"run": "nobody"})).next_items() == []


def test_pause_and_connect(e2b_env: str, server: ServerProcess) -> None:
    sb = Sandbox.create(template="python", timeout=60, metadata={"run": e2b_env})
    assert sb.pause() is True
    assert sb.pause() is False  # paused already: E2B's 409
    assert sb.get_info().state == SandboxState.PAUSED
    resumed = Sandbox.connect(sb.sandbox_id, timeout=600)
    assert resumed.sandbox_id == sb.sandbox_id
    info = resumed.get_info()
    assert info.state == SandboxState.RUNNING
    assert (info.end_at - datetime.datetime.now(datetime.UTC)).total_seconds() > 590
    Sandbox.connect(sb.sandbox_id, timeout=5)  # only ever extends
    assert (Sandbox.get_info(sb.sandbox_id).end_at - info.end_at).total_seconds() > -2
    with server.client() as api:
        assert api.get(f"/api/sandbox/{sb.sandbox_id}").json()["status"] == "active"


def test_network_policy_through_the_sdk(e2b_env: str, server: ServerProcess) -> None:
    sb = Sandbox.create(template="python", metadata={"run": e2b_env},
                        allow_internet_access=False,
                        network={"allow_out": ["198.51.100.7", "allowed.test"],
                                 "mask_request_host": "localhost:${PORT}"})
    info = sb.get_info()
    assert info.allow_internet_access is False
    with server.client() as api:
        network = api.get(f"/api/sandbox/{sb.sandbox_id}").json()["network"]
    assert network["allowOut"] == ["198.51.100.7/32", "allowed.test"]
    assert network["maskRequestHost"] == "localhost:${PORT}"
    sb.update_network({"deny_out": ["203.0.113.0/24"]})  # what is left out is cleared
    with server.client() as api:
        network = api.get(f"/api/sandbox/{sb.sandbox_id}").json()["network"]
    assert network["allowOut"] == [] and network["denyOut"] == ["203.0.113.0/24"]
    assert network["maskRequestHost"] == "localhost:${PORT}"
    with pytest.raises(SandboxException) as bad:
        sb.update_network({"deny_out": ["not-an-address"]})
    assert "denyOut" in str(bad.value)


def test_bad_input_gets_e2b_errors(e2b_env: str, server: ServerProcess,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SandboxException) as missing:
        Sandbox.create(template="no-such-image-here", metadata={"run": e2b_env})
    assert "no-such-image-here" in str(missing.value)  # (its registry is down here: 502)
    with pytest.raises(SandboxException) as long_timeout:
        Sandbox.create(template="python", timeout=10**9)
    assert "timeout" in str(long_timeout.value)
    monkeypatch.setenv("E2B_API_KEY", "e2b_" + "0" * 40)
    with pytest.raises(AuthenticationException):
        Sandbox.list().next_items()
    # on the wire: E2B's error body, and no retry of a create the SDK cannot trust
    for method, path, body in (("POST", "/v2/sandboxes", {"templateID": 7}),
                               ("POST", "/v2/sandboxes", {"volumeMounts": []}),
                               ("GET", f"/sandboxes/{'0' * 20}", None),
                               ("DELETE", "/sandboxes/not-an-id", None),
                               ("GET", "/v2/sandboxes?limit=0", None),
                               ("GET", "/v2/sandboxes?nextToken=bm9wZQ", None),
                               ("POST", f"/sandboxes/{'0' * 20}/timeout", {"timeout": 1})):
        answer = httpx.request(method, server.base_url + path, json=body,
                               headers={"x-api-key": server.api_key})
        assert 400 <= answer.status_code < 500, (path, answer.text)
        assert answer.json() == {"code": answer.status_code, "message": answer.json()["message"]}
        assert answer.json()["message"] and answer.headers["should-retry"] == "false"
    unkeyed = httpx.get(server.base_url + "/v2/sandboxes")
    assert unkeyed.status_code == 401 and unkeyed.json()["code"] == 401


def test_every_key_has_an_e2b_twin(fresh_server: Callable[..., ServerProcess],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    srv = fresh_server(env={"SANDPORT_API_KEY": ""})  # a first start: the server makes one
    key = (srv.data_dir / "api-key").read_text().strip()
    srv.api_key = key  # (what the fixture's clean-up uses)
    twin = (srv.data_dir / "api-key-e2b").read_text().strip()
    assert re.fullmatch(r"e2b_[0-9a-f]{40}", twin) and twin == e2b_twin(key)
    assert f"E2B's form: {twin}" in srv.log()
    monkeypatch.setenv("E2B_API_URL", srv.base_url)
    for given in (key, twin):  # either one, through either face
        monkeypatch.setenv("E2B_API_KEY", given)
        assert Sandbox.list().next_items() == []
        assert httpx.get(f"{srv.base_url}/api/sandboxes",
                         headers={"x-api-key": given}).status_code == 200
    srv.stop()
    srv.start()
    assert Sandbox.list().next_items() == []  # the twin lasts
    assert (srv.data_dir / "api-key-e2b").read_text().strip() == twin
    monkeypatch.setenv("E2B_API_KEY", e2b_twin(twin))  # a twin's twin is no key
    with pytest.raises(AuthenticationException):
        Sandbox.list().next_items()
