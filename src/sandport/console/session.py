"""Console sessions (pure): a signed cookie naming the team, and the CSRF token of each.

The cookie is ``team.expires.nonce.mac`` under the server's console secret; the API key it
was made from is not in it. A form's CSRF token is a MAC of the session's nonce, so it is
worth nothing without the cookie and the cookie nothing to a form without it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from ..ids import secrets_equal

COOKIE = "sandport_console"
# On https the cookie is __Host-: Secure, Path=/, no Domain, so no other host (a sandbox's
# page on a sibling subdomain) can set or shadow it.
HOST_COOKIE = "__Host-sandport_console"
SESSION_TTL_S = 12 * 3600
_EXPIRY = re.compile(r"[0-9]{1,12}")


def _mac(secret: bytes, message: str) -> str:
    digest = hmac.new(secret, message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def new_session(secret: bytes, team_id: str, now: float) -> str:
    body = f"{team_id}.{int(now + SESSION_TTL_S)}.{secrets.token_urlsafe(16)}"
    return f"{body}.{_mac(secret, body)}"


def session_team(secret: bytes, value: str | None, now: float) -> str | None:
    """The team of a valid, unexpired session cookie; None otherwise."""
    if not value:
        return None
    parts = value.split(".")
    if len(parts) != 4 or not _EXPIRY.fullmatch(parts[1]) or int(parts[1]) <= now:
        return None
    if not secrets_equal(parts[3], _mac(secret, ".".join(parts[:3]))):
        return None
    return parts[0]


def csrf_token(secret: bytes, value: str) -> str:
    nonce = value.split(".")[2] if value.count(".") == 3 else ""
    return _mac(secret, "csrf." + nonce)


def csrf_ok(secret: bytes, value: str, token: str | None) -> bool:
    return bool(token) and secrets_equal(token or "", csrf_token(secret, value))


def nonce_and_expiry(value: str) -> tuple[str, float]:
    """Of a session that ``session_team`` accepted."""
    parts = value.split(".")
    return parts[2], float(parts[1])
