"""Built-in tabular model, user-model loading, losses and the logits -> predictions mapping.

`predict_outputs` is shared by evaluation, the model package and serving, so it depends on torch and numpy only.
"""

from __future__ import annotations

import importlib
import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from raymlops.errors import ConfigError

TASKS = ("binary", "multiclass", "regression")
# Standardized inputs beyond this many standard deviations are corrupt or absurd outliers; the transform only clips
# to the float32 range, which would overflow the first layer to inf/NaN.
INPUT_CLAMP = 1e3
_MLP_KEYS = {"n_numeric", "cardinalities", "embedding_dim", "hidden_sizes", "dropout", "task", "n_classes",
             "target_mean", "target_std"}
DEFAULT_THRESHOLD = 0.5


def set_seed(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class TabularMLP(nn.Module):
    """Embeddings per categorical feature (index 0 = out-of-vocabulary) + numeric inputs -> ReLU MLP -> logits.

    ``forward(x_num float32 [n, k], x_cat int64 [n, m])`` returns ``[n]`` for binary/regression and ``[n, C]``
    for multiclass. Category indices outside ``0..cardinality-1`` are treated as out-of-vocabulary.
    Regression learns the standardized target: the head's output is scaled back by ``target_std`` and shifted
    by ``target_mean`` (the training split's), so a target of mean 150 does not take thousands of steps to reach.
    """

    def __init__(
        self,
        n_numeric: int,
        cardinalities: Sequence[int],
        embedding_dim: int = 8,
        hidden_sizes: Sequence[int] = (64, 32),
        dropout: float = 0.1,
        task: str = "binary",
        n_classes: int = 2,
        target_mean: float = 0.0,
        target_std: float = 1.0,
    ):
        super().__init__()
        if task not in TASKS:
            raise ConfigError(f"model task {task!r} is unknown; use one of {list(TASKS)} (data.task)")
        if task == "multiclass" and n_classes < 2:
            raise ConfigError(f"multiclass model needs n_classes >= 2, got {n_classes}; check the label classes")
        if any(c < 1 for c in cardinalities):
            raise ConfigError(f"cardinalities must be >= 1 (vocab size + 1 for OOV), got {list(cardinalities)}")
        if n_numeric + len(cardinalities) == 0:
            raise ConfigError("the model has no input features; check data.features")
        if not (math.isfinite(target_mean) and math.isfinite(target_std) and target_std > 0):
            raise ConfigError(f"model spec: target_mean {target_mean} / target_std {target_std} must be finite, "
                              "the std positive; re-train (they come from the training split's label)")
        self.task = task
        self.n_numeric = n_numeric
        self.target_mean, self.target_std = float(target_mean), float(target_std)
        self.embeddings = nn.ModuleList(nn.Embedding(c, embedding_dim) for c in cardinalities)
        for emb in self.embeddings:
            # OOV starts neutral: an unseen category contributes nothing until training learns a vector for it.
            nn.init.zeros_(emb.weight.data[0])
        self.register_buffer("_cards", torch.tensor(list(cardinalities), dtype=torch.long), persistent=False)
        layers: list[nn.Module] = []
        width = n_numeric + embedding_dim * len(cardinalities)
        for h in hidden_sizes:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_classes if task == "multiclass" else 1)

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        c = INPUT_CLAMP
        parts = [torch.nan_to_num(x_num.float(), 0.0, c, -c).clamp(-c, c)] if self.n_numeric else []
        if len(self.embeddings):
            x_cat = x_cat.long()
            x_cat = torch.where((x_cat < 0) | (x_cat >= self._cards), torch.zeros_like(x_cat), x_cat)
            parts += [emb(x_cat[:, i]) for i, emb in enumerate(self.embeddings)]
        out = self.head(self.body(torch.cat(parts, dim=1)))
        if self.task == "multiclass":
            return out
        out = out.squeeze(-1)
        if self.task == "regression" and (self.target_mean != 0.0 or self.target_std != 1.0):
            out = out * self.target_std + self.target_mean
        return out

    @torch.no_grad()
    def init_output_bias(self, prior: Sequence[float]) -> None:
        """Start from the class prior (counts or shares) instead of 50/50: binary log-odds, multiclass log-priors.

        The first steps then learn features rather than the base rate, and an imbalanced task does not begin
        with a loss dominated by the majority class.
        """
        p = np.asarray(prior, dtype=np.float64)
        if not p.sum() > 0:
            return
        p = np.clip(p / p.sum(), 1e-6, 1 - 1e-6)  # counts or shares alike; an empty class stays finite
        if self.task == "binary" and len(p) == 2:
            self.head.bias.fill_(float(np.log(p[1] / p[0])))
        elif self.task == "multiclass" and len(p) == self.head.bias.numel():
            self.head.bias.copy_(torch.from_numpy(np.log(p / p.sum())).to(self.head.bias))


