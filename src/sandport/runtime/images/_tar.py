"""A streaming tar reader for untrusted layers: ustar, GNU and pax headers, nothing else.

Our own parser, not ``tarfile``, for three reasons: memory is bounded (pax and GNU long-name
headers are capped, where tarfile reads a header of any declared size into memory), pax
xattr values stay the raw bytes they are, and file data is written from the decompressed
chunks as they are, with no copy in between.

The reader only parses; what an entry's name means on disk is the unpacker's business.
A stream that ends exactly between two entries is taken as a tar without its end-of-archive
blocks, as Go's archive/tar (docker, containerd) takes it; a cut inside an entry is an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from ...errors import ImageRejected

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
META_MAX = 1 << 20  # pax and GNU long-name headers before one entry, together
_ID_MAX = 0xFFFF_FFFE  # uid/gid: (uid_t)-1 means "unchanged" to chown
_TIME_MAX = 1 << 62  # nanoseconds either side of 1970, well inside what utimensat takes

REGULAR, HARDLINK, SYMLINK, CHARDEV, BLOCKDEV, DIRECTORY, FIFO = b"0", b"1", b"2", b"3", b"4", \
    b"5", b"6"
_REGULAR_KINDS = (b"0", b"\0", b"7")  # "7" (contiguous) is a regular file everywhere
_KINDS = frozenset((REGULAR, HARDLINK, SYMLINK, CHARDEV, BLOCKDEV, DIRECTORY, FIFO))


@dataclass(slots=True)
class Entry:
    name: str           # as the archive spells it (leading "/" and "./" included)
    kind: bytes         # one of REGULAR, HARDLINK, SYMLINK, CHARDEV, BLOCKDEV, DIRECTORY, FIFO
    size: int           # data bytes that follow the header
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    linkname: str = ""
    xattrs: dict[str, bytes] = field(default_factory=dict)


class TarReader:
    """``next_entry()`` until None; between two calls the entry's data may be written
    out with ``copy_data``. Data not taken is skipped."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""
        self._pos = 0
        self._data_left = 0  # of the current entry
        self._padding = 0
        self._last_name = ""  # for messages about what follows it
        self._started = False

    # -- the byte stream ---------------------------------------------------------------

    def _next_chunk(self) -> bool:
        for chunk in self._chunks:
            if chunk:
                self._buf, self._pos = chunk, 0
                return True
        return False

    def _read(self, size: int) -> bytes:
        """``size`` bytes (a header or a capped meta entry); b"" at a clean end."""
        end = self._pos + size
        if end <= len(self._buf):
            self._pos = end
            return self._buf[end - size:end]
        parts = [self._buf[self._pos:]]
        have = len(parts[0])
        self._buf, self._pos = b"", 0
        while have < size:
            if not self._next_chunk():
                if have:
                    raise self._truncated()
                return b""
            take = min(size - have, len(self._buf))
            parts.append(self._buf[:take])
            self._pos = take
            have += take
        return b"".join(parts)

    def _skip(self, size: int) -> None:
        while size:
            if self._pos == len(self._buf) and not self._next_chunk():
                raise self._truncated()
            step = min(size, len(self._buf) - self._pos)
            self._pos += step
            size -= step

    def copy_data(self, fd: int) -> None:
        """Write the current entry's data to ``fd``, straight from the decompressed chunks."""
        left = self._data_left
        while left:
            if self._pos == len(self._buf) and not self._next_chunk():
                raise self._truncated()
            step = min(left, len(self._buf) - self._pos)
            view = memoryview(self._buf)[self._pos:self._pos + step]
            while view:
                view = view[os.write(fd, view):]
            self._pos += step
            left -= step
        self._data_left = 0

    def drain(self) -> None:
        """Read what follows the end of the archive (its padding), so all of it is hashed."""
        self._buf, self._pos = b"", 0
        for _ in self._chunks:
            pass

    def _truncated(self) -> ImageRejected:
        return ImageRejected(f"the layer's tar stream is truncated{self._after()}")

    def _after(self) -> str:
        """Where in the archive, for a message."""
        return f" after entry {quoted(self._last_name)}" if self._last_name else ""

    # -- headers -----------------------------------------------------------------------

    def next_entry(self) -> Entry | None:
        self._skip(self._data_left + self._padding)
        self._data_left = self._padding = 0
        pax: dict[bytes, bytes] = {}
        long_name = long_link = None
        meta = 0
        while True:
            block = self._read(BLOCK)
            if not block and not self._started:
                raise ImageRejected("the layer is not a tar archive (it is empty)")
            if not block or block == _ZERO_BLOCK:
                if meta:
                    raise self._truncated()
                return None
            self._check(block)
            kind, size = block[156:157], _number(block[124:136])
            if kind not in (b"x", b"g", b"L", b"K"):
                break
            meta += size
            if size < 0 or meta > META_MAX:
                raise ImageRejected(f"the layer has tar headers over {META_MAX} bytes, or "
                                    f"of a negative size{self._after()}")
            data = self._read(size)
            if len(data) < size:
                raise self._truncated()
            self._skip(-size % BLOCK)
            if kind == b"x":
                pax.update(_pax_records(data))
            elif kind == b"L":
                long_name = data.partition(b"\0")[0]
            elif kind == b"K":
                long_link = data.partition(b"\0")[0]
            # "g" (global pax headers) changes nothing that an unpacker uses
        entry = self._entry(block, kind, size, pax, long_name, long_link)
        self._last_name = entry.name
        self._data_left, self._padding = entry.size, -entry.size % BLOCK
        return entry

    def _check(self, block: bytes) -> None:
        try:
            stored = _number(block[148:156])
        except ImageRejected:
            stored = -1
        unsigned = sum(block) - sum(block[148:156]) + 8 * 32  # the field counts as spaces
        if stored != unsigned and stored != _signed_sum(block):
            if not self._started:
                raise ImageRejected("the layer is not a tar archive")
            raise ImageRejected(f"the layer has a corrupt tar header{self._after()}")
        self._started = True

    def _entry(self, block: bytes, kind: bytes, size: int, pax: dict[bytes, bytes],
               long_name: bytes | None, long_link: bytes | None) -> Entry:
        name = long_name if long_name is not None else _cstr(block[0:100])
        if block[257:263] == b"ustar\0" and block[345] and long_name is None:
            name = _cstr(block[345:500]) + b"/" + name  # POSIX ustar's name prefix
        link = long_link if long_link is not None else _cstr(block[157:257])
        name, link = pax.get(b"path", name), pax.get(b"linkpath", link)
        shown = os.fsdecode(name)
        if any(key.startswith(b"GNU.sparse.") for key in pax) or kind == b"S":
            raise ImageRejected(f"layer entry {quoted(shown)} is a sparse file (not supported)")
        if kind in _REGULAR_KINDS:
            kind = DIRECTORY if kind == b"\0" and name.endswith(b"/") else REGULAR  # old tars
        if kind not in _KINDS:
            raise ImageRejected(f"layer entry {quoted(shown)} has an unsupported tar type "
                                f"{kind!r}")
        try:
            entry = Entry(
                name=shown, kind=kind,
                size=int(pax[b"size"]) if b"size" in pax else size,
                mode=_number(block[100:108]) & 0o7777,
                uid=int(pax[b"uid"]) if b"uid" in pax else _number(block[108:116]),
                gid=int(pax[b"gid"]) if b"gid" in pax else _number(block[116:124]),
                mtime_ns=(_pax_time_ns(pax[b"mtime"]) if b"mtime" in pax
                          else _number(block[136:148]) * 1_000_000_000),
                linkname=os.fsdecode(link),
                xattrs={os.fsdecode(key[13:]): value for key, value in pax.items()
                        if key.startswith(b"SCHILY.xattr.")},
            )
        except ValueError:
            raise ImageRejected(f"layer entry {quoted(shown)} has a corrupt pax header") from None
        if not (0 <= entry.uid <= _ID_MAX and 0 <= entry.gid <= _ID_MAX):
            raise ImageRejected(f"layer entry {quoted(shown)} has an owner out of range")
        if not -_TIME_MAX < entry.mtime_ns < _TIME_MAX:
            raise ImageRejected(f"layer entry {quoted(shown)} has a time out of range")
        if entry.size < 0:
            raise ImageRejected(f"layer entry {quoted(shown)} has a negative size")
        if "\0" in entry.name or "\0" in entry.linkname or any("\0" in k for k in entry.xattrs):
            raise ImageRejected(f"layer entry {quoted(shown)} has a NUL in a name")
        return entry


