"""Loads every fixture plugin under tests/plugins/ (one file per real component)."""
from pathlib import Path

pytest_plugins = sorted(
    "tests.plugins." + p.stem
    for p in (Path(__file__).parent / "plugins").glob("*.py")
    if p.stem != "__init__"
)

import os  # noqa: E402

import pytest  # noqa: E402

REAL_TIERS = ("functional", "system")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "ci_may_skip(reason): a skip CI accepts because the machine kind cannot run "
        "it at all (e.g. no KVM); the reason is printed")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI, a skip in a real-component tier hides a missing install step: fail it."""
    outcome = yield
    rep = outcome.get_result()
    if not (os.environ.get("CI") and rep.skipped):
        return
    tier = item.path.parent.name
    if tier in REAL_TIERS and item.get_closest_marker("ci_may_skip") is None:
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = "skipped in CI (%s tier must run): %s" % (tier, reason)
