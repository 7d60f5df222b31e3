"""The operator's flows through the real Cinder API (python-cinderclient, as the dashboard does).

Real cinder-api / cinder-scheduler / cinder-volume processes and rabbitmq (tools/cinder-stack,
fixture `cinder_stack`) load zol_driver against the session SAN VM: zol-thin -> zol/cinder (thin),
zol-thick -> zol/cinder-thick (thick), through the restricted cinder key and the SAN wrapper.
Data is written and read with a real userspace iSCSI initiator (libiscsi via qemu-img) using the
connection info Cinder returns for a Nova-like connector, CHAP on.

The tests of one module share one stack and run in file order; each cleans up what it creates
and checks on the SAN itself (admin key) that Cinder's view matches ZFS and tgt.
"""
from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import iscsi
from tests.plugins.cinder import iscsi_write_flushed, wait_gone, wait_status

GIB = 1024 ** 3
MIB = 1024 ** 2
INITIATOR = "iqn.1993-08.org.debian:01:zol-cinder-test"
CONNECTOR = {"initiator": INITIATOR, "ip": "127.0.0.1", "host": "zol-compute-1",
             "multipath": False, "platform": "x86_64", "os_type": "linux",
             "do_local_attach": False}
THIN, THICK = "zol/cinder", "zol/cinder-thick"


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def create(cinder, size=1, vtype="zol-thin", **kw):
    v = cinder.volumes.create(size, volume_type=vtype, name=kw.pop("name", "t-" + vtype), **kw)
    return wait_status(lambda: cinder.volumes.get(v.id), "available", what="volume")


def delete(cinder, vol) -> None:
    cinder.volumes.delete(vol)
    wait_gone(lambda: cinder.volumes.get(vol.id), what="volume")


def zprops(san_admin, ds: str, *props: str) -> dict | None:
    r = san_admin.run(["zfs", "get", "-H", "-p", "-o", "property,value", ",".join(props), ds],
                      check=False)
    if r.returncode != 0:
        return None
    return dict(line.split("\t", 1) for line in r.stdout.strip().splitlines())


def zfs_names(san_admin, parent: str) -> list[str]:
    out = san_admin.out(["zfs", "list", "-H", "-o", "name", "-t", "volume,snapshot", "-r",
                         parent])
    return out.split()


def targets(san_admin) -> str:
    return san_admin.out(["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show"])


def attach(cinder, vol, complete: bool = True) -> tuple[str, dict, str]:
    """Nova's attach: attachment with our connector -> connection info -> libiscsi URL."""
    att = cinder.attachments.create(vol.id, CONNECTOR, None, "rw")
    info = att["connection_info"]
    assert info["driver_volume_type"] == "iscsi", info
    host, port = info["target_portal"].rsplit(":", 1)
    url = iscsi.iscsi_url(host, int(port), info["target_iqn"], int(info["target_lun"]),
                          info.get("auth_username"), info.get("auth_password"))
    if complete:
        cinder.attachments.complete(att["id"])
        wait_status(lambda: cinder.volumes.get(vol.id), "in-use", what="volume")
    return att["id"], info, url


def detach(cinder, vol, att_id: str) -> None:
    cinder.attachments.delete(att_id)
    wait_status(lambda: cinder.volumes.get(vol.id), "available", what="volume")


def write_via_attach(cinder, vol, data: bytes) -> None:
    att_id, _, url = attach(cinder, vol)
    try:
        iscsi_write_flushed(url, data)
    finally:
        detach(cinder, vol, att_id)


def read_via_attach(cinder, vol, n: int) -> bytes:
    att_id, _, url = attach(cinder, vol)
    try:
        return iscsi.read(url, n)
    finally:
        detach(cinder, vol, att_id)


def messages_for(cinder, resource_id: str) -> list[str]:
    return [f"{m.event_id}: {m.user_message}" for m in cinder.messages.list()
            if m.resource_uuid == resource_id]


