"""Synthetic churn data: daily parquet files with knobs for drift, schema changes, nulls and corrupt values.

Each day draws from its own random streams, seeded by (seed, calendar date, purpose): a day's rows do not depend on
how many days are generated or where the run starts, and switching one knob on leaves the other streams untouched
(adding nulls does not change the feature values, drift does not change which rows are corrupt).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raymlops.errors import ConfigError
from raymlops.storage import atomic_write_bytes, join

__all__ = ["DriftSpec", "GenerateResult", "generate", "make_day", "parse_category_mix_option", "parse_drift",
           "parse_drift_option", "parse_null_pct"]

COLUMNS = ("customer_id", "event_ts", "region", "plan", "payment_method", "tenure_months", "monthly_charges",
           "total_charges", "support_calls", "usage_gb", "churned")
FEATURES = COLUMNS[2:-1]
NUMERIC = ("tenure_months", "monthly_charges", "total_charges", "support_calls", "usage_gb")
SCHEMA_CHANGES = ("add_column", "remove_column", "rename_column", "change_type", "new_category")
ADDED_COLUMN = "discount_pct"
RENAMED = ("support_calls", "n_support_calls")

# Categories with base weights and their effect on the churn logit. "enterprise" only appears with the
# `new_category` schema change.
CATEGORIES = MappingProxyType({
    "region": (("north", "south", "east", "west"), (0.30, 0.25, 0.25, 0.20), (-0.2, 0.1, 0.0, 0.3)),
    "plan": (("basic", "standard", "premium", "enterprise"), (0.50, 0.30, 0.20, 0.0), (0.4, 0.0, -0.8, -0.6)),
    "payment_method": (("card", "bank", "paypal", "cash"), (0.40, 0.25, 0.20, 0.15), (-0.3, -0.4, 0.1, 0.8)),
})
_ENTERPRISE_SHARE = 0.10
_PLAN_PRICE = np.array([30.0, 60.0, 95.0, 150.0])
# Numeric effects are on centred values, so the concept-drift sign flips change who churns, not how many.
_NUMERIC_EFFECT = MappingProxyType({
    "tenure_months": (-0.06, 22.0), "monthly_charges": (0.025, 52.0), "support_calls": (0.55, 1.5),
    "usage_gb": (-0.015, 25.0),
})
_INTERCEPT = -1.45
_CONCEPT_FLIPS = ("tenure_months", "monthly_charges", "payment_method")
_CORRUPTIONS = (
    ("negative", "monthly_charges"), ("negative", "total_charges"),
    ("nan", "monthly_charges"), ("nan", "total_charges"), ("nan", "usage_gb"),
    ("inf", "monthly_charges"), ("inf", "usage_gb"),
    ("outlier", "monthly_charges"), ("outlier", "tenure_months"), ("outlier", "usage_gb"),
)
_DAY_US = 86_400_000_000
_MAX_ROWS_PER_DAY = 10**8 - 1  # customer ids are yyyymmdd * 1e8 + row


@dataclass(frozen=True)
class DriftSpec:
    """Covariate drift from day `from_day` (0-based) on.

    `features` maps a numeric column to `(shift, scale)`: each value becomes `mean + (x - mean) * scale + shift`
    (mean of that day), clipped at 0. `categories` maps a categorical column to new weights for some of its
    categories (the others keep their base weight; weights are renormalised), e.g. `{"plan": {"premium": 0.6}}`.
    """

    features: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    categories: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    from_day: int = 0


@dataclass(frozen=True)
class GenerateResult:
    """Files written (URIs, one per day, in date order) and the total number of rows."""

    files: list[str]
    rows: int


def generate(
    out_uri: str,
    *,
    rows_per_day: int = 2000,
    days: int = 7,
    start_date: str | dt.date = "2026-01-01",
    seed: int = 0,
    drift: DriftSpec | None = None,
    concept_drift_from_day: int | None = None,
    schema_change: Iterable[str] = (),
    schema_change_from_day: int = 0,
    null_pct: Mapping[str, float] | float = 0.0,
    corrupt_pct: float = 0.0,
) -> GenerateResult:
    """Write `days` daily files `{out_uri}/churn-YYYY-MM-DD.parquet` of `rows_per_day` rows each.

    Day numbers (`from_day` arguments) are 0-based: day 0 is `start_date`. `null_pct` is a percent for every
    feature column, or a percent per column; `corrupt_pct` is the percent of rows with one corrupt value
    (negative charge, NaN, +/-Inf or an absurd outlier). The same arguments always give byte-identical files.
    """
    start = _parse_date(start_date)
    if not isinstance(days, int) or days < 1:
        raise ConfigError(f"days must be a positive integer, got {days!r}")
    for name, value in (("schema_change_from_day", schema_change_from_day),
                        ("concept_drift_from_day", concept_drift_from_day)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ConfigError(f"{name} must be a non-negative day number (0 = start date), got {value!r}")
    changes = _check_args(rows_per_day, seed, drift, tuple(schema_change), null_pct, corrupt_pct)
    files = []
    for day in range(days):
        date = start + dt.timedelta(days=day)
        table = make_day(
            date,
            rows_per_day,
            seed=seed,
            drift=drift if drift is not None and day >= drift.from_day else None,
            concept_drift=concept_drift_from_day is not None and day >= concept_drift_from_day,
            schema_change=changes if day >= schema_change_from_day else (),
            null_pct=null_pct,
            corrupt_pct=corrupt_pct,
        )
        uri = join(out_uri, f"churn-{date.isoformat()}.parquet")
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        atomic_write_bytes(uri, sink.getvalue())
        files.append(uri)
    return GenerateResult(files=files, rows=rows_per_day * days)


def make_day(
    date: str | dt.date,
    rows: int,
    *,
    seed: int = 0,
    drift: DriftSpec | None = None,
    concept_drift: bool = False,
    schema_change: Iterable[str] = (),
    null_pct: Mapping[str, float] | float = 0.0,
    corrupt_pct: float = 0.0,
) -> pa.Table:
    """One day of rows as an Arrow table; `drift` (if given) applies regardless of its `from_day`."""
    date = _parse_date(date)
    changes = _check_args(rows, seed, drift, tuple(schema_change), null_pct, corrupt_pct)
    day = date.toordinal()

    def rng(*purpose: int) -> np.random.Generator:
        return np.random.default_rng([seed, day, *purpose])

    codes, values = _features(rows, rng(0), drift, "new_category" in changes)
    if drift is not None:
        _drift_numeric(values, drift.features)
    values["total_charges"] = np.round(
        values["monthly_charges"] * np.maximum(values["tenure_months"], 1) * rng(4).uniform(0.9, 1.1, rows), 2
    )
    if drift is not None and "total_charges" in drift.features:
        _drift_numeric(values, {"total_charges": drift.features["total_charges"]})
    label = _label(codes, values, rng(1), concept_drift)
    if corrupt_pct:
        _corrupt(values, corrupt_pct, rng(2))
    masks = _null_masks(null_pct, rows, rng)
    return _table(date, rows, codes, values, label, masks, changes, rng(5))


# ------------------------------------------------------------------------------------------- generation
def _features(
    n: int, rng: np.random.Generator, drift: DriftSpec | None, enterprise: bool
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    codes = {}
    for name, (cats, base, _) in CATEGORIES.items():
        weights = np.array(base)
        if name == "plan" and enterprise:
            weights = weights * (1 - _ENTERPRISE_SHARE)
            weights[cats.index("enterprise")] = _ENTERPRISE_SHARE
        for cat, w in (drift.categories.get(name, {}) if drift else {}).items():
            weights[cats.index(cat)] = w
        codes[name] = rng.choice(len(cats), size=n, p=weights / weights.sum()).astype(np.int8)
    plan = codes["plan"]
    values = {
        "tenure_months": np.minimum(np.floor(rng.exponential(24.0, n)), 72).astype(np.int64),
        "monthly_charges": np.round(np.maximum(_PLAN_PRICE[plan] + rng.normal(0, 8, n), 10.0), 2),
        "support_calls": rng.poisson(1.1 + 0.8 * (plan == 0)).astype(np.int64),
        "usage_gb": np.round(rng.lognormal(np.log(20.0) + 0.3 * plan, 0.6), 2),
    }
    return codes, values


def _drift_numeric(values: dict[str, np.ndarray], features: Mapping[str, tuple[float, float]]) -> None:
    for name, (shift, scale) in features.items():
        if name not in values:  # total_charges is derived later and drifted on its own
            continue
        x = values[name].astype(np.float64)
        moved = np.maximum(x.mean() + (x - x.mean()) * scale + shift, 0.0)
        values[name] = np.round(moved).astype(np.int64) if values[name].dtype.kind == "i" else np.round(moved, 2)


def _label(codes: dict, values: dict, rng: np.random.Generator, concept_drift: bool) -> np.ndarray:
    def sign(name: str) -> float:
        return -1.0 if concept_drift and name in _CONCEPT_FLIPS else 1.0

    logit = np.full(len(codes["plan"]), _INTERCEPT)
    for name, (weight, centre) in _NUMERIC_EFFECT.items():
        logit += sign(name) * weight * (values[name] - centre)
    for name, (_, _, effects) in CATEGORIES.items():
        logit += sign(name) * np.asarray(effects)[codes[name]]
    # The uniform draws are fixed per day, so drift changes a label only where it moves the probability across them.
    return (rng.random(logit.size) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)


def _corrupt(values: dict[str, np.ndarray], pct: float, rng: np.random.Generator) -> None:
    n = len(values["monthly_charges"])
    rows = np.flatnonzero(rng.random(n) < pct / 100.0)
    which = rng.integers(0, len(_CORRUPTIONS), rows.size)
    signs = rng.choice([-1.0, 1.0], rows.size)
    for i, (kind, name) in enumerate(_CORRUPTIONS):
        hit = rows[which == i]
        col = values[name]
        if kind == "negative":
            col[hit] = -np.abs(col[hit]) - 1.0
        elif kind == "nan":
            col[hit] = np.nan
        elif kind == "inf":
            col[hit] = np.inf * signs[which == i]
        elif col.dtype.kind == "i":
            col[hit] += 10_000
        else:
            col[hit] = col[hit] * 1000.0 + 10_000.0


def _null_masks(null_pct: Mapping[str, float] | float, n: int, rng: Callable[..., np.random.Generator]
                ) -> dict[str, np.ndarray]:
    pct = null_pct if isinstance(null_pct, Mapping) else dict.fromkeys(FEATURES, float(null_pct))
    # One stream per column (by its position), so nulls in one column do not move those in another.
    return {
        name: rng(3, COLUMNS.index(name)).random(n) < p / 100.0 for name, p in pct.items() if p > 0
    }


def _table(date: dt.date, n: int, codes: dict, values: dict, label: np.ndarray, masks: dict,
           changes: tuple[str, ...], rng: np.random.Generator) -> pa.Table:
    day_us = (date - dt.date(1970, 1, 1)).days * _DAY_US
    ids = pa.array(np.arange(n, dtype=np.int64) + int(date.strftime("%Y%m%d")) * 10**8).cast(pa.string())
    cols: dict[str, pa.Array] = {
        "customer_id": pc.binary_join_element_wise("C", ids, ""),
        "event_ts": pa.array(np.sort(day_us + rng.integers(0, _DAY_US, n)), pa.timestamp("us", tz="UTC")),
    }
    for name, (cats, _, _) in CATEGORIES.items():
        cols[name] = pc.take(pa.array(cats), pa.array(codes[name], mask=masks.get(name)))
    for name in ("tenure_months", "monthly_charges", "total_charges", "support_calls", "usage_gb"):
        cols[name] = pa.array(values[name], mask=masks.get(name))
    cols["churned"] = pa.array(label, mask=masks.get("churned"))
    for name in ("customer_id", "event_ts"):
        if name in masks:
            cols[name] = pc.if_else(pa.array(masks[name]), pa.scalar(None, cols[name].type), cols[name])
    if "change_type" in changes:
        cols["tenure_months"] = cols["tenure_months"].cast(pa.string())
    if "remove_column" in changes:
        del cols["usage_gb"]
    if "rename_column" in changes:
        cols = {RENAMED[1] if k == RENAMED[0] else k: v for k, v in cols.items()}
    if "add_column" in changes:
        cols[ADDED_COLUMN] = pa.array(np.round(rng.uniform(0.0, 30.0, n), 1))
    return pa.table(cols)


# ------------------------------------------------------------------------------------------- arguments
def _parse_date(value: str | dt.date) -> dt.date:
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        raise ConfigError(f"start date {value!r} is not an ISO date; write it like 2026-01-01") from None


def _check_args(rows, seed, drift, changes, null_pct, corrupt_pct) -> tuple[str, ...]:
    if not isinstance(rows, int) or not 1 <= rows <= _MAX_ROWS_PER_DAY:
        raise ConfigError(f"rows per day must be an integer from 1 to {_MAX_ROWS_PER_DAY}, got {rows!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    unknown = sorted(set(changes) - set(SCHEMA_CHANGES))
    if unknown:
        raise ConfigError(f"unknown schema change(s) {unknown}; choose from {list(SCHEMA_CHANGES)}")
    if not 0 <= corrupt_pct <= 100:
        raise ConfigError(f"corrupt percent must be within 0..100, got {corrupt_pct!r}")
    pcts = null_pct if isinstance(null_pct, Mapping) else {"(all features)": null_pct}
    for name, p in pcts.items():
        if name != "(all features)" and name not in COLUMNS:
            raise ConfigError(f"null percent for unknown column {name!r}; columns are {list(COLUMNS)}")
        if not 0 <= p <= 100:
            raise ConfigError(f"null percent for {name} must be within 0..100, got {p!r}")
    if drift is not None:
        _check_drift(drift)
    return changes


def _check_drift(drift: DriftSpec) -> None:
    for name, spec in drift.features.items():
        if name not in NUMERIC:
            raise ConfigError(f"drift on {name!r}: shift/scale drift applies to numeric columns {list(NUMERIC)}")
        if len(spec) != 2 or not spec[1] > 0:
            raise ConfigError(f"drift on {name!r}: expected (shift, scale) with scale > 0, got {spec!r}")
    for name, mix in drift.categories.items():
        if name not in CATEGORIES:
            raise ConfigError(f"category drift on {name!r}: categorical columns are {list(CATEGORIES)}")
        known = CATEGORIES[name][0][:3] if name == "plan" else CATEGORIES[name][0]
        for cat, w in mix.items():
            if cat not in known:
                raise ConfigError(
                    f"category drift on {name}: unknown category {cat!r}; known: {list(known)} "
                    "(a brand-new plan comes from the schema change 'new_category')"
                )
            if not w >= 0:
                raise ConfigError(f"category drift on {name}.{cat}: weight must be >= 0, got {w!r}")
    if not isinstance(drift.from_day, int) or drift.from_day < 0:
        raise ConfigError(f"drift from_day must be a non-negative integer, got {drift.from_day!r}")


# -------------------------------------------------------------------------------------------- CLI parsing
_DRIFT_SYNTAX = "FEATURE:shift=NUMBER,scale=NUMBER (e.g. --drift monthly_charges:shift=20,scale=1.5)"
_MIX_SYNTAX = "COLUMN:CATEGORY=WEIGHT,... (e.g. --category-drift plan:premium=0.6,basic=0.2)"


def _pairs(text: str, what: str, syntax: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, raw = part.partition("=")
        try:
            if not sep or not key.strip():
                raise ValueError
            out[key.strip()] = float(raw)
        except ValueError:
            raise ConfigError(f"{what} {text!r}: cannot read {part!r}; expected {syntax}") from None
    return out


def parse_drift(text: str) -> tuple[str, tuple[float, float]]:
    """Parse one `FEATURE:shift=S,scale=K` option (either key may be left out: shift 0, scale 1)."""
    feature, sep, rest = text.partition(":")
    if not sep or not re.fullmatch(r"[A-Za-z_]\w*", feature.strip()):
        raise ConfigError(f"--drift {text!r}: expected {_DRIFT_SYNTAX}")
    pairs = _pairs(rest, "--drift", _DRIFT_SYNTAX)
    extra = sorted(set(pairs) - {"shift", "scale"})
    if extra or not pairs:
        raise ConfigError(f"--drift {text!r}: keys are shift and scale; expected {_DRIFT_SYNTAX}")
    return feature.strip(), (pairs.get("shift", 0.0), pairs.get("scale", 1.0))


def parse_drift_option(values: Iterable[str]) -> dict[str, tuple[float, float]]:
    """Parse repeated `--drift` options into `{feature: (shift, scale)}` for `DriftSpec.features`."""
    out: dict[str, tuple[float, float]] = {}
    for text in values:
        feature, spec = parse_drift(text)
        if feature in out:
            raise ConfigError(f"--drift names {feature!r} twice; give one shift/scale per feature")
        out[feature] = spec
    return out


def parse_category_mix_option(values: Iterable[str]) -> dict[str, dict[str, float]]:
    """Parse repeated `COLUMN:CATEGORY=WEIGHT,...` options into `DriftSpec.categories`."""
    out: dict[str, dict[str, float]] = {}
    for text in values:
        column, sep, rest = text.partition(":")
        pairs = _pairs(rest, "category drift", _MIX_SYNTAX)
        if not sep or not column.strip() or not pairs:
            raise ConfigError(f"category drift {text!r}: expected {_MIX_SYNTAX}")
        out.setdefault(column.strip(), {}).update(pairs)
    return out


def parse_null_pct(text: str) -> float | dict[str, float]:
    """Parse `--null-pct`: a percent for every feature (`2`) or per column (`usage_gb=5,plan=1`)."""
    syntax = "PERCENT or COLUMN=PERCENT,... (e.g. --null-pct 2 or --null-pct usage_gb=5,plan=1)"
    if "=" in text:
        return _pairs(text, "--null-pct", syntax)
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--null-pct {text!r}: expected {syntax}") from None
