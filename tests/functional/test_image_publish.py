"""Publishing like a distribution, against a real Glance (and a real Keystone for auth).

No new image builds: the session's bookworm triplet (test_image_build) and trixie triplet
(test_image_trixie) are published again under their own series, with versions given on the
command line (each publication of the ~570 MB triplet costs ~10 s: hashing + upload).
Every test removes what it published, so the shared Glance ends as it started.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.functional.test_image_build import triplet  # noqa: F401  (session fixture)
from tests.functional.test_image_trixie import trixie_build  # noqa: F401  (session fixture)
from tests.plugins.glance import GlanceServer, start_glance, stop_glance

pytestmark = [pytest.mark.functional, pytest.mark.slow]

ROOT_PROPS = {"architecture": "x86_64", "hypervisor_type": "qemu", "os_distro": "debian",
              "os_admin_user": "debian", "hw_disk_bus": "virtio", "hw_vif_model": "virtio",
              "hw_rng_model": "virtio", "hw_qemu_guest_agent": "yes",
              "image_original_user": "debian", "replace_frequency": "monthly",
              "provided_until": "notice", "os_hash_algo": "sha512"}
SCS_KEYS = ("image_build_date", "image_source", "image_description", "uuid_validity",
            "image_package_manifest")


def cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "image_builder.cli", *args],
                          capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL, env=dict(os.environ, **(env or {})))


def ok(r: subprocess.CompletedProcess) -> dict:
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout)


@pytest.fixture()
def build_copy(triplet, tmp_path):  # noqa: F811
    """The session triplet's build directory, hard-linked (its manifest is rewritten by
    publications; the session's own stays as it was)."""
    src = triplet["dir"]
    dst = tmp_path / src.name
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file():
            os.link(f, dst / f.name)
    (dst / "manifest.json").unlink()
    (dst / "manifest.json").write_text((src / "manifest.json").read_text())
    return dst


def series_images(client, series: str) -> list[dict]:
    out = {}
    for flt in ({"image_series": series}, {"image_series": series, "os_hidden": True}):
        for i in client.images.list(filters=flt):
            out[i["id"]] = dict(i)
    return list(out.values())


def purge(client, images: list[dict]) -> None:
    for img in sorted(images, key=lambda i: i["disk_format"] in ("aki", "ari")):
        if img.get("protected"):
            client.images.update(img["id"], protected=False)
        client.images.delete(img["id"])


def assert_fully_described(root: dict, kernel: dict, ramdisk: dict, manifest: dict,
                           version: str, series: str) -> None:
    for k, v in ROOT_PROPS.items():
        assert root.get(k) == v, (k, root.get(k))
    for k in SCS_KEYS:
        assert root.get(k), k
    assert root["os_version"] == manifest["debian"]["version"]
    assert root["image_build_date"] == manifest["created"][:10]
    assert root["image_version"] == version and root["image_series"] == series
    assert root["image_package_manifest"].endswith("sbom.spdx.json")
    assert root["min_disk"] >= 1 and root["min_ram"] == 512
    assert root["os_hash_value"] == manifest["files"]["root"]["sha512"]
    assert root["kernel_id"] == kernel["id"] and root["ramdisk_id"] == ramdisk["id"]
    assert root["os_hidden"] is False
    for img in (kernel, ramdisk):
        assert img["os_hidden"] is True and img["status"] == "active"
        assert img["image_version"] == version


