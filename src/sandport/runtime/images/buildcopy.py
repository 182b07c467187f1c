"""COPY and ADD of a Dockerfile build, done on the host between directory descriptors.

A source root is the build context (a directory this server unpacked) or an earlier stage
(an overlay of its layers); the destination root is an overlay of the stage being built,
whose upper directory becomes the step's layer. Both are opened by the caller; every path
in here is taken inside them:

* Source patterns are cleaned as docker cleans them (``../../etc/passwd`` is the context's
  ``etc/passwd``) and matched a name at a time (``*``, ``?``, ``[...]``). A symlink named
  as a source is followed, but inside its root (openat2 ``RESOLVE_IN_ROOT``): one pointing
  out of the context names a file of the context, or nothing.
* Inside a copied directory nothing is followed: symlinks are copied as symlinks, every
  path is opened with ``RESOLVE_NO_SYMLINKS`` below the directory copied.
* The destination is resolved inside the image being built, symlinks included (``/bin``
  may be a link to ``usr/bin``), as a process in it would resolve it; missing directories
  are made, root's and 0755.

Owners are 0:0 (docker's default) or ``--chown``'s; modes are kept (or ``--chmod``'s),
and so are files' modification times. Device nodes and sockets are not copied.
"""

from __future__ import annotations

import bz2
import errno
import fnmatch
import hashlib
import lzma
import os
import posixpath
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, cast

from ...errors import PayloadTooLarge, SandportError, ValidationFailed
from .._files import remove_tree
from ..safepath import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, openat2, relative
from ._dockerfile_words import archive_kind
from .unpack import UnpackLimits, unpack_layer

RESOLVE_NO_SYMLINKS = 0x04
_INSIDE = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
_BELOW = _INSIDE | RESOLVE_NO_SYMLINKS
_DIR = os.O_RDONLY | os.O_DIRECTORY
_MAGIC = frozenset("*?[")
CHUNK = 1 << 20

__all__ = ["CopyBudget", "copy_sources", "find_sources", "sources_digest"]


@dataclass(slots=True)
class CopyBudget:
    """Bytes a step may still write (the image size cap)."""

    left: int

    def take(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise PayloadTooLarge("the files copied are larger than this server's image cap")


def clean(pattern: str) -> str:
    """A source path as docker takes it: relative to its root, ``..`` unable to leave it."""
    return posixpath.normpath("/" + pattern).lstrip("/")


def find_sources(root_fd: int, patterns: tuple[str, ...], where: str) -> list[str]:
    """The paths (relative to the root, "" for the root itself) that ``patterns`` name; a
    pattern naming nothing is an error, as in docker. ``where``: "the build context"."""
    found: list[str] = []
    for pattern in patterns:
        matches = _expand(root_fd, clean(pattern))
        if not matches:
            raise ValidationFailed(f"{pattern!r} names nothing in {where}")
        found += [m for m in matches if m not in found]
    return found


def has_wildcard(pattern: str) -> bool:
    return bool(_MAGIC & set(pattern))


def _expand(root_fd: int, path: str) -> list[str]:
    if not path or not has_wildcard(path):
        return [path] if _exists(root_fd, path) else []
    done: list[str] = [""]
    for part in path.split("/"):
        following: list[str] = []
        for prefix in done:
            if not has_wildcard(part):
                candidate = posixpath.join(prefix, part)
                if _exists(root_fd, candidate):
                    following.append(candidate)
                continue
            following += [posixpath.join(prefix, name) for name in _names(root_fd, prefix)
                          if fnmatch.fnmatchcase(name, part.replace("[^", "[!"))]
        done = following
    return sorted(done)


def _exists(root_fd: int, path: str) -> bool:
    try:
        os.close(openat2(root_fd, path or ".", os.O_PATH, resolve=_INSIDE))
    except OSError:
        return False
    return True


def _names(root_fd: int, path: str) -> list[str]:
    try:
        fd = openat2(root_fd, path or ".", _DIR, resolve=_INSIDE)
    except OSError:
        return []
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)


# -- the cache key's part: what the sources hold ----------------------------------------

