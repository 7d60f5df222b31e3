"""zol-san authorize / install (into a temp root) / cinder.conf reading for check."""
from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from tests.helpers.fakesan import REPO, load_wrapper
from zol_driver import sancli

W = load_wrapper()


@pytest.fixture
def pubkey(tmp_path) -> Path:
    key = tmp_path / "cinder_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cinder@volume1",
                    "-f", str(key)], check=True)
    return key.with_suffix(".pub")


def test_authorize_line(pubkey, capsys):
    assert sancli.main(["authorize", "--public-key", str(pubkey), "--host", "192.0.2.10",
                        "--host", "192.0.2.11,2001:db8::5"]) == 0
    line = capsys.readouterr().out.strip()
    kind, blob, comment = pubkey.read_text().split()
    assert line == ('restrict,from="192.0.2.10,192.0.2.11,2001:db8::5",command='
                    '"/usr/local/sbin/zol-ssh-wrapper /etc/zol/wrapper.conf" '
                    f"{kind} {blob} {comment}")


def test_authorize_line_is_what_sshd_parses(pubkey, tmp_path):
    """ssh-keygen -l accepts the line as an authorized_keys entry (options and all)."""
    line = sancli.authorized_keys_line(pubkey.read_text(), ["10.0.0.0/24", "cinder-1"])
    ak = tmp_path / "authorized_keys"
    ak.write_text(line + "\n")
    r = subprocess.run(["ssh-keygen", "-l", "-f", str(ak)], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert "ED25519" in r.stdout


@pytest.mark.parametrize("hosts,why", [
    ([], "--host"),
    (['1.2.3.4",command="/bin/sh'], "not an address"),
    (["a b"], "not an address"),
    (["-x"], "not an address"),
    (["*"], "wildcards are refused"),
    (["10.0.0.*"], "wildcards are refused"),
    (["!10.0.0.1"], "wildcards are refused"),
    (["0.0.0.0/0"], "would admit any address"),
    (["::/0"], "would admit any address"),
    (["0.0.0.0"], "would admit any address"),
    (["10.0.0.1", "::"], "would admit any address"),
])
def test_authorize_refuses_bad_hosts(pubkey, hosts, why):
    with pytest.raises(sancli.SanCliError, match=why):
        sancli.authorized_keys_line(pubkey.read_text(), hosts)


@pytest.mark.parametrize("wrapper,config", [
    ("/usr/local/sbin/zol wrapper", "/etc/zol/wrapper.conf"),
    ("/usr/local/sbin/zol-ssh-wrapper", "/etc/zol/$(id).conf"),
    ("/usr/local/sbin/zol-ssh-wrapper;id", "/etc/zol/wrapper.conf"),
    ("usr/local/sbin/zol-ssh-wrapper", "/etc/zol/wrapper.conf"),
    ("/usr/local/sbin/zol-ssh-wrapper", "/etc/zol/../shadow"),
    ("/usr/local/sbin/zol-ssh-wrapper", "/etc/zol/`id`"),
])
def test_authorize_refuses_paths_that_need_quoting(pubkey, wrapper, config):
    with pytest.raises(sancli.SanCliError, match="plain absolute path"):
        sancli.authorized_keys_line(pubkey.read_text(), ["10.0.0.1"], wrapper, config)


def test_authorize_refuses_private_key(pubkey, capsys):
    priv = pubkey.with_suffix("")
    assert sancli.main(["authorize", "--public-key", str(priv), "--host", "10.0.0.1"]) == 2
    assert "this is a private key" in capsys.readouterr().err
    with pytest.raises(sancli.SanCliError, match="not an OpenSSH public key"):
        sancli.parse_public_key('restrict,command="x" ' + pubkey.read_text())
    with pytest.raises(sancli.SanCliError, match="damaged"):
        sancli.parse_public_key("ssh-ed25519 AAAA!!!! x")


def test_install_into_root(tmp_path):
    root = tmp_path / "root"
    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/sbin" / "zfs").write_text("")
    out = []
    files = sancli.install(root, ["tank/cinder", "tank/cinder-ssd"],
                           "iqn.2010-10.org.openstack:", "/usr/sbin/zfs", "/var/run/tgtd/socket.0",
                           "/var/log/zol-ssh-wrapper.log", "/run/zol-ssh-wrapper.lock",
                           out=out.append)
    wrapper = root / "usr/local/sbin/zol-ssh-wrapper"
    conf = root / "etc/zol/wrapper.conf"
    drop_in = root / "etc/systemd/system/tgt.service.d/zol-restore.conf"
    assert files == [wrapper, conf, drop_in]
    assert wrapper.read_bytes() == (REPO / "wrappers/zol-ssh-wrapper").read_bytes()
    assert stat.S_IMODE(wrapper.stat().st_mode) == 0o755
    assert stat.S_IMODE(conf.stat().st_mode) == 0o644
    assert drop_in.read_text() == (REPO / "wrappers/tgt-zol-restore.conf").read_text()
    cfg = W.load_config(str(conf))
    assert cfg.parents == ("tank/cinder", "tank/cinder-ssd")
    assert cfg.binaries == {"zfs": "/usr/sbin/zfs"}
    assert cfg.tgtd_socket == "/var/run/tgtd/socket.0"
    assert not any("warning" in line for line in out)
    # the drop-in's ExecStartPost runs exactly what we installed
    assert f"{sancli.WRAPPER_PATH} {sancli.WRAPPER_CONF} -- zol-wrapper restore-exports" \
        in drop_in.read_text()
    # same values again: fine; other values: refused without --force
    sancli.install(root, ["tank/cinder", "tank/cinder-ssd"], "iqn.2010-10.org.openstack:",
                   "/usr/sbin/zfs", "/var/run/tgtd/socket.0", "/var/log/zol-ssh-wrapper.log",
                   "/run/zol-ssh-wrapper.lock", out=out.append)
    with pytest.raises(sancli.SanCliError, match="--force"):
        sancli.install(root, ["tank/other"], "iqn.2010-10.org.openstack:", "/usr/sbin/zfs",
                       "/var/run/tgtd/socket.0", "/var/log/x.log", "/run/x.lock", out=out.append)
    assert W.load_config(str(conf)).parents == ("tank/cinder", "tank/cinder-ssd")


@pytest.mark.parametrize("args,why", [
    (["--parent", "tank/../etc"], "not a valid dataset name"),
    (["--parent", "tank/a", "--parent", "tank/a/b"], "nested"),
    (["--parent", "tank/a", "--iqn-prefix", "foo"], "not an IQN prefix"),
    (["--parent", "tank/a", "--zfs", "zfs"], "plain absolute path"),
])
def test_install_validates_with_the_wrappers_parser(tmp_path, capsys, args, why):
    rc = sancli.main(["install", "--root", str(tmp_path), "--no-reload", *args])
    assert rc == 2
    assert why in capsys.readouterr().err
    assert not (tmp_path / "etc").exists() and not (tmp_path / "usr").exists()


def test_install_cli_warns_about_missing_binaries(tmp_path, capsys):
    assert sancli.main(["install", "--root", str(tmp_path), "--no-reload", "--parent",
                        "zol/cinder"]) == 0
    out = capsys.readouterr().out
    assert "warning: /usr/sbin/zfs does not exist" in out
    assert "zol-san authorize" in out


def test_backend_options(tmp_path):
    conf = tmp_path / "cinder.conf"
    conf.write_text("[DEFAULT]\nenabled_backends = zol1\n\n[backend_defaults]\n"
                    "zol_ssh_known_hosts_file = /etc/cinder/shared_known_hosts\n"
                    "san_login = cinder\n\n[zol1]\nvolume_driver = x\nsan_ip = 192.0.2.5\n"
                    "san_ssh_port = 2222\nzol_parent_dataset = tank/cinder\nsan_login = root\n")
    v = sancli.backend_options(str(conf), "zol1")
    assert (v["san_ip"], v["san_ssh_port"], v["san_login"]) == ("192.0.2.5", 2222, "root")
    assert v["zol_parent_dataset"] == "tank/cinder"
    assert v["zol_ssh_known_hosts_file"] == "/etc/cinder/shared_known_hosts"
    assert v["zol_ssh_strict_host_key_checking"] is True
    with pytest.raises(sancli.SanCliError, match=r"no \[zol2\] section"):
        sancli.backend_options(str(conf), "zol2")
    with pytest.raises(sancli.SanCliError, match="does not exist"):
        sancli.backend_options(str(tmp_path / "nope.conf"), "zol1")


def test_check_local_mode_and_missing_option(tmp_path, capsys):
    """san_is_local: check runs the wrapper locally; a missing parent option is reported."""
    from tests.helpers.fakesan import WRAPPER, FakeSan
    import sys
    fake = FakeSan(tmp_path / "san")
    conf = tmp_path / "cinder.conf"
    conf.write_text(f"[zol1]\nsan_is_local = true\nzol_local_wrapper_command = "
                    f"{sys.executable},{WRAPPER},{fake.conf}\n")
    assert sancli.main(["check", "--config-file", str(conf), "--backend", "zol1"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] zol_parent_dataset is not set" in out
    assert "[ OK ] wrapper " in out and "[ OK ] tgtd answers" in out
    with conf.open("a") as f:
        f.write("zol_parent_dataset = zol/cinder\n")
    assert sancli.main(["check", "--config-file", str(conf), "--backend", "zol1"]) == 0
    assert "all checks passed" in capsys.readouterr().out
