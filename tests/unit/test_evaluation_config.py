"""The evaluation keys of the quality gates: the decision threshold, the baseline gate and the reference model."""

from __future__ import annotations

import pytest

from raymlops.config import load_config
from raymlops.errors import ConfigError


def test_defaults():
    ev = load_config(None).evaluation
    assert (ev.threshold, ev.threshold_objective, ev.min_delta_vs_baseline, ev.reference_max_rows) == (
        "auto", "f1", 0.0, 200_000)


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2", "true", "high"])
def test_a_threshold_outside_the_open_unit_interval_names_the_key(value):
    with pytest.raises(ConfigError, match=r"evaluation\.threshold: .*strictly between 0 and 1") as info:
        load_config(None, [f"evaluation.threshold={value}"])
    assert "auto" in str(info.value)  # the message says the other way too


def test_a_fixed_threshold_and_the_objectives():
    assert load_config(None, ["evaluation.threshold=0.3"]).evaluation.threshold == 0.3
    assert load_config(None, ["evaluation.threshold_objective=youden"]).evaluation.threshold_objective == "youden"
    with pytest.raises(ConfigError, match="evaluation.threshold_objective"):
        load_config(None, ["evaluation.threshold_objective=auc"])


def test_baseline_delta_is_non_negative_or_null_and_reference_rows_non_negative():
    assert load_config(None, ["evaluation.min_delta_vs_baseline=null"]).evaluation.min_delta_vs_baseline is None
    with pytest.raises(ConfigError, match="evaluation.min_delta_vs_baseline"):
        load_config(None, ["evaluation.min_delta_vs_baseline=-0.1"])
    with pytest.raises(ConfigError, match="evaluation.reference_max_rows"):
        load_config(None, ["evaluation.reference_max_rows=-1"])
