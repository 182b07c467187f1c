"""The layer store: content-addressed blobs, each layer unpacked once, shared by every image.

Layout under the images directory::

    blobs/sha256/<hex>            verified blobs: compressed layers, configs, manifests
    layers/<hex>/fs/              one layer, unpacked, keyed by its diff_id (the sha256 of
                                  its uncompressed tar, verified while unpacking): a
                                  read-only lower directory of the sandboxes' overlays
    layers/<hex>/layer.json       its size
    images/<key>.json             an image: its team, name, reference, manifest and config
                                  digests, its layers (diff_ids, bottom first), its config
    leases/<sandbox-id>.json      the layers a sandbox was created from (it keeps them
                                  until it is destroyed, whatever happens to its image)
    tmp/                          staging; everything is renamed into place when complete

An image record or a lease is written only after every layer it names is in place, and a
layer is removed only when no record and no lease names it (``collect``), under an
exclusive lock that every writer holds shared: nothing half-stored, nothing reclaimed that a
sandbox or a pull is about to use. Several servers may share one images directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._files import read_json, remove_tree
from ..mounts import unmount_below

DIGEST_CHARS = frozenset("0123456789abcdef")


def snapshot_id(record: ImageRecord) -> str:
    """A snapshot's id (Hyperbrowser's ``snapshotId``): its name and its manifest's digest
    (two snapshots of unchanged files an instant apart have one digest)."""
    key = f"{record.team}\n{record.name}\n{record.digest}".encode()
    return "snap_" + hashlib.sha256(key).hexdigest()[:24]


def hex_of(digest: str) -> str:
    """The hex part of a sha256 digest, checked (it names files)."""
    algorithm, _, value = digest.partition(":")
    if algorithm != "sha256" or len(value) != 64 or not set(value) <= DIGEST_CHARS:
        raise ValueError(f"not a sha256 digest: {digest[:80]!r}")
    return value


@dataclass(frozen=True, slots=True)
class LayerBlob:
    """A layer as a registry holds it: its compressed blob."""

    digest: str
    media_type: str
    size: int


@dataclass(slots=True)
class ImageRecord:
    team: str  # "" for the built-in images, which every team sees
    name: str  # what a create names: "python", "docker.io/library/node:22", "myapp:1"
    source: str  # builtin | pulled | imported | built | snapshot
    ref: str | None  # the registry reference it came from, if any
    digest: str  # the manifest's digest (what a push sends, what a pull verified)
    config: dict[str, Any]  # the OCI image config (architecture, os, config, rootfs...)
    diff_ids: list[str]  # layers, bottom first
    blobs: list[LayerBlob]  # the same layers' compressed blobs, bottom first
    created_at: float
    last_used_at: float | None = None
    size_bytes: int = 0  # the layers' uncompressed size
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "team": self.team, "name": self.name, "source": self.source, "ref": self.ref,
            "digest": self.digest, "config": self.config, "diffIds": self.diff_ids,
            "blobs": [{"digest": b.digest, "mediaType": b.media_type, "size": b.size}
                      for b in self.blobs],
            "createdAt": self.created_at, "lastUsedAt": self.last_used_at,
            "sizeBytes": self.size_bytes, "extra": self.extra,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageRecord:
        return cls(
            team=data["team"], name=data["name"], source=data["source"], ref=data.get("ref"),
            digest=data["digest"], config=data.get("config") or {},
            diff_ids=list(data["diffIds"]),
            blobs=[LayerBlob(b["digest"], b["mediaType"], int(b["size"]))
                   for b in data.get("blobs") or []],
            created_at=float(data["createdAt"]), last_used_at=data.get("lastUsedAt"),
            size_bytes=int(data.get("sizeBytes") or 0), extra=data.get("extra") or {},
        )


def record_key(team: str, name: str) -> str:
    return hashlib.sha256(f"{team}\n{name}".encode()).hexdigest()[:40]


class LayerStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.layers = root / "layers"
        self.records = root / "images"
        self.leases = root / "leases"
        self.tmp = root / "tmp"

    def prepare(self) -> None:
        # Root only: layers hold images' setuid files and world-writable directories.
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        for directory in (self.blobs, self.layers, self.records, self.leases, self.tmp):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Staging left by a server that died mid-pull is nobody's: no other writer is
        # inside it unless it holds the lock, and then its own folder is fresh.
        with self.writing():
            for leftover in self.tmp.iterdir():
                if leftover.stat().st_mtime < time.time() - 3600:
                    unmount_below(leftover)  # a build's overlays (control/builder.py)
                    remove_tree(leftover)

    # -- locks ------------------------------------------------------------------------
    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Held (shared) from deciding that a layer is there until a record or a lease
        naming it is written; ``collect`` holds it exclusively."""
        fd = os.open(self.root / "store.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    # -- blobs and layers -------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.blobs / hex_of(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def layer_path(self, diff_id: str) -> Path:
        """The layer's unpacked tree (an overlay lower directory)."""
        return self.layers / hex_of(diff_id) / "fs"

    def has_layer(self, diff_id: str) -> bool:
        return self.layer_path(diff_id).is_dir()

    def layer_size(self, diff_id: str) -> int:
        return int(read_json(self.layers / hex_of(diff_id) / "layer.json").get("size") or 0)

    def staging(self, label: str) -> Path:
        path = self.tmp / f"{label}-{os.getpid()}-{os.urandom(4).hex()}"
        path.mkdir(mode=0o700)
        return path

    def publish_blob(self, staged: Path, digest: str) -> None:
        os.replace(staged, self.blob_path(digest))

    def keep_blob(self, body: bytes, digest: str) -> None:
        """Store a small blob (a manifest, a config) the caller has verified or made."""
        if not self.has_blob(digest):
            staged = self.tmp / f"blob-{os.getpid()}-{os.urandom(4).hex()}"
            staged.write_bytes(body)
            self.publish_blob(staged, digest)

    def publish_layer(self, staged: Path, diff_id: str, size: int) -> None:
        """Move an unpacked layer (``staged/fs``) into place; if another pull got there
        first, keep theirs (the same content by construction: the same diff_id)."""
        (staged / "layer.json").write_text(json.dumps({"diffId": diff_id, "size": size}))
        target = self.layers / hex_of(diff_id)
        try:
            staged.rename(target)
        except OSError:
            if not target.is_dir():
                raise
            remove_tree(staged)

    # -- records ----------------------------------------------------------------------
    def record_path(self, team: str, name: str) -> Path:
        return self.records / f"{record_key(team, name)}.json"

    def get(self, team: str, name: str) -> ImageRecord | None:
        data = read_json(self.record_path(team, name))
        if not data:
            return None
        record = ImageRecord.from_json(data)
        return record if (record.team, record.name) == (team, name) else None

    def put(self, record: ImageRecord) -> None:
        missing = [d for d in record.diff_ids if not self.has_layer(d)]
        if missing:
            raise RuntimeError(f"layers missing for {record.name}: {missing}")
        self._write(self.record_path(record.team, record.name), record.to_json())

    def delete(self, team: str, name: str) -> bool:
        try:
            self.record_path(team, name).unlink()
            return True
        except FileNotFoundError:
            return False

    def all_records(self) -> list[ImageRecord]:
        found = []
        for path in sorted(self.records.glob("*.json")):
            data = read_json(path)
            if data:
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    found.append(ImageRecord.from_json(data))
        return found

    def touch(self, record: ImageRecord, when: float) -> None:
        record.last_used_at = when
        with contextlib.suppress(OSError, RuntimeError):
            self.put(record)

    # -- leases -----------------------------------------------------------------------
    def lease(self, sandbox_id: str, diff_ids: list[str], holder: Path) -> None:
        """``holder`` is the directory whose files need the layers (the sandbox's bundle,
        later its retained files): a lease whose holder is gone is stale (a server that
        died before it released it), whichever server sharing the store finds it."""
        self._write(self.leases / f"{sandbox_id}.json",
                    {"diffIds": diff_ids, "holder": str(holder)})

    def release(self, sandbox_id: str) -> None:
        (self.leases / f"{sandbox_id}.json").unlink(missing_ok=True)

    def leased(self) -> dict[str, list[str]]:
        found = {}
        for path in self.leases.glob("*.json"):
            data = read_json(path)
            holder = data.get("holder")
            if isinstance(holder, str) and not os.path.isdir(holder):
                path.unlink(missing_ok=True)
                continue
            found[path.stem] = list(data.get("diffIds") or [])
        return found

    # -- reclaiming -------------------------------------------------------------------
    def disk_bytes(self) -> int:
        return sum(_tree_bytes(p) for p in (self.blobs, self.layers))

    def collect(self, *, keep_blobs: set[str] | None = None) -> tuple[int, int]:
        """Remove the layers and blobs nothing names: (layers removed, bytes freed).
        Returns (0, 0) at once if a writer is busy (the next collection gets them)."""
        fd = os.open(self.root / "store.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0, 0
            wanted_layers: set[str] = set()
            wanted_blobs: set[str] = set(keep_blobs or ())
            for record in self.all_records():
                wanted_layers.update(hex_of(d) for d in record.diff_ids)
                wanted_blobs.update(hex_of(b.digest) for b in record.blobs)
                for digest in record.extra.get("blobsKept", []):
                    wanted_blobs.add(hex_of(digest))
            for diff_ids in self.leased().values():
                wanted_layers.update(hex_of(d) for d in diff_ids)
            removed = freed = 0
            for path in list(self.layers.iterdir()):
                if path.name not in wanted_layers:
                    freed += _tree_bytes(path)
                    remove_tree(path)
                    removed += 1
            for path in list(self.blobs.iterdir()):
                if path.name not in wanted_blobs:
                    freed += path.stat().st_size
                    path.unlink(missing_ok=True)
            return removed, freed
        finally:
            os.close(fd)

    # -- helpers ----------------------------------------------------------------------
    def _write(self, path: Path, data: dict[str, Any]) -> None:
        staged = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(3).hex()}")
        staged.write_text(json.dumps(data, indent=1))
        os.replace(staged, path)


def _tree_bytes(root: Path) -> int:
    """Bytes a tree holds on disk (allocated blocks, hard links counted once), walked
    without recursion: a layer may nest deeper than Python's recursion limit."""
    seen: set[tuple[int, int]] = set()
    total = 0
    pending = [str(root)]
    while pending:
        with contextlib.suppress(OSError), os.scandir(pending.pop()) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    if (st.st_dev, st.st_ino) not in seen:
                        seen.add((st.st_dev, st.st_ino))
                        total += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
    return total
