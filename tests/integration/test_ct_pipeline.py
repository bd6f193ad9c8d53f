"""The built-in CT pipeline end to end on a few thousand rows: artifacts, lineage, cache, resume and blessing."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow as pa
import pytest
from mlflow import MlflowClient

from raymlops.config import load_config
from raymlops.ct import run_ct_pipeline
from raymlops.data.synthetic import generate
from raymlops.errors import ModelValidationError
from raymlops.model.package import load_package
from raymlops.registry.models import ModelRegistry
from raymlops.registry.tracking import MetadataStore
from tests.data_helpers import instances

pytestmark = pytest.mark.slow

STEPS = ["validate", "prepare", "train", "evaluate", "check_package", "bless", "register"]


@pytest.fixture
def cfg_for(tmp_path, tracking_uri):
    generate(str(tmp_path / "landing"), rows_per_day=1500, days=3, seed=3)

    def make(*overrides: str):
        return load_config(None, [
            f"storage_uri={tmp_path / 'store'}", f"tracking_uri={tracking_uri}",
            f"data.source={tmp_path / 'landing'}", "train.epochs=3", "train.learning_rate=0.01",
            "train.batch_size=128", "evaluation.min_primary=0.55", *overrides,
        ])

    return make


def _table(client: MlflowClient, run_id: str, path: str) -> pd.DataFrame:
    # MlflowClient.load_table reads through the process-wide tracking URI, not the client's: read the artifact.
    return pd.read_json(client.download_artifacts(run_id, path), orient="split")


def test_pipeline_registers_a_blessed_challenger_with_lineage_and_caches(ray_session, cfg_for):
    cfg = cfg_for()
    lines: list[str] = []
    result = run_ct_pipeline(cfg, progress=lines.append)
    assert result.status == "completed", result.error
    assert [result.pipeline.steps[s].status for s in STEPS] == ["completed"] * len(STEPS)
    assert any(line.startswith("[train] epoch=") for line in lines)  # live progress per step

    reg = ModelRegistry(cfg.tracking_uri)
    info = reg.get_by_alias(cfg.name, "challenger")
    assert info is not None and info.version == result.version == 1
    assert reg.get_by_alias(cfg.name, "champion") is None  # only promote / the controller move champion

    # every component left its artifacts, and the run record points at them
    out = result.pipeline.outputs
    assert Path(out["validate.report"].uri).is_file()
    assert Path(out["prepare.prepared"].uri, "_SUCCESS").is_file()
    assert Path(out["train.model"].uri, "weights.safetensors").is_file()
    assert Path(out["evaluate.package"].uri, "manifest.json").is_file()
    assert Path(out["evaluate.evaluation"].uri).is_file()
    assert Path(out["bless.blessing"].uri).is_file()
    assert out["check_package.infra"]["predict_ok"] is True

    # the binary threshold chosen on validation is the package's; the naive baseline and the reference are recorded
    evaluation = json.loads(Path(out["evaluate.evaluation"].uri).read_text())
    threshold = evaluation["threshold"]["threshold"]
    assert 0 < threshold < 1 and load_package(out["evaluate.package"].uri).signature["threshold"] == threshold
    assert evaluation["challenger"]["baseline"]["roc_auc"] == 0.5
    assert evaluation["reference"]["model"] == "HistGradientBoostingClassifier"
    assert evaluation["reference"]["metrics"]["roc_auc"] > 0.6
    assert evaluation["challenger"]["metrics"]["test"]["f1"] > 0  # ~24% churners: 0.5 would predict none
    assert any("naive baseline" in line and "reference" in line for line in lines)

    # MLflow: a parent run and one child per step, tagged with fingerprint and cache state
    client = MlflowClient(cfg.tracking_uri)
    children = client.search_runs(
        [client.get_experiment_by_name(cfg.name).experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{result.pipeline.mlflow_run_id}'",
    )
    assert {c.data.tags["raymlops.step"] for c in children} >= set(STEPS)
    train_run = next(c for c in children if c.data.tags["raymlops.step"] == "train")
    assert "best_val_loss" in train_run.data.metrics

    # the version's run (the pipeline run) shows the per-epoch curves, the training data and the evaluation tables
    run_id = result.pipeline.mlflow_run_id
    epochs = [h["epoch"] for h in json.loads(Path(out["train.model"].uri, "training.json").read_text())["history"]]
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == epochs and len(epochs) > 1
    [data] = client.get_run(run_id).inputs.dataset_inputs
    snapshot = out["validate.snapshot"]
    assert data.dataset.source == json.dumps({"uri": snapshot.uri}) and snapshot.digest.startswith(data.dataset.digest)
    assert json.loads(data.dataset.profile)["digest"] == snapshot.digest
    assert {t.key: t.value for t in data.tags}["mlflow.data.context"] == "training"
    assert {"evaluation/comparison.json", "evaluation/slices.json"} <= \
        {a["path"] for a in json.loads(client.get_run(run_id).data.tags["mlflow.loggedArtifacts"])}
    comparison = _table(client, run_id, "evaluation/comparison.json").set_index("metric").loc["roc_auc"]
    # MLflow writes tables with 10 decimals
    assert comparison["challenger"] == pytest.approx(evaluation["challenger"]["metrics"]["test"]["roc_auc"], abs=1e-9)
    assert comparison["baseline"] == 0.5
    slices = _table(client, run_id, "evaluation/slices.json")
    assert set(slices["slice"]) == {"region"} and slices["rows"].sum() == evaluation["challenger"]["rows"]["test"]

    # MLflow loads the registered version itself (its MLmodel) and predicts what raymlops predicts
    rows = instances(8)
    pyfunc = mlflow.pyfunc.load_model(info.package_uri).predict(pd.DataFrame(rows))
    ours = load_package(info.package_uri, info.digest).predict(pa.Table.from_pylist(rows))
    assert pyfunc["probability"].tolist() == ours["probability"].tolist()

    lineage = MetadataStore(cfg.tracking_uri).lineage(cfg.name, info.version)
    rendered = lineage.render()
    assert result.run_id in rendered and "validate" in rendered
    assert lineage.data_fingerprint == out["validate.snapshot"].digest

    # unchanged inputs: every step is a cache hit and nothing new is registered
    again = run_ct_pipeline(cfg, progress=lambda _m: None)
    assert again.status == "completed"
    assert {s.status for s in again.pipeline.steps.values()} == {"cached"}
    assert [v.version for v in reg.list_versions(cfg.name)] == [1]

    # a worse model than the champion is refused (exit code 3), and not registered
    reg.promote(cfg.name, 1)
    worse = run_ct_pipeline(cfg_for("train.epochs=1", "train.learning_rate=0.00001", "train.seed=7"),
                            progress=lambda _m: None)
    assert worse.status == "blocked"
    assert worse.pipeline.steps["bless"].status == "blocked"
    assert "vs_champion" in worse.error
    with pytest.raises(ModelValidationError):
        worse.raise_for_status()
    assert [v.version for v in reg.list_versions(cfg.name)] == [1]


def test_failed_run_resumes_without_rerunning_finished_steps(ray_session, cfg_for):
    broken = cfg_for("evaluation.primary_metric=no_such_metric")
    first = run_ct_pipeline(broken, progress=lambda _m: None)
    assert first.status == "failed"
    assert first.pipeline.steps["bless"].status == "failed"
    done_before = {s for s in STEPS if first.pipeline.steps[s].status == "completed"}
    assert {"validate", "prepare", "train", "evaluate"} <= done_before

    lines: list[str] = []
    resumed = run_ct_pipeline(cfg_for(), resume_run_id=first.run_id, progress=lines.append)
    assert resumed.status == "completed", resumed.error
    assert resumed.run_id == first.run_id
    for step in done_before:
        assert resumed.pipeline.steps[step].status in ("completed", "cached")
        assert not any(line.startswith(f"[{step}] started") for line in lines), step
    assert any(line.startswith("[bless] started") for line in lines)
    assert resumed.version == 1
