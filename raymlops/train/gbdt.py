"""Gradient-boosted trees (``train.model: xgboost``): one boosting loop behind three runners.

``fit_booster`` boosts on transformed arrays (``x_num``, ``x_cat``, ``y`` from ``apply_transform``, fed through
``raymlops.model.gbdt.feature_matrix``, the serving path's own input builder) with early stopping on the
validation split's loss. It runs

- on Ray Train (``train_gbdt``): ``XGBoostTrainer`` workers, each boosting on its Ray Data shard of the prepared
  splits; XGBoost's collective (set up by the trainer) merges the histograms and the evaluation metrics, so every
  worker grows the same trees and stops at the same round;
- in a Ray Tune trial (``gbdt_trial``, see ``raymlops.train.tune``), in one process;
- in this process (``fit_gbdt`` on numpy arrays, ``fit_gbdt_prepared`` on a prepared dataset), for baselines and
  benchmarks.

Metrics go out every few rounds as ``{"epoch": rounds, "train_loss", "val_loss"[, "val_accuracy"]}`` (the loss is
the objective's: logloss, mlogloss or rmse), the same keys as the MLP's epochs, so progress lines, Tune's metric and
ASHA work alike. A checkpoint is a directory with ``model.json`` (the whole booster in XGBoost's JSON format) and
``state.json`` (rounds, best round, history, spec); nothing is pickled. Reading one keeps the best round's trees.
A run restarted after a worker failure continues boosting from its latest checkpoint (early stopping's patience
counts again from there).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raymlops.config import Config, TrainConfig
from raymlops.errors import ConfigError, DataError, RaymlopsError
from raymlops.model.gbdt import (
    BOOSTER_FILE,
    XGBOOST,
    booster_json,
    feature_matrix,
    feature_types,
    import_xgboost,
    load_booster,
    objective_params,
)
from raymlops.model.nets import balanced_class_weights
from raymlops.train.loop import (
    checkpoint_uri,
    fit_trainer,
    in_memory_splits,
    load_split,
    progress_pump,
    resolve_train_config,
    shard_arrays,
    split_datasets,
    storage_args,
)

__all__ = [
    "DEFAULT_SEARCH_SPACE",
    "GbdtResult",
    "booster_params",
    "fit_booster",
    "fit_gbdt",
    "fit_gbdt_prepared",
    "gbdt_spec",
    "gbdt_trial",
    "read_gbdt_checkpoint",
    "reports_per_run",
    "spec_from_transform",
    "train_gbdt",
]

_STATE_FILE = "state.json"
_REPORTS = 25  # metrics reports per full run: progress and ASHA steps, without a Train barrier every round
_CHECKPOINT_EVERY = 5  # reports between checkpoints on Ray Train (each writes the whole booster)
_CHECKPOINTS_TO_KEEP = 2
_BATCH_ROWS = 65_536

# Searched when tune.search_space is left at its default (whose keys are the MLP's): the parameters that matter
# most for boosted trees on tabular data, in ranges that hold the usual optima.
DEFAULT_SEARCH_SPACE: dict[str, dict[str, Any]] = {
    "gbdt.eta": {"type": "loguniform", "low": 0.01, "high": 0.3},
    "gbdt.max_depth": {"type": "randint", "low": 3, "high": 11},
    "gbdt.min_child_weight": {"type": "loguniform", "low": 0.5, "high": 20.0},
    "gbdt.subsample": {"type": "uniform", "low": 0.5, "high": 1.0},
    "gbdt.colsample_bytree": {"type": "uniform", "low": 0.5, "high": 1.0},
}


@dataclass
class GbdtResult:
    """Outcome of one boosting run: the best round's booster as XGBoost JSON bytes, its spec and the history.

    Shaped like ``raymlops.train.loop.TrainResult`` (``best_epoch`` is the best round, counted from 1), so the
    pipeline records both alike; ``booster_json`` replaces the MLP's ``state_dict``.
    """

    model_spec: dict[str, Any]
    booster_json: bytes
    history: list[dict[str, float]]
    best_epoch: int
    best_val_loss: float
    checkpoint_uri: str | None
    fit_time_s: float
    params: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- configuration
def gbdt_spec(task: str, n_numeric: int, cardinalities: list[int], n_classes: int) -> dict[str, Any]:
    """The model spec of a booster before training (``fit_booster`` adds the rounds and parameters)."""
    return {
        "model": XGBOOST,
        "task": task,
        "n_numeric": int(n_numeric),
        "cardinalities": [int(c) for c in cardinalities],
        "n_classes": int(n_classes) if task != "regression" else 1,
        "feature_types": feature_types(n_numeric, len(cardinalities)),
    }


def spec_from_transform(transform: Any) -> dict[str, Any]:
    """``gbdt_spec`` from a fitted ``Transform``."""
    return gbdt_spec(transform.task, len(transform.numeric), list(transform.cardinalities),
                     len(transform.classes) if transform.task != "regression" else 1)


def booster_params(tc: TrainConfig, task: str, n_classes: int, nthread: int | None = None) -> dict[str, Any]:
    """XGBoost parameters for a run: ``train.gbdt``, the task's objective, ``train.seed`` and the device."""
    g = tc.gbdt
    params: dict[str, Any] = {
        **objective_params(task, n_classes),
        "tree_method": "hist",
        "eta": g.eta,
        "max_depth": g.max_depth,
        "min_child_weight": g.min_child_weight,
        "subsample": g.subsample,
        "colsample_bytree": g.colsample_bytree,
        "lambda": g.reg_lambda,
        "alpha": g.reg_alpha,
        "max_bin": g.max_bin,
        "seed": tc.seed,
    }
    if nthread:
        params["nthread"] = int(nthread)
    if tc.use_gpu:
        xgboost = import_xgboost()
        if not xgboost.build_info().get("USE_CUDA"):
            raise ConfigError("train.use_gpu is true but the installed xgboost has no CUDA support (the xgboost-cpu "
                              "wheel); install `xgboost` on the GPU nodes, or set train.use_gpu: false")
        params["device"] = "cuda"
    return params


