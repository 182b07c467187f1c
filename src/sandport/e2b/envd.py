"""The E2B face's in-sandbox API (what E2B runs as ``envd`` on port 49983), served here.

The edge maps a sandbox's ``49983-{id}`` host, and the control host's requests that name a
sandbox in ``E2b-Sandbox-Id`` / ``E2b-Sandbox-Port: 49983`` (the SDK's ``E2B_SANDBOX_URL``),
to ``/envd/{id}/...`` here, marked as the runtime routes are (server/app.py). Every route
but ``/health`` wants the sandbox's envd access token (``X-Access-Token``, or a signed file
URL), checked before anything of the request is read. Processes and files are the runtime
API's own: the same registry, agent channels and SandboxFS, seen through both faces.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import os
import re
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .. import ids
from ..errors import SandportError
from ..runtime.fswatch import DirectoryWatch
from ..runtime.sandboxfs import SandboxFS, acting_as, client_errors
from ..runtime_api import processes
from ..runtime_api.files import TRANSFER_CHUNK, in_thread, write_all, write_stream
from ..runtime_api.process_state import ProcessSession
from ..runtime_api.watches import WatchRegistry, WatchSession
from ..store import SandboxRecord, Store
from . import envd_wire as w
from .connect import (
    DIGITS,
    MAX_MESSAGE_BYTES,
    STREAM_TYPE,
    UNARY_TYPE,
    ConnectError,
    dumps,
    end_stream,
    envelope,
    parse_message,
    timeout_ms,
    unwrap,
)

log = logging.getLogger("sandport.e2b.envd")
T = TypeVar("T")
PREFIX = "/envd/{id}"
KEEPALIVE_S = 30.0  # when the client names no Keepalive-Ping-Interval
MAX_UPLOAD_PARTS = 1000
MAX_PART_HEADERS = 16 << 10
_UNIX_TIME = re.compile(r"[0-9]{1,12}")
Message = dict[str, Any]


# -- who may ------------------------------------------------------------------------------
def expected_token(request: Request) -> str:
    return w.access_token(request.app.state.ctx.envd_secret, request.path_params["id"])


def _token_matches(request: Request) -> bool:
    given = request.headers.get("x-access-token")
    return given is not None and hmac.compare_digest(given.encode(),
                                                     expected_token(request).encode())


def _check_token(request: Request) -> None:
    if request.headers.get("x-access-token") is None:
        raise ConnectError("unauthenticated", "missing X-Access-Token: send the sandbox's "
                           "envdAccessToken (in the create and connect answers)")
    if not _token_matches(request):
        raise ConnectError("unauthenticated", "invalid X-Access-Token for this sandbox")


async def running_record(request: Request) -> SandboxRecord:
    """The sandbox, running (a paused one with autoResume is resumed first); else the
    error E2B's proxy gives for a sandbox that is gone ("... was not found")."""
    ctx = request.app.state.ctx
    store: Store = ctx.store
    sandbox_id = request.path_params["id"]
    record = await store.get_sandbox(sandbox_id) if ids.is_sandbox_id(sandbox_id) else None
    if record is None or record.status not in ("active", "paused", "creating"):
        raise ConnectError("unavailable", f"The sandbox {sandbox_id} was not found")
    if record.status == "paused":
        if not record.auto_resume or not await ctx.sandboxes.wake(record.id):
            raise ConnectError("unavailable", f"The sandbox {sandbox_id} is paused: connect "
                               "to it (Sandbox.connect) to resume it")
        record = await store.get_sandbox(sandbox_id)
    if record is None or record.status != "active":
        raise ConnectError("unavailable", f"The sandbox {sandbox_id} is still starting")
    ctx.sandboxes.activity.touch(record.id)
    return record


def basic_user(request: Request) -> str | None:
    """The user a call runs as: ``Authorization: Basic base64("name:")``; None, the
    image's own user."""
    value = request.headers.get("authorization")
    if not value:
        return None
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic":
        raise ConnectError("unauthenticated", "Authorization must be Basic base64(user:)")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, ValueError):
        raise ConnectError("invalid_argument", "Authorization: Basic is not base64 of "
                           "user:") from None
    return decoded.partition(":")[0] or None


