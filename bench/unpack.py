"""How fast sandport unpacks a layer, against GNU tar on the same file in the same run.

    .venv/bin/python bench/unpack.py [--tree DIR] [--runs 3] [--zstd] [--compare] [--into DIR]

A tar of DIR (default: the built-in python image's rootfs, else /usr) is gzipped (level 6,
as registries' layers are) and optionally zstd-compressed; each run unpacks it with
``unpack_layer`` and with ``tar --numeric-owner -xzf`` into fresh directories on the same
filesystem, in rounds. MB/s are uncompressed tar bytes per second, best of the runs.
``--compare`` adds the unpacker with its read-ahead thread off, and the tar parsers alone
(stdlib ``tarfile`` in stream mode against sandport's reader, reading every byte) and
zlib's inflate against ISA-L's.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from isal import isal_zlib

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from sandport.runtime import unpack  # noqa: E402
from sandport.runtime.images._tar import TarReader  # noqa: E402

PYTHON_ROOTFS = Path("/var/tmp/sandport-test-images/python/current/rootfs")


def timed(work: Callable[[Path], None], scratch: Path) -> float:
    """Outputs are kept until the end: deleting 10,000 files between runs (ext4 with
    discard here) made the next run's system time vary tenfold."""
    into = Path(tempfile.mkdtemp(dir=scratch))
    os.sync()  # the last run's writeback must not land in this one's time
    start = time.perf_counter()
    work(into)
    return time.perf_counter() - start


def sandport(blob: Path) -> Callable[[Path], None]:
    def work(into: Path) -> None:
        with blob.open("rb") as source:
            unpack.unpack_layer(source, into)
    return work


def gnu_tar(blob: Path, flag: str) -> Callable[[Path], None]:
    def work(into: Path) -> None:
        subprocess.run(["tar", "--numeric-owner", flag, "-xf", str(blob), "-C", str(into)],
                       check=True)
    return work


def without_read_ahead(work: Callable[[Path], None]) -> Callable[[Path], None]:
    class Inline:
        def __init__(self, items: object, depth: int = 0) -> None:
            self._items = items

        def __iter__(self) -> object:
            return self._items

        def close(self) -> None:
            pass

    def run(into: Path) -> None:
        saved = unpack.ReadAhead
        unpack.ReadAhead = Inline  # type: ignore[assignment,misc]
        try:
            work(into)
        finally:
            unpack.ReadAhead = saved  # type: ignore[misc]
    return run


def parse_rates(tar_bytes: bytes) -> tuple[float, float]:
    """MB/s of stdlib tarfile ("r|") and of TarReader over the same tar in memory."""
    sink = open("/dev/null", "wb")  # noqa: SIM115
    start = time.perf_counter()
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r|") as archive:
        for member in archive:
            if member.isreg():
                data = archive.extractfile(member)
                assert data is not None
                shutil.copyfileobj(data, sink, 1 << 20)
    stdlib = time.perf_counter() - start
    chunks = (tar_bytes[i:i + (1 << 20)] for i in range(0, len(tar_bytes), 1 << 20))
    reader = TarReader(chunks)
    start = time.perf_counter()
    while (entry := reader.next_entry()) is not None:
        if entry.kind == b"0":
            reader.copy_data(sink.fileno())
    ours = time.perf_counter() - start
    sink.close()
    mb = len(tar_bytes) / 1e6
    return mb / stdlib, mb / ours


def inflate_rates(blob: bytes) -> tuple[float, float]:
    """MB/s (uncompressed) of zlib's and ISA-L's inflate over the gzip layer, 1 MiB at a time."""
    rates = []
    for module in (zlib, isal_zlib):
        start, out = time.perf_counter(), 0
        inflater = module.decompressobj(16 + zlib.MAX_WBITS)
        for i in range(0, len(blob), 1 << 20):
            pending = blob[i:i + (1 << 20)]
            while pending:
                out += len(inflater.decompress(pending, 1 << 20))
                pending = inflater.unconsumed_tail
        rates.append(out / 1e6 / (time.perf_counter() - start))
    return rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", type=Path,
                        default=PYTHON_ROOTFS if PYTHON_ROOTFS.is_dir() else Path("/usr"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--zstd", action="store_true", help="also a zstd layer")
    parser.add_argument("--compare", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--into", type=Path, default=Path("/var/tmp"),
                        help="where the layers are unpacked (e.g. /dev/shm: no disk)")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="sandport-bench-unpack-", dir=args.into))
    try:
        plain = scratch / "layer.tar"
        subprocess.run(["tar", "-C", str(args.tree), "-cf", str(plain), "."], check=True)
        blob = scratch / "layer.tar.gz"
        with blob.open("wb") as out:
            subprocess.run(["gzip", "-6", "-c", str(plain)], stdout=out, check=True)
        size = plain.stat().st_size
        files = sum(1 for _ in args.tree.rglob("*"))
        print(f"tree {args.tree}: {files} entries, tar {size / 1e6:.1f} MB, "
              f"gzip {blob.stat().st_size / 1e6:.1f} MB, runs {args.runs} (best)")

        works = [("sandport unpack_layer, gzip", sandport(blob)),
                 ("GNU tar -xzf", gnu_tar(blob, "-z"))]
        if args.zstd:
            zst = scratch / "layer.tar.zst"
            subprocess.run(["zstd", "-q", "-3", "-T0", str(plain), "-o", str(zst)], check=True)
            works += [("sandport unpack_layer, zstd", sandport(zst)),
                      ("GNU tar --zstd -xf", gnu_tar(zst, "--zstd"))]
        if args.compare:
            works.append(("sandport, no read-ahead thread, gzip",
                          without_read_ahead(sandport(blob))))
        best = dict.fromkeys((label for label, _ in works), float("inf"))
        for _ in range(args.runs):  # rounds, so that a busy moment hits all alike
            for label, work in works:
                best[label] = min(best[label], timed(work, scratch))
        gnu = best["GNU tar -xzf"]
        for label, seconds in best.items():
            print(f"  {label:40s} {seconds:6.2f} s  {size / 1e6 / seconds:7.1f} MB/s  "
                  f"{gnu / seconds:5.2f}x GNU tar -xzf's speed")
        if args.compare:
            stdlib, ours = parse_rates(plain.read_bytes())
            print(f"  parse only, tar in memory: tarfile r| {stdlib:.0f} MB/s, "
                  f"TarReader {ours:.0f} MB/s")
            with_zlib, with_isal = inflate_rates(blob.read_bytes())
            print(f"  inflate only: zlib {with_zlib:.0f} MB/s, ISA-L {with_isal:.0f} MB/s")
    finally:
        if not args.keep:
            shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
