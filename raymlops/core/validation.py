"""Data validation: schema skew (anomalies, which STOP the pipeline) and value skew (drift, reported per feature).

``validate`` compares the profile of new data with the frozen schema and, when given, the reference profile.
Schema skew is what the schema constrains: presence, type, nullability, categorical domains (beyond the unseen
tolerance), non-finite values, and numeric ranges *only where enforced* (``enforce_range: true`` in the schema or
``ValidationPolicy.enforce_ranges``). Values outside a recorded, unenforced range are a *value anomaly*: reported
with the drift, decision DRIFT, never STOP on their own (a covariate shift must be able to reach retraining).
Out-of-range shares are exact when the data was profiled with ``ranges`` equal to the schema's [min, max] or when
the observed min/max lie inside it; otherwise they are estimated from the quantile sketch (at least one value is
counted on each side the observed min/max crosses).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from raymlops.core.drift import DriftResult, feature_drift
from raymlops.core.schema import ColumnSpec, Schema
from raymlops.core.sketches import CategoricalSketch, DatasetProfile, NumericSketch, dtype_family
from raymlops.errors import ConfigError, DataError, DataValidationError

__all__ = [
    "ANOMALY_KINDS",
    "Anomaly",
    "DriftResult",
    "ReferenceSource",
    "ValidationPolicy",
    "ValidationReport",
    "dtype_compatible",
    "validate",
]

ANOMALY_KINDS = (
    "unexpected_column",
    "missing_column",
    "wrong_type",
    "unseen_categories",
    "null_rate",
    "out_of_range",
    "non_finite",
    "empty_dataset",
    "all_null",
)
_EXAMPLES = 10


@dataclass
class Anomaly:
    """One schema-skew finding; ``observed``/``expected`` are JSON-safe, ``message`` says what to do."""

    feature: str
    kind: str
    observed: Any
    expected: Any
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Anomaly:
        return cls(str(d["feature"]), str(d["kind"]), d.get("observed"), d.get("expected"), str(d["message"]))


@dataclass(frozen=True)
class ReferenceSource:
    """Where the drift reference came from: the champion's training data, the frozen schema's, or the config's."""

    kind: str  # champion | frozen | configured
    uri: str
    version: int | None = None  # the champion's model version, or the schema version

    def describe(self) -> str:
        """E.g. ``champion v3 (uri)`` or ``frozen schema v1 (uri)``."""
        if self.kind == "champion":
            return f"champion v{self.version} ({self.uri})"
        if self.kind == "frozen":
            return f"frozen schema v{self.version} ({self.uri})"
        return f"configured reference ({self.uri})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReferenceSource:
        version = d.get("version")
        return cls(str(d["kind"]), str(d["uri"]), None if version is None else int(version))


@dataclass
class ValidationPolicy:
    """Thresholds (percentages) and drift rules; defaults match ``ValidationConfig``'s.

    ``enforce_ranges``: True makes every recorded numeric range a hard constraint; a collection of column names
    makes theirs one (beside columns whose schema says ``enforce_range: true``).
    """

    max_null_pct: float = 5.0
    max_unseen_category_pct: float = 1.0
    max_out_of_range_pct: float = 1.0
    numeric_rule: tuple[str, float] = ("psi", 0.2)
    categorical_rule: tuple[str, float] = ("linf", 0.1)
    feature_rules: dict[str, tuple[str, float]] = field(default_factory=dict)
    stop_on_drift: bool = False
    require_label: bool = True
    histogram_bins: int = 10
    enforce_ranges: bool | frozenset[str] = False

    def range_enforced(self, spec: ColumnSpec) -> bool:
        """Whether values outside ``spec``'s [min, max] are schema skew (STOP) rather than a value anomaly."""
        if spec.enforce_range or self.enforce_ranges is True:
            return True
        return bool(self.enforce_ranges) and spec.name in self.enforce_ranges  # type: ignore[operator]

    def rule_for(self, spec: ColumnSpec) -> tuple[str, float]:
        if spec.name in self.feature_rules:
            metric, threshold = self.feature_rules[spec.name]
            return str(metric), float(threshold)
        return self.numeric_rule if spec.kind == "numeric" else self.categorical_rule


