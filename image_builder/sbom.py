"""The package manifest of an image: every installed package with version, source package and
license, written as packages.json and as an SPDX 2.3 JSON SBOM, plus SHA256SUMS of the images.

Read from the image's own filesystem (debugfs, no mount): /var/lib/dpkg/status gives package,
version, architecture and source; /usr/share/doc/PKG/copyright (machine-readable DEP-5 files)
gives the licenses.  Debian's short license names are mapped to SPDX identifiers where one
exists; others become LicenseRef-<name> with an extracted-licensing entry (SPDX 2.3 s.10).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any

from image_builder import run

SPDX_IDS = {
    "gpl-1+": "GPL-1.0-or-later", "gpl-1": "GPL-1.0-only",
    "gpl-2+": "GPL-2.0-or-later", "gpl-2": "GPL-2.0-only", "gpl-2.0+": "GPL-2.0-or-later",
    "gpl-2.0": "GPL-2.0-only", "gpl-3+": "GPL-3.0-or-later", "gpl-3": "GPL-3.0-only",
    "gpl-3.0+": "GPL-3.0-or-later", "gpl-3.0": "GPL-3.0-only",
    "lgpl-2+": "LGPL-2.0-or-later", "lgpl-2": "LGPL-2.0-only", "lgpl-2.1+": "LGPL-2.1-or-later",
    "lgpl-2.1": "LGPL-2.1-only", "lgpl-3+": "LGPL-3.0-or-later", "lgpl-3": "LGPL-3.0-only",
    "agpl-3+": "AGPL-3.0-or-later", "agpl-3": "AGPL-3.0-only",
    "bsd-2-clause": "BSD-2-Clause", "bsd-3-clause": "BSD-3-Clause",
    "bsd-4-clause": "BSD-4-Clause", "expat": "MIT", "mit": "MIT", "isc": "ISC",
    "apache-2.0": "Apache-2.0", "apache-2": "Apache-2.0", "zlib": "Zlib",
    "mpl-2.0": "MPL-2.0", "mpl-1.1": "MPL-1.1", "artistic": "Artistic-1.0-Perl",
    "artistic-2.0": "Artistic-2.0", "psf-2": "PSF-2.0", "python": "Python-2.0",
    "cc0-1.0": "CC0-1.0", "cc0": "CC0-1.0", "openssl": "OpenSSL", "curl": "curl",
    "bsl-1.0": "BSL-1.0", "unicode-dfs-2016": "Unicode-DFS-2016", "x11": "X11",
    "ofl-1.1": "OFL-1.1", "wtfpl": "WTFPL", "gfdl-1.3+": "GFDL-1.3-or-later",
    "gfdl-1.2+": "GFDL-1.2-or-later", "bzip2-1.0.6": "bzip2-1.0.6",
}
LICENSE_LINE = re.compile(r"^License:\s*(\S.*)$", re.MULTILINE)
DEP5 = re.compile(r"^Format:\s*\S*(copyright-format|dep5)", re.IGNORECASE | re.MULTILINE)


def parse_status(text: str) -> list[dict[str, str]]:
    """Installed packages of a dpkg status file: name, version, arch, source, source_version."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in para.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        if "Package" not in fields or not fields.get("Status", "").endswith(" installed"):
            continue
        src = fields.get("Source", fields["Package"])
        m = re.fullmatch(r"(\S+)\s*\((\S+)\)", src)
        source, source_version = (m.group(1), m.group(2)) if m else (src, fields["Version"])
        out.append({"name": fields["Package"], "version": fields["Version"],
                    "arch": fields.get("Architecture", ""), "source": source,
                    "source_version": source_version})
    return sorted(out, key=lambda p: p["name"])


def licenses_of(copyright_text: str | None) -> list[str]:
    """Debian short license names of a DEP-5 copyright file ([] when not machine-readable)."""
    if not copyright_text or not DEP5.search(copyright_text):
        return []
    names: list[str] = []
    for expr in LICENSE_LINE.findall(copyright_text):
        for name in re.split(r"\s+(?:or|and)\s+|\s*,\s*|\s*\|\s*", expr.strip()):
            name = name.strip("() ")
            if name and name.lower() not in ("with", "exception") and name not in names:
                names.append(name)
    return names


def spdx_id(name: str) -> str:
    key = name.lower()
    if key in SPDX_IDS:
        return SPDX_IDS[key]
    return "LicenseRef-" + re.sub(r"[^A-Za-z0-9.-]+", "-", name).strip("-")


def read_image(root_fs: str | os.PathLike) -> list[dict[str, Any]]:
    """Packages (with licenses) of the ext4 filesystem image ``root_fs``; two debugfs calls."""
    with tempfile.TemporaryDirectory(prefix="zol-sbom-") as tmp:
        status = Path(tmp) / "status"
        run.run(["debugfs", "-R", "dump /var/lib/dpkg/status %s" % status, os.fspath(root_fs)])
        docs = Path(tmp) / "doc"
        docs.mkdir()
        run.run(["debugfs", "-R", "rdump /usr/share/doc %s" % docs, os.fspath(root_fs)])
        packages = parse_status(status.read_text(errors="replace"))
        for p in packages:
            text = None
            for name in (p["name"], p["source"]):
                f = docs / "doc" / name / "copyright"
                if f.is_file():
                    text = f.read_text(errors="replace")
                    break
            p["licenses"] = licenses_of(text)
    return packages


