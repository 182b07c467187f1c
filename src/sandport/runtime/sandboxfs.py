"""File operations inside a running sandbox, done from the host through safepath.

Blocking calls (run them in a worker thread). Every path is a path *inside* the sandbox;
relative paths are taken from the sandbox's working directory. Operations act as the
sandbox's user (root unless ``user`` says otherwise): the worker thread takes that user's
filesystem identity (setfsuid/setfsgid and its groups, per thread) for the operation, so
permissions are checked as they would be for a process in the sandbox.

Errors are raised as sandport errors whose messages name only in-sandbox paths.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import platform
import posixpath
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    RuntimeFailure,
    SandportError,
    Unavailable,
)
from ..models import FileInfo, FileType
from . import safepath
from .safepath import create_regular, open_dir, open_regular, split

MAX_DEPTH = 64
COPY_CHUNK = 1 << 20

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_SETGROUPS = {"x86_64": 116, "aarch64": 159}.get(platform.machine())


@dataclass(frozen=True, slots=True)
class User:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    home: str = "/"


ROOT = User("root", 0, 0, (0,), "/root")
MAX_ID = 0xFFFF_FFFE  # (uid_t)-1 means "no change" to the kernel


@contextlib.contextmanager
def acting_as(user: User) -> Iterator[None]:
    """This thread's filesystem identity becomes ``user``'s for the block.

    Raw syscalls: credentials are per thread in Linux, and glibc's setgroups() would
    change every thread of the server. fsuid changes also drop (and give back) the
    capabilities that bypass permission checks.
    """
    if user.uid == 0 and user.gid == 0:
        yield
        return
    if _SYS_SETGROUPS is None:
        raise BadRequest("acting as another user is not supported on this host architecture")
    saved = os.getgroups()
    ids = [i for i in (user.uid, user.gid, *user.groups) if not 0 <= i <= MAX_ID]
    if ids:
        raise BadRequest(f"user {user.name!r} has an id out of range")
    groups = (ctypes.c_uint * max(1, len(user.groups)))(*(user.groups or (user.gid,)))
    _libc.syscall(_SYS_SETGROUPS, max(1, len(user.groups)), groups)
    _libc.setfsgid(ctypes.c_uint(user.gid))
    _libc.setfsuid(ctypes.c_uint(user.uid))
    # setfsuid reports nothing on failure: ask (an invalid id changes nothing) and check.
    if _libc.setfsuid(ctypes.c_uint(0xFFFFFFFF)) != user.uid or \
            _libc.setfsgid(ctypes.c_uint(0xFFFFFFFF)) != user.gid:
        _libc.setfsuid(0)
        _libc.setfsgid(0)
        raise RuntimeFailure("could not take the user's identity for a file operation")
    try:
        yield
    finally:
        _libc.setfsuid(0)
        _libc.setfsgid(0)
        back = (ctypes.c_uint * max(1, len(saved)))(*(saved or [0]))
        _libc.syscall(_SYS_SETGROUPS, len(saved), back)


@contextlib.contextmanager
def client_errors(path: str) -> Iterator[None]:
    """OSError → the sandport error a client gets, naming the in-sandbox path only."""
    try:
        yield
    except SandportError:
        raise
    except OSError as exc:
        raise error_for(exc.errno, path) from None


def error_for(code: int | None, path: str) -> SandportError:
    messages: dict[int, tuple[type[SandportError], str]] = {
        errno.ENOENT: (NotFound, "no such file or directory"),
        errno.ENOTDIR: (BadRequest, "a component of the path is not a directory"),
        errno.EISDIR: (BadRequest, "is a directory"),
        errno.EEXIST: (Conflict, "already exists"),
        errno.ENOTEMPTY: (Conflict, "directory is not empty (pass recursive)"),
        errno.EACCES: (Forbidden, "permission denied"),
        errno.EPERM: (Forbidden, "operation not permitted"),
        errno.ELOOP: (BadRequest, "too many levels of symbolic links"),
        errno.ENAMETOOLONG: (BadRequest, "file name too long"),
        errno.EXDEV: (BadRequest, "cannot move across filesystems"),
        errno.ENOSPC: (PayloadTooLarge, "no space left in the sandbox"),
        errno.EDQUOT: (PayloadTooLarge, "disk quota exceeded in the sandbox"),
        errno.EROFS: (Forbidden, "read-only filesystem"),
        errno.EINVAL: (BadRequest, "invalid argument"),
        errno.EBUSY: (Conflict, "busy (a mount point, or in use)"),
        errno.ETXTBSY: (Conflict, "in use by a running program"),
        errno.EFBIG: (PayloadTooLarge, "file too large"),
        errno.EMLINK: (Conflict, "too many links"),
        errno.ENXIO: (BadRequest, "no such device"),
        errno.ENODEV: (BadRequest, "no such device"),
        errno.EOPNOTSUPP: (BadRequest, "not supported by this filesystem"),
        errno.EOVERFLOW: (BadRequest, "value too large"),
        errno.EAGAIN: (Conflict, "temporarily unavailable; try again"),
        errno.EMFILE: (Unavailable, "too many open files; try again"),
        errno.ENFILE: (Unavailable, "too many open files; try again"),
        errno.ENOMEM: (Unavailable, "out of memory; try again"),
    }
    name = errno.errorcode.get(code or 0, "unknown")
    cls, text = messages.get(code or 0, (SandportError, f"file operation failed ({name})"))
    return cls(f"{path}: {text}")


class SandboxFS:
    def __init__(self, root_fd: int, workdir: str = "/", user: User = ROOT) -> None:
        self.root_fd = root_fd
        self.workdir = workdir
        self.user = user
        self._names: tuple[dict[int, str], dict[int, str]] | None = None

    # -- paths ------------------------------------------------------------------------
    def absolute(self, path: str) -> str:
        if not isinstance(path, str) or not path or "\x00" in path:
            raise BadRequest("path must be a non-empty string")
        # normpath keeps a leading "//" (POSIX allows it a meaning); inside a sandbox it is "/"
        return "/" + posixpath.normpath(posixpath.join(self.workdir, path)).lstrip("/")

    @contextlib.contextmanager
    def _parent(self, path: str) -> Iterator[tuple[int, str]]:
        parent, name = split(path)
        fd = open_dir(self.root_fd, parent)
        try:
            yield fd, name
        finally:
            os.close(fd)

    # -- reading ----------------------------------------------------------------------
    def stat(self, path: str) -> FileInfo:
        path = self.absolute(path)
        with client_errors(path):
            if path == "/":
                return self._info(path, os.fstat(self.root_fd), None)
            with self._parent(path) as (parent, name):
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                target = os.readlink(name, dir_fd=parent) if stat.S_ISLNK(st.st_mode) else None
                return self._info(path, st, target)

    def list_dir(self, path: str, depth: int = 1,
                 limit: int = 10_000) -> tuple[list[FileInfo], bool]:
        """Entries under ``path`` down to ``depth`` levels; (entries, truncated)."""
        path = self.absolute(path)
        found: list[FileInfo] = []
        with client_errors(path):
            fd = safepath.reopen_dir(self.root_fd, path)
            try:
                truncated = self._walk(fd, path, min(depth, MAX_DEPTH), found, limit)
            finally:
                os.close(fd)
        return found, truncated

    def _walk(self, dir_fd: int, path: str, depth: int, found: list[FileInfo],
              limit: int) -> bool:
        with os.scandir(dir_fd) as entries:  # no more than the limit is ever held
            children = sorted(itertools.islice(entries, max(0, limit - len(found)) + 1),
                              key=lambda e: e.name)
        for entry in children:
            if len(found) >= limit:
                return True
            child = posixpath.join(path, entry.name)
            try:
                st = entry.stat(follow_symlinks=False)
                link = os.readlink(entry.name, dir_fd=dir_fd) if stat.S_ISLNK(st.st_mode) else None
            except OSError:
                continue  # removed while we looked
            found.append(self._info(child, st, link))
            if depth > 1 and stat.S_ISDIR(st.st_mode):
                try:
                    sub = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                  | os.O_CLOEXEC, dir_fd=dir_fd)
                except OSError:
                    continue  # unreadable for this user, or gone
                try:
                    if self._walk(sub, child, depth - 1, found, limit):
                        return True
                finally:
                    os.close(sub)
        return False

    def read(self, path: str, offset: int = 0, length: int | None = None,
             limit: int = 1 << 26) -> tuple[bytes, bool]:
        """Bytes of a regular file from ``offset``: at most ``length`` and ``limit``;
        (data, truncated: more was there than ``limit`` allowed)."""
        path = self.absolute(path)
        with client_errors(path):
            fd = open_regular(self.root_fd, path, os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                wanted = max(0, size - offset) if length is None else length
                take = min(wanted, limit)
                data = _pread_all(fd, take, offset)
            finally:
                os.close(fd)
        return data, take < wanted

    def open_read(self, path: str) -> tuple[int, int]:
        """A descriptor of the regular file at ``path``, and its size (for streaming)."""
        path = self.absolute(path)
        with client_errors(path):
            fd = open_regular(self.root_fd, path, os.O_RDONLY)
            return fd, os.fstat(fd).st_size

    # -- writing ----------------------------------------------------------------------
    def open_write(self, path: str, *, append: bool = False, mode: int | None = None,
                   parents: bool = True) -> int:
        """A descriptor to write ``path`` with (truncated unless ``append``), created with
        its missing parent directories."""
        path = self.absolute(path)
        with client_errors(path):
            if parents:
                self._make_parents(path)
            flags = os.O_WRONLY | (os.O_APPEND if append else 0)
            fd, _ = create_regular(self.root_fd, path, flags, 0o644 if mode is None else mode)
            try:  # the mode first: a file we may not chmod is left as it was
                if mode is not None:
                    os.fchmod(fd, mode)
                if not append:
                    os.ftruncate(fd, 0)
            except BaseException:
                os.close(fd)
                raise
            return fd

    def write(self, path: str, data: bytes, *, append: bool = False,
              mode: int | None = None) -> FileInfo:
        fd = self.open_write(path, append=append, mode=mode)
        with client_errors(path):
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
        return self.stat(path)

    def mkdir(self, path: str, *, parents: bool = False, mode: int | None = None) -> bool:
        """Make a directory; False if it was already there (an error without ``parents``)."""
        path = self.absolute(path)
        with client_errors(path):
            if parents:
                self._make_parents(path)
            with self._parent(path) as (parent, name):
                try:
                    os.mkdir(name, 0o755 if mode is None else mode, dir_fd=parent)
                except FileExistsError:
                    st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                    if parents and stat.S_ISDIR(st.st_mode):
                        return False
                    raise
                if mode is not None:
                    self._chmod_child(parent, name, mode)
        return True

    def _make_parents(self, path: str) -> None:
        parts = split(path)[0].split("/")
        for i in range(len(parts)):
            prefix = "/".join(parts[: i + 1])
            if prefix == ".":
                continue
            try:
                os.close(open_dir(self.root_fd, prefix))
            except FileNotFoundError:
                with self._parent(prefix) as (parent, name):
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o755, dir_fd=parent)

    def move(self, source: str, destination: str, *, overwrite: bool = False) -> FileInfo:
        source, destination = self.absolute(source), self.absolute(destination)
        _refuse_into_itself(source, destination)
        with client_errors(destination):
            with self._parent(source) as (src_parent, src_name), \
                    self._parent(destination) as (dst_parent, dst_name):
                flags = 0 if overwrite else safepath.RENAME_NOREPLACE
                _refuse_mount_point(src_parent, src_name)
                if _exists(dst_parent, dst_name):
                    _refuse_mount_point(dst_parent, dst_name)
                try:
                    safepath.renameat2(src_parent, src_name, dst_parent, dst_name, flags)
                except OSError as exc:
                    if exc.errno == errno.ENOENT:
                        raise error_for(errno.ENOENT, source) from None
                    if exc.errno != errno.EXDEV:
                        raise
                    self.copy(source, destination, recursive=True, overwrite=overwrite)
                    self.remove(source, recursive=True)
        return self.stat(destination)

    def copy(self, source: str, destination: str, *, recursive: bool = False,
             overwrite: bool = False) -> FileInfo:
        source, destination = self.absolute(source), self.absolute(destination)
        _refuse_into_itself(source, destination)
        with client_errors(source):
            with self._parent(source) as (src_parent, src_name):
                st = os.stat(src_name, dir_fd=src_parent, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode) and not recursive:
                    raise BadRequest(f"{source}: is a directory (pass recursive)")
                # From here what fails is mostly the destination's: name it.
                with client_errors(destination), \
                        self._parent(destination) as (dst_parent, dst_name):
                    if _exists(dst_parent, dst_name):
                        if not overwrite:
                            raise Conflict(f"{destination}: already exists (pass overwrite)")
                        _remove_child(dst_parent, dst_name, recursive=True)
                    _copy_child(src_parent, src_name, dst_parent, dst_name, MAX_DEPTH)
        return self.stat(destination)

    def remove(self, path: str, *, recursive: bool = False) -> None:
        path = self.absolute(path)
        with client_errors(path), self._parent(path) as (parent, name):
            _remove_child(parent, name, recursive=recursive)

    def chmod(self, path: str, mode: int, *, recursive: bool = False) -> None:
        path = self.absolute(path)
        with client_errors(path), self._parent(path) as (parent, name):
            self._each(parent, name, recursive,
                       lambda p, n: self._chmod_child(p, n, mode))

    def chown(self, path: str, uid: int | None, gid: int | None, *,
              recursive: bool = False) -> None:
        path = self.absolute(path)
        new_uid, new_gid = -1 if uid is None else uid, -1 if gid is None else gid
        with client_errors(path), self._parent(path) as (parent, name):
            self._each(parent, name, recursive,
                       lambda p, n: os.chown(n, new_uid, new_gid, dir_fd=p,
                                             follow_symlinks=False))

    def _chmod_child(self, parent: int, name: str, mode: int) -> None:
        """chmod without following a symlink: symlinks have no mode of their own on Linux."""
        fd = safepath.openat2(parent, name, os.O_PATH | os.O_NOFOLLOW)
        try:
            if not stat.S_ISLNK(os.fstat(fd).st_mode):
                os.chmod(safepath.proc_path(fd), mode)
        finally:
            os.close(fd)

    def _each(self, parent: int, name: str, recursive: bool,
              apply: Callable[[int, str], None], depth: int = MAX_DEPTH) -> None:
        apply(parent, name)
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if not recursive or not stat.S_ISDIR(st.st_mode) or depth == 0:
            return
        sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                      dir_fd=parent)
        try:
            for child in sorted(os.listdir(sub)):
                self._each(sub, child, True, apply, depth - 1)
        finally:
            os.close(sub)

    # -- names --------------------------------------------------------------------------
    def _info(self, path: str, st: os.stat_result, link: str | None) -> FileInfo:
        users, groups = self._name_maps()
        return FileInfo(
            path=path, name=posixpath.basename(path) or "/", type=_type_of(st.st_mode),
            size=st.st_size, mode=stat.S_IMODE(st.st_mode), permissions=stat.filemode(st.st_mode),
            owner=users.get(st.st_uid, str(st.st_uid)), group=groups.get(st.st_gid, str(st.st_gid)),
            modified_time=st.st_mtime_ns // 1_000_000, symlink_target=link,
        )

    def _name_maps(self) -> tuple[dict[int, str], dict[int, str]]:
        if self._names is None:
            self._names = (
                {int(f[2]): f[0] for f in self._table("/etc/passwd") if f[2].isdigit()},
                {int(f[2]): f[0] for f in self._table("/etc/group") if f[2].isdigit()},
            )
        return self._names

    def _table(self, path: str) -> list[list[str]]:
        try:
            data, _ = self.read(path, limit=1 << 20)
        except SandportError:
            return []
        rows = [line.split(":") for line in data.decode(errors="replace").splitlines()]
        return [row for row in rows if len(row) >= 3]

    def user_named(self, name: str) -> User:
        """The sandbox's user ``name`` (or a numeric uid), from its own /etc/passwd."""
        for row in self._table("/etc/passwd"):
            if len(row) >= 6 and (row[0] == name or row[2] == name) and row[3].isdigit():
                uid, gid = int(row[2]), int(row[3])
                if not (0 <= uid <= MAX_ID and 0 <= gid <= MAX_ID):
                    raise BadRequest(f"user {name!r} has an id out of range in the "
                                     "sandbox's /etc/passwd")
                groups = {gid} | {int(g[2]) for g in self._table("/etc/group")
                                  if len(g) >= 4 and g[2].isdigit() and row[0] in g[3].split(",")}
                return User(row[0], uid, gid, tuple(sorted(groups)), row[5] or "/")
        raise BadRequest(f"user {name!r} does not exist in the sandbox")

    def image_user(self, spec: str) -> User:
        """An image config's ``User``: ``name``, ``uid``, ``name:group`` or ``uid:gid``.
        A numeric uid need not be in /etc/passwd (images often run as 65534 or 1001)."""
        who, _, group = spec.partition(":")
        try:
            user = self.user_named(who)
        except BadRequest:
            if not who.isdigit() or int(who) > MAX_ID:
                raise
            user = User(who, int(who), 0, (0,), "/")
        if group:
            gid = int(group) if group.isdigit() else next(
                (int(g[2]) for g in self._table("/etc/group") if g[0] == group
                 and g[2].isdigit()), None)
            if gid is None or gid > MAX_ID:
                raise BadRequest(f"group {group!r} does not exist in the sandbox")
            user = User(user.name, user.uid, gid, (gid,), user.home)
        return user


