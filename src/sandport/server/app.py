"""The ASGI app of the control and runtime APIs, and the one place errors become responses."""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketClose

from ..console.routes import routes as console_routes
from ..console.web import render
from ..control.routes import routes as control_routes
from ..e2b.envd import routes as envd_routes
from ..e2b.routes import is_e2b_path
from ..e2b.routes import routes as e2b_routes
from ..errors import SandportError
from ..proxy.urls import ENVD_HEADER, RUNTIME_HEADER
from ..runtime_api.routes import routes as runtime_routes
from .context import AppContext

log = logging.getLogger("sandport.server")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def render_error(request: Request, exc: Exception) -> Response:
    path = request.url.path
    if (path == "/console" or path.startswith("/console/")) and \
            not path.startswith("/console/api/"):
        return _console_error(request, exc)
    if is_e2b_path(path) or path.startswith("/envd/"):
        return _e2b_error(request, exc)
    if isinstance(exc, SandportError):
        if exc.status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc.message)
        return JSONResponse(exc.to_wire(), status_code=exc.status)
    if isinstance(exc, HTTPException):
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = "no such route" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse({"error": code, "message": message}, status_code=exc.status_code,
                            headers=exc.headers)
    log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": "internal_error", "message": "internal error"},
                        status_code=500)


async def client_gone(request: Request, exc: Exception) -> Response:
    """The client went away before its request was whole (the edge ends such an exchange
    at once): nobody reads this answer, and it is no error of the server's."""
    log.debug("%s %s: the client went away mid-request", request.method, request.url.path)
    return JSONResponse({"error": "bad_request", "message": "the request was not complete"},
                        status_code=400)


def _e2b_error(request: Request, exc: Exception) -> Response:
    """The E2B face's errors: ``{code, message}``, as its SDK parses them, and
    ``Should-Retry: false`` but where a retry is right (429, 503): the SDK retries a create
    on a 5xx otherwise, which could make a second sandbox."""
    headers: dict[str, str] = {}
    if isinstance(exc, SandportError):
        status, message = exc.status, exc.message
        if status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, message)
    elif isinstance(exc, HTTPException):
        status = exc.status_code
        message = "no such route" if status == 404 else str(exc.detail)
        headers = dict(exc.headers or {})
    else:
        log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
        status, message = 500, "internal error"
    if status not in (429, 503):
        headers["Should-Retry"] = "false"
    return JSONResponse({"code": status, "message": message}, status_code=status,
                        headers=headers)


def _console_error(request: Request, exc: Exception) -> Response:
    """The console's pages get their errors as a page, with the console's headers."""
    if isinstance(exc, SandportError):
        status, message = exc.status, exc.message
    elif isinstance(exc, HTTPException):
        status = exc.status_code
        message = "There is no such page." if status == 404 else str(exc.detail)
    else:
        log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
        status, message = 500, "Something went wrong on the server; it is in its log."
    return render("message.html", status, title="Not done", message=message)


_MARKS = {"/runtime/": RUNTIME_HEADER, "/envd/": ENVD_HEADER}


def came_by_runtime_host(path: str, headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request for the internal ``/runtime/<id>/...`` (or ``/envd/<id>/...``)
    routes was mapped there by the edge proxy from that sandbox's runtime (or envd) host
    (it marks those, and strips the marks from every client request); other paths need no
    mark."""
    for prefix, mark in _MARKS.items():
        if path.startswith(prefix):
            sandbox_id = path[len(prefix):].partition("/")[0].encode()
            return any(name == mark and value == sandbox_id for name, value in headers)
    return True


class RuntimeRoutesGuard:
    """The runtime routes answer only requests that came by a runtime host: a path on the
    control host that merely decodes to ``/runtime/...`` gets the router's 404."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and \
                not came_by_runtime_host(scope["path"], scope["headers"]):
            if scope["type"] == "websocket":
                await WebSocketClose()(scope, receive, send)
            else:
                await JSONResponse({"error": "not_found", "message": "no such route"},
                                   status_code=404)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def build_app(ctx: AppContext) -> Starlette:
    app = Starlette(
        routes=[*control_routes, *e2b_routes, *runtime_routes, *envd_routes, *console_routes],
        middleware=[Middleware(RuntimeRoutesGuard)],
        # Exception (500) is rendered and raised again by Starlette for uvicorn's log; a
        # client that went away is not such an error, so it has a handler of its own.
        exception_handlers={SandportError: render_error, HTTPException: render_error,
                            ClientDisconnect: client_gone, Exception: render_error},
    )
    app.state.ctx = ctx
    return app