def reports_per_run(num_boost_round: int) -> tuple[int, int]:
    """(rounds between metric reports, reports in a full run): what ASHA counts as one step."""
    every = max(1, math.ceil(num_boost_round / _REPORTS))
    return every, math.ceil(num_boost_round / every)


# ----------------------------------------------------------------------------------------- the shared loop
@dataclass
class _State:
    rounds: int = 0
    best_round: int = 0
    best_val_loss: float = math.inf
    stopped: bool = False
    history: list[dict[str, float]] = field(default_factory=list)

    def to_json(self, spec: dict, params: dict) -> dict[str, Any]:
        return {"format": 1, "rounds": self.rounds, "best_round": self.best_round,
                "best_val_loss": self.best_val_loss if math.isfinite(self.best_val_loss) else None,
                "stopped": self.stopped, "history": self.history, "model_spec": spec, "params": params}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> _State:
        best = doc.get("best_val_loss")
        return cls(int(doc["rounds"]), int(doc["best_round"]), math.inf if best is None else float(best),
                   bool(doc["stopped"]), list(doc["history"]))


def _metric_names(task: str) -> tuple[str, str | None]:
    """(the loss that early stopping watches, the error metric behind val_accuracy) for a task."""
    metrics = objective_params(task, 2)["eval_metric"]
    return metrics[-1], (metrics[0] if task != "regression" else None)


def _class_weights(tc: TrainConfig, task: str, n_classes: int, y: np.ndarray, all_reduce) -> np.ndarray | None:
    """``train.class_weight: balanced``: one weight per class from the training split's counts (all ranks')."""
    if tc.class_weight != "balanced" or task == "regression":
        return None
    counts = np.bincount(y.astype(np.int64).reshape(-1), minlength=n_classes)[:n_classes].astype(np.float64)
    return np.asarray(balanced_class_weights(all_reduce(counts)), dtype=np.float32)


