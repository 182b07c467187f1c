"""Console routes: pages, the forms that change things, and the JSON the pages poll.

Every page and form needs a session (else: the sign-in page); every form carries the
session's CSRF token; errors come back as a message on the page, never as raw JSON.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from ..control import lifecycle
from ..control.auth import team_for_key
from ..control.requests import ExposePort, parse_create, parse_list, parse_port
from ..errors import (
    Forbidden,
    PayloadTooLarge,
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
from . import session as sessions

HERE = Path(__file__).parent
PAGE_SIZE = 20
MAX_FORM_BYTES = 64 * 1024
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
# xterm.js sizes and colours its cells with style attributes: the terminal's page allows
# inline styles (never inline scripts).
CSP_TERMINAL = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
_templates = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                autoescape=True, undefined=jinja2.StrictUndefined)


async def _secret(request: Request | WebSocket) -> bytes:
    state = request.app.state
    secret = getattr(state, "console_secret", None)
    if secret is None:
        secret = await state.ctx.store.secret("console-session")
        state.console_secret = secret
    return bytes(secret)


async def _fields(request: Request) -> dict[str, str]:
    """A form's fields (application/x-www-form-urlencoded, at most MAX_FORM_BYTES)."""
    cached: dict[str, str] | None = getattr(request.state, "fields", None)
    if cached is not None:
        return cached
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise PayloadTooLarge(f"a console form is at most {MAX_FORM_BYTES} bytes")
    fields: dict[str, str] = {}
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        fields = {k: v[0] for k, v in parse_qs(body.decode(errors="replace"),
                                               keep_blank_values=True).items()}
    request.state.fields = fields
    return fields


def _page(name: str, code: int = 200, csp: str = CSP, **values: Any) -> HTMLResponse:
    html = _templates.get_template(name).render(**values)
    return HTMLResponse(html, status_code=code,
                        headers={**HEADERS, "content-security-policy": csp})


def _see(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers=HEADERS)


class Signed:
    """The caller's session: team, and the CSRF token its forms carry."""

    def __init__(self, team: str, csrf: str) -> None:
        self.team = team
        self.csrf = csrf


async def _signed(request: Request) -> Signed | None:
    secret = await _secret(request)
    value = request.cookies.get(sessions.COOKIE)
    team = sessions.session_team(secret, value, time.time())
    if team is None or value is None:
        return None
    return Signed(team, sessions.csrf_token(secret, value))


Handler = Callable[[Request, Signed], Awaitable[Response]]


def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A GET: signed in, or sent to the sign-in page."""

    async def run(request: Request) -> Response:
        signed = await _signed(request)
        if signed is None:
            return _see("/console/login?next=" + quote(request.url.path))
        return await handler(request, signed)

    return run


def form(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A POST: signed in and carrying the session's CSRF token, else 403."""

    async def run(request: Request) -> Response:
        signed = await _signed(request)
        fields = await _fields(request)
        if signed is None or not sessions.csrf_ok(
                await _secret(request), request.cookies.get(sessions.COOKIE, ""),
                str(fields.get("csrf") or "")):
            return _page("message.html", 403, title="Refused",
                         message="This form is out of date or did not come from this "
                                 "console. Reload the page and try again.")
        return await handler(request, signed)

    return run


# -- sign-in -----------------------------------------------------------------------------
async def login_page(request: Request) -> Response:
    return _page("login.html", next=_safe_next(request.query_params.get("next")), error=None)


