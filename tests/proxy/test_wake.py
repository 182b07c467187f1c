"""autoResume: a request or WebSocket upgrade to a paused sandbox's URL resumes it and is
served (one slower answer, not an error); concurrent requests share one resume."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator

import httpx
import pytest
import websockets.sync.client as ws_client

from .._server import ServerProcess
from .conftest import Site, make_site


@pytest.fixture
def waking_site(server: ServerProcess) -> Iterator[Site]:
    made = make_site(server, auto_resume=True)
    yield made
    made.sb.stop()
    made.sb.close()


def test_requests_wake_a_paused_sandbox(waking_site: Site, site: Site) -> None:
    assert waking_site.sb.info.auto_resume
    assert httpx.get(waking_site.url(3000, "/echo")).status_code == 200
    waking_site.sb.pause()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: httpx.get(waking_site.url(3000, f"/echo?i={i}"),
                                                    timeout=30), range(8)))
    assert [a.status_code for a in answers] == [200] * 8
    assert waking_site.sb.refresh().status == "active"
    # Without autoResume a paused sandbox answers 503 and stays paused.
    site.sb.pause()
    try:
        paused = httpx.get(site.url(3000, "/echo"))
        assert paused.status_code == 503 and paused.json()["error"] == "sandbox_paused"
        assert site.sb.refresh().status == "paused"
    finally:
        site.sb.resume()


def test_a_websocket_upgrade_wakes_it(waking_site: Site) -> None:
    waking_site.sb.pause()
    url = waking_site.url(3000, "/ws").replace("http://", "ws://")
    with ws_client.connect(url, open_timeout=30) as ws:
        ws.send("awake?")
        assert ws.recv(timeout=10) == "awake?"
    assert waking_site.sb.refresh().status == "active"


def test_auth_is_checked_before_a_wake(waking_site: Site) -> None:
    waking_site.sb.pause()
    refused = httpx.get(waking_site.url(3001, "/echo"))  # the private port, no token
    assert refused.status_code == 401
    assert waking_site.sb.refresh().status == "paused"  # a stranger cannot wake it
