"""The name gate: how a sandbox whose ``allowOut`` names hosts reaches them on ports 80
and 443, and nothing else there.

The host redirects the sandbox's TCP connections to ports 443 and 80 (those not let by
its address rules: network.py) to two listeners of this server on the host's end of the
sandbox's veth. For port 443 the gate reads the TLS ClientHello and takes its server name
(SNI); for port 80 it reads each request head and takes its ``Host``. A name that no
pattern of the policy allows is refused: a TLS ``access_denied`` alert, or a 403 page. An
allowed name is resolved here, through the same upstreams as the sandbox's resolver, and
the gate connects to one of its addresses, never to the address the sandbox dialled (it
may have dialled anything while naming an allowed host): the one it dialled if the name
resolves to it, else the first. An address no policy may open (``--never-allow``, the
sandboxes' own subnet, loopback, multicast; public addresses under
``--internet-access deny``) is never connected to, whatever the name resolves to, so DNS
rebinding reaches nothing. Then the bytes are relayed as they came; on port 80 every later
request head is checked too (its Host must be the connection's), and an ``Upgrade``
(WebSocket) turns the connection into a plain relay only on a ``101`` answer to the first
request. ``CONNECT`` is refused.

What is not prevented: an allowed name's server may serve other names behind the same TLS
handshake (domain fronting, an encrypted ClientHello's inner name), since TLS is relayed,
not opened. A policy change re-checks every open relay, closing those it now forbids.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import os
import resource
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httptools

from .. import netnames
from .dns import end, lookup_a, send
from .network import NOT_INTERNET, SLOTS_ROOT, EgressPolicy

log = logging.getLogger("sandport.gate")

HELLO_TIMEOUT_S = 10.0  # for the ClientHello or the first request head
CONNECT_TIMEOUT_S = 10.0
MAX_HELLO = 32 * 1024
MAX_RECORDS = 8  # TLS records a ClientHello may span
MAX_HEAD = 64 * 1024
MAX_CONNECTIONS = 256  # connections of one sandbox at the gate, relayed or not yet
ACCEPT_RATE, ACCEPT_BURST = 128.0, 512  # new connections a second, per sandbox
LOOKUP_RATE, LOOKUP_BURST = 20.0, 100  # names not in the cache asked upstream, per sandbox
NEGATIVE_CACHE_S = 5.0  # a name that did not resolve, not asked again meanwhile
CACHE_ENTRIES = 4096
CHUNK = 256 * 1024
CACHE_MAX_S = 60  # the longest an answer is kept, whatever its TTL
SO_ORIGINAL_DST = 80
ACCESS_DENIED = b"\x15\x03\x03\x00\x02\x02\x31"  # a fatal TLS alert: access_denied
ALWAYS_CLOSED = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4"))
NOT_PUBLIC = tuple(ipaddress.IPv4Network(n) for n in NOT_INTERNET)

Lookup = Callable[[str, "Bucket | None"], Awaitable[list[str]]]
Refusal = Callable[[str, str, int, str], None]  # (name or "", address, port, rule)


class BadHello(ValueError):
    pass


class LookupRefused(Exception):
    """A sandbox's gate asked for more names than its rate lets it."""


def server_name(data: bytes) -> tuple[bool, str | None]:
    """(whether ``data`` holds the whole ClientHello, its host_name if it does); BadHello
    for anything that is not a TLS ClientHello (records of type 22, at most MAX_RECORDS)."""
    hello, pos, records = b"", 0, 0
    while True:
        if len(data) < pos + 5:
            return False, None
        kind, major, size = data[pos], data[pos + 1], int.from_bytes(data[pos + 3:pos + 5])
        if kind != 22 or major != 3 or not 0 < size <= 16384 + 2048:
            raise BadHello("not a TLS handshake record")
        records += 1
        if records > MAX_RECORDS:
            raise BadHello(f"a ClientHello in more than {MAX_RECORDS} records")
        if len(data) < pos + 5 + size:
            return False, None
        hello += data[pos + 5:pos + 5 + size]
        pos += 5 + size
        if len(hello) >= 4:
            if hello[0] != 1:
                raise BadHello("not a ClientHello")
            length = int.from_bytes(hello[1:4])
            if length > MAX_HELLO:
                raise BadHello("a ClientHello too long")
            if len(hello) >= 4 + length:
                return True, _sni(hello[4:4 + length])


