"""zfs.py: parsers against verbatim SAN output, argv builders against the protocol grammar."""
from __future__ import annotations

import pytest

from tests.unit.sanfixtures import capture
from zol_driver import exception, zfs
from zol_driver.ssh import Result

P = "zol/cinder"
V1 = P + "/volume-11111111-1111-1111-1111-111111111111"
LIST_PROPS = capture("list_tree")["argv"][5].split(",")


class Recorder:
    """An executor that records argv and answers from a queue of Results."""

    host = "recorder"

    def __init__(self, answers=None):
        self.calls: list[list[str]] = []
        self.answers = list(answers or [])

    def execute(self, argv, check=True, timeout=None, stdin=None):
        self.calls.append(list(argv))
        code, out, err = self.answers.pop(0) if self.answers else (0, "", "")
        from zol_driver.ssh import check_result
        res = Result(tuple(argv), code, out, err)
        return check_result(res, self.host) if check else res

    def close(self):
        pass


def answer(name):
    c = capture(name)
    return (c["exit_code"], c["stdout"], c["stderr"])


def test_parse_list_tree_verbatim():
    rows = zfs.parse_list(capture("list_tree")["stdout"], LIST_PROPS)
    assert [r["type"] for r in rows] == ["volume", "snapshot", "snapshot"]
    vol = rows[0]
    assert vol["name"] == V1
    assert vol["volsize"] == 1073741824 and isinstance(vol["used"], int)
    assert vol["refreservation"] == 0          # sparse: 0, not None
    assert vol["origin"] is None and vol["clones"] is None
    assert vol["zol:deleted"] is None
    assert rows[1]["clones"] == P + "/volume-clone"
    assert rows[1]["defer_destroy"] == "off"


def test_parse_list_thick_has_refreservation():
    row = zfs.parse_list(capture("list_one_thick")["stdout"], LIST_PROPS)[0]
    assert row["refreservation"] > row["volsize"]


def test_parse_list_wrong_field_count_is_an_error():
    with pytest.raises(exception.ParseError):
        zfs.parse_list("a\tb\n", ["name"])


def test_parse_get_verbatim():
    c = capture("get_props")
    props = zfs.parse_get(c["stdout"])
    (name,) = props
    assert props[name]["volsize"] == 2147483648
    assert props[name]["volblocksize"] == 16384
    assert props[name]["zol:iqn"] is None


@pytest.mark.parametrize("cap,cls", [
    ("err_list_missing", exception.DatasetNotFound),
    ("err_destroy_missing", exception.DatasetNotFound),
    ("err_destroy_missing_snap", exception.DatasetNotFound),
    ("err_create_exists", exception.DatasetExists),
    ("err_snapshot_exists", exception.DatasetExists),
    ("err_destroy_has_clones", exception.DatasetHasClones),
    ("err_destroy_has_children", exception.DatasetHasChildren),
    ("err_rollback_not_latest", exception.NotMostRecentSnapshot),
    ("err_destroy_busy", exception.DatasetBusy),
    ("wrapper_denied", exception.WrapperDenied),
])
def test_classify_verbatim_errors(cap, cls):
    c = capture(cap)
    err = exception.CommandFailed(command="x", exit_code=c["exit_code"], stderr=c["stderr"])
    if cls is exception.WrapperDenied:
        err = exception.WrapperDenied(command="x", exit_code=c["exit_code"], stderr=c["stderr"])
    assert type(zfs.classify(err)) is cls


def test_names_are_confined_to_the_parent():
    z = zfs.ZfsClient(Recorder(), P)
    for bad in ["zol/other/volume-1", "zol/cinder/a/b", "zol/cinder/-r", "zol/cinder/.x",
                "zol/cinder/a b", "zol/cinder", "zol/cinder/v@", "zol/cinder/v@s@t",
                "zol/cinder/v;rm"]:
        with pytest.raises(exception.InvalidName):
            z.create_volume(bad, 1 << 30)
    with pytest.raises(exception.InvalidName):
        z.destroy(P)
    with pytest.raises(exception.ConfigError):
        zfs.ZfsClient(Recorder(), "zol//x")


