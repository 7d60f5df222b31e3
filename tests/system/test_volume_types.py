"""Volume types as ZFS policy through the real Cinder API (issue 11), on the session SAN VM.

The operator's "db" (zstd, 16K, sync=always, thick) and "scratch" (lz4, 128K, sync=disabled,
thin) types are created through cinderclient; their volumes must carry exactly those
properties on the SAN (zfs get with the admin key), a retype between them keeps the data
(written and read through iSCSI with libiscsi), a bad spec is refused and leaves nothing on the
SAN, a backend-only retype is a driver-assisted migration (zfs rename), a group snapshot of three
volumes being written is crash-consistent, and a multiattach volume serves two connectors.

Shares the session's SAN VM and Cinder stack with test_cinder_flows; each test cleans up.
"""
from __future__ import annotations

import threading
import time

import pytest

from tests.helpers import iscsi
from tests.plugins.cinder import iscsi_write_flushed, wait_gone, wait_status
from tests.system.test_cinder_flows import (CONNECTOR, MIB, THICK, THIN, attach, create,
                                            delete, detach, read_via_attach, write_via_attach,
                                            zfs_names)

DB = {"zol:compression": "zstd", "zol:volblocksize": "16K", "zol:sync": "always",
      "provisioning:type": "thick", "volume_backend_name": "zol-thin"}
SCRATCH = {"zol:compression": "lz4", "zol:volblocksize": "128K", "zol:sync": "disabled",
           "provisioning:type": "thin", "volume_backend_name": "zol-thin"}
# what ZFS must report (zfs get -p): refreservation 0 = thin, > size = thick
WANT = {"db": {"compression": "zstd", "volblocksize": "16384", "sync": "always"},
        "scratch": {"compression": "lz4", "volblocksize": "131072", "sync": "disabled"}}
PROPS = ("compression", "volblocksize", "sync", "refreservation", "volsize")


def ensure_type(cinder, name: str, specs: dict):
    for t in cinder.volume_types.list():
        if t.name == name:
            return t
    t = cinder.volume_types.create(name)
    t.set_keys(specs)
    return t


@pytest.fixture(scope="module")
def types(cinder_stack):
    cinder = cinder_stack.client()
    made = {"db": ensure_type(cinder, "db", DB), "scratch": ensure_type(cinder, "scratch",
                                                                        SCRATCH)}
    yield made
    for t in made.values():
        try:
            cinder.volume_types.delete(t)
        except Exception:   # still used by a volume a failed test left: keep the type
            pass


def zget(san_admin, ds: str) -> dict:
    out = san_admin.out(["zfs", "get", "-H", "-p", "-o", "property,value", ",".join(PROPS), ds])
    return dict(line.split("\t", 1) for line in out.strip().splitlines())


def check_policy(san_admin, vol, name: str) -> None:
    got = zget(san_admin, f"{THIN}/volume-{vol.id}")
    assert {k: got[k] for k in WANT[name]} == WANT[name], got
    thick = int(got["refreservation"]) >= int(got["volsize"])
    assert thick is (name == "db"), got


def test_db_and_scratch_volumes_carry_their_properties(cinder, types, san_admin):
    t0 = time.monotonic()
    vols = {name: create(cinder, 1, name, name=f"type-{name}") for name in ("db", "scratch")}
    try:
        for name, vol in vols.items():
            check_policy(san_admin, vol, name)
            md = cinder.volumes.get(vol.id).metadata
            assert md["zol:compression"] == WANT[name]["compression"], md
            assert md["zol:provisioning"] == ("thick" if name == "db" else "thin"), md
    finally:
        for vol in vols.values():
            delete(cinder, vol)
    print(f"create db+scratch: {time.monotonic() - t0:.0f} s")


def test_bad_spec_is_refused_and_leaves_nothing(cinder, cinder_stack, san_admin):
    bad = ensure_type(cinder, "broken-zstd", {"zol:compression": "zstd-20",
                                              "volume_backend_name": "zol-thin"})
    try:
        before = zfs_names(san_admin, THIN)
        v = cinder.volumes.create(1, volume_type="broken-zstd", name="broken")
        wait_status(lambda: cinder.volumes.get(v.id), "error", fail=(), what="volume")
        assert zfs_names(san_admin, THIN) == before
        with open(cinder_stack.state["logs"]["volume"], errors="replace") as f:
            log = f.read()
        assert ("volume type 'broken-zstd': extra spec zol:compression='zstd-20' is not "
                "allowed; allowed values: off, on, lz4") in log
        delete(cinder, v)
    finally:
        cinder.volume_types.delete(bad)


