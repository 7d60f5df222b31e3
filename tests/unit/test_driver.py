"""driver.py against the stateful FakeSan: Cinder semantics, ZFS dependencies, config errors.

Also publishes the driver's complete command set to tests/fixtures/driver_argv.jsonl (the SAN
wrapper's contract test replays it): test_driver_argv_fixture_is_current fails when the file is
stale; regenerate with ZOL_REGEN_DRIVER_ARGV=1.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import uuid
from pathlib import Path

import pytest
from cinder import exception as cinder_exception
from cinder.volume import configuration
from oslo_config import cfg

from tests.unit.fakesan import FakeSan
from zol_driver import driver as zdriver
from zol_driver import opts

CONF = cfg.CONF
ARGV_FILE = Path(__file__).resolve().parents[1] / "fixtures" / "driver_argv.jsonl"
GIB = 1024 ** 3
PFX = "iqn.2010-10.org.openstack:"
_groups = itertools.count()


def make_driver(san, **overrides):
    """A driver on its own cinder.conf backend section, like cinder-volume builds it."""
    group = overrides.pop("group", None) or f"zol-test-{next(_groups)}"
    conf = configuration.Configuration(zdriver.driver.volume_opts, config_group=group)
    conf.append_config_values(zdriver.san.san_opts)
    conf.append_config_values(opts.zol_opts)
    values = {"zol_parent_dataset": "zol/cinder", "san_ip": "192.0.2.10",
              "target_ip_address": "192.0.2.10", "volume_backend_name": group,
              "zol_busy_retry_interval": 0}
    values.update(overrides)
    for k, v in values.items():
        CONF.set_override(k, v, group=group)
    drv = zdriver.ZFSonLinuxISCSIDriver(configuration=conf, host="cinder@" + group,
                                        zol_executor=san)
    drv.do_setup(None)
    drv.check_for_setup_error()
    return drv


def vol(n, size=1, **kw):
    vid = str(uuid.UUID(int=n))
    return {"id": vid, "name": "volume-" + vid, "size": size, "provider_location": None,
            "provider_auth": None, **kw}


def snap(n, volume):
    sid = str(uuid.UUID(int=0xABC000 + n))
    return {"id": sid, "name": "snapshot-" + sid, "volume_name": volume["name"],
            "volume_size": volume["size"], "volume_id": volume["id"]}


@pytest.fixture
def san():
    s = FakeSan()
    yield s
    s.shutdown()


@pytest.fixture
def drv(san):
    return make_driver(san)


def ds(v):
    return "zol/cinder/" + v["name"]


def test_create_thin_and_idempotent(drv, san):
    v = vol(1, 2)
    drv.create_volume(v)
    d = san.ds[ds(v)]
    assert d.volsize == 2 * GIB and d.refreservation == 0
    drv.create_volume(v)                                  # same size again: success
    san.ds[ds(v)].volsize = GIB
    with pytest.raises(cinder_exception.VolumeBackendAPIException):
        drv.create_volume(v)                              # different size: an error


def test_create_thick_with_blocksize(san):
    drv = make_driver(san, zol_parent_dataset="zol/cinder-thick", san_thin_provision=False,
                      zol_volblocksize=65536)
    v = vol(2)
    drv.create_volume(v)
    assert san.calls[-1] == ["zfs", "create", "-b", "65536", "-V", str(GIB),
                             "zol/cinder-thick/" + v["name"]]
    assert san.ds["zol/cinder-thick/" + v["name"]].refreservation > GIB


def test_delete_missing_is_success_and_removes_leaked_target(drv, san):
    v, w = vol(3), vol(33)
    drv.create_volume(v)
    drv.create_volume(w)
    drv.create_export(None, v, {})
    san.ds[ds(w)] = san.ds.pop(ds(v))        # the zvol went away behind Cinder's back...
    san.ds[ds(w)].name = ds(w)
    drv.delete_volume(v)                      # ...its target must not stay
    assert san.targets == {}


def test_delete_removes_target_before_zvol_and_retries_busy(drv, san):
    v = vol(4)
    drv.create_volume(v)
    drv.create_export(None, v, {})
    san.busy.add(ds(v))
    drv.delete_volume(v)
    assert ds(v) not in san.ds and san.targets == {}
    kinds = [c[:2] for c in san.calls[-4:]]
    assert kinds[-2:] == [["zfs", "destroy"], ["zfs", "destroy"]]   # busy once, then gone


def test_snapshot_clone_goes_to_the_new_volumes_name(drv, san):
    v, v2 = vol(5), vol(6, 3)
    drv.create_volume(v)
    s = snap(1, v)
    drv.create_snapshot(s)
    drv.create_snapshot(s)                                # idempotent
    drv.create_volume_from_snapshot(v2, s)
    new = san.ds[ds(v2)]
    assert new.origin == ds(v) + "@" + s["name"]          # NOT the snapshot's name (2012 bug)
    assert new.volsize == 3 * GIB                         # grown to the requested size
    assert "zol/cinder/" + s["name"] not in san.ds


def test_delete_snapshot_with_clone_is_deferred_then_collected(drv, san):
    v, v2 = vol(7), vol(8)
    drv.create_volume(v)
    s = snap(2, v)
    drv.create_snapshot(s)
    drv.create_volume_from_snapshot(v2, s)
    drv.delete_snapshot(s)                                # has a clone: no error
    assert san.ds[ds(v) + "@" + s["name"]].defer_destroy
    drv.delete_snapshot(s)                                # again: still fine
    drv.delete_volume(v2)
    assert ds(v) + "@" + s["name"] not in san.ds          # went with its last clone
    drv.delete_snapshot(s)                                # missing: fine


def test_delete_volume_whose_snapshot_has_clones_hides_then_collects(drv, san):
    v, v2 = vol(9), vol(10)
    drv.create_volume(v)
    s = snap(3, v)
    drv.create_snapshot(s)
    drv.create_volume_from_snapshot(v2, s)
    drv.delete_snapshot(s)
    drv.delete_volume(v)                                  # Cinder delete succeeds
    hidden = "zol/cinder/deleted-" + v["name"]
    assert ds(v) not in san.ds and san.ds[hidden].props["zol:deleted"] == "1"
    assert san.ds[ds(v2)].origin.startswith(hidden + "@")  # the clone's data is intact
    stats = drv.get_volume_stats(refresh=True)["pools"][0]
    assert stats["total_volumes"] == 1                    # the hidden one is not counted
    drv.delete_volume(v2)                                 # last dependent gone ->
    assert san.names() == []                              # hidden volume collected


def test_gc_from_stats(drv, san):
    v, v2 = vol(11), vol(12)
    drv.create_volume(v)
    s = snap(4, v)
    drv.create_snapshot(s)
    drv.create_volume_from_snapshot(v2, s)
    drv.delete_snapshot(s)
    drv.delete_volume(v)
    san.execute(["zfs", "destroy", ds(v2)])               # clone removed behind our back
    drv.get_volume_stats(refresh=True)
    assert san.names() == []


def test_cloned_volume_clone_mode_temp_snapshot_is_deferred(drv, san):
    v, v2 = vol(13), vol(14, 2)
    drv.create_volume(v)
    drv.create_cloned_volume(v2, v)
    tmp = f"{ds(v)}@clone-{v2['id']}"
    assert san.ds[tmp].defer_destroy and san.ds[ds(v2)].origin == tmp
    assert san.ds[ds(v2)].volsize == 2 * GIB
    drv.delete_volume(v)                                  # source deleted first: hidden
    drv.delete_volume(v2)
    assert san.names() == []


def test_copy_mode_makes_independent_volumes(san):
    drv = make_driver(san, zol_clone_mode="copy")
    v, v2, v3 = vol(15), vol(16), vol(17)
    drv.create_volume(v)
    s = snap(5, v)
    drv.create_snapshot(s)
    drv.create_volume_from_snapshot(v2, s)
    drv.create_cloned_volume(v3, v)
    assert san.ds[ds(v2)].origin is None and san.ds[ds(v3)].origin is None
    assert [n for n in san.names() if "@" in n] == [ds(v) + "@" + s["name"]]
    drv.delete_snapshot(s)
    drv.delete_volume(v)
    assert san.names() == [ds(v2), ds(v3)]


def test_extend_reopens_the_lun_in_place(drv, san):
    v = vol(18)
    drv.create_volume(v)
    drv.create_export(None, v, {})
    (t,) = san.targets.values()
    before = san.tgtd.snapshot()["targets"][t.iqn]
    n_requests = len(san.tgtd.requests)
    drv.extend_volume(v, 3)
    assert san.ds[ds(v)].volsize == 3 * GIB
    (t2,) = san.targets.values()
    assert t2.luns[1].size == 3 * GIB                     # tgtd re-read the size
    assert t2.tid == t.tid and t2.luns[1].scsi_id == v["id"] and t2.luns[1].online
    after = san.tgtd.snapshot()["targets"][t.iqn]
    assert after[2:] == before[2:]                        # ACLs, CHAP binding, sessions kept
    changes = [r for r in san.tgtd.requests[n_requests:] if r[1] != 2]   # not OP_SHOW
    assert len(changes) == 1                              # ONE update: the LUN never vanishes
    mode, op, _tid, lun, body = changes[0]
    assert (mode, op, lun) == (2, 5, 1) and "online=0,path=" in body and \
        body.endswith("online=1,")


def test_revert(drv, san):
    v = vol(19, 1)
    drv.create_volume(v)
    s = snap(6, v)
    drv.create_snapshot(s)
    drv.extend_volume(v, 2)
    v["size"] = 2
    drv.revert_to_snapshot(None, v, s)
    assert san.calls[-4][:2] == ["zfs", "rollback"]
    assert san.ds[ds(v)].volsize == 2 * GIB               # Cinder's size is kept


def test_revert_blocked_by_newer_snapshot_falls_back_to_cinder_generic(drv, san):
    v, v2 = vol(20), vol(21)
    drv.create_volume(v)
    s1 = snap(7, v)
    drv.create_snapshot(s1)
    drv.create_cloned_volume(v2, v)                       # newer (deferred) clone snapshot
    with pytest.raises(NotImplementedError):
        drv.revert_to_snapshot(None, v, s1)


def test_export_chap_by_default_identity_and_state(san, monkeypatch):
    monkeypatch.setattr(zdriver, "generate_secret", _counter_secret())
    drv = make_driver(san, target_port=3261)              # use_chap_auth left unset
    v = vol(22)
    drv.create_volume(v)
    upd = drv.create_export(None, v, {})
    iqn = PFX + v["name"]
    assert not san.ds[ds(v)].props                        # nothing recorded in ZFS any more
    (t,) = san.targets.values()
    (user,) = t.accounts
    secret = san.accounts[user]
    assert upd == {"provider_location": f"192.0.2.10:3261,{t.tid} {iqn} 1",
                   "provider_auth": f"CHAP {user} {secret}"}
    assert t.acls == ["ALL"]
    lun = t.luns[1]
    assert lun.scsi_id == lun.scsi_sn == v["id"] and not lun.thin and lun.mode_pages == []
    # the secret travelled on stdin, never on an argv
    (i,) = [i for i, c in enumerate(san.calls) if c[:2] == ["zol-wrapper", "export"]]
    assert san.stdins[i] == f"{user} {secret}\n"
    assert not any(secret in a for c in san.calls for a in c)
    state = san.export_state()
    assert state["exports"][iqn]["serial"] == v["id"] and state["accounts"][user] == {
        "secret": secret}
    # ensure_export after a tgtd restart without the SAN's restore: same IQN and CHAP
    san.targets.clear()
    san.accounts.clear()
    v.update(upd)
    drv.ensure_export(None, v)
    (t2,) = san.targets.values()
    assert t2.iqn == iqn and san.accounts == {user: secret}
    conn = drv.initialize_connection(v, {"initiator": "iqn.x", "ip": "192.0.2.20"})
    assert conn["driver_volume_type"] == "iscsi"
    data = conn["data"]
    assert data["target_portal"] == "192.0.2.10:3261" and data["target_iqn"] == iqn
    assert data["target_lun"] == 1 and data["auth_method"] == "CHAP"
    assert data["auth_username"] == user and data["auth_password"] == secret
    assert data["discard"] is False and data["target_discovered"] is False
    assert drv.terminate_connection(v, {"initiator": "iqn.x"}) is False
    shared = dict(v, volume_attachment=[object(), object()])
    assert drv.terminate_connection(shared, {"initiator": "iqn.x"}) is True
    drv.remove_export(None, v)
    assert san.targets == {} and san.accounts == {}
    assert san.export_state()["exports"] == {} and san.export_state()["accounts"] == {}


def test_export_replays_a_dropped_zvol_link(drv, san):
    v = vol(30)
    drv.create_volume(v)
    san.unlinked.add(ds(v))                               # udev failed (openzfs#12301)
    drv.create_export(None, v, {})
    renames = [c for c in san.calls if c[:2] == ["zfs", "rename"]]
    assert renames == [["zfs", "rename", ds(v), ds(v) + ".relink"],
                       ["zfs", "rename", ds(v) + ".relink", ds(v)]]
    assert len(san.targets) == 1
    drv.remove_export(None, v)
    drv.delete_volume(v)


def test_exported_volume_delete_removes_target_first(drv, san):
    v = vol(28)
    drv.create_volume(v)
    drv.create_export(None, v, {})                        # remove_export never came
    drv.delete_volume(v)
    assert ds(v) not in san.ds and san.targets == {}


def test_initiator_acl_option_is_recorded(san):
    drv = make_driver(san, zol_target_initiators=["192.0.2.20", "192.0.2.21"])
    v = vol(29)
    drv.create_volume(v)
    drv.create_export(None, v, {})
    (t,) = san.targets.values()
    assert t.acls == ["192.0.2.20", "192.0.2.21"]
    assert san.export_state()["exports"][t.iqn]["initiators"] == ["192.0.2.20", "192.0.2.21"]
    out = san.restart_tgtd()
    assert "restored" in out
    (t,) = san.targets.values()
    assert t.acls == ["192.0.2.20", "192.0.2.21"]
    drv.remove_export(None, v)
    drv.delete_volume(v)


def test_thick_backend_no_discard_and_write_cache_off(san):
    drv = make_driver(san, zol_parent_dataset="zol/cinder-thick", san_thin_provision=False,
                      iscsi_write_cache="off")
    v = vol(34)
    drv.create_volume(v)
    v.update(drv.create_export(None, v, {}))
    (t,) = san.targets.values()
    assert not t.luns[1].thin and len(t.luns[1].mode_pages) == 1
    assert t.luns[1].mode_pages[0].startswith("8:0:18:0x10:0:")   # caching page, WCE=0
    assert drv.initialize_connection(v, {"initiator": "iqn.x"})["data"]["discard"] is False


def test_discard_only_when_the_operator_says_the_san_can_unmap(san):
    """tgt 1.0.85 fails every UNMAP on a zvol: by default (report_discard_supported unset) a
    thin LUN gets no thin_provisioning and no discard is announced; with it (tgt >= 1.0.90)
    both; a thick backend never."""
    default = make_driver(san)
    v = vol(43)
    default.create_volume(v)
    v.update(default.create_export(None, v, {}))
    (t,) = san.targets.values()
    assert not t.luns[1].thin
    assert default.initialize_connection(v, {"initiator": "iqn.x"})["data"]["discard"] is False
    default.remove_export(None, v)
    on = make_driver(san, report_discard_supported=True)
    v.update(on.create_export(None, v, {}))
    (t,) = san.targets.values()
    assert t.luns[1].thin
    assert on.initialize_connection(v, {"initiator": "iqn.x"})["data"]["discard"] is True
    on.remove_export(None, v)
    thick = make_driver(san, zol_parent_dataset="zol/cinder-thick", san_thin_provision=False,
                        report_discard_supported=True)
    w = vol(44)
    thick.create_volume(w)
    w.update(thick.create_export(None, w, {}))
    assert thick.initialize_connection(w, {"initiator": "iqn.x"})["data"]["discard"] is False
    thick.remove_export(None, w)
    for d, x in ((default, v), (thick, w)):
        d.delete_volume(x)


def test_multipath_portals(san):
    drv = make_driver(san, target_secondary_ip_addresses=["192.0.2.11", "2001:db8::11"])
    v = vol(35)
    drv.create_volume(v)
    v.update(drv.create_export(None, v, {}))
    iqn = PFX + v["name"]
    assert v["provider_location"].startswith(
        "192.0.2.10:3260;192.0.2.11:3260;[2001:db8::11]:3260,")
    data = drv.initialize_connection(v, {"initiator": "iqn.x", "multipath": True})["data"]
    assert data["target_portals"] == ["192.0.2.10:3260", "192.0.2.11:3260",
                                      "[2001:db8::11]:3260"]
    assert data["target_iqns"] == [iqn] * 3 and data["target_luns"] == [1] * 3
    assert data["target_portal"] == "192.0.2.10:3260"
    single = make_driver(san)
    w = vol(36)
    single.create_volume(w)
    w.update(single.create_export(None, w, {}))
    data = single.initialize_connection(w, {"initiator": "iqn.x", "multipath": True})["data"]
    assert data["target_portals"] == ["192.0.2.10:3260"] and data["target_luns"] == [1]
    assert "target_portals" not in single.initialize_connection(
        w, {"initiator": "iqn.x"})["data"]


def test_chap_off_explicitly_and_ensure_export_never_invents(san):
    off = make_driver(san, use_chap_auth=False)
    v = vol(37)
    off.create_volume(v)
    upd = off.create_export(None, v, {})
    assert upd["provider_auth"] is None
    (t,) = san.targets.values()
    assert t.accounts == []
    off.remove_export(None, v)
    on = make_driver(san)
    v.update(upd)                                         # exported before CHAP was on
    assert on.ensure_export(None, v)["provider_auth"] is None
    (t,) = san.targets.values()
    assert t.accounts == [] and san.accounts == {}
    on.remove_export(None, v)
    on.delete_volume(v)


def test_shared_chap_account_is_kept_while_another_target_uses_it(san):
    drv = make_driver(san, chap_username="cinder", chap_password="SharedSecret1234")
    a, b = vol(38), vol(39)
    for v in (a, b):
        drv.create_volume(v)
        v.update(drv.create_export(None, v, {}))
        assert v["provider_auth"] == "CHAP cinder SharedSecret1234"
    assert [t.accounts for t in san.targets.values()] == [["cinder"], ["cinder"]]
    drv.remove_export(None, a)
    (t,) = san.targets.values()
    assert t.iqn == PFX + b["name"] and t.accounts == ["cinder"]   # b is NOT open now
    assert san.accounts == {"cinder": "SharedSecret1234"}
    assert not san.tgtd.login(t.iqn) and san.tgtd.login(t.iqn, user="cinder",
                                                        secret="SharedSecret1234")
    drv.remove_export(None, b)
    assert san.accounts == {}


def test_foreign_account_and_target_are_refused(san):
    drv = make_driver(san, chap_username="admin", chap_password="SharedSecret1234")
    san.tgtd.handle(7, 0, -1, 0, "user=admin,password=ForeignSecret99")   # not Cinder's
    v = vol(40)
    drv.create_volume(v)
    with pytest.raises(cinder_exception.ISCSITargetCreateFailed):
        drv.create_export(None, v, {})
    assert san.accounts == {"admin": "ForeignSecret99"} and san.targets == {}


def test_backend_errors_become_cinders_exceptions(drv, san):
    v = vol(41)
    drv.create_volume(v)
    drv.create_export(None, v, {})
    san.busy.update([ds(v)] * 1)
    san.fail_next["zfs destroy"] = [(1, f"cannot destroy '{ds(v)}': dataset is busy\n")] * 40
    with pytest.raises(cinder_exception.VolumeIsBusy):
        drv.delete_volume(v)
    san.fail_next.clear()
    san.tgtd_up = False
    with pytest.raises(cinder_exception.TargetUpdateFailed):
        drv.extend_volume(v, 2)
    with pytest.raises(cinder_exception.ISCSITargetRemoveFailed):
        drv.remove_export(None, v)
    san.tgtd_up = True
    drv.remove_export(None, v)
    drv.delete_volume(v)


def test_restore_exports_on_the_san_uses_the_recorded_state(drv, san):
    v = vol(23)
    drv.create_volume(v)
    upd = drv.create_export(None, v, {})
    (t,) = san.targets.values()
    before = san.tgtd.snapshot()
    out = san.restart_tgtd()
    assert "restored" in out and san.tgtd.snapshot() == before   # same tid, WWN, CHAP
    _, user, secret = upd["provider_auth"].split()
    assert san.tgtd.login(t.iqn, user=user, secret=secret) and not san.tgtd.login(t.iqn)


def test_v1_export_properties_are_migrated(drv, san):
    v = vol(42)
    drv.create_volume(v)
    iqn = PFX + v["name"]
    # what protocol 1 wrote (zol:chap is readable by every SAN user: /dev/zfs is 0666)
    san.ds[ds(v)].props.update({"zol:iqn": iqn, "zol:chap": "user1:Secret1234567890"})
    out = san.restart_tgtd()                              # the tgt.service drop-in
    assert f"restored tid=1 iqn={iqn}" in out
    assert san.ds[ds(v)].props == {}                      # the world-readable secret is gone
    (t,) = san.targets.values()
    assert t.accounts == ["user1"] and t.luns[1].scsi_id == v["id"]
    assert san.export_state()["accounts"] == {"user1": {"secret": "Secret1234567890"}}
    v["provider_auth"] = "CHAP user1 Secret1234567890"
    assert drv.ensure_export(None, v)["provider_auth"] == v["provider_auth"]
    drv.remove_export(None, v)
    assert san.accounts == {}


def test_secrets_never_logged(san, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(zdriver, "generate_secret", lambda n=20: "TopSecretValue123456")
    drv = make_driver(san, use_chap_auth=True)
    v = vol(24)
    drv.create_volume(v)
    upd = drv.create_export(None, v, {})
    assert "TopSecretValue123456" in upd["provider_auth"]
    v.update(upd)
    drv.remove_export(None, v)
    assert "TopSecretValue123456" not in caplog.text


def test_stats_one_command(drv, san):
    for i in range(3):
        drv.create_volume(vol(100 + i, 2))
    n = len(san.calls)
    st = drv.get_volume_stats(refresh=True)
    assert len(san.calls) == n + 1
    assert san.calls[-1][:2] == ["zfs", "list"]
    pool = st["pools"][0]
    assert st["storage_protocol"] == "iSCSI" and st["volume_backend_name"] == pool["pool_name"]
    assert pool["provisioned_capacity_gb"] == 6 and pool["total_volumes"] == 3
    assert pool["free_capacity_gb"] == round(san.available / GIB, 2)
    assert pool["total_capacity_gb"] == round((san.available + 212992) / GIB, 2)
    # volume types choose thin or thick (provisioning:type); the backend's is the default
    assert pool["thin_provisioning_support"] and pool["thick_provisioning_support"]
    assert pool["zol_default_provisioning"] == "thin"
    assert pool["consistent_group_snapshot_enabled"]
    assert pool["multiattach"] and pool["reserved_percentage"] == 0
    assert pool["max_over_subscription_ratio"] == "20.0"
    assert drv.get_volume_stats() is st                   # cached until refresh


def test_manage_and_unmanage(drv, san):
    san.execute(["zfs", "create", "-s", "-V", str(3 * GIB - 512), "zol/cinder/legacy"])
    v = vol(25)
    ref = {"source-name": "legacy"}
    assert drv.manage_existing_get_size(v, ref) == 3
    drv.manage_existing(v, ref)
    assert ds(v) in san.ds and "zol/cinder/legacy" not in san.ds
    with pytest.raises(cinder_exception.ManageExistingInvalidReference):
        drv.manage_existing_get_size(v, {"source-name": "nope"})
    with pytest.raises(cinder_exception.ManageExistingInvalidReference):
        drv.manage_existing_get_size(v, {"source-name": "zol/other/x"})
    with pytest.raises(cinder_exception.ManageExistingInvalidReference):
        drv.manage_existing_get_size(v, {})
    san.execute(["zfs", "snapshot", ds(v) + "@before-upgrade"])
    s = snap(8, v)
    assert drv.manage_existing_snapshot_get_size(s, {"source-name": "before-upgrade"}) == 3
    drv.manage_existing_snapshot(s, {"source-name": "before-upgrade"})
    assert ds(v) + "@" + s["name"] in san.ds
    snaps = drv.get_manageable_snapshots([s], None, 10, 0, ["size"], ["asc"])
    assert snaps == [{"reference": {"source-name": s["name"]},
                      "source_reference": {"source-name": v["name"]}, "size": 3,
                      "cinder_id": s["id"], "extra_info": None, "safe_to_manage": False,
                      "reason_not_safe": "already managed"}]
    drv.unmanage_snapshot(s)
    drv.unmanage(v)
    assert ds(v) in san.ds
    listed = drv.get_manageable_volumes([v], None, 10, 0, ["size"], ["asc"])
    assert listed[0]["safe_to_manage"] is False and listed[0]["cinder_id"] == v["id"]


def test_two_backends_in_one_process(san):
    thin = make_driver(san, group="zol-thin")
    thick = make_driver(san, group="zol-thick", zol_parent_dataset="zol/cinder-thick",
                        san_thin_provision=False)
    thin.create_volume(vol(26))
    thick.create_volume(vol(27))
    assert san.ds["zol/cinder/" + vol(26)["name"]].refreservation == 0
    assert san.ds["zol/cinder-thick/" + vol(27)["name"]].refreservation > 0
    assert thin.get_volume_stats(True)["pools"][0]["pool_name"] == "zol-thin"
    assert thick.get_volume_stats(True)["pools"][0]["thick_provisioning_support"]


@pytest.mark.parametrize("overrides,option", [
    ({"zol_parent_dataset": ""}, "zol_parent_dataset"),
    ({"zol_parent_dataset": "zol/absent"}, "zol_parent_dataset"),
    ({"zol_parent_dataset": "zol//bad"}, "zol_parent_dataset"),
])
def test_bad_configuration_names_the_option(san, overrides, option):
    with pytest.raises(cinder_exception.VolumeDriverException) as ei:
        make_driver(san, **overrides)
    assert option in str(ei.value)


def test_wrapper_refusing_or_wrong_protocol(san):
    san.protocol_line = "zol-ssh-wrapper 1.0.0 protocol 1\n"
    with pytest.raises(cinder_exception.VolumeDriverException) as ei:
        make_driver(san)
    assert "protocol 1" in str(ei.value) and "needs 2" in str(ei.value) and \
        "upgrade" in str(ei.value)
    san.fail_next["zol-wrapper version"] = [(64, "zol-ssh-wrapper: denied: x\n")]
    with pytest.raises(cinder_exception.VolumeDriverException) as ei:
        make_driver(san)
    assert "zol-ssh-wrapper" in str(ei.value)


def test_missing_key_and_unknown_host_key(tmp_path):
    group = f"zol-test-{next(_groups)}"
    conf = configuration.Configuration(zdriver.driver.volume_opts, config_group=group)
    conf.append_config_values(zdriver.san.san_opts)
    conf.append_config_values(opts.zol_opts)
    for k, v in {"zol_parent_dataset": "zol/cinder", "san_ip": "127.0.0.1"}.items():
        CONF.set_override(k, v, group=group)
    drv = zdriver.ZFSonLinuxISCSIDriver(configuration=conf)
    with pytest.raises(cinder_exception.VolumeDriverException) as ei:
        drv.do_setup(None)
    assert "san_private_key" in str(ei.value)
    key = tmp_path / "key"
    key.write_text("x")
    CONF.set_override("san_private_key", str(key), group=group)
    CONF.set_override("zol_ssh_known_hosts_file", str(tmp_path / "none"), group=group)
    drv.do_setup(None)
    with pytest.raises(cinder_exception.VolumeDriverException) as ei:
        drv.check_for_setup_error()
    assert "zol_ssh_known_hosts_file" in str(ei.value)


# -- the published command set -------------------------------------------------------------------

def _counter_secret():
    n = itertools.count(1)
    return lambda length=20: f"Secret{next(n):014d}"[:length]


def scenario(san):
    """Every driver operation and branch once, deterministically."""
    thin = make_driver(san, use_chap_auth=True, report_discard_supported=True)
    thick = make_driver(san, zol_parent_dataset="zol/cinder-thick", san_thin_provision=False,
                        zol_volblocksize=16384, zol_clone_mode="copy",
                        zol_target_initiators=["192.0.2.20", "2001:db8::20"])
    for drv in (thin, thick):
        a, b, c = vol(1001), vol(1002, 2), vol(1003)
        drv.create_volume(a)
        san.unlinked.add(drv.zfs.ds(a["name"]))
        s = snap(1001, a)
        drv.create_snapshot(s)
        drv.create_volume_from_snapshot(b, s)
        drv.create_cloned_volume(c, a)
        a.update(drv.create_export(None, a, {}))
        drv.initialize_connection(a, {"initiator": "iqn.x"})
        drv.ensure_export(None, a)
        drv.extend_volume(a, 2)
        drv.terminate_connection(a, {"initiator": "iqn.x"})
        drv.remove_export(None, a)
        a["size"] = 2
        try:
            drv.revert_to_snapshot(None, a, s)
        except NotImplementedError:
            pass
        drv.delete_snapshot(s)
        drv.delete_volume(a)
        drv.get_volume_stats(refresh=True)
        drv.delete_volume(b)
        drv.delete_volume(c)
        drv.get_volume_stats(refresh=True)
        d = vol(1004)
        drv.create_volume(d)
        drv.create_snapshot(snap(1004, d))
        drv.revert_to_snapshot(None, d, snap(1004, d))
        drv.delete_snapshot(snap(1004, d))
        drv.delete_volume(d)
    def setup(argv):  # test setup, not the driver: kept out of the published set
        san.execute(argv)
        san.calls.pop()

    setup(["zfs", "create", "-s", "-V", str(GIB), "zol/cinder/legacy"])
    m = vol(1005)
    thin.manage_existing_get_size(m, {"source-name": "legacy"})
    thin.manage_existing(m, {"source-name": "legacy"})
    setup(["zfs", "snapshot", ds(m) + "@old"])
    thin.manage_existing_snapshot_get_size(snap(1005, m), {"source-name": "old"})
    thin.manage_existing_snapshot(snap(1005, m), {"source-name": "old"})
    thin.get_manageable_volumes([], None, 10, 0, ["size"], ["asc"])
    thin.get_manageable_snapshots([], None, 10, 0, ["size"], ["asc"])
    thin.delete_snapshot(snap(1005, m))
    thin.delete_volume(m)
    thin.delete_volume(vol(1006))
    types_scenario(san, thin, thick)


DB = {"name": "db", "extra_specs": {"zol:compression": "zstd", "zol:volblocksize": "16K",
                                    "zol:sync": "always", "provisioning:type": "thick"}}
SCRATCH = {"name": "scratch", "extra_specs": {"zol:compression": "lz4",
                                              "zol:volblocksize": "128K",
                                              "zol:sync": "disabled",
                                              "provisioning:type": "thin"}}


def types_scenario(san, thin, thick):
    """Volume types: every create path with a policy, retype (in place, thin<->thick, by a
    SAN copy), driver-assisted migration, a group snapshot and groups from sources."""
    host = {"host": thin.host}
    a = vol(1010, volume_type=DB)
    thin.create_volume(a)
    s = snap(1010, a)
    thin.create_snapshot(s)
    b = vol(1011, volume_type=DB)
    thin.create_volume_from_snapshot(b, s)
    c = vol(1012, volume_type=DB)
    thin.create_cloned_volume(c, a)
    lz4_thin = {"name": "db-lz4", "extra_specs": {**DB["extra_specs"],
                                                  "zol:compression": "lz4",
                                                  "zol:logbias": "throughput",
                                                  "provisioning:type": "thin"}}
    assert thin.retype(None, b, lz4_thin, {}, host)[0]
    b["volume_type"] = lz4_thin
    assert thin.retype(None, b, {"name": "plain", "extra_specs": {}}, {}, host)[0]
    assert thin.retype(None, c, SCRATCH, {}, host)[0]
    c["volume_type"] = SCRATCH
    d = vol(1013, volume_type=SCRATCH)
    thin.create_volume(d)
    gs = {"id": "group-snap-1", "group_type_id": "cg"}
    snaps = [snap(1013, d), snap(1014, c)]
    thin.create_group_snapshot(None, gs, snaps)
    e, f = vol(1015, volume_type=SCRATCH, snapshot_id=snaps[0]["id"]), \
        vol(1016, volume_type=SCRATCH, snapshot_id=snaps[1]["id"])
    group = {"id": "group-1", "group_type_id": "cg"}
    thin.create_group_from_src(None, group, [e, f], group_snapshot=gs, snapshots=snaps)
    g, h = vol(1017, volume_type=SCRATCH, source_volid=d["id"]), \
        vol(1018, volume_type=SCRATCH, source_volid=c["id"])
    thin.create_group_from_src(None, group, [g, h], source_group={"id": "group-0"},
                               source_vols=[d, c])
    thin.delete_group(None, group, [e, f, g, h])
    thin.delete_group_snapshot(None, gs, snaps)
    thin.delete_volume(d)
    thin.delete_volume(c)
    thin.delete_volume(b)
    thin.delete_snapshot(s)
    moved = thin.migrate_volume(None, a, {
        "host": thick.host, "capabilities": {
            "location_info": "ZFSonLinuxISCSIDriver:192.0.2.10:zol/cinder-thick",
            "zol_default_provisioning": "thick"}})
    assert moved[0]
    thick.delete_volume(a)


def test_driver_argv_fixture_is_current(monkeypatch):
    monkeypatch.setattr(zdriver, "generate_secret", _counter_secret())
    monkeypatch.setattr(zdriver.ZFSonLinuxISCSIDriver, "_cg", staticmethod(lambda g: True))
    san = FakeSan()
    scenario(san)
    assert san.names() == [] and san.names("zol/cinder-thick") == []
    assert san.targets == {} and san.accounts == {}
    ops = {(c[0], c[1]) for c in san.calls}
    assert {("zol-wrapper", v) for v in ("copy", "copy-data", "export", "unexport",
                                         "resize-lun", "show-exports")} <= ops
    lines = sorted({json.dumps(c) for c in san.calls})
    text = "".join(line + "\n" for line in lines)
    if os.environ.get("ZOL_REGEN_DRIVER_ARGV") or not ARGV_FILE.exists():
        ARGV_FILE.write_text(text)
    assert ARGV_FILE.read_text() == text, (
        "tests/fixtures/driver_argv.jsonl is stale: rerun with ZOL_REGEN_DRIVER_ARGV=1")


def test_manage_refuses_what_cinder_still_has(san, monkeypatch):
    """volume-<uuid>/snapshot-<uuid> of objects Cinder's DB still has, exported zvols, clone
    sources and deferred snapshots are refused; an unmanaged volume-<uuid> can come back."""
    drv = make_driver(san)
    live, gone = vol(50), vol(51)
    for v in (live, gone):
        drv.create_volume(v)
    known = {live["id"]}
    monkeypatch.setattr(zdriver.volume_utils, "check_already_managed_volume",
                        lambda vid: vid in known)
    new = vol(52)
    with pytest.raises(cinder_exception.ManageExistingAlreadyManaged):
        drv.manage_existing(new, {"source-name": live["name"]})
    drv.create_export(None, vol(53, name=gone["name"], id=gone["id"]), {})
    with pytest.raises(cinder_exception.ManageExistingInvalidReference, match="exported"):
        drv.manage_existing(new, {"source-name": gone["name"]})
    drv.remove_export(None, gone)
    drv.manage_existing(new, {"source-name": gone["name"]})      # unmanaged earlier: fine
    assert ds(new) in san.ds and ds(gone) not in san.ds
    s_live = snap(50, new)
    drv.create_snapshot(s_live)
    monkeypatch.setattr(zdriver, "_snapshot_known", lambda sid: sid == s_live["id"])
    other = snap(51, new)
    with pytest.raises(cinder_exception.ManageExistingAlreadyManaged):
        drv.manage_existing_snapshot(other, {"source-name": s_live["name"]})
    san.execute(["zfs", "snapshot", ds(new) + "@clone-x"])
    with pytest.raises(cinder_exception.ManageExistingInvalidReference, match="clone"):
        drv.manage_existing_snapshot(other, {"source-name": "clone-x"})


def test_image_copies_use_the_first_of_several_portals():
    from zol_driver import image_transfer
    lun = image_transfer.parse_export(
        "192.0.2.10:3260;192.0.2.11:3260,1 iqn.2010-10.org.openstack:volume-1 1",
        "CHAP u1 Secret1234567890")
    assert (lun.portal, lun.iqn, lun.lun) == ("192.0.2.10:3260",
                                              "iqn.2010-10.org.openstack:volume-1", 1)
