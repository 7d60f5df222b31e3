"""Build time and root fs tightness: `zol-image build` versus diskimage-builder, same machine.

Peer: `disk-image-create -a amd64 -t raw -p PACKAGES baremetal debian-minimal` (DIB from PyPI,
its own venv under the cache dir; DIB_RELEASE=bookworm), which yields an ext4 image + vmlinuz +
initrd, the closest DIB gets to a triplet.  PACKAGES is our package set (the build's packages
and the cloud profile's: cloud-init, openssh-server, qemu-guest-agent, ...), so both install
the same packages; ours is built with the same generic kernel (linux-image-amd64), without
boot check or upload, so both do the same job.  The installed package counts are printed.

One run, four builds: ours cold, DIB cold (each with an EMPTY cache of its own: our package
cache via --cache-dir, DIB's image cache via DIB_IMAGE_CACHE), then ours warm and DIB warm (each
reusing the cache its cold build filled: ours = package cache + tree cache, DIB = its image
cache).  Prints every time, each cache's state before the build, the ratios ours/DIB cold and
warm, where each build spent its time (our stages with the install split into mmdebstrap,
the profile's commands, mkfs and the filesystem normalisation; DIB's phases from the
PROFILING tables of dib-run-parts, the rest as "other"), whether our warm build is
bit-identical to the cold one, and the host load average.
Also prints our root fs against `resize2fs -P`'s estimated minimum (below 1: tighter than
resize2fs -M reaches).

    python -m bench image_build     (needs root; DIB also needs sudo, kpartx, squashfs-tools,
                                     gdisk, parted - Debian packages)
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from image_builder import build, customize, disk, run
from image_builder.install.chroot import parse_dpkg_status

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


def du(path: Path) -> int:
    """Bytes below ``path`` (a cache's state)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def build_ours(out: Path, cache_dir: Path) -> tuple[float, Path, dict]:
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "image_builder.cli", "build", "--output-dir",
                    str(out), "--name", "bench-ours", "--kernel-package", "linux-image-amd64",
                    "--mirror", MIRROR, "--security-mirror", SECURITY_MIRROR, "--no-verify",
                    "--no-upload", "--cache-dir", str(cache_dir)], check=True,
                   stdout=subprocess.DEVNULL, cwd=REPO)
    elapsed = time.monotonic() - start
    manifest = json.loads((out / "bench-ours" / "manifest.json").read_text())
    return elapsed, out / "bench-ours" / "bench-ours.img", manifest


PROFILE_LINE = re.compile(r"(\S+)\s+(\d+\.\d{3})\s*$")


def dib_phases(log: str) -> dict[str, float]:
    """Seconds per DIB phase (root.d, install.d, finalise.d, ...) summed over the PROFILING
    tables dib-run-parts prints after each phase (a phase may run more than once)."""
    phases: dict[str, float] = {}
    target = None
    for line in log.splitlines():
        if "END PROFILING" in line:
            target = None
            continue
        m = re.search(r"Target: (\S+)", line)
        if m:
            target = m.group(1)
            continue
        m = PROFILE_LINE.search(line)
        if target and m:
            phases[target] = round(phases.get(target, 0.0) + float(m.group(2)), 1)
    return phases


def ours_stages(manifest: dict) -> dict[str, float]:
    """Our stages, the install stage split into its steps (manifest install_steps)."""
    stages = {k: v for k, v in manifest["timings"].items() if k != "total"}
    steps = manifest.get("install_steps") or {}
    split = {"install." + k.replace("_seconds", ""): v for k, v in steps.items()
             if isinstance(v, (int, float))}
    for cmd, sec in (steps.get("profile_seconds") or {}).items():
        split["install.profile." + cmd] = sec
    return dict(stages, **split)


def package_set() -> list[str]:
    """What our build installs on top of minbase (its packages, kernel included, and the
    cloud profile's): DIB gets the same list with -p, the issue's 'same package set'."""
    settings = build.Settings(kernel_package="linux-image-amd64")
    return sorted(set(settings.all_packages) | set(customize.packages_for(customize.Profile())))


def installed_packages(img: Path) -> int:
    """How many packages the image holds (its dpkg status, read with debugfs)."""
    return len(parse_dpkg_status(disk.read_text(img, "/var/lib/dpkg/status")))


