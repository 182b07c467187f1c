"""Per request head (pure): where it goes, whether it may, and what upstream sees.

Every request head on a connection passes here, so auth, header rewriting and routing
apply per request, never once per connection.
"""

from __future__ import annotations

import hmac
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from urllib.parse import parse_qs

from ..ids import hash_secret, is_sandbox_id
from . import pages
from .auth import (
    bearer,
    cookie_name,
    is_sandbox_token,
    safe_next,
    session_opens,
    sign_session,
    token_opens,
    without_our_cookies,
)
from .routes import RouteTable, SandboxRoute, cookie_credential
from .urls import (
    ENVD_HEADER,
    ENVD_PORT,
    RUNTIME_HEADER,
    RUNTIME_PORT,
    PublicUrls,
    is_internal_path,
    split_path_route,
)

Header = tuple[bytes, bytes]
# Client-sent headers never passed on, however spelled ('_' for '-', any case): the proxy
# writes its own forwarded headers, only it may say a request came by a runtime host, and
# the others are what proxies and frameworks read as "the proxy in front says" (the
# client's port, path prefix or original URL, its address).
_DROPPED = frozenset({b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto",
                      b"x-real-ip", b"forwarded", RUNTIME_HEADER, ENVD_HEADER,
                      b"x-forwarded-port", b"x-forwarded-prefix", b"x-forwarded-server",
                      b"x-forwarded-scheme", b"x-forwarded-ssl", b"x-forwarded-uri",
                      b"x-original-url", b"x-original-uri", b"x-original-host",
                      b"x-rewrite-url", b"x-client-ip", b"true-client-ip",
                      b"x-cluster-client-ip", b"front-end-https", b"x-url-scheme",
                      # E2B's traffic token: the edge's to check, in every spelling
                      b"e2b-traffic-access-token"})
# The user's control API key: the control host reads it; code in a sandbox never sees it.
_API_KEY = b"x-api-key"
# A request to the control host that names a sandbox and port in these (the e2b SDK's
# E2B_SANDBOX_URL mode, where one address serves every sandbox) goes where that sandbox's
# {port}-{id} host would send it.
_E2B_ID, _E2B_PORT = b"e2b-sandbox-id", b"e2b-sandbox-port"
# The E2B face's envd token, and its traffic token (which opens the sandbox's ports when
# they are not public): when one is the sandbox's, code in the sandbox never sees it.
_ACCESS_TOKEN = b"x-access-token"
_TRAFFIC_TOKEN = b"e2b-traffic-access-token"


def _spellings(name: bytes) -> set[bytes]:
    """``name`` with each '-' as '-' or '_': servers may read either as the same header."""
    first, *rest = name.split(b"-")
    return {first + b"".join(sep + part for sep, part in zip(seps, rest, strict=True))
            for seps in itertools.product((b"-", b"_"), repeat=len(rest))}


_DROPPED_SPELLINGS = frozenset(itertools.chain.from_iterable(map(_spellings, _DROPPED))) \
    | (_spellings(_API_KEY) - {_API_KEY})  # the key in another spelling counts nowhere
# Named in the client's Connection header, these still go upstream: framing, the Host,
# and the Connection/Upgrade pair a tunnel needs.
_HOP_KEPT = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection",
                       b"upgrade", b"close", b""})
# The only tokens a Connection header sent upstream keeps: naming any header there would
# let an upstream that honours hop-by-hop drop it (the proxy's forwarded headers, the Host).
_CONNECTION_TOKENS = frozenset({b"close", b"upgrade", b"keep-alive"})
AUTH_PATH = b"/_sandport/auth"
# Lengths of every header name _head may drop or rewrite: others are copied untouched.
_REWRITTEN_LENGTHS = frozenset({*map(len, _DROPPED), len(b"host"), len(b"cookie"),
                                len(b"authorization"), len(_API_KEY), len(_ACCESS_TOKEN),
                                len(_TRAFFIC_TOKEN)})
_ACCESS_TOKEN_SPELLINGS = frozenset(_spellings(_ACCESS_TOKEN))


@dataclass(frozen=True, slots=True)
class HopByHop:
    """Header names a client's Connection headers list, the name lengths _head must then
    look at, and the Connection header rebuilt for upstream (None: pass it unchanged;
    empty: send none)."""

    names: frozenset[bytes] = frozenset()
    lengths: frozenset[int] = _REWRITTEN_LENGTHS
    connection: bytes | None = None


