"""Evaluation on Ray Data and the fresh-process infrastructure check, with a fake model and a real package."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from raymlops.core.blessing import GatePolicy, bless
from raymlops.core.metrics import compute_metrics, metrics_for_task, naive_outputs, sliced_metrics
from raymlops.errors import DataError
from raymlops.evaluation.evaluate import PredictBatch, evaluate, evaluate_champion_on, predict_splits
from raymlops.evaluation.infra_check import check_package_in_fresh_process
from raymlops.model.package import verify_package


class FakeModel:
    """Scores churn from tenure; ``skill`` < 1 blends in noise, so two fakes differ in quality."""

    def __init__(self, skill: float = 1.0, seed: int = 0):
        self.skill = skill
        self.seed = seed
        self.classes = [0, 1]

    def predict(self, batch):
        tenure = np.asarray(batch.column("tenure_months").to_numpy(zero_copy_only=False), dtype=float)
        noise = np.random.default_rng(self.seed + len(tenure)).random(len(tenure))
        p = self.skill / (1 + np.exp((tenure - 24) / 6)) + (1 - self.skill) * noise
        return {"probability": p, "label": (p >= 0.5).astype(np.int64)}


def churn_table(n: int = 1200, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    tenure = rng.integers(0, 72, n)
    churned = (rng.random(n) < 1 / (1 + np.exp((tenure - 24) / 8))).astype(np.int64)
    return pa.table({
        "customer_id": [f"c{i}" for i in range(n)],
        "region": rng.choice(["north", "south", "east", "west"], n),
        "plan": rng.choice(["basic", "standard", "premium"], n),
        "tenure_months": tenure,
        "monthly_charges": rng.uniform(20, 120, n),
        "churned": churned,
    })


@pytest.fixture(scope="module")
def splits():
    t = churn_table()
    return {"train": t.slice(0, 800), "validation": t.slice(800, 200), "test": t.slice(1000, 200)}


def test_predict_batch_is_a_plain_callable():
    t = churn_table(10)
    out = PredictBatch(FakeModel(), "churned", ["region"])(t)
    assert out.num_rows == 10 and "__out__probability" in out.column_names and "__slice__region" in out.column_names


def test_evaluate_on_ray_dataset_matches_direct_computation(ray_session, splits):
    import ray.data

    datasets = {k: ray.data.from_arrow(v).repartition(3) for k, v in splits.items()}
    result = evaluate(FakeModel(), datasets, task="binary", label="churned", slices=["region", "plan"], batch_size=64)

    test = splits["test"]
    outputs = FakeModel().predict(test)
    y = test.column("churned").to_numpy()
    assert result.rows == {"train": 800, "validation": 200, "test": 200}
    for name, value in compute_metrics("binary", y, outputs).items():
        assert result.metrics["test"][name] == pytest.approx(value)
    expected_slices = sliced_metrics(
        "binary", y, outputs, {s: test.column(s) for s in ("region", "plan")}
    )
    assert set(result.slices) == {"region", "plan"}
    for column, values in expected_slices.items():
        for value, entry in values.items():
            assert result.slices[column][value] == pytest.approx(entry, nan_ok=True)
    assert result.metrics["test"]["roc_auc"] > 0.7

    # The same model on the same rows as an in-memory table gives the same result and the same test fingerprint.
    local = evaluate(FakeModel(), splits, task="binary", label="churned", slices=["region", "plan"])
    assert local.test_fingerprint == result.test_fingerprint
    assert local.metrics["test"] == pytest.approx(result.metrics["test"])


def test_champion_on_the_same_test_split_feeds_blessing(ray_session, splits):
    import ray.data

    test_ds = ray.data.from_arrow(splits["test"])
    challenger = evaluate(FakeModel(1.0), {"test": test_ds}, task="binary", label="churned", slices=["region"])
    champion = evaluate_champion_on(test_ds, FakeModel(0.3), task="binary", label="churned", slices=["region"])
    assert champion.test_fingerprint == challenger.test_fingerprint
    policy = GatePolicy(min_slice_rows=20)
    assert bless(challenger, champion, None, policy).blessed
    reverse = bless(champion, challenger, None, policy)
    assert not reverse.blessed and "vs_champion" in reverse.summary()


class FakePlanModel:
    """Multiclass: predicts the plan (string classes) from monthly charges."""

    classes = ["basic", "premium", "standard"]

    def predict(self, batch):
        charges = np.asarray(batch.column("monthly_charges").to_numpy(), dtype=float)
        logits = -np.abs(charges[:, None] - np.array([40.0, 100.0, 70.0])[None, :]) / 10
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        return {"probabilities": p, "label": p.argmax(axis=1)}


def test_multiclass_probabilities_survive_ray_blocks(ray_session, splits):
    import ray.data

    test = splits["test"]
    result = evaluate(FakePlanModel(), {"test": ray.data.from_arrow(test).repartition(2)}, task="multiclass",
                      label="plan", slices=["region"], batch_size=50)
    expected = compute_metrics("multiclass", test.column("plan").to_numpy(zero_copy_only=False),
                               FakePlanModel().predict(test), classes=FakePlanModel.classes)
    assert result.metrics["test"] == pytest.approx(expected)
    assert sum(v["rows"] for v in result.slices["region"].values()) == 200


def test_missing_slice_column_and_null_labels_are_data_errors(splits):
    with pytest.raises(DataError, match="data.slices"):
        evaluate(FakeModel(), {"test": splits["test"]}, task="binary", label="churned", slices=["country"])
    nulls = splits["test"].set_column(5, "churned", pa.array([None] * 200, pa.int64()))
    with pytest.raises(DataError, match="nulls"):
        evaluate(FakeModel(), {"test": nulls}, task="binary", label="churned")


def test_empty_split_gives_nan_with_a_note(splits):
    result = evaluate(FakeModel(), {"test": splits["test"].slice(0, 0)}, task="binary", label="churned")
    assert result.rows["test"] == 0 and math.isnan(result.metric("roc_auc"))
    assert "no rows" in result.notes["test.roc_auc"]


# ------------------------------------------------------------------------------------------- infra check
FAKE_LOADER = '''
import time
import numpy as np

class _Model:
    def __init__(self, rows_out):
        self.rows_out = rows_out
    def predict(self, table):
        n = table.num_rows if self.rows_out is None else self.rows_out
        return {"probability": np.full(n, 0.5), "label": np.zeros(n, dtype=np.int64)}

def load(uri, expected_digest, policy=None):
    kind = open(uri + "/kind").read().strip()
    if kind == "broken":
        raise ValueError("weights are corrupt")
    if kind == "slow":
        time.sleep(30)
    if kind == "big":
        global BALLAST
        BALLAST = np.ones(80 * 1024 * 1024 // 8)  # touched pages count in RSS
    if kind == "crash":
        import os
        os._exit(7)
    return _Model(3 if kind == "shape" else None)
'''


@pytest.fixture
def fake_packages(tmp_path, monkeypatch):
    (tmp_path / "fake_loader.py").write_text(FAKE_LOADER)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))

    def make(kind: str) -> str:
        d = tmp_path / kind
        d.mkdir()
        (d / "kind").write_text(kind)
        (d / "weights.bin").write_bytes(b"\0" * 300_000)
        return str(d)

    return make


ROWS = [{"tenure_months": 3, "plan": "basic"}, {"tenure_months": 40, "plan": "premium"}]
FAKE = "f" * 64  # the fake loader checks no digest


def test_infra_check_reports_a_good_fake_package(fake_packages):
    r = check_package_in_fresh_process(fake_packages("ok"), ROWS, 2, expected_digest=FAKE, loader="fake_loader:load")
    assert r["loaded"] and r["predict_ok"] and r["output_shape_ok"] and r["error"] is None
    assert r["package_mb"] == pytest.approx(300_000 / 2**20, rel=0.01)
    assert r["peak_memory_mb"] > 10 and r["load_time_s"] >= 0


def test_infra_check_measures_memory_of_the_load(fake_packages):
    small = check_package_in_fresh_process(fake_packages("ok"), ROWS, 2, expected_digest=FAKE, loader="fake_loader:load")
    big = check_package_in_fresh_process(fake_packages("big"), ROWS, 2, expected_digest=FAKE, loader="fake_loader:load")
    assert big["peak_memory_mb"] - small["peak_memory_mb"] > 60


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("broken", "load failed: ValueError: weights are corrupt"),
        ("shape", "expected 2 rows in every output"),
        ("crash", "exited with code 7"),
    ],
)
def test_infra_check_failures_are_explained_not_raised(fake_packages, kind, expected):
    r = check_package_in_fresh_process(fake_packages(kind), ROWS, 2, expected_digest=FAKE, loader="fake_loader:load")
    assert expected in r["error"] and "Traceback" not in r["error"]
    assert not (r["loaded"] and r["predict_ok"] and r["output_shape_ok"])


def test_infra_check_accepts_a_relative_path(fake_packages, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    fake_packages("ok")
    assert check_package_in_fresh_process("ok", ROWS, 2, expected_digest=FAKE, loader="fake_loader:load")["predict_ok"]


def test_infra_check_times_out(fake_packages):
    r = check_package_in_fresh_process(fake_packages("slow"), ROWS, 2, timeout_s=3, expected_digest=FAKE,
                                       loader="fake_loader:load")
    assert not r["loaded"] and "timed out after 3 s" in r["error"]


# ---------------------------------------------------------------------------------------- real package
@pytest.fixture(scope="module")
def real_package(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from raymlops.core.transform import CategoricalColumn, NumericColumn, Transform
    from raymlops.model.nets import build_model
    from raymlops.model.package import save_package

    spec = {"model": "mlp", "n_numeric": 2, "cardinalities": [4], "embedding_dim": 3, "hidden_sizes": [8],
            "dropout": 0.0, "task": "binary", "n_classes": 2}
    transform = Transform(
        numeric=[NumericColumn("tenure_months", 30.0, 30.0, 20.0), NumericColumn("monthly_charges", 70.0, 70.0, 30.0)],
        categorical=[CategoricalColumn("plan", ["basic", "standard", "premium"])],
        label="churned", task="binary", classes=[0, 1],
    )
    torch.manual_seed(0)
    model = build_model(spec)
    info = save_package(
        str(tmp_path_factory.mktemp("pkg") / "model"), state_dict=model.state_dict(), model_spec=spec,
        transform_json=transform.to_json(), schema_yaml="name: churn\nversion: 1\ntask: binary\ncolumns: []\n",
        signature={"inputs": transform.feature_names, "outputs": ["probability", "label"]},
        metrics={}, tags={},
    )
    return info


def test_real_package_evaluates_on_ray_and_passes_the_infra_check(ray_session, real_package, splits):
    import ray.data

    ds = ray.data.from_arrow(splits["test"])
    result = evaluate(real_package.uri, {"test": ds}, task="binary", label="churned", slices=["region"],
                      expected_digest=real_package.digest)
    assert result.rows["test"] == 200 and 0.0 <= result.metric("roc_auc") <= 1.0
    assert set(result.slices["region"]) == {"north", "south", "east", "west"}

    rows = splits["test"].slice(0, 5).to_pylist()
    infra = check_package_in_fresh_process(real_package.uri, rows, 5, expected_digest=real_package.digest)
    assert infra["loaded"] and infra["predict_ok"] and infra["output_shape_ok"], infra["error"]
    assert infra["output_shapes"] == {"probability": [5], "label": [5]}
    decision = bless(result, None, infra, GatePolicy(min_primary=None))
    assert all(g.verdict != "fail" for g in decision.gates if g.name.startswith(("package", "load")))


# ------------------------------------------------------------------------------ naive baseline and reference
def _prior_package(path, prior: float) -> str:
    """A real package whose MLP ignores its inputs: zero weights, output bias at the prior's log-odds."""
    import torch

    from raymlops.core.transform import CategoricalColumn, NumericColumn, Transform
    from raymlops.model.nets import build_model
    from raymlops.model.package import save_package

    spec = {"model": "mlp", "n_numeric": 2, "cardinalities": [4], "embedding_dim": 3, "hidden_sizes": [8],
            "dropout": 0.0, "task": "binary", "n_classes": 2}
    transform = Transform(
        numeric=[NumericColumn("tenure_months", 30.0, 30.0, 20.0), NumericColumn("monthly_charges", 70.0, 70.0, 30.0)],
        categorical=[CategoricalColumn("plan", ["basic", "standard", "premium"])],
        label="churned", task="binary", classes=[0, 1],
    )
    model = build_model(spec)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.head.bias.fill_(math.log(prior / (1 - prior)))
    return save_package(str(path), state_dict=model.state_dict(), model_spec=spec, transform_json=transform.to_json(),
                        schema_yaml="name: churn\n", signature={"task": "binary"}, metrics={}, tags={}).uri


