"""A real bookworm triplet: mmdebstrap build, nova-style boot, upload to a real Glance.

The triplet is built ONCE per session (~3-4 min on 2 busy cores) and reused: the re-run and the
failure-injection tests start from its root filesystem (``--from-disk``) so each costs seconds.
Every failing run must name its stage and leave nothing behind: no loop device, no mount, no
qemu process, no partial file, no non-active Glance image.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from image_builder import disk

pytestmark = [pytest.mark.functional, pytest.mark.slow]

NAME = "zol-func-bookworm"


def zol_image(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "image_builder.cli", *args],
                          capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)


def qemu_pids(marker: str) -> list[int]:
    """qemu processes whose command line mentions ``marker`` (our build directory)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "qemu-system" in cmd and marker in cmd:
            pids.append(int(proc.name))
    return pids


def loop_backing_files() -> set[str]:
    files = set()
    for p in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            files.add(p.read_text().strip())
        except OSError:
            pass
    return files


def mounts_below(path: Path) -> list[str]:
    base = str(path.resolve())
    with open("/proc/self/mountinfo") as f:
        return [ln.split()[4] for ln in f if ln.split()[4].startswith(base)]


def glance_images(glance_server) -> dict[str, str]:
    return {i["id"]: i["status"] for i in glance_server.client().images.list()}


def assert_nothing_left(where: Path, glance_server, images_before: dict[str, str]) -> None:
    assert qemu_pids(str(where)) == [], "qemu still running for %s" % where
    assert not [f for f in loop_backing_files() if f.startswith(str(where))], "loop device left"
    assert mounts_below(where) == [], "mounts left below %s" % where
    leftovers = [p.name for p in where.rglob("*") if p.is_file() and p.suffix != ".log"]
    assert leftovers == [], "files left behind: %s" % leftovers
    assert glance_images(glance_server) == images_before, "Glance images changed"


_BUILT: dict[str, dict] = {}     # test_image_publish imports the fixture: one build per session


@pytest.fixture(scope="session")
def triplet(glance_server, tmp_path_factory):
    """One real build: install, configure, convert, kernel, shrink, verify, upload, manifest."""
    if "triplet" in _BUILT:
        return _BUILT["triplet"]
    out = tmp_path_factory.mktemp("images")
    r = zol_image("build", "--output-dir", str(out), "--name", NAME, "--keep-work",
                  "--glance-endpoint", glance_server.url, "--verify-disk-size", "3072")
    if r.returncode != 0:
        pytest.fail("zol-image build failed (%d):\n%s" % (r.returncode, r.stderr[-6000:]),
                    pytrace=False)
    build_dir = out / NAME
    summary = json.loads(r.stdout)
    manifest = json.loads((build_dir / "manifest.json").read_text())
    _BUILT["triplet"] = {"dir": build_dir, "summary": summary, "manifest": manifest,
                         "stderr": r.stderr,
                         "disk": build_dir / ("%s.img" % NAME)}  # --from-disk takes the root fs
    return _BUILT["triplet"]


def test_manifest_describes_the_triplet(triplet):
    m = triplet["manifest"]
    d = triplet["dir"]
    assert set(m["files"]) == {"kernel", "ramdisk", "root"}
    for role, meta in m["files"].items():
        path = d / meta["path"]
        assert path.stat().st_size == meta["size"] > 0
        from image_builder import glance
        assert glance.hash_file(path).sha512 == meta["sha512"], role
    names = {p.split("=")[0] for p in m["packages"]}
    assert {"linux-image-cloud-amd64", "openssh-server", "locales", "initramfs-tools"} <= names
    assert m["kernel_version"].endswith("-cloud-amd64")
    assert m["debian"] == {"release": "bookworm", "version": "12", "arch": "amd64",
                           "mirror": m["settings"]["mirror"]}
    for stage in ("install", "convert", "kernel", "shrink", "verify", "hash", "upload"):
        assert m["timings"][stage] >= 0, stage
    for line in ("stage install: done", "stage verify: done", "stage upload: done"):
        assert line in triplet["stderr"]


def test_root_fs_is_shrunk_within_15_percent_of_its_data(triplet):
    root = triplet["dir"] / triplet["manifest"]["files"]["root"]["path"]
    info = disk.fs_info(root)
    assert root.stat().st_size == info.size           # truncated to the filesystem
    assert info.slack <= 0.15, "%.1f%% free" % (info.slack * 100)
    assert disk.allocated(root) <= info.used * 1.02  # free blocks are holes
    disk.e2fsck(root, readonly=True)


