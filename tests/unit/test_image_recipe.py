"""Recipes (TOML): validation before anything is downloaded, the default recipe as the one
source of the defaults, and recipe data feeding the one cloud profile (both renderers)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from image_builder import build, cli, customize, exception, opts, recipe

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "etc" / "recipes" / "default.toml"


def settings(argv, monkeypatch):
    monkeypatch.delenv("OS_TOKEN", raising=False)
    monkeypatch.delenv("ZOL_GLANCE_TOKEN", raising=False)
    return build.Settings.from_conf(cli.load_conf(cli.parser().parse_args(argv)))


def test_default_recipe_is_valid_and_is_the_default_build(monkeypatch):
    r = recipe.load(DEFAULT)
    assert r.image["release"] == opts.DEFAULT_RECIPE["image"]["release"]
    plain = settings(["build"], monkeypatch)
    with_recipe = settings(["build", "--recipe", str(DEFAULT)], monkeypatch)
    a, b = dataclasses.asdict(plain), dataclasses.asdict(with_recipe)
    assert a.pop("recipe")["properties"] == b.pop("recipe")["properties"]
    assert not any(b.pop("recipe_profile").values()) and not a.pop("recipe_profile")
    assert a == b
    # one source: the options' defaults are the recipe's values
    defaults = {o.dest: o.default for o in opts.build_opts}
    assert defaults["packages"] == r.base and defaults["kernel_package"] == r.image["kernel"]
    assert build.Settings().release == r.image["release"] == plain.release


def write(tmp_path, text, name="r.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, key", [
    ("[image]\nrelase = 'trixie'\n", "image.relase"),
    ("[image]\nrelease = 'sid'\n", "image.release"),
    ("[image]\narch = 1\n", "image.arch"),
    ("[packages]\nadd = 'vim'\n", "packages.add"),
    ("[packages]\nadd = ['Bad Name']\n", "packages"),
    ("[[files]]\nsrc = 'nope'\ndest = '/etc/x'\n", "files[0].src"),
    ("[[files]]\nsrc = 'r.toml'\ndest = 'etc/x'\n", "files[0].dest"),
    ("[[files]]\nsrc = 'r.toml'\ndest = '/etc/x'\nmode = '999'\n", "files[0].mode"),
    ("[[files]]\nsrc = 'r.toml'\ndest = '/etc/x'\nowner = 'root'\n", "files[0].owner"),
    ("[[scripts]]\nphase = 'later'\nrun = 'true'\n", "scripts[0].phase"),
    ("[[scripts]]\nphase = 'after-install'\n", "scripts[0]"),
    ("[glance.properties]\nx = [1]\n", "glance.properties.x"),
    ("[nope]\n", "nope"),
    ("[image\n", "not valid TOML"),
])
def test_bad_recipe_names_file_and_key(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(exception.ConfigError) as err:
        recipe.load(path)
    assert str(path) in err.value.message and key in err.value.message


def test_bad_recipe_refused_before_anything_is_downloaded(tmp_path, capsys, monkeypatch):
    """The CLI exits 2 at option time: no output directory, no install started."""
    path = write(tmp_path, "[image]\nkernel = ''\n")
    out = tmp_path / "out"
    started = []
    monkeypatch.setattr(build.Builder, "run", lambda self: started.append(1))
    rc = cli.main(["build", "--recipe", str(path), "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "image.kernel" in err and str(path) in err, err
    assert not out.exists() and not started


def test_recipe_values_then_cli_flags(tmp_path, monkeypatch):
    (tmp_path / "motd").write_text("welcome\n")
    (tmp_path / "skel").mkdir()
    (tmp_path / "skel" / "a.conf").write_text("a=1\n")
    (tmp_path / "site.sh").write_text("echo site > /etc/site\n")
    path = write(tmp_path, """
[image]
release = "trixie"
kernel = "linux-image-amd64"
series = "Site Debian {version}"
[packages]
add = ["vim-tiny"]
remove = ["less"]
[[files]]
src = "motd"
dest = "/etc/motd"
mode = "0640"
owner = "root:adm"
[[files]]
src = "skel"
dest = "/etc/site.d"
[[scripts]]
phase = "after-install"
src = "site.sh"
[[scripts]]
phase = "before-cleanup"
run = "rm -f /etc/site.tmp"
[cloud_init]
config = { timezone = "Europe/Berlin" }
[glance.properties]
hw_vif_model = "e1000"
replace_frequency = "weekly"
""")
    s = settings(["build", "--recipe", str(path)], monkeypatch)
    assert (s.release, s.kernel_package, s.glance_series) == \
        ("trixie", "linux-image-amd64", "Site Debian {version}")
    assert "vim-tiny" in s.all_packages and "less" not in s.all_packages
    assert s.remove_packages == ["less"]
    assert s.recipe["properties"]["hw_vif_model"] == "e1000"
    assert s.recipe["properties"]["hw_disk_bus"] == "virtio"        # the default recipe's
    assert "welcome" not in str(s.public())                           # contents not in manifest
    s2 = settings(["build", "--recipe", str(path), "--release", "bookworm"], monkeypatch)
    assert s2.release == "bookworm"                                   # the flag wins

    profile = build.Builder(s).profile()
    steps = customize.steps(profile)
    writes = {st.path: st for st in steps if isinstance(st, customize.WriteFile)}
    assert writes["etc/motd"].content == "welcome\n" and writes["etc/motd"].mode == 0o640
    assert writes["etc/site.d/a.conf"].content == "a=1\n"
    assert "Europe/Berlin" in writes["etc/cloud/cloud.cfg.d/95-recipe.cfg"].content
    cmds = [st.argv for st in steps if isinstance(st, customize.Command)]
    assert ("chown", "root:adm", "/etc/motd") in cmds
    assert ("apt-get", "purge", "-y", "--auto-remove", "less") in cmds
    # phases: after-install first, before-cleanup before apt-get clean
    assert steps[1] == customize.Command(("/bin/sh", "/tmp/zol-recipe-after-install-0.sh"))
    clean = steps.index(customize.Command(("apt-get", "clean")))
    assert steps[clean - 2] == customize.Command(
        ("/bin/sh", "/tmp/zol-recipe-before-cleanup-0.sh"))
    # the same data reaches the installer's late script (one source)
    script = customize.render_shell(steps)
    assert "zol-recipe-after-install-0.sh" in script and "chown root:adm /etc/motd" in script

    tree = tmp_path / "tree"
    ran = []
    customize.apply_steps(tree, steps, runner=ran.append)
    assert (tree / "etc/motd").read_text() == "welcome\n"
    assert (tree / "etc/site.d/a.conf").read_text() == "a=1\n"
    assert not (tree / "tmp/zol-recipe-after-install-0.sh").exists()   # removed after
    assert ["/bin/sh", "/tmp/zol-recipe-after-install-0.sh"] in ran
    # JSON round trip (the chroot hook gets the profile as JSON)
    assert customize.Profile.from_json(profile.to_json()) == profile


def test_binary_file_refused(tmp_path):
    (tmp_path / "blob").write_bytes(b"\xff\xfe\x00")
    path = write(tmp_path, "[[files]]\nsrc = 'blob'\ndest = '/etc/blob'\n")
    with pytest.raises(exception.ConfigError, match="files\\[0\\].src.*not a UTF-8 text"):
        recipe.load(path)
