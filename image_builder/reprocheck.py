"""`zol-image build --check-repro`: build twice from the same archive state and compare.

The first build runs as configured (verify, upload); the second, with the first one's
SOURCE_DATE_EPOCH, skips verify, upload and the tree cache (it installs afresh) and goes to
OUTPUT_DIR/.repro-NAME.  Identical:
the second build is deleted.  Different: it is kept, and the report lists every differing file
inside the root filesystem (not only the hashes).  The report is written to
OUTPUT_DIR/NAME/repro-check.json.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from image_builder import build, exception, repro, run

LOG = logging.getLogger(__name__)


def files_of(out: Path, manifest: dict[str, Any]) -> dict[str, str]:
    return {role: str(out / meta["path"]) for role, meta in manifest["files"].items()}


def check(settings: build.Settings, fault: str | None = None) -> dict[str, Any]:
    start = time.monotonic()
    first = build.Builder(settings, fault=fault)
    m1 = first.run()
    epoch = (m1.get("repro") or {}).get("source_date_epoch")
    if not epoch:
        raise exception.ConfigError(reason="--check-repro needs the chroot backend "
                                          "(the first build recorded no SOURCE_DATE_EPOCH)")
    second_dir = Path(settings.output_dir).resolve() / (".repro-%s" % first.name)
    if second_dir.exists():
        run.remove_tree(second_dir)
    # The second build installs afresh (never from the tree cache the first one filled).
    s2 = dataclasses.replace(settings, output_dir=str(second_dir), verify=False, upload=False,
                             source_date_epoch=epoch, tree_cache=False)
    LOG.info("check-repro: second build with SOURCE_DATE_EPOCH=%d in %s", epoch, second_dir)
    second = build.Builder(s2)
    m2 = second.run()
    report = repro.compare_files(files_of(first.out, m1), files_of(second.out, m2),
                                 second_dir)
    report.update(source_date_epoch=epoch, first=str(first.out), second=str(second.out),
                  package_cache={"first": (m1.get("repro") or {}).get("package_cache"),
                                 "second": (m2.get("repro") or {}).get("package_cache")},
                  seconds={"first": m1["timings"].get("total"),
                           "second": m2["timings"].get("total"),
                           "total": round(time.monotonic() - start, 1)})
    (first.out / "repro-check.json").write_text(json.dumps(report, indent=2) + "\n")
    if report["identical"]:
        run.remove_tree(second_dir)
        report["second"] = None
        LOG.info("check-repro: %s reproduced bit for bit (%s)", first.name,
                 ", ".join("%s %s" % (r, h["first"][:12]) for r, h in report["files"].items()))
    else:
        for line in report["differences"]:
            LOG.error("check-repro: %s", line)
    return report
