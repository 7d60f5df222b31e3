"""`zol-image`: build (and verify, and publish) Debian images for OpenStack.

    zol-image build [--config-file FILE] [--recipe FILE] [--release trixie] [--no-verify] ...
    zol-image upload BUILD_DIR [--glance-endpoint URL]     (re)publish a finished build
    zol-image list [--series SERIES]                        publications in Glance
    zol-image retire (IMAGE_ID | --series S --version V) [--delete]

Options come from oslo.config (etc/image_builder.conf.sample lists them all, same names); the
flags below override the config file.  Exit status: 0 success, 1 build failure (the message
names the stage), 2 usage or configuration error.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

from oslo_config import cfg

from image_builder import build, exception, opts, publish, recipe

LOG = logging.getLogger(__name__)

# flag -> (group, option) for overrides; None value means "not given".
OVERRIDES = {
    "release": ("build", "release"), "arch": ("build", "arch"), "mirror": ("build", "mirror"),
    "security_mirror": ("build", "security_mirror"), "updates": ("build", "updates"),
    "disk_size": ("build", "disk_size"), "kernel_package": ("build", "kernel_package"),
    "packages": ("build", "packages"), "extra_packages": ("build", "extra_packages"),
    "locales": ("build", "locales"), "profile": ("build", "profile"),
    "cloud_init": ("build", "cloud_init"), "hostname": ("build", "hostname"),
    "name": ("build", "name"), "output_dir": ("build", "output_dir"),
    "format": ("build", "format"), "backend": ("build", "install_backend"),
    "verify": ("build", "verify"), "upload": ("build", "upload"),
    "keep_work": ("build", "keep_work"), "fs_slack": ("build", "fs_slack"),
    "verify_disk_size": ("build", "verify_disk_size"),
    "verify_nic": ("build", "verify_nic"),
    "verify_network": ("build", "verify_network"), "verify_timeout": ("build", "verify_timeout"),
    "glance_endpoint": ("glance", "endpoint"),
    "install_timeout": ("build", "install_timeout"), "os_cloud": ("glance", "cloud"),
    "visibility": ("glance", "visibility"), "reuse": ("glance", "reuse"),
    "recipe": ("build", "recipe"), "series": ("glance", "series"),
    "image_version": ("glance", "version"), "keep": ("glance", "keep"),
    "protected": ("glance", "protected"), "tags": ("glance", "tags"),
    "members": ("glance", "members"), "import_method": ("glance", "import_method"),
    "cacert": ("glance", "cacert"), "retries": ("glance", "retries"),
    "package_cache": ("build", "package_cache"), "cache_dir": ("build", "cache_dir"),
    "tree_cache": ("build", "tree_cache"),
    "source_date_epoch": ("build", "source_date_epoch"),
}


def csv(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError("%r: use KEY=VALUE" % text)
    return key.strip(), value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zol-image", description=__doc__.split("\n\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--config-file", action="append", default=[],
                   help="oslo.config file (repeatable); default /etc/zol-openstack/"
                        "image_builder.conf if it exists")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build an image (triplet or BARE disk)")
    u = sub.add_parser("upload", help="publish a finished build directory (everything about "
                       "the image comes from its manifest.json)")
    u.add_argument("build_dir")
    ls = sub.add_parser("list", help="publications (series, versions, ids) in Glance")
    ls.add_argument("--series", help="only this series (e.g. 'Debian 12 (amd64)')")
    ls.add_argument("--json", action="store_true", help="JSON instead of a table")
    rt = sub.add_parser("retire", help="hide (or --delete) a publication by hand")
    rt.add_argument("image_id", nargs="?", help="the AMI / BARE image id")
    rt.add_argument("--series", help="with --version: the publication's series")
    rt.add_argument("--version", dest="retire_version", help="image_version to retire")
    rt.add_argument("--delete", action="store_true",
                    help="delete instead of hiding (never a protected image, never a "
                         "kernel/ramdisk another AMI references)")
    for sp in (b, u, ls, rt):
        sp.add_argument("--glance-endpoint", help="Glance URL; token from OS_TOKEN or "
                        "ZOL_GLANCE_TOKEN")
        sp.add_argument("--os-cloud", help="clouds.yaml cloud name")
        sp.add_argument("--cacert", help="CA bundle for TLS")
    for sp in (b, u):
        sp.add_argument("--visibility", choices=("private", "shared", "community", "public"))
        sp.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=None,
                        help="reuse an identical triplet already in Glance (only when its "
                             "visibility, owner and properties match too)")
        sp.add_argument("--property", dest="properties", action="append", type=key_value,
                        default=[], metavar="KEY=VALUE",
                        help="Glance property of the AMI / BARE image (repeatable)")
        sp.add_argument("--series", help="series of the publication ({release} {version} "
                        "{arch}); upload: default the one recorded in the manifest")
        sp.add_argument("--image-version", help="image_version of the publication (default: "
                        "the build's date, YYYYMMDD.HHMM)")
        sp.add_argument("--keep", type=int, help="keep the N newest publications of the "
                        "series (older: deleted); older ones are always hidden")
        sp.add_argument("--protected", action=argparse.BooleanOptionalAction, default=None,
                        help="create the AMI / BARE image protected")
        sp.add_argument("--tags", type=csv, help="comma-separated tags")
        sp.add_argument("--members", type=csv, help="comma-separated project ids to share "
                        "with (needs --visibility shared)")
        sp.add_argument("--import-method", choices=opts.IMPORT_METHODS,
                        help="upload (PUT) or glance-direct (stage + import)")
        sp.add_argument("--retries", type=int, help="retries of a transient Glance error")
    b.add_argument("--recipe", help="recipe file (TOML): release, arch, kernel, packages, "
                   "files, scripts, cloud-init defaults, Glance properties, series")
    b.add_argument("--release", choices=opts.RELEASES)
    b.add_argument("--arch", choices=opts.ARCHES)
    b.add_argument("--mirror")
    b.add_argument("--security-mirror", help="RELEASE-security mirror; '' leaves it out")
    b.add_argument("--updates", action=argparse.BooleanOptionalAction, default=None,
                   help="include RELEASE-updates")
    b.add_argument("--disk-size", type=int, help="install disk size in MiB")
    b.add_argument("--kernel-package")
    b.add_argument("--packages", type=csv, help="comma-separated, replaces the default list")
    b.add_argument("--extra-packages", type=csv, help="comma-separated, added to the list")
    b.add_argument("--locales", type=csv)
    b.add_argument("--profile", choices=("cloud", "none"))
    b.add_argument("--cloud-init", action=argparse.BooleanOptionalAction, default=None)
    b.add_argument("--hostname")
    b.add_argument("--name", help="image name; {release} {version} {arch} substituted")
    b.add_argument("--output-dir")
    b.add_argument("--format", choices=("ami", "qcow2", "raw"))
    b.add_argument("--backend", choices=("chroot", "libvirt"))
    b.add_argument("--fs-slack", type=float)
    b.add_argument("--verify-disk-size", type=int, help="flavor root disk (MiB) of the test "
                   "launch")
    b.add_argument("--verify-nic", help="NIC of the test launch, MODEL@PCI_SLOT "
                   "(virtio-net-pci@0x3, e1000@0x8)")
    b.add_argument("--verify-network", choices=opts.VERIFY_NETWORKS,
                   help="test launch with network_data.json (metadata, default) or without "
                        "it (dhcp: the image must take a lease on its own)")
    b.add_argument("--verify-timeout", type=int, help="seconds the test launch may take")
    b.add_argument("--verify", action=argparse.BooleanOptionalAction, default=None)
    b.add_argument("--upload", action=argparse.BooleanOptionalAction, default=None)
    b.add_argument("--keep-work", action=argparse.BooleanOptionalAction, default=None)
    b.add_argument("--install-timeout", type=int, help="seconds")
    b.add_argument("--package-cache", action=argparse.BooleanOptionalAction, default=None,
                   help="keep .debs and apt lists in CACHE_DIR/apt between builds")
    b.add_argument("--tree-cache", action=argparse.BooleanOptionalAction, default=None,
                   help="reuse the finished tree of an identical earlier build (same archive "
                        "state and inputs): no mmdebstrap, same bytes (default on)")
    b.add_argument("--cache-dir", help="cache directory (default $ZOL_CACHE_DIR or "
                   "~/.cache/zol-openstack)")
    b.add_argument("--source-date-epoch", type=int, help="SOURCE_DATE_EPOCH (default: the "
                   "archive's newest Release date)")
    b.add_argument("--check-repro", action="store_true",
                   help="build twice and compare: exit 1 listing the differing files unless "
                        "root, kernel and initrd are bit-identical")
    b.add_argument("--from-disk", metavar="DISK",
                   help="skip the install: use this installed disk (qcow2/raw, root fs on a "
                        "Linux partition), e.g. a previous build's work/disk.qcow2")
    b.add_argument("--fail-at", help=argparse.SUPPRESS)   # tests: inject a fault
    return p


def load_conf(args: argparse.Namespace) -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    files = args.config_file or [f for f in ("/etc/zol-openstack/image_builder.conf",)
                                 if os.path.exists(f)]
    for f in files:
        if not os.path.exists(f):
            raise exception.ConfigError(reason="config file %s does not exist" % f)
    conf([], project="zol-openstack", prog="zol-image", default_config_files=files,
         use_env=False)
    # A recipe (--recipe, or [build] recipe) overrides the config file; flags override both.
    path = getattr(args, "recipe", None) or conf.build.recipe
    if path:
        rcp = recipe.load(path)
        conf.set_override("recipe", rcp.path, group="build")
        for (group, name), value in rcp.overrides().items():
            conf.set_override(name, value, group=group)
    for flag, (group, name) in OVERRIDES.items():
        value = getattr(args, flag, None)
        if value is not None:
            conf.set_override(name, value, group=group)
    extra = getattr(args, "properties", None)
    if extra:
        conf.set_override("properties", dict(conf.glance.properties, **dict(extra)),
                          group="glance")
    token = os.environ.get("ZOL_GLANCE_TOKEN") or os.environ.get("OS_TOKEN")
    if token:
        conf.set_override("token", token, group="glance")
    return conf


def table(rows: list[dict]) -> str:
    """`zol-image list`: one line per publication, series by series."""
    lines = []
    series = None
    for r in rows:
        if r["series"] != series:
            series = r["series"]
            lines.append("%s%s" % ("\n" if lines else "", series))
        flags = ",".join(f for f, on in (("hidden", r["hidden"]), ("protected", r["protected"]))
                         if on) or "visible"
        lines.append("  %-16s %-36s %-9s %-17s %s" % (r["version"], r["id"], r["visibility"],
                                                       flags, r["name"]))
    return "\n".join(lines) if lines else "(no publications)"


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so every rollback (domain, qemu, Glance images) runs."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    # A shell without job control starts background jobs with SIGINT ignored: restore it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        conf = load_conf(args)
        settings = build.Settings.from_conf(conf)
        settings.source_disk = getattr(args, "from_disk", None)
        if args.command == "upload":
            if not args.series:
                settings.glance_series = None     # the series recorded in the manifest
            ids = build.publish_existing(args.build_dir, settings)
            print(json.dumps(ids, indent=2))
            return 0
        if args.command == "list":
            rows = publish.listing(build.client_for(settings), args.series)
            print(json.dumps(rows, indent=2) if args.json else table(rows))
            return 0
        if args.command == "retire":
            if not args.image_id and not (args.series and args.retire_version):
                raise exception.ConfigError(reason="retire: give IMAGE_ID or --series and "
                                                   "--version")
            result = publish.retire(build.client_for(settings), series=args.series,
                                    version=args.retire_version, image_id=args.image_id,
                                    delete=args.delete)
            print(json.dumps(result, indent=2))
            return 0
        fault = getattr(args, "fail_at", None) or os.environ.get("ZOL_IMAGE_FAIL_AT")
        if getattr(args, "check_repro", False):
            from image_builder import reprocheck
            report = reprocheck.check(settings, fault=fault)
            print(json.dumps(report, indent=2))
            return 0 if report["identical"] else 1
        manifest = build.Builder(settings, fault=fault).run()
    except (exception.ConfigError, cfg.Error, ValueError) as exc:
        print("zol-image: configuration error: %s" % exc, file=sys.stderr)
        return 2
    except exception.ImageBuilderError as exc:
        print("zol-image: %s" % exc.message, file=sys.stderr)
        return 1
    except Exception as exc:
        if args.command == "build" or args.verbose:
            raise
        # keystoneauth / glanceclient errors of upload, list, retire: one line, no traceback
        print("zol-image: %s failed: %s: %s" % (args.command, type(exc).__name__, exc),
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("zol-image: interrupted; everything this run created was removed",
              file=sys.stderr)
        return 130
    summary = {"name": manifest["name"], "dir": str(os.path.abspath(
        os.path.join(settings.output_dir, manifest["name"]))),
               "files": {r: f["path"] for r, f in manifest["files"].items()},
               "glance": manifest["glance"], "timings": manifest["timings"]}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
