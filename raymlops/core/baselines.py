"""The feature matrix a tree-ensemble reference model is fitted on: raw numbers and category codes (pure pyarrow).

The evaluation compares the trained model with a strong tabular reference (gradient-boosted trees) fitted on the
same training split. Trees need neither imputation nor scaling, so numeric features go in raw, nulls as NaN (tree
learners route missing values themselves); categorical features become their index in the fitted transform's
vocabulary, with null and out-of-vocabulary values as NaN. The naive baseline lives in ``core.metrics``
(``naive_outputs``), beside the metrics it is scored with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymlops.core.sketches import as_category_strings
from raymlops.core.transform import Transform, apply_transform
from raymlops.errors import DataError

__all__ = ["MAX_NATIVE_CATEGORIES", "ReferenceMatrix", "describe_reference", "reference_matrix"]

# scikit-learn's HistGradientBoosting takes at most this many categories per native categorical feature
# (max_bins); a wider vocabulary goes in as ordinal codes, which trees still split on.
MAX_NATIVE_CATEGORIES = 255


@dataclass(frozen=True)
class ReferenceMatrix:
    """``X`` float64 [n, features] in the transform's feature order, ``y`` (class indices or targets; ``None``
    without the label column) and which columns are native categorical features."""

    X: np.ndarray
    y: np.ndarray | None
    categorical: list[bool]
    names: list[str]


def _column(table: pa.Table, name: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise DataError(f"column '{name}' is missing; the reference model needs features {table.column_names}")
    return table.column(name)


def reference_matrix(transform: Transform, table: pa.Table) -> ReferenceMatrix:
    """Raw feature matrix of ``table`` for a tree reference model (see the module docstring)."""
    n = table.num_rows
    names = transform.feature_names
    X = np.empty((n, len(names)), dtype=np.float64)
    for j, col in enumerate(transform.numeric):
        values = _column(table, col.name)
        try:
            X[:, j] = pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise DataError(f"numeric feature '{col.name}' of type {values.type} cannot be read as numbers: "
                            f"{err}") from None
    offset = len(transform.numeric)
    for j, col in enumerate(transform.categorical):
        idx = pc.index_in(as_category_strings(_column(table, col.name)), value_set=pa.array(col.vocab, pa.string()))
        X[:, offset + j] = pc.cast(idx, pa.float64()).to_numpy(zero_copy_only=False)
    X[~np.isfinite(X)] = np.nan  # +-inf is as unknown as null to a tree
    y = None
    if transform.label in table.column_names:
        label_only = Transform([], [], transform.label, transform.task, transform.classes)
        y = apply_transform(label_only, {transform.label: table.column(transform.label)}, with_label=True)["y"]
    categorical = [False] * offset + [len(c.vocab) <= MAX_NATIVE_CATEGORIES for c in transform.categorical]
    return ReferenceMatrix(X, y, categorical, names)


def describe_reference(doc: dict[str, Any] | None, primary_metric: str, model_value: float) -> str:
    """One phrase for a progress line: the reference's primary metric and how far the model is from it."""
    if not doc:
        return ""
    if doc.get("skipped"):
        return f"reference model skipped ({doc['skipped']})"
    ref = (doc.get("metrics") or {}).get(primary_metric)
    if ref is None or not np.isfinite(ref):
        return f"reference {doc.get('model')}: {primary_metric} undefined"
    gap = f" (model {model_value - ref:+.4f})" if np.isfinite(model_value) else ""
    return f"reference {doc.get('model')} {primary_metric} {ref:.4f}{gap}"
