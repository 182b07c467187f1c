"""``{runtime.baseUrl}/sandbox/files…``: the sandbox's filesystem, in Hyperbrowser's shapes.

Each handler parses, runs one SandboxFS operation in a worker thread as the requested
user (``runAs``, default the sandbox's root), and renders. Uploads and downloads stream in
chunks of at most ``TRANSFER_CHUNK`` bytes, so their size does not show in server memory.
"""

from __future__ import annotations

import asyncio
import base64
import mimetypes
import os
import posixpath
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..control.http import json_body
from ..errors import BadRequest, ValidationFailed
from ..runtime import Runtime
from ..runtime.sandboxfs import SandboxFS, acting_as, client_errors
from ._common import (
    bool_field,
    decode_data,
    int_field,
    mode_field,
    require_object,
    runtime_record,
    string_field,
)

T = TypeVar("T")
# File work runs in its own threads: a slow copy in one sandbox must not hold up the
# server's default executor (or other sandboxes' small operations) for long.
FS_THREADS = ThreadPoolExecutor(max_workers=32, thread_name_prefix="sandport-fs")


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(FS_THREADS, fn, *args)
TRANSFER_CHUNK = 1 << 20
MAX_READ_BYTES = 16 << 20  # a JSON read answers at most this much (``truncated`` says so)
MAX_WRITE_BODY = 48 << 20  # JSON writes; bigger files go through upload
MAX_LIST_ENTRIES = 10_000


async def in_sandbox(request: Request, run_as: str | None, op: Callable[[SandboxFS], T]) -> T:
    """Run ``op`` on the sandbox's filesystem in a worker thread, as user ``run_as``."""
    record = await runtime_record(request)
    return await on_filesystem(request.app.state.ctx.runtime, record.id, run_as, op)


async def on_filesystem(runtime: Runtime, sandbox_id: str, run_as: str | None,
                        op: Callable[[SandboxFS], T]) -> T:
    """``op`` on a running sandbox's filesystem (its root, kernel-enforced), in a worker
    thread, as user ``run_as``; the caller has checked who may."""

    def work() -> T:
        root = runtime.open_root(sandbox_id)
        try:
            fs = SandboxFS(root, runtime.workdir(sandbox_id))
            if run_as not in (None, "", "root"):
                fs.user = fs.user_named(str(run_as))
            with acting_as(fs.user):
                return op(fs)
        finally:
            os.close(root)

    return await in_thread(work)


def _run_as(source: dict[str, Any]) -> str | None:
    return string_field(source, "runAs", required=False)


async def _body(request: Request, allowed: set[str], limit: int | None = None) -> dict[str, Any]:
    body = await (json_body(request) if limit is None else json_body(request, limit=limit))
    return require_object(body, allowed | {"runAs"})


def _query(request: Request) -> dict[str, Any]:
    return dict(request.query_params)


async def stat_file(request: Request) -> Response:
    query = _query(request)
    path = string_field(query, "path")
    info = await in_sandbox(request, _run_as(query), lambda fs: fs.stat(str(path)))
    return JSONResponse({"file": info.to_wire()})


async def list_files(request: Request) -> Response:
    query = _query(request)
    path = str(string_field(query, "path"))
    depth = int_field(query, "depth", default=1, minimum=1, maximum=64) or 1
    entries, truncated = await in_sandbox(
        request, _run_as(query), lambda fs: fs.list_dir(path, depth, MAX_LIST_ENTRIES))
    return JSONResponse({"path": posixpath.normpath(path), "depth": depth, "truncated": truncated,
                         "entries": [e.to_wire() for e in entries]})


async def read_file(request: Request) -> Response:
    body = await _body(request, {"path", "offset", "length", "encoding"})
    path = str(string_field(body, "path"))
    offset = int_field(body, "offset", default=0) or 0
    length = int_field(body, "length")
    encoding = body.get("encoding") or "utf8"
    if encoding not in ("utf8", "utf-8", "base64"):
        raise ValidationFailed("encoding must be utf8 or base64")
    data, truncated = await in_sandbox(
        request, _run_as(body), lambda fs: fs.read(path, offset, length, MAX_READ_BYTES))
    if encoding == "base64":
        content = base64.b64encode(data).decode()
    else:
        content, encoding = data.decode(errors="replace"), "utf8"
    return JSONResponse({"content": content, "encoding": encoding, "bytesRead": len(data),
                         "truncated": truncated,
                         "contentType": mimetypes.guess_type(path)[0]})


async def write_files(request: Request) -> Response:
    """One file (``path``, ``data``) or many (``files: [...]``), each with encoding, append
    and mode; missing parent directories are created."""
    fields = {"path", "data", "encoding", "append", "mode"}
    body = await _body(request, fields | {"files"}, MAX_WRITE_BODY)
    entries = body.get("files") if "files" in body else [body]
    if not isinstance(entries, list) or not entries:
        raise ValidationFailed("files must be a non-empty list")
    writes = []
    for entry in entries:
        entry = require_object(entry, fields) if entry is not body else entry
        data = decode_data(entry.get("data"), entry.get("encoding"))
        writes.append((str(string_field(entry, "path")), data, bool_field(entry, "append"),
                       mode_field(entry)))

    def write_all(fs: SandboxFS) -> list[dict[str, Any]]:
        return [fs.write(path, data, append=append, mode=mode).to_wire()
                for path, data, append, mode in writes]

    return JSONResponse({"files": await in_sandbox(request, _run_as(body), write_all)})


