"""The wrapper's export verbs on a REAL tgtd (host, userspace), reached through a real sshd with
the restricted Cinder key, checked with libiscsi as an initiator.

* the issue's attack: a foreign, CHAP-protected target + account on the same tgtd; with the
  stolen Cinder key every protocol-1 attack line is denied, every export verb that would touch
  the foreign target or account is refused, the foreign target is unchanged, and its LUN is
  still not readable without its credentials;
* no CHAP secret on any argv: /proc/*/cmdline of every process on the "SAN" is sampled while
  exports with CHAP are created over SSH;
* LUN identity (VPD 0x80/0x83 from the volume id), UNMAP (thin), in-place resize, all seen by
  libiscsi;
* FakeTgtd (the unit tests' model) answers show-exports exactly as the real tgtd does.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import threading
import time

import pytest

from tests.helpers.fakesan import FakeSan, load_wrapper
from tests.plugins.sshd import run_over_ssh

pytestmark = pytest.mark.functional

W = load_wrapper()
PFX = "iqn.2010-10.org.openstack:"
FOREIGN = "iqn.2001-04.com.example:backup"
FOREIGN_SECRET = "BackupSecret123"
SECRET = "Zq8Rk2Lm9Pw4Xt7Y"
VID = "0b6e8f2a-1111-4c2d-9a1b-3c4d5e6f7a8b"
V = "zol/cinder/volume-" + VID
MIB = 1 << 20


@pytest.fixture(scope="module")
def san(wrapper_sshd, host_tgtd):
    """The sshd fixture's wrapper, pointed at the real tgtd; a foreign target set up by the
    SAN's own admin with tgtadm: LUN with known data, CHAP account bound, ACL ALL."""
    fake = wrapper_sshd.fake
    fake.write_conf(syslog=True, tgtd_socket=host_tgtd.socket)
    disk = fake.root / "foreign.img"
    disk.write_bytes(b"FOREIGN-SECRET-DATA" * 1000 + b"\0" * (4 * MIB - 19000))
    t = host_tgtd.tgtadm
    t("--mode", "target", "--op", "new", "--tid", "1", "--targetname", FOREIGN)
    t("--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "1", "--backing-store",
      str(disk))
    t("--mode", "account", "--op", "new", "--user", "backup", "--password", FOREIGN_SECRET)
    t("--mode", "account", "--op", "new", "--user", "spare", "--password", FOREIGN_SECRET)
    t("--mode", "account", "--op", "bind", "--tid", "1", "--user", "backup")
    t("--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address", "ALL")
    yield wrapper_sshd
    fake.write_conf(syslog=True)


@pytest.fixture(scope="module")
def client(san):
    c = san.client()
    yield c
    c.close()


def zvol(san, ds, size=8 * MIB):
    p = san.fake.zvol_dir / ds
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "wb") as f:
        f.truncate(size)
    return p


def export_over_ssh(client, ds, iqn, serial=VID, prov="thin-unmap", auth="chap", user="u1",
                    secret=SECRET):
    return run_over_ssh(client, shlex.join(["zol-wrapper", "export", ds, iqn, "1", serial, prov,
                                            "wc-on", auth, "ALL"]), timeout=60,
                        stdin=f"{user} {secret}\n" if auth == "chap" else "")


def url(tgtd, iqn, user=None, secret=None):
    auth = f"{user}%{secret}@" if user else ""
    return f"iscsi://{auth}127.0.0.1:{tgtd.port}/{iqn}/1"


def libiscsi(*argv, check=False):
    return subprocess.run(list(argv), capture_output=True, text=True, errors="replace",
                          timeout=60, check=check)


def foreign_state(tgtd):
    show = tgtd.tgtadm("--mode", "target", "--op", "show").stdout
    accounts = tgtd.tgtadm("--mode", "account", "--op", "show").stdout
    block = show.split("Target ")
    return [b for b in block if b.startswith("1: ")], accounts


