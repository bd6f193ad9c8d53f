"""What a model package looks like to MLflow's pyfunc: its input and output columns, an input example, and data
frames turned into the columns of a JSON request. Pure: the shapes here are plain dicts in MLflow's column-spec JSON
(``{"type", "name", "required"}``); ``raymlops.registry.mlmodel`` hands them to MLflow.

Decisions (one place):

* Inputs are the schema's features, in schema order, typed after their stored family (``long``, ``double``,
  ``boolean``, ``string``), as MLflow infers a signature from the training frame: MLflow refuses an int64 column
  where the signature says ``double``. A nullable integer feature is ``double`` (pandas holds a missing integer as
  NaN, which MLflow refuses in a ``long`` column). A nullable feature is ``required: false``: it may be left out,
  as in the HTTP API. (MLflow's type checks come first, so its pyfunc refuses ``2.5`` for an integer column,
  which the HTTP API accepts.)
* Outputs are the task's prediction fields (``raymlops.core.outputs``): the label typed after the classes.
* The input example is made from the package alone (the transform's means and vocabularies inside the schema's
  bounds), never from data rows, so no training record reaches the registry.
* A data frame is checked and column-ised by the serving validator (``RequestValidator``), so MLflow's pyfunc
  accepts and refuses what the HTTP API does and hands ``LoadedModel.predict`` the same columns.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from raymlops.core.outputs import prediction_fields
from raymlops.core.request_validation import ParsedRequest, RequestError, RequestValidator
from raymlops.core.schema import ColumnSpec, Schema
from raymlops.core.sketches import dtype_family
from raymlops.core.transform import Transform
from raymlops.errors import DataError

__all__ = ["frame_records", "frame_request", "input_colspecs", "input_example", "output_colspecs", "pyfunc_validator"]

_TYPES = {"integer": "long", "float": "double", "bool": "boolean", "string": "string"}
_MAX_SHOWN = 10


def input_colspecs(schema: Schema) -> list[dict[str, Any]]:
    """MLflow column specs of the model's inputs: one per schema feature (see the module docstring)."""
    return [{"type": _input_type(c), "name": c.name, "required": not c.nullable} for c in schema.features]


def _input_type(c: ColumnSpec) -> str:
    if c.kind not in ("numeric", "categorical"):
        return "string"  # timestamp / string features are passed as sent and never reach the model
    family = dtype_family(c.dtype)
    if family == "integer" and c.nullable:
        return "double"
    return _TYPES.get(family, "double" if c.kind == "numeric" else "string")


def output_colspecs(task: str, classes: Sequence[Any]) -> list[dict[str, Any]]:
    """MLflow column specs of one prediction: the task's prediction fields, the label typed after ``classes``."""
    specs: list[dict[str, Any]] = []
    for name in prediction_fields(task):
        if name == "probabilities":
            specs.append({"type": "array", "items": {"type": "double"}, "name": name, "required": True})
        elif name == "label":
            specs.append({"type": _value_type(classes), "name": name, "required": True})
        else:
            specs.append({"type": "double", "name": name, "required": True})
    return specs


def _value_type(values: Sequence[Any]) -> str:
    if values and all(isinstance(v, bool) for v in values):
        return "boolean"
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "long"
    if values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return "double"
    return "string"


def input_example(schema: Schema, transform: Transform, rows: int = 2) -> list[dict[str, Any]]:
    """``rows`` valid instances made from the package: numeric features near the transform's mean (inside the
    schema's recorded range), categorical ones cycling through the transform's vocabulary (its domain if none),
    each value in its column's JSON type."""
    numeric = {c.name: c for c in transform.numeric}
    vocab = {c.name: c.vocab for c in transform.categorical}
    out = []
    for i in range(rows):
        row: dict[str, Any] = {}
        for c in schema.features:
            if c.kind == "numeric":
                row[c.name] = _example_number(c, numeric.get(c.name), i)
            elif c.kind == "categorical":
                categories = vocab.get(c.name) or c.domain or []
                row[c.name] = _typed_category(c, categories[i % len(categories)]) if categories else None
            else:
                row[c.name] = None if c.nullable else ""
        out.append(row)
    return out


