"""A second OpenZFS SAN through the real Cinder API: migration by zfs send | zfs receive
(issue 11) and replication v2.1 (issue 12).

Two SAN VMs: the session `sanvm` (A) and the second one `sanvm_b` (B, booted on first use).
For this module the session Cinder stack gets two more backends on B, added in ONE
cinder-volume restart and removed in one at the end:

* `zol-b` on B's zol/cinder, with `zol_retype_copy = false` (Cinder's migration_policy
  semantics for block-size changes): `cinder migrate` from zol-thin (A) to zol-b makes the
  source's cinder-volume stream the volume A -> cinder-volume -> B over its two SSH
  connections, each SAN's key confined by its own wrapper;
* `zol-repl` on B's zol/cinder-thick (the primary), replicated to A's zol/cinder-replica every
  10 s, streamed B -> cinder-volume -> A the same way.  B is the SAN that goes away (powered
  off and booted again on its own disks and ports): the session's other backends live on A.

Data is written and read through Cinder's connection info with a real userspace initiator
(libiscsi via qemu-img); what is on each SAN is read with the admin key.  The tests run in file
order: first the driver's own replication without Cinder (a dropped stream resumes; before
the two backends exist), then migration of one volume (data, type properties on B, nothing on
A; into a full parent: refused, source intact; a block-size retype under `never` refused and
`on-demand` handed to Cinder's generic host copy, which fails cleanly here: no iSCSI initiator
on this cinder-volume host, doc/operator-guide.md), then one replicated volume through
create, sync, failover, failback and delete.
"""
from __future__ import annotations

import hashlib
import re
import time
import uuid

import pytest

from tests.helpers import iscsi
from tests.plugins.cinder import iscsi_write_flushed, wait_gone, wait_status
from tests.plugins.sanvm import load_sanvm_module
from tests.system.test_cinder_flows import attach, detach, read_via_attach, write_via_attach

MIB = 1024 ** 2

# -- migration (zol-b) --------------------------------------------------------------------------
BACKEND_B = "zol-b"
PARENT = "zol/cinder"          # zol-thin's parent on A, zol-b's on B
MIG_MIB = 16
SPECS = {"zol:compression": "lz4", "zol:sync": "disabled"}

# -- replication (zol-repl) ---------------------------------------------------------------------
REPL = "zol-repl"
REPLICA_ID = "san-a"
PRIMARY_PARENT = "zol/cinder-thick"       # on B
REPLICA_PARENT = "zol/cinder-replica"     # on A
INTERVAL = 10
DATA_MIB = 8
STREAM_MIB = 24


def names_of(admin, vid: str) -> list[str]:
    out = admin.out(["zfs", "list", "-H", "-o", "name", "-t", "volume,snapshot", "-r", "zol"])
    return [n for n in out.split() if vid in n]


def zget(admin, ds: str, *props: str) -> dict:
    out = admin.out(["zfs", "get", "-H", "-p", "-o", "property,value", ",".join(props), ds])
    return dict(line.split("\t", 1) for line in out.strip().splitlines())


def vtype(cinder, name: str, specs: dict):
    t = cinder.volume_types.create(name)
    t.set_keys(specs)
    return t


def wait_migration(cinder, vol_id: str, timeout: float = 900):
    deadline = time.monotonic() + timeout
    while True:
        v = cinder.volumes.get(vol_id)
        status = getattr(v, "migration_status", None)
        if status in ("success", "error") and v.status == "available":
            return v
        assert time.monotonic() < deadline, f"migration still {status} / {v.status}"
        time.sleep(2)


def host_of(vol) -> str:
    return getattr(vol, "os-vol-host-attr:host")


