"""Train / validation / test split assignment that does not depend on how rows are blocked across workers.

Every row's split is a function of the row itself and of a small fitted ``SplitPlan``, never of its position:

* random: a seeded 64-bit hash of the row key (id columns + timestamp by default) is mapped to ``u`` in [0, 1)
  and cut at ``(train, train + validation)``. Without stratification the cuts are the nominal fractions, so a row
  keeps its split when the dataset grows: a test row never leaks into training on the next retrain.
* stratified random: one cheap pass counts ``u`` per label class in ``BINS`` equal bins (``split_histogram``,
  mergeable); ``plan_split`` then picks per-class cuts at the bin edges whose cumulative counts are closest to the
  fractions. Per-class fractions are then exact up to one bin (~n_class / 4096 rows) instead of holding only in
  expectation; the price is that cuts move slightly when data is added, so a few boundary rows may change split.
* time: a bounds pass (``time_bounds``) and a histogram pass over the timestamp give cut points at time
  quantiles; the oldest rows go to train, the newest to test, and rows sharing a timestamp share a split.

The hash is implemented here with numpy (splitmix64 mixing of bytes and integers) rather than a library hash, so
splits stay identical across pyarrow/polars versions; ``tests/unit/test_splits.py`` pins it with golden values.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymlops.core.sketches import as_category_strings
from raymlops.errors import ConfigError, DataError

__all__ = [
    "BINS",
    "SPLITS",
    "SplitPlan",
    "SplitSpec",
    "assign_split",
    "fixed_plan",
    "merge_histograms",
    "plan_split",
    "row_hash",
    "split_histogram",
    "time_bounds",
    "time_values",
    "unit_hash",
]

SPLITS: tuple[str, str, str] = ("train", "validation", "test")
BINS = 4096  # a power of two: u * BINS is exact in float64, so histogram counts equal assignment counts

_U64 = np.uint64
_M1, _M2, _GOLDEN = _U64(0xBF58476D1CE4E5B9), _U64(0x94D049BB133111EB), _U64(0x9E3779B97F4A7C15)
_NULL = _U64(0x6E756C6C6E756C6C)
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class SplitSpec:
    """What the configuration asks for: method, fractions, seed and the columns involved."""

    method: Literal["random", "time"] = "random"
    validation_frac: float = 0.15
    test_frac: float = 0.15
    seed: int = 42
    key_columns: tuple[str, ...] = ()
    stratify_by: str | None = None
    timestamp: str | None = None

    def __post_init__(self) -> None:
        if self.method not in ("random", "time"):
            raise ConfigError(f"data.split.method: unknown method {self.method!r}; use 'random' or 'time'")
        v, t = self.validation_frac, self.test_frac
        if not (0 <= v < 1 and 0 <= t < 1 and v + t < 1):
            raise ConfigError(
                f"data.split: validation fraction {v} + test fraction {t} must each be in [0, 1) and sum "
                "below 1; e.g. validation_pct: 15, test_pct: 15"
            )
        if self.method == "time" and not self.timestamp:
            raise ConfigError("data.split.method is 'time' but no timestamp column is set; set data.timestamp")
        if self.method == "random" and not self.key_columns:
            raise ConfigError("a random split needs key columns to hash; set data.id_columns")

    @property
    def train_frac(self) -> float:
        return 1.0 - self.validation_frac - self.test_frac


@dataclass(frozen=True)
class SplitPlan:
    """A fitted split: cut points ``(train_end, validation_end)``.

    For the random method cuts are in hash space [0, 1], for the time method in time units
    (``time_values``). ``cuts`` holds per-class cuts of a stratified split; rows of other classes and
    null labels use ``default``.
    """

    spec: SplitSpec
    default: tuple[float, float]
    cuts: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "method": spec.method,
            "validation_frac": spec.validation_frac,
            "test_frac": spec.test_frac,
            "seed": spec.seed,
            "key_columns": list(spec.key_columns),
            "stratify_by": spec.stratify_by,
            "timestamp": spec.timestamp,
            "default": list(self.default),
            "cuts": {k: list(v) for k, v in self.cuts.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SplitPlan:
        spec = SplitSpec(
            method=d["method"],
            validation_frac=d["validation_frac"],
            test_frac=d["test_frac"],
            seed=d["seed"],
            key_columns=tuple(d["key_columns"]),
            stratify_by=d.get("stratify_by"),
            timestamp=d.get("timestamp"),
        )
        cuts = {k: (float(v[0]), float(v[1])) for k, v in d.get("cuts", {}).items()}
        return cls(spec, (float(d["default"][0]), float(d["default"][1])), cuts)


# ------------------------------------------------------------------------------------------------- hashing
def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser; uint64 arithmetic wraps on purpose."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> _U64(30))
        x = x * _M1
        x = x ^ (x >> _U64(27))
        x = x * _M2
        return x ^ (x >> _U64(31))


def _column(table: pa.Table, name: str) -> pa.Array:
    if name not in table.column_names:
        raise DataError(f"column '{name}' is missing; the split needs it (columns: {table.column_names})")
    col = table.column(name).combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    return col


def _hash_bytes(arr: pa.Array) -> np.ndarray:
    if pa.types.is_string_view(arr.type) or pa.types.is_binary_view(arr.type):
        arr = arr.cast(pa.large_binary())
    large = pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type)
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], np.int64 if large else np.int32)[arr.offset : arr.offset + n + 1]
    offsets = offsets.astype(np.int64)
    data_buf = arr.buffers()[2]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    data = data[offsets[0] : offsets[-1]].astype(np.uint64)
    lengths = np.diff(offsets)
    # Each byte is mixed with its position inside its string, then summed per string via a wrapping cumsum:
    # order-sensitive, fully vectorised, no loop over rows or characters.
    pos = np.arange(len(data), dtype=np.int64) - np.repeat(offsets[:-1] - offsets[0], lengths)
    per_byte = _mix(data | (pos.astype(np.uint64) << _U64(8)))
    csum = np.concatenate([np.zeros(1, np.uint64), np.cumsum(per_byte, dtype=np.uint64)])
    start = offsets[:-1] - offsets[0]
    with np.errstate(over="ignore"):
        sums = csum[start + lengths] - csum[start]
    return _mix(sums ^ _mix(lengths.astype(np.uint64) + _GOLDEN))


_BYTES_TYPES = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view,
                pa.types.is_binary, pa.types.is_large_binary, pa.types.is_binary_view)


def _hash_array(arr: pa.Array, name: str) -> np.ndarray:
    t = arr.type
    if pa.types.is_decimal(t):
        arr, t = arr.cast(pa.string()), pa.string()
    if pa.types.is_temporal(t):  # dates, times, timestamps, durations: hash the stored integer
        arr, t = arr.view(pa.int32() if t.bit_width == 32 else pa.int64()), pa.int64()
    if any(check(t) for check in _BYTES_TYPES):
        h = _hash_bytes(arr)
    elif pa.types.is_floating(t):
        x = pc.fill_null(arr.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False) + 0.0  # -0.0 -> 0.0
        x = np.where(np.isnan(x), np.nan, x)  # one NaN bit pattern
        h = _mix(x.view(np.uint64))
    elif pa.types.is_unsigned_integer(t):
        h = _mix(pc.fill_null(arr.cast(pa.uint64()), 0).to_numpy(zero_copy_only=False))
    elif pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_null(t):
        ints = arr.cast(pa.int64()) if not pa.types.is_null(t) else pa.nulls(len(arr), pa.int64())
        h = _mix(pc.fill_null(ints, 0).to_numpy(zero_copy_only=False).view(np.uint64))
    else:
        raise DataError(
            f"column '{name}' of type {t} cannot be part of the split key; use string, integer or timestamp "
            "columns in data.id_columns"
        )
    if arr.null_count:
        h = np.where(arr.is_null().to_numpy(zero_copy_only=False), _NULL, h)
    return h


def row_hash(table: pa.Table, columns: Sequence[str], seed: int) -> np.ndarray:
    """Seeded 64-bit hash (uint64) of each row's values in ``columns``; equal keys give equal hashes."""
    h = _mix(np.full(table.num_rows, seed & _MASK64, dtype=np.uint64))
    for name in columns:
        with np.errstate(over="ignore"):
            h = _mix((h * _GOLDEN) ^ _hash_array(_column(table, name), name))
    return h


