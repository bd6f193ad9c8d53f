"""What a model package looks like to MLflow: input/output column specs from the frozen schema, an input example
that the serving validator accepts, and data frames turned into the same columns as a JSON request."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from mlflow.models import ModelSignature
from mlflow.types import Schema as MlflowSchema

from raymlops.core.model_io import (
    frame_records,
    frame_request,
    input_colspecs,
    input_example,
    output_colspecs,
)
from raymlops.core.request_validation import RequestValidator
from raymlops.core.transform import CategoricalColumn, NumericColumn, Transform
from raymlops.errors import DataError
from tests.data_helpers import CHURN_SCHEMA

# A transform over CHURN_SCHEMA's features (the vocabularies are the schema's domains, most frequent first).
TRANSFORM = Transform(
    numeric=[NumericColumn("tenure", 24.0, 24.4, 10.0), NumericColumn("usage", 40.0, 41.26, 9.0)],
    categorical=[CategoricalColumn("plan", ["standard", "basic", "premium"]),
                 CategoricalColumn("region", ["east", "north", "south", "west"]),
                 CategoricalColumn("tier", ["2", "1", "3"]), CategoricalColumn("senior", ["false", "true"]),
                 CategoricalColumn("zone", ["a", "3"]), CategoricalColumn("rate", ["0.5", "1"])],
    label="churned", task="binary", classes=[0, 1],
)


def _validator() -> RequestValidator:
    return RequestValidator(CHURN_SCHEMA, max_body_bytes=1 << 20, max_instances=100)


def test_input_specs_cover_the_features_only_with_types_a_json_client_sends():
    specs = {s["name"]: s for s in input_colspecs(CHURN_SCHEMA)}
    # label, timestamp, id and ignored columns are not inputs
    assert list(specs) == ["tenure", "usage", "plan", "region", "tier", "senior", "zone", "rate"]
    # typed as stored (MLflow refuses int64 data for a double column), a nullable integer as double (NaN)
    assert (specs["tenure"]["type"], specs["usage"]["type"]) == ("long", "double")
    assert (specs["plan"]["type"], specs["tier"]["type"], specs["senior"]["type"], specs["rate"]["type"]) == \
        ("string", "long", "boolean", "double")
    # a nullable feature may be left out, as in the HTTP API
    assert specs["usage"]["required"] is False and specs["senior"]["required"] is False
    assert specs["tenure"]["required"] is True
    # MLflow reads them as its own schema
    parsed = MlflowSchema.from_json(json.dumps(input_colspecs(CHURN_SCHEMA)))
    assert parsed.input_names() == list(specs)


@pytest.mark.parametrize(("task", "classes", "expected"), [
    ("binary", [0, 1], [("probability", "double"), ("label", "long")]),
    ("binary", ["no", "yes"], [("probability", "double"), ("label", "string")]),
    ("multiclass", ["a", "b", "c"], [("probabilities", "array"), ("label", "string")]),
    ("regression", [], [("value", "double")]),
])
def test_output_specs_follow_the_prediction_fields_of_the_task(task, classes, expected):
    specs = output_colspecs(task, classes)
    assert [(s["name"], s["type"]) for s in specs] == expected
    signature = ModelSignature(inputs=MlflowSchema.from_json(json.dumps(input_colspecs(CHURN_SCHEMA))),
                               outputs=MlflowSchema.from_json(json.dumps(specs)))
    assert signature.outputs.input_names() == [name for name, _ in expected]


def test_input_example_is_accepted_by_the_serving_validator_and_uses_known_categories():
    rows = input_example(CHURN_SCHEMA, TRANSFORM, rows=2)
    assert len(rows) == 2
    parsed = _validator().validate(json.dumps({"instances": rows}).encode())
    assert parsed.n == 2 and not parsed.out_of_range and not parsed.unseen
    assert rows[0]["plan"] == "standard" and rows[1]["plan"] == "basic"  # the transform's vocabulary, in order
    assert rows[0]["tier"] == 2 and isinstance(rows[0]["tier"], int)  # native type of an integer category
    assert rows[0]["senior"] is False and rows[0]["rate"] == 0.5
    assert isinstance(rows[0]["tenure"], int) and isinstance(rows[0]["usage"], float)
    assert set(rows[0]) == {s["name"] for s in input_colspecs(CHURN_SCHEMA)}


def test_frame_records_gives_json_values_with_nulls_for_missing_ones():
    frame = pd.DataFrame({
        "tenure": np.array([3, 4], dtype=np.int64),
        "usage": [1.5, np.nan],
        "senior": pd.array([True, None], dtype="boolean"),
        "plan": ["basic", None],
        "event_ts": pd.to_datetime(["2026-01-01T00:00:00Z", None]),
    })
    rows = frame_records(frame)
    assert rows == [
        {"tenure": 3, "usage": 1.5, "senior": True, "plan": "basic", "event_ts": "2026-01-01T00:00:00+00:00"},
        {"tenure": 4, "usage": None, "senior": None, "plan": None, "event_ts": None},
    ]
    assert type(rows[0]["tenure"]) is int  # not numpy.int64: json.dumps must take it
    assert frame_records({"tenure": [1, 2]}) == [{"tenure": 1}, {"tenure": 2}]  # dict of columns
    assert frame_records([{"tenure": 1}]) == [{"tenure": 1}]


def test_frame_request_gives_the_columns_a_json_request_gives():
    rows = input_example(CHURN_SCHEMA, TRANSFORM, rows=2)
    from_frame = frame_request(pd.DataFrame(rows), _validator())
    from_json = _validator().validate(json.dumps({"instances": rows}).encode())
    assert from_frame.columns.keys() == from_json.columns.keys()
    for name, values in from_json.columns.items():
        assert list(from_frame.columns[name]) == list(values), name
    # null in a nullable numeric feature: NaN for the transform to impute, as serving does
    frame = pd.DataFrame(rows).assign(usage=[np.nan, 2.0])
    assert math.isnan(frame_request(frame, _validator()).columns["usage"][0])


def test_frame_request_refuses_what_serving_refuses_and_names_the_field():
    rows = input_example(CHURN_SCHEMA, TRANSFORM, rows=1)
    with pytest.raises(DataError, match="'tenure' cannot be null"):
        frame_request(pd.DataFrame(rows).assign(tenure=[np.nan]), _validator())
    with pytest.raises(DataError, match="'plan' is missing"):
        frame_request(pd.DataFrame(rows).drop(columns=["plan"]), _validator())
    with pytest.raises(DataError, match="'usage' is Infinity"):
        frame_request(pd.DataFrame(rows).assign(usage=[math.inf]), _validator())
    with pytest.raises(DataError, match="no rows"):
        frame_request(pd.DataFrame(columns=list(rows[0])), _validator())


def test_a_nullable_integer_feature_is_a_double_so_pandas_can_hold_its_nulls():
    from raymlops.core.schema import ColumnSpec, Schema

    schema = Schema("s", 1, "regression", [
        ColumnSpec("calls", "feature", "numeric", "int64", nullable=True),
        ColumnSpec("tier", "feature", "categorical", "int64", nullable=True, domain=["1", "2"]),
        ColumnSpec("note", "feature", "string", "string"),
    ])
    assert [(s["type"], s["required"]) for s in input_colspecs(schema)] == \
        [("double", False), ("double", False), ("string", True)]
    # a float that is a whole number is the integer category, as a JSON client's 2.0 is
    columns = frame_request(pd.DataFrame({"calls": [np.nan], "tier": [2.0], "note": ["x"]}),
                            RequestValidator(schema, max_body_bytes=1 << 20, max_instances=10)).columns
    assert math.isnan(columns["calls"][0]) and columns["tier"] == ["2"]
