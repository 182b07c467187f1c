"""Background housekeeping: sandboxes past their timeout or idle, containers that died."""

from __future__ import annotations

import asyncio
import logging

from ..control.sandboxes import SandboxService

log = logging.getLogger("sandport.reaper")


async def run_reaper(sandboxes: SandboxService, interval_s: float = 1.0,
                     exited_every: int = 5) -> None:
    tick = 0
    while True:
        try:
            await sandboxes.stop_expired()
            await sandboxes.act_on_idle()
            if tick % exited_every == 0:
                await sandboxes.stop_exited()
        except asyncio.CancelledError:
            raise
        except Exception:  # keep reaping; one bad sandbox must not stop the others
            log.exception("reaper pass failed")
        tick += 1
        await asyncio.sleep(interval_s)
