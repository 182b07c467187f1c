"""The proxy's server loop in this process, with real sockets to a local upstream, for
moments a real sandbox cannot be timed into: a port that closes while the proxy is still
connecting to it, an upstream that goes away while it had reading paused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from sandport.proxy.decide import Answer, Edge, Redeem
from sandport.proxy.routes import RouteTable, SandboxRoute
from sandport.proxy.server import ProxyServer
from sandport.proxy.urls import PublicUrls

SID = "0123456789abcdef0123"


@dataclass
class Upstream:
    """A local HTTP server answering every request head with ``200 ok``."""

    server: asyncio.Server
    seen: list[bytes] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    def drop_connections(self) -> None:
        for writer in self.writers:
            writer.close()


async def _upstream() -> Upstream:
    up = Upstream(None)  # type: ignore[arg-type]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up.writers.append(writer)
        try:
            while True:
                up.seen.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    up.server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return up


@dataclass
class Edges:
    proxy: ProxyServer
    port: int
    routes: RouteTable


@asynccontextmanager
async def _proxy(routes: RouteTable) -> AsyncIterator[Edges]:
    async def redeem(request: Redeem) -> Answer:
        raise AssertionError("no grants here")

    edge = Edge(PublicUrls.parse("http://{port}-{id}.localhost"), routes, "/nonexistent.sock",
                b"s" * 32)
    proxy = ProxyServer(edge, redeem)
    routes.watch(proxy.cut)
    listener = await proxy.listen("127.0.0.1", 0)
    try:
        yield Edges(proxy, int(listener.sockets[0].getsockname()[1]), routes)
    finally:
        for conn in list(proxy.connections):
            conn.abort()
        listener.close()
        assert proxy._sweeper is not None
        proxy._sweeper.cancel()
        await asyncio.sleep(0.05)


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
               host: str) -> bytes:
    writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    await reader.readexactly(length)
    return head.split(b"\r\n", 1)[0]


def _run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await scenario()
    asyncio.run(main())


@pytest.mark.parametrize("ports, status", [({}, b"404"), ("private", b"401")])
def test_port_closed_while_connecting_is_not_reached(ports: Any, status: bytes) -> None:
    async def scenario() -> None:
        up = await _upstream()
        routes = RouteTable()
        routes.put(SandboxRoute(SID, "127.0.0.1", "tok", 2e9, {up.port: False}))
        async with _proxy(routes) as edges:
            reader, writer = await asyncio.open_connection("127.0.0.1", edges.port)
            loop = asyncio.get_running_loop()
            connect, gate = loop.create_connection, asyncio.Event()

            async def slow_connect(*args: Any, **kwargs: Any) -> Any:
                await gate.wait()
                return await connect(*args, **kwargs)

            loop.create_connection = slow_connect  # type: ignore[method-assign]
            writer.write(f"GET / HTTP/1.1\r\nHost: {up.port}-{SID}.localhost\r\n\r\n".encode())
            await asyncio.sleep(0.1)  # the proxy is connecting...
            after = {up.port: True} if ports == "private" else ports
            routes.put(SandboxRoute(SID, "127.0.0.1", "tok", 2e9, after))  # ...and it closes
            gate.set()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
            loop.create_connection = connect  # type: ignore[method-assign]
            assert head.split(b" ")[1] == status, head
            await asyncio.sleep(0.05)
            assert up.seen == []  # the request never reached the closed port
            writer.close()
        up.server.close()

    _run(scenario)


def test_reading_resumes_when_a_paused_upstream_goes_away() -> None:
    async def scenario() -> None:
        up = await _upstream()
        routes = RouteTable()
        routes.put(SandboxRoute(SID, "127.0.0.1", "tok", 2e9, {up.port: False}))
        async with _proxy(routes) as edges:
            reader, writer = await asyncio.open_connection("127.0.0.1", edges.port)
            host = f"{up.port}-{SID}.localhost"
            assert await _get(reader, writer, host) == b"HTTP/1.1 200 OK"
            (conn,) = edges.proxy.connections
            assert conn.upstream is not None
            conn.upstream.pause_writing()  # as its transport does past the high-water mark
            up.drop_connections()  # its resume_writing will never come
            await asyncio.sleep(0.1)
            # the client connection reads again: the next request is served
            assert await _get(reader, writer, host) == b"HTTP/1.1 200 OK"
            writer.close()
        up.server.close()

    _run(scenario)
