"""Replication between two real SAN VMs: the driver's rounds (zfs send -i through the Cinder
host's two SSH connections, each key confined by its SAN's wrapper) versus a plain
`ssh A zfs send | ssh B zfs receive` through the same host with unrestricted admin keys.

One run: a 1 GiB zvol on A with BENCH_MIB (default 128) MiB of random data, then
  * the first (full) copy: the driver's seed vs the plain pipe of the same snapshot;
  * ROUNDS (default 3) rounds under steady writes: a writer rewrites WRITE_MIB (default 32)
    MiB per round at random offsets while the round runs; each round's bytes, seconds and lag
    (data age on the replica when the round completes: snapshot -> received) are printed, and
    the plain pipe sends the same incremental (-i) for comparison.
Printed as ratios driver / plain (throughput) and the lag per round.

Run: `python -m bench replication` (starts and stops two SAN VMs), or with ZOL_SANVM_STATE and
ZOL_SANVM_B_STATE pointing to two running ones.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 1024 ** 2
PRIMARY, REPLICA, PLAIN = "zol/cinder", "zol/cinder-replica", "zol/cinder-thick"


def ssh_argv(state: dict, script: str) -> list[str]:
    return ["ssh", "-q", "-i", state["keys"]["admin"], "-p", str(state["ssh_port"]),
            "-o", "UserKnownHostsFile=" + state["known_hosts"], "-o", "BatchMode=yes",
            "root@127.0.0.1", script]


def plain_pipe(a: dict, b: dict, send: str, recv: str) -> tuple[int, float]:
    """ssh A `send` | ssh B `recv` through this host; (bytes, seconds)."""
    t0 = time.monotonic()
    src = subprocess.Popen(ssh_argv(a, send), stdout=subprocess.PIPE)
    dst = subprocess.Popen(ssh_argv(b, recv), stdin=subprocess.PIPE)
    moved = 0
    assert src.stdout is not None and dst.stdin is not None
    while True:
        chunk = src.stdout.read(MIB)
        if not chunk:
            break
        dst.stdin.write(chunk)
        moved += len(chunk)
    dst.stdin.close()
    if src.wait() or dst.wait():
        raise SystemExit(f"plain pipe failed: {send} | {recv}")
    return moved, time.monotonic() - t0


def main() -> int:
    sys.path.insert(0, str(REPO))
    from bench.driver_ops import admin, start_vm
    from tests.plugins.zol_driver_sys import make_driver

    total = int(os.environ.get("BENCH_MIB", "128"))
    rounds = int(os.environ.get("ROUNDS", "3"))
    write_mib = int(os.environ.get("WRITE_MIB", "32"))
    a, own_a = start_vm("ZOL_SANVM_STATE")
    b, own_b = start_vm("ZOL_SANVM_B_STATE")
    drv = None
    vid = str(uuid.uuid4())
    comp = "volume-" + vid
    src, plain = f"{PRIMARY}/{comp}", f"{PLAIN}/{comp}"
    try:
        device = ",".join(f"{k}:{v}" for k, v in {
            "backend_id": "bench-b", "san_ip": b["host"], "san_ssh_port": b["ssh_port"],
            "san_login": b["user"], "san_private_key": b["keys"]["cinder"],
            "zol_ssh_known_hosts_file": b["known_hosts"], "zol_parent_dataset": REPLICA,
            "target_ip_address": "127.0.0.1", "target_port": b["iscsi_port"]}.items())
        drv = make_driver(a, group="bench-repl", zol_parent_dataset=PRIMARY,
                          replication_device=[device], zol_replication_interval=0)
        rep = drv.replication
        admin(a, f"zfs create -s -V 1G {src} && udevadm settle && "
                 f"dd if=/dev/urandom of=/dev/zvol/{src} bs=1M count={total} oflag=direct "
                 "status=none")
        # first copy: the driver's seed vs the plain pipe of a snapshot of the same data
        admin(a, f"zfs snapshot {src}@bench-0")
        t0 = time.monotonic()
        st = rep.sync(comp)
        seed_s = time.monotonic() - t0
        pbytes, psec = plain_pipe(a, b, f"zfs send -L -e -c {src}@bench-0",
                                  f"zfs receive -s -u {plain}")
        print(f"full copy of {total} MiB: driver {st.bytes / MIB:.1f} MiB in {seed_s:.1f} s "
              f"({st.bytes / MIB / seed_s:.1f} MiB/s); plain ssh|ssh {pbytes / MIB:.1f} MiB "
              f"in {psec:.1f} s ({pbytes / MIB / psec:.1f} MiB/s)")
        print(f"RATIO full throughput driver / plain = "
              f"{(st.bytes / seed_s) / (pbytes / psec):.2f}x", flush=True)
        lags, ratios = [], []
        for i in range(1, rounds + 1):
            # steady writes: WRITE_MIB MiB at random offsets, running during the round
            writer = threading.Thread(target=admin, args=(a, (
                f"for j in $(seq {write_mib}); do dd if=/dev/urandom of=/dev/zvol/{src} "
                f"bs=1M count=1 seek=$(( $(od -An -N2 -tu2 /dev/urandom) % {total} )) "
                "oflag=direct conv=notrunc status=none; done"),), daemon=True)
            writer.start()
            time.sleep(2)
            t0 = time.monotonic()
            st = rep.sync(comp)
            secs = time.monotonic() - t0
            lag = time.time() - st.synced_at
            lags.append(lag)
            writer.join()
            admin(a, f"zfs snapshot {src}@bench-{i}")
            pb, ps = plain_pipe(a, b, f"zfs send -L -e -c -i {src}@bench-{i - 1} "
                                      f"{src}@bench-{i}", f"zfs receive -s -u -F {plain}")
            ratios.append((st.bytes / secs) / (pb / ps))
            print(f"round {i}: {write_mib} MiB rewritten meanwhile; driver {st.bytes / MIB:.1f} "
                  f"MiB in {secs:.1f} s (lag at completion {lag:.1f} s); plain "
                  f"{pb / MIB:.1f} MiB in {ps:.1f} s; throughput ratio {ratios[-1]:.2f}x",
                  flush=True)
        print(f"RATIO incremental throughput driver / plain = median "
              f"{statistics.median(ratios):.2f}x over {rounds} rounds")
        print(f"lag (replica data age when a round completes) median "
              f"{statistics.median(lags):.1f} s; RPO = zol_replication_interval + this")
    finally:
        if drv is not None:
            try:
                drv.delete_volume({"id": vid, "name": comp, "size": 1, "volume_type": {
                    "name": "r", "extra_specs": {"replication_enabled": "<is> True"}}})
            except Exception as exc:    # report, then let the VMs go anyway
                print(f"cleanup: {exc}", file=sys.stderr)
            for ds in (plain,):
                subprocess.run(ssh_argv(b, f"zfs destroy -r {ds}"), check=False)
            drv.executor.close()
            if drv.replication is not None:
                drv.replication.replica.executor.close()
        for st_, own in ((a, own_a), (b, own_b)):
            if own:
                subprocess.run([sys.executable, str(REPO / "tools" / "sanvm"), "stop",
                                st_["run_dir"]], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
