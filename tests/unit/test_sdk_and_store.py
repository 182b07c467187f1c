"""The SDK's request/response core, the generated async twin, and the SQLite store."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from sandport import AsyncSandbox, Sandbox
from sandport.errors import SandboxNotFound, SandportError, Unauthorized
from sandport.sdk import _base
from sandport.settings import ClientSettings
from sandport.store import SandboxRecord
from sandport.store.sqlite import MIGRATIONS, SqliteStore

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ClientSettings("http://srv:1", "spk_k")


def test_create_call_sends_only_given_fields() -> None:
    call = _base.create_call(SETTINGS, "python", timeout_minutes=3, vcpus=None, mem_mib=None,
                             disk_size_mib=None, env={"A": "1"})
    assert (call.method, call.url) == ("POST", "http://srv:1/api/sandbox")
    assert call.json_body == {"imageName": "python", "timeoutMinutes": 3, "env": {"A": "1"}}
    assert call.headers == {"x-api-key": "spk_k"}


def test_calls_parse_errors_into_the_tree() -> None:
    call = _base.get_call(SETTINGS, "x")
    with pytest.raises(SandboxNotFound, match="gone"):
        call.parse(404, b'{"error": "sandbox_not_found", "message": "gone"}')
    with pytest.raises(Unauthorized):
        call.parse(401, b"")
    with pytest.raises(SandportError, match="not JSON"):
        call.parse(200, b"<html>")


def test_missing_api_key_is_a_clear_error() -> None:
    with pytest.raises(SandportError, match="SANDPORT_API_KEY"):
        _base.list_call(ClientSettings("http://srv:1", None), None, 1, 10)


def test_async_twin_is_generated_and_current() -> None:
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_async_sdk.py"),
                            "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


def test_sync_and_async_have_the_same_surface() -> None:
    def surface(cls: type) -> dict[str, inspect.Signature]:
        names = [n for n, f in vars(cls).items() if not n.startswith("__") and n != "_http"
                 and (callable(f) or isinstance(f, classmethod))]
        return {n: inspect.signature(getattr(cls, n)) for n in names}
    sync, coro = surface(Sandbox), surface(AsyncSandbox)
    assert set(sync) == set(coro)
    for name in sync:
        assert [p for p in sync[name].parameters] == [p for p in coro[name].parameters], name


def _record(sandbox_id: str, created: float, status: str = "active") -> SandboxRecord:
    return SandboxRecord(id=sandbox_id, team_id="team", status=status,  # type: ignore[arg-type]
                         image_name="python", vcpus=1, mem_mib=512, disk_size_mib=1024,
                         timeout_minutes=5, token="t", token_expires_at=created + 300,
                         created_at=created, updated_at=created, runtime="runc",
                         env={"A": "1"}, expires_at=created + 300)


def test_sqlite_store_round_trip(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SqliteStore(tmp_path / "s.db")
        store.open()
        for i in range(5):
            await store.insert_sandbox(_record(f"{i:020d}", 1000 + i))
        await store.update_sandbox(_record(f"{0:020d}", 1000, "closed"))
        retokened = _record(f"{4:020d}", 1004).with_tokens(
            _record("x", 0).tokens.rotated(200, 60))
        await store.update_sandbox(retokened)
        kept = await store.get_sandbox(retokened.id)
        assert kept is not None and kept.tokens == retokened.tokens and kept.older_tokens
        page, total = await store.list_sandboxes("team", ("active",), 0, 2)
        assert total == 4 and [r.id for r in page] == [f"{4:020d}", f"{3:020d}"]
        assert (await store.get_sandbox(f"{1:020d}")).env == {"A": "1"}  # type: ignore[union-attr]
        expired = await store.expired_sandboxes(1302.5)
        assert [r.id for r in expired] == [f"{i:020d}" for i in (1, 2)]
        team = await store.team_id()
        await store.add_api_key("h", team)
        await store.add_api_key("h", team)  # idempotent
        store.close()
        again = SqliteStore(tmp_path / "s.db")
        again.open()  # migrations are not replayed; data and team survive
        assert await again.team_id() == team
        assert await again.api_key_team("h") == team and await again.count_api_keys() == 1
        assert (await again.get_sandbox(f"{0:020d}")).status == "closed"  # type: ignore[union-attr]
        version = again.db.execute("PRAGMA user_version").fetchone()[0]
        assert version == len(MIGRATIONS)
        assert again.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        again.close()

    asyncio.run(scenario())


def test_grant_is_used_up_only_on_its_own_port(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SqliteStore(tmp_path / "s.db")
        store.open()
        sid, other = f"{1:020d}", f"{2:020d}"
        await store.add_grant("g", sid, 3001, 2000.0)
        assert not await store.redeem_grant("g", other, 3001, 1000.0)  # another sandbox
        assert not await store.redeem_grant("g", sid, 3002, 1000.0)  # another port
        assert await store.redeem_grant("g", sid, 3001, 1000.0)  # still usable here
        assert not await store.redeem_grant("g", sid, 3001, 1000.0)  # once
        await store.add_grant("late", sid, 3001, 2000.0)
        assert not await store.redeem_grant("late", sid, 3001, 2000.0)  # expired
        await store.insert_sandbox(_record(sid, 1000).evolve(closed_ports=(3001, 4000)))
        assert (await store.get_sandbox(sid)).closed_ports == (3001, 4000)  # type: ignore[union-attr]
        store.close()

    asyncio.run(scenario())


def test_store_refuses_a_newer_schema(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    store.open()
    store.db.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    store.close()
    with pytest.raises(RuntimeError, match="newer"):
        SqliteStore(tmp_path / "s.db").open()
