"""Operator commands on a model's rollout: who carries them out, the running controller or the registry.

While a controller of the config runs it owns the aliases and the serving split, so promote and rollback go
through it (and the split follows); without one they move the registry's aliases directly. Commands that would
set the split behind its back (``deploy``, ``serve weights``, ``undeploy``) are refused while it runs
(``ensure_no_controller``), with the controller command to use instead. A controller is known to run when its
actor is on the cluster, or when its lease is live (a controller on another cluster sharing the storage). The CLI
and the Python API both call these functions.
"""

from __future__ import annotations

import time
from typing import Any

from raymlops._ray import cluster_address, connect_cluster
from raymlops.config import Config
from raymlops.control.statefile import LeaseInfo, read_lease
from raymlops.errors import ControllerError

__all__ = ["command", "controller_running", "ensure_no_controller", "events", "lease_holder", "promote", "rollback"]

# What to run instead of a traffic command while a controller owns the split.
INSTEAD = ("`raymlops promote CONFIG VERSION`, `raymlops rollback CONFIG` and `raymlops approve CONFIG` go through "
           "the controller; `raymlops controller pause CONFIG` holds the split as it is; or stop the controller with "
           "`raymlops controller stop CONFIG` first")


def lease_holder(cfg: Config) -> LeaseInfo | None:
    """The live lease of ``cfg``'s controller (read from storage, no Ray), or None when no controller holds one."""
    held = read_lease(cfg)
    return held if held is not None and held.live(time.time()) else None


def controller_running(cfg: Config, address: str | None = None) -> bool:
    """Whether a controller of ``cfg`` runs on the cluster at ``address``/the environment's/$RAY_ADDRESS.

    With no cluster address at all there is no detached controller to ask: False, and nothing is started.
    """
    if not cluster_address(cfg, address):
        return False
    from raymlops.control.actor import get_controller

    connect_cluster(cfg, address)
    return get_controller(cfg) is not None


def ensure_no_controller(cfg: Config, what: str, address: str | None = None) -> None:
    """Refuse ``what`` (a command that sets the serving split) while a controller of ``cfg`` runs.

    ``ControllerError`` names the controller and the commands to use instead: the controller re-asserts its own
    split, so a change behind its back would be undone, or would undo a rollback.
    """
    held = lease_holder(cfg)
    if held is None and not controller_running(cfg, address):
        return
    who = held.holder if held is not None else "on this cluster"
    raise ControllerError(f"{what} refused: the controller of {cfg.name!r} is running ({who}) and owns the serving "
                          f"split; {INSTEAD}")


def _elsewhere(cfg: Config, what: str) -> None:
    # A live lease but no actor on this cluster: the controller runs on another cluster sharing the storage.
    held = lease_holder(cfg)
    if held is not None:
        raise ControllerError(f"{what} refused: the controller of {cfg.name!r} runs on another cluster ({held.holder}) "
                              "and owns the aliases and the split; run the command against its cluster "
                              "(--address or RAY_ADDRESS)")


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
    _elsewhere(cfg, "promote")
    info = reg.promote(cfg.name, resolved)
    return f"{cfg.name} v{info.version} is the champion; aliases: {reg.aliases(cfg.name)}"


def rollback(cfg: Config, *, request_id: str | None = None, address: str | None = None) -> str:
    """Roll back the canary in progress (through the controller), else bring the ``previous`` champion back."""
    from raymlops.registry.models import ModelRegistry

    if controller_running(cfg, address):
        return command(cfg, "rollback", request_id=request_id, address=address)
    _elsewhere(cfg, "rollback")
    reg = ModelRegistry(cfg.tracking_uri)
    info = reg.rollback(cfg.name)
    return f"rolled back: {cfg.name} v{info.version} is the champion; aliases: {reg.aliases(cfg.name)}"


def events(cfg: Config, since: int = 0) -> list[dict[str, Any]] | None:
    """The controller's events after ``since`` from its saved state (no Ray needed); None when none has run."""
    from raymlops.control.statefile import read_saved

    saved = read_saved(cfg)
    return None if saved is None else [e for e in saved.events if e["seq"] > since]