async def on_fs(request: Request, record: SandboxRecord, user_name: str | None,
                op: Callable[[SandboxFS], T]) -> T:
    """``op`` as the user (the image's when None), relative paths from the user's home
    (envd's rule), in a worker thread."""
    user = await processes.user_of(request, record.id, user_name)
    runtime = request.app.state.ctx.runtime

    def work() -> T:
        root = runtime.open_root(record.id)
        try:
            with acting_as(user):
                return op(SandboxFS(root, user.home, user))
        finally:
            os.close(root)

    return await in_thread(work)


async def _body(request: Request, limit: int = MAX_MESSAGE_BYTES) -> bytes:
    declared = request.headers.get("content-length")
    if declared and DIGITS.fullmatch(declared) and int(declared) > limit:
        raise ConnectError("resource_exhausted", f"the message is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ConnectError("resource_exhausted", f"the message is larger than {limit} "
                               "bytes")
    return bytes(body)


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def _connect_error(exc: Exception) -> ConnectError:
    if isinstance(exc, ConnectError):
        return exc
    if isinstance(exc, SandportError):
        if exc.status >= 500:
            log.error("envd call failed: %s", exc.message)
        return ConnectError.of(exc)
    log.exception("envd call failed", exc_info=exc)
    return ConnectError("internal", "internal error")


# -- process.Process ----------------------------------------------------------------------
def _keepalive_s(request: Request) -> float:
    value = request.headers.get("keepalive-ping-interval", "")
    return float(min(3600, max(1, int(value)))) if DIGITS.fullmatch(value) else KEEPALIVE_S


async def _follow(session: ProcessSession, after_seq: int,
                  keepalive_s: float) -> AsyncIterator[Message]:
    pty = session.pty is not None
    async for chunk in session.follow(after_seq, keepalive_s):
        if chunk is None:
            yield w.KEEPALIVE
        else:
            yield w.data_event(chunk.stream, chunk.data, pty)
    if not session.running:
        yield w.end_event(session)


async def start(request: Request, message: Message, deadline_ms: int | None,
                record: SandboxRecord) -> AsyncIterator[Message]:
    """The process's life: its pid, its output as it comes, how it ended. The process
    outlives the stream (a client that goes away leaves it running); the call's deadline
    is the process's, as envd's is."""
    launch, tag = w.parse_start(message, basic_user(request), deadline_ms)
    keepalive = _keepalive_s(request)
    if tag is not None and any(s.tag == tag and s.running for s in _sessions(request, record)):
        raise ConnectError("already_exists", f"a running process has the tag {tag!r}")
    session = await processes.launch(request, record.id, launch, "proc", pin=True, tag=tag)
    yield w.start_event(session.pid or 0)
    async for event in _follow(session, 0, keepalive):
        yield event


async def attach(request: Request, message: Message, deadline_ms: int | None,
                 record: SandboxRecord) -> AsyncIterator[Message]:
    """``Connect``: a running process's output from now on, and its end."""
    session = _selected(request, record, message)
    yield w.start_event(session.pid or 0)
    async for event in _follow(session, session.last_seq, _keepalive_s(request)):
        yield event


def _sessions(request: Request, record: SandboxRecord) -> list[ProcessSession]:
    found = processes.registry(request)
    return [*found.of_sandbox(record.id, terminals=False),
            *found.of_sandbox(record.id, terminals=True)]


def _selected(request: Request, record: SandboxRecord, message: Message) -> ProcessSession:
    by, key = w.parse_selector(message)
    return processes.registry(request).running_one(record.id, by, key)


async def list_processes(request: Request, message: Message, record: SandboxRecord) -> Message:
    return {"processes": [w.process_info(s) for s in _sessions(request, record)
                          if s.running]}


async def send_input(request: Request, message: Message, record: SandboxRecord) -> Message:
    data = w.parse_input(message)
    _selected(request, record, message).write_stdin(data)
    return {}


