"""The edge proxy's I/O: an asyncio protocol server that relays HTTP/1.1 and tunnels.

Per client connection, ``httptools`` parses every request head (``decide.Edge`` routes
and authorizes each one); bodies stream to the upstream as they arrive, responses stream
back as they arrive, and a ``101 Switching Protocols`` turns both sockets into a raw
two-way tunnel. One upstream connection at a time per client connection, kept alive
while consecutive requests go to the same place. Nothing is buffered beyond the socket
write limits: when one side cannot take more, the other side stops being read.

Request bodies are re-framed from what the parser decoded (``Content-Length`` bytes as
they are, chunked bodies re-chunked), so what upstream receives is exactly what the
proxy parsed: no request smuggling through framing the two sides read differently.
Response heads are re-serialized from the parsed status and headers (names, values and
order kept), bodies re-framed the same way.

Deadlines, checked by one sweep task: a request head must arrive within
``header_timeout_s`` of its first byte (else 408), counted only while no earlier request
of the connection is still being served; a kept-alive connection with no request closes
after ``idle_timeout_s``; and once a head has arrived, the exchange (request body,
response, or a WebSocket tunnel) closes when no bytes have moved in either direction for
``idle_timeout_s``, with a 504 if the upstream had not begun to answer. A stream that keeps
sending (SSE, a busy tunnel) is never cut; a tunnel silent both ways for that long is
closed, as nginx's ``proxy_read_timeout`` does: WebSocket clients that idle longer send
pings. The sandport API is trusted to take its time (an exec may run for hours): while it
works on a whole request, only a client that stops reading counts. A request body that
averages under ``min_body_rate`` over a window is cut with 408 (a trickle keeps bytes
moving, so the idle deadline alone would never fire); a client that half-closes before its
request is complete ends the exchange at once.

Connection limits (``limits.EdgeLimits``): each client address holds at most
``per_address`` connections (more are answered 503 and closed); once a new connection's
descriptor number passes the limit minus a reserve, idle and header-pending connections
are closed, oldest first, to make room, and only when there are none is the new one
answered 503. The reserve keeps descriptors for the API's own connections, so the control
API answers while a client hoards connections.
"""

from __future__ import annotations

import asyncio
import resource
import ssl
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import replace
from itertools import islice

from .client import ClientConnection
from .decide import Answer, Edge, Redeem
from .limits import EdgeLimits, client_key, fd_reserve_for
from .upstream import Upstream

SWEEP_S = 0.5
HANDSHAKE_S = 10.0
TLS_SHUTDOWN_S = 3.0


