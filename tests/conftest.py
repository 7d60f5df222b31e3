"""Loads every fixture plugin under tests/plugins/ (one file per real component)."""
from pathlib import Path

pytest_plugins = sorted(
    "tests.plugins." + p.stem
    for p in (Path(__file__).parent / "plugins").glob("*.py")
    if p.stem != "__init__"
)
