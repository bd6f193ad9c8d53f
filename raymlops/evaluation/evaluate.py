"""Evaluate a model package on the data splits: metrics per split, and per slice on the test split.

Predictions run where the data is: a Ray Dataset goes through ``map_batches`` with ``PredictBatch`` (an actor pool
that loads the model once per actor); a ``pa.Table`` is predicted in-process in batches by the same class. Labels,
slice values and outputs are then collected on the driver, where ``raymlops.core.metrics`` scores them (evaluation
splits are small next to training data).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymlops.core.metrics import (
    EvalResult,
    compute_metrics,
    explain_metrics,
    metrics_for_task,
    naive_outputs,
    sliced_metrics,
    split_fingerprint,
)
from raymlops.errors import DataError, PackageError

__all__ = ["EvalResult", "PredictBatch", "evaluate", "evaluate_champion_on", "evaluation_tables", "predict_splits",
           "tag_split"]

SLICES_TABLE = "evaluation/slices.json"
COMPARISON_TABLE = "evaluation/comparison.json"

_Y = "__y"
_SLICE = "__slice__"
_OUT = "__out__"
_SPLIT = "__split__"


def _require_digest(model: Any, expected_digest: str | None) -> None:
    if isinstance(model, str) and not expected_digest:
        raise PackageError(
            f"evaluating the package at {model} needs its expected digest (expected_digest=, from save_package "
            "or the registry): a package is never loaded unverified; or pass a model loaded with load_package"
        )


def _load(model: Any, expected_digest: str | None, policy: Any) -> Any:
    if isinstance(model, str):
        from raymlops.model.package import load_package

        _require_digest(model, expected_digest)
        return load_package(model, expected_digest, policy=policy)
    return model


class PredictBatch:
    """``map_batches`` callable: a pyarrow batch in; its label, slice columns and model outputs out.

    ``model`` is a loaded model (anything with ``.predict(batch) -> dict[str, np.ndarray]``) or a package URI,
    loaded once per actor (verified against ``expected_digest`` under ``policy``, a ``PackagePolicy``) so the
    weights never travel through the task arguments.
    """

    def __init__(self, model: Any, label: str, slices: Sequence[str] = (), expected_digest: str | None = None,
                 policy: Any = None):
        self.model = _load(model, expected_digest, policy)
        self.label = label
        self.slices = list(slices)

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        columns = {_Y: batch.column(self.label)}
        columns.update({_SLICE + s: batch.column(s) for s in self.slices})
        if _SPLIT in batch.column_names:
            columns[_SPLIT] = batch.column(_SPLIT)
            batch = batch.drop_columns([_SPLIT])
        outputs = self.model.predict(batch)
        if not isinstance(outputs, Mapping) or not outputs:
            raise PackageError(f"model.predict returned {type(outputs).__name__}, expected a dict of arrays")
        for key, value in outputs.items():
            arr = np.asarray(value)
            if arr.shape[:1] != (n,) or arr.ndim > 2:
                raise PackageError(
                    f"model output {key!r} has shape {arr.shape} for a batch of {n} rows; expected ({n},) or ({n}, k)"
                )
            if arr.ndim == 2:
                flat = pa.array(np.ascontiguousarray(arr).reshape(-1))
                columns[_OUT + key] = pa.FixedSizeListArray.from_arrays(flat, arr.shape[1])
            else:
                columns[_OUT + key] = pa.array(arr)
        return pa.table(columns)


def tag_split(batch: pa.Table, name: str) -> pa.Table:
    """``map_batches`` function: add the split name as a column, so all splits share one prediction pass."""
    return batch.append_column(_SPLIT, pa.array([name] * batch.num_rows, pa.string()))


def _column_numpy(col: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_fixed_size_list(col.type):
        width = col.type.list_size
        flat = pa.concat_arrays([c.flatten() for c in col.chunks]) if col.num_chunks else pa.array([], pa.float64())
        return flat.to_numpy(zero_copy_only=False).reshape(-1, width)
    return col.to_numpy()


def _predict_all(model: Any, local_model: Any, splits: Mapping[str, Any], label: str, slices: Sequence[str], batch_size: int,
                 num_cpus: float, max_actors: int, load: dict[str, Any]) -> dict[str, pa.Table | None]:
    """Label, slice columns and outputs of every row of each split; ``None`` for an empty split."""
    out: dict[str, pa.Table | None] = {}
    predict = None
    for name, data in splits.items():
        if isinstance(data, pa.Table):
            predict = predict or PredictBatch(local_model, label, slices)
            parts = [predict(data.slice(i, batch_size)) for i in range(0, data.num_rows, batch_size)]
            out[name] = pa.concat_tables(parts) if parts else None
    remote = [name for name, data in splits.items() if not isinstance(data, pa.Table)]
    if not remote:
        return out
    import ray.data

    # One union and one actor pool for every split: actors (and the model in them) start once, not per split.
    tagged = [splits[name].map_batches(tag_split, fn_kwargs={"name": name}, batch_format="pyarrow",
                                       num_cpus=num_cpus) for name in remote]
    ds = tagged[0].union(*tagged[1:]) if len(tagged) > 1 else tagged[0]
    ds = ds.map_batches(
        PredictBatch,
        fn_constructor_kwargs={"model": model, "label": label, "slices": list(slices), **load},
        batch_format="pyarrow",
        batch_size=batch_size,
        num_cpus=num_cpus,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max_actors),
    )
    parts = [b for b in ds.iter_batches(batch_size=None, batch_format="pyarrow") if b.num_rows]
    table = pa.concat_tables(parts) if parts else None
    for name in remote:
        rows = None if table is None else table.filter(pc.equal(table.column(_SPLIT), name))
        out[name] = rows.drop_columns([_SPLIT]) if rows is not None and rows.num_rows else None
    return out


def _columns_of(data: Any) -> list[str]:
    return list(data.column_names) if isinstance(data, pa.Table) else list(data.schema().names)


def _model_classes(model: Any) -> list[Any] | None:
    classes = getattr(model, "classes", None)
    if classes is None:
        classes = getattr(getattr(model, "transform", None), "classes", None)
    return list(classes) if classes else None


def _prepare(model: Any, splits: Mapping[str, Any], task: str, label: str, slices: Sequence[str],
             classes: Sequence[Any] | None, load: dict[str, Any]) -> tuple[Any, list[Any] | None]:
    local_model = model
    has_local = any(isinstance(d, pa.Table) for d in splits.values())
    _require_digest(model, load["expected_digest"])  # before any data is read or any actor starts
    if isinstance(model, str) and (has_local or (classes is None and task != "regression")):
        local_model = _load(model, **load)  # the driver needs the classes; actors still load from the URI themselves
    classes = list(classes) if classes is not None else _model_classes(local_model)
    for name, data in splits.items():
        missing = [c for c in (label, *slices) if c not in _columns_of(data)]
        if missing:
            raise DataError(
                f"split {name!r} has no column(s) {missing} (label {label!r}, slices {list(slices)}); "
                "check data.label and data.slices against the data"
            )
    return local_model, classes


def predict_splits(
    model: Any,
    splits: Mapping[str, Any],
    *,
    label: str,
    batch_size: int = 4096,
    num_cpus: float = 0.25,
    max_actors: int = 2,
    expected_digest: str | None = None,
    policy: Any = None,
) -> dict[str, tuple[np.ndarray, dict[str, np.ndarray]] | None]:
    """The label values and the model's outputs for every row of each split (``None`` for an empty split).

    Same prediction path as ``evaluate`` (``PredictBatch``, in process for tables, an actor pool for Ray
    Datasets), for callers that need the raw scores, e.g. to choose a decision threshold on validation.
    ``expected_digest`` and ``policy``: as for ``evaluate``.
    """
    load = {"expected_digest": expected_digest, "policy": policy}
    local_model, _ = _prepare(model, splits, "regression", label, (), (), load)
    tables = _predict_all(model, local_model, splits, label, (), batch_size, num_cpus, max_actors, load)
    return {name: None if table is None else _unpack(table) for name, table in tables.items()}


def _unpack(table: pa.Table) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    outputs = {c[len(_OUT):]: _column_numpy(table.column(c)) for c in table.column_names if c.startswith(_OUT)}
    return _column_numpy(table.column(_Y)), outputs


def evaluate(
    model: Any,
    splits: Mapping[str, Any],
    *,
    task: str,
    label: str,
    slices: Sequence[str] = (),
    classes: Sequence[Any] | None = None,
    slice_split: str = "test",
    baseline_split: str | None = "train",
    batch_size: int = 4096,
    num_cpus: float = 0.25,
    max_actors: int = 2,
    expected_digest: str | None = None,
    policy: Any = None,
) -> EvalResult:
    """Metrics of ``model`` on each split, and per slice column on ``slice_split``.

    ``model``: a loaded package (``load_package(uri, digest)``) or its URI, which then needs ``expected_digest``
    (``PackageError`` without it) and is loaded under ``policy`` (a ``PackagePolicy``: the config's
    ``model.policy()``). ``splits``: ``{name: pa.Table | ray Dataset}``
    with the raw columns (features, label, slice columns). ``classes``: label classes in the order of the model's
    probability columns; by default the model's transform's. When ``splits`` holds ``baseline_split`` (the
    training split), the naive baseline fitted on its labels is scored on ``slice_split`` too (``baseline``).
    """
    load = {"expected_digest": expected_digest, "policy": policy}
    local_model, classes = _prepare(model, splits, task, label, slices, classes, load)
    metrics: dict[str, dict[str, float]] = {}
    rows: dict[str, int] = {}
    notes: dict[str, str] = {}
    result_slices: dict[str, dict[str, dict[str, float]]] = {}
    test_fingerprint = None
    baseline: dict[str, float] = {}
    tables = _predict_all(model, local_model, splits, label, slices, batch_size, num_cpus, max_actors, load)
    for name in splits:
        table = tables[name]
        if table is None:
            metrics[name] = {m: math.nan for m in metrics_for_task(task)}
            notes.update({f"{name}.{m}": f"split {name!r} has no rows" for m in metrics[name]})
            rows[name] = 0
            continue
        if table.column(_Y).null_count:
            raise DataError(
                f"split {name!r}: label column {label!r} has {table.column(_Y).null_count} nulls; "
                "rows without a label cannot be scored: drop them before evaluation (validation.require_label)"
            )
        y, outputs = _unpack(table)
        metrics[name], why = explain_metrics(task, y, outputs, classes)
        notes.update({f"{name}.{m}": reason for m, reason in why.items()})
        rows[name] = table.num_rows
        if name == slice_split:
            slice_values = {s: table.column(_SLICE + s) for s in slices}
            result_slices = sliced_metrics(task, y, outputs, slice_values, classes)
            test_fingerprint = split_fingerprint(y, slice_values)
    fit_on, score_on = tables.get(baseline_split or ""), tables.get(slice_split)
    if fit_on is not None and score_on is not None:
        y_test, test_outputs = _unpack(score_on)
        probs = test_outputs.get("probabilities")
        n_classes = len(classes) if classes else (probs.shape[1] if probs is not None and probs.ndim == 2 else None)
        naive = naive_outputs(task, _column_numpy(fit_on.column(_Y)), len(y_test), classes, n_classes)
        baseline = compute_metrics(task, y_test, naive, classes)
    return EvalResult(
        task=task,
        label=label,
        metrics=metrics,
        rows=rows,
        slices=result_slices,
        slice_split=slice_split,
        notes=notes,
        test_fingerprint=test_fingerprint,
        baseline=baseline,
    )


def evaluate_champion_on(
    test_split: Any, champion_model: Any, *, task: str, label: str, slices: Sequence[str] = (), **kwargs: Any
) -> EvalResult:
    """Evaluate the champion on the challenger's test split, so that blessing compares both on the same rows."""
    return evaluate(champion_model, {"test": test_split}, task=task, label=label, slices=slices, **kwargs)


