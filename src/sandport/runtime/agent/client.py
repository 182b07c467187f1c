"""Run one command through a sandbox's agent and collect its output."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Sequence

from ...errors import RuntimeFailure, ValidationFailed
from ...models import ExecResult
from .protocol import AGENT_PORT, FrameDecoder, FrameError, encode_request, exit_code

CONNECT_RETRY_S = 3.0  # a sandbox created a moment ago may not be listening yet
# A connection that neither succeeds nor is refused (its packets dropped: a sandbox whose
# network a CRIU left locked) fails after this instead of the kernel's two minutes.
CONNECT_TIMEOUT_S = 5.0
START_TIMEOUT_S = 10.0  # from the request sent to the agent's "started" (its pid)


async def _connect(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    deadline = time.monotonic() + CONNECT_RETRY_S
    while True:
        try:
            return await asyncio.wait_for(asyncio.open_connection(host, port),
                                          CONNECT_TIMEOUT_S)
        except TimeoutError:
            raise RuntimeFailure("the sandbox's agent is not answering") from None
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise RuntimeFailure("the sandbox's agent is not answering") from None
            await asyncio.sleep(0.005)


async def run_command(
    host: str, cwd: str, argv: Sequence[str], env: Sequence[str], timeout_s: float | None,
    output_cap: int, port: int = AGENT_PORT,
) -> ExecResult:
    reader, writer = await _connect(host, port)
    stdout, stderr = bytearray(), bytearray()
    code: int | None = None
    try:
        writer.write(encode_request(cwd, argv, env))
        decoder = FrameDecoder()

        async def collect() -> int:
            while chunk := await reader.read(65536):
                try:
                    frames = decoder.feed(chunk)
                except FrameError:
                    raise RuntimeFailure("the sandbox's agent sent a malformed frame") from None
                for kind, payload in frames:
                    if kind == "x":
                        return exit_code(payload)
                    if kind == "f":
                        raise _start_failure(payload.decode(errors="replace"), cwd)
                    target = stdout if kind == "o" else stderr
                    if len(target) < output_cap:
                        target += payload[: output_cap - len(target)]
            raise RuntimeFailure("the sandbox's agent closed the connection")

        # Closing the connection on timeout makes the agent kill the command's group.
        with contextlib.suppress(TimeoutError):
            code = await asyncio.wait_for(collect(), timeout_s)
    finally:
        writer.close()
    return ExecResult(
        stdout=bytes(stdout).decode(errors="replace"),
        stderr=bytes(stderr).decode(errors="replace"),
        exit_code=124 if code is None else code,
        timed_out=code is None,
    )


def abort_connection(writer: asyncio.StreamWriter) -> None:
    """Close with a reset (RST), which the agent notices at once and answers by killing the
    command's group even when its stdin is backed up: then the agent is not reading the
    socket, and a plain close's FIN can wait behind unsent input (see agent.c)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _start_failure(message: str, cwd: str) -> Exception:
    if message.startswith("chdir"):
        reason = message.partition(": ")[2] or message
        return ValidationFailed(f"cwd {cwd!r} is not usable in the sandbox: {reason}")
    return RuntimeFailure(f"the command could not be started: {message}")