def hello_needs(data: bytes) -> int:
    """How long ``data`` must be before server_name can say more: the end of its last
    record, or of the next one's header (pure; it reads at most MAX_RECORDS + 1 headers)."""
    pos = 0
    for _ in range(MAX_RECORDS + 1):
        if len(data) < pos + 5:
            return pos + 5
        pos += 5 + int.from_bytes(data[pos + 3:pos + 5])
        if len(data) < pos:
            return pos
    return len(data) + 1  # server_name refuses so many records


def _sni(body: bytes) -> str | None:
    pos = 2 + 32  # version, random
    pos += 1 + _at(body, pos, 1)  # session id
    ciphers = _at(body, pos, 2)
    if ciphers % 2:
        raise BadHello("a bad cipher list")
    pos += 2 + ciphers
    pos += 1 + _at(body, pos, 1)  # compression methods
    if pos == len(body):
        return None  # no extensions
    end = pos + 2 + _at(body, pos, 2)
    if end != len(body):
        raise BadHello("bad extensions")
    pos += 2
    found: str | None = None
    seen: set[int] = set()
    while pos < end:
        kind, size = _at(body, pos, 2), _at(body, pos + 2, 2)
        data = body[pos + 4:pos + 4 + size]
        if len(data) != size or kind in seen:
            raise BadHello("a bad or repeated extension")
        seen.add(kind)
        pos += 4 + size
        if kind == 0:
            found = _host_name(data)
    return found


def _host_name(data: bytes) -> str:
    if _at(data, 0, 2) != len(data) - 2:
        raise BadHello("a bad server_name list")
    names, pos = [], 2
    while pos < len(data):
        kind, size = data[pos], _at(data, pos + 1, 2)
        name = data[pos + 3:pos + 3 + size]
        if len(name) != size:
            raise BadHello("a bad server name")
        if kind == 0:
            names.append(name)
        pos += 3 + size
    if len(names) != 1 or not names[0].isascii():
        raise BadHello("not one ASCII host_name")
    return names[0].decode("ascii")


def _at(data: bytes, pos: int, size: int) -> int:
    if pos + size > len(data):
        raise BadHello("truncated")
    return int.from_bytes(data[pos:pos + size])


def original_destination(sock: socket.socket) -> tuple[str, int] | None:
    """Where the sandbox dialled, before the host redirected it here."""
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    return socket.inet_ntoa(raw[4:8]), int.from_bytes(raw[2:4])


def forbidden_page(reason: str) -> bytes:
    body = f"sandport: {reason}\n".encode()
    return (b"HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"connection: close\r\ncontent-length: " + str(len(body)).encode()
            + b"\r\n\r\n" + body)


def host_of(value: bytes) -> str | None:
    """The host of a ``Host`` header (its port dropped), or None if it names none."""
    text = value.decode("ascii", errors="replace").strip()
    host, colon, port = text.rpartition(":") if ":" in text else (text, "", "")
    if colon and not (port.isdigit() and len(port) <= 5):
        return None
    return host or None


class Bucket:
    """A token bucket: ``take()`` is whether one more is allowed now."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.at = float(burst), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Budget:
    """Connections at all the gates of this server together: at most a quarter of its file
    descriptors (each holds two), so that no number of sandboxes can starve the server."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit or max(MAX_CONNECTIONS, resource.getrlimit(
            resource.RLIMIT_NOFILE)[0] // 4)
        self.used = 0


class HostAddresses:
    """Whether an address is this host's own, whichever interface holds it now (added
    after start too), and the subnets of every sandport server's sandboxes on it: the
    gate never connects there, whatever ``--never-allow`` says."""

    def __init__(self, own_subnet: str) -> None:
        self.own = ipaddress.IPv4Network(own_subnet)
        self._listed: frozenset[str] = frozenset()
        self._listed_at = 0.0
        self.nonlocal_bind = _bindable("240.0.0.1")  # binds anything: ask the list
        if self.nonlocal_bind:
            log.warning("net.ipv4.ip_nonlocal_bind is on: the name gate lists this host's "
                        "addresses every few seconds instead of asking the kernel each time")

    def refusal(self, address: str) -> str | None:
        ip = ipaddress.IPv4Address(address)
        subnet = next((n for n in self.subnets() if ip in n), None)
        if subnet is not None:
            return f"never allowed (sandboxes: {subnet})"
        if self._local(address):
            return "never allowed (this host)"
        return None

    def subnets(self) -> set[ipaddress.IPv4Network]:
        """Read at every connection (a server started a moment ago counts at once)."""
        found = {self.own}
        with contextlib.suppress(OSError):
            for entry in os.scandir(SLOTS_ROOT):
                with contextlib.suppress(ValueError):
                    found.add(ipaddress.IPv4Network(
                        entry.name.removeprefix("slots-").replace("_", "/")))
        return found

    def _local(self, address: str) -> bool:
        if not self.nonlocal_bind:
            return _bindable(address)
        now = time.monotonic()
        if now - self._listed_at > 5:
            self._listed, self._listed_at = frozenset(_host_addresses()), now
        return address in self._listed


