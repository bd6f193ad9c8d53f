"""Mergeable sketches: merges are exact and order-independent, quantiles honour the stated accuracy."""

import json
import math

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raymlops.core.sketches import (
    RELATIVE_ACCURACY,
    CategoricalSketch,
    DatasetProfile,
    NumericSketch,
    as_category_strings,
    merge_profiles,
    numeric_edges,
    profile_table,
    reference_edges,
)
from raymlops.errors import DataError

values = st.lists(
    st.one_of(
        st.none(),
        st.floats(min_value=-1e9, max_value=1e9, allow_nan=False),
        st.integers(min_value=-1000, max_value=1000).map(float),
        st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1e-300]),
    ),
    max_size=200,
)


def _split(data: list, cuts: list[int]) -> list[list]:
    cuts = sorted(c % (len(data) + 1) for c in cuts)
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def _table(part: list) -> pa.Table:
    return pa.table({"x": pa.array(part, pa.float64()), "c": pa.array([None if v is None else str(v)[:3] for v in part], pa.string())})


def _close(a: float, b: float, scale: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9 * scale)


@settings(max_examples=60, deadline=None)
@given(data=values, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=5), order=st.randoms())
def test_merge_of_any_partition_in_any_order_gives_the_same_statistics(data, cuts, order):
    edges = [-10.0, -1.0, 0.0, 2.5, 100.0]
    parts = [profile_table(_table(p), edges={"x": edges}) for p in _split(data, cuts)]
    whole = profile_table(_table(data), edges={"x": edges})
    order.shuffle(parts)
    merged = merge_profiles(parts)

    assert merged.rows == whole.rows == len(data)
    a, b = merged.features["x"].sketch, whole.features["x"].sketch
    exact = ("count", "nulls", "nonfinite", "min", "max", "zeros", "positive", "negative", "edges", "hist")
    assert {k: getattr(a, k) for k in exact} == {k: getattr(b, k) for k in exact}
    finite = [v for v in data if v is not None and math.isfinite(v)]
    scale = max([v * v for v in finite], default=1.0) + 1.0
    assert _close(a.mean, b.mean, math.sqrt(scale))
    assert _close(a.m2 / max(a.count, 1), b.m2 / max(b.count, 1), scale)
    if finite:
        assert _close(a.mean, float(np.mean(finite)), math.sqrt(scale))
        assert _close(a.variance, float(np.var(finite)), scale)
    assert merged.features["c"].sketch == whole.features["c"].sketch


@settings(max_examples=30, deadline=None)
@given(data=values, cuts=st.lists(st.integers(min_value=0, max_value=10_000), min_size=2, max_size=2))
def test_merge_is_associative(data, cuts):
    a, b, c = (profile_table(_table(p)) for p in _split(data, cuts))
    left, right = a.merge(b).merge(c), a.merge(b.merge(c))
    sl, sr = left.features["x"].sketch, right.features["x"].sketch
    assert (sl.count, sl.min, sl.max, sl.positive, sl.negative, sl.zeros) == (
        sr.count, sr.min, sr.max, sr.positive, sr.negative, sr.zeros)
    assert left.features["c"] == right.features["c"]


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=300),
    q=st.floats(min_value=0.0, max_value=1.0),
)
def test_quantiles_are_within_the_stated_relative_accuracy(data, q):
    x = np.asarray(data)
    est = NumericSketch.from_values(x).quantile(q)
    lo, hi = np.quantile(x, q, method="lower"), np.quantile(x, q, method="higher")
    bound = RELATIVE_ACCURACY * max(abs(lo), abs(hi)) * (1 + 1e-9) + 1e-300
    assert abs(est - np.quantile(x, q)) <= bound


def test_quantiles_on_a_large_sample_match_numpy():
    x = np.random.default_rng(0).lognormal(3, 1, 100_000)
    s = NumericSketch.from_values(x)
    qs = np.linspace(0, 1, 21)
    np.testing.assert_allclose(s.quantiles(qs), np.quantile(x, qs), rtol=RELATIVE_ACCURACY)
    assert s.quantile(0) == x.min() and s.quantile(1) == x.max()


