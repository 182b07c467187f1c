"""The tests' own container images, built in Python with no daemon and no I/O but reading
/bin/busybox: layers, image configs, manifests, indexes, and the two archive formats
(``docker save`` and an OCI layout tarball). Everything is deterministic: the same call
gives the same bytes and so the same digests. Pushing them is tests/registry_client.py's.

    layer = Layer.from_files({"etc/motd": b"hi\\n", "bin/hello": Symlink("busybox")})
    image = build_image([busybox_layer(), layer], cmd=["sh"])
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import random
import subprocess
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import zstandard

Compression = Literal["gzip", "zstd", "none"]
Media = Literal["oci", "docker"]
Platform = tuple[str, str] | tuple[str, str, str]  # (os, arch) or (os, arch, variant)

MTIME = 1_704_067_200  # 2024-01-01: fixed, so layers are byte-for-byte reproducible
CREATED = "2024-01-01T00:00:00Z"
BUSYBOX = "/bin/busybox"  # Debian's busybox-static: one static binary, no libc needed
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER_MEDIA = {
    ("oci", "gzip"): "application/vnd.oci.image.layer.v1.tar+gzip",
    ("oci", "zstd"): "application/vnd.oci.image.layer.v1.tar+zstd",
    ("oci", "none"): "application/vnd.oci.image.layer.v1.tar",
    ("docker", "gzip"): "application/vnd.docker.image.rootfs.diff.tar.gzip",
    ("docker", "none"): "application/vnd.docker.image.rootfs.diff.tar",
}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


# --- layer entries -------------------------------------------------------------------------

@dataclass(frozen=True)
class File:
    data: bytes
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Dir:
    mode: int = 0o755
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Symlink:
    target: str


@dataclass(frozen=True)
class Hardlink:
    target: str  # a path in the same layer


@dataclass(frozen=True)
class Whiteout:
    """Deletes the path from the layers below (written as ``.wh.<name>``)."""


@dataclass(frozen=True)
class Opaque:
    """Hides everything the layers below hold in this directory (``.wh..wh..opq``)."""


Entry = bytes | File | Dir | Symlink | Hardlink | Whiteout | Opaque


def _tar_entries(files: Mapping[str, Entry]) -> list[tuple[str, File | Dir | Symlink | Hardlink]]:
    """Normalised tar members, parents first: implicit 0755 parents, whiteouts as files."""
    members: dict[str, File | Dir | Symlink | Hardlink] = {}
    for raw_path, entry in files.items():
        path = raw_path.strip("/")
        if isinstance(entry, bytes):
            entry = File(entry)
        if isinstance(entry, Whiteout):
            parent, _, name = path.rpartition("/")
            path, entry = f"{parent}/.wh.{name}".lstrip("/"), File(b"", mode=0o000)
        elif isinstance(entry, Opaque):
            members.setdefault(path, Dir())
            path, entry = f"{path}/.wh..wh..opq", File(b"", mode=0o000)
        elif isinstance(entry, Hardlink):
            entry = Hardlink(entry.target.strip("/"))
        members[path] = entry
    for path in list(members):
        parts = path.split("/")
        for depth in range(1, len(parts)):
            members.setdefault("/".join(parts[:depth]), Dir())
    return sorted(members.items())


def make_tar(files: Mapping[str, Entry]) -> bytes:
    """An uncompressed layer tar of ``files`` (path → content or entry)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, entry in _tar_entries(files):
            info = tarfile.TarInfo(path)
            info.mtime = MTIME
            data = b""
            if isinstance(entry, File):
                info.mode, info.uid, info.gid, data = entry.mode, entry.uid, entry.gid, entry.data
                info.size = len(data)
            elif isinstance(entry, Dir):
                info.type, info.mode, info.uid, info.gid = (tarfile.DIRTYPE, entry.mode,
                                                            entry.uid, entry.gid)
            elif isinstance(entry, Symlink):
                info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, entry.target
            else:
                info.type, info.mode, info.linkname = tarfile.LNKTYPE, 0o644, entry.target
            tar.addfile(info, io.BytesIO(data) if data else None)
    return out.getvalue()


def compress(data: bytes, compression: Compression) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(data)
    return data


def decompress(data: bytes, compression: Compression) -> bytes:
    if compression == "gzip":
        return gzip.decompress(data)
    if compression == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


