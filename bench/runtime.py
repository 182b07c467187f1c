"""Runtime API figures: exec round trip, first output byte of a started process, file
write + read through the SDK, big process output.

    .venv/bin/python bench/runtime.py [--samples 50]

Starts its own ``sandport serve`` and one sandbox, drives it through the SDK (every call
goes through the edge proxy, as a user's would), and prints p50/p90 or MB/s. Peers in the
same run: bare ``runc exec`` on the same container (exec, first byte), and the host writing
and reading the same bytes straight into the sandbox's root (``/proc/<pid>/root``, no API:
the disk's own speed, the ceiling for file transfers).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.lifecycle import percentiles, timed  # noqa: E402
from sandport import Sandbox  # noqa: E402
from tests._server import ServerProcess  # noqa: E402

MIB = 1 << 20


def first_byte_ms(sb: Sandbox) -> float:
    start = time.perf_counter()
    proc = sb.processes.start("echo x")
    next(iter(proc.stream()))
    return (time.perf_counter() - start) * 1000


def bare_first_byte_ms(runc: list[str], sandbox_id: str) -> float:
    start = time.perf_counter()
    with subprocess.Popen([*runc, "exec", sandbox_id, "echo", "x"],
                          stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        proc.stdout.read(1)
        elapsed = (time.perf_counter() - start) * 1000
        proc.wait()
    return elapsed


def mb_per_s(size: int, seconds: float) -> float:
    return size / seconds / 1e6


def transfer(sb: Sandbox, size: int) -> tuple[float, float]:
    """(write MB/s, read MB/s) of ``size`` bytes: JSON write/read up to 1 MiB, streamed
    upload/download above."""
    data = os.urandom(size)
    if size <= MIB:
        write = timed(lambda: sb.files.write("/tmp/bench.bin", data))
        got: list[bytes] = []
        read = timed(lambda: got.append(sb.files.read("/tmp/bench.bin", format="bytes")))
    else:
        write = timed(lambda: sb.files.upload("/tmp/bench.bin", io.BytesIO(data)))
        sink = io.BytesIO()
        read = timed(lambda: sb.files.download("/tmp/bench.bin", sink))
        got = [sink.getvalue()]
    assert got[0] == data
    return mb_per_s(size, write / 1000), mb_per_s(size, read / 1000)


def direct(root: Path, size: int) -> tuple[float, float]:
    data = os.urandom(size)
    target = root / "tmp" / "direct.bin"

    def write() -> None:
        with open(target, "wb") as fh:
            fh.write(data)

    def read() -> None:
        assert target.read_bytes() == data

    return mb_per_s(size, timed(write) / 1000), mb_per_s(size, timed(read) / 1000)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sandport-bench-") as tmp:
        server = ServerProcess(Path(tmp) / "data").start()
        runc = ["runc", "--root", str(server.data_dir / "runc")]
        try:
            sb = Sandbox.create(api_key=server.api_key, base_url=server.base_url)
            sb.exec("true")
            exec_rtt = [timed(lambda: sb.exec("true")) for _ in range(args.samples)]
            bare = [timed(lambda: subprocess.run([*runc, "exec", sb.id, "true"], check=True))
                    for _ in range(args.samples // 2)]
            first = [first_byte_ms(sb) for _ in range(args.samples)]
            bare_first = [bare_first_byte_ms(runc, sb.id) for _ in range(args.samples // 2)]
            print(f"exec round trip (SDK):           {percentiles(exec_rtt)}")
            print(f"  peer: bare `runc exec true`:   {percentiles(bare)}")
            print(f"  ratio sandport / runc:         "
                  f"{statistics.median(exec_rtt) / statistics.median(bare):.2f}")
            print(f"start → first output byte:       {percentiles(first)}")
            print(f"  peer: `runc exec echo` first byte: {percentiles(bare_first)}")
            print(f"  ratio sandport / runc:         "
                  f"{statistics.median(first) / statistics.median(bare_first):.2f}")

            state = server.data_dir / "runc" / sb.id / "state.json"
            import json
            root = Path(f"/proc/{json.loads(state.read_text())['init_process_pid']}/root")
            for size in (MIB, 100 * MIB):
                best = max((transfer(sb, size) for _ in range(3)), key=sum)
                peer = max((direct(root, size) for _ in range(3)), key=sum)
                label = f"{size // MIB} MiB"
                print(f"file write {label:>7} (SDK):      {best[0]:8.0f} MB/s   "
                      f"peer (host writes the sandbox's root): {peer[0]:6.0f} MB/s   "
                      f"ratio {best[0] / peer[0]:.2f}")
                print(f"file read  {label:>7} (SDK):      {best[1]:8.0f} MB/s   "
                      f"peer (host reads the sandbox's root):  {peer[1]:6.0f} MB/s   "
                      f"ratio {best[1] / peer[1]:.2f}")

            proc = sb.processes.start("head -c 100000000 /dev/zero")
            start = time.perf_counter()
            total = sum(len(c.data) for c in proc.stream())
            seconds = time.perf_counter() - start
            bare_start = time.perf_counter()
            subprocess.run([*runc, "exec", sb.id, "head", "-c", "100000000", "/dev/zero"],
                           check=True, stdout=subprocess.DEVNULL)
            bare_s = time.perf_counter() - bare_start
            print(f"process output 100 MB (stream):  {mb_per_s(total, seconds):8.0f} MB/s   "
                  f"peer (runc exec to /dev/null): {mb_per_s(100_000_000, bare_s):6.0f} MB/s")
            sb.stop()
        finally:
            server.stop_all_sandboxes()
            server.stop()


if __name__ == "__main__":
    main()
