"""Canary analysis: window statistics from the prediction log, and the pure policy with a fake clock."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raymlops.config import CanaryConfig
from raymlops.control.canary import (
    CanaryPolicy,
    Decision,
    RolloutState,
    WindowStats,
    analysis_due,
    analyze,
    apply_decision,
    prediction_shift,
    window_stats,
)
from raymlops.core.metrics import compute_metrics
from raymlops.errors import ConfigError
from raymlops.serve.predlog import FEEDBACK_SCHEMA, PREDICTION_SCHEMA, join_feedback

T0 = 1_714_564_800.0  # 2024-05-01T12:00:00Z
POLICY = CanaryPolicy(steps=(10.0, 50.0, 100.0), interval_s=60.0, min_requests=100, min_labels=50,
                      max_error_rate_pct=1.0, max_p99_ratio=1.5, max_quality_drop=0.02, max_prediction_psi=0.25,
                      failure_limit=2)


# ---------------------------------------------------------------------------------------------- helpers
def pred(rid, t, version="2", *, row=0, role="primary", p=0.3, latency=10.0, status="ok", outputs=None):
    return {"request_id": rid, "row": row, "ts": t, "model_version": version, "role": role,
            "routing_key": None, "features": "{}", "latency_ms": latency, "status": status,
            "outputs": json.dumps(outputs if outputs is not None else {"probability": p, "label": int(p >= 0.5)})}


def table(rows, schema=PREDICTION_SCHEMA):
    for r in rows:
        r["ts"] = pa.scalar(round(r["ts"] * 1e6), pa.timestamp("us", tz="UTC")).as_py()
    return pa.Table.from_pylist(rows, schema=schema)


def feedback(labels: dict[str, list]):
    return table([{"request_id": rid, "ts": T0 + 500, "labels": json.dumps(v)} for rid, v in labels.items()],
                 FEEDBACK_SCHEMA)


def stats(version="2", *, requests=200, errors=0, p99=10.0, hist=None, labels=100, quality=0.80,
          metric="roc_auc"):
    hist = [20] * 10 if hist is None else hist
    return WindowStats(version, requests, errors, p99, hist, labels, quality, metric)


def rollout(step_index=0, phase="canary", failures=0, at=T0):
    r = RolloutState.start("2", "1", POLICY.steps, at)
    r.phase, r.failures, r.step_index, r.weight = phase, failures, step_index, POLICY.steps[step_index]
    return r


def run(state, canary=None, champion=None, now=T0 + 60, policy=POLICY):
    return analyze(policy, state, canary or stats("2"), champion or stats("1"), now)


# ----------------------------------------------------------------------------------------- window stats
def test_window_stats_counts_requests_errors_and_p99_per_request():
    rows = [pred(f"r{i}", T0 + i, latency=float(i + 1)) for i in range(100)]
    rows += [pred("multi", T0 + 1, row=k, latency=5.0) for k in range(3)]  # one request, three instances
    rows += [pred("bad", T0 + 2, status="error", latency=0.1), pred("unmarked", T0 + 4, status=None, latency=5.0)]
    rows += [pred("x", T0 + 3, version="1"), pred("s", T0 + 3, role="shadow"),  # other version, a shadow
             pred("late", T0 + 200), pred("edge", T0 + 120)]  # after the window; end is exclusive
    preds = table(rows)
    ws = window_stats(preds, join_feedback(preds, feedback({})), "2", T0, T0 + 120, "roc_auc", "binary")
    assert (ws.version, ws.requests, ws.errors, ws.labels, ws.quality) == ("2", 103, 1, 0, None)
    ok_latencies = [float(i + 1) for i in range(100)] + [5.0, 5.0]
    assert ws.p99_ms == pytest.approx(float(np.quantile(ok_latencies, 0.99)))
    assert sum(ws.prediction_hist) == 104 and len(ws.prediction_hist) == 10 and ws.prediction_hist[3] == 104
    assert ws.error_rate_pct == pytest.approx(100 / 103)


def test_window_stats_quality_on_joined_labels_matches_compute_metrics():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=80)
    y = (rng.uniform(size=80) < p).astype(int)
    rows = [pred(f"r{i}", T0 + i % 50, p=float(p[i])) for i in range(80)]
    preds = table(rows)
    fb = feedback({f"r{i}": [int(y[i])] for i in range(70)})  # ten predictions never get a label
    ws = window_stats(preds, join_feedback(preds, fb), 2, T0, T0 + 60, "roc_auc", "binary")
    assert ws.labels == 70 and ws.requests == 80
    expected = compute_metrics("binary", y[:70], {"probability": p[:70]})["roc_auc"]
    assert ws.quality == pytest.approx(expected)
    hist = np.bincount(np.minimum((p * 10).astype(int), 9), minlength=10)
    assert ws.prediction_hist == hist.tolist()
    # Labels lag their predictions: the shell may look further back for them than for requests.
    later = window_stats(preds, join_feedback(preds, fb), "2", T0 + 30, T0 + 60, "accuracy", "binary",
                         labels_since=T0)
    assert later.labels == 70 and later.requests < 80


def test_window_stats_multiclass_and_regression_bins():
    rows = [pred(f"m{i}", T0, outputs={"probabilities": [0.1, 0.7, 0.2] if i % 3 else [0.8, 0.1, 0.1],
                                       "label": "b"}) for i in range(9)]
    preds = table(rows)
    empty = join_feedback(preds, feedback({}))
    ws = window_stats(preds, empty, "2", T0, T0 + 1, "accuracy", "multiclass", classes=["a", "b", "c"])
    assert ws.prediction_hist == [3, 6, 0]
    rows = [pred(f"v{i}", T0, outputs={"value": float(v)}) for i, v in enumerate([-5, 0.5, 1.5, 99])]
    preds = table(rows)
    joined = join_feedback(preds, feedback({"v0": [-4.0], "v1": [0.5]}))
    ws = window_stats(preds, joined, "2", T0, T0 + 1, "rmse", "regression", prediction_edges=[0.0, 1.0])
    assert ws.prediction_hist == [1, 1, 2] and ws.labels == 2 and ws.quality == pytest.approx(math.sqrt(0.5))
    assert window_stats(preds, joined, "2", T0, T0 + 1, "rmse", "regression").prediction_hist == []


def test_window_stats_on_empty_logs_and_bad_metric():
    empty = PREDICTION_SCHEMA.empty_table()
    ws = window_stats(empty, join_feedback(empty, FEEDBACK_SCHEMA.empty_table()), "2", T0, T0 + 60, "f1", "binary")
    assert (ws.requests, ws.errors, ws.p99_ms, ws.labels, ws.quality) == (0, 0, None, 0, None)
    assert ws.prediction_hist == [0] * 10
    with pytest.raises(ConfigError, match="rmse"):
        window_stats(empty, empty, "2", T0, T0 + 60, "rmse", "binary")


# ------------------------------------------------------------------------------------------------ policy
def test_policy_from_config_and_validation():
    cfg = CanaryConfig(steps=[1, 50], min_labels=7, require_approval=True)
    p = CanaryPolicy.from_config(cfg)
    assert p.steps == (1.0, 50.0) and p.min_labels == 7 and p.require_approval
    for bad in ([], [10, 5], [0, 10], [50, 150]):
        with pytest.raises(ConfigError, match="steps"):
            CanaryPolicy(steps=bad)


def test_nothing_is_judged_before_the_interval_has_passed():
    state = rollout()
    assert not analysis_due(POLICY, state, T0 + 59.9) and analysis_due(POLICY, state, T0 + 60)
    decision, after = run(state, now=T0 + 59.9)
    assert decision.action == "hold" and decision.hold_on == ["interval"] and decision.checks == []
    assert after is state


@pytest.mark.parametrize("step_index", [0, 2])
def test_no_traffic_holds_and_never_promotes(step_index):
    state = rollout(step_index)
    nothing = stats("2", requests=0, p99=None, hist=[0] * 10, labels=0, quality=None)
    decision, after = run(state, canary=nothing)
    assert decision.action == "hold" and not decision.failed
    assert set(decision.hold_on) == {"error_rate_pct", "p99_ratio", "prediction_psi", "quality_drop"}
    assert "min_requests" in decision.reason and "min_labels" in decision.reason
    assert (after.phase, after.step_index, after.failures, after.weight) == ("canary", step_index, 0, state.weight)
    assert after.window_start == state.window_start  # the window keeps growing until there is enough data


def test_too_few_labels_holds_naming_the_minimum():
    decision, after = run(rollout(2), canary=stats("2", labels=49))
    assert decision.action == "hold" and decision.hold_on == ["quality_drop"]
    assert "49 joined labels" in decision.reason and "min_labels" in decision.reason
    assert after.hold_on == ["quality_drop"] and after.phase == "canary"


def test_undefined_quality_holds():
    decision, _ = run(rollout(), canary=stats("2", quality=None))
    assert decision.action == "hold" and decision.hold_on == ["quality_drop"] and "undefined" in decision.reason


def test_passing_window_advances_to_the_next_step():
    decision, after = run(rollout(0), now=T0 + 61)
    assert (decision.action, decision.weight) == ("advance", 50.0)
    assert [c.verdict for c in decision.checks] == ["pass"] * 4
    assert [c.name for c in decision.checks] == ["error_rate_pct", "p99_ratio", "prediction_psi", "quality_drop"]
    assert (after.step_index, after.weight, after.last_change_at) == (1, 50.0, T0 + 61)
    assert after.weights() == {"1": 50.0, "2": 50.0}
    assert not analysis_due(POLICY, after, T0 + 61 + 59)


def test_passing_the_last_step_promotes_or_waits_for_approval():
    decision, after = run(rollout(2))
    assert decision.action == "promote" and after.phase == "promoting" and after.weights() == {"2": 100.0}
    gated = CanaryPolicy(steps=POLICY.steps, require_approval=True, min_requests=100, min_labels=50)
    decision, after = run(rollout(2), policy=gated)
    assert decision.action == "wait_approval" and after.phase == "awaiting_approval"
    decision, again = run(after, now=T0 + 120, policy=gated)  # stays waiting; never promotes by itself
    assert decision.action == "wait_approval" and again.phase == "awaiting_approval"


@pytest.mark.parametrize(("canary", "champion", "failing"), [
    (stats("2", requests=200, errors=5), stats("1"), "error_rate_pct"),
    (stats("2", p99=31.0), stats("1", p99=20.0), "p99_ratio"),
    (stats("2", hist=[200] + [0] * 9), stats("1"), "prediction_psi"),
    (stats("2", quality=0.70), stats("1", quality=0.80), "quality_drop"),
    (stats("2", quality=0.60, metric="log_loss"), stats("1", quality=0.50, metric="log_loss"), "quality_drop"),
])
def test_each_check_can_fail(canary, champion, failing):
    decision, after = run(rollout(1), canary=canary, champion=champion)
    assert decision.action == "hold" and decision.failed
    assert [c.name for c in decision.checks if c.verdict == "fail"] == [failing]
    assert failing in decision.reason and "failed analysis 1 of failure_limit=2" in decision.reason
    assert (after.failures, after.step_index, after.last_analysis_at) == (1, 1, T0 + 60)


def test_lower_loss_is_not_a_quality_drop():
    decision, _ = run(rollout(0), canary=stats("2", quality=0.40, metric="log_loss"),
                      champion=stats("1", quality=0.50, metric="log_loss"))
    assert decision.action == "advance"


def test_failures_count_up_to_rollback():
    worse = stats("2", quality=0.5)
    decision, state = run(rollout(1), canary=worse)
    assert decision.action == "hold" and state.failures == 1
    # The failed window is not judged twice: the next analysis needs a whole new interval.
    decision, same = run(state, canary=worse, now=T0 + 100)
    assert decision.hold_on == ["interval"] and same is state
    decision, state = run(state, canary=worse, now=T0 + 120)
    assert decision.action == "rollback" and decision.weight == 0.0
    assert (state.phase, state.failures, state.weight) == ("rolling_back", 2, 0.0)
    assert state.weights() == {"1": 100.0}


def test_a_failure_counts_even_when_another_check_lacks_data():
    decision, state = run(rollout(0), canary=stats("2", errors=50, labels=0, quality=None))
    assert decision.action == "hold" and decision.failed and state.failures == 1


def test_failures_are_kept_across_steps_and_in_approval():
    decision, state = run(rollout(1, failures=1))
    assert decision.action == "advance" and state.failures == 1
    gated = CanaryPolicy(steps=POLICY.steps, require_approval=True)
    decision, state = run(rollout(2, phase="awaiting_approval", failures=1), canary=stats("2", errors=9),
                          policy=gated)
    assert decision.action == "rollback" and state.phase == "rolling_back"


def test_regression_without_bins_skips_psi_rather_than_holding():
    reg = dict(hist=[], metric="rmse", quality=1.0)
    decision, _ = run(rollout(0), canary=stats("2", **reg), champion=stats("1", **reg))
    assert decision.action == "advance"
    assert {c.name: c.verdict for c in decision.checks}["prediction_psi"] == "skipped"


def test_no_rollout_and_mismatched_versions():
    decision, state = run(RolloutState())
    assert decision.action == "hold" and decision.hold_on == ["phase"]
    with pytest.raises(ValueError, match="rollout of 2 vs 1"):
        analyze(POLICY, rollout(), stats("3"), stats("1"), T0 + 60)


def test_apply_decision_replays_analyze_and_refuses_other_rollouts():
    state = rollout(0)
    decision, after = run(state)
    assert apply_decision(state, Decision.from_dict(json.loads(json.dumps(decision.to_dict())))) == after
    with pytest.raises(ValueError, match="does not match"):
        apply_decision(after, decision)  # made for step 0, the rollout is at step 1 now
    assert apply_decision(RolloutState(), decision) == RolloutState()


def test_json_round_trips():
    decision, state = run(rollout(0))
    assert RolloutState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    assert Decision.from_dict(json.loads(json.dumps(decision.to_dict(), allow_nan=False))) == decision
    ws = stats("2")
    assert WindowStats.from_dict(json.loads(json.dumps(ws.to_dict()))) == ws


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 300), st.integers(0, 300), st.integers(0, 120), st.integers(0, 120),
    st.integers(0, 10), st.sampled_from([0, 1, 2]), st.floats(0.5, 1.0), st.floats(0.5, 1.0),
)
def test_too_little_data_never_advances_or_promotes(req_a, req_b, lab_a, lab_b, errors, step_index, q_a, q_b):
    canary = stats("2", requests=req_a, errors=min(errors, req_a), labels=lab_a, quality=q_a,
                   hist=[req_a // 10] * 10, p99=10.0 if req_a else None)
    champion = stats("1", requests=req_b, labels=lab_b, quality=q_b, hist=[req_b // 10] * 10,
                     p99=10.0 if req_b else None)
    decision, _ = run(rollout(step_index), canary=canary, champion=champion)
    short = min(req_a, req_b) < POLICY.min_requests or min(lab_a, lab_b) < POLICY.min_labels
    if short:
        assert decision.action in ("hold", "rollback")
    if decision.action in ("hold", "rollback") and not decision.failed:
        assert short
    if decision.failed:
        assert any(c.verdict == "fail" and c.samples >= c.min_samples for c in decision.checks)


def test_prediction_shift_discounts_sampling_noise_but_catches_a_real_shift():
    # Two windows of 100 requests from one distribution: the raw PSI exceeds 0.25 about a third of the time,
    # which would fail healthy canaries; the noise-corrected shift almost never does.
    rng = np.random.default_rng(7)
    shares = np.array([.02, .05, .1, .15, .18, .18, .15, .1, .05, .02])
    same = [prediction_shift(rng.multinomial(100, shares), rng.multinomial(100, shares)) for _ in range(300)]
    assert sum(shift > 0.25 for shift, _ in same) <= 6
    assert all(0.1 < noise < 0.2 for _, noise in same)
    moved = [prediction_shift(rng.multinomial(300, shares), rng.multinomial(300, np.roll(shares, 2)))[0]
             for _ in range(50)]
    assert min(moved) > 0.25
    assert prediction_shift([50, 0], [0, 50])[0] > 3  # disjoint windows: finite, and far over any limit
