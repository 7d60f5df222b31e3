"""The wrapper in the real OpenZFS SAN VM, with the cinder key (paramiko, host key checked).

Real zfs and the SAN's tgtd behind the forced command: allowed commands work, denied ones leave
the pool and tgtd untouched; an export made with `zol-wrapper export` (CHAP on stdin) comes
back with the same IQN, LUN, identity and CHAP after `systemctl restart tgt` and after a reboot
of the VM, proven by a real libiscsi login reading the data written before; a protocol-1
export recorded in zol:* properties is migrated into the state file by the restore.  The
reboot test is LAST in this file (it takes the VM away for a minute); everything created here
is removed at the end.
"""
from __future__ import annotations

import shlex
import time
import uuid

import paramiko
import pytest

from tests.helpers import iscsi
from tests.helpers.fakesan import load_wrapper
from tests.plugins.sshd import run_over_ssh, wait_sanvm_ssh
from zol_driver import sancli

pytestmark = pytest.mark.system

W = load_wrapper()
UID = uuid.uuid4().hex[:12]
DS = f"zol/cinder/volume-zwt-{UID}"
SCRATCH = f"zol/cinder/volume-zws-{UID}"
IQN_SUFFIX = f"volume-zwt-{UID}"
CHAP_USER = f"zwt{UID[:8]}"
CHAP_SECRET = "Zq8Rk2Lm9Pw4Xt7Y" + UID[:4]
DATA_LEN = 1024 * 1024
SIZE = 64 * 1024 * 1024
SERIAL = str(uuid.UUID(int=int(UID, 16)))
V1DS = f"zol/cinder/volume-zv1-{UID}"


class SanKey:
    """One key's view of the SAN: one paramiko connection (host key checked), re-made after a
    reboot.  The cinder key goes through the wrapper; the admin key is for inspection only."""

    def __init__(self, state: dict, key: str = "cinder"):
        self.state = state
        self.key = key
        self.client: paramiko.SSHClient | None = None

    def connect(self) -> paramiko.SSHClient:
        c = paramiko.SSHClient()
        c.load_host_keys(self.state["known_hosts"])
        c.set_missing_host_key_policy(paramiko.RejectPolicy())
        c.connect(self.state["host"], port=self.state["ssh_port"], username="root",
                  key_filename=self.state["keys"][self.key], allow_agent=False,
                  look_for_keys=False, timeout=60, banner_timeout=60, auth_timeout=60)
        return c

    def run(self, command, timeout: float = 120) -> tuple[int, str, str]:
        if isinstance(command, list):
            command = shlex.join(command)
        t = self.client.get_transport() if self.client else None
        if t is None or not t.is_active():
            self.close()
            self.client = self.connect()
        return run_over_ssh(self.client, command, timeout=timeout)

    def run_stdin(self, argv: list[str], stdin: str, timeout: float = 120):
        """argv with data on the channel's stdin (CHAP credentials), like the driver."""
        self.run(["zol-wrapper", "version"], timeout)        # (re)connects when needed
        return run_over_ssh(self.client, shlex.join(argv), timeout=timeout, stdin=stdin)

    def ok(self, argv: list[str], timeout: float = 120) -> str:
        rc, out, err = self.run(argv, timeout)
        assert rc == 0, f"{shlex.join(argv)} -> {rc}: {err}"
        return out

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


@pytest.fixture(scope="module")
def admin(sanvm):
    key = SanKey(sanvm, "admin")
    yield key
    key.close()


