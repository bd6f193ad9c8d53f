"""Schema inference from a profile, and its human-editable YAML form."""

import numpy as np
import pyarrow as pa
import pytest
import yaml

from raymlops.core.schema import ColumnSpec, Schema, infer_schema
from raymlops.core.sketches import merge_profiles, profile_table
from raymlops.errors import DataError, SchemaError


def _table(n=400, seed=0) -> pa.Table:
    rng = np.random.default_rng(seed)
    usage = rng.gamma(2.0, 10.0, n)
    return pa.table({
        "customer_id": pa.array([f"c{i}" for i in range(n)]),
        "event_ts": pa.array(np.arange(n), pa.timestamp("us", tz="UTC")),
        "region": rng.choice(["north", "south", "east"], n),
        "tenure_months": rng.integers(0, 72, n),
        "usage_gb": pa.array(np.where(rng.random(n) < 0.1, np.nan, usage), from_pandas=True),
        "churned": rng.integers(0, 2, n),
    })


def _profile(table=None):
    return profile_table(table if table is not None else _table(), categorical={"churned"},
                         skip={"customer_id", "event_ts"})


def _infer(profile=None, **kw):
    args = dict(name="churn", task="binary", label="churned", timestamp="event_ts", id_columns=["customer_id"])
    return infer_schema(profile if profile is not None else _profile(), **(args | kw))


def test_infer_schema_roles_kinds_domains_and_ranges():
    t = _table()
    s = _infer(_profile(t))
    assert s.name == "churn" and s.version == 1 and s.task == "binary"
    assert [c.role for c in s.columns] == ["label", "timestamp", "id", "feature", "feature", "feature"]
    assert s.feature_names == ["region", "tenure_months", "usage_gb"]
    assert s.numeric_features == ["tenure_months", "usage_gb"] and s.categorical_features == ["region"]
    assert s.label.name == "churned" and s.label.domain == ["0", "1"] and s.label.kind == "categorical"
    assert s.timestamp.kind == "timestamp" and s.timestamp.dtype == "timestamp[us, tz=UTC]"
    assert s.column("customer_id").kind == "string"
    region = s.column("region")
    assert region.domain == ["east", "north", "south"] and not region.nullable
    tenure = s.column("tenure_months")
    lo, hi = t["tenure_months"].to_numpy().min(), t["tenure_months"].to_numpy().max()
    margin = (hi - lo) * 0.1
    assert (tenure.min, tenure.max) == (np.floor(lo - margin), np.ceil(hi + margin))  # integers round outwards
    usage = s.column("usage_gb")
    finite = t["usage_gb"].to_numpy()[np.isfinite(t["usage_gb"].to_numpy())]
    span = finite.max() - finite.min()
    assert usage.min == pytest.approx(finite.min() - span * 0.1) and usage.max == pytest.approx(finite.max() + span * 0.1)


def test_nullable_follows_the_inference_data():
    t = _table().set_column(2, "region", pa.array(["north", None] * 200))
    s = _infer(_profile(t), range_margin_pct=0)
    assert s.column("region").nullable and not s.column("tenure_months").nullable
    assert s.column("tenure_months").min == _table()["tenure_months"].to_numpy().min()


def test_explicit_features_keep_their_order_and_the_rest_is_ignored():
    s = _infer(features=["usage_gb", "region"])
    assert s.feature_names == ["usage_gb", "region"]
    assert s.column("tenure_months").role == "ignored"


def test_missing_label_timestamp_or_feature_raise_data_error_naming_the_column():
    p = _profile(_table().drop_columns(["churned"]))
    with pytest.raises(DataError, match="'churned'.*data.label"):
        _infer(p)
    with pytest.raises(DataError, match="'ts'"):
        _infer(timestamp="ts")
    with pytest.raises(DataError, match="'nope'"):
        _infer(features=["nope"])
    with pytest.raises(DataError, match="'customer_id'.*not profiled"):
        _infer(id_columns=[], features=["customer_id"])


def test_empty_profile_raises_data_error():
    with pytest.raises(DataError, match="0 rows"):
        _infer(_profile(_table().slice(0, 0)))
    with pytest.raises(DataError, match="0 rows"):
        _infer(merge_profiles([]))


def test_categorical_column_profiled_as_numeric_is_refused():
    with pytest.raises(DataError, match="'tenure_months'.*categorical"):
        _infer(categorical=["tenure_months"])


def test_yaml_round_trip_is_exact_and_readable():
    s = _infer()
    text = s.to_yaml()
    assert Schema.from_yaml(text) == s
    assert Schema.from_dict(s.to_dict()) == s
    assert text.startswith("name: churn\nversion: 1\ntask: binary\ncolumns:\n")
    assert "#" not in text and "{" not in text  # block style, no comments
    doc = yaml.safe_load(text)
    assert list(doc["columns"][0]) == ["name", "role", "kind", "dtype", "nullable", "domain"]


def test_hand_edited_yaml_is_accepted():
    text = """
name: churn
version: 2
task: binary
columns:
  - {name: churned, role: label, kind: categorical, dtype: int64, domain: [0, 1]}
  - name: flag
    role: feature
    kind: categorical
    dtype: bool
    nullable: true
    domain: [true, false]
  - {name: x, role: feature, kind: numeric, dtype: double, min: 0, max: 1.5}
"""
    s = Schema.from_yaml(text)
    assert s.label.domain == ["0", "1"] and not s.label.nullable
    assert s.column("flag") == ColumnSpec("flag", "feature", "categorical", "bool", True, ["true", "false"])
    assert (s.column("x").min, s.column("x").max) == (0.0, 1.5)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("name: [unclosed", "not valid YAML at line 1"),
        ("- a list", "expected a mapping"),
        ("name: c\nversion: 1\ntask: binary\ncolumns: []\nextra: 1", "extra: unknown key"),
        ("name: c\nversion: one\ntask: binary\ncolumns: []", "version.*positive integer"),
        ("name: c\nversion: 1\ntask: ranking\ncolumns: []", "task.*binary"),
        ("name: c\nversion: 1\ntask: binary\ncolumns: []", "columns: missing or empty"),
        ("name: c\nversion: 1\ntask: binary\ncolumns:\n- {name: a, role: feture, kind: numeric, dtype: double}",
         r"columns\[0\].role.*use one of"),
        ("name: c\nversion: 1\ntask: binary\ncolumns:\n- {name: a, role: feature, dtype: double}",
         r"columns\[0\].kind: missing"),
        ("name: c\nversion: 1\ntask: binary\ncolumns:\n- {name: a, role: feature, kind: numeric, dtype: double, "
         "colour: red}", r"columns\[0\].colour: unknown key"),
        ("name: c\nversion: 1\ntask: binary\ncolumns:\n- {name: a, role: feature, kind: numeric, dtype: double, "
         "min: 3, max: 1}", "min 3.0 is above max 1.0"),
        ("name: c\nversion: 1\ntask: binary\ncolumns:\n- {name: a, role: feature, kind: numeric, dtype: double, "
         "max: high}", r"columns\[0\].max.*finite number"),
        ("name: c\nversion: 1\ntask: binary\ncolumns:\n- {name: a, role: feature, kind: numeric, dtype: double}\n"
         "- {name: a, role: feature, kind: numeric, dtype: double}", "appears twice"),
    ],
)
def test_malformed_yaml_raises_schema_error_naming_the_key(text, match):
    with pytest.raises(SchemaError, match=match):
        Schema.from_yaml(text, source="v1.yaml")
