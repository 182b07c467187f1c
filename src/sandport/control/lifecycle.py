"""The sandbox state machine (pure).

    creating ──► active ──► stopping ──► closed
        │         ▲   │                    ▲
        └──► error│   └──────(timeout)─────┤
                  ▼                        │
                paused ────────────────────┘   (pause / resume; stop or timeout)

``creating`` and ``stopping`` exist only in the store, so that a crash in the middle of
either is found and finished on the next boot. On the wire they read as ``active``. The
verbs between ``active`` and ``paused`` (pause, resume, suspend, restore) keep the status
and write the record's ``intent`` before they touch the host; a boot finds an intent left
by a crash and finishes or undoes it from what the host holds (control/housekeeping.py).
"""

from __future__ import annotations

from ..errors import SandboxNotRunning
from ..store import RecordStatus, SandboxRecord

_WIRE: dict[str, str] = {
    "creating": "active", "active": "active", "stopping": "active", "paused": "paused",
    "closed": "closed", "error": "error",
}
TRANSITIONS: dict[str, frozenset[str]] = {
    "creating": frozenset({"active", "error", "closed"}),
    "active": frozenset({"paused", "stopping", "closed"}),
    "paused": frozenset({"active", "stopping", "closed"}),
    "stopping": frozenset({"closed"}),
    "closed": frozenset(),
    "error": frozenset(),
}

CLOSE_REQUESTED = "stopped by request"
CLOSE_TIMEOUT = "timeout"
CLOSE_IDLE = "idle"
CLOSE_LOST = "container exited while the server was down"
CLOSE_EXITED = "container exited"
CLOSE_CREATE_INTERRUPTED = "server stopped while the sandbox was being created"


def wire_status(status: RecordStatus) -> str:
    return _WIRE[status]


def can_move(current: RecordStatus, target: RecordStatus) -> bool:
    return target in TRANSITIONS[current]


def is_finished(status: RecordStatus) -> bool:
    return not TRANSITIONS[status]


def ensure_running(record: SandboxRecord) -> None:
    if record.status == "paused":
        raise SandboxNotRunning(f"sandbox {record.id} is paused: resume it first "
                                f"(POST /api/sandbox/{record.id}/resume)")
    if record.status != "active":
        state = "starting" if record.status == "creating" else wire_status(record.status)
        raise SandboxNotRunning(f"sandbox {record.id} is {state}, not running")
