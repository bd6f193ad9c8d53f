"""Metrics against hand computations and scipy (scikit-learn is not installed: its definitions are re-derived)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import mannwhitneyu, rankdata

from raymlops.core import metrics as M
from raymlops.errors import DataError


def _pairwise_auc(y, s):
    """AUC by definition: share of (positive, negative) pairs ordered correctly, ties counting half."""
    pos, neg = s[y == 1], s[y == 0]
    wins = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)]
    return float(np.mean(wins))


# ------------------------------------------------------------------------------------------------ roc_auc
def test_auc_known_value_with_a_tie():
    y = np.array([0, 1, 1, 0, 1])
    s = np.array([0.1, 0.9, 0.4, 0.4, 0.8])
    assert M.roc_auc(y, s) == pytest.approx(5.5 / 6)


def test_auc_perfect_worst_and_constant():
    y = np.array([0, 0, 1, 1])
    assert M.roc_auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert M.roc_auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert M.roc_auc(y, np.full(4, 0.5)) == 0.5  # all tied: no information


def test_auc_single_class_is_nan_with_a_reason():
    y = np.ones(7, dtype=int)
    assert math.isnan(M.roc_auc(y, np.linspace(0, 1, 7)))
    values, notes = M.explain_metrics("binary", y, {"probability": np.linspace(0, 1, 7)})
    assert math.isnan(values["roc_auc"])
    assert "one class" in notes["roc_auc"] and "7 rows" in notes["roc_auc"]
    assert values["accuracy"] == pytest.approx(4 / 7)  # the other metrics stay defined (4 scores >= 0.5)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 5)), min_size=2, max_size=40))
def test_auc_matches_pairwise_definition_and_mann_whitney(pairs):
    y = np.array([p[0] for p in pairs])
    s = np.array([p[1] for p in pairs], dtype=float) / 5  # few distinct values: many ties
    if y.min() == y.max():
        assert math.isnan(M.roc_auc(y, s))
        return
    auc = M.roc_auc(y, s)
    assert auc == pytest.approx(_pairwise_auc(y, s))
    u = mannwhitneyu(s[y == 1], s[y == 0]).statistic
    assert auc == pytest.approx(u / ((y == 1).sum() * (y == 0).sum()))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=1, max_size=50))
def test_average_ranks_match_scipy(values):
    x = np.array(values, dtype=float)
    np.testing.assert_allclose(M._average_ranks(x), rankdata(x, method="average"))


# ------------------------------------------------------------------------------------- other binary metrics
def test_accuracy_f1_log_loss_known_values():
    y = np.array([1, 1, 0, 0, 1, 0])
    pred = np.array([1, 0, 0, 1, 1, 0])
    assert M.accuracy(y, pred) == pytest.approx(4 / 6)
    # tp=2, fp=1, fn=1 -> precision 2/3, recall 2/3
    assert M.f1(y, pred) == pytest.approx(2 / 3)
    p = np.array([0.9, 0.2, 0.7])
    expected = -(np.log(0.9) + np.log(0.8) + np.log(0.7)) / 3
    assert M.log_loss(np.array([1, 0, 1]), p) == pytest.approx(expected)


def test_f1_without_positives_is_zero_like_sklearn():
    assert M.f1(np.zeros(4), np.zeros(4)) == 0.0


def test_log_loss_is_clipped_for_confident_mistakes():
    loss = M.log_loss(np.array([1, 0]), np.array([0.0, 1.0]))
    assert math.isfinite(loss) and loss == pytest.approx(-math.log(1e-15), rel=1e-4)
    assert M.log_loss(np.array([1, 0]), np.array([1.0, 0.0])) == pytest.approx(0.0, abs=1e-12)


def test_binary_compute_metrics_uses_label_output_and_classes():
    y = np.array(["no", "yes", "yes", "no"])
    out = {"probability": np.array([0.2, 0.7, 0.4, 0.6]), "label": np.array([0, 1, 1, 0])}  # label: indices
    values = M.compute_metrics("binary", y, out, classes=["no", "yes"])
    assert values["accuracy"] == 1.0  # the label output wins over thresholding the probability at 0.5
    assert values["roc_auc"] == pytest.approx(0.75)
    assert set(values) == set(M.metrics_for_task("binary"))


def test_binary_labels_must_be_zero_one_without_classes():
    with pytest.raises(DataError, match="classes"):
        M.compute_metrics("binary", np.array([1, 2, 2]), {"probability": np.array([0.1, 0.5, 0.9])})
    with pytest.raises(DataError, match="not among the model's classes"):
        M.compute_metrics("binary", np.array(["a", "c"]), {"probability": np.array([0.1, 0.9])}, classes=["a", "b"])


def test_missing_output_key_names_the_task():
    with pytest.raises(DataError, match="'probability'"):
        M.compute_metrics("binary", np.array([0, 1]), {"value": np.array([0.1, 0.9])})


def test_non_finite_predictions_make_every_metric_nan_with_a_reason():
    values, notes = M.explain_metrics("binary", np.array([0, 1, 1]), {"probability": np.array([0.1, np.nan, 0.9])})
    assert all(math.isnan(v) for v in values.values())
    assert "1 of 3 predictions" in notes["roc_auc"]


def test_no_rows_gives_nan():
    values, notes = M.explain_metrics("binary", np.array([], dtype=int), {"probability": np.array([])})
    assert all(math.isnan(v) for v in values.values()) and notes["accuracy"] == "no rows to evaluate"


# ------------------------------------------------------------------------------------------- multiclass
def test_multiclass_metrics_known_values():
    y = np.array([0, 1, 2, 2, 1, 0])
    probs = np.array(
        [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.1, 0.5, 0.4], [0.3, 0.4, 0.3], [0.4, 0.4, 0.2]]
    )
    values = M.compute_metrics("multiclass", y, {"probabilities": probs})
    pred = probs.argmax(axis=1)
    assert values["accuracy"] == pytest.approx(np.mean(pred == y))
    expected_auc = np.mean([_pairwise_auc((y == c).astype(int), probs[:, c]) for c in range(3)])
    assert values["roc_auc"] == pytest.approx(expected_auc)
    assert values["log_loss"] == pytest.approx(-np.mean(np.log(probs[np.arange(6), y])))
    # per-class F1 by hand: class 0 tp2 -> 1.0; class 1 tp2 fp1 fn0 -> 0.8; class 2 tp1 fn1 -> 2/3
    assert values["f1"] == pytest.approx((1.0 + 0.8 + 2 / 3) / 3)


def test_multiclass_string_classes_and_absent_classes():
    classes = ["a", "b", "c"]
    y = np.array(["a", "b", "a", "b"])  # class c never occurs: left out of the macro AUC
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.3, 0.6, 0.1]])
    values = M.compute_metrics("multiclass", y, {"probabilities": probs}, classes=classes)
    assert values["roc_auc"] == 1.0 and values["accuracy"] == 1.0


def test_multiclass_log_loss_renormalises_clipped_rows():
    probs = np.array([[1.0, 0.0, 0.0]])
    assert M.multiclass_log_loss(np.array([0]), probs) == pytest.approx(0.0, abs=1e-12)
    assert math.isfinite(M.multiclass_log_loss(np.array([2]), probs))


# ------------------------------------------------------------------------------------------- regression
def test_regression_metrics_known_values():
    y = np.array([3.0, -0.5, 2.0, 7.0])
    p = np.array([2.5, 0.0, 2.0, 8.0])
    values = M.compute_metrics("regression", y, {"value": p})
    assert values["rmse"] == pytest.approx(math.sqrt(0.375))
    assert values["mae"] == pytest.approx(0.5)
    # scikit-learn's documented example for r2_score
    assert values["r2"] == pytest.approx(0.9486081370449679)


def test_r2_constant_target_is_nan_with_reason_and_perfect_fit_is_one():
    values, notes = M.explain_metrics("regression", np.full(3, 2.0), {"value": np.array([1.0, 2.0, 3.0])})
    assert math.isnan(values["r2"]) and "constant" in notes["r2"]
    assert M.r2(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 1.0


def test_metric_direction():
    assert {m: M.metric_direction(m) for m in ("log_loss", "rmse", "mae")} == dict.fromkeys(
        ("log_loss", "rmse", "mae"), "min"
    )
    assert M.metric_direction("roc_auc") == M.metric_direction("r2") == "max"
    with pytest.raises(ValueError, match="known metrics"):
        M.metric_direction("auc")


# ------------------------------------------------------------------------------------------------ slices
def test_sliced_metrics_match_metrics_on_each_subset():
    rng = np.random.default_rng(0)
    n = 300
    y = rng.integers(0, 2, n)
    p = np.clip(y * 0.3 + rng.random(n) * 0.7, 0, 1)
    region = rng.choice(np.array(["north", "south", None], dtype=object), n)
    plan = rng.choice(["basic", "premium"], n)
    out = {"probability": p, "label": (p >= 0.5).astype(int)}
    result = M.sliced_metrics("binary", y, out, {"region": region, "plan": pa.array(plan)})
    assert set(result) == {"region", "plan"}
    assert set(result["region"]) == {"north", "south", "null"}
    for value, entry in result["region"].items():
        mask = region == (None if value == "null" else value)
        expected = M.compute_metrics("binary", y[mask], {"probability": p[mask], "label": out["label"][mask]})
        assert entry["rows"] == mask.sum()
        for name, v in expected.items():
            assert entry[name] == pytest.approx(v)
    assert sum(e["rows"] for e in result["plan"].values()) == n


def test_slice_with_one_class_has_nan_auc():
    y = np.array([0, 1, 1, 1])
    result = M.sliced_metrics("binary", y, {"probability": np.array([0.1, 0.9, 0.8, 0.7])}, {"r": ["a", "a", "b", "b"]})
    assert result["r"]["a"]["roc_auc"] == 1.0 and math.isnan(result["r"]["b"]["roc_auc"])


def test_fingerprint_ignores_row_order_but_not_content():
    y = np.array([0, 1, 1, 0])
    s = {"r": np.array(["a", "b", "a", "b"])}
    perm = np.array([3, 1, 0, 2])
    assert M.split_fingerprint(y, s) == M.split_fingerprint(y[perm], {"r": s["r"][perm]})
    assert M.split_fingerprint(y, s) != M.split_fingerprint(np.array([1, 1, 1, 0]), s)
    assert M.split_fingerprint(y, s) != M.split_fingerprint(y, {"r": np.array(["b", "a", "a", "b"])})


def test_eval_result_round_trips_through_json():
    result = M.EvalResult(
        task="binary",
        label="churned",
        metrics={"test": {"roc_auc": math.nan, "accuracy": 0.5}},
        rows={"test": 4},
        slices={"region": {"north": {"rows": 2, "roc_auc": 0.75}}},
        notes={"test.roc_auc": "only one class"},
        test_fingerprint="abc",
    )
    doc = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    back = M.EvalResult.from_dict(doc)
    assert math.isnan(back.metric("roc_auc")) and back.metric("accuracy") == 0.5
    assert back.slices == result.slices and back.test_fingerprint == "abc" and back.notes == result.notes
