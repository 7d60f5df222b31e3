"""Preseed rendering, the initrd cpio, the domain XML and console parsing (pure logic)."""
from __future__ import annotations

import gzip
import subprocess
import xml.etree.ElementTree as ET

import pytest

from image_builder import customize, exception
from image_builder.install import libvirt as lv


def render(**kw):
    args = {"release": "bookworm", "mirror": "http://deb.debian.org/debian",
            "hostname": "debian", "locale": "en_US.UTF-8", "kernel_package": "linux-image-amd64",
            "packages": ["openssh-server", "sudo"]}
    args.update(kw)
    return lv.render_preseed(**args)


def test_preseed_has_the_recipe():
    text = render()
    lines = set(text.splitlines())
    assert "d-i mirror/http/hostname string deb.debian.org" in lines
    assert "d-i mirror/http/directory string /debian" in lines
    assert "d-i mirror/suite string bookworm" in lines
    assert "d-i base-installer/kernel/image string linux-image-amd64" in lines
    assert "tasksel tasksel/first multiselect ssh-server" in lines
    # security updates in the installed system, like the chroot backend (issue 9)
    assert "d-i apt-setup/services-select multiselect security,updates" in lines
    assert "d-i apt-setup/security_host string deb.debian.org" in lines
    assert "d-i apt-setup/security_path string /debian-security" in lines
    assert "d-i pkgsel/upgrade select safe-upgrade" in lines
    assert "d-i pkgsel/include string openssh-server sudo" in lines
    # one primary bootable ext4 partition, no swap; the $ of partman survives templating
    recipe = next(ln for ln in lines if "expert_recipe" in ln)
    assert "$primary{ }" in recipe and "$bootable{ }" in recipe and "linux-swap" not in recipe
    assert "d-i partman-basicfilesystems/no_swap boolean false" in lines
    assert "d-i passwd/root-password-crypted password !" in lines
    assert "$" not in text.replace("$primary", "").replace("$bootable", "")
    assert any(ln.startswith("d-i preseed/late_command string") and "zol-late.sh" in ln
               for ln in lines)


def test_preseed_https_mirror_and_trixie():
    text = render(mirror="https://mirror.example.org/debian/", release="trixie")
    assert "d-i mirror/protocol string https" in text
    assert "d-i mirror/https/hostname string mirror.example.org" in text
    assert "d-i mirror/suite string trixie" in text


@pytest.mark.parametrize("kw", [{"mirror": "ftp://x/debian"}, {"hostname": "a b"},
                                {"hostname": "x\nd-i preseed/late_command string rm -rf /"},
                                {"packages": ["ok", "bad;pkg"]}, {"mirror": "http:///nohost"}])
def test_preseed_rejects_injection(kw):
    with pytest.raises(exception.ConfigError):
        render(**kw)


def test_late_script_is_valid_sh_and_quotes_values():
    p = customize.Profile(hostname="web-1", locales=["en_US.UTF-8"], marker="zol-image it's")
    script = lv.late_script(p)
    subprocess.run(["sh", "-n"], input=script.encode(), check=True)
    assert "virtio_balloon" in script and "acpiphp" in script
    assert "update-initramfs -u -k all" in script and "apt-get clean" in script
    assert '"$R"/etc/ssh/ssh_host_*' in script
    assert "'zol-image it'\"'\"'s \\n \\l" in script
    assert script == customize.render_shell(customize.steps(p),
                                            "zol-image cloud profile (preseed late_command)")


def test_preseed_without_security_or_updates():
    lines = render(security_mirror="", updates=False).splitlines()
    assert "d-i apt-setup/services-select multiselect " in lines


def test_installer_of_the_release_being_installed(tmp_path):
    """trixie is installed by trixie's installer (debian-installer-13-netboot-amd64)."""
    from image_builder import opts
    defaults = {o.dest: o.default for o in opts.libvirt_opts}
    with pytest.raises(exception.InstallError, match="debian-installer-13-netboot-amd64"):
        lv.installer_files(dict(defaults, installer_kernel=str(tmp_path / "{version}/linux")),
                           "trixie")
    (tmp_path / "13").mkdir()
    for name in ("linux", "initrd.gz"):
        (tmp_path / "13" / name).write_text("x")
    kernel, initrd = lv.installer_files({"installer_kernel": str(tmp_path / "{version}/linux"),
                                         "installer_initrd": str(tmp_path / "{version}/initrd.gz")},
                                        "trixie")
    assert kernel == str(tmp_path / "13/linux") and initrd == str(tmp_path / "13/initrd.gz")
    assert "/images/{version}/" in defaults["installer_kernel"]


