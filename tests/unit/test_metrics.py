"""Metrics against hand computations, scipy and scikit-learn (every metric is checked against scikit-learn)."""

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


# ---------------------------------------------------------------------------------- against scikit-learn
def _binary_case(seed: int, n: int, ties: bool):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]  # both classes present
    p = np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1)
    if ties:
        p = np.round(p * 5) / 5  # few distinct values: ties everywhere on the curves
    return y, p


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 120), st.booleans(), st.floats(0.05, 0.95))
def test_binary_metrics_match_sklearn(seed, n, ties, threshold):
    sk = pytest.importorskip("sklearn.metrics")
    y, p = _binary_case(seed, n, ties)
    pred = (p >= threshold).astype(int)
    values = M.compute_metrics("binary", y, {"probability": p}, threshold=threshold)
    expected = {
        "roc_auc": sk.roc_auc_score(y, p),
        "pr_auc": sk.average_precision_score(y, p),
        "accuracy": sk.accuracy_score(y, pred),
        "f1": sk.f1_score(y, pred, zero_division=0),
        "precision": sk.precision_score(y, pred, zero_division=0),
        "recall": sk.recall_score(y, pred, zero_division=0),
        "log_loss": sk.log_loss(y, np.clip(p, 1e-15, 1 - 1e-15)),
        "brier": sk.brier_score_loss(y, p),
    }
    assert set(values) == set(expected) == set(M.metrics_for_task("binary"))
    for name, value in expected.items():
        assert values[name] == pytest.approx(value, abs=1e-12), name


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(6, 120), st.integers(3, 5), st.booleans())
def test_multiclass_metrics_match_sklearn(seed, n, k, ties):
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    y[:k] = np.arange(k)  # every class present (scikit-learn's macro AUC and AP require it)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    if ties:
        logits = np.round(logits)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pred = probs.argmax(axis=1)
    values = M.compute_metrics("multiclass", y, {"probabilities": probs})
    expected = {
        "roc_auc": sk.roc_auc_score(y, probs, multi_class="ovr", average="macro"),
        "pr_auc": sk.average_precision_score(y, probs, average="macro"),
        "accuracy": sk.accuracy_score(y, pred),
        "f1": sk.f1_score(y, pred, average="macro", zero_division=0),
        "precision": sk.precision_score(y, pred, average="macro", zero_division=0),
        "recall": sk.recall_score(y, pred, average="macro", zero_division=0),
        "log_loss": sk.log_loss(y, probs, labels=list(range(k))),
        "brier": sk.brier_score_loss(y, probs, labels=list(range(k))),
    }
    assert set(values) == set(expected) == set(M.metrics_for_task("multiclass"))
    for name, value in expected.items():
        assert values[name] == pytest.approx(value, abs=1e-9), name


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 80))
def test_regression_metrics_match_sklearn(seed, n):
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    y = rng.normal(50, 20, n)
    pred = y + rng.normal(0, 5, n)
    values = M.compute_metrics("regression", y, {"value": pred})
    assert values["rmse"] == pytest.approx(sk.root_mean_squared_error(y, pred))
    assert values["mae"] == pytest.approx(sk.mean_absolute_error(y, pred))
    assert values["r2"] == pytest.approx(sk.r2_score(y, pred))


def test_pr_auc_without_positives_is_nan_with_a_reason():
    values, notes = M.explain_metrics("binary", np.zeros(5, dtype=int), {"probability": np.linspace(0, 1, 5)})
    assert math.isnan(values["pr_auc"]) and "no positive" in notes["pr_auc"]
    assert values["precision"] == 0.0 and values["recall"] == 0.0  # scikit-learn's zero_division=0


def test_brier_and_log_loss_are_lower_is_better():
    assert M.metric_direction("brier") == "min"
    assert {M.metric_direction(m) for m in ("pr_auc", "precision", "recall")} == {"max"}


def test_threshold_decides_labels_only_when_the_outputs_have_none():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.3, 0.35, 0.9])
    assert M.compute_metrics("binary", y, {"probability": p})["recall"] == 0.5
    assert M.compute_metrics("binary", y, {"probability": p}, threshold=0.32)["recall"] == 1.0
    with_label = {"probability": p, "label": np.array([0, 0, 0, 1])}
    assert M.compute_metrics("binary", y, with_label, threshold=0.32)["recall"] == 0.5


