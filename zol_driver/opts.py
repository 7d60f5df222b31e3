"""Configuration options of the ZFS-on-Linux driver.

Only the ``zol_*`` options are new.  The driver also reads Cinder's own options, registered
from Cinder's lists at driver construction (driver.py) so that their names, defaults and help
stay Cinder's: san_ip, san_login, san_private_key, san_ssh_port, ssh_conn_timeout,
san_thin_provision, san_is_local (cinder.volume.drivers.san.san.san_opts) and target_prefix,
target_ip_address, target_port, use_chap_auth, chap_username, chap_password,
max_over_subscription_ratio, reserved_percentage (cinder.volume.driver.volume_opts).

This module must not import Cinder: oslo-config-generator and ``zol-san check`` load it
without a Cinder installation.
"""
from __future__ import annotations

from oslo_config import cfg

PROTOCOL_VERSION = 2

zol_opts = [
    cfg.StrOpt("zol_parent_dataset",
               default="",
               help="ZFS dataset under which this backend creates its zvols, e.g. "
                    "'tank/cinder'. It must exist on the SAN and be one of the `parents` of "
                    "the SAN wrapper's config. Volumes are <parent>/volume-<uuid>, snapshots "
                    "<parent>/volume-<uuid>@snapshot-<uuid>. Required."),
    cfg.IntOpt("zol_volblocksize",
               default=0,
               choices=[0, 4096, 8192, 16384, 32768, 65536, 131072],
               help="volblocksize in bytes for new zvols; 0 keeps the ZFS default."),
    cfg.StrOpt("zol_clone_mode",
               default="clone",
               choices=[("clone", ("zfs clone: instant and space-efficient; the source keeps "
                                  "a (hidden, garbage-collected) dependency until the clone "
                                  "is deleted")),
                        ("copy", "zfs send | zfs recv: an independent full copy")],
               help="How volumes are created from snapshots and from other volumes."),
    cfg.BoolOpt("zol_retype_copy",
                default=True,
                help="Retype a detached volume without snapshots to a type with another "
                     "zol:volblocksize by a copy on the SAN (new zvol, block copy by the "
                     "wrapper, names swapped; the data never leaves the SAN). False: such a "
                     "retype returns to Cinder, which migrates the volume only with "
                     "--migration-policy on-demand (host copy through os-brick)."),
    cfg.StrOpt("zol_ssh_known_hosts_file",
               default="/etc/cinder/zol_known_hosts",
               help="known_hosts file holding the SAN's SSH host key. Host keys are checked "
                    "strictly: an unknown or changed key refuses the connection."),
    cfg.BoolOpt("zol_ssh_strict_host_key_checking",
                default=True,
                help="Reject SAN host keys not in zol_ssh_known_hosts_file. Turning this off "
                     "allows man-in-the-middle attacks; it exists for throw-away labs only."),
    cfg.IntOpt("zol_ssh_command_timeout",
               default=300, min=1,
               help="Seconds one command on the SAN may take (zfs destroy of a large zvol or "
                    "a copy can be slow; copies use zol_copy_timeout)."),
    cfg.IntOpt("zol_copy_timeout",
               default=3600, min=1,
               help="Seconds a full copy (zol_clone_mode = copy) may take."),
    cfg.IntOpt("zol_ssh_max_sessions",
               default=16, min=1, max=64,
               help="Concurrent commands multiplexed as channels of the one SSH connection "
                    "(must not exceed the SAN sshd's MaxSessions)."),
    cfg.IntOpt("zol_ssh_keepalive",
               default=15, min=0,
               help="Seconds between SSH keepalives on the persistent connection (0: off)."),
    cfg.ListOpt("zol_local_wrapper_command",
                default=["/usr/local/sbin/zol-ssh-wrapper", "/etc/zol/wrapper.conf"],
                help="argv prefix used when san_is_local = True: the wrapper and its config; "
                     "'--' and the protocol command are appended. Prepend 'sudo' when "
                     "cinder-volume does not run as root."),
    cfg.ListOpt("zol_target_initiators",
                default=["ALL"],
                help="Initiator addresses allowed to log in to every target ('ALL' or IP "
                     "addresses); combine with use_chap_auth for per-volume secrets."),
    cfg.IntOpt("zol_busy_retries",
               default=10, min=0,
               help="Retries of 'dataset is busy' (tgtd may still hold a zvol for a moment "
                    "after its target is deleted)."),
    cfg.FloatOpt("zol_busy_retry_interval",
                 default=1.0, min=0,
                 help="Seconds between 'dataset is busy' retries."),
    cfg.IntOpt("zol_replication_interval",
               default=300, min=0,
               help="Seconds between two replication rounds when replication_device names a "
                    "second ZFS SAN: each replicated volume (volume type with "
                    "replication_enabled='<is> True') gets a @zol-repl-<epoch> snapshot sent "
                    "incrementally to the replica. The replica's data is at most this old "
                    "plus one transfer (the RPO). 0 turns the periodic rounds off (volumes "
                    "are still seeded at create)."),
    cfg.IntOpt("zol_zvol_wait",
               default=120, min=1, max=120,
               help="Seconds to wait for /dev/zvol/... to appear after a zvol is created."),
]


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """oslo.config.opts entry point (namespace zol_driver).

    The options live in each backend's section of cinder.conf (enabled_backends), or in
    [backend_defaults] for values shared by all zol backends.
    """
    return [("backend_defaults", list(zol_opts))]
