"""Fake absolute `zfs` and `tgtadm` binaries for testing the SAN wrapper without a SAN.

The wrapper execs whatever absolute paths its config names, so the tests point it at these
small scripts: each records the exact argv it received (one JSON list per line), which is what
"nothing outside the grammar reaches exec" is checked against.  The fake tgtadm keeps real
state (targets, LUNs, ACLs, accounts) in a JSON file and prints `--op show` in tgtadm's format,
so the wrapper's tid allocation and restore-exports run against something that can say no.
"""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

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

FAKE_TGTADM = textwrap.dedent('''\
    #!%(python)s -S
    # fake tgtadm: records argv; keeps targets/accounts in %(dir)s/tgt.json like tgtd would.
    import fcntl, json, sys
    D = %(dir)r
    a = sys.argv[1:]
    with open(D + "/argv.jsonl", "a") as f:
        f.write(json.dumps(["tgtadm"] + a) + "\\n")
    def opt(name, default=None):
        return a[a.index(name) + 1] if name in a else default
    lockf = open(D + "/tgt.json.lock", "a")
    fcntl.flock(lockf, fcntl.LOCK_EX)
    try:
        st = json.load(open(D + "/tgt.json"))
    except OSError:
        st = {"targets": {}, "accounts": {}}
    mode, op = opt("--mode"), opt("--op")
    T = st["targets"]
    def fail(msg, rc=22):
        sys.stderr.write("tgtadm: " + msg + "\\n")
        sys.exit(rc)
    if mode == "target" and op == "show":
        for tid in sorted(T, key=int):
            t = T[tid]
            print("Target %%s: %%s" %% (tid, t["iqn"]))
            print("    System information:\\n        Driver: iscsi\\n        State: ready")
            print("    I_T nexus information:\\n    LUN information:")
            print("        LUN: 0\\n            Type: controller")
            for lun, path in sorted(t["luns"].items()):
                print("        LUN: %%s\\n            Type: disk" %% lun)
                print("            Backing store path: %%s" %% path)
            print("    Account information:")
            for u in t["accounts"]:
                print("        " + u)
            print("    ACL information:")
            for i in t["acl"]:
                print("        " + i)
    elif mode == "target" and op == "new":
        tid = opt("--tid")
        if tid in T:
            fail("this target already exists")
        if any(t["iqn"] == opt("--targetname") for t in T.values()):
            fail("this target already exists")
        T[tid] = {"iqn": opt("--targetname"), "luns": {}, "acl": [], "accounts": []}
    elif mode == "target" and op == "delete":
        if opt("--tid") not in T:
            fail("can't find the target")
        del T[opt("--tid")]
    elif mode == "target" and op in ("bind", "unbind"):
        t = T.get(opt("--tid")) or fail("can't find the target")
        ini = opt("--initiator-address")
        if op == "bind" and ini not in t["acl"]:
            t["acl"].append(ini)
        elif op == "unbind":
            t["acl"].remove(ini) if ini in t["acl"] else fail("can't find the address")
    elif mode == "logicalunit" and op == "new":
        t = T.get(opt("--tid")) or fail("can't find the target")
        if opt("--lun") in t["luns"]:
            fail("this logical unit number already exists")
        t["luns"][opt("--lun")] = opt("--backing-store")
    elif mode == "logicalunit" and op == "delete":
        t = T.get(opt("--tid")) or fail("can't find the target")
        t["luns"].pop(opt("--lun"), None) or fail("can't find the logical unit")
    elif mode == "account" and op == "show":
        print("Account list:")
        for u in sorted(st["accounts"]):
            print("    " + u)
    elif mode == "account" and op == "new":
        if opt("--user") in st["accounts"]:
            fail("this account already exists")
        st["accounts"][opt("--user")] = opt("--password")
    elif mode == "account" and op == "delete":
        st["accounts"].pop(opt("--user"), None) or fail("can't find the account")
    elif mode == "account" and op in ("bind", "unbind"):
        t = T.get(opt("--tid")) or fail("can't find the target")
        u = opt("--user")
        if u not in st["accounts"]:
            fail("can't find the account")
        if op == "bind" and u not in t["accounts"]:
            t["accounts"].append(u)
        elif op == "unbind" and u in t["accounts"]:
            t["accounts"].remove(u)
    else:
        fail("unknown mode/op", 1)
    json.dump(st, open(D + "/tgt.json", "w"))
''')


class FakeSan:
    """A directory with fake zfs/tgtadm, a zvol dir, and a wrapper config pointing at them."""

    def __init__(self, root: Path, parents=("zol/cinder", "zol/cinder-thick"),
                 iqn_prefix: str = "iqn.2010-10.org.openstack:", syslog: bool = False):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.zfs = self.root / "bin" / "zfs"
        self.tgtadm = self.root / "bin" / "tgtadm"
        self.zvol_dir = self.root / "zvol"
        self.log_file = self.root / "wrapper.log"
        self.lock_file = self.root / "wrapper.lock"
        self.conf = self.root / "wrapper.conf"
        self.parents = tuple(parents)
        self.iqn_prefix = iqn_prefix
        (self.root / "bin").mkdir(exist_ok=True)
        self.zvol_dir.mkdir(exist_ok=True)
        subst = {"python": PYTHON, "dir": str(self.root)}
        for path, text in ((self.zfs, FAKE_ZFS), (self.tgtadm, FAKE_TGTADM)):
            path.write_text(text % subst)
            path.chmod(0o755)
        self.write_conf(syslog=syslog)

    def conf_text(self, syslog: bool | str = False, **override) -> str:
        values = {"parents": " ".join(self.parents), "iqn_prefix": self.iqn_prefix,
                  "zfs": str(self.zfs), "tgtadm": str(self.tgtadm),
                  "log_file": str(self.log_file), "lock_file": str(self.lock_file),
                  "syslog": syslog if isinstance(syslog, str) else ("yes" if syslog else "no"),
                  "zvol_dir": str(self.zvol_dir)}
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
        p = self.root / "tgt.json"
        return json.loads(p.read_text()) if p.exists() else {"targets": {}, "accounts": {}}

    def reset_tgt(self) -> None:
        """What `systemctl restart tgt` does to tgtd's memory."""
        try:
            os.unlink(self.root / "tgt.json")
        except FileNotFoundError:
            pass

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

    def log_text(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""
