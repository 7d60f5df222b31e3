"""tools/initiatorvm: its image is cached by its own recipe hash (independent of the SAN's),
per-start material stays out of the recipe, and Cinder's portals map onto guest listeners."""
from __future__ import annotations

import copy

import pytest

from tests.plugins.initiator import load_initiatorvm_module

ivm = load_initiatorvm_module()


def test_hash_is_stable_and_distinct_from_the_san_image():
    assert ivm.recipe_hash(ivm.recipe()) == ivm.recipe_hash(ivm.recipe())
    assert ivm.recipe_hash(ivm.recipe()) != ivm.sanvm.recipe_hash(ivm.sanvm.recipe())


@pytest.mark.parametrize("mutate", [
    lambda r: r["packages"].append("vim-tiny"),
    lambda r: r["masked"].pop(),
    lambda r: r["files"]["etc/multipath.conf"].__setitem__(1, "defaults {}\n"),
    lambda r: r["steps"].pop(),
], ids=["package", "mask", "multipath-conf", "step"])
def test_hash_changes_with_the_recipe(mutate):
    rec = ivm.recipe()
    changed = copy.deepcopy(rec)
    mutate(changed)
    assert ivm.recipe_hash(changed) != ivm.recipe_hash(rec)


def test_images_of_both_kinds_live_apart(tmp_path):
    assert ivm.image_dir(tmp_path).parent == tmp_path / "initiator"
    assert ivm.sanvm.image_dir(tmp_path).parent == tmp_path / "sanvm"


def test_per_start_material_is_not_baked_in():
    """Host keys, the initiator IQN and the os-brick helper come through fw_cfg at start."""
    rec = ivm.recipe()
    assert not any("initiatorname" in f or "zol-brick" in f for f in rec["files"])
    assert any("initiatorname.iscsi" in s and "ssh_host_" in s for s in rec["steps"])
    assert ivm.initiator_name() != ivm.initiator_name()
    assert ivm.initiator_name().startswith("iqn.1993-08.org.debian:01:")


def test_provisioning_does_not_order_before_multipathd():
    """multipathd starts before local-fs-pre.target: a provisioning unit ordered after
    local-fs.target and before multipathd is a cycle systemd breaks by dropping multipathd."""
    unit = ivm.GUEST_FILES["etc/systemd/system/zol-provision.service"][1]
    before = next(line for line in unit.splitlines() if line.startswith("Before="))
    assert "multipathd" not in before and "After=systemd-modules-load.service local-fs" in unit


def test_multipath_is_configured_like_an_os_brick_compute_node():
    conf = ivm.MULTIPATH_CONF
    for line in ("user_friendly_names no", "find_multipaths no", "no_path_retry queue",
                 'vendor "IET"'):
        assert line in conf


def test_portals_map_onto_guest_listeners_to_the_host():
    fwd = ivm.portal_forwards(["127.0.0.1:3260", "127.0.0.2:3260"])
    assert [(f["listen"], f["port"], f["to"]) for f in fwd] == [
        ("127.0.0.1", 3260, "10.0.2.2:3260"), ("127.0.0.2", 3260, "10.0.2.2:3260")]
    assert ivm.forward_unit(fwd[1]) == "zol-portal-127-0-0-2-3260"


@pytest.mark.parametrize("portal", ["10.0.0.5:3260", "127.0.0.1", "[::1]:3260", ":3260"])
def test_portals_the_guest_cannot_mirror_are_refused(portal):
    with pytest.raises(ivm.SanVMError, match="portal"):
        ivm.portal_forwards([portal])
