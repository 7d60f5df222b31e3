"""migrate_volume by zfs send | zfs receive to another pool or SAN (issue 11) against two
stateful FakeSans: what moves, what the destination gets (the type's policy), what is left
where after success and after every kind of failure, and when Cinder must copy instead.

The stream itself is a stand-in here (FakeStream: what a completed receive leaves); the bytes
through the real wrapper and sshd are tests/unit/test_transfer.py and
tests/functional/test_wrapper_sshd.py, the real OpenZFS SANs tests/system/test_second_san.py.
"""
from __future__ import annotations

import logging

import pytest
from cinder import exception as cinder_exception

from tests.unit.fakesan import Dataset, FakeSan
from tests.unit.test_driver import DB, GIB, ds, make_driver, snap, vol
from zol_driver import driver as zdriver
from zol_driver import transfer
from zol_driver.ssh import PipeResult

B_PARENT = "zol/cinder-b"
B_IP = "192.0.2.20"


class FakeStream:
    """transfer.send() between FakeSans: a full receive of SNAP's volume (no properties:
    `zfs send` without -p carries none), or a failure."""

    def __init__(self, sans: dict[str, FakeSan]):
        self.sans = sans
        self.calls: list[tuple[str, str]] = []
        self.fail = False

    def __call__(self, src_zfs, snap_name, dst_zfs, dst_ds, base=None, timeout=None, **kw):
        self.calls.append((snap_name, dst_ds))
        assert base is None and timeout
        if self.fail:
            raise transfer.TransferFailed(command="zfs send | zfs receive", exit_code=1,
                                          stderr="cannot receive: out of space", snap=snap_name,
                                          dst=dst_ds, aborted=" (the partial receive was "
                                                              "aborted)")
        src, dst = self.sans[src_zfs.parent], self.sans[dst_zfs.parent]
        s = src.ds[snap_name]
        assert dst_ds not in dst.ds, "full receive into an existing dataset"
        dst.ds[dst_ds] = Dataset(dst_ds, "volume", s.volsize, 0, s.volblocksize,
                                 creation=next(dst._clock))
        new = f"{dst_ds}@{snap_name.partition('@')[2]}"
        dst.ds[new] = Dataset(new, "snapshot", s.volsize, None, s.volblocksize,
                              creation=next(dst._clock), guid=s.guid)
        return PipeResult(3 << 20, 0.5)


@pytest.fixture
def two(monkeypatch):
    a, b = FakeSan(), FakeSan(parents=(B_PARENT,))
    stream = FakeStream({"zol/cinder": a, B_PARENT: b})
    monkeypatch.setattr(zdriver.transfer, "send", stream)
    dest = make_driver(b, group="zol-b", san_ip=B_IP, target_ip_address=B_IP,
                       zol_parent_dataset=B_PARENT)
    monkeypatch.setattr(zdriver, "_conf_sections", lambda: ["DEFAULT", "zol-b"])
    monkeypatch.setattr(zdriver.ZFSonLinuxISCSIDriver, "_dest_executor",
                        lambda self, conf: b)
    src = make_driver(a)
    yield src, dest, a, b, stream
    a.shutdown()
    b.shutdown()


def dest_host(dest) -> dict:
    pool = dest.get_volume_stats(refresh=True)["pools"][0]
    return {"host": dest.host + "#" + pool["pool_name"], "capabilities": pool}


def test_location_info_carries_the_section_and_old_strings_still_parse(two):
    _src, dest, *_ = two
    loc = dest_host(dest)["capabilities"]["location_info"]
    assert loc == f"ZFSonLinuxISCSIDriver:{B_IP}:{B_PARENT}:zol-b"
    parse = zdriver.parse_location_info
    assert parse(loc) == (B_IP, B_PARENT, "zol-b")
    assert parse("ZFSonLinuxISCSIDriver:192.0.2.10:zol/cinder") == ("192.0.2.10", "zol/cinder",
                                                                   None)
    assert parse("ZFSonLinuxISCSIDriver:2001:db8::5:tank/c:zol-b") == ("2001:db8::5", "tank/c",
                                                                      "zol-b")
    assert parse("ZFSonLinuxISCSIDriver:2001:db8::5:tank/c") == ("2001:db8::5", "tank/c", None)
    assert parse("ZFSonLinuxISCSIDriver:local:tank/c:") == ("local", "tank/c", None)
    for bad in ("", "LVMVolumeDriver:h:vg", "ZFSonLinuxISCSIDriver:", "ZFSonLinuxISCSIDriver:x",
                "ZFSonLinuxISCSIDriver:h:pool:sec"):
        assert parse(bad) is None, bad


def test_migrate_to_another_san_moves_the_data_and_applies_the_type(two, caplog):
    src, dest, a, b, stream = two
    v = vol(1, size=2, volume_type=DB)
    src.create_volume(v)
    src.create_export(None, v, {})
    assert len(a.targets) == 1
    caplog.set_level(logging.INFO, logger="zol_driver.driver")
    moved, upd = src.migrate_volume(None, v, dest_host(dest))
    assert moved
    assert upd["provider_location"] is None and upd["metadata"]["zol:compression"] == "zstd"
    # nothing left on A: no volume, no temp snapshot, no target
    assert a.names() == [] and a.targets == {}
    # B: the volume with its type's policy (receive carried none), no temp snapshot
    new = f"{B_PARENT}/{v['name']}"
    assert b.names(B_PARENT) == [new]
    d = b.ds[new]
    assert d.volsize == 2 * GIB and d.volblocksize == 16384
    assert b.prop(d, "compression") == "zstd" and b.prop(d, "sync") == "always"
    assert d.refreservation >= 2 * GIB            # thick type: refreservation=auto
    (sent, target), = stream.calls
    assert sent.startswith(ds(v) + "@zol-migrate-") and target == new
    assert "by zfs send | zfs receive" in caplog.text and "MiB/s" in caplog.text
    # the destination driver serves it
    conn = dest.create_export(None, {**v, **upd}, {})
    assert conn and len(b.targets) == 1


