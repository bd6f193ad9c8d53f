"""Feature store without Ray: definitions, online stores, materialisation, retrieval and key-only requests."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from raymlops.cli import main
from raymlops.core.request_validation import RequestError
from raymlops.core.schema import ColumnSpec, Schema
from raymlops.errors import ConfigError, FeatureStoreError
from raymlops.features.definitions import load_feature_repo, parse_feature_repo
from raymlops.features.example import generate_example
from raymlops.features.materialize import materialize
from raymlops.features.offline import get_historical_features
from raymlops.features.online import OnlineFeatures, encode_keys
from raymlops.features.serving import OnlineRequestValidator
from raymlops.features.stores import MemoryOnlineStore, SQLiteOnlineStore

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 1, 1, tzinfo=UTC)
CONFIG = Path(__file__).parents[2] / "configs" / "features.yaml"


def _repo_doc(root: Path) -> dict:
    doc = yaml.safe_load(CONFIG.read_text())
    for view in doc["feature_views"].values():
        view["source"]["uri"] = str(root / "data" / Path(view["source"]["uri"]).name)
    doc["online_store"]["path"] = str(root / "online.sqlite")
    return doc


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    files = generate_example(str(root / "data"), customers=60, days=10, seed=3)
    (root / "features.yaml").write_text(yaml.safe_dump(_repo_doc(root)))
    return root, files


# ------------------------------------------------------------------------------------------- definitions
def test_the_shipped_repo_is_valid_and_its_digest_ignores_formatting():
    repo = load_feature_repo(CONFIG)
    assert [v.name for v in repo.service("churn_model")] == ["customer_profile", "customer_usage"]
    again = parse_feature_repo(yaml.safe_load(yaml.safe_dump(yaml.safe_load(CONFIG.read_text()), indent=4)))
    assert again.digest == repo.digest and repo.digest.startswith("sha256:")


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["feature_views"]["customer_usage"].update(entity="shop"), "customer_usage.entity: unknown entity"),
    (lambda d: d["feature_services"]["churn_model"]["features"].append("customer_usage:nope"), "has no feature 'nope'"),
    (lambda d: d["feature_views"]["customer_usage"].update(ttl_s=-1), "feature_views.customer_usage.ttl_s"),
    (lambda d: d["feature_views"]["customer_usage"].update(colour="red"), "customer_usage.colour: unknown key"),
    (lambda d: d["feature_views"]["customer_usage"]["features"].update(x={"type": "decimal"}), "features.x.type"),
    (lambda d: d["feature_views"]["customer_usage"]["features"].update(event_ts={"type": "int64"}),
     "keys or timestamps of the view"),
    (lambda d: d["feature_views"]["customer_profile"]["features"].update(usage_gb={"type": "float64"}),
     "comes from both"),
    (lambda d: d.update(online_store={"type": "redis"}), "needs `url`"),
])
def test_invalid_definitions_name_the_key_path_and_the_fix(edit, message):
    doc = yaml.safe_load(CONFIG.read_text())
    edit(doc)
    with pytest.raises(ConfigError, match=message):
        parse_feature_repo(doc, "features.yaml")


def test_unreadable_repo_says_what_to_pass(tmp_path):
    with pytest.raises(ConfigError, match="pass a path like configs/features.yaml"):
        load_feature_repo(tmp_path / "missing.yaml")


# ---------------------------------------------------------------------------------------------- stores
# The stores' shared contract (memory, SQLite, Redis) is one parametrised test: tests/integration/test_online_stores.py
def test_key_encoding_rejects_wrong_types():
    assert encode_keys({"id": "string"}, {"id": ["a", 1, None]}) == ["a", None, None]
    assert encode_keys({"id": "int64"}, {"id": [3, "3", True]}) == ["3", None, None]
    assert encode_keys({"a": "string", "b": "int64"}, {"a": ["x", "y"], "b": [1, None]}) == ["x\x1f1", None]


# ------------------------------------------------------------------------------------ materialise & read
def _latest_offline(repo, keys: list[str], at: dt.datetime) -> dict[str, list]:
    rows = pa.table({"customer_id": keys, "event_ts": pa.array([at] * len(keys), pa.timestamp("us", tz="UTC"))})
    return get_historical_features(repo, "churn_model", rows).drop(["customer_id", "event_ts"]).to_pydict()


def test_online_values_equal_latest_offline_values_after_full_and_incremental_runs(example):
    root, _ = example
    repo = load_feature_repo(root / "features.yaml")
    store = MemoryOnlineStore()
    keys = [f"C{i:06d}" for i in range(60)] + ["unknown"]
    views = repo.service("churn_model")
    for end, full in ((T0 + dt.timedelta(days=4), False), (T0 + dt.timedelta(days=7), False),
                      (T0 + dt.timedelta(days=9, hours=5), True), (T0 + dt.timedelta(days=20), False)):
        results = materialize(repo, full=full, end=end, store=store)
        assert all(r.end_us == int(end.timestamp() * 1e6) for r in results)
        online = OnlineFeatures(store, views, clock=end.timestamp).get({"customer_id": keys})
        assert online == _latest_offline(repo, keys, end)
        assert all(v is None for v in (online[f][-1] for f in online))  # the unknown entity: nulls


def test_first_incremental_run_covers_all_history(example):
    root, _ = example
    repo = load_feature_repo(root / "features.yaml")
    store = MemoryOnlineStore()
    (profile, usage) = materialize(repo, end=T0 + dt.timedelta(days=365), store=store)
    assert profile.start_us is None and profile.entities == 60 and usage.entities == 60
    again = materialize(repo, end=T0 + dt.timedelta(days=365), store=store)
    assert [r.rows for r in again] == [0, 0]


def test_online_lookup_respects_ttl_at_read_time(example):
    root, _ = example
    repo = load_feature_repo(root / "features.yaml")
    store = MemoryOnlineStore()
    materialize(repo, end=T0 + dt.timedelta(days=30), store=store)
    views = repo.service("churn_model")
    fresh = OnlineFeatures(store, views, clock=(T0 + dt.timedelta(days=10)).timestamp).get({"customer_id": ["C000001"]})
    stale = OnlineFeatures(store, views, clock=(T0 + dt.timedelta(days=20)).timestamp).get({"customer_id": ["C000001"]})
    assert fresh["usage_gb"] != [None] and stale["usage_gb"] == [None]  # usage ttl: 3 days
    assert stale["plan"] == fresh["plan"] != [None]  # profile ttl: a year


def test_sqlite_materialisation_survives_a_reopen(example, tmp_path):
    root, _ = example
    repo = load_feature_repo(root / "features.yaml")
    end = T0 + dt.timedelta(days=30)
    materialize(repo, end=end)  # the repo's SQLite store
    store = SQLiteOnlineStore(root / "online.sqlite")
    got = OnlineFeatures(store, repo.service("churn_model"), clock=end.timestamp).get({"customer_id": ["C000007"]})
    store.close()
    assert got == _latest_offline(repo, ["C000007"], end)


# ------------------------------------------------------------------------------------------- historical
def test_historical_retrieval_keeps_rows_order_columns_and_time_zone(example):
    root, files = example
    repo = load_feature_repo(root / "features.yaml")
    labels = pl.read_parquet(files["labels"])
    rows = labels.with_columns(pl.col("event_ts").dt.convert_time_zone("Europe/Paris")).reverse()
    rows = pl.concat([rows, pl.DataFrame({"customer_id": ["nobody"], "event_ts": [T0], "churned": [1]},
                                         schema=rows.schema)])
    out = pl.from_arrow(get_historical_features(repo, "churn_model", rows))
    assert out.select(rows.columns).equals(rows) and out.schema["event_ts"] == pl.Datetime("us", "Europe/Paris")
    assert out.row(-1, named=True)["usage_gb"] is None and out["plan"].null_count() == 1
    with pytest.raises(FeatureStoreError, match="lack column"):
        get_historical_features(repo, "churn_model", rows.drop("event_ts"))
    with pytest.raises(FeatureStoreError, match="already have column"):
        get_historical_features(repo, "churn_model", out.select(["customer_id", "event_ts", "plan"]))


def test_declared_types_are_enforced(tmp_path):
    pq.write_table(pa.table({"id": ["a"], "ts": pa.array([T0]), "x": ["not a number"]}), tmp_path / "v.parquet")
    repo = parse_feature_repo({
        "entities": {"e": {"join_keys": {"id": "string"}}},
        "feature_views": {"v": {"entity": "e", "source": {"uri": str(tmp_path / "v.parquet")},
                                "event_timestamp": "ts", "features": {"x": {"type": "float64"}}}},
        "feature_services": {"s": {"features": ["v"]}},
    })
    with pytest.raises(FeatureStoreError, match="declared type"):
        get_historical_features(repo, "s", pa.table({"id": ["a"], "event_ts": pa.array([T0])}))


# -------------------------------------------------------------------------------------- key-only requests
def _schema() -> Schema:
    return Schema("churn", 1, "binary", [
        ColumnSpec("customer_id", "id", "string", "string"),
        ColumnSpec("plan", "feature", "categorical", "string", domain=["basic", "premium", "standard"]),
        ColumnSpec("usage_gb", "feature", "numeric", "double"),
        ColumnSpec("coupon", "feature", "numeric", "double"),  # a request-time feature
        ColumnSpec("churned", "label", "categorical", "int64"),
    ])


def _spec(root: Path) -> dict:
    repo = load_feature_repo(root / "features.yaml")
    return {"project": repo.project, "service": "churn_model", "online_store": repo.online_store.model_dump(),
            "views": [v.to_dict() for v in repo.service("churn_model")]}


def test_key_only_requests_get_store_features_and_nulls_for_unknown_keys(example):
    root, _ = example
    spec = _spec(root)
    materialize(load_feature_repo(root / "features.yaml"), full=True, end=dt.datetime.now(UTC))
    for view in spec["views"]:
        view["ttl_s"] = None  # the example data is in the past: no TTL, so values are served
    v = OnlineRequestValidator(spec, _schema(), max_body_bytes=10_000, max_instances=10)
    body = {"instances": [{"customer_id": "C000003", "coupon": 1.5}, {"customer_id": "new", "coupon": 0}]}
    parsed = v.validate(json.dumps(body).encode())
    assert set(parsed.columns) == {"plan", "usage_gb", "coupon"}
    assert parsed.columns["plan"][0] in ("basic", "standard", "premium") and parsed.columns["plan"][1] is None
    assert parsed.columns["usage_gb"].dtype == np.float64 and math.isnan(parsed.columns["usage_gb"][1])
    assert parsed.instances[0]["plan"] == parsed.columns["plan"][0]  # the log sees what the model saw


@pytest.mark.parametrize("instance, code, field", [
    ({"customer_id": "C000003", "coupon": 1.0, "plan": "basic"}, "served_by_feature_store", "plan"),
    ({"customer_id": "C000003", "coupon": 1.0, "usage_gb": None}, "served_by_feature_store", "usage_gb"),
    ({"coupon": 1.0}, "missing_entity_key", "customer_id"),
    ({"customer_id": 3, "coupon": 1.0}, "wrong_type", "customer_id"),
    ({"customer_id": "C" * 2000, "coupon": 1.0}, "string_too_long", "customer_id"),  # serving.max_string_length
])
def test_key_only_requests_refuse_store_features_and_bad_keys(example, instance, code, field):
    root, _ = example
    v = OnlineRequestValidator(_spec(root), _schema(), max_body_bytes=10_000, max_instances=10)
    with pytest.raises(RequestError) as err:
        v.validate(json.dumps({"instances": [instance]}).encode())
    assert err.value.status == 422
    assert {(d["code"], d["field"]) for d in err.value.details} == {(code, field)}


# --------------------------------------------------------------------------------------------------- cli
def test_cli_lists_describes_and_materialises(example, capsys):
    root, _ = example
    repo = str(root / "features.yaml")
    assert main(["features", "list", "--repo", repo, "--search", "daily usage"]) == 0
    out = capsys.readouterr().out
    assert "customer_usage" in out and "customer_profile" not in out
    assert main(["features", "describe", "churn_model", "--repo", repo]) == 0
    assert "usage_gb" in capsys.readouterr().out
    assert main(["features", "materialize", "--repo", repo, "--full", "--end", "2026-01-05T00:00:00"]) == 0
    assert "full from the beginning to 2026-01-05" in capsys.readouterr().out
    assert main(["features", "describe", "nope", "--repo", repo]) == 2
    assert main(["features", "materialize", "--repo", repo, "--end", "yesterday"]) == 2


def test_a_feature_repo_gets_the_config_bounds_on_yaml(tmp_path):
    # A feature repo may come from less-trusted hands: an alias bomb is refused before anything walks it.
    levels = ['  - &l0 "lol"'] + [f"  - &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    p = tmp_path / "features.yaml"
    p.write_text("entities:\n" + "\n".join(levels) + "\n")
    with pytest.raises(ConfigError, match=r"feature repo .*features\.yaml.*expand to more than"):
        load_feature_repo(p)
