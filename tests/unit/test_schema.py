"""Schema inference from a profile, and its human-editable YAML form."""

import numpy as np
import pyarrow as pa
import pytest
import yaml

from raymlops.core.schema import ColumnSpec, Schema, infer_schema, widen_range
from raymlops.core.schema_evolution import missing_features, propose_schema, schema_diff
from raymlops.core.sketches import merge_profiles, profile_table
from raymlops.core.validation import ValidationPolicy, validate
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
    margin = (finite.max() - finite.min()) * 0.1
    # Rounded outwards, by less than a hundredth of the margin's order of magnitude.
    assert finite.min() - margin - margin / 100 <= usage.min <= finite.min() - margin
    assert finite.max() + margin <= usage.max <= finite.max() + margin + margin / 100
    assert not usage.enforce_range and not tenure.enforce_range  # inferred ranges are recorded, not enforced


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


def test_enforce_range_round_trips_and_is_written_only_when_set():
    s = _infer()
    assert "enforce_range" not in s.to_yaml()
    tenure = s.column("tenure_months")
    tenure.enforce_range = True
    text = s.to_yaml()
    assert text.count("enforce_range: true") == 1
    assert Schema.from_yaml(text).column("tenure_months").enforce_range


@pytest.mark.parametrize(
    ("column", "match"),
    [
        ("{name: a, role: feature, kind: numeric, dtype: double, min: 0, enforce_range: yes-please}",
         r"columns\[0\].enforce_range.*not a boolean"),
        ("{name: a, role: feature, kind: numeric, dtype: double, enforce_range: true}",
         r"columns\[0\].enforce_range: only a numeric column with min"),
        ("{name: a, role: feature, kind: categorical, dtype: string, domain: [x], enforce_range: true}",
         r"columns\[0\].enforce_range"),
    ],
)
def test_enforce_range_needs_a_numeric_range(column, match):
    with pytest.raises(SchemaError, match=match):
        Schema.from_yaml(f"name: c\nversion: 1\ntask: binary\ncolumns:\n- {column}", source="v1.yaml")


@pytest.mark.parametrize(
    ("lo", "hi", "pct", "integer", "expected"),
    [
        (11.2, 124.8, 10, False, (-0.2, 136.2)),  # margin 11.36: bounds to 0.1
        (0.00123, 0.00456, 10, False, (0.000897, 0.004893)),
        (5.0, 5.0, 10, False, (4.5, 5.5)),  # a constant widens by a share of its value
        (3.0, 70.0, 10, True, (-4.0, 77.0)),  # integers round outwards to whole numbers
        (1.23456789, 2.5, 0, False, (1.23456789, 2.5)),  # no margin: exact
    ],
)
def test_widen_range_rounds_outwards_to_readable_bounds(lo, hi, pct, integer, expected):
    got = widen_range(lo, hi, pct, integer)
    assert got == pytest.approx(expected, rel=1e-12)
    assert got[0] <= lo and got[1] >= hi


# ------------------------------------------------------------------------------------- the next version
def _set(t: pa.Table, name: str, values) -> pa.Table:
    return t.set_column(t.schema.get_field_index(name), name, values)


def _changed_table() -> pa.Table:
    """The inference data after a legitimate change of shape, plus a NaN (bad data) and a new column."""
    t = _table(seed=1)
    n = t.num_rows
    region = t["region"].to_numpy(zero_copy_only=False).copy()
    region[:40] = ["west"] * 20 + ["mars"] * 20  # 10% new categories
    tenure = t["tenure_months"].to_pylist()
    tenure[:80] = [None] * 80  # 20% nulls in a non-nullable column
    usage = t["usage_gb"].to_numpy().copy()
    usage[:50] = 500.0  # far above the recorded range
    t = _set(_set(_set(t, "region", pa.array(region)), "tenure_months", pa.array(tenure, pa.int64())),
             "usage_gb", pa.array(usage, from_pandas=True))  # nulls stay nulls, not NaN
    return t.append_column("coupon", pa.array(np.arange(n) % 3 == 0))


def _report_of(schema: Schema, t: pa.Table, policy=None):
    cur = profile_table(t, categorical={"churned"}, skip={"customer_id", "event_ts"})
    report = validate(schema, None, cur, policy or ValidationPolicy(), observed_dtypes={f.name: str(f.type)
                                                                                       for f in t.schema})
    return report, cur


