"""Table tests of the SAN wrapper: what is accepted, what is refused, and what really runs.

Two levels: the validator imported as a module (fast, every row), and the wrapper run as a
subprocess exactly as sshd runs it (SSH_ORIGINAL_COMMAND, or `CONFIG -- ARGV` local mode) with
fake absolute zfs/tgtadm binaries that record their argv - so the tests see what is exec'd,
not what the wrapper thinks it exec'd.
"""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.helpers.fakesan import REPO, WRAPPER, FakeSan, load_wrapper

IQN = "iqn.2010-10.org.openstack:volume-0b6e8f2a-1111-4c2d-9a1b-3c4d5e6f7a8b"
V = "zol/cinder/volume-0b6e8f2a-1111-4c2d-9a1b-3c4d5e6f7a8b"
T = "zol/cinder-thick/volume-5f0e1d2c-2222-4b3a-8c9d-0e1f2a3b4c5d"
S = V + "@snapshot-9a8b7c6d-3333-4e5f-a6b7-c8d9e0f1a2b3"
SECRET = "Zq8Rk2Lm9Pw4Xt7Y"
S2 = V + "@zol-migrate-2"
# shaped like OpenZFS 2.1's receive_resume_token (version-checksum-size-zlib nvlist in hex)
TOKEN = "1-e604ea4bf-c0-789c636064000310a500c4ec50360710e72765a5262696" + "a" * 120
CLIENT = "192.0.2.10 40022 192.0.2.1 22"


W = load_wrapper()


@pytest.fixture
def fake(tmp_path) -> FakeSan:
    return FakeSan(tmp_path / "san")


@pytest.fixture
def cfg(fake):
    return W.load_config(str(fake.conf))


def run_wrapper(fake: FakeSan, command=None, local=None, env_extra=None, timeout=30):
    """Run the wrapper like sshd does (command string) or like systemd does (local argv)."""
    env = {"PATH": "/usr/bin:/bin", "SSH_CONNECTION": CLIENT}
    if command is not None:
        env["SSH_ORIGINAL_COMMAND"] = command
    env.update(env_extra or {})
    argv = [sys.executable, str(WRAPPER), str(fake.conf)]
    if local is not None:
        argv += ["--"] + list(local)
    return subprocess.run(argv, env=env, capture_output=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)


# Accepted: command line -> the argv the fake binary must receive (None = a narrow verb).
ACCEPT = [
    ("zfs version", ["zfs", "version"]),
    ("zfs list -H -p -o name,used,available -t volume,snapshot -r zol/cinder", None),
    ("zfs list -H -p -o name,volsize -t volume -d 1 zol/cinder-thick", None),
    ("zfs list -H -p -o name,type,origin -t volume,snapshot -r " + V, None),
    ("zfs list -H -p -o name " + V, None),
    ("zfs list -H -p -o name,zol:iqn " + S, None),
    ("zfs list -H -p -o name zol/cinder", None),
    ("zfs get -H -p -o name,property,value used,available,zol:iqn zol/cinder", None),
    ("zfs get -H -p -o name,property,value volsize " + S, None),
    ("zfs create -V 1073741824 " + V, None),
    ("zfs create -s -V 1073741824 " + V, None),
    ("zfs create -b 8192 -V 1073741824 " + T, None),
    ("zfs create -s -b 131072 -V 512 " + V, None),
    ("zfs destroy " + V, None),
    ("zfs destroy " + S, None),
    ("zfs destroy -d " + S, None),
    ("zfs snapshot " + S, None),
    ("zfs clone " + S + " zol/cinder/volume-new", None),
    ("zfs clone -o refreservation=none " + S + " zol/cinder-thick/volume-new", None),
    ("zfs promote " + V, None),
    ("zfs rename " + V + " zol/cinder/deleted-volume-x", None),
    ("zfs rename " + S + " " + V + "@deleted-snap", None),
    ("zfs rollback " + S, None),
    ("zfs set volsize=2147483648 " + V, None),
    ("zfs set refreservation=none " + V, None),
    ("zfs set refreservation=auto " + T, None),
    ("zfs set zol:deleted=1 " + V, None),
    ("zfs set zol:deleted= " + V, None),
    ("zfs inherit zol:chap " + V, None),
    ("zfs inherit zol:iqn " + V, None),
    # between two parents of one pool: driver-assisted migration
    ("zfs rename " + V + " zol/cinder-thick/x", None),
    # volume types (zol:* extra specs): allow-listed ZFS properties
    ("zfs create -o compression=zstd -o sync=always -V 1073741824 " + V, None),
    ("zfs create -s -o compression=lz4 -V 1073741824 " + V, None),
    ("zfs create -b 16384 -o checksum=sha256 -o compression=zstd-19 -o copies=2 "
     "-o dedup=sha256,verify -o logbias=throughput -o primarycache=metadata "
     "-o secondarycache=none -o sync=always -V 1073741824 " + V, None),
    ("zfs create -s -b 131072 -o compression=zstd-fast-1000 -V 1073741824 " + V, None),
    ("zfs clone -o compression=gzip-9 -o refreservation=none " + S + " " + T, None),
    ("zfs set compression=zstd-fast " + V, None),
    ("zfs set sync=disabled " + T, None),
    ("zfs inherit compression " + V, None),
    ("zfs snapshot " + S + " " + T + "@snapshot-2", None),
    ("zfs get -H -p -o name,property,value compression,sync,volblocksize,copies " + V, None),
    # streams through the Cinder host (migration, replication): send | receive
    ("zfs send -L -e -c " + S, None),
    ("zfs send -L -e -c -i " + S + " " + S2, None),
    ("zfs send -t " + TOKEN, None),
    ("zfs receive -s -u " + T, None),
    ("zfs receive -s -u -F " + V, None),
    ("zfs receive -A " + T, None),
    ("zfs get -H -p -o name,property,value receive_resume_token " + T, None),
    # quoting that shlex.join never produces but that still means the same argv
    ("'zfs' \"version\"", ["zfs", "version"]),
]

