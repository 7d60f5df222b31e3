"""The pipeline: install -> convert -> kernel -> shrink -> verify -> upload -> manifest.

Each stage is timed and logged; each registers its rollback on an ExitStack, so a failure at
any point (or Ctrl-C) unwinds exactly what was created: work files, a qemu process, a libvirt
domain, Glance images.  The error names the stage and the cause.  On success the build
directory holds the triplet (NAME.vmlinuz, NAME.initrd, NAME.img) or the BARE disk, and
manifest.json with versions, packages, sizes, hashes, Glance ids and timings.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import json
import logging
import os
import platform
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from image_builder import (cache, customize, disk, exception, glance, opts, publish, repro, run,
                           sbom, verify, workspace)
from image_builder import recipe as recipe_mod
from image_builder.install.chroot import parse_dpkg_status

LOG = logging.getLogger(__name__)

STAGES = ("install", "convert", "kernel", "shrink", "verify", "hash", "upload", "manifest")
BARE_STAGES = ("install", "convert", "verify", "hash", "upload", "manifest")
# Points inside stages where tests inject faults with live resources around them.
INNER_FAULTS = ("qemu", "upload-kernel", "upload-ramdisk", "upload-root", "installer")
ARCH_NAMES = {"amd64": "x86_64"}



class InjectedFault(exception.ImageBuilderError):
    msg_fmt = "injected fault at %(point)s (test)"


def _default(name: str, group: list | None = None):
    return next(o for o in (group or opts.build_opts) if o.dest == name).default


def _gdefault(name: str):
    return _default(name, opts.glance_opts)


def default_recipe_record() -> dict[str, Any]:
    """The manifest's "recipe" of a build without --recipe: the default recipe."""
    return {"path": str(opts.default_recipe_path()),
            "properties": dict(opts.DEFAULT_RECIPE["glance"]["properties"])}


