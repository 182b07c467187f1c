"""Refusing a WebSocket handshake with the same JSON error an HTTP route would send."""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from ..errors import SandportError


async def deny(websocket: WebSocket, error: SandportError) -> None:
    """Answer the upgrade request with ``error``'s status and JSON body (no upgrade)."""
    response = JSONResponse(error.to_wire(), status_code=error.status)
    try:
        await websocket.send_denial_response(response)
    except RuntimeError:  # a server without the denial-response extension
        await websocket.close(code=1008, reason=error.message[:120])