async def send_signal(request: Request, message: Message, record: SandboxRecord) -> Message:
    signum = w.parse_signal(message)
    session = _selected(request, record, message)
    if signum == 9:
        session.kill()  # the whole process group, as the runtime API's kill
    else:
        session.send_signal(signum)
    return {}


async def close_stdin(request: Request, message: Message, record: SandboxRecord) -> Message:
    _selected(request, record, message).close_stdin()
    return {}


async def update(request: Request, message: Message, record: SandboxRecord) -> Message:
    rows, cols = w.parse_size(message)
    session = _selected(request, record, message)
    if session.pty is None:
        raise ConnectError("invalid_argument", "the process has no terminal to resize")
    session.resize(rows, cols)
    return {}


async def stream_input(request: Request, message: Message, record: SandboxRecord) -> Message:
    raise ConnectError("unimplemented", "StreamInput (a client stream) is not served: send "
                       "input with SendInput")


# -- filesystem.Filesystem ----------------------------------------------------------------
async def stat(request: Request, message: Message, record: SandboxRecord) -> Message:
    path = w.path_of(message)
    info = await on_fs(request, record, basic_user(request), lambda fs: fs.stat(path))
    return {"entry": w.entry(info)}


async def make_dir(request: Request, message: Message, record: SandboxRecord) -> Message:
    """With its parents; ``already_exists`` when it was there (the SDK's False)."""
    path = w.path_of(message)

    def make(fs: SandboxFS) -> Any:
        return fs.mkdir(path, parents=True), fs.stat(path)

    created, info = await on_fs(request, record, basic_user(request), make)
    if not created:
        raise ConnectError("already_exists", f"{info.path}: already exists")
    return {"entry": w.entry(info)}


async def move(request: Request, message: Message, record: SandboxRecord) -> Message:
    source, destination = w.path_of(message, "source"), w.path_of(message, "destination")
    info = await on_fs(request, record, basic_user(request),
                       lambda fs: fs.move(source, destination, overwrite=True))
    return {"entry": w.entry(info)}


async def list_dir(request: Request, message: Message, record: SandboxRecord) -> Message:
    path, depth = w.path_of(message), w.depth_of(message)
    entries, _ = await on_fs(request, record, basic_user(request),
                             lambda fs: fs.list_dir(path, depth))
    return {"entries": [w.entry(e) for e in entries]}


async def remove(request: Request, message: Message, record: SandboxRecord) -> Message:
    path = w.path_of(message)
    await on_fs(request, record, basic_user(request),
                lambda fs: fs.remove(path, recursive=True))
    return {}


# -- watches ------------------------------------------------------------------------------
def _watches(request: Request) -> WatchRegistry:
    found: WatchRegistry = request.app.state.ctx.sessions.watches
    return found


async def _open_watch(request: Request, record: SandboxRecord, message: Message) -> WatchSession:
    path, recursive = w.watch_request(message)
    inotify = _watches(request).inotify

    def open_watch(fs: SandboxFS) -> DirectoryWatch:
        absolute = fs.absolute(path)
        with client_errors(absolute):
            return DirectoryWatch(inotify, fs.root_fd, absolute, recursive)

    watch = await on_fs(request, record, basic_user(request), open_watch)
    return _watches(request).add(record.id, watch)


async def watch_dir(request: Request, message: Message, deadline_ms: int | None,
                    record: SandboxRecord) -> AsyncIterator[Message]:
    """A watch for as long as the stream lasts: its start, then each event."""
    keepalive = _keepalive_s(request)
    session = await _open_watch(request, record, message)
    try:
        yield {"start": {}}
        cursor = 0
        while True:
            changed = session.changed  # (taken first: events recorded while we send set it)
            for event in [e for e in session.events if e["seq"] > cursor]:
                cursor = event["seq"]
                yield {"filesystem": w.fs_event(session.path, event)}
            if not session.active:
                raise ConnectError("unavailable" if session.error is None else "not_found",
                                   session.error or "the watch ended")
            if session.last_seq > cursor:
                continue
            try:
                await asyncio.wait_for(changed.wait(), keepalive)
            except TimeoutError:
                yield {"keepalive": {}}
    finally:
        _watches(request).stop(session)


