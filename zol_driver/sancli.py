"""`zol-san`: set up a ZFS SAN for the zol driver and check it from a Cinder host.

* ``authorize``: the exact authorized_keys line that forces a Cinder key through the wrapper.
* ``install``: put the wrapper, its config and the tgt.service drop-in (export restore) on a SAN.
* ``check``: from a Cinder host, with a backend's cinder.conf section, verify what the driver
  needs - host key known and matching, key accepted, wrapper answering with the expected
  protocol, parent dataset present, tgtd answering - and say how to fix each failure.

It must not import Cinder (it runs on SANs and on hosts without it); Cinder's own option names
(san_ip, san_login, ...) are registered here with Cinder's defaults for reading cinder.conf.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import importlib.machinery
import importlib.util
import ipaddress
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

LOG = logging.getLogger(__name__)

WRAPPER_PATH = "/usr/local/sbin/zol-ssh-wrapper"
WRAPPER_CONF = "/etc/zol/wrapper.conf"
DROP_IN = "etc/systemd/system/tgt.service.d/zol-restore.conf"
KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
             "ecdsa-sha2-nistp521", "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa",
             "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")
HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:/-]{0,252}")
# What may go into command="..." unquoted by sshd's shell: no space, quote, $, `, ;, ...
PATH_RE = re.compile(r"/[A-Za-z0-9_./+-]{1,254}")
COMMENT_RE = re.compile(r"[A-Za-z0-9_.@:+=-]{1,100}")


class SanCliError(Exception):
    """A usage or setup problem: printed as one line, exit status 2."""


# ------------------------------------------------------------------------------------------
# Shipped files (the wrapper and the drop-in live in the source tree's wrappers/ directory).
# ------------------------------------------------------------------------------------------

def shipped_file(name: str) -> Path:
    """Where this installation keeps wrappers/<name>: the source tree, or share/ of a wheel."""
    candidates = [Path(__file__).resolve().parents[1] / "wrappers" / name,
                  Path(sys.prefix) / "share" / "zol-openstack" / "wrappers" / name]
    for c in candidates:
        if c.is_file():
            return c
    raise SanCliError(f"cannot find the shipped {name} (looked in "
                      f"{', '.join(str(c.parent) for c in candidates)}); pass its path "
                      "explicitly")


def load_wrapper_module(path: Path) -> ModuleType:
    """The wrapper as a module: zol-san validates configs with the wrapper's own code."""
    loader = importlib.machinery.SourceFileLoader("zol_ssh_wrapper_cli", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------------------------------
# authorize
# ------------------------------------------------------------------------------------------

def parse_public_key(text: str) -> tuple[str, str, str]:
    """(type, base64 blob, comment) of one OpenSSH public key line, validated."""
    if "PRIVATE KEY" in text:
        raise SanCliError("this is a private key: pass the public one (the .pub file)")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) != 1:
        raise SanCliError(f"expected exactly one public key line, found {len(lines)}")
    parts = lines[0].split()
    if len(parts) < 2 or parts[0] not in KEY_TYPES:
        raise SanCliError("not an OpenSSH public key (want e.g. 'ssh-ed25519 AAAA... "
                          "comment'); is this the private key or an authorized_keys line "
                          "with options?")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except binascii.Error:
        raise SanCliError("the public key's base64 part is damaged") from None
    # the blob starts with its own type name: catch a type/blob mix-up
    if len(blob) < 4 or blob[4:4 + int.from_bytes(blob[:4], "big")].decode(
            "ascii", "replace") not in (parts[0], "ssh-rsa"):
        raise SanCliError("the key type does not match the key data")
    comment = " ".join(parts[2:])
    if comment and not COMMENT_RE.fullmatch(comment):
        comment = re.sub(r"[^A-Za-z0-9_.@:+=-]", "_", comment)[:100]
    return parts[0], parts[1], comment


