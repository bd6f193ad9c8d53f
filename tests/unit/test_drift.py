"""Drift metrics agree with scipy and with direct numpy computations on the raw values."""

import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

from raymlops.core.drift import PSI_EPSILON, feature_drift, js_distance, ks_statistic, linf, numeric_bins, psi
from raymlops.core.sketches import NumericSketch, profile_table, reference_edges
from raymlops.errors import ConfigError

counts = st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=30)


@settings(max_examples=50, deadline=None)
@given(data=st.data(), p=counts)
def test_js_distance_matches_scipy_base_2(data, p):
    q = data.draw(st.lists(st.integers(min_value=0, max_value=1000), min_size=len(p), max_size=len(p)))
    if sum(p) == 0 or sum(q) == 0:
        assert math.isnan(js_distance(p, q))
        return
    assert js_distance(p, q) == pytest.approx(jensenshannon(p, q, base=2), abs=1e-12)


def _direct_psi(ref: np.ndarray, cur: np.ndarray, edges: list[float]) -> float:
    inner = np.asarray(edges[1:-1])
    p = np.bincount(np.searchsorted(inner, ref, side="left"), minlength=len(edges) - 1) / ref.size
    q = np.bincount(np.searchsorted(inner, cur, side="left"), minlength=len(edges) - 1) / cur.size
    p, q = np.maximum(p, PSI_EPSILON), np.maximum(q, PSI_EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


@pytest.mark.parametrize("shift", [0.0, 0.3, 1.5])
def test_psi_with_exact_histograms_matches_numpy_on_raw_values(shift):
    rng = np.random.default_rng(7)
    ref, cur = rng.normal(10, 2, 20_000), rng.normal(10 + shift, 2.5, 15_000)
    edges = reference_edges(profile_table(pa.table({"x": ref})), 10)
    rp = profile_table(pa.table({"x": ref}), edges=edges)
    cp = profile_table(pa.table({"x": cur}), edges=edges)
    result = feature_drift("x", rp, cp, "psi", 0.2)
    assert result.value == pytest.approx(_direct_psi(ref, cur, edges["x"]), abs=1e-6)
    assert result.drifted == (result.value > 0.2)


def test_psi_on_a_reference_without_histogram_uses_the_sketch_consistently():
    rng = np.random.default_rng(8)
    ref, cur = rng.lognormal(2, 0.5, 20_000), rng.lognormal(2.2, 0.5, 20_000)
    rp = profile_table(pa.table({"x": ref}))
    edges = reference_edges(rp, 10)
    cp = profile_table(pa.table({"x": cur}), edges=edges)
    approx = feature_drift("x", rp, cp, "psi", 0.2).value
    assert approx == pytest.approx(_direct_psi(ref, cur, edges["x"]), abs=1e-3)


def test_psi_basics():
    assert psi([1, 2, 3], [2, 4, 6]) == 0.0
    assert psi([10, 0], [5, 5]) > 0.2  # an empty reference bin is finite thanks to the epsilon
    assert math.isfinite(psi([10, 0], [0, 10]))


@pytest.mark.parametrize(
    "make",
    [
        lambda r: (r.normal(0, 1, 10_000), r.normal(0.1, 1, 10_000)),
        lambda r: (r.normal(50, 10, 10_000), r.normal(50, 14, 10_000)),
        lambda r: (r.lognormal(1, 1, 10_000), r.lognormal(1.3, 0.8, 10_000)),
        lambda r: (r.normal(0, 1, 10_000), r.normal(0, 1, 10_000)),
        lambda r: (r.poisson(2, 10_000).astype(float), r.poisson(2.4, 10_000).astype(float)),
        lambda r: (r.uniform(-5, 5, 10_000), r.uniform(-4, 6, 10_000)),
    ],
)
def test_ks_statistic_matches_scipy(make):
    a, b = make(np.random.default_rng(9))
    est = ks_statistic(NumericSketch.from_values(a), NumericSketch.from_values(b))
    assert est == pytest.approx(ks_2samp(a, b).statistic, abs=0.02)


def test_ks_of_an_empty_side_is_nan():
    assert math.isnan(ks_statistic(NumericSketch(), NumericSketch.from_values(np.arange(3.0))))


def test_linf_over_the_union_of_categories():
    assert linf({"a": 50, "b": 50}, {"a": 25, "b": 25, "c": 50}) == pytest.approx(0.5)
    assert linf({"a": 1}, {"a": 7}) == 0.0
    assert linf({}, {}) == 0.0


def _cat(values):
    return profile_table(pa.table({"c": pa.array(values, pa.string())}))


def test_feature_drift_on_categories():
    ref = _cat(["a"] * 50 + ["b"] * 50)
    cur = _cat(["a"] * 80 + ["b"] * 10 + ["new"] * 10)
    r = feature_drift("c", ref, cur, "linf", 0.1)
    assert r.value == pytest.approx(0.4) and r.drifted
    js = feature_drift("c", ref, cur, "js", 0.1)
    assert js.value == pytest.approx(jensenshannon([50, 50, 0], [80, 10, 10], base=2))
    assert feature_drift("c", ref, ref, "psi", 0.1).value == 0.0
    with pytest.raises(ConfigError, match="'c'.*ks"):
        feature_drift("c", ref, cur, "ks", 0.1)


def test_feature_drift_on_numbers_with_every_metric():
    rng = np.random.default_rng(10)
    ref = profile_table(pa.table({"x": rng.normal(0, 1, 5000)}))
    same = profile_table(pa.table({"x": rng.normal(0, 1, 5000)}))
    moved = profile_table(pa.table({"x": rng.normal(1, 1, 5000)}))
    for metric, threshold in [("psi", 0.2), ("js", 0.1), ("ks", 0.1), ("linf", 0.1)]:
        assert not feature_drift("x", ref, same, metric, threshold).drifted, metric
        assert feature_drift("x", ref, moved, metric, threshold).drifted, metric
    edges, p, q = numeric_bins(ref.features["x"].sketch, moved.features["x"].sketch)
    assert len(edges) == 11 and p.sum() == pytest.approx(5000) and q.sum() == pytest.approx(5000)


def test_feature_drift_that_cannot_be_computed_has_no_value():
    ref = profile_table(pa.table({"x": [1.0, 2.0]}))
    empty = profile_table(pa.table({"x": pa.array([None, None], pa.float64())}))
    r = feature_drift("x", ref, empty, "psi", 0.2)
    assert r.value is None and not r.drifted and "no non-null values" in r.note
    assert feature_drift("y", ref, ref, "psi", 0.2).value is None
    with pytest.raises(ConfigError, match="unknown metric"):
        feature_drift("x", ref, ref, "wasserstein", 0.2)
