"""mount(2) and umount2(2) through libc: an overlay mount costs a syscall, not a process."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2


def mount_overlay(lower: Path, upper: Path, work: Path, target: Path) -> None:
    options = f"lowerdir={lower},upperdir={upper},workdir={work}".encode()
    if _libc.mount(b"overlay", str(target).encode(), b"overlay", 0, options) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount overlay: {os.strerror(err)}")


def unmount(target: Path) -> None:
    """Detach ``target`` if it is mounted (repeat-safe)."""
    while is_mounted(target):
        if _libc.umount2(str(target).encode(), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"umount: {os.strerror(err)}")


def is_mounted(target: Path) -> bool:
    wanted = str(target)
    with open("/proc/self/mountinfo") as fh:
        return any(line.split()[4] == wanted for line in fh)


def unmount_below(root: Path) -> int:
    """Detach every mount at or under ``root``, deepest first (what a CRIU killed half way
    leaves: its root and cgroup yard mounts); how many were detached."""
    prefix = str(root).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as fh:
        points = {line.split()[4] for line in fh}
    below = sorted((p for p in points if p == prefix[:-1] or p.startswith(prefix)),
                   key=len, reverse=True)
    for point in below:
        _libc.umount2(point.encode(), MNT_DETACH)  # EINVAL once a parent took it along
    return len(below)
