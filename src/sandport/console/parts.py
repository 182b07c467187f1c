"""A sandbox page's working parts: its processes with their live output, and its files
(browse, view, download, upload). They act through the same machinery as the runtime API,
for the signed-in team's running sandboxes only; their errors become the console's message
page (server/app.py)."""

from __future__ import annotations

import posixpath
import time
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..control import lifecycle
from ..errors import SandboxNotRunning, SandportError, ValidationFailed
from ..runtime_api.commands import parse_start
from ..runtime_api.files import file_response, on_filesystem, write_stream
from ..runtime_api.processes import launch, registry
from ..store import SandboxRecord
from . import session as sessions
from .web import (
    HEADERS,
    Signed,
    api,
    console_secret,
    form,
    form_fields,
    number,
    page,
    render,
    same_origin,
    see_other,
    signed_in,
)

MAX_VIEW_BYTES = 256 * 1024  # a file shown in the page; more: download it
MAX_OUTPUT_BYTES = 256 * 1024  # of a process's output per poll
MAX_ENTRIES = 2000


async def _running(request: Request, team: str) -> SandboxRecord:
    record: SandboxRecord = await request.app.state.ctx.sandboxes.get(
        team, request.path_params["id"])
    lifecycle.ensure_running(record)
    if record.status != "active":
        raise SandboxNotRunning(f"sandbox {record.id} is {record.status}: resume it first")
    return record


def _error_json(exc: SandportError) -> JSONResponse:
    return JSONResponse(exc.to_wire(), exc.status, headers=HEADERS)


# -- processes ---------------------------------------------------------------------------
async def processes_json(request: Request, signed: Signed) -> Response:
    record = await request.app.state.ctx.sandboxes.get(signed.team, request.path_params["id"])
    found = registry(request).of_sandbox(record.id, terminals=False)
    return JSONResponse({"processes": [
        {"id": s.id, "command": s.command, "status": s.status, "exitCode": s.exit_code}
        for s in reversed(found)]}, headers=HEADERS)


async def output_json(request: Request, signed: Signed) -> Response:
    """Output chunks from ``?from=<seq>`` on (that chunk again: the last one may grow)."""
    record = await request.app.state.ctx.sandboxes.get(signed.team, request.path_params["id"])
    session = registry(request).get(record.id, request.path_params["pid"])
    start = number(request.query_params.get("from", "0"), "from")
    chunks: list[dict[str, object]] = []
    size = 0
    for chunk in list(session.chunks):
        if chunk.seq < start:
            continue
        if size + len(chunk.data) > MAX_OUTPUT_BYTES and chunks:
            break
        size += len(chunk.data)
        chunks.append({"seq": chunk.seq, "stream": chunk.stream,
                       "text": chunk.data.decode(errors="replace")})
    return JSONResponse({"id": session.id, "status": session.status,
                         "exitCode": session.exit_code, "chunks": chunks}, headers=HEADERS)


async def start_process(request: Request, signed: Signed) -> Response:
    fields = await form_fields(request)
    record = await _running(request, signed.team)
    command = fields.get("command", "").strip()
    if not command:
        raise ValidationFailed("type a command to run")
    session = await launch(request, record.id, parse_start({"command": command}), "proc")
    return see_other(f"/console/sandbox/{record.id}?process={session.id}#processes")


# -- files -------------------------------------------------------------------------------
def _path(request: Request) -> str:
    path = request.query_params.get("path") or "/"
    if "\x00" in path:
        raise ValidationFailed("a path cannot hold a NUL byte")
    return "/" + posixpath.normpath("/" + path).lstrip("/")


async def files_page(request: Request, signed: Signed) -> Response:
    ctx = request.app.state.ctx
    record = await _running(request, signed.team)
    path = _path(request)
    entries, truncated = await on_filesystem(
        ctx.runtime, record.id, None, lambda fs: fs.list_dir(path, 1, MAX_ENTRIES))
    rows = sorted(({"name": e.name, "path": e.path, "type": e.type, "size": e.size,
                    "modified": time.strftime("%Y-%m-%d %H:%M",
                                              time.gmtime(e.modified_time / 1000)),
                    "href": f"?path={quote(e.path)}"} for e in entries),
                  key=lambda r: (r["type"] != "dir", r["name"]))
    parent = posixpath.dirname(path) if path != "/" else None
    return render("files.html", csrf=signed.csrf, sandbox_id=record.id, path=path, rows=rows,
                  parent=None if parent is None else f"?path={quote(parent)}",
                  truncated=truncated, quote=quote)


async def view_file(request: Request, signed: Signed) -> Response:
    ctx = request.app.state.ctx
    record = await _running(request, signed.team)
    path = _path(request)
    data, truncated = await on_filesystem(
        ctx.runtime, record.id, None, lambda fs: fs.read(path, 0, None, MAX_VIEW_BYTES))
    files = f"/console/sandbox/{record.id}/files"
    return render("view.html", csrf=signed.csrf, sandbox_id=record.id, path=path,
                  truncated=truncated, text=data.decode(errors="replace"),
                  folder=f"{files}?path={quote(posixpath.dirname(path))}",
                  download=f"{files}/download?path={quote(path)}")


async def download(request: Request, signed: Signed) -> Response:
    ctx = request.app.state.ctx
    record = await _running(request, signed.team)
    path = _path(request)
    opened = await on_filesystem(ctx.runtime, record.id, None, lambda fs: fs.open_read(path))
    response = file_response(opened, path)
    response.headers.update({k: v for k, v in HEADERS.items() if k != "cache-control"})
    return response


async def upload(request: Request) -> Response:
    """``PUT ...?path=<file>`` with the raw bytes (the page's script sends the picked file),
    the session cookie and the CSRF token in ``x-csrf-token``."""
    signed = await signed_in(request)
    secret = await console_secret(request)
    if signed is None or not same_origin(request) or not sessions.csrf_ok(
            secret, signed.value, request.headers.get("x-csrf-token")):
        return JSONResponse({"error": "forbidden", "message": "sign in again and reload"},
                            403, headers=HEADERS)
    ctx = request.app.state.ctx
    try:
        record = await _running(request, signed.team)
        path = _path(request)
        fd = await on_filesystem(ctx.runtime, record.id, None,
                                 lambda fs: fs.open_write(path, append=False, mode=None))
        written = await write_stream(fd, request.stream(), path)
    except SandportError as exc:
        return _error_json(exc)
    return JSONResponse({"path": path, "bytesWritten": written}, headers=HEADERS)


routes = [
    Route("/console/api/sandbox/{id}/processes", api(processes_json), methods=["GET"]),
    Route("/console/api/sandbox/{id}/processes/{pid}", api(output_json), methods=["GET"]),
    Route("/console/sandbox/{id}/processes", form(start_process), methods=["POST"]),
    Route("/console/sandbox/{id}/files", page(files_page), methods=["GET"]),
    Route("/console/sandbox/{id}/files/view", page(view_file), methods=["GET"]),
    Route("/console/sandbox/{id}/files/download", page(download), methods=["GET"]),
    Route("/console/sandbox/{id}/files/upload", upload, methods=["PUT"]),
]
