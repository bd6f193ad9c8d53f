"""Built-in tabular model, user-model loading, losses and the logits -> predictions mapping.

`predict_outputs` is shared by evaluation, the model package and serving, so it depends on torch and numpy only.
"""

from __future__ import annotations

import importlib
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
_MLP_KEYS = {"n_numeric", "cardinalities", "embedding_dim", "hidden_sizes", "dropout", "task", "n_classes"}


def set_seed(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class TabularMLP(nn.Module):
    """Embeddings per categorical feature (index 0 = out-of-vocabulary) + numeric inputs -> ReLU MLP -> logits.

    ``forward(x_num float32 [n, k], x_cat int64 [n, m])`` returns ``[n]`` for binary/regression and ``[n, C]``
    for multiclass. Category indices outside ``0..cardinality-1`` are treated as out-of-vocabulary.
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
        self.task = task
        self.n_numeric = n_numeric
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
        return out if self.task == "multiclass" else out.squeeze(-1)


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Build a model from a JSON-safe spec: ``{"model": "mlp", ...}`` or ``{"model": "module:factory", ...}``.

    A user factory is called with the spec's other keys as keyword arguments and must return an ``nn.Module``
    whose ``forward(x_num, x_cat)`` returns logits shaped like ``TabularMLP``'s.
    """
    kind = spec.get("model", "mlp")
    kwargs = {k: v for k, v in spec.items() if k != "model"}
    if kind == "mlp":
        unknown = sorted(set(kwargs) - _MLP_KEYS)
        missing = sorted({"n_numeric", "cardinalities", "task"} - set(kwargs))
        if unknown or missing:
            raise ConfigError(f"model spec for 'mlp': unknown keys {unknown}, missing keys {missing}")
        return TabularMLP(**kwargs)
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


def loss_fn(task: str) -> nn.Module:
    """Training loss for a task: BCE-with-logits, cross-entropy or MSE."""
    if task == "binary":
        return nn.BCEWithLogitsLoss()
    if task == "multiclass":
        return nn.CrossEntropyLoss()
    if task == "regression":
        return nn.MSELoss()
    raise ConfigError(f"task {task!r} is unknown; use one of {list(TASKS)} (data.task)")


def predict_outputs(task: str, logits: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """Map model logits to predictions.

    binary: ``probability`` float [n] (of class index 1) and ``label`` int64 [n];
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
        return {"probability": p, "label": (p >= 0.5).astype(np.int64)}
    if task == "multiclass":
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        p = e / e.sum(axis=1, keepdims=True)
        return {"probabilities": p, "label": p.argmax(axis=1).astype(np.int64)}
    if task == "regression":
        return {"value": z.reshape(-1)}
    raise ConfigError(f"task {task!r} is unknown; use one of {list(TASKS)} (data.task)")
