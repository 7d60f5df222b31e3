"""Publish the triplet (or a BARE image) to Glance v2 through a keystoneauth session.

Order matters: kernel (aki) and ramdisk (ari) first, then the root fs (ami) that points at them
with kernel_id/ramdisk_id; Glance itself does not check that those ids exist, so we do.
Glance computes checksum (md5) and os_hash_value (sha512) server side: both are compared with
our local hashes after each upload.  An identical triplet already in Glance is reused, and a
failure deletes every image this run created (a half-uploaded image would sit in 'queued').
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from image_builder import exception

LOG = logging.getLogger(__name__)

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class LocalFile:
    """A file to upload with the hashes Glance must end up reporting."""

    role: str            # kernel | ramdisk | root | disk
    path: str
    size: int
    md5: str
    sha256: str
    sha512: str


def hash_file(path: str | os.PathLike, role: str = "") -> LocalFile:
    """md5 (Glance 'checksum'), sha256 (manifest) and sha512 (Glance os_hash_value) in one read."""
    md5, sha256, sha512 = hashlib.md5(), hashlib.sha256(), hashlib.sha512()
    size = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(CHUNK)
            if not block:
                break
            size += len(block)
            md5.update(block)
            sha256.update(block)
            sha512.update(block)
    return LocalFile(role, os.fspath(path), size, md5.hexdigest(), sha256.hexdigest(),
                     sha512.hexdigest())


class ProgressReader:
    """File wrapper whose read() reports progress: glanceclient has no progress callback."""

    def __init__(self, f, total: int, report: Callable[[int, int, float], None] | None,
                 every: float = 2.0):
        self._f = f
        self.total = total
        self.done = 0
        self._report = report
        self._every = every
        self._start = time.monotonic()
        self._last = 0.0

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self.done += len(data)
        now = time.monotonic()
        if self._report and (now - self._last >= self._every or not data
                             or self.done == self.total):
            self._last = now
            self._report(self.done, self.total, now - self._start)
        return data

    def __len__(self) -> int:
        return self.total


def make_session(endpoint: str | None = None, token: str | None = None,
                 cloud: str | None = None, insecure: bool = False):
    """A keystoneauth session: endpoint+token (no Keystone) or clouds.yaml / OS_* variables.

    Returns (session, endpoint_override or None).
    """
    from keystoneauth1 import loading
    from keystoneauth1 import session as ks_session
    if endpoint:
        from keystoneauth1.token_endpoint import Token
        return ks_session.Session(auth=Token(endpoint, token or "zol-image"),
                                  verify=not insecure), endpoint
    cloud = cloud or os.environ.get("OS_CLOUD")
    if cloud:
        entry = load_cloud(cloud)
        auth_type = entry.get("auth_type", "password")
        loader = loading.get_plugin_loader(auth_type)
        valid = {o.dest for o in loader.get_options()}
        auth_opts = {k: v for k, v in entry.get("auth", {}).items() if k in valid}
        auth = loader.load_from_options(**auth_opts)
        verify = entry.get("cacert") or entry.get("verify", True)
        return ks_session.Session(auth=auth, verify=False if insecure else verify), None
    if os.environ.get("OS_AUTH_URL"):
        kwargs = {k[3:].lower(): v for k, v in os.environ.items()
                  if k.startswith("OS_") and v and k[3:].lower() in {
                      "auth_url", "username", "password", "project_name", "project_id",
                      "user_domain_name", "project_domain_name", "user_domain_id",
                      "project_domain_id", "token", "application_credential_id",
                      "application_credential_secret"}}
        auth_type = os.environ.get("OS_AUTH_TYPE") or (
            "v3applicationcredential" if "application_credential_id" in kwargs
            else "v3token" if "token" in kwargs else "password")
        loader = loading.get_plugin_loader(auth_type)
        valid = {o.dest for o in loader.get_options()}
        auth = loader.load_from_options(**{k: v for k, v in kwargs.items() if k in valid})
        return ks_session.Session(auth=auth, verify=not insecure), None
    raise exception.GlanceError(
        reason="no Glance credentials: set --glance-endpoint (and token), OS_CLOUD "
               "(clouds.yaml) or OS_AUTH_URL and friends")


CLOUDS_YAML = ("clouds.yaml", "~/.config/openstack/clouds.yaml", "/etc/openstack/clouds.yaml")


def load_cloud(name: str, paths: tuple[str, ...] = CLOUDS_YAML) -> dict:
    """One cloud's entry from the first clouds.yaml found (same search order as the
    openstack CLI), without depending on openstacksdk."""
    import yaml
    env = os.environ.get("OS_CLIENT_CONFIG_FILE")
    for path in ((env,) if env else ()) + paths:
        path = os.path.expanduser(path)
        if os.path.exists(path):
            with open(path) as f:
                clouds = (yaml.safe_load(f) or {}).get("clouds", {})
            if name in clouds:
                return clouds[name]
            raise exception.GlanceError(reason="cloud %r is not in %s (has: %s)"
                                        % (name, path, ", ".join(sorted(clouds)) or "none"))
    raise exception.GlanceError(reason="no clouds.yaml found (looked in %s)"
                                % ", ".join(((env,) if env else ()) + paths))


def make_client(session, endpoint: str | None = None):
    import glanceclient
    kwargs: dict[str, Any] = {"session": session}
    if endpoint:
        kwargs["endpoint_override"] = endpoint
    return glanceclient.Client("2", **kwargs)


@dataclass
class Publisher:
    """Uploads with cleanup: every image created is tracked until ``commit()``."""

    client: Any
    visibility: str = "private"
    progress: Callable[[str, int, int, float], None] | None = None
    created: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    # ------------------------------------------------------------------ single image
    def upload(self, local: LocalFile, name: str, disk_format: str, container_format: str,
               properties: dict[str, str] | None = None) -> dict:
        """Create + upload + verify one image; it is deleted again if anything fails."""
        props = {k: v for k, v in (properties or {}).items() if v is not None}
        image = self.client.images.create(name=name, disk_format=disk_format,
                                          container_format=container_format,
                                          visibility=self.visibility, **props)
        self.created.append(image["id"])
        LOG.info("glance: created %s %s (%s), uploading %d bytes", disk_format, name,
                 image["id"], local.size)
        start = time.monotonic()

        def report(done: int, total: int, elapsed: float) -> None:
            if self.progress:
                self.progress(local.role, done, total, elapsed)
            else:
                LOG.info("glance: %s %d/%d MiB (%.1f MiB/s)", local.role, done >> 20,
                         total >> 20, done / 1048576 / max(elapsed, 1e-6))

        with open(local.path, "rb") as f:
            self.client.images.upload(image["id"], ProgressReader(f, local.size, report),
                                      image_size=local.size)
        elapsed = time.monotonic() - start
        self.timings[local.role] = elapsed
        got = self.client.images.get(image["id"])
        check_hashes(local, got)
        LOG.info("glance: %s active, %.1f MiB/s, checksums match", image["id"],
                 local.size / 1048576 / max(elapsed, 1e-6))
        return dict(got)

    def rollback(self) -> None:
        """Delete what this run created (newest first: the ami references the others)."""
        for image_id in reversed(self.created):
            try:
                self.client.images.delete(image_id)
                LOG.info("glance: deleted %s (rollback)", image_id)
            except Exception as exc:
                if type(exc).__name__ != "HTTPNotFound":
                    LOG.error("glance: could not delete %s during rollback: %s", image_id, exc)
        self.created.clear()

    def commit(self) -> None:
        self.created.clear()

    # ------------------------------------------------------------------ triplet
    def find_existing(self, name: str, files: dict[str, LocalFile],
                      formats: dict[str, str]) -> dict[str, dict] | None:
        """An active image set with these names and sha512 hashes, wired together correctly."""
        found: dict[str, dict] = {}
        for role, local in files.items():
            fmt = formats[role]
            candidates = [dict(i) for i in self.client.images.list(
                filters={"name": image_name(name, role), "disk_format": fmt, "status": "active"})]
            match = [i for i in candidates if i.get("os_hash_value") == local.sha512
                     and i.get("checksum") == local.md5 and i.get("size") == local.size]
            if not match:
                return None
            found[role] = match
        if "root" in found and "kernel" in found:
            kernels = {i["id"] for i in found["kernel"]}
            ramdisks = {i["id"] for i in found.get("ramdisk", [])}
            roots = [r for r in found["root"] if r.get("kernel_id") in kernels
                     and (not ramdisks or r.get("ramdisk_id") in ramdisks)]
            if not roots:
                return None
            root = roots[0]
            return {"root": root,
                    "kernel": next(i for i in found["kernel"] if i["id"] == root["kernel_id"]),
                    **({"ramdisk": next(i for i in found["ramdisk"]
                                        if i["id"] == root["ramdisk_id"])}
                       if ramdisks else {})}
        return {role: imgs[0] for role, imgs in found.items()}

    def publish_triplet(self, name: str, files: dict[str, LocalFile],
                        properties: dict[str, str], reuse: bool = True) -> dict[str, Any]:
        formats = {"kernel": "aki", "ramdisk": "ari", "root": "ami"}
        if reuse:
            existing = self.find_existing(name, files, formats)
            if existing:
                LOG.info("glance: identical triplet already there (ami %s); reusing it",
                         existing["root"]["id"])
                return {"reused": True, **{r: i["id"] for r, i in existing.items()}}
        with self.guard():
            kernel = self.upload(files["kernel"], image_name(name, "kernel"), "aki", "aki",
                                 properties)
            ramdisk = self.upload(files["ramdisk"], image_name(name, "ramdisk"), "ari", "ari",
                                  properties)
            for ref in (kernel, ramdisk):
                if self.client.images.get(ref["id"])["status"] != "active":
                    raise exception.GlanceError(reason="image %s is not active" % ref["id"])
            root = self.upload(files["root"], image_name(name, "root"), "ami", "ami",
                               dict(properties, kernel_id=kernel["id"],
                                    ramdisk_id=ramdisk["id"]))
            if root.get("kernel_id") != kernel["id"] or root.get("ramdisk_id") != ramdisk["id"]:
                raise exception.GlanceError(reason="ami %s lost its kernel_id/ramdisk_id"
                                            % root["id"])
        return {"reused": False, "kernel": kernel["id"], "ramdisk": ramdisk["id"],
                "root": root["id"]}

    def publish_bare(self, name: str, local: LocalFile, disk_format: str,
                     properties: dict[str, str], reuse: bool = True) -> dict[str, Any]:
        if reuse:
            existing = self.find_existing(name, {"disk": local}, {"disk": disk_format})
            if existing:
                return {"reused": True, "disk": existing["disk"]["id"]}
        with self.guard():
            img = self.upload(local, image_name(name, "disk"), disk_format, "bare", properties)
        return {"reused": False, "disk": img["id"]}

    @contextlib.contextmanager
    def guard(self):
        """Roll back on any exception (including KeyboardInterrupt), else commit."""
        try:
            yield
        except BaseException:
            self.rollback()
            raise
        self.commit()


def image_name(name: str, role: str) -> str:
    """Glance names of the set: NAME (ami or bare disk), NAME-kernel, NAME-ramdisk."""
    return name if role in ("root", "disk") else "%s-%s" % (name, role)


def check_hashes(local: LocalFile, image: Any) -> None:
    """Glance's server-side checksums must equal ours, else the upload was corrupted."""
    problems = []
    if image.get("status") != "active":
        problems.append("status %s" % image.get("status"))
    if image.get("size") != local.size:
        problems.append("size %s != %d" % (image.get("size"), local.size))
    if image.get("checksum") != local.md5:
        problems.append("checksum %s != %s" % (image.get("checksum"), local.md5))
    algo = image.get("os_hash_algo")
    if algo == "sha512" and image.get("os_hash_value") != local.sha512:
        problems.append("os_hash_value differs from the local sha512")
    elif algo and algo != "sha512":
        LOG.warning("glance uses os_hash_algo %s; only checksum compared", algo)
    if problems:
        raise exception.GlanceError(reason="uploaded %s (%s) does not match the local file: %s"
                                    % (local.role, image.get("id"), "; ".join(problems)))