@dataclass(frozen=True)
class Layer:
    blob: bytes  # as stored in a registry (compressed)
    compression: Compression
    digest: str  # of the blob
    diff_id: str  # of the uncompressed tar: what the image config lists

    @classmethod
    def from_tar(cls, tar: bytes, compression: Compression = "gzip") -> Layer:
        blob = compress(tar, compression)
        return cls(blob=blob, compression=compression, digest=sha256(blob), diff_id=sha256(tar))

    @classmethod
    def from_files(cls, files: Mapping[str, Entry], compression: Compression = "gzip") -> Layer:
        return cls.from_tar(make_tar(files), compression)

    def tar(self) -> bytes:
        return decompress(self.blob, self.compression)

    def media_type(self, media: Media) -> str:
        try:
            return LAYER_MEDIA[(media, self.compression)]
        except KeyError:
            raise ValueError(f"{media} manifests have no {self.compression} layers") from None


# --- images and indexes --------------------------------------------------------------------

@dataclass(frozen=True)
class Image:
    manifest: bytes
    media_type: str
    config: bytes
    layers: tuple[Layer, ...]

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    @property
    def config_digest(self) -> str:
        return sha256(self.config)

    def blobs(self) -> dict[str, bytes]:
        """digest → bytes of every blob the manifest refers to (config first)."""
        return {self.config_digest: self.config, **{la.digest: la.blob for la in self.layers}}


@dataclass(frozen=True)
class Index:
    manifest: bytes
    media_type: str
    images: tuple[Image, ...]

    @property
    def digest(self) -> str:
        return sha256(self.manifest)


def build_image(layers: Sequence[Layer], *, env: Mapping[str, str] | None = None,
                workdir: str | None = None, user: str | None = None,
                entrypoint: Sequence[str] | None = None, cmd: Sequence[str] | None = None,
                labels: Mapping[str, str] | None = None,
                exposed_ports: Sequence[str] | None = None, os: str = "linux",
                arch: str = "amd64", variant: str | None = None,
                media: Media = "oci") -> Image:
    """An image of ``layers`` (lowest first). ``env`` defaults to PATH alone."""
    runtime: dict[str, object] = {"Env": [f"{k}={v}" for k, v in (env or {"PATH": PATH}).items()]}
    if workdir is not None:
        runtime["WorkingDir"] = workdir
    if user is not None:
        runtime["User"] = user
    if entrypoint is not None:
        runtime["Entrypoint"] = list(entrypoint)
    if cmd is not None:
        runtime["Cmd"] = list(cmd)
    if labels:
        runtime["Labels"] = dict(labels)
    if exposed_ports:
        runtime["ExposedPorts"] = {port: {} for port in exposed_ports}
    config: dict[str, object] = {
        "created": CREATED, "architecture": arch, "os": os, "config": runtime,
        "rootfs": {"type": "layers", "diff_ids": [la.diff_id for la in layers]},
        "history": [{"created": CREATED, "created_by": "tests/oci_images.py"} for _ in layers],
    }
    if variant:
        config["variant"] = variant
    config_bytes = canonical_json(config)
    manifest_type, config_type = ((OCI_MANIFEST, OCI_CONFIG) if media == "oci"
                                  else (DOCKER_MANIFEST, DOCKER_CONFIG))
    manifest = {
        "schemaVersion": 2, "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": sha256(config_bytes),
                   "size": len(config_bytes)},
        "layers": [{"mediaType": la.media_type(media), "digest": la.digest,
                    "size": len(la.blob)} for la in layers],
    }
    return Image(manifest=canonical_json(manifest), media_type=manifest_type,
                 config=config_bytes, layers=tuple(layers))


def build_index(images: Mapping[Platform, Image], media: Media = "oci") -> Index:
    """An OCI index or a Docker manifest list; each entry's platform is its key, so a test
    can also make an index that disagrees with an image's config."""
    entries = []
    for platform, image in images.items():
        described: dict[str, str] = {"os": platform[0], "architecture": platform[1]}
        if len(platform) == 3:
            described["variant"] = platform[2]
        entries.append({"mediaType": image.media_type, "digest": image.digest,
                        "size": len(image.manifest), "platform": described})
    media_type = OCI_INDEX if media == "oci" else DOCKER_LIST
    index = {"schemaVersion": 2, "mediaType": media_type, "manifests": entries}
    return Index(manifest=canonical_json(index), media_type=media_type,
                 images=tuple(images.values()))


# --- archives ------------------------------------------------------------------------------

