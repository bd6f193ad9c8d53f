"""Data that validation stops, on the real controller actor (local Ray): the real validate step in a Ray task,
the kept report, the schema versions in storage. The data stays parked while more lands, and is retried once
after ``accept_schema`` makes the next version."""

from __future__ import annotations

import shutil

import pytest

from raymlops.config import load_config
from raymlops.control.actor import call, start_controller, stop_controller
from raymlops.control.statefile import read_saved
from raymlops.control.status import gather_status, render_status
from raymlops.data.schemas import accept_schema, latest_schema_version, propose_from_report
from raymlops.data.synthetic import generate
from raymlops.data.validate import validate_data
from tests.serving_helpers import wait_for

pytestmark = pytest.mark.slow


def events(cfg, kind: str | None = None) -> list[dict]:
    return [e for e in call(cfg, "events", 0) if kind is None or e["kind"] == kind]


def wait_event(cfg, predicate, timeout_s: float, what: str) -> None:
    try:
        wait_for(lambda: any(predicate(e) for e in events(cfg)), timeout_s, what)
    except AssertionError as err:  # the controller's log says why
        log = "\n".join(f"{e['kind']}: {e['message']}" for e in events(cfg))
        raise AssertionError(f"{err}; events:\n{log}\nstatus: {call(cfg, 'status')}") from None


def test_a_stop_parks_the_data_until_a_schema_version_is_accepted_then_retries_it_once(
        ray_session, _mlflow_template, tmp_path):
    shutil.copy(_mlflow_template, tmp_path / "mlflow.db")
    staged, landing = tmp_path / "staged", tmp_path / "landing"
    days = generate(str(staged), rows_per_day=400, days=4, seed=3, schema_change=["new_category"],
                    schema_change_from_day=2).files
    landing.mkdir()
    for f in days[:2]:
        shutil.copy(f, landing)
    cfg = load_config(None, [
        f"storage_uri={tmp_path / 'store'}", f"tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "name=parked",
        f"data.source={landing}", "controller.allowed_pipelines=[tests.blocking_helpers:validating_pipeline]",
        "controller.pipeline=tests.blocking_helpers:validating_pipeline",
        "controller.poll_interval_s=0.3", "triggers.poll_interval_s=0.3", "triggers.cooldown_s=0",
        "triggers.on_drift=false", "monitoring.interval_s=3600", "pre_exposure.enabled=false",
    ])
    validate_data(cfg, progress=lambda _m: None)  # the first two days freeze schema v1
    assert latest_schema_version(cfg) == 1
    start_controller(cfg)
    try:
        # The first listing is the new-data trigger's baseline: land the next day only once it is taken.
        wait_for(lambda: (saved := read_saved(cfg)) is not None and saved.state["triggers"]["seen_files"],
                 30, "the controller's first listing of the landing area")
        shutil.copy(days[2], landing)  # a day with a category schema v1 has never seen
        wait_event(cfg, lambda e: e["kind"] == "blocked", 60, "the run of the new day to be blocked")
        blocked = events(cfg, "blocked")[0]
        report = blocked["data"]["report_uri"]
        assert blocked["data"]["schema_version"] == 1 and report.endswith("report.json")
        assert any(a["kind"] == "unseen_categories" for a in blocked["data"]["anomalies"])
        assert "unseen_categories" in blocked["message"]
        assert f"raymlops schema accept CONFIG --from-report {report}" in blocked["message"]
        assert f"raymlops schema diff CONFIG --from-report {report}" in blocked["message"]

        shutil.copy(days[3], landing)  # more data lands: its trigger is held, no run starts
        wait_event(cfg, lambda e: e["kind"] == "held", 30, "the new-data trigger to be held")
        status = call(cfg, "status")
        assert status["run"] is None and status["blocked"]["run_id"] == blocked["data"]["run_id"]
        text = render_status(gather_status(cfg))
        assert "BLOCKED: data of run" in text and f"accept: raymlops schema accept CONFIG --from-report {report}" \
            in text

        accepted = accept_schema(cfg, propose_from_report(cfg, report))
        assert accepted.version == 2
        wait_event(cfg, lambda e: e["kind"] == "run_finished" and "without a new version" in e["message"], 60,
                   "the retry to pass validation")
        log = events(cfg)
        after = [e for e in log if e["seq"] > blocked["seq"]]
        requested = [e for e in after if e["kind"] == "run_requested"]
        assert [e["message"] for e in requested] == ["run requested by retry"]
        assert [e["kind"] for e in after].count("unblocked") == 1
        assert "schema v2 is in force" in next(e for e in after if e["kind"] == "unblocked")["message"]
        assert call(cfg, "status")["blocked"] is None
    finally:
        stop_controller(cfg)
