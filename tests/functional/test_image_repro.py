"""Reproducible builds: the session's bookworm triplet (test_image_build's fixture, built once)
is rebuilt here back to back, without verify, upload and tree cache (mmdebstrap runs afresh),
with the same SOURCE_DATE_EPOCH.  The root filesystem, kernel and initrd must be bit-identical,
and the second build must take every .deb from the package cache (~90 s on 2 quiet cores).
"""
from __future__ import annotations

import json

import pytest

from image_builder import repro
from tests.functional.test_image_build import NAME, triplet, zol_image  # noqa: F401 (fixture)

pytestmark = [pytest.mark.functional, pytest.mark.slow]


def _rebuild(out, epoch):
    r = zol_image("build", "--output-dir", str(out), "--name", NAME, "--no-verify",
                  "--no-upload", "--no-tree-cache", "--source-date-epoch", str(epoch))
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads((out / NAME / "manifest.json").read_text())


def test_rebuild_is_bit_identical_and_uses_the_package_cache(triplet, tmp_path):  # noqa: F811
    first = triplet["manifest"]
    first_dir = triplet["dir"]
    rep = first["repro"]
    out = tmp_path / "again"
    second = _rebuild(out, rep["source_date_epoch"])
    if second["repro"]["archive_release_dates"] != rep["archive_release_dates"]:
        # deb.debian.org is a CDN: between the session's build and this one, a suite's
        # InRelease may have moved on (seen: bookworm-security 11-30 -> 12-01 within 30 min).
        # Bit-identity is a claim about ONE archive state, so build once more and compare the
        # two rebuilds, which ran back to back.
        print("the archive changed since the session's build (%s -> %s): comparing two "
              "rebuilds instead" % (rep["archive_release_dates"],
                                    second["repro"]["archive_release_dates"]))
        first, first_dir, rep = second, out / NAME, second["repro"]
        out = tmp_path / "third"
        second = _rebuild(out, rep["source_date_epoch"])
        if second["repro"]["archive_release_dates"] != rep["archive_release_dates"]:
            pytest.fail("the archive changed twice during the test (%s -> %s): run again"
                        % (rep["archive_release_dates"],
                           second["repro"]["archive_release_dates"]), pytrace=False)
    # The first build may have come from the tree cache (a warm CI machine): then it ran no
    # mmdebstrap and downloaded nothing either.
    c1 = rep["package_cache"] or {"debs": 0, "bytes": 0}
    c2 = second["repro"]["package_cache"]
    print("package cache: first build downloaded %d .debs (%.1f MiB; tree cache %s), second "
          "%d (%.1f MiB), %d from the cache" % (
              c1["debs"], c1["bytes"] / 2**20, rep.get("tree_cache"), c2["debs"],
              c2["bytes"] / 2**20, c2["cached_debs_used"]))
    assert second["repro"]["tree_cache"] is None          # installed afresh
    assert c2["debs"] == 0 and c2["bytes"] == 0, c2
    assert c2["bytes"] <= c1["bytes"]
    assert c2["cached_debs_used"] == len(second["packages"]) > 150
    hashes = {role: (first["files"][role]["sha256"], second["files"][role]["sha256"])
              for role in ("kernel", "ramdisk", "root")}
    if any(a != b for a, b in hashes.values()):
        report = repro.compare_files(
            {role: str(first_dir / first["files"][role]["path"]) for role in hashes},
            {role: str(out / NAME / second["files"][role]["path"]) for role in hashes},
            tmp_path)
        pytest.fail("not reproducible:\n" + "\n".join(report["differences"]), pytrace=False)
    assert second["repro"]["filesystem"] == rep["filesystem"]
    assert second["timings"]["shrink"] < 1.0               # sized by mkfs: no resize2fs/fsck
