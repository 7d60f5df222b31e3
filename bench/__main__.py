"""`python -m bench [NAME ...]`: run the named benchmarks (default: list them)."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path


def available() -> list[str]:
    return sorted(p.stem for p in Path(__file__).parent.glob("*.py")
                  if not p.stem.startswith("_"))


def main(argv: list[str]) -> int:
    if not argv:
        print("benchmarks: %s\nrun: python -m bench NAME [NAME ...]" % " ".join(available()))
        return 0
    for name in argv:
        if name not in available():
            print("no benchmark %r; choose from: %s" % (name, " ".join(available())),
                  file=sys.stderr)
            return 2
    rc = 0
    for name in argv:
        print("== bench/%s" % name, flush=True)
        rc |= int(importlib.import_module("bench." + name).main() or 0)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
