"""Data that validation stopped, in the controller's state machine with a fake clock: the ``blocked`` event, no
run while the data is parked, exactly one retry once a new schema version is accepted, and no loop."""

from __future__ import annotations

import json

from raymlops.control.blocking import BlockRecord, DataBlock, anomaly_text, block_message, retry_reasons
from raymlops.control.state import (
    ControllerState,
    DataChecked,
    Manual,
    Notify,
    Restarted,
    RunFinished,
    RunStarted,
    StartRun,
    TriggerFired,
    step,
)
from raymlops.control.triggers import TriggerEvent

T0 = 1_714_564_800.0
REPORT = "/store/reports/churn/validation/r1-validate/report.json"
ACCEPT = f"raymlops schema accept CONFIG --from-report {REPORT}"
DIFF = f"raymlops schema diff CONFIG --from-report {REPORT}"
OUT_OF_RANGE = {"feature": "tenure_months", "kind": "out_of_range",
                "observed": {"pct": 12.5, "min": 0.0, "max": 140.0},
                "expected": {"max_pct": 1.0, "min": 1.0, "max": 79.2, "enforced": True}, "message": "..."}
UNSEEN = {"feature": "plan", "kind": "unseen_categories",
          "observed": {"pct": 30.0, "categories": {"gold": 30, "platinum": 4}},
          "expected": {"max_pct": 1.0, "domain": ["basic", "pro"]}, "message": "..."}
WRONG_TYPE = {"feature": "monthly_charges", "kind": "wrong_type", "observed": "string", "expected": "float64",
              "message": "..."}
FILES = frozenset({"day1.parquet", "day2.parquet"})


class Clock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self, advance: float = 1.0) -> float:
        self.t += advance
        return self.t


def fired(*kinds: str, at: float = T0) -> TriggerFired:
    return TriggerFired(tuple(TriggerEvent(k, f"because {k}", at) for k in kinds))


def data_block(version: int = 1, anomalies=(OUT_OF_RANGE, UNSEEN, WRONG_TYPE), files=FILES) -> DataBlock:
    return DataBlock(REPORT, version, tuple(anomalies), (DIFF, ACCEPT), files)


def starts(actions) -> list[list[str]]:
    return [[t.kind for t in a.triggers] for a in actions if isinstance(a, StartRun)]


def notes(actions) -> list[str]:
    return [a.entry.kind for a in actions if isinstance(a, Notify)]


def blocked_state(clock: Clock, version: int = 1) -> tuple[ControllerState, list]:
    """Run r1, started by new data, stopped by data validation against schema `version`."""
    s, _ = step(ControllerState(champion="1"), fired("new_data"), clock())
    s, _ = step(s, RunStarted("r1"), clock())
    return step(s, RunFinished("r1", "blocked", error="data validation stopped the pipeline",
                               block=data_block(version)), clock())


# ------------------------------------------------------------------------------------------------ block
def test_a_stop_emits_a_blocked_event_naming_the_anomalies_and_the_commands():
    s, actions = blocked_state(Clock())
    assert notes(actions) == ["blocked"] and starts(actions) == [] and s.run is None
    entry = s.events[-1]
    assert entry.kind == "blocked"
    for text in ("run r1", "schema v1", "3 schema anomalies", "'tenure_months' out_of_range: 12.5% of values",
                 "[1.0, 79.2]", "observed [0.0, 140.0]", "'plan' unseen_categories: 30.0% unseen (e.g. gold, "
                 "platinum)", "'monthly_charges' wrong_type: observed string vs expected float64",
                 f"`{DIFF}` then `{ACCEPT}`", "stays pending"):
        assert text in entry.message, text
    assert entry.data["commands"] == [DIFF, ACCEPT] and entry.data["report_uri"] == REPORT
    assert [a["feature"] for a in entry.data["anomalies"]] == ["tenure_months", "plan", "monthly_charges"]
    assert s.blocked is not None and (s.blocked.schema_version, s.blocked.attempts) == (1, 1)
    assert s.blocked.files == sorted(FILES)