@dataclass
class ValidationReport:
    """Outcome of ``validate``: decision OK / DRIFT / STOP, anomalies and per-feature drift.

    ``anomalies`` are schema skew (STOP); ``value_anomalies`` are findings that do not stop (values outside a
    recorded but unenforced range) and make the decision DRIFT. ``reference_rows`` is None (and ``drift`` empty)
    when there was no reference to compare with; ``reference`` says which one was used, when known.
    """

    decision: str
    rows: int
    anomalies: list[Anomaly] = field(default_factory=list)
    drift: list[DriftResult] = field(default_factory=list)
    schema_name: str = ""
    schema_version: int = 0
    reference_rows: int | None = None
    value_anomalies: list[Anomaly] = field(default_factory=list)
    reference: ReferenceSource | None = None

    @property
    def drifted(self) -> list[DriftResult]:
        return [d for d in self.drift if d.drifted]

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "rows": self.rows,
            "schema_name": self.schema_name,
            "schema_version": self.schema_version,
            "reference": self.reference.describe() if self.reference else None,
            "reference_source": self.reference.to_dict() if self.reference else None,
            "reference_rows": self.reference_rows,
            "anomalies": [a.to_dict() for a in self.anomalies],
            "value_anomalies": [a.to_dict() for a in self.value_anomalies],
            "drift": [d.to_dict() for d in self.drift],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ValidationReport:
        return cls(
            decision=str(d["decision"]),
            rows=int(d["rows"]),
            anomalies=[Anomaly.from_dict(a) for a in d.get("anomalies", [])],
            drift=[DriftResult.from_dict(x) for x in d.get("drift", [])],
            schema_name=str(d.get("schema_name", "")),
            schema_version=int(d.get("schema_version", 0)),
            reference_rows=None if d.get("reference_rows") is None else int(d["reference_rows"]),
            value_anomalies=[Anomaly.from_dict(a) for a in d.get("value_anomalies", [])],
            reference=ReferenceSource.from_dict(d["reference_source"]) if d.get("reference_source") else None,
        )

    def summary(self) -> str:
        """One paragraph for the command line: decision, what was found, and what to do next."""
        head = f"{self.decision}: {self.rows:,} rows checked against schema {self.schema_name} v{self.schema_version}."
        parts = [head]
        if self.anomalies:
            shown = "; ".join(f"{a.kind} on '{a.feature}'" for a in self.anomalies[:5])
            more = f" and {len(self.anomalies) - 5} more" if len(self.anomalies) > 5 else ""
            parts.append(f"{len(self.anomalies)} schema anomalies ({shown}{more}).")
        else:
            parts.append("No schema anomalies.")
        if self.value_anomalies:
            shown = "; ".join(f"'{a.feature}' {a.observed['pct']:.2f}% outside [{_num(a.expected['min'])}, "
                              f"{_num(a.expected['max'])}]" for a in self.value_anomalies[:5])
            parts.append(f"Values outside the recorded range (a value anomaly, not a stop): {shown}.")
        if self.reference_rows is None:
            parts.append("No reference statistics, so drift was not checked.")
        else:
            drifted = self.drifted
            shown = ", ".join(f"'{d.feature}' {d.metric} {d.value:.3g} > {d.threshold:g}" for d in drifted[:5])
            against = f" against {self.reference.describe()}" if self.reference else ""
            parts.append(
                f"{len(drifted)} of {len(self.drift)} features drifted{against}"
                + (f" ({shown})." if drifted else f", {self.reference_rows:,} reference rows.")
            )
        if self.decision == "STOP":
            parts.append("The pipeline must not train on this data: fix it (each anomaly says how) and rerun.")
        elif self.decision == "DRIFT":
            parts.append("Training may go on; retraining on recent data is advised.")
        return " ".join(parts)

    def raise_if_stopped(self, report_uri: str | None = None) -> None:
        """Raise ``DataValidationError`` (exit code 3) when the decision is STOP."""
        if self.decision == "STOP":
            where = f" Report: {report_uri}." if report_uri else ""
            raise DataValidationError(self.summary() + where, report_uri=report_uri)


# ----------------------------------------------------------------------------------------------- checks
def dtype_compatible(expected: str, observed: str) -> bool:
    """Whether data of arrow type ``observed`` may stand in for ``expected``: same family, or int for float
    (widening); a float where an integer is expected, or text where a number is, is not."""
    if observed == "null":  # arrow's type for a column with no value at all: fits any type (and is all null)
        return True
    fe, fo = dtype_family(expected), dtype_family(observed)
    if fe == "float":
        return fo in ("float", "integer")
    if fe == "other":
        return expected == observed
    return fe == fo


def _num(x: float | None) -> str:
    return "none" if x is None else f"{x:.6g}"  # a one-sided range has no other bound


