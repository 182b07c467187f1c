"""Fixtures shared by the integration and e2e suites; the unit suite needs none of them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandport import Sandbox

from ._server import ServerProcess
from .dns_world import dns_world
from .registries import Registries


@pytest.fixture(scope="session", autouse=True)
def _dns_world() -> None:
    """The tests' upstream resolver, up before any test looks at the host (as root only:
    the unit suite runs without)."""
    if os.geteuid() == 0:
        dns_world()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(f"/{suite}/" in str(item.path) for suite in ("integration", "e2e", "proxy")):
            item.add_marker(pytest.mark.root)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    if os.geteuid() != 0:
        pytest.fail("the integration suite runs real containers and needs root")
    srv = ServerProcess(tmp_path_factory.mktemp("server") / "data").start()
    yield srv
    srv.stop_all_sandboxes()
    srv.stop()


@pytest.fixture(scope="session")
def registries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registries]:
    """Real registries on loopback (tests/registries.py): .plain, .basic and .token each start
    when a test first uses them, share one test CA (.ca_file), and stop with the session."""
    made = Registries(tmp_path_factory.mktemp("registries"))
    yield made
    made.stop()


@pytest.fixture
def make_sandbox(server: ServerProcess) -> Iterator[Callable[..., Sandbox]]:
    """Factory: create sandboxes on the session server; all are stopped at teardown."""
    with server.sandboxes() as make:
        yield make


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: extra servers with their own data directory, stopped at teardown."""
    started: list[ServerProcess] = []

    def start(data_dir: Path | None = None, port: int | None = None,
              env: dict[str, str] | None = None) -> ServerProcess:
        srv = ServerProcess(data_dir or tmp_path / f"data{len(started)}", port,
                            env=env).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop_all_sandboxes()
        srv.stop()
    # A test that crashed a server and failed before starting it again left sandboxes
    # running with no server: one more start on that data directory stops them.
    last = {srv.data_dir: srv for srv in started}
    for srv in last.values():
        if srv.proc is not None and srv.proc.returncode not in (0, -15):
            again = ServerProcess(srv.data_dir, srv.port).start()
            again.stop_all_sandboxes()
            again.stop()