def check_host(host: str) -> str:
    """A from= pattern element: address, CIDR, or host name - never a wildcard or a network
    that matches any address (a stolen key must not work from elsewhere)."""
    try:
        net = ipaddress.ip_network(host, strict=False)
    except ValueError:
        net = None
    if net is not None:
        if net.prefixlen == 0 or net.network_address.is_unspecified:
            raise SanCliError(f"from={host!r} would admit any address: give the Cinder hosts' "
                              "own addresses (or their subnet)")
        return host
    if any(c in host for c in "*?!"):
        raise SanCliError(f"from={host!r}: wildcards are refused; list each Cinder host")
    if not HOST_RE.fullmatch(host) or host.startswith("-"):
        raise SanCliError(f"{host!r} is not an address, CIDR or host name for from=")
    return host


def authorized_keys_line(public_key: str, hosts: Sequence[str],
                         wrapper: str = WRAPPER_PATH, config: str = WRAPPER_CONF) -> str:
    """The line for /root/.ssh/authorized_keys on the SAN."""
    kind, blob, comment = parse_public_key(public_key)
    if not hosts:
        raise SanCliError("give the Cinder host address(es) with --host (from= is required: "
                          "a stolen key must not work from elsewhere)")
    for p in (wrapper, config):
        if not PATH_RE.fullmatch(p) or "/../" in p + "/" or "//" in p:
            raise SanCliError(f"{p!r} must be a plain absolute path of letters, digits and "
                              "_./+- (sshd hands command= to a shell: nothing may need "
                              "quoting)")
    pattern = ",".join(check_host(h) for h in hosts)
    line = f'restrict,from="{pattern}",command="{wrapper} {config}" {kind} {blob}'
    return line + (" " + comment if comment else "")


def cmd_authorize(a: argparse.Namespace) -> int:
    text = sys.stdin.read() if a.public_key == "-" else Path(a.public_key).read_text()
    hosts = [h for item in a.host for h in item.split(",") if h]
    print(authorized_keys_line(text, hosts, a.wrapper, a.config))
    return 0


# ------------------------------------------------------------------------------------------
# install
# ------------------------------------------------------------------------------------------

def wrapper_conf_text(parents: Sequence[str], iqn_prefix: str, zfs: str, tgtd_socket: str,
                      log_file: str, lock_file: str, syslog: bool) -> str:
    return ("# written by zol-san install; see doc/san-protocol.md\n"
            "[wrapper]\n"
            f"parents = {' '.join(parents)}\n"
            f"iqn_prefix = {iqn_prefix}\n"
            f"zfs = {zfs}\n"
            f"tgtd_socket = {tgtd_socket}\n"
            f"log_file = {log_file}\n"
            f"lock_file = {lock_file}\n"
            f"syslog = {'yes' if syslog else 'no'}\n")


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def install(root: Path, parents: Sequence[str], iqn_prefix: str, zfs: str, tgtd_socket: str,
            log_file: str, lock_file: str, syslog: bool = True, wrapper_src: Path | None = None,
            drop_in_src: Path | None = None, force: bool = False,
            reload: bool | None = None, out: Callable[[str], None] = print) -> list[Path]:
    """Install wrapper + config + drop-in under root; returns the files written."""
    wrapper_src = wrapper_src or shipped_file("zol-ssh-wrapper")
    drop_in_src = drop_in_src or shipped_file("tgt-zol-restore.conf")
    w = load_wrapper_module(wrapper_src)
    conf_text = wrapper_conf_text(parents, iqn_prefix, zfs, tgtd_socket, log_file, lock_file,
                                  syslog)
    conf_path = root / WRAPPER_CONF.lstrip("/")
    if conf_path.exists() and conf_path.read_text() != conf_text and not force:
        raise SanCliError(f"{conf_path} exists with other settings; compare it with the new "
                          "values and rerun with --force to replace it")
    # validate with the wrapper's own parser before touching the real file
    with tempfile.TemporaryDirectory() as d:
        probe = Path(d) / "wrapper.conf"
        probe.write_text(conf_text)
        probe.chmod(0o644)
        try:
            w.load_config(str(probe))
        except w.ConfigError as exc:
            raise SanCliError(str(exc).replace(str(probe), "wrapper.conf")) from None
    if not (root / zfs.lstrip("/")).exists():
        out(f"warning: {zfs} does not exist under {root} (install zfsutils-linux); the "
            "wrapper will exit 67 until it does")
    written = []
    target = root / WRAPPER_PATH.lstrip("/")
    _atomic_write(target, wrapper_src.read_bytes(), 0o755)
    written.append(target)
    _atomic_write(conf_path, conf_text.encode(), 0o644)
    written.append(conf_path)
    drop_in = root / DROP_IN
    _atomic_write(drop_in, drop_in_src.read_bytes(), 0o644)
    written.append(drop_in)
    for p in written:
        out(f"installed {p}")
    if reload is None:
        reload = root == Path("/") and os.path.isdir("/run/systemd/system")
    if reload:
        subprocess.run(["systemctl", "daemon-reload"], check=True)
        out("systemctl daemon-reload: tgt.service now restores exports on (re)start")
    out(f"next: on each Cinder host run `zol-san authorize --public-key <cinder key.pub> "
        f"--host <its address>` and append the line to /root/.ssh/authorized_keys here; "
        f"create the parent dataset(s): {', '.join(parents)}")
    return written


