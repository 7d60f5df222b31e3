"""A fake `zfs` binary and a model of tgtd for testing the SAN wrapper without a SAN.

The wrapper execs whatever absolute zfs path its config names, so the tests point it at a
small script that records the exact argv it received (one JSON list per line), which is what
"nothing outside the grammar reaches exec" is checked against.  tgtd is a FakeTgtd
(tests/helpers/faketgtd.py) serving tgtd's management protocol on a unix socket named by the
config's tgtd_socket, so the wrapper's export verbs run against something that can say no.
"""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

from tests.helpers import fakestream
from tests.helpers.faketgtd import FakeTgtd
from tests.helpers.scripts import load_script

PYTHON = "/usr/bin/python3"
REPO = Path(__file__).resolve().parents[2]
WRAPPER = REPO / "wrappers" / "zol-ssh-wrapper"


def load_wrapper():
    """The wrapper file as a module (no .py suffix: SourceFileLoader), for in-process tests."""
    return load_script(WRAPPER, "zol_ssh_wrapper")

FAKE_ZFS = textwrap.dedent('''\
    #!%(python)s -S
    # fake zfs: records argv; `get -r` prints %(dir)s/zfs_get.out; send/recv move bytes.
    import json, sys
    D = %(dir)r
    with open(D + "/argv.jsonl", "a") as f:
        f.write(json.dumps(["zfs"] + sys.argv[1:]) + "\\n")
    a = sys.argv[1:]
    try:
        rc = int(open(D + "/zfs_exit").read())
    except OSError:
        rc = 0
    if a[:1] == ["get"] and "-r" in a:
        try:
            sys.stdout.write(open(D + "/zfs_get.out").read())
        except OSError:
            pass
    elif a[:2] in (["send", "-L"], ["send", "-t"]) or a[:1] == ["receive"] or (
            a[:1] == ["get"] and "receive_resume_token" in a):
        sys.path.insert(0, %(helpers)r)
        import fakestream
        sys.exit(fakestream.main(D, a))
    elif a[:1] == ["send"]:
        sys.stdout.buffer.write(b"STREAM:" + a[1].encode() + b"\\n" * 1000)
    elif a[:1] == ["recv"]:
        data = sys.stdin.buffer.read()
        with open(D + "/recv.log", "a") as f:
            f.write("%%s %%d\\n" %% (a[1], len(data)))
    elif a[:1] == ["version"]:
        print("zfs-fake-2.1.11")
    elif a[:1] == ["list"] and "-r" not in a and "-d" not in a:
        try:
            missing = open(D + "/zfs_missing").read().split()
        except OSError:
            missing = []
        if a[-1] in missing:
            sys.stderr.write("cannot open '%%s': dataset does not exist\\n" %% a[-1])
            sys.exit(1)
        cols = a[a.index("-o") + 1].split(",")
        print("\\t".join([a[-1]] + ["-"] * (len(cols) - 1)))
    sys.exit(rc)
''')

class FakeSan:
    """A directory with fake zfs/tgtadm, a zvol dir, and a wrapper config pointing at them."""

    def __init__(self, root: Path, parents=("zol/cinder", "zol/cinder-thick"),
                 iqn_prefix: str = "iqn.2010-10.org.openstack:", syslog: bool = False):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.zfs = self.root / "bin" / "zfs"
        self.zvol_dir = self.root / "zvol"
        self.state_dir = self.root / "state"
        self.socket = self.root / "tgtd.sock"
        self.log_file = self.root / "wrapper.log"
        self.lock_file = self.root / "wrapper.lock"
        self.conf = self.root / "wrapper.conf"
        self.parents = tuple(parents)
        self.iqn_prefix = iqn_prefix
        (self.root / "bin").mkdir(exist_ok=True)
        self.zvol_dir.mkdir(exist_ok=True)
        subst = {"python": PYTHON, "dir": str(self.root),
                 "helpers": str(Path(__file__).resolve().parent)}
        self.zfs.write_text(FAKE_ZFS % subst)
        self.zfs.chmod(0o755)
        self.tgtd = FakeTgtd().serve(str(self.socket))
        self.write_conf(syslog=syslog)

    def close(self) -> None:
        self.tgtd.stop()

    def conf_text(self, syslog: bool | str = False, **override) -> str:
        values = {"parents": " ".join(self.parents), "iqn_prefix": self.iqn_prefix,
                  "zfs": str(self.zfs),
                  "log_file": str(self.log_file), "lock_file": str(self.lock_file),
                  "syslog": syslog if isinstance(syslog, str) else ("yes" if syslog else "no"),
                  "zvol_dir": str(self.zvol_dir), "tgtd_socket": str(self.socket),
                  "state_dir": str(self.state_dir)}
        values.update(override)
        return "[wrapper]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()
                                       if v is not None)

    def write_conf(self, syslog: bool | str = False, **override) -> Path:
        self.conf.write_text(self.conf_text(syslog=syslog, **override))
        self.conf.chmod(0o644)
        return self.conf

    # --- what the fakes saw -----------------------------------------------------------
    def executed(self) -> list[list[str]]:
        p = self.root / "argv.jsonl"
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line]

    def clear(self) -> None:
        for name in ("argv.jsonl", "recv.log"):
            try:
                os.unlink(self.root / name)
            except FileNotFoundError:
                pass

    def tgt_state(self) -> dict:
        """{"targets": {tid: {"iqn", "luns": {lun: path}, "acl", "accounts"}}, "accounts"}."""
        with self.tgtd.lock:
            return {"targets": {str(t.tid): {"iqn": t.iqn,
                                             "luns": {str(n): lu.path for n, lu in t.luns.items()},
                                             "acl": list(t.acls), "accounts": list(t.accounts)}
                                for t in self.tgtd.targets.values()},
                    "accounts": dict(self.tgtd.accounts)}

    def reset_tgt(self) -> None:
        """What `systemctl restart tgt` does to tgtd's memory."""
        with self.tgtd.lock:
            self.tgtd.targets.clear()
            self.tgtd.accounts.clear()

    def export_state(self) -> dict:
        p = self.state_dir / "exports.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def set_zfs_get(self, rows: list[tuple[str, str, str]]) -> None:
        """Canned output of `zfs get -H -p -r ... zol:*` (name, property, value rows)."""
        (self.root / "zfs_get.out").write_text("".join("\t".join(r) + "\n" for r in rows))

    def set_zfs_exit(self, rc: int) -> None:
        (self.root / "zfs_exit").write_text(str(rc))

    def set_missing(self, *names: str) -> None:
        """Datasets the fake `zfs list NAME` reports as not existing."""
        (self.root / "zfs_missing").write_text("\n".join(names) + "\n")

    def add_zvol(self, ds: str) -> None:
        """Pretend udev created /dev/zvol/<ds>."""
        p = self.zvol_dir / ds
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("")

    # --- streams (tests/helpers/fakestream.py) -----------------------------------------
    def set_send_size(self, nbytes: int) -> None:
        """Payload bytes of every fake `zfs send` stream (default 1 MiB)."""
        (self.root / "send_size").write_text(str(nbytes))

    def kill_sender_after(self, nbytes: int, times: int = 1) -> None:
        """The next `times` fake senders SIGKILL themselves after nbytes of payload."""
        (self.root / "send_kill").write_text(f"{nbytes} {times}")

    def received(self) -> dict:
        """{DS: "BYTES SHA256"} of every complete fake receive."""
        return fakestream.received(str(self.root))

    def partial_receives(self) -> list[str]:
        """Datasets with a saved partial receive (what `zfs receive -A` frees)."""
        return fakestream.partials(str(self.root))

    def log_text(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""
