"""Disk and filesystem plumbing: partitioned qcow2 in, shrunk root fs + kernel + initrd out.

No loop device and no mount anywhere: partitions are addressed by qemu-img's raw driver
(offset/size), files inside ext4 by debugfs, the filesystem is built by ``mkfs.ext4 -d``.  A
failure therefore cannot leave kernel state (loop devices, mounts) behind.
"""
from __future__ import annotations

import json
import logging
import math
import os
import posixpath
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from image_builder import exception, run

LOG = logging.getLogger(__name__)

SECTOR = 512
MIB = 1024 * 1024
FIRST_SECTOR = 2048          # 1 MiB alignment, room for a boot loader
LINUX_TYPES = {"83", "0x83", "0FC63DAF-8483-4772-8E79-3D69D8477DE4"}
E2FSCK_OK = (0, 1)           # 1: errors corrected, which is success for us


@dataclass(frozen=True)
class Partition:
    """One partition of a disk image, in bytes (what qemu-img's raw driver wants)."""

    number: int
    offset: int
    size: int
    type: str
    bootable: bool = False


@dataclass(frozen=True)
class FsInfo:
    block_size: int
    block_count: int
    free_blocks: int

    @property
    def size(self) -> int:
        return self.block_size * self.block_count

    @property
    def used(self) -> int:
        return self.block_size * (self.block_count - self.free_blocks)

    @property
    def slack(self) -> float:
        """Free space as a fraction of the data held (0.33 is what resize2fs -M leaves)."""
        return (self.size - self.used) / self.used if self.used else math.inf


# ----------------------------------------------------------------------------- pure logic

def single_partition_layout(disk_bytes: int, first_sector: int = FIRST_SECTOR) -> Partition:
    """The one primary Linux partition of the original recipe, filling the disk from 1 MiB."""
    if disk_bytes % SECTOR:
        raise exception.DiskError(reason="disk size %d is not a multiple of %d"
                                  % (disk_bytes, SECTOR))
    total = disk_bytes // SECTOR
    if total <= first_sector + 2048:
        raise exception.DiskError(reason="disk of %d bytes is too small for a partition"
                                  % disk_bytes)
    return Partition(1, first_sector * SECTOR, (total - first_sector) * SECTOR, "83", True)


