"""Reproducible builds: one archive state + the same inputs -> bit-identical root, kernel, initrd.

The pieces (each unit tested):

* ``SOURCE_DATE_EPOCH``: by default the newest ``Date:`` of the archive's InRelease files (the
  archive state the build installs from); mmdebstrap, dpkg, initramfs-tools and the shadow tools
  honour it, and every mtime in the tree is clamped to it before ``mkfs``.
* The filesystem UUID and the directory hash seed are derived from the build inputs (a UUIDv5
  over their JSON), never random; ``E2FSPROGS_FAKE_TIME`` fixes the superblock times and the
  inodes' creation time, a ``debugfs`` pass sets the change/access times (which ``mkfs -d``
  copies from the host's inodes) to the epoch and the superblock's write counter
  (``s_kbytes_written``, which depends on how the writer buffered, not on the content) to 0.
* ``compare`` lists what differs between two builds, down to the files inside the root image
  (debugfs ``rdump`` of both, mount-free, then a walk comparing type, mode, owner, times,
  size, content hash and link target).
"""
from __future__ import annotations

import concurrent.futures
import datetime
import email.utils
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from image_builder import exception, run

LOG = logging.getLogger(__name__)

NAMESPACE = uuid.UUID("6f1c5b4e-8c0e-4d2a-9a57-7a6f6c2d1e14")   # zol-image's own namespace
# Files whose content is random or host-specific in every fresh install; the profile empties
# /etc/machine-id and removes host keys, these go too.
RANDOM_FILES = ("var/lib/systemd/random-seed", "var/cache/ldconfig/aux-cache",
                "var/lib/dbus/machine-id", "var/lib/systemd/credential.secret",
                "etc/ssh/ssh_host_ecdsa_key", "etc/ssh/ssh_host_ed25519_key",
                "etc/ssh/ssh_host_rsa_key")


# ----------------------------------------------------------------------------- archive state

def parse_release_date(text: str) -> int:
    """Epoch of the ``Date:`` field of an (In)Release file."""
    for line in text.splitlines():
        if line.startswith("Date:"):
            try:
                return int(email.utils.parsedate_to_datetime(line[5:].strip()).timestamp())
            except (TypeError, ValueError) as exc:
                raise exception.InstallError(reason="unreadable Release date %r" % line) from exc
        if not line.strip():
            continue
    raise exception.InstallError(reason="Release file has no Date: field")


def release_urls(sources: list[str]) -> list[str]:
    """InRelease URL of every one-line ``deb MIRROR SUITE COMPONENTS`` source."""
    urls = []
    for line in sources:
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "deb":
            urls.append("%s/dists/%s/InRelease" % (parts[1].rstrip("/"), parts[2]))
    return urls


def archive_dates(sources: list[str], timeout: float = 30) -> dict[str, int]:
    """``{InRelease URL: Date epoch}`` of each suite, fetched now, all at once (a few 100 KB;
    the tree cache key needs them before anything else can start)."""
    def fetch(url: str) -> int:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                text = resp.read().decode("utf-8", "replace")
        except OSError as exc:
            raise exception.InstallError(reason="cannot read %s (needed for the default "
                                         "SOURCE_DATE_EPOCH; set --source-date-epoch to build "
                                         "offline): %s" % (url, exc)) from exc
        return parse_release_date(text)

    urls = release_urls(sources)
    with concurrent.futures.ThreadPoolExecutor(max(1, len(urls)),
                                               thread_name_prefix="inrelease") as pool:
        return dict(zip(urls, pool.map(fetch, urls)))