_NO_HOP = HopByHop()


@dataclass(slots=True)
class RequestHead:
    method: bytes
    target: bytes
    version: bytes  # b"1.1"
    headers: list[Header]
    client_ip: str
    upgrade: bool = False


@dataclass(slots=True)
class Forward:
    key: tuple[str, ...]  # ("unix", path) or ("tcp", address, port)
    head: bytes
    sandbox_id: str | None = None
    port: int | None = None
    # (sandbox id, sha256 of the runtime token the request carried): revoking that token
    # cuts the connection (a WebSocket or stream opened with it must not outlive it)
    token: tuple[str, str] | None = None


@dataclass(slots=True)
class Answer:
    render: Callable[[bool], bytes]  # close → the whole response


@dataclass(slots=True)
class Redeem:
    grant: str
    next_path: str
    sandbox_id: str
    port: int
    browser: bool


@dataclass(frozen=True, slots=True)
class Wake:
    """The sandbox is paused with autoResume: resume it, then decide this request again."""

    sandbox_id: str
    browser: bool


Decision = Forward | Answer | Redeem | Wake


def _error(status: int, code: str, message: str, browser: bool,
           page_text: str | None = None) -> Answer:
    return Answer(lambda close: pages.error(status, code, message, browser=browser,
                                            close=close, page_text=page_text))


