"""The images a sandbox starts from: built-in, pulled, imported — one layer store for all.

A name is resolved for a team (``lookup``): an image of that team by that name, else a
built-in image, else the name is a registry reference (``node:22`` is
``docker.io/library/node:22``) pulled on first use (``ensure``). Pulled and imported images
belong to their team; the built-ins (``base``, ``python``, ``node``: Debian packages
installed by ``mmdebstrap``, built on first use) to everyone. Every image is layers in the
layer store (layerstore.py), so two images on the same base hold it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from ...errors import (
    Conflict,
    ImageNotFound,
    RegistryFailure,
    RuntimeFailure,
    SandportError,
    ValidationFailed,
)
from ...models import ImageInfo, iso
from .._files import remove_tree
from . import transfer
from .layerstore import ImageRecord, LayerBlob, LayerStore
from .layerwrite import write_layer_tar
from .pull import Listener, PulledImage, Puller, host_platform
from .reference import Reference, parse_reference
from .registry import OCI_CONFIG, OCI_MANIFEST, RegistryClient, RegistryConfig, sha256_digest
from .unpack import UnpackLimits, unpack_layer

log = logging.getLogger("sandport.images")

BUILTIN_PACKAGES: dict[str, tuple[str, ...]] = {
    "base": ("procps", "ca-certificates"),
    "python": ("procps", "ca-certificates", "python3", "python3-pip", "python3-venv"),
    "node": ("procps", "ca-certificates", "nodejs", "npm"),
}
_EXCLUDE_DOCS = ("/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*",
                 "/usr/share/info/*")
DEFAULT_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "LANG=C.UTF-8")
ZSTD_LAYER = "application/vnd.oci.image.layer.v1.tar+zstd"

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Image:
    """What a sandbox is created from: its layers' directories and its config."""

    name: str
    digest: str
    diff_ids: tuple[str, ...]  # bottom first
    lowers: tuple[Path, ...]  # overlay order: top first
    env: tuple[str, ...]
    workdir: str
    user: str  # "" = root
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]


def image_config(record: ImageRecord) -> dict[str, Any]:
    config = record.config.get("config")
    return config if isinstance(config, dict) else {}


def _host_suite() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip('"') or "bookworm"
    except OSError:
        pass
    return "bookworm"


def _host_mirror() -> list[str]:
    """The host's own apt sources, so images come from the mirror the host already uses."""
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    if deb822.exists():
        return [str(deb822)]
    classic = Path("/etc/apt/sources.list")
    if classic.exists() and any(
        line.strip().startswith("deb ") for line in classic.read_text().splitlines()
    ):
        return [str(classic)]
    return []


def mmdebstrap_command(name: str, target: str, suite: str, mirror: list[str]) -> list[str]:
    """The build command of a built-in image (pure, so the unit suite can read it); the
    root filesystem comes out as one tar on stdout when ``target`` is ``-``."""
    excludes = [f"--dpkgopt=path-exclude={p}" for p in _EXCLUDE_DOCS]
    return [
        "mmdebstrap", "--variant=minbase", "--mode=root", "--format=tar",
        "--include=" + ",".join(BUILTIN_PACKAGES[name]), *excludes,
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        suite, target, *mirror,
    ]