def test_create_argv_forms():
    rec = Recorder()
    z = zfs.ZfsClient(rec, P)
    z.create_volume(V1, 1 << 30, sparse=True)
    z.create_volume(V1, 1 << 30, sparse=False, blocksize=16384)
    assert rec.calls == [["zfs", "create", "-s", "-V", "1073741824", V1],
                         ["zfs", "create", "-b", "16384", "-V", "1073741824", V1]]
    with pytest.raises(exception.InvalidValue):
        z.create_volume(V1, 1000)
    with pytest.raises(exception.InvalidValue):
        z.create_volume(V1, 1 << 30, blocksize=1000)


def test_destroy_missing_is_false_and_busy_is_retried():
    rec = Recorder([answer("err_destroy_missing")])
    assert zfs.ZfsClient(rec, P).destroy(V1) is False
    rec = Recorder([answer("err_destroy_busy"), answer("err_destroy_busy"), (0, "", "")])
    assert zfs.ZfsClient(rec, P, busy_interval=0).destroy(V1) is True
    assert len(rec.calls) == 3
    rec = Recorder([answer("err_destroy_busy")] * 3)
    with pytest.raises(exception.DatasetBusy):
        zfs.ZfsClient(rec, P, busy_retries=2, busy_interval=0).destroy(V1)


def test_deferred_destroy_only_for_snapshots():
    rec = Recorder()
    z = zfs.ZfsClient(rec, P)
    z.destroy(V1 + "@snapshot-x", deferred=True)
    assert rec.calls == [["zfs", "destroy", "-d", V1 + "@snapshot-x"]]
    with pytest.raises(exception.InvalidValue):
        z.destroy(V1, deferred=True)


def test_info_none_when_missing():
    rec = Recorder([answer("err_list_missing")])
    assert zfs.ZfsClient(rec, P).info(V1) is None


def test_tree_and_inventory_argv():
    # protocol 2 reads no export state from zfs properties
    with pytest.raises(exception.InvalidValue, match="zol:chap"):
        zfs.ZfsClient(Recorder(), P).tree(V1, LIST_PROPS + ["zol:chap"])
    cols = [c for c in LIST_PROPS if c in zfs.VOLUME_PROPS]
    keep = [LIST_PROPS.index(c) for c in cols]
    out = "".join("\t".join(line.split("\t")[i] for i in keep) + "\n"
                  for line in capture("list_tree")["stdout"].splitlines())
    rec = Recorder([(0, out, "")])
    rows = zfs.ZfsClient(rec, P).tree(V1, cols)
    argv = capture("list_tree")["argv"]
    assert rec.calls[0] == argv[:5] + [",".join(cols)] + argv[6:]
    assert len(rows) == 3 and rows[1]["clones"] == P + "/volume-clone"


def test_rename_snapshot_must_keep_its_volume():
    z = zfs.ZfsClient(Recorder(), P)
    with pytest.raises(exception.InvalidName):
        z.rename(V1 + "@a", P + "/other@a")


def test_user_property_values_are_validated_and_no_secret_property():
    z = zfs.ZfsClient(Recorder(), P)
    with pytest.raises(exception.InvalidValue, match="characters outside"):
        z.set_user(V1, "zol:deleted", "a value with space")
    with pytest.raises(exception.InvalidValue, match="user property"):
        z.set_user(V1, "zol:chap", "user:Secret1234567890")     # protocol 2: never in ZFS
    with pytest.raises(exception.InvalidValue):
        z.set_user(V1, "com.sun:auto-snapshot", "true")


def test_wait_zvol_timeout_message():
    rec = Recorder([answer("wait_zvol_missing")])
    with pytest.raises(exception.ZfsError) as ei:
        zfs.ZfsClient(rec, P).wait_zvol(V1, 1)
    assert "did not appear" in str(ei.value)
    assert rec.calls == [["zol-wrapper", "wait-zvol", V1, "1"]]


