"""Live inputs from the prediction log: typed like the frozen schema, and drift equal to data validation's."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raymlops.config import load_config
from raymlops.core.live import VersionHealth, arrow_type, features_table, latency_quantiles, live_drift
from raymlops.core.schema import ColumnSpec, Schema, infer_schema
from raymlops.core.sketches import profile_table, reference_edges
from raymlops.core.validation import validate
from raymlops.data.synthetic import DriftSpec, make_day
from raymlops.data.validate import policy_from_config, profile_columns

LABEL, IDS, TS = "churned", ["customer_id"], "event_ts"


def _json_rows(table: pa.Table) -> list[str]:
    """Instances as the serving app logs them: the features a client sent, as compact JSON."""
    return [json.dumps({k: v for k, v in r.items() if v is not None}, separators=(",", ":"))
            for r in table.to_pylist()]


@pytest.fixture(scope="module")
def setup():
    cfg = load_config(None)
    categorical, skip = profile_columns(cfg)
    train = make_day("2026-01-01", 3000, seed=11)
    reference = profile_table(train, categorical=categorical, skip=skip)
    schema = infer_schema(reference, name=cfg.name, task="binary", label=LABEL, timestamp=TS, id_columns=IDS)
    return cfg, categorical, skip, reference, schema


def _validation_drift(cfg, categorical, skip, reference, schema, data: pa.Table):
    """What ``validate_data`` computes for ``data`` (its Ray Data profile is this profile, merged per block)."""
    edges = reference_edges(reference, cfg.validation.histogram_bins)
    current = profile_table(data, categorical=categorical, skip=skip, edges=edges)
    observed = {f.name: str(f.type) for f in data.schema}
    return validate(schema, reference, current, policy_from_config(cfg), observed_dtypes=observed).drift


@pytest.mark.parametrize("drift", [None, DriftSpec(features={"monthly_charges": (30.0, 1.0)},
                                                   categories={"plan": {"premium": 0.7}})])
def test_live_drift_equals_data_validation_drift(setup, drift):
    cfg, categorical, skip, reference, schema = setup
    live = make_day("2026-02-01", 800, seed=3, drift=drift)
    expected = _validation_drift(cfg, categorical, skip, reference, schema, live)
    sent = live.drop_columns([LABEL, TS, *IDS])  # what a client sends: the features only
    got = live_drift(features_table(_json_rows(sent), schema), schema, reference, policy_from_config(cfg))
    assert [d.to_dict() for d in got] == [d.to_dict() for d in expected]
    drifted = {d.feature for d in got if d.drifted}
    if drift is None:
        assert drifted == set()
    else:
        assert {"monthly_charges", "plan"} <= drifted


def test_features_table_types_and_nulls(setup):
    *_, schema = setup
    table = features_table(['{"region":"west","tenure_months":3,"monthly_charges":20,"extra":[1]}', None,
                            "not json", '{"tenure_months":"x"}'], schema)
    assert table.schema.names == schema.feature_names
    assert table.num_rows == 4
    assert str(table.schema.field("tenure_months").type) == "int64"
    assert table.column("monthly_charges").to_pylist() == [20.0, None, None, None]
    assert table.column("tenure_months").to_pylist() == [3, None, None, None]


def test_empty_inputs(setup):
    cfg, *_, reference, schema = setup
    empty = features_table([], schema)
    assert empty.num_rows == 0 and empty.schema.names == schema.feature_names
    assert live_drift(empty, schema, reference, policy_from_config(cfg)) == []
    one = features_table(['{"region":"west"}'], schema)
    assert live_drift(one, schema, None, policy_from_config(cfg)) == []
    assert latency_quantiles(pa.array([], pa.float64()), pa.array([], pa.string()), [0.5, 0.99]) == [None, None]


_VALUES = {
    "double": st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    "int64": st.integers(-(2**53), 2**53),
    "string": st.text(max_size=8),
    "bool": st.booleans(),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(sorted(_VALUES)), min_size=1, max_size=4).flatmap(
    lambda types: st.tuples(st.just(types), st.lists(
        st.tuples(*(st.one_of(st.none(), _VALUES[t]) for t in types)), max_size=30))))
def test_features_table_round_trips_logged_rows(case):
    types, rows = case
    names = [f"f{i}" for i in range(len(types))]
    schema = Schema("t", 1, "binary", [ColumnSpec(n, "feature", "numeric", t) for n, t in zip(names, types, strict=True)])
    original = pa.table({n: pa.array([r[i] for r in rows], arrow_type(t))
                         for i, (n, t) in enumerate(zip(names, types, strict=True))})
    assert features_table(_json_rows(original), schema).equals(original)


def test_latency_quantiles_per_request_max():
    lat = pa.array([10.0, 30.0, 20.0, 5.0, math.nan])
    rids = pa.array(["a", "a", "b", "c", "d"])
    # a -> 30 (its slowest row), b -> 20, c -> 5; d has no finite latency
    assert latency_quantiles(lat, rids, [0.0, 0.5, 1.0]) == [5.0, 20.0, 30.0]


def test_arrow_type_of_schema_dtypes():
    assert arrow_type("double") == pa.float64()
    assert arrow_type("timestamp[us, tz=UTC]") == pa.timestamp("us", tz="UTC")
    assert arrow_type("dictionary<values=string, indices=int32, ordered=0>") == pa.string()
    assert arrow_type("something odd") == pa.string()


def test_version_health_round_trips_json():
    h = VersionHealth("3", "canary", 10, 1, 10.0, 1.5, 9.0, 12, 4, "roc_auc", 0.75, 0.8,
                      [{"feature": "x", "metric": "psi", "value": 0.5, "threshold": 0.2, "drifted": True,
                        "note": ""}], ["x"], "against frozen reference")
    doc = json.loads(json.dumps(h.to_dict(), allow_nan=False))
    back = VersionHealth.from_dict(doc)
    assert back == h
    assert back.drift_results()[0].drifted
