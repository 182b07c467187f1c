"""``POST {runtime.baseUrl}/sandbox/exec``: run a command through a shell and wait."""

from __future__ import annotations

import shlex
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import ids
from ..control.http import json_body
from ..control.requests import parse_env
from ..errors import ValidationFailed
from ..runtime import ExecRequest
from .auth import authorize

DEFAULT_TIMEOUT_MS = 60_000
MAX_TIMEOUT_MS = 24 * 3600 * 1000
MAX_COMMAND_BYTES = 256 * 1024


def parse_exec(body: Any) -> ExecRequest:
    if not isinstance(body, dict):
        raise ValidationFailed("the request body must be a JSON object")
    unknown = sorted(set(body) - {"command", "args", "cwd", "env", "timeoutMs", "user"})
    if unknown:
        raise ValidationFailed(f"unknown field(s): {', '.join(unknown)}")
    command = body.get("command")
    if not isinstance(command, str) or not command.strip() or "\x00" in command:
        raise ValidationFailed("command must be a non-empty string")
    args = body.get("args")
    if args is not None:
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ValidationFailed("args must be a list of strings")
        command = " ".join([command, *(shlex.quote(a) for a in args)])
    if len(command.encode()) > MAX_COMMAND_BYTES:
        raise ValidationFailed(f"command is longer than {MAX_COMMAND_BYTES} bytes")
    cwd = body.get("cwd")
    if cwd is not None and (not isinstance(cwd, str) or not cwd.startswith("/") or "\x00" in cwd):
        raise ValidationFailed("cwd must be an absolute path")
    if body.get("user") not in (None, "root"):
        raise ValidationFailed("user: only root is supported by this server yet")
    timeout = body.get("timeoutMs")
    if timeout is None:
        timeout = DEFAULT_TIMEOUT_MS
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not (
        1 <= timeout <= MAX_TIMEOUT_MS
    ):
        raise ValidationFailed(f"timeoutMs must be an integer between 1 and {MAX_TIMEOUT_MS}")
    return ExecRequest(command=command, cwd=cwd, env=parse_env(body.get("env")),
                       timeout_s=timeout / 1000)


async def exec_command(request: Request) -> Response:
    ctx = request.app.state.ctx
    sandbox_id = request.path_params["id"]
    record = await ctx.store.get_sandbox(sandbox_id) if ids.is_sandbox_id(sandbox_id) else None
    authorize(record, sandbox_id, request.headers.get("authorization"), ctx.clock())
    exec_request = parse_exec(await json_body(request))
    result = await ctx.runtime.exec(sandbox_id, exec_request)
    return JSONResponse(result.to_wire())
