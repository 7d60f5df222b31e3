"""The SAN test bed itself: real OpenZFS, tgt and sshd in the VM, data through real iSCSI."""
from __future__ import annotations

import uuid

import pytest

from tests.helpers import iscsi

pytestmark = pytest.mark.system


def test_openzfs_kernel_module_answers(san_admin):
    out = san_admin.out(["zfs", "version"])
    lines = out.split()
    assert lines[0].startswith("zfs-2."), out
    assert any(line.startswith("zfs-kmod-2.") for line in lines), "no kernel module: " + out


def test_pool_online_and_parents_exist(sanvm, san_admin):
    assert san_admin.out(["zpool", "list", "-H", "-o", "health", sanvm["pool"]]).strip() == "ONLINE"
    names = san_admin.out(["zfs", "list", "-H", "-o", "name", "-r", sanvm["pool"]]).split()
    for parent in sanvm["parents"]:
        assert parent in names


def test_cinder_key_is_forced_through_the_wrapper(sanvm, san_admin):
    """The cinder key must never reach a shell: `id` is not in the wrapper's grammar."""
    r = san_admin.run(["id"], key="cinder", check=False)
    assert r.returncode != 0
    assert "uid=0" not in r.stdout


def test_image_ships_the_patched_tgt_and_the_wrapper_says_it_can_unmap(san_admin):
    """tgt = Debian's source + upstream fa97d3d (tools/sanvm.d), held at +zol1; the wrapper's
    `capabilities` (what the driver announces discard from) reads that version."""
    version = san_admin.out(["dpkg-query", "-W", "-f", "${Version}", "tgt"]).strip()
    assert version.endswith("+zol1"), version
    assert san_admin.out(["apt-mark", "showhold"]).split() == ["tgt"]
    installed = set(san_admin.out(["dpkg-query", "-W", "-f", "${Package}\\n"]).split())
    left = installed & {"debhelper", "librbd-dev", "libglusterfs-dev", "docbook-xsl"}
    assert not left, "tgt build-deps left in the image: %s" % sorted(left)
    caps = san_admin.out(["zol-wrapper", "capabilities"], key="cinder")
    assert caps == "unmap=yes send=yes tgt=%s\n" % version, caps


def test_zvol_exported_with_tgtadm_carries_data_over_iscsi(sanvm, san_admin):
    ds = "%s/sanvm-selftest-%s" % (sanvm["parents"][0], uuid.uuid4().hex[:8])
    iqn = "iqn.2010-10.org.openstack:sanvm-selftest-%s" % uuid.uuid4().hex[:8]
    tid = "999"
    tgt = ["tgtadm", "--lld", "iscsi"]
    san_admin.run(["zfs", "create", "-s", "-V", "64M", ds])
    try:
        san_admin.run(["udevadm", "settle"])
        san_admin.run(["test", "-b", "/dev/zvol/" + ds])
        san_admin.run(tgt + ["--mode", "target", "--op", "new", "--tid", tid,
                             "--targetname", iqn])
        san_admin.run(tgt + ["--mode", "logicalunit", "--op", "new", "--tid", tid, "--lun", "1",
                             "--backing-store", "/dev/zvol/" + ds])
        san_admin.run(tgt + ["--mode", "target", "--op", "bind", "--tid", tid,
                             "--initiator-address", "ALL"])
        url = iscsi.iscsi_url("127.0.0.1", sanvm["iscsi_port"], iqn, 1)
        assert iscsi.capacity(url) == 64 * 1024 * 1024
        data = iscsi.random_bytes(16 * 1024 * 1024)
        iscsi.write(url, data)
        back = iscsi.read(url, len(data))
        assert iscsi.sha256(back) == iscsi.sha256(data)
        # and the bytes really are on the zvol, not in some cache of the initiator
        on_san = san_admin.out(["sh", "-c",
                                "head -c %d /dev/zvol/%s | sha256sum" % (len(data), ds)])
        assert on_san.split()[0] == iscsi.sha256(data)
    finally:
        san_admin.run(tgt + ["--mode", "target", "--op", "delete", "--force", "--tid", tid],
                      check=False)
        for _ in range(10):
            if san_admin.run(["zfs", "destroy", ds], check=False).returncode == 0:
                break
            san_admin.run(["sleep", "1"])
    assert ds not in san_admin.out(["zfs", "list", "-H", "-o", "name", "-r", sanvm["pool"]])
    assert iqn not in san_admin.out(tgt + ["--mode", "target", "--op", "show"])
