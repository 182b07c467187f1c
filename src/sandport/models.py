"""Wire models: the JSON shapes of the control and runtime APIs, written once.

The server renders records through ``to_wire`` and the SDK parses answers through
``from_wire``, so a field name lives in exactly one place. Shapes follow the Hyperbrowser
sandbox API (shared/DESIGN.md §2): camelCase fields, times as ISO-8601 strings and
``startTime``/``endTime`` as epoch milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

SandboxStatus = Literal["active", "paused", "closed", "error"]
SANDBOX_STATUSES: tuple[str, ...] = ("active", "paused", "closed", "error")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


def millis(ts: float | None) -> int | None:
    return None if ts is None else int(ts * 1000)


@dataclass(frozen=True, slots=True)
class RuntimeTarget:
    """Where the sandbox's runtime API answers. ``url_template`` is sandport's own
    addition: the sandbox's port URLs with ``{port}`` left in (``get_exposed_url``)."""

    transport: str
    host: str
    base_url: str
    url_template: str | None = None

    def to_wire(self) -> dict[str, Any]:
        wire = {"transport": self.transport, "host": self.host, "baseUrl": self.base_url}
        if self.url_template is not None:
            wire["urlTemplate"] = self.url_template
        return wire

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> RuntimeTarget:
        return cls(data["transport"], data["host"], data["baseUrl"], data.get("urlTemplate"))


@dataclass(frozen=True, slots=True)
class ExposedPort:
    """An exposed port; ``browser_url`` is a one-time link for browsers (``auth: true``)
    and is only minted by the expose call, never by a read."""

    port: int
    auth: bool
    url: str = ""
    browser_url: str | None = None
    browser_url_expires_at: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"port": self.port, "auth": self.auth, "url": self.url,
                "browserUrl": self.browser_url,
                "browserUrlExpiresAt": self.browser_url_expires_at}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ExposedPort:
        return cls(int(data["port"]), bool(data.get("auth", False)), data.get("url", ""),
                   data.get("browserUrl"), data.get("browserUrlExpiresAt"))


