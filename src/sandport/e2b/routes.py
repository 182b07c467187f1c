"""The E2B face's control API: the routes the official ``e2b`` SDK calls (``/v2/sandboxes``
and ``/sandboxes/{id}...``), each a translation onto the same services the Hyperbrowser
face uses: a sandbox made here is one record, seen and used through both faces. Errors
render as E2B's ``{code, message}`` (server/app.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..control import lifecycle
from ..control.http import caller_team, json_body, keyed
from ..control.requests import network_from_wire, parse_create
from ..control.snapshot_routes import default_snapshot_name
from ..control.snapshot_routes import find as find_snapshot
from ..errors import Conflict, SandboxNotFound, SandportError, ValidationFailed
from ..runtime import Runtime
from ..runtime_api import startup
from ..runtime_api.files import in_thread
from ..store import SandboxRecord
from . import templates, wire
from .envd_wire import access_token, traffic_token

PREFIXES = ("/v2/sandboxes", "/sandboxes", "/snapshots", "/templates")


def is_e2b_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in PREFIXES)


def _domain(request: Request) -> str | None:
    """What the SDK appends to ``{port}-{id}.`` for a sandbox's hosts."""
    netloc = request.app.state.ctx.sandboxes.urls.netloc
    return netloc.removeprefix("{port}-{id}.") if netloc.startswith("{port}-{id}.") else None


def _sandbox(request: Request, record: SandboxRecord) -> dict[str, object]:
    secret = request.app.state.ctx.envd_secret
    return wire.sandbox(record, _domain(request), access_token(secret, record.id),
                        traffic_token(secret, record.id))


async def _live(request: Request) -> SandboxRecord:
    """The caller's sandbox, running or paused; an ended one is as unknown as a made-up id
    (E2B forgets a killed sandbox)."""
    ctx = request.app.state.ctx
    record: SandboxRecord = await ctx.sandboxes.get(await caller_team(request),
                                                    request.path_params["id"])
    if record.status not in ("active", "paused", "creating"):
        raise SandboxNotFound(f"sandbox {record.id} not found")
    return record


async def create(request: Request) -> Response:
    ctx = request.app.state.ctx
    team = await caller_team(request)
    base = parse_create({}, ctx.limits, ctx.settings.default_image,
                        ctx.settings.default_timeout_minutes)
    body = wire.parse_new_sandbox(await json_body(request), base)
    if body.image_name == templates.IMAGE:
        await templates.base_image(ctx, team)
    record = await startup.create_and_start(request, team, {}, body)
    return JSONResponse(_sandbox(request, record), status_code=201)


async def connect(request: Request) -> Response:
    """Resumed if paused; its deadline moved out to ``timeout`` seconds from now, never
    earlier than it was."""
    ctx = request.app.state.ctx
    team = await caller_team(request)
    body = await json_body(request, optional=True)
    if not isinstance(body, dict) or set(body) - {"timeout", "memory"}:
        raise ValidationFailed("the request takes timeout (seconds) only")
    record = await _live(request)
    resumed = record.status == "paused"
    if resumed:
        record = await ctx.sandboxes.resume(team, record.id)
    if body.get("timeout") is not None:
        record = await ctx.sandboxes.set_deadline(team, record.id,
                                                  wire.parse_timeout(body["timeout"], None),
                                                  extend_only=True)
    return JSONResponse(_sandbox(request, record), status_code=201 if resumed else 200)


async def detail(request: Request) -> Response:
    return JSONResponse(wire.detail(await _live(request), _domain(request)))


async def listing(request: Request) -> Response:
    ctx = request.app.state.ctx
    query = request.query_params
    unknown = sorted(set(query) - {"state", "metadata", "limit", "nextToken", "template",
                                   "startedAfter", "order"})
    if unknown:
        raise ValidationFailed(f"unknown query parameter(s): {', '.join(unknown)}")
    if query.get("order", "desc") != "desc":
        raise ValidationFailed("order: only desc (newest first) is supported")
    limit = wire.parse_limit(query.get("limit"))
    found = await ctx.sandboxes.page(await caller_team(request),
                                     wire.parse_states(query.get("state")),
                                     wire.parse_metadata_query(query.get("metadata")),
                                     wire.parse_next_token(query.get("nextToken")), limit + 1,
                                     wire.parse_template(query.get("template")),
                                     wire.parse_time(query.get("startedAfter"), "startedAfter"))
    headers = {"x-next-token": wire.next_token(found[limit - 1])} if len(found) > limit else {}
    return JSONResponse([wire.listed(r) for r in found[:limit]], headers=headers)


async def kill(request: Request) -> Response:
    ctx = request.app.state.ctx
    record = await _live(request)
    await ctx.sandboxes.stop(record.team_id, record.id, lifecycle.CLOSE_REQUESTED)
    return Response(status_code=204)


async def set_timeout(request: Request) -> Response:
    ctx = request.app.state.ctx
    body = await json_body(request)
    if not isinstance(body, dict) or set(body) != {"timeout"}:
        raise ValidationFailed("the request is {\"timeout\": seconds}")
    seconds = wire.parse_timeout(body["timeout"], None)
    record = await _live(request)
    await ctx.sandboxes.set_deadline(record.team_id, record.id, seconds)
    return Response(status_code=204)


async def pause(request: Request) -> Response:
    """The freezer's pause; E2B says 409 to a sandbox paused already."""
    ctx = request.app.state.ctx
    body = await json_body(request, optional=True)
    if not isinstance(body, dict) or set(body) - {"memory", "requireHealthyGuest"}:
        raise ValidationFailed("the request takes memory and requireHealthyGuest only")
    if body.get("memory") is False:
        raise ValidationFailed("memory false (a pause that keeps only the files) is not "
                                    "supported: a pause here keeps the memory")
    record = await _live(request)
    if record.status == "paused":
        raise Conflict(f"sandbox {record.id} is paused already")
    await ctx.sandboxes.pause(record.team_id, record.id)
    return Response(status_code=204)