def test_retype_between_db_and_scratch_keeps_the_data(cinder, types, san_admin):
    """volblocksize changes: the driver copies on the SAN (copy-data) and swaps the names;
    the other properties and thin/thick follow the new type; the data is the same."""
    vol = create(cinder, 1, "scratch", name="retype-me")
    vid = vol.id
    try:
        data = iscsi.random_bytes(2 * MIB)
        write_via_attach(cinder, vol, data)
        for name in ("db", "scratch"):
            t0 = time.monotonic()
            cinder.volumes.retype(vol, name, "never")
            # a block copy of the 1 GiB zvol on the SAN: ~2.5 min on a loaded 2-core host
            vol = wait_status(lambda: cinder.volumes.get(vid), "available", timeout=900,
                              what="volume")
            deadline = time.monotonic() + 120
            while cinder.volumes.get(vid).volume_type != name:
                assert time.monotonic() < deadline, "retype did not finish"
                time.sleep(2)
            print(f"retype to {name}: {time.monotonic() - t0:.0f} s")
            check_policy(san_admin, vol, name)
            assert cinder.volumes.get(vol.id).metadata["zol:volblocksize"] == \
                WANT[name]["volblocksize"]
            assert read_via_attach(cinder, vol, 2 * MIB) == data
        left = [n for n in zfs_names(san_admin, THIN) if ".retype" in n]
        assert not left, left
    finally:
        delete(cinder, vol)


def test_backend_only_retype_needs_on_demand_and_is_a_zfs_rename(cinder, san_admin):
    """zol-thin -> zol-thick differ only in volume_backend_name: Cinder refuses with the
    default policy 'never', and with on-demand uses the driver's migrate_volume (zfs rename
    into the other parent: same guid, data intact)."""
    vol = create(cinder, 1, "zol-thin", name="migrate-me")
    try:
        data = iscsi.random_bytes(MIB)
        write_via_attach(cinder, vol, data)
        ds = f"volume-{vol.id}"
        guid = san_admin.out(["zfs", "get", "-H", "-p", "-o", "value", "guid",
                              f"{THIN}/{ds}"]).strip()
        cinder.volumes.retype(vol, "zol-thick", "never")
        time.sleep(8)
        vol = wait_status(lambda: cinder.volumes.get(vol.id), "available", what="volume")
        assert vol.volume_type == "zol-thin" and f"{THIN}/{ds}" in zfs_names(san_admin, THIN)
        cinder.volumes.retype(vol, "zol-thick", "on-demand")
        deadline = time.monotonic() + 180
        while cinder.volumes.get(vol.id).volume_type != "zol-thick":
            assert time.monotonic() < deadline, cinder.volumes.get(vol.id)._info
            time.sleep(2)
        vol = wait_status(lambda: cinder.volumes.get(vol.id), "available", what="volume")
        assert f"{THICK}/{ds}" in zfs_names(san_admin, THICK)
        assert san_admin.out(["zfs", "get", "-H", "-p", "-o", "value", "guid",
                              f"{THICK}/{ds}"]).strip() == guid     # renamed, not copied
        got = zget(san_admin, f"{THICK}/{ds}")
        assert int(got["refreservation"]) >= int(got["volsize"])     # thick backend
        assert read_via_attach(cinder, vol, MIB) == data
    finally:
        delete(cinder, vol)


def _record(k: int) -> bytes:
    return (b"zol-seq %012d\n" % k).ljust(4096, b"\0")


def _seq(blob: bytes) -> int:
    if not blob.startswith(b"zol-seq "):
        return 0
    return int(blob[8:20])


