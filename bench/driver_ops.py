"""Driver operations against the real SAN VM: one persistent SSH connection (this driver)
versus a new SSH connection per command (the 2012 driver), and get_volume_stats with 200 and
1000 zvols.

Run: `python -m bench driver_ops` (starts and stops its own SAN VM), or with
ZOL_SANVM_STATE=/path/to/run_dir to use a running one.  Options via environment:
ZOL_BENCH_CYCLES (default 3), ZOL_BENCH_STATS_COUNTS (default "200,1000").
"""
from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GIB = 1024 ** 3


class PerCommandSSH:
    """The 2012 behaviour: a fresh SSH connection (handshake + auth) for every command."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.host = kwargs["host"]
        self.connects = 0

    def execute(self, argv, check=True, timeout=None, stdin=None):
        from zol_driver.ssh import SSHExecutor

        ex = SSHExecutor(**self.kwargs)
        try:
            return ex.execute(argv, check=check, timeout=timeout, stdin=stdin)
        finally:
            self.connects += ex.connects
            ex.close()

    def close(self):
        pass


def start_vm(env: str = "ZOL_SANVM_STATE") -> tuple[dict, bool]:
    """The VM named by $env (a run dir or state.json), else a new one (stopped by the
    caller: the second value is True)."""
    ref = os.environ.get(env)
    if ref:
        p = Path(ref)
        return json.loads((p / "state.json" if p.is_dir() else p).read_text()), False
    run_dir = Path(tempfile.mkdtemp(prefix="bench-sanvm-")) / "vm"
    r = subprocess.run([sys.executable, str(REPO / "tools" / "sanvm"), "start", "--build",
                        "--run-dir", str(run_dir)], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit("SAN VM did not start:\n" + r.stderr[-4000:])
    return json.loads(r.stdout), True


def admin(state: dict, script: str, timeout: float = 1800) -> str:
    """One ssh command with the unrestricted admin key (bench setup only)."""
    argv = ["ssh", "-q", "-i", state["keys"]["admin"], "-p", str(state["ssh_port"]),
            "-o", "UserKnownHostsFile=" + state["known_hosts"], "-o", "BatchMode=yes",
            "root@127.0.0.1", script]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if r.returncode != 0:
        raise SystemExit(f"SAN setup failed: {r.stderr.strip()[-2000:]}")
    return r.stdout


def cycle(drv) -> float:
    vid = str(uuid.uuid4())
    v = {"id": vid, "name": "volume-" + vid, "size": 1, "provider_location": None,
         "provider_auth": None}
    connector = {"initiator": "iqn.1994-05.com.redhat:bench", "ip": "127.0.0.1"}
    t0 = time.monotonic()
    drv.create_volume(v)
    v.update(drv.create_export(None, v, connector))
    drv.initialize_connection(v, connector)
    drv.terminate_connection(v, connector)
    drv.remove_export(None, v)
    drv.delete_volume(v)
    return time.monotonic() - t0


def main() -> int:
    sys.path.insert(0, str(REPO))
    from tests.plugins.zol_driver_sys import make_driver

    cycles = int(os.environ.get("ZOL_BENCH_CYCLES", "3"))
    counts = [int(c) for c in os.environ.get("ZOL_BENCH_STATS_COUNTS", "200,1000").split(",")
              if c]
    state, owned = start_vm()
    try:
        persistent = make_driver(state, group="bench-persistent", use_chap_auth=True)
        ssh_args = {"host": state["host"], "port": state["ssh_port"], "username": state["user"],
                    "key_filename": state["keys"]["cinder"],
                    "known_hosts_file": state["known_hosts"]}
        per_cmd_ex = PerCommandSSH(**ssh_args)
        per_cmd = make_driver(state, executor=per_cmd_ex, group="bench-per-command",
                              use_chap_auth=True)
        cycle(persistent)                      # warm up (the connection, caches in the VM)
        res = {}
        for name, drv in (("persistent", persistent), ("per-command", per_cmd)):
            times = [cycle(drv) for _ in range(cycles)]
            res[name] = statistics.median(times)
            each = ", ".join(f"{t:.2f}" for t in times)
            print(f"cycle create+export+connect+terminate+remove+delete, {name:11}: "
                  f"median {res[name]:.2f} s over {cycles} ({each})", flush=True)
        print(f"SSH handshakes: persistent {persistent.executor.connects}, per-command "
              f"{per_cmd_ex.connects}")
        print(f"RATIO per-command / persistent = {res['per-command'] / res['persistent']:.2f}x",
              flush=True)

        parent = state["parents"][0]
        made = 0
        for n in counts:
            t0 = time.monotonic()
            names = " ".join(shlex.quote(f"{parent}/bench-{i:05d}") for i in range(made, n))
            admin(state, f"printf '%s\\n' {names} | xargs -P 16 -n 1 zfs create -s -V {GIB}")
            made = n
            setup = time.monotonic() - t0
            times = []
            for _ in range(3):
                t1 = time.monotonic()
                st = persistent.get_volume_stats(refresh=True)["pools"][0]
                times.append(time.monotonic() - t1)
            print(f"get_volume_stats with {st['total_volumes']} zvols: median "
                  f"{statistics.median(times):.2f} s (one `zfs list`; {n} zvols created in "
                  f"{setup:.0f} s)", flush=True)
        t0 = time.monotonic()
        admin(state, f"zfs list -H -o name -t volume -r {shlex.quote(parent)} | grep /bench- "
                     "| xargs -r -P 16 -n 1 zfs destroy")
        print(f"cleanup of {made} zvols: {time.monotonic() - t0:.0f} s")
        persistent.executor.close()
    finally:
        if owned:
            subprocess.run([sys.executable, str(REPO / "tools" / "sanvm"), "stop",
                            state["run_dir"]], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