VERBS = [
    "zol-wrapper version",
    "zol-wrapper wait-zvol " + V,
    "zol-wrapper wait-zvol " + V + " 120",
    "zol-wrapper copy " + S + " zol/cinder-thick/volume-copy",
    "zol-wrapper copy-data " + V + " " + V + ".retype",
    "zol-wrapper export " + V + " " + IQN + " 1 0b6e8f2a-1111-4c2d-9a1b-3c4d5e6f7a8b thin wc-on "
    "chap ALL",
    "zol-wrapper export " + T + " " + IQN + " 999 x thick wc-off none 10.0.0.1,2001:db8::1",
    "zol-wrapper export " + V + " " + IQN + " 1 x thin-unmap wc-on none ALL",
    "zol-wrapper unexport " + IQN,
    "zol-wrapper resize-lun " + IQN,
    "zol-wrapper show-exports",
    "zol-wrapper restore-exports",
]

EXPORT = "zol-wrapper export " + V + " " + IQN + " 1 0b6e8f2a-1111 thin wc-on chap "

# Denied: command line -> a fragment the one-line reason must contain.
DENY = [
    # injection
    ("zfs destroy " + V + "; rm -rf /", "wrong number of arguments"),
    ("zfs destroy " + V + ";id", "invalid name component"),
    ("zfs list -H -p -o name $(id)", "outside the configured parents"),
    ("zfs list -H -p -o name zol/cinder/$(id)", "invalid name component"),
    ("zfs list -H -p -o name zol/cinder/`id`", "invalid name component"),
    ("zfs list -H -p -o name zol/cinder/x\nid", "control or non-ASCII"),
    ("zfs version\n", "control or non-ASCII"),
    ("zfs version\r", "control or non-ASCII"),
    ("zfs\tversion", "control or non-ASCII"),
    ("zfs version && id", "wrong number of arguments"),
    ("zfs version | sh", "wrong number of arguments"),
    ("zfs version > /etc/passwd", "wrong number of arguments"),
    ("zfs list -H -p -o name zol/cinder/*", "invalid name component"),
    ("zfs list -H -p -o name zol/cinder/vol?", "invalid name component"),
    ("zfs list -H -p -o name zol/cinder/[a-z]", "invalid name component"),
    ("zfs list -H -p -o name zol/cinder/~root", "invalid name component"),
    ("zfs 'list -H' -p -o name zol/cinder", "'zfs list -H' is not allowed"),
    ("zfs list -H -p -o name 'zol/cinder'x", "outside the configured parents"),
    ("zfs version 'unterminated", "cannot parse"),
    ("zfs version \\", "cannot parse"),
    # destroy flags
    ("zfs destroy -r " + V, "option '-r' is not allowed"),
    ("zfs destroy -R " + V, "option '-R' is not allowed"),
    ("zfs destroy -f " + V, "option '-f' is not allowed"),
    ("zfs destroy -r zol", "option '-r' is not allowed"),
    ("zfs destroy -rf " + V, "option '-rf' is not allowed"),
    ("zfs destroy -d " + V, "a snapshot DATASET@NAME was expected"),
    ("zfs destroy zol/cinder", "the parent dataset itself is not allowed"),
    ("zfs destroy zol", "outside the configured parents"),
    ("zfs rollback -r " + S, "wrong number of arguments"),
    # datasets outside the parent / traversal / nesting
    ("zfs destroy zol/other/volume-1", "outside the configured parents"),
    ("zfs destroy zol/cinderx/volume-1", "outside the configured parents"),
    ("zfs destroy zol/cinder/../other", "exactly one level below"),
    ("zfs destroy zol/cinder/..", "invalid name component"),
    ("zfs destroy zol/cinder/.hidden", "invalid name component"),
    ("zfs destroy ../zol/cinder/x", "outside the configured parents"),
    ("zfs destroy zol/cinder/a/b", "exactly one level below"),
    ("zfs destroy zol/cinder//a", "exactly one level below"),
    ("zfs destroy /zol/cinder/a", "outside the configured parents"),
    ("zfs create -V 1073741824 zol/cinder/a/b", "exactly one level below"),
    # volume types: allow-listed properties and values only, each once
    ("zfs create -o compression=zstd-20 -V 1073741824 " + V, "compression must be one of"),
    ("zfs create -o mountpoint=/etc -V 1073741824 " + V, "property 'mountpoint' is not"),
    ("zfs create -o zol:deleted=1 -V 1073741824 " + V, "is not allowed"),
    ("zfs create -o sync=always -o sync=disabled -V 1073741824 " + V, "given twice"),
    ("zfs create -o refreservation=auto -V 1073741824 " + V, "refreservation may only"),
    ("zfs create -o sync=always -V 1073741824 -o copies=2 " + V, "zfs create"),
    ("zfs create " + "-o sync=always " * 11 + "-V 1073741824 " + V, "zfs create"),
    ("zfs clone -o volblocksize=4096 " + S + " " + V + "x", "not allowed"),
    ("zfs set compression=gzip-10 " + V, "compression must be one of"),
    ("zfs set sharenfs=on " + V, "may not be set"),
    ("zfs set sync=always zol/cinder", "the parent dataset itself"),
    ("zfs inherit mountpoint " + V, "and the ZFS properties"),
    ("zfs inherit -r compression " + V, "zfs inherit"),
    ("zfs snapshot " + S + " " + S, "one snapshot per volume"),
    ("zfs snapshot " + S + " zol/other/v@x", "outside the configured parents"),
    ("zfs snapshot " + " ".join(f"{V}{i}@g" for i in range(17)), "zfs snapshot"),
    ("zol-wrapper copy-data " + V + " " + V, "same volume"),
    ("zol-wrapper copy-data " + S + " " + T, "snapshot/bookmark name"),
    ("zol-wrapper copy-data " + V + " zol/other/x", "outside the configured parents"),
    ("zfs rename " + S + " zol/cinder/other@x", "within its dataset"),
    ("zfs rename " + V + " " + S, "snapshot/bookmark name where a volume"),
    ("zol-wrapper copy " + S + " zol/elsewhere/x", "outside the configured parents"),
    ("zfs clone " + S + " tank/x", "outside the configured parents"),
    # @ and # where not expected, options smuggled as names
    ("zfs create -V 1073741824 " + S, "snapshot/bookmark name"),
    ("zfs promote " + V + "#bm", "snapshot/bookmark name"),
    ("zfs snapshot " + V, "a snapshot DATASET@NAME was expected"),
    ("zfs snapshot " + V + "@a@b", "a snapshot DATASET@NAME was expected"),
    ("zfs snapshot " + V + "@-r", "invalid snapshot name"),
    ("zfs snapshot " + V + "@", "invalid snapshot name"),
    ("zfs destroy -- " + V, "option '--' is not allowed"),
    ("zfs promote -f", "looks like an option"),
    ("zfs promote zol/cinder/-f", "invalid name component"),
    ("zfs list -H -p -o name -r", "looks like an option"),
    ("zfs list -H -p -o -r zol/cinder", "property '-r' is not allowed"),
    ("zfs set zol:deleted=x -r", "looks like an option"),
    # streams: exactly the six send/receive lines, nothing around them
    ("zfs send -R -e -c " + S, "option '-R' is not allowed"),
    ("zfs send -L -e -c -R " + S, "zfs send: wrong number of arguments"),
    ("zfs send -p -e -c " + S, "option '-p' is not allowed"),
    ("zfs send -L -e -w " + S, "option '-w' is not allowed"),
    ("zfs send -L -e -c -I " + S + " " + S2, "option '-I' is not allowed"),
    ("zfs send -L -e -c " + V, "a snapshot DATASET@NAME was expected"),
    ("zfs send -L -e -c " + V + "#bm", "a snapshot DATASET@NAME was expected"),
    ("zfs send -L -e -c zol/other/v@s", "outside the configured parents"),
    ("zfs send -L -e -c zol@s", "outside the configured parents"),
    ("zfs send -L -e -c -i " + S + " " + T + "@x", "of the same dataset"),
    ("zfs send -L -e -c -i " + S + " " + S, "of the same dataset"),
    ("zfs send -L -e -c -i @snap " + S, "outside the configured parents"),
    ("zfs send -L -e -c -i zol/other/v@a zol/other/v@b", "outside the configured parents"),
    ("zfs send -t " + TOKEN + ";id", "not a receive_resume_token"),
    ("zfs send -t '" + TOKEN + "$(id)'", "not a receive_resume_token"),
    ("zfs send -t '" + TOKEN + " x'", "not a receive_resume_token"),
    ("zfs send -t " + TOKEN.upper(), "not a receive_resume_token"),
    ("zfs send -t 1-e6-c0-" + "a" * 4097, "not a receive_resume_token"),
    ("zfs send -t -R", "not a receive_resume_token"),
    ("zfs send -t " + TOKEN + " " + S, "zfs send: wrong number of arguments"),
    ("zfs receive -F " + V, "option '-F' is not allowed"),
    ("zfs receive -F -s -u " + V, "option '-F' is not allowed"),
    ("zfs receive -s -F " + V, "option '-F' is not allowed"),
    ("zfs receive -s " + V, "option '-s' is not allowed"),
    ("zfs receive -u " + V, "option '-u' is not allowed"),
    ("zfs receive -s -u -d zol/cinder", "option '-d' is not allowed"),
    ("zfs receive -s -u -e zol/cinder", "option '-e' is not allowed"),
    ("zfs receive -s -u -o compression=off " + V, "zfs receive: wrong number of arguments"),
    ("zfs receive -s -u zol/other/x", "outside the configured parents"),
    ("zfs receive -s -u zol/cinder", "the parent dataset itself is not allowed"),
    ("zfs receive -s -u -F zol/cinder-thick", "the parent dataset itself is not allowed"),
    ("zfs receive -s -u -F zol/cinder/a/b", "exactly one level below"),
    ("zfs receive -s -u " + S, "snapshot/bookmark name where a volume"),
    ("zfs receive -A zol/cinder", "the parent dataset itself is not allowed"),
    ("zfs receive -A " + S, "snapshot/bookmark name where a volume"),
    ("zfs recv -s -u " + V, "'zfs recv' is not allowed"),
    # other programs and subcommands
    ("sh -c id", "program 'sh' is not allowed"),
    ("/bin/sh", "program '/bin/sh' is not allowed"),
    ("/usr/sbin/zfs version", "program '/usr/sbin/zfs' is not allowed"),
    ("zpool destroy zol", "program 'zpool' is not allowed"),
    ("zfs mount -a", "'zfs mount' is not allowed"),
    ("zfs send " + S, "zfs send: wrong number of arguments"),
    ("zfs recv " + V, "'zfs recv' is not allowed"),
    ("zfs allow everyone create zol/cinder", "'zfs allow' is not allowed"),
    ("zfs", "a subcommand is required"),
    ("scp -t /root/.ssh/authorized_keys", "program 'scp' is not allowed"),
    ("rsync --server . /", "program 'rsync' is not allowed"),
    ("internal-sftp", "program 'internal-sftp' is not allowed"),
    # protocol 1's raw tgtadm lines: every one is gone (TIDs reach foreign targets)
    ("tgtadm --lld iscsi --mode target --op show", "program 'tgtadm' is not allowed"),
    ("tgtadm --lld iscsi --mode account --op new --user u --password " + SECRET,
     "program 'tgtadm' is not allowed"),
    ("tgtadm --lld iscsi --mode target --op bind --tid 1 --initiator-address ALL",
     "program 'tgtadm' is not allowed"),
    ("zol-wrapper new-target " + IQN, "'zol-wrapper new-target' is not allowed"),
    # the v1 export properties may not be written any more (zol:chap held the secret)
    ("zfs set zol:chap=user-1:" + SECRET + " " + V, "may not be set"),
    ("zfs set zol:iqn=" + IQN + " " + V, "may not be set"),
    ("zfs set zol:initiators=ALL " + V, "may not be set"),
    ("zfs get -H -p -o name,property,value zol:chap " + V, "property 'zol:chap' is not allowed"),
    ("zol-wrapper", "a subcommand is required"),
    ("zol-wrapper shell", "'zol-wrapper shell' is not allowed"),
    ("zol-wrapper version extra", "wrong number of arguments"),
    # values
    ("zfs create -V 1000 " + V, "multiple of 512"),
    ("zfs create -V 0 " + V, "positive number"),
    ("zfs create -V -512 " + V, "positive number"),
    ("zfs create -V 1G " + V, "positive number"),
    ("zfs create -V 00512 " + V, "positive number"),
    ("zfs create -V 99999999999999999999 " + V, "positive number"),
    ("zfs create -b 512 -V 1073741824 " + V, "block size must be one of"),
    ("zfs create -V 1073741824 -s " + V, "option '-V' is not allowed here"),
    ("zfs set volsize=1000 " + V, "multiple of 512"),
    ("zfs set mountpoint=/ " + V, "may not be set"),
    ("zfs set refreservation=1G " + V, "none or auto"),
    ("zfs set zol:deleted=a;b " + V, "invalid value for zol:deleted"),
    ("zfs set zol:deleted=" + "a" * 513 + " " + V, "invalid value for zol:deleted"),
    ("zfs set zol:other=1 " + V, "may not be set"),
    ("zfs inherit volsize " + V, "only the zol:* properties"),
    ("zfs list -H -p -o name,mountpoint zol/cinder", "property 'mountpoint' is not allowed"),
    ("zfs list -H -p -o name, zol/cinder", "property '' is not allowed"),
    ("zfs list -H -p -o name -t bookmark -r zol/cinder", "type 'bookmark' is not allowed"),
    ("zfs list -H -p -o name -t volume -d 2 zol/cinder", "expected '1'"),
    ("zfs list -H -p -o name -t volume -d 1 " + V, "not a configured parent"),
    ("zfs get -H -p -o name,value used zol/cinder", "expected 'name,property,value'"),
    # export verbs: every argument checked
    ("zol-wrapper unexport iqn.2000-01.evil:x", "outside the configured prefix"),
    ("zol-wrapper resize-lun iqn.2010-10.org.openstack:UPPER", "invalid IQN suffix"),
    ("zol-wrapper unexport iqn.2010-10.org.openstackx:volume-1", "outside the configured prefix"),
    (EXPORT.replace(V, "zol/other/x") + "ALL", "outside the configured parents"),
    (EXPORT.replace(V, "zol/cinder/../x") + "ALL", "exactly one level below"),
    (EXPORT.replace(IQN, "iqn.2000-01.evil:x") + "ALL", "outside the configured prefix"),
    (EXPORT.replace(" 1 ", " 0 ") + "ALL", "LUN must be"),
    (EXPORT.replace("0b6e8f2a-1111", "a" * 37) + "ALL", "serial must be"),
    (EXPORT.replace("0b6e8f2a-1111", "-x") + "ALL", "serial must be"),
    (EXPORT.replace(" thin ", " sparse ") + "ALL", "must be one of thin, thin-unmap, thick"),
    (EXPORT.replace(" wc-on ", " on ") + "ALL", "must be one of wc-on, wc-off"),
    (EXPORT.replace(" chap ", " CHAP ") + "ALL", "must be one of chap, none"),
    (EXPORT + "10.0.0.0/8", "initiator must be"),
    (EXPORT + "all", "initiator must be"),
    (EXPORT + "010.0.0.1", "no leading zeros"),
    (EXPORT + "::ffff:1.2.3.04", "no leading zeros"),
    (EXPORT + "fe80::1%eth0", "initiator must be"),
    (EXPORT + "ALL,10.0.0.1", "ALL cannot be combined"),
    (EXPORT + "10.0.0.1,10.0.0.1", "distinct initiator addresses"),
    (EXPORT + ",".join(f"10.0.0.{i}" for i in range(1, 18)), "distinct initiator addresses"),
    (EXPORT + "ALL Zq8Rk2Lm9Pw4Xt7Y", "wrong number of arguments"),
    ("zol-wrapper wait-zvol " + V + " 121", "seconds must be"),
    ("zol-wrapper wait-zvol " + V + " 0", "seconds must be"),
    # very long arguments and commands
    ("zfs destroy zol/cinder/" + "a" * 201, "invalid name component"),
    ("zfs destroy zol/cinder/" + "a" * 9000, "command too long"),
    ("zfs " + "version " * 40, "too many arguments"),
    # non-ASCII look-alikes (\d and \w would accept these)
    ("zfs create -V \u0661\u0660\u0662\u0664 " + V, "control or non-ASCII"),
    ("zfs destroy zol/cinder/vol\u00e9", "control or non-ASCII"),
    ("zfs destroy zol/cinder/vol\u200b", "control or non-ASCII"),
]


