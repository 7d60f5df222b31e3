"""A stateful fake ZFS SAN (zfs + tgtadm + zol-wrapper verbs) for the driver's unit tests.

It implements the Executor protocol and answers in the formats captured verbatim from the
real SAN VM (tests/fixtures/san/*.json): tab-separated ``-H -p`` rows, ``-`` for unset
properties, tgtadm's indented show output and the exact error lines.  test_fakesan_matches_
captures replays the captured commands against a FakeSan in the same state and compares the
output byte for byte, so the fake cannot drift from the real thing unnoticed.

Every argv is recorded (self.calls) so the tests can publish the driver's command set for the
wrapper's contract test (tests/fixtures/driver_argv.jsonl).
"""
from __future__ import annotations

import itertools
import re
import threading
from dataclasses import dataclass, field

from zol_driver.ssh import Result, check_result, command_string

TGT_ERR = 22
USER_PROP_RE = re.compile(r"zol:[a-z]+")


@dataclass
class Dataset:
    name: str
    type: str                      # volume | snapshot | filesystem
    volsize: int | None = None
    refreservation: int | None = None
    volblocksize: int = 16384
    origin: str | None = None
    used: int = 57344
    defer_destroy: bool = False
    props: dict[str, str] = field(default_factory=dict)
    creation: int = 0


@dataclass
class FakeTarget:
    tid: int
    iqn: str
    luns: dict[int, tuple[str, int]] = field(default_factory=dict)   # lun -> (path, bytes)
    accounts: list[str] = field(default_factory=list)
    acls: list[str] = field(default_factory=list)


