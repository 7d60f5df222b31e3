"""Replication state machine (zol_driver/replication.py) and its driver glue.

Two stateful FakeSans (tests/unit/fakesan.py: the real wrapper's export verbs, zfs answers
in the captured formats) stand for the primary and the replica SAN; the stream itself is
modelled by `FakeStream`, which applies a full or incremental receive the way ZFS does (the
snapshot arrives with the sender's guid; an incremental needs the base's twin as the
receiver's newest snapshot).  Bytes through real send/receive are tests/unit/test_transfer.py
(fake zfs behind the real wrapper) and tests/system/test_replication.py (two OpenZFS VMs).
"""
from __future__ import annotations

import itertools
import uuid

import pytest
from cinder import exception as cinder_exception

from tests.unit.fakesan import Dataset, FakeSan
from tests.unit.test_driver import make_driver
from zol_driver import exception, replication, zfs
from zol_driver.ssh import PipeResult
from zol_driver.targets import tgt

PFX = "iqn.2010-10.org.openstack:"
REPL_TYPE = {"name": "replicated", "extra_specs": {"replication_enabled": "<is> True"}}
PLAIN_TYPE = {"name": "plain", "extra_specs": {}}


def vol(n, size=1, **kw):
    vid = str(uuid.UUID(int=0xE000 + n))
    return {"id": vid, "name": "volume-" + vid, "size": size, "provider_location": None,
            "provider_auth": None, "status": "available", "volume_attachment": [],
            "volume_type": REPL_TYPE, **kw}


class FakeStream:
    """transfer.send() between two FakeSans: what a completed receive leaves behind."""

    def __init__(self, sans: dict[str, FakeSan]):
        self.sans = sans        # parent -> san
        self.calls: list[tuple[str, str | None, str]] = []
        self.fail = 0

    def __call__(self, src_zfs, snap, dst_zfs, dst_ds, base=None, timeout=None, **kw):
        self.calls.append((snap, base, dst_ds))
        if self.fail:
            self.fail -= 1
            raise transfer_failed(snap, dst_ds)
        src, dst = self.sans[src_zfs.parent], self.sans[dst_zfs.parent]
        s = src.ds[snap]
        vol_ds = src.ds[snap.partition("@")[0]]
        new = f"{dst_ds}@{snap.partition('@')[2]}"
        if base is None:
            assert dst_ds not in dst.ds, "full receive into an existing dataset"
            dst.ds[dst_ds] = Dataset(dst_ds, "volume", s.volsize, 0, vol_ds.volblocksize,
                                     creation=next(dst._clock))
        else:
            twin = f"{dst_ds}@{base.partition('@')[2]}"
            snaps = dst.snapshots(dst_ds)
            assert snaps and snaps[-1].name == twin, "receive -F: base is not the newest"
            assert dst.ds[twin].guid == src.ds[base].guid, "base guid differs"
            dst.ds[dst_ds].volsize = s.volsize
        dst.ds[new] = Dataset(new, "snapshot", s.volsize, None, s.volblocksize,
                              creation=next(dst._clock), guid=s.guid)
        return PipeResult(1 << 20, 0.5)


def transfer_failed(snap, dst):
    from zol_driver import transfer
    return transfer.TransferFailed(command="zfs send | zfs receive", exit_code=1,
                                   stderr="broken pipe", snap=snap, dst=dst, aborted="")


@pytest.fixture
def sans():
    a, b = FakeSan(), FakeSan(parents=("zol/cinder-replica",))
    yield a, b
    a.shutdown()
    b.shutdown()


def site(name, san, parent, portal):
    return replication.Site(name, san, zfs.ZfsClient(san, parent, busy_retries=0,
                                                     busy_interval=0),
                            tgt.TgtAdm(san, PFX), [portal])


@pytest.fixture
def rep(sans, monkeypatch):
    a, b = sans
    stream = FakeStream({"zol/cinder": a, "zol/cinder-replica": b})
    monkeypatch.setattr(replication.transfer, "send", stream)
    clock = itertools.count(1_764_000_000, 10)
    r = replication.Replicator(site("default", a, "zol/cinder", "192.0.2.10:3260"),
                               site("san-b", b, "zol/cinder-replica", "192.0.2.20:3260"),
                               interval=10, clock=lambda: float(next(clock)))
    r.stream = stream
    return r


