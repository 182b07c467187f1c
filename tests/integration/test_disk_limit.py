"""diskSizeMiB is enforced: each sandbox has a filesystem of that size (runtime/disks.py).

What a user checks: ``df /`` inside, a write past the size failing with ENOSPC, the host's
disk and the other sandboxes untouched, deleted files giving the room back, the limit
across a server restart, nothing left on the host once the sandbox ends; and what root in
a sandbox may try to get past it.
"""

from __future__ import annotations

import asyncio
import glob
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sandport import Sandbox
from sandport.errors import NotSupported
from sandport.runtime.disks import SandboxDisks

from .._server import ServerProcess
from ._invariants import assert_invariants

MakeSandbox = Callable[..., Sandbox]
Start = Callable[..., ServerProcess]
LIMIT = 256  # MiB: the smallest diskSizeMiB, so the tests write little
MIB = 1 << 20


def _df_mib(sb: Sandbox) -> tuple[int, int]:
    """(size, available) of the sandbox's / in MiB, as ``df`` shows them inside."""
    fields = sb.exec("df -Pm /").stdout.splitlines()[-1].split()
    return int(fields[1]), int(fields[3])


def _fill(sb: Sandbox, path: str, mib: int) -> tuple[int, str]:
    """Write ``mib`` MiB of zeros to ``path``: (exit code, dd's complaint)."""
    done = sb.exec(f"dd if=/dev/zero of={path} bs=1M count={mib} conv=fsync", timeout=120)
    return done.exit_code, done.stderr


def _image(data_dir: Path, sandbox_id: str) -> Path:
    return data_dir / "disks" / sandbox_id / "image"


def _host_mib(image: Path) -> float:
    """What the sandbox's disk takes of the host's disk (allocated, not apparent size)."""
    return os.stat(image).st_blocks * 512 / MIB


def _loops_under(directory: Path) -> list[str]:
    """Loop devices whose backing file is under ``directory`` (``losetup -a``, by sysfs)."""
    found = []
    for path in glob.glob("/sys/block/loop*/loop/backing_file"):
        try:
            backing = Path(path).read_text().strip()
        except OSError:
            continue
        if backing.startswith(str(directory.resolve()) + "/"):
            found.append(backing)
    return found


def _mounts_under(directory: Path) -> list[str]:
    with open("/proc/self/mountinfo") as fh:
        return [line.split()[4] for line in fh
                if line.split()[4].startswith(str(directory) + "/")]


def _eventually(done: Callable[[], bool], what: str) -> None:
    """The disk of a stopped sandbox goes just after the stop returns; the kernel lets a
    loop device go just after its filesystem is unmounted."""
    for _ in range(100):
        if done():
            return
        time.sleep(0.05)
    raise AssertionError(what)


def _wait_disk_gone(data_dir: Path, sandbox_id: str) -> None:
    trash = data_dir / "disks" / "trash"
    assert not (data_dir / "disks" / sandbox_id).exists()  # at once
    _eventually(lambda: not (trash.is_dir() and os.listdir(trash)),
                f"disk of {sandbox_id} left: {_mounts_under(data_dir)}")


def _wait_no_loops(directory: Path) -> None:
    _eventually(lambda: not _loops_under(directory), f"loops left: {_loops_under(directory)}")


