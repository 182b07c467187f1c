"""Requests of the runtime API (files, processes, terminals), built without I/O.

The blocking and asyncio shells (_sync_runtime / _async_runtime) send these; a route or a
field name of the runtime API is written only here and in ``models``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from typing import IO, Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from ..models import (
    FileInfo,
    OutputChunk,
    ProcessInfo,
    ProcessResult,
    SandboxInfo,
    TerminalInfo,
    WatchEvent,
)
from ..settings import ClientSettings
from ._base import Call, addressed
from ._ws import WsTarget

TRANSFER_TIMEOUT_S = 3600.0
CHUNK = 1 << 20


def runtime_url(settings: ClientSettings, info: SandboxInfo, path: str,
                query: dict[str, Any] | None = None) -> tuple[str, dict[str, str]]:
    """URL and headers (token, and Host where needed) of a runtime route."""
    params = {k: _text(v) for k, v in (query or {}).items() if v is not None}
    suffix = f"?{urlencode(params)}" if params else ""
    url, host = addressed(settings, f"{info.runtime.base_url}/sandbox/{path}{suffix}")
    return url, {"authorization": f"Bearer {info.token}", **host}


def ws_target(settings: ClientSettings, info: SandboxInfo, path: str,
              query: dict[str, Any] | None = None) -> WsTarget:
    """Where to open a runtime WebSocket: the URI names the runtime host; the socket goes
    to where ``addressed`` sends HTTP (the server itself for ``*.localhost``)."""
    params = {k: _text(v) for k, v in (query or {}).items() if v is not None}
    url = f"{info.runtime.base_url}/sandbox/{path}" + (f"?{urlencode(params)}" if params else "")
    connect_url, host = addressed(settings, url)
    parts, connect = urlsplit(url), urlsplit(connect_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    port = connect.port or (443 if connect.scheme == "https" else 80)
    return WsTarget(urlunsplit(parts._replace(scheme=scheme)), connect.hostname or "", port,
                    {"authorization": f"Bearer {info.token}"})


def _text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def runtime_call(settings: ClientSettings, info: SandboxInfo, method: str, path: str,
                 parse: Any, body: dict[str, Any] | None = None,
                 query: dict[str, Any] | None = None, timeout_s: float = 60.0) -> Call[Any]:
    url, headers = runtime_url(settings, info, path, query)
    clean = None if body is None else {k: v for k, v in body.items() if v is not None}
    return Call(method, url, parse, clean, headers, timeout_s)


def _mode(mode: int | str | None) -> str | None:
    if mode is None:
        return None
    return format(mode, "o") if isinstance(mode, int) else mode


# -- files ------------------------------------------------------------------------------
def stat_call(s: ClientSettings, info: SandboxInfo, path: str) -> Call[FileInfo]:
    return runtime_call(s, info, "GET", "files/stat", lambda b: FileInfo.from_wire(b["file"]),
                        query={"path": path})


def list_call(s: ClientSettings, info: SandboxInfo, path: str,
              depth: int) -> Call[list[FileInfo]]:
    return runtime_call(s, info, "GET", "files",
                        lambda b: [FileInfo.from_wire(e) for e in b["entries"]],
                        query={"path": path, "depth": depth})


def write_call(s: ClientSettings, info: SandboxInfo, path: str, data: str | bytes,
               append: bool, mode: int | str | None) -> Call[FileInfo]:
    encoded = {"data": data, "encoding": "utf8"} if isinstance(data, str) else {
        "data": base64.b64encode(data).decode(), "encoding": "base64"}
    return runtime_call(s, info, "POST", "files/write",
                        lambda b: FileInfo.from_wire(b["files"][0]),
                        {"path": path, **encoded, "append": append or None, "mode": _mode(mode)},
                        timeout_s=TRANSFER_TIMEOUT_S)


def mkdir_call(s: ClientSettings, info: SandboxInfo, path: str, parents: bool,
               mode: int | str | None) -> Call[bool]:
    return runtime_call(s, info, "POST", "files/mkdir", lambda b: bool(b["created"]),
                        {"path": path, "parents": parents, "mode": _mode(mode)})


def move_call(s: ClientSettings, info: SandboxInfo, source: str, destination: str,
              overwrite: bool) -> Call[FileInfo]:
    return runtime_call(s, info, "POST", "files/move", lambda b: FileInfo.from_wire(b["entry"]),
                        {"from": source, "to": destination, "overwrite": overwrite})


def copy_call(s: ClientSettings, info: SandboxInfo, source: str, destination: str,
              recursive: bool, overwrite: bool) -> Call[FileInfo]:
    return runtime_call(s, info, "POST", "files/copy", lambda b: FileInfo.from_wire(b["entry"]),
                        {"from": source, "to": destination, "recursive": recursive,
                         "overwrite": overwrite}, timeout_s=TRANSFER_TIMEOUT_S)


def remove_call(s: ClientSettings, info: SandboxInfo, path: str, recursive: bool) -> Call[None]:
    return runtime_call(s, info, "POST", "files/delete", lambda b: None,
                        {"path": path, "recursive": recursive})


def chmod_call(s: ClientSettings, info: SandboxInfo, path: str, mode: int | str,
               recursive: bool) -> Call[None]:
    return runtime_call(s, info, "POST", "files/chmod", lambda b: None,
                        {"path": path, "mode": _mode(mode), "recursive": recursive})


def chown_call(s: ClientSettings, info: SandboxInfo, path: str, uid: int | None,
               gid: int | None, recursive: bool) -> Call[None]:
    return runtime_call(s, info, "POST", "files/chown", lambda b: None,
                        {"path": path, "uid": uid, "gid": gid, "recursive": recursive})


def upload_call(s: ClientSettings, info: SandboxInfo, path: str,
                mode: int | str | None) -> Call[FileInfo]:
    """PUT the raw bytes (the shell sends the body itself, streamed)."""
    return runtime_call(s, info, "PUT", "files/upload", lambda b: FileInfo.from_wire(b["file"]),
                        query={"path": path, "mode": _mode(mode)}, timeout_s=TRANSFER_TIMEOUT_S)


def download_call(s: ClientSettings, info: SandboxInfo, path: str, offset: int | None = None,
                  length: int | None = None) -> Call[None]:
    return runtime_call(s, info, "GET", "files/download", lambda b: None,
                        query={"path": path, "offset": offset, "length": length},
                        timeout_s=TRANSFER_TIMEOUT_S)


def watch_call(s: ClientSettings, info: SandboxInfo, path: str,
               recursive: bool) -> Call[dict[str, Any]]:
    return runtime_call(s, info, "POST", "files/watch", lambda b: dict(b["watch"]),
                        {"path": path, "recursive": recursive})


def stop_watch_call(s: ClientSettings, info: SandboxInfo, watch_id: str) -> Call[None]:
    return runtime_call(s, info, "DELETE", f"files/watch/{watch_id}", lambda b: None)


def parse_watch_message(raw: str | bytes) -> WatchEvent | None:
    """One message of a watch stream: an event, or None for the end."""
    message = json.loads(raw)
    return WatchEvent.from_wire(message["event"]) if message.get("type") == "event" else None


# -- processes --------------------------------------------------------------------------
def start_process_call(s: ClientSettings, info: SandboxInfo, command: str | list[str], *,
                       cwd: str | None, env: dict[str, str] | None, timeout_s: float | None,
                       user: str | None, stdin: bool,
                       buffer_bytes: int | None) -> Call[ProcessInfo]:
    """A shell line (str) or an argv run without a shell (list)."""
    if isinstance(command, str):
        shape: dict[str, Any] = {"command": command}
    elif command:
        shape = {"command": command[0], "args": list(command[1:]), "useShell": False}
    else:
        raise ValueError("command must not be empty")
    return runtime_call(s, info, "POST", "processes",
                        lambda b: ProcessInfo.from_wire(b["process"]), {
                            **shape, "cwd": cwd, "env": env, "runAs": user,
                            "timeoutMs": None if timeout_s is None else int(timeout_s * 1000),
                            "stdin": stdin, "outputBufferBytes": buffer_bytes})


def list_processes_call(s: ClientSettings, info: SandboxInfo) -> Call[list[ProcessInfo]]:
    return runtime_call(s, info, "GET", "processes",
                        lambda b: [ProcessInfo.from_wire(p) for p in b["data"]],
                        query={"limit": 1000})


def get_process_call(s: ClientSettings, info: SandboxInfo, pid: str) -> Call[ProcessInfo]:
    return runtime_call(s, info, "GET", f"processes/{pid}",
                        lambda b: ProcessInfo.from_wire(b["process"]))


def wait_process_call(s: ClientSettings, info: SandboxInfo, pid: str,
                      timeout_s: float | None) -> Call[ProcessResult]:
    timeout_ms = None if timeout_s is None else max(1, int(timeout_s * 1000))
    return runtime_call(s, info, "POST", f"processes/{pid}/wait",
                        lambda b: ProcessResult.from_wire(b["result"]),
                        {"timeoutMs": timeout_ms},
                        timeout_s=TRANSFER_TIMEOUT_S if timeout_s is None else timeout_s + 15)


def stdin_call(s: ClientSettings, info: SandboxInfo, pid: str, data: str | bytes | None,
               eof: bool) -> Call[None]:
    body: dict[str, Any] = {"eof": eof or None}
    if isinstance(data, str):
        body.update(data=data, encoding="utf8")
    elif data is not None:
        body.update(data=base64.b64encode(data).decode(), encoding="base64")
    return runtime_call(s, info, "POST", f"processes/{pid}/stdin", lambda b: None, body)


def signal_call(s: ClientSettings, info: SandboxInfo, pid: str,
                signal: str | int) -> Call[ProcessInfo]:
    return runtime_call(s, info, "POST", f"processes/{pid}/signal",
                        lambda b: ProcessInfo.from_wire(b["process"]), {"signal": signal})


def kill_call(s: ClientSettings, info: SandboxInfo, pid: str) -> Call[ProcessInfo]:
    return runtime_call(s, info, "DELETE", f"processes/{pid}",
                        lambda b: ProcessInfo.from_wire(b["process"]))


def stream_call(s: ClientSettings, info: SandboxInfo, pid: str, from_seq: int) -> Call[None]:
    call = runtime_call(s, info, "GET", f"processes/{pid}/stream", lambda b: None,
                        query={"from_seq": from_seq or None}, timeout_s=TRANSFER_TIMEOUT_S)
    call.headers["accept"] = "text/event-stream"
    return call


class EventStreamParser:
    """Server-sent events, fed line by line: ``(event, data)`` for each complete event."""

    def __init__(self) -> None:
        self._event = "message"
        self._data: list[str] = []

    def feed(self, line: str) -> tuple[str, Any] | None:
        line = line.rstrip("\r\n")
        if line == "":
            if not self._data:
                return None
            event, data = self._event, "\n".join(self._data)
            self._event, self._data = "message", []
            return event, json.loads(data)
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None


def output_chunk(data: dict[str, Any]) -> OutputChunk:
    raw = data["data"]
    payload = base64.b64decode(raw) if data.get("encoding") == "base64" else raw.encode()
    return OutputChunk(int(data["seq"]), data["stream"], payload, int(data["timestamp"]))


# -- terminals --------------------------------------------------------------------------
def create_terminal_call(s: ClientSettings, info: SandboxInfo, command: str, rows: int,
                         cols: int, cwd: str | None, env: dict[str, str] | None,
                         user: str | None) -> Call[TerminalInfo]:
    return runtime_call(s, info, "POST", "pty", lambda b: TerminalInfo.from_wire(b["pty"]), {
        "command": command, "rows": rows, "cols": cols, "cwd": cwd, "env": env, "runAs": user})


def terminal_call(s: ClientSettings, info: SandboxInfo, tid: str, verb: str,
                  body: dict[str, Any] | None = None,
                  timeout_s: float = 60.0) -> Call[TerminalInfo]:
    return runtime_call(s, info, "POST", f"pty/{tid}/{verb}",
                        lambda b: TerminalInfo.from_wire(b["pty"]), body or {},
                        timeout_s=timeout_s)


def terminal_message(raw: str | bytes) -> bytes | None:
    """One message from a terminal: output bytes, or None when it has ended."""
    message = json.loads(raw)
    if message.get("type") == "output":
        return base64.b64decode(message["data"])
    if message.get("type") == "exit":
        return None
    return b""


def terminal_input(data: str | bytes) -> str:
    if isinstance(data, str):
        return json.dumps({"type": "input", "data": data})
    return json.dumps({"type": "input", "data": base64.b64encode(data).decode(),
                       "encoding": "base64"})


def terminal_resize(rows: int, cols: int) -> str:
    return json.dumps({"type": "resize", "rows": rows, "cols": cols})


def chunks_of(source: bytes | IO[bytes]) -> bytes | Iterator[bytes]:
    """An upload body: bytes as they are, a binary file read in chunks (never whole)."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)

    def read() -> Iterator[bytes]:
        while chunk := source.read(CHUNK):
            yield chunk

    return read()


def achunks_of(source: bytes | IO[bytes]) -> bytes | AsyncIterator[bytes]:
    """``chunks_of`` for httpx.AsyncClient, which wants an async iterable body."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)

    async def read() -> AsyncIterator[bytes]:
        while chunk := source.read(CHUNK):
            yield chunk

    return read()
