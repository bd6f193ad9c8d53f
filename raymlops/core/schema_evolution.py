"""The next schema version, proposed from a validation report's anomalies (pure: no storage, no registry).

Each anomaly kind that a schema change can legitimately resolve becomes one change: a new column is added with
role ``ignored`` (kept, never a feature, no longer unexpected), a missing feature is dropped, a changed type is
taken over, unseen categories join the domain, a column with nulls becomes nullable, a range is widened to cover
the values seen (plus the inference margin). Anomalies that are bad data, not a new shape of the data — NaN/±Inf,
an all-null column, an empty dataset, a missing label — are left unresolved: fix them at the source.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from raymlops.core.schema import ColumnSpec, Schema, widen_range
from raymlops.core.sketches import CategoricalSketch, DatasetProfile, NumericSketch, dtype_family
from raymlops.core.validation import Anomaly

__all__ = ["SchemaChange", "SchemaProposal", "missing_features", "propose_schema", "schema_diff"]

UNRESOLVABLE = ("non_finite", "all_null", "empty_dataset")


@dataclass(frozen=True)
class SchemaChange:
    """One edit of the proposal: the column, what changed (``added``, ``dropped``, ``retyped``, ``domain``,
    ``nullable``, ``range``) and a sentence for people."""

    column: str
    change: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.column, "change": self.change, "detail": self.detail}


@dataclass
class SchemaProposal:
    """The proposed next version, the changes that make it, and the anomalies no schema change resolves."""

    schema: Schema
    changes: list[SchemaChange] = field(default_factory=list)
    unresolved: list[Anomaly] = field(default_factory=list)

    def summary(self) -> str:
        """Lines for the command line: each change, then what must be fixed in the data instead."""
        lines = [f"  {c.column}: {c.detail}" for c in self.changes] or ["  (no schema change)"]
        if self.unresolved:
            lines.append("not resolved by a schema change (fix the data at its source):")
            lines += [f"  {a.feature}: {a.kind}" for a in self.unresolved]
        return "\n".join(lines)


def _kind_for(dtype: str) -> str:
    family = dtype_family(dtype)
    if family == "timestamp":
        return "timestamp"
    if family in ("integer", "float"):
        return "numeric"
    return "string" if family == "string" else "categorical"


def _covering(lo: float | None, hi: float | None, seen_lo: float, seen_hi: float, margin_pct: float,
              integer: bool) -> tuple[float | None, float | None]:
    """The smallest range holding [lo, hi] and the values seen (widened like inference widens); a missing bound
    (a one-sided range) stays missing."""
    new_lo, new_hi = widen_range(seen_lo, seen_hi, margin_pct, integer)
    return (None if lo is None else min(lo, new_lo) if seen_lo < lo else lo,
            None if hi is None else max(hi, new_hi) if seen_hi > hi else hi)


def _retyped(spec: ColumnSpec, dtype: str, profile: DatasetProfile | None, margin_pct: float) -> ColumnSpec:
    kind = _kind_for(dtype)
    if spec.role in ("feature", "label") and kind == spec.kind:  # e.g. int32 -> int64: the range still holds
        return replace(spec, dtype=dtype)
    bare = replace(spec, dtype=dtype, kind=kind, domain=None, min=None, max=None, enforce_range=False)
    if spec.role not in ("feature", "label"):  # ids, timestamps, ignored columns carry no domain or range
        return bare
    fp = profile.features.get(spec.name) if profile is not None else None
    sketch = fp.sketch if fp is not None else None
    if kind == "numeric" and isinstance(sketch, NumericSketch) and sketch.count:
        lo, hi = widen_range(sketch.min, sketch.max, margin_pct, dtype_family(dtype) == "integer")
        return replace(bare, min=lo, max=hi)
    if isinstance(sketch, CategoricalSketch):  # a model input keeps a domain, whatever its arrow type
        return replace(bare, kind="categorical", domain=sorted(sketch.counts))
    return bare


def _edit(spec: ColumnSpec, a: Anomaly, profile: DatasetProfile | None,
          margin_pct: float) -> tuple[ColumnSpec, str, str] | None:
    """(the column after resolving ``a``, change, detail), or None when no schema edit resolves it."""
    if a.kind == "wrong_type":
        return _retyped(spec, str(a.observed), profile, margin_pct), "retyped", f"type {spec.dtype} -> {a.observed}"
    if a.kind == "null_rate":
        return replace(spec, nullable=True), "nullable", f"nullable ({a.observed}% null seen)"
    if a.kind == "unseen_categories":
        fp = profile.features.get(a.feature) if profile is not None else None
        seen = (fp.sketch.counts if fp is not None and isinstance(fp.sketch, CategoricalSketch)
                else a.observed.get("categories", {}))
        added = sorted(k for k in seen if k not in set(spec.domain or ()))
        return replace(spec, domain=sorted({*(spec.domain or ()), *added})), "domain", f"domain += {added}"
    if a.kind == "out_of_range":
        lo, hi = _covering(spec.min, spec.max, float(a.observed["min"]), float(a.observed["max"]), margin_pct,
                           dtype_family(spec.dtype) == "integer")
        what = "enforced range" if spec.enforce_range else "recorded range"
        return replace(spec, min=lo, max=hi), "range", f"{what} [{spec.min}, {spec.max}] -> [{lo}, {hi}]"
    return None


def propose_schema(
    schema: Schema,
    anomalies: Sequence[Anomaly],
    profile: DatasetProfile | None,
    *,
    version: int,
    range_margin_pct: float = 10.0,
) -> SchemaProposal:
    """The schema that would accept the data behind ``anomalies`` (schema skew and value anomalies of a report),
    as version ``version``.

    ``profile`` is that data's profile: with it, a domain gets every unseen category and a retyped column its new
    domain or range; without it, only the examples the anomalies list (at most ten per column).
    """
    columns = {c.name: c for c in schema.columns}
    order = [c.name for c in schema.columns]
    changes: list[SchemaChange] = []
    unresolved: list[Anomaly] = []
    for a in anomalies:
        spec = columns.get(a.feature)
        if a.kind in UNRESOLVABLE or (a.kind == "missing_column" and spec is not None and spec.role == "label"):
            unresolved.append(a)
        elif a.kind == "unexpected_column":
            if spec is None:  # already in the schema when a report made against an older version is re-applied
                dtype = str(a.observed)
                columns[a.feature] = ColumnSpec(a.feature, "ignored", _kind_for(dtype), dtype, nullable=True)
                order.append(a.feature)
                changes.append(SchemaChange(a.feature, "added", f"new column ({dtype}) added with role ignored; "
                                            "make it a feature (role: feature) in the YAML if the next model "
                                            "should use it"))
        elif spec is None:
            if a.kind != "missing_column":  # a missing column already dropped is done; anything else is unknown
                unresolved.append(a)
        elif a.kind == "missing_column":
            del columns[a.feature]
            order.remove(a.feature)
            changes.append(SchemaChange(a.feature, "dropped", f"{spec.role} missing from the data: dropped"))
        else:
            edited = _edit(spec, a, profile, range_margin_pct)
            if edited is None:
                unresolved.append(a)
            elif edited[0] != spec:  # each edit is idempotent: re-applying a report changes nothing twice
                columns[a.feature] = edited[0]
                changes.append(SchemaChange(a.feature, edited[1], edited[2]))
    new = Schema(schema.name, version, schema.task, [columns[n] for n in order])
    return SchemaProposal(new, changes, unresolved)


def schema_diff(old: Schema, new: Schema) -> str:
    """Unified diff of the two versions' YAML (empty when they are the same, version number aside)."""
    if replace(old, version=new.version) == new:
        return ""
    return "".join(difflib.unified_diff(
        old.to_yaml().splitlines(keepends=True), new.to_yaml().splitlines(keepends=True),
        fromfile=f"v{old.version}.yaml", tofile=f"v{new.version}.yaml",
    ))


def missing_features(schema: Schema, required: Iterable[str]) -> list[str]:
    """Names in ``required`` (e.g. the champion's features) that ``schema`` no longer has as features."""
    have = set(schema.feature_names)
    return [name for name in required if name not in have]
