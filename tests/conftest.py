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


# -- per-tier time (the CI budget is per run; this says where it goes) --------------------------
_tier_time: dict[str, list[float]] = {}   # tier -> [seconds in setup+call+teardown, tests]


def _tier(item_or_report) -> str:
    path = str(getattr(item_or_report, "fspath", "") or getattr(item_or_report, "nodeid", ""))
    for tier in ("unit", "functional", "system"):
        if "tests/%s/" % tier in path.replace(os.sep, "/") or path.startswith(tier + "/"):
            return tier
    return "other"


def pytest_runtest_logreport(report):
    acc = _tier_time.setdefault(_tier(report), [0.0, 0])
    acc[0] += report.duration
    if report.when == "call":
        acc[1] += 1


def pytest_terminal_summary(terminalreporter):
    if not _tier_time:
        return
    terminalreporter.section("time per tier (setup + call + teardown, session fixtures "
                             "counted where first used)")
    total = sum(v[0] for v in _tier_time.values())
    for tier in ("unit", "functional", "system", "other"):
        if tier in _tier_time:
            secs, n = _tier_time[tier]
            terminalreporter.write_line("%-10s %5d tests %8.1f s (%4.1f min)"
                                        % (tier, n, secs, secs / 60))
    terminalreporter.write_line("%-10s %14.1f s (%4.1f min)" % ("all", total, total / 60))
