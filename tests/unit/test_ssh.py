"""ssh.py: the argv -> string boundary, redaction, result checking, the local executor."""
from __future__ import annotations

import json
import logging
import shlex
import sys

import pytest

from zol_driver import exception, ssh


def test_command_string_round_trips_through_shlex_split():
    argv = ["zfs", "set", "zol:initiators=ALL", "zol/cinder/volume-1", "a b", "$(x)", "'"]
    assert shlex.split(ssh.command_string(argv)) == argv


@pytest.mark.parametrize("argv", [[], ["zfs", 1], ["zfs", "a\nb"], ["zfs", "a\0b"]])
def test_command_string_rejects(argv):
    with pytest.raises(exception.InvalidValue):
        ssh.command_string(argv)


def test_redact_hides_chap_secrets():
    argv = ["tgtadm", "--lld", "iscsi", "--mode", "account", "--op", "new", "--user", "u",
            "--password", "TopSecret12345"]
    assert "TopSecret12345" not in ssh.redact(argv)
    assert ssh.redact(["zfs", "set", "zol:chap=u:TopSecret12345", "x"])[2] == "zol:chap=<redacted>"


def test_check_result_maps_wrapper_codes():
    ok = ssh.Result(("zfs", "version"), 0, "x", "")
    assert ssh.check_result(ok, "h") is ok
    with pytest.raises(exception.WrapperDenied):
        ssh.check_result(ssh.Result(("zfs",), 64, "", "zol-ssh-wrapper: denied: x"), "h")
    with pytest.raises(exception.CommandFailed) as ei:
        ssh.check_result(ssh.Result(("tgtadm", "--password", "TopSecret12345"), 22, "",
                                    "tgtadm: x"), "h")
    assert not isinstance(ei.value, exception.WrapperDenied)
    assert "TopSecret12345" not in str(ei.value)


@pytest.fixture
def fake_wrapper(tmp_path):
    """A stand-in for zol-ssh-wrapper: a real process that echoes its argv after '--'."""
    script = tmp_path / "wrapper"
    script.write_text("import json, sys\nargs = sys.argv[1:]\n"
                      "i = args.index('--')\n"
                      "data = sys.stdin.read()\n"
                      "print(json.dumps({'conf': args[:i], 'argv': args[i + 1:], 'stdin': data}))\n"
                      "sys.exit(64 if args[i + 1] == 'deny' else 0)\n")
    return [sys.executable, str(script), "/etc/zol/wrapper.conf"]


def test_local_executor_runs_through_the_wrapper(fake_wrapper, caplog):
    ex = ssh.LocalExecutor(fake_wrapper)
    caplog.set_level(logging.DEBUG, logger="zol_driver.ssh")
    res = ex.execute(["tgtadm", "--password", "TopSecret12345"], stdin="in")
    out = json.loads(res.stdout)
    assert out == {"conf": ["/etc/zol/wrapper.conf"], "argv": ["tgtadm", "--password",
                                                              "TopSecret12345"], "stdin": "in"}
    assert "TopSecret12345" not in caplog.text
    assert "tgtadm --password '<redacted>'" in caplog.text
    with pytest.raises(exception.WrapperDenied):
        ex.execute(["deny"])
    assert ex.execute(["deny"], check=False).exit_code == 64


def test_local_executor_missing_wrapper_names_the_option():
    with pytest.raises(exception.ConfigError) as ei:
        ssh.LocalExecutor(["/nonexistent/zol-ssh-wrapper"]).execute(["zfs", "version"])
    assert "zol_local_wrapper_command" in str(ei.value)


def test_ssh_executor_refuses_without_known_hosts(tmp_path):
    ex = ssh.SSHExecutor("127.0.0.1", 1, known_hosts_file=str(tmp_path / "nope"))
    with pytest.raises(exception.HostKeyError) as ei:
        ex.execute(["zfs", "version"])
    assert "zol_ssh_known_hosts_file" in str(ei.value)


def test_protocol_version_parses_verbatim():
    from tests.unit.sanfixtures import capture

    class Ex:
        host = "x"

        def execute(self, argv, check=True, timeout=None, stdin=None):
            return ssh.Result(tuple(argv), 0, capture("zol_wrapper_version")["stdout"], "")

    assert ssh.protocol_version(Ex()) == ("2.0.0", 2)


# -- pipe(): one command's stdout into another's stdin through this host -------------------

