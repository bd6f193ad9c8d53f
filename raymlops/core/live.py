"""Live inputs and per-version health figures from the prediction log, judged like data validation judges data.

``features_table`` turns the log's ``features`` JSON column into a table typed by the frozen schema;
``live_drift`` profiles it with the same sketches and bin edges as ``raymlops.data.validate`` and takes the drift
from ``core.validation.validate`` itself, so a drift figure on live traffic is the figure data validation would
report for the same rows. ``VersionHealth`` is one version's figures in one monitor pass.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from raymlops.core.drift import DriftResult
from raymlops.core.schema import Schema
from raymlops.core.sketches import DatasetProfile, profile_table, reference_edges
from raymlops.core.validation import ValidationPolicy, validate

__all__ = [
    "ROLES",
    "VersionHealth",
    "arrow_type",
    "features_table",
    "latency_quantiles",
    "live_drift",
    "live_profile",
]

ROLES = ("champion", "canary", "shadow", "rolled_back", "other")  # rolled_back: last decision was a rollback
_DICT_PREFIX = "dictionary<values="


def arrow_type(dtype: str) -> pa.DataType:
    """The arrow type of a schema ``dtype`` string (a dictionary column reads as its value type; an unknown
    string falls back to ``string``)."""
    if dtype.startswith(_DICT_PREFIX):
        dtype = dtype[len(_DICT_PREFIX):].split(",", 1)[0]
    if dtype.startswith("timestamp["):  # e.g. timestamp[us, tz=UTC]
        unit, _, tz = dtype[len("timestamp["):-1].partition(", tz=")
        return pa.timestamp(unit.strip(), tz=tz or None)
    try:
        return pa.type_for_alias(dtype)
    except ValueError:
        return pa.string()


def _texts(features: pa.Array | pa.ChunkedArray | Sequence[str | None]) -> list[str]:
    values = features.to_pylist() if isinstance(features, pa.Array | pa.ChunkedArray) else list(features)
    # A row without features still counts (all null), so the table stays aligned with the log rows.
    return [v if isinstance(v, str) and v.strip() else "{}" for v in values]


def _coerce(values: list[Any], t: pa.DataType) -> pa.Array:
    try:
        return pa.array(values, type=t)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        pass
    out = []
    for v in values:  # rare (the ingress validated the types): one bad value becomes null, not a failed pass
        try:
            out.append(pa.scalar(v, type=t).as_py())
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            out.append(None)
    return pa.array(out, type=t)


def _slow_table(texts: list[str], target: pa.Schema) -> pa.Table:
    docs = []
    for text in texts:
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        docs.append(doc if isinstance(doc, dict) else {})
    return pa.table({f.name: _coerce([d.get(f.name) for d in docs], f.type) for f in target}, schema=target)


def features_table(features: pa.Array | pa.ChunkedArray | Sequence[str | None], schema: Schema) -> pa.Table:
    """One row per logged instance, one column per schema feature with the schema's type.

    Parsed by arrow's JSON reader in one vectorised pass; when a row defeats it (not an object, a value of
    another type) the rows are parsed one by one and an unusable value becomes null. Extra keys are ignored and
    missing ones are null.
    """
    target = pa.schema([pa.field(c.name, arrow_type(c.dtype)) for c in schema.features])
    texts = _texts(features)
    if not texts:
        return target.empty_table()
    data = "\n".join(texts).encode("utf-8")
    try:
        table = pajson.read_json(
            io.BytesIO(data),
            read_options=pajson.ReadOptions(block_size=max(1 << 20, len(data) + 1)),
            parse_options=pajson.ParseOptions(explicit_schema=target, unexpected_field_behavior="ignore"),
        )
        if table.num_rows == len(texts):
            return table.select(target.names).cast(target)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        pass
    return _slow_table(texts, target)


def _categorical(schema: Schema) -> set[str]:
    # The frozen schema's kinds, which the reference was profiled under: a numeric code declared categorical
    # must be profiled as categories here too, or its drift would compare a categorical with a numeric sketch.
    return set(schema.categorical_features)


def live_profile(table: pa.Table, schema: Schema, reference: DatasetProfile | None,
                 policy: ValidationPolicy) -> DatasetProfile:
    """Profile live rows as data validation profiles new data: same categorical columns, and numeric histograms
    on edges taken from the reference's sketches (``reference_edges`` with the policy's bin count)."""
    edges = reference_edges(reference, policy.histogram_bins) if reference is not None else None
    return profile_table(table, categorical=_categorical(schema), edges=edges)


def live_drift(table: pa.Table, schema: Schema, reference: DatasetProfile | None,
               policy: ValidationPolicy) -> list[DriftResult]:
    """Per-feature drift of live rows against ``reference``: ``validate``'s drift, computed by ``validate``.

    ``[]`` without a reference or without rows. The label is never in live inputs, so it is not required.
    """
    if reference is None or table.num_rows == 0:
        return []
    current = live_profile(table, schema, reference, policy)
    return validate(schema, reference, current, replace(policy, require_label=False)).drift


def latency_quantiles(latency_ms: pa.Array | pa.ChunkedArray, request_ids: pa.Array | pa.ChunkedArray,
                      qs: Sequence[float]) -> list[float | None]:
    """Quantiles of per-request latency (the slowest row of each request, as ``canary.window_stats`` counts
    p99); None for each when there is no finite latency."""
    if len(request_ids) == 0:
        return [None] * len(qs)
    t = pa.table({"request_id": request_ids, "latency_ms": latency_ms})
    per = t.group_by("request_id", use_threads=False).aggregate([("latency_ms", "max")]).column("latency_ms_max")
    lat = pc.fill_null(per, float("nan")).to_numpy(zero_copy_only=False).astype(np.float64)
    lat = lat[np.isfinite(lat)]
    if not lat.size:
        return [None] * len(qs)
    return [float(v) for v in np.quantile(lat, list(qs))]


@dataclass
class VersionHealth:
    """One version's figures in one monitor pass (JSON-safe via ``to_dict``/``from_dict``).

    ``rows`` are logged instances (a request may hold several); ``labels`` are those joined to feedback;
    ``quality`` is ``quality_metric`` on them, ``offline_quality`` the version's test figure. ``drift`` holds
    ``DriftResult.to_dict()`` items; ``drift_note`` says why it is empty (too few rows, no reference).
    """

    version: str
    role: str
    requests: int = 0
    errors: int = 0
    error_rate_pct: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    rows: int = 0
    labels: int = 0
    quality_metric: str = ""
    quality: float | None = None
    offline_quality: float | None = None
    drift: list[dict] = field(default_factory=list)
    drifted_features: list[str] = field(default_factory=list)
    drift_note: str = ""

    def drift_results(self) -> list[DriftResult]:
        """``drift`` as ``DriftResult`` objects."""
        return [DriftResult.from_dict(d) for d in self.drift]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VersionHealth:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, "drift": [dict(x) for x in d.get("drift", [])],
                      "drifted_features": list(d.get("drifted_features", []))})
