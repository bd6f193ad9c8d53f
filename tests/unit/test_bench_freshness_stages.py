"""bench_freshness's stage arithmetic: stages lie between consecutive recorded events and add up to the total."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "bench_freshness", Path(__file__).resolve().parents[2] / "benchmarks" / "bench_freshness.py")
bench_freshness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_freshness)


def test_stages_partition_landing_to_first_answer_and_charge_gaps_to_the_next_step():
    steps = {"train": (30.0, 50.0), "validate": (12.0, 20.0), "prepare": (21.0, 29.0)}  # unordered, with gaps
    stages = bench_freshness._stages(t_land=10.0, t_detect=11.0, steps=steps, t_result=52.0, t_tested=55.0,
                                     t_first=56.5)
    assert list(stages) == ["detect", "launch", "validate", "prepare", "train", "collect_result",
                            "pre_exposure_tests", "deploy_to_first_answer"]
    assert stages["launch"] == 1.0 and stages["validate"] == 8.0
    assert stages["prepare"] == 9.0 and stages["train"] == 21.0  # the 1 s gaps before them are theirs
    assert sum(stages.values()) == pytest.approx(56.5 - 10.0)
