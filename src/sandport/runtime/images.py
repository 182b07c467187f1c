"""The image store: read-only root filesystems that sandboxes overlay.

Layout under the images directory, one folder per image name::

    <name>/current -> <version>          the version new sandboxes use
    <name>/<version>/rootfs/             the flattened root filesystem (read-only lower)
    <name>/<version>/config.json         an OCI image configuration (Env, WorkingDir, Cmd)
    <name>/<version>/sandport.json       where it came from and when

Pulled or imported OCI images fit the same shape: their layers unpack into ``rootfs`` and
their image configuration becomes ``config.json``. A rebuild writes a new version and moves
``current``; running sandboxes keep the version they were created from, so a lower
directory is never changed under a live overlay.

The built-in images are Debian packages installed by ``mmdebstrap``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ImageNotFound, RuntimeFailure
from ..models import ImageInfo, iso
from ._files import read_json

BUILTIN_PACKAGES: dict[str, tuple[str, ...]] = {
    "base": ("procps", "ca-certificates"),
    "python": ("procps", "ca-certificates", "python3", "python3-pip", "python3-venv"),
    "node": ("procps", "ca-certificates", "nodejs", "npm"),
}
_EXCLUDE_DOCS = ("/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*",
                 "/usr/share/info/*")
DEFAULT_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "LANG=C.UTF-8")

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Image:
    name: str
    version: str
    rootfs: Path
    env: tuple[str, ...]
    workdir: str


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


def mmdebstrap_command(name: str, target: Path, suite: str, mirror: list[str]) -> list[str]:
    """The build command of a built-in image (pure, so the unit suite can read it)."""
    excludes = [f"--dpkgopt=path-exclude={p}" for p in _EXCLUDE_DOCS]
    return [
        "mmdebstrap", "--variant=minbase", "--mode=root", "--format=directory",
        "--include=" + ",".join(BUILTIN_PACKAGES[name]), *excludes,
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        suite, str(target), *mirror,
    ]


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def names(self) -> list[str]:
        present = {p.name for p in self.root.iterdir() if (p / "current").exists()} if (
            self.root.exists()) else set()
        return sorted(present | set(BUILTIN_PACKAGES))

    def is_built(self, name: str) -> bool:
        return (self.root / name / "current" / "rootfs").is_dir()

    def check_name(self, name: str) -> None:
        """Raise ImageNotFound, naming the images that exist, unless ``name`` is one."""
        if name not in self.names():
            raise ImageNotFound(
                f"image {name!r} does not exist; available images: {', '.join(self.names())}"
            )

    def resolve(self, name: str) -> Image:
        """The current version of ``name``."""
        self.check_name(name)
        if not self.is_built(name):
            raise ImageNotFound(f"image {name!r} is not built yet")
        version_dir = (self.root / name / "current").resolve()
        config = read_json(version_dir / "config.json").get("config", {})
        return Image(
            name=name,
            version=version_dir.name,
            rootfs=version_dir / "rootfs",
            env=tuple(config.get("Env") or DEFAULT_ENV),
            workdir=config.get("WorkingDir") or "/",
        )

    def info(self, name: str) -> ImageInfo:
        meta: dict[str, Any] = {}
        if self.is_built(name):
            meta = read_json(self.root / name / "current" / "sandport.json")
        return ImageInfo(
            name=name,
            built=self.is_built(name),
            created_at=meta.get("createdAt"),
            size_bytes=meta.get("sizeBytes"),
            source=meta.get("source") or (
                "debian:" + ",".join(BUILTIN_PACKAGES[name]) if name in BUILTIN_PACKAGES else ""
            ),
        )

    async def ensure(self, name: str, progress: Progress) -> Image:
        """The image, built first if it is a built-in image that was never built."""
        if not self.is_built(name):
            await self.build(name, progress, only_if_missing=True)
        return self.resolve(name)

    async def build(self, name: str, progress: Progress, *, only_if_missing: bool = False) -> Image:
        if name not in BUILTIN_PACKAGES:
            raise ImageNotFound(
                f"image {name!r} cannot be built here; built-in images: "
                + ", ".join(sorted(BUILTIN_PACKAGES))
            )
        async with self._build_lock(name):
            if only_if_missing and self.is_built(name):
                return self.resolve(name)  # another server or request built it meanwhile
            return await self._build_locked(name, progress)

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

    async def _build_locked(self, name: str, progress: Progress) -> Image:
        started = time.monotonic()
        version = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        image_dir = self.root / name
        staging = image_dir / f".staging-{version}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        command = mmdebstrap_command(name, staging / "rootfs", _host_suite(), _host_mirror())
        packages = " ".join(BUILTIN_PACKAGES[name])
        progress(f"[image {name}] building from Debian packages: {packages}")
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert proc.stdout is not None
        tail: list[str] = []
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                tail = (tail + [line])[-20:]
                progress(f"[image {name}] {time.monotonic() - started:5.1f}s {line}")
        if await proc.wait() != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise RuntimeFailure(f"building image {name!r} failed: " + " | ".join(tail[-3:]))
        _write_image_files(staging, name)
        final = image_dir / version
        staging.rename(final)
        link = image_dir / f".current-{os.getpid()}"
        link.unlink(missing_ok=True)
        link.symlink_to(version)
        link.replace(image_dir / "current")  # atomic switch for new sandboxes
        progress(f"[image {name}] ready in {time.monotonic() - started:.1f}s")
        return self.resolve(name)


def _write_image_files(version_dir: Path, name: str) -> None:
    size = sum(
        entry.stat(follow_symlinks=False).st_size
        for entry in (version_dir / "rootfs").rglob("*")
    )
    config = {
        "architecture": os.uname().machine,
        "os": "linux",
        "config": {"Env": list(DEFAULT_ENV), "WorkingDir": "/", "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": []},
    }
    meta = {
        "name": name,
        "createdAt": iso(time.time()),
        "sizeBytes": size,
        "source": "debian:" + ",".join(BUILTIN_PACKAGES[name]),
    }
    (version_dir / "config.json").write_text(json.dumps(config, indent=2))
    (version_dir / "sandport.json").write_text(json.dumps(meta, indent=2))

