"""A sandbox's cgroups as the kernel holds them: the freezer's real state, and removal.

runc names each container's cgroup ``/<parent>/<id>`` (oci.py; the parent is ``sandport``
or ``sandport-<name>``, settings.cgroup_parent); on this host that is one directory per
cgroup v1 hierarchy (``/sys/fs/cgroup/<controller>/<parent>/<id>``), on a cgroup v2 host
one directory under ``/sys/fs/cgroup/<parent>/``. The freezer is read here, not from
runc's view or the store, because a crash can leave the two disagreeing with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import signal
from pathlib import Path
from typing import Literal

log = logging.getLogger("sandport.runtime")

CGROUP_ROOT = Path("/sys/fs/cgroup")
Freezer = Literal["frozen", "thawed"]


def _first(pattern: str) -> Path | None:
    found = glob.glob(str(CGROUP_ROOT / pattern))
    return Path(found[0]) if found else None


def _freezer_files(sandbox_id: str,
                   parent: str | None) -> tuple[Path | None, Path | None]:
    if parent is not None:  # known: no directory listing (this is on exec's path)
        return (CGROUP_ROOT / "freezer" / parent / sandbox_id / "freezer.state",
                CGROUP_ROOT / parent / sandbox_id / "cgroup.freeze")
    return (_first(f"freezer/sandport*/{sandbox_id}/freezer.state"),
            _first(f"sandport*/{sandbox_id}/cgroup.freeze"))


def freezer_state(sandbox_id: str, parent: str | None = None) -> Freezer | None:
    """Whether the sandbox's processes are frozen; None if it has no cgroup (not running).
    A freezer caught half way (v1 ``FREEZING``) counts as frozen: its processes do not run.
    ``parent``: the sandboxes' parent cgroup, if known (else any ``sandport*``)."""
    v1, v2 = _freezer_files(sandbox_id, parent)
    with contextlib.suppress(OSError):
        if v1 is not None:
            return "thawed" if v1.read_text().strip() == "THAWED" else "frozen"
    with contextlib.suppress(OSError):
        if v2 is not None:
            return "frozen" if v2.read_text().strip() == "1" else "thawed"
    return None


def thaw(sandbox_id: str) -> None:
    """Thaw the sandbox's cgroup directly, whatever runc believes its state is."""
    v1, v2 = _freezer_files(sandbox_id, None)
    if v1 is not None:
        v1.write_text("THAWED")
    elif v2 is not None:
        v2.write_text("0")


def cgroup_dirs(sandbox_id: str) -> list[str]:
    return glob.glob(str(CGROUP_ROOT / "*" / "sandport*" / sandbox_id)) + \
        glob.glob(str(CGROUP_ROOT / "sandport*" / sandbox_id))


async def remove_cgroups(sandbox_id: str) -> None:
    """Kill what is left in the sandbox's cgroups and remove them (thawed first: a frozen
    process does not die of SIGKILL)."""
    with contextlib.suppress(OSError):
        thaw(sandbox_id)
    paths = cgroup_dirs(sandbox_id)
    for _ in range(200):
        remaining = []
        for path in paths:
            if not os.path.isdir(path):
                continue
            with contextlib.suppress(OSError):
                for pid in Path(path, "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            try:
                os.rmdir(path)
            except OSError:
                remaining.append(path)
        if not remaining:
            return
        paths = remaining
        await asyncio.sleep(0.01)
    log.warning("sandbox %s: cgroups not removed: %s", sandbox_id, ", ".join(paths))
