"""The main job, end to end, on embedded defaults; prints what happens at each stage.

1. the real OpenZFS SAN VM (image built once, cached by recipe hash) and a real Glance start;
2. `zol-image build` installs Debian bookworm (mmdebstrap), applies the cloud profile, cuts out
   and shrinks the root fs, pulls kernel+initrd out, boots the triplet the way nova does, and
   uploads ARI, AKI, then the AMI to the local Glance (an identical triplet is reused);
3. real Cinder (api, scheduler, volume + rabbitmq) loads zol_driver with two ZFS backends;
4. a volume is created, attached as nova does it, written and read back through a userspace
   iSCSI initiator, detached and deleted (tools/demo_volume.py narrates it).
Every component started here is stopped here, also on failure (ExitStack): nothing is left.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
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


def sh(argv: list[str], capture: bool = True) -> str:
    """Run one step; stderr (progress) goes to the terminal, stdout is returned."""
    LOG.info("$ %s", shlex.join(argv))
    r = subprocess.run(argv, text=True, stdout=subprocess.PIPE if capture else None,
                       check=False)
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-image", action="store_true",
                    help="skip stage 2 (the image build takes 5-15 min on 2 cores)")
    ap.add_argument("--output-dir", type=Path, default=REPO / "out",
                    help="where zol-image writes the triplet and its manifest.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[demo %(asctime)s] %(message)s",
                        datefmt="%H:%M:%S")
    sanvm = [PY, str(REPO / "tools" / "sanvm")]
    glance = [PY, str(REPO / "tools" / "glance-server")]
    stack_tool = [PY, str(REPO / "tools" / "cinder-stack")]
    t_all = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            t = stage("1. SAN VM image (built once, then cached by recipe hash) + Glance venv")
            sh(sanvm + ["build"], capture=False)
            sh(glance + ["venv"], capture=False)
            LOG.info("ready in %.0f s", time.monotonic() - t)

            t = stage("1b. start the ZFS SAN VM and Glance (in parallel)")
            vm_proc = start_json(sanvm + ["start"])
            gl_proc = start_json(glance + ["start"])
            # register each stop as soon as its component is up, whatever the other one did
            vm = gl = None
            for proc, what in ((gl_proc, "Glance"), (vm_proc, "the SAN VM")):
                try:
                    state = wait_json(proc, what)
                except DemoError as exc:
                    LOG.error("%s", exc)
                    continue
                if proc is gl_proc:
                    gl = state
                    stack.callback(sh, glance + ["stop", gl["run_dir"]])
                else:
                    vm = state
                    stack.callback(sh, sanvm + ["stop", vm["run_dir"]])
            if vm is None or gl is None:
                raise DemoError("%s did not start; its messages are above"
                                % ("the SAN VM" if vm is None else "Glance"))
            LOG.info("SAN VM: ssh 127.0.0.1:%d, iSCSI 127.0.0.1:%d; Glance: %s (%.0f s)",
                     vm["ssh_port"], vm["iscsi_port"], gl["url"], time.monotonic() - t)
            admin = sanvm + ["ssh", vm["run_dir"], "--"]
            print(sh(admin + ["zfs", "version"]) + sh(admin + ["zpool", "list", vm["pool"]])
                  + sh(admin + ["zfs", "list", "-r", vm["pool"]]), flush=True)

            if not args.skip_image:
                t = stage("2. zol-image build: bookworm AMI/AKI/ARI, verified boot, upload")
                out = sh([PY, "-m", "image_builder.cli", "build", "--output-dir",
                          str(args.output_dir), "--glance-endpoint", gl["url"]])
                summary = json.loads(out)
                print(json.dumps(summary, indent=2), flush=True)
                LOG.info("image built, verified and uploaded in %.0f s; Glance now has:",
                         time.monotonic() - t)
                sys.path.insert(0, str(REPO))
                from glanceclient import Client
                client = Client("2", endpoint=gl["url"], token="zol-demo")
                for img in client.images.list():
                    print("  %-38s %-40s %s/%s %s" % (
                        img["id"], img["name"], img.get("disk_format"),
                        img.get("container_format"), img.get("status")), flush=True)

            t = stage("3. start real Cinder (rabbitmq, api, scheduler, volume) on the SAN VM")
            st = wait_json(start_json(stack_tool + ["start", "--sanvm", vm["run_dir"],
                                                    "--glance-url", gl["url"]]), "Cinder")
            stack.callback(sh, stack_tool + ["stop", st["run_dir"]])
            LOG.info("Cinder API %s ready in %.0f s", st.get("api_url", "?"),
                     time.monotonic() - t)

            stage("4. a volume's life through the Cinder API: create, attach, write, read, "
                  "detach, delete")
            sh([PY, str(REPO / "tools" / "demo_volume.py"), "--sanvm", vm["run_dir"],
                "--stack", st["run_dir"]], capture=False)
            LOG.info("=== stopping everything")
    except DemoError as exc:
        LOG.error("demo FAILED after %.0f s: %s", time.monotonic() - t_all, exc)
        return 1
    LOG.info("=== demo finished in %.0f s; nothing left running", time.monotonic() - t_all)
    return 0


if __name__ == "__main__":
    sys.exit(main())
