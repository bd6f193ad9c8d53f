"""The controller state machine with a fake clock: every transition, idempotent replay, restart, JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raymlops.control.blocking import DataBlock
from raymlops.control.canary import CanaryPolicy, Decision, WindowStats, analyze
from raymlops.control.state import (
    Applied,
    CanaryAnalysis,
    ControllerState,
    DataChecked,
    Manual,
    Notify,
    PromoteAlias,
    Restarted,
    ResumeRun,
    RunFinished,
    RunStarted,
    SetWeights,
    StartRun,
    TriggerFired,
    step,
)
from raymlops.control.triggers import TriggerEvent, TriggerState

T0 = 1_714_564_800.0
POLICY = CanaryPolicy(steps=(10.0, 50.0, 100.0), interval_s=60.0, min_requests=100, min_labels=50,
                      failure_limit=2)


# ---------------------------------------------------------------------------------------------- helpers
class Clock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self, advance: float = 1.0) -> float:
        self.t += advance
        return self.t


def new_state(champion: str | None = "1", **kw) -> ControllerState:
    return ControllerState(canary_steps=list(POLICY.steps), champion=champion, **kw)


def fired(*kinds: str, at: float = T0, trigger_state: TriggerState | None = None) -> TriggerFired:
    return TriggerFired(tuple(TriggerEvent(k, f"because {k}", at) for k in kinds), trigger_state)


def kinds(actions) -> list[str]:
    return [type(a).__name__ for a in actions]


def notes(actions) -> list[str]:
    return [a.entry.kind for a in actions if isinstance(a, Notify)]


def logged(state: ControllerState) -> list[str]:
    return [e.kind for e in state.events]


def stats(version, *, requests=200, errors=0, labels=100, quality=0.8) -> WindowStats:
    return WindowStats(version, requests, errors, 10.0 if requests else None, [requests // 10] * 10, labels,
                       quality, "roc_auc")


def analysis(state: ControllerState, now: float, policy=POLICY, **canary_kw) -> CanaryAnalysis:
    r = state.rollout
    decision, _ = analyze(policy, r, stats(r.canary_version, **canary_kw), stats(r.champion_version), now)
    return CanaryAnalysis(decision)


def with_canary(version="2", champion="1") -> tuple[ControllerState, Clock]:
    """A state with run r1 finished and `version` on canary at the first step."""
    clock = Clock()
    s, _ = step(new_state(champion), fired("new_data"), clock())
    s, _ = step(s, RunStarted("r1"), clock())
    s, _ = step(s, RunFinished("r1", "completed", version), clock())
    assert s.rollout.phase == "canary"
    return s, clock


# ------------------------------------------------------------------------------------------------ runs
def test_a_trigger_starts_a_run_and_its_result_goes_on_canary():
    clock = Clock()
    s0 = new_state()
    s1, actions = step(s0, fired("new_data", "drift"), clock())
    assert kinds(actions) == ["Notify", "Notify", "StartRun"] and notes(actions) == ["trigger", "trigger"]
    assert [t.kind for t in actions[-1].triggers] == ["new_data", "drift"]
    assert s1.run.run_id is None and s0.run is None  # the input state is untouched
    s2, actions = step(s1, RunStarted("r1"), clock())
    assert actions == [] and (s2.run.run_id, s2.run.started_at) == ("r1", clock.t)
    s3, actions = step(s2, RunFinished("r1", "completed", 2), clock())
    assert s3.run is None and s3.rollout.phase == "canary" and s3.rollout.canary_version == "2"
    assert [a for a in actions if isinstance(a, SetWeights)] == [SetWeights({"1": 90.0, "2": 10.0})]
    assert notes(actions) == ["run_finished", "canary_started"]
    assert s3.weights() == {"1": 90.0, "2": 10.0} and s3.handled_versions == ["2"]


def test_one_run_at_a_time_and_queued_triggers_deduplicated_by_kind():
    clock = Clock()
    s, _ = step(new_state(), fired("schedule"), clock())
    s, _ = step(s, RunStarted("r1"), clock())
    s, actions = step(s, fired("drift", at=clock.t), clock())
    assert "StartRun" not in kinds(actions) and [q.kind for q in s.queue] == ["drift"]
    s, _ = step(s, fired("drift", "new_data", at=clock.t), clock())
    assert [q.kind for q in s.queue] == ["drift", "new_data"] and "queued" in logged(s)
    s, actions = step(s, RunFinished("r1", "failed", error="boom"), clock())
    assert notes(actions) == ["run_failed"] and "boom" in s.events[-2].message
    start = [a for a in actions if isinstance(a, StartRun)]
    assert len(start) == 1 and [t.kind for t in start[0].triggers] == ["drift", "new_data"]
    assert s.queue == [] and s.run is not None  # one run serves every queued trigger


def test_a_completed_run_without_a_version_and_a_blocked_run():
    clock = Clock()
    for status, version, note in (("completed", None, "run_finished"), ("blocked", None, "run_failed")):
        s, _ = step(new_state(), fired("schedule"), clock())
        s, actions = step(s, RunFinished("r9", status, version, "not blessed"), clock())
        assert notes(actions) == [note] and s.run is None and s.rollout.phase == "idle"


def test_results_of_other_runs_are_ignored():
    clock = Clock()
    s, _ = step(new_state(), fired("schedule"), clock())
    s, _ = step(s, RunStarted("r1"), clock())
    for event in (RunStarted("r2"), RunFinished("r2", "completed", "5")):
        s2, actions = step(s, event, clock())
        assert actions == [] and s2.run.run_id == "r1" and logged(s2)[-1] == "ignored"


def test_first_model_is_promoted_directly():
    clock = Clock()
    s, _ = step(new_state(None), fired("on_demand"), clock())
    s, actions = step(s, RunFinished("r1", "completed", "1"), clock())
    assert [a for a in actions if not isinstance(a, Notify)] == [PromoteAlias("1", None), SetWeights({"1": 100.0})]
    assert s.rollout.phase == "promoting" and s.champion is None
    s, actions = step(s, Applied("promote", "1"), clock())
    assert (s.champion, s.previous, s.rollout.phase) == ("1", None, "idle") and notes(actions) == ["promoted"]


# ---------------------------------------------------------------------------------------------- canary
def test_healthy_canary_walks_every_step_and_is_promoted():
    s, clock = with_canary()
    weights = []
    for _ in POLICY.steps:
        s, actions = step(s, analysis(s, clock(60)), clock.t)
        weights += [a.weights for a in actions if isinstance(a, SetWeights)]
    assert weights == [{"1": 50.0, "2": 50.0}, {"1": 0.0, "2": 100.0}, {"2": 100.0}]
    assert PromoteAlias("2", "1") in actions and s.rollout.phase == "promoting"
    assert s.champion == "1"  # not until the shell reports the alias moved
    s, actions = step(s, Applied("promote", "2"), clock())
    assert (s.champion, s.previous, s.rollout.phase) == ("2", "1", "idle")
    assert "1 kept as previous and drained" in s.events[-1].message and notes(actions) == ["promoted"]
    assert s.weights() == {"2": 100.0}


def test_canary_without_traffic_holds_forever_and_logs_the_hold_once():
    s, clock = with_canary()
    for _ in range(5):
        s, actions = step(s, analysis(s, clock(60), requests=0, labels=0, quality=None), clock.t)
        assert "SetWeights" not in kinds(actions) and "PromoteAlias" not in kinds(actions)
    assert s.rollout.phase == "canary" and s.rollout.step_index == 0 and s.rollout.failures == 0
    assert logged(s).count("canary_hold") == 1 and "min_requests" in s.events[-1].message
    s, _ = step(s, analysis(s, clock(60), labels=10), clock.t)  # traffic now, labels still short
    assert logged(s).count("canary_hold") == 2 and s.rollout.hold_on == ["quality_drop"]


def test_worse_canary_is_rolled_back_after_failure_limit_and_aliases_are_untouched():
    s, clock = with_canary()
    s, actions = step(s, analysis(s, clock(60), quality=0.6), clock.t)
    assert notes(actions) == ["canary_check_failed"] and s.rollout.failures == 1
    assert s.events[-1].data["checks"][3]["name"] == "quality_drop"
    s, actions = step(s, analysis(s, clock(60), quality=0.6), clock.t)
    assert s.rollout.phase == "rolling_back" and s.rollout.failures == 2
    assert [a for a in actions if not isinstance(a, Notify)] == [SetWeights({"1": 100.0})]
    assert notes(actions) == ["rolling_back"]
    s, actions = step(s, Applied("rollback", "2"), clock())
    assert (s.champion, s.rollout.phase, s.weights()) == ("1", "idle", {"1": 100.0}) and notes(actions) == [
        "rolled_back"]
    s, actions = step(s, RunFinished("r1", "completed", "2"), clock())  # nothing happens twice
    assert actions == [] and s.rollout.phase == "idle"


def test_approval_wait_then_approve():
    gated = CanaryPolicy(steps=(50.0,), interval_s=60.0, require_approval=True)
    clock = Clock()
    s, _ = step(ControllerState(canary_steps=[50.0], champion="1"), fired("schedule"), clock())
    s, _ = step(s, RunFinished("r1", "completed", "2"), clock())
    s, actions = step(s, analysis(s, clock(60), gated), clock.t)
    assert s.rollout.phase == "awaiting_approval" and notes(actions) == ["awaiting_approval"]
    assert "raymlops approve" in s.events[-1].message
    s, actions = step(s, analysis(s, clock(60), gated), clock.t)  # still waiting: notified once only
    assert actions == [] and s.rollout.phase == "awaiting_approval"
    s2, actions = step(s, Manual("approve", "op-1", version="3"), clock())
    assert notes(actions) == ["rejected"] and s2.rollout.phase == "awaiting_approval"
    s, actions = step(s, Manual("approve", "op-2"), clock())
    assert PromoteAlias("2", "1") in actions and s.rollout.phase == "promoting"


def test_approve_with_nothing_waiting_is_rejected():
    s, clock = with_canary()
    s2, actions = step(s, Manual("approve", "op-1"), clock())
    assert notes(actions) == ["rejected"] and "nothing awaits approval" in s2.events[-1].message
    assert s2.rollout == s.rollout


# ----------------------------------------------------------------------------------------------- manual
def test_manual_promote_of_the_canary_and_of_an_idle_version():
    s, clock = with_canary()
    s2, actions = step(s, Manual("promote", "op-1", "7"), clock())
    assert notes(actions) == ["rejected"] and "not the canary" in s2.events[-1].message
    s2, actions = step(s, Manual("promote", "op-2"), clock())
    assert PromoteAlias("2", "1") in actions and s2.rollout.phase == "promoting"
    s3, actions = step(s2, Manual("promote", "op-3"), clock())  # (a rollback now stops it: test_control_redrive)
    assert notes(actions) == ["rejected"] and "in progress" in s3.events[-1].message
    idle = new_state("1")
    s4, actions = step(idle, Manual("promote", "op-4", "5"), clock())
    assert [a for a in actions if not isinstance(a, Notify)] == [PromoteAlias("5", "1"), SetWeights({"5": 100.0})]
    for bad in (Manual("promote", "op-5"), Manual("promote", "op-6", "1")):
        _, actions = step(idle, bad, clock())
        assert notes(actions) == ["rejected"]


def test_manual_rollback_of_the_canary_and_of_the_champion():
    s, clock = with_canary()
    s, actions = step(s, Manual("rollback", "op-1"), clock())
    assert SetWeights({"1": 100.0}) in actions and s.rollout.phase == "rolling_back"
    s, _ = step(s, Applied("rollback", "2"), clock())
    _, actions = step(s, Manual("rollback", "op-2"), clock())
    assert notes(actions) == ["rejected"]  # no previous champion to go back to
    s = new_state("3", previous="2")
    s, actions = step(s, Manual("rollback", "op-3"), clock())
    assert PromoteAlias("2", "3") in actions
    s, _ = step(s, Applied("promote", "2"), clock())
    assert (s.champion, s.previous) == ("2", "3")


def test_pause_queues_runs_and_ignores_analysis_until_resume():
    s, clock = with_canary()
    s, actions = step(s, Manual("pause", "op-1"), clock())
    assert s.paused and notes(actions) == ["paused"]
    _, actions = step(s, Manual("pause", "op-2"), clock())
    assert notes(actions) == ["rejected"]
    s, actions = step(s, fired("schedule", at=clock.t), clock())
    assert "StartRun" not in kinds(actions) and [q.kind for q in s.queue] == ["schedule"]
    s2, actions = step(s, analysis(s, clock(600), quality=0.1), clock.t)
    assert actions == [] and s2.rollout == s.rollout
    s, actions = step(s, Manual("resume", "op-3"), clock())
    assert not s.paused and notes(actions) == ["resumed"] and "StartRun" in kinds(actions)
    _, actions = step(s, Manual("resume", "op-4"), clock())
    assert notes(actions) == ["rejected"]
    _, actions = step(s, Manual("explode", "op-5"), clock())
    assert notes(actions) == ["rejected"]


def test_a_newer_challenger_waits_for_the_rollout_and_supersedes_an_older_one():
    s, clock = with_canary()
    for run_id, version in (("r2", "3"), ("r3", "4")):
        s, _ = step(s, fired("schedule", at=clock.t), clock())
        s, _ = step(s, RunFinished(run_id, "completed", version), clock())
    assert s.pending_canary == "4" and "superseded" in logged(s) and s.rollout.canary_version == "2"
    s, _ = step(s, Manual("rollback", "op-1"), clock())
    s, actions = step(s, Applied("rollback", "2"), clock())
    assert s.rollout.canary_version == "4" and s.pending_canary is None
    assert SetWeights({"1": 90.0, "4": 10.0}) in actions


def test_stale_analysis_is_ignored():
    s, clock = with_canary()
    stale = analysis(s, clock(60), quality=0.1)
    s, _ = step(s, Manual("rollback", "op-1"), clock())
    s2, actions = step(s, stale, clock())
    assert actions == [] and s2.rollout == s.rollout and logged(s2)[-1] == "ignored"
    s, clock = with_canary()
    event = analysis(s, clock(60), quality=0.1)
    s, _ = step(s, event, clock.t)
    same_window = CanaryAnalysis(Decision.from_dict({**event.decision.to_dict(), "at": clock.t + 1}))
    s2, _ = step(s, same_window, clock())  # another decision on the window already judged
    assert s2.rollout.failures == 1


# ------------------------------------------------------------------------------------- idempotency
def test_replaying_any_event_is_a_no_op():
    s, clock = with_canary()
    events = [fired("drift", at=clock.t), RunStarted("r2"), analysis(s, clock(60)), Manual("pause", "op-1"),
              Manual("resume", "op-2")]
    for event in events:
        s, _ = step(s, event, clock())
        again, actions = step(s, event, clock())
        assert again is s and actions == []
    s, _ = step(s, Manual("promote", "op-3"), clock())
    s, _ = step(s, Applied("promote", "2"), clock())
    for event in (Applied("promote", "2"), RunFinished("r1", "completed", "2"), Manual("promote", "op-3")):
        again, actions = step(s, event, clock())
        assert actions == [] and again.champion == "2"


def test_restart_reissues_what_is_still_owed():
    clock = Clock()
    s, _ = step(new_state(), fired("schedule"), clock())
    _, actions = step(s, Restarted(), clock())
    assert kinds(actions) == ["StartRun", "SetWeights"]  # the start may never have happened
    s, _ = step(s, RunStarted("r1"), clock())
    s, actions = step(s, Restarted(), clock())
    assert actions == [ResumeRun("r1"), SetWeights({"1": 100.0})] and logged(s)[-1] == "restarted"
    s, clock = with_canary()
    _, actions = step(s, Restarted(), clock())
    assert actions == [SetWeights({"1": 90.0, "2": 10.0})]
    s, _ = step(s, Manual("promote", "op-1"), clock())
    _, actions = step(s, Restarted(), clock())
    assert actions == [PromoteAlias("2", "1"), SetWeights({"2": 100.0})]
    _, actions = step(new_state(None), Restarted(), clock())
    assert actions == []


def test_trigger_bookkeeping_is_stored_with_the_event():
    ts = TriggerState(last_fired_at=T0, seen_files=["a"])
    s, _ = step(new_state(), fired(trigger_state=ts), T0)
    assert s.triggers == ts and s.run is None and s.events == []
    s, _ = step(s, fired("new_data", trigger_state=TriggerState(seen_files=["a", "b"])), T0 + 1)
    assert s.triggers.seen_files == ["a", "b"]


def test_event_log_and_keys_are_bounded():
    s = new_state(max_events=5, max_keys=3)
    for i in range(10):
        s, _ = step(s, Manual("pause" if i % 2 == 0 else "resume", f"op-{i}"), T0 + i)
    assert len(s.events) == 5 and [e.seq for e in s.events] == [6, 7, 8, 9, 10]
    assert s.processed_keys == ["manual:op-7", "manual:op-8", "manual:op-9"]


def test_unknown_event_type():
    with pytest.raises(TypeError, match="unknown controller event"):
        step(new_state(), object(), T0)


# -------------------------------------------------------------------------------------------- property
def _event(data, s: ControllerState, now: float):
    """One plausible event for state `s`, drawn by hypothesis."""
    choice = data.draw(st.sampled_from(["trigger", "started", "finished", "stopped", "checked", "analysis",
                                        "manual", "applied", "restart", "replay"]))
    run_id = s.run.run_id if s.run and s.run.run_id else f"r{data.draw(st.integers(0, 3))}"
    version = str(data.draw(st.integers(1, 5)))
    if choice == "trigger":
        return fired(data.draw(st.sampled_from(["on_demand", "schedule", "new_data", "drift"])), at=now)
    if choice == "started":
        return RunStarted(run_id)
    if choice == "finished":
        return RunFinished(run_id, data.draw(st.sampled_from(["completed", "failed"])), version)
    if choice == "stopped":  # data validation: the data is parked
        return RunFinished(run_id, "blocked", block=DataBlock("r.json", data.draw(st.integers(1, 3)),
                                                              files=frozenset({"a", "b"})))
    if choice == "checked":
        return DataChecked(data.draw(st.sampled_from([None, 1, 2, 3])),
                           data.draw(st.sampled_from([None, frozenset({"a", "b"}), frozenset({"a"})])))
    if choice == "analysis" and s.rollout.phase in ("canary", "awaiting_approval"):
        policy = CanaryPolicy(steps=tuple(s.rollout.steps), interval_s=60, failure_limit=2,
                              require_approval=data.draw(st.booleans()))
        return analysis(s, now, policy, quality=data.draw(st.sampled_from([0.8, 0.5, None])),
                        requests=data.draw(st.sampled_from([0, 200])))
    if choice == "manual":
        cmd = data.draw(st.sampled_from(["promote", "rollback", "pause", "resume", "approve"]))
        return Manual(cmd, f"op-{data.draw(st.integers(0, 50))}", data.draw(st.sampled_from([None, version])))
    if choice == "applied":
        return Applied(data.draw(st.sampled_from(["promote", "rollback"])), s.rollout.canary_version or version)
    return Restarted()


@settings(max_examples=30, deadline=None)
@given(st.data(), st.sampled_from([None, "1"]))
def test_random_histories_round_trip_and_keep_invariants(data, champion):
    s, now, history = new_state(champion), T0, []
    canaries: list[str] = []
    for _ in range(data.draw(st.integers(1, 30))):
        now += data.draw(st.sampled_from([1.0, 30.0, 61.0]))
        event = data.draw(st.sampled_from(history)) if history and data.draw(st.booleans()) else \
            _event(data, s, now)
        history.append(event)
        before = s.to_json()
        in_flight, blocked = s.run is not None, s.blocked is not None
        s2, actions = step(s, event, now)
        assert s.to_json() == before  # step never changes its input
        assert ControllerState.from_json(s2.to_json()) == s2
        for a in actions:
            if isinstance(a, SetWeights):
                assert a.weights and abs(sum(a.weights.values()) - 100.0) < 1e-9
            if isinstance(a, PromoteAlias) and not isinstance(event, Restarted):
                # never promotes the champion again, nor starts a promotion while one is under way
                assert a.version != s.champion and s.rollout.phase not in ("promoting", "rolling_back")
            if isinstance(a, StartRun) and not isinstance(event, Restarted):
                assert not in_flight or isinstance(event, RunFinished)  # one run at a time
                # parked data runs again only on a request or the retry rule, never on an automatic trigger
                assert not blocked or isinstance(event, DataChecked | Manual) or (
                    isinstance(event, TriggerFired) and any(t.kind == "on_demand" for t in event.triggers))
                assert s2.blocked is None
        canaries += [e.data["version"] for e in s2.events[len(s.events):] if e.kind == "canary_started"] \
            if len(s2.events) > len(s.events) else []
        seqs = [e.seq for e in s2.events]
        assert seqs == sorted(set(seqs))
        s = s2
    assert len(canaries) == len(set(canaries))  # no version goes on canary twice
    assert json.loads(s.to_json())["next_seq"] == s.next_seq


def test_control_modules_import_without_ray_mlflow_or_config():
    script = (
        "import importlib, sys\n"
        "blocked = ('ray', 'mlflow', 'torch', 'pydantic', 'starlette', 'raymlops.config')\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if any(name == b or name.startswith(b + '.') for b in blocked):\n"
        "            raise ImportError(f'raymlops.control must stay pure: it imported {name}')\n"
        "sys.meta_path.insert(0, Block())\n"
        "for m in ('canary', 'triggers', 'blocking', 'state'):\n"
        "    importlib.import_module('raymlops.control.' + m)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ------------------------------------------------------------------------------------------ pre-exposure
def in_exposure_tests():
    from raymlops.control.state import TestExposure

    s = new_state(pre_exposure=True)
    clock = Clock()
    s, _ = step(s, fired("on_demand"), clock())
    s, _ = step(s, RunStarted("r1"), clock())
    s, actions = step(s, RunFinished("r1", "completed", "2"), clock())
    assert s.rollout.phase == "testing" and TestExposure("2", "1") in actions
    assert not any(isinstance(a, SetWeights) for a in actions) and s.weights() == {"1": 100.0}
    return s, clock


def test_a_challenger_that_passes_its_pre_exposure_tests_goes_on_canary():
    from raymlops.control.state import ExposureTested

    s, clock = in_exposure_tests()
    s, actions = step(s, ExposureTested("2", True), clock())
    assert s.rollout.phase == "canary" and SetWeights({"1": 90.0, "2": 10.0}) in actions
    assert [e.kind for e in s.events][-2:] == ["exposure_passed", "canary_started"]


def test_a_challenger_that_fails_its_pre_exposure_tests_never_gets_traffic():
    from raymlops.control.state import ExposureTested

    s, clock = in_exposure_tests()
    s, actions = step(s, ExposureTested("2", False, ("contract: missing feature loyalty_score",)), clock())
    assert s.rollout.phase == "idle" and s.weights() == {"1": 100.0}
    assert not any(isinstance(a, SetWeights) for a in actions) and "exposure_blocked" in notes(actions)
    assert "loyalty_score" in s.events[-1].message
    s, _ = step(s, RunFinished("r9", "completed", "2"), clock())  # the same version again: never retested
    assert s.rollout.phase == "idle"
    s2, actions = step(s, ExposureTested("2", True), clock())  # a late result changes nothing
    assert s2.rollout.phase == "idle" and not any(isinstance(a, SetWeights) for a in actions)


def test_a_restart_during_the_pre_exposure_tests_runs_them_again():
    from raymlops.control.state import TestExposure

    s, clock = in_exposure_tests()
    s = ControllerState.from_json(s.to_json())
    s, actions = step(s, Restarted(), clock())
    assert TestExposure("2", "1") in actions and SetWeights({"1": 100.0}) in actions


def test_an_operator_can_stop_a_version_in_its_pre_exposure_tests():
    s, clock = in_exposure_tests()
    s, actions = step(s, Manual("rollback", "op-1"), clock())
    assert s.rollout.phase == "idle" and "exposure_blocked" in notes(actions)
    s, actions = step(s, Manual("approve", "op-2"), clock())
    assert s.events[-1].kind == "rejected"
