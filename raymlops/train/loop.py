"""Training loop: one epoch function shared by Ray Train workers (TorchTrainer, DDP) and a single-process variant.

Before the first epoch a census pass over the training batches counts rows, batches and classes (or the target's
mean and spread), all-reduced over the ranks. It sizes the learning-rate schedule (``train.lr_schedule`` over the
whole epoch budget, set per optimiser step), the class weights (``train.class_weight``), the built-in MLP's
starting output bias (the class prior) and its regression target scaling, identically in every runner.

Checkpoints are a directory per epoch holding safetensors files and ``state.json`` (nothing is pickled):
``weights.safetensors`` (best weights so far, what goes forward), ``last.safetensors`` and
``optimizer.safetensors`` (to resume), ``state.json`` (epoch, history, early-stopping state, model spec, params).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from raymlops import storage
from raymlops.config import Config, GbdtConfig, TrainConfig
from raymlops.errors import ConfigError, DataError, RaymlopsError
from raymlops.model.nets import TabularMLP, balanced_class_weights, build_model, loss_fn, set_seed

_GRAD_CLIP_NORM = 5.0  # keeps one outlier batch from blowing up the weights (extreme standardized inputs)
_DATA_CPUS = 0.25  # Ray Data read/transform tasks must not starve the training workers on small machines
_CHECKPOINTS_TO_KEEP = 2
# A split is held in memory (read in the driver, then by each worker) when its arrays take under this share of
# the object store and under the cap (a cluster's object store can be far larger than a driver's memory).
_IN_MEMORY_SHARE = 0.1
_IN_MEMORY_MAX_BYTES = 512 * 1024 * 1024
_STATE_FILE = "state.json"


@dataclass
class TrainResult:
    """Outcome of one training run; ``state_dict`` holds the best epoch's weights (CPU numpy, no DDP prefix)."""

    model_spec: dict[str, Any]
    state_dict: dict[str, np.ndarray]
    history: list[dict[str, float]]
    best_epoch: int
    best_val_loss: float
    checkpoint_uri: str | None
    fit_time_s: float
    params: dict[str, Any] = field(default_factory=dict)


def resolve_train_config(train: TrainConfig, params: Mapping[str, Any] | None = None) -> TrainConfig:
    """``train`` with ``params`` applied and validated: train keys, or ``gbdt.<key>`` (e.g. sampled by Tune)."""
    if not params:
        return train
    allowed = set(TrainConfig.model_fields) - {"gbdt"} | {f"gbdt.{k}" for k in GbdtConfig.model_fields}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ConfigError(f"unknown train keys {unknown} in params; allowed: {sorted(allowed)}")
    doc = train.model_dump()
    for key, value in params.items():
        value = value.item() if isinstance(value, np.generic) else value  # Tune samples numpy scalars
        if key.startswith("gbdt."):
            doc["gbdt"][key[len("gbdt."):]] = value
        else:
            doc[key] = value
    try:
        return TrainConfig.model_validate(doc)
    except Exception as err:
        raise ConfigError(f"invalid train params {dict(params)}: {err}") from None


def make_model_spec(train: TrainConfig, transform: Any) -> dict[str, Any]:
    """JSON-safe model spec from the train config and the fitted transform (feature counts, task, classes)."""
    task = transform.task
    return {
        "model": train.model,
        "n_numeric": len(transform.numeric),
        "cardinalities": [int(c) for c in transform.cardinalities],
        "embedding_dim": train.embedding_dim,
        "hidden_sizes": list(train.hidden_sizes),
        "dropout": train.dropout,
        "task": task,
        "n_classes": len(transform.classes) if task != "regression" else 1,
    }


# ------------------------------------------------------------------------------------ learning-rate schedule
_ONECYCLE_PEAK = 0.3  # share of the steps spent rising (torch's OneCycleLR default pct_start)
_ONECYCLE_START = 1 / 25  # OneCycleLR's div_factor
_ONECYCLE_END = _ONECYCLE_START / 1e4  # OneCycleLR's final_div_factor


