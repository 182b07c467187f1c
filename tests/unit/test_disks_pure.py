"""What does no I/O in disk limits: the setting, and reading an ext4 superblock."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from sandport.errors import ValidationFailed
from sandport.runtime.ext4image import usable_bytes
from sandport.settings import ServerSettings


@pytest.mark.parametrize("mode", ["auto", "on", "off"])
def test_disk_limits_modes(mode: str) -> None:
    flags = {"disk_limits": mode}
    assert ServerSettings.load(flags, environ={}).disk_limits == mode
    assert ServerSettings.load(environ={"SANDPORT_DISK_LIMITS": mode}).disk_limits == mode


def test_disk_limits_default_and_bad_value() -> None:
    assert ServerSettings.load(environ={}).disk_limits == "auto"
    with pytest.raises(ValidationFailed, match="disk_limits"):
        ServerSettings.load({"disk_limits": "yes"}, environ={})


def _superblock(blocks: int, overhead: int, free: int, log_block: int = 2) -> bytes:
    sb = bytearray(1024)
    struct.pack_into("<I", sb, 0x04, blocks & 0xFFFFFFFF)
    struct.pack_into("<I", sb, 0x0C, free & 0xFFFFFFFF)
    struct.pack_into("<I", sb, 0x18, log_block)
    struct.pack_into("<H", sb, 0x38, 0xEF53)
    struct.pack_into("<I", sb, 0x150, blocks >> 32)
    struct.pack_into("<I", sb, 0x158, free >> 32)
    struct.pack_into("<I", sb, 0x248, overhead)
    return bytes(1024) + bytes(sb)


def test_usable_bytes_are_blocks_less_overhead(tmp_path: Path) -> None:
    image = tmp_path / "image"
    # what mke2fs 1.47 wrote for a 4 GiB image: df then showed 1011640 blocks of 4 KiB
    image.write_bytes(_superblock(blocks=1048576, overhead=36936, free=1011634))
    assert usable_bytes(image) == 1011640 * 4096


def test_usable_bytes_above_32_bits_of_blocks(tmp_path: Path) -> None:
    image = tmp_path / "image"
    image.write_bytes(_superblock(blocks=(1 << 32) + 10, overhead=10, free=5))
    assert usable_bytes(image) == (1 << 32) * 4096


def test_usable_bytes_without_a_recorded_overhead_counts_free_blocks(tmp_path: Path) -> None:
    image = tmp_path / "image"
    image.write_bytes(_superblock(blocks=65536, overhead=0, free=60000))
    assert usable_bytes(image) == 60000 * 4096


def test_not_ext4_is_an_error(tmp_path: Path) -> None:
    image = tmp_path / "image"
    image.write_bytes(bytes(4096))
    with pytest.raises(OSError, match="no ext4 superblock"):
        usable_bytes(image)
