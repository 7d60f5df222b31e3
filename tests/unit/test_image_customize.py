"""The cloud profile's file edits and the mmdebstrap/qemu command lines (pure logic)."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

from image_builder import customize
from image_builder.install import chroot


def test_locale_gen_lines():
    assert customize.locale_gen_lines(["en_US.UTF-8", "fr_FR@euro"]) == \
        "en_US.UTF-8 UTF-8\nfr_FR@euro ISO-8859-1\n"


def test_etc_modules_spelled_right_and_idempotent():
    text = customize.modules_file("# /etc/modules\nloop\n", customize.ETC_MODULES)
    assert text.splitlines()[-2:] == ["virtio_balloon", "acpiphp"]
    assert "virtio_baloon" not in text          # the 2012 post's typo
    assert customize.modules_file(text, customize.ETC_MODULES) == text
    assert customize.modules_file("", ("a",)) == "a\n"
    assert customize.modules_file("x", ("a",)) == "x\na\n"


def test_profile_packages_and_json_round_trip():
    p = customize.Profile(hostname="h", locales=[], cloud_init=True, marker="m",
                          apt_sources=["deb http://m/d bookworm main"])
    assert customize.Profile.from_json(p.to_json()) == p
    pkgs = customize.packages_for(p)
    assert "cloud-init" in pkgs and "locales" not in pkgs and "initramfs-tools" in pkgs
    assert {"qemu-guest-agent", "systemd-timesyncd", "systemd-resolved",
            "cloud-guest-utils"} <= set(pkgs)
    assert customize.Profile().cloud_init is True          # on by default (issue 9)
    assert "cloud-init" not in customize.packages_for(customize.Profile(cloud_init=False))


def test_cleanup_removes_host_keys_history_and_net_rules(tmp_path):
    files = ["etc/ssh/ssh_host_ed25519_key", "etc/ssh/ssh_host_rsa_key.pub",
             "etc/udev/rules.d/70-persistent-net.rules", "root/.bash_history",
             "home/u/.bash_history", "var/log/dpkg.log", "var/log/apt/history.log",
             "var/log/installer/syslog", "var/lib/dhcp/dhclient.ens3.leases"]
    keep = ["etc/ssh/sshd_config", "var/log/journal/keep"]
    for rel in files + keep:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    (tmp_path / "etc/machine-id").write_text("abc\n")
    customize.cleanup(tmp_path)
    assert [f for f in files if (tmp_path / f).exists()] == []
    assert all((tmp_path / f).exists() for f in keep)
    assert (tmp_path / "etc/machine-id").read_text() == ""


def test_hook_script_is_runnable_python(tmp_path):
    conf = tmp_path / "p.json"
    script = customize.hook_script(conf)
    assert script.startswith("#!%s\n" % sys.executable)
    path = tmp_path / "hook"
    path.write_text(script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    compile(script, "hook", "exec")
    assert repr(os.fspath(conf)) in script


def test_network_does_not_depend_on_nic_names():
    net = customize.FALLBACK_NETWORK
    assert "Name=en* eth*" in net and "DHCP=yes" in net and "IPv6AcceptRA=yes" in net
    assert "allow-hotplug" not in customize.INTERFACES   # ifupdown raised nothing (issue 9)
    steps = customize.steps(customize.Profile())
    enable = next(s for s in steps if isinstance(s, customize.Command)
                  and s.argv[:2] == ("systemctl", "enable"))
    assert {"systemd-networkd.service", "systemd-resolved.service",
            "systemd-timesyncd.service", "serial-getty@ttyS0.service"} <= set(enable.argv)
    # cloud-init's own files (10-cloud-init-*, from network_data.json) sort before ours
    assert "10-cloud-init-ens3.network" < "99-zol-fallback.network"


def test_mmdebstrap_argv():
    argv = chroot.mmdebstrap_argv("bookworm", "amd64", "http://m/debian", ["b", "a", "a"],
                                  "/t", "/h")
    assert argv[0] == "mmdebstrap" and "--mode=root" in argv and "--variant=minbase" in argv
    assert "--include=a,b" in argv
    assert "--customize-hook=/h" in argv
    assert argv[-3:] == ["bookworm", "/t", "http://m/debian"]
    assert all(isinstance(a, str) for a in argv)
    assert chroot.sources is customize.sources          # one definition for both backends
    srcs = chroot.sources("trixie", "http://m/debian", "http://s/debian-security", True)
    assert srcs == ["deb http://m/debian trixie main", "deb http://m/debian trixie-updates main",
                    "deb http://s/debian-security trixie-security main"]
    assert chroot.sources("bookworm", "http://m/d") == ["deb http://m/d bookworm main"]
    argv = chroot.mmdebstrap_argv("trixie", "amd64", srcs, [], "/t", None)
    assert argv[-5:] == ["trixie", "/t"] + srcs


def test_package_list_reads_dpkg_status(tmp_path):
    st = tmp_path / "var/lib/dpkg/status"
    st.parent.mkdir(parents=True)
    st.write_text("Package: b\nStatus: install ok installed\nVersion: 2\n\n"
                  "Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n"
                  "Package: a\nStatus: install ok installed\nVersion: 1:1.0-1\n")
    assert chroot.package_list(tmp_path) == ["a=1:1.0-1", "b=2"]


def test_run_rejects_non_argv_and_reports_stderr():
    import pytest

    from image_builder import exception, run
    with pytest.raises(exception.ConfigError):
        run.run([])
    with pytest.raises(exception.CommandError, match="boom") as err:
        run.run([sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"])
    assert err.value.kwargs["rc"] == 3
    assert run.run(["sh", "-c", "exit 1"], ok_codes=(0, 1)).returncode == 1
    with pytest.raises(exception.CommandError, match="not found"):
        run.run(["/nonexistent/zol-binary"])
    assert subprocess.run  # argv lists only: nothing above went through a shell string
