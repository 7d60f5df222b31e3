"""Cinder's own in-process functional harness driving zol_driver against the SAN VM.

Run by tests/system/test_cinder_inprocess.py in a child `python -m unittest` process, never
imported by pytest: cinder.tests.unit monkey-patches the interpreter with eventlet at import
(which would leak into every other test of the session) and its TestCase cleanup deletes
instance attributes that pytest's unittest integration still reads.

The harness (cinder/tests/functional/functional_helpers.py, shipped in the Cinder wheel) runs
cinder-api, cinder-scheduler and cinder-volume in this one process with fake RPC and an
in-memory sqlite: Cinder's real API, scheduler filters, volume manager and flows, no rabbitmq,
starting in seconds.  The one backend is zol-thin (zol/cinder, thin) on the SAN VM whose
state.json is named by $ZOL_SANVM_STATE.
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from cinder.tests.functional import functional_helpers  # noqa: I100 (monkey-patches first)
from cinder.volume.drivers.san import san
from oslo_config import cfg

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.helpers import iscsi  # noqa: E402
from tests.plugins.cinder import cinder_client, iscsi_write_flushed, wait_gone, wait_status  # noqa: E402
from zol_driver import opts as zol_opts  # noqa: E402

CONF = cfg.CONF
GIB = 1024 ** 3
MIB = 1024 ** 2
PARENT = "zol/cinder"
CONNECTOR = {"initiator": "iqn.1993-08.org.debian:01:zol-inprocess", "ip": "127.0.0.1",
             "host": "zol-compute-inprocess", "multipath": False, "platform": "x86_64",
             "os_type": "linux", "do_local_attach": False}
BACKEND_GROUP = "backend_defaults"
PASTE = Path(sys.prefix) / "etc" / "cinder" / "api-paste.ini"


def san_state() -> dict:
    p = Path(os.environ["ZOL_SANVM_STATE"])
    return json.loads((p / "state.json" if p.is_dir() else p).read_text())


class ZolInProcessTest(functional_helpers._FunctionalTestBase):
    """One backend, real zol driver, real SAN; API driven through python-cinderclient."""

    _osapi_version = "3.64"

    def _get_flags(self):
        san_vm = san_state()
        self.san = san_vm
        # Without enabled_backends the harness's one volume manager reads its backend options
        # from [backend_defaults]; the driver registers its own there only at construction,
        # after these flags are set, so register them first.
        for opt in [*san.san_opts, *zol_opts.zol_opts]:
            with contextlib.suppress(cfg.DuplicateOptError):
                CONF.register_opt(opt, group=BACKEND_GROUP)
        f = super()._get_flags()
        values = {
            "volume_driver": "zol_driver.driver.ZFSonLinuxISCSIDriver",
            "volume_backend_name": "zol-thin",
            "san_ip": san_vm["host"], "san_ssh_port": san_vm["ssh_port"],
            "san_login": san_vm["user"], "san_private_key": san_vm["keys"]["cinder"],
            "zol_ssh_known_hosts_file": san_vm["known_hosts"],
            "zol_parent_dataset": PARENT, "san_thin_provision": True,
            "target_prefix": san_vm["iqn_prefix"], "target_ip_address": "127.0.0.1",
            "target_port": san_vm["iscsi_port"], "use_chap_auth": True,
            "max_over_subscription_ratio": 20.0, "reserved_percentage": 0,
        }
        f.update({k: {"v": v, "g": BACKEND_GROUP} for k, v in values.items()})
        return f

    def _start_api_service(self):
        # functional_helpers looks for api-paste.ini next to the package; the wheel installs
        # it under <venv>/etc/cinder
        from cinder import service
        CONF.api_paste_config = str(PASTE)
        self.osapi = service.WSGIService("osapi_volume")
        self.osapi.start()
        self.auth_url = f"http://{self.osapi.host}:{self.osapi.port}/v3"

    def _clear_attrs(self):
        """Keep attributes: the result reporting still reads them after cleanups."""

    def setUp(self):
        t0 = time.monotonic()
        super().setUp()
        self.cinder = cinder_client(self.auth_url, self.api.project_id.replace("-", ""))
        self.cinder.volume_types.create("zol-thin").set_keys(
            {"volume_backend_name": "zol-thin"})
        self.admin = ["ssh", "-q", "-i", self.san["keys"]["admin"], "-p",
                      str(self.san["ssh_port"]), "-o",
                      "UserKnownHostsFile=" + self.san["known_hosts"], "-o",
                      "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "root@127.0.0.1"]
        # the in-process volume manager reports stats once at start
        deadline = time.monotonic() + 120
        while not self._pools():
            drv = self.volume.manager.driver
            self.assertLess(time.monotonic(), deadline,
                            f"no pool reported (driver initialized: {drv.initialized})")
            time.sleep(0.5)
        print(f"in-process Cinder up in {time.monotonic() - t0:.1f} s", file=sys.stderr)

    def _pools(self):
        return self.cinder.pools.list(detailed=True)

    def _zfs(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.admin + [shlex.join(["zfs", *argv])], capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=120, check=False)

    def _create(self, size=1, **kw):
        v = self.cinder.volumes.create(size, volume_type="zol-thin", **kw)
        return wait_status(lambda: self.cinder.volumes.get(v.id), "available", what="volume")

    def _delete(self, vol):
        self.cinder.volumes.delete(vol)
        wait_gone(lambda: self.cinder.volumes.get(vol.id), what="volume")

    def test_lifecycle_with_data(self):
        pool = self._pools()[0]
        caps = pool.to_dict()["capabilities"]
        self.assertTrue(pool.name.endswith("#zol-thin"), pool.name)
        self.assertGreater(caps["total_capacity_gb"], 1)
        self.assertTrue(caps["thin_provisioning_support"])

        vol = self._create(1, name="inproc")
        ds = f"{PARENT}/volume-{vol.id}"
        r = self._zfs("get", "-H", "-p", "-o", "value", "volsize", ds)
        self.assertEqual(r.stdout.strip(), str(GIB), r.stderr)

        data = iscsi.random_bytes(MIB)
        att = self.cinder.attachments.create(vol.id, CONNECTOR, None, "rw")
        info = att["connection_info"]
        host, port = info["target_portal"].rsplit(":", 1)
        url = iscsi.iscsi_url(host, int(port), info["target_iqn"], int(info["target_lun"]),
                              info["auth_username"], info["auth_password"])
        self.assertEqual(info["auth_method"], "CHAP")
        iscsi_write_flushed(url, data)
        snap = self.cinder.volume_snapshots.create(vol.id, force=True, name="inproc-s")
        snap = wait_status(lambda: self.cinder.volume_snapshots.get(snap.id), "available",
                           what="snapshot")
        self.cinder.attachments.delete(att["id"])
        wait_status(lambda: self.cinder.volumes.get(vol.id), "available", what="volume")

        clone = self._create(2, snapshot_id=snap.id, name="inproc-clone")
        r = self._zfs("get", "-H", "-p", "-o", "value", "volsize,origin",
                      f"{PARENT}/volume-{clone.id}")
        self.assertEqual(r.stdout.split(), [str(2 * GIB), f"{ds}@snapshot-{snap.id}"])
        att = self.cinder.attachments.create(clone.id, CONNECTOR, None, "rw")
        info = att["connection_info"]
        url = iscsi.iscsi_url(host, int(port), info["target_iqn"], int(info["target_lun"]),
                              info["auth_username"], info["auth_password"])
        self.assertEqual(iscsi.capacity(url), 2 * GIB)
        self.assertEqual(iscsi.read(url, MIB), data)
        self.cinder.attachments.delete(att["id"])
        wait_status(lambda: self.cinder.volumes.get(clone.id), "available", what="volume")

        self.cinder.volume_snapshots.delete(snap)
        wait_gone(lambda: self.cinder.volume_snapshots.get(snap.id), what="snapshot")
        self._delete(vol)
        self._delete(clone)
        left = self._zfs("list", "-H", "-o", "name", "-t", "volume,snapshot", "-r", PARENT)
        self.assertNotIn(vol.id, left.stdout)
        self.assertNotIn(clone.id, left.stdout)
