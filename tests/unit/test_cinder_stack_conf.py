"""tools/cinder-stack's cinder.conf: every portal the SAN VM forwards becomes a Cinder portal
(target_ip_address + target_secondary_ip_addresses, one target_port), so a multipath connector
gets them all in its connection info."""
from __future__ import annotations

from pathlib import Path

from tests.plugins.cinder import load_stack_module

stack = load_stack_module()
SAN = {"host": "127.0.0.1", "ssh_port": 2222, "user": "root", "iscsi_port": 3260,
       "keys": {"cinder": "/k"}, "iqn_prefix": "iqn.2010-10.org.openstack:"}


def _backend(conf: str, name: str) -> dict[str, str]:
    section = conf.split("[%s]\n" % name, 1)[1].split("\n[", 1)[0]
    return dict(line.split(" = ", 1) for line in section.splitlines() if " = " in line)


def test_every_forwarded_portal_is_a_cinder_portal(tmp_path: Path):
    san = dict(SAN, iscsi_portals=["127.0.0.1:3260", "127.0.0.2:3260"])
    conf = stack.cinder_conf(tmp_path, san, "rabbit://x", 1, None, stack.ZOL_DRIVER)
    for name in stack.BACKENDS:
        b = _backend(conf, name)
        assert b["target_ip_address"] == "127.0.0.1" and b["target_port"] == "3260"
        assert b["target_secondary_ip_addresses"] == "127.0.0.2"


def test_a_single_portal_san_gets_no_secondary_portal(tmp_path: Path):
    conf = stack.cinder_conf(tmp_path, SAN, "rabbit://x", 1, None, stack.ZOL_DRIVER)
    assert "target_secondary_ip_addresses" not in conf