def test_cloud_profile_inside_the_image(triplet):
    root = triplet["dir"] / triplet["manifest"]["files"]["root"]["path"]
    modules = disk.read_text(root, "/etc/modules")
    assert "virtio_balloon" in modules.split() and "acpiphp" in modules.split()
    assert disk.read_text(root, "/etc/hostname").strip() == "debian"
    assert "LANG=en_US.UTF-8" in disk.read_text(root, "/etc/default/locale")
    ssh_dir = subprocess.run(["debugfs", "-R", "ls /etc/ssh", str(root)], capture_output=True,
                             text=True, check=True).stdout
    assert "sshd_config" in ssh_dir and "ssh_host_" not in ssh_dir
    for gone in ("/root/.bash_history", "/etc/udev/rules.d/70-persistent-net.rules"):
        stat = subprocess.run(["debugfs", "-R", "stat %s" % gone, str(root)],
                              capture_output=True, text=True, check=False)
        assert "File not found" in stat.stdout + stat.stderr, gone
    initramfs_modules = disk.read_text(root, "/etc/initramfs-tools/modules").split()
    assert {"virtio_pci", "virtio_blk"} <= set(initramfs_modules)
    assert disk.read_text(root, "/etc/machine-id") == ""
    assert disk.fs_info(root).block_size == 4096
    resolv = subprocess.run(["debugfs", "-R", "stat /etc/resolv.conf", str(root)],
                            capture_output=True, text=True, check=True).stdout
    assert "../run/systemd/resolve/stub-resolv.conf" in resolv     # not the build host's
    sources = disk.read_text(root, "/etc/apt/sources.list")
    assert "bookworm-security" in sources and "bookworm-updates" in sources
    assert "datasource_list: [ConfigDrive, OpenStack, NoCloud, None]" in \
        disk.read_text(root, "/etc/cloud/cloud.cfg.d/90-zol.cfg")
    names = {p.split("=")[0] for p in triplet["manifest"]["packages"]}
    assert {"cloud-init", "qemu-guest-agent", "systemd-timesyncd", "systemd-resolved",
            "cloud-guest-utils"} <= names
    assert "ifupdown" not in names       # networkd configures the NICs


CHECKS = {"cloud-init", "cloud-init-result", "hostname", "network", "ipv6", "root-fs-grown",
          "root-fs-writable", "sudo", "user-data", "time-sync", "qemu-guest-agent",
          "serial-getty", "ssh-policy", "machine-id", "no-build-host-resolv.conf",
          "apt-sources", "qemu-guest-agent-channel"}


def assert_launched_and_logged_in(v: dict, stderr: str, flavor_mib: int, nic: str) -> None:
    """What verify proved: nova's launch, a key the build never saw let in as debian, every
    check from inside passed (each would have failed the build)."""
    assert v["flavor_bytes"] == flavor_mib * disk.MIB
    assert v["nic"] == nic
    assert 0 < v["ssh_seconds"] < 900
    assert set(v["checks"]) == CHECKS, CHECKS - set(v["checks"])
    assert v["host_key"].startswith("SHA256:") and "guest agent" in v["host_key"]
    assert "verify: SSH as debian with the instance key after" in stderr
    assert "verify: %d checks passed inside the instance" % len(CHECKS) in stderr
    print("time to SSH %.0f s, checks %.0f s (%s)" % (v["ssh_seconds"], v["checks_seconds"],
                                                       nic))


def test_launched_like_nova_and_the_key_gets_in(triplet):
    assert_launched_and_logged_in(triplet["manifest"]["verify"], triplet["stderr"], 3072,
                                  "virtio-net-pci@0x3")
    assert "AMI direct kernel boot" in triplet["stderr"]
    console = triplet["dir"] / "work" / "verify" / "console.log"
    text = console.read_text(errors="replace")
    assert "zol-image %s" % NAME in text and "login:" in text
    assert "EXT4-fs (vda): resized filesystem" in text        # the guest grew its root
    assert qemu_pids(str(triplet["dir"])) == []
    left = {p.name for p in (triplet["dir"] / "work" / "verify").iterdir()}
    assert left <= {"console.log"}, left                      # overlay, drive, key deleted


def test_triplet_in_glance(triplet, glance_server):
    ids = triplet["manifest"]["glance"]
    assert ids["reused"] is False
    c = glance_server.client()
    kernel, ramdisk, root = (c.images.get(ids[r]) for r in ("kernel", "ramdisk", "root"))
    assert (kernel["disk_format"], kernel["container_format"]) == ("aki", "aki")
    assert (ramdisk["disk_format"], ramdisk["container_format"]) == ("ari", "ari")
    assert (root["disk_format"], root["container_format"]) == ("ami", "ami")
    assert root["kernel_id"] == kernel["id"] and root["ramdisk_id"] == ramdisk["id"]
    assert (root["os_distro"], root["os_version"], root["architecture"]) == \
        ("debian", "12", "x86_64")
    assert root["os_admin_user"] == "debian"
    files = triplet["manifest"]["files"]
    for img, role in ((kernel, "kernel"), (ramdisk, "ramdisk"), (root, "root")):
        assert img["status"] == "active"
        assert img["os_hash_value"] == files[role]["sha512"]
        assert img["checksum"] == files[role]["md5"]
        assert img["size"] == files[role]["size"]
        assert img["owner"] == glance_server.project_id
    data = b"".join(c.images.data(kernel["id"]))
    assert data == (triplet["dir"] / files["kernel"]["path"]).read_bytes()


