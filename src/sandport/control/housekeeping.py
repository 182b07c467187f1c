"""Housekeeping of the sandbox service: what the reaper does every second, and what a boot
does first. No HTTP types here.

Every pass works under the sandbox's lock and looks again at the record once it holds it,
so a pass never acts on a sandbox that a verb is changing. The boot pass (``reconcile``)
makes the store agree with the host after a crash: a transition with an intent in the
store is finished or undone from what the host really holds (runtime ``settle``), never
from timings; a sandbox found dead keeps its files for ``retain_ended_h``.
"""

from __future__ import annotations

import logging

from ..errors import SandportError
from ..runtime import RealState
from ..store import RecordStatus, SandboxRecord
from . import lifecycle
from .builder import BUILD_STEP_IMAGE
from .sandboxes import SandboxService

log = logging.getLogger("sandport.control")

# Which status a transition (the record's intent) leads to, once done.
_TARGET: dict[str, RecordStatus] = {"pause": "paused", "resume": "active", "restore": "active"}


class Housekeeping:
    def __init__(self, sandboxes: SandboxService) -> None:
        self.sandboxes = sandboxes
        self.store = sandboxes.store
        self.runtime = sandboxes.runtime

    # -- every second ----------------------------------------------------------------
    async def stop_expired(self) -> int:
        """Act on deadlines: stop, or pause (``onTimeout: "pause"``; a paused sandbox then
        has no deadline until it is given one again)."""
        now = self.sandboxes.clock()
        due = await self.store.expired_sandboxes(now)
        for record in due:
            async with self.sandboxes.locks.hold(record.id):
                current = await self.store.get_sandbox(record.id) or record
                if current.status not in ("active", "paused") or \
                        current.expires_at is None or current.expires_at > now:
                    continue  # given more time meanwhile
                if record.on_timeout != "pause":
                    await self.sandboxes.end_locked(current, lifecycle.CLOSE_TIMEOUT)
                    continue
                try:
                    current = await self.sandboxes.freeze_locked(current, "paused")
                except SandportError as exc:
                    log.warning("sandbox %s: pausing at its timeout failed: %s", record.id,
                                exc.message)
                    continue
                await self.store.update_sandbox(current.evolve(expires_at=None))
            log.info("sandbox %s paused: timeout", record.id)
        return len(due)

    async def act_on_idle(self) -> int:
        """Pause or stop (``onIdle``) running sandboxes with ``idleTimeoutSeconds`` that
        have shown no sign of life (see activity.py) for that long."""
        activity = self.sandboxes.activity
        idle = [r for r in await self.store.idle_watched()
                if r.idle_timeout_s is not None and activity.idle_for(r.id) >= r.idle_timeout_s]
        for record in idle:
            async with self.sandboxes.locks.hold(record.id):
                current = await self.store.get_sandbox(record.id) or record
                if current.status != "active" or current.intent is not None:
                    continue
                if record.on_idle == "stop":
                    await self.sandboxes.end_locked(current, lifecycle.CLOSE_IDLE)
                    continue
                try:
                    await self.sandboxes.freeze_locked(current, "paused")
                except SandportError as exc:
                    log.warning("sandbox %s: pausing when idle failed: %s", record.id,
                                exc.message)
                    continue
            log.info("sandbox %s paused: idle for %d s", record.id, record.idle_timeout_s)
        return len(idle)

    async def stop_exited(self) -> int:
        """Close sandboxes whose container died under a running server (killed from
        outside, out of memory): nobody asked, so their files are kept."""
        closed = 0
        for record in await self.store.sandboxes_in(("active", "paused")):
            if record.suspended or self.runtime.real_state(record.id) != "gone":
                continue
            async with self.sandboxes.locks.hold(record.id):
                current = await self.store.get_sandbox(record.id)
                # A verb that held the lock meanwhile may have changed it (a suspend ends
                # the container before the record says so): look again.
                if current is None or current.status not in ("active", "paused") or \
                        current.suspended or current.intent is not None or \
                        self.runtime.real_state(record.id) != "gone":
                    continue
                await self.sandboxes.end_locked(current, lifecycle.CLOSE_EXITED,
                                                keep_files=True)
                closed += 1
        return closed

    async def reclaim_files(self) -> int:
        """Remove the kept files of ended sandboxes whose time is up."""
        now = self.sandboxes.clock()
        due = await self.store.files_due(now)
        for record in due:
            async with self.sandboxes.locks.hold(record.id):
                current = await self.store.get_sandbox(record.id)
                if current is None or not lifecycle.is_finished(current.status) or \
                        current.retain_until is None or current.retain_until > now:
                    continue  # still ending (its files are being kept), or kept longer
                self.runtime.discard_files(record.id)
                await self.store.update_sandbox(current.evolve(retain_until=None))
            log.info("sandbox %s: kept files reclaimed", record.id)
        return len(due)

    # -- on boot ---------------------------------------------------------------------
    async def reconcile(self) -> dict[str, int]:
        """On boot: finish or undo the transitions a crash interrupted, adopt what runs,
        close the lost (keeping their files), remove what no record owns."""
        counts = {"adopted": 0, "lost": 0, "interrupted": 0, "orphans": 0, "failed": 0}
        for record in await self.store.sandboxes_in(("creating", "active", "paused",
                                                      "stopping")):
            try:
                counts[await self._reconcile_one(record)] += 1
            except Exception:  # one sandbox must not keep the server (and all others) down
                log.exception("sandbox %s: could not be reconciled", record.id)
                counts["failed"] += 1
        counts["orphans"] = await self._remove_orphans()
        return counts

    async def _reconcile_one(self, record: SandboxRecord) -> str:
        """Finish or undo what one sandbox was doing; which count it goes to."""
        state = await self.runtime.settle(record.id)
        if record.image_name.startswith(BUILD_STEP_IMAGE):  # its build ended with the server
            await self.runtime.destroy(record.id)
            await self.sandboxes.finish(record, "closed", "its build ended with the server")
            return "interrupted"
        if record.status == "creating":  # nothing of the user's is in it yet
            await self.runtime.destroy(record.id)
            await self.sandboxes.finish(record, "error",
                                        lifecycle.CLOSE_CREATE_INTERRUPTED)
            return "interrupted"
        if record.status == "stopping":  # an end was under way: finish it alike
            keep = record.retain_until is not None
            await self.runtime.destroy(record.id, keep_files=keep)
            await self.sandboxes.finish(record, "closed", record.close_reason or
                                        lifecycle.CLOSE_REQUESTED, keep_files=keep)
            return "interrupted"
        if state == "gone":
            await self.runtime.destroy(record.id, keep_files=True)
            await self.sandboxes.finish(record, "closed", lifecycle.CLOSE_LOST,
                                        keep_files=True)
            return "lost"
        await self._agree(record, state)
        return "interrupted" if record.intent else "adopted"

    async def _agree(self, record: SandboxRecord, state: RealState) -> None:
        """Make a live sandbox's record and its host state agree: what a finished
        checkpoint made is suspended; otherwise the status the record's intent (or, with
        none, the record) asks for is carried out on the freezer."""
        if state == "suspended":
            record = record.evolve(status="paused", suspended=True, intent=None)
        else:
            target = _TARGET.get(record.intent or "", record.status)
            record = record.evolve(suspended=False, intent=None)
            try:
                if target == "paused" and state == "running":
                    await self.runtime.pause(record.id)
                elif target == "active" and state == "frozen":
                    await self.runtime.resume(record.id)  # no one asked for it frozen
            except SandportError as exc:  # then the record says what the host holds
                log.error("sandbox %s: could not be made %s: %s", record.id, target,
                          exc.message)
                target = "paused" if state == "frozen" else "active"
            record = record.evolve(status=target)
        try:
            record = await self.sandboxes.reapply_caps(record)
        except SandportError as exc:  # it keeps the filter it had
            log.error("sandbox %s: this server's network caps could not be applied: %s",
                      record.id, exc.message)
        await self.store.update_sandbox(record.evolve(updated_at=self.sandboxes.clock()))
        self.sandboxes.publish(record)

    async def _remove_orphans(self) -> int:
        removed = 0
        for sandbox_id in self.runtime.sandbox_ids():
            owner = await self.store.get_sandbox(sandbox_id)
            if owner is None or lifecycle.is_finished(owner.status):
                removed += 1
                await self.runtime.destroy(sandbox_id, keep_files=owner is not None
                                           and owner.retain_until is not None)
        for sandbox_id in self.runtime.retained_ids():
            owner = await self.store.get_sandbox(sandbox_id)
            if owner is None or owner.retain_until is None:
                removed += 1
                self.runtime.discard_files(sandbox_id)
        return removed