def test_stolen_key_cannot_reach_the_foreign_target(san, client, host_tgtd):
    before = foreign_state(host_tgtd)
    assert "backup" in before[0][0] and "spare" in before[1]
    # the foreign LUN is protected: no login without its credentials
    assert libiscsi("iscsi-readcapacity16", url(host_tgtd, FOREIGN)).returncode != 0
    assert libiscsi("iscsi-readcapacity16", url(host_tgtd, FOREIGN, "backup",
                                                FOREIGN_SECRET)).returncode == 0
    # protocol 1's three-command attack, and its relatives: all denied by the grammar
    for line in ("tgtadm --lld iscsi --mode account --op unbind --tid 1 --user backup",
                 "tgtadm --lld iscsi --mode target --op unbind --tid 1 --initiator-address ALL",
                 "tgtadm --lld iscsi --mode target --op bind --tid 1 --initiator-address ALL",
                 "tgtadm --lld iscsi --mode account --op delete --user backup",
                 "tgtadm --lld iscsi --mode logicalunit --op delete --tid 1 --lun 1",
                 "tgtadm --lld iscsi --mode target --op delete --force --tid 1",
                 f"zol-wrapper unexport {FOREIGN}", f"zol-wrapper resize-lun {FOREIGN}"):
        rc, _, err = run_over_ssh(client, line)
        assert rc == 64 and "denied" in err, (line, err)
    zvol(san, V)
    # a foreign account, bound or not, is not ours: refused, untouched
    for user in ("backup", "spare"):
        rc, _, err = export_over_ssh(client, V, PFX + "grab", user=user, secret=SECRET)
        assert rc == 68 and "not created by zol-ssh-wrapper" in err, err
    # the foreign IQN itself is outside the prefix
    rc, _, err = export_over_ssh(client, V, FOREIGN)
    assert rc == 64 and "outside the configured prefix" in err
    # restore-exports and show-exports leave it alone and do not show it
    assert run_over_ssh(client, "zol-wrapper restore-exports")[0] == 0
    rc, out, _ = run_over_ssh(client, "zol-wrapper show-exports")
    assert rc == 0 and FOREIGN not in out
    assert foreign_state(host_tgtd) == before
    assert libiscsi("iscsi-readcapacity16", url(host_tgtd, FOREIGN)).returncode != 0


def test_export_identity_unmap_resize_on_real_tgtd_secret_never_on_argv(san, client,
                                                                         host_tgtd):
    seen: list[str] = []
    stop = threading.Event()
    samples = [0]

    def watch():
        while not stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if SECRET in cmd:
                    seen.append(cmd)
            samples[0] += 1

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        iqns = []
        for i in range(4):
            vid = f"{i:08d}-1111-4c2d-9a1b-3c4d5e6f7a8b"
            ds = f"zol/cinder/volume-{vid}"
            zvol(san, ds)
            iqn = PFX + f"volume-{vid}"
            rc, out, err = export_over_ssh(client, ds, iqn, serial=vid, user=f"user{i}")
            assert rc == 0, err
            iqns.append((iqn, vid, ds, f"user{i}"))
    finally:
        stop.set()
        watcher.join(10)
    assert samples[0] > 3 and seen == [], seen
    iqn, vid, ds, user = iqns[0]
    assert libiscsi("iscsi-readcapacity16", "-s", url(host_tgtd, iqn)).returncode != 0
    r = libiscsi("iscsi-readcapacity16", "-s", url(host_tgtd, iqn, user, SECRET), check=True)
    assert int(r.stdout.split()[-1]) == 8 * MIB
    # identity from the volume id, not from (tid, lun)
    vpd80 = libiscsi("iscsi-inq", "-e", "1", "-c", "128", url(host_tgtd, iqn, user, SECRET),
                     check=True).stdout
    assert vid in vpd80
    other = libiscsi("iscsi-inq", "-e", "1", "-c", "131", url(host_tgtd, iqns[1][0],
                                                            iqns[1][3], SECRET)).stdout
    mine = libiscsi("iscsi-inq", "-e", "1", "-c", "131", url(host_tgtd, iqn, user, SECRET),
                    check=True).stdout
    assert vid in mine and mine != other
    # UNMAP advertised (logical block provisioning VPD page: LBPU)
    lbp = libiscsi("iscsi-inq", "-e", "1", "-c", "178", url(host_tgtd, iqn, user, SECRET),
                   check=True).stdout
    assert "lbpu:1" in lbp.replace(" ", "").lower(), lbp
    # resize in place: the same target and session parameters, the new size
    tid_before = host_tgtd.tgtadm("--mode", "target", "--op", "show").stdout
    with open(san.fake.zvol_dir / ds, "r+b") as f:
        f.truncate(24 * MIB)
    rc, out, err = run_over_ssh(client, f"zol-wrapper resize-lun {iqn}")
    assert rc == 0 and "size_mb=25" in out, (out, err)
    r = libiscsi("iscsi-readcapacity16", "-s", url(host_tgtd, iqn, user, SECRET), check=True)
    assert int(r.stdout.split()[-1]) == 24 * MIB
    after = host_tgtd.tgtadm("--mode", "target", "--op", "show").stdout
    assert after.replace("25 MB", "X").replace("8 MB", "X") == \
        tid_before.replace("25 MB", "X").replace("8 MB", "X")
    for iqn, *_ in iqns:
        assert run_over_ssh(client, f"zol-wrapper unexport {iqn}")[0] == 0
    assert "user0" not in host_tgtd.tgtadm("--mode", "account", "--op", "show").stdout


