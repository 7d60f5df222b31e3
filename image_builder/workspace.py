"""Nothing lost: a build directory is built beside its final place and renamed on success.

``Workspace(OUT, NAME)`` takes a lock on OUT/.NAME.lock (a second concurrent build of the same
name is refused with the holder's pid), builds in OUT/.NAME.partial-XXXX, and ``commit()``
swaps it into OUT/NAME: a build that fails at any point leaves the previous good build as it
was (its logs go next to it, into OUT/NAME.failed/).  ``preflight()`` checks every tool the
chosen backend, format and verify need before the long install, naming the Debian package.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path

from image_builder import exception, run

LOG = logging.getLogger(__name__)

# tool -> Debian package
TOOLS = {"mmdebstrap": "mmdebstrap", "chroot": "coreutils", "dd": "coreutils",
         "qemu-img": "qemu-utils", "mke2fs": "e2fsprogs", "mkfs.ext4": "e2fsprogs",
         "debugfs": "e2fsprogs", "e2fsck": "e2fsprogs", "resize2fs": "e2fsprogs",
         "sfdisk": "fdisk", "qemu-system-x86_64": "qemu-system-x86",
         "genisoimage": "genisoimage", "ssh-keygen": "openssh-client"}


class BuildLocked(exception.ImageBuilderError):
    msg_fmt = ("another zol-image build or upload of %(name)s is running in %(out)s (lock "
               "%(lock)s held by pid %(pid)s); wait for it or choose another --name/--output-dir")


class MissingTools(exception.ImageBuilderError):
    msg_fmt = "missing tools for this build: %(missing)s; install: apt-get install %(packages)s"


def needed_tools(backend: str, fmt: str, verify: bool, from_disk: bool) -> list[str]:
    tools = ["qemu-img", "debugfs", "e2fsck", "resize2fs", "mke2fs", "sfdisk", "dd"]
    if not from_disk:
        if backend == "chroot":
            tools += ["mmdebstrap", "chroot", "mkfs.ext4"]
        else:
            tools += ["qemu-system-x86_64"]
    if verify:
        tools += ["qemu-system-x86_64", "genisoimage", "ssh-keygen"]
    return list(dict.fromkeys(tools))


def preflight(backend: str, fmt: str, verify: bool, from_disk: bool) -> None:
    """Every tool on PATH (plus /usr/sbin, /sbin), else one error naming the packages."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing = [t for t in needed_tools(backend, fmt, verify, from_disk)
               if not shutil.which(t, path=path)]
    if backend == "libvirt" and not from_disk:
        try:
            import libvirt  # noqa: F401
        except ImportError:
            missing.append("python libvirt")
    if missing:
        pkgs = sorted({TOOLS.get(t, "python3-libvirt") for t in missing})
        raise MissingTools(missing=", ".join(missing), packages=" ".join(pkgs))


class Workspace:
    """Lock + partial directory + rename; use as a context manager around one build."""

    def __init__(self, output_dir: str | os.PathLike, name: str, build: bool = True):
        self.build = build          # False: only the lock (`zol-image upload` of a build)
        self.base = Path(output_dir).resolve()
        self.name = name
        self.final = self.base / name
        self.lock_path = self.base / (".%s.lock" % name)
        self.partial: Path | None = None
        self._lock_fd: int | None = None

    def __enter__(self) -> Workspace:
        self.base.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise BuildLocked(name=self.name, out=self.base, lock=self.lock_path,
                              pid=holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"%d\n" % os.getpid(), 0)
        self._lock_fd = fd
        if not self.build:
            return self
        # Partial directories of builds that died (SIGKILL, power) under this lock's name.
        for stale in self.base.glob(".%s.partial-*" % name_glob(self.name)):
            LOG.info("removing %s (left by an interrupted build)", stale)
            run.remove_tree(stale)
        self.partial = Path(tempfile.mkdtemp(prefix=".%s.partial-" % self.name, dir=self.base))
        return self

    def commit(self) -> Path:
        """Swap the partial directory into place; the previous build is removed after."""
        assert self.partial is not None
        old = None
        if self.final.exists():
            old = self.base / (".%s.old-%d" % (self.name, os.getpid()))
            os.rename(self.final, old)
        os.rename(self.partial, self.final)
        self.partial = None
        if old is not None:
            run.remove_tree(old)
        failed = self.base / ("%s.failed" % self.name)
        if failed.exists():
            run.remove_tree(failed)
        return self.final

    def abort(self, keep_work: bool) -> Path | None:
        """A failed build: keep its logs (or everything with keep_work) where the admin looks:
        OUT/NAME when there is no previous build, else OUT/NAME.failed."""
        if self.partial is None or not self.partial.exists():
            return None
        target = self.final if not self.final.exists() else \
            self.base / ("%s.failed" % self.name)
        if target != self.final and target.exists():
            run.remove_tree(target)
        if not keep_work:
            logs = [p for p in self.partial.rglob("*") if p.is_file() and p.suffix == ".log"]
            if not logs:
                run.remove_tree(self.partial)
                self.partial = None
                return None
            target.mkdir()
            for log in logs:
                dest = target / log.name
                if dest.exists():
                    dest = target / ("%s-%s" % (log.parent.name, log.name))
                shutil.move(str(log), dest)
            run.remove_tree(self.partial)
        else:
            os.rename(self.partial, target)
        self.partial = None
        LOG.info("failed build's %s kept in %s", "work" if keep_work else "logs", target)
        return target

    def __exit__(self, *exc) -> None:
        if self.partial is not None and self.partial.exists():
            run.remove_tree(self.partial)
        if self._lock_fd is not None:
            try:
                os.unlink(self.lock_path)
            except FileNotFoundError:
                pass
            os.close(self._lock_fd)
            self._lock_fd = None


def name_glob(name: str) -> str:
    return "".join("[%s]" % c if c in "*?[]" else c for c in name)
