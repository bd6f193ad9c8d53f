"""A skipped test fails under CI (tests/ci_guard.py): checked on a throwaway test file in a child pytest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REASON = "a planned skip, to see the guard fail it"


def _pytest(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    # The child raises pytest's skip outcome itself: the guard's own self-test, not a test that skips for a
    # missing server (those install the server and fail under CI instead).
    test = tmp_path / "test_planned_skip.py"
    test.write_text(f"import pytest\n\n\ndef test_planned():\n    raise pytest.skip.Exception({REASON!r})\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # the guard alone: starts in a fraction of a second
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-c", os.devnull, "-p", "no:cacheprovider",
                           "-p", "tests.ci_guard", "--rootdir", str(tmp_path), str(test)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_a_skip_fails_under_ci(tmp_path):
    run = _pytest(tmp_path, "true")
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"skipped under CI: {REASON}" in run.stdout


def test_a_skip_stays_a_skip_outside_ci(tmp_path):
    for value in (None, "0", "false"):
        run = _pytest(tmp_path, value)
        assert run.returncode == 0 and "1 skipped" in run.stdout, run.stdout + run.stderr
