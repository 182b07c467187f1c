"""Sandbox lifecycle figures: create → first exec, exec round trip, stop, idle memory.

    .venv/bin/python bench/lifecycle.py [--samples 20] [--held 50]

Starts its own ``sandport serve`` (data in a temporary directory, images shared with the
tests), drives it through the SDK, and prints p50/p90 for each step, with the same step
done by bare ``runc`` on the same container as the peer (the floor any runc-based server
pays). Budgets are shared/DESIGN.md §7.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandport import Sandbox  # noqa: E402
from sandport.errors import NotSupported  # noqa: E402
from tests._server import ServerProcess  # noqa: E402


def percentiles(samples_ms: list[float]) -> str:
    ordered = sorted(samples_ms)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return f"p50 {statistics.median(ordered):7.1f} ms   p90 {p90:7.1f} ms   (n={len(ordered)})"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def mem_available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def cgroup_usage_mib(sandbox_id: str) -> float | None:
    for path in (f"/sys/fs/cgroup/memory/sandport/{sandbox_id}/memory.usage_in_bytes",
                 f"/sys/fs/cgroup/sandport/{sandbox_id}/memory.current"):
        try:
            return int(Path(path).read_text()) / 2**20
        except OSError:
            continue
    return None


def wake_latency(kw: dict[str, str], server: ServerProcess,
                 samples: int) -> tuple[list[float], list[float]]:
    """GET on a paused autoResume sandbox's URL (the request wakes it), and the same GET
    on the running sandbox, through the proxy."""
    sb = Sandbox.create(auto_resume=True, **kw)
    try:
        sb.exec("setsid python3 -m http.server 3000 >/dev/null 2>&1 &")
        sb.expose(3000)
        host = sb.get_exposed_url(3000).split("//")[1].rstrip("/")
        with httpx.Client(base_url=server.base_url, headers={"host": host}) as http:
            while http.get("/").status_code != 200:
                time.sleep(0.05)
            woken, warm = [], []
            for _ in range(samples):
                sb.pause()
                woken.append(timed(lambda: http.get("/").raise_for_status()))
                warm.append(timed(lambda: http.get("/").raise_for_status()))
        return woken, warm
    finally:
        sb.stop()


def policy_latency(kw: dict[str, str], server: ServerProcess,
                   n: int) -> tuple[list[float], list[float], list[float]]:
    """PUT /network (egress rules replaced in the sandbox's namespace, host rule added or
    removed), POST /refresh (a new runtime token); peer: iptables-restore of the same table
    in the same namespace by hand."""
    sb = Sandbox.create(**kw)
    try:
        url = f"/api/sandbox/{sb.id}/network"
        with server.client() as api:
            updates = [timed(lambda i=i: api.put(url, json={"allowInternetAccess": i % 2 == 0})
                             .raise_for_status()) for i in range(n)]
            refreshes = [timed(lambda: api.post(f"/api/sandbox/{sb.id}/refresh")
                               .raise_for_status()) for _ in range(n)]
        table = subprocess.run(["ip", "netns", "exec", f"sp-{sb.id}", "iptables-save"],
                               capture_output=True, text=True, check=True).stdout
        bare = [timed(lambda: subprocess.run(
            ["ip", "netns", "exec", f"sp-{sb.id}", "iptables-restore", "-w"], input=table,
            text=True, check=True)) for _ in range(n)]
        return updates, bare, refreshes
    finally:
        sb.stop()


def suspend_latency(kw: dict[str, str], n: int) -> tuple[list[float], list[float]] | None:
    """Suspend to disk (runc checkpoint through CRIU) and resume (restore) via the API, of
    a sandbox running a Python server; None where the host cannot (the API says why)."""
    sb = Sandbox.create(**kw)
    try:
        sb.exec("setsid python3 -m http.server 3000 >/dev/null 2>&1 &")
        try:
            sb.suspend()
        except NotSupported as exc:
            print(f"suspend to disk: not on this host: {exc.message}")
            return None
        sb.resume()
        suspends, restores = [], []
        for _ in range(n):
            suspends.append(timed(sb.suspend))
            restores.append(timed(sb.resume))
        return suspends, restores
    finally:
        sb.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--execs", type=int, default=100)
    parser.add_argument("--held", type=int, default=50)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sandport-bench-") as tmp:
        server = ServerProcess(Path(tmp) / "data").start()
        kw = {"api_key": server.api_key, "base_url": server.base_url}
        runc = ["runc", "--root", str(server.data_dir / "runc")]
        try:
            Sandbox.create(**kw).stop()  # warm: image resolved, caches hot

            first_exec, stops, sandboxes = [], [], []
            for _ in range(args.samples):
                start = time.perf_counter()
                sb = Sandbox.create(**kw)
                sb.exec("true")
                first_exec.append((time.perf_counter() - start) * 1000)
                sandboxes.append(sb)
            sb = sandboxes[0]
            exec_rtt = [timed(lambda: sb.exec("true")) for _ in range(args.execs)]
            bare_exec = [timed(lambda: subprocess.run([*runc, "exec", sb.id, "true"],
                                                      check=True))
                         for _ in range(args.execs // 2)]
            pauses, resumes, bare_pause = [], [], []
            for _ in range(args.execs // 4):
                pauses.append(timed(sb.pause))
                resumes.append(timed(sb.resume))
                bare_pause.append(timed(lambda: subprocess.run([*runc, "pause", sb.id],
                                                               check=True)))
                subprocess.run([*runc, "resume", sb.id], check=True)
            wake, warm = wake_latency(kw, server, args.execs // 4)
            policy, bare_policy, refresh = policy_latency(kw, server, args.execs // 4)
            disk = suspend_latency(kw, args.samples // 2)
            for sb in sandboxes:
                stops.append(timed(sb.stop))

            time.sleep(2)
            before = mem_available_kib()
            held = [Sandbox.create(**kw) for _ in range(args.held)]
            time.sleep(5)  # let page cache and slab settle
            after = mem_available_kib()
            per_sandbox_mib = (before - after) / 1024 / args.held
            cgroup_mib = [cgroup_usage_mib(sb.id) for sb in held]
            for sb in held:
                sb.stop()

            print(f"create → first exec (true):    {percentiles(first_exec)}   budget p50 ≤ 150")
            print(f"exec round trip via SDK:       {percentiles(exec_rtt)}   budget p50 ≤ 15")
            print(f"  peer: bare `runc exec true`: {percentiles(bare_exec)}")
            ratio = statistics.median(exec_rtt) / statistics.median(bare_exec)
            print(f"  ratio sandport / bare runc:  {ratio:.2f}")
            print(f"pause (freezer) via the API:   {percentiles(pauses)}")
            print(f"resume via the API:            {percentiles(resumes)}")
            print(f"  peer: bare `runc pause`:     {percentiles(bare_pause)}")
            if disk is not None:
                print(f"suspend to disk via the API:   {percentiles(disk[0])}")
                print(f"resume from disk (restore):    {percentiles(disk[1])}")
            print(f"wake on request (autoResume):  {percentiles(wake)}")
            print(f"  peer: same GET, not paused:  {percentiles(warm)}")
            print(f"network policy change (PUT):   {percentiles(policy)}")
            print(f"  peer: bare iptables-restore: {percentiles(bare_policy)}")
            print(f"token refresh (POST):          {percentiles(refresh)}")
            print(f"stop:                          {percentiles(stops)}")
            print(f"host memory per idle sandbox:  {per_sandbox_mib:.2f} MiB "
                  f"({args.held} held; MemAvailable delta)   budget ≤ 10 MiB")
            if all(m is not None for m in cgroup_mib):
                mean = statistics.mean(m for m in cgroup_mib if m is not None)
                print(f"  charged to each sandbox's memory cgroup: {mean:.2f} MiB (mean)")
        finally:
            server.stop_all_sandboxes()
            server.stop()


if __name__ == "__main__":
    main()
