"""The cloud profile: what turns a Debian install into an image a cloud user can launch.

ONE source for both install backends: ``steps(profile)`` returns the profile as data (files to
write, lines to add, links, commands, removals).  The chroot backend applies it from an
mmdebstrap --customize-hook (``apply``: files written under the tree, commands run through
``chroot TREE``); the libvirt backend renders the very same steps into the POSIX sh script the
Debian installer runs in the target (``render_shell``).  A unit test applies both renderings and
compares the trees, so the two backends cannot drift again.

What the profile gives an instance on first boot (Debian's own cloud images are the model):
systemd-networkd on whatever NIC it has (a catch-all DHCPv4 + IPv6 RA/DHCPv6 fallback; the
configuration cloud-init renders from network_data.json sorts first and wins), cloud-init with
the ConfigDrive/OpenStack/NoCloud datasources and the default user ``debian`` (passwordless
sudo, the instance's key; root and password logins off), the root filesystem grown to the disk
(cloud-init growpart + resizefs; ``zol-growroot`` when cloud-init is off), qemu-guest-agent,
systemd-timesyncd, a serial getty, SSH host keys made at first boot, an empty machine-id and
nothing of the build host (resolv.conf, logs, caches, apt lists).
"""
from __future__ import annotations

import glob
import json
import logging
import os
import re
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from image_builder import exception, run

LOG = logging.getLogger(__name__)

# acpiphp lets nova hot-plug PCI devices; virtio_balloon lets the host reclaim memory.  (The
# 2012 recipe wrote "virtio_baloon", which modprobe silently never loads.)
ETC_MODULES = ("virtio_balloon", "acpiphp")
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "virtio_scsi", "virtio_console",
                     "ext4")
# initramfs-tools' default is zstd -9, but without the zstd binary (not in a minbase tree) it
# falls back to gzip -6: ~7.5 s of CPU for the generic kernel's 125 MiB initramfs, zstd -3
# takes ~1.2 s for a smaller file (34 vs 36 MiB) that also unpacks faster at boot (TCG).
# Single-threaded under SOURCE_DATE_EPOCH, hence reproducible.
INITRAMFS_CONF = "etc/initramfs-tools/conf.d/zol-compress.conf"
INITRAMFS_COMPRESS = "# zol-image: fast to build, fast to unpack\nCOMPRESS=zstd\nCOMPRESSLEVEL=3\n"
ADMIN_USER = "debian"
# Files that must differ per instance, or that leak the build host (globs, relative to /).
REMOVE = ("etc/udev/rules.d/70-persistent-net.rules", "root/.bash_history",
          "root/.lesshst", "root/.viminfo", "var/lib/dhcp/*.leases",
          "etc/ssh/ssh_host_*", "var/log/*.log", "var/log/apt/*", "var/cache/apt/*.bin",
          "var/cache/debconf/*-old", "var/lib/apt/lists/*_Packages*",
          "var/lib/apt/lists/*_InRelease", "var/lib/apt/lists/*_Release*",
          "var/lib/apt/lists/*_Sources*", "var/lib/apt/lists/*_Translation*",
          "home/*/.bash_history", "tmp/*", "var/tmp/*", "var/lib/dbus/machine-id",
          "etc/network/interfaces.d/*")
REMOVE_TREES = ("var/log/installer", "var/lib/cloud/instances", "var/lib/cloud/instance",
                "var/lib/cloud/data")
SAFE_PATH = re.compile(r"[A-Za-z0-9_./@*+-]+")

