"""Gradient-boosted trees: the boosting loop, the booster in the model package (XGBoost JSON, verified, never
pickled), and predictions through the same transform and ``predict_outputs`` as the MLP."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pytest

from raymlops.config import TrainConfig, config_from_dict
from raymlops.core.schema import infer_schema
from raymlops.core.sketches import profile_table
from raymlops.core.transform import apply_transform, fit_transform
from raymlops.data.synthetic import make_day
from raymlops.errors import ConfigError, PackageError
from raymlops.model import package as pkg
from raymlops.model.gbdt import BOOSTER_FILE, BoosterPredictor, feature_matrix, load_booster
from raymlops.model.nets import predict_outputs
from raymlops.train.gbdt import (
    booster_params,
    fit_gbdt,
    fit_gbdt_prepared,
    spec_from_transform,
)
from raymlops.train.loop import resolve_train_config
from tests.data_helpers import IDS, LABEL, TS

FAST = {"gbdt.num_boost_round": 60, "gbdt.early_stopping_rounds": 10, "gbdt.eta": 0.2}


def _fitted(task: str = "binary", label: str = LABEL, rows: int = 3000, params: dict | None = None):
    """Synthetic churn rows, a transform fitted on the training part, and a booster fitted on its arrays."""
    table = make_day("2026-01-01", rows, seed=11)
    train, valid, test = table.slice(0, rows // 2), table.slice(rows // 2, rows // 4), table.slice(3 * rows // 4)
    categorical = {label} if task != "regression" else set()
    profile = profile_table(train, categorical=categorical, skip={*IDS, TS})
    schema = infer_schema(profile, name="churn", task=task, label=label, timestamp=TS, id_columns=IDS)
    transform = fit_transform(profile, schema)
    result = fit_gbdt(apply_transform(transform, train), apply_transform(transform, valid),
                      spec=spec_from_transform(transform), params={**FAST, **(params or {})})
    return transform, schema, result, test


@pytest.fixture(scope="module")
def binary():
    return _fitted()


def _save(path, transform, schema, result, signature=None):
    return pkg.save_package(
        str(path), booster_json=result.booster_json, model_spec=result.model_spec,
        transform_json=transform.to_json(), schema_yaml=schema.to_yaml(),
        signature=signature or {"task": transform.task, "label": transform.label, "threshold": 0.5},
        metrics={"best_val_loss": result.best_val_loss}, tags={"pipeline_run_id": "run-1"},
    )


def test_transform_gives_the_booster_numeric_then_categorical_columns(binary):
    transform, _, result, test = binary
    assert transform.categorical, "the churn data must exercise categorical features"
    arrays = apply_transform(transform, test)
    x = feature_matrix(arrays["x_num"], arrays["x_cat"])
    assert x.dtype == np.float32 and x.shape == (test.num_rows, len(transform.numeric) + len(transform.categorical))
    np.testing.assert_array_equal(x[:, len(transform.numeric):], arrays["x_cat"])
    booster = load_booster(result.booster_json)
    assert booster.feature_types == ["q"] * len(transform.numeric) + ["c"] * len(transform.categorical)


def test_package_round_trip_predicts_exactly_what_the_trained_booster_did(tmp_path, binary):
    transform, schema, result, test = binary
    arrays = apply_transform(transform, test, with_label=False)
    before = predict_outputs("binary", BoosterPredictor.from_json(result.booster_json, result.model_spec)
                             .logits(arrays["x_num"], arrays["x_cat"]))
    # xgboost's own probability for the same rows: the margin + predict_outputs' sigmoid must reproduce it
    reference = load_booster(result.booster_json).inplace_predict(feature_matrix(arrays["x_num"], arrays["x_cat"]))
    np.testing.assert_allclose(before["probability"], reference, rtol=1e-6, atol=1e-7)

    info = _save(tmp_path / "pkg", transform, schema, result)
    loaded = pkg.load_package(info.uri, info.digest)
    after = loaded.predict(test)
    assert set(after) == {"probability", "label"}
    np.testing.assert_array_equal(after["probability"], before["probability"])
    np.testing.assert_array_equal(after["label"], before["label"])
    assert isinstance(loaded.model, BoosterPredictor)
    assert loaded.model_spec["model"] == "xgboost"
    # the booster learned something: better than the base rate on held-out rows
    y = apply_transform(transform, test)["y"]
    assert ((after["label"] == y).mean()) > max(y.mean(), 1 - y.mean())


def test_package_holds_the_booster_as_xgboost_json_and_the_digest_covers_it(tmp_path, binary):
    transform, schema, result, _ = binary
    info = _save(tmp_path / "pkg", transform, schema, result)
    assert sorted(os.listdir(info.uri)) == sorted([*pkg.BOOSTER_PACKAGE_FILES, pkg.MANIFEST])
    raw = (tmp_path / "pkg" / BOOSTER_FILE).read_bytes()
    assert raw == result.booster_json
    doc = json.loads(raw)  # plain JSON, XGBoost's model schema
    assert "learner" in doc and "version" in doc
    manifest = json.loads((tmp_path / "pkg" / pkg.MANIFEST).read_text())
    assert manifest["format_version"] == pkg.BOOSTER_FORMAT_VERSION
    hashes = {name: entry["sha256"] for name, entry in manifest["files"].items()}
    assert set(hashes) == set(pkg.BOOSTER_PACKAGE_FILES)
    assert pkg.package_digest(hashes) == info.digest == manifest["digest"]
    # the same content saved again is the same package; another booster there is refused (immutable)
    assert _save(tmp_path / "pkg", transform, schema, result).digest == info.digest
    other = fit_gbdt({"x_num": np.zeros((4, len(transform.numeric)), np.float32),
                      "x_cat": np.zeros((4, len(transform.categorical)), np.int64), "y": np.array([0, 1, 0, 1.0])},
                     {"x_num": np.zeros((2, len(transform.numeric)), np.float32),
                      "x_cat": np.zeros((2, len(transform.categorical)), np.int64), "y": np.array([0, 1.0])},
                     spec=result.model_spec, params={"gbdt.num_boost_round": 2})
    with pytest.raises(PackageError, match="different package"):
        _save(tmp_path / "pkg", transform, schema, other)


def test_tampered_booster_is_refused(tmp_path, binary):
    transform, schema, result, _ = binary
    info = _save(tmp_path / "pkg", transform, schema, result)
    path = tmp_path / "pkg" / BOOSTER_FILE
    doc = json.loads(path.read_bytes())
    doc["learner"]["learner_model_param"]["base_score"] = "[9.9E-1]"  # still a valid model, different answers
    path.write_text(json.dumps(doc))
    with pytest.raises(PackageError, match=f"{BOOSTER_FILE} has sha256"):
        pkg.load_package(info.uri)
    with pytest.raises(PackageError, match="tampered"):
        pkg.verify_package(info.uri, info.digest)
    path.unlink()
    with pytest.raises(PackageError, match=f"{BOOSTER_FILE} is missing"):
        pkg.load_package(info.uri)


def test_corrupt_booster_with_a_matching_manifest_is_a_package_error(tmp_path, binary):
    # Written through save_package, so the hashes agree: the content itself is not a model.
    transform, schema, result, _ = binary
    result.booster_json, good = b'{"not": "a model"}', result.booster_json
    try:
        info = _save(tmp_path / "pkg", transform, schema, result)
    finally:
        result.booster_json = good
    with pytest.raises(PackageError, match="not a readable XGBoost JSON model"):
        pkg.load_package(info.uri)


def test_booster_that_does_not_fit_its_spec_is_refused(tmp_path, binary):
    transform, schema, result, _ = binary
    spec = {**result.model_spec, "n_numeric": result.model_spec["n_numeric"] + 1}
    info = pkg.save_package(str(tmp_path / "pkg"), booster_json=result.booster_json, model_spec=spec,
                            transform_json=transform.to_json(), schema_yaml=schema.to_yaml(), signature={},
                            metrics={}, tags={})
    with pytest.raises(PackageError, match="features but model_spec.json describes"):
        pkg.load_package(info.uri)


def test_save_package_takes_exactly_one_model(tmp_path, binary):
    transform, schema, result, _ = binary
    common = dict(transform_json=transform.to_json(), schema_yaml=schema.to_yaml(), signature={}, metrics={},
                  tags={})
    with pytest.raises(PackageError, match="exactly one model"):
        pkg.save_package(str(tmp_path / "a"), model_spec=result.model_spec, **common)
    with pytest.raises(PackageError, match="exactly one model"):
        pkg.save_package(str(tmp_path / "b"), state_dict={"w": np.zeros(1)}, booster_json=result.booster_json,
                         model_spec=result.model_spec, **common)
    with pytest.raises(PackageError, match="model_spec\\['model'\\] == 'xgboost'"):
        pkg.save_package(str(tmp_path / "c"), booster_json=result.booster_json,
                         model_spec={**result.model_spec, "model": "mlp"}, **common)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_manifest_whose_files_do_not_match_its_format_is_refused(tmp_path, binary):
    transform, schema, result, _ = binary
    info = _save(tmp_path / "pkg", transform, schema, result)
    path = tmp_path / "pkg" / pkg.MANIFEST
    manifest = json.loads(path.read_text())
    manifest["format_version"] = pkg.FORMAT_VERSION  # a torch layout that lists model.json
    path.write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match="expected .*weights.safetensors"):
        pkg.load_package(info.uri)
    manifest["format_version"] = 99
    path.write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match="package format 99"):
        pkg.load_package(info.uri)


def test_the_packages_threshold_decides_booster_labels(tmp_path, binary):
    transform, schema, result, test = binary
    low = pkg.load_package(_save(tmp_path / "low", transform, schema, result, {"threshold": 0.05}).uri).predict(test)
    high = pkg.load_package(_save(tmp_path / "high", transform, schema, result, {"threshold": 0.95}).uri).predict(test)
    np.testing.assert_array_equal(low["probability"], high["probability"])
    np.testing.assert_array_equal(low["label"], (low["probability"] >= 0.05).astype(np.int64))
    np.testing.assert_array_equal(high["label"], (high["probability"] >= 0.95).astype(np.int64))
    assert low["label"].sum() > high["label"].sum()


def test_multiclass_booster_gives_softmax_probabilities_of_every_class(tmp_path):
    transform, schema, result, test = _fitted("multiclass", label="plan")
    loaded = pkg.load_package(_save(tmp_path / "pkg", transform, schema, result).uri)
    out = loaded.predict(test)
    arrays = apply_transform(transform, test)
    expected = load_booster(result.booster_json).inplace_predict(feature_matrix(arrays["x_num"], arrays["x_cat"]))
    assert out["probabilities"].shape == (test.num_rows, len(transform.classes))
    np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(out["label"], out["probabilities"].argmax(axis=1))


def test_regression_booster_predicts_values(tmp_path):
    transform, schema, result, test = _fitted("regression", label="monthly_charges")
    out = pkg.load_package(_save(tmp_path / "pkg", transform, schema, result).uri).predict(test)
    assert set(out) == {"value"}
    y = apply_transform(transform, test)["y"]
    rmse = float(np.sqrt(np.mean((out["value"] - y) ** 2)))
    assert rmse < float(np.std(y))  # better than predicting the mean


def test_unseen_and_missing_categories_predict_like_out_of_vocabulary(binary):
    transform, _, result, test = binary
    predictor = BoosterPredictor.from_json(result.booster_json, result.model_spec)
    col = transform.categorical[0].name
    rows = test.slice(0, 5)
    unseen = rows.set_column(rows.schema.get_field_index(col), col, pa.array(["never-seen"] * 5))
    null = rows.set_column(rows.schema.get_field_index(col), col, pa.array([None] * 5, pa.string()))
    a, b = (apply_transform(transform, t, with_label=False) for t in (unseen, null))
    assert (a["x_cat"][:, 0] == 0).all()
    np.testing.assert_array_equal(predictor.logits(a["x_num"], a["x_cat"]), predictor.logits(b["x_num"], b["x_cat"]))
    empty = apply_transform(transform, test.slice(0, 0), with_label=False)
    assert predictor.logits(empty["x_num"], empty["x_cat"]).shape == (0,)


def test_early_stopping_keeps_the_best_round():
    rng = np.random.default_rng(0)
    n = 600
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x[:, 0] + rng.normal(scale=1.5, size=n) > 0).astype(np.float32)  # noisy: overfits after a few rounds
    arrays = {"x_num": x, "x_cat": np.zeros((n, 0), np.int64), "y": y}
    train = {k: v[:400] for k, v in arrays.items()}
    valid = {k: v[400:] for k, v in arrays.items()}
    reports: list[dict] = []
    res = fit_gbdt(train, valid, spec={"model": "xgboost", "task": "binary", "n_numeric": 3, "cardinalities": [],
                                       "n_classes": 2, "feature_types": ["q"] * 3},
                   params={"gbdt.num_boost_round": 400, "gbdt.early_stopping_rounds": 15, "gbdt.eta": 0.3,
                           "gbdt.max_depth": 8},
                   progress=reports.append)
    rounds = len(res.history)
    assert rounds < 400 and rounds == res.best_epoch + 15
    assert res.best_val_loss == min(h["val_loss"] for h in res.history)
    assert load_booster(res.booster_json).num_boosted_rounds() == res.best_epoch == res.model_spec["num_boosted_rounds"]
    assert reports[-1]["best_round"] == res.best_epoch and {"epoch", "train_loss", "val_loss", "val_accuracy"} <= set(reports[0])


def test_balanced_class_weight_raises_the_minority_probability():
    rng = np.random.default_rng(1)
    n = 2000
    x = rng.normal(size=(n, 2)).astype(np.float32)
    y = (x[:, 0] + rng.normal(size=n) > 2.0).astype(np.float32)  # ~8% positives
    arrays = {"x_num": x, "x_cat": np.zeros((n, 0), np.int64), "y": y}
    spec = {"model": "xgboost", "task": "binary", "n_numeric": 2, "cardinalities": [], "n_classes": 2,
            "feature_types": ["q", "q"]}
    p = {}
    for weight in ("none", "balanced"):
        res = fit_gbdt(arrays, arrays, spec=spec, params={**FAST, "class_weight": weight})
        z = BoosterPredictor.from_json(res.booster_json, res.model_spec).logits(x, arrays["x_cat"])
        p[weight] = predict_outputs("binary", z)["probability"]
    # A log-loss fit matches the (weighted) mean of its training labels: the prior, or 1/2 with balanced weights.
    w = np.where(y == 1, n / (2 * y.sum()), n / (2 * (n - y.sum())))
    assert p["none"].mean() == pytest.approx(y.mean(), abs=0.02)
    assert np.average(p["balanced"], weights=w) == pytest.approx(0.5, abs=0.05)
    assert p["balanced"].mean() > 2 * p["none"].mean()


def test_fit_gbdt_prepared_reads_the_prepared_splits_like_the_pipeline(tmp_path):
    import pyarrow.parquet as pq

    from raymlops.data.prepare import PreparedData

    table = make_day("2026-01-01", 1600, seed=11)
    profile = profile_table(table.slice(0, 1000), categorical={LABEL}, skip={*IDS, TS})
    schema = infer_schema(profile, name="churn", task="binary", label=LABEL, timestamp=TS, id_columns=IDS)
    transform = fit_transform(profile, schema)
    uris = {}
    for split, (start, n) in {"train": (0, 1000), "validation": (1000, 300), "test": (1300, 300)}.items():
        os.makedirs(tmp_path / split)
        pq.write_table(table.slice(start, n), tmp_path / split / "part-0.parquet")
        uris[split] = str(tmp_path / split)
    prepared = PreparedData(str(tmp_path), uris, transform, {"train": 1000, "validation": 300, "test": 300})
    cfg = config_from_dict({"train": {"model": "xgboost", "seed": 3, "gbdt": {"num_boost_round": 30}}})
    res = fit_gbdt_prepared(cfg, prepared)
    direct = fit_gbdt(apply_transform(transform, table.slice(0, 1000)), apply_transform(transform, table.slice(1000, 300)),
                      spec=spec_from_transform(transform), config=cfg.train)
    assert res.booster_json == direct.booster_json  # same rows, same transform, same seed: the same trees
    assert res.params["gbdt"]["num_boost_round"] == 30 and res.model_spec["params"]["seed"] == 3


def test_resolve_gbdt_config_applies_gbdt_and_train_keys():
    tc = resolve_train_config(TrainConfig(model="xgboost"), {"gbdt.eta": np.float64(0.2), "gbdt.max_depth": 3,
                                                            "seed": 7})
    assert (tc.gbdt.eta, tc.gbdt.max_depth, tc.seed) == (0.2, 3, 7)
    with pytest.raises(ConfigError, match="unknown train keys \\['gbdt.depth'\\]"):
        resolve_train_config(TrainConfig(model="xgboost"), {"gbdt.depth": 3})
    with pytest.raises(ConfigError, match="invalid train params"):
        resolve_train_config(TrainConfig(model="xgboost"), {"gbdt.eta": 2.0})


def test_gpu_needs_an_xgboost_built_with_cuda():
    import xgboost

    tc = TrainConfig(model="xgboost", use_gpu=True)
    if xgboost.build_info().get("USE_CUDA"):
        assert booster_params(tc, "binary", 2)["device"] == "cuda"
    else:
        with pytest.raises(ConfigError, match="train.use_gpu.*no CUDA support"):
            booster_params(tc, "binary", 2)


def test_config_accepts_xgboost_and_refuses_a_search_space_for_the_other_model():
    cfg = config_from_dict({"train": {"model": "xgboost", "gbdt": {"eta": 0.1}}})
    assert cfg.train.model == "xgboost" and cfg.train.gbdt.eta == 0.1
    with pytest.raises(ConfigError, match="train.model: Value error, unknown model 'xgbost'"):
        config_from_dict({"train": {"model": "xgbost"}})
    with pytest.raises(ConfigError, match="train.gbdt.eta"):
        config_from_dict({"train": {"gbdt": {"eta": 0}}})
    lr = {"learning_rate": {"type": "loguniform", "low": 1e-3, "high": 1e-1}}
    with pytest.raises(ConfigError, match="\\['learning_rate'\\] do nothing for train.model 'xgboost'"):
        config_from_dict({"train": {"model": "xgboost"}, "tune": {"enabled": True, "search_space": lr}})
    eta = {"gbdt.eta": {"type": "loguniform", "low": 1e-2, "high": 3e-1}}
    with pytest.raises(ConfigError, match="\\['gbdt.eta'\\] do nothing for train.model 'mlp'"):
        config_from_dict({"tune": {"enabled": True, "search_space": eta}})
    with pytest.raises(ConfigError, match="unknown train keys \\['gbdt.nope'\\]"):
        config_from_dict({"tune": {"search_space": {"gbdt.nope": eta["gbdt.eta"]}}})
    ok = config_from_dict({"train": {"model": "xgboost"}, "tune": {"enabled": True, "search_space": eta}})
    assert list(ok.tune.search_space) == ["gbdt.eta"]


class _ResumableIO:
    """The runner's seam (see fit_booster): keeps the checkpoint written at round ``save_at`` in ``directory``,
    and, once ``restore_from`` is set, hands it back like Ray Train's ``get_checkpoint`` after a worker failure."""

    nthread = 1

    def __init__(self, directory, save_at: int | None = None, restore: bool = False):
        self.dir, self.save_at, self.restore_it, self.reports = str(directory), save_at, restore, []

    def all_reduce(self, values):
        return values

    def restore(self):
        from raymlops.train import gbdt

        return gbdt._load_checkpoint_dir(self.dir) if self.restore_it else None

    def report(self, metrics, save, final):
        self.reports.append(dict(metrics))
        if metrics["epoch"] == self.save_at and not final:
            save(self.dir)