class ProxyServer:
    def __init__(self, edge: Edge, redeem: Callable[[Redeem], Awaitable[Answer]], *,
                 wake: Callable[[str], Awaitable[bool]] | None = None,
                 touch: Callable[[str], None] | None = None,
                 header_timeout_s: float = 15.0, idle_timeout_s: float = 75.0,
                 limits: EdgeLimits | None = None) -> None:
        self.edge = edge
        self.redeem = redeem
        self.wake = wake
        self.touch = touch  # told of every request passed to a sandbox (idle detection)
        self.header_timeout_s = header_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self._by_sandbox: defaultdict[str, set[Upstream]] = defaultdict(set)
        self.limits = limits or EdgeLimits()
        # Both in the order connections were made (idle: became idle), oldest first.
        self.connections: dict[ClientConnection, None] = {}
        self.idle: dict[ClientConnection, None] = {}  # no request under way, not a tunnel
        self._per_address: dict[str, int] = {}
        self.fd_high = self.limits.fd_high  # re-read by each sweep (see _read_fd_limit)
        self._sweeper: asyncio.Task[None] | None = None

    def admit(self, conn: ClientConnection, address: str) -> bool:
        """Count ``conn`` under its client's address, if that address has room."""
        if self.limits.is_relay(address):
            return True
        address = client_key(address)
        held = self._per_address.get(address, 0)
        if held >= self.limits.per_address:
            return False
        self._per_address[address] = held + 1
        conn.counted = address
        return True

    def forget(self, conn: ClientConnection) -> None:
        """``conn`` closed."""
        self.connections.pop(conn, None)
        self.idle.pop(conn, None)
        address, conn.counted = conn.counted, None
        if address is not None:
            held = self._per_address[address] - 1
            if held:
                self._per_address[address] = held
            else:
                del self._per_address[address]

    def shed(self, keep: ClientConnection) -> int:
        """Close idle and header-pending connections, oldest first, to free descriptors:
        a batch at a time, so that a flood of connections does not scan on each one."""
        batch = max(8, fd_reserve_for(self.limits.fd_limit) // 4)
        victims = [c for c in islice(self.idle, batch + 1) if c is not keep][:batch]
        for conn in victims:
            self.idle.pop(conn, None)
            conn.abort()
        return len(victims)

    def connection(self) -> ClientConnection:
        return ClientConnection(self)

    async def listen(self, host: str, port: int,
                     tls: ssl.SSLContext | None = None) -> asyncio.Server:
        """Plain HTTP, or HTTPS with ``tls``. A handshake must end within HANDSHAKE_S (or
        the header timeout, if shorter); the connection counts against the limits once it
        has (as nginx's limit_conn does). A closing connection waits TLS_SHUTDOWN_S at
        most for the client's close_notify."""
        loop = asyncio.get_running_loop()
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())
        if tls is None:
            return await loop.create_server(self.connection, host, port, backlog=2048,
                                            reuse_address=True)
        return await loop.create_server(
            self.connection, host, port, backlog=2048, reuse_address=True, ssl=tls,
            ssl_handshake_timeout=min(HANDSHAKE_S, self.header_timeout_s),
            ssl_shutdown_timeout=TLS_SHUTDOWN_S)

    async def _sweep(self) -> None:
        """Close connections past their deadline: a sweep twice a second costs less than
        a timer armed and cancelled on every request or read."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_S)
            self._read_fd_limit()
            now = loop.time()
            for conn in list(self.connections):
                conn.check_deadline(now)

    def _read_fd_limit(self) -> None:
        """The open-files limit may change under a running server (``prlimit``)."""
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft != self.limits.fd_limit and soft != resource.RLIM_INFINITY:
            self.limits = replace(self.limits, fd_limit=soft)
            self.fd_high = self.limits.fd_high

    def cut(self, sandbox_id: str, port: int | None = None) -> None:
        """Close connections to a sandbox (or one of its ports) that just went away."""
        for upstream in list(self._by_sandbox.get(sandbox_id, ())):
            if port is None or upstream.port == port:
                upstream.client.abort()

    def cut_tokens(self, sandbox_id: str, token_hashes: frozenset[str]) -> None:
        """Close client connections whose request or tunnel came with one of these (now
        revoked) tokens of the sandbox: its runtime API streams and WebSockets, and its
        auth ports' tunnels."""
        for conn in list(self.connections):
            token = conn.token
            if token is not None and token[0] == sandbox_id and token[1] in token_hashes \
                    and conn.busy:  # an idle kept-alive connection holds no authority
                conn.abort()

    def in_use(self, sandbox_id: str) -> bool:
        """Whether a response from the sandbox, or a tunnel (WebSocket) to it, is open."""
        return any(u.active or u.client.tunnel for u in self._by_sandbox.get(sandbox_id, ()))

    def _track(self, upstream: Upstream) -> None:
        if upstream.sandbox_id is not None:
            self._by_sandbox[upstream.sandbox_id].add(upstream)

    def _untrack(self, upstream: Upstream) -> None:
        if upstream.sandbox_id is not None:
            held = self._by_sandbox.get(upstream.sandbox_id)
            if held is not None:
                held.discard(upstream)
                if not held:
                    del self._by_sandbox[upstream.sandbox_id]