def test_rotation_keep_1_over_three_publications(build_copy, glance_server):
    """v1 (protected), v2, v3 with --keep 1: after v2 exactly one visible, fully described AMI
    with hidden kernel/ramdisk; after v3, v2 is deleted (AMI, kernel, ramdisk), protected v1
    stays hidden with its kernel/ramdisk.  list and retire work on the same series."""
    c = glance_server.client()
    series = "ZOL rotation {version} ({arch})"
    name = "ZOL rotation 12 (amd64)"
    base = ("--glance-endpoint", glance_server.url, "--series", series, "--keep", "1")
    start = time.monotonic()
    v1 = ok(cli("upload", str(build_copy), *base, "--image-version", "v1", "--protected"))
    v2 = ok(cli("upload", str(build_copy), *base, "--image-version", "v2"))
    imgs = {i["id"]: i for i in series_images(c, name)}
    visible = [i for i in imgs.values() if not i["os_hidden"]]
    assert [i["id"] for i in visible] == [v2["root"]], visible
    manifest = json.loads((build_copy / "manifest.json").read_text())
    assert_fully_described(imgs[v2["root"]], imgs[v2["kernel"]], imgs[v2["ramdisk"]],
                           manifest, "v2", name)
    assert imgs[v2["root"]]["name"] == "%s v2" % name
    assert imgs[v1["root"]]["os_hidden"] and imgs[v1["root"]]["protected"]
    assert v2["rotation"] == {"hidden": [v1["root"]], "deleted": [],
                              "kept_protected": [v1["root"]]}

    v3 = ok(cli("upload", str(build_copy), *base, "--image-version", "v3"))
    print("three publications in %.0f s" % (time.monotonic() - start))
    ids = {i["id"]: i for i in series_images(c, name)}
    assert set(v3["rotation"]["deleted"]) == {v2["root"], v2["kernel"], v2["ramdisk"]}
    assert not {v2["root"], v2["kernel"], v2["ramdisk"]} & set(ids)
    assert {v1["root"], v1["kernel"], v1["ramdisk"], v3["root"], v3["kernel"],
            v3["ramdisk"]} == set(ids)
    assert [i["id"] for i in ids.values() if not i["os_hidden"]] == [v3["root"]]
    assert ids[v1["root"]]["protected"] and ids[v1["root"]]["os_hidden"]

    rows = ok(cli("list", "--json", "--series", name, "--glance-endpoint", glance_server.url))
    assert [(r["version"], r["hidden"], r["protected"]) for r in rows] == \
        [("v3", False, False), ("v1", True, True)]
    table = cli("list", "--glance-endpoint", glance_server.url).stdout
    assert name in table and "hidden,protected" in table

    # retire by hand: a protected one is only hidden; unprotected it goes, kernel/ramdisk too
    r = ok(cli("retire", "--series", name, "--version", "v1", "--delete",
               "--glance-endpoint", glance_server.url))
    assert r["kept_protected"] == [v1["root"]] and r["deleted"] == []
    c.images.update(v1["root"], protected=False)
    r = ok(cli("retire", "--series", name, "--version", "v1", "--delete",
               "--glance-endpoint", glance_server.url))
    assert set(r["deleted"]) == {v1["root"], v1["kernel"], v1["ramdisk"]}
    r = ok(cli("retire", v3["root"], "--glance-endpoint", glance_server.url))
    assert r["hidden"] == [v3["root"]] and c.images.get(v3["root"])["os_hidden"]
    purge(c, series_images(c, name))


def test_reuse_only_when_visibility_owner_and_properties_match(build_copy, glance_server):
    c = glance_server.client()
    name = "ZOL reuse 12 (amd64)"
    base = ("upload", str(build_copy), "--glance-endpoint", glance_server.url, "--series",
            name, "--image-version", "r1")
    first = ok(cli(*base))
    again = ok(cli(*base))
    assert again["reused"] is True and again["root"] == first["root"]
    public = ok(cli(*base, "--visibility", "community"))
    assert public["reused"] is False and public["root"] != first["root"]
    assert c.images.get(public["root"])["visibility"] == "community"
    shared = ok(cli(*base, "--visibility", "shared", "--members", "memberproject",
                    "--property", "site_flavor=small", "--tags", "zol,weekly"))
    assert shared["reused"] is False and c.images.get(shared["root"])["site_flavor"] == "small"
    for role in ("root", "kernel", "ramdisk"):
        img = c.images.get(shared[role])
        assert img["visibility"] == "shared" and set(img["tags"]) == {"zol", "weekly"}
        assert [m["member_id"] for m in c.image_members.list(shared[role])] == \
            ["memberproject"]
    # another project sees the community image but does not own it: no reuse
    other = ok(cli(*base, "--visibility", "community",
                   env={"ZOL_GLANCE_TOKEN": "someone:otherproject"}))
    assert other["reused"] is False
    assert c.images.get(other["root"])["owner"] == "otherproject"
    purge(c, series_images(c, name))


