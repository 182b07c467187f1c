"""Images in and out by other ways than a pull: archives imported, images pushed.

Import reads a ``docker save`` archive (``manifest.json`` naming a config and layer tars)
or an OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/…``), possibly
gzip-compressed, without extracting it: each layer member is copied into the blob store
through its sha256 (checked against the digest the archive names, where it names one) and
unpacked like a pulled layer; the unpacked diff_ids must be the config's. Members are read
by name only, so the archive's own paths never touch the disk.

Push sends every layer blob the registry does not have yet (HEAD first), the config, then
the manifest — the pulled one unchanged (its digest stays), or the one written for an
image made here.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import IO, Any

from ...errors import ImageRejected, SandportError
from .._files import remove_tree
from .layerstore import ImageRecord, LayerBlob, LayerStore, hex_of
from .pull import Listener, choose_platform, host_platform
from .reference import Reference
from .registry import INDEX_TYPES, RegistryClient
from .unpack import UnpackLimits, unpack_layer

MAX_JSON_MEMBER = 8 * 2**20


def _layer_media_type(head: bytes) -> str:
    if head.startswith(b"\x1f\x8b"):
        return "application/vnd.oci.image.layer.v1.tar+gzip"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "application/vnd.oci.image.layer.v1.tar+zstd"
    return "application/vnd.oci.image.layer.v1.tar"


class _Archive:
    def __init__(self, path: Path) -> None:
        try:
            self.tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by close()
            self.members = {m.name.removeprefix("./"): m for m in self.tar.getmembers()
                            if m.isfile()}
        except (tarfile.TarError, EOFError, OSError):
            raise ImageRejected("the archive is not a tar file (nor a gzip-compressed one)"
                                ) from None

    def close(self) -> None:
        self.tar.close()

    def open(self, name: str) -> IO[bytes]:
        member = self.members.get(name.removeprefix("./"))
        if member is None:
            raise ImageRejected(f"the archive has no {name!r}")
        handle = self.tar.extractfile(member)
        if handle is None:
            raise ImageRejected(f"the archive's {name!r} is not a file")
        return handle

    def json(self, name: str) -> Any:
        member = self.members.get(name.removeprefix("./"))
        if member is not None and member.size > MAX_JSON_MEMBER:
            raise ImageRejected(f"the archive's {name!r} is too large")
        try:
            return json.loads(self.open(name).read())
        except ValueError:
            raise ImageRejected(f"the archive's {name!r} is not JSON") from None

    def blob_name(self, digest: str) -> str:
        try:
            return f"blobs/sha256/{hex_of(digest)}"
        except ValueError:
            raise ImageRejected(f"the archive names a bad digest {digest[:80]!r}") from None


def _image_in(archive: _Archive) -> tuple[Any, list[tuple[str, str | None]]]:
    """(config, [(layer member, its digest if the archive names one)])."""
    if "oci-layout" in archive.members and "index.json" in archive.members:
        node = archive.json("index.json")
        for _ in range(4):  # index → (index →) manifest
            entries = node.get("manifests") if isinstance(node, dict) else None
            if entries is None:
                break
            if not isinstance(entries, list) or not entries:
                raise ImageRejected("the archive's OCI index lists no manifest")
            fake = Reference("archive", "image", "latest", None)
            digest = (entries[0].get("digest") if len(entries) == 1 else
                      choose_platform(node, fake, host_platform()))
            if not isinstance(digest, str):
                raise ImageRejected("the archive's OCI index names no manifest digest")
            node = archive.json(archive.blob_name(digest))
            if isinstance(node, dict) and node.get("mediaType") in INDEX_TYPES:
                continue
        if not isinstance(node, dict) or "layers" not in node or "config" not in node:
            raise ImageRejected("the archive's OCI manifest is malformed")
        config = archive.json(archive.blob_name(node["config"]["digest"]))
        layers: list[tuple[str, str | None]] = [
            (archive.blob_name(layer["digest"]), str(layer["digest"]))
            for layer in node["layers"]]
        return config, layers
    if "manifest.json" in archive.members:
        manifest = archive.json("manifest.json")
        if not isinstance(manifest, list) or not manifest or not isinstance(manifest[0], dict):
            raise ImageRejected("the archive's manifest.json lists no image")
        entry = manifest[0]
        config = archive.json(str(entry.get("Config")))
        found: list[tuple[str, str | None]] = []
        for name in entry.get("Layers") or []:
            name = str(name)
            named = name.startswith("blobs/sha256/")
            found.append((name, f"sha256:{name.rsplit('/', 1)[1]}" if named else None))
        return config, found
    raise ImageRejected("the archive is neither a docker save archive (manifest.json) nor "
                        "an OCI image layout (oci-layout, index.json)")


def import_archive(store: LayerStore, path: Path, max_bytes: int
                   ) -> tuple[dict[str, Any], list[LayerBlob], list[str], int]:
    """Read the archive into the store: (config, layer blobs, diff_ids, unpacked size).
    Call it holding ``store.writing()``; the caller writes the record."""
    archive = _Archive(path)
    try:
        config, layers = _image_in(archive)
        if not isinstance(config, dict):
            raise ImageRejected("the archive's image config is not a JSON object")
        try:
            want = list(config["rootfs"]["diff_ids"])
        except (KeyError, TypeError):
            raise ImageRejected("the archive's image config has no rootfs.diff_ids") from None
        if len(want) != len(layers):
            raise ImageRejected(f"the archive's config names {len(want)} layers, its "
                                f"manifest {len(layers)}")
        blobs: list[LayerBlob] = []
        used = 0
        for index, (member, digest) in enumerate(layers):
            blob = _copy_blob(store, archive, member, digest)
            blobs.append(blob)
            diff_id = str(want[index])
            if not store.has_layer(diff_id):
                lowers = [store.layer_path(d) for d in reversed(want[:index])]
                staging = store.staging("import")
                try:
                    (staging / "fs").mkdir(mode=0o755)
                    with store.blob_path(blob.digest).open("rb") as fh:
                        result = unpack_layer(fh, staging / "fs", lowers,
                                              UnpackLimits(max_bytes=max(0, max_bytes - used)))
                    if result.diff_id != diff_id:
                        raise ImageRejected(f"layer {index + 1} of the archive unpacks to "
                                            f"{result.diff_id}, not the config's {diff_id}")
                    store.publish_layer(staging, diff_id, result.size)
                finally:
                    remove_tree(staging)
            used += store.layer_size(diff_id)
            if used > max_bytes:
                raise ImageRejected(f"the archive's image unpacks to more than this server's "
                                    f"cap of {max_bytes} bytes")
        return config, blobs, [str(d) for d in want], used
    finally:
        archive.close()


def _copy_blob(store: LayerStore, archive: _Archive, member: str, digest: str | None
               ) -> LayerBlob:
    staged = store.tmp / f"blob-import-{hashlib.sha256(member.encode()).hexdigest()[:12]}"
    hasher = hashlib.sha256()
    size = 0
    head = b""
    try:
        with archive.open(member) as source, staged.open("wb") as out:
            while chunk := source.read(1 << 20):
                if not head:
                    head = chunk[:4]
                hasher.update(chunk)
                out.write(chunk)
                size += len(chunk)
        actual = "sha256:" + hasher.hexdigest()
        if digest is not None and actual != digest:
            raise ImageRejected(f"the archive's {member!r} does not match its digest")
        store.publish_blob(staged, actual)
    except (tarfile.TarError, OSError, EOFError):
        raise ImageRejected(f"the archive's {member!r} cannot be read (truncated?)") from None
    finally:
        staged.unlink(missing_ok=True)
    return LayerBlob(actual, _layer_media_type(head), size)


async def push(store: LayerStore, client: RegistryClient, record: ImageRecord,
               ref: Reference, listen: Listener) -> str:
    """Send ``record`` to ``ref``; the manifest digest the registry now has."""
    listen({"status": "pushing", "ref": str(ref), "layers": len(record.blobs),
            "blobs": len(record.blobs) + 1})
    config_digest = str(record.extra.get("configDigest") or "")
    config_path = store.blob_path(config_digest) if config_digest else None
    manifest_path = store.blob_path(record.digest)
    if config_path is None or not config_path.is_file() or not manifest_path.is_file():
        raise SandportError(f"image {record.name!r} has lost its config or manifest")
    uploads = [(b.digest, store.blob_path(b.digest), b.size) for b in record.blobs]
    uploads.append((config_digest, config_path, config_path.stat().st_size))
    for digest, path, size in uploads:
        if not path.is_file():
            raise SandportError(f"image {record.name!r} has lost layer blob {digest}")
        if await client.has_blob(ref, digest):
            listen({"layer": digest, "status": "exists", "done": size, "total": size})
            continue
        listen({"layer": digest, "status": "uploading", "done": 0, "total": size})
        await client.upload_blob(ref, digest, path, size)
        listen({"layer": digest, "status": "done", "done": size, "total": size})
    body = manifest_path.read_bytes()
    media_type = json.loads(body).get("mediaType") or "application/vnd.oci.image.manifest.v1+json"
    return await client.put_manifest(ref, media_type, body)