async def create_snapshot(request: Request) -> Response:
    """``{"name"?}``: an image of the caller's team from the sandbox's files (the
    Hyperbrowser face's snapshot); its name is the snapshotID a create's templateID names."""
    ctx = request.app.state.ctx
    body = await json_body(request, optional=True)
    if not isinstance(body, dict) or set(body) - {"name"} or \
            not isinstance(body.get("name", ""), str):
        raise ValidationFailed('the request is {"name": "myapp:v2"} or {} (a name is made up)')
    record = await _live(request)
    name = body.get("name") or default_snapshot_name(record.id)
    image = await ctx.sandboxes.snapshot(record.team_id, record.id, name,
                                         {wire.SNAPSHOT_OF: record.id})
    return JSONResponse(wire.snapshot(image), status_code=201)


async def list_snapshots(request: Request) -> Response:
    ctx = request.app.state.ctx
    team = await caller_team(request)
    query = request.query_params
    unknown = sorted(set(query) - {"sandboxID", "name", "limit", "nextToken"})
    if unknown:
        raise ValidationFailed(f"unknown query parameter(s): {', '.join(unknown)}")
    limit = wire.parse_limit(query.get("limit"))
    after = wire.parse_next_token(query.get("nextToken"))
    found = sorted((r for r in ctx.images.layers.all_records()
                    if r.team == team and r.source == "snapshot"
                    and query.get("sandboxID") in (None, r.extra.get(wire.SNAPSHOT_OF))
                    and query.get("name") in (None, r.name)),
                   key=lambda r: (r.created_at, r.name), reverse=True)
    if after is not None:
        found = [r for r in found if (r.created_at, r.name) < after]
    headers = {"x-next-token": wire.snapshot_token(found[limit - 1])} \
        if len(found) > limit else {}
    return JSONResponse([wire.snapshot(r) for r in found[:limit]], headers=headers)


async def delete_template(request: Request) -> Response:
    """A snapshot of the caller's team, by its snapshotID (E2B deletes snapshots as
    templates); 404 for anything else."""
    ctx = request.app.state.ctx
    team = await caller_team(request)
    record = find_snapshot(ctx.images, team, request.path_params["name"])
    await asyncio.to_thread(ctx.images.delete, team, record.name)
    return Response(status_code=204)


CPU_WINDOW_S = 0.25  # the CPU use a sample reports is measured over this, when asked


async def metrics(request: Request) -> Response:
    """``GET /sandboxes/{id}/metrics?start=&end=``: E2B keeps a series; this server measures
    when asked, so the series is the one sample of now (none if the window is elsewhere)."""
    ctx = request.app.state.ctx
    query = request.query_params
    unknown = sorted(set(query) - {"start", "end"})
    if unknown:
        raise ValidationFailed(f"unknown query parameter(s): {', '.join(unknown)}")
    start, end = (wire.parse_unix(query.get(k), k) for k in ("start", "end"))
    record = await _live(request)
    now = time.time()
    if (start is not None and start > now + 1) or (end is not None and end < now - 60):
        return JSONResponse([])
    runtime = ctx.runtime
    before = runtime.cpu_seconds(record.id)
    await asyncio.sleep(CPU_WINDOW_S)
    after = runtime.cpu_seconds(record.id)
    used = None if before is None or after is None else (after - before) / CPU_WINDOW_S
    disk = await in_thread(_disk_use, runtime, record.id)
    return JSONResponse([wire.metric(record, time.time(), used, runtime.memory_bytes(record.id),
                                     disk)])


def _disk_use(runtime: Runtime, sandbox_id: str) -> tuple[int, int] | None:
    """(used, total) bytes of the filesystem the sandbox's root is on (its own disk when
    disk limits are on)."""
    try:
        root = runtime.open_root(sandbox_id)
    except (OSError, SandportError):
        return None
    try:
        stats = os.fstatvfs(root)
    finally:
        os.close(root)
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize, stats.f_blocks * stats.f_frsize


async def network(request: Request) -> Response:
    """The policy's egress fields replaced (those left out cleared), live."""
    ctx = request.app.state.ctx
    body = await json_body(request)
    record = await _live(request)
    current = network_from_wire(record.network)
    policy = wire.parse_network_update(body, current)
    asked = body.get("allow_internet_access") if isinstance(body, dict) else None
    await ctx.sandboxes.set_network(record.team_id, record.id,
                                    dataclasses.replace(policy, internet_capped=False), asked)
    return Response(status_code=204)


routes = [
    Route("/v2/sandboxes", keyed(create), methods=["POST"]),
    Route("/v2/sandboxes", keyed(listing), methods=["GET"]),
    Route("/v2/sandboxes/{id}/connect", keyed(connect), methods=["POST"]),
    Route("/sandboxes/{id}", keyed(detail), methods=["GET"]),
    Route("/sandboxes/{id}", keyed(kill), methods=["DELETE"]),
    Route("/sandboxes/{id}/timeout", keyed(set_timeout), methods=["POST"]),
    Route("/sandboxes/{id}/pause", keyed(pause), methods=["POST"]),
    Route("/sandboxes/{id}/network", keyed(network), methods=["PUT"]),
    Route("/sandboxes/{id}/metrics", keyed(metrics), methods=["GET"]),
    Route("/sandboxes/{id}/snapshots", keyed(create_snapshot), methods=["POST"]),
    Route("/snapshots", keyed(list_snapshots), methods=["GET"]),
    Route("/templates/{name:path}", keyed(delete_template), methods=["DELETE"]),
]
