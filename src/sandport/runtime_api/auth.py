"""Runtime tokens (pure): is this request allowed to act on this sandbox?"""

from __future__ import annotations

from ..control import lifecycle
from ..errors import SandboxNotFound, Unauthorized
from ..store import SandboxRecord


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def authorize(record: SandboxRecord | None, sandbox_id: str, authorization: str | None,
              now: float) -> SandboxRecord:
    """The record, if the token opens it and it runs; else the error the client gets.

    Order matters: a wrong token learns nothing about the sandbox's state, and a
    stopped sandbox answers 409 to its own (now expired) token rather than 401.
    """
    if record is None:
        raise SandboxNotFound(f"sandbox {sandbox_id} not found")
    token = bearer_token(authorization)
    if token is None:
        raise Unauthorized("missing runtime token: send Authorization: Bearer <token>")
    tokens = record.tokens
    if not tokens.knows(token):
        raise Unauthorized("invalid runtime token for this sandbox")
    lifecycle.ensure_running(record)
    if not tokens.opens(token, now):
        raise Unauthorized("runtime token expired: get a new one with POST "
                           f"/api/sandbox/{sandbox_id}/refresh")
    return record