def spdx_document(manifest: dict[str, Any], packages: list[dict[str, Any]]) -> dict[str, Any]:
    """An SPDX 2.3 JSON document: the image (one package per image file) CONTAINS each
    Debian package, with purl, source and declared license."""
    name = manifest["name"]
    created = manifest.get("created") or datetime.datetime.now(datetime.UTC).isoformat(
        timespec="seconds")
    created = created.replace("+00:00", "Z")
    arch = manifest["debian"]["arch"]
    doc: dict[str, Any] = {
        "spdxVersion": "SPDX-2.3", "dataLicense": "CC0-1.0", "SPDXID": "SPDXRef-DOCUMENT",
        "name": "%s %s" % (name, created),
        "documentNamespace": "https://zol-openstack.invalid/spdx/%s/%s" % (
            name, manifest.get("build_id") or uuid.uuid4()),
        "creationInfo": {"created": created,
                         "creators": ["Tool: zol-image-%s" % manifest.get("versions", {}).get(
                             "zol-openstack", "unknown")]},
        "packages": [], "relationships": [],
    }
    refs: set[str] = set()
    image_ids = []
    for role, meta in sorted(manifest["files"].items()):
        sid = "SPDXRef-Image-%s" % role
        image_ids.append(sid)
        doc["packages"].append({
            "SPDXID": sid, "name": meta["path"], "versionInfo": manifest["debian"]["version"],
            "downloadLocation": "NOASSERTION", "filesAnalyzed": False,
            "primaryPackagePurpose": "OPERATING-SYSTEM" if role in ("root", "disk")
            else "FILE",
            "checksums": [{"algorithm": "SHA256", "checksumValue": meta["sha256"]},
                          {"algorithm": "SHA512", "checksumValue": meta["sha512"]}],
            "licenseConcluded": "NOASSERTION", "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION"})
        doc["relationships"].append({"spdxElementId": "SPDXRef-DOCUMENT",
                                     "relationshipType": "DESCRIBES",
                                     "relatedSpdxElement": sid})
    root_sid = "SPDXRef-Image-root" if "root" in manifest["files"] else "SPDXRef-Image-disk"
    for i, p in enumerate(packages):
        ids = [spdx_id(n) for n in p.get("licenses", [])]
        refs |= {x for x in ids if x.startswith("LicenseRef-")}
        declared = " AND ".join(dict.fromkeys(ids)) if ids else "NOASSERTION"
        sid = "SPDXRef-Package-%d-%s" % (i, re.sub(r"[^A-Za-z0-9.-]", "-", p["name"]))
        doc["packages"].append({
            "SPDXID": sid, "name": p["name"], "versionInfo": p["version"],
            "supplier": "Organization: Debian", "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False, "licenseConcluded": "NOASSERTION",
            "licenseDeclared": declared, "copyrightText": "NOASSERTION",
            "sourceInfo": "built from Debian source package %s %s" % (p["source"],
                                                                    p["source_version"]),
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                              "referenceLocator": "pkg:deb/debian/%s@%s?arch=%s&distro=%s"
                              % (p["name"], p["version"].replace(":", "%3A"),
                                 p["arch"] or arch, manifest["debian"]["release"])}]})
        doc["relationships"].append({"spdxElementId": root_sid, "relationshipType": "CONTAINS",
                                     "relatedSpdxElement": sid})
    if refs:
        doc["hasExtractedLicensingInfos"] = [
            {"licenseId": r, "name": r[len("LicenseRef-"):],
             "extractedText": "Debian license short name %r, see the package's "
                              "/usr/share/doc/*/copyright" % r[len("LicenseRef-"):]}
            for r in sorted(refs)]
    return doc


def write(build_dir: Path, manifest: dict[str, Any], packages: list[dict[str, Any]]) -> dict:
    """packages.json, sbom.spdx.json and SHA256SUMS in the build directory; returns their
    names and sha256 for the manifest."""
    out = {}
    (build_dir / "packages.json").write_text(json.dumps(packages, indent=1) + "\n")
    (build_dir / "sbom.spdx.json").write_text(
        json.dumps(spdx_document(manifest, packages), indent=1) + "\n")
    for name in ("packages.json", "sbom.spdx.json"):
        out[name] = hashlib.sha256((build_dir / name).read_bytes()).hexdigest()
    lines = ["%s  %s" % (meta["sha256"], meta["path"])
             for _, meta in sorted(manifest["files"].items())]
    lines += ["%s  %s" % (digest, name) for name, digest in sorted(out.items())]
    (build_dir / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return out
