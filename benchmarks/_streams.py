"""Data the project was not tuned on, for bench_quality.py: package datasets as tables, and a drifting stream.

The stream ("shiftstream") has six numeric features and one categorical, a binary label from a fixed rule, and
three regimes:

* ``base``: x0..x5 ~ N(0, 1), segment in {a, b, c}; y = 1[1.5·x0 − x1 + 0.8·x2·x3 + seg + noise > 0];
* ``shift``: the same rule, but x0 is scaled by 1.6 and shifted by +3 (a covariate shift that leaves the numeric
  range inferred from ``base``: about 13% of values fall outside it);
* ``rule``: the shifted inputs, with a new labelling rule y = 1[−1.5·(x0 − 3) + x1 + x4 + seg' + noise > 0].
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

REGIMES = ("base", "shift", "rule")
LABEL, TS, ID = "y", "ts", "row_id"


def shiftstream(regime: str, rows: int, *, seed: int, day: str = "2026-03-01") -> pa.Table:
    """One day of the stream in ``regime`` (see the module docstring); the same seed gives the same rows."""
    if regime not in REGIMES:
        raise ValueError(f"regime {regime!r}: use one of {REGIMES}")
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (rows, 6))
    seg = rng.choice(np.array(["a", "b", "c"]), rows, p=[0.5, 0.3, 0.2])
    if regime != "base":
        x[:, 0] = 1.6 * x[:, 0] + 3.0
    noise = rng.normal(0.0, 0.5, rows)
    if regime == "rule":
        seg_effect = np.select([seg == "a", seg == "b"], [0.6, -0.6], 0.0)
        z = -1.5 * (x[:, 0] - 3.0) + x[:, 1] + x[:, 4] + seg_effect + noise
    else:
        seg_effect = np.select([seg == "a", seg == "b"], [-0.5, 0.5], 1.0)
        z = 1.5 * x[:, 0] - x[:, 1] + 0.8 * x[:, 2] * x[:, 3] + seg_effect + noise
        if regime == "shift":
            z = z - 4.5  # the same rule around the shifted mean (1.5 · 3): the classes stay balanced
    start = dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc)
    ts = [start + dt.timedelta(seconds=int(s)) for s in np.sort(rng.integers(0, 86_400, rows))]
    cols = {ID: [f"{day}-{i}" for i in range(rows)], TS: pa.array(ts, pa.timestamp("us", tz="UTC"))}
    cols |= {f"x{i}": np.round(x[:, i], 4) for i in range(6)}
    cols |= {"segment": seg, LABEL: (z > 0).astype(np.int64)}
    return pa.table(cols)


def package_datasets() -> dict[str, tuple[pa.Table, str, str]]:
    """Datasets that ship inside scikit-learn and river (no download): name -> (table, task, label column)."""
    from river import datasets as rd
    from sklearn import datasets as sk

    out: dict[str, tuple[pa.Table, str, str]] = {}
    for name, loader, task in (("breast_cancer", sk.load_breast_cancer, "binary"), ("wine", sk.load_wine, "multiclass"),
                               ("digits", sk.load_digits, "multiclass"), ("iris", sk.load_iris, "multiclass"),
                               ("diabetes", sk.load_diabetes, "regression")):
        frame = loader(as_frame=True).frame
        out[name] = (pa.Table.from_pandas(frame, preserve_index=False), task, "target")
    for name, ds, task in (("phishing", rd.Phishing(), "binary"), ("trump_approval", rd.TrumpApproval(), "regression")):
        rows = [{**x, "target": (int(y) if task == "binary" else float(y))} for x, y in ds]
        out[name] = (pa.Table.from_pylist(rows), task, "target")
    return out
