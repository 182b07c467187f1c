"""Browser links for ``auth: true`` ports: a one-time, short-lived grant in a URL on the
port's own host, redeemed by the proxy for a session cookie (see auth.py)."""

from __future__ import annotations

import time
from collections.abc import Callable

from ..models import iso
from ..store import Store
from .auth import SESSION_TTL_S, grant_generation, grant_hash, new_grant
from .decide import Answer, Redeem, grant_refused, redeemed
from .routes import RouteTable, SandboxRoute
from .urls import PublicUrls


class Grants:
    def __init__(self, store: Store, routes: RouteTable, urls: PublicUrls, secret: bytes,
                 ttl_s: int, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.routes = routes
        self.urls = urls
        self.secret = secret
        self.ttl_s = ttl_s
        self.clock = clock

    async def mint(self, sandbox_id: str, port: int) -> tuple[str, str]:
        """(browser URL, its expiry as ISO-8601)."""
        route = self.routes.get(sandbox_id)
        grant = new_grant(route.port_generation if route is not None else 0)
        expires = self.clock() + self.ttl_s
        await self.store.add_grant(grant_hash(grant), sandbox_id, port, expires)
        url = f"{self.urls.url(sandbox_id, port)}_sandport/auth?grant={grant}&next=%2F"
        return url, iso(expires) or ""

    async def redeem(self, request: Redeem) -> Answer:
        now = self.clock()
        if self._open_route(request) is None or not await self.store.redeem_grant(
                grant_hash(request.grant), request.sandbox_id, request.port, now):
            return grant_refused(request.browser)
        route = self._open_route(request)  # again: the port may have closed meanwhile
        if route is None:
            return grant_refused(request.browser)
        expires = int(now + SESSION_TTL_S)  # and refused once the sandbox stops
        return redeemed(request, self.secret, expires, now, self.urls.secure,
                        route.port_generation)

    def _open_route(self, request: Redeem) -> SandboxRoute | None:
        """The route, if the port answers and the grant is of its current generation."""
        route = self.routes.get(request.sandbox_id)
        if route is None or route.port_auth(request.port) is None:
            return None
        return route if grant_generation(request.grant) == route.port_generation else None
