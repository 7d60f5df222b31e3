"""Fixtures: a real OpenSSH sshd with the SAN wrapper as forced command; SAN VM reboot helper.

`wrapper_sshd` starts /usr/sbin/sshd (as root, foreground) on a free loopback port with its own
config, host key and authorized_keys in a temp dir: the cinder key is
`restrict,from="127.0.0.1",command="<wrapper> <conf>"`, exactly like on a SAN, and the wrapper
execs fake zfs/tgtadm (tests/helpers/fakesan.py) that record their argv.  A second key with a
from= that does not match must be refused.  sshd is stopped by PID.

`wait_sanvm_ssh` waits for the SAN VM's sshd after a reboot (same one-connection-at-a-time
polling as tools/sanvm, which must not be edited).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest

from tests.helpers.fakesan import WRAPPER, FakeSan

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path, comment: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f",
                    str(path)], check=True, capture_output=True)
    return path.with_suffix(".pub").read_text().strip()


@dataclass
class WrapperSshd:
    """A running sshd whose cinder key is forced through the wrapper."""

    dir: Path
    port: int
    pid: int
    fake: FakeSan
    cinder_key: Path
    foreign_key: Path
    host_key_pub: str
    sshd_log: Path

    def client(self, key: Path | None = None) -> paramiko.SSHClient:
        """A paramiko client that checks the host key (RejectPolicy, our known_hosts)."""
        c = paramiko.SSHClient()
        c.load_host_keys(str(self.known_hosts))
        c.set_missing_host_key_policy(paramiko.RejectPolicy())
        c.connect("127.0.0.1", port=self.port, username="root",
                  key_filename=str(key or self.cinder_key), allow_agent=False,
                  look_for_keys=False, timeout=20, banner_timeout=20, auth_timeout=20)
        return c

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"


def run_over_ssh(client: paramiko.SSHClient, command: str | bytes,
                 timeout: float = 30, stdin: str | None = None) -> tuple[int, str, str]:
    """Exec one command on a new channel of the client's transport: (exit, stdout, stderr).
    `stdin` (CHAP credentials) goes on the channel, like the driver sends it."""
    chan = client.get_transport().open_session(timeout=timeout)
    chan.settimeout(timeout)
    chan.exec_command(command)
    if stdin is not None:
        chan.sendall(stdin.encode())
        chan.shutdown_write()
    out = chan.makefile("rb").read()
    err = chan.makefile_stderr("rb").read()
    rc = chan.recv_exit_status()
    chan.close()
    return rc, out.decode(errors="replace"), err.decode(errors="replace")


def _wait_banner(port: int, proc: subprocess.Popen, log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("sshd exited with {}: {}".format(proc.returncode,
                                                            log.read_text(errors="replace")))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(64).startswith(b"SSH-2.0-"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"sshd on port {port} not answering after {timeout:.0f} s")


def stop_by_pid(proc: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM, then SIGKILL after grace seconds; the process is gone afterwards."""
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.poll() is not None


@pytest.fixture(scope="module")
def wrapper_sshd(tmp_path_factory):
    """sshd on 127.0.0.1:<free port>, cinder key forced through the wrapper (fake zfs/tgtadm)."""
    if os.geteuid() != 0:
        pytest.fail("the sshd fixture needs root (sshd must switch to the login user)",
                    pytrace=False)
    if not os.path.exists(SSHD):
        pytest.fail(f"{SSHD} missing: apt-get install openssh-server", pytrace=False)
    d = tmp_path_factory.mktemp("sshd")
    fake = FakeSan(d / "san", syslog=True)
    host_pub = keygen(d / "ssh_host_ed25519_key", "root@fake-san")
    cinder_pub = keygen(d / "cinder_ed25519", "cinder")
    foreign_pub = keygen(d / "foreign_ed25519", "cinder-elsewhere")
    forced = f'restrict,from="127.0.0.1",command="{WRAPPER} {fake.conf}" '
    other = f'restrict,from="192.0.2.99",command="{WRAPPER} {fake.conf}" '
    (d / "authorized_keys").write_text(forced + cinder_pub + "\n" + other + foreign_pub + "\n")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)   # privilege separation dir
    log = d / "sshd.log"
    proc = None
    for _attempt in range(5):
        port = free_port()
        (d / "sshd_config").write_text("\n".join([
            f"Port {port}", "ListenAddress 127.0.0.1",
            "HostKey %s" % (d / "ssh_host_ed25519_key"),
            "AuthorizedKeysFile %s" % (d / "authorized_keys"),
            "StrictModes no", "UsePAM no", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
            "PidFile %s" % (d / "sshd.pid"), "LogLevel VERBOSE", "UseDNS no",
            "MaxSessions 64", "MaxStartups 64:30:128",
            "Subsystem sftp internal-sftp", ""]))
        with open(log, "ab") as logf:
            proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                                    stdin=subprocess.DEVNULL, stdout=logf,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_banner(port, proc, log)
            break
        except RuntimeError:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if "Address already in use" not in log.read_text(errors="replace"):
                raise
    else:
        pytest.fail("could not start sshd on a free port", pytrace=False)
    kind, blob = host_pub.split()[:2]
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {kind} {blob}\n")
    srv = WrapperSshd(dir=d, port=port, pid=proc.pid, fake=fake,
                      cinder_key=d / "cinder_ed25519", foreign_key=d / "foreign_ed25519",
                      host_key_pub=host_pub, sshd_log=log)
    yield srv
    stop_by_pid(proc)


