"""The fitted feature transform: the ONE code path from raw rows to model inputs.

Ray Data batches (training, batch prediction), ``pa.Table`` blocks and column-ised JSON request rows (online
serving) all go through ``apply_transform``, so training and serving cannot disagree. Everything is vectorised
with pyarrow / numpy; the fitted state is plain JSON (no pickle).

Numeric: non-finite and null values are missing and take the fitted ``impute`` value; then
``(x - mean) / std``, clipped to the float32 range, so outputs are always finite. Categorical: values are
stringified exactly as the profile does (``sketches.as_category_strings``: bool -> 'true'/'false', 3 -> '3'),
index 0 is out-of-vocabulary / null, known categories are 1..len(vocab) (most frequent first, ties by name).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymlops.core.sketches import as_category_strings, dtype_family
from raymlops.errors import DataError, SchemaError

__all__ = [
    "CategoricalColumn",
    "NumericColumn",
    "Transform",
    "apply_transform",
    "fit_transform",
]

Task = Literal["binary", "multiclass", "regression"]
Batch = pa.Table | pa.RecordBatch | Mapping[str, Any]

_FORMAT = 1
_F32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class NumericColumn:
    """A numeric feature: missing values become ``impute``, then ``(x - mean) / std``."""

    name: str
    impute: float
    mean: float = 0.0
    std: float = 1.0


@dataclass(frozen=True)
class CategoricalColumn:
    """A categorical feature: ``vocab[i]`` maps to index ``i + 1``; anything else (and null) to 0."""

    name: str
    vocab: list[str]


@dataclass(frozen=True)
class Transform:
    """Fitted transform: numeric and categorical columns in model-input order, the label and its classes."""

    numeric: list[NumericColumn]
    categorical: list[CategoricalColumn]
    label: str
    task: Task
    classes: list[Any] = field(default_factory=list)

    @property
    def cardinalities(self) -> list[int]:
        """Embedding table sizes: ``len(vocab) + 1`` per categorical column (index 0 is OOV/null)."""
        return [len(c.vocab) + 1 for c in self.categorical]

    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.numeric] + [c.name for c in self.categorical]

    def to_json(self) -> str:
        """Plain JSON; floats are written with ``repr`` precision, so ``from_json`` restores them exactly."""
        doc = {"format": _FORMAT, **asdict(self)}
        return json.dumps(doc, allow_nan=False, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Transform:
        """Inverse of ``to_json``; raises ``DataError`` on anything that is not a transform document."""
        try:
            doc = json.loads(text)
            if doc.get("format") != _FORMAT:
                raise ValueError(f"unsupported format {doc.get('format')!r} (expected {_FORMAT})")
            return cls(
                numeric=[NumericColumn(c["name"], float(c["impute"]), float(c["mean"]), float(c["std"]))
                         for c in doc["numeric"]],
                categorical=[CategoricalColumn(c["name"], [str(v) for v in c["vocab"]]) for c in doc["categorical"]],
                label=str(doc["label"]),
                task=_task(doc["task"]),
                classes=list(doc["classes"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise DataError(f"not a valid transform document: {err}; regenerate it with prepare") from None


def _task(value: Any) -> Task:
    if value not in ("binary", "multiclass", "regression"):
        raise ValueError(f"unknown task {value!r}")
    return value


# ------------------------------------------------------------------------------------------------ fitting
def _name(item: Any) -> str:
    return item if isinstance(item, str) else item.name


def _finite(value: Any, fallback: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return fallback
    return v if math.isfinite(v) else fallback


def _feature(profile: Any, name: str, kind: str) -> Any:
    feature = profile.features.get(name)
    if feature is None:
        raise SchemaError(
            f"the training profile has no column '{name}'; profile the training split with every schema feature"
        )
    if feature.kind != kind:
        raise SchemaError(
            f"column '{name}' is {feature.kind} in the training profile but {kind} in the schema; "
            "make the schema and the profile agree (data.categorical)"
        )
    return feature


def _fit_numeric(name: str, sketch: Any, impute: str, standardize: bool) -> NumericColumn:
    if not sketch.count:  # all null in training: every value is imputed to 0 and passed through
        return NumericColumn(name, 0.0, 0.0, 1.0)
    median = _finite(sketch.quantile(0.5), 0.0)
    mean = _finite(sketch.mean, median)
    # Moments of huge values overflow (std = inf); the interquartile range still gives a usable scale.
    iqr_std = _finite((sketch.quantile(0.75) - sketch.quantile(0.25)) / 1.349, 1.0)
    std = _finite(sketch.std, iqr_std)
    if impute == "median":
        fill = median
    elif impute == "mean":
        fill = mean
    elif impute == "zero":
        fill = 0.0
    else:
        raise SchemaError(f"prepare.numeric_impute: unknown {impute!r}; use median, mean or zero")
    if not standardize:
        return NumericColumn(name, fill, 0.0, 1.0)
    # A constant column has std 0: scale 1 keeps it at 0 after centring instead of dividing by zero.
    return NumericColumn(name, fill, mean, std if std > 0 else 1.0)


def _fit_vocab(name: str, counts: Mapping[str, int], min_count: int, max_categories: int) -> CategoricalColumn:
    kept = [(int(n), str(k)) for k, n in counts.items() if int(n) >= min_count]
    kept.sort(key=lambda kn: (-kn[0], kn[1]))
    return CategoricalColumn(name, [k for _, k in kept[:max_categories]])


def _parse_class(text: str, dtype: str) -> Any:
    """A class as the label's own type, so predictions report 1 / True / 'yes', not '1' / 'true'."""
    family = dtype_family(dtype)
    if family == "bool":
        return text == "true"
    if family == "integer":
        return int(text)
    if family == "float":
        value = float(text)
        return int(value) if value.is_integer() else value
    return text


