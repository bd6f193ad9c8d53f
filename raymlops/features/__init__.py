"""The feature store: definitions, point-in-time retrieval, materialisation and online retrieval.

``FeatureStore`` (``raymlops.features.store``) puts it behind one Feast-shaped object. Nothing heavy is imported
here (PEP 562, as in ``raymlops``); the submodules (``definitions``, ``offline``, ``materialize``, ``online``,
``stores``, ``serving``, ``training``, ``store``) can be imported directly.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {"FeatureStore": "raymlops.features.store", "OnlineResponse": "raymlops.features.store",
            "RetrievalJob": "raymlops.features.store"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'raymlops.features' has no attribute {name!r}")
    return getattr(import_module(module), name)


def __dir__() -> list[str]:
    return __all__
