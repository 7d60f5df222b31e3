"""Image <-> volume copies through a userspace iSCSI initiator (libiscsi in qemu-img).

Why: Cinder's default copy_image_to_volume / copy_volume_to_image attach the volume to the
cinder-volume host with os-brick, which needs the kernel iSCSI initiator (iscsiadm, root,
the iscsi_tcp module).  Hosts without it (containers, this project's CI) cannot create a volume
from a Glance image or upload one.  qemu-img's iscsi driver logs in to the target from user
space, so the data moves host <-> SAN over the same portal and CHAP credentials that Nova gets,
and nothing runs as root.

How: export the volume (the driver's own create_export, idempotent), point
qemu-img at the LUN with `--image-opts` / `--target-image-opts`, and remove the export again.
The CHAP secret reaches qemu-img through a `--object secret,file=` in a 0600 temp file, never
on a command line (Cinder logs command lines) or in a log.

Usage: mix into the driver class before Cinder's base class, e.g.
``class ZFSonLinuxISCSIDriver(LibiscsiImageTransferMixin, driver.ISCSIDriver)``.  The driver
must provide create_export/remove_export returning Cinder's usual
``provider_location = "ip:port[;ip2:port],tid iqn lun"`` and ``provider_auth = "CHAP user secret"``.
Needs qemu-img with the iscsi block driver (Debian: qemu-utils + qemu-block-extra).
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cinder import exception as cinder_exception
from cinder.image import image_utils
from cinder.volume import volume_utils
from oslo_concurrency import processutils
from oslo_config import cfg

LOG = logging.getLogger(__name__)
CONF = cfg.CONF
GIB = 1024 ** 3
# Glance formats whose bytes are the disk itself: never probed (a raw image may hold a
# qcow2 header written by its user)
RAW_FORMATS = ("raw", "ami", "aki", "ari", "iso")


@dataclass(frozen=True)
class IscsiLun:
    """Where a volume's LUN is reachable and how to log in (secret kept out of repr)."""

    portal: str
    iqn: str
    lun: int
    chap_user: str | None = None
    chap_secret: str | None = None

    def __repr__(self) -> str:
        return f"IscsiLun({self.portal} {self.iqn} lun {self.lun} chap={bool(self.chap_user)})"

    def opts(self, prefix: str = "", secret_id: str | None = None) -> str:
        """qemu block options for the iscsi driver (values contain no commas by the protocol
        grammar, so no escaping is needed; checked anyway)."""
        kv = {"driver": "iscsi", "transport": "tcp", "portal": self.portal,
              "target": self.iqn, "lun": str(self.lun)}
        if self.chap_user:
            kv["user"] = self.chap_user
            kv["password-secret"] = secret_id or ""
        for k, v in kv.items():
            if "," in v:
                raise cinder_exception.VolumeBackendAPIException(
                    data=f"iSCSI {k} {v!r} contains a comma; cannot pass it to qemu-img")
        return ",".join(f"{prefix}{k}={v}" for k, v in kv.items())


def parse_export(provider_location: str | None, provider_auth: str | None) -> IscsiLun:
    """'ip:port,tid iqn lun' + 'CHAP user secret' -> IscsiLun (clear error when malformed)."""
    parts = (provider_location or "").split()
    if len(parts) < 3 or "," not in parts[0]:
        raise cinder_exception.VolumeBackendAPIException(
            data=f"unexpected provider_location {provider_location!r}: want "
                 "'ip:port,tid iqn lun'")
    # "ip:port[;ip2:port...],tid": the first portal (the others are multipath siblings)
    portal = parts[0].split(",")[0].split(";")[0]
    user = secret = None
    if provider_auth:
        auth = provider_auth.split()
        if len(auth) != 3 or auth[0] != "CHAP":
            raise cinder_exception.VolumeBackendAPIException(
                data="unexpected provider_auth format: want 'CHAP user secret'")
        user, secret = auth[1], auth[2]
    return IscsiLun(portal, parts[1], int(parts[2]), user, secret)


