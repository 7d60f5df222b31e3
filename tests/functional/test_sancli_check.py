"""`zol-san check` against a real sshd + wrapper: passes when right, explains each mistake."""
from __future__ import annotations

import pytest

from tests.plugins.sshd import keygen
from zol_driver import sancli

pytestmark = pytest.mark.functional


def write_conf(path, srv, **over) -> str:
    values = {"volume_driver": "zol_driver.driver.ZFSonLinuxISCSIDriver",
              "san_ip": "127.0.0.1", "san_ssh_port": str(srv.port), "san_login": "root",
              "san_private_key": str(srv.cinder_key),
              "zol_ssh_known_hosts_file": str(srv.known_hosts),
              "zol_parent_dataset": "zol/cinder", "ssh_conn_timeout": "20"}
    values.update(over)
    path.write_text("[DEFAULT]\nenabled_backends = zol1\n\n[zol1]\n"
                    + "".join(f"{k} = {v}\n" for k, v in values.items() if v is not None))
    return str(path)


def check(capsys, conf) -> tuple[int, str]:
    rc = sancli.main(["check", "--config-file", conf, "--backend", "zol1"])
    return rc, capsys.readouterr().out


def test_all_good(wrapper_sshd, tmp_path, capsys):
    rc, out = check(capsys, write_conf(tmp_path / "c.conf", wrapper_sshd))
    assert rc == 0, out
    assert out.count("[ OK ]") == 4 and "[FAIL]" not in out
    assert "host key of [127.0.0.1]:" in out and "parent dataset zol/cinder exists" in out


def test_host_key_mismatch(wrapper_sshd, tmp_path, capsys):
    kind, blob = keygen(tmp_path / "impostor", "x").split()[:2]
    kh = tmp_path / "kh"
    kh.write_text(f"[127.0.0.1]:{wrapper_sshd.port} {kind} {blob}\n")
    rc, out = check(capsys, write_conf(tmp_path / "c.conf", wrapper_sshd,
                                       zol_ssh_known_hosts_file=kh))
    assert rc == 1
    assert "[FAIL] host key MISMATCH" in out and "man-in-the-middle" in out
    assert "[ OK ]" not in out          # nothing else is tried against an unverified host


def test_host_key_unknown(wrapper_sshd, tmp_path, capsys):
    kh = tmp_path / "kh"
    kh.write_text("")
    rc, out = check(capsys, write_conf(tmp_path / "c.conf", wrapper_sshd,
                                       zol_ssh_known_hosts_file=kh))
    assert rc == 1
    assert f"[FAIL] [127.0.0.1]:{wrapper_sshd.port} is not in {kh}" in out
    assert f"ssh-keyscan -p {wrapper_sshd.port} -t ssh-ed25519 127.0.0.1 >> {kh}" in out
    rc, out = check(capsys, write_conf(tmp_path / "c.conf", wrapper_sshd,
                                       zol_ssh_known_hosts_file=tmp_path / "missing"))
    assert rc == 1 and "does not exist" in out


def test_key_not_authorized(wrapper_sshd, tmp_path, capsys):
    """The second key's from= does not match 127.0.0.1: sshd refuses it."""
    rc, out = check(capsys, write_conf(tmp_path / "c.conf", wrapper_sshd,
                                       san_private_key=wrapper_sshd.foreign_key))
    assert rc == 1
    assert "[FAIL] the SAN refused key" in out and "zol-san authorize" in out


def test_parent_not_allowed_or_missing(wrapper_sshd, tmp_path, capsys):
    rc, out = check(capsys, write_conf(tmp_path / "c.conf", wrapper_sshd,
                                       zol_parent_dataset="zol/elsewhere"))
    assert rc == 1
    assert "[FAIL] the wrapper does not allow zol/elsewhere" in out
    assert "add zol/elsewhere to `parents`" in out
    wrapper_sshd.fake.set_missing("zol/cinder")
    try:
        rc, out = check(capsys, write_conf(tmp_path / "c.conf", wrapper_sshd))
    finally:
        wrapper_sshd.fake.set_missing()
    assert rc == 1
    assert "[FAIL] parent dataset zol/cinder does not exist" in out
    assert "zfs create -p -o mountpoint=none zol/cinder" in out