def _pct(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole else 0.0


def _column_checks(schema: Schema, observed: dict[str, str], require_label: bool) -> tuple[list[Anomaly], set[str]]:
    anomalies, bad = [], set()
    where = f"schema {schema.name} v{schema.version}"
    for name, dtype in observed.items():
        if schema.column(name) is None:
            anomalies.append(Anomaly(
                name, "unexpected_column", dtype, None,
                f"column '{name}' ({dtype}) is not in {where}; drop it from the data, or add it to the schema "
                "(edit the YAML or infer a new version) if the model should use it",
            ))
    for spec in schema.columns:
        dtype = observed.get(spec.name)
        if dtype is None:
            if spec.role == "feature" or (spec.role == "label" and require_label):
                bad.add(spec.name)
                anomalies.append(Anomaly(
                    spec.name, "missing_column", None, spec.dtype,
                    f"{spec.role} '{spec.name}' ({spec.dtype}) is missing from the data; restore the column "
                    "at the source, or remove it from the schema and retrain",
                ))
        elif not dtype_compatible(spec.dtype, dtype):
            bad.add(spec.name)
            anomalies.append(Anomaly(
                spec.name, "wrong_type", dtype, spec.dtype,
                f"column '{spec.name}' is {dtype} but {where} expects {spec.dtype} ({spec.kind}); fix or cast "
                "the column at the source, or infer a new schema version if the change is intended",
            ))
    return anomalies, bad


def _all_null(spec: ColumnSpec) -> Anomaly:
    return Anomaly(spec.name, "all_null", 100.0, spec.dtype,
                   f"every value of '{spec.name}' is null; the column is empty, so fix the producer of the data")


def _out_of_range(spec: ColumnSpec, s: NumericSketch, policy: ValidationPolicy) -> Anomaly | None:
    if (spec.min is None and spec.max is None) or not s.count:
        return None
    pct = _pct(s.count_outside(spec.min, spec.max), s.count)
    if pct <= policy.max_out_of_range_pct:
        return None
    seen = (f"{pct:.2f}% of '{spec.name}' values lie outside [{_num(spec.min)}, {_num(spec.max)}] (seen "
            f"{s.min:g} .. {s.max:g})")
    if policy.range_enforced(spec):
        message = (f"{seen}, above the {policy.max_out_of_range_pct:g}% allowed by the enforced range; fix the "
                   "data, or widen min/max in a new schema version (raymlops schema diff/accept) if the new range "
                   "is legitimate")
    else:
        message = (f"{seen}, the range recorded from accepted data; a value anomaly reported with the drift, not "
                   "a stop. Record the new range with raymlops schema accept, or make the range a hard limit with "
                   "enforce_range: true")
    return Anomaly(
        spec.name, "out_of_range",
        {"pct": round(pct, 4), "min": s.min, "max": s.max},
        {"max_pct": policy.max_out_of_range_pct, "min": spec.min, "max": spec.max,
         "enforced": policy.range_enforced(spec)},
        message,
    )


def _value_checks(
    spec: ColumnSpec, current: DatasetProfile, observed_dtype: str, policy: ValidationPolicy
) -> list[Anomaly]:
    """Schema-skew findings on one present column's values, plus an unenforced out-of-range (a value anomaly,
    told apart by ``expected['enforced']`` being False)."""
    fp = current.features.get(spec.name)
    if fp is None:
        # Not profiled: skipped on purpose, or of arrow type null (no value at all in any block).
        return [_all_null(spec)] if observed_dtype == "null" else []
    expected_kind = "numeric" if spec.kind == "numeric" else "categorical"
    if fp.kind != expected_kind:
        raise DataError(
            f"column '{spec.name}' was profiled as {fp.kind} but the schema says {spec.kind}; profile it with "
            f"the schema's categorical columns (categorical={{'{spec.name}'}} or not)"
        )
    s, rows, name = fp.sketch, current.rows, spec.name
    if s.nulls >= rows:
        return [_all_null(spec)]
    out = []
    null_pct = _pct(s.nulls, rows)
    if not spec.nullable and null_pct > policy.max_null_pct:
        out.append(Anomaly(
            name, "null_rate", round(null_pct, 4), policy.max_null_pct,
            f"{null_pct:.2f}% of '{name}' values are null, above the {policy.max_null_pct:g}% allowed for a "
            "non-nullable column; fix the source, or set nullable: true in the schema if nulls are expected",
        ))
    if isinstance(s, NumericSketch):
        if s.nonfinite:
            out.append(Anomaly(
                name, "non_finite", s.nonfinite, 0,
                f"'{name}' has {s.nonfinite} NaN or infinite values; replace or drop them at the source",
            ))
        found = _out_of_range(spec, s, policy)
        if found is not None:
            out.append(found)
    elif isinstance(s, CategoricalSketch) and spec.domain is not None and s.count:
        domain = set(spec.domain)
        unseen = {k: v for k, v in s.counts.items() if k not in domain and v > 0}
        pct = _pct(sum(unseen.values()), s.count)
        if pct > policy.max_unseen_category_pct:
            top = dict(sorted(unseen.items(), key=lambda kv: (-kv[1], kv[0]))[:_EXAMPLES])
            out.append(Anomaly(
                name, "unseen_categories",
                {"pct": round(pct, 4), "categories": top},
                {"max_pct": policy.max_unseen_category_pct, "domain": list(spec.domain)},
                f"{pct:.2f}% of non-null '{name}' values are outside the schema's domain (e.g. "
                f"{', '.join(map(repr, top))}), above the {policy.max_unseen_category_pct:g}% allowed; fix the "
                "data, or add the categories to the domain in the schema if they are legitimate",
            ))
    return out


def validate(
    schema: Schema,
    reference: DatasetProfile | None,
    current: DatasetProfile,
    policy: ValidationPolicy | None = None,
    observed_dtypes: dict[str, str] | None = None,
    reference_source: ReferenceSource | None = None,
) -> ValidationReport:
    """Judge ``current`` against ``schema`` (anomalies: STOP) and ``reference`` (drift: DRIFT, or STOP when
    ``policy.stop_on_drift``); values outside an unenforced range are value anomalies (DRIFT, like drift).

    ``reference_source`` says where ``reference`` came from; the report carries it.
    ``observed_dtypes`` (column -> arrow type string) is the full column list of the data when known; without it
    the columns are those of ``current`` (profiled and skipped). Every schema feature gets a ``DriftResult``
    when a reference is given, drifted or not.
    """
    policy = policy or ValidationPolicy()
    _check_enforced_names(schema, policy)
    observed = dict(observed_dtypes) if observed_dtypes is not None else current.dtypes
    anomalies, bad = _column_checks(schema, observed, policy.require_label)
    soft: list[Anomaly] = []
    if current.rows == 0:
        anomalies.append(Anomaly(
            "*", "empty_dataset", 0, ">= 1 row",
            "the dataset has 0 rows; check the data source, its time window and file pattern",
        ))
    else:
        for spec in schema.columns:
            if spec.role in ("feature", "label") and spec.name in observed and spec.name not in bad:
                for a in _value_checks(spec, current, observed[spec.name], policy):
                    unenforced = a.kind == "out_of_range" and not a.expected["enforced"]
                    (soft if unenforced else anomalies).append(a)

    drift: list[DriftResult] = []
    if reference is not None:
        for spec in schema.features:
            metric, threshold = policy.rule_for(spec)
            if spec.name in bad or current.rows == 0:
                note = "empty dataset" if current.rows == 0 else "column missing or of the wrong type"
                drift.append(DriftResult(spec.name, metric, None, threshold, False, note))
            else:
                drift.append(feature_drift(spec.name, reference, current, metric, threshold, policy.histogram_bins))

    outside = {a.feature: a for a in soft}
    drift = [
        replace(d, note="; ".join(filter(None, [d.note, f"{outside[d.feature].observed['pct']:.2f}% outside the "
                                                       "recorded range"])))
        if d.feature in outside else d
        for d in drift
    ]
    drifting = bool(soft) or any(d.drifted for d in drift)
    if anomalies or (policy.stop_on_drift and drifting):
        decision = "STOP"
    elif drifting:
        decision = "DRIFT"
    else:
        decision = "OK"
    return ValidationReport(
        decision=decision,
        rows=current.rows,
        anomalies=anomalies,
        drift=drift,
        schema_name=schema.name,
        schema_version=schema.version,
        reference_rows=None if reference is None else reference.rows,
        value_anomalies=soft,
        reference=reference_source if reference is not None else None,
    )


def _check_enforced_names(schema: Schema, policy: ValidationPolicy) -> None:
    if isinstance(policy.enforce_ranges, bool):
        return
    for name in sorted(policy.enforce_ranges):
        spec = schema.column(name)
        if spec is None or spec.kind != "numeric" or (spec.min is None and spec.max is None):
            what = "not in" if spec is None else "has no recorded numeric range in"
            raise ConfigError(
                f"validation.enforce_ranges: column '{name}' {what} schema {schema.name} v{schema.version}; "
                "list numeric features whose schema entry has min/max, or remove the name"
            )