class LibiscsiImageTransferMixin:
    """copy_image_to_volume / copy_volume_to_image without a kernel iSCSI initiator."""

    configuration: Any

    # -- plumbing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _libiscsi_export(self, context: Any, volume: Any) -> Iterator[IscsiLun]:
        """The volume's LUN, exported for the copy.

        create_export is idempotent (an existing target is reused with its CHAP secret), so it
        is always called: provider_location alone does not prove the target exists (Cinder
        keeps it after a detach).  The export is removed afterwards unless the volume is
        attached (upload of an in-use volume with force must not cut off its instance).
        """
        attached = volume.get("attach_status") == "attached"
        update = self.create_export(context, volume, None) or {}  # type: ignore[attr-defined]
        try:
            location = update.get("provider_location") or volume.get("provider_location")
            auth = (update["provider_auth"] if "provider_auth" in update
                    else volume.get("provider_auth"))
            yield parse_export(location, auth)
        finally:
            if not attached:
                self.remove_export(context, volume)  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def _workdir(self) -> Iterator[str]:
        base = CONF.image_conversion_dir
        os.makedirs(base, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="zol-image-", dir=base) as d:
            os.chmod(d, 0o700)
            yield d

    @staticmethod
    def _secret_args(lun: IscsiLun, workdir: str) -> tuple[list[str], str | None]:
        if not lun.chap_user:
            return [], None
        path = os.path.join(workdir, "chap.secret")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(lun.chap_secret or "")
        return ["--object", f"secret,id=zolchap,file={path}"], "zolchap"

    @staticmethod
    def _qemu_img(argv: list[str], what: str) -> None:
        try:
            processutils.execute("qemu-img", *argv)
        except processutils.ProcessExecutionError as exc:
            LOG.error("%s failed: %s", what, (exc.stderr or "").strip())
            raise cinder_exception.VolumeBackendAPIException(
                data=f"{what} failed (qemu-img exit {exc.exit_code}): "
                     f"{(exc.stderr or '').strip()[-500:]}") from exc

    # -- image -> volume --------------------------------------------------------------------

    def _checked_image(self, context: Any, image_service: Any, image_id: str, path: str,
                       volume: Any) -> str:
        """Download the image and return the format to read it as; refuse unsafe images.

        The checks mirror Cinder's fetch_verify_image (which needs root): a raw image is never
        probed (a raw image holding a qcow2 header must stay raw), backing/data files are
        refused, and the virtual size must fit the volume.
        """
        image_utils.fetch(context, image_service, image_id, path, None, None)
        meta = image_service.show(context, image_id) or {}
        disk_format = meta.get("disk_format")
        raw_like = disk_format in RAW_FORMATS
        info = image_utils.qemu_img_info(path, run_as_root=False,
                                         img_format="raw" if raw_like else None)
        fmt = "raw" if raw_like else info.file_format
        if fmt is None:
            raise cinder_exception.ImageUnacceptable(image_id=image_id,
                                                     reason="'qemu-img info' parsing failed.")
        if info.backing_file is not None:
            raise cinder_exception.ImageUnacceptable(
                image_id=image_id, reason=f"fmt={fmt} has a backing file")
        if fmt == "qcow2":
            image_utils.check_qcow2_image(image_id, info)
        if fmt == "vmdk":
            image_utils.check_vmdk_image(image_id, info)
        if disk_format and not raw_like and disk_format != fmt:
            raise cinder_exception.ImageUnacceptable(
                image_id=image_id,
                reason=f"Glance says disk_format {disk_format}, the data is {fmt}")
        if int(info.virtual_size or 0) > int(volume["size"]) * GIB:
            raise cinder_exception.ImageUnacceptable(
                image_id=image_id,
                reason=f"virtual size {info.virtual_size} B does not fit the "
                       f"{volume['size']} GiB volume")
        return fmt

    def copy_image_to_volume(self, context: Any, volume: Any, image_service: Any,
                             image_id: str, disable_sparse: bool = False) -> None:
        LOG.debug("copy_image_to_volume %s <- image %s (libiscsi)", volume["name"], image_id)
        with self._workdir() as d:
            src = os.path.join(d, "image")
            fmt = self._checked_image(context, image_service, image_id, src, volume)
            with self._libiscsi_export(context, volume) as lun:
                secret, sid = self._secret_args(lun, d)
                # -t writeback: qemu-img's default destination cache mode is "unsafe", which
                # drops the final flush; without SYNCHRONIZE CACHE the data may still sit in the
                # SAN's page cache (tgtd writes buffered) and a snapshot taken right after the
                # volume became available would miss it.
                argv = ["convert", "-n", "-t", "writeback", "-f", fmt, *secret]
                if disable_sparse:
                    argv += ["-S", "0"]
                argv += ["--target-image-opts", src, lun.opts(secret_id=sid)]
                self._qemu_img(argv, f"writing image {image_id} to {lun.iqn}")
        LOG.info("copied image %s to volume %s over iSCSI (libiscsi)", image_id, volume["id"])

    def copy_image_to_encrypted_volume(self, context: Any, volume: Any, image_service: Any,
                                       image_id: str, disable_sparse: bool = False) -> None:
        raise cinder_exception.VolumeDriverException(
            message="encrypted volumes from images need a host-side dm-crypt attach, which "
                    "this driver's userspace image transfer cannot provide")

    # -- volume -> image --------------------------------------------------------------------

    def copy_volume_to_image(self, context: Any, volume: Any, image_service: Any,
                             image_meta: dict) -> None:
        LOG.debug("copy_volume_to_image %s -> image %s (libiscsi)", volume["name"],
                  image_meta.get("id"))
        with self._workdir() as d:
            raw = os.path.join(d, "volume.raw")
            with self._libiscsi_export(context, volume) as lun:
                secret, sid = self._secret_args(lun, d)
                self._qemu_img(["convert", "-O", "raw", *secret, "--image-opts",
                                "driver=raw," + lun.opts("file.", sid), raw],
                               f"reading {lun.iqn}")
            volume_utils.upload_volume(context, image_service, image_meta, raw, volume,
                                       run_as_root=False)
        LOG.info("uploaded volume %s to image %s over iSCSI (libiscsi)", volume["id"],
                 image_meta.get("id"))
