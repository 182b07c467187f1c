"""What the request handlers share: built once at start, kept on ``app.state.ctx``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..control.builder import BuildSlots
from ..control.requests import HostLimits
from ..control.sandboxes import SandboxService
from ..runtime import Runtime
from ..runtime.images import ImageStore
from ..runtime_api.sessions import RuntimeSessions
from ..settings import ServerSettings
from ..store import Store


@dataclass(frozen=True, slots=True)
class AppContext:
    settings: ServerSettings
    store: Store
    runtime: Runtime
    images: ImageStore
    sandboxes: SandboxService
    limits: HostLimits
    sessions: RuntimeSessions = field(default_factory=RuntimeSessions)
    builds: BuildSlots = field(default_factory=BuildSlots)
    clock: Callable[[], float] = field(default=time.time)
    envd_secret: bytes = b""  # the E2B face's envd access tokens are derived from it


def host_limits() -> HostLimits:
    mem_kib = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    with open("/proc/sys/kernel/pid_max") as fh:
        pid_max = int(fh.read())
    return HostLimits(cpus=os.cpu_count() or 1, mem_mib=mem_kib // 1024, pids=pid_max)