def repl_names(san, ds):
    return [d.name.partition("@")[2] for d in san.snapshots(ds)
            if d.name.partition("@")[2].startswith("zol-repl-")]


def iqns(san):
    return {t.iqn for t in san.targets.values()}


def make_volume(san, v, parent="zol/cinder"):
    ds = f"{parent}/{v['name']}"
    san.execute(["zfs", "create", "-s", "-V", str(1 << 30), ds])
    return ds


# -- config -------------------------------------------------------------------------------------

GOOD = {"backend_id": "san-b", "san_ip": "192.0.2.20", "san_login": "root",
        "san_private_key": "/etc/cinder/b_ed25519", "zol_parent_dataset": "tank/replica"}


def parse(*devices, primary=("192.0.2.10", 22, "zol/cinder")):
    return replication.parse_devices(devices, known_hosts_default="/etc/cinder/kh",
                                     target_prefix_default=PFX, primary=primary)


def test_device_defaults_and_overrides():
    (d,) = parse(GOOD)
    assert (d.backend_id, d.san_ssh_port, d.known_hosts_file, d.target_ip_address,
            d.target_port, d.target_prefix) == ("san-b", 22, "/etc/cinder/kh", "192.0.2.20",
                                                3260, PFX)
    (d,) = parse({**GOOD, "san_ssh_port": "2222", "target_port": "3261",
                  "target_ip_address": "198.51.100.7",
                  "zol_ssh_known_hosts_file": "/etc/cinder/b_known"})
    assert (d.san_ssh_port, d.target_port, d.target_ip_address, d.known_hosts_file) == \
        (2222, 3261, "198.51.100.7", "/etc/cinder/b_known")
    assert parse() == []


@pytest.mark.parametrize("change, key, words", [
    ({"san_ip": ""}, "san_ip", "missing"),
    ({"zol_parent_dataset": None}, "zol_parent_dataset", "missing"),
    ({"san_ssh_port": "ssh"}, "san_ssh_port", "not a port"),
    ({"target_port": "70000"}, "target_port", "not in 1..65535"),
    ({"backend_id": "default"}, "backend_id", "not 'default'"),
    ({"backend_id": "san b"}, "backend_id", "a name like"),
    ({"zol_parent_dataset": "tank"}, "zol_parent_dataset", "below a pool"),
    ({"san_password": "x"}, "san_password", "unknown key"),
])
def test_bad_device_names_the_key(change, key, words):
    d = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(replication.ReplicationConfigError) as ei:
        parse(d)
    assert f"replication_device {key}:" in str(ei.value) and words in str(ei.value)


def test_one_device_only_and_never_the_primary_itself():
    with pytest.raises(replication.ReplicationConfigError, match="exactly one"):
        parse(GOOD, {**GOOD, "backend_id": "san-c"})
    with pytest.raises(replication.ReplicationConfigError, match="own SAN and parent"):
        parse({**GOOD, "san_ip": "192.0.2.10", "zol_parent_dataset": "zol/cinder"})


def test_replicated_type():
    assert replication.is_replicated_type(REPL_TYPE)
    assert not replication.is_replicated_type(PLAIN_TYPE)
    assert not replication.is_replicated_type(None)
    assert not replication.is_replicated_type(
        {"extra_specs": {"replication_enabled": "<is> False"}})


# -- sync -----------------------------------------------------------------------------------------

def test_seed_then_incremental_keeps_one_common_snapshot(rep, sans):
    a, b = sans
    v = vol(1)
    src = make_volume(a, v)
    assert rep.seed(v["name"]) == {"replication_status": "enabled"}
    first = repl_names(a, src)
    assert len(first) == 1 and repl_names(b, "zol/cinder-replica/" + v["name"]) == first
    assert rep.stream.calls[-1] == (f"{src}@{first[0]}", None,
                                    "zol/cinder-replica/" + v["name"])
    rep.sync(v["name"])
    second = repl_names(a, src)
    assert len(second) == 1 and second != first
    assert repl_names(b, "zol/cinder-replica/" + v["name"]) == second
    assert rep.stream.calls[-1][1] == f"{src}@{first[0]}"       # -i first second
    st = rep.stats()
    assert st["replication_enabled"] and st["replication_targets"] == ["san-b"]
    assert st["replication_status"] == "enabled" and st["replication_volumes"] == 1
    assert st["replication_bytes_per_second"] == 2 << 20 and st["replication_lag_seconds"] >= 0


