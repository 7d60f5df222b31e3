"""verify's pieces: nova's qemu command line, the instance disk, the config drive, the checks."""
from __future__ import annotations

import json
import subprocess

import pytest

from image_builder import exception, verify


def opt(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_ami_boots_with_novas_exact_command_line():
    argv = verify.qemu_argv(disk="/i.qcow2", console="/c.log", pidfile="/p", kernel="/k",
                            initrd="/r", cdrom="/cd.iso", ssh_port=2222,
                            nic=verify.Nic("virtio-net-pci", 0x3), mac="fa:16:3e:01:02:03",
                            qga_socket="/q.sock")
    assert opt(argv, "-kernel") == ["/k"] and opt(argv, "-initrd") == ["/r"]
    assert opt(argv, "-append") == ["root=/dev/vda console=tty0 console=ttyS0 console=hvc0"]
    assert "rw" not in opt(argv, "-append")[0].split()        # nova passes no rw (issue 9)
    assert "file=/i.qcow2,if=none,id=vda,format=qcow2,cache=unsafe" in opt(argv, "-drive")
    assert "virtio-blk-pci,drive=vda,addr=0x4,bootindex=1" in opt(argv, "-device")
    assert "file=/cd.iso,if=ide,index=1,media=cdrom,readonly=on,format=raw" in \
        opt(argv, "-drive")
    assert opt(argv, "-netdev") == ["user,id=n0,ipv4=on,ipv6=on,ipv6-net=fd00:2::/64,"
                                    "hostfwd=tcp:127.0.0.1:2222-10.0.2.15:22"]
    assert "virtio-net-pci,netdev=n0,mac=fa:16:3e:01:02:03,addr=0x3" in opt(argv, "-device")
    assert "virtserialport,bus=vs0.0,chardev=qga0,name=org.qemu.guest_agent.0" in \
        opt(argv, "-device")
    assert opt(argv, "-accel") == ["tcg,thread=multi"] and opt(argv, "-cpu") == ["max"]
    assert all(isinstance(a, str) for a in argv)


def test_bare_boots_through_the_firmware_and_kvm_variant():
    argv = verify.qemu_argv(disk="/i.qcow2", console="/c", pidfile="/p", accel="kvm",
                            nic=verify.Nic.parse("e1000@0x8"))
    assert "-kernel" not in argv and "-append" not in argv and "-drive" in argv
    assert opt(argv, "-accel") == ["kvm"] and opt(argv, "-cpu") == ["host"]
    assert any(d.startswith("e1000,netdev=n0,") and d.endswith(",addr=0x8")
               for d in opt(argv, "-device"))


@pytest.mark.parametrize("text", ["virtio@0x3", "e1000@0x4", "e1000@0x6", "e1000@0x20",
                                  "e1000@x", "virtio-net-pci@0x1"])
def test_nic_spec_is_validated(text):
    with pytest.raises(exception.ConfigError, match="verify_nic"):
        verify.Nic.parse(text)


def test_nic_spec_round_trip():
    assert verify.Nic.parse("virtio-net-pci@0x3") == verify.Nic()
    assert str(verify.Nic.parse("e1000@7")) == "e1000@0x7"


def test_instance_disk_is_a_flavor_sized_overlay_of_the_image(tmp_path):
    image = tmp_path / "ami.raw"
    image.write_bytes(b"\0" * 1048576)
    argv = verify.overlay_argv(str(image), "raw", str(tmp_path / "inst.qcow2"), 3 << 30)
    assert argv[:3] == ["qemu-img", "create", "-q"]
    subprocess.run(argv, check=True)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json",
                                      str(tmp_path / "inst.qcow2")], capture_output=True,
                                     check=True, text=True).stdout)
    assert info["virtual-size"] == 3 << 30 and info["backing-filename"] == str(image)
    assert info["backing-filename-format"] == "raw"


def test_config_drive_is_what_nova_writes(tmp_path):
    tree, iso = tmp_path / "cd", tmp_path / "cd.iso"
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO9 zol-verify"
    verify.write_config_drive_tree(tree, instance_uuid="0b7c9c7e-1111-2222-3333-444455556666",
                                   hostname="zol-verify-abc", public_key=key,
                                   mac="fa:16:3e:aa:bb:cc", token="t0k3n")
    subprocess.run(verify.genisoimage_argv(str(tree), str(iso)), check=True)
    label = subprocess.run(["isoinfo", "-d", "-i", str(iso)], capture_output=True, text=True,
                           check=True).stdout
    assert "Volume id: config-2" in label

    def read(path: str) -> str:
        return subprocess.run(["isoinfo", "-R", "-i", str(iso), "-x", path],
                              capture_output=True, text=True, check=True).stdout

    meta = json.loads(read("/openstack/latest/meta_data.json"))
    assert meta["uuid"] == "0b7c9c7e-1111-2222-3333-444455556666"
    assert meta["hostname"] == "zol-verify-abc"
    assert meta["public_keys"] == {"zol-verify": key}
    assert meta["keys"] == [{"name": "zol-verify", "type": "ssh", "data": key}]
    net = json.loads(read("/openstack/latest/network_data.json"))
    assert net["links"][0]["ethernet_mac_address"] == "fa:16:3e:aa:bb:cc"
    v4 = next(n for n in net["networks"] if n["type"] == "ipv4")
    assert v4["ip_address"] == verify.STATIC_IP and net["links"][0]["mtu"] == 1400
    assert {n["type"] for n in net["networks"]} == {"ipv4", "ipv6_slaac"}
    user = read("/openstack/latest/user_data")
    assert user.startswith("#cloud-config\n") and "t0k3n" in user