SSH_KEYGEN_UNIT = """[Unit]
Description=Generate SSH host keys on first boot (zol-image)
Before=ssh.service
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
"""
SSHD_CONFIG = """# zol-image: keys only; root logs in only where an operator injected a key
# (cloud-init, when on, also turns root's key into a "log in as debian" message).
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
"""
# Debian's cloud images do the same job with cloud-init + netplan/ifupdown; networkd needs no
# interface name, so the NIC's PCI slot (ens3, ens5, enp0s3, eth0 ...) does not matter.
FALLBACK_NETWORK = """# zol-image: DHCPv4 and IPv6 (RA/SLAAC; DHCPv6 if the RA says so) on any NIC.
# cloud-init writes 10-cloud-init-*.network from network_data.json; those sort first and win.
[Match]
Name=en* eth*

[Network]
DHCP=yes
IPv6AcceptRA=yes
"""
WAIT_ONLINE_DROPIN = """# zol-image: one configured NIC is enough (others may be unplugged).
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=60
"""
INTERFACES = """# zol-image: systemd-networkd configures the NICs (/etc/systemd/network).
auto lo
iface lo inet loopback
"""
CLOUD_CFG = """# zol-image: the OpenStack profile (Debian's cloud images are the model).
datasource_list: [ConfigDrive, OpenStack, NoCloud, None]
disable_root: true
ssh_pwauth: false
preserve_hostname: false
manage_etc_hosts: true
ssh_deletekeys: true
%(locale)s# the image's sources (chosen at build time) stay: no template rewrite at first boot
apt:
  preserve_sources_list: true
system_info:
  default_user:
    name: %(user)s
    lock_passwd: true
    gecos: Debian
    groups: [adm, sudo]
    sudo: ["ALL=(ALL) NOPASSWD:ALL"]
    shell: /bin/bash
  network:
    renderers: [networkd]
    activators: [networkd]
"""
GROWROOT = """#!/bin/sh
# zol-image: grow the root partition (BARE disks) and filesystem to the disk (no cloud-init).
# Idempotent: growpart exits 1 with NOCHANGE, resize2fs does nothing on a full fs.
set -eu
dev=$(readlink -f "$(findmnt -no SOURCE /)")
name=${dev#/dev/}
if [ -e "/sys/class/block/$name/partition" ]; then
    part=$(cat "/sys/class/block/$name/partition")
    parent=$(basename "$(readlink -f "/sys/class/block/$name/..")")
    rc=0
    growpart "/dev/$parent" "$part" || rc=$?
    [ "$rc" -le 1 ] || exit "$rc"
fi
exec resize2fs "$dev"
"""
GROWROOT_UNIT = """[Unit]
Description=Grow the root filesystem to the disk (zol-image, no cloud-init)
After=systemd-remount-fs.service
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/zol-growroot

[Install]
WantedBy=multi-user.target
"""


# ----------------------------------------------------------------------------- profile data

@dataclass
class Profile:
    """Everything the profile needs, serialisable to JSON for the hook process."""

    hostname: str = "debian"
    locales: list[str] = field(default_factory=lambda: ["en_US.UTF-8"])
    cloud_init: bool = True
    profile: str = "cloud"
    marker: str = ""                  # written to /etc/issue so a console login shows it
    apt_sources: list[str] = field(default_factory=list)   # the image's /etc/apt/sources.list
    # From a recipe (image_builder.recipe): files {path, content, mode, owner}, scripts
    # {phase, name, text}, cloud-init defaults (YAML text), packages to purge.
    files: list[dict] = field(default_factory=list)
    scripts: list[dict] = field(default_factory=list)
    cloud_config: str = ""
    remove_packages: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Profile:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class WriteFile:
    path: str
    content: str
    mode: int = 0o644


@dataclass(frozen=True)
class AppendLines:
    """Add each line to the file unless it is already there (idempotent)."""

    path: str
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Symlink:
    path: str
    target: str


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]


@dataclass(frozen=True)
class Remove:
    """Delete files matching shell globs; ``trees`` are removed recursively."""

    patterns: tuple[str, ...]
    trees: tuple[str, ...] = ()


@dataclass(frozen=True)
class Empty:
    path: str


Step = WriteFile | AppendLines | Symlink | Command | Remove | Empty


def sources(release: str, mirror: str, security_mirror: str = "",
            updates: bool = False) -> list[str]:
    """One-line sources: the release, its -updates and -security suites (a cloud image carries
    the fixes); used by mmdebstrap and written into the image by both backends."""
    lines = ["deb %s %s main" % (mirror, release)]
    if updates:
        lines.append("deb %s %s-updates main" % (mirror, release))
    if security_mirror:
        lines.append("deb %s %s-security main" % (security_mirror, release))
    return lines


def cloud_locale(locales: list[str]) -> str:
    """cloud.cfg's ``locale``: the image's own (cloud-init's Debian default C.UTF-8 would
    rewrite /etc/default/locale and run update-locale on first boot, ~6 s under TCG)."""
    return "locale: %s\n" % locales[0] if locales else ""


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


def fstab(profile: Profile) -> str:
    """Root by label: the AMI is /dev/vda, a BARE disk's root is partition 1.  The kernel
    mounts it read-only (nova passes no ``rw``); systemd-remount-fs applies ``rw`` from here."""
    opts = "rw,noatime,errors=remount-ro"
    if profile.profile == "cloud" and not profile.cloud_init:
        opts += ",x-systemd.growfs"
    return ("# zol-image: nova passes root=/dev/vda; LABEL works for BARE disks too\n"
            "LABEL=rootfs / ext4 %s 0 1\n" % opts)