class Edge:
    def __init__(self, urls: PublicUrls, routes: RouteTable, control_socket: str,
                 secret: bytes, clock: Callable[[], float] = time.time,
                 envd_token: Callable[[str], str] | None = None,
                 traffic_token: Callable[[str], str] | None = None) -> None:
        self.urls = urls
        # a sandbox's envd access token and traffic token (e2b/envd_wire.py)
        self.envd_token, self.traffic_token = envd_token, traffic_token
        self.routes = routes
        self.control_key = ("unix", control_socket)
        self.secret = secret
        self.clock = clock
        self._proto = urls.scheme.encode()

    def decide(self, req: RequestHead) -> Decision:
        host: bytes | None = None
        authorization: bytes | None = None
        cookies: list[bytes] = []
        connection: list[bytes] = []
        browser = False
        named: list[bytes | None] = [None, None]  # E2b-Sandbox-Id, E2b-Sandbox-Port
        traffic: bytes | None = None
        for name, value in req.headers:
            # host, cookie, accept, connection, authorization, e2b-sandbox-id, -port,
            # e2b-traffic-access-token
            if len(name) not in (4, 6, 10, 13, 14, 16, 24):
                continue
            lname = name.lower()
            if lname == b"host":
                if host is not None:
                    return _error(400, "bad_request", "more than one Host header", False)
                host = value
            elif lname == b"authorization":
                authorization = value
            elif lname == b"cookie":
                cookies.append(value)
            elif lname == b"accept":
                browser = b"text/html" in value
            elif lname == b"connection":
                connection.append(value)
            elif lname == _E2B_ID:
                named[0] = value
            elif lname == _E2B_PORT:
                named[1] = value
            elif lname == _TRAFFIC_TOKEN:
                traffic = value
        if req.method == b"CONNECT":
            return _error(405, "method_not_allowed", "CONNECT is not supported here", browser)
        if not req.target.startswith(b"/") and req.target != b"*":
            return _error(400, "bad_request", "the request target must be a path", browser)
        if host is None:
            if req.version != b"1.0":
                return _error(400, "bad_request", "HTTP/1.1 requests need a Host header",
                              browser)
            host = b""
        host_text = host.decode("latin-1")
        matched = self.urls.match(host_text)
        hop = nominated(connection) if connection else _NO_HOP
        routed_by_headers = matched is None and named[0] is not None
        if routed_by_headers:
            by_headers = _named_sandbox(named[0] or b"", named[1])
            if isinstance(by_headers, Answer):
                return by_headers
            matched = by_headers
        if matched is None:
            if is_internal_path(req.target):  # internal route shape, not public
                return _error(404, "not_found", "no such route", browser)
            return Forward(self.control_key, self._head(req, req.target, host, hop=hop))
        sandbox_id, port = matched
        if port == ENVD_PORT:
            envd_id = sandbox_id.encode()
            return Forward(self.control_key, self._head(
                req, b"/envd/" + envd_id + req.target, host, hop=hop,
                mark=(ENVD_HEADER, envd_id)))
        if port == RUNTIME_PORT:
            routed = split_path_route(req.target)
            if routed is None:
                runtime_id = sandbox_id.encode()
                return Forward(self.control_key, self._head(
                    req, b"/runtime/" + runtime_id + req.target, host, hop=hop,
                    mark=(RUNTIME_HEADER, runtime_id)),
                    token=_token_of(sandbox_id, authorization))
            port, target = routed
        else:
            target = req.target
            if target.startswith(AUTH_PATH) and target[len(AUTH_PATH):][:1] in (b"", b"?"):
                if routed_by_headers:  # its cookie would be the control host's
                    return _error(404, "not_found", "no such route", browser)
                return self._redeem(req, sandbox_id, port, browser)
        route = self.routes.get(sandbox_id)
        auth = route.port_auth(port) if route is not None and 0 < port < 65536 else None
        if route is None or auth is None:
            return _error(404, "not_found", pages.NOT_FOUND, browser)
        opened_by = self._opens(route, port, authorization, cookies, traffic) if auth else None
        if auth and opened_by is None:
            return _error(401, "unauthorized", pages.NEEDS_AUTH, browser,
                          pages.BROWSER_NEEDS_AUTH)
        if route.paused:
            if route.auto_resume:
                return Wake(sandbox_id, browser)
            return _error(503, "sandbox_paused", pages.PAUSED, browser)
        head = self._head(req, target, host, route=route, port=port, hop=hop)
        return Forward(("tcp", route.address, str(port)), head, sandbox_id, port,
                       None if opened_by is None else (sandbox_id, opened_by))

    @staticmethod
    def _is_derived(token: Callable[[str], str] | None, route: SandboxRoute,
                    value: bytes) -> bool:
        """Whether ``value`` is the sandbox's token of that kind (constant time)."""
        return token is not None and hmac.compare_digest(
            value.strip(), token(route.sandbox_id).encode())

    def _opens(self, route: SandboxRoute, port: int, authorization: bytes | None,
               cookies: list[bytes], traffic: bytes | None = None) -> str | None:
        """What opens the port: a token (by its hash), E2B's traffic token or a cookie
        (its generation)."""
        now = self.clock()
        if token_opens(route, authorization, now):
            return hash_secret(bearer(authorization) or "")
        if traffic is not None and route.open_ports_auth and \
                self._is_derived(self.traffic_token, route, traffic):
            return hash_secret(traffic.strip().decode("latin-1"))
        wanted = cookie_name(port).encode() + b"="
        for header in cookies:
            for pair in header.split(b";"):
                pair = pair.strip()
                if pair.startswith(wanted) and session_opens(
                        self.secret, pair[len(wanted):].decode("latin-1"), route.sandbox_id,
                        port, now, generation=route.port_generation):
                    return cookie_credential(route.port_generation)
        return None

    def _redeem(self, req: RequestHead, sandbox_id: str, port: int, browser: bool) -> Decision:
        if req.method != b"GET":  # HEAD too: link checkers must not use up the grant
            return _error(405, "method_not_allowed", "open the browser link with GET", browser)
        query = req.target.partition(b"?")[2].decode("latin-1")
        params = parse_qs(query, keep_blank_values=True)
        grant = (params.get("grant") or [""])[0]
        raw_next = (params.get("next") or ["/"])[0]
        next_path = safe_next(raw_next)
        if not grant:
            return _error(400, "bad_request", "the browser link has no grant", browser)
        if next_path is None:
            return _error(400, "bad_request", "next must be a path on this host", browser)
        return Redeem(grant, next_path, sandbox_id, port, browser)

    def _head(self, req: RequestHead, target: bytes, host: bytes, *,
              route: SandboxRoute | None = None, port: int = 0,
              hop: HopByHop = _NO_HOP, mark: Header | None = None) -> bytes:
        """The request head upstream sees: forwarded headers replaced, hop-by-hop headers
        the client nominated dropped, and for sandbox ports the sandbox's token and
        sandport's cookies removed, the Host masked."""
        out = [req.method, b" ", target, b" HTTP/", req.version, b"\r\n"]
        masked = route.upstream_host(port) if route is not None else None
        lengths, hop_names, connection = hop.lengths, hop.names, hop.connection
        to_sandbox = route is not None or mark is not None
        for name, value in req.headers:
            if len(name) not in lengths:
                out += (name, b": ", value, b"\r\n")
                continue
            lname = name.lower()
            if lname in _DROPPED_SPELLINGS or (hop_names and lname in hop_names) or \
                    (to_sandbox and lname == _API_KEY):
                continue
            if connection is not None and lname == b"connection":
                if connection:  # the rebuilt value, once, in place of the first
                    out += (name, b": ", connection, b"\r\n")
                    connection = b""
                continue
            if route is not None:
                if lname == b"host" and masked is not None:
                    value = masked
                elif lname == b"authorization" and is_sandbox_token(route, value):
                    continue
                elif lname in _ACCESS_TOKEN_SPELLINGS and self._is_derived(
                        self.envd_token, route, value):
                    continue
                elif lname == b"cookie":
                    value = without_our_cookies(value)
                    if not value:
                        continue
            out += (name, b": ", value, b"\r\n")
        if mark is not None:  # the internal route's mark: the sandbox's id
            out += (mark[0], b": ", mark[1], b"\r\n")
        ip = req.client_ip.encode()
        out += (b"x-forwarded-host: ", host, b"\r\nx-forwarded-proto: ", self._proto,
                b"\r\nx-forwarded-for: ", ip, b"\r\nx-real-ip: ", ip, b"\r\n\r\n")
        return b"".join(out)


