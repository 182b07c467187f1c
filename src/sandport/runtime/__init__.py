"""The node runtime: turns a sandbox record into a running container and back.

``Runtime`` is the narrow interface the control plane uses; ``RuncRuntime`` drives runc
directly (shared/DESIGN.md §5). Other runtimes (crun, runsc, a Kubernetes backend) are new
modules behind the same Protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..models import ExecResult


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    sandbox_id: str
    image: str
    vcpus: int
    mem_mib: int
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ExecRequest:
    command: str
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None


class Runtime(Protocol):
    name: str

    async def prepare_host(self) -> None:
        """Once per server start: host-wide rules and directories."""

    async def create(self, spec: SandboxSpec) -> None:
        """Start the sandbox; on failure leave nothing behind and raise RuntimeFailure."""

    async def exec(self, sandbox_id: str, request: ExecRequest) -> ExecResult:
        """Run a shell command in the sandbox and wait for it."""

    async def destroy(self, sandbox_id: str) -> None:
        """Stop the sandbox and remove everything it held; safe to repeat."""

    def is_running(self, sandbox_id: str) -> bool: ...

    def address(self, sandbox_id: str) -> str | None:
        """The sandbox's IP address, which the host (the edge proxy) can connect to."""
        ...

    def sandbox_ids(self) -> set[str]:
        """Every sandbox this runtime holds any state for (running or not)."""
        ...


__all__ = ["ExecRequest", "Runtime", "SandboxSpec"]
