"""The driver against real OpenZFS + tgtd in the SAN VM, data checked through a real iSCSI
initiator (libiscsi via qemu-img) on the forwarded portal."""
from __future__ import annotations

import pytest

from tests.helpers import iscsi
from tests.plugins.zol_driver_sys import iscsi_write_flushed

pytestmark = [pytest.mark.system]

GIB = 1024 ** 3
MIB = 1024 ** 2


def connect(drv, sanvm, volume):
    """create_export + initialize_connection -> a libiscsi URL built from Cinder's data."""
    volume.update(drv.create_export(None, volume, {"initiator": "iqn.1994-05.com.redhat:x"}))
    data = drv.initialize_connection(volume, {"initiator": "iqn.1994-05.com.redhat:x",
                                              "ip": "127.0.0.1"})["data"]
    host, port = data["target_portal"].rsplit(":", 1)
    assert (host, int(port)) == ("127.0.0.1", sanvm["iscsi_port"])
    return iscsi.iscsi_url(host, int(port), data["target_iqn"], data["target_lun"],
                           data.get("auth_username"), data.get("auth_password"))


def disconnect(drv, volume):
    drv.terminate_connection(volume, {"initiator": "iqn.1994-05.com.redhat:x"})
    drv.remove_export(None, volume)


def test_lifecycle_with_data(zol_thin, sanvm, san_admin, zol_objects):
    """write -> snapshot -> overwrite -> clone == snapshot -> revert -> extend -> clone of a
    volume -> delete all; CHAP is on for every export."""
    drv = zol_objects.drv = zol_thin
    a = zol_objects.volume(1)
    drv.create_volume(a)
    url_a = connect(drv, sanvm, a)
    assert a["provider_auth"].startswith("CHAP ")
    old = iscsi.random_bytes(4 * MIB)
    iscsi_write_flushed(url_a, old)
    assert iscsi.read(url_a, len(old)) == old

    s = zol_objects.snapshot(a)
    drv.create_snapshot(s)
    new = iscsi.random_bytes(4 * MIB)
    iscsi_write_flushed(url_a, new)

    b = zol_objects.volume(1)
    drv.create_volume_from_snapshot(b, s)               # the snapshot kept its content
    url_b = connect(drv, sanvm, b)
    assert iscsi.read(url_b, len(old)) == old

    drv.revert_to_snapshot(None, a, s)                  # exported and all
    assert iscsi.read(url_a, len(old)) == old

    drv.extend_volume(a, 2)
    a["size"] = 2
    assert iscsi.capacity(url_a) == 2 * GIB             # the initiator sees the new size

    c = zol_objects.volume(2)
    drv.create_cloned_volume(c, a)
    url_c = connect(drv, sanvm, c)
    assert iscsi.capacity(url_c) == 2 * GIB
    assert iscsi.read(url_c, len(old)) == old

    # a wrong CHAP secret is refused by the target
    bad = url_a.replace(a["provider_auth"].split()[2], "WrongSecret12345")
    with pytest.raises(RuntimeError):
        iscsi.read(bad, 512, timeout=60)

    for v in (a, b, c):
        disconnect(drv, v)
    drv.delete_snapshot(s)                              # b depends on it: deferred
    for v in (b, c, a):
        drv.delete_volume(v)


def test_thick_copy_backend(zol_thick, sanvm, san_admin, zol_objects):
    """thick zvols reserve their size; copy mode gives independent volumes."""
    drv = zol_objects.drv = zol_thick
    parent = sanvm["parents"][1]
    a = zol_objects.volume(1)
    drv.create_volume(a)
    ds = f"{parent}/{a['name']}"
    refres = int(san_admin.out(["zfs", "get", "-H", "-p", "-o", "value", "refreservation",
                                ds]))
    assert refres >= GIB
    url_a = connect(drv, sanvm, a)
    data = iscsi.random_bytes(4 * MIB)
    iscsi_write_flushed(url_a, data)
    s = zol_objects.snapshot(a)
    drv.create_snapshot(s)
    b = zol_objects.volume(1)
    drv.create_volume_from_snapshot(b, s)
    origin = san_admin.out(["zfs", "get", "-H", "-o", "value", "origin",
                            f"{parent}/{b['name']}"]).strip()
    assert origin == "-"                                # independent of a
    url_b = connect(drv, sanvm, b)
    assert iscsi.read(url_b, len(data)) == data
    disconnect(drv, a)
    drv.delete_snapshot(s)
    drv.delete_volume(a)                                # no dependency: really gone
    assert iscsi.read(url_b, len(data)) == data
    disconnect(drv, b)
    drv.delete_volume(b)
