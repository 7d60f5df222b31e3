"""Verbatim SAN outputs captured from the real SAN VM (tests/fixtures/san/capture.py)."""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path

SAN_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "san"


@cache
def capture(name: str) -> dict:
    """{"argv", "via", "exit_code", "stdout", "stderr"} of one capture."""
    return json.loads((SAN_DIR / (name + ".json")).read_text())
