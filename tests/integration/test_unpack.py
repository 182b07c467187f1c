"""The layer unpacker against normal and hostile layers, checked on the filesystem.

Layers are built here with tarfile (gzip, zstd or plain) and read through a source that
hands out uneven pieces and cannot seek, as a socket would. Hostile layers are unpacked
next to a canary directory; afterwards the host must be as it was: the canary untouched,
nothing new beside the layer's directory, nothing named after the test anywhere else.
Root is needed (owners, device nodes, trusted.* xattrs, an overlay mount); no server.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import random
import resource
import stat
import subprocess
import tarfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from sandport.errors import ImageRejected
from sandport.runtime.images.unpack import Unpacked, UnpackLimits, unpack_layer

MTIME = 1_600_000_000
# security.capability, VFS_CAP_REVISION_2 with the effective bit: cap_net_bind_service
CAPABILITY = (0x02000001).to_bytes(4, "little") + (1 << 10).to_bytes(4, "little") + bytes(12)

# -- building layers ---------------------------------------------------------------------

Member = tuple[tarfile.TarInfo, bytes]


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", *, mode: int = 0o644,
           uid: int = 0, gid: int = 0, mtime: int = MTIME, link: str = "",
           xattrs: dict[str, bytes] | None = None, pax: dict[str, str] | None = None,
           dev: tuple[int, int] = (0, 0)) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, mtime
    info.linkname = link
    info.devmajor, info.devminor = dev
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.pax_headers = {f"SCHILY.xattr.{k}": os.fsdecode(v) for k, v in (xattrs or {}).items()}
    info.pax_headers.update(pax or {})
    return info, data


def file(name: str, data: bytes = b"", **kw: object) -> Member:
    return member(name, tarfile.REGTYPE, data, **kw)


def directory(name: str, **kw: object) -> Member:
    return member(name, tarfile.DIRTYPE, mode=kw.pop("mode", 0o755), **kw)


def symlink(name: str, target: str, **kw: object) -> Member:
    return member(name, tarfile.SYMTYPE, link=target, mode=0o777, **kw)


def hardlink(name: str, target: str) -> Member:
    return member(name, tarfile.LNKTYPE, link=target)


def tar(*members: Member, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def compress(plain: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(plain, mtime=0)
    if how == "zstd":
        return zstandard.ZstdCompressor().compress(plain)
    return plain


class Socketish:
    """A source with read() only, handing out uneven pieces (never what was asked)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0
        self._sizes = iter(range(10**9))

    def read(self, size: int = -1) -> bytes:
        step = 1 + (next(self._sizes) * 7919) % 65521
        if size > 0:
            step = min(step, size)
        piece = self._data[self._pos:self._pos + step]
        self._pos += len(piece)
        return piece


@pytest.fixture
def unpack(tmp_path: Path) -> Callable[..., tuple[Path, Unpacked]]:
    """Factory: unpack a blob into a new directory under tmp_path/layers."""
    count = iter(range(1000))

    def run(blob: bytes, lowers: tuple[Path, ...] = (), **kw: object) -> tuple[Path, Unpacked]:
        target = tmp_path / "layers" / str(next(count))
        target.mkdir(parents=True)
        return target, unpack_layer(Socketish(blob), target, lowers, **kw)
    return run


def lstat(path: Path) -> os.stat_result:
    return os.lstat(path)


# -- what the host must still look like ----------------------------------------------------

@dataclass
class Host:
    token: str
    outside: Path
    canary: Path


