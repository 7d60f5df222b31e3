"""Cinder and Glance behind a real Keystone, driven as a cloud user does: the `openstack` CLI
(python-openstackclient) with the clouds.yaml tools/keystone writes (password auth).

Shares the session's Keystone / Glance / Cinder (keystone auth) with test_dashboard.py.
"""
from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.plugins.keystone import OPENSTACK, keystone_cinder, osc

GIB = 1024 ** 3

pytestmark = pytest.mark.system


def osc_plain(keystone, cloud: str, *args: str, timeout: float = 300) -> None:
    r = subprocess.run([str(OPENSTACK), *args], env=keystone.env(cloud), capture_output=True,
                       text=True, timeout=timeout, check=False)
    assert r.returncode == 0, f"openstack {' '.join(args)} failed ({r.returncode}): {r.stderr}"


def test_services_refuse_requests_without_a_valid_token(keystone_server, keystone_cinder_stack,
                                                        keystone_glance):
    for url in (keystone_cinder_stack.api_url + "/" + keystone_server.projects["demo"]
                + "/volumes", keystone_glance.url + "/v2/images"):
        for token in (None, "admin:" + keystone_server.projects["admin"]):  # noauth's form
            req = urllib.request.Request(url, headers={"X-Auth-Token": token} if token else {})
            with pytest.raises(urllib.error.HTTPError) as exc:
                urllib.request.urlopen(req, timeout=30)
            assert exc.value.code == 401, (url, token, exc.value.code)


def test_catalog_and_clouds_yaml(keystone_server, keystone_cinder_stack, keystone_glance):
    mode = keystone_server.clouds_yaml.stat().st_mode & 0o777
    assert mode == 0o600, oct(mode)
    catalog = {e["Type"] for e in osc(keystone_server, "zol-demo", "catalog", "list")}
    assert {"identity", "volumev3", "block-storage", "image"} <= catalog, catalog
    types = {t["Name"] for t in osc(keystone_server, "zol-demo", "volume", "type", "list")}
    assert {"zol-thin", "zol-thick"} <= types, types


def test_openstack_cli_volume_and_image(keystone_server, keystone_cinder_stack, keystone_glance,
                                        san_admin, tmp_path):
    """As the demo member: one image and one volume command through the CLI, checked in Glance's
    store and on the SAN; the volume is seen in the demo project only."""
    img_file = tmp_path / "tiny.raw"
    img_file.write_bytes(b"zol-cli-image\n" * 4096)
    img = osc(keystone_server, "zol-demo", "image", "create", "--disk-format", "raw",
              "--container-format", "bare", "--file", str(img_file), "zol-cli-tiny")
    try:
        assert img["status"] == "active", img
        assert img["size"] == img_file.stat().st_size
        listed = {i["Name"] for i in osc(keystone_server, "zol-demo", "image", "list")}
        assert "zol-cli-tiny" in listed
        stored = Path(keystone_glance.state["dirs"]["images"]) / img["id"]
        assert stored.read_bytes() == img_file.read_bytes()
    finally:
        osc_plain(keystone_server, "zol-demo", "image", "delete", img["id"])
    assert not stored.exists()

    vol = osc(keystone_server, "zol-demo", "volume", "create", "--size", "1", "--type",
              "zol-thin", "zol-cli-vol")
    ds = "zol/cinder/volume-" + vol["id"]
    try:
        deadline = time.monotonic() + 600  # a loaded 2-core machine: minutes, not seconds
        while True:
            shown = osc(keystone_server, "zol-demo", "volume", "show", vol["id"])
            if shown["status"] == "available":
                break
            assert shown["status"] not in ("error",), shown
            assert time.monotonic() < deadline, f"volume still {shown['status']}"
            time.sleep(2)
        size = san_admin.out(["zfs", "get", "-H", "-p", "-o", "value", "volsize", ds]).strip()
        assert int(size) == GIB
        admin_view = keystone_cinder(keystone_server, "admin").volumes.get(vol["id"])
        assert getattr(admin_view, "os-vol-tenant-attr:tenant_id") == \
            keystone_server.projects["demo"]
    finally:
        osc_plain(keystone_server, "zol-demo", "volume", "delete", vol["id"])
    deadline = time.monotonic() + 600
    while san_admin.run(["zfs", "list", ds], check=False).returncode == 0:
        assert time.monotonic() < deadline, f"{ds} still on the SAN after delete"
        time.sleep(2)
