"""Operator commands on a model's rollout: who carries them out, the running controller or the registry.

While a controller of the config runs on the cluster it owns the aliases and the serving split, so promote and
rollback go through it (and the split follows); without one they move the registry's aliases directly. The CLI
and the Python API both call these functions.
"""

from __future__ import annotations

from typing import Any

from raymlops._ray import cluster_address, connect_cluster
from raymlops.config import Config
from raymlops.errors import ControllerError

__all__ = ["command", "controller_running", "events", "promote", "rollback"]


def controller_running(cfg: Config, address: str | None = None) -> bool:
    """Whether a controller of ``cfg`` runs on the cluster at ``address``/the environment's/$RAY_ADDRESS.

    With no cluster address at all there is no detached controller to ask: False, and nothing is started.
    """
    if not cluster_address(cfg, address):
        return False
    from raymlops.control.actor import get_controller

    connect_cluster(cfg, address)
    return get_controller(cfg) is not None


def command(cfg: Config, name: str, *, request_id: str | None = None, version: str | None = None,
            address: str | None = None) -> str:
    """Send an operator command (promote, rollback, pause, resume, approve) to the running controller.

    Returns what it did; raises ``ControllerError`` when the controller refused it (the message says why).
    """
    from raymlops.control.actor import call

    connect_cluster(cfg, address)
    entry = call(cfg, "command", name, request_id, version)
    if entry is None:
        return f"{name}: nothing to do"
    if entry["kind"] == "rejected":
        raise ControllerError(entry["message"])
    return f"{entry['kind']}: {entry['message']}"


def promote(cfg: Config, version: str, *, request_id: str | None = None, address: str | None = None) -> str:
    """Make ``version`` (number or alias) the champion; the old one is kept as ``previous`` for rollback."""
    from raymlops.registry.models import ModelRegistry

    reg = ModelRegistry(cfg.tracking_uri)
    resolved = str(reg.resolve(cfg.name, version).version)
    if controller_running(cfg, address):
        return command(cfg, "promote", request_id=request_id, version=resolved, address=address)
    info = reg.promote(cfg.name, resolved)
    return f"{cfg.name} v{info.version} is the champion; aliases: {reg.aliases(cfg.name)}"


def rollback(cfg: Config, *, request_id: str | None = None, address: str | None = None) -> str:
    """Roll back the canary in progress (through the controller), else bring the ``previous`` champion back."""
    from raymlops.registry.models import ModelRegistry

    if controller_running(cfg, address):
        return command(cfg, "rollback", request_id=request_id, address=address)
    reg = ModelRegistry(cfg.tracking_uri)
    info = reg.rollback(cfg.name)
    return f"rolled back: {cfg.name} v{info.version} is the champion; aliases: {reg.aliases(cfg.name)}"


def events(cfg: Config, since: int = 0) -> list[dict[str, Any]] | None:
    """The controller's events after ``since`` from its saved state (no Ray needed); None when none has run."""
    from raymlops.control.statefile import read_saved

    saved = read_saved(cfg)
    return None if saved is None else [e for e in saved.events if e["seq"] > since]
