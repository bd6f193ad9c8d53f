"""Built-in model, user-model loading and the single-process training loop (no Ray)."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest
import torch

from raymlops.config import load_config
from raymlops.errors import ConfigError
from raymlops.model.nets import TabularMLP, build_model, loss_fn, predict_outputs, set_seed
from raymlops.train.loop import read_checkpoint, resolve_train_config, train_local

SPEC = {"model": "mlp", "n_numeric": 3, "cardinalities": [4, 3], "embedding_dim": 4, "hidden_sizes": [16],
        "dropout": 0.0, "task": "binary", "n_classes": 2}


def cfg(*overrides: str):
    return load_config(None, ["train.dropout=0", "train.weight_decay=0", *overrides])


def learnable(n: int, seed: int, task: str = "binary") -> dict[str, np.ndarray]:
    """A numeric signal plus a categorical effect; category 0 (OOV) included."""
    rng = np.random.default_rng(seed)
    x_num = rng.normal(size=(n, 3)).astype(np.float32)
    x_cat = np.stack([rng.integers(0, 4, n), rng.integers(0, 3, n)], axis=1).astype(np.int64)
    score = 2 * x_num[:, 0] - x_num[:, 1] + 1.5 * (x_cat[:, 0] == 2) - 0.5
    if task == "binary":
        y = (score > 0).astype(np.float32)
    elif task == "multiclass":
        y = np.digitize(score, [-1.0, 1.0]).astype(np.int64)
    else:
        y = score.astype(np.float32)
    return {"x_num": x_num, "x_cat": x_cat, "y": y}


def spec_for(task: str) -> dict:
    return {**SPEC, "task": task, "n_classes": 3 if task == "multiclass" else (2 if task == "binary" else 1)}


# ------------------------------------------------------------------------------------------------- model
def test_category_zero_is_oov_and_out_of_range_indices_map_to_it():
    set_seed(0)
    model = TabularMLP(2, [4], embedding_dim=3, hidden_sizes=[8], dropout=0.0, task="binary").eval()
    assert torch.equal(model.embeddings[0].weight[0], torch.zeros(3))  # OOV starts neutral
    x_num = torch.zeros(4, 2)
    out = model(x_num, torch.tensor([[0], [7], [-1], [2]]))
    assert out[0] == out[1] == out[2]  # unseen / corrupt indices behave as OOV
    assert out[3] != out[0]  # a known category has its own vector


@pytest.mark.parametrize(("task", "shape"), [("binary", (5,)), ("regression", (5,)), ("multiclass", (5, 3))])
def test_forward_shapes(task, shape):
    model = build_model(spec_for(task))
    out = model(torch.randn(5, 3), torch.randint(0, 3, (5, 2)))
    assert out.shape == shape


def test_numeric_only_and_categorical_only_models():
    assert build_model({**SPEC, "cardinalities": []})(torch.randn(2, 3), torch.zeros(2, 0)).shape == (2,)
    assert build_model({**SPEC, "n_numeric": 0})(torch.zeros(2, 0), torch.ones(2, 2, dtype=torch.long)).shape == (2,)


def test_predict_outputs_per_task_and_extreme_logits():
    b = predict_outputs("binary", torch.tensor([-1000.0, 0.0, 3.0, 1000.0]))
    assert np.allclose(b["probability"], [0.0, 0.5, 1 / (1 + math.exp(-3)), 1.0])
    assert b["label"].tolist() == [0, 1, 1, 1] and b["label"].dtype == np.int64
    m = predict_outputs("multiclass", np.array([[1000.0, 0.0, -1000.0], [0.0, 2.0, 0.0]]))
    assert np.allclose(m["probabilities"].sum(axis=1), 1.0) and np.isfinite(m["probabilities"]).all()
    assert m["label"].tolist() == [0, 1]
    assert predict_outputs("regression", torch.tensor([[1.5], [-2.0]]))["value"].tolist() == [1.5, -2.0]


def test_losses_match_tasks():
    assert isinstance(loss_fn("binary"), torch.nn.BCEWithLogitsLoss)
    assert isinstance(loss_fn("multiclass"), torch.nn.CrossEntropyLoss)
    assert isinstance(loss_fn("regression"), torch.nn.MSELoss)
    with pytest.raises(ConfigError, match="data.task"):
        loss_fn("ranking")


def test_mlp_spec_errors_name_the_problem():
    with pytest.raises(ConfigError, match=r"unknown keys \['depth'\]"):
        build_model({**SPEC, "depth": 3})
    with pytest.raises(ConfigError, match="n_classes >= 2"):
        build_model({**SPEC, "task": "multiclass", "n_classes": 1})
    with pytest.raises(ConfigError, match="no input features"):
        build_model({**SPEC, "n_numeric": 0, "cardinalities": []})


# ---------------------------------------------------------------------------------------------- user models
@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(textwrap.dedent("""
        import torch

        class Linear(torch.nn.Module):
            def __init__(self, n_numeric, cardinalities, **kwargs):
                super().__init__()
                self.kwargs = kwargs
                self.lin = torch.nn.Linear(n_numeric, 1)

            def forward(self, x_num, x_cat):
                return self.lin(x_num).squeeze(-1)

        def factory(**spec):
            return Linear(**spec)

        def not_a_model(**spec):
            return "model"

        def broken(**spec):
            raise ValueError("bad width")

        CONSTANT = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_models"


