"""Contract: every argv the Cinder driver can emit is accepted by the SAN wrapper.

Two sources, so neither side can drift unnoticed:
* tests/fixtures/driver_argv.jsonl - the complete command set recorded from the driver's own
  scenario tests (tests/unit/test_driver.py regenerates it);
* the driver's argv builders (zol_driver.zfs.ZfsClient, zol_driver.targets.tgt.TgtAdm) called
  here directly with a recording executor, over every option combination and both parents.
Each argv goes through the wrapper's validator in-process and, for the exec'd programs, through
the real wrapper process in local mode, checking the fake binary received exactly that argv.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest

from tests.helpers.fakesan import REPO, WRAPPER, FakeSan, load_wrapper
from zol_driver import exception, policy, ssh, zfs
from zol_driver.targets import tgt

W = load_wrapper()
ARGV_FILE = REPO / "tests" / "fixtures" / "driver_argv.jsonl"
PARENTS = ("zol/cinder", "zol/cinder-thick")
PREFIX = "iqn.2010-10.org.openstack:"
UUID = "0b6e8f2a-1111-4c2d-9a1b-3c4d5e6f7a8b"
TOKEN = "1-e604ea4bf-c0-789c636064000310a500c4ec50360710e72765a5262696" + "a" * 120


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> FakeSan:
    return FakeSan(tmp_path_factory.mktemp("contract"), parents=PARENTS, iqn_prefix=PREFIX)


@pytest.fixture(scope="module")
def cfg(fake):
    return W.load_config(str(fake.conf))


def recorded_argv() -> list[list[str]]:
    if not ARGV_FILE.exists():
        pytest.fail(f"{ARGV_FILE.relative_to(REPO)} is missing: the driver's tests record "
                    "every argv they send there (tests/unit/test_driver.py::"
                    "test_driver_argv_fixture_is_current; regenerate with "
                    "ZOL_REGEN_DRIVER_ARGV=1)", pytrace=False)
    lines = [json.loads(line) for line in ARGV_FILE.read_text().splitlines() if line.strip()]
    assert lines, f"{ARGV_FILE} is empty"
    return lines


def test_recorded_argv_accepted(cfg):
    denied = []
    for argv in recorded_argv():
        try:
            W.validate(cfg, argv)
        except W.Denied as exc:
            denied.append(f"{shlex.join(W.redact_argv(argv))} -> {exc}")
    assert not denied, "the wrapper denies argv the driver sends:\n" + "\n".join(denied)


def test_recorded_argv_covers_the_protocol(cfg):
    """The driver's recording exercises most grammar lines (a shrunken recording is a bug)."""
    used = set()
    for argv in recorded_argv():
        used.add(W.match_rule(cfg, argv).text)
    assert len(used) >= 20, sorted(used)
    verbs = {r.text for r in W.GRAMMAR if r.program == "zol-wrapper"}
    # every verb but restore-exports (the SAN's tgt.service runs it) and the 30 s default
    # wait-zvol form is what the driver sends
    assert verbs - used == {"zol-wrapper restore-exports", "zol-wrapper wait-zvol {DS}"}, \
        sorted(verbs - used)
    assert "zfs destroy {DS_OR_SNAP}" in used


def _doc_shapes() -> set:
    shapes = set()
    in_block = False
    for line in (REPO / "doc" / "san-protocol.md").read_text().splitlines():
        if line.startswith("```"):
            in_block = not in_block
            continue
        words = line.split("#")[0].split()
        if in_block and words[:1] in (["zfs"], ["zol-wrapper"]) and words[1:2] != ["="]:
            shapes.add((W.command_key(words), len([w for w in words if not
                                                   w.startswith("[")])))
            shapes.add((W.command_key(words), len(words)))
    return shapes


def test_driver_wrapper_and_doc_are_one_grammar(cfg):
    """Every argv the driver sends matches a wrapper rule whose shape doc/san-protocol.md
    lists, with the same literal words; and the doc lists nothing the wrapper refuses."""
    doc = _doc_shapes()
    for argv in recorded_argv():
        rule = W.match_rule(cfg, argv)
        assert (W.command_key(rule.items), len(rule.items)) in doc, rule.text
        for i, item in enumerate(rule.expand(len(argv))):
            if not item.startswith("{"):
                assert argv[i] == item
    assert doc == {(W.command_key(r.items), len(r.items)) for r in W.GRAMMAR}


