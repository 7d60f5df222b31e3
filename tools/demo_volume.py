"""Show one volume's life through real Cinder on the ZFS SAN, as a person would narrate it.

Given a running SAN VM (tools/sanvm start) and Cinder stack (tools/cinder-stack start):
create a volume through the Cinder API, attach it the way Nova does (attachments API with a
connector carrying our initiator IQN), write data to the LUN and read it back with a userspace
iSCSI initiator (libiscsi via qemu-img, CHAP from the connection info), detach, delete; after
each step, show what exists on the SAN (zvol, tgt target).  Everything it creates it deletes,
also on failure.

Usage: .venv/bin/python tools/demo_volume.py --sanvm SANVM_DIR --stack STACK_DIR
       [--type zol-thin|zol-thick] [--size-gb 1] [--mib 4]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.helpers import iscsi  # noqa: E402
from tests.plugins.cinder import cinder_client, iscsi_write_flushed, wait_gone, wait_status  # noqa: E402

INITIATOR = "iqn.1993-08.org.debian:01:zol-demo"


def say(msg: str, *args) -> None:
    print(time.strftime("[%H:%M:%S] ") + (msg % args if args else msg), flush=True)


def load(ref: str) -> dict:
    p = Path(ref)
    return json.loads((p / "state.json" if p.is_dir() else p).read_text())


class San:
    """Read-only looks at the SAN with the admin key (what the operator would check)."""

    def __init__(self, st: dict):
        self.base = ["ssh", "-q", "-i", st["keys"]["admin"], "-p", str(st["ssh_port"]),
                     "-o", "UserKnownHostsFile=" + st["known_hosts"],
                     "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "root@127.0.0.1"]

    def out(self, argv: list[str]) -> str:
        r = subprocess.run(self.base + [shlex.join(argv)], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=120, check=False)
        return r.stdout.strip() if r.returncode == 0 else f"(failed: {r.stderr.strip()})"

    def zvol(self, ds: str) -> str:
        out = self.out(["zfs", "list", "-H", "-p", "-o", "name,volsize,refreservation,used",
                        "-t", "volume", ds])
        if out.startswith("(failed"):
            return "no zvol " + ds
        name, size, refres, used = out.split("\t")
        return (f"zvol {name}: volsize {int(size) / 2**30:.1f} GiB, refreservation "
                f"{int(refres) / 2**30:.1f} GiB, used {int(used) / 2**20:.1f} MiB")

    def targets(self) -> list[str]:
        out = self.out(["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show"])
        return [line for line in out.splitlines() if line.startswith("Target ")]


def client(stack: dict):
    """A cinderclient: through the stack's Keystone (the admin's password from its 0600
    credentials file) when the stack runs with auth_strategy keystone, else noauth."""
    if not stack.get("keystone"):
        return cinder_client(stack["api_url"], stack["project_id"])
    from cinderclient import api_versions
    from cinderclient.v3 import client as v3client
    from keystoneauth1 import session
    from keystoneauth1.identity import v3
    ks = load(stack["keystone"]["run_dir"])
    admin = json.loads(Path(ks["credentials"]).read_text())["admin"]
    auth = v3.Password(auth_url=ks["auth_url"], username="admin", password=admin["password"],
                       project_name=admin["project"], user_domain_name="Default",
                       project_domain_name="Default")
    return v3client.Client(session=session.Session(auth=auth),
                           api_version=api_versions.APIVersion("3.64"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sanvm", required=True, help="SAN VM run dir (tools/sanvm start)")
    ap.add_argument("--stack", required=True, help="Cinder stack run dir (tools/cinder-stack)")
    ap.add_argument("--type", default="zol-thin", choices=["zol-thin", "zol-thick"])
    ap.add_argument("--size-gb", type=int, default=1)
    ap.add_argument("--mib", type=int, default=4, help="MiB of data to write and read back")
    a = ap.parse_args(argv)
    san_state, stack = load(a.sanvm), load(a.stack)
    san = San(san_state)
    cinder = client(stack)
    parent = "zol/cinder" if a.type == "zol-thin" else "zol/cinder-thick"

    say("Cinder API %s (project %s); SAN VM ssh 127.0.0.1:%d, iSCSI 127.0.0.1:%d",
        stack["api_url"], stack["project_id"], san_state["ssh_port"], san_state["iscsi_port"])
    for p in cinder.pools.list(detailed=True):
        c = p.to_dict()["capabilities"]
        say("  pool %s: %.1f GiB total, %.1f GiB free, %s", p.name, c["total_capacity_gb"],
            c["free_capacity_gb"], "thin" if c.get("thin_provisioning_support") else "thick")

    with contextlib.ExitStack() as undo:
        t = time.monotonic()
        say("1. create a %d GiB volume of type %s", a.size_gb, a.type)
        vol = cinder.volumes.create(a.size_gb, volume_type=a.type, name="zol-demo")
        undo.callback(lambda: (cinder.volumes.delete(vol.id),
                               wait_gone(lambda: cinder.volumes.get(vol.id), what="volume"),
                               say("5. deleted the volume; SAN: %s",
                                   san.zvol(f"{parent}/volume-{vol.id}"))))
        vol = wait_status(lambda: cinder.volumes.get(vol.id), "available", what="volume")
        say("   volume %s is available after %.1f s on %s", vol.id, time.monotonic() - t,
            getattr(vol, "os-vol-host-attr:host"))
        say("   SAN: %s", san.zvol(f"{parent}/volume-{vol.id}"))

        t = time.monotonic()
        connector = {"initiator": INITIATOR, "ip": "127.0.0.1", "host": "zol-demo-compute",
                     "multipath": False, "platform": "x86_64", "os_type": "linux",
                     "do_local_attach": False}
        say("2. attach like Nova: attachments API, connector initiator %s", INITIATOR)
        att = cinder.attachments.create(vol.id, connector, None, "rw")
        undo.callback(lambda: (cinder.attachments.delete(att["id"]),
                               wait_status(lambda: cinder.volumes.get(vol.id), "available",
                                           what="volume"),
                               say("4. detached; SAN targets now: %s",
                                   san.targets() or "none")))
        cinder.attachments.complete(att["id"])
        info = att["connection_info"]
        say("   connection info after %.1f s: portal %s, %s LUN %s, auth %s (user %s)",
            time.monotonic() - t, info["target_portal"], info["target_iqn"],
            info["target_lun"], info.get("auth_method"), info.get("auth_username"))
        say("   volume status: %s; SAN targets: %s", cinder.volumes.get(vol.id).status,
            san.targets())

        host, port = info["target_portal"].rsplit(":", 1)
        url = iscsi.iscsi_url(host, int(port), info["target_iqn"], int(info["target_lun"]),
                              info.get("auth_username"), info.get("auth_password"))
        size = iscsi.capacity(url)
        say("3. libiscsi login (CHAP) OK: the LUN is %.1f GiB", size / 2**30)
        data = iscsi.random_bytes(a.mib * 2**20)
        t = time.monotonic()
        iscsi_write_flushed(url, data)
        w = time.monotonic() - t
        t = time.monotonic()
        back = iscsi.read(url, len(data))
        r = time.monotonic() - t
        same = back == data
        say("   wrote %d MiB in %.1f s, read %d MiB back in %.1f s: sha256 %s %s %s",
            a.mib, w, a.mib, r, iscsi.sha256(data)[:16], "==" if same else "!=",
            iscsi.sha256(back)[:16])
        say("   SAN: %s", san.zvol(f"{parent}/volume-{vol.id}"))
        if not same:
            say("DATA MISMATCH")
            return 1
    say("done: the volume was created, attached, written, read back identical, detached and "
        "deleted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