@dataclass(frozen=True, slots=True)
class SandboxInfo:
    """What ``GET /api/sandbox/{id}`` returns; ``token`` is absent in list entries."""

    id: str
    team_id: str
    status: str
    image_name: str
    created_at: str
    updated_at: str
    start_time: int | None
    end_time: int | None
    close_reason: str | None
    timeout_minutes: int
    vcpus: int
    mem_mib: int
    disk_size_mib: int
    region: str
    session_url: str
    runtime: RuntimeTarget
    exposed_ports: list[ExposedPort] = field(default_factory=list)
    network: dict[str, Any] = field(default_factory=dict)
    token: str | None = None
    token_expires_at: str | None = None
    expires_at: str | None = None  # when the timeout acts (None: no deadline now)
    on_timeout: str = "stop"  # or "pause"
    auto_resume: bool = False  # a request to a paused sandbox's URL resumes it
    idle_timeout_s: int | None = None  # idle detection: no sign of life for this long...
    on_idle: str = "pause"  # ...pauses or stops it
    suspended: bool = False  # paused on disk (checkpoint), not in memory
    # An ended sandbox whose end nobody asked for (a crash) keeps its files until then.
    files_kept_until: str | None = None
    pids_limit: int = 1024  # processes and threads it may have at once

    @property
    def duration(self) -> int:
        """Seconds between start and end (or now, while active), as Hyperbrowser reports."""
        if self.start_time is None:
            return 0
        end = self.end_time
        if end is None:
            end = int(datetime.now(UTC).timestamp() * 1000)
        return max(0, (end - self.start_time) // 1000)

    def to_wire(self, *, with_token: bool = True) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "id": self.id,
            "teamId": self.team_id,
            "status": self.status,
            "imageName": self.image_name,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "startTime": self.start_time,
            "endTime": self.end_time,
            "duration": self.duration,
            "closeReason": self.close_reason,
            "timeoutMinutes": self.timeout_minutes,
            "vcpus": self.vcpus,
            "memMiB": self.mem_mib,
            "diskSizeMiB": self.disk_size_mib,
            "region": self.region,
            "sessionUrl": self.session_url,
            "runtime": self.runtime.to_wire(),
            "exposedPorts": [p.to_wire() for p in self.exposed_ports],
            "network": self.network,
            "expiresAt": self.expires_at,
            "onTimeout": self.on_timeout,
            "autoResume": self.auto_resume,
            "idleTimeoutSeconds": self.idle_timeout_s,
            "onIdle": self.on_idle,
            "suspended": self.suspended,
            "filesKeptUntil": self.files_kept_until,
            "pidsLimit": self.pids_limit,
        }
        if with_token:
            wire["token"] = self.token
            wire["tokenExpiresAt"] = self.token_expires_at
        return wire

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> SandboxInfo:
        return cls(
            id=data["id"],
            team_id=data.get("teamId", ""),
            status=data["status"],
            image_name=data.get("imageName", ""),
            created_at=data.get("createdAt", ""),
            updated_at=data.get("updatedAt", ""),
            start_time=data.get("startTime"),
            end_time=data.get("endTime"),
            close_reason=data.get("closeReason"),
            timeout_minutes=int(data.get("timeoutMinutes") or 0),
            vcpus=int(data.get("vcpus") or 0),
            mem_mib=int(data.get("memMiB") or 0),
            disk_size_mib=int(data.get("diskSizeMiB") or 0),
            region=data.get("region", ""),
            session_url=data.get("sessionUrl", ""),
            runtime=RuntimeTarget.from_wire(data["runtime"]),
            exposed_ports=[ExposedPort.from_wire(p) for p in data.get("exposedPorts") or []],
            network=data.get("network") or {},
            token=data.get("token"),
            token_expires_at=data.get("tokenExpiresAt"),
            expires_at=data.get("expiresAt"),
            on_timeout=data.get("onTimeout") or "stop",
            auto_resume=bool(data.get("autoResume")),
            idle_timeout_s=data.get("idleTimeoutSeconds"),
            on_idle=data.get("onIdle") or "pause",
            suspended=bool(data.get("suspended")),
            files_kept_until=data.get("filesKeptUntil"),
            pids_limit=int(data.get("pidsLimit") or 1024),
        )