def test_user_factory_gets_the_spec_and_builds_a_module(user_module):
    model = build_model({**SPEC, "model": f"{user_module}:factory"}, allowed_factories=[f"{user_module}:factory"])
    assert model.kwargs["task"] == "binary" and "model" not in model.kwargs
    assert model(torch.randn(4, 3), torch.zeros(4, 2, dtype=torch.long)).shape == (4,)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_such_module_xyz:factory", "cannot import module 'no_such_module_xyz'"),
        ("my_models:missing", "has no attribute 'missing'"),
        ("my_models:CONSTANT", "not a callable"),
        ("my_models:not_a_model", "returned str, not a torch.nn.Module"),
        ("my_models:broken", "raised ValueError: bad width"),
        ("my_models", "use 'mlp' or 'package.module:factory'"),
    ],
)
def test_user_factory_errors_name_the_path(user_module, path, message):
    with pytest.raises(ConfigError, match="train.model") as info:
        build_model({**SPEC, "model": path}, allowed_factories=[path])  # listed: the factory itself is at fault
    assert message in str(info.value) and path in str(info.value)


# ----------------------------------------------------------------------------------------------- training
def test_overfits_32_rows():
    data = learnable(32, seed=1)
    data["y"] = np.random.default_rng(2).integers(0, 2, 32).astype(np.float32)  # pure memorisation
    res = train_local(cfg("train.epochs=60", "train.batch_size=32", "train.learning_rate=0.01",
                          "train.early_stopping_patience=0"), {**SPEC, "hidden_sizes": [64, 64]}, data, data)
    assert res.history[-1]["train_loss"] < 0.02
    assert res.history[-1]["val_accuracy"] == 1.0


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_loss_goes_down_on_learnable_data(task):
    seen = []
    res = train_local(cfg("train.epochs=15", "train.batch_size=64", "train.learning_rate=0.01"), spec_for(task),
                      learnable(600, 3, task), learnable(200, 4, task), progress=seen.append)
    first, last = res.history[0], res.history[-1]
    assert last["train_loss"] < 0.6 * first["train_loss"] and res.best_val_loss < 0.6 * first["val_loss"]
    assert seen == res.history and [h["epoch"] for h in res.history] == list(range(1, len(res.history) + 1))
    if task != "regression":
        assert max(h["val_accuracy"] for h in res.history) > 0.8
    # the returned weights are the best epoch's and load into a fresh model
    model = build_model(res.model_spec)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in res.state_dict.items()})


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_extreme_standardized_inputs_train_without_nan(optimizer):
    data = learnable(256, 5)
    x = data["x_num"]
    x[::7, 0], x[1::7, 0], x[2::7, 0] = 1e6, -1e6, 3.0e38  # absurd outliers (the transform only clips to f32)
    x[:, 1] = 1e-12  # tiny
    x[:, 2] = 0.0  # constant column (standardized to 0)
    res = train_local(cfg("train.epochs=5", f"train.optimizer={optimizer}", "train.learning_rate=0.1"), SPEC,
                      data, data)
    assert all(math.isfinite(h[k]) for h in res.history for k in ("train_loss", "val_loss"))
    assert all(np.isfinite(v).all() for v in res.state_dict.values())
    model = build_model(res.model_spec)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in res.state_dict.items()})
    with torch.no_grad():
        assert torch.isfinite(model(torch.from_numpy(x), torch.from_numpy(data["x_cat"]))).all()


