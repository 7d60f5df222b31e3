"""Fixtures for real OpenStack Cinder (tools/cinder-stack) driving the zol backends.

`cinder_stack` (session): rabbitmq + cinder-api/scheduler/volume as separate processes, two zol
backends on the session SAN VM, the Glance fixture wired in when it is available.  A stack that
cannot start is a test failure with its logs, never a skip.  Set ZOL_CINDER_STATE=RUN_DIR to
reuse a stack started by hand with `tools/cinder-stack start` (it is then left running).

`cinder` (function): a python-cinderclient v3 Client as the dashboard uses it, through the
noauth plugin, at a microversion high enough for attachments, revert and messages.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.helpers.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
CINDER_STACK = REPO / "tools" / "cinder-stack"
GLANCE_ERROR = pytest.StashKey[str]()
API_VERSION = "3.64"  # attachments (3.27/3.44), revert (3.40), messages (3.3), manage (3.8)


def load_stack_module():
    """tools/cinder-stack as a module (it has no .py suffix: it is a command first)."""
    return load_script(CINDER_STACK, "zol_tools_cinder_stack")


def cinder_client(api_url: str, project_id: str, version: str = API_VERSION):
    """A cinderclient v3 Client authenticated by the noauth plugin ("admin:<project>")."""
    from cinderclient import api_versions
    from cinderclient.contrib.noauth import CinderNoAuthPlugin
    from cinderclient.v3 import client as v3client
    from keystoneauth1 import session

    auth = CinderNoAuthPlugin("admin", project_id, endpoint=api_url)
    return v3client.Client(session=session.Session(auth=auth),
                           api_version=api_versions.APIVersion(version))


def iscsi_write_flushed(url: str, data: bytes, timeout: float = 600) -> None:
    """Write `data` at offset 0 of the LUN and flush it (SYNCHRONIZE CACHE) before returning.

    tests.helpers.iscsi.write uses qemu-img's default destination cache mode "unsafe", which
    skips the final flush: tgtd writes buffered into the zvol, so a ZFS snapshot taken right
    after may not contain the data (measured: a snapshot read back as zeros).  A real guest
    flushes; so must the tests.
    """
    import subprocess
    import tempfile
    with tempfile.NamedTemporaryFile(prefix="iscsi-w-") as f:
        f.write(data)
        f.flush()
        r = subprocess.run(["qemu-img", "convert", "-n", "-t", "writeback", "-f", "raw", "-O",
                            "raw", f.name, url], capture_output=True, text=True,
                           timeout=timeout, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"iSCSI write failed: {r.stderr.strip()}")


class CinderStack:
    """A running stack: its state (pids, logs, conf), a client factory and waiting helpers."""

    def __init__(self, state: dict, module):
        self.state = state
        self.mod = module
        self.api_url: str = state["api_url"]
        self.project_id: str = state["project_id"]
        self.host: str = state["host"]

    def client(self, version: str = API_VERSION):
        return cinder_client(self.api_url, self.project_id, version)

    def pools(self) -> dict[str, dict]:
        return {p["name"]: p["capabilities"] for p in self.mod.get_pools(self.state)}

    def pool(self, backend: str) -> dict:
        for name, caps in self.pools().items():
            if name.split("#")[0] == f"{self.host}@{backend}":
                return caps
        raise AssertionError(f"no pool for backend {backend} in {list(self.pools())}")

    def restart_volume(self) -> None:
        self.mod.restart_volume(self.state)

    def log(self, svc: str = "volume") -> str:
        return Path(self.state["logs"][svc]).read_text(errors="replace")

    def log_size(self, svc: str = "volume") -> int:
        return Path(self.state["logs"][svc]).stat().st_size

    def log_since(self, offset: int, svc: str = "volume") -> str:
        with open(self.state["logs"][svc], "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")


def wait_status(get, want: str | tuple, timeout: float = 180, fail=("error",),
                what: str = "resource"):
    """Poll `get()` until its .status is in `want`; a status in `fail` raises at once."""
    want = (want,) if isinstance(want, str) else tuple(want)
    deadline = time.monotonic() + timeout
    obj = get()
    while obj.status not in want:
        if obj.status in fail and obj.status not in want:
            raise AssertionError("{} {} went to {} (wanted {})".format(what, obj.id, obj.status,
                                                                  "/".join(want)))
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} {obj.id} still {obj.status} after {timeout:.0f} s "
                                 f"(wanted {'/'.join(want)})")
        time.sleep(1)
        obj = get()
    return obj


def wait_gone(get, timeout: float = 180, what: str = "resource") -> None:
    """Poll until `get()` raises NotFound; an error_deleting status fails at once."""
    from cinderclient import exceptions
    deadline = time.monotonic() + timeout
    while True:
        try:
            obj = get()
        except exceptions.NotFound:
            return
        if obj.status in ("error_deleting", "error"):
            raise AssertionError(f"{what} {obj.id} went to {obj.status} while deleting")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} {obj.id} not deleted after {timeout:.0f} s "
                                 f"(status {obj.status})")
        time.sleep(1)


def stop_and_check(mod, state: dict) -> None:
    """Stop a stack started by a fixture and assert that none of its processes (services,
    rabbitmq + epmd, etcd) outlived `cinder-stack stop`."""
    pids = dict(state["pids"], rabbit=state["rabbit"]["pid"], epmd=state["rabbit"]["epmd_pid"])
    if "etcd" in state:
        pids["etcd"] = state["etcd"]["pid"]
    mod.stop(state)
    left = {name: pid for name, pid in pids.items() if mod._alive(pid)}
    assert not left, f"processes still running after cinder-stack stop: {json.dumps(left)}"


@pytest.fixture(scope="session")
def cinder_stack_module():
    return load_stack_module()


@pytest.fixture(scope="session")
def cinder_stack(request, sanvm, tmp_path_factory, cinder_stack_module):
    """Real cinder-api/scheduler/volume + rabbitmq on the session SAN VM (zol-thin, zol-thick)."""
    mod = cinder_stack_module
    reuse = os.environ.get("ZOL_CINDER_STATE")
    if reuse:
        yield CinderStack(mod.load_state(reuse), mod)
        return
    glance_url = None
    try:  # image flows need Glance; a broken Glance must not take the other flows down
        glance_url = request.getfixturevalue("glance_server").url
    except (pytest.FixtureLookupError, pytest.fail.Exception) as exc:
        request.config.stash.setdefault(GLANCE_ERROR, str(exc)[:2000])
    try:
        state = mod.start(sanvm, tmp_path_factory.mktemp("cinder-stack"), glance_url)
    except mod.StackError as exc:
        pytest.fail(f"Cinder stack did not start: {exc}", pytrace=False)
    stack = CinderStack(state, mod)
    yield stack
    stop_and_check(mod, state)


@pytest.fixture
def cinder(cinder_stack):
    return cinder_stack.client()
