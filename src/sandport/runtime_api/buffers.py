"""One server-wide account of the memory kept on behalf of sandboxes, with a bound.

Each sandbox bounds its own buffers (process_state: output per process, per sandbox);
this bounds their sum over every sandbox of the server. A holder (today a process's or
terminal's kept output) charges what it keeps and credits what it drops. When a charge
takes the total past three quarters of the limit (``SOFT``), the budget sheds, in order:

1. kept output of finished holders, the longest-finished first;
2. of running holders, oldest first, what every attached reader has already read;

never what an attached reader has not read yet (or the start of a process a reader is
about to read). While the total stays past ``SOFT``, running holders of sandboxes that
keep more than their share of it hold back (stop reading from the sandbox: the command's
writes block, the backpressure a slow reader already applies), and past the limit all of
them do, until the total is back under a low-water mark. The shares keep one sandbox
whose readers stall from stopping the output of all the others; the limit holds (give or
take one read per holder) whatever they do.

Holders talk to the budget only through ``BufferHolder``: when output is later kept in the
sandbox itself, its holder charges just the part it caches on the server, and the bound
holds as it is.
"""

from __future__ import annotations

from typing import Protocol

SOFT = 3 / 4  # of the limit: shedding starts, sandboxes past their share hold back
LOW_WATER = 5 / 8  # of the limit: every held-back holder goes on


class BufferHolder(Protocol):
    @property
    def owner(self) -> str:
        """The sandbox it keeps bytes for."""
        ...

    @property
    def finished(self) -> bool:
        """No more bytes will be charged (its process ended)."""
        ...

    @property
    def finished_at(self) -> int:
        """When it finished (ordering of step 1); any value while running."""
        ...

    def shed(self, nbytes: int) -> int:
        """Drop up to about ``nbytes`` of kept bytes that no attached reader still needs,
        oldest first; return how many were dropped (the budget credits them)."""
        ...

    def relieved(self) -> None:
        """The budget is back under its low-water mark: stop holding back."""
        ...


class BufferBudget:
    def __init__(self, limit_bytes: int | None) -> None:
        self.limit = limit_bytes  # None: unbounded (unit tests, tools)
        self.used = 0
        self._holders: dict[int, BufferHolder] = {}  # by id(), in registration order
        self._owners: dict[str, int] = {}  # bytes kept per sandbox (those keeping any)
        self._over = False

    @property
    def over(self) -> bool:
        """Whether the total is past ``SOFT`` (read output is dropped at once)."""
        return self._over

    def holds_back(self, owner: str) -> bool:
        """Whether ``owner``'s running holders should stop reading now."""
        if not self._over or self.limit is None:
            return False
        if self.used > self.limit:
            return True
        share = int(self.limit * SOFT) // max(1, len(self._owners))
        return self._owners.get(owner, 0) > share

    def register(self, holder: BufferHolder) -> None:
        self._holders[id(holder)] = holder

    def unregister(self, holder: BufferHolder, kept: int) -> None:
        """The holder is gone with the ``kept`` bytes it still held."""
        self._holders.pop(id(holder), None)
        self.credit(holder.owner, kept)

    def charge(self, owner: str, nbytes: int) -> None:
        self._count(owner, nbytes)
        soft = None if self.limit is None else int(self.limit * SOFT)
        if soft is not None and self.used > soft:
            self._shed(self.used - soft)
            self._over = self.used > soft

    def _count(self, owner: str, nbytes: int) -> None:
        self.used += nbytes
        kept = self._owners.get(owner, 0) + nbytes
        if kept > 0:
            self._owners[owner] = kept
        else:
            self._owners.pop(owner, None)

    def credit(self, owner: str, nbytes: int) -> None:
        self._count(owner, -nbytes)
        if self._over and self.limit is not None and self.used <= self.limit * LOW_WATER:
            self._over = False
            for holder in list(self._holders.values()):
                if not holder.finished:
                    holder.relieved()

    def _shed(self, excess: int) -> None:
        holders = list(self._holders.values())
        finished = sorted((h for h in holders if h.finished), key=lambda h: h.finished_at)
        running = [h for h in holders if not h.finished]
        for holder in [*finished, *running]:
            if excess <= 0:
                return
            dropped = holder.shed(excess)
            self._count(holder.owner, -dropped)
            excess -= dropped


def budget_bytes(configured_mib: int | None, mem_total_mib: int) -> int:
    """The setting, else an eighth of the host's memory, between 16 and 512 MiB."""
    if configured_mib is not None:
        return configured_mib << 20
    return min(512, max(16, mem_total_mib // 8)) << 20


__all__ = ["BufferBudget", "BufferHolder", "budget_bytes"]
