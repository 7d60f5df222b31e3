"""tools/cinder-stack's cinder.conf: every portal the SAN VM forwards becomes a Cinder portal
(target_ip_address + target_secondary_ip_addresses, one target_port), so a multipath connector
gets them all in its connection info."""
from __future__ import annotations

from pathlib import Path

import pytest

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


def test_a_cluster_stack_joins_one_cluster_on_etcd(tmp_path: Path):
    conf = stack.cinder_conf(tmp_path, SAN, "rabbit://x", 1, None, stack.ZOL_DRIVER,
                             "etcd3+http://127.0.0.1:2379?api_version=v3", "zol-cluster")
    default = _backend(conf, "DEFAULT")
    assert default["cluster"] == "zol-cluster"
    assert int(default["service_down_time"]) >= 2.5 * int(default["report_interval"])
    assert _backend(conf, "coordination")["backend_url"].startswith("etcd3+http://127.0.0.1:")


def test_a_single_service_stack_has_no_cluster_and_file_locks(tmp_path: Path):
    conf = stack.cinder_conf(tmp_path, SAN, "rabbit://x", 1, None, stack.ZOL_DRIVER)
    assert "cluster =" not in conf
    assert _backend(conf, "coordination")["backend_url"].startswith("file://")


def test_cluster_members_have_their_own_host(tmp_path: Path):
    state = {"run_dir": str(tmp_path), "conf": str(tmp_path / "cinder.conf"),
             "logs": {"volume-2": str(tmp_path / "v2.log")}}
    argv = stack._service_argv(state, "volume-2")
    assert argv[2] == "volume"
    extra = Path(argv[argv.index("--config-file", 4) + 1])
    assert extra.read_text() == "[DEFAULT]\nhost = zol-cinder-stack-2\n"
    assert stack.service_host("volume") == "zol-cinder-stack"


def test_more_than_one_volume_service_needs_etcd(tmp_path: Path):
    with pytest.raises(stack.StackError, match="needs --coordination etcd"):
        stack.start({}, tmp_path, volume_services=2, coordination="file")
