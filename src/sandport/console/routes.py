"""Console routes: pages, the forms that change things, and the JSON the pages poll.

Every page and form needs a session (else: the sign-in page); every form carries the
session's CSRF token; errors come back as a message on the page, never as raw JSON.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from ..control import lifecycle
from ..control.auth import team_for_key
from ..control.requests import (
    MAX_TIMEOUT_MINUTES,
    ExposePort,
    parse_create,
    parse_list,
    parse_port,
    parse_set_timeout,
)
from ..errors import (
    Forbidden,
    SandboxNotRunning,
    SandportError,
    Unauthorized,
    ValidationFailed,
)
from ..models import SANDBOX_STATUSES
from ..runtime_api.commands import parse_terminal
from ..runtime_api.processes import launch
from ..runtime_api.terminals import relay
from ..runtime_api.websocket import deny
from ..store import SandboxRecord
from . import parts
from . import session as sessions
from .web import (
    CSP,
    CSP_TERMINAL,
    HEADERS,
    HERE,
    Signed,
    api,
    clear_session,
    console_secret,
    form,
    form_fields,
    number,
    page,
    refused,
    render,
    same_origin,
    see_other,
    set_session,
    signed_in,
)

PAGE_SIZE = 20


# -- sign-in -----------------------------------------------------------------------------
async def login_page(request: Request) -> Response:
    return render("login.html", next=_safe_next(request.query_params.get("next")), error=None)


async def login(request: Request) -> Response:
    if not same_origin(request):  # no signing a browser in from another site
        return refused()
    try:
        fields = await form_fields(request)
    except SandportError as exc:
        return render("message.html", exc.status, title="Refused", message=exc.message)
    target = _safe_next(str(fields.get("next") or ""))
    ctx = request.app.state.ctx
    try:
        team = await team_for_key(ctx.store, str(fields.get("key") or "").strip())
    except SandportError:
        return render("login.html", 401, next=target,
                     error="That API key is not valid on this server.")
    value = sessions.new_session(await console_secret(request), team, time.time())
    response = see_other(target)
    set_session(response, request, value)
    return response


async def logout(request: Request, signed: Signed) -> Response:
    """The session ends here, not only in this browser: it is refused from now on."""
    nonce, expires = sessions.nonce_and_expiry(signed.value)
    await request.app.state.ctx.store.sign_out(nonce, expires, time.time())
    response = see_other("/console/login")
    clear_session(response, request)
    return response


def _safe_next(value: str | None) -> str:
    if value and value.startswith("/console/") and "//" not in value and "\\" not in value:
        return value
    return "/console/sandboxes"


# -- the list ----------------------------------------------------------------------------
def _row(request: Request, record: SandboxRecord, now: float) -> dict[str, Any]:
    return {
        "id": record.id, "status": lifecycle.wire_status(record.status),
        "suspended": record.suspended, "image": record.image_name,
        "age": _duration(now - record.created_at),
        "timeLeft": _duration(record.expires_at - now)
        if record.expires_at is not None and record.status in ("active", "paused") else "",
        "vcpus": record.vcpus, "memMiB": record.mem_mib,
        "url": f"/console/sandbox/{record.id}",
    }


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


async def _listing(request: Request, team: str) -> dict[str, Any]:
    ctx = request.app.state.ctx
    query = {k: v for k, v in request.query_params.items() if k in ("status", "page") and v}
    wanted = parse_list({**query, "limit": str(PAGE_SIZE)})
    records, total = await ctx.sandboxes.list(team, wanted)
    now = time.time()
    return {"rows": [_row(request, r, now) for r in records], "total": total,
            "page": wanted.page, "pages": max(1, -(-total // PAGE_SIZE)),
            "status": query.get("status", "")}


async def list_page(request: Request, signed: Signed) -> Response:
    ctx = request.app.state.ctx
    try:
        listing = await _listing(request, signed.team)
        error = None
    except SandportError as exc:
        listing = {"rows": [], "total": 0, "page": 1, "pages": 1, "status": ""}
        error = exc.message
    return render("list.html", 200 if error is None else 400, csrf=signed.csrf, error=error,
                 statuses=SANDBOX_STATUSES, images=_image_names(ctx, signed.team),
                 default_image=ctx.settings.default_image,
                 default_timeout=ctx.settings.default_timeout_minutes, **listing)


async def list_json(request: Request, signed: Signed) -> Response:
    return JSONResponse(await _listing(request, signed.team), headers=HEADERS)


async def create(request: Request, signed: Signed) -> Response:
    ctx = request.app.state.ctx
    fields = await form_fields(request)
    try:
        body: dict[str, Any] = {"imageName": str(fields.get("image") or "") or None}
        if str(fields.get("timeoutMinutes") or "").strip():
            body["timeoutMinutes"] = number(fields.get("timeoutMinutes"), "the timeout",
                                            1, MAX_TIMEOUT_MINUTES)
        wanted = parse_create(body, ctx.limits, ctx.settings.default_image,
                              ctx.settings.default_timeout_minutes)
        record = await ctx.sandboxes.create(signed.team, wanted)
    except SandportError as exc:
        request.scope["query_string"] = b""
        listing = await _listing(request, signed.team)
        return render("list.html", exc.status if exc.status < 500 else 500, csrf=signed.csrf,
                     error=f"The sandbox was not created: {exc.message}",
                     statuses=SANDBOX_STATUSES, images=_image_names(ctx, signed.team),
                     default_image=ctx.settings.default_image,
                     default_timeout=ctx.settings.default_timeout_minutes, **listing)
    return see_other(f"/console/sandbox/{record.id}")


# -- one sandbox -------------------------------------------------------------------------
async def _sandbox_view(request: Request, signed: Signed, record: SandboxRecord,
                        error: str | None = None, code: int = 200) -> Response:
    ctx = request.app.state.ctx
    now = time.time()
    ports = [{"port": p.port, "auth": p.auth, "url": p.url,
              "open": f"/console/sandbox/{record.id}/open/{p.port}?t={signed.csrf}"}
             for p in ctx.sandboxes.exposed(record)]
    return render("sandbox.html", code, CSP_TERMINAL if record.status == "active" else CSP,
                 csrf=signed.csrf, error=error, sandbox=_row(
        request, record, now), record=record, ports=ports,
        running=record.status in ("active", "paused"),
        paused=record.status == "paused", close_reason=record.close_reason or "",
        selected=request.query_params.get("process", ""))


async def sandbox_page(request: Request, signed: Signed) -> Response:
    record = await request.app.state.ctx.sandboxes.get(signed.team, request.path_params["id"])
    return await _sandbox_view(request, signed, record)


async def sandbox_json(request: Request, signed: Signed) -> Response:
    ctx = request.app.state.ctx
    record = await ctx.sandboxes.get(signed.team, request.path_params["id"])
    usage = {"cpuSeconds": ctx.runtime.cpu_seconds(record.id),
             "memoryBytes": ctx.runtime.memory_bytes(record.id), "at": time.monotonic()}
    return JSONResponse({**_row(request, record, time.time()), "usage": usage},
                        headers=HEADERS)


async def act(request: Request, signed: Signed) -> Response:
    """stop, pause, resume, suspend, timeout {minutes}, expose {port, auth}, unexpose {port}."""
    ctx = request.app.state.ctx
    service = ctx.sandboxes
    sandbox_id, verb = request.path_params["id"], request.path_params["verb"]
    fields = await form_fields(request)
    try:
        if verb in ("stop", "pause", "resume", "suspend"):
            await getattr(service, verb)(signed.team, sandbox_id)
        elif verb == "timeout":
            await service.set_timeout(signed.team, sandbox_id, parse_set_timeout(
                {"timeoutMinutes": number(fields.get("minutes"), "the timeout", 1,
                                          MAX_TIMEOUT_MINUTES)}))
        elif verb in ("expose", "unexpose"):
            port = parse_port(number(fields.get("port"), "port", 1, 65535))
            if verb == "expose":
                await service.expose(signed.team, sandbox_id,
                                     ExposePort(port, fields.get("auth") == "on"))
            else:
                await service.unexpose(signed.team, sandbox_id, port)
        else:
            return render("message.html", 404, title="Not found",
                         message=f"There is no action named {verb!r}.")
    except SandportError as exc:
        try:
            record = await service.get(signed.team, sandbox_id)
        except SandportError:
            return render("message.html", exc.status, title="Not done", message=exc.message)
        return await _sandbox_view(request, signed, record, error=exc.message,
                                   code=exc.status if exc.status < 500 else 500)
    return see_other(f"/console/sandbox/{sandbox_id}")


async def open_port(request: Request, signed: Signed) -> Response:
    """To a port's URL; for an ``auth: true`` port through a one-time grant (browserUrl).
    It mints a grant, so it wants the session's token too (``?t=``): a link on another
    page (a sandbox's, say, on a sibling domain) cannot make one."""
    ctx = request.app.state.ctx
    if not sessions.csrf_ok(await console_secret(request), signed.value,
                            request.query_params.get("t")):
        return refused()
    record = await ctx.sandboxes.get(signed.team, request.path_params["id"])
    lifecycle.ensure_running(record)
    port = parse_port(number(request.path_params["port"], "port", 1, 65535))
    auth = record.exposed_ports.get(port)
    if auth is None:
        raise ValidationFailed(f"port {port} is not exposed")
    if not auth:
        return RedirectResponse(ctx.sandboxes.urls.url(record.id, port), 302, headers=HEADERS)
    browser_url, _ = await ctx.sandboxes.grants.mint(record.id, port)
    return RedirectResponse(browser_url, 302, headers=HEADERS)


async def terminal_ws(websocket: WebSocket) -> None:
    """A shell on a pseudo-terminal in the sandbox, for the page's terminal, living as long
    as the WebSocket. Only this console's pages may open it: the session cookie, and an
    Origin that is the console's own (no other site can drive it with the cookie)."""
    ctx = websocket.app.state.ctx
    signed = await signed_in(websocket)
    try:
        if signed is None:
            raise Unauthorized("sign in to the console first")
        if websocket.headers.get("origin") is None or not same_origin(websocket):
            raise Forbidden("a console terminal opens only from the console's own pages")
        record = await ctx.sandboxes.get(signed.team, websocket.path_params["id"])
        lifecycle.ensure_running(record)
        if record.status != "active":
            raise SandboxNotRunning(f"sandbox {record.id} is {record.status}")
        query = dict(websocket.query_params)
        size = {"rows": query.get("rows", "24"), "cols": query.get("cols", "80")}
        session = await launch(websocket, record.id, parse_terminal(
            {"command": "/bin/bash", "args": ["-l"], **size}), "pty")
    except SandportError as exc:
        await deny(websocket, exc)
        return
    await websocket.accept()
    try:
        await relay(websocket, session, 0)
    finally:
        session.kill()


async def home(request: Request) -> Response:
    return see_other("/console/sandboxes")


routes = [
    *parts.routes,
    Route("/console", home, methods=["GET"]),
    Route("/console/login", login_page, methods=["GET"]),
    Route("/console/login", login, methods=["POST"]),
    Route("/console/logout", form(logout), methods=["POST"]),
    Route("/console/sandboxes", page(list_page), methods=["GET"]),
    Route("/console/sandboxes", form(create), methods=["POST"]),
    Route("/console/api/sandboxes", api(list_json), methods=["GET"]),
    Route("/console/api/sandbox/{id}", api(sandbox_json), methods=["GET"]),
    Route("/console/sandbox/{id}", page(sandbox_page), methods=["GET"]),
    Route("/console/sandbox/{id}/open/{port}", page(open_port), methods=["GET"]),
    Route("/console/sandbox/{id}/{verb}", form(act), methods=["POST"]),
    WebSocketRoute("/console/sandbox/{id}/terminal", terminal_ws),
    Mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static"),
]


def _image_names(ctx: Any, team: str) -> list[str]:
    return [image.name for image in ctx.images.listing(team)]