def test_a_model_predicting_the_majority_class_is_refused_naming_the_baseline(ray_session, splits, tmp_path):
    import ray.data

    prior = float(np.mean(splits["train"].column("churned").to_numpy()))
    datasets = {k: ray.data.from_arrow(v) for k, v in splits.items()}
    uri = _prior_package(tmp_path / "prior", prior)
    result = evaluate(uri, datasets, task="binary", label="churned", slices=["region"],
                      expected_digest=verify_package(uri).digest)
    # the naive baseline is fitted on the training labels and scored on the test rows
    y_test = splits["test"].column("churned").to_numpy()
    expected = compute_metrics("binary", y_test, naive_outputs("binary", splits["train"].column("churned").to_numpy(),
                                                                len(y_test)))
    assert result.baseline == pytest.approx(expected)
    assert result.metric("roc_auc") == result.baseline["roc_auc"] == 0.5  # it ranks nobody: exactly the baseline
    decision = bless(result, None, None, GatePolicy(min_primary=None, min_slice_rows=20))
    assert not decision.blessed and [g.name for g in decision.failed] == ["vs_baseline"]
    assert "naive baseline (the training class prior (majority class))" in decision.summary()
    # a model that ranks the customers beats the same baseline
    good = evaluate(FakeModel(), splits, task="binary", label="churned")
    assert bless(good, None, None, GatePolicy(min_slice_rows=20)).blessed


