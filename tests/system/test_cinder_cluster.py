"""Active-active: two cinder-volume services of one cluster drive the same SAN at once.

A stack of its own (tools/cinder-stack --volume-services 2): cinder-api, cinder-scheduler and two
cinder-volume services (hosts zol-cinder-stack and zol-cinder-stack-2, `cluster = zol-cluster`),
Cinder's coordination on a private etcd (Debian's etcd-server through tooz's etcd3gw driver),
both loading zol_driver against the session SAN VM through the restricted cinder key.

- a batch of operations (create, snapshot, volume from snapshot, clone, extend, attach/detach,
  delete) runs in parallel threads; Cinder spreads them over both services (the cluster's topic
  is one queue with two consumers); 0 errors, and nothing of ours is left on the SAN;
- one service is killed with SIGKILL in the middle of a batch of creates; once Cinder sees it
  down, the operator's workers cleanup (POST /workers/cleanup, `cinder work-cleanup`) hands its
  unfinished work to the survivor; every volume ends available or error and is deleted by the
  survivor; volumes written before the kill read back intact; nothing leaked.
"""
from __future__ import annotations

import os
import signal
import time
from concurrent import futures
from pathlib import Path

import pytest

from tests.helpers import iscsi
from tests.plugins.cinder import (CinderStack, iscsi_write_flushed, stop_and_check, wait_gone,
                                  wait_status)
from tests.system.test_cinder_flows import MIB, THIN, attach, detach, zfs_names

