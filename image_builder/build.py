"""The pipeline: install -> convert -> kernel -> shrink -> verify -> upload -> manifest.

Each stage is timed and logged; each registers its rollback on an ExitStack, so a failure at
any point (or Ctrl-C) unwinds exactly what was created: work files, a qemu process, a libvirt
domain, Glance images.  The error names the stage and the cause.  On success the build
directory holds the triplet (NAME.vmlinuz, NAME.initrd, NAME.img) or the BARE disk, and
manifest.json with versions, packages, sizes, hashes, Glance ids and timings.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import platform
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from image_builder import customize, disk, exception, glance, opts, run, verify
from image_builder.install.chroot import parse_dpkg_status

LOG = logging.getLogger(__name__)

STAGES = ("install", "convert", "kernel", "shrink", "verify", "hash", "upload", "manifest")
BARE_STAGES = ("install", "convert", "verify", "hash", "upload", "manifest")
# Points inside stages where tests inject faults with live resources around them.
INNER_FAULTS = ("qemu", "upload-kernel", "upload-ramdisk", "upload-root", "installer")
ARCH_NAMES = {"amd64": "x86_64"}



class InjectedFault(exception.ImageBuilderError):
    msg_fmt = "injected fault at %(point)s (test)"


def _default(name: str):
    return next(o for o in opts.build_opts if o.dest == name).default


@dataclass
class Settings:
    """Everything a build needs, decoupled from oslo.config so tests can build one directly."""

    release: str = "bookworm"
    arch: str = "amd64"
    mirror: str = "http://deb.debian.org/debian"
    security_mirror: str = "http://deb.debian.org/debian-security"
    updates: bool = True
    disk_size: int = 2048
    kernel_package: str = "linux-image-cloud-amd64"
    packages: list[str] = field(default_factory=lambda: list(_default("packages")))
    locales: list[str] = field(default_factory=lambda: ["en_US.UTF-8"])
    profile: str = "cloud"
    cloud_init: bool = True
    hostname: str = "debian"
    name: str = "debian-{release}-{arch}"
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
    libvirt: dict[str, Any] = field(default_factory=dict)

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
        return sorted(set(self.packages) | {self.kernel_package})

    @classmethod
    def from_conf(cls, conf) -> Settings:
        b, g, lv = conf.build, conf.glance, conf.libvirt
        return cls(
            release=b.release, arch=b.arch, mirror=b.mirror, disk_size=b.disk_size,
            security_mirror=b.security_mirror, updates=b.updates,
            kernel_package=b.kernel_package, packages=list(b.packages) + list(b.extra_packages),
            locales=list(b.locales), profile=b.profile, cloud_init=b.cloud_init,
            hostname=b.hostname, name=b.name, output_dir=b.output_dir, format=b.format,
            install_backend=b.install_backend, fs_slack=b.fs_slack, verify=b.verify,
            verify_disk_size=b.verify_disk_size, verify_timeout=b.verify_timeout,
            verify_marker=b.verify_marker, verify_nic=b.verify_nic,
            verify_network=b.verify_network,
            verify_memory=b.verify_memory, upload=b.upload, keep_work=b.keep_work,
            install_timeout=b.install_timeout, glance_endpoint=g.endpoint,
            glance_token=g.token, glance_cloud=g.cloud, glance_visibility=g.visibility,
            glance_reuse=g.reuse, glance_insecure=g.insecure,
            libvirt={o.dest: getattr(lv, o.dest) for o in opts.libvirt_opts})

    def public(self) -> dict[str, Any]:
        """Settings for the manifest: never the token."""
        d = asdict(self)
        d["glance_token"] = "***" if self.glance_token else None
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
            sess, endpoint = glance.make_session(self.s.glance_endpoint, self.s.glance_token,
                                                 self.s.glance_cloud, self.s.glance_insecure)
            self._glance = glance.make_client(sess, endpoint)
        return self._glance

    def profile(self) -> customize.Profile:
        return customize.Profile(hostname=self.s.hostname, locales=self.s.locales,
                                 cloud_init=self.s.cloud_init, profile=self.s.profile,
                                 marker=self.marker, apt_sources=self.apt_sources())

    def apt_sources(self) -> list[str]:
        return customize.sources(self.s.release, self.s.mirror, self.s.security_mirror,
                                 self.s.updates)

    # ------------------------------------------------------------------ pipeline
    def run(self) -> dict[str, Any]:
        total = time.monotonic()
        bare = self.s.format != "ami"
        if self.out.exists():
            run.remove_tree(self.out)
        self.work.mkdir(parents=True)
        with contextlib.ExitStack() as rollback:
            rollback.callback(self._cleanup_failed)
            with self.stage("install"):
                installed = self.install()
            with self.stage("convert"):
                if bare:
                    files = self.convert_bare()
                else:
                    root = self.convert()
            if not bare:
                with self.stage("kernel"):
                    boot_files = disk.extract_boot_files(root, self.work)
                    kernel = self.out / ("%s.vmlinuz" % self.name)
                    initrd = self.out / ("%s.initrd" % self.name)
                    os.replace(boot_files["kernel"], kernel)
                    os.replace(boot_files["ramdisk"], initrd)
                    self.result["kernel_version"] = boot_files["kernel_version"]
                    installed["packages"] = parse_dpkg_status(
                        disk.read_text(root, "/var/lib/dpkg/status"))
                with self.stage("shrink"):
                    self.result["rootfs"] = disk.shrink(root, self.s.fs_slack)
                    final_root = self.out / ("%s.img" % self.name)
                    os.replace(root, final_root)
                files = {"kernel": kernel, "ramdisk": initrd, "root": final_root}
            if self.s.verify:
                with self.stage("verify"):
                    self.result["verify"] = self.verify(files)
            with self.stage("hash"):
                locals_ = {role: glance.hash_file(path, role) for role, path in files.items()}
            if self.s.upload:
                with self.stage("upload"):
                    self.result["glance"] = self.upload(locals_, rollback)
            with self.stage("manifest"):
                manifest = self.manifest(installed, locals_, time.monotonic() - total)
            rollback.pop_all()
        if not self.s.keep_work:
            run.remove_tree(self.work)
        LOG.info("build %s done in %.1f s: %s", self.name, time.monotonic() - total,
                 self.out / "manifest.json")
        return manifest

    def _cleanup_failed(self) -> None:
        """On failure: keep logs for the admin, delete every image and work file."""
        if self.s.keep_work:
            return
        for path in list(self.out.glob("*")):
            if path.name == "work":
                for item in path.iterdir():
                    if item.suffix in (".log",) or item.name == "console.log":
                        shutil.move(str(item), self.out / item.name)
                run.remove_tree(path)
            elif path.suffix not in (".log",):
                path.unlink() if path.is_file() else run.remove_tree(path)
        if self.out.exists() and not any(self.out.iterdir()):
            self.out.rmdir()

    def install(self) -> dict[str, Any]:
        packages = self.s.all_packages
        if self.s.source_disk:
            # An installed disk from elsewhere (a previous build, a VM): skip the install.
            disk.convert(self.s.source_disk, self.work / "disk.qcow2", "qcow2")
            return {"source_disk": os.path.abspath(self.s.source_disk)}
        if self.s.install_backend == "chroot":
            from image_builder.install import chroot
            return chroot.install(workdir=self.work, release=self.s.release, arch=self.s.arch,
                                  mirror=self.s.mirror, packages=packages,
                                  profile=self.profile(), disk_mb=self.s.disk_size,
                                  slack=self.s.fs_slack, timeout=self.s.install_timeout,
                                  progress=self.progress, bootloader=self.s.format != "ami",
                                  security_mirror=self.s.security_mirror,
                                  updates=self.s.updates)
        from image_builder.install import libvirt as lv
        return lv.install(workdir=self.work, release=self.s.release, mirror=self.s.mirror,
                          packages=packages, profile=self.profile(), disk_mb=self.s.disk_size,
                          timeout=self.s.install_timeout, options=self.s.libvirt,
                          progress=self.progress, on_started=lambda: self.inject("installer"),
                          security_mirror=self.s.security_mirror, updates=self.s.updates)

    def convert(self) -> Path:
        qcow2 = self.work / "disk.qcow2"
        part = disk.pick_root_partition(disk.read_partitions(qcow2))
        self.result["root_partition"] = asdict(part)
        root = self.work / "root.img"
        disk.extract_partition(qcow2, part, root)
        if not self.s.keep_work:
            qcow2.unlink()
        return root

    def convert_bare(self) -> dict[str, Path]:
        qcow2 = self.work / "disk.qcow2"
        out = self.out / ("%s.%s" % (self.name, self.s.format))
        disk.convert(qcow2, out, self.s.format, src_fmt="qcow2")
        return {"disk": out}

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

    def properties(self) -> dict[str, str]:
        props = {"os_distro": "debian", "os_version": self.s.version,
                 "architecture": ARCH_NAMES.get(self.s.arch, self.s.arch)}
        if self.s.cloud_init and self.s.profile == "cloud":
            props["os_admin_user"] = customize.ADMIN_USER
        return props

    def upload(self, files: dict[str, glance.LocalFile],
               rollback: contextlib.ExitStack) -> dict[str, Any]:
        def report(role: str, done: int, total: int, elapsed: float) -> None:
            self.progress("upload %s: %d/%d MiB, %.1f MiB/s" % (
                role, done >> 20, total >> 20, done / 1048576 / max(elapsed, 1e-6)))
            if done >= total:
                self.inject("upload-%s" % role)

        pub = glance.Publisher(self.glance_client(), visibility=self.s.glance_visibility,
                               progress=report)
        start = time.monotonic()
        if "disk" in files:
            ids = pub.publish_bare(self.name, files["disk"], self.s.format, self.properties(),
                                   reuse=self.s.glance_reuse)
        else:
            ids = pub.publish_triplet(self.name, files, self.properties(),
                                      reuse=self.s.glance_reuse)
        elapsed = time.monotonic() - start
        if not ids["reused"]:
            # Later stages (the manifest) may still fail: then these images must go too.
            created = [v for k, v in ids.items() if k != "reused"]
            client = pub.client

            def _delete() -> None:
                for image_id in reversed(created):
                    with contextlib.suppress(Exception):
                        client.images.delete(image_id)
            rollback.callback(_delete)
        size = sum(f.size for f in files.values())
        ids["seconds"] = round(elapsed, 2)
        ids["bytes"] = size
        if not ids["reused"]:
            ids["mib_per_s"] = round(size / 1048576 / max(elapsed, 1e-6), 1)
        return ids

    def manifest(self, installed: dict[str, Any], files: dict[str, glance.LocalFile],
                 total: float) -> dict[str, Any]:
        manifest = {
            "name": self.name,
            "format": self.s.format,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "debian": {"release": self.s.release, "version": self.s.version,
                       "arch": self.s.arch, "mirror": self.s.mirror},
            "versions": tool_versions(),
            "kernel_version": self.result.get("kernel_version"),
            "packages": installed.get("packages", []),
            "files": {role: {"path": os.path.basename(f.path), "size": f.size,
                             "allocated": disk.allocated(f.path), "md5": f.md5,
                             "sha256": f.sha256, "sha512": f.sha512}
                      for role, f in files.items()},
            "rootfs": self.result.get("rootfs"),
            "root_partition": self.result.get("root_partition"),
            "verify": self.result.get("verify"),
            "glance": self.result.get("glance"),
            "settings": self.s.public(),
            "timings": dict(self.timings, total=round(total, 2)),
        }
        if manifest["verify"]:
            manifest["verify"] = {k: v for k, v in manifest["verify"].items()
                                  if k != "console_tail"}
        path = self.out / "manifest.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
        return manifest


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
                      ("e2fsprogs", ["mke2fs", "-V"])):
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


def publish_existing(build_dir: str | os.PathLike, settings: Settings,
                     glance_client: Any = None) -> dict[str, Any]:
    """Upload (or find) a finished build from its manifest; `zol-image upload BUILD_DIR`."""
    build_dir = Path(build_dir)
    manifest = json.loads((build_dir / "manifest.json").read_text())
    files = {}
    for role, meta in manifest["files"].items():
        local = glance.hash_file(build_dir / meta["path"], role)
        if local.sha512 != meta["sha512"]:
            raise exception.GlanceError(reason="%s changed since the build (sha512 differs "
                                        "from manifest.json)" % local.path)
        files[role] = local
    builder = Builder(settings, glance_client=glance_client)
    builder.name = manifest["name"]
    with contextlib.ExitStack() as rollback:
        ids = builder.upload(files, rollback)
        rollback.pop_all()
    # Keep the first upload's record (ids, throughput); log every later publication.
    manifest.setdefault("publications", []).append(ids)
    if not ids["reused"] or not manifest.get("glance"):
        manifest["glance"] = ids
    (build_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True)
                                             + "\n")
    return ids
