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
works on a whole request, only a client that stops reading counts.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from typing import cast

import httptools

from . import pages
from .decide import Answer, Decision, Edge, Forward, Redeem, RequestHead, Wake

log = logging.getLogger("sandport.proxy")

WRITE_HIGH_WATER = 1 << 20  # per socket; past it the other side stops being read
PENDING_LIMIT = 256 * 1024  # body bytes held while the upstream connects
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 200
CONNECT_TIMEOUT_S = 5.0
SWEEP_S = 0.5
_VERSIONS = {"1.1": b"1.1", "1.0": b"1.0", "0.9": b"1.0"}
_NO_BODY_STATUSES = frozenset({204, 304})
_RETRYABLE = frozenset({b"GET", b"HEAD", b"OPTIONS"})  # safe to send twice


class _HeadTooLarge(Exception):
    pass


class Exchange:
    """One request and its response."""

    __slots__ = ("head", "keep_alive", "upgrade", "chunked", "is_head", "bodyless",
                 "body_done", "had_body", "pending", "pending_size", "streaming", "discard",
                 "forward", "reused")

    def __init__(self, head: RequestHead, keep_alive: bool, upgrade: bool,
                 chunked: bool, bodyless: bool = False) -> None:
        self.head = head
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.chunked = chunked
        self.is_head = head.method == b"HEAD"
        self.bodyless = bodyless  # framed with no body: done once the head is parsed
        self.body_done = False
        self.had_body = False
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.streaming = False  # the head went upstream; body bytes follow directly
        self.discard = False  # answered without upstream: body bytes are dropped
        self.forward: Forward | None = None
        self.reused = False


