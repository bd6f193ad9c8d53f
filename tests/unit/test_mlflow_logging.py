"""What the pipeline run shows in MLflow: training history as step metrics, evaluation results as tables."""

from __future__ import annotations

import math

from raymlops.evaluation.evaluate import COMPARISON_TABLE, SLICES_TABLE, evaluation_tables
from raymlops.registry.tracking import history_metrics


def test_history_rows_become_step_metrics_at_their_epoch():
    history = [{"epoch": 1, "train_loss": 0.7, "val_loss": 0.69, "lr": 0.01},
               {"epoch": 2, "train_loss": 0.5, "val_loss": math.nan, "stopped": True, "note": "x"}]
    metrics = history_metrics(history, "epoch", 1234)
    assert [(m.key, m.value, m.step) for m in metrics if not math.isnan(m.value)] == [
        ("train_loss", 0.7, 1), ("val_loss", 0.69, 1), ("lr", 0.01, 1), ("train_loss", 0.5, 2)]
    assert {m.timestamp for m in metrics} == {1234}
    assert not any(m.key in ("epoch", "stopped", "note") for m in metrics)  # the step, a bool, text: not metrics
    # rows without the step key are numbered from 1
    assert [m.step for m in history_metrics([{"loss": 1.0}, {"loss": 0.5}], "epoch", 0)] == [1, 2]


DOC = {
    "challenger": {"metrics": {"test": {"roc_auc": 0.8, "f1": 0.5}}, "slice_split": "test",
                   "slices": {"region": {"east": {"rows": 10, "roc_auc": 0.7, "f1": 0.4},
                                         "west": {"rows": 5, "roc_auc": None, "f1": 0.6}}},
                   "baseline": {"roc_auc": 0.5, "f1": 0.0}},
    "champion": {"metrics": {"test": {"roc_auc": 0.75, "f1": 0.45}},
                 "slices": {"region": {"east": {"rows": 10, "roc_auc": 0.72, "f1": 0.41}}}},
    "reference": {"model": "HistGradientBoostingClassifier", "metrics": {"roc_auc": 0.81, "accuracy": 0.9}},
}


def test_evaluation_tables_hold_slices_of_both_models_and_the_comparison():
    tables = evaluation_tables(DOC)
    slices = tables[SLICES_TABLE]
    assert list(slices) == ["model", "slice", "value", "rows", "roc_auc", "f1"]
    assert list(zip(slices["model"], slices["value"], slices["rows"], slices["roc_auc"], strict=True)) == [
        ("challenger", "east", 10, 0.7), ("challenger", "west", 5, None), ("champion", "east", 10, 0.72)]
    comparison = tables[COMPARISON_TABLE]
    assert comparison == {"metric": ["roc_auc", "f1", "accuracy"], "challenger": [0.8, 0.5, None],
                          "champion": [0.75, 0.45, None], "baseline": [0.5, 0.0, None],
                          "reference": [0.81, None, 0.9]}
    # every column of a table has one value per row
    for table in tables.values():
        assert len({len(v) for v in table.values()}) == 1


def test_evaluation_tables_without_a_champion_or_a_reference():
    doc = {**DOC, "champion": None, "reference": {"skipped": "evaluation.reference_max_rows is 0"}}
    tables = evaluation_tables(doc)
    assert set(tables[SLICES_TABLE]["model"]) == {"challenger"}
    assert tables[COMPARISON_TABLE]["champion"] == [None, None]
    assert tables[COMPARISON_TABLE]["reference"] == [None, None]