@dataclass(frozen=True, slots=True)
class SandboxPage:
    sandboxes: list[SandboxInfo]
    total_count: int
    page: int
    per_page: int

    def to_wire(self) -> dict[str, Any]:
        return {
            "sandboxes": [s.to_wire(with_token=False) for s in self.sandboxes],
            "totalCount": self.total_count,
            "page": self.page,
            "perPage": self.per_page,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> SandboxPage:
        return cls(
            [SandboxInfo.from_wire(s) for s in data["sandboxes"]],
            int(data["totalCount"]),
            int(data["page"]),
            int(data["perPage"]),
        )


@dataclass(frozen=True, slots=True)
class ExecResult:
    stdout: str
    stderr: str
    exit_code: int
    timed_out: bool = False

    def to_wire(self) -> dict[str, Any]:
        result = {"stdout": self.stdout, "stderr": self.stderr, "exitCode": self.exit_code}
        if self.timed_out:
            result["timedOut"] = True
        return {"result": result}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ExecResult:
        r = data["result"]
        return cls(r["stdout"], r["stderr"], int(r["exitCode"]), bool(r.get("timedOut", False)))


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """An image as ``GET /api/images`` lists it (``imageName`` is ``name``'s older key)."""

    name: str
    built: bool
    created_at: str | None
    size_bytes: int | None
    source: str  # builtin | pulled | imported | built | snapshot
    ref: str | None = None
    digest: str | None = None
    layers: int = 0
    last_used_at: str | None = None
    env: tuple[str, ...] = ()
    workdir: str = "/"
    user: str = ""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "imageName": self.name,
            "built": self.built,
            "source": self.source,
            "ref": self.ref,
            "digest": self.digest,
            "sizeBytes": self.size_bytes,
            "layers": self.layers,
            "createdAt": self.created_at,
            "lastUsedAt": self.last_used_at,
            "env": list(self.env),
            "workdir": self.workdir,
            "user": self.user,
            "entrypoint": list(self.entrypoint),
            "cmd": list(self.cmd),
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ImageInfo:
        return cls(
            data.get("name") or data["imageName"], bool(data.get("built", True)),
            data.get("createdAt"), data.get("sizeBytes"), data.get("source", ""),
            data.get("ref"), data.get("digest"), int(data.get("layers") or 0),
            data.get("lastUsedAt"), tuple(data.get("env") or ()), data.get("workdir") or "/",
            data.get("user") or "", tuple(data.get("entrypoint") or ()),
            tuple(data.get("cmd") or ()),
        )


@dataclass(frozen=True, slots=True)
class PushResult:
    """Where a push put an image: the reference as the registry has it, and the digest of
    the manifest it stored (``ref@digest`` pulls exactly these bytes)."""

    ref: str
    digest: str

    def to_wire(self) -> dict[str, Any]:
        return {"ref": self.ref, "digest": self.digest}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> PushResult:
        return cls(str(data["ref"]), str(data["digest"]))


FileType = Literal["file", "dir", "symlink", "other"]


@dataclass(frozen=True, slots=True)
class FileInfo:
    """One entry of a sandbox's filesystem (``lstat``: a symlink is described, not followed).

    ``mode`` holds the permission bits (``0o644`` is 420); ``modifiedTime`` is epoch ms.
    """

    path: str
    name: str
    type: FileType
    size: int
    mode: int
    permissions: str
    owner: str
    group: str
    modified_time: int
    symlink_target: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"path": self.path, "name": self.name, "type": self.type, "size": self.size,
                "mode": self.mode, "permissions": self.permissions, "owner": self.owner,
                "group": self.group, "modifiedTime": self.modified_time,
                "symlinkTarget": self.symlink_target}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> FileInfo:
        return cls(data["path"], data["name"], data["type"], int(data["size"]),
                   int(data["mode"]), data.get("permissions", ""), data.get("owner", ""),
                   data.get("group", ""), int(data.get("modifiedTime") or 0),
                   data.get("symlinkTarget"))


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A change seen by a directory watch: ``op`` is CREATE, WRITE, REMOVE, RENAME or CHMOD."""

    seq: int
    path: str
    op: str
    timestamp: int

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> WatchEvent:
        return cls(int(data["seq"]), data["path"], data["op"], int(data["timestamp"]))


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """A process started through the runtime API (``status``: running, exited, failed,
    killed or timed_out). Times are epoch milliseconds."""

    id: str
    status: str
    command: str
    cwd: str
    pid: int | None
    exit_code: int | None
    started_at: int
    completed_at: int | None
    args: list[str] | None = None

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ProcessInfo:
        return cls(data["id"], data["status"], data["command"], data.get("cwd", ""),
                   data.get("pid"), data.get("exit_code"), int(data["started_at"]),
                   data.get("completed_at"), data.get("args"))


@dataclass(frozen=True, slots=True)
class ProcessResult:
    """How a process ended, with the output the server still held (``output_truncated``:
    some of it had already been dropped from the server's buffer)."""

    info: ProcessInfo
    stdout: str
    stderr: str
    output_truncated: bool = False
    error: str | None = None

    @property
    def exit_code(self) -> int | None:
        return self.info.exit_code

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ProcessResult:
        return cls(ProcessInfo.from_wire(data), data.get("stdout", ""), data.get("stderr", ""),
                   bool(data.get("output_truncated")), data.get("error"))


@dataclass(frozen=True, slots=True)
class OutputChunk:
    """Output of a process: ``stream`` is stdout or stderr; ``seq`` counts chunks from 1."""

    seq: int
    stream: str
    data: bytes
    timestamp: int

    @property
    def text(self) -> str:
        return self.data.decode(errors="replace")


@dataclass(frozen=True, slots=True)
class TerminalInfo:
    id: str
    command: str
    pid: int | None
    running: bool
    exit_code: int | None
    rows: int
    cols: int

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> TerminalInfo:
        return cls(data["id"], data["command"], data.get("pid"), bool(data["running"]),
                   data.get("exitCode"), int(data["rows"]), int(data["cols"]))