class ProxyServer:
    def __init__(self, edge: Edge, redeem: Callable[[Redeem], Awaitable[Answer]], *,
                 wake: Callable[[str], Awaitable[bool]] | None = None,
                 touch: Callable[[str], None] | None = None,
                 header_timeout_s: float = 15.0, idle_timeout_s: float = 75.0) -> None:
        self.edge = edge
        self.redeem = redeem
        self.wake = wake
        self.touch = touch  # told of every request passed to a sandbox (idle detection)
        self.header_timeout_s = header_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self._by_sandbox: defaultdict[str, set[Upstream]] = defaultdict(set)
        self.connections: set[ClientConnection] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def connection(self) -> ClientConnection:
        return ClientConnection(self)

    async def listen(self, host: str, port: int) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())
        return await loop.create_server(self.connection, host, port, backlog=2048,
                                        reuse_address=True)

    async def _sweep(self) -> None:
        """Close connections past their deadline: a sweep twice a second costs less than
        a timer armed and cancelled on every request or read."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_S)
            now = loop.time()
            for conn in list(self.connections):
                conn.check_deadline(now)

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


class ClientConnection(asyncio.Protocol):
    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client_ip = ""
        self.queue: deque[Exchange] = deque()  # [0] is being served; the rest wait
        self.parsing: Exchange | None = None  # whose body the parser is reading
        self.upstream: Upstream | None = None
        self.closed = False
        self.tunnel = False
        self.token: tuple[str, str] | None = None  # what the last request forwarded carried
        self.upgrading = False
        self.peer_done = False
        self.held: list[bytes] = []  # bytes after an upgrade head, before the tunnel
        self._pauses: set[str] = set()
        self._writing_paused = False
        self.deadline: float | None = None  # loop time; see ProxyServer._sweep
        self.moved = False  # bytes moved since the last sweep
        self._ended: set[str] = set()  # tunnel sides ("client", "upstream") that sent EOF
        self._in_head = False
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._chunked = False
        self._length: bytes | None = None  # the head's Content-Length

    # -- transport events ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's is not
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)            # a subclass
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if isinstance(peer, tuple) else "127.0.0.1"
        self.server.connections.add(self)
        self._arm(self.server.idle_timeout_s)

    @property
    def busy(self) -> bool:
        """A request is being served or waits, or the connection is a tunnel."""
        return bool(self.queue) or self.tunnel

    def data_received(self, data: bytes) -> None:
        self.moved = True
        if self.tunnel:
            upstream = self.upstream
            if upstream is not None:
                upstream.write(data)
            return
        if self.upgrading:
            self.held.append(data)
            self.pause("upgrade")
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgrading = True
            rest = data[exc.args[0]:]
            if rest:
                self.held.append(rest)
            self.pause("upgrade")
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self.refuse(431, "request_header_too_large",
                            f"the request head is larger than {MAX_HEAD_BYTES} bytes")
            else:
                self.refuse(400, "bad_request", "malformed HTTP request")
            return
        if len(self.queue) > 1:
            self.pause("queued")

    def eof_received(self) -> bool | None:
        if self.tunnel:
            return self.tunnel_ended("client")
        if self.queue:
            self.peer_done = True  # the client sent all it will; answer, then close
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._disarm()
        self.server.connections.discard(self)
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None

    def pause_writing(self) -> None:
        self._writing_paused = True
        self.moved = True
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self.moved = True  # the client is reading
        if self.upstream is not None:
            self.upstream.resume_reading()

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    # -- parser callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._in_head = True
        self._url = []
        self._headers = []
        self._head_bytes = 0
        self._chunked = False
        self._length = None
        if not self.queue:  # else the exchange under way keeps its own deadline
            self._arm(self.server.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # request trailers are not passed on
        self._headers.append((name, value))
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD_BYTES or len(self._headers) > MAX_HEADERS:
            raise _HeadTooLarge
        if len(name) == 17 and name.lower() == b"transfer-encoding" \
                and b"chunked" in value.lower():
            self._chunked = True
        elif len(name) == 14 and name.lower() == b"content-length":
            self._length = value

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self.closed:
            return
        parser = self.parser
        upgrade = parser.should_upgrade()
        url = self._url
        head = RequestHead(parser.get_method(), url[0] if len(url) == 1 else b"".join(url),
                           _VERSIONS.get(parser.get_http_version()) or b"1.1",
                           self._headers, self.client_ip, upgrade)
        bodyless = not self._chunked and (self._length is None or self._length.strip() == b"0")
        exchange = Exchange(head, parser.should_keep_alive(), upgrade, self._chunked, bodyless)
        self.parsing = exchange
        self.queue.append(exchange)
        if len(self.queue) == 1:
            self._arm(self.server.idle_timeout_s)
            self.start(exchange)

    def on_body(self, data: bytes) -> None:
        exchange = self.parsing
        if exchange is None or self.closed:
            return
        exchange.had_body = True
        if exchange.chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        self.send_body(exchange, data)

    def on_message_complete(self) -> None:
        exchange = self.parsing
        if exchange is None:
            return
        exchange.body_done = True
        if exchange.chunked:
            self.send_body(exchange, b"0\r\n\r\n")

    # -- serving one exchange -------------------------------------------------------------
    def send_body(self, exchange: Exchange, data: bytes) -> None:
        if exchange.discard:
            return
        upstream = self.upstream
        if exchange.streaming and upstream is not None and upstream.transport is not None:
            upstream.write(data)
            return
        exchange.pending.append(data)
        exchange.pending_size += len(data)
        if exchange.pending_size > PENDING_LIMIT:
            self.pause("pending")

    def start(self, exchange: Exchange) -> None:
        self.start_decided(exchange, self.server.edge.decide(exchange.head))

    def start_decided(self, exchange: Exchange, decision: Decision) -> None:
        if isinstance(decision, Forward):
            self.forward(exchange, decision)
        elif isinstance(decision, Answer):
            self.answer(exchange, decision)
        elif isinstance(decision, Wake):
            self.pause("wake")
            self.loop.create_task(self._wake(exchange, decision))
        else:
            self.pause("redeem")
            self.loop.create_task(self._redeem(exchange, decision))

    async def _wake(self, exchange: Exchange, wake: Wake) -> None:
        """Resume the sandbox (one resume shared by every request meanwhile), then serve
        the request as if it had never been paused: the client sees one slower answer."""
        try:
            woken = self.server.wake is not None and await self.server.wake(wake.sandbox_id)
        except Exception:
            log.exception("waking sandbox %s failed", wake.sandbox_id)
            woken = False
        if self.closed:
            return
        self.resume("wake")
        decision = self.server.edge.decide(exchange.head) if woken else None
        if decision is None or isinstance(decision, Wake):
            self.answer(exchange, Answer(lambda close: pages.error(
                503, "sandbox_paused", pages.PAUSED, browser=wake.browser, close=close)))
        else:
            self.start_decided(exchange, decision)

    async def _redeem(self, exchange: Exchange, redeem: Redeem) -> None:
        try:
            answer = await self.server.redeem(redeem)
        except Exception:
            log.exception("redeeming a browser grant failed")
            answer = Answer(lambda close: pages.error(
                500, "internal_error", "internal error", browser=redeem.browser, close=close))
        if not self.closed:
            self.resume("redeem")
            self.answer(exchange, answer)

    def answer(self, exchange: Exchange, answer: Answer) -> None:
        """Answer without upstream. The connection stays open only when the request's
        body is known to be over (a bodyless request may be answered before the parser
        reports its end); a body still coming would have to be read to its end first."""
        body_over = exchange.body_done or exchange.bodyless
        close = exchange.upgrade or not (body_over and exchange.keep_alive)
        exchange.discard = True
        exchange.pending.clear()
        self.write(answer.render(close))
        self.exchange_done(exchange, keep=not close)

    def forward(self, exchange: Exchange, forward: Forward) -> None:
        exchange.forward = forward
        upstream = self.upstream
        if upstream is not None and upstream.key == forward.key and upstream.idle:
            exchange.reused = True
            self._send_head(upstream, exchange)
            return
        if upstream is not None:
            upstream.close()
            self.upstream = None
            self.resume("upstream")  # its resume_writing will never come
        self.pause("connecting")
        self.loop.create_task(self._connect(exchange, forward))

    async def _connect(self, exchange: Exchange, forward: Forward) -> None:
        key = forward.key
        try:
            if key[0] == "unix":
                _, upstream = await self.loop.create_unix_connection(
                    lambda: Upstream(self, forward), key[1])
            else:
                _, upstream = await asyncio.wait_for(self.loop.create_connection(
                    lambda: Upstream(self, forward), key[1], int(key[2])), CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError):
            if not self.closed:
                self.resume("connecting")
                self.answer(exchange, _bad_gateway(exchange, forward))
            return
        if self.closed:
            upstream.close()
            return
        self.resume("connecting")
        if forward.sandbox_id is not None:
            decision = self.server.edge.decide(exchange.head)
            if not isinstance(decision, Forward) or decision.key != forward.key:
                # the port closed, turned private or moved while connecting: nothing cut
                # this connection then, since it was not tracked yet
                upstream.close()
                self.start_decided(exchange, decision)
                return
            exchange.forward = decision
        self.upstream = upstream
        self.server._track(upstream)
        if self._writing_paused:
            upstream.pause_reading()
        self._send_head(upstream, exchange)

    def _send_head(self, upstream: Upstream, exchange: Exchange) -> None:
        assert exchange.forward is not None and upstream.transport is not None
        touch = self.server.touch
        if touch is not None and exchange.forward.sandbox_id is not None:
            touch(exchange.forward.sandbox_id)
        self.token = exchange.forward.token
        upstream.begin(exchange)
        exchange.streaming = True
        upstream.write(exchange.forward.head)
        if exchange.pending:
            upstream.write(b"".join(exchange.pending))
            exchange.pending.clear()
            exchange.pending_size = 0
        self.resume("pending")

    def retry(self, exchange: Exchange) -> None:
        """A kept-alive upstream closed before answering a bodyless request: the server
        had timed the connection out, so send the request once more on a new one."""
        assert exchange.forward is not None
        exchange.reused = False
        exchange.streaming = False
        self.upstream = None
        self.pause("connecting")
        self.loop.create_task(self._connect(exchange, exchange.forward))

    def exchange_done(self, exchange: Exchange, keep: bool) -> None:
        if self.queue and self.queue[0] is exchange:
            self.queue.popleft()
        if not keep or not (exchange.body_done or exchange.bodyless) or self.closed or \
                (self.peer_done and len(self.queue) == 0):
            self.close()
            return
        if len(self.queue) <= 1:
            self.resume("queued")
        if self.queue:
            self._arm(self.server.idle_timeout_s)
            self.start(self.queue[0])
        else:  # the next head may have begun while this exchange was served
            self._arm(self.server.header_timeout_s if self._in_head else
                      self.server.idle_timeout_s)

    def start_tunnel(self, exchange: Exchange) -> None:
        if self.queue and self.queue[0] is exchange:
            self.queue.popleft()
        self.tunnel = True
        self._arm(self.server.idle_timeout_s)
        upstream = self.upstream
        if upstream is not None and self.held:
            upstream.write(b"".join(self.held))
        self.held.clear()
        self.resume("upgrade")
        if self.peer_done:  # the client half-closed before the tunnel existed
            self.tunnel_ended("client")

    def tunnel_ended(self, side: str) -> bool | None:
        """One side of a tunnel sent all it will: pass the half-close on, the other
        direction keeps flowing; once both sides have ended, close both."""
        self._ended.add(side)
        upstream = self.upstream
        to = self.transport if side == "upstream" else \
            upstream.transport if upstream is not None else None
        if len(self._ended) == 2 or to is None or to.is_closing() or not to.can_write_eof():
            self.close()
            return None
        to.write_eof()
        return True

    # -- reading control and closing --------------------------------------------------------
    def pause(self, reason: str) -> None:
        if not self._pauses and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self._pauses.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self._pauses:
            return
        self._pauses.discard(reason)
        if not self._pauses and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def refuse(self, status: int, code: str, message: str) -> None:
        if not self.closed:
            self.write(pages.error(status, code, message, browser=False, close=True))
        self.close()

    def close(self) -> None:
        """Close after what was written is flushed; a client that reads no more is cut
        after ``idle_timeout_s``."""
        self._disarm()
        transport = self.transport
        if transport is not None and not self.closed:
            self.closed = True
            transport.close()
            if transport.get_write_buffer_size():
                self.loop.call_later(self.server.idle_timeout_s, transport.abort)
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None

    def abort(self) -> None:
        self._disarm()
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()
        if self.upstream is not None:
            self.upstream.abort()
            self.upstream = None

    def _arm(self, seconds: float) -> None:
        self.deadline = self.loop.time() + seconds

    def _disarm(self) -> None:
        self.deadline = None

    def check_deadline(self, now: float) -> None:
        if self.deadline is None:
            return
        moved, self.moved = self.moved, False
        if self.busy and (moved or self._api_at_work()):  # the exchange or tunnel is alive
            self.deadline = now + self.server.idle_timeout_s
        elif self.deadline <= now:
            self.timed_out()

    def _api_at_work(self) -> bool:
        """The sandport API has a whole request and the client takes what it sends: an exec
        may rightly run for hours in silence, so only a stalled client counts there."""
        exchange = self.queue[0] if self.queue else None
        return exchange is not None and exchange.body_done and exchange.forward is not None \
            and exchange.forward.port is None and not self._writing_paused

    def timed_out(self) -> None:
        self.deadline = None
        if self.closed or self.transport is None:
            return
        if self.busy:
            upstream = self.upstream
            exchange = self.queue[0] if self.queue else None
            if exchange is not None and exchange.forward is not None and exchange.body_done \
                    and upstream is not None and upstream.active \
                    and not upstream.reader.started:
                upstream.reader.done = True
                self.write(_gateway_timeout(exchange, exchange.forward,
                                            self.server.idle_timeout_s).render(True))
        elif self._in_head:
            self.write(pages.error(408, "request_timeout", "the request head took too long",
                                   browser=False, close=True))
        if self.transport.get_write_buffer_size():
            self.abort()  # the client is not reading: flushing would wait forever
        else:
            self.close()


class Upstream(asyncio.Protocol):
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

    def data_received(self, data: bytes) -> None:
        client = self.client
        client.moved = True
        if client.tunnel:
            client.write(data)
            return
        if not self.active:
            self.close()  # bytes nobody asked for: this connection is not reusable
            return
        reader = self.reader
        try:
            reader.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            reader.upgraded(data[exc.args[0]:])
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
        out = [b"HTTP/", _VERSIONS.get(self.parser.get_http_version()) or b"1.1",
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
            client.answer(self.exchange, _bad_gateway(self.exchange, forward, garbled=True))
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
                client.answer(exchange, _bad_gateway(exchange, exchange.forward,
                                                     closed=True))
        else:
            self.done = True
            client.abort()  # mid-response: the client must see a cut, not a hang


def _gateway_timeout(exchange: Exchange, forward: Forward, seconds: float) -> Answer:
    where = "the sandport API" if forward.port is None else \
        f"the server on port {forward.port} of the sandbox"
    message = f"{where} did not answer within {seconds:g} s"
    return Answer(lambda close: pages.error(504, "gateway_timeout", message,
                                            browser=_browser(exchange), close=close))


def _browser(exchange: Exchange) -> bool:
    return any(n.lower() == b"accept" and b"text/html" in v for n, v in exchange.head.headers)


def _bad_gateway(exchange: Exchange, forward: Forward, *, garbled: bool = False,
                 closed: bool = False) -> Answer:
    browser = _browser(exchange)
    if forward.port is None:
        message = "the sandport API is not answering"
    elif garbled:
        message = f"the server on port {forward.port} of the sandbox did not answer in HTTP"
    elif closed:
        message = f"the server on port {forward.port} of the sandbox closed the connection " \
            "without answering"
    else:
        message = f"nothing is listening on port {forward.port} of the sandbox (start a " \
            "server that listens on 0.0.0.0 there)"
    return Answer(lambda close: pages.error(502, "bad_gateway", message, browser=browser,
                                            close=close))

