"""Who may open an ``auth: true`` port (pure): bearer tokens, session cookies, grants.

A browser cannot send a bearer token, so ``browserUrl`` carries a one-time grant; the
proxy redeems it on the port's own host for a session cookie bound to (sandbox, port,
port generation) by an HMAC under the server's secret. The cookie is host-only, and even
planted on another host it opens nothing but the port it names.

The sandbox's port generation (``SandboxRoute.port_generation``, stored with the sandbox)
moves on when all its tokens are revoked, a port is unexposed, or a public port is made
private: cookies and grants of an older generation open nothing, like no cookie at all.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from ..ids import secrets_equal
from .routes import SandboxRoute

COOKIE_PREFIX = "sandport_auth_"
SESSION_TTL_S = 12 * 3600
# Ours: the port auth cookies, and the console's session (never sent to a sandbox's host by
# a browser, being host-only; stripped anyway).
_COOKIE_RE = re.compile(rb"\s*(?:" + re.escape(COOKIE_PREFIX.encode()) + rb"[0-9]+|"
                        rb"(?:__Host-)?sandport_console)=")


def cookie_name(port: int) -> str:
    return f"{COOKIE_PREFIX}{port}"


def _mac(secret: bytes, message: str) -> str:
    digest = hmac.new(secret, message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign_session(secret: bytes, sandbox_id: str, port: int, expires_at: int, *,
                 generation: int) -> str:
    body = f"{sandbox_id}.{port}.{generation}.{expires_at}"
    return f"{body}.{_mac(secret, body)}"


def session_opens(secret: bytes, value: str, sandbox_id: str, port: int, now: float, *,
                  generation: int) -> bool:
    parts = value.split(".")
    if len(parts) != 5 or parts[0] != sandbox_id or parts[1] != str(port):
        return False
    if parts[2] != str(generation):  # from before a revoke-all, unexpose or auth change
        return False
    if not parts[3].isdigit() or int(parts[3]) <= now:
        return False
    return secrets_equal(parts[4], _mac(secret, ".".join(parts[:4])))


def new_grant(generation: int) -> str:
    """A one-time browser-link grant of this port generation (it shows in the grant, and
    the store keeps only the grant's hash, so it cannot be changed)."""
    return f"{generation}.{secrets.token_urlsafe(32)}"


def grant_generation(grant: str) -> int | None:
    head, dot, _ = grant.partition(".")
    return int(head) if dot and head.isdigit() and len(head) < 19 else None


def bearer(authorization: bytes | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return value.strip().decode("latin-1") or None


def token_opens(route: SandboxRoute, authorization: bytes | None, now: float) -> bool:
    token = bearer(authorization)
    return token is not None and route.tokens.opens(token, now)


def is_sandbox_token(route: SandboxRoute, authorization: bytes | None) -> bool:
    """Whether the header carries one of the sandbox's tokens, even an expired one (it is
    stripped before the request goes to the sandbox)."""
    token = bearer(authorization)
    return token is not None and route.tokens.knows(token)


def cookie_values(cookie_headers: list[bytes], name: str) -> list[str]:
    wanted = name.encode()
    found = []
    for header in cookie_headers:
        for pair in header.split(b";"):
            key, eq, value = pair.strip().partition(b"=")
            if eq and key == wanted:
                found.append(value.strip(b'"').decode("latin-1"))
    return found


def without_our_cookies(cookie_header: bytes) -> bytes:
    """The Cookie header minus sandport's own cookies (empty when nothing is left)."""
    kept = [pair for pair in cookie_header.split(b";")
            if pair.strip() and not _COOKIE_RE.match(pair)]
    return b";".join(kept).strip()


def safe_next(path: str | None) -> str | None:
    """A same-host path (query decoded once) to redirect to after a grant, or None.

    The Location is sent quoted (see pages.redirect), so what the browser follows is
    exactly this path on the same host: no scheme, no ``//host``, no backslash tricks.
    """
    if path is None:
        return "/"
    if not path.startswith("/") or path.startswith("//") or "\\" in path:
        return None
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in path):
        return None
    return path


def grant_hash(grant: str) -> str:
    return hashlib.sha256(grant.encode()).hexdigest()
