"""Image figures: pulling from a registry against skopeo, create → first exec from a pulled
image against the built-in python image, and what a stack of overlay layers costs.

    .venv/bin/python bench/images.py [--runs 3] [--samples 15] [--mounts 50] [--total-mb 220]
                                     [--tmp /var/tmp] [--timeline] [--only pull|build]

Everything runs on loopback, in a temporary directory: a plain-HTTP registry
(tests/registries.py) holding tests/oci_images.py's big image (5 layers, ~220 MB unpacked,
~150 MiB gzipped) and two busybox images (1 layer, and 20 layers of a few files each).

1. Pull: ``skopeo copy docker://… dir:…`` (the peer: it downloads and checks digests only)
   against ``POST /api/images/pull`` on a fresh server with an empty images directory (it
   downloads, checks and unpacks every layer), alternating, each run into a fresh directory;
   GNU ``tar -xzf`` of the same layers, one after the other, is the unpacking reference.
   The NDJSON events' arrival times split sandport's wall time into download and unpack.
2. create → first ``exec("true")`` on one server (the tests' shared images directory), from
   the built-in ``python`` image, the pulled big image and the 1- and 20-layer images,
   round robin; each sandbox is stopped after its sample, outside the timing.
4. Dockerfile builds (``--only build``): a build from the built-in python image (RUN steps
   writing 20 MB, COPY of a 300-file source tree, a compile step) cold, then unchanged, then
   with one line of one source file changed; the peer is a cold build of the same
   Dockerfile in the same run (the ratio says what the cache saves), and ``tar -c`` of the
   context (what sending it costs, the floor of any rebuild).
3. Overlay mount (and first lookup, and unmount) with 1, 5, 20 and 60 lower directories,
   named as the layer store names them (so the long stacks take the fsconfig path, as real
   ones do), and what flattening the big image into one tree would cost instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandport import Sandbox  # noqa: E402
from sandport.runtime.mounts import (  # noqa: E402
    is_mounted,
    mount_overlay,
    unmount,
    unmount_below,
)
from tests._server import IMAGES_DIR, ServerProcess  # noqa: E402
from tests.oci_images import Image, Layer, big_image, busybox_image  # noqa: E402
from tests.registries import Registries, Registry  # noqa: E402
from tests.registry_client import push_image  # noqa: E402

MB = 1e6
POLICY = {"default": [{"type": "insecureAcceptAnything"}]}


def p50_p90(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def api(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers={"x-api-key": server.api_key},
                        timeout=600)


# --- 1. pull ---------------------------------------------------------------------------

@dataclass
class PullRun:
    """One sandport pull, seen from the client: wall time and when each event arrived."""

    wall_s: float
    events: list[tuple[float, dict[str, object]]] = field(default_factory=list)
    server_s: float | None = None  # the server's own "pulled ... in Xs"

    def phases(self) -> dict[str, float]:
        """last byte downloaded, time spent unpacking (summed over layers, from each
        layer's "unpacking" to its "done"), and the tail after the last byte."""
        downloaded = [t for t, e in self.events
                      if e.get("status") == "downloading" and e.get("done") == e.get("total")]
        started: dict[object, float] = {}
        unpacking = 0.0
        for t, e in self.events:
            if e.get("status") == "unpacking":
                started[e["layer"]] = t
            elif e.get("status") == "done" and e.get("layer") in started:
                unpacking += t - started.pop(e["layer"])
        last_byte = max(downloaded, default=0.0)
        return {"last_byte_s": last_byte, "unpack_s": unpacking,
                "tail_s": self.wall_s - last_byte}


    def timeline(self) -> list[str]:
        """Per layer: size, first and last "downloading" event, "unpacking" to "done" (s
        from the request)."""
        marks: dict[str, dict[str, float]] = {}
        sizes: dict[str, int] = {}
        for t, e in self.events:
            layer, status, total = e.get("layer"), e.get("status"), e.get("total")
            if isinstance(layer, str) and isinstance(status, str):
                marks.setdefault(layer, {}).setdefault(f"{status} first", t)
                marks[layer][f"{status} last"] = t
                if isinstance(total, int):
                    sizes[layer] = total
        lines = []
        for layer, at in marks.items():
            shown = {k: f"{at[k]:6.2f}" if k in at else "     -" for k in (
                "downloading first", "downloading last", "unpacking first", "done last")}
            lines.append(f"  {layer[7:19]} {sizes.get(layer, 0) / MB:6.1f} MB  download "
                         f"{shown['downloading first']} → {shown['downloading last']}   "
                         f"unpack {shown['unpacking first']} → {shown['done last']}")
        return lines

def skopeo_copy(policy: Path, ref: str, into: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["skopeo", "--policy", str(policy), "copy", "--quiet",
                    "--src-tls-verify=false", f"docker://{ref}", f"dir:{into}"], check=True)
    return time.perf_counter() - start


def sandport_pull(server: ServerProcess, ref: str) -> PullRun:
    with api(server) as client:
        start = time.perf_counter()
        events: list[tuple[float, dict[str, object]]] = []
        with client.stream("POST", "/api/images/pull", json={"ref": ref}) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if line.strip():
                    events.append((time.perf_counter() - start, json.loads(line)))
        wall = time.perf_counter() - start
    if "image" not in events[-1][1]:
        raise RuntimeError(f"the pull of {ref} ended with {events[-1][1]}")
    run = PullRun(wall, events)
    found = re.findall(r"pulled \S+ \(.*\) in ([\d.]+)s", server.log_path.read_text())
    run.server_s = float(found[-1]) if found else None
    return run


def gnu_tar(blobs: list[Path], into: Path) -> float:
    """Each layer into a directory of its own, bottom first, as the layer store does."""
    start = time.perf_counter()
    for index, blob in enumerate(blobs):
        (into / str(index)).mkdir(parents=True)
        subprocess.run(["tar", "--numeric-owner", "-xzf", str(blob), "-C",
                        str(into / str(index))], check=True)
    return time.perf_counter() - start


def pull_server(where: Path, registry: Registry, images: Path | None) -> ServerProcess:
    where.mkdir(parents=True)
    env = {"SANDPORT_INSECURE_REGISTRIES": registry.host}
    if images is not None:  # else the tests' shared images directory (python is built)
        env |= {"SANDPORT_IMAGES_DIR": str(images), "SANDPORT_BUILD_IMAGES": " "}
    return ServerProcess(where / "data", env=env)


def bench_pull(tmp: Path, registry: Registry, ref: str, image: Image, runs: int,
               timeline: bool) -> dict[str, list[float]]:
    tmp.mkdir()
    policy = tmp / "policy.json"
    policy.write_text(json.dumps(POLICY))
    blobs = []
    for index, layer in enumerate(image.layers):
        blobs.append(tmp / f"layer{index}.tar.gz")
        blobs[-1].write_bytes(layer.blob)
    # Every run's files stay until the end: on an ext4 without a journal (this host's)
    # each file created within seconds of mass deletes on the same block group first scans
    # past the recently deleted inodes, which made a run after an rmtree 3-5x slower.
    got: dict[str, list[float]] = {"skopeo": [], "sandport": [], "tar": []}
    profiles: list[PullRun] = []
    for run in range(runs):
        os.sync()  # the last run's writeback must not land in this one's time
        into = tmp / f"skopeo{run}"
        got["skopeo"].append(skopeo_copy(policy, ref, into))

        images = tmp / f"images{run}"
        server = pull_server(tmp / f"pull{run}", registry, images).start()
        try:
            os.sync()
            profiles.append(sandport_pull(server, ref))
            got["sandport"].append(profiles[-1].wall_s)
        finally:
            server.stop()

        os.sync()
        into = tmp / f"tar{run}"
        got["tar"].append(gnu_tar(blobs, into))
        print(f"  pull run {run + 1}: skopeo {got['skopeo'][-1]:.2f} s   sandport "
              f"{got['sandport'][-1]:.2f} s   tar -xzf {got['tar'][-1]:.2f} s", flush=True)
    median_run = sorted(profiles, key=lambda r: r.wall_s)[len(profiles) // 2]
    if timeline:
        print(f"  the median sandport pull ({median_run.wall_s:.2f} s), per layer, seconds "
              "from the request:")
        print("\n".join(median_run.timeline()))
    for key, value in median_run.phases().items():
        got[key] = [value]
    if median_run.server_s is not None:
        got["server_s"] = [median_run.server_s]
    return got


# --- 2. create → first exec ----------------------------------------------------------

def first_exec_ms(server: ServerProcess, image: str) -> float:
    start = time.perf_counter()
    sb = Sandbox.create(image, api_key=server.api_key, base_url=server.base_url)
    try:
        result = sb.exec("true")
        elapsed = (time.perf_counter() - start) * 1000
        if result.exit_code != 0:
            raise RuntimeError(f"`true` in {image} exited {result.exit_code}: {result.stderr}")
        return elapsed
    finally:
        sb.stop()
        sb.close()


def bench_first_exec(server: ServerProcess, images: dict[str, str],
                     samples: int) -> dict[str, list[float]]:
    """Round robin over ``images`` so that drift on the host falls on each alike."""
    for image in images.values():
        first_exec_ms(server, image)  # warm: pulled, caches hot
    got: dict[str, list[float]] = {label: [] for label in images}
    for _ in range(samples):
        for label, image in images.items():
            got[label].append(first_exec_ms(server, image))
    return got


def bench_snapshot(server: ServerProcess, mb: int, runs: int) -> dict[str, list[float]]:
    """Snapshots of a python sandbox with ``mb`` MB written (ten files of random bytes):
    the API call's time and how long the sandbox stood frozen (the server's log)."""
    got: dict[str, list[float]] = {"snapshot_s": [], "frozen_ms": []}
    with Sandbox.create("python", api_key=server.api_key, base_url=server.base_url) as sb:
        done = sb.exec(f"mkdir /data && for i in 0 1 2 3 4 5 6 7 8 9; do head -c "
                       f"{mb * 100_000} /dev/urandom > /data/f$i; done && sync")
        if done.exit_code != 0:
            raise RuntimeError(done.stderr)
        for run in range(runs):
            start = time.perf_counter()
            sb.snapshot(f"bench-snap:{run}")
            got["snapshot_s"].append(time.perf_counter() - start)
            frozen = re.findall(r"snapshot bench-snap:\d+ \(\S+\), frozen (\d+) ms",
                                server.log_path.read_text())
            got["frozen_ms"].append(float(frozen[-1]))
    return got


# --- 4. Dockerfile builds ----------------------------------------------------------------

BUILD_DOCKERFILE = """\
FROM python
RUN mkdir -p /app/data && for i in 1 2 3 4; do head -c 5000000 /dev/urandom > /app/data/$i; done
COPY requirements.txt /app/
RUN sort /app/requirements.txt > /app/deps.txt
COPY src/ /app/src/
RUN python3 -m compileall -q /app/src
ENV APP=/app
CMD ["python3", "/app/src/main.py"]
"""


def build_context(root: Path) -> None:
    (root / "src").mkdir(parents=True)
    (root / "Dockerfile").write_text(BUILD_DOCKERFILE)
    (root / "requirements.txt").write_text("".join(f"pkg{i}==1.{i}\n" for i in range(50)))
    for i in range(300):
        (root / "src" / f"mod{i}.py").write_text(
            "".join(f"def f{j}(x):\n    return x * {j}\n\n" for j in range(40)))
    (root / "src" / "main.py").write_text("print('main')\n")


def timed_build(server: ServerProcess, name: str, context: Path) -> tuple[float, int]:
    """Seconds for a build through the SDK, and how many layer steps were cached."""
    from sandport import Images
    events: list[dict[str, object]] = []
    with Images(api_key=server.api_key, base_url=server.base_url) as images:
        start = time.perf_counter()
        images.build(name, context, on_progress=events.append)
        took = time.perf_counter() - start
    return took, sum(1 for e in events if e.get("cached") is True)


def bench_build(tmp: Path, runs: int) -> dict[str, list[float]]:
    got: dict[str, list[float]] = {"cold": [], "unchanged": [], "one_line": [], "tar": []}
    server = ServerProcess(tmp / "build-server").start()
    try:
        for run in range(runs):
            context = tmp / f"context-{run}"
            build_context(context)
            # a fresh cold build each run: a different RUN line keeps the cache out of it
            (context / "Dockerfile").write_text(BUILD_DOCKERFILE.replace(
                "mkdir -p /app/data", f"mkdir -p /app/data && echo run-{run}-{time.time()}"))
            cold, _ = timed_build(server, f"bench-build:{run}", context)
            unchanged, cached = timed_build(server, f"bench-build:{run}", context)
            if cached != 5:
                raise RuntimeError(f"an unchanged rebuild re-ran steps ({cached} of 5 cached)")
            (context / "src" / "mod7.py").write_text(
                (context / "src" / "mod7.py").read_text() + "# one more line\n")
            one_line, cached = timed_build(server, f"bench-build:{run}", context)
            start = time.perf_counter()
            subprocess.run(["tar", "-cf", "/dev/null", "-C", str(context), "."], check=True)
            got["tar"].append(time.perf_counter() - start)
            got["cold"].append(cold)
            got["unchanged"].append(unchanged)
            got["one_line"].append(one_line)
            print(f"  run {run}: cold {cold:.2f} s, unchanged {unchanged:.3f} s, one line "
                  f"changed {one_line:.2f} s ({cached} of 5 steps cached)", flush=True)
    finally:
        server.stop_all_sandboxes()
        with api(server) as client, contextlib.suppress(httpx.HTTPError):
            for run in range(runs):
                client.delete(f"/api/images/bench-build:{run}")
        server.stop()
    return got


def report_build(got: dict[str, list[float]]) -> None:
    med = {key: statistics.median(values) for key, values in got.items()}
    print(f"\nDockerfile build (7 steps, 20 MB written, 300 source files), median of "
          f"{len(got['cold'])}")
    print(f"  cold build:               {med['cold']:6.2f} s")
    print(f"  unchanged rebuild:        {med['unchanged']:6.3f} s   ratio to cold "
          f"{med['unchanged'] / med['cold']:.3f}   (tar -c of the context "
          f"{med['tar']:.3f} s)")
    print(f"  one line changed:         {med['one_line']:6.2f} s   ratio to cold "
          f"{med['one_line'] / med['cold']:.2f}")


# --- 3. stacked overlays ---------------------------------------------------------------

@contextlib.contextmanager
def mounted(lowers: list[Path], where: Path) -> Iterator[tuple[Path, float]]:
    """An overlay of ``lowers`` at ``where/mnt`` and the µs its mount took."""
    for name in ("upper", "work", "mnt"):
        (where / name).mkdir(parents=True)
    target = where / "mnt"
    start = time.perf_counter()
    mount_overlay(lowers, where / "upper", where / "work", target)
    elapsed = (time.perf_counter() - start) * 1e6
    try:
        yield target, elapsed
    finally:
        if is_mounted(target):
            unmount(target)


def fake_layers(root: Path, count: int) -> list[Path]:
    """``count`` small layer directories named like the store's (``<64 hex>/fs``), top
    first; the bottom one holds bin/sh, each one file of its own."""
    lowers = []
    for index in range(count):
        fs = root / f"{index:064x}" / "fs"
        (fs / "etc").mkdir(parents=True)
        (fs / "etc" / f"layer{index}").write_text(f"{index}\n")
        lowers.append(fs)
    (lowers[-1] / "bin").mkdir()
    (lowers[-1] / "bin" / "sh").write_text("bottom\n")
    return lowers


def bench_overlay(tmp: Path, counts: list[int], mounts: int) -> dict[int, dict[str, float]]:
    layers = fake_layers(tmp / "layers", max(counts))
    got: dict[int, dict[str, float]] = {}
    for count in counts:
        lowers = layers[-count:]  # always ending at the bottom layer
        mount_us, hit_us, miss_us, unmount_us = [], [], [], []
        for index in range(mounts):
            with mounted(lowers, tmp / "runs" / f"{count}-{index}") as (target, took):
                mount_us.append(took)
                start = time.perf_counter()
                (target / "bin" / "sh").stat()  # found only in the bottom layer
                hit_us.append((time.perf_counter() - start) * 1e6)
                start = time.perf_counter()
                if (target / "usr" / "no-such-name").exists():  # every layer is asked
                    raise RuntimeError("the overlay holds a name no layer has")
                miss_us.append((time.perf_counter() - start) * 1e6)
                start = time.perf_counter()
                unmount(target)
                unmount_us.append((time.perf_counter() - start) * 1e6)
        got[count] = {"mount": statistics.median(mount_us), "hit": statistics.median(hit_us),
                      "miss": statistics.median(miss_us),
                      "unmount": statistics.median(unmount_us)}
    shutil.rmtree(tmp / "runs")
    return got


def flatten_s(layer_dirs: list[Path], into: Path) -> float:
    """What a flattened per-image tree costs once per image: a copy of every layer,
    bottom first, into one directory (the big image has no whiteouts to apply)."""
    into.mkdir(parents=True)
    os.sync()
    start = time.perf_counter()
    for fs in layer_dirs:
        subprocess.run(["cp", "-a", f"{fs}/.", str(into)], check=True)
    return time.perf_counter() - start


# --- the run ---------------------------------------------------------------------------

def small_layered(count: int) -> Image:
    """busybox and ``count - 1`` layers of two small files each."""
    extra = [Layer.from_files({f"etc/layer{i}": f"{i}\n".encode(),
                               f"opt/l{i}/data": os.urandom(4096)}) for i in range(count - 1)]
    return busybox_image(*extra)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=15)
    parser.add_argument("--mounts", type=int, default=50)
    parser.add_argument("--total-mb", type=int, default=220)
    parser.add_argument("--tmp", default="/var/tmp",
                        help="where the temporary directory goes (the pulls' images dirs)")
    parser.add_argument("--snapshot-mb", type=int, default=100)
    parser.add_argument("--only", choices=["pull", "build"], default=None,
                        help="only the pull figures (e.g. with --tmp on another filesystem) "
                             "or only the Dockerfile build figures")
    parser.add_argument("--timeline", action="store_true",
                        help="print the median pull's per-layer download and unpack times")
    args = parser.parse_args()
    if args.only == "build":
        with tempfile.TemporaryDirectory(prefix="sandport-bench-", dir=args.tmp) as tmp_name:
            print(f"Dockerfile builds, {args.runs} runs", flush=True)
            report_build(bench_build(Path(tmp_name), args.runs))
        return
    if not shutil.which("skopeo"):
        sys.exit("bench/images.py needs skopeo (apt-get install skopeo)")

    with tempfile.TemporaryDirectory(prefix="sandport-bench-", dir=args.tmp) as tmp_name:
        tmp = Path(tmp_name)
        registries = Registries(tmp / "registries")
        server: ServerProcess | None = None
        try:
            print("building and pushing the images", flush=True)
            registry = registries.plain
            big = big_image(args.total_mb, 4)
            refs = {"big": f"{registry.host}/bench/big:1",
                    "1 layer": f"{registry.host}/bench/layers:1",
                    "20 layers": f"{registry.host}/bench/layers:20"}
            push_image(registry, "bench/big", "1", big)
            push_image(registry, "bench/layers", "1", small_layered(1))
            push_image(registry, "bench/layers", "20", small_layered(20))
            compressed = sum(len(layer.blob) for layer in big.layers)
            unpacked = sum(len(layer.tar()) for layer in big.layers)

            fs_type = subprocess.run(["stat", "-f", "-c", "%T", str(tmp)], capture_output=True,
                                     text=True, check=True).stdout.strip()
            print(f"pulling {refs['big']} ({compressed / MB:.1f} MB compressed, "
                  f"{unpacked / MB:.1f} MB of tar, {len(big.layers)} layers) into {tmp} "
                  f"({fs_type}), {args.runs} runs each", flush=True)
            pull = bench_pull(tmp / "pull", registry, refs["big"], big, args.runs,
                              args.timeline)
            if args.only == "pull":
                report_pull(compressed, unpacked, pull)
                return

            server = pull_server(tmp / "create", registry, None).start()
            print("create → first exec, round robin", flush=True)
            with api(server) as client:
                for ref in refs.values():
                    with client.stream("POST", "/api/images/pull", json={"ref": ref}) as r:
                        r.raise_for_status()
                        r.read()
                record = client.get(f"/api/images/{refs['big']}").json()
            print(f"snapshots of a sandbox with {args.snapshot_mb} MB written", flush=True)
            snap = bench_snapshot(server, args.snapshot_mb, args.runs)
            first = bench_first_exec(server, {"python": "python", **refs,
                                              "snapshot": "bench-snap:0"}, args.samples)

            print("overlay mounts", flush=True)
            overlay = bench_overlay(tmp / "overlay", [1, 5, 20, 60], args.mounts)
            layer_dirs = [IMAGES_DIR / "layers" / d.removeprefix("sha256:") / "fs"
                          for d in json.loads(big.config)["rootfs"]["diff_ids"]]
            flat = flatten_s(layer_dirs, tmp / "flat")
            shutil.rmtree(tmp / "flat")
            report(compressed, unpacked, pull, first, overlay, flat, record)
            p50_snap = {k: statistics.median(v) for k, v in snap.items()}
            print(f"  snapshot, {args.snapshot_mb} MB written:  {p50_snap['snapshot_s']:.2f} s "
                  f"(frozen {p50_snap['frozen_ms']:.0f} ms), median of {args.runs}; "
                  "create→exec from it vs python: "
                  f"{p50_p90(first['snapshot'])[0] / p50_p90(first['python'])[0]:.2f}")
        finally:
            if server is not None:
                server.stop_all_sandboxes()
                with api(server) as client, contextlib.suppress(httpx.HTTPError):
                    for image in client.get("/api/images").json()["images"]:
                        # the shared images directory keeps no image of this bench's registry
                        if image["name"].startswith((f"{registries.plain.host}/",
                                                     "bench-snap:")):
                            client.delete(f"/api/images/{image['name']}")
                server.stop()
            registries.stop()
            unmount_below(tmp)  # what an error inside a mounted() left


def report_pull(compressed: int, unpacked: int, pull: dict[str, list[float]]) -> None:
    med = {key: statistics.median(values) for key, values in pull.items()}
    print(f"\npull of {compressed / MB:.0f} MB compressed / {unpacked / MB:.0f} MB unpacked "
          f"(median of {len(pull['skopeo'])})")
    print(f"  skopeo copy (download only):   {med['skopeo']:6.2f} s  "
          f"{compressed / MB / med['skopeo']:6.1f} MB/s")
    print(f"  sandport pull (+ unpack):      {med['sandport']:6.2f} s  "
          f"{compressed / MB / med['sandport']:6.1f} MB/s   ratio sandport / skopeo "
          f"{med['sandport'] / med['skopeo']:.2f}")
    print(f"  GNU tar -xzf of the layers:    {med['tar']:6.2f} s  "
          f"{unpacked / MB / med['tar']:6.1f} MB/s unpacked   skopeo + tar "
          f"{med['skopeo'] + med['tar']:.2f} s, ratio sandport / (skopeo + tar) "
          f"{med['sandport'] / (med['skopeo'] + med['tar']):.2f}")
    server_s = f", the server's log says {med['server_s']:.1f} s" if "server_s" in med else ""
    print(f"  sandport's median run: last byte at {med['last_byte_s']:.2f} s, unpacking "
          f"{med['unpack_s']:.2f} s in all (overlapping the downloads), "
          f"{med['tail_s']:.2f} s after the last byte{server_s}")



def report(compressed: int, unpacked: int, pull: dict[str, list[float]],
           first: dict[str, list[float]], overlay: dict[int, dict[str, float]], flat: float,
           record: dict[str, object]) -> None:
    report_pull(compressed, unpacked, pull)
    med = {key: statistics.median(values) for key, values in pull.items()}

    print(f"\ncreate → first exec (true), n={len(first['python'])} each, round robin")
    p50s = {}
    for label, samples in first.items():
        p50, p90 = p50_p90(samples)
        p50s[label] = p50
        print(f"  {label:10} p50 {p50:7.1f} ms   p90 {p90:7.1f} ms")
    print(f"  ratio pulled big image / built-in python: {p50s['big'] / p50s['python']:.2f} "
          "(target ≤ 1.10)")
    print(f"  ratio 20 layers / 1 layer:                 "
          f"{p50s['20 layers'] / p50s['1 layer']:.2f}")

    print("\noverlay of N lower directories (median µs)")
    print(f"  {'N':>3} {'mount':>8} {'1st hit':>8} {'1st miss':>9} {'unmount':>8}")
    for count, row in overlay.items():
        print(f"  {count:3} {row['mount']:8.0f} {row['hit']:8.0f} {row['miss']:9.0f} "
              f"{row['unmount']:8.0f}")
    size = record.get("sizeBytes")
    print(f"  flattening the big image into one tree instead: {flat:.2f} s per image"
          + (f", and a {int(size) / MB:.0f} MB tree of its own (layers are shared between "
             "images)" if isinstance(size, int) else ""))

    print("\nsummary")
    rows = [
        (f"pull {compressed / 2**20:.0f} MiB", f"{med['sandport']:.2f} s",
         f"skopeo {med['skopeo']:.2f} s", med["sandport"] / med["skopeo"]),
        ("  vs download + untar", f"{med['sandport']:.2f} s",
         f"skopeo + tar {med['skopeo'] + med['tar']:.2f} s",
         med["sandport"] / (med["skopeo"] + med["tar"])),
        ("create→exec pulled", f"{p50s['big']:.0f} ms", f"python {p50s['python']:.0f} ms",
         p50s["big"] / p50s["python"]),
        ("create→exec 20 layers", f"{p50s['20 layers']:.0f} ms",
         f"1 layer {p50s['1 layer']:.0f} ms", p50s["20 layers"] / p50s["1 layer"]),
        ("mount 60 lowers", f"{overlay[60]['mount']:.0f} µs",
         f"1 lower {overlay[1]['mount']:.0f} µs", overlay[60]["mount"] / overlay[1]["mount"]),
    ]
    print(f"  {'what':22} {'sandport':>10}   {'peer':22} {'ratio':>6}")
    for what, ours, peer, ratio in rows:
        print(f"  {what:22} {ours:>10}   {peer:22} {ratio:6.2f}")


if __name__ == "__main__":
    main()
