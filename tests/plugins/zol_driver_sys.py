"""Fixtures: ZFSonLinuxISCSIDriver instances against the real SAN VM, through the restricted
cinder key, the wrapper and the persistent SSHExecutor (exactly as cinder-volume runs it)."""
from __future__ import annotations

import itertools
import logging
import uuid

import pytest

LOG = logging.getLogger(__name__)
_groups = itertools.count()


def make_driver(sanvm: dict, executor=None, **overrides):
    """A set-up driver on its own backend section (overrides = cinder.conf values)."""
    from cinder.volume import configuration
    from oslo_config import cfg

    from zol_driver import driver as zdriver
    from zol_driver import opts

    group = overrides.pop("group", None) or f"zol-sys-{next(_groups)}"
    conf = configuration.Configuration(zdriver.driver.volume_opts, config_group=group)
    conf.append_config_values(zdriver.san.san_opts)
    conf.append_config_values(opts.zol_opts)
    values = {
        "volume_backend_name": group, "san_ip": sanvm["host"],
        "san_ssh_port": sanvm["ssh_port"], "san_login": sanvm["user"],
        "san_private_key": sanvm["keys"]["cinder"],
        "zol_ssh_known_hosts_file": sanvm["known_hosts"],
        # The target advertises the guest's 10.0.2.15: use the forwarded portal.
        "target_ip_address": "127.0.0.1", "target_port": sanvm["iscsi_port"],
        "zol_parent_dataset": sanvm["parents"][0],
    }
    values.update(overrides)
    for k, v in values.items():
        cfg.CONF.set_override(k, v, group=group)
    drv = zdriver.ZFSonLinuxISCSIDriver(configuration=conf, host="sys@" + group,
                                        zol_executor=executor)
    drv.do_setup(None)
    drv.check_for_setup_error()
    return drv


@pytest.fixture(scope="session")
def zol_driver_factory(sanvm):
    """make(**cinder.conf overrides) -> a set-up driver; all closed at the end."""
    made = []

    def make(**overrides):
        drv = make_driver(sanvm, **overrides)
        made.append(drv)
        return drv

    yield make
    for drv in made:
        if drv.executor is not None:
            drv.executor.close()


@pytest.fixture(scope="session")
def zol_thin(zol_driver_factory):
    """The thin backend (zol/cinder), CHAP on."""
    return zol_driver_factory(group="zol-sys-thin", use_chap_auth=True)


@pytest.fixture(scope="session")
def zol_thick(zol_driver_factory, sanvm):
    """The thick backend (zol/cinder-thick), independent copies."""
    return zol_driver_factory(group="zol-sys-thick", san_thin_provision=False,
                              zol_parent_dataset=sanvm["parents"][1], zol_clone_mode="copy",
                              zol_volblocksize=16384)


class Objects:
    """Volume/snapshot dicts with fresh UUIDs; remembers them to check for leaks."""

    def __init__(self):
        self.ids: list[str] = []
        self.volumes: list[tuple[object, dict]] = []
        self.snapshots: list[tuple[object, dict]] = []
        self.drv = None      # the driver used for best-effort cleanup after a failure

    def volume(self, size=1):
        vid = str(uuid.uuid4())
        self.ids.append(vid)
        vol = {"id": vid, "name": "volume-" + vid, "size": size, "provider_location": None,
               "provider_auth": None}
        self.volumes.append((self.drv, vol))
        return vol

    def snapshot(self, volume):
        sid = str(uuid.uuid4())
        self.ids.append(sid)
        snap = {"id": sid, "name": "snapshot-" + sid, "volume_name": volume["name"],
                "volume_size": volume["size"], "volume_id": volume["id"]}
        self.snapshots.append((self.drv, snap))
        return snap

    def cleanup(self) -> None:
        """Best effort, through the driver (after a failed test)."""
        for drv, snap in reversed(self.snapshots):
            if drv is not None:
                try:
                    drv.delete_snapshot(snap)
                except Exception as exc:
                    LOG.warning("cleanup of %s failed: %s", snap["name"], exc)
        for _ in range(2):    # twice: hidden volumes are collected when their clones go
            for drv, vol in reversed(self.volumes):
                if drv is not None:
                    try:
                        drv.delete_volume(vol)
                    except Exception as exc:
                        LOG.warning("cleanup of %s failed: %s", vol["name"], exc)


def accounts(san_admin) -> set[str]:
    out = san_admin.out(["tgtadm", "--lld", "iscsi", "--mode", "account", "--op", "show"])
    return set(out.split()[2:])


def leftovers(san_admin, ids, accounts_before=None) -> list[str]:
    """Datasets, targets and (new) CHAP accounts on the SAN left by a test."""
    zl = san_admin.out(["zfs", "list", "-H", "-o", "name", "-t", "all", "-r", "zol"])
    tg = san_admin.out(["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show"])
    found = [n for n in zl.split() if any(i in n for i in ids)]
    found += [line for line in tg.splitlines()
              if line.startswith("Target") and any(i in line for i in ids)]
    if accounts_before is not None:
        found += ["account " + a for a in sorted(accounts(san_admin) - accounts_before)]
    return found


@pytest.fixture
def zol_objects(san_admin):
    """Fresh volume/snapshot objects; the test fails if any of them is left on the SAN."""
    objs = Objects()
    before = accounts(san_admin)
    yield objs
    left = leftovers(san_admin, objs.ids, before)
    if left:
        objs.cleanup()
    assert not left, f"leaked on the SAN: {left}"


def iscsi_write_flushed(url: str, data: bytes, timeout: float = 600) -> None:
    """Write through iSCSI AND flush (SYNCHRONIZE CACHE), like a guest's fsync.

    tests/helpers/iscsi.write uses qemu-img's default output cache mode "unsafe", which never
    flushes: tgtd then holds the data in the SAN's page cache (write-back, WCE=1) and a ZFS
    snapshot taken right after does not contain it - correct SCSI semantics, but not what a
    test that snapshots "after writing" means.  -t writeback makes qemu flush on close.
    """
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile(prefix="iscsi-w-") as f:
        f.write(data)
        f.flush()
        r = subprocess.run(["qemu-img", "convert", "-n", "-t", "writeback", "-f", "raw",
                            "-O", "raw", f.name, url], capture_output=True, text=True,
                           timeout=timeout, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"iSCSI write to {url} failed: {r.stderr.strip()}")