pytestmark = [pytest.mark.system, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(sanvm, tmp_path_factory, cinder_stack_module):
    mod = cinder_stack_module
    t0 = time.monotonic()
    try:
        state = mod.start(sanvm, tmp_path_factory.mktemp("cinder-cluster"), volume_services=2)
    except mod.StackError as exc:
        pytest.fail(f"clustered Cinder stack did not start: {exc}", pytrace=False)
    print(f"\ncluster stack (2 volume services + etcd) up in {time.monotonic() - t0:.0f} s")
    stack = CinderStack(state, mod)
    # the batch makes more than the default quota (10 volumes) at once
    stack.client().quotas.update(state["project_id"], volumes=-1, snapshots=-1, gigabytes=-1)
    yield stack
    _delete_everything(stack.client())
    stop_and_check(mod, state)


def _delete_everything(cinder) -> None:
    """What a failed test left: snapshots first, then volumes (reset from a stuck state)."""
    for s in cinder.volume_snapshots.list():
        cinder.volume_snapshots.reset_state(s, "available")
        cinder.volume_snapshots.delete(s)
    for s in cinder.volume_snapshots.list():
        wait_gone(lambda s=s: cinder.volume_snapshots.get(s.id), timeout=600, what="snapshot")
    for v in cinder.volumes.list():
        for a in v.attachments:
            cinder.attachments.delete(a["attachment_id"])
        cinder.volumes.reset_state(v, "available", attach_status="detached")
        cinder.volumes.delete(v)
    for v in cinder.volumes.list():
        wait_gone(lambda v=v: cinder.volumes.get(v.id), timeout=600, what="volume")


@pytest.fixture(scope="module")
def cinder(cluster):
    return cluster.client()


def _volume_services(cinder) -> dict[str, object]:
    return {s.host: s for s in cinder.services.list(binary="cinder-volume")
            if s.host.endswith("@zol-thin")}


def _served_by(stack: CinderStack, ids: list[str]) -> dict[str, int]:
    """How many of `ids` each volume service's log names (work it did itself)."""
    out = {}
    for svc in stack.mod.volume_services(stack.state):
        text = stack.log(svc)
        out[svc] = sum(1 for i in ids if i in text)
    return out


def _ours(san_admin) -> list[str]:
    return [n for n in zfs_names(san_admin, THIN) if n != THIN]


def _exports(san_admin) -> str:
    r = san_admin.run(["cat", "/var/lib/zol-ssh-wrapper/exports.json"], check=False)
    return r.stdout if r.returncode == 0 else ""


def test_both_services_are_up_in_one_cluster(cinder, cluster):
    svcs = _volume_services(cinder)
    assert set(svcs) == {"zol-cinder-stack@zol-thin", "zol-cinder-stack-2@zol-thin"}, svcs
    for s in svcs.values():
        assert s.state == "up" and s.cluster == "zol-cluster@zol-thin", s.to_dict()
    clusters = {c.name: c for c in cinder.clusters.list(detailed=True)}
    c = clusters["zol-cluster@zol-thin"]
    assert (c.num_hosts, c.num_down_hosts) == (2, 0), c.to_dict()
    conf = Path(cluster.state["conf"]).read_text()
    assert "backend_url = etcd3+http://127.0.0.1:" in conf


def _life_of_a_volume(cinder, i: int) -> list[str]:
    """create, snapshot, volume from snapshot, clone, extend, attach/detach, delete all:
    10 Cinder operations on the zol-thin backend; returns the ids it made."""
    def wait_avail(v):
        return wait_status(lambda: cinder.volumes.get(v.id), "available", timeout=600,
                           what="volume")
    v = wait_avail(cinder.volumes.create(1, volume_type="zol-thin", name=f"aa-{i}"))
    s = cinder.volume_snapshots.create(v.id, name=f"aa-{i}-s")
    s = wait_status(lambda: cinder.volume_snapshots.get(s.id), "available", timeout=600,
                    what="snapshot")
    fs = cinder.volumes.create(1, volume_type="zol-thin", snapshot_id=s.id, name=f"aa-{i}-fs")
    cl = cinder.volumes.create(1, volume_type="zol-thin", source_volid=v.id, name=f"aa-{i}-cl")
    fs, cl = wait_avail(fs), wait_avail(cl)
    cinder.volumes.extend(v, 2)
    v = wait_status(lambda: cinder.volumes.get(v.id), "available", timeout=600, what="volume")
    assert v.size == 2
    att_id, info, _ = attach(cinder, cl)
    assert info["target_iqn"].endswith(cl.id), info
    detach(cinder, cl, att_id)
    for vol in (fs, cl):
        cinder.volumes.delete(vol)
    for vol in (fs, cl):
        wait_gone(lambda vol=vol: cinder.volumes.get(vol.id), timeout=600, what="volume")
    cinder.volume_snapshots.delete(s)
    wait_gone(lambda: cinder.volume_snapshots.get(s.id), timeout=600, what="snapshot")
    cinder.volumes.delete(v)
    wait_gone(lambda: cinder.volumes.get(v.id), timeout=600, what="volume")
    return [v.id, s.id, fs.id, cl.id]


def test_parallel_operations_spread_over_both_services(cinder, cluster, san_admin):
    before = _ours(san_admin)
    n = 3  # 3 x 10 = 30 operations in flight together
    t0 = time.monotonic()
    with futures.ThreadPoolExecutor(n) as pool:
        results = list(pool.map(lambda i: _life_of_a_volume(cinder, i), range(n)))
    took = time.monotonic() - t0
    ids = [i for r in results for i in r]
    served = _served_by(cluster, ids)
    print(f"\n{n * 10} operations in {n} parallel threads in {took:.0f} s; "
          f"ids named per service log: {served}")
    assert all(served.values()), f"one service did no work: {served}"
    assert _ours(san_admin) == before, "zvols/snapshots left on the SAN"
    exports = _exports(san_admin)
    assert not [i for i in ids if i in exports], "exports left in the wrapper's state"


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_kill_one_service_mid_batch_survivor_cleans_up(cinder, cluster, san_admin):
    before = _ours(san_admin)
    # data written before the failure must survive it
    keep = []
    for i in range(2):
        made = cinder.volumes.create(1, volume_type="zol-thin", name=f"aa-keep-{i}")
        v = wait_status(lambda made=made: cinder.volumes.get(made.id), "available",
                        timeout=600, what="volume")
        data = iscsi.random_bytes(MIB)
        att_id, _, url = attach(cinder, v)
        try:
            iscsi_write_flushed(url, data)
        finally:
            detach(cinder, v, att_id)
        keep.append((v, data))

    victim = "volume-2"
    victim_host = "zol-cinder-stack-2@zol-thin"
    batch = [cinder.volumes.create(1, volume_type="zol-thin", name=f"aa-batch-{i}")
             for i in range(6)]
    # kill as soon as the victim has started working on one of them
    deadline = time.monotonic() + 120
    log0 = cluster.log(victim)
    while time.monotonic() < deadline and not any(v.id in cluster.log(victim)[len(log0):]
                                                  for v in batch):
        time.sleep(0.2)
    pid = cluster.state["pids"][victim]
    _kill_group(pid)
    t_kill = time.monotonic()
    print(f"\nkilled {victim} (pgid {pid}) with SIGKILL; statuses then: "
          f"{[cinder.volumes.get(v.id).status for v in batch]}")

    # Cinder notices the death by the missed heartbeats (service_down_time)
    deadline = time.monotonic() + 180
    while _volume_services(cinder)[victim_host].state != "down":
        assert time.monotonic() < deadline, f"{victim_host} never reported down"
        time.sleep(2)
    print(f"{victim_host} down after {time.monotonic() - t_kill:.0f} s")
    cleaning, unavailable = cinder.workers.clean(binary="cinder-volume", is_up=False)
    print(f"workers cleanup: cleaning {[s.host for s in cleaning]}, "
          f"unavailable {[s.host for s in unavailable]}")
    assert victim_host in [s.host for s in cleaning], (cleaning, unavailable)

    # every volume of the batch ends available (finished by the survivor, or before the
    # kill) or error (the victim's unfinished creates, reset by the cleanup)
    final = {}
    for v in batch:
        final[v.id] = wait_status(lambda v=v: cinder.volumes.get(v.id), ("available", "error"),
                                  fail=(), timeout=300, what="volume").status
    print(f"batch after cleanup: {sorted(final.values())}")
    for v, data in keep:
        att_id, _, url = attach(cinder, v)
        try:
            assert iscsi.read(url, MIB) == data, f"{v.id}: data lost across the failure"
        finally:
            detach(cinder, v, att_id)
    for v in batch + [k[0] for k in keep]:
        cinder.volumes.delete(v.id)
    for v in batch + [k[0] for k in keep]:
        wait_gone(lambda v=v: cinder.volumes.get(v.id), timeout=600, what="volume")
    assert _ours(san_admin) == before, "zvols left on the SAN after the survivor's cleanup"
    exports = _exports(san_admin)
    assert not [v.id for v in batch if v.id in exports], "exports left in the wrapper's state"
