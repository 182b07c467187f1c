"""mount(2) and umount2(2) through libc: an overlay mount costs a syscall, not a process.

An overlay of many layers may not fit mount(2)'s one page of options (about 40 layer paths
here); then it is built with the new mount API (fsopen/fsconfig ``lowerdir+``, Linux 6.8),
one layer per call, up to overlayfs's own limit of 500.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2


_OPTIONS_MAX = 4000  # a page, less a margin
# x86_64 and arm64 (asm-generic) agree on these numbers.
_SYS_FSOPEN, _SYS_FSCONFIG, _SYS_FSMOUNT, _SYS_MOVE_MOUNT = 430, 431, 432, 429
_FSCONFIG_SET_STRING, _FSCONFIG_CMD_CREATE = 1, 6
_FSOPEN_CLOEXEC, _FSMOUNT_CLOEXEC = 1, 1
_MOVE_MOUNT_F_EMPTY_PATH = 4
_AT_FDCWD = -100


_FIXED = "xino=on,redirect_dir=off,metacopy=off"


def mount_overlay(lowers: Sequence[Path], upper: Path, work: Path, target: Path) -> None:
    """Mount an overlay of ``lowers`` (top first) with ``upper``/``work`` at ``target``."""
    if not lowers:
        raise ValueError("an overlay needs at least one lower directory")
    for path in (*lowers, upper, work):
        if any(c in str(path) for c in ",:\\"):
            raise ValueError(f"overlay paths cannot hold , : or \\: {path}")
    lower = ":".join(str(p) for p in lowers)
    # xino: one st_dev for every file even when the upper is on another filesystem than
    # the layers (a sandbox's own disk, runtime/disks.py), as when all share one.
    # redirect_dir and metacopy off (whatever the host's module defaults): an upper
    # directory then holds whole files and directories, so it is a layer of its own
    # (snapshots, images/layerwrite.py) and not a set of pointers into the ones below.
    options = (f"lowerdir={lower},upperdir={upper},workdir={work},{_FIXED}").encode()
    if len(options) > _OPTIONS_MAX:
        _mount_overlay_fsconfig(lowers, upper, work, target)
        return
    if _libc.mount(b"overlay", str(target).encode(), b"overlay", 0, options) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount overlay: {os.strerror(err)}")


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount overlay ({what}): {os.strerror(err)}")
    return result


def _mount_overlay_fsconfig(lowers: Sequence[Path], upper: Path, work: Path,
                            target: Path) -> None:
    syscall = _libc.syscall
    fs = _check(syscall(_SYS_FSOPEN, b"overlay", _FSOPEN_CLOEXEC), "fsopen")
    try:
        fixed = [tuple(o.split("=", 1)) for o in _FIXED.split(",")]
        settings: list[tuple[str, str | Path]] = [
            *(("lowerdir+", p) for p in lowers), ("upperdir", upper), ("workdir", work),
            *((k, v) for k, v in fixed)]
        for key, value in settings:
            _check(syscall(_SYS_FSCONFIG, fs, _FSCONFIG_SET_STRING, key.encode(),
                           str(value).encode(), 0), f"{key} {value}")
        _check(syscall(_SYS_FSCONFIG, fs, _FSCONFIG_CMD_CREATE, None, None, 0), "create")
        mnt = _check(syscall(_SYS_FSMOUNT, fs, _FSMOUNT_CLOEXEC, 0), "fsmount")
        try:
            _check(syscall(_SYS_MOVE_MOUNT, mnt, b"", _AT_FDCWD, str(target).encode(),
                           _MOVE_MOUNT_F_EMPTY_PATH), "move_mount")
        finally:
            os.close(mnt)
    finally:
        os.close(fs)


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