@pytest.fixture(scope="module")
def cinder(sanvm, admin):
    key = SanKey(sanvm)
    yield key
    # clean up everything this module may have created: through the wrapper first (its state
    # file), then with the admin key (works even if the test failed half-way)
    for suffix in (IQN_SUFFIX, IQN_SUFFIX + "-v1"):
        key.run(["zol-wrapper", "unexport", sanvm["iqn_prefix"] + suffix])
    key.close()
    show = admin.run(["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show"])[1]
    cmds = [f"tgtadm --lld iscsi --mode target --op delete --force --tid {t['tid']}"
            for t in W.parse_show(show).values() if UID in t["iqn"]]
    cmds.append(shlex.join(["tgtadm", "--lld", "iscsi", "--mode", "account", "--op", "delete",
                            "--user", CHAP_USER]))
    # tgtd may hold the zvol for a moment after its target is gone ("dataset is busy")
    cmds += ["for i in $(seq 20); do ! zfs list %s >/dev/null 2>&1 && break; "
             "zfs destroy -r %s && break; sleep 1; done" % (shlex.quote(ds), shlex.quote(ds))
             for ds in (DS, SCRATCH, V1DS)]
    admin.run("; ".join(c + " 2>/dev/null" for c in cmds), timeout=180)
    left = admin.ok(["zfs", "list", "-H", "-o", "name", "-r", "zol"])
    assert UID not in left, left


def pool_snapshot(admin: SanKey, pool: str) -> tuple[str, str]:
    return (admin.ok(["zpool", "list", "-H", "-o", "name,health", pool]),
            admin.ok(["zfs", "list", "-H", "-o", "name,guid", "-r", "-t", "all", pool]))


def target_of(admin: SanKey, iqn: str):
    show = admin.ok(["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show"])
    return W.parse_show(show).get(iqn)


def test_version(cinder):
    out = cinder.ok(["zol-wrapper", "version"])
    assert out == f"zol-ssh-wrapper {W.VERSION} protocol {W.PROTOCOL}\n"


def test_real_zfs_allowed(cinder, admin):
    cinder.ok(["zfs", "create", "-s", "-V", str(SIZE), SCRATCH])
    cinder.ok(["zol-wrapper", "wait-zvol", SCRATCH, "60"])
    out = cinder.ok(["zfs", "list", "-H", "-p", "-o", "name,volsize,refreservation", SCRATCH])
    assert out.split("\t") == [SCRATCH, str(SIZE), "0\n"]
    cinder.ok(["zfs", "snapshot", SCRATCH + "@s1"])
    out = cinder.ok(["zfs", "list", "-H", "-p", "-o", "name", "-t", "volume,snapshot", "-r",
                     SCRATCH])
    assert out.split() == [SCRATCH, SCRATCH + "@s1"]
    # destroying a volume with snapshots fails in zfs itself (no -r for us); exit passes through
    rc, _, err = cinder.run(["zfs", "destroy", SCRATCH])
    assert rc == 1 and "has children" in err
    cinder.ok(["zfs", "destroy", SCRATCH + "@s1"])
    cinder.ok(["zfs", "destroy", SCRATCH])
    assert SCRATCH not in admin.ok(["zfs", "list", "-H", "-o", "name", "-r", "zol"])
    rc, _, _ = cinder.run(["zfs", "list", "-H", "-p", "-o", "name", SCRATCH])
    assert rc == 1


