"""Recipes: the admin's customisation of an image, declared in a TOML file (Python's tomllib).

    [image]      release, arch, kernel, name, series, format, hostname, locales, cloud_init
    [packages]   base (replaces the default list), add, remove
    [[files]]    src (relative to the recipe), dest, mode ("0644"), owner ("root:root")
    [[scripts]]  phase ("after-install" | "before-cleanup"), src or run
    [cloud_init] config = {...}            written as /etc/cloud/cloud.cfg.d/95-recipe.cfg
    [glance]     properties = {...}        merged over the default recipe's properties

``load()`` validates everything (unknown keys, types, choices, files that must exist) and raises
ConfigError naming the file and the key, before anything is downloaded.  ``etc/recipes/
default.toml`` is the default build; opts.py takes its option defaults from it.
"""
from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from image_builder import exception, opts

PHASES = ("after-install", "before-cleanup")
FORMATS = ("ami", "qcow2", "raw")
OWNER = re.compile(r"[a-z_][a-z0-9_-]{0,31}:[a-z_][a-z0-9_-]{0,31}|\d+:\d+")
DEST = re.compile(r"/[A-Za-z0-9_./@+-]+")
MAX_FILE = 1 << 20       # files travel inside the profile (JSON, and the installer's script)

# key -> (type, choices or None)
IMAGE_KEYS: dict[str, tuple[type | tuple[type, ...], tuple | None]] = {
    "release": (str, opts.RELEASES), "arch": (str, opts.ARCHES), "kernel": (str, None),
    "name": (str, None), "series": (str, None), "format": (str, FORMATS),
    "hostname": (str, None), "locales": (list, None), "cloud_init": (bool, None),
}
# recipe key -> (oslo group, option)
CONF_MAP = {"image.release": ("build", "release"), "image.arch": ("build", "arch"),
            "image.kernel": ("build", "kernel_package"), "image.name": ("build", "name"),
            "image.series": ("glance", "series"), "image.format": ("build", "format"),
            "image.hostname": ("build", "hostname"), "image.locales": ("build", "locales"),
            "image.cloud_init": ("build", "cloud_init"), "packages.base": ("build", "packages")}


@dataclass(frozen=True)
class FileCopy:
    dest: str          # absolute path inside the image
    content: str
    mode: int = 0o644
    owner: str = "root:root"


@dataclass(frozen=True)
class Script:
    phase: str
    name: str          # where it came from (file name or "inline #N"), for logs
    text: str


@dataclass
class Recipe:
    path: str
    image: dict[str, Any] = field(default_factory=dict)
    base: list[str] | None = None
    add: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    files: list[FileCopy] = field(default_factory=list)
    scripts: list[Script] = field(default_factory=list)
    cloud_config: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, str] = field(default_factory=dict)

    def overrides(self) -> dict[tuple[str, str], Any]:
        """(group, option) -> value for everything this recipe sets."""
        out: dict[tuple[str, str], Any] = {}
        for key, value in self.image.items():
            out[CONF_MAP["image." + key]] = value
        if self.base is not None:
            out[CONF_MAP["packages.base"]] = list(self.base)
        return out

    def profile_data(self) -> dict[str, Any]:
        """What the cloud profile (customize.Profile) needs from the recipe."""
        return {"files": [{"path": f.dest.lstrip("/"), "content": f.content, "mode": f.mode,
                           "owner": f.owner} for f in self.files],
                "scripts": [{"phase": s.phase, "name": s.name, "text": s.text}
                            for s in self.scripts],
                "cloud_config": cloud_config_text(self.cloud_config),
                "remove_packages": list(self.remove)}

    def public(self) -> dict[str, Any]:
        """For the manifest: what the recipe asked for (file contents as sha256 + size)."""
        import hashlib
        return {"path": self.path, "image": self.image, "base": self.base, "add": self.add,
                "remove": self.remove, "cloud_config": self.cloud_config,
                "properties": self.properties,
                "files": [{"dest": f.dest, "mode": "%04o" % f.mode, "owner": f.owner,
                           "sha256": hashlib.sha256(f.content.encode()).hexdigest()}
                          for f in self.files],
                "scripts": [{"phase": s.phase, "name": s.name,
                             "sha256": hashlib.sha256(s.text.encode()).hexdigest()}
                            for s in self.scripts]}


def cloud_config_text(config: dict[str, Any]) -> str:
    """JSON is YAML: cloud-init reads this file as cloud-config."""
    if not config:
        return ""
    return "# zol-image recipe\n" + json.dumps(config, indent=2, sort_keys=True) + "\n"


