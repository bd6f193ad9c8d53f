"""The Feast-shaped facade (``raymlops.features.FeatureStore``) and Feast's spellings in the feature repo YAML.

A small local repo: the example parquet data and the SQLite online store; no Ray.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
import yaml

from raymlops.errors import ConfigError, FeatureStoreError
from raymlops.features import FeatureStore
from raymlops.features.definitions import load_feature_repo, parse_feature_repo
from raymlops.features.example import generate_example
from raymlops.features.offline import get_historical_features

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 1, 1, tzinfo=UTC)
CONFIG = Path(__file__).parents[2] / "configs" / "features.yaml"
KEYS = [f"C{i:06d}" for i in range(40)]


def _day(n: float) -> dt.datetime:
    return T0 + dt.timedelta(days=n)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("facade")
    files = generate_example(str(root / "data"), customers=40, days=10, seed=5)
    return root, files


def _repo_doc(root: Path, sqlite: str) -> dict:
    doc = yaml.safe_load(CONFIG.read_text())
    for view in doc["feature_views"].values():
        view["source"]["uri"] = str(root / "data" / Path(view["source"]["uri"]).name)
    doc["online_store"]["path"] = str(root / sqlite)
    return doc


def _store(root: Path, name: str, **kw) -> FeatureStore:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(_repo_doc(root, f"{name}.sqlite")))
    return FeatureStore(path, **kw)


def _latest(store: FeatureStore, at: dt.datetime, keys=KEYS) -> dict[str, list]:
    """The offline truth: each feature's latest value as of ``at`` (the existing point-in-time retrieval)."""
    rows = pa.table({"customer_id": keys, "event_ts": pa.array([at] * len(keys), pa.timestamp("us", tz="UTC"))})
    return get_historical_features(store.repo, "churn_model", rows).drop(["event_ts"]).to_pydict()


def _watermark(path: Path, view: str) -> int | None:
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT end_us FROM watermarks WHERE view = ?", (view,)).fetchone()
    return None if row is None else row[0]


# ----------------------------------------------------------------------------------------------- offline
def test_historical_features_by_refs_match_the_service_join_and_find_the_timestamp(data):
    root, files = data
    fs = _store(root, "hist")
    # Feast's entity_df: a pandas frame whose time column is `event_timestamp` (found without being named).
    entity_df = pl.read_parquet(files["labels"]).rename({"event_ts": "event_timestamp"}).to_pandas()
    job = fs.get_historical_features(entity_df, features=["customer_usage:usage_gb", "customer_profile:plan"])
    got = job.to_df()
    assert isinstance(got, pd.DataFrame)
    assert list(got.columns) == [*entity_df.columns, "usage_gb", "plan"]
    full = pl.from_arrow(get_historical_features(fs.repo, "churn_model", entity_df, timestamp="event_timestamp"))
    assert pl.from_arrow(job.to_arrow()).equals(full.select(got.columns))
    # A feature service name works as in Feast; full_feature_names gives view__feature columns.
    named = fs.get_historical_features(entity_df, features="churn_model", full_feature_names=True).to_arrow()
    assert "customer_usage__usage_gb" in named.column_names and "usage_gb" not in named.column_names
    # No `event_timestamp` and two datetime columns: the caller must say which.
    two = entity_df.rename(columns={"event_timestamp": "seen_at"}).assign(other=entity_df["event_timestamp"])
    with pytest.raises(FeatureStoreError, match="timestamp="):
        fs.get_historical_features(two, features=["customer_usage:usage_gb"])
    assert fs.get_historical_features(two, features=["customer_usage:usage_gb"],
                                      timestamp="seen_at").to_arrow().num_rows == len(two)


@pytest.mark.parametrize("features, message", [
    (["customer_usage:nope"], "has no feature 'nope'"),
    (["nowhere:usage_gb"], "unknown view 'nowhere'"),
    ([], "at least one"),
    ("no_service", "unknown feature service 'no_service'"),
])
def test_bad_feature_refs_name_the_ref_and_the_fix(data, features, message):
    root, files = data
    fs = _store(root, "refs")
    with pytest.raises(ConfigError, match=message):
        fs.get_historical_features(pl.read_parquet(files["labels"]), features=features)


# ------------------------------------------------------------------------------------ materialise, online
def test_materialize_incremental_then_online_features_equal_the_latest_offline_values(data):
    root, _ = data
    fs = _store(root, "online", clock=_day(9).timestamp)
    results = fs.materialize_incremental(_day(9))
    assert [r.view for r in results] == ["customer_profile", "customer_usage"] and results[0].start_us is None
    features = ["customer_profile:plan", "customer_usage:usage_gb", "customer_usage:support_calls"]
    response = fs.get_online_features(features, entity_rows=[{"customer_id": k} for k in [*KEYS, "nobody"]])
    got = response.to_dict()
    truth = _latest(fs, _day(9))
    assert got["customer_id"] == [*KEYS, "nobody"]
    for name in ("plan", "usage_gb", "support_calls"):
        assert got[name] == [*truth[name], None], name  # an unknown entity: nulls, as in Feast
    assert list(response.to_df().columns) == ["customer_id", "plan", "usage_gb", "support_calls"]
    with pytest.raises(FeatureStoreError, match="customer_id"):
        fs.get_online_features(features, entity_rows=[{"customer": "C000001"}])
    with pytest.raises(FeatureStoreError, match="customer_id"):
        fs.get_online_features(features, entity_rows=[{"customer_id": 7}])
    fs.close()


