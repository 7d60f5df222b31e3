"""Session fixtures: a real Keystone 30 (tools/keystone) and the services behind it.

`keystone_server` (session): Keystone on a free loopback port with an admin project/user, a
`demo` project with its member user `demo`, and the `cinder`/`glance` service users; its
clouds.yaml (clouds `zol-admin`, `zol-demo`, password auth) is `keystone_server.clouds_yaml`.
A Keystone that cannot start is a test failure with its log, never a skip.  Set
ZOL_KEYSTONE_STATE=RUN_DIR to reuse one started by hand with `tools/keystone start` (left running).

`keystone_glance` / `keystone_cinder_stack` (session): a second Glance and a second Cinder stack
whose APIs validate tokens with keystonemiddleware against that Keystone (their endpoints are
registered in its catalog).  The noauth `glance_server`/`cinder_stack` of the other tiers stay
as they are (speed); these start only for the tests that ask for them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
KEYSTONE = REPO / "tools" / "keystone"
GLANCE_SERVER = REPO / "tools" / "glance-server"
OPENSTACK = REPO / ".venv" / "bin" / "openstack"


def load_keystone_module():
    return load_script(KEYSTONE, "zol_tools_keystone")


def keystone_cinder(keystone: KeystoneServer, user: str = "admin", version: str = "3.64"):
    """A cinderclient v3 Client through Keystone (password auth as `user`, catalog lookup)."""
    from cinderclient import api_versions
    from cinderclient.v3 import client as v3client
    return v3client.Client(session=keystone.session(user),
                           api_version=api_versions.APIVersion(version))


def osc(keystone: KeystoneServer, cloud: str, *args: str, timeout: float = 300):
    """`openstack ARGS -f json` as cloud `cloud` of the clouds.yaml -> parsed JSON (the
    passwords stay in clouds.yaml: OS_CLIENT_CONFIG_FILE + OS_CLOUD, nothing on the argv)."""
    r = subprocess.run([str(OPENSTACK), *args, "-f", "json"], env=keystone.env(cloud),
                       capture_output=True, text=True, timeout=timeout, check=False)
    assert r.returncode == 0, f"openstack {' '.join(args)} failed ({r.returncode}): {r.stderr}"
    return json.loads(r.stdout) if r.stdout.strip() else None


def keystone_glance_client(keystone: KeystoneServer, user: str = "admin"):
    import glanceclient
    return glanceclient.Client("2", session=keystone.session(user))


class KeystoneServer:
    """A running Keystone: URLs, ids, credentials (from its 0600 file) and client sessions."""

    def __init__(self, state: dict):
        self.state = state
        self.run_dir = Path(state["run_dir"])
        self.url: str = state["url"]
        self.auth_url: str = state["auth_url"]
        self.pid: int = state["pid"]
        self.projects: dict = state["projects"]
        self.users: dict = state["users"]
        self.clouds_yaml = Path(state["clouds_yaml"])

    def creds(self, user: str) -> dict:
        return json.loads(Path(self.state["credentials"]).read_text())[user]

    def password(self, user: str) -> str:
        return self.creds(user)["password"]

    def session(self, user: str = "admin"):
        """A keystoneauth1 Session authenticated by password as `user` in its project."""
        from keystoneauth1 import session
        from keystoneauth1.identity import v3
        c = self.creds(user)
        auth = v3.Password(auth_url=self.auth_url, username=user, password=c["password"],
                           project_name=c["project"], user_domain_name="Default",
                           project_domain_name="Default")
        return session.Session(auth=auth)

    def env(self, cloud: str = "zol-admin") -> dict:
        """Environment for the `openstack` CLI / zol-image: OS_CLIENT_CONFIG_FILE + OS_CLOUD."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env.update(OS_CLIENT_CONFIG_FILE=str(self.clouds_yaml), OS_CLOUD=cloud)
        return env


@pytest.fixture(scope="session")
def keystone_server(tmp_path_factory):
    """A real Keystone (gunicorn, sqlite, fernet) on loopback, provisioned by tools/keystone."""
    reuse = os.environ.get("ZOL_KEYSTONE_STATE")
    if reuse:
        p = Path(reuse)
        yield KeystoneServer(json.loads((p / "state.json" if p.is_dir() else p).read_text()))
        return
    run_dir = tmp_path_factory.mktemp("keystone")
    r = subprocess.run([sys.executable, str(KEYSTONE), "start", "--run-dir", str(run_dir)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.fail("Keystone did not start:\n" + r.stderr[-6000:], pytrace=False)
    state = json.loads(r.stdout)
    yield KeystoneServer(state)
    subprocess.run([sys.executable, str(KEYSTONE), "stop", str(run_dir)], check=False)
    assert not load_keystone_module().alive(state["pid"]), \
        "Keystone pid %d still running after stop" % state["pid"]


@pytest.fixture(scope="session")
def keystone_glance(keystone_server, tmp_path_factory):
    """A real Glance behind Keystone (authtoken middleware), registered as the `image` endpoint."""
    from tests.plugins.glance import GlanceServer, stop_glance
    reuse = os.environ.get("ZOL_KEYSTONE_GLANCE_STATE")
    if reuse:
        yield GlanceServer(json.loads((Path(reuse) / "state.json").read_text()))
        return
    run_dir = tmp_path_factory.mktemp("glance-ks")
    r = subprocess.run([sys.executable, str(GLANCE_SERVER), "start", "--run-dir", str(run_dir),
                        "--keystone", str(keystone_server.run_dir)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.fail("Glance (keystone auth) did not start:\n" + r.stderr[-6000:],
                    pytrace=False)
    state = json.loads(r.stdout)
    yield GlanceServer(state)
    stop_glance(state["run_dir"])
    assert not load_keystone_module().alive(state["pid"]), \
        "Glance pid %d still running after stop" % state["pid"]


@pytest.fixture(scope="session")
def keystone_cinder_stack(sanvm, keystone_server, keystone_glance, tmp_path_factory,
                          cinder_stack_module):
    """Real Cinder (api with auth_strategy=keystone) on the session SAN VM, Glance behind
    Keystone for image flows; registered as the volumev3 and block-storage endpoints."""
    from tests.plugins.cinder import CinderStack, stop_and_check
    mod = cinder_stack_module
    reuse = os.environ.get("ZOL_KEYSTONE_CINDER_STATE")
    if reuse:
        yield CinderStack(mod.load_state(reuse), mod)
        return
    try:
        state = mod.start(sanvm, tmp_path_factory.mktemp("cinder-ks"), keystone_glance.url,
                          keystone=str(keystone_server.run_dir))
    except mod.StackError as exc:
        pytest.fail(f"Cinder stack (keystone auth) did not start: {exc}", pytrace=False)
    stack = CinderStack(state, mod)
    yield stack
    stop_and_check(mod, state)