def nominated(connection: list[bytes]) -> HopByHop:
    """What the client's Connection headers nominate: hop-by-hop, so not passed on."""
    value = connection[0] if len(connection) == 1 else b",".join(connection)
    return _nominated(value) if len(value) <= 64 else _nominated.__wrapped__(value)


@lru_cache(maxsize=256)  # a few values ("keep-alive", "Upgrade") are nearly all there is
def _nominated(value: bytes) -> HopByHop:
    tokens = [token.strip().lower() for token in value.split(b",")]
    names = frozenset(set(tokens) - _HOP_KEPT)
    if all(token in _CONNECTION_TOKENS for token in tokens):
        if not names:
            return _NO_HOP  # "close", "Upgrade": nothing to drop, nothing to rebuild
        connection = None
    else:
        kept = dict.fromkeys(token for token in tokens if token in _CONNECTION_TOKENS)
        connection = b", ".join(kept)
    return HopByHop(names, _REWRITTEN_LENGTHS.union(map(len, names), (len(b"connection"),)),
                    connection)


def redeemed(redeem: Redeem, secret: bytes, expires_at: int, now: float,
             secure: bool, generation: int) -> Answer:
    value = sign_session(secret, redeem.sandbox_id, redeem.port, expires_at,
                         generation=generation)
    cookie = pages.session_cookie(cookie_name(redeem.port), value, int(expires_at - now),
                                  secure=secure)
    return Answer(partial(_redirect, redeem.next_path, cookie))


def _redirect(path: str, cookie: str, close: bool) -> bytes:
    return pages.redirect(path, cookie, close=close)


def grant_refused(browser: bool) -> Answer:
    return _error(403, "grant_refused",
                  "this browser link has expired or was already used; ask for a new one "
                  "(POST /api/sandbox/{id}/expose)", browser)


def _named_sandbox(sandbox: bytes, port: bytes | None) -> tuple[str, int] | Answer:
    """The (sandbox, port) E2b-Sandbox-Id / E2b-Sandbox-Port name, or the error: an id
    that is none is an unknown sandbox, as an unknown host is."""
    sandbox_id = sandbox.strip().decode("latin-1")
    if not is_sandbox_id(sandbox_id):
        return _error(404, "not_found", f"The sandbox {sandbox_id[:40]!r} was not found",
                      False)
    text = (port or b"").strip()
    if not text.isdigit() or len(text) > 5 or not 0 < int(text) < 65536:
        return _error(400, "bad_request", "E2b-Sandbox-Port must name a port (1-65535)",
                      False)
    return sandbox_id, int(text)


def _token_of(sandbox_id: str, authorization: bytes | None) -> tuple[str, str] | None:
    token = bearer(authorization)
    return None if token is None else (sandbox_id, hash_secret(token))