def test_a_materialize_range_after_a_gap_keeps_the_watermark_so_incremental_still_covers_the_gap(data):
    root, _ = data
    fs = _store(root, "range", clock=_day(8).timestamp)
    db = root / "range.sqlite"
    fs.materialize_incremental(_day(3))
    assert _watermark(db, "customer_profile") == int(_day(3).timestamp() * 1e6)
    ranged = fs.materialize(_day(6), _day(8), feature_views=["customer_profile"])
    assert ranged[0].mode == "range" and ranged[0].start_us == int(_day(6).timestamp() * 1e6)
    # (day 3, day 6) is not in the store yet: the watermark must not jump over it.
    assert _watermark(db, "customer_profile") == int(_day(3).timestamp() * 1e6)
    fs.materialize_incremental(_day(8))
    assert _watermark(db, "customer_profile") == int(_day(8).timestamp() * 1e6)
    rows = [{"customer_id": k} for k in KEYS]
    got = fs.get_online_features(["customer_profile:plan", "customer_profile:tenure_months"], rows).to_dict()
    truth = _latest(fs, _day(8))
    assert got["plan"] == truth["plan"] and got["tenure_months"] == truth["tenure_months"]
    with pytest.raises(FeatureStoreError, match="start_date"):
        fs.materialize(_day(8), _day(6))
    fs.close()


def test_a_range_holds_only_the_rows_of_the_range(data):
    root, _ = data
    fs = _store(root, "only", clock=_day(7).timestamp)
    fs.materialize(_day(5), _day(7), feature_views=["customer_usage"])
    got = fs.get_online_features(["customer_usage:usage_gb"], [{"customer_id": k} for k in KEYS]).to_dict()
    assert got["usage_gb"] == _latest(fs, _day(7))["usage_gb"]  # daily usage: every customer has a row in range
    assert _watermark(root / "only.sqlite", "customer_usage") is None  # no run before: incremental reads all
    fs.close()


# ------------------------------------------------------------------------------------- Feast's spellings
def _feast_spelled() -> dict:
    """configs/features.yaml as a Feast user writes it: named lists, schema/dtype, ttl, entities, source fields."""
    ours = yaml.safe_load(CONFIG.read_text())
    dtypes = {"string": "String", "int64": "Int64", "float64": "Float64"}
    views = []
    for name, v in ours["feature_views"].items():
        source = {"path": v["source"]["uri"], "file_format": v["source"]["format"],
                  "timestamp_field": v["event_timestamp"]}
        if "created_timestamp" in v:
            source["created_timestamp_column"] = v["created_timestamp"]
        views.append({
            "name": name, "entities": [v["entity"]], "ttl": f"{int(v['ttl_s']) // 86400}d", "source": source,
            "schema": [{"name": f, "dtype": dtypes[d["type"]], **({"description": d["description"]}
                                                                    if "description" in d else {})}
                       for f, d in v["features"].items()],
            "online": True,
            **{k: v[k] for k in ("description", "owner", "tags") if k in v},
        })
    return {
        "project": ours["project"], "provider": "local", "offline_store": {"type": "file"},
        "online_store": ours["online_store"],
        "entities": [{"name": n, "join_keys": list(e["join_keys"]), "value_type": "STRING",
                      "description": e["description"]} for n, e in ours["entities"].items()],
        "feature_views": views,
        "feature_services": [{"name": n, **s} for n, s in ours["feature_services"].items()],
    }


def test_a_feast_spelled_repo_loads_to_the_same_definitions_as_ours():
    feast = parse_feature_repo(_feast_spelled(), "feature_store.yaml")
    ours = load_feature_repo(CONFIG)
    assert feast == ours and feast.digest == ours.digest


def _edit_view(doc: dict, **changes) -> dict:
    doc["feature_views"][1].update(changes)
    return doc


@pytest.mark.parametrize("edit, message", [
    (lambda d: _edit_view(d, ttl_s=1), r"feature_views.customer_usage: both `ttl_s` and `ttl` \(Feast"),
    (lambda d: _edit_view(d, features={"x": {"type": "int64"}}), "both `features` and `schema`"),
    (lambda d: _edit_view(d, entity="customer"), None),  # the same value in both spellings is fine
    (lambda d: _edit_view(d, entities=["customer", "shop"]), "one entity"),
    (lambda d: _edit_view(d, ttl="three days"), "`ttl` 'three days' is not a duration"),
    (lambda d: d["feature_views"][1]["schema"].append({"name": "v", "dtype": "Array(Float32)"}),
     "schema.*'v'.*Array"),
    (lambda d: d["entities"][0].pop("value_type"), "value_type"),
    (lambda d: d.update(provider="gcp"), "provider"),
    (lambda d: d.update(registry="data/registry.db"), "registry"),
    (lambda d: d["feature_views"].append(dict(d["feature_views"][0])), "twice"),
])
def test_conflicting_or_unsupported_feast_spellings_name_the_key(edit, message):
    doc = _feast_spelled()
    edit(doc)
    if message is None:
        assert parse_feature_repo(doc, "feature_store.yaml").digest == load_feature_repo(CONFIG).digest
        return
    with pytest.raises(ConfigError, match=message):
        parse_feature_repo(doc, "feature_store.yaml")


def test_the_facade_opens_a_directory_a_document_or_a_repo(data, tmp_path):
    root, _ = data
    (tmp_path / "feature_store.yaml").write_text(yaml.safe_dump(_feast_spelled()))
    assert FeatureStore(tmp_path).repo.digest == load_feature_repo(CONFIG).digest
    assert FeatureStore(_feast_spelled()).repo == FeatureStore(load_feature_repo(CONFIG)).repo
    with pytest.raises(ConfigError, match="features.yaml"):
        FeatureStore(tmp_path / "empty")
