"""Partition math, parsers of real tool output, filesystem sizing (pure logic, no root)."""
from __future__ import annotations

import json

import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from image_builder import disk, exception

# Verbatim `sfdisk --json` of the first MiB of a disk made by make_partitioned_disk.
SFDISK_JSON = """{
   "partitiontable": {
      "label": "dos",
      "id": "0x9d5f3c2a",
      "device": "/tmp/ib-dev/w1/disk.qcow2.head",
      "unit": "sectors",
      "sectorsize": 512,
      "partitions": [
         {
            "node": "/tmp/ib-dev/w1/disk.qcow2.head1",
            "start": 2048,
            "size": 4192256,
            "type": "83",
            "bootable": true
         }
      ]
   }
}"""

# The Debian installer's layout when swap is not suppressed: the root fs is still found.
SFDISK_INSTALLER = json.dumps({"partitiontable": {"label": "dos", "sectorsize": 512,
    "partitions": [
        {"node": "x1", "start": 2048, "size": 3905536, "type": "83", "bootable": True},
        {"node": "x2", "start": 3909630, "size": 284674, "type": "5"},
        {"node": "x5", "start": 3909632, "size": 284672, "type": "82"}]}})

DUMPE2FS = """dumpe2fs 1.47.0 (5-Feb-2023)
Filesystem volume name:   rootfs
Filesystem UUID:          0b1c8f3e-51d4-4a0e-b7b8-6a4b1ad8c1d9
Block count:              105242
Reserved block count:     0
Free blocks:              4559
Free inodes:              20210
Block size:               4096
"""

STAT_LINK = """Inode: 12   Type: symlink    Mode:  0777   Flags: 0x0
Generation: 0    Version: 0x00000000:00000000
User:     0   Group:     0   Project:     0   Size: 33
Fast link dest: "boot/vmlinuz-6.1.0-50-cloud-amd64"
"""
STAT_FILE = """Inode: 7823   Type: regular    Mode:  0644   Flags: 0x80000
User:     0   Group:     0   Project:     0   Size: 14149568
"""


def test_single_partition_starts_at_1mib_and_fills_the_disk():
    part = disk.single_partition_layout(2048 * disk.MIB)
    assert part.offset == disk.MIB
    assert part.offset + part.size == 2048 * disk.MIB
    assert part.bootable and part.type == "83"


@given(st.integers(min_value=8, max_value=1 << 20))
def test_layout_is_sector_aligned_and_inside_the_disk(mib):
    part = disk.single_partition_layout(mib * disk.MIB)
    assert part.offset % disk.SECTOR == 0 and part.size % disk.SECTOR == 0
    assert part.offset + part.size == mib * disk.MIB


@pytest.mark.parametrize("size", [511, 1024 * 1024])
def test_layout_rejects_bad_sizes(size):
    with pytest.raises(exception.DiskError):
        disk.single_partition_layout(size)


def test_sfdisk_script_round_trip():
    part = disk.single_partition_layout(2048 * disk.MIB)
    script = disk.sfdisk_script(part)
    assert "label: dos" in script
    assert "start=2048, size=4192256, type=83, bootable" in script
    parsed = disk.parse_sfdisk_json(SFDISK_JSON)
    assert parsed == [part]


def test_root_partition_is_the_largest_linux_one():
    parts = disk.parse_sfdisk_json(SFDISK_INSTALLER)
    root = disk.pick_root_partition(parts)
    assert (root.number, root.offset) == (1, 2048 * 512)


def test_no_linux_partition_is_an_error_naming_the_types():
    table = json.dumps({"partitiontable": {"partitions": [
        {"node": "d1", "start": 2048, "size": 100, "type": "82"}]}})
    with pytest.raises(exception.DiskError, match="1:82"):
        disk.pick_root_partition(disk.parse_sfdisk_json(table))


def test_unreadable_table():
    with pytest.raises(exception.DiskError):
        disk.parse_sfdisk_json("not json")


def test_dumpe2fs_parse_and_slack():
    info = disk.parse_dumpe2fs(DUMPE2FS)
    assert info.size == 105242 * 4096
    assert info.used == (105242 - 4559) * 4096
    assert info.slack == pytest.approx(4559 / (105242 - 4559))


def test_dumpe2fs_missing_field():
    with pytest.raises(exception.DiskError, match="Free blocks"):
        disk.parse_dumpe2fs("Block count: 1\nBlock size: 4096\n")


