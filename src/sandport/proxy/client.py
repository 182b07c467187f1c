"""One client connection: parses every request head, streams bodies to the upstream,
answers in order, and turns an upgrade into a two-way tunnel (see server.py)."""

from __future__ import annotations

import asyncio
import errno
import logging
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from . import pages
from .decide import Answer, Decision, Forward, Redeem, RequestHead, Wake
from .exchange import Exchange, bad_gateway, gateway_timeout
from .limits import BodyRate, forwarded_client, proxy_header
from .response import VERSIONS
from .upstream import WRITE_HIGH_WATER, Upstream

if TYPE_CHECKING:
    from .server import ProxyServer

log = logging.getLogger("sandport.proxy")

PENDING_LIMIT = 256 * 1024  # body bytes held while the upstream connects
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 200
CONNECT_TIMEOUT_S = 5.0
# Closing with a request's body still arriving: the rest is read and dropped for a while
# (as nginx's lingering close), or the kernel would answer it with a reset that can make
# the client lose the answer it was sent (a 413, say).
LINGER_S = 5.0
LINGER_BYTES = 16 << 20


class _HeadTooLarge(Exception):
    pass


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
        # From a trusted proxy, the client's address comes in a PROXY header (before the
        # first request) or in each head's X-Forwarded-For; counted once it is known.
        self.proxied = False
        self._proxy_bytes = b""  # a PROXY header still incomplete
        self.counted: str | None = None  # the address this connection counts under
        self.lingering: int | None = None  # closing: bytes still to drop (see LINGER_S)

    # -- transport events ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's is not
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)            # a subclass
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if isinstance(peer, tuple) else "127.0.0.1"
        server = self.server
        server.connections[self] = None
        server.idle[self] = None
        self._arm(server.idle_timeout_s)
        limits = server.limits
        if limits.trusts(self.client_ip):
            self.proxied = True
        elif not server.admit(self, self.client_ip):
            self.refuse(503, "too_many_connections", "this address holds "
                        f"{limits.per_address} connections already; close some first")
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.fileno() >= server.fd_high and not server.shed(self):
            self.refuse(503, "server_busy", "the server has no connections to spare; "
                        "try again shortly")

    @property
    def busy(self) -> bool:
        """A request is being served or waits, or the connection is a tunnel."""
        return bool(self.queue) or self.tunnel

    def data_received(self, data: bytes) -> None:
        self.moved = True
        if self.lingering is not None:
            self.lingering -= len(data)
            if self.lingering < 0 and self.transport is not None:
                self.transport.abort()
            return
        if self.tunnel:
            upstream = self.upstream
            if upstream is not None:
                upstream.write(data)
            return
        if self.upgrading:
            self.held.append(data)
            self.pause("upgrade")
            return
        if self.proxied and self.counted is None and not self.queue:
            data = self._proxy_header(data)
            if not data:
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

    def _proxy_header(self, data: bytes) -> bytes:
        """Take a PROXY protocol header off the start of a trusted proxy's connection:
        what follows it, or b"" while it is incomplete or was refused."""
        if self._proxy_bytes:
            data, self._proxy_bytes = self._proxy_bytes + data, b""
        if not data.startswith(b"PROXY "[:len(data)]) or self._in_head:
            return data  # no PROXY header: each head's X-Forwarded-For names the client
        try:
            found = proxy_header(data) if len(data) >= 6 else None
        except ValueError:
            self.refuse(400, "bad_request", "malformed PROXY protocol header")
            return b""
        if found is None:
            self._proxy_bytes = data
            return b""
        address, taken = found
        if address is not None:
            self.client_ip = address
        self.proxied = False  # from now on the connection is that client's own
        if not self._admit(self.client_ip):
            return b""
        return data[taken:]

    def _admit(self, address: str) -> bool:
        if self.server.admit(self, address):
            return True
        self.refuse(503, "too_many_connections", "this address holds "
                    f"{self.server.limits.per_address} connections already; close some first")
        return False

    def eof_received(self) -> bool | None:
        if self.lingering is not None:
            return None  # the client sent all: closed now
        if self.tunnel:
            return self.tunnel_ended("client")
        parsing = self.parsing
        if self._in_head or parsing is not None and not (parsing.body_done or
                                                         parsing.bodyless):
            # the client ended mid-request: nothing will complete it, so the exchange is
            # over now (not at the idle timeout, holding both sockets meanwhile)
            self.abort()
            return None
        if self.queue:
            self.peer_done = True  # the client sent all it will; answer, then close
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._disarm()
        self.server.forget(self)
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
        client_ip = self.client_ip
        if self.proxied:  # a trusted proxy's connection without a PROXY header
            client_ip = forwarded_client(client_ip, [
                v for n, v in self._headers if len(n) == 15 and n.lower() == b"x-forwarded-for"
            ], self.server.limits)
            if self.counted is None and not self._admit(client_ip):
                return
        head = RequestHead(parser.get_method(), url[0] if len(url) == 1 else b"".join(url),
                           VERSIONS.get(parser.get_http_version()) or b"1.1",
                           self._headers, client_ip, upgrade)
        bodyless = not self._chunked and (self._length is None or self._length.strip() == b"0")
        exchange = Exchange(head, parser.should_keep_alive(), upgrade, self._chunked, bodyless)
        self.parsing = exchange
        self.queue.append(exchange)
        if len(self.queue) == 1:
            self.server.idle.pop(self, None)
            self._arm(self.server.idle_timeout_s)
            self.start(exchange)

    def on_body(self, data: bytes) -> None:
        exchange = self.parsing
        if exchange is None or self.closed:
            return
        exchange.had_body = True
        exchange.received += len(data)
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
        except (OSError, TimeoutError) as exc:
            if not self.closed:
                self.resume("connecting")
                self.answer(exchange, _out_of_files() if getattr(exc, "errno", None) in
                            (errno.EMFILE, errno.ENFILE) else bad_gateway(exchange, forward))
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
            idle = self.server.idle  # idle since now: the last to be shed
            idle.pop(self, None)
            idle[self] = None

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
        after ``idle_timeout_s``. One still sending a request's body is read (and the
        bytes dropped) for LINGER_S first."""
        self._disarm()
        transport = self.transport
        if transport is not None and not self.closed:
            self.closed = True
            parsing = self.parsing
            unread = self._in_head or parsing is not None and not (parsing.body_done or
                                                                  parsing.bodyless)
            if unread and not self.tunnel and transport.can_write_eof():
                self.lingering = LINGER_BYTES
                transport.write_eof()  # the answer, then our FIN; theirs is awaited
                transport.resume_reading()
                self.loop.call_later(LINGER_S, self._end, transport)
            else:
                self._end(transport)
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None

    def _end(self, transport: asyncio.Transport) -> None:
        if transport.is_closing():
            return
        transport.close()
        if transport.get_write_buffer_size():
            self.loop.call_later(self.server.idle_timeout_s, transport.abort)

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
        parsing = self.parsing
        if parsing is not None and not (parsing.body_done or parsing.bodyless) and \
                self._body_too_slow(parsing, now):
            return
        if self.busy and (moved or self._api_at_work()):  # the exchange or tunnel is alive
            self.deadline = now + self.server.idle_timeout_s
        elif self.deadline <= now:
            self.timed_out()

    def _body_too_slow(self, exchange: Exchange, now: float) -> bool:
        """Cut a request body that averages under the minimum rate over a window: with
        408 if its response has not begun, else by closing."""
        limits = self.server.limits
        if not limits.min_body_rate or exchange.discard or self.closed:
            return False
        rate = exchange.rate
        if rate is None:
            rate = exchange.rate = BodyRate(limits.min_body_rate, limits.body_rate_window_s)
        if self._pauses:  # the proxy is not reading: the client cannot send
            rate.reset()
            return False
        if not rate.too_slow(now, exchange.received):
            return False
        upstream, self.upstream = self.upstream, None
        answered = upstream is not None and upstream.active and upstream.reader.started
        if upstream is not None:
            upstream.reader.done = True
            upstream.abort()
        if answered or not self.queue or self.queue[0] is not exchange:
            self.abort()
        else:
            self.write(pages.error(
                408, "request_timeout", f"the request body arrived slower than "
                f"{limits.min_body_rate} bytes/s over {limits.body_rate_window_s:g} s",
                browser=False, close=True))
            self.close()
        return True

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
                self.write(gateway_timeout(exchange, exchange.forward,
                                            self.server.idle_timeout_s).render(True))
        elif self._in_head:
            self.write(pages.error(408, "request_timeout", "the request head took too long",
                                   browser=False, close=True))
        if self.transport.get_write_buffer_size():
            self.abort()  # the client is not reading: flushing would wait forever
        else:
            self.close()



def _out_of_files() -> Answer:
    return Answer(lambda close: pages.error(
        503, "server_busy", "the server has no connections to spare; try again shortly",
        browser=False, close=close))