def _archive(members: Mapping[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), MTIME, 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def docker_save_archive(image: Image, name: str) -> bytes:
    """What ``docker save name:tag`` writes (the classic format): manifest.json,
    repositories, <config>.json and one uncompressed <id>/layer.tar per layer."""
    repo, tag = _split_reference(name)
    members: dict[str, bytes] = {}
    layer_paths = []
    for layer in image.layers:
        layer_id = layer.diff_id.removeprefix("sha256:")
        members[f"{layer_id}/layer.tar"] = layer.tar()
        layer_paths.append(f"{layer_id}/layer.tar")
    config_name = image.config_digest.removeprefix("sha256:") + ".json"
    members[config_name] = image.config
    members["manifest.json"] = json.dumps(
        [{"Config": config_name, "RepoTags": [f"{repo}:{tag}"], "Layers": layer_paths}]).encode()
    last = layer_paths[-1].split("/")[0] if layer_paths else ""
    members["repositories"] = json.dumps({repo: {tag: last}}).encode()
    return _archive(members)


def oci_layout_archive(image: Image | Index, ref: str = "latest") -> bytes:
    """An OCI image layout as a tar (``oci-archive:``): oci-layout, index.json and
    blobs/sha256/<hex> of the manifest(s), config(s) and layers."""
    images = image.images if isinstance(image, Index) else (image,)
    blobs: dict[str, bytes] = {image.digest: image.manifest}
    for one in images:
        blobs[one.digest] = one.manifest
        blobs.update(one.blobs())
    top = {"mediaType": image.media_type, "digest": image.digest, "size": len(image.manifest),
           "annotations": {"org.opencontainers.image.ref.name": ref}}
    members = {
        "oci-layout": canonical_json({"imageLayoutVersion": "1.0.0"}),
        "index.json": canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                      "manifests": [top]}),
    }
    members.update({f"blobs/sha256/{d.removeprefix('sha256:')}": b for d, b in blobs.items()})
    return _archive(members)


def _split_reference(name: str) -> tuple[str, str]:
    repo, sep, tag = name.rpartition(":")
    if not sep or "/" in tag:  # "host:5000/name" has no tag
        return name, "latest"
    return repo, tag


# --- the tests' base image and a big one -------------------------------------------------

PASSWD = ("root:x:0:0:root:/root:/bin/sh\n"
          "app:x:1000:1000:app:/home/app:/bin/sh\n")
GROUP = "root:x:0:\napp:x:1000:\n"


@functools.cache
def busybox_files() -> dict[str, Entry]:
    """A minimal root: /bin/busybox and a symlink per applet, root and app (1000:1000)."""
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    with open(BUSYBOX, "rb") as binary:
        files: dict[str, Entry] = {"bin/busybox": File(binary.read(), mode=0o755)}
    files.update({f"bin/{name}": Symlink("busybox") for name in applets if name != "busybox"})
    files.update({
        "etc/passwd": PASSWD.encode(), "etc/group": GROUP.encode(),
        "root": Dir(0o700), "tmp": Dir(0o1777), "home/app": Dir(0o755, 1000, 1000),
        "usr/bin/env": Symlink("/bin/busybox"),  # for "#!/usr/bin/env" scripts
    })
    return files


@functools.cache
def busybox_layer(compression: Compression = "gzip") -> Layer:
    return Layer.from_files(busybox_files(), compression)


def busybox_image(*extra: Layer, compression: Compression = "gzip", media: Media = "oci",
                  **config: object) -> Image:
    """The busybox layer plus ``extra`` layers; ``config`` as build_image takes it."""
    config.setdefault("cmd", ["sh"])
    return build_image([busybox_layer(compression), *extra], media=media,
                       **config)  # type: ignore[arg-type]


def _text_lines(rng: random.Random) -> list[bytes]:
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz_", k=rng.randint(2, 10)))
             for _ in range(3000)]
    return [(" ".join(rng.choices(words, k=rng.randint(3, 14))) + "\n").encode()
            for _ in range(5000)]


def _content(rng: random.Random, lines: list[bytes], size: int) -> bytes:
    """Half the files are random bytes (compressed media, binaries), half text."""
    if rng.random() < 0.5:
        return rng.randbytes(size)
    text = b"".join(rng.choices(lines, k=size // 45 + 1))
    return text[:size]


@functools.cache
def big_image(total_mb: int = 220, layers: int = 4, seed: int = 0,
              compression: Compression = "gzip") -> Image:
    """A busybox image plus ``layers`` layers of ~total_mb/layers MB (uncompressed) each:
    many files from a few hundred bytes to some MB, random and text, the same for one seed."""
    rng = random.Random(seed)
    lines = _text_lines(rng)
    built = [busybox_layer(compression)]
    for index in range(layers):
        budget, files, number = total_mb * 1024 * 1024 // layers, {}, 0
        while budget > 0:
            size = min(budget, int(min(rng.lognormvariate(9.5, 2.0), 16 * 1024 * 1024)) + 1)
            files[f"opt/data{index}/d{number % 37:02d}/f{number:05d}"] = _content(rng, lines, size)
            budget, number = budget - size, number + 1
        built.append(Layer.from_files(files, compression))
    return build_image(built, cmd=["sh"], labels={"sandport.test": f"big-{total_mb}-{seed}"})
