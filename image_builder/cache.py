"""The package cache: .debs and apt lists kept between builds (mmdebstrap's documented recipe).

``CACHE_DIR/apt/RELEASE-ARCH/{archives,lists}`` is synced into the chroot by setup hooks before
``apt-get update`` (so an unchanged archive answers 304 and no Packages file is fetched again,
and no cached .deb is downloaded again) and synced back out by a customize hook before the
profile cleans apt.  ``--skip=essential/unlink`` keeps the essential .debs for the sync-out.
Superseded versions are pruned after each build, so the cache holds one version per package.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

LOG = logging.getLogger(__name__)


def default_dir() -> str:
    """The project's cache dir (README: ~/.cache/zol-openstack, override with ZOL_CACHE_DIR)."""
    return os.environ.get("ZOL_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "zol-openstack")


@dataclass(frozen=True)
class PackageCache:
    root: Path

    @classmethod
    def for_build(cls, cache_dir: str, release: str, arch: str) -> PackageCache:
        return cls(Path(cache_dir) / "apt" / ("%s-%s" % (release, arch)))

    @property
    def archives(self) -> Path:
        return self.root / "archives"

    @property
    def lists(self) -> Path:
        return self.root / "lists"

    def prepare(self) -> dict[str, int]:
        for d in (self.archives, self.lists):
            d.mkdir(parents=True, exist_ok=True)
        (self.lists / "partial").mkdir(exist_ok=True)
        return self.state()

    def state(self) -> dict[str, int]:
        """What the cache holds now: .deb count/bytes, list bytes."""
        debs = [p for p in self.archives.glob("*.deb")] if self.archives.exists() else []
        lists = [p for p in self.lists.iterdir() if p.is_file()] if self.lists.exists() else []
        return {"debs": len(debs), "deb_bytes": sum(p.stat().st_size for p in debs),
                "list_bytes": sum(p.stat().st_size for p in lists)}

    def mmdebstrap_args(self) -> list[str]:
        """Hook options (mmdebstrap runs hook strings with sh; the paths are quoted)."""
        a, lists = shlex.quote(str(self.archives)), shlex.quote(str(self.lists))
        return ["--skip=essential/unlink",
                '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/ "$1"/var/lib/apt/lists/',
                "--setup-hook=sync-in %s /var/cache/apt/archives/" % a,
                "--setup-hook=sync-in %s /var/lib/apt/lists/" % lists,
                "--customize-hook=sync-out /var/cache/apt/archives %s" % a,
                "--customize-hook=sync-out /var/lib/apt/lists %s" % lists]

    def snapshot(self) -> dict[str, int]:
        """``{file name: size}`` of the cached .debs (to count what a build downloaded)."""
        if not self.archives.exists():
            return {}
        return {p.name: p.stat().st_size for p in self.archives.glob("*.deb")}

    def prune(self, installed: list[str]) -> int:
        """Drop .debs of packages whose installed version is another one (one version each)."""
        current = {deb_name(p) for p in installed}
        names = {n.split("_", 1)[0] for n in current}
        removed = 0
        for p in self.archives.glob("*.deb"):
            pkg_ver = p.name.rsplit("_", 1)[0]
            if pkg_ver.split("_", 1)[0] in names and pkg_ver not in current:
                p.unlink()
                removed += 1
        return removed


def deb_name(name_version: str) -> str:
    """apt's archive file name prefix for ``name=version`` (``:`` is stored as ``%3a``)."""
    name, _, version = name_version.partition("=")
    return "%s_%s" % (name, version.replace(":", "%3a"))


def downloaded(before: dict[str, int], after: dict[str, int],
               installed: list[str] | None = None) -> dict[str, int]:
    """What a build fetched (.debs new in the cache) and how many installed packages it took
    from the cache (``installed``: ``name=version``; without it, every cached .deb kept)."""
    new = {k: v for k, v in after.items() if k not in before}
    if installed is None:
        used = len(set(before) & set(after))
    else:
        cached = {k.rsplit("_", 1)[0] for k in before}
        used = sum(1 for p in installed if deb_name(p) in cached)
    return {"debs": len(new), "bytes": sum(new.values()), "cached_debs_used": used}


# The code that shapes the tree (mmdebstrap's command, the profile, normalisation, GRUB): a
# change in any of these is a tree cache miss; publishing or verify code is not.
TREE_CODE = ("cache.py", "customize.py", "disk.py", "repro.py", "install/chroot.py")


@dataclass(frozen=True)
class TreeCache:
    """Finished trees (after the profile, normalised, before mkfs) keyed by EVERY input: the
    archive's Release dates, sources, package set, profile, format, SOURCE_DATE_EPOCH, the
    mmdebstrap version and zol-image's tree-shaping code (TREE_CODE).  A hit skips mmdebstrap:
    mkfs reads the cached tree as it is (never written to).  Any change in the archive or the
    inputs is a miss.
    ``keep`` entries per release-arch survive (most recently used first): a CI run builds a
    few variants of one release (triplet, BARE, recipe, demo), each its own key."""

    root: Path
    keep: int = 4

    @classmethod
    def for_build(cls, cache_dir: str, release: str, arch: str) -> TreeCache:
        return cls(Path(cache_dir) / "trees" / ("%s-%s" % (release, arch)))

    @staticmethod
    def key(inputs: dict) -> str:
        code = hashlib.sha256()
        pkg = Path(__file__).resolve().parent
        for rel in TREE_CODE:
            code.update(rel.encode() + b"\0" + (pkg / rel).read_bytes())
        blob = json.dumps({"inputs": inputs, "code": code.hexdigest()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def lookup(self, key: str) -> Path | None:
        entry = self.root / key
        if (entry / "complete").exists():
            os.utime(entry / "complete")            # newest use first when pruning
            return entry
        return None

    def begin(self) -> Path:
        """A new entry under a temporary name: the build makes its tree in ``DIR/tree`` right
        here (no copy afterwards), then ``commit``s it or removes ``DIR``."""
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".store-", dir=self.root))

    def commit(self, key: str, tmp: Path, extra: dict[str, Path]) -> Path:
        """``tmp`` (from ``begin``, holding ``tree``) becomes entry ``key``, with files such
        as GRUB's core.img, atomically by rename.  An entry another build completed meanwhile
        is kept as it is (a build may be reading it: same key, same content) and ``tmp``
        removed."""
        entry = self.root / key
        try:
            for name, path in extra.items():
                shutil.copy2(path, tmp / name)
            (tmp / "complete").write_text(key + "\n")
            if (entry / "complete").exists():       # another build won the race
                shutil.rmtree(tmp)
                return entry
            if entry.exists():                       # an incomplete leftover
                shutil.rmtree(entry)
            os.rename(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.prune()
        return entry

    def store(self, key: str, tree: Path, extra: dict[str, Path]) -> Path:
        """Copy ``tree`` in (``cp -a``) and commit it: for a tree made elsewhere."""
        entry = self.root / key
        if (entry / "complete").exists():
            return entry
        tmp = self.begin()
        try:
            subprocess.run(["cp", "-a", "--", str(tree), str(tmp / "tree")], check=True,
                           capture_output=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.commit(key, tmp, extra)

    def prune(self) -> None:
        entries = sorted((p for p in self.root.iterdir() if (p / "complete").exists()),
                         key=lambda p: (p / "complete").stat().st_mtime, reverse=True)
        for old in entries[self.keep:]:
            shutil.rmtree(old, ignore_errors=True)