def test_config_drive_without_network_data_for_plain_dhcp_networks(tmp_path):
    tree = tmp_path / "cd"
    verify.write_config_drive_tree(tree, instance_uuid="0b7c9c7e-1111-2222-3333-444455556666",
                                   hostname="h", public_key="ssh-ed25519 AAAA k",
                                   mac="fa:16:3e:aa:bb:cc", token="t", network="dhcp")
    latest = tree / "openstack" / "latest"
    assert (latest / "meta_data.json").exists() and (latest / "user_data").exists()
    assert not (latest / "network_data.json").exists()


@pytest.mark.parametrize("out, why", [
    ("inet 10.0.2.15/24 scope global ens9\\ valid_lft forever\ndefault via 10.0.2.2\n",
     "not a DHCP lease"),
    ("inet 10.0.2.15/24 scope global dynamic ens9\\ valid_lft 86000sec\n", "default route"),
    ("inet6 fd00:2::1/64 scope global\n", "no 10.0.2.15"),
])
def test_dhcp_network_check_wants_a_lease_and_a_route(out, why):
    check = checks(network="dhcp")["network"]
    problem = check.evaluate(0, out)
    assert problem and why in problem
    assert check.evaluate(0, "2: ens9    inet 10.0.2.15/24 brd 10.0.2.255 scope global "
                             "dynamic ens9\\       valid_lft 86366sec preferred_lft 86366sec\n"
                             "default via 10.0.2.2 dev ens9 proto dhcp src 10.0.2.15\n"
                             "2: ens9: <UP> mtu 1500 qdisc\n") is None


def checks(**kw):
    args = {"hostname": "h-1", "flavor_bytes": 3 << 30, "token": "tok",
            "apt_suites": (" bookworm-security ",)}
    args.update(kw)
    return {c.name: c for c in verify.guest_checks(**args)}


def test_checks_pass_on_a_good_instance():
    good = {
        "cloud-init": (0, "status: done\ndetail:\nDataSourceConfigDrive [net,ver=2]\n"),
        "cloud-init-result": (0, json.dumps({"v1": {"datasource": "DataSourceConfigDrive "
                                                    "[net,ver=2][source=/dev/sr0]",
                                                    "errors": []}})),
        "hostname": (0, "h-1\n"),
        "network": (0, "2: ens3    inet 10.0.2.15/24 brd 10.0.2.255 scope global ens3\\"
                       "       valid_lft forever preferred_lft forever\n"
                       "default via 10.0.2.2 dev ens3 proto static\n"
                       "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue\n"
                       "2: ens3: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1400 qdisc fq_codel\n"),
        "ipv6": (0, "2: ens3    inet6 fd00:2::f816:3eff:fe01:203/64 scope global dynamic\n"),
        "root-fs-grown": (0, "%d\n4096\next4\n" % (3 << 30) * 1),
        "root-fs-writable": (0, "rw\nwritten\n"),
        "sudo": (0, "0\n"),
        "user-data": (0, "tok\n"),
        "time-sync": (3, "active\ninactive\n"),
        "qemu-guest-agent": (0, "active\n"),
        "serial-getty": (0, "active\n"),
        "ssh-policy": (0, "permitrootlogin without-password\npasswordauthentication no\n"
                          'no-port-forwarding,command="echo \'Please login as the user '
                          '\\"debian\\" rather than the user \\"root\\".\';" ssh-ed25519 AAAA\n'),
        "machine-id": (0, "0123456789abcdef0123456789abcdef\n"),
        "no-build-host-resolv.conf": (0, "../run/systemd/resolve/stub-resolv.conf\n"),
        "apt-sources": (0, "deb http://deb.debian.org/debian-security bookworm-security "
                           "main\n"),
    }
    all_checks = checks()
    assert set(all_checks) == set(good)
    for name, (rc, out) in good.items():
        assert all_checks[name].evaluate(rc, out) is None, name


