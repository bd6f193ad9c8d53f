"""The loop on a Ray cluster of three nodes (``ray_cluster``), with storage on the S3 server and MLflow on PostgreSQL.

The same config as on a laptop except ``storage_uri`` (``s3://``) and ``tracking_uri`` (the MLflow server):

* ``ray job submit`` of a pipeline run: Ray Data and Ray Train on the worker nodes, checkpoints, packages and reports
  on S3, the run and the registered version in the MLflow server;
* the controller CLI against a detached controller on the cluster, its serving replicas on the worker nodes.

One cluster for the module (a start costs ~30 s here).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from raymlops import storage
from raymlops.registry.models import ModelRegistry
from tests.cluster.conftest import free_port
from tests.cluster.ray_cluster import BIN

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 4


def _alive_actors(cluster, class_name: str) -> list[dict]:
    r = subprocess.run([str(BIN / "ray"), "list", "actors", "--format=json", f"--filter=class_name={class_name}",
                        "--filter=state=ALIVE", f"--address={cluster.dashboard}"], env=cluster.env,
                       capture_output=True, text=True, timeout=60)
    return json.loads(r.stdout) if r.returncode == 0 else []


def test_job_submit_runs_the_pipeline_on_s3_with_mlflow_on_postgres(ray_cluster, s3, mlflow_server):
    from raymlops.data.synthetic import generate

    store = s3.uri("loop-job")
    generate(storage.join(store, "landing"), rows_per_day=1500, days=3, seed=3)
    runtime_env = json.dumps({"env_vars": {"RAYMLOPS_STORAGE": store, **s3.env}})
    sets = [f"tracking_uri={mlflow_server.tracking_uri}", "name=churn-job", f"train.epochs={EPOCHS}",
            "train.early_stopping_patience=20", "train.learning_rate=0.01", "train.batch_size=128",
            "evaluation.min_primary=0.55"]
    cmd = [str(BIN / "ray"), "job", "submit", "--address", ray_cluster.dashboard, "--working-dir", ".",
           "--runtime-env-json", runtime_env, "--", "raymlops", "run", "configs/churn.yaml",
           *[x for kv in sets for x in ("--set", kv)]]
    r = subprocess.run(cmd, cwd=ROOT, env=ray_cluster.env, capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    # Ray Train checkpointed every epoch on S3 and reported it live to the submitting terminal
    epochs = {int(m) for m in re.findall(r"\[train\] epoch=(\d+) ", out)}
    assert epochs == set(range(1, EPOCHS + 1)), out[-4000:]
    files = " ".join(storage.list_files(storage.join(store, "checkpoints")))
    assert max(int(m) for m in re.findall(r"/epoch_(\d+)/state\.json", files)) == EPOCHS
    # a useful model (roc_auc 0.78-0.79 in this tier's runs; the reference HistGradientBoosting 0.74)
    auc = float(re.search(r"\[evaluate\] test: roc_auc ([0-9.]+)", out).group(1))
    assert auc > 0.72, out[-4000:]
    assert "registered version 1 as challenger" in out
    records = [f for f in storage.list_files(storage.join(store, "runs")) if f.endswith("/run.json")]
    assert len(records) == 1 and json.loads(storage.read_text(records[0]))["status"] == "completed"
    version = ModelRegistry(mlflow_server.tracking_uri).get("churn-job", 1)
    assert version.package_uri.startswith(store)


def _replica_nodes(cluster) -> list[str]:
    """The node (by name) of each alive Serve replica, from Ray's actor table."""
    names = {v: k for k, v in cluster.node_ids().items()}
    r = subprocess.run([str(BIN / "ray"), "list", "actors", "--format=json", "--filter=state=ALIVE", "--limit=1000",
                        f"--address={cluster.dashboard}"], env=cluster.env, capture_output=True, text=True, timeout=60)
    return sorted(names.get(a["node_id"], "?") for a in json.loads(r.stdout) if a["class_name"].startswith(
        "ServeReplica:"))


def _assert_key_only_predictions(url: str, repo_uri: str, tracking_uri: str) -> None:
    import datetime as dt

    import httpx
    import pyarrow as pa

    from raymlops.features.definitions import load_feature_repo
    from raymlops.features.offline import get_historical_features
    from raymlops.model.package import load_package
    from raymlops.serve.batch import prediction_columns

    keys = [f"C{i:06d}" for i in range(0, 30, 3)]
    r = httpx.post(f"{url}/v1/models/cli/versions/1:predict", json={"instances": [{"customer_id": k} for k in keys]},
                   timeout=60)
    assert r.status_code == 200, r.text
    rows = pa.table({"customer_id": keys,
                     "event_ts": pa.array([dt.datetime.now(dt.timezone.utc)] * len(keys), pa.timestamp("us", "UTC"))})
    offline = get_historical_features(load_feature_repo(repo_uri), "churn_model", rows)
    assert offline.column("plan").null_count == 0
    v1 = ModelRegistry(tracking_uri).get("cli", 1)
    batch = prediction_columns(load_package(v1.package_uri, v1.digest), offline)
    # equal to float32 precision (the net computes in float32; Redis returns the values as JSON numbers)
    assert [p["probability"] for p in r.json()["predictions"]] == pytest.approx(batch["probability"].to_pylist(),
                                                                               rel=1e-6)


