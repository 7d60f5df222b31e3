"""The wrapper's export verbs (protocol 2), run as a subprocess like sshd runs them, against
FakeTgtd behind tgtd's real management-socket protocol.

What is checked: LUN identity/UNMAP/cache parameters, CHAP before the ACL, secrets only on
stdin and in the 0600 state file, idempotence, lowest free TID under concurrency, the lock,
restore after a tgtd restart, v1 migration, refusals that protect foreign targets/accounts,
and that a hung tgtd or udevadm is a clean failure.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

from tests.helpers.faketgtd import MODE_ACCOUNT, MODE_DEVICE, MODE_TARGET, OP_BIND, OP_NEW
from tests.helpers.fakesan import WRAPPER, FakeSan, load_wrapper

W = load_wrapper()
PFX = "iqn.2010-10.org.openstack:"
VID = "0b6e8f2a-1111-4c2d-9a1b-3c4d5e6f7a8b"
V = "zol/cinder/volume-" + VID
T = "zol/cinder-thick/volume-5f0e1d2c-2222-4b3a-8c9d-0e1f2a3b4c5d"
IQN = PFX + "volume-" + VID
SECRET = "Zq8Rk2Lm9Pw4Xt7Y"


@pytest.fixture
def fake(tmp_path):
    f = FakeSan(tmp_path / "san")
    yield f
    f.close()


def wrapper(fake, *argv, stdin=b"", timeout=60):
    return subprocess.run([sys.executable, str(WRAPPER), str(fake.conf), "--", *argv],
                          input=stdin, capture_output=True, timeout=timeout, check=False,
                          env={"PATH": "/usr/bin:/bin"})


def export(fake, ds=V, iqn=IQN, serial=VID, prov="thin", wc="wc-on", auth="chap",
           initiators="ALL", user="chapuser1", secret=SECRET):
    stdin = f"{user} {secret}\n".encode() if auth == "chap" else b""
    return wrapper(fake, "zol-wrapper", "export", ds, iqn, "1", serial, prov, wc, auth,
                   initiators, stdin=stdin)


def test_export_sets_identity_unmap_cache_and_chap_before_acl(fake):
    fake.add_zvol(V)
    r = export(fake, wc="wc-off", prov="thin-unmap")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == f"tid=1 iqn={IQN} lun=1 unmap=yes\n"
    t = fake.tgtd.by_iqn(IQN)
    lu = t.luns[1]
    assert lu.path == str(fake.zvol_dir / V)
    assert lu.scsi_id == lu.scsi_sn == VID and lu.thin
    assert lu.mode_pages == [W.WRITE_CACHE_OFF.partition("=")[2]]
    assert t.accounts == ["chapuser1"] and t.acls == ["ALL"]
    ops = [(m, o) for m, o, *_ in fake.tgtd.requests if o != 2]
    assert ops.index((MODE_ACCOUNT, OP_BIND)) < ops.index((MODE_TARGET, OP_BIND))
    assert ops.index((MODE_DEVICE, 5)) < ops.index((MODE_TARGET, OP_BIND))
    assert fake.tgtd.login(IQN, user="chapuser1", secret=SECRET)
    assert not fake.tgtd.login(IQN) and not fake.tgtd.login(IQN, user="chapuser1",
                                                            secret="WrongSecret1234")
    # state: root-only, holds the secret (restore needs it); the log never does
    st = os.stat(fake.state_dir)
    assert stat.S_IMODE(st.st_mode) == 0o700
    assert stat.S_IMODE(os.stat(fake.state_dir / "exports.json").st_mode) == 0o600
    state = fake.export_state()
    assert state["accounts"] == {"chapuser1": {"secret": SECRET}}
    assert state["exports"][IQN] == {"ds": V, "lun": 1, "serial": VID, "thin": True,
                                     "unmap": True, "wc": "off", "initiators": ["ALL"],
                                     "user": "chapuser1"}
    assert SECRET not in fake.log_text() and SECRET not in r.stdout.decode() + \
        r.stderr.decode()


def test_unmap_only_when_asked(fake):
    """thin: a sparse zvol, but no thin_provisioning (tgt 1.0.85 cannot UNMAP on a zvol);
    thin-unmap: thin_provisioning=1 (LBPU), for a tgt that can (report_discard_supported)."""
    fake.add_zvol(V)
    r = export(fake, prov="thin")
    assert r.returncode == 0 and r.stdout.decode().endswith(" unmap=no\n"), r.stderr
    assert not fake.tgtd.by_iqn(IQN).luns[1].thin
    assert fake.export_state()["exports"][IQN]["thin"] is True
    assert fake.export_state()["exports"][IQN]["unmap"] is False
    ds2, iqn2 = "zol/cinder/volume-u2", PFX + "volume-u2"
    fake.add_zvol(ds2)
    r = export(fake, ds=ds2, iqn=iqn2, prov="thin-unmap", user="u2")
    assert r.returncode == 0 and r.stdout.decode().endswith(" unmap=yes\n"), r.stderr
    assert fake.tgtd.by_iqn(iqn2).luns[1].thin
    fake.reset_tgt()                                      # restored with the same choice
    assert wrapper(fake, "zol-wrapper", "restore-exports").returncode == 0
    assert fake.tgtd.by_iqn(iqn2).luns[1].thin and not fake.tgtd.by_iqn(IQN).luns[1].thin


def test_export_is_idempotent_and_thick_has_no_unmap(fake):
    fake.add_zvol(T)
    iqn = PFX + "thick"
    for _ in range(2):
        r = export(fake, ds=T, iqn=iqn, prov="thick", auth="none",
                   initiators="10.0.0.5,2001:db8::5")
        assert r.returncode == 0, r.stderr
    (t,) = fake.tgtd.targets.values()
    assert not t.luns[1].thin and t.luns[1].mode_pages == []
    assert t.acls == ["10.0.0.5", "2001:db8::5"] and t.accounts == []
    news = [r for r in fake.tgtd.requests if r[1] == OP_NEW]
    assert len(news) == 2                                   # target + LUN, once


def test_chap_stdin_is_validated(fake):
    fake.add_zvol(V)
    for bad in (b"", b"onlyuser\n", b"u " + b"short\n", b"-u " + SECRET.encode() + b"\n",
                b"u " + SECRET.encode() + b" extra\n", b"u " + b"\xff" * 20 + b"\n",
                b"u " + b"A" * 5000 + b"\n"):
        r = wrapper(fake, "zol-wrapper", "export", V, IQN, "1", VID, "thin", "wc-on", "chap",
                    "ALL", stdin=bad)
        assert r.returncode == W.EXIT_DENIED, bad
        assert r.stderr.decode().startswith("zol-ssh-wrapper: denied: stdin:")
    assert fake.tgtd.targets == {}


def test_lowest_free_tid_foreign_targets_kept_and_race_free(fake):
    fake.tgtd.handle(MODE_TARGET, OP_NEW, 1, 0, "targetname=iqn.2001-01.com.example:foreign")
    procs = []
    for i in range(6):
        ds = f"zol/cinder/volume-race{i}"
        fake.add_zvol(ds)
        procs.append(subprocess.Popen(
            [sys.executable, str(WRAPPER), str(fake.conf), "--", "zol-wrapper", "export", ds,
             PFX + f"race-{i}", "1", f"race{i}", "thin", "wc-on", "chap", "ALL"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outs = [p.communicate(f"user{i} {SECRET}{i}\n".encode(), timeout=120)
            for i, p in enumerate(procs)]
    assert all(p.returncode == 0 for p in procs), outs
    tids = sorted(int(o.split()[0].partition(b"=")[2]) for o, _ in outs)
    assert tids == [2, 3, 4, 5, 6, 7]
    assert fake.tgtd.targets[1].iqn == "iqn.2001-01.com.example:foreign"
    assert len(fake.export_state()["exports"]) == 6


def test_changes_wait_for_the_lock(fake):
    fake.add_zvol(V)
    fd = os.open(fake.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        p = subprocess.Popen([sys.executable, str(WRAPPER), str(fake.conf), "--",
                              "zol-wrapper", "export", V, IQN, "1", VID, "thin", "wc-on",
                              "none", "ALL"], stdin=subprocess.DEVNULL)
        time.sleep(1.0)
        assert p.poll() is None and fake.tgtd.targets == {}
        # reads are not serialized
        assert wrapper(fake, "zol-wrapper", "show-exports").returncode == 0
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert p.wait(timeout=30) == 0
    assert fake.tgtd.by_iqn(IQN) is not None


def test_show_exports_lists_only_ours_without_secrets(fake):
    fake.add_zvol(V)
    fake.tgtd.handle(MODE_TARGET, OP_NEW, 1, 0, "targetname=iqn.2001-01.com.example:foreign")
    assert export(fake).returncode == 0
    r = wrapper(fake, "zol-wrapper", "show-exports")
    assert r.returncode == 0
    (line,) = r.stdout.decode().splitlines()
    obj = json.loads(line)
    assert obj["iqn"] == IQN and obj["tid"] == 2 and obj["recorded"] is True
    assert obj["luns"] == [{"lun": 1, "path": str(fake.zvol_dir / V), "scsi_id": VID,
                            "size_mb": 0, "thin": False}]
    assert obj["accounts"] == ["chapuser1"] and SECRET not in r.stdout.decode()


def test_unexport_frees_only_unused_accounts_of_ours(fake):
    a, b = V, "zol/cinder/volume-b"
    for ds in (a, b, "zol/cinder/volume-c"):
        fake.add_zvol(ds)
    assert export(fake, ds=a, iqn=PFX + "a", user="shared").returncode == 0
    assert export(fake, ds=b, iqn=PFX + "b", user="shared").returncode == 0
    # the same user with another secret would break the other target: refused
    r = export(fake, ds="zol/cinder/volume-c", iqn=PFX + "c", user="shared",
               secret="OtherSecret12345")
    assert r.returncode == W.EXIT_VERB and b"another secret" in r.stderr
    r = wrapper(fake, "zol-wrapper", "unexport", PFX + "a")
    assert r.returncode == 0 and r.stdout.startswith(b"removed tid=1 ")
    assert fake.tgtd.accounts == {"shared": SECRET}            # b still uses it
    assert fake.tgtd.by_iqn(PFX + "b").accounts == ["shared"]
    assert not fake.tgtd.login(PFX + "b")
    r = wrapper(fake, "zol-wrapper", "unexport", PFX + "b")
    assert r.returncode == 0 and fake.tgtd.accounts == {}
    r = wrapper(fake, "zol-wrapper", "unexport", PFX + "b")
    assert r.returncode == 0 and r.stdout == f"absent iqn={PFX}b\n".encode()
    assert fake.export_state() == {"version": 2, "exports": {}, "accounts": {}}


def test_foreign_account_is_neither_bound_nor_deleted(fake):
    fake.add_zvol(V)
    fake.tgtd.handle(MODE_ACCOUNT, OP_NEW, -1, 0, "user=admin,password=AdminSecret1234")
    r = export(fake, user="admin", secret=SECRET)
    assert r.returncode == W.EXIT_VERB and b"not created by zol-ssh-wrapper" in r.stderr
    assert fake.tgtd.targets == {} and fake.tgtd.accounts == {"admin": "AdminSecret1234"}


def test_existing_target_serving_another_device_is_refused(fake):
    fake.add_zvol(V)
    other = fake.zvol_dir / "zol/cinder/volume-other"
    other.write_text("")
    fake.tgtd.handle(MODE_TARGET, OP_NEW, 1, 0, f"targetname={IQN}")
    fake.tgtd.handle(MODE_DEVICE, OP_NEW, 1, 1, f"path={other}")
    before = fake.tgtd.snapshot()
    r = export(fake)
    assert r.returncode == W.EXIT_VERB and b"already serves" in r.stderr
    assert fake.tgtd.snapshot() == before


def test_failed_export_leaves_nothing_half_open(fake):
    fake.add_zvol(V)
    real = fake.tgtd._handle

    def refuse_acl(mode, op, tid, lun, body, force):
        if (mode, op) == (MODE_TARGET, OP_BIND):
            return 17, ""
        return real(mode, op, tid, lun, body, force)

    fake.tgtd._handle = refuse_acl
    r = export(fake)
    assert r.returncode == W.EXIT_VERB and b"invalid request" in r.stderr
    assert fake.tgtd.targets == {} and fake.tgtd.accounts == {}
    assert fake.export_state()["exports"] == {} and fake.export_state()["accounts"] == {}


def test_resize_lun_reopens_in_place(fake):
    fake.add_zvol(V)
    assert export(fake).returncode == 0
    (fake.zvol_dir / V).write_bytes(b"\0" * 4096)           # the zvol grew
    n = len(fake.tgtd.requests)
    r = wrapper(fake, "zol-wrapper", "resize-lun", IQN)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == f"resized tid=1 iqn={IQN} lun=1 size_mb=0\n"
    lu = fake.tgtd.by_iqn(IQN).luns[1]
    assert lu.size == 4096 and lu.online and lu.scsi_id == VID
    updates = [q for q in fake.tgtd.requests[n:] if q[1] != 2]
    assert updates == [(MODE_DEVICE, 5, 1, 1,
                        f"targetOps online=0,path={fake.zvol_dir / V},online=1,")]
    r = wrapper(fake, "zol-wrapper", "resize-lun", PFX + "absent")
    assert r.returncode == W.EXIT_VERB and b"is not exported" in r.stderr


def test_restore_after_tgtd_restart_and_v1_migration(fake):
    fake.add_zvol(V)
    fake.add_zvol(T)
    assert export(fake).returncode == 0
    before = fake.tgtd.snapshot()
    # a protocol-1 volume, recorded in zol:* properties only
    fake.set_zfs_get([(T, "zol:iqn", PFX + "thick"), (T, "zol:chap", "olduser:" + SECRET),
                      (T, "zol:initiators", "10.0.0.5"), (T, "zol:deleted", "-"),
                      ("zol/cinder/volume-bad", "zol:iqn", "iqn.1999-01.evil:x")])
    fake.reset_tgt()
    r = wrapper(fake, "zol-wrapper", "restore-exports")
    out = r.stdout.decode()
    assert r.returncode == 0, (out, r.stderr)
    assert f"restored tid=1 iqn={IQN} lun=1 ds={V} chap=yes" in out
    assert f"restored tid=2 iqn={PFX}thick lun=1 ds={T} chap=yes" in out
    assert "skipped zol/cinder/volume-bad: zol:iqn: IQN outside" in out
    assert fake.tgtd.snapshot()["targets"][IQN] == before["targets"][IQN]
    thick = fake.tgtd.by_iqn(PFX + "thick")
    assert thick.acls == ["10.0.0.5"] and thick.accounts == ["olduser"]
    assert thick.luns[1].scsi_id == "5f0e1d2c-2222-4b3a-8c9d-0e1f2a3b4c5d"   # from the name
    assert not thick.luns[1].thin            # the fake zfs reports no refreservation: thick
    state = fake.export_state()
    assert set(state["exports"]) == {IQN, PFX + "thick"}
    assert state["accounts"]["olduser"] == {"secret": SECRET}
    assert SECRET not in out and SECRET not in fake.log_text()
    # idempotent: nothing new the second time
    n = len(fake.tgtd.requests)
    r = wrapper(fake, "zol-wrapper", "restore-exports")
    assert r.returncode == 0 and r.stdout.decode().count("exists tid=") == 2
    assert all(q[1] == 2 for q in fake.tgtd.requests[n:])


def test_restore_failure_is_reported_and_missing_link_waits_outside_the_lock(fake,
                                                                              monkeypatch):
    cfg = W.load_config(str(fake.conf))
    fake.add_zvol(V)
    assert export(fake).returncode == 0
    os.unlink(fake.zvol_dir / V)                             # the link never comes back
    fake.reset_tgt()
    monkeypatch.setattr(W, "WAIT_ZVOL_MAX", 0.5)
    events = []
    real_take = W.take_lock
    monkeypatch.setattr(W, "take_lock", lambda c: events.append("lock") or real_take(c))
    rc = W.verb_restore_exports(cfg, W.Log(cfg, "local"))
    assert rc == W.EXIT_VERB
    assert events == ["lock"] and fake.tgtd.targets == {}
    assert "did not appear" in fake.log_text()


def test_hung_tgtd_is_a_clean_failure(fake, monkeypatch, tmp_path):
    path = str(tmp_path / "hung.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)                                            # accepts, never answers
    conns = []
    t = threading.Thread(target=lambda: conns.append(srv.accept()), daemon=True)
    t.start()
    try:
        fake.write_conf(tgtd_socket=path)
        fake.add_zvol(V)
        cfg = W.load_config(str(fake.conf))
        tgtd = W.Tgtd(cfg.tgtd_socket, timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(W.VerbError, match="timed out"):
            tgtd.show()
        assert time.monotonic() - t0 < 5
    finally:
        srv.close()
        for c, _ in conns:
            c.close()
    fake.write_conf(tgtd_socket=str(tmp_path / "absent.sock"))
    r = wrapper(fake, "zol-wrapper", "show-exports")
    assert r.returncode == W.EXIT_VERB and b"is tgt.service running?" in r.stderr


def test_udevadm_failure_is_clean(fake, monkeypatch):
    fake.write_conf(udevadm=str(fake.root / "bin" / "no-udevadm"))
    cfg = W.load_config(str(fake.conf))
    monkeypatch.setattr(W.os, "listdir", lambda p: ["zd0"] if p == "/sys/block" else
                        os.listdir(p))
    with pytest.raises(W.VerbError, match="udevadm .*no-udevadm.*config key udevadm"):
        W._retrigger_unlinked_zvols(cfg)


def test_state_file_with_loose_mode_is_refused(fake):
    fake.add_zvol(V)
    assert export(fake).returncode == 0
    os.chmod(fake.state_dir / "exports.json", 0o644)
    r = wrapper(fake, "zol-wrapper", "show-exports")
    assert r.returncode == W.EXIT_VERB and b"mode 0600" in r.stderr
    os.chmod(fake.state_dir / "exports.json", 0o600)
    os.chmod(fake.state_dir, 0o755)
    r = wrapper(fake, "zol-wrapper", "show-exports")
    assert r.returncode == W.EXIT_VERB and b"mode 0700" in r.stderr


def test_lock_wait_is_bounded_and_blocking(fake):
    """The lock is a blocking flock with a deadline (no CPU-burning poll), and a waiter gives
    up with a clear message."""
    cfg = W.load_config(str(fake.conf))
    fd = os.open(fake.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        t0 = time.monotonic()
        c0 = time.process_time()
        with pytest.raises(W.VerbError, match="still busy after 1 s"):
            W.take_lock(cfg, timeout=1.0)
        assert 0.9 <= time.monotonic() - t0 < 5
        assert time.process_time() - c0 < 0.2                 # slept, did not poll
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    got = W.take_lock(cfg, timeout=1.0)
    os.close(got)
