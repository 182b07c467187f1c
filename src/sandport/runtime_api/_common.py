"""What every runtime route does first: find the sandbox and check its runtime token;
and the small parsers the routes share."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from starlette.requests import HTTPConnection

from .. import ids
from ..control.http import checked_first
from ..errors import ValidationFailed
from ..store import SandboxRecord
from .auth import authorize


async def runtime_record(request: HTTPConnection) -> SandboxRecord:
    """The sandbox the request's runtime token opens (checked once per request)."""
    cached: SandboxRecord | None = getattr(request.state, "runtime_record", None)
    if cached is not None:
        return cached
    ctx = request.app.state.ctx
    sandbox_id = request.path_params["id"]
    record = await ctx.store.get_sandbox(sandbox_id) if ids.is_sandbox_id(sandbox_id) else None
    record = authorize(record, sandbox_id, request.headers.get("authorization"), ctx.clock())
    ctx.sandboxes.activity.touch(record.id)  # the API at work in it: not idle
    request.state.runtime_record = record
    return record


tokened = checked_first(runtime_record)  # the runtime API: the sandbox's bearer token


def require_object(body: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValidationFailed("the request body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ValidationFailed(f"unknown field(s): {', '.join(unknown)}")
    return body


def string_field(body: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ValidationFailed(f"{name} must be a non-empty string without NUL bytes")
    return value


def bool_field(body: dict[str, Any], name: str, default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")  # query strings carry booleans as text
    if not isinstance(value, bool):
        raise ValidationFailed(f"{name} must be true or false")
    return value


def int_field(body: dict[str, Any], name: str, *, default: int | None = None, minimum: int = 0,
              maximum: int = 1 << 62) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ValidationFailed(f"{name} must be an integer between {minimum} and {maximum}")
    return value


def mode_field(body: dict[str, Any], name: str = "mode") -> int | None:
    """File modes as Hyperbrowser sends them ("755", "0644", "0o644") or as a number."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("0o")
        if text and all(c in "01234567" for c in text) and int(text, 8) <= 0o7777:
            return int(text, 8)
    elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o7777:
        return value
    raise ValidationFailed(f"{name} must be an octal mode such as \"644\" or \"0755\"")


def decode_data(data: Any, encoding: Any) -> bytes:
    """Text sent as ``utf8`` (the default) or bytes as ``base64``."""
    if not isinstance(data, str):
        raise ValidationFailed("data must be a string (utf8 text or base64)")
    if encoding == "base64":
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ValidationFailed("data is not valid base64") from None
    if encoding not in (None, "utf8", "utf-8"):
        raise ValidationFailed("encoding must be utf8 or base64")
    return data.encode()
