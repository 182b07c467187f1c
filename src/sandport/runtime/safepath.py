"""Open paths of a sandbox from the host without ever leaving the sandbox's root.

Every lookup goes through openat2(2) with ``RESOLVE_IN_ROOT``, relative to the sandbox's
root directory (``/proc/<init>/root``, which carries the container's own mounts): the kernel
treats that directory as ``/`` for ``..`` and for absolute symlinks, so no path, no symlink
planted by code inside the sandbox and no rename race can reach a host file.
``RESOLVE_NO_MAGICLINKS`` refuses ``/proc/*/fd`` style jumps as well.

The server acts as host root, so it also refuses to *open for I/O* anything that is not a
regular file or a directory: a device node made inside the sandbox (``mknod``) is opened by
the sandbox's own processes under its device cgroup, never by us. Files are first opened
``O_PATH`` (no I/O, no open side effects), checked with fstat, then reopened through
``/proc/self/fd``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import posixpath
import stat
import sys

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_OPENAT2 = 437  # the same number on every architecture (added after the unification)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
_RESOLVE = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
RENAME_NOREPLACE = 1
# Kernel pseudo-filesystems whose "files" are interfaces, checked against the caller's
# privileges: read as the server (host root) they would bypass the capabilities the
# sandbox lacks (/proc/kmsg is the host's kernel log and blocks). Never opened for I/O.
KERNEL_FILESYSTEMS = frozenset({
    0x9FA0,      # proc
    0x62656572,  # sysfs
    0x64626720,  # debugfs
    0x73636673,  # securityfs
    0x27E0EB,    # cgroup
    0x63677270,  # cgroup2
    0xCAFE4A11,  # bpf
    0x74726163,  # tracefs
    0x6E736673,  # nsfs
})


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def openat2(dir_fd: int, path: str, flags: int, mode: int = 0, resolve: int = _RESOLVE) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    while True:
        fd = int(_libc.syscall(_SYS_OPENAT2, dir_fd, os.fsencode(path), ctypes.byref(how),
                               ctypes.sizeof(how)))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err not in (errno.EINTR, errno.EAGAIN):  # EAGAIN: a concurrent rename; retry
            raise OSError(err, os.strerror(err), path)


def renameat2(src_fd: int, src: str, dst_fd: int, dst: str, flags: int) -> None:
    if _libc.renameat2(src_fd, os.fsencode(src), dst_fd, os.fsencode(dst), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), dst)


def split(path: str) -> tuple[str, str]:
    """``/a/b/c`` → (``a/b``, ``c``): the parent relative to the root, and the last name.

    Paths are normalised lexically first (``/a/../b`` is ``/b``); the root itself has no
    parent and cannot be the target of a change.
    """
    normal = posixpath.normpath("/" + path).lstrip("/")
    parent, name = posixpath.split(normal)
    if not name:
        raise IsADirectoryError(errno.EISDIR, "the sandbox's root directory cannot be changed")
    return parent or ".", name


def relative(path: str) -> str:
    return posixpath.normpath("/" + path).lstrip("/") or "."


def open_path(root_fd: int, path: str, *, follow: bool = True) -> int:
    """An ``O_PATH`` descriptor of ``path``: usable for stat and as a ``dir_fd``, not for I/O."""
    flags = os.O_PATH | (0 if follow else os.O_NOFOLLOW)
    return openat2(root_fd, relative(path), flags)


def open_dir(root_fd: int, path: str) -> int:
    return openat2(root_fd, relative(path), os.O_PATH | os.O_DIRECTORY)


def reopen_dir(root_fd: int, path: str) -> int:
    """A readable descriptor of the directory ``path`` (for listing it)."""
    return openat2(root_fd, relative(path), os.O_RDONLY | os.O_DIRECTORY)


def filesystem_type(fd: int) -> int:
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type is its first field
    if _libc.fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int.from_bytes(buf.raw[:ctypes.sizeof(ctypes.c_long)], sys.byteorder, signed=True)


def reopen(path_fd: int, flags: int) -> int:
    """Turn an ``O_PATH`` descriptor into a real one, for the same inode; never one on a
    kernel pseudo-filesystem (KERNEL_FILESYSTEMS)."""
    if filesystem_type(path_fd) & 0xFFFFFFFF in KERNEL_FILESYSTEMS:
        raise PermissionError(errno.EPERM, "a kernel interface, not a file")
    return os.open(f"/proc/self/fd/{path_fd}", flags | os.O_CLOEXEC | os.O_NOCTTY)


def open_regular(root_fd: int, path: str, flags: int) -> int:
    """Open an existing regular file for I/O; anything else is refused before any I/O."""
    path_fd = open_path(root_fd, path)
    try:
        mode = os.fstat(path_fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        if not stat.S_ISREG(mode):
            raise PermissionError(errno.EPERM, "not a regular file", path)
        return reopen(path_fd, flags)
    finally:
        os.close(path_fd)


def create_regular(root_fd: int, path: str, flags: int, mode: int) -> tuple[int, bool]:
    """Open ``path`` for writing, creating it if missing: (fd, created).

    An existing file must be regular (checked before it is opened for I/O); a new one is
    made with ``O_EXCL``, which never follows a symlink at the last component: a dangling
    symlink there is followed by hand, its target taken inside the root, as the kernel
    would for a process in the sandbox.
    """
    for _ in range(16):  # symlink hops, or the sandbox racing us on the name
        try:
            return open_regular(root_fd, path, flags), False
        except FileNotFoundError:
            pass
        parent, name = split(path)
        parent_fd = open_dir(root_fd, parent)
        try:
            fd = openat2(parent_fd, name, flags | os.O_CREAT | os.O_EXCL, mode)
            return fd, True
        except FileExistsError:
            try:
                target = os.readlink(name, dir_fd=parent_fd)
            except OSError:
                continue  # not a symlink (any more): look again
            path = posixpath.join("/" + parent, target)
        finally:
            os.close(parent_fd)
    raise OSError(errno.ELOOP, "too many levels of symbolic links", path)


def proc_path(fd: int) -> str:
    """The magic link of ``fd``, for calls that have no ``fd`` form (chmod of O_PATH fds)."""
    return f"/proc/self/fd/{fd}"
