"""The example CI (examples/ci/github-actions.yml) runs what protects a delivery before it delivers: the slow tier
(serving, controller, delivery tests) as well as the fast ones, with redis-server installed."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ci" / "github-actions.yml"


def _runs(job: dict) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


def _marker(cmd: str) -> str | None:
    argv = shlex.split(cmd)
    return argv[argv.index("-m") + 1] if "-m" in argv else None


def test_the_delivery_waits_for_every_tier_including_the_slow_one():
    jobs = yaml.safe_load(EXAMPLE.read_text())["jobs"]
    needs = jobs["deliver"]["needs"]
    gating = [jobs[n] for n in ([needs] if isinstance(needs, str) else needs)]
    pytest_runs = [r for job in gating for r in _runs(job) if r.lstrip().startswith("pytest")]
    markers = {_marker(r) for r in pytest_runs if "tests/integration" in r or r.split() == ["pytest"]}
    # Either a run without a marker filter, or both halves of the split: `not slow` alone skips the delivery tests.
    assert None in markers or {"slow", "not slow"} <= markers, pytest_runs
    assert any("tests/unit" in r for r in pytest_runs)


def test_every_job_that_runs_integration_tests_installs_redis_server():
    for name, job in yaml.safe_load(EXAMPLE.read_text())["jobs"].items():
        runs = _runs(job)
        if any("tests/integration" in r for r in runs):
            assert any("apt-get install" in r and "redis-server" in r for r in runs), name
