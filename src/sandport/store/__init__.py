"""The store: the source of truth for sandbox records, API keys and the team.

``Store`` is the narrow interface; ``SqliteStore`` is the embedded default (PostgreSQL is a
second module behind the same Protocol when several hosts share one store).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from ..tokens import Older, TokenSet

# "creating" and "stopping" are the store's own transitional states; the wire shows the
# Hyperbrowser statuses (control/lifecycle.py maps them).
RecordStatus = Literal["creating", "active", "paused", "stopping", "closed", "error"]


@dataclass(frozen=True, slots=True)
class SandboxRecord:
    id: str
    team_id: str
    status: RecordStatus
    image_name: str
    vcpus: int
    mem_mib: int
    disk_size_mib: int
    timeout_minutes: int
    token: str
    token_expires_at: float
    created_at: float
    updated_at: float
    runtime: str
    env: dict[str, str] = field(default_factory=dict)
    started_at: float | None = None
    ended_at: float | None = None
    expires_at: float | None = None
    close_reason: str | None = None
    exposed_ports: dict[int, bool] = field(default_factory=dict)  # port → auth
    network: dict[str, Any] = field(default_factory=dict)  # the policy, in wire form
    # Ports unexposed on a network.openPorts sandbox: they stay closed until exposed again.
    closed_ports: tuple[int, ...] = ()
    on_timeout: str = "stop"  # what the deadline does: "stop" or "pause"
    auto_resume: bool = False  # a request to a paused sandbox's URL resumes it
    older_tokens: Older = ()  # replaced runtime tokens (hashes) still valid until they expire
    idle_timeout_s: int | None = None  # with no sign of life for this long...
    on_idle: str = "pause"  # ...it is paused or stopped
    suspended: bool = False  # paused to disk (checkpoint), not in memory
    pids_limit: int = 1024  # at most this many processes and threads in the sandbox
    # A multi-step transition under way (suspend, restore, pause, resume, stop, create),
    # written before the runtime is touched: a boot after a crash finishes or undoes it.
    intent: str | None = None
    # An ended sandbox whose end nobody asked for keeps its files until then (a crash).
    retain_until: float | None = None
    # Browser cookies for its auth ports carry this; revoke-all and unexpose advance it.
    port_generation: int = 0
    metadata: dict[str, str] = field(default_factory=dict)  # the E2B face's, its user's

    @property
    def tokens(self) -> TokenSet:
        return TokenSet(self.token, self.token_expires_at, self.older_tokens)

    def evolve(self, **changes: Any) -> SandboxRecord:
        return replace(self, **changes)

    def with_tokens(self, tokens: TokenSet) -> SandboxRecord:
        return replace(self, token=tokens.token, token_expires_at=tokens.expires_at,
                       older_tokens=tokens.older)


class Store(Protocol):
    def open(self) -> None: ...

    def close(self) -> None: ...

    async def team_id(self) -> str:
        """The server's team (created on first use)."""
        ...

    async def add_api_key(self, key_hash: str, team_id: str) -> None: ...

    async def api_key_team(self, key_hash: str) -> str | None: ...

    async def count_api_keys(self) -> int: ...

    async def insert_sandbox(self, record: SandboxRecord) -> None: ...

    async def update_sandbox(self, record: SandboxRecord) -> None: ...

    async def get_sandbox(self, sandbox_id: str) -> SandboxRecord | None: ...

    async def list_sandboxes(
        self, team_id: str, statuses: tuple[str, ...] | None, offset: int, limit: int
    ) -> tuple[list[SandboxRecord], int]: ...

    async def sandboxes_after(
        self, team_id: str, statuses: tuple[str, ...], metadata: dict[str, str],
        after: tuple[float, str] | None, limit: int, image: str | None = None,
        started_after: float | None = None,
    ) -> list[SandboxRecord]:
        """Newest first, those created before ``after`` (created_at, id: a page's last),
        with every ``metadata`` pair (and of ``image``, started at or after
        ``started_after``): keyset paging, stable while sandboxes come and go."""
        ...

    async def sandboxes_in(self, statuses: tuple[str, ...]) -> list[SandboxRecord]: ...

    async def expired_sandboxes(self, now: float) -> list[SandboxRecord]: ...

    async def files_due(self, now: float) -> list[SandboxRecord]:
        """Ended sandboxes whose kept files are due to be reclaimed (retain_until <= now)."""
        ...

    async def sign_out(self, nonce: str, expires_at: float, now: float) -> None:
        """A console session ended before its expiry (kept until then)."""
        ...

    async def signed_out(self, nonce: str) -> bool: ...

    async def idle_watched(self) -> list[SandboxRecord]:
        """Active sandboxes with an idleTimeoutSeconds."""
        ...

    async def secret(self, name: str) -> bytes:
        """A random server secret, created on first use and kept."""
        ...

    async def add_grant(self, grant_hash: str, sandbox_id: str, port: int,
                        expires_at: float) -> None: ...

    async def redeem_grant(self, grant_hash: str, sandbox_id: str, port: int,
                           now: float) -> bool:
        """Whether the grant is for (sandbox, port), unused and unexpired, marking it used
        if so (a grant shown on another host stays usable). At most one caller ever gets
        a grant."""
        ...


__all__ = ["RecordStatus", "SandboxRecord", "Store"]
