"""Idle detection (idleTimeoutSeconds): a sandbox with no traffic, no API call, no running
API process, no open WebSocket and no CPU use for that long is paused (or stopped, with
onIdle "stop"); any of those keeps it running."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import httpx
import websockets.sync.client as ws_client

from sandport import Sandbox

from .._server import ServerProcess
from .conftest import make_site

IDLE_S = 5


def _status(server: ServerProcess, sb: Sandbox) -> dict[str, object]:
    with server.client() as api:
        detail: dict[str, object] = api.get(f"/api/sandbox/{sb.id}").json()
        return detail


def _wait_for(server: ServerProcess, sb: Sandbox, status: str, within_s: float) -> float:
    """Seconds until the sandbox shows ``status``; fails after ``within_s``."""
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        if _status(server, sb)["status"] == status:
            return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"{sb.id} is {_status(server, sb)['status']}, not {status}")


def test_idle_pauses_or_stops_and_activity_keeps_alive(
        fresh_server: Callable[..., ServerProcess]) -> None:
    server = fresh_server()

    def create(**kwargs: object) -> Sandbox:
        return Sandbox.create(api_key=server.api_key, base_url=server.base_url,
                              idle_timeout_s=IDLE_S, **kwargs)  # type: ignore[arg-type]

    quiet, stopper = create(), create(on_idle="stop")
    sleeper, worker = create(), create()
    never = Sandbox.create(api_key=server.api_key, base_url=server.base_url)
    site = make_site(server, idle_timeout_s=IDLE_S, auto_resume=True)
    made = [quiet, stopper, sleeper, worker, never, site.sb]
    held = contextlib.ExitStack()
    try:
        assert quiet.info.idle_timeout_s == IDLE_S and quiet.info.on_idle == "pause"
        # a process started through the API, asleep: the agent is busy in the background
        sleeper.processes.start("sleep 600")
        # a job nobody talks to, left behind by an exec, that uses the CPU
        worker.exec("setsid sh -c 'while :; do date > /tmp/t; sleep 0.02; done'"
                    " >/dev/null 2>&1 &")
        ws = held.enter_context(ws_client.connect(
            site.url(3000, "/ws").replace("http", "ws", 1), open_timeout=10,
            ping_interval=None))  # silent while open: still activity
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        started = time.monotonic()
        _wait_for(server, quiet, "paused", 3 * IDLE_S)
        assert time.monotonic() - started >= IDLE_S - 1
        _wait_for(server, stopper, "closed", 3 * IDLE_S)
        assert _status(server, stopper)["closeReason"] == "idle"
        time.sleep(max(0.0, 2 * IDLE_S - (time.monotonic() - started)))
        for busy in (sleeper, worker, never, site.sb):
            assert _status(server, busy)["status"] == "active", busy.id
        # The WebSocket closes: nothing else goes on there, so it pauses...
        ws.close()
        waited = _wait_for(server, site.sb, "paused", 3 * IDLE_S)
        assert waited >= IDLE_S - 2
        # ...and its URL wakes it (autoResume): a new idle period starts.
        assert httpx.get(site.url(3000, "/echo"), timeout=30).status_code == 200
        assert _status(server, site.sb)["status"] == "active"
        # Requests now and then keep it running.
        for _ in range(2 * IDLE_S):
            assert httpx.get(site.url(3000, "/echo"), timeout=30).status_code == 200
            time.sleep(0.8)
        assert _status(server, site.sb)["status"] == "active"
        # The resumed quiet one is given a new idle period too, then pauses again.
        assert quiet.resume().status == "active"
        _wait_for(server, quiet, "paused", 3 * IDLE_S)
    finally:
        held.close()
        for sb in made:
            sb.stop()
            sb.close()


def test_idle_timeout_is_checked(server: ServerProcess) -> None:
    with server.client() as api:
        for bad in ({"idleTimeoutSeconds": 1}, {"idleTimeoutSeconds": "60"},
                    {"onIdle": "hibernate"}):
            answer = api.post("/api/sandbox", json=bad)
            assert answer.status_code == 400, bad
            assert next(iter(bad)) in answer.json()["message"]
