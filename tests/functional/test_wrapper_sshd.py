"""The wrapper behind a real OpenSSH sshd, reached with paramiko (host key checked).

sshd runs the forced command from authorized_keys (`restrict,from=,command=`) with the client's
command line in SSH_ORIGINAL_COMMAND, exactly as on the SAN; zfs is a fake absolute binary
that records its argv (each test sees what really ran) and tgtd is FakeTgtd behind tgtd's
management socket (tests/functional/test_wrapper_tgtd.py uses a real tgtd).
"""
from __future__ import annotations

import os
import shlex
import threading
import time

import paramiko
import pytest

from tests.helpers import fakestream
from tests.helpers.fakesan import load_wrapper
from tests.plugins.sshd import keygen, run_over_ssh
from zol_driver import exception, ssh, transfer, zfs

pytestmark = pytest.mark.functional

W = load_wrapper()
V = "zol/cinder/volume-0b6e8f2a-1111-4c2d-9a1b-3c4d5e6f7a8b"
PREFIX = "iqn.2010-10.org.openstack:"
SECRET = "Zq8Rk2Lm9Pw4Xt7Y"


@pytest.fixture(scope="module")
def client(wrapper_sshd):
    c = wrapper_sshd.client()
    yield c
    c.close()


@pytest.fixture(autouse=True)
def _clean(wrapper_sshd):
    wrapper_sshd.fake.clear()
    yield


def test_allowed_commands_run(wrapper_sshd, client):
    fake = wrapper_sshd.fake
    cmds = [["zfs", "version"],
            ["zfs", "create", "-s", "-V", "1073741824", V],
            ["zfs", "list", "-H", "-p", "-o", "name,used", "-t", "volume", "-r", "zol/cinder"]]
    for argv in cmds:
        rc, out, err = run_over_ssh(client, shlex.join(argv))
        assert rc == 0, err
    assert fake.executed() == cmds
    rc, out, _ = run_over_ssh(client, "zol-wrapper version")
    assert (rc, out) == (0, f"zol-ssh-wrapper {W.VERSION} protocol {W.PROTOCOL}\n")


@pytest.mark.parametrize("command,code", [
    ("sh -c id", 64),
    ("id", 64),
    ("zfs destroy -r zol/cinder", 64),
    ("zfs destroy zol", 64),
    ("zpool destroy zol", 64),
    ("zfs list -H -p -o name zol/cinder; id", 64),
    ("zfs list -H -p -o name $(id)", 64),
    ("zfs list -H -p -o name `id`", 64),
    ("zfs version\nid", 64),
    ("zfs list -H -p -o name zol/cinder/*", 64),
    ("zfs destroy zol/cinder/../x", 64),
    (b"zfs destroy zol/cinder/\xff\xfe", 64),
    ("scp -t /root/.ssh/authorized_keys", 64),
    ("tgtadm --lld iscsi --mode target --op show", 64),
    ("tgtadm --lld iscsi --mode account --op unbind --tid 1 --user backup", 64),
    ("", 65),
])
def test_denied_commands_do_not_run(wrapper_sshd, client, command, code):
    rc, out, err = run_over_ssh(client, command)
    assert rc == code, err
    assert err.startswith("zol-ssh-wrapper: denied: ") and err.count("\n") == 1, err
    assert out == ""
    assert wrapper_sshd.fake.executed() == []


def test_exit_code_and_stderr_pass_through(wrapper_sshd, client):
    rc, _, err = run_over_ssh(client, "zol-wrapper resize-lun " + PREFIX + "absent")
    assert rc == 68 and err == f"zol-ssh-wrapper: resize-lun: target {PREFIX}absent is not " \
        "exported\n"


def test_decisions_logged_with_client_address(wrapper_sshd, client):
    fake = wrapper_sshd.fake
    before = fake.log_text()
    run_over_ssh(client, "zfs version")
    run_over_ssh(client, "zfs destroy -R zol/cinder")
    run_over_ssh(client, "zol-wrapper export x --password " + SECRET)
    new = fake.log_text()[len(before):].splitlines()
    assert len(new) == 3
    port = client.get_transport().sock.getsockname()[1]
    assert all(f"client=127.0.0.1:{port} " in line for line in new), new
    assert "decision=allowed argv=zfs version" in new[0]
    assert "decision=denied reason=zfs destroy: argument 2: option '-R'" in new[1]
    assert "--password <redacted>" in new[2]
    assert SECRET not in fake.log_text()


