"""Glance publishing logic without a server: sessions, retries, properties, SBOM, manifest.

The behaviour against a real Glance is proven in tests/functional/test_image_publish.py.
"""
from __future__ import annotations

import json

import pytest

from image_builder import build, exception, glance, publish, sbom


def test_clouds_yaml_session_region_interface_cacert(tmp_path, monkeypatch):
    conf = tmp_path / "clouds.yaml"
    conf.write_text("clouds:\n  lab:\n    auth:\n      auth_url: http://ks:5000/v3\n"
                    "      username: admin\n      password: pw\n      project_name: p\n"
                    "      user_domain_name: Default\n      project_domain_name: Default\n"
                    "    cacert: /etc/ssl/lab.pem\n    region_name: RegionTwo\n"
                    "    interface: internal\n")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(conf))
    sess, endpoint, adapter = glance.make_session(cloud="lab")
    assert endpoint is None
    assert sess.auth.auth_url == "http://ks:5000/v3" and sess.verify == "/etc/ssl/lab.pem"
    assert adapter == {"region_name": "RegionTwo", "interface": "internal"}
    client = glance.make_client(sess, None, adapter)
    assert client.http_client.region_name == "RegionTwo"
    assert client.http_client.interface == "internal"
    sess, _, _ = glance.make_session(cloud="lab", cacert="/other.pem")
    assert sess.verify == "/other.pem"
    sess, _, _ = glance.make_session(cloud="lab", insecure=True)
    assert sess.verify is False
    with pytest.raises(exception.GlanceError, match="has: lab"):
        glance.make_session(cloud="other")


def test_clouds_yaml_verify_false(tmp_path, monkeypatch):
    conf = tmp_path / "clouds.yaml"
    conf.write_text("clouds:\n  lab:\n    auth: {auth_url: 'http://ks:5000/v3', username: a, "
                    "password: b, project_name: p}\n    verify: false\n")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(conf))
    sess, _, _ = glance.make_session(cloud="lab")
    assert sess.verify is False


def test_endpoint_token_session():
    sess, endpoint, adapter = glance.make_session("http://g:9292", "t0k")
    assert endpoint == "http://g:9292" and adapter == {}
    assert sess.get_token() == "t0k"


class Flaky:
    def __init__(self, errors):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_transient_errors_are_retried_with_backoff(monkeypatch):
    import glanceclient.exc as gexc
    sleeps = []
    monkeypatch.setattr(glance.time, "sleep", sleeps.append)
    pub = glance.Publisher(None, options=glance.PublishOptions(retries=3, backoff=1.0))
    fn = Flaky([gexc.HTTPServiceUnavailable(), ConnectionResetError(), gexc.CommunicationError()])
    assert pub.call("x", fn) == "ok" and fn.calls == 4
    assert sleeps == [1.0, 2.0, 4.0]
    # not transient: at once
    fn = Flaky([gexc.HTTPForbidden()])
    with pytest.raises(gexc.HTTPForbidden):
        pub.call("x", fn)
    assert fn.calls == 1
    # transient but retries exhausted
    fn = Flaky([gexc.HTTPInternalServerError()] * 5)
    with pytest.raises(gexc.HTTPInternalServerError):
        pub.call("x", fn)
    assert fn.calls == 4


def test_transient_classification():
    import glanceclient.exc as gexc
    assert glance.transient(gexc.HTTPBadGateway())
    assert glance.transient(gexc.HTTPServiceUnavailable())
    assert not glance.transient(gexc.HTTPBadRequest())
    assert not glance.transient(gexc.HTTPNotFound())
    try:
        try:
            raise ConnectionResetError(104, "reset")
        except ConnectionResetError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as exc:
        assert glance.transient(exc)


