"""verify: launch the image the way a stock nova does, then log in the way its user does.

nova's libvirt driver (default settings) makes the instance disk a qcow2 overlay of the
flavor's root size backed by the image, boots an AMI with its AKI/ARI and
``root=/dev/vda console=tty0 console=ttyS0 console=hvc0`` (a BARE disk through the firmware),
gives it one NIC at a PCI slot of its choosing, and hands the user's key over a config drive
(iso9660 labelled ``config-2``) because file injection is off.  We do exactly that under qemu
(KVM only when a probe guest really boots under it, TCG otherwise), with a key generated for
this launch (the build never saw it) and a network_data.json whose static address differs from
the DHCP one, so a working SSH login proves the metadata's network configuration won.  Then we
check from inside: network (v4 + v6), hostname, a root fs grown to the flavor disk with 4 KiB
blocks, writable, ``sudo -n``, cloud-init done without errors, user-data honoured, time sync,
the guest agent (pinged from the host), SSH policy, machine-id, apt sources.  A failure names
the failed checks and carries the console tail and the cloud-init log.  Nothing survives: qemu
is stopped by PID, overlay, config drive and key are deleted on every path.

Images built without cloud-init cannot take a key: they are verified by their console marker.
"""
from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import json
import logging
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import tempfile
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from image_builder import exception, run

LOG = logging.getLogger(__name__)
# SSH channels the read-only checks run on at once (sshd's MaxSessions is 10).
CHECK_CHANNELS = 4

NOVA_APPEND = "root=/dev/vda console=tty0 console=ttyS0 console=hvc0"
LOGIN = "login:"
PANIC_MARKERS = ("Kernel panic", "VFS: Unable to mount root fs",
                 "Gave up waiting for root file system device", "(initramfs)")
USER = "debian"
# network_data.json assigns qemu's DHCP address (10.0.2.15) statically (no lease lifetime) with
# an MTU DHCP does not give: both show the metadata won, and a guest that ignored it and fell
# back to DHCP would still be reachable for the diagnosis.
STATIC_IP, GATEWAY, DNS, MTU = "10.0.2.15", "10.0.2.2", "10.0.2.3", 1400
IPV6_NET = "fd00:2::/64"          # announced by qemu's router advertisements (SLAAC)
NIC_MODELS = ("virtio-net-pci", "e1000", "e1000e", "rtl8139")
# Fixed slots of the other devices (nova's layout: NIC 0x3, disk 0x4); the NIC may take any
# other free slot.
DISK_SLOT, SERIAL_SLOT = 0x4, 0x6
RESERVED_SLOTS = (0x0, 0x1, DISK_SLOT, SERIAL_SLOT)


@dataclass(frozen=True)
class Nic:
    model: str = "virtio-net-pci"
    slot: int = 0x3

    @classmethod
    def parse(cls, text: str) -> Nic:
        """'MODEL@SLOT', e.g. 'virtio-net-pci@0x3' or 'e1000@0x8'."""
        model, _, slot = text.partition("@")
        try:
            number = int(slot, 0) if slot else 0x3
        except ValueError:
            number = -1
        if model not in NIC_MODELS or not 0x2 <= number <= 0x1f or number in RESERVED_SLOTS:
            raise exception.ConfigError(
                reason="verify_nic %r: use MODEL@SLOT with MODEL one of %s and SLOT 0x2-0x1f "
                       "except %s" % (text, ", ".join(NIC_MODELS),
                                      ", ".join(hex(s) for s in RESERVED_SLOTS[2:])))
        return cls(model, number)

    def __str__(self) -> str:
        return "%s@%#x" % (self.model, self.slot)


# ----------------------------------------------------------------------------- pure pieces

def meta_data(*, instance_uuid: str, hostname: str, public_key: str) -> dict:
    """openstack/latest/meta_data.json as nova writes it (the fields cloud-init reads)."""
    return {"uuid": instance_uuid, "name": hostname, "hostname": hostname,
            "launch_index": 0, "availability_zone": "nova", "project_id": "zol-verify",
            "public_keys": {"zol-verify": public_key},
            "keys": [{"name": "zol-verify", "type": "ssh", "data": public_key}],
            "meta": {}, "devices": [], "files": []}


