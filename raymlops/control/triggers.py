"""Retraining triggers as one pure policy: ``evaluate_triggers(ctx, state, now) -> (events, new_state)``.

Kinds: ``on_demand`` (request ids, each honoured once), ``schedule`` (a cron expression in UTC, or every
``interval_s``), ``new_data`` (files or partitions not seen at the last run), ``drift`` (the monitor's drift
results on live inputs) and ``degradation`` (online quality worse than ``min_quality``, or worse than the
champion's offline figure by more than ``max_drop_vs_offline``). A sixth kind, ``retry``, is not evaluated here:
the controller's state machine makes it when data that validation blocked may now pass.

Cool-down: after a trigger fires, automatic triggers wait ``cooldown_s``. Their conditions are not consumed while
they wait (new files stay unseen, a due schedule stays due), so each fires once when the cool-down ends; an
on-demand request is never cooled down, and automatic triggers that are pending at that moment fire with it (one
run serves them all). De-duplication: drift fires once per reference (the version it is measured against) until
the drift clears, degradation once per champion version until quality recovers, a schedule once however many
periods were missed. Queueing behind a run in flight is the controller state's job (``raymlops.control.state``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from croniter import croniter

from raymlops.core.drift import DriftResult
from raymlops.core.metrics import metric_direction
from raymlops.errors import ConfigError

__all__ = [
    "KINDS",
    "REQUESTED_KINDS",
    "QualitySignal",
    "TriggerContext",
    "TriggerEvent",
    "TriggerPolicy",
    "TriggerState",
    "evaluate_triggers",
    "next_cron",
]

KINDS = ("on_demand", "schedule", "new_data", "drift", "degradation", "retry")
# Requests rather than conditions: an operator's, or the controller's retry of data that validation blocked
# (``raymlops.control.blocking``). Only these start a run while data is blocked; the others are held.
REQUESTED_KINDS = ("on_demand", "retry")
# Handled on-demand request ids kept for de-duplication: far more than can be pending between two polls.
_MAX_REQUESTS = 200


@dataclass(frozen=True)
class TriggerPolicy:
    """The trigger rules (``TriggersConfig`` plus the labels needed before judging online quality)."""

    new_data: bool = True
    schedule_cron: str | None = None
    interval_s: float | None = None
    on_drift: bool = True
    min_quality: float | None = None
    max_drop_vs_offline: float | None = None
    cooldown_s: float = 300.0
    min_labels: int = 50

    def __post_init__(self) -> None:
        if self.schedule_cron is not None and not croniter.is_valid(self.schedule_cron):
            raise ConfigError(f"triggers.schedule_cron {self.schedule_cron!r} is not a cron expression; write "
                              "five fields, e.g. '0 3 * * *' (03:00 UTC daily)")
        if self.interval_s is not None and self.interval_s <= 0:
            raise ConfigError(f"triggers.interval_s is {self.interval_s}; give a positive number of seconds, "
                              "or null")
        if self.cooldown_s < 0:
            raise ConfigError(f"triggers.cooldown_s is {self.cooldown_s}; give 0 or more seconds")

    @classmethod
    def from_config(cls, section: Any, min_labels: int = 50) -> TriggerPolicy:
        """From a ``TriggersConfig`` (duck-typed: the config module is not imported)."""
        return cls(section.new_data, section.schedule_cron, section.interval_s, section.on_drift,
                   section.degradation.min_quality, section.degradation.max_drop_vs_offline, section.cooldown_s,
                   min_labels)


@dataclass(frozen=True)
class QualitySignal:
    """Online quality of the serving champion from joined feedback, and its offline (evaluation) figure."""

    version: str
    metric: str
    online: float | None
    labels: int
    offline: float | None = None


@dataclass(frozen=True)
class TriggerContext:
    """What the shell observed this tick. ``None`` means "not observed": that trigger is not judged."""

    policy: TriggerPolicy
    on_demand: Sequence[str] = ()  # request ids from `raymlops trigger` / the Python API
    files: frozenset[str] | None = None  # files or partitions listed under the landing URI now
    drift: Sequence[DriftResult] | None = None
    drift_reference: str = ""  # what the drift was measured against, e.g. the champion version
    quality: QualitySignal | None = None


@dataclass
class TriggerEvent:
    """One fired trigger with its reason; ``key`` identifies it for idempotency."""

    kind: str
    reason: str
    at: float
    key: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown trigger kind {self.kind!r}; expected one of {KINDS}")
        self.key = self.key or f"{self.kind}@{self.at!r}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TriggerEvent:
        return cls(**d)


@dataclass
class TriggerState:
    """Trigger bookkeeping. ``seen_files`` None: no listing yet (the first one is the baseline, it fires
    nothing; the shell may seed it with the files of the last run)."""

    last_fired_at: float | None = None
    cron_anchor: float | None = None
    interval_anchor: float | None = None
    seen_files: list[str] | None = None
    drift_episode: str | None = None
    degradation_episode: str | None = None
    handled_requests: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TriggerState:
        seen = d.get("seen_files")
        return cls(**{**d, "seen_files": None if seen is None else list(seen),
                      "handled_requests": list(d.get("handled_requests", []))})


def next_cron(expr: str, after: float) -> float:
    """The first time (epoch seconds) strictly after ``after`` that the cron expression names, in UTC."""
    return float(croniter(expr, dt.datetime.fromtimestamp(after, dt.timezone.utc)).get_next(float))


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")


def _degraded(p: TriggerPolicy, q: QualitySignal) -> list[str]:
    better = metric_direction(q.metric) == "max"
    word = "below" if better else "above"
    out = []
    if p.min_quality is not None and (q.online < p.min_quality if better else q.online > p.min_quality):
        out.append(f"online {q.metric} {q.online:.4g} is {word} min_quality {p.min_quality:g}")
    if p.max_drop_vs_offline is not None and q.offline is not None:
        drop = (q.offline - q.online) if better else (q.online - q.offline)
        if drop > p.max_drop_vs_offline:
            out.append(f"online {q.metric} {q.online:.4g} is {drop:.4g} worse than the offline {q.offline:.4g} "
                       f"(max_drop_vs_offline {p.max_drop_vs_offline:g})")
    return out


def _automatic(ctx: TriggerContext, s: TriggerState, now: float) -> list[tuple[str, str, dict[str, Any]]]:
    # (kind, reason, bookkeeping): the bookkeeping is stored only if the trigger fires, so that a trigger held
    # back by the cool-down stays pending.
    p, out = ctx.policy, []
    if p.schedule_cron and s.cron_anchor is not None and (due := next_cron(p.schedule_cron, s.cron_anchor)) <= now:
        out.append(("schedule", f"cron '{p.schedule_cron}' was due at {_iso(due)}", {"cron_anchor": now}))
    if p.interval_s and s.interval_anchor is not None and now - s.interval_anchor >= p.interval_s:
        out.append(("schedule", f"interval_s={p.interval_s:g} elapsed since {_iso(s.interval_anchor)}",
                    {"interval_anchor": now}))
    if p.new_data and ctx.files is not None and s.seen_files is not None:
        new = sorted(ctx.files - set(s.seen_files))
        if new:
            shown = ", ".join(new[:3]) + (f" and {len(new) - 3} more" if len(new) > 3 else "")
            out.append(("new_data", f"{len(new)} new file(s) landed: {shown}", {"seen_files": sorted(ctx.files)}))
    drifted = [r for r in ctx.drift or () if r.drifted]
    if p.on_drift and drifted and s.drift_episode != ctx.drift_reference:
        shown = ", ".join(f"{r.feature} ({r.metric} {r.value:.3g} > {r.threshold:g})" for r in drifted[:5])
        out.append(("drift", f"live inputs drifted from reference {ctx.drift_reference or '?'}: {shown}",
                    {"drift_episode": ctx.drift_reference}))
    q = ctx.quality
    if q is not None and q.online is not None and q.labels >= p.min_labels:
        reasons = _degraded(p, q)
        if reasons and s.degradation_episode != q.version:
            out.append(("degradation", f"champion {q.version} on {q.labels} labels: " + "; ".join(reasons),
                        {"degradation_episode": q.version}))
    return out


def evaluate_triggers(ctx: TriggerContext, state: TriggerState, now: float) -> tuple[list[TriggerEvent],
                                                                                       TriggerState]:
    """The triggers that fire at ``now`` (at most one per kind) and the new bookkeeping; ``state`` is unchanged."""
    p = ctx.policy
    s = replace(state, seen_files=None if state.seen_files is None else list(state.seen_files),
                handled_requests=list(state.handled_requests))
    # Anchors and baselines start at the first observation, so starting a controller fires nothing by itself.
    if p.schedule_cron and s.cron_anchor is None:
        s.cron_anchor = now
    if p.interval_s and s.interval_anchor is None:
        s.interval_anchor = now
    if ctx.files is not None and s.seen_files is None:
        s.seen_files = sorted(ctx.files)
    # A cleared condition ends its episode, so the next drift or degradation fires again.
    if ctx.drift is not None and not any(r.drifted for r in ctx.drift):
        s.drift_episode = None
    q = ctx.quality
    if q is not None and q.online is not None and q.labels >= p.min_labels and not _degraded(p, q):
        s.degradation_episode = None

    events: list[TriggerEvent] = []
    fresh = [r for r in dict.fromkeys(ctx.on_demand) if r not in s.handled_requests]
    if fresh:
        events.append(TriggerEvent("on_demand", f"requested ({', '.join(fresh)})", now))
        s.handled_requests = (s.handled_requests + fresh)[-_MAX_REQUESTS:]
    cooling = s.last_fired_at is not None and now - s.last_fired_at < p.cooldown_s
    if events or not cooling:
        fired: dict[str, list[str]] = {}
        for kind, reason, updates in _automatic(ctx, s, now):
            fired.setdefault(kind, []).append(reason)
            for name, value in updates.items():
                setattr(s, name, value)
        events += [TriggerEvent(kind, "; ".join(reasons), now) for kind, reasons in fired.items()]
    if events:
        s.last_fired_at = now
    return events, s
