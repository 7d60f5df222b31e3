"""The driver with volume types (zol:* extra specs) against the stateful FakeSan: every create
path applies the policy, bad specs leave nothing on the SAN, retype, migration, groups."""
from __future__ import annotations

import pytest
from cinder import exception as cinder_exception

from tests.unit.fakesan import FakeSan
from tests.unit.test_driver import DB, GIB, SCRATCH, ds, make_driver, snap, vol
from zol_driver import driver as zdriver


@pytest.fixture
def san(monkeypatch):
    s = FakeSan()
    monkeypatch.setattr(zdriver.ZFSonLinuxISCSIDriver, "_cg",
                        staticmethod(lambda g: g.get("group_type_id") == "cg"))
    yield s
    s.shutdown()


@pytest.fixture
def drv(san):
    return make_driver(san)


def props(san, v, *names):
    d = san.ds[ds(v)]
    return {n: san.prop(d, n) for n in names}


def test_create_applies_the_types_policy_and_reports_it(drv, san):
    v = vol(1, volume_type=DB, metadata={"owner": "alice", "zol:stale": "x"})
    upd = drv.create_volume(v)
    assert san.calls[-1] == ["zfs", "create", "-b", "16384", "-o", "compression=zstd",
                             "-o", "sync=always", "-V", str(GIB), ds(v)]
    assert props(san, v, "compression", "sync", "volblocksize") == {
        "compression": "zstd", "sync": "always", "volblocksize": "16384"}
    assert san.ds[ds(v)].refreservation > GIB          # thick on a thin backend
    assert upd == {"metadata": {"owner": "alice", "zol:compression": "zstd",
                                "zol:sync": "always", "zol:volblocksize": "16384",
                                "zol:provisioning": "thick"}}
    assert drv.get_volume_properties(v)["compression"] == "zstd"
    # the export announces the zvol as it is: thick
    drv.create_export(None, v, {})
    exp = [c for c in san.calls if c[:2] == ["zol-wrapper", "export"]][-1]
    assert exp[6] == "thick"


@pytest.mark.parametrize("specs,key,allowed", [
    ({"zol:compression": "zstd-20"}, "zol:compression", "zstd-19"),
    ({"zol:sync": "sometimes"}, "zol:sync", "standard, always, disabled"),
    ({"zol:volblocksize": "1M"}, "zol:volblocksize", "128K"),
    ({"zol:quota": "1G"}, "zol:quota", "zol:compression"),
    ({"provisioning:type": "fat"}, "provisioning:type", "thin, thick"),
])
def test_bad_spec_refused_naming_type_key_values_and_nothing_on_the_san(drv, san, specs, key,
                                                                        allowed):
    src = vol(9)
    drv.create_volume(src)
    s = snap(9, src)
    drv.create_snapshot(s)
    before = sorted(san.ds)
    n = len(san.calls)
    bad = {"name": "broken", "extra_specs": specs}
    calls = (lambda v: drv.create_volume(v),
             lambda v: drv.create_volume_from_snapshot(v, s),
             lambda v: drv.create_cloned_volume(v, src),
             lambda v: drv.manage_existing(v, {"source-name": src["name"]}))
    for i, call in enumerate(calls):
        with pytest.raises(cinder_exception.InvalidVolumeType) as ei:
            call(vol(10 + i, volume_type=bad))
        msg = str(ei.value)
        assert "volume type 'broken'" in msg and key in msg and allowed in msg, msg
    assert san.calls[n:] == [] and sorted(san.ds) == before


def test_clone_and_snapshot_paths_apply_the_policy(drv, san):
    src = vol(20, volume_type={"name": "db16", "extra_specs": {"zol:volblocksize": "16K"}})
    drv.create_volume(src)
    s = snap(20, src)
    drv.create_snapshot(s)
    a = vol(21, volume_type=DB)
    drv.create_volume_from_snapshot(a, s)
    b = vol(22, volume_type=DB)
    drv.create_cloned_volume(b, src)
    for v in (a, b):
        assert props(san, v, "compression", "sync") == {"compression": "zstd",
                                                        "sync": "always"}
        assert san.ds[ds(v)].refreservation > GIB
    # a clone keeps its source's volblocksize: another one is refused, nothing created
    n = len(san.ds)
    with pytest.raises(cinder_exception.InvalidVolumeType, match="volblocksize"):
        drv.create_volume_from_snapshot(vol(23, volume_type=SCRATCH), s)
    assert len(san.ds) == n