def _type_of(mode: int) -> FileType:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    chunks = []
    while length > 0:
        chunk = os.pread(fd, min(length, COPY_CHUNK), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        length -= len(chunk)
    return b"".join(chunks)


def _exists(parent: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _refuse_into_itself(source: str, destination: str) -> None:
    if source == "/" or destination == source or destination.startswith(source.rstrip("/") + "/"):
        raise BadRequest(f"cannot copy or move {source} into itself")


def _refuse_mount_point(parent: int, name: str) -> os.stat_result:
    """The entry's lstat; a mount point of the sandbox (its /etc/hosts, /dev/init, a
    tmpfs) is refused: the server, outside the sandbox's mount namespace, could move or
    remove what the sandbox itself cannot."""
    st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    if st.st_dev != os.fstat(parent).st_dev:
        raise OSError(errno.EBUSY, "a mount point of the sandbox", name)
    return st


def _remove_child(parent: int, name: str, *, recursive: bool, depth: int = MAX_DEPTH) -> None:
    """unlink/rmdir, recursively if asked; never follows a symlink, even one swapped in
    while we work (each directory is opened O_NOFOLLOW relative to its parent's fd), and
    never descends into another filesystem."""
    st = _refuse_mount_point(parent, name)
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent)
        return
    if recursive:
        if depth == 0:
            raise OSError(errno.ELOOP, "directory tree too deep", name)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                         | os.O_NONBLOCK, dir_fd=parent)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            os.unlink(name, dir_fd=parent)  # it became a file or a symlink: remove that
            return
        try:
            if os.fstat(fd).st_dev != os.fstat(parent).st_dev:
                raise OSError(errno.EBUSY, "a mount point of the sandbox", name)
            for child in os.listdir(fd):
                _remove_child(fd, child, recursive=True, depth=depth - 1)
        finally:
            os.close(fd)
    os.rmdir(name, dir_fd=parent)


