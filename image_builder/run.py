"""The one place the image builder runs external commands.

Commands are argv lists; they are logged with ``shlex.join`` (for humans to copy) but never
handed to a shell.  A failure becomes a CommandError that quotes the end of stderr, because the
last lines of mkfs/qemu-img/mmdebstrap output are what tells the admin what went wrong.
"""
from __future__ import annotations

import logging
import os
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence

from image_builder import exception

LOG = logging.getLogger(__name__)

STDERR_TAIL = 2000


def _tail(text: str | bytes | None) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = text.strip()
    return text[-STDERR_TAIL:]


def run(argv: Sequence[str], *, check: bool = True, ok_codes: Sequence[int] = (0,),
        timeout: float | None = None, env: Mapping[str, str] | None = None,
        input: bytes | None = None, capture: bool = True,
        cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run ``argv`` and return the CompletedProcess (text output).

    ``ok_codes`` lists the exit codes that mean success (e2fsck exits 1 when it fixed something).
    With ``capture=False`` the command's output goes to our stdout/stderr (long stages whose
    progress the admin wants to watch).
    """
    argv = [os.fspath(a) for a in argv]
    if not argv or any(not isinstance(a, str) for a in argv):
        raise exception.ConfigError(reason="command must be a non-empty list of strings")
    cmd = shlex.join(argv)
    LOG.debug("run: %s", cmd)
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    start = time.monotonic()
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL if input is None else None,
                              input=input,
                              stdout=subprocess.PIPE if capture else None,
                              stderr=subprocess.PIPE if capture else None,
                              timeout=timeout, env=full_env, cwd=cwd, check=False)
    except subprocess.TimeoutExpired as exc:
        raise exception.CommandTimeout(cmd=cmd, timeout=timeout) from exc
    except FileNotFoundError as exc:
        raise exception.CommandError(cmd=cmd, rc=127,
                                     stderr="%s not found (install it)" % argv[0]) from exc
    elapsed = time.monotonic() - start
    stdout = proc.stdout.decode("utf-8", "replace") if proc.stdout is not None else ""
    stderr = proc.stderr.decode("utf-8", "replace") if proc.stderr is not None else ""
    proc = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    LOG.debug("run: exit %d after %.2f s: %s", proc.returncode, elapsed, argv[0])
    if check and proc.returncode not in ok_codes:
        raise exception.CommandError(cmd=cmd, rc=proc.returncode,
                                     stderr=_tail(stderr) or _tail(stdout) or "(no output)")
    return proc


def out(argv: Sequence[str], **kwargs: object) -> str:
    """Run and return stdout (a parse input)."""
    return run(argv, **kwargs).stdout  # type: ignore[arg-type]


def mounts_under(path: str | os.PathLike) -> list[str]:
    """Mount points at or below ``path`` (deepest first), from /proc/self/mountinfo."""
    base = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].encode().decode("unicode_escape")
            if mnt == base or mnt.startswith(base.rstrip("/") + "/"):
                found.append(mnt)
    return sorted(found, key=len, reverse=True)


def unmount_under(path: str | os.PathLike) -> list[str]:
    """Unmount anything a killed chroot step left below ``path`` before it is deleted.

    Deleting a tree with /proc or /dev still mounted inside would delete the host's files.
    """
    left = mounts_under(path)
    for mnt in left:
        LOG.warning("unmounting leftover mount %s", mnt)
        run(["umount", "--lazy", mnt], check=False)
    if mounts_under(path):
        raise exception.DiskError(reason="mounts left under %s: %s" % (path, mounts_under(path)))
    return left


def remove_tree(path: str | os.PathLike) -> None:
    """rm -rf that refuses to cross into mounts (see unmount_under)."""
    import shutil
    if not os.path.lexists(path):
        return
    unmount_under(path)
    shutil.rmtree(path)
