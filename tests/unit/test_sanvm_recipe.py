"""The SAN VM image cache is keyed by a content hash of its recipe: it must change when the
recipe changes, and only then (a wrapper change must not force a 25-minute rebuild)."""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest

from tests.plugins.sanvm import REPO, load_sanvm_module

sanvm = load_sanvm_module()


def test_hash_is_stable_for_the_same_recipe():
    assert sanvm.recipe_hash(sanvm.recipe()) == sanvm.recipe_hash(sanvm.recipe())


def test_hash_ignores_dict_order():
    rec = sanvm.recipe()
    reordered = dict(reversed(list(rec.items())))
    assert sanvm.recipe_hash(reordered) == sanvm.recipe_hash(rec)


@pytest.mark.parametrize("mutate", [
    lambda r: r["packages"].append("vim-tiny"),
    lambda r: r["zfs_packages"].remove("zfs-dkms"),
    lambda r: r.__setitem__("release", "trixie"),
    lambda r: r.__setitem__("image_size", "5G"),
    lambda r: r["masked"].pop(),
    lambda r: r["files"]["etc/hostname"].__setitem__(1, "other\n"),
    lambda r: r["files"]["usr/local/sbin/zol-pool-up"].__setitem__(0, 0o700),
    lambda r: r["steps"].insert(-1, 'chroot "$1" apt-get install -y vim-tiny'),
    lambda r: r["steps"].remove(next(x for x in r["steps"] if "update-initramfs" in x)),
], ids=["package", "zfs-package", "release", "size", "mask", "file-content", "file-mode",
        "extra-step", "dropped-step"])
def test_hash_changes_with_each_part_of_the_recipe(mutate):
    rec = sanvm.recipe()
    changed = copy.deepcopy(rec)
    mutate(changed)
    assert sanvm.recipe_hash(changed) != sanvm.recipe_hash(rec)


def _repo_copy(tmp_path: Path) -> Path:
    (tmp_path / "wrappers").mkdir()
    shutil.copy(REPO / "wrappers" / "tgt-zol-restore.conf", tmp_path / "wrappers")
    shutil.copytree(REPO / "tools" / "sanvm.d", tmp_path / "tools" / "sanvm.d")
    return tmp_path


def test_tgt_drop_in_is_part_of_the_recipe(tmp_path):
    repo = _repo_copy(tmp_path)
    before = sanvm.recipe_hash(sanvm.recipe(repo))
    with open(repo / "wrappers" / "tgt-zol-restore.conf", "a") as f:
        f.write("# changed\n")
    assert sanvm.recipe_hash(sanvm.recipe(repo)) != before


@pytest.mark.parametrize("name", ["tgt-blkdiscard.patch", "build-tgt.sh"])
def test_tgt_patch_and_build_script_are_part_of_the_recipe(tmp_path, name):
    """The image's patched tgt is rebuilt when its patch or build script changes."""
    repo = _repo_copy(tmp_path)
    before = sanvm.recipe_hash(sanvm.recipe(repo))
    with open(repo / "tools" / "sanvm.d" / name, "a") as f:
        f.write("\n")
    assert sanvm.recipe_hash(sanvm.recipe(repo)) != before


def test_tgt_patch_names_upstream_and_patches_unmap():
    patch = (REPO / "tools" / "sanvm.d" / "tgt-blkdiscard.patch").read_text()
    assert "fa97d3df9d476c410a9a5a4ade357d8e7f67b23a" in patch.split("\n---\n")[0]
    assert "+++ b/usr/util.h" in patch and "BLKDISCARD" in patch
    steps = sanvm.recipe()["steps"]
    assert any("build-tgt.sh" in s for s in steps)


def test_wrapper_script_is_not_part_of_the_recipe(tmp_path):
    """The wrapper is copied in at start through fw_cfg: editing it must reuse the cache."""
    repo = _repo_copy(tmp_path)
    before = sanvm.recipe_hash(sanvm.recipe(repo))
    (repo / "wrappers" / "zol-ssh-wrapper").write_text("#!/usr/bin/python3\nprint('v2')\n")
    assert sanvm.recipe_hash(sanvm.recipe(repo)) == before


def test_cache_dir_is_named_by_the_hash(tmp_path):
    rec = sanvm.recipe()
    assert sanvm.image_dir(tmp_path, rec).name == "image-" + sanvm.recipe_hash(rec)


def test_a_new_build_prunes_images_of_older_recipes_only(tmp_path):
    """Older images go, except the newest other one (a checkout without the new recipe still
    starts) and any image a live VM boots from (per its run dir's state.json)."""
    import json
    import os
    import time
    base = tmp_path / "sanvm"
    for age, name in enumerate(("image-new", "image-prev", "image-old", "image-used")):
        (base / name).mkdir(parents=True)
        os.utime(base / name, (time.time() - 100 * age,) * 2)
    (base / "run" / "vm-live").mkdir(parents=True)
    (base / "run" / "vm-live" / "state.json").write_text(json.dumps(
        {"pid": os.getpid(), "image": str(base / "image-used")}))
    (base / "run" / "vm-dead").mkdir(parents=True)
    (base / "run" / "vm-dead" / "state.json").write_text(json.dumps(
        {"pid": 2 ** 22 + 1, "image": str(base / "image-old")}))
    sanvm.prune(tmp_path, keep=base / "image-new")
    assert sorted(p.name for p in base.iterdir()) == ["image-new", "image-prev", "image-used",
                                                      "run"]
    sanvm.prune(tmp_path, keep=base / "image-new", spare=0)
    assert sorted(p.name for p in base.iterdir()) == ["image-new", "image-used", "run"]