@pytest.mark.parametrize("command,exec_argv", ACCEPT, ids=[c[:70] for c, _ in ACCEPT])
def test_validator_accepts(cfg, command, exec_argv):
    argv = W.split_command(command)
    rule, out = W.validate(cfg, argv)
    assert out == argv
    assert rule.program == argv[0]
    # what is accepted re-validates (the validator is a fixed point)
    assert W.validate(cfg, out)[1] == out


@pytest.mark.parametrize("command", VERBS)
def test_validator_accepts_verbs(cfg, command):
    rule, _ = W.validate(cfg, W.split_command(command))
    assert rule.program == "zol-wrapper"


@pytest.mark.parametrize("command,reason", DENY, ids=[repr(c)[:70] for c, _ in DENY])
def test_validator_denies(cfg, command, reason):
    with pytest.raises(W.Denied) as ei:
        W.validate(cfg, W.split_command(command))
    msg = str(ei.value)
    assert reason in msg, msg
    assert "\n" not in msg and len(msg) < 800
    assert SECRET not in msg


@pytest.mark.parametrize("argv,reason", [
    ([], "empty command"),
    (["zfs", "destroy", "zol/cinder/a\0b"], "control or non-ASCII"),
    (["zfs", "destroy", V + "\0"], "control or non-ASCII"),
    (["zfs", "destroy", "zol/cinder/a\udcff"], "control or non-ASCII"),   # non-UTF-8 argv
    (["zfs", "destroy", ""], "outside the configured parents"),
    (["", "version"], "program '' is not allowed"),
    (["zfs", "destroy", "zol/cinder/a b"], "invalid name component"),
    (["zfs", "destroy", "zol/cinder/a;reboot"], "invalid name component"),
    (["zol-wrapper", "show-exports", "--all"], "wrong number of arguments"),
])
def test_validator_denies_argv(cfg, argv, reason):
    with pytest.raises(W.Denied) as ei:
        W.validate(cfg, argv)
    assert reason in str(ei.value)


