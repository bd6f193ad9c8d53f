"""Model validation ("blessing"): a pure decision over evaluation results, the live champion's and an infra check.

A challenger is blessed only when no gate fails:

* ``primary_metric``: the primary metric on the test split clears an absolute bar (direction-aware: a minimum for
  scores, a maximum for losses and errors);
* ``vs_baseline``: it beats the naive baseline (training prior / majority class, or training mean) on the test
  split by more than ``min_delta_vs_baseline``: a model no better than ignoring every feature is refused, ties
  included;
* ``vs_champion``: it beats the champion, evaluated on the *same* test set, by at least ``min_delta_vs_champion``;
* ``slice <column>=<value>``: no slice is worse than the champion's same slice by more than ``max_slice_drop``
  (slices under ``min_slice_rows`` test rows are reported and skipped);
* ``package_loads``, ``package_predicts``, ``package_size``, ``load_memory``: the package loads in a fresh process,
  predicts with the expected output shape and fits the size and memory limits.

Gates fail closed: a metric that is missing or undefined blocks the challenger rather than waving it through.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from raymlops.core.metrics import EvalResult, metric_direction, metrics_for_task, naive_name
from raymlops.errors import ConfigError

__all__ = ["BlessingDecision", "Gate", "GatePolicy", "bless"]

Verdict = Literal["pass", "fail", "skip"]
# Metric differences are computed in floating point; a margin this small is equality, not a regression.
_TOL = 1e-12


@dataclass(frozen=True)
class GatePolicy:
    """Thresholds of the blessing gates (the ``evaluation`` config section)."""

    primary_metric: str = "roc_auc"
    min_primary: float | None = 0.6
    min_delta_vs_champion: float = 0.0
    max_slice_drop: float = 0.05
    min_slice_rows: int = 50
    max_package_mb: float = 200.0
    max_load_memory_mb: float = 2048.0
    min_delta_vs_baseline: float | None = 0.0

    def __post_init__(self) -> None:
        try:
            metric_direction(self.primary_metric)
        except ValueError as err:
            raise ConfigError(f"evaluation.primary_metric: {err}") from None

    @classmethod
    def from_config(cls, evaluation: Any) -> GatePolicy:
        """Policy from an object with the same attribute names (``Config.evaluation``)."""
        return cls(**{name: getattr(evaluation, name) for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Gate:
    """One check: what was observed, against which threshold, the verdict and a sentence saying why."""

    name: str
    observed: float | None
    threshold: float | None
    verdict: Verdict
    reason: str


@dataclass(frozen=True)
class BlessingDecision:
    """The outcome of ``bless``: blessed only when no gate failed."""

    blessed: bool
    gates: list[Gate] = field(default_factory=list)
    primary_metric: str = ""

    @property
    def failed(self) -> list[Gate]:
        return [g for g in self.gates if g.verdict == "fail"]

    def summary(self) -> str:
        """One line when blessed; otherwise one line per failed gate with its margin."""
        counts = {v: sum(g.verdict == v for g in self.gates) for v in ("pass", "fail", "skip")}
        tally = f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped"
        if self.blessed:
            return f"BLESSED ({tally})"
        lines = [f"NOT BLESSED ({tally}):"]
        lines += [f"  - {g.name}: {g.reason}" for g in self.failed]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (``nan`` becomes ``None``)."""

        def clean(x: float | None) -> float | None:
            return None if x is None or math.isnan(x) else float(x)

        gates = [{**asdict(g), "observed": clean(g.observed), "threshold": clean(g.threshold)} for g in self.gates]
        return {"blessed": self.blessed, "primary_metric": self.primary_metric, "gates": gates}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BlessingDecision:
        """Inverse of ``to_dict``."""
        return cls(
            blessed=bool(d["blessed"]),
            gates=[Gate(**g) for g in d.get("gates", [])],
            primary_metric=d.get("primary_metric", ""),
        )


def _f(x: float) -> str:
    return f"{x:.4f}"


def _as_result(r: EvalResult | Mapping[str, Any]) -> EvalResult:
    return r if isinstance(r, EvalResult) else EvalResult.from_dict(r)