class ImageStore:
    def __init__(self, root: Path, registry: RegistryConfig | None = None, *,
                 max_image_bytes: int = 32 * 2**30, max_total_bytes: int | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.layers = LayerStore(root)
        self.client = RegistryClient(registry or RegistryConfig(
            frozenset(), {}, {}, root / "registry-auth.json"))
        self.puller = Puller(self.layers, self.client, max_image_bytes)
        self.max_image_bytes = max_image_bytes
        self.max_total_bytes = max_total_bytes
        self.clock = clock

    def prepare(self) -> None:
        self.layers.prepare()

    def forget_old_trees(self, in_use: set[tuple[str, str]]) -> list[Path]:
        """Remove what servers before the layer store kept: a tree per built-in image and
        version (``<root>/<name>/<version>/rootfs``, and a ``current`` link). A version a
        sandbox still names (``in_use``: (image, imageVersion) from its runtime.json) or an
        overlay still mounts stays. Moved into ``tmp/`` at once (a crash leaves it to the
        next start's sweep) and deleted on a thread of its own, off the start's path."""
        mounts = Path("/proc/self/mountinfo").read_text(errors="replace")
        moved: list[Path] = []
        for name in BUILTIN_PACKAGES:
            tree = self.root / name
            if tree.is_symlink() or not tree.is_dir():
                continue
            for version in sorted(tree.iterdir()):
                if version.is_symlink():
                    version.unlink()
                elif (name, version.name) not in in_use and f"{version}/" not in mounts:
                    target = self.layers.tmp / f"old-{name}-{version.name}-{os.getpid()}"
                    try:
                        version.rename(target)
                    except OSError as exc:  # the next start tries again
                        log.warning("image tree %s not removed: %s", version, exc)
                        continue
                    moved.append(target)
            with contextlib.suppress(OSError):
                tree.rmdir()  # unless a version is still in use
        if moved:
            log.info("removing %d image trees of an older server: %s", len(moved),
                     ", ".join(p.name for p in moved))

            def remove() -> None:
                for path in moved:
                    remove_tree(path)

            threading.Thread(target=remove, name="old-trees", daemon=True).start()
        return moved

    async def close(self) -> None:
        await self.client.close()

    # -- names ------------------------------------------------------------------------
    def lookup(self, team: str, name: str) -> ImageRecord | None:
        """The image ``name`` means for ``team``, if it is held here (no pulling)."""
        found = self.layers.get(team, name) or self.layers.get("", name)
        if found is not None:
            return found
        if name in BUILTIN_PACKAGES:
            return None
        try:
            ref = parse_reference(name)
        except ValidationFailed:
            return None
        return self.layers.get(team, str(ref))

    def check_name(self, team: str, name: str) -> None:
        """Raise unless ``name`` is an image here, a built-in or a valid reference."""
        if self.lookup(team, name) is None and name not in BUILTIN_PACKAGES:
            parse_reference(name)

    def visible(self, team: str) -> list[ImageRecord]:
        """The images ``team`` sees: not the build cache's (source "cache")."""
        return [r for r in self.layers.all_records()
                if r.team in ("", team) and r.source != "cache"]

    def is_built(self, name: str) -> bool:
        return self.layers.get("", name) is not None

    def image(self, record: ImageRecord) -> Image:
        config = image_config(record)
        return Image(
            name=record.name, digest=record.digest, diff_ids=tuple(record.diff_ids),
            lowers=tuple(self.layers.layer_path(d) for d in reversed(record.diff_ids)),
            env=tuple(config.get("Env") or DEFAULT_ENV),
            workdir=config.get("WorkingDir") or "/",
            user=str(config.get("User") or ""),
            entrypoint=tuple(config.get("Entrypoint") or ()),
            cmd=tuple(config.get("Cmd") or ()),
        )

    def listing(self, team: str) -> list[ImageInfo]:
        """Every image ``team`` can create from; built-ins not built yet are listed too."""
        records = self.visible(team)
        found = [self.info(r) for r in records]
        built = {r.name for r in records if r.team == ""}
        found += [ImageInfo(name, False, None, None, "builtin")
                  for name in BUILTIN_PACKAGES if name not in built]
        return sorted(found, key=lambda i: (i.source != "builtin", i.name))

    def info(self, record: ImageRecord) -> ImageInfo:
        config = image_config(record)
        return ImageInfo(
            name=record.name, built=True, created_at=iso(record.created_at),
            size_bytes=record.size_bytes, source=record.source, ref=record.ref,
            digest=record.digest, layers=len(record.diff_ids),
            last_used_at=iso(record.last_used_at) if record.last_used_at else None,
            env=tuple(config.get("Env") or ()), workdir=config.get("WorkingDir") or "/",
            user=str(config.get("User") or ""),
            entrypoint=tuple(config.get("Entrypoint") or ()),
            cmd=tuple(config.get("Cmd") or ()),
        )

    # -- getting images ---------------------------------------------------------------
    async def ensure(self, team: str, name: str, listener: Listener | None = None
                     ) -> ImageRecord:
        """The image ``name`` means for ``team``: held, built (a built-in) or pulled."""
        found = self.lookup(team, name)
        if found is not None:
            return found
        if name in BUILTIN_PACKAGES:
            return await self.build(name, _lines_to(listener), only_if_missing=True)
        try:
            return await self.pull(team, name, listener)
        except (ImageNotFound, RegistryFailure) as exc:
            if "/" in name or ":" in name:
                raise
            here = ", ".join(sorted({i.name for i in self.listing(team)}))
            raise type(exc)(f"{exc.message}; no image here is called {name!r} either "
                            f"(images here: {here})") from None

    async def pull(self, team: str, text: str, listener: Listener | None = None
                   ) -> ImageRecord:
        ref = parse_reference(text)
        with self.layers.writing():  # until the record names the layers (see collect)
            pulled = await self.puller.pull(ref, listener)
            record = self._pulled_record(team, ref, pulled)
            self.layers.put(record)
        await self.reclaim()
        return record

    def _pulled_record(self, team: str, ref: Reference, pulled: PulledImage) -> ImageRecord:
        return ImageRecord(
            team=team, name=str(ref), source="pulled", ref=str(ref),
            digest=pulled.manifest_digest, config=pulled.config,
            diff_ids=list(pulled.diff_ids), blobs=list(pulled.blobs),
            created_at=self.clock(), size_bytes=pulled.size_bytes,
            extra={"configDigest": pulled.config_digest,
                   "blobsKept": [pulled.manifest_digest, pulled.config_digest]},
        )

    async def import_archive(self, team: str, name: str, path: Path) -> ImageRecord:
        def run() -> ImageRecord:
            with self.layers.writing():
                config, blobs, diff_ids, size = transfer.import_archive(
                    self.layers, path, self.max_image_bytes)
                record = self._local_record(team, name, "imported", config, blobs, diff_ids,
                                            size)
                self.layers.put(record)
                return record

        record = await asyncio.to_thread(run)
        await self.reclaim()
        return record

    async def push(self, record: ImageRecord, ref: Reference, listen: Listener) -> str:
        return await transfer.push(self.layers, self.client, record, ref, listen)

    def used(self, record: ImageRecord) -> None:
        self.layers.touch(record, self.clock())

    # -- built-in images --------------------------------------------------------------
    async def build(self, name: str, progress: Progress, *, only_if_missing: bool = False
                    ) -> ImageRecord:
        if name not in BUILTIN_PACKAGES:
            raise ImageNotFound(
                f"image {name!r} cannot be built here; built-in images: "
                + ", ".join(sorted(BUILTIN_PACKAGES))
            )
        async with self._build_lock(name):
            found = self.layers.get("", name)
            if only_if_missing and found is not None:
                return found  # another server or request built it meanwhile
            return await asyncio.to_thread(self._build_locked, name, progress,
                                           asyncio.get_running_loop())

    @contextlib.asynccontextmanager
    async def _build_lock(self, name: str) -> AsyncIterator[None]:
        """One build of an image at a time, across every server sharing this store."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / f".{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.5)
            yield
        finally:
            os.close(fd)

    def _build_locked(self, name: str, progress: Progress,
                      loop: asyncio.AbstractEventLoop) -> ImageRecord:
        """mmdebstrap's tar goes straight into the layer store (unpacked, its diff_id
        verified on the way) and into a zstd blob beside it (what a push sends)."""
        def say(line: str) -> None:
            loop.call_soon_threadsafe(progress, line)

        started = time.monotonic()
        packages = " ".join(BUILTIN_PACKAGES[name])
        say(f"[image {name}] building from Debian packages: {packages}")
        command = mmdebstrap_command(name, "-", _host_suite(), _host_mirror())
        staging = self.layers.staging(f"build-{name}")
        tail: list[str] = []
        try:
            (staging / "fs").mkdir(mode=0o755)
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
            assert proc.stdout is not None and proc.stderr is not None

            def relay(stream: IO[bytes]) -> None:
                for raw in stream:
                    line = raw.decode(errors="replace").rstrip()
                    if line:
                        tail[:] = (tail + [line])[-20:]
                        say(f"[image {name}] {time.monotonic() - started:5.1f}s {line}")

            relay_thread = threading.Thread(target=relay, args=(proc.stderr,), daemon=True)
            relay_thread.start()
            blob = staging / "blob"
            with blob.open("wb") as out:
                tee = _CompressingTee(proc.stdout, out)
                try:
                    unpacked = unpack_layer(cast(BinaryIO, tee), staging / "fs", (),
                                            UnpackLimits(max_bytes=self.max_image_bytes))
                    tee.drain()
                finally:
                    tee.close()
            code = proc.wait()
            relay_thread.join(timeout=5)
            if code != 0:
                raise RuntimeFailure(f"building image {name!r} failed: "
                                     + " | ".join(tail[-3:]))
            blob_digest, blob_size = tee.digest(), blob.stat().st_size
            config = {
                "architecture": host_platform()[1], "os": "linux",
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "config": {"Env": list(DEFAULT_ENV), "WorkingDir": "/", "Cmd": ["/bin/sh"]},
                "rootfs": {"type": "layers", "diff_ids": [unpacked.diff_id]},
            }
            layer = LayerBlob(blob_digest, ZSTD_LAYER, blob_size)
            with self.layers.writing():
                self.layers.publish_blob(blob, blob_digest)
                self.layers.publish_layer(staging, unpacked.diff_id, unpacked.size)
                record = self._local_record("", name, "builtin", config, [layer],
                                            [unpacked.diff_id], unpacked.size)
                record.extra["packages"] = list(BUILTIN_PACKAGES[name])
                self.layers.put(record)
        finally:
            remove_tree(staging)
        say(f"[image {name}] ready in {time.monotonic() - started:.1f}s")
        return record

    # -- snapshots --------------------------------------------------------------------
    def snapshot(self, team: str, name: str, base_digest: str, diff_ids: list[str],
                 changes: Path, commands: dict[str, str] | None = None) -> ImageRecord:
        """An image ``name`` of ``team`` from a sandbox: the layers of the image it was
        made from (``base_digest``, ``diff_ids``) and its changes (``changes``: a copy of
        its upper directory, in overlayfs's form) as one more layer, unpacked from the
        layer tar written from them (so it is what a pull of the pushed image would give)
        and kept zstd-compressed, like a built-in image's, for pushes."""
        # The image by its own name, not a build's internal one ("@build/...": a RUN
        # step's sandbox image has its base's manifest)
        base = min((r for r in self.layers.all_records() if r.team in ("", team)
                    and r.digest == base_digest and r.diff_ids == diff_ids),
                   key=lambda r: (r.name.startswith("@"), r.created_at), default=None)
        if base is None:
            raise Conflict("the image this sandbox was made from has been deleted since; "
                           "a snapshot needs its layers' blobs (pull or import it again)")
        return self.commit_layer(team, name, "snapshot", base.config, base.blobs, diff_ids,
                                 changes, "sandport snapshot",
                                 {"from": base.name, "fromDigest": base.digest,
                                  "fromTeam": base.team, **(commands or {})})

    def commit_layer(self, team: str, name: str, source: str, config: dict[str, Any],
                     blobs: list[LayerBlob], diff_ids: list[str], changes: Path,
                     created_by: str, extra: dict[str, Any] | None = None) -> ImageRecord:
        """The image ``config``/``diff_ids``/``blobs`` with ``changes`` (an upper directory,
        in overlayfs's form) as one more layer, recorded as ``name`` of ``team``: the
        layer is unpacked from the tar written from the changes (so it is what a pull of
        the pushed image gives) and kept zstd-compressed for pushes."""
        staging = self.layers.staging("layer")
        try:
            (staging / "fs").mkdir(mode=0o755)
            unpacked, blob = self._layer_of(changes, staging, diff_ids)
            layer = LayerBlob(blob[0], ZSTD_LAYER, blob[1])
            config = json.loads(json.dumps(config))
            config["rootfs"] = {"type": "layers", "diff_ids": [*diff_ids, unpacked.diff_id]}
            config["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            config["history"] = [*(config.get("history") or []),
                                 {"created": config["created"], "created_by": created_by}]
            with self.layers.writing():
                self.layers.publish_blob(staging / "blob", layer.digest)
                if not self.layers.has_layer(unpacked.diff_id):
                    self.layers.publish_layer(staging, unpacked.diff_id, unpacked.size)
                return self.record_image(team, name, source, config, [*blobs, layer],
                                         extra)
        finally:
            remove_tree(staging)

    def record_image(self, team: str, name: str, source: str, config: dict[str, Any],
                     blobs: list[LayerBlob], extra: dict[str, Any] | None = None
                     ) -> ImageRecord:
        """Record ``config`` (its rootfs naming layers held here) as image ``name``."""
        diff_ids = list(config["rootfs"]["diff_ids"])
        with self.layers.writing():
            size = sum(self.layers.layer_size(d) for d in diff_ids)
            record = self._local_record(team, name, source, config, blobs, diff_ids, size)
            record.extra |= extra or {}
            self.layers.put(record)
        return record

    def _layer_of(self, changes: Path, staging: Path, below: list[str]
                  ) -> tuple[Any, tuple[str, int]]:
        """Write the layer tar of ``changes`` through a pipe into zstd (staging/blob) and
        the unpacker (staging/fs) at once; (the unpacked layer, (blob digest, size))."""
        read_fd, write_fd = os.pipe()
        failure: list[BaseException] = []

        def write() -> None:
            try:
                with os.fdopen(write_fd, "wb") as out:
                    write_layer_tar(changes, out)
            except BaseException as exc:  # noqa: BLE001 - raised on the caller's thread
                failure.append(exc)

        writer = threading.Thread(target=write, name="snapshot-tar", daemon=True)
        writer.start()
        try:
            # the read end closes before the join: a writer blocked on a full pipe whose
            # reader gave up gets EPIPE and ends
            with os.fdopen(read_fd, "rb") as source, (staging / "blob").open("wb") as out:
                tee = _CompressingTee(source, out)
                try:
                    unpacked = unpack_layer(
                        cast(BinaryIO, tee), staging / "fs",
                        [self.layers.layer_path(d) for d in reversed(below)],
                        UnpackLimits(max_bytes=self.max_image_bytes))
                    tee.drain()
                finally:
                    tee.close()
        except SandportError:
            writer.join()
            if failure and not isinstance(failure[0], BrokenPipeError):
                raise _unreadable(failure[0]) from None
            raise
        writer.join()
        if failure:
            raise _unreadable(failure[0])
        return unpacked, (tee.digest(), (staging / "blob").stat().st_size)

    def _local_record(self, team: str, name: str, source: str, config: dict[str, Any],
                      blobs: list[LayerBlob], diff_ids: list[str], size: int) -> ImageRecord:
        """A record for an image made here: its config and an OCI manifest are written as
        blobs, so it can be pushed like a pulled one."""
        config_body = json.dumps(config, separators=(",", ":")).encode()
        config_digest = sha256_digest(config_body)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest,
                       "size": len(config_body)},
            "layers": [{"mediaType": b.media_type, "digest": b.digest, "size": b.size}
                       for b in blobs],
        }, separators=(",", ":")).encode()
        manifest_digest = sha256_digest(manifest)
        self.layers.keep_blob(config_body, config_digest)
        self.layers.keep_blob(manifest, manifest_digest)
        return ImageRecord(
            team=team, name=name, source=source, ref=None, digest=manifest_digest,
            config=config, diff_ids=diff_ids, blobs=blobs, created_at=self.clock(),
            size_bytes=size,
            extra={"configDigest": config_digest, "blobsKept": [manifest_digest, config_digest]},
        )

    # -- removing ---------------------------------------------------------------------
    def delete(self, team: str, name: str) -> ImageRecord:
        record = self.layers.get(team, name)
        if record is None and name not in BUILTIN_PACKAGES:
            with contextlib.suppress(ValidationFailed):
                record = self.layers.get(team, str(parse_reference(name)))
        if record is None:
            if self.layers.get("", name) is not None:
                raise ValidationFailed(f"image {name!r} is a built-in image; it cannot be "
                                       "deleted")
            raise ImageNotFound(f"image {name!r} does not exist")
        self.layers.delete(record.team, record.name)
        self.layers.collect()
        return record

    async def reclaim(self) -> None:
        """Past ``max_total_bytes``: drop images, least recently used first, never a
        built-in one and never one whose layers all belong to live sandboxes anyway (their
        leases keep those layers, so dropping the image would free nothing)."""
        if self.max_total_bytes is None:
            return
        await asyncio.to_thread(self._reclaim_locked)

    def _reclaim_locked(self) -> None:
        assert self.max_total_bytes is not None
        self.layers.collect()
        total = self.layers.disk_bytes()
        if total <= self.max_total_bytes:
            return
        leased = {d for ids in self.layers.leased().values() for d in ids}
        candidates = sorted(
            (r for r in self.layers.all_records()
             if r.source != "builtin" and not set(r.diff_ids) <= leased),
            key=lambda r: r.last_used_at or r.created_at)
        for record in candidates:
            if total <= self.max_total_bytes:
                break
            log.info("images over %d bytes: reclaiming %s of team %s (last used %s)",
                     self.max_total_bytes, record.name, record.team or "-",
                     record.last_used_at)
            self.layers.delete(record.team, record.name)
            self.layers.collect()
            total = self.layers.disk_bytes()


