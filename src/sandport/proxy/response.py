"""Reading one response from upstream and relaying it to the client as it arrives.

The response head is re-serialized from the parsed status and headers (names, values and
order kept), the body re-framed as it was parsed: what the client receives is exactly what
the proxy read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httptools

from .decide import RequestHead
from .exchange import Exchange, bad_gateway

if TYPE_CHECKING:
    from .upstream import Upstream

VERSIONS = {"1.1": b"1.1", "1.0": b"1.0", "0.9": b"1.0"}
_NO_BODY_STATUSES = frozenset({204, 304})
_RETRYABLE = frozenset({b"GET", b"HEAD", b"OPTIONS"})  # safe to send twice

_IDLE = Exchange(RequestHead(b"", b"", b"", [], ""), False, False, False)


class ResponseReader:
    """Parses one response from upstream and relays it to the client as it arrives."""

    __slots__ = ("upstream", "exchange", "parser", "headers", "trailers", "reason",
                 "status", "in_body", "chunked", "until_close", "keep", "started", "done",
                 "head", "out")

    exchange: Exchange
    headers: list[tuple[bytes, bytes]]
    trailers: list[tuple[bytes, bytes]]

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.parser = httptools.HttpResponseParser(self)
        self.out: list[bytes] = []
        self.reset(_IDLE)

    def reset(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.headers = []
        self.trailers = []
        self.reason = b""
        self.status = 0
        self.in_body = False
        self.chunked = False
        self.until_close = False
        self.keep = False
        self.started = False  # bytes of the response reached the client
        self.done = False
        self.head = b""

    def _write(self, data: bytes) -> None:
        if not self.done:
            self.out.append(data)

    def flush(self) -> None:
        out = self.out
        if not out:
            return
        transport = self.upstream.client.transport
        if transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def on_message_begin(self) -> None:
        self.headers = []
        self.reason = b""

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        (self.trailers if self.in_body else self.headers).append((name, value))

    def _head_bytes(self) -> bytes:
        out = [b"HTTP/", VERSIONS.get(self.parser.get_http_version()) or b"1.1",
               b" %d " % self.status, self.reason, b"\r\n"]
        for name, value in self.headers:
            out += (name, b": ", value, b"\r\n")
        out.append(b"\r\n")
        return b"".join(out)

    def on_headers_complete(self) -> None:
        self.status = status = self.parser.get_status_code()
        if status == 101:
            self.head = self._head_bytes()  # sent once the tunnel is certain (upgraded)
            return
        if 100 <= status < 200:
            self.started = True
            self._write(self._head_bytes())  # e.g. 100 Continue; the real answer follows
            return
        has_length = False
        coding: bytes | None = None
        for name, value in self.headers:
            size = len(name)
            if size == 14 and name.lower() == b"content-length":
                has_length = True
            elif size == 17 and name.lower() == b"transfer-encoding":
                coding = value
        if coding is not None:  # as the parser reads it: the last coding of the last header
            self.chunked = coding.rpartition(b",")[2].strip().lower() == b"chunked"
            has_length = False
        no_body = self.exchange.is_head or status in _NO_BODY_STATUSES
        self.until_close = not (self.chunked or has_length or no_body)
        self.keep = self.parser.should_keep_alive() and not self.until_close
        self.in_body = True
        self.started = True
        self._write(self._head_bytes())
        if no_body:
            self.finish()

    def on_body(self, data: bytes) -> None:
        if self.chunked:
            self._write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self._write(data)

    def on_message_complete(self) -> None:
        if not self.in_body or self.done:
            return  # an interim 1xx answer, or a body already finished
        if self.chunked:
            tail = [b"0\r\n"]
            for name, value in self.trailers:
                tail += (name, b": ", value, b"\r\n")
            tail.append(b"\r\n")
            self._write(b"".join(tail))
        self.finish()

    def finish(self, keep: bool | None = None) -> None:
        if self.done:
            return
        self.flush()
        self.done = True
        upstream = self.upstream
        upstream.active = False
        if self.exchange.is_head:  # the parser still waits for the body HEAD never gets
            self.parser = httptools.HttpResponseParser(self)
        keep = self.keep if keep is None else keep
        if not keep:
            upstream.close()
        upstream.client.exchange_done(self.exchange, keep and self.exchange.keep_alive
                                      and not self.exchange.upgrade)

    def upgraded(self, rest: bytes) -> None:
        client = self.upstream.client
        if self.status != 101 or not self.exchange.upgrade:
            self.broken()
            return
        self.flush()
        self.done = True
        self.upstream.active = False
        client.write(self.head + rest if rest else self.head)
        client.start_tunnel(self.exchange)

    def broken(self) -> None:
        """Upstream sent something that is not HTTP: end both connections."""
        client = self.upstream.client
        if not self.started:
            forward = self.exchange.forward
            assert forward is not None
            client.answer(self.exchange, bad_gateway(self.exchange, forward, garbled=True))
        self.done = True
        self.upstream.abort()
        client.abort()

    def lost(self) -> None:
        """Upstream closed while this response was due or under way."""
        client = self.upstream.client
        if self.done or client.closed:
            self.done = True
            return
        exchange = self.exchange
        if client.upstream is self.upstream:
            client.upstream = None
        if self.until_close and self.in_body:
            self.finish(keep=False)  # the close is the end of this body
        elif not self.started:
            self.done = True
            if exchange.reused and exchange.body_done and not exchange.had_body \
                    and exchange.head.method in _RETRYABLE:
                client.retry(exchange)
            else:
                assert exchange.forward is not None
                client.answer(exchange, bad_gateway(exchange, exchange.forward,
                                                     closed=True))
        else:
            self.done = True
            client.abort()  # mid-response: the client must see a cut, not a hang

