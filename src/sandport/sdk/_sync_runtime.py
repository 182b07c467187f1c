"""The blocking runtime API of a sandbox: ``sb.files``, ``sb.processes``, ``sb.terminal``."""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Literal, TypeVar, overload

import httpx
from websockets.exceptions import ConnectionClosed

from ..errors import NotFound, TransportError
from ..models import FileInfo, OutputChunk, ProcessInfo, ProcessResult, TerminalInfo, WatchEvent
from . import _runtime as rt
from ._base import Call
from ._ws import recv_message, ws_connect

if TYPE_CHECKING:
    from ._sync import Sandbox

T = TypeVar("T")


class Files:
    """The sandbox's filesystem. Paths are paths inside the sandbox (relative ones start
    at the image's working directory); nothing here can reach a file outside it."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    def _send(self, call: Call[T]) -> T:
        return self._sb._send(call)

    def stat(self, path: str) -> FileInfo:
        return self._send(rt.stat_call(self._sb._settings, self._sb._rt(), path))

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except NotFound:
            return False
        return True

    def list(self, path: str, *, depth: int = 1) -> list[FileInfo]:
        return self._send(rt.list_call(self._sb._settings, self._sb._rt(), path, depth))

    @overload
    def read(self, path: str, *, offset: int | None = None, length: int | None = None,
             format: Literal["text"] = "text") -> str: ...

    @overload
    def read(self, path: str, *, offset: int | None = None, length: int | None = None,
             format: Literal["bytes"]) -> bytes: ...

    def read(self, path: str, *, offset: int | None = None, length: int | None = None,
             format: Literal["text", "bytes"] = "text") -> str | bytes:
        """A file's content (or ``length`` bytes from ``offset``), as text or bytes."""
        data = self._fetch(path, None, offset, length)
        assert isinstance(data, bytes)
        return data if format == "bytes" else data.decode(errors="replace")

    def write(self, path: str, data: str | bytes, *, append: bool = False,
              mode: int | str | None = None) -> FileInfo:
        """Write (or append to) a file, creating missing parent directories."""
        if append:
            call = rt.write_call(self._sb._settings, self._sb._rt(), path, data, append, mode)
            return self._send(call)
        raw = data.encode() if isinstance(data, str) else data
        return self._put(path, raw, mode)

    def mkdir(self, path: str, *, parents: bool = False,
              mode: int | str | None = None) -> bool:
        """Make a directory; False if it already existed (only allowed with ``parents``)."""
        call = rt.mkdir_call(self._sb._settings, self._sb._rt(), path, parents, mode)
        return self._send(call)

    def move(self, source: str, destination: str, *, overwrite: bool = False) -> FileInfo:
        call = rt.move_call(self._sb._settings, self._sb._rt(), source, destination, overwrite)
        return self._send(call)

    def copy(self, source: str, destination: str, *, recursive: bool = False,
             overwrite: bool = False) -> FileInfo:
        call = rt.copy_call(self._sb._settings, self._sb._rt(), source, destination, recursive,
                            overwrite)
        return self._send(call)

    def remove(self, path: str, *, recursive: bool = False) -> None:
        self._send(rt.remove_call(self._sb._settings, self._sb._rt(), path, recursive))

    def chmod(self, path: str, mode: int | str, *, recursive: bool = False) -> None:
        self._send(rt.chmod_call(self._sb._settings, self._sb._rt(), path, mode, recursive))

    def chown(self, path: str, *, uid: int | None = None, gid: int | None = None,
              recursive: bool = False) -> None:
        call = rt.chown_call(self._sb._settings, self._sb._rt(), path, uid, gid, recursive)
        self._send(call)

    def upload(self, path: str, source: bytes | IO[bytes], *,
               mode: int | str | None = None) -> int:
        """Stream ``source`` (bytes, or a binary file read in chunks) into ``path``;
        returns the number of bytes written."""
        written = self._put(path, source, mode)
        return written.size

    def _put(self, path: str, source: bytes | IO[bytes], mode: int | str | None) -> FileInfo:
        call = rt.upload_call(self._sb._settings, self._sb._rt(), path, mode)
        try:
            response = self._sb._http().request(
                call.method, call.url, content=rt.chunks_of(source), headers=call.headers,
                timeout=call.timeout_s)
        except httpx.HTTPError as exc:
            raise TransportError(f"upload to {path} failed: {exc}") from None
        return call.parse(response.status_code, response.content)

    def download(self, path: str, target: IO[bytes] | None = None) -> bytes | int:
        """A file's bytes; with ``target`` (a binary file), streamed into it in chunks and
        the number of bytes returned."""
        return self._fetch(path, target, None, None)

    def _fetch(self, path: str, target: IO[bytes] | None, offset: int | None,
               length: int | None) -> bytes | int:
        call = rt.download_call(self._sb._settings, self._sb._rt(), path, offset, length)
        try:
            with self._sb._http().stream(call.method, call.url, headers=call.headers,
                                         timeout=call.timeout_s) as response:
                if response.status_code >= 400:
                    response.read()
                    call.parse(response.status_code, response.content)
                if target is None:
                    return response.read()
                written = 0
                for chunk in response.iter_bytes(rt.CHUNK):
                    target.write(chunk)
                    written += len(chunk)
                return written
        except httpx.HTTPError as exc:
            raise TransportError(f"download of {path} failed: {exc}") from None

    def watch(self, path: str, *, recursive: bool = False) -> Watch:
        """Watch a directory for changes; iterate ``watch.events()``, ``stop()`` it after."""
        call = rt.watch_call(self._sb._settings, self._sb._rt(), path, recursive)
        return Watch(self._sb, self._send(call))


