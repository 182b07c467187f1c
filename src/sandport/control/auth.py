"""API keys: who is calling the control API (the ``x-api-key`` header)."""

from __future__ import annotations

from ..errors import Unauthorized
from ..ids import hash_secret
from ..store import Store


async def team_for_key(store: Store, api_key: str | None) -> str:
    if not api_key:
        raise Unauthorized("missing API key: send it in the x-api-key header")
    # Keys are stored as SHA-256 digests and looked up by digest: equal-length, so the
    # comparison time says nothing about the key.
    team = await store.api_key_team(hash_secret(api_key))
    if team is None:
        raise Unauthorized("invalid API key")
    return team