def test_a_blocked_model_gate_is_a_failed_run_and_parks_nothing():
    clock = Clock()
    s, _ = step(ControllerState(champion="1"), fired("new_data"), clock())
    s, actions = step(s, RunFinished("r1", "blocked", error="not blessed"), clock())
    assert notes(actions) == ["run_failed"] and s.blocked is None
    s, actions = step(s, fired("schedule", at=clock.t), clock())
    assert starts(actions) == [["schedule"]]


def test_no_run_starts_while_the_data_is_blocked_whatever_fires():
    clock = Clock()
    s, _ = blocked_state(clock)
    for kinds in (("new_data",), ("schedule",), ("drift", "degradation"), ("new_data", "schedule")):
        s, actions = step(s, fired(*kinds, at=clock.t), clock(60))
        assert starts(actions) == [] and s.run is None and s.queue == []
        assert s.events[-1].kind == "held"
        # same schema, every blocked file still there, one more landed: still parked, and nothing to persist
        before = s
        s, actions = step(s, DataChecked(1, FILES | {f"day{clock.t}.parquet"}), clock())
        assert s is before and actions == []
    assert s.blocked.held == ["new_data", "schedule", "drift", "degradation"]
    assert next(e for e in s.events if e.kind == "blocked").data["held"] == []  # the log entry is not rewritten


def test_an_accepted_schema_version_retries_the_data_exactly_once():
    clock = Clock()
    s, _ = blocked_state(clock)
    s, actions = step(s, DataChecked(2, FILES), clock())
    assert starts(actions) == [["retry"]] and notes(actions) == ["unblocked"] and s.blocked is None
    assert "schema v2 is in force (the data was blocked against v1)" in s.events[-2].message
    s, _ = step(s, RunStarted("r2"), clock())
    for _ in range(3):  # later polls see the same version: no second retry
        s, actions = step(s, DataChecked(2, FILES), clock())
        assert actions == [] and s.run.run_id == "r2"
    s, actions = step(s, RunFinished("r2", "completed", "2"), clock())
    assert s.blocked is None and s.retrying == 0 and s.rollout.canary_version == "2"
    s, actions = step(s, fired("new_data", at=clock.t), clock())
    assert starts(actions) == [["new_data"]]  # nothing is held any more


def test_a_retry_that_stops_again_blocks_again_and_does_not_loop():
    clock = Clock()
    s, _ = blocked_state(clock)
    s, _ = step(s, DataChecked(2, FILES), clock())
    s, _ = step(s, RunStarted("r2"), clock())
    s, actions = step(s, RunFinished("r2", "blocked", block=data_block(2, anomalies=(WRONG_TYPE,))), clock())
    assert notes(actions) == ["blocked"] and s.blocked.attempts == 2 and s.blocked.schema_version == 2
    assert "attempt 2: it stopped again" in s.events[-1].message and "1 schema anomaly:" in s.events[-1].message
    for _ in range(5):
        s, actions = step(s, DataChecked(2, FILES), clock(60))
        assert actions == []
        s, actions = step(s, fired("schedule", at=clock.t), clock())
        assert starts(actions) == []
    s, actions = step(s, DataChecked(3, FILES), clock())  # yet another version: one more try
    assert starts(actions) == [["retry"]]


def test_blocked_files_leaving_the_landing_area_retry_the_data():
    clock = Clock()
    s, _ = blocked_state(clock)
    s, actions = step(s, DataChecked(1, frozenset({"day1.parquet", "day3.parquet"})), clock())
    assert starts(actions) == [["retry"]]
    assert "1 file(s) of the blocked data left the landing area: day2.parquet" in s.events[-2].message


def test_an_operator_request_is_the_retry_and_the_held_triggers_ride_along():
    clock = Clock()
    s, _ = blocked_state(clock)
    s, _ = step(s, fired("schedule", at=clock.t), clock())
    s, actions = step(s, fired("on_demand", "new_data", at=clock.t), clock())
    assert starts(actions) == [["on_demand", "new_data"]] and s.blocked is None and s.retrying == 1
    unblocked = next(e for e in s.events if e.kind == "unblocked")
    assert "an operator requested a run" in unblocked.message and "held meanwhile: schedule" in unblocked.message
    s, _ = step(s, RunStarted("r2"), clock())
    s, _ = step(s, RunFinished("r2", "blocked", block=data_block(1)), clock())
    assert s.blocked.attempts == 2