def _doc_zprops() -> dict:
    """doc/san-protocol.md's ZPROP table: {property: (values...)}."""
    text = (REPO / "doc" / "san-protocol.md").read_text()
    section = text.split("### ZPROP:", 1)[1].split("\n#", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[1].startswith("`"):
            rows[cells[0]] = tuple(cells[1].strip("`").split())
    return rows


def test_volume_type_grammar_is_one_in_driver_wrapper_and_doc(cfg):
    """The zol:* extra-spec allow-lists: the doc's ZPROP table (the single source), the
    driver's (policy.ZPROPS, used by zfs.py) and the wrapper's are the same, value by value,
    and each value passes the wrapper for create, clone, set and inherit."""
    doc = _doc_zprops()
    assert doc and set(doc) == set(policy.ZPROPS) == set(W.ZPROPS)
    for name, values in doc.items():
        assert values == policy.ZPROPS[name] == tuple(W.ZPROPS[name]), name
    assert zfs.ZPROPS is policy.ZPROPS
    assert tuple(str(b) for b in policy.BLOCKSIZES) == W.BLOCKSIZES
    ds = "zol/cinder/volume-" + UUID
    for name, values in doc.items():
        for value in values:
            for argv in (["zfs", "create", "-o", f"{name}={value}", "-V", "1073741824", ds],
                         ["zfs", "set", f"{name}={value}", ds],
                         ["zfs", "clone", "-o", f"{name}={value}", ds + "@s", ds + "x"]):
                W.validate(cfg, argv)
        W.validate(cfg, ["zfs", "inherit", name, ds])
        # and what is not in the table is refused by both sides
        with pytest.raises(W.Denied):
            W.validate(cfg, ["zfs", "set", f"{name}=bogus", ds])
        with pytest.raises(policy.PolicyError):
            policy.parse("t", {"zol:" + name: "bogus"})


def test_recorded_argv_reach_exec_unchanged(fake):
    """The real wrapper process (local mode, like san_is_local) execs exactly the argv."""
    fake.clear()
    sent = [a for a in recorded_argv() if a[0] != "zol-wrapper"]
    for argv in sent:
        r = subprocess.run([sys.executable, str(WRAPPER), str(fake.conf), "--", *argv],
                           capture_output=True, timeout=30, check=False)
        assert r.returncode not in (64, 65, 66, 67, 68), (argv, r.stderr)
    assert fake.executed() == sent


# ------------------------------------------------------------------------------------------
# The driver's builders, called directly.
# ------------------------------------------------------------------------------------------

class Recorder:
    """An Executor that records argv and answers like an empty SAN."""

    host = "contract"

    def __init__(self):
        self.calls: list[list[str]] = []

    def execute(self, argv, check=True, timeout=None, stdin=None):
        self.calls.append(list(argv))
        out = "tid=1 iqn=x lun=1 unmap=no\n" if argv[:2] == ["zol-wrapper", "export"] else ""
        return ssh.Result(tuple(argv), 0, out, "")

    def close(self):
        pass


def builder_argv() -> list[list[str]]:
    rec = Recorder()
    for parent in PARENTS:
        z = zfs.ZfsClient(rec, parent, busy_retries=0, busy_interval=0)
        ds = z.ds("volume-" + UUID)
        ds2 = z.ds("volume-" + UUID.replace("1", "2"))
        snap = ds + "@snapshot-" + UUID
        z.version()
        for name in (parent, ds, snap):
            z.list(name)
            z.list(name, ("name",))
            z.get(name, ("used", "available", "zol:iqn"))
        z.list(parent, ("name", "volsize"), types=("volume",), depth=1)
        z.tree(ds)
        z.inventory(("name", "used", "zol:deleted"))
        for sparse in (True, False):
            for bs in (None, *zfs.BLOCKSIZES):
                z.create_volume(ds, 1024 ** 3, sparse=sparse, blocksize=bs)
        z.create_volume(ds, 512)
        z.wait_zvol(ds)
        z.wait_zvol(ds, 120)
        z.wait_zvol(ds, 1000)
        z.destroy(ds)
        z.destroy(snap)
        z.destroy(snap, deferred=True)
        z.snapshot(snap)
        z.clone(snap, ds2)
        z.clone(snap, ds2, thin=True)
        z.copy(snap, ds2)
        z.promote(ds)
        z.rename(ds, ds2)
        z.rename(snap, ds + "@deleted-snapshot-" + UUID)
        z.rollback(snap)
        z.set_volsize(ds, 2 * 1024 ** 3)
        z.set_refreservation(ds, True)
        z.set_refreservation(ds, False)
        z.set_user(ds, "zol:deleted", "1")
        for prop in zfs.USER_PROPS:
            z.inherit(ds, prop)
        every = {name: values[-1] for name, values in zfs.ZPROPS.items()}
        for sparse in (True, False):
            for bs in (None, 16384):
                z.create_volume(ds, 1024 ** 3, sparse=sparse, blocksize=bs, props=every)
                z.create_volume(ds, 1024 ** 3, sparse=sparse, blocksize=bs,
                                props={"compression": "zstd"})
        z.clone(snap, ds2, props=every)
        z.clone(snap, ds2, thin=True, props={"sync": "always"})
        for name, values in zfs.ZPROPS.items():
            z.set_prop(ds, name, values[0])
            z.inherit_prop(ds, name)
        z.get(ds, zfs.POLICY_PROPS)
        z.snapshot_many([ds + "@g", ds2 + "@g"])
        z.snapshot_many([f"{z.ds(f'v{i}')}@g{i}" for i in range(zfs.MAX_GROUP)])
        z.copy_data(ds, ds2)
        other = PARENTS[1] if parent == PARENTS[0] else PARENTS[0]
        z.move(ds, f"{other}/volume-{UUID}", thick=True)
        z.move(ds, f"{other}/volume-{UUID}", thick=False)
        # streams (migration, replication): the argv lists transfer.send() pipes
        for argv in (z.send_argv(snap), z.send_argv(snap, base=ds + "@zol-migrate-0"),
                     z.send_resume_argv(TOKEN), z.receive_argv(ds),
                     z.receive_argv(ds, force=True)):
            rec.execute(argv)
        z.resume_token(ds)
        z.abort_receive(ds)
    t = tgt.TgtAdm(rec, PREFIX, retries=0, retry_interval=0)
    iqn = t.iqn("volume-" + UUID)
    chap = tgt.Chap("user-1", "Zq8Rk2Lm9Pw4Xt7Y")
    t.show()
    for parent in PARENTS:
        for thin in (True, False):
            for wc in (True, False):
                t.export(f"{parent}/volume-{UUID}", iqn, UUID, chap=chap, thin=thin,
                         write_cache=wc, initiators=("10.0.0.5", "2001:db8::7"))
        t.export(f"{parent}/volume-{UUID}", iqn, UUID, thin=True, unmap=True)
        t.export(f"{parent}/volume-{UUID}", iqn, UUID, lun=999)
    t.unexport(iqn)
    t.resize_lun(iqn)
    t.restore_exports()
    return rec.calls


def test_builder_argv_accepted(cfg):
    calls = builder_argv()
    assert len(calls) > 100
    denied = []
    for argv in calls:
        try:
            W.validate(cfg, argv)
        except W.Denied as exc:
            denied.append(f"{shlex.join(W.redact_argv(argv))} -> {exc}")
    assert not denied, "the wrapper denies argv the driver builds:\n" + "\n".join(denied)


def test_builders_refuse_what_the_wrapper_denies():
    """The driver fails fast (before SSH) on names the wrapper would deny."""
    rec = Recorder()
    z = zfs.ZfsClient(rec, "zol/cinder")
    for bad in ("../x", "a/b", "-r", ".x", "a;b", "a b", "x@y", ""):
        with pytest.raises(exception.ZolException):
            z.ds(bad)
    for bad in ("zol/other/x", "zol/cinder/a/b", "zol/cinder"):
        with pytest.raises(exception.ZolException):
            z.destroy(bad)
    with pytest.raises(exception.ZolException):
        z.create_volume("zol/cinder/x", 1000)
    for bad in ({"mountpoint": "/etc"}, {"compression": "zstd-20"}, {"sync": "sometimes"},
                {"refreservation": "auto"}):
        with pytest.raises(exception.ZolException):
            z.create_volume("zol/cinder/x", 1024 ** 3, props=bad)
    with pytest.raises(exception.ZolException):
        z.set_prop("zol/cinder/x", "volblocksize", "4096")
    with pytest.raises(exception.ZolException):
        z.snapshot_many(["zol/cinder/x@a", "zol/cinder/x@b"])
    with pytest.raises(exception.ZolException):
        z.move("zol/cinder/x", "other/cinder/x", thick=False)
    for bad_stream in (lambda: z.send_argv("zol/cinder/x"),
                       lambda: z.send_argv("zol/cinder/x@b", base="zol/cinder/y@a"),
                       lambda: z.send_resume_argv(TOKEN + "$(id)"),
                       lambda: z.receive_argv("zol/cinder"),
                       lambda: z.abort_receive("zol/other/x")):
        with pytest.raises(exception.ZolException):
            bad_stream()
    assert rec.calls == []


def test_exit_codes_agree():
    """The driver classifies the wrapper's own exit codes; both must use the same numbers."""
    assert (ssh.EXIT_DENIED, ssh.EXIT_NO_COMMAND, ssh.EXIT_BAD_CONFIG, ssh.EXIT_EXEC_FAILED) \
        == (W.EXIT_DENIED, W.EXIT_NO_COMMAND, W.EXIT_CONFIG, W.EXIT_EXEC)


def test_version_format_parsed_by_driver(fake):
    ex = ssh.LocalExecutor([sys.executable, str(WRAPPER), str(fake.conf)])
    assert ssh.protocol_version(ex) == (W.VERSION, W.PROTOCOL)


def test_driver_local_executor_through_wrapper(fake):
    """san_is_local: the driver's LocalExecutor + the wrapper, denial classified as such."""
    ex = ssh.LocalExecutor([sys.executable, str(WRAPPER), str(fake.conf)])
    fake.clear()
    assert ex.execute(["zfs", "version"]).exit_code == 0
    with pytest.raises(exception.WrapperDenied):
        ex.execute(["zfs", "destroy", "-r", "zol/cinder"])
    assert fake.executed() == [["zfs", "version"]]


def test_fixture_path_is_the_drivers():
    """Both sides name the same file (a rename on one side would silently skip the contract)."""
    text = (REPO / "tests" / "unit" / "test_driver.py").read_text()
    assert '"fixtures" / "driver_argv.jsonl"' in text