def test_df_shows_the_size_and_a_write_past_it_fails(server: ServerProcess,
                                                    make_sandbox: MakeSandbox) -> None:
    sb = make_sandbox(disk_size_mib=LIMIT)
    size, available = _df_mib(sb)
    assert LIMIT <= size <= LIMIT + 4, size  # ext4's own share is on top, not taken off
    assert LIMIT - 8 <= available <= size
    image = _image(server.data_dir, sb.id)
    host_free = os.statvfs(server.data_dir)
    code, complaint = _fill(sb, "/big", LIMIT + 64)
    assert code != 0 and "No space left on device" in complaint
    written = int(sb.exec("stat -c %s /big").stdout)
    assert LIMIT - 8 <= written / MIB <= LIMIT
    assert _df_mib(sb)[1] <= 1  # df rounds up
    # the host gave it what it wrote, no more (other tests write too: a loose bound on the
    # host's free space, a tight one on the disk's image)
    assert _host_mib(image) <= LIMIT + 16
    after = os.statvfs(server.data_dir)
    assert (host_free.f_bavail - after.f_bavail) * after.f_frsize / MIB < LIMIT + 512
    # a full disk is its own: another sandbox writes as much as before
    other = make_sandbox(disk_size_mib=LIMIT)
    code, complaint = _fill(other, "/data", 128)
    assert code == 0, complaint


def test_deleted_files_give_the_room_back(server: ServerProcess,
                                         make_sandbox: MakeSandbox) -> None:
    sb = make_sandbox(disk_size_mib=LIMIT)
    image = _image(server.data_dir, sb.id)
    assert _fill(sb, "/big", LIMIT + 64)[0] != 0
    assert sb.exec("rm /big && sync").exit_code == 0
    assert _df_mib(sb)[1] >= LIMIT - 8
    code, complaint = _fill(sb, "/again", LIMIT - 32)
    assert code == 0, complaint
    sb.exec("rm /again && sync")
    for _ in range(50):  # the host gets its blocks back too (discard punches holes)
        if _host_mib(image) < 32:
            break
        time.sleep(0.1)
    assert _host_mib(image) < 32


def test_a_stopped_sandbox_leaves_no_disk(server: ServerProcess) -> None:
    sb = Sandbox.create(api_key=server.api_key, base_url=server.base_url,
                        disk_size_mib=LIMIT)
    try:
        assert _image(server.data_dir, sb.id).exists()
        assert any(sb.id in p for p in _loops_under(server.data_dir))
        sb.exec("echo x > /file")
    finally:
        sb.stop()
        sb.close()
    assert not [m for m in _mounts_under(server.data_dir) if sb.id in m]  # at once
    _wait_disk_gone(server.data_dir, sb.id)


def test_the_limit_holds_across_a_restart(fresh_server: Start) -> None:
    srv = fresh_server()
    kw = {"api_key": srv.api_key, "base_url": srv.base_url}
    before = Sandbox.create(disk_size_mib=LIMIT, **kw)
    assert _fill(before, "/half", 128)[0] == 0
    srv.stop()  # sandboxes and their disks outlive the server
    assert _image(srv.data_dir, before.id).exists()
    srv = fresh_server(srv.data_dir, srv.port)
    assert_invariants(srv.data_dir)
    assert _df_mib(before)[0] >= LIMIT
    assert int(before.exec("stat -c %s /half").stdout) == 128 * MIB  # the same disk
    code, complaint = _fill(before, "/more", LIMIT)
    assert code != 0 and "No space left on device" in complaint
    after = Sandbox.create(disk_size_mib=LIMIT, **kw)
    assert LIMIT <= _df_mib(after)[0] <= LIMIT + 4
    assert _fill(after, "/big", LIMIT + 64)[0] != 0
    for sb in (before, after):
        sb.stop()
        sb.close()
    for sb in (before, after):
        _wait_disk_gone(srv.data_dir, sb.id)
    srv.stop()
    assert _mounts_under(srv.data_dir) == []  # the spares went with the server
    _wait_no_loops(srv.data_dir)


