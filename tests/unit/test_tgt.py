"""targets/tgt.py: argv of the export verbs, secrets on stdin, show-exports parsing, errors."""
from __future__ import annotations

import json

import pytest

from tests.helpers.fakesan import load_wrapper
from tests.unit.sanfixtures import capture
from zol_driver import exception, ssh
from zol_driver.targets import tgt

PFX = "iqn.2010-10.org.openstack:"
IQN = PFX + "volume-1"
DS = "zol/cinder/volume-1"
SECRET = "Zq8Rk2Lm9Pw4Xt7Y"


class Rec:
    host = "rec"

    def __init__(self, answers=None):
        self.calls = []
        self.answers = list(answers or [])

    def execute(self, argv, check=True, timeout=None, stdin=None):
        self.calls.append((list(argv), stdin))
        code, out, err = self.answers.pop(0) if self.answers else (
            0, "tid=3 iqn=x lun=1 unmap=yes\n", "")
        return ssh.check_result(ssh.Result(tuple(argv), code, out, err), self.host) \
            if check else ssh.Result(tuple(argv), code, out, err)

    def close(self):
        pass


def test_export_argv_and_secret_on_stdin():
    rec = Rec()
    t = tgt.TgtAdm(rec, PFX)
    tid = t.export(DS, IQN, "1111-2222", chap=tgt.Chap("u1", SECRET),
                   initiators=["10.0.0.5", "2001:db8::7"], thin=False, unmap=True,
                   write_cache=False)
    assert tid == tgt.Export(3, True)
    (argv, stdin), = rec.calls
    assert argv == ["zol-wrapper", "export", DS, IQN, "1", "1111-2222", "thick", "wc-off",
                    "chap", "10.0.0.5,2001:db8::7"]
    assert stdin == f"u1 {SECRET}\n" and SECRET not in " ".join(argv)
    assert SECRET not in repr(tgt.Chap("u1", SECRET))
    rec.calls.clear()
    t.export(DS, IQN, "1111-2222")
    t.export(DS, IQN, "1111-2222", unmap=True)
    assert [c[0][6] for c in rec.calls] == ["thin", "thin-unmap"]
    assert rec.calls[0] == (["zol-wrapper", "export", DS, IQN, "1", "1111-2222", "thin", "wc-on",
                             "none", "ALL"], None)


def test_export_retries_transient_errors_not_conflicts():
    busy = (68, "", "zol-ssh-wrapper: export: tgtd: new LUN 1: this logical unit is still "
                    "active\n")
    rec = Rec([busy, busy, (0, "tid=7 iqn=x lun=1 unmap=no\n", "")])
    t = tgt.TgtAdm(rec, PFX, retries=3, retry_interval=0)
    assert t.export(DS, IQN, "s") == tgt.Export(7, False) and len(rec.calls) == 3
    conflict = (68, "", "zol-ssh-wrapper: export: target x (tid 1) already serves /dev/sda\n")
    rec = Rec([conflict])
    with pytest.raises(exception.TargetConflict):
        tgt.TgtAdm(rec, PFX, retries=3, retry_interval=0).export(DS, IQN, "s")
    assert len(rec.calls) == 1
    rec = Rec([(64, "", "zol-ssh-wrapper: denied: x\n")])
    with pytest.raises(exception.WrapperDenied):
        tgt.TgtAdm(rec, PFX, retries=3, retry_interval=0).export(DS, IQN, "s")
    rec = Rec([(0, "garbage\n", "")])
    with pytest.raises(exception.ParseError):
        tgt.TgtAdm(rec, PFX).export(DS, IQN, "s")