# ------------------------------------------------------------------------------------- threshold choice
@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 150), st.booleans(), st.sampled_from(M.THRESHOLD_OBJECTIVES))
def test_chosen_threshold_is_optimal_among_all_cuts(seed, n, ties, objective):
    sk = pytest.importorskip("sklearn.metrics")
    y, p = _binary_case(seed, n, ties)

    def score(t: float) -> float:
        pred = (p >= t).astype(int)
        if objective == "f1":
            return sk.f1_score(y, pred, zero_division=0)
        if objective == "youden":
            return sk.balanced_accuracy_score(y, pred) * 2 - 1
        return sk.accuracy_score(y, pred)

    choice = M.choose_threshold(y, p, objective)
    assert 0 < choice.threshold < 1 and choice.rows == n and choice.objective == objective
    best = max(score(t) for t in np.unique(p))  # every distinct cut "p >= t" (t at a score)
    assert score(choice.threshold) == pytest.approx(best, abs=1e-12)
    assert choice.value == pytest.approx(best, abs=1e-12)


def test_threshold_is_a_midpoint_and_finds_the_minority_class():
    y = np.array([0] * 8 + [1] * 2)
    p = np.array([0.05, 0.1, 0.1, 0.12, 0.15, 0.18, 0.2, 0.22, 0.3, 0.4])  # positives score highest, all < 0.5
    choice = M.choose_threshold(y, p)
    assert choice.threshold == pytest.approx((0.3 + 0.22) / 2) and choice.value == 1.0
    assert M.f1(y, p >= 0.5) == 0.0  # the default threshold would never predict the positive class


def test_threshold_falls_back_to_half_without_two_classes():
    for y, p in ((np.ones(4), np.linspace(0.1, 0.9, 4)), (np.array([]), np.array([]))):
        choice = M.choose_threshold(y, p)
        assert choice.threshold == 0.5 and math.isnan(choice.value) and "0.5" in choice.note
    with pytest.raises(ValueError, match="youden"):
        M.choose_threshold(np.array([0, 1]), np.array([0.2, 0.8]), "auc")


def test_threshold_maps_class_values_like_the_metrics():
    y = np.array(["stay", "leave", "stay", "leave"])
    choice = M.choose_threshold(y, np.array([0.1, 0.7, 0.3, 0.6]), classes=["stay", "leave"])
    assert choice.value == 1.0 and 0.3 < choice.threshold <= 0.6
    with pytest.raises(DataError, match="not among the model's classes"):
        M.choose_threshold(np.array(["x", "leave"]), np.array([0.1, 0.7]), classes=["stay", "leave"])


# ---------------------------------------------------------------------------------------- naive baseline
def test_naive_outputs_predict_the_training_prior_and_mean():
    out = M.naive_outputs("binary", np.array([0, 0, 0, 1]), 3)
    assert out["probability"].tolist() == [0.25] * 3 and out["label"].tolist() == [0, 0, 0]
    multi = M.naive_outputs("multiclass", np.array(["b", "c", "c", "a", "c"]), 2, classes=["a", "b", "c"])
    assert np.allclose(multi["probabilities"], [[0.2, 0.2, 0.6]] * 2) and multi["label"].tolist() == [2, 2]
    assert M.naive_outputs("regression", np.array([1.0, 2.0, 6.0]), 2)["value"].tolist() == [3.0, 3.0]
    values = M.compute_metrics("binary", np.array([0, 1, 0, 1]), M.naive_outputs("binary", np.array([0, 0, 1]), 4))
    assert values["roc_auc"] == 0.5 and values["f1"] == 0.0 and values["accuracy"] == 0.5
    with pytest.raises(DataError, match="training split has no rows"):
        M.naive_outputs("binary", np.array([]), 3)
    assert "mean" in M.naive_name("regression") and "majority" in M.naive_name("binary")


def test_eval_result_round_trips_its_baseline_and_reads_old_documents():
    result = M.EvalResult("binary", "y", {"test": {"roc_auc": 0.8}}, {"test": 4},
                          baseline={"roc_auc": 0.5, "log_loss": math.nan})
    back = M.EvalResult.from_dict(json.loads(json.dumps(result.to_dict(), allow_nan=False)))
    assert back.baseline["roc_auc"] == 0.5 and math.isnan(back.baseline["log_loss"])
    old = result.to_dict()
    del old["baseline"]
    assert M.EvalResult.from_dict(old).baseline == {}