def test_rerun_reuses_the_identical_triplet(triplet, glance_server):
    before = glance_images(glance_server)
    r = zol_image("upload", str(triplet["dir"]), "--glance-endpoint", glance_server.url)
    assert r.returncode == 0, r.stderr[-3000:]
    ids = json.loads(r.stdout)
    assert ids["reused"] is True
    assert {ids[k] for k in ("kernel", "ramdisk", "root")} == \
        {triplet["manifest"]["glance"][k] for k in ("kernel", "ramdisk", "root")}
    assert glance_images(glance_server) == before


@pytest.mark.parametrize("point, stage", [
    ("convert", "convert"), ("kernel", "kernel"), ("shrink", "shrink"),
    ("qemu", "verify"), ("hash", "hash"), ("manifest", "manifest"),
])
def test_failure_at_each_stage_leaves_nothing(triplet, glance_server, tmp_path, point, stage):
    images_before = glance_images(glance_server)
    out = tmp_path / "out"
    verify = point in ("qemu", "verify")
    r = zol_image("build", "--output-dir", str(out), "--name", "fail-%s" % point,
                  "--from-disk", str(triplet["disk"]), "--fail-at", point,
                  "--verify" if verify else "--no-verify", "--verify-disk-size", "1024",
                  "--glance-endpoint", glance_server.url)
    assert r.returncode == 1, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("zol-image: Stage %s failed" % stage), last
    assert "injected fault at %s" % point in last
    assert_nothing_left(out, glance_server, images_before)


def test_install_failure_names_the_missing_package(glance_server, tmp_path):
    images_before = glance_images(glance_server)
    out = tmp_path / "out"
    r = zol_image("build", "--output-dir", str(out), "--name", "badpkg", "--extra-packages",
                  "zol-no-such-package", "--glance-endpoint", glance_server.url)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("zol-image: Stage install failed"), last
    assert "zol-no-such-package" in last
    assert_nothing_left(out, glance_server, images_before)
    assert (out / "badpkg" / "mmdebstrap.log").exists()     # kept for the admin


def test_install_timeout_kills_mmdebstrap_and_unmounts(glance_server, tmp_path):
    images_before = glance_images(glance_server)
    out = tmp_path / "out"
    # Both caches off: a warm tree cache finishes the install in seconds, and the timeout
    # must hit a running mmdebstrap (a cold bootstrap takes about a minute here).
    r = zol_image("build", "--output-dir", str(out), "--name", "slow", "--install-timeout",
                  "12", "--no-tree-cache", "--no-package-cache",
                  "--glance-endpoint", glance_server.url)
    assert r.returncode == 1, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("zol-image: Stage install failed") and "12" in last, last
    assert_nothing_left(out, glance_server, images_before)
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            assert str(out) not in cmd, "process %s still running: %s" % (proc.name, cmd)


def test_default_bare_qcow2_launches_on_another_nic_slot(tmp_path):
    """--format qcow2: one BARE disk (GRUB in the MBR gap) booted by the firmware; the guest
    grows its partition and filesystem and lets the key in, with the NIC in another slot and
    no network_data.json (a plain DHCP network: the image's own fallback takes the lease)."""
    if os.environ.get("ZOL_IMAGE_SKIP_BARE"):
        pytest.skip("ZOL_IMAGE_SKIP_BARE set (saves ~6 min)")
    out = tmp_path / "out"
    r = zol_image("build", "--output-dir", str(out), "--name", "bare", "--format", "qcow2",
                  "--no-upload", "--verify-nic", "virtio-net-pci@0x9",
                  "--verify-network", "dhcp")
    assert r.returncode == 0, r.stderr[-6000:]
    m = json.loads((out / "bare" / "manifest.json").read_text())
    assert set(m["files"]) == {"disk"} and m["files"]["disk"]["path"] == "bare.qcow2"
    assert_launched_and_logged_in(m["verify"], r.stderr, 3072, "virtio-net-pci@0x9")
    assert m["verify"]["network"] == "dhcp"
    assert "BARE firmware boot" in r.stderr
    info = subprocess.run(["qemu-img", "info", "--output=json", str(out / "bare" / "bare.qcow2")],
                          capture_output=True, text=True, check=True)
    assert json.loads(info.stdout)["format"] == "qcow2"
    assert json.loads(info.stdout)["virtual-size"] == 2048 * disk.MIB   # grown to 3 GiB inside
    shutil.rmtree(out)
