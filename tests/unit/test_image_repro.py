"""The pieces that make an image reproducible, and the package cache's mmdebstrap recipe.

The filesystem tests run the real e2fsprogs on small trees (~1 s in all)."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from image_builder import cache, customize, disk, repro, run
from image_builder.install import chroot

EPOCH = 1700000000
RELEASE = """Origin: Debian
Label: Debian
Suite: stable
Codename: bookworm
Date: Sat, 11 Jul 2026 10:16:37 UTC
Valid-Until: Sat, 18 Jul 2026 10:16:37 UTC
"""


def test_release_date_and_urls():
    assert repro.parse_release_date(RELEASE) == 1783764997
    assert repro.iso(1783764997) == "2026-07-11T10:16:37+00:00"
    with pytest.raises(Exception, match="no Date"):
        repro.parse_release_date("Origin: Debian\n")
    assert repro.release_urls(["deb http://m/debian/ bookworm main",
                               "deb http://s/debian-security bookworm-security main"]) == [
        "http://m/debian/dists/bookworm/InRelease",
        "http://s/debian-security/dists/bookworm-security/InRelease"]


def test_derived_ids_depend_only_on_the_inputs():
    a = repro.fs_ids({"packages": ["a", "b"], "epoch": EPOCH})
    assert a == repro.fs_ids({"epoch": EPOCH, "packages": ["a", "b"]})      # key order
    assert a["uuid"] != a["hash_seed"]
    assert repro.fs_ids({"packages": ["a", "c"], "epoch": EPOCH})["uuid"] != a["uuid"]
    assert repro.fs_ids({"packages": ["a", "b"], "epoch": EPOCH + 1})["uuid"] != a["uuid"]


def test_mkfs_argv_and_sfdisk_script_take_fixed_ids():
    argv = disk.mkfs_argv("/t", "/img", 64 * disk.MIB, "rootfs", 1000, uuid="U", hash_seed="H",
                          offset=1048576)
    assert argv[argv.index("-U") + 1] == "U"
    assert argv[argv.index("-E") + 1] == "root_owner=0:0,hash_seed=H,offset=1048576"
    assert "-U" not in disk.mkfs_argv("/t", "/img", 64 * disk.MIB, "rootfs", 1000)
    part = disk.single_partition_layout(64 * disk.MIB)
    assert "label-id: 0x1234abcd\n" in disk.sfdisk_script(part, "0x1234abcd")
    assert "label-id" not in disk.sfdisk_script(part)


def make_tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    for i in range(40):
        (root / "usr/bin" / ("tool%02d" % i)).write_text("x" * (i * 100))
        os.utime(root / "usr/bin" / ("tool%02d" % i), (EPOCH - 1000, EPOCH - 1000))
    (root / "etc/hostname").write_text("debian\n")                   # "now": newer than EPOCH
    (root / "etc/link").symlink_to("hostname")
    (root / "var/lib/systemd").mkdir(parents=True)
    (root / "var/lib/systemd/random-seed").write_bytes(os.urandom(32))
    return root


def test_normalise_tree_clamps_new_mtimes_and_drops_random_files(tmp_path):
    tree = make_tree(tmp_path / "t")
    changed = repro.normalise_tree(tree, EPOCH)
    assert changed >= 3                                   # etc, etc/hostname, etc/link, ...
    assert os.lstat(tree / "etc/hostname").st_mtime == EPOCH
    assert os.lstat(tree / "etc/link").st_mtime == EPOCH   # the link itself, not its target
    assert os.lstat(tree / "usr/bin/tool03").st_mtime == EPOCH - 1000   # older stays
    assert not (tree / "var/lib/systemd/random-seed").exists()


def build_fs(tree: Path, img: Path, offset: int = 0, writes: int = 0,
             disk_mb: int = 96) -> None:
    """``writes``: a write counter other than mkfs' own (what another writer, such as
    mkfs reading a tree cached on another filesystem, leaves)."""
    ids = repro.fs_ids({"test": 1})
    if offset:
        part = disk.new_partitioned_disk(img, disk_mb * disk.MIB, "0x" + ids["uuid"][:8])
        offset = part.offset
    repro.normalise_tree(tree, EPOCH)
    disk.mkfs_from_tree(tree, img, 0.1, uuid=ids["uuid"], hash_seed=ids["hash_seed"],
                        offset=offset, env=repro.mkfs_env(EPOCH))
    if writes:
        run.run(["debugfs", "-w", "-R", "ssv kbytes_written %d" % writes,
                 disk.fs_spec(img, offset)], env=repro.mkfs_env(EPOCH))
        run.run(["tune2fs", "-c", "-1", disk.fs_spec(img, offset)], env=repro.mkfs_env(EPOCH))
    assert repro.fix_inode_times(disk.fs_spec(img, offset), EPOCH) > 40


def superblocks(spec: str) -> list[str]:
    """dumpe2fs -h of the primary and of every backup superblock."""
    head = run.out(["dumpe2fs", "-h", spec])
    backups = [int(n) for n in re.findall(r"Backup superblock at (\d+)",
                                          run.out(["dumpe2fs", spec]))]
    assert backups
    return [head] + [run.out(["dumpe2fs", "-o", "superblock=%d" % n, "-o", "blocksize=4096",
                              "-h", spec]) for n in backups]


@pytest.mark.parametrize("offset", [0, 1], ids=["ami-root", "bare-disk"])
def test_write_counter_does_not_depend_on_the_writer(tmp_path, offset):
    """A tree cache hit made the same files and blocks as a fresh tree but another
    'Lifetime writes' in every superblock: the normalisation zeroes it in all of them."""
    a = make_tree(tmp_path / "a")
    b = make_tree(tmp_path / "b")
    for tree in (a, b):          # > 128 MiB: block groups 1 and 3 carry backup superblocks
        with open(tree / "usr/sparse", "wb") as f:
            f.truncate(400 * disk.MIB)
        os.utime(tree / "usr/sparse", (EPOCH - 1000, EPOCH - 1000))
    build_fs(a, tmp_path / "a.img", offset, disk_mb=600)
    build_fs(b, tmp_path / "b.img", offset, writes=777777, disk_mb=600)
    assert repro.sha256(tmp_path / "a.img") == repro.sha256(tmp_path / "b.img")
    off = 2048 * 512 if offset else 0
    for text in superblocks(disk.fs_spec(tmp_path / "b.img", off)):
        assert "Lifetime writes" not in text          # 0: not recorded
    run.run(["e2fsck", "-f", "-n", disk.fs_spec(tmp_path / "b.img", off)])


@pytest.mark.parametrize("offset", [0, 1], ids=["ami-root", "bare-disk"])
def test_same_tree_twice_gives_identical_filesystems(tmp_path, offset):
    """Two trees made at different times (other ctimes, atimes, mtimes of new files) give
    byte-identical images; mke2fs alone would differ (random UUID, hash seed, clock)."""
    a = make_tree(tmp_path / "a")
    time.sleep(1.1)
    b = make_tree(tmp_path / "b")
    (b / "usr/bin/tool05").read_bytes()                   # another atime
    build_fs(a, tmp_path / "a.img", offset)
    build_fs(b, tmp_path / "b.img", offset)
    assert repro.sha256(tmp_path / "a.img") == repro.sha256(tmp_path / "b.img")
    plain = []
    for name in ("c", "d"):
        tree = make_tree(tmp_path / name)
        disk.mkfs_from_tree(tree, tmp_path / (name + ".img"), 0.1)
        plain.append(repro.sha256(tmp_path / (name + ".img")))
    assert plain[0] != plain[1]


def test_compare_lists_the_differing_files_inside_the_root(tmp_path):
    a = make_tree(tmp_path / "a")
    b = make_tree(tmp_path / "b")
    (b / "etc/hostname").write_text("other\n")
    (b / "etc/extra").write_text("new\n")
    build_fs(a, tmp_path / "a.img")
    build_fs(b, tmp_path / "b.img")
    kernel = tmp_path / "k"
    kernel.write_bytes(b"kernel")
    report = repro.compare_files({"root": str(tmp_path / "a.img"), "kernel": str(kernel)},
                                 {"root": str(tmp_path / "b.img"), "kernel": str(kernel)},
                                 tmp_path)
    assert report["identical"] is False
    assert report["files"]["kernel"]["first"] == report["files"]["kernel"]["second"]
    inside = [d for d in report["differences"] if d.startswith("root: ")]
    assert "root: /etc/hostname: size, content differ" in inside
    assert "root: only in second: /etc/extra" in inside
    same = repro.compare_files({"root": str(tmp_path / "a.img")},
                               {"root": str(tmp_path / "a.img")}, tmp_path)
    assert same["identical"] is True and same["differences"] == []


def test_free_inode_ranges():
    text = "Inode count:              20\nGroup 0:\n  Free inodes: 13-15, 18\n"
    count, free = repro.parse_free_inodes(text)
    assert (count, free) == (20, [(13, 15), (18, 18)])
    assert repro.used_inodes(count, free) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 16, 17,
                                              19, 20]
    assert repro.inode_time_commands([12], EPOCH) == (
        "sif <12> ctime @%d\nsif <12> atime @%d\nssv kbytes_written 0\n" % (EPOCH, EPOCH))


def test_package_cache_hooks_prune_and_download_count(tmp_path):
    pc = cache.PackageCache.for_build(str(tmp_path), "bookworm", "amd64")
    assert pc.root == tmp_path / "apt" / "bookworm-amd64"
    pc.prepare()
    args = pc.mmdebstrap_args()
    assert args[0] == "--skip=essential/unlink"
    assert "--setup-hook=sync-in %s /var/cache/apt/archives/" % pc.archives in args
    assert args[-2:] == ["--customize-hook=sync-out /var/cache/apt/archives %s" % pc.archives,
                         "--customize-hook=sync-out /var/lib/apt/lists %s" % pc.lists]
    for name in ("bash_5.2.15-2+b2_amd64.deb", "bash_5.2.15-2+b7_amd64.deb",
                 "libc6_2.36-9%3a1_amd64.deb", "other_1.0_all.deb"):
        (pc.archives / name).write_bytes(b"x" * 10)
    before = pc.snapshot()
    assert pc.prune(["bash=5.2.15-2+b7", "libc6=2.36-9:1"]) == 1
    assert sorted(pc.snapshot()) == ["bash_5.2.15-2+b7_amd64.deb", "libc6_2.36-9%3a1_amd64.deb",
                                     "other_1.0_all.deb"]
    (pc.archives / "new_2_all.deb").write_bytes(b"y" * 7)
    assert cache.downloaded(before, pc.snapshot()) == {"debs": 1, "bytes": 7,
                                                       "cached_debs_used": 3}
    assert cache.downloaded(before, pc.snapshot(), ["bash=5.2.15-2+b7", "new=2"]) == {
        "debs": 1, "bytes": 7, "cached_debs_used": 1}


def test_mmdebstrap_argv_orders_the_hooks():
    pc = cache.PackageCache(Path("/c"))
    argv = chroot.mmdebstrap_argv("bookworm", "amd64", "http://m", ["b", "a"], "/t", "/hook",
                                  extra=pc.mmdebstrap_args(), eatmydata=True,
                                  defer_initramfs=True)
    i_eat = argv.index("--hook-dir=%s" % chroot.EATMYDATA_HOOKS)
    i_div = argv.index(chroot.DIVERT_HOOK)
    i_out = argv.index("--customize-hook=sync-out /var/cache/apt/archives /c/archives")
    i_hook = argv.index("--customize-hook=/hook")
    assert i_eat < i_div < i_out < i_hook              # the cache is synced out before clean
    assert argv[-3:] == ["bookworm", "/t", "http://m"]
    assert "--include=a,b" in argv


def test_deferred_initramfs_is_created_once_by_the_profile(tmp_path):
    commands = []
    profile = customize.Profile(apt_sources=["deb http://m bookworm main"])
    todo = customize.steps(profile)
    assert customize.Command(customize.UPDATE_INITRAMFS) in todo
    root = tmp_path / "root"
    (root / "usr/sbin").mkdir(parents=True)
    assert customize.restore_initramfs(root, runner=commands.append) is False
    (root / "usr/sbin/update-initramfs").write_text("#!/bin/sh\nexit 0\n")
    (root / "usr/sbin/update-initramfs.distrib").write_text("real")

    def undivert(argv):
        commands.append(argv)
        os.replace(root / "usr/sbin/update-initramfs.distrib", root / "usr/sbin/update-initramfs")
    assert customize.restore_initramfs(root, runner=undivert) is True
    assert (root / "usr/sbin/update-initramfs").read_text() == "real"
    assert commands[-1][:2] == ["dpkg-divert", "--quiet"]


def test_tree_cache_keys_store_lookup_and_prune(tmp_path):
    tc = cache.TreeCache.for_build(str(tmp_path), "bookworm", "amd64")
    k1 = cache.TreeCache.key({"archive": {"u": "2026-07-11"}, "packages": ["a"]})
    assert k1 == cache.TreeCache.key({"packages": ["a"], "archive": {"u": "2026-07-11"}})
    assert k1 != cache.TreeCache.key({"archive": {"u": "2026-07-12"}, "packages": ["a"]})
    assert tc.lookup(k1) is None
    tree = make_tree(tmp_path / "t")
    os.link(tree / "etc/hostname", tree / "etc/hostname.hard")
    extra = tmp_path / "core.img"
    extra.write_bytes(b"grub")
    entry = tc.store(k1, tree, {"core.img": extra})
    assert tc.lookup(k1) == entry and (entry / "core.img").read_bytes() == b"grub"
    assert repro.tree_listing(entry / "tree") == repro.tree_listing(tree)   # cp -a: all kept
    assert os.stat(entry / "tree/etc/hostname").st_ino == \
        os.stat(entry / "tree/etc/hostname.hard").st_ino
    # A complete entry is never replaced (a concurrent build may be reading it).
    (tree / "etc/hostname").write_text("changed\n")
    assert tc.store(k1, tree, {}) == entry
    assert (entry / "tree/etc/hostname").read_text() == "debian\n"
    # A miss builds its tree in a temporary entry (begin), renamed by commit: no copy.
    tmp = tc.begin()
    make_tree(tmp / "tree")
    assert tmp.name.startswith(".store-") and tc.lookup("built") is None
    built = tc.commit("built", tmp, {"core.img": extra})
    assert not tmp.exists() and tc.lookup("built") == built
    assert (built / "tree/etc/hostname").read_text() == "debian\n"
    again = tc.begin()                     # the same key finished by another build meanwhile
    make_tree(again / "tree")
    assert tc.commit("built", again, {}) == built and not again.exists()
    for i in range(5):
        time.sleep(0.01)
        tc.store("k%d" % i, tree, {})
    assert sorted(p.name for p in tc.root.iterdir()) == ["k1", "k2", "k3", "k4"]  # keep = 4


@pytest.mark.parametrize("profile", ["cloud", "none"])
def test_deferred_initramfs_replaces_the_profile_update(tmp_path, monkeypatch, profile):
    """One initramfs: after the diverted install, the profile CREATES it once (its own
    `update-initramfs -u` would find none to update); a profile without one still gets it."""
    commands = []
    monkeypatch.setattr(customize, "_chroot", lambda root, *argv: commands.append(list(argv)))
    customize.apply(tmp_path, customize.Profile(profile=profile), initramfs_deferred=True)
    initramfs = [c for c in commands if c[0] == "update-initramfs"]
    assert initramfs == [list(customize.CREATE_INITRAMFS)]
    commands.clear()
    customize.apply(tmp_path, customize.Profile(profile=profile))
    assert [c for c in commands if c[0] == "update-initramfs"] == (
        [list(customize.UPDATE_INITRAMFS)] if profile == "cloud" else [])