def sources_digest(root_fd: int, paths: list[str]) -> str:
    """A digest of everything the sources hold: names, types, modes, contents, link
    targets (not owners, which a copy sets, nor times)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(b"source\0" + os.fsencode(path) + b"\0")
        for rel, st, open_it, link in _walk(root_fd, path):
            kind, bits = stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode)
            digest.update(os.fsencode(rel) + f"\0{kind:o}\0{bits:o}\0".encode())
            if stat.S_ISREG(st.st_mode):
                with os.fdopen(open_it(), "rb") as fh:
                    while chunk := fh.read(CHUNK):
                        digest.update(chunk)
            digest.update(os.fsencode(link) + b"\0")
    return "sha256:" + digest.hexdigest()


def _walk(root_fd: int, top: str
          ) -> Iterator[tuple[str, os.stat_result, Callable[[], int], str]]:
    """Every entry of source ``top`` (itself first, as ""), in name order, without
    recursion: (path below ``top``, lstat, a way to open it for reading, link target)."""
    fd = openat2(root_fd, top or ".", os.O_PATH, resolve=_INSIDE)  # the source: followed
    try:
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode):
            yield "", st, lambda: _reopen(fd), ""
            return
        base = os.open(f"/proc/self/fd/{fd}", _DIR | os.O_CLOEXEC)
    finally:
        os.close(fd)
    try:
        pending = [""]
        while pending:
            rel = pending.pop()
            with _opened(openat2(base, rel or ".", _DIR, resolve=_BELOW)) as dir_fd:
                for name in sorted(os.listdir(dir_fd)):
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        pending.append(posixpath.join(rel, name))
                    link = os.readlink(name, dir_fd=dir_fd) if stat.S_ISLNK(st.st_mode) \
                        else ""
                    yield posixpath.join(rel, name), st, _opener(dir_fd, name), link
    finally:
        os.close(base)


def _reopen(path_fd: int) -> int:
    return os.open(f"/proc/self/fd/{path_fd}", os.O_RDONLY | os.O_CLOEXEC)


def _opener(dir_fd: int, name: str) -> Callable[[], int]:
    return lambda: os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)


# -- copying ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Owner:
    uid: int
    gid: int


def copy_sources(src_root: int, paths: list[str], dst_root: int, dest: str, *,
                 into_dir: bool, owner: Owner | None, mode: int | None, extract: bool,
                 staging: Path, budget: CopyBudget) -> None:
    """Copy ``paths`` of ``src_root`` to ``dest`` (absolute, in ``dst_root``): a directory's
    contents into ``dest``; a file into ``dest`` if it is (or is to be) a directory, else
    as ``dest``. ``owner`` None keeps the source's (what ADD does with an archive's
    entries); ``extract``: local tar archives are unpacked into ``dest`` (ADD)."""
    chosen = owner or Owner(0, 0)
    for path in paths:
        fd = openat2(src_root, path or ".", os.O_PATH, resolve=_INSIDE)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                with _opened(os.open(f"/proc/self/fd/{fd}", _DIR | os.O_CLOEXEC)) as src_dir, \
                        _opened(_make_dirs(dst_root, dest, chosen)) as dst_dir:
                    _copy_tree(src_dir, dst_dir, chosen, mode, budget)
                continue
            if not stat.S_ISREG(st.st_mode):
                raise ValidationFailed(f"{path!r} is not a file or a directory")
            if extract and _extract(fd, dst_root, dest, owner, staging, budget):
                continue
            name = posixpath.basename(path)
            target = posixpath.join(dest, name) if into_dir or _is_dir(dst_root, dest) \
                else dest
            parent, leaf = posixpath.split(posixpath.normpath("/" + target))
            if not leaf:
                raise ValidationFailed("a file cannot be copied over the image's root")
            with _opened(_make_dirs(dst_root, parent, Owner(0, 0))) as dst_dir, \
                    _opened(_reopen(fd)) as src_fd:
                _copy_file(src_fd, st, dst_dir, leaf, owner or Owner(0, 0), mode, budget)
        finally:
            os.close(fd)


class _opened:
    """A descriptor closed at the end of a ``with``."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _is_dir(root: int, path: str) -> bool:
    try:
        os.close(openat2(root, relative(path), _DIR, resolve=_INSIDE))
    except OSError:
        return False
    return True