def test_early_stopping_keeps_the_best_epoch():
    data = learnable(64, 6)
    noise = learnable(64, 7)
    noise["y"] = 1 - noise["y"]  # validation disagrees with training: val loss rises as training fits
    res = train_local(cfg("train.epochs=50", "train.learning_rate=0.05", "train.early_stopping_patience=2"), SPEC,
                      data, noise)
    assert len(res.history) == res.best_epoch + 2 < 50
    assert res.best_val_loss == min(h["val_loss"] for h in res.history)


def test_same_seed_same_result():
    c = cfg("train.epochs=3", "train.dropout=0.3")
    a = train_local(c, SPEC, learnable(200, 8), learnable(50, 9))
    b = train_local(c, SPEC, learnable(200, 8), learnable(50, 9))
    assert a.history[-1]["val_loss"] == b.history[-1]["val_loss"]


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_resume_from_checkpoint_matches_an_uninterrupted_run(tmp_path, optimizer):
    train, val = learnable(300, 10), learnable(100, 11)
    c = cfg(f"train.optimizer={optimizer}", "train.dropout=0.2", "train.early_stopping_patience=0")
    full = train_local(c, SPEC, train, val, params={"epochs": 4})
    ckpt = str(tmp_path / "ckpt")

    def crash_after_epoch_2(metrics: dict) -> None:
        if metrics["epoch"] == 2:
            raise KeyboardInterrupt("crash")

    with pytest.raises(KeyboardInterrupt):  # the same 4-epoch run (same schedule), killed after epoch 2
        train_local(c, SPEC, train, val, params={"epochs": 4}, checkpoint_dir=ckpt, progress=crash_after_epoch_2)
    resumed = train_local(c, SPEC, train, val, params={"epochs": 4}, checkpoint_dir=ckpt)
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in full.history]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [f"epoch_000{i}" for i in range(1, 5)]
    # the checkpoint is safetensors + JSON and gives the same result as the run
    back = read_checkpoint(resumed.checkpoint_uri)
    assert back.best_epoch == resumed.best_epoch and back.history == resumed.history
    assert all(np.array_equal(back.state_dict[k], v) for k, v in resumed.state_dict.items())


def test_params_override_train_keys_and_are_validated():
    train = load_config(None).train
    tc = resolve_train_config(train, {"learning_rate": np.float64(0.01), "batch_size": np.int64(64),
                                      "hidden_sizes": [8]})
    assert (tc.learning_rate, tc.batch_size, tc.hidden_sizes) == (0.01, 64, [8])
    with pytest.raises(ConfigError, match=r"unknown train keys \['lr'\]"):
        resolve_train_config(train, {"lr": 0.1})
    with pytest.raises(ConfigError, match="learning_rate"):
        resolve_train_config(train, {"learning_rate": -1.0})


