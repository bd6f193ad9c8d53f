"""The controller's Prometheus gauges: canary phase, intended split, and the last monitor pass (drift per feature,
online quality per version).

Exported from the controller actor (``start_controller_gauges``), the one long-lived process that holds both the
state and the monitor's passes: a monitor pass runs as a short Ray task, whose worker would keep reporting a
stale pass beside the next one's. ``controller_samples`` is the pure part (no Ray). The serving replicas export
the live weights, request counters, latency and the prediction log's counters (``raymlops.serve.app._Metrics``);
where to scrape is in ``raymlops.serve.gauges``. Every name below reaches Prometheus with Ray's ``ray_`` prefix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from raymlops.control.canary import PHASES
from raymlops.control.state import ControllerState
from raymlops.serve.gauges import GaugeSampler, Sample

__all__ = ["GAUGES", "controller_samples", "start_controller_gauges"]

GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "raymlops_controller_phase": ("1 for the rollout phase the controller is in, 0 for the others.",
                                  ("model", "phase")),
    "raymlops_controller_weight_pct": ("Traffic split the controller's state calls for (percent per version).",
                                       ("model", "version")),
    "raymlops_controller_version": ("Version number of the champion and of the canary in rollout.",
                                    ("model", "role")),
    "raymlops_monitor_drift": ("Live input drift of a feature against the version's training reference (the "
                               "feature's drift metric, e.g. psi).", ("model", "version", "role", "feature", "metric")),
    "raymlops_monitor_drift_threshold": ("Threshold of that drift metric (drifted above it).",
                                         ("model", "version", "role", "feature", "metric")),
    "raymlops_monitor_quality": ("Online quality of a version on joined feedback labels (evaluation's primary "
                                 "metric).", ("model", "version", "role", "metric")),
    "raymlops_monitor_labels": ("Feedback labels joined to a version's predictions in the monitor window.",
                                ("model", "version", "role")),
    "raymlops_monitor_last_pass_timestamp_s": ("When the last monitor pass ran (Unix seconds).", ("model",)),
}


def _number(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def controller_samples(model: str, state: ControllerState, monitor: Mapping[str, Any] | None) -> list[Sample]:
    """The gauges' values for a controller ``state`` and its last monitor pass (``MonitorResult.to_dict()``)."""
    out: list[Sample] = []
    phase = state.rollout.phase
    for p in dict.fromkeys([*PHASES, phase]):
        out.append(("raymlops_controller_phase", {"model": model, "phase": p}, 1.0 if p == phase else 0.0))
    for version, weight in state.weights().items():
        out.append(("raymlops_controller_weight_pct", {"model": model, "version": version}, weight))
    canary = state.rollout.canary_version if phase != "idle" else None
    for role, version in (("champion", state.champion), ("canary", canary)):
        if _number(version) is not None:
            out.append(("raymlops_controller_version", {"model": model, "role": role}, float(version)))
    if not monitor:
        return out
    if _number(monitor.get("at")) is not None:
        out.append(("raymlops_monitor_last_pass_timestamp_s", {"model": model}, float(monitor["at"])))
    for version, h in (monitor.get("versions") or {}).items():
        tags = {"model": model, "version": str(version), "role": str(h.get("role", ""))}
        quality = _number(h.get("quality"))
        if quality is not None:
            out.append(("raymlops_monitor_quality", {**tags, "metric": str(h.get("quality_metric", ""))}, quality))
        out.append(("raymlops_monitor_labels", tags, float(h.get("labels") or 0)))
        for d in h.get("drift") or []:
            drift_tags = {**tags, "feature": str(d.get("feature")), "metric": str(d.get("metric"))}
            for name, key in (("raymlops_monitor_drift", "value"), ("raymlops_monitor_drift_threshold", "threshold")):
                if _number(d.get(key)) is not None:
                    out.append((name, drift_tags, float(d[key])))
    return out


def start_controller_gauges(model: str, controller: Any) -> GaugeSampler:
    """Export ``controller_samples`` of a running ``Controller`` until the process ends (a no-op without Ray)."""

    def sample() -> list[Sample]:
        history = controller.monitor_history
        return controller_samples(model, controller.state, history[-1] if history else None)

    return GaugeSampler(GAUGES, sample, name=f"raymlops-controller-gauges-{model}").start()