def unit_hash(table: pa.Table, columns: Sequence[str], seed: int) -> np.ndarray:
    """``row_hash`` mapped to float64 in [0, 1) (top 53 bits)."""
    return (row_hash(table, columns, seed) >> _U64(11)).astype(np.float64) * 2.0**-53


# ---------------------------------------------------------------------------------------------------- time
def time_values(table: pa.Table, column: str) -> np.ndarray:
    """Event time as float64 (timestamps and dates in epoch microseconds, numbers as they are); NaN for null."""
    arr = _column(table, column)
    t = arr.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        unit_us = pa.timestamp("us", tz=t.tz) if pa.types.is_timestamp(t) else pa.timestamp("us")
        arr = pc.cast(arr, unit_us, safe=False).cast(pa.int64())
    elif not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        raise DataError(
            f"time split column '{column}' has type {t}; it must be a timestamp, date or number "
            "(parse it while ingesting, or use data.split.method: random)"
        )
    return arr.cast(pa.float64()).to_numpy(zero_copy_only=False)


def time_bounds(batch: pa.Table, column: str) -> tuple[float, float, int]:
    """(min, max, null count) of the event time of one block; min/max are NaN when no value is present."""
    t = time_values(batch, column)
    ok = np.isfinite(t)
    if not ok.any():
        return float("nan"), float("nan"), int((~ok).sum())
    return float(t[ok].min()), float(t[ok].max()), int((~ok).sum())


