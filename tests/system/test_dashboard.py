"""The operator's and the member's flows in Horizon, in a real headless Chromium.

Real components only: Keystone 30 (tools/keystone), Glance and Cinder behind it
(keystonemiddleware; tools/glance-server / tools/cinder-stack --keystone), Horizon 27
(tools/horizon) and the session SAN VM; Debian's chromium + chromium-driver through Selenium;
the `openstack` CLI (python-openstackclient) with the Keystone's clouds.yaml.
Pages are checked by what a person reads on them (table rows, statuses, sizes, quotas,
messages); every volume step is also checked on the SAN itself (zvol present with the right
volsize, its data, gone after delete).  One browser and one Horizon for the module; the tests
run in file order.

"Volume from image" uses the session's real bookworm triplet (the functional tier's `triplet`
fixture: built once per session, never a second time), published into this Keystone's Glance
with `zol-image upload --os-cloud zol-admin`, the way a cloud admin publishes it.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.functional.test_image_build import triplet  # noqa: F401  (session fixture)
from tests.plugins.horizon import assert_only_the_nova_banner
from tests.plugins.keystone import keystone_cinder, keystone_glance_client, osc

GIB = 1024 ** 3
THIN = "zol/cinder"
PARENTS = {"zol-thin": "zol/cinder", "zol-thick": "zol/cinder-thick"}  # tools/cinder-stack
EXT4_MAGIC = "53ef"  # s_magic 0xEF53, little endian, at byte 1080 (superblock 1024 + 0x38)

pytestmark = pytest.mark.system


def api_wait(get, want: str, timeout: float = 600, what: str = "resource"):
    """Poll Cinder (cheap) until `get()` has status `want`; the page is then read once."""
    deadline = time.monotonic() + timeout
    while True:
        obj = get()
        if obj is not None and obj.status == want:
            return obj
        status = getattr(obj, "status", "absent")
        assert status not in ("error", "error_deleting", "error_extending"), f"{what}: {status}"
        assert time.monotonic() < deadline, f"{what} still {status} after {timeout:.0f} s"
        time.sleep(2)


def by_name(manager, name: str):
    """The live resource called `name` (one still being deleted by an earlier run is not it)."""
    found = [r for r in manager.list(search_opts={"name": name}) if r.status != "deleting"]
    return found[0] if found else None


def gone(manager, oid: str, timeout: float = 600, what: str = "resource") -> None:
    from cinderclient import exceptions
    deadline = time.monotonic() + timeout
    while True:
        try:
            obj = manager.get(oid)
        except exceptions.NotFound:
            return
        assert obj.status not in ("error_deleting", "error"), f"{what}: {obj.status}"
        assert time.monotonic() < deadline, f"{what} {oid} still {obj.status}"
        time.sleep(2)


def volsize(san_admin, ds: str) -> int | None:
    r = san_admin.run(["zfs", "get", "-H", "-p", "-o", "value", "volsize", ds], check=False)
    return int(r.stdout.strip()) if r.returncode == 0 else None


def wait_san(san_admin, ds: str, want: int | None, timeout: float = 300) -> None:
    """Until the zvol `ds` has volsize `want` (None: until it is gone)."""
    deadline = time.monotonic() + timeout
    while (got := volsize(san_admin, ds)) != want:
        assert time.monotonic() < deadline, f"SAN: {ds} volsize {got}, wanted {want}"
        time.sleep(2)


@pytest.fixture(scope="module")
def dash(keystone_server, keystone_cinder_stack, keystone_glance, horizon_server, browser):
    """Everything up; the module's shared notes (ids created by earlier steps)."""
    return {"ks": keystone_server, "stack": keystone_cinder_stack, "b": browser}


def hardlinked_build(src: Path, dest_parent: Path) -> Path:
    """A copy of the build directory `src` whose image files are hard links (instant, no
    space): `zol-image upload` records the publication in manifest.json, and the session's
    build stays exactly as the other tests found it.  The work/ tree is not needed."""
    dest = dest_parent / src.name
    dest.mkdir()
    for f in src.iterdir():
        if not f.is_file():
            continue
        if f.name == "manifest.json":
            shutil.copy2(f, dest / f.name)
            continue
        try:
            os.link(f, dest / f.name)
        except OSError:  # another filesystem (a build dir given by ZOL_IMAGE_BUILD_DIR)
            shutil.copy2(f, dest / f.name)
    return dest


