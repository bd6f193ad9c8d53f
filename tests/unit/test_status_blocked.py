"""`raymlops status` shows data that the controller holds back after a validation STOP (rendered without Ray)."""

from __future__ import annotations

from raymlops.control.blocking import DataBlock
from raymlops.control.state import ControllerState, RunFinished, RunStarted, TriggerFired, step
from raymlops.control.status import render_status
from raymlops.control.triggers import TriggerEvent

REPORT = "/store/reports/churn/validation/r1-validate/report.json"


def status_doc(state: ControllerState) -> dict:
    s = state.to_dict()
    return {"pipeline": "churn", "registry": {"versions": [], "aliases": {}},
            "serving": {"url": "http://127.0.0.1:8000/v1/models/churn", "error": "not reachable (ConnectError)"},
            "controller": {"state_uri": "/store/controller/churn/state.json", "champion": s["champion"],
                           "previous": s["previous"], "paused": s["paused"], "run": s["run"], "queue": s["queue"],
                           "rollout": s["rollout"], "pending_canary": s["pending_canary"], "blocked": s["blocked"],
                           "recent_events": s["events"][-8:]},
            "where": {"controller events": "raymlops events CONFIG"}}


def test_status_shows_the_block_its_anomalies_and_the_commands():
    anomalies = tuple({"feature": f"f{i}", "kind": "wrong_type", "observed": "string", "expected": "float64"}
                      for i in range(7))
    block = DataBlock(REPORT, 3, anomalies, (f"raymlops schema diff CONFIG --from-report {REPORT}",
                                              f"raymlops schema accept CONFIG --from-report {REPORT}"),
                      frozenset({"day1.parquet"}))
    s, _ = step(ControllerState(champion="1"), TriggerFired((TriggerEvent("new_data", "1 new file", 1.0),)), 1.0)
    s, _ = step(s, RunStarted("r1"), 2.0)
    s, _ = step(s, RunFinished("r1", "blocked", block=block), 3.0)
    s, _ = step(s, TriggerFired((TriggerEvent("schedule", "due", 4.0),)), 4.0)
    text = render_status(status_doc(s))
    assert "BLOCKED: data of run r1 stopped by validation against schema v3" in text
    assert "'f0' wrong_type: observed string vs expected float64" in text and "'f5'" not in text
    assert f"... 2 more in {REPORT}" in text
    assert f"review: raymlops schema diff CONFIG --from-report {REPORT}" in text
    assert f"accept: raymlops schema accept CONFIG --from-report {REPORT}" in text
    assert "held meanwhile: schedule" in text


def test_status_without_a_block_says_nothing_of_one():
    assert "BLOCKED" not in render_status(status_doc(ControllerState(champion="1")))
