"""Signs of life per sandbox, for idle detection (``idleTimeoutSeconds``).

The proxy and the runtime API ``touch`` a sandbox on every request they pass to it;
probes say whether something is under way in it right now (a response or WebSocket still
open through the proxy, a process or terminal started through the API still running, CPU
being used). A sandbox is idle for as long as none of these has happened.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Probe = Callable[[str], bool]

BUSY_CPU_SHARE = 0.01  # of one CPU, averaged between two looks: more is activity


class Activity:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.probes: list[Probe] = []
        self._last: dict[str, float] = {}

    def touch(self, sandbox_id: str) -> None:
        self._last[sandbox_id] = self.clock()

    def idle_for(self, sandbox_id: str) -> float:
        """Seconds since the sandbox last showed life (0 when something is under way; a
        sandbox never seen before starts its idle period now)."""
        now = self.clock()
        if any(probe(sandbox_id) for probe in self.probes):
            self._last[sandbox_id] = now
            return 0.0
        return now - self._last.setdefault(sandbox_id, now)

    def forget(self, sandbox_id: str) -> None:
        self._last.pop(sandbox_id, None)
        for probe in self.probes:
            if isinstance(probe, CpuProbe):
                probe.forget(sandbox_id)


class CpuProbe:
    """Busy when the sandbox used more than BUSY_CPU_SHARE of a CPU since the last look
    (a background job at work, even one nobody talks to)."""

    def __init__(self, cpu_seconds: Callable[[str], float | None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cpu_seconds = cpu_seconds
        self.clock = clock
        self._seen: dict[str, tuple[float, float]] = {}  # sandbox → (when, cpu seconds)

    def forget(self, sandbox_id: str) -> None:
        self._seen.pop(sandbox_id, None)

    def __call__(self, sandbox_id: str) -> bool:
        used = self.cpu_seconds(sandbox_id)
        now = self.clock()
        if used is None:
            self._seen.pop(sandbox_id, None)
            return False
        before = self._seen.get(sandbox_id)
        self._seen[sandbox_id] = (now, used)
        if before is None or now <= before[0]:
            return False
        return (used - before[1]) / (now - before[0]) > BUSY_CPU_SHARE
