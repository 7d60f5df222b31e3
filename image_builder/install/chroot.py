"""Install backend 'chroot': mmdebstrap builds the tree on the host (eatmydata, the package
cache, one initramfs), the cloud profile runs as its customize hook, then ``mkfs.ext4 -d`` turns
the tree into the output itself: the AMI root filesystem, sized from the tree's real usage, or
partition 1 of the BARE disk.  No intermediate copy, no shrink, no fsck.

Why mmdebstrap: it installs in one apt run, cleans up its own mounts, and needs no loop device;
a bookworm cloud-kernel tree takes ~70 s here versus ~67 min for the installer under TCG.
"""
from __future__ import annotations

import json
import logging
import os
import re
import selectors
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from image_builder import cache, customize, disk, exception, repro, run

LOG = logging.getLogger(__name__)


# One definition of the suites: mmdebstrap installs from them and the profile writes them into
# the image (both backends).
sources = customize.sources


EATMYDATA_HOOKS = "/usr/share/mmdebstrap/hooks/eatmydata"
# One initramfs: update-initramfs is diverted to a no-op from the essential stage on (the
# kernel's postinst and initramfs-tools' trigger would each build one), and restored by the
# profile hook, which builds the initramfs once with the cloud's modules configured.
DIVERTED = "/usr/sbin/update-initramfs"
DIVERT_HOOK = ('--essential-hook=chroot "$1" dpkg-divert --quiet --local --rename --add %s && '
               "printf '#!/bin/sh\\n# zol-image: deferred to the profile\\nexit 0\\n' "
               '> "$1"%s && chmod 755 "$1"%s' % (DIVERTED, DIVERTED, DIVERTED))


