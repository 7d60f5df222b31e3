"""A stateful fake ZFS SAN (zfs + the wrapper's export verbs) for the driver's unit tests.

It implements the Executor protocol and answers zfs commands in the formats captured verbatim
from the real SAN VM (tests/fixtures/san/*.json): tab-separated ``-H -p`` rows, ``-`` for unset
properties and the exact error lines.  test_fakesan_matches_captures replays the captured
commands against a FakeSan in the same state and compares the output byte for byte, so the
fake cannot drift from the real thing unnoticed.

The export verbs (export, unexport, resize-lun, show-exports, restore-exports) are not faked:
they run the REAL wrapper (wrappers/zol-ssh-wrapper, in-process, through its grammar and
main()) against a FakeTgtd model behind tgtd's real management-socket protocol, with a
private state dir; the wrapper's own zfs calls come back to this fake.

Every argv is recorded (self.calls) so the tests can publish the driver's command set for the
wrapper's contract test (tests/fixtures/driver_argv.jsonl).
"""
from __future__ import annotations

import contextlib
import io
import itertools
import os
import re
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass, field

from tests.helpers.faketgtd import FakeTgtd
from tests.helpers.fakesan import load_wrapper
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
    guid: int = field(default_factory=lambda: next(_GUIDS))


_GUIDS = itertools.count(0x5EED0001)


# OpenZFS 2.1 defaults of the properties a volume type may set (zol_driver.policy.ZPROPS)
ZPROP_DEFAULTS = {"compression": "off", "sync": "standard", "logbias": "latency",
                  "copies": "1", "primarycache": "all", "secondarycache": "all",
                  "dedup": "off", "checksum": "on"}


def _o_props(a):
    """The -o name=value pairs of a create/clone argv."""
    return dict(a[i + 1].split("=", 1) for i in range(len(a) - 1) if a[i] == "-o")


