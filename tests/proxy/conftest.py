"""Sandboxes with a real HTTP/WebSocket server inside (upstream.py), reached through the
edge proxy of a real ``sandport serve``."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from sandport import ExecResult, Sandbox

from .._server import ServerProcess

UPSTREAM = (Path(__file__).parent / "upstream.py").read_bytes()


def start_upstream(sb: Sandbox, *ports: int,
                   run: Callable[[str], ExecResult] | None = None) -> None:
    """Run upstream.py on each port inside the sandbox and wait until it listens."""
    run = run or sb.exec
    encoded = base64.b64encode(UPSTREAM).decode()
    ran = run(f"echo {encoded} | base64 -d > /srv/upstream.py")
    assert ran.exit_code == 0, ran.stderr
    for port in ports:
        run(f"setsid python3 /srv/upstream.py {port} >/tmp/up{port}.log 2>&1 &")
    probe = " ".join(str(p) for p in ports)
    check = run(
        "python3 - <<'EOF'\nimport socket, time\nfor p in [" + probe.replace(" ", ",") + "]:\n"
        "    for _ in range(100):\n"
        "        try:\n"
        "            socket.create_connection(('127.0.0.1', p), 0.2).close(); break\n"
        "        except OSError:\n"
        "            time.sleep(0.05)\n"
        "    else:\n"
        "        raise SystemExit(f'port {p} never listened')\nEOF")
    assert check.exit_code == 0, check.stderr


@dataclass
class Site:
    """A sandbox with upstream.py on 3000 (open) and 3001 (auth: true)."""

    sb: Sandbox
    server: ServerProcess

    @property
    def id(self) -> str:
        return self.sb.id

    @property
    def token(self) -> str:
        assert self.sb.info.token
        return self.sb.info.token

    def url(self, port: int, path: str = "/") -> str:
        return self.sb.get_exposed_url(port).rstrip("/") + path

    @property
    def runtime(self) -> str:
        return self.sb.info.runtime.base_url


def make_site(server: ServerProcess, **create: object) -> Site:
    sb = Sandbox.create(api_key=server.api_key, base_url=server.base_url, timeout_minutes=30,
                        **create)  # type: ignore[arg-type]
    start_upstream(sb, 3000, 3001)
    sb.expose(3000, auth=False)
    sb.expose(3001, auth=True)
    return Site(sb, server)


def _held_site(server: ServerProcess) -> Iterator[Site]:
    made = make_site(server)
    yield made
    made.sb.stop()
    made.sb.close()


@pytest.fixture(scope="session")
def site(server: ServerProcess) -> Iterator[Site]:
    yield from _held_site(server)


@pytest.fixture(scope="session")
def other_site(server: ServerProcess) -> Iterator[Site]:  # for cross-sandbox attempts
    yield from _held_site(server)


def wait_for(url: str, status: int = 200, timeout_s: float = 10.0, **kwargs: object) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        r = httpx.get(url, **kwargs)  # type: ignore[arg-type]
        if r.status_code == status or time.monotonic() > deadline:
            assert r.status_code == status, r.text
            return
        time.sleep(0.1)