@dataclass
class Settings:
    """Everything a build needs, decoupled from oslo.config so tests can build one directly."""

    release: str = field(default_factory=lambda: _default("release"))
    arch: str = field(default_factory=lambda: _default("arch"))
    mirror: str = "http://deb.debian.org/debian"
    security_mirror: str = "http://deb.debian.org/debian-security"
    updates: bool = True
    disk_size: int = 2048
    kernel_package: str = field(default_factory=lambda: _default("kernel_package"))
    packages: list[str] = field(default_factory=lambda: list(_default("packages")))
    locales: list[str] = field(default_factory=lambda: ["en_US.UTF-8"])
    profile: str = "cloud"
    cloud_init: bool = True
    hostname: str = "debian"
    name: str = field(default_factory=lambda: _default("name"))
    output_dir: str = "images"
    format: str = "ami"
    install_backend: str = "chroot"
    fs_slack: float = 0.08
    verify: bool = True
    verify_disk_size: int = 3072
    verify_timeout: int = 900
    verify_marker: str = ""
    verify_nic: str = "virtio-net-pci@0x3"
    verify_network: str = "metadata"
    verify_memory: int = 1024
    upload: bool = True
    keep_work: bool = False
    install_timeout: int = 3600
    source_disk: str | None = None
    glance_endpoint: str | None = None
    glance_token: str | None = None
    glance_cloud: str | None = None
    glance_visibility: str = "private"
    glance_reuse: bool = True
    glance_insecure: bool = False
    glance_cacert: str | None = None
    glance_series: str = field(default_factory=lambda: _gdefault("series"))
    glance_version: str = ""
    glance_name_format: str = field(default_factory=lambda: _gdefault("name_format"))
    glance_keep: int = 0
    glance_protected: bool = False
    glance_tags: list[str] = field(default_factory=list)
    glance_members: list[str] = field(default_factory=list)
    glance_properties: dict[str, str] = field(default_factory=dict)
    glance_min_ram: int = field(default_factory=lambda: _gdefault("min_ram"))
    glance_manifest_url: str = ""
    glance_import_method: str = "upload"
    glance_retries: int = field(default_factory=lambda: _gdefault("retries"))
    libvirt: dict[str, Any] = field(default_factory=dict)
    # Speed and reproducibility (image_builder.cache, image_builder.repro).
    package_cache: bool = True
    tree_cache: bool = True
    cache_dir: str = ""
    source_date_epoch: int = 0
    # From the recipe (recipe.Recipe): packages removed, what the profile copies/runs, and
    # what the manifest records.
    remove_packages: list[str] = field(default_factory=list)
    recipe_profile: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=lambda: default_recipe_record())

    @property
    def version(self) -> str:
        return opts.RELEASE_VERSIONS[self.release]

    @property
    def image_name(self) -> str:
        name = self.name.format(release=self.release, version=self.version, arch=self.arch)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,120}", name):
            raise exception.ConfigError(reason="image name %r: use letters, digits, . _ + -"
                                        % name)
        return name

    @property
    def all_packages(self) -> list[str]:
        return sorted((set(self.packages) | {self.kernel_package}) - set(self.remove_packages))

    def publication(self) -> publish.Publication:
        """How `upload` publishes (never what the image is: that is in its manifest)."""
        if self.glance_members and self.glance_visibility != "shared":
            raise exception.ConfigError(reason="[glance] members needs visibility shared "
                                               "(got %s)" % self.glance_visibility)
        return publish.Publication(
            series=self.glance_series, version=self.glance_version,
            name_format=self.glance_name_format, properties=dict(self.glance_properties),
            min_ram=self.glance_min_ram, manifest_url=self.glance_manifest_url,
            options=glance.PublishOptions(
                visibility=self.glance_visibility, members=list(self.glance_members),
                tags=list(self.glance_tags), protected=self.glance_protected,
                import_method=self.glance_import_method, retries=self.glance_retries,
                reuse=self.glance_reuse, keep=self.glance_keep))

    @classmethod
    def from_conf(cls, conf) -> Settings:
        """The options (a recipe's values are already overrides there, see cli.load_conf),
        plus what only the recipe has: packages to add/remove, files, scripts, cloud-init
        defaults and Glance properties."""
        b, g, lv = conf.build, conf.glance, conf.libvirt
        rcp = recipe_mod.load(b.recipe) if b.recipe else None
        record = default_recipe_record()
        if rcp:
            record = dict(rcp.public(), properties=dict(record["properties"],
                                                         **rcp.properties))
        return cls(
            remove_packages=list(rcp.remove) if rcp else [],
            recipe_profile=rcp.profile_data() if rcp else {}, recipe=record,
            release=b.release, arch=b.arch, mirror=b.mirror, disk_size=b.disk_size,
            security_mirror=b.security_mirror, updates=b.updates,
            kernel_package=b.kernel_package,
            packages=list(b.packages) + list(b.extra_packages) + (list(rcp.add) if rcp else []),
            locales=list(b.locales), profile=b.profile, cloud_init=b.cloud_init,
            hostname=b.hostname, name=b.name, output_dir=b.output_dir, format=b.format,
            install_backend=b.install_backend, fs_slack=b.fs_slack, verify=b.verify,
            verify_disk_size=b.verify_disk_size, verify_timeout=b.verify_timeout,
            verify_marker=b.verify_marker, verify_nic=b.verify_nic,
            verify_network=b.verify_network,
            verify_memory=b.verify_memory, upload=b.upload, keep_work=b.keep_work,
            install_timeout=b.install_timeout, glance_endpoint=g.endpoint,
            glance_token=g.token, glance_cloud=g.cloud, glance_visibility=g.visibility,
            glance_reuse=g.reuse, glance_insecure=g.insecure, glance_cacert=g.cacert,
            glance_series=g.series, glance_version=g.version, glance_name_format=g.name_format,
            glance_keep=g.keep, glance_protected=g.protected, glance_tags=list(g.tags),
            glance_members=list(g.members), glance_properties=dict(g.properties),
            glance_min_ram=g.min_ram, glance_manifest_url=g.manifest_url,
            glance_import_method=g.import_method, glance_retries=g.retries,
            libvirt={o.dest: getattr(lv, o.dest) for o in opts.libvirt_opts},
            package_cache=b.package_cache, tree_cache=b.tree_cache, cache_dir=b.cache_dir,
            source_date_epoch=b.source_date_epoch)

    def public(self) -> dict[str, Any]:
        """Settings for the manifest: never the token."""
        d = asdict(self)
        d["glance_token"] = "***" if self.glance_token else None
        d.pop("recipe_profile", None)       # file contents: the manifest's recipe has hashes
        return d