def _fit_classes(label_spec: Any, feature: Any, task: str) -> list[Any]:
    if task == "regression":
        return []
    name, dtype, sketch = feature.name, str(feature.dtype), feature.sketch
    domain = getattr(label_spec, "domain", None)
    if dtype_family(dtype) == "bool":
        observed: list[Any] = [False, True]
    elif domain:
        observed = [_parse_class(str(v), dtype) for v in domain]
    elif feature.kind == "categorical":
        observed = [_parse_class(k, dtype) for k, n in sketch.counts.items() if n > 0]
    elif sketch.count and float(sketch.min).is_integer() and float(sketch.max).is_integer() \
            and sketch.max - sketch.min <= 1000:
        observed = list(range(int(sketch.min), int(sketch.max) + 1))
    else:
        raise SchemaError(
            f"label '{name}': cannot list the classes of a {task} task from a numeric profile; "
            f"profile the label as categorical"
        )
    classes = sorted(set(observed), key=lambda v: (str(type(v)), v))
    if task == "binary":
        if all(isinstance(c, int) and not isinstance(c, bool) for c in classes) and set(classes) <= {0, 1}:
            return [0, 1]
        if len(classes) != 2:
            raise SchemaError(
                f"label '{name}': a binary task needs 0/1, boolean or exactly two classes, found {classes[:10]}; "
                "fix the label or set data.task"
            )
    elif len(classes) < 2:
        raise SchemaError(f"label '{name}': a multiclass task needs at least two classes, found {classes}")
    return classes


def fit_transform(
    train_profile: Any,
    schema: Any,
    *,
    numeric_impute: str = "median",
    standardize: bool = True,
    min_category_count: int = 1,
    max_categories: int = 1000,
) -> Transform:
    """Fit a ``Transform`` from the profile of the TRAINING split and the frozen schema.

    Numeric features take their impute value, mean and std from the numeric sketches; categorical features
    keep categories seen at least ``min_category_count`` times, most frequent first (ties by name), at most
    ``max_categories``. Classes of a classification label come from the schema domain or the profile.
    """
    label_spec = schema.label
    if label_spec is None:
        raise SchemaError("the schema has no label column; set data.label to train")
    label = _name(label_spec)
    numeric = [
        _fit_numeric(n, _feature(train_profile, n, "numeric").sketch, numeric_impute, standardize)
        for n in map(_name, schema.numeric_features)
    ]
    categorical = [
        _fit_vocab(n, _feature(train_profile, n, "categorical").sketch.counts, min_category_count, max_categories)
        for n in map(_name, schema.categorical_features)
    ]
    label_feature = train_profile.features.get(label)
    if label_feature is None:
        raise SchemaError(f"the training profile has no label column '{label}'; profile it with the features")
    classes = _fit_classes(label_spec, label_feature, schema.task)
    return Transform(numeric, categorical, label, schema.task, classes)