async def login(request: Request) -> Response:
    fields = await _fields(request)
    target = _safe_next(str(fields.get("next") or ""))
    ctx = request.app.state.ctx
    try:
        team = await team_for_key(ctx.store, str(fields.get("key") or "").strip())
    except SandportError:
        return _page("login.html", 401, next=target,
                     error="That API key is not valid on this server.")
    value = sessions.new_session(await _secret(request), team, time.time())
    response = _see(target)
    response.set_cookie(sessions.COOKIE, value, max_age=sessions.SESSION_TTL_S,
                        path="/console", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


async def logout(request: Request, signed: Signed) -> Response:
    response = _see("/console/login")
    response.delete_cookie(sessions.COOKIE, path="/console")
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
    return _page("list.html", 200 if error is None else 400, csrf=signed.csrf, error=error,
                 statuses=SANDBOX_STATUSES, images=ctx.images.names(),
                 default_image=ctx.settings.default_image,
                 default_timeout=ctx.settings.default_timeout_minutes, **listing)


async def list_json(request: Request) -> Response:
    signed = await _signed(request)
    if signed is None:
        return JSONResponse({"error": "unauthorized", "message": "sign in again"}, 401,
                            headers=HEADERS)
    try:
        return JSONResponse(await _listing(request, signed.team), headers=HEADERS)
    except SandportError as exc:
        return JSONResponse(exc.to_wire(), exc.status, headers=HEADERS)


async def create(request: Request, signed: Signed) -> Response:
    ctx = request.app.state.ctx
    fields = await _fields(request)
    try:
        body: dict[str, Any] = {"imageName": str(fields.get("image") or "") or None}
        minutes = str(fields.get("timeoutMinutes") or "").strip()
        if minutes:
            if not minutes.isdigit():
                raise ValidationFailed("the timeout must be a whole number of minutes")
            body["timeoutMinutes"] = int(minutes)
        wanted = parse_create(body, ctx.limits, ctx.settings.default_image,
                              ctx.settings.default_timeout_minutes)
        record = await ctx.sandboxes.create(signed.team, wanted)
    except SandportError as exc:
        request.scope["query_string"] = b""
        listing = await _listing(request, signed.team)
        return _page("list.html", exc.status if exc.status < 500 else 500, csrf=signed.csrf,
                     error=f"The sandbox was not created: {exc.message}",
                     statuses=SANDBOX_STATUSES, images=ctx.images.names(),
                     default_image=ctx.settings.default_image,
                     default_timeout=ctx.settings.default_timeout_minutes, **listing)
    return _see(f"/console/sandbox/{record.id}")


# -- one sandbox -------------------------------------------------------------------------
async def _sandbox_view(request: Request, signed: Signed, record: SandboxRecord,
                        error: str | None = None, code: int = 200) -> Response:
    ctx = request.app.state.ctx
    now = time.time()
    ports = [{"port": p.port, "auth": p.auth, "url": p.url,
              "open": f"/console/sandbox/{record.id}/open/{p.port}"}
             for p in ctx.sandboxes.exposed(record)]
    return _page("sandbox.html", code, CSP_TERMINAL if record.status == "active" else CSP,
                 csrf=signed.csrf, error=error, sandbox=_row(
        request, record, now), record=record, ports=ports,
        running=record.status in ("active", "paused"),
        paused=record.status == "paused", close_reason=record.close_reason or "")


async def sandbox_page(request: Request, signed: Signed) -> Response:
    ctx = request.app.state.ctx
    try:
        record = await ctx.sandboxes.get(signed.team, request.path_params["id"])
    except SandportError as exc:
        return _page("message.html", exc.status, title="Not found", message=exc.message)
    return await _sandbox_view(request, signed, record)


async def sandbox_json(request: Request) -> Response:
    signed = await _signed(request)
    if signed is None:
        return JSONResponse({"error": "unauthorized", "message": "sign in again"}, 401,
                            headers=HEADERS)
    ctx = request.app.state.ctx
    try:
        record = await ctx.sandboxes.get(signed.team, request.path_params["id"])
    except SandportError as exc:
        return JSONResponse(exc.to_wire(), exc.status, headers=HEADERS)
    return JSONResponse(_row(request, record, time.time()), headers=HEADERS)


async def act(request: Request, signed: Signed) -> Response:
    """stop, pause, resume, suspend, timeout {minutes}, expose {port, auth}, unexpose {port}."""
    ctx = request.app.state.ctx
    service = ctx.sandboxes
    sandbox_id, verb = request.path_params["id"], request.path_params["verb"]
    fields = await _fields(request)
    try:
        if verb in ("stop", "pause", "resume", "suspend"):
            await getattr(service, verb)(signed.team, sandbox_id)
        elif verb == "timeout":
            minutes = str(fields.get("minutes") or "")
            if not minutes.isdigit():
                raise ValidationFailed("the timeout must be a whole number of minutes")
            await service.set_timeout(signed.team, sandbox_id, int(minutes))
        elif verb in ("expose", "unexpose"):
            port = parse_port(_number(fields.get("port"), "port"))
            if verb == "expose":
                await service.expose(signed.team, sandbox_id,
                                     ExposePort(port, fields.get("auth") == "on"))
            else:
                await service.unexpose(signed.team, sandbox_id, port)
        else:
            return _page("message.html", 404, title="Not found",
                         message=f"There is no action named {verb!r}.")
    except SandportError as exc:
        try:
            record = await service.get(signed.team, sandbox_id)
        except SandportError:
            return _page("message.html", exc.status, title="Not done", message=exc.message)
        return await _sandbox_view(request, signed, record, error=exc.message,
                                   code=exc.status if exc.status < 500 else 500)
    return _see(f"/console/sandbox/{sandbox_id}")


def _number(value: Any, name: str) -> int:
    text = str(value or "").strip()
    if not text.isdigit():
        raise ValidationFailed(f"{name} must be a number")
    return int(text)


async def open_port(request: Request, signed: Signed) -> Response:
    """To a port's URL; for an ``auth: true`` port through a one-time grant (browserUrl)."""
    ctx = request.app.state.ctx
    try:
        record = await ctx.sandboxes.get(signed.team, request.path_params["id"])
        lifecycle.ensure_running(record)
        port = parse_port(_number(request.path_params["port"], "port"))
        auth = record.exposed_ports.get(port)
        if auth is None:
            raise ValidationFailed(f"port {port} is not exposed")
    except SandportError as exc:
        return _page("message.html", exc.status, title="Cannot open", message=exc.message)
    if not auth:
        return RedirectResponse(ctx.sandboxes.urls.url(record.id, port), 302, headers=HEADERS)
    browser_url, _ = await ctx.sandboxes.grants.mint(record.id, port)
    return RedirectResponse(browser_url, 302, headers=HEADERS)


async def terminal_ws(websocket: WebSocket) -> None:
    """A shell on a pseudo-terminal in the sandbox, for the page's terminal, living as long
    as the WebSocket. Only this console's pages may open it: the session cookie, and an
    Origin that is the console's own (no other site can drive it with the cookie)."""
    ctx = websocket.app.state.ctx
    host = websocket.headers.get("host", "")
    scheme = "https" if websocket.url.scheme == "wss" else "http"
    team = sessions.session_team(await _secret(websocket),
                                 websocket.cookies.get(sessions.COOKIE), time.time())
    try:
        if team is None:
            raise Unauthorized("sign in to the console first")
        if websocket.headers.get("origin") != f"{scheme}://{host}":
            raise Forbidden("a console terminal opens only from the console's own pages")
        record = await ctx.sandboxes.get(team, websocket.path_params["id"])
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
    return _see("/console/sandboxes")


routes = [
    Route("/console", home, methods=["GET"]),
    Route("/console/login", login_page, methods=["GET"]),
    Route("/console/login", login, methods=["POST"]),
    Route("/console/logout", form(logout), methods=["POST"]),
    Route("/console/sandboxes", page(list_page), methods=["GET"]),
    Route("/console/sandboxes", form(create), methods=["POST"]),
    Route("/console/api/sandboxes", list_json, methods=["GET"]),
    Route("/console/api/sandbox/{id}", sandbox_json, methods=["GET"]),
    Route("/console/sandbox/{id}", page(sandbox_page), methods=["GET"]),
    Route("/console/sandbox/{id}/open/{port}", page(open_port), methods=["GET"]),
    Route("/console/sandbox/{id}/{verb}", form(act), methods=["POST"]),
    WebSocketRoute("/console/sandbox/{id}/terminal", terminal_ws),
    Mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static"),
]
