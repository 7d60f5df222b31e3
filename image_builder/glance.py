"""Publish the triplet (or a BARE image) to Glance v2 through a keystoneauth session.

Order matters: kernel (aki) and ramdisk (ari) first (hidden: os_hidden=true), then the root fs
(ami) that points at them with kernel_id/ramdisk_id; Glance itself does not check that those ids
exist, so we do.  Glance computes checksum (md5) and os_hash_value (sha512) server side: both
are compared with our local hashes after each upload.  An identical triplet already in Glance is
reused only when its visibility, owner and properties match too.  A failure deletes every image
this run created (a half-uploaded image would sit in 'queued'); a delete that fails is logged
with the image id and the command to run, and remembered so the next publication retries it.
Transient errors (connection refused/reset, HTTP 5xx) are retried with backoff.

Series: every image carries image_series and image_version; ``rotate`` hides the older
publications of a series and deletes those beyond ``keep`` (never a protected image, never a
kernel/ramdisk a remaining AMI references); ``publications`` lists a series for `zol-image list`.
"""
from __future__ import annotations

import concurrent.futures
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


HASHES = ("md5", "sha256", "sha512")


def _digest(path: str | os.PathLike, name: str) -> tuple[int, str]:
    h = hashlib.new(name)
    size = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(CHUNK)
            if not block:
                break
            size += len(block)
            h.update(block)
    return size, h.hexdigest()


def hash_file(path: str | os.PathLike, role: str = "") -> LocalFile:
    """md5 (Glance 'checksum'), sha256 (manifest) and sha512 (Glance os_hash_value), each in
    its own thread (hashlib and read() release the GIL; the file is in the page cache right
    after the build): the time of the slowest (md5) instead of the sum of the three."""
    with concurrent.futures.ThreadPoolExecutor(len(HASHES), thread_name_prefix="hash") as pool:
        futures = [pool.submit(_digest, path, name) for name in HASHES]
        (size, md5), (size2, sha256), (size3, sha512) = [f.result() for f in futures]
    if not size == size2 == size3:
        raise exception.DiskError(reason="%s changed while it was hashed (%d, %d, %d "
                                          "bytes)" % (path, size, size2, size3))
    return LocalFile(role, os.fspath(path), size, md5, sha256, sha512)


class ProgressReader:
    """File wrapper whose read() reports progress (glanceclient has no progress callback)
    and hashes what is sent (md5 and sha512, Glance's two): the upload checks the bytes it
    sent against the build's manifest without reading the file a second time."""

    def __init__(self, f, total: int, report: Callable[[int, int, float], None] | None,
                 every: float = 2.0):
        self._f = f
        self.total = total
        self.done = 0
        self._report = report
        self._every = every
        self._start = time.monotonic()
        self._last = 0.0
        self.md5 = hashlib.md5()
        self.sha512 = hashlib.sha512()

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self.md5.update(data)
        self.sha512.update(data)
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
                 cloud: str | None = None, insecure: bool = False,
                 cacert: str | None = None):
    """A keystoneauth session: endpoint+token (no Keystone) or clouds.yaml / OS_* variables.

    Returns (session, endpoint_override or None, adapter options): clouds.yaml's region_name
    and interface (or OS_REGION_NAME / OS_INTERFACE) choose the catalog entry, its cacert /
    verify the TLS check (``cacert`` and ``insecure`` override them).
    """
    from keystoneauth1 import loading
    from keystoneauth1 import session as ks_session
    if endpoint:
        from keystoneauth1.token_endpoint import Token
        return ks_session.Session(auth=Token(endpoint, token or "zol-image"),
                                  verify=_verify(True, insecure, cacert)), endpoint, {}
    cloud = cloud or os.environ.get("OS_CLOUD")
    if cloud:
        entry = load_cloud(cloud)
        auth_type = entry.get("auth_type", "password")
        loader = loading.get_plugin_loader(auth_type)
        valid = {o.dest for o in loader.get_options()}
        auth_opts = {k: v for k, v in entry.get("auth", {}).items() if k in valid}
        auth = loader.load_from_options(**auth_opts)
        verify = _verify(entry.get("cacert") or entry.get("verify", True), insecure, cacert)
        adapter = {k: entry[k] for k in ("region_name", "interface") if entry.get(k)}
        if entry.get("image_api_version") not in (None, "2", 2):
            raise exception.GlanceError(reason="cloud %r: image_api_version %s; only Glance "
                                        "v2 is supported" % (cloud, entry["image_api_version"]))
        return ks_session.Session(auth=auth, verify=verify), None, adapter
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
        adapter = {k: os.environ["OS_" + k.upper()] for k in ("region_name", "interface")
                   if os.environ.get("OS_" + k.upper())}
        verify = _verify(os.environ.get("OS_CACERT") or True, insecure, cacert)
        return ks_session.Session(auth=auth, verify=verify), None, adapter
    raise exception.GlanceError(
        reason="no Glance credentials: set --glance-endpoint (and token), OS_CLOUD "
               "(clouds.yaml) or OS_AUTH_URL and friends")