def test_cpio_newc_is_readable_by_cpio_tools(tmp_path):
    data = lv.cpio_newc({"preseed.cfg": (b"d-i x string y\n", 0o644), "a.sh": (b"#!/bin/sh\n",
                                                                              0o755)})
    assert data.startswith(b"070701") and b"TRAILER!!!" in data
    assert len(data) % 4 == 0
    # round trip through Python's own parser of the format
    names, pos = [], 0
    while True:
        hdr = data[pos:pos + 110]
        namesize = int(hdr[94:102], 16)
        filesize = int(hdr[54:62], 16)
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += (4 - pos % 4) % 4
        content = data[pos:pos + filesize]
        pos += filesize + (4 - filesize % 4) % 4
        if name == "TRAILER!!!":
            break
        names.append((name, content, int(hdr[14:22], 16)))
    assert names == [("a.sh", b"#!/bin/sh\n", 0o100755),
                     ("preseed.cfg", b"d-i x string y\n", 0o100644)]
    assert gzip.decompress(gzip.compress(data)) == data


def test_domain_xml():
    xml = lv.domain_xml(name="zol-image-x", domain_type="qemu", memory=1024, vcpus=2,
                        kernel="/k", initrd="/i&j", cmdline="auto=true --- console=ttyS0",
                        disk="/d.qcow2", console="/c.log")
    root = ET.fromstring(xml)
    assert root.get("type") == "qemu"
    assert root.findtext("os/initrd") == "/i&j"
    assert root.findtext("on_reboot") == "destroy"
    assert root.find("devices/disk/target").get("bus") == "virtio"
    assert root.find("devices/serial/source").get("path") == "/c.log"
    assert root.find("seclabel") is None
    as_root = ET.fromstring(lv.domain_xml(name="n", domain_type="qemu", memory=1, vcpus=1,
                                          kernel="k", initrd="i", cmdline="c", disk="d",
                                          console="c", run_as_root=True))
    assert as_root.find("seclabel").get("model") == "dac"
    assert as_root.findtext("seclabel/label") == "+0:+0"
    kvm = ET.fromstring(lv.domain_xml(name="n", domain_type="kvm", memory=1, vcpus=1,
                                      kernel="k", initrd="i", cmdline="c", disk="d",
                                      console="c"))
    assert kvm.find("cpu").get("mode") == "host-passthrough"


def test_console_phases_and_mirror_failures():
    text = ("Detecting network hardware\nConfiguring the network with DHCP\n"
            "Checking the Debian archive mirror\nDownload installer components\n")
    assert lv.phase_of(text) == "download installer components"
    assert lv.mirror_failure(text) is None
    assert lv.mirror_failure(text + "Loading apt-mirror-setup failed for unknown reasons") == \
        "apt-mirror-setup"
    assert lv.mirror_failure("Bad archive mirror") == ""
    assert lv.phase_of("nothing yet") is None


def test_parse_udeb_index():
    idx = ("Package: anna\nVersion: 1\nFilename: pool/main/a/anna/anna_1_amd64.udeb\n\n"
           "Package: partman-ext3\nFilename: pool/main/p/partman-ext3/partman-ext3_112_all.udeb\n")
    assert lv.parse_udeb_index(idx) == {
        "anna": "pool/main/a/anna/anna_1_amd64.udeb",
        "partman-ext3": "pool/main/p/partman-ext3/partman-ext3_112_all.udeb"}


def test_real_installer_console_at_the_mirror_wall():
    """Verbatim serial console (newt UI through screen) of the bookworm netboot installer
    reaching this machine's mirror, captured by zol-image under TCG."""
    from pathlib import Path
    raw = (Path(__file__).parents[1] / "fixtures" / "installer-mirror-wall.console").read_text(
        errors="replace")
    text = lv.clean_console(raw)
    assert "\x1b" not in text
    assert lv.phase_of(text) == "download installer components"
    assert lv.mirror_failure(text) == "apt-mirror-setup"
    assert lv.mirror_failure(text[:text.find("Download installer components")]) is None


def test_kvm_probe_is_cached_for_this_boot_only(tmp_path, monkeypatch):
    cache = tmp_path / "kvm-probe.json"
    assert lv.cached_kvm_probe(cache) is None
    result = {"ok": False, "reason": "a kernel under KVM did not boot within 25 s"}
    lv.record_kvm_probe(result, cache)
    assert lv.cached_kvm_probe(cache) == result
    monkeypatch.setattr(lv, "_boot_id", lambda: "another-boot")
    assert lv.cached_kvm_probe(cache) is None          # a reboot may change what KVM can do
    cache.write_text("not json")
    assert lv.cached_kvm_probe(cache) is None