def test_copy_mode_sets_properties_after_the_receive(san):
    drv = make_driver(san, zol_clone_mode="copy")
    src = vol(30, volume_type={"name": "t", "extra_specs": {"zol:volblocksize": "16K"}})
    drv.create_volume(src)
    new = vol(31, volume_type=DB)
    drv.create_cloned_volume(new, src)
    assert ["zfs", "set", "compression=zstd", ds(new)] in san.calls
    assert props(san, new, "compression", "sync")["sync"] == "always"


def test_manage_existing_sets_the_policy(drv, san):
    san.execute(["zfs", "create", "-s", "-b", "16384", "-V", str(GIB), "zol/cinder/legacy"])
    v = vol(40, volume_type=DB)
    upd = drv.manage_existing(v, {"source-name": "legacy"})
    assert props(san, v, "compression", "sync") == {"compression": "zstd", "sync": "always"}
    assert san.ds[ds(v)].refreservation > GIB and upd["metadata"]["zol:compression"] == "zstd"
    san.execute(["zfs", "create", "-s", "-b", "8192", "-V", str(GIB), "zol/cinder/legacy8k"])
    with pytest.raises(cinder_exception.ManageExistingVolumeTypeMismatch,
                       match="volblocksize"):
        drv.manage_existing(vol(41, volume_type=DB), {"source-name": "legacy8k"})
    assert "zol/cinder/legacy8k" in san.ds


def test_retype_in_place_sets_inherits_and_changes_provisioning(drv, san):
    v = vol(50, volume_type=DB)
    drv.create_volume(v)
    drv.create_snapshot(snap(50, v))           # snapshots do not block property changes
    new = {"name": "db-fast", "extra_specs": {"zol:volblocksize": "16K",
                                              "zol:compression": "lz4",
                                              "zol:logbias": "throughput",
                                              "provisioning:type": "thin"}}
    n = len(san.calls)
    ok, upd = drv.retype(None, v, new, {}, {"host": drv.host})
    assert ok
    changes = [c for c in san.calls[n:] if c[1] in ("set", "inherit")]
    assert changes == [["zfs", "set", "refreservation=none", ds(v)],
                       ["zfs", "set", "compression=lz4", ds(v)],
                       ["zfs", "set", "logbias=throughput", ds(v)],
                       ["zfs", "inherit", "sync", ds(v)]]
    assert props(san, v, "compression", "sync", "logbias") == {
        "compression": "lz4", "sync": "standard", "logbias": "throughput"}
    assert upd["metadata"]["zol:provisioning"] == "thin"


def test_retype_volblocksize_copies_on_the_san_and_swaps_names(drv, san):
    v = vol(60, volume_type=DB)
    drv.create_volume(v)
    origin = san.ds[ds(v)]
    ok, upd = drv.retype(None, v, SCRATCH, {}, {"host": drv.host})
    assert ok and upd["metadata"]["zol:volblocksize"] == "131072"
    assert san.copied == [(ds(v), ds(v) + ".retype")]
    now = san.ds[ds(v)]
    assert now is not origin and now.volblocksize == 131072 and now.refreservation == 0
    assert props(san, v, "compression", "sync") == {"compression": "lz4",
                                                    "sync": "disabled"}
    assert san.names() == [ds(v)]            # no .retype / .retype-old left


def test_retype_copy_failure_keeps_the_volume(drv, san):
    v = vol(61, volume_type=DB)
    drv.create_volume(v)
    origin = san.ds[ds(v)]
    san.fail_next["zol-wrapper copy-data"] = [(68, "zol-ssh-wrapper: copy-data: boom\n")]
    with pytest.raises(cinder_exception.VolumeBackendAPIException, match="boom"):
        drv.retype(None, v, SCRATCH, {}, {"host": drv.host})
    assert san.ds[ds(v)] is origin and san.names() == [ds(v)]


def test_retype_returns_false_where_cinder_must_migrate(san, drv):
    v = vol(70, volume_type=DB)
    drv.create_volume(v)
    drv.create_snapshot(snap(70, v))
    assert drv.retype(None, v, SCRATCH, {}, {"host": drv.host}) is False
    w = vol(71, volume_type=DB, volume_attachment=[{"id": "a"}])
    drv.create_volume(w)
    assert drv.retype(None, w, SCRATCH, {}, {"host": drv.host}) is False
    assert drv.retype(None, w, {"name": "x", "extra_specs": {}}, {},
                      {"host": "other@backend#pool"}) is False
    off = make_driver(san, zol_retype_copy=False)
    u = vol(72, volume_type=DB)
    off.create_volume(u)
    assert off.retype(None, u, SCRATCH, {}, {"host": off.host}) is False
    assert san.copied == []


