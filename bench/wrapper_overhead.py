"""What the SAN wrapper costs per command: wrapper (validate + log + exec) vs the bare command.

The executed binary is /bin/true copied into a temp dir and named as zfs in a temp
wrapper config, so the difference is the wrapper alone: interpreter start (python3 -IS, as the
shebang does), config parse, validation, log line, execve.  Each variant runs N times locally,
one after another; the figures are per command (median and mean) and the ratio to the bare
command.  Also: in-process validation alone (the part that grows with the grammar), per call.

    python -m bench wrapper_overhead [N]
"""
from __future__ import annotations

import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WRAPPER = REPO / "wrappers" / "zol-ssh-wrapper"
PYTHON = "/usr/bin/python3"
V = "zol/cinder/volume-0b6e8f2a-1111-4c2d-9a1b-3c4d5e6f7a8b"
ARGV = ["zfs", "list", "-H", "-p", "-o", "name,volsize,used", "-t", "volume,snapshot", "-r", V]


def _time_runs(argv: list[str], n: int, env: dict[str, str]) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, check=False)
        out.append(time.perf_counter() - t0)
        if r.returncode != 0:
            raise RuntimeError("%s failed (%d): %s" % (shlex.join(argv), r.returncode,
                                                       r.stderr.decode()[-300:]))
    return out


def _load_wrapper():
    from tests.helpers.scripts import load_script
    return load_script(WRAPPER, "zol_ssh_wrapper_bench")


def run(n: int = 200) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="zol-bench-wrapper-") as d:
        dd = Path(d)
        true = dd / "true"
        shutil.copy2("/bin/true", true)
        conf = dd / "wrapper.conf"
        conf.write_text("[wrapper]\nparents = zol/cinder zol/cinder-thick\n"
                        "iqn_prefix = iqn.2010-10.org.openstack:\n"
                        f"zfs = {true}\nlog_file = {dd / 'wrapper.log'}\n"
                        f"lock_file = {dd / 'lock'}\nsyslog = no\n")
        conf.chmod(0o644)
        env = {"PATH": "/usr/bin:/bin"}
        ssh_env = dict(env, SSH_ORIGINAL_COMMAND=shlex.join(ARGV),
                       SSH_CONNECTION="192.0.2.10 40000 192.0.2.1 22")
        variants = {
            "direct": ([str(true)] + ARGV[1:], env),
            "wrapper (local mode)": ([str(WRAPPER), str(conf), "--"] + ARGV, env),
            "wrapper (ssh mode)": ([str(WRAPPER), str(conf)], ssh_env),
            "wrapper verb (version)": ([str(WRAPPER), str(conf), "--", "zol-wrapper",
                                        "version"], env),
            "python3 -IS -c pass": ([PYTHON, "-IS", "-c", "pass"], env),
        }
        for argv, e in variants.values():          # warm the page cache
            _time_runs(argv, 3, e)
        times = {name: _time_runs(argv, n, e) for name, (argv, e) in variants.items()}
        log_lines = len((dd / "wrapper.log").read_text().splitlines())
        assert log_lines == 3 * (n + 3), log_lines  # every wrapper run logged its decision
    w = _load_wrapper()
    cfg = w.Config(
        parents=("zol/cinder", "zol/cinder-thick"), iqn_prefix="iqn.2010-10.org.openstack:",
        zfs="/usr/sbin/zfs", log_file="/dev/null")
    line = shlex.join(ARGV)
    k = 20000
    t0 = time.perf_counter()
    for _ in range(k):
        w.validate(cfg, w.split_command(line))
    per_validate = (time.perf_counter() - t0) / k

    base = statistics.median(times["direct"])
    print(f"N = {n} runs per variant, {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}; command: {shlex.join(ARGV)}")
    print(f"{'variant':26} {'median ms':>10} {'mean ms':>9} {'ratio':>7} {'overhead ms':>12}")
    result = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        result[name] = med
        print(f"{name:26} {med * 1e3:10.2f} {statistics.mean(ts) * 1e3:9.2f} "
              f"{med / base:7.1f} {(med - base) * 1e3:12.2f}")
    print(f"validation alone (split + validate, in-process): {per_validate * 1e6:.1f} us "
          f"per command ({per_validate / result['wrapper (ssh mode)'] * 100:.2f}% of a "
          "wrapper run)")
    print(f"ratio wrapper/direct: {result['wrapper (ssh mode)'] / base:.1f}x "
          f"(+{(result['wrapper (ssh mode)'] - base) * 1e3:.1f} ms per command; an SSH "
          "command to the SAN VM costs 200-600 ms)")
    result["validate"] = per_validate
    return result


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    n = int(args[0]) if args and args[0].isdigit() else 200
    run(n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