def cmd_install(a: argparse.Namespace) -> int:
    install(Path(a.root), a.parent, a.iqn_prefix, a.zfs, a.tgtd_socket, a.log_file, a.lock_file,
            syslog=not a.no_syslog,
            wrapper_src=Path(a.wrapper_source) if a.wrapper_source else None,
            drop_in_src=Path(a.drop_in_source) if a.drop_in_source else None,
            force=a.force, reload=False if a.no_reload else None)
    return 0


# ------------------------------------------------------------------------------------------
# check
# ------------------------------------------------------------------------------------------

def backend_options(config_file: str, section: str) -> dict:
    """The options `check` needs from one backend section of cinder.conf (with Cinder's
    defaults, and [backend_defaults] as Cinder applies it)."""
    from oslo_config import cfg

    from zol_driver import opts

    if not os.path.isfile(config_file):
        raise SanCliError(f"{config_file} does not exist")
    cinder_opts = [
        cfg.StrOpt("san_ip", default=""), cfg.StrOpt("san_login", default="admin"),
        cfg.StrOpt("san_private_key", default=""), cfg.PortOpt("san_ssh_port", default=22),
        cfg.IntOpt("ssh_conn_timeout", default=30), cfg.BoolOpt("san_is_local", default=False),
        cfg.StrOpt("target_prefix", default="iqn.2010-10.org.openstack:"),
        cfg.StrOpt("volume_driver", default=""),
    ]
    from oslo_config import types

    repl_opt = cfg.MultiOpt("replication_device", item_type=types.Dict())
    conf = cfg.ConfigOpts()
    for group in (section, "backend_defaults"):
        conf.register_opts(cinder_opts + list(opts.zol_opts) + [repl_opt], group=group)
    conf([], project="cinder", default_config_files=[config_file], use_env=False)
    if section not in conf.list_all_sections():
        raise SanCliError(f"{config_file} has no [{section}] section (the backend name listed "
                          "in enabled_backends)")
    values = {}
    for opt in cinder_opts + list(opts.zol_opts) + [repl_opt]:
        loc = conf.get_location(opt.dest, section)
        if loc is not None and loc.location == cfg.Locations.opt_default:
            values[opt.dest] = conf["backend_defaults"][opt.dest]
        else:
            values[opt.dest] = conf[section][opt.dest]
    return values


class Report:
    """Collects check results; each failure carries what to fix."""

    def __init__(self, out: Callable[[str], None] = print):
        self.out = out
        self.failures = 0

    def ok(self, what: str) -> None:
        self.out(f"[ OK ] {what}")

    def fail(self, what: str, fix: str) -> None:
        self.failures += 1
        self.out(f"[FAIL] {what}")
        self.out(f"       fix: {fix}")

    def skip(self, what: str) -> None:
        self.out(f"[SKIP] {what}")