def _make_dirs(root: int, path: str, owner: Owner) -> int:
    """A descriptor of directory ``path`` in ``root`` (resolved inside it), made with its
    missing parents if need be: the last one owned by ``owner``, the others by root. A
    dangling symlink on the way is made as what it points to (as ``mkdir -p`` through
    it would), at most ``MAX_HOPS`` of them; a loop or a file on the way is an error
    naming the path in the image."""
    wanted = relative(path)
    for _ in range(MAX_HOPS):
        try:
            return openat2(root, wanted, _DIR, resolve=_INSIDE)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ValidationFailed(f"'/{wanted}' cannot be a directory in the image: "
                                   f"{exc.strerror}") from None
        redirected = _make_missing(root, wanted, owner)
        if redirected is None:
            continue
        wanted = redirected
    raise ValidationFailed(f"'{path}' goes through too many symbolic links in the image")


MAX_HOPS = 40


def _make_missing(root: int, rel: str, owner: Owner) -> str | None:
    """Make the missing directories of ``rel``; None when made, else the path to try
    instead (a dangling symlink on the way points elsewhere)."""
    parts = rel.split("/")
    for depth in range(1, len(parts) + 1):
        here = "/".join(parts[:depth])
        try:
            os.close(openat2(root, here, _DIR, resolve=_INSIDE))
            continue
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ValidationFailed(f"'/{here}' cannot be a directory in the image: "
                                   f"{exc.strerror}") from None
        with _opened(openat2(root, "/".join(parts[:depth - 1]) or ".", _DIR,
                             resolve=_INSIDE)) as parent:
            name = parts[depth - 1]
            try:
                os.mkdir(name, 0o755, dir_fd=parent)
            except FileExistsError:  # a dangling symlink: make what it points to instead
                target = os.readlink(name, dir_fd=parent)
                return relative(posixpath.join("/" + "/".join(parts[:depth - 1]), target,
                                               *parts[depth:]))
            with _opened(openat2(parent, name, _DIR | os.O_NOFOLLOW,
                                 resolve=_BELOW)) as made:
                os.fchmod(made, 0o755)
                if depth == len(parts):
                    os.fchown(made, owner.uid, owner.gid)
    return None


def _copy_tree(src_dir: int, dst_dir: int, owner: Owner | None, mode: int | None,
               budget: CopyBudget) -> None:
    """The contents of ``src_dir`` into ``dst_dir``, without recursion and following no
    symlink (both are opened anew for each directory, below the two given)."""
    pending = [""]
    while pending:
        rel = pending.pop()
        with _opened(openat2(src_dir, rel or ".", _DIR, resolve=_BELOW)) as s, \
                _opened(openat2(dst_dir, rel or ".", _DIR, resolve=_BELOW)) as d:
            for name in sorted(os.listdir(s)):
                st = os.stat(name, dir_fd=s, follow_symlinks=False)
                who = owner or Owner(st.st_uid, st.st_gid)
                if stat.S_ISDIR(st.st_mode):
                    _make_child_dir(d, name, st, who, mode)
                    pending.append(posixpath.join(rel, name))
                elif stat.S_ISREG(st.st_mode):
                    with _opened(os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                         dir_fd=s)) as src_fd:
                        _copy_file(src_fd, st, d, name, who, mode, budget)
                elif stat.S_ISLNK(st.st_mode):
                    target = os.readlink(name, dir_fd=s)
                    budget.take(len(target))
                    _clear(d, name)
                    os.symlink(target, name, dir_fd=d)
                    os.chown(name, who.uid, who.gid, dir_fd=d, follow_symlinks=False)
                    os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=d,
                             follow_symlinks=False)
                elif stat.S_ISFIFO(st.st_mode):
                    _clear(d, name)
                    os.mkfifo(name, 0o600, dir_fd=d)
                    os.chown(name, who.uid, who.gid, dir_fd=d, follow_symlinks=False)
                    os.chmod(name, mode if mode is not None else stat.S_IMODE(st.st_mode),
                             dir_fd=d)
                # device nodes and sockets are not copied


