"""Executors: how an argv list reaches the ZFS SAN.

Why one persistent connection: an SSH handshake costs 1.2-1.5 s against the SAN (the 2012
driver paid it per command).  SSHExecutor keeps one authenticated paramiko transport per backend
and runs every command as its own channel, concurrently (bounded by a semaphore below the SAN
sshd's MaxSessions).  A dropped connection is re-established once, transparently, but only when
the command had not started yet (the channel could not be opened), so nothing runs twice.

Host keys are checked strictly against a configured known_hosts file (RejectPolicy).

This module is the ONLY place where an argv list becomes a string: ``shlex.join`` for the SAN
wrapper, which ``shlex.split``s SSH_ORIGINAL_COMMAND back into the same list.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Protocol

import paramiko

from zol_driver import exception

LOG = logging.getLogger(__name__)

# Wrapper exit codes (doc/san-protocol.md).
EXIT_DENIED = 64
EXIT_NO_COMMAND = 65
EXIT_BAD_CONFIG = 66
EXIT_EXEC_FAILED = 67
WRAPPER_EXIT_CODES = (EXIT_DENIED, EXIT_NO_COMMAND, EXIT_BAD_CONFIG, EXIT_EXEC_FAILED)

REDACTED = "<redacted>"


@dataclasses.dataclass(frozen=True)
class Result:
    """Outcome of one command (stdout/stderr decoded as UTF-8, errors replaced)."""

    argv: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str
    duration: float = 0.0


def redact(argv: Sequence[str]) -> list[str]:
    """A copy of argv safe to log: CHAP secrets never reach a log line."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
        elif arg == "--password":
            out.append(arg)
            hide_next = True
        elif arg.startswith("zol:chap="):
            out.append("zol:chap=" + REDACTED)
        else:
            out.append(arg)
    return out


def command_string(argv: Sequence[str]) -> str:
    """The one argv -> string conversion of the project (the wrapper shlex.splits it back)."""
    if not argv or any(not isinstance(a, str) for a in argv):
        raise exception.InvalidValue(kind="argv", value=list(argv),
                                     reason="must be a non-empty list of strings")
    if any("\0" in a or "\n" in a for a in argv):
        raise exception.InvalidValue(kind="argv", value=redact(argv),
                                     reason="NUL or newline in an argument")
    return shlex.join(argv)


def check_result(result: Result, host: str) -> Result:
    """Raise CommandFailed (WrapperDenied for the wrapper's own codes) on a non-zero exit."""
    if result.exit_code == 0:
        return result
    cmd = shlex.join(redact(result.argv))
    cls = (exception.WrapperDenied if result.exit_code in WRAPPER_EXIT_CODES
           else exception.CommandFailed)
    raise cls(command=cmd, exit_code=result.exit_code, stderr=result.stderr,
              stdout=result.stdout, host=host)


class Executor(Protocol):
    """Runs one protocol command (an argv list) on the SAN."""

    host: str

    def execute(self, argv: Sequence[str], check: bool = True, timeout: float | None = None,
                stdin: bytes | str | None = None) -> Result:
        """Run argv; with check=True a non-zero exit raises exception.CommandFailed."""
        ...

    def close(self) -> None:
        ...


def _to_bytes(data: bytes | str | None) -> bytes | None:
    if data is None:
        return None
    return data.encode() if isinstance(data, str) else data


