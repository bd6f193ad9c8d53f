"""Blessing: the gates refuse worse or slice-regressing models and broken packages, and say by how much."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from raymlops.core.blessing import BlessingDecision, GatePolicy, bless
from raymlops.core.metrics import EvalResult
from raymlops.errors import ConfigError

POLICY = GatePolicy(primary_metric="roc_auc", min_primary=0.6, min_delta_vs_champion=0.0, max_slice_drop=0.05,
                    min_slice_rows=50, max_package_mb=200, max_load_memory_mb=2048)
GOOD_INFRA = {"loaded": True, "predict_ok": True, "output_shape_ok": True, "package_mb": 1.5,
              "peak_memory_mb": 400.0, "load_time_s": 0.8, "error": None}


def result(auc: float, slices: dict[str, tuple[float, int]] | None = None, fp: str = "fp1", **kw) -> EvalResult:
    slices = slices if slices is not None else {"north": (auc, 200), "south": (auc, 200)}
    return EvalResult(
        task=kw.get("task", "binary"),
        label="churned",
        metrics={"train": {"roc_auc": auc + 0.02}, "test": {"roc_auc": auc, "log_loss": 0.4}},
        rows={"test": sum(n for _, n in slices.values())},
        slices={"region": {v: {"rows": n, "roc_auc": a} for v, (a, n) in slices.items()}},
        notes=kw.get("notes", {}),
        test_fingerprint=fp,
    )


def gate(decision: BlessingDecision, name: str):
    return next(g for g in decision.gates if g.name == name)


def test_better_model_is_blessed():
    d = bless(result(0.85), result(0.80), GOOD_INFRA, POLICY)
    assert d.blessed and not d.failed
    assert gate(d, "vs_champion").verdict == "pass" and gate(d, "vs_champion").observed == pytest.approx(0.05)
    assert d.summary().startswith("BLESSED")


def test_worse_model_than_champion_is_refused_with_the_margin():
    d = bless(result(0.78), result(0.80), GOOD_INFRA, POLICY)
    assert not d.blessed
    g = gate(d, "vs_champion")
    assert g.verdict == "fail" and g.observed == pytest.approx(-0.02)
    summary = d.summary()
    assert "NOT BLESSED" in summary and "vs_champion" in summary and "short of the required 0.0000 by 0.0200" in summary


def test_min_delta_is_required_not_just_any_improvement():
    policy = GatePolicy(min_delta_vs_champion=0.01)
    assert not bless(result(0.805), result(0.80), None, policy).blessed
    assert bless(result(0.81), result(0.80), None, policy).blessed  # exactly the delta passes despite rounding


def test_model_bad_on_one_slice_but_good_overall_is_refused():
    challenger = result(0.86, {"north": (0.90, 200), "south": (0.72, 150)})
    champion = result(0.82, {"north": (0.82, 200), "south": (0.80, 150)})
    d = bless(challenger, champion, GOOD_INFRA, POLICY)
    assert not d.blessed
    assert gate(d, "vs_champion").verdict == "pass"
    south = gate(d, "slice region=south")
    assert south.verdict == "fail" and south.observed == pytest.approx(0.08)
    assert gate(d, "slice region=north").verdict == "pass"
    assert [g.name for g in d.failed] == ["slice region=south"]
    assert "region=south" in d.summary() and "by 0.0300" in d.summary()


def test_small_slices_are_reported_not_gated():
    challenger = result(0.86, {"north": (0.90, 200), "tiny": (0.10, 12)})
    champion = result(0.82, {"north": (0.82, 200), "tiny": (0.95, 12)})
    d = bless(challenger, champion, GOOD_INFRA, POLICY)
    tiny = gate(d, "slice region=tiny")
    assert d.blessed and tiny.verdict == "skip" and "12 test rows" in tiny.reason


def test_undefined_slice_metric_and_new_slice_are_skipped():
    challenger = result(0.86, {"north": (math.nan, 80), "east": (0.7, 90)})
    champion = result(0.82, {"north": (math.nan, 80)}, fp="fp1")
    d = bless(challenger, champion, None, POLICY)
    assert gate(d, "slice region=north").verdict == "skip"
    assert "no rows" in gate(d, "slice region=east").reason


def test_no_champion_applies_absolute_gates_only():
    d = bless(result(0.70), None, GOOD_INFRA, POLICY)
    assert d.blessed
    assert gate(d, "vs_champion").verdict == "skip" and gate(d, "vs_champion").reason == "no champion yet"
    assert gate(d, "slices").verdict == "skip"
    low = bless(result(0.55), None, GOOD_INFRA, POLICY)
    assert not low.blessed
    assert "below the minimum 0.6000 by 0.0500" in gate(low, "primary_metric").reason


def test_direction_aware_threshold_for_a_loss_metric():
    policy = GatePolicy(primary_metric="log_loss", min_primary=0.3, max_slice_drop=0.05)
    d = bless(result(0.8), None, None, policy)  # log_loss 0.4 > max 0.3
    g = gate(d, "primary_metric")
    assert g.verdict == "fail" and "above the maximum 0.3000 by 0.1000" in g.reason


def test_undefined_primary_metric_fails_closed_with_the_reason():
    ch = result(math.nan, notes={"test.roc_auc": "only one class (index 0) is present in all 90 rows"})
    d = bless(ch, None, None, POLICY)
    assert not d.blessed and "only one class" in gate(d, "primary_metric").reason


def test_champion_on_another_test_set_cannot_be_compared():
    d = bless(result(0.85), result(0.80, fp="other"), None, POLICY)
    g = gate(d, "vs_champion")
    assert g.verdict == "fail" and "different test set" in g.reason and "evaluate_champion_on" in g.reason


def test_infrastructure_failures_block():
    broken = {**GOOD_INFRA, "loaded": False, "predict_ok": False, "error": "load failed: PackageError: tampered"}
    d = bless(result(0.9), result(0.8), broken, POLICY)
    assert not d.blessed and "tampered" in gate(d, "package_loads").reason
    assert gate(d, "package_predicts").verdict == "skip"

    bad_shape = {**GOOD_INFRA, "output_shape_ok": False, "error": "expected 5 rows"}
    assert gate(bless(result(0.9), None, bad_shape, POLICY), "package_predicts").verdict == "fail"

    big = {**GOOD_INFRA, "package_mb": 250.0, "peak_memory_mb": 3000.0}
    d = bless(result(0.9), None, big, POLICY)
    assert {g.name for g in d.failed} == {"package_size", "load_memory"}
    assert "over the limit 200.0 MB by 50.0 MB" in gate(d, "package_size").reason


def test_no_infra_result_skips_infra_gates():
    d = bless(result(0.9), None, None, POLICY)
    assert d.blessed and gate(d, "package_loads").verdict == "skip"


def test_policy_validates_metric_names_and_task():
    with pytest.raises(ConfigError, match="evaluation.primary_metric"):
        GatePolicy(primary_metric="auc")
    with pytest.raises(ConfigError, match="not computed for task 'regression'"):
        bless(result(0.9, task="regression"), None, None, POLICY)


def test_policy_from_config_like_object():
    cfg = SimpleNamespace(primary_metric="rmse", min_primary=None, min_delta_vs_champion=0.1, max_slice_drop=1.0,
                          min_slice_rows=10, max_package_mb=50.0, max_load_memory_mb=512.0,
                          min_delta_vs_baseline=0.5)
    assert GatePolicy.from_config(cfg) == GatePolicy("rmse", None, 0.1, 1.0, 10, 50.0, 512.0, 0.5)
    from raymlops.config import load_config

    defaults = GatePolicy.from_config(load_config().evaluation)
    assert defaults.primary_metric == "roc_auc" and defaults.min_slice_rows == 50
    assert defaults.min_delta_vs_baseline == 0.0


def test_decision_round_trips_through_json_and_accepts_dicts():
    d = bless(result(0.78).to_dict(), result(0.80).to_dict(), GOOD_INFRA, POLICY)
    doc = json.loads(json.dumps(d.to_dict(), allow_nan=False))
    back = BlessingDecision.from_dict(doc)
    assert back.blessed is False and back.summary() == d.summary()
    assert [g.name for g in back.gates] == [g.name for g in d.gates]


# ------------------------------------------------------------------------------------------ naive baseline
def with_baseline(r: EvalResult, **baseline: float) -> EvalResult:
    r.baseline = dict(baseline)
    return r


def test_model_that_only_ties_the_naive_baseline_is_refused_naming_it():
    # A model that says "no churn" with the prior for everyone: AUC 0.5, exactly the baseline's.
    d = bless(with_baseline(result(0.5), roc_auc=0.5), None, GOOD_INFRA, GatePolicy(min_primary=None))
    g = gate(d, "vs_baseline")
    assert not d.blessed and g.verdict == "fail" and g.observed == 0.0
    assert "naive baseline (the training class prior (majority class)) 0.5000" in g.reason
    assert "does not beat the naive baseline" in d.summary()


def test_model_better_than_the_baseline_by_more_than_the_delta_passes():
    d = bless(with_baseline(result(0.8), roc_auc=0.5), None, GOOD_INFRA, POLICY)
    assert d.blessed and gate(d, "vs_baseline").verdict == "pass"
    assert gate(d, "vs_baseline").observed == pytest.approx(0.3)
    strict = GatePolicy(min_delta_vs_baseline=0.3)
    assert not bless(with_baseline(result(0.8), roc_auc=0.5), None, None, strict).blessed  # 0.3 is not more
    assert bless(with_baseline(result(0.81), roc_auc=0.5), None, None, strict).blessed


def test_baseline_gate_is_direction_aware_for_errors():
    policy = GatePolicy(primary_metric="log_loss", min_primary=None)
    worse = with_baseline(result(0.8), log_loss=0.35)  # the model's log_loss is 0.4: worse than the prior's
    g = gate(bless(worse, None, None, policy), "vs_baseline")
    assert g.verdict == "fail" and g.observed == pytest.approx(-0.05)
    better = with_baseline(result(0.8), log_loss=0.55)
    assert gate(bless(better, None, None, policy), "vs_baseline").verdict == "pass"


def test_baseline_gate_skips_when_absent_undefined_or_disabled():
    assert gate(bless(result(0.8), None, None, POLICY), "vs_baseline").verdict == "skip"  # nothing recorded
    undefined = with_baseline(result(0.8), roc_auc=math.nan)
    assert "undefined" in gate(bless(undefined, None, None, POLICY), "vs_baseline").reason
    off = GatePolicy(min_delta_vs_baseline=None)
    g = gate(bless(with_baseline(result(0.5), roc_auc=0.5), None, None, off), "vs_baseline")
    assert g.verdict == "skip" and "disabled" in g.reason
