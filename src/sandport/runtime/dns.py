"""A resolver for each sandbox that may go out, served on the host's end of its veth.

A sandbox's ``/etc/resolv.conf`` names ``<host end of its veth>:53``. There this server
listens (UDP and TCP, on that one address: no other sandbox's packets arrive there, the
host's INPUT rules accept port 53 only from the sandbox's own veth) and forwards each query
to the upstream resolvers: the host's own (its resolv.conf; a stub such as 127.0.0.53
works, the server asks from the host) or ``--dns-upstream``. Only what a resolver must see
is read: the header and the question. The answer is the upstream's, passed back as it came.

Queries are untrusted input: one that is not a single-question standard query, or over
``MAX_QUERY`` bytes, is dropped; a sandbox sending faster than ``RATE`` a second (burst
``BURST``) has the rest refused (REFUSED, until its bucket refills) without the upstream
seeing them, so a flood from one sandbox leaves every other's lookups served. Reverse
lookups of the sandboxes' own subnet are answered here, NXDOMAIN: they never leave the host.
Sandboxes without a way out get no resolver (``nameserver 127.0.0.1``: lookups fail at
once, as before).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import secrets
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import netnames
from ..settings import Upstream, parse_upstream

log = logging.getLogger("sandport.dns")

PORT = 53
MAX_QUERY = 4096
RATE = 100.0  # queries a second, per sandbox
BURST = 200
UPSTREAM_TIMEOUT_S = 2.0
TCP_IDLE_S = 10.0
MAX_TCP_CONNECTIONS = 16  # per sandbox
MAX_IN_FLIGHT = 64  # queries of one sandbox waiting for an upstream (each holds a socket)
NOERROR, SERVFAIL, NXDOMAIN, REFUSED = 0, 2, 3, 5
TYPE_A = 1
Refused = Callable[[str, str], None]  # (name, rule): a refused lookup, for the network log

def host_upstreams(resolv_conf: str) -> list[Upstream]:
    """The ``nameserver`` lines of a resolv.conf, as upstreams."""
    found = []
    for line in resolv_conf.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            with contextlib.suppress(ValueError):
                found.append((str(ipaddress.ip_address(words[1].split("%")[0])), PORT))
    return found


@dataclass(frozen=True, slots=True)
class Question:
    id: int
    name: str  # lower case, no trailing dot
    qtype: int
    end: int  # where the question ends in the message


_LABEL = re.compile(rb"[A-Za-z0-9_*-]+")  # letters, digits, hyphens; _ (SRV), * (wildcards)


def read_query(data: bytes) -> Question | None:
    """The question of a standard query with exactly one, or None (drop it)."""
    if not 12 <= len(data) <= MAX_QUERY:
        return None
    ident, flags, qdcount, ancount, nscount = struct.unpack("!HHHHH", data[:10])
    if flags & 0x8000 or (flags >> 11) & 0xF or qdcount != 1 or ancount or nscount:
        return None  # a response, not a QUERY opcode, or not one question
    labels, pos = [], 12
    while True:
        if pos >= len(data):
            return None
        length = data[pos]
        if length == 0:
            pos += 1
            break
        if length > 63 or pos + 1 + length > len(data):  # no compression in a question
            return None
        label = data[pos + 1:pos + 1 + length]
        if not _LABEL.fullmatch(label):  # a dot inside one would read as another name
            return None
        labels.append(label)
        pos += 1 + length
    if pos + 4 > len(data) or sum(len(x) + 1 for x in labels) > 255:
        return None
    qtype = struct.unpack("!H", data[pos:pos + 2])[0]
    name = b".".join(labels).decode("ascii", errors="replace").lower()
    return Question(ident, name, qtype, pos + 4)


def answer(query: bytes, question: Question, rcode: int) -> bytes:
    """An answer of our own with no records: the query's header and question, ``rcode``."""
    flags = struct.unpack("!H", query[2:4])[0]
    rd = flags & 0x0100
    header = struct.pack("!HHHHHH", question.id, 0x8000 | 0x0080 | rd | rcode, 1, 0, 0, 0)
    return header + query[12:question.end]


