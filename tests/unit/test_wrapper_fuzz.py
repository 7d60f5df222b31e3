"""Property test: nothing outside doc/san-protocol.md's grammar ever reaches exec.

The oracle below is written independently of the wrapper: one anchored regex per grammar line of
the doc (alternatives, optional flags and the "same parent"/"same dataset" rules as regex
groups and back-references), plus small post-checks the doc states in words (multiple of 512,
wait-zvol maximum, IPv6 via inet_pton).  Hypothesis drives a generate-and-mutate loop: every
example is a seed for a generator of valid command lines and many mutations of them (injection
characters, smuggled options, type-confused tokens, quoting, truncation, splicing, non-ASCII);
more than 100,000 command lines per run in total.  Properties:

* whatever the wrapper accepts is a member of the grammar (oracle) and re-validates to itself;
* on argv lists (local mode), wrapper and oracle agree exactly, both ways;
* through the real entry point main(), os.execve and the verbs only ever see oracle-accepted argv.
"""
from __future__ import annotations

import random
import re
import shlex
import socket
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.fakesan import REPO, FakeSan, load_wrapper

W = load_wrapper()
PARENTS = ("zol/cinder", "zol/cinder-thick")
PREFIX = "iqn.2010-10.org.openstack:"

# ------------------------------------------------------------------------------------------
# The oracle, transcribed from doc/san-protocol.md.
# ------------------------------------------------------------------------------------------
_P = "(?:" + "|".join(re.escape(p) for p in PARENTS) + ")"
_C = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}"
_DS = _P + "/" + _C
_SNAP = _DS + "@" + _C
_SIZE = r"(?P<size>[1-9][0-9]{0,18})"
_BS = "(?:4096|8192|16384|32768|65536|131072)"
_LUN = r"[1-9][0-9]{0,2}"
_IQN = re.escape(PREFIX) + r"[a-z0-9][a-z0-9.:-]{0,199}"
_USER = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}"
_SECRET = r"[A-Za-z0-9]{12,64}"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_INI = r"(?:ALL|" + _OCTET + r"(?:\." + _OCTET + r"){3}|(?P<v6>[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*))"