def test_nul_and_non_ascii_in_command_string(cfg):
    for raw in ("zfs version\0", "zfs\0version", "zfs version \x7f", "zfs v\u00e9rsion"):
        with pytest.raises(W.Denied, match="control or non-ASCII"):
            W.split_command(raw)


def test_secret_never_in_denial_reason(cfg):
    argv = ["zol-wrapper", "export", V, IQN, "1", "x", "thin", "wc-on", "chap", "ALL",
            "--password", SECRET]
    with pytest.raises(W.Denied) as ei:
        W.validate(cfg, argv)
    assert SECRET not in str(ei.value)
    argv = ["zfs", "set", "zol:chap=u:" + SECRET, "zol/other/x"]
    with pytest.raises(W.Denied) as ei:
        W.validate(cfg, argv)
    assert SECRET not in str(ei.value)
    assert W.redact_argv(argv)[2] == "zol:chap=<redacted>"
    assert SECRET not in W.redact_text("x --password " + SECRET + " zol:chap=u:" + SECRET)


def test_grammar_matches_protocol_doc():
    """Every command shape in doc/san-protocol.md's code blocks is a GRAMMAR line (and back)."""
    doc = (REPO / "doc" / "san-protocol.md").read_text()
    shapes = set()
    in_block = False
    for line in doc.splitlines():
        if line.startswith("```"):
            in_block = not in_block
            continue
        words = line.split("#")[0].split()
        if not in_block or words[:1] not in (["zfs"], ["tgtadm"], ["zol-wrapper"]):
            continue
        if words[1:2] == ["="]:          # the config example, not a command
            continue
        shapes.add(tuple(w for w in words if not w.startswith("[")))
        shapes.add(tuple(w.strip("[]") for w in words))   # optional arguments
    # The doc writes alternatives (DS|SNAP|PARENT, none|auto); the wrapper spells them as
    # tokens: compare the literal skeleton (program, subcommand or mode/op, arity).
    doc_keys = {(W.command_key(s), len(s)) for s in shapes}
    wrapper_keys = {(W.command_key(r.items), len(r.items)) for r in W.GRAMMAR}
    assert doc_keys == wrapper_keys


