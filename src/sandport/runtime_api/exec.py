"""``POST {runtime.baseUrl}/sandbox/exec``: run a command through a shell and wait.

The same machinery as background processes (it shows in the process list), with stdin
closed and the output collected: up to ``OUTPUT_CAP`` per stream is returned, the rest is
read and dropped.
"""

from __future__ import annotations

import shlex
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..control.http import json_body
from ..control.requests import parse_env
from ..errors import RuntimeFailure, ValidationFailed
from ..models import ExecResult
from ..runtime import ExecRequest
from ._common import require_object, runtime_record
from .commands import StartRequest
from .processes import launch

DEFAULT_TIMEOUT_MS = 60_000
MAX_TIMEOUT_MS = 24 * 3600 * 1000
MAX_COMMAND_BYTES = 256 * 1024
OUTPUT_CAP = 16 * 1024 * 1024  # per stream
TIMED_OUT_CODE = 124  # as timeout(1) reports it


def parse_exec(body: Any) -> ExecRequest:
    body = require_object(body, {"command", "args", "cwd", "env", "timeoutMs", "user"})
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
        raise ValidationFailed("user: exec runs as root; start a process with runAs instead")
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
    record = await runtime_record(request)
    exec_request = parse_exec(await json_body(request))
    runtime = request.app.state.ctx.runtime
    if runtime.agent_protocol(record.id) < 2:
        return JSONResponse((await runtime.exec(record.id, exec_request)).to_wire())
    start = StartRequest(
        command=exec_request.command, args=None,
        argv=("/bin/sh", "-c", exec_request.command), cwd=exec_request.cwd,
        env=exec_request.env, timeout_s=exec_request.timeout_s, stdin=False, buffer_bytes=0)
    session = await launch(request, record.id, start, "proc", pin=True)
    kept = {"stdout": bytearray(), "stderr": bytearray()}
    async for chunk in session.follow(0):
        if chunk is not None:
            target = kept[chunk.stream]
            target += chunk.data[: max(0, OUTPUT_CAP - len(target))]
    if session.status == "failed":
        raise RuntimeFailure(f"the command did not finish: {session.error}")
    timed_out = session.status == "timed_out"
    code = TIMED_OUT_CODE if timed_out or session.exit_code is None else session.exit_code
    result = ExecResult(kept["stdout"].decode(errors="replace"),
                        kept["stderr"].decode(errors="replace"), code, timed_out)
    return JSONResponse(result.to_wire())