def _fingerprint(key) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def check_host_key(report: Report, host: str, port: int, known_hosts: str,
                   timeout: float) -> bool:
    """Compare the key the SAN offers with the known_hosts entry (no authentication)."""
    import paramiko

    where = host if port == 22 else f"[{host}]:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        report.fail(f"cannot reach sshd at {host}:{port}: {exc}",
                    "check san_ip/san_ssh_port, the network path and that sshd runs on the SAN")
        return False
    t = paramiko.Transport(sock)
    try:
        t.start_client(timeout=timeout)
        offered = t.get_remote_server_key()
    except (paramiko.SSHException, OSError, EOFError) as exc:
        report.fail(f"SSH handshake with {host}:{port} failed: {exc}",
                    "is this port really the SAN's sshd?")
        return False
    finally:
        t.close()
    scan = f"ssh-keyscan -p {port} -t {offered.get_name()} {host} >> {known_hosts}"
    if not os.path.isfile(known_hosts):
        report.fail(f"known_hosts file {known_hosts} does not exist "
                    f"(zol_ssh_known_hosts_file)",
                    f"verify the SAN's fingerprint {_fingerprint(offered)} on its console "
                    f"(ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), then: {scan}")
        return False
    hk = paramiko.HostKeys(known_hosts)
    entry = hk.lookup(where)
    if not entry:
        report.fail(f"{where} is not in {known_hosts}",
                    f"verify the SAN's fingerprint {_fingerprint(offered)} on its console, "
                    f"then: {scan}")
        return False
    recorded = entry.get(offered.get_name())
    if recorded is None or recorded.asbytes() != offered.asbytes():
        have = ", ".join(f"{k} {_fingerprint(v)}" for k, v in entry.items())
        report.fail(f"host key MISMATCH for {where}: the SAN offers {offered.get_name()} "
                    f"{_fingerprint(offered)}, {known_hosts} has {have}",
                    "if the SAN was reinstalled, verify the new fingerprint on its console "
                    f"and replace the line (ssh-keygen -R '{where}' -f {known_hosts}; {scan}); "
                    "otherwise treat it as a man-in-the-middle")
        return False
    report.ok(f"host key of {where} matches {known_hosts} ({_fingerprint(offered)})")
    return True


def _executor(values: dict):
    from zol_driver import ssh

    if values["san_is_local"]:
        return ssh.LocalExecutor(values["zol_local_wrapper_command"],
                                 command_timeout=values["zol_ssh_command_timeout"])
    return ssh.SSHExecutor(
        values["san_ip"], port=values["san_ssh_port"], username=values["san_login"],
        key_filename=values["san_private_key"] or None,
        known_hosts_file=values["zol_ssh_known_hosts_file"],
        strict_host_key_checking=values["zol_ssh_strict_host_key_checking"],
        connect_timeout=values["ssh_conn_timeout"],
        command_timeout=values["zol_ssh_command_timeout"], max_sessions=2, keepalive=0)


def _expected_wrapper_version() -> str | None:
    try:
        text = shipped_file("zol-ssh-wrapper").read_text()
    except SanCliError:
        return None
    m = re.search(r'^VERSION = "([^"]+)"', text, re.M)
    return m.group(1) if m else None