def test_failed_stream_leaves_the_source_intact_and_exported(two):
    src, dest, a, b, stream = two
    v = vol(2, volume_type=DB)
    src.create_volume(v)
    src.create_export(None, v, {})
    before = (dict(a.targets), a.ds[ds(v)])
    stream.fail = True
    with pytest.raises(cinder_exception.VolumeBackendAPIException, match="out of space"):
        src.migrate_volume(None, v, dest_host(dest))
    assert a.names() == [ds(v)] and (dict(a.targets), a.ds[ds(v)]) == before
    assert b.names(B_PARENT) == []
    assert b.calls[-1] == ["zfs", "destroy", f"{B_PARENT}/{v['name']}"] or \
        ["zfs", "receive", "-A", f"{B_PARENT}/{v['name']}"] in b.calls


def test_failure_after_the_receive_cleans_the_destination(two):
    src, dest, a, b, _stream = two
    v = vol(3, volume_type=DB)
    src.create_volume(v)
    b.fail_next["zfs set"] = [(1, "cannot set property: permission denied\n")]
    with pytest.raises(cinder_exception.VolumeBackendAPIException, match="permission denied"):
        src.migrate_volume(None, v, dest_host(dest))
    assert a.names() == [ds(v)]          # no temp snapshot left either
    assert b.names(B_PARENT) == []


def test_existing_destination_is_refused_and_kept(two):
    src, dest, a, b, stream = two
    v = vol(4)
    src.create_volume(v)
    b.execute(["zfs", "create", "-s", "-V", str(GIB), f"{B_PARENT}/{v['name']}"])
    with pytest.raises(cinder_exception.VolumeBackendAPIException, match="already exists"):
        src.migrate_volume(None, v, dest_host(dest))
    assert stream.calls == [] and a.names() == [ds(v)]
    assert b.names(B_PARENT) == [f"{B_PARENT}/{v['name']}"]


def test_cinder_copies_when_the_destination_is_not_reachable_from_here(two, monkeypatch,
                                                                       caplog):
    src, dest, a, _b, stream = two
    v = vol(5)
    src.create_volume(v)
    caplog.set_level(logging.INFO, logger="zol_driver.driver")
    host = dest_host(dest)
    monkeypatch.setattr(zdriver, "_conf_sections", lambda: ["DEFAULT"])
    assert src.migrate_volume(None, v, host) == (False, None)
    assert "is not in this host's cinder.conf" in caplog.text
    old = {"host": "x", "capabilities": {
        "location_info": f"ZFSonLinuxISCSIDriver:{B_IP}:{B_PARENT}"}}
    assert src.migrate_volume(None, v, old) == (False, None)
    assert "names no cinder.conf section" in caplog.text
    monkeypatch.setattr(zdriver, "_conf_sections", lambda: ["zol-b"])
    other = {"host": "x", "capabilities": {
        "location_info": f"ZFSonLinuxISCSIDriver:192.0.2.99:{B_PARENT}:zol-b"}}
    assert src.migrate_volume(None, v, other) == (False, None)
    assert f"names {B_IP}:{B_PARENT}, not 192.0.2.99" in caplog.text
    attached = {**v, "volume_attachment": [{"id": "x"}]}
    assert src.migrate_volume(None, attached, host) == (False, None)
    assert stream.calls == [] and a.names() == [ds(v)]


def test_volume_with_snapshots_is_left_to_cinder(two):
    src, dest, a, _b, stream = two
    v = vol(6)
    src.create_volume(v)
    src.create_snapshot(snap(6, v))
    assert src.migrate_volume(None, v, dest_host(dest)) == (False, None)
    assert stream.calls == [] and len(a.names()) == 2


def test_source_with_clones_is_hidden_not_destroyed(two):
    src, dest, a, b, _stream = two
    v, c = vol(7), vol(8)
    s = snap(7, v)
    src.create_volume(v)
    src.create_snapshot(s)
    src.create_volume_from_snapshot(c, s)
    src.delete_snapshot(s)          # hidden: the clone still needs it
    moved, _ = src.migrate_volume(None, v, dest_host(dest))
    assert moved and b.names(B_PARENT) == [f"{B_PARENT}/{v['name']}"]
    assert ds(v) not in a.ds and ds(c) in a.ds       # the clone keeps its origin, hidden
    hidden = [n for n in a.names() if "deleted-" in n and v["name"] in n]
    assert hidden and not any("zol-migrate-" in n for n in a.names())


def test_same_address_other_ssh_port_is_another_san(two, monkeypatch):
    """Two SANs behind one address (port forwards): the section's san_ssh_port tells them
    apart, so the move is a stream, not a rename inside the source's pool."""
    src, _dest, a, b, stream = two
    other = make_driver(b, group="zol-b2", san_ip="192.0.2.10", san_ssh_port=2222,
                        zol_parent_dataset=B_PARENT)
    monkeypatch.setattr(zdriver, "_conf_sections", lambda: ["zol-b2"])
    v = vol(9)
    src.create_volume(v)
    moved, _ = src.migrate_volume(None, v, dest_host(other))
    assert moved and len(stream.calls) == 1
    assert a.names() == [] and b.names(B_PARENT) == [f"{B_PARENT}/{v['name']}"]