def test_proposal_from_anomalies_resolves_each_legitimate_change():
    base = _infer()
    report, cur = _report_of(base, _changed_table())
    assert report.decision == "STOP" and {a.kind for a in report.value_anomalies} == {"out_of_range"}
    proposal = propose_schema(base, [*report.anomalies, *report.value_anomalies], cur, version=2)
    new = proposal.schema
    assert new.version == 2 and new.name == base.name and proposal.unresolved == []
    assert {(c.column, c.change) for c in proposal.changes} == {
        ("coupon", "added"), ("region", "domain"), ("tenure_months", "nullable"), ("usage_gb", "range")}
    assert new.column("coupon") == ColumnSpec("coupon", "ignored", "categorical", "bool", nullable=True)
    assert new.column("region").domain == ["east", "mars", "north", "south", "west"]
    assert new.column("tenure_months").nullable
    usage = new.column("usage_gb")
    assert usage.min == base.column("usage_gb").min and usage.max >= 500.0 and not usage.enforce_range
    assert new.feature_names == base.feature_names  # nothing becomes a feature behind the user's back
    # The proposal accepts the data that prompted it.
    again, _ = _report_of(new, _changed_table())
    assert again.decision == "OK" and again.anomalies == [] and again.value_anomalies == []


def test_proposal_is_idempotent_and_its_diff_is_readable():
    base = _infer()
    report, cur = _report_of(base, _changed_table())
    anomalies = [*report.anomalies, *report.value_anomalies]
    first = propose_schema(base, anomalies, cur, version=2).schema
    text = schema_diff(base, first)
    assert text.startswith("--- v1.yaml\n+++ v2.yaml\n")
    assert "+  - mars\n" in text and "+- name: coupon\n" in text and "-version: 1\n+version: 2\n" in text
    # A report made against v1 applied again to v2 (re-based) changes nothing a second time.
    second = propose_schema(first, anomalies, cur, version=3)
    assert second.changes == [] and schema_diff(first, second.schema) == ""


def test_without_the_profile_the_domain_gets_the_listed_examples():
    base = _infer()
    report, _ = _report_of(base, _changed_table())
    new = propose_schema(base, report.anomalies, None, version=2).schema
    assert new.column("region").domain == ["east", "mars", "north", "south", "west"]


def test_an_enforced_range_is_widened_and_stays_enforced():
    base = _infer()
    base.column("usage_gb").enforce_range = True
    report, cur = _report_of(base, _changed_table())
    assert ("usage_gb", "out_of_range") in {(a.feature, a.kind) for a in report.anomalies}
    new = propose_schema(base, report.anomalies, cur, version=2).schema
    assert new.column("usage_gb").enforce_range and new.column("usage_gb").max >= 500.0


def test_bad_data_is_left_unresolved_and_missing_or_retyped_columns_change_the_schema():
    base = _infer()
    t = _table(seed=1)
    usage = t["usage_gb"].to_numpy().copy()
    usage[:5] = np.inf
    t = _set(_set(t, "usage_gb", pa.array(usage, from_pandas=True)), "tenure_months",
             pa.array(t["tenure_months"].to_numpy().astype(str))).drop_columns(["region"])
    report, cur = _report_of(base, t)
    assert {(a.feature, a.kind) for a in report.anomalies} == {
        ("usage_gb", "non_finite"), ("region", "missing_column"), ("tenure_months", "wrong_type")}
    proposal = propose_schema(base, report.anomalies, cur, version=2)
    assert [(a.feature, a.kind) for a in proposal.unresolved] == [("usage_gb", "non_finite")]
    assert "region" not in proposal.schema.names
    tenure = proposal.schema.column("tenure_months")
    assert (tenure.kind, tenure.dtype, tenure.min, tenure.max) == ("categorical", "string", None, None)
    assert tenure.domain == sorted(cur.features["tenure_months"].sketch.counts)
    assert "fix the data" in proposal.summary()


def test_a_missing_label_is_not_resolved_by_dropping_it():
    base = _infer()
    report, cur = _report_of(base, _table(seed=1).drop_columns(["churned"]))
    proposal = propose_schema(base, report.anomalies, cur, version=2)
    assert proposal.changes == [] and [a.kind for a in proposal.unresolved] == ["missing_column"]
    assert proposal.schema.label_name == "churned"


def test_missing_features_names_what_a_champion_would_lose():
    base = _infer()
    dropped = Schema(base.name, 2, base.task, [c for c in base.columns if c.name != "region"])
    assert missing_features(dropped, ["region", "tenure_months", "usage_gb"]) == ["region"]
    assert missing_features(base, ["region", "tenure_months"]) == []
    ignored = Schema(base.name, 2, base.task,
                     [ColumnSpec(c.name, "ignored", c.kind, c.dtype) if c.name == "usage_gb" else c
                      for c in base.columns])
    assert missing_features(ignored, base.feature_names) == ["usage_gb"]  # no longer a feature is lost too