def network_data(mac: str) -> dict:
    """network_data.json: a static IPv4 with its own MTU, and SLAAC, on the NIC."""
    return {
        "links": [{"id": "tap-zol0", "type": "phy", "ethernet_mac_address": mac,
                   "mtu": MTU, "vif_id": "zol-verify-vif"}],
        "networks": [
            {"id": "network0", "type": "ipv4", "link": "tap-zol0", "ip_address": STATIC_IP,
             "netmask": "255.255.255.0", "network_id": "zol-net",
             "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": GATEWAY}]},
            {"id": "network1", "type": "ipv6_slaac", "link": "tap-zol0",
             "network_id": "zol-net6"},
        ],
        "services": [{"type": "dns", "address": DNS}],
    }


def user_data(token: str) -> str:
    """#cloud-config user-data whose effect the checks look for."""
    return ("#cloud-config\n# zol-image verify: proves user-data is honoured\n"
            "runcmd:\n  - [sh, -c, 'echo %s > /var/tmp/zol-user-data']\n" % token)


def write_config_drive_tree(root: Path, *, instance_uuid: str, hostname: str,
                            public_key: str, mac: str, token: str,
                            network: str = "metadata") -> None:
    """``network='dhcp'``: no network_data.json, as on clouds whose networks are plain DHCP
    (the image must then configure its NIC by itself)."""
    latest = root / "openstack" / "latest"
    latest.mkdir(parents=True, exist_ok=True)
    (latest / "meta_data.json").write_text(json.dumps(meta_data(
        instance_uuid=instance_uuid, hostname=hostname, public_key=public_key)))
    if network == "metadata":
        (latest / "network_data.json").write_text(json.dumps(network_data(mac)))
    (latest / "user_data").write_text(user_data(token))
    (latest / "vendor_data.json").write_text("{}")


def genisoimage_argv(tree: str, iso: str) -> list[str]:
    """nova's config drive: iso9660 with Joliet and Rock Ridge, volume label config-2."""
    return ["genisoimage", "-quiet", "-o", iso, "-ldots", "-allow-lowercase",
            "-allow-multidot", "-l", "-V", "config-2", "-J", "-r", tree]


def overlay_argv(backing: str, backing_fmt: str, overlay: str, size: int) -> list[str]:
    """The instance disk: a qcow2 overlay of the flavor's size backed by the image."""
    return ["qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", backing_fmt,
            overlay, str(size)]


def qemu_argv(*, disk: str, console: str, pidfile: str, kernel: str | None = None,
              initrd: str | None = None, cdrom: str | None = None, ssh_port: int = 0,
              nic: Nic = Nic(), mac: str = "fa:16:3e:00:00:01", qga_socket: str | None = None,
              memory: int = 1024, cpus: int = 1, accel: str = "tcg",
              append: str = NOVA_APPEND) -> list[str]:
    """The instance as nova's libvirt driver starts it (pure; unit tested)."""
    argv = ["qemu-system-x86_64", "-machine", "pc"]
    if accel == "kvm":
        argv += ["-accel", "kvm", "-cpu", "host"]
    else:
        argv += ["-accel", "tcg,thread=multi", "-cpu", "max"]
    argv += ["-m", str(memory), "-smp", str(cpus), "-nodefaults", "-no-user-config",
             "-display", "none", "-serial", "file:%s" % console, "-pidfile", pidfile,
             "-no-reboot",
             "-drive", "file=%s,if=none,id=vda,format=qcow2,cache=unsafe" % disk,
             "-device", "virtio-blk-pci,drive=vda,addr=%#x,bootindex=1" % DISK_SLOT]
    if cdrom:
        argv += ["-drive", "file=%s,if=ide,index=1,media=cdrom,readonly=on,format=raw" % cdrom]
    fwd = ",hostfwd=tcp:127.0.0.1:%d-%s:22" % (ssh_port, STATIC_IP) if ssh_port else ""
    # Both families explicitly: qemu turns IPv4 off when only ipv6=on is given.
    # (qemu's default IPv6 prefix fec0::/64 is site-local; a ULA prefix is scope global).
    argv += ["-netdev", "user,id=n0,ipv4=on,ipv6=on,ipv6-net=%s%s" % (IPV6_NET, fwd),
             "-device", "%s,netdev=n0,mac=%s,addr=%#x" % (nic.model, mac, nic.slot)]
    if qga_socket:
        argv += ["-device", "virtio-serial-pci,id=vs0,addr=%#x" % SERIAL_SLOT,
                 "-chardev", "socket,id=qga0,path=%s,server=on,wait=off" % qga_socket,
                 "-device", "virtserialport,bus=vs0.0,chardev=qga0,name=org.qemu.guest_agent.0"]
    if kernel:
        argv += ["-kernel", kernel]
        if initrd:
            argv += ["-initrd", initrd]
        argv += ["-append", append]
    return argv


