"""Tier 1 of the Cinder tests: Cinder's in-process functional harness with zol_driver.

Why in tests/system: the harness fakes only RPC and the database; the driver it loads is the
real zol_driver talking to the real SAN VM (fixture `sanvm`), so it needs the VM.  It is the
fast tier (api + scheduler + volume in one process, no rabbitmq, up in ~7 s, ~55 s in all)
and complements tests/system/test_cinder_flows.py (separate services + rabbitmq, the way an
operator runs Cinder).

Why a child process: cinder.tests.unit monkey-patches the interpreter with eventlet at import
and Cinder's TestCase cleanup deletes attributes pytest's unittest plugin still reads; so the
case (cinder_inprocess_case.py) runs under `python -m unittest` and this test asserts on its
outcome, then checks with `san_admin` that nothing it created is left on the SAN.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.plugins.zol_driver_sys import accounts, leftovers

REPO = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT = 300


def _scrub(san_admin, left: list[str]) -> None:
    """Best effort after a failed run: targets first (they hold the zvols), then datasets."""
    for line in left:
        if line.startswith("Target "):
            tid = line.split()[1].rstrip(":")
            san_admin.run(["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "delete",
                           "--force", "--tid", tid], check=False)
    for name in left:
        if name.startswith("zol/") and "@" not in name:
            san_admin.run(["zfs", "destroy", "-R", name], check=False)
        elif name.startswith("account "):
            san_admin.run(["tgtadm", "--lld", "iscsi", "--mode", "account", "--op", "delete",
                           "--user", name.split()[1]], check=False)


def test_inprocess_harness_lifecycle(sanvm, san_admin, tmp_path):
    state = tmp_path / "state.json"
    state.write_text(json.dumps(sanvm))
    result = tmp_path / "created.json"
    env = dict(os.environ, ZOL_SANVM_STATE=str(state), ZOL_INPROC_RESULT=str(result),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                        os.environ.get("PYTHONPATH")])))
    before = accounts(san_admin)
    t0 = time.monotonic()
    try:
        r = subprocess.run([sys.executable, "-m", "unittest", "-v",
                            "tests.system.cinder_inprocess_case"],
                           cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=CHILD_TIMEOUT, stdin=subprocess.DEVNULL, check=False)
    finally:
        print(f"in-process harness run: {time.monotonic() - t0:.1f} s")
        created = json.loads(result.read_text()) if result.exists() else {}
        ids = [*created.get("volumes", []), *created.get("snapshots", [])]
        left = leftovers(san_admin, ids, before) if ids else []
        if left:
            _scrub(san_admin, left)
    out = r.stdout + r.stderr
    assert r.returncode == 0, "in-process Cinder run failed:\n" + out[-12000:]
    assert "Ran 1 test" in out and "\nOK" in out, out[-4000:]
    assert len(created.get("volumes", [])) == 2 and len(created.get("snapshots", [])) == 1, \
        created
    assert not left, f"leaked on the SAN: {left}"