def test_cinder_snapshots_stay_out_of_replication(rep, sans):
    a, b = sans
    v = vol(2)
    src = make_volume(a, v)
    rep.seed(v["name"])
    a.execute(["zfs", "snapshot", src + "@snapshot-" + str(uuid.UUID(int=7))])
    rep.sync(v["name"])
    assert [d.name.partition("@")[2][:9] for d in a.snapshots(src)] == ["snapshot-",
                                                                       "zol-repl-"]
    assert [d.name.partition("@")[2][:9] for d in
            b.snapshots("zol/cinder-replica/" + v["name"])] == ["zol-repl-"]


def test_failed_send_keeps_the_common_snapshot_and_reports_error(rep, sans):
    a, b = sans
    v = vol(3)
    src = make_volume(a, v)
    rep.seed(v["name"])
    before = repl_names(a, src)
    rep.stream.fail = 1
    with pytest.raises(exception.ZolException):
        rep.sync(v["name"])
    assert repl_names(a, src) == before            # the unsent snapshot is gone again
    assert rep.stats()["replication_status"] == "error"
    assert rep.error_updates() == [{"volume_id": v["id"], "replication_status": "error"}]
    rep.sync(v["name"])                             # next round: -i before new
    assert rep.stream.calls[-1][1] == f"{src}@{before[0]}"
    # Cinder learns of the recovery at its next get_replication_error_status
    assert rep.stats()["replication_status"] == "error"
    assert rep.error_updates() == [{"volume_id": v["id"], "replication_status": "enabled"}]
    assert rep.stats()["replication_status"] == "enabled" and rep.error_updates() == []


def test_seed_failure_marks_the_volume_for_the_next_round(rep, sans):
    a, b = sans
    v = vol(4)
    src = make_volume(a, v)
    rep.stream.fail = 1
    assert rep.seed(v["name"]) == {"replication_status": "error"}
    assert len(repl_names(a, src)) == 1             # marked: the round finds it
    assert rep.sync_all()["volumes"] == 1
    assert repl_names(b, "zol/cinder-replica/" + v["name"]) == repl_names(a, src)


def test_replica_without_common_snapshot_is_replaced(rep, sans):
    a, b = sans
    v = vol(5)
    src = make_volume(a, v)
    rep.seed(v["name"])
    for name in repl_names(a, src):                 # e.g. a revert dropped them
        a.execute(["zfs", "destroy", f"{src}@{name}"])
    rep.sync(v["name"])
    assert rep.stream.calls[-1][1] is None          # full again
    assert repl_names(b, "zol/cinder-replica/" + v["name"]) == repl_names(a, src)


def test_delete_and_orphans(rep, sans):
    a, b = sans
    v, w = vol(6), vol(7)
    for x in (v, w):
        make_volume(a, x)
        rep.seed(x["name"])
    for x in (v, w):        # deleted on the primary (driver.delete_volume)
        for d in a.snapshots("zol/cinder/" + x["name"]):
            a.execute(["zfs", "destroy", d.name])
        a.execute(["zfs", "destroy", "zol/cinder/" + x["name"]])
    rep.delete_replica(v["name"])
    assert "zol/cinder-replica/" + v["name"] not in b.ds
    # w's replica could not be reached at its delete: the next round collects it
    assert rep.sync_all()["volumes"] == 0
    assert b.names("zol/cinder-replica") == []


# -- failover / failback --------------------------------------------------------------------------

def exporter(log):
    def export(site, volume):
        log.append((site.name, volume["id"]))
        return {"provider_location": f"{site.portals[0]},1 {PFX}{volume['name']} 1"}
    return export