@pytest.fixture(scope="module")
def published_ami(request, keystone_server, keystone_glance, tmp_path_factory):
    """The session's bookworm triplet in this Keystone's Glance, published as a cloud admin
    does: `zol-image upload BUILD_DIR --os-cloud zol-admin --visibility public` with the
    admin's clouds.yaml (password auth).  ZOL_IMAGE_BUILD_DIR=DIR (a finished `zol-image
    build` directory) replaces the session build while developing."""
    reuse = os.environ.get("ZOL_IMAGE_BUILD_DIR")
    src = Path(reuse) if reuse else request.getfixturevalue("triplet")["dir"]
    build = hardlinked_build(src, tmp_path_factory.mktemp("ami-publish"))
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "image_builder.cli", "upload", str(build),
                        "--os-cloud", "zol-admin", "--visibility", "public"],
                       env=keystone_server.env("zol-admin"), capture_output=True, text=True,
                       timeout=1200, stdin=subprocess.DEVNULL, check=False)
    assert r.returncode == 0, f"zol-image upload failed ({r.returncode}): {r.stderr[-4000:]}"
    record = json.loads(r.stdout)
    manifest = json.loads((build / "manifest.json").read_text())
    root = manifest["files"]["root"]
    glance = keystone_glance_client(keystone_server, "admin")
    image = glance.images.get(record["root"])
    print(f"zol-image upload of the triplet ({record['bytes'] / 2 ** 20:.0f} MiB) to the "
          f"Keystone-backed Glance: {time.monotonic() - t0:.0f} s")
    yield {"id": record["root"], "name": image["name"], "size": root["size"],
           "sha512": root["sha512"], "min_disk": image["min_disk"],
           "ids": [record[k] for k in ("root", "kernel", "ramdisk")]}
    for image_id in (record["root"], record["kernel"], record["ramdisk"]):
        glance.images.delete(image_id)


def horizon_used(b, page: str, title: str) -> str:
    """Open `page` (a form with Horizon's quota bars) and read the line of quota `title`,
    e.g. "Total Gibibytes" -> "3 of 1,000 GiB Used"."""
    b.go(page)
    got = b.wait(lambda: [q.text for q in b.css(".quota_title") if title in q.text], 60,
                 f"quota {title!r} on {page}")
    return " ".join(got[0].replace(title, "").split())


def quota_line(used: int, limit: int, unit: str = "") -> str:
    """How Horizon's _limits.html writes it: intcomma, 'No Limit' for -1."""
    lim = "No Limit" if limit < 0 else f"{limit:,}"
    return f"{used:,} of {lim}{unit} Used"


