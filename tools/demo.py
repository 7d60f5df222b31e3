"""The main job, end to end, on embedded defaults; prints what happens at each stage.

1. the real OpenZFS SAN VM (image built once, cached by recipe hash), a real Keystone (admin,
   a `demo` project with its member user, service users) and a real Glance behind it start;
2. `zol-image build` installs Debian bookworm (mmdebstrap), applies the cloud profile, cuts out
   and shrinks the root fs, pulls kernel+initrd out, boots the triplet the way nova does, and
   publishes ARI, AKI, then the AMI to that Glance with the admin's clouds.yaml (password auth;
   an identical triplet is reused);
3. real Cinder (api with auth_strategy keystone, scheduler, volume + rabbitmq) loads zol_driver
   with two ZFS backends;
4. a volume is created, attached as nova does it, written and read back through a userspace
   iSCSI initiator, detached and deleted (tools/demo_volume.py narrates it);
5. Horizon starts on that Keystone; the demo prints the dashboard URL, the demo member's login
   and the clouds.yaml for the `openstack` CLI.
Every component started here is stopped here, also on failure (ExitStack): nothing is left,
unless --keep-running is given: then everything stays up (with a 1 GiB volume in the demo
project to look at) and the demo prints the commands that stop it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
LOG = logging.getLogger("zol-demo")


class DemoError(Exception):
    pass


def stage(name: str) -> float:
    LOG.info("=== %s", name)
    return time.monotonic()


def sh(argv: list[str], capture: bool = True, env: dict | None = None) -> str:
    """Run one step; stderr (progress) goes to the terminal, stdout is returned."""
    LOG.info("$ %s", shlex.join(argv))
    r = subprocess.run(argv, text=True, stdout=subprocess.PIPE if capture else None,
                       env=dict(os.environ, **env) if env else None, check=False)
    if r.returncode != 0:
        raise DemoError("step failed (exit %d): %s" % (r.returncode, shlex.join(argv)))
    return r.stdout if capture else ""


def start_json(argv: list[str]) -> subprocess.Popen:
    LOG.info("$ %s &", shlex.join(argv))
    return subprocess.Popen(argv, text=True, stdout=subprocess.PIPE)


def wait_json(proc: subprocess.Popen, what: str) -> dict:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise DemoError("%s did not start (exit %d); its messages are above"
                        % (what, proc.returncode))
    return json.loads(out)


def glance_client(ks: dict):
    """glanceclient as the admin, through Keystone (password from the 0600 credentials)."""
    from glanceclient import Client
    from keystoneauth1 import session
    from keystoneauth1.identity import v3
    admin = json.loads(Path(ks["credentials"]).read_text())["admin"]
    auth = v3.Password(auth_url=ks["auth_url"], username="admin", password=admin["password"],
                       project_name="admin", user_domain_name="Default",
                       project_domain_name="Default")
    return Client("2", session=session.Session(auth=auth))


def keep_volume(ks: dict, cloud_env: dict) -> str:
    """A 1 GiB zol-thin volume in the demo project (the member's), for the dashboard."""
    out = sh([str(REPO / ".venv" / "bin" / "openstack"), "--os-cloud", "zol-demo", "volume",
              "create", "--size", "1", "--type", "zol-thin", "--description",
              "made by tools/demo --keep-running", "demo-volume", "-f", "value", "-c", "id"],
             env=cloud_env)
    return out.strip()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-image", action="store_true",
                    help="skip stage 2 (the image build takes 5-15 min on 2 cores)")
    ap.add_argument("--output-dir", type=Path, default=REPO / "out",
                    help="where zol-image writes the triplet and its manifest.json")
    ap.add_argument("--keep-running", action="store_true",
                    help="leave the SAN VM, Keystone, Glance, Cinder and Horizon running (and a "
                         "volume in the demo project) and print how to stop them")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[demo %(asctime)s] %(message)s",
                        datefmt="%H:%M:%S")
    sanvm = [PY, str(REPO / "tools" / "sanvm")]
    glance = [PY, str(REPO / "tools" / "glance-server")]
    stack_tool = [PY, str(REPO / "tools" / "cinder-stack")]
    keystone = [PY, str(REPO / "tools" / "keystone")]
    horizon = [PY, str(REPO / "tools" / "horizon")]
    stops: list[list[str]] = []
    t_all = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            def on_exit(argv: list[str]) -> None:
                stops.insert(0, argv)
                stack.callback(sh, argv)

            t = stage("1. SAN VM image (built once, then cached by recipe hash) + the venvs of "
                      "Glance, Keystone and Horizon (+ Horizon's static files)")
            sh(sanvm + ["build"], capture=False)
            sh(glance + ["venv"], capture=False)
            sh(keystone + ["venv"], capture=False)
            sh(horizon + ["static"], capture=False)
            LOG.info("ready in %.0f s", time.monotonic() - t)

            t = stage("1b. start the ZFS SAN VM and Keystone (in parallel), then Glance "
                      "behind Keystone")
            vm_proc = start_json(sanvm + ["start"])
            ks_proc = start_json(keystone + ["start"])
            # register each stop as soon as its component is up, whatever the other one did
            vm = ks = gl = None
            for proc, what in ((ks_proc, "Keystone"), (vm_proc, "the SAN VM")):
                try:
                    state = wait_json(proc, what)
                except DemoError as exc:
                    LOG.error("%s", exc)
                    continue
                if proc is ks_proc:
                    ks = state
                    on_exit(keystone + ["stop", ks["run_dir"]])
                else:
                    vm = state
                    on_exit(sanvm + ["stop", vm["run_dir"]])
            if vm is None or ks is None:
                raise DemoError("%s did not start; its messages are above"
                                % ("the SAN VM" if vm is None else "Keystone"))
            gl = wait_json(start_json(glance + ["start", "--keystone", ks["run_dir"]]), "Glance")
            on_exit(glance + ["stop", gl["run_dir"]])
            LOG.info("SAN VM: ssh 127.0.0.1:%d, iSCSI 127.0.0.1:%d; Keystone %s; Glance %s "
                     "(%.0f s)", vm["ssh_port"], vm["iscsi_port"], ks["auth_url"], gl["url"],
                     time.monotonic() - t)
            cloud_env = {"OS_CLIENT_CONFIG_FILE": ks["clouds_yaml"]}
            admin = sanvm + ["ssh", vm["run_dir"], "--"]
            print(sh(admin + ["zfs", "version"]) + sh(admin + ["zpool", "list", vm["pool"]])
                  + sh(admin + ["zfs", "list", "-r", vm["pool"]]), flush=True)

            if not args.skip_image:
                t = stage("2. zol-image build: bookworm AMI/AKI/ARI, verified boot, upload")
                out = sh([PY, "-m", "image_builder.cli", "build", "--output-dir",
                          str(args.output_dir), "--os-cloud", "zol-admin"], env=cloud_env)
                summary = json.loads(out)
                print(json.dumps(summary, indent=2), flush=True)
                LOG.info("image built, verified and uploaded in %.0f s; Glance now has:",
                         time.monotonic() - t)
                sys.path.insert(0, str(REPO))
                for img in glance_client(ks).images.list():
                    print("  %-38s %-40s %s/%s %s" % (
                        img["id"], img["name"], img.get("disk_format"),
                        img.get("container_format"), img.get("status")), flush=True)

            t = stage("3. start real Cinder (rabbitmq, api, scheduler, volume) on the SAN VM")
            st = wait_json(start_json(stack_tool + ["start", "--sanvm", vm["run_dir"],
                                                    "--glance-url", gl["url"], "--keystone",
                                                    ks["run_dir"]]), "Cinder")
            on_exit(stack_tool + ["stop", st["run_dir"]])
            LOG.info("Cinder API %s ready in %.0f s", st.get("api_url", "?"),
                     time.monotonic() - t)

            stage("4. a volume's life through the Cinder API: create, attach, write, read, "
                  "detach, delete")
            sh([PY, str(REPO / "tools" / "demo_volume.py"), "--sanvm", vm["run_dir"],
                "--stack", st["run_dir"]], capture=False)

            t = stage("5. Horizon on Keystone: the dashboard")
            hz = wait_json(start_json(horizon + ["start", "--keystone", ks["run_dir"]]),
                           "Horizon")
            on_exit(horizon + ["stop", hz["run_dir"]])
            demo_pw = json.loads(Path(ks["credentials"]).read_text())["demo"]["password"]
            print("\n  Dashboard:   %s\n  Log in as:   demo / %s   (project demo, role "
                  "member)\n  Admin login: admin, password in %s (0600)\n  CLI:         "
                  "export OS_CLIENT_CONFIG_FILE=%s OS_CLOUD=zol-demo; openstack volume list\n"
                  "  clouds.yaml (0600) clouds: zol-demo (member), zol-admin (admin)\n"
                  % (hz["url"], demo_pw, ks["credentials"], ks["clouds_yaml"]), flush=True)
            if args.keep_running:
                vol = keep_volume(ks, cloud_env)
                stack.pop_all()
                LOG.info("=== --keep-running: everything stays up (volume %s in project demo)."
                         " Stop it all with:", vol)
                for argv_ in stops:
                    print("  " + shlex.join(argv_), flush=True)
                LOG.info("demo finished in %.0f s", time.monotonic() - t_all)
                return 0
            LOG.info("=== stopping everything")
    except DemoError as exc:
        LOG.error("demo FAILED after %.0f s: %s", time.monotonic() - t_all, exc)
        return 1
    LOG.info("=== demo finished in %.0f s; nothing left running", time.monotonic() - t_all)
    return 0


if __name__ == "__main__":
    sys.exit(main())