def manifest(tmp_path, **over):
    m = {"name": "deb", "build_id": "b" * 32, "format": "ami",
         "created": "2026-12-01T10:20:30+00:00",
         "debian": {"release": "bookworm", "version": "12", "arch": "amd64",
                    "mirror": "http://deb.debian.org/debian"},
         "series": "Debian {version} ({arch})",
         "packages": ["qemu-guest-agent=1", "cloud-init=2"],
         "files": {"root": {"path": "deb.img", "size": (1 << 30) + 1, "sha256": "a" * 64,
                            "sha512": "c" * 128},
                   "kernel": {"path": "deb.vmlinuz", "size": 1, "sha256": "d" * 64,
                              "sha512": "e" * 128},
                   "ramdisk": {"path": "deb.initrd", "size": 1, "sha256": "f" * 64,
                               "sha512": "0" * 128}},
         "settings": {"cloud_init": True, "profile": "cloud", "disk_size": 2048},
         "recipe": {"properties": {"hw_disk_bus": "virtio", "hypervisor_type": "qemu",
                                   "image_description": "https://www.debian.org/releases/"
                                                        "{release}/"}}}
    m.update(over)
    return m


def test_properties_come_from_the_manifest(tmp_path):
    pub = publish.Publication(properties={"replace_frequency": "weekly"},
                              options=glance.PublishOptions(keep=2))
    names, props, min_disk = publish.describe(manifest(tmp_path), tmp_path, pub)
    assert names == {"root": "Debian 12 (amd64) 20261201.1020",
                     "kernel": "Debian 12 (amd64) 20261201.1020-kernel",
                     "ramdisk": "Debian 12 (amd64) 20261201.1020-ramdisk"}
    root = props["root"]
    assert root["os_version"] == "12" and root["architecture"] == "x86_64"
    assert root["os_distro"] == "debian" and root["os_admin_user"] == "debian"
    assert root["hw_qemu_guest_agent"] == "yes" and root["hw_disk_bus"] == "virtio"
    assert root["image_build_date"] == "2026-12-01"
    assert root["image_description"] == "https://www.debian.org/releases/bookworm/"
    assert root["replace_frequency"] == "weekly" and root["uuid_validity"] == "last-2"
    assert root["image_series"] == "Debian 12 (amd64)"
    assert root["image_version"] == "20261201.1020"
    assert root["image_package_manifest"].endswith("sbom.spdx.json")
    assert min_disk == 2
    assert set(props["kernel"]) == {"image_series", "image_version", "zol_build_id",
                                    "architecture", "os_distro", "os_version"}
    # trixie manifest: 13, never the command line's default 12
    m = manifest(tmp_path, debian={"release": "trixie", "version": "13", "arch": "amd64",
                                   "mirror": "m"}, packages=[])
    names, props, _ = publish.describe(m, tmp_path, publish.Publication(version="v1"))
    assert props["root"]["os_version"] == "13" and names["root"] == "Debian 13 (amd64) v1"
    assert props["root"]["hw_qemu_guest_agent"] == "no"
    assert props["root"]["image_description"].endswith("/trixie/")
    with pytest.raises(exception.ConfigError, match="unknown placeholder"):
        publish.describe(m, tmp_path, publish.Publication(name_format="{nope}"))


def test_no_cloud_init_has_no_admin_user(tmp_path):
    m = manifest(tmp_path, settings={"cloud_init": False, "profile": "cloud"})
    _, props, _ = publish.describe(m, tmp_path, publish.Publication())
    assert "os_admin_user" not in props["root"]


def test_members_need_shared_visibility():
    with pytest.raises(exception.ConfigError, match="visibility shared"):
        build.Settings(glance_members=["p1"]).publication()
    assert build.Settings(glance_members=["p1"], glance_visibility="shared").publication() \
        .options.members == ["p1"]


STATUS = """Package: libc6
Status: install ok installed
Architecture: amd64
Source: glibc (2.36-9+deb12u4)
Version: 2.36-9+deb12u4

Package: bash
Status: install ok installed
Architecture: amd64
Version: 5.2.15-2+b2
Description: shell
 continued line: with colon

Package: gone
Status: deinstall ok config-files
Version: 1
"""

COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
License: GPL-3+

