"""Proven with the initiator nova uses: os-brick + the kernel initiator + dm-multipath.

A compute-node-like guest (tools/initiatorvm, fixture `initiator`: open-iscsi, multipath-tools,
Debian's python3-os-brick) attaches a zol-thin volume of the real Cinder stack (fixture
`cinder_stack`, zol_driver on the session SAN VM) the way nova does:

  connector = os-brick get_connector_properties(multipath=True) in the guest
  connection_info = Cinder attachments API (attachments.create with that connector)
  ISCSIConnector.connect_volume(connection_info["data"])   -- verbatim, in the guest

then proves CHAP, one multipath map over every portal whose WWID follows the volume id (and a
second volume's map apart from it), O_DIRECT data (checked on the SAN's zvol too), online extend
seen through os-brick's extend_volume while an O_DIRECT writer runs without any I/O error,
discard (blkdiscard and fstrim free space on the thin zvol; a thick volume announces none), and a
disconnect that leaves no session, no SCSI disk and no map.  The tests share one attachment and
run in file order (each needs the previous one's state).
"""
from __future__ import annotations

import hashlib
import json
import string
import time

import pytest

from tests.plugins.cinder import wait_gone, wait_status

GIB = 1024 ** 3
MIB = 1024 ** 2
THIN = "zol/cinder"
STOP_FILE = "/run/zol-brick-writer.stop"


def tgt_wwid(scsi_id: str) -> str:
    """The WWID udev/multipathd give a tgt LUN whose scsi_id is set: "3" + the NAA IEEE
    Registered Extended designator tgtd builds from scsi_id (tgt usr/spc.c update_vpd_83: each
    character's hex value shifted into 128 bits, non-hex characters count as 0, NAA 6)."""
    value = 0
    for ch in scsi_id:
        nibble = int(ch, 16) if ch in string.hexdigits else 0
        value = ((value << 4) | nibble) & ((1 << 128) - 1)
    value = (value & ~(0xF << 124)) | (0x6 << 124)
    return "3%032x" % value


def test_tgt_wwid_follows_the_volume_id():
    a, b = "1b4e28ba-2fa1-11d2-883f-0016d3cca427", "1b4e28ba-2fa1-11d2-883f-0016d3cca428"
    assert tgt_wwid(a) == "368ba02fa1011d20883f00016d3cca427"
    assert tgt_wwid(a) != tgt_wwid(b)


class Attached:
    """What the module's tests share: the volume, its attachment and os-brick's device."""

    vol = None
    att_id: str | None = None
    data: dict = {}
    device_info: dict = {}
    disconnected = False


@pytest.fixture(scope="module")
def shared(cinder_stack, initiator):
    """Deletes what the module created, whatever test stopped it (disconnect first)."""
    st = Attached()
    yield st
    cinder = cinder_stack.client()
    if st.device_info and not st.disconnected:
        initiator.brick("disconnect", "--multipath",
                        data={"data": st.data, "device_info": st.device_info})
    if st.att_id:
        cinder.attachments.delete(st.att_id)
    if st.vol is not None:
        wait_status(lambda: cinder.volumes.get(st.vol.id), "available", what="volume")
        cinder.volumes.delete(st.vol)
        wait_gone(lambda: cinder.volumes.get(st.vol.id), what="volume")


@pytest.fixture(scope="module")
def connector(initiator) -> dict:
    """os-brick's connector properties in the guest, as nova sends them (multipath on); one
    call per module: each costs ~20 s under TCG (imports + a privsep daemon)."""
    return initiator.brick("props", "--multipath")


def zprops(san_admin, ds: str) -> dict[str, int]:
    out = san_admin.out(["zfs", "get", "-H", "-p", "-o", "property,value",
                         "used,referenced,volsize", ds])
    return {k: int(v) for k, v in (line.split("\t") for line in out.strip().splitlines())}


def dmesg_since(initiator, marker: str) -> list[str]:
    lines = initiator.out(["dmesg"]).splitlines()
    idx = max((i for i, line in enumerate(lines) if marker in line), default=-1)
    return lines[idx + 1:]


def test_connector_properties_come_from_the_guest(initiator, connector):
    assert connector["initiator"] == initiator.iqn
    assert connector["multipath"] is True and connector["platform"] == "x86_64", connector


