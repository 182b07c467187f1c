"""The files API through our SDK, against real sandboxes: every operation, big transfers,
and the ways code in a sandbox could try to make the server touch host files."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import io
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sandport import AsyncSandbox, Sandbox
from sandport.errors import BadRequest, Conflict, Forbidden, NotFound

from .._server import ServerProcess


def test_write_read_stat_list(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    info = sb.files.write("/work/deep/er/note.txt", "héllo\n", mode="640")
    assert (info.path, info.type, info.size, info.mode) == ("/work/deep/er/note.txt", "file",
                                                          7, 0o640)
    assert sb.files.read("/work/deep/er/note.txt") == "héllo\n"
    assert sb.exec("cat /work/deep/er/note.txt; stat -c %a /work/deep/er/note.txt").stdout \
        == "héllo\n640\n"
    sb.files.write("/work/deep/er/note.txt", "more\n", append=True)
    assert sb.files.read("/work/deep/er/note.txt", offset=3, length=4) == "llo\n"
    blob = bytes(range(256)) * 4
    sb.files.write("/work/blob.bin", blob)
    assert sb.files.read("/work/blob.bin", format="bytes") == blob
    assert sb.files.read("/work/blob.bin", format="bytes", offset=1000) == blob[1000:]

    names = {(e.path, e.type) for e in sb.files.list("/work", depth=3)}
    assert names == {("/work/deep", "dir"), ("/work/deep/er", "dir"),
                     ("/work/deep/er/note.txt", "file"), ("/work/blob.bin", "file")}
    assert [e.name for e in sb.files.list("/work")] == ["blob.bin", "deep"]
    stat = sb.files.stat("/work/deep")
    assert (stat.type, stat.owner, stat.group, stat.permissions) == ("dir", "root", "root",
                                                                     "drwxr-xr-x")
    assert sb.files.exists("/work/blob.bin") and not sb.files.exists("/work/nope")
    with pytest.raises(NotFound):
        sb.files.read("/work/nope")
    with pytest.raises(BadRequest):
        sb.files.read("/work/deep")


def test_mkdir_move_copy_remove_chmod_chown(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    assert sb.files.mkdir("/data/a/b", parents=True) is True
    assert sb.files.mkdir("/data/a/b", parents=True) is False
    with pytest.raises(Conflict):
        sb.files.mkdir("/data/a/b")
    with pytest.raises(NotFound):
        sb.files.mkdir("/nothere/x")
    sb.files.write("/data/a/b/f.txt", "x")
    sb.exec("ln -s f.txt /data/a/b/link")

    copied = sb.files.copy("/data/a", "/data/c", recursive=True)
    assert copied.type == "dir"
    assert sb.files.read("/data/c/b/f.txt") == "x"
    assert sb.files.stat("/data/c/b/link").symlink_target == "f.txt"
    with pytest.raises(BadRequest):
        sb.files.copy("/data/a", "/data/d")  # a directory without recursive
    with pytest.raises(Conflict):
        sb.files.copy("/data/a", "/data/c", recursive=True)
    with pytest.raises(BadRequest):
        sb.files.copy("/data/a", "/data/a/b/inside", recursive=True)

    moved = sb.files.move("/data/c", "/data/moved")
    assert moved.path == "/data/moved" and not sb.files.exists("/data/c")
    sb.files.write("/data/one", "1")
    sb.files.write("/data/two", "2")
    with pytest.raises(Conflict):
        sb.files.move("/data/one", "/data/two")
    sb.files.move("/data/one", "/data/two", overwrite=True)
    assert sb.files.read("/data/two") == "1"
    sb.files.move("/data/two", "/tmp/across")  # /tmp may be another filesystem: still works
    assert sb.files.read("/tmp/across") == "1"

    sb.files.chmod("/data/moved", "750", recursive=True)
    sb.files.chown("/data/moved", uid=1000, gid=1000, recursive=True)
    out = sb.exec("stat -c '%a %u %g %n' /data/moved /data/moved/b/f.txt").stdout
    assert out == "750 1000 1000 /data/moved\n750 1000 1000 /data/moved/b/f.txt\n"

    with pytest.raises(Conflict):
        sb.files.remove("/data/moved")
    sb.files.remove("/data/moved", recursive=True)
    sb.files.remove("/tmp/across")
    assert not sb.files.exists("/data/moved") and not sb.files.exists("/tmp/across")
    with pytest.raises(BadRequest):
        sb.files.remove("/", recursive=True)
    assert sb.exec("ls /bin/sh").exit_code == 0


def test_large_upload_and_download_stream(make_sandbox: Callable[..., Sandbox],
                                          server: ServerProcess, tmp_path: Path) -> None:
    sb = make_sandbox()
    size = 1 << 30
    source = tmp_path / "big.bin"
    with open(source, "wb") as fh:
        for i in range(size // (1 << 20)):  # every MiB different: a dropped chunk would show
            fh.write(hashlib.sha256(str(i).encode()).digest() * (1 << 15))
    before = _rss_kib(server)
    with open(source, "rb") as fh:
        assert sb.files.upload("/big.bin", fh) == size
    remote = sb.exec("sha256sum /big.bin").stdout.split()[0]
    assert remote == _sha256(source)
    target = tmp_path / "back.bin"
    with open(target, "wb") as fh:
        assert sb.files.download("/big.bin", fh) == size
    assert _sha256(target) == remote
    grown_mib = (_rss_kib(server) - before) / 1024
    assert grown_mib < 64, f"server memory grew {grown_mib:.0f} MiB for a 1 GiB transfer"
    sb.files.remove("/big.bin")
    assert sb.files.download("/etc/hostname") == f"{sb.id}\n".encode()


def test_async_twin(server: ServerProcess) -> None:
    async def main() -> None:
        async with await AsyncSandbox.create(api_key=server.api_key,
                                             base_url=server.base_url) as sb:
            await sb.files.write("/a.txt", b"\x00\x01")
            assert await sb.files.read("/a.txt", format="bytes") == b"\x00\x01"
            assert [e.name for e in await sb.files.list("/", depth=1) if e.name == "a.txt"]
            assert await sb.files.upload("/b.bin", io.BytesIO(b"z" * 3_000_000)) == 3_000_000
            assert await sb.files.download("/b.bin") == b"z" * 3_000_000

    asyncio.run(main())


def test_paths_never_leave_the_sandbox(make_sandbox: Callable[..., Sandbox]) -> None:
    """Code inside plants symlinks, loops, device nodes and fifos; every path resolves
    inside the sandbox, and nothing but regular files is opened for I/O."""
    sb = make_sandbox()
    host_marker = Path("/tmp") / f"sandport-host-{os.getpid()}"
    host_marker.write_text("host secret")
    try:
        planted = sb.exec(
            "set -e; mkdir -p /p; cd /p; ln -s / root; ln -s /tmp abs_tmp;"
            f" ln -s ../../../../../../..{host_marker} rel_up; ln -s {host_marker} abs_host;"
            " ln -s loop2 loop1; ln -s loop1 loop2; ln -s /proc/self/root self_root;"
            " ln -s /proc/1/root init_root; mknod blk b 7 0; mknod chr c 1 3; mkfifo fifo;"
            " echo inside > /tmp/marker")
        assert planted.exit_code == 0, planted.stderr
        name = host_marker.name
        for path in ("/p/rel_up", "/p/abs_host", f"/p/root{host_marker}",
                     f"/../../../../tmp/{name}", f"/p/abs_tmp/../../../tmp/{name}",
                     f"../../../../../tmp/{name}"):
            with pytest.raises(NotFound):
                sb.files.read(path)
        assert sb.files.read("/p/root/tmp/marker") == "inside\n"
        assert sb.files.read("/p/abs_tmp/marker") == "inside\n"
        for path in ("/p/self_root/etc/hostname", "/p/init_root/etc/hostname",
                     "/proc/1/root/etc/hostname", "/p/loop1"):
            with pytest.raises((BadRequest, NotFound)):
                sb.files.read(path)
        # Kernel interfaces are not files: read as the server (host root) they would
        # bypass the sandbox's missing capabilities (/proc/kmsg is the host's kernel log).
        for path in ("/proc/kmsg", "/proc/1/environ", "/sys/kernel/uevent_helper",
                     "/sys/fs/cgroup/cgroup.procs"):
            with pytest.raises((Forbidden, NotFound)):
                sb.files.read(path)
        with pytest.raises(Forbidden):
            sb.files.read("/proc/kmsg")
        assert [e.name for e in sb.files.list("/proc") if e.name == "1"]  # listing is fine
        for path in ("/p/blk", "/p/chr", "/p/fifo"):
            with pytest.raises(Forbidden):
                sb.files.read(path)
            with pytest.raises(Forbidden):
                sb.files.write(path, "x")
            with pytest.raises(Forbidden):
                sb.files.download(path)
        # Writing through a planted link lands inside the sandbox, never on the host.
        sb.files.write("/p/abs_host", "through a link")
        assert host_marker.read_text() == "host secret"
        assert sb.exec(f"cat {host_marker}").stdout == "through a link"
        sb.files.write(f"/p/root{host_marker}.new", "x")
        assert not Path(f"{host_marker}.new").exists()
        # Copy and remove never follow links out, and skip device nodes.
        sb.files.copy("/p", "/q", recursive=True)
        assert sb.exec("test -L /q/root && test ! -e /q/blk && test ! -e /q/fifo").exit_code == 0
        sb.files.remove("/q", recursive=True)
        assert host_marker.exists() and sb.exec("test -d /bin").exit_code == 0
        sb.files.chmod("/p/abs_host", "777")  # a symlink: nothing to change, nothing followed
        assert oct(host_marker.stat().st_mode & 0o777) != "0o777"
    finally:
        host_marker.unlink(missing_ok=True)


def test_run_as_another_user(make_sandbox: Callable[..., Sandbox], server: ServerProcess) -> None:
    import httpx

    sb = make_sandbox()
    sb.exec("useradd -m -u 1500 alice && mkdir -m 700 /secret && echo s > /secret/f")
    url = sb.info.runtime.base_url
    headers = {"authorization": f"Bearer {sb.info.token}", "host": url.split("//")[1]}
    with httpx.Client(base_url=server.base_url, headers=headers) as http:
        made = http.post("/sandbox/files/write", json={
            "path": "/home/alice/mine.txt", "data": "hi", "runAs": "alice"})
        assert made.status_code == 200, made.text
        assert made.json()["files"][0]["owner"] == "alice"
        denied = http.post("/sandbox/files/read", json={"path": "/secret/f", "runAs": "alice"})
        assert denied.status_code == 403 and denied.json()["error"] == "forbidden"
        assert http.post("/sandbox/files/read", json={"path": "/secret/f"}).json()["content"] \
            == "s\n"
        nobody = http.post("/sandbox/files/read", json={"path": "/etc/hostname", "runAs": "zed"})
        assert nobody.status_code == 400 and "zed" in nobody.json()["message"]
    assert sb.exec("stat -c %U:%G /home/alice/mine.txt").stdout == "alice:alice\n"


def test_bad_input_is_a_clear_4xx(make_sandbox: Callable[..., Sandbox],
                                  server: ServerProcess) -> None:
    import httpx

    sb = make_sandbox()
    url = sb.info.runtime.base_url
    headers = {"authorization": f"Bearer {sb.info.token}", "host": url.split("//")[1]}
    with httpx.Client(base_url=server.base_url, headers=headers) as http:
        for method, path, kwargs in [
            ("POST", "/sandbox/files/write", {"json": {"path": "/x"}}),
            ("POST", "/sandbox/files/write", {"json": {"path": "/x", "data": "!",
                                                       "encoding": "base64"}}),
            ("POST", "/sandbox/files/write", {"json": {"path": "/x", "data": "a", "mode": "9"}}),
            ("POST", "/sandbox/files/read", {"json": {"path": ""}}),
            ("POST", "/sandbox/files/read", {"json": {"path": "/x", "bogus": 1}}),
            ("GET", "/sandbox/files", {"params": {"path": "/", "depth": "0"}}),
            ("GET", "/sandbox/files/stat", {}),
            ("POST", "/sandbox/files/chown", {"json": {"path": "/x"}}),
        ]:
            answer = http.request(method, path, **kwargs)
            assert answer.status_code == 400, (path, kwargs, answer.text)
            assert set(answer.json()) == {"error", "message"}
        wrong = http.get("/sandbox/files/stat", params={"path": "/"},
                         headers={"authorization": "Bearer spt_wrong"})
        assert wrong.status_code == 401


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _rss_kib(server: ServerProcess) -> int:
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_watch_sees_changes_made_inside(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    sb.files.mkdir("/w/sub", parents=True)
    watch = sb.files.watch("/w", recursive=True)
    deadline = threading.Timer(30, watch.stop)  # an expected event that never comes: fail
    deadline.start()
    try:
        seen: list[tuple[str, str]] = []
        events = iter(watch.events())

        def until(op: str, path: str) -> None:
            for event in events:
                seen.append((event.op, event.path))
                if (event.op, event.path) == (op, path):
                    return
            raise AssertionError(("never seen", op, path, seen))

        # Once the new directory's CREATE has been delivered, it is watched too.
        assert sb.exec("mkdir /w/sub/new").exit_code == 0
        until("CREATE", "/w/sub/new")
        done = sb.exec("echo x > /w/sub/new/f && chmod 600 /w/sub/new/f"
                       " && mv /w/sub/new/f /w/g && rm /w/g && echo y > /w/top")
        assert done.exit_code == 0, done.stderr
        until("WRITE", "/w/top")
        for expected in [("CREATE", "/w/sub/new"), ("CREATE", "/w/sub/new/f"),
                         ("WRITE", "/w/sub/new/f"), ("CHMOD", "/w/sub/new/f"),
                         ("RENAME", "/w/sub/new/f"), ("CREATE", "/w/g"), ("REMOVE", "/w/g"),
                         ("CREATE", "/w/top")]:
            assert expected in seen, (expected, seen)
        # A tree made in one go: whatever was in a directory before its watch was in place is
        # reported when the directory is found, so nothing made inside it is lost.
        assert sb.exec("mkdir -p /w/a/b/c && touch /w/a/b/c/deep && echo z > /w/a/b/c/deep2"
                       " && touch /w/last").exit_code == 0
        until("CREATE", "/w/last")
        for path in ("/w/a", "/w/a/b", "/w/a/b/c", "/w/a/b/c/deep", "/w/a/b/c/deep2"):
            assert ("CREATE", path) in seen, (path, seen)
        # A reconnect with the last seq seen gets only what came after.
        sb.exec("touch /w/after")
        watch.stop()
        rest = [(e.op, e.path) for e in watch.events(cursor=len(seen))]
        assert ("CREATE", "/w/after") in rest and ("CREATE", "/w/sub/new") not in rest
    finally:
        deadline.cancel()
    with pytest.raises(NotFound):
        sb.files.watch("/nope")


def test_watch_cannot_leave_the_sandbox(make_sandbox: Callable[..., Sandbox],
                                        tmp_path: Path) -> None:
    sb = make_sandbox()
    sb.exec(f"mkdir -p /x && ln -s {tmp_path} /x/out")
    host_dir = tmp_path
    with pytest.raises(NotFound):
        sb.files.watch("/x/out")  # resolves to the sandbox's own (missing) path
    (host_dir / "inside").mkdir()
    sb.exec(f"mkdir -p {host_dir}")
    watch = sb.files.watch("/x/out")
    (host_dir / "host-change").write_text("x")
    sb.exec(f"touch {host_dir}/sandbox-change")
    watch.stop()
    paths = [e.path for e in watch.events()]  # named under the path that was asked for
    assert "/x/out/sandbox-change" in paths
    assert not [p for p in paths if "host-change" in p]


RACER = '''
import ctypes, os, shutil, sys
libc = ctypes.CDLL(None, use_errno=True)
os.makedirs("/tmp/r", exist_ok=True)
v, link = b"/tmp/r/v", b"/tmp/r/L"
n = 0
while True:
    n += 1
    if n % 64 == 0:
        kinds = sorted("l" if os.path.islink(p) else "d" if os.path.isdir(p) else ""
                       for p in (v, link))
        if kinds != ["d", "l"]:
            for p in (v, link):
                if os.path.islink(p) or os.path.isfile(p):
                    os.unlink(p)
                elif os.path.isdir(p):
                    shutil.rmtree(p, ignore_errors=True)
            os.mkdir(v)
            os.symlink(sys.argv[1], link)
    libc.renameat2(-100, v, -100, link, 2)  # RENAME_EXCHANGE: a dir and a symlink swap
'''


def test_recursive_delete_racing_a_symlink_swap_stays_inside(
        make_sandbox: Callable[..., Sandbox], tmp_path: Path) -> None:
    """A process in the sandbox swaps a directory with a symlink to a host directory
    while the API deletes it recursively: nothing on the host is opened or removed."""
    sb = make_sandbox()
    host_dir = tmp_path / "precious"
    host_dir.mkdir()
    (host_dir / "file").write_text("keep")
    libc = ctypes.CDLL(None, use_errno=True)
    inotify = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    assert libc.inotify_add_watch(inotify, str(host_dir).encode(), 0x20) >= 0  # IN_OPEN
    try:
        sb.files.write("/tmp/racer.py", RACER)
        racer = sb.processes.start(["python3", "/tmp/racer.py", str(host_dir)])
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            with contextlib.suppress(NotFound, Conflict, BadRequest):
                sb.files.remove("/tmp/r/v", recursive=True)
        racer.kill()
        with pytest.raises(BlockingIOError):
            os.read(inotify, 4096)  # the server never opened the host directory
    finally:
        os.close(inotify)
    assert (host_dir / "file").read_text() == "keep"


def test_mount_points_of_the_sandbox_stay(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    for path in ("/etc/hosts", "/dev/init", "/dev/shm"):
        with pytest.raises(Conflict, match="busy"):
            sb.files.remove(path, recursive=True)
        with pytest.raises(Conflict):
            sb.files.move(path, "/tmp/moved")
    assert sb.exec("test -e /etc/hosts && test -e /dev/init").exit_code == 0