def packages_for(profile: Profile) -> list[str]:
    """Packages the profile itself needs on top of the user's list (both backends)."""
    pkgs = ["initramfs-tools"]
    if profile.locales:
        pkgs.append("locales")
    if profile.profile == "cloud":
        pkgs += ["systemd-resolved", "systemd-timesyncd", "qemu-guest-agent",
                 "cloud-guest-utils", "fdisk", "e2fsprogs", "openssh-server", "sudo",
                 "zstd"]
    if profile.cloud_init:
        pkgs.append("cloud-init")
    return pkgs


def recipe_scripts(profile: Profile, phase: str) -> list[Step]:
    """A recipe's scripts of one phase: written to /tmp, run with /bin/sh, removed."""
    out: list[Step] = []
    for i, script in enumerate(s for s in profile.scripts if s["phase"] == phase):
        rel = "tmp/zol-recipe-%s-%d.sh" % (phase, i)
        out += [WriteFile(rel, script["text"], 0o755), Command(("/bin/sh", "/" + rel)),
                Remove((rel,))]
    return out


def recipe_steps(profile: Profile) -> list[Step]:
    """A recipe's files, cloud-init defaults, purges and before-cleanup scripts (after the
    profile, so a recipe's file wins over the profile's)."""
    out: list[Step] = []
    for f in profile.files:
        out.append(WriteFile(f["path"], f["content"], f.get("mode", 0o644)))
        if f.get("owner", "root:root") != "root:root":
            out.append(Command(("chown", f["owner"], "/" + f["path"])))
    if profile.cloud_config and profile.cloud_init:
        out.append(WriteFile("etc/cloud/cloud.cfg.d/95-recipe.cfg", profile.cloud_config))
    if profile.remove_packages:
        out.append(Command(("apt-get", "purge", "-y", "--auto-remove",
                            *profile.remove_packages)))
    return out + recipe_scripts(profile, "before-cleanup")


def steps(profile: Profile) -> list[Step]:
    """The profile as data, in order; the single source of both backends."""
    out: list[Step] = recipe_scripts(profile, "after-install") + [
        WriteFile("etc/hostname", profile.hostname + "\n"),
        WriteFile("etc/hosts", hosts_file(profile.hostname)),
        WriteFile("etc/fstab", fstab(profile)),
    ]
    if profile.locales:
        out += [WriteFile("etc/locale.gen", locale_gen_lines(profile.locales)),
                Command(("locale-gen",)),
                WriteFile("etc/default/locale", "LANG=%s\n" % profile.locales[0])]
    if profile.marker:
        out.append(WriteFile("etc/issue", "%s \\n \\l\n\n" % profile.marker))
    if profile.apt_sources:
        out += [WriteFile("etc/apt/sources.list",
                          "# zol-image\n" + "\n".join(profile.apt_sources) + "\n"),
                Remove(("etc/apt/sources.list.d/*.list", "etc/apt/sources.list.d/*.sources"))]
    if profile.profile == "cloud":
        units = ["systemd-networkd.service", "systemd-resolved.service",
                 "systemd-timesyncd.service", "zol-ssh-keygen.service",
                 "serial-getty@ttyS0.service"]
        out += [
            AppendLines("etc/modules", ETC_MODULES),
            AppendLines("etc/initramfs-tools/modules", INITRAMFS_MODULES),
            WriteFile(INITRAMFS_CONF, INITRAMFS_COMPRESS),
            WriteFile("etc/network/interfaces", INTERFACES),
            WriteFile("etc/systemd/network/99-zol-fallback.network", FALLBACK_NETWORK),
            WriteFile("etc/systemd/system/systemd-networkd-wait-online.service.d/zol.conf",
                      WAIT_ONLINE_DROPIN),
            WriteFile("etc/ssh/sshd_config.d/50-zol.conf", SSHD_CONFIG),
            WriteFile("etc/systemd/system/zol-ssh-keygen.service", SSH_KEYGEN_UNIT),
        ]
        if profile.cloud_init:
            out.append(WriteFile("etc/cloud/cloud.cfg.d/90-zol.cfg",
                                 CLOUD_CFG % {"user": ADMIN_USER,
                                              "locale": cloud_locale(profile.locales)}))
        else:
            out += [WriteFile("usr/local/sbin/zol-growroot", GROWROOT, 0o755),
                    WriteFile("etc/systemd/system/zol-growroot.service", GROWROOT_UNIT)]
            units.append("zol-growroot.service")
        out += [Command(("systemctl", "enable", *units)),
                Command(("update-initramfs", "-u", "-k", "all"))]
    out += recipe_steps(profile)
    out += [Command(("apt-get", "clean")),
            Remove(REMOVE, REMOVE_TREES),
            Empty("etc/machine-id")]       # systemd makes a fresh id on first boot
    if profile.profile == "cloud":
        # Last: the build's DNS is needed up to here (the installer's late script runs apt).
        out.append(Symlink("etc/resolv.conf", "../run/systemd/resolve/stub-resolv.conf"))
    else:
        out.append(Remove(("etc/resolv.conf",)))
    for step in out:
        _check(step)
    return out