def test_cdf_is_close_to_the_empirical_cdf():
    x = np.random.default_rng(1).normal(0, 5, 20_000)
    s = NumericSketch.from_values(x)
    points = np.linspace(-15, 15, 61)
    empirical = np.searchsorted(np.sort(x), points, side="right") / x.size
    assert np.max(np.abs(s.cdf(points) - empirical)) < 0.01
    assert s.cdf([x.min() - 1])[0] == 0 and s.cdf([x.max()])[0] == 1


def test_profile_table_kinds_nulls_and_non_finite():
    t = pa.table({
        "f": pa.array([1.5, None, math.nan, math.inf, -2.0]),
        "i": pa.array([1, 2, 2, None, 7], pa.int64()),
        "b": pa.array([True, False, None, True, True]),
        "s": pa.array(["a", "b", None, "a", "a"]),
        "d": pa.array(["x", "y", "x", None, "x"]).dictionary_encode(),
        "code": pa.array([10, 20, 10, 10, None]),
        "ts": pa.array([0, 1, 2, 3, 4], pa.timestamp("ms", tz="UTC")),
        "id": pa.array(["u1", "u2", "u3", "u4", "u5"]),
        "tags": pa.array([[1], [2], [], None, [3]]),
    })
    p = profile_table(t, categorical={"code"}, skip={"id"})
    assert p.rows == 5
    f = p.features["f"].sketch
    assert (f.count, f.nulls, f.nonfinite, f.min, f.max, f.mean) == (2, 1, 2, -2.0, 1.5, -0.25)
    assert p.features["i"].kind == "numeric" and p.features["i"].dtype == "int64"
    assert p.features["b"].sketch == CategoricalSketch(4, 1, {"true": 3, "false": 1})
    assert p.features["s"].sketch.counts == {"a": 3, "b": 1}
    assert p.features["d"].sketch.counts == {"x": 3, "y": 1} and p.features["d"].kind == "categorical"
    assert p.features["code"].kind == "categorical" and p.features["code"].sketch.counts == {"10": 3, "20": 1}
    ts = p.features["ts"].sketch
    assert p.features["ts"].kind == "numeric" and (ts.min, ts.max) == (0.0, 4000.0)  # epoch microseconds
    assert p.skipped == {"id": "string", "tags": "list<item: int64>"}
    assert p.dtypes["id"] == "string" and p.dtypes["f"] == "double"


def test_category_strings_are_shared_with_the_profile():
    values = pa.array([1.0, 2.5, None, 1.0, 3.0])
    p = profile_table(pa.table({"v": values, "b": [True, False, None, True, True]}), categorical={"v"})
    assert set(p.features["v"].sketch.counts) == set(as_category_strings(values).drop_null().to_pylist())
    assert as_category_strings(pa.array([True, None])).to_pylist() == ["true", None]
    assert as_category_strings(pa.array(["x", "y"]).dictionary_encode()).to_pylist() == ["x", "y"]


def test_profile_accepts_polars_and_record_batches():
    df = pl.DataFrame({"x": [1.0, 2.0, 3.0], "s": ["a", "b", "a"]})
    from_polars = profile_table(df)
    from_batch = profile_table(df.to_arrow().to_batches()[0])
    assert from_polars == from_batch
    assert from_polars.features["s"].sketch.counts == {"a": 2, "b": 1}


def test_exact_histogram_and_out_of_range_counts():
    x = np.random.default_rng(2).normal(size=1000)
    edges = [-3.0, -1.0, 0.0, 1.0, 3.0]
    p = profile_table(pa.table({"x": x}), edges={"x": edges}, ranges={"x": (-1.5, None)})
    s = p.features["x"].sketch
    expected = np.bincount(np.searchsorted(edges[1:-1], x, side="left"), minlength=4)
    assert s.hist == expected.tolist()
    assert s.outside == int((x < -1.5).sum()) == s.count_outside(-1.5, None)
    assert s.count_outside(-100, 100) == 0  # min/max settle it exactly
    assert abs(s.count_outside(-1.0, 1.0) - int((np.abs(x) > 1).sum())) <= 0.02 * x.size


def test_bad_edges_and_duplicate_columns_raise_data_error():
    with pytest.raises(DataError, match="'x'"):
        profile_table(pa.table({"x": [1.0]}), edges={"x": [2.0, 1.0]})
    dup = pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["a", "a"])
    with pytest.raises(DataError, match="'a'"):
        profile_table(dup)


