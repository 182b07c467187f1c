"""The registry address guard (runtime/images/netguard.py) on real loopback sockets."""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from sandport.runtime.images import netguard
from sandport.runtime.images.netguard import RegistryAddressRefused, internet_address

INTERNET = ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "::ffff:8.8.8.8",
            "64:ff9b::808:808"]
NOT_INTERNET = ["::127.0.0.1", "::ffff:0:7f00:1", "64:ff9b:1::a00:1", "fec0::1",
                "127.0.0.1", "127.8.9.10", "10.0.0.1", "172.16.5.4", "192.168.1.1",
                "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255",
                "::1", "::", "fe80::1", "fe80::1%eth0", "fd00::1", "ff02::1",
                "::ffff:127.0.0.1", "::ffff:169.254.169.254", "64:ff9b::a00:1"]


@pytest.mark.parametrize("address", INTERNET)
def test_internet_addresses_pass(address: str) -> None:
    assert internet_address(address)


@pytest.mark.parametrize("address", NOT_INTERNET)
def test_host_private_and_special_addresses_are_refused(address: str) -> None:
    assert not internet_address(address)


class _Listener:
    """A TCP listener on ``host`` that counts the connections it is offered and answers
    every request with ``redirect`` (a 302) or 200."""

    def __init__(self, host: str, redirect: str | None = None) -> None:
        accepted = self.accepted = [0]

        class Handler(http.server.BaseHTTPRequestHandler):
            def setup(self) -> None:
                accepted[0] += 1
                super().setup()

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                self.send_response(302 if redirect else 200)
                if redirect:
                    self.send_header("location", redirect)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _guarded_get(url: str) -> httpx.Response:
    async def get() -> httpx.Response:
        limits = httpx.Limits(max_connections=2)
        transport = netguard.internet_only(httpx.AsyncHTTPTransport(limits=limits), None,
                                           limits)
        async with httpx.AsyncClient(transport=transport, follow_redirects=True) as client:
            return await client.get(url)
    return asyncio.run(get())


@pytest.fixture
def loopback() -> Iterator[_Listener]:
    listener = _Listener("127.0.0.1")
    yield listener
    listener.close()


def test_a_guarded_client_never_connects_to_loopback(loopback: _Listener) -> None:
    for url in (loopback.url, loopback.url.replace("127.0.0.1", "localhost")):
        with pytest.raises(RegistryAddressRefused, match="loopback, private, link-local"):
            _guarded_get(url)
    assert loopback.accepted == [0]


def test_a_redirect_to_a_refused_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first hop passes (127.0.0.1 counts as the internet here), its redirect names
    127.0.0.2: that connection is never made."""
    inner = _Listener("127.0.0.2")
    outer = _Listener("127.0.0.1", redirect=inner.url + "blob")
    _loopback_as_internet(monkeypatch)
    try:
        with pytest.raises(RegistryAddressRefused, match="127.0.0.2"):
            _guarded_get(outer.url)
        assert (outer.accepted, inner.accepted) == ([1], [0])
    finally:
        inner.close()
        outer.close()


def _loopback_as_internet(monkeypatch: pytest.MonkeyPatch) -> None:
    """127.0.0.1 counts as an internet address that is not this host's, other loopback
    addresses still do not: the second hop of a test can be refused."""
    monkeypatch.setattr(netguard, "internet_address", lambda address: address == "127.0.0.1")
    monkeypatch.setattr(netguard, "own_address", lambda address: False)


def _resolver(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> list[str]:
    """Names resolve to ``answers`` (a fake resolver: the guard's own lookup is the layer
    under test); returns the names looked up, in order."""
    asked: list[str] = []

    async def getaddrinfo(host: str, port: int, **_kw: object) -> list[tuple[object, ...]]:
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    monkeypatch.setattr(netguard.anyio, "getaddrinfo", getaddrinfo)
    return asked


def test_a_name_with_any_refused_address_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                    loopback: _Listener) -> None:
    """One good address does not make a name good: it is refused as a whole rather than
    tried address by address."""
    _loopback_as_internet(monkeypatch)
    _resolver(monkeypatch, {"two.example": ["127.0.0.1", "127.0.0.3"]})
    with pytest.raises(RegistryAddressRefused, match=r"registry host two\.example is"):
        _guarded_get(loopback.url.replace("127.0.0.1", "two.example"))
    assert loopback.accepted == [0]


def test_the_connection_goes_to_the_address_that_was_checked(
        monkeypatch: pytest.MonkeyPatch, loopback: _Listener) -> None:
    """Resolved once, connected to what was checked: a name that would answer otherwise on
    a second lookup (DNS rebinding) is never looked up again."""
    _loopback_as_internet(monkeypatch)
    asked = _resolver(monkeypatch, {"rebind.example": ["127.0.0.1"]})
    got = _guarded_get(loopback.url.replace("127.0.0.1", "rebind.example"))
    assert (got.status_code, asked, loopback.accepted) == (200, ["rebind.example"], [1])


def test_this_host_s_own_addresses_are_refused(monkeypatch: pytest.MonkeyPatch,
                                               loopback: _Listener) -> None:
    """An address of this host is refused even where it counts as the internet (its
    public address: a connection to it arrives over loopback, past firewalls trusting lo)."""
    monkeypatch.setattr(netguard, "internet_address", lambda address: True)
    assert netguard.own_address("127.0.0.1") and not netguard.own_address("192.0.2.1")
    with pytest.raises(RegistryAddressRefused, match="this host's own"):
        _guarded_get(loopback.url)
    assert loopback.accepted == [0]
