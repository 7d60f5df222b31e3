"""The FakeSan answers exactly like the real SAN VM did (verbatim captures)."""
from __future__ import annotations

import pytest

from tests.unit.fakesan import FakeSan
from tests.unit.sanfixtures import capture

P = "zol/cinder"
V1 = P + "/volume-11111111-1111-1111-1111-111111111111"
V3 = P + "/volume-33333333-3333-3333-3333-333333333333"
S1 = V1 + "@snapshot-aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa"
S2 = V1 + "@snapshot-bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb"
IQN1 = "iqn.2010-10.org.openstack:" + V1.rpartition("/")[2]


@pytest.fixture
def san():
    """A FakeSan in the state capture.py builds before capturing."""
    s = FakeSan()
    s.execute(["zfs", "create", "-s", "-V", str(1 << 30), V1])
    s.execute(["zfs", "create", "-s", "-b", "16384", "-V", str(2 << 30), V3])
    s.execute(["zfs", "snapshot", S1])
    s.execute(["zfs", "snapshot", S2])
    s.execute(["zfs", "clone", S1, P + "/volume-clone"])
    for kv in ("zol:iqn=" + IQN1, "zol:lun=1", "zol:initiators=ALL",
               "zol:chap=user1:Secret1234567890"):
        s.execute(["zfs", "set", kv, V1])
    return s


@pytest.mark.parametrize("name", [
    "zol_wrapper_version", "err_list_missing", "err_get_missing", "err_destroy_missing",
    "err_destroy_missing_snap", "err_destroy_d_missing_snap", "err_create_exists",
    "err_destroy_has_clones", "err_destroy_has_children", "err_rollback_not_latest",
    "err_snapshot_exists", "err_clone_missing_snap", "list_tree", "wait_zvol",
    "wait_zvol_missing", "new_target", "zfs_version",
])
def test_same_answer_as_the_real_san(san, name):
    c = capture(name)
    res = san.execute(c["argv"], check=False)
    assert (res.exit_code, res.stdout, res.stderr) == (c["exit_code"], c["stdout"],
                                                       c["stderr"])


def test_tgt_show_identical(san):
    for name in ("new_target", "tgt_new_lun", "tgt_bind_all", "tgt_account_new",
                 "tgt_account_bind"):
        assert san.execute(capture(name)["argv"]).exit_code == 0
    for name in ("tgt_show", "tgt_account_show", "err_tgt_lun_exists", "err_tgt_bind_again",
                 "err_tgt_account_exists", "err_tgt_delete_missing",
                 "err_tgt_account_delete_missing", "err_tgt_lun_new_missing_target"):
        c = capture(name)
        res = san.execute(c["argv"], check=False)
        assert (res.exit_code, res.stdout, res.stderr) == (c["exit_code"], c["stdout"],
                                                           c["stderr"]), name
