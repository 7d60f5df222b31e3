"""tools/cinder-stack add_backend/remove_backend: a test module's extra backend (the replicated
one on a second SAN) joins enabled_backends with its own section, and leaves cinder.conf as it
was; each change restarts cinder-volume (stubbed here: the system tier restarts it for real)."""
from __future__ import annotations

from pathlib import Path

from tests.plugins.cinder import load_stack_module
from tests.unit.test_cinder_stack_conf import SAN, _backend

stack = load_stack_module()


def fresh_stack(tmp_path: Path, monkeypatch):
    """A stack's cinder.conf and state; restarts recorded (backends at each), not done."""
    conf = tmp_path / "cinder.conf"
    conf.write_text(stack.cinder_conf(tmp_path, SAN, "rabbit://x", 1, None, stack.ZOL_DRIVER))
    state = {"run_dir": str(tmp_path), "conf": str(conf)}
    restarts: list[list[str]] = []
    monkeypatch.setattr(stack, "restart_volume", lambda st, timeout=300: restarts.append(
        list(stack.backends(st))) or st)
    return conf, conf.read_text(), state, restarts


def test_extra_backend_added_and_removed(tmp_path: Path, monkeypatch):
    conf, original, state, restarts = fresh_stack(tmp_path, monkeypatch)
    lines = stack.backend_lines("zol-repl", stack.ZOL_DRIVER, dict(SAN, ssh_port=2223),
                                "/kh-b", "zol/cinder-thick", True)
    lines.append("replication_device = backend_id:san-a,san_ip:127.0.0.1")
    stack.add_backend(state, "zol-repl", lines)
    text = conf.read_text()
    assert _backend(text, "DEFAULT")["enabled_backends"] == "zol-thin,zol-thick,zol-repl"
    repl = _backend(text, "zol-repl")
    assert repl["san_ssh_port"] == "2223" and repl["zol_ssh_known_hosts_file"] == "/kh-b"
    assert repl["replication_device"] == "backend_id:san-a,san_ip:127.0.0.1"
    assert _backend(text, "zol-thin")["san_ssh_port"] == "2222"
    stack.add_backend(state, "zol-repl", lines)          # again: still one section
    assert conf.read_text().count("[zol-repl]") == 1
    stack.remove_backend(state, "zol-repl")
    assert conf.read_text().strip() == original.strip()
    assert restarts == [["zol-thin", "zol-thick", "zol-repl"]] * 2 + [["zol-thin", "zol-thick"]]


def test_two_backends_in_one_restart(tmp_path: Path, monkeypatch):
    conf, original, state, restarts = fresh_stack(tmp_path, monkeypatch)
    b = dict(SAN, ssh_port=2223)
    stack.add_backends(state, {
        name: stack.backend_lines(name, stack.ZOL_DRIVER, b, "/kh-b", parent, True)
        for name, parent in (("zol-b", "zol/cinder"), ("zol-repl", "zol/cinder-thick"))})
    text = conf.read_text()
    assert _backend(text, "DEFAULT")["enabled_backends"] == "zol-thin,zol-thick,zol-b,zol-repl"
    assert _backend(text, "zol-repl")["zol_parent_dataset"] == "zol/cinder-thick"
    stack.remove_backends(state, ["zol-b", "zol-repl"])
    assert conf.read_text().strip() == original.strip()
    assert restarts == [["zol-thin", "zol-thick", "zol-b", "zol-repl"], ["zol-thin", "zol-thick"]]
