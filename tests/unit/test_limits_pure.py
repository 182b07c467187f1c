"""Host-wide limits, the pure parts: admission decisions, the buffer budget, the pids cap's
files, settings and the pidsLimit field."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from sandport.control.admission import (
    Admission,
    Ask,
    Capacity,
    default_memory_reserve_mib,
    refusal,
)
from sandport.control.requests import HostLimits, parse_create
from sandport.errors import InsufficientCapacity, ValidationFailed, error_from_wire
from sandport.runtime import pidcap
from sandport.runtime_api.buffers import BufferBudget, budget_bytes
from sandport.runtime_api.process_state import ProcessRegistry, ProcessSession
from sandport.settings import ServerSettings
from sandport.store import SandboxRecord


def _capacity(**changes: Any) -> Capacity:
    base: dict[str, Any] = {"mem_total_mib": 4096, "mem_reserve_mib": 1096, "overcommit": 1.0,
                            "pids_total": 1000, "pids_current": 100, "disk_free_mib": 10_000}
    return Capacity(**{**base, **changes})


@pytest.mark.parametrize(("ask", "committed", "changes", "refused"), [
    (Ask(1000, 4096), 0, {}, None),
    (Ask(3000, 4096), 0, {}, None),  # exactly all of it
    (Ask(3001, 4096), 0, {}, "not enough memory for memMiB 3001: 3000 MiB of 3000 MiB left"),
    (Ask(600, 4096), 2500, {}, "500 MiB of 3000 MiB left"),
    (Ask(600, 4096), 2500, {"overcommit": 1.5}, None),  # 4500 MiB with overcommit
    (Ask(64, 4096), 3100, {}, "0 MiB of 3000 MiB left"),  # never a negative figure
    (Ask(64, 20_000), 0, {}, "not enough disk for diskSizeMiB 20000: 10000 MiB free"),
    (Ask(64, 20_000), 0, {"disk_free_mib": None}, None),  # not measurable: not refused
    (Ask(64, 64), 0, {"pids_current": 936}, "936 of the 1000 processes"),
    (Ask(64, 64), 0, {"pids_current": 935}, None),  # 935 + 64 < 1000
    (Ask(64, 64), 0, {"pids_current": None}, None),
])
def test_admission_refusal(ask: Ask, committed: int, changes: dict[str, Any],
                           refused: str | None) -> None:
    message = refusal(ask, committed, _capacity(**changes))
    if refused is None:
        assert message is None
    else:
        assert message is not None and refused in message


@pytest.mark.parametrize(("total", "reserve"), [
    (1024, 512), (2048, 1024), (16384, 1638), (24105, 2410), (262144, 26214)])
def test_default_memory_reserve(total: int, reserve: int) -> None:
    assert default_memory_reserve_mib(total) == reserve


@pytest.mark.parametrize(("pid_max", "threads_max", "total"), [
    (32768, 192729, 24576), (4194304, 100000, 75000), (50, 50, 64)])
def test_default_pids_total(pid_max: int, threads_max: int, total: int) -> None:
    assert pidcap.default_pids_total(pid_max, threads_max) == total


def test_insufficient_capacity_is_a_503_both_ways() -> None:
    error = InsufficientCapacity("full")
    assert (error.status, error.to_wire()["error"]) == (503, "insufficient_capacity")
    assert isinstance(error_from_wire(503, error.to_wire()), InsufficientCapacity)


def test_cap_pids_writes_the_parent_v1_and_v2(tmp_path: Path) -> None:
    v1 = tmp_path / "v1"
    (v1 / "pids").mkdir(parents=True)
    assert pidcap.cap_pids("sandport-x", 500, v1) == v1 / "pids" / "sandport-x"
    assert pidcap.pids_max("sandport-x", v1) == 500
    (v1 / "pids" / "sandport-x" / "pids.current").write_text("42\n")
    assert pidcap.pids_current("sandport-x", v1) == 42
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpu memory pids\n")
    assert pidcap.cap_pids("sandport", 300, v2) == v2 / "sandport"
    assert (v2 / "sandport" / "pids.max").read_text() == "300"
    assert "+pids" in (v2 / "cgroup.subtree_control").read_text()


@pytest.mark.parametrize(("env", "problem"), [
    ({"SANDPORT_MAX_PIDS_TOTAL": "10"}, "max_pids_total"),
    ({"SANDPORT_MAX_PIDS_TOTAL": "many"}, "max_pids_total"),
    ({"SANDPORT_MEMORY_OVERCOMMIT": "0"}, "memory_overcommit"),
    ({"SANDPORT_MEMORY_RESERVE_MIB": "-1"}, "memory_reserve_mib"),
    ({"SANDPORT_CGROUP_PARENT": "../x"}, "cgroup_parent"),
    ({"SANDPORT_CGROUP_PARENT": "other"}, "cgroup_parent"),
])
def test_limit_settings_are_checked(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ValidationFailed, match=problem):
        ServerSettings.load(environ=env)


def test_limit_settings_parse() -> None:
    settings = ServerSettings.load(environ={
        "SANDPORT_MAX_PIDS_TOTAL": "300", "SANDPORT_MEMORY_OVERCOMMIT": "1.25",
        "SANDPORT_MEMORY_RESERVE_MIB": "0", "SANDPORT_BUFFER_MEMORY_MIB": "32",
        "SANDPORT_CGROUP_PARENT": "sandport-t1"})
    assert (settings.max_pids_total, settings.memory_overcommit, settings.memory_reserve_mib,
            settings.buffer_memory_mib, settings.cgroup_parent) == (300, 1.25, 0, 32,
                                                                     "sandport-t1")
    assert ServerSettings.load(environ={}).max_pids_total is None


@pytest.mark.parametrize(("body", "limit"), [
    ({}, 1024), ({"pidsLimit": 32}, 32), ({"pidsLimit": 4096}, 4096),
    ({"pidsLimit": 31}, None), ({"pidsLimit": 40000}, None), ({"pidsLimit": "9"}, None),
    ({"pidsLimit": True}, None)])
def test_pids_limit_field(body: dict[str, Any], limit: int | None) -> None:
    limits = HostLimits(cpus=2, mem_mib=4096, pids=32768)
    if limit is None:
        with pytest.raises(ValidationFailed, match="pidsLimit"):
            parse_create(body, limits, "python", 5)
    else:
        assert parse_create(body, limits, "python", 5).pids_limit == limit


# -- admission with creates under way (a fake store: this tests the layer above it) ----------
@dataclass
class _Store:
    records: list[SandboxRecord] = field(default_factory=list)
    gate: asyncio.Event | None = None

    async def sandboxes_in(self, statuses: tuple[str, ...]) -> list[SandboxRecord]:
        found = [r for r in self.records if r.status in statuses]
        gate, self.gate = self.gate, None  # only the first read waits
        if gate is not None:
            await gate.wait()
        return found


@dataclass
class _Probe:
    def capacity(self) -> Capacity:
        return _capacity()  # 3000 MiB for sandboxes


def _record(mem_mib: int, status: str = "active", suspended: bool = False) -> SandboxRecord:
    return SandboxRecord(id="x", team_id="t", status=cast(Any, status), image_name="python",
                         vcpus=1, mem_mib=mem_mib, disk_size_mib=64, timeout_minutes=5,
                         token="t", token_expires_at=0, created_at=0, updated_at=0,
                         runtime="runc", suspended=suspended)


def test_admission_counts_running_paused_and_in_flight_not_suspended() -> None:
    async def scenario() -> None:
        store = _Store([_record(1000), _record(500, "paused"),
                        _record(2000, "paused", suspended=True), _record(800, "closed")])
        admission = Admission(cast(Any, store), cast(Any, _Probe()))
        release = asyncio.Event()

        async def create(mem: int) -> None:
            await admission.admit(Ask(mem, 64))
            await release.wait()  # the create is under way until its task ends

        first = asyncio.ensure_future(create(1000))
        await asyncio.sleep(0)
        assert admission.in_flight_mib == 1000
        with pytest.raises(InsufficientCapacity, match="500 MiB of 3000"):
            await admission.admit(Ask(600, 64))
        release.set()
        await first
        assert admission.in_flight_mib == 0

    asyncio.run(scenario())


def test_concurrent_admissions_cannot_both_take_the_last_room() -> None:
    async def scenario() -> None:
        store = _Store([_record(2000)], gate=asyncio.Event())
        admission = Admission(cast(Any, store), cast(Any, _Probe()))
        hold = asyncio.Event()

        async def create() -> str:
            try:
                await admission.admit(Ask(800, 64))
            except InsufficientCapacity:
                return "refused"
            await hold.wait()
            return "admitted"

        gate = store.gate
        assert gate is not None
        tasks = [asyncio.ensure_future(create()) for _ in range(2)]
        await asyncio.sleep(0)
        gate.set()  # the first read the store before the second decided
        await asyncio.sleep(0.01)
        hold.set()
        assert sorted(await asyncio.gather(*tasks)) == ["admitted", "refused"]

    asyncio.run(scenario())


def test_a_create_that_ends_while_another_reads_the_store_is_still_counted() -> None:
    async def scenario() -> None:
        store = _Store([_record(2000)], gate=asyncio.Event())
        admission = Admission(cast(Any, store), cast(Any, _Probe()))
        gate = store.gate
        assert gate is not None
        reading = asyncio.ensure_future(admission.admit(Ask(800, 64)))  # reads, then waits
        await asyncio.sleep(0)
        # Meanwhile another create is admitted and ends: its record turns active after
        # the first read the store, so only its (released) reservation can count it.
        await asyncio.ensure_future(admission.admit(Ask(800, 64)))
        store.records.append(_record(800))
        gate.set()
        with pytest.raises(InsufficientCapacity, match="200 MiB of 3000"):
            await reading

    asyncio.run(scenario())


# -- the buffer budget ---------------------------------------------------------------------------
@dataclass(eq=False)
class _Channel:
    paused: bool = False

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def close(self) -> None:
        pass


def _session(budget: BufferBudget, name: str, buffer_bytes: int = 64 << 20,
             sandbox: str = "sb") -> ProcessSession:
    session = ProcessSession(name, sandbox, "cmd", None, "/", buffer_bytes=buffer_bytes,
                             budget=budget)
    session.channel = cast(Any, _Channel())
    return session


def test_budget_sheds_finished_output_oldest_first_then_read_output() -> None:
    async def scenario() -> None:
        budget = BufferBudget(16 << 20)  # sheds past 12 MiB
        old, newer, running = (_session(budget, n) for n in ("old", "newer", "running"))
        for session in (old, newer):
            for _ in range(3):
                session.on_output("stdout", b"x" * (1 << 20))
        old.on_exit(0, 0)
        newer.on_exit(0, 0)
        assert budget.used == 6 << 20
        for _ in range(8):
            running.on_output("stdout", b"y" * (1 << 20))
        # 14 MiB asked for, 12 kept: the first-finished process lost its output first.
        assert (old.buffered, newer.buffered, running.buffered) == (1 << 20, 3 << 20, 8 << 20)
        assert old.dropped and not newer.dropped and not running.dropped
        for _ in range(4):
            running.on_output("stdout", b"y" * (1 << 20))
        assert (old.buffered, newer.buffered, running.buffered) == (0, 0, 12 << 20)
        assert not running.dropped
        for _ in range(2):  # then what nobody needs of the running one (it has no reader)
            running.on_output("stdout", b"y" * (1 << 20))
        assert running.dropped and running.buffered == 12 << 20
        assert budget.used == 12 << 20 and not cast(_Channel, running.channel).paused

    asyncio.run(scenario())


def test_budget_holds_back_running_output_no_reader_has_read() -> None:
    async def scenario() -> None:
        budget = BufferBudget(4 << 20)
        session = _session(budget, "p")
        channel = cast(_Channel, session.channel)
        session.pin_start()  # a reader is coming: nothing from the start may be dropped
        for _ in range(4):
            session.on_output("stdout", b"z" * (1 << 20))
        assert budget.over and channel.paused  # the command is held back, not dropped
        assert session.buffered == 4 << 20 and not session.dropped
        seen = 0
        async for chunk in session.follow(0):
            seen += len(chunk.data) if chunk is not None else 0
            if seen == 4 << 20:
                break
        # Read: now it may go, and the command may go on.
        assert not budget.over and not channel.paused
        assert budget.used == session.buffered <= 3 << 20

    asyncio.run(scenario())


def test_a_sandbox_whose_readers_stall_does_not_hold_back_the_others() -> None:
    async def scenario() -> None:
        budget = BufferBudget(16 << 20)  # sheds past 12 MiB
        stalled = _session(budget, "a", sandbox="A")
        stalled.pin_start()  # its reader has read nothing: none of it may go
        for _ in range(13):
            stalled.on_output("stdout", b"a" * (1 << 20))
        assert budget.over and cast(_Channel, stalled.channel).paused
        other = _session(budget, "b", sandbox="B")
        other.pin_start()
        other_channel = cast(_Channel, other.channel)
        for _ in range(3):  # B keeps less than its share: it goes on up to the limit
            other.on_output("stdout", b"b" * (1 << 20))
            assert not other_channel.paused
        other.on_output("stdout", b"b" * (1 << 20))
        assert other_channel.paused  # past the limit everyone waits
        assert budget.used == 17 << 20  # the limit, and one read more

    asyncio.run(scenario())


def test_registry_releases_what_it_forgets() -> None:
    async def scenario() -> None:
        registry = ProcessRegistry(BufferBudget(100 << 20))
        session = _session(registry.budget, "p")
        session.on_output("stdout", b"a" * 1000)
        registry.add(session)
        assert registry.budget.used == 1000
        registry.sandbox_gone("sb")
        assert registry.budget.used == 0

    asyncio.run(scenario())


@pytest.mark.parametrize(("configured", "mem_total", "limit_mib"), [
    (None, 24105, 512), (None, 2048, 256), (None, 64, 16), (32, 24105, 32), (0, 1024, 0)])
def test_budget_bytes(configured: int | None, mem_total: int, limit_mib: int) -> None:
    assert budget_bytes(configured, mem_total) == limit_mib << 20
