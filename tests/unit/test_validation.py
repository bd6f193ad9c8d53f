"""validate(): every schema-skew kind is caught on a crafted table, clean data passes, drift is reported."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from raymlops.core.schema import Schema, infer_schema
from raymlops.core.sketches import profile_table, reference_edges
from raymlops.core.validation import (
    ReferenceSource,
    ValidationPolicy,
    ValidationReport,
    dtype_compatible,
    validate,
)
from raymlops.errors import ConfigError, DataError, DataValidationError

N = 2000
SKIP = {"customer_id", "event_ts"}


def make(n: int = N, seed: int = 0, shift: float = 0.0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({
        "customer_id": pa.array([f"c{seed}-{i}" for i in range(n)]),
        "event_ts": pa.array(np.arange(n) * 1_000_000, pa.timestamp("us", tz="UTC")),
        "region": rng.choice(["north", "south", "east", "west"], n),
        "plan": pa.array(rng.choice(["basic", "premium"], n)).dictionary_encode(),
        "tenure_months": rng.integers(0, 72, n),
        "monthly_charges": rng.normal(70.0 + shift, 15.0, n),
        "usage_gb": pa.array(np.where(rng.random(n) < 0.2, None, rng.gamma(2.0, 10.0, n))),
        "churned": rng.integers(0, 2, n),
    })


def profile(t: pa.Table, edges=None):
    return profile_table(t, categorical={"churned"}, skip=SKIP, edges=edges)


def dtypes(t: pa.Table) -> dict[str, str]:
    return {f.name: str(f.type) for f in t.schema}


@pytest.fixture(scope="module")
def ref():
    return profile(make(seed=1))


@pytest.fixture(scope="module")
def schema(ref):
    return infer_schema(ref, name="churn", task="binary", label="churned", timestamp="event_ts",
                        id_columns=["customer_id"])


def check(schema, ref, t, policy=None, with_reference=True):
    edges = reference_edges(ref, 10) if with_reference else None
    return validate(schema, ref if with_reference else None, profile(t, edges), policy or ValidationPolicy(),
                    observed_dtypes=dtypes(t))


def kinds(report) -> set[tuple[str, str]]:
    return {(a.feature, a.kind) for a in report.anomalies}


def replace(t: pa.Table, name: str, values) -> pa.Table:
    return t.set_column(t.schema.get_field_index(name), name, values)


def test_clean_data_from_another_seed_is_ok_and_every_feature_gets_a_drift_result(schema, ref):
    report = check(schema, ref, make(seed=2))
    assert report.anomalies == []
    assert report.decision == "OK"
    assert [d.feature for d in report.drift] == schema.feature_names
    assert all(d.value is not None and not d.drifted for d in report.drift)
    metrics = {d.feature: d.metric for d in report.drift}
    assert metrics["region"] == "linf" and metrics["monthly_charges"] == "psi"


def test_the_inference_data_itself_raises_nothing(schema, ref):
    assert check(schema, ref, make(seed=1)).decision == "OK"


def test_unexpected_column(schema, ref):
    t = make(seed=2).append_column("coupon", pa.array(np.ones(N)))
    report = check(schema, ref, t)
    assert kinds(report) == {("coupon", "unexpected_column")} and report.decision == "STOP"
    assert "coupon" in report.anomalies[0].message and "schema" in report.anomalies[0].message


def test_missing_feature_and_label(schema, ref):
    t = make(seed=2).drop_columns(["plan", "churned"])
    assert kinds(check(schema, ref, t)) == {("plan", "missing_column"), ("churned", "missing_column")}
    unlabelled = check(schema, ref, t, ValidationPolicy(require_label=False))
    assert kinds(unlabelled) == {("plan", "missing_column")}
    plan = next(d for d in unlabelled.drift if d.feature == "plan")
    assert plan.value is None and not plan.drifted


def test_missing_id_or_timestamp_is_not_schema_skew(schema, ref):
    assert check(schema, ref, make(seed=2).drop_columns(["customer_id"])).anomalies == []


def test_wrong_types(schema, ref):
    t = make(seed=2)
    t = replace(t, "tenure_months", pc.cast(t["tenure_months"], pa.float64()))  # float where int expected
    t = replace(t, "region", pa.array(np.arange(N)))  # number where text expected
    t = replace(t, "event_ts", pc.cast(t["event_ts"], pa.string()))  # skipped columns are typed too
    report = check(schema, ref, t)
    assert kinds(report) == {("tenure_months", "wrong_type"), ("region", "wrong_type"), ("event_ts", "wrong_type")}
    wrong = next(a for a in report.anomalies if a.feature == "tenure_months")
    assert (wrong.observed, wrong.expected) == ("double", "int64")


def test_int_where_float_expected_is_fine(schema, ref):
    t = make(seed=2)
    t = replace(t, "monthly_charges", pc.cast(pc.round(t["monthly_charges"]), pa.int64()))
    assert check(schema, ref, t).anomalies == []
    assert dtype_compatible("double", "int32") and not dtype_compatible("int64", "double")
    assert dtype_compatible("string", "large_string") and dtype_compatible("string", "dictionary<values=string, "
                                                                           "indices=int32, ordered=0>")


def test_unseen_categories_above_the_limit(schema, ref):
    t = make(seed=2)
    region = t["region"].to_numpy(zero_copy_only=False).copy()
    region[:60] = "mars"  # 3% of rows
    report = check(schema, ref, replace(t, "region", pa.array(region)))
    assert kinds(report) == {("region", "unseen_categories")}
    a = report.anomalies[0]
    assert a.observed["categories"] == {"mars": 60} and a.observed["pct"] == pytest.approx(3.0)
    assert "domain" in a.message
    ok = check(schema, ref, replace(t, "region", pa.array(region)), ValidationPolicy(max_unseen_category_pct=5))
    assert ok.anomalies == []


def test_unseen_label_class(schema, ref):
    t = make(seed=2)
    label = t["churned"].to_numpy().copy()
    label[:100] = 2
    assert kinds(check(schema, ref, replace(t, "churned", pa.array(label)))) == {("churned", "unseen_categories")}


def test_null_rate_on_a_non_nullable_feature(schema, ref):
    assert not schema.column("tenure_months").nullable and schema.column("usage_gb").nullable
    t = make(seed=2)
    tenure = t["tenure_months"].to_pylist()
    few, many = list(tenure), list(tenure)
    few[:40] = [None] * 40  # 2%: tolerated
    many[:400] = [None] * 400  # 20%
    assert check(schema, ref, replace(t, "tenure_months", pa.array(few, pa.int64()))).anomalies == []
    report = check(schema, ref, replace(t, "tenure_months", pa.array(many, pa.int64())))
    assert kinds(report) == {("tenure_months", "null_rate")}
    assert report.anomalies[0].observed == pytest.approx(20.0)
    usage = t["usage_gb"].to_pylist()
    usage[:1000] = [None] * 1000  # nullable: a higher null share is no anomaly
    assert check(schema, ref, replace(t, "usage_gb", pa.array(usage, pa.float64()))).anomalies == []


@pytest.mark.parametrize("column", ["usage_gb", "region", "tenure_months"])
def test_all_null_column(schema, ref, column):
    t = make(seed=2)
    report = check(schema, ref, replace(t, column, pa.nulls(N, t.schema.field(column).type)))
    assert kinds(report) == {(column, "all_null")} and report.decision == "STOP"
    drift = next(d for d in report.drift if d.feature == column)
    assert drift.value is None


def test_column_of_arrow_null_type_is_all_null(schema, ref):
    report = check(schema, ref, replace(make(seed=2), "usage_gb", pa.nulls(N)))
    assert kinds(report) == {("usage_gb", "all_null")}


def _with_charges_above(t: pa.Table, n: int, value: float) -> pa.Table:
    charges = t["monthly_charges"].to_numpy().copy()
    charges[:n] = value
    return replace(t, "monthly_charges", pa.array(charges))


def test_out_of_range_values_are_a_value_anomaly_and_drift_not_a_stop(schema, ref):
    report = check(schema, ref, _with_charges_above(make(seed=2), 100, 10_000.0))  # 5% far above the range
    assert report.anomalies == [] and report.decision == "DRIFT"
    (a,) = report.value_anomalies
    assert (a.feature, a.kind) == ("monthly_charges", "out_of_range")
    assert a.observed["pct"] == pytest.approx(5.0, abs=0.1) and a.observed["max"] == 10_000.0
    assert a.expected["max"] == schema.column("monthly_charges").max and a.expected["enforced"] is False
    assert "not a stop" in a.message and "enforce_range" in a.message
    charges = next(d for d in report.drift if d.feature == "monthly_charges")
    assert "outside the recorded range" in charges.note
    assert "outside [" in report.summary() and "STOP" not in report.summary()
    assert report.raise_if_stopped() is None


def test_out_of_range_within_the_tolerance_is_nothing(schema, ref):
    report = check(schema, ref, _with_charges_above(make(seed=2), 10, 10_000.0))  # 0.5% <= 1%
    assert report.value_anomalies == [] and report.decision == "OK"


def test_a_shift_that_leaves_the_range_is_drift_with_its_share(schema, ref):
    moved = make(seed=2, shift=120.0)  # the whole distribution moves past the recorded max
    report = check(schema, ref, moved)
    assert report.decision == "DRIFT" and report.anomalies == []
    assert [a.feature for a in report.value_anomalies] == ["monthly_charges"]
    assert report.value_anomalies[0].observed["pct"] > 50
    assert [d.feature for d in report.drifted] == ["monthly_charges"]


@pytest.mark.parametrize("enforce", [True, frozenset({"monthly_charges"})])
def test_a_range_the_policy_enforces_stops(schema, ref, enforce):
    report = check(schema, ref, _with_charges_above(make(seed=2), 100, 10_000.0),
                   ValidationPolicy(enforce_ranges=enforce))
    assert kinds(report) == {("monthly_charges", "out_of_range")} and report.decision == "STOP"
    assert report.value_anomalies == [] and report.anomalies[0].expected["enforced"] is True
    assert "enforced range" in report.anomalies[0].message


def test_other_columns_stay_recorded_when_the_policy_enforces_one(schema, ref):
    t = _with_charges_above(make(seed=2), 100, 10_000.0)
    report = check(schema, ref, t, ValidationPolicy(enforce_ranges=frozenset({"tenure_months"})))
    assert report.decision == "DRIFT" and [a.feature for a in report.value_anomalies] == ["monthly_charges"]


def test_a_hand_edited_schema_with_enforce_range_stops(schema, ref):
    doc = schema.to_dict()
    for c in doc["columns"]:
        if c["name"] == "monthly_charges":
            c.update(min=0.0, max=120.0, enforce_range=True)
    edited = Schema.from_yaml(yaml.safe_dump(doc))
    t = _with_charges_above(make(seed=2), 100, 150.0)
    report = check(edited, ref, t)
    assert kinds(report) == {("monthly_charges", "out_of_range")} and report.decision == "STOP"
    assert report.anomalies[0].expected == {"max_pct": 1.0, "min": 0.0, "max": 120.0, "enforced": True}
    with pytest.raises(DataValidationError):
        report.raise_if_stopped()


def test_stop_on_drift_also_stops_on_a_value_anomaly(schema, ref):
    t = _with_charges_above(make(seed=2), 100, 10_000.0)
    assert check(schema, ref, t, ValidationPolicy(stop_on_drift=True)).decision == "STOP"
    assert check(schema, ref, t, ValidationPolicy(stop_on_drift=True), with_reference=False).decision == "STOP"


@pytest.mark.parametrize("name", ["nope", "region", "customer_id"])
def test_enforcing_a_column_without_a_range_is_a_config_error(schema, ref, name):
    with pytest.raises(ConfigError, match=f"validation.enforce_ranges: column '{name}'"):
        check(schema, ref, make(seed=2), ValidationPolicy(enforce_ranges=frozenset({name})))


def test_out_of_range_counted_exactly_with_ranges(schema, ref):
    spec = schema.column("monthly_charges")
    t = make(seed=2)
    charges = t["monthly_charges"].to_numpy().copy()
    charges[:30] = spec.max + 1e-6  # just above the bound: 1.5%
    t = replace(t, "monthly_charges", pa.array(charges))
    cur = profile_table(t, categorical={"churned"}, skip=SKIP, ranges={"monthly_charges": (spec.min, spec.max)})
    report = validate(schema, None, cur, ValidationPolicy())
    a = next(a for a in report.value_anomalies if a.kind == "out_of_range")
    assert a.observed["pct"] == pytest.approx(1.5)


def test_reference_source_is_reported(schema, ref):
    source = ReferenceSource("champion", "/refs/v3.json", 3)
    report = validate(schema, ref, profile(make(seed=2, shift=20.0), reference_edges(ref, 10)), ValidationPolicy(),
                      reference_source=source)
    assert report.reference == source and "against champion v3 (/refs/v3.json)" in report.summary()
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["reference"] == "champion v3 (/refs/v3.json)"
    assert ValidationReport.from_dict(doc) == report
    assert ReferenceSource("frozen", "/s/v1.reference.json", 1).describe() == "frozen schema v1 (/s/v1.reference.json)"
    # No reference profile, no reference source: nothing was compared.
    assert validate(schema, None, profile(make(seed=2)), reference_source=source).reference is None


def test_non_finite_values(schema, ref):
    t = make(seed=2)
    charges = t["monthly_charges"].to_numpy().copy()
    charges[:3] = [np.nan, np.inf, -np.inf]
    report = check(schema, ref, replace(t, "monthly_charges", pa.array(charges)))
    assert kinds(report) == {("monthly_charges", "non_finite")}
    assert report.anomalies[0].observed == 3


def test_empty_dataset(schema, ref):
    report = check(schema, ref, make(seed=2).slice(0, 0))
    assert kinds(report) == {("*", "empty_dataset")} and report.decision == "STOP" and report.rows == 0
    assert all(d.value is None for d in report.drift)


def test_drift_is_reported_and_can_stop(schema, ref):
    moved = make(seed=2, shift=20.0)
    report = check(schema, ref, moved)
    assert report.anomalies == [] and report.decision == "DRIFT"
    assert [d.feature for d in report.drifted] == ["monthly_charges"]
    assert check(schema, ref, moved, ValidationPolicy(stop_on_drift=True)).decision == "STOP"
    lenient = ValidationPolicy(feature_rules={"monthly_charges": ("ks", 0.9)})
    relaxed = check(schema, ref, moved, lenient)
    charges = next(d for d in relaxed.drift if d.feature == "monthly_charges")
    assert charges.metric == "ks" and charges.threshold == 0.9 and relaxed.decision == "OK"


def test_without_reference_there_is_no_drift_section(schema, ref):
    report = check(schema, ref, make(seed=2, shift=20.0), with_reference=False)
    assert report.drift == [] and report.reference_rows is None and report.decision == "OK"
    assert "drift was not checked" in report.summary()


def test_schema_and_profile_disagreeing_on_kind_is_a_programming_error(schema, ref):
    cur = profile_table(make(seed=2), skip=SKIP)  # label not profiled as categorical
    with pytest.raises(DataError, match="'churned'.*categorical"):
        validate(schema, ref, cur)


def test_report_round_trip_summary_and_gate(schema, ref):
    t = make(seed=2, shift=20.0).drop_columns(["plan"])
    report = check(schema, ref, t)
    doc = json.loads(json.dumps(report.to_dict()))
    assert ValidationReport.from_dict(doc) == report
    text = report.summary()
    assert text.startswith("STOP: 2,000 rows") and "missing_column on 'plan'" in text
    assert "'monthly_charges' psi" in text
    with pytest.raises(DataValidationError) as err:
        report.raise_if_stopped("file:///r.json")
    assert err.value.exit_code == 3 and err.value.report_uri == "file:///r.json"
    check(schema, ref, make(seed=2)).raise_if_stopped()  # OK: no error


def test_policy_defaults_match_the_config_defaults():
    p = ValidationPolicy()
    assert (p.max_null_pct, p.max_unseen_category_pct, p.max_out_of_range_pct) == (5.0, 1.0, 1.0)
    assert p.numeric_rule == ("psi", 0.2) and p.categorical_rule == ("linf", 0.1)
    assert not p.stop_on_drift and p.require_label and p.enforce_ranges is False


def test_html_report_shows_value_anomalies_and_the_reference(schema, ref):
    from raymlops.core.report_html import render_report

    cur = profile(_with_charges_above(make(seed=2), 100, 10_000.0), reference_edges(ref, 10))
    report = validate(schema, ref, cur, ValidationPolicy(), reference_source=ReferenceSource("champion", "/r.json", 4))
    html = render_report(report, ref, cur)
    assert "Value anomalies (1)" in html and "not a stop" in html
    assert "drift reference: champion v4 (/r.json)" in html
    assert "Value anomalies" not in render_report(check(schema, ref, make(seed=2)), ref, cur)