def test_tgtd_not_answering_and_broken_wrapper_config(wrapper_sshd, tmp_path, capsys):
    fake = wrapper_sshd.fake
    try:
        fake.write_conf(syslog=True, tgtd_socket="/nonexistent/tgtd.socket")
        rc, out = check(capsys, write_conf(tmp_path / "c.conf", wrapper_sshd))
        assert rc == 1
        assert "[FAIL] tgtd does not answer (exit 68)" in out and "systemctl enable" in out
        assert "tgtd_socket" in out
        fake.write_conf(syslog=True, parents="zol/cinder ../bad")
        rc, out = check(capsys, write_conf(tmp_path / "c.conf", wrapper_sshd))
        assert rc == 1
        assert "refused `zol-wrapper version`" in out and "wrapper.conf" in out
    finally:
        fake.write_conf(syslog=True)


def test_unrestricted_key_is_reported(wrapper_sshd, tmp_path, capsys):
    """A key that runs commands directly (no command=) is a failure, not a pass."""
    ak = wrapper_sshd.dir / "authorized_keys"
    saved = ak.read_text()
    plain = keygen(tmp_path / "plain", "plain")
    ak.write_text(saved + plain + "\n")
    try:
        rc, out = check(capsys, write_conf(tmp_path / "c.conf", wrapper_sshd,
                                           san_private_key=tmp_path / "plain"))
    finally:
        ak.write_text(saved)
    assert rc == 1
    assert "this key is not forced through the wrapper" in out


def test_unreachable(tmp_path, capsys, wrapper_sshd):
    from tests.plugins.sshd import free_port
    rc, out = check(capsys, write_conf(tmp_path / "c.conf", wrapper_sshd,
                                       san_ssh_port=str(free_port())))
    assert rc == 1 and "[FAIL] cannot reach sshd" in out


def test_the_replica_is_checked_too(wrapper_sshd, tmp_path, capsys):
    """A backend with replication_device: the second SAN goes through the same checks (its
    own key, known_hosts and parent), indented under 'replica <id>'.  Here the 'second SAN'
    is the same sshd: zol/cinder-thick is allowed there, zol/cinder-replica is not."""
    dev = (f"backend_id:san-b,san_ip:127.0.0.1,san_ssh_port:{wrapper_sshd.port},"
           f"san_login:root,san_private_key:{wrapper_sshd.cinder_key},"
           f"zol_ssh_known_hosts_file:{wrapper_sshd.known_hosts},")
    rc, out = check(capsys, write_conf(tmp_path / "c.conf", wrapper_sshd,
                                       replication_device=dev
                                       + "zol_parent_dataset:zol/cinder-thick"))
    assert rc == 0, out
    assert "replica san-b (replication_device):" in out
    assert "  [ OK ] parent dataset zol/cinder-thick exists" in out
    assert out.count("[ OK ]") == 8 and "[FAIL]" not in out
    rc, out = check(capsys, write_conf(tmp_path / "c.conf", wrapper_sshd,
                                       replication_device=dev
                                       + "zol_parent_dataset:zol/cinder-replica"))
    assert rc == 1
    assert "  [FAIL] the wrapper does not allow zol/cinder-replica" in out
    conf = write_conf(tmp_path / "c.conf", wrapper_sshd,
                      replication_device=dev.replace("backend_id:san-b,", "")
                      + "zol_parent_dataset:zol/cinder-thick")
    rc = sancli.main(["check", "--config-file", conf, "--backend", "zol1"])
    got = capsys.readouterr()
    assert rc != 0 and "replication_device backend_id: missing" in got.out + got.err, got
