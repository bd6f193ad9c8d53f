"""The frozen data schema: one ``ColumnSpec`` per column, inferred from a profile and kept as editable YAML.

Roles: ``feature`` (model input), ``label``, ``timestamp``, ``id`` (kept, never a feature) and ``ignored``
(present in the data when the schema was inferred but not chosen as a feature: kept, never a feature, and not
reported as unexpected). Kinds: ``numeric`` (with a min/max range), ``categorical`` (with a domain of category
strings, as ``sketches.as_category_strings`` prints them), ``timestamp`` and ``string``.

Like TFDV's, an inferred schema constrains presence, type, nullability and categorical domains. A numeric range
is *recorded* (what the accepted data covered): values outside it are a value anomaly reported with drift, not a
reason to stop, unless the column says ``enforce_range: true`` (or the config lists it in
``validation.enforce_ranges``), which makes [min, max] a hard constraint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import yaml

from raymlops.core.sketches import CategoricalSketch, DatasetProfile, NumericSketch, dtype_family
from raymlops.errors import DataError, SchemaError

__all__ = ["KINDS", "ROLES", "ColumnSpec", "Schema", "infer_schema", "widen_range"]

ROLES = ("feature", "label", "timestamp", "id", "ignored")
KINDS = ("numeric", "categorical", "timestamp", "string")
TASKS = ("binary", "multiclass", "regression")
_COLUMN_KEYS = ("name", "role", "kind", "dtype", "nullable", "domain", "min", "max", "enforce_range")
_SCHEMA_KEYS = ("name", "version", "task", "columns")


@dataclass
class ColumnSpec:
    """One column: its role, kind, arrow type string, nullability, allowed values and recorded range.

    ``min``/``max`` record the range of the accepted data; ``enforce_range`` makes it a hard constraint.
    """

    name: str
    role: str
    kind: str
    dtype: str
    nullable: bool = False
    domain: list[str] | None = None
    min: float | None = None
    max: float | None = None
    enforce_range: bool = False

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name, "role": self.role, "kind": self.kind, "dtype": self.dtype, "nullable": self.nullable,
        }
        if self.domain is not None:
            d["domain"] = list(self.domain)
        if self.min is not None:
            d["min"] = self.min
        if self.max is not None:
            d["max"] = self.max
        if self.enforce_range:  # written only when set: inferred schemas stay as they were
            d["enforce_range"] = True
        return d


@dataclass
class Schema:
    """A versioned dataset schema (see the module docstring for roles and kinds)."""

    name: str
    version: int
    task: str
    columns: list[ColumnSpec] = field(default_factory=list)

    def column(self, name: str) -> ColumnSpec | None:
        return next((c for c in self.columns if c.name == name), None)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def features(self) -> list[ColumnSpec]:
        return [c for c in self.columns if c.role == "feature"]

    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.features]

    @property
    def numeric_features(self) -> list[str]:
        return [c.name for c in self.features if c.kind == "numeric"]

    @property
    def categorical_features(self) -> list[str]:
        return [c.name for c in self.features if c.kind == "categorical"]

    @property
    def label(self) -> ColumnSpec | None:
        return next((c for c in self.columns if c.role == "label"), None)

    @property
    def label_name(self) -> str | None:
        return self.label.name if self.label else None

    @property
    def timestamp(self) -> ColumnSpec | None:
        return next((c for c in self.columns if c.role == "timestamp"), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "columns": [c.to_dict() for c in self.columns],
        }

    @classmethod
    def from_dict(cls, doc: Any, source: str = "schema") -> Schema:
        """Build and check a schema document; ``SchemaError`` names the key and the fix."""
        return _parse_schema(doc, source)

    def to_yaml(self) -> str:
        """Block-style YAML in a fixed key order, meant to be read and edited by people."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False, allow_unicode=True)

    @classmethod
    def from_yaml(cls, text: str, source: str = "schema") -> Schema:
        """Parse ``to_yaml`` output (or a hand-edited copy); ``SchemaError`` names the line or key and the fix."""
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise SchemaError(
                f"{source} is not valid YAML{where}: {getattr(err, 'problem', err)}; fix the indentation or quoting"
            ) from None
        return _parse_schema(doc, source)


# ------------------------------------------------------------------------------------------------ parsing
def _fail(where: str, problem: str, fix: str) -> SchemaError:
    return SchemaError(f"{where}: {problem}; {fix}")


def _category(value: Any, where: str) -> str:
    if isinstance(value, bool):  # YAML reads unquoted true/false as booleans; the profile prints them like this
        return "true" if value else "false"
    if isinstance(value, str | int):
        return str(value)
    raise _fail(where, f"{value!r} is not a category", "write categories as strings, e.g. - 'north'")


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(where, f"{value!r} is not a finite number", "write a number such as 0 or 12.5, or remove the key")
    return float(value)


