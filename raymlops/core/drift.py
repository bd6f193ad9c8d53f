"""Drift metrics between a reference and a current profile.

``psi`` and ``js_distance`` compare binned masses: categories for categorical features, the reference's quantile
bins for numeric ones. ``ks_statistic`` compares the numeric sketches' CDFs directly; ``linf`` compares category
frequencies. ``feature_drift`` picks the inputs for one feature and applies a rule (metric, threshold).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from raymlops.core.sketches import CategoricalSketch, DatasetProfile, NumericSketch, numeric_edges
from raymlops.errors import ConfigError

__all__ = [
    "METRICS",
    "PSI_EPSILON",
    "DriftResult",
    "feature_drift",
    "js_distance",
    "ks_statistic",
    "linf",
    "numeric_bins",
    "psi",
]

METRICS = ("psi", "js", "ks", "linf")
# Bin shares below this are raised to it before PSI's log ratio, so an empty bin adds a large but finite term
# (a common convention; 1e-4 keeps one empty bin of ten from dominating a 0.2 threshold on its own).
PSI_EPSILON = 1e-4


def _shares(x: Any) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    total = a.sum()
    return a / total if total > 0 else a


def psi(p: Any, q: Any) -> float:
    """Population stability index of current ``q`` against reference ``p`` (counts or shares on the same bins).

    Shares are normalised, then floored at ``PSI_EPSILON``: ``sum((q - p) * ln(q / p))``.
    """
    p, q = np.maximum(_shares(p), PSI_EPSILON), np.maximum(_shares(q), PSI_EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(p: Any, q: Any) -> float:
    """Jensen-Shannon distance in base 2 (in [0, 1]), as ``scipy.spatial.distance.jensenshannon(p, q, base=2)``.

    NaN when either side holds no mass.
    """
    p, q = _shares(p), _shares(q)
    if p.sum() == 0 or q.sum() == 0:
        return math.nan
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return math.sqrt(max(0.0, (kl(p) + kl(q)) / 2))


def ks_statistic(ref: NumericSketch, cur: NumericSketch) -> float:
    """Two-sample Kolmogorov-Smirnov statistic estimated from the sketches' CDFs (NaN when either is empty)."""
    if not ref.count or not cur.count:
        return math.nan
    # Both CDFs are piecewise linear between their bucket bounds, so the supremum is at one of those points.
    points = [ref.min, ref.max, cur.min, cur.max]
    for s in (ref, cur):
        lo, hi, _, _ = s.buckets()
        points.extend(np.clip(lo, s.min, s.max).tolist())
        points.extend(np.clip(hi, s.min, s.max).tolist())
    x = np.unique(np.asarray(points, dtype=np.float64))
    return float(np.max(np.abs(ref.cdf(x) - cur.cdf(x))))


def linf(p_counts: dict[str, float], q_counts: dict[str, float]) -> float:
    """Largest absolute difference of normalised frequencies over the union of categories."""
    keys = sorted(set(p_counts) | set(q_counts))
    if not keys:
        return 0.0
    p = _shares([p_counts.get(k, 0) for k in keys])
    q = _shares([q_counts.get(k, 0) for k in keys])
    return float(np.max(np.abs(p - q)))


def numeric_bins(ref: NumericSketch, cur: NumericSketch, bins: int = 10) -> tuple[list[float], np.ndarray, np.ndarray]:
    """(edges, reference counts, current counts) on the reference's bins.

    Exact histograms are used when both sketches hold one on the same edges; otherwise both sides are read from
    their sketches, so the two are estimated the same way and no bias comes from mixing. The bins are the
    reference's edges, else the current's (profiled on edges taken from the reference), else ``bins`` quantile
    bins of the reference.
    """
    if ref.hist is not None and cur.hist is not None and ref.edges == cur.edges:
        return list(ref.edges), np.asarray(ref.hist, dtype=np.float64), np.asarray(cur.hist, dtype=np.float64)
    edges = ref.edges or cur.edges or numeric_edges(ref, bins)
    if edges is None:
        raise ValueError("the reference sketch holds no finite value; there are no bins to compare on")
    return list(edges), ref.histogram(edges), cur.histogram(edges)


@dataclass
class DriftResult:
    """Drift of one feature under one rule; ``value`` is None (with a ``note``) when it cannot be computed."""

    feature: str
    metric: str
    value: float | None
    threshold: float
    drifted: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DriftResult:
        value = d.get("value")
        return cls(
            feature=str(d["feature"]),
            metric=str(d["metric"]),
            value=None if value is None else float(value),
            threshold=float(d["threshold"]),
            drifted=bool(d["drifted"]),
            note=str(d.get("note", "")),
        )


def _not_computed(name: str, metric: str, threshold: float, note: str) -> DriftResult:
    return DriftResult(name, metric, None, threshold, False, note)


def feature_drift(
    name: str,
    ref_profile: DatasetProfile,
    cur_profile: DatasetProfile,
    metric: str,
    threshold: float,
    bins: int = 10,
) -> DriftResult:
    """Drift of feature ``name`` from the reference to the current profile; drifted when value > threshold.

    Numeric features: ``ks`` on the sketches, ``psi``/``js``/``linf`` on the reference's quantile bins.
    Categorical features: ``psi``/``js``/``linf`` on category counts (``ks`` is a ConfigError).
    """
    if metric not in METRICS:
        raise ConfigError(f"drift rule for '{name}': unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    ref, cur = ref_profile.features.get(name), cur_profile.features.get(name)
    if ref is None or cur is None:
        side = "reference" if ref is None else "current data"
        return _not_computed(name, metric, threshold, f"not profiled in the {side}")
    if ref.kind != cur.kind:
        return _not_computed(name, metric, threshold, f"{ref.kind} in the reference, {cur.kind} now")
    if not ref.sketch.count or not cur.sketch.count:
        side = "reference" if not ref.sketch.count else "current data"
        return _not_computed(name, metric, threshold, f"no non-null values in the {side}")

    if isinstance(ref.sketch, CategoricalSketch):
        if metric == "ks":
            raise ConfigError(f"drift rule for '{name}': 'ks' needs a numeric feature; use linf, psi or js")
        p_counts, q_counts = ref.sketch.counts, cur.sketch.counts
        keys = sorted(set(p_counts) | set(q_counts))
        p = np.array([p_counts.get(k, 0) for k in keys], dtype=np.float64)
        q = np.array([q_counts.get(k, 0) for k in keys], dtype=np.float64)
    elif metric == "ks":
        value = ks_statistic(ref.sketch, cur.sketch)
        return DriftResult(name, metric, value, threshold, value > threshold)
    else:
        _, p, q = numeric_bins(ref.sketch, cur.sketch, bins)

    if metric == "psi":
        value = psi(p, q)
    elif metric == "js":
        value = js_distance(p, q)
    else:
        value = linf({str(i): v for i, v in enumerate(p)}, {str(i): v for i, v in enumerate(q)})
    return DriftResult(name, metric, value, threshold, value > threshold)
