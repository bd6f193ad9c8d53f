"""Pre-exposure logic without Ray: the error-contract cases, response checks, load figures and gates, results."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from raymlops.config import load_config
from raymlops.control.preexposure import ExposureCheck, PreExposureResult, preview_config
from raymlops.core.exposure import (
    UNKNOWN_FEATURE,
    UNKNOWN_MODEL,
    BadInputCase,
    LoadFigures,
    as_request_instance,
    bad_input_cases,
    check_error_response,
    check_predictions,
    expected_outputs,
    interleaved_blocks,
    interleaved_figures,
    load_figures,
    load_gate,
    synthetic_instances,
)
from raymlops.core.request_validation import RequestError, RequestValidator
from raymlops.core.schema import ColumnSpec, Schema
from tests.data_helpers import CHURN_SCHEMA

# The shared churn request schema without the columns these rows do not carry.
SCHEMA = Schema("churn", 1, "binary", [c for c in CHURN_SCHEMA.columns if c.name not in {"notes", "region", "zone", "rate"}])
CATEGORICAL_ONLY = Schema("m", 1, "multiclass", [
    ColumnSpec("plan", "feature", "categorical", "string", nullable=True, domain=["a", "b"]),
])
LIMITS = {"max_body_bytes": 4096, "max_instances": 5}


def _validator(schema: Schema) -> RequestValidator:
    return RequestValidator(schema, **LIMITS)


def _answer(schema: Schema, case: BadInputCase) -> tuple[int, bytes]:
    """What the service answers: the validator's error, or the app's 404 for an unknown model name."""
    if case.model == UNKNOWN_MODEL:
        return 404, json.dumps({"error": {"code": "unknown_model", "message": "m", "details": []}}).encode()
    try:
        _validator(schema).validate(case.body)
    except RequestError as err:
        return err.status, json.dumps(err.to_body()).encode()
    return 200, b'{"predictions": []}'


# ----------------------------------------------------------------------------------------- bad inputs
def test_synthetic_instances_are_valid_requests():
    rows = synthetic_instances(SCHEMA, 5)
    parsed = _validator(SCHEMA).validate(json.dumps({"instances": rows}).encode())
    assert parsed.n == 5 and not parsed.out_of_range and not parsed.unseen


def test_every_case_of_the_error_contract_is_there():
    names = {c.name for c in bad_input_cases(SCHEMA, model="churn", **LIMITS)}
    assert names == {"malformed_json", "not_an_object", "empty_instances", "unknown_feature", "missing_feature",
                     "wrong_type", "nan_literal", "label_sent", "too_many_instances", "body_too_large",
                     "unknown_model"}


@pytest.mark.parametrize("schema", [SCHEMA, CATEGORICAL_ONLY], ids=["mixed", "categorical-only"])
def test_the_real_validator_answers_each_case_as_expected(schema):
    for case in bad_input_cases(schema, model="churn", **LIMITS):
        status, body = _answer(schema, case)
        assert check_error_response(case, status, body) == [], case.name


def test_cases_the_schema_cannot_express_are_left_out():
    names = {c.name for c in bad_input_cases(CATEGORICAL_ONLY, model="m", **LIMITS)}
    assert "nan_literal" not in names and "missing_feature" not in names and "label_sent" not in names
    assert "wrong_type" in names


def test_a_too_many_instances_body_over_the_byte_limit_is_left_to_the_413_case():
    names = {c.name for c in bad_input_cases(SCHEMA, model="churn", max_body_bytes=300, max_instances=50)}
    assert "too_many_instances" not in names and "body_too_large" in names


def test_the_oversize_body_is_valid_json_one_byte_over_the_limit():
    case = next(c for c in bad_input_cases(SCHEMA, model="churn", **LIMITS) if c.name == "body_too_large")
    assert len(case.body) == LIMITS["max_body_bytes"] + 1
    json.loads(case.body)


def test_the_nan_case_sends_a_bare_nan_literal():
    case = next(c for c in bad_input_cases(SCHEMA, model="churn", **LIMITS) if c.name == "nan_literal")
    assert b"NaN" in case.body and case.detail == ("tenure", "non_finite")


# ------------------------------------------------------------------------------------ error responses
CASE = BadInputCase("unknown_feature", b"{}", 422, "schema_violation", "churn", (UNKNOWN_FEATURE, "unknown_feature"))


def _error(code: str, details: list | None = None) -> bytes:
    return json.dumps({"error": {"code": code, "message": "m", "details": details or []}}).encode()


def test_a_server_error_on_a_client_mistake_is_named_as_such():
    [problem] = check_error_response(CASE, 500, _error("internal_error"))
    assert "server error" in problem and "unknown_feature" in problem


def test_wrong_status_non_json_and_missing_detail_are_problems():
    assert "got 200" in check_error_response(CASE, 200, b'{"predictions": []}')[0]
    assert "not a JSON error body" in check_error_response(CASE, 422, b"oops")[0]
    other = _error("schema_violation", [{"row": 0, "field": "plan", "code": "wrong_type", "message": ""}])
    [problem] = check_error_response(CASE, 422, other)
    assert "no detail unknown_feature" in problem and "wrong_type: plan" in problem


def test_the_expected_answer_passes():
    body = _error("schema_violation", [{"row": 0, "field": UNKNOWN_FEATURE, "code": "unknown_feature"}])
    assert check_error_response(CASE, 422, body) == []


# ----------------------------------------------------------------------------------------- predictions
def _doc(preds, version="2"):
    return {"predictions": preds, "model_version": version, "request_id": "r1"}


def test_good_predictions_of_each_task_pass():
    assert check_predictions(_doc([{"probability": 0.3, "label": 0}]), n=1, version="2", task="binary",
                             outputs=expected_outputs("binary"), classes=[0, 1]) == []
    assert check_predictions(_doc([{"probabilities": [0.2, 0.8], "label": "b"}]), n=1, version="2",
                             task="multiclass", outputs=expected_outputs("multiclass"), classes=["a", "b"]) == []
    assert check_predictions(_doc([{"value": 3.5}]), n=1, version="2", task="regression",
                             outputs=expected_outputs("regression")) == []


def test_shape_type_and_version_defects_are_each_reported():
    doc = _doc([{"probability": 1.5, "label": 7}, {"label": 0}, "x"], version="1")
    problems = check_predictions(doc, n=2, version="2", task="binary", outputs=("probability", "label"),
                                 classes=[0, 1])
    text = "\n".join(problems)
    assert "model_version is '1'" in text and "3 predictions for 2 instances" in text
    assert "not a number in [0, 1]" in text and "not one of the classes" in text
    assert "prediction 1 lacks 'probability'" in text and "prediction 2 is a JSON str" in text


def test_multiclass_probabilities_must_match_the_classes_and_sum_to_one():
    one = check_predictions(_doc([{"probabilities": [0.5, 0.2], "label": "a"}]), n=1, version="2",
                            task="multiclass", outputs=("probabilities", "label"), classes=["a", "b"])
    assert "sum to 0.7000" in one[0]
    two = check_predictions(_doc([{"probabilities": [1.0], "label": "a"}]), n=1, version="2", task="multiclass",
                            outputs=("probabilities", "label"), classes=["a", "b"])
    assert "1 entries for 2 classes" in two[0]


def test_regression_value_must_be_a_finite_number():
    [problem] = check_predictions(_doc([{"value": True}]), n=1, version="2", task="regression", outputs=("value",))
    assert "not a finite number" in problem


def test_outputs_come_from_the_signature_when_it_lists_them():
    assert expected_outputs("binary", {"outputs": ["score"]}) == ("score",)
    assert expected_outputs("binary", {"task": "binary"}) == ("probability", "label")


def test_a_data_row_becomes_a_json_instance():
    import datetime as dt

    import numpy as np

    row = {"tenure": np.int64(3), "usage": float("nan"), "when": dt.datetime(2026, 1, 1), "churned": 1}
    assert as_request_instance(row, ["tenure", "usage", "when", "missing"]) == {
        "tenure": 3, "usage": None, "when": "2026-01-01T00:00:00"}


# ------------------------------------------------------------------------------------------------ load
def test_load_figures_count_qps_of_successes_and_quantiles():
    f = load_figures([float(i) for i in range(1, 101)], [200] * 100 + [503, 0], 2.0)
    assert (f.requests, f.ok, f.errors, f.qps) == (102, 100, 2, 50.0)
    assert f.p50_ms == pytest.approx(50.5) and f.p99_ms == pytest.approx(99.01)
    assert f.statuses == {"0": 1, "503": 1}
    assert load_figures([], [], 0.0).p99_ms is None


def test_an_interleaved_load_takes_turns_in_blocks_neither_version_always_first():
    plan = interleaved_blocks(["2", "1"], 10, 4)
    assert plan == [("2", 0, 4), ("1", 0, 4), ("1", 4, 8), ("2", 4, 8), ("2", 8, 10), ("1", 8, 10)]
    for v in ("1", "2"):  # every version gets every body once
        assert sorted(i for w, a, b in plan if w == v for i in range(a, b)) == list(range(10))
    with pytest.raises(ValueError):
        interleaved_blocks(["1"], 10, 0)


def test_an_interleaved_load_gives_each_version_its_own_figures():
    samples = [("2", 200, 10.0)] * 50 + [("1", 200, 30.0)] * 50 + [("2", 503, 5.0)]
    f = interleaved_figures(samples, {"2": 0.5, "1": 1.5})
    assert (f["2"].requests, f["2"].ok, f["2"].errors, f["2"].statuses) == (51, 50, 1, {"503": 1})
    assert f["2"].p99_ms == pytest.approx(10.0) and f["1"].p99_ms == pytest.approx(30.0)
    assert f["2"].qps == pytest.approx(100.0) and f["1"].qps == pytest.approx(50 / 1.5)  # over its own blocks' time


def _figures(p99: float | None, qps: float = 100.0, errors: int = 0) -> LoadFigures:
    return LoadFigures(100, 100 - errors, errors, 1.0, qps, None if p99 is None else p99 / 2, p99,
                       {"503": errors} if errors else {})


def test_p99_gate_compares_with_the_champion():
    assert load_gate(_figures(19.9), _figures(10.0), max_p99_increase_pct=100, min_qps=None).passed
    gate = load_gate(_figures(20.1), _figures(10.0), max_p99_increase_pct=100, min_qps=None)
    assert not gate.passed and gate.p99_limit_ms == pytest.approx(20.0)
    assert "max_p99_increase_pct" in gate.reasons[0] and gate.p99_exceeded


def test_a_p99_miss_is_flagged_apart_from_errors_and_qps_so_only_it_is_confirmed():
    assert not load_gate(_figures(19.9), _figures(10.0), max_p99_increase_pct=100, min_qps=None).p99_exceeded
    gate = load_gate(_figures(30.0, qps=5.0), _figures(10.0), max_p99_increase_pct=100, min_qps=10)
    assert gate.p99_exceeded and len(gate.reasons) == 2  # the caller confirms only a p99-only miss


def test_without_a_champion_only_min_qps_applies():
    gate = load_gate(_figures(500.0, qps=5.0), None, max_p99_increase_pct=0, min_qps=10)
    assert not gate.passed and len(gate.reasons) == 1 and "min_qps" in gate.reasons[0]
    assert "no champion" in gate.notes[0]
    assert load_gate(_figures(500.0), None, max_p99_increase_pct=0, min_qps=None).passed


def test_failed_requests_fail_the_load_and_an_unmeasured_champion_skips_the_p99_gate():
    gate = load_gate(_figures(10.0, errors=3), _figures(None), max_p99_increase_pct=10, min_qps=None)
    assert not gate.passed and "3 of 100 requests failed" in gate.reasons[0]
    assert "the champion answered no request" in gate.notes[0]
    assert "gate off" in load_gate(_figures(10.0), _figures(1.0), max_p99_increase_pct=None,
                                   min_qps=None).notes[0]


# ---------------------------------------------------------------------------------------------- results
def test_result_round_trips_through_json_and_lists_reasons():
    result = PreExposureResult("3", False, [
        ExposureCheck("infrastructure", True, "ok", {"peak_memory_mb": 300.0}),
        ExposureCheck("contract", False, "missing_feature: loyalty_score", {"problems": 1}),
        ExposureCheck("load", True, "skipped", {"skipped": True}),
    ], 1000.0, 2.5)
    back = PreExposureResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert back == result
    assert back.reasons() == ["contract: missing_feature: loyalty_score"]


def test_the_preview_config_never_touches_the_live_app_or_its_log():
    cfg = load_config(None, ["serving.route_prefix=/staging", "serving.app_name=churn-staging"])
    preview = preview_config(cfg)
    assert preview.serving.app_name == "churn-staging-preview"
    assert preview.serving.route_prefix == "/staging/preview"
    assert not preview.serving.prediction_log.enabled
    assert cfg.serving.prediction_log.enabled and cfg.serving.app_name == "churn-staging"
    assert preview_config(load_config(None)).serving.route_prefix == "/preview"


# ------------------------------------------------------------------------------------ runner internals
def test_expected_inputs_come_from_the_test_split_in_the_lineage(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raymlops.control import preexposure
    from raymlops.registry import tracking

    (tmp_path / "prepared" / "test").mkdir(parents=True)
    rows = [{"customer_id": f"c{i}", "tenure": i, "usage": None, "plan": "basic", "tier": 2, "senior": True,
             "churned": 1, "event_ts": None} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "prepared" / "test" / "part-0.parquet")
    step = SimpleNamespace(artifacts={"prepared": {"uri": str(tmp_path / "prepared")}})
    monkeypatch.setattr(tracking.MetadataStore, "lineage", lambda self, name, version: SimpleNamespace(steps=[step]))
    cfg = load_config(None, [f"storage_uri={tmp_path / 'store'}", f"tracking_uri=sqlite:///{tmp_path / 'm.db'}"])
    target = preexposure._Target("3", None, SCHEMA, {}, {}, "binary", [0, 1])
    inputs = preexposure._expected_inputs(cfg, target, "1", 3)
    assert inputs.source.startswith("test split") and len(inputs.rows) == 3
    # What a client sends: features and ids, never the label or the event time.
    assert inputs.rows[0] == {"customer_id": "c0", "tenure": 0, "usage": None, "plan": "basic", "tier": 2,
                              "senior": True}
    _validator(SCHEMA).validate(json.dumps({"instances": inputs.rows}).encode())


def test_no_expected_inputs_is_a_reason_that_says_the_fix(tmp_path, monkeypatch):
    from raymlops.control import preexposure
    from raymlops.errors import RegistryError
    from raymlops.registry import tracking

    def no_lineage(self, name, version):
        raise RegistryError("no such version")

    monkeypatch.setattr(tracking.MetadataStore, "lineage", no_lineage)
    cfg = load_config(None, [f"storage_uri={tmp_path / 'store'}", f"tracking_uri=sqlite:///{tmp_path / 'm.db'}"])
    target = preexposure._Target("3", None, SCHEMA, {}, {}, "binary", [0, 1])
    inputs = preexposure._expected_inputs(cfg, target, "1", 3)
    assert inputs.rows == [] and "no expected inputs" in inputs.missing
    assert "pre_exposure.contract=false" in inputs.missing


def test_a_step_that_overruns_its_budget_is_given_up_with_the_fix():
    import time

    from raymlops.control.preexposure import _bounded
    from raymlops.errors import ServingError

    with pytest.raises(ServingError, match="pre_exposure.timeout_s"):
        _bounded(lambda: time.sleep(2), 0.05, "deploying the preview app")
    with pytest.raises(ValueError, match="boom"):
        _bounded(lambda: (_ for _ in ()).throw(ValueError("boom")), 5, "x")
    assert _bounded(lambda: 7, 5, "x") == 7
