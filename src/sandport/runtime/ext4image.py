"""ext4 filesystems in sparse image files: made to a size, copied, mounted, grown, shut down.

The size asked for is what ``df`` shows (ext4's own share, 7-10 % for inode tables and the
journal, is added to the image), read from the superblock without mounting. One inode per
block: a filesystem cannot run out of inodes while it has room (trees of small files), and
the inode tables cost no host space until used (lazy init, ``noinit_itable``, a sparse
image).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import os
import struct
from pathlib import Path

from . import loopdev

MIB = 1 << 20
BLOCK = 4096
MKFS = ("mkfs.ext4", "-q", "-F", "-m", "0", "-b", str(BLOCK), "-i", str(BLOCK), "-I", "256",
        "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", "-L", "sandport")
# discard: a file deleted inside gives its blocks back to the host (the loop device punches
# holes in the image).
MOUNT_OPTIONS = b"noinit_itable,discard"
EXT4_IOC_RESIZE_FS = 0x40086610  # _IOW('f', 16, __u64)
EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
EXT4_GOING_FLAGS_NOLOGFLUSH = 2
MNT_DETACH, UMOUNT_NOFOLLOW = 2, 8

_libc = ctypes.CDLL(None, use_errno=True)


async def make(image: Path, size_mib: int) -> None:
    """mkfs ``image`` so that its filesystem has ``size_mib`` for files (a first mkfs
    shows ext4's share for this size, a second one adds it)."""
    want = size_mib * MIB
    size = want
    for _ in range(4):  # the share grows a little with the image (a journal may double)
        with open(image, "wb") as fh:
            fh.truncate(size)  # sparse: nothing is written but what mkfs writes
        await run_tool(*MKFS, str(image))
        usable = usable_bytes(image)
        if usable >= want:
            return
        size = _blocks_up(size + (want - usable) * size // usable) * BLOCK


def usable_bytes(image: Path) -> int:
    """What df will show as the size of the ext4 in ``image``: its blocks less its
    overhead, from the superblock (at byte 1024)."""
    with open(image, "rb") as fh:
        fh.seek(1024)
        sb = fh.read(1024)

    def u32(offset: int) -> int:
        return int(struct.unpack_from("<I", sb, offset)[0])

    if sb[0x38:0x3A] != b"\x53\xef":
        raise OSError(errno.EIO, f"no ext4 superblock in {image}")
    block = 1024 << u32(0x18)
    blocks, overhead = u32(0x04) | u32(0x150) << 32, u32(0x248)
    if overhead == 0:  # an mkfs that does not record it: count the free blocks instead
        return (u32(0x0C) | u32(0x158) << 32) * block
    return (blocks - overhead) * block


def copy_sparse(source: Path, dest: Path) -> None:
    """Copy an image's data and leave its holes holes (an empty 4 GiB ext4: 2 MiB, 1.4 ms;
    mkfs takes 10 ms)."""
    with open(source, "rb") as src, open(dest, "xb") as dst:
        end = os.fstat(src.fileno()).st_size
        dst.truncate(end)
        offset = 0
        while offset < end:
            try:
                data = os.lseek(src.fileno(), offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole left
                    return
                raise
            offset = os.lseek(src.fileno(), data, os.SEEK_HOLE)
            position = data
            while position < offset:
                copied = os.copy_file_range(src.fileno(), dst.fileno(), offset - position,
                                            position, position)
                if copied == 0:
                    raise OSError(errno.EIO, f"{source} ended while being copied")
                position += copied


def mount(image: Path, target: Path) -> None:
    device, fd = loopdev.attach(image)
    try:
        if _libc.mount(device.encode(), os.fsencode(target), b"ext4", 0, MOUNT_OPTIONS) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mount {device}: {os.strerror(err)}")
    finally:
        os.close(fd)  # the mount holds the device now; autoclear frees it with the mount
    # The device reads and writes the image directly from now on: the copy's pages (2 MiB
    # for an empty 4 GiB disk, flushed when the device was attached) would only sit in the
    # page cache.
    with open(image, "rb") as fh:
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def mounted_from(target: Path, image: Path) -> bool:
    """Whether ``target`` is the root of a filesystem on a loop device backed by ``image``
    (checked before anything is done to "the filesystem at target": unmounted, it is the
    host's own)."""
    try:
        root, parent = os.stat(target, follow_symlinks=False), os.stat(target.parent)
        backing = Path(f"/sys/dev/block/{os.major(root.st_dev)}:{os.minor(root.st_dev)}"
                       "/loop/backing_file").read_text().strip()
    except OSError:
        return False
    return root.st_dev != parent.st_dev and backing == os.path.realpath(image)


def discard_and_unmount(target: Path, image: Path) -> None:
    """Unmount the filesystem at ``target`` (every mount of it, lazily), first shutting it
    down without writing back what it holds in memory: its files are about to be deleted,
    and a sandbox that wrote gigabytes just before its end would make the unmount write
    them all to the image first."""
    if mounted_from(target, image):
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("=I", EXT4_GOING_FLAGS_NOLOGFLUSH))
        except OSError:
            pass  # then the unmount writes it back: slower, no less correct
        finally:
            os.close(fd)
    while _libc.umount2(os.fsencode(target), MNT_DETACH | UMOUNT_NOFOLLOW) == 0:
        pass
    err = ctypes.get_errno()
    if err not in (errno.EINVAL, errno.ENOENT, errno.ENOTDIR):  # EINVAL: not mounted (now)
        raise OSError(err, f"umount {target}: {os.strerror(err)}")


def grow(target: Path, image: Path, size_mib: int) -> None:
    """Grow the mounted filesystem at ``target`` (on ``image``) to ``size_mib`` for files,
    online. Needs CAP_SYS_RESOURCE (EPERM without)."""
    want = size_mib * MIB
    device = loopdev.device_of(target)
    for _ in range(4):  # each step adds the missing room plus the new groups' share
        usable = df_bytes(target)
        if usable >= want:
            return
        size = image.stat().st_size
        size = _blocks_up(size + (want - usable) * size // usable) * BLOCK
        os.truncate(image, size)
        loopdev.refresh_capacity(device)
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, EXT4_IOC_RESIZE_FS, struct.pack("=Q", size // BLOCK))
        finally:
            os.close(fd)


def df_bytes(target: Path) -> int:
    st = os.statvfs(target)
    return st.f_blocks * st.f_frsize


def _blocks_up(size: int) -> int:
    return -(-size // BLOCK)


async def run_tool(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise OSError(errno.EIO, f"{argv[0]} failed: {err.decode(errors='replace').strip()}")
