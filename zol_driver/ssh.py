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


# ------------------------------------------------------------------------------------------
# Streams: one command's stdout piped into another command's stdin through this host
# (zfs send | zfs receive between two parents or two SANs; zol_driver/transfer.py).
# ------------------------------------------------------------------------------------------

STREAM_CHUNK = 1024 * 1024        # bytes moved per write (the stream is never held whole)
STDERR_KEEP = 16 * 1024           # tail of each side's stderr kept for the error message
PROGRESS_INTERVAL = 1.0           # progress() at most once a second
PROGRESS_LOG_INTERVAL = 30.0      # an INFO line with MiB/s this often


@dataclasses.dataclass(frozen=True)
class PipeResult:
    """What pipe() moved: bytes through this host, wall seconds."""

    bytes: int
    seconds: float

    @property
    def mib_per_s(self) -> float:
        return self.bytes / 1048576 / self.seconds if self.seconds > 0 else 0.0


class _Tail:
    """The last STDERR_KEEP bytes of a stream (a runaway stderr cannot fill memory)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > STDERR_KEEP:
            del self.data[:len(self.data) - STDERR_KEEP]

    def text(self) -> str:
        return self.data.decode(errors="replace")


class _ChannelStream:
    """One command on its own channel of the executor's persistent SSH transport."""

    def __init__(self, executor: SSHExecutor, argv: Sequence[str], sender: bool) -> None:
        self.host = executor.host
        self._sessions = executor._sessions
        self._sessions.acquire()
        try:
            self.chan = executor._open_channel()
            self.chan.exec_command(command_string(argv))
        except BaseException:
            self._sessions.release()
            raise
        self._closed = False
        self._close_lock = threading.Lock()
        self._err = _Tail()

    def read(self, n: int, timeout: float) -> bytes:
        self.chan.settimeout(max(timeout, 0.01))
        return self.chan.recv(n)

    def write(self, data: bytes, timeout: float) -> None:
        self.chan.settimeout(max(timeout, 0.01))
        self.chan.sendall(data)

    def close_stdin(self) -> None:
        if not self._closed:
            self.chan.shutdown_write()

    def finish(self, deadline: float) -> tuple[int | None, str]:
        """Drain what is left, then (exit code, or None when killed or late; stderr tail)."""
        if self._closed:
            return None, self._err.text()
        try:
            while True:                       # stdout after the stream: discarded
                self.chan.settimeout(max(deadline - time.monotonic(), 0.01))
                if not self.chan.recv(65536):
                    break
            while True:
                self.chan.settimeout(max(deadline - time.monotonic(), 0.01))
                chunk = self.chan.recv_stderr(65536)
                if not chunk:
                    break
                self._err.add(chunk)
        except (TimeoutError, OSError, paramiko.SSHException, EOFError):
            return None, self._err.text()
        if not self.chan.status_event.wait(max(deadline - time.monotonic(), 0.01)):
            return None, self._err.text()
        code = self.chan.exit_status
        return (code if code >= 0 else None), self._err.text()

    def kill(self) -> None:
        """Close the channel: sshd closes the command's pipes (a sender dies of EPIPE, a
        receiver sees a truncated stream and keeps its resumable state)."""
        if not self._closed:
            try:
                while self.chan.recv_stderr_ready():
                    self._err.add(self.chan.recv_stderr(65536))
            except (OSError, paramiko.SSHException, EOFError):
                pass
        self.close()

    def close(self) -> None:
        with self._close_lock:      # the watchdog thread may close it too
            if self._closed:
                return
            self._closed = True
        try:
            self.chan.close()
        finally:
            self._sessions.release()


