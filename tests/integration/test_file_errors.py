"""What the kernel refuses in the file API is the client's 4xx with a message, never a 500
"file operation failed" logged as a server error: read-only bind mounts, programs that
are running, a directory where a file is wanted, a full filesystem."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from .._server import ServerProcess


@pytest.fixture(scope="module")
def runtime(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as api:
        made = api.post("/api/sandbox", json={"imageName": "python"}).json()
        with httpx.Client(base_url=made["runtime"]["baseUrl"], timeout=60,
                          headers={"Authorization": f"Bearer {made['token']}"}) as client:
            yield client
        api.put(f"/api/sandbox/{made['id']}/stop")


def _error(r: httpx.Response, statuses: tuple[int, ...], *mentions: str) -> None:
    assert r.status_code in statuses, r.text
    body = r.json()
    assert set(body) == {"error", "message"}
    for text in mentions:
        assert text in body["message"], body["message"]


def _logged_errors(server: ServerProcess, since: int) -> list[str]:
    with open(server.log_path, "rb") as log:
        log.seek(since)
        return [line for line in log.read().decode(errors="replace").splitlines()
                if " ERROR " in line or "Traceback" in line]


@pytest.mark.parametrize("path", ["/dev/init", "/dev/sandport-agent"])
def test_writing_read_only_bound_files_is_refused(server: ServerProcess,
                                                  runtime: httpx.Client, path: str) -> None:
    since = server.log_path.stat().st_size
    _error(runtime.post("/sandbox/files/write", json={"path": path, "data": "x"}),
           (403, 409), path)
    _error(runtime.post("/sandbox/files/write",
                        json={"files": [{"path": path, "data": "x", "append": True}]}),
           (403, 409), path)
    _error(runtime.put("/sandbox/files/upload", params={"path": path}, content=b"x"),
           (403, 409), path)
    _error(runtime.post("/sandbox/files/copy",
                        json={"from": "/etc/hostname", "to": path, "overwrite": True}),
           (403, 409), path)
    _error(runtime.post("/sandbox/files/delete", json={"path": path}), (403, 409), path)
    _error(runtime.post("/sandbox/files/chmod", json={"path": path, "mode": "600"}),
           (403, 409), path)
    assert _logged_errors(server, since) == []
    # and the file is as it was: the sandbox still runs commands (its agent is intact)
    ran = runtime.post("/sandbox/exec", json={"command": f"test -x {path} && echo ok"})
    assert ran.json()["result"]["stdout"] == "ok\n"


def test_copying_from_another_filesystem_works(runtime: httpx.Client) -> None:
    """/dev/init is a bind mount of a host file: a copy of it crosses filesystems."""
    r = runtime.post("/sandbox/files/copy", json={"from": "/dev/init", "to": "/tmp/init"})
    assert r.status_code == 200, r.text
    ran = runtime.post("/sandbox/exec", json={"command": "cmp /dev/init /tmp/init && echo same"})
    assert ran.json()["result"]["stdout"] == "same\n"


def test_wrong_kinds_of_file_are_client_errors(server: ServerProcess,
                                               runtime: httpx.Client) -> None:
    since = server.log_path.stat().st_size
    runtime.post("/sandbox/files/write", json={"path": "/tmp/plain", "data": "x"})
    _error(runtime.post("/sandbox/files/write", json={"path": "/tmp", "data": "x"}),
           (400, 409), "/tmp", "directory")
    _error(runtime.post("/sandbox/files/write", json={"path": "/tmp/plain/x", "data": "x"}),
           (400, 409), "not a directory")
    _error(runtime.post("/sandbox/files/read", json={"path": "/tmp"}), (400,), "directory")
    _error(runtime.post("/sandbox/files/mkdir", json={"path": "/sys/x"}), (403,), "read-only")
    assert _logged_errors(server, since) == []


def test_a_full_filesystem_is_413(server: ServerProcess, runtime: httpx.Client) -> None:
    """/dev/shm is a 64 MiB tmpfs: a bigger upload fills it."""
    since = server.log_path.stat().st_size
    size = runtime.post("/sandbox/exec", json={"command": "df -k --output=size /dev/shm | tail -1"})
    limit = int(size.json()["result"]["stdout"]) * 1024
    try:
        _error(runtime.put("/sandbox/files/upload", params={"path": "/dev/shm/fill"},
                           content=b"\0" * (limit + (1 << 20))), (413,), "no space")
    finally:
        runtime.post("/sandbox/files/delete", json={"path": "/dev/shm/fill"})
    assert _logged_errors(server, since) == []