def _check(step: Step) -> None:
    paths = list(getattr(step, "patterns", ())) + list(getattr(step, "trees", ()))
    if hasattr(step, "path"):
        paths.append(step.path)
    for p in paths:
        if not SAFE_PATH.fullmatch(p) or p.startswith("/") or ".." in p.split("/"):
            raise exception.ConfigError(reason="profile path %r is not a plain relative path"
                                        % p)


# ----------------------------------------------------------------------------- renderers

UPDATE_INITRAMFS = ("update-initramfs", "-u", "-k", "all")
CREATE_INITRAMFS = ("update-initramfs", "-c", "-k", "all")
INITRAMFS_DIVERTED = "usr/sbin/update-initramfs"


def apply(root: str | os.PathLike, profile: Profile, initramfs_deferred: bool = False,
          timings: dict[str, float] | None = None) -> None:
    """Apply the profile to the tree at ``root`` (the mmdebstrap hook).  With
    ``initramfs_deferred`` the install built no initramfs yet: the profile's update becomes
    the one creation, for every installed kernel.  ``timings`` gets each command's seconds."""
    todo = steps(profile)
    if initramfs_deferred:
        if Command(UPDATE_INITRAMFS) in todo:
            todo = [Command(CREATE_INITRAMFS) if s == Command(UPDATE_INITRAMFS) else s
                    for s in todo]
        else:                      # a profile without its own update still needs one
            todo = [Command(CREATE_INITRAMFS)] + todo
    apply_steps(Path(root), todo, timings=timings)


def restore_initramfs(root: Path, runner=None) -> bool:
    """Undo the install's update-initramfs diversion (the chroot backend's essential hook);
    True when there was one, i.e. no initramfs has been built yet."""
    real = root / (INITRAMFS_DIVERTED + ".distrib")
    if not real.exists():
        return False
    (root / INITRAMFS_DIVERTED).unlink(missing_ok=True)
    (runner or (lambda argv: _chroot(root, *argv)))(
        ["dpkg-divert", "--quiet", "--local", "--rename", "--remove", "/" + INITRAMFS_DIVERTED])
    if not (root / INITRAMFS_DIVERTED).exists():
        raise exception.InstallError(reason="dpkg-divert did not restore /%s"
                                     % INITRAMFS_DIVERTED)
    return True


def apply_steps(root: Path, todo: list[Step], runner=None,
                timings: dict[str, float] | None = None) -> None:
    """Files under ``root``; commands through ``chroot ROOT`` (``runner`` replaces that).
    ``timings``: seconds per command (its first word; the rest of the steps as "files")."""
    runner = runner or (lambda argv: _chroot(root, *argv))
    timings = {} if timings is None else timings
    for step in todo:
        start = time.monotonic()
        _apply_step(root, step, runner)
        what = step.argv[0] if isinstance(step, Command) else "files"
        timings[what] = round(timings.get(what, 0.0) + time.monotonic() - start, 2)
        if isinstance(step, Command):
            LOG.info("%s done in %.1f s", step.argv[0], time.monotonic() - start)


