"""Volume types as ZFS policy: extra-spec validation and the retype decision table."""
from __future__ import annotations

import pytest

from zol_driver import policy
from zol_driver.policy import Policy, PolicyError, plan_retype

DB = {"zol:compression": "zstd", "zol:volblocksize": "16K", "zol:sync": "always",
      "provisioning:type": "thick", "volume_backend_name": "zol-thin"}
SCRATCH = {"zol:compression": "lz4", "zol:volblocksize": "128K", "zol:sync": "disabled",
           "provisioning:type": "thin"}


def test_db_and_scratch_types():
    db = policy.parse("db", DB)
    assert db == Policy({"compression": "zstd", "sync": "always"}, 16384, False)
    scratch = policy.parse("scratch", SCRATCH)
    assert scratch == Policy({"compression": "lz4", "sync": "disabled"}, 131072, True)
    assert db.metadata(False) == {"zol:compression": "zstd", "zol:sync": "always",
                                  "zol:volblocksize": "16384", "zol:provisioning": "thick"}


@pytest.mark.parametrize("specs", [
    {}, None, {"volume_backend_name": "x", "multiattach": "<is> True",
               "thin_provisioning_support": "<is> True", "RESKEY:availability_zones": "a"}])
def test_cinders_own_keys_are_ignored(specs):
    assert policy.parse("plain", specs) == Policy()


@pytest.mark.parametrize("raw,value", [("4K", 4096), ("4k", 4096), ("128K", 131072),
                                       ("8192", 8192), (" 64K ", 65536)])
def test_volblocksize_spellings(raw, value):
    assert policy.parse("t", {"zol:volblocksize": raw}).volblocksize == value


def test_every_allowed_value_parses_and_case_is_folded():
    for name, values in policy.ZPROPS.items():
        for v in values:
            assert policy.parse("t", {"zol:" + name: v.upper()}).props == {name: v}


@pytest.mark.parametrize("key,value,allowed", [
    ("zol:compression", "zstd-20", "zstd-19"),
    ("zol:compression", "gzip-0", "gzip-9"),
    ("zol:sync", "sometimes", "standard, always, disabled"),
    ("zol:volblocksize", "256K", "4K, 8K, 16K, 32K, 64K, 128K"),
    ("zol:volblocksize", "1000", "4K"),
    ("zol:copies", "4", "1, 2, 3"),
    ("zol:checksum", "off", "fletcher4"),
    ("zol:dedup", "sha256;rm -rf", "sha256,verify"),
    ("zol:mountpoint", "/etc", "zol:compression"),
    ("zol:compresion", "lz4", "(no such key)"),
    ("provisioning:type", "fat", "thin, thick"),
])
def test_bad_specs_name_type_key_and_allowed_values(key, value, allowed):
    with pytest.raises(PolicyError) as ei:
        policy.parse("db", {key: value})
    msg = str(ei.value)
    assert "volume type 'db'" in msg and key in msg and repr(value) in msg
    assert allowed in msg and "allowed values" in msg


# -- the retype decision table -----------------------------------------------------------------

P = Policy
ROWS = [
    # old, new, default_thin, current bs, kw -> kind, set, inherit, thick
    (P(), P(), True, 8192, {}, "none", {}, (), None),
    (P({"compression": "lz4"}), P({"compression": "zstd"}), True, 8192, {},
     "in-place", {"compression": "zstd"}, (), None),
    (P({"compression": "lz4", "sync": "always"}), P({"compression": "lz4"}), True, 8192, {},
     "in-place", {}, ("sync",), None),
    (P(thin=True), P(thin=False), True, 8192, {}, "in-place", {}, (), True),
    (P(thin=False), P(thin=True), True, 8192, {}, "in-place", {}, (), False),
    (P(), P(thin=False), False, 8192, {}, "none", {}, (), None),     # thick backend already
    (P(), P(thin=False), True, 8192, {}, "in-place", {}, (), True),
    # same volblocksize as the zvol has: nothing to copy
    (P(volblocksize=16384), P({"sync": "always"}, 16384), True, 16384, {},
     "in-place", {"sync": "always"}, (), None),
    (P(volblocksize=16384), P(volblocksize=131072), True, 16384, {}, "copy", {}, (), False),
    (P(volblocksize=16384), P(volblocksize=131072), True, 16384, {"has_snapshots": True},
     "migrate", {}, (), None),
    (P(volblocksize=16384), P(volblocksize=131072), True, 16384, {"attached": True},
     "migrate", {}, (), None),
    (P(volblocksize=16384), P(volblocksize=131072), True, 16384, {"copy_allowed": False},
     "migrate", {}, (), None),
    (P(), P({"compression": "lz4"}), True, 8192, {"same_backend": False},
     "migrate", {}, (), None),
    # snapshots do not matter for changeable properties
    (P({"compression": "lz4"}), P({"compression": "off"}, thin=False), True, 8192,
     {"has_snapshots": True, "attached": True}, "in-place", {"compression": "off"}, (), True),
]


@pytest.mark.parametrize("old,new,default_thin,bs,kw,kind,set_,inherit,thick", ROWS)
def test_retype_decision_table(old, new, default_thin, bs, kw, kind, set_, inherit, thick):
    plan = plan_retype(old, new, default_thin, bs, **kw)
    assert plan.kind == kind, plan
    if kind == "in-place":
        assert dict(plan.set) == set_ and plan.inherit == inherit and plan.thick == thick
    if kind == "copy":
        assert plan.thick is thick and dict(plan.set) == dict(new.props)
    if kind == "migrate":
        assert plan.reason


def test_db_to_scratch_is_a_copy_and_back():
    db, scratch = policy.parse("db", DB), policy.parse("scratch", SCRATCH)
    there = plan_retype(db, scratch, True, 16384)
    assert there.kind == "copy" and there.thick is False
    back = plan_retype(scratch, db, True, 131072)
    assert back.kind == "copy" and back.thick is True
