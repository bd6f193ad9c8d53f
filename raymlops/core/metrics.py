"""Model quality metrics in pure numpy: overall, per slice, and the evaluation result that blessing reads.

Model outputs are dicts as a loaded model package returns them:

* binary: ``{"probability": [n], "label": [n]}`` (probability of class index 1, the positive class),
* multiclass: ``{"probabilities": [n, C], "label": [n]}``,
* regression: ``{"value": [n]}``.

``outputs["label"]`` holds class *indices* (``raymlops.model.nets.predict_outputs``); when absent it is derived
(probability >= 0.5, or the argmax). ``y_true`` holds class *values*: with ``classes`` (the transform's label
classes, in the order of the probability columns) they are mapped to indices, without it they must already be
indices ``0..C-1`` (binary: 0/1 or bool). A metric that is undefined on the given rows (one class only, no
rows, a constant target, non-finite predictions) is ``nan``; ``explain_metrics`` also says why.

Every metric follows scikit-learn's definition (the unit tests compare them), except where a docstring says how
an undefined case differs. ``choose_threshold`` picks a binary decision threshold on validation rows, and
``naive_outputs`` is the naive baseline (training prior or mean) that blessing requires a model to beat.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymlops.errors import DataError

__all__ = [
    "THRESHOLD_OBJECTIVES",
    "EvalResult",
    "ThresholdChoice",
    "accuracy",
    "average_precision",
    "brier",
    "choose_threshold",
    "compute_metrics",
    "explain_metrics",
    "f1",
    "log_loss",
    "mae",
    "macro_average_precision",
    "macro_f1",
    "macro_precision_recall",
    "macro_roc_auc",
    "metric_direction",
    "metrics_for_task",
    "multiclass_brier",
    "multiclass_log_loss",
    "naive_name",
    "naive_outputs",
    "precision_recall",
    "r2",
    "rmse",
    "roc_auc",
    "sliced_metrics",
    "split_fingerprint",
]

Task = Literal["binary", "multiclass", "regression"]

_CLASSIFICATION = ("roc_auc", "pr_auc", "accuracy", "f1", "precision", "recall", "log_loss", "brier")
_METRICS: dict[str, tuple[str, ...]] = {
    "binary": _CLASSIFICATION,
    "multiclass": _CLASSIFICATION,  # pr_auc, f1, precision, recall: one-vs-rest, macro-averaged
    "regression": ("rmse", "mae", "r2"),
}
_LOWER_IS_BETTER = frozenset({"log_loss", "brier", "rmse", "mae"})
_KNOWN = frozenset(m for names in _METRICS.values() for m in names)
# Same clipping constant as scikit-learn's historical log_loss default: bounds the loss of a confident mistake.
_EPS = 1e-15
NULL_SLICE = "null"


def metrics_for_task(task: str) -> tuple[str, ...]:
    """Names of the metrics computed for a task (``binary``, ``multiclass`` or ``regression``)."""
    try:
        return _METRICS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; use one of {sorted(_METRICS)}") from None


def metric_direction(name: str) -> Literal["max", "min"]:
    """``'min'`` for losses and errors (log_loss, brier, rmse, mae), ``'max'`` for every other known metric."""
    if name not in _KNOWN:
        raise ValueError(f"unknown metric {name!r}; known metrics: {sorted(_KNOWN)}")
    return "min" if name in _LOWER_IS_BETTER else "max"


# ------------------------------------------------------------------------------------------- binary metrics
def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (scipy.stats.rankdata(method='average'))."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]
    run = np.repeat(np.arange(len(starts)), ends - starts)
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = ((starts + 1 + ends) / 2.0)[run]
    return ranks


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve for 0/1 labels (Mann-Whitney U; tied scores count half). ``nan`` with one class."""
    y = np.asarray(y_true).astype(bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(np.asarray(score, dtype=np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of exact label matches; ``nan`` without rows."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(y_true == y_pred)) if len(y_true) else math.nan


def _f1_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denom = 2 * tp + fp + fn
    # scikit-learn's zero_division default: F1 is 0 when there is no positive, true or predicted.
    return np.divide(2 * tp, denom, out=np.zeros(np.shape(tp), dtype=np.float64), where=denom > 0)


def f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """F1 of the positive class (1) for 0/1 labels; 0 when nothing is positive (as scikit-learn)."""
    y, p = np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool)
    if not len(y):
        return math.nan
    tp, fp, fn = np.sum(y & p), np.sum(~y & p), np.sum(y & ~p)
    return float(_f1_counts(np.asarray(tp), np.asarray(fp), np.asarray(fn)))


def log_loss(y_true: np.ndarray, probability: np.ndarray) -> float:
    """Binary cross-entropy of the positive-class probability, clipped to [1e-15, 1 - 1e-15]."""
    y = np.asarray(y_true, dtype=np.float64)
    if not len(y):
        return math.nan
    p = np.clip(np.asarray(probability, dtype=np.float64), _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def precision_recall(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """Precision and recall of the positive class (1); 0 where nothing is predicted / present (as scikit-learn)."""
    y, p = np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool)
    if not len(y):
        return math.nan, math.nan
    tp, n_pred, n_pos = int(np.sum(y & p)), int(p.sum()), int(y.sum())
    return (tp / n_pred if n_pred else 0.0), (tp / n_pos if n_pos else 0.0)


def _curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores (descending) and the true / false positives when predicting ``score >= s`` for each."""
    order = np.argsort(-score, kind="mergesort")
    s, yy = score[order], y[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]  # the last row of each run of tied scores
    tps = np.cumsum(yy)[last]
    return s[last], tps.astype(np.float64), (last + 1 - tps).astype(np.float64)


def average_precision(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the precision-recall curve as scikit-learn's ``average_precision_score``: sum over thresholds of
    (recall gain) x precision. ``nan`` without positives (scikit-learn warns and returns 0 there)."""
    y = np.asarray(y_true).astype(bool)
    if not y.any():
        return math.nan
    _, tps, fps = _curve(y, np.asarray(score, dtype=np.float64))
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def brier(y_true: np.ndarray, probability: np.ndarray) -> float:
    """Mean squared difference between the positive-class probability and the 0/1 label; ``nan`` without rows."""
    y = np.asarray(y_true, dtype=np.float64)
    if not len(y):
        return math.nan
    d = np.asarray(probability, dtype=np.float64) - y
    return float(np.mean(d * d))


# ------------------------------------------------------------------------------------ decision threshold
THRESHOLD_OBJECTIVES = ("f1", "youden", "accuracy")


@dataclass(frozen=True)
class ThresholdChoice:
    """A binary decision threshold (predict the positive class when ``probability >= threshold``) and why."""

    threshold: float
    objective: str
    value: float  # the objective at this threshold on the rows it was chosen on; nan when it fell back
    rows: int
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "objective": self.objective, "value": _json_float(self.value),
                "rows": self.rows, "note": self.note}


def choose_threshold(y_true: Any, probability: Any, objective: str = "f1",
                     classes: Sequence[Any] | None = None) -> ThresholdChoice:
    """The threshold that maximises ``objective`` on these rows (normally the validation split).

    ``f1``: F1 of the positive class; ``youden``: TPR - FPR (balanced accuracy); ``accuracy``. Candidates are the
    distinct probabilities; the threshold returned is the midpoint between the lowest probability predicted
    positive and the next lower one, so rows near the cut are not decided by the validation set's exact values.
    Ties go to the highest threshold. With one class only (or no rows) nothing can be chosen: 0.5, with a note.
    ``y_true`` holds 0/1 (or bool) labels, or class values with ``classes`` (as ``compute_metrics``).
    """
    if objective not in THRESHOLD_OBJECTIVES:
        raise ValueError(f"unknown threshold objective {objective!r}; use one of {list(THRESHOLD_OBJECTIVES)}")
    y = _encode(y_true, classes, 2, "the label column").astype(bool)
    p = np.asarray(probability, dtype=np.float64).reshape(-1)
    n, n_pos = len(y), int(y.sum())
    if n == 0 or n_pos in (0, n) or not np.isfinite(p).all():
        why = ("no rows" if n == 0 else "non-finite probabilities" if not np.isfinite(p).all()
               else f"only one class in {n} rows")
        return ThresholdChoice(0.5, objective, math.nan, n, f"{why}: kept the default 0.5")
    scores, tps, fps = _curve(y, p)
    n_neg = n - n_pos
    if objective == "f1":
        value = 2 * tps / (tps + fps + n_pos)
    elif objective == "youden":
        value = tps / n_pos - fps / n_neg
    else:
        value = (tps + (n_neg - fps)) / n
    k = int(np.argmax(value))  # the first maximum: the highest threshold among ties
    lower = scores[k + 1] if k + 1 < len(scores) else 0.0
    # Probabilities live in [0, 1]; a threshold must stay inside (0, 1) to be a valid config value.
    t = float(np.clip((scores[k] + lower) / 2.0, 1e-9, 1 - 1e-9))
    return ThresholdChoice(t, objective, float(value[k]), n)


# --------------------------------------------------------------------------------------- multiclass metrics
def macro_roc_auc(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """One-vs-rest ROC AUC averaged over the classes that have both positives and negatives in ``y_true``.

    ``y_true`` holds class indices (columns of ``probabilities``). Unlike scikit-learn, which raises when a class is
    absent, absent classes are left out so that small slices still get a figure; ``nan`` when none is left.
    """
    return _macro_one_vs_rest(roc_auc, y_true, probabilities)


def _macro_one_vs_rest(metric: Any, y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """``metric(is_class_c, probability_of_c)`` averaged over the classes where it is defined; ``nan`` if none."""
    y = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probabilities, dtype=np.float64)
    values = [metric(y == c, probs[:, c]) for c in range(probs.shape[1])]
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else math.nan


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``y_true`` or ``y_pred`` (as scikit-learn)."""
    y, p = np.asarray(y_true), np.asarray(y_pred)
    if not len(y):
        return math.nan
    labels = np.union1d(y, p)
    hit_true = y[None, :] == labels[:, None]
    hit_pred = p[None, :] == labels[:, None]
    tp = np.sum(hit_true & hit_pred, axis=1)
    fp = np.sum(~hit_true & hit_pred, axis=1)
    fn = np.sum(hit_true & ~hit_pred, axis=1)
    return float(np.mean(_f1_counts(tp, fp, fn)))


def macro_precision_recall(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """Unweighted means of per-class precision and recall over the classes in ``y_true`` or ``y_pred``."""
    y, p = np.asarray(y_true), np.asarray(y_pred)
    if not len(y):
        return math.nan, math.nan
    labels = np.union1d(y, p)
    hit_true = y[None, :] == labels[:, None]
    hit_pred = p[None, :] == labels[:, None]
    tp = np.sum(hit_true & hit_pred, axis=1).astype(np.float64)
    n_pred, n_true = hit_pred.sum(axis=1), hit_true.sum(axis=1)
    prec = np.divide(tp, n_pred, out=np.zeros_like(tp), where=n_pred > 0)
    rec = np.divide(tp, n_true, out=np.zeros_like(tp), where=n_true > 0)
    return float(prec.mean()), float(rec.mean())


def macro_average_precision(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """One-vs-rest average precision averaged over the classes present in ``y_true`` (as ``macro_roc_auc``)."""
    return _macro_one_vs_rest(average_precision, y_true, probabilities)


def multiclass_brier(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean over rows of the squared distance between the probabilities and the one-hot label (0 to 2)."""
    y = np.asarray(y_true, dtype=np.int64)
    if not len(y):
        return math.nan
    probs = np.asarray(probabilities, dtype=np.float64)
    d = probs.copy()
    d[np.arange(len(y)), y] -= 1.0
    return float(np.mean(np.sum(d * d, axis=1)))


def multiclass_log_loss(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """Cross-entropy of class indices against row probabilities (clipped, then renormalised per row)."""
    y = np.asarray(y_true, dtype=np.int64)
    if not len(y):
        return math.nan
    probs = np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1 - _EPS)
    probs = probs / probs.sum(axis=1, keepdims=True)
    return float(-np.mean(np.log(probs[np.arange(len(y)), y])))


# --------------------------------------------------------------------------------------- regression metrics
def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Root mean squared error; ``nan`` without rows."""
    d = np.asarray(y_true, dtype=np.float64) - np.asarray(y_pred, dtype=np.float64)
    return float(np.sqrt(np.mean(d * d))) if len(d) else math.nan


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean absolute error; ``nan`` without rows."""
    d = np.asarray(y_true, dtype=np.float64) - np.asarray(y_pred, dtype=np.float64)
    return float(np.mean(np.abs(d))) if len(d) else math.nan


def r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Coefficient of determination; ``nan`` when ``y_true`` is constant (scikit-learn would force 0 or 1)."""
    y = np.asarray(y_true, dtype=np.float64)
    if not len(y):
        return math.nan
    ss_tot = np.sum((y - y.mean()) ** 2)
    if ss_tot == 0:
        return math.nan
    return float(1.0 - np.sum((y - np.asarray(y_pred, dtype=np.float64)) ** 2) / ss_tot)


# ------------------------------------------------------------------------------------------ from outputs
def _encode(values: Any, classes: Sequence[Any] | None, n_classes: int, what: str) -> np.ndarray:
    """Class values -> indices 0..n_classes-1 (the columns of the probabilities)."""
    v = np.asarray(values)
    if classes is None:
        if v.dtype.kind == "b":
            return v.astype(np.int64)
        if v.dtype.kind in "iuf" and len(v):
            idx = v.astype(np.int64)
            if not np.array_equal(idx, v) or idx.min() < 0 or idx.max() >= n_classes:
                bad = np.unique(v[(idx != v) | (idx < 0) | (idx >= n_classes)])[:5].tolist()
                raise DataError(
                    f"{what} holds {bad}, not class indices 0..{n_classes - 1}; "
                    "pass the model's `classes` to map class values to indices"
                )
            return idx
        if len(v):
            raise DataError(f"{what} holds {v.dtype} values; pass the model's `classes` to map them to indices")
        return v.astype(np.int64)
    cls = np.asarray(list(classes))
    if cls.dtype.kind in "USO" or v.dtype.kind in "USO":
        cls, v = cls.astype(str), v.astype(str)
    sorter = np.argsort(cls, kind="stable")
    pos = np.clip(np.searchsorted(cls, v, sorter=sorter), 0, len(cls) - 1)
    idx = sorter[pos]
    unknown = cls[idx] != v
    if np.any(unknown):
        raise DataError(
            f"{what} holds values {np.unique(v[unknown])[:5].tolist()} that are not among the model's classes "
            f"{cls.tolist()}; the data has classes the model never saw in training"
        )
    return idx.astype(np.int64)


@dataclass(frozen=True)
class _Scored:
    """Labels and predictions in a common numeric space, so slices only index arrays."""

    task: str
    y: np.ndarray  # class indices, or float targets for regression
    score: np.ndarray  # binary: positive probability [n]; multiclass: probabilities [n, C]; regression: [n]
    pred: np.ndarray | None  # predicted class indices (classification)

    def take(self, idx: np.ndarray) -> _Scored:
        return _Scored(self.task, self.y[idx], self.score[idx], None if self.pred is None else self.pred[idx])


def _output(outputs: Mapping[str, Any], key: str, task: str, n: int) -> np.ndarray:
    if key not in outputs:
        raise DataError(
            f"model outputs have keys {sorted(outputs)} but a {task} model must return {key!r}; "
            "check that the package's task matches data.task"
        )
    arr = np.asarray(outputs[key])
    if arr.shape[:1] != (n,):
        raise DataError(f"model output {key!r} has shape {arr.shape} for {n} labelled rows; expected ({n}, ...)")
    return arr


def _score(task: str, y_true: Any, outputs: Mapping[str, Any], classes: Sequence[Any] | None,
           threshold: float = 0.5) -> _Scored:
    metrics_for_task(task)
    y_raw = np.asarray(y_true)
    n = len(y_raw)
    if task == "regression":
        return _Scored(task, y_raw.astype(np.float64), _output(outputs, "value", task, n).astype(np.float64), None)
    if task == "binary":
        score = _output(outputs, "probability", task, n).astype(np.float64).reshape(n)
        n_classes = 2
    else:
        score = _output(outputs, "probabilities", task, n).astype(np.float64)
        if score.ndim != 2:
            raise DataError(f"model output 'probabilities' has shape {score.shape}; expected (n_rows, n_classes)")
        n_classes = score.shape[1]
    if classes is not None and len(classes) != n_classes:
        raise DataError(f"{len(classes)} classes {list(classes)} but the model scores {n_classes} classes")
    y = _encode(y_raw, classes, n_classes, "the label column")
    if "label" in outputs:
        pred = _encode(_output(outputs, "label", task, n), None, n_classes, "model output 'label'")
    elif task == "binary":
        pred = (score >= threshold).astype(np.int64)
    else:
        pred = np.argmax(score, axis=1) if n else np.zeros(0, np.int64)
    return _Scored(task, y, score, pred)


def _metrics(s: _Scored) -> tuple[dict[str, float], dict[str, str]]:
    names = _METRICS[s.task]
    n = len(s.y)
    if n == 0:
        return {m: math.nan for m in names}, {m: "no rows to evaluate" for m in names}
    bad = int(np.sum(~np.isfinite(s.score).reshape(n, -1).all(axis=1)))
    if bad:
        return {m: math.nan for m in names}, {m: f"{bad} of {n} predictions are NaN or infinite" for m in names}
    notes: dict[str, str] = {}
    if s.task == "regression":
        out = {"rmse": rmse(s.y, s.score), "mae": mae(s.y, s.score), "r2": r2(s.y, s.score)}
        if math.isnan(out["r2"]):
            notes["r2"] = f"the target is constant ({s.y[0]:g}) in all {n} rows"
        return out, notes
    if s.task == "binary":
        prec, rec = precision_recall(s.y, s.pred)
        out = {
            "roc_auc": roc_auc(s.y, s.score),
            "pr_auc": average_precision(s.y, s.score),
            "accuracy": accuracy(s.y, s.pred),
            "f1": f1(s.y, s.pred),
            "precision": prec,
            "recall": rec,
            "log_loss": log_loss(s.y, s.score),
            "brier": brier(s.y, s.score),
        }
    else:
        prec, rec = macro_precision_recall(s.y, s.pred)
        out = {
            "roc_auc": macro_roc_auc(s.y, s.score),
            "pr_auc": macro_average_precision(s.y, s.score),
            "accuracy": accuracy(s.y, s.pred),
            "f1": macro_f1(s.y, s.pred),
            "precision": prec,
            "recall": rec,
            "log_loss": multiclass_log_loss(s.y, s.score),
            "brier": multiclass_brier(s.y, s.score),
        }
    if math.isnan(out["roc_auc"]):
        notes["roc_auc"] = f"only one class (index {int(s.y[0])}) is present in all {n} rows; AUC needs two"
    if math.isnan(out["pr_auc"]):
        notes["pr_auc"] = f"no positive row among {n}; the precision-recall curve needs one"
    return out, notes


def explain_metrics(
    task: str, y_true: Any, outputs: Mapping[str, Any], classes: Sequence[Any] | None = None,
    threshold: float = 0.5,
) -> tuple[dict[str, float], dict[str, str]]:
    """Metrics of the task, and for each metric that is ``nan``, the reason why.

    ``threshold`` decides binary labels only when ``outputs`` has no ``label`` (a package's own label wins).
    """
    return _metrics(_score(task, y_true, outputs, classes, threshold))


def compute_metrics(
    task: str, y_true: Any, outputs: Mapping[str, Any], classes: Sequence[Any] | None = None,
    threshold: float = 0.5,
) -> dict[str, float]:
    """Metrics of the task (``metrics_for_task``) on all rows: ``{name: value}``, ``nan`` where undefined."""
    return explain_metrics(task, y_true, outputs, classes, threshold)[0]


# ------------------------------------------------------------------------------------------ naive baseline
def naive_name(task: str) -> str:
    """What the naive baseline predicts, in words (for gate reasons and progress lines)."""
    metrics_for_task(task)
    return "the training mean" if task == "regression" else "the training class prior (majority class)"


def naive_outputs(
    task: str, y_train: Any, n_rows: int, classes: Sequence[Any] | None = None, n_classes: int | None = None
) -> dict[str, np.ndarray]:
    """Outputs of the naive baseline for ``n_rows`` rows: what a model that ignores every feature predicts.

    Classification: the class frequencies of ``y_train`` as probabilities, the majority class as label (the
    first class on a tie); regression: the mean of ``y_train``. ``classes``/``n_classes`` as in
    ``compute_metrics`` (``n_classes`` defaults to ``len(classes)``, or 2 for binary).
    """
    metrics_for_task(task)
    y_raw = np.asarray(y_train)
    if not len(y_raw):
        raise DataError("the naive baseline needs training labels, and the training split has no rows")
    if task == "regression":
        return {"value": np.full(n_rows, float(np.mean(y_raw.astype(np.float64))))}
    k = n_classes or (len(classes) if classes is not None else 2)
    counts = np.bincount(_encode(y_raw, classes, k, "the training labels"), minlength=k).astype(np.float64)
    prior = counts / counts.sum()
    label = np.full(n_rows, int(np.argmax(counts)), dtype=np.int64)
    if task == "binary":
        return {"probability": np.full(n_rows, prior[1]), "label": label}
    return {"probabilities": np.tile(prior, (n_rows, 1)), "label": label}


def _slice_keys(values: Any) -> np.ndarray:
    """Slice values as strings (nulls -> 'null'), so keys are JSON-safe and comparable across runs."""
    if not isinstance(values, pa.ChunkedArray | pa.Array):
        values = np.asarray(values)
        values = pa.array(values.tolist() if values.dtype.kind == "O" else values)
    return pc.fill_null(pc.cast(values, pa.string()), NULL_SLICE).to_numpy(zero_copy_only=False)


def sliced_metrics(
    task: str,
    y_true: Any,
    outputs: Mapping[str, Any],
    slice_values: Mapping[str, Any],
    classes: Sequence[Any] | None = None,
    threshold: float = 0.5,
) -> dict[str, dict[str, dict[str, float]]]:
    """Metrics per value of each slice column: ``{column: {str(value): {"rows": n, metric: value, ...}}}``.

    ``slice_values`` maps a column name to its values, aligned with ``y_true``; nulls form the slice ``"null"``.
    """
    scored = _score(task, y_true, outputs, classes, threshold)
    result: dict[str, dict[str, dict[str, float]]] = {}
    for column, values in slice_values.items():
        keys = _slice_keys(values)
        if len(keys) != len(scored.y):
            raise DataError(f"slice column {column!r} has {len(keys)} values for {len(scored.y)} rows")
        uniques, inverse = np.unique(keys, return_inverse=True)
        groups = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse, minlength=len(uniques)))[:-1]
        result[column] = {
            str(key): {"rows": len(idx), **_metrics(scored.take(idx))[0]}
            for key, idx in zip(uniques, np.split(groups, bounds), strict=True)
        }
    return result


def split_fingerprint(y_true: Any, slice_values: Mapping[str, Any] | None = None) -> str:
    """Order-independent digest of the labels (and slice values) of a split.

    Two evaluations are on the same test set only if their fingerprints match; row order is ignored because Ray
    Data does not promise it.
    """
    columns = [_slice_keys(y_true)] + [_slice_keys(slice_values[c]) for c in sorted(slice_values or {})]
    joined = pc.binary_join_element_wise(*[pa.array(c, pa.string()) for c in columns], "\x1f")
    counts = pc.value_counts(joined).to_pylist()
    digest = hashlib.sha256(json.dumps(sorted(slice_values or {})).encode())
    for item in sorted(counts, key=lambda c: c["values"]):
        digest.update(f"{item['values']}\x1e{item['counts']}\x1d".encode())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- EvalResult
def _json_float(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def _from_json_float(x: float | None) -> float:
    return math.nan if x is None else float(x)


@dataclass
class EvalResult:
    """Metrics of one model on a dataset's splits, with per-slice metrics on one split (``slice_split``).

    ``metrics[split][name]``, ``rows[split]``, ``slices[column][value] = {"rows": n, name: value}``,
    ``notes["split.metric"]`` says why a metric is nan, and ``test_fingerprint`` identifies the slice split's rows
    so that two results can be checked to be on the same test set. ``baseline`` holds the metrics of the naive
    baseline (``naive_outputs`` fitted on the training split) on the slice split; empty when there was no
    training split to fit it on.
    """

    task: str
    label: str
    metrics: dict[str, dict[str, float]]
    rows: dict[str, int]
    slices: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    slice_split: str = "test"
    notes: dict[str, str] = field(default_factory=dict)
    test_fingerprint: str | None = None
    baseline: dict[str, float] = field(default_factory=dict)

    def metric(self, name: str, split: str | None = None) -> float:
        """One metric on one split (default: the slice split, i.e. test); ``nan`` if absent."""
        return self.metrics.get(split or self.slice_split, {}).get(name, math.nan)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (``nan`` becomes ``None``)."""

        def clean(d: Mapping[str, float]) -> dict[str, float | None]:
            return {k: _json_float(v) for k, v in d.items()}

        return {
            "task": self.task,
            "label": self.label,
            "metrics": {s: clean(m) for s, m in self.metrics.items()},
            "rows": dict(self.rows),
            "slices": {c: {v: clean(m) for v, m in vals.items()} for c, vals in self.slices.items()},
            "slice_split": self.slice_split,
            "notes": dict(self.notes),
            "test_fingerprint": self.test_fingerprint,
            "baseline": clean(self.baseline),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalResult:
        """Inverse of ``to_dict``."""

        def restore(m: Mapping[str, float | None]) -> dict[str, float]:
            return {k: _from_json_float(v) for k, v in m.items()}

        return cls(
            task=d["task"],
            label=d["label"],
            metrics={s: restore(m) for s, m in d["metrics"].items()},
            rows={s: int(n) for s, n in d.get("rows", {}).items()},
            slices={c: {v: restore(m) for v, m in vals.items()} for c, vals in d.get("slices", {}).items()},
            slice_split=d.get("slice_split", "test"),
            notes=dict(d.get("notes", {})),
            test_fingerprint=d.get("test_fingerprint"),
            baseline=restore(d.get("baseline") or {}),
        )
