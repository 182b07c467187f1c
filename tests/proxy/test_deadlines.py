"""The proxy's deadlines, against a server started with short ones: what is cut (a stalled
body, an upstream that does not answer, a client that stops reading, a silent tunnel) and
what is not (a request served while the next head is pipelined, streams that keep sending).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
import websockets.sync.client as ws_client
from websockets.exceptions import ConnectionClosed

from .._server import ServerProcess
from .conftest import Site, make_site

HEADER_S, IDLE_S = 1, 3


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    srv = ServerProcess(tmp_path_factory.mktemp("short") / "data",
                        env={"SANDPORT_HEADER_TIMEOUT_S": str(HEADER_S),
                             "SANDPORT_IDLE_TIMEOUT_S": str(IDLE_S)}).start()
    made = make_site(srv)
    yield made
    made.sb.stop()
    made.sb.close()
    srv.stop_all_sandboxes()
    srv.stop()


def _connect(site: Site) -> socket.socket:
    return socket.create_connection(("127.0.0.1", site.server.port), timeout=20)


def _host(site: Site, port: int = 3000) -> str:
    return urlsplit(site.url(port)).netloc


def _response(s: socket.socket, data: bytes = b"") -> tuple[bytes, bytes]:
    """One response with a Content-Length, and the bytes read past it."""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, data
        body += chunk
    return head + b"\r\n\r\n" + body[:length], body[length:]


def _until_closed(s: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := s.recv(1 << 20):
            data += chunk
    except ConnectionResetError:
        pass
    return data



def test_pipelined_head_does_not_time_out_the_request_before_it(short: Site) -> None:
    host = _host(short)
    slow = f"GET /slow?s={HEADER_S + 1.5} HTTP/1.1\r\nHost: {host}\r\n\r\n"
    unfinished = f"GET /echo?n=2 HTTP/1.1\r\nHost: {host}\r\n"
    with _connect(short) as s:
        s.sendall((slow + unfinished).encode())
        first, rest = _response(s)
        assert first.startswith(b"HTTP/1.1 200") and b'"slow"' in first, first[:200]
        s.sendall(b"\r\n")  # the second head, finished late but within its own time
        second, _ = _response(s, rest)
        assert second.startswith(b"HTTP/1.1 200") and b"/echo?n=2" in second
    with _connect(short) as s:  # a head left unfinished after an answer still times out
        s.sendall((slow + unfinished).encode())
        first, rest = _response(s)
        assert first.startswith(b"HTTP/1.1 200")
        answered = time.monotonic()
        late = rest + _until_closed(s)
        assert late.startswith(b"HTTP/1.1 408"), late[:200]
        assert time.monotonic() - answered < HEADER_S + 1.5


def test_request_body_that_stalls_is_cut(short: Site) -> None:
    with _connect(short) as s:
        s.sendall(f"POST /echo HTTP/1.1\r\nHost: {_host(short)}\r\nContent-Length: 100\r\n"
                  "\r\n0123456789".encode())  # 10 of 100 bytes, then nothing
        started = time.monotonic()
        assert _until_closed(s) == b""
        assert IDLE_S - 0.5 < time.monotonic() - started < IDLE_S + 2


def test_upstream_that_does_not_answer_gets_a_504(short: Site) -> None:
    started = time.monotonic()
    r = httpx.get(short.url(3000, f"/slow?s={IDLE_S + 6}"), timeout=30)
    assert r.status_code == 504 and r.json()["error"] == "gateway_timeout", r.text
    assert "3000" in r.json()["message"]
    assert IDLE_S - 0.5 < time.monotonic() - started < IDLE_S + 2
    short.server.assert_clean_log()


def test_api_may_work_in_silence_for_longer(short: Site) -> None:
    """An exec answers when its command ends; the API is not cut while it works."""
    ran = short.sb.exec(f"sleep {IDLE_S + 2}; echo done")
    assert ran.exit_code == 0 and ran.stdout == "done\n"


def test_client_that_stops_reading_is_cut(short: Site) -> None:
    size = 1 << 30
    with _connect(short) as s:
        s.sendall(f"GET /big?n={size} HTTP/1.1\r\nHost: {_host(short)}\r\n\r\n".encode())
        time.sleep(IDLE_S + 2.5)  # reading nothing: the proxy stops reading upstream
        received = len(_until_closed(s))
    assert received < size // 2
    short.server.assert_clean_log()


def test_streams_that_keep_sending_are_not_cut(short: Site) -> None:
    events = 2 * (IDLE_S + 2)  # 0.5 s apart: longer than the idle timeout in all
    with httpx.stream("GET", short.url(3000, f"/sse?n={events}&gap=0.5"), timeout=30) as r:
        got = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert len(got) == events
    url = short.url(3000, "/ws").replace("http://", "ws://")
    with ws_client.connect(url, open_timeout=10, ping_interval=None) as ws:
        until = time.monotonic() + IDLE_S + 2
        while time.monotonic() < until:
            ws.send("tick")
            assert ws.recv(timeout=5) == "tick"
            time.sleep(0.5)


def test_silent_tunnel_is_closed(short: Site) -> None:
    url = short.url(3000, "/ws").replace("http://", "ws://")
    with ws_client.connect(url, open_timeout=10, ping_interval=None) as ws:
        ws.send("once")
        assert ws.recv(timeout=5) == "once"
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=IDLE_S + 6)
        assert IDLE_S - 0.5 < time.monotonic() - started < IDLE_S + 2


def test_port_closed_mid_request_cuts_cleanly(short: Site) -> None:
    """The cut answers nothing on the closed client connection (a write there raises
    under uvloop) and leaves no error in the server's log."""
    with _connect(short) as s:
        s.sendall(f"GET /slow?s=2 HTTP/1.1\r\nHost: {_host(short, 3001)}\r\n"
                  f"Authorization: Bearer {short.token}\r\n\r\n".encode())
        time.sleep(0.5)
        short.sb.unexpose(3001)
        assert _until_closed(s) == b""
    short.sb.expose(3001, auth=True)
    time.sleep(0.5)
    short.server.assert_clean_log()