def _open_child_regular(parent: int, name: str) -> int:
    fd = safepath.openat2(parent, name, os.O_PATH | os.O_NOFOLLOW)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PermissionError(errno.EPERM, "not a regular file", name)
        return safepath.reopen(fd, os.O_RDONLY)
    finally:
        os.close(fd)


def _copy_bytes(src: int, dst: int) -> None:
    """In the kernel: copy_file_range, or sendfile where that cannot cross filesystems
    (a bind-mounted file into the sandbox's overlay is EXDEV since Linux 5.19)."""
    try:
        while os.copy_file_range(src, dst, COPY_CHUNK):
            pass
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        while os.sendfile(dst, src, None, COPY_CHUNK):
            pass


def _copy_child(src_parent: int, src_name: str, dst_parent: int, dst_name: str,
                depth: int) -> None:
    """Copy one entry: files by content, directories recursively, symlinks as symlinks;
    device nodes, fifos and sockets are skipped (the sandbox can make its own)."""
    st = os.stat(src_name, dir_fd=src_parent, follow_symlinks=False)
    perms = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src_name, dir_fd=src_parent), dst_name, dir_fd=dst_parent)
    elif stat.S_ISREG(st.st_mode):
        src = _open_child_regular(src_parent, src_name)
        try:
            dst = os.open(dst_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                          | os.O_CLOEXEC, 0o600, dir_fd=dst_parent)
            try:
                _copy_bytes(src, dst)
                os.fchmod(dst, perms)
            finally:
                os.close(dst)
        finally:
            os.close(src)
    elif stat.S_ISDIR(st.st_mode):
        if depth == 0:
            raise BadRequest("directory tree too deep to copy")
        os.mkdir(dst_name, 0o700, dir_fd=dst_parent)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        src_dir = os.open(src_name, flags, dir_fd=src_parent)
        dst_dir = os.open(dst_name, flags, dir_fd=dst_parent)
        try:
            for child in sorted(os.listdir(src_dir)):
                _copy_child(src_dir, child, dst_dir, child, depth - 1)
            os.fchmod(dst_dir, perms)
        finally:
            os.close(src_dir)
            os.close(dst_dir)
