"""Processes and terminals running in sandboxes: their state, output and followers.

A ``ProcessSession`` owns one agent channel. Its output is a sequence of numbered chunks
(``seq`` 1, 2, …, stdout and stderr interleaved as they came). The session keeps the most
recent ``buffer_bytes`` of it, so a client that attaches late (or reconnects) reads what it
missed, within that bound. A follower that is attached never misses a chunk: while it lags
more than the buffer behind, reading from the sandbox pauses (the command's writes block)
rather than dropping what it has not read. Memory per process is thus at most about twice
the buffer, whatever the command prints; and all sessions of the server together keep at
most what their ``BufferBudget`` allows (buffers.py: finished processes' output is shed
first, then what was read; running ones hold back while the server is over it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import Conflict, NotFound, Unavailable
from ..runtime.agent.channel import CommandChannel, CommandListener
from .buffers import BufferBudget

ProcessStatus = Literal["running", "exited", "failed", "killed", "timed_out"]
DEFAULT_BUFFER_BYTES = 4 << 20
MAX_BUFFER_BYTES = 64 << 20
# Per sandbox: older finished processes are forgotten, and the output kept of finished
# ones is bounded; running ones are limited in number and in buffer space.
KEEP_FINISHED = 200
FINISHED_BUFFER_BUDGET = 64 << 20
MAX_RUNNING = 256
RUNNING_BUFFER_BUDGET = 256 << 20
KILL_GRACE_S = 5.0
PIN, PIN_S = -1, 10.0
MAX_STDIN_BACKLOG = 8 << 20  # stdin written but not yet read, per process
MERGE_MAX = 256 << 10


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Chunk:
    seq: int
    stream: str  # stdout, stderr (a terminal's output is stdout)
    data: bytes
    timestamp: int


@dataclass
class ProcessSession(CommandListener):
    id: str
    sandbox_id: str
    command: str
    args: list[str] | None
    cwd: str
    buffer_bytes: int = DEFAULT_BUFFER_BYTES
    pty: tuple[int, int] | None = None
    tag: str | None = None  # a name to find it by (the E2B face's ProcessSelector)
    envs: dict[str, str] = field(default_factory=dict)  # as the start asked (for listings)
    status: ProcessStatus = "running"
    pid: int | None = None
    exit_code: int | None = None
    signal: int = 0
    error: str | None = None
    started_at: int = field(default_factory=now_ms)
    completed_at: int | None = None
    channel: CommandChannel | None = None
    chunks: deque[Chunk] = field(default_factory=deque)
    last_seq: int = 0
    buffered: int = 0
    dropped: bool = False  # some output is no longer in the buffer
    stdin_open: bool = True
    _followers: dict[int, int] = field(default_factory=dict)  # follower → last seq read
    _next_follower: itertools.count[int] = field(default_factory=itertools.count)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _paused: bool = False
    _kill_reason: ProcessStatus | None = None
    _deadline: asyncio.TimerHandle | None = None
    # The server-wide account of kept output (unbounded when a session is made alone).
    budget: BufferBudget = field(default_factory=lambda: BufferBudget(None))

    def __post_init__(self) -> None:
        self.budget.register(self)

    # -- from the channel ---------------------------------------------------------------
    def on_output(self, stream: str, data: bytes) -> None:
        last = self.chunks[-1] if self.chunks else None
        if last is not None and last.stream == stream and len(last.data) + len(data) <= MERGE_MAX \
                and all(cursor < last.seq for cursor in self._followers.values()):
            # Nobody has read the newest chunk yet: grow it rather than add one. When the
            # reader is slower than the command, chunks get bigger and fewer.
            self.chunks[-1] = Chunk(last.seq, stream, last.data + data, last.timestamp)
        else:
            self.last_seq += 1
            self.chunks.append(Chunk(self.last_seq, stream, data, now_ms()))
        self.buffered += len(data)
        self.budget.charge(self.sandbox_id, len(data))
        self._trim()
        self._wake()

    def on_exit(self, code: int, signum: int) -> None:
        if signum and self._kill_reason:
            self._finish(self._kill_reason, code, signum)
        else:
            self._finish("killed" if signum else "exited", code, signum)

    def on_failed(self, message: str) -> None:
        self._finish("failed", None, 0, message)

    def on_lost(self) -> None:
        if self.status == "running":
            self._finish(self._kill_reason or "failed", None, 0,
                         "the connection to the sandbox ended (was it stopped?)")

    def _finish(self, status: ProcessStatus, code: int | None, signum: int,
                error: str | None = None) -> None:
        if self.status != "running":
            return
        self.status, self.exit_code, self.signal, self.error = status, code, signum, error
        self.completed_at = now_ms()
        self.stdin_open = False
        if self._deadline is not None:
            self._deadline.cancel()
        if self.channel is not None:
            self.channel.close()
            self.channel = None  # and its buffers with it
        self._wake()

    # -- output buffer ------------------------------------------------------------------
    def _trim(self) -> None:
        """Drop chunks beyond the buffer (or, while the server is over its budget, any)
        that every follower has read; pause reading if a follower lags so far that nothing
        more may be dropped, or while the server is over its budget."""
        oldest_needed = min(self._followers.values(), default=self.last_seq)
        freed = 0
        while (self.buffered > self.buffer_bytes or self.budget.over) and self.chunks \
                and self.chunks[0].seq <= oldest_needed:
            size = len(self.chunks.popleft().data)
            self.buffered -= size
            freed += size
            self.dropped = True
        if freed:
            self.budget.credit(self.sandbox_id, freed)
        lagging = self.buffered > 2 * self.buffer_bytes or (
            self.running and self.budget.holds_back(self.sandbox_id))
        if lagging != self._paused and self.channel is not None:
            self._paused = lagging
            (self.channel.pause if lagging else self.channel.resume)()

    # -- as a BufferHolder (buffers.py) ---------------------------------------------------
    @property
    def owner(self) -> str:
        return self.sandbox_id

    @property
    def finished(self) -> bool:
        return not self.running

    @property
    def finished_at(self) -> int:
        return self.completed_at or 0

    def shed(self, nbytes: int) -> int:
        """Drop the oldest chunks every follower has read, about ``nbytes`` of them."""
        oldest_needed = min(self._followers.values(), default=self.last_seq)
        freed = 0
        while freed < nbytes and self.chunks and self.chunks[0].seq <= oldest_needed:
            freed += len(self.chunks.popleft().data)
            self.dropped = True
        self.buffered -= freed
        return freed

    def relieved(self) -> None:
        self._trim()

    def release(self) -> None:
        """Forgotten by the registry: its output leaves the server's account."""
        self.chunks.clear()
        self.budget.unregister(self, self.buffered)
        self.buffered = 0

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    @property
    def running(self) -> bool:
        return self.status == "running"

    def retained_from(self) -> int:
        """The first seq still in the buffer (last_seq + 1 when it is empty)."""
        return self.chunks[0].seq if self.chunks else self.last_seq + 1

    def pin_start(self) -> None:
        """Keep every chunk from the start until the first follower from seq 0 adopts the
        pin (the stream answering the start request, or a client's first ``stream()``)
        or ``PIN_S`` passes, whichever is first: a client that starts a process and then
        reads its output gets all of it, however fast it prints."""
        self._followers[PIN] = 0
        asyncio.get_running_loop().call_later(PIN_S, self._unpin)

    def _unpin(self) -> None:
        if self._followers.pop(PIN, None) is not None:
            self._trim()

    async def follow(self, after_seq: int = 0,
                     heartbeat_s: float | None = None) -> AsyncIterator[Chunk | None]:
        """Chunks with seq > ``after_seq`` (from the oldest kept), live, until the process
        has ended and everything was read. Yields None every ``heartbeat_s`` of silence."""
        key = next(self._next_follower)
        pinned = self._followers.pop(PIN, None) if after_seq == 0 else None
        self._followers[key] = pinned if pinned is not None else max(
            after_seq, self.retained_from() - 1)
        try:
            while True:
                chunk = self._after(self._followers[key])
                if chunk is not None:
                    # Taken before it is handed out: from now on it may not grow (on_output).
                    self._followers[key] = chunk.seq
                    self._trim()
                    yield chunk
                    continue
                if not self.running:
                    return
                try:
                    await asyncio.wait_for(self._changed.wait(), heartbeat_s)
                except TimeoutError:
                    yield None
        finally:
            del self._followers[key]
            self._trim()

    def _after(self, cursor: int) -> Chunk | None:
        """The chunk following seq ``cursor`` (seqs in the buffer are consecutive)."""
        if not self.chunks or self.chunks[-1].seq <= cursor:
            return None
        return self.chunks[max(0, cursor + 1 - self.chunks[0].seq)]

    async def wait(self, timeout_s: float | None) -> bool:
        """True once the process has ended; False if ``timeout_s`` passed first."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while self.running:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                return False
        return True

    def forget_output(self) -> None:
        self.chunks.clear()
        self.budget.credit(self.sandbox_id, self.buffered)
        self.buffered = 0
        self.dropped = True

    def output_text(self) -> tuple[str, str]:
        out = b"".join(c.data for c in self.chunks if c.stream == "stdout")
        err = b"".join(c.data for c in self.chunks if c.stream == "stderr")
        return out.decode(errors="replace"), err.decode(errors="replace")

    # -- control ------------------------------------------------------------------------
    def _channel(self) -> CommandChannel:
        if not self.running or self.channel is None:
            raise Conflict(f"process {self.id} has already ended ({self.status})")
        return self.channel

    def write_stdin(self, data: bytes) -> None:
        channel = self._channel()
        if not self.stdin_open:
            raise Conflict(f"process {self.id}: its stdin is closed")
        if channel.backlog() + len(data) > MAX_STDIN_BACKLOG:
            raise Unavailable(f"process {self.id} is not reading its stdin "
                              f"({channel.backlog() >> 10} KiB wait): try again later")
        if data:
            channel.write_stdin(data)

    def close_stdin(self) -> None:
        channel = self._channel()
        if self.stdin_open:
            self.stdin_open = self.pty is not None  # a terminal gets ^D and stays usable
            channel.close_stdin()

    def send_signal(self, signum: int) -> None:
        self._channel().signal(signum)

    def resize(self, rows: int, cols: int) -> None:
        self._channel().resize(rows, cols)
        self.pty = (rows, cols)

    def kill(self, reason: ProcessStatus = "killed") -> None:
        """SIGKILL the process group; hang up if the agent does not report the exit."""
        if not self.running or self.channel is None:
            return
        self._kill_reason = reason
        self.channel.kill()
        channel = self.channel
        asyncio.get_running_loop().call_later(KILL_GRACE_S, channel.close)

    def set_timeout(self, timeout_s: float | None) -> None:
        if timeout_s is not None:
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_later(timeout_s, self.kill, "timed_out")

    # -- wire -----------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "command": self.command,
                "args": self.args, "cwd": self.cwd, "pid": self.pid,
                "exit_code": self.exit_code, "started_at": self.started_at,
                "completed_at": self.completed_at}

    def result(self, *, with_output: bool) -> dict[str, Any]:
        stdout, stderr = self.output_text() if with_output else ("", "")
        return {**self.summary(), "stdout": stdout, "stderr": stderr,
                "last_seq": self.last_seq, "output_truncated": with_output and self.dropped,
                "error": self.error, "signal": self.signal or None}


class ProcessRegistry:
    """Every process and terminal session of this server, by id."""

    def __init__(self, budget: BufferBudget | None = None) -> None:
        self.budget = budget or BufferBudget(None)  # kept output, server-wide
        self._sessions: dict[str, ProcessSession] = {}
        self._starting: dict[str, list[int]] = {}  # sandbox → buffers of starts under way

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{secrets.token_hex(8)}"

    @contextlib.contextmanager
    def admitting(self, sandbox_id: str, buffer_bytes: int) -> Iterator[None]:
        """Hold a place for a start under way (refused past the sandbox's limits, see
        MAX_RUNNING), so that concurrent starts are counted before any has finished."""
        self.admit(sandbox_id, buffer_bytes)
        starting = self._starting.setdefault(sandbox_id, [])
        starting.append(buffer_bytes)
        try:
            yield
        finally:
            starting.remove(buffer_bytes)
            if not starting:
                del self._starting[sandbox_id]

    def admit(self, sandbox_id: str, buffer_bytes: int) -> None:
        """Refuse a start that would pass the sandbox's limits (see MAX_RUNNING)."""
        running = [s.buffer_bytes for s in self._sessions.values()
                   if s.sandbox_id == sandbox_id and s.running]
        running += self._starting.get(sandbox_id, [])
        if len(running) >= MAX_RUNNING:
            raise Conflict(f"a sandbox may run {MAX_RUNNING} processes and terminals "
                           "through the API at once")
        if sum(running) + buffer_bytes > RUNNING_BUFFER_BUDGET:
            raise Conflict(f"the output buffers of this sandbox's running processes would "
                           f"pass {RUNNING_BUFFER_BUDGET >> 20} MiB: ask for a smaller "
                           "outputBufferBytes or end some processes")

    def add(self, session: ProcessSession) -> None:
        self._sessions[session.id] = session
        finished = sorted((s for s in self._sessions.values()
                           if s.sandbox_id == session.sandbox_id and not s.running),
                          key=lambda s: s.started_at)
        for old in finished[:-KEEP_FINISHED or None]:
            del self._sessions[old.id]
            old.release()
        kept = sum(s.buffered for s in finished)
        for old in finished:  # the oldest finished processes' output goes first
            if kept <= FINISHED_BUFFER_BUDGET:
                break
            kept -= old.buffered
            old.forget_output()

    def get(self, sandbox_id: str, session_id: str) -> ProcessSession:
        session = self._sessions.get(session_id)
        if session is None or session.sandbox_id != sandbox_id:
            raise NotFound(f"process {session_id} not found")
        return session

    def any_running(self, sandbox_id: str) -> bool:
        """Whether a process or terminal started through the API still runs in it."""
        return any(s.sandbox_id == sandbox_id and s.running for s in self._sessions.values())

    def running_one(self, sandbox_id: str, by: str, key: int | str) -> ProcessSession:
        """The sandbox's running process or terminal with this ``pid`` or ``tag``."""
        for session in self._sessions.values():
            if session.sandbox_id == sandbox_id and session.running and \
                    (session.pid if by == "pid" else session.tag) == key:
                return session
        raise NotFound(f"process with {by} {key} not found")

    def of_sandbox(self, sandbox_id: str, *, terminals: bool) -> list[ProcessSession]:
        return sorted((s for s in self._sessions.values() if s.sandbox_id == sandbox_id
                       and (s.pty is not None) == terminals), key=lambda s: s.started_at)

    def sandbox_gone(self, sandbox_id: str) -> None:
        for session in [s for s in self._sessions.values() if s.sandbox_id == sandbox_id]:
            if session.channel is not None:
                session.channel.close()
            session.on_lost()
            del self._sessions[session.id]
            session.release()
