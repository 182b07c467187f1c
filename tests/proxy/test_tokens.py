"""Runtime tokens expire (a server setting, 1 h by default); POST /refresh and /connect hand
out new ones while the old keep working until their own expiry or until revoked; the SDK
renews its token by itself before it runs out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime

import httpx
import pytest
import websockets.sync.client as ws_client
from websockets.exceptions import ConnectionClosed

from sandport import AsyncSandbox, Sandbox

from .._server import ServerProcess
from .conftest import Site, make_site


def _expires_in(detail: dict[str, object]) -> float:
    return datetime.fromisoformat(str(detail["tokenExpiresAt"])).timestamp() - time.time()


def _runtime(site: Site, token: str) -> httpx.Response:
    return httpx.post(f"{site.runtime}/sandbox/exec", json={"command": "echo hi"},
                      headers={"authorization": f"Bearer {token}"}, timeout=30)


def _port(site: Site, token: str) -> int:
    """What the auth: true port answers to a request carrying ``token``."""
    return httpx.get(site.url(3001, "/echo"), headers={"authorization": f"Bearer {token}"},
                     timeout=10).status_code


def _opens(site: Site, token: str) -> bool:
    answer = _runtime(site, token)
    assert (answer.status_code == 200) == (_port(site, token) == 200), (answer.text, token)
    return answer.status_code == 200


def test_expiry_refresh_revoke_connect(fresh_server: Callable[..., ServerProcess]) -> None:
    server = fresh_server(env={"SANDPORT_TOKEN_TTL_S": "8"})
    site = make_site(server)
    try:
        with server.client() as api:
            sid = site.id
            detail = api.get(f"/api/sandbox/{sid}").json()
            first = detail["token"]
            assert 3 < _expires_in(detail) <= 8.5  # the server's ttl, not the sandbox's deadline
            assert _opens(site, first)

            refreshed = api.post(f"/api/sandbox/{sid}/refresh").json()
            second = refreshed["token"]
            assert second != first and refreshed["runtime"] == detail["runtime"]
            assert _opens(site, first) and _opens(site, second)  # the old one still works
            # ...and, as any token of the sandbox, is not passed on to the sandbox's server
            echo = httpx.get(site.url(3000, "/echo"), headers={"authorization": f"Bearer {first}"},
                             timeout=10).json()
            assert not any(k.lower() == "authorization" for k, _ in echo["headers"])

            revoked = api.post(f"/api/sandbox/{sid}/revoke", json={"token": first})
            assert revoked.status_code == 200 and revoked.json()["token"] == second
            assert not _opens(site, first) and _opens(site, second)
            assert _runtime(site, first).json()["error"] == "unauthorized"
            bad = api.post(f"/api/sandbox/{sid}/revoke", json={"token": 7, "all": True})
            assert bad.status_code == 400 and bad.json()["error"] == "invalid_request"

            # The refreshed token ends at its own expiry: runtime API and ports refuse it.
            deadline = time.monotonic() + 15
            while _runtime(site, second).status_code == 200 and time.monotonic() < deadline:
                time.sleep(0.5)
            expired = _runtime(site, second)
            assert expired.status_code == 401 and "expired" in expired.json()["message"]
            assert _port(site, second) == 401
            # Reading the detail of a running sandbox whose token is (nearly) out renews it.
            third = api.get(f"/api/sandbox/{sid}").json()
            assert third["token"] not in (first, second) and _expires_in(third) > 3
            assert _opens(site, third["token"])

            # Revoking every token: the answer carries the one that works from now on.
            fourth = api.post(f"/api/sandbox/{sid}/revoke", json={}).json()["token"]
            assert not _opens(site, third["token"]) and _opens(site, fourth)

            # connect: resumes a paused sandbox and hands out a new token.
            assert api.post(f"/api/sandbox/{sid}/pause").json()["status"] == "paused"
            connected = api.post(f"/api/sandbox/{sid}/connect").json()
            assert connected["status"] == "active" and connected["token"] != fourth
            assert _opens(site, connected["token"]) and _opens(site, fourth)

            api.put(f"/api/sandbox/{sid}/stop")
            assert _runtime(site, connected["token"]).status_code == 409
            assert _port(site, connected["token"]) == 404
            assert api.post(f"/api/sandbox/{sid}/refresh").status_code == 409
            assert api.post(f"/api/sandbox/{sid}/connect").status_code == 409
            assert api.post("/api/sandbox/00000000000000000000/refresh").status_code == 404
    finally:
        site.sb.close()


def test_sdk_renews_its_token_before_it_runs_out(
        fresh_server: Callable[..., ServerProcess]) -> None:
    """Tokens live 66 s; the SDKs renew theirs when less than 60 s are left."""
    server = fresh_server(env={"SANDPORT_TOKEN_TTL_S": "66"})
    sb = Sandbox.create(api_key=server.api_key, base_url=server.base_url)

    async def both() -> None:
        async with await AsyncSandbox.create(api_key=server.api_key,
                                             base_url=server.base_url) as asb:
            async_first = asb.info.token
            first = sb.info.token
            assert sb.exec("true").exit_code == 0 and sb.info.token == first  # not due yet
            await asb.files.write("/tmp/x", "async")
            assert asb.info.token == async_first
            await asyncio.sleep(7)
            assert sb.exec("echo renewed").stdout == "renewed\n"
            assert sb.info.token not in (None, first)
            assert await asb.files.read("/tmp/x") == "async"
            assert asb.info.token not in (None, async_first)
            # The token it replaced was not revoked: it still opens the sandbox.
            old = httpx.post(f"{sb.info.runtime.base_url}/sandbox/exec",
                             json={"command": "true"}, timeout=30,
                             headers={"authorization": f"Bearer {first}"})
            assert old.status_code == 200, old.text

    try:
        asyncio.run(both())
        again = Sandbox.connect(sb.id, api_key=server.api_key, base_url=server.base_url)
        assert again.info.token != sb.info.token and again.exec("echo x").stdout == "x\n"
        again.close()
    finally:
        sb.stop()
        sb.close()


def test_revoking_cuts_what_the_token_opened(fresh_server: Callable[..., ServerProcess]) -> None:
    """A terminal WebSocket and a tunnel to an auth port, opened with a token, close when
    that token is revoked; those opened with another token stay; the SDK gets a new token
    by itself; a token outlives many refreshes while it has not expired."""
    server = fresh_server()
    site = make_site(server)
    try:
        with server.client() as api:
            sid = site.id
            kept = api.post(f"/api/sandbox/{sid}/refresh").json()["token"]
            doomed = api.post(f"/api/sandbox/{sid}/refresh").json()["token"]
            assert site.sb.refresh().token == doomed
            terminal = site.sb.terminal.create("/bin/sh")
            shell = terminal.connect()
            shell.send("echo one\n")
            assert _read_until(shell, b"one")
            ws_url = site.url(3001, "/ws").replace("http", "ws", 1)
            tunnels = {token: ws_client.connect(
                ws_url, open_timeout=10, ping_interval=None,
                additional_headers={"authorization": f"Bearer {token}"}, legacy=True)
                for token in (kept, doomed)}
            for ws in tunnels.values():
                ws.send("ping")
                assert ws.recv(timeout=10) == "ping"

            assert api.post(f"/api/sandbox/{sid}/revoke", json={"token": doomed}).status_code \
                == 200
            cut_by = time.monotonic() + 10  # what it printed before may still come first
            while shell.read(timeout=1) is not None:  # None: the connection ended
                assert time.monotonic() < cut_by, "the terminal's connection stayed open"
            with pytest.raises(ConnectionClosed):
                tunnels[doomed].send("again")
                tunnels[doomed].recv(timeout=10)
            tunnels[kept].send("still")
            assert tunnels[kept].recv(timeout=10) == "still"
            for ws in tunnels.values():
                ws.close()
            # the SDK's token was the revoked one: its next call gets a new one and works
            assert site.sb.exec("echo on").stdout == "on\n"
            assert site.sb.info.token not in (doomed, kept)
            # twenty refreshes later, an unexpired token still opens the sandbox
            for _ in range(20):
                api.post(f"/api/sandbox/{sid}/refresh").raise_for_status()
            assert _runtime(site, kept).status_code == 200
    finally:
        site.sb.stop()
        site.sb.close()


def _read_until(shell: object, wanted: bytes) -> bool:
    seen = b""
    deadline = time.monotonic() + 10
    while wanted not in seen and time.monotonic() < deadline:
        got = shell.read(timeout=1)  # type: ignore[attr-defined]
        if got is None:
            return False
        seen += got
    return wanted in seen