def test_volume_type_grammar_on_real_zfs(cinder, admin):
    """Issue 11 through the restricted key on OpenZFS 2.1: a create with a type's properties,
    a group snapshot in one command (one createtxg), copy-data 16K -> 128K with the same bytes
    (thin target stays thin), zfs set/inherit, a rename into the other parent and back."""
    src, dst = SCRATCH + "-t16", SCRATCH + "-t128"
    mib = 1024 * 1024
    try:
        cinder.ok(["zfs", "create", "-b", "16384", "-o", "compression=zstd", "-o",
                   "sync=always", "-V", str(SIZE), src])
        cinder.ok(["zfs", "create", "-s", "-b", "131072", "-o", "compression=lz4", "-V",
                   str(SIZE), dst])
        got = cinder.ok(["zfs", "get", "-H", "-p", "-o", "name,property,value",
                         "compression,sync,volblocksize", src]).split()
        assert got[2::3] == ["zstd", "always", "16384"], got
        cinder.ok(["zol-wrapper", "wait-zvol", src, "60"])
        admin.ok(["sh", "-c", f"head -c {3 * mib} /dev/urandom | dd of=/dev/zvol/{src} "
                  f"bs=1M seek=2 conv=fsync status=none"])
        cinder.ok(["zfs", "snapshot", src + "@g", dst + "@g"])
        txgs = admin.ok(["zfs", "get", "-H", "-p", "-o", "value", "createtxg",
                         src + "@g", dst + "@g"]).split()
        assert len(txgs) == 2 and txgs[0] == txgs[1], txgs
        cinder.ok(["zfs", "destroy", dst + "@g"])
        cinder.ok(["zfs", "destroy", src + "@g"])
        out = cinder.ok(["zol-wrapper", "copy-data", src, dst], timeout=600)
        assert out.startswith(f"copied {src} -> {dst} bytes={SIZE} nonzero={3 * mib}"), out
        sums = admin.ok(["sha256sum", "/dev/zvol/" + src, "/dev/zvol/" + dst]).split()
        assert sums[0] == sums[2], sums
        used = int(admin.ok(["zfs", "get", "-H", "-p", "-o", "value", "used", dst]))
        assert used < 8 * mib, used                      # zero chunks skipped: still thin
        cinder.ok(["zfs", "set", "compression=zstd-fast-1000", dst])
        cinder.ok(["zfs", "inherit", "compression", dst])
        assert cinder.ok(["zfs", "get", "-H", "-p", "-o", "name,property,value",
                          "compression", dst]).split()[2] == "off"
        moved = "zol/cinder-thick/" + dst.rpartition("/")[2]
        cinder.ok(["zfs", "rename", dst, moved])
        cinder.ok(["zfs", "rename", moved, dst])
        rc, _, err = cinder.run(["zfs", "set", "compression=zstd-20", dst])
        assert rc == 64 and "compression must be one of" in err
    finally:
        admin.run(["sh", "-c", f"zfs destroy -r {src}; zfs destroy -r {dst}; "
                   f"zfs destroy -r zol/cinder-thick/{dst.rpartition('/')[2]}"])


DENIED = [
    ["zfs", "destroy", "-r", "zol"],
    ["zfs", "destroy", "-r", "zol/cinder"],
    ["zfs", "destroy", "zol/cinder"],
    ["sh", "-c", "id"],
    ["zpool", "destroy", "zol"],
    ["zfs", "create", "-V", str(SIZE), "zol/outside-" + UID],
    ["zfs", "create", "-V", str(SIZE), "zol/cinder/a/b"],
    ["zfs", "set", "mountpoint=/", "zol/cinder/x"],
    ["tgtadm", "--lld", "iscsi", "--mode", "sys", "--op", "update", "--name", "State", "-v",
     "offline"],
    ["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show"],
    ["zfs", "set", "zol:chap=u:Zq8Rk2Lm9Pw4Xt7Y", "zol/cinder/x"],
    ["zol-wrapper", "export", "zol/cinder/x", "iqn.2001-04.com.example:x", "1", "x", "thin",
     "wc-on", "none", "ALL"],
    ["tgtadm", "--lld", "iscsi", "--mode", "logicalunit", "--op", "new", "--tid", "99",
     "--lun", "1", "--backing-store", "/dev/vda"],
]


def test_denied_leaves_pool_untouched(cinder, admin, sanvm):
    before = pool_snapshot(admin, sanvm["pool"])
    tgt_before = admin.ok(["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show"])
    for argv in DENIED:
        rc, out, err = cinder.run(argv)
        assert rc == 64, (argv, rc, err)
        assert err.startswith("zol-ssh-wrapper: denied: ") and out == "", (argv, err)
    assert pool_snapshot(admin, sanvm["pool"]) == before
    assert before[0].split() == [sanvm["pool"], "ONLINE"]
    assert admin.ok(["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show"]) \
        == tgt_before