# -- send / receive builders (doc/san-protocol.md "Streams") ---------------------------------

TOKEN = "1-e604ea4bf-c0-789c636064000310a500c4ec50360710e72765a5262696" + "a" * 120


def test_send_receive_argv_forms():
    z = zfs.ZfsClient(Recorder(), P)
    s1, s2 = V1 + "@zol-migrate-1", V1 + "@zol-migrate-2"
    assert z.send_argv(s1) == ["zfs", "send", "-L", "-e", "-c", s1]
    assert z.send_argv(s2, base=s1) == ["zfs", "send", "-L", "-e", "-c", "-i", s1, s2]
    assert z.send_resume_argv(TOKEN) == ["zfs", "send", "-t", TOKEN]
    assert z.receive_argv(V1) == ["zfs", "receive", "-s", "-u", V1]
    assert z.receive_argv(V1, force=True) == ["zfs", "receive", "-s", "-u", "-F", V1]
    assert z.executor.calls == []          # builders only build


@pytest.mark.parametrize("call", [
    lambda z: z.send_argv(V1),                                      # not a snapshot
    lambda z: z.send_argv("zol/other/v@s"),                         # outside the parent
    lambda z: z.send_argv(V1 + "@b", base=P + "/other@a"),          # base of another DS
    lambda z: z.send_argv(V1 + "@b", base=V1 + "@b"),               # base == snap
    lambda z: z.send_argv(V1 + "@b", base="@a"),                    # short form
    lambda z: z.send_resume_argv(TOKEN + ";id"),
    lambda z: z.send_resume_argv("1-a-b-$(id)aaaaaaaaaaaaaaaa"),
    lambda z: z.send_resume_argv(TOKEN.upper()),
    lambda z: z.send_resume_argv("-R"),
    lambda z: z.send_resume_argv("1-e6-c0-" + "a" * 4097),
    lambda z: z.receive_argv(P),                                    # the parent itself
    lambda z: z.receive_argv(V1 + "@s"),
    lambda z: z.receive_argv(P + "/a/b"),
    lambda z: z.abort_receive("zol/other/x"),
    lambda z: z.resume_token(P),
])
def test_send_receive_builders_refuse(call):
    z = zfs.ZfsClient(Recorder(), P)
    with pytest.raises((exception.InvalidName, exception.InvalidValue)):
        call(z)
    assert z.executor.calls == []


def test_resume_token_read_and_validated():
    get = ["zfs", "get", "-H", "-p", "-o", "name,property,value", "receive_resume_token", V1]
    rec = Recorder([(0, f"{V1}\treceive_resume_token\t{TOKEN}\n", ""),
                    (0, f"{V1}\treceive_resume_token\t-\n", ""),
                    (1, "", f"cannot open '{V1}': dataset does not exist\n"),
                    (0, f"{V1}\treceive_resume_token\t1-x;rm\n", "")])
    z = zfs.ZfsClient(rec, P)
    assert z.resume_token(V1) == TOKEN
    assert z.resume_token(V1) is None
    assert z.resume_token(V1) is None
    with pytest.raises(exception.InvalidValue):      # a SAN answer outside the grammar
        z.resume_token(V1)
    assert rec.calls == [get] * 4


def test_abort_receive_true_false_and_errors():
    rec = Recorder([(0, "", ""),
                    (1, "", f"'{V1}' does not have any resumable receive state to abort\n"),
                    (1, "", f"cannot open '{V1}': dataset does not exist\n"),
                    (1, "", "cannot abort: permission denied\n")])
    z = zfs.ZfsClient(rec, P)
    assert z.abort_receive(V1) is True
    assert z.abort_receive(V1) is False
    assert z.abort_receive(V1) is False
    with pytest.raises(exception.ZfsError):
        z.abort_receive(V1)
    assert rec.calls == [["zfs", "receive", "-A", V1]] * 4
