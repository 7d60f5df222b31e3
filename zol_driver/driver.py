"""Cinder volume driver for zvols on a ZFS-on-Linux SAN, exported with tgt over iSCSI.

This is the only module that imports Cinder.  It maps Cinder's volume/snapshot objects to the
two helpers (zfs.py: datasets; targets/tgt.py: iSCSI targets) and converts their exceptions
into Cinder's at this boundary.

ZFS dependencies versus Cinder deletes: a Cinder delete must never fail because ZFS still
needs an object, and must never destroy a clone's data.  So

* snapshots are always destroyed with ``zfs destroy -d``: immediately when possible, else when
  their last clone goes (ZFS does it by itself);
* a volume whose snapshots still have clones is hidden: marked ``zol:deleted=1`` and renamed
  to ``deleted-volume-<id>``, then garbage collected (by delete_volume of the last dependent
  clone and by every stats refresh) once nothing depends on it;
* a clone of a volume uses a temporary snapshot that is deferred-destroyed at once, so it
  disappears together with the clone;
* zol_clone_mode = copy makes independent copies (send | recv) instead.
"""
from __future__ import annotations

import functools
import logging
import secrets
import string
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

from cinder import exception as cinder_exception
from cinder import interface
from cinder.common import constants
from cinder.volume import driver, volume_utils
from cinder.volume.drivers.san import san
from oslo_config import cfg

from zol_driver import (exception, image_transfer, opts, policy, replication, ssh, transfer,
                        zfs)
from zol_driver.targets import tgt

LOG = logging.getLogger(__name__)
CONF = cfg.CONF

GIB = 1024 ** 3
LUN = 1
HIDDEN_PREFIX = "deleted-"
CLONE_SNAP_PREFIX = "clone-"
RETYPE_NEW_SUFFIX = ".retype"
RETYPE_OLD_SUFFIX = ".retype-old"
STATS_PROPS = ("name", "type", "used", "available", "volsize", "zol:deleted")
_ALNUM = string.ascii_letters + string.digits


MIGRATE_SNAP_PREFIX = "zol-migrate-"


def location_info(san_ip: str | None, parent: str, section: str | None) -> str:
    """``ZFSonLinuxISCSIDriver:<san>:<parent>:<cinder.conf section>`` (the section lets a
    source backend on the same host reach this one for a send | receive migration)."""
    return f"ZFSonLinuxISCSIDriver:{san_ip or 'local'}:{parent}:{section or ''}"


def parse_location_info(loc: str) -> tuple[str, str, str | None] | None:
    """(san, parent, section or None) of a zol backend's location_info, None if not ours.

    Also reads the older ``ZFSonLinuxISCSIDriver:<san>:<parent>`` (no section).  A parent has
    a '/' and no ':' (the pool root is never a parent); a section has neither; the SAN address
    may be an IPv6 address with colons.
    """
    kind, _, rest = (loc or "").partition(":")
    if kind != "ZFSonLinuxISCSIDriver" or not rest:
        return None
    head, _, last = rest.rpartition(":")
    section = None
    if "/" not in last:
        section, rest = (last or None), head
    san, _, parent = rest.rpartition(":")
    if not san or "/" not in parent:
        return None
    return san, parent, section


def _san_id(conf: Any) -> tuple[str, int]:
    """Which SAN a backend's section talks to: address and ssh port (0: san_is_local)."""
    if conf.san_is_local:
        return "local", 0
    return str(conf.san_ip or ""), int(conf.san_ssh_port or 22)


def _conf_sections() -> list[str]:
    """The sections of this host's cinder.conf files (a backend's section lives there)."""
    return list(CONF.list_all_sections())


def generate_secret(length: int = 20) -> str:
    """A CHAP secret/user name within the protocol's [A-Za-z0-9]{12,64} (and tgt's rules)."""
    return "".join(secrets.choice(_ALNUM) for _ in range(length))


