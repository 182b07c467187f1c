"""Named crash points, for the tests of crash recovery (never armed in normal use).

A multi-step transition calls ``crash_point("suspend.after_checkpoint")`` between its
steps; a server started with the ``test_crash_at`` setting (``SANDPORT_TEST_CRASH_AT``)
naming that point ends there with ``os._exit(137)``, as if killed: no cleanup, no flush,
whatever it had spawned left running. Tests then restart the server and check that the
transition was finished or undone (tests/integration/test_crash.py). Each point is named
``<verb>.<where>``; the list is ``POINTS``, so a test cannot name one that does not exist.
"""

from __future__ import annotations

import logging
import os

from .errors import ValidationFailed

POINTS = frozenset({
    "create.after_insert", "create.after_start",
    "stop.after_mark", "stop.runtime_half_done",
    "pause.after_intent", "pause.runc_started", "pause.after_freeze",
    "resume.after_intent", "resume.runc_started", "resume.after_thaw",
    "suspend.after_intent", "suspend.runc_started", "suspend.after_checkpoint",
    "restore.after_intent", "restore.runc_started", "restore.after_restore",
    "create.runc_started",
    "lost.files_moved",
    "pull.layer_published",
    "snapshot.copied",
})

_armed: str | None = None
log = logging.getLogger("sandport.crash")


def arm(name: str | None) -> None:
    """Crash at ``name`` from now on (None: never)."""
    global _armed
    if name is not None and name not in POINTS:
        raise ValidationFailed(f"test_crash_at: no crash point {name!r}")
    _armed = name


def crash_point(name: str) -> None:
    if name == _armed:
        log.warning("crash point %s reached: exiting as if killed", name)
        logging.shutdown()
        os._exit(137)