def run_checks(values: dict, out: Callable[[str], None] = print) -> int:
    """All checks against one backend; returns the number of failures."""
    from zol_driver import exception, opts, ssh

    report = Report(out)
    parent = values["zol_parent_dataset"]
    if not parent:
        report.fail("zol_parent_dataset is not set", "set it in the backend section, e.g. "
                    "zol_parent_dataset = tank/cinder")
    if values["san_is_local"]:
        report.skip("host key (san_is_local = True: no SSH)")
    else:
        if not values["san_ip"]:
            report.fail("san_ip is not set", "set san_ip to the SAN's address")
            return report.failures
        key = values["san_private_key"]
        if not key or not os.path.isfile(key):
            report.fail(f"san_private_key {key!r} is not a readable file",
                        "create a key (ssh-keygen -t ed25519 -N '' -f "
                        "/etc/cinder/zol_san_ed25519), install it with `zol-san authorize` "
                        "on the SAN, and set san_private_key to it")
            return report.failures
        if values["zol_ssh_strict_host_key_checking"]:
            if not check_host_key(report, values["san_ip"], values["san_ssh_port"],
                                  values["zol_ssh_known_hosts_file"],
                                  values["ssh_conn_timeout"]):
                return report.failures
        else:
            report.fail("zol_ssh_strict_host_key_checking = False: the SAN's identity is not "
                        "checked", "record the host key and set it back to True")
    ex = _executor(values)
    try:
        try:
            version, protocol = ssh.protocol_version(ex)
        except exception.AuthenticationError as exc:
            report.fail(f"the SAN refused key {values['san_private_key']} for "
                        f"{values['san_login']}: {exc}",
                        "append the line printed by `zol-san authorize --public-key "
                        f"{values['san_private_key']}.pub --host <this host's address>` to "
                        f"~{values['san_login']}/.ssh/authorized_keys on the SAN (and check "
                        "that from= lists this host's address as the SAN sees it)")
            return report.failures
        except exception.WrapperDenied as exc:
            why = exc.stderr.strip() or f"exit {exc.exit_code}"
            fix = ("fix /etc/zol/wrapper.conf on the SAN (see etc/wrapper.conf.sample)"
                   if exc.exit_code == 66 else "install the current wrapper: zol-san install")
            report.fail(f"the wrapper on the SAN refused `zol-wrapper version`: {why}", fix)
            return report.failures
        except exception.CommandFailed as exc:
            report.fail(f"`zol-wrapper version` failed with exit {exc.exit_code}: "
                        f"{exc.stderr.strip()[:200]}",
                        "this key is not forced through the wrapper: prefix its "
                        "authorized_keys line with the options `zol-san authorize` prints "
                        "(restrict,from=...,command=...)")
            return report.failures
        except (exception.TransportError, exception.ParseError) as exc:
            report.fail(f"cannot ask the wrapper for its version: {exc}",
                        "check san_ip/san_ssh_port/san_login and the SAN's sshd")
            return report.failures
        expected = _expected_wrapper_version()
        if protocol != opts.PROTOCOL_VERSION:
            report.fail(f"wrapper speaks protocol {protocol}, this driver needs "
                        f"{opts.PROTOCOL_VERSION}", "install this release's wrapper on the "
                        "SAN: zol-san install")
        elif expected and version != expected:
            report.fail(f"wrapper version {version}, this release ships {expected}",
                        "install this release's wrapper on the SAN: zol-san install")
        else:
            report.ok(f"wrapper {version} answers (protocol {protocol})")
        if parent:
            res = ex.execute(["zfs", "list", "-H", "-p", "-o", "name,type", parent],
                             check=False)
            if res.exit_code == 0 and res.stdout.split()[:1] == [parent]:
                report.ok(f"parent dataset {parent} exists")
            elif res.exit_code == 64:
                report.fail(f"the wrapper does not allow {parent}: {res.stderr.strip()}",
                            f"add {parent} to `parents` in /etc/zol/wrapper.conf on the SAN")
            elif "does not exist" in res.stderr:
                report.fail(f"parent dataset {parent} does not exist on the SAN",
                            f"on the SAN: zfs create -p -o mountpoint=none {parent}")
            else:
                report.fail(f"`zfs list {parent}` failed (exit {res.exit_code}): "
                            f"{res.stderr.strip()[:200]}",
                            "check zfs on the SAN (zfsutils-linux installed, pool imported, "
                            "`zfs` path in /etc/zol/wrapper.conf)")
        res = ex.execute(["zol-wrapper", "show-exports"], check=False)
        if res.exit_code == 0:
            report.ok("tgtd answers (zol-wrapper show-exports)")
        else:
            report.fail(f"tgtd does not answer (exit {res.exit_code}): "
                        f"{res.stderr.strip()[:200]}",
                        "on the SAN: apt-get install tgt && systemctl enable --now tgt "
                        "(and check `tgtd_socket` and `state_dir` in /etc/zol/wrapper.conf)")
    finally:
        ex.close()
    return report.failures


