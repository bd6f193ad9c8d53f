"""MLflow's own tools on registered versions: ``mlflow.pyfunc.load_model("models:/...")`` and ``mlflow models serve``
load both model kinds (torch MLP, XGBoost booster) and predict exactly what raymlops' batch and serving paths
predict on the same rows. Packages are built without Ray Train; no Ray at all.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from mlflow import MlflowClient

from raymlops.config import load_config
from raymlops.core.request_validation import RequestValidator
from raymlops.core.schema import Schema
from raymlops.errors import PackageError
from raymlops.model.package import load_package, save_package
from raymlops.registry.mlmodel import MLMODEL, write_mlmodel
from raymlops.registry.models import DIGEST_TAG, NO_MLMODEL_TAG, ModelRegistry
from raymlops.registry.tracking import MetadataStore
from raymlops.serve.batch import prediction_columns
from tests.data_helpers import IDS, LABEL, TS, build_package, instances
from tests.serving_helpers import free_port

NAME = "churn"
ROWS = instances(40, seed=5)


def _booster_package(path: Path):
    """A real booster package: transform and trees fitted in this process on synthetic churn rows."""
    from raymlops.core.schema import infer_schema
    from raymlops.core.sketches import profile_table
    from raymlops.core.transform import apply_transform, fit_transform
    from raymlops.data.synthetic import make_day
    from raymlops.train.gbdt import fit_gbdt, spec_from_transform

    table = make_day("2026-01-01", 2000, seed=11)
    train, valid = table.slice(0, 1500), table.slice(1500)
    profile = profile_table(train, categorical={LABEL}, skip={*IDS, TS})
    schema = infer_schema(profile, name=NAME, task="binary", label=LABEL, timestamp=TS, id_columns=IDS)
    transform = fit_transform(profile, schema)
    result = fit_gbdt(apply_transform(transform, train), apply_transform(transform, valid),
                      spec=spec_from_transform(transform), params={"gbdt.num_boost_round": 20, "gbdt.eta": 0.3})
    return save_package(str(path), booster_json=result.booster_json, model_spec=result.model_spec,
                        transform_json=transform.to_json(), schema_yaml=schema.to_yaml(),
                        signature={"task": "binary", "label": LABEL, "threshold": 0.4}, metrics={}, tags={})


@pytest.fixture(scope="module")
def registry(_mlflow_template, tmp_path_factory):
    """Version 1: an MLP package (champion); version 2: a booster package. ``MLFLOW_TRACKING_URI`` points at them,
    as a user of ``models:/`` URIs sets it."""
    root = tmp_path_factory.mktemp("mlflow-models")
    shutil.copy(_mlflow_template, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cfg = load_config(None, [f"storage_uri={root / 'store'}", f"tracking_uri={uri}", "train.hidden_sizes=[16]"])
    reg = ModelRegistry(uri)
    package = build_package(cfg, root / "mlp", seed=1)
    mlp = reg.register(NAME, package.uri, run_id=None, digest=package.digest, tags={})
    booster = _booster_package(root / "gbdt")
    gbdt = reg.register(NAME, booster.uri, run_id=None, digest=booster.digest, tags={})
    reg.promote(NAME, mlp.version)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        yield {"root": root, "uri": uri, "reg": reg, "versions": {"mlp": reg.get(NAME, mlp.version),
                                                                  "gbdt": reg.get(NAME, gbdt.version)}}


def _raymlops_predictions(info) -> dict[str, list]:
    """The project's own paths on ROWS: batch prediction (arrow columns) and serving (request validator)."""
    model = load_package(info.package_uri, info.digest)
    batch = prediction_columns(model, pa.Table.from_pylist(ROWS))
    validator = RequestValidator(Schema.from_yaml(model.schema_yaml), max_body_bytes=1 << 22, max_instances=1000)
    served = model.predict_decoded(validator.validate(json.dumps({"instances": ROWS}).encode()).columns)
    assert batch["probability"].to_pylist() == served["probability"]
    assert batch["label"].to_pylist() == served["label"]
    return served