def test_upload_takes_everything_from_a_trixie_manifest(trixie_build, glance_server):  # noqa: F811
    """The trixie build was made with --no-upload; a later upload without --release is
    labelled 13 (the manifest), never the command line's default 12."""
    build_dir = trixie_build["dir"]
    assert trixie_build["r"].returncode == 0, trixie_build["r"].stderr[-3000:]
    manifest = json.loads((build_dir / "manifest.json").read_text())
    assert manifest["published"] is False and manifest["glance"] is None
    ids = ok(cli("upload", str(build_dir), "--glance-endpoint", glance_server.url))
    c = glance_server.client()
    root = c.images.get(ids["root"])
    assert (root["os_version"], root["image_series"]) == ("13", "Debian 13 (amd64)")
    assert root["image_description"] == "https://www.debian.org/releases/trixie/"
    assert root["name"].startswith("Debian 13 (amd64) ")
    after = json.loads((build_dir / "manifest.json").read_text())
    assert after["published"] is True and after["glance"]["root"] == ids["root"]
    purge(c, series_images(c, "Debian 13 (amd64)"))


def test_glance_direct_import_after_a_killed_run(build_copy, glance_server):
    """What a run killed with SIGKILL leaves (a queued image, an active kernel no AMI uses,
    both tagged with the build's id) is swept by the next upload; that upload uses
    --import-method glance-direct: stage + import (interoperable image import)."""
    import io
    c = glance_server.client()
    name = "ZOL import 12 (amd64)"
    manifest = json.loads((build_copy / "manifest.json").read_text())
    build_id = manifest["build_id"]
    queued = c.images.create(name="left", disk_format="ami", container_format="ami",
                             zol_build_id=build_id)
    kernel = c.images.create(name="left-kernel", disk_format="aki", container_format="aki",
                             zol_build_id=build_id, os_hidden=True)
    c.images.upload(kernel["id"], io.BytesIO(b"k" * 1024), image_size=1024)
    ids = ok(cli("upload", str(build_copy), "--glance-endpoint", glance_server.url,
                 "--series", name, "--import-method", "glance-direct"))
    assert sorted(ids["swept"]) == sorted([queued["id"], kernel["id"]])
    for gone in (queued["id"], kernel["id"]):
        with pytest.raises(Exception, match="(?i)not found|404"):
            c.images.get(gone)
    for role in ("kernel", "ramdisk", "root"):
        img = c.images.get(ids[role])
        assert img["status"] == "active"
        assert img["os_hash_value"] == manifest["files"][role]["sha512"]
    assert not os.listdir(Path(glance_server.run_dir) / "staging")     # nothing left staged
    purge(c, series_images(c, name))


