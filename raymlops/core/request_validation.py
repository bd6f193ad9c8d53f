"""Validation of prediction requests against the frozen schema (the HTTP error contract of the design).

``RequestValidator(schema, ...)`` is built once per model version; ``validate(body)`` turns the raw body into
columns for ``LoadedModel.predict`` or raises ``RequestError`` (status 400, 413 or 422) whose ``to_body()`` is
the JSON error document: ``{"error": {"code", "message", "details": [{"row", "field", "code", "message"}]}}``.

Rules (decisions documented here, one place):

* 413 ``body_too_large`` before anything is parsed. 400 ``malformed_json`` (not UTF-8 JSON, too deeply nested)
  and 400 ``invalid_body`` (not an object, ``instances`` missing or not a list, any other top-level key).
* 422 ``empty_instances``, 422 ``too_many_instances`` (over ``max_instances``: a request-shape problem, not a
  transport one, so 422 rather than 413).
* 422 ``schema_violation`` with one detail per offending (row, field), sorted by row, at most ``MAX_DETAILS``
  (the message gives the total). Detail codes:
  ``not_an_object`` (the instance is not a JSON object; ``field`` is null), ``unknown_feature``,
  ``label_not_allowed`` (labels go to ``:feedback``), ``missing_feature`` (absent and not nullable; an absent
  nullable feature is null), ``null_value`` (explicit null for a non-nullable feature), ``wrong_type``,
  ``non_finite`` (JSON ``NaN``/``Infinity``/``-Infinity`` literals, numbers that overflow such as ``1e400``),
  ``outside_domain`` (only for features whose domain is declared closed: see below), ``string_too_long`` (a
  string value, categorical or passed through, over ``max_string_length`` characters: it would be served, logged
  and profiled whole). An unknown feature's name is shown cut to ``_MAX_NAME_SHOWN`` characters.
* Numeric features take JSON numbers only: ``true``/``false`` and numeric strings are ``wrong_type`` (a typo never
  silently becomes a number); an integer column accepts ``2.5`` (the model sees floats). Values outside the
  frozen [min, max] are served (models must extrapolate) and counted in ``ParsedRequest.out_of_range``.
* Categorical features are compared as category strings, exactly as the transform looks them up
  (``sketches.as_category_strings``). A JSON string is always accepted. A number or boolean is accepted when it
  has the column's own type (int for an integer column, ``true``/``false`` for a bool column, any number for a
  float column; ``3.0`` counts as ``3`` for an integer column) or, for a string column, when its string form is
  in the domain; otherwise ``wrong_type``. Unseen categories are served through the out-of-vocabulary bucket and
  counted in ``ParsedRequest.unseen`` (refusing them would hide the very drift monitoring must see), unless the
  feature is listed in ``closed_domains``: then they are ``outside_domain``.
* ``id``, ``timestamp`` and ``ignored`` columns of the schema may be sent; they are scalars, passed through in
  ``ParsedRequest.passthrough`` (for the prediction log) and never reach the model.
* Duplicate keys inside one JSON object are not detected: the last one wins, as in any JSON parser.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from raymlops.core.schema import ColumnSpec, Schema
from raymlops.core.sketches import as_category_strings, dtype_family
from raymlops.errors import RaymlopsError

__all__ = ["MAX_DETAILS", "ParsedRequest", "RequestError", "RequestValidator", "validate_request"]

MAX_DETAILS = 100
DEFAULT_MAX_STRING_LENGTH = 1024
_MAX_NAME_SHOWN = 64


class RequestError(RaymlopsError):
    """A client mistake: HTTP ``status`` with a machine-readable ``code``, a message and per-field ``details``."""

    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []

    def to_body(self) -> dict[str, Any]:
        """The JSON error document ``{"error": {"code", "message", "details"}}``."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


@dataclass
class ParsedRequest:
    """A valid request, column-ised for ``LoadedModel.predict(columns)``.

    ``columns``: numeric features as float64 arrays (null -> NaN, which the transform imputes like null),
    categorical features as lists of category strings or None. ``instances``: the rows as sent (for the log).
    ``out_of_range`` / ``unseen``: per feature, how many values fell outside the frozen range / domain.
    """

    columns: dict[str, Any]
    n: int
    passthrough: dict[str, list[Any]] = field(default_factory=dict)
    instances: list[dict[str, Any]] = field(default_factory=list)
    out_of_range: dict[str, int] = field(default_factory=dict)
    unseen: dict[str, int] = field(default_factory=dict)


