"""Install backend 'libvirt': the real Debian installer, unattended, in a libvirt guest.

The netboot kernel/initrd (package debian-installer-12-netboot-amd64) boot as a libvirt domain
(libvirt-python) on a fresh qcow2; the preseed (rendered from templates/preseed.cfg.in) and the
cloud-profile script are appended to the initrd as one more cpio archive, so no web server and
no network boot are needed.  The serial console goes to a file that we read for progress and
errors.  The domain type is kvm only when a probe guest really boots under KVM (on these
machines /dev/kvm exists but a stock kernel hangs), qemu (TCG) otherwise.

The installer downloads its own components (.udebs) from the mirror.  A mirror that lacks them
(404) stops the installer at "Download installer components"; we detect that from the console,
name the missing download (from the console, confirmed by probing the mirror's udeb index), and
abort cleanly: domain destroyed and undefined, disk deleted, qemu gone.
"""
from __future__ import annotations

import gzip
import io
import json
import logging
import lzma
import os
import re
import string
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from xml.sax.saxutils import escape

from image_builder import customize, exception, opts, run

LOG = logging.getLogger(__name__)

TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "preseed.cfg.in"
# Installer components fetched from the mirror right after the mirror check (anna); these are
# the ones this machine's mirror was measured to 404 (DESIGN.md s.7).
KEY_UDEBS = ("apt-mirror-setup", "debootstrap-udeb", "partman-ext3", "grub-installer",
             "base-installer", "pkgsel", "finish-install")
# Console text -> phase name (the text frontend prints these titles as it goes).
PHASES = [
    ("Detecting network hardware", "network hardware"),
    ("Configuring the network", "network"),
    ("Choose a mirror", "mirror"),
    ("Checking the Debian archive mirror", "mirror check"),
    ("Download installer components", "download installer components"),
    ("Loading additional components", "loading components"),
    ("Retrieving ", "downloading"),
    ("Partition disks", "partitioning"),
    ("Installing the base system", "base system"),
    ("Configuring apt", "apt"),
    ("Select and install software", "software"),
    ("Installing GRUB", "grub"),
    ("Finishing the installation", "finishing"),
]
# The newt UI over the serial console: escape sequences and line-drawing charset switches.
ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|\([0B])|\x0f|\x0e")
# GNU screen's status line (window list + clock) is redrawn every minute: not progress.
SCREEN_STATUS = re.compile(r"\[[^\[\]]*\]\[\s*\w{3} +\d+ +\d\d:\d\d\s*\]")
RETRIEVING = re.compile(r"Retrieving (?P<component>[a-z0-9][\w.+-]*)")
MIRROR_FAILURES = [
    re.compile(r"installer failed to download a file from the mirror", re.IGNORECASE),
    re.compile(r"Downloading a file failed", re.IGNORECASE),
    re.compile(r"Loading (?P<component>[\w.+-]+) failed", re.IGNORECASE),
    re.compile(r"Failed to load installer component", re.IGNORECASE),
    re.compile(r"Bad archive mirror", re.IGNORECASE),
    re.compile(r"(?P<component>[\w.+-]+)\S*\.udeb.*(404|Not Found)", re.IGNORECASE),
    re.compile(r"Retrieving (?P<component>[\w.+-]+) failed", re.IGNORECASE),
]
VALID_VALUE = re.compile(r"[A-Za-z0-9._,+:@/-]*")


# ----------------------------------------------------------------------------- pure logic

def render_preseed(*, release: str, mirror: str, hostname: str, locale: str,
                   kernel_package: str, packages: list[str],
                   security_mirror: str = "http://deb.debian.org/debian-security",
                   updates: bool = True, template: str | None = None) -> str:
    """The preseed text; every value is validated (a preseed line cannot be quoted).

    The installer adds RELEASE-security (from ``security_mirror``) and RELEASE-updates and runs
    a safe-upgrade, so the installed system carries the same fixes as a chroot build.
    """
    url = urllib.parse.urlsplit(mirror)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise exception.ConfigError(reason="mirror must be an http(s) URL: %r" % mirror)
    services = []
    sec_host, sec_path = "", ""
    if security_mirror:
        sec = urllib.parse.urlsplit(security_mirror)
        if sec.scheme not in ("http", "https") or not sec.hostname:
            raise exception.ConfigError(reason="security_mirror must be an http(s) URL or "
                                        "empty: %r" % security_mirror)
        services.append("security")
        sec_host, sec_path = sec.netloc, sec.path or "/"
    if updates:
        services.append("updates")
    values = {"release": release, "hostname": hostname, "locale": locale,
              "kernel_package": kernel_package, "packages": " ".join(packages),
              "mirror_protocol": url.scheme, "mirror_host": url.netloc,
              "mirror_directory": url.path or "/", "services": ",".join(services),
              "security_host": sec_host, "security_path": sec_path}
    for key, value in values.items():
        if key != "packages" and not VALID_VALUE.fullmatch(value):
            raise exception.ConfigError(reason="invalid %s for the preseed: %r" % (key, value))
    for pkg in packages:
        if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", pkg):
            raise exception.ConfigError(reason="invalid package name %r" % pkg)
    text = template if template is not None else TEMPLATE.read_text()
    return string.Template(text).substitute(values)


