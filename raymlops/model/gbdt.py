"""Gradient-boosted trees in the model package: the feature matrix, the booster's JSON bytes and its predictor.

Training (``raymlops.train.gbdt``) and every inference path (``LoadedModel.predict``) build the booster's input
with the same ``feature_matrix`` from the fitted transform's arrays: standardised numeric columns first, then the
categorical indices as XGBoost categorical features (index 0 is out-of-vocabulary, as for the MLP's embeddings).
A booster is stored in XGBoost's own JSON model format and read back with ``Booster.load_model`` from bytes:
nothing is unpickled. ``xgboost`` is imported only when a booster is built or read, so torch packages load
without it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from raymlops.errors import ConfigError, PackageError

__all__ = [
    "BOOSTER_FILE",
    "XGBOOST",
    "BoosterPredictor",
    "booster_json",
    "feature_matrix",
    "feature_types",
    "import_xgboost",
    "load_booster",
    "objective_params",
]

XGBOOST = "xgboost"
BOOSTER_FILE = "model.json"


def import_xgboost() -> Any:
    """The ``xgboost`` module, or a ``ConfigError`` that says how to install it."""
    try:
        import xgboost
    except ImportError as err:
        raise ConfigError(
            f"train.model xgboost needs the xgboost package ({err}); install it with `pip install xgboost-cpu` "
            "(CPU-only wheel) or `pip install xgboost`"
        ) from None
    return xgboost


def feature_types(n_numeric: int, n_categorical: int) -> list[str]:
    """XGBoost feature types of ``feature_matrix``'s columns: ``q`` (numeric) then ``c`` (categorical)."""
    return ["q"] * n_numeric + ["c"] * n_categorical


def feature_matrix(x_num: np.ndarray, x_cat: np.ndarray) -> np.ndarray:
    """The booster's input from ``apply_transform``'s ``x_num`` [n, k] and ``x_cat`` [n, m]: float32 [n, k + m].

    Category indices are small non-negative integers (at most ``prepare.max_categories`` + 1), exact in float32.
    """
    x_num, x_cat = np.asarray(x_num, dtype=np.float32), np.asarray(x_cat)
    if x_num.ndim != 2 or x_cat.ndim != 2 or len(x_num) != len(x_cat):
        raise ValueError(f"x_num and x_cat must be [n, k] and [n, m] arrays (apply_transform's), got shapes "
                         f"{x_num.shape} and {x_cat.shape}")
    return np.ascontiguousarray(np.concatenate([x_num, x_cat.astype(np.float32)], axis=1))


def objective_params(task: str, n_classes: int) -> dict[str, Any]:
    """XGBoost objective and evaluation metrics for a task (the last metric drives early stopping)."""
    if task == "binary":
        return {"objective": "binary:logistic", "eval_metric": ["error", "logloss"]}
    if task == "multiclass":
        if n_classes < 2:
            raise ConfigError(f"multiclass model needs at least 2 classes, got {n_classes}; check the label classes")
        return {"objective": "multi:softprob", "num_class": int(n_classes), "eval_metric": ["merror", "mlogloss"]}
    if task == "regression":
        return {"objective": "reg:squarederror", "eval_metric": ["rmse"]}
    raise ConfigError(f"task {task!r} is unknown; use binary, multiclass or regression (data.task)")


def booster_json(booster: Any) -> bytes:
    """The booster in XGBoost's JSON model format (``save_raw("json")``), as bytes."""
    return bytes(booster.save_raw("json"))


def load_booster(raw: bytes, where: str = "model.json") -> Any:
    """A ``Booster`` read from JSON model bytes (never pickle); ``PackageError`` when they are not a model."""
    xgboost = import_xgboost()
    booster = xgboost.Booster()
    try:
        booster.load_model(bytearray(raw))
    except Exception as err:  # XGBoostError with the parser's message
        raise PackageError(f"{where} is not a readable XGBoost JSON model ({err}); re-create the package") from None
    return booster


class BoosterPredictor:
    """A loaded booster with the spec it was trained under; ``logits`` is what ``predict_outputs`` decodes.

    The margin (``predict_type="margin"``) is the raw score before the link: log-odds for binary, one score per
    class for multiclass, the value itself for regression; so the package's threshold and softmax apply to trees
    and nets alike.
    """

    def __init__(self, booster: Any, spec: dict[str, Any], where: str = "model.json"):
        n_numeric, cards = int(spec.get("n_numeric", 0)), list(spec.get("cardinalities", []))
        expected = n_numeric + len(cards)
        if booster.num_features() != expected:
            raise PackageError(f"{where} expects {booster.num_features()} features but model_spec.json describes "
                               f"{expected} ({n_numeric} numeric, {len(cards)} categorical); re-create the package")
        task = spec.get("task")
        if task not in ("binary", "multiclass", "regression"):
            raise PackageError(f"model_spec.json of {where} has task {task!r}; re-create the package")
        self.booster, self.spec, self.task = booster, spec, task
        self.n_classes = int(spec.get("n_classes", 2)) if task == "multiclass" else 1
        # Serving replicas reserve a fraction of a CPU: one thread per prediction call, no OpenMP pool spinning.
        booster.set_param({"nthread": 1})

    @classmethod
    def from_json(cls, raw: bytes, spec: dict[str, Any], where: str = "model.json") -> BoosterPredictor:
        """Read the booster from JSON model bytes and check it against ``spec``."""
        return cls(load_booster(raw, where), spec, where)

    def logits(self, x_num: np.ndarray, x_cat: np.ndarray) -> np.ndarray:
        """Margins for a transformed batch: [n] (binary, regression) or [n, C] (multiclass)."""
        x = feature_matrix(x_num, x_cat)
        if len(x) == 0:
            return np.zeros((0, self.n_classes) if self.task == "multiclass" else (0,), dtype=np.float64)
        # The booster keeps its feature types (categorical columns) from training, so plain arrays suffice.
        z = np.asarray(self.booster.inplace_predict(x, predict_type="margin"), dtype=np.float64)
        return z.reshape(len(x), self.n_classes) if self.task == "multiclass" else z.reshape(-1)

