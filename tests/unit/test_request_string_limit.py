"""serving.max_string_length: a string value over the limit is a 422 naming the field, whatever column holds it."""

from __future__ import annotations

import json

import pytest

from raymlops.core.request_validation import DEFAULT_MAX_STRING_LENGTH, RequestError, RequestValidator
from tests.data_helpers import CHURN_SCHEMA

GOOD = {"tenure": 12, "usage": 3.5, "plan": "basic", "region": "east", "tier": 2, "senior": True, "zone": "a",
        "rate": 0.5}


def _validate(*instances, limit: int = 16) -> None:
    RequestValidator(CHURN_SCHEMA, max_body_bytes=4 << 20, max_instances=10,
                     max_string_length=limit).validate(json.dumps({"instances": list(instances)}).encode())


def test_a_long_categorical_string_is_refused_naming_field_and_row():
    with pytest.raises(RequestError) as err:
        _validate(GOOD, {**GOOD, "plan": "p" * 17})
    e = err.value
    assert (e.status, e.code) == (422, "schema_violation")
    assert [(d["row"], d["field"], d["code"]) for d in e.details] == [(1, "plan", "string_too_long")]
    assert "17 characters" in e.details[0]["message"] and "serving.max_string_length" in e.details[0]["message"]
    _validate({**GOOD, "plan": "p" * 16})  # at the limit: served (an unseen category)


def test_a_megabyte_string_is_refused_by_default_and_not_echoed():
    assert DEFAULT_MAX_STRING_LENGTH == 1024
    huge = "x" * (1 << 20)
    with pytest.raises(RequestError) as err:
        _validate({**GOOD, "zone": huge}, limit=DEFAULT_MAX_STRING_LENGTH)
    assert err.value.details[0]["field"] == "zone" and len(json.dumps(err.value.to_body())) < 1000


def test_a_megabyte_unknown_key_is_not_echoed_back():
    with pytest.raises(RequestError) as err:
        _validate({**GOOD, "k" * (1 << 20): 1})
    assert err.value.details[0]["code"] == "unknown_feature" and len(json.dumps(err.value.to_body())) < 2000
