"""``{runtime.baseUrl}/sandbox/pty…``: terminals (a program on a pseudo-terminal), driven
over a WebSocket: ``{"type": "output", "seq", "data" (base64), "timestamp"}`` messages out,
``{"type": "input", "data", "encoding"?}`` and ``{"type": "resize", "rows", "cols"}`` in,
and ``{"type": "exit", "status"}`` at the end. Same machinery as processes (one output
stream, kept and replayable from ``?cursor=<last seq seen>``)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import signal
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..control.http import json_body
from ..control.json_text import parse_json
from ..errors import SandportError, ValidationFailed
from ._common import bool_field, decode_data, int_field, require_object, runtime_record
from .commands import parse_signal, parse_size, parse_terminal, parse_wait_timeout
from .process_state import Chunk, ProcessSession
from .processes import launch, registry
from .websocket import deny


def chunk_wire(chunk: Chunk) -> dict[str, Any]:
    return {"seq": chunk.seq, "data": base64.b64encode(chunk.data).decode(),
            "timestamp": chunk.timestamp}


def status(session: ProcessSession, include_output: bool = False) -> dict[str, Any]:
    rows, cols = session.pty or (0, 0)
    wire: dict[str, Any] = {
        "id": session.id, "command": session.command, "args": session.args,
        "cwd": session.cwd, "pid": session.pid, "running": session.running,
        "exitCode": session.exit_code, "error": session.error,
        "timedOut": session.status == "timed_out", "rows": rows, "cols": cols,
        "startedAt": session.started_at, "finishedAt": session.completed_at,
    }
    if include_output:
        wire["output"] = [chunk_wire(c) for c in session.chunks]
    return wire


async def _terminal(request: Request | WebSocket) -> ProcessSession:
    record = await runtime_record(request)
    session = registry(request).get(record.id, request.path_params["pty_id"])
    if session.pty is None:
        raise ValidationFailed(f"{session.id} is a process, not a terminal")
    return session


async def create_terminal(request: Request) -> Response:
    record = await runtime_record(request)
    session = await launch(request, record.id, parse_terminal(await json_body(request)), "pty")
    return JSONResponse({"pty": status(session)})


async def get_terminal(request: Request) -> Response:
    session = await _terminal(request)
    include = bool_field(dict(request.query_params), "includeOutput")
    return JSONResponse({"pty": status(session, include)})


async def wait_terminal(request: Request) -> Response:
    session = await _terminal(request)
    body = require_object(await json_body(request, optional=True),
                          {"timeoutMs", "timeout_sec", "includeOutput"})
    await session.wait(parse_wait_timeout(body))
    return JSONResponse({"pty": status(session, bool_field(body, "includeOutput"))})


async def kill_terminal(request: Request) -> Response:
    session = await _terminal(request)
    body = require_object(await json_body(request, optional=True), {"signal", "timeoutMs"})
    signum = parse_signal(body.get("signal"), default=signal.SIGKILL)
    if signum == signal.SIGKILL:
        session.kill()
    elif session.running:
        session.send_signal(signum)
    return JSONResponse({"pty": status(session)})


async def resize_terminal(request: Request) -> Response:
    session = await _terminal(request)
    rows, cols = parse_size(require_object(await json_body(request), {"rows", "cols"}))
    session.resize(rows, cols)
    return JSONResponse({"pty": status(session)})


async def attach_terminal(websocket: WebSocket) -> None:
    try:
        session = await _terminal(websocket)
        cursor = int_field(dict(websocket.query_params), "cursor", default=0) or 0
    except SandportError as exc:
        await deny(websocket, exc)
        return
    await websocket.accept()
    await relay(websocket, session, cursor)


async def relay(websocket: WebSocket, session: ProcessSession, cursor: int) -> None:
    """Carry an accepted WebSocket's input to the terminal and its output back, until
    either side ends."""
    sender = asyncio.ensure_future(_send_output(websocket, session, cursor))
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            try:
                _apply(session, message.get("text") or message.get("bytes") or b"")
            except SandportError as exc:
                await websocket.send_json({"type": "error", "error": exc.code,
                                           "message": exc.message})
    except (WebSocketDisconnect, RuntimeError):
        return
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender


def _apply(session: ProcessSession, raw: str | bytes) -> None:
    # The same check as request bodies: usable text, bounded depth, the field named.
    message = parse_json(raw.encode() if isinstance(raw, str) else raw)
    if not isinstance(message, dict):
        raise ValidationFailed("messages must be JSON objects")
    kind = message.get("type")
    if kind == "input":
        session.write_stdin(decode_data(message.get("data"), message.get("encoding")))
    elif kind == "resize":
        session.resize(*parse_size(message))
    else:
        raise ValidationFailed("type must be input or resize")


async def _send_output(websocket: WebSocket, session: ProcessSession, cursor: int) -> None:
    async for chunk in session.follow(cursor):
        if chunk is not None:
            await websocket.send_json({"type": "output", **chunk_wire(chunk)})
    await websocket.send_json({"type": "exit", "status": status(session)})
    await websocket.close()