def _make_child_dir(parent: int, name: str, st: os.stat_result, who: Owner,
                    mode: int | None) -> None:
    try:
        existing = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        existing = None
    if existing is not None and not stat.S_ISDIR(existing.st_mode):
        os.unlink(name, dir_fd=parent)
        existing = None
    if existing is None:
        os.mkdir(name, 0o700, dir_fd=parent)
    with _opened(os.open(name, _DIR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)) as fd:
        os.fchown(fd, who.uid, who.gid)
        os.fchmod(fd, mode if mode is not None else stat.S_IMODE(st.st_mode))


def _clear(parent: int, name: str) -> None:
    """Make room for a new entry ``name``: whatever is there goes, a directory too."""
    try:
        os.unlink(name, dir_fd=parent)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        remove_tree(name, dir_fd=parent)
    except PermissionError:  # EPERM: unlink of a directory on Linux
        if stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
            remove_tree(name, dir_fd=parent)
        else:
            raise


def _copy_file(src_fd: int, st: os.stat_result, parent: int, name: str, who: Owner,
               mode: int | None, budget: CopyBudget) -> None:
    budget.take(st.st_size)
    _clear(parent, name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with _opened(os.open(name, flags, 0o600, dir_fd=parent)) as out:
        _copy_bytes(src_fd, out)
        os.fchown(out, who.uid, who.gid)  # before the mode: a chown clears setuid bits
        os.fchmod(out, mode if mode is not None else stat.S_IMODE(st.st_mode))
        os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))


def _copy_bytes(src: int, dst: int) -> None:
    while True:
        try:
            copied = os.copy_file_range(src, dst, CHUNK)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            break
        if copied == 0:
            return
    while chunk := os.read(src, CHUNK):
        os.write(dst, chunk)


# -- ADD: local archives ---------------------------------------------------------------

class _Decompressed:
    """A bzip2 or xz stream as a readable of its plain bytes (unpack_layer reads gzip,
    zstd and plain tar itself)."""

    def __init__(self, source: IO[bytes], kind: str) -> None:
        self._source = source
        self._d: bz2.BZ2Decompressor | lzma.LZMADecompressor = \
            bz2.BZ2Decompressor() if kind == "bzip2" else lzma.LZMADecompressor()

    def read(self, size: int = -1) -> bytes:
        want = CHUNK if size is None or size < 0 else size
        while True:
            if self._d.eof:
                return b""
            if not self._d.needs_input:
                out = self._d.decompress(b"", want)
            else:
                data = self._source.read(CHUNK)
                if not data:
                    return b""
                out = self._d.decompress(data, want)
            if out:
                return out


def _extract(path_fd: int, dst_root: int, dest: str, owner: Owner | None,
             staging: Path, budget: CopyBudget) -> bool:
    """Unpack the archive at ``path_fd`` into ``dest``, as ADD does; False if it is not
    one (then it is copied as a file). Unpacked first into ``staging`` by the layer
    unpacker (its checks on names, links and sizes), then copied in."""
    with os.fdopen(_reopen(path_fd), "rb") as fh:
        kind = archive_kind(fh.read(512))
        if kind is None:
            return False
        fh.seek(0)
        source = cast(BinaryIO, _Decompressed(fh, kind) if kind in ("bzip2", "xz") else fh)
        staging.mkdir(mode=0o700)
        try:
            try:
                unpack_layer(source, staging, (), UnpackLimits(max_bytes=max(budget.left, 0)))
            except SandportError:  # a hostile or oversized archive: refused
                raise
            except Exception:  # noqa: BLE001 - not a tar after all: docker copies it as is
                return False
            with _opened(os.open(staging, _DIR | os.O_CLOEXEC)) as src_dir, \
                    _opened(_make_dirs(dst_root, dest, owner or Owner(0, 0))) as dst_dir:
                _copy_tree(src_dir, dst_dir, owner, None, budget)
        finally:
            remove_tree(staging)
    return True