def test_unexport_and_resize():
    rec = Rec([(0, "removed tid=1 iqn=x\n", ""), (0, "absent iqn=x\n", ""),
               (0, "resized tid=1 iqn=x lun=1 size_mb=2147\n", ""),
               (68, "", f"zol-ssh-wrapper: resize-lun: target {IQN} is not exported\n")])
    t = tgt.TgtAdm(rec, PFX)
    assert t.unexport(IQN) is True and t.unexport(IQN) is False
    assert t.resize_lun(IQN) is True and t.resize_lun(IQN) is False
    assert [c[0] for c in rec.calls] == [["zol-wrapper", "unexport", IQN]] * 2 + [
        ["zol-wrapper", "resize-lun", IQN]] * 2


@pytest.mark.parametrize("bad", ["iqn.2010-10.org.openstack:Volume", "iqn.other:volume-1",
                                 "iqn.2010-10.org.openstack:", "iqn.2010-10.org.openstack:-x",
                                 "iqn.2010-10.org.openstack:a b"])
def test_iqn_validation(bad):
    with pytest.raises(exception.InvalidName):
        tgt.TgtAdm(Rec(), PFX).check_iqn(bad)


def test_values_validated_before_anything_is_sent():
    rec = Rec()
    t = tgt.TgtAdm(rec, PFX)
    for kwargs in ({"chap": tgt.Chap("u1", "short")}, {"chap": tgt.Chap("-u", SECRET)},
                   {"initiators": ["10.0.0.0/8"]}, {"initiators": ["ALL", "10.0.0.1"]},
                   {"initiators": ["10.0.0.1", "10.0.0.1"]}, {"lun": 0}):
        with pytest.raises(exception.InvalidValue) as ei:
            t.export(DS, IQN, "serial", **kwargs)
        assert SECRET not in str(ei.value)
    with pytest.raises(exception.InvalidValue):
        t.export(DS, IQN, "x" * 37)
    assert rec.calls == []


def test_parse_exports_of_the_real_wrapper_on_the_real_show_capture():
    """show-exports = the wrapper's parse of tgtd's list (captured on the SAN VM) as JSON;
    parse_exports reads it back."""
    w = load_wrapper()
    text = capture("tgt_show_two")["stdout"]
    parsed = w.parse_show(text)
    assert len(parsed) == 2
    lines = [json.dumps({"tid": t["tid"], "iqn": iqn, "luns": [
        {"lun": n, "path": lu["path"], "scsi_id": lu["scsi_id"], "thin": lu["thin"],
         "size_mb": lu["size_mb"]} for n, lu in t["luns"].items() if n],
        "accounts": t["accounts"], "acls": t["acls"], "sessions": t["sessions"],
        "recorded": True}) for iqn, t in parsed.items()]
    out = tgt.parse_exports("\n".join(lines) + "\n")
    assert set(out) == set(parsed)
    for iqn, t in out.items():
        assert t.tid == parsed[iqn]["tid"] and t.acls == parsed[iqn]["acls"]
        assert all(lu.backing_store and lu.backing_store.startswith("/dev/zvol/")
                   for lu in t.luns.values())
    assert tgt.parse_exports("") == {}
    with pytest.raises(exception.ParseError):
        tgt.parse_exports('{"tid": 1}\n')


@pytest.mark.parametrize("stderr,cls", [
    ("zol-ssh-wrapper: resize-lun: target x is not exported", exception.TargetNotFound),
    ("zol-ssh-wrapper: export: CHAP account a exists on tgtd but was not created by "
     "zol-ssh-wrapper: it is not ours to bind", exception.TargetConflict),
    ("zol-ssh-wrapper: export: zol/cinder/a is already exported as iqn.x",
     exception.TargetConflict),
    ("zol-ssh-wrapper: export: tgtd: new target x: this target already exists",
     exception.TargetExists),
    ("zol-ssh-wrapper: unexport: tgtd: show targets: [Errno 111] Connection refused",
     exception.TargetError),
])
def test_classify(stderr, cls):
    err = exception.CommandFailed(command="x", exit_code=68, stderr=stderr)
    assert type(tgt.classify(err)) is cls