def iso(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- derived ids

def derive_uuid(inputs: dict[str, Any], purpose: str) -> str:
    """A UUID that depends only on ``inputs`` (sorted JSON) and ``purpose`` (uuid / hash_seed)."""
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return str(uuid.uuid5(NAMESPACE, "%s:%s" % (purpose, blob)))


def fs_ids(inputs: dict[str, Any]) -> dict[str, str]:
    return {"uuid": derive_uuid(inputs, "fs-uuid"), "hash_seed": derive_uuid(inputs, "hash-seed")}


def mkfs_env(epoch: int) -> dict[str, str]:
    """e2fsprogs' fixed clock (superblock times, crtime) and the C collation for its scandir."""
    return {"E2FSPROGS_FAKE_TIME": str(epoch), "LC_ALL": "C", "SOURCE_DATE_EPOCH": str(epoch)}


# ----------------------------------------------------------------------------- the tree

def normalise_tree(root: str | os.PathLike, epoch: int) -> int:
    """Clamp every mtime in ``root`` to ``epoch``; drop the random files.  Returns how
    many inodes were changed (files dpkg unpacked keep their packaged, older mtimes)."""
    root = Path(root)
    for rel in RANDOM_FILES:
        p = root / rel
        if p.is_file() or p.is_symlink():
            p.unlink()
    changed = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if st.st_mtime > epoch:
                os.utime(path, (epoch, epoch), follow_symlinks=False)
                changed += 1
    if os.lstat(root).st_mtime > epoch:
        os.utime(root, (epoch, epoch))
    return changed


# ----------------------------------------------------------------------------- the filesystem

def parse_free_inodes(dumpe2fs_text: str) -> tuple[int, list[tuple[int, int]]]:
    """Inode count and the free inode ranges from a full ``dumpe2fs`` listing."""
    m = re.search(r"^Inode count:\s+(\d+)", dumpe2fs_text, re.M)
    if not m:
        raise exception.DiskError(reason="dumpe2fs printed no inode count")
    free = []
    for line in dumpe2fs_text.splitlines():
        line = line.strip()
        if not line.startswith("Free inodes: "):
            continue
        for part in line[len("Free inodes: "):].split(","):
            part = part.strip()
            if not part:
                continue
            lo, _, hi = part.partition("-")
            free.append((int(lo), int(hi or lo)))
    return int(m.group(1)), free


def used_inodes(count: int, free: list[tuple[int, int]]) -> list[int]:
    marks = bytearray(b"\1") * (count + 1)
    marks[0] = 0
    for lo, hi in free:
        marks[lo:hi + 1] = b"\0" * (hi - lo + 1)
    return [i for i in range(1, count + 1) if marks[i]]


def inode_time_commands(inodes: list[int], epoch: int) -> str:
    """debugfs commands setting ctime and atime (mkfs -d copies the host's) to ``epoch``,
    then the superblock's write counter to 0 (see ``SUPERBLOCK_COMMANDS``)."""
    return "".join("sif <%d> ctime @%d\nsif <%d> atime @%d\n" % (i, epoch, i, epoch)
                   for i in inodes) + SUPERBLOCK_COMMANDS


# s_kbytes_written ("Lifetime writes") counts what the writing processes wrote, which is not
# a function of the content: mkfs -d from the tree cache wrote 1 MB more than mkfs -d from a
# fresh tree (same files, same blocks: only this field and the superblock checksums differed,
# in the primary and every backup superblock).  0 means "not recorded"; libext2fs adds a
# session's writes at close only when the field is non-zero, so it stays 0.  debugfs writes
# the primary superblock only: ``tune2fs -c -1`` (ext4's default, already set by mke2fs)
# then rewrites every backup from it.
SUPERBLOCK_COMMANDS = "ssv kbytes_written 0\n"


def fix_inode_times(img: str | os.PathLike, epoch: int) -> int:
    """One ``debugfs -w`` pass over every used inode (~1 s for 15000 inodes) and the write
    counter, then every backup superblock rewritten from the primary (``tune2fs``)."""
    spec = os.fspath(img)
    inodes = used_inodes(*parse_free_inodes(run.out(["dumpe2fs", spec], env=mkfs_env(epoch))))
    with tempfile.NamedTemporaryFile("w", prefix="zol-sif-", suffix=".cmd") as cmds:
        cmds.write(inode_time_commands(inodes, epoch))
        cmds.flush()
        proc = run.run(["debugfs", "-w", "-f", cmds.name, spec], env=mkfs_env(epoch))
    errors = [ln for ln in proc.stderr.splitlines()
              if ln.strip() and not ln.startswith("debugfs ") and "sif <" not in ln]
    if errors:
        raise exception.DiskError(reason="debugfs could not set inode times: %s"
                                  % " | ".join(errors[:5]))
    run.run(["tune2fs", "-c", "-1", spec], env=mkfs_env(epoch))
    return len(inodes)


# ----------------------------------------------------------------------------- comparison

def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_listing(root: str | os.PathLike) -> dict[str, tuple]:
    """``{path: (type, mode, uid, gid, mtime, size, sha256 or link target)}``, sorted walk."""
    root = Path(root)
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = "/" + os.path.relpath(path, root)
            if stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                what = sha256(path)
            else:
                what = ""
            # debugfs rdump cannot set a symlink's times: they are not compared.
            mtime = None if stat.S_ISLNK(st.st_mode) else int(st.st_mtime)
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                        st.st_gid, mtime, st.st_size, what)
    return out