@pytest.mark.parametrize("kind", ["mlp", "gbdt"])
def test_pyfunc_loads_a_registered_version_and_predicts_what_raymlops_predicts(registry, kind):
    info = registry["versions"][kind]
    ref = f"models:/{NAME}@champion" if kind == "mlp" else f"models:/{NAME}/{info.version}"
    model = mlflow.pyfunc.load_model(ref)

    got = model.predict(pd.DataFrame(ROWS))
    want = _raymlops_predictions(info)
    assert list(got.columns) == ["probability", "label"]
    assert got["probability"].tolist() == want["probability"]  # bit for bit: one code path
    assert got["label"].tolist() == want["label"]
    assert len(set(want["label"])) == 2  # both classes occur: the labels are a real check

    # the signature is the package's schema; its input example predicts; the digest is the registry's
    raw = model.get_raw_model()
    features = Schema.from_yaml(raw.schema_yaml).feature_names
    assert model.metadata.signature.inputs.input_names() == features
    assert model.metadata.signature.outputs.input_names() == ["probability", "label"]
    assert len(model.predict(model.input_example)) == 2
    assert raw.digest == info.digest == model.metadata.metadata["raymlops.package_digest"]
    assert model.metadata.flavors["python_function"]["loader_module"] == "raymlops.model.pyfunc"


@pytest.mark.parametrize(("task", "label", "columns"), [("multiclass", "plan", ["probabilities", "label"]),
                                                     ("regression", "usage_gb", ["value"])])
def test_pyfunc_predicts_multiclass_and_regression_packages_too(registry, tmp_path, task, label, columns):
    cfg = load_config(None, [f"storage_uri={tmp_path}", "train.hidden_sizes=[8]", f"data.task={task}",
                             f"data.label={label}"])
    info = build_package(cfg, tmp_path / "pkg", task=task, label=label)
    assert write_mlmodel(info.uri, info.digest) is True
    # churned is a feature of these packages
    rows = [{**{k: v for k, v in r.items() if k != label}, LABEL: i % 2} for i, r in enumerate(ROWS)]
    got = mlflow.pyfunc.load_model(info.uri).predict(pd.DataFrame(rows))
    want = load_package(info.uri, info.digest).predict_decoded(pa.Table.from_pylist(rows))
    assert list(got.columns) == columns
    for name in columns:
        assert [list(v) if isinstance(v, np.ndarray) else v for v in got[name]] == want[name]


def test_pyfunc_refuses_a_tampered_package_and_a_wrong_digest(registry, tmp_path):
    info = registry["versions"]["mlp"]
    copy = tmp_path / "copy"
    shutil.copytree(info.package_uri, copy)
    with pytest.raises(PackageError, match="expected"):
        mlflow.pyfunc.load_model(str(copy), model_config={"expected_digest": "0" * 64})
    weights = copy / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(PackageError, match="weights.safetensors has sha256"):
        mlflow.pyfunc.load_model(str(copy))
    assert not list(copy.glob("*.pkl"))  # nothing pickled beside the package


def test_versions_without_an_mlmodel_are_tagged_and_can_be_given_one(registry, tmp_path):
    reg: ModelRegistry = registry["reg"]
    # not a package: registered (loading refuses it later), tagged with why MLflow cannot load it
    ghost = reg.register("ghost", str(tmp_path / "nothing"), run_id=None, digest="d" * 64, tags={}, alias=None)
    assert "no manifest.json" in ghost.tags[NO_MLMODEL_TAG]
    # a version registered before raymlops wrote MLmodels: the same package, without its MLflow files
    old = tmp_path / "old"
    shutil.copytree(registry["versions"]["mlp"].package_uri, old)
    (old / MLMODEL).unlink()
    client = MlflowClient(registry["uri"])
    client.create_registered_model("legacy")
    mv = client.create_model_version("legacy", str(old), tags={DIGEST_TAG: registry["versions"]["mlp"].digest})
    with pytest.raises(mlflow.exceptions.MlflowException, match="MLmodel"):
        mlflow.pyfunc.load_model(f"models:/legacy/{mv.version}")
    assert reg.add_mlmodel("legacy", mv.version) is True
    assert reg.add_mlmodel("legacy", mv.version) is False
    assert mlflow.pyfunc.load_model(f"models:/legacy/{mv.version}").predict(pd.DataFrame(ROWS[:3])).shape == (3, 2)