# ------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("override,reason", [
    ({"parents": None}, "missing parents"),
    ({"parents": "zol/cinder ../etc"}, "not a valid dataset name"),
    ({"parents": "zol/cinder zol/cinder/sub"}, "nested inside"),
    ({"parents": "zol/cinder zol/cinder"}, "duplicate"),
    ({"parents": "zol/cinder@snap"}, "not a valid dataset name"),
    ({"parents": "-r"}, "not a valid dataset name"),
    ({"iqn_prefix": "evil"}, "not an IQN prefix"),
    ({"zfs": "zfs"}, "plain absolute path"),
    ({"zfs": "/usr/sbin/../bin/sh"}, "plain absolute path"),
    ({"tgtadm": "/usr/sbin/tgtadm -x"}, "plain absolute path"),
    ({"log_file": None}, "missing log_file"),
    ({"syslog": "maybe"}, "syslog must be yes or no"),
    ({"shell": "/bin/sh"}, "unknown key"),
    ({"parents": "zol"}, "is a pool root"),
    ({"parents": "zol/cinder tank"}, "is a pool root"),
    ({"iqn_prefix": "iqn.2010-10.org.openstack:cinder"}, "name boundary"),
    ({"iqn_prefix": "iqn.2010-10.org.openstack"}, "name boundary"),
    ({"state_dir": "state"}, "plain absolute path"),
    ({"udevadm": "udevadm"}, "plain absolute path"),
    ({"tgtd_socket": "/run/../tgtd"}, "plain absolute path"),
])
def test_config_rejected(fake, override, reason):
    fake.write_conf(**override)
    with pytest.raises(W.ConfigError, match=reason):
        W.load_config(str(fake.conf))
    r = run_wrapper(fake, "zfs version")
    assert r.returncode == W.EXIT_CONFIG
    assert r.stderr.decode().startswith("zol-ssh-wrapper: bad config: ")
    assert fake.executed() == []