STREAM_TOOL = r'''
import hashlib, os, sys, time
args = sys.argv[sys.argv.index("--") + 1:]
cmd, opts = args[0], args[1:]
D = os.environ["ZOL_TEST_DIR"]
open(os.path.join(D, cmd + ".pid"), "w").write(str(os.getpid()))
if cmd == "gen":                     # gen BYTES [FAIL_AFTER]: deterministic bytes on stdout
    total, fail = int(opts[0]), int(opts[1]) if len(opts) > 1 else -1
    block, sent = hashlib.sha256(b"zol").digest() * 8192, 0     # 256 KiB
    while sent < total:
        if 0 <= fail <= sent:
            sys.stderr.write("gen: boom at %d\n" % sent)
            sys.exit(3)
        n = min(len(block), total - sent)
        sys.stdout.buffer.write(block[:n])
        sent += n
    sys.stdout.flush()
elif cmd == "sink":                  # sink EXPECTED [FAIL_AFTER]: sha256 of stdin to a file
    expected, fail = int(opts[0]), int(opts[1]) if len(opts) > 1 else -1
    h, got = hashlib.sha256(), 0
    while True:
        chunk = sys.stdin.buffer.read(65536)
        if not chunk:
            break
        h.update(chunk)
        got += len(chunk)
        if 0 <= fail <= got:
            sys.stderr.write("sink: cannot receive: out of space\n")
            sys.exit(2)
    open(os.path.join(D, "sink.out"), "w").write("%d %s" % (got, h.hexdigest()))
    if got != expected:
        sys.stderr.write("sink: truncated stream (%d of %d)\n" % (got, expected))
        sys.exit(1)
elif cmd == "hang":
    time.sleep(3600)
'''


@pytest.fixture
def stream_ex(tmp_path, monkeypatch):
    tool = tmp_path / "stream_tool.py"
    tool.write_text(STREAM_TOOL)
    monkeypatch.setenv("ZOL_TEST_DIR", str(tmp_path))
    return ssh.LocalExecutor([sys.executable, str(tool), "/etc/zol/wrapper.conf"])


def _expected(n: int) -> str:
    import hashlib
    block = hashlib.sha256(b"zol").digest() * 8192
    data = (block * (n // len(block) + 1))[:n]
    return f"{n} {hashlib.sha256(data).hexdigest()}"


def _gone(pidfile) -> bool:
    import os
    pid = int(pidfile.read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_pipe_moves_the_stream_intact(stream_ex, tmp_path, caplog):
    n = 8 * 1024 * 1024 + 12345
    seen = []
    caplog.set_level(logging.INFO, logger="zol_driver.ssh")
    res = ssh.pipe(stream_ex, ["gen", str(n)], stream_ex, ["sink", str(n)], timeout=60,
                   progress=seen.append)
    assert res.bytes == n and res.seconds > 0 and res.mib_per_s > 0
    assert (tmp_path / "sink.out").read_text() == _expected(n)
    assert seen and seen[-1] == n and seen == sorted(seen)
    assert "Streamed 8.0 MiB" in caplog.text and "MiB/s" in caplog.text


def test_pipe_sender_failure_raises_with_both_stderrs(stream_ex, tmp_path):
    with pytest.raises(exception.CommandFailed) as ei:
        ssh.pipe(stream_ex, ["gen", str(4 << 20), str(1 << 20)], stream_ex,
                 ["sink", str(4 << 20)], timeout=60)
    msg = str(ei.value)
    assert "gen: boom at 1048576" in msg and "sender exit 3" in msg
    assert "sink: truncated stream (1048576 of 4194304)" in msg and "receiver exit 1" in msg
    assert ei.value.kwargs["moved"] == 1 << 20
    assert _gone(tmp_path / "gen.pid") and _gone(tmp_path / "sink.pid")


def test_pipe_receiver_failure_stops_the_sender(stream_ex, tmp_path):
    with pytest.raises(exception.CommandFailed) as ei:
        ssh.pipe(stream_ex, ["gen", str(64 << 20)], stream_ex,
                 ["sink", str(64 << 20), str(300000)], timeout=60)
    msg = str(ei.value)
    assert "sink: cannot receive: out of space" in msg and "receiver exit 2" in msg
    assert ei.value.exit_code == 2
    assert ei.value.kwargs["moved"] < 64 << 20
    assert _gone(tmp_path / "gen.pid") and _gone(tmp_path / "sink.pid")


def test_pipe_deadline_stops_both_sides(stream_ex, tmp_path):
    import time
    t0 = time.monotonic()
    with pytest.raises(exception.CommandFailed) as ei:
        ssh.pipe(stream_ex, ["hang"], stream_ex, ["sink", "1"], timeout=2)
    assert time.monotonic() - t0 < 15
    assert "deadline of 2 s passed" in str(ei.value)
    assert _gone(tmp_path / "hang.pid") and _gone(tmp_path / "sink.pid")


def test_pipe_refuses_bad_argv_before_starting(stream_ex, tmp_path):
    with pytest.raises(exception.InvalidValue):
        ssh.pipe(stream_ex, ["gen", "1\n2"], stream_ex, ["sink", "1"], timeout=5)
    assert not (tmp_path / "sink.pid").exists()