def _primary_gate(ch: EvalResult, p: GatePolicy) -> Gate:
    m, name = p.primary_metric, "primary_metric"
    value = ch.metric(m)
    if math.isnan(value):
        why = ch.notes.get(f"{ch.slice_split}.{m}", "missing or undefined")
        return Gate(name, None, p.min_primary, "fail", f"{m} on {ch.slice_split} is not available: {why}")
    if p.min_primary is None:
        return Gate(name, value, None, "skip", f"{m} = {_f(value)}; no absolute threshold configured")
    if metric_direction(m) == "max":
        ok, bound, word = value >= p.min_primary - _TOL, "minimum", "below"
    else:
        ok, bound, word = value <= p.min_primary + _TOL, "maximum", "above"
    margin = abs(value - p.min_primary)
    if ok:
        return Gate(name, value, p.min_primary, "pass", f"{m} {_f(value)} meets the {bound} {_f(p.min_primary)}")
    return Gate(
        name, value, p.min_primary, "fail",
        f"{m} {_f(value)} is {word} the {bound} {_f(p.min_primary)} by {_f(margin)}",
    )


def _gain(m: str, challenger: float, champion: float) -> float:
    """How much better the challenger is (positive = better), whatever the metric's direction."""
    return challenger - champion if metric_direction(m) == "max" else champion - challenger


def _baseline_gate(ch: EvalResult, p: GatePolicy) -> Gate:
    m, name, delta = p.primary_metric, "vs_baseline", p.min_delta_vs_baseline
    if delta is None:
        return Gate(name, None, None, "skip", "disabled (evaluation.min_delta_vs_baseline is null)")
    if not ch.baseline:
        return Gate(name, None, delta, "skip", "no naive baseline was recorded (no training split evaluated)")
    a, b = ch.metric(m), ch.baseline.get(m, math.nan)
    if math.isnan(a) or math.isnan(b):
        who = "the model's" if math.isnan(a) else "the naive baseline's"
        return Gate(name, None, delta, "skip", f"{who} {m} is undefined on {ch.slice_split}")
    gain = _gain(m, a, b)
    facts = (f"{m} {_f(a)} vs naive baseline ({naive_name(ch.task)}) {_f(b)} on {ch.slice_split}: "
             f"improvement {gain:+.4f}")
    # Strictly more than the delta: a model that only ties ignoring the features has learned nothing.
    if gain > delta + _TOL:
        return Gate(name, gain, delta, "pass", f"{facts}, more than the required {_f(delta)}")
    return Gate(name, gain, delta, "fail",
                f"{facts} is not more than the required {_f(delta)}: the model does not beat the naive baseline")


def _champion_gate(ch: EvalResult, champ: EvalResult | None, p: GatePolicy) -> Gate:
    m, name = p.primary_metric, "vs_champion"
    if champ is None:
        return Gate(name, None, p.min_delta_vs_champion, "skip", "no champion yet")
    if ch.test_fingerprint and champ.test_fingerprint and ch.test_fingerprint != champ.test_fingerprint:
        return Gate(
            name, None, p.min_delta_vs_champion, "fail",
            f"the champion was evaluated on a different test set (fingerprint {champ.test_fingerprint} vs "
            f"{ch.test_fingerprint}); evaluate it on the challenger's test split (evaluate_champion_on)",
        )
    a, b = ch.metric(m), champ.metric(m)
    if math.isnan(a):
        return Gate(name, None, p.min_delta_vs_champion, "fail", f"challenger {m} is not available on test")
    if math.isnan(b):
        why = champ.notes.get(f"{champ.slice_split}.{m}", "missing or undefined")
        return Gate(name, None, p.min_delta_vs_champion, "skip", f"champion {m} is not available: {why}")
    gain = _gain(m, a, b)
    facts = f"{m} {_f(a)} vs champion {_f(b)} on the same test set: improvement {gain:+.4f}"
    if gain >= p.min_delta_vs_champion - _TOL:
        return Gate(name, gain, p.min_delta_vs_champion, "pass", f"{facts}, required {_f(p.min_delta_vs_champion)}")
    short = p.min_delta_vs_champion - gain
    return Gate(
        name, gain, p.min_delta_vs_champion, "fail",
        f"{facts} is short of the required {_f(p.min_delta_vs_champion)} by {_f(short)}",
    )