class Watch:
    """A directory watch on the server. It records changes from its creation on, whether
    or not ``events()`` is being read, and ends when stopped or when its sandbox stops."""

    def __init__(self, sandbox: Sandbox, status: dict[str, Any]) -> None:
        self._sb = sandbox
        self.id = str(status["id"])
        self.path = str(status["path"])

    def events(self, *, cursor: int = 0) -> Iterator[WatchEvent]:
        """Changes after sequence number ``cursor``, as they happen, until the watch ends
        (pass the last ``seq`` seen to resume after a disconnect)."""
        target = rt.ws_target(self._sb._settings, self._sb._rt(),
                              f"files/watch/{self.id}/ws", {"cursor": cursor})
        ws = ws_connect(target)
        try:
            while True:
                try:
                    event = rt.parse_watch_message(ws.recv())
                except ConnectionClosed:
                    return
                if event is None:
                    return
                yield event
        finally:
            ws.close()

    def __iter__(self) -> Iterator[WatchEvent]:
        return self.events()

    def stop(self) -> None:
        self._sb._send(rt.stop_watch_call(self._sb._settings, self._sb._rt(), self.id))

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class Processes:
    """Processes in the sandbox that run in the background, with or without a client."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    def start(self, command: str | list[str], *, cwd: str | None = None,
              env: dict[str, str] | None = None, timeout: float | None = None,
              user: str | None = None, stdin: bool = True,
              buffer_bytes: int | None = None) -> Process:
        """Start ``command`` (a shell line, or an argv list run without a shell) and
        return at once. ``timeout`` kills it after that many seconds; ``user`` runs it as
        that user of the sandbox; the server keeps its last ``buffer_bytes`` of output
        (default 4 MiB) for clients that attach later."""
        call = rt.start_process_call(self._sb._settings, self._sb._rt(), command, cwd=cwd,
                                     env=env, timeout_s=timeout, user=user, stdin=stdin,
                                     buffer_bytes=buffer_bytes)
        return Process(self._sb, self._sb._send(call))

    def list(self) -> list[ProcessInfo]:
        return self._sb._send(rt.list_processes_call(self._sb._settings, self._sb._rt()))

    def get(self, process_id: str) -> Process:
        call = rt.get_process_call(self._sb._settings, self._sb._rt(), process_id)
        return Process(self._sb, self._sb._send(call))


class Process:
    def __init__(self, sandbox: Sandbox, info: ProcessInfo) -> None:
        self._sb = sandbox
        self.info = info

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def pid(self) -> int | None:
        return self.info.pid

    def refresh(self) -> ProcessInfo:
        call = rt.get_process_call(self._sb._settings, self._sb._rt(), self.id)
        self.info = self._sb._send(call)
        return self.info

    def stream(self, *, from_seq: int = 0) -> Iterator[OutputChunk]:
        """Output chunks as they come (from ``from_seq``, or the oldest the server kept),
        until the process ends. Stopping early leaves the process running."""
        call = rt.stream_call(self._sb._settings, self._sb._rt(), self.id, from_seq)
        parser = rt.EventStreamParser()
        try:
            with self._sb._http().stream(call.method, call.url, headers=call.headers,
                                         timeout=call.timeout_s) as response:
                if response.status_code >= 400:
                    response.read()
                    call.parse(response.status_code, response.content)
                for line in response.iter_lines():
                    event = parser.feed(line)
                    if event is None:
                        continue
                    if event[0] == "output":
                        yield rt.output_chunk(event[1])
                    elif event[0] == "done":
                        return
        except httpx.HTTPError as exc:
            raise TransportError(f"the output stream of {self.id} broke: {exc}") from None

    def __iter__(self) -> Iterator[OutputChunk]:
        """``for chunk in proc:`` is ``proc.stream()``."""
        return self.stream()

    def write_stdin(self, data: str | bytes) -> None:
        self._sb._send(rt.stdin_call(self._sb._settings, self._sb._rt(), self.id, data, False))

    def close_stdin(self) -> None:
        self._sb._send(rt.stdin_call(self._sb._settings, self._sb._rt(), self.id, None, True))

    def signal(self, signal: str | int) -> None:
        """Send ``signal`` (``"SIGTERM"``, ``"INT"``, ``9``…) to the process's group."""
        call = rt.signal_call(self._sb._settings, self._sb._rt(), self.id, signal)
        self.info = self._sb._send(call)

    def wait(self, timeout: float | None = None) -> ProcessResult:
        """Wait for the end; raises RequestTimeout if ``timeout`` seconds pass first."""
        call = rt.wait_process_call(self._sb._settings, self._sb._rt(), self.id, timeout)
        result = self._sb._send(call)
        self.info = result.info
        return result

    def kill(self) -> ProcessResult:
        self._sb._send(rt.kill_call(self._sb._settings, self._sb._rt(), self.id))
        return self.wait(30)


