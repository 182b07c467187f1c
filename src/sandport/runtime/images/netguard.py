"""Where the server may connect on a caller's behalf when it talks to a registry.

A caller names the registry (``imageName: "10.0.0.5:6379/x"``), its token realm and its
redirects, so without a check any API key could make the server open connections to the
host's loopback services, the sandboxes' own network or a cloud metadata address. A
registry the operator named (``--insecure-registry``, ``--registry-ca``, ``--registry-mirror``;
not ``--registry-allow``, which only narrows, and whose wildcards others may point anywhere)
is trusted with everything it leads to; for any other, every
connection (to the registry, its token service, the hosts its redirects and upload
locations name) goes only to internet addresses: the name is resolved here, every address
it has is checked, and the connection is made to a checked address, so a name that
resolves once to a public and then to a private address (DNS rebinding) gains nothing.
The refused addresses are the ones a sandbox's ``allowInternet`` does not reach either
(``network.NOT_INTERNET``) and every IPv6 address that is not global.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable
from typing import Any

import anyio
import httpcore
import httpx

from ...errors import Forbidden
from ..network import NOT_INTERNET

log = logging.getLogger("sandport.registry")
_REFUSED_V4 = tuple(ipaddress.IPv4Network(cidr) for cidr in NOT_INTERNET)
# IPv6 prefixes whose last 32 bits are an IPv4 address a gateway or the kernel may reach
_CARRY_V4 = tuple(ipaddress.IPv6Network(n) for n in (
    "64:ff9b::/96", "64:ff9b:1::/48", "::/96", "::ffff:0:0:0/96"))


def internet_address(text: str) -> bool:
    """Whether ``text`` (an IP address) is one the server may reach for any caller: not
    loopback, private, link-local, CGNAT or reserved, and for IPv6 not an address that
    carries a refused IPv4 one (mapped, compatible, SIIT, NAT64 well-known and local-use)."""
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
                                      if any(ip in net for net in _CARRY_V4) else None)
        if embedded is None:
            return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_site_local)
        ip = embedded
    return not any(ip in net for net in _REFUSED_V4)


def own_address(text: str) -> bool:
    """Whether ``text`` is an address of this host (its public one too: a connection to it
    arrives over loopback, past firewalls that trust ``lo``): one a socket can bind."""
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((text, 0))
        except OSError:
            return False
    return True


class RegistryAddressRefused(Forbidden):
    pass


class InternetOnly(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to internet addresses (see above)."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):
                found = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"{host} cannot be resolved: {exc}") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
        for address in addresses:
            if not internet_address(address) or own_address(address):
                log.info("registry host %s refused: it is at %s", host, address)
                raise RegistryAddressRefused(  # which address stays in the log
                    f"registry host {host} is on a loopback, private, link-local or this "
                    "host's own address: this server connects to such registries only "
                    "when its operator names them (--insecure-registry, --registry-ca or "
                    "--registry-mirror)")
        failure: httpcore.ConnectError | None = None
        for address in addresses:  # the checked addresses, never a second lookup
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address,
                    socket_options=socket_options)
            except httpcore.ConnectError as exc:
                failure = exc
        raise failure or httpcore.ConnectError(f"{host} has no address")

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None,
                                  ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("registries are not reached over unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def internet_only(transport: httpx.AsyncHTTPTransport, context: Any,
                  limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """``transport`` with its connection pool replaced by one whose connections go through
    ``InternetOnly``. httpx (0.28) takes no network backend itself; if a later httpx no
    longer keeps its pool where this expects it, this refuses rather than goes unguarded."""
    if not isinstance(getattr(transport, "_pool", None), httpcore.AsyncConnectionPool):
        raise RuntimeError("this httpx keeps its connection pool elsewhere; the registry "
                           "address guard cannot be installed")
    transport._pool = httpcore.AsyncConnectionPool(  # noqa: SLF001 - see the docstring
        ssl_context=context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=InternetOnly(),
    )
    return transport