def _time_bins(t: np.ndarray, lo: float, hi: float) -> np.ndarray:
    span = hi - lo if hi > lo else 1.0
    return np.clip(np.floor((t - lo) / span * BINS), 0, BINS - 1).astype(np.int64)


# ----------------------------------------------------------------------------------------- fit and assign
def split_histogram(batch: pa.Table, spec: SplitSpec, bounds: tuple[float, float] | None = None) -> pa.Table:
    """Sparse histogram of one block (columns ``key`` (label class, null when unstratified), ``bin``, ``rows``).

    Random method: bins of the row hash per label class. Time method: bins of the event time between
    ``bounds`` = (min, max) of the whole dataset. Merge blocks with ``merge_histograms``.
    """
    if spec.method == "time":
        if bounds is None:
            raise ValueError("split_histogram: the time method needs bounds=(min, max) from time_bounds")
        t = time_values(batch, spec.timestamp)  # type: ignore[arg-type]
        bins = _time_bins(t[np.isfinite(t)], *bounds)
        keys = pa.nulls(len(bins), pa.string())
    else:
        bins = np.floor(unit_hash(batch, spec.key_columns, spec.seed) * BINS).astype(np.int64)
        keys = pa.nulls(len(bins), pa.string())
        if spec.stratify_by:
            keys = as_category_strings(_column(batch, spec.stratify_by))
    table = pa.table({"key": keys, "bin": pa.array(bins, pa.int64())})
    # One thread: Ray Data's parquet reader resizes Arrow's CPU pool in this process (pa.set_cpu_count), and a
    # threaded Acero plan started after that can fail ("thread index N is out of range"); these tables are small.
    return (table.group_by(["key", "bin"], use_threads=False).aggregate([("bin", "count")])
            .rename_columns(["key", "bin", "rows"]))


def merge_histograms(parts: Iterable[pa.Table]) -> pa.Table:
    """Sum sparse histograms (any order, any grouping of blocks)."""
    tables = [p for p in parts if p.num_rows]
    if not tables:
        return pa.table({"key": pa.array([], pa.string()), "bin": pa.array([], pa.int64()),
                         "rows": pa.array([], pa.int64())})
    merged = pa.concat_tables(tables).group_by(["key", "bin"], use_threads=False).aggregate([("rows", "sum")])
    return merged.rename_columns(["key", "bin", "rows"])


