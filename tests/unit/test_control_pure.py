"""Request parsing, the sandbox state machine and runtime-token checks (pure)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, cast

import pytest

from sandport.activity import Activity, CpuProbe
from sandport.control import lifecycle
from sandport.control.requests import (
    ExposePort,
    HostLimits,
    parse_create,
    parse_list,
    parse_network_update,
)
from sandport.control.sandboxes import SandboxLocks, SandboxService
from sandport.errors import SandboxNotFound, SandboxNotRunning, Unauthorized, ValidationFailed
from sandport.proxy.grants import Grants
from sandport.proxy.routes import RouteTable
from sandport.proxy.urls import PublicUrls
from sandport.runtime.network import EgressPolicy, egress_rules, lease_for
from sandport.runtime_api.auth import authorize, bearer_token
from sandport.runtime_api.exec import parse_exec
from sandport.settings import ServerSettings
from sandport.store import SandboxRecord
from sandport.store.sqlite import SqliteStore
from sandport.tokens import MAX_OLDER, TokenSet

LIMITS = HostLimits(cpus=2, mem_mib=4096)


def _create(body: object) -> object:
    return parse_create(body, LIMITS, "python", 5)


def test_create_defaults() -> None:
    req = _create({})
    assert (req.image_name, req.timeout_minutes, req.vcpus, req.mem_mib) == ("python", 5, 1, 512)
    hb = _create({"imageName": "node", "region": "us", "snapshotName": None, "network": None,
                  "exposedPorts": []})
    assert hb.image_name == "node"  # fields Hyperbrowser clients send as null are accepted
    assert not hb.network.allow_internet_access and hb.network.allow_out == ()
    egress = _create({"allowInternetAccess": True, "allowOut": ["10.1.2.3/8", "1.1.1.1"],
                      "denyOut": None, "network": {"denyOut": ["192.0.2.7"]}}).network
    assert egress.allow_internet_access and egress.allow_out == ("1.1.1.1/32", "10.0.0.0/8")
    assert egress.deny_out == ("192.0.2.7/32",)
    assert egress.to_wire()["allowOut"] == ["1.1.1.1/32", "10.0.0.0/8"]
    changed = parse_network_update({"allowInternetAccess": False}, egress)
    assert not changed.allow_internet_access and changed.allow_out == egress.allow_out


def test_egress_rules_order() -> None:
    lease = lease_for("10.77.0.0/16", 1, "a" * 20)
    text = egress_rules(lease, EgressPolicy(True, ("169.254.1.1/32",), ("1.1.1.1/32",)))
    lines = text.splitlines()
    assert lines[0] == "*filter" and lines[-1] == "COMMIT"
    order = [next(i for i, line in enumerate(lines) if part in line) for part in (
        "-d 10.77.0.5/32 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-d 10.77.0.5/32 -j REJECT", "-d 169.254.1.1/32 -j ACCEPT",
        "-d 1.1.1.1/32 -j REJECT", "-d 169.254.0.0/16 -j REJECT")]
    assert order[3] < next(i for i, line in enumerate(lines) if "-d 10.0.0.0/8 -j REJECT" in line)
    assert order == sorted(order) and lines[-2] == "-A OUTPUT -j ACCEPT"
    closed = egress_rules(lease, EgressPolicy()).splitlines()
    assert closed[-2] == "-A OUTPUT -j REJECT --reject-with icmp-admin-prohibited"
    assert not EgressPolicy().lets_out and EgressPolicy(False, ("1.2.3.4/32",)).lets_out


@pytest.mark.parametrize("body, mentions", [
    ([], "object"),
    ({"vcpus": 3}, "vcpus"),
    ({"vcpus": 0}, "vcpus"),
    ({"memMiB": 4097}, "memMiB"),
    ({"memMiB": 63}, "memMiB"),
    ({"memMiB": "512"}, "memMiB"),
    ({"timeoutMinutes": False}, "timeoutMinutes"),
    ({"diskSizeMiB": 10}, "diskSizeMiB"),
    ({"imageName": "Python!"}, "imageName"),
    ({"env": {"1A": "x"}}, "env"),
    ({"env": {"A": "x\x00"}}, "env"),
    ({"snapshotName": "Snap!"}, "snapshotName"),
    ({"snapshotName": "snap", "imageName": "python"}, "not both"),
    ({"snapshotId": "snap_1"}, "snapshotId"),
    ({"exposedPorts": [{"port": 80}]}, "exposedPorts.*1024 and 65535"),
    ({"exposedPorts": [{"port": 4001}]}, "reserved"),
    ({"exposedPorts": [{"port": 3000}, {"port": 3000}]}, "twice"),
    ({"exposedPorts": {"3000": True}}, "exposedPorts"),
    ({"network": {"maskRequestHost": "x y"}}, "maskRequestHost"),
    ({"network": {"ingress": {"allowPorts": "3000"}}}, "allowPorts"),
    ({"network": {"openPorts": 1}}, "openPorts"),
    ({"denyOut": ["example.com"]}, r"denyOut\[0\].*host name"),
    ({"allowOut": ["a.*.example.com"]}, r"allowOut\[0\].*wildcard"),
    ({"allowOut": "10.0.0.0/8"}, "allowOut"),
    ({"denyOut": ["::1"]}, "denyOut.*IPv4 only"),
    ({"denyOut": [7]}, "denyOut"),
    ({"allowInternetAccess": "yes"}, "allowInternetAccess"),
    ({"network": {"allowOut": ["10.0.0.300"]}}, "allowOut"),
    ({"extra": 1}, "extra"),
])
def test_create_rejects(body: object, mentions: str) -> None:
    with pytest.raises(ValidationFailed, match=mentions):
        _create(body)


def test_list_query() -> None:
    assert parse_list({}).page == 1 and parse_list({}).limit == 10
    active = parse_list({"status": "active", "page": "2", "limit": "20"})
    assert active.statuses == ("creating", "active", "stopping")
    assert (active.page, active.limit) == (2, 20)
    for bad in ({"status": "running"}, {"page": "0"}, {"limit": "101"}, {"limit": "x"},
                {"other": "1"}):
        with pytest.raises(ValidationFailed):
            parse_list(bad)


def test_exec_body() -> None:
    req = parse_exec({"command": "echo", "args": ["a b", "$HOME"], "timeoutMs": 1500})
    assert req.command == "echo 'a b' '$HOME'" and req.timeout_s == 1.5
    assert parse_exec({"command": "x"}).timeout_s == 60
    for bad in ({"command": "x", "user": "nobody"}, {"command": "x", "args": "a"},
                {"command": "x\x00"}, {"command": "x", "cwd": "../"}):
        with pytest.raises(ValidationFailed):
            parse_exec(bad)


def test_state_machine() -> None:
    assert lifecycle.wire_status("creating") == "active"
    assert lifecycle.wire_status("stopping") == "active"
    assert lifecycle.can_move("active", "closed")
    assert not lifecycle.can_move("closed", "active")
    assert lifecycle.is_finished("error") and not lifecycle.is_finished("stopping")


def _record(status: str = "active", token: str = "spt_good",
            expires: float = 2000.0) -> SandboxRecord:
    return SandboxRecord(id="a" * 20, team_id="t", status=status, image_name="python",  # type: ignore[arg-type]
                         vcpus=1, mem_mib=512, disk_size_mib=1024, timeout_minutes=5,
                         token=token, token_expires_at=expires, created_at=0, updated_at=0,
                         runtime="runc")


@pytest.mark.parametrize("record, header, now, error", [
    (None, "Bearer spt_good", 1000, SandboxNotFound),
    (_record(), None, 1000, Unauthorized),
    (_record(), "Bearer", 1000, Unauthorized),
    (_record(), "Basic spt_good", 1000, Unauthorized),
    (_record(), "Bearer spt_bad", 1000, Unauthorized),
    (_record(), "Bearer spt_good", 2000, Unauthorized),  # expired
    (_record("closed"), "Bearer spt_good", 1000, SandboxNotRunning),
    (_record("closed"), "Bearer spt_bad", 1000, Unauthorized),  # no state oracle
    (_record("creating"), "Bearer spt_good", 1000, SandboxNotRunning),
])
def test_authorize_refuses(record: SandboxRecord | None, header: str | None, now: float,
                           error: type) -> None:
    with pytest.raises(error):
        authorize(record, "a" * 20, header, now)


def test_authorize_accepts() -> None:
    assert authorize(_record(), "a" * 20, "bearer  spt_good ", 1000).id == "a" * 20
    assert bearer_token("Bearer x") == "x" and bearer_token("") is None


def test_token_sets_rotate_revoke_and_end() -> None:
    first = TokenSet("spt_a", 100.0)
    second = first.rotated(50, 100)  # "spt_a" is kept as a hash until 100
    assert second.token != "spt_a" and second.expires_at == 150
    assert second.opens("spt_a", 99) and not second.opens("spt_a", 100)
    assert second.knows("spt_a") and not second.knows("spt_b") and not second.opens("", 60)
    assert "spt_a" not in repr(second.older)  # only its hash is kept
    third = second.rotated(120, 100)  # "spt_a" has expired by now: dropped
    assert len(third.older) == 1 and not third.knows("spt_a") and third.opens(second.token, 121)
    # Revoking the current token issues a new one; revoking an older one only ends it.
    assert not (r := third.revoked(third.token, 130, 100)).knows(third.token) and r.opens(
        r.token, 131) and r.opens(second.token, 131)
    assert not (r := third.revoked(second.token, 130, 100)).knows(second.token) and r.opens(
        third.token, 131)
    assert (r := third.revoked(None, 130, 100)).older == () and r.token != third.token
    assert not third.ended(130).opens(third.token, 130) and third.ended(130).older == ()
    many = first
    for i in range(MAX_OLDER + 10):
        many = many.rotated(60 + i, 1000)
    assert len(many.older) == MAX_OLDER  # the oldest beyond this end
    assert TokenSet("t", 1000).due(800, 3600) and not TokenSet("t", 1000).due(600, 3600)
    assert TokenSet("t", 1000).due(997, 8) and not TokenSet("t", 1000).due(995, 8)


def test_made_up_sandbox_ids_leave_no_locks_behind(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SqliteStore(tmp_path / "s.db")
        store.open()
        routes = RouteTable()
        grants = Grants(store, routes, PublicUrls.parse("http://{port}-{id}.localhost"),
                        b"s" * 32, 600)
        service = SandboxService(ServerSettings(data_dir=tmp_path), store, cast(Any, None),
                                 cast(Any, None), routes, grants)
        for sandbox_id in ("not-an-id", "../../x", "A" * 20, os.urandom(10).hex()):
            with pytest.raises(SandboxNotFound):
                await service.expose("team", sandbox_id, ExposePort(3000))
            with pytest.raises(SandboxNotFound):
                await service.unexpose("team", sandbox_id, 3000)
        assert len(service.locks) == 0
        store.close()

    asyncio.run(scenario())


def test_sandbox_locks_serialize_per_id_and_are_dropped_when_free() -> None:
    async def scenario() -> None:
        locks, order = SandboxLocks(), []

        async def use(name: str, sandbox_id: str) -> None:
            async with locks.hold(sandbox_id):
                order.append(name)
                await asyncio.sleep(0.01)
                order.append(name)

        await asyncio.gather(use("a1", "a"), use("a2", "a"), use("b", "b"))
        assert [n for n in order if n != "b"] == ["a1", "a1", "a2", "a2"]  # one at a time
        assert order.index("b") < order.index("a1", 1)  # another id does not wait
        assert len(locks) == 0

    asyncio.run(scenario())


def test_activity_idle_periods_and_probes() -> None:
    now = [100.0]
    activity = Activity(clock=lambda: now[0])
    busy: set[str] = set()
    activity.probes.append(lambda sid: sid in busy)
    assert activity.idle_for("a") == 0  # first look: its idle period starts now
    now[0] = 107
    assert activity.idle_for("a") == 7
    activity.touch("a")
    now[0] = 108
    assert activity.idle_for("a") == 1
    busy.add("a")
    now[0] = 200
    assert activity.idle_for("a") == 0  # busy: the period starts again when it ends
    busy.clear()
    now[0] = 203
    assert activity.idle_for("a") == 3
    activity.forget("a")
    assert activity.idle_for("a") == 0
    cpu = {"a": 1.0}
    probe = CpuProbe(lambda sid: cpu.get(sid), clock=lambda: now[0])
    assert probe("a") is False  # nothing to compare with yet
    now[0] += 10
    cpu["a"] += 0.05  # 0.5 % of a CPU
    assert probe("a") is False
    now[0] += 1
    cpu["a"] += 0.2
    assert probe("a") is True
    del cpu["a"]
    assert probe("a") is False  # gone