def data_blob() -> bytes:
    """Half random, half text: what a compressed send (-c) of an lz4 volume saves on."""
    text = b"".join(b"zol migration line %08d: the quick brown fox\n" % i
                    for i in range(MIG_MIB * MIB // 2 // 48 + 1))[:MIG_MIB * MIB // 2]
    return iscsi.random_bytes(MIG_MIB * MIB // 2) + text


def zvol_sha(admin, ds: str, mib: int = DATA_MIB) -> str | None:
    r = admin.run(["sh", "-c", f"dd if=/dev/zvol/{ds} bs=1M count={mib} iflag=direct "
                               "status=none | sha256sum"], check=False)
    return r.stdout.split()[0] if r.returncode == 0 and r.stdout else None


def names(admin, parent: str) -> list[str]:
    return admin.out(["zfs", "list", "-H", "-o", "name", "-t", "volume,snapshot", "-r",
                      parent]).split()[1:] if admin.run(
        ["zfs", "list", parent], check=False).returncode == 0 else []


def one_common(admin_b, admin_a, vid: str) -> bool:
    """Between two rounds: one zol-repl snapshot of the volume on B, the same on A."""
    b = [n.partition("@")[2] for n in names(admin_b, PRIMARY_PARENT)
         if vid in n and "@zol-repl-" in n]
    a = [n.partition("@")[2] for n in names(admin_a, REPLICA_PARENT)
         if vid in n and "@zol-repl-" in n]
    return len(b) == 1 and a == b


def wait_for(pred, timeout: float, what: str, step: float = 2.0):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(step)


def repl_service(cinder, host: str):
    for s in cinder.services.list(binary="cinder-volume"):
        if s.host == f"{host}@{REPL}":
            return s
    raise AssertionError(f"no cinder-volume service {host}@{REPL}")


def wait_service(cinder, host: str, status: str, timeout: float = 300):
    return wait_for(lambda: (lambda s: s if s.replication_status == status else None)(
        repl_service(cinder, host)), timeout, f"service {host}@{REPL} {status}")


@pytest.fixture(scope="module")
def san_b(cinder_stack, sanvm, sanvm_b, san_admin, san_admin_b):
    """zol-b and zol-repl on B (one cinder-volume restart), and their volume types."""
    mod = cinder_stack.mod
    t0 = time.monotonic()
    a = sanvm
    repl_lines = mod.backend_lines(REPL, mod.ZOL_DRIVER, sanvm_b, sanvm_b["known_hosts"],
                                   PRIMARY_PARENT, True)
    repl_lines += [
        "replication_device = " + ",".join(f"{k}:{v}" for k, v in {
            "backend_id": REPLICA_ID, "san_ip": a["host"], "san_ssh_port": a["ssh_port"],
            "san_login": a["user"], "san_private_key": a["keys"]["cinder"],
            "zol_ssh_known_hosts_file": cinder_stack.state["known_hosts"],
            "zol_parent_dataset": REPLICA_PARENT, "target_ip_address": "127.0.0.1",
            "target_port": a["iscsi_port"]}.items()),
        f"zol_replication_interval = {INTERVAL}",
    ]
    mod.add_backends(cinder_stack.state, {
        BACKEND_B: mod.backend_lines(BACKEND_B, mod.ZOL_DRIVER, sanvm_b, sanvm_b["known_hosts"],
                                     PARENT, True) + ["zol_retype_copy = false"],
        REPL: repl_lines})
    cinder = cinder_stack.client()
    made = [vtype(cinder, "mig-a", {**SPECS, "volume_backend_name": "zol-thin"}),
            vtype(cinder, "mig", {**SPECS, "volume_backend_name": "<or> zol-thin <or> zol-b"}),
            vtype(cinder, "mig-b-128k", {**SPECS, "zol:volblocksize": "128K",
                                         "volume_backend_name": BACKEND_B}),
            vtype(cinder, REPL, {"volume_backend_name": REPL,
                                 "replication_enabled": "<is> True", "zol:compression": "lz4",
                                 "provisioning:type": "thick"})]
    print(f"\nzol-b and zol-repl added (cinder-volume restarted) in "
          f"{time.monotonic() - t0:.0f} s")
    ctx = {"cinder": cinder, "stack": cinder_stack, "host": cinder_stack.host, "vol": None}
    yield ctx
    # leave the stack as it was: B running, zol-repl failed back, nothing on either SAN
    sanvm_mod = load_sanvm_module()
    if not sanvm_mod._alive(sanvm_b["pid"]):
        sanvm_b.update(sanvm_mod.boot(sanvm_mod.load_state(sanvm_b["run_dir"])))
    if repl_service(cinder, cinder_stack.host).replication_status == "failed-over":
        cinder.services.failover_host(f"{cinder_stack.host}@{REPL}", "default")
        wait_service(cinder, cinder_stack.host, "enabled")
    for v in cinder.volumes.list(search_opts={"all_tenants": 1}):
        if v.volume_type in {t.name for t in made}:
            cinder.volumes.delete(v)
            wait_gone(lambda v=v: cinder.volumes.get(v.id), what="volume")
    for t in made:
        cinder.volume_types.delete(t)
    mod.remove_backends(cinder_stack.state, [BACKEND_B, REPL])
    assert names(san_admin_b, PRIMARY_PARENT) == []
    assert names(san_admin, REPLICA_PARENT) == []
    assert names_of(san_admin, "zol-migrate-") == [] and names_of(san_admin_b, "zol-migrate-") == []


# -- the driver's own replication, first: before zol-repl exists (its rounds would pick up
# this test's volume, which lives in the same parent on B) ------------------------------------

def test_a_dropped_stream_resumes(sanvm, sanvm_b, san_admin, san_admin_b, caplog,
                                  monkeypatch):
    """The driver's own Replicator (no Cinder): a STREAM_MIB MiB stream B -> A whose source SSH
    connection is closed after a few MiB; transfer.send resumes with the receive_resume_token
    over a new connection and the replica is identical.  Then delete: the replica goes too."""
    from tests.plugins.zol_driver_sys import make_driver
    from zol_driver import replication

    a = sanvm
    device = ",".join(f"{k}:{v}" for k, v in {
        "backend_id": REPLICA_ID, "san_ip": a["host"], "san_ssh_port": a["ssh_port"],
        "san_login": a["user"], "san_private_key": a["keys"]["cinder"],
        "zol_ssh_known_hosts_file": a["known_hosts"], "zol_parent_dataset": REPLICA_PARENT,
        "target_ip_address": "127.0.0.1", "target_port": a["iscsi_port"]}.items())
    drv = make_driver(sanvm_b, group="zol-sys-repl", zol_parent_dataset=PRIMARY_PARENT,
                      replication_device=[device], zol_replication_interval=0)
    vid = str(uuid.uuid4())
    plain = {"id": vid, "name": "volume-" + vid, "size": 1, "provider_location": None,
             "provider_auth": None, "volume_type": None}
    vol = {**plain, "volume_type": {"name": REPL, "extra_specs": {
        "replication_enabled": "<is> True"}}}
    ds_b, ds_a = f"{PRIMARY_PARENT}/{plain['name']}", f"{REPLICA_PARENT}/{plain['name']}"
    drv.create_volume(plain)
    try:
        san_admin_b.run(["sh", "-c", f"udevadm settle; dd if=/dev/urandom of=/dev/zvol/{ds_b} "
                                     f"bs=1M count={STREAM_MIB} oflag=direct status=none"])
        real_send = replication.transfer.send
        dropped = []

        def send(src_zfs, snap, dst_zfs, dst_ds, base=None, **kw):
            def progress(n):
                if n >= 4 * MIB and not dropped:
                    dropped.append(n)
                    src_zfs.executor.close()       # the source's SSH connection goes away
            return real_send(src_zfs, snap, dst_zfs, dst_ds, base=base, progress=progress,
                             **kw)

        monkeypatch.setattr(replication.transfer, "send", send)
        caplog.set_level("INFO")
        t0 = time.monotonic()
        st = drv.replication.sync(plain["name"])
        took = time.monotonic() - t0
        assert dropped, "the stream was never cut (it finished within a second?)"
        assert "Resuming the stream into " + ds_a in caplog.text
        assert st.bytes >= STREAM_MIB * MIB
        print(f"{STREAM_MIB} MiB full stream cut after {dropped[0] / MIB:.0f} MiB, resumed: "
              f"{st.bytes / MIB:.1f} MiB in {took:.1f} s")
        assert zvol_sha(san_admin, ds_a, STREAM_MIB) == zvol_sha(san_admin_b, ds_b, STREAM_MIB)
        assert san_admin.out(["zfs", "get", "-H", "-o", "value", "receive_resume_token",
                              ds_a]).strip() == "-"
    finally:
        monkeypatch.undo()
        drv.delete_volume(vol)
        drv.executor.close()
        drv.replication.replica.executor.close()
    assert not [n for n in names(san_admin_b, PRIMARY_PARENT) if vid in n]
    assert not [n for n in names(san_admin, REPLICA_PARENT) if vid in n]


# -- migration ----------------------------------------------------------------------------------

def test_migrate_to_san_b_streams_the_volume_and_leaves_nothing_on_a(san_b, san_admin,
                                                                     san_admin_b, sanvm_b):
    cinder, stack = san_b["cinder"], san_b["stack"]
    v = cinder.volumes.create(1, volume_type="mig-a", name="migrate-to-b")
    san_b["vol"] = v
    v = wait_status(lambda: cinder.volumes.get(v.id), "available", what="volume")
    data = data_blob()
    write_via_attach(cinder, v, data)
    ds = f"{PARENT}/volume-{v.id}"
    # what the compressed stream saves on this volume (admin key, not the driver's)
    san_admin.run(["zfs", "snapshot", ds + "@measure"])
    wire = {}
    for flags in ("-L -e -c", "-L -e"):
        wire[flags] = int(san_admin.out(["sh", "-c", f"zfs send {flags} {ds}@measure | wc -c"]))
    san_admin.run(["zfs", "destroy", ds + "@measure"])
    print(f"\nsend of {MIG_MIB} MiB (half text, lz4): -c {wire['-L -e -c'] / MIB:.1f} MiB on "
          f"the wire, plain {wire['-L -e'] / MIB:.1f} MiB")
    assert wire["-L -e -c"] < 0.8 * wire["-L -e"], wire
    # a type that allows both backends, then `cinder migrate` to B
    cinder.volumes.retype(v, "mig", "never")
    deadline = time.monotonic() + 180
    while cinder.volumes.get(v.id).volume_type != "mig":
        assert time.monotonic() < deadline
        time.sleep(2)
    v = wait_status(lambda: cinder.volumes.get(v.id), "available", what="volume")
    pool_b = f"{stack.host}@{BACKEND_B}#" + stack.pool(BACKEND_B)["pool_name"]
    log0 = stack.log_size()
    t0 = time.monotonic()
    cinder.volumes.migrate_volume(v, pool_b, False, False)
    v = wait_migration(cinder, v.id)
    took = time.monotonic() - t0
    assert v.migration_status == "success", v._info
    assert host_of(v) == pool_b
    log = stack.log_since(log0)
    m = re.search(r"migrated \S+ to \S+ on \S+ by zfs send \| zfs receive: ([0-9.]+) MiB in "
                  r"([0-9.]+) s \(([0-9.]+) MiB/s", log)
    assert m, log[-3000:]
    print(f"cinder migrate A -> B: {took:.0f} s in all; stream {m.group(1)} MiB in "
          f"{m.group(2)} s ({m.group(3)} MiB/s)")
    # B has it with the type's policy; A has nothing of it; no temp snapshot anywhere
    assert names_of(san_admin_b, v.id) == [ds]
    got = zget(san_admin_b, ds, "compression", "sync", "refreservation", "volsize")
    assert (got["compression"], got["sync"], got["refreservation"]) == ("lz4", "disabled", "0")
    assert names_of(san_admin, v.id) == []
    assert "volume-" + v.id not in san_admin.out(["tgtadm", "--lld", "iscsi", "--mode",
                                                  "target", "--op", "show"])
    t0 = time.monotonic()
    assert hashlib.sha256(read_via_attach(cinder, v, len(data))).hexdigest() == \
        hashlib.sha256(data).hexdigest()
    print(f"read back {MIG_MIB} MiB from B through iSCSI in {time.monotonic() - t0:.0f} s: "
          "sha256 identical")
    san_b["data"] = data


def test_migration_into_a_full_parent_fails_and_leaves_the_source_intact(san_b, san_admin,
                                                                          san_admin_b):
    """Back to A with A's parent too small for the stream: the receive fails, its partial
    state is aborted, the volume stays on B with its data and export."""
    cinder, stack = san_b["cinder"], san_b["stack"]
    v = cinder.volumes.get(san_b["vol"].id)
    ds = f"{PARENT}/volume-{v.id}"
    used = int(san_admin.out(["zfs", "get", "-H", "-p", "-o", "value", "used", PARENT]))
    san_admin.run(["zfs", "set", f"quota={used + 8 * MIB}", PARENT])
    try:
        pool_a = f"{stack.host}@zol-thin#" + stack.pool("zol-thin")["pool_name"]
        log0 = stack.log_size()
        cinder.volumes.migrate_volume(v, pool_a, False, False)
        v = wait_migration(cinder, v.id)
        assert v.migration_status == "error", v._info
        log = stack.log_since(log0)
        assert "cleaning up the destination (the source is untouched)" in log, log[-3000:]
    finally:
        san_admin.run(["zfs", "set", "quota=none", PARENT])   # quota cannot be inherited
    assert host_of(v).startswith(f"{stack.host}@{BACKEND_B}")
    assert names_of(san_admin, v.id) == []                       # nothing half-received on A
    assert names_of(san_admin_b, v.id) == [ds]                   # source as it was
    assert read_via_attach(cinder, v, len(san_b["data"])) == san_b["data"]


def test_block_size_retype_follows_the_migration_policy_on_zol_b(san_b, san_admin_b):
    """zol_retype_copy = false on zol-b: `never` refuses a volblocksize change; `on-demand`
    hands it to Cinder's generic migration, which attaches both volumes on the cinder-volume
    host through os-brick - no iSCSI initiator here, so it fails and nothing changes."""
    cinder = san_b["cinder"]
    v = cinder.volumes.get(san_b["vol"].id)
    ds = f"{PARENT}/volume-{v.id}"
    bs = zget(san_admin_b, ds, "volblocksize")["volblocksize"]
    cinder.volumes.retype(v, "mig-b-128k", "never")
    time.sleep(8)
    v = wait_status(lambda: cinder.volumes.get(v.id), "available", what="volume")
    assert v.volume_type == "mig" and zget(san_admin_b, ds, "volblocksize")["volblocksize"] == bs
    t0 = time.monotonic()
    cinder.volumes.retype(v, "mig-b-128k", "on-demand")
    v = wait_migration(cinder, v.id)
    print(f"\non-demand block-size retype by Cinder's host copy: {v.migration_status} after "
          f"{time.monotonic() - t0:.0f} s")
    assert v.migration_status == "error" and v.volume_type == "mig"
    assert names_of(san_admin_b, v.id) == [ds]
    assert zget(san_admin_b, ds, "volblocksize")["volblocksize"] == bs
    assert read_via_attach(cinder, v, len(san_b["data"])) == san_b["data"]


def test_deleting_the_migrated_volume_leaves_nothing_on_either_san(san_b, san_admin,
                                                                   san_admin_b):
    cinder = san_b["cinder"]
    v, san_b["vol"] = san_b["vol"], None
    cinder.volumes.delete(v)
    wait_gone(lambda: cinder.volumes.get(v.id), what="volume")
    assert names_of(san_admin, v.id) == [] and names_of(san_admin_b, v.id) == []


# -- replication --------------------------------------------------------------------------------

SHARED: dict = {}


def test_replicated_volume_reaches_the_replica(san_b, cinder_stack, sanvm_b, san_admin,
                                               san_admin_b):
    cinder = san_b["cinder"]
    pool = cinder_stack.pool(REPL)
    assert pool["replication_enabled"] is True and pool["replication_targets"] == [REPLICA_ID]
    assert pool["replication_status"] == "enabled"
    t0 = time.monotonic()
    v = cinder.volumes.create(1, volume_type=REPL, name="t-repl")
    v = wait_status(lambda: cinder.volumes.get(v.id), "available", what="volume")
    assert v.replication_status == "enabled"
    print(f"replicated create (zvol + seed) {time.monotonic() - t0:.1f} s")
    SHARED["vol"] = v
    ds_b, ds_a = f"{PRIMARY_PARENT}/volume-{v.id}", f"{REPLICA_PARENT}/volume-{v.id}"
    # seeded at create: the replica exists with the zol-repl snapshot the primary has
    wait_for(lambda: one_common(san_admin_b, san_admin, v.id), 60,
             "the seeded replica", step=1)
    # the type's policy on both copies (a stream without -p carries none: the driver sets it)
    for admin, ds in ((san_admin_b, ds_b), (san_admin, ds_a)):
        got = zget(admin, ds, "compression", "refreservation")
        assert got["compression"] == "lz4" and int(got["refreservation"]) > 0, (admin.what, got)
    data = iscsi.random_bytes(DATA_MIB * MIB)
    want = hashlib.sha256(data).hexdigest()
    att_id, info, url = attach(cinder, v)
    try:
        assert info["target_portal"] == f"127.0.0.1:{sanvm_b['iscsi_port']}", info
        iscsi_write_flushed(url, data)
    finally:
        detach(cinder, v, att_id)
    written = time.monotonic()
    assert zvol_sha(san_admin_b, ds_b) == want
    wait_for(lambda: zvol_sha(san_admin, ds_a) == want, 6 * INTERVAL + 120,
             "the data on the replica")
    lag = time.monotonic() - written
    print(f"data on the replica {lag:.1f} s after the write (interval {INTERVAL} s)")
    # between rounds: one zol-repl snapshot on each side (older ones dropped), the same one
    wait_for(lambda: one_common(san_admin_b, san_admin, v.id), 60,
             "one common zol-repl snapshot", step=1)
    # the scheduler's copy of the stats may predate the first completed round
    pool = wait_for(lambda: (lambda p: p if p.get("replication_volumes") == 1
                             and p.get("replication_bytes_per_second") else None)(
        cinder_stack.pool(REPL)), 120, "replication figures in the pool")
    assert pool["replication_lag_seconds"] < 6 * INTERVAL + 120, pool
    assert pool["replication_bytes_per_second"] > 0, pool
    SHARED["data1"] = want


def test_failover_serves_the_replica_and_failback_resyncs(san_b, sanvm, sanvm_b, san_admin,
                                                          san_admin_b):
    cinder, host = san_b["cinder"], san_b["host"]
    v = SHARED["vol"]
    ds_b = f"{PRIMARY_PARENT}/volume-{v.id}"
    sanvm_mod = load_sanvm_module()
    t0 = time.monotonic()
    sanvm_mod.poweroff(sanvm_mod.load_state(sanvm_b["run_dir"]))
    print(f"primary SAN B powered off in {time.monotonic() - t0:.0f} s")
    t0 = time.monotonic()
    cinder.services.failover_host(f"{host}@{REPL}", REPLICA_ID)
    svc = wait_service(cinder, host, "failed-over")
    assert svc.active_backend_id == REPLICA_ID and svc.status == "disabled"
    vol = wait_for(lambda: (lambda x: x if x.replication_status == "failed-over" else None)(
        cinder.volumes.get(v.id)), 60, "volume failed-over")
    assert vol.status == "available"
    print(f"failover-host {time.monotonic() - t0:.1f} s")
    # attach: the connection info Cinder returns points to A; the data of the last sync
    att_id, info, url = attach(cinder, vol)
    try:
        assert info["target_portal"] == f"127.0.0.1:{sanvm['iscsi_port']}", info
        assert hashlib.sha256(iscsi.read(url, DATA_MIB * MIB)).hexdigest() == SHARED["data1"]
        data2 = iscsi.random_bytes(DATA_MIB * MIB)
        iscsi_write_flushed(url, data2)
    finally:
        detach(cinder, vol, att_id)
    want2 = hashlib.sha256(data2).hexdigest()
    # the primary comes back (same disks and ports), then failback
    t0 = time.monotonic()
    sanvm_b.update(sanvm_mod.boot(sanvm_mod.load_state(sanvm_b["run_dir"])))
    print(f"primary SAN B booted again in {time.monotonic() - t0:.0f} s")
    assert zvol_sha(san_admin_b, ds_b) == SHARED["data1"]     # B's copy: before failover
    t0 = time.monotonic()
    cinder.services.failover_host(f"{host}@{REPL}", "default")
    svc = wait_service(cinder, host, "enabled")
    assert not svc.active_backend_id and svc.status == "enabled"
    vol = wait_for(lambda: (lambda x: x if x.replication_status == "enabled" else None)(
        cinder.volumes.get(v.id)), 60, "volume replication enabled")
    print(f"failback (changes sent back to B) {time.monotonic() - t0:.1f} s")
    assert zvol_sha(san_admin_b, ds_b) == want2
    att_id, info, url = attach(cinder, vol)
    try:
        assert info["target_portal"] == f"127.0.0.1:{sanvm_b['iscsi_port']}", info
        assert hashlib.sha256(iscsi.read(url, DATA_MIB * MIB)).hexdigest() == want2
    finally:
        detach(cinder, vol, att_id)
    SHARED["data2"] = want2


def test_deleting_a_replicated_volume_deletes_its_replica(san_b, san_admin, san_admin_b):
    cinder = san_b["cinder"]
    v = SHARED.pop("vol")
    cinder.volumes.delete(v)
    wait_gone(lambda: cinder.volumes.get(v.id), what="volume")
    assert not [n for n in names(san_admin_b, PRIMARY_PARENT) if v.id in n]
    assert not [n for n in names(san_admin, REPLICA_PARENT) if v.id in n]

