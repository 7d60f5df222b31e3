"""targets/tgt.py: `tgtadm --op show` parsing (verbatim captures) and export logic."""
from __future__ import annotations

import pytest

from tests.unit.sanfixtures import capture
from tests.unit.test_zfs import Recorder, answer
from zol_driver import exception
from zol_driver.targets import tgt

PFX = "iqn.2010-10.org.openstack:"
IQN1 = PFX + "volume-11111111-1111-1111-1111-111111111111"
IQN3 = PFX + "volume-33333333-3333-3333-3333-333333333333"
DEV1 = "/dev/zvol/zol/cinder/volume-11111111-1111-1111-1111-111111111111"


def test_parse_show_verbatim_two_targets():
    targets = tgt.parse_show(capture("tgt_show_two")["stdout"])
    assert set(targets) == {IQN1, IQN3}
    t1 = targets[IQN1]
    assert t1.tid == 1
    assert t1.luns[1].backing_store == DEV1
    assert t1.luns[1].size_mb == 1074
    assert t1.luns[0].backing_store is None        # the controller LUN
    assert t1.accounts == ["user1"]
    assert t1.acls == ["ALL"]
    assert t1.sessions == 0
    t3 = targets[IQN3]
    assert t3.tid == 2 and t3.accounts == [] and t3.acls == []
    assert t3.luns[1].size_mb == 2147


def test_parse_show_empty_and_sessions():
    assert tgt.parse_show(capture("tgt_show_empty")["stdout"]) == {}
    text = capture("tgt_show")["stdout"].replace(
        "    I_T nexus information:\n",
        "    I_T nexus information:\n        I_T nexus: 3\n            Initiator: iqn.x alias: h\n"
        "            Connection: 0\n                IP Address: 10.0.2.2\n")
    assert tgt.parse_show(text)[IQN1].sessions == 1


def test_parse_accounts_verbatim():
    assert tgt.parse_accounts(capture("tgt_account_show")["stdout"]) == ["user1"]
    assert tgt.parse_accounts(capture("tgt_account_show_empty")["stdout"]) == []


@pytest.mark.parametrize("cap,cls", [
    ("err_tgt_lun_exists", exception.TargetExists),
    ("err_tgt_bind_again", exception.TargetExists),
    ("err_tgt_account_exists", exception.TargetExists),
    ("err_tgt_delete_missing", exception.TargetNotFound),
    ("err_tgt_account_delete_missing", exception.TargetNotFound),
    ("err_tgt_lun_new_missing_target", exception.TargetNotFound),
])
def test_classify_verbatim(cap, cls):
    c = capture(cap)
    err = exception.CommandFailed(command="x", exit_code=c["exit_code"], stderr=c["stderr"])
    assert type(tgt.classify(err)) is cls


def test_export_new_target_argv_and_secret_order():
    rec = Recorder([answer("tgt_show_empty"), answer("new_target")])
    adm = tgt.TgtAdm(rec, PFX)
    tid = adm.export(IQN1, DEV1, 1, tgt.Chap("user1", "Secret1234567890"))
    assert tid == 1
    assert rec.calls == [
        ["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show"],
        ["zol-wrapper", "new-target", IQN1],
        ["tgtadm", "--lld", "iscsi", "--mode", "logicalunit", "--op", "new", "--tid", "1",
         "--lun", "1", "--backing-store", DEV1],
        ["tgtadm", "--lld", "iscsi", "--mode", "account", "--op", "new", "--user", "user1",
         "--password", "Secret1234567890"],
        ["tgtadm", "--lld", "iscsi", "--mode", "account", "--op", "bind", "--tid", "1",
         "--user", "user1"],
        # the ACL last: bound earlier, it would admit logins without CHAP for a moment
        ["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "bind", "--tid", "1",
         "--initiator-address", "ALL"],
    ]


def test_export_is_idempotent_when_complete():
    rec = Recorder([answer("tgt_show")])
    tid = tgt.TgtAdm(rec, PFX).export(IQN1, DEV1, 1, tgt.Chap("user1", "Secret1234567890"))
    assert tid == 1 and len(rec.calls) == 1


def test_export_refuses_a_lun_serving_another_device():
    rec = Recorder([answer("tgt_show")])
    with pytest.raises(exception.ExportError):
        tgt.TgtAdm(rec, PFX).export(IQN1, "/dev/zvol/zol/cinder/other", 1)


def test_unexport_deletes_target_then_account_and_tolerates_absence():
    rec = Recorder([answer("tgt_show")])
    assert tgt.TgtAdm(rec, PFX).unexport(IQN1) is True
    assert rec.calls[1] == ["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "delete",
                            "--force", "--tid", "1"]
    assert rec.calls[2] == ["tgtadm", "--lld", "iscsi", "--mode", "account", "--op", "delete",
                            "--user", "user1"]
    rec = Recorder([answer("tgt_show_empty"), answer("err_tgt_account_delete_missing")])
    assert tgt.TgtAdm(rec, PFX).unexport(IQN1, chap_user="user1") is False


def test_new_target_retries_then_raises():
    rec = Recorder([(1, "", "tgtadm: boom"), (0, "7\n", "")])
    assert tgt.TgtAdm(rec, PFX, retry_interval=0).new_target(IQN1) == 7
    rec = Recorder([answer("wrapper_denied")])
    with pytest.raises(exception.WrapperDenied):
        tgt.TgtAdm(rec, PFX, retry_interval=0).new_target(IQN1)
    assert len(rec.calls) == 1


@pytest.mark.parametrize("iqn", ["iqn.2010-10.org.openstack:Volume", "iqn.other:volume-1",
                                 PFX, PFX + "-x", PFX + "a b"])
def test_iqn_validation(iqn):
    with pytest.raises(exception.InvalidName):
        tgt.TgtAdm(Recorder(), PFX).new_target(iqn)


def test_chap_validation_hides_secret():
    adm = tgt.TgtAdm(Recorder(), PFX)
    with pytest.raises(exception.InvalidValue) as ei:
        adm.new_account(tgt.Chap("user1", "short-secret!"))
    assert "short-secret" not in str(ei.value)
    assert "short-secret" not in repr(tgt.Chap("u", "short-secret"))


def test_refresh_lun_recreates_it():
    rec = Recorder([answer("tgt_show")])
    assert tgt.TgtAdm(rec, PFX).refresh_lun(IQN1, DEV1) is True
    assert [c[4:7] for c in rec.calls[1:]] == [["logicalunit", "--op", "delete"],
                                               ["logicalunit", "--op", "new"]]