def test_search_space_maps_config_dims_to_tune_domains():
    from ray.tune.search.sample import Categorical, Float, Integer

    from raymlops.config import config_from_dict
    from raymlops.train.tune import search_space

    space = search_space(config_from_dict({"tune": {"search_space": {
        "learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
        "dropout": {"type": "uniform", "low": 0.0, "high": 0.5},
        "epochs": {"type": "randint", "low": 2, "high": 6},
        "hidden_sizes": {"type": "choice", "values": [[32], [64, 32]]},
    }}}).tune.search_space)
    assert isinstance(space["learning_rate"], Float) and space["learning_rate"].lower == 1e-4
    assert isinstance(space["dropout"], Float) and space["dropout"].upper == 0.5
    assert isinstance(space["epochs"], Integer) and (space["epochs"].lower, space["epochs"].upper) == (2, 6)
    assert isinstance(space["hidden_sizes"], Categorical) and space["hidden_sizes"].categories == [[32], [64, 32]]


def test_tune_metric_must_be_one_training_reports():
    from raymlops.config import config_from_dict
    from raymlops.train.tune import tune_model

    with pytest.raises(ConfigError, match="tune.metric 'roc_auc'"):
        tune_model(config_from_dict({"tune": {"metric": "roc_auc"}}), None, storage_uri="x", run_name="r")


# ------------------------------------------------------------------------------------ training defaults
def test_default_train_config_is_a_real_budget():
    tc = load_config(None).train
    assert (tc.epochs, tc.learning_rate, tc.lr_schedule, tc.early_stopping_patience) == (50, 0.01, "cosine", 8)
    with pytest.raises(ConfigError, match="train.lr_schedule"):
        load_config(None, ["train.lr_schedule=step"])
    with pytest.raises(ConfigError, match="train.class_weight"):
        load_config(None, ["train.class_weight=auto"])


def test_cosine_schedule_warms_up_then_decays_to_zero():
    from raymlops.train.loop import lr_factor

    total = 200
    f = [lr_factor("cosine", s, total, warmup_pct=5.0) for s in range(total)]
    assert f[0] == pytest.approx(1 / 10) and f[9] == 1.0  # 10 warm-up steps, linear
    assert all(a >= b for a, b in zip(f[9:], f[10:], strict=False))  # then never rises
    assert f[-1] < 1e-3 and f[105] == pytest.approx(0.5, abs=0.02)  # half-way through the decay: half the rate
    assert lr_factor("cosine", 500, total) == f[-1]  # an uneven last shard stays at the end
    assert lr_factor("cosine", 0, total, warmup_pct=0.0) == 1.0


def test_onecycle_and_constant_schedules():
    from raymlops.train.loop import lr_factor

    total = 100
    f = [lr_factor("onecycle", s, total) for s in range(total)]
    assert f[0] == pytest.approx(1 / 25) and max(f) == pytest.approx(1.0) and int(np.argmax(f)) == 30
    assert f[-1] == pytest.approx(1 / 25 / 1e4)
    assert {lr_factor("constant", s, total) for s in range(total)} == {1.0}
    with pytest.raises(ConfigError, match="train.lr_schedule"):
        lr_factor("step", 0, total)


def test_schedule_sets_the_learning_rate_per_step():
    seen = []
    res = train_local(cfg("train.epochs=4", "train.batch_size=100", "train.warmup_pct=0"), SPEC,
                      learnable(400, 1), learnable(100, 2), progress=seen.append)
    lrs = [h["lr"] for h in res.history]  # the last step's rate of each epoch, 4 steps per epoch
    assert lrs == sorted(lrs, reverse=True) and lrs[0] < 0.01 and lrs[-1] < 1e-3