async def create_watcher(request: Request, message: Message, record: SandboxRecord) -> Message:
    session = await _open_watch(request, record, message)
    return {"watcherId": session.id}


def _watcher(request: Request, record: SandboxRecord, message: Message) -> WatchSession:
    return _watches(request).get(record.id, w.watcher_id(message))


async def get_watcher_events(request: Request, message: Message,
                             record: SandboxRecord) -> Message:
    """The events since the last call (within the watch's buffer)."""
    session = _watcher(request, record, message)
    if not session.active:
        raise ConnectError("not_found", f"watcher {session.id} has ended"
                           + (f": {session.error}" if session.error else ""))
    events = [e for e in session.events if e["seq"] > session.read_seq]
    session.read_seq = session.last_seq
    return {"events": [w.fs_event(session.path, e) for e in events]}


async def remove_watcher(request: Request, message: Message, record: SandboxRecord) -> Message:
    _watches(request).stop(_watcher(request, record, message))
    return {}


Streaming = Callable[[Request, Message, "int | None", SandboxRecord], AsyncIterator[Message]]
Unary = Callable[[Request, Message, SandboxRecord], Awaitable[Message]]
STREAMS: dict[str, Streaming] = {
    "process.Process/Start": start,
    "process.Process/Connect": attach,
    "filesystem.Filesystem/WatchDir": watch_dir,
}
UNARY: dict[str, Unary] = {
    "process.Process/List": list_processes,
    "process.Process/SendInput": send_input,
    "process.Process/SendSignal": send_signal,
    "process.Process/CloseStdin": close_stdin,
    "process.Process/Update": update,
    "process.Process/StreamInput": stream_input,
    "filesystem.Filesystem/Stat": stat,
    "filesystem.Filesystem/MakeDir": make_dir,
    "filesystem.Filesystem/Move": move,
    "filesystem.Filesystem/ListDir": list_dir,
    "filesystem.Filesystem/Remove": remove,
    "filesystem.Filesystem/CreateWatcher": create_watcher,
    "filesystem.Filesystem/GetWatcherEvents": get_watcher_events,
    "filesystem.Filesystem/RemoveWatcher": remove_watcher,
}


async def rpc(request: Request) -> Response:
    """One Connect call: the token first, then the content type, then the message."""
    name = f"{request.path_params['service']}/{request.path_params['method']}"
    streaming = STREAMS.get(name)
    try:
        if streaming is None and name not in UNARY:
            raise ConnectError("unimplemented", f"{name} is not a method this server serves")
        _check_token(request)
        wanted = UNARY_TYPE if streaming is None else STREAM_TYPE
        if _content_type(request) != wanted:
            raise ConnectError("invalid_argument", f"{name} takes Content-Type: {wanted} (the "
                               "Connect protocol with the JSON codec)")
        record = await running_record(request)
        if streaming is None:
            answer = await UNARY[name](request, parse_message(await _body(request)), record)
            return Response(dumps(answer), media_type=UNARY_TYPE)
        message = unwrap(await _body(request))
        deadline = timeout_ms(request.headers.get("connect-timeout-ms"))
        events = streaming(request, message, deadline, record)
        # Start's deadline is the process's own (it is killed, and its end is sent).
        return _stream(events, None if name.endswith("/Start") else deadline)
    except Exception as exc:  # every error is the client's answer, in Connect's form
        error = _connect_error(exc)
        if streaming is not None:
            return _stream(_fails(error), None)
        return JSONResponse(error.to_wire(), status_code=error.status)


async def _fails(error: ConnectError) -> AsyncIterator[Message]:
    raise error
    yield {}  # (an async generator)


