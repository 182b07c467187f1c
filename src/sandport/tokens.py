"""Runtime tokens (pure): several may open one sandbox, each until its own expiry.

A sandbox has one current token, which its detail shows (the server keeps it to show it
again), and the tokens it replaced, kept only as hashes with their expiry: a refresh hands
out a new token while the old one keeps working until its own end or until revoked.
"""

from __future__ import annotations

from dataclasses import dataclass

from .ids import hash_secret, new_runtime_token, secrets_equal

MAX_OLDER = 64  # tokens replaced but unexpired, per sandbox; the oldest beyond this end
RENEW_MARGIN_S = 300.0  # a detail shown with less life left than this gets a new token

Older = tuple[tuple[str, float], ...]  # (sha256 of the token, expires at), newest first


@dataclass(frozen=True, slots=True)
class TokenSet:
    token: str
    expires_at: float
    older: Older = ()

    def knows(self, token: str) -> bool:
        """Whether ``token`` is one of this sandbox's tokens, expired or not."""
        if secrets_equal(token, self.token):
            return True
        digest = hash_secret(token)
        return any(secrets_equal(digest, known) for known, _ in self.older)

    def opens(self, token: str, now: float) -> bool:
        """Whether ``token`` is one of this sandbox's tokens and has not expired."""
        if secrets_equal(token, self.token):
            return now < self.expires_at
        digest = hash_secret(token)
        return any(secrets_equal(digest, known) and now < expires
                   for known, expires in self.older)

    def rotated(self, now: float, ttl_s: float) -> TokenSet:
        """A new current token; the one it replaces keeps working until it expires."""
        older = ((hash_secret(self.token), self.expires_at), *self.older)
        return TokenSet(new_runtime_token(), now + ttl_s, _live(older, now))

    def revoked(self, token: str | None, now: float, ttl_s: float) -> TokenSet:
        """Without ``token`` (None): every token ends and a new one is issued. With it: that
        one ends (a new current one replaces it if it was current)."""
        if token is None:
            return TokenSet(new_runtime_token(), now + ttl_s)
        if secrets_equal(token, self.token):
            return TokenSet(new_runtime_token(), now + ttl_s, _live(self.older, now))
        digest = hash_secret(token)
        kept = tuple((h, e) for h, e in self.older if not secrets_equal(digest, h))
        return TokenSet(self.token, self.expires_at, _live(kept, now))

    def ended(self, now: float) -> TokenSet:
        """A stopped sandbox's: nothing opens it any more."""
        return TokenSet(self.token, min(self.expires_at, now))

    def due(self, now: float, ttl_s: float) -> bool:
        """Whether the current token is close enough to its end to be replaced when shown."""
        return self.expires_at - now < min(RENEW_MARGIN_S, ttl_s / 2)


def issue(now: float, ttl_s: float) -> TokenSet:
    return TokenSet(new_runtime_token(), now + ttl_s)


def _live(older: Older, now: float) -> Older:
    return tuple((h, e) for h, e in older if e > now)[:MAX_OLDER]
