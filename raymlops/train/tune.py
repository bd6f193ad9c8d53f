"""Hyper-parameter search with Ray Tune over the training loop.

Each trial is a Tune function running the same epoch loop as Ray Train (``fit_loop``) in one process, with
``tune.report`` + ``tune.Checkpoint`` per epoch. Ray 2.60's documented alternative, a ``TorchTrainer`` launched
inside every trial, costs a Train controller and worker group per trial (~20 s here), and when ASHA stops such
a trial its Train run keeps going until it ends on its own; a stopped function trial ends at its next report.
Trials never log to MLflow: their configs and metrics come back in ``TuneResult.trials`` for the driver.
With ``train.model: xgboost`` a trial is ``raymlops.train.gbdt.gbdt_trial`` (the same boosting loop as the
XGBoostTrainer workers), ASHA's step is one metrics report (every few rounds), and a search space left at its
default searches ``raymlops.train.gbdt.DEFAULT_SEARCH_SPACE``.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from raymlops.config import Config, SearchDim, TrainConfig
from raymlops.errors import ConfigError, RaymlopsError
from raymlops.model.gbdt import XGBOOST
from raymlops.model.nets import build_model
from raymlops.train.gbdt import (
    DEFAULT_SEARCH_SPACE,
    GbdtResult,
    booster_params,
    gbdt_trial,
    read_gbdt_checkpoint,
    reports_per_run,
    spec_from_transform,
)
from raymlops.train.loop import (
    TrainResult,
    checkpoint_uri,
    fit_loop,
    in_memory_seed,
    in_memory_splits,
    load_checkpoint_dir,
    make_model_spec,
    numpy_batches,
    read_checkpoint,
    resolve_train_config,
    shard_arrays,
    skip_dynamo_import,
    split_datasets,
    storage_args,
    training_error,
)

_REPORTED = ("epoch", "train_loss", "val_loss", "val_accuracy", "epoch_time_s")


@dataclass
class TuneResult:
    """Best hyper-parameters, the best trial's training result (weights from its checkpoint) and every trial."""

    best_params: dict[str, Any]
    best: TrainResult | GbdtResult
    trials: list[dict[str, Any]]
    tune_time_s: float = 0.0