def test_group_snapshot_of_three_volumes_being_written_is_crash_consistent(cinder, types,
                                                                          san_admin):
    """A writer makes dependent writes: record k to A, then (after A acknowledged and
    flushed) to B, then to C.  Any crash-consistent cut shows seq(A) >= seq(B) >= seq(C) >=
    seq(A) - 1.  The group snapshot is taken while the writer runs; the group made from it
    must show such a cut, and on the SAN the three snapshots share one transaction group."""
    gtype = None
    for gt in cinder.group_types.list():
        if gt.name == "zol-cg":
            gtype = gt
    if gtype is None:
        gtype = cinder.group_types.create("zol-cg")
        gtype.set_keys({"consistent_group_snapshot_enabled": "<is> True"})
    group = cinder.groups.create(gtype.id, "scratch", name="cg")
    group = wait_status(lambda: cinder.groups.get(group.id), "available", what="group")
    vols, atts, gsnap, clone_group = [], [], None, None
    try:
        for i in range(3):
            v = cinder.volumes.create(1, volume_type="scratch", name=f"cg-{i}",
                                      group_id=group.id)
            vols.append(wait_status(lambda v=v: cinder.volumes.get(v.id), "available",
                                    what="volume"))
        atts = [attach(cinder, v) for v in vols]
        urls = [a[2] for a in atts]
        stop = threading.Event()
        done = {"k": 0, "error": None}

        def writer():
            try:
                k = 0
                while not stop.is_set() and k < 200:
                    k += 1
                    for url in urls:
                        iscsi_write_flushed(url, _record(k))
                    done["k"] = k
            except Exception as exc:   # reported by the test below
                done["error"] = exc

        th = threading.Thread(target=writer, daemon=True)
        th.start()
        while done["k"] < 2 and th.is_alive():
            time.sleep(0.5)
        gsnap = cinder.group_snapshots.create(group.id, name="cg-snap")
        gsnap = wait_status(lambda: cinder.group_snapshots.get(gsnap.id), "available",
                            what="group snapshot")
        time.sleep(2)
        stop.set()
        th.join(300)
        assert done["error"] is None, done["error"]
        assert done["k"] >= 3, done
        for (att_id, _, _), v in zip(atts, vols):
            detach(cinder, v, att_id)
        atts = []
        snaps = [s for s in cinder.volume_snapshots.list()
                 if getattr(s, "group_snapshot_id", None) == gsnap.id]
        assert len(snaps) == 3
        txgs = {san_admin.out(["zfs", "get", "-H", "-p", "-o", "value", "createtxg",
                               f"{THIN}/volume-{s.volume_id}@snapshot-{s.id}"]).strip()
                for s in snaps}
        assert len(txgs) == 1, txgs
        made = cinder.groups.create_from_src(gsnap.id, None, name="cg-clone")
        clone_group = cinder.groups.get(made["id"])
        clone_group = wait_status(lambda: cinder.groups.get(made["id"]), "available",
                                  timeout=300, what="group")
        clones = [v for v in cinder.volumes.list(search_opts={"group_id": clone_group.id})]
        assert len(clones) == 3
        by_source = {s.id: s.volume_id for s in snaps}
        order = {v.id: i for i, v in enumerate(vols)}
        seqs = [0, 0, 0]
        for c in clones:
            src = by_source[cinder.volumes.get(c.id).snapshot_id]
            seqs[order[src]] = _seq(read_via_attach(cinder, c, 4096))
        a, b, c_ = seqs
        print(f"group snapshot cut: {seqs} (writer reached {done['k']})")
        assert a >= b >= c_ >= a - 1 and a >= 1, seqs
    finally:
        for att_id, _, _ in atts:
            cinder.attachments.delete(att_id)
        if clone_group is not None:
            cinder.groups.delete(clone_group, delete_volumes=True)
            wait_gone(lambda: cinder.groups.get(clone_group.id), timeout=300, what="group")
        if gsnap is not None:
            cinder.group_snapshots.delete(gsnap)
            wait_gone(lambda: cinder.group_snapshots.get(gsnap.id), what="group snapshot")
        cinder.groups.delete(group, delete_volumes=True)
        wait_gone(lambda: cinder.groups.get(group.id), timeout=300, what="group")


def test_multiattach_serves_two_connectors_and_detach_keeps_the_other(cinder, san_admin):
    mtype = ensure_type(cinder, "zol-multi", {"multiattach": "<is> True",
                                              "volume_backend_name": "zol-thin"})
    vol = create(cinder, 1, "zol-multi", name="multi")
    try:
        assert cinder.volumes.get(vol.id).multiattach
        other = dict(CONNECTOR, initiator="iqn.1993-08.org.debian:01:zol-second",
                     host="zol-compute-2")
        a1, info1, url1 = attach(cinder, vol)
        att2 = cinder.attachments.create(vol.id, other, None, "rw")
        cinder.attachments.complete(att2["id"])
        info2 = att2["connection_info"]
        host, port = info2["target_portal"].rsplit(":", 1)
        url2 = iscsi.iscsi_url(host, int(port), info2["target_iqn"], int(info2["target_lun"]),
                               info2.get("auth_username"), info2.get("auth_password"))
        assert info2["target_iqn"] == info1["target_iqn"]
        one, two = iscsi.random_bytes(MIB), iscsi.random_bytes(MIB)
        iscsi_write_flushed(url1, one)
        assert iscsi.read(url2, MIB) == one
        iscsi_write_flushed(url2, two)
        assert iscsi.read(url1, MIB) == two
        cinder.attachments.delete(a1)
        time.sleep(3)
        assert cinder.volumes.get(vol.id).status == "in-use"
        assert info2["target_iqn"] in san_admin.out(
            ["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show"])
        assert iscsi.read(url2, MIB) == two            # the second connector still works
        detach(cinder, vol, att2["id"])
    finally:
        delete(cinder, vol)
        cinder.volume_types.delete(mtype)
