"""Every oslo.config option of the image builder, and list_opts() for oslo-config-generator.

Groups: [build] what to build, [glance] where to publish it, [libvirt] the installer backend.
The CLI registers these same options as command-line overrides, so a config file and flags
never disagree about names or defaults.
"""
from __future__ import annotations

from oslo_config import cfg

RELEASES = ("bookworm", "trixie")
RELEASE_VERSIONS = {"bookworm": "12", "trixie": "13"}
ARCHES = ("amd64",)
VERIFY_NETWORKS = ("metadata", "dhcp")

build_opts = [
    cfg.StrOpt("release", default="bookworm", choices=RELEASES,
               help="Debian release (codename) to build."),
    cfg.StrOpt("arch", default="amd64", choices=ARCHES,
               help="Debian architecture of the image."),
    cfg.StrOpt("mirror", default="http://deb.debian.org/debian",
               help="Debian mirror (http or https URL) for the install."),
    cfg.StrOpt("security_mirror", default="http://deb.debian.org/debian-security",
               help="Mirror of RELEASE-security (security updates go into the image); empty "
                    "to leave them out."),
    cfg.BoolOpt("updates", default=True,
                help="Include RELEASE-updates (stable updates) from 'mirror'."),
    cfg.IntOpt("disk_size", default=2048, min=256,
               help="Size in MiB of the partitioned disk the system is installed on; the "
                    "AMI root filesystem is shrunk afterwards to the data it holds."),
    cfg.StrOpt("kernel_package", default="linux-image-cloud-amd64",
               help="Kernel package; linux-image-cloud-amd64 is smaller and boots faster on "
                    "virtio clouds, linux-image-amd64 supports any hardware."),
    cfg.ListOpt("packages",
                default=["openssh-server", "netbase", "iproute2", "systemd-sysv", "udev", "kmod",
                         "sudo", "less", "ca-certificates"],
                help="Packages installed on top of the minimal base; the 'cloud' profile adds "
                     "its own (cloud-init, systemd-resolved, systemd-timesyncd, "
                     "qemu-guest-agent, cloud-guest-utils)."),
    cfg.ListOpt("extra_packages", default=[],
                help="More packages, added to 'packages' (handy on the command line)."),
    cfg.ListOpt("locales", default=["en_US.UTF-8"],
                help="Locales to generate; the first one becomes LANG."),
    cfg.StrOpt("profile", default="cloud", choices=("cloud", "none"),
               help="Configuration profile: 'cloud' (virtio modules, initramfs, cleanup for "
                    "instances) or 'none' (plain install)."),
    cfg.BoolOpt("cloud_init", default=True,
                help="Install and enable cloud-init (datasources ConfigDrive, OpenStack, "
                     "NoCloud; user 'debian' gets the instance's key and sudo).  Without it "
                     "nobody can log in unless nova injects root's key (inject_key=True, "
                     "inject_partition=-1): see doc/image-builder.md."),
    cfg.StrOpt("hostname", default="debian", help="Hostname written into the image."),
    cfg.StrOpt("name", default="debian-{release}-{arch}",
               help="Image name; {release}, {version} and {arch} are substituted."),
    cfg.StrOpt("output_dir", default="images",
               help="Directory that receives the build directory of each image."),
    cfg.StrOpt("format", default="ami", choices=("ami", "qcow2", "raw"),
               help="ami: kernel+ramdisk+root fs triplet (honours the flavor's disk size); "
                    "qcow2/raw: one BARE whole-disk image."),
    cfg.StrOpt("install_backend", default="chroot", choices=("chroot", "libvirt"),
               help="chroot: mmdebstrap on the host (fast); libvirt: the Debian installer "
                    "in a guest, driven by a preseed."),
    cfg.FloatOpt("fs_slack", default=0.08, min=0.0, max=1.0,
                 help="Free space left in the shrunk root filesystem, as a fraction of the "
                      "data it holds (nova grows it to the flavor size at boot)."),
    cfg.BoolOpt("verify", default=True,
                help="Boot the result the way nova does before publishing it."),
    cfg.IntOpt("verify_disk_size", default=3072, min=256,
               help="Flavor root disk (MiB) of the test launch: the instance disk is a qcow2 "
                    "overlay of this size and the guest must grow its root to it (BARE: "
                    "larger than disk_size, so the partition grows too)."),
    cfg.IntOpt("verify_timeout", default=900, min=10,
               help="Seconds the test launch may take to let the SSH key in (TCG: minutes)."),
    cfg.StrOpt("verify_nic", default="virtio-net-pci@0x3",
               help="NIC of the test launch as MODEL@PCI_SLOT (virtio-net-pci, e1000; slot "
                    "0x3-0x1f): the image must configure it whatever its name.  The cloud "
                    "kernels (linux-image-cloud-amd64, bookworm and trixie) have no e1000 "
                    "driver: e1000 needs kernel_package linux-image-amd64."),
    cfg.StrOpt("verify_network", default="metadata", choices=VERIFY_NETWORKS,
               help="Network of the test launch: metadata = the config drive carries a "
                    "network_data.json (static address, own MTU) that must win over DHCP; "
                    "dhcp = no network_data.json, as on plain DHCP networks: the image's "
                    "own fallback must take a lease on whatever NIC it has."),
    cfg.IntOpt("verify_memory", default=1024, min=256,
               help="Memory (MiB) of the test launch (cloud-init needs ~512)."),
    cfg.StrOpt("verify_marker", default="",
               help="Serial console text that proves the image booted; empty: the line "
                    "'zol-image NAME' that the build writes to /etc/issue (shown by the "
                    "serial getty).  Images without cloud-init are verified by this marker "
                    "only (no key reaches them)."),
    cfg.BoolOpt("upload", default=True, help="Upload the result to Glance."),
    cfg.BoolOpt("keep_work", default=False,
                help="Keep the intermediate files (tree, disk, raw) for debugging."),
    cfg.IntOpt("install_timeout", default=3600, min=10,
               help="Seconds an install may take before it is aborted."),
]

