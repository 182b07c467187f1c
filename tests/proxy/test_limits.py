"""What one client must not be able to do to the edge (issue #13 items 5–7): hoard
connections or descriptors so that others, the control API included, are refused; hold
sockets with a request it half-closed; trickle a body; make the proxy buffer a response
it does not read."""

from __future__ import annotations

import resource
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from .._server import ServerProcess
from .conftest import Site, make_site

WINDOW_S = 2  # the min-body-rate window of this module's server
FD_LIMIT = 1024


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    srv = ServerProcess(tmp_path_factory.mktemp("limits") / "data",
                        env={"SANDPORT_MIN_BODY_RATE_WINDOW_S": str(WINDOW_S)}).start()
    made = make_site(srv)
    yield made
    made.sb.stop()
    made.sb.close()
    srv.stop_all_sandboxes()
    srv.stop()


def _pid(site: Site) -> int:
    assert site.server.proc is not None
    return site.server.proc.pid




def _connect(site: Site, source: str = "127.0.0.1") -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(10)
    s.connect(("127.0.0.1", site.server.port))
    return s


def _host(site: Site, port: int = 3000) -> str:
    return urlsplit(site.url(port)).netloc


def _health_from(site: Site, source: str) -> tuple[bytes, float]:
    """GET /api/health from ``source``: (status line, seconds), within 1 s or b""."""
    started = time.monotonic()
    try:
        with _connect(site, source) as s:
            s.settimeout(1.0)
            s.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        data = b""
    return data.split(b"\r\n", 1)[0], time.monotonic() - started


@pytest.fixture
def few_fds(edge: Site) -> Iterator[int]:
    """The server's soft open-files limit lowered to FD_LIMIT while the test runs (the
    proxy re-reads it twice a second); the test process may hold more."""
    pid = _pid(edge)
    before = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    mine = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (mine[1], mine[1]))
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (FD_LIMIT, before[1]))
    time.sleep(1.0)  # two sweeps
    yield pid
    resource.prlimit(pid, resource.RLIMIT_NOFILE, before)
    time.sleep(1.0)


def _hold(site: Site, source: str, n: int) -> list[socket.socket]:
    held = []
    for _ in range(n):
        try:
            held.append(_connect(site, source))
        except OSError:
            break
    return held


def test_one_address_at_its_cap_leaves_the_control_api_answering(edge: Site,
                                                                 few_fds: int) -> None:
    held = _hold(edge, "127.0.0.1", FD_LIMIT + 100)  # more than the server could hold
    try:
        status, took = _health_from(edge, "127.0.0.2")
        assert status == b"HTTP/1.1 200 OK" and took < 1.0, (status, took)
        refused = held[-1]  # past the cap: answered 503, not left hanging
        refused.settimeout(5)
        assert refused.recv(65536).startswith(b"HTTP/1.1 503"), "no 503 past the cap"
    finally:
        for s in held:
            s.close()
    edge.server.assert_clean_log()


def test_idle_connections_are_shed_when_descriptors_run_low(edge: Site,
                                                            few_fds: int) -> None:
    # two addresses, each under its cap, together past the descriptors the server has
    held = _hold(edge, "127.0.0.10", 500) + _hold(edge, "127.0.0.11", 500)
    try:
        status, took = _health_from(edge, "127.0.0.3")
        assert status == b"HTTP/1.1 200 OK" and took < 1.0, (status, took)
        shed = 0
        for s in held[:50]:  # the oldest go first
            s.settimeout(0.5)
            try:
                shed += s.recv(1) == b""
            except ConnectionResetError:
                shed += 1
            except TimeoutError:
                pass
        assert shed > 0
    finally:
        for s in held:
            s.close()
    edge.server.assert_clean_log()


def test_fin_mid_body_ends_the_exchange_at_once(edge: Site) -> None:
    before = edge.server.open_sockets()
    clients = []
    for _ in range(20):
        s = _connect(edge)
        s.sendall(f"POST /sink HTTP/1.1\r\nHost: {_host(edge)}\r\nContent-Length: 1000\r\n"
                  "\r\n0123456789".encode())
        clients.append(s)
    time.sleep(0.3)  # the proxy has connected upstream for each
    for s in clients:
        s.shutdown(socket.SHUT_WR)  # FIN with 990 bytes of the body still due
    deadline = time.monotonic() + 3  # far less than the 75 s idle timeout
    while edge.server.open_sockets() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    held = edge.server.open_sockets() - before
    for s in clients:
        s.close()
    assert held <= 0, f"the proxy still holds {held} sockets for half-closed requests"
    edge.server.assert_clean_log()


