"""Unpack one OCI layer, an untrusted tar stream, into its own directory as an overlayfs diff.

Each layer gets a directory of its own that later becomes one overlayfs lower directory
(``lowerdir=top:...:bottom``), so a layer is written in overlayfs's format rather than
applied over the layers below it: a whiteout ``.wh.NAME`` becomes the character device 0/0
``NAME``, the opaque marker ``.wh..wh..opq`` becomes ``trusted.overlay.opaque=y`` on its
directory. Lower layers are only read (hard links to their files become copies, implicit
parent directories take their metadata); nothing is written in them.

Nothing in a layer can create, write or link outside ``target``: every name is resolved by
openat2(2) with ``RESOLVE_IN_ROOT`` relative to ``target`` (``..`` in a name rejects the
layer; symlinks planted by the layer resolve inside ``target``), the last component is never
followed (``O_EXCL``/``O_NOFOLLOW``, replacing what is there), and a hard link's source is
pinned by a descriptor opened the same way. Device nodes other than whiteouts are skipped,
and so are xattrs other than ``user.*`` and ``security.capability``.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from ...errors import ImageRejected, InsufficientCapacity
from .._files import remove_tree
from ..safepath import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, openat2
from ._layer_stream import LayerStream, Readable, ReadAhead
from ._tar import (
    BLOCKDEV,
    CHARDEV,
    DIRECTORY,
    FIFO,
    HARDLINK,
    REGULAR,
    SYMLINK,
    Entry,
    TarReader,
    quoted,
)

__all__ = ["UnpackLimits", "Unpacked", "unpack_layer"]

log = logging.getLogger("sandport.runtime")

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_RESOLVE = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_PROGRESS_STEP = 1 << 20
_OPEN_DIRS = 64  # directories kept open for the entries that follow them
# Errors of the host, not of the layer: raised as they are.
_HOST_ERRORS = frozenset({errno.EIO, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EROFS})
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})
_XATTR_REFUSED = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL, errno.ERANGE,
                            errno.E2BIG, errno.EPERM, errno.ENOSPC})

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class UnpackLimits:
    max_bytes: int = 64 * 2**30      # uncompressed tar bytes of one layer (and, apart, the
                                     # bytes copied from lower layers for its hard links)
    max_entries: int = 2_000_000


@dataclass(frozen=True, slots=True)
class Unpacked:
    diff_id: str        # "sha256:<hex>" of the uncompressed tar stream (the OCI diff_id)
    size: int           # uncompressed tar bytes
    entries: int


Lowers = Sequence[Path] | Callable[[], Sequence[Path]]


def unpack_layer(source: Readable, target: Path, lowers: Lowers = (),
                 limits: UnpackLimits = UnpackLimits(),
                 progress: Callable[[int], None] | None = None) -> Unpacked:
    """Unpack the layer blob ``source`` (gzip, zstd or plain tar, told by its first bytes,
    read once front to back) into the empty directory ``target``; ``lowers`` are the layers
    below it, nearest first (or a callable that waits for them and gives them, called
    only if an entry needs them). ``progress`` gets the compressed bytes read so far, about
    every MiB. Raises ImageRejected for a hostile, malformed or oversized layer; on any
    error ``target`` is left half written for the caller to delete.
    """
    stream = LayerStream(source, limits.max_bytes)
    chunks = ReadAhead(stream.chunks())
    try:
        reader = TarReader(_reported(chunks, progress))
        with _Layer(target, lowers, limits) as layer:
            while (entry := reader.next_entry()) is not None:
                layer.add(entry, reader)
            layer.finish()
        reader.drain()
    finally:
        chunks.close()
    if progress is not None:
        progress(stream.compressed)
    if layer.dropped_xattrs or layer.skipped_devices:
        log.debug("layer %s: %d xattrs dropped, %d device nodes skipped", stream.diff_id,
                  layer.dropped_xattrs, layer.skipped_devices)
    return Unpacked(stream.diff_id, stream.size, layer.entries)


def _reported(chunks: Iterator[tuple[bytes, int]],
              progress: Callable[[int], None] | None) -> Iterator[bytes]:
    """The chunks, calling ``progress`` on the parser's thread (the caller's)."""
    reported = 0
    for chunk, compressed in chunks:
        if progress is not None and compressed - reported >= _PROGRESS_STEP:
            progress(compressed)
            reported = compressed
        yield chunk


def _parts(name: str, entry: Entry, what: str = "name") -> list[str]:
    """The components of a name inside the layer; a leading "/" counts for nothing."""
    parts = [part for part in name.split("/") if part and part != "."]
    if ".." in parts:
        raise ImageRejected(f"layer entry {quoted(entry.name)} has '..' in its {what}")
    return parts


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _kept_xattr(name: str) -> bool:
    return name.startswith("user.") or name == "security.capability"


class _Layer:
    """The layer directory being written, entry by entry."""

    def __init__(self, target: Path, lowers: Lowers, limits: UnpackLimits) -> None:
        self._dirs: dict[str, int] = {}     # open directories by their path in the layer
        self._stale: list[int] = []         # closed once the entry at hand is done
        self._lower_paths = lowers
        self._lowers_fds: list[int] | None = None  # O_PATH descriptors, opened when needed
        self._root = os.open(target, _DIR)
        self._limits = limits
        self._dir_times: dict[str, int] = {}  # set last: adding entries changes them
        self._copied = 0
        self.entries = 0
        self.dropped_xattrs = 0
        self.skipped_devices = 0

    def __enter__(self) -> _Layer:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._forget()
        for fd in [*self._stale, *(self._lowers_fds or ()), self._root]:
            os.close(fd)
        self._stale = []

    def add(self, entry: Entry, reader: TarReader) -> None:
        self.entries += 1
        if self.entries > self._limits.max_entries:
            raise ImageRejected(
                f"the layer has more than {self._limits.max_entries} entries")
        try:
            self._add(entry, reader)
        except OSError as exc:
            if exc.errno in _NO_ROOM:
                raise InsufficientCapacity("no disk space left to unpack the layer") from exc
            if exc.errno in _HOST_ERRORS:
                raise
            raise ImageRejected(f"layer entry {quoted(entry.name)} cannot be unpacked: "
                                f"{exc.strerror}") from exc
        finally:
            while self._stale:
                os.close(self._stale.pop())

    def _add(self, entry: Entry, reader: TarReader) -> None:
        parts = _parts(entry.name, entry)
        if not parts:
            return self._root_entry(entry)
        path, name = "/".join(parts), parts[-1]
        if entry.kind in (CHARDEV, BLOCKDEV) and not name.startswith(WHITEOUT_PREFIX):
            self.skipped_devices += 1  # never a 0/0 that overlayfs would take for a whiteout
            return None
        parent = self._parent(parts[:-1], entry)
        if name.startswith(WHITEOUT_PREFIX):
            return self._whiteout(parent, name, entry)
        if entry.kind == REGULAR:
            return self._regular(parent, name, entry, reader.copy_data)
        if entry.kind == DIRECTORY:
            return self._directory(parent, name, path, entry)
        if entry.kind == SYMLINK:
            return self._symlink(parent, name, entry)
        if entry.kind == HARDLINK:
            return self._hardlink(parent, name, entry)
        assert entry.kind == FIFO
        return self._fifo(parent, name, entry)

    # -- directories -------------------------------------------------------------------

    def _parent(self, dirs: list[str], entry: Entry) -> int:
        """An open descriptor of the entry's parent directory, made if it is missing."""
        if not dirs:
            return self._root
        key = "/".join(dirs)
        fd = self._dirs.get(key)
        if fd is None:
            try:
                fd = openat2(self._root, key, _DIR, resolve=_RESOLVE)
            except (FileNotFoundError, NotADirectoryError):
                fd = self._make_parents(dirs, entry)
            self._remember(key, fd)
        return fd

    def _make_parents(self, dirs: list[str], entry: Entry) -> int:
        """Walk ``dirs`` from the root, making real directories where names are missing
        (and where a whiteout of this layer stands: its directory is made opaque)."""
        fd = self._root
        try:
            for depth, name in enumerate(dirs, 1):
                path = "/".join(dirs[:depth])
                try:
                    below = openat2(self._root, path, _DIR, resolve=_RESOLVE)
                except FileNotFoundError:
                    if _lstat(fd, name) is not None:
                        raise ImageRejected(f"layer entry {quoted(entry.name)} goes through a "
                                            f"symbolic link that leads nowhere") from None
                    below = self._implicit_dir(fd, name, path, opaque=False)
                except NotADirectoryError:
                    found = _lstat(fd, name)
                    if found is None or not _is_whiteout(found):
                        raise ImageRejected(f"layer entry {quoted(entry.name)} is below "
                                            f"{quoted(path)}, which is not a directory") from None
                    self._remove(fd, name, found)
                    below = self._implicit_dir(fd, name, path, opaque=True)
                if fd != self._root:
                    os.close(fd)
                fd = below
            return fd
        except BaseException:
            if fd != self._root:
                os.close(fd)
            raise

    def _implicit_dir(self, parent: int, name: str, path: str, *, opaque: bool) -> int:
        """A directory the layer needs but has no entry for: as the lower layers have it
        (else root's 0755), so that it does not change the merged directory's metadata."""
        meta = Entry(name=path, kind=DIRECTORY, size=0, mode=0o755, uid=0, gid=0, mtime_ns=0)
        like = self._in_lowers(path)
        if like is not None:
            lower_fd, st = like
            try:
                if stat.S_ISDIR(st.st_mode):
                    meta = _meta_of(st, path, _xattrs_of(f"/proc/self/fd/{lower_fd}"))
                    self._dir_times[path] = st.st_mtime_ns
            finally:
                os.close(lower_fd)
        os.mkdir(name, 0o700, dir_fd=parent)
        fd = os.open(name, _DIR | os.O_NOFOLLOW, dir_fd=parent)
        try:
            self._set_inode(fd, meta, times=False)
            if opaque:
                os.setxattr(fd, OPAQUE_XATTR, b"y")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _directory(self, parent: int, name: str, path: str, entry: Entry) -> None:
        opaque = False
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            found = _lstat(parent, name)
            if found is None or not stat.S_ISDIR(found.st_mode):
                # a directory over this layer's whiteout still hides the lower layers' one
                opaque = found is not None and _is_whiteout(found)
                self._remove(parent, name, found)
                os.mkdir(name, 0o700, dir_fd=parent)
        fd = os.open(name, _DIR | os.O_NOFOLLOW, dir_fd=parent)
        self._remember(path, fd)  # most likely the parent of the entries that follow
        self._set_inode(fd, entry, times=False)
        if opaque:
            os.setxattr(fd, OPAQUE_XATTR, b"y")
        self._dir_times[path] = entry.mtime_ns

    def _root_entry(self, entry: Entry) -> None:
        if entry.kind != DIRECTORY:
            raise ImageRejected(f"layer entry {quoted(entry.name)} names the layer's root "
                                "but is not a directory")
        self._set_inode(self._root, entry, times=False)
        self._dir_times[""] = entry.mtime_ns

    def _remember(self, key: str, fd: int) -> None:
        if key in self._dirs:
            self._stale.append(self._dirs.pop(key))
        self._dirs[key] = fd
        if len(self._dirs) > _OPEN_DIRS:
            self._stale.append(self._dirs.pop(next(iter(self._dirs))))

    def _forget(self) -> None:
        """Drop every open directory: after a removal a path may lead elsewhere."""
        self._stale.extend(self._dirs.values())
        self._dirs.clear()

    def finish(self) -> None:
        """Directory times, now that nothing more is added to them."""
        for path, mtime_ns in self._dir_times.items():
            if not path:
                os.utime(self._root, ns=(mtime_ns, mtime_ns))
                continue
            try:
                fd = openat2(self._root, path, _DIR | os.O_NOFOLLOW, resolve=_RESOLVE)
            except OSError:
                continue  # replaced by a later entry that is not a directory
            try:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            finally:
                os.close(fd)

    # -- other entries -----------------------------------------------------------------

    def _replacing(self, parent: int, name: str, make: Callable[[], T]) -> T:
        """``make()`` the entry; if the name is taken, remove what is there and retry."""
        try:
            return make()
        except FileExistsError:
            self._remove(parent, name, _lstat(parent, name))
            return make()

    def _remove(self, parent: int, name: str, found: os.stat_result | None) -> None:
        if found is None:
            return
        self._forget()
        if stat.S_ISDIR(found.st_mode):
            remove_tree(name, dir_fd=parent)  # fd-based: never follows a symlink
        else:
            os.unlink(name, dir_fd=parent)

    def _regular(self, parent: int, name: str, meta: Entry, fill: Callable[[int], None]) -> None:
        fd = self._replacing(parent, name, lambda: os.open(name, _CREATE, 0o600, dir_fd=parent))
        try:
            fill(fd)
            self._set_inode(fd, meta)  # after the data: a write clears setuid and caps
        finally:
            os.close(fd)

    def _symlink(self, parent: int, name: str, meta: Entry) -> None:
        self._replacing(parent, name, lambda: os.symlink(meta.linkname, name, dir_fd=parent))
        self._set_name(parent, name, meta, mode=False)  # a symlink's mode means nothing

    def _fifo(self, parent: int, name: str, meta: Entry) -> None:
        self._replacing(parent, name, lambda: os.mkfifo(name, 0o600, dir_fd=parent))
        self._set_name(parent, name, meta, mode=True)

    def _whiteout(self, parent: int, name: str, entry: Entry) -> None:
        if name == OPAQUE_MARKER:
            os.setxattr(parent, OPAQUE_XATTR, b"y")
            return
        hidden = name[len(WHITEOUT_PREFIX):]
        if hidden.startswith(WHITEOUT_PREFIX):
            return  # other markers of the whiteout namespace mean nothing to overlayfs
        if hidden in ("", ".", ".."):
            raise ImageRejected(f"layer entry {quoted(entry.name)} is a whiteout of nothing")
        found = _lstat(parent, hidden)
        if found is None:
            os.mknod(hidden, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent)
        elif stat.S_ISDIR(found.st_mode):
            # A whiteout hides lower layers only: this layer's own directory stays,
            # without what the layers below have in it.
            fd = os.open(hidden, _DIR | os.O_NOFOLLOW, dir_fd=parent)
            try:
                os.setxattr(fd, OPAQUE_XATTR, b"y")
            finally:
                os.close(fd)
        # anything else of this layer's stays as it is, and hides the lower one already

    def _hardlink(self, parent: int, name: str, entry: Entry) -> None:
        source = "/".join(_parts(entry.linkname, entry, "link target"))
        if not source:
            raise ImageRejected(f"layer entry {quoted(entry.name)} is a hard link to nothing")
        try:
            pinned = openat2(self._root, source, os.O_PATH | os.O_NOFOLLOW, resolve=_RESOLVE)
        except (FileNotFoundError, NotADirectoryError):
            return self._copy_from_lowers(parent, name, source, entry)
        try:
            st = os.fstat(pinned)
            if stat.S_ISDIR(st.st_mode) or _is_whiteout(st):
                what = "a directory" if stat.S_ISDIR(st.st_mode) else "a deleted file"
                raise ImageRejected(f"layer entry {quoted(entry.name)} is a hard link to {what}")
            found = _lstat(parent, name)
            if found is not None and os.path.samestat(found, st):
                return None
            self._remove(parent, name, found)
            # through the pinned descriptor: what the link gets is what was checked
            os.link(f"/proc/self/fd/{pinned}", name, dst_dir_fd=parent, follow_symlinks=True)
        finally:
            os.close(pinned)
        return None

    def _copy_from_lowers(self, parent: int, name: str, source: str, entry: Entry) -> None:
        """A hard link to a file of a lower layer: a layer directory cannot link into
        another, so the file is copied (data, owner, mode, xattrs, times)."""
        found = self._in_lowers(source)
        if found is None:
            raise ImageRejected(f"layer entry {quoted(entry.name)} is a hard link to "
                                f"{quoted(source)}, which is in no layer")
        fd, st = found
        try:
            kind = stat.S_IFMT(st.st_mode)
            if kind == stat.S_IFREG:
                self._copied += st.st_size
                if self._copied > self._limits.max_bytes:
                    raise ImageRejected("the layer's hard links to lower layers copy more than "
                                        f"{self._limits.max_bytes} bytes")
                src = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
                try:
                    meta = _meta_of(st, source, _xattrs_of(src))
                    self._regular(parent, name, meta, lambda dst: _copy_data(src, dst))
                finally:
                    os.close(src)
            elif kind == stat.S_IFLNK:
                meta = replace(_meta_of(st, source, {}), linkname=os.readlink("", dir_fd=fd))
                self._symlink(parent, name, meta)
            elif kind == stat.S_IFIFO:
                self._fifo(parent, name, _meta_of(st, source, {}))
            else:
                raise ImageRejected(f"layer entry {quoted(entry.name)} is a hard link to "
                                    f"{quoted(source)}, which is not a file")
        finally:
            os.close(fd)

    def _lowers(self) -> list[int]:
        """The lower layers, opened at the first lookup: given as a callable, they are
        waited for only then (a layer unpacks beside the ones below it, and few entries
        need them: a hard link to a lower file, a parent directory with no entry)."""
        if self._lowers_fds is None:
            paths = self._lower_paths() if callable(self._lower_paths) else self._lower_paths
            self._lowers_fds = []
            for lower in paths:
                self._lowers_fds.append(
                    os.open(lower, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        return self._lowers_fds

    def _in_lowers(self, path: str) -> tuple[int, os.stat_result] | None:
        """An O_PATH descriptor of ``path`` in the nearest lower layer that has it, unless a
        nearer one whites it out; each lookup stays inside its own layer."""
        for lower in self._lowers():
            try:
                fd = openat2(lower, path, os.O_PATH | os.O_NOFOLLOW, resolve=_RESOLVE)
            except (FileNotFoundError, NotADirectoryError):
                continue
            st = os.fstat(fd)
            if _is_whiteout(st):
                os.close(fd)
                return None
            return fd, st
        return None

    # -- metadata ----------------------------------------------------------------------

    def _set_inode(self, fd: int, meta: Entry, *, times: bool = True) -> None:
        """Owner, then mode (chown clears setuid), then xattrs (chown clears
        security.capability), then times, on an open file or directory."""
        os.fchown(fd, meta.uid, meta.gid)
        os.fchmod(fd, meta.mode)
        if meta.xattrs:
            self._set_xattrs(fd, meta.xattrs)
        if times:
            os.utime(fd, ns=(meta.mtime_ns, meta.mtime_ns))

    def _set_name(self, parent: int, name: str, meta: Entry, *, mode: bool) -> None:
        """Owner, mode and times of a symlink or fifo just made, by name (no descriptor of
        theirs can be opened without side effects)."""
        os.chown(name, meta.uid, meta.gid, dir_fd=parent, follow_symlinks=False)
        if mode:
            os.chmod(name, meta.mode, dir_fd=parent)  # a fifo: nothing to follow
        os.utime(name, ns=(meta.mtime_ns, meta.mtime_ns), dir_fd=parent,
                 follow_symlinks=False)
        self.dropped_xattrs += len(meta.xattrs)  # user.* xattrs are for files and dirs only

    def _set_xattrs(self, fd: int, xattrs: dict[str, bytes]) -> None:
        for key, value in xattrs.items():
            if not _kept_xattr(key):
                self.dropped_xattrs += 1
                continue
            try:
                os.setxattr(fd, key, value)
            except OSError as exc:
                if exc.errno not in _XATTR_REFUSED:
                    raise
                self.dropped_xattrs += 1


def _meta_of(st: os.stat_result, path: str, xattrs: dict[str, bytes]) -> Entry:
    """What a lower layer's file says of itself, as the entry that would have made it."""
    return Entry(name=path, kind=REGULAR, size=st.st_size, mode=stat.S_IMODE(st.st_mode),
                 uid=st.st_uid, gid=st.st_gid, mtime_ns=st.st_mtime_ns, xattrs=xattrs)


def _xattrs_of(target: int | str) -> dict[str, bytes]:
    """The xattrs of a lower layer's file that a layer may carry."""
    return {key: os.getxattr(target, key) for key in os.listxattr(target) if _kept_xattr(key)}


def _copy_data(src: int, dst: int) -> None:
    try:
        while os.copy_file_range(src, dst, 1 << 30):
            pass
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        while data := os.read(src, 1 << 20):
            view = memoryview(data)
            while view:
                view = view[os.write(dst, view):]
