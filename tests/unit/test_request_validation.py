"""Request validation: the 400 / 413 / 422 contract, one detail per field and row, and columns the model accepts."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest

from raymlops.core.request_validation import (
    MAX_DETAILS,
    ParsedRequest,
    RequestError,
    RequestValidator,
    validate_request,
)
from raymlops.core.schema import infer_schema
from raymlops.core.sketches import profile_table
from raymlops.core.transform import apply_transform, fit_transform
from tests.data_helpers import CHURN_SCHEMA

SCHEMA = CHURN_SCHEMA
GOOD = {"tenure": 12, "usage": 3.5, "plan": "basic", "region": "east", "tier": 2, "senior": True, "zone": "a",
        "rate": 0.5}
LIMIT = 4096


def validator(**kw) -> RequestValidator:
    opts = {"max_body_bytes": LIMIT, "max_instances": 5, "closed_domains": {"region"}} | kw
    return RequestValidator(SCHEMA, **opts)


def body(*instances, **top) -> bytes:
    return json.dumps({"instances": list(instances), **top}).encode()


def raw(text: str) -> bytes:
    return text.encode()


def row(**changes) -> dict:
    out = dict(GOOD)
    for key, value in changes.items():
        if value is DROP:
            out.pop(key)
        else:
            out[key] = value
    return out


DROP = object()
NAN_ROW = raw('{"instances": [{"tenure": NaN, "usage": 1, "plan": "basic", "region": "east", "tier": 1, '
              '"senior": true, "zone": "a", "rate": 1}]}')


def with_literal(field: str, literal: str) -> bytes:
    text = json.dumps({"instances": [row(**{field: "@@"})]})
    return text.replace('"@@"', literal).encode()


# (body, status, error code, (row, field, detail code) or None)
BAD = {
    "body over the limit": (b"{" + b" " * LIMIT + b"}", 413, "body_too_large", None),
    "empty body": (b"", 400, "malformed_json", None),
    "truncated JSON": (raw('{"instances": ['), 400, "malformed_json", None),
    "not UTF-8": (b"\xff\xfe{}", 400, "malformed_json", None),
    "single quotes": (raw("{'instances': []}"), 400, "malformed_json", None),
    "nested too deeply": (b"[" * 2000 + b"]" * 2000, 400, "malformed_json", None),
    "top-level list": (raw("[]"), 400, "invalid_body", None),
    "top-level string": (raw('"hi"'), 400, "invalid_body", None),
    "top-level null": (raw("null"), 400, "invalid_body", None),
    "no instances key": (raw("{}"), 400, "invalid_body", None),
    "instances an object": (raw('{"instances": {"tenure": 1}}'), 400, "invalid_body", None),
    "instances null": (raw('{"instances": null}'), 400, "invalid_body", None),
    "unknown top-level key": (body(GOOD, parameters={}), 400, "invalid_body", None),
    "empty instances": (body(), 422, "empty_instances", None),
    "too many instances": (body(*[GOOD] * 6), 422, "too_many_instances", None),
    "instance is a list": (body([1, 2]), 422, "schema_violation", (0, None, "not_an_object")),
    "instance is null": (body(GOOD, None), 422, "schema_violation", (1, None, "not_an_object")),
    "unknown feature": (body(row(colour="red")), 422, "schema_violation", (0, "colour", "unknown_feature")),
    "label sent": (body(row(churned=1)), 422, "schema_violation", (0, "churned", "label_not_allowed")),
    "missing numeric": (body(row(tenure=DROP)), 422, "schema_violation", (0, "tenure", "missing_feature")),
    "missing categorical": (body(row(plan=DROP)), 422, "schema_violation", (0, "plan", "missing_feature")),
    "null numeric": (body(row(tenure=None)), 422, "schema_violation", (0, "tenure", "null_value")),
    "null categorical": (body(row(plan=None)), 422, "schema_violation", (0, "plan", "null_value")),
    "string for numeric": (body(row(tenure="12")), 422, "schema_violation", (0, "tenure", "wrong_type")),
    "bool for numeric": (body(row(usage=True)), 422, "schema_violation", (0, "usage", "wrong_type")),
    "list for numeric": (body(row(usage=[1])), 422, "schema_violation", (0, "usage", "wrong_type")),
    "object for categorical": (body(row(plan={})), 422, "schema_violation", (0, "plan", "wrong_type")),
    "NaN literal": (NAN_ROW, 422, "schema_violation", (0, "tenure", "non_finite")),
    "Infinity literal": (with_literal("usage", "Infinity"), 422, "schema_violation", (0, "usage", "non_finite")),
    "-Infinity literal": (with_literal("usage", "-Infinity"), 422, "schema_violation", (0, "usage", "non_finite")),
    "overflowing float": (with_literal("usage", "1e400"), 422, "schema_violation", (0, "usage", "non_finite")),
    "overflowing integer": (with_literal("tenure", "1" + "0" * 400), 422, "schema_violation",
                            (0, "tenure", "non_finite")),
    "NaN categorical": (with_literal("plan", "NaN"), 422, "schema_violation", (0, "plan", "non_finite")),
    "number for string category": (body(row(plan=7)), 422, "schema_violation", (0, "plan", "wrong_type")),
    "bool for integer category": (body(row(tier=True)), 422, "schema_violation", (0, "tier", "wrong_type")),
    "fraction for integer category": (body(row(tier=2.5)), 422, "schema_violation", (0, "tier", "wrong_type")),
    "number for bool category": (body(row(senior=1)), 422, "schema_violation", (0, "senior", "wrong_type")),
    "outside a closed domain": (body(row(region="mars")), 422, "schema_violation",
                                (0, "region", "outside_domain")),
    "id is an object": (body(row(customer_id={"a": 1})), 422, "schema_violation",
                        (0, "customer_id", "wrong_type")),
    "timestamp is NaN": (with_literal("event_ts", "NaN"), 422, "schema_violation", (0, "event_ts", "non_finite")),
    "second row bad": (body(GOOD, row(usage="x")), 422, "schema_violation", (1, "usage", "wrong_type")),
}


def test_at_least_thirty_kinds_of_bad_request():
    assert len(BAD) >= 30


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_request_gets_status_code_and_json_detail(case):
    payload, status, code, detail = BAD[case]
    with pytest.raises(RequestError) as info:
        validator().validate(payload)
    err = info.value
    assert (err.status, err.code) == (status, code), err.message
    doc = json.loads(json.dumps(err.to_body(), allow_nan=False))  # strict JSON all the way down
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message", "details"}
    assert doc["error"]["code"] == code and doc["error"]["message"]
    if detail is None:
        assert doc["error"]["details"] == []
    else:
        assert [(d["row"], d["field"], d["code"]) for d in doc["error"]["details"]] == [detail]
        d = doc["error"]["details"][0]
        assert set(d) == {"row", "field", "code", "message"} and d["message"]
        if d["field"]:
            assert d["field"] in d["message"]


def test_one_detail_per_field_and_row_sorted_by_row():
    instances = [row(tenure="x", plan=DROP), GOOD, row(usage=None, colour=1, region="mars"), [0]]
    with pytest.raises(RequestError) as info:
        validator().validate(body(*instances))
    got = [(d["row"], d["field"], d["code"]) for d in info.value.details]
    assert sorted(got, key=lambda g: g[0]) == got
    assert set(got) == {
        (0, "tenure", "wrong_type"), (0, "plan", "missing_feature"),
        (2, "colour", "unknown_feature"), (2, "region", "outside_domain"),  # usage is nullable: no detail
        (3, None, "not_an_object"),
    }
    assert len(got) == 5 and "5 problem(s) in 3 instance(s)" in info.value.message


def test_details_are_capped_and_the_total_is_said():
    v = validator(max_instances=1000, max_body_bytes=1 << 20)
    with pytest.raises(RequestError) as info:
        v.validate(body(*[row(tenure="x", usage="y")] * 80))
    assert len(info.value.details) == MAX_DETAILS
    assert "160 problem(s)" in info.value.message and f"first {MAX_DETAILS}" in info.value.message


def test_open_domain_unseen_category_is_served_and_counted():
    parsed = validator().validate(body(row(plan="gold"), row(plan="basic"), row(plan="gold")))
    assert parsed.columns["plan"] == ["gold", "basic", "gold"]
    assert parsed.unseen == {"plan": 2}
    with pytest.raises(RequestError):  # the same value for a closed feature is refused
        validator(closed_domains={"plan"}).validate(body(row(plan="gold")))


def test_good_request_parses_to_model_columns():
    instances = [
        GOOD,
        row(tenure=100, usage=DROP, tier="3", senior=None, zone=3, rate=1.0, customer_id="c2",
            event_ts="2024-01-01T00:00:00Z"),
        row(tenure=5.5, usage=0, tier=1.0, senior=False, zone="3", rate="0.5", notes="hi"),
    ]
    parsed = validator().validate(body(*instances))
    assert isinstance(parsed, ParsedRequest) and parsed.n == 3 and parsed.instances == instances
    cols = parsed.columns
    assert set(cols) == set(SCHEMA.feature_names)
    np.testing.assert_array_equal(cols["tenure"], [12.0, 100.0, 5.5])
    assert cols["tenure"].dtype == np.float64
    np.testing.assert_array_equal(cols["usage"], [3.5, np.nan, 0.0])  # absent nullable -> NaN (imputed)
    assert cols["plan"] == ["basic"] * 3
    assert cols["tier"] == ["2", "3", "1"]
    assert cols["senior"] == ["true", None, "false"]
    assert cols["zone"] == ["a", "3", "3"]  # a number whose string form is in a string domain
    assert cols["rate"] == ["0.5", "1", "0.5"]  # arrow's float formatting, as the transform uses
    assert parsed.passthrough == {
        "customer_id": [None, "c2", None],
        "event_ts": [None, "2024-01-01T00:00:00Z", None],
        "notes": [None, None, "hi"],
    }
    assert parsed.out_of_range == {"tenure": 1} and parsed.unseen == {}


def test_wrapper_and_large_request():
    rows = [row(tenure=i % 80, usage=float(i)) for i in range(1000)]
    parsed = validate_request(body(*rows), SCHEMA, max_body_bytes=1 << 20, max_instances=1000)
    assert parsed.n == 1000 and parsed.columns["usage"][999] == 999.0
    assert parsed.out_of_range == {"usage": 799}


def test_nan_never_reaches_the_columns():
    v = validator()
    for literal in ("NaN", "Infinity", "-Infinity", "1e999", "-1e999"):
        with pytest.raises(RequestError) as info:
            v.validate(with_literal("usage", literal))
        assert info.value.details[0]["code"] == "non_finite"


def test_columns_give_the_same_model_inputs_as_the_training_table():
    table = pa.table({
        "age": [20.0, 31.5, None, 50.0, 42.0, 33.0],
        "calls": pa.array([1, 2, 3, None, 4, 2], pa.int64()),
        "plan": ["basic", "premium", "basic", None, "standard", "basic"],
        "flag": [True, False, True, True, None, False],
        "tier": pa.array([1, 2, 3, 1, 2, 2], pa.int64()),
        "y": pa.array([0, 1, 0, 1, 1, 0], pa.int64()),
    })
    cats = {"plan", "flag", "tier", "y"}
    profile = profile_table(table, categorical=cats)
    schema = infer_schema(profile, name="t", task="binary", label="y", timestamp=None, categorical=cats)
    transform = fit_transform(profile, schema)
    rows = table.drop(["y"]).to_pylist()
    rows[0]["plan"] = "gold"  # unseen: out-of-vocabulary on both paths
    parsed = RequestValidator(schema, max_body_bytes=1 << 20, max_instances=100).validate(body(*rows))
    online = apply_transform(transform, parsed.columns)
    offline = apply_transform(transform, pa.Table.from_pylist(rows))
    for key in ("x_num", "x_cat"):
        np.testing.assert_array_equal(online[key], offline[key])
    plan = [c.name for c in transform.categorical].index("plan")
    assert online["x_cat"][0, plan] == 0 and online["x_cat"][1, plan] > 0
    assert not np.isnan(online["x_num"]).any()


def test_request_error_is_json_ready():
    err = RequestError(413, "body_too_large", "too big")
    assert err.to_body() == {"error": {"code": "body_too_large", "message": "too big", "details": []}}
    assert str(err) == "too big" and not math.isnan(err.status)