class _ProcessStream:
    """One command through the local wrapper (san_is_local), pipes on both ends; a thread
    drains stderr (and a receiver's stdout) so the command never blocks on them."""

    def __init__(self, executor: LocalExecutor, argv: Sequence[str], sender: bool) -> None:
        self.host = executor.host
        try:
            self.proc = subprocess.Popen([*executor.prefix, "--", *argv],
                                         stdin=subprocess.DEVNULL if sender else subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         bufsize=0)
        except FileNotFoundError as exc:
            raise exception.ConfigError(option="zol_local_wrapper_command",
                                        reason=f"{executor.prefix[0]} not found") from exc
        self._err = _Tail()
        self._threads = [threading.Thread(target=self._drain, args=(self.proc.stderr, self._err),
                                          daemon=True)]
        if not sender:
            self._threads.append(threading.Thread(target=self._drain,
                                                  args=(self.proc.stdout, _Tail()), daemon=True))
        for t in self._threads:
            t.start()
        self._sender = sender

    @staticmethod
    def _drain(f, tail: _Tail) -> None:
        try:
            for chunk in iter(lambda: f.read(65536), b""):
                tail.add(chunk)
        except (OSError, ValueError):
            pass

    def read(self, n: int, timeout: float) -> bytes:
        import selectors
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(max(timeout, 0.01)):
                raise TimeoutError("no data from the sender")
        return os.read(self.proc.stdout.fileno(), n)

    def write(self, data: bytes, timeout: float) -> None:
        assert self.proc.stdin is not None
        view = memoryview(data)
        while view:            # a raw pipe may take less than asked (the watchdog bounds it)
            done = os.write(self.proc.stdin.fileno(), view)
            view = view[done:]

    def close_stdin(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def finish(self, deadline: float) -> tuple[int | None, str]:
        self.close_stdin()
        try:
            if self._sender:
                while self.read(65536, deadline - time.monotonic()):
                    pass
            code = self.proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
        except (TimeoutError, subprocess.TimeoutExpired, OSError):
            return None, self._err.text()
        for t in self._threads:
            t.join(max(deadline - time.monotonic(), 0.01))
        return code, self._err.text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    def close(self) -> None:
        self.kill()
        self.proc.wait()
        self.close_stdin()
        for t in self._threads:
            t.join(5)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None and not f.closed:
                f.close()


def _open_stream(executor: Executor, argv: Sequence[str],
                 sender: bool) -> _ChannelStream | _ProcessStream:
    if isinstance(executor, SSHExecutor):
        return _ChannelStream(executor, argv, sender)
    if isinstance(executor, LocalExecutor):
        return _ProcessStream(executor, argv, sender)
    raise exception.InvalidValue(kind="executor", value=repr(executor),
                                 reason="streams need an SSHExecutor or a LocalExecutor")


def pipe(src: Executor, src_argv: Sequence[str], dst: Executor, dst_argv: Sequence[str], *,
         timeout: float, progress=None) -> PipeResult:
    """Run src_argv on src and dst_argv on dst, src's stdout into dst's stdin, through here.

    Chunks of STREAM_CHUNK bytes: never more than one chunk (plus the SSH window) in memory.
    Both exit codes are waited for; CommandFailed (both stderrs, argv redacted) when either
    side fails, the connection drops or `timeout` seconds pass.  A broken stream stops the
    sender (EPIPE) and ends the receiver's stdin, so a resumable receiver keeps its state
    (zol_driver/transfer.py resumes or aborts it).  progress(bytes_so_far) is called at most
    once a second.
    """
    src_argv, dst_argv = tuple(src_argv), tuple(dst_argv)
    command_string(src_argv)
    command_string(dst_argv)
    shown = (f"{shlex.join(redact(src_argv))} ({src.host}) | "
             f"{shlex.join(redact(dst_argv))} ({dst.host})")
    t0 = time.monotonic()
    deadline = t0 + float(timeout)
    LOG.info("Streaming %s", shown)
    receiver = _open_stream(dst, dst_argv, sender=False)
    try:
        sender = _open_stream(src, src_argv, sender=True)
    except BaseException:
        receiver.close()
        raise
    expired = threading.Event()

    def watchdog() -> None:      # blocking reads and writes cannot outlive the deadline
        expired.set()
        sender.kill()
        receiver.kill()

    timer = threading.Timer(max(deadline - time.monotonic(), 0), watchdog)
    timer.daemon = True
    timer.start()
    moved = 0
    broken = ""
    last_progress = last_log = t0
    try:
        try:
            sender.close_stdin()
            buf = bytearray()
            eof = False
            while not eof:
                while len(buf) < STREAM_CHUNK:
                    chunk = sender.read(STREAM_CHUNK - len(buf), deadline - time.monotonic())
                    if not chunk:
                        eof = True
                        break
                    buf += chunk
                if buf:
                    receiver.write(bytes(buf), deadline - time.monotonic())
                    moved += len(buf)
                    buf.clear()
                now = time.monotonic()
                if progress is not None and now - last_progress >= PROGRESS_INTERVAL:
                    last_progress = now
                    progress(moved)
                if now - last_log >= PROGRESS_LOG_INTERVAL:
                    last_log = now
                    LOG.info("Streaming %s: %.1f MiB in %.0f s (%.1f MiB/s)", shown,
                             moved / 1048576, now - t0, moved / 1048576 / (now - t0))
        except (TimeoutError, OSError, EOFError, paramiko.SSHException) as exc:
            broken = f"stream broken after {moved} bytes: {exc or type(exc).__name__}"
            sender.kill()
        try:
            receiver.close_stdin()
        except (OSError, EOFError, paramiko.SSHException):
            pass
        src_code, src_err = sender.finish(deadline)
        dst_code, dst_err = receiver.finish(deadline)
    finally:
        timer.cancel()
        sender.close()
        receiver.close()
    seconds = time.monotonic() - t0
    if expired.is_set() or broken or src_code != 0 or dst_code != 0:
        why = (f"deadline of {timeout:.0f} s passed" if expired.is_set()
               else broken or "a side exited non-zero")
        detail = (f"{why}; sender exit {src_code}: {src_err.strip() or '-'}; receiver exit "
                  f"{dst_code}: {dst_err.strip() or '-'}")
        LOG.error("Stream %s failed after %d bytes in %.1f s: %s", shown, moved, seconds,
                  detail)
        raise exception.CommandFailed(
            "Stream %(command)s failed: %(stderr)s", command=shown,
            exit_code=dst_code if dst_code not in (0, None) else (src_code or -1),
            stderr=detail, moved=moved, src_exit=src_code, dst_exit=dst_code,
            src_stderr=src_err, dst_stderr=dst_err)
    result = PipeResult(moved, seconds)
    if progress is not None:
        progress(moved)
    LOG.info("Streamed %.1f MiB in %.1f s (%.1f MiB/s): %s", moved / 1048576, seconds,
             result.mib_per_s, shown)
    return result