def lr_factor(schedule: str, step: int, total_steps: int, warmup_pct: float = 5.0) -> float:
    """Multiplier of ``train.learning_rate`` at optimiser step ``step`` (0-based) of ``total_steps``.

    ``cosine``: linear warm-up over ``warmup_pct`` % of the steps, then cosine decay towards 0;
    ``onecycle``: cosine rise from lr/25 to lr over 30 % of the steps, then cosine anneal to lr/250000;
    ``constant``: 1. Steps past ``total_steps`` (an uneven last shard) stay at the final value.
    """
    if schedule == "constant" or total_steps <= 0:
        return 1.0
    step = min(max(step, 0), total_steps - 1)
    if schedule == "onecycle":
        rise = max(1, round(_ONECYCLE_PEAK * total_steps))
        if step < rise:
            return _ONECYCLE_START + (1 - _ONECYCLE_START) * (1 - math.cos(math.pi * step / rise)) / 2
        q = (step - rise) / max(1, total_steps - 1 - rise)
        return _ONECYCLE_END + (1 - _ONECYCLE_END) * (1 + math.cos(math.pi * q)) / 2
    if schedule != "cosine":
        raise ConfigError(f"train.lr_schedule {schedule!r} is unknown; use cosine, onecycle or constant")
    warm = round(warmup_pct / 100 * total_steps)
    if step < warm:
        return (step + 1) / warm
    q = (step - warm) / max(1, total_steps - warm)
    return (1 + math.cos(math.pi * q)) / 2


# ----------------------------------------------------------------------------------------- the shared loop
@dataclass
class _State:
    epoch: int = 0
    best_epoch: int = 0
    best_val_loss: float = math.inf
    bad_epochs: int = 0
    stopped: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    best_weights: dict[str, torch.Tensor] | None = None
    spec: dict[str, Any] = field(default_factory=dict)  # the model spec as trained (with target scaling)


@dataclass(frozen=True)
class Census:
    """What one pass over the training batches found, summed over the ranks."""

    rows: int
    steps_per_epoch: int  # optimiser steps of one rank in one epoch
    class_counts: list[float]  # classification: rows per class index; regression: empty
    target_mean: float = 0.0
    target_std: float = 1.0


def take_census(batches: Iterable[dict], task: str, n_classes: int, io: Any) -> Census:
    """Count rows, batches and classes (or the target's mean and std) of the training split on every rank."""
    rows, steps, total, total_sq = 0, 0, 0.0, 0.0
    counts = np.zeros(n_classes if task != "regression" else 0)
    for b in batches:
        y = b["y"].detach().cpu().numpy()
        rows, steps = rows + len(y), steps + 1
        if task == "regression":
            y = y.astype(np.float64)
            total, total_sq = total + float(y.sum()), total_sq + float(np.square(y).sum())
        else:
            counts += np.bincount(y.astype(np.int64).reshape(-1), minlength=n_classes)[:n_classes]
    world = getattr(io, "world", 1)
    reduced = io.all_reduce([rows, steps, total, total_sq, *counts.tolist()])
    rows, steps, total, total_sq = int(reduced[0]), reduced[1], reduced[2], reduced[3]
    mean = total / rows if rows else 0.0
    std = math.sqrt(max(total_sq / rows - mean * mean, 0.0)) if rows else 1.0
    return Census(rows, max(1, math.ceil(steps / world)), [float(c) for c in reduced[4:]],
                  mean, std if std > 1e-12 else 1.0)


class _LocalIO:
    """Single process: no DDP; optional checkpoints in a local directory (resumes from the latest one)."""

    device = torch.device("cpu")
    world = 1

    def __init__(self, progress: Callable[[dict], None] | None, checkpoint_dir: str | None):
        self.progress, self.dir, self.latest = progress, checkpoint_dir, None

    def restore(self) -> tuple[dict, dict[str, dict[str, torch.Tensor]]] | None:
        done = sorted(p for p in os.listdir(self.dir) if p.startswith("epoch_")) if self.dir else []
        if not done:
            return None
        self.latest = os.path.join(self.dir, done[-1])
        return load_checkpoint_dir(self.latest)

    def prepare(self, model: nn.Module) -> nn.Module:
        return model

    def all_reduce(self, values: list[float]) -> list[float]:
        return values

    def report(self, metrics: dict, save: Callable[[str], None]) -> None:
        if self.dir:
            final = os.path.join(self.dir, f"epoch_{metrics['epoch']:04d}")
            tmp = tempfile.mkdtemp(prefix=".tmp-", dir=self.dir)
            save(tmp)
            os.replace(tmp, final)  # a crash mid-save leaves only a hidden temporary directory
            self.latest = final
        if self.progress:
            self.progress(dict(metrics))


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    # clone() also breaks storage sharing (tied weights), which safetensors refuses to save.
    out = {}
    for k, v in _unwrap(model).state_dict().items():
        while k.startswith("module."):
            k = k[len("module.") :]
        out[k] = v.detach().cpu().clone().contiguous()
    return out