class Builder:
    """One build.  ``fault`` (tests only) raises InjectedFault at a named point."""

    def __init__(self, settings: Settings, *, glance_client: Any = None,
                 fault: str | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self.s = settings
        self.fault = fault
        self.progress = progress or (lambda msg: LOG.info("  %s", msg))
        self.name = settings.image_name
        self.out = Path(settings.output_dir).resolve() / self.name
        self.work = self.out / "work"
        self.timings: dict[str, float] = {}
        self.result: dict[str, Any] = {}
        self._glance = glance_client
        self.marker = settings.verify_marker or "zol-image %s" % self.name

    # ------------------------------------------------------------------ helpers
    def inject(self, point: str) -> None:
        if self.fault == point:
            raise InjectedFault(point=point)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        LOG.info("stage %s: start", name)
        start = time.monotonic()
        try:
            yield
            self.inject(name)
        except BaseException as exc:
            seconds = time.monotonic() - start
            self.timings[name] = round(seconds, 2)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                LOG.error("stage %s: interrupted after %.1f s", name, seconds)
                raise
            LOG.error("stage %s: failed after %.1f s: %s", name, seconds, exc)
            raise exception.StageFailed(name, seconds, exc) from exc
        seconds = time.monotonic() - start
        self.timings[name] = round(seconds, 2)
        LOG.info("stage %s: done in %.1f s", name, seconds)

    def glance_client(self):
        if self._glance is None:
            self._glance = client_for(self.s)
        return self._glance

    def profile(self) -> customize.Profile:
        return customize.Profile(hostname=self.s.hostname, locales=self.s.locales,
                                 cloud_init=self.s.cloud_init, profile=self.s.profile,
                                 marker=self.marker, apt_sources=self.apt_sources(),
                                 files=list(self.s.recipe_profile.get("files", [])),
                                 scripts=list(self.s.recipe_profile.get("scripts", [])),
                                 cloud_config=self.s.recipe_profile.get("cloud_config", ""),
                                 remove_packages=list(self.s.remove_packages))

    def apt_sources(self) -> list[str]:
        return customize.sources(self.s.release, self.s.mirror, self.s.security_mirror,
                                 self.s.updates)

    # ------------------------------------------------------------------ pipeline
    def run(self) -> dict[str, Any]:
        """Preflight, then build under the output directory's lock in a partial directory
        that replaces OUT/NAME only once verified, hashed and described (manifest, SBOM);
        then publish.  A failed upload keeps the build: `zol-image upload OUT/NAME`."""
        total = time.monotonic()
        workspace.preflight(self.s.install_backend, self.s.format, self.s.verify,
                            bool(self.s.source_disk))
        with workspace.Workspace(self.s.output_dir, self.name) as ws:
            self.out = ws.partial
            self.work = self.out / "work"
            try:
                manifest = self._build(total)
            except BaseException:
                ws.abort(self.s.keep_work)
                raise
            self.out = ws.commit()
            self.work = self.out / "work"
            LOG.info("build %s built and described in %.1f s, not published yet: %s",
                     self.name, time.monotonic() - total, self.out / "manifest.json")
            if self.s.upload:
                manifest = self._publish(total)
        LOG.info("build %s done in %.1f s: %s", self.name, time.monotonic() - total,
                 self.out / "manifest.json")
        return manifest

    def _publish(self, total: float) -> dict[str, Any]:
        def report(role: str, done: int, total_: int, elapsed: float) -> None:
            self.progress("upload %s: %d/%d MiB, %.1f MiB/s" % (
                role, done >> 20, total_ >> 20, done / 1048576 / max(elapsed, 1e-6)))
            if done >= total_:
                self.inject("upload-%s" % role)

        try:
            with self.stage("upload"):
                self.result["glance"] = publish.publish(self.out, self.glance_client(),
                                                        self.s.publication(), progress=report)
        except exception.StageFailed as exc:
            exc.message += ("; the verified build is kept in %s: `zol-image upload %s` "
                            "publishes it" % (self.out, self.out))
            exc.args = (exc.message,)
            raise
        manifest = publish.read_manifest(self.out)
        manifest["timings"]["upload"] = self.timings["upload"]
        manifest["timings"]["total"] = round(time.monotonic() - total, 2)
        publish.write_manifest(self.out, manifest)
        return manifest

    def _build(self, total: float) -> dict[str, Any]:
        """The stages up to the manifest, in self.out (the partial directory)."""
        bare = self.s.format != "ami"
        self.work.mkdir(parents=True)
        with contextlib.ExitStack() as rollback:
            with self.stage("install"):
                installed = self.install()
            with self.stage("convert"):
                if bare:
                    files = self.convert_bare(installed)
                else:
                    root = self.convert(installed)
            if not bare:
                with self.stage("kernel"):
                    kernel, initrd = self.kernel(root, installed)
                with self.stage("shrink"):
                    final_root = self.shrink(root, installed)
                files = {"kernel": kernel, "ramdisk": initrd, "root": final_root}
            with contextlib.ExitStack() as hashing:
                # Hashing and the SBOM's package inventory (debugfs on the AMI root fs; a
                # BARE disk's is read by qemu-img later) only read what verify only reads:
                # they run beside the launch (without verify, beside each other).
                hashes = self.start_hashing(files, hashing)
                side = hashing.enter_context(concurrent.futures.ThreadPoolExecutor(
                    2, thread_name_prefix="describe"))
                inventory = side.submit(self.package_inventory, files) if not bare else None
                versions = side.submit(tool_versions)
                if self.s.verify:
                    with self.stage("verify"):
                        self.result["verify"] = self.verify(files)
                with self.stage("hash"):
                    locals_ = {role: fut.result() for role, fut in hashes.items()}
                with self.stage("manifest"):
                    manifest = self.manifest(installed, locals_, time.monotonic() - total,
                                             files, inventory=inventory and inventory.result(),
                                             versions=versions.result())
            rollback.pop_all()
        if not self.s.keep_work:
            run.remove_tree(self.work)
        return manifest

    def install(self) -> dict[str, Any]:
        packages = self.s.all_packages
        if self.s.source_disk:
            # An installed disk from elsewhere (a previous build, a VM): skip the install.
            # An AMI root filesystem (a previous build's NAME.img) is taken as it is.
            if disk.is_filesystem(self.s.source_disk):
                if self.s.format != "ami":
                    raise exception.ConfigError(reason="--from-disk %s is a filesystem, not a "
                                                "disk: it can only make an AMI (--format ami)"
                                                % self.s.source_disk)
                run.run(["cp", "--sparse=always", self.s.source_disk, self.work / "root.img"])
                return {"source_disk": os.path.abspath(self.s.source_disk),
                        "root": str(self.work / "root.img"), "from_filesystem": True}
            disk.convert(self.s.source_disk, self.work / "disk.qcow2", "qcow2")
            return {"source_disk": os.path.abspath(self.s.source_disk)}
        if self.s.install_backend == "chroot":
            from image_builder.install import chroot
            self.result["repro"] = self.repro_inputs()
            epoch = self.result["repro"]["source_date_epoch"]
            pcache = cache.PackageCache.for_build(self.s.cache_dir or cache.default_dir(),
                                                  self.s.release, self.s.arch) \
                if self.s.package_cache else None
            installed = chroot.install(
                workdir=self.work, release=self.s.release, arch=self.s.arch,
                mirror=self.s.mirror, packages=packages, profile=self.profile(),
                disk_mb=self.s.disk_size, slack=self.s.fs_slack,
                timeout=self.s.install_timeout, progress=self.progress,
                bootloader=self.s.format != "ami", security_mirror=self.s.security_mirror,
                updates=self.s.updates, epoch=epoch, package_cache=pcache,
                fs_inputs=self.result["repro"]["fs_inputs"],
                tree_cache=cache.TreeCache.for_build(self.s.cache_dir or cache.default_dir(),
                                                     self.s.release, self.s.arch)
                if self.s.tree_cache else None,
                tree_key={k: self.result["repro"][k] for k in ("fs_inputs",
                                                               "archive_release_dates")})
            self.result["repro"].update(filesystem=installed.get("fs"),
                                        package_cache=installed.get("package_cache"),
                                        tree_cache=installed.get("tree_cache"),
                                        mmdebstrap_seconds=installed.get("mmdebstrap_seconds"))
            # What the install stage spent its time on (the profile runs inside mmdebstrap).
            self.result["install_steps"] = {
                k: installed[k] for k in ("mmdebstrap_seconds", "profile_seconds",
                                          "mkfs_seconds", "normalise_fs_seconds")
                if k in installed}
            if (installed.get("tree_cache") or {}).get("store_seconds") is not None:
                self.result["install_steps"]["tree_commit_seconds"] = \
                    installed["tree_cache"]["store_seconds"]
            LOG.info("install steps: %s", json.dumps(self.result["install_steps"],
                                                      sort_keys=True))
            return installed
        from image_builder.install import libvirt as lv
        return lv.install(workdir=self.work, release=self.s.release, mirror=self.s.mirror,
                          packages=packages, profile=self.profile(), disk_mb=self.s.disk_size,
                          timeout=self.s.install_timeout, options=self.s.libvirt,
                          progress=self.progress, on_started=lambda: self.inject("installer"),
                          security_mirror=self.s.security_mirror, updates=self.s.updates)

    def repro_inputs(self) -> dict[str, Any]:
        """SOURCE_DATE_EPOCH (given, or the archive's newest Release date) and the inputs the
        filesystem UUID and hash seed are derived from."""
        sources = self.apt_sources()
        dates = repro.archive_dates(sources)
        epoch = self.s.source_date_epoch or max(dates.values())
        fs_inputs = {"sources": sources, "packages": self.s.all_packages,
                     "profile": json.loads(self.profile().to_json()),
                     "format": self.s.format, "disk_size": self.s.disk_size,
                     "fs_slack": self.s.fs_slack, "epoch": epoch}
        return {"source_date_epoch": epoch, "source_date": repro.iso(epoch),
                "epoch_from": "setting" if self.s.source_date_epoch else "archive",
                "archive_release_dates": {u: repro.iso(d) for u, d in sorted(dates.items())},
                "fs_inputs": fs_inputs}

    def convert(self, installed: dict[str, Any]) -> Path:
        if installed.get("root"):           # the chroot backend's mkfs output is the root fs
            return Path(installed["root"])
        qcow2 = self.work / "disk.qcow2"
        part = disk.pick_root_partition(disk.read_partitions(qcow2))
        self.result["root_partition"] = asdict(part)
        root = self.work / "root.img"
        disk.extract_partition(qcow2, part, root)
        if not self.s.keep_work:
            qcow2.unlink()
        return root

    def kernel(self, root: Path, installed: dict[str, Any]) -> tuple[Path, Path]:
        """kernel and initrd next to the root fs: moved out of the tree (chroot backend), else
        read out of the filesystem with debugfs."""
        boot_files = installed if installed.get("kernel") else \
            disk.extract_boot_files(root, self.work)
        kernel = self.out / ("%s.vmlinuz" % self.name)
        initrd = self.out / ("%s.initrd" % self.name)
        os.replace(boot_files["kernel"], kernel)
        os.replace(boot_files["ramdisk"], initrd)
        self.result["kernel_version"] = boot_files["kernel_version"]
        if not installed.get("packages"):
            installed["packages"] = parse_dpkg_status(disk.read_text(root,
                                                                     "/var/lib/dpkg/status"))
        return kernel, initrd

    def shrink(self, root: Path, installed: dict[str, Any]) -> Path:
        """A foreign disk's root fs is shrunk; the chroot backend's was sized by mkfs (within
        fs_slack of its data), so it needs neither resize2fs nor fsck."""
        if installed.get("root") and not installed.get("from_filesystem"):
            info = disk.fs_info(root)
            self.result["rootfs"] = {"size": info.size, "used": info.used,
                                     "slack": info.slack, "size_before": info.size,
                                     "allocated": disk.allocated(root)}
        else:
            self.result["rootfs"] = disk.shrink(root, self.s.fs_slack)
        final_root = self.out / ("%s.img" % self.name)
        os.replace(root, final_root)
        return final_root

    def convert_bare(self, installed: dict[str, Any]) -> dict[str, Path]:
        out = self.out / ("%s.%s" % (self.name, self.s.format))
        if installed.get("disk"):           # the chroot backend's raw disk
            raw = Path(installed["disk"])
            if self.s.format == "raw":
                os.replace(raw, out)
            else:
                disk.convert(raw, out, self.s.format, src_fmt="raw")
                raw.unlink()
            return {"disk": out}
        qcow2 = self.work / "disk.qcow2"
        disk.convert(qcow2, out, self.s.format, src_fmt="qcow2")
        return {"disk": out}

    def start_hashing(self, files: dict[str, Path],
                      stack: contextlib.ExitStack) -> dict[str, concurrent.futures.Future]:
        """md5/sha256/sha512 of each file in its own thread (hashlib releases the GIL)."""
        pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(
            max_workers=len(files), thread_name_prefix="hash"))
        return {role: pool.submit(glance.hash_file, path, role) for role, path in files.items()}

    def boot_marker(self, files: dict[str, Path]) -> str:
        """Our /etc/issue line; an image from --from-disk carries its own build's name."""
        if self.s.verify_marker or not self.s.source_disk:
            return self.marker
        if "root" in files:
            try:
                issue = disk.read_text(files["root"], "/etc/issue")
            except exception.ImageBuilderError:
                issue = ""
            m = re.match(r"(zol-image \S+)", issue)
            if m:
                return m.group(1)
        return "login:"

    def verify(self, files: dict[str, Path]) -> dict[str, Any]:
        """A real launch: nova's disk, boot and config drive; then SSH in and check."""
        bare = "disk" in files
        with_key = self.s.cloud_init and self.s.profile == "cloud"
        suites = tuple(" %s " % line.split()[2] for line in self.apt_sources()) \
            if not self.s.source_disk else ()
        return verify.launch(kernel=None if bare else str(files["kernel"]),
                             initrd=None if bare else str(files["ramdisk"]),
                             root=str(files["disk" if bare else "root"]),
                             root_fmt=self.s.format if bare else "raw",
                             workdir=self.work / "verify",
                             flavor_bytes=self.s.verify_disk_size * disk.MIB,
                             timeout=self.s.verify_timeout, nic=verify.Nic.parse(self.s.verify_nic),
                             network=self.s.verify_network,
                             memory=self.s.verify_memory, marker=self.boot_marker(files),
                             ssh=with_key, apt_suites=suites, progress=self.progress,
                             on_started=lambda: self.inject("qemu"))

    def manifest(self, installed: dict[str, Any], files: dict[str, glance.LocalFile],
                 total: float, paths: dict[str, Path] | None = None,
                 inventory: list[dict[str, Any]] | None = None,
                 versions: dict[str, str] | None = None) -> dict[str, Any]:
        """manifest.json ("built, not published"), packages.json, the SPDX SBOM and
        SHA256SUMS: everything `zol-image upload` needs to publish this build later."""
        manifest = {
            "name": self.name,
            "build_id": uuid.uuid4().hex,
            "format": self.s.format,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "debian": {"release": self.s.release, "version": self.s.version,
                       "arch": self.s.arch, "mirror": self.s.mirror},
            "series": self.s.glance_series,
            "recipe": self.s.recipe,
            "versions": versions or tool_versions(),
            "kernel_version": self.result.get("kernel_version"),
            "packages": installed.get("packages", []),
            "files": {role: {"path": os.path.basename(f.path), "size": f.size,
                             "allocated": disk.allocated(f.path), "md5": f.md5,
                             "sha256": f.sha256, "sha512": f.sha512}
                      for role, f in files.items()},
            "rootfs": self.result.get("rootfs"),
            "root_partition": self.result.get("root_partition"),
            "verify": self.result.get("verify"),
            "glance": None,
            "published": False,
            "settings": self.s.public(),
            "timings": dict(self.timings, total=round(total, 2)),
            "install_steps": self.result.get("install_steps"),
        }
        if self.result.get("repro") is not None:
            manifest["repro"] = self.result["repro"]
        if manifest["verify"]:
            manifest["verify"] = {k: v for k, v in manifest["verify"].items()
                                  if k != "console_tail"}
        if inventory is None:
            inventory = self.package_inventory({r: Path(f.path) for r, f in files.items()})
        manifest["package_count"] = len(inventory)
        if not manifest["packages"]:      # --from-disk BARE: the image's own dpkg status
            manifest["packages"] = sorted("%s=%s" % (p["name"], p["version"]) for p in inventory)
        manifest["sbom"] = sbom.write(self.out, manifest, inventory)
        publish.write_manifest(self.out, manifest)
        return manifest

    def package_inventory(self, files: dict[str, Path]) -> list[dict[str, Any]]:
        """Every installed package with version, source and license, read from the image."""
        if "root" in files:
            return sbom.read_image(files["root"])
        fmt = self.s.format
        part = disk.pick_root_partition(disk.read_partitions(files["disk"], fmt))
        tmp = self.work / "sbom-root.img"
        disk.extract_partition(files["disk"], part, tmp, fmt)
        try:
            return sbom.read_image(tmp)
        finally:
            tmp.unlink(missing_ok=True)


