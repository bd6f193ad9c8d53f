"""The registry and pipeline metadata against ``mlflow server`` on PostgreSQL, with artifacts on the S3 server.

``tracking_uri: http://127.0.0.1:PORT`` as a team's config has it: versions registered from packages on S3, the
champion alias set and resolved, tags, artifacts landing in the bucket (through the server's proxy, and directly
under ``storage_uri``), and a database password never printed.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from raymlops import storage
from raymlops.cli import main
from raymlops.config import load_config
from raymlops.errors import RegistryError
from raymlops.model.package import load_package
from raymlops.registry.models import CHAMPION, ModelRegistry
from raymlops.registry.tracking import MetadataStore, StepRecord
from tests.data_helpers import build_package

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "churn.yaml")


def test_registry_and_metadata_on_an_mlflow_server_with_postgres_and_s3(s3, mlflow_server):
    cfg = load_config(None)
    registry = ModelRegistry(mlflow_server.tracking_uri)
    packages = [build_package(cfg, s3.uri("mlflow-test", "packages", str(n)), seed=n) for n in (1, 2)]
    v1 = registry.register("churn-cluster", packages[0].uri, run_id=None, digest=packages[0].digest,
                           tags={"data_fingerprint": "d1"})
    assert v1.version == 1 and v1.package_uri == packages[0].uri and v1.aliases == ("challenger",)
    registry.promote("churn-cluster", 1)
    v2 = registry.register("churn-cluster", packages[1].uri, run_id=None, digest=packages[1].digest, tags={})
    registry.tag_version("churn-cluster", 2, "reviewed_by", "sre")
    assert registry.aliases("churn-cluster") == {CHAMPION: 1, "challenger": 2}
    champion = registry.resolve("churn-cluster", CHAMPION)
    assert (champion.version, champion.digest) == (1, packages[0].digest)
    assert registry.get("churn-cluster", v2.version).tags["reviewed_by"] == "sre"
    # what the registry points at loads from the bucket, verified against the registered digest
    assert load_package(champion.package_uri, champion.digest).digest == packages[0].digest
    # registration wrote the MLflow descriptor into the package on S3 (mlflow.pyfunc can load the version)
    assert storage.exists(storage.join(packages[0].uri, "MLmodel"))

    # a pipeline run's step artifacts: under storage_uri (the runner's artifact_location), straight to the bucket
    meta = MetadataStore(mlflow_server.tracking_uri)
    artifact_root = s3.uri("store", "mlflow-artifacts")
    parent = meta.start_pipeline_run("churn-cluster", pipeline="churn", pipeline_run_id="run-1",
                                     artifact_location=artifact_root)
    now = time.time()
    step = StepRecord(pipeline_run_id="run-1", step="validate", component="validate", component_version="1",
                      code_hash="c", fingerprint="f", status="completed", executor="in_process", started_at=now,
                      ended_at=now + 1, metrics={"rows": 600.0}, files={"report.json": b'{"decision": "OK"}'})
    child = meta.log_step(parent, step)
    meta.end_pipeline_run(parent, "completed", {"validate": "completed"})
    assert [r.status for r in meta.list_runs("churn-cluster")] == ["completed"]
    landed = [f for f in storage.list_files(artifact_root) if child in f]
    assert [f.rsplit("/", 2)[-2:] for f in landed] == [["outputs", "report.json"]]
    assert storage.read_text(landed[0]) == '{"decision": "OK"}'
    # an experiment with the server's default location: the server proxies the artifact to its S3 destination
    proxied = meta.start_pipeline_run("proxied", pipeline="churn", pipeline_run_id="run-2")
    meta.log_step(proxied, step)
    assert any(f.endswith("/outputs/report.json") for f in storage.list_files(mlflow_server.artifacts_uri))


def test_a_database_password_in_the_tracking_uri_is_never_printed(mlflow_server, capfd, monkeypatch, tmp_path):
    """A tracking URI straight on the database carries its password: errors that quote it are printed redacted."""
    monkeypatch.setenv("RAYMLOPS_STORAGE", str(tmp_path / "store"))
    db = mlflow_server.database_uri
    with pytest.raises(RegistryError, match="no registered model 'nobody'") as err:
        ModelRegistry(db).aliases("nobody")
    assert mlflow_server.password in str(err.value)  # the message quotes the URI: the printer must redact it
    capfd.readouterr()
    assert main(["lineage", CONFIG, "1", "--set", f"tracking_uri={db}"]) != 0
    out = capfd.readouterr()
    printed = out.out + out.err
    assert "mlflow:***@127.0.0.1" in printed  # the error names the server, without its password
    assert mlflow_server.password not in printed
    assert mlflow_server.password not in mlflow_server.log.read_text()  # nor by the server, which was given it