@pytest.mark.parametrize("name, rc, out, why", [
    ("cloud-init", 1, "status: error\n", "exit 1"),
    ("cloud-init-result", 0, json.dumps({"v1": {"datasource": "DataSourceNone",
                                                "errors": []}}), "not the config drive"),
    ("cloud-init-result", 0, json.dumps({"v1": {"datasource": "DataSourceConfigDrive",
                                                "errors": ["boom"]}}), "boom"),
    ("hostname", 0, "debian\n", "h-1"),
    ("ipv6", 0, "2: ens3    inet6 fec0::5054:ff:fe12:3456/64 scope site dynamic\n", "SLAAC"),
    ("network", 0, "inet 10.0.2.15/24 scope global dynamic ens3\\ valid_lft 86000sec\n"
                   "default via 10.0.2.2\n", "DHCP lease"),
    ("network", 0, "inet 10.0.2.15/24 scope global ens3\\ valid_lft forever\n"
                   "default via 10.0.2.2\n2: ens3: <UP> mtu 1500 qdisc\n", "MTU 1400"),
    ("root-fs-grown", 0, "%d\n4096\next4\n" % (480 << 20), "below 95%"),
    ("root-fs-grown", 0, "%d\n1024\next4\n" % (3 << 30), "not 4096"),
    ("root-fs-writable", 0, "ro\n", "rw"),
    ("sudo", 1, "sudo: a password is required\n", "password"),
    ("time-sync", 3, "inactive\ninactive\n", "neither"),
    ("ssh-policy", 0, "passwordauthentication yes\n", "passwordauthentication no"),
    ("machine-id", 0, "\n", "machine-id"),
    ("apt-sources", 0, "deb http://m/d bookworm main\n", "bookworm-security"),
])
def test_each_check_can_fail(name, rc, out, why):
    problem = checks()[name].evaluate(rc, out)
    assert problem and why in problem


def test_host_key_fingerprints_from_the_console():
    console = ("ec2: #############################################################\n"
               "ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----\n"
               "ec2: 256 SHA256:abcDEF+/123 root@h (ECDSA)\n"
               "ec2: 256 SHA256:xyz987 root@h (ED25519)\n"
               "ec2: -----END SSH HOST KEY FINGERPRINTS-----\n")
    assert verify.host_key_fingerprints(console) == {"abcDEF+/123", "xyz987"}
    assert verify.host_key_fingerprints("no block") == set()


def test_guest_agent_client_speaks_the_qga_protocol(tmp_path):
    """Against a scripted peer (the real agent is exercised by every functional launch)."""
    import base64
    import socket
    import threading

    path = str(tmp_path / "qga.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)
    seen = []

    def peer():
        conn, _ = server.accept()
        f = conn.makefile("rwb")
        f.write(b'{"return": 7}\n')               # a stale reply from an earlier client
        f.flush()
        for line in f:
            req = json.loads(line)
            seen.append(req["execute"])
            if req["execute"] == "guest-sync":
                reply = {"return": req["arguments"]["id"]}
            elif req["execute"] == "guest-exec":
                reply = {"return": {"pid": 42}}
            elif req["execute"] == "guest-exec-status":
                out = base64.b64encode(b"256 SHA256:abc+/9 root@h (ED25519)\n").decode()
                reply = {"return": {"exited": True, "exitcode": 0, "out-data": out}}
            else:
                reply = {"return": {}}
            f.write(json.dumps(reply).encode() + b"\n")
            f.flush()
        conn.close()

    t = threading.Thread(target=peer, daemon=True)
    t.start()
    keys, problem = verify.agent_host_keys(path, timeout=10)
    t.join(5)
    server.close()
    assert problem is None and keys == {"abc+/9"}
    assert seen == ["guest-sync", "guest-ping", "guest-exec", "guest-exec-status"]


def test_guest_agent_absent_is_reported(tmp_path):
    keys, problem = verify.agent_host_keys(str(tmp_path / "none.sock"), timeout=1)
    assert keys == set() and "did not answer" in problem


def test_launch_vcpus_default_to_two_within_the_host():
    assert opt(verify.qemu_argv(disk="/i", console="/c", pidfile="/p"), "-smp") == ["1"]
    assert opt(verify.qemu_argv(disk="/i", console="/c", pidfile="/p", cpus=2), "-smp") == ["2"]
    import os
    assert verify.launch_cpus() == min(2, os.cpu_count() or 1)


def _listener():
    import socket
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    return srv


def test_ssh_banner_peek_leaves_the_banner_for_paramiko():
    import threading
    srv = _listener()
    t = threading.Thread(target=lambda: srv.accept()[0].sendall(b"SSH-2.0-test\r\n"))
    t.start()
    sock = verify.ssh_banner_socket(srv.getsockname()[1], wait=5)
    t.join()
    assert sock is not None
    assert sock.recv(64) == b"SSH-2.0-test\r\n"          # peeked, not consumed
    sock.close()
    srv.close()


def test_ssh_banner_peek_gives_up_quickly_on_a_silent_or_closed_port():
    import time
    srv = _listener()                  # accepts (like slirp) but never speaks
    t0 = time.monotonic()
    assert verify.ssh_banner_socket(srv.getsockname()[1], wait=0.5) is None
    assert time.monotonic() - t0 < 3
    port = srv.getsockname()[1]
    srv.close()
    assert verify.ssh_banner_socket(port, wait=0.5) is None      # refused
