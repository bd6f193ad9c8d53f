"""Mergeable statistics sketches: one vectorised pass per block, associative and commutative merges.

Numeric columns keep exact count/nulls/non-finite/min/max, mean and population variance (merged with Chan's
parallel formula) and a DDSketch-style quantile sketch: every finite value falls into a logarithmic bucket
(relative accuracy ``RELATIVE_ACCURACY``), with separate positive, negative and zero buckets holding integer counts,
so merging is exact and order-independent. Categorical columns keep exact per-category counts.

Histograms use right-closed bins on reference ``edges``: bin ``i`` holds ``edges[i] < x <= edges[i+1]``, and the
first and last bins are open-ended (values beyond the reference range land there). ``reference_edges`` puts its
edges on sketch bucket boundaries, so a histogram read from a sketch on those edges matches the exact one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymlops.errors import DataError

__all__ = [
    "RELATIVE_ACCURACY",
    "CategoricalSketch",
    "DatasetProfile",
    "FeatureProfile",
    "NumericSketch",
    "as_category_strings",
    "dtype_family",
    "merge_profiles",
    "numeric_edges",
    "profile_table",
    "reference_edges",
]

RELATIVE_ACCURACY = 0.01
_GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_LOG_GAMMA = math.log(_GAMMA)
_PROFILE_FORMAT = 1

Kind = Literal["numeric", "categorical"]


# ----------------------------------------------------------------------------------------------- buckets
def _bucket_counts(magnitudes: np.ndarray) -> dict[int, int]:
    if magnitudes.size == 0:
        return {}
    keys, counts = np.unique(np.ceil(np.log(magnitudes) / _LOG_GAMMA).astype(np.int64), return_counts=True)
    return dict(zip(keys.tolist(), counts.tolist(), strict=True))


def _bound(keys: np.ndarray) -> np.ndarray:
    # One function for every bucket bound, so bucket k's upper bound equals bucket k+1's lower bound bitwise.
    with np.errstate(over="ignore"):
        return np.exp(keys.astype(np.float64) * _LOG_GAMMA)


def _add_counts(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out


def _bin_index(values: np.ndarray, edges: list[float]) -> np.ndarray:
    return np.searchsorted(np.asarray(edges[1:-1], dtype=np.float64), values, side="left")


def _check_edges(edges: list[float], column: str) -> list[float]:
    e = [float(v) for v in edges]
    if len(e) < 2 or any(b < a for a, b in zip(e, e[1:], strict=False)) or not all(map(math.isfinite, e)):
        raise DataError(f"histogram edges for column '{column}' must be >= 2 finite, non-decreasing numbers, got {e}")
    return e


# ----------------------------------------------------------------------------------------------- numeric
@dataclass
class NumericSketch:
    """Mergeable summary of a numeric column (see the module docstring for what is exact)."""

    count: int = 0
    nulls: int = 0
    nonfinite: int = 0
    min: float | None = None
    max: float | None = None
    mean: float = 0.0
    m2: float = 0.0
    zeros: int = 0
    positive: dict[int, int] = field(default_factory=dict)
    negative: dict[int, int] = field(default_factory=dict)
    edges: list[float] | None = None
    hist: list[int] | None = None
    bounds: list[float | None] | None = None
    outside: int | None = None

    @classmethod
    def from_values(
        cls,
        values: np.ndarray,
        nulls: int = 0,
        edges: list[float] | None = None,
        bounds: tuple[float | None, float | None] | None = None,
    ) -> NumericSketch:
        """Sketch an array of non-null values (NaN/Inf are counted as non-finite and otherwise ignored).

        With ``edges`` the sketch also holds the exact histogram on them; with ``bounds`` (lo, hi; either may be
        None) it holds the exact number of finite values outside ``[lo, hi]``.
        """
        x = np.asarray(values, dtype=np.float64).ravel()
        finite = np.isfinite(x)
        nonfinite = int(x.size - np.count_nonzero(finite))
        if nonfinite:
            x = x[finite]
        s = cls(count=int(x.size), nulls=int(nulls), nonfinite=nonfinite)
        if x.size:
            s.min, s.max = float(x.min()), float(x.max())
            s.mean = float(x.mean())
            with np.errstate(over="ignore"):  # values near 1e300 overflow to inf: a true, reported variance
                s.m2 = float(np.square(x - s.mean).sum())
            pos, neg = x[x > 0], -x[x < 0]
            s.zeros = int(x.size - pos.size - neg.size)
            s.positive, s.negative = _bucket_counts(pos), _bucket_counts(neg)
        if edges is not None:
            s.edges = _check_edges(edges, "values")
            s.hist = np.bincount(_bin_index(x, s.edges), minlength=len(s.edges) - 1).tolist()
        if bounds is not None:
            lo, hi = (None if b is None else float(b) for b in bounds)
            out = np.zeros(x.size, dtype=bool)
            if lo is not None:
                out |= x < lo
            if hi is not None:
                out |= x > hi
            s.bounds, s.outside = [lo, hi], int(np.count_nonzero(out))
        return s

    # ------------------------------------------------------------------ moments
    @property
    def variance(self) -> float:
        """Population variance of the finite values (NaN when there are none)."""
        return self.m2 / self.count if self.count else math.nan

    @property
    def std(self) -> float:
        return math.sqrt(self.variance) if self.count else math.nan

    # ------------------------------------------------------------------ merge
    def merge(self, other: NumericSketch) -> NumericSketch:
        """A new sketch of both inputs; associative and commutative."""
        n = self.count + other.count
        if not other.count:
            mean, m2 = self.mean, self.m2
        elif not self.count:
            mean, m2 = other.mean, other.m2
        else:  # Chan et al.'s parallel update: stable for large, similar-sized parts.
            delta = other.mean - self.mean
            mean = self.mean + delta * other.count / n
            m2 = self.m2 + other.m2 + delta * delta * self.count * other.count / n
        same_edges = self.hist is not None and other.hist is not None and self.edges == other.edges
        same_bounds = self.outside is not None and other.outside is not None and self.bounds == other.bounds
        return NumericSketch(
            count=n,
            nulls=self.nulls + other.nulls,
            nonfinite=self.nonfinite + other.nonfinite,
            min=_opt(min, self.min, other.min),
            max=_opt(max, self.max, other.max),
            mean=mean,
            m2=m2,
            zeros=self.zeros + other.zeros,
            positive=_add_counts(self.positive, other.positive),
            negative=_add_counts(self.negative, other.negative),
            # Histograms on different edges cannot be combined: drop them rather than guess.
            edges=list(self.edges) if same_edges else None,
            hist=[a + b for a, b in zip(self.hist, other.hist, strict=True)] if same_edges else None,
            bounds=list(self.bounds) if same_bounds else None,
            outside=self.outside + other.outside if same_bounds else None,
        )

    # ------------------------------------------------------------------ buckets in value order
    def buckets(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(lower bound, upper bound, representative value, count) of every bucket, in increasing value order."""
        neg_keys = np.array(sorted(self.negative, reverse=True), dtype=np.int64)
        pos_keys = np.array(sorted(self.positive), dtype=np.int64)
        zero = np.array([0.0] if self.zeros else [])
        scale = 2.0 / (_GAMMA + 1.0)  # bucket value estimate: relative error <= RELATIVE_ACCURACY
        lo = np.concatenate([-_bound(neg_keys), zero, _bound(pos_keys - 1)])
        hi = np.concatenate([-_bound(neg_keys - 1), zero, _bound(pos_keys)])
        rep = np.concatenate([-_bound(neg_keys) * scale, zero, _bound(pos_keys) * scale])
        counts = np.concatenate(
            [
                np.array([self.negative[k] for k in neg_keys.tolist()], dtype=np.int64),
                np.array([self.zeros] if self.zeros else [], dtype=np.int64),
                np.array([self.positive[k] for k in pos_keys.tolist()], dtype=np.int64),
            ]
        )
        return lo, hi, rep, counts

    def quantiles(self, qs: Iterable[float] | np.ndarray) -> np.ndarray:
        """Estimated quantiles (numpy's linear interpolation between order statistics), NaN when empty."""
        q = np.clip(np.asarray(qs if isinstance(qs, np.ndarray) else list(qs), dtype=np.float64), 0.0, 1.0)
        if not self.count:
            return np.full(q.shape, math.nan)
        _, _, rep, counts = self.buckets()
        rep = np.clip(rep, self.min, self.max)
        cum = np.cumsum(counts)
        pos = q * (self.count - 1)
        below = np.floor(pos)
        lower = rep[np.searchsorted(cum, below, side="right")]
        upper = rep[np.searchsorted(cum, np.minimum(below + 1, self.count - 1), side="right")]
        out = lower + (pos - below) * (upper - lower)
        out[q <= 0.0] = self.min
        out[q >= 1.0] = self.max
        return out

    def quantile(self, q: float) -> float:
        """Estimated ``q``-quantile, within ``RELATIVE_ACCURACY`` of the nearest order statistics."""
        return float(self.quantiles(np.array([q]))[0])

    def cdf(self, x: Iterable[float] | np.ndarray) -> np.ndarray:
        """Estimated share of finite values ``<= x`` (linear within a bucket, exact at bucket bounds)."""
        x = np.asarray(x, dtype=np.float64)
        if not self.count:
            return np.full(x.shape, math.nan)
        lo, hi, _, counts = self.buckets()
        lo, hi = np.clip(lo, self.min, self.max), np.clip(hi, self.min, self.max)
        cum = np.concatenate([[0], np.cumsum(counts)])
        j = np.searchsorted(hi, x, side="left")
        inside = j < counts.size
        jj = np.minimum(j, counts.size - 1)
        width = hi[jj] - lo[jj]
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.where(width > 0, (x - lo[jj]) / width, (x >= lo[jj]).astype(np.float64))
        below = cum[jj] + np.clip(frac, 0.0, 1.0) * counts[jj]
        return np.where(inside, below, self.count) / self.count

    def histogram(self, edges: list[float]) -> np.ndarray:
        """Approximate counts per bin on ``edges`` (right-closed, open-ended outer bins), read from the sketch."""
        if not self.count:
            return np.zeros(len(edges) - 1)
        inner = self.cdf(np.asarray(edges[1:-1], dtype=np.float64))
        return np.diff(np.concatenate([[0.0], inner, [1.0]])) * self.count

    def count_outside(self, lo: float | None, hi: float | None) -> int:
        """Finite values outside ``[lo, hi]``: exact when profiled with these bounds or when min/max settle it,
        else estimated from the sketch."""
        if self.outside is not None and self.bounds == [lo, hi]:
            return self.outside
        if not self.count:
            return 0
        total = 0.0
        if lo is not None and self.min < lo:
            total += max(1.0, float(self.cdf([lo])[0]) * self.count)
        if hi is not None and self.max > hi:
            total += max(1.0, (1.0 - float(self.cdf([hi])[0])) * self.count)
        return min(self.count, round(total))

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (string keys); ``from_dict`` restores an equal sketch."""
        return {
            "type": "numeric",
            "relative_accuracy": RELATIVE_ACCURACY,
            "count": self.count,
            "nulls": self.nulls,
            "nonfinite": self.nonfinite,
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "m2": self.m2,
            "zeros": self.zeros,
            "positive": {str(k): v for k, v in self.positive.items()},
            "negative": {str(k): v for k, v in self.negative.items()},
            "edges": self.edges,
            "hist": self.hist,
            "bounds": self.bounds,
            "outside": self.outside,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NumericSketch:
        if d.get("relative_accuracy") != RELATIVE_ACCURACY:
            raise ValueError(
                f"numeric sketch has relative_accuracy {d.get('relative_accuracy')}, this version reads "
                f"{RELATIVE_ACCURACY}; re-profile the data"
            )
        return cls(
            count=int(d["count"]),
            nulls=int(d["nulls"]),
            nonfinite=int(d["nonfinite"]),
            min=None if d["min"] is None else float(d["min"]),
            max=None if d["max"] is None else float(d["max"]),
            mean=float(d["mean"]),
            m2=float(d["m2"]),
            zeros=int(d["zeros"]),
            positive={int(k): int(v) for k, v in d["positive"].items()},
            negative={int(k): int(v) for k, v in d["negative"].items()},
            edges=None if d.get("edges") is None else [float(v) for v in d["edges"]],
            hist=None if d.get("hist") is None else [int(v) for v in d["hist"]],
            bounds=None if d.get("bounds") is None else [None if v is None else float(v) for v in d["bounds"]],
            outside=None if d.get("outside") is None else int(d["outside"]),
        )


def _opt(fn, a, b):
    if a is None:
        return b
    if b is None:
        return a
    return fn(a, b)


# ------------------------------------------------------------------------------------------- categorical
@dataclass
class CategoricalSketch:
    """Exact category counts of a column (categories as strings; nulls counted apart)."""

    count: int = 0
    nulls: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def merge(self, other: CategoricalSketch) -> CategoricalSketch:
        """A new sketch of both inputs; associative and commutative."""
        return CategoricalSketch(self.count + other.count, self.nulls + other.nulls, _add_counts(self.counts, other.counts))

    def frequencies(self) -> dict[str, float]:
        """Share of non-null values per category."""
        return {k: v / self.count for k, v in self.counts.items()} if self.count else {}

    def to_dict(self) -> dict[str, Any]:
        return {"type": "categorical", "count": self.count, "nulls": self.nulls, "counts": dict(self.counts)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CategoricalSketch:
        return cls(int(d["count"]), int(d["nulls"]), {str(k): int(v) for k, v in d["counts"].items()})


Sketch = NumericSketch | CategoricalSketch


def _sketch_from_dict(d: dict[str, Any]) -> Sketch:
    if d.get("type") == "numeric":
        return NumericSketch.from_dict(d)
    if d.get("type") == "categorical":
        return CategoricalSketch.from_dict(d)
    raise ValueError(f"unknown sketch type {d.get('type')!r}; expected 'numeric' or 'categorical'")


# ----------------------------------------------------------------------------------------------- dtypes
_INT = re.compile(r"^u?int(8|16|32|64)$")
_DICT = re.compile(r"^dictionary<values=([^,]+),")


def dtype_family(dtype: str) -> str:
    """Family of an arrow type string: 'integer', 'float', 'bool', 'string', 'timestamp' or 'other'."""
    m = _DICT.match(dtype)
    if m:
        return dtype_family(m.group(1))
    if _INT.match(dtype):
        return "integer"
    if dtype in ("halffloat", "float", "double") or dtype.startswith("decimal"):
        return "float"
    if dtype == "bool":
        return "bool"
    if dtype in ("string", "large_string", "string_view", "utf8", "large_utf8"):
        return "string"
    if dtype.startswith(("timestamp", "date")):
        return "timestamp"
    return "other"


def _merge_dtype(a: str, b: str, column: str) -> str:
    if a == b or b == "null":  # an all-null block (arrow type null) says nothing about the column's type
        return a
    if a == "null":
        return b
    fa, fb = dtype_family(a), dtype_family(b)
    if {fa, fb} <= {"integer", "float"}:
        return "int64" if fa == fb == "integer" else "double"
    if fa == fb:
        return min(a, b)  # e.g. string vs large_string: same values, pick deterministically
    raise DataError(
        f"column '{column}' is {a} in one part of the data and {b} in another; make the files agree on its type"
    )


# ----------------------------------------------------------------------------------------------- profiles
@dataclass
class FeatureProfile:
    """Profile of one column: its kind, arrow type string and sketch."""

    name: str
    kind: Kind
    dtype: str
    sketch: Sketch

    @property
    def nulls(self) -> int:
        return self.sketch.nulls

    def merge(self, other: FeatureProfile) -> FeatureProfile:
        if other.kind != self.kind:
            raise DataError(
                f"column '{self.name}' is {self.kind} ({self.dtype}) in one part of the data and {other.kind} "
                f"({other.dtype}) in another; make the files agree on its type"
            )
        return FeatureProfile(self.name, self.kind, _merge_dtype(self.dtype, other.dtype, self.name),
                              self.sketch.merge(other.sketch))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "dtype": self.dtype, "sketch": self.sketch.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureProfile:
        if d["kind"] not in ("numeric", "categorical"):
            raise ValueError(f"feature {d['name']!r}: unknown kind {d['kind']!r}")
        return cls(str(d["name"]), d["kind"], str(d["dtype"]), _sketch_from_dict(d["sketch"]))


def _absent(fp: FeatureProfile, rows: int) -> FeatureProfile:
    """The profile of ``rows`` rows where the column does not exist: all null (like a union-schema concat)."""
    s = fp.sketch
    if isinstance(s, CategoricalSketch):
        return FeatureProfile(fp.name, fp.kind, fp.dtype, CategoricalSketch(nulls=rows))
    empty = NumericSketch(
        nulls=rows,
        edges=s.edges,
        hist=None if s.hist is None else [0] * len(s.hist),
        bounds=s.bounds,
        outside=None if s.outside is None else 0,
    )
    return FeatureProfile(fp.name, fp.kind, fp.dtype, empty)


@dataclass
class DatasetProfile:
    """Profile of a dataset: row count, per-column profiles, and the arrow types of columns not profiled."""

    rows: int
    features: dict[str, FeatureProfile]
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def dtypes(self) -> dict[str, str]:
        """Arrow type string of every column seen, profiled or skipped."""
        return {**self.skipped, **{n: f.dtype for n, f in self.features.items()}}

    def merge(self, other: DatasetProfile) -> DatasetProfile:
        """A new profile of both inputs; a column missing from one side counts as null for its rows."""
        features: dict[str, FeatureProfile] = {}
        for name in sorted(self.features.keys() | other.features.keys()):
            a, b = self.features.get(name), other.features.get(name)
            a = a if a is not None else _absent(b, self.rows)
            b = b if b is not None else _absent(a, other.rows)
            features[name] = a.merge(b)
        skipped = {}
        for name in sorted((self.skipped.keys() | other.skipped.keys()) - features.keys()):
            a, b = self.skipped.get(name), other.skipped.get(name)
            skipped[name] = _merge_dtype(a, b, name) if a and b else (a or b)
        return DatasetProfile(self.rows + other.rows, features, skipped)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict; ``from_dict`` restores an equal profile."""
        return {
            "format": _PROFILE_FORMAT,
            "rows": self.rows,
            "features": {n: f.to_dict() for n, f in self.features.items()},
            "skipped": dict(self.skipped),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetProfile:
        if d.get("format") != _PROFILE_FORMAT:
            raise ValueError(f"profile format {d.get('format')!r} is not {_PROFILE_FORMAT}; re-profile the data")
        return cls(
            rows=int(d["rows"]),
            features={str(n): FeatureProfile.from_dict(f) for n, f in d["features"].items()},
            skipped={str(n): str(t) for n, t in d.get("skipped", {}).items()},
        )


# ----------------------------------------------------------------------------------------------- profiling
def as_category_strings(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Values as the category strings the profiles use (bools 'true'/'false', numbers as arrow prints them);
    nulls stay null. Share this with anything that looks categories up, so both sides agree."""
    t = values.type
    if pa.types.is_dictionary(t):
        values = values.cast(t.value_type) if isinstance(values, pa.ChunkedArray) else values.dictionary_decode()
    if values.type == pa.string():
        return values
    return pc.cast(values, pa.string())


def _category_counts(column: pa.ChunkedArray) -> dict[str, int]:
    # Count on the raw type first and stringify only the distinct values: far cheaper than casting every row.
    vc = pc.value_counts(column.drop_null()) if column.length() else None
    if vc is None or len(vc) == 0:
        return {}
    keys = as_category_strings(vc.field("values")).to_pylist()
    counts = vc.field("counts").to_pylist()
    if len(set(keys)) == len(keys):
        return dict(zip(keys, counts, strict=True))
    # Distinct raw values can print alike (e.g. -0.0 and 0.0): add their counts up.
    out: dict[str, int] = {}
    for k, c in zip(keys, counts, strict=True):
        out[k] = out.get(k, 0) + c
    return out


def _numeric_values(column: pa.ChunkedArray) -> np.ndarray:
    values = column.drop_null()
    t = values.type
    if pa.types.is_timestamp(t):
        values = values.cast(pa.timestamp("us", tz=t.tz)).cast(pa.int64())
    elif pa.types.is_date(t):
        values = values.cast(pa.timestamp("us")).cast(pa.int64())
    elif pa.types.is_decimal(t):
        values = values.cast(pa.float64())
    return np.asarray(values.to_numpy(), dtype=np.float64)


def _kind(t: pa.DataType, forced_categorical: bool) -> Kind | None:
    if pa.types.is_dictionary(t) or pa.types.is_boolean(t) or pa.types.is_string(t) or pa.types.is_large_string(t):
        return "categorical"
    if pa.types.is_string_view(t):
        return "categorical"
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "categorical" if forced_categorical else "numeric"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "numeric"  # epoch microseconds
    return None


def _as_table(data: Any) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if hasattr(data, "to_arrow"):  # polars DataFrame
        return data.to_arrow()
    raise DataError(f"cannot profile a {type(data).__name__}; pass a pyarrow Table or RecordBatch")


def profile_table(
    table: pa.Table,
    categorical: set[str] | None = None,
    edges: dict[str, list[float]] | None = None,
    *,
    skip: set[str] | None = None,
    ranges: dict[str, tuple[float | None, float | None]] | None = None,
) -> DatasetProfile:
    """Profile one block (vectorised; no per-row Python).

    ``categorical``: columns profiled as categories even if numeric (values stringified). ``edges``: numeric
    columns that also get an exact histogram on these bin edges. ``skip``: columns only recorded with their type
    (ids, timestamps). ``ranges``: numeric columns that also get an exact count of finite values outside
    ``[lo, hi]`` (either bound may be None). Timestamps and dates not skipped are profiled as numbers (epoch
    microseconds); columns of other types (lists, structs, binary, null) are recorded as skipped.
    """
    table = _as_table(table)
    if len(set(table.column_names)) != table.num_columns:
        dup = sorted({n for n in table.column_names if table.column_names.count(n) > 1})
        raise DataError(f"columns {dup} appear more than once; rename them so every column name is unique")
    categorical, skip, edges, ranges = categorical or set(), skip or set(), edges or {}, ranges or {}
    features: dict[str, FeatureProfile] = {}
    skipped: dict[str, str] = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        dtype = str(column.type)
        kind = None if name in skip else _kind(column.type, name in categorical)
        if kind is None:
            skipped[name] = dtype
        elif kind == "categorical":
            sketch = CategoricalSketch(column.length() - column.null_count, column.null_count, _category_counts(column))
            features[name] = FeatureProfile(name, kind, dtype, sketch)
        else:
            col_edges = _check_edges(edges[name], name) if name in edges else None
            sketch = NumericSketch.from_values(_numeric_values(column), column.null_count, col_edges, ranges.get(name))
            features[name] = FeatureProfile(name, kind, dtype, sketch)
    return DatasetProfile(table.num_rows, features, skipped)


def merge_profiles(profiles: Iterable[DatasetProfile]) -> DatasetProfile:
    """Merge any number of profiles (order does not matter); an empty iterable gives an empty profile."""
    out = DatasetProfile(rows=0, features={})
    for p in profiles:
        out = out.merge(p)
    return out


# ----------------------------------------------------------------------------------------------- edges
def numeric_edges(sketch: NumericSketch, bins: int) -> list[float] | None:
    """Quantile bin edges for one sketch, placed on bucket bounds (None when it holds no finite value).

    A quantile bucket that several quantiles fall into holds a point mass (a constant, a 0/1 flag, an integer
    code): it also gets its lower bound as an edge, so the point mass has a bin of its own and a shift of mass
    towards or away from it shows up.
    """
    if not sketch.count:
        return None
    lo, hi, _, counts = sketch.buckets()
    cum = np.cumsum(counts)
    ranks = np.floor(np.arange(1, bins) / bins * (sketch.count - 1))
    buckets, hits = np.unique(np.searchsorted(cum, ranks, side="right"), return_counts=True)
    lows = lo[buckets[hits > 1]]
    lows = np.where(lows == 0.0, -np.finfo(np.float64).smallest_subnormal, lows)  # zero bucket: split off x < 0
    inner = np.unique(np.concatenate([hi[buckets], lows]))
    return [float(min(sketch.min, inner[0])), *inner.tolist(), float(max(sketch.max, inner[-1]))]


def reference_edges(profile: DatasetProfile, bins: int) -> dict[str, list[float]]:
    """Quantile bin edges for every numeric column with finite values, for exact histograms in a later pass."""
    out = {}
    for name, fp in profile.features.items():
        if isinstance(fp.sketch, NumericSketch):
            e = numeric_edges(fp.sketch, bins)
            if e is not None:
                out[name] = e
    return out
