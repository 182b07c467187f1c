"""envd's messages (pure): the JSON the ``e2b`` SDK sends to the in-sandbox API, parsed into
the runtime API's requests, and processes and files rendered as its protobuf JSON reads
them (field names in lowerCamelCase, bytes in base64, 64-bit integers as strings, enums by
name, times in RFC 3339).

A parser takes a field under its JSON name or its proto name, as protobuf's JSON does.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import signal
from typing import Any

from ..control.requests import parse_env
from ..errors import ValidationFailed
from ..models import FileInfo
from ..runtime_api.commands import EXEC_ARGV, MAX_COMMAND_BYTES, MAX_TIMEOUT_MS, StartRequest
from ..runtime_api.process_state import ProcessSession
from .connect import DIGITS, ConnectError

MAX_PTY = 1000
_FILE_TYPES = {"file": "FILE_TYPE_FILE", "dir": "FILE_TYPE_DIRECTORY",
               "symlink": "FILE_TYPE_SYMLINK"}
_SIGNALS = {"SIGNAL_SIGKILL": int(signal.SIGKILL), "SIGNAL_SIGTERM": int(signal.SIGTERM),
            9: int(signal.SIGKILL), 15: int(signal.SIGTERM)}


def _invalid(message: str) -> ConnectError:
    return ConnectError("invalid_argument", message)


def field(message: dict[str, Any], name: str, kind: type | tuple[type, ...],
          default: Any = None) -> Any:
    """``name`` (lowerCamelCase) or its snake_case spelling, checked to be ``kind``."""
    snake = "".join("_" + c.lower() if c.isupper() else c for c in name)
    value = message.get(name, message.get(snake))
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise _invalid(f"{name} has the wrong type")
    if not isinstance(value, kind):
        raise _invalid(f"{name} has the wrong type")
    return value


def _object(message: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = field(message, name, dict, {})
    return found


def _text(message: dict[str, Any], name: str, *, required: bool = False) -> str:
    value: str = field(message, name, str, "")
    if "\x00" in value:
        raise _invalid(f"{name} must not hold NUL bytes")
    if required and not value:
        raise _invalid(f"{name} is required")
    return value


def _uint(message: dict[str, Any], name: str, maximum: int = (1 << 32) - 1) -> int:
    value = field(message, name, (int, str), 0)
    if isinstance(value, str):  # protobuf JSON may quote any integer
        if not DIGITS.fullmatch(value):
            raise _invalid(f"{name} must be an unsigned integer")
        value = int(value)
    if not 0 <= value <= maximum:
        raise _invalid(f"{name} must be between 0 and {maximum}")
    return int(value)


def _bytes(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise _invalid(f"{name} must be base64 text")
    try:  # protobuf JSON takes either alphabet, padded or not
        text = value.replace("-", "+").replace("_", "/")
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(f"{name} is not valid base64") from None


# -- process ------------------------------------------------------------------------------
def parse_start(message: dict[str, Any], user: str | None,
                timeout_ms: int | None) -> tuple[StartRequest, str | None]:
    """``StartRequest`` → the runtime API's start (argv run as given, no shell of ours)
    and the process's tag. The command's deadline is the call's (envd's)."""
    config = _object(message, "process")
    cmd = _text(config, "cmd", required=True)
    args = field(config, "args", list, [])
    if not all(isinstance(a, str) and "\x00" not in a for a in args):
        raise _invalid("process.args must be strings without NUL bytes")
    if len(cmd.encode()) + sum(len(a.encode()) for a in args) > MAX_COMMAND_BYTES:
        raise _invalid(f"the command is longer than {MAX_COMMAND_BYTES} bytes")
    try:  # the runtime API's caps on names, count and size
        envs = parse_env(field(config, "envs", dict, {}), "process.envs")
    except ValidationFailed as exc:
        raise _invalid(exc.message) from None
    cwd = _text(config, "cwd") or None
    if cwd is not None and not cwd.startswith("/"):
        raise _invalid("process.cwd must be an absolute path")
    pty = field(message, "pty", dict)
    size = None
    if pty is not None:
        dims = _object(pty, "size")
        size = (_uint(dims, "rows", MAX_PTY) or 24, _uint(dims, "cols", MAX_PTY) or 80)
        envs = {"TERM": "xterm-256color", **envs}
    tag = _text(message, "tag") or None
    stdin = field(message, "stdin", bool, True)
    start = StartRequest(command=cmd, args=list(args), argv=(*EXEC_ARGV, cmd, *args), cwd=cwd,
                         env=dict(envs), run_as=user,
                         timeout_s=None if timeout_ms is None
                         else min(timeout_ms, MAX_TIMEOUT_MS) / 1000,
                         stdin=stdin or size is not None, pty=size)
    return start, tag


def parse_selector(message: dict[str, Any]) -> tuple[str, int | str]:
    """``{"process": {"pid": n}}`` or ``{"process": {"tag": t}}``."""
    selector = _object(message, "process")
    if "pid" in selector:
        return "pid", _uint(selector, "pid")
    tag = _text(selector, "tag")
    if tag:
        return "tag", tag
    raise _invalid("process must name a pid or a tag")


def parse_input(message: dict[str, Any]) -> bytes:
    given = _object(message, "input")
    for name in ("stdin", "pty"):
        if given.get(name) is not None:
            return _bytes(given[name], f"input.{name}")
    raise _invalid("input must hold stdin or pty bytes")


def parse_signal(message: dict[str, Any]) -> int:
    value = message.get("signal")
    found = _SIGNALS.get(value) if isinstance(value, (str, int)) and \
        not isinstance(value, bool) else None
    if found is None:
        raise _invalid("signal must be SIGNAL_SIGKILL or SIGNAL_SIGTERM")
    return found


def parse_size(message: dict[str, Any]) -> tuple[int, int]:
    dims = _object(_object(message, "pty"), "size")
    rows, cols = _uint(dims, "rows", MAX_PTY), _uint(dims, "cols", MAX_PTY)
    if not rows or not cols:
        raise _invalid(f"pty.size needs rows and cols, 1 to {MAX_PTY}")
    return rows, cols


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def start_event(pid: int) -> dict[str, Any]:
    return {"event": {"start": {"pid": pid}}}


def data_event(stream: str, data: bytes, pty: bool) -> dict[str, Any]:
    return {"event": {"data": {"pty" if pty else stream: _b64(data)}}}


KEEPALIVE: dict[str, Any] = {"event": {"keepalive": {}}}


def end_event(session: ProcessSession) -> dict[str, Any]:
    """How the process ended, as Go's ``os.ProcessState`` says it (envd's words): ``exit
    status 1``, ``signal: killed``; a process killed by a signal has exit code -1."""
    if session.status == "exited":
        code = session.exit_code or 0
        end: dict[str, Any] = {"exitCode": code, "exited": True,
                               "status": f"exit status {code}"}
    elif session.signal:
        try:
            name = signal.strsignal(session.signal) or f"signal {session.signal}"
        except ValueError:
            name = f"signal {session.signal}"
        end = {"exitCode": -1, "exited": False, "status": f"signal: {name.lower()}"}
    else:
        end = {"exitCode": -1, "exited": False, "status": session.status}
    if session.error:
        end["error"] = session.error
    elif session.status == "timed_out":
        end["error"] = "the command's timeout passed: it was killed"
    return {"event": {"end": end}}


def process_info(session: ProcessSession) -> dict[str, Any]:
    config: dict[str, Any] = {"cmd": session.command, "args": session.args or [],
                              "envs": dict(session.envs), "cwd": session.cwd}
    info: dict[str, Any] = {"config": config, "pid": session.pid or 0}
    if session.tag is not None:
        info["tag"] = session.tag
    return info


# -- filesystem ---------------------------------------------------------------------------
def path_of(message: dict[str, Any], name: str = "path") -> str:
    return _text(message, name, required=True)


def depth_of(message: dict[str, Any]) -> int:
    return max(1, _uint(message, "depth", 64))


_LAST_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: RFC 3339's last time


def _rfc3339(epoch_ms: int) -> str:
    """A file's time (which a sandbox may set to anything) within RFC 3339's years."""
    ms = min(max(epoch_ms, 0), _LAST_MS)
    when = datetime.datetime.fromtimestamp(ms // 1000, datetime.UTC).replace(
        microsecond=ms % 1000 * 1000)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def entry(info: FileInfo) -> dict[str, Any]:
    """A ``FileInfo`` as envd's ``EntryInfo``."""
    found: dict[str, Any] = {
        "name": info.name, "type": _FILE_TYPES.get(info.type, "FILE_TYPE_UNSPECIFIED"),
        "path": info.path, "size": str(info.size), "mode": info.mode,
        "permissions": info.permissions, "owner": info.owner, "group": info.group,
        "modifiedTime": _rfc3339(info.modified_time)}
    if info.symlink_target is not None:
        found["symlinkTarget"] = info.symlink_target
        found["isSymlink"] = True
    return found


