"""A publication: what a finished build becomes in Glance, computed from its manifest alone.

``zol-image build`` and ``zol-image upload BUILD_DIR`` both go through ``publish()``, so a build
published later is described exactly like one published at once: release, arch, packages,
hashes and the build date come from manifest.json, never from the command line's defaults.
The command line and [glance] only choose where and how (cloud, visibility, members, tags,
protected, keep, extra properties, version).

Properties of the AMI (and of a BARE image): nova/Horizon's (architecture, hypervisor_type,
os_distro, os_version, os_admin_user, hw_disk_bus, hw_vif_model, hw_rng_model,
hw_qemu_guest_agent; min_disk, min_ram), SCS scs-0102's (image_build_date,
image_original_user, image_source, image_description, replace_frequency, provided_until,
uuid_validity) plus image_package_manifest (the SBOM), image_series, image_version and
zol_build_id (finds what an interrupted publication left).  The kernel and ramdisk carry the
series/version/build keys and are hidden (os_hidden).
"""
from __future__ import annotations

import datetime
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from image_builder import customize, exception, glance, opts

LOG = logging.getLogger(__name__)

ARCH_NAMES = {"amd64": "x86_64", "arm64": "aarch64"}
GIB = 1 << 30
# Computed per build; [glance] properties / --property may still override them.


@dataclass
class Publication:
    """How to publish: from Settings (config file + command line)."""

    series: str | None = None       # None: the series recorded in the manifest
    version: str = ""
    name_format: str = "{series} {image_version}"
    properties: dict[str, str] = field(default_factory=dict)
    min_ram: int = 512
    manifest_url: str = ""
    options: glance.PublishOptions = field(default_factory=glance.PublishOptions)


def image_version(manifest: dict[str, Any], pub: Publication) -> str:
    """--version, else the build's date and time (sorts like the builds)."""
    if pub.version:
        return pub.version
    created = datetime.datetime.fromisoformat(manifest["created"])
    return created.strftime("%Y%m%d.%H%M")


def describe(manifest: dict[str, Any], build_dir: Path,
             pub: Publication) -> tuple[dict[str, str], dict[str, dict[str, str]], int]:
    """(names, properties per role, min_disk) of this build's publication."""
    deb = manifest["debian"]
    settings = manifest.get("settings", {})
    subst = {"release": deb["release"], "version": deb["version"], "arch": deb["arch"],
             "name": manifest["name"]}
    version = image_version(manifest, pub)
    try:
        series = (pub.series or manifest.get("series")
                  or opts.DEFAULT_RECIPE["image"]["series"]).format(**subst)
        subst.update(series=series, image_version=version)
        name = pub.name_format.format(**subst)
        extra = {k: str(v).format(**subst) for k, v in pub.properties.items()}
        url = pub.manifest_url.format(**subst)
    except (KeyError, IndexError, ValueError) as exc:
        raise exception.ConfigError(reason="[glance] series/name_format/properties/"
                                           "manifest_url: unknown placeholder %s (known: %s)"
                                    % (exc, ", ".join(sorted(subst)))) from None
    packages = {p.split("=", 1)[0] for p in manifest.get("packages", [])}
    cloud_init = settings.get("cloud_init", True) and settings.get("profile") == "cloud"
    sbom = build_dir / "sbom.spdx.json"
    if url:
        link = url.rstrip("/") + "/sbom.spdx.json"
    else:
        link = "file://%s" % sbom.resolve()
    keep = pub.options.keep
    common = {"image_series": series, "image_version": version,
              "zol_build_id": manifest.get("build_id") or manifest["files"][
                  "root" if "root" in manifest["files"] else "disk"]["sha256"][:32],
              "architecture": ARCH_NAMES.get(deb["arch"], deb["arch"]),
              "os_distro": "debian", "os_version": deb["version"]}
    root = dict(common)
    # The recipe's [glance.properties] as recorded at build time (the default recipe's for
    # builds without one): hypervisor_type, hw_disk_bus, hw_vif_model, replace_frequency ...
    recorded = (manifest.get("recipe") or {}).get("properties")
    if recorded is None:
        recorded = opts.DEFAULT_RECIPE["glance"]["properties"]
    try:
        root.update({k: str(v).format(**subst) for k, v in recorded.items()})
    except (KeyError, IndexError, ValueError) as exc:
        raise exception.ConfigError(reason="recipe properties: unknown placeholder %s" % exc) \
            from None
    root.update({
        "hw_qemu_guest_agent": "yes" if "qemu-guest-agent" in packages else "no",
        "image_build_date": manifest["created"][:10],
        "image_source": deb.get("mirror", ""),
        "uuid_validity": "last-%d" % keep if keep else "none",
        "image_package_manifest": link,
    })
    if cloud_init:
        root["os_admin_user"] = customize.ADMIN_USER
    root.update(extra)
    if not cloud_init and "os_admin_user" in root and "os_admin_user" not in extra:
        del root["os_admin_user"]
    files = manifest["files"]
    if "root" in files:
        names = {"root": name, "kernel": glance.image_name(name, "kernel"),
                 "ramdisk": glance.image_name(name, "ramdisk")}
        props = {"root": root, "kernel": dict(common), "ramdisk": dict(common)}
        # nova's flavor disk must hold the root filesystem (it grows it, never shrinks it)
        min_disk = math.ceil(files["root"]["size"] / GIB)
    else:
        names = {"disk": name}
        props = {"disk": root}
        min_disk = math.ceil(max(files["disk"].get("virtual_size") or 0,
                                 settings.get("disk_size", 0) * (1 << 20)) / GIB)
    for role_props in props.values():
        for k, v in role_props.items():
            if len(str(v)) > 255:
                raise exception.ConfigError(reason="Glance property %s is longer than 255 "
                                                   "characters" % k)
    return names, props, max(min_disk, 1)