def test_failed_upload_keeps_the_build_and_upload_finishes_it(triplet, glance_server,  # noqa: F811
                                                               tmp_path):
    """A fault after the root's data went up: the run deletes the kernel, ramdisk and root it
    created, keeps the verified build with its manifest, and `zol-image upload` publishes it."""
    c = glance_server.client()
    before = {i["id"] for i in c.images.list()} | \
        {i["id"] for i in c.images.list(filters={"os_hidden": True})}
    out = tmp_path / "out"
    r = cli("build", "--output-dir", str(out), "--name", "upfail", "--from-disk",
            str(triplet["disk"]), "--no-verify", "--fail-at", "upload-root",
            "--glance-endpoint", glance_server.url, "--series", "ZOL upfail")
    assert r.returncode == 1, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("zol-image: Stage upload failed") and "zol-image upload" in last
    after = {i["id"] for i in c.images.list()} | \
        {i["id"] for i in c.images.list(filters={"os_hidden": True})}
    assert after == before, "images left in Glance: %s" % (after - before)
    build_dir = out / "upfail"
    manifest = json.loads((build_dir / "manifest.json").read_text())
    assert manifest["published"] is False and manifest["leftovers"] == []
    for meta in manifest["files"].values():
        assert (build_dir / meta["path"]).stat().st_size == meta["size"]
    for extra in ("sbom.spdx.json", "packages.json", "SHA256SUMS"):
        assert (build_dir / extra).exists(), extra
    ids = ok(cli("upload", str(build_dir), "--glance-endpoint", glance_server.url))
    assert ids["reused"] is False and c.images.get(ids["root"])["image_series"] == "ZOL upfail"
    purge(c, series_images(c, "ZOL upfail"))


