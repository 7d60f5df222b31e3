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