WRAPPER_VERBS = ("export", "unexport", "resize-lun", "show-exports", "restore-exports")


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
        self.dir = tempfile.mkdtemp(prefix="fakesan-")
        self.zvol_dir = os.path.join(self.dir, "zvol")
        self.tgtd = FakeTgtd(size_of=self._zvol_size).serve(os.path.join(self.dir, "tgtd.sock"))
        self.conf = os.path.join(self.dir, "wrapper.conf")
        with open(self.conf, "w") as f:
            f.write("[wrapper]\n" + "".join(f"{k} = {v}\n" for k, v in {
                "parents": " ".join(self.parents), "iqn_prefix": iqn_prefix,
                "zfs": "/bin/false", "log_file": os.path.join(self.dir, "wrapper.log"),
                "lock_file": os.path.join(self.dir, "wrapper.lock"), "syslog": "no",
                "zvol_dir": self.zvol_dir, "tgtd_socket": self.tgtd.path,
                "state_dir": os.path.join(self.dir, "state")}.items()))
        self.wrapper = load_wrapper()
        self.wrapper.run = self._wrapper_zfs
        self.calls: list[list[str]] = []
        self.lock = threading.RLock()
        self.fail_next: dict[str, list[tuple[int, str]]] = {}   # argv[0:2] key -> answers
        self.busy: set[str] = set()          # datasets reported busy once per entry
        self.unlinked: set[str] = set()      # zvols whose /dev/zvol link udev dropped
        self.tgtd_up = True
        self._clock = itertools.count(1)
        self.protocol_line = "zol-ssh-wrapper 2.0.0 protocol 2\n"
        # `zol-wrapper capabilities` as a stock Debian tgt answers (None: verb refused)
        self.capabilities_line: str | None = "unmap=no tgt=1:1.0.85-1+deb12u1\n"
        self.stdins: list[str | None] = []
        self.copied: list[tuple[str, str]] = []

    # -- Executor -------------------------------------------------------------------------------

    def execute(self, argv, check=True, timeout=None, stdin=None):
        argv = list(argv)
        command_string(argv)
        with self.lock:
            self.calls.append(argv)
            self.stdins.append(stdin if stdin is None or isinstance(stdin, str)
                               else stdin.decode())
            key = " ".join(argv[:2])
            if self.fail_next.get(key):
                code, err = self.fail_next[key].pop(0)
                res = Result(tuple(argv), code, "", err)
            else:
                code, out, err = self._dispatch(argv, stdin)
                res = Result(tuple(argv), code, out, err)
        return check_result(res, self.host) if check else res

    def close(self):
        pass

    def shutdown(self):
        self.tgtd.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the real wrapper's export verbs --------------------------------------------------------

    @property
    def targets(self):
        """tid -> FakeTgtd target (iqn, luns {lun: FLun(path, size, scsi_id, thin, ...)},
        acls, accounts)."""
        return self.tgtd.targets

    @property
    def accounts(self):
        return self.tgtd.accounts

    def _lun_path_in_use(self, ds):
        path = os.path.join(self.zvol_dir, ds)
        return any(lu.path == path for t in self.tgtd.targets.values() for lu in t.luns.values())

    def _zvol_size(self, path):
        d = self.ds.get(path[len(self.zvol_dir) + 1:]) if path.startswith(self.zvol_dir) \
            else None
        return d.volsize if d is not None and d.type == "volume" else None

    def _sync_zvol_links(self):
        """/dev/zvol/<ds> exists for every volume udev announced (not self.unlinked)."""
        shutil.rmtree(self.zvol_dir, ignore_errors=True)
        for d in self.ds.values():
            if d.type == "volume" and d.name not in self.unlinked:
                p = os.path.join(self.zvol_dir, d.name)
                os.makedirs(os.path.dirname(p), exist_ok=True)
                open(p, "w").close()

    def _wrapper_zfs(self, cfg, argv, timeout=120.0, check=True):
        code, out, err = self._zfs(list(argv[1:]))
        if check and code:
            raise self.wrapper.VerbError(f"{' '.join(argv[:2])} exited {code}: {err.strip()}")
        return Result(tuple(argv), code, out, err)

    def _wrapper_verb(self, argv, stdin):
        """Run the real wrapper (grammar + verb) in-process: (exit, stdout, stderr)."""
        self._sync_zvol_links()
        out, err = io.StringIO(), io.StringIO()
        data = stdin.encode() if isinstance(stdin, str) else (stdin or b"")
        fake_stdin = io.TextIOWrapper(io.BytesIO(data), encoding="ascii")
        old_stdin = sys.stdin
        sys.stdin = fake_stdin
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = self.wrapper.main([self.conf, "--", *argv])
        finally:
            sys.stdin = old_stdin
        return code, out.getvalue(), err.getvalue()

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
        if p == "guid":
            return str(d.guid)
        if p == "creation":
            return str(d.creation)
        if p == "clones":
            if d.type != "snapshot":
                return "-"
            return ",".join(self.clones(d.name)) or "-"
        if p == "defer_destroy":
            if d.type != "snapshot":
                return "-"
            return "on" if d.defer_destroy else "off"
        if p in ZPROP_DEFAULTS:
            if d.type == "snapshot":
                vol = self.ds.get(d.name.partition("@")[0])
                return vol.props.get(p, ZPROP_DEFAULTS[p]) if vol else "-"
            return d.props.get(p, ZPROP_DEFAULTS[p])
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

    def _dispatch(self, argv, stdin=None):
        if argv[0] == "zfs":
            return self._zfs(argv[1:])
        if argv[0] == "zol-wrapper" and argv[1:2] and argv[1] in WRAPPER_VERBS:
            if not self.tgtd_up:
                return (68, "", f"zol-ssh-wrapper: {argv[1]}: tgtd: show targets: [Errno 111] "
                                "Connection refused (is tgt.service running?)\n")
            return self._wrapper_verb(argv, stdin)
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
            cols = a[a.index("-o") + 1].split(",")
            types = a[a.index("-t") + 1].split(",") if "-t" in a else None
            props, name = a[-2].split(","), a[-1]
            if name not in self.ds:
                return self._open_err(name)
            rows = [self.ds[name]]
            if "-r" in a:
                rows += sorted(self.children(name), key=lambda d: d.name)
            rows = [d for d in rows if types is None or d.type in types]
            out = []
            for d in rows:
                for p in props:
                    value = self.prop(d, p)
                    src = "local" if p in d.props else "-"
                    cell = {"name": d.name, "property": p, "value": value, "source": src}
                    out.append("\t".join(cell[c] for c in cols) + "\n")
            return (0, "".join(out), "")
        if op == "create":
            sparse = "-s" in a
            bs = int(a[a.index("-b") + 1]) if "-b" in a else 16384
            size = int(a[a.index("-V") + 1])
            name = a[-1]
            if name in self.ds:
                return (1, "", f"cannot create '{name}': dataset already exists\n")
            props = _o_props(a)
            if props.pop("refreservation", None) == "none":
                sparse = True
            self.ds[name] = Dataset(name, "volume", size, 0 if sparse else size + 35651584,
                                    bs, creation=next(self._clock), props=props)
            return (0, "", "")
        if op == "snapshot":
            for name in a[1:]:      # several: one transaction group (all or none)
                vol = name.partition("@")[0]
                if vol not in self.ds:
                    return self._open_err(vol)
                if name in self.ds:
                    return (1, "", f"cannot create snapshot '{name}': dataset already "
                                   "exists\n")
            clock = next(self._clock)
            for name in a[1:]:
                v = self.ds[name.partition("@")[0]]
                self.ds[name] = Dataset(name, "snapshot", v.volsize, None, v.volblocksize,
                                        creation=clock)
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
            if name in self.busy or self._lun_path_in_use(name):
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
            props = _o_props(a)
            props.pop("refreservation", None)
            self.ds[new] = Dataset(new, "volume", s.volsize, 0, s.volblocksize, origin=snap,
                                   used=0, creation=next(self._clock), props=props)
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
        if op == "receive" and a[1:2] == ["-A"]:    # no partial receives in this fake
            if a[2] not in self.ds:
                return self._open_err(a[2])
            return (1, "", f"cannot resume send: '{a[2]}' does not have any resumable "
                           "receive state to abort\n")
        return (64, "", f"zol-ssh-wrapper: denied: zfs {op}\n")

    # -- wrapper verbs --------------------------------------------------------------------------

    def _verb(self, a):
        if a[0] == "version":
            return (0, self.protocol_line, "")
        if a[0] == "capabilities" and self.capabilities_line is not None:
            return (0, self.capabilities_line, "")
        if a[0] == "wait-zvol":
            if a[1] in self.ds and a[1] not in self.unlinked:
                return (0, "", "")
            return (1, "", (f"zol-ssh-wrapper: /dev/zvol/{a[1]} did not appear within "
                           f"{a[2] if len(a) > 2 else 30} s\n"))
        if a[0] == "copy-data":
            src, dst = a[1], a[2]
            for n in (src, dst):
                if n not in self.ds:
                    return (68, "", f"zol-ssh-wrapper: copy-data: {n} is not a zvol\n")
            if self.ds[dst].volsize < self.ds[src].volsize:
                return (68, "", f"zol-ssh-wrapper: copy-data: {dst} is smaller than {src}\n")
            self.copied.append((src, dst))
            return (0, f"copied {src} -> {dst}\n", "")
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
        return (64, "", f"zol-ssh-wrapper: denied: zol-wrapper {a[0]}\n")

    # -- test conveniences ----------------------------------------------------------------------

    def restart_tgtd(self):
        """tgt.service restart: targets and accounts vanish, the drop-in restores them."""
        with self.tgtd.lock:
            self.tgtd.targets.clear()
            self.tgtd.accounts.clear()
        return self._wrapper_verb(["zol-wrapper", "restore-exports"], None)[1]

    def export_state(self):
        import json
        p = os.path.join(self.dir, "state", "exports.json")
        return json.load(open(p)) if os.path.exists(p) else {}

    def names(self, under="zol/cinder"):
        return sorted(n for n in self.ds if n.startswith(under + "/"))
