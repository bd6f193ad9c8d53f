"""Operator commands on a model's rollout: who carries them out, the running controller or the registry.

While a controller of the config runs it owns the aliases and the serving split, so promote and rollback go
through it (and the split follows); without one they move the registry's aliases directly. Commands that would
set the split behind its back (``deploy``, ``serve weights``, ``undeploy``) are refused while it runs
(``ensure_no_controller``), with the controller command to use instead. A controller is known to run when its
actor is on the cluster, or when its lease is live (a controller on another cluster sharing the storage). The CLI
and the Python API both call these functions.

Every command records who acted (``operator``: the CLI's ``--as``, else the OS user): on the controller's events,
or, without a controller, as a tag on the model version whose alias moved.
"""

from __future__ import annotations

import datetime as dt
import getpass
import time
from typing import Any

from raymlops._ray import cluster_address, connect_cluster
from raymlops.config import Config
from raymlops.control.statefile import LeaseInfo, read_lease
from raymlops.errors import ControllerError

__all__ = ["command", "controller_running", "ensure_no_controller", "events", "lease_holder", "operator_name",
           "promote", "rollback", "trigger"]

OPERATOR_TAG = "raymlops.operator"  # version tag prefix: who moved an alias without a controller, and when

# What to run instead of a traffic command while a controller owns the split.
INSTEAD = ("`raymlops promote CONFIG VERSION`, `raymlops rollback CONFIG` and `raymlops approve CONFIG` go through "
           "the controller; `raymlops controller pause CONFIG` holds the split as it is; or stop the controller with "
           "`raymlops controller stop CONFIG` first")


def operator_name(operator: str | None = None) -> str:
    """Who is acting: ``operator`` when given (``--as``), else the OS user, else "unknown" (never fails)."""
    if operator:
        return operator
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name for this uid (a container): a command must not fail for it
        return "unknown"


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
            address: str | None = None, operator: str | None = None) -> str:
    """Send an operator command (promote, rollback, pause, resume, approve) to the running controller.

    Returns what it did; raises ``ControllerError`` when the controller refused it (the message says why).
    ``operator`` (default: the OS user) is recorded on every event the command logs.
    """
    from raymlops.control.actor import call

    connect_cluster(cfg, address)
    entry = call(cfg, "command", name, request_id, version, operator_name(operator))
    if entry is None:
        return f"{name}: nothing to do"
    if entry["kind"] == "rejected":
        raise ControllerError(entry["message"])
    return f"{entry['kind']}: {entry['message']}"


def trigger(cfg: Config, *, request_id: str | None = None, address: str | None = None,
            operator: str | None = None) -> str:
    """Ask the running controller for a pipeline run (honoured once per ``request_id``); returns the request id.

    ``operator`` (default: the OS user) is recorded as a ``trigger_requested`` event.
    """
    from raymlops.control.actor import call

    connect_cluster(cfg, address)
    return call(cfg, "trigger", request_id, operator_name(operator))


def _record(reg: Any, cfg: Config, version: int | str, what: str, operator: str) -> None:
    # Without a controller there is no event log: the version's tags keep who moved the alias, beside the
    # controller's decisions (raymlops.decision.*) in the version's lineage.
    now = dt.datetime.now(dt.timezone.utc)
    reg.tag_version(cfg.name, version, f"{OPERATOR_TAG}.{now.strftime('%Y%m%dT%H%M%S%f')}",
                    f"{now.isoformat(timespec='seconds')} {what} by {operator}")


def promote(cfg: Config, version: str, *, request_id: str | None = None, address: str | None = None,
            operator: str | None = None) -> str:
    """Make ``version`` (number or alias) the champion; the old one is kept as ``previous`` for rollback.

    ``operator`` (default: the OS user) is recorded on the controller's events, or on the version's tags.
    """
    from raymlops.registry.models import ModelRegistry

    who = operator_name(operator)
    reg = ModelRegistry(cfg.tracking_uri)
    resolved = str(reg.resolve(cfg.name, version).version)
    if controller_running(cfg, address):
        return command(cfg, "promote", request_id=request_id, version=resolved, address=address, operator=who)
    _elsewhere(cfg, "promote")
    info = reg.promote(cfg.name, resolved)
    _record(reg, cfg, info.version, "promote", who)
    return f"{cfg.name} v{info.version} is the champion (promoted by {who}); aliases: {reg.aliases(cfg.name)}"


def rollback(cfg: Config, *, request_id: str | None = None, address: str | None = None,
             operator: str | None = None) -> str:
    """Roll back the canary in progress (through the controller), else bring the ``previous`` champion back.

    ``operator`` (default: the OS user) is recorded on the controller's events, or on the version's tags.
    """
    from raymlops.registry.models import ModelRegistry

    who = operator_name(operator)
    if controller_running(cfg, address):
        return command(cfg, "rollback", request_id=request_id, address=address, operator=who)
    _elsewhere(cfg, "rollback")
    reg = ModelRegistry(cfg.tracking_uri)
    info = reg.rollback(cfg.name)
    _record(reg, cfg, info.version, "rollback", who)
    return (f"rolled back by {who}: {cfg.name} v{info.version} is the champion; aliases: "
            f"{reg.aliases(cfg.name)}")


def events(cfg: Config, since: int = 0) -> list[dict[str, Any]] | None:
    """The controller's events after ``since`` from its saved state (no Ray needed); None when none has run."""
    from raymlops.control.statefile import read_saved

    saved = read_saved(cfg)
    return None if saved is None else [e for e in saved.events if e["seq"] > since]
