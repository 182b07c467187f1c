"""Pulling an image into the layer store: manifest → this host's platform → config → layers.

Layers download six at a time, each blob streamed through its sha256 into ``tmp/`` and
checked against the manifest's digest and size; each one is unpacked on a thread of its own
*while* it downloads, reading the staged file as it grows (``_Arriving``), so a pull takes
about as long as its download. The unpacker sees the blob's end only once the download has
been verified, so nothing unverified is ever published. A layer waits for the ones below it
only if one of its entries needs them (a hard link into a lower layer becomes a copy; a
parent directory with no entry takes the lower one's metadata). Every unpacked layer is
checked against the config's ``diff_ids`` before it is published. A layer already in the
store is neither downloaded nor unpacked again.

Creates and pulls of the same reference share one pull (``Puller.pull``); it goes on if
the request that started it goes away, and every waiter sees its progress.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import platform
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...crashpoints import crash_point
from ...errors import ImageRejected, RegistryFailure, SandportError
from .._files import remove_tree
from .layerstore import LayerBlob, LayerStore
from .reference import Reference
from .registry import INDEX_TYPES, Manifest, RegistryClient
from .unpack import Lowers, UnpackLimits, unpack_layer

log = logging.getLogger("sandport.pull")

LAYER_TYPES = frozenset({
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
})
MAX_CONFIG_BYTES = 8 * 2**20
PARALLEL_DOWNLOADS = 6  # as skopeo (containers/image) does; docker and containerd use 3
Event = dict[str, Any]
Listener = Callable[[Event], None]


def host_platform() -> tuple[str, str, str | None]:
    """(os, architecture, variant) in OCI's words for this host."""
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
            "armv7l": "arm", "i686": "386", "i386": "386", "ppc64le": "ppc64le",
            "s390x": "s390x", "riscv64": "riscv64"}.get(machine, machine)
    variant = {"arm64": "v8", "arm": "v7"}.get(arch)
    return "linux", arch, variant


def choose_platform(index: dict[str, Any], ref: Reference,
                    want: tuple[str, str, str | None]) -> str:
    """The digest of ``index``'s manifest for platform ``want`` (pure)."""
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise RegistryFailure(f"the index of {ref} has no manifests list")
    offered = []
    best: tuple[int, str] | None = None
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        plat = entry.get("platform") or {}
        os_name, arch, variant = plat.get("os"), plat.get("architecture"), plat.get("variant")
        if os_name == "unknown":  # attestation manifests (buildkit's provenance)
            continue
        offered.append(f"{os_name}/{arch}" + (f"/{variant}" if variant else ""))
        if (os_name, arch) != want[:2]:
            continue
        score = 2 if variant == want[2] else (1 if variant is None else 0)
        if (best is None or score > best[0]) and isinstance(entry.get("digest"), str):
            best = (score, entry["digest"])
    if best is None:
        wanted = "/".join(p for p in want if p)
        raise ImageRejected(f"image {ref} has no manifest for this host's platform "
                            f"({wanted}); it has: {', '.join(offered) or 'none'}")
    return best[1]


@dataclass(frozen=True, slots=True)
class PulledImage:
    ref: Reference  # pinned to the manifest's digest
    manifest_digest: str
    config: dict[str, Any]
    config_digest: str
    diff_ids: list[str]
    blobs: list[LayerBlob]
    size_bytes: int


def parse_image_manifest(manifest: Manifest, ref: Reference) -> tuple[LayerBlob, list[LayerBlob]]:
    """(config blob, layer blobs) of an image manifest (pure)."""
    if "distribution.manifest.v1" in manifest.media_type:
        raise ImageRejected(f"image {ref} has a schema 1 manifest, which is not supported")
    data = manifest.json()
    if data.get("schemaVersion") != 2:
        raise ImageRejected(f"the manifest of {ref} is not schema version 2")
    try:
        config = data["config"]
        config_blob = LayerBlob(str(config["digest"]), str(config.get("mediaType", "")),
                                int(config["size"]))
        layers = [LayerBlob(str(layer["digest"]), str(layer.get("mediaType") or ""),
                            int(layer["size"])) for layer in data["layers"]]
    except (KeyError, TypeError, ValueError):
        raise RegistryFailure(f"the manifest of {ref} is malformed") from None
    for layer in layers:
        if layer.media_type not in LAYER_TYPES:
            raise ImageRejected(f"image {ref} has a layer of type {layer.media_type!r}, "
                                "which is not supported")
        if layer.size < 0 or not layer.digest.startswith("sha256:"):
            raise ImageRejected(f"image {ref} has a layer with a bad digest or size")
    return config_blob, layers


