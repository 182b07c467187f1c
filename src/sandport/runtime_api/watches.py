"""``{runtime.baseUrl}/sandbox/files/watch…``: directory watches, streamed over WebSocket.

A watch lives on the server until it is deleted or its sandbox stops; it keeps its last
``EVENT_BUFFER`` events, so a client that reconnects with ``?cursor=<last seq>`` misses
nothing that recent. Wire shapes are Hyperbrowser's: ``{"watch": status}`` and messages
``{"type": "event", "event": {seq, path, op, timestamp}}`` then ``{"type": "done"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..control.http import json_body
from ..errors import Conflict, NotFound, SandportError, Unavailable
from ..runtime.fswatch import DirectoryWatch, Inotify
from ..runtime.sandboxfs import client_errors
from ._common import bool_field, int_field, require_object, runtime_record, string_field
from .files import in_sandbox
from .websocket import deny

log = logging.getLogger("sandport.runtime_api")

EVENT_BUFFER = 4096
MAX_WATCHES_PER_SANDBOX = 8
KEEP_STOPPED = 8  # per sandbox: ended watches kept for a last read of their events
# For the whole server: inotify watches are a per-user resource that root in every
# sandbox shares with the server (fs.inotify.max_user_watches). All watches share one
# inotify instance (fswatch.Inotify), so they take one of max_user_instances (128).
MAX_WATCHED_DIRS = 32768
MAX_ACTIVE_WATCHES = 1024


def _ms() -> int:
    return int(time.time() * 1000)


@dataclass
class WatchSession:
    id: str
    sandbox_id: str
    path: str
    recursive: bool
    watch: DirectoryWatch | None
    created_at: int = field(default_factory=_ms)
    stopped_at: int | None = None
    error: str | None = None
    last_seq: int = 0
    read_seq: int = 0  # where the E2B face's GetWatcherEvents reads on from
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=EVENT_BUFFER))
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def active(self) -> bool:
        return self.stopped_at is None

    def status(self, include_events: bool = False) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "id": self.id, "path": self.path, "recursive": self.recursive,
            "active": self.active, "error": self.error, "createdAt": self.created_at,
            "stoppedAt": self.stopped_at, "lastSeq": self.last_seq,
            "oldestSeq": self.events[0]["seq"] if self.events else self.last_seq,
            "eventCount": len(self.events),
        }
        if include_events:
            wire["events"] = list(self.events)
        return wire

    def record(self, path: str, op: str) -> None:
        self.last_seq += 1
        self.events.append({"seq": self.last_seq, "path": path, "op": op, "timestamp": _ms()})
        self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class WatchRegistry:
    def __init__(self) -> None:
        self._watches: dict[str, WatchSession] = {}
        # Opened now, at the server's start: a sandbox that later takes every inotify
        # instance of root (its own user) cannot take this one.
        self.inotify = Inotify()
        self._reading: int | None = None  # the descriptor the event loop reads

    def add(self, sandbox_id: str, watch: DirectoryWatch) -> WatchSession:
        mine = [w for w in self._watches.values() if w.sandbox_id == sandbox_id]
        watched = sum(w.watch.watched for w in self._watches.values() if w.watch is not None)
        if sum(1 for w in mine if w.active) >= MAX_WATCHES_PER_SANDBOX:
            watch.close()
            raise Conflict(f"a sandbox may have {MAX_WATCHES_PER_SANDBOX} active watches")
        active = sum(1 for w in self._watches.values() if w.active)
        if watched + watch.watched > MAX_WATCHED_DIRS or active >= MAX_ACTIVE_WATCHES:
            watch.close()
            raise Unavailable("this server watches as many directories as it may: "
                              "stop some watches, or watch fewer directories")
        stopped = sorted((w for w in mine if not w.active), key=lambda w: w.created_at)
        for old in stopped[:-KEEP_STOPPED or None]:
            del self._watches[old.id]
        session = WatchSession("w_" + secrets.token_hex(8), sandbox_id, watch.path,
                               watch.recursive, watch)
        self._watches[session.id] = session
        if self._reading != self.inotify.fileno():
            self._reading = self.inotify.fileno()
            asyncio.get_running_loop().add_reader(self._reading, self._read_inotify)
        watch.on_change = lambda: self._changed(session)
        self._changed(session)  # what came before it was registered
        return session

    def _read_inotify(self) -> None:
        try:
            self.inotify.read()
        except OSError as exc:
            log.error("reading file watch events failed: %s", exc.strerror)

    def _changed(self, session: WatchSession) -> None:
        watch = session.watch
        if watch is None:
            return
        for change in watch.read():
            session.record(change.path, change.op)
        if watch.ended:
            self.stop(session, "the watched directory is gone")

    def get(self, sandbox_id: str, watch_id: str) -> WatchSession:
        session = self._watches.get(watch_id)
        if session is None or session.sandbox_id != sandbox_id:
            raise NotFound(f"watch {watch_id} not found")
        return session

    def stop(self, session: WatchSession, error: str | None = None) -> None:
        if session.watch is not None:
            session.watch.on_change = None
            session.watch.close()
            session.watch = None
        if session.stopped_at is None:
            session.stopped_at = _ms()
            session.error = error
            session._wake()

    def sandbox_gone(self, sandbox_id: str) -> None:
        """Its sandbox stopped: end its watches and forget them."""
        for session in [w for w in self._watches.values() if w.sandbox_id == sandbox_id]:
            self.stop(session, "the sandbox stopped")
            del self._watches[session.id]


def _registry(request: Request | WebSocket) -> WatchRegistry:
    registry: WatchRegistry = request.app.state.ctx.sessions.watches
    return registry


async def create_watch(request: Request) -> Response:
    body = require_object(await json_body(request), {"path", "recursive", "runAs"})
    path = str(string_field(body, "path"))
    recursive = bool_field(body, "recursive")
    run_as = string_field(body, "runAs", required=False)

    inotify = _registry(request).inotify

    def open_watch(fs: Any) -> DirectoryWatch:
        absolute = fs.absolute(path)
        with client_errors(absolute):
            return DirectoryWatch(inotify, fs.root_fd, absolute, recursive)

    watch = await in_sandbox(request, run_as, open_watch)
    session = _registry(request).add(request.path_params["id"], watch)
    return JSONResponse({"watch": session.status()})


async def get_watch(request: Request) -> Response:
    record = await runtime_record(request)
    session = _registry(request).get(record.id, request.path_params["watch_id"])
    include = bool_field(dict(request.query_params), "includeEvents")
    return JSONResponse({"watch": session.status(include)})


async def delete_watch(request: Request) -> Response:
    record = await runtime_record(request)
    registry = _registry(request)
    session = registry.get(record.id, request.path_params["watch_id"])
    registry.stop(session)  # kept a while (KEEP_STOPPED) for a last read of its events
    return JSONResponse({"watch": session.status()})


async def stream_watch(websocket: WebSocket) -> None:
    """Send events after ``?cursor=`` (a seq), then live ones, then ``done`` when it ends."""
    try:
        record = await runtime_record(websocket)
        session = _registry(websocket).get(record.id, websocket.path_params["watch_id"])
        cursor = int_field(dict(websocket.query_params), "cursor", default=0) or 0
    except SandportError as exc:
        await deny(websocket, exc)
        return
    await websocket.accept()
    closed = asyncio.ensure_future(_until_closed(websocket))
    try:
        while True:
            # Taken before the sends: an event recorded while one is sent sets this one.
            changed_event = session.changed
            pending = [e for e in session.events if e["seq"] > cursor]
            for event in pending:
                await websocket.send_json({"type": "event", "event": event})
                cursor = event["seq"]
            if not session.active:
                await websocket.send_json({"type": "done", "status": session.status()})
                await websocket.close()
                return
            changed = asyncio.ensure_future(changed_event.wait())
            await asyncio.wait([changed, closed], return_when=asyncio.FIRST_COMPLETED)
            if closed.done():
                changed.cancel()
                return
    except (WebSocketDisconnect, RuntimeError):
        return
    finally:
        closed.cancel()


async def _until_closed(websocket: WebSocket) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass

