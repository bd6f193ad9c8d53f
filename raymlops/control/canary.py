"""Canary analysis: per-version window statistics from the prediction log, and a pure policy that judges a canary
against the champion and says whether to hold, advance, promote, roll back or wait for approval.

The clock is injected: every function takes ``now`` (epoch seconds) and nothing reads the time. The rollout's
progress lives in ``RolloutState``; ``analyze`` returns a ``Decision`` and the next ``RolloutState``, which is
``apply_decision(state, decision)``, so the controller can replay a persisted decision and land on the same state.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymlops.core.drift import psi
from raymlops.core.metrics import compute_metrics, metric_direction, metrics_for_task
from raymlops.core.outputs import score_field
from raymlops.errors import ConfigError

__all__ = [
    "ACTIVE_PHASES",
    "PHASES",
    "CanaryPolicy",
    "Check",
    "Decision",
    "RolloutState",
    "WindowStats",
    "analysis_due",
    "analyze",
    "apply_decision",
    "prediction_shift",
    "window_stats",
]

PHASES = ("idle", "canary", "awaiting_approval", "promoting", "rolling_back")
ACTIVE_PHASES = ("canary", "awaiting_approval")  # phases in which analysis runs
ACTIONS = ("hold", "advance", "promote", "rollback", "wait_approval")
PASS, FAIL, INSUFFICIENT, SKIPPED = "pass", "fail", "insufficient", "skipped"
_TS = pa.timestamp("us", tz="UTC")
# Ten equal probability bins: fixed, so two versions' histograms always share their bins.
_BINARY_CUTS = tuple(i / 10 for i in range(1, 10))
# A champion p99 of 0 ms cannot happen with real timers; the floor only keeps the ratio finite (and JSON-safe).
_P99_FLOOR_MS = 1e-3


# ------------------------------------------------------------------------------------------------ policy
@dataclass(frozen=True)
class CanaryPolicy:
    """The canary rules (the fields of ``CanaryConfig``). Percent weights in ``steps`` rise strictly."""

    steps: tuple[float, ...] = (5.0, 10.0, 25.0, 50.0, 100.0)
    interval_s: float = 60.0
    min_requests: int = 100
    min_labels: int = 50
    min_label_keys: int = 5  # distinct routing keys behind the labels (a few clients must not decide the rollout)
    max_error_rate_pct: float = 1.0
    max_p99_ratio: float = 1.5
    max_quality_drop: float = 0.02
    max_prediction_psi: float = 0.25
    failure_limit: int = 2
    require_approval: bool = False

    def __post_init__(self) -> None:
        steps = tuple(float(s) for s in self.steps)
        object.__setattr__(self, "steps", steps)
        rising = all(b > a for a, b in zip(steps, steps[1:], strict=False))
        if not steps or not rising or any(not 0 < s <= 100 for s in steps):
            raise ConfigError(f"canary.steps {list(steps)}: give a strictly rising list of percents in (0, 100]")
        if (self.interval_s <= 0 or self.failure_limit < 1 or self.min_requests < 1 or self.min_labels < 1
                or self.min_label_keys < 1):
            raise ConfigError("canary.interval_s, failure_limit, min_requests, min_labels and min_label_keys must "
                              "be positive")

    @classmethod
    def from_config(cls, section: Any) -> CanaryPolicy:
        """From a ``CanaryConfig`` (or anything with its attributes); the config module is not imported."""
        return cls(**{name: getattr(section, name) for name in cls.__dataclass_fields__})


# ------------------------------------------------------------------------------------------ window stats
@dataclass
class WindowStats:
    """What one version did in one window: requests, errors, p99 latency (ms, ok requests), prediction
    histogram on fixed bins, joined labels and the quality metric on them (None when undefined or no labels).
    ``label_keys``: distinct routing keys of the labelled rows (requests without a key count as one key); None when
    not measured (then ``min_label_keys`` is not applied)."""

    version: str
    requests: int
    errors: int
    p99_ms: float | None
    prediction_hist: list[int]
    labels: int
    quality: float | None
    metric: str
    label_keys: int | None = None

    @property
    def error_rate_pct(self) -> float:
        return 100.0 * self.errors / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WindowStats:
        return cls(**{**d, "prediction_hist": list(d["prediction_hist"])})


def _window(table: pa.Table, version: str, start: float, end: float, roles: Sequence[str]) -> pa.Table:
    if table.num_rows == 0:
        return table
    ts = pc.cast(table.column("ts"), _TS)
    lo, hi = (pa.scalar(round(t * 1_000_000), _TS) for t in (start, end))
    mask = pc.and_(
        pc.and_(pc.equal(table.column("model_version"), version), pc.is_in(table.column("role"), pa.array(roles))),
        pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi)),
    )
    return table.filter(mask)


def _outputs(texts: list[str | None]) -> list[dict[str, Any] | None]:
    out = []
    for text in texts:
        try:
            doc = json.loads(text) if text else None
        except ValueError:
            doc = None  # an unreadable row is left out of the histogram and quality rather than failing them
        out.append(doc if isinstance(doc, dict) else None)
    return out


def _hist(task: str, outputs: list[dict[str, Any] | None], classes: Sequence[Any] | None,
          edges: Sequence[float] | None) -> list[int]:
    if task == "binary":
        cuts, key = (_BINARY_CUTS if edges is None else tuple(edges)), "probability"
    elif task == "regression":
        if edges is None:
            return []  # no natural fixed bins for a regression output: the PSI check is skipped
        cuts, key = tuple(edges), "value"
    else:
        probs = [o["probabilities"] for o in outputs if o and isinstance(o.get("probabilities"), list)]
        n = len(classes) if classes is not None else (len(probs[0]) if probs else 0)
        picks = [int(np.argmax(p)) for p in probs if len(p) == n]
        return np.bincount(np.asarray(picks, dtype=np.int64), minlength=n).tolist() if n else []
    values = np.asarray([o[key] for o in outputs if o and isinstance(o.get(key), int | float)], dtype=np.float64)
    values = values[np.isfinite(values)]
    idx = np.searchsorted(np.asarray(cuts, dtype=np.float64), values, side="right")
    return np.bincount(idx, minlength=len(cuts) + 1).tolist()


def _quality(task: str, metric: str, joined: pa.Table, classes: Sequence[Any] | None) -> tuple[int, float | None]:
    ys, scores = [], []
    key = score_field(task)
    labels = joined.column("label").to_pylist()
    for y, out in zip(labels, _outputs(joined.column("outputs").to_pylist()), strict=True):
        if y is not None and out is not None and out.get(key) is not None:
            ys.append(y)
            scores.append(out[key])
    if not ys:
        return 0, None
    # The logged "label" holds class values; leaving it out lets compute_metrics derive the predicted index
    # from the scores with the model's own rule (p >= 0.5, argmax).
    value = compute_metrics(task, np.asarray(ys), {key: np.asarray(scores, dtype=np.float64)}, classes)[metric]
    return len(ys), (None if math.isnan(value) else float(value))


def window_stats(
    predictions: pa.Table,
    feedback_joined: pa.Table,
    version: str,
    start: float,
    end: float,
    quality_metric: str,
    task: str,
    *,
    classes: Sequence[Any] | None = None,
    prediction_edges: Sequence[float] | None = None,
    labels_since: float | None = None,
    roles: Sequence[str] = ("primary",),
) -> WindowStats:
    """Statistics of ``version`` over predictions logged in ``[start, end)`` (epoch seconds).

    ``predictions`` has the prediction log's columns (``raymlops.serve.predlog.PREDICTION_SCHEMA``);
    ``feedback_joined`` is ``join_feedback(predictions, feedback)``. Requests are distinct request ids (a request
    with any ``error`` row is an error); p99 is over ok requests. The histogram bins are fixed: ten probability
    bins (binary), one per class (multiclass, ``classes`` gives their number), or ``prediction_edges`` as inner
    cut points with open tails (regression; without them the histogram is empty). Labels are counted on joined
    rows whose prediction falls in ``[labels_since or start, end)``: labels arrive late, so the shell may look
    further back for them. ``classes`` maps label values to indices (as ``compute_metrics``). Raises
    ``ConfigError`` for a metric the task does not compute.
    """
    if quality_metric not in metrics_for_task(task):
        raise ConfigError(f"quality metric {quality_metric!r} is not computed for task {task!r}; use one of "
                          f"{list(metrics_for_task(task))}")
    version, roles = str(version), list(roles)
    rows = _window(predictions, version, start, end, roles)
    failed = pc.fill_null(pc.equal(rows.column("status"), "error"), False)  # no status logged: it was served
    requests = pc.count_distinct(rows.column("request_id")).as_py()
    errors = pc.count_distinct(rows.filter(failed).column("request_id")).as_py()
    ok = rows.filter(pc.invert(failed))
    p99 = None
    if ok.num_rows:
        per_request = ok.group_by("request_id", use_threads=False).aggregate([("latency_ms", "max")])
        lat = per_request.column("latency_ms_max").to_numpy(zero_copy_only=False).astype(np.float64)
        lat = lat[np.isfinite(lat)]
        p99 = float(np.quantile(lat, 0.99)) if lat.size else None
    hist = _hist(task, _outputs(ok.column("outputs").to_pylist()), classes, prediction_edges)
    joined = _window(feedback_joined, version, start if labels_since is None else labels_since, end, roles)
    joined = joined.filter(pc.invert(pc.fill_null(pc.equal(joined.column("status"), "error"), False)))
    labels, quality = _quality(task, quality_metric, joined, classes)
    return WindowStats(version, int(requests), int(errors), p99, hist, labels, quality, quality_metric,
                       _label_keys(joined))


def _label_keys(joined: pa.Table) -> int | None:
    """Distinct routing keys among labelled rows; a null key (no X-Routing-Key) is one key, not a free pass."""
    if "routing_key" not in joined.column_names:
        return None
    labelled = joined.filter(pc.is_valid(joined.column("label"))) if "label" in joined.column_names else joined
    return int(pc.count_distinct(labelled.column("routing_key"), mode="all").as_py()) if labelled.num_rows else 0


# ----------------------------------------------------------------------------------------- rollout state
@dataclass
class RolloutState:
    """Where a rollout stands. ``weight`` is the canary's percent; the champion has the rest."""

    phase: str = "idle"
    canary_version: str | None = None
    champion_version: str | None = None
    steps: list[float] = field(default_factory=list)
    step_index: int = 0
    weight: float = 0.0
    failures: int = 0
    started_at: float | None = None
    last_change_at: float | None = None
    last_analysis_at: float | None = None
    hold_on: list[str] = field(default_factory=list)  # what the last hold waited for (logged once per change)

    @classmethod
    def start(cls, canary: str, champion: str, steps: Sequence[float], now: float) -> RolloutState:
        """A canary at the first step; the rollout keeps these steps even if the config changes meanwhile."""
        steps = [float(s) for s in steps]
        return cls("canary", str(canary), str(champion), steps, 0, steps[0], 0, now, now, None, [])

    @property
    def window_start(self) -> float:
        """Start of the window the next analysis judges: the last step change or the last judged window."""
        marks = [t for t in (self.last_change_at, self.last_analysis_at) if t is not None]
        return max(marks) if marks else -math.inf

    def weights(self) -> dict[str, float]:
        """The traffic split this phase calls for (percent per version; empty with nothing to serve)."""
        if self.phase == "promoting" and self.canary_version is not None:
            return {self.canary_version: 100.0}
        if self.champion_version is None:
            return {}
        if self.phase in ACTIVE_PHASES and self.canary_version is not None:
            return {self.champion_version: 100.0 - self.weight, self.canary_version: self.weight}
        return {self.champion_version: 100.0}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RolloutState:
        return cls(**{**d, "steps": list(d["steps"]), "hold_on": list(d["hold_on"])})