Files: lib/*
License: LGPL-2.1+ or BSD-3-clause

License: GPL-3+
 text
"""


def test_dpkg_status_and_licenses():
    pkgs = sbom.parse_status(STATUS)
    assert [p["name"] for p in pkgs] == ["bash", "libc6"]
    assert pkgs[1]["source"] == "glibc" and pkgs[1]["source_version"] == "2.36-9+deb12u4"
    assert pkgs[0]["source"] == "bash" and pkgs[0]["source_version"] == "5.2.15-2+b2"
    assert sbom.licenses_of(COPYRIGHT) == ["GPL-3+", "LGPL-2.1+", "BSD-3-clause"]
    assert sbom.licenses_of("not machine readable") == []
    assert sbom.spdx_id("GPL-3+") == "GPL-3.0-or-later"
    assert sbom.spdx_id("Expat") == "MIT"
    assert sbom.spdx_id("public-domain") == "LicenseRef-public-domain"


def test_sbom_document_and_sums(tmp_path):
    m = manifest(tmp_path)
    pkgs = sbom.parse_status(STATUS)
    pkgs[0]["licenses"] = ["GPL-3+", "public-domain"]
    pkgs[1]["licenses"] = []
    digests = sbom.write(tmp_path, m, pkgs)
    doc = json.loads((tmp_path / "sbom.spdx.json").read_text())
    assert doc["spdxVersion"] == "SPDX-2.3" and doc["SPDXID"] == "SPDXRef-DOCUMENT"
    byname = {p["name"]: p for p in doc["packages"]}
    assert byname["bash"]["licenseDeclared"] == "GPL-3.0-or-later AND LicenseRef-public-domain"
    assert byname["libc6"]["licenseDeclared"] == "NOASSERTION"
    assert "glibc 2.36-9+deb12u4" in byname["libc6"]["sourceInfo"]
    assert byname["libc6"]["externalRefs"][0]["referenceLocator"].startswith(
        "pkg:deb/debian/libc6@2.36-9+deb12u4?arch=amd64")
    assert [e["licenseId"] for e in doc["hasExtractedLicensingInfos"]] == \
        ["LicenseRef-public-domain"]
    ids = {p["SPDXID"] for p in doc["packages"]}
    for rel in doc["relationships"]:
        assert rel["relatedSpdxElement"] in ids
    sums = (tmp_path / "SHA256SUMS").read_text().splitlines()
    assert "%s  deb.img" % ("a" * 64) in sums
    assert "%s  sbom.spdx.json" % digests["sbom.spdx.json"] in sums


def test_manifest_contents(tmp_path, monkeypatch):
    s = build.Settings(output_dir=str(tmp_path), glance_token="s3cr3t-t0ken")
    b = build.Builder(s)
    b.out.mkdir(parents=True)
    monkeypatch.setattr(build.Builder, "package_inventory", lambda self, files: [
        {"name": "a", "version": "1", "arch": "amd64", "source": "a", "source_version": "1",
         "licenses": ["MIT"]}])
    files = {}
    for role in ("kernel", "ramdisk", "root"):
        p = b.out / role
        p.write_bytes(role.encode())
        files[role] = glance.hash_file(p, role)
    b.timings = {"install": 1.0}
    b.result = {"kernel_version": "6.1", "repro": {"x": 1}}
    m = b.manifest({"packages": ["a=1"]}, files, 2.0)
    on_disk = json.loads((b.out / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(m))
    assert m["files"]["root"]["sha512"] == files["root"].sha512
    assert m["packages"] == ["a=1"] and m["timings"] == {"install": 1.0, "total": 2.0}
    assert m["debian"]["version"] == "12" and m["glance"] is None and not m["published"]
    assert m["repro"] == {"x": 1} and len(m["build_id"]) == 32
    assert m["recipe"]["properties"]["hw_rng_model"] == "virtio"
    assert "mmdebstrap" in m["versions"] and "qemu-img" in m["versions"]
    assert "s3cr3t-t0ken" not in (b.out / "manifest.json").read_text()
    assert (b.out / "SHA256SUMS").exists() and (b.out / "packages.json").exists()
