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


def e2b_twin(api_key: str) -> str:
    """The E2B-form twin of an API key (``e2b_`` and 40 hex: older e2b SDKs check the
    form): the same key, for clients that want that form; whoever holds one can make the
    other."""
    return "e2b_" + hashlib.sha256(b"sandport e2b twin\0" + api_key.encode()).hexdigest()[:40]


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secrets_equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
