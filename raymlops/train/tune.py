"""Hyper-parameter search with Ray Tune over the Ray Train loop.

Each trial is a small Tune function that launches its own ``TorchTrainer`` (Ray 2.60's way to tune Train v2
runs: the trainer is no longer a Tune trainable; ``TuneReportCallback`` forwards every epoch's metrics and
checkpoint path to Tune). ASHA stops weak trials early. Trials never log to MLflow: their configs and metrics come
back in ``TuneResult.trials`` for the driver to record.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from raymlops import storage
from raymlops.config import Config, SearchDim, TrainConfig
from raymlops.errors import ConfigError, RaymlopsError
from raymlops.train.loop import (
    TrainResult,
    checkpoint_uri,
    make_model_spec,
    make_trainer,
    read_checkpoint,
    resolve_train_config,
    split_datasets,
    storage_args,
)
from raymlops.train.model import build_model

# The trial function only waits on its TorchTrainer; the workers reserve their own CPUs.
_TRIAL_CPUS = 0.01
_REPORTED = ("train_loss", "val_loss", "val_accuracy", "epoch", "epoch_time_s")


@dataclass
class TuneResult:
    """Best hyper-parameters, the best trial's training result (weights from its checkpoint) and every trial."""

    best_params: dict[str, Any]
    best: TrainResult
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


def _trial(params: dict, *, train: dict, transform: Any, datasets: dict, storage_uri: str, run_name: str) -> None:
    """One Tune trial: a TorchTrainer run with the sampled ``params`` over the train config."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    tc = resolve_train_config(TrainConfig.model_validate(train), params)
    spec = make_model_spec(tc, transform)
    trainer = make_trainer(tc, spec, datasets, storage_uri=storage.join(storage_uri, run_name),
                           run_name=f"train-{tune.get_context().get_trial_id()}", callbacks=[TuneReportCallback()])
    trainer.fit()


def _progress_callback(progress: Callable[[dict], None]):
    from ray import tune

    class _Forward(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            progress({"trial_id": trial.trial_id, **{k: result[k] for k in _REPORTED if k in result}})

    return _Forward()


def _check_metric(cfg: Config) -> None:
    allowed = ["val_loss", "train_loss"] + (["val_accuracy"] if cfg.data.task != "regression" else [])
    if cfg.tune.metric not in allowed:
        raise ConfigError(f"tune.metric {cfg.tune.metric!r} is not reported by training; use one of {allowed}")


def _max_epochs(cfg: Config) -> int:
    dim = cfg.tune.search_space.get("epochs")
    if dim is None:
        return cfg.train.epochs
    return int(max(dim.values) if dim.type == "choice" else dim.high)


def _trial_record(result: Any, metric: str, mode: str) -> dict[str, Any]:
    last = result.metrics or {}
    df = result.metrics_dataframe
    best = math.nan
    if df is not None and metric in df:
        values = df[metric].dropna()
        best = float(values.min() if mode == "min" else values.max()) if len(values) else math.nan
    return {
        "trial_id": last.get("trial_id") or result.path.rstrip("/").rsplit("/", 1)[-1],
        "params": dict(result.config or {}),
        "status": "error" if result.error else "ok",
        "epochs": int(last.get("epoch", 0)),
        "metrics": {k: float(last[k]) for k in _REPORTED if k in last},
        f"best_{metric}": best,
        "time_total_s": float(last.get("time_total_s", 0.0)),
        "checkpoint_path": last.get("checkpoint_path"),
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

    Every trial trains with ``cfg.train`` (workers, CPUs, epochs) plus its sampled keys. ``progress`` gets
    ``{"trial_id", "epoch", "train_loss", "val_loss", ...}`` for each trial epoch.
    """
    import ray.train
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    _check_metric(cfg)
    tc = cfg.train
    build_model(make_model_spec(tc, prepared.transform))  # fail on a bad spec or user factory before any trial
    trainable = tune.with_parameters(
        _trial, train=tc.model_dump(mode="json"), transform=prepared.transform, datasets=split_datasets(prepared),
        storage_uri=storage_uri, run_name=run_name,
    )
    max_epochs = _max_epochs(cfg)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"CPU": _TRIAL_CPUS}),
        param_space=search_space(cfg.tune.search_space),
        tune_config=tune.TuneConfig(
            metric=cfg.tune.metric,
            mode=cfg.tune.mode,
            scheduler=ASHAScheduler(
                max_t=max_epochs, grace_period=min(cfg.tune.grace_period, max_epochs),
                reduction_factor=cfg.tune.reduction_factor,
            ),
            num_samples=cfg.tune.num_samples,
            max_concurrent_trials=cfg.tune.max_concurrent_trials,
        ),
        run_config=tune.RunConfig(
            name=run_name,
            verbose=0,
            callbacks=[_progress_callback(progress)] if progress else None,
            failure_config=tune.FailureConfig(max_failures=0),  # Ray Train inside the trial already retries
            **storage_args(storage_uri),
        ),
    )
    t0 = time.perf_counter()
    grid = tuner.fit()
    elapsed = time.perf_counter() - t0
    metric, mode = cfg.tune.metric, cfg.tune.mode
    trials = [_trial_record(r, metric, mode) for r in grid]
    done = [t for t in trials if t["checkpoint_path"] and not math.isnan(t[f"best_{metric}"])]
    if not done:
        errors = "; ".join(f"{t['trial_id']}: {t['error']}" for t in trials if t["error"]) or "no trial reported"
        raise RaymlopsError(f"tuning run {run_name!r}: no trial finished an epoch ({errors})")
    best = (min if mode == "min" else max)(done, key=lambda t: t[f"best_{metric}"])
    fs, _ = storage.resolve(storage_uri)
    result = read_checkpoint(
        ray.train.Checkpoint(best["checkpoint_path"], filesystem=fs),
        best["time_total_s"],
        checkpoint_uri(storage_uri, best["checkpoint_path"]),
    )
    return TuneResult(best_params=best["params"], best=result, trials=trials, tune_time_s=elapsed)