def test_faketgtd_answers_like_the_real_tgtd(san, client, host_tgtd, tmp_path):
    """The same export sequence against FakeTgtd and the real tgtd: same show-exports."""
    model = FakeSan(tmp_path / "model")
    try:
        model.zvol_dir = san.fake.zvol_dir
        model.write_conf(zvol_dir=str(san.fake.zvol_dir))
        seq = [["zol-wrapper", "export", "zol/cinder/volume-p1", PFX + "p1", "1", "p1", "thin",
                "wc-on", "chap", "ALL"],
               ["zol-wrapper", "export", "zol/cinder-thick/volume-p2", PFX + "p2", "1", "p2",
                "thick", "wc-off", "none", "10.0.0.5,2001:db8::5"],
               ["zol-wrapper", "export", "zol/cinder/volume-p1", PFX + "p1", "1", "p1", "thin",
                "wc-on", "chap", "ALL"]]
        zvol(san, "zol/cinder/volume-p1")
        zvol(san, "zol/cinder-thick/volume-p2", 3 * MIB)
        outs = []
        for conf in (san.fake.conf, model.conf):
            res = []
            for argv in seq:
                r = subprocess.run(["python3", str(W.__file__), str(conf), "--", *argv],
                                   input=f"p1user {SECRET}\n".encode(), capture_output=True,
                                   timeout=60, check=False)
                res.append((r.returncode, r.stdout.decode()))
            r = subprocess.run(["python3", str(W.__file__), str(conf), "--", "zol-wrapper",
                                "show-exports"], capture_output=True, timeout=60, check=False)
            res.append((r.returncode, r.stdout.decode()))
            outs.append(res)
        real, fake = outs
        # tids differ only because the real tgtd also holds the foreign target (tid 1)
        assert [rc for rc, _ in real] == [rc for rc, _ in fake] == [0, 0, 0, 0]
        assert real[-1][1].replace('"tid": 2', '"tid": 1').replace('"tid": 3', '"tid": 2') \
            == fake[-1][1]
        for argv in seq[:2]:
            subprocess.run(["python3", str(W.__file__), str(san.fake.conf), "--", "zol-wrapper",
                            "unexport", argv[3]], capture_output=True, timeout=60, check=True)
    finally:
        model.close()


def test_tgtd_restart_restores_the_same_identity(san, client, host_tgtd):
    zvol(san, V)
    rc, _, err = export_over_ssh(client, V, PFX + "volume-" + VID)
    assert rc == 0, err
    iqn = PFX + "volume-" + VID
    u = url(host_tgtd, iqn, "u1", SECRET)
    before = libiscsi("iscsi-inq", "-e", "1", "-c", "131", u, check=True).stdout
    # what tgt.service's stop does: every target and account gone
    show = host_tgtd.tgtadm("--mode", "target", "--op", "show").stdout
    for line in show.splitlines():
        if line.startswith("Target ") and PFX in line:
            tid = line.split()[1].rstrip(":")
            host_tgtd.tgtadm("--mode", "target", "--op", "delete", "--force", "--tid", tid)
    host_tgtd.tgtadm("--mode", "account", "--op", "delete", "--user", "u1")
    assert libiscsi("iscsi-inq", "-e", "1", "-c", "131", u).returncode != 0
    t0 = time.monotonic()
    rc, out, err = run_over_ssh(client, "zol-wrapper restore-exports")
    assert rc == 0 and f"restored tid=2 iqn={iqn}" in out, (out, err)
    assert time.monotonic() - t0 < 30
    assert libiscsi("iscsi-inq", "-e", "1", "-c", "131", u, check=True).stdout == before
    assert libiscsi("iscsi-inq", "-e", "1", "-c", "131", url(host_tgtd, iqn)).returncode != 0
    assert run_over_ssh(client, f"zol-wrapper unexport {iqn}")[0] == 0


def test_unmap_frees_space_where_the_backing_store_can_punch_holes(san, client, host_tgtd):
    """PROVISION=thin-unmap: the LUN announces UNMAP, and where tgtd's fallocate(PUNCH_HOLE)
    works (a file here; a zvol needs tgt >= 1.0.90) an initiator's discard frees the blocks."""
    ds = "zol/cinder/volume-unmap"
    p = zvol(san, ds, 32 * MIB)
    iqn = PFX + "volume-unmap"
    rc, out, err = export_over_ssh(client, ds, iqn, serial="unmap", user="unmapuser")
    assert rc == 0 and out.endswith("unmap=yes\n"), (out, err)
    u = url(host_tgtd, iqn, "unmapuser", SECRET)
    r = subprocess.run(["qemu-io", "-f", "raw", "-t", "writeback", "-c", "write -P 0x5a 0 16M",
                        "-c", "flush", u], capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr
    full = os.stat(p).st_blocks * 512
    assert full >= 16 * MIB
    r = subprocess.run(["qemu-io", "-f", "raw", "-d", "unmap", "-t", "writeback", "-c",
                        "discard 0 16M", "-c", "flush", u], capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert os.stat(p).st_blocks * 512 < MIB, os.stat(p).st_blocks
    assert "punch hole" not in host_tgtd.log.read_text(errors="replace")
    assert run_over_ssh(client, f"zol-wrapper unexport {iqn}")[0] == 0
