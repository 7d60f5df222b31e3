"""Boot the triplet the way nova's libvirt driver instantiates an AMI, before anyone else does.

nova: copy the root fs, grow the file to the flavor's disk size, e2fsck + resize2fs, then boot
with the AKI as -kernel, the ARI as -initrd and ``root=/dev/vda``.  We do the same under qemu
(TCG here: this /dev/kvm cannot run a stock kernel) and wait for a marker on the serial console
(the image's /etc/issue carries the build name, so a stale image cannot pass), then stop qemu by
PID.  Nothing survives: the copy is deleted and the qemu process is reaped on every path.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from image_builder import disk, exception, run

LOG = logging.getLogger(__name__)

APPEND = "root=/dev/vda console=ttyS0 rw"
LOGIN = "login:"
PANIC_MARKERS = ("Kernel panic", "VFS: Unable to mount root fs",
                 "Gave up waiting for root file system device", "(initramfs)")


def qemu_argv(kernel: str, initrd: str | None, drive: str, console: str, pidfile: str,
              memory: int = 512, accel: str = "tcg,thread=multi", fmt: str = "raw",
              append: str | None = APPEND) -> list[str]:
    """qemu command line of a nova-style direct kernel boot (pure; unit tested)."""
    argv = ["qemu-system-x86_64", "-accel", accel, "-cpu", "max", "-m", str(memory),
            "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
            "-serial", "file:%s" % console, "-pidfile", pidfile, "-no-reboot",
            "-drive", "file=%s,if=virtio,format=%s,cache=unsafe" % (drive, fmt),
            "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"]
    if kernel:
        argv += ["-kernel", kernel]
        if initrd:
            argv += ["-initrd", initrd]
        if append:
            argv += ["-append", append]
    return argv


def boot(*, kernel: str | None, initrd: str | None, root: str, workdir: Path,
         flavor_bytes: int, marker: str, timeout: float, fmt: str = "raw",
         progress: Callable[[str], None] | None = None,
         on_started: Callable[[], None] | None = None) -> dict:
    """Boot a copy of ``root`` grown to ``flavor_bytes``; return timings and the console tail."""
    workdir.mkdir(parents=True, exist_ok=True)
    instance = workdir / ("instance.%s" % fmt)
    console = workdir / "console.log"
    pidfile = workdir / "qemu.pid"
    for p in (instance, console, pidfile):
        p.unlink(missing_ok=True)
    proc = None
    try:
        t0 = time.monotonic()
        run.run(["cp", "--sparse=always", root, str(instance)])
        if kernel:
            disk.grow(instance, flavor_bytes)       # what nova does before boot
            grown = disk.fs_info(instance)
            if grown.size < flavor_bytes * 0.99:
                raise exception.VerifyError(reason="root fs grew to %d bytes only, flavor is %d"
                                            % (grown.size, flavor_bytes))
        prepare = time.monotonic() - t0
        argv = qemu_argv(kernel or "", initrd, str(instance), str(console), str(pidfile),
                         fmt=fmt)
        LOG.info("verify: booting %s (flavor disk %d MiB) under qemu TCG", root,
                 flavor_bytes >> 20)
        LOG.debug("verify: %s", argv)
        t1 = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        last_report = 0.0
        if on_started:
            on_started()
        while True:
            text = console.read_text(errors="replace") if console.exists() else ""
            if marker in text and LOGIN in text[text.index(marker):]:
                break       # our /etc/issue line, then getty's prompt: the system is up
            for bad in PANIC_MARKERS:
                if bad in text:
                    raise exception.VerifyError(reason="guest failed to boot (%s); console "
                                                "tail: %s" % (bad, _tail(text)))
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise exception.VerifyError(reason="qemu exited %s before the marker: %s %s"
                                            % (proc.returncode, err.strip()[-500:],
                                               _tail(text)))
            elapsed = time.monotonic() - t1
            if elapsed > timeout:
                raise exception.VerifyError(reason="no %r on the console after %.0f s; tail: %s"
                                            % (marker, elapsed, _tail(text)))
            if progress and elapsed - last_report >= 15:
                last_report = elapsed
                lines = [ln for ln in text.splitlines() if ln.strip()]
                progress("%.0f s: %s" % (elapsed, lines[-1][-100:] if lines else "(no output)"))
            time.sleep(0.5)
        booted = time.monotonic() - t1
        LOG.info("verify: marker %r after %.1f s", marker, booted)
        text = console.read_text(errors="replace")
        return {"prepare_seconds": round(prepare, 2), "boot_seconds": round(booted, 2),
                "flavor_bytes": flavor_bytes, "console_tail": _tail(text, 1500)}
    finally:
        if proc is not None:
            stop(proc)
        instance.unlink(missing_ok=True)


def stop(proc: subprocess.Popen) -> None:
    """Stop qemu by its PID: SIGTERM, then SIGKILL; always reaped."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            proc.wait()
    if proc.stderr:
        proc.stderr.close()


def _tail(text: str, n: int = 600) -> str:
    return " | ".join(ln.strip() for ln in text[-n:].splitlines() if ln.strip())