def tool_versions() -> dict[str, str]:
    """Versions of the tools that shaped the image (first line of each --version)."""
    from importlib import metadata
    versions = {"python": platform.python_version()}
    try:
        versions["zol-openstack"] = metadata.version("zol-openstack")
    except metadata.PackageNotFoundError:
        versions["zol-openstack"] = "unknown"
    for key, argv in (("mmdebstrap", ["mmdebstrap", "--version"]),
                      ("qemu-img", ["qemu-img", "--version"]),
                      ("e2fsprogs", ["mke2fs", "-V"]), ("apt", ["apt-get", "--version"]),
                      ("dpkg", ["dpkg", "--version"])):
        try:
            proc = run.run(argv, check=False)
            text = (proc.stdout or proc.stderr).strip().splitlines()
            versions[key] = text[0] if text else "unknown"
        except exception.ImageBuilderError:
            versions[key] = "missing"
    for mod in ("glanceclient", "keystoneauth1"):
        try:
            versions[mod] = metadata.version({"glanceclient": "python-glanceclient"}.get(mod, mod))
        except metadata.PackageNotFoundError:
            versions[mod] = "missing"
    return versions


def client_for(settings: Settings):
    """A glanceclient for the settings' endpoint/token, clouds.yaml cloud or OS_* variables."""
    sess, endpoint, adapter = glance.make_session(
        settings.glance_endpoint, settings.glance_token, settings.glance_cloud,
        settings.glance_insecure, settings.glance_cacert)
    return glance.make_client(sess, endpoint, adapter)


def publish_existing(build_dir: str | os.PathLike, settings: Settings,
                     glance_client: Any = None) -> dict[str, Any]:
    """`zol-image upload BUILD_DIR`: publish a finished build from its manifest alone (under
    the build's lock); only where and how to publish come from ``settings``."""
    build_dir = Path(build_dir).resolve()
    publish.read_manifest(build_dir)         # a clear error before any connection
    with workspace.Workspace(build_dir.parent, build_dir.name, build=False):
        return publish.publish(build_dir, glance_client or client_for(settings),
                               settings.publication())