def _matrix(xgboost: Any, arrays: Mapping[str, np.ndarray], spec: dict, nthread: int | None,
            class_weights: np.ndarray | None) -> Any:
    y = arrays["y"]
    weight = None if class_weights is None else class_weights[y.astype(np.int64).reshape(-1)]
    return xgboost.DMatrix(feature_matrix(arrays["x_num"], arrays["x_cat"]), label=y, weight=weight,
                           feature_types=spec["feature_types"], enable_categorical=True, nthread=nthread or 0)


def _save_checkpoint(d: str, booster: Any, state: _State, spec: dict, params: dict) -> None:
    with open(os.path.join(d, BOOSTER_FILE), "wb") as f:
        f.write(booster_json(booster))
    with open(os.path.join(d, _STATE_FILE), "w") as f:
        json.dump(state.to_json(spec, params), f)


def _load_checkpoint_dir(d: str) -> tuple[Any, _State, dict[str, Any]]:
    with open(os.path.join(d, BOOSTER_FILE), "rb") as f:
        booster = load_booster(f.read(), f"{BOOSTER_FILE} in checkpoint {d}")
    with open(os.path.join(d, _STATE_FILE)) as f:
        doc = json.load(f)
    return booster, _State.from_json(doc), doc


def _make_reporter(xgboost: Any, tc: TrainConfig, state: _State, task: str, every: int,
                   report: Callable[[dict, Any, bool], None]) -> Any:
    loss, error = _metric_names(task)
    patience, total = tc.gbdt.early_stopping_rounds, tc.gbdt.num_boost_round

    class _Reporter(xgboost.callback.TrainingCallback):
        """Records each round, keeps the best one, stops early, and reports every ``every`` rounds."""

        def after_iteration(self, model: Any, epoch: int, evals_log: dict) -> bool:
            # Rounds are counted on the booster: a resumed run's callback epochs restart at 0.
            state.rounds = model.num_boosted_rounds()
            row = {"epoch": state.rounds, "train_loss": float(evals_log["train"][loss][-1]),
                   "val_loss": float(evals_log["validation"][loss][-1])}
            if error is not None:
                row["val_accuracy"] = 1.0 - float(evals_log["validation"][error][-1])
            state.history.append(row)
            if row["val_loss"] < state.best_val_loss:
                state.best_round, state.best_val_loss = state.rounds, row["val_loss"]
            # Every worker sees the same all-reduced metrics, so all stop (and report) at the same round.
            state.stopped = 0 < patience <= state.rounds - state.best_round
            if not state.stopped and state.rounds < total and state.rounds % every == 0:
                report(row, model, False)
            return state.stopped

    return _Reporter()


