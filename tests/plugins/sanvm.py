"""Session fixtures: the real OpenZFS SAN VM (tools/sanvm) for the whole system tier, and a
second one (`sanvm_b`, `san_admin_b`) started only when a test asks for it.

A VM that cannot start is a test failure with the serial log shown, never a skip.  Set
ZOL_SANVM_STATE=/path/to/run_dir (ZOL_SANVM_B_STATE for the second) to reuse a VM you started
by hand (it is then left running).
"""
from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
SANVM = REPO / "tools" / "sanvm"


def load_sanvm_module():
    return load_script(SANVM, "zol_tools_sanvm")


class SanAdmin:
    """Runs commands in the SAN VM as root with the unrestricted admin key (test setup and
    inspection only; the driver always goes through the cinder key and the wrapper)."""

    def __init__(self, state: dict):
        self.state = state

    def base(self, key: str = "admin") -> list[str]:
        st = self.state
        return ["ssh", "-q", "-i", st["keys"][key], "-p", str(st["ssh_port"]),
                "-o", "UserKnownHostsFile=" + st["known_hosts"],
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                "-o", "ConnectTimeout=30", "root@127.0.0.1"]

    what = "SAN"

    def run(self, argv: list[str], check: bool = True, key: str = "admin",
            timeout: float = 300, input: str | None = None) -> subprocess.CompletedProcess:
        """`input` (e.g. secrets) goes to the command's stdin, never onto an argv."""
        r = subprocess.run(self.base(key) + [shlex.join(argv)], capture_output=True, text=True,
                           timeout=timeout, input=input,
                           stdin=subprocess.DEVNULL if input is None else None, check=False)
        if check and r.returncode != 0:
            raise AssertionError("%s command %s failed (%d): %s"
                                 % (self.what, shlex.join(argv), r.returncode,
                                    r.stderr.strip()[-3000:]))
        return r

    def out(self, argv: list[str], **kw) -> str:
        return self.run(argv, **kw).stdout


def _san_vm(tmp_path_factory, reuse_env: str, name: str, extra: tuple[str, ...] = ()):
    """Start (or reuse, from reuse_env) one SAN VM; yields its state, stops what it started."""
    reuse = os.environ.get(reuse_env)
    if reuse:
        p = Path(reuse)
        yield json.loads((p / "state.json" if p.is_dir() else p).read_text())
        return
    run_dir = tmp_path_factory.mktemp(name)
    build = subprocess.run([sys.executable, str(SANVM), "build"], capture_output=True, text=True,
                           check=False)
    if build.returncode != 0:
        pytest.fail("SAN VM image build failed:\n" + build.stderr[-6000:], pytrace=False)
    r = subprocess.run([sys.executable, str(SANVM), "start", "--run-dir", str(run_dir / "vm"),
                        *extra], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.fail(f"SAN VM {name} did not start:\n" + r.stderr[-8000:], pytrace=False)
    state = json.loads(r.stdout)
    yield state
    subprocess.run([sys.executable, str(SANVM), "stop", state["run_dir"]], check=False)
    assert_stopped(state)


@pytest.fixture(scope="session")
def sanvm(tmp_path_factory):
    """The running SAN VM's state (ports, keys, known_hosts, pool, parents)."""
    yield from _san_vm(tmp_path_factory, "ZOL_SANVM_STATE", "sanvm")


# The second SAN (migration between SANs, issue 11; replication, issue 12): same image, its own
# run dir, ports, keys and host key; a smaller pool disk and memory (it holds copies of a few
# small test volumes).  Module-scoped: only tests/system/test_second_san.py uses it, and an idle
# TCG guest still costs CPU, so it is stopped when that module ends.
SANVM_B_ARGS = ("--memory", "1536", "--pool-size", "8G")


@pytest.fixture(scope="module")
def sanvm_b(tmp_path_factory):
    """A second, independent SAN VM (ZOL_SANVM_B_STATE=/run/dir reuses one started by hand)."""
    yield from _san_vm(tmp_path_factory, "ZOL_SANVM_B_STATE", "sanvm_b", SANVM_B_ARGS)


def assert_stopped(state: dict) -> None:
    """`sanvm stop` leaves no process, overlay or port behind."""
    mod = load_sanvm_module()
    assert not mod._alive(state["pid"]), "qemu pid %d still running after stop" % state["pid"]
    assert not Path(state["run_dir"]).exists(), "run dir (overlay, pool disk) left behind"
    addrs = [("127.0.0.1", state["ssh_port"]), ("127.0.0.1", state["iscsi_port"])]
    for portal in state.get("iscsi_portals", []):  # every loopback address forwarded
        addr, _, port = portal.rpartition(":")
        addrs.append((addr, int(port)))
    for addr in addrs:
        with socket.socket() as s:
            # TIME_WAIT of closed connections is no leak; a live listener still fails the bind
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)  # raises if qemu still holds the forwarded port


@pytest.fixture(scope="session")
def san_admin(sanvm) -> SanAdmin:
    return SanAdmin(sanvm)


@pytest.fixture(scope="module")
def san_admin_b(sanvm_b) -> SanAdmin:
    admin = SanAdmin(sanvm_b)
    admin.what = "SAN B"
    return admin