def _verify(entry_verify: Any, insecure: bool, cacert: str | None) -> Any:
    if insecure:
        return False
    return cacert or entry_verify


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


def make_client(session, endpoint: str | None = None, adapter: dict | None = None):
    import glanceclient
    kwargs: dict[str, Any] = {"session": session, **(adapter or {})}
    if endpoint:
        kwargs["endpoint_override"] = endpoint
    return glanceclient.Client("2", **kwargs)


TRANSIENT_CODES = {500, 502, 503, 504}
TRANSIENT_NAMES = {"CommunicationError", "ConnectFailure", "ConnectTimeout", "ConnectionError",
                   "ConnectionResetError", "ConnectionRefusedError", "BrokenPipeError",
                   "RemoteDisconnected", "ChunkedEncodingError", "ProtocolError",
                   "RetriableConnectionFailure"}
NOT_ACTIVE = ("queued", "saving", "uploading", "importing", "killed", "pending_delete")


def transient(exc: BaseException) -> bool:
    """Connection refused/reset or an HTTP 5xx: worth another try (anywhere in the chain)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = getattr(exc, "code", None) or getattr(exc, "http_status", None)
        if isinstance(code, int) and code in TRANSIENT_CODES:
            return True
        if type(exc).__name__ in TRANSIENT_NAMES or isinstance(exc, ConnectionError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def not_found(exc: BaseException) -> bool:
    return type(exc).__name__ in ("HTTPNotFound", "NotFound") or getattr(exc, "code", 0) == 404


@dataclass
class PublishOptions:
    """How to publish (from [glance] and the command line; never what the image is)."""

    visibility: str = "private"
    members: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    protected: bool = False
    import_method: str = "upload"
    retries: int = 4
    backoff: float = 1.0
    reuse: bool = True
    keep: int = 0
    import_timeout: float = 600.0


@dataclass
class Publisher:
    """Uploads with cleanup: every image created is tracked until ``commit()``."""

    client: Any
    options: PublishOptions = field(default_factory=PublishOptions)
    progress: Callable[[str, int, int, float], None] | None = None
    created: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)     # ids a rollback could not delete
    timings: dict[str, float] = field(default_factory=dict)
    _owner: str | None = None

    @property
    def visibility(self) -> str:
        return self.options.visibility

    # ------------------------------------------------------------------ calls with retries
    def call(self, what: str, fn: Callable, *args, **kwargs):
        delay = self.options.backoff
        for attempt in range(self.options.retries + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if attempt >= self.options.retries or not transient(exc):
                    raise
                LOG.warning("glance: %s failed (%s: %s); retry %d/%d in %.0f s", what,
                            type(exc).__name__, exc, attempt + 1, self.options.retries, delay)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def get(self, image_id: str) -> dict:
        return dict(self.call("get %s" % image_id, self.client.images.get, image_id))

    def list(self, filters: dict[str, Any], hidden: bool = True) -> list[dict]:
        """Images matching ``filters``; with ``hidden`` also the os_hidden ones."""
        out = {}
        for extra in ({}, {"os_hidden": True}) if hidden else ({},):
            for img in self.call("list images", lambda f: [dict(i) for i in
                                                            self.client.images.list(filters=f)],
                                 dict(filters, **extra)):
                out[img["id"]] = img
        return list(out.values())

    def update(self, image_id: str, **kwargs) -> dict:
        return dict(self.call("update %s" % image_id, self.client.images.update, image_id,
                              **kwargs))

    def owner(self) -> str:
        """Our project id: from Keystone, else read off a probe image (created, deleted)."""
        if self._owner:
            return self._owner
        session = getattr(getattr(self.client, "http_client", None), "session", None)
        try:
            self._owner = session.get_project_id() if session else None
        except Exception:          # token endpoints know no project
            self._owner = None
        if not self._owner:
            probe = self.call("create probe", self.client.images.create,
                              name="zol-image owner probe", disk_format="raw",
                              container_format="bare", visibility="private")
            try:
                self._owner = probe["owner"]
            finally:
                self.delete(probe["id"], reason="owner probe")
        return self._owner

    def delete(self, image_id: str, reason: str = "rollback") -> bool:
        """Delete (unprotecting first); False, with the command to run logged, if it fails."""
        try:
            try:
                img = self.get(image_id)
            except Exception as exc:
                if not_found(exc):
                    return True
                raise
            if img.get("protected"):
                self.update(image_id, protected=False)
            self.call("delete %s" % image_id, self.client.images.delete, image_id)
            LOG.info("glance: deleted %s (%s)", image_id, reason)
            return True
        except Exception as exc:
            if not_found(exc):
                return True
            LOG.error("glance: could not delete image %s (%s): %s: %s; delete it by hand: "
                      "openstack image set --unprotected %s; openstack image delete %s "
                      "(the next `zol-image upload` of this build retries it)", image_id,
                      reason, type(exc).__name__, exc, image_id, image_id)
            return False

    # ------------------------------------------------------------------ single image
    def upload(self, local: LocalFile, name: str, disk_format: str, container_format: str,
               properties: dict[str, str] | None = None, *, hidden: bool = False,
               protected: bool = False, min_disk: int = 0, min_ram: int = 0) -> dict:
        """Create + transfer + verify one image; it is deleted again if anything fails."""
        props = {k: str(v) for k, v in (properties or {}).items() if v is not None}
        fields: dict[str, Any] = {"os_hidden": hidden, "min_disk": min_disk,
                                  "min_ram": min_ram}
        if self.options.tags:
            fields["tags"] = list(self.options.tags)
        image = self.call("create %s" % name, self.client.images.create, name=name,
                          disk_format=disk_format, container_format=container_format,
                          visibility=self.visibility, **fields, **props)
        self.created.append(image["id"])
        LOG.info("glance: created %s %s (%s), %s %d bytes", disk_format, name, image["id"],
                 "importing (glance-direct)" if self.options.import_method == "glance-direct"
                 else "uploading", local.size)
        start = time.monotonic()

        def report(done: int, total: int, elapsed: float) -> None:
            if self.progress:
                self.progress(local.role, done, total, elapsed)
            else:
                LOG.info("glance: %s %d/%d MiB (%.1f MiB/s)", local.role, done >> 20,
                         total >> 20, done / 1048576 / max(elapsed, 1e-6))

        sent = self._transfer(image["id"], local, report)
        elapsed = time.monotonic() - start
        self.timings[local.role] = elapsed
        if (sent.done, sent.md5.hexdigest(), sent.sha512.hexdigest()) != \
                (local.size, local.md5, local.sha512):
            raise exception.GlanceError(reason="%s changed since it was hashed (the build's "
                                        "manifest.json): sent %d bytes with sha512 %s..., "
                                        "expected %d bytes with sha512 %s..." % (
                                            local.path, sent.done, sent.sha512.hexdigest()[:16],
                                            local.size, local.sha512[:16]))
        got = self.get(image["id"])
        check_hashes(local, got)
        if protected:
            got = self.update(image["id"], protected=True)
        for member in self.options.members:
            self.call("share %s" % image["id"], self.client.image_members.create,
                      image["id"], member)
        LOG.info("glance: %s active, %.1f MiB/s, checksums match", image["id"],
                 local.size / 1048576 / max(elapsed, 1e-6))
        return got

    def _transfer(self, image_id: str, local: LocalFile, report) -> ProgressReader:
        """PUT the data (or stage + import), retried while Glance reset the image to queued;
        returns the reader of the transfer that went through (what was sent, hashed)."""
        delay = self.options.backoff
        for attempt in range(self.options.retries + 1):
            try:
                with open(local.path, "rb") as f:
                    reader = ProgressReader(f, local.size, report)
                    if self.options.import_method == "glance-direct":
                        self.client.images.stage(image_id, reader, image_size=local.size)
                        self.call("import %s" % image_id, self.client.images.image_import,
                                  image_id, method="glance-direct")
                        self._wait_active(image_id)
                    else:
                        self.client.images.upload(image_id, reader, image_size=local.size)
                return reader
            except Exception as exc:
                if attempt >= self.options.retries or not transient(exc):
                    raise
                try:
                    status = self.get(image_id).get("status")
                except Exception:
                    status = "unknown"
                if status != "queued":
                    raise exception.GlanceError(
                        reason="transfer of %s to image %s failed (%s: %s) and the image is "
                               "%s, not queued: not retried" % (local.role, image_id,
                                                               type(exc).__name__, exc,
                                                               status)) from exc
                LOG.warning("glance: transfer of %s failed (%s: %s); retry %d/%d in %.0f s",
                            local.role, type(exc).__name__, exc, attempt + 1,
                            self.options.retries, delay)
                time.sleep(delay)
                delay *= 2

    def _wait_active(self, image_id: str) -> None:
        deadline = time.monotonic() + self.options.import_timeout
        while True:
            img = self.get(image_id)
            if img.get("status") == "active":
                return
            failed = img.get("os_glance_failed_import")
            if img.get("status") in ("killed", "deleted") or failed:
                raise exception.GlanceError(reason="import of %s failed: status %s%s"
                                            % (image_id, img.get("status"),
                                               ", failed stores %s" % failed if failed else ""))
            if time.monotonic() > deadline:
                raise exception.GlanceError(reason="import of %s still %s after %.0f s"
                                            % (image_id, img.get("status"),
                                               self.options.import_timeout))
            time.sleep(0.5)

    def rollback(self) -> None:
        """Delete what this run created (newest first: the ami references the others)."""
        for image_id in reversed(self.created):
            if not self.delete(image_id):
                self.leftovers.append(image_id)
        self.created.clear()

    def commit(self) -> None:
        self.created.clear()

    # ------------------------------------------------------------------ reuse
    def matches(self, img: dict, local: LocalFile, properties: dict[str, str],
                protected: bool, hidden: bool) -> bool:
        """Same bytes, owner, visibility, protection and every property we would set."""
        if img.get("os_hash_value") != local.sha512 or img.get("checksum") != local.md5 \
                or img.get("size") != local.size or img.get("status") != "active":
            return False
        if img.get("visibility") != self.visibility or img.get("owner") != self.owner():
            return False
        if bool(img.get("protected")) != protected or bool(img.get("os_hidden")) != hidden:
            return False
        if not set(self.options.tags) <= set(img.get("tags") or []):
            return False
        return all(str(img.get(k)) == str(v) for k, v in properties.items() if v is not None)

    def find_existing(self, names: dict[str, str], files: dict[str, LocalFile],
                      formats: dict[str, str], properties: dict[str, dict[str, str]],
                      protected: bool = False) -> dict[str, dict] | None:
        """An active image set with these names, hashes, visibility, owner and properties,
        wired together correctly (the AMI's kernel_id/ramdisk_id are the found ones)."""
        found: dict[str, list[dict]] = {}
        for role, local in files.items():
            candidates = self.list({"name": names[role], "disk_format": formats[role],
                                    "status": "active"})
            hidden = role in ("kernel", "ramdisk")
            match = [i for i in candidates if self.matches(
                i, local, properties[role], protected and not hidden, hidden)]
            if not match:
                LOG.info("glance: no reusable %s (%d image(s) named %r differ in bytes, owner, "
                         "visibility or properties)", role, len(candidates), names[role])
                return None
            found[role] = match
        if "root" in found:
            kernels = {i["id"]: i for i in found["kernel"]}
            ramdisks = {i["id"]: i for i in found["ramdisk"]}
            roots = [r for r in found["root"] if r.get("kernel_id") in kernels
                     and r.get("ramdisk_id") in ramdisks]
            if not roots:
                return None
            root = roots[0]
            return {"root": root, "kernel": kernels[root["kernel_id"]],
                    "ramdisk": ramdisks[root["ramdisk_id"]]}
        return {role: imgs[0] for role, imgs in found.items()}

    # ------------------------------------------------------------------ publications
    def publish_triplet(self, names: dict[str, str], files: dict[str, LocalFile],
                        properties: dict[str, dict[str, str]], *, min_disk: int = 0,
                        min_ram: int = 0) -> dict[str, Any]:
        formats = {"kernel": "aki", "ramdisk": "ari", "root": "ami"}
        protected = self.options.protected
        if self.options.reuse:
            existing = self.find_existing(names, files, formats, properties, protected)
            if existing:
                LOG.info("glance: identical triplet already there (ami %s); reusing it",
                         existing["root"]["id"])
                return {"reused": True, **{r: i["id"] for r, i in existing.items()}}
        with self.guard():
            # Kernel and ramdisk at once (two connections); the AMI references both, so it
            # follows.  Both finish (or fail) before the guard rolls back whatever exists.
            with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="upload") as pool:
                futures = {role: pool.submit(self.upload, files[role], names[role], fmt, fmt,
                                             properties[role], hidden=True)
                           for role, fmt in (("kernel", "aki"), ("ramdisk", "ari"))}
                concurrent.futures.wait(futures.values())
            kernel, ramdisk = futures["kernel"].result(), futures["ramdisk"].result()
            for ref in (kernel, ramdisk):
                if self.get(ref["id"])["status"] != "active":
                    raise exception.GlanceError(reason="image %s is not active" % ref["id"])
            root = self.upload(files["root"], names["root"], "ami", "ami",
                               dict(properties["root"], kernel_id=kernel["id"],
                                    ramdisk_id=ramdisk["id"]),
                               protected=protected, min_disk=min_disk, min_ram=min_ram)
            if root.get("kernel_id") != kernel["id"] or root.get("ramdisk_id") != ramdisk["id"]:
                raise exception.GlanceError(reason="ami %s lost its kernel_id/ramdisk_id"
                                            % root["id"])
        return {"reused": False, "kernel": kernel["id"], "ramdisk": ramdisk["id"],
                "root": root["id"]}

    def publish_bare(self, name: str, local: LocalFile, disk_format: str,
                     properties: dict[str, str], *, min_disk: int = 0,
                     min_ram: int = 0) -> dict[str, Any]:
        protected = self.options.protected
        if self.options.reuse:
            existing = self.find_existing({"disk": name}, {"disk": local},
                                          {"disk": disk_format}, {"disk": properties},
                                          protected)
            if existing:
                return {"reused": True, "disk": existing["disk"]["id"]}
        with self.guard():
            img = self.upload(local, name, disk_format, "bare", properties,
                              protected=protected, min_disk=min_disk, min_ram=min_ram)
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

    # ------------------------------------------------------------------ series
    def sweep(self, build_id: str, keep: tuple[str, ...] = ()) -> list[str]:
        """Delete what an interrupted publication of this build left: images that never
        became active, and active kernels/ramdisks no AMI references."""
        gone = []
        mine = [i for i in self.list({"zol_build_id": build_id}) if i["id"] not in keep
                and i.get("owner") == self.owner()]
        for img in mine:
            stale = img.get("status") in NOT_ACTIVE
            if not stale and img.get("disk_format") in ("aki", "ari"):
                key = "kernel_id" if img["disk_format"] == "aki" else "ramdisk_id"
                stale = not self.list({key: img["id"]})
            if stale and self.delete(img["id"], reason="left by an interrupted publication"):
                gone.append(img["id"])
        return gone

    def publications(self, series: str | None = None) -> list[dict[str, Any]]:
        """The publications (AMI or BARE image + its kernel/ramdisk) of one or all series,
        newest first within each series."""
        filters: dict[str, Any] = {"owner": self.owner()}
        if series:
            filters["image_series"] = series
        imgs = {i["id"]: i for i in self.list(filters) if i.get("image_series")}
        pubs = []
        for img in imgs.values():
            if img.get("disk_format") in ("aki", "ari"):
                continue
            pubs.append({"series": img["image_series"], "version": img.get("image_version", ""),
                         "name": img.get("name"), "root": img,
                         "kernel": imgs.get(img.get("kernel_id")) if img.get("kernel_id")
                         else None,
                         "ramdisk": imgs.get(img.get("ramdisk_id")) if img.get("ramdisk_id")
                         else None})
        pubs.sort(key=lambda p: (p["series"], p["version"], p["root"].get("created_at", "")),
                  reverse=True)
        return pubs

    def remove_publication(self, pub: dict[str, Any], survivors: set[str]) -> list[str]:
        """Delete a publication's AMI, then its kernel/ramdisk unless an AMI that stays
        (``survivors`` or any other image in Glance) still references them."""
        deleted = []
        root = pub["root"]
        if not self.delete(root["id"], reason="rotation/retire"):
            return deleted
        deleted.append(root["id"])
        for role, key in (("kernel", "kernel_id"), ("ramdisk", "ramdisk_id")):
            ref = root.get(key)
            if not ref:
                continue
            users = {i["id"] for i in self.list({key: ref})} - {root["id"]}
            if users or ref in survivors:
                LOG.info("glance: keeping %s %s: still referenced by %s", role, ref,
                         ", ".join(sorted(users)) or "a kept image")
                continue
            img = pub.get(role) or {}
            if img.get("protected"):
                LOG.info("glance: keeping protected %s %s", role, ref)
                continue
            if self.delete(ref, reason="rotation/retire"):
                deleted.append(ref)
        return deleted

    def rotate(self, series: str, current: str, keep: int) -> dict[str, list[str]]:
        """After a successful publication: ``current`` (its root id) stays visible, older
        ones are hidden, and with keep > 0 those beyond the newest ``keep`` are deleted
        (a protected one is hidden instead)."""
        pubs = self.publications(series)
        pubs.sort(key=lambda p: p["root"]["id"] != current)      # stable: current first
        result: dict[str, list[str]] = {"hidden": [], "deleted": [], "kept_protected": []}
        kept_ids = {current}
        for i, pub in enumerate(pubs):
            root = pub["root"]
            if i == 0:
                if root.get("os_hidden"):
                    self.update(root["id"], os_hidden=False)
                continue
            if keep and i >= keep and not root.get("protected"):
                continue
            kept_ids.add(root["id"])
        survivors = set()
        for pub in pubs:
            if pub["root"]["id"] in kept_ids:
                survivors |= {pub["root"].get("kernel_id"), pub["root"].get("ramdisk_id")}
        for i, pub in enumerate(pubs[1:], start=1):
            root = pub["root"]
            if root["id"] in kept_ids:
                if not root.get("os_hidden"):
                    self.update(root["id"], os_hidden=True)
                    LOG.info("glance: hid %s (%s): older publication of %r", root["id"],
                             root.get("name"), series)
                result["hidden"].append(root["id"])
                if keep and i >= keep:
                    result["kept_protected"].append(root["id"])
            else:
                LOG.info("glance: deleting %s (%s): beyond keep=%d of %r", root["id"],
                         root.get("name"), keep, series)
                result["deleted"] += self.remove_publication(pub, survivors)
        return result


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