def replica_values(values: dict) -> tuple[str, dict] | None:
    """The replication_device of a backend as the options run_checks() reads: (backend_id,
    values) with the primary's timeouts and host key policy; None without one.  A bad line
    raises SanCliError naming the key (the driver's own parser)."""
    from zol_driver import replication

    try:
        devs = replication.parse_devices(
            values.get("replication_device"),
            known_hosts_default=values["zol_ssh_known_hosts_file"],
            target_prefix_default=values["target_prefix"],
            primary=(values["san_ip"], values["san_ssh_port"], values["zol_parent_dataset"]))
    except replication.ReplicationConfigError as exc:
        raise SanCliError(f"{exc} (fix the backend's replication_device line)") from exc
    if not devs:
        return None
    d = devs[0]
    return d.backend_id, {**values, "san_ip": d.san_ip, "san_ssh_port": d.san_ssh_port,
                          "san_login": d.san_login, "san_private_key": d.san_private_key,
                          "zol_ssh_known_hosts_file": d.known_hosts_file,
                          "zol_parent_dataset": d.parent, "san_is_local": False,
                          "replication_device": None}


def cmd_check(a: argparse.Namespace) -> int:
    values = backend_options(a.config_file, a.backend)
    replica = replica_values(values)
    failures = run_checks(values)
    if replica is not None:
        print(f"replica {replica[0]} (replication_device):")
        failures += run_checks(replica[1], out=lambda line: print("  " + line))
    print(f"{failures} problem(s) found" if failures else "all checks passed")
    return 1 if failures else 0


# ------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="zol-san", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("authorize", help="print the authorized_keys line for a Cinder key")
    p.add_argument("--public-key", required=True, help="the Cinder key's .pub file ('-': stdin)")
    p.add_argument("--host", action="append", required=True,
                   help="Cinder host address/CIDR allowed to use the key (repeat or comma list)")
    p.add_argument("--wrapper", default=WRAPPER_PATH)
    p.add_argument("--config", default=WRAPPER_CONF)
    p.set_defaults(func=cmd_authorize)
    p = sub.add_parser("install", help="install wrapper, config and tgt drop-in on this SAN")
    p.add_argument("--root", default="/", help="install under this directory (tests, images)")
    p.add_argument("--parent", action="append", required=True,
                   help="parent dataset Cinder may use (repeat for several backends)")
    p.add_argument("--iqn-prefix", default="iqn.2010-10.org.openstack:")
    p.add_argument("--zfs", default="/usr/sbin/zfs")
    p.add_argument("--tgtd-socket", default="/var/run/tgtd/socket.0",
                   help="tgtd's management socket (the wrapper speaks it; no tgtadm process)")
    p.add_argument("--log-file", default="/var/log/zol-ssh-wrapper.log")
    p.add_argument("--lock-file", default="/run/zol-ssh-wrapper.lock")
    p.add_argument("--no-syslog", action="store_true")
    p.add_argument("--wrapper-source", help="wrapper file to install (default: the shipped one)")
    p.add_argument("--drop-in-source", help="tgt drop-in to install (default: the shipped one)")
    p.add_argument("--force", action="store_true", help="replace an existing wrapper.conf")
    p.add_argument("--no-reload", action="store_true", help="skip systemctl daemon-reload")
    p.set_defaults(func=cmd_install)
    p = sub.add_parser("check", help="check a backend's SAN from this Cinder host")
    p.add_argument("--config-file", default="/etc/cinder/cinder.conf")
    p.add_argument("--backend", required=True, help="the backend's cinder.conf section")
    p.set_defaults(func=cmd_check)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    a = build_parser().parse_args(argv)
    try:
        return a.func(a)
    except (SanCliError, OSError) as exc:
        print(f"zol-san {a.cmd}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
