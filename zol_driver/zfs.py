"""ZFS client: validated argv builders and parsers of ``zfs ... -H -p`` output.

It knows datasets, not Cinder.  Every name is validated against the SAN protocol's grammar
(doc/san-protocol.md) and confined to the configured parent BEFORE an argv is built, so a bad
name fails here with a clear message instead of being denied (or worse) on the SAN.  Failed
commands are classified by their stderr into the exception hierarchy (not found, busy, has
clones, ...) so callers can implement Cinder's idempotency rules.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

from zol_driver import exception, policy
from zol_driver.ssh import Executor

LOG = logging.getLogger(__name__)

COMP_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}")
SIZE_RE = re.compile(r"[1-9][0-9]{0,18}")
USERVALUE_RE = re.compile(r"[A-Za-z0-9_.:,/=+-]{0,512}")
BLOCKSIZES = policy.BLOCKSIZES
# ZFS properties a volume type may choose (zol:<name> extra specs) and their allow-lists.
ZPROPS = policy.ZPROPS
MAX_ZPROPS = len(ZPROPS) + 1          # + refreservation on clones
ALLOWED_PROPS = frozenset((*ZPROPS,
    "name", "type", "volsize", "used", "available", "referenced", "volblocksize",
    "refreservation", "reservation", "origin", "clones", "creation", "guid", "written",
    "usedbysnapshots", "usedbydataset", "usedbychildren", "compressratio", "logicalused",
    "logicalreferenced", "defer_destroy", "userrefs", "zol:iqn", "zol:lun",
    "zol:initiators", "zol:deleted", "receive_resume_token"))
# Protocol 2: the driver only sets the deletion mark; exports live in the wrapper's state file
# (the v1 zol:iqn/zol:lun/zol:chap/zol:initiators properties are migrated by the wrapper).
USER_PROPS = ("zol:deleted",)
TYPES = frozenset(("volume", "snapshot", "filesystem"))
NUMERIC_PROPS = frozenset(("volsize", "used", "available", "referenced", "volblocksize",
                           "refreservation", "reservation", "creation", "guid", "written",
                           "usedbysnapshots", "usedbydataset", "usedbychildren",
                           "logicalused", "logicalreferenced", "userrefs"))

# The properties a volume reports (its type's policy as ZFS has it).
POLICY_PROPS = ("volblocksize", "refreservation", *ZPROPS)

MAX_GROUP = 16    # snapshots in one `zfs snapshot` (a group snapshot)

# `receive_resume_token` as OpenZFS 2.1 prints it (libzfs zfs_send_resume_token_to_nvlist):
# "<version>-<checksum hex>-<packed size hex>-<compressed nvlist hex>", at most
# ZFS_MAXPROPLEN (4096) characters in all.
RESUME_TOKEN_RE = re.compile(r"[1-9][0-9]{0,3}-[0-9a-f]{1,16}-[0-9a-f]{1,16}-[0-9a-f]{16,4096}")

# Properties the driver reads for one volume and its snapshots.
VOLUME_PROPS = ("name", "type", "volsize", "used", "refreservation", "origin", "clones",
                "defer_destroy", "zol:deleted")

# stderr fragments of OpenZFS 2.1 (captured verbatim in tests/fixtures/san/) -> exception.
_ERRORS: tuple[tuple[str, type[exception.ZfsError]], ...] = (
    ("dataset does not exist", exception.DatasetNotFound),
    ("could not find any snapshots to destroy", exception.DatasetNotFound),
    ("dataset already exists", exception.DatasetExists),
    ("dataset is busy", exception.DatasetBusy),
    ("pool or dataset is busy", exception.DatasetBusy),
    ("has dependent clones", exception.DatasetHasClones),
    ("has children", exception.DatasetHasChildren),
    ("more recent snapshots", exception.NotMostRecentSnapshot),
    ("size is greater than available space", exception.OutOfSpace),
    ("out of space", exception.OutOfSpace),
)


def classify(err: exception.CommandFailed) -> exception.CommandFailed:
    """The most specific ZfsError for a failed zfs command (wrapper denials pass through)."""
    if isinstance(err, exception.WrapperDenied):
        return err
    text = err.stderr
    for fragment, cls in _ERRORS:
        if fragment in text:
            return cls(command=err.command, exit_code=err.exit_code, stderr=err.stderr,
                       stdout=err.stdout)
    return exception.ZfsError(command=err.command, exit_code=err.exit_code, stderr=err.stderr,
                              stdout=err.stdout)


def _check_comp(comp: str, kind: str, name: str) -> None:
    if not COMP_RE.fullmatch(comp):
        raise exception.InvalidName(kind=kind, name=name,
                                    reason="each component must match "
                                           "[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}")


def check_size(size: int) -> str:
    if not isinstance(size, int) or size <= 0 or size % 512 or not SIZE_RE.fullmatch(str(size)):
        raise exception.InvalidValue(kind="size", value=size,
                                     reason="must be a positive multiple of 512 bytes")
    return str(size)


def _props_arg(props: Iterable[str]) -> str:
    props = list(props)
    bad = [p for p in props if p not in ALLOWED_PROPS]
    if not props or bad:
        raise exception.InvalidValue(kind="property list", value=props,
                                     reason=f"not in the protocol: {bad}")
    return ",".join(props)


def zprop_args(props: dict[str, str] | None) -> list[str]:
    """``-o name=value`` pairs of allow-listed ZFS properties (sorted: one argv per policy)."""
    out: list[str] = []
    for name, value in sorted((props or {}).items()):
        check_zprop(name, value)
        out += ["-o", f"{name}={value}"]
    if len(out) // 2 > MAX_ZPROPS:
        raise exception.InvalidValue(kind="properties", value=props, reason="too many")
    return out


def check_zprop(name: str, value: str) -> str:
    if name == "refreservation" and value == "none":    # a thin clone
        return f"{name}={value}"
    if name not in ZPROPS:
        raise exception.InvalidValue(kind="ZFS property", value=name,
                                     reason="one of " + ", ".join(ZPROPS))
    if value not in ZPROPS[name]:
        raise exception.InvalidValue(kind=name, value=value,
                                     reason="one of " + ", ".join(ZPROPS[name]))
    return f"{name}={value}"


def check_resume_token(token: str) -> str:
    if not isinstance(token, str) or not RESUME_TOKEN_RE.fullmatch(token):
        shown = token[:60] if isinstance(token, str) else token
        raise exception.InvalidValue(kind="receive_resume_token", value=shown,
                                     reason="not a token as zfs prints it "
                                            "(N-hex-hex-hex, at most 4096 characters)")
    return token


def _types_arg(types: Iterable[str]) -> str:
    types = list(types)
    if not types or any(t not in TYPES for t in types):
        raise exception.InvalidValue(kind="type list", value=types,
                                     reason="allowed: volume, snapshot, filesystem")
    return ",".join(types)


def _value(prop: str, raw: str) -> Any:
    """`-p` value -> int for numeric properties, None for '-' (unset)."""
    if raw == "-":
        return None
    if prop in NUMERIC_PROPS:
        try:
            return int(raw)
        except ValueError:
            return raw
    return raw


def parse_list(text: str, props: Sequence[str]) -> list[dict[str, Any]]:
    """Parse ``zfs list -H -p -o PROPS``: one tab-separated row per dataset."""
    rows = []
    for line in text.splitlines():
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != len(props):
            raise exception.ParseError(what="zfs list -H -p", line=line,
                                       reason=f"{len(fields)} fields, expected {len(props)}")
        rows.append({p: _value(p, v) for p, v in zip(props, fields)})
    return rows


def parse_get(text: str) -> dict[str, dict[str, Any]]:
    """Parse ``zfs get -H -p -o name,property,value``: {name: {property: value}}."""
    out: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise exception.ParseError(what="zfs get -H -p", line=line,
                                       reason=f"{len(fields)} fields, expected 3")
        name, prop, raw = fields
        out.setdefault(name, {})[prop] = _value(prop, raw)
    return out


class ZfsClient:
    """ZFS operations confined to one parent dataset."""

    def __init__(self, executor: Executor, parent: str, busy_retries: int = 10,
                 busy_interval: float = 1.0, copy_timeout: float = 3600) -> None:
        parts = parent.split("/")
        if not parent or any(not COMP_RE.fullmatch(p) for p in parts):
            raise exception.ConfigError(option="zol_parent_dataset",
                                        reason=f"{parent!r} is not a ZFS dataset name "
                                               "like 'tank/cinder'")
        self.executor = executor
        self.parent = parent
        self.busy_retries = busy_retries
        self.busy_interval = busy_interval
        self.copy_timeout = copy_timeout

    # -- names ------------------------------------------------------------------------------

    def ds(self, comp: str) -> str:
        """The dataset name of a component directly below the parent."""
        _check_comp(comp, "dataset", comp)
        return f"{self.parent}/{comp}"

    def check_ds(self, name: str) -> str:
        parent, sep, comp = name.rpartition("/")
        if not sep or parent != self.parent:
            raise exception.InvalidName(kind="dataset", name=name,
                                        reason=f"not directly below {self.parent}")
        _check_comp(comp, "dataset", name)
        return name

    def check_snap(self, name: str) -> str:
        ds, sep, snap = name.partition("@")
        if not sep:
            raise exception.InvalidName(kind="snapshot", name=name, reason="no '@'")
        self.check_ds(ds)
        _check_comp(snap, "snapshot", name)
        return name

    def check_any(self, name: str) -> str:
        if name == self.parent:
            return name
        return self.check_snap(name) if "@" in name else self.check_ds(name)

    # -- running ------------------------------------------------------------------------------

    def run(self, argv: list[str], timeout: float | None = None) -> str:
        try:
            return self.executor.execute(argv, timeout=timeout).stdout
        except exception.CommandFailed as exc:
            raise classify(exc) from exc

    def _retry_busy(self, argv: list[str]) -> str:
        for attempt in range(self.busy_retries + 1):
            try:
                return self.run(argv)
            except exception.DatasetBusy:
                if attempt >= self.busy_retries:
                    raise
                LOG.info("%s is busy (attempt %d); retrying in %.1f s", argv[-1], attempt + 1,
                         self.busy_interval)
                time.sleep(self.busy_interval)
        raise AssertionError("unreachable")

    # -- queries ------------------------------------------------------------------------------

    def version(self) -> str:
        return self.run(["zfs", "version"]).strip()

    def list(self, name: str, props: Sequence[str] = VOLUME_PROPS,
             types: Sequence[str] | None = None, recursive: bool = False,
             depth: int | None = None) -> list[dict[str, Any]]:
        """``zfs list -H -p``: name itself, or with recursive/depth its descendants too."""
        self.check_any(name)
        argv = ["zfs", "list", "-H", "-p", "-o", _props_arg(props)]
        if types is not None:
            argv += ["-t", _types_arg(types)]
        elif recursive or depth is not None:
            raise exception.InvalidValue(kind="zfs list", value=name,
                                         reason="recursive listing needs types")
        if recursive:
            argv += ["-r"]
        elif depth is not None:
            if depth != 1:
                raise exception.InvalidValue(kind="depth", value=depth, reason="only 1")
            argv += ["-d", "1"]
        argv.append(name)
        return parse_list(self.run(argv), props)

    def get(self, name: str, props: Sequence[str]) -> dict[str, Any]:
        """``zfs get -H -p`` of one object: {property: value}; DatasetNotFound if absent."""
        self.check_any(name)
        out = parse_get(self.run(["zfs", "get", "-H", "-p", "-o", "name,property,value",
                                  _props_arg(props), name]))
        return out.get(name, {})

    def info(self, name: str, props: Sequence[str] = VOLUME_PROPS) -> dict[str, Any] | None:
        """One object's properties, or None when it does not exist."""
        try:
            rows = self.list(name, props)
        except exception.DatasetNotFound:
            return None
        return rows[0] if rows else None

    def exists(self, name: str) -> bool:
        return self.info(name, ("name",)) is not None

    def tree(self, ds: str, props: Sequence[str] = VOLUME_PROPS) -> list[dict[str, Any]]:
        """A volume and its snapshots (volume first); [] when the volume does not exist."""
        self.check_ds(ds)
        try:
            return self.list(ds, props, types=("volume", "snapshot"), recursive=True)
        except exception.DatasetNotFound:
            return []

    def inventory(self, props: Sequence[str],
                  types: Sequence[str] = ("filesystem", "volume")) -> list[dict[str, Any]]:
        """Everything under the parent (the parent's own row first)."""
        return self.list(self.parent, props, types=types, recursive=True)

    # -- mutations ----------------------------------------------------------------------------

    def create_volume(self, ds: str, size: int, sparse: bool = True,
                      blocksize: int | None = None,
                      props: dict[str, str] | None = None) -> None:
        self.check_ds(ds)
        argv = ["zfs", "create"]
        if sparse:
            argv.append("-s")
        if blocksize:
            if blocksize not in BLOCKSIZES:
                raise exception.InvalidValue(kind="volblocksize", value=blocksize,
                                             reason=f"one of {BLOCKSIZES}")
            argv += ["-b", str(blocksize)]
        argv += zprop_args(props)
        argv += ["-V", check_size(size), ds]
        self.run(argv)

    def wait_zvol(self, ds: str, seconds: int = 30) -> None:
        """Block until /dev/zvol/DS exists (zfs create -V returns before udev made it)."""
        self.check_ds(ds)
        seconds = max(1, min(int(seconds), 120))
        try:
            self.executor.execute(["zol-wrapper", "wait-zvol", ds, str(seconds)],
                                  timeout=seconds + 30)
        except exception.WrapperDenied:
            raise
        except exception.CommandFailed as exc:
            raise exception.ZfsError(
                "/dev/zvol/%(ds)s did not appear within %(seconds)s s: %(stderr)s",
                command=exc.command, exit_code=exc.exit_code, stderr=exc.stderr, ds=ds,
                seconds=seconds) from exc

    def destroy(self, name: str, deferred: bool = False, missing_ok: bool = True) -> bool:
        """Destroy a zvol or snapshot (never recursively); False if it was already gone.

        deferred (snapshots only): ``zfs destroy -d`` destroys now when possible and otherwise
        marks the snapshot to disappear with its last clone, so a Cinder delete never fails.
        """
        self.check_any(name)
        if name == self.parent:
            raise exception.InvalidName(kind="dataset", name=name,
                                        reason="refusing to destroy the parent")
        argv = ["zfs", "destroy"]
        if deferred:
            if "@" not in name:
                raise exception.InvalidValue(kind="destroy -d", value=name,
                                             reason="only snapshots")
            argv.append("-d")
        argv.append(name)
        try:
            self._retry_busy(argv)
        except exception.DatasetNotFound:
            if not missing_ok:
                raise
            return False
        return True

    def snapshot(self, snap: str) -> None:
        self.run(["zfs", "snapshot", self.check_snap(snap)])

    def snapshot_many(self, snaps: Sequence[str]) -> None:
        """One ``zfs snapshot a@g b@g ...``: all in one transaction group (crash-consistent)."""
        snaps = list(snaps)
        if len(snaps) < 2 or len(snaps) > MAX_GROUP:
            raise exception.InvalidValue(kind="group snapshot", value=len(snaps),
                                         reason=f"2..{MAX_GROUP} snapshots in one command")
        vols = [s.partition("@")[0] for s in snaps]
        for s in snaps:
            self.check_snap(s)
        if len(set(vols)) != len(vols):
            raise exception.InvalidValue(kind="group snapshot", value=snaps,
                                         reason="one snapshot per volume")
        self.run(["zfs", "snapshot", *snaps])

    def clone(self, snap: str, ds: str, thin: bool = False,
              props: dict[str, str] | None = None) -> None:
        self.check_snap(snap)
        self.check_ds(ds)
        argv = ["zfs", "clone"]
        props = dict(props or {})
        if thin:
            props["refreservation"] = "none"
        if props and set(props) != {"refreservation"}:
            argv += zprop_args(props)
        elif thin:
            argv += ["-o", "refreservation=none"]
        self.run(argv + [snap, ds])

    def copy_data(self, src: str, dst: str) -> None:
        """Block copy of zvol SRC into the new (all-zero) zvol DST on the SAN: what a
        volblocksize change needs (send | recv keeps the block size)."""
        self.check_ds(src)
        self.check_ds(dst)
        try:
            self.executor.execute(["zol-wrapper", "copy-data", src, dst],
                                  timeout=self.copy_timeout)
        except exception.CommandFailed as exc:
            raise classify(exc) from exc

    def move(self, ds: str, target: str, thick: bool) -> None:
        """``zfs rename`` to another configured parent of the same pool (migration), then
        the refreservation the destination wants."""
        self.check_ds(ds)
        parent, sep, comp = target.rpartition("/")
        if not sep or parent.split("/")[0] != self.parent.split("/")[0] or parent == self.parent:
            raise exception.InvalidName(kind="dataset", name=target,
                                        reason=f"not below another parent of pool "
                                               f"{self.parent.split('/')[0]}")
        _check_comp(comp, "dataset", target)
        self._retry_busy(["zfs", "rename", ds, target])
        self.run(["zfs", "set", "refreservation=" + ("auto" if thick else "none"), target])

    def copy(self, snap: str, ds: str) -> None:
        """An independent full copy (send | recv on the SAN); DS@<snap name> comes along."""
        self.check_snap(snap)
        self.check_ds(ds)
        try:
            self.executor.execute(["zol-wrapper", "copy", snap, ds], timeout=self.copy_timeout)
        except exception.CommandFailed as exc:
            raise classify(exc) from exc

    def promote(self, ds: str) -> None:
        self.run(["zfs", "promote", self.check_ds(ds)])

    def rename(self, old: str, new: str) -> None:
        if "@" in old:
            self.check_snap(old)
            self.check_snap(new)
            if old.partition("@")[0] != new.partition("@")[0]:
                raise exception.InvalidName(kind="snapshot", name=new,
                                            reason="a snapshot keeps its volume when renamed")
        else:
            self.check_ds(old)
            self.check_ds(new)
        self._retry_busy(["zfs", "rename", old, new])

    def rollback(self, snap: str) -> None:
        self.run(["zfs", "rollback", self.check_snap(snap)])

    def set_volsize(self, ds: str, size: int) -> None:
        self.run(["zfs", "set", "volsize=" + check_size(size), self.check_ds(ds)])

    def set_prop(self, ds: str, name: str, value: str) -> None:
        """``zfs set`` of one allow-listed ZFS property (retype in place)."""
        self.run(["zfs", "set", check_zprop(name, value), self.check_ds(ds)])

    def inherit_prop(self, ds: str, name: str) -> None:
        """``zfs inherit`` of one allow-listed ZFS property (back to the parent's value)."""
        if name not in ZPROPS:
            raise exception.InvalidValue(kind="ZFS property", value=name,
                                         reason="one of " + ", ".join(ZPROPS))
        self.run(["zfs", "inherit", name, self.check_ds(ds)])

    def set_refreservation(self, ds: str, thick: bool) -> None:
        self.run(["zfs", "set", "refreservation=" + ("auto" if thick else "none"),
                  self.check_ds(ds)])

    def set_user(self, ds: str, prop: str, value: str) -> None:
        if prop not in USER_PROPS:
            raise exception.InvalidValue(kind="user property", value=prop,
                                         reason=f"one of {USER_PROPS}")
        if not USERVALUE_RE.fullmatch(value):
            raise exception.InvalidValue(kind=prop, value=value,
                                         reason="characters outside the protocol")
        self.run(["zfs", "set", f"{prop}={value}", self.check_ds(ds)])

    def inherit(self, ds: str, prop: str) -> None:
        if prop not in USER_PROPS:
            raise exception.InvalidValue(kind="user property", value=prop,
                                         reason=f"one of {USER_PROPS}")
        self.run(["zfs", "inherit", prop, self.check_ds(ds)])

    # -- send / receive (zol_driver/transfer.py pipes them through the Cinder host) ----------

    def send_argv(self, snap: str, base: str | None = None) -> list[str]:
        """``zfs send -L -e -c [-i BASE] SNAP``: large blocks, embedded data, compressed
        records as they are on disk (a compressed volume crosses the wire compressed)."""
        self.check_snap(snap)
        argv = ["zfs", "send", "-L", "-e", "-c"]
        if base is not None:
            self.check_snap(base)
            if base.partition("@")[0] != snap.partition("@")[0] or base == snap:
                raise exception.InvalidName(kind="snapshot", name=base,
                                            reason=f"an incremental base must be an older "
                                                   f"snapshot of {snap.partition('@')[0]}")
            argv += ["-i", base]
        return argv + [snap]

    def send_resume_argv(self, token: str) -> list[str]:
        """``zfs send -t TOKEN``: the rest of an interrupted stream (the token carries the
        snapshot, the offset and the -L/-e/-c flags)."""
        return ["zfs", "send", "-t", check_resume_token(token)]

    def receive_argv(self, ds: str, force: bool = False) -> list[str]:
        """``zfs receive -s -u [-F] DS``: resumable (-s keeps a partial stream's state),
        never mounted (-u); -F (incremental onto a replica) rolls DS back to its latest
        snapshot first."""
        self.check_ds(ds)
        return ["zfs", "receive", "-s", "-u", *(["-F"] if force else []), ds]

    def resume_token(self, ds: str) -> str | None:
        """DS's ``receive_resume_token`` (a partial resumable receive), or None."""
        self.check_ds(ds)
        try:
            value = self.get(ds, ("receive_resume_token",)).get("receive_resume_token")
        except exception.DatasetNotFound:
            return None
        if not value:
            return None
        return check_resume_token(str(value))

    def abort_receive(self, ds: str) -> bool:
        """``zfs receive -A DS``: drop a partial resumable receive (a new DS disappears, an
        existing one keeps its last complete snapshot); False when there was none."""
        try:
            self.run(["zfs", "receive", "-A", self.check_ds(ds)])
        except exception.DatasetNotFound:
            return False
        except exception.ZfsError as exc:
            if "resumable receive state" in exc.stderr or "does not exist" in exc.stderr:
                return False
            raise
        LOG.info("Aborted the partial receive of %s (its resumable state is freed)", ds)
        return True