def test_link_targets_resolve_relative_to_the_link():
    target = disk.parse_link_target(STAT_LINK)
    assert target == "boot/vmlinuz-6.1.0-50-cloud-amd64"
    assert disk.resolve_path("/vmlinuz", target) == "/boot/vmlinuz-6.1.0-50-cloud-amd64"
    assert disk.resolve_path("/boot/vmlinuz", "vmlinuz-6.1") == "/boot/vmlinuz-6.1"
    assert disk.resolve_path("/boot/x", "../vmlinuz") == "/vmlinuz"
    assert disk.parse_link_target(STAT_FILE) is None


@pytest.mark.parametrize("slack", [0.0, 0.05, 0.08, 0.12])
@pytest.mark.parametrize("data_mib", [50, 400, 900, 3000])
def test_fs_size_stays_within_15_percent_plus_metadata(slack, data_mib):
    usage = disk.TreeUsage(data_mib * disk.MIB, 20000)
    size = disk.fs_size_for(usage, slack)
    assert size % disk.MIB == 0
    assert size > usage.bytes * (1 + slack)
    # metadata (journal, inode tables) on top of the slack, never the 33% of resize2fs -M
    # (a tiny fs also carries the inode table its files need: 256 bytes each, plus room)
    overhead = size / (usage.bytes * (1 + slack)) - 1
    inode_table = (usage.inodes * 1.25 + 1024) * 256
    assert overhead < 0.06 + (16 * disk.MIB + inode_table) / usage.bytes


def test_mkfs_always_uses_4k_blocks_and_enough_inodes():
    usage = disk.TreeUsage(300 * disk.MIB, 30000)
    size = disk.fs_size_for(usage, 0.08)
    inodes = disk.inodes_for(usage, size)
    assert inodes >= 30000 * 1.25 and inodes >= size // 16384
    argv = disk.mkfs_argv("/tree", "/fs.img", size, "rootfs", inodes)
    assert argv[argv.index("-b") + 1] == "4096"          # mke2fs would pick 1 KiB below 512 MiB
    assert argv[argv.index("-N") + 1] == str(inodes) and argv[-1] == "%dk" % (size // 1024)
    assert argv[argv.index("-L") + 1] == "rootfs" and argv[argv.index("-d") + 1] == "/tree"


def test_mkfs_argv_makes_a_4k_filesystem_below_512_mib(tmp_path):
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "f").write_text("x")
    img = tmp_path / "fs.img"
    usage = disk.tree_usage(tmp_path / "tree")
    size = 64 * disk.MIB
    subprocess.run(disk.mkfs_argv(tmp_path / "tree", img, size, "rootfs",
                                  disk.inodes_for(usage, size)), check=True)
    info = disk.fs_info(img)
    assert info.block_size == 4096 and info.size == size


def test_tree_usage_counts_blocks_links_and_hardlinks(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 5000)          # 2 blocks
    (tmp_path / "b").write_bytes(b"")                  # 0 blocks
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c").write_bytes(b"y")          # 1 block
    (tmp_path / "hard").hardlink_to(tmp_path / "a")     # shares a's blocks
    (tmp_path / "short").symlink_to("a")                # fast symlink: no block
    (tmp_path / "long").symlink_to("z" * 80)            # slow symlink: 1 block
    usage = disk.tree_usage(tmp_path)
    assert usage.bytes == (2 + 0 + 1 + 1) * 4096 + 2 * 4096   # + 2 directories
    assert usage.inodes == 2 + 3 + 2


def test_grub_bios_write_keeps_the_partition_table(tmp_path):
    raw = tmp_path / "d.raw"
    raw.write_bytes(bytes(4 * disk.MIB))
    table = bytes(range(64)) + b"\x55\xaa"
    with open(raw, "r+b") as f:
        f.seek(446)
        f.write(table)
    (tmp_path / "boot.img").write_bytes(b"B" * 512)
    (tmp_path / "core.img").write_bytes(b"C" * 30000)
    disk.write_grub_bios(raw, tmp_path / "boot.img", tmp_path / "core.img")
    data = raw.read_bytes()
    assert data[:440] == b"B" * 440
    assert data[446:512] == table
    assert data[512:512 + 30000] == b"C" * 30000
    (tmp_path / "core.img").write_bytes(b"C" * disk.MIB)
    with pytest.raises(exception.DiskError, match="does not fit"):
        disk.write_grub_bios(raw, tmp_path / "boot.img", tmp_path / "core.img")