class Terminal:
    """Terminals: a program (a shell, by default) on a pseudo-terminal in the sandbox."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    def create(self, command: str = "/bin/bash", *, rows: int = 24, cols: int = 80,
               cwd: str | None = None, env: dict[str, str] | None = None,
               user: str | None = None) -> TerminalHandle:
        call = rt.create_terminal_call(self._sb._settings, self._sb._rt(), command, rows, cols,
                                       cwd, env, user)
        return TerminalHandle(self._sb, self._sb._send(call))


class TerminalHandle:
    def __init__(self, sandbox: Sandbox, info: TerminalInfo) -> None:
        self._sb = sandbox
        self.info = info

    @property
    def id(self) -> str:
        return self.info.id

    def connect(self, *, cursor: int = 0) -> TerminalSession:
        """Attach: what the terminal printed (after ``cursor``) comes first, then live."""
        target = rt.ws_target(self._sb._settings, self._sb._rt(), f"pty/{self.id}/ws",
                              {"cursor": cursor})
        return TerminalSession(ws_connect(target))

    def resize(self, rows: int, cols: int) -> TerminalInfo:
        call = rt.terminal_call(self._sb._settings, self._sb._rt(), self.id, "resize",
                                {"rows": rows, "cols": cols})
        self.info = self._sb._send(call)
        return self.info

    def wait(self, timeout: float | None = None) -> TerminalInfo:
        body = {} if timeout is None else {"timeoutMs": max(1, int(timeout * 1000))}
        call = rt.terminal_call(self._sb._settings, self._sb._rt(), self.id, "wait", body,
                                rt.TRANSFER_TIMEOUT_S if timeout is None else timeout + 15)
        self.info = self._sb._send(call)
        return self.info

    def kill(self) -> TerminalInfo:
        call = rt.terminal_call(self._sb._settings, self._sb._rt(), self.id, "kill")
        self._sb._send(call)
        return self.wait(30)


class TerminalSession:
    """A live connection to a terminal: ``send`` keys, ``read`` what it prints."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws

    def send(self, data: str | bytes) -> None:
        self._ws.send(rt.terminal_input(data))

    def resize(self, rows: int, cols: int) -> None:
        self._ws.send(rt.terminal_resize(rows, cols))

    def read(self, timeout: float | None = None) -> bytes | None:
        """The next output (waiting up to ``timeout`` s: b"" if nothing came); None once
        the terminal's program has ended."""
        try:
            message = recv_message(self._ws, timeout)
        except TimeoutError:
            return b""
        except ConnectionClosed:
            return None
        return rt.terminal_message(message)

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> TerminalSession:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