def _doc_zprops() -> dict:
    """The ZPROP table of doc/san-protocol.md (property -> allowed values), read from the doc."""
    text = (REPO / "doc" / "san-protocol.md").read_text()
    rows = {}
    for line in text.split("### ZPROP:", 1)[1].split("\n#", 1)[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[1].startswith("`"):
            rows[cells[0]] = cells[1].strip("`").split()
    return rows


ZPROPS = _doc_zprops()
_ZP = "(?:" + "|".join(re.escape(f"{k}={v}") for k, vs in ZPROPS.items() for v in vs) + ")"
_ZPC = "(?:" + _ZP[3:-1] + "|refreservation=none)"       # create/clone: + a thin clone
_ZPN = "(?:" + "|".join(ZPROPS) + ")"
_PROPNAMES = [*ZPROPS,
    "name", "type", "volsize", "used", "available", "referenced", "volblocksize",
    "refreservation", "reservation", "origin", "clones", "creation", "guid", "written",
    "usedbysnapshots", "usedbydataset", "usedbychildren", "compressratio", "logicalused",
    "logicalreferenced", "defer_destroy", "userrefs", "zol:iqn", "zol:lun",
    "zol:initiators", "zol:deleted", "receive_resume_token"]
_PROP1 = "(?:" + "|".join(re.escape(p) for p in _PROPNAMES) + ")"
_PROPS = _PROP1 + "(?:," + _PROP1 + ")*"
_TYPES = "(?:volume|snapshot|filesystem)(?:,(?:volume|snapshot|filesystem))*"
_UPROP = "(?:zol:iqn|zol:lun|zol:chap|zol:initiators|zol:deleted|" + _ZPN[3:-1] + ")"
_SECS = r"(?:[1-9]|[1-9][0-9]|1[01][0-9]|120)"
_SERIAL = r"[A-Za-z0-9][A-Za-z0-9-]{0,35}"
_TOKEN = r"[1-9][0-9]{0,3}-[0-9a-f]{1,16}-[0-9a-f]{1,16}-[0-9a-f]{16,4096}"
_INI1 = _INI.replace("?P<v6>", "")
_INIS = f"(?:ALL|(?P<inis>{_INI1}(?:,{_INI1}){{0,15}}))"

ORACLE_LINES = [
    "zfs version",
    f"zfs list -H -p -o {_PROPS} -t {_TYPES} -r (?:{_P}|{_DS})",
    f"zfs list -H -p -o {_PROPS} -t {_TYPES} -d 1 {_P}",
    f"zfs list -H -p -o {_PROPS} (?:{_DS}|{_SNAP}|{_P})",
    f"zfs get -H -p -o name,property,value {_PROPS} (?:{_DS}|{_SNAP}|{_P})",
    f"zfs create (?:-s )?(?:-b {_BS} )?(?P<zps>(?:-o {_ZPC} ){{0,9}})-V {_SIZE} {_DS}",
    f"zfs destroy (?:{_DS}|{_SNAP})",
    f"zfs destroy -d {_SNAP}",
    f"zfs snapshot (?P<snaps>{_SNAP}(?: {_SNAP}){{0,15}})",
    f"zfs clone (?P<zps>(?:-o {_ZPC} ){{0,9}}){_SNAP} {_DS}",
    f"zfs promote {_DS}",
    # between parents of one pool (both PARENTS are in pool zol)
    f"zfs rename {_DS} {_DS}",
    f"zfs rename (?P<ds>{_DS})@{_C} (?P=ds)@{_C}",
    f"zfs rollback {_SNAP}",
    f"zfs set volsize={_SIZE} {_DS}",
    f"zfs set refreservation=(?:none|auto) {_DS}",
    f"zfs set zol:deleted=[A-Za-z0-9_.:,/=+-]{{0,512}} {_DS}",
    f"zfs set {_ZP} {_DS}",
    f"zfs inherit {_UPROP} {_DS}",
    # streams: full, incremental (two snapshots of one dataset), resume; receive, abort
    f"zfs send -L -e -c {_SNAP}",
    f"zfs send -L -e -c -i (?P<ids>{_DS})@(?P<ia>{_C}) (?P=ids)@(?P<ib>{_C})",
    f"zfs send -t {_TOKEN}",
    f"zfs receive -s -u (?:-F )?{_DS}",
    f"zfs receive -A {_DS}",
    "zol-wrapper version",
    "zol-wrapper capabilities",
    f"zol-wrapper copy-data (?P<cd1>{_DS}) (?P<cd2>{_DS})",
    f"zol-wrapper wait-zvol {_DS}(?: {_SECS})?",
    f"zol-wrapper copy {_SNAP} {_DS}",
    f"zol-wrapper export {_DS} {_IQN} {_LUN} {_SERIAL} (?:thin|thin-unmap|thick) "
    "(?:wc-on|wc-off) "
    f"(?:chap|none) {_INIS}",
    f"zol-wrapper (?:unexport|resize-lun) {_IQN}",
    "zol-wrapper show-exports",
    "zol-wrapper restore-exports",
]
ORACLE = [re.compile(line) for line in ORACLE_LINES]
_ARG = re.compile(r"[!-~]+")     # printable ASCII, no space: every grammar token is one


def _v6_ok(text: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6, text)
    except OSError:
        return False
    return True


def oracle(argv) -> bool:
    """Is argv a member of the documented grammar?"""
    if not argv or len(argv) > 40 or any(not _ARG.fullmatch(a) for a in argv):
        return False
    line = " ".join(argv)
    for rx in ORACLE:
        m = rx.fullmatch(line)
        if not m:
            continue
        g = m.groupdict()
        if g.get("size") and int(g["size"]) % 512:
            continue
        if g.get("v6") is not None and not _v6_ok(g["v6"]):
            continue
        if g.get("zps"):
            names = [w.split("=")[0] for w in g["zps"].split() if w != "-o"]
            if len(set(names)) != len(names):
                continue
        if g.get("snaps"):
            dss = [w.split("@")[0] for w in g["snaps"].split()]
            if len(set(dss)) != len(dss):
                continue
        if g.get("cd1") is not None and g["cd1"] == g["cd2"]:
            continue
        if g.get("ia") is not None and g["ia"] == g["ib"]:
            continue
        if g.get("inis") is not None:
            items = g["inis"].split(",")
            if len(set(items)) != len(items) or "ALL" in items or not all(
                    re.fullmatch(_INI1, i) and (":" not in i or _v6_ok(i)) for i in items):
                continue
        return True
    return False


# ------------------------------------------------------------------------------------------
# Generator of valid command lines and their mutations.
# ------------------------------------------------------------------------------------------
_COMP_FIRST = string.ascii_letters + string.digits
_COMP_REST = _COMP_FIRST + "_.:-"


def g_comp(r: random.Random) -> str:
    n = r.choice((1, 3, 8, 36, 44, r.randint(1, 200)))
    return r.choice(_COMP_FIRST) + "".join(r.choices(_COMP_REST, k=n - 1))


def g_ds(r):
    return r.choice(PARENTS) + "/" + g_comp(r)


def g_snap(r):
    return g_ds(r) + "@" + g_comp(r)


def g_ini(r):
    k = r.random()
    if k < 0.3:
        return "ALL"
    if k < 0.65:
        return ".".join(str(r.randint(0, 255)) for _ in range(4))
    return socket.inet_ntop(socket.AF_INET6, bytes(r.randint(0, 255) if r.random() < 0.5
                                                   else 0 for _ in range(16)))


def g_list(r, names):
    return ",".join(r.sample(list(names), r.randint(1, min(6, len(names)))))


GEN = {
    "P": lambda r: r.choice(PARENTS),
    "DS": g_ds,
    "SNAP": g_snap,
    "OBJ": lambda r: r.choice((g_ds, g_snap, lambda r: r.choice(PARENTS)))(r),
    "PDS": lambda r: r.choice((g_ds, lambda r: r.choice(PARENTS)))(r),
    "DSSNAP": lambda r: r.choice((g_ds, g_snap))(r),
    "SIZE": lambda r: str(512 * r.choice((1, 2048, 2097152, r.randint(1, 10 ** 15)))),
    "BS": lambda r: r.choice(("4096", "8192", "16384", "32768", "65536", "131072")),
    "LUN": lambda r: str(r.randint(1, 999)),
    "IQN": lambda r: PREFIX + r.choice("abc019") + "".join(
        r.choices("abcdefxyz0189.:-", k=r.randint(0, 60))),
    "USER": lambda r: r.choice(_COMP_FIRST) + "".join(r.choices(_COMP_REST,
                                                                k=r.randint(0, 63))),
    "SECRET": lambda r: "".join(r.choices(_COMP_FIRST, k=r.randint(12, 64))),
    "INI": g_ini,
    "PROPS": lambda r: g_list(r, _PROPNAMES),
    "TYPES": lambda r: g_list(r, ("volume", "snapshot", "filesystem")),
    "UPROP": lambda r: r.choice(("zol:iqn", "zol:lun", "zol:chap", "zol:initiators",
                                 "zol:deleted")),
    "SERIAL": lambda r: r.choice(_COMP_FIRST) + "".join(
        r.choices(_COMP_FIRST + "-", k=r.randint(0, 35))),
    "PROV": lambda r: r.choice(("thin", "thin-unmap", "thick")),
    "WC": lambda r: r.choice(("wc-on", "wc-off")),
    "AUTH": lambda r: r.choice(("chap", "none")),
    "INIS": lambda r: "ALL" if r.random() < 0.5 else ",".join(
        dict.fromkeys(g_ini(r) for _ in range(r.randint(1, 4))).keys() - {"ALL"} or
        ["10.0.0.1"]),
    "UVAL": lambda r: "".join(r.choices(string.ascii_letters + "_.:,/=+-0123456789",
                                        k=r.choice((0, 1, 16, 40, r.randint(0, 512))))),
    "SECS": lambda r: str(r.randint(1, 120)),
    "ZP": lambda r: r.choice([f"{k}={v}" for k, vs in ZPROPS.items() for v in vs]),
    "ZPN": lambda r: r.choice(list(ZPROPS)),
    "ZPS": lambda r: " ".join(f"-o {k}={r.choice(ZPROPS[k])}"
                              for k in r.sample(list(ZPROPS), r.randint(1, len(ZPROPS)))),
    "TOKEN": lambda r: "%d-%x-%x-%s" % (r.randint(1, 9999), r.getrandbits(60),
                                        r.getrandbits(20), "".join(r.choices(
                                            "0123456789abcdef",
                                            k=r.choice((16, 200, r.randint(16, 4096)))))),
    "SNAPS": lambda r: " ".join(f"{r.choice(PARENTS)}/v{i}-{r.randint(0, 99)}@" + g_comp(r)
                                for i in range(r.randint(2, 16))),
}

# Shapes of valid commands ({X} = GEN[X]); writes the doc's alternatives out.
SHAPES = [
    "zfs version",
    "zfs list -H -p -o {PROPS} -t {TYPES} -r {PDS}",
    "zfs list -H -p -o {PROPS} -t {TYPES} -d 1 {P}",
    "zfs list -H -p -o {PROPS} {OBJ}",
    "zfs get -H -p -o name,property,value {PROPS} {OBJ}",
    "zfs create -V {SIZE} {DS}",
    "zfs create -s -V {SIZE} {DS}",
    "zfs create -b {BS} -V {SIZE} {DS}",
    "zfs create -s -b {BS} -V {SIZE} {DS}",
    "zfs destroy {DSSNAP}",
    "zfs destroy -d {SNAP}",
    "zfs snapshot {SNAP}",
    "zfs clone {SNAP} {DS}",
    "zfs clone -o refreservation=none {SNAP} {DS}",
    "zfs promote {DS}",
    "zfs rename RENAME_DS",
    "zfs rename RENAME_SNAP",
    "zfs rollback {SNAP}",
    "zfs set volsize={SIZE} {DS}",
    "zfs set refreservation=none {DS}",
    "zfs set refreservation=auto {DS}",
    "zfs set zol:deleted={UVAL} {DS}",
    "zfs inherit {UPROP} {DS}",
    "zfs inherit {ZPN} {DS}",
    "zfs set {ZP} {DS}",
    "zfs create {ZPS} -V {SIZE} {DS}",
    "zfs create -s -b {BS} {ZPS} -V {SIZE} {DS}",
    "zfs clone {ZPS} {SNAP} {DS}",
    "zfs snapshot {SNAPS}",
    "zfs send -L -e -c {SNAP}",
    "zfs send SEND_INCREMENTAL",
    "zfs send -t {TOKEN}",
    "zfs receive -s -u {DS}",
    "zfs receive -s -u -F {DS}",
    "zfs receive -A {DS}",
    "zol-wrapper copy-data {DS} {DS}",
    "zol-wrapper capabilities",
    "zol-wrapper version",
    "zol-wrapper wait-zvol {DS}",
    "zol-wrapper wait-zvol {DS} {SECS}",
    "zol-wrapper copy {SNAP} {DS}",
    "zol-wrapper export {DS} {IQN} {LUN} {SERIAL} {PROV} {WC} {AUTH} {INIS}",
    "zol-wrapper unexport {IQN}",
    "zol-wrapper resize-lun {IQN}",
    "zol-wrapper show-exports",
    "zol-wrapper restore-exports",
]
_FIELD = re.compile(r"\{([A-Z]+)\}")


def gen_valid(r: random.Random) -> list[str]:
    shape = r.choice(SHAPES)
    if shape.endswith("RENAME_DS"):
        p = r.choice(PARENTS)
        return ["zfs", "rename", p + "/" + g_comp(r), p + "/" + g_comp(r)]
    if shape.endswith("SEND_INCREMENTAL"):
        ds = g_ds(r)
        return ["zfs", "send", "-L", "-e", "-c", "-i", ds + "@" + g_comp(r),
                ds + "@" + g_comp(r)]
    if shape.endswith("RENAME_SNAP"):
        ds = g_ds(r)
        return ["zfs", "rename", ds + "@" + g_comp(r), ds + "@" + g_comp(r)]
    return " ".join(_FIELD.sub(lambda m: GEN[m.group(1)](r), w) for w in shape.split()).split()


NASTY = [";", "|", "&", "&&", "$(id)", "`id`", "$IFS", "${PATH}", "\n", "\r", "\t", "\0",
         "*", "?", "[a-z]", "~", "..", "../", "/", "//", "@", "#", "%", "-", "-r", "-R", "-f",
         "-rf", "--", "-o", "-d", "-V", "-F", "-p", "-w", "-i", "-t", "mountpoint=/", "'", '"',
         "\\", " ", "  ", "=", ",",
         "\u0661", "\u00e9", "\u200b", "\udcff", "\x7f", "a" * 300, "9" * 25, "0", "-1",
         "zol", "zol/other", "zol/cinder", "zol/cinder/../x", "zol/cinder/a/b",
         "zol/cinder-thick", "zol/cinderx/a", "/dev/sda", "/dev/zvol/zol/other/x",
         "iqn.2010-10.org.openstack:", "iqn.1999-01.evil:x", "ALL", "all", "10.0.0.0/8",
         "::", "::ffff:1.2.3.4", "1.2.3.04", "fe80::1%eth0", "4096", "512", "1000",
         "volsize=1000", "zol:other=1", "refreservation=1G", "name,", ",name"]
PROGRAMS = ["zfs", "tgtadm", "zol-wrapper", "zpool", "sh", "/usr/sbin/zfs", "bash", "", "ZFS"]


def mutate_argv(r: random.Random, argv: list[str]) -> list[str]:
    a = list(argv)
    for _ in range(r.choice((1, 1, 1, 2, 3, 4))):
        k = r.randrange(13)
        i = r.randrange(len(a)) if a else 0
        if k == 0 and a:                                   # insert a nasty token
            a.insert(r.randint(0, len(a)), r.choice(NASTY))
        elif k == 1 and a:                                 # replace a token
            a[i] = r.choice(NASTY)
        elif k == 2 and a:                                 # nasty text inside a token
            j = r.randint(0, len(a[i]))
            a[i] = a[i][:j] + r.choice(NASTY) + a[i][j:]
        elif k == 3 and a:                                 # drop a token
            del a[i]
        elif k == 4 and a:                                 # duplicate a token
            a.insert(i, a[i])
        elif k == 5 and len(a) > 1:                        # swap two tokens
            j = r.randrange(len(a))
            a[i], a[j] = a[j], a[i]
        elif k == 6 and a:                                 # type confusion: another token
            a[i] = GEN[r.choice(sorted(GEN))](r)
        elif k == 7 and a:                                 # change one character
            if a[i]:
                j = r.randrange(len(a[i]))
                a[i] = a[i][:j] + chr(r.choice((r.randint(32, 126), r.randint(0, 31),
                                                r.randint(127, 0x2000)))) + a[i][j + 1:]
        elif k == 8 and a:                                 # truncate a token
            a[i] = a[i][:r.randint(0, len(a[i]))]
        elif k == 9:                                       # splice with another command
            b = gen_valid(r)
            a = a[:r.randint(0, len(a))] + b[r.randint(0, len(b)):]
        elif k == 10 and a:                                # another program
            a[0] = r.choice(PROGRAMS)
        elif k == 11 and a:                                # join / split tokens
            if i + 1 < len(a):
                a[i:i + 2] = [a[i] + r.choice(("", " ", "/", "@", "=", ",")) + a[i + 1]]
        elif k == 12 and a:                                # grow a name component
            a[i] = a[i] + r.choice(_COMP_REST) * r.randint(1, 250)
    return a


def mutate_line(r: random.Random, line: str) -> str:
    s = line
    for _ in range(r.choice((1, 1, 2, 3))):
        k = r.randrange(6)
        j = r.randint(0, len(s))
        if k == 0:
            s = s[:j] + r.choice(NASTY) + s[j:]
        elif k == 1 and s:
            s = s[:j] + s[j + r.randint(1, 5):]
        elif k == 2:                                       # shell quoting of a piece
            q = r.choice(("'", '"', "\\"))
            s = s[:j] + q + s[j:] + (q if q != "\\" else "")
        elif k == 3:
            s = s[:j] + chr(r.randint(0, 0x3000)) + s[j:]
        elif k == 4:
            s = s + r.choice((" ", "\n", ";", " #", " -r", " && id", "\\"))
        else:
            try:
                argv = shlex.split(s)
            except ValueError:
                argv = [s]
            s = shlex.join(mutate_argv(r, argv))
    return s


# ------------------------------------------------------------------------------------------
# Properties
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    fake = FakeSan(tmp_path_factory.mktemp("fuzz"), parents=PARENTS, iqn_prefix=PREFIX)
    return W.load_config(str(fake.conf))


def _accepts(cfg, argv) -> bool:
    try:
        W.validate(cfg, argv)
    except W.Denied:
        return False
    return True


FAST = {"deadline": None, "database": None, "suppress_health_check": list(HealthCheck)}


def test_oracle_is_not_trivial(cfg):
    """The oracle itself says yes to the doc's examples and no to near misses."""
    r = random.Random(1)
    for _ in range(2000):
        argv = gen_valid(r)
        assert oracle(argv), argv
        assert _accepts(cfg, argv), argv
    for bad in (["zfs", "destroy", "-r", "zol/cinder/x"], ["zfs", "create", "-V", "1000",
                "zol/cinder/x"], ["zfs", "rename", "zol/cinder/a", "zol/other/b"],
                ["zfs", "create", "-o", "mountpoint=/", "-V", "1024", "zol/cinder/x"],
                ["zfs", "snapshot", "zol/cinder/a@x", "zol/cinder/a@y"],
                ["zfs", "set", "compression=zstd-20", "zol/cinder/a"],
                ["zol-wrapper", "copy-data", "zol/cinder/a", "zol/cinder/a"],
                ["zol-wrapper", "wait-zvol", "zol/cinder/a", "121"], ["sh", "-c", "id"],
                ["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show"],
                ["zol-wrapper", "export", "zol/cinder/a", PREFIX + "a", "1", "a", "thin",
                 "wc-on", "none", "1::2::3"],
                ["zol-wrapper", "export", "zol/cinder/a", PREFIX + "a", "1", "a", "thin",
                 "wc-on", "none", "ALL,10.0.0.1"],
                ["zol-wrapper", "new-target", PREFIX + "a"]):
        assert not oracle(bad), bad


def test_command_lines_never_escape_grammar(cfg):
    """SSH_ORIGINAL_COMMAND strings: accepted => in the grammar and a validator fixed point."""
    stats = {"lines": 0, "accepted": 0}

    @settings(max_examples=800, **FAST)
    @given(st.integers(0, 2 ** 64))
    def run(seed):
        r = random.Random(seed)
        for _ in range(60):
            line = shlex.join(gen_valid(r))
            if r.random() < 0.9:
                line = mutate_line(r, line)
            stats["lines"] += 1
            try:
                argv = W.split_command(line)
                _, out = W.validate(cfg, argv)
            except W.Denied:
                continue
            stats["accepted"] += 1
            assert oracle(out), line
            assert W.validate(cfg, out)[1] == out
            assert W.split_command(shlex.join(out)) == out

    run()
    assert stats["lines"] >= 48000
    assert 0.05 < stats["accepted"] / stats["lines"] < 0.9, stats   # both outcomes exercised


def test_argv_lists_agree_with_oracle(cfg):
    """Local-mode argv lists: wrapper and oracle agree exactly, both ways."""
    stats = {"argv": 0, "accepted": 0}

    @settings(max_examples=700, **FAST)
    @given(st.integers(0, 2 ** 64))
    def run(seed):
        r = random.Random(seed)
        for _ in range(60):
            argv = gen_valid(r)
            if r.random() < 0.85:
                argv = mutate_argv(r, argv)
            stats["argv"] += 1
            ok = _accepts(cfg, argv)
            stats["accepted"] += ok
            assert ok == oracle(argv), argv

    run()
    assert stats["argv"] >= 42000
    assert 0.05 < stats["accepted"] / stats["argv"] < 0.9, stats


@settings(max_examples=3000, **FAST)
@given(st.lists(st.one_of(st.sampled_from(NASTY + PROGRAMS + ["destroy", "list", "-H", "-p",
                                                               "--lld", "iscsi", "--mode",
                                                               "target", "--op", "new"]),
                          st.text(max_size=30)), max_size=12))
def test_arbitrary_argv(cfg, argv):
    """Unstructured token soup (hypothesis shrinks any counterexample)."""
    assert _accepts(cfg, argv) == oracle(argv)


@settings(max_examples=3000, **FAST)
@given(st.text(max_size=120))
def test_arbitrary_text(cfg, line):
    try:
        _, out = W.validate(cfg, W.split_command(line))
    except W.Denied:
        return
    assert oracle(out)


def test_main_only_execs_grammar(cfg, tmp_path, monkeypatch):
    """The real entry point: execve and the verbs only ever receive oracle-accepted argv."""
    fake = FakeSan(tmp_path / "san", parents=PARENTS, iqn_prefix=PREFIX)
    ran = []

    class Execed(Exception):
        """os.execve never returns: neither does the fake."""

    def fake_execve(path, argv, env):
        assert path == str(fake.zfs)
        assert env == W.CHILD_ENV
        ran.append(["zfs"] + list(argv[1:]))
        raise Execed()

    def fake_verb(cfg_, argv, log):
        ran.append(list(argv))
        return 0

    def main(args):
        try:
            return W.main(args)
        except Execed:
            return 0

    monkeypatch.setattr(W.os, "execve", fake_execve)
    monkeypatch.setattr(W, "run_verb", fake_verb)
    monkeypatch.setattr(W, "take_lock", lambda cfg_: W.os.open("/dev/null", W.os.O_RDONLY))
    monkeypatch.setenv("SSH_CONNECTION", "192.0.2.7 1234 192.0.2.1 22")
    stats = {"runs": 0, "rc": {}}

    @settings(max_examples=150, **FAST)
    @given(st.integers(0, 2 ** 64))
    def run(seed):
        r = random.Random(seed)
        for _ in range(40):
            argv = gen_valid(r)
            if r.random() < 0.8:
                argv = mutate_argv(r, argv)
            n = len(ran)
            if r.random() < 0.5:
                line = shlex.join(argv) if r.random() < 0.7 else mutate_line(r, shlex.join(argv))
                if "\0" in line:
                    continue                       # cannot be in an environment variable
                monkeypatch.setenv("SSH_ORIGINAL_COMMAND", line)
                rc = main([str(fake.conf)])
            else:
                if any("\0" in a for a in argv):
                    continue                       # cannot be in a process argument
                rc = main([str(fake.conf), "--"] + argv)
            stats["runs"] += 1
            stats["rc"][rc] = stats["rc"].get(rc, 0) + 1
            got = ran[n:]
            assert len(got) <= 1
            if got:
                assert rc == 0
                assert oracle(got[0]), got[0]
            else:
                assert rc in (W.EXIT_DENIED, W.EXIT_NO_COMMAND), rc

    run()
    assert stats["runs"] >= 5500
    assert stats["rc"].get(0, 0) > 300 and stats["rc"].get(W.EXIT_DENIED, 0) > 300, stats
    log = fake.log_text().splitlines()
    assert len(log) == stats["runs"]
    assert all(" decision=" in line for line in log)
