"""A layer from a directory in overlayfs's form (a sandbox's upper directory, a copy of it):
the OCI layer tar of it, in name order, so the same tree gives the same bytes.

overlayfs marks a deleted name with a character device 0/0 and a directory that hides
everything below with ``trusted.overlay.opaque=y``; an OCI layer says the same with an
empty ``.wh.NAME`` and a ``.wh..wh..opq`` entry. Hard links within the tree stay links;
``security.capability`` and ``user.*`` attributes go as PAX ``SCHILY.xattr`` records, other
attributes (``trusted.overlay.*``, SELinux labels) are not the image's; sockets and device
nodes other than whiteouts are left out (no layer may carry them). Names under ``skip``
(the files sandport puts into every sandbox: ``etc/hosts`` and the like) are left out too.
The tree is untrusted (a sandbox made it): nothing is followed, every file is opened
without following a link, and what the tar says is only ever unpacked by ``unpack_layer``.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

OPAQUE_XATTR = "trusted.overlay.opaque"
REDIRECT_XATTR = "trusted.overlay.redirect"  # never made here (redirect_dir=off), refused
METACOPY_XATTR = "trusted.overlay.metacopy"  # never made here (metacopy=off), refused
KEPT_XATTRS = ("security.capability",)
# What runc and sandport put into every sandbox's root: bind-mount points and mounts of
# their own, never the image's (whatever an upper directory holds under them is hidden).
SANDPORT_FILES = frozenset({"etc/hosts", "etc/resolv.conf", "etc/hostname"})
MOUNTED_DIRS = frozenset({"dev", "proc", "sys"})


def write_layer_tar(root: Path, out: IO[bytes],
                    skip: frozenset[str] = SANDPORT_FILES) -> int:
    """Write the OCI layer tar of overlay-form directory ``root`` to ``out``; returns the
    number of entries written."""
    count = 0
    links: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT,
                      encoding="utf-8", errors="surrogateescape") as tar:
        for rel, st in _walk(root):
            if rel in skip or rel.split("/", 1)[0] in MOUNTED_DIRS and "/" in rel:
                continue
            path = root / rel
            parent, _, name = rel.rpartition("/")
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                tar.addfile(_info(f"{parent}/.wh.{name}" if parent else f".wh.{name}", st,
                                  tarfile.REGTYPE))
                count += 1
                continue
            if stat.S_ISDIR(st.st_mode):
                tar.addfile(_info(rel, st, tarfile.DIRTYPE, path))
                count += 1
                if _xattr(path, OPAQUE_XATTR) == b"y":
                    tar.addfile(_info(f"{rel}/.wh..wh..opq", st, tarfile.REGTYPE))
                    count += 1
                continue
            if stat.S_ISLNK(st.st_mode):
                info = _info(rel, st, tarfile.SYMTYPE)
                info.linkname = os.readlink(path)
                tar.addfile(info)
            elif stat.S_ISFIFO(st.st_mode):
                tar.addfile(_info(rel, st, tarfile.FIFOTYPE, path))
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in links:
                    info = _info(rel, st, tarfile.LNKTYPE)
                    info.linkname = links[key]
                    tar.addfile(info)
                else:
                    links[key] = rel
                    info = _info(rel, st, tarfile.REGTYPE, path)
                    info.size = st.st_size
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                    with os.fdopen(fd, "rb") as fh:
                        tar.addfile(info, _Exactly(fh, st.st_size))
            else:
                continue  # sockets, device nodes: never part of an image
            count += 1
    return count


def _walk(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """(relative name, lstat) of everything under ``root``, a directory before what it
    holds, names in byte order; links are not followed, and depth costs no stack."""
    pending: list[list[str]] = [sorted(os.listdir(root), key=os.fsencode, reverse=True)]
    prefixes = [""]
    while pending:
        if not pending[-1]:
            pending.pop()
            prefixes.pop()
            continue
        child = prefixes[-1] + pending[-1].pop()
        st = os.lstat(root / child)
        yield child, st
        if stat.S_ISDIR(st.st_mode):
            if _xattr(root / child, REDIRECT_XATTR) is not None:
                raise OSError(errno.ENOTSUP, "an overlay redirect (a directory renamed with "
                              "redirect_dir=on) cannot become a layer")
            pending.append(sorted(os.listdir(root / child), key=os.fsencode, reverse=True))
            prefixes.append(child + "/")
        elif stat.S_ISREG(st.st_mode) and _xattr(root / child, METACOPY_XATTR) is not None:
            raise OSError(errno.ENOTSUP, "an overlay metacopy file (metacopy=on) cannot "
                          "become a layer")


def _info(name: str, st: os.stat_result, kind: bytes, path: Path | None = None
          ) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    # a whiteout or an opaque marker (a regular entry with no file behind it): 0644
    info.mode = stat.S_IMODE(st.st_mode) if kind != tarfile.REGTYPE or path else 0o644
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""
    info.mtime = int(st.st_mtime)
    if path is not None:
        xattrs = {f"SCHILY.xattr.{key}": value.decode("utf-8", "surrogateescape")
                  for key in _listxattr(path) if key in KEPT_XATTRS or key.startswith("user.")
                  if (value := _xattr(path, key)) is not None}
        if xattrs:
            info.pax_headers = xattrs
    return info


def _listxattr(path: Path) -> list[str]:
    try:
        return sorted(os.listxattr(path, follow_symlinks=False))
    except OSError:
        return []


def _xattr(path: Path, key: str) -> bytes | None:
    try:
        return os.getxattr(path, key, follow_symlinks=False)
    except OSError:
        return None


class _Exactly:
    """A file read as exactly ``size`` bytes: one that changed size since its lstat gives
    the tar what its header promised (zeros past a shortened end), never a broken tar."""

    def __init__(self, fh: IO[bytes], size: int) -> None:
        self._fh = fh
        self._left = size

    def read(self, size: int = -1) -> bytes:
        want = self._left if size < 0 else min(size, self._left)
        data = self._fh.read(want)[:want] if want else b""
        if len(data) < want:
            data += bytes(want - len(data))
        self._left -= len(data)
        return data
