"""canary.min_label_keys: online quality is judged only on labels from enough distinct routing keys."""

from __future__ import annotations

import json

import pyarrow as pa

from raymlops.control.canary import (
    INSUFFICIENT,
    CanaryPolicy,
    RolloutState,
    WindowStats,
    analyze,
    window_stats,
)
from raymlops.serve.predlog import FEEDBACK_SCHEMA, PREDICTION_SCHEMA, join_feedback

T0 = 1_714_564_800.0
_TS = pa.timestamp("us", tz="UTC")
POLICY = CanaryPolicy(steps=(10.0, 100.0), interval_s=60.0, min_requests=10, min_labels=10, min_label_keys=5)


def _table(rows, schema):
    for r in rows:
        r["ts"] = pa.scalar(round(r["ts"] * 1e6), _TS).as_py()
    return pa.Table.from_pylist(rows, schema=schema)


def _logs(keys: list[str | None]) -> tuple[pa.Table, pa.Table]:
    preds = _table([{"request_id": f"r{i}", "row": 0, "ts": T0 + i, "model_version": "2", "role": "primary",
                     "routing_key": k, "features": "{}", "latency_ms": 1.0, "status": "ok",
                     "outputs": json.dumps({"probability": 0.7, "label": 1})} for i, k in enumerate(keys)],
                   PREDICTION_SCHEMA)
    fb = _table([{"request_id": f"r{i}", "ts": T0 + 100, "labels": "[1]"} for i in range(len(keys))], FEEDBACK_SCHEMA)
    return preds, join_feedback(preds, fb)


def test_window_stats_counts_distinct_routing_keys_of_labelled_rows_with_no_key_as_one():
    preds, joined = _logs(["a", "b", "a", None, None, "c"])
    ws = window_stats(preds, joined, "2", T0, T0 + 60, "accuracy", "binary")
    assert ws.labels == 6 and ws.label_keys == 4  # a, b, c and "no key"
    assert WindowStats.from_dict(ws.to_dict()).label_keys == 4
    old = {k: v for k, v in ws.to_dict().items() if k != "label_keys"}  # persisted before the field existed
    assert WindowStats.from_dict(old).label_keys is None


def _stats(version: str, quality: float, keys: int | None) -> WindowStats:
    return WindowStats(version, 100, 0, 10.0, [10] * 10, 100, quality, "roc_auc", keys)


def test_labels_from_few_keys_cannot_fail_the_quality_check():
    state = RolloutState.start("2", "1", POLICY.steps, T0)
    decision, _ = analyze(POLICY, state, _stats("2", 0.5, 3), _stats("1", 0.9, 50), T0 + 60)
    quality = next(c for c in decision.checks if c.name == "quality_drop")
    assert decision.action == "hold" and not decision.failed and quality.verdict == INSUFFICIENT
    assert "3 distinct routing keys" in quality.note and "min_label_keys" in quality.note
    assert "quality_drop" in decision.hold_on


def test_labels_from_few_keys_cannot_promote_either():
    state = RolloutState.start("2", "1", POLICY.steps, T0)
    decision, _ = analyze(POLICY, state, _stats("2", 0.9, 50), _stats("1", 0.9, 2), T0 + 60)
    assert decision.action == "hold" and "min_label_keys" in decision.reason


def test_enough_keys_let_quality_decide():
    state = RolloutState.start("2", "1", POLICY.steps, T0)
    failed, _ = analyze(POLICY, state, _stats("2", 0.5, 5), _stats("1", 0.9, 5), T0 + 60)
    assert failed.failed and "quality_drop" in failed.reason
    advanced, _ = analyze(POLICY, state, _stats("2", 0.9, 5), _stats("1", 0.9, None), T0 + 60)
    assert advanced.action == "advance"