def pools_equal_san(ks, san_admin, timeout: float = 180) -> dict:
    """`openstack volume backend pool list --long` as admin: each zol pool's total/free
    capacity equals the SAN's `zfs list -p used,available` of its parent (the driver reports
    used+available and available, in GiB to 2 decimals; its stats refresh every 10 s)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = osc(ks, "zol-admin", "volume", "backend", "pool", "list", "--long")
        caps = {r["Name"]: r["Capabilities"] for r in rows}
        diffs, seen = [], {}
        for backend, parent in PARENTS.items():
            name = next((n for n in caps if n.endswith(f"@{backend}#{backend}")), None)
            assert name, f"no pool of backend {backend} in {list(caps)}"
            c = caps[name]
            used, avail = (int(x) for x in san_admin.out(
                ["zfs", "list", "-H", "-p", "-o", "used,available", parent]).split())
            want = {"total_capacity_gb": (used + avail) / GIB, "free_capacity_gb": avail / GIB}
            seen[name] = {k: (float(c[k]), round(v, 2)) for k, v in want.items()}
            diffs += [(name, k, float(c[k]), v) for k, v in want.items()
                      if abs(float(c[k]) - v) > 0.011]
        if not diffs:
            return seen
        assert time.monotonic() < deadline, f"pool capacity (CLI) vs SAN: {diffs}"
        time.sleep(5)


def assert_home_is_volumes(b) -> None:
    """After login a person lands on Project > Volumes (tools/horizon's user_home: Horizon's
    default, Compute > Overview, is an error page without Nova) and reads no error but the
    one Horizon always shows there without Nova (doc/dashboard.md)."""
    assert b.path() == "/project/volumes/", b.path()
    b.wait(lambda: b.css("table#volumes"), 60, "the volumes table")
    assert_only_the_nova_banner(b.text())


def test_wrong_password_is_refused(dash):
    b = dash["b"]
    b.login("demo", "not-" + dash["ks"].password("demo"))
    assert b.path().startswith("/auth/login"), b.path()
    assert "Invalid credentials." in b.text()
    b.go("/project/volumes/")
    assert b.path().startswith("/auth/login"), "an anonymous visitor reached " + b.path()


def test_member_volume_lifecycle(dash, published_ami, san_admin):
    """demo member: 1 GiB zol-thin volume -> Available; snapshot; volume from it; the quota
    usage Horizon shows; extend to 2 GiB; volume from the published Debian AMI; delete all;
    each step on the SAN too."""
    ks, b = dash["ks"], dash["b"]
    b.login("demo", ks.password("demo"))
    assert_home_is_volumes(b)

    cinder = keystone_cinder(ks, "demo")
    vols, snaps_api = cinder.volumes, cinder.volume_snapshots
    before = cinder.limits.get().absolute
    before = {x.name: x.value for x in before}
    made = []
    try:
        # 1. create a 1 GiB volume of type zol-thin
        b.go("/project/volumes/create/")
        b.fill("id_name", "dash-vol-1")
        b.choose("id_type", "zol-thin")
        b.fill("id_size", "1")
        b.submit()
        v1 = api_wait(lambda: by_name(vols, "dash-vol-1"), "available", what="dash-vol-1").id
        made.append(v1)
        assert b.see("volumes", "/project/volumes/", "dash-vol-1", "Available", "1GiB",
                     "zol-thin") == v1
        wait_san(san_admin, f"{THIN}/volume-{v1}", GIB)

        # 2. a snapshot of it
        b.go(f"/project/volumes/{v1}/create_snapshot/")
        b.fill("id_name", "dash-snap-1")
        b.submit()
        s1 = api_wait(lambda: by_name(snaps_api, "dash-snap-1"), "available",
                      what="dash-snap-1").id
        assert b.see("volume_snapshots", "/project/snapshots/", "dash-snap-1", "Available",
                     "dash-vol-1") == s1
        snaps = san_admin.out(["zfs", "list", "-H", "-o", "name", "-t", "snapshot", "-r",
                               f"{THIN}/volume-{v1}"]).split()
        assert f"{THIN}/volume-{v1}@snapshot-{s1}" in snaps, snaps

        # 3. a volume from that snapshot
        b.go(f"/project/volumes/create/?snapshot_id={s1}")
        b.fill("id_name", "dash-vol-2")
        b.submit()
        v2 = api_wait(lambda: by_name(vols, "dash-vol-2"), "available", what="dash-vol-2").id
        made.append(v2)
        b.see("volumes", "/project/volumes/", "dash-vol-2", "Available", "1GiB")
        wait_san(san_admin, f"{THIN}/volume-{v2}", GIB)

        # quotas as the member sees them (Project > Overview needs Nova, see doc/dashboard.md):
        # the Volume Limits of Create Volume and the Snapshot Limits of Create Snapshot;
        # 2 volumes and 1 snapshot of 1 GiB more than before: 3 GiB (snapshots count)
        limits = {x.name: x.value for x in cinder.limits.get().absolute}
        gb, nvol, nsnap = (before["totalGigabytesUsed"] + 3, before["totalVolumesUsed"] + 2,
                           before["totalSnapshotsUsed"] + 1)
        assert (limits["totalGigabytesUsed"], limits["totalVolumesUsed"],
                limits["totalSnapshotsUsed"]) == (gb, nvol, nsnap), limits
        page = "/project/volumes/create/"
        assert horizon_used(b, page, "Total Gibibytes") == \
            quota_line(gb, limits["maxTotalVolumeGigabytes"], " GiB")
        assert horizon_used(b, page, "Number of Volumes") == \
            quota_line(nvol, limits["maxTotalVolumes"])
        page = f"/project/volumes/{v1}/create_snapshot/"
        assert horizon_used(b, page, "Number of Snapshots") == \
            quota_line(nsnap, limits["maxTotalSnapshots"])

        # 4. extend the first to 2 GiB
        b.go(f"/project/volumes/{v1}/extend/")
        b.fill("id_new_size", "2")
        b.submit()
        deadline = time.monotonic() + 300
        while (v := vols.get(v1)).size != 2 or v.status != "available":
            assert v.status != "error_extending" and time.monotonic() < deadline, v.status
            time.sleep(2)
        b.see("volumes", "/project/volumes/", "dash-vol-1", "Available", "2GiB")
        wait_san(san_admin, f"{THIN}/volume-{v1}", 2 * GIB)

        # 5. a volume from the published Debian AMI: Create Volume, source Image, that AMI
        ami = published_ami
        size = max(ami["min_disk"], math.ceil(ami["size"] / GIB))
        t0 = time.monotonic()
        b.go("/project/volumes/create/")
        b.choose("id_volume_source_type", "image_source")
        b.choose("id_image_source", ami["id"])
        b.choose("id_type", "zol-thin")
        b.fill("id_name", "dash-vol-ami")
        b.fill("id_size", str(size))
        b.submit()
        v3 = api_wait(lambda: by_name(vols, "dash-vol-ami"), "available", timeout=1800,
                      what="dash-vol-ami").id
        made.append(v3)
        took = time.monotonic() - t0
        b.see("volumes", "/project/volumes/", "dash-vol-ami", "Available", f"{size}GiB",
              "Yes")  # bootable
        wait_san(san_admin, f"{THIN}/volume-{v3}", size * GIB)
        dev = f"/dev/zvol/{THIN}/volume-{v3}"
        magic = san_admin.out(["od", "-An", "-tx1", "-j1080", "-N2", dev]).split()
        assert "".join(magic) == EXT4_MAGIC, f"no ext4 superblock on {dev}: {magic}"
        t1 = time.monotonic()
        head = san_admin.out(["sh", "-c", f"head -c {ami['size']} {dev} | sha512sum"],
                             timeout=900).split()[0]
        assert head == ami["sha512"], "the zvol's first bytes are not the AMI's filesystem"
        print(f"volume from the {ami['size'] / 2 ** 20:.0f} MiB AMI {ami['name']!r} "
              f"({size} GiB): Available {took:.0f} s after Create; sha512 of its "
              f"{ami['size']} first bytes on the SAN in {time.monotonic() - t1:.0f} s")

        # 6. delete all: the volumes without snapshots, the snapshot, then the first volume
        b.go("/project/volumes/")
        b.click_action("volumes", [v2, v3], "delete", "Delete Volumes")
        for v in (v2, v3):
            gone(vols, v, what="volume")
        for name in ("dash-vol-2", "dash-vol-ami"):
            b.wait_row_gone("volumes", "/project/volumes/", name, timeout=30)
        for v in (v2, v3):
            wait_san(san_admin, f"{THIN}/volume-{v}", None)
        b.go("/project/snapshots/")
        b.click_action("volume_snapshots", [s1], "delete", "Delete Volume Snapshot")
        gone(snaps_api, s1, what="snapshot")
        b.wait_row_gone("volume_snapshots", "/project/snapshots/", "dash-snap-1", timeout=30)
        b.go("/project/volumes/")
        b.click_action("volumes", [v1], "delete", "Delete Volume")
        gone(vols, v1, what="volume")
        b.wait_row_gone("volumes", "/project/volumes/", "dash-vol-1", timeout=30)
        wait_san(san_admin, f"{THIN}/volume-{v1}", None)
        left = san_admin.out(["zfs", "list", "-H", "-o", "name", "-t", "all", "-r", THIN])
        assert not any(v in left for v in made), left
        made.clear()
    finally:
        cinder = keystone_cinder(ks, "admin")
        for s in cinder.volume_snapshots.list(search_opts={"all_tenants": 1}):
            if s.name == "dash-snap-1":
                cinder.volume_snapshots.delete(s)
        for v in made:  # what the UI did not get to delete
            try:
                cinder.volumes.delete(v, cascade=True)
            except Exception:
                pass


def test_admin_volume_type_with_extra_specs_and_pools(dash, san_admin):
    """admin: create a volume type with the driver's extra specs in Admin > Volume Types; a
    volume of it lands on the zol-thin backend; the pools and their services are visible."""
    ks, b = dash["ks"], dash["b"]
    b.login("admin", ks.password("admin"))
    b.go("/admin/volume_types/create_type")
    b.fill("id_name", "dash-gold")
    b.fill("id_vol_type_description", "thin zvols on the zol SAN")
    b.submit()
    cinder = keystone_cinder(ks, "admin")
    type_id = b.see("volume_types", "/admin/volume_types/", "dash-gold",
                    "thin zvols on the zol SAN")
    vol = None
    try:
        for key, value in (("volume_backend_name", "zol-thin"), ("provisioning:type", "thin")):
            b.go(f"/admin/volume_types/{type_id}/extras/create/")
            b.fill("id_key", key)
            b.fill("id_value", value)
            b.submit()
        b.go(f"/admin/volume_types/{type_id}/extras/")
        text = b.text()
        assert "volume_backend_name" in text and "zol-thin" in text, text
        assert "provisioning:type" in text, text
        assert cinder.volume_types.get(type_id).get_keys() == {
            "volume_backend_name": "zol-thin", "provisioning:type": "thin"}

        # a volume of the new type is scheduled to the zol-thin pool (a thin zvol)
        vol = cinder.volumes.create(1, volume_type="dash-gold", name="dash-gold-vol")
        deadline = time.monotonic() + 180
        while (v := cinder.volumes.get(vol.id)).status != "available":
            assert v.status != "error" and time.monotonic() < deadline, v.status
            time.sleep(2)
        assert getattr(v, "os-vol-host-attr:host").endswith("@zol-thin#zol-thin")
        ds = f"{THIN}/volume-{vol.id}"
        assert volsize(san_admin, ds) == GIB
        refres = san_admin.out(["zfs", "get", "-H", "-o", "value", "refreservation", ds])
        assert refres.strip() == "none", refres

        # the pools: by name in the admin's migrate form (the only pools view of Horizon 27)
        b.go(f"/admin/volumes/{vol.id}/migrate")
        hosts = [a.get_attribute("textContent").strip()
                 for a in b.css("a[data-select-value]")]
        assert "zol-cinder-stack@zol-thick#zol-thick" in hosts, hosts
        # ... their capacity from the driver's stats: the scheduler's pools through the real
        # CLI as admin (Horizon has no capacity view), equal to what the SAN says
        seen = pools_equal_san(ks, san_admin)
        print("scheduler pools (CLI GiB, SAN GiB):", json.dumps(seen))

        # Admin > System Information: the cinder-volume services of both backends are up
        b.go("/admin/info/")
        tab = [a for a in b.css("a[data-toggle=tab]") if "Block Storage" in a.text]
        assert tab, "no Block Storage Services tab in System Information"
        tab[0].click()
        text = b.wait(lambda: "zol-cinder-stack@zol-thin" in b.text() and b.text(), 30,
                      "the block storage services")
        assert "zol-cinder-stack@zol-thick" in text and "Up" in text, text

        # Admin > System > Defaults: the volume quotas every project starts with
        defaults = cinder.quotas.defaults(ks.projects["admin"])._info
        b.go("/admin/defaults/")
        b.wait(lambda: "Default Quotas" in b.text(), 60, "the Default Quotas page")
        tab = [a for a in b.css("a[data-toggle=tab]") if "Volume Quotas" in a.text]
        if tab:  # Horizon draws the tab bar only with two tabs or more (Nova: Compute Quotas)
            tab[0].click()
        for key, label in (("volumes", "Volumes"), ("snapshots", "Volume Snapshots"),
                           ("gigabytes", "Total Size of Volumes and Snapshots (GiB)"),
                           ("volumes_zol-thin", "Volumes of Type zol-thin")):
            row = b.wait(lambda k=key: [r for r in b.css(
                f'table#volume_quotas tr[data-object-id="{k}"]') if r.text], 30,
                f"the {key} row of Volume Quotas")[0].text
            assert row == f"{label} {defaults[key]}", (row, defaults[key])
    finally:
        if vol is not None:
            cinder.volumes.delete(vol.id)
            deadline = time.monotonic() + 180
            while any(v.id == vol.id for v in cinder.volumes.list()):
                assert time.monotonic() < deadline, "dash-gold-vol not deleted"
                time.sleep(2)
            wait_san(san_admin, f"{THIN}/volume-{vol.id}", None)
        cinder.volume_types.delete(type_id)


def test_member_cannot_see_admin_panels(dash):
    ks, b = dash["ks"], dash["b"]
    b.login("demo", ks.password("demo"))
    assert_home_is_volumes(b)
    nav = b.css("#sidebar")[0].text  # the dashboards and panels a person can open
    assert "Project" in nav and "Admin" not in nav, nav
    assert b.css("#sidebar-accordion-project") and not b.css("#sidebar-accordion-admin")
    assert not b.css("a[href*='/admin/']"), "an admin link is offered to the member"
    # typing an admin URL by hand gives no admin data: Cinder's policy refuses the listing
    b.go("/admin/volume_types/")
    text = b.text()
    assert "zol-thin" not in text and "zol-thick" not in text, text
    assert "Unable to retrieve volume types" in text or b.path().startswith("/auth/login"), text