def is_local_reverse(name: str, subnet: ipaddress.IPv4Network) -> bool:
    """A name in the reverse zone of the sandboxes' subnet (``2.0.77.10.in-addr.arpa``,
    and anything below it: ``_x._tcp.2.0.77.10.in-addr.arpa``), of any type."""
    if not name.endswith(".in-addr.arpa"):
        return False
    labels = name.removesuffix(".in-addr.arpa").split(".")
    parts: list[str] = []
    for label in reversed(labels):  # the address part: the numeric labels nearest the zone
        if len(parts) == 4 or not (label.isdigit() and int(label) < 256 and len(label) <= 3):
            break
        parts.insert(0, label)
    if not parts:
        return False
    octets = [int(p) for p in reversed(parts)]
    network = ipaddress.IPv4Network((bytes(octets + [0] * (4 - len(octets))),
                                     8 * len(octets)))
    return network.overlaps(subnet)


@dataclass(slots=True)
class Bucket:
    rate: float = RATE
    burst: float = BURST
    tokens: float = BURST
    stamp: float = field(default_factory=time.monotonic)

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class SandboxResolver:
    """The resolver of one sandbox: UDP and TCP on ``listen``:53, forwarding upstream."""

    def __init__(self, sandbox_id: str, listen: str, sandbox_ip: str,
                 upstreams: Sequence[Upstream], subnet: ipaddress.IPv4Network,
                 names: tuple[str, ...] | None = None, on_refused: Refused | None = None
                 ) -> None:
        self.sandbox_id = sandbox_id
        self.names = names  # None: every name is asked upstream
        self.on_refused = on_refused
        self.listen = listen
        self.sandbox_ip = sandbox_ip
        self.upstreams = list(upstreams)
        self.subnet = subnet
        self.bucket = Bucket()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()  # its open TCP connections
        self._tcp_open = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpFront(self), local_addr=(self.listen, PORT))
        self._udp = transport
        try:
            self._tcp = await asyncio.start_server(self._tcp_client, self.listen, PORT,
                                                   reuse_address=True)
        except BaseException:
            transport.close()
            raise

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()  # the listener only: the connections it took are closed here
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- one query ------------------------------------------------------------------------
    def local(self, query: bytes) -> tuple[Question | None, bytes | None]:
        """(the question, or None: drop it; an answer made here, or None: ask upstream)."""
        question = read_query(query)
        if question is None:
            return None, None
        if not self.bucket.take() or len(self._tasks) >= MAX_IN_FLIGHT:
            self._refused(question.name, "rate limit (100 lookups a second)")
            return question, answer(query, question, REFUSED)
        if is_local_reverse(question.name, self.subnet):
            return question, answer(query, question, NXDOMAIN)
        if self.names is not None:  # a name policy: only its names resolve, to IPv4 only
            if netnames.matches(self.names, question.name) is None:
                self._refused(question.name, "not in allowOut")
                return question, answer(query, question, NXDOMAIN)
            if question.qtype != TYPE_A:
                return question, answer(query, question, NOERROR)
        return question, None

    def _refused(self, name: str, rule: str) -> None:
        if self.on_refused is not None:
            self.on_refused(name, rule)

    async def resolve(self, query: bytes, tcp: bool) -> bytes | None:
        """The answer to send back, or None to send nothing."""
        question, made = self.local(query)
        if question is None or made is not None:
            return made
        return await self.forward(query, question, tcp)

    async def forward(self, query: bytes, question: Question, tcp: bool) -> bytes:
        """The upstream's answer (asked with an id of our own), or SERVFAIL."""
        ident = secrets.randbits(16)
        asked = struct.pack("!H", ident) + query[2:]
        for upstream in self.upstreams:
            try:
                reply = await asyncio.wait_for(
                    _ask_tcp(upstream, asked) if tcp else _ask_udp(upstream, asked),
                    UPSTREAM_TIMEOUT_S)
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                continue
            if reply is not None and len(reply) >= 12 and reply[:2] == asked[:2]:
                return query[:2] + reply[2:]
        return answer(query, question, SERVFAIL)

    def receive(self, query: bytes, reply_to: tuple[str, int]) -> None:
        """A datagram from the sandbox: answered here at once, dropped, or forwarded by a
        task of its own (at most MAX_IN_FLIGHT at a time)."""
        question, made = self.local(query)
        if question is None:
            return
        if made is not None:
            self._send(made, reply_to)
            return
        task = asyncio.ensure_future(self._answer_udp(query, question, reply_to))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send(self, reply: bytes, reply_to: tuple[str, int]) -> None:
        if self._udp is not None and not self._udp.is_closing():
            self._udp.sendto(reply, reply_to)  # the upstream kept it within the query's size

    async def _answer_udp(self, query: bytes, question: Question,
                          reply_to: tuple[str, int]) -> None:
        self._send(await self.forward(query, question, tcp=False), reply_to)

    async def _tcp_client(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if not peer or peer[0] != self.sandbox_ip or self._tcp_open >= MAX_TCP_CONNECTIONS:
            writer.close()
            return
        self._tcp_open += 1
        self._writers.add(writer)
        try:
            while True:
                size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2),
                                                                  TCP_IDLE_S))[0]
                query = await asyncio.wait_for(reader.readexactly(size), TCP_IDLE_S)
                reply = await self.resolve(query, tcp=True)
                if reply is None:
                    break
                send(writer, struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tcp_open -= 1
            self._writers.discard(writer)
            writer.close()


def send(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Write, or raise ConnectionResetError when this end was closed meanwhile (by a stop,
    a policy change or the peer): uvloop raises RuntimeError for a write to a closed
    transport, which would escape the handlers' OSError clauses."""
    if writer.is_closing():
        raise ConnectionResetError("the connection was closed")
    writer.write(data)


def end(writer: asyncio.StreamWriter) -> None:
    """Half-close ``writer`` if it is still open."""
    if not writer.is_closing() and writer.can_write_eof():
        with contextlib.suppress(OSError):
            writer.write_eof()


class _UdpFront(asyncio.DatagramProtocol):
    def __init__(self, resolver: SandboxResolver) -> None:
        self.resolver = resolver

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if addr[0] != self.resolver.sandbox_ip:  # only the sandbox's own address is served
            return
        self.resolver.receive(data, addr)


async def _ask_udp(upstream: Upstream, query: bytes) -> bytes | None:
    """One query to ``upstream`` from a socket of its own (a random source port)."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in upstream[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, upstream)
        await loop.sock_sendall(sock, query)
        while True:
            reply = await loop.sock_recv(sock, 65535)
            if reply[:2] == query[:2]:  # else a stray datagram: wait for the real one
                return reply
    finally:
        sock.close()


async def _ask_tcp(upstream: Upstream, query: bytes) -> bytes | None:
    reader, writer = await asyncio.open_connection(*upstream)
    try:
        writer.write(struct.pack("!H", len(query)) + query)
        await writer.drain()
        size = struct.unpack("!H", await reader.readexactly(2))[0]
        return await reader.readexactly(size)
    finally:
        writer.close()


def a_query(name: str) -> bytes:
    """A recursive query for the IPv4 addresses of ``name`` (a checked host name)."""
    labels = b"".join(bytes([len(x)]) + x for x in name.encode("ascii").split(b"."))
    return (struct.pack("!HHHHHH", secrets.randbits(16), 0x0100, 1, 0, 0, 0)
            + labels + b"\0" + struct.pack("!HH", TYPE_A, 1))


def _skip_name(data: bytes, pos: int) -> int:
    """Where the (possibly compressed) name at ``pos`` ends."""
    for _ in range(128):
        length = data[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2
        if length & 0xC0:
            raise ValueError("a bad label")
        pos += 1 + length
    raise ValueError("a name too long")


def a_records(reply: bytes, query: bytes) -> tuple[list[str], int]:
    """(the IPv4 addresses of the answer to ``query``, the least TTL); ValueError for a
    reply that is not a good answer to it."""
    if len(reply) < 12 or reply[:2] != query[:2]:
        raise ValueError("not the answer")
    flags, qdcount, ancount = struct.unpack("!HHH", reply[2:8])
    if not flags & 0x8000 or flags & 0xF not in (NOERROR, NXDOMAIN):
        raise ValueError(f"rcode {flags & 0xF}")
    pos = 12
    for _ in range(qdcount):
        pos = _skip_name(reply, pos) + 4
    found: list[str] = []
    ttl = 3600
    for _ in range(ancount):
        pos = _skip_name(reply, pos)
        rtype, _rclass, rttl, size = struct.unpack("!HHIH", reply[pos:pos + 10])
        pos += 10
        if pos + size > len(reply):
            raise ValueError("a record past the end")
        if rtype == TYPE_A and size == 4:
            found.append(socket.inet_ntoa(reply[pos:pos + 4]))
            ttl = min(ttl, rttl)
        pos += size
    return found, ttl


async def lookup_a(upstreams: Sequence[Upstream], name: str) -> tuple[list[str], int]:
    """The IPv4 addresses of ``name`` as the first upstream that answers says, and their
    TTL; ([], 0) when none does."""
    for upstream in upstreams:
        query = a_query(name)
        try:
            reply = await asyncio.wait_for(_ask_udp(upstream, query), UPSTREAM_TIMEOUT_S)
            if reply is not None and reply[2] & 0x02:  # truncated: ask again over TCP
                reply = await asyncio.wait_for(_ask_tcp(upstream, query), UPSTREAM_TIMEOUT_S)
            if reply is None:
                continue
            return a_records(reply, query)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError,
                struct.error, IndexError):
            continue
    return [], 0


class Resolvers:
    """The resolvers of this server's sandboxes, by sandbox id."""

    def __init__(self, upstreams: Sequence[str], subnet: str,
                 resolv_conf: Path = Path("/etc/resolv.conf")) -> None:
        self.subnet = ipaddress.IPv4Network(subnet)
        self._given = [parse_upstream(u) for u in upstreams]
        self._resolv_conf = resolv_conf
        self._running: dict[str, SandboxResolver] = {}

    def upstreams(self) -> list[Upstream]:
        if self._given:
            return list(self._given)
        try:
            return host_upstreams(self._resolv_conf.read_text())
        except OSError:
            return []

    def serves(self, sandbox_id: str) -> bool:
        return sandbox_id in self._running

    async def start(self, sandbox_id: str, listen: str, sandbox_ip: str,
                    names: tuple[str, ...] | None = None,
                    on_refused: Refused | None = None) -> None:
        """Serve the sandbox (``names``: only those resolve); a running resolver takes the
        new ``names`` at once."""
        running = self._running.get(sandbox_id)
        if running is not None:
            running.names = names
            return
        resolver = SandboxResolver(sandbox_id, listen, sandbox_ip, self.upstreams(),
                                   self.subnet, names, on_refused)
        await resolver.start()
        self._running[sandbox_id] = resolver

    async def stop(self, sandbox_id: str) -> None:
        resolver = self._running.pop(sandbox_id, None)
        if resolver is not None:
            await resolver.stop()

    async def stop_all(self) -> None:
        for sandbox_id in list(self._running):
            await self.stop(sandbox_id)


def resolv_conf(nameserver: str | None) -> str:
    """A sandbox's /etc/resolv.conf: its resolver, or (no way out) one that fails at once."""
    if nameserver is None:
        return "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
    return f"nameserver {nameserver}\noptions timeout:2 attempts:2\n"


__all__ = ["Resolvers", "host_upstreams", "lookup_a", "parse_upstream", "read_query", "resolv_conf"]
