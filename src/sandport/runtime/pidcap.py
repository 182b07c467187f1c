"""The parent cgroup of every sandbox, and the host-wide process cap written on it.

Each sandbox's cgroup is ``<parent>/<id>`` (``cgroup_parent``, default ``sandport``) in
every hierarchy: on cgroup v1 under ``/sys/fs/cgroup/<controller>/``, on a pure v2 host
under ``/sys/fs/cgroup/``. The kernel applies a parent's ``pids.max`` to all of its
children together, so one write there caps the processes and threads of all sandboxes
whatever their own limits add up to: a fork bomb in one sandbox meets its own limit first,
and many sandboxes together meet the parent's, well before the host's ``pid_max``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def default_pids_total(pid_max: int, threads_max: int) -> int:
    """Three quarters of what the kernel allows; the last quarter stays for the host."""
    return max(64, min(pid_max, threads_max) * 3 // 4)


def host_pids_total(configured: int | None) -> int:
    """The cap for all sandboxes together: the setting, else ``default_pids_total``."""
    if configured is not None:
        return configured
    pid_max = read_int(Path("/proc/sys/kernel/pid_max")) or 32768
    threads_max = read_int(Path("/proc/sys/kernel/threads-max")) or pid_max
    return default_pids_total(pid_max, threads_max)


def _unified(root: Path) -> bool:
    """A pure cgroup v2 host (the pids controller in the unified tree at the root)."""
    try:
        return "pids" in (root / "cgroup.controllers").read_text().split()
    except OSError:
        return False


def pids_dir(parent: str, root: Path = ROOT) -> Path:
    return root / parent if _unified(root) else root / "pids" / parent


def cap_pids(parent: str, total: int, root: Path = ROOT) -> Path:
    """Create the parent cgroup (runc would at the first container) and write its cap."""
    directory = pids_dir(parent, root)
    if _unified(root):
        with contextlib.suppress(OSError):  # let children of the root have a pids limit
            (root / "cgroup.subtree_control").write_text("+pids")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pids.max").write_text(str(total))
    if _unified(root):
        with contextlib.suppress(OSError):
            (directory / "cgroup.subtree_control").write_text("+pids")
    return directory


def pids_current(parent: str, root: Path = ROOT) -> int | None:
    """Processes and threads in all sandboxes now (None: no such cgroup)."""
    return read_int(pids_dir(parent, root) / "pids.current")


def pids_max(parent: str, root: Path = ROOT) -> int | None:
    return read_int(pids_dir(parent, root) / "pids.max")


def sandbox_path(parent: str, sandbox_id: str, controller: str, root: Path = ROOT) -> Path:
    """Where one sandbox's ``controller`` files are (v1 hierarchy, or the v2 tree)."""
    v1 = root / controller / parent / sandbox_id
    return v1 if v1.exists() or not (root / parent).exists() else root / parent / sandbox_id


def remove_parent(parent: str, root: Path = ROOT) -> None:
    """Remove an empty parent in every hierarchy (a test server's own parent)."""
    for directory in [*root.glob(f"*/{parent}"), root / parent]:
        with contextlib.suppress(OSError):
            os.rmdir(directory)
