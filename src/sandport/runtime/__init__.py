"""The node runtime: turns a sandbox record into a running container and back.

``Runtime`` is the narrow interface the control plane uses; ``RuncRuntime`` drives runc
directly (shared/DESIGN.md §5). Other runtimes (crun, runsc, a Kubernetes backend) are new
modules behind the same Protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from ..models import ExecResult
from .agent.channel import CommandChannel, CommandListener
from .images import Image
from .network import EgressPolicy

# What a sandbox really is on the host, whatever the store says: its processes run, are
# frozen (paused), are on disk (suspended: a complete checkpoint, nothing running), or gone.
RealState = Literal["running", "frozen", "suspended", "gone"]


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    sandbox_id: str
    image: Image  # resolved: its layers are in the store (the runtime leases them)
    vcpus: int
    mem_mib: int
    env: dict[str, str] = field(default_factory=dict)
    egress: EgressPolicy = field(default_factory=EgressPolicy)
    pids_limit: int = 1024  # its processes and threads (all sandboxes: the parent's cap)
    disk_mib: int = 4096  # its files' room (runtime/disks.py), the API's default size


@dataclass(frozen=True, slots=True)
class ExecRequest:
    command: str
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class CommandRequest:
    """A long-lived command: ``argv`` run directly (no shell), the image's environment with
    ``env`` over it, in ``cwd`` (default: the image's working directory)."""

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    stdin: bool = True
    pty: tuple[int, int] | None = None
    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class SnapshotSource:
    """What a snapshot is made of: the image the sandbox was made from (its manifest's
    digest and its layers, bottom first) and how long its processes stood frozen."""

    image_digest: str
    diff_ids: tuple[str, ...]
    frozen_s: float


class Runtime(Protocol):
    name: str

    async def prepare_host(self) -> None:
        """Once per server start: host-wide rules and directories."""

    async def release_host(self) -> None:
        """Once per server stop: remove host-wide rules that nothing needs any more."""

    async def create(self, spec: SandboxSpec) -> None:
        """Start the sandbox; on failure leave nothing behind and raise RuntimeFailure."""

    async def exec(self, sandbox_id: str, request: ExecRequest) -> ExecResult:
        """Run a shell command and wait for it, the old way (agent protocol 1)."""

    def default_user(self, sandbox_id: str) -> str:
        """The image's ``User`` ("" for root): who commands run as unless told."""
        ...

    def agent_protocol(self, sandbox_id: str) -> int:
        """1: exec only (a sandbox made before processes existed); 2: everything."""
        ...

    async def start_command(self, sandbox_id: str, request: CommandRequest,
                            listener: CommandListener) -> CommandChannel:
        """Start a command that runs until it exits or the channel is closed."""
        ...

    async def suspend_support(self) -> str | None:
        """None where sandboxes can be suspended to disk; else why not (for the user)."""
        ...

    async def suspend(self, sandbox_id: str) -> None:
        """Checkpoint to disk: processes end, memory is on disk, address and URLs kept."""

    async def restore(self, sandbox_id: str) -> None:
        """Start a suspended sandbox again from its checkpoint."""

    def is_suspended(self, sandbox_id: str) -> bool:
        """Whether the sandbox is on disk (suspended, not running)."""
        ...

    async def set_egress(self, sandbox_id: str, egress: EgressPolicy) -> None:
        """Where the running sandbox may connect to from now on (packet filtering)."""

    def network_log(self, sandbox_id: str) -> list[dict[str, object]]:
        """The sandbox's last refused lookups and connections, oldest first."""
        ...

    async def pause(self, sandbox_id: str) -> None:
        """Freeze every process of the sandbox (cgroup freezer); memory stays."""

    async def copy_changes(self, sandbox_id: str, dest: Path,
                           max_bytes: int) -> SnapshotSource:
        """Copy the files the sandbox changed (its overlay's upper directory) to ``dest``,
        frozen only for the copy (commands started meanwhile wait for it); changes over
        ``max_bytes`` are refused before anything is frozen."""
        ...

    async def resume(self, sandbox_id: str) -> None:
        """Thaw a paused sandbox; its processes go on where they were."""

    async def destroy(self, sandbox_id: str, keep_files: bool = False) -> None:
        """Stop the sandbox and remove everything it held; safe to repeat. With
        ``keep_files`` the files it changed are kept aside (``discard_files`` ends them)."""

    def discard_files(self, sandbox_id: str) -> None:
        """Remove the files ``destroy(keep_files=True)`` kept; safe to repeat."""

    def retained_ids(self) -> set[str]:
        """Sandboxes whose files are kept after their end."""
        ...

    def real_state(self, sandbox_id: str) -> RealState:
        """What the sandbox is now on the host (not what the store says)."""
        ...

    async def settle(self, sandbox_id: str) -> RealState:
        """On boot: wait for an operation a crashed server left running on the sandbox,
        tidy what it left half done, and say what the sandbox is now."""
        ...

    def is_running(self, sandbox_id: str) -> bool: ...

    def cpu_seconds(self, sandbox_id: str) -> float | None:
        """CPU time used by the sandbox's processes so far; None if it is not running."""
        ...

    def memory_bytes(self, sandbox_id: str) -> int | None:
        """Memory charged to the sandbox now; None if it is not running."""
        ...

    def address(self, sandbox_id: str) -> str | None:
        """The sandbox's IP address, which the host (the edge proxy) can connect to."""
        ...

    def open_root(self, sandbox_id: str) -> int:
        """A descriptor of the sandbox's root directory (see runtime/safepath)."""
        ...

    def workdir(self, sandbox_id: str) -> str:
        """The image's working directory: where relative paths and commands start."""
        ...

    def sandbox_ids(self) -> set[str]:
        """Every sandbox this runtime holds any state for (running or not)."""
        ...


__all__ = ["CommandRequest", "EgressPolicy", "ExecRequest", "RealState", "Runtime",
           "SandboxSpec"]
