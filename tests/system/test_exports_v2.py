"""Protocol-2 exports on the real SAN VM (OpenZFS zvols, the SAN's tgtd, libiscsi initiator).

* SCSI identity from the volume id: VPD 0x80 serial and 0x83 designators name the volume, are
  different for two volumes, and the same after `systemctl restart tgt` (restore from the
  wrapper's state file) and after ensure_export;
* thin backend: UNMAP (LBPU, discard) announced only with report_discard_supported: tgt 1.0.85
  cannot free space on a zvol (its UNMAP is fallocate(PUNCH_HOLE)), shown here;
* online extend: libiscsi sees the new capacity of the SAME target (tid unchanged);
* CHAP is on by default (no use_chap_auth set) and enforced;
* a shared chap_username account survives the removal of one of its targets and the other
  target stays CHAP-protected;
* secrets live only in the root-only state file (not in ZFS properties, not in the log).
"""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers import iscsi
from tests.system.test_driver_data import connect, disconnect

pytestmark = [pytest.mark.system]

MIB = 1024 ** 2
GIB = 1024 ** 3


def inq(url: str, page: int) -> str:
    r = subprocess.run(["iscsi-inq", "-e", "1", "-c", str(page), url], capture_output=True,
                       text=True, errors="replace", timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout


def unauthenticated(url: str) -> str:
    return url.replace(url[len("iscsi://"):url.index("@") + 1], "")


def test_identity_follows_the_volume_and_chap_is_default(zol_driver_factory, sanvm, san_admin,
                                                         zol_objects):
    drv = zol_objects.drv = zol_driver_factory(group="zol-sys-v2-default")   # CHAP unset
    a, b = zol_objects.volume(1), zol_objects.volume(1)
    urls = {}
    for v in (a, b):
        drv.create_volume(v)
        urls[v["id"]] = connect(drv, sanvm, v)
        assert v["provider_auth"].startswith("CHAP ")
    ua, ub = urls[a["id"]], urls[b["id"]]
    assert a["id"] in inq(ua, 128) and b["id"] in inq(ub, 128)
    ida, idb = inq(ua, 131), inq(ub, 131)
    assert a["id"] in ida and ida != idb
    # CHAP enforced: no login without the volume's credentials
    with pytest.raises(RuntimeError):
        iscsi.read(unauthenticated(ua), 512, timeout=60)
    # the same identity after tgtd restarts (the drop-in restores from the state file)...
    san_admin.run(["systemctl", "restart", "tgt"])
    assert inq(ua, 131) == ida and inq(ub, 131) == idb
    # ...and after ensure_export re-creates a vanished target (another tid, same WWN)
    tid = a["provider_location"].split(",")[1].split()[0]
    san_admin.run(["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "delete", "--force",
                   "--tid", tid])
    a.update(drv.ensure_export(None, a) or {})
    assert inq(ua, 131) == ida
    # secrets: only in the root-only state file, never in ZFS properties or the log
    _, user, secret = a["provider_auth"].split()
    st = san_admin.out(["stat", "-c", "%a %U", "/var/lib/zol-ssh-wrapper",
                        "/var/lib/zol-ssh-wrapper/exports.json"]).split("\n")
    assert st[:2] == ["700 root", "600 root"]
    state = json.loads(san_admin.out(["cat", "/var/lib/zol-ssh-wrapper/exports.json"]))
    assert state["accounts"][user] == {"secret": secret}
    props = san_admin.out(["zfs", "get", "-H", "-o", "value", "all",
                           f"{sanvm['parents'][0]}/{a['name']}"])
    assert secret not in props
    assert secret not in san_admin.out(["cat", "/var/log/zol-ssh-wrapper.log"])
    for v in (a, b):
        disconnect(drv, v)
        drv.delete_volume(v)


def test_no_discard_by_default_and_extend_is_seen_online(zol_thin, zol_driver_factory, sanvm,
                                                         san_admin, zol_objects):
    """Stock tgt 1.0.85 answers UNMAP with fallocate(PUNCH_HOLE) on the zvol, which zvols
    refuse; the SAN image's +zol build (upstream fa97d3d) uses BLKDISCARD.  By default
    (report_discard_supported unset) discard follows what the SAN reports
    (`zol-wrapper capabilities`); with report_discard_supported=True the LUN announces UNMAP
    whatever the tgt, and only a capable tgt frees space.  Online extend: libiscsi sees the
    new capacity on the same target."""
    version = san_admin.out(["dpkg-query", "-W", "-f", "${Version}", "tgt"])
    capable = "+zol" in version or not version.startswith("1:1.0.85")
    drv = zol_objects.drv = zol_thin
    a = zol_objects.volume(1)
    drv.create_volume(a)
    url = connect(drv, sanvm, a)
    assert drv.initialize_connection(a, {"initiator": "iqn.x"})["data"]["discard"] is capable
    assert ("lbpu:1" if capable else "lbpu:0") in inq(url, 178).replace(" ", "").lower()
    # the operator's switch, on the same SAN: the LUN announces UNMAP...
    on = zol_driver_factory(group="zol-sys-v2-discard", use_chap_auth=True,
                            report_discard_supported=True)
    b = zol_objects.volume(1)
    on.create_volume(b)
    url_b = connect(on, sanvm, b)
    assert on.initialize_connection(b, {"initiator": "iqn.x"})["data"]["discard"] is True
    assert "lbpu:1" in inq(url_b, 178).replace(" ", "").lower()
    # ...and frees space only with a capable tgt (upstream 1.0.90 / fa97d3d, our +zol build)
    ds = f"{sanvm['parents'][0]}/{b['name']}"
    iscsi.write(url_b, iscsi.random_bytes(16 * MIB))
    san_admin.run(["zpool", "sync"])
    full = int(san_admin.out(["zfs", "get", "-Hp", "-o", "value", "used", ds]))
    subprocess.run(["qemu-io", "-f", "raw", "-d", "unmap", "-t", "writeback", "-c",
                    "discard 0 16M", "-c", "flush", url_b], capture_output=True, text=True,
                   timeout=600, check=False)
    san_admin.run(["zpool", "sync"])
    after = int(san_admin.out(["zfs", "get", "-Hp", "-o", "value", "used", ds]))
    if not capable:
        assert after >= full * 0.9, (full, after)
        journal = san_admin.out(["journalctl", "-u", "tgt", "-n", "50", "--no-pager"])
        assert "Failed to punch hole for UNMAP" in journal
    else:
        assert after < full / 4, (version, full, after)
    disconnect(on, b)
    on.delete_volume(b)
    # online extend: the same target (tid), the new capacity for the initiator
    before = san_admin.out(["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show"])
    drv.extend_volume(a, 2)
    assert iscsi.capacity(url) == 2 * GIB
    after = san_admin.out(["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show"])
    head = before.split(a["name"])[0] + a["name"]
    assert after.startswith(head)                    # same tid for the IQN
    disconnect(drv, a)
    drv.delete_volume(a)


def test_shared_account_survives_and_keeps_protecting(zol_driver_factory, sanvm, san_admin,
                                                      zol_objects):
    user = "zolshared" + zol_objects.volume(1)["id"][:6]
    drv = zol_objects.drv = zol_driver_factory(group="zol-sys-v2-shared", chap_username=user,
                                               chap_password="SharedSecret1234")
    zol_objects.volumes.pop()
    zol_objects.ids.pop()
    a, b = zol_objects.volume(1), zol_objects.volume(1)
    urls = {}
    for v in (a, b):
        drv.create_volume(v)
        urls[v["id"]] = connect(drv, sanvm, v)
        assert v["provider_auth"] == f"CHAP {user} SharedSecret1234"
    disconnect(drv, a)
    accounts = san_admin.out(["tgtadm", "--lld", "iscsi", "--mode", "account", "--op", "show"])
    assert user in accounts.split()
    ub = urls[b["id"]]
    assert iscsi.read(ub, 512)                       # b still works with the shared account
    with pytest.raises(RuntimeError):                # ...and is NOT open without it
        iscsi.read(unauthenticated(ub), 512, timeout=60)
    disconnect(drv, b)
    accounts = san_admin.out(["tgtadm", "--lld", "iscsi", "--mode", "account", "--op", "show"])
    assert user not in accounts.split()
    for v in (a, b):
        drv.delete_volume(v)