class _NonFinite:
    """Stands for a NaN/Infinity literal, so it is reported instead of flowing on as a float."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text


_ABSENT = object()  # key not in the instance
_SKIP = object()  # the instance itself was not an object: reported once per row, not per field
_NUMBER_TYPES = frozenset((int, float))
_SCALAR_TYPES = (str, int, float, bool, type(None))


def _detail(row: int | None, name: str | None, code: str, message: str) -> dict[str, Any]:
    return {"row": row, "field": name, "code": code, "message": message}


def _show(value: Any) -> str:
    if isinstance(value, _NonFinite):
        return value.text
    text = json.dumps(value) if isinstance(value, str | int | float | bool | type(None)) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "array", dict: "object", type(None): "null"}.get(type(value), type(value).__name__)


def _float_category(value: float) -> str:
    # Arrow prints floats its own way (1.0 -> '1', 1e-07 -> '1e-7'); the transform uses arrow, so must we.
    return as_category_strings(pa.array([value], pa.float64()))[0].as_py()


class _Feature:
    """One schema feature, with its checks precomputed."""

    __slots__ = ("closed", "domain", "family", "hi", "kind", "lo", "name", "nullable")

    def __init__(self, spec: ColumnSpec, closed: bool):
        self.name = spec.name
        self.kind = spec.kind
        self.family = dtype_family(spec.dtype)
        self.nullable = spec.nullable
        self.domain = frozenset(spec.domain) if spec.domain is not None else None
        self.closed = closed and self.domain is not None
        self.lo = -math.inf if spec.min is None else spec.min
        self.hi = math.inf if spec.max is None else spec.max

    def absent_or_null(self, row: int, value: Any, bad: list) -> bool:
        """Report an absent / null value if it is not allowed; True when the value is absent or null."""
        if value is _ABSENT:
            if not self.nullable:
                bad.append(_detail(row, self.name, "missing_feature",
                                   f"feature '{self.name}' is missing; send a value for it in every instance"))
            return True
        if value is None:
            if not self.nullable:
                bad.append(_detail(row, self.name, "null_value",
                                   f"feature '{self.name}' cannot be null; send a value"))
            return True
        return False

    def non_finite(self, row: int, value: Any, bad: list) -> bool:
        if isinstance(value, _NonFinite) or (isinstance(value, float) and not math.isfinite(value)):
            bad.append(_detail(row, self.name, "non_finite",
                               f"feature '{self.name}' is {_show(value)}; send a finite number"
                               + (" or null" if self.nullable else "")))
            return True
        return False


class RequestValidator:
    """Validates request bodies against one frozen schema; build it once per model version."""

    def __init__(self, schema: Schema, *, max_body_bytes: int, max_instances: int,
                 closed_domains: Collection[str] = (), max_string_length: int = DEFAULT_MAX_STRING_LENGTH):
        closed = set(closed_domains)
        self.max_body_bytes = max_body_bytes
        self.max_instances = max_instances
        self.max_string_length = max_string_length
        self._features = [_Feature(c, c.name in closed) for c in schema.features]
        self._passthrough = [c.name for c in schema.columns if c.role in ("id", "timestamp", "ignored")]
        self._label = schema.label_name
        self._decoder = json.JSONDecoder(parse_constant=_NonFinite)  # NaN/Infinity literals are reported, not parsed
        names = [f.name for f in self._features]
        self._feature_set = frozenset(names)
        self._known = frozenset(names + self._passthrough)
        self._feature_list = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")

    # ------------------------------------------------------------------------------------------- entry point
    def validate(self, body: bytes) -> ParsedRequest:
        """Parse and check a request body; raises ``RequestError`` (400 / 413 / 422) on any client mistake."""
        instances = self._instances(body)
        bad: list[dict[str, Any]] = []
        rows, sent = self._check_rows(instances, bad)
        out = ParsedRequest(columns={}, n=len(instances), instances=instances)
        for feature in self._features:
            values = [r.get(feature.name, _ABSENT) for r in rows]
            if feature.kind == "numeric":
                out.columns[feature.name] = self._numeric(feature, values, bad, out)
            elif feature.kind == "categorical":
                out.columns[feature.name] = self._categorical(feature, values, bad, out)
            else:  # timestamp / string features do not reach the model: scalars only, passed as sent
                out.columns[feature.name] = self._scalars(feature.name, values, bad, feature)
        for name in self._passthrough:
            if name in sent:
                out.passthrough[name] = self._scalars(name, [r.get(name, _ABSENT) for r in rows], bad, None)
        if bad:
            raise self._violation(bad)
        return out

    def _instances(self, body: bytes) -> list[Any]:
        if len(body) > self.max_body_bytes:
            raise RequestError(413, "body_too_large", f"the request body has {len(body)} bytes, over the limit of "
                               f"{self.max_body_bytes}; send fewer instances per request")
        try:
            doc = self._decoder.decode(body if isinstance(body, str) else bytes(body).decode("utf-8"))
        except RecursionError:
            raise RequestError(400, "malformed_json", "the body nests too deeply to be a request; send "
                               '{"instances": [{feature: value, ...}, ...]}') from None
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
            raise RequestError(400, "malformed_json", f"the body is not valid UTF-8 JSON ({err}); send "
                               '{"instances": [{feature: value, ...}, ...]}') from None
        if not isinstance(doc, dict):
            raise RequestError(400, "invalid_body", f"the body is a JSON {_json_type(doc)}, not an object; send "
                               '{"instances": [{feature: value, ...}, ...]}')
        extra = sorted(k for k in doc if k != "instances")
        if extra:
            raise RequestError(400, "invalid_body", f"unknown top-level key(s) {extra}; the body takes only "
                               '"instances"')
        instances = doc.get("instances", _ABSENT)
        if instances is _ABSENT:
            raise RequestError(400, "invalid_body", 'the body has no "instances"; send '
                               '{"instances": [{feature: value, ...}, ...]}')
        if not isinstance(instances, list):
            raise RequestError(400, "invalid_body", f'"instances" is a JSON {_json_type(instances)}; send a list '
                               "of objects, one per row")
        if not instances:
            raise RequestError(422, "empty_instances", '"instances" is empty; send at least one instance')
        if len(instances) > self.max_instances:
            raise RequestError(422, "too_many_instances", f'"instances" has {len(instances)} rows, over the '
                               f"limit of {self.max_instances}; split the request")
        return instances

    def _check_rows(self, instances: list[Any], bad: list) -> tuple[list[dict[str, Any]], set[str]]:
        """Instances with non-objects replaced by ``_SkipRow``, and the passthrough columns that were sent."""
        features, known, label = self._feature_set, self._known, self._label
        rows, sent = instances, set()
        for i, row in enumerate(instances):
            if type(row) is not dict:
                bad.append(_detail(i, None, "not_an_object", f"instance {i} is a JSON {_json_type(row)}; send an "
                                   "object {feature: value, ...}"))
                if rows is instances:
                    rows = list(instances)
                rows[i] = _SkipRow()
            elif not features.issuperset(row):  # rare: cheap C-level check first, set arithmetic only here
                sent.update(k for k in row if k in known and k not in features)
                for name in sorted(k for k in row if k not in known):
                    if len(name) > _MAX_NAME_SHOWN:  # never echo a megabyte key back
                        name = name[:_MAX_NAME_SHOWN - 3] + "..."
                    if name == label:
                        bad.append(_detail(i, name, "label_not_allowed", f"'{name}' is the label; leave it out "
                                           "and send labels to the :feedback endpoint"))
                    else:
                        bad.append(_detail(i, name, "unknown_feature", f"'{name}' is not a feature of this "
                                           f"model; remove it (features: {self._feature_list})"))
        return rows, sent

    # -------------------------------------------------------------------------------------------- columns
    def _numeric(self, f: _Feature, values: list[Any], bad: list, out: ParsedRequest) -> np.ndarray:
        if set(map(type, values)) <= _NUMBER_TYPES:  # the common case: every value is a JSON number
            try:
                arr = np.array(values, dtype=np.float64)
            except OverflowError:  # an integer too large for a float: the slow path reports it
                arr = None
            if arr is not None and np.isfinite(arr).all():
                self._count_range(f, arr, out)
                return arr
        floats = []
        for i, v in enumerate(values):
            if v is _SKIP or f.absent_or_null(i, v, bad) or f.non_finite(i, v, bad):
                floats.append(math.nan)
            elif type(v) is int or type(v) is float:
                try:
                    floats.append(float(v))
                except OverflowError:
                    bad.append(_detail(i, f.name, "non_finite", f"feature '{f.name}' is too large for a float; "
                                       "send a finite number"))
                    floats.append(math.nan)
            else:
                bad.append(_detail(i, f.name, "wrong_type", f"feature '{f.name}' is numeric but got a JSON "
                                   f"{_json_type(v)} ({_show(v)}); send a number"))
                floats.append(math.nan)
        arr = np.array(floats, dtype=np.float64)
        self._count_range(f, arr, out)
        return arr

    @staticmethod
    def _count_range(f: _Feature, arr: np.ndarray, out: ParsedRequest) -> None:
        if f.lo == -math.inf and f.hi == math.inf:
            return
        outside = int(np.count_nonzero((arr < f.lo) | (arr > f.hi)))  # NaN compares False: nulls not counted
        if outside:
            out.out_of_range[f.name] = outside

    def _categorical(self, f: _Feature, values: list[Any], bad: list, out: ParsedRequest) -> list[Any]:
        if set(map(type, values)) != {str}:
            values = [self._category(f, i, v, bad) for i, v in enumerate(values)]
        self._check_lengths(f.name, values, bad)
        if f.domain is not None:
            unseen = [v for v in values if v is not None and v not in f.domain]
            if unseen and f.closed:
                allowed = sorted(f.domain)
                shown = ", ".join(allowed[:10]) + (", ..." if len(allowed) > 10 else "")
                for i, v in enumerate(values):
                    if v is not None and v not in f.domain:
                        bad.append(_detail(i, f.name, "outside_domain", f"feature '{f.name}' is {json.dumps(v)}, "
                                           f"not one of its categories ({shown}); send one of them"))
            elif unseen:
                out.unseen[f.name] = len(unseen)
        return values

    def _category(self, f: _Feature, i: int, v: Any, bad: list) -> str | None:
        """One non-string categorical value as its category string (None when null or reported as bad)."""
        if v is _SKIP or f.absent_or_null(i, v, bad) or f.non_finite(i, v, bad):
            return None
        t, family = type(v), f.family
        text: str | None = None
        if t is str:
            return v
        if t is bool:
            text = "true" if v else "false"
            ok = family == "bool"
        elif t is int or t is float:
            integral = t is int or v.is_integer()
            text = str(int(v)) if integral and family != "float" else _float_category(float(v))
            ok = family == "float" or (family == "integer" and integral)
        else:
            ok = False
        if not ok and family == "string" and f.domain is not None and text in f.domain:
            ok = True  # a string column whose categories look like numbers, e.g. '3' or 'true'
        if ok:
            return text
        bad.append(_detail(i, f.name, "wrong_type", f"feature '{f.name}' is a {family} category but got a JSON "
                           f"{_json_type(v)} ({_show(v)}); send the category as a string"))
        return None

    def _scalars(self, name: str, values: list[Any], bad: list, f: _Feature | None) -> list[Any]:
        """Single JSON values passed as sent (``f`` is the feature, or None for a passthrough column)."""
        out: list[Any] = []
        for i, v in enumerate(values):
            if v is _SKIP or (f is not None and f.absent_or_null(i, v, bad)) or v is _ABSENT:
                out.append(None)
            elif isinstance(v, _NonFinite) or (type(v) is float and not math.isfinite(v)):
                bad.append(_detail(i, name, "non_finite", f"'{name}' is {_show(v)}; send a finite value"))
                out.append(None)
            elif not isinstance(v, _SCALAR_TYPES):
                bad.append(_detail(i, name, "wrong_type", f"'{name}' is a JSON {_json_type(v)}; send a single "
                                   "value (string, number, boolean or null)"))
                out.append(None)
            else:
                out.append(v)
        self._check_lengths(name, out, bad)
        return out

    def _check_lengths(self, name: str, values: list[Any], bad: list) -> None:
        limit = self.max_string_length
        if max((len(v) for v in values if type(v) is str), default=0) <= limit:  # the common case: one pass
            return
        for i, v in enumerate(values):
            if type(v) is str and len(v) > limit:
                bad.append(_detail(i, name, "string_too_long", f"'{name}' has {len(v)} characters, over the limit "
                                   f"of {limit} (serving.max_string_length); send a shorter value"))

    @staticmethod
    def _violation(bad: list[dict[str, Any]]) -> RequestError:
        bad.sort(key=lambda d: (-1 if d["row"] is None else d["row"]))  # stable: field order within a row kept
        rows = len({d["row"] for d in bad})
        shown = f"; the first {MAX_DETAILS} are listed" if len(bad) > MAX_DETAILS else ""
        return RequestError(422, "schema_violation", f"{len(bad)} problem(s) in {rows} instance(s){shown}; fix "
                            "the listed fields", bad[:MAX_DETAILS])


class _SkipRow(dict):
    """Stands in for an instance that is not an object: every field reads as ``_SKIP``."""

    def get(self, key: Any, default: Any = None) -> Any:
        return _SKIP


def validate_request(body: bytes, schema: Schema, *, max_body_bytes: int, max_instances: int,
                     closed_domains: Collection[str] = (),
                     max_string_length: int = DEFAULT_MAX_STRING_LENGTH) -> ParsedRequest:
    """One-off ``RequestValidator(schema, ...).validate(body)``; servers should keep a validator per version."""
    return RequestValidator(schema, max_body_bytes=max_body_bytes, max_instances=max_instances,
                            closed_domains=closed_domains, max_string_length=max_string_length).validate(body)
