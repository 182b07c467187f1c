"""Watch a directory of a sandbox for changes, from the host, with inotify(7).

The directory is found with safepath (inside the sandbox's root) and watched through its
descriptor, so a watch never covers a host directory. Changes made by the sandbox's own
processes go through the same filesystem (its overlay, its tmpfs) and so raise events.
Recursive watches add every subdirectory, including ones created later. A directory that
appears is watched first and then listed, and what it already holds is reported as CREATE:
a file made in it before its watch was in place is not lost (it may be reported twice).

Events are named like fsnotify's: CREATE, WRITE, REMOVE, RENAME, CHMOD.

Every watch of the server shares ONE inotify instance (``Inotify``), opened when the
server starts: instances are a per-user count (``fs.inotify.max_user_instances``, 128 by
default) and root in a sandbox is the server's own user, so a sandbox that takes them all
must not leave the server without one. Events are handed to the watches by watch
descriptor; the kernel gives one descriptor per directory per instance, so two watches
over the same directory share it (each with its own path for it).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import posixpath
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .safepath import open_dir

_libc = ctypes.CDLL(None, use_errno=True)
log = logging.getLogger("sandport.runtime")

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_UNMOUNT, IN_Q_OVERFLOW = 0x400, 0x800, 0x2000, 0x4000
IN_IGNORED, IN_ONLYDIR, IN_ISDIR = 0x8000, 0x1000000, 0x40000000
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
MASK = (IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
        | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
_EVENT = struct.Struct("iIII")
# Per watch: the host's fs.inotify.max_user_watches is shared by every sandbox (and root),
# and directories that appear are walked on the event loop, a bounded number per event.
MAX_DIRS = 2048
WALK_BUDGET = 256
MAX_FOUND = 4096  # entries of a new directory reported as CREATE per event; then OVERFLOW
READS_PER_WAKE = 16  # 64 KiB reads of events per readiness callback, then the loop goes on


@dataclass(frozen=True, slots=True)
class Change:
    path: str  # inside the sandbox
    op: str


def op_name(mask: int) -> str | None:
    """The fsnotify name of one inotify event, or None for events we do not report."""
    if mask & (IN_CREATE | IN_MOVED_TO):
        return "CREATE"
    if mask & IN_DELETE:
        return "REMOVE"
    if mask & IN_MOVED_FROM:
        return "RENAME"
    if mask & IN_MODIFY:
        return "WRITE"
    if mask & IN_ATTRIB:
        return "CHMOD"
    return None


class Inotify:
    """The server's one inotify instance, shared by all its ``DirectoryWatch``es.

    Watches are added from worker threads (a watch is opened with the identity of the
    sandbox user asking) and events are read on the event loop: one lock covers the
    descriptor table, held from ``inotify_add_watch`` until the new descriptor is known,
    so no event is read for a descriptor that has no owner yet.
    """

    def __init__(self) -> None:
        self._fd = -1
        self._lock = threading.RLock()
        self._owners: dict[int, dict[int, DirectoryWatch]] = {}  # wd → watches by id()
        try:
            self.open()
        except OSError as exc:  # tried again at the first watch
            log.warning("no inotify instance for file watches yet: %s", exc.strerror)

    def open(self) -> int:
        with self._lock:
            if self._fd < 0:
                fd = int(_libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
                if fd < 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
                self._fd = fd
            return self._fd

    def fileno(self) -> int:
        return self._fd

    @property
    def descriptors(self) -> int:
        """Directories watched (once each, however many watches cover them)."""
        return len(self._owners)

    def add(self, watch: DirectoryWatch, dir_fd: int, path: str) -> None:
        fd = self.open()
        with self._lock:
            wd = _libc.inotify_add_watch(fd, f"/proc/self/fd/{dir_fd}".encode(), MASK)
            if wd < 0:
                err = ctypes.get_errno()
                if err in (errno.ENOENT, errno.ENOTDIR):
                    return
                raise OSError(err, os.strerror(err), path)
            self._owners.setdefault(wd, {})[id(watch)] = watch
            watch._dirs[wd] = path

    def remove(self, watch: DirectoryWatch) -> None:
        with self._lock:
            for wd in list(watch._dirs):
                owners = self._owners.get(wd, {})
                owners.pop(id(watch), None)
                if not owners:
                    self._owners.pop(wd, None)
                    _libc.inotify_rm_watch(self._fd, wd)  # EINVAL if already gone
            watch._dirs.clear()

    def read(self) -> None:
        """Read the events waiting and hand each to the watches of its descriptor."""
        touched: dict[int, DirectoryWatch] = {}
        for _ in range(READS_PER_WAKE):
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                break
            with self._lock:
                self._dispatch(data, touched)
            if len(data) < 1 << 15:
                break
        for watch in touched.values():
            if watch.on_change is not None:
                watch.on_change()

    def _dispatch(self, data: bytes, touched: dict[int, DirectoryWatch]) -> None:
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            raw = data[offset + _EVENT.size: offset + _EVENT.size + length]
            offset += _EVENT.size + length
            name = raw.split(b"\0", 1)[0].decode(errors="replace")
            if mask & IN_Q_OVERFLOW:  # the shared queue overflowed: every watch may miss
                watches = [w for owners in self._owners.values() for w in owners.values()]
            else:
                watches = list(self._owners.get(wd, {}).values())
            if mask & IN_IGNORED:
                self._owners.pop(wd, None)
            for watch in watches:
                watch._one(wd, mask, name)
                touched[id(watch)] = watch


class DirectoryWatch:
    """A directory (and, if recursive, its subdirectories) watched through the server's
    shared ``Inotify``.

    Changes collect until ``read()`` takes them; ``on_change`` (when set) is called on the
    event loop after new ones came. ``ended`` turns true when the watched directory itself
    is removed, moved or unmounted.
    """

    def __init__(self, inotify: Inotify, root_fd: int, path: str, recursive: bool) -> None:
        self.path = "/" + posixpath.normpath("/" + path).lstrip("/")
        self.recursive = recursive
        self.ended = False
        self.on_change: Callable[[], None] | None = None
        self._inotify = inotify
        self._dirs: dict[int, str] = {}
        self._pending: list[Change] = []
        self._root = os.dup(root_fd)  # new subdirectories are found from the root again
        try:
            dir_fd = open_dir(root_fd, self.path)
            try:
                self._add_tree(dir_fd, self.path, depth=64 if recursive else 0)
            finally:
                os.close(dir_fd)
        except BaseException:
            self.close()
            raise

    @property
    def watched(self) -> int:
        """How many directories this watch holds an inotify watch on."""
        return len(self._dirs)

    def close(self) -> None:
        if self._root >= 0:
            self._inotify.remove(self)
            os.close(self._root)
            self._root = -1

    def _add(self, dir_fd: int, path: str) -> None:
        if len(self._dirs) < MAX_DIRS:
            self._inotify.add(self, dir_fd, path)

    def _add_tree(self, dir_fd: int, path: str, depth: int, budget: list[int] | None = None,
                  found: list[Change] | None = None) -> bool:
        """Watch ``path`` and its subdirectories; False if the walk was cut short (the
        watch's MAX_DIRS, or ``budget``: directories this walk may still add). Entries
        listed after their directory's watch is in place go to ``found`` as CREATE."""
        if len(self._dirs) >= MAX_DIRS or (budget is not None and budget[0] <= 0):
            return False
        if budget is not None:
            budget[0] -= 1
        self._add(dir_fd, path)
        if depth <= 0:
            return True
        try:
            names = os.listdir(_readable(dir_fd))
        except OSError:
            return True
        complete = True
        for name in names:
            if found is not None:
                if len(found) >= MAX_FOUND:
                    return False
                found.append(Change(posixpath.join(path, name), "CREATE"))
            if len(self._dirs) >= MAX_DIRS or (budget is not None and budget[0] <= 0):
                return False
            try:
                sub = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=dir_fd)
            except OSError:
                continue  # not a directory, a symlink, or gone
            try:
                complete &= self._add_tree(sub, posixpath.join(path, name), depth - 1, budget,
                                           found)
            finally:
                os.close(sub)
        return complete

    def read(self) -> list[Change]:
        """The changes seen since the last call."""
        with self._inotify._lock:
            changes, self._pending = self._pending, []
        return changes

    def _one(self, wd: int, mask: int, name: str) -> None:
        changes = self._pending
        base = self._dirs.get(wd)
        if mask & IN_Q_OVERFLOW:
            changes.append(Change(self.path, "OVERFLOW"))
            return
        if base is None:
            return
        if mask & IN_IGNORED:
            del self._dirs[wd]
            if base == self.path:
                self.ended = True
            return
        if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT):
            if base == self.path:
                self.ended = True
            return
        path = posixpath.join(base, name) if name else base
        op = op_name(mask)
        if op is not None:
            changes.append(Change(path, op))
        if self.recursive and mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
            if not self._add_new_dir(path, changes):
                changes.append(Change(path, "OVERFLOW"))  # not all of it is watched

    def _add_new_dir(self, path: str, changes: list[Change]) -> bool:
        """A directory appeared: watch it (and what it already holds, if moved in, or made
        before its watch was in place: reported in ``changes``), at most WALK_BUDGET
        directories of it; False if some are left unwatched."""
        try:
            sub = open_dir(self._root, path)
        except OSError:
            return True  # gone again, or not a directory any more
        try:
            return self._add_tree(sub, path, depth=64, budget=[WALK_BUDGET], found=changes)
        finally:
            os.close(sub)


def _readable(path_fd: int) -> int | str:
    """listdir needs a real descriptor or a path; an O_PATH one is reopened by its link."""
    return f"/proc/self/fd/{path_fd}"

