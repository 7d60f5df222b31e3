"""The operator's and the member's flows in Horizon, in a real headless Chromium.

Real components only: Keystone 30 (tools/keystone), Glance and Cinder behind it
(keystonemiddleware; tools/glance-server / tools/cinder-stack --keystone), Horizon 27
(tools/horizon) and the session SAN VM; Debian's chromium + chromium-driver through Selenium.
Pages are checked by what a person reads on them (table rows, statuses, sizes, messages); every
volume step is also checked on the SAN itself (zvol present with the right volsize, its data,
gone after delete).  One browser and one Horizon for the module; the tests run in file order.

The image used for "volume from image" is a small raw image uploaded to this Keystone's Glance
by the test (the functional tier's Debian AMI lives in another, noauth Glance; copying its
hundreds of MiB in here would cost more than the whole dashboard tier).
"""
from __future__ import annotations

import hashlib
import io
import time

import pytest

from tests.plugins.keystone import keystone_cinder, keystone_glance_client

GIB = 1024 ** 3
THIN = "zol/cinder"
IMAGE_BYTES = b"".join(b"zol-dashboard-image %06d\n" % i for i in range(40000))  # ~1 MiB

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


def test_wrong_password_is_refused(dash):
    b = dash["b"]
    b.login("demo", "not-" + dash["ks"].password("demo"))
    assert b.path().startswith("/auth/login"), b.path()
    assert "Invalid credentials." in b.text()
    b.go("/project/volumes/")
    assert b.path().startswith("/auth/login"), "an anonymous visitor reached " + b.path()


def test_member_volume_lifecycle(dash, san_admin):
    """demo member: 1 GiB zol-thin volume -> Available; snapshot; volume from it; extend to
    2 GiB; volume from an image; delete all; each step on the SAN too."""
    ks, b = dash["ks"], dash["b"]
    b.login("demo", ks.password("demo"))
    assert b.path() == "/project/", b.path()

    # an image the member may use (public, uploaded by the admin through Keystone auth)
    glance = keystone_glance_client(ks, "admin")
    image = glance.images.create(name="zol-dash-tiny", disk_format="raw",
                                 container_format="bare", visibility="public")
    glance.images.upload(image["id"], io.BytesIO(IMAGE_BYTES))
    cinder = keystone_cinder(ks, "demo")
    vols, snaps_api = cinder.volumes, cinder.volume_snapshots
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

        # 5. a volume from the image: its first bytes on the zvol are the image's
        b.go(f"/project/volumes/create/?image_id={image['id']}")
        b.fill("id_name", "dash-vol-img")
        b.fill("id_size", "1")
        b.submit()
        v3 = api_wait(lambda: by_name(vols, "dash-vol-img"), "available", timeout=600,
                      what="dash-vol-img").id
        made.append(v3)
        b.see("volumes", "/project/volumes/", "dash-vol-img", "Available", "Yes")  # bootable
        wait_san(san_admin, f"{THIN}/volume-{v3}", GIB)
        head = san_admin.out(["sh", "-c", f"head -c {len(IMAGE_BYTES)} "
                              f"/dev/zvol/{THIN}/volume-{v3} | sha256sum"]).split()[0]
        assert head == hashlib.sha256(IMAGE_BYTES).hexdigest(), "zvol data is not the image"

        # 6. delete all: the volumes without snapshots, the snapshot, then the first volume
        b.go("/project/volumes/")
        b.click_action("volumes", [v2, v3], "delete", "Delete Volumes")
        for v in (v2, v3):
            gone(vols, v, what="volume")
        for name in ("dash-vol-2", "dash-vol-img"):
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
        glance.images.delete(image["id"])


def test_admin_volume_type_with_extra_specs_and_pools(dash, san_admin):
    """admin: create a volume type with the driver's extra specs in Admin > Volume Types; a
    volume of it lands on the zol-thin backend; the pools and their services are visible."""
    ks, b, stack = dash["ks"], dash["b"], dash["stack"]
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

        # the pools: by name in the admin's migrate form, capacity from the driver's stats
        b.go(f"/admin/volumes/{vol.id}/migrate")
        hosts = [a.get_attribute("textContent").strip()
                 for a in b.css("a[data-select-value]")]
        assert "zol-cinder-stack@zol-thick#zol-thick" in hosts, hosts
        pools = stack.pools()
        thin = next(c for n, c in pools.items() if n.endswith("@zol-thin#zol-thin"))
        assert thin["total_capacity_gb"] > 0 and thin["thin_provisioning_support"], thin
        used = int(san_admin.out(["zfs", "get", "-H", "-p", "-o", "value", "used,available",
                                  THIN]).split()[0])
        avail = int(san_admin.out(["zfs", "get", "-H", "-p", "-o", "value", "available",
                                   THIN]).strip())
        assert abs(thin["free_capacity_gb"] - avail / GIB) < 1.0, (thin, avail)
        assert used >= 0

        # Admin > System Information: the cinder-volume services of both backends are up
        b.go("/admin/info/")
        tab = [a for a in b.css("a[data-toggle=tab]") if "Block Storage" in a.text]
        assert tab, "no Block Storage Services tab in System Information"
        tab[0].click()
        text = b.wait(lambda: "zol-cinder-stack@zol-thin" in b.text() and b.text(), 30,
                      "the block storage services")
        assert "zol-cinder-stack@zol-thick" in text and "Up" in text, text
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
    assert b.path() == "/project/", b.path()
    nav = b.css("#sidebar")[0].text  # the dashboards and panels a person can open
    assert "Project" in nav and "Admin" not in nav, nav
    assert b.css("#sidebar-accordion-project") and not b.css("#sidebar-accordion-admin")
    assert not b.css("a[href*='/admin/']"), "an admin link is offered to the member"
    # typing an admin URL by hand gives no admin data: Cinder's policy refuses the listing
    b.go("/admin/volume_types/")
    text = b.text()
    assert "zol-thin" not in text and "zol-thick" not in text, text
    assert "Unable to retrieve volume types" in text or b.path().startswith("/auth/login"), text
