"""raymlops: MLOps level 2 on Ray alone.

The public API is imported lazily (PEP 562) so that `import raymlops` stays cheap and starts nothing.

```python
import raymlops
result = raymlops.run_ct("configs/churn.yaml", overrides=["train.epochs=3"])   # one CT run -> CTResult
raymlops.runs("configs/churn.yaml")                  # the pipeline's runs, newest first
raymlops.lineage("configs/churn.yaml", "champion")   # model version -> run -> steps -> data
```
"""

from __future__ import annotations

import warnings
from importlib import import_module
from pathlib import Path
from typing import Any

# The one place the version is written: pyproject.toml reads it (`dynamic = ["version"]`, setuptools `attr`).
__version__ = "0.1.0"

_EXPORTS = {
    "Config": "raymlops.config",
    "load_config": "raymlops.config",
    "RaymlopsError": "raymlops.errors",
    "ConfigError": "raymlops.errors",
    "DataError": "raymlops.errors",
    "DataValidationError": "raymlops.errors",
    "ModelValidationError": "raymlops.errors",
    "validate_data": "raymlops.data.validate",
    "generate": "raymlops.data.synthetic",
    "ingest": "raymlops.data.ingest",
    "prepare": "raymlops.data.prepare",
    "run_ct": "raymlops.ct",
    "CTResult": "raymlops.ct",
    "runs": "raymlops.registry.client",
    "lineage": "raymlops.registry.client",
    "RunSummary": "raymlops.registry.tracking",
    "Lineage": "raymlops.registry.tracking",
    "component": "raymlops.pipeline",
    "Pipeline": "raymlops.pipeline",
    "Step": "raymlops.pipeline",
    "Artifact": "raymlops.pipeline",
    "ModelRegistry": "raymlops.registry.models",
    "load_package": "raymlops.model.package",
    "FeatureStore": "raymlops.features.store",
}
# Old names kept for one release: name -> (new name, when it goes).
_DEPRECATED = {"run_pipeline": ("run_ct", "0.3")}

__all__ = sorted([*_EXPORTS, "example_configs"])


def example_configs() -> dict[str, Path]:
    """The example configs shipped in the package: file name -> path (``churn.yaml``, ``features.yaml``).

    They are the repository's ``configs/``: a checkout links ``raymlops/configs/*`` to them, a wheel holds copies.
    Read them, or copy them to start a project; relative paths inside them are relative to the working directory.
    """
    folder = Path(__file__).with_name("configs")
    return {p.name: p for p in sorted(folder.glob("*.yaml"))}


def __getattr__(name: str) -> Any:
    if name in _DEPRECATED:
        new, until = _DEPRECATED[name]
        # `raymlops.pipeline.run_pipeline` is the generic runner; this name ran the CT pipeline, hence the rename.
        warnings.warn(f"raymlops.{name} is deprecated and goes in {until}; use raymlops.{new}", DeprecationWarning,
                      stacklevel=2)
        name = new
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'raymlops' has no attribute {name!r}")
    module, _, attr = target.partition(":")
    return getattr(import_module(module), attr or name)


def __dir__() -> list[str]:
    return __all__
