"""Session fixture: one compute-node-like initiator VM (tools/initiatorvm) with the kernel
iSCSI initiator, dm-multipath and Debian's os-brick, its portals mirrored onto the session SAN
VM's forwarded iSCSI portals.

A VM that cannot start is a test failure with its log, never a skip.  Set
ZOL_INITIATOR_STATE=/path/to/run_dir to reuse a VM started by hand (it is then left running).
"""
from __future__ import annotations

import json
import os
import queue
import shlex
import subprocess
import sys
import threading
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
        self._srv: subprocess.Popen | None = None
        self._lines: queue.Queue = queue.Queue()

    def popen(self, argv: list[str]) -> subprocess.Popen:
        return subprocess.Popen(self.base() + [shlex.join(argv)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def brick(self, op: str, *args: str, data: dict | None = None, timeout: float = 600,
              ) -> dict:
        """tools/zol-brick OP in the guest through one long-lived `zol-brick serve` (python,
        os-brick and its privsep daemon start once, as in nova-compute).  `data` (CHAP
        secrets included) travels on stdin, never on an argv."""
        req = {"op": op, "multipath": "--multipath" in args, "data": data,
               "device": next((a for a in args if a.startswith("/")), None)}
        srv = self._server()
        try:
            srv.stdin.write(json.dumps(req) + "\n")
            srv.stdin.flush()
            line = self._lines.get(timeout=timeout)
        except (OSError, queue.Empty) as exc:
            raise AssertionError("zol-brick %s: no answer (%s)\n%s" % (op, exc, self._log()))
        if line is None:
            self._srv = None
            raise AssertionError("zol-brick serve exited during %s: %s\n%s"
                                 % (op, srv.stderr.read()[-3000:], self._log()))
        out = json.loads(line)
        if not out["ok"]:
            raise AssertionError("zol-brick %s failed: %s\n%s\n%s"
                                 % (op, out["error"], out["traceback"], self._log()))
        result = out["result"]
        result["op_seconds"] = out["op_seconds"]
        return result

    def _server(self) -> subprocess.Popen:
        if self._srv is None or self._srv.poll() is not None:
            self._srv = subprocess.Popen(
                self.base() + ["/usr/local/sbin/zol-brick serve"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
            self._lines = queue.Queue()
            threading.Thread(target=self._pump, args=(self._srv, self._lines),
                             daemon=True).start()
        return self._srv

    @staticmethod
    def _pump(srv: subprocess.Popen, lines: queue.Queue) -> None:
        for line in srv.stdout:
            lines.put(line)
        lines.put(None)

    def _log(self) -> str:
        r = self.run(["tail", "-n", "60", "/var/log/zol-brick.log"], check=False)
        return "--- os-brick log ---\n" + r.stdout

    def close(self) -> None:
        """End the guest's zol-brick server (and with it os-brick's privsep daemon)."""
        srv, self._srv = self._srv, None
        if srv is None:
            return
        srv.stdin.close()
        try:
            srv.wait(timeout=60)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait(timeout=30)


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
def initiator(initiator_vm):
    ini = Initiator(initiator_vm)
    yield ini
    ini.close()
