"""Trigger policies with a fake clock: every kind, cool-down, de-duplication, bookkeeping round-trip."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raymlops.config import TriggersConfig
from raymlops.control.triggers import (
    QualitySignal,
    TriggerContext,
    TriggerEvent,
    TriggerPolicy,
    TriggerState,
    evaluate_triggers,
    next_cron,
)
from raymlops.core.drift import DriftResult
from raymlops.errors import ConfigError

T0 = dt.datetime(2024, 5, 1, 0, 0, tzinfo=dt.timezone.utc).timestamp()
QUIET = TriggerPolicy(new_data=False, on_drift=False, cooldown_s=0.0)


def ctx(policy=QUIET, **kw) -> TriggerContext:
    return TriggerContext(policy, **kw)


def fire(context, state, now):
    events, new = evaluate_triggers(context, state, now)
    return [e.kind for e in events], events, new


def drift(*features, reference="1"):
    results = [DriftResult(f, "psi", 0.5, 0.2, True) for f in features]
    results = results or [DriftResult("x", "psi", 0.01, 0.2, False)]
    return {"drift": results, "drift_reference": reference}


# ---------------------------------------------------------------------------------------------- policy
def test_policy_from_config_and_validation():
    cfg = TriggersConfig(schedule_cron="0 3 * * *", cooldown_s=10, degradation={"min_quality": 0.7})
    p = TriggerPolicy.from_config(cfg, min_labels=20)
    assert (p.schedule_cron, p.cooldown_s, p.min_quality, p.min_labels, p.new_data) == ("0 3 * * *", 10, 0.7,
                                                                                         20, True)
    with pytest.raises(ConfigError, match="schedule_cron"):
        TriggerPolicy(schedule_cron="every day at 3")
    with pytest.raises(ConfigError, match="interval_s"):
        TriggerPolicy(interval_s=0)


def test_nothing_fires_without_a_reason():
    kinds, _, state = fire(ctx(TriggerPolicy()), TriggerState(), T0)
    assert kinds == [] and state == TriggerState()


# ------------------------------------------------------------------------------------------- on demand
def test_on_demand_fires_once_per_request_and_ignores_cool_down():
    p = TriggerPolicy(new_data=False, on_drift=False, cooldown_s=3600)
    kinds, events, state = fire(ctx(p, on_demand=("a", "a", "b")), TriggerState(), T0)
    assert kinds == ["on_demand"] and "a, b" in events[0].reason and events[0].at == T0
    assert fire(ctx(p, on_demand=("a", "b")), state, T0 + 1)[0] == []  # the same requests, delivered again
    kinds, _, state = fire(ctx(p, on_demand=("c",)), state, T0 + 2)  # inside the cool-down: still honoured
    assert kinds == ["on_demand"] and state.last_fired_at == T0 + 2


# -------------------------------------------------------------------------------------------- schedule
def test_interval_schedule_anchors_at_start_then_fires_every_interval():
    p = TriggerPolicy(new_data=False, on_drift=False, interval_s=600, cooldown_s=0)
    kinds, _, state = fire(ctx(p), TriggerState(), T0)
    assert kinds == [] and state.interval_anchor == T0  # starting the controller fires nothing
    assert fire(ctx(p), state, T0 + 599)[0] == []
    kinds, events, state = fire(ctx(p), state, T0 + 600)
    assert kinds == ["schedule"] and "interval_s=600" in events[0].reason
    assert fire(ctx(p), state, T0 + 1199)[0] == []
    assert fire(ctx(p), state, T0 + 1200)[0] == ["schedule"]


def test_cron_schedule_fires_once_however_many_periods_were_missed():
    p = TriggerPolicy(new_data=False, on_drift=False, schedule_cron="0 3 * * *", cooldown_s=0)
    assert next_cron("0 3 * * *", T0) == T0 + 3 * 3600
    _, _, state = fire(ctx(p), TriggerState(), T0)
    assert fire(ctx(p), state, T0 + 3 * 3600 - 1)[0] == []
    kinds, events, state = fire(ctx(p), state, T0 + 3 * 86400)  # down for three days
    assert kinds == ["schedule"] and "2024-05-01T03:00:00+00:00" in events[0].reason
    assert fire(ctx(p), state, T0 + 3 * 86400 + 60)[0] == []
    assert fire(ctx(p), state, T0 + 4 * 86400 + 3 * 3600)[0] == ["schedule"]


# -------------------------------------------------------------------------------------------- new data
def test_new_data_fires_on_files_not_seen_before():
    p = TriggerPolicy(on_drift=False, cooldown_s=0)
    day1 = frozenset({"land/churn-2024-05-01.parquet"})
    kinds, _, state = fire(ctx(p, files=day1), TriggerState(), T0)
    assert kinds == [] and state.seen_files == sorted(day1)  # the first listing is the baseline
    assert fire(ctx(p, files=day1), state, T0 + 5)[0] == []
    day2 = day1 | {"land/churn-2024-05-02.parquet"}
    kinds, events, state = fire(ctx(p, files=day2), state, T0 + 10)
    assert kinds == ["new_data"] and "1 new file(s) landed: land/churn-2024-05-02.parquet" in events[0].reason
    assert fire(ctx(p, files=day2), state, T0 + 15)[0] == []
    assert fire(ctx(p, files=None), state, T0 + 20)[0] == []  # not listed this tick: nothing judged
    off = TriggerPolicy(new_data=False, on_drift=False, cooldown_s=0)
    assert fire(ctx(off, files=day2 | {"x"}), state, T0 + 25)[0] == []


def test_many_new_files_are_summarised():
    p = TriggerPolicy(on_drift=False, cooldown_s=0)
    state = TriggerState(seen_files=[])
    _, events, _ = fire(ctx(p, files=frozenset(f"f{i}" for i in range(7))), state, T0)
    assert events[0].reason == "7 new file(s) landed: f0, f1, f2 and 4 more"


# ------------------------------------------------------------------------------------------- cool-down
def test_cool_down_defers_automatic_triggers_without_consuming_them():
    p = TriggerPolicy(cooldown_s=300)
    state = TriggerState(seen_files=["a"], last_fired_at=T0)
    files = frozenset({"a", "b"})
    kinds, _, held = fire(ctx(p, files=files, **drift("x")), state, T0 + 100)
    assert kinds == [] and held.seen_files == ["a"] and held.drift_episode is None
    kinds, _, after = fire(ctx(p, files=files, **drift("x")), held, T0 + 300)
    assert kinds == ["new_data", "drift"] and after.seen_files == ["a", "b"] and after.last_fired_at == T0 + 300


def test_an_on_demand_run_takes_pending_automatic_triggers_along():
    p = TriggerPolicy(cooldown_s=300)
    state = TriggerState(seen_files=["a"], last_fired_at=T0)
    kinds, _, after = fire(ctx(p, files=frozenset({"a", "b"}), on_demand=("r1",)), state, T0 + 10)
    assert kinds == ["on_demand", "new_data"] and after.seen_files == ["a", "b"]


# ------------------------------------------------------------------------------------------------ drift
def test_drift_fires_once_per_reference_until_it_clears():
    p = TriggerPolicy(new_data=False, cooldown_s=0)
    kinds, events, state = fire(ctx(p, **drift("tenure_months", "plan")), TriggerState(), T0)
    assert kinds == ["drift"] and "tenure_months (psi 0.5 > 0.2), plan" in events[0].reason
    assert "reference 1" in events[0].reason
    assert fire(ctx(p, **drift("tenure_months")), state, T0 + 10)[0] == []  # same episode
    kinds, _, state = fire(ctx(p, **drift()), state, T0 + 20)  # drift gone: the episode ends
    assert kinds == [] and state.drift_episode is None
    assert fire(ctx(p, **drift("plan")), state, T0 + 30)[0] == ["drift"]
    _, _, state = fire(ctx(p, **drift("plan")), TriggerState(drift_episode="1"), T0 + 40)
    assert fire(ctx(p, **drift("plan", reference="2")), state, T0 + 50)[0] == ["drift"]  # new champion
    off = TriggerPolicy(new_data=False, on_drift=False, cooldown_s=0)
    assert fire(ctx(off, **drift("plan")), TriggerState(), T0)[0] == []


# ------------------------------------------------------------------------------------------ degradation
@pytest.mark.parametrize(("policy", "signal", "fires", "text"), [
    (TriggerPolicy(min_quality=0.75), QualitySignal("3", "roc_auc", 0.70, 100, 0.80), True, "below min_quality"),
    (TriggerPolicy(min_quality=0.65), QualitySignal("3", "roc_auc", 0.70, 100, 0.80), False, ""),
    (TriggerPolicy(max_drop_vs_offline=0.05), QualitySignal("3", "roc_auc", 0.70, 100, 0.80), True,
     "0.1 worse than the offline 0.8"),
    (TriggerPolicy(max_drop_vs_offline=0.05), QualitySignal("3", "roc_auc", 0.70, 100, None), False, ""),
    (TriggerPolicy(min_quality=0.5), QualitySignal("3", "log_loss", 0.60, 100), True, "above min_quality"),
    (TriggerPolicy(min_quality=0.5), QualitySignal("3", "log_loss", 0.40, 100), False, ""),
    (TriggerPolicy(min_quality=0.75), QualitySignal("3", "roc_auc", 0.10, 49), False, ""),  # too few labels
    (TriggerPolicy(min_quality=0.75), QualitySignal("3", "roc_auc", None, 100), False, ""),
])
def test_degradation(policy, signal, fires, text):
    p = TriggerPolicy(new_data=False, on_drift=False, cooldown_s=0, min_labels=50,
                      min_quality=policy.min_quality, max_drop_vs_offline=policy.max_drop_vs_offline)
    kinds, events, _ = fire(ctx(p, quality=signal), TriggerState(), T0)
    assert kinds == (["degradation"] if fires else [])
    if fires:
        assert text in events[0].reason and "champion 3 on 100 labels" in events[0].reason


def test_degradation_fires_once_per_champion_until_quality_recovers():
    p = TriggerPolicy(new_data=False, on_drift=False, cooldown_s=0, min_quality=0.75)
    bad, good = QualitySignal("3", "roc_auc", 0.7, 100), QualitySignal("3", "roc_auc", 0.8, 100)
    _, _, state = fire(ctx(p, quality=bad), TriggerState(), T0)
    assert state.degradation_episode == "3"
    assert fire(ctx(p, quality=bad), state, T0 + 10)[0] == []
    assert fire(ctx(p, quality=QualitySignal("4", "roc_auc", 0.7, 100)), state, T0 + 20)[0] == ["degradation"]
    _, _, state = fire(ctx(p, quality=good), state, T0 + 30)
    assert state.degradation_episode is None
    assert fire(ctx(p, quality=bad), state, T0 + 40)[0] == ["degradation"]


# ------------------------------------------------------------------------------------------ properties
def test_state_is_not_modified_and_round_trips_json():
    p = TriggerPolicy(cooldown_s=0, interval_s=60)
    state = TriggerState(seen_files=["a"], handled_requests=["r0"])
    before = json.dumps(state.to_dict())
    events, new = evaluate_triggers(ctx(p, files=frozenset({"a", "b"}), on_demand=("r1",), **drift("x")),
                                    state, T0)
    assert json.dumps(state.to_dict()) == before
    assert TriggerState.from_dict(json.loads(json.dumps(new.to_dict()))) == new
    assert [TriggerEvent.from_dict(json.loads(json.dumps(e.to_dict()))) for e in events] == events
    assert events[0].key == f"on_demand@{T0!r}"
    with pytest.raises(ValueError, match="unknown trigger kind"):
        TriggerEvent("cosmic_ray", "?", T0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 200), st.booleans(), st.booleans()), min_size=1, max_size=30),
       st.floats(0, 500))
def test_automatic_triggers_respect_the_cool_down(ticks, cooldown):
    p = TriggerPolicy(cooldown_s=cooldown, interval_s=50)
    state, now, fired_at, files = TriggerState(), T0, [], {"f0"}
    for dt_s, new_file, drifted in ticks:
        now += dt_s
        if new_file:
            files.add(f"f{len(files)}")
        events, state = evaluate_triggers(ctx(p, files=frozenset(files), **drift(*(["x"] if drifted else []))),
                                          state, now)
        kinds = [e.kind for e in events]
        assert len(kinds) == len(set(kinds))  # at most one event per kind per tick
        if events:
            fired_at.append(now)
    assert all(b - a >= cooldown for a, b in zip(fired_at, fired_at[1:], strict=False))