def fit_booster(tc: TrainConfig, spec: dict[str, Any], train: Mapping[str, np.ndarray],
                validation: Mapping[str, np.ndarray], io: Any) -> tuple[Any, _State, dict[str, Any]]:
    """Boost on one process's rows (a worker's shard, or all of them) with early stopping on validation loss.

    ``io`` adapts the loop to its runner: ``nthread``, ``all_reduce(array)``, ``restore()`` (a checkpoint's
    ``(booster, state, doc)`` or None) and ``report(metrics, save, final)`` where ``save(dir)`` writes the
    checkpoint. Returns the whole booster (all rounds), the state (best round, history) and the final spec.
    """
    xgboost = import_xgboost()
    task, n_classes = spec["task"], int(spec.get("n_classes", 2))
    params = booster_params(tc, task, n_classes, io.nthread)
    spec = {**spec, "params": {k: v for k, v in params.items() if k != "nthread"}}
    rows = io.all_reduce(np.array([len(train["y"]), len(validation["y"])], dtype=np.float64))
    if rows.min() == 0:
        raise DataError(f"the {'training' if rows[0] == 0 else 'validation'} split has no rows; check data.split "
                        "(validation_pct, test_pct) and the data window")
    weights = _class_weights(tc, task, n_classes, train["y"], io.all_reduce)
    # Validation rows are weighted alike, so early stopping watches the loss that training minimises (as the MLP).
    dtrain = _matrix(xgboost, train, spec, io.nthread, weights)
    dval = _matrix(xgboost, validation, spec, io.nthread, weights)
    restored = io.restore()
    booster, state = (restored[0], restored[1]) if restored else (None, _State())
    every, _ = reports_per_run(tc.gbdt.num_boost_round)
    run_params = tc.model_dump(mode="json")

    def report(row: dict, model: Any, final: bool) -> None:
        io.report(row, lambda d: _save_checkpoint(d, model, state, spec, run_params), final)

    left = tc.gbdt.num_boost_round - state.rounds
    if not state.stopped and left > 0:
        booster = xgboost.train(
            params, dtrain, num_boost_round=left, evals=[(dtrain, "train"), (dval, "validation")],
            callbacks=[_make_reporter(xgboost, tc, state, task, every, report)], xgb_model=booster,
            verbose_eval=False,
        )
    if not state.history or not math.isfinite(state.best_val_loss):
        raise RaymlopsError(f"boosting gave no finite validation loss after {state.rounds} rounds; check the label "
                            "values and train.gbdt (eta, max_depth)")
    state.stopped = True
    # The run keeps the best round's trees, so the last report speaks for them: its val_loss is the best round's.
    # Rounds are reported every few only, and Tune ranks trials on the reported values, so a best round between
    # two reports would otherwise be invisible to it.
    report({**state.history[-1], "val_loss": state.best_val_loss, "best_round": state.best_round,
            "best_val_loss": state.best_val_loss}, booster, True)
    return booster, state, spec


def _best(booster: Any, state: _State) -> Any:
    """The booster cut to its best round (the trees after it only fitted the training split closer)."""
    if 0 < state.best_round < booster.num_boosted_rounds():
        return booster[: state.best_round]
    return booster


def _result(booster: Any, state: _State, spec: dict, params: dict, fit_time_s: float,
            uri: str | None) -> GbdtResult:
    best = _best(booster, state)
    spec = {**spec, "num_boosted_rounds": best.num_boosted_rounds(), "best_round": state.best_round}
    return GbdtResult(model_spec=spec, booster_json=booster_json(best), history=state.history,
                      best_epoch=state.best_round, best_val_loss=state.best_val_loss, checkpoint_uri=uri,
                      fit_time_s=fit_time_s, params=params)


def read_gbdt_checkpoint(checkpoint: Any, fit_time_s: float = 0.0, uri: str | None = None) -> GbdtResult:
    """GbdtResult from a checkpoint of this loop (a ``ray.train.Checkpoint`` / ``tune.Checkpoint`` or a directory)."""
    if hasattr(checkpoint, "as_directory"):
        with checkpoint.as_directory() as d:
            booster, state, doc = _load_checkpoint_dir(d)
    else:
        booster, state, doc = _load_checkpoint_dir(str(checkpoint))
        uri = uri or str(checkpoint)
    return _result(booster, state, doc["model_spec"], doc["params"], fit_time_s, uri)


# ------------------------------------------------------------------------------------------ single process
class _LocalIO:
    def __init__(self, nthread: int | None, progress: Callable[[dict], None] | None):
        self.nthread, self.progress = nthread, progress

    def all_reduce(self, values: np.ndarray) -> np.ndarray:
        return values

    def restore(self) -> None:
        return None

    def report(self, metrics: dict, save: Callable[[str], None], final: bool) -> None:
        if self.progress:
            self.progress(dict(metrics))


