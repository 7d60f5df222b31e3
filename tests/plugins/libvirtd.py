"""Session fixture: a running libvirtd (+ virtlogd) for the libvirt install backend.

There is no systemd on these machines, so the fixture starts ``virtlogd -d`` and
``libvirtd -d`` itself when they are not running, and stops them by PID afterwards (daemons it
found running are left alone).  libvirt's qemu user must be able to open /dev/kvm, otherwise
every domain definition re-probes qemu (~48 s): the fixture gives /dev/kvm to group kvm, mode
660 (the libvirt-qemu user is in that group), as DESIGN.md s.7 prescribes.
"""
from __future__ import annotations

import grp
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

DAEMONS = (("virtlogd", Path("/run/virtlogd.pid")), ("libvirtd", Path("/run/libvirtd.pid")))


def _pid_alive(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def _fix_kvm_permissions() -> None:
    kvm = Path("/dev/kvm")
    if not kvm.exists():
        return
    try:
        gid = grp.getgrnam("kvm").gr_gid
    except KeyError:
        return
    st = kvm.stat()
    if st.st_gid != gid or not st.st_mode & stat.S_IRGRP or not st.st_mode & stat.S_IWGRP:
        os.chown(kvm, 0, gid)
        os.chmod(kvm, 0o660)


@pytest.fixture(scope="session")
def libvirtd():
    """libvirt's qemu:///system URI, served by a libvirtd we started (or found)."""
    if os.geteuid() != 0:
        pytest.fail("the libvirt tests need root (libvirtd, qemu:///system)", pytrace=False)
    _fix_kvm_permissions()
    started = []
    for name, pidfile in DAEMONS:
        if _pid_alive(pidfile):
            continue
        r = subprocess.run([name, "-d"], capture_output=True, text=True, check=False)
        if r.returncode != 0:
            pytest.fail("%s -d failed: %s" % (name, r.stderr.strip()), pytrace=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _pid_alive(pidfile):
            time.sleep(0.2)
        pid = _pid_alive(pidfile)
        if not pid:
            pytest.fail("%s did not write %s" % (name, pidfile), pytrace=False)
        started.append((name, pid))
    import libvirt
    deadline = time.monotonic() + 30
    while True:
        try:
            libvirt.open("qemu:///system").close()
            break
        except libvirt.libvirtError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    yield "qemu:///system"
    for name, pid in reversed(started):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and Path("/proc/%d" % pid).exists():
            time.sleep(0.2)
        assert not Path("/proc/%d" % pid).exists(), "%s pid %d still running" % (name, pid)
