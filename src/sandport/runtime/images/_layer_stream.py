"""The uncompressed tar stream of a layer blob: decompressed, counted, hashed and capped.

The compression is told by the blob's first bytes (gzip ``1f8b``, zstd ``28b52ffd``, else a
plain tar), never by a media type, and the blob is read once front to back: it may be a pipe
or a socket. Every decompressor call has a bounded output, so a bomb is stopped at the cap
without first being held in memory. ``ReadAhead`` runs all of this in a thread ahead of the
tar parser: zlib, zstd and sha256 release the GIL, so decompression overlaps the writes.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import zlib
from collections.abc import Iterator
from typing import IO, Protocol, TypeVar, cast

import zstandard
from isal import isal_zlib

from ...errors import ImageRejected

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
READ_SIZE = 1 << 20    # compressed bytes asked of the source at a time
OUTPUT_SIZE = 1 << 20  # the most uncompressed bytes one decompressor call may give
_ZSTD_WINDOW_MAX = 1 << 27  # zstd's default limit: 128 MiB of window memory per layer
# ISA-L's inflate is zlib's format at about twice the speed; its stubs type its error
# class as an instance.
_INFLATE_ERRORS = (zlib.error, cast("type[Exception]", isal_zlib.error))

T = TypeVar("T")


class Readable(Protocol):
    """What a layer is read from: a file, a pipe, an HTTP body (``read`` may return fewer
    bytes than asked, b"" at the end); never seeked."""

    def read(self, size: int = ..., /) -> bytes: ...


class LayerStream:
    """``chunks()`` yields (uncompressed bytes, compressed bytes read so far); ``size`` and
    ``diff_id`` cover every uncompressed byte that passed, trailing padding included."""

    def __init__(self, source: Readable, max_bytes: int) -> None:
        self._source = source
        self._max_bytes = max_bytes
        self._hash = hashlib.sha256()
        self.size = 0
        self.compressed = 0

    @property
    def diff_id(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def chunks(self) -> Iterator[tuple[bytes, int]]:
        head = self._read_head()
        if head.startswith(GZIP_MAGIC):
            inflated = self._gunzip(head)
        elif head.startswith(ZSTD_MAGIC):
            inflated = self._unzstd(head)
        else:
            inflated = self._plain(head)
        for chunk in inflated:
            self.size += len(chunk)
            if self.size > self._max_bytes:
                raise ImageRejected(
                    f"the layer is larger than the limit of {self._max_bytes} bytes uncompressed")
            self._hash.update(chunk)
            yield chunk, self.compressed

    def _read(self, size: int = READ_SIZE) -> bytes:
        data = self._source.read(size)
        self.compressed += len(data)
        return data

    def _read_head(self) -> bytes:
        head = b""
        while len(head) < len(ZSTD_MAGIC):  # a pipe may give fewer bytes than asked
            more = self._read(len(ZSTD_MAGIC) - len(head))
            if not more:
                break
            head += more
        return head

    def _plain(self, head: bytes) -> Iterator[bytes]:
        if head:
            yield head
        while data := self._read():
            yield data

    def _gunzip(self, head: bytes) -> Iterator[bytes]:
        """Every gzip member in turn (pigz and estargz write several); zero padding after
        the last is allowed, anything else is not."""
        inflater = isal_zlib.decompressobj(16 + zlib.MAX_WBITS)
        pending = head
        try:
            while True:
                if not pending:
                    pending = self._read()
                    if not pending:
                        # the last input may still hold output the output bound kept back
                        tail = inflater.flush()
                        if tail:
                            yield tail
                        if not inflater.eof:
                            raise ImageRejected("the layer's gzip stream is truncated")
                        return
                out = inflater.decompress(pending, OUTPUT_SIZE)
                pending = inflater.unconsumed_tail
                if out:
                    yield out
                if inflater.eof:
                    pending = inflater.unused_data
                    while len(pending) < len(GZIP_MAGIC) and (more := self._read()):
                        pending += more
                    if not pending:
                        return
                    if not pending.startswith(GZIP_MAGIC):
                        self._expect_zeros(pending)
                        return
                    inflater = isal_zlib.decompressobj(16 + zlib.MAX_WBITS)
        except _INFLATE_ERRORS as exc:
            raise ImageRejected(f"the layer's gzip stream is corrupt: {exc}") from None

    def _expect_zeros(self, data: bytes) -> None:
        while data:
            if data.strip(b"\0"):
                raise ImageRejected("the layer has data after the end of its gzip stream")
            data = self._read()

    def _unzstd(self, head: bytes) -> Iterator[bytes]:
        frames = ZstdFrames()
        raw = cast("IO[bytes]", _RawReader(self, head, frames))  # it only calls read()
        decompressor = zstandard.ZstdDecompressor(max_window_size=_ZSTD_WINDOW_MAX)
        reader = decompressor.stream_reader(raw, read_size=READ_SIZE, read_across_frames=True,
                                            closefd=False)
        try:
            while out := reader.read(OUTPUT_SIZE):
                yield out
        except zstandard.ZstdError as exc:
            raise ImageRejected(f"the layer's zstd stream is corrupt: {exc}") from None
        if not frames.complete:
            raise ImageRejected("the layer's zstd stream is truncated")


class _RawReader:
    """What the zstd reader reads from: the blob's first bytes, then the source; every
    byte passes through the frame tracker."""

    def __init__(self, stream: LayerStream, head: bytes, frames: ZstdFrames) -> None:
        self._stream = stream
        self._head = head
        self._frames = frames

    def read(self, size: int = READ_SIZE) -> bytes:
        data = self._head or self._stream._read(size)
        self._head = b""
        self._frames.feed(data)
        return data


class ZstdFrames:
    """Follows the frame and block headers of a zstd stream (RFC 8878) as it is read.

    zstandard's stream reader ends quietly when its input stops in the middle of a frame;
    this tells a cut stream from a whole one. Block contents are skipped, not read.
    """

    def __init__(self) -> None:
        self._state = "magic"
        self._want = 4      # header bytes the state needs
        self._have = b""
        self._skip = 0      # bytes to pass before the next header
        self._checksum = False

    @property
    def complete(self) -> bool:
        return self._state == "magic" and not self._have and not self._skip

    def feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            take = data[pos:pos + self._want - len(self._have)]
            pos += len(take)
            self._have += take
            if len(self._have) == self._want:
                header, self._have = self._have, b""
                self._advance(header)

    def _advance(self, header: bytes) -> None:
        value = int.from_bytes(header, "little")
        if self._state == "magic":
            if header == ZSTD_MAGIC:
                self._state, self._want = "descriptor", 1
            elif value & 0xFFFFFFF0 == 0x184D2A50:  # a skippable frame
                self._state, self._want = "skippable", 4
            else:
                raise ImageRejected("the layer's zstd stream is corrupt: not a zstd frame")
        elif self._state == "skippable":
            self._skip = value
            self._state, self._want = "magic", 4
        elif self._state == "descriptor":
            single_segment = value >> 5 & 1
            self._checksum = bool(value >> 2 & 1)
            window = 0 if single_segment else 1
            dictionary = (0, 1, 2, 4)[value & 3]
            content_size = (single_segment, 2, 4, 8)[value >> 6]
            self._skip = window + dictionary + content_size
            self._state, self._want = "block", 3
        else:  # a block header: last-block bit, type, size
            kind, size = value >> 1 & 3, value >> 3
            if kind == 3:
                raise ImageRejected("the layer's zstd stream is corrupt: reserved block type")
            self._skip = 1 if kind == 1 else size  # an RLE block stores one byte
            if value & 1:
                self._skip += 4 if self._checksum else 0
                self._state, self._want = "magic", 4


class ReadAhead(Iterator[T]):
    """Runs ``items`` in a thread, at most ``depth`` items ahead of the consumer; its
    exception is raised in the consumer. ``close()`` stops it and waits for it."""

    _END = object()

    def __init__(self, items: Iterator[T], depth: int = 8) -> None:
        self._items = items
        self._queue: queue.Queue[object] = queue.Queue(depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name="layer-read-ahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._items:
                self._queue.put(item)
                if self._stop.is_set():
                    return
            self._queue.put(self._END)
        except BaseException as exc:  # noqa: B036 - handed to the consumer, which raises it
            self._queue.put(exc)

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is self._END:
            self._done = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item  # type: ignore[return-value]

    def close(self) -> None:
        """Stops the thread between two items (a read of the source under way finishes)."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)  # a put blocked on a full queue goes through
            except queue.Empty:
                pass
        self._thread.join()
