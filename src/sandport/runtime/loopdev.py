"""Loop devices through their ioctls (linux/loop.h): attaching one costs two syscalls, not
a ``losetup`` process.

Every device is attached with ``LO_FLAGS_AUTOCLEAR``: the kernel detaches it when its last
user goes (the filesystem mounted on it is unmounted, or whoever attached it dies before
mounting), so nothing here can leak a device. ``LO_FLAGS_DIRECT_IO`` keeps the backing
file's pages out of the host's page cache, which already holds them once as the mounted
filesystem's (measured: 1 GiB written with fsync took 4-5 s buffered, 0.9 s direct, the
host's own disk 1.2 s).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from pathlib import Path

LOOP_CTL_GET_FREE = 0x4C82
LOOP_SET_CAPACITY = 0x4C07
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_DIRECT_IO = 16
_LO_NAME_SIZE = 64
# struct loop_info64: 5 u64, 4 u32 (lo_flags last), file and crypt names, key, 2 u64
_LOOP_INFO64 = struct.Struct(f"=5Q4I{_LO_NAME_SIZE}s{_LO_NAME_SIZE}s32s2Q")
_ATTEMPTS = 16  # another process may take the free device between the two ioctls


def attach(image: Path, *, direct_io: bool = True) -> tuple[str, int]:
    """Attach ``image`` to a free loop device: (its path, an open descriptor of it). The
    caller mounts the device, then closes the descriptor (autoclear holds from then on)."""
    flags = LO_FLAGS_AUTOCLEAR | (LO_FLAGS_DIRECT_IO if direct_io else 0)
    info = _LOOP_INFO64.pack(0, 0, 0, 0, 0, 0, 0, 0, flags,
                             os.fsencode(image)[:_LO_NAME_SIZE - 1], b"", b"", 0, 0)
    control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    backing = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(_ATTEMPTS):
            device = f"/dev/loop{fcntl.ioctl(control, LOOP_CTL_GET_FREE)}"
            fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
            # struct loop_config: the backing fd, a block size (0: 512), the info, reserved
            config = struct.pack("=II", backing, 0) + info + bytes(64)
            try:
                fcntl.ioctl(fd, LOOP_CONFIGURE, config)
            except OSError as exc:
                os.close(fd)
                if exc.errno == errno.EBUSY:
                    continue
                raise
            return device, fd
        raise OSError(errno.EBUSY, "no free loop device")
    finally:
        os.close(backing)
        os.close(control)


def device_of(mountpoint: Path) -> str:
    """The block device of the filesystem mounted at ``mountpoint`` (``/dev/loopN``)."""
    dev = os.stat(mountpoint).st_dev
    name = Path(os.path.realpath(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")).name
    return f"/dev/{name}"


def in_use(image: Path) -> bool:
    """Whether a loop device is attached to ``image`` (its filesystem may be alive, even
    unmounted: mounting it through a second device would corrupt it)."""
    wanted = os.path.realpath(image)
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            if backing.read_text().strip() == wanted:
                return True
        except OSError:
            continue  # detached meanwhile
    return False


def refresh_capacity(device: str) -> None:
    """Make the device as large as its backing file is now (after the file grew)."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, LOOP_SET_CAPACITY, 0)
    finally:
        os.close(fd)