def _snapshot(tmp_path: Path) -> dict[str, tuple[int, int, int, int]]:
    seen = {}
    for dirpath, dirnames, filenames in os.walk(tmp_path):
        if Path(dirpath) == tmp_path and "layers" in dirnames:
            dirnames.remove("layers")
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            seen[os.path.join(dirpath, name)] = (st.st_ino, st.st_mode, st.st_nlink,
                                                 st.st_mtime_ns)
    return seen


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    """A canary next to the layers; after the test the host must be as it was."""
    outside = tmp_path / "outside"
    outside.mkdir()
    canary = outside / "canary"
    canary.write_bytes(b"canary")
    token = f"escaped-{uuid.uuid4().hex[:12]}"
    before = _snapshot(tmp_path)
    passwd = os.stat("/etc/passwd")
    yield Host(token, outside, canary)
    assert _snapshot(tmp_path) == before
    assert canary.read_bytes() == b"canary"
    assert os.listxattr(outside) == [] and os.listxattr(canary) == []
    after = os.stat("/etc/passwd")
    assert (after.st_ino, after.st_nlink, after.st_mtime_ns) == \
        (passwd.st_ino, passwd.st_nlink, passwd.st_mtime_ns)
    for place in (Path("/"), Path("/tmp"), Path("/var/tmp"), tmp_path.parent, tmp_path):
        assert not (place / token).exists(), place


