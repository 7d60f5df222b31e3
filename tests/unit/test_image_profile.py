"""One profile, two renderings: the chroot hook (Python) and the installer's late script (sh)
must leave identical trees and run identical commands (issue 9: they had drifted)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from image_builder import customize
from image_builder.install import libvirt as lv

COMMANDS = ("locale-gen", "systemctl", "update-initramfs", "apt-get")
SOURCES = ["deb http://m.example/debian bookworm main",
           "deb http://m.example/debian bookworm-updates main",
           "deb http://s.example/debian-security bookworm-security main"]


def seed(root: Path) -> None:
    """What a fresh install leaves: host state the profile must remove or replace."""
    files = {"etc/ssh/ssh_host_ed25519_key": "k", "etc/ssh/sshd_config": "cfg\n",
             "var/log/dpkg.log": "log", "var/log/installer/syslog": "d-i",
             "etc/machine-id": "0123\n", "etc/resolv.conf": "nameserver 192.0.2.1\n",
             "etc/modules": "loop\n", "etc/apt/sources.list.d/old.list": "deb http://x y z\n",
             "etc/network/interfaces": "allow-hotplug ens3\niface ens3 inet dhcp\n",
             "root/.bash_history": "ls\n", "tmp/build-file": "x"}
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            else:
                out[rel] = ("file", path.read_text(), path.stat().st_mode & 0o777)
    return out


def run_shell(script: str, root: Path, tmp: Path) -> list[list[str]]:
    """Run the late script against ``root`` with the target's commands recorded, not run."""
    bindir, log = tmp / "bin", tmp / "commands.log"
    bindir.mkdir()
    for cmd in COMMANDS:
        stub = bindir / cmd
        stub.write_text('#!/bin/sh\nprintf "%%s\\0" %s "$@" >> %s\necho >> %s\n'
                        % (cmd, log, log))
        stub.chmod(0o755)
    path = tmp / "late.sh"
    path.write_text(script)
    subprocess.run(["sh", str(path)], check=True, env={
        "ZOL_ROOT": str(root), "PATH": "%s:/usr/bin:/bin" % bindir})
    if not log.exists():
        return []
    return [ln.strip("\0").split("\0") for ln in log.read_text().split("\n") if ln.strip("\0")]


@pytest.mark.parametrize("profile", [
    customize.Profile(hostname="web-1", marker="zol-image it's", apt_sources=SOURCES),
    customize.Profile(hostname="plain", cloud_init=False, locales=["de_DE.UTF-8", "en_US"]),
    customize.Profile(profile="none", locales=[], cloud_init=False),
], ids=["cloud-init", "no-cloud-init", "profile-none"])
def test_chroot_hook_and_late_script_make_the_same_tree(tmp_path, profile):
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        root.mkdir()
        seed(root)
    steps = customize.steps(profile)
    commands: list[list[str]] = []
    customize.apply_steps(a, steps, runner=commands.append)
    shell_commands = run_shell(customize.render_shell(steps), b, tmp_path)
    assert snapshot(a) == snapshot(b)
    assert commands == shell_commands
    assert lv.late_script(profile).splitlines()[2:] == \
        customize.render_shell(steps).splitlines()[2:]      # the installer runs exactly this


def test_cloud_profile_content(tmp_path):
    seed(tmp_path)
    commands: list[list[str]] = []
    customize.apply_steps(tmp_path, customize.steps(customize.Profile(
        hostname="web-1", apt_sources=SOURCES)), runner=commands.append)
    tree = snapshot(tmp_path)
    gone = ["etc/ssh/ssh_host_ed25519_key", "var/log/dpkg.log", "var/log/installer/syslog",
            "root/.bash_history", "tmp/build-file", "etc/apt/sources.list.d/old.list"]
    assert [g for g in gone if g in tree] == []
    assert tree["etc/machine-id"][1] == ""
    assert tree["etc/resolv.conf"] == ("link", "../run/systemd/resolve/stub-resolv.conf")
    assert tree["etc/apt/sources.list"][1].splitlines()[1:] == SOURCES
    assert "allow-hotplug" not in tree["etc/network/interfaces"][1]
    cfg = tree["etc/cloud/cloud.cfg.d/90-zol.cfg"][1]
    assert "datasource_list: [ConfigDrive, OpenStack, NoCloud, None]" in cfg
    for line in ("name: debian", "disable_root: true", "ssh_pwauth: false",
                 'sudo: ["ALL=(ALL) NOPASSWD:ALL"]', "renderers: [networkd]",
                 "preserve_sources_list: true", "\nlocale: en_US.UTF-8\n"):
        assert line in cfg, line
    assert "PasswordAuthentication no" in tree["etc/ssh/sshd_config.d/50-zol.conf"][1]
    fstab = tree["etc/fstab"][1]
    assert "LABEL=rootfs / ext4 rw," in fstab and "x-systemd.growfs" not in fstab
    assert "zol-growroot" not in str(commands)                 # cloud-init grows the root
    assert ["update-initramfs", "-u", "-k", "all"] in commands
    assert tree["etc/modules"][1] == "loop\nvirtio_balloon\nacpiphp\n"


def test_no_cloud_init_grows_root_itself(tmp_path):
    commands: list[list[str]] = []
    customize.apply_steps(tmp_path, customize.steps(customize.Profile(cloud_init=False)),
                          runner=commands.append)
    tree = snapshot(tmp_path)
    assert "etc/cloud/cloud.cfg.d/90-zol.cfg" not in tree
    assert tree["usr/local/sbin/zol-growroot"][2] == 0o755
    assert "growpart" in tree["usr/local/sbin/zol-growroot"][1]
    assert "x-systemd.growfs" in tree["etc/fstab"][1]
    enable = next(c for c in commands if c[:2] == ["systemctl", "enable"])
    assert "zol-growroot.service" in enable and "zol-ssh-keygen.service" in enable
    subprocess.run(["sh", "-n", str(tmp_path / "usr/local/sbin/zol-growroot")], check=True)


def test_profile_rejects_unsafe_paths():
    from image_builder import exception
    with pytest.raises(exception.ConfigError):
        customize._check(customize.WriteFile("../etc/passwd", ""))
    with pytest.raises(exception.ConfigError):
        customize._check(customize.Remove(("var/log/$(reboot)",)))
