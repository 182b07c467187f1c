"""Control API routes (/api): parse, call a service, render. Errors render in server/app.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..models import SandboxPage
from ..runtime_api import startup
from .http import caller_team, json_body, keyed
from .image_routes import routes as image_routes
from .openapi import OPENAPI
from .requests import (
    parse_create,
    parse_expose,
    parse_list,
    parse_revoke,
    parse_set_timeout,
    parse_unexpose,
)
from .snapshot_routes import routes as snapshot_routes


async def create_sandbox(request: Request) -> Response:
    ctx = request.app.state.ctx
    team = await caller_team(request)
    raw = await json_body(request)
    body = parse_create(raw, ctx.limits, ctx.settings.default_image,
                        ctx.settings.default_timeout_minutes)
    record = await startup.create_and_start(request, team, raw, body)
    return JSONResponse(ctx.sandboxes.to_info(record).to_wire())


async def get_sandbox(request: Request) -> Response:
    ctx = request.app.state.ctx
    record = await ctx.sandboxes.shown(await caller_team(request), request.path_params["id"])
    return JSONResponse(ctx.sandboxes.to_info(record).to_wire())


async def update_network(request: Request) -> Response:
    """``{allowInternetAccess?, allowOut?, denyOut?, ingress?, ...}`` → ``{network}``."""
    ctx = request.app.state.ctx
    body = await json_body(request)
    record = await ctx.sandboxes.update_network(await caller_team(request),
                                                request.path_params["id"], body)
    return JSONResponse({"network": record.network})


async def network_log(request: Request) -> Response:
    """``{entries: [{at, kind, name, address, port, rule}]}``: the sandbox's last 100
    refused lookups and connections, oldest first."""
    ctx = request.app.state.ctx
    record = await ctx.sandboxes.get(await caller_team(request), request.path_params["id"])
    return JSONResponse({"entries": ctx.sandboxes.runtime.network_log(record.id)})


def _verb(name: str) -> Callable[[Request], Awaitable[Response]]:
    """A route that applies the service verb ``name`` (pause, resume, suspend, refresh,
    connect) to the sandbox and answers with its detail."""

    async def apply(request: Request) -> Response:
        ctx = request.app.state.ctx
        verb = getattr(ctx.sandboxes, name)
        record = await verb(await caller_team(request), request.path_params["id"])
        return JSONResponse(ctx.sandboxes.to_info(record).to_wire())

    return apply


async def revoke_token(request: Request) -> Response:
    """``{"token": ...}`` ends that runtime token; ``{}`` ends all of them."""
    ctx = request.app.state.ctx
    token = parse_revoke(await json_body(request, optional=True))
    record = await ctx.sandboxes.revoke(await caller_team(request), request.path_params["id"],
                                        token)
    return JSONResponse(ctx.sandboxes.to_info(record).to_wire())


async def list_sandboxes(request: Request) -> Response:
    ctx = request.app.state.ctx
    team = await caller_team(request)
    query = parse_list(dict(request.query_params))
    records, total = await ctx.sandboxes.list(team, query)
    page = SandboxPage([ctx.sandboxes.to_info(r) for r in records], total, query.page, query.limit)
    return JSONResponse(page.to_wire())


async def stop_sandbox(request: Request) -> Response:
    ctx = request.app.state.ctx
    record = await ctx.sandboxes.stop(await caller_team(request), request.path_params["id"])
    return JSONResponse({"success": True, **ctx.sandboxes.to_info(record).to_wire()})


async def set_timeout(request: Request) -> Response:
    ctx = request.app.state.ctx
    minutes = parse_set_timeout(await json_body(request))
    record = await ctx.sandboxes.set_timeout(await caller_team(request),
                                             request.path_params["id"], minutes)
    return JSONResponse(ctx.sandboxes.to_info(record).to_wire())


async def expose_port(request: Request) -> Response:
    ctx = request.app.state.ctx
    team = await caller_team(request)
    body = parse_expose(await json_body(request))
    exposed = await ctx.sandboxes.expose(team, request.path_params["id"], body)
    return JSONResponse(exposed.to_wire())


async def unexpose_port(request: Request) -> Response:
    ctx = request.app.state.ctx
    team = await caller_team(request)
    port = parse_unexpose(await json_body(request))
    await ctx.sandboxes.unexpose(team, request.path_params["id"], port)
    return JSONResponse({"port": port, "exposed": False})


async def openapi(request: Request) -> Response:
    return JSONResponse(OPENAPI)


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


routes = [
    *image_routes,
    *snapshot_routes,
    Route("/api/sandbox", keyed(create_sandbox), methods=["POST"]),
    Route("/api/sandbox/{id}", keyed(get_sandbox), methods=["GET"]),
    Route("/api/sandbox/{id}/stop", keyed(stop_sandbox), methods=["PUT"]),
    Route("/api/sandbox/{id}/pause", keyed(_verb("pause")), methods=["POST"]),
    Route("/api/sandbox/{id}/timeout", keyed(set_timeout), methods=["POST"]),
    Route("/api/sandbox/{id}/resume", keyed(_verb("resume")), methods=["POST"]),
    Route("/api/sandbox/{id}/network", keyed(update_network), methods=["PUT", "POST"]),
    Route("/api/sandbox/{id}/network/log", keyed(network_log), methods=["GET"]),
    Route("/api/sandbox/{id}/suspend", keyed(_verb("suspend")), methods=["POST"]),
    Route("/api/sandbox/{id}/refresh", keyed(_verb("refresh")), methods=["POST"]),
    Route("/api/sandbox/{id}/connect", keyed(_verb("connect")), methods=["POST"]),
    Route("/api/sandbox/{id}/revoke", keyed(revoke_token), methods=["POST"]),
    Route("/api/sandbox/{id}/expose", keyed(expose_port), methods=["POST"]),
    Route("/api/sandbox/{id}/unexpose", keyed(unexpose_port), methods=["POST"]),
    Route("/api/sandboxes", keyed(list_sandboxes), methods=["GET"]),
    Route("/api/openapi.json", openapi, methods=["GET"]),
    Route("/api/health", health, methods=["GET"]),
]
