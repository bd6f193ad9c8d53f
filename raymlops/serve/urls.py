"""The serving URLs: the one owner of how an app's address, route prefix and model routes are spelled.

Pure (no Ray): ``raymlops status``, the pre-exposure tests, the demo's clients and ``deploy`` all build their
URLs here, so a change of route reaches every caller.
"""

from __future__ import annotations

from typing import Any

__all__ = ["base_url", "feedback_url", "model_url", "predict_url", "route_prefix", "shown_host", "version_predict_url"]

_ANY_HOST = ("0.0.0.0", "::")


def route_prefix(cfg: Any) -> str:
    """``serving.route_prefix`` normalised to one leading slash and no trailing one ("/" stays "/")."""
    return "/" + cfg.serving.route_prefix.strip("/")


def shown_host(host: str) -> str:
    """The host a client on this machine dials: a server bound to every interface is reached on loopback."""
    return "127.0.0.1" if host in _ANY_HOST else host


def base_url(cfg: Any, host: str | None = None, port: int | None = None) -> str:
    """``http://host:port{prefix}`` of the app (default: ``serving.host``/``serving.port``), no trailing slash."""
    host = shown_host(host or cfg.serving.host)
    return f"http://{host}:{port or cfg.serving.port}{route_prefix(cfg).rstrip('/')}"


def model_url(base: str, model: str) -> str:
    """``GET`` here for the model's info (versions, weights, rollout, counters)."""
    return f"{base}/v1/models/{model}"


def predict_url(base: str, model: str) -> str:
    """``POST`` instances here."""
    return f"{model_url(base, model)}:predict"


def version_predict_url(base: str, model: str, version: str) -> str:
    """``POST`` instances here for ``version`` itself, whatever the split (a pinned request)."""
    return f"{model_url(base, model)}/versions/{version}:predict"


def feedback_url(base: str, model: str) -> str:
    """``POST`` labels for an issued request id here."""
    return f"{model_url(base, model)}:feedback"
