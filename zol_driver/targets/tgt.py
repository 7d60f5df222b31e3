"""iSCSI exports on the SAN's tgtd, through the wrapper's export verbs (protocol 2).

Why verbs instead of tgtadm lines: a tgtadm line that takes ``--tid`` can act on any target of
the SAN's tgtd, and ``--password`` puts the CHAP secret on an argv.  The wrapper therefore
owns every tgtd change: ``zol-wrapper export`` creates-or-reuses the target of one IQN (lowest
free TID, under the SAN's lock), its LUN with the volume's SCSI identity, UNMAP and write-cache
policy, CHAP before the initiator ACL, and records the export (secret included) in a root-only
state file from which ``restore-exports`` rebuilds everything after a tgtd restart or reboot.
CHAP credentials travel on the channel's stdin, never on an argv (doc/san-protocol.md).

This module knows IQNs, LUNs and CHAP, not Cinder.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import re
import threading
import time
from collections.abc import Sequence

from zol_driver import exception
from zol_driver.ssh import Executor

LOG = logging.getLogger(__name__)

LUN_RE = re.compile(r"[1-9][0-9]{0,2}")
IQN_SUFFIX_RE = re.compile(r"[a-z0-9][a-z0-9.:-]{0,199}")
CHAPUSER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
CHAPSECRET_RE = re.compile(r"[A-Za-z0-9]{12,64}")
SERIAL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,35}")
MAX_INITIATORS = 16

# Fragments of the wrapper's one-line reasons (stderr) -> what they mean to the driver.
_ERRORS: tuple[tuple[str, type[exception.TargetError]], ...] = (
    ("is not exported", exception.TargetNotFound),
    ("can't find the target", exception.TargetNotFound),
    ("can't find the logical unit", exception.TargetNotFound),
    ("already exists", exception.TargetExists),
    ("already serves", exception.TargetConflict),
    ("already exported as", exception.TargetConflict),
    ("not ours", exception.TargetConflict),
    ("another secret", exception.TargetConflict),
    ("other CHAP account", exception.TargetConflict),
    ("is still active", exception.TargetBusy),
    ("busy", exception.TargetBusy),
)


@dataclasses.dataclass
class Lun:
    lun: int
    size_mb: int
    backing_store: str | None
    scsi_id: str = ""
    thin: bool = False


@dataclasses.dataclass
class Target:
    """One of our targets, as ``zol-wrapper show-exports`` reports it."""

    tid: int
    iqn: str
    luns: dict[int, Lun] = dataclasses.field(default_factory=dict)
    accounts: list[str] = dataclasses.field(default_factory=list)
    acls: list[str] = dataclasses.field(default_factory=list)
    sessions: int = 0
    recorded: bool = True


@dataclasses.dataclass(frozen=True)
class Export:
    """What `zol-wrapper export` made: the target's TID and whether the LUN accepts UNMAP
    (the SAN's backing store can free space; see can_unmap in the wrapper)."""

    tid: int
    unmap: bool


@dataclasses.dataclass(frozen=True)
class Chap:
    user: str
    secret: str = dataclasses.field(repr=False)


def classify(err: exception.CommandFailed) -> exception.CommandFailed:
    if isinstance(err, exception.WrapperDenied):
        return err
    for fragment, cls in _ERRORS:
        if fragment in err.stderr:
            return cls(command=err.command, exit_code=err.exit_code, stderr=err.stderr,
                       stdout=err.stdout)
    return exception.TargetError(command=err.command, exit_code=err.exit_code,
                                 stderr=err.stderr, stdout=err.stdout)


def parse_exports(text: str) -> dict[str, Target]:
    """``zol-wrapper show-exports`` (one JSON object per line) -> {iqn: Target}."""
    targets: dict[str, Target] = {}
    for raw in text.splitlines():
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
            t = Target(int(obj["tid"]), str(obj["iqn"]), accounts=list(obj["accounts"]),
                       acls=list(obj["acls"]), sessions=int(obj["sessions"]),
                       recorded=bool(obj.get("recorded", True)))
            for lun in obj["luns"]:
                t.luns[int(lun["lun"])] = Lun(int(lun["lun"]), int(lun["size_mb"]),
                                              lun["path"], str(lun.get("scsi_id", "")),
                                              bool(lun.get("thin")))
        except (ValueError, KeyError, TypeError) as exc:
            raise exception.ParseError(what="zol-wrapper show-exports", reason=str(exc),
                                       line=raw[:200]) from exc
        targets[t.iqn] = t
    return targets


class TgtAdm:
    """Our targets on the SAN's tgtd, driven through the wrapper's export verbs."""

    def __init__(self, executor: Executor, iqn_prefix: str, retries: int = 3,
                 retry_interval: float = 0.5) -> None:
        self.executor = executor
        self.iqn_prefix = iqn_prefix
        self.retries = retries
        self.retry_interval = retry_interval
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # -- validation ---------------------------------------------------------------------------

    def iqn(self, suffix: str) -> str:
        iqn = self.iqn_prefix + suffix
        self.check_iqn(iqn)
        return iqn

    def check_iqn(self, iqn: str) -> str:
        if not iqn.startswith(self.iqn_prefix) or not IQN_SUFFIX_RE.fullmatch(
                iqn[len(self.iqn_prefix):]):
            raise exception.InvalidName(kind="IQN", name=iqn,
                                        reason=f"must be {self.iqn_prefix} followed by "
                                               "[a-z0-9][a-z0-9.:-]{0,199}")
        return iqn

    @staticmethod
    def check_lun(lun: int) -> str:
        if not LUN_RE.fullmatch(str(lun)):
            raise exception.InvalidValue(kind="LUN", value=lun, reason="1..999")
        return str(lun)

    @staticmethod
    def check_serial(serial: str) -> str:
        if not SERIAL_RE.fullmatch(serial):
            raise exception.InvalidValue(kind="SCSI serial", value=serial,
                                         reason="1-36 letters, digits or '-'")
        return serial

    @staticmethod
    def check_chap(chap: Chap) -> None:
        if not CHAPUSER_RE.fullmatch(chap.user):
            raise exception.InvalidValue(kind="CHAP user", value=chap.user,
                                         reason="[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
        if not CHAPSECRET_RE.fullmatch(chap.secret):
            raise exception.InvalidValue(kind="CHAP secret", value="(hidden)",
                                         reason="12 to 64 letters and digits")

    @staticmethod
    def check_initiators(addrs: Sequence[str]) -> str:
        addrs = list(addrs) or ["ALL"]
        if len(addrs) > MAX_INITIATORS or len(set(addrs)) != len(addrs) or (
                "ALL" in addrs and len(addrs) > 1):
            raise exception.InvalidValue(kind="initiator list", value=addrs,
                                         reason=f"ALL, or 1..{MAX_INITIATORS} distinct "
                                                "IP addresses")
        for addr in addrs:
            if addr != "ALL":
                try:
                    ipaddress.ip_address(addr)
                except ValueError as exc:
                    raise exception.InvalidValue(kind="initiator address", value=addr,
                                                 reason="ALL or an IP address") from exc
        return ",".join(addrs)

    # -- running ------------------------------------------------------------------------------

    def _verb(self, *args: str, stdin: str | None = None, timeout: float | None = None) -> str:
        try:
            return self.executor.execute(["zol-wrapper", *args], stdin=stdin,
                                         timeout=timeout).stdout
        except exception.CommandFailed as exc:
            raise classify(exc) from exc

    def _lock(self, iqn: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(iqn, threading.Lock())

    # -- queries ------------------------------------------------------------------------------

    def show(self) -> dict[str, Target]:
        return parse_exports(self._verb("show-exports"))

    # -- exports ------------------------------------------------------------------------------

    def export(self, ds: str, iqn: str, serial: str, lun: int = 1, chap: Chap | None = None,
               initiators: Sequence[str] = ("ALL",), thin: bool = True,
               unmap: bool = False, write_cache: bool = True) -> Export:
        """Make IQN serve /dev/zvol/DS as LUN.  Idempotent on the SAN."""
        self.check_iqn(iqn)
        argv = ["export", ds, iqn, self.check_lun(lun), self.check_serial(serial),
                ("thin-unmap" if unmap else "thin") if thin else "thick",
                "wc-on" if write_cache else "wc-off",
                "chap" if chap else "none", self.check_initiators(initiators)]
        stdin = None
        if chap:
            self.check_chap(chap)
            stdin = f"{chap.user} {chap.secret}\n"
        with self._lock(iqn):
            last: exception.CommandFailed | None = None
            for attempt in range(self.retries + 1):
                try:
                    out = self._verb(*argv, stdin=stdin)
                    break
                except (exception.WrapperDenied, exception.TargetConflict):
                    raise
                except exception.TargetError as exc:
                    last = exc
                    LOG.info("export of %s failed (attempt %d): %s", iqn, attempt + 1,
                             exc.stderr.strip())
                    time.sleep(self.retry_interval * (attempt + 1))
            else:
                assert last is not None
                raise last
        m = re.search(r"\btid=([0-9]+)\b", out)
        if not m:
            raise exception.ParseError(what="zol-wrapper export", reason="no tid=N",
                                       line=out.strip()[:200])
        return Export(int(m.group(1)), " unmap=yes" in out)

    def unexport(self, iqn: str) -> bool:
        """Delete the target (even with sessions) and its account when no other target uses
        it; False if it was not there."""
        self.check_iqn(iqn)
        with self._lock(iqn):
            for attempt in range(self.retries + 1):
                try:
                    return self._verb("unexport", iqn).startswith("removed")
                except exception.TargetBusy as exc:
                    if attempt == self.retries:
                        raise
                    LOG.info("unexport of %s: SAN busy (attempt %d): %s", iqn, attempt + 1,
                             exc.stderr.strip())
                    time.sleep(self.retry_interval * (attempt + 1))
        raise AssertionError("unreachable")

    def resize_lun(self, iqn: str) -> bool:
        """Make tgtd re-read the zvol's size in place; False when the IQN is not exported."""
        self.check_iqn(iqn)
        with self._lock(iqn):
            try:
                self._verb("resize-lun", iqn)
            except exception.TargetNotFound:
                return False
            return True

    def restore_exports(self) -> str:
        """Ask the SAN to recreate every recorded export."""
        return self._verb("restore-exports", timeout=600)