def build_model(spec: dict[str, Any], *, allowed_factories: Sequence[str] = ()) -> nn.Module:
    """Build a model from a JSON-safe spec: ``{"model": "mlp", ...}`` or ``{"model": "module:factory", ...}``.

    A user factory must be in ``allowed_factories`` (the config's ``model.allowed_factories``; a spec read from a
    model package must never choose the code that runs): otherwise ``ConfigError``, before anything is imported.
    It is called with the spec's other keys as keyword arguments and must return an ``nn.Module`` whose
    ``forward(x_num, x_cat)`` returns logits shaped like ``TabularMLP``'s.
    """
    kind = spec.get("model", "mlp")
    kwargs = {k: v for k, v in spec.items() if k != "model"}
    if kind == "mlp":
        unknown = sorted(set(kwargs) - _MLP_KEYS)
        missing = sorted({"n_numeric", "cardinalities", "task"} - set(kwargs))
        if unknown or missing:
            raise ConfigError(f"model spec for 'mlp': unknown keys {unknown}, missing keys {missing}")
        return TabularMLP(**kwargs)
    if kind not in list(allowed_factories):
        raise ConfigError(f"train.model {kind!r} is not 'mlp' and not in model.allowed_factories "
                          f"{list(allowed_factories)}; nothing was imported. Add 'package.module:factory' to "
                          "model.allowed_factories in the config if you trust it")
    factory = _load_factory(str(kind))
    try:
        model = factory(**kwargs)
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(f"train.model {kind!r}: the factory raised {type(err).__name__}: {err}") from err
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"train.model {kind!r} returned {type(model).__name__}, not a torch.nn.Module; return the model itself"
        )
    return model


def _load_factory(path: str):
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"train.model {path!r}: use 'mlp' or 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            f"train.model {path!r}: cannot import module {module_name!r} ({err}); put it on PYTHONPATH "
            "or in the Ray job's working directory"
        ) from err
    factory = getattr(module, attr, None)
    if factory is None:
        raise ConfigError(f"train.model {path!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(factory):
        raise ConfigError(f"train.model {path!r}: {attr!r} is a {type(factory).__name__}, not a callable")
    return factory


class ScaledMSELoss(nn.Module):
    """MSE in units of the target's standard deviation (``MSE / std**2``: 1.0 is predicting the mean).

    Keeps the loss, its gradients and the gradient clipping on the same scale whatever the target's units.
    """

    def __init__(self, target_std: float = 1.0):
        super().__init__()
        self.scale = 1.0 / float(target_std) ** 2

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(z, y) * self.scale


def balanced_class_weights(counts: Sequence[float]) -> list[float]:
    """``n / (classes x rows of the class)`` per class (scikit-learn's "balanced"); 1.0 for a class with no rows."""
    c = np.asarray(counts, dtype=np.float64)
    n, k = c.sum(), len(c)
    return [float(n / (k * x)) if x > 0 else 1.0 for x in c]


def loss_fn(task: str, class_weights: Sequence[float] | None = None, target_std: float = 1.0) -> nn.Module:
    """Training loss for a task: BCE-with-logits, cross-entropy or MSE (scaled by ``target_std``).

    ``class_weights`` (one per class) weigh classification rows: binary uses their ratio as ``pos_weight``.
    """
    if task == "binary":
        if class_weights is None:
            return nn.BCEWithLogitsLoss()
        return nn.BCEWithLogitsLoss(pos_weight=torch.tensor([class_weights[1] / class_weights[0]]))
    if task == "multiclass":
        weight = None if class_weights is None else torch.tensor(list(class_weights), dtype=torch.float32)
        return nn.CrossEntropyLoss(weight=weight)
    if task == "regression":
        return ScaledMSELoss(target_std) if target_std != 1.0 else nn.MSELoss()
    raise ConfigError(f"task {task!r} is unknown; use one of {list(TASKS)} (data.task)")


def predict_outputs(
    task: str, logits: torch.Tensor | np.ndarray, threshold: float = DEFAULT_THRESHOLD
) -> dict[str, np.ndarray]:
    """Map model logits to predictions.

    binary: ``probability`` float [n] (of class index 1) and ``label`` int64 [n], 1 where the probability is at
    least ``threshold`` (the package's, chosen on validation; 0.5 for packages that have none);
    multiclass: ``probabilities`` float [n, C] and ``label`` int64 [n] (index into the label classes);
    regression: ``value`` float [n].
    """
    z = logits.detach().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    z = z.astype(np.float64, copy=False)
    if task == "binary":
        z = z.reshape(-1)
        # Two branches keep exp() from overflowing for large |z|.
        e = np.exp(-np.abs(z))
        p = np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        return {"probability": p, "label": (p >= threshold).astype(np.int64)}
    if task == "multiclass":
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        p = e / e.sum(axis=1, keepdims=True)
        return {"probabilities": p, "label": p.argmax(axis=1).astype(np.int64)}
    if task == "regression":
        return {"value": z.reshape(-1)}
    raise ConfigError(f"task {task!r} is unknown; use one of {list(TASKS)} (data.task)")