def test_injection_over_ssh(cinder, admin):
    for raw in ("zfs list -H -p -o name zol/cinder; touch /tmp/pwned-" + UID,
                "zfs list -H -p -o name $(touch /tmp/pwned-" + UID + ")",
                "zfs list -H -p -o name `touch /tmp/pwned-" + UID + "`",
                "zfs version\ntouch /tmp/pwned-" + UID):
        rc, _, _ = cinder.run(raw)
        assert rc == 64
    assert admin.run(["test", "-e", "/tmp/pwned-" + UID])[0] == 1
    rc, _, _ = cinder.run("")
    assert rc == 65


def test_decisions_logged_on_san(cinder, admin):
    cinder.run(["zfs", "destroy", "-R", "zol/cinder/logcheck-" + UID])
    log = admin.ok(["tail", "-n", "50", "/var/log/zol-ssh-wrapper.log"])
    line = [x for x in log.splitlines() if "logcheck-" + UID in x][-1]
    assert "client=10.0.2.2:" in line and "decision=denied" in line


def test_zol_san_check_against_the_san(sanvm, tmp_path, capsys):
    """`zol-san check` from this (Cinder) host: every check passes against the real SAN."""
    conf = tmp_path / "cinder.conf"
    conf.write_text("[zol1]\n"
                    f"san_ip = {sanvm['host']}\nsan_ssh_port = {sanvm['ssh_port']}\n"
                    f"san_login = root\nsan_private_key = {sanvm['keys']['cinder']}\n"
                    f"zol_ssh_known_hosts_file = {sanvm['known_hosts']}\n"
                    f"zol_parent_dataset = {sanvm['parents'][0]}\nssh_conn_timeout = 60\n")
    rc = sancli.main(["check", "--config-file", str(conf), "--backend", "zol1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.count("[ OK ]") == 4
    conf.write_text(conf.read_text().replace(sanvm["parents"][0], "zol/not-there-" + UID))
    assert sancli.main(["check", "--config-file", str(conf), "--backend", "zol1"]) == 1
    assert "[FAIL] the wrapper does not allow zol/not-there-" in capsys.readouterr().out


def _export(cinder: SanKey, sanvm: dict) -> tuple[str, int]:
    iqn = sanvm["iqn_prefix"] + IQN_SUFFIX
    cinder.ok(["zfs", "create", "-V", str(SIZE), DS])
    cinder.ok(["zol-wrapper", "wait-zvol", DS, "60"])
    rc, out, err = cinder.run_stdin(["zol-wrapper", "export", DS, iqn, "1", SERIAL, "thick",
                                     "wc-on", "chap", "ALL"], f"{CHAP_USER} {CHAP_SECRET}\n")
    assert rc == 0, err
    return iqn, int(out.split()[0].partition("=")[2])


def _assert_export(admin: SanKey, sanvm: dict, iqn: str, data: bytes) -> None:
    t = target_of(admin, iqn)
    assert t is not None, f"target {iqn} not back"
    assert t["luns"][1]["path"] == "/dev/zvol/" + DS
    assert t["luns"][1]["scsi_id"] == SERIAL
    assert CHAP_USER in " ".join(t["accounts"])
    assert t["acls"] == ["ALL"]
    url = iscsi.iscsi_url("127.0.0.1", sanvm["iscsi_port"], iqn, 1, CHAP_USER, CHAP_SECRET)
    assert iscsi.read(url, len(data)) == data
    # CHAP is really enforced: a wrong secret cannot log in
    bad = iscsi.iscsi_url("127.0.0.1", sanvm["iscsi_port"], iqn, 1, CHAP_USER,
                          "Wrong0secret0000")
    with pytest.raises(RuntimeError):
        iscsi.read(bad, 512, timeout=60)


@pytest.fixture(scope="module")
def exported(cinder, sanvm):
    """A zvol exported through the cinder key with CHAP, holding 1 MiB of random data."""
    iqn, tid = _export(cinder, sanvm)
    data = iscsi.random_bytes(DATA_LEN)
    url = iscsi.iscsi_url("127.0.0.1", sanvm["iscsi_port"], iqn, 1, CHAP_USER, CHAP_SECRET)
    iscsi.write(url, data)
    assert iscsi.read(url, DATA_LEN) == data
    return {"iqn": iqn, "tid": tid, "data": data}


def test_restore_is_idempotent(cinder, exported):
    rc, out, err = cinder.run(["zol-wrapper", "restore-exports"])
    assert rc == 0, err
    assert f"exists tid={exported['tid']} iqn={exported['iqn']} ds={DS}" in out


def test_export_survives_tgt_restart(cinder, admin, sanvm, exported):
    admin.ok(["systemctl", "restart", "tgt"])
    _assert_export(admin, sanvm, exported["iqn"], exported["data"])
    journal = admin.ok(["journalctl", "-u", "tgt", "-n", "200", "--no-pager"])
    assert "restored tid=" in journal and exported["iqn"] in journal
    assert CHAP_SECRET not in journal


def test_v1_export_is_migrated_by_the_restore(cinder, admin, sanvm):
    """A protocol-1 volume (export in zol:* properties, CHAP secret world-readable there):
    the tgt.service restore exports it, moves the secret into the state file and removes the
    properties."""
    iqn = sanvm["iqn_prefix"] + IQN_SUFFIX + "-v1"
    admin.ok(["zfs", "create", "-s", "-V", str(SIZE), V1DS])
    for prop, value in (("zol:iqn", iqn), ("zol:lun", "1"),
                        ("zol:chap", f"{CHAP_USER}v1:{CHAP_SECRET}"),
                        ("zol:initiators", "ALL")):
        admin.ok(["zfs", "set", f"{prop}={value}", V1DS])
    admin.ok(["systemctl", "restart", "tgt"])
    t = target_of(admin, iqn)
    assert t is not None and t["accounts"] == [CHAP_USER + "v1"]
    assert t["luns"][1]["scsi_id"] == "zv1-" + UID          # derived from the zvol's name
    props = admin.ok(["zfs", "get", "-H", "-o", "property,source", "all", V1DS])
    assert "zol:" not in props, props
    state = admin.ok(["cat", "/var/lib/zol-ssh-wrapper/exports.json"])
    assert iqn in state and CHAP_SECRET in state
    url = iscsi.iscsi_url("127.0.0.1", sanvm["iscsi_port"], iqn, 1, CHAP_USER + "v1",
                          CHAP_SECRET)
    assert len(iscsi.read(url, 512)) == 512
    rc, out, err = cinder.run(["zol-wrapper", "unexport", iqn])
    assert rc == 0 and out.startswith("removed tid="), err
    assert CHAP_USER + "v1" not in admin.ok(["tgtadm", "--lld", "iscsi", "--mode", "account",
                                             "--op", "show"])
    admin.ok(["zfs", "destroy", V1DS])


def test_export_survives_reboot(cinder, admin, sanvm, exported):
    """LAST: reboot the SAN VM; the pool is imported and the export restored at boot."""
    boot_id = admin.ok(["cat", "/proc/sys/kernel/random/boot_id"]).strip()
    cinder.close()
    admin.run(["systemctl", "reboot", "--no-block"])
    admin.close()
    wait_sanvm_ssh(sanvm, timeout=420, since_boot_id=boot_id)
    # sshd is up before tgt.service has finished its ExecStartPost (the restore): wait for it
    deadline = time.monotonic() + 180
    while admin.run(["systemctl", "is-active", "tgt"])[1].strip() != "active":
        assert time.monotonic() < deadline, admin.run(["systemctl", "status", "tgt"])[1]
        time.sleep(2)
    _assert_export(admin, sanvm, exported["iqn"], exported["data"])
    # this boot's journal: the tgt.service drop-in ran the wrapper's restore-exports
    journal = admin.ok(["journalctl", "-b", "-u", "tgt", "--no-pager"])
    assert "restored tid=" in journal and exported["iqn"] in journal, journal[-3000:]
    assert CHAP_SECRET not in admin.ok(["cat", "/var/log/zol-ssh-wrapper.log"])
