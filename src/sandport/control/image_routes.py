"""Control API routes for images (/api/images): list, pull, import, push, delete, build.

Pulls, pushes and builds stream NDJSON: one event a line (per layer: bytes done of total),
the last line ``{"image": {...}}`` or an error object. A pull that fails before its first
layer (an unknown reference, a registry that refuses or cannot be reached) answers with
the error's own status instead, so a client sees a 404 for a tag that does not exist.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import ImageNotFound, PayloadTooLarge, SandportError, ValidationFailed
from ..runtime.images import BUILTIN_PACKAGES
from ..runtime.images.pull import Event, Listener
from ..runtime.images.reference import check_local_name, parse_reference
from . import build_routes
from .http import caller_team, json_body, keyed

NDJSON = "application/x-ndjson"
log = logging.getLogger("sandport.images")
_READY = frozenset({"pulling", "building", "pushing"})  # the first event past resolving


async def list_images(request: Request) -> Response:
    ctx = request.app.state.ctx
    team = await caller_team(request)
    return JSONResponse({"images": [i.to_wire() for i in ctx.images.listing(team)]})


async def get_image(request: Request) -> Response:
    ctx = request.app.state.ctx
    team = await caller_team(request)
    name = request.path_params["name"]
    record = ctx.images.lookup(team, name)
    if record is None:
        raise ImageNotFound(f"image {name!r} does not exist")
    return JSONResponse(ctx.images.info(record).to_wire())


async def _ndjson(run: Callable[[Listener], Awaitable[dict[str, Any]]]) -> Response:
    """Run ``run`` (it goes on if the client leaves); stream its events, then its result."""
    events: asyncio.Queue[Event | None] = asyncio.Queue()
    ready = asyncio.Event()

    def listen(event: Event) -> None:
        events.put_nowait(event)
        if event.get("status") in _READY or "layer" in event:
            ready.set()

    async def work() -> dict[str, Any]:
        try:
            return await run(listen)
        finally:
            ready.set()
            events.put_nowait(None)

    task = asyncio.ensure_future(work())
    await ready.wait()
    if task.done() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]

    async def stream() -> AsyncIterator[bytes]:
        while (event := await events.get()) is not None:
            yield (json.dumps(event) + "\n").encode()
        try:
            last: dict[str, Any] = await task
        except SandportError as exc:
            last = exc.to_wire()
        except Exception:  # a bug: said as one, the stream still ends with an error object
            log.exception("an image operation failed")
            last = SandportError("the operation failed on the server (its log says why)"
                                 ).to_wire()
        yield (json.dumps(last) + "\n").encode()

    return StreamingResponse(stream(), media_type=NDJSON)


def _ref_text(body: dict[str, Any]) -> str:
    ref = body.get("ref")
    if not isinstance(ref, str):
        raise ValidationFailed('"ref" must be an image reference such as "node:22"')
    return ref


async def pull_image(request: Request) -> Response:
    ctx = request.app.state.ctx
    team = await caller_team(request)
    body = await json_body(request)
    if not isinstance(body, dict) or set(body) - {"ref"}:
        raise ValidationFailed('send {"ref": "node:22"}')
    ref = parse_reference(_ref_text(body))  # a 400 (or a 403) before anything starts
    ctx.images.client.config.check_allowed(ref.domain)

    async def run(listen: Listener) -> dict[str, Any]:
        record = await ctx.images.pull(team, body["ref"], listen)
        return {"image": ctx.images.info(record).to_wire()}

    return await _ndjson(run)


async def push_image(request: Request) -> Response:
    ctx = request.app.state.ctx
    team = await caller_team(request)
    name = request.path_params["name"]
    body = await json_body(request)
    if not isinstance(body, dict) or set(body) - {"ref"}:
        raise ValidationFailed('send {"ref": "registry.example.com:5000/team/app:1"}')
    ref = parse_reference(_ref_text(body))
    ctx.images.client.config.check_allowed(ref.domain)
    record = ctx.images.lookup(team, name)
    if record is None:
        raise ImageNotFound(f"image {name!r} does not exist")

    async def run(listen: Listener) -> dict[str, Any]:
        digest = await ctx.images.push(record, ref, listen)
        return {"pushed": {"ref": str(ref), "digest": digest},
                "image": ctx.images.info(record).to_wire()}

    return await _ndjson(run)


DISCARD_BYTES = 16 * 2**20


async def _discard(request: Request, limit: int) -> None:
    """Read (and drop) up to ``limit`` bytes of a body about to be refused, so a client
    still sending an archive of ordinary size gets the answer instead of a reset."""
    read = 0
    async for chunk in request.stream():
        read += len(chunk)
        if read > limit:
            break


async def import_image(request: Request) -> Response:
    """The body is a ``docker save`` or OCI-layout tar archive, streamed to disk first
    (its index may come last), then read member by member."""
    ctx = request.app.state.ctx
    team = await caller_team(request)
    try:
        name = check_local_name(request.path_params["name"])
    except ValidationFailed:
        await _discard(request, DISCARD_BYTES)
        raise
    cap = ctx.images.max_image_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise PayloadTooLarge(f"the archive is larger than this server's cap of {cap} bytes")
    staged = ctx.images.layers.tmp / f"import-{os.getpid()}-{os.urandom(4).hex()}.tar"
    try:
        size = 0
        with staged.open("wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > cap:
                    raise PayloadTooLarge(
                        f"the archive is larger than this server's cap of {cap} bytes")
                fh.write(chunk)
        if size == 0:
            raise ValidationFailed("send the archive (docker save or an OCI layout tar) "
                                   "as the request body")
        record = await ctx.images.import_archive(team, name, staged)
    finally:
        staged.unlink(missing_ok=True)
    return JSONResponse({"image": ctx.images.info(record).to_wire()})


async def delete_image(request: Request) -> Response:
    ctx = request.app.state.ctx
    team = await caller_team(request)
    record = await asyncio.to_thread(ctx.images.delete, team, request.path_params["name"])
    return JSONResponse({"deleted": record.name})


async def build_image(request: Request) -> Response:
    """With a body (a tar of a build context): a Dockerfile build (control/builder.py).
    Without one: a built-in image, built again from Debian packages (NDJSON
    ``{"progress": line}``)."""
    ctx = request.app.state.ctx
    team = await caller_team(request)
    name = request.path_params["name"]
    if name not in BUILTIN_PACKAGES or request.query_params:
        try:
            check_local_name(name)
        except ValidationFailed:
            await _discard(request, DISCARD_BYTES)
            raise
    cap = min(ctx.images.max_image_bytes, ctx.settings.build_context_max_mib * 2**20)
    staged = ctx.images.layers.tmp / f"context-{os.getpid()}-{os.urandom(4).hex()}.tar"
    try:
        size = await _receive(request, staged, cap, "the build context")
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    if size or request.query_params:
        return await build_routes.dockerfile_build(request, team, name, staged, _ndjson)
    staged.unlink(missing_ok=True)

    async def run(listen: Listener) -> dict[str, Any]:
        listen({"status": "building"})
        record = await ctx.images.build(name, lambda line: listen({"progress": line}))
        return {"image": ctx.images.info(record).to_wire()}

    if name not in BUILTIN_PACKAGES:
        raise ValidationFailed(f"send the build context (a tar with a Dockerfile) to build "
                               f"{name!r}; only the built-in images ("
                               + ", ".join(sorted(BUILTIN_PACKAGES)) + ") build without one")
    return await _ndjson(run)


async def _receive(request: Request, staged: Path, cap: int, what: str) -> int:
    """Stream the body to ``staged``; its size. Over ``cap``: PayloadTooLarge."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise PayloadTooLarge(f"{what} is larger than this server's cap of {cap} bytes")
    size = 0
    with staged.open("wb") as fh:
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise PayloadTooLarge(f"{what} is larger than this server's cap of {cap} "
                                      "bytes")
            fh.write(chunk)
    return size


routes = [
    Route("/api/images", keyed(list_images), methods=["GET"]),
    Route("/api/images/pull", keyed(pull_image), methods=["POST"]),
    Route("/api/images/{name}/build", keyed(build_image), methods=["POST"]),
    Route("/api/images/{name:path}/import", keyed(import_image), methods=["POST"]),
    Route("/api/images/{name:path}/push", keyed(push_image), methods=["POST"]),
    Route("/api/images/{name:path}", keyed(get_image), methods=["GET"]),
    Route("/api/images/{name:path}", keyed(delete_image), methods=["DELETE"]),
]