class FakeSan:
    host = "fakesan"

    def __init__(self, parents=("zol/cinder", "zol/cinder-thick"),
                 iqn_prefix="iqn.2010-10.org.openstack:", available=15012499456):
        self.parents = list(parents)
        self.iqn_prefix = iqn_prefix
        self.available = available
        self.ds: dict[str, Dataset] = {}
        for p in ["zol", *parents]:
            self.ds[p] = Dataset(p, "filesystem", used=212992)
        self.targets: dict[int, FakeTarget] = {}
        self.accounts: dict[str, str] = {}
        self.calls: list[list[str]] = []
        self.lock = threading.RLock()
        self.fail_next: dict[str, list[tuple[int, str]]] = {}   # argv[0:2] key -> answers
        self.busy: set[str] = set()          # datasets reported busy once per entry
        self.unlinked: set[str] = set()      # zvols whose /dev/zvol link udev dropped
        self.tgtd_up = True
        self._clock = itertools.count(1)
        self.protocol_line = "zol-ssh-wrapper 1.0.0 protocol 1\n"

    # -- Executor -------------------------------------------------------------------------------

    def execute(self, argv, check=True, timeout=None, stdin=None):
        argv = list(argv)
        command_string(argv)
        with self.lock:
            self.calls.append(argv)
            key = " ".join(argv[:2])
            if self.fail_next.get(key):
                code, err = self.fail_next[key].pop(0)
                res = Result(tuple(argv), code, "", err)
            else:
                code, out, err = self._dispatch(argv)
                res = Result(tuple(argv), code, out, err)
        return check_result(res, self.host) if check else res

    def close(self):
        pass

    # -- helpers --------------------------------------------------------------------------------

    def children(self, name):
        return [d for n, d in self.ds.items() if n.startswith((name + "/", name + "@"))]

    def snapshots(self, vol):
        return sorted((d for n, d in self.ds.items() if n.startswith(vol + "@")),
                      key=lambda d: d.creation)

    def clones(self, snap):
        return sorted(n for n, d in self.ds.items() if d.origin == snap)

    def prop(self, d: Dataset, p: str):
        if p == "name":
            return d.name
        if p == "type":
            return d.type
        if p in ("volsize",):
            return "-" if d.volsize is None else str(d.volsize)
        if p == "used":
            return str(d.used if d.type != "snapshot" else 0)
        if p == "available":
            return "-" if d.type == "snapshot" else str(self.available)
        if p == "refreservation":
            if d.type == "snapshot":
                return "-"
            return str(d.refreservation or 0)
        if p == "volblocksize":
            return str(d.volblocksize) if d.type != "filesystem" else "-"
        if p == "origin":
            return d.origin or "-"
        if p == "clones":
            if d.type != "snapshot":
                return "-"
            return ",".join(self.clones(d.name)) or "-"
        if p == "defer_destroy":
            if d.type != "snapshot":
                return "-"
            return "on" if d.defer_destroy else "off"
        if USER_PROP_RE.fullmatch(p):
            if p in d.props:
                return d.props[p]
            if d.type == "snapshot":   # snapshots inherit their volume's user properties
                vol = self.ds.get(d.name.partition("@")[0])
                return vol.props.get(p, "-") if vol else "-"
            return "-"
        return "-"

    @staticmethod
    def _open_err(name):
        return (1, "", f"cannot open '{name}': dataset does not exist\n")

    # -- zfs ------------------------------------------------------------------------------------

    def _dispatch(self, argv):
        if argv[0] == "zfs":
            return self._zfs(argv[1:])
        if argv[0] == "tgtadm":
            return self._tgtadm(argv[1:])
        if argv[0] == "zol-wrapper":
            return self._verb(argv[1:])
        return (64, "", f"zol-ssh-wrapper: denied: unknown command {argv[0]!r}\n")

    def _zfs(self, a):
        op = a[0]
        if op == "version":
            return (0, "zfs-2.1.11-1+deb12u1\nzfs-kmod-2.1.11-1+deb12u1\n", "")
        if op == "list":
            props = a[a.index("-o") + 1].split(",")
            types = a[a.index("-t") + 1].split(",") if "-t" in a else None
            name = a[-1]
            if name not in self.ds:
                return self._open_err(name)
            if "-r" in a or "-d" in a:
                rows = [self.ds[name]] + sorted(self.children(name), key=lambda d: d.name)
                if "-d" in a:
                    rows = [d for d in rows if d.name == name or
                            "/" not in d.name[len(name) + 1:] and "@" not in
                            d.name[len(name) + 1:]]
                rows = [d for d in rows if types is None or d.type in types]
            else:
                rows = [self.ds[name]]
            out = "".join("\t".join(self.prop(d, p) for p in props) + "\n" for d in rows)
            return (0, out, "")
        if op == "get":
            props = a[5].split(",")
            name = a[6]
            if name not in self.ds:
                return self._open_err(name)
            d = self.ds[name]
            return (0, "".join(f"{name}\t{p}\t{self.prop(d, p)}\n" for p in props), "")
        if op == "create":
            sparse = "-s" in a
            bs = int(a[a.index("-b") + 1]) if "-b" in a else 16384
            size = int(a[a.index("-V") + 1])
            name = a[-1]
            if name in self.ds:
                return (1, "", f"cannot create '{name}': dataset already exists\n")
            self.ds[name] = Dataset(name, "volume", size, 0 if sparse else size + 35651584,
                                    bs, creation=next(self._clock))
            return (0, "", "")
        if op == "snapshot":
            name = a[1]
            vol = name.partition("@")[0]
            if vol not in self.ds:
                return self._open_err(vol)
            if name in self.ds:
                return (1, "", f"cannot create snapshot '{name}': dataset already exists\n")
            v = self.ds[vol]
            self.ds[name] = Dataset(name, "snapshot", v.volsize, None, v.volblocksize,
                                    creation=next(self._clock))
            return (0, "", "")
        if op == "destroy":
            name = a[-1]
            deferred = "-d" in a
            if "@" in name:
                if name not in self.ds:
                    return (1, "", ("could not find any snapshots to destroy; check snapshot "
                                   "names.\n"))
                clones = self.clones(name)
                if clones:
                    if deferred:
                        self.ds[name].defer_destroy = True
                        return (0, "", "")
                    return (1, "", f"cannot destroy '{name}': snapshot has dependent clones\n"
                                   "use '-R' to destroy the following datasets:\n"
                            + "".join(c + "\n" for c in clones))
                del self.ds[name]
                return (0, "", "")
            if name not in self.ds:
                return self._open_err(name)
            kids = self.snapshots(name)
            if kids:
                return (1, "", f"cannot destroy '{name}': volume has children\n"
                               "use '-r' to destroy the following datasets:\n"
                        + "".join(k.name + "\n" for k in kids))
            if name in self.busy or self._lun_path_in_use("/dev/zvol/" + name):
                self.busy.discard(name)
                return (1, "", f"cannot destroy '{name}': dataset is busy\n")
            origin = self.ds.pop(name).origin
            if origin and origin in self.ds and self.ds[origin].defer_destroy and \
                    not self.clones(origin):
                del self.ds[origin]
            return (0, "", "")
        if op == "clone":
            snap, new = a[-2], a[-1]
            if snap not in self.ds:
                return self._open_err(snap)
            if new in self.ds:
                return (1, "", f"cannot create '{new}': dataset already exists\n")
            s = self.ds[snap]
            self.ds[new] = Dataset(new, "volume", s.volsize, 0, s.volblocksize, origin=snap,
                                   used=0, creation=next(self._clock))
            return (0, "", "")
        if op == "rename":
            old, new = a[1], a[2]
            if old not in self.ds:
                return self._open_err(old)
            if new in self.ds:
                return (1, "", f"cannot rename to '{new}': dataset already exists\n")
            self.unlinked.discard(old)           # a rename re-creates the minor
            for n in sorted(self.ds):
                if n == old or n.startswith(old + "@"):
                    d = self.ds.pop(n)
                    d.name = new + n[len(old):]
                    self.ds[d.name] = d
                    for other in self.ds.values():
                        if other.origin == n:
                            other.origin = d.name
            return (0, "", "")
        if op == "rollback":
            snap = a[1]
            if snap not in self.ds:
                return self._open_err(snap)
            vol = snap.partition("@")[0]
            newer = [s.name for s in self.snapshots(vol)
                     if s.creation > self.ds[snap].creation]
            if newer:
                return (1, "", f"cannot rollback to '{snap}': more recent snapshots or "
                               "bookmarks exist\nuse '-r' to force deletion of the following "
                               "snapshots and bookmarks:\n" + "".join(n + "\n" for n in newer))
            self.ds[vol].volsize = self.ds[snap].volsize
            return (0, "", "")
        if op == "set":
            prop, _, value = a[1].partition("=")
            name = a[2]
            if name not in self.ds:
                return self._open_err(name)
            d = self.ds[name]
            if prop == "volsize":
                d.volsize = int(value)
                if d.refreservation:
                    d.refreservation = int(value) + 35651584
            elif prop == "refreservation":
                d.refreservation = 0 if value == "none" else (d.volsize or 0) + 35651584
            else:
                d.props[prop] = value
            return (0, "", "")
        if op == "inherit":
            name = a[2]
            if name not in self.ds:
                return self._open_err(name)
            self.ds[name].props.pop(a[1], None)
            return (0, "", "")
        if op == "promote":
            return (0, "", "")
        return (64, "", f"zol-ssh-wrapper: denied: zfs {op}\n")

    # -- tgtadm ---------------------------------------------------------------------------------

    def _lun_path_in_use(self, path):
        return any(p == path for t in self.targets.values() for p, _ in t.luns.values())

    def _tgt_show(self):
        out = []
        for tid in sorted(self.targets):
            t = self.targets[tid]
            out.append(f"Target {tid}: {t.iqn}\n    System information:\n        Driver: iscsi\n"
                       "        State: ready\n    I_T nexus information:\n"
                       "    LUN information:\n")
            luns = {0: (None, 0), **t.luns}
            for lun in sorted(luns):
                path, size = luns[lun]
                kind = "controller" if lun == 0 else "disk"
                mb = (size + 500000) // 1000000
                bs = 1 if lun == 0 else 512
                out.append(
                    f"        LUN: {lun}\n            Type: {kind}\n"
                    f"            SCSI ID: IET     {tid:04d}{lun:04d}\n"
                    f"            SCSI SN: beaf{tid}{lun}\n"
                    f"            Size: {mb} MB, Block size: {bs}\n"
                    "            Online: Yes\n            Removable media: No\n"
                    "            Prevent removal: No\n            Readonly: No\n"
                    "            SWP: No\n            Thin-provisioning: No\n"
                    f"            Backing store type: {'null' if lun == 0 else 'rdwr'}\n"
                    f"            Backing store path: {path or 'None'}\n"
                    "            Backing store flags: \n")
            out.append("    Account information:\n")
            out.extend(f"        {u}\n" for u in t.accounts)
            out.append("    ACL information:\n")
            out.extend(f"        {a}\n" for a in t.acls)
        return "".join(out)

    def _tgtadm(self, a):
        if not self.tgtd_up:
            return (107, "", ("tgtadm: failed to send request hdr to tgt daemon, "
                             "Transport endpoint is not connected\n"))
        opt = {a[i]: a[i + 1] for i in range(len(a) - 1) if a[i].startswith("--")
               and not a[i + 1].startswith("--")}
        mode, op = opt["--mode"], opt["--op"]
        force = "--force" in a
        tid = int(opt["--tid"]) if "--tid" in opt else None
        t = self.targets.get(tid) if tid is not None else None
        if mode == "target" and op == "show":
            return (0, self._tgt_show(), "")
        if mode == "account" and op == "show":
            return (0, "Account list:\n" + "".join(f"    {u}\n" for u in self.accounts), "")
        if mode == "account" and op == "new":
            if opt["--user"] in self.accounts:
                return (TGT_ERR, "", "tgtadm: this account already exists\n")
            self.accounts[opt["--user"]] = opt["--password"]
            return (0, "", "")
        if mode == "account" and op == "delete":
            if opt["--user"] not in self.accounts:
                return (TGT_ERR, "", "tgtadm: can't find the account\n")
            del self.accounts[opt["--user"]]
            for tt in self.targets.values():
                if opt["--user"] in tt.accounts:
                    tt.accounts.remove(opt["--user"])
            return (0, "", "")
        if t is None:
            return (TGT_ERR, "", "tgtadm: can't find the target\n")
        if mode == "account" and op == "bind":
            if opt["--user"] not in self.accounts:
                return (TGT_ERR, "", "tgtadm: can't find the account\n")
            if opt["--user"] not in t.accounts:
                t.accounts.append(opt["--user"])
            return (0, "", "")
        if mode == "logicalunit" and op == "new":
            lun = int(opt["--lun"])
            if lun in t.luns:
                return (TGT_ERR, "", "tgtadm: this logical unit number already exists\n")
            path = opt["--backing-store"]
            ds = self.ds.get(path[len("/dev/zvol/"):])
            if ds is None:
                return (TGT_ERR, "", "tgtadm: invalid request\n")
            t.luns[lun] = (path, ds.volsize or 0)
            return (0, "", "")
        if mode == "logicalunit" and op == "delete":
            if int(opt["--lun"]) not in t.luns:
                return (TGT_ERR, "", "tgtadm: can't find the logical unit\n")
            del t.luns[int(opt["--lun"])]
            return (0, "", "")
        if mode == "target" and op == "bind":
            addr = opt["--initiator-address"]
            if addr in t.acls:
                return (TGT_ERR, "", "tgtadm: this access control rule already exists\n")
            t.acls.append(addr)
            return (0, "", "")
        if mode == "target" and op == "delete":
            assert force or not t.luns
            del self.targets[tid]
            return (0, "", "")
        return (64, "", "zol-ssh-wrapper: denied: tgtadm\n")

    # -- wrapper verbs --------------------------------------------------------------------------

    def _verb(self, a):
        if a[0] == "version":
            return (0, self.protocol_line, "")
        if a[0] == "wait-zvol":
            if a[1] in self.ds and a[1] not in self.unlinked:
                return (0, "", "")
            return (1, "", (f"zol-ssh-wrapper: /dev/zvol/{a[1]} did not appear within "
                           f"{a[2] if len(a) > 2 else 30} s\n"))
        if a[0] == "new-target":
            for t in self.targets.values():
                if t.iqn == a[1]:
                    return (0, f"{t.tid}\n", "")
            tid = next(i for i in itertools.count(1) if i not in self.targets)
            self.targets[tid] = FakeTarget(tid, a[1])
            return (0, f"{tid}\n", "")
        if a[0] == "copy":
            snap, new = a[1], a[2]
            if snap not in self.ds:
                return (68, "", f"zol-ssh-wrapper: copy {snap} -> {new} failed\n")
            if new in self.ds:
                return (68, "", (f"cannot receive new filesystem stream: destination '{new}' "
                                "exists\n"))
            s = self.ds[snap]
            self.ds[new] = Dataset(new, "volume", s.volsize, 0, s.volblocksize,
                                   creation=next(self._clock))
            tail = snap.partition("@")[2]
            self.ds[f"{new}@{tail}"] = Dataset(f"{new}@{tail}", "snapshot", s.volsize,
                                               creation=next(self._clock))
            return (0, "", "")
        if a[0] == "restore-exports":
            lines = []
            for name in sorted(self.ds):
                d = self.ds[name]
                if d.type != "volume" or "zol:iqn" not in d.props or \
                        d.props.get("zol:deleted", "0") not in ("", "0"):
                    continue
                iqn = d.props["zol:iqn"]
                existing = [t for t in self.targets.values() if t.iqn == iqn]
                if existing:
                    lines.append(f"exists tid={existing[0].tid} iqn={iqn} ds={name}\n")
                    continue
                tid = next(i for i in itertools.count(1) if i not in self.targets)
                t = FakeTarget(tid, iqn)
                t.luns[int(d.props.get("zol:lun", "1"))] = ("/dev/zvol/" + name, d.volsize)
                t.acls = d.props.get("zol:initiators", "ALL").split(",")
                if "zol:chap" in d.props:
                    user, _, secret = d.props["zol:chap"].partition(":")
                    self.accounts.setdefault(user, secret)
                    t.accounts.append(user)
                self.targets[tid] = t
                lines.append(f"restored tid={tid} iqn={iqn} lun={d.props.get('zol:lun', '1')} "
                             f"ds={name} chap={'yes' if 'zol:chap' in d.props else 'no'}\n")
            return (0, "".join(lines), "")
        return (64, "", f"zol-ssh-wrapper: denied: zol-wrapper {a[0]}\n")

    # -- test conveniences ----------------------------------------------------------------------

    def restart_tgtd(self):
        """tgt.service restart: targets and accounts vanish, the drop-in restores them."""
        self.targets.clear()
        self.accounts.clear()
        return self._verb(["restore-exports"])[1]

    def names(self, under="zol/cinder"):
        return sorted(n for n in self.ds if n.startswith(under + "/"))
