"""Identifiers, secrets and the URLs derived from them."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

SANDBOX_ID_RE = re.compile(r"^[0-9a-f]{20}$")


def new_sandbox_id() -> str:
    """20 lowercase hex characters: 80 random bits, unguessable, DNS-label safe."""
    return secrets.token_hex(10)


def is_sandbox_id(value: str) -> bool:
    return bool(SANDBOX_ID_RE.match(value))


def new_runtime_token() -> str:
    return "spt_" + secrets.token_urlsafe(32)


def new_api_key() -> str:
    return "spk_" + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secrets_equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
