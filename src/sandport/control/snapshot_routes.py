"""Control API routes for snapshots, in the Hyperbrowser SDK's shapes (its
``create_memory_snapshot``, ``list_snapshots``, ``get_snapshot``, ``delete_snapshot``,
``start_from_snapshot``), over the images a snapshot makes (SandboxService.snapshot).

    POST   /api/sandbox/{id}/snapshot  {"name"|"snapshotName"?}  → the snapshot (+ "image")
    GET    /api/snapshots              ?imageName=&search=&status=&page=&limit=
    GET    /api/snapshots/{key}        key: its name or its id
    DELETE /api/snapshots/{key}

A snapshot is an image of its team with source ``snapshot``: its name is the snapshot's
name (given, or ``snap-<sandbox>-<time>-<4 hex>``), its id ``layerstore.snapshot_id`` (of
its team, name and manifest digest). A snapshot holds the sandbox's files, not its memory: a sandbox
started from it runs what its image starts, with the files as they were (README
"Snapshots").
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import NotFound, ValidationFailed
from ..models import iso
from ..runtime.images import ImageStore
from ..runtime.images.layerstore import ImageRecord, snapshot_id
from .http import caller_team, json_body, keyed

MAX_PAGE = 100
NAME_KEYS = frozenset({"name", "snapshotName"})
COMMAND_KEYS = ("startCommand", "readyCommand")


def summary(record: ImageRecord, team: str) -> dict[str, Any]:
    """A snapshot as Hyperbrowser's SandboxSnapshotSummary (and its create result)."""
    base = str(record.extra.get("from") or "")
    made = iso(record.created_at)
    return {
        "id": snapshot_id(record), "snapshotId": snapshot_id(record),
        "snapshotName": record.name, "namespace": team, "status": "created",
        "imageName": base, "imageId": str(record.extra.get("fromDigest") or ""),
        "imageNamespace": team if record.extra.get("fromTeam") else "",
        "metadata": {}, "uploaded": False, "containsSecrets": False,
        "sizeBytes": record.size_bytes, "layers": len(record.diff_ids),
        "createdAt": made, "updatedAt": made,
    }


def default_snapshot_name(sandbox_id: str) -> str:
    return (f"snap-{sandbox_id[:12].lower()}-{time.strftime('%Y%m%d%H%M%S')}-"
            f"{os.urandom(2).hex()}")


def find(images: ImageStore, team: str, key: str) -> ImageRecord:
    """The team's snapshot named ``key`` or with id ``key``."""
    for record in images.layers.all_records():
        if record.team == team and record.source == "snapshot" and key in (
                record.name, snapshot_id(record)):
            return record
    raise NotFound(f"snapshot {key!r} does not exist")


async def create_snapshot(request: Request) -> Response:
    """``{"name"|"snapshotName"?, "startCommand"?, "readyCommand"?}``: the start command
    and ready check a create with ``startCmd: true`` runs (runtime_api/startup.py)."""
    ctx = request.app.state.ctx
    body = await json_body(request, optional=True)
    if body is None:
        body = {}
    if not isinstance(body, dict) or set(body) - {*NAME_KEYS, *COMMAND_KEYS} or \
            len(set(body) & NAME_KEYS) > 1 or not all(isinstance(v, str) for v in body.values()):
        raise ValidationFailed('send {"name": "myapp:v2"} (or Hyperbrowser\'s '
                               '{"snapshotName": ...}; without one a name is made up), and '
                               'optionally "startCommand" and "readyCommand" (shell lines)')
    sandbox_id = request.path_params["id"]
    given = [body[k] for k in NAME_KEYS if k in body]
    name = given[0] if given else default_snapshot_name(sandbox_id)
    commands = {k: body[k] for k in COMMAND_KEYS if body.get(k, "").strip()}
    team = await caller_team(request)
    record = await ctx.sandboxes.snapshot(team, sandbox_id, name, commands)
    return JSONResponse({**summary(record, team), "image": ctx.images.info(record).to_wire()})


async def list_snapshots(request: Request) -> Response:
    ctx = request.app.state.ctx
    team = await caller_team(request)
    query = request.query_params
    page = _positive(query.get("page"), "page", 1)
    limit = min(_positive(query.get("limit"), "limit", 20), MAX_PAGE)
    statuses = set(query.getlist("status")) or {"created"}
    found = sorted((r for r in ctx.images.layers.all_records()
                    if r.team == team and r.source == "snapshot"),
                   key=lambda r: r.created_at, reverse=True)
    if "created" not in statuses:
        found = []  # a snapshot here is made before its create returns: never creating
    if query.get("imageName"):
        found = [r for r in found if r.extra.get("from") == query["imageName"]]
    if query.get("search"):
        found = [r for r in found if query["search"] in r.name]
    shown = found[(page - 1) * limit: page * limit]
    return JSONResponse({"snapshots": [summary(r, team) for r in shown],
                         "totalCount": len(found), "page": page, "perPage": limit})


async def get_snapshot(request: Request) -> Response:
    ctx = request.app.state.ctx
    team = await caller_team(request)
    return JSONResponse({"snapshot": summary(find(ctx.images, team,
                                                  request.path_params["key"]), team)})


async def delete_snapshot(request: Request) -> Response:
    ctx = request.app.state.ctx
    team = await caller_team(request)
    record = find(ctx.images, team, request.path_params["key"])
    await asyncio.to_thread(ctx.images.delete, team, record.name)
    return JSONResponse({"deleted": True})


def _positive(text: str | None, what: str, default: int) -> int:
    if text is None:
        return default
    if not text.isdigit() or int(text) < 1:
        raise ValidationFailed(f"{what} must be a positive integer")
    return int(text)


routes = [
    Route("/api/sandbox/{id}/snapshot", keyed(create_snapshot), methods=["POST"]),
    Route("/api/snapshots", keyed(list_snapshots), methods=["GET"]),
    Route("/api/snapshots/{key}", keyed(get_snapshot), methods=["GET"]),
    Route("/api/snapshots/{key}", keyed(delete_snapshot), methods=["DELETE"]),
]
