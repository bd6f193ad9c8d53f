"""A strong tabular reference: scikit-learn's HistGradientBoosting fitted on the same training split.

Informational, not a gate: the evaluation records how far the trained model is from gradient-boosted trees on
the same test rows, so a user sees when the model under-fits data that trees handle well. It runs in one process,
so only when the training split is small enough (``evaluation.reference_max_rows``). Binary decisions use a
threshold chosen on the validation split with the same objective as the model's, so F1, precision and recall
compare like with like.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
from threadpoolctl import threadpool_limits

from raymlops.core.baselines import reference_matrix
from raymlops.core.metrics import choose_threshold, compute_metrics
from raymlops.core.transform import Transform

__all__ = ["fit_reference"]


def _model(task: str, categorical: list[bool], seed: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    kind = HistGradientBoostingRegressor if task == "regression" else HistGradientBoostingClassifier
    return kind(categorical_features=categorical if any(categorical) else None, random_state=seed)


def _outputs(task: str, model: Any, X: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    if task == "regression":
        return {"value": model.predict(X)}
    p = model.predict_proba(X)
    if task == "binary":
        return {"probability": p[:, 1], "label": (p[:, 1] >= threshold).astype(np.int64)}
    return {"probabilities": p, "label": p.argmax(axis=1).astype(np.int64)}


def fit_reference(
    transform: Transform,
    train: pa.Table,
    test: pa.Table,
    validation: pa.Table | None = None,
    *,
    threshold_objective: str = "f1",
    seed: int = 0,
    n_threads: int = 1,
) -> dict[str, Any]:
    """Fit HistGradientBoosting (classifier or regressor) on ``train`` and score it on ``test``.

    Returns ``{"model", "metrics" (test), "train_rows", "test_rows", "fit_time_s", "threshold"}``, or
    ``{"skipped": why}`` when the training split cannot fit it (no rows, one class only). Predictions outside the
    fit are cheap; ``n_threads`` bounds the OpenMP threads of the fit.
    """
    task = transform.task
    tr = reference_matrix(transform, train)
    te = reference_matrix(transform, test)
    if tr.y is None or te.y is None or not len(tr.y):
        return {"skipped": "the training or test split has no labelled rows"}
    classes_seen = len(np.unique(tr.y)) if task != "regression" else 2
    if classes_seen < 2:
        return {"skipped": "the training split holds a single class"}
    model = _model(task, tr.categorical, seed)
    t0 = time.perf_counter()
    # OpenMP threads spin-wait: on a shared machine (2 cores busy with Ray workers) an unlimited pool took 50 s
    # where one thread took 3 s (breast_cancer, 569 rows).
    with threadpool_limits(limits=n_threads):
        model.fit(tr.X, tr.y)
    fit_time = time.perf_counter() - t0
    threshold = None
    if task == "binary":
        threshold = 0.5
        if validation is not None and validation.num_rows:
            va = reference_matrix(transform, validation)
            if va.y is not None:
                threshold = choose_threshold(va.y, model.predict_proba(va.X)[:, 1], threshold_objective).threshold
    if task == "multiclass" and len(model.classes_) != len(transform.classes):
        # A class absent from the training rows has no column in predict_proba: put it back as probability 0.
        full = np.zeros((te.X.shape[0], len(transform.classes)))
        full[:, model.classes_.astype(np.int64)] = model.predict_proba(te.X)
        outputs = {"probabilities": full, "label": full.argmax(axis=1).astype(np.int64)}
    else:
        outputs = _outputs(task, model, te.X, threshold or 0.5)
    metrics = compute_metrics(task, te.y, outputs)  # te.y holds class indices already: no classes to map
    return {"model": type(model).__name__, "metrics": metrics, "train_rows": int(train.num_rows),
            "test_rows": int(test.num_rows), "fit_time_s": round(fit_time, 3), "threshold": threshold}