def test_automatic_triggers_queued_behind_the_stopped_run_are_held_and_requests_kept():
    clock = Clock()
    s, _ = step(ControllerState(champion="1"), fired("new_data"), clock())
    s, _ = step(s, RunStarted("r1"), clock())
    s, _ = step(s, fired("drift", "on_demand", at=clock.t), clock())
    assert [q.kind for q in s.queue] == ["drift", "on_demand"]
    s, actions = step(s, RunFinished("r1", "blocked", block=data_block()), clock())
    # The on-demand request still runs (it is the retry); the drift trigger rides along on nothing: held.
    assert notes(actions)[:2] == ["blocked", "unblocked"] and starts(actions) == [["on_demand"]]
    assert s.events[-3].data["held"] == ["drift"]


def test_a_paused_controller_queues_the_retry_until_resume():
    clock = Clock()
    s, _ = blocked_state(clock)
    s, _ = step(s, Manual("pause", "op-1"), clock())
    s, actions = step(s, DataChecked(2, FILES), clock())
    assert starts(actions) == [] and s.blocked is None and [q.kind for q in s.queue] == ["retry"]
    s, actions = step(s, DataChecked(2, FILES), clock())
    assert actions == [] and [q.kind for q in s.queue] == ["retry"]
    s, actions = step(s, Manual("resume", "op-2"), clock())
    assert starts(actions) == [["retry"]]


def test_a_block_survives_a_restart_and_old_state_files_load():
    clock = Clock()
    s, _ = blocked_state(clock)
    again = ControllerState.from_json(s.to_json())
    assert again == s and again.blocked.anomalies[0]["feature"] == "tenure_months"
    s2, actions = step(again, Restarted(), clock())
    assert starts(actions) == [] and s2.blocked == s.blocked
    doc = json.loads(ControllerState().to_json())
    del doc["blocked"], doc["retrying"]  # a state file written before blocks existed
    assert ControllerState.from_dict(doc).blocked is None


# --------------------------------------------------------------------------------------------- wording
def test_the_message_names_at_most_five_anomalies_and_counts_the_rest():
    many = tuple({**WRONG_TYPE, "feature": f"f{i}"} for i in range(12))
    record = BlockRecord.of("r1", T0, data_block(anomalies=many), attempts=1)
    assert len(record.anomalies) == 10 and record.anomaly_count == 12
    text = block_message("r1", record)
    assert "12 schema anomalies" in text and "'f4'" in text and "'f5'" not in text and "and 7 more" in text


def test_an_unreadable_report_still_blocks_with_the_reason_and_a_generic_command():
    record = BlockRecord.of("r1", T0, DataBlock(None, None, note="the run left no validation report"), 1)
    text = block_message("r1", record)
    assert "schema ?" in text and "anomalies unknown (the run left no validation report)" in text
    assert "raymlops schema accept CONFIG --from-report REPORT" in text


def test_long_values_are_shortened_and_odd_ones_still_render():
    a = {"feature": "x", "kind": "null_rate", "observed": list(range(100)), "expected": None}
    text = anomaly_text(a)
    assert text.startswith("'x' null_rate: observed [0, 1, 2") and "…" in text and text.endswith("null")
    assert anomaly_text({"kind": "out_of_range", "observed": 3, "expected": 4}) == \
        "'?' out_of_range: observed 3 vs expected 4"


def test_retry_reasons_need_a_new_version_or_a_removed_file():
    record = BlockRecord.of("r1", T0, data_block(1), 1)
    assert retry_reasons(record, 1, FILES | {"day3.parquet"}) == []
    assert retry_reasons(record, None, None) == []  # nothing observed: nothing decided
    assert len(retry_reasons(record, 2, FILES - {"day1.parquet"})) == 2
    unknown = BlockRecord.of("r1", T0, data_block(None), 1)
    assert "against an unknown version" in retry_reasons(unknown, 1, None)[0]
