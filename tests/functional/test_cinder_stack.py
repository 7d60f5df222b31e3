"""tools/cinder-stack without the SAN VM: real rabbitmq + cinder-api/scheduler/volume processes
with Cinder's own logging fake driver, to prove the stack's contract (start order, noauth API,
both backends' pools, volume types, restart, stop by PID leaving nothing) in ~15-40 s.
The same tool drives zol_driver against the SAN VM in tests/system/test_cinder_flows.py.
"""
from __future__ import annotations

import socket

from tests.plugins.cinder import cinder_client


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_stack_starts_serves_restarts_and_stops_leaving_nothing(tmp_path, cinder_stack_module):
    mod = cinder_stack_module
    st = mod.start({"run_dir": None}, tmp_path / "stack", driver="fake", timeout=180)
    pids = dict(st["pids"], rabbit=st["rabbit"]["pid"], epmd=st["rabbit"]["epmd_pid"])
    groups = list(pids.values())
    ports = [st["rabbit"]["port"], int(st["api_url"].rsplit(":", 1)[1].split("/")[0])]
    try:
        assert all(mod._alive(p) for p in pids.values()), pids
        assert {p.split("#")[0] for p in st["pools"]} == {
            f"{st['host']}@zol-thin", f"{st['host']}@zol-thick"}
        c = cinder_client(st["api_url"], st["project_id"])
        types = {t.name: t.extra_specs for t in c.volume_types.list()}
        assert types["zol-thick"] == {"volume_backend_name": "zol-thick"}
        old = st["pids"]["volume"]
        mod.restart_volume(st, timeout=180)
        assert st["pids"]["volume"] != old and not mod._alive(old)
        groups.append(st["pids"]["volume"])
        conf = (tmp_path / "stack" / "cinder.conf").read_text()
        assert "auth_strategy = noauth" in conf and "enabled_backends = zol-thin,zol-thick" in conf
    finally:
        mod.stop(st)
    left = {g: mod._group_members(g) for g in groups if mod._group_members(g)}
    assert not left, f"processes left in the stack's sessions: {left}"
    assert not [p for p in ports if _listening(p)], "a stack port still accepts connections"