def test_balanced_class_weights_match_sklearn_and_set_pos_weight():
    from sklearn.utils.class_weight import compute_class_weight

    from raymlops.model.nets import balanced_class_weights

    y = np.array([0] * 90 + [1] * 10 + [2] * 30)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=y)
    assert balanced_class_weights(np.bincount(y)) == pytest.approx(expected.tolist())
    assert balanced_class_weights([5, 0]) == [pytest.approx(0.5), 1.0]  # a class with no rows
    bce = loss_fn("binary", balanced_class_weights([90, 10]))
    assert float(bce.pos_weight) == pytest.approx(9.0)
    ce = loss_fn("multiclass", expected.tolist())
    assert ce.weight.tolist() == pytest.approx(expected.tolist())


def test_balanced_weights_make_the_minority_class_predicted():
    data, val = learnable(800, 12), learnable(200, 13)
    for d in (data, val):
        d["y"] = (d["x_num"][:, 0] > 1.3).astype(np.float32)  # ~10% positives, learnable
    plain = train_local(cfg("train.epochs=3"), SPEC, data, val)
    balanced = train_local(cfg("train.epochs=3", "train.class_weight=balanced"), SPEC, data, val)

    def positive_share(res):
        model = build_model(res.model_spec).eval()
        model.load_state_dict({k: torch.from_numpy(v) for k, v in res.state_dict.items()})
        with torch.no_grad():
            z = model(torch.from_numpy(val["x_num"]), torch.from_numpy(val["x_cat"]))
        return float(predict_outputs("binary", z)["label"].mean())

    assert positive_share(balanced) > positive_share(plain)


def test_output_bias_starts_at_the_class_prior():
    model = build_model(SPEC)
    model.init_output_bias([75.0, 25.0])
    assert float(model.head.bias.detach()) == pytest.approx(math.log(25 / 75))
    multi = build_model(spec_for("multiclass"))
    multi.init_output_bias([10.0, 30.0, 60.0])
    probs = torch.softmax(multi.head.bias, dim=0)
    assert probs.tolist() == pytest.approx([0.1, 0.3, 0.6])


def test_regression_learns_a_target_far_from_zero():
    train, val = learnable(600, 14, "regression"), learnable(200, 15, "regression")
    for d in (train, val):
        d["y"] = (150 + 60 * d["y"]).astype(np.float32)  # like scikit-learn's diabetes target
    res = train_local(cfg("train.epochs=15", "train.batch_size=64"), spec_for("regression"), train, val)
    assert res.model_spec["target_mean"] == pytest.approx(float(train["y"].mean()), rel=1e-4)
    assert res.model_spec["target_std"] == pytest.approx(float(train["y"].std()), rel=1e-3)
    model = build_model(res.model_spec).eval()  # the spec alone rebuilds the scaling (it is in the package)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in res.state_dict.items()})
    with torch.no_grad():
        pred = model(torch.from_numpy(val["x_num"]), torch.from_numpy(val["x_cat"])).numpy()
    r2 = 1 - np.mean((pred - val["y"]) ** 2) / np.var(val["y"])
    assert r2 > 0.8
    assert res.best_val_loss < 0.2  # in units of the target's variance


def test_specs_without_target_scaling_still_build_and_bad_scaling_is_refused():
    old = build_model(spec_for("regression"))  # packages written before target scaling
    assert (old.target_mean, old.target_std) == (0.0, 1.0)
    with pytest.raises(ConfigError, match="target_std"):
        build_model({**spec_for("regression"), "target_mean": 1.0, "target_std": 0.0})


def test_predict_outputs_decides_binary_labels_at_the_threshold():
    z = torch.tensor([-2.0, -1.0, 0.0, 1.0])  # probabilities 0.12, 0.27, 0.5, 0.73
    assert predict_outputs("binary", z)["label"].tolist() == [0, 0, 1, 1]
    assert predict_outputs("binary", z, threshold=0.25)["label"].tolist() == [0, 1, 1, 1]
    assert predict_outputs("binary", z, threshold=0.8)["label"].tolist() == [0, 0, 0, 0]