def _feature_repo_on_s3(s3, redis_url: str) -> str:
    """The example feature repo with its data on the S3 server and its online store on Redis, materialised."""
    from raymlops.features.definitions import load_feature_repo
    from raymlops.features.example import generate_example
    from raymlops.features.materialize import materialize

    data = s3.uri("loop-cli", "feature-data")
    generate_example(data, customers=30, days=5, seed=4)
    doc = yaml.safe_load((ROOT / "configs" / "features.yaml").read_text())
    for view in doc["feature_views"].values():
        view["source"]["uri"] = storage.join(data, Path(view["source"]["uri"]).name)
        view["ttl_s"] = None  # the example data is dated: no TTL, so lookups today still find values
    doc["online_store"] = {"type": "redis", "url": redis_url}
    uri = s3.uri("loop-cli", "features.yaml")
    storage.atomic_write_text(uri, yaml.safe_dump(doc))
    materialize(load_feature_repo(uri), full=True)
    return uri


def test_the_controller_cli_on_the_cluster_with_replicas_on_the_worker_nodes(ray_cluster, s3, mlflow_server,
                                                                             redis_url):
    """Every controller command as a user types it, against a detached controller on the cluster: a canary promoted
    and one rolled back; the app's two replicas on the two worker nodes (the head has no CPUs), answering key-only
    requests with features read from Redis."""
    env, gcs = ray_cluster.env, ray_cluster.gcs
    store = s3.uri("loop-cli")
    repo_uri = _feature_repo_on_s3(s3, redis_url)
    port = free_port()
    sets = [f"storage_uri={store}", f"tracking_uri={mlflow_server.tracking_uri}", f"data.source={store}/landing",
            f"features.repo={repo_uri}", "features.service=churn_model",
            "name=cli", f"serving.port={port}", "serving.ingress=proxy", "serving.num_replicas=2",
            "controller.pipeline=tests.controller_helpers:fake_pipeline",
            "controller.allowed_pipelines=[tests.controller_helpers:fake_pipeline]",
            "canary.steps=[100]", "canary.interval_s=2", "triggers.new_data=false", "triggers.poll_interval_s=0.5",
            "controller.poll_interval_s=0.3", "monitoring.interval_s=3600", "pre_exposure.enabled=false"]
    args = [x for kv in sets for x in ("--set", kv)]

    def cli(*cmd: str, pos: tuple[str, ...] = (), address: bool = True) -> subprocess.CompletedProcess:
        extra = ["--address", gcs] if address else []
        return subprocess.run([str(BIN / "raymlops"), *cmd, "configs/churn.yaml", *pos, *args, *extra], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=300)

    def wait_event(kind: str, version: str) -> None:
        deadline = time.time() + 180
        while time.time() < deadline:
            r = cli("events", "--json", "--limit", "1000", address=False)
            events = [json.loads(x) for x in r.stdout.splitlines()]
            if any(e["kind"] == kind and e["data"].get("version") == version for e in events):
                return
            time.sleep(1)
        pytest.fail(f"no {kind} event for version {version}: {r.stdout[-2000:]}")

    r = cli("controller", "start")
    assert r.returncode == 0 and "started" in r.stdout, r.stdout + r.stderr
    controllers = _alive_actors(ray_cluster, "ControllerActor")
    assert len(controllers) == 1 and controllers[0]["node_id"] != ray_cluster.node_ids()["head"]
    r = cli("trigger", "--request-id", "first")
    assert r.returncode == 0 and "trigger first accepted" in r.stdout, r.stdout + r.stderr
    wait_event("promoted", "1")
    assert cli("trigger", "--request-id", "second").returncode == 0
    wait_event("canary_started", "2")  # no traffic: the canary holds at its step

    # the app's two replicas (each serves every version) on the worker nodes, one on each: Serve spreads them
    assert _replica_nodes(ray_cluster) == ["a", "b"]
    # key-only requests: the replicas read the features from Redis; the answers equal the batch path's
    _assert_key_only_predictions(f"http://127.0.0.1:{port}", repo_uri, mlflow_server.tracking_uri)

    r = cli("approve")
    assert r.returncode == 2 and "nothing awaits approval" in r.stderr, r.stdout + r.stderr
    r = cli("promote", pos=("2",))
    assert r.returncode == 0 and "promoting" in r.stdout, r.stdout + r.stderr
    wait_event("promoted", "2")

    assert "controller paused" in cli("controller", "pause").stdout
    assert cli("trigger", "--request-id", "third").returncode == 0
    time.sleep(2)
    status = json.loads(cli("controller", "status").stdout)
    assert status["paused"] and status["run"] is None and [t["kind"] for t in status["queue"]] == ["on_demand"]
    assert "controller resumed" in cli("controller", "resume").stdout
    wait_event("canary_started", "3")
    r = cli("rollback")
    assert r.returncode == 0 and "rolling_back" in r.stdout, r.stdout + r.stderr
    wait_event("rolled_back", "3")

    r = cli("status", address=False)
    assert r.returncode == 0 and "v2    champion" in r.stdout and "v2 100%" in r.stdout, r.stdout + r.stderr
    # the packages the controller's runs wrote are on the bucket, and the registry points there
    assert ModelRegistry(mlflow_server.tracking_uri).get("cli", 2).package_uri.startswith(store)
    assert "controller stopped" in cli("controller", "stop").stdout
    r = cli("trigger")
    assert r.returncode == 2 and "no controller is running" in r.stderr, r.stdout + r.stderr
