"""The edge's connection limits (pure): PROXY headers, X-Forwarded-For from trusted
proxies, the descriptor reserve, the minimum body rate."""

from __future__ import annotations

import pytest

from sandport.errors import ValidationFailed
from sandport.proxy.limits import (
    BodyRate,
    EdgeLimits,
    client_key,
    fd_reserve_for,
    forwarded_client,
    proxy_header,
)
from sandport.settings import ServerSettings

LIMITS = EdgeLimits.from_settings(512, ("10.0.0.0/8", "::1/128"), 256, 60.0, 20000)


@pytest.mark.parametrize("data, found", [
    (b"PROXY TCP4 192.0.2.7 10.0.0.1 5000 80\r\nGET /", ("192.0.2.7", 39)),
    (b"PROXY TCP6 2001:db8::1 ::1 5000 80\r\n", ("2001:db8::1", 36)),
    (b"PROXY UNKNOWN\r\n", (None, 15)),
    (b"PROXY TCP4 192.0.2.7 10.0", None),  # incomplete
])
def test_proxy_header(data: bytes, found: tuple[str | None, int] | None) -> None:
    assert proxy_header(data) == found


@pytest.mark.parametrize("data", [b"PROXY TCP4 nonsense 10.0.0.1 1 2\r\n",
                                  b"PROXY TCP4 1.2.3.4\r\n", b"PROXY UDP4 a b c d\r\n",
                                  b"PROXY " + b"x" * 200])
def test_bad_proxy_headers(data: bytes) -> None:
    with pytest.raises(ValueError):
        proxy_header(data)


@pytest.mark.parametrize("forwarded, client", [
    ([], "10.1.1.1"),
    ([b"192.0.2.7"], "192.0.2.7"),
    ([b"6.6.6.6, 192.0.2.7"], "192.0.2.7"),  # the nearest untrusted hop, not a forged one
    ([b"192.0.2.7, 10.2.2.2"], "192.0.2.7"),  # through two trusted proxies
    ([b"192.0.2.7", b"10.2.2.2"], "192.0.2.7"),
    ([b"garbage, 10.2.2.2"], "10.1.1.1"),
])
def test_forwarded_client(forwarded: list[bytes], client: str) -> None:
    assert forwarded_client("10.1.1.1", forwarded, LIMITS) == client


def test_trust_and_reserve() -> None:
    assert LIMITS.trusts("10.9.9.9") and LIMITS.trusts("::1")
    assert not LIMITS.trusts("127.0.0.1") and not LIMITS.trusts("nonsense")
    assert not LIMITS.is_relay("10.9.9.9")  # no cluster yet: nobody is a relay
    assert fd_reserve_for(1024) == 64 and fd_reserve_for(100) == 32
    assert fd_reserve_for(1 << 20) == 1024
    assert LIMITS.fd_high == 20000 - 1024


def test_body_rate_over_any_window() -> None:
    rate = BodyRate(256, 60.0)
    assert not any(rate.too_slow(t, 0) for t in (0.0, 30.0, 59.5))  # no full window yet
    assert rate.too_slow(60.0, 100)  # 100 bytes in 60 s
    burst = BodyRate(256, 60.0)
    total = 0
    for t in range(0, 121):  # enough in the first window, then a silent minute
        total += 2000 if t < 10 else 0
        slow = burst.too_slow(float(t), total)
        # the last 60 s hold under 256 × 60 bytes once the burst's third second is older
        assert slow == (t >= 62), t
    paused = BodyRate(256, 60.0)
    paused.too_slow(0.0, 0)
    paused.reset()  # the proxy stopped reading: that time does not count
    assert not paused.too_slow(61.0, 0)


@pytest.mark.parametrize("given, problem", [
    ({"max_connections_per_address": "0"}, "max_connections_per_address"),
    ({"trusted_proxies": "10.0.0.0/8 nonsense"}, "trusted_proxies"),
    ({"min_body_rate_window_s": "0"}, "min_body_rate_window_s"),
    ({"max_open_files": "10"}, "max_open_files"),
])
def test_edge_settings_are_checked(given: dict[str, str], problem: str) -> None:
    with pytest.raises(ValidationFailed, match=problem):
        ServerSettings.load(given, environ={})


def test_edge_settings_parse() -> None:
    s = ServerSettings.load({"trusted_proxies": "10.0.0.0/8, 192.168.0.0/16",
                             "min_body_rate": "100"}, environ={})
    assert s.trusted_proxies == ("10.0.0.0/8", "192.168.0.0/16") and s.min_body_rate == 100


@pytest.mark.parametrize("address, key", [
    ("127.0.0.1", "127.0.0.1"),
    ("::ffff:192.0.2.7", "192.0.2.7"),  # IPv4-mapped: the IPv4 client it is
    ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff::9", "2001:db8:1:2::/64"),  # same /64: the same client
    ("not an address", "not an address"),
])
def test_clients_are_counted_by_ipv4_address_or_ipv6_slash_64(address: str, key: str) -> None:
    assert client_key(address) == key


def test_trusted_proxies_match_ipv4_mapped_peers() -> None:
    limits = EdgeLimits.from_settings(512, ("192.0.2.0/24",), 256, 60.0, 1024)
    assert limits.trusts("::ffff:192.0.2.9")
    assert not limits.trusts("::ffff:198.51.100.1")