def test_attach_with_chap_and_one_multipath_map_per_volume_wwid(cinder, sanvm, initiator,
                                                                shared, connector):
    props = connector
    vol = cinder.volumes.create(1, volume_type="zol-thin", name="osbrick")
    shared.vol = wait_status(lambda: cinder.volumes.get(vol.id), "available", what="volume")
    att = cinder.attachments.create(vol.id, props, None, "rw")
    shared.att_id = att["id"]
    info = att["connection_info"]
    assert info["driver_volume_type"] == "iscsi", info
    # the API returns the driver's data flat (nova nests it under "data"): pass it as is
    data = shared.data = info.get("data", info)
    assert data.get("auth_method") == "CHAP" and data.get("auth_password"), \
        "connection info without CHAP: %s" % sorted(data)
    portals = sanvm.get("iscsi_portals") or ["127.0.0.1:%d" % sanvm["iscsi_port"]]
    assert data.get("target_portals") == portals, (
        "a multipath connector must get every configured portal (target_portals): %s"
        % {k: v for k, v in data.items() if k.startswith("target")})
    t0 = time.monotonic()
    out = initiator.brick("connect", "--multipath", data=data)
    print("connect_volume: %.1f s, device %s" % (time.monotonic() - t0,
                                                  out["device_info"]["path"]))
    cinder.attachments.complete(shared.att_id)
    wait_status(lambda: cinder.volumes.get(vol.id), "in-use", what="volume")
    shared.device_info = out["device_info"]
    # connect_volume returns once the map exists; multipathd may add the other path a moment
    # later (udev under TCG): the map must hold every portal's path within 60 s
    topo = out["topology"]
    deadline = time.monotonic() + 60
    while len(topo["slaves"]) < len(portals) and time.monotonic() < deadline:
        time.sleep(3)
        topo = initiator.brick("topology", out["device_info"]["path"])
    want = tgt_wwid(vol.id)
    assert topo["dm_uuid"] == "mpath-" + want, (
        "no multipath map with the volume's WWID %s: %s\n%s" % (want, topo["dm_uuid"],
                                                              topo["multipath_ll"]))
    assert len(topo["slaves"]) == len(portals), topo
    assert set(topo["path_scsi_id"].values()) == {want}, topo["path_scsi_id"]
    assert topo["size"] == GIB
    assert len([s for s in topo["sessions"] if data["target_iqn"] in s]) == len(portals), \
        topo["sessions"]