def test_predict_splits_returns_labels_and_scores_of_every_row(ray_session, splits):
    import ray.data

    scored = predict_splits(FakeModel(), {"validation": ray.data.from_arrow(splits["validation"]).repartition(2),
                                          "empty": splits["test"].slice(0, 0)}, label="churned")
    y, outputs = scored["validation"]
    assert scored["empty"] is None and len(y) == len(outputs["probability"]) == 200
    # row order is not promised: compare as sets of (label, score) pairs
    direct = FakeModel().predict(splits["validation"])["probability"]
    assert sorted(zip(y.tolist(), outputs["probability"].tolist(), strict=True)) == sorted(
        zip(splits["validation"].column("churned").to_pylist(), direct.tolist(), strict=True))


def test_reference_model_fits_the_training_split_and_tunes_its_threshold(splits):
    from raymlops.core.transform import CategoricalColumn, NumericColumn, Transform
    from raymlops.evaluation.reference import fit_reference

    transform = Transform(
        numeric=[NumericColumn("tenure_months", 30.0, 30.0, 20.0), NumericColumn("monthly_charges", 70.0, 70.0, 30.0)],
        categorical=[CategoricalColumn("plan", ["basic", "standard", "premium"]),
                     CategoricalColumn("region", ["north", "south", "east", "west"])],
        label="churned", task="binary", classes=[0, 1],
    )
    ref = fit_reference(transform, splits["train"], splits["test"], splits["validation"])
    assert ref["model"] == "HistGradientBoostingClassifier" and ref["train_rows"] == 800 and ref["test_rows"] == 200
    assert ref["metrics"]["roc_auc"] > 0.7  # churn is driven by tenure: trees find it
    assert set(ref["metrics"]) == set(metrics_for_task("binary")) and 0 < ref["threshold"] < 1
    one_class = splits["train"].set_column(5, "churned", pa.array([0] * 800, pa.int64()))
    assert "single class" in fit_reference(transform, one_class, splits["test"])["skipped"]

    regression = Transform(transform.numeric[:1], transform.categorical, "monthly_charges", "regression")
    reg = fit_reference(regression, splits["train"], splits["test"])
    assert reg["model"] == "HistGradientBoostingRegressor" and reg["threshold"] is None
    assert set(reg["metrics"]) == {"rmse", "mae", "r2"}