def skip_dynamo_import() -> None:
    """Spare this process torch._dynamo's import: call it first thing in a process that compiles nothing.

    torch's optimisers import torch._dynamo (as much CPU as importing torch: ~2 s here, in every Train worker
    and Tune trial) only to say "don't compile me": methods wrapped by ``torch._disable_dynamo``
    (``add_param_group``, ``zero_grad``, ``state_dict``, ...) build their disabled twin on the first call and
    cache it as ``__dynamo_disable``, and every ``step`` runs ``torch._dynamo.graph_break()`` around the update.
    Outside ``torch.compile`` both are the plain function, so here the plain function is cached, and each
    optimiser's ``step`` wrapper is replaced by the same wrapper without the graph breaks (grad mode set from
    ``defaults["differentiable"]`` and restored, as torch's does). Only for our own worker processes: a user's
    process that compiles optimiser steps needs torch's wrappers. A no-op once torch._dynamo is imported.
    """
    import functools
    import sys

    from torch.optim import optimizer as torch_optimizer

    if "torch._dynamo" in sys.modules:
        return
    # The wrappers' code objects, shared by every function they wrap.
    disabled = torch._disable_dynamo(lambda: None).__code__
    use_grad = torch_optimizer._use_grad_for_differentiable(lambda self: None).__code__

    def eager_step(step: Callable) -> Callable:
        @functools.wraps(step)
        def run(self, *args, **kwargs):
            before = torch.is_grad_enabled()
            try:
                torch.set_grad_enabled(self.defaults["differentiable"])
                return step(self, *args, **kwargs)
            finally:
                torch.set_grad_enabled(before)

        return run

    classes, seen = [torch.optim.Optimizer], set()
    while classes:
        cls = classes.pop()
        if cls in seen:
            continue
        seen.add(cls)
        classes += cls.__subclasses__()
        for name, attr in list(vars(cls).items()):
            plain = getattr(attr, "__wrapped__", None)
            code = getattr(attr, "__code__", None)
            if plain is None:
                continue
            if code is disabled:
                plain.__dynamo_disable = plain
            elif code is use_grad:
                setattr(cls, name, eager_step(plain))


def _optimizer(train: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params, lr, wd = model.parameters(), train.learning_rate, train.weight_decay
    if train.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=0.9)


def _target(y: torch.Tensor, task: str) -> torch.Tensor:
    return y.long() if task == "multiclass" else y.float()


def run_epoch(model, batches, criterion, optimizer, task, device,
              set_lr: Callable[[int], None] | None = None) -> tuple[float, int]:
    """One training pass; returns (sum of per-row loss, rows). ``set_lr(i)`` runs before the i-th step."""
    model.train()
    total, n = 0.0, 0
    for i, b in enumerate(batches):
        x_num, x_cat, y = (b[k].to(device) for k in ("x_num", "x_cat", "y"))
        if set_lr is not None:
            set_lr(i)
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(x_num, x_cat), _target(y, task))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), _GRAD_CLIP_NORM)
        optimizer.step()
        total += float(loss.detach()) * len(y)
        n += len(y)
    return total, n


@torch.no_grad()
def evaluate(model, batches, criterion, task, device) -> tuple[float, int, int]:
    """Returns (sum of per-row loss, rows, correctly classified rows; 0 for regression)."""
    model.eval()
    total, n, correct = 0.0, 0, 0
    for b in batches:
        x_num, x_cat, y = (b[k].to(device) for k in ("x_num", "x_cat", "y"))
        z = model(x_num, x_cat)
        total += float(criterion(z, _target(y, task))) * len(y)
        n += len(y)
        if task == "binary":
            correct += int(((z >= 0) == (y >= 0.5)).sum())
        elif task == "multiclass":
            correct += int((z.argmax(dim=1) == y.long()).sum())
    return total, n, correct


