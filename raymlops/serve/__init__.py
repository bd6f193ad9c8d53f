"""Serving: online inference on Ray Serve and batch prediction on Ray Data, both through ``load_package``.

``raymlops.serve.batch.predict_batch`` scores a whole dataset with a registered model version.
``raymlops.serve.predlog`` is the buffered parquet prediction / feedback log and its reader (``read_log``,
``join_feedback``); the routing and request-validation logic it serves with is pure, in ``raymlops.core.routing``
and ``raymlops.core.request_validation``.

``raymlops.serve:app`` is a Serve application builder, for ``serve run`` and a KubeRay ``RayService``::

    serve run raymlops.serve:app config=configs/churn.yaml serving.num_replicas=2
"""

from __future__ import annotations

import sys
import types
from typing import Any

__all__ = ["app"]


def app(args: dict[str, str]) -> Any:
    """Serve application builder: the serving app of the config at ``args["config"]``, routed from the registry.

    Other keys with a dot are config overrides (``serving.num_replicas=2``), like ``--set``; ``env`` picks a
    config environment. The replicas take the cluster's Serve ingress (set ``RAY_SERVE_ENABLE_HA_PROXY=1`` on the
    cluster for HAProxy) unless ``serving.ingress`` names one. Raises ``ConfigError`` naming a missing or bad key.
    """
    from raymlops.config import load_config
    from raymlops.errors import ConfigError
    from raymlops.serve.deploy import build_app

    args = {str(k): str(v) for k, v in dict(args).items()}
    path = args.pop("config", None)
    if not path:
        raise ConfigError("the application builder needs the config file: pass `config=path/to/config.yaml` "
                          "(serve run raymlops.serve:app config=...; RayService: args: {config: ...})")
    env = args.pop("env", None)
    unknown = sorted(k for k in args if "." not in k)
    if unknown:
        raise ConfigError(f"unknown builder argument(s) {unknown}; give config=PATH, env=NAME, or config overrides "
                          "with a dotted key such as serving.num_replicas=2")
    cfg = load_config(path, [f"{k}={v}" for k, v in args.items()], env=env)
    # Serve was started by `serve run` or KubeRay, not by raymlops: with `auto` the replicas inherit its ingress.
    return build_app(cfg, ingress="proxy" if cfg.serving.ingress == "auto" else cfg.serving.ingress)


class _Package(types.ModuleType):
    """This package, keeping ``app`` the builder: importing the submodule ``raymlops.serve.app`` would otherwise
    rebind the name to that module (import the module with ``from raymlops.serve.app import ...``)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "app" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
