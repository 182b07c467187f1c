"""Host-wide limits: one sandbox, or many, cannot take the host or the server down.

Each test runs its own server with small limits (so the test is quick and safe) and, for
processes, its own parent cgroup, so that no other server's sandboxes meet its cap.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandport import Sandbox
from sandport.runtime import pidcap

from .._server import ServerProcess

Factory = Callable[..., ServerProcess]


def _mem_total_mib() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise AssertionError("no MemTotal")


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _create(srv: ServerProcess, **fields: object) -> httpx.Response:
    with srv.client() as c:
        return c.post("/api/sandbox", json={"imageName": "python", **fields})


_made: list[Sandbox] = []


def _sandbox(srv: ServerProcess, **fields: object) -> Sandbox:
    answer = _create(srv, **fields)
    assert answer.status_code == 200, answer.text
    sb = Sandbox.get(answer.json()["id"], api_key=srv.api_key, base_url=srv.base_url)
    _made.append(sb)
    return sb


@pytest.fixture(autouse=True)
def _close_sandboxes() -> Iterator[None]:
    yield
    while _made:
        sb = _made.pop()
        with contextlib.suppress(Exception):
            sb.stop()
        sb.close()


@pytest.fixture
def cgroup_parent() -> Iterator[str]:
    parent = "sandport-t" + os.urandom(4).hex()
    yield parent
    pidcap.remove_parent(parent)


# -- item 3: host PIDs ---------------------------------------------------------------------
SPAWN = """
import os, sys, time
n = 0
for _ in range({count}):
    try:
        os.posix_spawn("/bin/sleep", ["sleep", "600"], os.environ)
    except OSError:
        break
    n += 1
print(n, flush=True)
time.sleep(600)
"""


def _spawn(sb: Sandbox, count: int) -> tuple[Any, int]:
    """Start up to ``count`` sleeps in the sandbox (fewer where a limit says no)."""
    proc = sb.processes.start(["python3", "-c", SPAWN.format(count=count)])
    first = next(iter(proc.stream()))
    return proc, int(first.text)


def test_all_sandboxes_together_stay_under_the_pids_cap(
    fresh_server: Factory, cgroup_parent: str,
) -> None:
    total = 300
    srv = fresh_server(env={"SANDPORT_MAX_PIDS_TOTAL": str(total),
                            "SANDPORT_CGROUP_PARENT": cgroup_parent})
    assert pidcap.pids_max(cgroup_parent) == total  # written at start, before any sandbox
    bad = _create(srv, pidsLimit=10)
    assert bad.status_code == 400 and "pidsLimit" in bad.json()["message"]
    first = _sandbox(srv, pidsLimit=200)
    second = _sandbox(srv, pidsLimit=200)
    try:
        hog, started = _spawn(first, 400)
        assert 150 < started < 200  # its own limit stopped it
        _, more = _spawn(second, 400)
        peak = pidcap.pids_current(cgroup_parent)
        print(f"\nhost PIDs in 2 sandboxes asking for 400 each: {started} + {more}, "
              f"parent pids.current {peak} (cap {total})")
        assert peak is not None and peak <= total
        assert more < total - started  # the parent's cap stopped the second one
        # The host is full for sandboxes: a create is refused with a clear 503.
        full = _create(srv)
        assert full.status_code == 503, full.text
        assert full.json()["error"] == "insufficient_capacity"
        assert f"of the {total} processes" in full.json()["message"]
        hog.kill()
        deadline = time.monotonic() + 10
        while (pidcap.pids_current(cgroup_parent) or 0) > total - 100:
            assert time.monotonic() < deadline, "the sleeps did not end"
            time.sleep(0.05)
        third = _sandbox(srv)  # room again
        third.stop()
    finally:
        first.stop()
        second.stop()


# -- item 4: memory admission ----------------------------------------------------------------
def test_a_sandbox_s_own_pids_limit(make_sandbox: Callable[..., Sandbox]) -> None:
    """pidsLimit from the SDK: in the detail, and the kernel holds the sandbox to it."""
    sb = make_sandbox(pids_limit=64)
    assert sb.info.pids_limit == 64
    spawn = ("import os, signal\nkids = []\nfor _ in range(100):\n    try:\n"
             "        kids.append(os.posix_spawn('/bin/sleep', ['sleep', '30'], {}))\n"
             "    except OSError:\n        break\nprint(len(kids))\n"
             "for k in kids:\n    os.kill(k, signal.SIGKILL)\n")
    started = sb.exec(f"python3 -c \"{spawn}\"")
    assert 40 < int(started.stdout) < 64, started


def test_memory_admission_sums_running_and_paused_sandboxes(fresh_server: Factory) -> None:
    capacity = 1000
    srv = fresh_server(env={"SANDPORT_MEMORY_OVERCOMMIT": "1",
                            "SANDPORT_MEMORY_RESERVE_MIB": str(_mem_total_mib() - capacity)})
    cpus = os.cpu_count() or 1
    big = _sandbox(srv, memMiB=600, vcpus=cpus)
    try:
        refused = _create(srv, memMiB=600)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "insufficient_capacity"
        assert "400 MiB of 1000 MiB left" in refused.json()["message"]
        small = _sandbox(srv, memMiB=400, vcpus=cpus)  # vcpus are a cap each, never summed
        small.stop()
        big.pause()  # frozen: its memory is still held
        assert _create(srv, memMiB=500).status_code == 503
        big.resume()
        # Two creates at once for the last 400 MiB: exactly one gets it.
        answers: list[httpx.Response] = []
        threads = [threading.Thread(target=lambda: answers.append(_create(srv, memMiB=300)))
                   for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(a.status_code for a in answers) == [200, 503], [a.text for a in answers]
        with srv.client() as c:
            for a in answers:
                if a.status_code == 200:
                    c.put(f"/api/sandbox/{a.json()['id']}/stop")
        stat = os.statvfs(srv.data_dir)
        free_mib = stat.f_bavail * stat.f_frsize >> 20
        assert free_mib + 1024 <= 1024 * 1024, "this host has too much free disk for the test"
        disk = _create(srv, memMiB=64, diskSizeMiB=free_mib + 1024)
        assert disk.status_code == 503 and "not enough disk" in disk.json()["message"]
    finally:
        big.stop()
    again = _sandbox(srv, memMiB=1000)  # everything released: all of it fits
    again.stop()


# -- item 6: server memory under an output flood ------------------------------------------------
def test_output_flood_keeps_server_memory_bounded(fresh_server: Factory) -> None:
    bound = 32
    srv = fresh_server(env={"SANDPORT_BUFFER_MEMORY_MIB": str(bound)})
    assert srv.proc is not None
    sandboxes = [_sandbox(srv) for _ in range(3)]
    try:
        before = _rss_mib(srv.proc.pid)
        peak = before
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _rss_mib(srv.proc.pid))  # type: ignore[union-attr]
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            procs = [sb.processes.start("yes 0123456789abcdef | head -c 67108864",
                                        buffer_bytes=64 << 20)
                     for sb in sandboxes for _ in range(4)]
            deadline = time.monotonic() + 120
            while any(p.status == "running" for sb in sandboxes for p in sb.processes.list()):
                assert time.monotonic() < deadline, "the output did not all come through"
                time.sleep(0.1)
        finally:
            done.set()
            sampler.join()
        results = [p.wait(10) for p in procs]  # reading the kept output back is not kept
        kept = sum(len(r.stdout) for r in results)
        print(f"\nserver RSS {before:.0f} MiB before, {peak:.0f} MiB at the peak of 12 x 64 "
              f"MiB of output (bound {bound} MiB); {kept >> 20} MiB kept after")
        assert all(r.exit_code == 0 for r in results)  # nothing was lost to the commands
        assert kept <= bound << 20
        assert any(r.output_truncated for r in results)
        assert peak - before < bound + 64  # 790 MiB more before the bound
    finally:
        for sb in sandboxes:
            sb.stop()


# -- item 8: per-user kernel limits --------------------------------------------------------------
EXHAUST = """
import ctypes, fcntl, os, sys
libc = ctypes.CDLL(None, use_errno=True)
held = []
while True:
    fd = libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0:
        break
    held.append(fd)