def test_kept_files_come_off_a_disk_a_host_reboot_unmounted(fresh_server: Start) -> None:
    """A sandbox lost with the host (its container, overlay and disk mount gone) keeps its
    files like any lost sandbox: its disk is mounted again to copy them off."""
    srv = fresh_server(env={"SANDPORT_RETAIN_ENDED_H": "1"})
    with srv.client() as api:
        made = api.post("/api/sandbox", json={"diskSizeMiB": LIMIT}).json()
    sid = made["id"]
    sb = Sandbox.connect(sid, api_key=srv.api_key, base_url=srv.base_url)
    assert sb.exec("mkdir -p /root/work && echo kept > /root/work/note && rm -f /etc/motd"
                   " && rm -rf /etc/apt && mkdir /etc/apt && sync").exit_code == 0
    sb.close()
    srv.crash()
    # what a reboot does to it: its processes, its overlay and its disk's mount gone
    subprocess.run(["runc", "--root", str(srv.data_dir / "runc"), "kill", sid, "KILL"],
                   check=True)
    for mount in (srv.data_dir / "sandboxes" / sid / "rootfs",
                  srv.data_dir / "disks" / sid / "fs"):
        subprocess.run(["umount", "-l", str(mount)], check=True)
    _wait_no_loops(srv.data_dir / "disks" / sid)  # it has no user left, as after a reboot
    srv = fresh_server(srv.data_dir, srv.port, env={"SANDPORT_RETAIN_ENDED_H": "1"})
    with srv.client() as api:
        record = api.get(f"/api/sandbox/{sid}").json()
    assert record["status"] == "closed" and record["filesKeptUntil"] is not None
    kept = srv.data_dir / "retained" / sid / "upper"
    assert (kept / "root" / "work" / "note").read_text() == "kept\n"
    # deletions are kept as overlayfs marks them: a whiteout, an opaque directory
    whiteout = os.lstat(kept / "etc" / "motd")
    assert os.major(whiteout.st_rdev) == 0 and os.minor(whiteout.st_rdev) == 0
    assert os.getxattr(kept / "etc" / "apt", "trusted.overlay.opaque") == b"y"
    _wait_disk_gone(srv.data_dir, sid)
    assert_invariants(srv.data_dir)


def test_root_in_a_sandbox_cannot_get_past_its_disk(server: ServerProcess,
                                                   make_sandbox: MakeSandbox) -> None:
    """What root with Docker's capabilities may try: re-tag files to another project (the
    way out of a project quota), clear inherit flags, resize or shut down its filesystem,
    remount, preallocate; then it writes past the size, and still meets it."""
    sb = make_sandbox(disk_size_mib=LIMIT)
    image = _image(server.data_dir, sb.id)
    image_size = image.stat().st_size
    tried = sb.exec("""python3 - <<'PY'
import errno, fcntl, os, struct
FSGETXATTR, FSSETXATTR, SETFLAGS = 0x801C581F, 0x401C5820, 0x40086602
RESIZE, SHUTDOWN = 0x40086610, 0x8004587D
def attempt(what, call):
    try:
        call()
        print(what, "done")
    except OSError as exc:
        print(what, errno.errorcode[exc.errno])
open("/f", "w").write("x")
f, root = os.open("/f", os.O_RDONLY), os.open("/", os.O_RDONLY)
attempt("projid", lambda: fcntl.ioctl(f, FSSETXATTR, struct.pack("=5I8s", 0, 0, 0, 0, 0, b"")))
attempt("projid-new", lambda: fcntl.ioctl(f, FSSETXATTR, struct.pack("=5I8s", 0, 0, 0, 9, 0, b"")))
attempt("flags", lambda: fcntl.ioctl(root, SETFLAGS, struct.pack("=l", 0)))
attempt("resize", lambda: fcntl.ioctl(root, RESIZE, struct.pack("=Q", 1 << 24)))
attempt("shutdown", lambda: fcntl.ioctl(root, SHUTDOWN, struct.pack("=I", 2)))
fd = os.open("/pre", os.O_CREAT | os.O_WRONLY)
attempt("fallocate", lambda: os.posix_fallocate(fd, 0, 2 << 30))
PY
mount -o remount,rw / 2>&1 | head -1""")
    assert tried.exit_code == 0, tried.stderr
    lines = tried.stdout.splitlines()
    outcome = dict(line.split(" ", 1) for line in lines[:-1])
    assert outcome["resize"] in ("ENOTTY", "EPERM"), outcome
    assert outcome["shutdown"] in ("ENOTTY", "EPERM"), outcome
    assert outcome["fallocate"] == "ENOSPC", outcome
    assert "denied" in lines[-1]
    sb.exec("rm -f /pre /f")
    code, complaint = _fill(sb, "/big", 2 * LIMIT)
    assert code != 0 and "No space left on device" in complaint
    assert _df_mib(sb)[0] <= LIMIT + 4
    assert image.stat().st_size == image_size  # its disk did not grow on the host
    assert _host_mib(image) <= LIMIT + 16


