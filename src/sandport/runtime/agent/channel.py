"""A live command in a sandbox: one agent connection (protocol v2) as an asyncio protocol.

What the command prints arrives through ``on_output``; ``pause()``/``resume()`` stop and
restart reading the connection, which is how a slow reader of the output holds the command
back (TCP backpressure to the agent, whose writes block, so the command's own writes block)
instead of the server buffering without bound. Closing the connection makes the agent kill
the command's process group.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from ...errors import RuntimeFailure
from .client import CONNECT_RETRY_S, CONNECT_TIMEOUT_S, START_TIMEOUT_S
from .protocol import (
    AGENT_PORT,
    FrameDecoder,
    FrameError,
    close_stdin_frame,
    decode_exit,
    decode_pid,
    encode_request_v2,
    resize_frame,
    signal_frame,
    stdin_frame,
)


@dataclass(frozen=True, slots=True)
class CommandSpec:
    argv: Sequence[str]
    env: Sequence[str]
    cwd: str
    stdin: bool = True
    pty: tuple[int, int] | None = None
    uid: int | None = None
    gid: int | None = None
    groups: Sequence[int] | None = None


class CommandListener:
    """What a channel reports; the process manager implements it."""

    def on_output(self, stream: str, data: bytes) -> None: ...

    def on_exit(self, code: int, signum: int) -> None: ...

    def on_failed(self, message: str) -> None: ...

    def on_lost(self) -> None:
        """The connection ended without an exit report (the sandbox stopped, say)."""


class CommandChannel(asyncio.Protocol):
    def __init__(self, listener: CommandListener) -> None:
        self.listener = listener
        self.pid: int | None = None
        self.started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder()
        self._ended = False

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except FrameError:
            self.close()  # not our agent talking: hang up (connection_lost reports it)
            return
        for kind, payload in frames:
            if kind == "p":
                self.pid = decode_pid(payload)
                if not self.started.done():
                    self.started.set_result(self.pid)
            elif kind == "o":
                self.listener.on_output("stdout", payload)
            elif kind == "e":
                self.listener.on_output("stderr", payload)
            elif kind == "x":
                self._ended = True
                self.listener.on_exit(*decode_exit(payload))
            elif kind == "f":
                self._ended = True
                message = payload.decode(errors="replace")
                if not self.started.done():
                    self.started.set_exception(RuntimeFailure(message))
                self.listener.on_failed(message)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.started.done():
            self.started.set_exception(RuntimeFailure("the sandbox's agent closed the connection"))
        if not self._ended:
            self._ended = True
            self.listener.on_lost()

    # -- control ------------------------------------------------------------------------
    def _send(self, frame: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(frame)

    def write_stdin(self, data: bytes) -> None:
        for start in range(0, len(data), 1 << 20):
            self._send(stdin_frame(data[start:start + (1 << 20)]))

    def backlog(self) -> int:
        """Bytes written to the agent that it has not taken yet (stdin the command is
        not reading backs up here)."""
        if self._transport is None or self._transport.is_closing():
            return 0
        return int(self._transport.get_write_buffer_size())

    def close_stdin(self) -> None:
        self._send(close_stdin_frame())

    def signal(self, signum: int) -> None:
        self._send(signal_frame(signum))

    def resize(self, rows: int, cols: int) -> None:
        self._send(resize_frame(rows, cols))

    def pause(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def close(self) -> None:
        """Hang up: the agent kills the command's process group. A reset, not a FIN: a FIN
        could wait behind unsent stdin that the command is not reading."""
        if self._transport is not None and not self._transport.is_closing():
            sock = self._transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._transport.abort()

    def kill(self) -> None:
        self.signal(signal.SIGKILL)


async def start_command(host: str, spec: CommandSpec, listener: CommandListener,
                        port: int = AGENT_PORT) -> CommandChannel:
    """Start ``spec`` through the agent at ``host``; returns once the command runs (its pid
    is known) or raises RuntimeFailure with the agent's reason."""
    loop = asyncio.get_running_loop()
    channel = CommandChannel(listener)
    deadline = loop.time() + CONNECT_RETRY_S
    while True:
        try:
            await asyncio.wait_for(loop.create_connection(lambda: channel, host, port),
                                   CONNECT_TIMEOUT_S)
            break
        except TimeoutError:
            raise RuntimeFailure("the sandbox's agent is not answering") from None
        except ConnectionRefusedError:  # a sandbox created a moment ago may not listen yet
            if loop.time() > deadline:
                raise RuntimeFailure("the sandbox's agent is not answering") from None
            await asyncio.sleep(0.005)
    try:
        channel._send(encode_request_v2(
            spec.argv, spec.env, cwd=spec.cwd, stdin_pipe=spec.stdin, pty=spec.pty,
            uid=spec.uid, gid=spec.gid, groups=spec.groups))
        try:
            await asyncio.wait_for(asyncio.shield(channel.started), START_TIMEOUT_S)
        except TimeoutError:
            raise RuntimeFailure("the sandbox's agent did not start the command") from None
    except BaseException:
        # Nobody will await ``started`` now: cancel it, or the close below sets an exception
        # on it that asyncio logs as "Future exception was never retrieved"; and hang up, or
        # the connection stays open until the sandbox stops.
        channel.started.cancel()
        channel.close()
        raise
    return channel