def parse_config(body: bytes, ref: Reference, layers: int) -> tuple[dict[str, Any], list[str]]:
    try:
        config = json.loads(body)
        diff_ids = list(config["rootfs"]["diff_ids"])
    except (ValueError, KeyError, TypeError):
        raise ImageRejected(f"the image config of {ref} is malformed") from None
    if len(diff_ids) != layers or not all(isinstance(d, str) and d.startswith("sha256:")
                                          for d in diff_ids):
        raise ImageRejected(f"the image config of {ref} names {len(diff_ids)} layers, its "
                            f"manifest {layers}")
    return config, diff_ids


@dataclass
class _Job:
    task: asyncio.Task[PulledImage] | None = None
    listeners: list[Listener] = field(default_factory=list)
    layers: dict[str, Event] = field(default_factory=dict)  # the latest event per layer

    def emit(self, event: Event) -> None:
        if "layer" in event:
            self.layers[event["layer"]] = event
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - one waiter's trouble is not the pull's
                log.exception("progress listener failed")


class Puller:
    def __init__(self, store: LayerStore, client: RegistryClient, max_image_bytes: int) -> None:
        self.store = store
        self.client = client
        self.max_image_bytes = max_image_bytes
        self._jobs: dict[str, _Job] = {}
        # Unpacking threads of their own: one waiting for the layers below it must not
        # hold a worker the rest of the server needs.
        self._unpackers = ThreadPoolExecutor(PARALLEL_DOWNLOADS * 2, "unpack")

    async def pull(self, ref: Reference, listener: Listener | None = None) -> PulledImage:
        key = str(ref)
        job = self._jobs.get(key)
        if job is None:
            job = self._jobs[key] = _Job()
            job.task = asyncio.ensure_future(self._run(ref, job))
            job.task.add_done_callback(lambda _t: self._jobs.pop(key, None))
        elif listener is not None:
            for event in list(job.layers.values()):
                listener(event)  # what a late waiter missed
        if listener is not None:
            job.listeners.append(listener)
        try:
            assert job.task is not None
            return await asyncio.shield(job.task)
        finally:
            if listener is not None and listener in job.listeners:
                job.listeners.remove(listener)

    async def _run(self, ref: Reference, job: _Job) -> PulledImage:
        started = time.monotonic()
        job.emit({"status": "resolving", "ref": str(ref)})
        manifest = await self.client.manifest(ref)
        if manifest.media_type in INDEX_TYPES or "manifests" in manifest.json():
            digest = choose_platform(manifest.json(), ref, host_platform())
            manifest = await self.client.manifest(ref, digest)
            if manifest.media_type in INDEX_TYPES:
                raise ImageRejected(f"image {ref}: an index inside an index is not supported")
        config_blob, layers = parse_image_manifest(manifest, ref)
        compressed = sum(layer.size for layer in layers)
        if compressed > self.max_image_bytes:
            raise ImageRejected(f"image {ref} is {compressed} bytes compressed, over this "
                                f"server's cap of {self.max_image_bytes} bytes per image")
        config_body = await self.client.blob_bytes(ref, config_blob.digest, MAX_CONFIG_BYTES)
        config, diff_ids = parse_config(config_body, ref, len(layers))
        pinned = ref.with_digest(manifest.digest)
        job.emit({"status": "pulling", "ref": str(ref), "digest": manifest.digest,
                  "layers": len(layers), "totalBytes": compressed})
        with self.store.writing():
            self.store.keep_blob(manifest.body, manifest.digest)
            self.store.keep_blob(config_body, config_blob.digest)
            size = await self._layers(pinned, layers, diff_ids, job)
        log.info("pulled %s (%s, %d layers, %d bytes) in %.1fs", ref, manifest.digest,
                 len(layers), size, time.monotonic() - started)
        return PulledImage(pinned, manifest.digest, config, config_blob.digest, diff_ids,
                           layers, size)

    async def _layers(self, ref: Reference, layers: list[LayerBlob], diff_ids: list[str],
                      job: _Job) -> int:
        """Fetch and unpack the layers side by side; each one's thread waits for the
        layers below it only if an entry needs them (see unpack_layer's ``lowers``)."""
        gate = asyncio.Semaphore(PARALLEL_DOWNLOADS)  # FIFO: lower layers start first
        done = [threading.Event() for _ in layers]
        failed = threading.Event()
        tasks = []
        for index, (layer, diff_id) in enumerate(zip(layers, diff_ids, strict=True)):
            if self.store.has_layer(diff_id) and self.store.has_blob(layer.digest):
                job.emit({"layer": layer.digest, "status": "exists", "done": layer.size,
                          "total": layer.size})
                done[index].set()
            else:
                tasks.append(asyncio.ensure_future(self._fetch(
                    ref, index, layers, diff_ids, gate, done, failed, job)))
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            failed.set()  # unpacking threads waiting for a lower layer give up
            raise
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        used = sum(self.store.layer_size(d) for d in diff_ids)
        if used > self.max_image_bytes:
            raise ImageRejected(f"image {ref} unpacks to more than this server's cap of "
                                f"{self.max_image_bytes} bytes per image")
        return used

    async def _fetch(self, ref: Reference, index: int, layers: list[LayerBlob],
                     diff_ids: list[str], gate: asyncio.Semaphore,
                     done: list[threading.Event], failed: threading.Event, job: _Job) -> None:
        layer, diff_id = layers[index], diff_ids[index]

        def lowers() -> list[Path]:  # on the unpacking thread
            for below in done[:index]:
                below.wait()
            if failed.is_set() or not all(self.store.has_layer(d) for d in diff_ids[:index]):
                raise ImageRejected(f"image {ref}: a layer below {layer.digest} failed")
            return [self.store.layer_path(d) for d in reversed(diff_ids[:index])]

        loop = asyncio.get_running_loop()
        unpacking: asyncio.Future[None] | None = None
        try:
            async with gate:  # held while downloading; the unpack's tail runs outside it
                wanted = not self.store.has_layer(diff_id)
                if self.store.has_blob(layer.digest):
                    if wanted:
                        unpacking = loop.run_in_executor(
                            self._unpackers, self._unpack, ref, layer, diff_id, lowers,
                            self.store.blob_path(layer.digest), self.max_image_bytes)
                else:
                    staged = self.store.tmp / f"blob-{os.getpid()}-{os.urandom(4).hex()}"
                    sink = staged.open("xb", buffering=0)
                    arriving = _Arriving(staged) if wanted else None
                    if arriving is not None:
                        unpacking = loop.run_in_executor(
                            self._unpackers, self._unpack, ref, layer, diff_id, lowers,
                            arriving, self.max_image_bytes)
                    try:
                        await self._download(ref, layer, job, staged, sink, arriving)
                    except BaseException as exc:
                        if arriving is not None:
                            arriving.fail(f"its download failed ({exc})")
                        raise
            if unpacking is not None:
                job.emit({"layer": layer.digest, "status": "unpacking"})
                await asyncio.shield(unpacking)
                crash_point("pull.layer_published")
            job.emit({"layer": layer.digest, "status": "done", "done": layer.size,
                      "total": layer.size})
        except BaseException:
            failed.set()
            if unpacking is not None:  # its staging directory is gone only once it ends
                await asyncio.gather(unpacking, return_exceptions=True)
            raise
        finally:
            done[index].set()

    async def _download(self, ref: Reference, layer: LayerBlob, job: _Job, staged: Path,
                        sink: Any, arriving: _Arriving | None) -> None:
        """Stream the blob into ``staged`` (``sink`` is it, opened unbuffered), telling
        ``arriving`` of each chunk; publish it once its size and digest are right."""
        digest = hashlib.sha256()
        done = reported = 0
        try:
            with sink:
                async with self.client.blob(ref, layer.digest) as response:
                    async for chunk in response.aiter_raw(1 << 20):
                        done += len(chunk)
                        if done > layer.size:
                            raise RegistryFailure(
                                f"layer {layer.digest} of {ref} is longer than the "
                                f"{layer.size} bytes its manifest says")
                        digest.update(chunk)
                        view = memoryview(chunk)
                        while view:  # an unbuffered write may take less than it is given
                            view = view[sink.write(view):]
                        if arriving is not None:
                            arriving.grew(len(chunk))
                        if done - reported >= 1 << 20 or done == layer.size:
                            reported = done
                            job.emit({"layer": layer.digest, "status": "downloading",
                                      "done": done, "total": layer.size})
            if done != layer.size:
                raise RegistryFailure(f"layer {layer.digest} of {ref} ended after {done} "
                                      f"of {layer.size} bytes")
            if "sha256:" + digest.hexdigest() != layer.digest:
                raise RegistryFailure(f"layer {layer.digest} of {ref} does not match its "
                                      "digest (the registry sent other bytes)")
            self.store.publish_blob(staged, layer.digest)
            if arriving is not None:
                arriving.verified()
        except BaseException:
            staged.unlink(missing_ok=True)
            raise

    def _unpack(self, ref: Reference, layer: LayerBlob, diff_id: str, lowers: Lowers,
                source: Path | _Arriving, room: int) -> None:
        staging = self.store.staging("layer")
        try:
            (staging / "fs").mkdir(mode=0o755)
            with source.open("rb") if isinstance(source, Path) else source as fh:
                result = unpack_layer(fh, staging / "fs", lowers,
                                      UnpackLimits(max_bytes=max(room, 0)))
                if isinstance(fh, _Arriving):
                    fh.wait_verified()
            if result.diff_id != diff_id:
                raise ImageRejected(f"layer {layer.digest} of {ref} unpacks to {result.diff_id}, "
                                    f"not the {diff_id} its config says")
            self.store.publish_layer(staging, diff_id, result.size)
        except SandportError:
            raise
        except OSError as exc:
            raise ImageRejected(f"layer {layer.digest} of {ref} could not be unpacked: "
                                f"{exc.strerror or exc}") from None
        finally:
            if staging.exists():
                remove_tree(staging)


