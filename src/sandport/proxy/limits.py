"""Edge connection limits (pure): who a client is, how many connections it may hold, how
many file descriptors to keep in reserve, and how slow a request body may arrive.

A client is its TCP peer address, unless the peer is a trusted proxy (``trusted_proxies``
CIDRs): then its PROXY protocol (v1) header, or the nearest untrusted address of the
request's X-Forwarded-For, names it. Node-to-node relays (a cluster's edges relaying to
each other) are exempt from the per-address cap: ``EdgeLimits.relays`` is where their
addresses go once there is a cluster; there is none yet.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass, field

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
PROXY_V1_MAX = 107  # the longest v1 header, CRLF included (the spec's limit)


def _networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    per_address: int = 512
    trusted_proxies: tuple[Network, ...] = ()
    relays: tuple[Network, ...] = ()  # exempt from the per-address cap (no cluster yet)
    min_body_rate: int = 256  # bytes/s; 0: no minimum
    body_rate_window_s: float = 60.0
    fd_limit: int = 20000
    fd_reserve: int = field(default=0)  # 0: fd_reserve_for(fd_limit)

    @classmethod
    def from_settings(cls, per_address: int, trusted: tuple[str, ...], min_body_rate: int,
                      window_s: float, fd_limit: int) -> EdgeLimits:
        return cls(per_address, _networks(trusted), (), min_body_rate, window_s, fd_limit)

    @property
    def fd_high(self) -> int:
        """Past this descriptor number, idle connections are shed."""
        return self.fd_limit - (self.fd_reserve or fd_reserve_for(self.fd_limit))

    def trusts(self, address: str) -> bool:
        return _within(address, self.trusted_proxies)

    def is_relay(self, address: str) -> bool:
        return _within(address, self.relays)


def fd_reserve_for(limit: int) -> int:
    """Descriptors kept for the API's own connections, the store, exec pipes: 1/16 of
    the limit, 32 to 1024."""
    return max(32, min(1024, limit // 16))


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address, with an IPv4-mapped IPv6 one (``::ffff:a.b.c.d``) as the IPv4 it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _within(address: str, networks: tuple[Network, ...]) -> bool:
    if not networks:
        return False
    ip = _ip(address)
    return ip is not None and any(ip in net for net in networks)


def client_key(address: str) -> str:
    """What the per-address cap counts under: an IPv4 address, or an IPv6 address's /64
    (one client is usually given a whole /64, so single addresses would not cap it)."""
    ip = _ip(address)
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip) if ip is not None else address


def proxy_header(data: bytes) -> tuple[str | None, int] | None:
    """A PROXY protocol v1 header at the start of ``data``: (the client address, or None
    for ``UNKNOWN``; bytes it took), None while incomplete. ValueError if malformed."""
    end = data.find(b"\r\n", 0, PROXY_V1_MAX)
    if end < 0:
        if len(data) >= PROXY_V1_MAX:
            raise ValueError("PROXY header too long")
        return None
    parts = data[:end].split(b" ")
    if parts[0] != b"PROXY" or len(parts) < 2:
        raise ValueError("not a PROXY header")
    if parts[1] == b"UNKNOWN":
        return None, end + 2
    if parts[1] not in (b"TCP4", b"TCP6") or len(parts) != 6:
        raise ValueError("malformed PROXY header")
    address = parts[2].decode("ascii", "replace")
    ipaddress.ip_address(address)  # raises ValueError
    return address, end + 2


def forwarded_client(peer: str, forwarded_for: list[bytes], limits: EdgeLimits) -> str:
    """The client of a request from a trusted proxy: the nearest address in its
    X-Forwarded-For that is not itself a trusted proxy (the peer when there is none)."""
    chain = [a.strip().decode("latin-1") for v in forwarded_for for a in v.split(b",")]
    for address in reversed(chain):
        if not address:
            continue
        try:
            ipaddress.ip_address(address)
        except ValueError:
            return peer  # a forged or garbled entry: stop trusting the chain here
        if not limits.trusts(address):
            return address
    return peer


class BodyRate:
    """Bytes of one request body over time: too slow when any window of ``window_s``
    (sampled at each sweep) brought fewer than ``rate × window_s`` bytes."""

    __slots__ = ("rate", "window_s", "samples")

    def __init__(self, rate: int, window_s: float) -> None:
        self.rate = rate
        self.window_s = window_s
        self.samples: deque[tuple[float, int]] = deque()

    def reset(self) -> None:
        """Time the body could not move (the proxy had stopped reading) does not count."""
        self.samples.clear()

    def too_slow(self, now: float, total: int) -> bool:
        samples = self.samples
        samples.append((now, total))
        start = now - self.window_s
        while len(samples) > 1 and samples[1][0] <= start:
            samples.popleft()
        first_t, first_total = samples[0]
        return now - first_t >= self.window_s and \
            total - first_total < self.rate * (now - first_t)
