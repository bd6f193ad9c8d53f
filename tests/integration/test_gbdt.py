"""Gradient-boosted trees on Ray: XGBoostTrainer on two workers' Ray Data shards, Ray Tune over the boosting
loop, and ``train.model: xgboost`` through the real CT pipeline to a registered version whose package predicts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from raymlops.config import config_from_dict, load_config
from raymlops.core.schema import infer_schema
from raymlops.core.sketches import profile_table
from raymlops.core.transform import apply_transform, fit_transform
from raymlops.ct import run_ct_pipeline
from raymlops.data.prepare import PreparedData
from raymlops.data.synthetic import generate, make_day
from raymlops.model.gbdt import BOOSTER_FILE, BoosterPredictor, load_booster
from raymlops.model.nets import predict_outputs
from raymlops.model.package import load_package
from raymlops.registry.models import ModelRegistry
from raymlops.serve.batch import predict_batch, prediction_columns
from raymlops.serve.deploy import deploy, undeploy
from raymlops.train.gbdt import fit_gbdt, spec_from_transform, train_gbdt
from raymlops.train.tune import tune_model
from tests.data_helpers import instances
from tests.serving_helpers import free_port

pytestmark = pytest.mark.slow

ROWS = {"train": 1200, "validation": 400, "test": 400}
FAST = ["train.gbdt.num_boost_round=80", "train.gbdt.early_stopping_rounds=10", "train.gbdt.eta=0.2"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> PreparedData:
    """The real PreparedData layout (raw parquet per split + a fitted Transform), built without a Ray pass."""
    root = tmp_path_factory.mktemp("prepared")
    table = make_day("2026-01-01", sum(ROWS.values()), seed=3)
    profile = profile_table(table.slice(0, ROWS["train"]), categorical={"churned"},
                            skip={"customer_id", "event_ts"})
    schema = infer_schema(profile, name="churn", task="binary", label="churned", timestamp="event_ts",
                          id_columns=["customer_id"])
    uris, start = {}, 0
    for split, n in ROWS.items():
        os.makedirs(root / split)
        pq.write_table(table.slice(start, n), root / split / "part-0.parquet")
        uris[split], start = str(root / split), start + n
    return PreparedData(str(root), uris, fit_transform(profile, schema), dict(ROWS))


def _arrays(prepared: PreparedData, split: str) -> dict[str, np.ndarray]:
    return apply_transform(prepared.transform, pq.read_table(Path(prepared.split_uris[split]) / "part-0.parquet"))


def test_xgboost_trainer_boosts_on_two_workers_like_one_process(ray_session, prepared, tmp_path):
    cfg = config_from_dict({}, ["train.model=xgboost", "train.num_workers=2", *FAST])
    lines: list[dict] = []
    result = train_gbdt(cfg, prepared, storage_uri=str(tmp_path), run_name="gbdt", progress=lines.append)

    assert lines and {"epoch", "train_loss", "val_loss", "val_accuracy"} <= set(lines[0])
    assert lines[-1]["best_round"] == result.best_epoch
    assert result.model_spec["model"] == "xgboost" and result.model_spec["n_numeric"] == len(
        prepared.transform.numeric)
    booster = load_booster(result.booster_json)
    assert booster.num_boosted_rounds() == result.best_epoch
    assert booster.feature_types == result.model_spec["feature_types"]
    assert {BOOSTER_FILE, "state.json"} <= set(os.listdir(result.checkpoint_uri))

    # Each worker boosted on its half; the collective merged histograms and metrics: the validation loss it
    # reports is the one of all validation rows, and the model is as good as one fitted in one process.
    test, valid = _arrays(prepared, "test"), _arrays(prepared, "validation")
    predictor = BoosterPredictor.from_json(result.booster_json, result.model_spec)
    z = predictor.logits(valid["x_num"], valid["x_cat"])
    p = predict_outputs("binary", z)["probability"]
    y = valid["y"]
    logloss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert logloss == pytest.approx(result.best_val_loss, rel=1e-3)
    local = fit_gbdt(_arrays(prepared, "train"), valid, spec=spec_from_transform(prepared.transform),
                     config=cfg.train)
    acc = {}
    for name, res in (("ray", result), ("local", local)):
        out = predict_outputs("binary", BoosterPredictor.from_json(res.booster_json, res.model_spec)
                              .logits(test["x_num"], test["x_cat"]))
        acc[name] = float((out["label"] == test["y"]).mean())
    assert acc["ray"] > max(test["y"].mean(), 1 - test["y"].mean())  # beats the majority class
    assert acc["ray"] == pytest.approx(acc["local"], abs=0.05)


def test_tune_searches_gbdt_parameters_and_returns_the_best_booster(ray_session, prepared, tmp_path):
    cfg = config_from_dict({
        "train": {"model": "xgboost", "cpus_per_worker": 0.5,
                  "gbdt": {"num_boost_round": 40, "early_stopping_rounds": 10}},
        "tune": {"enabled": True, "num_samples": 3, "max_concurrent_trials": 2, "search_space": {
            "gbdt.max_depth": {"type": "choice", "values": [2, 6]},
            "gbdt.eta": {"type": "loguniform", "low": 0.05, "high": 0.4}}},
    })
    seen: list[dict] = []
    tuned = tune_model(cfg, prepared, storage_uri=str(tmp_path), run_name="tune", progress=seen.append)
    assert len(tuned.trials) == 3 and all(t["status"] == "FINISHED" for t in tuned.trials), tuned.trials
    assert {t["trial_id"] for t in tuned.trials} == {m["trial_id"] for m in seen}
    best = min(tuned.trials, key=lambda t: t["best"])
    assert tuned.best_params == best["params"]
    assert tuned.best.best_val_loss == pytest.approx(best["best"])
    assert tuned.best.params["gbdt"]["max_depth"] == best["params"]["gbdt.max_depth"]
    assert load_booster(tuned.best.booster_json).num_boosted_rounds() == tuned.best.best_epoch


def test_ct_pipeline_registers_a_booster_package_that_serves_predictions(ray_session, tmp_path, tracking_uri):
    generate(str(tmp_path / "landing"), rows_per_day=1000, days=2, seed=3)
    cfg = load_config(None, [
        f"storage_uri={tmp_path / 'store'}", f"tracking_uri={tracking_uri}", f"data.source={tmp_path / 'landing'}",
        "train.model=xgboost", *FAST, "evaluation.min_primary=0.55", f"serving.port={free_port()}",
    ])
    lines: list[str] = []
    result = run_ct_pipeline(cfg, progress=lines.append)
    assert result.status == "completed", result.error
    assert any(line.startswith("[train] epoch=") for line in lines)
    out = result.pipeline.outputs
    assert Path(out["train.model"].uri, BOOSTER_FILE).is_file()
    assert not Path(out["train.model"].uri, "weights.safetensors").exists()
    evaluation = json.loads(Path(out["evaluate.evaluation"].uri).read_text())
    assert evaluation["challenger"]["metrics"]["test"]["roc_auc"] > 0.55

    info = ModelRegistry(cfg.tracking_uri).get_by_alias(cfg.name, "challenger")
    assert info is not None and info.version == result.version == 1
    model = load_package(info.package_uri, info.digest)
    assert isinstance(model.model, BoosterPredictor)
    assert {BOOSTER_FILE, "manifest.json"} <= set(os.listdir(info.package_uri))
    rows = instances(20)
    preds = model.predict({k: [r[k] for r in rows] for k in rows[0]})
    assert preds["probability"].shape == (20,) and ((preds["probability"] > 0) & (preds["probability"] < 1)).all()
    threshold = float(model.signature.get("threshold") or 0.5)
    np.testing.assert_array_equal(preds["label"], (preds["probability"] >= threshold).astype(np.int64))
    assert out["check_package.infra"]["predict_ok"] is True  # loaded and predicted in a fresh process

    # as champion: batch prediction on Ray Data and online serving answer what the package predicts directly
    ModelRegistry(cfg.tracking_uri).promote(cfg.name, info.version)
    generate(str(tmp_path / "input"), rows_per_day=300, days=1, start_date="2026-02-01", seed=5)
    batch = predict_batch(cfg, str(tmp_path / "input"), str(tmp_path / "scored"))
    scored = pq.read_table(tmp_path / "scored")
    assert batch.rows == scored.num_rows == 300
    direct = prediction_columns(model, scored)
    np.testing.assert_allclose(scored.column("probability").to_numpy(), direct["probability"].to_numpy())
    assert scored.column("label").to_pylist() == direct["label"].to_pylist()

    served = deploy(cfg)
    try:
        r = httpx.post(f"{served.url}/v1/models/{cfg.name}:predict", json={"instances": rows}, timeout=30)
        assert r.status_code == 200 and r.headers["x-model-version"] == "1"
        online = r.json()["predictions"]
        table = prediction_columns(model, {k: [row[k] for row in rows] for k in rows[0]})
        assert [p["probability"] for p in online] == table["probability"].to_pylist()
        assert [p["label"] for p in online] == table["label"].to_pylist()
    finally:
        undeploy(cfg)
