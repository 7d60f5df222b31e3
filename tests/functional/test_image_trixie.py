"""`--release trixie`: the other supported release builds a triplet that boots the nova way.

Upload is covered by the bookworm build (same code path); this proves the release-specific
parts: the trixie mirror suites, its cloud kernel (6.12) and initramfs, and the verify boot.
"""
from __future__ import annotations

import json

from image_builder import disk
from tests.functional.test_image_build import zol_image


def test_trixie_triplet_builds_and_boots(tmp_path):
    r = zol_image("build", "--release", "trixie", "--no-upload", "--name", "zol-func-trixie",
                  "--output-dir", str(tmp_path))
    assert r.returncode == 0, "zol-image build --release trixie failed:\n" + r.stderr[-6000:]
    manifest = json.loads((tmp_path / "zol-func-trixie" / "manifest.json").read_text())
    assert manifest["kernel_version"].startswith("6.12."), manifest["kernel_version"]
    assert "verify" in manifest["timings"], "the triplet was not boot-verified"
    assert "verify: marker 'zol-image zol-func-trixie'" in r.stderr
    info = disk.fs_info(tmp_path / "zol-func-trixie" / manifest["files"]["root"]["path"])
    assert (info.size - info.used) / info.used <= 0.15, "root fs not shrunk to within 15 %"
