"""Every oslo.config option of the image builder, and list_opts() for oslo-config-generator.

Groups: [build] what to build, [glance] where to publish it, [libvirt] the installer backend.
The CLI registers these same options as command-line overrides, so a config file and flags
never disagree about names or defaults.
"""
from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from oslo_config import cfg

RELEASES = ("bookworm", "trixie")
RELEASE_VERSIONS = {"bookworm": "12", "trixie": "13"}
ARCHES = ("amd64",)
VERIFY_NETWORKS = ("metadata", "dhcp")
IMPORT_METHODS = ("upload", "glance-direct")


def default_recipe_path() -> Path:
    """etc/recipes/default.toml of the source tree, else the installed copy."""
    for path in (Path(__file__).resolve().parents[1] / "etc" / "recipes" / "default.toml",
                 Path(sys.prefix) / "share" / "zol-openstack" / "recipes" / "default.toml"):
        if path.is_file():
            return path
    raise FileNotFoundError("default recipe etc/recipes/default.toml not found")


# The default recipe is the ONE source of these defaults (recipe.load validates it; a unit
# test proves a build with --recipe etc/recipes/default.toml equals the default build).
with open(default_recipe_path(), "rb") as _f:
    DEFAULT_RECIPE = tomllib.load(_f)
_IMAGE = DEFAULT_RECIPE["image"]

build_opts = [
    cfg.StrOpt("recipe",
               help="Recipe file (TOML, doc/image-builder.md): release, arch, kernel, packages "
                    "to add/remove, files, scripts, cloud-init defaults, Glance properties, "
                    "series.  Its values override this file's; command-line flags override "
                    "both.  Default: the shipped etc/recipes/default.toml, whose values are "
                    "these options' defaults."),
    cfg.StrOpt("release", default=_IMAGE["release"], choices=RELEASES,
               help="Debian release (codename) to build."),
    cfg.StrOpt("arch", default=_IMAGE["arch"], choices=ARCHES,
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
    cfg.StrOpt("kernel_package", default=_IMAGE["kernel"],
               help="Kernel package; linux-image-cloud-amd64 is smaller and boots faster on "
                    "virtio clouds, linux-image-amd64 supports any hardware."),
    cfg.ListOpt("packages",
                default=DEFAULT_RECIPE["packages"]["base"],
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
    cfg.StrOpt("name", default=_IMAGE["name"],
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
    cfg.BoolOpt("package_cache", default=True,
                help="Keep the downloaded .debs and apt lists in cache_dir/apt/RELEASE-ARCH "
                     "between builds (mmdebstrap sync-in/sync-out hooks): a rebuild downloads "
                     "only what changed in the archive."),
    cfg.BoolOpt("tree_cache", default=True,
                help="Keep the finished tree (after the profile, before mkfs) in "
                     "cache_dir/trees/RELEASE-ARCH keyed by every input (archive Release "
                     "dates, sources, packages, profile, format, SOURCE_DATE_EPOCH, mmdebstrap "
                     "and zol-image versions): a rebuild with nothing changed skips "
                     "mmdebstrap, and mkfs makes the same bytes as from a fresh tree.  The "
                     "4 most recently used trees per release-arch are kept (~0.8 GiB "
                     "each)."),
    cfg.StrOpt("cache_dir", default="",
               help="Cache directory; empty: $ZOL_CACHE_DIR, else ~/.cache/zol-openstack."),
    cfg.IntOpt("source_date_epoch", default=0, min=0,
               help="SOURCE_DATE_EPOCH of the build (seconds): every timestamp in the image "
                    "is at most this, and the same archive state + inputs give bit-identical "
                    "files.  0: the newest Date of the archive's InRelease files."),
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
    cfg.StrOpt("cacert", help="CA bundle for Glance/Keystone TLS (default: clouds.yaml's "
                              "cacert, else the system's)."),
    cfg.StrOpt("series", default=_IMAGE["series"],
               help="Series of the publication ({release} {version} {arch} substituted): "
                    "images of one series replace each other (property image_series)."),
    cfg.StrOpt("version", default="",
               help="Version of this publication (property image_version, sorts the "
                    "series); empty: the build's date and time, YYYYMMDD.HHMM."),
    cfg.StrOpt("name_format", default="{series} {image_version}",
               help="Glance name of the AMI / BARE image ({series} {image_version} "
                    "{release} {version} {arch} {name}); the kernel and ramdisk get "
                    "'-kernel' / '-ramdisk' appended."),
    cfg.IntOpt("keep", default=0, min=0,
               help="After a successful publication, older publications of the series are "
                    "always hidden (os_hidden); with keep N > 0 only the N newest are kept "
                    "and older ones deleted (never a protected image, never a kernel/ramdisk "
                    "still referenced by a kept AMI)."),
    cfg.BoolOpt("protected", default=False,
                help="Create the AMI / BARE image protected (rotation never deletes it)."),
    cfg.ListOpt("tags", default=[], help="Tags set on every image of the publication."),
    cfg.ListOpt("members", default=[],
                help="Project ids the images are shared with (visibility shared)."),
    cfg.DictOpt("properties", default={},
                help="More Glance properties of the AMI / BARE image, over the recipe's "
                     "[glance.properties] and the computed ones ({release} {version} {arch} "
                     "{series} {image_version} substituted); --property K=V adds more."),
    cfg.IntOpt("min_ram", default=512, min=0,
               help="min_ram (MiB) of the AMI / BARE image (cloud-init needs ~512)."),
    cfg.StrOpt("manifest_url", default="",
               help="Where the build directory is published for users ({name} "
                    "{image_version} substituted), e.g. https://images.example.org/{name}/; "
                    "the images get image_package_manifest = URL + sbom.spdx.json.  Empty: "
                    "the SBOM's file:// path on the build host."),
    cfg.StrOpt("import_method", default="upload", choices=IMPORT_METHODS,
               help="upload: PUT the data (image upload); glance-direct: interoperable "
                    "image import (stage + import), for clouds that allow only import."),
    cfg.IntOpt("retries", default=4, min=0,
               help="Retries (with backoff 1, 2, 4 ... s) of a Glance call that failed "
                    "transiently (connection refused/reset, HTTP 5xx)."),
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