def test_a_restarted_run_continues_boosting_from_its_checkpoint(tmp_path):
    from raymlops.train.gbdt import fit_booster

    rng = np.random.default_rng(2)
    x = rng.normal(size=(800, 3)).astype(np.float32)
    y = (x[:, 0] - x[:, 1] > 0).astype(np.float32)
    arrays = {"x_num": x, "x_cat": np.zeros((800, 0), np.int64), "y": y}
    train = {k: v[:600] for k, v in arrays.items()}
    valid = {k: v[600:] for k, v in arrays.items()}
    spec = {"model": "xgboost", "task": "binary", "n_numeric": 3, "cardinalities": [], "n_classes": 2,
            "feature_types": ["q"] * 3}
    # Deterministic trees (no row or column sampling), no early stop: a resumed run must end where one run ends.
    tc = resolve_train_config(TrainConfig(model="xgboost"), {
        "gbdt.num_boost_round": 50, "gbdt.early_stopping_rounds": 0, "gbdt.subsample": 1.0,
        "gbdt.colsample_bytree": 1.0, "gbdt.eta": 0.3})
    whole, whole_state, _ = fit_booster(tc, spec, train, valid, _ResumableIO(tmp_path / "unused"))
    (tmp_path / "ckpt").mkdir()
    fit_booster(tc, spec, train, valid, _ResumableIO(tmp_path / "ckpt", save_at=20))  # the run that "failed"
    io = _ResumableIO(tmp_path / "ckpt", restore=True)
    resumed, state, _ = fit_booster(tc, spec, train, valid, io)
    assert resumed.num_boosted_rounds() == whole.num_boosted_rounds() == 50
    assert io.reports[0]["epoch"] > 20  # boosting went on after round 20, it did not start over
    assert [h["epoch"] for h in state.history] == list(range(1, 51))
    assert state.history[-1]["val_loss"] == pytest.approx(whole_state.history[-1]["val_loss"], rel=1e-4)
    xm = feature_matrix(valid["x_num"], valid["x_cat"])
    np.testing.assert_allclose(resumed.inplace_predict(xm), whole.inplace_predict(xm), atol=1e-5)
