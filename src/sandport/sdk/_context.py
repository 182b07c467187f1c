"""A build context: a directory as the tar stream a Dockerfile build reads, made while it
is sent (file contents are read in chunks, never held whole).

The directory is walked once up front, lstat only, so the archive's exact size is known
before a byte goes out: the request declares it and a server can refuse an oversized
context at once. ``.dockerignore`` is honoured as docker honours it (sandport's own
parser), except that the Dockerfile and ``.dockerignore`` themselves are always sent: the
builder needs them even where COPY must not see them. Symlinks go as symlinks and are never
followed; sockets, FIFOs and devices are left out; owners are 0:0, modes and mtimes kept.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import SandportError, ValidationFailed

if TYPE_CHECKING:
    from ..dockerignore import Ignore

BLOCK = 512
READ_CHUNK = 1 << 20
DOCKERIGNORE = ".dockerignore"
DEFAULT_DOCKERFILE = "Dockerfile"


@dataclass(frozen=True, slots=True)
class Entry:
    name: str  # relative to the context root, "/"-separated
    kind: bytes  # tarfile.DIRTYPE, REGTYPE or SYMTYPE
    mode: int
    mtime: int
    size: int = 0
    linkname: str = ""

    def header(self) -> bytes:
        info = tarfile.TarInfo(self.name + ("/" if self.kind == tarfile.DIRTYPE else ""))
        info.type, info.mode, info.mtime = self.kind, self.mode, self.mtime
        info.size, info.linkname = self.size, self.linkname
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")

    @property
    def padded_size(self) -> int:
        return -(-self.size // BLOCK) * BLOCK


def dockerfile_name(dockerfile: str | None) -> str:
    """The Dockerfile's path inside the context, "/"-separated and cleaned; refused when it
    is absolute or climbs out (only what is in the context reaches the server)."""
    # Imported here, not at the top: the parser lives with the server's image code, whose
    # package loads the server's dependencies; only a directory build needs it.
    from ..dockerignore import clean

    name = DEFAULT_DOCKERFILE if dockerfile is None else os.fspath(dockerfile)
    cleaned = clean(name.replace(os.sep, "/"))
    if not name or cleaned.startswith("/") or cleaned == "." or cleaned.split("/")[0] == "..":
        raise ValidationFailed(f"the Dockerfile {name!r} must be a file inside the build "
                               "context, as a path relative to it")
    return cleaned


def plan(root: str | os.PathLike[str], dockerfile: str | None = None) -> list[Entry]:
    """What the archive of ``root`` holds, in the order it is sent (parents first, names
    sorted): every entry ``.dockerignore`` keeps, plus the parents of each, plus the
    Dockerfile and ``.dockerignore``."""
    from ..dockerignore import parse_dockerignore  # as in dockerfile_name

    top = os.fspath(root)
    if not os.path.isdir(top):
        raise ValidationFailed(f"the build context {top} is not a directory")
    wanted = dockerfile_name(dockerfile)
    try:
        with open(os.path.join(top, DOCKERIGNORE), encoding="utf-8",
                  errors="surrogateescape") as fh:
            ignore_text = fh.read()
    except FileNotFoundError:
        ignore_text = ""
    except OSError as exc:
        raise ValidationFailed(f"cannot read {top}/{DOCKERIGNORE}: {exc.strerror}") from None
    walker = _Walker(parse_dockerignore(ignore_text), {wanted, DOCKERIGNORE})
    walker.walk(top, "")
    if not any(e.name == wanted and e.kind != tarfile.DIRTYPE for e in walker.entries):
        raise ValidationFailed(f"there is no Dockerfile at {top}/{wanted}"
                               + ("" if dockerfile else " (name another one with dockerfile=)"))
    return walker.entries


class _Walker:
    def __init__(self, ignore: Ignore, always: set[str]) -> None:
        self.ignore = ignore
        self.always = always
        # Directories on the way to a file that is always sent are walked even if excluded.
        self.always_dirs = {"/".join(p.split("/")[:i]) for p in always
                            for i in range(1, p.count("/") + 1)}
        self.entries: list[Entry] = []
        self._sent_dirs: set[str] = {""}
        self._dir_stats: dict[str, os.stat_result] = {}

    def walk(self, path: str, prefix: str) -> None:
        try:
            with os.scandir(path) as listing:
                found = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            raise ValidationFailed(f"cannot read {path}: {exc.strerror}") from None
        for item in found:
            name = prefix + item.name
            info = item.stat(follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                self._dir_stats[name] = info
                if not self.ignore.excluded(name):
                    self._with_parents(name)
                    self.walk(item.path, name + "/")
                elif name in self.always_dirs or self.ignore.may_descend(name):
                    self.walk(item.path, name + "/")
            elif name in self.always or not self.ignore.excluded(name):
                entry = self._entry(item.path, name, info)
                if entry is not None:
                    self._with_parents(name.rpartition("/")[0])
                    self.entries.append(entry)

    def _with_parents(self, directory: str) -> None:
        """Send ``directory`` and every directory above it not sent yet, outermost first."""
        if directory in self._sent_dirs:
            return
        self._with_parents(directory.rpartition("/")[0])
        info = self._dir_stats[directory]
        self.entries.append(Entry(directory, tarfile.DIRTYPE, stat.S_IMODE(info.st_mode),
                                  int(info.st_mtime)))
        self._sent_dirs.add(directory)

    def _entry(self, path: str, name: str, info: os.stat_result) -> Entry | None:
        mode, mtime = stat.S_IMODE(info.st_mode), int(info.st_mtime)
        if stat.S_ISLNK(info.st_mode):
            return Entry(name, tarfile.SYMTYPE, mode, mtime, linkname=os.readlink(path))
        if not stat.S_ISREG(info.st_mode):
            return None  # a socket, FIFO or device: nothing a build could copy
        if not os.access(path, os.R_OK):
            raise ValidationFailed(f"cannot read {path}: permission denied")
        return Entry(name, tarfile.REGTYPE, mode, mtime, info.st_size)


def archive_size(entries: list[Entry]) -> int:
    return sum(len(e.header()) + e.padded_size for e in entries) + 2 * BLOCK


def pieces(top: str, entries: list[Entry]) -> Generator[bytes, None, None]:
    """The archive, header by header and chunk by chunk, exactly ``archive_size`` bytes."""
    for entry in entries:
        yield entry.header()
        if entry.kind != tarfile.REGTYPE:
            continue
        yield from _contents(os.path.join(top, entry.name), entry.size)
        yield bytes(entry.padded_size - entry.size)
    yield bytes(2 * BLOCK)


def _contents(path: str, size: int) -> Iterator[bytes]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SandportError(f"cannot read {path} ({exc.strerror}); it changed while the "
                            "build context was being sent") from None
    with open(fd, "rb", buffering=0) as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SandportError(f"{path} changed while the build context was being sent")
        left = size
        while left:
            chunk = fh.read(min(READ_CHUNK, left))
            if not chunk:
                raise SandportError(f"{path} shrank while the build context was being sent")
            left -= len(chunk)
            yield chunk


class ContextTar(io.RawIOBase):
    """The archive of a directory as a readable stream (``read`` makes the next bytes);
    ``size`` is its exact length. Closing it closes the file being read."""

    def __init__(self, root: str | os.PathLike[str], dockerfile: str | None = None) -> None:
        super().__init__()
        self.top = os.fspath(root)
        self.entries = plan(self.top, dockerfile)
        self.size = archive_size(self.entries)
        self._pieces = pieces(self.top, self.entries)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        while not self._pending:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._pending = memoryview(piece)
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def close(self) -> None:
        self._pieces.close()
        super().close()
