"""Pause and resume (cgroup freezer): state kept, URLs unchanged, clear answers meanwhile."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from sandport import Sandbox
from sandport.errors import NotSupported, SandboxNotRunning

from .._server import ServerProcess

COUNTER = ("setsid python3 -c \"import http.server as h\n"
           "n = 0\n"
           "class H(h.BaseHTTPRequestHandler):\n"
           "    def do_GET(self):\n"
           "        global n; n += 1; b = str(n).encode()\n"
           "        self.send_response(200); self.send_header('content-length', str(len(b)))\n"
           "        self.end_headers(); self.wfile.write(b)\n"
           "    def log_message(self, *a): pass\n"
           "h.HTTPServer(('0.0.0.0', 3000), H).serve_forever()\" >/dev/null 2>&1 &")


def _get(sb: Sandbox, server: ServerProcess) -> httpx.Response:
    url = sb.get_exposed_url(3000)
    host = url.split("//")[1].rstrip("/")
    return httpx.get(f"{server.base_url}/", headers={"host": host}, timeout=10)


def _serve_counter(sb: Sandbox, server: ServerProcess) -> None:
    sb.exec(COUNTER)
    sb.expose(3000)
    deadline = time.monotonic() + 10
    while _get(sb, server).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_pause_keeps_memory_and_url(make_sandbox: Callable[..., Sandbox],
                                    server: ServerProcess) -> None:
    sb = make_sandbox()
    _serve_counter(sb, server)
    before = int(_get(sb, server).text)
    url = sb.get_exposed_url(3000)

    assert sb.pause().status == "paused"
    assert sb.pause().status == "paused"  # idempotent
    answer = _get(sb, server)
    assert answer.status_code == 503 and answer.json()["error"] == "sandbox_paused"
    started = time.monotonic()
    with pytest.raises(SandboxNotRunning, match="paused"):
        sb.exec("true")
    assert time.monotonic() - started < 5, "exec on a paused sandbox must fail, not hang"
    assert Sandbox.list(status="paused", api_key=server.api_key,
                        base_url=server.base_url).sandboxes[0].id == sb.id

    assert sb.resume().status == "active"
    assert sb.resume().status == "active"  # idempotent
    assert sb.get_exposed_url(3000) == url
    assert int(_get(sb, server).text) == before + 1  # the same process, its memory kept
    assert sb.exec("echo back").stdout == "back\n"


def test_frozen_means_frozen_and_stop_works(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    ticker = sb.processes.start("while :; do date +%s%N >> /tmp/ticks; sleep 0.01; done")
    time.sleep(0.3)
    sb.pause()
    time.sleep(0.6)
    sb.resume()
    resumed, deadline = time.time_ns(), time.monotonic() + 10
    while True:  # until the ticker has ticked again since the resume
        lines = [int(t) for t in sb.files.read("/tmp/ticks").split()]
        if lines[-1] > resumed or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    gaps = [b - a for a, b in zip(lines, lines[1:], strict=False)]
    assert max(gaps) >= 0.5e9, "the ticker kept running while paused"
    assert ticker.refresh().status == "running"
    sb.pause()
    started = time.monotonic()
    assert sb.stop().status == "closed"  # a paused sandbox stops too, promptly
    assert time.monotonic() - started < 10


def test_paused_survives_a_server_restart(fresh_server: Callable[..., ServerProcess]) -> None:
    srv = fresh_server()
    sb = Sandbox.create(api_key=srv.api_key, base_url=srv.base_url)
    try:
        sb.exec("echo kept > /tmp/mark")
        sb.pause()
        srv.stop()
        srv.start()
        again = Sandbox.get(sb.id, api_key=srv.api_key, base_url=srv.base_url)
        assert again.status == "paused"
        again.resume()
        assert again.exec("cat /tmp/mark").stdout == "kept\n"
        again.close()
    finally:
        sb.stop()
        sb.close()


def test_suspend_to_disk_says_why_it_cannot(make_sandbox: Callable[..., Sandbox],
                                            server: ServerProcess) -> None:
    """This host's CRIU (Debian's 3.17) fails its own check on Linux >= 6.13: the API
    says so, and the sandbox goes on untouched; nothing pretends to have suspended it."""
    sb = make_sandbox()
    with pytest.raises(NotSupported, match="criu") as refused:
        sb.suspend()
    assert refused.value.status == 501
    assert sb.refresh().status == "active" and sb.exec("echo on").stdout == "on\n"
    with server.client() as api:
        answer = api.post("/api/sandbox/00000000000000000000/suspend")
        assert answer.status_code == 404
        answer = api.post(f"/api/sandbox/{sb.id}/suspend")
        assert answer.status_code == 501 and answer.json()["error"] == "not_supported"