# -------------------------------------------------------------------------------------------- decisions
@dataclass
class Check:
    """One comparison: ``observed`` against ``threshold`` on ``samples`` (needs ``min_samples``)."""

    name: str
    observed: float | None
    threshold: float
    verdict: str  # pass | fail | insufficient | skipped
    samples: int
    min_samples: int
    note: str = ""

    def describe(self) -> str:
        if self.verdict == INSUFFICIENT:
            return f"{self.name}: {self.note}"
        shown = "n/a" if self.observed is None else f"{self.observed:.4g}"
        return f"{self.name} {shown} (limit {self.threshold:g}) {self.verdict}"


@dataclass
class Decision:
    """The outcome of one analysis. ``weight`` is the canary's weight after it; ``failed`` marks a hold that
    counted a failed check; ``hold_on`` names what a data hold waits for (``interval``: not due yet)."""

    action: str
    reason: str
    version: str | None
    step_index: int
    weight: float
    at: float
    window_start: float | None = None
    checks: list[Check] = field(default_factory=list)
    failed: bool = False
    hold_on: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["window_start"] is not None and not math.isfinite(d["window_start"]):
            d["window_start"] = None  # keep the state strict JSON
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Decision:
        return cls(**{**d, "checks": [Check(**c) for c in d["checks"]], "hold_on": list(d["hold_on"])})


