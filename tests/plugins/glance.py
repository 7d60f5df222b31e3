"""Session fixture: one real Glance 33 (tools/glance-server) for the functional tier.

Used by the image builder tests, by the Cinder tests (volume from image, upload to image) and by
the README's demo.  A Glance that cannot start is a test failure with its log, never a skip.
Set ZOL_GLANCE_STATE=/path/to/run_dir to reuse a server you started by hand (left running).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GLANCE_SERVER = REPO / "tools" / "glance-server"


class GlanceServer:
    """A running Glance: its URL, the project the noauth filter assigns, and a client."""

    def __init__(self, state: dict):
        self.state = state
        self.url: str = state["url"]
        self.project_id: str = state["project_id"]
        self.user_id: str = state["user_id"]
        self.pid: int = state["pid"]
        self.run_dir = Path(state["run_dir"])

    def session(self, token: str = "zol-test"):
        from keystoneauth1 import session
        from keystoneauth1.token_endpoint import Token
        return session.Session(auth=Token(self.url, token))

    def client(self, token: str = "zol-test"):
        """A glanceclient v2 Client (token "USER:PROJECT" acts as that project)."""
        import glanceclient
        return glanceclient.Client("2", session=self.session(token), endpoint_override=self.url)

    def images(self) -> list:
        return list(self.client().images.list())


def start_glance(run_dir: Path) -> dict:
    r = subprocess.run([sys.executable, str(GLANCE_SERVER), "start", "--run-dir", str(run_dir)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.fail("Glance did not start:\n" + r.stderr[-6000:], pytrace=False)
    return json.loads(r.stdout)


def stop_glance(run_dir: str | Path) -> None:
    subprocess.run([sys.executable, str(GLANCE_SERVER), "stop", str(run_dir)], check=True)


@pytest.fixture(scope="session")
def glance_server(tmp_path_factory):
    """A real Glance on a free loopback port (sqlite, file store, noauth paste filter)."""
    reuse = os.environ.get("ZOL_GLANCE_STATE")
    if reuse:
        p = Path(reuse)
        yield GlanceServer(json.loads((p / "state.json" if p.is_dir() else p).read_text()))
        return
    state = start_glance(tmp_path_factory.mktemp("glance"))
    yield GlanceServer(state)
    stop_glance(state["run_dir"])
    assert not Path("/proc/%d" % state["pid"]).exists() or \
        Path("/proc/%d/stat" % state["pid"]).read_text().split(") ")[1][0] == "Z", \
        "Glance pid %d still running after stop" % state["pid"]
