"""A training worker's start-up: the loop runs without importing torch._dynamo, and trains exactly as before.

torch's optimisers import torch._dynamo (as much CPU as torch itself) the first time a ``torch._disable_dynamo``
method runs; a worker that never compiles anything is spared it by ``skip_dynamo_import``. Checked in a fresh
interpreter, since this one may have imported torch._dynamo already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from raymlops.config import config_from_dict
from raymlops.train.loop import train_local

SPEC = {"model": "mlp", "n_numeric": 3, "cardinalities": [4, 5], "embedding_dim": 4, "hidden_sizes": [16, 8],
        "dropout": 0.1, "task": "binary", "n_classes": 2}

# Trains both runs' rows with every optimiser after skip_dynamo_import, resumes one run from its checkpoint
# (optimizer.load_state_dict), and prints what it got and whether torch._dynamo was imported.
CHILD = """
import json, sys, tempfile
import numpy as np
from raymlops.train import loop
from tests.unit.test_train_startup import SPEC, arrays, config
loop.skip_dynamo_import()
out = {}
for opt in ("adam", "adamw", "sgd"):
    r = loop.train_local(config(opt, 2), SPEC, arrays(0, 400), arrays(1, 100))
    out[opt] = {k: v.tolist() for k, v in r.state_dict.items()}
d = tempfile.mkdtemp()
loop.train_local(config("adam", 1), SPEC, arrays(0, 400), arrays(1, 100), checkpoint_dir=d)
r = loop.train_local(config("adam", 2), SPEC, arrays(0, 400), arrays(1, 100), checkpoint_dir=d)
out["resumed"] = r.history[-1]["val_loss"]
print(json.dumps({"dynamo": "torch._dynamo" in sys.modules, "weights": out}))
"""


def arrays(seed: int, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x_num": rng.normal(size=(n, 3)).astype(np.float32), "x_cat": rng.integers(0, 4, (n, 2)),
            "y": rng.integers(0, 2, n).astype(np.float32)}


def config(optimizer: str, epochs: int):
    return config_from_dict({"train": {"epochs": epochs, "batch_size": 64, "optimizer": optimizer,
                                       "early_stopping_patience": 0}})


@pytest.fixture(scope="module")
def child() -> dict:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", CHILD], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_loop_runs_without_importing_torch_dynamo(child):
    assert child["dynamo"] is False


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_weights_are_those_of_a_process_with_torch_dynamo(child, optimizer):
    # This process trains with torch's own (dynamo-importing) optimiser methods: same seed, same weights.
    ref = train_local(config(optimizer, 2), SPEC, arrays(0, 400), arrays(1, 100))
    got = {k: np.asarray(v, dtype=ref.state_dict[k].dtype) for k, v in child["weights"][optimizer].items()}
    assert got.keys() == ref.state_dict.keys()
    for key, value in ref.state_dict.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_a_resumed_run_restores_the_optimizer_as_before(child):
    d = tempfile.mkdtemp()
    train_local(config("adam", 1), SPEC, arrays(0, 400), arrays(1, 100), checkpoint_dir=d)
    ref = train_local(config("adam", 2), SPEC, arrays(0, 400), arrays(1, 100), checkpoint_dir=d)
    assert child["weights"]["resumed"] == ref.history[-1]["val_loss"]


# ------------------------------------------------------------------ Ray Train's preemption watcher on one node
WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def test_one_node_runs_without_the_preemption_watcher(monkeypatch):
    from raymlops.train.loop import train_env

    monkeypatch.delenv(WATCHER, raising=False)
    with train_env(alive_nodes=1):
        assert os.environ[WATCHER] == "0"  # what Train's controller reads (propagated from the driver)
    assert WATCHER not in os.environ  # restored after the fit


def test_a_cluster_keeps_the_watcher_and_a_users_setting_wins(monkeypatch):
    from raymlops.train.loop import train_env

    monkeypatch.delenv(WATCHER, raising=False)
    with train_env(alive_nodes=3):
        assert WATCHER not in os.environ  # Train's default: on, to checkpoint before a node is reclaimed
    monkeypatch.setenv(WATCHER, "1")
    with train_env(alive_nodes=1):
        assert os.environ[WATCHER] == "1"
    assert os.environ[WATCHER] == "1"
