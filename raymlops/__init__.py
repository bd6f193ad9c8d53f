"""raymlops: MLOps level 2 on Ray alone.

The public API is imported lazily (PEP 562) so that `import raymlops` stays cheap and starts nothing.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

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
    "run_pipeline": "raymlops.ct:run",
    "CTResult": "raymlops.ct",
    "component": "raymlops.pipeline",
    "Pipeline": "raymlops.pipeline",
    "Step": "raymlops.pipeline",
    "Artifact": "raymlops.pipeline",
    "ModelRegistry": "raymlops.registry.models",
    "load_package": "raymlops.model.package",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'raymlops' has no attribute {name!r}")
    module, _, attr = target.partition(":")
    return getattr(import_module(module), attr or name)


def __dir__() -> list[str]:
    return __all__
