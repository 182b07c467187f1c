"""Reading requests: JSON bodies with a size limit, and the caller's team."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from ..errors import BadRequest, PayloadTooLarge
from .auth import team_for_key

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
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None


async def caller_team(request: Request) -> str:
    return await team_for_key(request.app.state.ctx.store, request.headers.get("x-api-key"))