class _Checker:
    def __init__(self, path: str):
        self.path = path

    def fail(self, key: str, why: str) -> exception.ConfigError:
        return exception.ConfigError(reason="recipe %s: %s: %s" % (self.path, key, why))

    def table(self, data: dict, key: str, allowed: tuple[str, ...]) -> dict:
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table ([%s])" % key)
        for k in value:
            if k not in allowed:
                raise self.fail("%s.%s" % (key, k), "unknown key (known: %s)"
                                % ", ".join(allowed))
        return value

    def strings(self, value: Any, key: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(key, "must be a list of non-empty strings, got %r" % (value,))
        return list(value)


def load(path: str | os.PathLike) -> Recipe:
    """Parse and validate a recipe; every error names the file and the key."""
    path = os.fspath(path)
    c = _Checker(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise exception.ConfigError(reason="recipe %s does not exist" % path) from None
    except tomllib.TOMLDecodeError as exc:
        raise exception.ConfigError(reason="recipe %s is not valid TOML: %s" % (path, exc)) \
            from None
    for key in data:
        if key not in ("image", "packages", "files", "scripts", "cloud_init", "glance"):
            raise c.fail(key, "unknown section (known: image, packages, files, scripts, "
                              "cloud_init, glance)")
    r = Recipe(path=os.path.abspath(path))
    here = Path(path).resolve().parent

    image = c.table(data, "image", tuple(IMAGE_KEYS))
    for key, value in image.items():
        typ, choices = IMAGE_KEYS[key]
        if not isinstance(value, typ) or (typ is str and not value):
            raise c.fail("image." + key, "must be a %s, got %r" % (typ.__name__, value))
        if choices and value not in choices:
            raise c.fail("image." + key, "%r is not one of %s" % (value, ", ".join(choices)))
        if key == "locales":
            c.strings(value, "image.locales")
        r.image[key] = value

    pk = c.table(data, "packages", ("base", "add", "remove", "install"))
    if "install" in pk:          # the obvious spelling: same as add
        pk = dict(pk, add=list(pk.get("add", [])) + c.strings(pk["install"], "packages.install"))
    if "base" in pk:
        r.base = c.strings(pk["base"], "packages.base")
    r.add = c.strings(pk.get("add", []), "packages.add")
    r.remove = c.strings(pk.get("remove", []), "packages.remove")
    for name in r.add + r.remove + (r.base or []):
        if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", name):
            raise c.fail("packages", "%r is not a Debian package name" % name)

    files = data.get("files", [])
    if not isinstance(files, list):
        raise c.fail("files", "must be an array of tables ([[files]])")
    for i, entry in enumerate(files):
        key = "files[%d]" % i
        if not isinstance(entry, dict):
            raise c.fail(key, "must be a table")
        for k in entry:
            if k not in ("src", "dest", "mode", "owner"):
                raise c.fail("%s.%s" % (key, k), "unknown key (known: src, dest, mode, owner)")
        for k in ("src", "dest"):
            if not isinstance(entry.get(k), str) or not entry[k]:
                raise c.fail("%s.%s" % (key, k), "required (a string)")
        dest = entry["dest"]
        if not DEST.fullmatch(dest) or ".." in dest.split("/"):
            raise c.fail(key + ".dest", "%r must be an absolute plain path" % dest)
        mode = entry.get("mode", "0644")
        if not isinstance(mode, str) or not re.fullmatch(r"0?[0-7]{3,4}", mode):
            raise c.fail(key + ".mode", "%r must be an octal string such as \"0644\"" % (mode,))
        owner = entry.get("owner", "root:root")
        if not isinstance(owner, str) or not OWNER.fullmatch(owner):
            raise c.fail(key + ".owner", "%r must be USER:GROUP" % (owner,))
        src = here / entry["src"]
        if not src.exists():
            raise c.fail(key + ".src", "%s does not exist" % src)
        sources = [(src, dest)] if src.is_file() else [
            (p, dest.rstrip("/") + "/" + str(p.relative_to(src)))
            for p in sorted(src.rglob("*")) if p.is_file()]
        for p, d in sources:
            if p.stat().st_size > MAX_FILE:
                raise c.fail(key + ".src", "%s is larger than %d bytes" % (p, MAX_FILE))
            try:
                text = p.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise c.fail(key + ".src", "%s is not a UTF-8 text file (only text files are "
                                           "copied)" % p) from None
            if not DEST.fullmatch(d):
                raise c.fail(key + ".src", "%s: destination %r is not a plain path" % (p, d))
            r.files.append(FileCopy(d, text, int(mode, 8), owner))

    scripts = data.get("scripts", [])
    if not isinstance(scripts, list):
        raise c.fail("scripts", "must be an array of tables ([[scripts]])")
    for i, entry in enumerate(scripts):
        key = "scripts[%d]" % i
        if not isinstance(entry, dict):
            raise c.fail(key, "must be a table")
        for k in entry:
            if k not in ("phase", "src", "run"):
                raise c.fail("%s.%s" % (key, k), "unknown key (known: phase, src, run)")
        phase = entry.get("phase")
        if phase not in PHASES:
            raise c.fail(key + ".phase", "%r is not one of %s" % (phase, ", ".join(PHASES)))
        if ("src" in entry) == ("run" in entry):
            raise c.fail(key, "give exactly one of src (a file) or run (inline commands)")
        if "src" in entry:
            src = here / str(entry["src"])
            if not src.is_file():
                raise c.fail(key + ".src", "%s does not exist" % src)
            r.scripts.append(Script(phase, src.name, src.read_text()))
        else:
            if not isinstance(entry["run"], str) or not entry["run"].strip():
                raise c.fail(key + ".run", "must be a non-empty string")
            r.scripts.append(Script(phase, "inline #%d" % i, entry["run"]))

    ci = c.table(data, "cloud_init", ("config",))
    if "config" in ci:
        if not isinstance(ci["config"], dict):
            raise c.fail("cloud_init.config", "must be a table")
        r.cloud_config = ci["config"]

    gl = c.table(data, "glance", ("properties",))
    props = gl.get("properties", {})
    if not isinstance(props, dict):
        raise c.fail("glance.properties", "must be a table")
    for k, v in props.items():
        if not re.fullmatch(r"[A-Za-z0-9_:.-]{1,255}", k):
            raise c.fail("glance.properties." + k, "not a valid property name")
        if isinstance(v, bool):
            v = "true" if v else "false"
        if not isinstance(v, (str, int, float)):
            raise c.fail("glance.properties." + k, "must be a string or a number")
        r.properties[k] = str(v)
    return r
