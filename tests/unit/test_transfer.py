"""transfer.send(): zfs send | zfs receive between two SANs through this host, resumed after
a killed sender, aborted when it cannot be resumed.

Real wrapper processes in local mode (LocalExecutor, as san_is_local runs it) in front of two
fake SANs whose zfs moves bytes like a resumable receive (tests/helpers/fakestream.py); the
real OpenZFS side is tests/system/test_second_san.py.
"""
from __future__ import annotations

import sys

import pytest

from tests.helpers import fakestream
from tests.helpers.fakesan import WRAPPER, FakeSan
from zol_driver import exception, ssh, transfer, zfs

V = "volume-0b6e8f2a-1111-4c2d-9a1b-3c4d5e6f7a8b"


@pytest.fixture
def sans(tmp_path):
    a = FakeSan(tmp_path / "a", parents=("zol/cinder",))
    b = FakeSan(tmp_path / "b", parents=("tank/cinder-b", "tank/other"))
    yield a, b
    a.close()
    b.close()


def client(san: FakeSan, parent: str) -> zfs.ZfsClient:
    ex = ssh.LocalExecutor([sys.executable, str(WRAPPER), str(san.conf)])
    return zfs.ZfsClient(ex, parent, busy_retries=0, busy_interval=0)


def test_full_send_between_two_sans(sans, caplog):
    a, b = sans
    a.set_send_size(3 << 20)
    src, dst = client(a, "zol/cinder"), client(b, "tank/cinder-b")
    snap = src.ds(V) + "@zol-migrate-1"
    caplog.set_level("INFO")
    res = transfer.send(src, snap, dst, dst.ds(V))
    assert res.bytes > 3 << 20
    assert b.received() == {dst.ds(V): fakestream.expected(snap, 3 << 20)}
    assert a.executed() == [["zfs", "send", "-L", "-e", "-c", snap]]
    assert b.executed() == [["zfs", "receive", "-s", "-u", dst.ds(V)]]
    assert "Sent " + snap in caplog.text and "MiB/s" in caplog.text


def test_incremental_receives_with_force(sans):
    a, b = sans
    src, dst = client(a, "zol/cinder"), client(b, "tank/cinder-b")
    base, snap = src.ds(V) + "@r1", src.ds(V) + "@r2"
    transfer.send(src, snap, dst, dst.ds(V), base=base)
    assert a.executed() == [["zfs", "send", "-L", "-e", "-c", "-i", base, snap]]
    assert b.executed() == [["zfs", "receive", "-s", "-u", "-F", dst.ds(V)]]


def test_killed_sender_is_resumed_with_the_token(sans):
    a, b = sans
    a.set_send_size(4 << 20)
    a.kill_sender_after(1 << 20)
    src, dst = client(a, "zol/cinder"), client(b, "tank/cinder-b")
    snap = src.ds(V) + "@zol-migrate-1"
    transfer.send(src, snap, dst, dst.ds(V))
    assert b.received() == {dst.ds(V): fakestream.expected(snap, 4 << 20)}
    sent = a.executed()
    assert sent[0] == ["zfs", "send", "-L", "-e", "-c", snap]
    assert sent[1][:3] == ["zfs", "send", "-t"]
    assert fakestream.parse_token(sent[1][3]) == (snap, 1 << 20, 4 << 20)
    assert ["zfs", "get", "-H", "-p", "-o", "name,property,value", "receive_resume_token",
            dst.ds(V)] in b.executed()
    assert b.partial_receives() == []


def test_unresumable_stream_is_aborted_and_raises(sans):
    a, b = sans
    a.set_send_size(4 << 20)
    a.kill_sender_after(1 << 20, times=10)
    src, dst = client(a, "zol/cinder"), client(b, "tank/cinder-b")
    snap = src.ds(V) + "@zol-migrate-1"
    with pytest.raises(transfer.TransferFailed) as ei:
        transfer.send(src, snap, dst, dst.ds(V), resume_attempts=2)
    assert "the partial receive was aborted" in str(ei.value)
    assert "incomplete stream" in str(ei.value)
    assert [c[:3] for c in a.executed()] == [["zfs", "send", "-L"], ["zfs", "send", "-t"],
                                             ["zfs", "send", "-t"]]
    assert b.executed()[-1] == ["zfs", "receive", "-A", dst.ds(V)]
    assert b.partial_receives() == [] and b.received() == {}


def test_refused_receive_is_not_resumed_and_keeps_the_existing_dataset(sans):
    a, b = sans
    src, dst = client(a, "zol/cinder"), client(b, "tank/cinder-b")
    snap = src.ds(V) + "@zol-migrate-1"
    transfer.send(src, snap, dst, dst.ds(V))
    before = b.received()
    b.clear()
    with pytest.raises(transfer.TransferFailed) as ei:
        transfer.send(src, snap, dst, dst.ds(V))
    assert "exists" in str(ei.value) and "aborted" not in str(ei.value)
    assert [c[1] for c in b.executed()] == ["receive", "get", "receive"]
    assert b.received() == before


def test_same_san_two_parents_share_one_executor(tmp_path):
    san = FakeSan(tmp_path / "s", parents=("zol/cinder", "zol/cinder-thick"))
    try:
        ex = ssh.LocalExecutor([sys.executable, str(WRAPPER), str(san.conf)])
        src, dst = zfs.ZfsClient(ex, "zol/cinder"), zfs.ZfsClient(ex, "zol/cinder-thick")
        snap = src.ds(V) + "@m"
        transfer.send(src, snap, dst, dst.ds(V))
        assert san.received() == {dst.ds(V): fakestream.expected(snap, 1 << 20)}
    finally:
        san.close()


def test_wrapper_denial_is_not_retried(sans):
    a, b = sans
    src, dst = client(a, "zol/cinder"), client(b, "tank/cinder-b")
    # the destination client believes in a parent b's wrapper does not serve
    bad = zfs.ZfsClient(dst.executor, "tank/elsewhere")
    with pytest.raises(exception.CommandFailed) as ei:
        transfer.send(src, src.ds(V) + "@m", bad, bad.ds(V))
    assert "outside the configured parents" in str(ei.value)
    assert b.executed() == []


def test_space_errors_are_not_resumed(sans, monkeypatch):
    """A receive that ran out of quota/space meets the same wall when resumed (seen on
    OpenZFS 2.1: three resumes, each 'cannot receive resume stream: ... space quota
    exceeded'): abort after the first attempt."""
    a, b = sans
    src, dst = client(a, "zol/cinder"), client(b, "tank/cinder-b")
    snap = src.ds(V) + "@zol-migrate-1"
    calls = []

    def pipe(*args, **kw):
        calls.append(args)
        raise exception.CommandFailed(
            command="zfs send | zfs receive", exit_code=1, moved=1 << 20, stdout="",
            stderr="cannot receive new filesystem stream: destination %s space quota "
                   "exceeded." % dst.ds(V))
    monkeypatch.setattr(transfer, "pipe", pipe)
    monkeypatch.setattr(transfer, "_token", lambda *a: "1-token")   # resumable, yet pointless
    with pytest.raises(transfer.TransferFailed) as ei:
        transfer.send(src, snap, dst, dst.ds(V))
    assert len(calls) == 1 and "quota exceeded" in str(ei.value)
