"""The README's main job as a newcomer runs it: `tools/demo --keep-running`, then log in.

tools/demo starts its OWN SAN VM, Keystone, Glance, Cinder and Horizon (not the session's), so
this checks what a person gets: the dashboard URL and demo credentials it prints let a real
Chromium log in and see the demo's volume, the clouds.yaml it prints drives the `openstack`
CLI, and the stop commands it prints leave nothing running.  The image stage is skipped
(--skip-image): the image tier builds, boots and publishes the same triplet.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.plugins.horizon import BROWSER_KEY, Browser, assert_only_the_nova_banner, start_chromium

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z")


def state_pids(run_dir: Path) -> list[int]:
    """Every pid a component's state.json records (pid, or pids: {name: pid})."""
    try:
        st = json.loads((run_dir / "state.json").read_text())
    except (OSError, ValueError):
        return []
    pids = [st["pid"]] if isinstance(st.get("pid"), int) else []
    pids += [p for p in (st.get("pids") or {}).values() if isinstance(p, int)]
    rabbit = st.get("rabbit") or {}
    if isinstance(rabbit.get("pid"), int):
        pids.append(rabbit["pid"])
    return pids


def processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                found.append(f"{proc.name}: {cmd[:200]}")
    return found


@pytest.fixture
def demo(tmp_path):
    """tools/demo --skip-image --keep-running; yields what it printed; stops what it left."""
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, str(REPO / "tools" / "demo.py"), "--skip-image",
                        "--keep-running", "--output-dir", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=1200, check=False)
    stops = [shlex.split(line) for line in r.stdout.splitlines()
             if re.match(r"^  \S+ \S+/tools/[a-z-]+ stop \S+$", line)]
    try:
        assert r.returncode == 0, r.stderr[-6000:]
        url = re.search(r"^  Dashboard:\s+(http://127\.0\.0\.1:\d+/)$", r.stdout, re.M)
        login = re.search(r"^  Log in as:\s+demo / (\S+)\s", r.stdout, re.M)
        clouds = re.search(r"export OS_CLIENT_CONFIG_FILE=(\S+) OS_CLOUD=zol-demo", r.stdout)
        vol = re.search(r"--keep-running: everything stays up \(volume ([0-9a-f-]{36}) in "
                        r"project demo\)", r.stderr)
        assert url and login and clouds and vol, r.stdout[-4000:] + r.stderr[-2000:]
        assert {argv[1].rsplit("/", 1)[-1] for argv in stops} == \
            {"horizon", "cinder-stack", "glance-server", "sanvm", "keystone"}, stops
        print(f"tools/demo --skip-image --keep-running: {time.monotonic() - t0:.0f} s")
        yield {"url": url.group(1), "password": login.group(1), "clouds": clouds.group(1),
               "volume": vol.group(1), "stops": stops}
    finally:
        for argv in stops:  # what the newcomer runs when done (also after a failed test)
            subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture
def demo_browser(request, demo):
    """A Chromium of its own on the demo's dashboard (screenshots on failure like `browser`)."""
    b = Browser(start_chromium, demo["url"])
    before = request.config.stash.get(BROWSER_KEY, None)
    request.config.stash[BROWSER_KEY] = b
    yield b
    request.config.stash[BROWSER_KEY] = before
    b.close()


def test_keep_running_leaves_a_dashboard_a_person_can_log_into(demo, demo_browser):
    b = demo_browser
    b.login("demo", demo["password"])  # fresh profile, the printed credentials
    assert b.path() == "/project/volumes/", b.path()
    vid = b.see("volumes", "/project/volumes/", "demo-volume", "Available", "1GiB", "zol-thin")
    assert vid == demo["volume"], f"the row's volume is {vid}, tools/demo printed {demo['volume']}"
    assert_only_the_nova_banner(b.text())

    # the printed clouds.yaml, as the newcomer's CLI uses it
    env = dict(os.environ, OS_CLIENT_CONFIG_FILE=demo["clouds"], OS_CLOUD="zol-demo")
    r = subprocess.run([str(Path(sys.executable).parent / "openstack"), "volume", "list", "-f",
                        "json"], capture_output=True, text=True, env=env, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert [v["Name"] for v in json.loads(r.stdout)] == ["demo-volume"], r.stdout

    # the printed stop commands leave nothing running
    pids, dirs = [], []
    for argv in demo["stops"]:
        run_dir = Path(argv[-1])
        pids += state_pids(run_dir)
        dirs.append(str(run_dir))
        r = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        assert r.returncode == 0, f"{shlex.join(argv)}: {r.stderr[-2000:]}"
    assert pids, "no pid found in the components' state.json"
    deadline = time.monotonic() + 30
    while [p for p in pids if alive(p)] and time.monotonic() < deadline:
        time.sleep(1)
    assert not [p for p in pids if alive(p)], "still running after the stop commands"
    left = [p for d in dirs for p in processes_mentioning(d)]
    assert not left, left
    demo["stops"].clear()  # stopped: nothing for the fixture to do