def test_config_file_problems(fake, tmp_path):
    for path, reason in ((str(tmp_path / "missing.conf"), "cannot read config"),
                         ("relative.conf", "must be absolute"),
                         (str(tmp_path), "not a regular file")):
        with pytest.raises(W.ConfigError, match=reason):
            W.load_config(path)
    fake.conf.chmod(0o666)
    with pytest.raises(W.ConfigError, match="world-writable"):
        W.load_config(str(fake.conf))
    fake.conf.chmod(0o644)
    fake.conf.write_text("[other]\nx = 1\n")
    with pytest.raises(W.ConfigError, match="exactly one \\[wrapper\\] section"):
        W.load_config(str(fake.conf))
    # [DEFAULT] would silently add keys to [wrapper]: refused, even when empty
    good = fake.conf_text()
    for extra in ("[DEFAULT]\nparents = zol\n", "[DEFAULT]\n"):
        fake.conf.write_text(extra + good)
        with pytest.raises(W.ConfigError, match="exactly one \\[wrapper\\] section"):
            W.load_config(str(fake.conf))
    # a symlink is not followed (O_NOFOLLOW): what was checked is what is read
    fake.conf.write_text(good)
    link = tmp_path / "link.conf"
    link.symlink_to(fake.conf)
    with pytest.raises(W.ConfigError, match="symlink is refused"):
        W.load_config(str(link))
    assert W.load_config(str(fake.conf)).parents == fake.parents
    fake.conf.write_text("not ini at all\n")
    with pytest.raises(W.ConfigError, match="cannot parse"):
        W.load_config(str(fake.conf))


