"""`--release trixie`: the other supported release builds images a cloud user can launch.

Upload is covered by the bookworm build (same code path); this proves the release-specific
parts: the trixie mirror suites, its cloud kernel (6.12), initramfs, cloud-init 25 and
systemd 257, launched the nova way (AMI and BARE) and logged into with a fresh key.
"""
from __future__ import annotations

import json
import os

import pytest

from image_builder import disk
from tests.functional.test_image_build import assert_launched_and_logged_in, zol_image

pytestmark = [pytest.mark.functional, pytest.mark.slow]


_BUILT: dict[str, dict] = {}    # test_image_publish uploads this build later (from its manifest)


@pytest.fixture(scope="session")
def trixie_build(tmp_path_factory):
    """One trixie triplet per session, built without upload."""
    if "trixie" not in _BUILT:
        out = tmp_path_factory.mktemp("trixie")
        r = zol_image("build", "--release", "trixie", "--no-upload", "--name", "zol-func-trixie",
                      "--output-dir", str(out))
        _BUILT["trixie"] = {"r": r, "dir": out / "zol-func-trixie"}
    return _BUILT["trixie"]


def test_trixie_triplet_builds_and_launches(trixie_build):
    r = trixie_build["r"]
    tmp_path = trixie_build["dir"].parent
    assert r.returncode == 0, "zol-image build --release trixie failed:\n" + r.stderr[-6000:]
    manifest = json.loads((tmp_path / "zol-func-trixie" / "manifest.json").read_text())
    assert manifest["kernel_version"].startswith("6.12."), manifest["kernel_version"]
    assert_launched_and_logged_in(manifest["verify"], r.stderr, 3072, "virtio-net-pci@0x3")
    root = tmp_path / "zol-func-trixie" / manifest["files"]["root"]["path"]
    info = disk.fs_info(root)
    assert (info.size - info.used) / info.used <= 0.15, "root fs not shrunk to within 15 %"
    assert info.block_size == 4096
    assert "trixie-security" in disk.read_text(root, "/etc/apt/sources.list")


def test_trixie_bare_qcow2_launches(tmp_path):
    if os.environ.get("ZOL_IMAGE_SKIP_BARE"):
        pytest.skip("ZOL_IMAGE_SKIP_BARE set (saves ~6 min)")
    r = zol_image("build", "--release", "trixie", "--format", "qcow2", "--no-upload",
                  "--name", "zol-func-trixie-bare", "--output-dir", str(tmp_path))
    assert r.returncode == 0, "trixie BARE build failed:\n" + r.stderr[-6000:]
    manifest = json.loads((tmp_path / "zol-func-trixie-bare" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"disk"}
    assert_launched_and_logged_in(manifest["verify"], r.stderr, 3072, "virtio-net-pci@0x3")
    assert "BARE firmware boot" in r.stderr


def test_trixie_check_repro_is_bit_identical(trixie_build, tmp_path):
    """`zol-image build --check-repro` on trixie (issue 14's done-when names both releases;
    the bookworm pair is test_image_repro).  After the session's trixie build the package
    cache is warm: the first build comes from the tree cache, the second installs afresh."""
    assert trixie_build["r"].returncode == 0, "the session's trixie build failed"
    name = "zol-func-trixie-repro"
    r = zol_image("build", "--release", "trixie", "--check-repro", "--no-upload", "--no-verify",
                  "--name", name, "--output-dir", str(tmp_path))
    report_path = tmp_path / name / "repro-check.json"
    assert report_path.exists(), r.stderr[-6000:]
    report = json.loads(report_path.read_text())
    print("trixie --check-repro: %s; seconds %s" % (
        ", ".join("%s %s" % (role, h["first"][:12]) for role, h in report["files"].items()),
        report["seconds"]))
    assert report["identical"], "\n".join(report["differences"])
    assert r.returncode == 0, r.stderr[-4000:]
    assert set(report["files"]) == {"kernel", "ramdisk", "root"}
    assert not (tmp_path / (".repro-" + name)).exists()      # identical: the copy is gone
