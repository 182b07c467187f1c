"""The ASGI app of the control and runtime APIs, and the one place errors become responses."""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..control.routes import routes as control_routes
from ..errors import SandportError
from ..runtime_api.routes import routes as runtime_routes
from .context import AppContext

log = logging.getLogger("sandport.server")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def render_error(request: Request, exc: Exception) -> Response:
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


def build_app(ctx: AppContext) -> Starlette:
    app = Starlette(
        routes=[*control_routes, *runtime_routes],
        exception_handlers={SandportError: render_error, HTTPException: render_error,
                            Exception: render_error},
    )
    app.state.ctx = ctx
    return app
