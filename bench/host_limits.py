"""What sandboxes can take from the host and the server (issue #13 items 3 and 6), printed
as figures; run it on a tree with PYTHONPATH pointing at an older src/ for the "before".

    .venv/bin/python bench/host_limits.py pids  [--sandboxes 3] [--cap 1500]
    .venv/bin/python bench/host_limits.py flood [--sandboxes 3] [--bound-mib 512]

pids: each sandbox forks up to 1100 sleeps (bounded; killed at the end); prints the host's
process count before and after, and whether one more create is admitted. With --cap the
server gets that --max-pids-total on a cgroup parent of its own.
flood: four processes per sandbox print 64 MiB each with a 64 MiB output buffer; prints
the server's RSS before, at the peak and after (--bound-mib is --buffer-memory-mib).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandport import Sandbox  # noqa: E402
from tests._server import ServerProcess  # noqa: E402
from tests.integration.test_limits import SPAWN  # noqa: E402


def host_processes() -> int:
    return sum(1 for p in os.listdir("/proc") if p.isdigit())


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def sandboxes(srv: ServerProcess, n: int) -> list[Sandbox]:
    return [Sandbox.create(api_key=srv.api_key, base_url=srv.base_url) for _ in range(n)]


def pids(srv: ServerProcess, n: int) -> None:
    before = host_processes()
    made: list[Sandbox] = []
    try:
        for _ in range(n):
            with srv.client() as api:
                answer = api.post("/api/sandbox", json={})
            if answer.status_code != 200:
                print(f"create refused: {answer.status_code} {answer.json()['message']}")
                continue
            sb = Sandbox.get(answer.json()["id"], api_key=srv.api_key, base_url=srv.base_url)
            made.append(sb)
            started = sb.processes.start(["python3", "-c", SPAWN.format(count=1100)])
            print(f"sandbox {sb.id}: {next(iter(started.stream())).text.strip()} sleeps")
        print(f"{n} sandboxes: host processes {before} -> {host_processes()}")
        with srv.client() as api:
            answer = api.post("/api/sandbox", json={})
            print(f"one more create while they run: {answer.status_code}")
            if answer.status_code == 200:
                api.put(f"/api/sandbox/{answer.json()['id']}/stop")
    finally:
        for sb in made:
            sb.stop()
            sb.close()


def flood(srv: ServerProcess, n: int) -> None:
    assert srv.proc is not None
    pid = srv.proc.pid
    made = sandboxes(srv, n)
    try:
        before = peak = rss_mib(pid)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_mib(pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.monotonic()
        for sb in made:
            for _ in range(4):
                sb.processes.start("yes 0123456789abcdef | head -c 67108864",
                                   buffer_bytes=64 << 20)
        while any(p.status == "running" for sb in made for p in sb.processes.list()):
            time.sleep(0.1)
        done.set()
        sampler.join()
        print(f"{n} sandboxes x 4 x 64 MiB of output: server RSS {before:.0f} MiB before, "
              f"{peak:.0f} MiB at the peak, {rss_mib(pid):.0f} MiB after "
              f"({time.monotonic() - started:.1f} s)")
    finally:
        for sb in made:
            sb.stop()
            sb.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["pids", "flood"])
    parser.add_argument("--sandboxes", type=int, default=3)
    parser.add_argument("--cap", type=int, help="--max-pids-total (pids)")
    parser.add_argument("--bound-mib", type=int, help="--buffer-memory-mib (flood)")
    args = parser.parse_args()
    env = {}
    if args.cap:
        env = {"SANDPORT_MAX_PIDS_TOTAL": str(args.cap), "SANDPORT_CGROUP_PARENT": "sandport-bench"}
    if args.bound_mib:
        env["SANDPORT_BUFFER_MEMORY_MIB"] = str(args.bound_mib)
    srv = ServerProcess(Path(tempfile.mkdtemp(prefix="sandport-bench-")) / "data",
                        env=env).start()
    try:
        (pids if args.what == "pids" else flood)(srv, args.sandboxes)
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