@dataclass(frozen=True)
class Check:
    name: str
    argv: tuple[str, ...]
    evaluate: Callable[[int, str], str | None]      # None: passed, else what is wrong


def _rc0(rc: int, out: str) -> str | None:
    return None if rc == 0 else "exit %d: %s" % (rc, out.strip()[-300:])


def guest_checks(*, hostname: str, flavor_bytes: int, token: str,
                 apt_suites: tuple[str, ...] = (), network: str = "metadata") -> list[Check]:
    """What a user needs from the instance, each as a command run as ``debian`` over SSH."""
    def cloud_init(rc: int, out: str) -> str | None:
        if rc != 0 or "status: done" not in out:
            return "cloud-init status exit %d: %s" % (rc, out.strip()[-400:])
        return None

    def result_json(rc: int, out: str) -> str | None:
        try:
            data = json.loads(out)["v1"]
        except (ValueError, KeyError, TypeError):
            return "unreadable /run/cloud-init/result.json: %s" % out[:200]
        if data.get("errors"):
            return "cloud-init errors: %s" % data["errors"]
        if "ConfigDrive" not in str(data.get("datasource")):
            return "datasource %r, not the config drive" % data.get("datasource")
        return None

    def network_check(rc: int, out: str) -> str | None:
        addr = [ln for ln in out.splitlines() if "inet %s/24" % STATIC_IP in ln]
        if not addr:
            return "no %s on any NIC: %s" % (STATIC_IP, out.strip())
        if network == "dhcp":
            # No network_data.json: the image's own fallback must have taken a DHCP lease.
            if "valid_lft forever" in addr[0]:
                return "%s is static without network_data.json (not a DHCP lease): %s" % (
                    STATIC_IP, addr[0].strip())
            if "default via %s" % GATEWAY not in out:
                return "no default route via %s: %s" % (GATEWAY, out.strip())
            return None
        if "valid_lft forever" not in addr[0]:
            return "%s is a DHCP lease, not network_data.json's static address: %s" % (
                STATIC_IP, addr[0].strip())
        if "default via %s" % GATEWAY not in out:
            return "no default route via %s: %s" % (GATEWAY, out.strip())
        if not re.search(r"^\d+: \w+: .* mtu %d " % MTU, out, re.M):
            return "no NIC with network_data.json's MTU %d: %s" % (MTU, out.strip())
        return None

    def ipv6(rc: int, out: str) -> str | None:
        return None if re.search(r"inet6 fd00:2:.* scope global", out) else \
            "no global IPv6 address from the RA (%s, SLAAC): %s" % (IPV6_NET, out.strip())

    def root_size(rc: int, out: str) -> str | None:
        fields = out.split()
        if rc != 0 or len(fields) < 3 or not fields[0].isdigit():
            return "df/stat said %r" % out.strip()
        size, block, fstype = int(fields[0]), fields[1], fields[2]
        if size < flavor_bytes * 0.95:
            return "root fs %d MiB, below 95%% of the %d MiB flavor disk" % (
                size >> 20, flavor_bytes >> 20)
        if block != "4096":
            return "root fs block size %s, not 4096" % block
        if fstype != "ext4":
            return "root fs type %s" % fstype
        return None

    def equals(expected: str) -> Callable[[int, str], str | None]:
        def check(rc: int, out: str) -> str | None:
            return None if rc == 0 and out.strip() == expected else \
                "expected %r, got exit %d %r" % (expected, rc, out.strip()[:200])
        return check

    def contains(*needles: str) -> Callable[[int, str], str | None]:
        def check(rc: int, out: str) -> str | None:
            missing = [n for n in needles if n not in out]
            return "missing %s in %r" % (missing, out.strip()[-300:]) if missing else None
        return check

    def time_sync(rc: int, out: str) -> str | None:
        return None if "active" in out.split() else "neither systemd-timesyncd nor chrony " \
            "active: %s" % out.strip()

    def machine_id(rc: int, out: str) -> str | None:
        return None if re.fullmatch(r"[0-9a-f]{32}", out.strip()) else \
            "machine-id %r" % out.strip()

    return [
        Check("cloud-init", ("cloud-init", "status", "--wait", "--long"), cloud_init),
        Check("cloud-init-result", ("cat", "/run/cloud-init/result.json"), result_json),
        Check("hostname", ("hostname",), equals(hostname)),
        Check("network", ("sh", "-c", "ip -o -4 addr show scope global; ip -4 route; "
                                      "ip -o link show"),
              network_check),
        Check("ipv6", ("sh", "-c", "for i in $(seq 20); do ip -o -6 addr show scope global "
                                   "| grep -q inet6 && break; sleep 1; done; "
                                   "ip -o -6 addr; ip -6 route"), ipv6),
        Check("root-fs-grown", ("sh", "-c", "df -B1 --output=size / | tail -n 1; "
                                            "stat -f -c %S /; findmnt -no FSTYPE /"),
              root_size),
        Check("root-fs-writable", ("sh", "-c", "findmnt -no OPTIONS / | cut -d, -f1; "
                                               "touch /var/tmp/zol-write && echo written"),
              equals("rw\nwritten")),
        Check("sudo", ("sudo", "-n", "id", "-u"), equals("0")),
        Check("user-data", ("cat", "/var/tmp/zol-user-data"), equals(token)),
        Check("time-sync", ("systemctl", "is-active", "systemd-timesyncd.service",
                            "chrony.service"), time_sync),
        Check("qemu-guest-agent", ("systemctl", "is-active", "qemu-guest-agent.service"),
              equals("active")),
        Check("serial-getty", ("systemctl", "is-active", "serial-getty@ttyS0.service"),
              equals("active")),
        Check("ssh-policy", ("sudo", "-n", "sh", "-c",
                             "sshd -T | grep -E '^(passwordauthentication|permitrootlogin) '; "
                             "cat /root/.ssh/authorized_keys"),
              contains("passwordauthentication no", "Please login as the user")),
        Check("machine-id", ("cat", "/etc/machine-id"), machine_id),
        Check("no-build-host-resolv.conf", ("readlink", "/etc/resolv.conf"),
              contains("systemd/resolve/")),
        Check("apt-sources", ("cat", "/etc/apt/sources.list"), contains(*apt_suites)),
    ]