def late_script(profile: customize.Profile) -> str:
    """The cloud profile as the sh script the installer runs in the target (late_command):
    rendered from the same ``customize.steps`` the chroot backend applies."""
    return customize.render_shell(customize.steps(profile),
                                  "zol-image cloud profile (preseed late_command)")


def cpio_newc(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A cpio 'newc' archive (what the kernel unpacks from an initrd) with ``files``.

    Appending a second gzip'd archive to the installer initrd adds preseed.cfg to its root.
    """
    out = io.BytesIO()

    def entry(name: str, data: bytes, mode: int, ino: int) -> None:
        name_b = name.encode() + b"\0"
        header = "070701" + "".join("%08X" % v for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name_b), 0))
        out.write(header.encode() + name_b)
        out.write(b"\0" * ((4 - (110 + len(name_b)) % 4) % 4))
        out.write(data)
        out.write(b"\0" * ((4 - len(data) % 4) % 4))

    for ino, (name, (data, mode)) in enumerate(sorted(files.items()), start=1):
        entry(name, data, 0o100000 | mode, ino)
    entry("TRAILER!!!", b"", 0, 0)
    return out.getvalue()


def domain_xml(*, name: str, domain_type: str, memory: int, vcpus: int, kernel: str,
               initrd: str, cmdline: str, disk: str, console: str,
               run_as_root: bool = False) -> str:
    """The installer guest (pure; unit tested).  on_reboot=destroy: the installer's final
    power-off/reboot ends the domain, which is how we know it finished."""
    cpu = "<cpu mode='host-passthrough'/>" if domain_type == "kvm" else \
        "<cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>"
    return """<domain type='%(type)s'>
  <name>%(name)s</name>
  <memory unit='MiB'>%(memory)d</memory>
  <vcpu>%(vcpus)d</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>%(kernel)s</kernel>
    <initrd>%(initrd)s</initrd>
    <cmdline>%(cmdline)s</cmdline>
  </os>
  <features><acpi/></features>
  %(cpu)s
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  %(seclabel)s
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='unsafe'/>
      <source file='%(disk)s'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='%(console)s'/>
      <target port='0'/>
    </serial>
    <memballoon model='virtio'/>
  </devices>
</domain>
""" % {"type": domain_type, "name": escape(name), "memory": memory, "vcpus": vcpus,
       "kernel": escape(kernel), "initrd": escape(initrd), "cmdline": escape(cmdline),
       "disk": escape(disk), "console": escape(console), "cpu": cpu,
       "seclabel": "<seclabel type='static' model='dac' relabel='no'><label>+0:+0</label>"
                   "</seclabel>" if run_as_root else ""}


def installer_cmdline(locale: str = "en_US.UTF-8") -> str:
    return ("auto=true priority=critical preseed/file=/preseed.cfg locale=%s "
            "keymap=us console=ttyS0,115200n8 --- console=ttyS0,115200n8"
            % locale)


def phase_of(text: str) -> str | None:
    """The latest installer phase visible in the console text."""
    best, where = None, -1
    for needle, phase in PHASES:
        pos = text.rfind(needle)
        if pos > where:
            best, where = phase, pos
    return best


def mirror_failure(text: str) -> str | None:
    """The component the installer failed to download, or '' if unnamed; None if no failure."""
    for pattern in MIRROR_FAILURES:
        matches = list(pattern.finditer(text))
        if matches:
            named = matches[-1].groupdict().get("component")
            if named:
                return named
            # "[!!] Download installer components" names no file: the last "Retrieving X"
            # progress line before the error is the download that failed.
            retrieving = list(RETRIEVING.finditer(text, 0, matches[-1].start()))
            return retrieving[-1].group("component") if retrieving else ""
    return None


def clean_console(raw: str) -> str:
    """Console text without escape sequences, so UI titles and messages can be matched."""
    return ANSI.sub(" ", raw)


def parse_udeb_index(text: str) -> dict[str, str]:
    """package -> Filename from a debian-installer Packages index."""
    found, pkg = {}, None
    for line in text.splitlines():
        if line.startswith("Package: "):
            pkg = line[9:].strip()
        elif line.startswith("Filename: ") and pkg:
            found[pkg] = line[10:].strip()
    return found


# ----------------------------------------------------------------------------- probes

def probe_mirror(mirror: str, release: str, arch: str = "amd64",
                 udebs: tuple[str, ...] = KEY_UDEBS, timeout: float = 20) -> dict:
    """Can this mirror serve the installer?  Fetch the udeb index, HEAD the key udebs.

    Returns {"ok": bool, "missing": [(package, url, reason)], "index": url}.
    """
    base = mirror.rstrip("/")
    index_url = None
    text = None
    for suffix, opener in (("Packages.xz", lzma.decompress), ("Packages.gz", gzip.decompress)):
        url = "%s/dists/%s/main/debian-installer/binary-%s/%s" % (base, release, arch, suffix)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                text = opener(r.read()).decode("utf-8", "replace")
                index_url = url
                break
        except (urllib.error.URLError, OSError, lzma.LZMAError) as exc:
            index_url = "%s (%s)" % (url, exc)
    if text is None:
        return {"ok": False, "index": index_url,
                "missing": [("debian-installer index", index_url, "unreachable")]}
    files = parse_udeb_index(text)
    missing = []
    for pkg in udebs:
        if pkg not in files:
            missing.append((pkg, "", "not in the index"))
            continue
        url = "%s/%s" % (base, files[pkg])
        req = urllib.request.Request(url, method="HEAD")
        try:
            with urllib.request.urlopen(req, timeout=timeout):
                pass
        except urllib.error.HTTPError as exc:
            missing.append((pkg, url, "HTTP %d" % exc.code))
        except (urllib.error.URLError, OSError) as exc:
            missing.append((pkg, url, str(exc)))
    return {"ok": not missing, "index": index_url, "missing": missing}


_KVM_RESULT: dict[str, object] = {}
# Whether KVM can run a guest does not change until the host reboots: one probe per boot (25 s
# when it hangs) instead of one per build process.
KVM_CACHE = Path("/run/zol-openstack/kvm-probe.json")


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def cached_kvm_probe(cache: Path = KVM_CACHE) -> dict | None:
    """The probe result of this host boot, if one was recorded."""
    try:
        data = json.loads(cache.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not _boot_id() or data.get("boot_id") != _boot_id():
        return None
    return data.get("result") if isinstance(data.get("result"), dict) else None


def record_kvm_probe(result: dict, cache: Path = KVM_CACHE) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.%d" % os.getpid())
        tmp.write_text(json.dumps({"boot_id": _boot_id(), "result": result}))
        os.replace(tmp, cache)
    except OSError as exc:
        LOG.debug("KVM probe not cached (%s): %s", cache, exc)


def probe_kvm(kernel: str, timeout: float = 25) -> dict:
    """Does KVM really boot a guest here?  Boot ``kernel`` with no root under -accel kvm and
    wait for its panic message (it reaches it in ~1 s with working KVM).  Cached per process.
    """
    if _KVM_RESULT:
        return dict(_KVM_RESULT)
    result: dict[str, object]
    cached = cached_kvm_probe() if os.path.exists("/dev/kvm") else None
    if cached is not None:
        LOG.info("KVM probe (cached for this boot in %s): %s", KVM_CACHE, cached.get("reason"))
        _KVM_RESULT.update(cached)
        return dict(cached)
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        result = {"ok": False, "reason": "/dev/kvm is not accessible"}
    else:
        argv = ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256",
                "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
                "-no-reboot", "-kernel", kernel,
                "-append", "console=ttyS0 panic=-1 root=/dev/zol-none"]
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
            text = out.decode(errors="replace")
            booted = "Kernel panic" in text or "VFS: Unable to mount root" in text
            result = {"ok": booted, "seconds": round(time.monotonic() - start, 1),
                      "reason": "kernel booted to its panic under KVM" if booted else
                      "qemu -accel kvm exited %s without booting: %s"
                      % (proc.returncode, (text.strip().splitlines() or [""])[-1][-200:])}
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.communicate()
            result = {"ok": False, "reason": "a kernel under KVM did not boot within %.0f s "
                                             "(hangs: KVM unusable here)" % timeout}
    LOG.info("KVM probe: %s", result["reason"])
    _KVM_RESULT.update(result)
    if os.path.exists("/dev/kvm"):
        record_kvm_probe(dict(result))
    return result


def choose_domain_type(requested: str, kernel: str) -> tuple[str, dict]:
    if requested in ("kvm", "qemu"):
        return requested, {"reason": "requested"}
    probe = probe_kvm(kernel)
    return ("kvm" if probe["ok"] else "qemu"), probe


# ----------------------------------------------------------------------------- the install

class InstallerDomain:
    """One installer guest; ``abort()`` is idempotent and leaves nothing behind."""

    def __init__(self, conn, name: str, workdir: Path) -> None:
        self.conn = conn
        self.name = name
        self.workdir = workdir
        self.dom = None
        self.pid: int | None = None

    def start(self, xml: str) -> None:
        import libvirt
        self.dom = self.conn.defineXML(xml)
        try:
            self.dom.create()
        except libvirt.libvirtError:
            self.abort()
            raise
        pidfile = Path("/run/libvirt/qemu/%s.pid" % self.name)
        if pidfile.exists():
            self.pid = int(pidfile.read_text().strip() or 0) or None

    def running(self) -> bool:
        import libvirt
        try:
            return bool(self.dom and self.dom.isActive())
        except libvirt.libvirtError:
            return False

    def abort(self) -> None:
        import libvirt
        if self.dom is None:
            return
        try:
            if self.dom.isActive():
                self.dom.destroy()
        except libvirt.libvirtError as exc:
            LOG.warning("destroy %s: %s", self.name, exc)
        try:
            self.dom.undefine()
        except libvirt.libvirtError as exc:
            LOG.warning("undefine %s: %s", self.name, exc)
        self.dom = None
        if self.pid:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and Path("/proc/%d" % self.pid).exists():
                time.sleep(0.2)
            if Path("/proc/%d" % self.pid).exists():
                raise exception.InstallError(reason="qemu pid %d survived domain destroy"
                                             % self.pid)


def installer_files(options: dict, release: str) -> tuple[str, str]:
    """The netboot kernel and initrd of the release being installed ({version} substituted).

    Each release needs its own installer (its udebs must match the mirror's).  bookworm's is
    the Debian package debian-installer-12-netboot-amd64; trixie's is
    debian-installer-13-netboot-amd64, in trixie main only (the mirror's
    dists/trixie/main/installer-amd64/current/images/ tree lists it but serves 404 here; the
    pool .deb is served): extract it with dpkg-deb -x.
    """
    version = opts.RELEASE_VERSIONS[release]
    files = []
    for key in ("installer_kernel", "installer_initrd"):
        path = (options.get(key) or "").replace("{version}", version)
        if not os.path.exists(path):
            raise exception.InstallError(
                reason="[libvirt] %s = %s is missing: the %s installer comes from the Debian "
                       "package debian-installer-%s-netboot-amd64 (%s main); install it, or "
                       "'apt-get download' it from %s and 'dpkg-deb -x' it to /, or point "
                       "%s at its netboot files" % (key, path or "''", release, version,
                                                    release, release, key))
        files.append(path)
    return files[0], files[1]


def install(*, workdir: Path, release: str, mirror: str, packages: list[str],
            profile: customize.Profile, disk_mb: int, timeout: float, options: dict,
            progress: Callable[[str], None] | None = None,
            on_started: Callable[[], None] | None = None,
            stall_after_mirror: float = 240, security_mirror: str = "",
            updates: bool = True) -> dict:
    """Run the installer into ``workdir/disk.qcow2``; raise MirrorIncomplete at the wall."""
    import libvirt
    progress = progress or (lambda msg: LOG.info("  %s", msg))
    kernel, initrd = installer_files(options, release)
    packages = sorted(set(packages) | set(customize.packages_for(profile)))
    kernel_package = next((p for p in packages if p.startswith("linux-image-")),
                          "linux-image-amd64")
    template = None
    if options.get("preseed_template"):
        template = Path(options["preseed_template"]).read_text()
    preseed = render_preseed(release=release, mirror=mirror, hostname=profile.hostname,
                             locale=(profile.locales or ["en_US.UTF-8"])[0],
                             kernel_package=kernel_package,
                             packages=[p for p in packages if p != kernel_package],
                             security_mirror=security_mirror, updates=updates,
                             template=template)
    (workdir / "preseed.cfg").write_text(preseed)
    late = late_script(profile)
    extra = gzip.compress(cpio_newc({"preseed.cfg": (preseed.encode(), 0o644),
                                     "zol-late.sh": (late.encode(), 0o755)}))
    guest_initrd = workdir / "installer-initrd.gz"
    guest_initrd.write_bytes(Path(initrd).read_bytes() + extra)
    disk = workdir / "disk.qcow2"
    run.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "%dM" % disk_mb])
    console = workdir / "console.log"
    console.write_text("")
    domain_type, probe = choose_domain_type(options.get("domain_type", "auto"), kernel)
    name = "zol-image-%s" % uuid.uuid4().hex[:12]
    xml = domain_xml(name=name, domain_type=domain_type, memory=int(options.get("memory", 1024)),
                     vcpus=int(options.get("vcpus", 2)), kernel=kernel,
                     initrd=str(guest_initrd), cmdline=installer_cmdline(), disk=str(disk),
                     console=str(console), run_as_root=bool(options.get("run_as_root", True)))
    (workdir / "domain.xml").write_text(xml)
    try:
        conn = libvirt.open(options.get("uri", "qemu:///system"))
    except libvirt.libvirtError as exc:
        raise exception.InstallError(reason="cannot connect to libvirt at %s (is libvirtd "
                                     "running?): %s" % (options.get("uri"), exc)) from exc
    guest = InstallerDomain(conn, name, workdir)
    start = time.monotonic()
    try:
        guest.start(xml)
        LOG.info("installer domain %s started (type %s; %s)", name, domain_type,
                 probe.get("reason"))
        if on_started:
            on_started()
        result = watch(guest, console, timeout=timeout, mirror=mirror, release=release,
                       progress=progress, stall_after_mirror=stall_after_mirror)
    except BaseException:
        guest.abort()
        guest_initrd.unlink(missing_ok=True)
        disk.unlink(missing_ok=True)
        raise
    finally:
        conn.close()
    guest.abort()
    guest_initrd.unlink(missing_ok=True)
    result.update({"domain_type": domain_type, "kvm_probe": probe,
                   "install_seconds": round(time.monotonic() - start, 1),
                   "disk": str(disk)})
    return result


def watch(guest: InstallerDomain, console: Path, *, timeout: float, mirror: str,
          release: str, progress: Callable[[str], None],
          stall_after_mirror: float) -> dict:
    """Follow the console until the guest powers off (success), fails, or times out."""
    start = time.monotonic()
    phase = None
    last_change = start
    last_size = 0
    phases: dict[str, float] = {}
    while True:
        raw = console.read_text(errors="replace") if console.exists() else ""
        text = clean_console(raw)
        now = time.monotonic()
        size = len(re.sub(r"\s+", "", SCREEN_STATUS.sub("", text)))
        if size != last_size:
            last_size, last_change = size, now
        new_phase = phase_of(text)
        if new_phase and new_phase != phase:
            phase = new_phase
            phases.setdefault(phase, round(now - start, 1))
            progress("installer: %s (%.0f s)" % (phase, now - start))
        component = mirror_failure(text)
        stalled = phase in ("mirror check", "download installer components", "downloading",
                            "loading components") and now - last_change > stall_after_mirror
        if component is not None or stalled:
            raise mirror_error(mirror, release, component, phases, text,
                               "stalled for %.0f s" % (now - last_change) if stalled else
                               "console reports a failed component download")
        if not guest.running():
            if phase == "finishing" or "Installation complete" in text or \
                    "reboot: Power down" in text:
                return {"phases": phases}
            raise exception.InstallError(reason="installer guest stopped during %s; console "
                                         "tail: %s" % (phase, _tail(text)))
        if now - start > timeout:
            raise exception.InstallTimeout(timeout=timeout, last=_tail(text, 200))
        time.sleep(1.0)


def mirror_error(mirror: str, release: str, component: str | None, phases: dict,
                 text: str, how: str) -> exception.MirrorIncomplete:
    probe = probe_mirror(mirror, release)
    missing = probe["missing"]
    if component:
        hit = [m for m in missing if m[0] == component]
        download = "%s (%s)" % (component, hit[0][1]) if hit and hit[0][1] else component
    elif missing:
        download = "%s (%s)" % (missing[0][0], missing[0][1] or missing[0][2])
    else:
        download = "unknown"
    detail = "%s after %s; mirror probe: %s" % (
        how, ", ".join("%s@%ss" % kv for kv in phases.items()),
        "; ".join("%s %s" % (m[0], m[2]) for m in missing) or "all key udebs present")
    err = exception.MirrorIncomplete(mirror=mirror, download=download, detail=detail)
    err.phases = phases                      # type: ignore[attr-defined]
    err.probe = probe                        # type: ignore[attr-defined]
    return err


def _tail(text: str, n: int = 400) -> str:
    clean = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    return " | ".join(ln.strip() for ln in clean[-n:].splitlines() if ln.strip())