def _stream(events: AsyncIterator[Message], deadline_ms: int | None) -> StreamingResponse:
    return StreamingResponse(_frames(events, deadline_ms), media_type=STREAM_TYPE,
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


async def _frames(events: AsyncIterator[Message], deadline_ms: int | None) -> AsyncIterator[bytes]:
    """Each message enveloped; the end of the stream says how it ended. The deadline is
    checked around each wait for a message, never across a send to the client."""
    loop = asyncio.get_running_loop()
    deadline = None if deadline_ms is None else loop.time() + deadline_ms / 1000
    iterator = aiter(events)
    try:
        while True:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise TimeoutError
            try:
                message = await asyncio.wait_for(anext(iterator), left)
            except StopAsyncIteration:
                break
            yield envelope(message)
    except TimeoutError:
        yield end_stream(ConnectError("deadline_exceeded", "the call's deadline passed"))
        return
    except Exception as exc:
        yield end_stream(_connect_error(exc))
        return
    yield end_stream()


# -- plain HTTP: /health, /files ----------------------------------------------------------
def _http_error(error: ConnectError | SandportError) -> JSONResponse:
    """envd's HTTP errors: ``{code: <status>, message}``; a sandbox that is gone is the
    proxy's 502, as on E2B."""
    if isinstance(error, ConnectError):
        status = 502 if error.code == "unavailable" else error.status
        return JSONResponse({"code": status, "message": error.message}, status_code=status)
    return JSONResponse({"code": error.status, "message": error.message},
                        status_code=error.status)


async def health(request: Request) -> Response:
    """Whether the sandbox runs (204), for anyone: it wakes nothing and counts as no
    activity (that takes the token)."""
    sandbox_id = request.path_params["id"]
    store: Store = request.app.state.ctx.store
    record = await store.get_sandbox(sandbox_id) if ids.is_sandbox_id(sandbox_id) else None
    if record is None or record.status not in ("active", "paused", "creating"):
        return _http_error(ConnectError("unavailable", f"The sandbox {sandbox_id} was not "
                                        "found"))
    if record.status != "active":
        return _http_error(ConnectError("unavailable", f"The sandbox {sandbox_id} is "
                                        f"{'paused' if record.status == 'paused' else 'starting'}"))
    return Response(status_code=204)


def _file_access(request: Request, operation: str) -> tuple[str, str | None]:
    """The path and user of a ``/files`` call, checked: the access token, or a URL signed
    with it for this path, operation and user (and not expired)."""
    query = request.query_params
    user = query.get("username") or None
    path = query.get("path", "")
    signature = query.get("signature")
    if signature is None or _token_matches(request):
        _check_token(request)
    else:
        expires = query.get("signature_expiration")
        if expires is not None and not _UNIX_TIME.fullmatch(expires):
            raise ConnectError("invalid_argument", "signature_expiration must be a Unix time")
        expected = w.file_signature(path, operation, user or "", expected_token(request),
                                    None if expires is None else int(expires))
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            raise ConnectError("unauthenticated", f"the signature does not allow {operation} "
                               "of this path as this user")
        if expires is not None and int(expires) < time.time():
            raise ConnectError("unauthenticated", "the signed URL has expired")
    if "\x00" in path:
        raise ConnectError("invalid_argument", "path must not hold NUL bytes")
    return path, user


async def download(request: Request) -> Response:
    try:
        path, user = _file_access(request, "read")
        if not path:
            raise ConnectError("invalid_argument", "path is required")
        record = await running_record(request)
        fd, size = await on_fs(request, record, user, lambda fs: fs.open_read(path))
    except (ConnectError, SandportError) as exc:
        return _http_error(exc)
    gzip = _accepts_gzip(request.headers.get("accept-encoding", "")) and \
        await _worth_compressing(fd, size)
    headers = {"content-encoding": "gzip"} if gzip else {"content-length": str(size)}
    return StreamingResponse(_read_chunks(fd, size, gzip), headers=headers,
                             media_type="application/octet-stream")


async def _worth_compressing(fd: int, size: int) -> bool:
    """Whether the file's start shrinks by a tenth at gzip's fastest level. Clients ask for
    gzip whatever they fetch (httpx always does); compressed or random bytes would only cost
    the server CPU, so they go as they are (identity is always acceptable)."""
    if size < 1024:
        return False

    def shrinks() -> bool:
        sample = os.pread(fd, min(size, 64 << 10), 0)
        return len(zlib.compress(sample, 1)) < 0.9 * len(sample)

    try:
        return await in_thread(shrinks)
    except BaseException:
        os.close(fd)
        raise


def _accepts_gzip(header: str) -> bool:
    for item in header.lower().split(","):
        name, _, params = item.partition(";")
        if name.strip() == "gzip":
            quality = params.strip().removeprefix("q=").strip()
            return not quality or quality.strip("0.") != ""
    return False


async def _read_chunks(fd: int, size: int, gzip: bool) -> AsyncIterator[bytes]:
    """The file, a chunk at a time; compressed in the worker thread too (level 1: a
    download is not held up for a few percent of size)."""
    packer = zlib.compressobj(1, zlib.DEFLATED, 31) if gzip else None
    offset = 0
    try:
        while offset < size:
            chunk = await in_thread(os.pread, fd, min(TRANSFER_CHUNK, size - offset), offset)
            if not chunk:
                break  # the file shrank while it was sent
            offset += len(chunk)
            out = chunk if packer is None else await in_thread(packer.compress, chunk)
            if out:
                yield out
        if packer is not None:
            yield packer.flush()
    finally:
        os.close(fd)


async def upload(request: Request) -> Response:
    """``application/octet-stream`` (one file at ``?path=``, gzip if its Content-Encoding
    says so) or ``multipart/form-data`` (each ``file`` part at its file name, or the one
    part at ``?path=``); missing directories are made. The answer lists what was written."""
    try:
        path, user = _file_access(request, "write")
        record = await running_record(request)
        kind = _content_type(request)
        if kind == "multipart/form-data":
            written = await _multipart(request, record, path or None, user)
        else:
            if not path:
                raise ConnectError("invalid_argument", "path is required")
            encoding = request.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("identity", "gzip"):
                raise ConnectError("invalid_argument", "Content-Encoding must be gzip or none")
            body = request.stream()
            written = [await _write_file(request, record, path, user,
                                         _gunzip(body) if encoding == "gzip" else body)]
    except (ConnectError, SandportError) as exc:
        return _http_error(exc)
    return JSONResponse([w.written(info) for info in written])


async def _write_file(request: Request, record: SandboxRecord, path: str, user: str | None,
                      body: AsyncIterator[bytes]) -> Any:
    fd = await on_fs(request, record, user, lambda fs: fs.open_write(path))
    await write_stream(fd, body, path)
    return await on_fs(request, record, user, lambda fs: fs.stat(path))


async def _gunzip(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A gzip body (one member or several, as gzip allows) inflated as it streams, at most
    TRANSFER_CHUNK out per step, in the worker thread (the disk's quota bounds what a small
    body may inflate to). Bytes after a member that begin no other are refused."""
    unpacker = zlib.decompressobj(31)
    try:
        async for chunk in body:
            data = chunk
            while data:
                if unpacker.eof:  # a member ended: another must begin here
                    if not data.startswith(b"\x1f\x8b"[:len(data)]):
                        raise ConnectError("invalid_argument",
                                           "data after the end of the gzip body")
                    unpacker = zlib.decompressobj(31)
                out = await in_thread(unpacker.decompress, data, TRANSFER_CHUNK)
                if out:
                    yield out
                data = unpacker.unconsumed_tail or unpacker.unused_data
        if not unpacker.eof:
            raise ConnectError("invalid_argument", "the gzip body ended early")
    except zlib.error:
        raise ConnectError("invalid_argument", "the body is not valid gzip") from None


async def _multipart(request: Request, record: SandboxRecord, path: str | None,
                     user: str | None) -> list[Any]:
    """Each part streamed into its file (never whole in memory, never on the host's disk)."""
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 70:  # RFC 2046's most
        raise ConnectError("invalid_argument", "multipart/form-data needs a boundary of 1 "
                           "to 70 characters")
    events: list[tuple[str, bytes]] = []

    def note(kind: str) -> Callable[..., None]:
        def on(data: bytes | None = None, start: int = 0, end: int = 0) -> None:
            events.append((kind, b"" if data is None else bytes(data[start:end])))
        return on

    callbacks: Any = {name: note(name) for name in (
        "on_part_begin", "on_header_field", "on_header_value", "on_header_end",
        "on_headers_finished", "on_part_data", "on_part_end")}
    parser = MultipartParser(boundary, callbacks)
    upload_part = _PartWriter(request, record, path, user)
    try:
        async for chunk in request.stream():
            try:
                parser.write(chunk)
            except Exception as exc:  # python-multipart's parse errors
                raise ConnectError("invalid_argument", f"bad multipart body: {exc}") from None
            for kind, data in events:
                await upload_part.on(kind, data)
            events.clear()
        parser.finalize()
        if upload_part.open_fd is not None:
            raise ConnectError("invalid_argument", "the multipart body ended inside a part")
    finally:
        upload_part.close()
    if not upload_part.written:
        raise ConnectError("invalid_argument", "the multipart body holds no file part")
    return upload_part.written


class _PartWriter:
    """One multipart upload's parts, each written where its name says."""

    def __init__(self, request: Request, record: SandboxRecord, path: str | None,
                 user: str | None) -> None:
        self.request, self.record, self.path, self.user = request, record, path, user
        self.written: list[Any] = []
        self.headers: list[tuple[bytes, bytes]] = []
        self.field, self.value = bytearray(), bytearray()
        self.header_bytes = 0
        self.open_fd: int | None = None
        self.target = ""
        self.pending = bytearray()
        self.parts = 0

    async def on(self, kind: str, data: bytes) -> None:
        if kind == "on_part_begin":
            self.headers, self.header_bytes = [], 0
            self.parts += 1
            if self.parts > MAX_UPLOAD_PARTS:
                raise ConnectError("resource_exhausted", f"at most {MAX_UPLOAD_PARTS} parts")
        elif kind in ("on_header_field", "on_header_value"):
            self.header_bytes += len(data)
            if self.header_bytes > MAX_PART_HEADERS:
                raise ConnectError("invalid_argument", "a part's headers are too long")
            (self.field if kind == "on_header_field" else self.value).extend(data)
        elif kind == "on_header_end":
            self.headers.append((bytes(self.field).strip().lower(), bytes(self.value)))
            self.field, self.value = bytearray(), bytearray()
        elif kind == "on_headers_finished":
            await self._begin()
        elif kind == "on_part_data" and self.open_fd is not None:
            self.pending += data
            if len(self.pending) >= TRANSFER_CHUNK:
                await self._flush()
        elif kind == "on_part_end" and self.open_fd is not None:
            await self._flush()
            fd, self.open_fd = self.open_fd, None
            os.close(fd)
            target = self.target
            self.written.append(await on_fs(self.request, self.record, self.user,
                                            lambda fs: fs.stat(target)))

    async def _begin(self) -> None:
        disposition = next((value for name, value in self.headers
                            if name == b"content-disposition"), b"")
        _, options = parse_options_header(disposition)
        if options.get(b"name") != b"file":
            return  # not a file: read and dropped
        filename = options.get(b"filename", b"").decode(errors="replace")
        if self.path is not None and self.written:
            raise ConnectError("invalid_argument", "?path= names one file; several parts "
                               "name their own paths (each part's file name)")
        target = self.path or filename
        if not target or "\x00" in target:
            raise ConnectError("invalid_argument", "each file part's file name is its path")
        self.target = target
        self.open_fd = await on_fs(self.request, self.record, self.user,
                                   lambda fs: fs.open_write(target))

    async def _flush(self) -> None:
        if self.pending and self.open_fd is not None:
            data, self.pending = bytes(self.pending), bytearray()
            await in_thread(write_all, self.open_fd, data, self.target)

    def close(self) -> None:
        if self.open_fd is not None:
            os.close(self.open_fd)
            self.open_fd = None


routes = [
    Route(f"{PREFIX}/health", health, methods=["GET"]),
    Route(f"{PREFIX}/files", download, methods=["GET"]),
    Route(f"{PREFIX}/files", upload, methods=["POST"]),
    Route(f"{PREFIX}/{{service}}/{{method}}", rpc, methods=["POST"]),
]