# ----------------------------------------------------------------------------------------------- applying
def _to_arrow(value: Any, name: str) -> pa.Array | pa.ChunkedArray:
    if isinstance(value, pa.Array | pa.ChunkedArray):
        return value
    if isinstance(value, np.ndarray) and value.ndim != 1:
        raise DataError(f"column '{name}' has shape {value.shape}; send one scalar value per row")
    try:
        return pa.array(value, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as err:
        raise DataError(f"column '{name}' cannot be read ({err}); send values of one type per column") from None


def _columns(batch: Batch) -> tuple[Mapping[str, Any], int]:
    if isinstance(batch, pa.RecordBatch):
        batch = pa.Table.from_batches([batch])
    if isinstance(batch, pa.Table):
        return {n: batch.column(n) for n in batch.column_names}, batch.num_rows
    lengths = {n: len(v) for n, v in batch.items()}
    if len(set(lengths.values())) > 1:
        raise DataError(f"batch columns have different lengths {lengths}; every column needs one value per row")
    return batch, next(iter(lengths.values()), 0)


def _get(cols: Mapping[str, Any], name: str, transform: Transform) -> Any:
    if name not in cols:
        raise DataError(
            f"column '{name}' is missing from the batch; the model needs features {transform.feature_names}"
        )
    return cols[name]


def _numeric_values(value: Any, name: str) -> np.ndarray:
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "biuf":
        return value.astype(np.float64)
    arr = _to_arrow(value, name)
    t = arr.type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
            or pa.types.is_decimal(t) or pa.types.is_null(t)):
        raise DataError(f"numeric feature '{name}' has type {t}; send numbers (e.g. 3.5) or null")
    return arr.cast(pa.float64()).to_numpy(zero_copy_only=False)


def _label(transform: Transform, value: Any) -> np.ndarray:
    name = transform.label
    if transform.task == "regression":
        y = _numeric_values(value, name)
        if not np.isfinite(y).all():
            raise DataError(f"label '{name}' has {int((~np.isfinite(y)).sum())} null or non-finite values; "
                            "drop those rows before training")
        return y.astype(np.float32)
    keys = [str(k) for k in as_category_strings(pa.array(transform.classes)).to_pylist()]
    width = len(keys)
    if transform.task == "binary" and sorted(keys) in (["0", "1"], ["false", "true"]):
        keys, width = ["0", "1", "false", "true"], 2  # 0/1 and booleans are interchangeable for binary labels
    idx = pc.index_in(as_category_strings(_to_arrow(value, name)), value_set=pa.array(keys, pa.string()))
    if idx.null_count:
        bad = pc.unique(pc.filter(_to_arrow(value, name), pc.is_null(idx))).to_pylist()[:10]
        raise DataError(f"label '{name}' has values {bad} (None = missing) outside the training classes "
                        f"{transform.classes}; drop those rows, or retrain with them in the training split")
    y = idx.to_numpy(zero_copy_only=False) % width
    return y.astype(np.float32) if transform.task == "binary" else y.astype(np.int64)


def apply_transform(transform: Transform, batch: Batch, *, with_label: bool | None = None) -> dict[str, np.ndarray]:
    """Model inputs for a batch: ``{"x_num": float32 [n, k], "x_cat": int64 [n, m]}`` plus ``"y"``.

    ``batch`` is a ``pa.Table`` / ``RecordBatch`` or a dict of columns (numpy arrays or lists, e.g. JSON
    request rows column-ised). ``y`` (float32 for binary/regression, int64 class index for multiclass) is added
    when the label column is present, or always/never with ``with_label=True/False``.
    """
    cols, n = _columns(batch)
    x_num = np.empty((n, len(transform.numeric)), dtype=np.float64)
    for j, col in enumerate(transform.numeric):
        x_num[:, j] = _numeric_values(_get(cols, col.name, transform), col.name)
    if transform.numeric:
        impute = np.array([c.impute for c in transform.numeric])
        mean = np.array([c.mean for c in transform.numeric])
        std = np.array([c.std for c in transform.numeric])
        x_num = np.where(np.isfinite(x_num), x_num, impute)
        with np.errstate(over="ignore", invalid="ignore"):
            x_num = (x_num - mean) / std
        # Overflow of extreme inputs (1e308 - mean) must not reach the model as inf/NaN.
        x_num = np.clip(np.nan_to_num(x_num, nan=0.0, posinf=_F32_MAX, neginf=-_F32_MAX), -_F32_MAX, _F32_MAX)
    x_cat = np.zeros((n, len(transform.categorical)), dtype=np.int64)
    for j, col in enumerate(transform.categorical):
        values = as_category_strings(_to_arrow(_get(cols, col.name, transform), col.name))
        idx = pc.index_in(values, value_set=pa.array(col.vocab, pa.string()))
        x_cat[:, j] = pc.fill_null(pc.add(idx, 1), 0).to_numpy(zero_copy_only=False)
    out = {"x_num": x_num.astype(np.float32), "x_cat": x_cat}
    if with_label or (with_label is None and transform.label in cols):
        if transform.label not in cols:
            raise DataError(f"label column '{transform.label}' is missing from the batch; include it, or pass "
                            "with_label=False to transform features only")
        out["y"] = _label(transform, cols[transform.label])
    return out
