"""One set of test data for every tier: the churn request schema, synthetic churn rows, and a real model package.

A package here is real (fitted transform, frozen schema, random weights, verified manifest); only its weights are
untrained, which is all that tests of loading, serving and batch prediction need.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from raymlops.core.schema import ColumnSpec, Schema
from raymlops.core.transform import CategoricalColumn, NumericColumn, Transform

IDS, TS, LABEL = ["customer_id"], "event_ts", "churned"

# A request schema with every kind the validators handle: int, nullable double, string/int/bool/double categories,
# an id, an ignored column, a timestamp and the label.
CHURN_SCHEMA = Schema("churn", 1, "binary", [
    ColumnSpec("churned", "label", "numeric", "int64", min=0, max=1),
    ColumnSpec("event_ts", "timestamp", "timestamp", "timestamp[us, tz=UTC]"),
    ColumnSpec("customer_id", "id", "string", "string"),
    ColumnSpec("notes", "ignored", "string", "string", nullable=True),
    ColumnSpec("tenure", "feature", "numeric", "int64", min=0, max=80),
    ColumnSpec("usage", "feature", "numeric", "double", nullable=True, min=0.0, max=200.0),
    ColumnSpec("plan", "feature", "categorical", "string", domain=["basic", "premium", "standard"]),
    ColumnSpec("region", "feature", "categorical", "string", domain=["east", "north", "south", "west"]),
    ColumnSpec("tier", "feature", "categorical", "int64", domain=["1", "2", "3"]),
    ColumnSpec("senior", "feature", "categorical", "bool", nullable=True, domain=["false", "true"]),
    ColumnSpec("zone", "feature", "categorical", "string", domain=["3", "a"]),
    ColumnSpec("rate", "feature", "categorical", "double", domain=["0.5", "1"]),
])


# The smallest package spec and transform a hand-built package needs (tests of loading rules, not of predictions).
TINY_SPEC = {"model": "mlp", "n_numeric": 2, "cardinalities": [4], "embedding_dim": 3, "hidden_sizes": [8],
             "dropout": 0.0, "task": "binary", "n_classes": 2}
TINY_TRANSFORM = Transform(
    numeric=[NumericColumn("tenure_months", 12.0, 20.0, 10.0), NumericColumn("monthly_charges", 50.0, 60.0, 15.0)],
    categorical=[CategoricalColumn("plan", ["basic", "standard", "premium"])],
    label="churned", task="binary", classes=[0, 1],
)


def instances(n: int, *, seed: int = 5, with_id: bool = False) -> list[dict[str, Any]]:
    """``n`` valid request instances of the synthetic churn data (features as a JSON client sends them)."""
    from raymlops.data.synthetic import make_day

    rows = make_day("2026-02-01", n, seed=seed).to_pylist()
    drop = {LABEL, TS} | (set() if with_id else set(IDS))
    return [{k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in r.items() if k not in drop}
            for r in rows]


def build_package(cfg: Any, path: Path, *, seed: int = 0, task: str = "binary", label: str = LABEL,
                  extra_feature: str | None = None, metrics: dict[str, Any] | None = None):
    """A real package of the synthetic churn data: transform fitted on 2,000 rows, model initialised with ``seed``.

    ``extra_feature`` adds a numeric feature the other packages do not have (a version whose schema differs).
    """
    import numpy as np
    import pyarrow as pa
    import torch

    from raymlops.core.schema import infer_schema
    from raymlops.core.sketches import profile_table
    from raymlops.core.transform import fit_transform
    from raymlops.data.synthetic import make_day
    from raymlops.model.nets import build_model
    from raymlops.model.package import save_package
    from raymlops.train.loop import make_model_spec

    table = make_day("2026-01-01", 2000, seed=11)
    if extra_feature:
        table = table.append_column(extra_feature, pa.array(np.linspace(0.0, 1.0, table.num_rows)))
    categorical = {label} if task != "regression" else set()
    profile = profile_table(table, categorical=categorical, skip={*IDS, TS})
    schema = infer_schema(profile, name=cfg.name, task=task, label=label, timestamp=TS, id_columns=IDS)
    transform = fit_transform(profile, schema)
    spec = make_model_spec(cfg.train, transform)
    torch.manual_seed(seed)
    model = build_model(spec)
    return save_package(
        str(path), state_dict={k: v.numpy() for k, v in model.state_dict().items()}, model_spec=spec,
        transform_json=transform.to_json(), schema_yaml=schema.to_yaml(),
        signature={"task": task, "label": label}, metrics=metrics or {}, tags={"test": "helpers"},
    )
