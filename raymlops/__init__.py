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
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'raymlops' has no attribute {name!r}")
    return getattr(import_module(module), name)


def __dir__() -> list[str]:
    return __all__
