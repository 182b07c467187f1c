"""The Python SDK, sync and async, against a real server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from sandport import AsyncSandbox, Sandbox, SandboxNotFound, SandboxNotRunning

from .._server import ServerProcess


def test_sync_sandbox_lifecycle(server: ServerProcess) -> None:
    with Sandbox.create(image="python", timeout_minutes=3, api_key=server.api_key,
                        base_url=server.base_url) as sb:
        assert sb.status == "active" and sb.info.timeout_minutes == 3
        result = sb.exec("python3 -c 'print(6 * 7)'")
        assert (result.stdout, result.stderr, result.exit_code) == ("42\n", "", 0)
        same = Sandbox.get(sb.id, api_key=server.api_key, base_url=server.base_url)
        assert same.id == sb.id and same.info.token == sb.info.token
        assert same.exec("echo $HOME").stdout == "/root\n"
        same.close()
        listed = Sandbox.list(status="active", limit=100, api_key=server.api_key,
                              base_url=server.base_url)
        assert sb.id in {s.id for s in listed.sandboxes}
    # leaving the block stopped it
    assert sb.status == "closed"
    assert sb.refresh().status == "closed"
    with pytest.raises(SandboxNotRunning):
        sb.exec("true")
    sb.close()


def test_sdk_reads_environment(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDPORT_API_KEY", server.api_key)
    monkeypatch.setenv("SANDPORT_BASE_URL", server.base_url)
    with Sandbox.create() as sb:
        assert sb.exec("cat /etc/debian_version").exit_code == 0


def test_sdk_errors_are_typed(server: ServerProcess) -> None:
    with pytest.raises(SandboxNotFound):
        Sandbox.get("0" * 20, api_key=server.api_key, base_url=server.base_url)


def test_async_sandbox_lifecycle(server: ServerProcess) -> None:
    async def scenario() -> None:
        async with await AsyncSandbox.create(api_key=server.api_key,
                                             base_url=server.base_url) as sb:
            results = await asyncio.gather(*(sb.exec(f"echo {i}") for i in range(5)))
            assert [r.stdout for r in results] == [f"{i}\n" for i in range(5)]
            again = await AsyncSandbox.get(sb.id, api_key=server.api_key,
                                           base_url=server.base_url)
            assert (await again.exec("exit 3")).exit_code == 3
            await again.close()
            page = await AsyncSandbox.list(status="active", api_key=server.api_key,
                                           base_url=server.base_url, limit=100)
            assert sb.id in {s.id for s in page.sandboxes}
        assert sb.status == "closed"

    asyncio.run(scenario())


def test_sandboxes_are_independent(make_sandbox: Callable[..., Sandbox]) -> None:
    a, b = make_sandbox(), make_sandbox()
    a.exec("echo a > /root/mark")
    assert b.exec("cat /root/mark").exit_code != 0
    assert a.exec("cat /root/mark").stdout == "a\n"
    a.stop()
    assert b.exec("true").exit_code == 0