def publish(build_dir: str | os.PathLike, client: Any, pub: Publication, *,
            progress: Callable[[str, int, int, float], None] | None = None) -> dict[str, Any]:
    """Publish the build in ``build_dir`` (its manifest.json), rotate the series, and record
    the publication in the manifest.  Nothing half-published survives a failure."""
    build_dir = Path(build_dir)
    manifest = read_manifest(build_dir)
    files = {}
    for role, meta in manifest["files"].items():
        # The build's hashes, not a second pass over the files: the upload hashes what it
        # sends and fails (rolling back) when that differs from them, Glance's own hashes
        # are compared too.
        path = build_dir / meta["path"]
        size = path.stat().st_size if path.exists() else None
        if size != meta["size"]:
            raise exception.GlanceError(reason="%s changed since the build (%s bytes, "
                                        "manifest.json says %d)" % (path, size, meta["size"]))
        files[role] = glance.LocalFile(role, str(path), size, meta["md5"], meta["sha256"],
                                       meta["sha512"])
    names, props, min_disk = describe(manifest, build_dir, pub)
    publisher = glance.Publisher(client, options=pub.options, progress=progress)
    build_id = next(iter(props.values()))["zol_build_id"]
    # What an earlier, interrupted publication of this build could not delete.
    for image_id in manifest.get("leftovers", []):
        publisher.delete(image_id, reason="left by an earlier failed publication")
    swept = publisher.sweep(build_id)
    start = time.monotonic()
    try:
        if "root" in files:
            ids = publisher.publish_triplet(names, files, props, min_disk=min_disk,
                                            min_ram=pub.min_ram)
        else:
            ids = publisher.publish_bare(names["disk"], files["disk"],
                                         manifest["format"], props["disk"],
                                         min_disk=min_disk, min_ram=pub.min_ram)
    except BaseException:
        manifest["leftovers"] = publisher.leftovers
        manifest["published"] = False
        write_manifest(build_dir, manifest)
        raise
    elapsed = time.monotonic() - start
    root_id = ids.get("root") or ids["disk"]
    series = props["root" if "root" in props else "disk"]["image_series"]
    try:
        rotation = publisher.rotate(series, root_id, pub.options.keep)
    except Exception as exc:     # published all the same: say what is left to do
        LOG.error("published, but the rotation of %r failed: %s: %s; older publications may "
                  "still be visible: `zol-image list --series %r`, `zol-image retire`", series,
                  type(exc).__name__, exc, series)
        rotation = {"error": "%s: %s" % (type(exc).__name__, exc)}
    size = sum(f.size for f in files.values())
    record: dict[str, Any] = dict(ids, name=names.get("root") or names["disk"],
                                  series=series, version=props["root" if "root" in props
                                                               else "disk"]["image_version"],
                                  visibility=pub.options.visibility,
                                  published=datetime.datetime.now(datetime.UTC).isoformat(
                                      timespec="seconds"),
                                  seconds=round(elapsed, 2), bytes=size, rotation=rotation)
    if swept:
        record["swept"] = swept
    if not ids["reused"]:
        record["mib_per_s"] = round(size / 1048576 / max(elapsed, 1e-6), 1)
    manifest.setdefault("publications", []).append(record)
    manifest["glance"] = record
    manifest["published"] = True
    manifest["leftovers"] = []
    write_manifest(build_dir, manifest)
    LOG.info("published %s: %s (%s)", record["name"],
             ", ".join("%s %s" % (r, ids[r]) for r in ("root", "kernel", "ramdisk", "disk")
                       if r in ids), "reused" if ids["reused"] else "uploaded")
    return record