def _gib_ceil(nbytes: int) -> int:
    """Bytes -> whole GiB, rounded up (Cinder sizes are integers)."""
    return -(-int(nbytes) // GIB)


def _object_id(args: tuple, kwargs: dict, key: str = "id") -> str:
    """The id of the first volume/snapshot argument, for Cinder's exception templates."""
    for arg in list(args) + list(kwargs.values()):
        try:
            return str(arg[key])
        except (TypeError, KeyError, IndexError):
            continue
    return "?"


# Which Cinder exception an operation's zol_driver error becomes (Cinder's manager and its
# callers look for these; everything else is VolumeBackendAPIException).
_EXPORT_OPS = ("create_export", "ensure_export", "remove_export", "extend_volume",
               "revert_to_snapshot")


def opts_volume_name(volume_id: str) -> str:
    """Cinder's name of a volume id (volume_name_template, 'volume-%s' by default)."""
    return CONF.volume_name_template % volume_id


def _snapshot_known(sid: str) -> bool:
    """Does Cinder's database still have snapshot SID (the snapshot twin of
    volume_utils.check_already_managed_volume)?"""
    import uuid

    from cinder import context, objects
    try:
        uuid.UUID(sid)
    except ValueError:
        return False
    return bool(objects.Snapshot.exists(context.get_admin_context(), sid))


def _coordination_lock(name: str) -> Any:
    """Cinder's coordination lock (tooz: file, etcd, ...), so two services of a cluster never
    replicate one volume at once; a process-local lock where the coordinator is not started
    (the driver used outside cinder-volume)."""
    from cinder import coordination
    if coordination.COORDINATOR.coordinator is not None:
        return coordination.COORDINATOR.get_lock(name)
    return replication.local_lock(name)


def _translate(func: Callable) -> Callable:
    """Turn zol_driver errors into Cinder's at the boundary (Cinder's own pass through)."""

    @functools.wraps(func)
    def wrapper(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return func(self, *args, **kwargs)
        except exception.ZolException as exc:
            LOG.error("%s failed: %s", func.__name__, exc)
            name = func.__name__
            if isinstance(exc, exception.DatasetBusy) and name == "delete_volume":
                vid = _object_id(args, kwargs, "name")
                raise cinder_exception.VolumeIsBusy(volume_name=vid) from exc
            if isinstance(exc, exception.DatasetNotFound) and "snapshot" in name:
                raise cinder_exception.SnapshotNotFound(
                    snapshot_id=_object_id(args, kwargs)) from exc
            if isinstance(exc, (exception.TargetError, exception.ExportError)) \
                    and name in _EXPORT_OPS:
                if name == "create_export":
                    raise cinder_exception.ISCSITargetCreateFailed(
                        volume_id=_object_id(args[1:], kwargs)) from exc
                if name == "remove_export":
                    raise cinder_exception.ISCSITargetRemoveFailed(
                        volume_id=_object_id(args[1:], kwargs)) from exc
                raise cinder_exception.TargetUpdateFailed(
                    volume_id=_object_id(args, kwargs)) from exc
            raise cinder_exception.VolumeBackendAPIException(data=str(exc)) from exc

    return wrapper


@interface.volumedriver
class ZFSonLinuxISCSIDriver(image_transfer.LibiscsiImageTransferMixin, driver.ISCSIDriver):
    """zvols on a remote (or local) ZFS-on-Linux SAN, exported by tgtd over iSCSI.

    Version history:
        1.0.0 - persistent SSH, wrapper protocol 1, snapshots, clones (clone/copy), extend,
                revert, manage/unmanage, exports recorded in zol:* properties.
        2.0.0 - wrapper protocol 2: exports addressed by IQN through the wrapper's verbs,
                CHAP on stdin and on by default, SCSI identity from the volume id, UNMAP on
                thin zvols, write-cache policy, online extend in place, multipath portals,
                shared_targets=False, Cinder's exception types.
    """

    VERSION = "2.0.0"
    CI_WIKI_NAME = "zol-openstack"
    SUPPORTS_ACTIVE_ACTIVE = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Tests may inject an Executor (e.g. the fake SAN); production builds it in do_setup.
        self._injected_executor = kwargs.pop("zol_executor", None)
        self._injected_replica = kwargs.pop("zol_replica_executor", None)
        # Cinder passes the service's active_backend_id (set by failover_host) at every start
        self._active_backend_id = kwargs.get("active_backend_id")
        super().__init__(*args, **kwargs)
        self.configuration.append_config_values(san.san_opts)
        self.configuration.append_config_values(opts.zol_opts)
        self.backend_name = (self.configuration.safe_get("volume_backend_name")
                             or "ZFSonLinux")
        self.executor: ssh.Executor | None = None
        self.zfs: zfs.ZfsClient | None = None
        self.tgt: tgt.TgtAdm | None = None
        self._pool: futures.ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self.replication: replication.Replicator | None = None

    @classmethod
    def get_driver_options(cls) -> list:
        names = ("san_ip", "san_login", "san_private_key", "san_ssh_port", "ssh_conn_timeout",
                 "san_thin_provision", "san_is_local")
        return [o for o in san.san_opts if o.name in names] + list(opts.zol_opts)

    # -- setup ----------------------------------------------------------------------------------

    def _config_error(self, option: str, reason: str) -> cinder_exception.VolumeDriverException:
        msg = (f"ZFSonLinuxISCSIDriver backend {self.backend_name}: option {option}: {reason}")
        LOG.error("%s", msg)
        return cinder_exception.VolumeDriverException(message=msg)

    def _make_executor(self, conf: Any = None) -> ssh.Executor:
        c = conf or self.configuration
        if c.san_is_local:
            return ssh.LocalExecutor(c.zol_local_wrapper_command, c.zol_ssh_command_timeout)
        if not c.san_ip:
            raise self._config_error("san_ip", "not set: give the SAN's address "
                                               "(or san_is_local = True)")
        if not c.san_private_key:
            raise self._config_error("san_private_key", "not set: give the path of the SSH "
                                                        "private key whose public key the SAN "
                                                        "forces through zol-ssh-wrapper")
        return ssh.SSHExecutor(
            c.san_ip, c.san_ssh_port, c.san_login, key_filename=c.san_private_key,
            known_hosts_file=c.zol_ssh_known_hosts_file,
            strict_host_key_checking=c.zol_ssh_strict_host_key_checking,
            connect_timeout=c.ssh_conn_timeout, command_timeout=c.zol_ssh_command_timeout,
            max_sessions=c.zol_ssh_max_sessions, keepalive=c.zol_ssh_keepalive)

    def do_setup(self, context: Any) -> None:
        c = self.configuration
        if not c.zol_parent_dataset:
            raise self._config_error("zol_parent_dataset", "not set: name the ZFS dataset "
                                                           "that holds this backend's zvols")
        self.executor = self._injected_executor or self._make_executor()
        try:
            self.zfs = zfs.ZfsClient(self.executor, c.zol_parent_dataset,
                                     busy_retries=c.zol_busy_retries,
                                     busy_interval=c.zol_busy_retry_interval,
                                     copy_timeout=c.zol_copy_timeout)
            self.tgt = tgt.TgtAdm(self.executor, c.target_prefix)
        except exception.ZolException as exc:
            raise self._config_error("zol_parent_dataset", str(exc)) from exc
        self._setup_replication()

    # -- replication (zol_driver/replication.py) ------------------------------------------------

    def _setup_replication(self) -> None:
        """replication_device -> the replica's executor, ZfsClient and tgt client (its own
        key, known_hosts and parent, confined by ITS wrapper); the active site is the one
        Cinder's active_backend_id names (it survives restarts in the service record)."""
        c = self.configuration
        assert self.executor is not None and self.zfs is not None and self.tgt is not None
        try:
            devices = replication.parse_devices(
                c.safe_get("replication_device"),
                known_hosts_default=c.zol_ssh_known_hosts_file,
                target_prefix_default=c.target_prefix,
                primary=(c.san_ip or "local", int(c.san_ssh_port or 22), self.zfs.parent))
        except replication.ReplicationConfigError as exc:
            raise self._config_error("replication_device", str(exc)) from exc
        active = self._active_backend_id
        if not devices:
            if active and active != replication.DEFAULT_BACKEND:
                raise self._config_error(
                    "replication_device", f"this backend is failed over to {active!r} but no "
                    "replication_device is configured: restore it, or fail back first")
            return
        dev = devices[0]
        try:
            rexec = self._injected_replica or ssh.SSHExecutor(
                dev.san_ip, dev.san_ssh_port, dev.san_login, key_filename=dev.san_private_key,
                known_hosts_file=dev.known_hosts_file,
                strict_host_key_checking=c.zol_ssh_strict_host_key_checking,
                connect_timeout=c.ssh_conn_timeout, command_timeout=c.zol_ssh_command_timeout,
                max_sessions=c.zol_ssh_max_sessions, keepalive=c.zol_ssh_keepalive)
            rzfs = zfs.ZfsClient(rexec, dev.parent, busy_retries=c.zol_busy_retries,
                                 busy_interval=c.zol_busy_retry_interval,
                                 copy_timeout=c.zol_copy_timeout)
            rtgt = tgt.TgtAdm(rexec, dev.target_prefix)
        except exception.ZolException as exc:
            raise self._config_error("replication_device", str(exc)) from exc
        port = c.target_port
        primary = replication.Site(replication.DEFAULT_BACKEND, self.executor, self.zfs,
                                   self.tgt, self._config_portals())
        replica = replication.Site(
            dev.backend_id, rexec, rzfs, rtgt,
            [f"{volume_utils.sanitize_host(dev.target_ip_address)}:{dev.target_port or port}"])
        try:
            self.replication = replication.Replicator(
                primary, replica, interval=c.zol_replication_interval,
                active_backend_id=active, timeout=c.zol_copy_timeout,
                lock=_coordination_lock)
        except replication.ReplicationConfigError as exc:
            raise self._config_error("replication_device", str(exc)) from exc
        self._use_site(self.replication.active)
        LOG.info("%s: replication to %s (%s@%s:%d, parent %s) every %d s; active site %s",
                 self.backend_name, dev.backend_id, dev.san_login, dev.san_ip,
                 dev.san_ssh_port, dev.parent, c.zol_replication_interval,
                 self.replication.active_backend_id)

    def _use_site(self, site: replication.Site) -> None:
        self.executor, self.zfs, self.tgt = site.executor, site.zfs, site.tgt

    def _check_replica(self) -> None:
        """The passive site is checked, never fatal: the active one serves the volumes."""
        rep = self.replication
        if rep is None:
            return
        site = rep.passive
        try:
            _version, protocol = ssh.protocol_version(site.executor)
            caps = ssh.san_capabilities(site.executor)
            found = site.zfs.info(site.zfs.parent, ("name", "type"))
        except exception.ZolException as exc:
            LOG.error("%s: replication site %s cannot be reached or refuses the key (%s): "
                      "replication rounds fail until it can", self.backend_name, site.name,
                      exc)
            return
        problems = []
        if protocol != opts.PROTOCOL_VERSION:
            problems.append(f"its wrapper speaks protocol {protocol}")
        if caps.get("send") != "yes":
            problems.append("its wrapper has no send/receive (capabilities: no send=yes): "
                            "upgrade wrappers/zol-ssh-wrapper there")
        if found is None:
            problems.append(f"dataset {site.zfs.parent} does not exist (zfs create -p -o "
                            f"mountpoint=none {site.zfs.parent})")
        for p in problems:
            LOG.error("%s: replication site %s: %s", self.backend_name, site.name, p)
        if not problems:
            LOG.info("%s: replication site %s ready (parent %s)", self.backend_name,
                     site.name, site.zfs.parent)

    def _replicated(self, volume: Any) -> bool:
        return replication.is_replicated_type(self._volume_type(volume))

    def _seed(self, volume: Any, update: dict | None) -> dict | None:
        """After a create: a replicated volume's first full stream to the replica."""
        if not self._replicated(volume):
            return update
        if self.replication is None:
            raise cinder_exception.InvalidVolumeType(reason=(
                f"volume type of {volume['id']} has replication_enabled but backend "
                f"{self.backend_name} has no replication_device"))
        pol = self._policy(volume)
        return {**(update or {}), **self.replication.seed(
            volume["name"], pol.create_props(), not self._is_thin(pol))}

    def _export_on(self, site: replication.Site, volume: Any) -> dict | None:
        return self._export(volume, create=True, site=site)

    def failover(self, context: Any, volumes: list, secondary_id: str | None = None,
                 groups: Any = None) -> tuple[str, list, list]:
        """Cinder replication v2.1 (and the active-active first stage): serve the replicated
        volumes from the replica (failover) or the primary (secondary_id 'default')."""
        rep = self.replication
        if rep is None:
            raise cinder_exception.UnableToFailOver(
                reason=f"backend {self.backend_name} has no replication_device")
        try:
            target = rep.check_target(secondary_id)
        except ValueError as exc:
            raise cinder_exception.InvalidReplicationTarget(reason=str(exc)) from exc
        LOG.info("%s: %s to %s for %d replicated volumes", self.backend_name,
                 "failback" if target == replication.DEFAULT_BACKEND else "failover",
                 target, len(volumes))
        if target == replication.DEFAULT_BACKEND:
            try:
                updates = rep.failback(volumes, self._export_on)
            except exception.TransportError as exc:
                raise cinder_exception.InvalidReplicationTarget(reason=(
                    f"the primary SAN cannot be reached ({exc}): bring it back, then fail "
                    "back")) from exc
        else:
            updates = rep.failover(volumes, self._export_on)
        return target, updates, []

    def failover_completed(self, context: Any, active_backend_id: str | None = None) -> None:
        """Every service of the cluster (and failover_host) switches its active site."""
        if self.replication is None:
            raise cinder_exception.UnableToFailOver(
                reason=f"backend {self.backend_name} has no replication_device")
        self.replication.switch(active_backend_id)
        self._use_site(self.replication.active)
        self._stats = {}

    def failover_host(self, context: Any, volumes: list, secondary_id: str | None = None,
                      groups: Any = None) -> tuple[str, list, list]:
        target, updates, group_updates = self.failover(context, volumes, secondary_id, groups)
        self.failover_completed(context, target)
        return target, updates, group_updates

    def get_replication_error_status(self, context: Any, groups: Any) -> tuple[list, list]:
        if self.replication is None:
            return [], []
        return [], self.replication.error_updates()

    def check_for_setup_error(self) -> None:
        c = self.configuration
        assert self.executor is not None and self.zfs is not None
        try:
            version, protocol = ssh.protocol_version(self.executor)
        except exception.HostKeyError as exc:
            raise self._config_error("zol_ssh_known_hosts_file", str(exc)) from exc
        except exception.AuthenticationError as exc:
            raise self._config_error("san_private_key", str(exc)) from exc
        except exception.TransportError as exc:
            raise self._config_error("san_ip", str(exc)) from exc
        except exception.CommandFailed as exc:
            raise self._config_error(
                "san_private_key" if not c.san_is_local else "zol_local_wrapper_command",
                f"the SAN did not answer `zol-wrapper version` (exit {exc.exit_code}: "
                f"{exc.stderr.strip()}): install wrappers/zol-ssh-wrapper on the SAN and force "
                "this key through it in authorized_keys") from exc
        except exception.ParseError as exc:
            raise self._config_error("san_private_key", f"the SAN's answer is not the zol "
                                     f"wrapper's: {exc}") from exc
        if protocol != opts.PROTOCOL_VERSION:
            raise self._config_error(
                "san_ip", f"the SAN wrapper {version} speaks protocol {protocol}, this driver "
                          f"needs {opts.PROTOCOL_VERSION}: upgrade wrappers/zol-ssh-wrapper")
        try:
            found = self.zfs.info(self.zfs.parent, ("name", "type"))
        except exception.WrapperDenied as exc:
            raise self._config_error(
                "zol_parent_dataset", f"{self.zfs.parent} is not one of the wrapper's parents "
                "(/etc/zol/wrapper.conf `parents`) on the SAN: add it there") from exc
        except exception.ZolException as exc:
            raise self._config_error("zol_parent_dataset", str(exc)) from exc
        if found is None:
            raise self._config_error(
                "zol_parent_dataset", f"dataset {self.zfs.parent} does not exist on the SAN: "
                f"create it (zfs create -p -o mountpoint=none {self.zfs.parent})")
        try:
            caps = ssh.san_capabilities(self.executor)
        except exception.ZolException as exc:
            LOG.warning("%s: `zol-wrapper capabilities` failed (%s): assuming the SAN's tgt "
                        "cannot UNMAP", self.backend_name, exc)
            caps = {}
        self._san_unmap = caps.get("unmap") == "yes"
        LOG.info("ZFS SAN backend %s ready: wrapper %s (protocol %d), parent %s, tgt %s "
                 "(UNMAP on zvols: %s), discard %s", self.backend_name, version, protocol,
                 self.zfs.parent, caps.get("tgt", "unknown"),
                 "yes" if self._san_unmap else "no", "on" if self._discard else "off")
        if self.replication is not None:
            self._check_replica()
            self.replication.start()

    # -- helpers --------------------------------------------------------------------------------

    @property
    def _thin(self) -> bool:
        return bool(self.configuration.san_thin_provision)

    @property
    def _discard(self) -> bool:
        """UNMAP on thin LUNs when the SAN's tgtd frees space on a zvol for it (`zol-wrapper
        capabilities`: unmap=yes; stock tgt 1.0.85 fails every UNMAP on a zvol), unless the
        operator sets Cinder's report_discard_supported, which then decides (False: never)
        (doc/operator-guide.md, "Discard")."""
        if not self._thin:
            return False
        explicit = self._operator_setting("report_discard_supported")
        if explicit is not None:
            return bool(explicit)
        return getattr(self, "_san_unmap", False)

    def _operator_setting(self, name: str) -> Any:
        """`name` as cinder.conf sets it (backend section, else [backend_defaults] or
        [DEFAULT]), or None when it is left at Cinder's default."""
        group = getattr(self.configuration, "config_group", None)
        shared = None
        if group is not None:
            # cinder.volume.configuration gives a backend section's options a None default
            try:
                value = CONF[group][name]
            except (cfg.NoSuchOptError, cfg.NoSuchGroupError, KeyError):
                value = None
            if value is not None:
                return value
            shared = "backend_defaults"
        try:
            loc = CONF.get_location(name, shared)
        except (cfg.NoSuchOptError, cfg.NoSuchGroupError):
            return None
        if loc is None or loc.location in (cfg.Locations.opt_default, cfg.Locations.set_default):
            return None
        return CONF[shared][name] if shared else CONF[name]

    def _ds(self, volume_name: str) -> str:
        assert self.zfs is not None
        return self.zfs.ds(volume_name)

    def _snap(self, snapshot: Any) -> str:
        return f"{self._ds(snapshot['volume_name'])}@{snapshot['name']}"

    def _iqn(self, volume: Any) -> str:
        assert self.tgt is not None
        return self.tgt.iqn(volume["name"])

    def _parallel(self, *calls: Callable[[], Any]) -> list[Any]:
        """Run independent SAN commands at once as channels of the one connection."""
        if len(calls) == 1:
            return [calls[0]()]
        with self._pool_lock:
            if self._pool is None:
                self._pool = futures.ThreadPoolExecutor(
                    max_workers=int(self.configuration.zol_ssh_max_sessions),
                    thread_name_prefix="zol-san")
        fs = [self._pool.submit(c) for c in calls]
        return [f.result() for f in fs]

    def _target_ip(self) -> str:
        c = self.configuration
        ip = c.target_ip_address
        if not c.san_is_local and c.san_ip and ip == CONF.my_ip:
            # target_ip_address left at its default ($my_ip = the cinder host): the
            # targets live on the SAN.
            ip = c.san_ip
        return ip

    def _set_size(self, ds: str, size_gb: int, current: int | None) -> None:
        assert self.zfs is not None
        if current is None or current < size_gb * GIB:
            self.zfs.set_volsize(ds, size_gb * GIB)

    def _finish_new_volume(self, ds: str, size_gb: int, current: int | None) -> None:
        """Thick backends reserve the full size; a larger Cinder size grows the zvol."""
        assert self.zfs is not None
        self._set_size(ds, size_gb, current)
        if not self._thin:
            self.zfs.set_refreservation(ds, True)

    def _existing_ok(self, ds: str, size_gb: int) -> bool:
        """Idempotent create: an existing zvol of the same size is success."""
        assert self.zfs is not None
        info = self.zfs.info(ds)
        if info and info["type"] == "volume" and info["volsize"] == size_gb * GIB:
            LOG.info("%s already exists with %d GiB: nothing to do", ds, size_gb)
            return True
        return False

    # -- volumes --------------------------------------------------------------------------------

    # -- volume types (zol:* extra specs, provisioning:type) ---------------------------------

    @staticmethod
    def _type_specs(vtype: Any) -> tuple[str, dict]:
        if not vtype:
            return "(no type)", {}
        try:
            name, specs = vtype["name"], vtype["extra_specs"]
        except (KeyError, TypeError, AttributeError):
            return "(no type)", {}
        return str(name), dict(specs or {})

    def _volume_type(self, volume: Any) -> Any:
        try:
            return volume["volume_type"]
        except (KeyError, TypeError, AttributeError, cinder_exception.CinderException):
            return None

    def _policy_of_type(self, vtype: Any) -> policy.Policy:
        """The type's policy; a bad spec is refused before anything happens on the SAN."""
        name, specs = self._type_specs(vtype)
        try:
            return policy.parse(name, specs)
        except policy.PolicyError as exc:
            LOG.error("%s", exc)
            raise cinder_exception.InvalidVolumeType(reason=str(exc)) from exc

    def _policy(self, volume: Any) -> policy.Policy:
        return self._policy_of_type(self._volume_type(volume))

    def _is_thin(self, pol: policy.Policy) -> bool:
        return self._thin if pol.thin is None else pol.thin

    def _blocksize(self, pol: policy.Policy) -> int | None:
        return pol.volblocksize or self.configuration.zol_volblocksize or None

    @staticmethod
    def _metadata_update(volume: Any, pol: policy.Policy, thin: bool) -> dict:
        """The volume's metadata with its ZFS policy (zol:* keys) replaced; other keys kept."""
        try:
            current = dict(volume["metadata"] or {})
        except (KeyError, TypeError, AttributeError):
            current = {}
        md = {k: v for k, v in current.items() if not k.startswith(policy.SCOPE)}
        md.update(pol.metadata(thin))
        return {"metadata": md}

    def _apply_props(self, ds: str, pol: policy.Policy, thin: bool) -> None:
        """Set a policy on an existing zvol (copies made by send | recv, managed zvols)."""
        assert self.zfs is not None
        for name, value in pol.create_props().items():
            self.zfs.set_prop(ds, name, value)
        self.zfs.set_refreservation(ds, not thin)

    def get_volume_properties(self, volume: Any) -> dict:
        """What ZFS has for the volume (zfs get): its policy as applied on the SAN."""
        assert self.zfs is not None
        return self.zfs.get(self._ds(volume["name"]), zfs.POLICY_PROPS)

    # -- volumes --------------------------------------------------------------------------------

    @_translate
    def create_volume(self, volume: Any) -> dict | None:
        assert self.zfs is not None
        pol = self._policy(volume)
        thin = self._is_thin(pol)
        ds = self._ds(volume["name"])
        try:
            self.zfs.create_volume(ds, int(volume["size"]) * GIB, sparse=thin,
                                   blocksize=self._blocksize(pol), props=pol.create_props())
        except exception.DatasetExists:
            if not self._existing_ok(ds, int(volume["size"])):
                raise
        LOG.info("created %s (%d GiB, %s, volblocksize %s, %s)", ds, int(volume["size"]),
                 "thin" if thin else "thick", self._blocksize(pol) or "default",
                 ", ".join(f"{k}={v}" for k, v in pol.create_props().items()) or
                 "properties inherited")
        return self._seed(volume, self._metadata_update(volume, pol, thin))

    def _clone_from(self, snap: str, ds: str, size_gb: int,
                    pol: policy.Policy | None = None, type_name: str = "") -> bool:
        """Make DS a new volume with SNAP's content (clone or independent copy) and the
        policy's properties; returns whether it is thin."""
        assert self.zfs is not None
        pol = pol or policy.Policy()
        thin = self._is_thin(pol)
        src = self.zfs.get(snap, ("volsize", "volblocksize"))
        if pol.volblocksize and src.get("volblocksize") and \
                pol.volblocksize != src["volblocksize"]:
            raise cinder_exception.InvalidVolumeType(reason=(
                f"volume type {type_name!r}: extra spec zol:volblocksize={pol.volblocksize} "
                f"differs from the source's volblocksize {src['volblocksize']}, which a "
                "clone or copy keeps: create the volume from a type without "
                "zol:volblocksize (or with the source's), then retype it"))
        try:
            if self.configuration.zol_clone_mode == "copy":
                self.zfs.copy(snap, ds)
                # recv brings DS@<snapname> along: an independent copy keeps no snapshot.
                self.zfs.destroy(f"{ds}@{snap.partition('@')[2]}")
                for name, value in pol.create_props().items():
                    self.zfs.set_prop(ds, name, value)
            else:
                self.zfs.clone(snap, ds, props=pol.create_props())
        except exception.DatasetExists:
            if self._existing_ok(ds, size_gb):
                return thin
            raise
        self._set_size(ds, size_gb, src.get("volsize"))
        if not thin:
            self.zfs.set_refreservation(ds, True)
        return thin

    @_translate
    def create_volume_from_snapshot(self, volume: Any, snapshot: Any) -> dict | None:
        # The NEW volume's name (the 2012 driver cloned to the snapshot's name).
        pol = self._policy(volume)
        name, _ = self._type_specs(self._volume_type(volume))
        thin = self._clone_from(self._snap(snapshot), self._ds(volume["name"]),
                                int(volume["size"]), pol, name)
        return self._seed(volume, self._metadata_update(volume, pol, thin))

    @_translate
    def create_cloned_volume(self, volume: Any, src_vref: Any) -> dict | None:
        assert self.zfs is not None
        pol = self._policy(volume)
        name, _ = self._type_specs(self._volume_type(volume))
        src = self._ds(src_vref["name"])
        tmp = f"{src}@{CLONE_SNAP_PREFIX}{volume['id']}"
        try:
            self.zfs.snapshot(tmp)
        except exception.DatasetExists:
            pass
        try:
            thin = self._clone_from(tmp, self._ds(volume["name"]), int(volume["size"]),
                                    pol, name)
        finally:
            # Clone mode: ZFS keeps it until the clone is deleted; copy mode: gone now.
            self.zfs.destroy(tmp, deferred=True)
        return self._seed(volume, self._metadata_update(volume, pol, thin))

    @_translate
    def delete_volume(self, volume: Any) -> None:
        self._delete_volume(volume)
        if self.replication is not None and self._replicated(volume):
            self.replication.delete_replica(volume["name"])

    def _delete_volume(self, volume: Any) -> None:
        assert self.zfs is not None and self.tgt is not None
        ds = self._ds(volume["name"])
        iqn = self._iqn(volume)
        # A target left behind (remove_export died half way) holds the zvol open ("dataset
        # is busy"): unexport (idempotent) together with reading the tree.
        rows, _ = self._parallel(functools.partial(self.zfs.tree, ds),
                                 functools.partial(self.tgt.unexport, iqn))
        if not rows:
            LOG.info("%s does not exist: nothing to delete", ds)
            return
        origin = rows[0].get("origin")
        try:
            self._destroy_or_hide(ds, rows)
        except exception.DatasetBusy:
            # tgtd may hold the zvol a moment after its target is gone.
            self.tgt.unexport(iqn)
            self._destroy_or_hide(ds, rows)
        if origin:
            self._collect(origin.partition("@")[0])

    def _destroy_or_hide(self, ds: str, rows: list[dict]) -> None:
        """Destroy DS, or hide it when clones still depend on its snapshots."""
        assert self.zfs is not None
        pinned = False
        for snap in rows[1:]:
            if snap["clones"]:
                pinned = True
            elif snap.get("defer_destroy") != "on":
                self.zfs.destroy(snap["name"], deferred=True)
        if not pinned:
            try:
                self.zfs.destroy(ds)
                return
            except exception.DatasetHasChildren:
                LOG.info("%s gained a dependent clone meanwhile: hiding it", ds)
        self._hide(ds)

    def _hide(self, ds: str) -> None:
        assert self.zfs is not None
        comp = ds.rpartition("/")[2]
        self.zfs.set_user(ds, "zol:deleted", "1")
        if not comp.startswith(HIDDEN_PREFIX):
            hidden = self.zfs.ds(HIDDEN_PREFIX + comp)
            self.zfs.rename(ds, hidden)
            LOG.info("%s has snapshots with clones: hidden as %s until they are gone", ds,
                     hidden)

    def _collect(self, ds: str) -> None:
        """Garbage-collect a hidden volume (and then its own hidden origin) when unpinned."""
        assert self.zfs is not None
        while ds.rpartition("/")[2].startswith(HIDDEN_PREFIX):
            rows = self.zfs.tree(ds)
            if not rows or any(r["clones"] for r in rows[1:]):
                return
            origin = rows[0].get("origin")
            for snap in rows[1:]:
                self.zfs.destroy(snap["name"], deferred=True)
            try:
                self.zfs.destroy(ds)
            except exception.DatasetHasChildren:
                return
            LOG.info("garbage collected hidden volume %s", ds)
            if not origin:
                return
            ds = origin.partition("@")[0]

    @_translate
    def extend_volume(self, volume: Any, new_size: int) -> None:
        assert self.zfs is not None and self.tgt is not None
        ds = self._ds(volume["name"])
        self.zfs.set_volsize(ds, int(new_size) * GIB)
        # tgtd reads the size when it opens the backing store: the wrapper re-opens it in
        # place (the LUN never disappears; see doc/operator-guide.md "Online extend").
        if self.tgt.resize_lun(self._iqn(volume)):
            LOG.info("%s grown to %d GiB; its LUN now reports the new size", ds, new_size)

    def snapshot_revert_use_temp_snapshot(self) -> bool:
        """No safety snapshot before a revert: it would become the newest ZFS snapshot and
        `zfs rollback` (without -r, which destroys newer snapshots) would refuse the revert."""
        return False

    @_translate
    def revert_to_snapshot(self, context: Any, volume: Any, snapshot: Any) -> None:
        assert self.zfs is not None and self.tgt is not None
        ds = self._ds(volume["name"])
        try:
            self._drop_newer_repl_snaps(ds, self._snap(snapshot))
            self.zfs.rollback(self._snap(snapshot))
        except exception.NotMostRecentSnapshot as exc:
            # A newer ZFS snapshot (kept for a clone) blocks rollback; `-r` would destroy
            # it.  Cinder then reverts generically (copying the snapshot's data).
            raise NotImplementedError(str(exc)) from exc
        # rollback restores the snapshot's volsize; Cinder keeps the volume's size.
        self._set_size(ds, int(volume["size"]), self.zfs.get(ds, ("volsize",))["volsize"])
        # Re-open the zvol in tgtd (size and content as of the snapshot).
        self.tgt.resize_lun(self._iqn(volume))

    def _drop_newer_repl_snaps(self, ds: str, snap: str) -> None:
        """A revert of a replicated volume: the zol-repl snapshots newer than SNAP would block
        `zfs rollback` (no -r in the grammar); they go, and the next round sends a full copy
        (the replica shares no snapshot with the reverted volume any more)."""
        assert self.zfs is not None
        if self.replication is None:
            return
        rows = self.zfs.tree(ds, ("name",))
        names = [r["name"] for r in rows[1:]]
        if snap not in names:
            return
        newer = names[names.index(snap) + 1:]
        if newer and all(n.partition("@")[2].startswith(replication.SNAP_PREFIX)
                         for n in newer):
            for n in newer:
                self.zfs.destroy(n, deferred=True)
            LOG.info("revert of %s: dropped %d replication snapshot(s) newer than %s",
                     ds, len(newer), snap)

    def local_path(self, volume: Any) -> str:
        """The zvol's device path ON THE SAN (this host has no such device)."""
        return "/dev/zvol/" + self._ds(volume["name"])

    # -- snapshots ------------------------------------------------------------------------------

    @_translate
    def create_snapshot(self, snapshot: Any) -> dict | None:
        assert self.zfs is not None
        try:
            self.zfs.snapshot(self._snap(snapshot))
        except exception.DatasetExists:
            LOG.info("snapshot %s already exists", self._snap(snapshot))
        return None

    @_translate
    def delete_snapshot(self, snapshot: Any) -> None:
        assert self.zfs is not None
        # -d: destroyed now, or together with its last clone; never an error for Cinder.
        self.zfs.destroy(self._snap(snapshot), deferred=True)

    # -- exports --------------------------------------------------------------------------------

    def _use_chap(self) -> bool:
        """Cinder's use_chap_auth, but True unless this backend's section (or
        [backend_defaults]) sets it: Cinder's own iSCSI targets always use CHAP."""
        c = self.configuration
        conf = getattr(c, "conf", None)
        backend = getattr(conf, "backend_conf", None)
        if backend is not None:
            value = getattr(backend, "use_chap_auth", None)
            if value is not None:
                return bool(value)
            try:
                loc = CONF.get_location("use_chap_auth", "backend_defaults")
            except (cfg.NoSuchOptError, AttributeError):
                loc = None
            if loc is not None and loc.location != cfg.Locations.opt_default:
                return bool(CONF.backend_defaults.use_chap_auth)
            return True
        return bool(c.safe_get("use_chap_auth"))

    def _stored_chap(self, volume: Any) -> tgt.Chap | None:
        auth = volume.get("provider_auth") if hasattr(volume, "get") else None
        if auth:
            parts = auth.split()
            if len(parts) == 3 and parts[0] == "CHAP":
                return tgt.Chap(parts[1], parts[2])
        return None

    def _chap_for(self, volume: Any, create: bool) -> tgt.Chap | None:
        """create_export: the stored, shared or a new per-volume account; ensure_export: only
        what Cinder stored (or the shared account), never invented credentials."""
        c = self.configuration
        if not self._use_chap():
            return None
        stored = self._stored_chap(volume)
        if stored:
            return stored
        if c.chap_username and c.chap_password:
            return tgt.Chap(c.chap_username, c.chap_password)
        if create:
            return tgt.Chap(generate_secret(20), generate_secret(20))
        LOG.warning("ensure_export: volume %s has no provider_auth (exported before CHAP was "
                    "on): it stays exported without CHAP until it is attached again",
                    volume["id"])
        return None

    def _portals(self) -> list[str]:
        if self.replication is not None:
            return list(self.replication.active.portals)
        return self._config_portals()

    def _config_portals(self) -> list[str]:
        c = self.configuration
        ips = [self._target_ip(), *(c.safe_get("target_secondary_ip_addresses") or [])]
        return [f"{volume_utils.sanitize_host(ip)}:{c.target_port}" for ip in ips]

    def _location(self, tid: int, iqn: str, lun: int,
                  portals: list[str] | None = None) -> str:
        return f"{';'.join(portals or self._portals())},{tid} {iqn} {lun}"

    def _export(self, volume: Any, create: bool,
                site: replication.Site | None = None) -> dict | None:
        """Make the SAN serve the volume (the SAN records the export for restores); `site`:
        another SAN than the active one (failover/failback export there)."""
        zfs_ = site.zfs if site else self.zfs
        tgt_ = site.tgt if site else self.tgt
        assert zfs_ is not None and tgt_ is not None
        c = self.configuration
        ds = zfs_.ds(volume["name"])
        iqn = tgt_.iqn(volume["name"])
        info, _ = self._parallel(functools.partial(zfs_.info, ds,
                                                   ("name", "type", "refreservation")),
                                 functools.partial(self._wait_zvol, ds, quiet=not create,
                                                   zfs_client=zfs_))
        if info is None:
            if create:
                raise exception.ExportError(name=ds, iqn=iqn, reason="the zvol does not exist")
            LOG.warning("ensure_export: %s does not exist on the SAN", ds)
            return None
        chap = self._chap_for(volume, create)
        initiators = list(c.zol_target_initiators) or ["ALL"]
        # thin or thick as the zvol is (its type's provisioning:type, or the backend's)
        thin = not info.get("refreservation")
        made = tgt_.export(ds, iqn, str(volume["id"]), LUN, chap, initiators,
                           thin=thin, unmap=self._discard and thin,
                           write_cache=c.safe_get("iscsi_write_cache") != "off")
        update = {"provider_location": self._location(made.tid, iqn, LUN,
                                                      site.portals if site else None),
                  "provider_auth": f"CHAP {chap.user} {chap.secret}" if chap else None}
        LOG.info("exported %s as %s (tid %d, CHAP %s, UNMAP %s)", ds, iqn, made.tid,
                 "on" if chap else "off", "yes" if made.unmap else "no")
        if self._discard and thin and not made.unmap:
            LOG.warning("%s: its LUN existed before without UNMAP and keeps its parameters "
                        "until it is exported again", ds)
        return update

    def _wait_zvol(self, ds: str, quiet: bool = False,
                   zfs_client: zfs.ZfsClient | None = None) -> None:
        """Wait for /dev/zvol/DS; if udev dropped the link, make ZFS announce the zvol again.

        Linux >= 5.13 with OpenZFS 2.1: udev's zvol_id can fail with ERESTARTSYS while other
        zfs commands run ("zdN: Failed to process device ... error 512", openzfs/zfs#12301)
        and the link is then never created.  A rename there and back re-creates the minor
        and its udev event - the only way to replay it within the SAN protocol.
        """
        zc = zfs_client or self.zfs
        assert zc is not None
        wait = int(self.configuration.zol_zvol_wait)
        try:
            zc.wait_zvol(ds, wait)
            return
        except exception.WrapperDenied:
            raise
        except exception.ZfsError as exc:
            if quiet and zc.info(ds, ("name",)) is None:
                return
            LOG.warning("%s; renaming the zvol there and back to replay its udev event", exc)
        tmp = ds + ".relink"
        zc.rename(ds, tmp)
        zc.rename(tmp, ds)
        zc.wait_zvol(ds, wait)

    @_translate
    def create_export(self, context: Any, volume: Any, connector: Any) -> dict:
        update = self._export(volume, create=True)
        assert update is not None
        return update

    @_translate
    def ensure_export(self, context: Any, volume: Any) -> dict | None:
        return self._export(volume, create=False)

    @_translate
    def remove_export(self, context: Any, volume: Any) -> None:
        assert self.tgt is not None
        # The shared chap_username account stays while any other target is bound to it.
        self.tgt.unexport(self._iqn(volume))

    def initialize_connection(self, volume: Any, connector: Any) -> dict:
        """Cinder's iSCSI properties (all portals of provider_location when the connector
        asks for multipath), CHAP from provider_auth, discard only on thin backends whose
        SAN can UNMAP (report_discard_supported; the LUN then has thin_provisioning=1)."""
        info = super().initialize_connection(volume, connector)
        data = info["data"]
        info["driver_volume_type"] = "iscsi"
        data["discard"] = self._discard
        if (connector or {}).get("multipath") and "target_portals" not in data:
            # As Cinder's ISCSITarget: a multipath connector always gets the lists.
            data["target_portals"] = [data["target_portal"]]
            data["target_iqns"] = [data["target_iqn"]]
            data["target_luns"] = [data["target_lun"]]
        return info

    def terminate_connection(self, volume: Any, connector: Any, **kwargs: Any) -> bool:
        """Nothing per connector (targets admit zol_target_initiators + per-volume CHAP).

        Returns whether the export is still shared: Cinder's attachment API calls
        remove_export only on False (None would leave the target behind until delete).
        """
        attachments = getattr(volume, "volume_attachment", None)
        if attachments is None and isinstance(volume, dict):
            attachments = volume.get("volume_attachment")
        return len(attachments or []) > 1

    # -- retype / migration ---------------------------------------------------------------------

    @staticmethod
    def _attachments(volume: Any) -> list:
        try:
            return list(volume["volume_attachment"] or [])
        except (KeyError, TypeError, AttributeError):
            return []

    def _same_backend(self, host: Any) -> bool:
        want = volume_utils.extract_host((host or {}).get("host", ""), "backend")
        mine = volume_utils.extract_host(getattr(self, "host", "") or "", "backend")
        return not want or not mine or want == mine

    @_translate
    def retype(self, context: Any, volume: Any, new_type: Any, diff: Any,
               host: Any) -> bool | tuple[bool, dict | None]:
        """Change the volume's ZFS policy where it is (policy.plan_retype):

        * changeable properties: ``zfs set`` / ``zfs inherit`` (new writes use them);
        * thin <-> thick: refreservation none/auto (ZFS refuses auto without the space);
        * volblocksize: a new zvol with the new type's policy, a block copy on the SAN
          (zol-wrapper copy-data), then the new zvol takes the volume's name - only for a
          detached volume without snapshots and with zol_retype_copy; else False: Cinder
          migrates, as its migration_policy allows (never: the retype is refused).
        """
        assert self.zfs is not None
        ds = self._ds(volume["name"])
        new = self._policy_of_type(new_type)
        try:
            old = self._policy(volume)
        except cinder_exception.InvalidVolumeType:
            old = policy.Policy()   # a type made invalid later: set everything the new has
        rows = self.zfs.tree(ds, (*zfs.VOLUME_PROPS, "volblocksize"))
        if not rows:
            raise exception.DatasetNotFound(command=("zfs", "list", ds), exit_code=1,
                                            stderr=f"{ds} does not exist", stdout="")
        plan = policy.plan_retype(
            old, new, self._thin, rows[0].get("volblocksize"),
            same_backend=self._same_backend(host), has_snapshots=len(rows) > 1,
            attached=bool(self._attachments(volume)),
            copy_allowed=bool(self.configuration.zol_retype_copy))
        new_name, _ = self._type_specs(new_type)
        LOG.info("retype %s to %r: %s %s", ds, new_name, plan.kind, plan.reason)
        if plan.kind == "migrate":
            return False
        if plan.kind == "copy":
            self._retype_copy(volume, ds, new, int(rows[0]["volsize"]))
        elif plan.kind == "in-place":
            if plan.thick is not None:
                self.zfs.set_refreservation(ds, plan.thick)
            for name, value in sorted(plan.set.items()):
                self.zfs.set_prop(ds, name, value)
            for name in plan.inherit:
                self.zfs.inherit_prop(ds, name)
        update = self._metadata_update(volume, new, self._is_thin(new))
        return True, self._retype_replication(
            volume, new_type, update, new,
            tuple(plan.inherit) if plan.kind == "in-place" else ())

    def _retype_replication(self, volume: Any, new_type: Any, update: dict,
                            new: policy.Policy, inherit: tuple[str, ...]) -> dict:
        """replication_enabled turned on: seed the replica; still on: one round and the new
        policy on the replica; off: drop the replica and the zol-repl snapshots (after a copy
        retype the zvol is new: seeding sends it in full)."""
        if self.replication is None:
            return update
        if replication.is_replicated_type(new_type):
            return {**update, **self.replication.seed(
                volume["name"], new.create_props(), not self._is_thin(new), inherit)}
        if self._replicated(volume):
            self.replication.drop_snapshots(volume["name"])
        return update

    def _retype_copy(self, volume: Any, ds: str, new: policy.Policy, volsize: int) -> None:
        """volblocksize change: new zvol, SAN-side block copy, names swapped."""
        assert self.zfs is not None and self.tgt is not None
        tmp, old = ds + RETYPE_NEW_SUFFIX, ds + RETYPE_OLD_SUFFIX
        thin = self._is_thin(new)
        self.zfs.destroy(tmp)          # a leftover of an interrupted retype (never the volume)
        self.zfs.create_volume(tmp, volsize, sparse=thin, blocksize=self._blocksize(new),
                               props=new.create_props())
        try:
            self.tgt.unexport(self._iqn(volume))   # detached: nothing may write meanwhile
            self._wait_zvol(tmp)
            self.zfs.copy_data(ds, tmp)
            self.zfs.rename(ds, old)
        except Exception:
            self.zfs.destroy(tmp)
            raise
        try:
            self.zfs.rename(tmp, ds)
        except Exception:
            self.zfs.rename(old, ds)
            self.zfs.destroy(tmp)
            raise
        rows = self.zfs.tree(old)
        origin = rows[0].get("origin") if rows else None
        self._destroy_or_hide(old, rows)
        if origin:
            self._collect(origin.partition("@")[0])
        LOG.info("retyped %s by a copy on the SAN (volblocksize %s)", ds, new.volblocksize)

    @_translate
    def migrate_volume(self, context: Any, volume: Any, host: Any) -> tuple[bool, dict | None]:
        """Driver-assisted migration to another zol backend (volume detached):

        * same SAN and pool, other parent: ``zfs rename`` between the two parents (snapshots
          come along, no data moves);
        * another pool on this SAN, or another SAN whose backend section is in this host's
          cinder.conf: ``zfs send | zfs receive`` through this host (_migrate_by_send).
        Anything else: (False, None), Cinder copies generically.
        """
        assert self.zfs is not None and self.tgt is not None
        caps = (host or {}).get("capabilities") or {}
        loc = str(caps.get("location_info") or "")
        where = parse_location_info(loc)
        mine = self.configuration.san_ip or "local"
        if where is None or self._attachments(volume):
            LOG.info("migrate %s to %s: not a zol backend (or the volume is attached): Cinder "
                     "copies", volume["name"], loc or "?")
            return False, None
        san, parent, section = where
        # the same SAN: the same address AND ssh port when the destination's section is here
        # (SANs behind one address differ by port), else the same address
        dconf = self._dest_conf(section) if section and section in _conf_sections() else None
        same_san = (_san_id(dconf) == _san_id(self.configuration) if dconf is not None
                    else san == mine)
        if same_san and parent == self.zfs.parent:
            LOG.info("migrate %s: %s is this backend's own parent: Cinder copies",
                     volume["name"], parent)
            return False, None
        pol = self._policy(volume)
        dest_thin = (caps.get("zol_default_provisioning", "thin") == "thin"
                     if pol.thin is None else pol.thin)
        if not same_san or parent.split("/")[0] != self.zfs.parent.split("/")[0]:
            return self._migrate_by_send(volume, san, parent, section, pol, dest_thin)
        ds = self._ds(volume["name"])
        target = f"{parent}/{volume['name']}"
        self.tgt.unexport(self._iqn(volume))
        self.zfs.move(ds, target, thick=not dest_thin)
        LOG.info("migrated %s to %s by zfs rename", ds, target)
        return True, self._metadata_update(volume, pol, dest_thin)

    # -- migration by zfs send | zfs receive --------------------------------------------------

    def _dest_conf(self, section: str) -> Any:
        """The destination backend's cinder.conf section, read like cinder-volume reads it."""
        from cinder.volume import configuration as vconf
        conf = vconf.Configuration(driver.volume_opts, config_group=section)
        conf.append_config_values(san.san_opts)
        conf.append_config_values(opts.zol_opts)
        return conf

    def _dest_executor(self, conf: Any) -> ssh.Executor:
        """An executor for the destination SAN from ITS section (its key, known_hosts, port:
        confined by its own wrapper)."""
        return self._make_executor(conf)

    def _dest_client(self, san_addr: str, parent: str,
                     section: str | None) -> tuple[zfs.ZfsClient | None, str]:
        """(ZfsClient of the destination, "") or (None, why Cinder must copy instead)."""
        if not section:
            return None, "its location_info names no cinder.conf section (an older driver)"
        if section not in _conf_sections():
            return None, (f"its section [{section}] is not in this host's cinder.conf (the "
                          "backend runs on another host)")
        conf = self._dest_conf(section)
        if conf.zol_parent_dataset != parent or (conf.san_ip or "local") != san_addr:
            return None, (f"section [{section}] names {conf.san_ip or 'local'}:"
                          f"{conf.zol_parent_dataset}, not {san_addr}:{parent}")
        try:
            executor = self._dest_executor(conf)
            client = zfs.ZfsClient(executor, parent, busy_retries=conf.zol_busy_retries,
                                   busy_interval=conf.zol_busy_retry_interval,
                                   copy_timeout=conf.zol_copy_timeout)
        except (exception.ZolException, cinder_exception.VolumeDriverException) as exc:
            return None, f"section [{section}]: {exc}"
        return client, ""

    def _migrate_by_send(self, volume: Any, san_addr: str, parent: str, section: str | None,
                         pol: policy.Policy, dest_thin: bool) -> tuple[bool, dict | None]:
        """Full ``zfs send | zfs receive`` of a detached volume to another pool or SAN.

        Snapshot @zol-migrate-<ts>, stream it (transfer.send: resumable, aborted on failure),
        wait for the zvol on the destination, give it the type's policy (receive carries no
        properties), then unexport and destroy (or hide) the source and drop the temporary
        snapshots.  Any failure before the source is touched: the destination is cleaned up,
        the source keeps its data, export and properties, and the error goes to Cinder.
        """
        assert self.zfs is not None and self.tgt is not None
        dst, why = self._dest_client(san_addr, parent, section)
        if dst is None:
            LOG.info("migrate %s to %s:%s: cannot reach the destination from here (%s): "
                     "Cinder copies", volume["name"], san_addr, parent, why)
            return False, None
        ds = self._ds(volume["name"])
        dst_ds = dst.ds(volume["name"])
        try:
            rows = self.zfs.tree(ds, (*zfs.VOLUME_PROPS, "volblocksize"))
            if not rows:
                raise exception.DatasetNotFound(command="zfs list", exit_code=1,
                                                stderr=f"{ds} does not exist", stdout="")
            live = [r["name"] for r in rows[1:]      # deleted ones wait for their clones
                    if r["name"].partition("@")[2].startswith("snapshot-")
                    and r.get("defer_destroy") != "on"]
            if live:
                # Cinder refuses to migrate a volume with snapshots (API and retype)
                LOG.info("migrate %s: it has snapshots %s: Cinder copies", ds, live)
                return False, None
            if dst.exists(dst_ds):
                raise exception.DatasetExists(
                    command="zfs list", exit_code=0, stdout="",
                    stderr=f"{dst_ds} already exists on {dst.executor.host}: a leftover of "
                           "an earlier migration? Remove it there if no volume uses it")
            return self._send_volume(volume, ds, dst, dst_ds, pol, dest_thin)
        finally:
            dst.executor.close()

    def _send_volume(self, volume: Any, ds: str, dst: zfs.ZfsClient, dst_ds: str,
                     pol: policy.Policy, dest_thin: bool) -> tuple[bool, dict]:
        assert self.zfs is not None and self.tgt is not None
        name = f"{MIGRATE_SNAP_PREFIX}{int(time.time())}"
        snap, dst_snap = f"{ds}@{name}", f"{dst_ds}@{name}"
        t0 = time.monotonic()
        LOG.info("migrating %s to %s on %s by zfs send | zfs receive", ds, dst_ds,
                 dst.executor.host)
        self.zfs.snapshot(snap)
        try:
            res = transfer.send(self.zfs, snap, dst, dst_ds,
                                timeout=self.configuration.zol_copy_timeout)
            dst.wait_zvol(dst_ds, self.configuration.zol_zvol_wait)
            dst.destroy(dst_snap)
            for prop, value in pol.create_props().items():
                dst.set_prop(dst_ds, prop, value)
            dst.set_refreservation(dst_ds, not dest_thin)
        except Exception as exc:
            LOG.error("migration of %s to %s on %s failed, cleaning up the destination "
                      "(the source is untouched): %s", ds, dst_ds, dst.executor.host, exc)
            self._undo_receive(dst, dst_ds, dst_snap)
            self.zfs.destroy(snap)
            raise
        # the copy is complete: the source goes (its clones' origins stay hidden)
        self.zfs.destroy(snap)
        self.tgt.unexport(self._iqn(volume))
        rows = self.zfs.tree(ds)
        origin = rows[0].get("origin") if rows else None
        if rows:
            self._destroy_or_hide(ds, rows)
        if origin:
            self._collect(origin.partition("@")[0])
        LOG.info("migrated %s to %s on %s by zfs send | zfs receive: %.1f MiB in %.1f s "
                 "(%.1f MiB/s on the wire, %.1f s in all)", ds, dst_ds, dst.executor.host,
                 res.bytes / 1048576, res.seconds, res.mib_per_s, time.monotonic() - t0)
        # the old export's portal is the source SAN's: the destination exports it at attach
        return True, {**self._metadata_update(volume, pol, dest_thin),
                      "provider_location": None}

    @staticmethod
    def _undo_receive(dst: zfs.ZfsClient, dst_ds: str, dst_snap: str) -> None:
        """Leave nothing of a failed migration on the destination (never raises)."""
        for step in (lambda: dst.abort_receive(dst_ds), lambda: dst.destroy(dst_snap),
                     lambda: dst.destroy(dst_ds)):
            try:
                step()
            except exception.ZolException as exc:
                LOG.error("could not clean %s on %s: %s (remove it there by hand)", dst_ds,
                          dst.executor.host, exc)

    @_translate
    def update_migrated_volume(self, ctxt: Any, volume: Any, new_volume: Any,
                               original_volume_status: Any) -> dict:
        """After a generic migration the new zvol takes the original's name when it is free
        (the original was on another backend); otherwise Cinder keeps the new name_id."""
        assert self.zfs is not None
        current = self._ds(new_volume["name"])
        wanted = self._ds(opts_volume_name(volume["id"]))
        if current != wanted and not self.zfs.exists(wanted) and self.zfs.exists(current):
            try:
                self.zfs.rename(current, wanted)
                return {"_name_id": None, "provider_location": None}
            except exception.ZolException as exc:
                LOG.warning("could not rename %s to %s: %s", current, wanted, exc)
        return {"_name_id": new_volume["_name_id"] or new_volume["id"],
                "provider_location": new_volume["provider_location"]}

    # -- groups (consistent group snapshots) ----------------------------------------------------

    @staticmethod
    def _cg(group: Any) -> bool:
        return bool(volume_utils.is_group_a_cg_snapshot_type(group))

    @_translate
    def create_group(self, context: Any, group: Any) -> dict:
        """Nothing on the SAN: a group is Cinder's list of volumes.  Only groups of a type
        with consistent_group_snapshot_enabled are ours (others: Cinder's generic groups)."""
        if not self._cg(group):
            raise NotImplementedError()
        return {"status": "available"}

    @_translate
    def update_group(self, context: Any, group: Any, add_volumes: Any = None,
                     remove_volumes: Any = None) -> tuple:
        if not self._cg(group):
            raise NotImplementedError()
        return None, None, None

    @_translate
    def delete_group(self, context: Any, group: Any, volumes: Any) -> tuple:
        if not self._cg(group):
            raise NotImplementedError()
        updates = []
        status = "deleted"
        for v in volumes:
            try:
                self.delete_volume(v)
                updates.append({"id": v["id"], "status": "deleted"})
            except cinder_exception.CinderException as exc:
                LOG.error("group %s: deleting %s failed: %s", group["id"], v["id"], exc)
                updates.append({"id": v["id"], "status": "error_deleting"})
                status = "error_deleting"
        return {"status": status}, updates

    @_translate
    def create_group_snapshot(self, context: Any, group_snapshot: Any,
                              snapshots: Any) -> tuple:
        """All snapshots in ONE ``zfs snapshot a@s1 b@s2 ...``: one transaction group, so the
        set is crash-consistent (writes to the volumes are either in all or in none)."""
        assert self.zfs is not None
        if not self._cg(group_snapshot):
            raise NotImplementedError()
        names = [self._snap(s) for s in snapshots]
        if len(names) == 1:
            self.zfs.snapshot(names[0])
        elif names:
            self.zfs.snapshot_many(names)
        LOG.info("group snapshot %s: %s", group_snapshot["id"], " ".join(names))
        return ({"status": "available"},
                [{"id": s["id"], "status": "available"} for s in snapshots])

    @_translate
    def delete_group_snapshot(self, context: Any, group_snapshot: Any, snapshots: Any) -> tuple:
        """Like single snapshots: deferred destroy, so a snapshot with clones goes with its
        last clone (never fails, never loses a clone's data)."""
        if not self._cg(group_snapshot):
            raise NotImplementedError()
        for s in snapshots:
            self.delete_snapshot(s)
        return ({"status": "deleted"}, [{"id": s["id"], "status": "deleted"} for s in snapshots])

    @_translate
    def create_group_from_src(self, context: Any, group: Any, volumes: Any,
                              group_snapshot: Any = None, snapshots: Any = None,
                              source_group: Any = None, source_vols: Any = None) -> tuple:
        """From a group snapshot: each volume a clone of its snapshot.  From a source group:
        one atomic group snapshot of the sources first (consistent like a group snapshot),
        then the clones."""
        assert self.zfs is not None
        if not self._cg(group):
            raise NotImplementedError()
        updates = []
        if group_snapshot is not None:
            by_id = {s["id"]: s for s in snapshots or []}
            for v in volumes:
                snap = by_id.get(v["snapshot_id"])
                if snap is None:
                    raise exception.ZolException(f"group {group['id']}: no snapshot for "
                                                 f"volume {v['id']}")
                upd = self.create_volume_from_snapshot(v, snap) or {}
                updates.append({"id": v["id"], "status": "available", **upd})
            return {"status": "available"}, updates
        src_by_id = {s["id"]: s for s in source_vols or []}
        pairs = [(v, src_by_id[v["source_volid"]]) for v in volumes]
        tmps = [f"{self._ds(src['name'])}@{CLONE_SNAP_PREFIX}{v['id']}" for v, src in pairs]
        if len(tmps) > 1:
            # one name per command: the wrapper's group form has distinct volumes
            self.zfs.snapshot_many(tmps)
        elif tmps:
            self.zfs.snapshot(tmps[0])
        try:
            for (v, _src), tmp in zip(pairs, tmps):
                pol = self._policy(v)
                name, _ = self._type_specs(self._volume_type(v))
                thin = self._clone_from(tmp, self._ds(v["name"]), int(v["size"]), pol, name)
                updates.append({"id": v["id"], "status": "available",
                                **self._metadata_update(v, pol, thin)})
        finally:
            for tmp in tmps:
                self.zfs.destroy(tmp, deferred=True)
        return {"status": "available"}, updates

    # -- stats ----------------------------------------------------------------------------------

    def get_volume_stats(self, refresh: bool = False) -> dict:
        if refresh or not self._stats:
            self._update_volume_stats()
        return self._stats

    def _update_volume_stats(self) -> None:
        assert self.zfs is not None
        c = self.configuration
        data: dict[str, Any] = {
            "volume_backend_name": self.backend_name, "vendor_name": "Open Source",
            "driver_version": self.VERSION, "storage_protocol": constants.ISCSI,
            "pools": [],
        }
        pool: dict[str, Any] = {
            "pool_name": self.backend_name,
            "reserved_percentage": c.reserved_percentage,
            "max_over_subscription_ratio": c.max_over_subscription_ratio,
            # each volume type chooses (provisioning:type; san_thin_provision is the
            # default).  A thick backend does not announce thin: Cinder's capacity filter
            # would then over-subscribe it for types without provisioning:type.
            "thin_provisioning_support": self._thin,
            "thick_provisioning_support": True,
            "zol_default_provisioning": "thin" if self._thin else "thick",
            "multiattach": True, "QoS_support": False,
            "consistent_group_snapshot_enabled": True,
            # One target per volume: os-brick needs no per-host lock around (dis)connects.
            "shared_targets": False,
            "location_info": location_info(c.san_ip, self.zfs.parent, c.config_group),
            "filter_function": self.get_filter_function(),
            "goodness_function": self.get_goodness_function(),
        }
        try:
            rows = self.zfs.inventory(STATS_PROPS)
        except exception.ZolException as exc:
            LOG.error("Cannot read capacity of %s: %s", self.zfs.parent, exc)
            pool.update(total_capacity_gb=0, free_capacity_gb=0, provisioned_capacity_gb=0,
                        backend_state="down")
            data["pools"].append(pool)
            self._stats = data
            return
        parent = rows[0]
        volumes = [r for r in rows[1:] if r["type"] == "volume"]
        visible = [r for r in volumes if not r["zol:deleted"]
                   and not r["name"].rpartition("/")[2].startswith(HIDDEN_PREFIX)]
        hidden = [r["name"] for r in volumes if r not in visible]
        total = (parent["used"] or 0) + (parent["available"] or 0)
        pool.update(
            total_capacity_gb=round(total / GIB, 2),
            free_capacity_gb=round((parent["available"] or 0) / GIB, 2),
            provisioned_capacity_gb=round(sum(r["volsize"] or 0 for r in visible) / GIB, 2),
            total_volumes=len(visible), backend_state="up")
        if self.replication is not None:
            pool.update(self.replication.stats())
            data["replication_enabled"] = True
            # the manager asks get_replication_error_status when this says error
            data["replication_status"] = pool["replication_status"]
            data["replication_targets"] = [self.replication.replica.name]
        data["pools"].append(pool)
        self._stats = data
        for ds in hidden:
            try:
                self._collect(ds)
            except exception.ZolException as exc:
                LOG.warning("garbage collection of %s failed (will retry): %s", ds, exc)

    # -- manage / unmanage ----------------------------------------------------------------------

    def _ref_name(self, existing_ref: Any) -> str:
        if isinstance(existing_ref, dict):
            name = existing_ref.get("source-name")
        else:
            name = existing_ref
        if not name or not isinstance(name, str):
            raise cinder_exception.ManageExistingInvalidReference(
                existing_ref=existing_ref, reason="give {'source-name': '<zvol name>'}")
        return name

    def _existing_volume(self, existing_ref: Any) -> dict:
        assert self.zfs is not None
        name = self._ref_name(existing_ref)
        ds = name if "/" in name else f"{self.zfs.parent}/{name}"
        try:
            self.zfs.check_ds(ds)
            info = self.zfs.info(ds)
        except exception.ZolException as exc:
            raise cinder_exception.ManageExistingInvalidReference(
                existing_ref=existing_ref, reason=str(exc)) from exc
        if info is None or info["type"] != "volume":
            raise cinder_exception.ManageExistingInvalidReference(
                existing_ref=existing_ref, reason=f"no zvol {ds}")
        comp = ds.rpartition("/")[2]
        if comp.startswith(HIDDEN_PREFIX) or info.get("zol:deleted"):
            raise cinder_exception.ManageExistingInvalidReference(
                existing_ref=existing_ref, reason="a deleted volume kept for its clones")
        return info

    def _refuse_managed_volume(self, volume: Any, info: dict, existing_ref: Any) -> None:
        """A zvol of a volume Cinder still has (volume-<uuid> with that uuid in Cinder's
        database, as the LVM driver checks), or one that is exported, is already Cinder's:
        managing it again would rename a live volume away.  An unmanaged volume keeps its
        name and can be managed again."""
        assert self.tgt is not None
        comp = info["name"].rpartition("/")[2]
        if info["name"] == self._ds(volume["name"]):
            return
        vid = volume_utils.extract_id_from_volume_name(comp)
        if vid and volume_utils.check_already_managed_volume(vid):
            raise cinder_exception.ManageExistingAlreadyManaged(volume_ref=comp)
        # the SAN's zvol dir is /dev/zvol (the wrapper's zvol_dir): compare the dataset part
        if any((lun.backing_store or "").endswith("/" + info["name"])
               for t in self.tgt.show().values() for lun in t.luns.values()):
            raise cinder_exception.ManageExistingInvalidReference(
                existing_ref=existing_ref, reason="it is exported by an iSCSI target")

    @_translate
    def manage_existing(self, volume: Any, existing_ref: Any) -> dict | None:
        """Take the zvol over under Cinder's name and give it the volume type's policy
        (properties set, refreservation per provisioning:type); a zol:volblocksize other
        than the zvol's is refused before anything changes (it is fixed at create)."""
        assert self.zfs is not None
        pol = self._policy(volume)
        info = self._existing_volume(existing_ref)
        self._refuse_managed_volume(volume, info, existing_ref)
        if pol.volblocksize:
            have = self.zfs.get(info["name"], ("volblocksize",)).get("volblocksize")
            if have != pol.volblocksize:
                name, _ = self._type_specs(self._volume_type(volume))
                raise cinder_exception.ManageExistingVolumeTypeMismatch(reason=(
                    f"volume type {name!r}: zol:volblocksize={pol.volblocksize} but the zvol "
                    f"has volblocksize {have} (fixed at create): manage it with a type "
                    "without zol:volblocksize, then retype it"))
        target = self._ds(volume["name"])
        if info["name"] != target:
            self.zfs.rename(info["name"], target)
        thin = self._is_thin(pol)
        self._apply_props(target, pol, thin)
        return self._metadata_update(volume, pol, thin)

    @_translate
    def manage_existing_get_size(self, volume: Any, existing_ref: Any) -> int:
        return _gib_ceil(self._existing_volume(existing_ref)["volsize"])

    def unmanage(self, volume: Any) -> None:
        """Cinder forgets the volume; the zvol stays as it is on the SAN."""

    def _existing_snapshot(self, snapshot: Any, existing_ref: Any) -> dict:
        assert self.zfs is not None
        name = self._ref_name(existing_ref)
        ds = self._ds(snapshot["volume_name"])
        full = name if "@" in name else f"{ds}@{name}"
        if full.partition("@")[0] != ds:
            raise cinder_exception.ManageExistingInvalidReference(
                existing_ref=existing_ref, reason=f"not a snapshot of {ds}")
        try:
            self.zfs.check_snap(full)
            info = self.zfs.info(full, ("name", "type", "volsize", "defer_destroy"))
        except exception.ZolException as exc:
            raise cinder_exception.ManageExistingInvalidReference(
                existing_ref=existing_ref, reason=str(exc)) from exc
        if info is None:
            raise cinder_exception.ManageExistingInvalidReference(
                existing_ref=existing_ref, reason=f"no snapshot {full}")
        return info

    def _refuse_managed_snapshot(self, snapshot: Any, info: dict, existing_ref: Any) -> None:
        """Cinder's own snapshots (snapshot-<uuid>), clone sources (clone-<id>) and snapshots
        already deferred-destroyed are not for managing."""
        name = info["name"].partition("@")[2]
        if info["name"] == self._snap(snapshot):
            return
        sid = volume_utils.extract_id_from_snapshot_name(name)
        if sid and _snapshot_known(sid):
            raise cinder_exception.ManageExistingAlreadyManaged(volume_ref=info["name"])
        if name.startswith((CLONE_SNAP_PREFIX, replication.SNAP_PREFIX)) or \
                info.get("defer_destroy") == "on":
            raise cinder_exception.ManageExistingInvalidReference(
                existing_ref=existing_ref,
                reason="a clone's source or a snapshot already destroyed (deferred)")

    @_translate
    def manage_existing_snapshot(self, snapshot: Any, existing_ref: Any) -> dict | None:
        assert self.zfs is not None
        info = self._existing_snapshot(snapshot, existing_ref)
        self._refuse_managed_snapshot(snapshot, info, existing_ref)
        target = self._snap(snapshot)
        if info["name"] != target:
            self.zfs.rename(info["name"], target)
        return None

    @_translate
    def manage_existing_snapshot_get_size(self, snapshot: Any, existing_ref: Any) -> int:
        return _gib_ceil(self._existing_snapshot(snapshot, existing_ref)["volsize"])

    def unmanage_snapshot(self, snapshot: Any) -> None:
        """Cinder forgets the snapshot; it stays on the SAN."""

    @_translate
    def get_manageable_volumes(self, cinder_volumes: list, marker: Any, limit: Any,
                               offset: Any, sort_keys: Any, sort_dirs: Any) -> list:
        assert self.zfs is not None and self.tgt is not None
        ids = {v["id"] for v in cinder_volumes}
        entries = []
        rows, targets = self._parallel(
            functools.partial(self.zfs.inventory, ("name", "type", "volsize", "zol:deleted"),
                              types=("volume",)), self.tgt.show)
        exported = {(lun.backing_store or "").partition("/zvol/")[2]
                    for t in targets.values() for lun in t.luns.values()}
        for row in rows:
            comp = row["name"].rpartition("/")[2]
            if row["type"] != "volume" or comp.startswith(HIDDEN_PREFIX) or row["zol:deleted"]:
                continue
            vid = volume_utils.extract_id_from_volume_name(comp)
            entry = {"reference": {"source-name": comp},
                     "size": _gib_ceil(row["volsize"] or 0),
                     "cinder_id": vid if vid in ids else None, "extra_info": None,
                     "safe_to_manage": True, "reason_not_safe": None}
            if vid in ids:
                entry.update(safe_to_manage=False, reason_not_safe="already managed")
            elif row["name"] in exported:
                entry.update(safe_to_manage=False, reason_not_safe="exported")
            entries.append(entry)
        return volume_utils.paginate_entries_list(entries, marker, limit, offset, sort_keys,
                                                  sort_dirs)

    @_translate
    def get_manageable_snapshots(self, cinder_snapshots: list, marker: Any, limit: Any,
                                 offset: Any, sort_keys: Any, sort_dirs: Any) -> list:
        assert self.zfs is not None
        ids = {s["id"] for s in cinder_snapshots}
        entries = []
        for row in self.zfs.inventory(("name", "volsize", "defer_destroy"),
                                      types=("snapshot",)):
            vol, _, name = row["name"].partition("@")
            comp = vol.rpartition("/")[2]
            if comp.startswith(HIDDEN_PREFIX) or \
                    name.startswith((CLONE_SNAP_PREFIX, replication.SNAP_PREFIX)) or \
                    row["defer_destroy"] == "on":
                continue
            sid = volume_utils.extract_id_from_snapshot_name(name)
            entry = {"reference": {"source-name": name},
                     "source_reference": {"source-name": comp},
                     "size": _gib_ceil(row["volsize"] or 0),
                     "cinder_id": sid if sid in ids else None, "extra_info": None,
                     "safe_to_manage": sid not in ids,
                     "reason_not_safe": "already managed" if sid in ids else None}
            entries.append(entry)
        return volume_utils.paginate_entries_list(entries, marker, limit, offset, sort_keys,
                                                  sort_dirs)
