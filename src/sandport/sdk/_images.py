"""Everything the images API does that is not I/O: URLs, calls, the streamed answers of
pulls, pushes and builds, and upload bodies (``Images`` and ``AsyncImages`` send them;
a directory's build context is made in _context.py).

Streamed answers are NDJSON: progress events, then one result line (``{"image": ...}``,
a push's ``{"pushed": ..., "image": ...}``) or an error object. An error line comes after
the HTTP 200, so its class is read from its code (``error_from_code``), not a status.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from types import TracebackType
from typing import IO, Any, Generic, TypeVar
from urllib.parse import quote, urlencode

from ..errors import SandportError, ValidationFailed, error_from_code
from ..models import ImageInfo, PushResult
from ..settings import ClientSettings
from ._base import Call, _api_headers
from ._context import ContextTar, dockerfile_name

T = TypeVar("T")

Event = dict[str, Any]
OnEvent = Callable[[Event], None]
OnUpload = Callable[[int, "int | None"], None]  # (bytes sent, total or None if unknown)
Source = str | os.PathLike[str] | bytes | IO[bytes]
BuildContext = Source  # a directory is made into a tar; a tar file or bytes go as they are

# A pull or build line can be minutes apart: unpacking a big layer sends none meanwhile.
STREAM_TIMEOUT_S = 900.0
# An import's answer comes once the whole archive is sent and its layers are unpacked.
IMPORT_TIMEOUT_S = 3600.0
DELETE_TIMEOUT_S = 120.0  # removing an image's unshared layers from disk
UPLOAD_CHUNK = 1 << 20
RESULT_KEYS = ("image", "pushed")


def image_path(name: str) -> str:
    """``name`` as it goes into a URL path: ``/`` and ``:`` kept (the server routes the
    rest of the path as the name), everything not URL-safe quoted. Names that a URL
    would rewrite (empty or dot segments) are refused here, before they reach another
    route."""
    if not isinstance(name, str) or not name or any(
            segment in ("", ".", "..") for segment in name.split("/")):
        raise ValidationFailed(f"{name!r} is not an image name; names look like 'python', "
                               "'node:22' or 'registry.example.com:5000/team/app:1'")
    return quote(name, safe="/:@")


def image_url(settings: ClientSettings, name: str, verb: str | None = None) -> str:
    url = f"{settings.base_url}/api/images/{image_path(name)}"
    return f"{url}/{verb}" if verb else url


def _ref(ref: str) -> str:
    if not isinstance(ref, str) or not ref.strip():
        raise ValidationFailed(f"{ref!r} is not an image reference such as 'node:22'")
    return ref


def _image_of(body: Any) -> ImageInfo:
    return ImageInfo.from_wire(body["image"])


def _pushed(body: Any) -> PushResult:
    return PushResult.from_wire(body["pushed"])


def list_call(settings: ClientSettings) -> Call[list[ImageInfo]]:
    return Call("GET", f"{settings.base_url}/api/images",
                lambda body: [ImageInfo.from_wire(i) for i in body["images"]],
                headers=_api_headers(settings))


def get_call(settings: ClientSettings, name: str) -> Call[ImageInfo]:
    return Call("GET", image_url(settings, name), ImageInfo.from_wire,
                headers=_api_headers(settings))


def delete_call(settings: ClientSettings, name: str) -> Call[None]:
    return Call("DELETE", image_url(settings, name), lambda body: None,
                headers=_api_headers(settings), timeout_s=DELETE_TIMEOUT_S)


def pull_call(settings: ClientSettings, ref: str) -> Call[ImageInfo]:
    """Streamed: read the answer with ``ImageStream``."""
    return Call("POST", f"{settings.base_url}/api/images/pull", _image_of, {"ref": _ref(ref)},
                _api_headers(settings), STREAM_TIMEOUT_S)


def push_call(settings: ClientSettings, name: str, ref: str) -> Call[PushResult]:
    """Streamed: read the answer with ``ImageStream``."""
    return Call("POST", image_url(settings, name, "push"), _pushed, {"ref": _ref(ref)},
                _api_headers(settings), STREAM_TIMEOUT_S)


def build_call(settings: ClientSettings, name: str, *, with_context: bool = False,
               dockerfile: str | None = None, build_args: Mapping[str, str] | None = None,
               network: str | None = None, target: str | None = None,
               start_command: str | None = None, ready_command: str | None = None,
               vcpus: int | None = None, mem_mib: int | None = None) -> Call[ImageInfo]:
    """Streamed: read the answer with ``ImageStream``. Without a context (an empty body) the
    server builds a built-in image again; with one the body is its tar (``build_upload``)
    and the options go in the query, each build arg as one ``buildarg=K=V``."""
    query: list[tuple[str, str]] = []
    for key, value in (("dockerfile", dockerfile), ("network", network), ("target", target),
                       ("startCommand", start_command), ("readyCommand", ready_command),
                       ("vcpus", vcpus), ("memMiB", mem_mib)):
        if value is not None:
            query.append((key, str(value)))
    for arg, value in (build_args or {}).items():
        if not isinstance(arg, str) or not arg or "=" in arg or not isinstance(value, str):
            raise ValidationFailed(f"build arg {arg!r}={value!r}: names are non-empty "
                                   "strings without '=', values strings")
        query.append(("buildarg", f"{arg}={value}"))
    if query and not with_context:
        raise ValidationFailed("a Dockerfile, build args, a network, a target, start or ready "
                               "commands and step limits need a build context")
    headers = _api_headers(settings)
    if with_context:
        headers["content-type"] = "application/x-tar"
    url = image_url(settings, name, "build") + (f"?{urlencode(query)}" if query else "")
    return Call("POST", url, _image_of, headers=headers, timeout_s=STREAM_TIMEOUT_S)


def dockerfile_param(context: BuildContext | None, dockerfile: str | None) -> str | None:
    """The ``dockerfile`` query value: checked and cleaned against a directory context,
    as given for an archive (only the server can look inside that)."""
    if dockerfile is None:
        return None
    if isinstance(context, str | os.PathLike) and os.path.isdir(context):
        return dockerfile_name(dockerfile)
    return dockerfile


def build_upload(context: BuildContext, dockerfile: str | None = None,
                 on_progress: OnUpload | None = None) -> Upload:
    """A build's body: the tar of a directory made as it is sent, or a tar archive (a path,
    bytes, a binary file) sent as it is."""
    if isinstance(context, str | os.PathLike) and os.path.isdir(context):
        upload = Upload(ContextTar(context, dockerfile), on_progress)
    else:
        upload = Upload(context, on_progress)
    if upload.total == 0:
        upload.close()  # an empty body would ask for a built-in image instead
        raise ValidationFailed("the build context is empty: give a directory or a tar archive")
    return upload


def import_call(settings: ClientSettings, name: str) -> Call[ImageInfo]:
    """The body is the archive itself (an ``Upload``), not JSON."""
    return Call("POST", image_url(settings, name, "import"), _image_of,
                headers={**_api_headers(settings), "content-type": "application/x-tar"},
                timeout_s=IMPORT_TIMEOUT_S)


class ImageStream(Generic[T]):
    """Reads a streamed answer line by line: ``feed`` hands back each progress event (None
    for blank lines and the result), raises on an error line; ``result`` is the last line
    parsed by the call."""

    def __init__(self, call: Call[T]) -> None:
        self._parse = call.parse_body
        self._result: T | None = None
        self._done = False

    def feed(self, line: str) -> Event | None:
        if not line.strip():
            return None
        try:
            event = json.loads(line)
        except ValueError:
            raise SandportError("the server sent a progress line that is not JSON") from None
        if not isinstance(event, dict):
            raise SandportError("the server sent a progress line that is not an object")
        if "error" in event:
            raise error_from_code(event)
        # A result's value is an object: a build's {"status": "pulling", "image": ref} is not.
        if any(isinstance(event.get(key), dict) for key in RESULT_KEYS):
            self._result, self._done = self._parse(event), True
            return None
        return event

    def result(self) -> T:
        if not self._done:
            raise SandportError("the server's answer ended before its result (the "
                                "connection broke or the server stopped); the work may "
                                "still finish there: list the images to see")
        return self._result  # type: ignore[return-value]  # set with _done


def _remaining_size(fh: IO[bytes]) -> int | None:
    """Bytes left in a regular file from where it stands; None for pipes and sockets."""
    try:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            return None
        return max(0, info.st_size - fh.tell())
    except (OSError, ValueError, AttributeError):
        return None


class Upload:
    """An import's or a build's body: read in chunks (never whole: archives can be GBs),
    each one reported to ``on_progress(sent, total)``. A path or a ``ContextTar`` is opened
    here and closed on exit; a file object given is read from where it stands and left open."""

    def __init__(self, source: Source | ContextTar, on_progress: OnUpload | None = None
                 ) -> None:
        self._on_progress = on_progress
        self._data: bytes | None = None
        self._file: IO[bytes] | None = None
        self._owned = False
        if isinstance(source, ContextTar):
            self._file, self._owned = io.BufferedReader(source, UPLOAD_CHUNK), True
            self.total: int | None = source.size
        elif isinstance(source, bytes | bytearray | memoryview):
            self._data = bytes(source)
            self.total = len(self._data)
        elif isinstance(source, str | os.PathLike):
            try:
                self._file = open(source, "rb")  # closed by close()
            except OSError as exc:
                raise ValidationFailed(f"cannot read {os.fspath(source)}: "
                                       f"{exc.strerror or exc}") from None
            self._owned = True
            self.total = _remaining_size(self._file)
        else:
            self._file = source
            self.total = _remaining_size(source)
        self.sent = 0

    @property
    def headers(self) -> dict[str, str]:
        """A known length is declared, so the server can refuse an archive over its cap
        before any of it is sent; an unknown one goes chunked."""
        return {} if self.total is None else {"content-length": str(self.total)}

    def _sent(self, chunk: bytes) -> bytes:
        self.sent += len(chunk)
        if self._on_progress is not None:
            self._on_progress(self.sent, self.total)
        return chunk

    def _slices(self) -> Iterator[bytes]:
        assert self._data is not None
        for start in range(0, len(self._data), UPLOAD_CHUNK):
            yield self._data[start:start + UPLOAD_CHUNK]

    def chunks(self) -> Iterator[bytes]:
        if self._data is not None:
            yield from map(self._sent, self._slices())
            return
        assert self._file is not None
        while chunk := self._file.read(UPLOAD_CHUNK):
            yield self._sent(chunk)

    async def achunks(self) -> AsyncIterator[bytes]:
        """``chunks`` for httpx.AsyncClient: file reads run in a thread, off the loop."""
        if self._data is not None:
            for piece in self._slices():
                yield self._sent(piece)
            return
        assert self._file is not None
        while chunk := await asyncio.to_thread(self._file.read, UPLOAD_CHUNK):
            yield self._sent(chunk)

    def close(self) -> None:
        if self._owned and self._file is not None:
            self._file.close()

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
