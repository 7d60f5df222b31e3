"""The main job, end to end, on embedded defaults; prints what happens at each stage.

Stages: SAN VM (real OpenZFS) up -> pool shown -> ... -> everything stopped.  Every component
started here is stopped here, also on failure (ExitStack), so a failed run leaves nothing behind.
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


def stage(name: str):
    LOG.info("=== %s", name)
    return time.monotonic()


def sh(argv: list[str], capture: bool = True) -> str:
    LOG.info("$ %s", shlex.join(argv))
    r = subprocess.run(argv, text=True, capture_output=capture)
    if r.returncode != 0:
        raise SystemExit("demo failed at: %s\n%s" % (shlex.join(argv), (r.stderr or "")[-4000:]))
    return r.stdout if capture else ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="leave the SAN VM running at the end")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[demo %(asctime)s] %(message)s",
                        datefmt="%H:%M:%S")
    sanvm = [PY, str(REPO / "tools" / "sanvm")]
    with contextlib.ExitStack() as stack:
        t = stage("1. SAN VM image (built once, then cached by recipe hash)")
        sh(sanvm + ["build"], capture=False)
        LOG.info("image ready in %.0f s", time.monotonic() - t)

        t = stage("2. start the ZFS SAN VM (real OpenZFS, tgt, sshd + restricted cinder key)")
        state = json.loads(sh(sanvm + ["start"]))
        if not args.keep:
            stack.callback(lambda: sh(sanvm + ["stop", state["run_dir"]]))
        LOG.info("SAN VM up in %.0f s: ssh 127.0.0.1:%d, iSCSI 127.0.0.1:%d, pool %s",
                 time.monotonic() - t, state["ssh_port"], state["iscsi_port"], state["pool"])
        admin = sanvm + ["ssh", state["run_dir"], "--"]
        print(sh(admin + ["zpool", "list", state["pool"]]))
        print(sh(admin + ["zfs", "list", "-r", state["pool"]]))
        print(sh(admin + ["zfs", "version"]))
        LOG.info("=== done; %s", "SAN VM left running: " + state["run_dir"] if args.keep
                 else "stopping everything")
    return 0


if __name__ == "__main__":
    sys.exit(main())