def _cstr(field: bytes) -> bytes:
    return field.partition(b"\0")[0]


def _number(field: bytes) -> int:
    """A numeric header field: octal text, or GNU's base-256 (top bit set) for big values."""
    if field and field[0] & 0x80:
        value = int.from_bytes(field, "big")
        if field[0] == 0xFF:  # negative, in two's complement over the field
            return value - (1 << 8 * len(field))
        return value & ~(0x80 << 8 * (len(field) - 1))
    text = field.partition(b"\0")[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise ImageRejected("the layer has a corrupt tar header (a number is not octal)") \
            from None


def _signed_sum(block: bytes) -> int:
    # Some old tars summed signed chars; the checksum field counts as spaces either way.
    return sum(b - 256 if b > 127 else b for b in block[:148] + block[156:]) + 8 * 32


def _pax_records(data: bytes) -> dict[bytes, bytes]:
    """``"<length> <key>=<value>\\n"`` records; an empty value takes the key back."""
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data) and data[pos]:
        space = data.find(b" ", pos)
        digits = data[pos:space]
        if space <= pos or len(digits) > 7 or not digits.isdigit():  # META_MAX has 7
            raise ImageRejected("the layer has a corrupt pax header")
        end = pos + int(digits)
        if end <= space or end > len(data) or data[end - 1] != 0x0A:  # so pos moves on
            raise ImageRejected("the layer has a corrupt pax header")
        key, equals, value = data[space + 1:end - 1].partition(b"=")
        if not equals:
            raise ImageRejected("the layer has a corrupt pax header")
        if value:
            records[key] = value
        else:
            records.pop(key, None)
        pos = end
    return records


def _pax_time_ns(value: bytes) -> int:
    text = value.decode("ascii")
    negative = text.startswith("-")
    seconds, _, fraction = text.lstrip("-").partition(".")
    if not seconds.isdigit() or (fraction and not fraction.isdigit()):
        raise ValueError(text)
    ns = int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9])
    return -ns if negative else ns


def quoted(name: str) -> str:
    """An entry's name for a message: quoted, and cut short if it is long."""
    return repr(name if len(name) <= 200 else name[:200] + "...")