def _cut_edges(counts: np.ndarray, fracs: tuple[float, float]) -> tuple[int, int]:
    """Bin edges whose cumulative counts are closest to the fractions; ties go to the nominal edge."""
    cum = np.concatenate([[0], np.cumsum(counts)])
    edges = np.arange(BINS + 1)
    chosen = []
    low = 0
    for frac in fracs:
        cost = np.abs(cum - frac * cum[-1]).astype(np.float64)
        cost[:low] = np.inf
        best = np.flatnonzero(cost == cost.min())
        low = int(best[np.argmin(np.abs(edges[best] - frac * BINS))])
        chosen.append(low)
    return chosen[0], chosen[1]


def fixed_plan(spec: SplitSpec) -> SplitPlan:
    """Random split at the nominal fractions, no fitting pass: stable as the dataset grows."""
    if spec.method != "random":
        raise ConfigError("fixed_plan is for the random method; fit a time split with plan_split")
    return SplitPlan(spec, (spec.train_frac, spec.train_frac + spec.validation_frac))


def plan_split(spec: SplitSpec, histogram: pa.Table, bounds: tuple[float, float] | None = None) -> SplitPlan:
    """Fit cut points from a merged ``split_histogram`` (and, for the time method, the dataset's time bounds)."""
    fracs = (spec.train_frac, spec.train_frac + spec.validation_frac)
    keys = histogram.column("key").to_pylist()
    bins = histogram.column("bin").to_numpy()
    rows = histogram.column("rows").to_numpy()
    if spec.method == "time":
        if bounds is None or not np.isfinite(bounds).all():
            raise DataError(f"time split: column '{spec.timestamp}' has no values; use method random")
        lo, hi = bounds
        if hi <= lo and spec.train_frac < 1:
            raise DataError(
                f"time split: every row has the same '{spec.timestamp}'; there is nothing to order, "
                "use data.split.method: random"
            )
        e1, e2 = _cut_edges(np.bincount(bins, weights=rows, minlength=BINS), fracs)
        # An edge at BINS must still include the newest row (t == hi) on its left.
        at = [lo + e / BINS * (hi - lo) if e < BINS else float(np.nextafter(hi, np.inf)) for e in (e1, e2)]
        return SplitPlan(spec, (at[0], at[1]))
    cuts: dict[str, tuple[float, float]] = {}
    if spec.stratify_by:
        key_col = histogram.column("key")
        for key in sorted({k for k in keys if k is not None}):
            sel = pc.fill_null(pc.equal(key_col, key), False).to_numpy(zero_copy_only=False)
            e1, e2 = _cut_edges(np.bincount(bins[sel], weights=rows[sel], minlength=BINS), fracs)
            cuts[key] = (e1 / BINS, e2 / BINS)
    return SplitPlan(spec, fracs, cuts)


def assign_split(batch: pa.Table, plan: SplitPlan) -> np.ndarray:
    """Split of each row as int8 codes indexing ``SPLITS`` (0 train, 1 validation, 2 test)."""
    spec = plan.spec
    if spec.method == "time":
        u = time_values(batch, spec.timestamp)  # type: ignore[arg-type]
        missing = int(np.isnan(u).sum())
        if missing:
            raise DataError(
                f"time split: {missing} rows have a null '{spec.timestamp}'; drop or fill them before "
                "preparing, or use data.split.method: random"
            )
    else:
        u = unit_hash(batch, spec.key_columns, spec.seed)
    c1 = np.full(batch.num_rows, plan.default[0])
    c2 = np.full(batch.num_rows, plan.default[1])
    if plan.cuts and spec.stratify_by:
        names = list(plan.cuts)
        keys = as_category_strings(_column(batch, spec.stratify_by))
        idx = pc.index_in(keys, value_set=pa.array(names, pa.string()))
        idx = pc.fill_null(idx, len(names)).to_numpy(zero_copy_only=False)
        c1 = np.array([plan.cuts[n][0] for n in names] + [plan.default[0]])[idx]
        c2 = np.array([plan.cuts[n][1] for n in names] + [plan.default[1]])[idx]
    return np.where(u < c1, 0, np.where(u < c2, 1, 2)).astype(np.int8)