def test_glance_killed_mid_upload_then_upload_finishes(build_copy, tmp_path):
    """SIGKILL our own Glance while the root's data flows: the run fails (retries, then the
    rollback's deletes fail too: each logged with the id and the command), the build stays;
    with Glance back, `zol-image upload` sweeps what was left and publishes."""
    run_dir = tmp_path / "glance2"
    state = start_glance(run_dir)
    try:
        server = GlanceServer(state)
        token = "zol:%s" % server.project_id
        env = {"ZOL_GLANCE_TOKEN": token}
        c = server.client(token)
        proc = subprocess.Popen([sys.executable, "-m", "image_builder.cli", "upload",
                                 str(build_copy), "--glance-endpoint", server.url,
                                 "--retries", "1"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                                env=dict(os.environ, **env))
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "glance: root " in line and " MiB" in line:   # the root's data is flowing
                os.killpg(state["pid"], signal.SIGKILL)    # gunicorn + workers
                break
        rest = proc.stderr.read()
        proc.wait(timeout=300)
        stderr = "".join(lines) + rest
        assert proc.returncode == 1, stderr[-4000:]
        assert "could not delete image" in stderr and "openstack image delete" in stderr
        manifest = json.loads((build_copy / "manifest.json").read_text())
        assert manifest["published"] is False and len(manifest["leftovers"]) == 3, manifest
        stop_glance(run_dir)
        state = _restart(run_dir, state["port"])
        ids = ok(cli("upload", str(build_copy), "--glance-endpoint", state["url"],
                     env=env))
        imgs = [dict(i) for i in c.images.list()] + \
            [dict(i) for i in c.images.list(filters={"os_hidden": True})]
        assert sorted(i["id"] for i in imgs) == sorted(ids[r] for r in
                                                        ("kernel", "ramdisk", "root"))
        assert {i["status"] for i in imgs} == {"active"}
    finally:
        stop_glance(run_dir)


def _restart(run_dir: Path, port: int) -> dict:
    r = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[2] / "tools" /
                                            "glance-server"), "start", "--run-dir",
                        str(run_dir), "--port", str(port)], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_concurrent_build_refused_and_failed_build_keeps_the_previous(triplet, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    # a previous good build of the same name (hard links of the session triplet)
    good = out / "conc"
    good.mkdir(parents=True)
    for f in triplet["dir"].iterdir():
        if f.is_file():
            os.link(f, good / f.name)
    before = {f.name: f.stat().st_ino for f in good.iterdir()}
    args = ("build", "--output-dir", str(out), "--name", "conc", "--from-disk",
            str(triplet["disk"]), "--no-verify", "--no-upload")
    first = subprocess.Popen([sys.executable, "-m", "image_builder.cli", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL)
    try:
        lock = out / ".conc.lock"
        deadline = time.monotonic() + 60
        while not (lock.exists() and lock.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.1)
        second = cli(*args)
        assert second.returncode == 1
        assert "another zol-image build or upload of conc is running" in second.stderr
        assert "pid %d" % first.pid in second.stderr, second.stderr
    finally:
        first.send_signal(signal.SIGTERM)      # unwinds like Ctrl-C: a failed build
        first.wait(timeout=120)
    assert first.returncode != 0
    assert {f.name: f.stat().st_ino for f in good.iterdir()} == before     # untouched
    assert not list(out.glob(".conc.partial-*")) and not lock.exists()
    r = cli("build", "--output-dir", str(out), "--name", "conc", "--from-disk",
            str(triplet["disk"]), "--no-verify", "--no-upload", "--fail-at", "convert")
    assert r.returncode == 1 and "Stage convert failed" in r.stderr
    assert {f.name: f.stat().st_ino for f in good.iterdir()} == before


def test_broken_recipe_refused_before_download(tmp_path):
    recipe = tmp_path / "site.toml"
    recipe.write_text("[image]\nrelease = 'trixie'\n[packages]\nadd = ['vim', 'Not A Pkg']\n")
    start = time.monotonic()
    r = cli("build", "--recipe", str(recipe), "--output-dir", str(tmp_path / "out"))
    assert r.returncode == 2
    assert str(recipe) in r.stderr and "packages" in r.stderr and "Not A Pkg" in r.stderr
    assert not (tmp_path / "out").exists() and time.monotonic() - start < 30


def test_sbom_and_sums_of_the_triplet(triplet):  # noqa: F811
    d = triplet["dir"]
    m = triplet["manifest"]
    doc = json.loads((d / "sbom.spdx.json").read_text())
    pkgs = {p["name"]: p for p in doc["packages"] if p["SPDXID"].startswith("SPDXRef-Package")}
    names = {p.split("=")[0] for p in m["packages"]}
    assert set(pkgs) == names and m["package_count"] == len(names)
    assert "GPL-3.0-or-later" in pkgs["bash"]["licenseDeclared"]
    assert "glibc" in pkgs["libc6"]["sourceInfo"]
    with_license = [p for p in pkgs.values() if p["licenseDeclared"] != "NOASSERTION"]
    assert len(with_license) > 0.7 * len(pkgs), len(with_license)   # DEP-5 files: ~82 %
    r = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=d, capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_publish_through_keystone_password_auth(build_copy, keystone_server, keystone_glance,
                                                tmp_path):
    """clouds.yaml with a password user: Keystone issues the token, the catalog gives the
    image endpoint (region_name + interface from clouds.yaml), Glance validates the token."""
    import yaml
    clouds = yaml.safe_load(keystone_server.clouds_yaml.read_text())
    entry = clouds["clouds"]["zol-admin"]
    entry["region_name"] = keystone_server.state.get("region", "RegionOne")
    entry["interface"] = "internal"
    cfg = tmp_path / "clouds.yaml"
    cfg.write_text(yaml.safe_dump(clouds))
    cfg.chmod(0o600)
    env = {"OS_CLIENT_CONFIG_FILE": str(cfg), "OS_CLOUD": "zol-admin"}
    ids = ok(cli("upload", str(build_copy), "--series", "ZOL keystone", env=env))
    from tests.plugins.keystone import keystone_glance_client
    c = keystone_glance_client(keystone_server)
    root = c.images.get(ids["root"])
    assert root["status"] == "active" and root["image_series"] == "ZOL keystone"
    assert root["owner"] == keystone_server.session("admin").get_project_id()
    rows = ok(cli("list", "--json", "--series", "ZOL keystone", env=env))
    assert [r["id"] for r in rows] == [ids["root"]]
    bad = dict(clouds)
    bad["clouds"]["zol-admin"]["region_name"] = "NoSuchRegion"
    cfg.write_text(yaml.safe_dump(bad))
    r = cli("list", env=env)
    assert r.returncode == 1 and "endpoint" in r.stderr.lower(), r.stderr[-2000:]
    purge(c, series_images(c, "ZOL keystone"))