def test_failover_then_failback(rep, sans):
    a, b = sans
    used, idle, never = vol(10, status="in-use"), vol(11), vol(12)
    for x in (used, idle):
        make_volume(a, x)
        rep.seed(x["name"])
    make_volume(a, never)                            # replicated type, never seeded
    assert rep.check_target(None) == "san-b"
    log = []
    ups = {u["volume_id"]: u["updates"]
           for u in rep.failover([used, idle, never], exporter(log))}
    assert ups[used["id"]]["replication_status"] == "failed-over"
    assert ups[used["id"]]["provider_location"].startswith("192.0.2.20:3260,")
    assert ups[idle["id"]] == {"replication_status": "failed-over", "provider_location": None}
    assert ups[never["id"]] == {"status": "error", "replication_status": "failover-error"}
    assert log == [("san-b", used["id"])]
    rep.switch("san-b")
    assert rep.active.name == "san-b" and rep.stats()["replication_status"] == "failed-over"
    assert rep.sync_all() == {}                      # no rounds while failed over
    with pytest.raises(ValueError, match="already failed over"):
        rep.check_target("san-b")
    # written on the replica meanwhile; a stale zol-repl snapshot on the primary (its last
    # round never reached the replica) must go before the incremental comes back
    rds = "zol/cinder-replica/" + used["name"]
    pds = "zol/cinder/" + used["name"]
    a.execute(["zfs", "snapshot", pds + "@zol-repl-1999999999"])
    common = repl_names(b, rds)[0]
    assert rep.check_target("default") == "default"
    log.clear()
    ups = {u["volume_id"]: u["updates"]
           for u in rep.failback([used, idle], exporter(log))}
    assert ups[used["id"]]["replication_status"] == "enabled"
    assert ups[used["id"]]["provider_location"].startswith("192.0.2.10:3260,")
    assert ups[idle["id"]]["replication_status"] == "enabled"
    assert log == [("default", used["id"])]
    back = [c for c in rep.stream.calls if c[2] == pds]
    assert back and back[-1][1] == f"{rds}@{common}"        # -i common new, replica -> primary
    assert repl_names(a, pds) == repl_names(b, rds) and len(repl_names(a, pds)) == 1
    rep.switch(None)
    assert rep.active.name == "default"


def test_failback_refuses_to_roll_away_a_newer_cinder_snapshot(rep, sans):
    a, b = sans
    v = vol(13)
    pds = make_volume(a, v)
    rep.seed(v["name"])
    a.execute(["zfs", "snapshot", pds + "@snapshot-" + str(uuid.UUID(int=9))])
    rep.failover([v], exporter([]))
    rep.switch("san-b")
    (u,) = rep.failback([v], exporter([]))
    assert u["updates"] == {"status": "error", "replication_status": "failover-error"}
    assert any(d.name.endswith(str(uuid.UUID(int=9))) for d in a.snapshots(pds))


def test_unknown_target_and_failback_without_failover(rep):
    with pytest.raises(ValueError, match="unknown replication target"):
        rep.check_target("san-x")
    with pytest.raises(ValueError, match="nothing to fail back"):
        rep.check_target("default")


def test_restart_when_failed_over_names_the_device():
    a = FakeSan()
    try:
        s = site("default", a, "zol/cinder", "x:1")
        r = replication.Replicator(s, site("san-b", a, "zol/cinder-thick", "y:1"),
                                   interval=0, active_backend_id="san-b")
        assert r.active.name == "san-b"
        with pytest.raises(replication.ReplicationConfigError, match="san-c"):
            replication.Replicator(s, site("san-b", a, "zol/cinder-thick", "y:1"),
                                   interval=0, active_backend_id="san-c")
    finally:
        a.shutdown()


# -- driver glue ----------------------------------------------------------------------------------

DEVICE = ("backend_id:san-b,san_ip:192.0.2.20,san_login:root,"
          "san_private_key:/etc/cinder/b_ed25519,zol_parent_dataset:zol/cinder-replica,"
          "target_ip_address:192.0.2.20,target_port:3261")


