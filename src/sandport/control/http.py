"""Reading requests: the caller's team (checked first), then JSON bodies with a size
limit and text that can be used."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..errors import BadRequest, PayloadTooLarge
from .auth import team_for_key
from .json_text import parse_json

MAX_BODY_BYTES = 1024 * 1024


async def json_body(request: Request, *, optional: bool = False,
                    limit: int = MAX_BODY_BYTES) -> Any:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    if not body.strip():
        if optional:
            return {}
        raise BadRequest("request body is empty; send a JSON object")
    return parse_json(body)


async def caller_team(request: Request) -> str:
    """The team of the request's API key (looked up once per request)."""
    team: str | None = getattr(request.state, "team", None)
    if team is None:
        team = await team_for_key(request.app.state.ctx.store,
                                  request.headers.get("x-api-key"))
        request.state.team = team
    return team


Handler = Callable[[Request], Awaitable[Response]]


def checked_first(check: Callable[[Request], Awaitable[object]]) -> Callable[[Handler], Handler]:
    """Routes that run ``check`` (credentials) before anything else: a caller without them
    learns nothing from how its body or query would have been judged (401, never 400/413)."""

    def wrap(handler: Handler) -> Handler:
        async def run(request: Request) -> Response:
            await check(request)
            return await handler(request)

        run.__name__ = run.__qualname__ = handler.__name__
        return run

    return wrap


keyed = checked_first(caller_team)  # the control API: the x-api-key
