"""A real userspace iSCSI initiator (libiscsi through qemu-img) for reading and writing LUNs.

The host has no kernel iSCSI initiator; qemu-img's iscsi:// driver (package qemu-block-extra)
logs in with libiscsi, optionally with CHAP, and copies whole LUNs.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import urllib.parse
from pathlib import Path


def iscsi_url(host: str, port: int, iqn: str, lun: int = 1,
              chap_user: str | None = None, chap_secret: str | None = None) -> str:
    auth = ""
    if chap_user:
        auth = "%s%%%s@" % (urllib.parse.quote(chap_user, safe=""),
                            urllib.parse.quote(chap_secret or "", safe=""))
    return "iscsi://%s%s:%d/%s/%d" % (auth, host, port, iqn, lun)


def _qemu_img(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-img", *argv], capture_output=True, text=True, timeout=timeout,
                          check=False)


def capacity(url: str, timeout: float = 120) -> int:
    """LUN size in bytes as the initiator sees it (READ CAPACITY via libiscsi)."""
    r = _qemu_img(["info", "--output=json", url], timeout)
    if r.returncode != 0:
        raise RuntimeError("qemu-img info %s failed: %s" % (url, r.stderr.strip()))
    import json
    return int(json.loads(r.stdout)["virtual-size"])


def write(url: str, data: bytes, timeout: float = 600) -> None:
    """Write `data` at offset 0 of the LUN."""
    with tempfile.NamedTemporaryFile(prefix="iscsi-w-") as f:
        f.write(data)
        f.flush()
        # qemu-img convert -n writes into the existing target without resizing it; the source
        # must not be larger than the LUN.
        # -t writeback: qemu-img's default destination cache mode (unsafe) skips the final
        # flush, and a ZFS snapshot taken right after would miss the data.
        r = _qemu_img(["convert", "-n", "-t", "writeback", "-f", "raw", "-O", "raw", f.name,
                       url], timeout)
    if r.returncode != 0:
        raise RuntimeError("iSCSI write to %s failed: %s" % (url, r.stderr.strip()))


def read(url: str, length: int, timeout: float = 600) -> bytes:
    """Read the first `length` bytes of the LUN."""
    with tempfile.TemporaryDirectory(prefix="iscsi-r-") as d:
        out = Path(d) / "lun.raw"
        r = _qemu_img(["dd", "-f", "raw", "-O", "raw", "bs=65536",
                       "count=%d" % ((length + 65535) // 65536), "if=" + url,
                       "of=" + str(out)], timeout)
        if r.returncode != 0:
            raise RuntimeError("iSCSI read from %s failed: %s" % (url, r.stderr.strip()))
        return out.read_bytes()[:length]


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
