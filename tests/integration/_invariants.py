"""One checker of what a server's records and the host hold, run after every restart.

record ⇄ container (runc's own view) ⇄ freezer ⇄ overlay mount ⇄ netns ⇄ veth ⇄ cgroups ⇄
address slot ⇄ iptables forward rule ⇄ kept files: each record in the store must be
matched by exactly the host state its status implies, and nothing in the server's data
directory may be left that no record owns. Read the way an operator would look: the store
opened read-only, ``runc state``, /proc/self/mountinfo, /run/netns, /sys.
"""

from __future__ import annotations

import glob
import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path


def _runc_status(data_dir: Path, sandbox_id: str) -> str | None:
    done = subprocess.run(["runc", "--root", str(data_dir / "runc"), "state", sandbox_id],
                          capture_output=True, text=True)
    return json.loads(done.stdout)["status"] if done.returncode == 0 else None


def _freezer(sandbox_id: str) -> str | None:
    for path in glob.glob(f"/sys/fs/cgroup/freezer/sandport*/{sandbox_id}/freezer.state"):
        try:
            return Path(path).read_text().strip()
        except OSError:
            pass
    return None


def _mounted(data_dir: Path) -> set[str]:
    prefix = str(data_dir / "sandboxes") + "/"
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh]
    return {p[len(prefix):].partition("/")[0] for p in points if p.startswith(prefix)}


def _forward_rules() -> str:
    done = subprocess.run(["iptables", "-w", "-S", "SANDPORT-FWD"], capture_output=True,
                          text=True)
    return done.stdout


def _guard_problems() -> list[str]:
    """The host guards every sandbox veth needs: the jumps into sandport's chains, each
    chain ending in DROP, and the subnet's way out masqueraded."""
    def listing(*args: str) -> list[str]:
        return subprocess.run(["iptables", "-w", *args], capture_output=True,
                              text=True).stdout.splitlines()
    problems = []
    for chain, jump in (("INPUT", "-A INPUT -i spv+ -j SANDPORT-IN"),
                        ("FORWARD", "-A FORWARD -i spv+ -j SANDPORT-FWD"),
                        ("FORWARD", "-A FORWARD -o spv+ -j SANDPORT-RET")):
        if jump not in listing("-S", chain):
            problems.append(f"host guard missing: {jump}")
    for chain in ("SANDPORT-IN", "SANDPORT-FWD", "SANDPORT-RET"):
        rules = listing("-S", chain)
        if not rules or rules[-1] != f"-A {chain} -j DROP":
            problems.append(f"host chain {chain} does not end in DROP: {rules[-1:]}")
    if not any("MASQUERADE" in line for line in listing("-t", "nat", "-S", "POSTROUTING")):
        problems.append("no MASQUERADE rule for the sandboxes' subnet")
    return problems


def _slot_owners() -> set[str]:
    owners = set()
    for path in glob.glob("/run/sandport/slots-*/*"):
        try:
            owners.add(Path(path).read_text())
        except OSError:
            pass
    return owners


def _names(directory: Path) -> set[str]:
    return set(os.listdir(directory)) if directory.is_dir() else set()


def invariant_problems(data_dir: Path) -> list[str]:
    """Every disagreement found (empty when the records and the host agree)."""
    db = sqlite3.connect(f"file:{data_dir / 'sandport.db'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    rows = [dict(r) for r in db.execute("SELECT * FROM sandboxes").fetchall()]
    db.close()
    mounted, rules, slots = _mounted(data_dir), _forward_rules(), _slot_owners()
    bundles, states = _names(data_dir / "sandboxes"), _names(data_dir / "runc")
    kept = _names(data_dir / "retained")
    problems: list[str] = []
    for row in rows:
        sid, status = row["id"], row["status"]
        say = problems.append
        if row.get("intent") is not None:
            say(f"{sid}: intent {row['intent']!r} left after boot")
        if status in ("creating", "stopping"):
            say(f"{sid}: transitional status {status} left after boot")
        live = status in ("active", "paused")
        suspended = bool(row["suspended"])
        runc = _runc_status(data_dir, sid)
        netns = os.path.exists(f"/run/netns/sp-{sid}")
        veth = os.path.exists(f"/sys/class/net/spv{sid[:12]}")
        cgroups = glob.glob(f"/sys/fs/cgroup/*/sandport*/{sid}")
        lets_out = f"-i spv{sid[:12]} " in rules
        network = json.loads(row["network"] or "{}")
        wants_out = bool(network.get("allowInternetAccess") or network.get("allowOut"))
        if live and not suspended:
            want_runc = "paused" if status == "paused" else "running"
            if runc != want_runc:
                say(f"{sid}: record {status}, runc says {runc}")
            want_freezer = "FROZEN" if status == "paused" else "THAWED"
            if _freezer(sid) != want_freezer:
                say(f"{sid}: record {status}, freezer {_freezer(sid)}")
            if not cgroups:
                say(f"{sid}: record {status}, no cgroups")
        if live and not suspended and netns and "-N CRIU" in subprocess.run(
                ["ip", "netns", "exec", f"sp-{sid}", "iptables", "-w", "-S"],
                capture_output=True, text=True).stdout:
            say(f"{sid}: CRIU's network lock is left in its namespace")
        if live:
            for what, there in (("overlay mount", sid in mounted), ("netns", netns),
                                ("veth", veth), ("address slot", sid in slots),
                                ("bundle", sid in bundles)):
                if not there:
                    say(f"{sid}: record {status}, no {what}")
            if lets_out != wants_out:
                say(f"{sid}: forward rule {'present' if lets_out else 'missing'}")
        if live and suspended:
            if runc not in (None, "stopped"):
                say(f"{sid}: suspended, but runc says {runc}")
            if not (data_dir / "sandboxes" / sid / "checkpoint" / "inventory.img").exists():
                say(f"{sid}: suspended without a complete checkpoint")
            if cgroups:
                say(f"{sid}: suspended, cgroups left: {cgroups}")
        if not live:
            for what, there in (("container", runc is not None), ("overlay mount",
                                sid in mounted), ("netns", netns), ("veth", veth),
                                ("cgroups", bool(cgroups)), ("address slot", sid in slots),
                                ("bundle", sid in bundles), ("runc state", sid in states),
                                ("forward rule", lets_out)):
                if there:
                    say(f"{sid}: {status}, but its {what} is left")
            keep_until = row.get("retain_until")
            if keep_until is not None and keep_until > time.time() and sid not in kept:
                say(f"{sid}: files to be kept until {keep_until}, but they are gone")
            if keep_until is None and sid in kept:
                say(f"{sid}: kept files without a retain_until")
    if any(row["status"] in ("active", "paused") for row in rows):
        problems += _guard_problems()
    known = {row["id"] for row in rows}
    for what, names in (("bundle", bundles), ("runc state", states), ("mount", mounted),
                        ("kept files", kept)):
        for orphan in names - known:
            problems.append(f"{orphan}: {what} owned by no record")
    return problems


def assert_invariants(data_dir: Path) -> None:
    problems = invariant_problems(data_dir)
    assert not problems, "\n".join(problems)