# ------------------------------------------------------------------------------------------
# SAN VM helpers for the system tier (reboot).
# ------------------------------------------------------------------------------------------

def sanvm_ssh_argv(state: dict, key: str = "admin") -> list[str]:
    return ["ssh", "-q", "-i", state["keys"][key], "-p", str(state["ssh_port"]),
            "-o", "UserKnownHostsFile=" + state["known_hosts"],
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=20", "root@127.0.0.1"]


def wait_sanvm_ssh(state: dict, timeout: float = 400, since_boot_id: str | None = None) -> str:
    """Wait until the VM answers over SSH with a boot id other than since_boot_id; returns it.

    One connection at a time, 3 s apart (a tight loop trips MaxStartups under TCG), and only
    once the pool is ONLINE, like tools/sanvm's wait_ready.
    """
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            probe = ("cat /proc/sys/kernel/random/boot_id && zpool list -H -o health "
                     + state["pool"])
            r = subprocess.run(sanvm_ssh_argv(state) + [probe], capture_output=True, text=True,
                               timeout=40, stdin=subprocess.DEVNULL, check=False)
            lines = r.stdout.split()
            if r.returncode == 0 and len(lines) == 2 and lines[1] == "ONLINE" \
                    and lines[0] != since_boot_id:
                return lines[0]
            last = (r.stderr or r.stdout).strip()
        except subprocess.TimeoutExpired:
            last = "ssh timed out"
        time.sleep(3)
    raise AssertionError(f"SAN VM not back over SSH after {timeout:.0f} s (last: {last})")


# ------------------------------------------------------------------------------------------
# A real tgtd on the host (userspace; no kernel modules needed) for the wrapper's export verbs.
# ------------------------------------------------------------------------------------------
TGTD = "/usr/sbin/tgtd"
TGTADM = "/usr/sbin/tgtadm"


@dataclass
class HostTgtd:
    """tgtd listening on 127.0.0.1:<port>, management socket /var/run/tgtd/socket.<N>."""

    pid: int
    control_port: int
    port: int
    log: Path

    @property
    def socket(self) -> str:
        return f"/var/run/tgtd/socket.{self.control_port}"

    def tgtadm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """What the SAN's own administrator runs (not through the wrapper)."""
        return subprocess.run([TGTADM, "-C", str(self.control_port), "--lld", "iscsi", *args],
                              capture_output=True, text=True, timeout=30, check=check)


@pytest.fixture(scope="module")
def host_tgtd(tmp_path_factory):
    """A real tgtd 1.0.85 on a free loopback port and a free control port; stopped by PID."""
    if not os.path.exists(TGTD):
        pytest.fail(f"{TGTD} missing: apt-get install tgt (bindep: tgt [test])", pytrace=False)
    d = tmp_path_factory.mktemp("tgtd")
    log = d / "tgtd.log"
    proc = None
    for _attempt in range(5):
        port = free_port()
        control = 20000 + port % 10000
        if os.path.exists(f"/var/run/tgtd/socket.{control}"):
            continue
        with open(log, "ab") as logf:
            proc = subprocess.Popen([TGTD, "-f", "-C", str(control), "--iscsi",
                                     f"portal=127.0.0.1:{port}"], stdin=subprocess.DEVNULL,
                                    stdout=logf, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        srv = HostTgtd(proc.pid, control, port, log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            if srv.tgtadm("--mode", "target", "--op", "show", check=False).returncode == 0:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=2):
                        break
                except OSError:
                    pass
            time.sleep(0.1)
        else:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            continue
        break
    else:
        pytest.fail("could not start tgtd: " + log.read_text(errors="replace"), pytrace=False)
    yield srv
    # tgtd does not exit on SIGTERM while it has targets; its state is memory only
    stop_by_pid(proc, grace=2)
    for p in (srv.socket, srv.socket + ".lock"):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