def host_key_fingerprints(console: str) -> set[str]:
    """SHA256 fingerprints cloud-init printed to the console (the out-of-band channel nova's
    console log gives a user to check the host key)."""
    block = re.findall(r"-----BEGIN SSH HOST KEY FINGERPRINTS-----(.*?)"
                       r"-----END SSH HOST KEY FINGERPRINTS-----", console, re.S)
    return {m for b in block for m in re.findall(r"SHA256:([A-Za-z0-9+/]+)", b)}


def fingerprint(key) -> str:
    return base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def launch_cpus() -> int:
    """vCPUs of the test launch: 2 (a small flavor), never more than the host has.  Under TCG
    (thread=multi) each vCPU is a host thread: a second one overlaps cloud-init, sshd key
    generation and the checks with the kernel's and systemd's work on an idle 2-core host."""
    return max(1, min(2, os.cpu_count() or 1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accel_for(kernel: str | None) -> tuple[str, str]:
    """('kvm'|'tcg', reason): KVM only when the installer backend's probe boots a kernel."""
    from image_builder.install import libvirt as lv
    candidates = [kernel] if kernel else []
    candidates += sorted(str(p) for p in Path("/boot").glob("vmlinuz-*"))
    probe_with = next((c for c in candidates if c and os.access(c, os.R_OK)), None)
    if probe_with is None:
        return "tcg", "no kernel to probe KVM with"
    probe = lv.probe_kvm(probe_with)
    return ("kvm" if probe["ok"] else "tcg"), str(probe["reason"])


class GuestAgent:
    """qemu-guest-agent over its virtio-serial socket: the out-of-band channel nova has too."""

    def __init__(self, path: str, timeout: float = 30) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.file = self.sock.makefile("rwb")
        sync_id = secrets.randbelow(1 << 30)
        self._send("guest-sync", {"id": sync_id})
        while self._reply() != sync_id:
            pass                              # stale replies of an earlier client

    def _send(self, command: str, arguments: dict | None = None) -> None:
        request: dict = {"execute": command}
        if arguments is not None:
            request["arguments"] = arguments
        self.file.write(json.dumps(request).encode() + b"\n")
        self.file.flush()

    def call(self, command: str, arguments: dict | None = None):
        self._send(command, arguments)
        return self._reply()

    def _reply(self):
        while True:
            line = self.file.readline()
            if not line:
                raise OSError("guest agent closed the channel")
            reply = json.loads(line)
            if "error" in reply:
                raise OSError("guest agent: %s" % reply["error"].get("desc"))
            if "return" in reply:
                return reply["return"]

    def exec(self, argv: list[str], timeout: float = 30) -> tuple[int, str]:
        pid = self.call("guest-exec", {"path": argv[0], "arg": argv[1:],
                                       "capture-output": True})["pid"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.call("guest-exec-status", {"pid": pid})
            if status.get("exited"):
                out = base64.b64decode(status.get("out-data", "")).decode(errors="replace")
                return status.get("exitcode", -1), out
            time.sleep(0.5)
        raise OSError("guest agent: %s still running after %.0f s" % (argv[0], timeout))

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def agent_host_keys(path: str, timeout: float = 60) -> tuple[set[str], str | None]:
    """The guest's SSH host key fingerprints read through the guest agent (ping first), so the
    key SSH presented is checked against a channel SSH does not control.  Returns
    (fingerprints, problem)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            agent = GuestAgent(path)
            try:
                agent.call("guest-ping")
                rc, out = agent.exec(["/bin/sh", "-c", "for k in /etc/ssh/ssh_host_*_key.pub;"
                                      " do ssh-keygen -l -E sha256 -f \"$k\"; done"])
            finally:
                agent.close()
            if rc != 0:
                return set(), "guest agent ran ssh-keygen -l: exit %s %s" % (rc, out[-200:])
            return set(re.findall(r"SHA256:([A-Za-z0-9+/]+)", out)), None
        except (OSError, ValueError, KeyError) as exc:
            last = str(exc)
        time.sleep(2)
    return set(), "guest agent did not answer: %s" % last


# ----------------------------------------------------------------------------- the launch

def launch(*, root: str, root_fmt: str, workdir: Path, flavor_bytes: int, timeout: float,
           kernel: str | None = None, initrd: str | None = None, nic: Nic = Nic(),
           network: str = "metadata",
           memory: int = 1024, cpus: int | None = None, hostname: str = "zol-verify",
           marker: str = "",
           ssh: bool = True, apt_suites: tuple[str, ...] = (),
           progress: Callable[[str], None] | None = None,
           on_started: Callable[[], None] | None = None) -> dict:
    """Launch ``root`` (AMI with ``kernel``/``initrd``, else a BARE disk) like nova and check
    it from inside over SSH (``ssh=False``: wait for ``marker`` on the console only)."""
    progress = progress or (lambda msg: LOG.info("  %s", msg))
    workdir.mkdir(parents=True, exist_ok=True)
    overlay, iso = workdir / "instance.qcow2", workdir / "config-drive.iso"
    key, drive_tree = workdir / "id_verify", workdir / "config-drive"
    console, pidfile, qga = workdir / "console.log", workdir / "qemu.pid", workdir / "qga.sock"
    qga_dir = None
    temporary = (overlay, iso, key, key.with_suffix(".pub"), pidfile, qga)
    for p in temporary + (console,):
        p.unlink(missing_ok=True)
    run.remove_tree(drive_tree)
    virtual = json.loads(run.out(["qemu-img", "info", "--output=json", "-f", root_fmt,
                                  root]))["virtual-size"]
    if flavor_bytes < virtual:
        raise exception.ConfigError(reason="verify_disk_size %d MiB is smaller than the image "
                                    "(%d MiB): nova refuses such a flavor; raise it"
                                    % (flavor_bytes >> 20, -(-virtual >> 20)))
    accel, why = accel_for(kernel)
    hostname = "%s-%s" % (hostname, secrets.token_hex(3))
    token = secrets.token_hex(8)
    mac = "fa:16:3e:%02x:%02x:%02x" % tuple(secrets.token_bytes(3))
    proc = None
    client = None
    result: dict = {"nic": str(nic), "network": network, "accel": accel,
                    "flavor_bytes": flavor_bytes, "hostname": hostname}
    try:
        if len(str(qga)) > SUN_PATH_MAX:  # deep output dir: the socket goes in a short private dir
            qga_dir = Path(tempfile.mkdtemp(prefix="zol-qga-"))
            qga = qga_dir / "qga.sock"
        run.run(overlay_argv(os.path.abspath(root), root_fmt, str(overlay), flavor_bytes))
        port = 0
        if ssh:
            run.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "zol-verify",
                     "-f", str(key)])
            write_config_drive_tree(drive_tree, instance_uuid=str(uuidlib.uuid4()),
                                    hostname=hostname,
                                    public_key=key.with_suffix(".pub").read_text().strip(),
                                    mac=mac, token=token, network=network)
            run.run(genisoimage_argv(str(drive_tree), str(iso)))
            port = free_port()
        argv = qemu_argv(disk=str(overlay), console=str(console), pidfile=str(pidfile),
                         kernel=kernel, initrd=initrd, cdrom=str(iso) if ssh else None,
                         ssh_port=port, nic=nic, mac=mac, qga_socket=str(qga), memory=memory,
                         cpus=cpus or launch_cpus(),
                         accel=accel)
        LOG.info("verify: launching %s like nova (%s, %s, flavor disk %d MiB; %s)",
                 os.path.basename(root), "AMI direct kernel boot" if kernel else
                 "BARE firmware boot", nic, flavor_bytes >> 20, why)
        LOG.debug("verify: %s", shlex.join(argv))
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        if on_started:
            on_started()
        if not ssh:
            result["boot_seconds"] = round(_wait_marker(proc, console, marker, timeout, t0,
                                                        progress), 2)
            LOG.info("verify: marker %r after %.1f s", marker, result["boot_seconds"])
            return result
        client, host_key = _wait_ssh(proc, console, port, key, timeout, t0, progress)
        result["ssh_seconds"] = round(time.monotonic() - t0, 2)
        LOG.info("verify: SSH as %s with the instance key after %.1f s", USER,
                 result["ssh_seconds"])
        failed, passed = {}, []
        # The host key SSH presented must be the guest's own: compared with what cloud-init
        # printed on the console (when it reaches the serial port) and with the fingerprints
        # the guest agent reads (a channel SSH does not control).
        shown = host_key_fingerprints(console.read_text(errors="replace"))
        agent_keys, problem = agent_host_keys(str(qga))
        seen = fingerprint(host_key)
        result["host_key"] = "SHA256:%s (%s)" % (seen, ", ".join(
            [w for w, keys in (("console", shown), ("guest agent", agent_keys)) if seen in keys]
            or ["unconfirmed"]))
        if problem:
            failed["qemu-guest-agent-channel"] = problem
        elif seen not in agent_keys or (shown and seen not in shown):
            raise exception.VerifyError(reason="the SSH host key SHA256:%s is not the "
                                        "guest's (guest agent: %s; console: %s)"
                                        % (seen, sorted(agent_keys), sorted(shown)))
        else:
            passed.append("qemu-guest-agent-channel")
        checks = guest_checks(hostname=hostname, flavor_bytes=flavor_bytes, token=token,
                              apt_suites=apt_suites, network=network)
        # The first (cloud-init status --wait) waits for first boot to finish; the others only
        # read state, so they share the SSH connection as parallel channels (each costs a
        # process start in the guest: serially ~3 s apiece under TCG).
        outcomes = [_run_check(client, checks[0])]
        with concurrent.futures.ThreadPoolExecutor(max_workers=CHECK_CHANNELS) as pool:
            outcomes += pool.map(lambda c: _run_check(client, c), checks[1:])
        for check, problem in zip(checks, outcomes):
            if problem:
                failed[check.name] = problem
            else:
                passed.append(check.name)
        result["checks_seconds"] = round(time.monotonic() - t0 - result["ssh_seconds"], 2)
        result["checks"] = passed
        if failed:
            rc, log = _exec(client, ("sudo", "-n", "sh", "-c",
                                     "tail -n 40 /var/log/cloud-init.log; echo ----; "
                                     "tail -n 20 /var/log/cloud-init-output.log"))
            raise exception.VerifyError(
                reason="%d check(s) failed inside the instance: %s; console tail: %s; "
                       "cloud-init log: %s" % (
                           len(failed), "; ".join("%s: %s" % kv for kv in failed.items()),
                           _tail(console.read_text(errors="replace")), _tail(log, 3000)))
        LOG.info("verify: %d checks passed inside the instance (%s)", len(passed),
                 ", ".join(passed))
        return result
    finally:
        if client is not None:
            client.close()
        if proc is not None:
            stop(proc)
        for p in temporary:
            p.unlink(missing_ok=True)
        if qga_dir is not None:
            run.remove_tree(qga_dir)
        run.remove_tree(drive_tree)
        if console.exists():
            result["console_tail"] = _tail(console.read_text(errors="replace"), 1500)


# sockaddr_un.sun_path is 108 bytes with its NUL; qemu refuses longer socket paths
SUN_PATH_MAX = 107


def _check_alive(proc: subprocess.Popen, text: str, what: str) -> None:
    for bad in PANIC_MARKERS:
        if bad in text:
            raise exception.VerifyError(reason="guest failed to boot (%s); console tail: %s"
                                        % (bad, _tail(text)))
    if proc.poll() is not None:
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise exception.VerifyError(reason="qemu exited %s before %s: %s %s"
                                    % (proc.returncode, what, err.strip()[-500:], _tail(text)))


def _wait_marker(proc, console: Path, marker: str, timeout: float, t0: float,
                 progress) -> float:
    last = 0.0
    while True:
        text = console.read_text(errors="replace") if console.exists() else ""
        if marker in text and LOGIN in text[text.index(marker):]:
            return time.monotonic() - t0
        _check_alive(proc, text, "the marker")
        elapsed = time.monotonic() - t0
        if elapsed > timeout:
            raise exception.VerifyError(reason="no %r on the console after %.0f s; tail: %s"
                                        % (marker, elapsed, _tail(text)))
        if elapsed - last >= 15:
            last = elapsed
            progress("%.0f s: %s" % (elapsed, _last_line(text)))
        time.sleep(0.5)


def ssh_banner_socket(port: int, wait: float = 5) -> socket.socket | None:
    """A connection to the forwarded port whose peer already sent ``SSH-`` (peeked, not read:
    paramiko reads it), else None.  qemu's slirp accepts at once and keeps SYN-retrying a
    guest whose network is not up yet (~30 s): a short peek retries sooner than paramiko's
    own connect would."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=wait)
    except OSError:
        return None
    try:
        sock.settimeout(wait)
        if sock.recv(4, socket.MSG_PEEK) == b"SSH-":
            sock.settimeout(None)
            return sock
    except OSError:
        pass
    sock.close()
    return None


def _wait_ssh(proc, console: Path, port: int, key: Path, timeout: float, t0: float,
              progress):
    """One connection attempt at a time (TCG + sshd's MaxStartups), until the key is let in:
    a cheap banner peek every ~1-5 s, the SSH login only once sshd answers."""
    import paramiko

    class Remember(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client, hostname, key):
            self.key = key

    pkey = paramiko.Ed25519Key.from_private_key_file(str(key))
    # Refused connections while the guest boots are expected: keep paramiko's tracebacks out.
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    last_report, why = 0.0, "not tried yet"
    while True:
        text = console.read_text(errors="replace") if console.exists() else ""
        _check_alive(proc, text, "SSH let the key in")
        elapsed = time.monotonic() - t0
        if elapsed > timeout:
            raise exception.VerifyError(
                reason="the instance key was not let in over SSH (user %s, 127.0.0.1:%d -> "
                       "%s:22) within %.0f s; last attempt: %s; console tail: %s"
                       % (USER, port, STATIC_IP, elapsed, why, _tail(text, 1500)))
        if elapsed - last_report >= 20:
            last_report = elapsed
            progress("%.0f s: waiting for SSH (%s); console: %s"
                     % (elapsed, why, _last_line(text)))
        sock = ssh_banner_socket(port)
        if sock is None:
            why = "no SSH banner yet"
            time.sleep(1)
            continue
        policy = Remember()
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(policy)
        try:
            client.connect("127.0.0.1", port=port, username=USER, pkey=pkey, sock=sock,
                           allow_agent=False, look_for_keys=False, timeout=15,
                           banner_timeout=60, auth_timeout=30)
            return client, policy.key
        except (paramiko.SSHException, OSError, EOFError) as exc:
            client.close()
            sock.close()
            why = "%s: %s" % (type(exc).__name__, exc)
        time.sleep(2)


def _run_check(client, check: Check) -> str | None:
    rc, out = _exec(client, check.argv)
    return check.evaluate(rc, out)


def _exec(client, argv: tuple[str, ...], timeout: float = 300) -> tuple[int, str]:
    """Run ``argv`` in the guest (shlex.join: the SSH boundary); rc and stdout+stderr."""
    chan = client.get_transport().open_session(timeout=30)
    chan.settimeout(timeout)
    chan.set_combine_stderr(True)
    chan.exec_command(shlex.join(argv))
    out = b""
    try:
        while True:
            data = chan.recv(65536)
            if not data:
                break
            out += data
        rc = chan.recv_exit_status()
    except socket.timeout:
        rc = -1
        out += b" (timed out after %d s)" % timeout
    finally:
        chan.close()
    return rc, out.decode(errors="replace")


def stop(proc: subprocess.Popen) -> None:
    """Stop qemu by its PID: SIGTERM, then SIGKILL; always reaped."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            proc.wait()
    if proc.stderr:
        proc.stderr.close()


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1][-100:] if lines else "(no output)"


def _tail(text: str, n: int = 600) -> str:
    return " | ".join(ln.strip() for ln in text[-n:].splitlines() if ln.strip())