def _check(name: str, observed: float | None, threshold: float, samples: int, minimum: int, what: str,
           note: str = "") -> Check:
    if samples < minimum:
        return Check(name, observed, threshold, INSUFFICIENT, samples, minimum,
                     f"{samples} {what} of {minimum} needed")
    if observed is None:
        return Check(name, None, threshold, INSUFFICIENT, samples, minimum, note or "not computable yet")
    return Check(name, observed, threshold, PASS if observed <= threshold else FAIL, samples, minimum, note)


def prediction_shift(reference: Sequence[int], current: Sequence[int]) -> tuple[float, float]:
    """PSI between two windows' prediction histograms, less what sampling noise alone gives: (shift, noise).

    Two samples of one distribution have a PSI of about ``(k - 1) * (1/n1 + 1/n2)`` over ``k`` occupied bins
    (PSI is the symmetric KL divergence, whose sample value is chi-square-like): 0.18 for two windows of 100
    requests in ten bins, close to the usual 0.25 limit. Judging the raw value would fail healthy canaries on
    small windows, so the check judges the excess. Half a count per bin keeps an empty bin on one side finite.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    k = int(np.count_nonzero(ref + cur))
    noise = (k - 1) * (1.0 / max(ref.sum(), 1.0) + 1.0 / max(cur.sum(), 1.0)) if k > 1 else 0.0
    return max(0.0, psi(ref + 0.5, cur + 0.5) - noise), noise


def _checks(p: CanaryPolicy, canary: WindowStats, champion: WindowStats) -> list[Check]:
    both = min(canary.requests, champion.requests)
    checks = [_check("error_rate_pct", canary.error_rate_pct, p.max_error_rate_pct, canary.requests,
                     p.min_requests, "canary requests (min_requests)",
                     f"champion {champion.error_rate_pct:.3g}%")]
    ratio = None
    if canary.p99_ms is not None and champion.p99_ms is not None:
        ratio = canary.p99_ms / max(champion.p99_ms, _P99_FLOOR_MS)
    checks.append(_check("p99_ratio", ratio, p.max_p99_ratio, both, p.min_requests,
                         "requests on the smaller side (min_requests)"))
    a, b = canary.prediction_hist, champion.prediction_hist
    if not a or len(a) != len(b):
        checks.append(Check("prediction_psi", None, p.max_prediction_psi, SKIPPED, 0, p.min_requests,
                            "no common fixed bins for the predictions (regression needs prediction_edges)"))
    else:
        n = min(sum(a), sum(b))
        shift, noise = prediction_shift(b, a) if n else (None, 0.0)
        checks.append(_check("prediction_psi", shift, p.max_prediction_psi, n, p.min_requests,
                             "predictions on the smaller side (min_requests)",
                             f"PSI beyond the {noise:.3g} that two samples of one distribution show by chance"))
    drop = None
    if canary.quality is not None and champion.quality is not None:
        sign = 1.0 if metric_direction(canary.metric) == "max" else -1.0
        drop = sign * (champion.quality - canary.quality)
    quality = _check("quality_drop", drop, p.max_quality_drop, min(canary.labels, champion.labels),
                     p.min_labels, "joined labels on the smaller side (min_labels)",
                     f"{canary.metric} undefined on the labels so far (e.g. one class only)")
    keys = [s.label_keys for s in (canary, champion) if s.label_keys is not None]
    if quality.verdict != INSUFFICIENT and keys and min(keys) < p.min_label_keys:
        # Labels from a handful of clients could force a rollback (or a promotion): wait for more of them.
        quality = Check("quality_drop", drop, p.max_quality_drop, INSUFFICIENT, min(keys), p.min_label_keys,
                        f"labels from {min(keys)} distinct routing keys on the smaller side of {p.min_label_keys} "
                        "needed (min_label_keys)")
    checks.append(quality)
    return checks


def analysis_due(policy: CanaryPolicy, state: RolloutState, now: float) -> bool:
    """Whether ``interval_s`` has passed since the window began (the shell can skip reading logs otherwise)."""
    return state.phase in ACTIVE_PHASES and now - state.window_start >= policy.interval_s


def analyze(policy: CanaryPolicy, state: RolloutState, canary: WindowStats, champion: WindowStats,
            now: float) -> tuple[Decision, RolloutState]:
    """Judge the canary's window against the champion's; returns the decision and the next rollout state.

    ``canary`` is ``window_stats`` over ``[state.window_start, now)``. So is ``champion``, except that a step of
    100% leaves the champion no traffic: then give its stats since ``state.started_at`` (or its last window).

    Every check has a minimum sample count. A failed check counts a failure (``failure_limit`` of them roll
    back); otherwise any check short of data holds (never promotes); all passing advances to the next step,
    promotes after the last one, or waits for approval (``require_approval``). Nothing is judged before
    ``interval_s`` has passed since the last step change or judged window (a ``hold`` on ``interval``).
    """
    if state.phase not in ACTIVE_PHASES:
        return Decision("hold", f"no canary to analyse (phase {state.phase})", state.canary_version,
                        state.step_index, state.weight, now, hold_on=["phase"]), state
    if (str(canary.version), str(champion.version)) != (state.canary_version, state.champion_version):
        raise ValueError(f"stats for {canary.version} vs {champion.version} given for the rollout of "
                         f"{state.canary_version} vs {state.champion_version}")
    base = dict(version=state.canary_version, step_index=state.step_index, at=now, window_start=state.window_start)
    if not analysis_due(policy, state, now):
        due = state.window_start + policy.interval_s
        return Decision("hold", f"next analysis at {due:.3f} (interval_s={policy.interval_s:g})",
                        weight=state.weight, hold_on=["interval"], **base), state
    checks = _checks(policy, canary, champion)
    failed = [c for c in checks if c.verdict == FAIL]
    short = [c for c in checks if c.verdict == INSUFFICIENT]
    last = state.step_index + 1 >= len(state.steps)
    if failed:
        n = state.failures + 1
        what = "; ".join(c.describe() for c in failed)
        if n >= policy.failure_limit:
            decision = Decision("rollback", f"failed analysis {n} of failure_limit={policy.failure_limit}: {what}",
                                weight=0.0, checks=checks, failed=True, **base)
        else:
            decision = Decision("hold", f"failed analysis {n} of failure_limit={policy.failure_limit}: {what}",
                                weight=state.weight, checks=checks, failed=True, **base)
    elif short:
        decision = Decision("hold", "too little data: " + "; ".join(c.describe() for c in short),
                            weight=state.weight, checks=checks, hold_on=[c.name for c in short], **base)
    elif state.phase == "awaiting_approval" or (last and policy.require_approval):
        decision = Decision("wait_approval", f"all checks pass at {state.weight:g}%; waiting for approval",
                            weight=state.weight, checks=checks, **base)
    elif last:
        decision = Decision("promote", f"all checks pass at the last step ({state.weight:g}%)", weight=100.0,
                            checks=checks, **base)
    else:
        nxt = state.steps[state.step_index + 1]
        decision = Decision("advance", f"all checks pass at {state.weight:g}%; next step {nxt:g}%", weight=nxt,
                            checks=checks, **base)
    return decision, apply_decision(state, decision)


def apply_decision(state: RolloutState, decision: Decision) -> RolloutState:
    """The rollout state after ``decision`` (made for this state: same canary version and step)."""
    if state.phase not in ACTIVE_PHASES:
        return state
    if (decision.version, decision.step_index) != (state.canary_version, state.step_index):
        raise ValueError(f"decision for {decision.version} step {decision.step_index} does not match the rollout "
                         f"of {state.canary_version} at step {state.step_index}")
    at, action = decision.at, decision.action
    if action == "hold":
        if decision.failed:
            return replace(state, failures=state.failures + 1, last_analysis_at=at, hold_on=[])
        if decision.hold_on == ["interval"]:
            return state
        return replace(state, hold_on=list(decision.hold_on))
    if action == "advance":
        return replace(state, step_index=state.step_index + 1, weight=decision.weight, last_change_at=at,
                       last_analysis_at=at, hold_on=[])
    if action == "wait_approval":
        return replace(state, phase="awaiting_approval", last_analysis_at=at, hold_on=[])
    if action == "promote":
        return replace(state, phase="promoting", weight=100.0, last_change_at=at, hold_on=[])
    if action == "rollback":
        return replace(state, phase="rolling_back", weight=0.0, failures=state.failures + 1, last_change_at=at,
                       hold_on=[])
    raise ValueError(f"unknown decision action {action!r}; expected one of {ACTIONS}")
