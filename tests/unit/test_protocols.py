"""OIP V2, MLflow scoring and version pins translate into the native request: the same rows reach the validator,
protocol mistakes are 400s naming the tensor or key, answers have each protocol's shape."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as triton

from raymlops.core.protocols import (
    Route,
    check_outputs,
    is_oip_path,
    match_route,
    mlflow_instances,
    native_body,
    oip_error_body,
    oip_instances,
    oip_metadata,
    oip_response,
    parse_infer_request,
    pin_aliases,
    resolve_pin,
)
from raymlops.core.request_validation import RequestError, RequestValidator
from tests.data_helpers import CHURN_SCHEMA

FEATURES = CHURN_SCHEMA.feature_names  # tenure, usage, plan, region, tier, senior, zone, rate
ROWS = [
    {"tenure": 12, "usage": 3.5, "plan": "basic", "region": "east", "tier": 2, "senior": True, "zone": "a",
     "rate": 0.5},
    {"tenure": 40, "usage": None, "plan": "premium", "region": "west", "tier": 3, "senior": False, "zone": "3",
     "rate": 1.0},
]
DTYPES = {"tenure": "INT64", "usage": "FP64", "plan": "BYTES", "region": "BYTES", "tier": "INT64", "senior": "BOOL",
          "zone": "BYTES", "rate": "FP64"}


def validate(instances):
    return RequestValidator(CHURN_SCHEMA, max_body_bytes=1 << 20, max_instances=100).validate(
        native_body(instances, 1 << 20))


def same_columns(a, b) -> None:
    assert a.columns.keys() == b.columns.keys()
    for k in a.columns:
        if isinstance(a.columns[k], np.ndarray):
            np.testing.assert_array_equal(a.columns[k], b.columns[k])
        else:
            assert a.columns[k] == b.columns[k], k


def oip_doc(rows, **extra):
    return {"inputs": [{"name": f, "datatype": DTYPES[f], "shape": [len(rows)], "data": [r[f] for r in rows]}
                       for f in FEATURES], **extra}


def refused(fn, *args, status=400, code=None, field=None) -> RequestError:
    with pytest.raises(RequestError) as err:
        fn(*args)
    e = err.value
    assert e.status == status, e.message
    if code:
        assert e.code == code, e.message
    if field:
        assert e.details and e.details[0]["field"] == field, e.details
    return e


# ----------------------------------------------------------------------------------------------------- routes
@pytest.mark.parametrize("path, action, method, scope, version, alias", [
    ("/v1/models/churn:predict", "predict", "POST", "predict", None, None),
    ("/v1/models/churn:feedback", "feedback", "POST", "feedback", None, None),
    ("/v1/models/churn", "info", "GET", "admin", None, None),
    ("/v1/models/churn/versions/3:predict", "predict", "POST", "predict", "3", None),
    ("/v1/models/churn/aliases/champion:predict", "predict", "POST", "predict", None, "champion"),
    ("/v2/models/churn", "metadata", "GET", "predict", None, None),
    ("/v2/models/churn/versions/2", "metadata", "GET", "predict", "2", None),
    ("/v2/models/churn/ready", "model_ready", "GET", None, None, None),
    ("/v2/models/churn/versions/2/ready", "model_ready", "GET", None, "2", None),
    ("/v2/models/churn/infer", "infer", "POST", "predict", None, None),
    ("/v2/models/churn/versions/2/infer", "infer", "POST", "predict", "2", None),
])
def test_model_routes(path, action, method, scope, version, alias):
    assert match_route(path, "churn") == Route(action, method, scope, "churn", version, alias)


@pytest.mark.parametrize("path, action", [("/healthz", "health"), ("/ping", "ping"), ("/invocations", "invocations"),
                                          ("/v2/health/live", "live"), ("/v2/health/ready", "ready")])
def test_fixed_routes(path, action):
    assert match_route(path, "churn").action == action


@pytest.mark.parametrize("path", ["/v2/whatever", "/v1/models/churn:explain", "/v1/models/churn/versions/2:feedback",
                                  "/v1/models/churn/versions/2", "/v2/models/churn/config", "/v3/models/churn"])
def test_unknown_routes_are_404_naming_the_routes(path):
    e = refused(match_route, path, "churn", status=404, code="unknown_route")
    assert ":predict" in e.message


def test_pins_resolve_to_loaded_versions_or_404_naming_them():
    roles = {"1": "champion", "2": "canary", "3": "shadow"}
    assert resolve_pin(roles, "1") is None
    assert resolve_pin(roles, "1", version="2") == resolve_pin(roles, "1", version="v2") == "2"
    assert [resolve_pin(roles, "1", alias=a) for a in ("champion", "canary", "challenger", "shadow")] == \
        ["1", "2", "2", "3"]
    with pytest.raises(RequestError) as err:
        resolve_pin(roles, "1", version="7")
    assert err.value.status == 404 and err.value.code == "unknown_version" and "['1', '2', '3']" in err.value.message
    with pytest.raises(RequestError) as err:
        resolve_pin(roles, "1", alias="staging")
    assert err.value.code == "unknown_alias" and "'champion': '1'" in err.value.message


def test_challenger_is_the_shadow_when_no_canary_and_ambiguous_canaries_have_no_alias():
    assert pin_aliases({"1": "champion", "4": "shadow"}, "1") == {"champion": "1", "shadow": "4", "challenger": "4"}
    assert pin_aliases({"1": "champion", "2": "canary", "3": "canary"}, "1") == {"champion": "1"}


# ----------------------------------------------------------------------------------------------------- OIP
def test_json_tensors_give_the_same_columns_as_native_instances():
    req = parse_infer_request(json.dumps(oip_doc(ROWS, id="r-1")).encode())
    assert req.id == "r-1" and req.outputs is None
    assert oip_instances(req, FEATURES) == ROWS
    same_columns(validate(oip_instances(req, FEATURES)), validate(ROWS))


def test_tritonclient_binary_tensors_decode_to_the_same_rows():
    """The body tritonclient itself builds (binary tensor extension, its default)."""
    inputs = []
    for f in FEATURES:
        values = [r[f] for r in ROWS]
        if f == "usage":
            values = [3.5, 7.25]
        arr = np.array(values, dtype=object if DTYPES[f] == "BYTES" else None)
        if DTYPES[f] == "INT64":
            arr = arr.astype(np.int64)
        t = triton.InferInput(f, [2, 1] if f == "tenure" else [2], DTYPES[f])
        t.set_data_from_numpy(arr.reshape(t.shape()))
        inputs.append(t)
    body, header = triton.InferenceServerClient.generate_request_body(inputs, request_id="abc")
    assert header is not None  # really binary
    req = parse_infer_request(body, str(header))
    rows = oip_instances(req, FEATURES)
    assert rows == [ROWS[0], {**ROWS[1], "usage": 7.25}]
    assert type(rows[0]["tenure"]) is int and type(rows[0]["senior"]) is bool


def test_one_matrix_tensor_takes_the_schema_feature_order():
    req = parse_infer_request(json.dumps({"inputs": [{"name": "input__0", "datatype": "FP64", "shape": [2, 8],
                                                      "data": [[1, 2, 3, 4, 5, 6, 7, 8], list(range(8))]}]}).encode())
    assert oip_instances(req, FEATURES)[0] == dict(zip(FEATURES, [1, 2, 3, 4, 5, 6, 7, 8], strict=True))
    bad = parse_infer_request(json.dumps({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 3],
                                                      "data": [1, 2, 3]}]}).encode())
    e = refused(oip_instances, bad, FEATURES, code="invalid_tensor", field="x")
    assert "tenure" in e.message and "3 column" in e.message


@pytest.mark.parametrize("tensor, code", [
    ({"name": "tenure", "datatype": "INT64", "shape": [2], "data": [1]}, "shape_mismatch"),
    ({"name": "tenure", "datatype": "INT64", "shape": [2], "data": [1, 2.5]}, "wrong_datatype"),
    ({"name": "tenure", "datatype": "INT128", "shape": [1], "data": [1]}, "unknown_datatype"),
    ({"name": "tenure", "datatype": "INT64", "shape": [1, 1, 1], "data": [1]}, "bad_shape"),
    ({"name": "tenure", "datatype": "INT64", "shape": [1]}, "missing_data"),
    ({"name": "plan", "datatype": "BYTES", "shape": [1], "data": [3]}, "wrong_datatype"),
    ({"name": "senior", "datatype": "BOOL", "shape": [1], "data": [1]}, "wrong_datatype"),
])
def test_tensor_mistakes_are_400_naming_the_tensor(tensor, code):
    e = refused(parse_infer_request, json.dumps({"inputs": [tensor]}).encode(), code="invalid_tensor",
                field=tensor["name"])
    assert e.details[0]["code"] == code and tensor["name"] in e.message


def test_request_shape_mistakes():
    refused(parse_infer_request, b"{", code="malformed_json")
    refused(parse_infer_request, b'{"inputs": []}', code="invalid_body")
    refused(parse_infer_request, b'{"inputs": [], "instances": []}', code="invalid_body")
    refused(parse_infer_request, b'{"inputs": [{"name": "a", "datatype": "FP64", "shape": [1], "data": [1]}]}',
            "99", code="invalid_body")  # header longer than the body
    two = {"inputs": [{"name": "tenure", "datatype": "INT64", "shape": [2], "data": [1, 2]},
                      {"name": "usage", "datatype": "FP64", "shape": [1], "data": [1.0]}]}
    refused(oip_instances, parse_infer_request(json.dumps(two).encode()), FEATURES, code="invalid_tensor",
            field="usage")
    dup = {"inputs": [two["inputs"][0], two["inputs"][0]]}
    refused(parse_infer_request, json.dumps(dup).encode(), code="invalid_tensor", field="tenure")
    binary = triton.InferInput("tenure", [2], "INT64")
    binary.set_data_from_numpy(np.array([1, 2], dtype=np.int64))
    body, header = triton.InferenceServerClient.generate_request_body([binary])
    refused(parse_infer_request, body[:-3], str(header), code="invalid_tensor", field="tenure")  # truncated
    refused(parse_infer_request, body + b"xx", str(header), code="invalid_body")  # bytes left over


def test_schema_mistakes_in_tensors_reach_the_validator_as_422_per_field():
    doc = oip_doc(ROWS)
    doc["inputs"][0] = {"name": "tenure", "datatype": "BYTES", "shape": [2], "data": ["12", "x"]}
    doc["inputs"].append({"name": "churned", "datatype": "INT64", "shape": [2], "data": [0, 1]})
    with pytest.raises(RequestError) as err:
        validate(oip_instances(parse_infer_request(json.dumps(doc).encode()), FEATURES))
    assert err.value.status == 422
    assert {(d["field"], d["code"]) for d in err.value.details} == {("tenure", "wrong_type"),
                                                                    ("churned", "label_not_allowed")}
    nan = oip_doc(ROWS[:1])
    nan["inputs"][1]["data"] = [float("nan")]
    with pytest.raises(RequestError) as err:  # a NaN in FP64 data stays a NaN, reported like the native literal
        validate(oip_instances(parse_infer_request(json.dumps(nan).encode()), FEATURES))
    assert [(d["field"], d["code"]) for d in err.value.details] == [("usage", "non_finite")]


def test_metadata_types_each_feature_from_the_schema():
    meta = oip_metadata("churn", ["1", "2"], CHURN_SCHEMA, "binary", [0, 1])
    assert meta["name"] == "churn" and meta["versions"] == ["1", "2"]
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == DTYPES
    assert all(i["shape"] == [-1] for i in meta["inputs"])
    assert meta["outputs"] == [{"name": "probability", "datatype": "FP64", "shape": [-1]},
                               {"name": "label", "datatype": "INT64", "shape": [-1]}]
    multi = oip_metadata("m", ["1"], CHURN_SCHEMA, "multiclass", ["a", "b", "c"], served=["plan", "region"],
                         keys={"customer_id": "string"})
    assert [i["name"] for i in multi["inputs"]] == [f for f in FEATURES if f not in ("plan", "region")] + \
        ["customer_id"]
    assert multi["outputs"][0]["shape"] == [-1, 3] and multi["outputs"][1]["datatype"] == "BYTES"


def test_response_has_one_tensor_per_prediction_field():
    req = parse_infer_request(json.dumps(oip_doc(ROWS)).encode())
    preds = [{"probability": 0.2, "label": 0}, {"probability": 0.9, "label": 1}]
    doc = oip_response("churn", "2", "rid-1", req, "binary", preds)
    assert doc["model_name"] == "churn" and doc["model_version"] == "2" and doc["id"] == "rid-1"
    assert doc["parameters"] == {"request_id": "rid-1"}
    assert doc["outputs"] == [{"name": "probability", "datatype": "FP64", "shape": [2], "data": [0.2, 0.9]},
                              {"name": "label", "datatype": "INT64", "shape": [2], "data": [0, 1]}]
    multi = [{"probabilities": [0.1, 0.9], "label": "b"}, {"probabilities": [0.7, 0.3], "label": "a"}]
    only = parse_infer_request(json.dumps(oip_doc(ROWS, id="c", outputs=[{"name": "probabilities"}])).encode())
    out = oip_response("m", "1", "rid", only, "multiclass", multi)
    assert out["id"] == "c" and out["outputs"] == [
        {"name": "probabilities", "datatype": "FP64", "shape": [2, 2], "data": [0.1, 0.9, 0.7, 0.3]}]
    check_outputs(only, "multiclass")
    refused(check_outputs, only, "binary", code="unknown_output", field="probabilities")


# ----------------------------------------------------------------------------------------------------- MLflow
@pytest.mark.parametrize("doc", [
    {"dataframe_split": {"columns": FEATURES, "data": [[r[f] for f in FEATURES] for r in ROWS], "index": [0, 1]}},
    {"dataframe_records": ROWS},
    {"instances": ROWS},
    {"instances": [[r[f] for f in FEATURES] for r in ROWS]},
    {"inputs": {f: [r[f] for r in ROWS] for f in FEATURES}},
    {"inputs": ROWS, "params": {}},
])
def test_mlflow_formats_give_the_native_rows(doc):
    assert mlflow_instances(json.dumps(doc).encode(), "application/json; charset=utf-8", FEATURES) == ROWS


def test_pandas_nan_is_missing_but_infinity_is_refused():
    body = b'{"dataframe_records": [{"tenure": 1, "usage": NaN}]}'
    assert mlflow_instances(body, None, FEATURES) == [{"tenure": 1, "usage": None}]
    inf = mlflow_instances(b'{"dataframe_records": [{"tenure": 1, "usage": Infinity}]}', None, FEATURES)
    assert b"Infinity" in native_body(inf, 1000)


@pytest.mark.parametrize("body, content_type, status, code", [
    (b"tenure,usage\n1,2", "text/csv", 415, "unsupported_media_type"),
    (b"[1]", None, 400, "invalid_body"),
    (b"{", None, 400, "malformed_json"),
    (json.dumps({"instances": ROWS, "inputs": ROWS}).encode(), None, 400, "invalid_body"),
    (json.dumps({"rows": ROWS}).encode(), None, 400, "invalid_body"),
    (json.dumps({"instances": ROWS, "params": {"temperature": 1}}).encode(), None, 400, "invalid_body"),
    (json.dumps({"dataframe_split": {"columns": ["tenure"], "data": [[1, 2]]}}).encode(), None, 400, "invalid_body"),
    (json.dumps({"inputs": {"tenure": [1, 2], "usage": [1.0]}}).encode(), None, 400, "invalid_body"),
    (json.dumps({"inputs": {"tenure": 1}}).encode(), None, 400, "invalid_body"),
    (json.dumps({"dataframe_records": {"tenure": 1}}).encode(), None, 400, "invalid_body"),
])
def test_mlflow_mistakes(body, content_type, status, code):
    e = refused(mlflow_instances, body, content_type, FEATURES, status=status, code=code)
    assert e.message


def test_translated_rows_over_the_body_limit_are_413():
    e = refused(native_body, ROWS * 10, 200, status=413, code="body_too_large")
    assert "20 rows" in e.message


def test_oip_errors_are_a_string_naming_the_fields_with_the_code_and_details_beside():
    details = [{"row": i, "field": "region", "code": "wrong_type", "message": "send a string"} for i in range(5)]
    body = oip_error_body("schema_violation", "5 problem(s)", details)
    assert body["code"] == "schema_violation" and body["details"] == details
    assert body["error"].startswith("schema_violation: 5 problem(s)") and "row 0 'region': send a string" in \
        body["error"] and body["error"].endswith("(+2 more)")
    assert oip_error_body("unknown_route", "no route")["error"] == "unknown_route: no route"
    assert is_oip_path("/v2") and is_oip_path("/v2/models/x/infer") and not is_oip_path("/v20")
