"""Tier 1 of the Cinder tests: Cinder's in-process functional harness with zol_driver.

Why in tests/system: the harness fakes only RPC and the database; the driver it loads is the
real zol_driver talking to the real SAN VM (fixture `sanvm`), so it needs the VM.  It is the
fast tier (api + scheduler + volume in one process, no rabbitmq, ~10-20 s to start) and
complements tests/system/test_cinder_flows.py (separate services + rabbitmq, the way an
operator runs Cinder).

Why a child process: cinder.tests.unit monkey-patches the interpreter with eventlet at import
and Cinder's TestCase cleanup deletes attributes pytest's unittest plugin still reads; so the
case (cinder_inprocess_case.py) runs under `python -m unittest` and this test asserts on its
outcome.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skip(reason="UNFINISHED (issue 5): under functional_helpers the volume service "
                  "with zol_driver never becomes 'up' (no heartbeat, get_pools empty; a run "
                  "hung past 200 s); the real-services tier test_cinder_flows.py covers the "
                  "flows meanwhile")
def test_inprocess_harness_lifecycle_with_data(sanvm):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(sanvm, f)
    env = dict(os.environ, ZOL_SANVM_STATE=f.name,
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                        os.environ.get("PYTHONPATH")])))
    t0 = time.monotonic()
    try:
        r = subprocess.run([sys.executable, "-m", "unittest", "-v",
                            "tests.system.cinder_inprocess_case"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
                           stdin=subprocess.DEVNULL, check=False)
    finally:
        os.unlink(f.name)
    print(f"in-process harness run: {time.monotonic() - t0:.1f} s")
    out = r.stdout + r.stderr
    assert r.returncode == 0, "in-process Cinder run failed:\n" + out[-12000:]
    assert "Ran 1 test" in out and "OK" in out, out[-4000:]
