"""Ray Train (TorchTrainer, 2 DDP workers) and Ray Tune over it, on a few hundred synthetic churn rows."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from raymlops.config import config_from_dict
from raymlops.core.schema import infer_schema
from raymlops.core.sketches import profile_table
from raymlops.core.transform import fit_transform
from raymlops.data.prepare import PreparedData
from raymlops.data.synthetic import make_day
from raymlops.model.nets import TabularMLP, build_model, predict_outputs
from raymlops.train.loop import load_split, train_model
from raymlops.train.tune import tune_model

pytestmark = pytest.mark.slow

FEATURES = ["region", "plan", "payment_method", "tenure_months", "monthly_charges", "support_calls", "usage_gb"]
CATEGORICAL = {"region", "plan", "payment_method"}
ROWS = {"train": 480, "validation": 160}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> PreparedData:
    """The real PreparedData layout (raw parquet per split + a fitted Transform), built without a Ray pass."""
    root = tmp_path_factory.mktemp("prepared")
    table = make_day("2026-01-01", sum(ROWS.values()), seed=3)
    profile = profile_table(table.slice(0, ROWS["train"]), categorical=CATEGORICAL,
                            skip={"customer_id", "event_ts"})
    schema = infer_schema(profile, name="churn", task="binary", label="churned", timestamp="event_ts",
                          id_columns=["customer_id"], features=FEATURES, categorical=CATEGORICAL)
    uris, start = {}, 0
    for split, n in ROWS.items():
        os.makedirs(root / split)
        pq.write_table(table.slice(start, n), root / split / "part-0.parquet")
        uris[split], start = str(root / split), start + n
    return PreparedData(str(root), uris, fit_transform(profile, schema), dict(ROWS))


class FailsOnce(torch.nn.Module):
    """TabularMLP that raises on its first training step of epoch 2 while ``flag`` exists (deleting it)."""

    def __init__(self, flag: str, steps_per_epoch: int, **spec):
        super().__init__()
        self.inner, self.flag, self.limit, self.steps = TabularMLP(**spec), flag, steps_per_epoch, 0

    def forward(self, x_num, x_cat):
        if self.training:
            self.steps += 1
            if self.steps > self.limit and os.path.exists(self.flag):
                try:
                    os.remove(self.flag)  # exactly one worker fails, exactly once
                except FileNotFoundError:
                    pass
                else:
                    raise RuntimeError("injected worker failure")
        return self.inner(x_num, x_cat)


def flag_path() -> str:
    # Workers do not see environment changes made after ray.init; the job id is the same in driver and workers.
    import ray

    return os.path.join(tempfile.gettempdir(), f"raymlops-fail-once-{ray.get_runtime_context().get_job_id()}")


def fails_once(**spec):
    return FailsOnce(flag_path(), 4, **spec)  # 240 rows per worker / batch 64 -> 4 steps per epoch


def test_torch_trainer_checkpoints_each_epoch_and_resumes_after_a_worker_failure(ray_session, prepared, tmp_path):
    flag = Path(flag_path())
    flag.write_text("")
    cfg = config_from_dict({"train": {
        "model": f"{__name__}:fails_once", "num_workers": 2, "cpus_per_worker": 0.5, "epochs": 2,
        "batch_size": 64, "learning_rate": 0.01, "hidden_sizes": [16], "max_failures": 1,
    }, "model": {"allowed_factories": [f"{__name__}:fails_once"]}})
    seen = []
    try:
        result = train_model(cfg, prepared, storage_uri=str(tmp_path / "store"), run_name="run-1",
                             progress=seen.append)
        failed = not flag.exists()
    finally:
        flag.unlink(missing_ok=True)

    # One worker failed at epoch 2 (the flag is gone) and the run resumed from epoch 1's checkpoint: epoch 1
    # was reported once, not trained again.
    assert failed
    assert [m["epoch"] for m in seen] == [1, 2]
    run_dir = tmp_path / "store" / "run-1"
    for epoch in (1, 2):
        files = set(os.listdir(run_dir / f"epoch_000{epoch}"))
        assert {"weights.safetensors", "last.safetensors", "optimizer.safetensors", "state.json"} <= files
    assert result.checkpoint_uri == str(run_dir / "epoch_0002")
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert result.history[1]["train_loss"] < result.history[0]["train_loss"]
    # the cosine schedule spans the whole budget, counted in one rank's steps (the census all-reduced over ranks)
    assert 1e-4 < result.history[1]["lr"] < result.history[0]["lr"] < 0.01
    assert result.best_val_loss == min(h["val_loss"] for h in result.history)
    assert result.params["num_workers"] == 2 and result.fit_time_s > 0

    model = build_model(result.model_spec, allowed_factories=cfg.model.allowed_factories)  # the user factory again
    model.load_state_dict({k: torch.from_numpy(v) for k, v in result.state_dict.items()})
    assert not any(k.startswith("module.") for k in result.state_dict)
    val = load_split(prepared, "validation")
    with torch.no_grad():
        out = predict_outputs("binary", model.eval()(torch.from_numpy(val["x_num"]), torch.from_numpy(val["x_cat"])))
    assert out["probability"].shape == (ROWS["validation"],) and np.isfinite(out["probability"]).all()


def test_tune_runs_trials_and_keeps_the_best(ray_session, prepared, tmp_path):
    cfg = config_from_dict({
        "train": {"num_workers": 1, "cpus_per_worker": 0.5, "epochs": 2, "batch_size": 64, "hidden_sizes": [16]},
        "tune": {"enabled": True, "num_samples": 2, "max_concurrent_trials": 2, "grace_period": 1,
                 "search_space": {"learning_rate": {"type": "loguniform", "low": 1e-4, "high": 3e-2}}},
    })
    seen = []
    res = tune_model(cfg, prepared, storage_uri=str(tmp_path / "store"), run_name="tune-1", progress=seen.append)

    assert len(res.trials) == 2 and all(t["status"] == "FINISHED" and t["epochs"] >= 1 for t in res.trials)
    assert {t["trial_id"] for t in res.trials} == {m["trial_id"] for m in seen}
    rates = [t["params"]["learning_rate"] for t in res.trials]
    assert rates[0] != rates[1] and all(1e-4 <= r <= 3e-2 for r in rates)
    best = min(res.trials, key=lambda t: t["best"])
    assert best["best"] == best["metrics"]["best_val_loss"] < max(t["best"] for t in res.trials)
    assert res.best_params == best["params"]
    assert res.best.best_val_loss == pytest.approx(best["best"])
    assert res.best.params["learning_rate"] == pytest.approx(best["params"]["learning_rate"])
    assert res.best.checkpoint_uri.startswith(str(tmp_path / "store" / "tune-1"))
    model = build_model(res.best.model_spec)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in res.best.state_dict.items()})


def test_small_split_path_gives_the_ray_data_path_rows_and_one_worker_the_local_loops_batches(ray_session, prepared):
    """The small-data shortcut (read in the driver, one block, held in worker memory) against the Ray Data path."""
    from raymlops.train.loop import numpy_batches, shard_arrays, split_datasets

    fast = split_datasets(prepared, in_memory=True)
    # One split through Ray Data's read + TransformBatch (a Ray Data job costs seconds; the transform is per row)
    streamed = split_datasets(prepared, ("validation",), in_memory=False)["validation"]
    ray_rows = {k: np.concatenate([b[k] for b in streamed.iter_batches(batch_size=None, batch_format="numpy")])
                for k in ("x_num", "x_cat", "y")}
    for split, n in ROWS.items():
        # what a worker holding the split in memory keeps (world 1), as _train_worker reads it
        held = shard_arrays(fast[split].iterator().iter_batches(batch_size=None, batch_format="numpy"), 0, 1,
                            equal=split == "train")
        local = load_split(prepared, split)
        for key in ("x_num", "x_cat", "y"):
            assert held[key].shape[0] == n
            np.testing.assert_array_equal(held[key], local[key])  # train_local's arrays
            if split == "validation":
                np.testing.assert_array_equal(held[key], ray_rows[key])  # Ray Data's read + transform, in order
                assert held[key].dtype == ray_rows[key].dtype
    # so one worker's epoch is train_local's epoch, batch for batch
    held = shard_arrays(fast["train"].iterator().iter_batches(batch_size=None, batch_format="numpy"), 0, 1, equal=True)
    for a, b in zip(numpy_batches(held, 64, True, 5), numpy_batches(load_split(prepared, "train"), 64, True, 5),
                    strict=True):
        assert all(torch.equal(a[k], b[k]) for k in ("x_num", "x_cat", "y"))