def test_no_shell_no_pty_no_forwarding_no_sftp(wrapper_sshd, client):
    t = client.get_transport()
    # interactive session: the forced command runs without SSH_ORIGINAL_COMMAND -> 65
    chan = t.open_session()
    chan.settimeout(20)
    chan.invoke_shell()
    assert chan.recv_exit_status() == 65
    chan.close()
    # restrict: no pty
    chan = t.open_session()
    with pytest.raises(paramiko.SSHException):
        chan.get_pty()
    chan.close()
    # restrict: no port forwarding
    with pytest.raises(paramiko.ChannelException):
        t.open_channel("direct-tcpip", ("127.0.0.1", wrapper_sshd.port), ("127.0.0.1", 1))
    # the sftp subsystem becomes the forced command too, which refuses it
    with pytest.raises(paramiko.SSHException):
        client.open_sftp()
    assert wrapper_sshd.fake.executed() == []


def test_from_restriction(wrapper_sshd):
    """A key whose from= does not match the client is refused by sshd itself."""
    with pytest.raises(paramiko.AuthenticationException):
        wrapper_sshd.client(key=wrapper_sshd.foreign_key)


def test_host_key_checked(wrapper_sshd, tmp_path):
    """The client refuses a SAN whose host key is not the recorded one."""
    kind, blob = keygen(tmp_path / "other_key", "impostor").split()[:2]
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{wrapper_sshd.port} {kind} {blob}\n")
    c = paramiko.SSHClient()
    c.load_host_keys(str(kh))
    c.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.BadHostKeyException):
        c.connect("127.0.0.1", port=wrapper_sshd.port, username="root",
                  key_filename=str(wrapper_sshd.cinder_key), allow_agent=False,
                  look_for_keys=False, timeout=20)
    c.close()


def test_concurrent_exports_over_one_connection(wrapper_sshd, client):
    """Eight channels multiplexed on one connection (as the driver does) get distinct tids,
    the CHAP secret on each channel's stdin."""
    results = {}
    fake = wrapper_sshd.fake

    def one(i):
        ds = f"zol/cinder/volume-mux{i}"
        chan = client.get_transport().open_session(timeout=30)
        chan.settimeout(60)
        chan.exec_command(shlex.join(["zol-wrapper", "export", ds, f"{PREFIX}mux-{i}", "1",
                                      f"mux{i}", "thin", "wc-on", "chap", "ALL"]))
        chan.sendall(f"user{i} {SECRET}\n".encode())
        chan.shutdown_write()
        out = chan.makefile("rb").read().decode()
        results[i] = (chan.recv_exit_status(), out, chan.makefile_stderr("rb").read())
        chan.close()

    for i in range(8):
        fake.add_zvol(f"zol/cinder/volume-mux{i}")
    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert all(r[0] == 0 for r in results.values()), results
    tids = sorted(int(r[1].split()[0].partition("=")[2]) for r in results.values())
    assert len(set(tids)) == 8
    state = fake.tgt_state()["targets"]
    assert {state[str(t)]["iqn"] for t in tids} == {f"{PREFIX}mux-{i}" for i in range(8)}
    assert all(state[str(t)]["accounts"] for t in tids)
    for i in range(8):
        assert run_over_ssh(client, f"zol-wrapper unexport {PREFIX}mux-{i}")[0] == 0
    assert SECRET not in fake.log_text()


def test_driver_executor_through_sshd(wrapper_sshd):
    """The driver's own SSHExecutor against this sshd: allowed, and denial classified."""
    ex = ssh.SSHExecutor("127.0.0.1", port=wrapper_sshd.port, username="root",
                         key_filename=str(wrapper_sshd.cinder_key),
                         known_hosts_file=str(wrapper_sshd.known_hosts))
    try:
        assert ssh.protocol_version(ex) == (W.VERSION, W.PROTOCOL)
        assert ex.execute(["zfs", "destroy", V]).exit_code == 0
        with pytest.raises(exception.WrapperDenied) as ei:
            ex.execute(["zfs", "destroy", "zol/cinder/a@b@c"])
        assert ei.value.exit_code == 64
    finally:
        ex.close()
    assert wrapper_sshd.fake.executed() == [["zfs", "destroy", V]]