def _unreadable(exc: BaseException) -> RuntimeFailure:
    """What the client is told of a tree that could not be read (no host path in it)."""
    log.warning("a snapshot's files could not be read: %s", exc)
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
    if isinstance(exc, OSError) and exc.errno == errno.ENOTSUP:
        detail = str(exc.args[1]) if len(exc.args) > 1 else detail
    return RuntimeFailure(f"the sandbox's files could not be read: {detail}")


def _lines_to(listener: Listener | None) -> Progress:
    def say(line: str) -> None:
        if listener is not None:
            listener({"status": "building", "progress": line})
    return say


class _CompressingTee:
    """A reader over ``source`` that writes what it hands out, zstd-compressed, to ``out``
    (and hashes the compressed bytes): one pass makes the layer and its blob."""

    def __init__(self, source: IO[bytes], out: IO[bytes]) -> None:
        import hashlib

        import zstandard

        self._source = source
        self._hash = hashlib.sha256()
        self._out = out
        sink: Any = _HashingWriter(out, self._hash)
        self._writer: Any = zstandard.ZstdCompressor(level=3, threads=-1).stream_writer(
            sink, closefd=False)

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size if size and size > 0 else 1 << 20)
        if data:
            self._writer.write(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        while self.read(1 << 20):
            pass

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


class _HashingWriter:
    def __init__(self, out: IO[bytes], digest: Any) -> None:
        self._out = out
        self._digest = digest

    def write(self, data: bytes) -> int:
        self._digest.update(data)
        self._out.write(data)
        return len(data)

    def flush(self) -> None:
        self._out.flush()


__all__ = ["BUILTIN_PACKAGES", "Image", "ImageStore", "mmdebstrap_command"]