def fit_loop(train: TrainConfig, spec: dict, batches: Callable[[str, int], Iterable[dict]], io) -> _State:
    """The epoch loop behind every runner: early stopping, best weights, one checkpoint per epoch.

    ``batches(split, epoch)`` yields torch batches; ``io`` adapts it to its runner (``device``, ``restore()``,
    ``prepare(model)``, ``all_reduce(values)``, ``report(metrics, save)``; see ``_LocalIO``).
    """
    task = spec["task"]
    census = take_census(batches("train", 0), task, int(spec.get("n_classes", 2)) if task != "regression" else 0,
                         io)
    builtin = spec.get("model", "mlp") == "mlp"
    if builtin and task == "regression":
        # The built-in MLP learns the standardized target (a user's factory gets the spec it always got).
        spec = {**spec, "target_mean": census.target_mean, "target_std": census.target_std}
    balanced = train.class_weight == "balanced" and task != "regression"
    weights = balanced_class_weights(census.class_counts) if balanced else None
    set_seed(train.seed)
    # The spec comes from this run's config, whose train.model load_config checked against model.allowed_factories.
    model = build_model(spec, allowed_factories=(train.model,))
    if isinstance(model, TabularMLP) and task != "regression" and census.rows:
        # Balanced weights make the classes equally likely to the loss: the neutral bias is then the right start.
        model.init_output_bias([1.0] * len(census.class_counts) if weights else census.class_counts)
    restored = io.restore()
    state = _State(spec=spec)
    if restored is not None:
        meta, tensors = restored
        model.load_state_dict(tensors["last"])
        state = _State(**{k: meta[k] for k in ("epoch", "best_epoch", "best_val_loss", "bad_epochs", "stopped")},
                       history=meta["history"], best_weights=tensors["weights"], spec=spec)
    model = io.prepare(model)
    optimizer = _optimizer(train, model)
    if restored is not None:
        optimizer.load_state_dict(_unflatten_optimizer(restored[1]["optimizer"], restored[0]["optimizer"]))
    criterion = loss_fn(task, weights, spec.get("target_std", 1.0) if builtin else 1.0).to(io.device)
    total_steps = train.epochs * census.steps_per_epoch
    while state.epoch < train.epochs and not state.stopped:
        epoch = state.epoch + 1
        set_seed(train.seed + epoch)  # dropout masks do not depend on whether the run was resumed
        t0 = time.perf_counter()
        first = (epoch - 1) * census.steps_per_epoch

        def set_lr(i: int, first: int = first) -> None:
            lr = train.learning_rate * lr_factor(train.lr_schedule, first + i, total_steps, train.warmup_pct)
            for group in optimizer.param_groups:
                group["lr"] = lr

        tr_sum, tr_n = run_epoch(model, batches("train", epoch), criterion, optimizer, task, io.device, set_lr)
        # The bare module: evaluation needs no DDP collectives, so ranks cannot wait on each other here.
        va_sum, va_n, va_ok = evaluate(_unwrap(model), batches("validation", epoch), criterion, task, io.device)
        tr_sum, tr_n, va_sum, va_n, va_ok = io.all_reduce([tr_sum, tr_n, va_sum, va_n, va_ok])
        if tr_n == 0 or va_n == 0:
            raise DataError(f"the {'training' if tr_n == 0 else 'validation'} split has no rows; check "
                            "data.split (validation_pct, test_pct) and the data window")
        metrics = {"epoch": epoch, "train_loss": tr_sum / tr_n, "val_loss": va_sum / va_n}
        if task != "regression":
            metrics["val_accuracy"] = va_ok / va_n
        if not math.isfinite(metrics["val_loss"]):
            raise RaymlopsError(f"training diverged at epoch {epoch} (val_loss={metrics['val_loss']}); "
                                "lower train.learning_rate or check the inputs")
        metrics["lr"] = optimizer.param_groups[0]["lr"]  # at the epoch's last step
        metrics["epoch_time_s"] = time.perf_counter() - t0
        state.epoch = epoch
        if metrics["val_loss"] < state.best_val_loss:
            state.best_epoch, state.best_val_loss, state.bad_epochs = epoch, metrics["val_loss"], 0
            state.best_weights = _cpu_state(model)
        else:
            state.bad_epochs += 1
        state.stopped = 0 < train.early_stopping_patience <= state.bad_epochs
        state.history.append(metrics)
        io.report(metrics, lambda d: _save_checkpoint(d, state, model, optimizer, state.spec, train))
    return state