def test_a_server_with_disk_limits_off_says_so(fresh_server: Start) -> None:
    srv = fresh_server(env={"SANDPORT_DISK_LIMITS": "off"})
    assert "disk limits NOT enforced (disk_limits is off)" in srv.log()
    with Sandbox.create(api_key=srv.api_key, base_url=srv.base_url,
                        disk_size_mib=LIMIT) as sb:
        assert _df_mib(sb)[0] > LIMIT  # the host's filesystem, as before
        assert not (srv.data_dir / "disks" / sb.id).exists()
    srv.stop()
    srv.assert_clean_log()


def test_a_host_that_cannot_is_told_and_on_refuses(fresh_server: Start,
                                                    tmp_path: Path) -> None:
    """Where a disk cannot be made (here: an mkfs.ext4 that fails), auto goes on without
    limits and says why; on refuses to start."""
    broken = tmp_path / "bin"
    broken.mkdir()
    (broken / "mkfs.ext4").write_text("#!/bin/sh\necho 'no ext4 here' >&2\nexit 1\n")
    (broken / "mkfs.ext4").chmod(0o755)
    path = {"PATH": f"{broken}:{os.environ['PATH']}"}
    srv = fresh_server(env=path)
    assert "disk limits NOT enforced (a trial disk failed: mkfs.ext4 failed: no ext4 here)" \
        in srv.log()
    with Sandbox.create(api_key=srv.api_key, base_url=srv.base_url,
                        disk_size_mib=LIMIT) as sb:
        assert _df_mib(sb)[0] > LIMIT
    srv.stop()
    refusing = ServerProcess(tmp_path / "on", env={**path, "SANDPORT_DISK_LIMITS": "on"})
    with pytest.raises(RuntimeError, match="disk limits cannot be enforced: a trial disk"):
        refusing.start()
    assert _loops_under(tmp_path) == [] and _mounts_under(tmp_path) == []


def test_a_disk_grows_in_use_and_never_shrinks(tmp_path: Path) -> None:
    """The resize a pooled sandbox claimed with another size will need (no API calls it
    yet), on the runtime's disks directly."""
    disks = SandboxDisks(tmp_path / "disks")
    bundle = tmp_path / "bundle"
    for sub in ("upper", "work"):
        (bundle / sub).mkdir(parents=True)
    sid = "ab" * 10

    async def scenario() -> None:
        await disks.prepare()
        assert disks.enforced, disks.why_not
        await disks.attach(sid, bundle, LIMIT)
        try:
            (bundle / "upper" / "kept").write_text("kept")
            with pytest.raises(NotSupported):
                await disks.resize(sid, LIMIT // 2)
            if not _has_cap(24):  # CAP_SYS_RESOURCE: ext4 grows online only with it
                pytest.skip("growing ext4 online needs CAP_SYS_RESOURCE, which root lacks here")
            await disks.resize(sid, 4 * LIMIT)
            st = os.statvfs(bundle / "upper")
            assert 4 * LIMIT <= st.f_blocks * st.f_frsize / MIB <= 4 * LIMIT + 16
            assert (bundle / "upper" / "kept").read_text() == "kept"
        finally:
            await disks.release(sid)
            await disks.close()

    asyncio.run(scenario())
    assert _mounts_under(tmp_path) == []
    _wait_no_loops(tmp_path)


def _has_cap(number: int) -> bool:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> number & 1)
    return False
