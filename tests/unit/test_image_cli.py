"""Workspace (lock, partial dir + rename), preflight and the CLI's list table (no Glance)."""
from __future__ import annotations

import os

import pytest

from image_builder import cli, workspace


def test_second_build_of_the_same_name_is_refused(tmp_path):
    with workspace.Workspace(tmp_path, "deb") as ws:
        assert ws.partial.parent == tmp_path and ws.partial.name.startswith(".deb.partial-")
        with pytest.raises(workspace.BuildLocked) as err, workspace.Workspace(tmp_path, "deb"):
            pass
        assert "pid %d" % os.getpid() in err.value.message
        with workspace.Workspace(tmp_path, "other"):     # another name: its own lock
            pass
    assert not (tmp_path / ".deb.lock").exists() and not list(tmp_path.glob(".deb.partial-*"))


def test_commit_replaces_and_a_failure_keeps_the_previous_build(tmp_path):
    good = tmp_path / "deb"
    good.mkdir()
    (good / "deb.img").write_text("good")
    with workspace.Workspace(tmp_path, "deb") as ws:
        (ws.partial / "deb.img").write_text("broken")
        (ws.partial / "work").mkdir()
        (ws.partial / "work" / "mmdebstrap.log").write_text("E: no such package")
        assert ws.abort(keep_work=False) == tmp_path / "deb.failed"
    assert (good / "deb.img").read_text() == "good"
    assert (tmp_path / "deb.failed" / "mmdebstrap.log").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deb", "deb.failed"]
    with workspace.Workspace(tmp_path, "deb") as ws:
        (ws.partial / "deb.img").write_text("new")
        assert ws.commit() == good
    assert (good / "deb.img").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deb"]      # .failed gone too


def test_stale_partial_dirs_are_removed_under_the_lock(tmp_path):
    stale = tmp_path / ".deb.partial-abc"
    stale.mkdir()
    (stale / "x").write_text("x")
    with workspace.Workspace(tmp_path, "deb"):
        assert not stale.exists()


def test_preflight_names_the_debian_packages(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(workspace.shutil, "which", lambda tool, path=None: None)
    with pytest.raises(workspace.MissingTools) as err:
        workspace.preflight("chroot", "ami", True, False)
    msg = err.value.message
    for pkg in ("mmdebstrap", "qemu-utils", "e2fsprogs", "fdisk", "qemu-system-x86",
                "genisoimage", "openssh-client"):
        assert pkg in msg, pkg
    assert "apt-get install" in msg
    tools = workspace.needed_tools("chroot", "ami", False, True)    # --from-disk, no verify
    assert "mmdebstrap" not in tools and "genisoimage" not in tools


def test_preflight_passes_on_this_machine():
    workspace.preflight("chroot", "ami", True, False)


def test_list_table():
    rows = [{"series": "Debian 12 (amd64)", "version": "20261202.0300", "id": "i1",
             "visibility": "public", "hidden": False, "protected": False, "name": "n1"},
            {"series": "Debian 12 (amd64)", "version": "20261101.0300", "id": "i0",
             "visibility": "public", "hidden": True, "protected": True, "name": "n0"}]
    text = cli.table(rows)
    assert text.splitlines()[0] == "Debian 12 (amd64)"
    assert "visible" in text.splitlines()[1] and "hidden,protected" in text.splitlines()[2]
    assert cli.table([]) == "(no publications)"


def test_property_flag_and_retire_usage(capsys):
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["upload", "d", "--property", "novalue"])
    args = cli.parser().parse_args(["upload", "d", "--property", "a=b=c", "--property", "x="])
    assert args.properties == [("a", "b=c"), ("x", "")]
    assert cli.main(["retire", "--glance-endpoint", "http://127.0.0.1:9"]) == 2
    assert "IMAGE_ID or --series and --version" in capsys.readouterr().err


def test_properties_from_config_file_then_command_line(tmp_path, monkeypatch):
    monkeypatch.delenv("OS_TOKEN", raising=False)
    conf_file = tmp_path / "ib.conf"
    conf_file.write_text("[glance]\nproperties = site:lab,hw_vif_model:e1000\nkeep = 3\n"
                         "tags = weekly\n")
    from image_builder import build
    args = cli.parser().parse_args(["--config-file", str(conf_file), "upload", "d",
                                    "--property", "hw_vif_model=virtio", "--property",
                                    "owner_team=cloud"])
    s = build.Settings.from_conf(cli.load_conf(args))
    assert s.glance_properties == {"site": "lab", "hw_vif_model": "virtio",
                                   "owner_team": "cloud"}
    pub = s.publication()
    assert pub.options.keep == 3 and pub.options.tags == ["weekly"]