def test_mlflow_models_serve_answers_invocations_like_raymlops(registry):
    port = free_port()
    bindir = str(Path(sys.executable).parent)  # mlflow starts uvicorn by name
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry["uri"], "PATH": bindir + os.pathsep + os.environ["PATH"]}
    log = (registry["root"] / "serve.log").open("wb")
    proc = subprocess.Popen([os.path.join(bindir, "mlflow"), "models", "serve", "-m", f"models:/{NAME}@champion",
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (registry["root"] / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow models serve did not answer /ping in 240 s"
            try:
                if httpx.get(f"{base}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)

        want = _raymlops_predictions(registry["versions"]["mlp"])
        for body in ({"dataframe_records": ROWS},
                     {"dataframe_split": {"columns": list(ROWS[0]), "data": [list(r.values()) for r in ROWS]}}):
            r = httpx.post(f"{base}/invocations", json=body, timeout=60)
            assert r.status_code == 200, r.text
            got = r.json()["predictions"]
            assert [p["probability"] for p in got] == want["probability"]
            assert [p["label"] for p in got] == want["label"]
        # the input example stored with the version is a valid request
        example = json.loads(Path(registry["versions"]["mlp"].package_uri, "serving_input_example.json").read_text())
        r = httpx.post(f"{base}/invocations", json=example, timeout=60)
        assert r.status_code == 200 and len(r.json()["predictions"]) == 2, r.text
        # a row the HTTP API refuses is a 400 here, not a 500
        r = httpx.post(f"{base}/invocations", json={"dataframe_records": [{**ROWS[0], "plan": None}]}, timeout=60)
        assert r.status_code == 400, r.text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the group this test started: the CLI and its uvicorn
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
    assert np.isfinite(want["probability"]).all()


def test_run_metadata_history_dataset_and_tables_reach_mlflow(registry):
    store, client = MetadataStore(registry["uri"]), MlflowClient(registry["uri"])
    run_id = store.start_pipeline_run(NAME, pipeline=NAME, pipeline_run_id="run-1")
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 2.0 / e} for e in range(1, 502)]
    assert store.log_history(run_id, history) == 1002  # more than one log_batch holds (1000 at most)
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == list(range(1, 502))
    digest = "ab" * 32
    store.log_dataset(run_id, str(registry["root"] / "landing"), digest, profile={"rows": 10})
    store.log_dataset(run_id, "memory://landing", "cd" * 32, context="eval")  # a scheme MLflow cannot resolve
    inputs = {json.loads(d.dataset.source)["uri"]: d for d in client.get_run(run_id).inputs.dataset_inputs}
    local = inputs[str(registry["root"] / "landing")]
    assert (local.dataset.name, local.dataset.digest) == ("landing", digest[:36])
    assert json.loads(local.dataset.profile) == {"digest": digest, "rows": 10}
    assert {t.key: t.value for t in inputs["memory://landing"].tags}["mlflow.data.context"] == "eval"
    store.log_tables(run_id, {"evaluation/comparison.json": {"metric": ["roc_auc"], "challenger": [0.8]}})
    table = pd.read_json(client.download_artifacts(run_id, "evaluation/comparison.json"), orient="split")
    assert table.to_dict("records") == [{"metric": "roc_auc", "challenger": 0.8}]
    assert json.loads(client.get_run(run_id).data.tags["mlflow.loggedArtifacts"]) == \
        [{"path": "evaluation/comparison.json", "type": "table"}]  # what MLflow's UI lists as a table
