"""Parsing process and terminal requests (pure): Hyperbrowser's JSON shapes → what to run."""

from __future__ import annotations

import shlex
import signal
from dataclasses import dataclass, field
from typing import Any

from ..control.requests import parse_env
from ..errors import ValidationFailed
from ._common import bool_field, int_field, require_object, string_field
from .process_state import DEFAULT_BUFFER_BYTES, MAX_BUFFER_BYTES

MAX_COMMAND_BYTES = 256 * 1024
MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000
# Runs argv[1:] as a program (found on PATH) without a shell reading the arguments.
EXEC_ARGV = ("/bin/sh", "-c", 'exec "$0" "$@"')


@dataclass(frozen=True, slots=True)
class StartRequest:
    command: str  # as the client gave it, for listings
    args: list[str] | None
    argv: tuple[str, ...]
    cwd: str | None
    env: dict[str, str] = field(default_factory=dict)
    run_as: str | None = None
    timeout_s: float | None = None
    stdin: bool = True
    buffer_bytes: int = DEFAULT_BUFFER_BYTES
    pty: tuple[int, int] | None = None


def command_argv(command: str, args: list[str] | None, use_shell: bool | None) -> tuple[str, ...]:
    """A shell line unless ``args`` came with ``useShell: false``: then argv, no shell."""
    if args is not None and use_shell is False:
        return (*EXEC_ARGV, command, *args)
    line = command if not args else " ".join([command, *(shlex.quote(a) for a in args)])
    return ("/bin/sh", "-c", line)


def _timeout_s(body: dict[str, Any]) -> float | None:
    seconds = int_field(body, "timeout_sec", minimum=0, maximum=MAX_TIMEOUT_MS // 1000)
    millis = int_field(body, "timeoutMs", minimum=0, maximum=MAX_TIMEOUT_MS)
    if seconds:
        return float(seconds)
    return millis / 1000 if millis else None


def _common(body: dict[str, Any]) -> dict[str, Any]:
    command = string_field(body, "command")
    assert command is not None
    if len(command.encode()) > MAX_COMMAND_BYTES:
        raise ValidationFailed(f"command is longer than {MAX_COMMAND_BYTES} bytes")
    args = body.get("args")
    if args is not None and (not isinstance(args, list)
                             or not all(isinstance(a, str) and "\x00" not in a for a in args)):
        raise ValidationFailed("args must be a list of strings")
    use_shell = body.get("useShell")
    if use_shell is not None and not isinstance(use_shell, bool):
        raise ValidationFailed("useShell must be true or false")
    cwd = string_field(body, "cwd", required=False)
    if cwd is not None and not cwd.startswith("/"):
        raise ValidationFailed("cwd must be an absolute path")
    return {"command": command, "args": args, "argv": command_argv(command, args, use_shell),
            "cwd": cwd, "env": parse_env(body.get("env")),
            "run_as": string_field(body, "runAs", required=False),
            "timeout_s": _timeout_s(body)}


def parse_start(body: Any) -> StartRequest:
    body = require_object(body, {"command", "args", "cwd", "env", "timeoutMs", "timeout_sec",
                                 "runAs", "useShell", "stdin", "outputBufferBytes"})
    buffer = int_field(body, "outputBufferBytes", default=DEFAULT_BUFFER_BYTES,
                       minimum=0, maximum=MAX_BUFFER_BYTES)
    return StartRequest(**_common(body), stdin=bool_field(body, "stdin", True),
                        buffer_bytes=DEFAULT_BUFFER_BYTES if buffer is None else buffer)


def parse_terminal(body: Any) -> StartRequest:
    body = require_object(body, {"command", "args", "cwd", "env", "timeoutMs", "timeout_sec",
                                 "runAs", "useShell", "rows", "cols"})
    if not body.get("command"):
        body = {**body, "command": "/bin/sh"}
    common = _common(body)
    if body.get("useShell") is None:  # a terminal runs its program directly by default
        common["argv"] = (*EXEC_ARGV, common["command"], *(common["args"] or []))
    common["env"] = {"TERM": "xterm-256color", **common["env"]}
    return StartRequest(**common, pty=parse_size(body, 24, 80))


def parse_size(body: dict[str, Any], rows: int | None = None,
               cols: int | None = None) -> tuple[int, int]:
    got_rows = int_field(body, "rows", default=rows, minimum=1, maximum=1000)
    got_cols = int_field(body, "cols", default=cols, minimum=1, maximum=1000)
    if got_rows is None or got_cols is None:
        raise ValidationFailed("rows and cols are required (1 to 1000)")
    return got_rows, got_cols


def parse_signal(value: Any, default: int | None = None) -> int:
    """``"SIGTERM"``, ``"term"``, ``15`` or ``"15"`` → 15."""
    if value is None and default is not None:
        return default
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if 1 <= value <= signal.SIGRTMAX:
            return value
    elif isinstance(value, str):
        name = value.strip().upper()
        name = name if name.startswith("SIG") else "SIG" + name
        member = getattr(signal.Signals, name, None)
        if isinstance(member, signal.Signals):
            return int(member)
    raise ValidationFailed(f"signal must be a signal name such as SIGTERM or a number, "
                           f"not {value!r}")


def parse_wait_timeout(body: dict[str, Any]) -> float | None:
    return _timeout_s(body)
