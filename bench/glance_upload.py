"""Upload throughput: zol-image's Glance publisher versus the `glance image-create` CLI.

Same file, same real Glance (tools/glance-server, its own run dir), alternating runs so load
changes on the shared machine hit both sides alike.  Prints MiB/s of each and the ratio.

    python -m bench glance_upload        (ZOL_BENCH_UPLOAD_MIB=256, ZOL_BENCH_ROUNDS=2)
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from image_builder import glance

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


def make_file(path: Path, mib: int) -> None:
    """Incompressible data (a real image is mostly incompressible after the fs is packed)."""
    block = os.urandom(MIB)
    with open(path, "wb") as f:
        f.writelines(block[i % 997:] + block[:i % 997] for i in range(mib))


def ours(client, local: glance.LocalFile, name: str) -> float:
    pub = glance.Publisher(client, progress=lambda *a: None)
    start = time.monotonic()
    img = pub.upload(local, name, "raw", "bare")
    elapsed = time.monotonic() - start
    client.images.delete(img["id"])
    return elapsed


def cli(url: str, path: Path, name: str) -> float:
    glance_cli = Path(sys.executable).parent / "glance"
    start = time.monotonic()
    r = subprocess.run([str(glance_cli), "--os-image-url", url, "--os-auth-token", "bench",
                        "image-create", "--name", name, "--disk-format", "raw",
                        "--container-format", "bare", "--file", str(path)],
                       capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - start
    if r.returncode != 0:
        raise RuntimeError("glance image-create failed: %s" % r.stderr[-2000:])
    image_id = next(ln.split("|")[2].strip() for ln in r.stdout.splitlines()
                    if ln.strip().startswith("| id "))
    subprocess.run([str(glance_cli), "--os-image-url", url, "--os-auth-token", "bench",
                    "image-delete", image_id], capture_output=True, check=True)
    return elapsed


def main() -> int:
    mib = int(os.environ.get("ZOL_BENCH_UPLOAD_MIB", "256"))
    rounds = int(os.environ.get("ZOL_BENCH_ROUNDS", "2"))
    with tempfile.TemporaryDirectory(prefix="zol-bench-upload-") as tmp:
        tmp = Path(tmp)
        r = subprocess.run([sys.executable, str(REPO / "tools" / "glance-server"), "start",
                            "--run-dir", str(tmp / "glance")], capture_output=True, text=True,
                           check=False)
        if r.returncode != 0:
            print("Glance did not start: %s" % r.stderr[-2000:], file=sys.stderr)
            return 1
        state = json.loads(r.stdout)
        try:
            data = tmp / "image.raw"
            make_file(data, mib)
            local = glance.hash_file(data, "disk")
            sess, endpoint, _ = glance.make_session(state["url"], "bench")
            client = glance.make_client(sess, endpoint)
            t_ours, t_cli = [], []
            for i in range(rounds):
                t_ours.append(ours(client, local, "bench-ours-%d" % i))
                t_cli.append(cli(state["url"], data, "bench-cli-%d" % i))
        finally:
            subprocess.run([sys.executable, str(REPO / "tools" / "glance-server"), "stop",
                            state["run_dir"]], check=False)
    ours_mib = mib / statistics.median(t_ours)
    cli_mib = mib / statistics.median(t_cli)
    print("file: %d MiB, %d rounds each (median), same Glance %s" % (mib, rounds, state["url"]))
    print("zol-image publisher (upload + server-side hash check): %.1f MiB/s  (%s s)"
          % (ours_mib, ", ".join("%.2f" % t for t in t_ours)))
    print("glance image-create CLI:                                %.1f MiB/s  (%s s)"
          % (cli_mib, ", ".join("%.2f" % t for t in t_cli)))
    print("ratio ours/cli: %.2f" % (ours_mib / cli_mib))
    return 0


if __name__ == "__main__":
    sys.exit(main())