def sfdisk_script(part: Partition, label_id: str | None = None) -> str:
    """sfdisk input for a DOS label with ``part`` (DOS: what BIOS boot and nova expect).
    ``label_id`` (0x + 8 hex digits) fixes the disk identifier sfdisk would pick at random."""
    head = "label: dos\n" + ("label-id: %s\n" % label_id if label_id else "")
    return (head + "unit: sectors\n\nstart=%d, size=%d, type=83%s\n"
            % (part.offset // SECTOR, part.size // SECTOR, ", bootable" if part.bootable else ""))


def parse_sfdisk_json(text: str) -> list[Partition]:
    """Partitions from ``sfdisk --json`` (sectors -> bytes)."""
    try:
        table = json.loads(text)["partitiontable"]
    except (ValueError, KeyError) as exc:
        raise exception.DiskError(reason="unreadable partition table: %s" % exc) from exc
    sector = int(table.get("sectorsize", SECTOR))
    parts = []
    for entry in table.get("partitions", []):
        m = re.search(r"(\d+)$", entry["node"])
        parts.append(Partition(int(m.group(1)) if m else len(parts) + 1,
                               int(entry["start"]) * sector, int(entry["size"]) * sector,
                               str(entry.get("type", "")), bool(entry.get("bootable", False))))
    return parts


def pick_root_partition(parts: list[Partition]) -> Partition:
    """The root fs is the largest Linux partition (the installer may add swap or ESP)."""
    linux = [p for p in parts if p.type.upper() in {t.upper() for t in LINUX_TYPES}]
    if not linux:
        raise exception.DiskError(reason="no Linux partition in the table (%s)"
                                  % ", ".join("%d:%s" % (p.number, p.type) for p in parts))
    return max(linux, key=lambda p: p.size)


def parse_dumpe2fs(text: str) -> FsInfo:
    """Block size/count and free blocks from ``dumpe2fs -h``."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    try:
        return FsInfo(int(fields["Block size"]), int(fields["Block count"]),
                      int(fields["Free blocks"]))
    except (KeyError, ValueError) as exc:
        raise exception.DiskError(reason="unexpected dumpe2fs output (missing %s)" % exc) from exc


def parse_link_target(stat_text: str) -> str | None:
    """The target of a symlink from debugfs ``stat`` output (fast or slow link)."""
    m = re.search(r'Fast link dest: "([^"]*)"', stat_text)
    if m:
        return m.group(1)
    if "Type: symlink" in stat_text:
        raise exception.DiskError(reason="slow symlinks are not supported: %s"
                                  % stat_text.splitlines()[0] if stat_text else "")
    return None


def resolve_path(link: str, target: str) -> str:
    """Absolute path of ``target`` read from symlink ``link`` (relative to the link's dir)."""
    if not target.startswith("/"):
        target = posixpath.join(posixpath.dirname(link), target)
    return posixpath.normpath(target)


@dataclass(frozen=True)
class TreeUsage:
    bytes: int       # data blocks of regular files, directories and slow symlinks
    inodes: int


def tree_usage(root: str | os.PathLike, block: int = 4096) -> TreeUsage:
    """What an ext4 filesystem needs to hold ``root``, counted per file in fs blocks.

    The host filesystem's du would count its own allocation (other block size, tails, holes);
    this counts what mkfs.ext4 -d will allocate for each inode.
    """
    total = 0
    inodes = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        inodes += 1
        total += block * max(1, math.ceil((len(dirnames) + len(filenames)) * 32 / block))
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            st = os.lstat(os.path.join(dirpath, name))
            inodes += 1
            if os.path.islink(os.path.join(dirpath, name)):
                if st.st_size >= 60:            # longer targets need a data block
                    total += block
            elif st.st_nlink > 1 and (st.st_dev, st.st_ino) in seen:
                inodes -= 1                      # a hard link shares inode and data
            else:
                if st.st_nlink > 1:
                    seen.add((st.st_dev, st.st_ino))
                total += block * math.ceil(st.st_size / block)
    return TreeUsage(total, inodes)


def fs_size_for(usage: TreeUsage, slack: float, block: int = 4096,
                inode_size: int = 256, bytes_per_inode: int = 16384) -> int:
    """Filesystem size (bytes, block aligned) for ``usage`` plus ``slack`` free space.

    ext4's own metadata is added on top: inode tables (one inode per ``bytes_per_inode``), the
    journal (mkfs picks 16 MiB below 1 GiB, 32/64 MiB above), block bitmaps and group
    descriptors (~0.1%), and extent/directory overhead (~1.5%).
    """
    data = usage.bytes * (1.0 + slack) * 1.015
    for _ in range(3):     # the journal and inode tables depend on the size itself
        size = data
        journal = 16 * MIB if size < 1024 * MIB else (32 * MIB if size < 2048 * MIB else 64 * MIB)
        inode_tables = max(size / bytes_per_inode, usage.inodes * 1.25 + 1024) * inode_size
        data = usage.bytes * (1.0 + slack) * 1.015 + journal + inode_tables + size * 0.002
    return math.ceil(data / MIB) * MIB


# ----------------------------------------------------------------------------- commands

def is_filesystem(path: str | os.PathLike) -> bool:
    """True for a bare ext2/3/4 filesystem image (magic 0xEF53 at byte 1080), not a disk."""
    try:
        with open(path, "rb") as f:
            f.seek(1080)
            return f.read(2) == b"\x53\xef"
    except OSError:
        return False


def fs_info(img: str | os.PathLike) -> FsInfo:
    return parse_dumpe2fs(run.out(["dumpe2fs", "-h", str(img)]))


def inodes_for(usage: TreeUsage, size: int, bytes_per_inode: int = 16384) -> int:
    """Inode count: ext4's default ratio, but never fewer than the tree needs plus room."""
    return max(size // bytes_per_inode, math.ceil(usage.inodes * 1.25) + 1024)


def mkfs_argv(tree: str | os.PathLike, img: str | os.PathLike, size: int, label: str,
              inodes: int, uuid: str | None = None, hash_seed: str | None = None,
              offset: int = 0) -> list[str]:
    """Always 4 KiB blocks: below 512 MiB mke2fs picks its 'small' type (1 KiB blocks, an inode
    per 4 KiB), which the size estimate does not assume and a grown root fs would keep.
    ``uuid``/``hash_seed`` replace mke2fs' random ones (reproducible builds); ``offset`` writes
    the filesystem into a partition of a disk file (no copy)."""
    ext = ["root_owner=0:0"]
    if hash_seed:
        ext.append("hash_seed=%s" % hash_seed)
    if offset:
        ext.append("offset=%d" % offset)
    return ["mkfs.ext4", "-q", "-F", "-L", label, "-m", "0", "-b", "4096", "-I", "256",
            "-N", str(inodes), "-d", str(tree)] + (["-U", uuid] if uuid else []) + \
        ["-E", ",".join(ext), str(img), "%dk" % (size // 1024)]


def mkfs_from_tree(tree: str | os.PathLike, img: str | os.PathLike, slack: float,
                   label: str = "rootfs", uuid: str | None = None,
                   hash_seed: str | None = None, offset: int = 0,
                   env: dict[str, str] | None = None, max_size: int | None = None) -> FsInfo:
    """Build ext4 ``img`` holding ``tree``, sized from the tree's real usage.

    resize2fs -M leaves ~33% free (measured); sizing up front lands within ``slack``.  When the
    estimate is short, mkfs fails cleanly and we retry 5% larger.
    """
    usage = tree_usage(tree)
    size = fs_size_for(usage, slack)
    LOG.info("root tree holds %.1f MiB in %d inodes; filesystem %.1f MiB",
             usage.bytes / MIB, usage.inodes, size / MIB)
    img = Path(img)
    for attempt in range(6):
        if max_size is not None and size > max_size:
            raise exception.DiskError(reason="root filesystem (%d MiB) does not fit the %d MiB "
                                      "partition: raise disk_size" % (size // MIB,
                                                                       max_size // MIB))
        if img.exists() and not offset:
            img.unlink()
        try:
            run.run(mkfs_argv(tree, img, size, label, inodes_for(usage, size), uuid=uuid,
                              hash_seed=hash_seed, offset=offset), env=env)
            break
        except exception.CommandError:
            if attempt == 5:
                raise
            size = math.ceil(size * 1.05 / MIB) * MIB
            LOG.info("filesystem estimate too small; retrying with %.1f MiB", size / MIB)
    return fs_info(fs_spec(img, offset))


def fs_spec(img: str | os.PathLike, offset: int = 0) -> str:
    """How e2fsprogs (dumpe2fs, debugfs, e2fsck) opens a filesystem at ``offset`` of a file."""
    return os.fspath(img) + ("?offset=%d" % offset if offset else "")


def new_partitioned_disk(disk: str | os.PathLike, disk_bytes: int,
                         label_id: str | None = None) -> Partition:
    """A sparse raw disk file with a DOS label and one partition (filled by mkfs -E offset)."""
    part = single_partition_layout(disk_bytes)
    with open(disk, "wb") as f:
        f.truncate(disk_bytes)
    run.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(disk)],
            input=sfdisk_script(part, label_id).encode())
    return part


def make_partitioned_disk(fs_img: str | os.PathLike, disk: str | os.PathLike,
                          disk_bytes: int) -> Partition:
    """A DOS-labelled raw disk with ``fs_img`` as partition 1 (sparse copy, no loop device)."""
    part = single_partition_layout(disk_bytes)
    fs_bytes = os.path.getsize(fs_img)
    if fs_bytes > part.size:
        raise exception.DiskError(reason="root filesystem (%d MiB) does not fit the %d MiB disk"
                                  % (fs_bytes // MIB, disk_bytes // MIB))
    with open(disk, "wb") as f:
        f.truncate(disk_bytes)
    run.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(disk)],
            input=sfdisk_script(part).encode())
    run.run(["dd", "if=%s" % fs_img, "of=%s" % disk, "bs=1M", "seek=%d" % (part.offset // MIB),
             "conv=sparse,notrunc", "status=none"])
    return part


def convert(src: str | os.PathLike, dst: str | os.PathLike, fmt: str,
            src_fmt: str | None = None, compress: bool = False) -> None:
    argv = ["qemu-img", "convert", "-q"]
    if src_fmt:
        argv += ["-f", src_fmt]
    argv += ["-O", fmt]
    if compress and fmt == "qcow2":
        argv.append("-c")
    run.run(argv + [str(src), str(dst)])


def read_partitions(disk: str | os.PathLike, fmt: str = "qcow2") -> list[Partition]:
    """The partition table from the disk's first MiB (no whole-disk conversion)."""
    head = Path(str(disk) + ".head")
    try:
        run.run(["qemu-img", "dd", "-f", fmt, "-O", "raw", "bs=1M", "count=1",
                 "if=%s" % disk, "of=%s" % head])
        return parse_sfdisk_json(run.out(["sfdisk", "--json", str(head)]))
    finally:
        head.unlink(missing_ok=True)


def extract_partition(disk: str | os.PathLike, part: Partition, out: str | os.PathLike,
                      fmt: str = "qcow2") -> None:
    """Copy one partition out as a sparse raw file through qemu-img's raw offset/size."""
    spec = {"driver": "raw", "offset": part.offset, "size": part.size,
            "file": {"driver": fmt, "file": {"driver": "file", "filename": os.fspath(disk)}}}
    run.run(["qemu-img", "convert", "-q", "-O", "raw", "json:" + json.dumps(spec), str(out)])


def _debugfs(img: str | os.PathLike, command: str, *paths: str, stdout_only: bool = False) -> str:
    """One debugfs request; debugfs splits -R on blanks, so paths must not contain any.

    Errors such as "File not found" go to stderr (with a version banner): callers that parse
    messages get both streams, callers that read file contents get stdout only."""
    for path in paths:
        if not path or any(c.isspace() or c in "\"'\\" for c in path):
            raise exception.DiskError(reason="unsafe path for debugfs: %r" % path)
    proc = run.run(["debugfs", "-R", " ".join([command, *paths]), str(img)])
    return proc.stdout if stdout_only else proc.stdout + proc.stderr


def follow_links(img: str | os.PathLike, path: str, depth: int = 8) -> str:
    """Resolve ``path`` inside the image like the kernel would, through /vmlinuz -> boot/..."""
    for _ in range(depth):
        target = parse_link_target(_debugfs(img, "stat", path))
        if target is None:
            return path
        path = resolve_path(path, target)
    raise exception.DiskError(reason="too many symlinks resolving %s" % path)


def read_text(img: str | os.PathLike, path: str) -> str:
    """A small text file from inside the image (debugfs cat; no mount)."""
    path = follow_links(img, path)
    if "File not found" in _debugfs(img, "stat", path):
        raise exception.DiskError(reason="%s is not in the image" % path)
    return _debugfs(img, "cat", path, stdout_only=True)


def dump_file(img: str | os.PathLike, path: str, out: str | os.PathLike) -> None:
    Path(out).unlink(missing_ok=True)
    text = _debugfs(img, "dump", path, os.fspath(out))
    if not Path(out).exists() or Path(out).stat().st_size == 0:
        raise exception.DiskError(reason="could not read %s from the image: %s"
                                  % (path, text.strip()[-300:]))


def extract_boot_files(img: str | os.PathLike, outdir: str | os.PathLike) -> dict[str, str]:
    """kernel and initrd out of the root fs via debugfs, following /vmlinuz and /initrd.img."""
    found = {}
    for key, links in (("kernel", ("/vmlinuz", "/boot/vmlinuz")),
                       ("ramdisk", ("/initrd.img", "/boot/initrd.img"))):
        for link in links:
            path = follow_links(img, link)
            if "File not found" not in _debugfs(img, "stat", path):
                break
        else:
            raise exception.DiskError(reason="no %s in the image (looked for %s)"
                                      % (key, ", ".join(links)))
        out = Path(outdir) / posixpath.basename(path)
        dump_file(img, path, out)
        found[key] = str(out)
        found[key + "_path"] = path
    m = re.match(r"vmlinuz-(.+)$", posixpath.basename(found["kernel_path"]))
    found["kernel_version"] = m.group(1) if m else ""
    return found


def e2fsck(img: str | os.PathLike, discard: bool = False, readonly: bool = False) -> None:
    argv = ["e2fsck", "-f", "-n" if readonly else "-y"]
    if discard:
        argv += ["-E", "discard"]
    run.run(argv + [str(img)], ok_codes=(0,) if readonly else E2FSCK_OK)


def shrink(img: str | os.PathLike, slack: float) -> dict[str, float]:
    """Shrink ``img`` so its size is within ``slack`` of the data it holds, truncate, punch holes.

    resize2fs -M stops at its conservative minimum (~33% free measured here); below that we try
    forced resizes on a sparse copy and keep the first one a read-only e2fsck accepts, so a
    failed attempt can never damage the image.
    """
    img = Path(img)
    e2fsck(img)
    before = fs_info(img)
    target_blocks = math.ceil(before.used * (1.0 + slack) / before.block_size)
    if before.block_count > target_blocks:
        minimum = int(run.out(["resize2fs", "-P", str(img)]).strip().rsplit(":", 1)[-1])
        if minimum < target_blocks:
            # Never below the slack: the instance must boot (journal, cloud-init state, host
            # keys) before it grows its root; -M would leave ~1 % free here.
            run.run(["resize2fs", str(img), str(target_blocks)])
        elif minimum < before.block_count:
            run.run(["resize2fs", "-M", str(img)])
        now = fs_info(img)
        step = 0.0
        while now.block_count > target_blocks and step <= 0.08:
            blocks = math.ceil(now.used * (1.0 + slack + step) / now.block_size)
            if blocks >= now.block_count:
                break
            trial = img.with_suffix(".trial")
            run.run(["cp", "--sparse=always", str(img), str(trial)])
            try:
                run.run(["resize2fs", "-f", str(trial), str(blocks)])
                e2fsck(trial, readonly=True)
            except exception.CommandError as exc:
                LOG.debug("forced shrink to %d blocks rejected: %s", blocks, exc)
                trial.unlink(missing_ok=True)
                step += 0.02
                continue
            os.replace(trial, img)
            now = fs_info(img)
            break
    after = fs_info(img)
    with open(img, "r+b") as f:
        f.truncate(after.size)
    e2fsck(img, discard=True)
    LOG.info("root fs %.1f MiB holding %.1f MiB (%.1f%% free; was %.1f MiB)",
             after.size / MIB, after.used / MIB, after.slack * 100, before.size / MIB)
    return {"size": after.size, "used": after.used, "slack": after.slack,
            "size_before": before.size, "allocated": allocated(img)}


def allocated(path: str | os.PathLike) -> int:
    """Bytes the (sparse) file really occupies."""
    return os.stat(path).st_blocks * 512


def grow(img: str | os.PathLike, size: int) -> None:
    """What nova does to an AMI root fs before boot: grow the file, then the filesystem."""
    with open(img, "r+b") as f:
        f.truncate(size)
    e2fsck(img)
    run.run(["resize2fs", str(img)])


# ----------------------------------------------------------------------------- BARE boot
GRUB_CFG = """# Written by zol-image for BARE images: serial + VGA console, root by label.
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=1
menuentry "Debian" {
    linux /vmlinuz root=LABEL=rootfs ro console=tty0 console=ttyS0,115200
    initrd /initrd.img
}
"""
MBR_CODE = 440               # boot code; 440-510 is the disk signature + partition table


def prepare_grub(tree: str | os.PathLike, core_img: str | os.PathLike) -> None:
    """grub.cfg in the tree, core.img (biosdisk+msdos+ext2) built with the tree's own grub.

    The host needs no grub: grub-mkimage runs chrooted, and grub-install's device probing
    (which wants a block device) is replaced by write_grub_bios on the disk file.
    """
    tree = Path(tree)
    grub = tree / "boot" / "grub"
    grub.mkdir(parents=True, exist_ok=True)
    (grub / "grub.cfg").write_text(GRUB_CFG)
    run.run(["chroot", str(tree), "grub-mkimage", "-O", "i386-pc", "-o", "/boot/grub/core.img",
             "-p", "(hd0,msdos1)/boot/grub", "biosdisk", "part_msdos", "ext2", "normal",
             "linux", "serial", "terminal", "configfile", "echo", "test"])
    shutil.move(grub / "core.img", core_img)     # the tree may be on tmpfs
    boot_img = tree / "usr/lib/grub/i386-pc/boot.img"
    Path(core_img).with_name("boot.img").write_bytes(boot_img.read_bytes())


def write_grub_bios(disk_raw: str | os.PathLike, boot_img: str | os.PathLike,
                    core_img: str | os.PathLike) -> None:
    """What grub-bios-setup does for a fresh DOS disk: boot.img code into the MBR (keeping the
    partition table), core.img from sector 1 (boot.img's default) in the gap before 1 MiB.
    grub-mkimage already wrote core.img's own blocklist (start 2, length)."""
    boot = Path(boot_img).read_bytes()
    core = Path(core_img).read_bytes()
    if len(boot) != SECTOR:
        raise exception.DiskError(reason="boot.img is %d bytes, expected 512" % len(boot))
    if len(core) > (FIRST_SECTOR - 1) * SECTOR:
        raise exception.DiskError(reason="core.img (%d bytes) does not fit before the first "
                                  "partition" % len(core))
    with open(disk_raw, "r+b") as f:
        mbr = bytearray(f.read(SECTOR))
        mbr[:MBR_CODE] = boot[:MBR_CODE]
        f.seek(0)
        f.write(mbr)
        f.seek(SECTOR)
        f.write(core)
