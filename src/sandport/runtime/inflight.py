"""runc verbs that change a sandbox's state, run so that a crash of the server cannot
leave their outcome unknown.

Pause, resume, checkpoint and restore each run in a session of their own, recorded in the
bundle (``inflight.json``: the verb, runc's pid = its session id, the boot) while they run.
When the server is killed in the middle, that runc (and the CRIU it started, in the same
session) goes on by itself; the next server first waits for it to end (``settle``), and
only then looks at what the sandbox became. A runc that was spawned but not yet recorded is
found by its command line, which names the sandbox and the server's runc state root.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path

from ..crashpoints import crash_point
from ._files import read_json, write_json

log = logging.getLogger("sandport.runtime")

RECORD = "inflight.json"
SETTLE_TIMEOUT_S = 300.0  # a checkpoint of a large sandbox takes a while; then it is ended


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


async def run_recorded(bundle: Path, verb: str, argv: list[str]) -> int:
    """Run ``argv`` (runc) in its own session with /dev/null for stdio, recorded in the
    bundle until it ends; its exit code."""
    record = bundle / RECORD
    write_json(record, {"verb": verb, "boot": boot_id()})
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
    write_json(record, {"verb": verb, "boot": boot_id(), "session": proc.pid})
    crash_point(f"{verb}.runc_started")
    try:
        return await proc.wait()
    finally:
        record.unlink(missing_ok=True)


def _workers(session: int | None, marks: tuple[str, ...]) -> list[int]:
    """Live (not zombie) processes in the host's mount namespace whose command line has
    every mark, or that are runc or CRIU in ``session``: never the sandbox's own processes
    (which a restore or a start may have put in that session)."""
    found = []
    host_mnt = os.readlink("/proc/self/ns/mnt")
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text().rpartition(")")[2].split()
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
            if os.readlink(f"{entry.path}/ns/mnt") != host_mnt:
                continue
        except OSError:
            continue
        if stat[0] in ("Z", "X"):
            continue
        words = {a.decode(errors="replace") for a in argv}
        if all(m in words for m in marks) or session is not None and \
                int(stat[3]) == session and _is_runc_or_criu(entry.path):
            found.append(int(entry.name))
    return found


def _is_runc_or_criu(proc: str) -> bool:
    """A session number of a dead runc may be reused by an unrelated session later: only
    runc and CRIU processes in it are what the record speaks of."""
    try:
        name = os.path.basename(os.readlink(f"{proc}/exe"))
    except OSError:
        return False
    return name.startswith(("runc", "criu"))


async def settle(bundle: Path, marks: tuple[str, ...],
                 timeout_s: float = SETTLE_TIMEOUT_S) -> str | None:
    """Wait for a verb that an earlier server left running on this sandbox to end (killing
    it after ``timeout_s``); the verb's name, or None if none was recorded."""
    record = read_json(bundle / RECORD)
    verb = record.get("verb")
    if not isinstance(verb, str):
        return None
    session = record.get("session") if record.get("boot") == boot_id() else None
    session = session if isinstance(session, int) else None
    deadline = time.monotonic() + timeout_s
    while pids := _workers(session, marks):
        if time.monotonic() > deadline:
            log.warning("%s: runc %s left by the last server still runs: killing it",
                        bundle.name, verb)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            break
        await asyncio.sleep(0.05)
    (bundle / RECORD).unlink(missing_ok=True)
    return verb
