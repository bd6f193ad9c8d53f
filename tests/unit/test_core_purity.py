"""raymlops.core and the pure half of raymlops.control (state, canary, triggers) stay pure: every module imports
with ray, mlflow, torch, pydantic, starlette and the config blocked."""

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import raymlops.core

BLOCKED = ["ray", "mlflow", "torch", "pydantic", "starlette", "fastapi", "raymlops.config"]

_SCRIPT = """
import importlib, json, sys

blocked = json.loads(sys.argv[1])

class Block:
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in blocked):
            raise ImportError(f"raymlops.core must stay pure: it imported {name}")
        return None

for name in list(sys.modules):
    if any(name == b or name.startswith(b + ".") for b in blocked):
        del sys.modules[name]
sys.meta_path.insert(0, Block())
for name in json.loads(sys.argv[2]):
    importlib.import_module(name)
leaked = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in blocked))
assert not leaked, leaked
"""


# The controller's policies and state machine are unit-tested without Ray or MLflow, so they must import without.
PURE_CONTROL = ["raymlops.control.state", "raymlops.control.canary", "raymlops.control.triggers"]


def _core_modules() -> list[str]:
    path = Path(raymlops.core.__file__).parent
    return ["raymlops.core"] + [f"raymlops.core.{m.name}" for m in pkgutil.iter_modules([str(path)])]


def test_every_core_module_imports_without_heavy_dependencies():
    modules = _core_modules()
    assert {"raymlops.core.sketches", "raymlops.core.drift", "raymlops.core.schema", "raymlops.core.validation",
            "raymlops.core.report_html"} <= set(modules)
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(BLOCKED), json.dumps(modules + PURE_CONTROL)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_blocker_does_block():
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(BLOCKED), json.dumps(["raymlops.config"])],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0 and "must stay pure" in proc.stderr
