"""The official Hyperbrowser SDK (PyPI ``hyperbrowser``), unchanged, against a real
``sandport serve``: pointed at it with ``base_url`` and the API key, its sandboxes,
processes, files and terminals work."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from hyperbrowser import Hyperbrowser
from hyperbrowser.exceptions import HyperbrowserError

from .._server import ServerProcess
from ..web_world import FETCH, WILD, web_world


@pytest.fixture
def hb_sandbox(server: ServerProcess) -> Iterator[object]:
    client = Hyperbrowser(api_key=server.api_key, base_url=server.base_url)
    sandbox = client.sandboxes.create({"image_name": "python"})
    yield sandbox
    sandbox.stop()
    client.close()


def test_exec_and_processes(hb_sandbox: object) -> None:
    sb: object = hb_sandbox
    result = sb.exec("echo hi; echo err >&2; exit 4")  # type: ignore[attr-defined]
    assert (result.status, result.exit_code, result.stdout, result.stderr) == (
        "exited", 4, "hi\n", "err\n")
    big = sb.exec("head -c 20000000 /dev/zero | tr '\\0' y")  # type: ignore[attr-defined]
    assert big.stdout == "y" * 20_000_000

    cat = sb.processes.start("cat")  # type: ignore[attr-defined]
    cat.write_stdin("round trip\n")
    cat.write_stdin(eof=True)
    assert cat.wait().stdout == "round trip\n"

    sleeper = sb.processes.start("sleep 100")  # type: ignore[attr-defined]
    sleeper.signal("SIGTERM")
    ended = sleeper.wait(timeout_ms=5000)
    assert (ended.status, ended.exit_code) == ("killed", 143)
    assert sb.processes.start("sleep 100").kill().status == "killed"  # type: ignore[attr-defined]

    listed = sb.processes.list()  # type: ignore[attr-defined]
    assert {p.id for p in listed.data} >= {cat.id, sleeper.id}
    assert sb.processes.get(cat.id).status == "exited"  # type: ignore[attr-defined]
    with pytest.raises(HyperbrowserError) as missing:
        sb.processes.get("proc_0000000000000000")  # type: ignore[attr-defined]
    assert missing.value.status_code == 404


def test_stream_reconnect(hb_sandbox: object) -> None:
    sb: object = hb_sandbox
    proc = sb.processes.start(  # type: ignore[attr-defined]
        "for i in $(seq 1 30); do echo $i; sleep 0.02; done")
    proc.disconnect()  # stop collecting: the process goes on
    time.sleep(0.2)
    attached = sb.processes.get(proc.id)  # type: ignore[attr-defined]
    seen = []
    for event in attached.stream():
        if event.type == "exit":
            assert event.result.exit_code == 0
            break
        seen.append(event)
        if len(seen) == 5:
            break
    again = [e for e in attached.stream(from_seq=seen[-1].seq + 1) if e.type != "exit"]
    numbers = "".join(e.data for e in [*seen, *again]).split()
    assert numbers == [str(i) for i in range(1, 31)]


def test_files(hb_sandbox: object) -> None:
    files = hb_sandbox.files  # type: ignore[attr-defined]
    assert files.write_text("/tmp/x/y.txt", "hello").path == "/tmp/x/y.txt"
    assert files.read_text("/tmp/x/y.txt") == "hello"
    assert files.read_bytes("/tmp/x/y.txt", offset=1, length=3) == b"ell"
    assert [e.name for e in files.list("/tmp/x")] == ["y.txt"]
    assert files.exists("/tmp/x/y.txt") and not files.exists("/nope")
    assert files.upload("/tmp/up", b"\x00abc").bytes_written == 4
    assert files.download("/tmp/up") == b"\x00abc"
    assert b"".join(files.download_stream("/tmp/up")) == b"\x00abc"
    assert files.rename("/tmp/up", "/tmp/up2").path == "/tmp/up2"
    assert files.copy(source="/tmp/x", destination="/tmp/z", recursive=True).type == "dir"
    assert files.make_dir("/tmp/m/n", parents=True) is True
    files.chmod(path="/tmp/up2", mode="600")
    files.chown(path="/tmp/up2", uid=1000, gid=1000)
    info = files.get_info("/tmp/up2")
    assert (info.permissions, info.size) == ("-rw-------", 4)
    files.remove("/tmp/z", recursive=True)
    assert not files.exists("/tmp/z")
    with pytest.raises(HyperbrowserError) as escape:
        files.read_text("/../../../../etc/shadow-of-the-host")
    assert escape.value.status_code == 404


def test_watch_dir_sees_a_process(hb_sandbox: object) -> None:
    sb: object = hb_sandbox
    events: list[object] = []
    handle = sb.files.watch_dir("/tmp", events.append, recursive=True)  # type: ignore[attr-defined]
    time.sleep(0.3)
    sb.exec("mkdir /tmp/d && touch /tmp/d/new && rm /tmp/d/new")  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while not any(getattr(e, "type", "") == "remove" for e in events):
        assert time.monotonic() < deadline, events
        time.sleep(0.05)
    handle.stop()
    seen = {(e.type, e.name) for e in events}  # type: ignore[attr-defined]
    assert {("create", "d"), ("create", "d/new"), ("remove", "d/new")} <= seen


def test_terminal(hb_sandbox: object) -> None:
    terminal = hb_sandbox.terminal.create(  # type: ignore[attr-defined]
        {"command": "bash", "rows": 24, "cols": 80})
    connection = terminal.attach()
    connection.write("echo $((6*7))\n")
    screen = b""
    for event in connection.events():
        if event.type == "output":
            screen += event.raw
            if b"42\r\n" in screen:
                break
    assert b"42\r\n" in screen
    assert terminal.resize(40, 100).rows == 40
    connection.write("stty size\n")
    for event in connection.events():
        if event.type == "output":
            screen += event.raw
            if b"40 100" in screen:
                break
    connection.close()
    ended = terminal.kill()
    assert ended.running is False and ended.exit_code == 137


def test_network_policy_and_runtime_session(hb_sandbox: object, server: ServerProcess) -> None:
    """update_network / clear_network and connect (a new runtime token) through its SDK;
    the packet filtering itself is tried in tests/integration/test_egress.py."""
    sb: object = hb_sandbox
    before = sb.info().network  # type: ignore[attr-defined]
    assert before.allow_internet_access is False and before.allow_out == []
    changed = sb.update_network(  # type: ignore[attr-defined]
        {"allow_internet_access": False, "allow_out": ["198.51.100.7"], "deny_out": []})
    assert changed.network.allow_out == ["198.51.100.7/32"]
    assert sb.info().network.allow_out == ["198.51.100.7/32"]  # type: ignore[attr-defined]
    cleared = sb.clear_network()  # type: ignore[attr-defined]
    assert cleared.network.allow_internet_access is True and cleared.network.allow_out == []
    first = sb.create_runtime_session().token  # type: ignore[attr-defined]
    # Every token revoked behind its back: its next call gets 401, and it renews by itself
    # (it reads the detail, which carries the new current token) and goes on.
    with server.client() as api:
        fresh = api.post(f"/api/sandbox/{sb.id}/revoke", json={}).json()["token"]  # type: ignore[attr-defined]
    assert fresh != first
    assert sb.exec("echo still").stdout == "still\n"  # type: ignore[attr-defined]
    assert sb.create_runtime_session().token == fresh  # type: ignore[attr-defined]


def test_names_in_the_network_policy(server: ServerProcess) -> None:
    """allowOut with a name and a wildcard, at create and in update_network, obeyed by
    real requests from the sandbox to the tests' web world (tests/web_world.py)."""
    web = web_world()
    client = Hyperbrowser(api_key=server.api_key, base_url=server.base_url)
    sb = client.sandboxes.create({"image_name": "python",  # type: ignore[arg-type]
                                  "allow_out": ["allowed.web.test", f"*.{WILD}"]})
    try:
        assert sb.info().network.allow_out == ["allowed.web.test", f"*.{WILD}"]
        sb.files.write_text("/tmp/web-ca.pem", web.ca_pem)
        asks = (("https", web.allowed, "allowed.web.test"), ("https", web.other, f"a.{WILD}"),
                ("https", web.other, "other.web.test"))
        said = sb.exec(f"python3 - <<'PY'\n{FETCH}\n" + "".join(
            f"print(fetch(*{list(a)!r}))\n" for a in asks) + "PY")
        assert said.stdout.splitlines() == [
            f"web {web.allowed} sni=allowed.web.test host=allowed.web.test path=/",
            f"web {web.other} sni=a.{WILD} host=a.{WILD} path=/", "denied"], said.stderr
        changed = sb.update_network({"allow_internet_access": False,
                                     "allow_out": ["other.web.test"], "deny_out": []})
        assert changed.network.allow_out == ["other.web.test"]
        said = sb.exec(f"python3 - <<'PY'\n{FETCH}\n" + "".join(
            f"print(fetch(*{list(a)!r}))\n" for a in asks) + "PY")
        assert said.stdout.splitlines() == [
            "denied", "denied",
            f"web {web.other} sni=other.web.test host=other.web.test path=/"], said.stderr
        with pytest.raises(HyperbrowserError) as bad:
            sb.update_network({"allow_out": ["*.*.web.test"], "deny_out": ["other.web.test"]})
        assert bad.value.status_code == 400
    finally:
        sb.stop()
        client.close()
        web.stop()


