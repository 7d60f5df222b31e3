"""Discard is announced by the SAN's capability, not by a flag the operator must know:
`zol-wrapper capabilities` says whether the SAN's tgtd frees space on a zvol for UNMAP (tgt >=
1.0.90, or the SAN image's Debian tgt rebuilt with that fix, +zolN); the driver then turns
discard on for thin backends, and Cinder's report_discard_supported, when set, overrides."""
from __future__ import annotations

import pytest

from tests.helpers.fakesan import load_wrapper
from tests.unit.fakesan import FakeSan
from tests.unit.test_driver import make_driver, vol

W = load_wrapper()


@pytest.mark.parametrize("version,can", [
    ("1:1.0.85-1+deb12u1", False),           # Debian 12 stock: fallocate(PUNCH_HOLE) only
    ("1:1.0.85-1", False),
    ("1:1.0.85-1+deb12u1+zol1", True),       # the SAN image's build (tools/sanvm.d)
    ("1:1.0.85-1+zol2", True),
    ("1.0.85", False),                       # tgtadm --version
    ("1.0.89", False),
    ("1.0.90", True),                        # upstream fa97d3d
    ("1:1.0.93-1", True),
    ("1.1.0", True),
    ("", False),
    ("1:1.0.85-1+zol1~bpo", False),          # suffix must be the last part
])
def test_tgt_can_unmap_by_version(version, can):
    assert W.tgt_can_unmap(version) is can


def _probe(tmp_path, name, text, code=0):
    p = tmp_path / name
    p.write_text("#!/bin/sh\nprintf '%%s\\n' '%s'\nexit %d\n" % (text, code))
    p.chmod(0o755)
    return str(p)


def test_capabilities_verb_reads_the_package_version_first(tmp_path, monkeypatch, capsys):
    dpkg = _probe(tmp_path, "dpkg-query", "1:1.0.85-1+deb12u1+zol1")
    tgtadm = _probe(tmp_path, "tgtadm", "1.0.85")
    monkeypatch.setattr(W, "TGT_VERSION_PROBES", ((dpkg,), (tgtadm,)))
    assert W.verb_capabilities() == 0
    assert capsys.readouterr().out == "unmap=yes send=yes tgt=1:1.0.85-1+deb12u1+zol1\n"


def test_capabilities_verb_falls_back_to_tgtadm_and_to_unknown(tmp_path, monkeypatch, capsys):
    failing = _probe(tmp_path, "dpkg-query", "dpkg-query: no packages found", code=1)
    tgtadm = _probe(tmp_path, "tgtadm", "1.0.92")
    monkeypatch.setattr(W, "TGT_VERSION_PROBES", ((failing,), (tgtadm,)))
    W.verb_capabilities()
    assert capsys.readouterr().out == "unmap=yes send=yes tgt=1.0.92\n"
    monkeypatch.setattr(W, "TGT_VERSION_PROBES", ((failing,), (str(tmp_path / "absent"),)))
    W.verb_capabilities()
    assert capsys.readouterr().out == "unmap=no send=yes tgt=unknown\n"


@pytest.fixture
def san():
    s = FakeSan()
    yield s
    s.shutdown()


def _exported(drv, san, n):
    v = vol(n)
    drv.create_volume(v)
    v.update(drv.create_export(None, v, {}))
    (t,) = san.targets.values()
    data = drv.initialize_connection(v, {"initiator": "iqn.x"})["data"]
    drv.remove_export(None, v)
    drv.delete_volume(v)
    return t.luns[1].thin, data["discard"]


def test_driver_announces_discard_when_the_san_can_unmap(san):
    san.capabilities_line = "unmap=yes tgt=1:1.0.85-1+deb12u1+zol1 future=ignored\n"
    assert _exported(make_driver(san), san, 60) == (True, True)
    # thick zvols never: no thin_provisioning, no discard
    thick = make_driver(san, zol_parent_dataset="zol/cinder-thick", san_thin_provision=False)
    assert _exported(thick, san, 61) == (False, False)


def test_operator_false_forces_discard_off(san):
    san.capabilities_line = "unmap=yes tgt=1.0.90\n"
    assert _exported(make_driver(san, report_discard_supported=False), san, 62) == (False, False)


def test_stock_tgt_or_old_wrapper_means_no_discard_unless_the_operator_says_so(san):
    assert _exported(make_driver(san), san, 63) == (False, False)       # unmap=no
    san.capabilities_line = None                                        # verb refused (64)
    drv = make_driver(san)
    assert ["zol-wrapper", "capabilities"] in san.calls
    assert _exported(drv, san, 64) == (False, False)
    assert _exported(make_driver(san, report_discard_supported=True), san, 65) == (True, True)


def test_unparsable_capabilities_is_a_warning_not_a_dead_backend(san, caplog):
    san.capabilities_line = "garbage\n"
    drv = make_driver(san)
    assert "capabilities` failed" in caplog.text
    assert _exported(drv, san, 66) == (False, False)


def test_san_capabilities_parses_the_real_sans_answer():
    """The verbatim answer of the SAN image's wrapper (tests/fixtures/san/)."""
    from tests.unit.sanfixtures import capture
    from zol_driver import ssh
    c = capture("zol_wrapper_capabilities")
    assert c["argv"] == ["zol-wrapper", "capabilities"] and c["via"] == "cinder"

    class Ex:
        def execute(self, argv, check=True, timeout=None, stdin=None):
            assert argv == c["argv"]
            return ssh.Result(tuple(argv), c["exit_code"], c["stdout"], c["stderr"])

    caps = ssh.san_capabilities(Ex())
    assert caps["unmap"] == "yes" and caps["tgt"].endswith("+zol1"), caps
    assert W.tgt_can_unmap(caps["tgt"])
