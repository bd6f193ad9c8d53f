"""Under CI nothing passes by being skipped: a test that skips (a missing server, a missing package) fails instead.

Registered by ``tests/conftest.py``; on when the ``CI`` environment variable is set (GitHub Actions sets it,
``.ci/run`` exports it). Locally a skip stays a skip, with its reason in the summary (``-ra``).
"""

from __future__ import annotations

import os

import pytest


def ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and ci() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = (f"skipped under CI: {reason}\nCI runs every test: install what it needs (`make test` "
                           "installs the system packages as root), or unset CI to allow skips locally")