def test_usage_errors(fake):
    r = subprocess.run([sys.executable, str(WRAPPER)], capture_output=True, env={}, check=False)
    assert r.returncode == W.EXIT_CONFIG
    r = subprocess.run([sys.executable, str(WRAPPER), str(fake.conf), "zfs", "version"],
                       capture_output=True, env={}, check=False)
    assert r.returncode == W.EXIT_CONFIG
    assert fake.executed() == []


# ------------------------------------------------------------------------------------------
# The real process: what reaches exec, exit codes, stderr, the log.
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command,exec_argv", ACCEPT, ids=[c[:70] for c, _ in ACCEPT])
def test_exec_accepted(fake, command, exec_argv):
    r = run_wrapper(fake, command)
    # 22: the fake tgtd has no such target (tgtadm's own answer passes through unchanged),
    # 1: zfs receive -A of a dataset without a partial receive (zfs's answer, likewise)
    assert r.returncode in (0, 22) or b"resumable receive state" in r.stderr, r.stderr
    expected = exec_argv or W.split_command(command)
    assert fake.executed()[-1] == expected
    log = fake.log_text()
    assert "client=192.0.2.10:40022 decision=allowed" in log
    assert SECRET not in log


@pytest.mark.parametrize("command,reason", DENY, ids=[repr(c)[:70] for c, _ in DENY])
def test_exec_denied(fake, command, reason):
    r = run_wrapper(fake, command)
    assert r.returncode == W.EXIT_DENIED
    err = r.stderr.decode()
    assert err.startswith("zol-ssh-wrapper: denied: ") and err.count("\n") == 1, err
    assert reason in err
    assert fake.executed() == []
    log = fake.log_text()
    assert "client=192.0.2.10:40022 decision=denied reason=" in log
    assert len(log.splitlines()) == 1


def test_local_mode_same_allow_list(fake):
    r = run_wrapper(fake, local=["zfs", "destroy", V])
    assert r.returncode == 0
    assert fake.executed() == [["zfs", "destroy", V]]
    r = run_wrapper(fake, local=["zfs", "destroy", "-r", V])
    assert r.returncode == W.EXIT_DENIED
    r = run_wrapper(fake, local=["zfs; id"])
    assert r.returncode == W.EXIT_DENIED
    # arguments are not re-split: one argv element with a space stays one (and is denied)
    r = run_wrapper(fake, local=["zfs destroy " + V])
    assert r.returncode == W.EXIT_DENIED
    r = run_wrapper(fake, local=[b"zfs", b"destroy", b"zol/cinder/\xff\xfe"])
    assert r.returncode == W.EXIT_DENIED
    assert fake.executed() == [["zfs", "destroy", V]]
    assert "client=local/192.0.2.10:40022 decision=denied" in fake.log_text()


def test_missing_and_empty_command(fake):
    for env_cmd in (None, "", "   "):
        r = run_wrapper(fake, env_cmd)
        assert r.returncode == W.EXIT_NO_COMMAND, (env_cmd, r.stderr)
        assert r.stderr.decode().startswith("zol-ssh-wrapper: denied: no command")
    r = subprocess.run([sys.executable, str(WRAPPER), str(fake.conf), "--"],
                       capture_output=True, env={}, check=False)
    assert r.returncode == W.EXIT_NO_COMMAND
    r = run_wrapper(fake, "''")
    assert r.returncode == W.EXIT_DENIED
    assert fake.executed() == []


def test_non_utf8_command(fake):
    raw = b"zfs destroy zol/cinder/\xff"
    r = run_wrapper(fake, None, env_extra={b"SSH_ORIGINAL_COMMAND": raw})
    assert r.returncode == W.EXIT_DENIED
    assert b"non-ASCII" in r.stderr
    assert fake.executed() == []