def test_o_direct_data_reaches_the_zvol(initiator, san_admin, shared):
    dev = shared.device_info["path"]
    # a repeatable pattern made in the guest (no 4 MiB through SSH)
    initiator.run(["sh", "-c", "yes zol-osbrick-data | head -c %d | dd of=%s bs=1M "
                   "iflag=fullblock oflag=direct conv=fsync status=none" % (4 * MIB, dev)])
    got = initiator.out(["sh", "-c", "dd if=%s bs=1M count=4 iflag=direct status=none "
                         "| sha256sum" % dev]).split()[0]
    want = hashlib.sha256((b"zol-osbrick-data\n" * (4 * MIB // 17 + 1))[:4 * MIB]).hexdigest()
    assert got == want, "O_DIRECT read-back differs from what was written"
    ds = "%s/volume-%s" % (THIN, shared.vol.id)
    on_san = san_admin.out(["sh", "-c", "dd if=/dev/zvol/%s bs=1M count=4 status=none "
                            "| sha256sum" % ds]).split()[0]
    assert on_san == want, "the zvol on the SAN does not hold what the guest wrote"


def test_online_extend_with_a_writer_running(cinder, initiator, shared):
    dev = shared.device_info["path"]
    marker = "zol-extend-%d" % time.time()
    initiator.run(["sh", "-c", "echo %s > /dev/kmsg" % marker])
    writer = initiator.popen(["/usr/local/sbin/zol-brick", "write", dev, "--span-mib", "16",
                              "--seconds", "900", "--stop-file", STOP_FILE])
    try:
        time.sleep(5)  # the writer is in full swing before the LUN changes
        t0 = time.monotonic()
        cinder.volumes.extend(shared.vol, 2)
        vol = wait_status(lambda: cinder.volumes.get(shared.vol.id), "in-use", timeout=300,
                          fail=("error", "error_extending"), what="volume")
        while vol.size != 2:
            time.sleep(1)
            vol = cinder.volumes.get(shared.vol.id)
        t_cinder = time.monotonic() - t0
        out = initiator.brick("extend", "--multipath", data=shared.data)
        t_brick = time.monotonic() - t0 - t_cinder
        time.sleep(5)  # the writer keeps going on the grown device
    finally:
        initiator.run(["touch", STOP_FILE], check=False)
        stdout, stderr = writer.communicate(timeout=600)
    assert writer.returncode == 0, "writer failed: %s" % stderr[-3000:]
    w = json.loads(stdout)
    kernel = dmesg_since(initiator, marker)
    mpd = initiator.out(["journalctl", "-q", "-u", "multipathd", "--since", "-10min",
                         "--no-pager"], check=False)
    print("extend: cinder %.1f s, os-brick extend_volume %.1f s -> %s; writer %s" % (
        t_cinder, t_brick, out["new_size"],
        {k: w[k] for k in ("writes", "generations", "max_latency", "seconds")}))
    print("kernel during extend:\n" + "\n".join(kernel[-40:]))
    print("multipathd:\n" + "\n".join(mpd.splitlines()[-20:]))
    assert out["new_size"] == 2 * GIB, "os-brick extend_volume saw %s" % out["new_size"]
    topo = initiator.brick("topology", dev)
    assert topo["size"] == 2 * GIB and all(s == "running" for s in
                                          topo["path_state"].values()), topo
    assert not w["errors"], "I/O errors during online extend: %s\nkernel:\n%s" % (
        w["errors"][:10], "\n".join(kernel[-40:]))
    # every block written at least once read back with its last generation, and the writer
    # ran from before Cinder's extend until after os-brick saw the new size
    assert not w["blocks_bad"], w
    assert w["blocks_verified"] == min(w["writes"], 16 * MIB // w["block"]), w
    assert w["writes"] > 0 and w["seconds"] >= t_cinder + t_brick, w
    assert not [line for line in kernel if "I/O error" in line or "critical" in line], kernel


def test_a_second_volume_gets_its_own_map_and_leaves_the_first_alone(cinder, initiator,
                                                                    shared, connector):
    """Two LUNs never share a WWID (multipathd would merge them into one map), and detaching
    one volume leaves the other's map and paths untouched."""
    props = connector
    vol = cinder.volumes.create(1, volume_type="zol-thick", name="osbrick-2")
    vol = wait_status(lambda: cinder.volumes.get(vol.id), "available", what="volume")
    att_id = None
    try:
        att = cinder.attachments.create(vol.id, props, None, "rw")
        att_id = att["id"]
        data = att["connection_info"]
        out = initiator.brick("connect", "--multipath", data=data)
        try:
            assert out["topology"]["dm_uuid"] == "mpath-" + tgt_wwid(vol.id), out["topology"]
            assert tgt_wwid(vol.id) != tgt_wwid(shared.vol.id)
            maps = initiator.brick("state")["dm"]
            assert sorted(maps.values()) == sorted(
                "mpath-" + tgt_wwid(v) for v in (vol.id, shared.vol.id)), maps
        finally:
            initiator.brick("disconnect", "--multipath",
                            data={"data": data, "device_info": out["device_info"]})
        first = initiator.brick("topology", shared.device_info["path"])
        assert first["dm_uuid"] == "mpath-" + tgt_wwid(shared.vol.id), first
        assert all(s == "running" for s in first["path_state"].values()), first
    finally:
        if att_id:
            cinder.attachments.delete(att_id)
        wait_status(lambda: cinder.volumes.get(vol.id), "available", what="volume")
        cinder.volumes.delete(vol)
        wait_gone(lambda: cinder.volumes.get(vol.id), what="volume")


def _dm_paths(initiator) -> tuple[int, int]:
    """(active ready, failed) paths of the guest's maps, from `multipath -ll`."""
    lines = initiator.out(["multipath", "-ll"]).splitlines()
    return (sum(" active ready " in line for line in lines),
            sum(" failed " in line for line in lines))


def _wait_dm_paths(initiator, want: tuple[int, int], timeout: float) -> float:
    t0 = time.monotonic()
    while (got := _dm_paths(initiator)) != want:
        if time.monotonic() - t0 > timeout:
            raise AssertionError("multipath paths (active, failed) = %s, wanted %s after %.0f s\n%s"
                                 % (got, want, timeout, initiator.out(["multipath", "-ll"])))
        time.sleep(2)
    return time.monotonic() - t0


def test_losing_one_portal_fails_over_without_an_io_error(initiator, shared):
    """The second portal's path goes away (its listener in the guest stops: connection reset),
    dm-multipath fails that path and the writer's I/O carries on over the first one; when the
    portal is back the path is reinstated.  Measured: failover ~5 s (os-brick's 5 s session
    replacement timeout), the write in flight on the lost path is retried on the other one."""
    unit = initiator.state["forwards"][-1]["unit"]
    dev = shared.device_info["path"]
    writer = initiator.popen(["/usr/local/sbin/zol-brick", "write", dev, "--span-mib", "4",
                              "--seconds", "600", "--stop-file", STOP_FILE])
    try:
        time.sleep(5)
        initiator.run(["systemctl", "stop", unit])
        failed_after = _wait_dm_paths(initiator, (1, 1), 120)
        time.sleep(5)  # writing on one path only
        initiator.run(["systemctl", "start", unit])
        back_after = _wait_dm_paths(initiator, (2, 0), 240)
    finally:
        initiator.run(["systemctl", "start", unit], check=False)
        initiator.run(["touch", STOP_FILE], check=False)
        stdout, stderr = writer.communicate(timeout=600)
    assert writer.returncode == 0, "writer failed: %s" % stderr[-3000:]
    w = json.loads(stdout)
    print("path lost -> failed in %.0f s, reinstated %.0f s after the portal came back; writer %s"
          % (failed_after, back_after, {k: w[k] for k in ("writes", "max_latency", "seconds")}))
    assert not w["errors"] and not w["blocks_bad"] and w["writes"] > 0, w


def _used_after_settle(san_admin, ds: str, below: int | None = None,
                       timeout: float = 60) -> int:
    """`used` of `ds` once ZFS has synced the frees (they land at the next txg, ~5 s): polls
    until it is below `below` or stops moving."""
    deadline = time.monotonic() + timeout
    san_admin.run(["zpool", "sync", "zol"])
    last = zprops(san_admin, ds)["used"]
    while time.monotonic() < deadline:
        time.sleep(3)
        san_admin.run(["zpool", "sync", "zol"])
        now = zprops(san_admin, ds)["used"]
        if (below is not None and now < below) or (below is None and now == last):
            return now
        last = now
    return last


def test_discard_frees_space_on_the_thin_zvol(initiator, san_admin, shared):
    """The SAN image's tgt (Debian's 1.0.85 + upstream fa97d3d: BLKDISCARD on a block device,
    `zol-wrapper capabilities` says unmap=yes) frees zvol space for UNMAP: the driver announces
    discard on the thin backend by itself, the LUN has thin_provisioning=1, and blkdiscard and
    fstrim on the multipath device give the space back on the SAN (`zfs get used`)."""
    caps = san_admin.out(["/usr/bin/dpkg-query", "-W", "-f", "${Version}", "tgt"]).strip()
    assert caps.endswith("+zol1"), "the SAN image's tgt is not the patched build: %s" % caps
    assert shared.data.get("discard") is True, "discard not announced: %s" % shared.data
    # the multipath map (os-brick may have returned a single path that multipathd took over
    # later: a path held by the map refuses blkdiscard's exclusive open)
    mapped = "/dev/mapper/" + tgt_wwid(shared.vol.id)
    dev = mapped if initiator.run(["test", "-b", mapped], check=False).returncode == 0 \
        else shared.device_info["path"]
    topo = initiator.brick("topology", dev)
    assert topo["discard_max_bytes"] > 0, "the LUN announces no discard (thin_provisioning)"
    ds = "%s/volume-%s" % (THIN, shared.vol.id)
    since = san_admin.out(["date", "+%Y-%m-%d %H:%M:%S"]).strip()
    marker = "zol-discard-%d" % time.time()
    initiator.run(["sh", "-c", "echo %s > /dev/kmsg" % marker])
    n = 32 * MIB
    off = 512 * MIB
    initiator.run(["sh", "-c", "head -c %d /dev/urandom | dd of=%s bs=1M seek=%d "
                   "iflag=fullblock oflag=direct conv=fsync status=none" % (n, dev, off // MIB)])
    written = _used_after_settle(san_admin, ds)
    t0 = time.monotonic()
    initiator.run(["blkdiscard", "-o", str(off), "-l", str(n), dev])
    took = time.monotonic() - t0
    freed = written - _used_after_settle(san_admin, ds, below=written - n * 3 // 4)
    print("blkdiscard %d MiB: %.1f s, used %d -> freed %d bytes" % (n // MIB, took, written,
                                                                   freed))
    assert freed >= n * 3 // 4, "blkdiscard of %d bytes freed only %d on the zvol" % (n, freed)
    # discarded blocks read back as zeros
    zeros = initiator.out(["sh", "-c", "dd if=%s bs=1M skip=%d count=%d iflag=direct "
                           "status=none | tr -d '\\000' | wc -c" % (dev, off // MIB, n // MIB)])
    assert zeros.strip() == "0", "discarded range does not read back as zeros"

    # a filesystem's fstrim: mkfs without its own discard pass, a file written and removed
    initiator.run(["blkdiscard", dev])
    base = _used_after_settle(san_admin, ds)
    mnt = "/mnt/zol-trim"
    initiator.run(["sh", "-c", "mkfs.ext4 -q -F -E nodiscard %s && mkdir -p %s && "
                   "mount -o nodiscard %s %s" % (dev, mnt, dev, mnt)])
    try:
        initiator.run(["sh", "-c", "head -c %d /dev/urandom > %s/data && sync" % (n, mnt)])
        full = _used_after_settle(san_admin, ds)
        initiator.run(["sh", "-c", "rm %s/data && sync" % mnt])
        trim = initiator.out(["fstrim", "-v", mnt]).strip()
    finally:
        initiator.run(["umount", mnt], check=False)
    trimmed = full - _used_after_settle(san_admin, ds, below=full - n * 3 // 4)
    print("fstrim: %s; used after blkdiscard %d, with the file %d, freed %d"
          % (trim, base, full, trimmed))
    assert full - base >= n * 3 // 4, (base, full)
    assert trimmed >= n * 3 // 4, "fstrim freed only %d of the %d-byte file" % (trimmed, n)
    errors = [line for line in dmesg_since(initiator, marker)
              if "critical target error" in line or "I/O error" in line]
    assert not errors, errors
    tgt_log = san_admin.out(["journalctl", "-q", "-u", "tgt", "--since", since, "--no-pager"],
                            check=False)
    assert "Failed to punch hole" not in tgt_log and "io error" not in tgt_log, tgt_log


def test_thick_backend_announces_no_discard(cinder, san_admin, connector):
    """A zol-thick volume's connection info has discard=False and its LUN no thin
    provisioning (a thick zvol keeps its reservation: UNMAP would free nothing)."""
    vol = cinder.volumes.create(1, volume_type="zol-thick", name="osbrick-thick")
    vol = wait_status(lambda: cinder.volumes.get(vol.id), "available", what="volume")
    att = None
    try:
        att = cinder.attachments.create(vol.id, connector, None, "rw")
        data = att["connection_info"].get("data", att["connection_info"])
        assert data.get("discard") is False, data
        out = san_admin.out(["/usr/local/sbin/zol-ssh-wrapper", "/etc/zol/wrapper.conf",
                             "--", "zol-wrapper", "show-exports"])
        (exp,) = [e for e in map(json.loads, out.splitlines())
                  if e["iqn"] == data["target_iqn"]]
        assert [lun["thin"] for lun in exp["luns"]] == [False], exp
    finally:
        if att is not None:
            cinder.attachments.delete(att["id"])
        wait_status(lambda: cinder.volumes.get(vol.id), "available", what="volume")
        cinder.volumes.delete(vol)
        wait_gone(lambda: cinder.volumes.get(vol.id), what="volume")


def test_disconnect_leaves_no_session_and_no_device(cinder, initiator, shared):
    out = initiator.brick("disconnect", "--multipath",
                          data={"data": shared.data, "device_info": shared.device_info})
    shared.disconnected = True
    st = out["state"]
    assert not st["sessions"] and not st["sd"] and not st["dm"], st
    cinder.attachments.delete(shared.att_id)
    shared.att_id = None
    wait_status(lambda: cinder.volumes.get(shared.vol.id), "available", what="volume")