def test_migrate_renames_between_parents_of_the_same_san(drv, san):
    v = vol(80)
    drv.create_volume(v)
    drv.create_snapshot(snap(80, v))
    host = {"host": "cinder@thick#thick", "capabilities": {
        "location_info": "ZFSonLinuxISCSIDriver:192.0.2.10:zol/cinder-thick",
        "zol_default_provisioning": "thick"}}
    moved, upd = drv.migrate_volume(None, v, host)
    assert moved and upd["metadata"]["zol:provisioning"] == "thick"
    assert san.names() == []
    assert san.names("zol/cinder-thick") == ["zol/cinder-thick/" + v["name"],
                              f"zol/cinder-thick/{v['name']}@{snap(80, v)['name']}"]
    assert san.ds["zol/cinder-thick/" + v["name"]].refreservation > GIB
    for loc in ("ZFSonLinuxISCSIDriver:192.0.2.99:zol/cinder-thick",      # another SAN
                "ZFSonLinuxISCSIDriver:192.0.2.10:tank/cinder",          # another pool
                "LVMVolumeDriver:host:vg"):
        w = vol(81)
        drv.create_volume(w)
        assert drv.migrate_volume(None, w, {"host": "x", "capabilities": {
            "location_info": loc}}) == (False, None)


def test_update_migrated_volume_takes_the_original_name_when_free(drv, san):
    new = vol(91, _name_id=None)
    drv.create_volume(new)
    orig = vol(90)
    assert drv.update_migrated_volume(None, orig, new, "available") == {
        "_name_id": None, "provider_location": None}
    assert ds(orig) in san.ds and ds(new) not in san.ds
    # the original still there (same backend): Cinder keeps the new name id
    other = vol(92, _name_id=None)
    drv.create_volume(other)
    assert drv.update_migrated_volume(None, orig, other, "available")["_name_id"] == \
        other["id"]


def test_group_snapshot_is_one_command_and_groups_from_sources(drv, san):
    vols = [vol(100 + i, volume_type=SCRATCH) for i in range(3)]
    for v in vols:
        drv.create_volume(v)
    gs = {"id": "gs1", "group_type_id": "cg"}
    snaps = [snap(100 + i, v) for i, v in enumerate(vols)]
    n = len(san.calls)
    model, updates = drv.create_group_snapshot(None, gs, snaps)
    assert san.calls[n:] == [["zfs", "snapshot", *(ds(v) + "@" + s["name"]
                                                   for v, s in zip(vols, snaps))]]
    assert model == {"status": "available"} and len(updates) == 3
    assert len({san.ds[ds(v) + "@" + s["name"]].creation for v, s in zip(vols, snaps)}) == 1
    group = {"id": "g2", "group_type_id": "cg"}
    clones = [vol(110 + i, volume_type=SCRATCH, snapshot_id=s["id"])
              for i, s in enumerate(snaps)]
    drv.create_group_from_src(None, group, clones, group_snapshot=gs, snapshots=snaps)
    assert all(san.ds[ds(c)].origin for c in clones)
    copies = [vol(120 + i, volume_type=SCRATCH, source_volid=v["id"])
              for i, v in enumerate(vols)]
    n = len(san.calls)
    drv.create_group_from_src(None, group, copies, source_group={"id": "g1"},
                              source_vols=vols)
    snaps_cmds = [c for c in san.calls[n:] if c[1] == "snapshot"]
    assert len(snaps_cmds) == 1 and len(snaps_cmds[0]) == 5     # one atomic snapshot
    # deleting the group snapshot with dependent clones never fails, never loses data
    model, _ = drv.delete_group_snapshot(None, gs, snaps)
    assert model == {"status": "deleted"} and all(ds(c) in san.ds for c in clones)
    model, updates = drv.delete_group(None, group, clones + copies)
    assert model == {"status": "deleted"}
    for v in vols:
        drv.delete_volume(v)
    assert san.names() == []


def test_generic_groups_are_left_to_cinder(drv):
    with pytest.raises(NotImplementedError):
        drv.create_group(None, {"id": "g", "group_type_id": "plain"})
    assert drv.create_group(None, {"id": "g", "group_type_id": "cg"}) == {
        "status": "available"}