def wait_error(cinder, vol_id: str, timeout: float = 180):
    return wait_status(lambda: cinder.volumes.get(vol_id), "error", fail=(), timeout=timeout,
                       what="volume")


def wait_pool(stack, backend: str, pred, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        caps = stack.pool(backend)
        if pred(caps):
            return caps
        if time.monotonic() > deadline:
            raise AssertionError(f"pool {backend} did not reach the expected state: {caps}")
        time.sleep(2)


# --------------------------------------------------------------------------------------------
# types, pools, create/delete
# --------------------------------------------------------------------------------------------

def test_volume_types_map_to_the_two_backends(cinder, cinder_stack):
    types = {t.name: t.extra_specs for t in cinder.volume_types.list()}
    assert types["zol-thin"] == {"volume_backend_name": "zol-thin"}
    assert types["zol-thick"] == {"volume_backend_name": "zol-thick"}
    thin, thick = cinder_stack.pool("zol-thin"), cinder_stack.pool("zol-thick")
    assert thin["thin_provisioning_support"] is True
    assert thick["thin_provisioning_support"] is False
    # every zol backend can make thick volumes (a type's provisioning:type = thick)
    assert thick["thick_provisioning_support"] is True and thin["thick_provisioning_support"]
    assert (thin["zol_default_provisioning"], thick["zol_default_provisioning"]) == \
        ("thin", "thick")
    for caps in (thin, thick):
        assert caps["storage_protocol"] == "iSCSI"
        assert caps["total_capacity_gb"] > 1, caps
        assert 0 < caps["free_capacity_gb"] <= caps["total_capacity_gb"], caps


def test_create_lands_on_its_dataset_and_capacity_shows_in_pools(cinder, cinder_stack,
                                                                 san_admin):
    free0 = cinder_stack.pool("zol-thick")["free_capacity_gb"]
    thin = create(cinder, 1, "zol-thin")
    thick = create(cinder, 2, "zol-thick")
    try:
        assert getattr(thin, "os-vol-host-attr:host").endswith("@zol-thin#zol-thin")
        assert getattr(thick, "os-vol-host-attr:host").endswith("@zol-thick#zol-thick")
        p = zprops(san_admin, f"{THIN}/volume-{thin.id}", "volsize", "refreservation")
        assert p == {"volsize": str(GIB), "refreservation": "0"}, p
        p = zprops(san_admin, f"{THICK}/volume-{thick.id}", "volsize", "refreservation")
        assert p is not None and p["volsize"] == str(2 * GIB), p
        assert int(p["refreservation"]) >= 2 * GIB, p
        # the thick zvol's reservation shows in the scheduler's view after a stats refresh
        caps = wait_pool(cinder_stack, "zol-thick",
                         lambda c: c["free_capacity_gb"] <= free0 - 1.9, timeout=60)
        assert caps["provisioned_capacity_gb"] >= 2, caps
    finally:
        delete(cinder, thin)
        delete(cinder, thick)
    assert zprops(san_admin, f"{THIN}/volume-{thin.id}", "volsize") is None
    assert zprops(san_admin, f"{THICK}/volume-{thick.id}", "volsize") is None


def test_volume_that_does_not_fit_is_refused_by_the_scheduler(cinder, cinder_stack,
                                                              san_admin):
    total = cinder_stack.pool("zol-thick")["total_capacity_gb"]
    before = zfs_names(san_admin, THICK)
    log0 = cinder_stack.log_size("volume")
    v = cinder.volumes.create(int(total) + 50, volume_type="zol-thick", name="too-big")
    v = wait_error(cinder, v.id)
    try:
        assert getattr(v, "os-vol-host-attr:host") is None, "the scheduler placed it"
        msgs = messages_for(cinder, v.id)
        assert any("No valid backend" in m or "available weighted backend" in m
                   for m in msgs), msgs
        assert v.id not in cinder_stack.log_since(log0, "volume"), "cinder-volume saw it"
        assert zfs_names(san_admin, THICK) == before
    finally:
        delete(cinder, v)


# --------------------------------------------------------------------------------------------
# attach as Nova does, data through libiscsi, CHAP
# --------------------------------------------------------------------------------------------

def test_attach_write_read_detach_with_chap(cinder, san_admin):
    vol = create(cinder, 1, "zol-thin", name="attach")
    try:
        att_id, info, url = attach(cinder, vol)
        try:
            assert info["auth_method"] == "CHAP" and info["auth_username"], info
            assert info["target_iqn"].endswith(vol.id)
            assert info["target_iqn"] in targets(san_admin)
            assert iscsi.capacity(url) == GIB
            data = iscsi.random_bytes(MIB)
            iscsi_write_flushed(url, data)
            assert iscsi.read(url, MIB) == data
            # CHAP is enforced: the same LUN with a wrong secret is refused
            host, port = info["target_portal"].rsplit(":", 1)
            bad = iscsi.iscsi_url(host, int(port), info["target_iqn"], int(info["target_lun"]),
                                  info["auth_username"], "WrongSecret0000")
            with pytest.raises(RuntimeError, match="(?i)auth|log in|login"):
                iscsi.capacity(bad, timeout=60)
            assert cinder.volumes.get(vol.id).status == "in-use"
        finally:
            detach(cinder, vol, att_id)
        assert info["target_iqn"] not in targets(san_admin), "detach left the target"
        assert read_via_attach(cinder, vol, MIB) == data
    finally:
        delete(cinder, vol)


def test_volume_restart_keeps_an_attached_volume_reachable(cinder, cinder_stack, san_admin):
    """ensure_export at cinder-volume start recreates a target the SAN lost."""
    vol = create(cinder, 1, "zol-thick", name="restart")
    try:
        att_id, info, url = attach(cinder, vol)
        try:
            data = iscsi.random_bytes(MIB)
            iscsi_write_flushed(url, data)
            # the SAN loses the export (as after a tgtd restart without the restore unit)
            tid = None
            for line in targets(san_admin).splitlines():
                if line.startswith("Target ") and line.endswith(info["target_iqn"]):
                    tid = line.split()[1].rstrip(":")
            assert tid, "target not found on the SAN"
            san_admin.run(["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "delete",
                           "--force", "--tid", tid])
            with pytest.raises(RuntimeError):
                iscsi.capacity(url, timeout=60)
            t0 = time.monotonic()
            cinder_stack.restart_volume()
            print(f"cinder-volume restart: {time.monotonic() - t0:.1f} s")
            assert iscsi.read(url, MIB) == data, "data not readable after ensure_export"
        finally:
            detach(cinder, vol, att_id)
    finally:
        delete(cinder, vol)


# --------------------------------------------------------------------------------------------
# snapshot, volume from snapshot, clone, extend, revert, delete
# --------------------------------------------------------------------------------------------

def _snapshot_between_writes(cinder, vol, a: bytes, b: bytes):
    """Write A, snapshot (forced: in use, as an operator snapshots a running instance), write B,
    all in one attachment (each attach cycle costs ~10 SAN commands)."""
    att_id, _, url = attach(cinder, vol)
    try:
        iscsi_write_flushed(url, a)
        snap = cinder.volume_snapshots.create(vol.id, force=True, name="s-" + vol.name)
        snap = wait_status(lambda: cinder.volume_snapshots.get(snap.id), "available",
                           what="snapshot")
        iscsi_write_flushed(url, b)
    finally:
        detach(cinder, vol, att_id)
    return snap


def _delete_snapshot(cinder, snap) -> None:
    cinder.volume_snapshots.delete(snap)
    wait_gone(lambda: cinder.volume_snapshots.get(snap.id), what="snapshot")


def test_revert_to_snapshot(cinder, san_admin):
    a, b = iscsi.random_bytes(MIB), iscsi.random_bytes(MIB)
    vol = create(cinder, 1, "zol-thin", name="revert")
    snap = None
    try:
        snap = _snapshot_between_writes(cinder, vol, a, b)
        assert zprops(san_admin, f"{THIN}/volume-{vol.id}@snapshot-{snap.id}", "type") == \
            {"type": "snapshot"}
        cinder.volumes.revert_to_snapshot(vol, snap)
        wait_status(lambda: cinder.volumes.get(vol.id), "available",
                    fail=("error", "error_reverting"), what="volume")
        assert read_via_attach(cinder, vol, MIB) == a, "revert did not restore the snapshot"
    finally:
        for s in cinder.volume_snapshots.list(search_opts={"volume_id": vol.id}):
            _delete_snapshot(cinder, s)  # ours, and a revert backup snapshot if one was left
        delete(cinder, vol)


def test_snapshot_clone_extend_delete(cinder, san_admin):
    a, b = iscsi.random_bytes(MIB), iscsi.random_bytes(MIB)
    vol = create(cinder, 1, "zol-thin", name="origin")
    made: list = []
    snap = None
    try:
        snap = _snapshot_between_writes(cinder, vol, a, b)
        from_snap = create(cinder, 1, "zol-thin", snapshot_id=snap.id, name="from-snap")
        made.append(from_snap)
        clone = create(cinder, 1, "zol-thin", source_volid=vol.id, name="clone")
        made.append(clone)
        cinder.volumes.extend(from_snap, 2)
        from_snap = wait_status(lambda: cinder.volumes.get(from_snap.id), "available",
                                fail=("error", "error_extending"), what="volume")
        assert from_snap.size == 2
        assert zprops(san_admin, f"{THIN}/volume-{from_snap.id}", "volsize") == \
            {"volsize": str(2 * GIB)}
        att_id, _, url = attach(cinder, from_snap)
        try:
            assert iscsi.capacity(url) == 2 * GIB
            assert iscsi.read(url, MIB) == a, "volume from snapshot (extended) lost data"
        finally:
            detach(cinder, from_snap, att_id)
        assert read_via_attach(cinder, clone, MIB) == b, "clone does not hold the source's data"
    finally:
        # delete in the order that exercises ZFS dependencies: the snapshot and the origin go
        # first while their clones live on
        if snap is not None:
            _delete_snapshot(cinder, snap)
        delete(cinder, vol)
        for v in made:
            delete(cinder, v)
    ids = [vol.id, *(v.id for v in made)] + ([snap.id] if snap else [])
    deadline = time.monotonic() + 60  # hidden (deleted-with-dependents) zvols are collected
    while True:
        left = [n for n in zfs_names(san_admin, THIN) if any(i in n for i in ids)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert not left, f"left on the SAN after deleting everything: {left}"


# --------------------------------------------------------------------------------------------
# manage / unmanage
# --------------------------------------------------------------------------------------------

def test_unmanage_then_manage(cinder, cinder_stack, san_admin):
    vol = create(cinder, 1, "zol-thick", name="to-unmanage")
    data = iscsi.random_bytes(MIB)
    write_via_attach(cinder, vol, data)
    old = f"volume-{vol.id}"
    cinder.volumes.unmanage(vol)
    wait_gone(lambda: cinder.volumes.get(vol.id), what="volume")
    assert zprops(san_admin, f"{THICK}/{old}", "volsize") == {"volsize": str(GIB)}, \
        "unmanage must leave the zvol on the SAN"
    listed = [m for m in cinder.volumes.list_manageable(
        host=f"{cinder_stack.host}@zol-thick#zol-thick", detailed=True)]
    assert any(m.reference.get("source-name") == old for m in listed), listed
    managed = cinder.volumes.manage(host=f"{cinder_stack.host}@zol-thick#zol-thick",
                                    ref={"source-name": old}, name="managed",
                                    volume_type="zol-thick")
    managed = wait_status(lambda: cinder.volumes.get(managed.id), "available",
                          fail=("error", "error_managing"), what="volume")
    try:
        assert managed.size == 1
        assert zprops(san_admin, f"{THICK}/{old}", "volsize") is None
        assert zprops(san_admin, f"{THICK}/volume-{managed.id}", "volsize") is not None
        assert read_via_attach(cinder, managed, MIB) == data
    finally:
        delete(cinder, managed)


# --------------------------------------------------------------------------------------------
# errors reach the user
# --------------------------------------------------------------------------------------------

def _assert_user_sees_error(cinder, stack, vol_id: str, log0: int, needle: str) -> None:
    vol = wait_error(cinder, vol_id)
    msgs = messages_for(cinder, vol_id)
    assert msgs, "no user message for the failed volume"
    log = stack.log_since(log0, "volume")
    assert needle in log, f"{needle!r} not in the volume log:\n{log[-3000:]}"
    delete(cinder, vol)


def test_wrapper_denial_puts_volume_in_error(cinder, cinder_stack, san_admin, sanvm):
    conf = sanvm.get("wrapper_conf", "/etc/zol/wrapper.conf")
    original = san_admin.out(["cat", conf])
    denied = "\n".join(f"parents = {THIN}" if line.startswith("parents") else line
                       for line in original.splitlines()) + "\n"
    log0 = cinder_stack.log_size("volume")
    san_admin.run(["python3", "-c", "import sys; open(sys.argv[1], 'w').write(sys.argv[2])",
                   conf, denied])
    try:
        v = cinder.volumes.create(1, volume_type="zol-thick", name="denied")
        _assert_user_sees_error(cinder, cinder_stack, v.id, log0, "denied")
    finally:
        san_admin.run(["python3", "-c", "import sys; open(sys.argv[1], 'w').write(sys.argv[2])",
                       conf, original])


def test_pool_full_puts_volume_in_error(cinder, cinder_stack, san_admin):
    """The SAN refuses (out of space) although the scheduler's last report said it fits.

    Deterministic staleness: cinder-volume is stopped while the pool fills up, so the scheduler
    still holds the last report (the service counts as up for service_down_time); the create is
    queued for the backend and fails on the SAN when cinder-volume comes back.
    """
    filler = "zol/zol-test-filler"
    mod, st = cinder_stack.mod, cinder_stack.state
    wait_pool(cinder_stack, "zol-thick", lambda c: c["free_capacity_gb"] > 4, 60)
    avail = int(san_admin.out(["zfs", "get", "-H", "-p", "-o", "value", "available",
                               THICK]).strip())
    log0 = cinder_stack.log_size("volume")
    mod.stop_service(st, "volume")
    try:
        san_admin.run(["zfs", "create", "-V", str((avail - 2 * GIB) // MIB * MIB), filler])
        v = cinder.volumes.create(3, volume_type="zol-thick", name="no-space")
        wait_status(lambda: cinder.volumes.get(v.id), "creating", fail=(), what="volume")
        cinder_stack.restart_volume()  # starts it again (nothing to stop)
        # the SAN refuses, Cinder reschedules (scheduler_max_attempts), nothing else fits, so
        # the volume ends in error; the SAN's reason is in the volume log and the scheduler's
        # "Error scheduling ... from last vol-service" line
        wait_error(cinder, v.id)
        sched = [line for line in cinder_stack.log("scheduler").splitlines()
                 if v.id in line and "Error scheduling" in line]
        assert sched and "out of space" in sched[0], sched
        _assert_user_sees_error(cinder, cinder_stack, v.id, log0, "out of space")
    finally:
        if "volume" not in st["pids"]:
            cinder_stack.restart_volume()
        san_admin.run(["zfs", "destroy", filler], check=False)


def test_changed_host_key_is_refused_with_a_clear_error(cinder_stack, tmp_path):
    """A SAN host key that differs from known_hosts: the driver refuses to talk (RejectPolicy)
    and the volume log says which host, why, and how to fix it.  (Cinder then keeps that
    backend's requests queued: its RPC server does not start while the driver is
    uninitialized, and volumes left `creating` are set to `error` at the next good start.)"""
    known = Path(cinder_stack.state["known_hosts"])
    original = known.read_text()
    key = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    host = original.split()[0]
    known.write_text(host + " " + " ".join(key.with_suffix(".pub").read_text().split()[:2])
                     + "\n")
    log0 = cinder_stack.log_size("volume")
    try:
        cinder_stack.mod.stop_service(cinder_stack.state, "volume")
        with pytest.raises(cinder_stack.mod.StackError, match="host key"):
            cinder_stack.restart_volume()
        log = cinder_stack.log_since(log0, "volume")
        assert "SSH host key of" in log and "is not trusted" in log, log[-3000:]
    finally:
        known.write_text(original)
        cinder_stack.mod.stop_service(cinder_stack.state, "volume")
        cinder_stack.restart_volume()


# --------------------------------------------------------------------------------------------
# images: volume from a Glance image, volume uploaded to Glance (data via libiscsi)
# --------------------------------------------------------------------------------------------

@pytest.fixture
def glance(cinder_stack, request):
    from tests.plugins.cinder import GLANCE_ERROR
    err = request.config.stash.get(GLANCE_ERROR, None)
    if err:
        pytest.fail(f"Glance fixture failed, image flows cannot run: {err}", pytrace=False)
    return request.getfixturevalue("glance_server")


def test_volume_from_image_and_upload_to_image(cinder, cinder_stack, glance, tmp_path):
    import glanceclient.exc
    gc = glance.client(f"admin:{cinder_stack.project_id}")
    payload = iscsi.random_bytes(3 * MIB)
    src = tmp_path / "img.raw"
    src.write_bytes(payload + b"\0" * (MIB * 5))  # 8 MiB raw image
    qcow = tmp_path / "img.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(src), str(qcow)],
                   check=True)
    img = gc.images.create(name="zol-test-" + uuid.uuid4().hex[:6], disk_format="qcow2",
                           container_format="bare")
    with open(qcow, "rb") as f:
        gc.images.upload(img.id, f, image_size=qcow.stat().st_size)
    vol = None
    uploaded = None
    try:
        v = cinder.volumes.create(1, volume_type="zol-thin", imageRef=img.id, name="from-image")
        vol = wait_status(lambda: cinder.volumes.get(v.id), "available", timeout=300,
                          what="volume")
        assert vol.bootable == "true"
        assert read_via_attach(cinder, vol, 8 * MIB) == src.read_bytes()
        resp = cinder.volumes.upload_to_image(vol, False, "zol-upload-" + vol.id[:6], "bare",
                                              "raw", "private", False)
        uploaded = resp[1]["os-volume_upload_image"]["image_id"]
        deadline = time.monotonic() + 600  # the whole 1 GiB LUN is read through slirp
        status = "queued"
        while status != "active":
            assert status not in ("killed", "deleted"), f"image went {status}"
            assert time.monotonic() < deadline, f"upload did not finish (image {status})"
            time.sleep(3)
            try:
                status = gc.images.get(uploaded).status
            except glanceclient.exc.CommunicationError:
                continue  # gunicorn closed an idle keep-alive connection under us: ask again
        wait_status(lambda: cinder.volumes.get(vol.id), "available", what="volume")
        got = b"".join(gc.images.data(uploaded))
        assert len(got) == GIB
        assert got[:8 * MIB] == src.read_bytes()
        assert got[8 * MIB:].count(0) == GIB - 8 * MIB
    finally:
        if vol is not None:
            delete(cinder, vol)
        for i in (img.id, uploaded):
            if i:
                gc.images.delete(i)


def test_nothing_of_ours_left_on_the_san(san_admin):
    left = zfs_names(san_admin, THIN) + zfs_names(san_admin, THICK)
    assert not [n for n in left if n not in (THIN, THICK)], json.dumps(left)