async def upload_file(request: Request) -> Response:
    """The raw request body becomes the file at ``?path=`` (streamed, any size)."""
    query = _query(request)
    path = str(string_field(query, "path"))
    mode = mode_field(query)
    append = bool_field(query, "append")
    fd = await in_sandbox(request, _run_as(query),
                          lambda fs: fs.open_write(path, append=append, mode=mode))
    written = await write_stream(fd, request.stream(), path)
    info = await in_sandbox(request, _run_as(query), lambda fs: fs.stat(path))
    return JSONResponse({"path": info.path, "bytesWritten": written, "file": info.to_wire()})


async def write_stream(fd: int, stream: AsyncIterator[bytes], path: str) -> int:
    """Write a request body into ``fd`` (closed after), a chunk at a time; bytes written."""
    written = 0
    try:
        pending = bytearray()
        async for chunk in stream:
            pending += chunk
            if len(pending) >= TRANSFER_CHUNK:
                written += await in_thread(write_all, fd, bytes(pending), path)
                pending.clear()
        if pending:
            written += await in_thread(write_all, fd, bytes(pending), path)
    finally:
        os.close(fd)
    return written


def write_all(fd: int, data: bytes, path: str) -> int:
    view = memoryview(data)
    with client_errors(path):
        while view:
            view = view[os.write(fd, view):]
    return len(data)


async def download_file(request: Request) -> Response:
    """The file's raw bytes (``?offset=&length=`` for a part), streamed."""
    query = _query(request)
    path = str(string_field(query, "path"))
    start = int_field(query, "offset", default=0) or 0
    length = int_field(query, "length")
    opened = await in_sandbox(request, _run_as(query), lambda fs: fs.open_read(path))
    return file_response(opened, path, start, length)


def file_response(opened: tuple[int, int], path: str, start: int = 0,
                  length: int | None = None) -> StreamingResponse:
    """Stream an opened file (fd, size; closed after) as an attachment named after it."""
    fd, file_size = opened
    end = file_size if length is None else min(file_size, start + length)
    size = max(0, end - start)

    async def chunks() -> AsyncIterator[bytes]:
        offset = start
        try:
            while offset < end:
                chunk = await in_thread(os.pread, fd, min(TRANSFER_CHUNK, end - offset),
                                                offset)
                if not chunk:
                    break  # the file shrank while we sent it
                offset += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    name = posixpath.basename(path)
    plain = "".join(c for c in name if c.isascii() and c.isprintable() and c not in '"\\')
    disposition = f"attachment; filename=\"{plain or 'download'}\"; filename*=UTF-8''{quote(name)}"
    return StreamingResponse(chunks(), media_type="application/octet-stream", headers={
        "content-length": str(size), "content-disposition": disposition})


async def make_dir(request: Request) -> Response:
    body = await _body(request, {"path", "parents", "mode"})
    path = str(string_field(body, "path"))
    parents, mode = bool_field(body, "parents"), mode_field(body)
    created = await in_sandbox(request, _run_as(body),
                               lambda fs: fs.mkdir(path, parents=parents, mode=mode))
    return JSONResponse({"path": posixpath.normpath(path), "created": created})


def _source_and_destination(body: dict[str, Any]) -> tuple[str, str]:
    source = body.get("from", body.get("source"))
    destination = body.get("to", body.get("destination"))
    for name, value in (("from", source), ("to", destination)):
        if not isinstance(value, str) or not value or "\x00" in value:
            raise ValidationFailed(f"{name} must be a non-empty path without NUL bytes")
    return str(source), str(destination)


async def move_file(request: Request) -> Response:
    body = await _body(request, {"from", "to", "source", "destination", "overwrite"})
    source, destination = _source_and_destination(body)
    overwrite = bool_field(body, "overwrite")
    info = await in_sandbox(request, _run_as(body),
                            lambda fs: fs.move(source, destination, overwrite=overwrite))
    return JSONResponse({"entry": info.to_wire()})


async def copy_file(request: Request) -> Response:
    body = await _body(request, {"from", "to", "source", "destination", "overwrite",
                                 "recursive"})
    source, destination = _source_and_destination(body)
    overwrite, recursive = bool_field(body, "overwrite"), bool_field(body, "recursive")
    info = await in_sandbox(request, _run_as(body), lambda fs: fs.copy(
        source, destination, recursive=recursive, overwrite=overwrite))
    return JSONResponse({"entry": info.to_wire()})


async def delete_file(request: Request) -> Response:
    body = await _body(request, {"path", "recursive"})
    path = str(string_field(body, "path"))
    recursive = bool_field(body, "recursive")
    await in_sandbox(request, _run_as(body), lambda fs: fs.remove(path, recursive=recursive))
    return JSONResponse({"path": posixpath.normpath(path), "deleted": True})


async def chmod_file(request: Request) -> Response:
    body = await _body(request, {"path", "mode", "recursive"})
    path = str(string_field(body, "path"))
    mode = mode_field(body)
    if mode is None:
        raise ValidationFailed("mode is required")
    recursive = bool_field(body, "recursive")
    await in_sandbox(request, _run_as(body), lambda fs: fs.chmod(path, mode, recursive=recursive))
    return JSONResponse({"path": posixpath.normpath(path)})


async def chown_file(request: Request) -> Response:
    body = await _body(request, {"path", "uid", "gid", "recursive"})
    path = str(string_field(body, "path"))
    uid = int_field(body, "uid", maximum=(1 << 32) - 2)
    gid = int_field(body, "gid", maximum=(1 << 32) - 2)
    if uid is None and gid is None:
        raise BadRequest("give uid, gid or both")
    recursive = bool_field(body, "recursive")
    await in_sandbox(request, _run_as(body),
                     lambda fs: fs.chown(path, uid, gid, recursive=recursive))
    return JSONResponse({"path": posixpath.normpath(path)})
