"""The layer tar of an overlay-form directory (runtime/images/layerwrite.py), read back
with Python's tarfile and with the layer store's own unpacker (needs root: whiteouts are
device nodes and opaque directories trusted.* attributes)."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from sandport.runtime._files import remove_tree
from sandport.runtime.images.layerwrite import _Exactly, write_layer_tar
from sandport.runtime.images.unpack import OPAQUE_XATTR, unpack_layer


def _upper(root: Path) -> Path:
    """What a sandbox's upper directory holds after it deleted, replaced and wrote."""
    up = root / "upper"
    (up / "etc" / "apt").mkdir(parents=True)
    os.setxattr(up / "etc" / "apt", OPAQUE_XATTR, b"y")
    (up / "etc" / "apt" / "new").write_text("only\n")
    os.mknod(up / "etc" / "issue", stat.S_IFCHR | 0o000, os.makedev(0, 0))  # a whiteout
    (up / "srv").mkdir()
    (up / "srv" / "a").write_bytes(b"x" * 70000)
    os.link(up / "srv" / "a", up / "srv" / "b")
    (up / "srv" / "escape").symlink_to("/etc/shadow")
    os.setxattr(up / "srv" / "a", "user.note", b"\xff\x00binary")
    os.setxattr(up / "srv" / "a", "trusted.overlay.origin", b"not the image's")
    os.chown(up / "srv" / "a", 1234, 2345)
    (up / "etc" / "hosts").write_text("sandport's own\n")
    (up / "dev").mkdir()
    (up / "dev" / "null-stub").write_text("mount point\n")
    os.mkfifo(up / "srv" / "pipe")
    return up


def _tar(up: Path) -> bytes:
    out = io.BytesIO()
    write_layer_tar(up, out)
    return out.getvalue()


def test_overlay_markers_become_oci_entries(tmp_path: Path) -> None:
    data = _tar(_upper(tmp_path))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    names = list(members)
    for index, name in enumerate(names):  # a directory before what it holds
        parent = name.rpartition("/")[0]
        assert not parent or parent in names[:index], name
    assert "etc/.wh.issue" in members and members["etc/.wh.issue"].size == 0
    assert "etc/apt/.wh..wh..opq" in members
    assert "etc/hosts" not in members and "dev/null-stub" not in members and "dev" in members
    assert members["srv/b"].islnk() and members["srv/b"].linkname == "srv/a"
    assert members["srv/escape"].issym() and members["srv/escape"].linkname == "/etc/shadow"
    assert members["srv/pipe"].isfifo()
    a = members["srv/a"]
    assert (a.uid, a.gid, a.size) == (1234, 2345, 70000)
    assert "SCHILY.xattr.user.note" in a.pax_headers
    assert not any("trusted" in key for m in members.values() for key in m.pax_headers)
    assert _tar(tmp_path / "upper") == data  # the same tree gives the same bytes


def test_the_tar_unpacks_to_the_same_tree(tmp_path: Path) -> None:
    up = _upper(tmp_path)
    target = tmp_path / "layer"
    target.mkdir()
    unpacked = unpack_layer(io.BytesIO(_tar(up)), target)
    assert unpacked.entries > 5
    st = os.lstat(target / "etc" / "issue")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0  # a whiteout again
    assert os.getxattr(target / "etc" / "apt", OPAQUE_XATTR) == b"y"
    assert os.getxattr(target / "srv" / "a", "user.note") == b"\xff\x00binary"
    assert os.stat(target / "srv" / "a").st_ino == os.stat(target / "srv" / "b").st_ino
    assert os.readlink(target / "srv" / "escape") == "/etc/shadow"
    assert (target / "srv" / "a").read_bytes() == b"x" * 70000
    assert not (target / "etc" / "hosts").exists()


def test_a_file_that_changed_size_since_its_header_still_gives_its_header_s_bytes() -> None:
    """A file shorter or longer than its lstat said (it changed under the writer): the
    entry gets exactly the size its header promised, so the tar stays readable."""
    shorter = _Exactly(io.BytesIO(b"y" * 10), 100)
    assert b"".join(iter(lambda: shorter.read(7), b"")) == b"y" * 10 + bytes(90)
    longer = _Exactly(io.BytesIO(b"z" * 500), 100)
    assert longer.read(-1) == b"z" * 100 and longer.read(10) == b""


def test_deep_trees_and_overlay_pointers(tmp_path: Path) -> None:
    """A sandbox may nest directories deeper than Python recursion goes: written all the
    same. A metacopy file or a redirect (overlay pointers into the layers below, which
    redirect_dir=off,metacopy=off never make) is refused rather than written as a copy
    of nothing."""
    up = tmp_path / "upper"
    up.mkdir()
    fd = os.open(up, os.O_RDONLY)
    for _ in range(1500):  # past Python's recursion limit, within PATH_MAX
        os.mkdir("d", dir_fd=fd)
        inner = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = inner
    with os.fdopen(os.open("bottom", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as fh:
        fh.write("deep\n")
    os.close(fd)
    try:
        with tarfile.open(fileobj=io.BytesIO(_tar(up))) as tar:
            assert tar.getmember("/".join(["d"] * 1500) + "/bottom").size == 5
        (up / "meta").write_text("")
        os.setxattr(up / "meta", "trusted.overlay.metacopy", b"")
        with pytest.raises(OSError, match="metacopy"):
            _tar(up)
        os.removexattr(up / "meta", "trusted.overlay.metacopy")
        os.setxattr(up / "d", "trusted.overlay.redirect", b"/elsewhere")
        with pytest.raises(OSError, match="redirect"):
            _tar(up)
    finally:
        remove_tree(up)  # deeper than shutil.rmtree goes: pytest's clean-up would fail on it
    assert not up.exists()