def test_restore_exports_over_ssh(wrapper_sshd, client):
    fake = wrapper_sshd.fake
    fake.reset_tgt()
    fake.set_zfs_get([(V, "zol:iqn", PREFIX + "restored"), (V, "zol:lun", "1"),
                      (V, "zol:chap", "u9:" + SECRET), (V, "zol:initiators", "ALL")])
    fake.add_zvol(V)
    rc, out, err = run_over_ssh(client, "zol-wrapper restore-exports")
    assert rc == 0, err
    assert out == f"restored tid=1 iqn={PREFIX}restored lun=1 ds={V} chap=yes\n"
    assert fake.tgt_state()["targets"]["1"]["accounts"] == ["u9"]
    assert run_over_ssh(client, f"zol-wrapper unexport {PREFIX}restored")[0] == 0
    fake.set_zfs_get([])
    fake.reset_tgt()


# ------------------------------------------------------------------------------------------
# Streams: zfs send on one connection, zfs receive on another, bytes through the driver.
# ------------------------------------------------------------------------------------------

def _executor(wrapper_sshd) -> ssh.SSHExecutor:
    return ssh.SSHExecutor("127.0.0.1", port=wrapper_sshd.port, username="root",
                           key_filename=str(wrapper_sshd.cinder_key),
                           known_hosts_file=str(wrapper_sshd.known_hosts))


def _fake_zfs_running(fake) -> list[int]:
    """PIDs of fake zfs processes still alive (a stream must leave none behind)."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if any(part == str(fake.zfs).encode() for part in cmd):
            pids.append(int(pid))
    return pids


@pytest.fixture
def two_sans(wrapper_sshd):
    """Two connections (as to two SANs) and the ZfsClients of the two parents."""
    a, b = _executor(wrapper_sshd), _executor(wrapper_sshd)
    yield zfs.ZfsClient(a, "zol/cinder"), zfs.ZfsClient(b, "zol/cinder-thick")
    a.close()
    b.close()


def test_stream_of_64_mib_through_sshd_and_the_wrapper_intact(wrapper_sshd, two_sans):
    fake = wrapper_sshd.fake
    src, dst = two_sans
    size = 64 << 20
    fake.set_send_size(size)
    snap, target = V + "@zol-migrate-1", "zol/cinder-thick/" + V.rsplit("/", 1)[1]
    seen = []
    try:
        res = ssh.pipe(src.executor, src.send_argv(snap), dst.executor,
                       dst.receive_argv(target), timeout=300, progress=seen.append)
        print(f"\n64 MiB through sshd + wrapper: {res.seconds:.1f} s, "
              f"{res.mib_per_s:.1f} MiB/s")
        assert fake.received()[target] == fakestream.expected(snap, size)
        assert res.bytes > size and seen[-1] == res.bytes
        assert fake.executed() == [["zfs", "receive", "-s", "-u", target],
                                   ["zfs", "send", "-L", "-e", "-c", snap]]
        assert _fake_zfs_running(fake) == []
    finally:
        fake.set_send_size(1 << 20)


def test_killed_sender_is_resumed_or_leaves_the_receiver_clean(wrapper_sshd, two_sans):
    fake = wrapper_sshd.fake
    src, dst = two_sans
    fake.set_send_size(16 << 20)
    snap, target = V + "@zol-migrate-2", "zol/cinder-thick/volume-killed"
    try:
        # killed once after 4 MiB: the token resumes it, every byte arrives once
        fake.kill_sender_after(4 << 20)
        transfer.send(src, snap, dst, target, timeout=300)
        assert fake.received()[target] == fakestream.expected(snap, 16 << 20)
        assert [a[:3] for a in fake.executed() if a[1] == "send"] == [
            ["zfs", "send", "-L"], ["zfs", "send", "-t"]]
        # killed every time: aborted, nothing partial left, no process left
        fake.clear()
        target2 = target + "-2"
        fake.kill_sender_after(4 << 20, times=5)
        t0 = time.monotonic()
        with pytest.raises(transfer.TransferFailed) as ei:
            transfer.send(src, snap, dst, target2, timeout=300, resume_attempts=2)
        assert "partial receive was aborted" in str(ei.value)
        assert fake.executed()[-1] == ["zfs", "receive", "-A", target2]
        assert target2 not in fake.received() and fake.partial_receives() == []
        assert _fake_zfs_running(fake) == []
        print(f"\nthree killed streams and the abort: {time.monotonic() - t0:.1f} s")
    finally:
        fake.set_send_size(1 << 20)
        (fake.root / "send_kill").unlink(missing_ok=True)