def _slice_gates(ch: EvalResult, champ: EvalResult | None, p: GatePolicy) -> list[Gate]:
    m = p.primary_metric
    if not ch.slices:
        return []
    if champ is None:
        return [Gate("slices", None, p.max_slice_drop, "skip", "no champion yet")]
    gates = []
    for column in sorted(ch.slices):
        for value in sorted(ch.slices[column]):
            name = f"slice {column}={value}"
            cur = ch.slices[column][value]
            rows = int(cur.get("rows", 0))
            base = champ.slices.get(column, {}).get(value)
            a = cur.get(m, math.nan)
            if rows < p.min_slice_rows:
                why = f"only {rows} test rows (< min_slice_rows {p.min_slice_rows}); reported, not gated"
                gates.append(Gate(name, None, p.max_slice_drop, "skip", why))
            elif base is None:
                gates.append(Gate(name, None, p.max_slice_drop, "skip", "the champion has no rows in this slice"))
            elif math.isnan(a) or math.isnan(b := base.get(m, math.nan)):
                why = f"{m} is undefined on this slice (e.g. a single class in its {rows} rows)"
                gates.append(Gate(name, None, p.max_slice_drop, "skip", why))
            else:
                drop = -_gain(m, a, b)
                facts = f"{m} {_f(a)} vs champion {_f(b)} on {rows} rows: drop {drop:+.4f}"
                if drop <= p.max_slice_drop + _TOL:
                    gates.append(Gate(name, drop, p.max_slice_drop, "pass", f"{facts}, limit {_f(p.max_slice_drop)}"))
                else:
                    over = f"over the limit {_f(p.max_slice_drop)} by {_f(drop - p.max_slice_drop)}"
                    gates.append(Gate(name, drop, p.max_slice_drop, "fail", f"{facts} is {over}"))
    return gates


def _infra_gates(infra: Mapping[str, Any] | None, p: GatePolicy) -> list[Gate]:
    names = ("package_loads", "package_predicts", "package_size", "load_memory")
    if infra is None:
        return [Gate(n, None, None, "skip", "infrastructure check not run") for n in names]
    error = infra.get("error") or "no error reported"
    loaded = bool(infra.get("loaded"))
    gates = [
        Gate("package_loads", infra.get("load_time_s"), None, "pass",
             f"the package loads in a fresh process in {infra.get('load_time_s')} s")
        if loaded
        else Gate("package_loads", None, None, "fail", f"the package does not load in a fresh process: {error}")
    ]
    if not loaded:
        gates.append(Gate("package_predicts", None, None, "skip", "the package did not load"))
    elif infra.get("predict_ok") and infra.get("output_shape_ok"):
        gates.append(Gate("package_predicts", None, None, "pass", "predicts on sample rows with the expected shape"))
    else:
        what = "has the wrong output shape" if infra.get("predict_ok") else "fails to predict on sample rows"
        gates.append(Gate("package_predicts", None, None, "fail", f"the package {what}: {error}"))
    for name, key, limit in (
        ("package_size", "package_mb", p.max_package_mb),
        ("load_memory", "peak_memory_mb", p.max_load_memory_mb),
    ):
        value = infra.get(key)
        if value is None:
            gates.append(Gate(name, None, limit, "skip", f"{key} was not measured"))
        elif value <= limit:
            gates.append(Gate(name, float(value), limit, "pass", f"{value:.1f} MB within the limit {limit:.1f} MB"))
        else:
            why = f"{value:.1f} MB is over the limit {limit:.1f} MB by {value - limit:.1f} MB"
            gates.append(Gate(name, float(value), limit, "fail", why))
    return gates


def bless(
    challenger: EvalResult | Mapping[str, Any],
    champion: EvalResult | Mapping[str, Any] | None,
    infra: Mapping[str, Any] | None,
    policy: GatePolicy,
) -> BlessingDecision:
    """Decide whether the challenger may replace the champion.

    ``challenger``/``champion``: ``EvalResult`` (or its ``to_dict()``), the champion's evaluated on the
    challenger's test split; ``None`` when there is no champion yet (only absolute gates apply). ``infra``: the dict
    of ``check_package_in_fresh_process``; ``None`` skips the infrastructure gates.
    """
    ch = _as_result(challenger)
    champ = None if champion is None else _as_result(champion)
    if policy.primary_metric not in metrics_for_task(ch.task):
        raise ConfigError(
            f"evaluation.primary_metric {policy.primary_metric!r} is not computed for task {ch.task!r}; "
            f"use one of {list(metrics_for_task(ch.task))}"
        )
    gates = [
        _primary_gate(ch, policy),
        _baseline_gate(ch, policy),
        _champion_gate(ch, champ, policy),
        *_slice_gates(ch, champ, policy),
        *_infra_gates(infra, policy),
    ]
    return BlessingDecision(
        blessed=not any(g.verdict == "fail" for g in gates), gates=gates, primary_metric=policy.primary_metric
    )
