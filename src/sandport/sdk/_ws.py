"""Opening a WebSocket to a runtime route, blocking or asyncio (the only I/O that the two
SDK shells cannot share through httpx)."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection as AsyncConnection
from websockets.asyncio.client import connect as async_connect
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as sync_connect

OPEN_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class WsTarget:
    uri: str  # names the sandbox's runtime host (the Host header the server routes on)
    host: str  # where to connect
    port: int
    headers: dict[str, str]


def ws_connect(target: WsTarget) -> ClientConnection:
    sock = socket.create_connection((target.host, target.port), timeout=OPEN_TIMEOUT_S)
    try:
        return sync_connect(target.uri, sock=sock, additional_headers=target.headers,
                            open_timeout=OPEN_TIMEOUT_S, proxy=None, max_size=None,
                            legacy=True)  # ours outlives one with-block: an iterator owns it
    except BaseException:
        sock.close()
        raise


async def ws_aconnect(target: WsTarget) -> AsyncConnection:
    return await async_connect(target.uri, host=target.host, port=target.port,
                               additional_headers=target.headers, open_timeout=OPEN_TIMEOUT_S,
                               proxy=None, max_size=None)


def recv_message(ws: ClientConnection, timeout: float | None) -> str | bytes:
    """The next message; TimeoutError after ``timeout`` seconds."""
    return ws.recv(timeout)


async def arecv_message(ws: AsyncConnection, timeout: float | None) -> str | bytes:
    return await asyncio.wait_for(ws.recv(), timeout)