class SSHExecutor:
    """One persistent, multiplexed, host-key-checked SSH connection to the SAN."""

    def __init__(self, host: str, port: int = 22, username: str = "root",
                 key_filename: str | None = None, known_hosts_file: str | None = None,
                 strict_host_key_checking: bool = True, connect_timeout: float = 30,
                 command_timeout: float = 300, max_sessions: int = 16,
                 keepalive: int = 15, password: str | None = None) -> None:
        self.host = host
        self.port = int(port)
        self.username = username
        self.key_filename = key_filename
        self.known_hosts_file = known_hosts_file
        self.strict = strict_host_key_checking
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.keepalive = keepalive
        self._password = password
        self._sessions = threading.BoundedSemaphore(max_sessions)
        self._lock = threading.Lock()
        self._client: paramiko.SSHClient | None = None
        self.connects = 0  # how many handshakes this executor did (tests and bench read it)

    @property
    def _where(self) -> str:
        return f"[{self.host}]:{self.port}"

    def __repr__(self) -> str:
        return f"SSHExecutor({self.username}@{self.host}:{self.port})"

    # -- connection ---------------------------------------------------------------------------

    def _connect(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        if self.strict:
            if not self.known_hosts_file or not os.path.isfile(self.known_hosts_file):
                raise exception.HostKeyError(
                    host=self._where, known_hosts=self.known_hosts_file,
                    reason=f"known_hosts file {self.known_hosts_file!r} does not exist")
            client.load_host_keys(self.known_hosts_file)
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        else:
            LOG.warning("SSH host key checking is OFF for %s:%d "
                        "(zol_ssh_strict_host_key_checking = False)", self.host, self.port)
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        if self.key_filename and not os.path.isfile(self.key_filename):
            raise exception.AuthenticationError(
                user=self.username, host=self.host, key=self.key_filename,
                reason="private key file does not exist")
        t0 = time.monotonic()
        try:
            client.connect(self.host, port=self.port, username=self.username,
                           key_filename=self.key_filename or None,
                           password=self._password or None,
                           timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                           auth_timeout=self.connect_timeout, allow_agent=False,
                           look_for_keys=False)
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise exception.HostKeyError(
                host=self._where, known_hosts=self.known_hosts_file,
                reason=f"the key offered ({exc.key.get_name()}) differs from the recorded one: "
                       "possible man-in-the-middle or a reinstalled SAN") from exc
        except paramiko.SSHException as exc:
            client.close()
            if "not found in known_hosts" in str(exc):
                raise exception.HostKeyError(
                    host=self._where, known_hosts=self.known_hosts_file,
                    reason="the SAN's key is not in the known_hosts file") from exc
            if isinstance(exc, paramiko.AuthenticationException):
                raise exception.AuthenticationError(
                    user=self.username, host=self.host, key=self.key_filename,
                    reason=str(exc)) from exc
            raise exception.TransportError(host=self._where,
                                           reason=f"SSH: {exc}") from exc
        except (OSError, EOFError) as exc:
            client.close()
            raise exception.TransportError(
                host=self._where,
                reason=f"{exc} (check san_ip, san_ssh_port and that sshd runs)") from exc
        transport = client.get_transport()
        if self.keepalive and transport is not None:
            transport.set_keepalive(self.keepalive)
        self.connects += 1
        LOG.info("SSH connection to %s@%s:%d established in %.2f s", self.username, self.host,
                 self.port, time.monotonic() - t0)
        return client

    def _transport(self, force_new: bool = False) -> paramiko.Transport:
        with self._lock:
            client = self._client
            transport = client.get_transport() if client else None
            if force_new or transport is None or not transport.is_active():
                if client is not None:
                    LOG.info("SSH connection to %s:%d lost; reconnecting", self.host, self.port)
                    client.close()
                self._client = None
                self._client = self._connect()
                transport = self._client.get_transport()
            assert transport is not None
            return transport

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- commands -----------------------------------------------------------------------------

    def _open_channel(self) -> paramiko.Channel:
        """A new session channel; reconnects once if the connection is gone."""
        for attempt in (1, 2):
            transport = self._transport(force_new=attempt == 2)
            try:
                return transport.open_session(timeout=self.connect_timeout)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                if attempt == 2:
                    raise exception.TransportError(
                        host=self._where,
                        reason=f"cannot open an SSH channel: {exc}") from exc
                LOG.info("Opening a channel to %s failed (%s); reconnecting", self.host, exc)
        raise AssertionError("unreachable")

    def execute(self, argv: Sequence[str], check: bool = True, timeout: float | None = None,
                stdin: bytes | str | None = None) -> Result:
        argv = tuple(argv)
        cmd = command_string(argv)
        limit = float(timeout or self.command_timeout)
        LOG.debug("SAN %s: %s", self.host, shlex.join(redact(argv)))
        data = _to_bytes(stdin)
        with self._sessions:
            t0 = time.monotonic()
            chan = self._open_channel()
            try:
                chan.settimeout(limit)
                chan.exec_command(cmd)
                if data:
                    chan.sendall(data)
                chan.shutdown_write()
                out, err = self._drain(chan, t0 + limit)
                code = chan.recv_exit_status()
            except TimeoutError as exc:
                raise exception.CommandTimeout(command=shlex.join(redact(argv)),
                                               host=self.host, timeout=limit) from exc
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise exception.TransportError(
                    host=self._where,
                    reason=f"connection failed during {shlex.join(redact(argv))}: {exc}") from exc
            finally:
                chan.close()
        result = Result(argv, code, out.decode(errors="replace"), err.decode(errors="replace"),
                        time.monotonic() - t0)
        LOG.debug("SAN %s: exit %d in %.2f s%s", self.host, code, result.duration,
                  (": " + result.stderr.strip()) if code else "")
        return check_result(result, self.host) if check else result

    @staticmethod
    def _drain(chan: paramiko.Channel, deadline: float) -> tuple[bytes, bytes]:
        """Read stdout to EOF, then stderr (blocking reads, no polling latency).

        stderr of zfs/tgtadm is a few lines; paramiko buffers it meanwhile, far below the
        channel window, so reading it second cannot stall the command.
        """
        bufs = []
        for recv in (chan.recv, chan.recv_stderr):
            buf = bytearray()
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("deadline")
                chan.settimeout(remaining)
                chunk = recv(65536)
                if not chunk:
                    break
                buf += chunk
            bufs.append(bytes(buf))
        return bufs[0], bufs[1]


class LocalExecutor:
    """san_is_local: the volume service runs on the SAN; commands still pass the wrapper."""

    def __init__(self, wrapper_command: Sequence[str], command_timeout: float = 300) -> None:
        if not wrapper_command:
            raise exception.ConfigError(option="zol_local_wrapper_command",
                                        reason="empty: give the wrapper and its config")
        self.prefix = list(wrapper_command)
        self.host = "localhost"
        self.command_timeout = command_timeout

    def execute(self, argv: Sequence[str], check: bool = True, timeout: float | None = None,
                stdin: bytes | str | None = None) -> Result:
        argv = tuple(argv)
        command_string(argv)  # same validation as over SSH
        limit = float(timeout or self.command_timeout)
        LOG.debug("SAN local: %s", shlex.join(redact(argv)))
        t0 = time.monotonic()
        try:
            proc = subprocess.run([*self.prefix, "--", *argv], input=_to_bytes(stdin),
                                  capture_output=True, timeout=limit, check=False)
        except FileNotFoundError as exc:
            raise exception.ConfigError(option="zol_local_wrapper_command",
                                        reason=f"{self.prefix[0]} not found") from exc
        except subprocess.TimeoutExpired as exc:
            raise exception.CommandTimeout(command=shlex.join(redact(argv)), host=self.host,
                                           timeout=limit) from exc
        result = Result(argv, proc.returncode, proc.stdout.decode(errors="replace"),
                        proc.stderr.decode(errors="replace"), time.monotonic() - t0)
        LOG.debug("SAN local: exit %d in %.2f s", proc.returncode, result.duration)
        return check_result(result, self.host) if check else result

    def close(self) -> None:
        pass


def san_capabilities(executor: Executor) -> dict[str, str]:
    """`zol-wrapper capabilities` as {key: value}, e.g. {"unmap": "yes", "tgt": "1:1.0.85-1+zol1"}
    (doc/san-protocol.md); {} from a wrapper that does not know the verb."""
    try:
        res = executor.execute(["zol-wrapper", "capabilities"])
    except exception.WrapperDenied:
        return {}
    out = {}
    for word in res.stdout.split():
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise exception.ParseError(what="zol-wrapper capabilities",
                                       reason="expected key=value words",
                                       line=res.stdout.strip()[:200])
        out[key] = value
    return out


def protocol_version(executor: Executor) -> tuple[str, int]:
    """Ask the wrapper for its version: ("0.1.0", 1); raises WrapperDenied/ParseError."""
    res = executor.execute(["zol-wrapper", "version"])
    parts = res.stdout.split()
    if len(parts) != 4 or parts[0] != "zol-ssh-wrapper" or parts[2] != "protocol":
        raise exception.ParseError(what="zol-wrapper version", reason="unexpected format",
                                   line=res.stdout.strip()[:200])
    try:
        return parts[1], int(parts[3])
    except ValueError as exc:
        raise exception.ParseError(what="zol-wrapper version", reason="protocol not a number",
                                   line=res.stdout.strip()[:200]) from exc
