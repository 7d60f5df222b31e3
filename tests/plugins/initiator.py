"""Session fixture: one compute-node-like initiator VM (tools/initiatorvm) with the kernel
iSCSI initiator, dm-multipath and Debian's os-brick, its portals mirrored onto the session SAN
VM's forwarded iSCSI portals.

A VM that cannot start is a test failure with its log, never a skip.  Set
ZOL_INITIATOR_STATE=/path/to/run_dir to reuse a VM started by hand (it is then left running).
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.scripts import load_script
from tests.plugins.sanvm import SanAdmin

REPO = Path(__file__).resolve().parents[2]
INITIATORVM = REPO / "tools" / "initiatorvm"


def load_initiatorvm_module():
    return load_script(INITIATORVM, "zol_tools_initiatorvm")


class Initiator(SanAdmin):
    """Commands in the initiator VM as root; os-brick through the guest's zol-brick."""

    what = "initiator"

    def __init__(self, state: dict):
        super().__init__(state)
        self.iqn: str = state["initiator"]

    def popen(self, argv: list[str]) -> subprocess.Popen:
        return subprocess.Popen(self.base() + [shlex.join(argv)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def brick(self, op: str, *args: str, data: dict | None = None, timeout: float = 600,
              ) -> dict:
        """tools/zol-brick OP in the guest; `data` (secrets included) travels on stdin."""
        r = self.run(["/usr/local/sbin/zol-brick", op, *args], check=False,
                     input=json.dumps(data) if data is not None else None, timeout=timeout)
        if r.returncode != 0:
            log = self.run(["tail", "-n", "60", "/var/log/zol-brick.log"], check=False).stdout
            raise AssertionError("zol-brick %s failed (%d): %s\n--- os-brick log ---\n%s"
                                 % (op, r.returncode, r.stderr.strip()[-4000:], log))
        return json.loads(r.stdout)


@pytest.fixture(scope="session")
def initiator_vm(sanvm, tmp_path_factory):
    """The running initiator VM's state; its portals are the SAN VM's (127.0.0.1/.2:PORT)."""
    reuse = os.environ.get("ZOL_INITIATOR_STATE")
    if reuse:
        p = Path(reuse)
        yield json.loads((p / "state.json" if p.is_dir() else p).read_text())
        return
    build = subprocess.run([sys.executable, str(INITIATORVM), "build"], capture_output=True,
                           text=True, check=False)
    if build.returncode != 0:
        pytest.fail("initiator VM image build failed:\n" + build.stderr[-6000:], pytrace=False)
    portals = sanvm.get("iscsi_portals") or ["127.0.0.1:%d" % sanvm["iscsi_port"]]
    argv = [sys.executable, str(INITIATORVM), "start",
            "--run-dir", str(tmp_path_factory.mktemp("initiator") / "vm")]
    for portal in portals:
        argv += ["--portal", portal]
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.fail("initiator VM did not start:\n" + r.stderr[-8000:], pytrace=False)
    state = json.loads(r.stdout)
    yield state
    subprocess.run([sys.executable, str(INITIATORVM), "stop", state["run_dir"]], check=False)
    mod = load_initiatorvm_module()
    assert not mod.sanvm._alive(state["pid"]), "initiator qemu pid %d still running" % (
        state["pid"])
    assert not Path(state["run_dir"]).exists(), "initiator run dir left behind"


@pytest.fixture(scope="session")
def initiator(initiator_vm) -> Initiator:
    return Initiator(initiator_vm)
