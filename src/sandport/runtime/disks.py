"""Each sandbox's disk: an ext4 filesystem of its own, ``diskSizeMiB`` large, that holds its
overlay's upper and work directories. A write past the size fails with ENOSPC, ``df /``
in the sandbox shows the size (the overlay reports its upper filesystem), and neither the
host's disk nor another sandbox's is touched.

Why not project quotas on one shared filesystem (XFS ``prjquota``, as Docker's overlay2
``size=``): the kernels these hosts run are built without ``CONFIG_XFS_QUOTA`` (an XFS
mounted with ``prjquota`` is refused: "quota support not available in this kernel") and
without ``CONFIG_QFMT_V2``, which ext4's quotas need; btrfs qgroups answer EDQUOT, not
ENOSPC, and ``df`` shows the whole pool. A filesystem per sandbox needs only ext4 and loop
devices, and root in a sandbox has nothing to switch off or re-tag to get past it (no
project ID; its disk's size is the loop device's).

Layout: ``<data_dir>/disks/<id>/image``, a sparse file (it takes host space as it is
written and gives it back as files are deleted), on a loop device mounted at ``<id>/fs``,
holding ``upper/`` and ``work/``; the bundle's ``upper`` and ``work`` are links to those.
The mounts are the kernel's: they outlive a server restart, and destroy finds them by
their path. A new disk is a copy of ``templates/<size>.img``, made by mkfs once per size
(a copy takes 1.4 ms, mkfs 10 ms); two spare disks of each of the two sizes last asked
for wait ready (``spare-*``), so a create only renames one (attaching a loop device and
mounting it took 2 ms on an idle machine, 10-30 ms on a busy one). A destroyed sandbox's
disk is moved to ``trash/`` (its mount moves with it), and unmounted and deleted after the
destroy has returned (that took 5-25 ms).

Where the host cannot (not root, no loop devices, no ext4, no mkfs.ext4; found by a trial
disk at start), the server says so in its log and sizes are only checked at admission.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
from pathlib import Path

from ..errors import NotSupported, RuntimeFailure
from ..ids import is_sandbox_id
from . import ext4image, loopdev
from ._files import remove_tree

log = logging.getLogger("sandport.runtime.disks")

TEMPLATE_FORMAT = "ext4-1"  # changes with ext4image.MKFS: older templates are not used
TEMPLATES_KEPT = 8  # sizes; the least recently used beyond goes (0.4-16 MiB each)
TRIAL_MIB = 64
SPARES = 2  # disks made ahead for each of the SPARE_SIZES sizes last asked for
SPARE_SIZES = 2


class SandboxDisks:
    """The disks of one server's sandboxes under ``root``. ``mode``: "auto" (enforce where
    the host can, else say why not and go on), "on" (refuse to start without), "off"."""

    def __init__(self, root: Path, mode: str = "auto") -> None:
        self.root = root
        self.templates = root / "templates"
        self.trash = root / "trash"  # disks of destroyed sandboxes, being removed
        self.mode = mode
        self.why_not: str | None = "not prepared yet"
        self._making = asyncio.Lock()  # one template at a time
        self._spares: dict[int, list[Path]] = {}  # size → ready disks
        self._filling: asyncio.Task[None] | None = None
        self._sweeping: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def enforced(self) -> bool:
        return self.why_not is None

    async def prepare(self) -> None:
        """Once per server start: find out with a trial disk whether the host can give
        each sandbox one, and say so either way."""
        if self.root.is_dir():  # spares and trash of an earlier server (sandboxes' stay)
            trash = list(self.trash.iterdir()) if self.trash.is_dir() else []
            for left in [*self.root.glob("spare-*"), *trash]:
                _unmount_and_delete(left)
        self.why_not = "disk_limits is off" if self.mode == "off" else await self._trial()
        if self.why_not is None:
            log.info("disk limits enforced: each sandbox has a filesystem of diskSizeMiB")
        elif self.mode == "on":
            raise RuntimeFailure(f"disk limits cannot be enforced: {self.why_not}")
        else:
            log.warning("disk limits NOT enforced (%s): diskSizeMiB is only checked against "
                        "free space at create", self.why_not)

    async def _trial(self) -> str | None:
        if os.geteuid() != 0:
            return "the server does not run as root"
        if not os.path.exists("/dev/loop-control"):
            return "no loop devices (/dev/loop-control is missing)"
        with open("/proc/filesystems") as fh:
            if "ext4" not in fh.read().split():
                return "the kernel has no ext4"
        if shutil.which(ext4image.MKFS[0]) is None:
            return f"{ext4image.MKFS[0]} is missing (apt install e2fsprogs)"
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.templates.mkdir(exist_ok=True, mode=0o700)
        for partial in self.templates.glob("*.partial"):  # what a crash left
            partial.unlink()
        trial = self.root / "trial"
        _unmount_and_delete(trial)
        try:
            await self._new_disk(trial, TRIAL_MIB)
            if ext4image.df_bytes(trial / "fs") < TRIAL_MIB * ext4image.MIB:
                return "a trial disk came out smaller than asked"
        except OSError as exc:
            return f"a trial disk failed: {exc.strerror or exc}"
        finally:
            _unmount_and_delete(trial)
        return None

    async def close(self) -> None:
        """At server stop: empty the trash and remove the spares (the sandboxes' disks
        stay, with them)."""
        self._closing = True  # a spare being made is finished first: threads cannot stop
        for task in (self._filling, self._sweeping):
            if task is not None:
                await task
        self._spares.clear()
        if self.root.is_dir():
            for disk in self.root.glob("spare-*"):
                await asyncio.to_thread(_unmount_and_delete, disk)

    # -- per sandbox ----------------------------------------------------------------------
    async def attach(self, sandbox_id: str, bundle: Path, size_mib: int) -> None:
        """Give the sandbox a disk of ``size_mib``: the bundle's upper and work (empty
        directories) become links to directories on it. Nothing where not enforced."""
        if not self.enforced:
            return
        directory = self.root / sandbox_id
        await self._make(directory, size_mib)
        for sub in ("upper", "work"):
            (bundle / sub).rmdir()
            (bundle / sub).symlink_to(directory / "fs" / sub)

    async def resize(self, sandbox_id: str, size_mib: int) -> None:
        """Grow a running sandbox's disk to ``size_mib`` (ext4 grows online, with
        CAP_SYS_RESOURCE; it cannot shrink: NotSupported)."""
        fs, image = self.root / sandbox_id / "fs", self.root / sandbox_id / "image"
        if not self.enforced or not ext4image.mounted_from(fs, image):
            return
        if size_mib * ext4image.MIB < ext4image.df_bytes(fs) - ext4image.MIB:
            raise NotSupported("a sandbox's disk can grow but not shrink")
        try:
            await asyncio.to_thread(ext4image.grow, fs, image, size_mib)
        except OSError as exc:
            log.error("sandbox %s: disk not grown to %d MiB: %s", sandbox_id, size_mib, exc)
            raise RuntimeFailure("the sandbox's disk could not be grown") from None

    async def move_upper(self, bundle: Path, dest: Path) -> None:
        """Move the sandbox's changed files (its overlay's upper directory) to ``dest`` on
        the host's disk: a rename where they are there, else a copy off its own disk
        (mounted again if a host reboot left it unmounted). Safe to repeat."""
        upper = bundle / "upper"
        if not upper.is_symlink():
            if upper.is_dir():
                upper.rename(dest)
            return
        directory = self.root / bundle.name
        source, image = directory / "fs" / "upper", directory / "image"
        if image.exists() and not ext4image.mounted_from(directory / "fs", image):
            if loopdev.in_use(image):
                log.error("disk %s: attached but not mounted: its files are not kept",
                          directory.name)
                return
            await asyncio.to_thread(ext4image.mount, image, directory / "fs")
        if not source.is_dir():
            return
        partial = dest.with_name(dest.name + ".partial")
        remove_tree(partial)
        # cp -a keeps what overlayfs needs of an upper: whiteouts (device nodes), its
        # trusted.overlay.* attributes, owners, modes, times, hard links, sparseness.
        await ext4image.run_tool("cp", "-a", "--", str(source), str(partial))
        partial.rename(dest)

    async def release(self, sandbox_id: str) -> None:
        """Remove the sandbox's disk, after its overlay: moved aside at once, unmounted and
        deleted just after. Safe to repeat, whatever a crash left half made."""
        directory = self.root / sandbox_id
        if not directory.exists():
            return
        self.trash.mkdir(exist_ok=True, mode=0o700)
        directory.rename(self.trash / secrets.token_hex(8))  # no id: the sandbox is gone
        if self._sweeping is None or self._sweeping.done():
            self._sweeping = asyncio.ensure_future(self._sweep())

    async def _sweep(self) -> None:
        tried: set[str] = set()  # one that cannot go waits for the next start
        try:
            while names := set(os.listdir(self.trash)) - tried:
                for name in names:
                    await asyncio.to_thread(_unmount_and_delete, self.trash / name)
                tried |= names
        except OSError as exc:
            log.error("disks: the trash could not be emptied: %s", exc)

    def sandbox_ids(self) -> set[str]:
        """Sandboxes that have a disk (a crash may leave one without a bundle)."""
        if not self.root.is_dir():
            return set()
        return {p.name for p in self.root.iterdir() if is_sandbox_id(p.name)}

    # -- making one -----------------------------------------------------------------------
    async def _make(self, directory: Path, size_mib: int) -> None:
        spares = self._spares.pop(size_mib, [])
        self._spares[size_mib] = spares  # the most recent size last
        if spares:
            spares.pop().rename(directory)  # its mount moves with it
        else:
            await self._new_disk(directory, size_mib)
        if self._filling is None or self._filling.done():
            self._filling = asyncio.ensure_future(self._fill())

    async def _new_disk(self, directory: Path, size_mib: int) -> None:
        template = await self._template(size_mib)
        directory.mkdir(mode=0o700)
        await asyncio.to_thread(_mount_copy, template, directory)

    async def _fill(self) -> None:
        """Make spares until each size recently asked for has SPARES (and drop others)."""
        while not self._closing:
            for size in list(self._spares)[:-SPARE_SIZES]:
                for disk in self._spares.pop(size):
                    await asyncio.to_thread(_unmount_and_delete, disk)
            short = [size for size, disks in self._spares.items() if len(disks) < SPARES]
            if not short:
                return
            disk = self.root / f"spare-{secrets.token_hex(4)}"
            try:
                await self._new_disk(disk, short[-1])
            except Exception as exc:  # no spare: creates make their disks themselves
                log.error("a spare disk could not be made: %s", exc)
                await asyncio.to_thread(_unmount_and_delete, disk)
                return
            if short[-1] in self._spares:
                self._spares[short[-1]].append(disk)
            else:  # no longer asked for
                await asyncio.to_thread(_unmount_and_delete, disk)

    async def _template(self, size_mib: int) -> Path:
        """The empty filesystem every disk of ``size_mib`` starts as a copy of."""
        path = self.templates / f"{TEMPLATE_FORMAT}-{size_mib}.img"
        async with self._making:
            if not path.exists():
                partial = path.with_suffix(".partial")
                await ext4image.make(partial, size_mib)
                partial.replace(path)
                self._forget_templates()
            os.utime(path)  # its mtime says when it was last used
        return path

    def _forget_templates(self) -> None:
        made = sorted(self.templates.glob("*.img"), key=lambda p: p.stat().st_mtime)
        for path in made[:-TEMPLATES_KEPT]:
            path.unlink(missing_ok=True)


def _mount_copy(template: Path, directory: Path) -> None:
    image, fs = directory / "image", directory / "fs"
    ext4image.copy_sparse(template, image)
    fs.mkdir(mode=0o700)
    ext4image.mount(image, fs)
    for sub in ("upper", "work"):
        (fs / sub).mkdir()


def _unmount(directory: Path) -> bool:
    """Unmount a disk (whether its filesystem is gone now; never deletes below one)."""
    try:
        ext4image.discard_and_unmount(directory / "fs", directory / "image")
    except OSError as exc:
        log.error("disk %s: %s", directory.name, exc)
        return False
    return True


def _unmount_and_delete(directory: Path) -> None:
    if _unmount(directory):
        remove_tree(directory)