def evaluation_tables(doc: Mapping[str, Any]) -> dict[str, dict[str, list[Any]]]:
    """The evaluate step's document (``evaluation.json``) as column tables for MLflow's ``log_table``.

    ``evaluation/slices.json``: one row per model (challenger, and the champion on the same rows), slice column and
    value, with its rows and metrics. ``evaluation/comparison.json``: one row per metric of the slice split, the
    challenger beside the champion, the naive baseline and the reference model (``None`` where one is absent).
    """
    challenger = doc.get("challenger") or {}
    models = {"challenger": challenger, "champion": doc.get("champion") or {}}
    names: list[str] = []
    rows: list[tuple[str, str, str, Mapping[str, Any]]] = []
    for model, result in models.items():
        for column, values in (result.get("slices") or {}).items():
            for value, metrics in values.items():
                rows.append((model, column, value, metrics))
                names += [k for k in metrics if k != "rows" and k not in names]
    slices: dict[str, list[Any]] = {"model": [], "slice": [], "value": [], "rows": [], **{n: [] for n in names}}
    for model, column, value, metrics in rows:
        for key, cell in (("model", model), ("slice", column), ("value", value), ("rows", metrics.get("rows"))):
            slices[key].append(cell)
        for n in names:
            slices[n].append(metrics.get(n))

    split = challenger.get("slice_split", "test")
    sides = {"challenger": (challenger.get("metrics") or {}).get(split) or {},
             "champion": (models["champion"].get("metrics") or {}).get(split) or {},
             "baseline": challenger.get("baseline") or {},
             "reference": ((doc.get("reference") or {}).get("metrics")) or {}}
    metrics = list(sides["challenger"]) + [m for side in sides.values() for m in side if m not in sides["challenger"]]
    comparison: dict[str, list[Any]] = {"metric": list(dict.fromkeys(metrics))}
    for side, values in sides.items():
        comparison[side] = [values.get(m) for m in comparison["metric"]]
    return {SLICES_TABLE: slices, COMPARISON_TABLE: comparison}
