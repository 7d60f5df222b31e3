"""tgt (tgtadm) target helper on the SAN: knows IQNs, TIDs, LUNs, ACLs and CHAP, not Cinder.

Why a SAN-side verb for TIDs: tgtadm makes the caller pick the TID, so two cinder-volume
processes (or threads) exporting at once can pick the same one.  ``zol-wrapper new-target IQN``
returns the IQN's TID or creates the target with the lowest free TID under a flock on the SAN;
this side adds a per-IQN lock (threads of one service) and retries on a conflict.

Every export is described by the zvol's ``zol:*`` user properties, written by the driver
BEFORE the target exists, so the SAN can rebuild it after a tgtd restart or reboot
(``zol-wrapper restore-exports`` in the tgt.service drop-in) and ensure_export can always
recreate it from ZFS alone.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import logging
import re
import threading
import time
from collections.abc import Sequence

from zol_driver import exception
from zol_driver.ssh import Executor

LOG = logging.getLogger(__name__)

TID_RE = re.compile(r"[1-9][0-9]{0,5}")
LUN_RE = re.compile(r"[1-9][0-9]{0,2}")
IQN_SUFFIX_RE = re.compile(r"[a-z0-9][a-z0-9.:-]{0,199}")
CHAPUSER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
CHAPSECRET_RE = re.compile(r"[A-Za-z0-9]{12,64}")

_ERRORS: tuple[tuple[str, type[exception.TargetError]], ...] = (
    ("can't find the target", exception.TargetNotFound),
    ("can't find the logical unit", exception.TargetNotFound),
    ("can't find the account", exception.TargetNotFound),
    ("already exists", exception.TargetExists),
    ("is still active", exception.TargetBusy),
    ("busy", exception.TargetBusy),
)


@dataclasses.dataclass
class Lun:
    lun: int
    size_mb: int
    backing_store: str | None


@dataclasses.dataclass
class Target:
    """One target of ``tgtadm --op show``."""

    tid: int
    iqn: str
    luns: dict[int, Lun] = dataclasses.field(default_factory=dict)
    accounts: list[str] = dataclasses.field(default_factory=list)
    acls: list[str] = dataclasses.field(default_factory=list)
    sessions: int = 0


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


_TARGET_RE = re.compile(r"^Target (\d+): (\S+)$")
_LUN_RE = re.compile(r"^LUN: (\d+)$")
_SIZE_RE = re.compile(r"^Size: (\d+) MB")
_NEXUS_RE = re.compile(r"^I_T nexus: \d+")


def parse_show(text: str) -> dict[str, Target]:
    """Parse ``tgtadm --lld iscsi --mode target --op show`` into {iqn: Target}.

    The format is indentation based: sections "LUN information:", "Account information:",
    "ACL information:" under each "Target N: IQN" line.
    """
    targets: dict[str, Target] = {}
    cur: Target | None = None
    section = ""
    lun: Lun | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        m = _TARGET_RE.match(raw)
        if m:
            cur = Target(int(m.group(1)), m.group(2))
            targets[cur.iqn] = cur
            section, lun = "", None
            continue
        if cur is None:
            raise exception.ParseError(what="tgtadm --op show", reason="text before a target",
                                       line=raw)
        if raw.startswith("    ") and not raw.startswith("     ") and line.endswith(":"):
            section = line[:-1]
            lun = None
            continue
        if section == "LUN information":
            m = _LUN_RE.match(line)
            if m:
                lun = Lun(int(m.group(1)), 0, None)
                cur.luns[lun.lun] = lun
                continue
            if lun is None:
                continue
            m = _SIZE_RE.match(line)
            if m:
                lun.size_mb = int(m.group(1))
            elif line.startswith("Backing store path:"):
                path = line.split(":", 1)[1].strip()
                lun.backing_store = None if path in ("", "None") else path
        elif section == "Account information":
            cur.accounts.append(line)
        elif section == "ACL information":
            cur.acls.append(line)
        elif section == "I_T nexus information" and _NEXUS_RE.match(line):
            cur.sessions += 1
    return targets


def parse_accounts(text: str) -> list[str]:
    """Parse ``tgtadm --lld iscsi --mode account --op show``."""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and line != "Account list:":
            out.append(line)
    return out


class TgtAdm:
    """Targets on the SAN's tgtd, driven through the wrapper."""

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
    def check_tid(tid: int) -> str:
        if not TID_RE.fullmatch(str(tid)):
            raise exception.InvalidValue(kind="TID", value=tid, reason="1..999999")
        return str(tid)

    @staticmethod
    def check_lun(lun: int) -> str:
        if not LUN_RE.fullmatch(str(lun)):
            raise exception.InvalidValue(kind="LUN", value=lun, reason="1..999")
        return str(lun)

    @staticmethod
    def check_chap(chap: Chap) -> None:
        if not CHAPUSER_RE.fullmatch(chap.user):
            raise exception.InvalidValue(kind="CHAP user", value=chap.user,
                                         reason="[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
        if not CHAPSECRET_RE.fullmatch(chap.secret):
            raise exception.InvalidValue(kind="CHAP secret", value="(hidden)",
                                         reason="12 to 64 letters and digits")

    @staticmethod
    def check_initiator(addr: str) -> str:
        if addr != "ALL":
            try:
                ipaddress.ip_address(addr)
            except ValueError as exc:
                raise exception.InvalidValue(kind="initiator address", value=addr,
                                             reason="ALL or an IP address") from exc
        return addr

    # -- running ------------------------------------------------------------------------------

    def _tgtadm(self, *args: str) -> str:
        argv = ["tgtadm", "--lld", "iscsi", *args]
        try:
            return self.executor.execute(argv).stdout
        except exception.CommandFailed as exc:
            raise classify(exc) from exc

    def _lock(self, iqn: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(iqn, threading.Lock())

    # -- queries ------------------------------------------------------------------------------

    def show(self) -> dict[str, Target]:
        return parse_show(self._tgtadm("--mode", "target", "--op", "show"))

    def accounts(self) -> list[str]:
        return parse_accounts(self._tgtadm("--mode", "account", "--op", "show"))

    # -- primitives ---------------------------------------------------------------------------

    def new_target(self, iqn: str) -> int:
        """The IQN's TID, creating the target with the lowest free TID (race-free on the SAN)."""
        self.check_iqn(iqn)
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                out = self.executor.execute(["zol-wrapper", "new-target", iqn]).stdout.strip()
                return int(out.split()[-1])
            except exception.WrapperDenied:
                raise
            except exception.CommandFailed as exc:
                last = classify(exc)
                LOG.info("new-target %s failed (attempt %d): %s", iqn, attempt + 1,
                         exc.stderr.strip())
                time.sleep(self.retry_interval * (attempt + 1))
            except (ValueError, IndexError) as exc:
                raise exception.ParseError(what="zol-wrapper new-target", reason=str(exc),
                                           line=out[:200]) from exc
        assert last is not None
        raise last

    def add_lun(self, tid: int, lun: int, path: str) -> None:
        self._tgtadm("--mode", "logicalunit", "--op", "new", "--tid", self.check_tid(tid),
                     "--lun", self.check_lun(lun), "--backing-store", path)

    def delete_lun(self, tid: int, lun: int) -> None:
        self._tgtadm("--mode", "logicalunit", "--op", "delete", "--tid", self.check_tid(tid),
                     "--lun", self.check_lun(lun))

    def bind_initiator(self, tid: int, addr: str) -> None:
        self._tgtadm("--mode", "target", "--op", "bind", "--tid", self.check_tid(tid),
                     "--initiator-address", self.check_initiator(addr))

    def new_account(self, chap: Chap) -> None:
        self.check_chap(chap)
        self._tgtadm("--mode", "account", "--op", "new", "--user", chap.user,
                     "--password", chap.secret)

    def delete_account(self, user: str) -> None:
        self._tgtadm("--mode", "account", "--op", "delete", "--user", user)

    def bind_account(self, tid: int, user: str) -> None:
        self._tgtadm("--mode", "account", "--op", "bind", "--tid", self.check_tid(tid),
                     "--user", user)

    def delete_target(self, tid: int, force: bool = True) -> None:
        args = ["--mode", "target", "--op", "delete"]
        if force:
            args.append("--force")
        self._tgtadm(*args, "--tid", self.check_tid(tid))

    # -- composite, idempotent ----------------------------------------------------------------

    def export(self, iqn: str, path: str, lun: int = 1, chap: Chap | None = None,
               initiators: Sequence[str] = ("ALL",),
               targets: dict[str, Target] | None = None) -> int:
        """Make IQN serve PATH as LUN (with CHAP and ACLs); returns the TID.  Idempotent:
        whatever part already exists is kept, the rest is added."""
        self.check_iqn(iqn)
        self.check_lun(lun)
        if chap:
            self.check_chap(chap)
        for addr in initiators:
            self.check_initiator(addr)
        with self._lock(iqn):
            cur = (targets if targets is not None else self.show()).get(iqn)
            tid = cur.tid if cur else self.new_target(iqn)
            if cur is None or lun not in cur.luns:
                try:
                    self.add_lun(tid, lun, path)
                except exception.TargetExists:
                    pass
            elif cur.luns[lun].backing_store != path:
                raise exception.ExportError(name=path, iqn=iqn,
                                            reason=f"LUN {lun} already serves "
                                                   f"{cur.luns[lun].backing_store}")
            # CHAP before the initiator ACL: tgtd admits logins as soon as an ACL is bound,
            # so binding the ACL first would open the LUN without credentials for a moment.
            if chap and (cur is None or chap.user not in cur.accounts):
                try:
                    self.new_account(chap)
                except exception.TargetExists:
                    pass
                try:
                    self.bind_account(tid, chap.user)
                except exception.TargetExists:
                    pass
            for addr in initiators:
                if cur is None or addr not in cur.acls:
                    try:
                        self.bind_initiator(tid, addr)
                    except exception.TargetExists:
                        pass
            return tid

    def unexport(self, iqn: str, chap_user: str | None = None,
                 targets: dict[str, Target] | None = None) -> bool:
        """Delete the target (even with sessions) and its CHAP account; False if absent."""
        self.check_iqn(iqn)
        with self._lock(iqn):
            cur = (targets if targets is not None else self.show()).get(iqn)
            found = cur is not None
            if cur is not None:
                try:
                    self.delete_target(cur.tid, force=True)
                except exception.TargetNotFound:
                    found = False
            users = set(cur.accounts if cur else [])
            if chap_user:
                users.add(chap_user)
            for user in sorted(users):
                try:
                    self.delete_account(user)
                except exception.TargetNotFound:
                    pass
            return found

    def refresh_lun(self, iqn: str, path: str, lun: int = 1) -> bool:
        """Re-create the LUN so initiators see a new size (tgtd reads it at LUN creation).
        False when the IQN is not exported."""
        self.check_iqn(iqn)
        with self._lock(iqn):
            cur = self.show().get(iqn)
            if cur is None:
                return False
            if lun in cur.luns:
                self.delete_lun(cur.tid, lun)
            self.add_lun(cur.tid, lun, path)
            return True

    def restore_exports(self) -> str:
        """Ask the SAN to recreate every export recorded in zol:* properties."""
        return self.executor.execute(["zol-wrapper", "restore-exports"], timeout=600).stdout
