"""Background housekeeping: sandboxes past their timeout or idle, containers that died,
kept files whose time is up (control/housekeeping.py does each)."""

from __future__ import annotations

import asyncio
import logging

from ..control.housekeeping import Housekeeping

log = logging.getLogger("sandport.reaper")


async def run_reaper(housekeeping: Housekeeping, interval_s: float = 1.0,
                     exited_every: int = 5, reclaim_every: int = 5) -> None:
    tick = 0
    while True:
        try:
            await housekeeping.stop_expired()
            await housekeeping.act_on_idle()
            if tick % exited_every == 0:
                await housekeeping.stop_exited()
            if tick % reclaim_every == 0:
                await housekeeping.reclaim_files()
        except asyncio.CancelledError:
            raise
        except Exception:  # keep reaping; one bad sandbox must not stop the others
            log.exception("reaper pass failed")
        tick += 1
        await asyncio.sleep(interval_s)