# -- normal layers ---------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["gzip", "zstd", "plain"])
def test_a_normal_layer_is_kept_as_it_was(unpack: Callable[..., tuple[Path, Unpacked]],
                                         how: str) -> None:
    plain = tar(
        directory("etc/", mtime=MTIME - 10),
        file("etc/motd", b"hello\n", mode=0o640, uid=1000, gid=1001, mtime=MTIME - 20,
             xattrs={"user.origin": b"test"}),
        directory("usr/bin", mode=0o2755, gid=50),
        file("usr/bin/su", b"\x7fELF", mode=0o4755),
        file("usr/bin/ping", b"ping", mode=0o755, xattrs={"security.capability": CAPABILITY}),
        directory("tmp", mode=0o1777),
        symlink("usr/bin/sh", "dash", uid=7, gid=8, mtime=MTIME - 30),
        symlink("etc/abs", "/etc/motd"),
        hardlink("usr/bin/su2", "usr/bin/su"),
        member("run/fifo", tarfile.FIFOTYPE, mode=0o620, uid=3),
        file("/leading/slash", b"x"),
        file("./dot/slash", b"y"),
        file("big", os.urandom(3 << 20)),
    )
    target, result = unpack(compress(plain, how))
    assert result == Unpacked("sha256:" + hashlib.sha256(plain).hexdigest(), len(plain), 13)

    motd = lstat(target / "etc/motd")
    assert (target / "etc/motd").read_bytes() == b"hello\n"
    assert (stat.S_IMODE(motd.st_mode), motd.st_uid, motd.st_gid, motd.st_mtime) == \
        (0o640, 1000, 1001, MTIME - 20)
    assert os.getxattr(target / "etc/motd", "user.origin") == b"test"
    assert lstat(target / "etc").st_mtime == MTIME - 10  # set after its content
    bindir = lstat(target / "usr/bin")
    assert (stat.S_IMODE(bindir.st_mode), bindir.st_gid, bindir.st_mtime) == (0o2755, 50, MTIME)
    assert stat.S_IMODE(lstat(target / "usr/bin/su").st_mode) == 0o4755
    assert stat.S_IMODE(lstat(target / "tmp").st_mode) == 0o1777
    assert os.getxattr(target / "usr/bin/ping", "security.capability") == CAPABILITY
    sh = lstat(target / "usr/bin/sh")
    assert stat.S_ISLNK(sh.st_mode) and os.readlink(target / "usr/bin/sh") == "dash"
    assert (sh.st_uid, sh.st_gid, sh.st_mtime) == (7, 8, MTIME - 30)
    assert os.readlink(target / "etc/abs") == "/etc/motd"
    assert lstat(target / "usr/bin/su2").st_ino == lstat(target / "usr/bin/su").st_ino
    fifo = lstat(target / "run/fifo")
    assert stat.S_ISFIFO(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o620
    assert fifo.st_uid == 3
    assert (target / "leading/slash").read_bytes() == b"x"
    assert (target / "dot/slash").read_bytes() == b"y"
    assert (target / "big").stat().st_size == 3 << 20


def test_long_names_in_pax_and_gnu_headers(unpack: Callable[..., tuple[Path, Unpacked]]) -> None:
    deep = "/".join(["d" * 60] * 4) + "/" + "f" * 120
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        target, _ = unpack(compress(tar(file(deep, b"long"), symlink("s", deep),
                                        hardlink("h", deep), fmt=fmt), "gzip"))
        assert (target / deep).read_bytes() == b"long"
        assert os.readlink(target / "s") == deep and (target / "h").read_bytes() == b"long"
    prefixed = "p" * 90 + "/" + "n" * 90  # ustar: the name split over prefix and name
    target, _ = unpack(tar(file(prefixed, b"ustar"), fmt=tarfile.USTAR_FORMAT))
    assert (target / prefixed).read_bytes() == b"ustar"


def test_whiteouts_and_opaque_directories_in_overlay_format(
        unpack: Callable[..., tuple[Path, Unpacked]]) -> None:
    target, result = unpack(compress(tar(
        file(".wh.gone"),
        directory("d"),
        file("d/.wh..wh..opq"),
        file("d/.wh..wh.plnk.123"),  # another marker of the whiteout namespace: ignored
        file("implicit/.wh.x"),
    ), "gzip"))
    gone = lstat(target / "gone")
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == os.makedev(0, 0)
    assert os.getxattr(target / "d", "trusted.overlay.opaque") == b"y"
    assert os.listdir(target / "d") == []
    assert stat.S_ISDIR(lstat(target / "implicit").st_mode)
    assert stat.S_ISCHR(lstat(target / "implicit/x").st_mode)
    assert sorted(os.listdir(target)) == ["d", "gone", "implicit"]
    assert result.entries == 5


def test_a_whiteout_hides_only_lower_layers(unpack: Callable[..., tuple[Path, Unpacked]]) -> None:
    """OCI: a whiteout applies to the layers below; what this layer has stays."""
    target, _ = unpack(tar(
        file("kept", b"mine"), file(".wh.kept"),
        directory("dir"), file("dir/mine", b"1"), file(".wh.dir"),
        file(".wh.redone"), directory("redone"), file("redone/new", b"2"),
    ))
    assert (target / "kept").read_bytes() == b"mine"
    assert (target / "dir/mine").read_bytes() == b"1"
    assert os.getxattr(target / "dir", "trusted.overlay.opaque") == b"y"
    # a directory where this layer put a whiteout still hides the lower one's content
    assert os.getxattr(target / "redone", "trusted.overlay.opaque") == b"y"
    assert os.listdir(target / "redone") == ["new"]


def test_xattrs_other_than_user_and_capability_are_dropped(
        unpack: Callable[..., tuple[Path, Unpacked]]) -> None:
    forged = {"trusted.overlay.opaque": b"y", "trusted.overlay.redirect": b"/etc",
              "security.selinux": b"system_u:object_r:shadow_t:s0", "security.ima": b"\x03",
              "user.kept": b"1", "security.capability": CAPABILITY}
    target, _ = unpack(tar(directory("d", xattrs=forged), file("f", b"x", xattrs=forged)))
    for path in (target / "d", target / "f"):
        assert sorted(os.listxattr(path)) == ["security.capability", "user.kept"]


def test_device_nodes_are_skipped_and_never_mistaken_for_whiteouts(
        unpack: Callable[..., tuple[Path, Unpacked]]) -> None:
    target, result = unpack(tar(
        member("dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3)),
        member("dev/sda", tarfile.BLKTYPE, mode=0o660, dev=(8, 0)),
        member("hidden", tarfile.CHRTYPE, dev=(0, 0)),  # would hide a lower "hidden"
        file("dev/keep", b"k"),
    ))
    assert sorted(os.listdir(target)) == ["dev"]
    assert os.listdir(target / "dev") == ["keep"]
    assert result.entries == 4


def test_a_name_given_twice_is_replaced(unpack: Callable[..., tuple[Path, Unpacked]],
                                        host: Host) -> None:
    target, _ = unpack(tar(
        file("f", b"first"), file("f", b"second", mode=0o600),
        directory("d"), file("d/inner", b"x"), symlink("d/out", str(host.outside)),
        file("d", b"file over a directory"),
        file("g", b"g"), directory("g", mode=0o700), file("g/new", b"n"),
        symlink("s", str(host.outside)), directory("s"), file("s/canary", b"pwned"),
        symlink("t", str(host.canary)), file("t", b"over a symlink"),
        directory("m", mode=0o700), directory("m", mode=0o751), file("m/a", b"a"),
    ))
    assert (target / "f").read_bytes() == b"second"
    assert stat.S_IMODE(lstat(target / "f").st_mode) == 0o600
    assert (target / "d").read_bytes() == b"file over a directory"
    assert stat.S_IMODE(lstat(target / "g").st_mode) == 0o700
    assert os.listdir(target / "g") == ["new"]
    assert stat.S_ISDIR(lstat(target / "s").st_mode)
    assert (target / "s/canary").read_bytes() == b"pwned"
    assert (target / "t").read_bytes() == b"over a symlink"
    assert stat.S_IMODE(lstat(target / "m").st_mode) == 0o751


def test_a_directory_deeper_than_python_recursion_is_replaced(
        unpack: Callable[..., tuple[Path, Unpacked]], host: Host) -> None:
    """A later entry over a directory nested past Python's recursion limit (where
    shutil.rmtree gives up on Python 3.11) removes the whole tree, and never what a
    symlink at its bottom points to."""
    deep = "d/" * 1500
    target, _ = unpack(tar(file(deep + "f", b"deep"), symlink(deep + "out", str(host.outside)),
                           file("d", b"flat")))
    assert (target / "d").read_bytes() == b"flat"
    assert os.listdir(target) == ["d"]


def test_parent_directories_come_from_lower_layers(
        unpack: Callable[..., tuple[Path, Unpacked]]) -> None:
    lower, _ = unpack(tar(directory("opt", mode=0o750, uid=5, gid=6, mtime=MTIME - 99,
                                    xattrs={"user.dir": b"lower"}),
                          symlink("lib", "usr/lib")))
    target, _ = unpack(tar(file("opt/tool", b"t"), file("lib/x/y", b"y"), file("a/b/c", b"c")),
                       (lower,))
    opt = lstat(target / "opt")
    assert (stat.S_IMODE(opt.st_mode), opt.st_uid, opt.st_gid, opt.st_mtime) == \
        (0o750, 5, 6, MTIME - 99)
    assert os.getxattr(target / "opt", "user.dir") == b"lower"
    assert stat.S_ISDIR(lstat(target / "lib").st_mode)  # a real directory, not the symlink
    assert (target / "lib/x/y").read_bytes() == b"y"
    assert stat.S_IMODE(lstat(target / "a/b").st_mode) == 0o755
    assert os.readlink(lower / "lib") == "usr/lib" and sorted(os.listdir(lower)) == ["lib", "opt"]


def test_a_hard_link_to_a_lower_layer_becomes_a_copy(
        unpack: Callable[..., tuple[Path, Unpacked]]) -> None:
    bottom, _ = unpack(tar(file("bin/tool", b"tool data", mode=0o4751, uid=11, gid=12,
                                xattrs={"user.a": b"1", "security.capability": CAPABILITY}),
                           file("gone", b"old"), symlink("bin/ln", "tool")))
    middle, _ = unpack(tar(file(".wh.gone")))
    target, _ = unpack(tar(hardlink("copy", "bin/tool"), hardlink("/copy2", "/bin/tool"),
                           hardlink("lncopy", "bin/ln")), (middle, bottom))
    copy, source = lstat(target / "copy"), lstat(bottom / "bin/tool")
    assert (target / "copy").read_bytes() == b"tool data"
    assert copy.st_ino != source.st_ino and source.st_nlink == 1
    assert (stat.S_IMODE(copy.st_mode), copy.st_uid, copy.st_gid, copy.st_mtime) == \
        (0o4751, 11, 12, MTIME)
    assert os.getxattr(target / "copy", "security.capability") == CAPABILITY
    assert os.getxattr(target / "copy", "user.a") == b"1"
    assert (target / "copy2").read_bytes() == b"tool data"
    assert os.readlink(target / "lncopy") == "tool"
    with pytest.raises(ImageRejected, match="'relink'.*in no layer"):
        unpack(tar(hardlink("relink", "gone")), (middle, bottom))  # whited out by middle
    with pytest.raises(ImageRejected, match="in no layer"):
        unpack(tar(hardlink("nowhere", "no/such/file")), (middle, bottom))


def test_copies_for_hard_links_count_against_the_cap(
        unpack: Callable[..., tuple[Path, Unpacked]]) -> None:
    lower, _ = unpack(tar(file("big", os.urandom(1 << 20))))
    links = tar(*(hardlink(f"copy{i}", "big") for i in range(20)))
    with pytest.raises(ImageRejected, match="copy more than 8388608 bytes"):
        unpack(links, (lower,), limits=UnpackLimits(max_bytes=8 << 20))


# -- hostile layers --------------------------------------------------------------------------

def hostile_cases(h: Host) -> dict[str, tuple[list[Member], str | None]]:
    """name: (members, None if the layer may be unpacked (confined), else the error)."""
    out, canary, token = str(h.outside), str(h.canary), h.token
    return {
        "dotdot": ([file(f"../{token}", b"x")], "'..'"),
        "dotdot deep": ([file(f"a/b/../../../{token}", b"x")], "'..'"),
        "dotdot into canary": ([file("../outside/canary", b"pwned")], "'..'"),
        "dotdot in pax path": ([file("innocent", b"x", pax={"path": f"../{token}"})], "'..'"),
        "dotdot in long name": ([file("x/" * 70 + "../" * 71 + token, b"x")], "'..'"),
        "dotdot whiteout": ([file(f"../.wh.{token}")], "'..'"),
        "whiteout of parent": ([file("d/.wh...")], "whiteout of nothing"),
        "NUL in pax path": ([file("n", b"x", pax={"path": "a\0b"})], "NUL"),
        "absolute name": ([file(f"/{token}", b"x")], None),
        "symlink to host dir": ([symlink("a", out), file("a/canary", b"pwned")],
                                "leads nowhere"),
        "symlink up": ([symlink("a", "../../../../../.."), file(f"a/{token}", b"x")], None),
        "symlink to root": ([symlink("a", "/"), file(f"a{out}/canary", b"pwned")], None),
        "symlink chain": ([symlink("a", "b"), symlink("b", out), file("a/canary", b"pwned")],
                          "leads nowhere"),
        "symlink to host file": ([symlink("a", canary), file("a/x", b"x")], "leads nowhere"),
        "symlink to existing dir": ([directory(out[1:]), symlink("a", out),
                                     file("a/canary", b"inside")], None),
        "symlink at last component": ([symlink("f", canary), file("f", b"pwned")], None),
        "fifo over symlink": ([symlink("f", canary),
                               member("f", tarfile.FIFOTYPE, mode=0o777)], None),
        "dir over symlink": ([symlink("d", out), directory("d", mode=0o777),
                              file("d/canary", b"pwned")], None),
        "whiteout through symlink": ([symlink("a", out), file("a/.wh.canary")],
                                     "leads nowhere"),
        "opaque through symlink": ([symlink("a", out), file("a/.wh..wh..opq")],
                                   "leads nowhere"),
        "xattr through symlink": ([symlink("a", out),
                                   directory("a", xattrs={"user.pwned": b"1"})], None),
        "hardlink dotdot": ([hardlink("h", "../outside/canary")], "'..'"),
        "hardlink to host path": ([hardlink("h", canary)], "in no layer"),
        "hardlink to /etc/passwd": ([hardlink("passwd", "/etc/passwd")], "in no layer"),
        "hardlink through symlink": ([symlink("a", out), hardlink("h", "a/canary")],
                                     "in no layer"),
        "hardlink to symlink": ([symlink("s", canary), hardlink("h", "s"),
                                 file("h2", b"x"), hardlink("h2", "s")], None),
        "hardlink to directory": ([directory("d"), hardlink("h", "d")], "directory"),
        "hardlink then write": ([symlink("s", canary), hardlink("h", "s"),
                                 file("h", b"pwned")], None),
        "file over dir with symlink": ([directory("d"), symlink("d/s", out),
                                        symlink("d/c", canary), file("d", b"x")], None),
        "dangling symlink parent": ([symlink("a", f"/{token}"), file("a/x", b"x")],
                                    "leads nowhere"),
        "file as parent": ([file("f", b"x"), file(f"f/{token}", b"x")], "not a directory"),
        "symlink loop": ([symlink("a", "b"), symlink("b", "a"), file("a/x", b"x")],
                         "symbolic links"),
        "root as symlink": ([symlink("./", out)], "the layer's root"),
        "root as hardlink": ([file("f"), hardlink("/", "f")], "the layer's root"),
    }


HOSTILE = list(hostile_cases(Host("t", Path("/o"), Path("/o/c"))))


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_layer_stays_inside_its_directory(
        case: str, unpack: Callable[..., tuple[Path, Unpacked]], host: Host,
        tmp_path: Path) -> None:
    members, error = hostile_cases(host)[case]
    lower = tmp_path / "layers" / "lower"
    lower.mkdir(parents=True)
    os.symlink(host.outside, lower / "a")  # hostile lowers too: a symlink out
    blob = compress(tar(*members), "gzip")
    if error is None:
        target, _ = unpack(blob, (lower,))
        for dirpath, _dirs, names in os.walk(target):  # never into a symlink
            for name in names:
                path = os.path.join(dirpath, name)
                assert os.path.islink(path) or os.path.realpath(path).startswith(str(target))
    else:
        with pytest.raises(ImageRejected, match=error) as raised:
            unpack(blob, (lower,))
        assert str(tmp_path / "layers") not in str(raised.value)  # no host paths in messages
    assert os.listdir(lower) == ["a"]


def test_dotdot_in_a_gnu_long_name_is_rejected(
        unpack: Callable[..., tuple[Path, Unpacked]], host: Host) -> None:
    blob = tar(file("x/" * 70 + "../" * 71 + host.token, b"x"), fmt=tarfile.GNU_FORMAT)
    assert b"././@LongLink" in blob
    with pytest.raises(ImageRejected, match="'..' in its name"):
        unpack(blob)


def test_a_symlink_in_a_lower_layer_is_not_followed(
        unpack: Callable[..., tuple[Path, Unpacked]], host: Host, tmp_path: Path) -> None:
    lower = tmp_path / "layers" / "lower"
    lower.mkdir(parents=True)
    os.symlink(host.outside, lower / "lib")
    os.symlink(host.canary, lower / "file")
    target, _ = unpack(tar(file("lib/canary", b"pwned"), file("lib/.wh.canary"),
                           hardlink("hl", "lib/canary"), hardlink("hf", "file")), (lower,))
    assert stat.S_ISDIR(lstat(target / "lib").st_mode)
    assert (target / "hl").read_bytes() == b"pwned"
    assert os.readlink(target / "hf") == str(host.canary)  # a copy of the symlink itself


# -- limits, damage, progress -------------------------------------------------------------

@pytest.mark.parametrize("how", ["gzip", "zstd"])
def test_a_decompression_bomb_is_stopped_at_the_cap(tmp_path: Path, how: str) -> None:
    zeros = tarfile.TarInfo("zeros")
    zeros.size = 4 << 30
    # 4 GiB of zeros: gzip members (zstd frames) of 16 MiB each, the same one over again
    squeeze: Callable[[bytes], bytes] = (
        gzip.compress if how == "gzip" else zstandard.ZstdCompressor(level=19).compress)
    blob = squeeze(zeros.tobuf(tarfile.PAX_FORMAT)) + squeeze(bytes(1 << 24)) * 256
    assert len(blob) < 5 << 20
    target = tmp_path / "bomb"
    target.mkdir()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageRejected, match="larger than the limit of 16777216 bytes"):
        unpack_layer(Socketish(blob), target, limits=UnpackLimits(max_bytes=16 << 20))
    assert (target / "zeros").stat().st_size <= 16 << 20
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
    assert grown_kib < 128 << 10  # the bomb was never held in memory


def test_too_many_entries(unpack: Callable[..., tuple[Path, Unpacked]]) -> None:
    blob = tar(*(file(f"f{i}") for i in range(11)))
    with pytest.raises(ImageRejected, match="more than 10 entries"):
        unpack(blob, limits=UnpackLimits(max_entries=10))
    assert unpack(blob, limits=UnpackLimits(max_entries=11))[1].entries == 11


@pytest.mark.parametrize("how", ["gzip", "zstd", "plain"])
def test_a_truncated_layer_is_rejected(unpack: Callable[..., tuple[Path, Unpacked]],
                                       how: str) -> None:
    plain = tar(file("a", os.urandom(200_000)), file("b", os.urandom(5000)))
    whole = (zstandard.ZstdCompressor(write_checksum=True).compress(plain) if how == "zstd"
             else compress(plain, how))
    # the middle of the first file; then for plain tar the middle of the second (its header
    # ends at 201216), else only the stream's trailer (all the tar is there, cut or not)
    for cut in (len(whole) // 3, 201216 + 1000 if how == "plain" else len(whole) - 2):
        with pytest.raises(ImageRejected, match="truncated"):
            unpack(whole[:cut])


@pytest.mark.parametrize("blob, error", [
    (b"", "not a tar archive"),
    (os.urandom(4096), "not a tar archive"),
    (b"just some text\n" * 100, "not a tar archive"),
    (gzip.compress(b"a gzipped text, not a tar\n" * 50), "not a tar archive"),
    (zstandard.ZstdCompressor().compress(os.urandom(3000)), "not a tar archive"),
    (b"\x1f\x8b" + random.Random(1).randbytes(3000), "gzip stream is corrupt"),
    (b"\x28\xb5\x2f\xfd" + random.Random(2).randbytes(3000), "zstd stream is corrupt"),
    (gzip.compress(tar(file("a", b"x"))) + b"garbage", "after the end of its gzip stream"),
    (tar(file("f", pax={"comment": "x"})).replace(b" comment=x\n", b".comment=x\n"),
     "corrupt pax header"),
    (tar(file("f", xattrs={"user.a\0b": b"1"})), "NUL in a name"),
], ids=["empty", "random", "text", "gzip text", "zstd random", "bad gzip", "bad zstd",
        "gzip garbage", "pax record", "NUL xattr"])
def test_what_is_not_a_layer_is_rejected(unpack: Callable[..., tuple[Path, Unpacked]],
                                         blob: bytes, error: str) -> None:
    with pytest.raises(ImageRejected, match=error):
        unpack(blob)


def test_a_corrupt_header_in_the_middle(unpack: Callable[..., tuple[Path, Unpacked]]) -> None:
    plain = bytearray(tar(file("first", b"1" * 100), file("second", b"2")))
    plain[1024 + 10] ^= 0xFF  # the second header's name: its checksum no longer matches
    with pytest.raises(ImageRejected, match="corrupt tar header after entry 'first'"):
        unpack(bytes(plain))
    corrupt = bytearray(gzip.compress(tar(file("a", os.urandom(50_000)))))
    corrupt[len(corrupt) // 2] ^= 0xFF
    with pytest.raises(ImageRejected, match="gzip stream is corrupt"):
        unpack(bytes(corrupt))


def test_damaged_layers_fail_only_with_image_rejected(
        unpack: Callable[..., tuple[Path, Unpacked]], host: Host) -> None:
    """Random damage to a layer that uses every header kind: each result is a layer or
    ImageRejected, never another error, and never a trace outside the layer."""
    plain = tar(
        directory("d", xattrs={"user.x": b"1"}), file("d/f", b"data" * 100, mode=0o4755),
        symlink("d/s", str(host.outside)), hardlink("d/h", "d/f"), file(".wh.w"),
        file("d/" + "long" * 40, b"x", pax={"mtime": "1600000000.25"}),
        member("p", tarfile.FIFOTYPE), file("d/.wh..wh..opq"),
    ) + tar(file("gnu/" + "n" * 120, b"g"), fmt=tarfile.GNU_FORMAT)
    rng = random.Random(1234)
    outcomes = {"unpacked": 0, "rejected": 0}
    for _ in range(400):
        damaged = bytearray(plain[:rng.randrange(len(plain))] if rng.random() < 0.2 else plain)
        for _ in range(rng.randrange(1, 4)):
            if damaged:
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        try:
            unpack(bytes(damaged))
            outcomes["unpacked"] += 1
        except ImageRejected:
            outcomes["rejected"] += 1
    assert outcomes["unpacked"] > 20 and outcomes["rejected"] > 100, outcomes


def test_several_gzip_members_and_zstd_frames_are_one_layer(
        unpack: Callable[..., tuple[Path, Unpacked]]) -> None:
    plain = tar(file("a", os.urandom(100_000)), file("b", b"b" * 100_000))
    parts = (plain[:70_000], plain[70_000:])
    for blob in (b"".join(gzip.compress(p) for p in parts) + bytes(100),
                 b"".join(zstandard.ZstdCompressor().compress(p) for p in parts)):
        target, result = unpack(blob)
        assert result.diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()
        assert (target / "b").read_bytes() == b"b" * 100_000


def test_progress_counts_compressed_bytes(unpack: Callable[..., tuple[Path, Unpacked]]) -> None:
    blob = compress(tar(file("noise", os.urandom(5 << 20))), "gzip")
    seen: list[int] = []
    unpack(blob, progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == len(blob)
    assert 4 <= len(seen) <= 7  # about one a MiB
    assert all(b - a >= 1 << 20 for a, b in zip(seen, seen[1:-1], strict=False))


def test_reads_a_pipe_and_leaves_no_thread_or_descriptor(tmp_path: Path) -> None:
    plain = tar(directory("d"), *(file(f"d/{i}", os.urandom(i * 100)) for i in range(200)))
    blob = compress(plain, "gzip")
    # rejected while the reading thread still has 20 MiB to go: it must stop too
    hostile = compress(tar(file("../x"), file("noise", os.urandom(20 << 20))), "gzip")
    threads, fds = threading.active_count(), len(os.listdir("/proc/self/fd"))
    for attempt, data in enumerate((blob, blob[:len(blob) // 2], hostile)):
        read_fd, write_fd = os.pipe()
        writer = threading.Thread(target=_write_all, args=(write_fd, data))
        writer.start()
        target = tmp_path / f"t{attempt}"
        target.mkdir()
        with os.fdopen(read_fd, "rb", buffering=0) as source:
            try:
                result = unpack_layer(source, target)
                assert result.diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()
                assert len(os.listdir(target / "d")) == 200
            except ImageRejected as exc:
                assert (attempt, str(exc)) in (
                    (1, "the layer's gzip stream is truncated"),
                    (2, "layer entry '../x' has '..' in its name"))
        writer.join()
    assert threading.active_count() == threads
    assert len(os.listdir("/proc/self/fd")) == fds


def _write_all(fd: int, data: bytes) -> None:
    with os.fdopen(fd, "wb") as sink:
        try:
            sink.write(data)
        except BrokenPipeError:
            pass


# -- the layers as overlayfs sees them ------------------------------------------------------

def test_two_layers_mount_as_an_overlay(unpack: Callable[..., tuple[Path, Unpacked]],
                                        tmp_path: Path) -> None:
    lower, _ = unpack(compress(tar(
        file("keep", b"kept"), file("gone", b"deleted above"),
        directory("d"), file("d/old", b"old"), directory("e"), file("e/lower", b"l"),
    ), "gzip"))
    upper, _ = unpack(compress(tar(
        file(".wh.gone"), directory("d"), file("d/.wh..wh..opq"), file("d/new", b"new"),
        directory("e", xattrs={"trusted.overlay.opaque": b"y"}),  # forged: dropped
        file("e/upper", b"u"),
    ), "zstd"), (lower,))
    merged = tmp_path / "merged"
    merged.mkdir()
    mount = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                            f"lowerdir={upper}:{lower}", str(merged)],
                           capture_output=True, text=True)
    if mount.returncode != 0 and "unknown filesystem type" in mount.stderr:
        pytest.skip("this kernel has no overlayfs")
    assert mount.returncode == 0, mount.stderr
    try:
        assert sorted(os.listdir(merged)) == ["d", "e", "keep"]
        assert (merged / "keep").read_bytes() == b"kept"
        assert os.listdir(merged / "d") == ["new"]
        assert sorted(os.listdir(merged / "e")) == ["lower", "upper"]
        with pytest.raises(OSError) as missing:
            (merged / "gone").stat()
        assert missing.value.errno == errno.ENOENT
    finally:
        subprocess.run(["umount", str(merged)], check=True)