_EVENT_TYPES = {"CREATE": "EVENT_TYPE_CREATE", "WRITE": "EVENT_TYPE_WRITE",
                "REMOVE": "EVENT_TYPE_REMOVE", "RENAME": "EVENT_TYPE_RENAME",
                "CHMOD": "EVENT_TYPE_CHMOD"}


def watch_request(message: dict[str, Any]) -> tuple[str, bool]:
    """``WatchDirRequest`` / ``CreateWatcherRequest``: the path and whether recursive.
    Entries in events (envd 0.6.3) and network mounts (0.6.4) are newer than the version
    this face advertises."""
    for newer in ("includeEntry", "allowNetworkMounts"):
        if field(message, newer, bool, False):
            raise ConnectError("unimplemented", f"{newer} is not supported by this server")
    return path_of(message), field(message, "recursive", bool, False)


def watcher_id(message: dict[str, Any]) -> str:
    return _text(message, "watcherId", required=True)


def fs_event(watched: str, event: dict[str, Any]) -> dict[str, Any]:
    """One watch event (runtime_api/watches.py) as envd's ``FilesystemEvent``: its path
    relative to the watched directory."""
    path: str = event["path"]
    name = path[len(watched):].lstrip("/") if path.startswith(watched) else path
    return {"name": name, "type": _EVENT_TYPES.get(event["op"], "EVENT_TYPE_UNSPECIFIED")}


