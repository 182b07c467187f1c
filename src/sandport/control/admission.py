"""Admission: whether the host has room for one more sandbox, decided before it is made.

- **Memory** is the one resource that is summed: the ``memMiB`` of active and
  freezer-paused sandboxes (a suspended one holds none) and of creates under way may add up
  to ``(MemTotal − reserve) × overcommit``. ``vcpus`` is a cap per sandbox (CPU time is
  shared, never summed), and so is ``diskSizeMiB`` against the data directory's free space.
- **Processes** are not summed from per-sandbox caps (500 idle sandboxes use few): the
  kernel caps all sandboxes together on their parent cgroup (runtime/pidcap.py), and a
  create is refused only when what they run now plus a reserve reaches that cap.

``refusal`` is the pure decision; ``HostProbe`` reads the host (/proc, the parent cgroup,
statvfs); ``Admission`` adds the store's records to the creates under way and decides
without yielding in between, so concurrent creates cannot each take the last room.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InsufficientCapacity
from ..runtime import pidcap
from ..settings import ServerSettings
from ..store import Store

PIDS_RESERVE = 64  # room a new sandbox needs to start (init, agent, a first command)
HOLDING_MEMORY = ("active", "paused", "stopping")  # "creating" ones are counted in flight


@dataclass(frozen=True, slots=True)
class Ask:
    mem_mib: int
    disk_size_mib: int


@dataclass(frozen=True, slots=True)
class Capacity:
    """The host's room, as measured now."""

    mem_total_mib: int
    mem_reserve_mib: int
    overcommit: float
    pids_total: int  # the cap on all sandboxes' processes (the parent cgroup's pids.max)
    pids_current: int | None  # what they run now (None: not measurable, not refused)
    disk_free_mib: int | None
    pids_reserve: int = PIDS_RESERVE

    @property
    def mem_capacity_mib(self) -> int:
        return max(0, int((self.mem_total_mib - self.mem_reserve_mib) * self.overcommit))


def default_memory_reserve_mib(mem_total_mib: int) -> int:
    """What the host keeps for itself: a tenth of its memory, at least 1 GiB (at most half)."""
    return min(mem_total_mib // 2, max(1024, mem_total_mib // 10))


def refusal(ask: Ask, committed_mem_mib: int, capacity: Capacity) -> str | None:
    """Why the host cannot take a sandbox asking for ``ask`` (None: it can), given the
    memory already promised to other sandboxes."""
    left = capacity.mem_capacity_mib - committed_mem_mib
    if ask.mem_mib > left:
        return (f"not enough memory for memMiB {ask.mem_mib}: {max(0, left)} MiB of "
                f"{capacity.mem_capacity_mib} MiB left for sandboxes "
                f"({committed_mem_mib} MiB promised to running and paused ones)")
    if capacity.disk_free_mib is not None and ask.disk_size_mib > capacity.disk_free_mib:
        return (f"not enough disk for diskSizeMiB {ask.disk_size_mib}: "
                f"{capacity.disk_free_mib} MiB free")
    if capacity.pids_current is not None and \
            capacity.pids_current + capacity.pids_reserve >= capacity.pids_total:
        return (f"the host's sandboxes run {capacity.pids_current} of the "
                f"{capacity.pids_total} processes and threads they may: "
                f"{max(0, capacity.pids_total - capacity.pids_current)} left, "
                f"{capacity.pids_reserve} needed to start one")
    return None


class HostProbe:
    """Reads the host's side of ``Capacity``: meminfo, the parent cgroup, statvfs."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.mem_total_mib = _mem_total_mib()
        self.pids_total = pidcap.host_pids_total(settings.max_pids_total)

    def capacity(self) -> Capacity:
        reserve = self.settings.memory_reserve_mib
        return Capacity(
            mem_total_mib=self.mem_total_mib,
            mem_reserve_mib=default_memory_reserve_mib(self.mem_total_mib)
            if reserve is None else reserve,
            overcommit=self.settings.memory_overcommit,
            pids_total=self.pids_total,
            pids_current=pidcap.pids_current(self.settings.cgroup_parent),
            disk_free_mib=_free_mib(self.settings.data_dir),
        )


@dataclass
class _Reservation:
    mem_mib: int
    released_at: int | None = None  # the tick of its release


@dataclass
class Admission:
    """The memory of creates under way, held from admission until the task that made the
    create ends (by then its record says active, or error)."""

    store: Store
    probe: HostProbe
    _held: list[_Reservation] = field(default_factory=list)
    _deciding: list[int] = field(default_factory=list)  # ticks of looks at the store
    _ticks: itertools.count[int] = field(default_factory=itertools.count)

    async def admit(self, ask: Ask) -> None:
        """Raise InsufficientCapacity (503) unless the host has room for ``ask``; else
        hold its memory until the current task ends."""
        start = next(self._ticks)
        self._deciding.append(start)
        try:
            records = await self.store.sandboxes_in(HOLDING_MEMORY)
        finally:
            self._deciding.remove(start)
        # Nothing below yields: the decision and the reservation are one step. A create
        # that ended while the store was read may be in neither the records read nor the
        # live reservations: those released since ``start`` are counted too.
        committed = sum(r.mem_mib for r in records if not r.suspended)
        committed += sum(h.mem_mib for h in self._held
                         if h.released_at is None or h.released_at > start)
        message = refusal(ask, committed, self.probe.capacity())
        if message is not None:
            raise InsufficientCapacity(message)
        held = _Reservation(ask.mem_mib)
        self._held.append(held)
        task = asyncio.current_task()
        if task is None:
            self._release(held)
        else:
            task.add_done_callback(lambda _: self._release(held))

    def _release(self, held: _Reservation) -> None:
        held.released_at = next(self._ticks)
        oldest = min(self._deciding, default=held.released_at)
        self._held = [h for h in self._held
                      if h.released_at is None or h.released_at > oldest]

    @property
    def in_flight_mib(self) -> int:
        return sum(h.mem_mib for h in self._held if h.released_at is None)


def _mem_total_mib() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 0


def _free_mib(path: Path) -> int | None:
    try:
        stat = os.statvfs(path)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize >> 20


__all__ = ["Admission", "Ask", "Capacity", "HostProbe", "default_memory_reserve_mib",
           "refusal"]
