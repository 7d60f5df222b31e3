"""Replication of zvols to a second ZFS SAN (Cinder replication v2.1, "cheesecake").

Why this shape:

* The stream goes SAN A -> cinder-volume -> SAN B over the driver's two SSH connections
  (zol_driver/transfer.py), so each SAN's key stays confined to its own wrapper and the SANs
  never need to reach (or trust) each other.
* The state lives on the SANs, not in this process: a volume is replicated when it carries
  ``@zol-repl-<epoch>`` snapshots, and the last common snapshot is the newest one whose name
  AND guid exist on both sides.  A restarted or second cinder-volume (active-active) finds the
  same answer; nothing is remembered across syncs but figures for the stats.
* ``zol-repl-`` never collides with Cinder's ``snapshot-<uuid>`` or the driver's ``clone-<id>``,
  and these snapshots are hidden from every list Cinder sees (manageable snapshots).
* Each sync: snapshot the active side, send ``-i last-common new`` (a full stream the first
  time), then drop every older ``zol-repl-`` snapshot on both sides: the one just sent stays as
  the next base.  A receive is resumable (transfer.send resumes with the receive_resume_token
  and aborts what it cannot finish), so a dropped stream costs no full resend.
* RPO = the interval (zol_replication_interval) plus one transfer.

This module knows datasets and Cinder's replication vocabulary (statuses, backend ids) but does
not import Cinder: driver.py passes volumes as mappings and a lock factory (Cinder's
coordination, so two services of a cluster never sync one volume at once).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from zol_driver import exception, ssh, transfer
from zol_driver.ssh import Executor
from zol_driver.targets import tgt as tgt_mod
from zol_driver.zfs import COMP_RE, ZfsClient

LOG = logging.getLogger(__name__)

SNAP_PREFIX = "zol-repl-"
SNAP_RE = re.compile(r"zol-repl-([0-9]{1,12})")
DEFAULT_BACKEND = "default"
EXTRA_SPEC = "replication_enabled"
SNAP_PROPS = ("name", "guid", "creation")

# Cinder's fields.ReplicationStatus values this driver reports.
ENABLED = "enabled"
ERROR = "error"
FAILED_OVER = "failed-over"
FAILOVER_ERROR = "failover-error"
NOT_CAPABLE = "not-capable"

# replication_device keys (Cinder's MultiOpt of dicts): required, then optional with defaults.
REQUIRED_KEYS = ("backend_id", "san_ip", "san_login", "san_private_key", "zol_parent_dataset")
OPTIONAL_KEYS = ("san_ssh_port", "zol_ssh_known_hosts_file", "target_ip_address",
                 "target_port", "target_prefix")


class ReplicationConfigError(exception.ZolException):
    message = "replication_device %(key)s: %(reason)s"


class ReplicationError(exception.ZolException):
    message = "replication of %(name)s: %(reason)s"


@dataclasses.dataclass(frozen=True)
class Device:
    """One replication_device line, validated."""

    backend_id: str
    san_ip: str
    san_login: str
    san_private_key: str
    parent: str
    san_ssh_port: int = 22
    known_hosts_file: str = ""
    target_ip_address: str = ""
    target_port: int = 3260
    target_prefix: str = ""


def _port(key: str, raw: Any) -> int:
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise ReplicationConfigError(key=key, reason=f"{raw!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise ReplicationConfigError(key=key, reason=f"{value} is not in 1..65535")
    return value


def parse_devices(raw: Iterable[Mapping[str, Any]] | None, *, known_hosts_default: str,
                  target_prefix_default: str, primary: tuple[str, int, str]) -> list[Device]:
    """Cinder's replication_device dicts -> Devices; every bad key is named in the error.

    Exactly one device is supported (one replica SAN).  `primary` = (san_ip, ssh port,
    parent): the replica must be another place, else replication would destroy its source.
    """
    devices = [dict(d) for d in (raw or []) if d]
    if not devices:
        return []
    if len(devices) > 1:
        raise ReplicationConfigError(
            key="(count)", reason=f"{len(devices)} replication_device lines: this driver "
                                  "replicates to exactly one second SAN; keep one")
    d = {str(k).strip(): str(v).strip() for k, v in devices[0].items()}
    unknown = sorted(set(d) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise ReplicationConfigError(
            key=unknown[0], reason="unknown key; allowed: "
                                   + ", ".join(REQUIRED_KEYS + OPTIONAL_KEYS))
    for key in REQUIRED_KEYS:
        if not d.get(key):
            raise ReplicationConfigError(key=key, reason="missing: replication_device = "
                                         "backend_id:<id>,san_ip:<address>,san_login:<user>,"
                                         "san_private_key:<path>,zol_parent_dataset:<dataset>")
    bid = d["backend_id"]
    if bid == DEFAULT_BACKEND or not COMP_RE.fullmatch(bid):
        raise ReplicationConfigError(
            key="backend_id", reason=f"{bid!r}: a name like 'san-b' "
                                     "([A-Za-z0-9][A-Za-z0-9_.:-]*), not 'default'")
    parent = d["zol_parent_dataset"]
    if any(not COMP_RE.fullmatch(p) for p in parent.split("/")) or "/" not in parent:
        raise ReplicationConfigError(
            key="zol_parent_dataset", reason=f"{parent!r} is not a dataset below a pool "
                                             "like 'tank/cinder-replica'")
    dev = Device(
        backend_id=bid, san_ip=d["san_ip"], san_login=d["san_login"],
        san_private_key=d["san_private_key"], parent=parent,
        san_ssh_port=_port("san_ssh_port", d.get("san_ssh_port", "22")),
        known_hosts_file=d.get("zol_ssh_known_hosts_file") or known_hosts_default,
        target_ip_address=d.get("target_ip_address") or d["san_ip"],
        target_port=_port("target_port", d.get("target_port", "3260")),
        target_prefix=d.get("target_prefix") or target_prefix_default)
    if (dev.san_ip, dev.san_ssh_port, dev.parent) == primary:
        raise ReplicationConfigError(
            key="san_ip", reason="the replica is this backend's own SAN and parent: give the "
                                 "second SAN (or at least another parent dataset)")
    return [dev]


def is_replicated_type(vtype: Any) -> bool:
    """A volume type with replication_enabled='<is> True' (Cinder's convention)."""
    try:
        specs = vtype["extra_specs"] or {}
    except (KeyError, TypeError, AttributeError):
        return False
    value = str(specs.get(EXTRA_SPEC, "")).strip().lower()
    return value in ("<is> true", "true")


def volume_id_of(comp: str) -> str | None:
    """volume-<uuid> -> <uuid> (the ids Cinder's replication error updates carry)."""
    return comp[len("volume-"):] if comp.startswith("volume-") else None


@dataclasses.dataclass
class Site:
    """One SAN as the driver uses it: commands, zvols, exports, the portals it hands out."""

    name: str                    # "default" (the primary) or the device's backend_id
    executor: Executor
    zfs: ZfsClient
    tgt: tgt_mod.TgtAdm
    portals: list[str]


@dataclasses.dataclass
class VolumeState:
    """Figures of the last sync of one volume (for the stats; the SANs hold the state)."""

    synced_at: float = 0.0       # creation time of the newest snapshot both sides have
    bytes: int = 0
    seconds: float = 0.0
    error: str = ""


def _snap_epoch(name: str) -> int | None:
    m = SNAP_RE.fullmatch(name.partition("@")[2])
    return int(m.group(1)) if m else None


def _repl_only(rows: list[dict]) -> list[dict]:
    """The zol-repl snapshots of a tree() (volume row first), oldest first."""
    snaps = [r for r in rows[1:] if _snap_epoch(r["name"]) is not None]
    return sorted(snaps, key=lambda r: _snap_epoch(r["name"]) or 0)


class Replicator:
    """The replication state machine of one backend (primary site, one replica site)."""

    def __init__(self, primary: Site, replica: Site, *, interval: float,
                 active_backend_id: str | None = None, timeout: float = 3600,
                 lock: Callable[[str], Any] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.primary = primary
        self.replica = replica
        self.interval = float(interval)
        self.timeout = float(timeout)
        self._lock_factory = lock or local_lock
        self._clock = clock
        self.failed_over = bool(active_backend_id) and active_backend_id != DEFAULT_BACKEND
        if self.failed_over and active_backend_id != replica.name:
            raise ReplicationConfigError(
                key="backend_id", reason=f"Cinder says this backend is failed over to "
                f"{active_backend_id!r}, but replication_device names {replica.name!r}")
        self.volumes: dict[str, VolumeState] = {}
        self._reported: set[str] = set()     # volumes Cinder was told are in error
        self.last_round: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- sides ----------------------------------------------------------------------------------

    @property
    def active(self) -> Site:
        return self.replica if self.failed_over else self.primary

    @property
    def passive(self) -> Site:
        return self.primary if self.failed_over else self.replica

    @property
    def active_backend_id(self) -> str:
        return self.active.name

    def _lock(self, comp: str):
        # tooz's file driver makes the name a path: no "/" in it
        return self._lock_factory(
            "zol-repl-" + self.primary.zfs.parent.replace("/", "_") + "-" + comp)

    # -- snapshots ------------------------------------------------------------------------------

    @staticmethod
    def repl_snaps(zfs: ZfsClient, ds: str) -> list[dict]:
        """DS's zol-repl snapshots, oldest first ([] when DS does not exist)."""
        return _repl_only(zfs.tree(ds, SNAP_PROPS))

    @staticmethod
    def common(src: list[dict], dst: list[dict]) -> tuple[dict, dict] | None:
        """The newest snapshot present on both sides (same name and same guid)."""
        by_name = {r["name"].partition("@")[2]: r for r in dst}
        for row in reversed(src):
            twin = by_name.get(row["name"].partition("@")[2])
            if twin is not None and twin.get("guid") == row.get("guid"):
                return row, twin
        return None

    def _new_snap(self, zfs: ZfsClient, ds: str, existing: list[dict]) -> str:
        epoch = int(self._clock())
        newest = max((_snap_epoch(r["name"]) or 0 for r in existing), default=0)
        snap = f"{ds}@{SNAP_PREFIX}{max(epoch, newest + 1)}"
        zfs.snapshot(snap)
        return snap

    @staticmethod
    def _drop(zfs: ZfsClient, snaps: Iterable[dict], keep: str) -> None:
        keep_name = keep.partition("@")[2]
        for row in snaps:
            if row["name"].partition("@")[2] != keep_name:
                zfs.destroy(row["name"], deferred=True)

    # -- one volume -----------------------------------------------------------------------------

    def _send(self, src: Site, snap: str, dst: Site, dst_ds: str, base: str | None):
        return transfer.send(src.zfs, snap, dst.zfs, dst_ds, base=base, timeout=self.timeout)

    @staticmethod
    def _drop_partial(dst: Site, dst_ds: str) -> None:
        """A receive left half done by an earlier process (cinder-volume restarted mid-stream;
        transfer.send resumes within one call): free it so this round starts clean."""
        try:
            if dst.zfs.resume_token(dst_ds) is not None:
                LOG.info("%s on %s has a partial receive of an earlier stream: aborting it",
                         dst_ds, dst.name)
                dst.zfs.abort_receive(dst_ds)
        except exception.ZolException as exc:
            LOG.info("cannot check %s for a partial receive: %s", dst_ds, exc)

    def sync(self, comp: str, src: Site | None = None, dst: Site | None = None) -> VolumeState:
        """One round for volume COMP from src (default: the active side) to dst."""
        src = src or self.active
        dst = dst or self.passive
        src_ds, dst_ds = src.zfs.ds(comp), dst.zfs.ds(comp)
        state = self.volumes.setdefault(comp, VolumeState())
        with self._lock(comp):
            try:
                res, base, new = self._sync_locked(src, src_ds, dst, dst_ds)
            except exception.ZolException as exc:
                state.error = str(exc)
                raise
        state.synced_at = float(_snap_epoch(new) or self._clock())
        state.bytes, state.seconds, state.error = res.bytes, res.seconds, ""
        LOG.info("replicated %s to %s (%s): %d bytes in %.1f s", src_ds, dst.name,
                 "incremental" if base else "full", res.bytes, res.seconds)
        return state

    def _sync_locked(self, src: Site, src_ds: str, dst: Site, dst_ds: str):
        self._drop_partial(dst, dst_ds)
        src_rows = src.zfs.tree(src_ds, SNAP_PROPS)
        if not src_rows:
            raise ReplicationError(name=src_ds, reason=f"it does not exist on {src.name}")
        src_snaps = _repl_only(src_rows)
        dst_rows = dst.zfs.tree(dst_ds, SNAP_PROPS)
        dst_snaps = _repl_only(dst_rows)
        pair = self.common(src_snaps, dst_snaps)
        if pair is None and dst_rows:
            # a replica that shares no snapshot with its source cannot take an incremental
            # stream; it is a copy of ours (same name, in the replica's own parent)
            LOG.warning("%s on %s has no snapshot in common with %s: replacing it by a full "
                        "copy", dst_ds, dst.name, src_ds)
            self._destroy_tree(dst, dst_ds)
            dst_snaps = []
        new = self._new_snap(src.zfs, src_ds, src_snaps)
        base = pair[0]["name"] if pair else None
        try:
            res = self._send(src, new, dst, dst_ds, base)
        except exception.ZolException:
            # the new snapshot is no base for anything: drop it, keep the common one
            with contextlib.suppress(exception.ZolException):
                src.zfs.destroy(new, deferred=True)
            raise
        self._drop(src.zfs, src_snaps, new)
        self._drop(dst.zfs, dst_snaps, new)
        return res, base, new

    def seed(self, comp: str, props: Mapping[str, str] | None = None,
             thick: bool | None = None, inherit: Iterable[str] = ()) -> dict:
        """A new replicated volume: its first (full) stream, then the type's policy set on
        the replica (a stream without -p carries no properties: what a failover serves must
        compress, sync and reserve as the type says).  Also after a retype (an incremental
        round, the new policy).  The volume is usable even when the replica cannot be
        reached: its status says error and the periodic sync retries (the zol-repl snapshot
        marks it as replicated)."""
        try:
            self.sync(comp)
        except exception.ZolException as exc:
            LOG.error("seeding the replica of %s on %s failed (the periodic sync retries): "
                      "%s", comp, self.passive.name, exc)
            src_ds = self.active.zfs.ds(comp)
            try:
                if not self.repl_snaps(self.active.zfs, src_ds):
                    self._new_snap(self.active.zfs, src_ds, [])
            except exception.ZolException as exc2:
                LOG.error("cannot mark %s as replicated: %s", src_ds, exc2)
            return {"replication_status": ERROR}
        if props is not None:
            try:
                self.apply_policy(comp, props, thick, inherit)
            except exception.ZolException as exc:
                # the data is replicated; what is missing is how the replica stores it
                LOG.warning("the replica of %s on %s is up to date but lacks its type's "
                            "policy (fix the replica's parent, e.g. its free space for a "
                            "thick volume, then retype again): %s", comp, self.passive.name,
                            exc)
        return {"replication_status": ENABLED}

    def apply_policy(self, comp: str, props: Mapping[str, str], thick: bool | None,
                     inherit: Iterable[str] = ()) -> None:
        """The volume's ZFS policy on its replica: PROPS set, INHERIT (what a retype dropped)
        inherited, refreservation for thick/thin."""
        site = self.passive
        ds = site.zfs.ds(comp)
        for name, value in sorted(props.items()):
            site.zfs.set_prop(ds, name, value)
        for name in inherit:
            site.zfs.inherit_prop(ds, name)
        if thick is not None:
            site.zfs.set_refreservation(ds, thick)
        LOG.info("policy of %s set on its replica on %s: %s%s", comp, site.name,
                 ", ".join(f"{k}={v}" for k, v in sorted(props.items())) or "inherited",
                 "" if thick is None else (", thick" if thick else ", thin"))

    def _destroy_tree(self, site: Site, ds: str) -> bool:
        """Destroy a replica zvol (snapshots first: the grammar has no -r); False if absent."""
        with contextlib.suppress(exception.ZolException):
            site.zfs.abort_receive(ds)
        rows = site.zfs.tree(ds, ("name", "type"))
        if not rows:
            return False
        for row in rows[1:]:
            site.zfs.destroy(row["name"])
        site.tgt.unexport(site.tgt.iqn(ds.rpartition("/")[2]))
        site.zfs.destroy(ds)
        return True

    def delete_replica(self, comp: str) -> None:
        """The volume was deleted: its replica goes too (a replica SAN that cannot be reached
        is logged; the periodic sync deletes the orphan later)."""
        self.volumes.pop(comp, None)
        with self._lock(comp):
            site = self.passive
            try:
                if self._destroy_tree(site, site.zfs.ds(comp)):
                    LOG.info("deleted the replica %s on %s", site.zfs.ds(comp), site.name)
            except exception.ZolException as exc:
                LOG.error("could not delete the replica %s on %s (it is removed by the next "
                          "sync that reaches it): %s", site.zfs.ds(comp), site.name, exc)

    def drop_snapshots(self, comp: str) -> None:
        """Replication turned off for a volume (retype): its zol-repl snapshots and replica."""
        site = self.active
        for row in self.repl_snaps(site.zfs, site.zfs.ds(comp)):
            site.zfs.destroy(row["name"], deferred=True)
        self.delete_replica(comp)

    # -- all volumes ----------------------------------------------------------------------------

    def replicated(self, site: Site | None = None) -> dict[str, list[dict]]:
        """{volume comp: its zol-repl snapshots} of one side, from ONE zfs list."""
        site = site or self.active
        out: dict[str, list[dict]] = {}
        for row in site.zfs.inventory(SNAP_PROPS, types=("snapshot",)):
            ds, _, snap = row["name"].partition("@")
            if SNAP_RE.fullmatch(snap):
                out.setdefault(ds.rpartition("/")[2], []).append(row)
        return out

    def sync_all(self) -> dict[str, Any]:
        """One periodic round: every replicated volume of the active side, then orphans."""
        if self.failed_over:
            return {}
        t0 = time.monotonic()
        done, failed, moved = 0, 0, 0
        try:
            vols = self.replicated()
        except exception.ZolException as exc:
            LOG.error("replication round skipped: the active SAN %s cannot list its volumes: "
                      "%s", self.active.name, exc)
            return {}
        if vols:
            try:
                ssh.protocol_version(self.passive.executor)
            except exception.ZolException as exc:
                # one connection attempt per round, not one per volume
                LOG.error("replication round skipped: the replica SAN %s cannot be reached "
                          "(%s); %d volumes wait", self.passive.name, exc, len(vols))
                for comp in vols:
                    self.volumes.setdefault(comp, VolumeState()).error = str(exc)
                return {}
        for comp in sorted(vols):
            if comp.startswith("deleted-"):
                continue
            try:
                st = self.sync(comp)
                done += 1
                moved += st.bytes
            except exception.ZolException as exc:
                failed += 1
                LOG.error("replication of %s to %s failed (retried next round): %s", comp,
                          self.passive.name, exc)
        for gone in set(self.volumes) - set(vols):
            self.volumes.pop(gone, None)
        try:
            self._collect_orphans(set(vols))
        except exception.ZolException as exc:
            LOG.warning("orphan replicas on %s not checked: %s", self.passive.name, exc)
        self.last_round = {"volumes": done, "failed": failed, "bytes": moved,
                           "seconds": round(time.monotonic() - t0, 2), "at": self._clock()}
        return self.last_round

    def _collect_orphans(self, live: set[str]) -> None:
        """Replicas (zol-repl snapshots on the replica side) whose volume is gone from the
        active side: a delete that could not reach the replica."""
        theirs = self.replicated(self.passive)
        if not theirs:
            return
        ours = {r["name"].rpartition("/")[2]
                for r in self.active.zfs.inventory(("name",), types=("volume",))}
        for comp in sorted(set(theirs) - live - ours):
            LOG.info("%s on %s is the replica of a deleted volume: deleting it", comp,
                     self.passive.name)
            self.delete_replica(comp)

    # -- periodic loop --------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None or self.interval <= 0:
            return
        self._thread = threading.Thread(target=self._loop, name="zol-replication",
                                        daemon=True)
        self._thread.start()
        LOG.info("replication to %s every %.0f s started", self.replica.name, self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sync_all()
            except Exception:    # the loop must survive anything; say why it failed
                LOG.exception("replication round failed")

    # -- stats ----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Per-pool capabilities and figures (Cinder copies them into the pool)."""
        now = self._clock()
        synced = [v.synced_at for v in self.volumes.values() if v.synced_at]
        moved = sum(v.bytes for v in self.volumes.values())
        secs = sum(v.seconds for v in self.volumes.values())
        errors = [v for v in self.volumes.values() if v.error]
        # a recovered volume keeps the backend in error until Cinder asked for the updates
        # (get_replication_error_status is only called while the stats say error)
        recovered = [c for c in self._reported
                     if c not in self.volumes or not self.volumes[c].error]
        out: dict[str, Any] = {
            "replication_enabled": True,
            "replication_targets": [self.replica.name],
            "replication_count": 1,
            "replication_type": "async",
            "replication_interval_seconds": self.interval,
            "replication_volumes": len(self.volumes),
            "replication_lag_seconds": round(now - min(synced), 1) if synced else 0,
            "replication_bytes_per_second": round(moved / secs) if secs > 0 else 0,
            "replication_status": ERROR if errors or recovered else ENABLED,
            "active_backend_id": self.active_backend_id,
        }
        if self.failed_over:
            out["replication_status"] = FAILED_OVER
        return out

    def error_updates(self) -> list[dict]:
        """get_replication_error_status: the volumes whose last sync failed, and those
        reported before that have recovered since (back to enabled)."""
        out = []
        for comp in sorted(set(self.volumes) | self._reported):
            vid = volume_id_of(comp)
            st = self.volumes.get(comp)
            if st is not None and st.error:
                self._reported.add(comp)
                status = ERROR
            elif comp in self._reported:
                self._reported.discard(comp)
                status = ENABLED
            else:
                continue
            if vid:
                out.append({"volume_id": vid, "replication_status": status})
        return out

    # -- failover / failback --------------------------------------------------------------------

    def check_target(self, secondary_id: str | None) -> str:
        """The backend id a failover_host call goes to (Cinder's InvalidReplicationTarget
        cases raise ValueError here; driver.py converts)."""
        if secondary_id == DEFAULT_BACKEND:
            if not self.failed_over:
                raise ValueError("not failed over: there is nothing to fail back")
            return DEFAULT_BACKEND
        if self.failed_over:
            raise ValueError(f"already failed over to {self.replica.name}: fail back first "
                             "(--backend_id default)")
        if secondary_id not in (None, self.replica.name):
            raise ValueError(f"unknown replication target {secondary_id!r} (this backend "
                             f"has {self.replica.name!r})")
        return self.replica.name

    def failover(self, volumes: list[Mapping], export: Callable[[Site, Mapping], dict | None]
                 ) -> list[dict]:
        """Serve the replicated volumes from the replica (the primary may be gone: it is not
        contacted).  Each replica is rolled back to its last complete snapshot (a partial
        receive is dropped); in-use volumes are exported on the replica at once (the
        attachments' connection info must point there); others are exported at attach."""
        site = self.replica
        updates = []
        for vol in volumes:
            comp = vol["name"]
            ds = site.zfs.ds(comp)
            try:
                with contextlib.suppress(exception.ZolException):
                    site.zfs.abort_receive(ds)
                snaps = self.repl_snaps(site.zfs, ds)
                if not snaps:
                    raise ReplicationError(name=ds, reason=f"no replica on {site.name}")
                with contextlib.suppress(exception.NotMostRecentSnapshot):
                    site.zfs.rollback(snaps[-1]["name"])
                upd: dict[str, Any] = {"replication_status": FAILED_OVER,
                                       "provider_location": None}
                made = export(site, vol) if _in_use(vol) else None
                if made:
                    upd.update(made)
                LOG.info("failover: %s served from %s as of %s", comp, site.name,
                         snaps[-1]["name"].partition("@")[2])
            except exception.ZolException as exc:
                LOG.error("failover of %s to %s failed: %s", comp, site.name, exc)
                upd = {"status": "error", "replication_status": FAILOVER_ERROR}
            updates.append({"volume_id": vol["id"], "updates": upd})
        return updates

    def failback(self, volumes: list[Mapping], export: Callable[[Site, Mapping], dict | None]
                 ) -> list[dict]:
        """Back to the primary: per volume, stop the replica's export, snapshot it, send the
        changes since the last common snapshot to the primary (``receive -F``), export there
        if in use.  Raises TransportError when the primary cannot be reached (nothing was
        changed then: the backend stays failed over)."""
        src, dst = self.replica, self.primary
        ssh.protocol_version(dst.executor)       # reachable? (raises TransportError)
        updates = []
        for vol in volumes:
            comp = vol["name"]
            try:
                with self._lock(comp):
                    src.tgt.unexport(src.tgt.iqn(comp))
                    self._prepare_failback(dst, dst.zfs.ds(comp), src, src.zfs.ds(comp))
                self.sync(comp, src=src, dst=dst)
                dst.tgt.unexport(dst.tgt.iqn(comp))   # a stale target restored at its boot
                upd: dict[str, Any] = {"replication_status": ENABLED,
                                       "provider_location": None}
                made = export(dst, vol) if _in_use(vol) else None
                if made:
                    upd.update(made)
                LOG.info("failback: %s is served from the primary again", comp)
            except exception.ZolException as exc:
                LOG.error("failback of %s failed (its data stays on %s): %s", comp, src.name,
                          exc)
                upd = {"status": "error", "replication_status": FAILOVER_ERROR}
            updates.append({"volume_id": vol["id"], "updates": upd})
        self._collect_deleted_while_failed_over(dst, {v["name"] for v in volumes})
        return updates

    def _collect_deleted_while_failed_over(self, prim: Site, live: set[str]) -> None:
        """Volumes deleted while the primary was away still have their old copy there (with
        zol-repl snapshots): Cinder no longer lists them, so they go now."""
        try:
            stale = sorted(set(self.replicated(prim)) - live)
        except exception.ZolException as exc:
            LOG.warning("cannot look for volumes deleted during the failover on %s: %s",
                        prim.name, exc)
            return
        for comp in stale:
            if comp.startswith("deleted-"):
                continue
            try:
                if self._destroy_tree(prim, prim.zfs.ds(comp)):
                    LOG.info("failback: %s was deleted while failed over: its old copy on "
                             "the primary is gone too", comp)
            except exception.ZolException as exc:
                LOG.error("failback: cannot delete the old copy of %s on the primary: %s",
                          comp, exc)

    def _prepare_failback(self, prim: Site, prim_ds: str, rep: Site, rep_ds: str) -> None:
        """Make the primary's copy take `-i common new`: drop its partial receive and the
        zol-repl snapshots newer than the common one; refuse (rather than destroy) Cinder
        snapshots taken after it."""
        with contextlib.suppress(exception.ZolException):
            prim.zfs.abort_receive(prim_ds)
        rows = prim.zfs.tree(prim_ds, SNAP_PROPS)
        if not rows:
            return      # not on the primary: a full stream
        ours = self.repl_snaps(prim.zfs, prim_ds)
        pair = self.common(self.repl_snaps(rep.zfs, rep_ds), ours)
        if pair is None:
            raise ReplicationError(name=prim_ds, reason=(
                f"no snapshot in common with {rep.name}: the primary's copy cannot be "
                f"updated incrementally; rename or destroy {prim_ds} on the primary to get a "
                "full copy"))
        base_created = pair[1]["creation"] or 0
        base_epoch = _snap_epoch(pair[1]["name"]) or 0
        for row in rows[1:]:
            epoch = _snap_epoch(row["name"])
            if epoch is not None:
                if epoch > base_epoch:
                    prim.zfs.destroy(row["name"], deferred=True)
            elif (row["creation"] or 0) > base_created:
                raise ReplicationError(name=prim_ds, reason=(
                    f"snapshot {row['name']} was taken after the last sync to {rep.name}: "
                    "failing back would roll it away; delete it in Cinder, then fail back"))

    def switch(self, backend_id: str | None) -> None:
        """failover_completed: make backend_id's site the active one."""
        self.failed_over = bool(backend_id) and backend_id != DEFAULT_BACKEND
        LOG.info("replication: the active site is now %s", self.active_backend_id)


def _in_use(vol: Mapping) -> bool:
    try:
        return vol["status"] == "in-use" or bool(vol["volume_attachment"])
    except (KeyError, TypeError):
        return False


@contextlib.contextmanager
def _local_lock_cm(lock: threading.Lock):
    with lock:
        yield


_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def local_lock(name: str):
    """A process-local lock (unit tests; the driver passes Cinder's coordination lock)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault(name, threading.Lock())
    return _local_lock_cm(lock)
