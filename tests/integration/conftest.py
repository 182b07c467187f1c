"""Fixtures of the integration suite (the session server's are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .._server import ServerProcess
from ._world import world  # noqa: F401 - the egress tests' world, a fixture


@pytest.fixture(scope="module")
def detail(server: ServerProcess) -> Iterator[dict]:
    """One sandbox of the session server for a module's tests, as its detail (the runtime
    URL and token are in it); stopped after the module."""
    with server.client() as api:
        made = api.post("/api/sandbox", json={"imageName": "python"}).json()
        yield made
        api.put(f"/api/sandbox/{made['id']}/stop")