def search_space(space: dict[str, SearchDim]) -> dict[str, Any]:
    """Tune sampling domains for ``tune.search_space`` (randint's ``high`` is exclusive, as in Ray Tune)."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, dim in space.items():
        if dim.type == "choice":
            out[key] = tune.choice(list(dim.values or []))
        elif dim.type == "uniform":
            out[key] = tune.uniform(dim.low, dim.high)
        elif dim.type == "loguniform":
            out[key] = tune.loguniform(dim.low, dim.high)
        else:
            out[key] = tune.randint(int(dim.low), int(dim.high))
    return out


class _TuneIO:
    """Inside a Tune trial: one process, checkpoints and metrics via ``tune.report``."""

    def __init__(self, use_gpu: bool):
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")

    def restore(self):
        from ray import tune

        ckpt = tune.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            return load_checkpoint_dir(d)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def all_reduce(self, values: list[float]) -> list[float]:
        return values

    def report(self, metrics: dict, save: Callable[[str], None]) -> None:
        from ray import tune

        with tempfile.TemporaryDirectory() as d:
            save(d)
            # A trial that ASHA stopped exits here (Tune ends the function at its next report).
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def _trial(params: dict, *, train: dict, transform: Any, datasets: dict, in_memory: tuple[str, ...] = ()) -> None:
    """One Tune trial: the epoch loop with the sampled ``params`` over the train config.

    Splits in ``in_memory`` are read once and iterated from memory, as a single Ray Train worker does.
    """
    skip_dynamo_import()  # a trial's process only runs this loop
    tc = resolve_train_config(TrainConfig.model_validate(train), params)
    io = _TuneIO(tc.use_gpu)
    held: dict[str, dict] = {}

    def batches(split: str, epoch: int):
        shuffle = split == "train"
        if split in in_memory:
            if split not in held:
                blocks = datasets[split].iter_batches(batch_size=None, batch_format="numpy")
                held[split] = shard_arrays(blocks, 0, 1, equal=shuffle)
            return numpy_batches(held[split], tc.batch_size, shuffle, in_memory_seed(tc.seed, epoch, 0))
        return datasets[split].iter_torch_batches(
            batch_size=tc.batch_size,
            device=io.device,
            local_shuffle_buffer_size=4 * tc.batch_size if shuffle else None,
            local_shuffle_seed=tc.seed + 1000 * epoch if shuffle else None,
        )

    fit_loop(tc, make_model_spec(tc, transform), batches, io)


def _progress_callback(progress: Callable[[dict], None]):
    from ray import tune

    class _Forward(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            progress({"trial_id": trial.trial_id, **{k: result[k] for k in _REPORTED if k in result}})

    return _Forward()


def _check(cfg: Config) -> None:
    allowed = ["val_loss", "train_loss"] + (["val_accuracy"] if cfg.data.task != "regression" else [])
    if cfg.tune.metric not in allowed:
        raise ConfigError(f"tune.metric {cfg.tune.metric!r} is not reported by training; use one of {allowed}")
    mode = "max" if cfg.tune.metric == "val_accuracy" else "min"
    if cfg.tune.mode != mode:
        raise ConfigError(f"tune.metric {cfg.tune.metric!r} is best when it is the {mode}imum; set tune.mode: {mode}")


def _max_epochs(cfg: Config) -> int:
    dim = cfg.tune.search_space.get("epochs")
    if dim is None:
        return cfg.train.epochs
    return int(max(dim.values or [1]) if dim.type == "choice" else dim.high or 1)


def _trial_record(result: Any, metric: str, mode: str) -> dict[str, Any]:
    last = result.metrics or {}
    best = math.nan
    df = result.metrics_dataframe
    if df is not None and metric in df and df[metric].notna().any():
        best = float(df[metric].min() if mode == "min" else df[metric].max())
    trial_id = last.get("trial_id") or str(result.path).rstrip("/").rsplit("/", 1)[-1]
    metrics = {k: float(last[k]) for k in _REPORTED if k in last}
    metrics.update({f"best_{metric}": best, "time_total_s": float(last.get("time_total_s", 0.0))})
    return {
        "name": f"trial-{trial_id}",
        "trial_id": trial_id,
        "params": dict(result.config or {}),
        "status": "FAILED" if result.error else "FINISHED",  # MLflow run statuses; ASHA-stopped trials finished
        "epochs": int(last.get("epoch", 0)),
        "metrics": metrics,  # the last epoch's, plus the trial's best value of the tuned metric
        "best": best,
        "error": None if result.error is None else f"{type(result.error).__name__}: {result.error}",
    }


def tune_model(
    cfg: Config,
    prepared: Any,
    *,
    storage_uri: str,
    run_name: str,
    progress: Callable[[dict], None] | None = None,
) -> TuneResult:
    """Search ``cfg.tune.search_space`` with ASHA on ``cfg.tune.metric``; returns the best trial's weights.

    Each trial trains in one process reserving ``train.cpus_per_worker`` CPUs (and a GPU with ``use_gpu``),
    at most ``tune.max_concurrent_trials`` at a time; checkpoints go under ``{storage_uri}/{run_name}/``.
    ``progress`` gets ``{"trial_id", "epoch", "train_loss", "val_loss", ...}`` for every trial epoch.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    _check(cfg)
    tc = cfg.train
    gbdt = tc.model == XGBOOST
    space = cfg.tune.search_space
    if gbdt:
        spec = spec_from_transform(prepared.transform)
        booster_params(tc, spec["task"], spec["n_classes"])  # a GPU without CUDA fails before any trial
        if "search_space" not in cfg.tune.model_fields_set:  # the default space holds the MLP's keys
            space = {k: SearchDim.model_validate(v) for k, v in DEFAULT_SEARCH_SPACE.items()}
    else:
        # fail on a bad spec or user factory before any trial
        build_model(make_model_spec(tc, prepared.transform), allowed_factories=cfg.model.allowed_factories)
    # Materialized once for every trial: Ray Data tasks started inside a trial would be confined to the trial's
    # placement group, which has no CPU to spare for them (the read would hang).
    small = tuple(in_memory_splits(prepared))
    datasets = split_datasets(prepared, materialize=True, in_memory=list(small))
    if gbdt:
        trainable = tune.with_parameters(gbdt_trial, train=tc.model_dump(mode="json"), spec=spec, datasets=datasets)
        max_epochs = reports_per_run(tc.gbdt.num_boost_round)[1] + 1  # the periodic reports and the final one
    else:
        trainable = tune.with_parameters(
            _trial, train=tc.model_dump(mode="json"), transform=prepared.transform, datasets=datasets,
            in_memory=small,
        )
        max_epochs = _max_epochs(cfg)
    resources = {"CPU": tc.cpus_per_worker, **({"GPU": 1} if tc.use_gpu else {})}
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space=search_space(space),
        tune_config=tune.TuneConfig(
            metric=cfg.tune.metric,
            mode=cfg.tune.mode,
            scheduler=ASHAScheduler(max_t=max_epochs, grace_period=min(cfg.tune.grace_period, max_epochs),
                                    reduction_factor=cfg.tune.reduction_factor),
            num_samples=cfg.tune.num_samples,
            max_concurrent_trials=cfg.tune.max_concurrent_trials,
            # A new process per trial cost ~3.7 s of overhead per trial here; reusing them ~0.9 s.
            reuse_actors=True,
        ),
        # No CheckpointConfig(num_to_keep): with it every checkpoint forces a snapshot of the whole experiment
        # state, which costs more than the small tabular checkpoints it would delete.
        run_config=tune.RunConfig(
            name=run_name,
            verbose=0,
            callbacks=[_progress_callback(progress)] if progress else None,
            failure_config=tune.FailureConfig(max_failures=tc.max_failures),  # a retry resumes from its checkpoint
            **storage_args(storage_uri),
        ),
    )
    t0 = time.perf_counter()
    grid = tuner.fit()
    elapsed = time.perf_counter() - t0
    metric, mode = cfg.tune.metric, cfg.tune.mode
    results = list(grid)
    trials = [_trial_record(r, metric, mode) for r in results]
    done = [(t, r) for t, r in zip(trials, results, strict=True) if r.checkpoint is not None and not math.isnan(t["best"])]
    if not done:
        errors = [r.error for r in results if r.error is not None]
        if errors:
            raise training_error(errors[0], run_name, tc.max_failures)
        raise RaymlopsError(f"tuning run {run_name!r}: no trial finished an epoch; check train.epochs")
    sign = 1 if mode == "min" else -1
    record, best = min(done, key=lambda tr: sign * tr[0]["best"])
    uri = checkpoint_uri(storage_uri, best.checkpoint.path)
    read = read_gbdt_checkpoint if gbdt else read_checkpoint
    result = read(best.checkpoint, record["metrics"]["time_total_s"], uri)
    return TuneResult(best_params=record["params"], best=result, trials=trials, tune_time_s=elapsed)