def fit_gbdt(
    train: Mapping[str, np.ndarray],
    validation: Mapping[str, np.ndarray],
    *,
    spec: dict[str, Any],
    config: TrainConfig | None = None,
    params: Mapping[str, Any] | None = None,
    nthread: int = 1,
    progress: Callable[[dict], None] | None = None,
) -> GbdtResult:
    """Boost in this process on transformed arrays (``x_num``, ``x_cat``, ``y``): same loop, no Ray.

    ``spec`` comes from ``gbdt_spec`` (or ``spec_from_transform``); ``config`` defaults to ``TrainConfig()``
    (so ``train.gbdt``'s defaults), ``params`` overrides its keys (``{"gbdt.eta": 0.1}``). ``nthread``: XGBoost's
    OpenMP threads; more than the cores left free makes boosting many times slower, not faster. Predict with ``BoosterPredictor.from_json(result.booster_json, result.model_spec)``.
    """
    tc = resolve_train_config(config or TrainConfig(model=XGBOOST), params)
    t0 = time.perf_counter()
    booster, state, final_spec = fit_booster(tc, spec, train, validation, _LocalIO(nthread, progress))
    return _result(booster, state, final_spec, tc.model_dump(mode="json"), time.perf_counter() - t0, None)


def fit_gbdt_prepared(
    cfg: Config,
    prepared: Any,
    *,
    params: Mapping[str, Any] | None = None,
    nthread: int = 1,
    progress: Callable[[dict], None] | None = None,
) -> GbdtResult:
    """``fit_gbdt`` on a prepared dataset's training and validation splits (read and transformed in this process,
    no Ray) with ``cfg.train``'s ``gbdt`` section: the GBDT a benchmark or baseline compares, as the pipeline fits it.
    """
    return fit_gbdt(load_split(prepared, "train"), load_split(prepared, "validation"),
                    spec=spec_from_transform(prepared.transform), config=cfg.train, params=params, nthread=nthread,
                    progress=progress)


def _nthread(tc: TrainConfig) -> int:
    # The CPUs Ray reserved for this process: more OpenMP threads would only contend with the other workers.
    return max(1, int(tc.cpus_per_worker))


def _arrays(batches: Any, spec: dict) -> dict[str, np.ndarray]:
    """Concatenate numpy batches of ``x_num``, ``x_cat``, ``y``; an empty shard gives correctly shaped arrays."""
    parts: dict[str, list[np.ndarray]] = {"x_num": [], "x_cat": [], "y": []}
    for b in batches:
        for k in parts:
            parts[k].append(np.asarray(b[k]))
    if not parts["y"]:
        return {"x_num": np.zeros((0, spec["n_numeric"]), np.float32),
                "x_cat": np.zeros((0, len(spec["cardinalities"])), np.int64), "y": np.zeros(0, np.float32)}
    out = {k: np.concatenate(v) for k, v in parts.items()}
    out["x_num"] = out["x_num"].reshape(len(out["y"]), spec["n_numeric"])
    out["x_cat"] = out["x_cat"].reshape(len(out["y"]), len(spec["cardinalities"]))
    return out


# ----------------------------------------------------------------------------------------------- Ray Tune
class _TuneIO:
    def __init__(self, nthread: int):
        self.nthread = nthread

    def all_reduce(self, values: np.ndarray) -> np.ndarray:
        return values

    def restore(self):
        from ray import tune

        ckpt = tune.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            return _load_checkpoint_dir(d)

    def report(self, metrics: dict, save: Callable[[str], None], final: bool) -> None:
        from ray import tune

        with tempfile.TemporaryDirectory() as d:
            save(d)
            # Every report checkpoints: a trial that ASHA stops keeps its best round so far.
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def gbdt_trial(params: dict, *, train: dict, spec: dict, datasets: dict) -> None:
    """One Tune trial: boost with the sampled ``params`` over the train config on materialized datasets."""
    tc = resolve_train_config(TrainConfig.model_validate(train), params)
    arrays = {split: _arrays(ds.iter_batches(batch_size=_BATCH_ROWS, batch_format="numpy"), spec)
              for split, ds in datasets.items()}
    fit_booster(tc, spec, arrays["train"], arrays["validation"], _TuneIO(_nthread(tc)))