def test_a_client_gone_mid_body_is_no_server_error(edge: Site) -> None:
    """With valid credentials, so the API reads the body: the client's FIN mid-body ends
    the exchange, and the server logs no error (a 500 with a traceback before)."""
    netloc = urlsplit(edge.server.base_url).netloc
    runtime = urlsplit(edge.sb.info.runtime.base_url).netloc
    for host, path, credential in (
            (netloc, "/api/sandbox", f"x-api-key: {edge.server.api_key}"),
            (runtime, "/sandbox/exec", f"Authorization: Bearer {edge.token}")):
        for framing in ("Content-Length: 1000\r\n\r\n{\"comm",
                        "Transfer-Encoding: chunked\r\n\r\n10\r\n{\"comm"):
            with _connect(edge) as s:
                s.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{credential}\r\n"
                          f"Content-Type: application/json\r\n{framing}".encode())
                time.sleep(0.2)  # the API is reading the body
                s.shutdown(socket.SHUT_WR)
                s.recv(65536)
    time.sleep(0.5)
    log = edge.server.log_path.read_text(errors="replace")
    assert " ERROR " not in log and "Exception in ASGI application" not in log, log[-3000:]
    edge.server.assert_clean_log()


def test_fin_after_a_complete_body_still_gets_the_response(edge: Site) -> None:
    with _connect(edge) as s:
        s.sendall(f"POST /sink HTTP/1.1\r\nHost: {_host(edge)}\r\nContent-Length: 10\r\n"
                  "\r\n0123456789".encode())
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and b'"received": 10' in data, data[:300]


def test_a_trickled_body_is_cut_with_408(edge: Site) -> None:
    with _connect(edge) as s:
        s.sendall(f"POST /sink HTTP/1.1\r\nHost: {_host(edge)}\r\nContent-Length: 100000\r\n"
                  "\r\n".encode())
        s.settimeout(0.1)
        started, data = time.monotonic(), b""
        while time.monotonic() - started < 4 * WINDOW_S and not data:
            try:
                s.send(b"x" * 5)  # 50 B/s: bytes keep moving, far under 256 B/s
            except OSError:
                break
            try:
                data = s.recv(65536)
            except TimeoutError:
                pass
        assert data.startswith(b"HTTP/1.1 408"), data[:200]
        assert WINDOW_S - 0.5 < time.monotonic() - started < WINDOW_S + 2
    edge.server.assert_clean_log()


def test_a_body_at_the_minimum_rate_passes(edge: Site) -> None:
    size = 1500 * (WINDOW_S + 1)
    with _connect(edge) as s:
        s.sendall(f"POST /sink HTTP/1.1\r\nHost: {_host(edge)}\r\nContent-Length: {size}\r\n"
                  "\r\n".encode())
        for _ in range(size // 150):
            s.sendall(b"y" * 150)  # 1500 B/s
            time.sleep(0.1)
        data = s.recv(65536)
    assert data.startswith(b"HTTP/1.1 200") and f'"received": {size}'.encode() in data


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _settled_rss(pid: int, quiet_s: float = 1.5) -> int:
    value, last_change, started = _rss_kib(pid), time.monotonic(), time.monotonic()
    while time.monotonic() - last_change < quiet_s and time.monotonic() - started < 20:
        time.sleep(0.1)
        now = _rss_kib(pid)
        if now > value:
            value, last_change = now, time.monotonic()
    return value


def test_clients_that_stop_reading_cost_little_memory(edge: Site) -> None:
    """Smoke version of bench/proxy_slow_readers.py (50 clients, 1 GiB each)."""
    pid, clients = _pid(edge), 5
    before = _settled_rss(pid)
    held = []
    for _ in range(clients):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", edge.server.port))
        s.sendall(f"GET /big?n={256 << 20} HTTP/1.1\r\nHost: {_host(edge)}\r\n\r\n".encode())
        held.append(s)
    grown = _settled_rss(pid, quiet_s=2.0) - before
    for s in held:
        s.close()
    assert grown < clients * 256 + 1024, f"{clients} stalled clients took {grown} KiB"



def test_an_early_answer_reaches_a_client_still_sending_its_body(edge: Site) -> None:
    """The control API refuses a body too large from its Content-Length, at once: the edge
    reads and drops the rest the client sends (a lingering close), so that its answer is
    not lost to a reset of the connection."""
    body = b"x" * (4 << 20)
    head = (b"POST /api/sandbox HTTP/1.1\r\nHost: x\r\nx-api-key: " + edge.server.api_key.encode()
            + b"\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body))
    for _ in range(5):
        with _connect(edge) as s:
            s.sendall(head)
            s.sendall(body)  # all of it, as a client that reads only after sending does
            answer = b""
            while b"\r\n\r\n" not in answer and (chunk := s.recv(65536)):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