@pytest.fixture
def rdrv(sans, monkeypatch):
    a, b = sans
    stream = FakeStream({"zol/cinder": a, "zol/cinder-replica": b})
    monkeypatch.setattr(replication.transfer, "send", stream)

    def build(**kw):
        from zol_driver import driver as zdriver
        orig = zdriver.ZFSonLinuxISCSIDriver.__init__

        def init(self, *args, **kwargs):
            kwargs.setdefault("zol_replica_executor", b)
            orig(self, *args, **kwargs)
        monkeypatch.setattr(zdriver.ZFSonLinuxISCSIDriver, "__init__", init)
        return make_driver(a, replication_device=[DEVICE], zol_replication_interval=0, **kw)
    return build


def test_driver_replicates_serves_the_replica_after_failover_and_fails_back(rdrv, sans,
                                                                          tmp_path):
    a, b = sans
    drv = rdrv()
    v = vol(20)
    upd = drv.create_volume(v)
    assert upd["replication_status"] == "enabled"
    assert repl_names(b, "zol/cinder-replica/" + v["name"])
    pool = drv.get_volume_stats(refresh=True)["pools"][0]
    assert pool["replication_enabled"] and pool["replication_targets"] == ["san-b"]
    plain = vol(21, volume_type=PLAIN_TYPE)
    assert "replication_status" not in (drv.create_volume(plain) or {})
    assert not any(n.endswith(plain["name"]) for n in b.names("zol/cinder-replica"))
    # manageable snapshots never show the replication snapshots
    assert drv.get_manageable_snapshots([], None, 1000, 0, ["reference"], ["asc"]) == []
    target, ups, groups = drv.failover_host(None, [v], None, [])
    assert target == "san-b" and groups == []
    assert ups[0]["updates"]["replication_status"] == "failed-over"
    assert drv.zfs.parent == "zol/cinder-replica"
    exp = drv.create_export(None, {**v, "provider_auth": None}, {})
    assert exp["provider_location"].startswith("192.0.2.20:3261,")
    assert f"{PFX}{v['name']}" in iqns(b)
    assert drv.get_volume_stats(refresh=True)["pools"][0]["replication_status"] == \
        "failed-over"
    with pytest.raises(cinder_exception.InvalidReplicationTarget):
        drv.failover_host(None, [v], "san-b", [])
    v_used = {**v, "status": "in-use", "provider_auth": exp["provider_auth"]}
    target, ups, _ = drv.failover_host(None, [v_used], "default", [])
    assert target == "default"
    assert ups[0]["updates"]["replication_status"] == "enabled"
    assert ups[0]["updates"]["provider_location"].startswith("192.0.2.10:3260,")
    assert drv.zfs.parent == "zol/cinder"
    assert f"{PFX}{v['name']}" in iqns(a) and f"{PFX}{v['name']}" not in iqns(b)
    drv.remove_export(None, v)
    drv.delete_volume(v)
    assert not any(n.endswith(v["name"]) for n in b.names("zol/cinder-replica"))
    # contract: each SAN's wrapper accepts every argv this scenario sent it
    assert_wrapper_accepts(tmp_path, a.calls, ("zol/cinder",))
    assert_wrapper_accepts(tmp_path, b.calls, ("zol/cinder-replica",))


def assert_wrapper_accepts(tmp_path, calls, parents):
    import shlex

    from tests.helpers.fakesan import FakeSan as ProcessSan
    from tests.helpers.fakesan import load_wrapper
    w = load_wrapper()
    san = ProcessSan(tmp_path / parents[0].replace("/", "-"), parents=parents, iqn_prefix=PFX)
    try:
        cfg = w.load_config(str(san.conf))
        denied = []
        for argv in calls:
            try:
                w.validate(cfg, argv)
            except w.Denied as exc:
                denied.append(f"{shlex.join(w.redact_argv(argv))} -> {exc}")
        assert not denied, "\n".join(denied)
    finally:
        san.close()