# ---------------------------------------------------------------------------------------------- Ray Train
class _TrainIO:
    """Inside an XGBoostTrainer worker: the collective all-reduces, rank 0 writes the checkpoints."""

    def __init__(self, nthread: int):
        import ray.train

        self.nthread, self.rank = nthread, ray.train.get_context().get_world_rank()
        self.reports = 0

    def all_reduce(self, values: np.ndarray) -> np.ndarray:
        from xgboost import collective

        if not collective.is_distributed():
            return values
        return np.asarray(collective.allreduce(np.ascontiguousarray(values, dtype=np.float64), collective.Op.SUM))

    def restore(self):
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            return _load_checkpoint_dir(d)

    def report(self, metrics: dict, save: Callable[[str], None], final: bool) -> None:
        import ray.train

        self.reports += 1
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            # Every rank calls report at the same rounds (it is a barrier); one writes the checkpoint.
            if self.rank == 0 and (final or self.reports % _CHECKPOINT_EVERY == 0):
                save(d)
                ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"round_{metrics['epoch']:05d}")


def _train_worker(config: dict) -> None:
    """XGBoostTrainer per-worker function: ``config = {"train": TrainConfig dump, "spec": gbdt spec,
    "in_memory": splits that arrive whole}``; of those each worker keeps its own rows (``shard_arrays``)."""
    import ray.train

    tc = TrainConfig.model_validate(config["train"])
    spec = config["spec"]
    ctx = ray.train.get_context()
    in_memory = set(config.get("in_memory", ()))

    def load(split: str) -> dict[str, np.ndarray]:
        shard = ray.train.get_dataset_shard(split)
        if split in in_memory:
            blocks = shard.iter_batches(batch_size=None, batch_format="numpy")
            return shard_arrays(blocks, ctx.get_world_rank(), ctx.get_world_size(), equal=False)
        return _arrays(shard.iter_batches(batch_size=_BATCH_ROWS, batch_format="numpy"), spec)

    arrays = {split: load(split) for split in ("train", "validation")}
    fit_booster(tc, spec, arrays["train"], arrays["validation"], _TrainIO(_nthread(tc)))


def train_gbdt(
    cfg: Config,
    prepared: Any,
    *,
    storage_uri: str,
    run_name: str,
    params: dict | None = None,
    progress: Callable[[dict], None] | None = None,
) -> GbdtResult:
    """Train gradient-boosted trees with Ray Train's ``XGBoostTrainer`` (``train.num_workers`` workers, each on
    its Ray Data shard of the prepared splits); returns the best round's booster.

    Checkpoints under ``{storage_uri}/{run_name}/``; a worker failure resumes from the latest one (up to
    ``train.max_failures`` times). ``progress`` gets the metrics every few rounds.
    """
    import ray.train
    from ray.train.xgboost import XGBoostTrainer

    tc = resolve_train_config(cfg.train, params)
    spec = spec_from_transform(prepared.transform)
    booster_params(tc, spec["task"], spec["n_classes"])  # a bad task or a GPU without CUDA fails before any worker
    small = in_memory_splits(prepared)
    datasets = split_datasets(prepared, in_memory=small)
    callbacks, stop = [], None
    if progress is not None:
        forward, stop = progress_pump(progress)
        callbacks.append(forward)
    trainer = XGBoostTrainer(
        _train_worker,
        train_loop_config={"train": tc.model_dump(mode="json"), "spec": spec, "in_memory": small},
        # Small splits go whole to every worker: no streaming-split coordinator actor per split.
        dataset_config=ray.train.DataConfig(datasets_to_split=[k for k in datasets if k not in small]),
        scaling_config=ray.train.ScalingConfig(
            num_workers=tc.num_workers, use_gpu=tc.use_gpu,
            resources_per_worker={"CPU": tc.cpus_per_worker, **({"GPU": 1} if tc.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            failure_config=ray.train.FailureConfig(max_failures=tc.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=_CHECKPOINTS_TO_KEEP),
            callbacks=callbacks,
            **storage_args(storage_uri),
        ),
        datasets=datasets,
    )
    checkpoint, fit_time = fit_trainer(trainer, run_name, tc.max_failures, stop, "train.gbdt")
    return read_gbdt_checkpoint(checkpoint, fit_time, checkpoint_uri(storage_uri, checkpoint.path))
