"""Options, the CLI's overrides, the generated sample, settings and manifest (pure logic)."""
from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest

from image_builder import build, cli, exception, glance, opts

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "etc" / "image_builder.conf.sample"


def test_sample_config_is_current(tmp_path):
    """etc/image_builder.conf.sample must be regenerated when an option changes."""
    out = tmp_path / "sample"
    subprocess.run([str(REPO / ".venv" / "bin" / "oslo-config-generator"), "--namespace",
                    "image_builder", "--output-file", str(out)], check=True)
    assert out.read_text() == SAMPLE.read_text(), (
        "stale sample: run .venv/bin/oslo-config-generator --namespace image_builder "
        "--output-file etc/image_builder.conf.sample")


def test_list_opts_groups_and_unique_names():
    groups = dict(opts.list_opts())
    assert set(groups) == {"build", "glance", "libvirt"}
    for group_opts in groups.values():
        names = [o.dest for o in group_opts]
        assert len(names) == len(set(names))
    assert next(o for o in groups["glance"] if o.dest == "token").secret


def conf_for(argv, tmp_path=None, text=None):
    args = cli.parser().parse_args(argv)
    if text is not None:
        f = tmp_path / "ib.conf"
        f.write_text(text)
        args.config_file = [str(f)]
    return cli.load_conf(args)


def test_defaults(monkeypatch):
    monkeypatch.delenv("OS_TOKEN", raising=False)
    monkeypatch.delenv("ZOL_GLANCE_TOKEN", raising=False)
    s = build.Settings.from_conf(conf_for(["build"]))
    assert (s.release, s.arch, s.format, s.install_backend) == ("bookworm", "amd64", "ami",
                                                                 "chroot")
    assert s.verify and s.upload and s.image_name == "debian-bookworm-amd64"
    assert "linux-image-cloud-amd64" in s.all_packages and "openssh-server" in s.all_packages


def test_config_file_then_cli_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("OS_TOKEN", "s3cret")
    text = ("[build]\nrelease = trixie\nmirror = http://m.example/debian\ndisk_size = 3000\n"
            "locales = fr_FR.UTF-8,en_US.UTF-8\n[glance]\nendpoint = http://g:9292\n")
    conf = conf_for(["build", "--disk-size", "4096", "--no-verify", "--name", "x-{version}",
                     "--extra-packages", "vim,curl", "--format", "qcow2"], tmp_path, text)
    s = build.Settings.from_conf(conf)
    assert s.release == "trixie" and s.version == "13"
    assert s.mirror == "http://m.example/debian"
    assert s.disk_size == 4096 and s.verify is False and s.upload is True
    assert s.image_name == "x-13" and s.format == "qcow2"
    assert s.locales == ["fr_FR.UTF-8", "en_US.UTF-8"]
    assert {"vim", "curl", "openssh-server"} <= set(s.all_packages)
    assert s.glance_endpoint == "http://g:9292" and s.glance_token == "s3cret"
    assert "s3cret" not in json.dumps(s.public())


def test_invalid_values_are_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["build", "--release", "buster"])
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["build", "--format", "vmdk"])
    assert cli.main(["--config-file", str(tmp_path / "missing.conf"), "build"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bad_image_name():
    with pytest.raises(exception.ConfigError):
        _ = build.Settings(name="a b/c").image_name


def test_stage_failure_names_the_stage(tmp_path):
    b = build.Builder(build.Settings(output_dir=str(tmp_path)))
    with pytest.raises(exception.StageFailed, match=r"Stage convert failed .*: Disk image "
                                                    r"error: nope") as err, b.stage("convert"):
        raise exception.DiskError(reason="nope")
    assert err.value.stage == "convert" and "convert" in b.timings
    b.fault = "shrink"
    with pytest.raises(exception.StageFailed, match="injected fault at shrink"), \
            b.stage("shrink"):
        pass


def test_hashes_and_progress_reader(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    local = glance.hash_file(f, "kernel")
    assert local.md5 == "900150983cd24fb0d6963f7d28e17f72"
    assert local.sha256.startswith("ba7816bf") and local.size == 3
    seen = []
    r = glance.ProgressReader(io.BytesIO(b"x" * 10), 10, lambda d, t, e: seen.append((d, t)),
                              every=0)
    while r.read(4):
        pass
    assert seen[-1] == (10, 10) and len(r) == 10


def test_check_hashes():
    local = glance.LocalFile("root", "/x", 3, "m", "s256", "s512")
    good = {"id": "i", "status": "active", "size": 3, "checksum": "m", "os_hash_algo": "sha512",
            "os_hash_value": "s512"}
    glance.check_hashes(local, good)
    for key, value in (("checksum", "other"), ("os_hash_value", "other"), ("size", 4),
                       ("status", "queued")):
        with pytest.raises(exception.GlanceError, match="does not match"):
            glance.check_hashes(local, dict(good, **{key: value}))


def test_image_names():
    assert glance.image_name("deb", "root") == "deb"
    assert glance.image_name("deb", "kernel") == "deb-kernel"
    assert glance.image_name("deb", "ramdisk") == "deb-ramdisk"


def test_no_credentials_is_a_clear_error(monkeypatch):
    for var in ("OS_CLOUD", "OS_AUTH_URL"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(exception.GlanceError, match="no Glance credentials"):
        glance.make_session()
