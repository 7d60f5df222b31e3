"""Build time and root fs tightness: `zol-image build` versus diskimage-builder, same machine.

Peer: `disk-image-create -a amd64 -t raw baremetal debian-minimal` (DIB from PyPI, its own venv
under the cache dir; DIB_RELEASE=bookworm), which yields an ext4 image + vmlinuz + initrd, the
closest DIB gets to a triplet.  Ours is built with the same generic kernel (linux-image-amd64),
without boot check or upload, so both do the same job.  One run each, back to back.  Also prints
our shrunk root fs against `resize2fs -P`'s estimated minimum (a ratio below 1 means tighter than
what resize2fs -M can reach).

    python -m bench image_build     (needs root; DIB also needs sudo, kpartx, squashfs-tools,
                                     gdisk, parted - Debian packages)
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from image_builder import disk

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("ZOL_CACHE_DIR", Path.home() / ".cache" / "zol-openstack"))
DIB_VENV = CACHE / "venvs" / "dib"
MIRROR = os.environ.get("ZOL_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SECURITY_MIRROR = os.environ.get("ZOL_DEBIAN_SECURITY_MIRROR",
                                 "http://deb.debian.org/debian-security")
MIB = 1024 * 1024


def ensure_dib() -> Path:
    exe = DIB_VENV / "bin" / "disk-image-create"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(DIB_VENV)], check=True)
        subprocess.run([str(DIB_VENV / "bin" / "pip"), "install", "-q", "diskimage-builder"],
                       check=True)
    return exe


def resize2fs_minimum(img: Path, grow_to: int) -> int:
    """What `resize2fs -M` reaches for this content: grow a sparse copy to ``grow_to`` (the
    2 GiB partition of the original recipe), then ask `resize2fs -P` (bytes).  On the image
    itself -P says nothing useful: it never reports less than the current size."""
    copy = img.with_suffix(".pcopy")
    try:
        subprocess.run(["cp", "--sparse=always", str(img), str(copy)], check=True)
        disk.grow(copy, max(grow_to, img.stat().st_size))
        out = subprocess.run(["resize2fs", "-P", str(copy)], capture_output=True, text=True,
                             check=True).stdout
        return int(out.strip().rsplit(":", 1)[-1]) * disk.fs_info(copy).block_size
    finally:
        copy.unlink(missing_ok=True)


def fs_numbers(img: Path) -> dict:
    info = disk.fs_info(img)
    return {"size": info.size, "used": info.used, "slack": info.slack,
            "allocated": disk.allocated(img),
            "resize2fs_min": resize2fs_minimum(img, 2048 * MIB)}


def build_ours(out: Path) -> tuple[float, Path]:
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "image_builder.cli", "build", "--output-dir",
                    str(out), "--name", "bench-ours", "--kernel-package", "linux-image-amd64",
                    "--mirror", MIRROR, "--security-mirror", SECURITY_MIRROR, "--no-verify",
                    "--no-upload"], check=True,
                   stdout=subprocess.DEVNULL)
    return time.monotonic() - start, out / "bench-ours" / "bench-ours.img"


def build_dib(out: Path) -> tuple[float, Path]:
    exe = ensure_dib()
    env = dict(os.environ, DIB_RELEASE="bookworm", DIB_DEBIAN_COMPONENTS="main",
               DIB_DISTRIBUTION_MIRROR=MIRROR, DIB_DEBIAN_SECURITY_MIRROR=SECURITY_MIRROR,
               TMPDIR=str(out),
               PATH="%s:%s" % (DIB_VENV / "bin", os.environ["PATH"]))
    start = time.monotonic()
    with open(out / "dib.log", "wb") as log:
        r = subprocess.run([str(exe), "-a", "amd64", "-t", "raw", "-o", str(out / "dib"),
                            "baremetal", "debian-minimal"], env=env, stdout=log,
                           stderr=subprocess.STDOUT, check=False)
    elapsed = time.monotonic() - start
    if r.returncode != 0:
        tail = (out / "dib.log").read_text(errors="replace")[-3000:]
        raise RuntimeError("disk-image-create failed (%d):\n%s" % (r.returncode, tail))
    return elapsed, out / "dib.raw"


def main() -> int:
    base = Path(os.environ.get("ZOL_BENCH_DIR", tempfile.gettempdir()))
    with tempfile.TemporaryDirectory(prefix="zol-bench-build-", dir=base) as tmp:
        tmp = Path(tmp)
        (tmp / "ours").mkdir()
        (tmp / "dib").mkdir()
        t_ours, ours_img = build_ours(tmp / "ours")
        ours = fs_numbers(ours_img)
        t_dib, dib_img = build_dib(tmp / "dib")
        dib = fs_numbers(dib_img)
        result = {"seconds": {"ours": round(t_ours, 1), "dib": round(t_dib, 1)},
                  "ours": ours, "dib": dib}
        print(json.dumps(result, indent=2))
        shutil.rmtree(tmp / "dib", ignore_errors=True)
    print("build time: ours %.0f s, DIB %.0f s, ratio ours/DIB %.2f"
          % (t_ours, t_dib, t_ours / t_dib))
    for name, n in (("ours", ours), ("DIB", dib)):
        print("%-4s root fs %.0f MiB holding %.0f MiB (%.1f%% free), %.0f MiB allocated; "
              "resize2fs -P minimum %.0f MiB -> size/minimum %.2f"
              % (name, n["size"] / MIB, n["used"] / MIB, n["slack"] * 100,
                 n["allocated"] / MIB, n["resize2fs_min"] / MIB,
                 n["size"] / n["resize2fs_min"]))
    print("root fs size ratio ours/DIB %.2f, allocated ratio %.2f"
          % (ours["size"] / dib["size"], ours["allocated"] / dib["allocated"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
