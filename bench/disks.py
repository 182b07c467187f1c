"""What disk limits cost: create → first exec, stop, writes, host memory per held sandbox,
with each sandbox on a filesystem of its own (runtime/disks.py) against the same server
code with ``--disk-limits off`` (the upper directory on the host's disk), in one run.

    .venv/bin/python bench/disks.py [--samples 30] [--held 20] [--held-mem-mib 64]

``--held 500`` is the density figure of DESIGN.md §7 (idle sandboxes held at once); the
held sandboxes ask for ``--held-mem-mib`` each, so memory admission lets that many in.

Two servers run side by side and their samples alternate, so both meet the same noise of
this shared machine; each figure is printed with its peer and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandport import Sandbox  # noqa: E402
from tests._server import ServerProcess  # noqa: E402

MODES = ("auto", "off")


def p50(samples: list[float]) -> float:
    return statistics.median(samples)


def line(what: str, on: list[float], off: list[float], unit: str = "ms") -> str:
    return (f"{what:<28} limits {p50(on):7.1f} {unit}   off {p50(off):7.1f} {unit}   "
            f"ratio {p50(on) / p50(off):.2f}   (p50, n={len(on)})")


def mem_available_kib() -> int:
    for row in Path("/proc/meminfo").read_text().splitlines():
        if row.startswith("MemAvailable:"):
            return int(row.split()[1])
    raise RuntimeError("no MemAvailable")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--held", type=int, default=20)
    parser.add_argument("--size-mib", type=int, default=4096)
    parser.add_argument("--held-mem-mib", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sandport-bench-disks-") as tmp:
        servers = {mode: ServerProcess(Path(tmp) / f"data-{mode}",
                                       env={"SANDPORT_DISK_LIMITS": mode}).start()
                   for mode in MODES}
        kw = {mode: {"api_key": s.api_key, "base_url": s.base_url}
              for mode, s in servers.items()}
        first: dict[str, list[float]] = {m: [] for m in MODES}
        stops: dict[str, list[float]] = {m: [] for m in MODES}
        writes: dict[str, list[float]] = {m: [] for m in MODES}
        held_mib: dict[str, float] = {}
        held_s: dict[str, float] = {}
        try:
            for mode in MODES:  # warm: image resolved, the first disk of the size made
                Sandbox.create(disk_size_mib=args.size_mib, **kw[mode]).stop()
            for _ in range(args.samples):
                for mode in MODES:
                    start = time.perf_counter()
                    sb = Sandbox.create(disk_size_mib=args.size_mib, **kw[mode])
                    sb.exec("true")
                    first[mode].append((time.perf_counter() - start) * 1000)
                    start = time.perf_counter()
                    sb.stop()
                    stops[mode].append((time.perf_counter() - start) * 1000)
            for _ in range(max(1, args.samples // 10)):
                for mode in MODES:
                    with Sandbox.create(disk_size_mib=args.size_mib, **kw[mode]) as sb:
                        done = sb.exec("dd if=/dev/zero of=/f bs=1M count=200 conv=fsync "
                                       "2>&1 | tail -1")
                        # "... copied, 0.4 s, 500 MB/s": seconds are the third field from
                        # the end
                        writes[mode].append(float(done.stdout.split()[-4]) * 1000)
            for mode in MODES:
                time.sleep(2)
                before = mem_available_kib()
                start = time.perf_counter()
                held = [Sandbox.create(disk_size_mib=args.size_mib, mem_mib=args.held_mem_mib,
                                       **kw[mode]) for _ in range(args.held)]
                held_s[mode] = time.perf_counter() - start
                time.sleep(5)  # let page cache and slab settle
                held_mib[mode] = (before - mem_available_kib()) / 1024 / args.held
                answered = sum(sb.exec("true").exit_code == 0 for sb in held)
                if answered != args.held:
                    raise RuntimeError(f"{args.held - answered} held sandboxes did not answer")
                for sb in held:
                    sb.stop()
        finally:
            for server in servers.values():
                server.stop_all_sandboxes()
                server.stop()
        print(f"disk {args.size_mib} MiB per sandbox; 'off' is --disk-limits off")
        print(line("create → first exec (true):", first["auto"], first["off"]))
        print(line("stop:", stops["auto"], stops["off"]))
        print(line("write 200 MiB + fsync:", writes["auto"], writes["off"]))
        print(f"{'host memory per idle sandbox:':<28} limits {held_mib['auto']:7.2f} MiB  "
              f"off {held_mib['off']:7.2f} MiB   ({args.held} held; MemAvailable delta)")
        print(f"{'creating the held ones:':<28} limits {held_s['auto']:7.1f} s    "
              f"off {held_s['off']:7.1f} s     ratio {held_s['auto'] / held_s['off']:.2f}   "
              "(each of them answered an exec)")


if __name__ == "__main__":
    main()