def test_snapshots_through_the_sdk(server: ServerProcess) -> None:
    """create_memory_snapshot, list/get/delete_snapshot and start_from_snapshot: a sandbox
    started from a snapshot has the files of the one it was taken of (files, not memory:
    README "Snapshots")."""
    client = Hyperbrowser(api_key=server.api_key, base_url=server.base_url)
    first = client.sandboxes.create({"image_name": "python"})
    started = None
    try:
        assert first.exec("echo prepared > /root/state").exit_code == 0
        made = first.create_memory_snapshot({"snapshot_name": "hb-ready"})
        assert (made.snapshot_name, made.status, made.image_name) == (
            "hb-ready", "created", "python")
        assert made.snapshot_id.startswith("snap_")
        unnamed = first.create_memory_snapshot()
        assert unnamed.snapshot_name.startswith("snap-") and unnamed.snapshot_name != "hb-ready"

        listed = client.sandboxes.list_snapshots({"image_name": "python"})
        names = {s.snapshot_name for s in listed.snapshots}
        assert {"hb-ready", unnamed.snapshot_name} <= names
        assert client.sandboxes.get_snapshot(made.snapshot_id).snapshot_name == "hb-ready"

        started = client.sandboxes.start_from_snapshot(
            {"snapshot_name": "hb-ready", "snapshot_id": made.snapshot_id})
        assert started.exec("cat /root/state").stdout == "prepared\n"
        with pytest.raises(HyperbrowserError):
            client.sandboxes.start_from_snapshot(
                {"snapshot_name": "hb-ready", "snapshot_id": "snap_000000000000000000000000"})

        assert client.sandboxes.delete_snapshot(unnamed.snapshot_id).deleted
        assert client.sandboxes.delete_snapshot("hb-ready").deleted
        with pytest.raises(HyperbrowserError):
            client.sandboxes.get_snapshot("hb-ready")
    finally:
        for sandbox in (first, started):
            if sandbox is not None:
                sandbox.stop()
        client.close()