def test_binary_missing_is_exit_67(fake):
    fake.write_conf(zfs=str(fake.root / "bin" / "nonexistent"))
    r = run_wrapper(fake, "zfs version")
    assert r.returncode == W.EXIT_EXEC
    assert r.stderr.decode().startswith("zol-ssh-wrapper: cannot execute ")
    assert "decision=failed" in fake.log_text()


def test_exit_code_passes_through(fake):
    fake.set_zfs_exit(1)
    r = run_wrapper(fake, "zfs list -H -p -o name " + V)
    assert r.returncode == 1
    fake.set_zfs_exit(0)


def test_child_environment_is_clean(fake):
    """SSH_ORIGINAL_COMMAND and the client's variables do not reach zfs/tgtadm."""
    env_dump = fake.root / "bin" / "zfs"
    env_dump.write_text(f"#!/bin/sh\n/usr/bin/env > {fake.root}/env.txt\n")
    r = run_wrapper(fake, "zfs version", env_extra={"LD_PRELOAD": "/tmp/evil.so"})
    assert r.returncode == 0
    env = dict(line.split("=", 1) for line in (fake.root / "env.txt").read_text().splitlines())
    assert set(env) <= {"PATH", "LC_ALL", "PWD", "SHLVL", "_"}
    assert env["LC_ALL"] == "C"


# ------------------------------------------------------------------------------------------
# Narrow verbs
# ------------------------------------------------------------------------------------------

def test_version(fake):
    r = run_wrapper(fake, "zol-wrapper version")
    assert r.returncode == 0
    assert r.stdout.decode() == f"zol-ssh-wrapper {W.VERSION} protocol {W.PROTOCOL}\n"


def test_wait_zvol(fake):
    fake.add_zvol(V)
    t0 = time.monotonic()
    assert run_wrapper(fake, "zol-wrapper wait-zvol " + V).returncode == 0
    assert time.monotonic() - t0 < 5
    t0 = time.monotonic()
    r = run_wrapper(fake, "zol-wrapper wait-zvol zol/cinder/absent 1")
    assert r.returncode == 1
    assert 1.0 <= time.monotonic() - t0 < 10
    assert b"/dev/zvol/zol/cinder/absent did not appear within 1 s" in r.stderr


def test_wait_zvol_sees_late_link(fake):
    p = subprocess.Popen([sys.executable, str(WRAPPER), str(fake.conf), "--", "zol-wrapper",
                          "wait-zvol", V, "20"])
    time.sleep(0.5)
    assert p.poll() is None
    fake.add_zvol(V)
    assert p.wait(timeout=10) == 0


def test_copy_pipes_send_into_recv(fake):
    dst = "zol/cinder-thick/volume-copy"
    r = run_wrapper(fake, "zol-wrapper copy " + S + " " + dst)
    assert r.returncode == 0, r.stderr
    assert sorted(fake.executed()) == [["zfs", "recv", dst], ["zfs", "send", S]]
    expected = len(b"STREAM:" + S.encode() + b"\n" * 1000)
    assert (fake.root / "recv.log").read_text() == f"{dst} {expected}\n"


def test_copy_failure_is_68(fake):
    fake.set_zfs_exit(1)
    r = run_wrapper(fake, "zol-wrapper copy " + S + " zol/cinder/volume-copy")
    assert r.returncode == W.EXIT_VERB
    assert b"copy " in r.stderr and b"failed" in r.stderr


def test_every_decision_goes_to_syslog(fake, monkeypatch):
    """syslog (facility auth) gets the same one-line decisions as the log file, redacted."""
    fake.write_conf(syslog=True)
    opened, sent = [], []
    monkeypatch.setattr(W._syslog, "openlog", lambda *a: opened.append(a))
    monkeypatch.setattr(W._syslog, "syslog", lambda prio, msg: sent.append((prio, msg)))
    monkeypatch.setenv("SSH_CONNECTION", CLIENT)
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", "zfs destroy -r zol/cinder")
    assert W.main([str(fake.conf)]) == W.EXIT_DENIED
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", "zol-wrapper version")
    assert W.main([str(fake.conf)]) == 0
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", "zol-wrapper export x --password " + SECRET)
    assert W.main([str(fake.conf)]) == W.EXIT_DENIED
    assert opened and all(o == ("zol-ssh-wrapper", W._syslog.LOG_PID, W._syslog.LOG_AUTH)
                          for o in opened)
    assert [p for p, _ in sent] == [W._syslog.LOG_WARNING, W._syslog.LOG_INFO,
                                    W._syslog.LOG_WARNING]
    assert sent[0][1].startswith("client=192.0.2.10:40022 decision=denied reason=zfs destroy")
    assert sent[1][1] == "client=192.0.2.10:40022 decision=allowed argv=zol-wrapper version"
    assert SECRET not in " ".join(m for _, m in sent)
    assert [line.split(": ", 1)[1] for line in fake.log_text().splitlines()] \
        == [m for _, m in sent]