FIELDS = ("type", "mode", "uid", "gid", "mtime", "size", "content")


def diff_listings(a: dict[str, tuple], b: dict[str, tuple], limit: int = 200) -> list[str]:
    """Human lines: ``only in first: /x``, ``/etc/y: content, mtime``."""
    lines = []
    for path in sorted(set(a) | set(b)):
        if path not in b:
            lines.append("only in first: %s" % path)
        elif path not in a:
            lines.append("only in second: %s" % path)
        elif a[path] != b[path]:
            fields = [f for f, x, y in zip(FIELDS, a[path], b[path]) if x != y]
            lines.append("%s: %s differ" % (path, ", ".join(fields)))
        if len(lines) >= limit:
            lines.append("... (more differences left out)")
            break
    return lines


def rdump(img: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract the whole filesystem without mounting it (debugfs rdump keeps owner/mode/times)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    run.run(["debugfs", "-R", "rdump / %s" % os.fspath(dest), os.fspath(img)])
    return dest


def superblock_diff(a: str | os.PathLike, b: str | os.PathLike) -> list[str]:
    la = run.out(["dumpe2fs", "-h", os.fspath(a)]).splitlines()
    lb = run.out(["dumpe2fs", "-h", os.fspath(b)]).splitlines()
    return ["superblock: %s  !=  %s" % (x.strip(), y.strip())
            for x, y in zip(la, lb) if x != y][:20]


def compare_files(first: dict[str, str], second: dict[str, str],
                  workdir: str | os.PathLike) -> dict[str, Any]:
    """Compare two builds' files by role (kernel, ramdisk, root / disk).  For a differing root
    filesystem, list the differing files inside it."""
    report: dict[str, Any] = {"identical": True, "files": {}, "differences": []}
    for role in sorted(set(first) | set(second)):
        ha = sha256(first[role]) if role in first else None
        hb = sha256(second[role]) if role in second else None
        report["files"][role] = {"first": ha, "second": hb}
        if ha == hb:
            continue
        report["identical"] = False
        report["differences"].append("%s: sha256 %s != %s" % (role, ha, hb))
        if role == "root" and ha and hb:
            with tempfile.TemporaryDirectory(prefix="zol-repro-", dir=workdir) as tmp:
                la = tree_listing(rdump(first[role], Path(tmp) / "a"))
                lb = tree_listing(rdump(second[role], Path(tmp) / "b"))
            inside = diff_listings(la, lb)
            if not inside:
                inside = ["(every file is identical: the filesystem metadata differs)"] + \
                    superblock_diff(first[role], second[role])
            report["differences"] += ["root: " + ln for ln in inside]
    return report