def build_dib(out: Path, cache_dir: Path) -> tuple[float, Path, dict[str, float]]:
    exe = ensure_dib()
    env = dict(os.environ, DIB_RELEASE="bookworm", DIB_DEBIAN_COMPONENTS="main",
               DIB_DISTRIBUTION_MIRROR=MIRROR, DIB_DEBIAN_SECURITY_MIRROR=SECURITY_MIRROR,
               DIB_IMAGE_CACHE=str(cache_dir), TMPDIR=str(out),
               PATH="%s:%s" % (DIB_VENV / "bin", os.environ["PATH"]))
    start = time.monotonic()
    with open(out / "dib.log", "wb") as log:
        r = subprocess.run([str(exe), "-a", "amd64", "-t", "raw", "-o", str(out / "dib"),
                            "-p", ",".join(package_set()), "baremetal", "debian-minimal"],
                           env=env, stdout=log,
                           stderr=subprocess.STDOUT, check=False)
    elapsed = time.monotonic() - start
    text = (out / "dib.log").read_text(errors="replace")
    if r.returncode != 0:
        raise RuntimeError("disk-image-create failed (%d):\n%s" % (r.returncode, text[-3000:]))
    phases = dib_phases(text)
    phases["other (outside dib-run-parts: block device, mkfs, copy, convert)"] = round(
        elapsed - sum(phases.values()), 1)
    return elapsed, out / "dib.raw", phases


def main() -> int:
    # SIGTERM unwinds like Ctrl-C: the work dir is unmounted and removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    base = Path(os.environ.get("ZOL_BENCH_DIR", tempfile.gettempdir()))
    ensure_dib()
    result: dict = {"load_before": os.getloadavg(), "seconds": {}, "cache_before": {}}
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="zol-bench-build-", dir=base))
        # An interrupted DIB leaves its chroot mounts (proc, dev, its cache bind mount): they
        # go before anything is deleted (run.remove_tree unmounts first).
        stack.callback(run.remove_tree, tmp)
        caches = {"ours": tmp / "cache-ours", "dib": tmp / "cache-dib"}
        for c in caches.values():
            c.mkdir()
        fs = {}
        for rnd in ("cold", "warm"):
            for who in ("ours", "dib"):
                out = tmp / ("%s-%s" % (who, rnd))
                out.mkdir()
                result["cache_before"]["%s_%s" % (who, rnd)] = du(caches[who])
                if who == "ours":
                    t, img, manifest = build_ours(out, caches["ours"])
                    rep = manifest.get("repro") or {}
                    result["ours_%s_package_cache" % rnd] = rep.get("package_cache")
                    result["ours_%s_tree_cache" % rnd] = rep.get("tree_cache")
                    result["ours_%s_sha256" % rnd] = {r: f["sha256"] for r, f in
                                                       manifest["files"].items()}
                    result["ours_%s_timings" % rnd] = manifest["timings"]
                    result["ours_%s_stages" % rnd] = ours_stages(manifest)
                else:
                    t, img, phases = build_dib(out, caches["dib"])
                    result["dib_%s_stages" % rnd] = phases
                result["seconds"]["%s_%s" % (who, rnd)] = round(t, 1)
                if rnd == "warm":
                    fs[who] = dict(fs_numbers(img), packages=installed_packages(img))
                run.remove_tree(out)
        result["load_after"] = os.getloadavg()
        result["fs"] = fs
        print(json.dumps(result, indent=2))
    sec = result["seconds"]
    for rnd in ("cold", "warm"):
        print("%s: ours %.0f s, DIB %.0f s, ratio ours/DIB %.2f  (cache before: ours %.0f MiB, "
              "DIB %.0f MiB)" % (rnd, sec["ours_" + rnd], sec["dib_" + rnd],
                                 sec["ours_" + rnd] / sec["dib_" + rnd],
                                 result["cache_before"]["ours_" + rnd] / MIB,
                                 result["cache_before"]["dib_" + rnd] / MIB))
    for rnd in ("cold", "warm"):
        for who in ("ours", "dib"):
            print("%s %s stages (s): %s" % (who, rnd, ", ".join(
                "%s %.1f" % kv for kv in result["%s_%s_stages" % (who, rnd)].items())))
    print("ours tree cache: cold %s, warm %s" % (result["ours_cold_tree_cache"],
                                                 result["ours_warm_tree_cache"]))
    print("ours warm == ours cold, bit for bit (root, kernel, initrd): %s"
          % (result["ours_warm_sha256"] == result["ours_cold_sha256"]))
    print("load average before %s, after %s" % (
        " ".join("%.1f" % x for x in result["load_before"]),
        " ".join("%.1f" % x for x in result["load_after"])))
    ours, dib = fs["ours"], fs["dib"]
    for name, n in (("ours", ours), ("DIB", dib)):
        print("%-4s root fs %.0f MiB holding %.0f MiB (%.1f%% free), %.0f MiB allocated; "
              "resize2fs -P minimum %.0f MiB -> size/minimum %.2f"
              % (name, n["size"] / MIB, n["used"] / MIB, n["slack"] * 100,
                 n["allocated"] / MIB, n["resize2fs_min"] / MIB,
                 n["size"] / n["resize2fs_min"]))
    print("packages installed: ours %d, DIB %d (both asked for: %s)"
          % (ours["packages"], dib["packages"], " ".join(package_set())))
    print("root fs size ratio ours/DIB %.2f, allocated ratio %.2f"
          % (ours["size"] / dib["size"], ours["allocated"] / dib["allocated"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
