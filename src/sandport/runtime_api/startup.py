"""Start commands: what an image starts (a dev server, an app) run at create, and the
ready check the create waits for, as E2B templates' start and ready commands do.

A create with ``startCmd: true`` runs the image's start command: the ``startCommand`` it
was given when it was made (a snapshot's), else its config's ``Entrypoint`` + ``Cmd``;
``startCmd: "npm run dev"`` runs that line instead. It runs as a listed process (prefix
``start``) as the image's user, in its working directory, and goes on after the create.
With a ready check (``readyCmd``, else the image's ``readyCommand``) the create answers
only once that shell line exits 0, tried every ``READY_POLL_S``, each try bounded by
``READY_TRY_S``; if the start command ends first, or ``readyTimeoutMs`` passes, the
sandbox is stopped and the create fails with ``StartFailed`` (422) carrying the start
command's last output.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection

from ..control.requests import CreateSandbox
from ..errors import StartFailed, ValidationFailed
from ..store import SandboxRecord
from .commands import EXEC_ARGV, StartRequest
from .process_state import ProcessSession
from .processes import launch

READY_POLL_S = 0.2
READY_TRY_S = 10.0
TAIL_CHARS = 2000
DEFAULT_READY_TIMEOUT_MS = 60_000
MAX_READY_TIMEOUT_MS = 600_000


@dataclass(frozen=True, slots=True)
class StartPlan:
    argv: tuple[str, ...]
    shown: str  # the command as the process list shows it
    ready: str | None
    ready_timeout_s: float


def plan_start(body: dict[str, Any], image_config: dict[str, Any],
               image_extra: dict[str, Any]) -> StartPlan | None:
    """From a create's ``startCmd``, ``readyCmd`` and ``readyTimeoutMs`` and the image:
    what to start, or None. Bad fields are a ValidationFailed naming them."""
    wanted, ready = body.get("startCmd"), body.get("readyCmd")
    timeout_ms = body.get("readyTimeoutMs", DEFAULT_READY_TIMEOUT_MS)
    if wanted in (None, False):
        if ready is not None or "readyTimeoutMs" in body:
            raise ValidationFailed("readyCmd and readyTimeoutMs go with startCmd")
        return None
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int) or not (
            1 <= timeout_ms <= MAX_READY_TIMEOUT_MS):
        raise ValidationFailed(f"readyTimeoutMs must be an integer from 1 to "
                               f"{MAX_READY_TIMEOUT_MS}")
    if ready is not None and (not isinstance(ready, str) or not ready.strip()):
        raise ValidationFailed("readyCmd must be a shell command line")
    if isinstance(wanted, str) and wanted.strip():
        argv: tuple[str, ...] = ("/bin/sh", "-c", wanted)
        shown = wanted
    elif wanted is True:
        argv = _image_start(image_config, image_extra)
        shown = argv[2] if argv[:2] == ("/bin/sh", "-c") and len(argv) == 3 else \
            shlex.join(argv[len(EXEC_ARGV):])
    else:
        raise ValidationFailed("startCmd is true (the image's start command) or a shell "
                               "command line")
    kept_ready = image_extra.get("readyCommand")
    ready = ready if ready is not None else (kept_ready if isinstance(kept_ready, str)
                                             else None)
    return StartPlan(argv, shown, ready, timeout_ms / 1000)


def _image_start(config: dict[str, Any], extra: dict[str, Any]) -> tuple[str, ...]:
    kept = extra.get("startCommand")
    if isinstance(kept, str) and kept.strip():
        return ("/bin/sh", "-c", kept)
    inner = config.get("config") or {}
    entrypoint = [str(a) for a in inner.get("Entrypoint") or []]
    cmd = [str(a) for a in inner.get("Cmd") or []]
    if not entrypoint and not cmd:
        raise ValidationFailed("startCmd: the image has no start command (no startCommand, "
                               "Entrypoint or Cmd); give one as startCmd")
    return (*EXEC_ARGV, *entrypoint, *cmd)  # found on the image's PATH, as docker does


async def create_and_start(request: HTTPConnection, team: str, raw: Any,
                           body: CreateSandbox) -> SandboxRecord:
    """The create, then its start command and ready check if it asks for one; a start
    that fails stops the sandbox. Bad start fields fail before anything is made, and so
    does a missing start command where the image is held already (else: once pulled)."""
    ctx = request.app.state.ctx
    fields = raw if isinstance(raw, dict) else {}
    wanted = fields.get("startCmd") not in (None, False)

    def plan() -> StartPlan | None:
        held = ctx.images.lookup(team, body.image_name)
        return plan_start(fields, held.config if held else {}, held.extra if held else {})

    known = not wanted or isinstance(fields.get("startCmd"), str) or \
        ctx.images.lookup(team, body.image_name) is not None
    early = plan() if known else None
    # A create's memory reservation lasts as long as the task that made it: a task of its
    # own, so that waiting for the ready check does not count the sandbox twice.
    record: SandboxRecord = await asyncio.ensure_future(ctx.sandboxes.create(team, body))
    if not wanted:
        return record
    try:
        chosen = early or plan()  # an image this create pulled: its config is known now
        assert chosen is not None  # startCmd is set: a plan or a ValidationFailed
        await start(request, record.id, chosen)
    except BaseException:
        await asyncio.shield(ctx.sandboxes.stop(team, record.id,
                                                "its start command did not get ready"))
        raise
    return record


async def start(request: HTTPConnection, sandbox_id: str, plan: StartPlan) -> ProcessSession:
    """Start the plan's command and wait for its ready check; StartFailed if it never
    gets ready (the caller stops the sandbox)."""
    session = await launch(request, sandbox_id, StartRequest(
        command=plan.shown, args=None, argv=plan.argv, cwd=None, stdin=False), "start")
    if plan.ready is None:
        return session
    deadline = time.monotonic() + plan.ready_timeout_s
    while True:
        if not session.running:
            raise StartFailed(f"the start command {plan.shown!r} ended ({session.status}, "
                              f"exit code {session.exit_code}) before it was ready"
                              + _tail(session))
        if await _ready(request, sandbox_id, plan.ready, deadline):
            return session
        if time.monotonic() >= deadline:
            raise StartFailed(f"the start command {plan.shown!r} was not ready (readyCmd "
                              f"{plan.ready!r}) after {plan.ready_timeout_s:g} s"
                              + _tail(session))
        await asyncio.sleep(READY_POLL_S)


async def _ready(request: HTTPConnection, sandbox_id: str, line: str, deadline: float) -> bool:
    check = await launch(request, sandbox_id, StartRequest(
        command=line, args=None, argv=("/bin/sh", "-c", line), cwd=None, stdin=False,
        timeout_s=max(0.5, min(READY_TRY_S, deadline - time.monotonic())),
        buffer_bytes=0), "ready")
    async for _chunk in check.follow(0):
        pass
    return check.status == "exited" and check.exit_code == 0


def _tail(session: ProcessSession) -> str:
    out, err = session.output_text()
    text = (out + err).strip()
    return f"; its last output: {text[-TAIL_CHARS:]}" if text else "; it wrote nothing"
