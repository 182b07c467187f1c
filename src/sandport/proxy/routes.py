"""The proxy's view of sandboxes (pure): which ports answer, with which auth, where.

The control plane keeps a ``RouteTable`` current (create, expose, unexpose, stop,
reconcile); the proxy only reads it, once per request head. Only running sandboxes are in
it, so an unknown, stopped and never-existing sandbox look the same: absent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..tokens import Older, TokenSet
from .urls import ENVD_PORT, RUNTIME_PORT


def cookie_credential(generation: int) -> str:
    """What a connection opened by a port cookie of ``generation`` is known by, as one
    opened by a token is known by the token's hash: when the generation moves on, what
    its cookies opened is cut as a revoked token's is."""
    return f"cookie-generation:{generation}"


@dataclass(frozen=True, slots=True)
class SandboxRoute:
    sandbox_id: str
    address: str  # the sandbox's own IP, reachable from the host
    token: str
    token_expires_at: float
    ports: dict[int, bool] = field(default_factory=dict)  # exposed port → auth required
    open_ports: bool = False  # every port answers without an expose...
    closed_ports: frozenset[int] = frozenset()  # ...but these, unexposed since
    allow_ports: frozenset[int] | None = None  # ingress policy: only these may answer
    open_ports_auth: bool = False  # ...with auth (E2B's allowPublicTraffic false)
    mask_host: str | None = None  # e.g. "localhost:${PORT}": the Host upstream sees
    paused: bool = False  # frozen: its ports answer 503 until it is resumed...
    auto_resume: bool = False  # ...or a request to them resumes it (autoResume)
    older_tokens: Older = ()  # replaced tokens, valid until their own expiry
    port_generation: int = 0  # browser cookies and grants of another one open nothing

    @property
    def tokens(self) -> TokenSet:
        return TokenSet(self.token, self.token_expires_at, self.older_tokens)

    def port_auth(self, port: int) -> bool | None:
        """Whether ``port`` needs auth; None when it does not answer at all."""
        if port in (RUNTIME_PORT, ENVD_PORT):
            return None
        if self.allow_ports is not None and port not in self.allow_ports:
            return None
        auth = self.ports.get(port)
        if auth is None and self.open_ports and port not in self.closed_ports:
            return self.open_ports_auth
        return auth

    def upstream_host(self, port: int) -> bytes | None:
        if self.mask_host is None:
            return None
        return self.mask_host.replace("${PORT}", str(port)).encode()


class RouteTable:
    """Running sandboxes by id. Watchers hear of every sandbox or port that stops
    answering (``port`` None: the whole sandbox), so open connections can be cut."""

    def __init__(self) -> None:
        self._routes: dict[str, SandboxRoute] = {}
        self._watchers: list[Callable[[str, int | None], None]] = []
        self._revocations: list[Callable[[str, frozenset[str]], None]] = []

    def watch(self, watcher: Callable[[str, int | None], None]) -> None:
        self._watchers.append(watcher)

    def watch_revocations(self, watcher: Callable[[str, frozenset[str]], None]) -> None:
        self._revocations.append(watcher)

    def revoked(self, sandbox_id: str, token_hashes: frozenset[str]) -> None:
        """Tokens (sha256) of the sandbox revoked: what they opened closes."""
        for watcher in self._revocations:
            watcher(sandbox_id, token_hashes)

    def get(self, sandbox_id: str) -> SandboxRoute | None:
        return self._routes.get(sandbox_id)

    def put(self, route: SandboxRoute) -> None:
        old = self._routes.get(route.sandbox_id)
        self._routes[route.sandbox_id] = route
        if old is not None:
            for port in {*old.ports, *(route.closed_ports - old.closed_ports)}:
                was, now = old.port_auth(port), route.port_auth(port)
                if was is not None and (now is None or (now and not was)):  # closed, private
                    self._tell(route.sandbox_id, port)
            if old.open_ports and (not route.open_ports or
                                   route.open_ports_auth and not old.open_ports_auth):
                self._tell(route.sandbox_id, None)  # its open ports closed or went private
            if old.port_generation != route.port_generation:
                self.revoked(route.sandbox_id,
                             frozenset({cookie_credential(old.port_generation)}))

    def drop(self, sandbox_id: str) -> None:
        if self._routes.pop(sandbox_id, None) is not None:
            self._tell(sandbox_id, None)

    def _tell(self, sandbox_id: str, port: int | None) -> None:
        for watcher in self._watchers:
            watcher(sandbox_id, port)

    def __len__(self) -> int:
        return len(self._routes)
