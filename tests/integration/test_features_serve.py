"""Key-only requests through a real Serve deployment over loopback HTTP: the online path equals the batch path."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
import yaml

from raymlops.features.definitions import load_feature_repo
from raymlops.features.example import generate_example
from raymlops.features.materialize import materialize
from raymlops.features.offline import get_historical_features
from raymlops.model.package import load_package
from raymlops.serve.batch import prediction_columns
from raymlops.serve.deploy import deploy, undeploy
from tests.serving_helpers import register_versions, serving_config

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).parents[2] / "configs" / "features.yaml"


@pytest.fixture(scope="module")
def app(ray_session, _mlflow_template, tmp_path_factory):
    root = tmp_path_factory.mktemp("features-serve")
    shutil.copy(_mlflow_template, root / "mlflow.db")
    generate_example(str(root / "data"), customers=30, days=5, seed=4)
    doc = yaml.safe_load(CONFIG.read_text())
    for view in doc["feature_views"].values():
        view["source"]["uri"] = str(root / "data" / Path(view["source"]["uri"]).name)
        view["ttl_s"] = None  # the example data is dated: no TTL, so lookups today still find values
    doc["online_store"]["path"] = str(root / "online.sqlite")
    (root / "features.yaml").write_text(yaml.safe_dump(doc))
    repo = load_feature_repo(root / "features.yaml")
    materialize(repo, full=True)
    cfg = serving_config(root, f"sqlite:///{root / 'mlflow.db'}", f"features.repo={root / 'features.yaml'}",
                         "features.service=churn_model")
    (version,) = register_versions(cfg, root, n=1)
    info = deploy(cfg)
    client = httpx.Client(base_url=info.url, timeout=30)
    yield client, repo, version
    client.close()
    undeploy(cfg)


def test_key_only_predictions_equal_the_batch_path(app):
    client, repo, version = app
    keys = [f"C{i:06d}" for i in range(0, 30, 3)] + ["never-seen"]
    r = client.post("/v1/models/churn:predict", json={"instances": [{"customer_id": k} for k in keys]})
    assert r.status_code == 200, r.text
    online = r.json()["predictions"]
    rows = pa.table({"customer_id": keys,
                     "event_ts": pa.array([dt.datetime.now(dt.timezone.utc)] * len(keys), pa.timestamp("us", "UTC"))})
    offline = get_historical_features(repo, "churn_model", rows)
    assert offline.column("plan").null_count == 1  # only the unknown customer: its features are imputed
    batch = prediction_columns(load_package(version.package_uri, version.digest), offline)
    assert [p["probability"] for p in online] == batch["probability"].to_pylist()
    assert [p["label"] for p in online] == batch["label"].to_pylist()


def test_a_request_value_for_a_store_feature_is_refused_by_name(app):
    client, _, _ = app
    r = client.post("/v1/models/churn:predict", json={"instances": [{"customer_id": "C000001", "plan": "basic"},
                                                                     {"plan": None}]})
    assert r.status_code == 422
    details = {(d["row"], d["field"], d["code"]) for d in r.json()["error"]["details"]}
    assert details == {(0, "plan", "served_by_feature_store"), (1, "plan", "served_by_feature_store"),
                       (1, "customer_id", "missing_entity_key")}