glance_opts = [
    cfg.StrOpt("endpoint",
               help="Glance URL (e.g. http://127.0.0.1:9292). With it, 'token' is used "
                    "and Keystone is bypassed; without it, clouds.yaml / OS_* decide."),
    cfg.StrOpt("token", secret=True, help="Token sent with 'endpoint' (X-Auth-Token)."),
    cfg.StrOpt("cloud", help="Cloud name in clouds.yaml (default: OS_CLOUD)."),
    cfg.StrOpt("visibility", default="private",
               choices=("private", "shared", "community", "public"),
               help="Visibility of the uploaded images."),
    cfg.BoolOpt("reuse", default=True,
                help="Reuse an existing identical triplet (same name and hashes) instead "
                     "of uploading a duplicate."),
    cfg.BoolOpt("insecure", default=False, help="Do not verify the TLS certificate."),
]

libvirt_opts = [
    cfg.StrOpt("uri", default="qemu:///system", help="libvirt connection URI."),
    cfg.StrOpt("domain_type", default="auto", choices=("auto", "kvm", "qemu"),
               help="auto: kvm only when a probe guest really boots under KVM, else qemu "
                    "(TCG)."),
    cfg.IntOpt("memory", default=1024, min=256, help="Installer guest memory (MiB)."),
    cfg.IntOpt("vcpus", default=2, min=1, help="Installer guest vCPUs."),
    cfg.StrOpt("installer_kernel",
               default="/usr/lib/debian-installer/images/{version}/amd64/text/"
                       "debian-installer/amd64/linux",
               help="Debian installer kernel of the release being installed ({version} is "
                    "12 or 13: packages debian-installer-12-netboot-amd64 from bookworm, "
                    "debian-installer-13-netboot-amd64 from trixie)."),
    cfg.StrOpt("installer_initrd",
               default="/usr/lib/debian-installer/images/{version}/amd64/text/"
                       "debian-installer/amd64/initrd.gz",
               help="Debian installer initrd ({version} substituted as for "
                    "installer_kernel)."),
    cfg.BoolOpt("run_as_root", default=True,
                help="Run the installer guest's qemu as root:root (a per-domain static DAC "
                     "label) so build directories below private (0700) parents work; false "
                     "uses libvirt's qemu user, which must then reach the build directory."),
    cfg.StrOpt("preseed_template",
               help="Preseed template (string.Template); default: the packaged one."),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(build_opts, group="build")
    conf.register_opts(glance_opts, group="glance")
    conf.register_opts(libvirt_opts, group="libvirt")


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """Entry point for oslo-config-generator (namespace image_builder)."""
    return [("build", build_opts), ("glance", glance_opts), ("libvirt", libvirt_opts)]
