"""Volume types as ZFS policy: extra specs -> zvol properties, and the retype decision.

A volume type's extra specs choose ZFS properties per volume (doc/operator-guide.md, "Volume
types"):

* ``zol:<property>`` - one of ZPROPS below, each with its allow-list of values (the same lists
  as the SAN wrapper's and doc/san-protocol.md's ZPROP table; the contract test keeps the three
  equal).  ``zol:volblocksize`` takes 4K..128K (or bytes) and is fixed at create.
* ``provisioning:type`` - ``thin`` (sparse zvol) or ``thick`` (refreservation=auto); absent:
  the backend's ``san_thin_provision``.
* other keys (``volume_backend_name``, ``multiattach``, ``RESKEY:...``, scheduler capability
  keys) are Cinder's and ignored here; an unknown ``zol:`` key is an error (a typo must not
  silently give a database the wrong sync policy).

This module knows neither Cinder nor SSH (plain data in, plain data out), so the allow-lists
and the retype decision table are unit-tested on their own.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

SCOPE = "zol:"
PROVISIONING_KEY = "provisioning:type"

_ZSTD = tuple(f"zstd-{n}" for n in range(1, 20))
_ZSTD_FAST = tuple(f"zstd-fast-{n}" for n in (*range(1, 11), *range(20, 101, 10), 500, 1000))

# Property -> allowed values, in the order the doc lists them.  Exactly the wrapper's ZPROPS.
ZPROPS: dict[str, tuple[str, ...]] = {
    "compression": ("off", "on", "lz4", "zle", "lzjb", "gzip",
                    *(f"gzip-{n}" for n in range(1, 10)), "zstd", *_ZSTD, "zstd-fast",
                    *_ZSTD_FAST),
    "sync": ("standard", "always", "disabled"),
    "logbias": ("latency", "throughput"),
    "copies": ("1", "2", "3"),
    "primarycache": ("all", "none", "metadata"),
    "secondarycache": ("all", "none", "metadata"),
    "dedup": ("off", "on", "verify", "sha256", "sha256,verify", "sha512", "sha512,verify",
              "skein", "skein,verify"),
    "checksum": ("on", "fletcher4", "sha256", "sha512", "skein", "edonr"),
}
BLOCKSIZES = (4096, 8192, 16384, 32768, 65536, 131072)
_BLOCKSIZE_NAMES = {f"{b // 1024}K": b for b in BLOCKSIZES}
# What an omitted property means for a zvol created below a parent with default properties:
# the value `zfs inherit` gives back on retype.
ALL_KEYS = (*ZPROPS, "volblocksize")


class PolicyError(ValueError):
    """A bad extra spec: says which type, which key, which value and what is allowed."""

    def __init__(self, type_name: str, key: str, value: object, allowed: str) -> None:
        self.type_name, self.key, self.value, self.allowed = type_name, key, value, allowed
        super().__init__(f"volume type {type_name!r}: extra spec {key}={value!r} is not "
                         f"allowed; allowed values: {allowed}")


@dataclass(frozen=True)
class Policy:
    """What a volume type asks of a zvol."""

    props: Mapping[str, str] = field(default_factory=dict)   # changeable ZFS properties
    volblocksize: int | None = None                          # fixed at create
    thin: bool | None = None                                 # None: the backend's default

    def create_props(self) -> dict[str, str]:
        return dict(sorted(self.props.items()))

    def metadata(self, thin: bool) -> dict[str, str]:
        """What the volume reports (Cinder volume metadata, visible to its owner and admin)."""
        md = {f"zol:{k}": v for k, v in sorted(self.props.items())}
        if self.volblocksize:
            md["zol:volblocksize"] = str(self.volblocksize)
        md["zol:provisioning"] = "thin" if thin else "thick"
        return md


def parse_blocksize(type_name: str, key: str, raw: str) -> int:
    text = raw.strip()
    value = _BLOCKSIZE_NAMES.get(text.upper())
    if value is None and text.isdigit() and int(text) in BLOCKSIZES:
        value = int(text)
    if value is None:
        raise PolicyError(type_name, key, raw, ", ".join(_BLOCKSIZE_NAMES) +
                          " (or the same in bytes)")
    return value


def parse(type_name: str, extra_specs: Mapping[str, str] | None) -> Policy:
    """The Policy of a volume type's extra specs; PolicyError on the first bad one."""
    props: dict[str, str] = {}
    blocksize = None
    thin = None
    for key, raw in sorted((extra_specs or {}).items()):
        if key == PROVISIONING_KEY:
            value = str(raw).strip().lower()
            if value not in ("thin", "thick"):
                raise PolicyError(type_name, key, raw, "thin, thick")
            thin = value == "thin"
            continue
        if not key.startswith(SCOPE):
            continue
        name = key[len(SCOPE):]
        if name == "volblocksize":
            blocksize = parse_blocksize(type_name, key, str(raw))
            continue
        if name not in ZPROPS:
            raise PolicyError(type_name, key, raw,
                              "(no such key) keys: " + ", ".join(SCOPE + k for k in ALL_KEYS))
        value = str(raw).strip().lower()
        if value not in ZPROPS[name]:
            raise PolicyError(type_name, key, raw, ", ".join(ZPROPS[name]))
        props[name] = value
    return Policy(props=props, volblocksize=blocksize, thin=thin)


# ------------------------------------------------------------------------------------------
# Retype decision table
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RetypePlan:
    """How to go from one policy to another on the same backend.

    kind: "none" (nothing differs), "in-place" (zfs set/inherit, refreservation), "copy"
    (volblocksize differs: a new zvol and a block copy on the SAN), or "migrate" (the driver
    cannot do it: Cinder must migrate, if its migration_policy allows).
    """

    kind: str
    set: Mapping[str, str] = field(default_factory=dict)
    inherit: tuple[str, ...] = ()
    thick: bool | None = None         # None: refreservation unchanged
    reason: str = ""


def plan_retype(old: Policy, new: Policy, default_thin: bool, current_blocksize: int | None,
                same_backend: bool = True, has_snapshots: bool = False,
                attached: bool = False, copy_allowed: bool = True) -> RetypePlan:
    """The retype decision table (tests/unit/test_policy.py lists every row)."""
    if not same_backend:
        return RetypePlan("migrate", reason="another backend: Cinder migrates the volume")
    set_ = {k: v for k, v in new.props.items() if old.props.get(k) != v}
    inherit = tuple(sorted(k for k in old.props if k not in new.props))
    old_thin = default_thin if old.thin is None else old.thin
    new_thin = default_thin if new.thin is None else new.thin
    thick = None if old_thin == new_thin else not new_thin
    blocksize_changes = (new.volblocksize is not None and
                         new.volblocksize != current_blocksize)
    if blocksize_changes:
        if has_snapshots:
            return RetypePlan("migrate", reason="volblocksize differs and the volume has "
                                                "snapshots (a copy would lose them)")
        if attached:
            return RetypePlan("migrate", reason="volblocksize differs and the volume is "
                                                "attached")
        if not copy_allowed:
            return RetypePlan("migrate", reason="volblocksize differs and zol_retype_copy "
                                                "is off")
        return RetypePlan("copy", set=dict(new.props), thick=not new_thin,
                          reason=f"volblocksize {current_blocksize} -> {new.volblocksize}")
    if not set_ and not inherit and thick is None:
        return RetypePlan("none")
    return RetypePlan("in-place", set=set_, inherit=inherit, thick=thick)