def test_profile_json_round_trip_is_exact():
    rng = np.random.default_rng(3)
    t = pa.table({"x": rng.normal(size=500), "i": rng.integers(-5, 5, 500), "s": rng.choice(["a", "b"], 500)})
    p = profile_table(t, edges={"x": [-1.0, 0.0, 1.0]}, ranges={"i": (-3, 3)}, skip={"s"})
    p = p.merge(profile_table(t))  # a merged profile, with dropped histograms, round-trips too
    doc = json.loads(json.dumps(p.to_dict()))
    back = DatasetProfile.from_dict(doc)
    assert back == p and back.to_dict() == doc
    assert all(isinstance(k, str) for k in doc["features"]["x"]["sketch"]["positive"])


def test_from_dict_rejects_other_formats():
    with pytest.raises(ValueError, match="format"):
        DatasetProfile.from_dict({"format": 99, "rows": 0, "features": {}})
    d = NumericSketch().to_dict() | {"relative_accuracy": 0.05}
    with pytest.raises(ValueError, match="relative_accuracy"):
        NumericSketch.from_dict(d)


def test_merge_counts_a_missing_column_as_null_and_widens_int_to_double():
    a = profile_table(pa.table({"x": [1, 2, 3], "y": ["a", "b", "c"]}))
    b = profile_table(pa.table({"x": [0.5, 1.5]}))
    m = merge_profiles([a, b])
    assert m.rows == 5
    assert m.features["x"].dtype == "double" and m.features["x"].sketch.count == 5
    assert m.features["y"].sketch.nulls == 2 and m.features["y"].sketch.count == 3
    assert merge_profiles([b, a]) == m
    assert merge_profiles([]) == DatasetProfile(rows=0, features={})


def test_merge_refuses_a_column_of_two_kinds():
    a = profile_table(pa.table({"x": [1, 2]}))
    b = profile_table(pa.table({"x": ["1", "2"]}))
    with pytest.raises(DataError, match="'x'"):
        a.merge(b)


def test_merge_keeps_histograms_only_on_equal_edges():
    t = pa.table({"x": [1.0, 2.0, 3.0]})
    same = profile_table(t, edges={"x": [0.0, 2.0, 4.0]}).merge(profile_table(t, edges={"x": [0.0, 2.0, 4.0]}))
    assert same.features["x"].sketch.hist == [4, 2]
    other = profile_table(t, edges={"x": [0.0, 2.0, 4.0]}).merge(profile_table(t, edges={"x": [0.0, 1.0, 4.0]}))
    assert other.features["x"].sketch.hist is None and other.features["x"].sketch.edges is None


def test_reference_edges_give_balanced_bins_and_sketch_histograms_match_exact_ones():
    x = np.random.default_rng(4).gamma(2.0, 10.0, 50_000)
    ref = profile_table(pa.table({"x": x}))
    edges = reference_edges(ref, 10)["x"]
    assert len(edges) == 11 and edges[0] == x.min() and edges[-1] == x.max()
    exact = profile_table(pa.table({"x": x}), edges={"x": edges}).features["x"].sketch.hist
    assert np.all(np.abs(np.asarray(exact) / x.size - 0.1) < 0.02)
    # Edges sit on bucket bounds, so the histogram read from the sketch is the exact one.
    np.testing.assert_allclose(ref.features["x"].sketch.histogram(edges), exact, atol=1e-6)


@pytest.mark.parametrize("ones_share", [0.05, 0.5, 0.95])
def test_reference_edges_separate_the_values_of_a_binary_column(ones_share):
    x = (np.random.default_rng(5).random(10_000) < ones_share).astype(np.int64)
    s = profile_table(pa.table({"x": x})).features["x"].sketch
    edges = numeric_edges(s, 10)
    bins = np.searchsorted(edges[1:-1], x, side="left")
    assert set(bins[x == 0]).isdisjoint(bins[x == 1])


def test_reference_edges_of_a_constant_column_split_off_the_constant():
    s = NumericSketch.from_values(np.full(100, 7.0))
    edges = numeric_edges(s, 10)
    inner = np.asarray(edges[1:-1])
    bins = np.searchsorted(inner, [6.9, 7.0, 7.2], side="left")
    assert len(set(bins.tolist())) == 3
    assert numeric_edges(NumericSketch(nulls=3), 10) is None