def written(info: FileInfo) -> dict[str, Any]:
    """One file of ``POST /files``'s answer."""
    return {"name": info.name, "type": "dir" if info.type == "dir" else "file",
            "path": info.path}


# -- tokens and signed URLs ---------------------------------------------------------------
def access_token(secret: bytes, sandbox_id: str) -> str:
    """The sandbox's envd access token: derived, never stored."""
    if len(secret) < 16:
        raise ValueError("the envd access secret is missing")  # never tokens of no secret
    return hmac.new(secret, b"envd-access:" + sandbox_id.encode(), hashlib.sha256).hexdigest()


def traffic_token(secret: bytes, sandbox_id: str) -> str:
    """The token a sandbox's ports want when it was made with allowPublicTraffic false
    (sent as ``e2b-traffic-access-token``): derived as the envd token is, another key."""
    if len(secret) < 16:
        raise ValueError("the envd access secret is missing")
    return hmac.new(secret, b"traffic:" + sandbox_id.encode(), hashlib.sha256).hexdigest()


def file_signature(path: str, operation: str, user: str, token: str,
                   expiration: int | None) -> str:
    """envd's v1 signature of a file URL (what the SDK's ``download_url`` computes)."""
    raw = f"{path}:{operation}:{user}:{token}" + ("" if expiration is None else f":{expiration}")
    digest = hashlib.sha256(raw.encode()).digest()
    return "v1_" + base64.b64encode(digest).rstrip(b"=").decode()