def _bindable(address: str) -> bool:
    """Whether this host holds ``address`` (a bind there succeeds only then)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


def _host_addresses() -> list[str]:
    try:
        with open("/proc/net/fib_trie") as trie:
            lines = trie.read().splitlines()
    except OSError:
        return []
    found = []  # an address line followed by "/32 host LOCAL" is one of the host's own
    for before, line in zip(lines, lines[1:], strict=False):
        if "/32 host LOCAL" in line:
            found.append(before.split()[-1])
    return found


@dataclass(eq=False)
class Relay:
    """One connection through the gate."""

    name: str
    address: str
    port: int
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


class SandboxGate:
    """The two listeners of one sandbox and the relays they opened."""

    def __init__(self, sandbox_id: str, listen: str, sandbox_ip: str, policy: EgressPolicy,
                 subnet: str, lookup: Lookup, on_refused: Refusal,
                 budget: Budget | None = None, host: HostAddresses | None = None) -> None:
        self.sandbox_id = sandbox_id
        self.listen = listen
        self.sandbox_ip = sandbox_ip
        self.subnet = ipaddress.IPv4Network(subnet)
        self.lookup = lookup
        self.on_refused = on_refused
        self.budget = budget or Budget()
        self.host = host or HostAddresses(subnet)
        self._accepts = Bucket(ACCEPT_RATE, ACCEPT_BURST)
        self._lookups = Bucket(LOOKUP_RATE, LOOKUP_BURST)
        self.ports: dict[int, int] = {}  # dialled port (443, 80) → listening port
        self._servers: list[asyncio.Server] = []
        self.relays: set[Relay] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.policy = policy
        self._closed: tuple[ipaddress.IPv4Network, ...] = ()
        self.update(policy)

    async def start(self, ports: dict[int, int] | None = None) -> dict[int, int]:
        """Listen (on ``ports`` where they are free, else anywhere); the ports."""
        for dialled, handler in ((443, self._tls), (80, self._http)):
            wanted = (ports or {}).get(dialled, 0)
            try:
                server = await asyncio.start_server(handler, self.listen, wanted,
                                                    reuse_address=True)
            except OSError:
                if not wanted:
                    raise
                server = await asyncio.start_server(handler, self.listen, 0,
                                                    reuse_address=True)
            self._servers.append(server)
            self.ports[dialled] = server.sockets[0].getsockname()[1]
        return dict(self.ports)

    def update(self, policy: EgressPolicy) -> None:
        """Take a new policy; close the relays it forbids."""
        self.policy = policy
        self._closed = (*ALWAYS_CLOSED, self.subnet,
                        *(ipaddress.IPv4Network(n) for n in policy.never))
        for relay in list(self.relays):
            if self.refusal(relay.name, relay.address) is not None:
                log.info("sandbox %s: %s (%s) closed: the policy no longer allows it",
                         self.sandbox_id, relay.name, relay.address)
                relay.close()

    def refusal(self, name: str, address: str) -> str | None:
        """Why the policy refuses ``name`` at ``address``, or None."""
        return self._name_refusal(name) or self.address_refusal(address)

    def _name_refusal(self, name: str) -> str | None:
        if netnames.matches(self.policy.names, name) is None:
            return "not in allowOut"
        return None

    def address_refusal(self, address: str) -> str | None:
        ip = ipaddress.IPv4Address(address)
        closed = next((n for n in self._closed if ip in n), None)
        if closed is not None:
            return f"never allowed ({closed})"
        if not self.policy.public and not any(ip in n for n in NOT_PUBLIC):
            return "a public address (--internet-access deny)"
        return self.host.refusal(address)

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for relay in list(self.relays):
            relay.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- one connection -------------------------------------------------------------------
    def _admit(self, writer: asyncio.StreamWriter) -> tuple[str, int] | None:
        """Where the connection was going, or None (closed at once): not from the sandbox,
        or past its or the server's share of connections, or too many too fast."""
        peer = writer.get_extra_info("peername")
        if not peer or peer[0] != self.sandbox_ip or len(self._tasks) >= MAX_CONNECTIONS \
                or self.budget.used >= self.budget.limit or not self._accepts.take():
            writer.transport.abort()
            return None
        sock = writer.get_extra_info("socket")
        dialled = original_destination(sock) if sock is not None else None
        return dialled or (self.listen, 0)

    async def _open(self, name: str, dialled: tuple[str, int], port: int
                    ) -> tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None, str]:
        """A connection to an allowed address of ``name``, or (None, why not)."""
        try:
            addresses = await self.lookup(name, self._lookups)
        except LookupRefused as exc:
            return None, str(exc)
        if not addresses:
            return None, "the name did not resolve"
        usable = [a for a in addresses if self.address_refusal(a) is None]
        if not usable:
            return None, self.address_refusal(addresses[0]) or "no usable address"
        address = dialled[0] if dialled[0] in usable else usable[0]
        try:
            opened = await asyncio.wait_for(asyncio.open_connection(address, port),
                                            CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            return None, f"could not connect to {address}: {exc.__class__.__name__}"
        why = self.refusal(name, address)  # the policy may have changed meanwhile
        if why is not None:
            opened[1].close()
            return None, why
        return opened, address

    def _refuse(self, name: str, dialled: tuple[str, int], port: int, rule: str) -> None:
        self.on_refused(name, dialled[0], port, rule)

    async def _tls(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dialled = self._admit(writer)
        if dialled is None:
            return
        with _tracked(self, writer):
            hello, needed = b"", 5
            try:
                async with asyncio.timeout(HELLO_TIMEOUT_S):
                    while True:
                        chunk = await reader.read(CHUNK)
                        if not chunk:
                            return
                        hello += chunk
                        if len(hello) > MAX_HELLO + 5 * MAX_RECORDS:
                            raise BadHello("a ClientHello too long")
                        if len(hello) < needed:  # parsed only as records complete
                            continue
                        complete, name = server_name(hello)
                        if complete:
                            break
                        needed = hello_needs(hello)
            except (BadHello, TimeoutError, OSError) as exc:
                self._refuse("", dialled, 443, f"no TLS ClientHello ({exc or 'timeout'})")
                send(writer, ACCESS_DENIED)
                return
            if name is None:
                self._refuse("", dialled, 443, "no server name (SNI)")
                send(writer, ACCESS_DENIED)
                return
            why = self._name_refusal(name)
            if why is not None:
                self._refuse(name, dialled, 443, why)
                send(writer, ACCESS_DENIED)
                return
            opened, detail = await self._open(name, dialled, 443)
            if opened is None:
                self._refuse(name, dialled, 443, detail)
                send(writer, ACCESS_DENIED)
                return
            up_reader, up_writer = opened
            relay = Relay(name.lower().removesuffix("."), detail, 443, [writer, up_writer])
            self.relays.add(relay)
            try:
                send(up_writer, hello)
                await _both_ways(reader, writer, up_reader, up_writer)
            finally:
                self.relays.discard(relay)
                up_writer.close()

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dialled = self._admit(writer)
        if dialled is None:
            return
        with _tracked(self, writer):
            heads = _Heads()
            held = b""
            try:
                async with asyncio.timeout(HELLO_TIMEOUT_S):
                    while not heads.hosts and heads.problem is None:
                        chunk = await reader.read(CHUNK)
                        if not chunk:
                            return
                        held += chunk
                        heads.feed(chunk)
                        if not heads.hosts and len(held) > MAX_HEAD:
                            heads.problem = "a request head over 64 KiB"
            except (TimeoutError, OSError):
                return
            first = heads.hosts[0] if heads.hosts else None
            why = heads.problem or (self._name_refusal(first) if first else "no Host")
            if why is None and first is not None and any(h.lower() != first.lower()
                                                         for h in heads.hosts):
                why = "a later request names another Host"
            if why is None and heads.upgrade is not None and len(heads.hosts) > 1:
                why = "an upgrade after other requests on one connection"
            if why is not None or first is None:
                self._refuse(first or "", dialled, 80, why or "no Host")
                send(writer, forbidden_page(why or "no Host"))
                return
            opened, detail = await self._open(first, dialled, 80)
            if opened is None:
                self._refuse(first, dialled, 80, detail)
                send(writer, forbidden_page(detail))
                return
            up_reader, up_writer = opened
            relay = Relay(first.lower().removesuffix("."), detail, 80, [writer, up_writer])
            self.relays.add(relay)
            try:
                if heads.upgrade:  # what follows an upgrade's head waits for its answer
                    held = held[:len(held) - len(heads.upgrade)]
                heads.hosts.clear()
                send(up_writer, held)
                await self._http_relay(heads, first, dialled, reader, writer, up_reader,
                                       up_writer)
            finally:
                self.relays.discard(relay)
                up_writer.close()

    async def _http_relay(self, heads: _Heads, host: str, dialled: tuple[str, int],
                          reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          up_reader: asyncio.StreamReader,
                          up_writer: asyncio.StreamWriter) -> None:
        """Relay, checking every later request head, until one end closes."""
        first_answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def requests() -> None:
            pending = b""
            if heads.upgrade is not None:  # the first request asked to upgrade
                answer = await first_answer
                pending, heads.upgrade = heads.upgrade, None
                if answer[:12] in (b"HTTP/1.1 101", b"HTTP/1.0 101"):
                    send(up_writer, pending)
                    await _pipe(reader, up_writer)  # not HTTP any more
                    return
                heads.restart()  # refused: the connection stays HTTP, checked
            while chunk := pending or await reader.read(CHUNK):
                pending = b""
                heads.feed(chunk)
                problem = heads.problem or next(
                    (f"a later request names another Host ({h})" for h in heads.hosts
                     if h.lower() != host.lower()), None)
                if heads.upgrade is not None and problem is None:
                    problem = "an upgrade after other requests on one connection"
                if problem is not None:
                    named = next((h for h in heads.hosts if h.lower() != host.lower()), host)
                    self._refuse(named, dialled, 80, problem)
                    writer.close()
                    up_writer.close()
                    return
                heads.hosts.clear()
                send(up_writer, chunk)
                await up_writer.drain()
            end(up_writer)

        async def answers() -> None:
            while chunk := await up_reader.read(CHUNK):
                if not first_answer.done():
                    first_answer.set_result(chunk)
                send(writer, chunk)
                await writer.drain()
            if not first_answer.done():
                first_answer.set_result(b"")
            end(writer)

        await _together(requests(), answers())


class _Heads:
    """httptools' view of the bytes a sandbox sends on port 80: each request head's Host,
    or what is wrong."""

    def __init__(self) -> None:
        self.hosts: list[str] = []
        self.problem: str | None = None
        self.upgrade: bytes | None = None  # bytes after an upgrade request's head
        self._fields: list[bytes] = []
        self._name = b""
        self._url = b""
        self._in_head = False
        self._head_bytes = 0
        self.restart()

    def restart(self) -> None:
        self.parser = httptools.HttpRequestParser(self)

    def feed(self, data: bytes) -> None:
        if self.problem is not None:
            return
        if self._in_head:  # a head that goes on and on (httptools would keep it all)
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                self.problem = "a request head over 64 KiB"
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self.parser.get_method() == b"CONNECT":
                self.problem = "CONNECT is refused"
                return
            self.upgrade = data[int(exc.args[0]):] if exc.args else b""
        except httptools.HttpParserError as exc:
            self.problem = f"not HTTP/1 ({exc.__class__.__name__})"

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._fields, self._name, self._url = [], b"", b""
        self._in_head, self._head_bytes = True, 0

    def on_url(self, url: bytes) -> None:
        if len(self._url) + len(url) > MAX_HEAD:
            self.problem = "a request target over 64 KiB"
            return
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"host":
            self._fields.append(value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self.problem is not None:
            return
        if len(self._fields) != 1:
            self.problem = "not one Host header"
            return
        host = host_of(self._fields[0])
        if host is None:
            self.problem = "a bad Host header"
            return
        if not self._url.startswith(b"/") and self._url != b"*":
            try:  # an absolute-form target must name the same host
                target = httptools.parse_url(self._url).host or b""
            except httptools.HttpParserInvalidURLError:
                target = b""
            if target.decode("ascii", "replace").lower() != host.lower():
                self.problem = "a request target naming another host"
                return
        self.hosts.append(host)


@contextlib.contextmanager
def _tracked(gate: SandboxGate, writer: asyncio.StreamWriter):  # type: ignore[no-untyped-def]
    task = asyncio.current_task()
    if task is not None:
        gate._tasks.add(task)  # noqa: SLF001
    gate.budget.used += 1
    try:
        yield
    # (a stop cancels the handlers: their end, which asyncio's callback of Python 3.11
    # would log as an error)
    except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
        pass
    finally:
        gate.budget.used -= 1
        if task is not None:
            gate._tasks.discard(task)  # noqa: SLF001
        writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(CHUNK):
            send(writer, chunk)
            await writer.drain()
        end(writer)
    except OSError:
        writer.close()


async def _both_ways(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
    await _together(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _together(*work: Awaitable[None]) -> None:
    """Both directions until both end; one failing closes the relay."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


LOG_ENTRIES = 100


class NetworkLog:
    """A sandbox's last LOG_ENTRIES refused lookups and connections (in memory only)."""

    def __init__(self) -> None:
        self.entries: deque[dict[str, object]] = deque(maxlen=LOG_ENTRIES)

    def lookup(self, name: str, rule: str) -> None:
        self._add("lookup", name, None, 53, rule)

    def connection(self, name: str, address: str, port: int | None, rule: str) -> None:
        self._add("connection", name or None, address or None, port, rule)

    def _add(self, kind: str, name: str | None, address: str | None, port: int | None,
             rule: str) -> None:
        at = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        self.entries.append({"at": at.replace("+00:00", "Z"), "kind": kind, "name": name,
                             "address": address, "port": port, "rule": rule})


class Gates:
    """The gates of this server's sandboxes, and one cache of the names they looked up."""

    def __init__(self, subnet: str, upstreams: Callable[[], list[tuple[str, int]]]) -> None:
        self.subnet = subnet
        self._upstreams = upstreams
        self._running: dict[str, SandboxGate] = {}
        self._cache: dict[str, tuple[float, list[str]]] = {}
        self.budget = Budget()
        self.host = HostAddresses(subnet)

    def get(self, sandbox_id: str) -> SandboxGate | None:
        return self._running.get(sandbox_id)

    async def lookup(self, name: str, bucket: Bucket | None = None) -> list[str]:
        """The name's addresses (from the cache, else upstream, as ``bucket`` allows)."""
        name = name.lower().removesuffix(".")
        now = time.monotonic()
        cached = self._cache.get(name)
        if cached is not None and cached[0] > now:
            return cached[1]
        if bucket is not None and not bucket.take():
            raise LookupRefused("too many names looked up (the gate's rate)")
        addresses, ttl = await lookup_a(self._upstreams(), name)
        keep = min(ttl, CACHE_MAX_S) if addresses else NEGATIVE_CACHE_S
        if keep > 0:
            while len(self._cache) >= CACHE_ENTRIES:  # the oldest go first
                self._cache.pop(next(iter(self._cache)))
            self._cache[name] = (now + keep, addresses)
        return addresses

    async def start(self, sandbox_id: str, listen: str, sandbox_ip: str,
                    policy: EgressPolicy, on_refused: Refusal,
                    ports: dict[int, int] | None = None) -> dict[int, int]:
        """Serve the sandbox (a running gate takes ``policy``); its listening ports."""
        running = self._running.get(sandbox_id)
        if running is not None:
            running.update(policy)
            return dict(running.ports)
        gate = SandboxGate(sandbox_id, listen, sandbox_ip, policy, self.subnet, self.lookup,
                           on_refused, self.budget, self.host)
        made = await gate.start(ports)
        self._running[sandbox_id] = gate
        return made

    async def stop(self, sandbox_id: str) -> None:
        gate = self._running.pop(sandbox_id, None)
        if gate is not None:
            await gate.stop()

    async def stop_all(self) -> None:
        for sandbox_id in list(self._running):
            await self.stop(sandbox_id)


__all__ = ["Gates", "NetworkLog", "SandboxGate", "host_of", "server_name"]