def _parse_column(doc: Any, where: str) -> ColumnSpec:
    if not isinstance(doc, dict):
        raise _fail(where, f"expected a mapping, got {type(doc).__name__}", "write name:, role:, kind:, dtype: keys")
    unknown = [k for k in doc if k not in _COLUMN_KEYS]
    if unknown:
        raise _fail(f"{where}.{unknown[0]}", "unknown key", f"remove it; allowed keys are {', '.join(_COLUMN_KEYS)}")
    for key in ("name", "role", "kind", "dtype"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise _fail(f"{where}.{key}", "missing or not a string", f"give every column a {key}")
    if doc["role"] not in ROLES:
        raise _fail(f"{where}.role", f"{doc['role']!r} is not a role", f"use one of {', '.join(ROLES)}")
    if doc["kind"] not in KINDS:
        raise _fail(f"{where}.kind", f"{doc['kind']!r} is not a kind", f"use one of {', '.join(KINDS)}")
    nullable = doc.get("nullable", False)
    if not isinstance(nullable, bool):
        raise _fail(f"{where}.nullable", f"{nullable!r} is not a boolean", "write true or false")
    domain = doc.get("domain")
    if domain is not None:
        if not isinstance(domain, list):
            raise _fail(f"{where}.domain", "expected a list of categories", "write one '- value' line per category")
        domain = [_category(v, f"{where}.domain[{i}]") for i, v in enumerate(domain)]
    lo, hi = _number(doc.get("min"), f"{where}.min"), _number(doc.get("max"), f"{where}.max")
    if lo is not None and hi is not None and lo > hi:
        raise _fail(f"{where}.min", f"min {lo} is above max {hi}", "swap them or widen the range")
    enforce = doc.get("enforce_range", False)
    if not isinstance(enforce, bool):
        raise _fail(f"{where}.enforce_range", f"{enforce!r} is not a boolean", "write true or false")
    if enforce and (doc["kind"] != "numeric" or (lo is None and hi is None)):
        raise _fail(f"{where}.enforce_range", "only a numeric column with min and/or max has a range to enforce",
                    "add min:/max: or remove enforce_range")
    return ColumnSpec(doc["name"], doc["role"], doc["kind"], doc["dtype"], nullable, domain, lo, hi, enforce)


def _parse_schema(doc: Any, source: str) -> Schema:
    if not isinstance(doc, dict):
        raise _fail(source, f"expected a mapping with keys {', '.join(_SCHEMA_KEYS)}, got {type(doc).__name__}",
                    "regenerate the schema or restore its top-level keys")
    unknown = [k for k in doc if k not in _SCHEMA_KEYS]
    if unknown:
        raise _fail(f"{source}: {unknown[0]}", "unknown key", f"remove it; allowed keys are {', '.join(_SCHEMA_KEYS)}")
    if not isinstance(doc.get("name"), str) or not doc["name"]:
        raise _fail(f"{source}: name", "missing or not a string", "write the pipeline name, e.g. name: churn")
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _fail(f"{source}: version", f"{version!r} is not a positive integer", "write e.g. version: 1")
    if doc.get("task") not in TASKS:
        raise _fail(f"{source}: task", f"{doc.get('task')!r} is not a task", f"use one of {', '.join(TASKS)}")
    columns = doc.get("columns")
    if not isinstance(columns, list) or not columns:
        raise _fail(f"{source}: columns", "missing or empty", "list one mapping per column under columns:")
    specs = [_parse_column(c, f"{source}: columns[{i}]") for i, c in enumerate(columns)]
    seen: set[str] = set()
    for i, c in enumerate(specs):
        if c.name in seen:
            raise _fail(f"{source}: columns[{i}].name", f"column '{c.name}' appears twice", "keep one entry per column")
        seen.add(c.name)
    for role in ("label", "timestamp"):
        if sum(c.role == role for c in specs) > 1:
            raise _fail(f"{source}: columns", f"more than one column has role {role}", f"keep a single {role}")
    return Schema(doc["name"], version, doc["task"], specs)


# ---------------------------------------------------------------------------------------------- inference
def widen_range(lo: float, hi: float, margin_pct: float, integer: bool) -> tuple[float, float]:
    """[lo, hi] widened by ``margin_pct`` of its span (of |hi| for a constant), rounded outwards: to whole numbers
    for an integer column, else to a hundredth of the margin's order of magnitude, so the YAML stays readable.

    With no margin the bounds are kept exactly.
    """
    span = hi - lo
    # A constant column has no span: widen by a share of its value instead, so the same value stays inside.
    margin = (span if span > 0 else abs(hi)) * margin_pct / 100.0
    lo, hi = lo - margin, hi + margin
    if integer:
        return float(math.floor(lo)), float(math.ceil(hi))
    if margin > 0:
        digits = 2 - math.floor(math.log10(margin))
        step = 10.0 ** -digits
        lo, hi = math.floor(lo / step) * step, math.ceil(hi / step) * step
        if digits >= 0:  # drop the float noise of step multiples (0.1 * 3); the bounds only move by < 1 ulp
            lo, hi = round(lo, digits), round(hi, digits)
    return float(lo), float(hi)


def _widen(sketch: NumericSketch, pct: float, integer: bool) -> tuple[float | None, float | None]:
    if not sketch.count:
        return None, None
    return widen_range(sketch.min, sketch.max, pct, integer)


def _spec_from_profile(profile: DatasetProfile, name: str, role: str, margin_pct: float, categorical: set[str]) -> ColumnSpec:
    fp = profile.features.get(name)
    if fp is None:  # skipped by the profiler (ids, timestamps, unsupported types): only its type is known
        dtype = profile.skipped[name]
        family = dtype_family(dtype)
        kind = "timestamp" if family == "timestamp" else "numeric" if family in ("integer", "float") else "string"
        if role == "feature":
            raise DataError(
                f"column '{name}' ({dtype}) was not profiled, so it cannot be a feature; profile it or leave it "
                "out of data.features"
            )
        return ColumnSpec(name, role, kind, dtype, nullable=True)
    if name in categorical and fp.kind != "categorical":
        raise DataError(
            f"column '{name}' is listed as categorical but was profiled as {fp.kind}; profile it with "
            f"categorical={{'{name}'}}"
        )
    nullable = fp.sketch.nulls > 0
    if dtype_family(fp.dtype) == "timestamp" or role == "timestamp":
        return ColumnSpec(name, role, "timestamp", fp.dtype, nullable)
    checked = role in ("feature", "label")  # only model inputs and the label carry a domain or a range
    if isinstance(fp.sketch, CategoricalSketch):
        kind = "categorical" if checked or dtype_family(fp.dtype) != "string" else "string"
        return ColumnSpec(name, role, kind, fp.dtype, nullable, sorted(fp.sketch.counts) if checked else None)
    lo, hi = _widen(fp.sketch, margin_pct, dtype_family(fp.dtype) == "integer") if checked else (None, None)
    return ColumnSpec(name, role, "numeric", fp.dtype, nullable, None, lo, hi)


def infer_schema(
    profile: DatasetProfile,
    *,
    name: str,
    task: str,
    label: str,
    timestamp: str | None,
    id_columns: list[str] | tuple[str, ...] = (),
    features: list[str] | None = None,
    categorical: list[str] | set[str] | None = None,
    range_margin_pct: float = 10.0,
    version: int = 1,
) -> Schema:
    """Infer a schema from the profile of accepted data.

    Types come from the profile; ``nullable`` is whether the data had nulls; a categorical domain is the sorted
    observed categories; a numeric range is [min, max] widened by ``range_margin_pct`` of its span (rounded
    outwards for integer columns), recorded and not enforced. ``features=None`` makes every other profiled column a feature; columns left
    out get role ``ignored``. Raises ``DataError`` for an empty profile or a named column the data lacks.
    """
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    if profile.rows == 0:
        raise DataError("cannot infer a schema from 0 rows; point data.source at files that hold rows")
    present = profile.dtypes
    roles: dict[str, str] = {}
    wanted = [(label, "label", "data.label")]
    if timestamp:
        wanted.append((timestamp, "timestamp", "data.timestamp (or set it to null)"))
    wanted += [(c, "id", "data.id_columns") for c in id_columns]
    wanted += [(c, "feature", "data.features") for c in features or []]
    for column, role, key in wanted:
        if column not in present:
            raise DataError(
                f"column '{column}' ({role}) is not in the data, which has {sorted(present)}; fix {key}"
            )
        if column in roles:
            raise DataError(f"column '{column}' is both {roles[column]} and {role}; give it one role")
        roles[column] = role
    for column in present:
        if column not in roles:
            chosen = features is None and column in profile.features
            roles[column] = "feature" if chosen else "ignored"
    cats = set(categorical or ())
    # Features keep the order the user gave; otherwise names sort, so the model-input order never depends on
    # the order in which blocks were profiled and merged.
    rank = {c: i for i, c in enumerate(features or [])}
    order = {r: i for i, r in enumerate(("label", "timestamp", "id", "feature", "ignored"))}
    names = sorted(present, key=lambda c: (order[roles[c]], rank.get(c, len(rank)), c))
    return Schema(name, version, task, [_spec_from_profile(profile, c, roles[c], range_margin_pct, cats) for c in names])
