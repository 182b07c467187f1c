"""What passes through the proxy unchanged: methods, paths, bodies, streams, WebSockets."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time
from urllib.parse import urlsplit

import httpx
import pytest
import websockets.sync.client as ws_client

from .._server import ServerProcess
from .conftest import Site
from .upstream import PATTERN

GIB = 1 << 30


def _echo(site: Site, method: str = "GET", path: str = "/echo", **kw: object) -> dict:
    r = httpx.request(method, site.url(3000, path), timeout=30, **kw)  # type: ignore[arg-type]
    assert r.status_code == 200, r.text
    return dict(r.json())


def _headers(echo: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in echo["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


def test_curl_reaches_the_server_in_the_sandbox(site: Site) -> None:
    out = subprocess.run(["curl", "-sS", "--max-time", "10", site.url(3000, "/echo?via=curl")],
                         capture_output=True, text=True, check=True).stdout
    assert '"method": "GET"' in out and '"path": "/echo?via=curl"' in out


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PURGE",
                                    "MKCOL"])
def test_every_method_passes(site: Site, method: str) -> None:
    echo = _echo(site, method, content=b"x" * 10 if method not in ("GET", "OPTIONS") else None)
    assert echo["method"] == method


def test_head_gets_headers_and_no_body(site: Site) -> None:
    with httpx.Client(timeout=10) as client:
        r = client.head(site.url(3000, "/big?n=5000"))
        assert r.status_code == 200 and r.headers["content-length"] == "5000"
        assert r.content == b""
        again = client.get(site.url(3000, "/echo"))  # the connection is still in step
        assert again.json()["method"] == "GET"


def test_path_and_query_verbatim(site: Site) -> None:
    raw = "/echo/a%2Fb/%7Euser/..%2f?q=%20x&q=y&empty=&odd=%zz"
    with socket.create_connection(("127.0.0.1", site.server.port), timeout=10) as s:
        host = urlsplit(site.url(3000)).netloc
        s.sendall(f"GET {raw} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert b"200 OK" in data.split(b"\r\n", 1)[0]
    assert f'"path": "{raw}"'.encode() in data


@pytest.mark.parametrize("status", [201, 204, 302, 404, 418, 500, 503])
def test_status_codes_verbatim(site: Site, status: int) -> None:
    r = httpx.get(site.url(3000, f"/status/{status}"), timeout=10)
    assert r.status_code == status


def test_forwarded_headers_replaced_not_trusted(site: Site) -> None:
    echo = _echo(site, headers={"X-Forwarded-For": "6.6.6.6", "X-Real-IP": "6.6.6.6",
                                "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "gopher",
                                "X-Custom": "kept", "Forwarded": "for=6.6.6.6",
                                "X_Forwarded_For": "6.6.6.6", "X-Sandport-Runtime": site.id,
                                "Connection": "keep-alive, X-Hop", "X-Hop": "hop-by-hop"})
    h = _headers(echo)
    for gone in ("forwarded", "x_forwarded_for", "x-sandport-runtime", "x-hop"):
        assert gone not in h, gone
    assert h["x-forwarded-for"] == ["127.0.0.1"] and h["x-real-ip"] == ["127.0.0.1"]
    assert h["x-forwarded-host"] == [urlsplit(site.url(3000)).netloc]
    assert h["x-forwarded-proto"] == ["http"]
    assert h["x-custom"] == ["kept"]
    assert h["host"] == [urlsplit(site.url(3000)).netloc]  # no masking by default


@pytest.mark.parametrize("via", ["host", "runtime path"])
def test_proxy_meaningful_headers_and_the_api_key_never_reach_the_sandbox(
        site: Site, via: str) -> None:
    url = site.url(3000, "/echo") if via == "host" else f"{site.runtime}/p/3000/echo"
    sent = {"Connection": "x-forwarded-for, x-real-ip", "X-Forwarded-Port": "1",
            "X-Forwarded-Prefix": "/evil", "X-Original-URL": "/evil", "X-Rewrite-URL": "/evil",
            "X-Forwarded-Server": "evil", "X-Original-Host": "evil", "True-Client-IP": "6.6.6.6",
            "x-api-key": site.server.api_key, "X-Custom": "kept"}
    r = httpx.get(url, headers=sent, timeout=30)
    assert r.status_code == 200, r.text
    h = _headers(r.json())
    for gone in ("x-forwarded-port", "x-forwarded-prefix", "x-original-url", "x-rewrite-url",
                 "x-forwarded-server", "x-original-host", "true-client-ip", "x-api-key"):
        assert gone not in h, gone
    assert site.server.api_key not in r.text
    assert "forwarded" not in ",".join(h.get("connection", [])).lower()
    assert "real-ip" not in ",".join(h.get("connection", [])).lower()
    assert h["x-forwarded-for"] == ["127.0.0.1"] and h["x-real-ip"] == ["127.0.0.1"]
    assert h["x-custom"] == ["kept"]


def test_cookies_both_ways(site: Site) -> None:
    r = httpx.get(site.url(3000, "/cookie"), headers={"Cookie": "app=1; other=two"}, timeout=10)
    assert r.json()["cookie"] == "app=1; other=two"
    assert r.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/; HttpOnly"]


def test_chunked_request_and_response_bodies(site: Site) -> None:
    def gen():  # no length: httpx sends it chunked
        for _ in range(40):
            yield PATTERN
    r = httpx.post(site.url(3000, "/sink"), content=gen(), timeout=30)
    assert r.json() == {"received": 40 * len(PATTERN),
                        "sha256": hashlib.sha256(PATTERN * 40).hexdigest()}
    with httpx.stream("GET", site.url(3000, "/chunked?n=3000000"), timeout=30) as r:
        assert r.headers["transfer-encoding"] == "chunked"
        assert sum(len(c) for c in r.iter_raw()) == 3_000_000


def test_sse_events_arrive_as_written(site: Site) -> None:
    lags = []
    with httpx.stream("GET", site.url(3000, "/sse?n=6&gap=0.3"), timeout=30) as r:
        assert r.headers["content-type"] == "text/event-stream"
        for line in r.iter_lines():
            if line.startswith("data: "):
                lags.append(time.time() - float(line[6:]))
    assert len(lags) == 6
    assert max(lags) < 0.05, lags  # unbuffered: each event is here within 50 ms


def test_websocket_echo_text_binary_ping_close(site: Site) -> None:
    url = site.url(3000, "/ws").replace("http://", "ws://")
    with ws_client.connect(url, open_timeout=10) as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        blob = bytes(range(256)) * 300
        ws.send(blob)
        assert ws.recv(timeout=5) == blob
        ws.ping(b"p").wait(timeout=5)
        ws.close()
    assert ws.close_code == 1000


def test_keepalive_and_pipelining(site: Site) -> None:
    host = urlsplit(site.url(3000)).netloc
    two = "".join(f"GET /echo?n={i} HTTP/1.1\r\nHost: {host}\r\n\r\n" for i in (1, 2))
    with socket.create_connection(("127.0.0.1", site.server.port), timeout=10) as s:
        s.sendall(two.encode())  # both at once: answers come back in order
        data = b""
        while data.count(b'"method"') < 2:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
    assert data.index(b"/echo?n=1") < data.index(b"/echo?n=2")


def _rss_peak_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_one_gib_up_and_down_with_bounded_proxy_memory(site: Site) -> None:
    assert site.server.proc is not None
    pid = site.server.proc.pid
    before = _rss_peak_kib(pid)
    digest, size = hashlib.sha256(), 0
    with httpx.stream("GET", site.url(3000, f"/big?n={GIB}"), timeout=120) as r:
        assert r.headers["content-length"] == str(GIB)
        for chunk in r.iter_raw(1 << 20):
            size += len(chunk)
    assert size == GIB

    def upload():
        block = PATTERN * 16  # 1 MiB
        for _ in range(1024):
            digest.update(block)
            yield block
    r = httpx.post(site.url(3000, "/sink"), content=upload(), timeout=120,
                   headers={"content-length": str(GIB)})
    assert r.json() == {"received": GIB, "sha256": digest.hexdigest()}
    grown_mib = (_rss_peak_kib(pid) - before) / 1024
    assert grown_mib < 64, f"the server's peak memory grew {grown_mib:.0f} MiB"


def test_upstream_closing_mid_response_closes_the_client(site: Site) -> None:
    started = time.monotonic()
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(site.url(3000, "/close-mid"), timeout=10)
    assert time.monotonic() - started < 5


def test_path_routes_on_the_runtime_host(site: Site) -> None:
    for prefix in ("/p/3000", "/sb/p/3000"):
        r = httpx.get(f"{site.runtime}{prefix}/echo/x?y=1", timeout=10)
        assert r.status_code == 200 and r.json()["path"] == "/echo/x?y=1"
    r = httpx.get(f"{site.runtime}/p/3000", timeout=10)
    assert r.json()["path"] == "/"
    assert httpx.get(f"{site.runtime}/p/3001/echo", timeout=10).status_code == 401
    ok = httpx.get(f"{site.runtime}/p/3001/echo", timeout=10,
                   headers={"Authorization": f"Bearer {site.token}"})
    assert ok.status_code == 200


def test_nothing_listening_is_502_with_an_explanation(site: Site) -> None:
    site.sb.expose(3999, auth=False)
    r = httpx.get(site.url(3999), timeout=10)
    assert r.status_code == 502
    assert r.json()["error"] == "bad_gateway" and "3999" in r.json()["message"]
    page = httpx.get(site.url(3999), headers={"Accept": "text/html"}, timeout=10)
    assert page.status_code == 502 and page.headers["content-type"].startswith("text/html")
    site.sb.unexpose(3999)


def test_slow_request_heads_are_cut(fresh_server) -> None:  # type: ignore[no-untyped-def]
    srv: ServerProcess = fresh_server(env={"SANDPORT_HEADER_TIMEOUT_S": "1",
                                           "SANDPORT_IDLE_TIMEOUT_S": "2"})
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")  # and then nothing
        started = time.monotonic()
        data = s.recv(65536)
        assert b"408" in data.split(b"\r\n", 1)[0]
        assert s.recv(65536) == b""  # closed
        assert time.monotonic() - started < 3
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        started = time.monotonic()
        assert s.recv(65536) == b""  # an idle connection is closed too
        assert 1.5 < time.monotonic() - started < 5
    assert httpx.get(f"{srv.base_url}/api/health").status_code == 200


def test_client_that_half_closes_still_gets_its_answer(site: Site) -> None:
    host = urlsplit(site.url(3000)).netloc
    with socket.create_connection(("127.0.0.1", site.server.port), timeout=10) as s:
        s.sendall(f"GET /echo?half HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        s.shutdown(socket.SHUT_WR)  # as `nc -q` does
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and b"/echo?half" in data



def test_tunnel_closes_once_both_sides_have_half_closed(site: Site) -> None:
    assert site.server.proc is not None
    host = urlsplit(site.url(3000)).netloc
    before = site.server.open_sockets()
    held = []
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", site.server.port), timeout=10)
        held.append(s)
        s.sendall(f"GET /raw HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\n"
                  "Upgrade: echo\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        assert data.startswith(b"HTTP/1.1 101"), data
        echoed = data.partition(b"\r\n\r\n")[2]
        s.sendall(b"ping")
        while len(echoed) < 4:
            echoed += s.recv(65536)
        assert echoed == b"ping"
        s.shutdown(socket.SHUT_WR)  # the client is done; the upstream then is done too
        assert s.recv(65536) == b""
    deadline = time.monotonic() + 3  # far less than the 75 s idle timeout
    while site.server.open_sockets() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert site.server.open_sockets() <= before, "the proxy kept both-ways half-closed tunnels open"
    for s in held:
        s.close()


def _exchange(s: socket.socket, request: str) -> bytes:
    s.sendall(request.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        body += s.recv(65536)
    return head + b"\r\n\r\n" + body


@pytest.mark.parametrize("method, sent", [("GET", 2), ("OPTIONS", 2), ("DELETE", 1),
                                          ("POST", 1)])
def test_only_safe_requests_are_retried_on_a_reused_upstream(site: Site, method: str,
                                                              sent: int) -> None:
    host = urlsplit(site.url(3000)).netloc
    key = f"{method}-{os.urandom(4).hex()}"
    with socket.create_connection(("127.0.0.1", site.server.port), timeout=10) as s:
        first = _exchange(s, f"GET /echo HTTP/1.1\r\nHost: {host}\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 200")  # the upstream connection is now kept
        dropped = _exchange(s, f"{method} /drop?key={key} HTTP/1.1\r\nHost: {host}\r\n"
                               "Content-Length: 0\r\n\r\n")
        assert dropped.startswith(b"HTTP/1.1 502"), dropped[:200]
    hits = httpx.get(site.url(3000, f"/hits?key={key}"), timeout=10).json()["hits"]
    assert hits == sent


@pytest.mark.parametrize("codings", [["chunked", "identity"], ["xchunked"], ["chunked, gzip"]])
def test_response_framing_follows_the_last_transfer_coding(site: Site,
                                                           codings: list[str]) -> None:
    """Chunked only when the last coding of the last header says so, as the parser (and
    the client) read it: else the body runs to the close and passes unchanged."""
    query = "&".join(f"h={c.replace(' ', '%20')}" for c in codings)
    host = urlsplit(site.url(3000)).netloc
    with socket.create_connection(("127.0.0.1", site.server.port), timeout=10) as s:
        s.sendall(f"GET /te?{query} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body == b"5\r\nhello\r\n0\r\n\r\n"


def test_proxy_answers_keep_a_bodyless_request_s_connection(site: Site) -> None:
    with socket.create_connection(("127.0.0.1", site.server.port), timeout=10) as s:
        missing = _exchange(s, f"GET / HTTP/1.1\r\nHost: {urlsplit(site.url(3005)).netloc}"
                               "\r\n\r\n")
        assert missing.startswith(b"HTTP/1.1 404") and b"connection: close" not in missing
        locked = _exchange(s, f"GET / HTTP/1.1\r\nHost: {urlsplit(site.url(3001)).netloc}"
                              "\r\nContent-Length: 0\r\n\r\n")
        assert locked.startswith(b"HTTP/1.1 401") and b"connection: close" not in locked
        ok = _exchange(s, f"GET /echo HTTP/1.1\r\nHost: {urlsplit(site.url(3000)).netloc}"
                          "\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200")
    with socket.create_connection(("127.0.0.1", site.server.port), timeout=10) as s:
        # a body the proxy will not read to its end: answered, then closed
        refused = _exchange(s, f"POST / HTTP/1.1\r\nHost: {urlsplit(site.url(3001)).netloc}"
                               "\r\nContent-Length: 100000\r\n\r\n")
        assert refused.startswith(b"HTTP/1.1 401") and b"connection: close" in refused