class _Arriving:
    """A blob while it downloads, as the unpacking thread reads it: ``read`` gives what has
    been written so far and waits for more; it gives b"" (the end) only once the download
    is complete and verified, and raises once it has failed."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("rb", buffering=0)
        self._changed = threading.Condition()
        self._written = 0
        self._taken = 0
        self._ok = False
        self._failure: str | None = None

    def __enter__(self) -> _Arriving:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._file.close()

    def grew(self, size: int) -> None:
        with self._changed:
            self._written += size
            self._changed.notify_all()

    def verified(self) -> None:
        with self._changed:
            self._ok = True
            self._changed.notify_all()

    def fail(self, reason: str) -> None:
        with self._changed:
            self._failure = reason
            self._changed.notify_all()

    def wait_verified(self) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._ok or self._failure is not None)
            self._check()

    def _check(self) -> None:
        if self._failure is not None:
            raise ImageRejected(f"the layer was not unpacked: {self._failure}")

    def read(self, size: int = -1, /) -> bytes:
        with self._changed:
            self._changed.wait_for(lambda: self._taken < self._written or self._ok
                                   or self._failure is not None)
            self._check()
            room = self._written - self._taken
        if room == 0:
            return b""  # complete and verified
        data = self._file.read(room if size < 0 else min(size, room))
        self._taken += len(data)
        return data
