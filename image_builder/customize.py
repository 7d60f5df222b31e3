"""The cloud profile: what turns a Debian install into an image nova can instantiate many times.

It runs inside mmdebstrap as an executable --customize-hook (mmdebstrap has /proc, /sys and /dev
mounted in the chroot and unmounts them itself, so no mount can leak from here); the libvirt
backend applies the same steps from the preseed's late_command (see ``late_command_script``).
Every step is an argv list run through ``chroot ROOT ...`` or a file written under ROOT.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from image_builder import run

LOG = logging.getLogger(__name__)

# acpiphp lets nova hot-plug PCI devices; virtio_balloon lets the host reclaim memory.  (The
# 2012 recipe wrote "virtio_baloon", which modprobe silently never loads.)
ETC_MODULES = ("virtio_balloon", "acpiphp")
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "virtio_scsi", "virtio_console",
                     "ext4")
# Files that must differ per instance, or that leak the build host.
REMOVE = ("etc/udev/rules.d/70-persistent-net.rules", "root/.bash_history",
          "root/.lesshst", "root/.viminfo", "var/lib/dhcp/dhclient.leases")
REMOVE_GLOBS = ("etc/ssh/ssh_host_*", "var/log/*.log", "var/cache/apt/*.bin",
                "var/lib/apt/lists/*_Packages", "var/lib/apt/lists/*_InRelease",
                "home/*/.bash_history", "tmp/*")
# First boot: regenerate host keys before sshd (keys are deleted at build time).
SSH_KEYGEN_UNIT = """[Unit]
Description=Generate SSH host keys on first boot
Before=ssh.service
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
"""
INTERFACES = """# Written by zol-image: DHCP on whatever the first NIC is called (ens2, eth0 ...);
# the name depends on the PCI slot nova gives it, so match by pattern, never by name.
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback

allow-hotplug /en*=nic0 /eth*=nic0
iface nic0 inet dhcp
"""


@dataclass
class Profile:
    """Everything the customize hook needs, serialisable to JSON for the hook process."""

    hostname: str = "debian"
    locales: list[str] = field(default_factory=lambda: ["en_US.UTF-8"])
    cloud_init: bool = False
    profile: str = "cloud"
    marker: str = ""                  # written to /etc/issue so a console login shows it

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Profile:
        return cls(**json.loads(text))


def locale_gen_lines(locales: list[str]) -> str:
    """/etc/locale.gen content: 'en_US.UTF-8 UTF-8' from 'en_US.UTF-8'."""
    lines = []
    for loc in locales:
        charset = loc.split(".", 1)[1] if "." in loc else "ISO-8859-1"
        lines.append("%s %s" % (loc, charset))
    return "\n".join(lines) + "\n"


def modules_file(existing: str, modules: tuple[str, ...]) -> str:
    """Append ``modules`` to an /etc/modules-style file once (idempotent)."""
    present = {ln.split("#", 1)[0].strip() for ln in existing.splitlines()}
    text = existing if existing.endswith("\n") or not existing else existing + "\n"
    for mod in modules:
        if mod not in present:
            text += mod + "\n"
    return text


def hosts_file(hostname: str) -> str:
    return ("127.0.0.1\tlocalhost\n127.0.1.1\t%s\n\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            "ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n" % hostname)


def packages_for(profile: Profile) -> list[str]:
    """Packages the profile itself needs on top of the user's list."""
    pkgs = ["initramfs-tools"]
    if profile.locales:
        pkgs.append("locales")
    if profile.cloud_init:
        pkgs += ["cloud-init", "cloud-guest-utils"]
    return pkgs


def _write(root: Path, rel: str, text: str, mode: int = 0o644) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


def _chroot(root: Path, *argv: str) -> None:
    run.run(["chroot", str(root), *argv],
            env={"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"})


def apply(root: str | os.PathLike, profile: Profile) -> None:
    """Apply the profile to the tree at ``root`` (called inside the mmdebstrap hook)."""
    root = Path(root)
    _write(root, "etc/hostname", profile.hostname + "\n")
    _write(root, "etc/hosts", hosts_file(profile.hostname))
    _write(root, "etc/fstab", "# nova passes root=/dev/vda; LABEL works for BARE disks too\n"
                              "LABEL=rootfs / ext4 rw,noatime,errors=remount-ro 0 1\n")
    if profile.locales:
        _write(root, "etc/locale.gen", locale_gen_lines(profile.locales))
        _chroot(root, "locale-gen")
        _write(root, "etc/default/locale", "LANG=%s\n" % profile.locales[0])
    if profile.marker:
        _write(root, "etc/issue", "%s \\n \\l\n\n" % profile.marker)
    if profile.profile == "cloud":
        mods = root / "etc/modules"
        mods.parent.mkdir(parents=True, exist_ok=True)
        existing = mods.read_text() if mods.exists() else ""
        mods.write_text(modules_file(existing, ETC_MODULES))
        initramfs = root / "etc/initramfs-tools/modules"
        existing = initramfs.read_text() if initramfs.exists() else ""
        initramfs.parent.mkdir(parents=True, exist_ok=True)
        initramfs.write_text(modules_file(existing, INITRAMFS_MODULES))
        _write(root, "etc/network/interfaces", INTERFACES)
        _write(root, "etc/systemd/system/zol-ssh-keygen.service", SSH_KEYGEN_UNIT)
        wants = root / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        link = wants / "zol-ssh-keygen.service"
        if not link.is_symlink():
            link.symlink_to("/etc/systemd/system/zol-ssh-keygen.service")
        # Serial console for nova's console log and our boot check.
        getty = wants / "serial-getty@ttyS0.service"
        if not getty.is_symlink() and (root / "lib/systemd/system/serial-getty@.service").exists():
            getty.symlink_to("/lib/systemd/system/serial-getty@.service")
        if profile.cloud_init:
            _write(root, "etc/cloud/cloud.cfg.d/90-zol.cfg",
                   "datasource_list: [ConfigDrive, OpenStack, Ec2, NoCloud, None]\n")
        _chroot(root, "update-initramfs", "-u", "-k", "all")
    _chroot(root, "apt-get", "clean")
    cleanup(root)


def cleanup(root: Path) -> None:
    """Remove per-host state: SSH host keys, persistent-net rules, histories, logs, apt lists."""
    for rel in REMOVE:
        (root / rel).unlink(missing_ok=True)
    for pattern in REMOVE_GLOBS:
        for path in root.glob(pattern):
            if path.is_file() or path.is_symlink():
                path.unlink()
    machine_id = root / "etc/machine-id"
    if machine_id.exists():
        machine_id.write_text("")      # systemd generates a fresh id on first boot


def hook_script(config_path: str | os.PathLike) -> str:
    """An executable mmdebstrap hook that runs ``apply`` with this interpreter and tree."""
    src = str(Path(__file__).resolve().parent.parent)
    return ("#!%s\n# Generated by zol-image: mmdebstrap customize hook (argv[1] is the tree).\n"
            "import sys\nsys.path.insert(0, %r)\nfrom image_builder import customize\n"
            "sys.exit(customize.hook_main(%r, sys.argv[1]))\n"
            % (sys.executable, src, os.fspath(config_path)))


def hook_main(config_path: str, root: str) -> int:
    logging.basicConfig(level=logging.INFO, format="customize: %(message)s")
    apply(root, Profile.from_json(Path(config_path).read_text()))
    return 0