def mmdebstrap_argv(release: str, arch: str, mirror: str | list[str], packages: list[str],
                    tree: str, hook: str | None, extra: list[str] | None = None,
                    eatmydata: bool = False, defer_initramfs: bool = False) -> list[str]:
    """The mmdebstrap command (pure; unit tested); ``mirror`` may be a list of sources.
    ``extra`` (the package cache's hooks) comes before the profile hook, so its sync-out sees
    the .debs before the profile's apt-get clean."""
    argv = ["mmdebstrap", "--mode=root", "--variant=minbase", "--arch=%s" % arch,
            "--format=directory", "--components=main",
            "--aptopt=Acquire::Retries \"3\"",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/info/*",
            "--include=%s" % ",".join(sorted(set(packages)))]
    if eatmydata:
        argv.append("--hook-dir=%s" % EATMYDATA_HOOKS)
    if defer_initramfs:
        argv.append(DIVERT_HOOK)
    argv += list(extra or [])
    if hook:
        argv.append("--customize-hook=%s" % hook)
    return argv + [release, tree] + ([mirror] if isinstance(mirror, str) else list(mirror))


def install(*, workdir: Path, release: str, arch: str, mirror: str, packages: list[str],
            profile: customize.Profile, disk_mb: int, slack: float,
            timeout: float, progress=None, bootloader: bool = False,
            security_mirror: str = "", updates: bool = False, epoch: int | None = None,
            package_cache: cache.PackageCache | None = None,
            fs_inputs: dict | None = None, tree_cache: cache.TreeCache | None = None,
            tree_key: dict | None = None) -> dict:
    """Build the image straight from the tree; return what the manifest needs.

    AMI (``bootloader`` false): ``workdir/root.img`` is the mkfs output itself (sized from the
    tree, so no shrink and no fsck), kernel and initrd are moved out of the tree.  BARE:
    ``workdir/disk.raw`` is a DOS disk whose partition 1 mkfs fills in place (``-E offset``),
    GRUB in the MBR gap.  With ``epoch`` the result is reproducible (see image_builder.repro).
    """
    todo = packages + (["grub-pc-bin"] if bootloader else []) + customize.packages_for(profile)
    key = entry = None
    if tree_cache is not None:
        key = cache.TreeCache.key(dict(tree_key or {}, packages=sorted(set(todo)),
                                       bootloader=bootloader, epoch=epoch,
                                       mmdebstrap=_mmdebstrap_version()))
        entry = tree_cache.lookup(key)
    if entry is not None:
        LOG.info("tree cache hit %s: no mmdebstrap (same archive state and inputs)", entry)
        if bootloader:
            for name in ("core.img", "boot.img"):
                shutil.copyfile(entry / name, workdir / name)
        result = {"packages": package_list(entry / "tree"),
                  "tree_cache": {"hit": True, "key": key}}
        result.update(_filesystem(entry / "tree", workdir=workdir, disk_mb=disk_mb, slack=slack,
                                  bootloader=bootloader, epoch=epoch, fs_inputs=fs_inputs))
        return result
    # With the tree cache the tree is made in its cache entry (under a temporary name, renamed
    # once the filesystem is written): no copy into the cache afterwards.  Without it, on
    # tmpfs when the RAM allows.
    entry_tmp = tree_cache.begin() if tree_cache is not None else None
    tree = entry_tmp / "tree" if entry_tmp is not None else tree_dir(workdir)
    if entry_tmp is not None:
        LOG.info("tree cache miss: building the tree in its cache entry %s", entry_tmp)
    try:
        result = _bootstrap(tree, workdir=workdir, release=release, arch=arch, mirror=mirror,
                            packages=todo, profile=profile, timeout=timeout, progress=progress,
                            bootloader=bootloader, security_mirror=security_mirror,
                            updates=updates, epoch=epoch, package_cache=package_cache)
        result.update(_filesystem(tree, workdir=workdir, disk_mb=disk_mb, slack=slack,
                                  bootloader=bootloader, epoch=epoch, fs_inputs=fs_inputs))
        if entry_tmp is not None:
            result["tree_cache"] = _commit(tree_cache, key, entry_tmp,
                                           {n: workdir / n for n in ("core.img", "boot.img")}
                                           if bootloader else {})
            entry_tmp = None
        return result
    finally:
        run.remove_tree(entry_tmp if entry_tmp is not None else tree)


def _commit(tree_cache: cache.TreeCache, key: str, entry_tmp: Path,
            extra: dict[str, Path]) -> dict:
    """The tree becomes a cache entry; a failure (disk full) costs the next build its hit,
    not this build its image: it is logged and recorded."""
    start = time.monotonic()
    try:
        tree_cache.commit(key, entry_tmp, extra)
    except OSError as exc:
        LOG.error("could not keep the tree in the tree cache %s (the next build installs "
                  "afresh): %s", tree_cache.root, exc)
        return {"hit": False, "key": key, "stored": False, "error": str(exc)}
    seconds = round(time.monotonic() - start, 1)
    LOG.info("tree kept in the tree cache %s in %.1f s (built there: no copy)",
             tree_cache.root / key, seconds)
    return {"hit": False, "key": key, "stored": True, "store_seconds": seconds}


def _mmdebstrap_version() -> str:
    try:
        return run.out(["mmdebstrap", "--version"]).strip()
    except exception.ImageBuilderError:
        return "unknown"


TMPFS = "/dev/shm"
TMPFS_NEEDS = 6 << 30          # tree (~1 GiB with the .debs) + room for everyone else


def tree_dir(workdir: Path, tmpfs: str = TMPFS) -> Path:
    """Where mmdebstrap builds the tree: on tmpfs when the host has the RAM to spare (dpkg,
    mkfs -d and the removal never touch the disk), else below the work dir."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
        avail = int(re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, re.M).group(1)) << 10
        st = os.statvfs(tmpfs)
        room = st.f_bavail * st.f_frsize
    except (OSError, AttributeError):
        avail = room = 0
    if os.environ.get("ZOL_IMAGE_TMPFS", "1") != "0" and min(avail, room) >= TMPFS_NEEDS:
        tree = Path(tempfile.mkdtemp(prefix="zol-image-tree-", dir=tmpfs))
        LOG.info("building the tree on tmpfs: %s (%.0f GiB available)", tree, avail / 2**30)
        return tree
    tree = workdir / "tree"
    run.remove_tree(tree)
    tree.mkdir(parents=True)
    return tree


def _bootstrap(tree: Path, *, workdir: Path, release: str, arch: str, mirror: str,
               packages: list[str], profile: customize.Profile, timeout: float, progress,
               bootloader: bool, security_mirror: str, updates: bool, epoch: int | None,
               package_cache: cache.PackageCache | None) -> dict:
    """mmdebstrap + the profile into ``tree``; normalised; GRUB's images made (BARE)."""
    conf = workdir / "profile.json"
    conf.write_text(profile.to_json())
    hook = workdir / "customize-hook"
    hook.write_text(customize.hook_script(conf))
    hook.chmod(0o755)
    before = {}
    extra: list[str] = []
    if package_cache is not None:
        package_cache.prepare()
        before = package_cache.snapshot()
        extra = package_cache.mmdebstrap_args()
    argv = mmdebstrap_argv(release, arch, sources(release, mirror, security_mirror, updates),
                           packages, str(tree), str(hook),
                           extra=extra, eatmydata=os.path.isdir(EATMYDATA_HOOKS),
                           defer_initramfs=True)
    env = {"SOURCE_DATE_EPOCH": str(epoch)} if epoch is not None else {}
    log_path = workdir / "mmdebstrap.log"
    start = time.monotonic()
    _run_logged(argv, log_path, timeout, progress, env=env)
    result: dict = {"mmdebstrap_seconds": round(time.monotonic() - start, 1)}
    timings = workdir / customize.TIMINGS_FILE     # written by the profile hook
    if timings.exists():
        result["profile_seconds"] = json.loads(timings.read_text())
    pkgs = package_list(tree)
    result["packages"] = pkgs
    if package_cache is not None:
        result["package_cache"] = dict(cache.downloaded(before, package_cache.snapshot(), pkgs),
                                       dir=str(package_cache.root),
                                       pruned=package_cache.prune(pkgs))
        LOG.info("package cache %s: %d .debs from the cache, %d downloaded (%.1f MiB)",
                 package_cache.root, result["package_cache"]["cached_debs_used"],
                 result["package_cache"]["debs"], result["package_cache"]["bytes"] / disk.MIB)
    if bootloader:
        disk.prepare_grub(tree, workdir / "core.img")
    if epoch is not None:
        result["normalised_inodes"] = repro.normalise_tree(tree, epoch)
    return result


def _filesystem(tree: Path, *, workdir: Path, disk_mb: int, slack: float, bootloader: bool,
                epoch: int | None, fs_inputs: dict | None) -> dict:
    """mkfs the (normalised) tree into the output: AMI root fs or the BARE disk's partition."""
    result: dict = {}
    mkfs_start = time.monotonic()
    ids = repro.fs_ids(fs_inputs or {}) if epoch is not None else {}
    mkfs_env = repro.mkfs_env(epoch) if epoch is not None else {"LC_ALL": "C"}
    if bootloader:
        core_img = workdir / "core.img"
        disk_raw = workdir / "disk.raw"
        part = disk.new_partitioned_disk(disk_raw, disk_mb * disk.MIB,
                                         label_id="0x" + ids["uuid"][:8] if ids else None)
        info = disk.mkfs_from_tree(tree, disk_raw, slack, uuid=ids.get("uuid"),
                                   hash_seed=ids.get("hash_seed"), offset=part.offset,
                                   env=mkfs_env, max_size=part.size)
        spec = disk.fs_spec(disk_raw, part.offset)
        disk.write_grub_bios(disk_raw, core_img.with_name("boot.img"), core_img)
        result["disk"] = str(disk_raw)
    else:
        root = workdir / "root.img"
        info = disk.mkfs_from_tree(tree, root, slack, uuid=ids.get("uuid"),
                                   hash_seed=ids.get("hash_seed"), env=mkfs_env)
        spec = str(root)
        result["root"] = str(root)
        result.update(boot_files(tree, workdir))
    mkfs_done = time.monotonic()
    if epoch is not None:
        result["inode_times_fixed"] = repro.fix_inode_times(spec, epoch)
    result["mkfs_seconds"] = round(mkfs_done - mkfs_start, 1)
    result["normalise_fs_seconds"] = round(time.monotonic() - mkfs_done, 1)
    LOG.info("filesystem written in %.1f s, inode times fixed in %.1f s",
             mkfs_done - mkfs_start, time.monotonic() - mkfs_done)
    result.update({"tree_fs_size": info.size, "tree_fs_used": info.used, "fs": ids})
    return result


def boot_files(tree: Path, outdir: Path) -> dict[str, str]:
    """kernel and initrd out of the tree (after mkfs): /vmlinuz and /initrd.img, followed."""
    found = {}
    for key, links in (("kernel", ("vmlinuz", "boot/vmlinuz")),
                       ("ramdisk", ("initrd.img", "boot/initrd.img"))):
        for link in links:
            path = _resolve_in(tree, link)
            if path.is_file():
                break
        else:
            raise exception.InstallError(reason="no %s in the tree (looked for %s)"
                                         % (key, ", ".join(links)))
        out = outdir / path.name
        shutil.copyfile(path, out)
        found[key] = str(out)
    m = re.match(r"vmlinuz-(.+)$", Path(found["kernel"]).name)
    found["kernel_version"] = m.group(1) if m else ""
    return found


def _resolve_in(tree: Path, rel: str, depth: int = 8) -> Path:
    """``rel`` inside ``tree`` with absolute symlinks taken relative to the tree."""
    path = tree / rel
    for _ in range(depth):
        if not path.is_symlink():
            return path
        target = os.readlink(path)
        path = (tree / target.lstrip("/")) if target.startswith("/") else path.parent / target
    return path


def package_list(tree: Path) -> list[str]:
    """``name=version`` of every installed package (read from the tree's dpkg status)."""
    return parse_dpkg_status((tree / "var/lib/dpkg/status").read_text())


def parse_dpkg_status(text: str) -> list[str]:
    """``name=version`` of every installed package in a dpkg status file."""
    pkgs = []
    name = version = None
    installed = False
    for line in text.splitlines() + [""]:
        if not line:
            if name and version and installed:
                pkgs.append("%s=%s" % (name, version))
            name = version = None
            installed = False
        elif line.startswith("Package: "):
            name = line[9:].strip()
        elif line.startswith("Version: "):
            version = line[9:].strip()
        elif line.startswith("Status: "):
            installed = line.endswith(" installed")
    return sorted(pkgs)


def _run_logged(argv: list[str], log_path: Path, timeout: float, progress,
                env: dict[str, str] | None = None) -> None:
    """Run mmdebstrap with its output in a log file; report progress lines as they come.

    A timeout kills mmdebstrap's whole process group so no dpkg/apt child survives (mmdebstrap
    unmounts its chroot mounts when it receives SIGTERM).
    """
    LOG.info("running %s (log: %s)", argv[0], log_path)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(os.environ, **(env or {})))
        deadline = time.monotonic() + timeout
        try:
            assert proc.stdout is not None
            os.set_blocking(proc.stdout.fileno(), False)
            pending = b""
            with selectors.DefaultSelector() as sel:
                sel.register(proc.stdout, selectors.EVENT_READ)
                while True:
                    # mmdebstrap is silent for minutes while dpkg runs: wake up every second
                    # so the timeout holds even without output.
                    if time.monotonic() > deadline:
                        raise exception.CommandTimeout(cmd=argv[0], timeout=timeout)
                    if not sel.select(timeout=1.0):
                        continue
                    chunk = proc.stdout.read()
                    if chunk is None:           # spurious wake-up: nothing to read yet
                        continue
                    if not chunk:
                        break
                    log.write(chunk)
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for raw in lines:
                        line = raw.decode("utf-8", "replace").rstrip()
                        if progress and line.startswith(("I: ", "customize: ")):
                            progress(line)
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except BaseException:
            _terminate(proc)
            raise
    if rc != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
        raise exception.InstallError(reason="mmdebstrap exited %d: %s" % (rc, " | ".join(tail)))


def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait()
