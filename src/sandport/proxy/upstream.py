"""The connection from the edge to where one client's requests go."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

import httptools

from .decide import Forward
from .exchange import Exchange
from .response import ResponseReader

if TYPE_CHECKING:
    from .client import ClientConnection

# Per socket; past it the other side stops being read. One read from the other side can
# land on top of it, so a peer that stops reading holds at most WRITE_HIGH_WATER + one
# read (see _READ) here. The kernel's socket buffers (megabytes on loopback) keep fast
# peers streaming.
WRITE_HIGH_WATER = 64 * 1024
# Upstreams read into this one buffer (each read is handled before the next), so one read
# is at most this big: what a client that stops reading costs stays under 256 KiB.
_READ = memoryview(bytearray(128 * 1024))


class Upstream(asyncio.BufferedProtocol):
    """The connection to where one client's requests go: a sandbox port or the API."""

    def __init__(self, client: ClientConnection, forward: Forward) -> None:
        self.client = client
        self.key = forward.key
        self.sandbox_id = forward.sandbox_id
        self.port = forward.port
        self.transport: asyncio.Transport | None = None
        self.reader = ResponseReader(self)
        self.active = False  # a response is due or under way
        self.closed = False

    @property
    def idle(self) -> bool:
        return not self.active and not self.closed

    def begin(self, exchange: Exchange) -> None:
        self.reader.reset(exchange)
        self.active = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _READ

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(_READ[:nbytes])

    def data_received(self, data: memoryview) -> None:
        """``data`` is a view of the shared read buffer: what outlives this call is
        copied (the parser's callbacks hand out bytes)."""
        client = self.client
        client.moved = True
        if client.tunnel:
            client.write(bytes(data))
            return
        if not self.active:
            self.close()  # bytes nobody asked for: this connection is not reusable
            return
        reader = self.reader
        try:
            reader.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            reader.upgraded(bytes(data[exc.args[0]:]))
        except httptools.HttpParserError:
            reader.broken()
        finally:
            reader.flush()  # what this read produced goes out in one write

    def eof_received(self) -> bool | None:
        if self.client.tunnel and self.client.upstream is self:
            return self.client.tunnel_ended("upstream")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.client.server._untrack(self)
        client = self.client
        if client.upstream is self or client.upstream is None:
            client.resume("upstream")  # its resume_writing will never come
        if client.tunnel:
            client.close()
            return
        if self.active:
            self.active = False
            self.reader.lost()
        elif client.upstream is self:
            client.upstream = None

    def pause_writing(self) -> None:
        self.client.pause("upstream")

    def resume_writing(self) -> None:
        self.client.moved = True
        self.client.resume("upstream")

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def close(self) -> None:
        """Close after a flush; an upstream that reads no more is cut after
        ``idle_timeout_s``."""
        self.closed = True
        transport = self.transport
        if transport is not None:
            transport.close()
            if transport.get_write_buffer_size():
                client = self.client
                client.loop.call_later(client.server.idle_timeout_s, transport.abort)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