# ------------------------------------------------------------------------------------------- checkpoints
def _flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, extras = {}, {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{idx}/{name}"] = v.detach().cpu().clone().contiguous()
            else:
                extras[f"{idx}/{name}"] = v
    return tensors, {"param_groups": sd["param_groups"], "extras": extras}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in [*tensors.items(), *meta["extras"].items()]:
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def _save_checkpoint(d: str, state: _State, model, optimizer, spec: dict, train: TrainConfig) -> None:
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    save_file(state.best_weights or _cpu_state(model), os.path.join(d, "weights.safetensors"))
    save_file(_cpu_state(model), os.path.join(d, "last.safetensors"))
    save_file(opt_tensors, os.path.join(d, "optimizer.safetensors"))
    meta = {
        "format": 1,
        "epoch": state.epoch,
        "best_epoch": state.best_epoch,
        "best_val_loss": state.best_val_loss,
        "bad_epochs": state.bad_epochs,
        "stopped": state.stopped,
        "history": state.history,
        "model_spec": spec,
        "params": train.model_dump(mode="json"),
        "optimizer": opt_meta,
    }
    with open(os.path.join(d, _STATE_FILE), "w") as f:
        json.dump(meta, f)


def load_checkpoint_dir(d: str) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """``state.json`` and the safetensors files of a checkpoint directory (nothing is unpickled)."""
    with open(os.path.join(d, _STATE_FILE)) as f:
        meta = json.load(f)
    tensors = {name: load_file(os.path.join(d, f"{name}.safetensors")) for name in ("weights", "last", "optimizer")}
    return meta, tensors


def read_checkpoint(checkpoint: Any, fit_time_s: float = 0.0, uri: str | None = None) -> TrainResult:
    """TrainResult from a checkpoint written by this loop (a ``ray.train.Checkpoint`` or a local directory)."""
    if not hasattr(checkpoint, "as_directory"):
        meta, tensors = load_checkpoint_dir(str(checkpoint))
        uri = uri or str(checkpoint)
    else:
        with checkpoint.as_directory() as d:
            meta, tensors = load_checkpoint_dir(d)
    return TrainResult(
        model_spec=meta["model_spec"],
        state_dict={k: v.numpy() for k, v in tensors["weights"].items()},
        history=meta["history"],
        best_epoch=meta["best_epoch"],
        best_val_loss=meta["best_val_loss"],
        checkpoint_uri=uri,
        fit_time_s=fit_time_s,
        params=meta["params"],
    )


# ------------------------------------------------------------------------------------------ single process
def numpy_batches(arrays: Mapping[str, np.ndarray], batch_size: int, shuffle: bool, seed: int):
    """Batches of torch tensors from in-memory arrays: a seeded permutation per epoch when ``shuffle``.

    The batches of ``train_local`` and of a Ray Train worker holding its shard in memory (``shard_arrays``).
    """
    n = len(arrays["y"])
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield {k: torch.from_numpy(np.ascontiguousarray(arrays[k][idx])) for k in ("x_num", "x_cat", "y")}


def train_local(
    cfg: Config,
    model_spec: dict[str, Any],
    train: Mapping[str, np.ndarray],
    validation: Mapping[str, np.ndarray],
    *,
    params: dict | None = None,
    progress: Callable[[dict], None] | None = None,
    checkpoint_dir: str | None = None,
) -> TrainResult:
    """Train in this process on transformed arrays (``x_num``, ``x_cat``, ``y``): same loop, no Ray, no DDP.

    ``model_spec`` comes from ``make_model_spec``; its architecture keys are refreshed from ``params``.
    With ``checkpoint_dir`` (a local directory) each epoch is checkpointed there and a rerun resumes from the
    latest checkpoint.
    """
    tc = resolve_train_config(cfg.train, params)
    spec = {**model_spec, **_arch(tc)}
    splits = {"train": train, "validation": validation}

    def batches(split: str, epoch: int):
        return numpy_batches(splits[split], tc.batch_size, split == "train", tc.seed + epoch)

    if checkpoint_dir:
        os.makedirs(checkpoint_dir, exist_ok=True)
    io = _LocalIO(progress, checkpoint_dir)
    t0 = time.perf_counter()
    state = fit_loop(tc, spec, batches, io)
    return TrainResult(
        model_spec=state.spec,
        state_dict={k: v.numpy() for k, v in (state.best_weights or {}).items()},
        history=state.history,
        best_epoch=state.best_epoch,
        best_val_loss=state.best_val_loss,
        checkpoint_uri=io.latest,
        fit_time_s=time.perf_counter() - t0,
        params=tc.model_dump(mode="json"),
    )


def _arch(tc: TrainConfig) -> dict[str, Any]:
    return {"model": tc.model, "embedding_dim": tc.embedding_dim, "hidden_sizes": list(tc.hidden_sizes),
            "dropout": tc.dropout}


def load_split(prepared: Any, split: str) -> dict[str, np.ndarray]:
    """Read one prepared split into memory and transform it (no Ray; for baselines and small data)."""
    import pyarrow.dataset as pads

    from raymlops.core.transform import apply_transform

    fs, path = storage.resolve(prepared.split_uris[split])
    table = pads.dataset(path, filesystem=fs, format="parquet").to_table()
    return apply_transform(prepared.transform, table)


# --------------------------------------------------------------------------------------------- Ray Train
class _TrainIO:
    """Inside a Ray Train worker: DDP, all-reduce over ranks, checkpoints via ray.train.report."""

    def __init__(self):
        import ray.train
        import ray.train.torch

        self.device = ray.train.torch.get_device()
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()

    def restore(self):
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            return load_checkpoint_dir(d)

    def prepare(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def all_reduce(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def report(self, metrics: dict, save: Callable[[str], None]) -> None:
        import ray.train

        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if self.rank == 0:  # one writer; every rank must still call report (it is a barrier)
                save(d)
                ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"epoch_{metrics['epoch']:04d}")


def shard_arrays(blocks: Iterable[Mapping[str, np.ndarray]], rank: int, world: int, *,
                 equal: bool) -> dict[str, np.ndarray]:
    """Rank ``rank``'s rows of a whole split given as numpy blocks: every ``world``-th row from row ``rank``.

    The same rows on every run, whatever the scheduling (``streaming_split`` hands out blocks as they come).
    ``equal=True`` (training) gives every rank ``rows // world`` rows, as ``streaming_split(equal=True)`` does:
    DDP ranks must take the same number of optimiser steps or the gradient all-reduce waits forever.
    """
    parts: dict[str, list[np.ndarray]] = {}
    for block in blocks:
        for key, value in block.items():
            parts.setdefault(key, []).append(np.asarray(value))
    if "y" not in parts:
        raise DataError("the dataset shard holds no rows; check data.split (validation_pct, test_pct) and the "
                        "data window")
    whole = {key: np.concatenate(values) for key, values in parts.items()}
    n = len(whole["y"])
    stop = (n // world) * world if equal else n
    return {key: np.ascontiguousarray(value[rank:stop:world]) for key, value in whole.items()}


def in_memory_seed(seed: int, epoch: int, rank: int) -> int:
    """Shuffle seed of a rank's in-memory epoch; rank 0's is ``train_local``'s (``seed + epoch``)."""
    return seed + epoch + 1000 * rank


def _train_worker(config: dict) -> None:
    """Ray Train per-worker function: ``config = {"train": TrainConfig dump, "spec": model spec,
    "in_memory": splits read once into this worker's memory}``.

    A split in ``in_memory`` arrives unsplit (``DataConfig(datasets_to_split=...)`` leaves it out): every worker
    reads it once from the object store, keeps its own rows (``shard_arrays``) and iterates them from memory
    each epoch, with ``train_local``'s batches for one worker. That spares the streaming-split coordinator actor
    and a Ray Data executor start per pass (seconds each on a small machine). Other splits stream every epoch
    through ``iter_torch_batches`` with a local shuffle buffer.
    """
    import ray.train

    skip_dynamo_import()  # this process only runs this loop: ~2 s of CPU less before the first epoch
    tc = TrainConfig.model_validate(config["train"])
    io = _TrainIO()
    in_memory, held = set(config.get("in_memory", ())), {}

    def batches(split: str, epoch: int):
        shuffle = split == "train"
        if split in in_memory:
            if split not in held:
                blocks = ray.train.get_dataset_shard(split).iter_batches(batch_size=None, batch_format="numpy")
                held[split] = shard_arrays(blocks, io.rank, io.world, equal=shuffle)
            return numpy_batches(held[split], tc.batch_size, shuffle, in_memory_seed(tc.seed, epoch, io.rank))
        return ray.train.get_dataset_shard(split).iter_torch_batches(
            batch_size=tc.batch_size,
            device=io.device,
            local_shuffle_buffer_size=4 * tc.batch_size if shuffle else None,
            local_shuffle_seed=tc.seed + 1000 * epoch + io.rank if shuffle else None,
        )

    fit_loop(tc, config["spec"], batches, io)


def in_memory_splits(prepared: Any, splits: tuple[str, ...] = ("train", "validation")) -> list[str]:
    """The splits small enough to hold in memory: arrays under a tenth of the object store (and 512 MiB)."""
    import ray

    t = prepared.transform
    row_bytes = 4 * len(t.numeric) + 8 * len(t.categorical) + 8
    budget = min(_IN_MEMORY_SHARE * ray.cluster_resources().get("object_store_memory", 0), _IN_MEMORY_MAX_BYTES)
    return [s for s in splits if prepared.rows.get(s, 0) * row_bytes < budget]


def split_datasets(
    prepared: Any, splits: tuple[str, ...] = ("train", "validation"), *, materialize: bool | None = None,
    in_memory: bool | list[str] | None = None,
) -> dict[str, Any]:
    """Ray Datasets of transformed batches (``x_num``, ``x_cat``, ``y``) read from the prepared splits.

    A split in ``in_memory`` (default: ``in_memory_splits``; ``True``: all, ``False``: none) is read and
    transformed here, with pyarrow and ``load_split`` (the same ``apply_transform`` as the Ray Data path,
    row for row), and put in the object store as one materialized block: no Ray Data job, whose task start-up
    cost seconds for a few thousand rows. Other splits are read and transformed by Ray Data as they are
    iterated; ``materialize=True`` materializes them once here (for Tune, where every trial reads them).
    """
    import ray
    import ray.data
    from ray.data.block import BlockAccessor

    from raymlops.data.prepare import TransformBatch  # the same apply_transform path as batch/online serving

    for split in splits:
        if not prepared.rows.get(split):
            raise DataError(f"the {split} split at {prepared.split_uris[split]} has no rows; check data.split "
                            "(validation_pct, test_pct) and the data window")
    if in_memory is None:
        small = set(in_memory_splits(prepared, splits))
    else:
        small = set(splits) if in_memory is True else set(in_memory or ())
    t = prepared.transform
    out = {}
    for split in splits:
        if split in small:
            # BlockAccessor.batch_to_block is how map_batches turns a numpy batch into a block (tensor columns).
            out[split] = ray.data.from_arrow(BlockAccessor.batch_to_block(load_split(prepared, split)))
            continue
        fs, path = storage.resolve(prepared.split_uris[split])
        ds = ray.data.read_parquet(path, filesystem=fs, num_cpus=_DATA_CPUS)
        ds = ds.map_batches(TransformBatch(t), batch_format="pyarrow", num_cpus=_DATA_CPUS)
        out[split] = ds.materialize() if materialize else ds
    return out


def storage_args(storage_uri: str) -> dict[str, Any]:
    """RunConfig storage arguments for a local path or a pyarrow URI."""
    fs, path = storage.resolve(storage_uri)
    if storage.is_local(storage_uri):
        return {"storage_path": path}
    return {"storage_path": path, "storage_filesystem": fs}


def checkpoint_uri(storage_uri: str, path: str) -> str:
    """URI of a checkpoint path on the storage filesystem (re-adds the scheme stripped by pyarrow)."""
    if storage.is_local(storage_uri):
        return path
    return f"{storage_uri.split('://', 1)[0]}://{path}"


def _make_trainer(tc: TrainConfig, spec: dict, datasets: dict, *, storage_uri: str, run_name: str,
                 callbacks: list | None = None, in_memory: tuple[str, ...] = ()):
    """TorchTrainer running ``_train_worker`` with the config's scaling, failure and checkpoint settings.

    The ``in_memory`` datasets go to every worker whole (each keeps its own rows); the others are split.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    resources = {"CPU": tc.cpus_per_worker, **({"GPU": 1} if tc.use_gpu else {})}
    return TorchTrainer(
        _train_worker,
        train_loop_config={"train": tc.model_dump(mode="json"), "spec": spec, "in_memory": list(in_memory)},
        dataset_config=ray.train.DataConfig(datasets_to_split=[k for k in datasets if k not in in_memory]),
        scaling_config=ray.train.ScalingConfig(
            num_workers=tc.num_workers, use_gpu=tc.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            failure_config=ray.train.FailureConfig(max_failures=tc.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=_CHECKPOINTS_TO_KEEP),
            callbacks=callbacks or [],
            **storage_args(storage_uri),
        ),
        datasets=datasets,
    )


def progress_pump(progress: Callable[[dict], None]):
    """A Ray queue fed by a Train callback (runs in the controller actor) and a thread calling ``progress``."""
    import ray.train
    from ray.util.queue import Empty, Queue

    class _Forward(ray.train.UserCallback):
        def __init__(self, queue):
            self.queue = queue

        def after_report(self, run_context, metrics, checkpoint):
            self.queue.put(dict(metrics[0]))

    queue, done = Queue(actor_options={"num_cpus": 0}), threading.Event()

    def pump():
        while True:
            try:
                progress(queue.get(timeout=0.5))
            except Empty:
                if done.is_set():
                    return

    thread = threading.Thread(target=pump, name="raymlops-train-progress", daemon=True)
    thread.start()

    def stop():
        done.set()
        thread.join(timeout=10)
        queue.shutdown()

    return _Forward(queue), stop


def training_error(err: BaseException, run_name: str, max_failures: int) -> RaymlopsError:
    """The raymlops error a worker raised (DataError, ConfigError, ...), else a RaymlopsError describing ``err``."""
    todo, seen = [err, *getattr(err, "worker_failures", {}).values()], set()
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, RaymlopsError):
            return e
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    return RaymlopsError(f"training run {run_name!r} failed (after train.max_failures={max_failures} retries): {err}")


def train_model(
    cfg: Config,
    prepared: Any,
    *,
    storage_uri: str,
    run_name: str,
    params: dict | None = None,
    progress: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train with Ray Train (TorchTrainer, ``train.num_workers`` DDP workers) on the prepared splits.

    One checkpoint per epoch under ``{storage_uri}/{run_name}/``; a worker failure resumes from the latest one
    (up to ``train.max_failures`` times). A ``run_name`` that already holds checkpoints resumes that run.
    ``progress`` gets each epoch's metrics as they are reported. Returns the best epoch's weights.
    Splits that ``in_memory_splits`` finds small are held in each worker's memory (see ``_train_worker``).
    """

    tc = resolve_train_config(cfg.train, params)
    spec = make_model_spec(tc, prepared.transform)
    # fail on a bad spec or user factory here, before any cluster time is spent
    build_model(spec, allowed_factories=cfg.model.allowed_factories)
    small = tuple(in_memory_splits(prepared))
    datasets = split_datasets(prepared, in_memory=list(small))
    callbacks, stop = [], None
    if progress is not None:
        forward, stop = progress_pump(progress)
        callbacks.append(forward)
    trainer = _make_trainer(tc, spec, datasets, storage_uri=storage_uri, run_name=run_name, callbacks=callbacks,
                            in_memory=small)
    checkpoint, fit_time = fit_trainer(trainer, run_name, tc.max_failures, stop, "train.epochs")
    return read_checkpoint(checkpoint, fit_time, checkpoint_uri(storage_uri, checkpoint.path))


_PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


@contextlib.contextmanager
def train_env(alive_nodes: int):
    """Environment of one Ray Train fit (Train copies the driver's ``RAY_TRAIN_*`` variables to its controller).

    On a one-node cluster Train's preemption watcher is off: it is an actor process (~2.3 s of CPU to start)
    that polls whether the nodes running workers are being drained, so the controller can checkpoint and move
    them; with one node, the drained node also runs the driver and the controller, and there is nowhere to move
    to. A value the user set wins. Restored afterwards.
    """
    if alive_nodes > 1 or _PREEMPTION_WATCHER_ENV in os.environ:
        yield
        return
    os.environ[_PREEMPTION_WATCHER_ENV] = "0"
    try:
        yield
    finally:
        os.environ.pop(_PREEMPTION_WATCHER_ENV, None)


def fit_trainer(trainer: Any, run_name: str, max_failures: int, stop: Callable[[], None] | None,
                settings: str) -> tuple[Any, float]:
    """Run a Ray Train trainer: (its last checkpoint, seconds). Failures become ``RaymlopsError``s naming the fix;
    ``stop`` ends the progress pump either way; a run without a checkpoint points at ``settings``."""
    import ray
    from ray.train import TrainingFailedError

    t0 = time.perf_counter()
    try:
        with train_env(sum(1 for node in ray.nodes() if node["Alive"])):
            result = trainer.fit()
    except TrainingFailedError as err:
        raise training_error(err, run_name, max_failures) from err
    finally:
        if stop:
            stop()
    if result.checkpoint is None:
        raise RaymlopsError(f"training run {run_name!r} finished without a checkpoint; check {settings}")
    return result.checkpoint, time.perf_counter() - t0
