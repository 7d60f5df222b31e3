"""The FakeSan answers exactly like the real SAN VM did (verbatim captures)."""
from __future__ import annotations

import pytest

from tests.helpers.faketgtd import (MODE_ACCOUNT, MODE_DEVICE, MODE_TARGET, OP_BIND, OP_NEW,
                                    FakeTgtd)
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
    "err_list_missing", "err_get_missing", "err_destroy_missing",
    "err_destroy_missing_snap", "err_destroy_d_missing_snap", "err_create_exists",
    "err_destroy_has_clones", "err_destroy_has_children", "err_rollback_not_latest",
    "err_snapshot_exists", "err_clone_missing_snap", "list_tree", "wait_zvol",
    "wait_zvol_missing", "zfs_version",
])
def test_same_answer_as_the_real_san(san, name):
    c = capture(name)
    res = san.execute(c["argv"], check=False)
    assert (res.exit_code, res.stdout, res.stderr) == (c["exit_code"], c["stdout"],
                                                       c["stderr"])


def test_faketgtd_show_identical_to_real_tgtd():
    """FakeTgtd's target and account lists are byte for byte what tgtd 1.0.85 printed on the
    SAN VM for the same state (the wrapper parses this text)."""
    path = "/dev/zvol/" + V1
    t = FakeTgtd(size_of=lambda p: (1 << 30) if p == path else None)
    assert t.handle(MODE_TARGET, OP_NEW, 1, 0, "targetname=" + IQN1) == (0, "")
    assert t.handle(MODE_DEVICE, OP_NEW, 1, 1, "path=" + path) == (0, "")
    assert t.handle(MODE_TARGET, OP_BIND, 1, 0, "initiator-address=ALL") == (0, "")
    assert t.handle(MODE_ACCOUNT, OP_NEW, -1, 0, "user=user1,password=Secret1234567890") == (
        0, "")
    assert t.handle(MODE_ACCOUNT, OP_BIND, 1, 0, "user=user1") == (0, "")
    assert t.show_text() == capture("tgt_show")["stdout"]
    assert t.handle(MODE_ACCOUNT, 2, -1, 0, "")[1] == capture("tgt_account_show")["stdout"]
    # and the errors tgtd answered then (tgtadm printed them from these codes)
    assert t.handle(MODE_DEVICE, OP_NEW, 1, 1, "path=" + path)[0] == 10
    assert t.handle(MODE_TARGET, OP_BIND, 1, 0, "initiator-address=ALL")[0] == 12
    assert t.handle(MODE_ACCOUNT, OP_NEW, -1, 0, "user=user1,password=x")[0] == 14
    assert t.handle(MODE_TARGET, 1, 9, 0, "")[0] == 4
    assert t.handle(MODE_ACCOUNT, 1, -1, 0, "user=nobody")[0] == 15
    assert t.handle(MODE_DEVICE, OP_NEW, 9, 1, "path=" + path)[0] == 4


@pytest.mark.parametrize("name,code", [
    ("err_tgt_lun_exists", 10), ("err_tgt_bind_again", 12), ("err_tgt_account_exists", 14),
    ("err_tgt_delete_missing", 4), ("err_tgt_account_delete_missing", 15),
    ("err_tgt_lun_new_missing_target", 4)])
def test_wrapper_error_texts_are_tgtadms(name, code):
    """The wrapper names tgtd's error codes with tgtadm's own words (usr/tgtadm.c)."""
    from tests.helpers.fakesan import load_wrapper
    w = load_wrapper()
    assert capture(name)["stderr"] == f"tgtadm: {w.TGTADM_ERRORS[code]}\n"
