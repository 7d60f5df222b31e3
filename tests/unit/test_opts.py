"""Options: the committed sample config is what oslo-config-generator makes today."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from zol_driver import opts

REPO = Path(__file__).resolve().parents[2]


def test_sample_config_is_current(tmp_path):
    out = tmp_path / "zol_driver.conf.sample"
    gen = Path(sys.executable).with_name("oslo-config-generator")
    subprocess.run([str(gen), "--namespace", "zol_driver", "--output-file", str(out)],
                   check=True, capture_output=True, timeout=120)
    committed = (REPO / "etc" / "zol_driver.conf.sample").read_text()
    assert out.read_text() == committed, (
        "etc/zol_driver.conf.sample is stale: run `.venv/bin/oslo-config-generator "
        "--namespace zol_driver --output-file etc/zol_driver.conf.sample`")


def test_new_options_are_zol_prefixed_and_documented():
    ((group, options),) = opts.list_opts()
    assert group == "backend_defaults"
    for o in options:
        assert o.name.startswith("zol_") and len(o.help) > 20, o.name


def test_only_driver_py_imports_cinder():
    """The storage and target layers must work without Cinder (zol-san check, the bench)."""
    for name in ("opts", "exception", "ssh", "zfs", "targets/tgt"):
        text = (REPO / "zol_driver" / (name + ".py")).read_text()
        assert "import cinder" not in text and "from cinder" not in text, name
