"""Split assignment: deterministic per row, independent of batching, fractions, stratification, time order."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raymlops.core.splits import (
    SPLITS,
    SplitPlan,
    SplitSpec,
    assign_split,
    fixed_plan,
    merge_histograms,
    plan_split,
    row_hash,
    split_histogram,
    time_bounds,
    unit_hash,
)
from raymlops.errors import ConfigError, DataError

KEYS = ("customer_id", "event_ts")


def churn_table(n: int, seed: int = 0, positive_rate: float = 0.2) -> pa.Table:
    rng = np.random.default_rng(seed)
    ts = 1_700_000_000_000_000 + rng.integers(0, 30 * 86_400_000_000, n)
    return pa.table({
        "customer_id": [f"C{i:07d}" for i in rng.permutation(10 * n)[:n]],
        "event_ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "region": rng.choice(["north", "south", "east", "west"], n),
        "churned": (rng.random(n) < positive_rate).astype(np.int64),
    })


def random_slices(table: pa.Table, cuts: list[int]) -> list[pa.Table]:
    bounds = [0, *sorted({c % (table.num_rows + 1) for c in cuts}), table.num_rows]
    return [table.slice(a, b - a) for a, b in zip(bounds, bounds[1:], strict=False)]


def fitted(spec: SplitSpec, parts: list[pa.Table]) -> SplitPlan:
    bounds = None
    if spec.method == "time":
        b = [time_bounds(p, spec.timestamp) for p in parts if p.num_rows]
        bounds = (min(x[0] for x in b), max(x[1] for x in b))
    return plan_split(spec, merge_histograms(split_histogram(p, spec, bounds) for p in parts), bounds)


# ------------------------------------------------------------------------------------------------ hashing
def test_row_hash_golden_values_pin_the_split_across_versions():
    t = pa.table({
        "id": ["C000001", "", None, "héllo"],
        "ts": pa.array([0, 1_700_000_000_000_000, None, -5], pa.timestamp("us", tz="UTC")),
        "x": [1.5, -0.0, None, float("nan")],
    })
    assert row_hash(t, ["id", "ts"], 42).tolist() == [
        829311736214159612, 5897584910687700829, 6787859936013521011, 17077858262552844231]
    assert row_hash(t, ["x"], 7).tolist() == [
        16419063633248130107, 15545593218372052554, 12598896921556420472, 9017245470477283752]


def test_row_hash_ignores_physical_layout():
    t = churn_table(500)
    whole = row_hash(t, KEYS, 42)
    chunked = pa.Table.from_batches(t.to_batches(max_chunksize=37))
    assert chunked.column(0).num_chunks > 1
    assert np.array_equal(row_hash(chunked, KEYS, 42), whole)
    as_large = t.set_column(0, "customer_id", t["customer_id"].cast(pa.large_string()))
    as_dict = t.set_column(0, "customer_id", t["customer_id"].dictionary_encode())
    assert np.array_equal(row_hash(as_large, KEYS, 42), whole)
    assert np.array_equal(row_hash(as_dict, KEYS, 42), whole)
    ints = pa.table({"k": pa.array([1, 2, 3], pa.int32())})
    assert np.array_equal(row_hash(ints, ["k"], 1), row_hash(ints.cast(pa.schema([("k", pa.int64())])), ["k"], 1))


def test_row_hash_distinguishes_values_and_seeds():
    t = pa.table({"k": ["ab", "ba", "", None, "a", "aa"]})
    h = row_hash(t, ["k"], 1)
    assert len(set(h.tolist())) == 6  # order of bytes, empty vs null, length all matter
    assert not np.array_equal(h, row_hash(t, ["k"], 2))
    u = unit_hash(churn_table(20_000), KEYS, 3)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert np.all(np.abs(np.histogram(u, bins=10, range=(0, 1))[0] / 20_000 - 0.1) < 0.01)


@pytest.mark.parametrize("values", [
    pa.array([0, 1, None], pa.int32()).view(pa.date32()),
    pa.array([1, 2, None], pa.time32("s")),
    pa.array([1, 2, None], pa.uint8()),
    pa.array([True, False, None]),
    pa.array(["1.50", "2", None]).cast(pa.decimal128(5, 2)),
    pa.array(["a", "b", None], pa.string_view()),
    pa.array([b"a", b"b", None], pa.binary()),
], ids=lambda a: str(a.type))
def test_every_plain_key_type_hashes_distinctly(values):
    h = row_hash(pa.table({"k": values}), ["k"], 0)
    assert h.dtype == np.uint64 and len(set(h.tolist())) == 3


def test_unhashable_or_missing_key_column_names_the_column():
    t = pa.table({"tags": pa.array([[1], [2]], pa.list_(pa.int64()))})
    with pytest.raises(DataError, match="'tags'"):
        row_hash(t, ["tags"], 0)
    with pytest.raises(DataError, match="'customer_id'"):
        row_hash(t, ["customer_id"], 0)


# ------------------------------------------------------------------------------------------------- random
@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(0, 3000), max_size=12), stratify=st.booleans())
def test_assignment_does_not_depend_on_batching(cuts, stratify):
    t = churn_table(3000, seed=1)
    spec = SplitSpec(key_columns=KEYS, stratify_by="churned" if stratify else None)
    parts = random_slices(t, cuts)
    plan_whole, plan_parts = fitted(spec, [t]), fitted(spec, parts)
    assert plan_whole == plan_parts  # merging block histograms in any grouping gives the same cuts
    per_batch = np.concatenate([assign_split(p, plan_parts) for p in parts])
    assert np.array_equal(per_batch, assign_split(t, plan_whole))


def test_random_fractions_within_tolerance():
    t = churn_table(40_000, seed=2)
    spec = SplitSpec(validation_frac=0.1, test_frac=0.2, key_columns=KEYS)
    shares = np.bincount(assign_split(t, fixed_plan(spec)), minlength=3) / t.num_rows
    assert np.allclose(shares, [0.7, 0.1, 0.2], atol=0.01)
    assert SPLITS == ("train", "validation", "test")


def test_unstratified_split_is_stable_when_data_grows():
    old, new = churn_table(5000, seed=3), churn_table(5000, seed=4)
    plan = fixed_plan(SplitSpec(key_columns=KEYS))
    grown = pa.concat_tables([old, new])
    assert np.array_equal(assign_split(grown, plan)[: old.num_rows], assign_split(old, plan))


def test_stratification_keeps_label_rates_and_per_class_fractions():
    t = churn_table(20_000, seed=5, positive_rate=0.05)
    spec = SplitSpec(key_columns=KEYS, stratify_by="churned")
    codes = assign_split(t, fitted(spec, random_slices(t, [1234, 9876, 15000])))
    y = t["churned"].to_numpy()
    rates = [y[codes == s].mean() for s in range(3)]
    assert max(rates) - min(rates) < 0.002  # hashing alone would give ~±0.005 on the 3000-row splits
    for cls in (0, 1):
        shares = np.bincount(codes[y == cls], minlength=3) / (y == cls).sum()
        assert np.allclose(shares, [0.7, 0.15, 0.15], atol=0.003)


def test_stratified_split_of_tiny_classes_still_reaches_train():
    t = pa.table({"id": [f"r{i}" for i in range(40)], "y": ["a"] * 36 + ["b"] * 3 + ["c"]})
    spec = SplitSpec(key_columns=("id",), stratify_by="y")
    codes = assign_split(t, fitted(spec, [t]))
    y = np.array(t["y"].to_pylist())
    assert (codes[y == "b"] == 0).sum() >= 2 and (codes[y == "c"] == 0).all()
    assert np.bincount(codes[y == "a"], minlength=3).tolist() == [25, 6, 5]


def test_rows_with_an_unplanned_or_null_class_use_nominal_cuts():
    t = churn_table(2000, seed=6)
    spec = SplitSpec(key_columns=KEYS, stratify_by="churned")
    plan = fitted(spec, [t])
    other = t.set_column(3, "churned", pa.array([None] * 1000 + [7] * 1000, pa.int64()))
    nominal = assign_split(other, fixed_plan(spec))
    assert np.array_equal(assign_split(other, plan), nominal)


def test_split_plan_round_trips_through_dict():
    t = churn_table(3000, seed=7)
    plan = fitted(SplitSpec(key_columns=KEYS, stratify_by="churned"), [t])
    assert SplitPlan.from_dict(plan.to_dict()) == plan


# --------------------------------------------------------------------------------------------------- time
def test_time_split_orders_oldest_to_newest():
    t = churn_table(10_000, seed=8)
    spec = SplitSpec(method="time", timestamp="event_ts")
    codes = assign_split(t, fitted(spec, random_slices(t, [100, 5000, 7777])))
    ts = t["event_ts"].cast(pa.int64()).to_numpy()
    assert ts[codes == 0].max() < ts[codes == 1].min() <= ts[codes == 1].max() < ts[codes == 2].min()
    assert np.allclose(np.bincount(codes) / t.num_rows, [0.7, 0.15, 0.15], atol=0.01)


def test_time_split_keeps_equal_timestamps_together():
    days = np.repeat(np.arange(10), 100) * 86_400_000_000
    t = pa.table({"event_ts": pa.array(days, pa.timestamp("us"))})
    codes = assign_split(t, fitted(SplitSpec(method="time", timestamp="event_ts"), [t]))
    for day in range(10):
        assert len(set(codes[day * 100 : (day + 1) * 100].tolist())) == 1
    # 850 rows before the test cut is a tie between 800 and 900: the cut nearest the nominal one wins.
    assert np.bincount(codes).tolist() == [700, 100, 200]


def test_time_split_refuses_null_or_constant_or_text_time():
    spec = SplitSpec(method="time", timestamp="ts")
    with_null = pa.table({"ts": pa.array([1, None, 3], pa.timestamp("us"))})
    plan = SplitPlan(spec, (2.0, 2.5))
    with pytest.raises(DataError, match="null 'ts'"):
        assign_split(with_null, plan)
    constant = pa.table({"ts": pa.array([5, 5, 5], pa.timestamp("us"))})
    with pytest.raises(DataError, match="same 'ts'"):
        fitted(spec, [constant])
    with pytest.raises(DataError, match="'ts' has type string"):
        assign_split(pa.table({"ts": ["2024-01-01"]}), plan)


def test_time_split_accepts_dates_and_numbers():
    for arr in (pa.array(np.arange(100, dtype=np.int32)).view(pa.date32()), pa.array(np.arange(100.0))):
        t = pa.table({"ts": arr})
        codes = assign_split(t, fitted(SplitSpec(method="time", timestamp="ts"), [t]))
        assert np.bincount(codes).tolist() == [70, 15, 15]
        assert np.all(np.diff(codes) >= 0)


# ------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("kwargs", [
    {"validation_frac": 0.5, "test_frac": 0.5, "key_columns": ("id",)},
    {"validation_frac": -0.1, "key_columns": ("id",)},
    {"method": "time"},
    {"method": "random"},
    {"method": "hash", "key_columns": ("id",)},
])
def test_spec_rejects_unusable_settings(kwargs):
    with pytest.raises(ConfigError, match="data"):
        SplitSpec(**kwargs)


def test_core_modules_stay_pure():
    code = ("import sys, raymlops.core.splits, raymlops.core.transform; "
            "bad = [m for m in ('ray', 'mlflow', 'torch', 'pydantic', 'raymlops.config') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