def build_driver(san, replica=None, active_backend_id=None, **overrides):
    """Like test_driver.make_driver, with Cinder's active_backend_id (a restarted service
    passes the one failover_host recorded) and the replica SAN's executor."""
    from cinder.volume import configuration
    from oslo_config import cfg

    from zol_driver import driver as zdriver
    from zol_driver import opts
    group = f"zol-repl-test-{next(_groups)}"
    conf = configuration.Configuration(zdriver.driver.volume_opts, config_group=group)
    conf.append_config_values(zdriver.san.san_opts)
    conf.append_config_values(opts.zol_opts)
    values = {"zol_parent_dataset": "zol/cinder", "san_ip": "192.0.2.10",
              "target_ip_address": "192.0.2.10", "volume_backend_name": group,
              "zol_busy_retry_interval": 0, "zol_replication_interval": 0, **overrides}
    for k, v in values.items():
        cfg.CONF.set_override(k, v, group=group)
    drv = zdriver.ZFSonLinuxISCSIDriver(configuration=conf, host="cinder@" + group,
                                        zol_executor=san, zol_replica_executor=replica,
                                        active_backend_id=active_backend_id)
    drv.do_setup(None)
    drv.check_for_setup_error()
    return drv


_groups = itertools.count()


def test_driver_restarted_failed_over_serves_from_the_replica(sans):
    a, b = sans
    drv = build_driver(a, b, active_backend_id="san-b", replication_device=[DEVICE])
    assert drv.zfs.parent == "zol/cinder-replica" and drv.executor is b
    assert drv._portals() == ["192.0.2.20:3261"]
    back = build_driver(a, b, active_backend_id="", replication_device=[DEVICE])
    assert back.zfs.parent == "zol/cinder" and back._portals() == ["192.0.2.10:3260"]


def test_driver_config_errors_name_the_key(sans):
    a, b = sans
    with pytest.raises(cinder_exception.VolumeDriverException) as ei:
        build_driver(a, b, replication_device=["backend_id:san-b,san_ip:192.0.2.20"])
    assert "option replication_device" in str(ei.value) and "san_login" in str(ei.value)
    with pytest.raises(cinder_exception.VolumeDriverException, match="fail back first"):
        build_driver(a, b, active_backend_id="san-b")


def test_the_replica_carries_the_type_policy_at_create_and_after_retype(rdrv, sans, tmp_path):
    """A stream without -p carries no properties: the driver sets the type's policy on the
    replica after the seed and again after an in-place retype (dropped keys inherited)."""
    a, b = sans
    drv = rdrv()
    db = {"name": "db-repl", "extra_specs": {
        "replication_enabled": "<is> True", "zol:compression": "zstd", "zol:sync": "always",
        "provisioning:type": "thick"}}
    v = vol(30, volume_type=db)
    assert drv.create_volume(v)["replication_status"] == "enabled"
    rep = b.ds["zol/cinder-replica/" + v["name"]]
    assert (rep.props.get("compression"), rep.props.get("sync")) == ("zstd", "always")
    assert rep.refreservation                                     # thick on the replica too
    scratch = {"name": "scratch-repl", "extra_specs": {
        "replication_enabled": "<is> True", "zol:compression": "lz4",
        "provisioning:type": "thin"}}
    ok, upd = drv.retype(None, v, scratch, {}, {"host": drv.host})
    assert ok and upd["replication_status"] == "enabled"
    assert rep.props.get("compression") == "lz4" and "sync" not in rep.props
    assert not rep.refreservation
    assert_wrapper_accepts(tmp_path, b.calls, ("zol/cinder-replica",))


def test_failover_puts_volumes_without_a_replica_in_error(rdrv, sans):
    """Cinder hands failover_host every volume of the backend: a volume of a type without
    replication has no copy on the replica and goes to error (as Cinder expects), the
    replicated one is served from the replica."""
    a, b = sans
    drv = rdrv()
    rv, plain = vol(40), vol(41, volume_type=PLAIN_TYPE)
    drv.create_volume(rv)
    drv.create_volume(plain)
    target, ups, _ = drv.failover_host(None, [rv, plain], None, [])
    by_id = {u["volume_id"]: u["updates"] for u in ups}
    assert target == "san-b"
    assert by_id[rv["id"]]["replication_status"] == "failed-over"
    assert by_id[plain["id"]] == {"status": "error", "replication_status": "failover-error"}