pipes = 0
for _ in range(200):  # 1 MiB pipes: past fs.pipe-user-pages-soft (64 MiB by default)
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ
    except OSError:
        break
    pipes += 1
print(len(held), ctypes.get_errno(), pipes, flush=True)
sys.stdin.read()  # held until the test closes stdin
"""


def test_a_sandbox_exhausting_inotify_and_pipes_leaves_the_server_working(
    fresh_server: Factory,
) -> None:
    srv = fresh_server()
    hog = _sandbox(srv)
    other = _sandbox(srv)
    try:
        other.files.mkdir("/watched")
        proc = hog.processes.start(["python3", "-c", EXHAUST])
        line = next(iter(proc.stream())).text.split()
        try:
            instances, errno_, pipes = (int(x) for x in line)
            print(f"\nthe sandbox took {instances} inotify instances (then errno {errno_}) "
                  f"and {pipes} pipes of 1 MiB")
            assert errno_ == 24  # EMFILE: root's max_user_instances are all taken
            # The server's watches still work: a new one, on another sandbox.
            with other.files.watch("/watched") as watch:
                other.files.write("/watched/new.txt", "x")
                events = watch.events()
                event = next(events)
                assert (event.op, event.path) == ("CREATE", "/watched/new.txt")
            # And its pipes (a command's output through the agent of another sandbox).
            result = other.exec("head -c 200000 /dev/zero | wc -c")
            assert result.stdout.strip() == "200000"
        finally:
            proc.close_stdin()  # type: ignore[attr-defined]
            proc.wait(10)  # type: ignore[attr-defined]
    finally:
        hog.stop()
        other.stop()


def test_watches_share_one_inotify_instance(fresh_server: Factory) -> None:
    srv = fresh_server()
    assert srv.proc is not None

    def instances() -> int:
        fds = Path(f"/proc/{srv.proc.pid}/fd")  # type: ignore[union-attr]
        return sum(1 for fd in fds.iterdir()
                   if fd.is_symlink() and os.readlink(fd) == "anon_inode:inotify")

    sb = _sandbox(srv)
    try:
        for name in ("a", "b", "c"):
            sb.files.mkdir(f"/w/{name}", parents=True)
        watches = [sb.files.watch(f"/w/{name}") for name in ("a", "b", "c")]
        watches.append(sb.files.watch("/w", recursive=True))  # overlaps the three
        assert instances() == 1
        sb.files.write("/w/b/f", "1")
        for watch, path in ((watches[1], "/w/b/f"), (watches[3], "/w/b/f")):
            event = next(watch.events())
            assert (event.op, event.path) == ("CREATE", path)
        watches[3].stop()  # the shared directories stay watched for the others
        sb.files.write("/w/a/g", "1")
        assert next(watches[0].events()).path == "/w/a/g"
        for watch in watches[:3]:
            watch.stop()
    finally:
        sb.stop()
