"""``{runtime.baseUrl}/sandbox/processes…``: background processes, in Hyperbrowser's shapes.

``POST /sandbox/processes`` starts one; with ``Accept: text/event-stream`` the answer is the
process's life as server-sent events (``started``, ``output``…, ``done``), otherwise
``{"process": summary}``. A process keeps running with no client attached; its output is
kept as process_state describes, and ``GET …/{id}/stream?from_seq=`` reads it again.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..control.http import json_body
from ..errors import RequestTimeout, RuntimeFailure, SandportError, ValidationFailed
from ..runtime import CommandRequest, safepath
from ..runtime.sandboxfs import ROOT, SandboxFS, User
from ._common import decode_data, int_field, require_object, runtime_record
from .commands import StartRequest, parse_signal, parse_start, parse_wait_timeout
from .files import in_thread
from .process_state import Chunk, ProcessRegistry, ProcessSession

HEARTBEAT_S = 15.0
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
MAX_STDIN_BODY = 16 << 20
STATUSES = {"running", "exited", "failed", "killed", "timed_out"}


def registry(request: HTTPConnection) -> ProcessRegistry:
    found: ProcessRegistry = request.app.state.ctx.sessions.processes
    return found


async def user_of(request: HTTPConnection, sandbox_id: str, name: str | None) -> User:
    """The sandbox's user ``name`` (its own /etc/passwd); when not given, the image's
    ``User`` (root if it names none)."""
    runtime = request.app.state.ctx.runtime
    from_image = name is None
    if from_image:
        name = runtime.default_user(sandbox_id)
    if name in (None, "", "root"):
        return ROOT

    def look_up() -> User:
        root = runtime.open_root(sandbox_id)
        try:
            fs = SandboxFS(root)
            user = fs.image_user(str(name)) if from_image else fs.user_named(str(name))
            try:  # a home that does not exist (nobody's /nonexistent) is no place to start
                os.close(safepath.open_dir(root, user.home))
            except OSError:
                user = dataclasses.replace(user, home="/")
            return user
        finally:
            os.close(root)

    return await in_thread(look_up)


async def launch(request: HTTPConnection, sandbox_id: str, start: StartRequest, prefix: str,
                 pin: bool = False, tag: str | None = None) -> ProcessSession:
    """Start ``start`` in the sandbox and register it; start failures are 4xx/5xx errors.
    ``pin`` keeps all output from the start for the stream that is about to follow it."""
    with registry(request).admitting(sandbox_id, start.buffer_bytes):
        return await _launch(request, sandbox_id, start, prefix, pin, tag)


async def _launch(request: HTTPConnection, sandbox_id: str, start: StartRequest,
                  prefix: str, pin: bool, tag: str | None) -> ProcessSession:
    ctx = request.app.state.ctx
    user = await user_of(request, sandbox_id, start.run_as)
    env = dict(start.env)
    cwd = start.cwd
    if user is not ROOT:
        env = {"HOME": user.home, "USER": user.name, "LOGNAME": user.name, **env}
        if start.run_as is not None:  # the image's own user starts where the image says
            cwd = cwd or user.home
    session = ProcessSession(
        registry(request).new_id(prefix), sandbox_id, start.command, start.args,
        cwd or ctx.runtime.workdir(sandbox_id), buffer_bytes=start.buffer_bytes, pty=start.pty,
        tag=tag, envs=dict(start.env), budget=registry(request).budget)
    if pin:
        session.pin_start()
    command = CommandRequest(
        argv=start.argv, env=env, cwd=cwd, stdin=start.stdin, pty=start.pty,
        uid=None if user is ROOT else user.uid, gid=None if user is ROOT else user.gid,
        groups=None if user is ROOT else user.groups)
    try:
        session.channel = await ctx.runtime.start_command(sandbox_id, command, session)
    except BaseException as exc:
        session.release()  # never registered: its output leaves the server's account
        if isinstance(exc, RuntimeFailure):
            raise _start_error(exc.message, session.cwd) from None
        raise
    session.pid = session.channel.pid
    session.set_timeout(start.timeout_s)
    registry(request).add(session)
    return session


def _start_error(message: str, cwd: str) -> SandportError:
    if message.startswith("chdir"):
        return ValidationFailed(f"cwd {cwd!r} is not usable in the sandbox: "
                                f"{message.partition(': ')[2] or message}")
    if message.startswith("user"):
        return ValidationFailed(f"cannot run as that user: {message}")
    return RuntimeFailure(f"the process could not be started: {message}")


# -- SSE ----------------------------------------------------------------------------------
def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


_TEXT_BYTES = bytes([9, 10, 13, *range(32, 256)])


def output_event(chunk: Chunk) -> dict[str, Any]:
    """Text as text; binary (not UTF-8, or control bytes that JSON would escape six-fold)
    as base64."""
    try:
        if len(chunk.data.translate(None, _TEXT_BYTES)) * 16 > len(chunk.data):
            raise UnicodeDecodeError("utf-8", chunk.data, 0, 1, "control bytes")
        text, encoding = chunk.data.decode(), "utf8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(chunk.data).decode(), "base64"
    return {"stream": chunk.stream, "seq": chunk.seq, "data": text, "encoding": encoding,
            "timestamp": chunk.timestamp}


async def event_stream(session: ProcessSession, after_seq: int,
                       started: bool) -> AsyncIterator[bytes]:
    if started:
        yield sse("started", session.summary())
    async for chunk in session.follow(after_seq, HEARTBEAT_S):
        yield b": keepalive\n\n" if chunk is None else sse("output", output_event(chunk))
    yield sse("done", session.result(with_output=False))


def wants_stream(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("accept", "")


# -- routes -------------------------------------------------------------------------------
async def start_process(request: Request) -> Response:
    record = await runtime_record(request)
    start = parse_start(await json_body(request))
    session = await launch(request, record.id, start, "proc", pin=True)
    if wants_stream(request):
        return StreamingResponse(event_stream(session, 0, started=True),
                                 media_type="text/event-stream", headers=SSE_HEADERS)
    return JSONResponse({"process": session.summary()})


async def list_processes(request: Request) -> Response:
    record = await runtime_record(request)
    query = dict(request.query_params)
    wanted = {s for s in (query.get("status") or "").split(",") if s}
    if wanted - STATUSES:
        raise ValidationFailed(f"status must be among {', '.join(sorted(STATUSES))}")
    limit = int_field(query, "limit", default=100, minimum=1, maximum=1000) or 100
    start = int_field(query, "cursor", default=0) or 0
    after = int_field(query, "created_after")
    before = int_field(query, "created_before")
    found = [s for s in registry(request).of_sandbox(record.id, terminals=False)
             if (not wanted or s.status in wanted)
             and (after is None or s.started_at > after)
             and (before is None or s.started_at < before)]
    page = found[start:start + limit]
    more = start + limit < len(found)
    return JSONResponse({"data": [s.summary() for s in page],
                         "next_cursor": str(start + limit) if more else None})


async def _session(request: Request) -> ProcessSession:
    record = await runtime_record(request)
    return registry(request).get(record.id, request.path_params["process_id"])


async def get_process(request: Request) -> Response:
    return JSONResponse({"process": (await _session(request)).summary()})


async def wait_process(request: Request) -> Response:
    session = await _session(request)
    body = require_object(await json_body(request, optional=True), {"timeoutMs", "timeout_sec"})
    if not await session.wait(parse_wait_timeout(body)):
        raise RequestTimeout(f"process {session.id} is still running")
    return JSONResponse({"result": session.result(with_output=True)})


async def stream_process(request: Request) -> Response:
    session = await _session(request)
    query = dict(request.query_params)
    from_seq = int_field(query, "from_seq", default=0) or 0
    return StreamingResponse(event_stream(session, max(0, from_seq - 1), started=False),
                             media_type="text/event-stream", headers=SSE_HEADERS)


async def write_stdin(request: Request) -> Response:
    session = await _session(request)
    body = require_object(await json_body(request, limit=MAX_STDIN_BODY),
                          {"data", "encoding", "eof"})
    data = body.get("data")
    if data is not None:
        session.write_stdin(decode_data(data, body.get("encoding")))
    if body.get("eof"):
        session.close_stdin()
    return JSONResponse({"process": session.summary()})


async def signal_process(request: Request) -> Response:
    session = await _session(request)
    body = require_object(await json_body(request), {"signal"})
    session.send_signal(parse_signal(body.get("signal")))
    return JSONResponse({"process": session.summary()})


async def kill_process(request: Request) -> Response:
    session = await _session(request)
    session.kill()
    return JSONResponse({"process": session.summary()})