def _apply_step(root: Path, step: Step, runner) -> None:
    if isinstance(step, WriteFile):
        _write(root, step.path, step.content, step.mode)
    elif isinstance(step, AppendLines):
        path = root / step.path
        path.parent.mkdir(parents=True, exist_ok=True)
        existing = path.read_text() if path.exists() else ""
        path.write_text(modules_file(existing, step.lines))
    elif isinstance(step, Symlink):
        path = root / step.path
        if path.is_symlink() or path.exists():
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(step.target)
    elif isinstance(step, Command):
        LOG.info("running %s", shlex.join(step.argv))
        runner(list(step.argv))
    elif isinstance(step, Remove):
        for pattern in step.patterns:
            for name in glob.glob(str(root / pattern)):
                if os.path.islink(name) or os.path.isfile(name):
                    os.unlink(name)
        for tree in step.trees:
            for name in glob.glob(str(root / tree)):
                if os.path.islink(name) or os.path.isfile(name):
                    os.unlink(name)
                else:
                    shutil.rmtree(name)
    elif isinstance(step, Empty) and (root / step.path).exists():
        (root / step.path).write_text("")


def render_shell(todo: list[Step], title: str = "zol-image cloud profile") -> str:
    """The same steps as a POSIX sh script for the installed system (preseed late_command).

    Paths are below ``$ZOL_ROOT`` (empty in the target: the script runs under in-target), every
    value is quoted with shlex.quote; globs stay unquoted on purpose (validated by ``_check``).
    """
    q = shlex.quote
    lines = ["#!/bin/sh", "# %s (generated from image_builder.customize.steps)" % title,
             "set -eu", 'R="${ZOL_ROOT:-}"']

    def p(rel: str) -> str:
        return '"$R"/' + q(rel)

    for step in todo:
        if isinstance(step, WriteFile):
            lines += ["mkdir -p \"$(dirname %s)\"" % p(step.path),
                      "printf '%%s' %s > %s" % (q(step.content), p(step.path)),
                      "chmod %o %s" % (step.mode, p(step.path))]
        elif isinstance(step, AppendLines):
            lines.append("mkdir -p \"$(dirname %s)\" && touch %s" % (p(step.path), p(step.path)))
            for line in step.lines:
                lines.append("grep -qxF -- %s %s || printf '%%s\\n' %s >> %s"
                             % (q(line), p(step.path), q(line), p(step.path)))
        elif isinstance(step, Symlink):
            lines += ["mkdir -p \"$(dirname %s)\"" % p(step.path),
                      "rm -f %s" % p(step.path),
                      "ln -s %s %s" % (q(step.target), p(step.path))]
        elif isinstance(step, Command):
            lines.append(shlex.join(step.argv))
        elif isinstance(step, Remove):
            for pattern in step.patterns:
                lines.append('for f in "$R"/%s; do if [ -f "$f" ] || [ -L "$f" ]; then '
                             'rm -f "$f"; fi; done' % pattern)
            for tree in step.trees:
                lines.append('rm -rf "$R"/%s' % tree)
        elif isinstance(step, Empty):
            lines.append("if [ -e %s ]; then : > %s; fi" % (p(step.path), p(step.path)))
    return "\n".join(lines) + "\n"


def _write(root: Path, rel: str, text: str, mode: int = 0o644) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    path.write_text(text)
    os.chmod(path, mode)


def _chroot(root: Path, *argv: str) -> None:
    run.run(["chroot", str(root), *argv],
            env={"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"})


def cleanup(root: Path) -> None:
    """Remove per-host state (the cleanup part of the profile, for callers that need only it)."""
    apply_steps(root, [Remove(REMOVE, REMOVE_TREES), Empty("etc/machine-id")])


def hook_script(config_path: str | os.PathLike) -> str:
    """An executable mmdebstrap hook that runs ``apply`` with this interpreter and tree."""
    src = str(Path(__file__).resolve().parent.parent)
    return ("#!%s\n# Generated by zol-image: mmdebstrap customize hook (argv[1] is the tree).\n"
            "import sys\nsys.path.insert(0, %r)\nfrom image_builder import customize\n"
            "sys.exit(customize.hook_main(%r, sys.argv[1]))\n"
            % (sys.executable, src, os.fspath(config_path)))


TIMINGS_FILE = "profile-timings.json"      # next to the hook's config: what each step took


def hook_main(config_path: str, root: str) -> int:
    logging.basicConfig(level=logging.INFO, format="customize: %(message)s")
    deferred = restore_initramfs(Path(root))
    timings: dict[str, float] = {}
    apply(root, Profile.from_json(Path(config_path).read_text()), initramfs_deferred=deferred,
          timings=timings)
    Path(config_path).with_name(TIMINGS_FILE).write_text(json.dumps(timings, sort_keys=True))
    return 0