def _example_number(c: ColumnSpec, fitted: Any, i: int) -> int | float:
    mean = fitted.mean if fitted is not None else 0.0
    std = fitted.std if fitted is not None else 1.0
    value = mean + 0.5 * i * std  # a second row that differs, still a typical value
    lo = -math.inf if c.min is None else c.min
    hi = math.inf if c.max is None else c.max
    value = min(max(value, lo), hi)
    if dtype_family(c.dtype) == "integer":
        return int(round(value))
    return round(float(value), 4)


def _typed_category(c: ColumnSpec, category: str) -> Any:
    """A category string (as the transform stores it) as the JSON value of the column's own type."""
    family = dtype_family(c.dtype)
    try:
        if family == "integer":
            return int(category)
        if family == "float":
            return float(category)
    except ValueError:  # a category string that does not parse: send it as text, which serving accepts
        return category
    if family == "bool":
        return category == "true"
    return category


def pyfunc_validator(schema: Schema) -> RequestValidator:
    """The serving validator with no body or row limit: pyfunc callers batch as they like."""
    return RequestValidator(schema, max_body_bytes=sys.maxsize, max_instances=sys.maxsize)


def frame_records(frame: Any) -> list[dict[str, Any]]:
    """Rows of a pandas DataFrame, a dict of columns or a list of dicts, with JSON values: numpy scalars as Python
    ones, NaN / NaT / NA as None, timestamps as ISO text (as a JSON client sends them)."""
    if hasattr(frame, "to_dict") and hasattr(frame, "columns"):
        rows = frame.to_dict(orient="records")
    elif isinstance(frame, Mapping):
        columns = {str(k): list(v) for k, v in frame.items()}
        n = len(next(iter(columns.values()))) if columns else 0
        rows = [{k: v[i] for k, v in columns.items()} for i in range(n)]
    elif isinstance(frame, Sequence) and not isinstance(frame, str | bytes):
        rows = list(frame)
    else:
        raise DataError(f"cannot predict a {type(frame).__name__}; pass a pandas DataFrame, a dict of columns or a "
                        "list of {feature: value} dicts")
    return [{str(k): _json_value(v) for k, v in r.items()} if isinstance(r, Mapping) else r for r in rows]


def _json_value(v: Any) -> Any:
    if v is None or type(v).__name__ in ("NAType", "NaTType"):
        return None
    if hasattr(v, "isoformat"):  # datetime, pandas Timestamp, numpy datetime64 via .item() below
        return v.isoformat()
    item = getattr(v, "item", None)
    if callable(item) and not isinstance(v, str | bytes | list | dict):
        try:
            v = item()
        except (TypeError, ValueError):  # an array, not a scalar: its list
            return v.tolist() if hasattr(v, "tolist") else v
        if hasattr(v, "isoformat"):
            return v.isoformat()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def frame_request(frame: Any, validator: RequestValidator) -> ParsedRequest:
    """``frame`` (see ``frame_records``) checked and column-ised by ``validator`` exactly as a JSON request body;
    ``DataError`` naming each offending row and field otherwise."""
    rows = frame_records(frame)
    if not rows:
        raise DataError("the input has no rows; send at least one row of features")
    body = json.dumps({"instances": rows}, default=str).encode("utf-8")  # inf is written Infinity: refused as such
    try:
        return validator.validate(body)
    except RequestError as err:
        shown = "; ".join(f"row {d['row']}: {d['message']}" for d in err.details[:_MAX_SHOWN])
        more = f" (and {len(err.details) - _MAX_SHOWN} more)" if len(err.details) > _MAX_SHOWN else ""
        raise DataError(f"{err.message}: {shown}{more}" if shown else err.message) from None
