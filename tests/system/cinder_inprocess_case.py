"""Cinder's own in-process functional harness driving zol_driver against the SAN VM.

Run by tests/system/test_cinder_inprocess.py in a child `python -m unittest` process, never
imported by pytest: cinder.tests.unit monkey-patches the interpreter with eventlet at import
(which would leak into every other test of the session) and its TestCase cleanup deletes
instance attributes that pytest's unittest integration still reads.

The harness (cinder/tests/functional/functional_helpers.py, shipped in the Cinder wheel) runs
cinder-volume, cinder-scheduler and cinder-api in this one process with fake RPC and an
in-memory sqlite: Cinder's real API, scheduler filters, volume manager and flows, no rabbitmq,
starting in seconds.  The one backend is zol-thin (zol/cinder, thin) on the SAN VM whose
state.json is named by $ZOL_SANVM_STATE; every step is checked on the SAN with SanAdmin (the
class behind the `san_admin` fixture).  The ids of what was created go to $ZOL_INPROC_RESULT
so that the pytest side can check with its own fixture that nothing is left.

Why the flags below (Cinder 29): the harness starts the volume service before the scheduler and
its `mock.patch('eventlet.sleep')` no longer shortens the scheduler's start-up wait
(SchedulerManager.init_host_with_rpc now calls time.sleep), so the scheduler blocked for
scheduler_driver_init_wait_time = 60 s.  Meanwhile the volume service's heartbeat went to the
wrong row (cinder.service.Service.service_id is a class attribute: once the scheduler starts,
the volume service's report_state updates the scheduler's row), so its own row aged past
service_down_time = 60 s during that wait: the volume service was "down" from the moment the
API came up and get_pools stayed empty for ever.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from unittest import mock

from cinder.tests.functional import functional_helpers  # noqa: I100 (monkey-patches first)
from oslo_config import cfg

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.helpers import iscsi  # noqa: E402
from tests.plugins.cinder import cinder_client, iscsi_write_flushed, wait_gone, wait_status  # noqa: E402
from tests.plugins.sanvm import SanAdmin  # noqa: E402

CONF = cfg.CONF
GIB = 1024 ** 3
MIB = 1024 ** 2
PARENT = "zol/cinder"
BACKEND = "zol-thin"
CONNECTOR = {"initiator": "iqn.1993-08.org.debian:01:zol-inprocess", "ip": "127.0.0.1",
             "host": "zol-compute-inprocess", "multipath": False, "platform": "x86_64",
             "os_type": "linux", "do_local_attach": False}
BACKEND_GROUP = "backend_defaults"
# The wheel installs Cinder's etc/ files under <venv>/etc/cinder, the harness looks for them
# under site-packages/etc/cinder.
VENV_ETC = Path(sys.prefix) / "etc" / "cinder"
# Longer than this whole run: heartbeats cannot keep the volume service "up" in this harness
# (see the module docstring).
SERVICE_DOWN_TIME = 3600
READY_TIMEOUT = 60


def san_state() -> dict:
    p = Path(os.environ["ZOL_SANVM_STATE"])
    return json.loads((p / "state.json" if p.is_dir() else p).read_text())


class ZolInProcessTest(functional_helpers._FunctionalTestBase):
    """One backend, real zol driver, real SAN; API driven through python-cinderclient."""

    _osapi_version = "3.64"

    def _get_flags(self) -> dict:
        san_vm = san_state()
        self.san = san_vm
        f = super()._get_flags()
        # Without enabled_backends the harness's one volume manager reads its backend options
        # from [backend_defaults] (Configuration(config_group='backend_defaults')).  san_* and
        # zol_* options are registered there only when the driver is constructed, after these
        # overrides, so register them first (the same lists the driver appends).
        from cinder.volume.drivers.san import san

        from zol_driver import opts as zol_opts
        for opt in [*san.san_opts, *zol_opts.zol_opts]:
            try:
                CONF.register_opt(opt, group=BACKEND_GROUP)
            except cfg.DuplicateOptError:
                pass
        values = {
            "volume_driver": "zol_driver.driver.ZFSonLinuxISCSIDriver",
            "volume_backend_name": BACKEND,
            "san_ip": san_vm["host"], "san_ssh_port": san_vm["ssh_port"],
            "san_login": san_vm["user"], "san_private_key": san_vm["keys"]["cinder"],
            "zol_ssh_known_hosts_file": san_vm["known_hosts"],
            "zol_parent_dataset": PARENT, "san_thin_provision": True,
            "target_prefix": san_vm["iqn_prefix"], "target_ip_address": san_vm["host"],
            "target_port": san_vm["iscsi_port"], "use_chap_auth": True,
            "max_over_subscription_ratio": 20.0, "reserved_percentage": 0,
        }
        f.update({k: {"v": v, "g": BACKEND_GROUP} for k, v in values.items()})
        # The two start-up fixes (module docstring): do not block 60 s in the scheduler, and
        # do not let the volume service's row expire during the run.
        f["scheduler_driver_init_wait_time"] = {"v": 1}
        f["service_down_time"] = {"v": SERVICE_DOWN_TIME}
        filters = VENV_ETC / "resource_filters.json"
        if filters.is_file():
            f["resource_query_filters_file"] = {"v": str(filters)}
        return f

    def _start_api_service(self) -> None:
        from cinder import service
        CONF.api_paste_config = str(VENV_ETC / "api-paste.ini")
        self.osapi = service.WSGIService("osapi_volume")
        self.osapi.start()
        self.auth_url = f"http://{self.osapi.host}:{self.osapi.port}/v3"

    def setUp(self) -> None:
        t0 = time.monotonic()
        # Real RPC serializes the scheduler's pool capabilities into a plain dict; the fake RPC
        # hands the API the scheduler's own ReadOnlyDict, on which the get_pools detail view
        # calls .copy() (HTTP 500).  Give it the copy a serialized dict would have.
        from cinder.scheduler import host_manager
        self.patch_copy = mock.patch.object(
            host_manager.ReadOnlyDict, "copy", lambda d: dict(d), create=True)
        self.patch_copy.start()
        self.addCleanup(self.patch_copy.stop)
        super().setUp()
        self.admin = SanAdmin(self.san)
        self.cinder = cinder_client(self.auth_url, self.api.project_id.replace("-", ""))
        self.cinder.volume_types.create(BACKEND).set_keys({"volume_backend_name": BACKEND})
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._pools():
            drv = self.volume.manager.driver
            self.assertLess(time.monotonic(), deadline,
                            f"no pool reported within {READY_TIMEOUT} s (driver initialized: "
                            f"{drv.initialized})")
            time.sleep(0.5)
        print(f"in-process Cinder up in {time.monotonic() - t0:.1f} s", file=sys.stderr)

    def _pools(self) -> list:
        return self.cinder.pools.list(detailed=True)

    def _zprops(self, ds: str, *props: str) -> list[str]:
        """Values of props of ds on the SAN ([] when ds does not exist)."""
        r = self.admin.run(["zfs", "get", "-H", "-p", "-o", "value", ",".join(props), ds],
                           check=False, timeout=120)
        return r.stdout.split() if r.returncode == 0 else []

    def _create(self, size: int = 1, **kw):
        v = self.cinder.volumes.create(size, volume_type=BACKEND, **kw)
        self.created.setdefault("volumes", []).append(v.id)
        return wait_status(lambda: self.cinder.volumes.get(v.id), "available", what="volume")

    def _delete(self, vol) -> None:
        self.cinder.volumes.delete(vol)
        wait_gone(lambda: self.cinder.volumes.get(vol.id), what="volume")

    def _url(self, vol_id: str) -> tuple[str, dict]:
        att = self.cinder.attachments.create(vol_id, CONNECTOR, None, "rw")
        info = att["connection_info"]
        self.assertEqual(info["auth_method"], "CHAP")
        host, port = info["target_portal"].rsplit(":", 1)
        return iscsi.iscsi_url(host, int(port), info["target_iqn"], int(info["target_lun"]),
                               info["auth_username"], info["auth_password"]), att

    def _detach(self, att: dict, vol_id: str) -> None:
        self.cinder.attachments.delete(att["id"])
        wait_status(lambda: self.cinder.volumes.get(vol_id), "available", what="volume")

    def _report(self) -> None:
        path = os.environ.get("ZOL_INPROC_RESULT")
        if path:
            Path(path).write_text(json.dumps(self.created))

    def test_lifecycle(self) -> None:
        self.created: dict[str, list[str]] = {}
        self.addCleanup(self._report)
        pools = self._pools()
        self.assertEqual(len(pools), 1, pools)
        caps = pools[0].to_dict()["capabilities"]
        self.assertTrue(pools[0].name.endswith("#" + BACKEND), pools[0].name)
        self.assertEqual(caps["storage_protocol"], "iSCSI")
        self.assertGreater(caps["total_capacity_gb"], 1)
        self.assertTrue(caps["thin_provisioning_support"])

        # create: a 1 GiB thin zvol
        vol = self._create(1, name="inproc")
        ds = f"{PARENT}/volume-{vol.id}"
        self.assertEqual(self._zprops(ds, "volsize", "refreservation"), [str(GIB), "0"])

        # data through the exported target (CHAP), flushed before the snapshot
        data = iscsi.random_bytes(MIB)
        url, att = self._url(vol.id)
        iscsi_write_flushed(url, data)
        self._detach(att, vol.id)

        # snapshot
        snap = self.cinder.volume_snapshots.create(vol.id, name="inproc-s")
        self.created["snapshots"] = [snap.id]
        snap = wait_status(lambda: self.cinder.volume_snapshots.get(snap.id), "available",
                           what="snapshot")
        snap_ds = f"{ds}@snapshot-{snap.id}"
        self.assertEqual(self._zprops(snap_ds, "type"), ["snapshot"])

        # volume from snapshot, larger than its source: a clone grown to 2 GiB
        clone = self._create(2, snapshot_id=snap.id, name="inproc-clone")
        clone_ds = f"{PARENT}/volume-{clone.id}"
        self.assertEqual(self._zprops(clone_ds, "volsize", "origin"), [str(2 * GIB), snap_ds])
        url, att = self._url(clone.id)
        self.assertEqual(iscsi.capacity(url), 2 * GIB)
        self.assertEqual(iscsi.read(url, MIB), data)
        self._detach(att, clone.id)

        # extend the source volume to 3 GiB
        self.cinder.volumes.extend(vol, 3)
        vol = wait_status(lambda: self.cinder.volumes.get(vol.id), "available", what="volume",
                          fail=("error", "error_extending"))
        self.assertEqual(vol.size, 3)
        self.assertEqual(self._zprops(ds, "volsize"), [str(3 * GIB)])

        # delete everything: snapshot (deferred while the clone needs it), then the volumes
        self.cinder.volume_snapshots.delete(snap)
        wait_gone(lambda: self.cinder.volume_snapshots.get(snap.id), what="snapshot")
        self._delete(clone)
        self.assertEqual(self._zprops(clone_ds, "type"), [])
        self._delete(vol)
        left = self.admin.out(["zfs", "list", "-H", "-o", "name", "-t", "volume,snapshot",
                               "-r", PARENT], timeout=120)
        for obj_id in (vol.id, clone.id, snap.id):
            self.assertNotIn(obj_id, left)