def read_manifest(build_dir: Path) -> dict[str, Any]:
    path = build_dir / "manifest.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise exception.ConfigError(reason="%s has no manifest.json: not a finished build "
                                           "directory" % build_dir) from None
    except json.JSONDecodeError as exc:
        raise exception.ConfigError(reason="%s is not valid JSON: %s" % (path, exc)) from None


def write_manifest(build_dir: Path, manifest: dict[str, Any]) -> None:
    path = build_dir / "manifest.json"
    tmp = path.with_name(".manifest.json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def listing(client: Any, series: str | None = None) -> list[dict[str, Any]]:
    """`zol-image list`: every publication of our project (newest first per series)."""
    pubs = glance.Publisher(client).publications(series)
    out = []
    for p in pubs:
        root = p["root"]
        out.append({"series": p["series"], "version": p["version"], "name": p["name"],
                    "id": root["id"], "status": root.get("status"),
                    "visibility": root.get("visibility"),
                    "hidden": bool(root.get("os_hidden")),
                    "protected": bool(root.get("protected")),
                    "kernel_id": root.get("kernel_id"), "ramdisk_id": root.get("ramdisk_id"),
                    "created_at": root.get("created_at")})
    return out


def retire(client: Any, *, series: str | None = None, version: str | None = None,
           image_id: str | None = None, delete: bool = False) -> dict[str, list[str]]:
    """`zol-image retire`: hide (or delete) a publication by id or series+version, with the
    same rules as rotation (protected images and referenced kernels/ramdisks stay)."""
    publisher = glance.Publisher(client)
    pubs = publisher.publications(series)
    chosen = [p for p in pubs if (image_id and p["root"]["id"] == image_id)
              or (not image_id and version is not None and p["version"] == version)]
    if not chosen:
        raise exception.GlanceError(reason="no publication %s in %s" % (
            image_id or "version %r" % version, "series %r" % series if series
            else "any series"))
    result: dict[str, list[str]] = {"hidden": [], "deleted": [], "kept_protected": []}
    survivors = {ref for p in pubs if p not in chosen
                 for ref in (p["root"].get("kernel_id"), p["root"].get("ramdisk_id")) if ref}
    for p in chosen:
        root = p["root"]
        if delete and not root.get("protected"):
            result["deleted"] += publisher.remove_publication(p, survivors)
            continue
        if delete:
            LOG.warning("glance: %s is protected: hidden, not deleted (openstack image set "
                        "--unprotected %s first)", root["id"], root["id"])
            result["kept_protected"].append(root["id"])
        if not root.get("os_hidden"):
            publisher.update(root["id"], os_hidden=True)
        result["hidden"].append(root["id"])
    return result
