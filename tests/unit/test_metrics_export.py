"""The Prometheus gauges' values (pure), and the shipped Grafana dashboard only queries metrics the code exports,
by the labels they carry. The integration test (tests/integration/test_metrics_scrape.py) scrapes the real
endpoint and checks the Ray naming rules used here."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from raymlops.control.canary import RolloutState
from raymlops.control.gauges import GAUGES, controller_samples
from raymlops.control.state import ControllerState
from raymlops.core.drift import DriftResult
from raymlops.core.live import VersionHealth
from raymlops.serve.app import _Metrics
from raymlops.serve.gauges import GaugeSampler

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "raymlops.json"
RAY_LABELS = {"WorkerId", "NodeAddress", "SessionName", "Component", "Version", "instance", "job", "le"}


def exported() -> dict[str, set[str]]:
    """Every Prometheus series name the code exports, with its labels (Ray: ``ray_`` prefix; a counter is
    ``_total``; a histogram ``_bucket`` (+ ``le``), ``_sum``, ``_count``)."""
    out: dict[str, set[str]] = {}
    for name, (_, keys) in {**GAUGES, **_Metrics.GAUGES}.items():
        out[f"ray_{name}"] = set(keys)
    out["ray_raymlops_serve_requests_total"] = {"model", "version", "status"}
    out["ray_raymlops_serve_errors_total"] = {"model", "version", "code"}
    assert set(_Metrics.COUNTERS) == {"raymlops_serve_requests", "raymlops_serve_errors"}
    for name in _Metrics.HISTOGRAMS:
        for suffix in ("_bucket", "_sum", "_count"):
            out[f"ray_{name}{suffix}"] = {"model", "version"} | ({"le"} if suffix == "_bucket" else set())
    return out


def monitor_pass() -> dict:
    drift = [DriftResult("monthly_charges", "psi", 0.31, 0.2, True), DriftResult("plan", "linf", None, 0.1, False)]
    v = {"1": VersionHealth("1", "champion", 10, 0, 0.0, 2.0, 5.0, 10, 7, "roc_auc", 0.81, 0.8,
                            [d.to_dict() for d in drift], ["monthly_charges"], ""),
         "2": VersionHealth("2", "canary", 3, 1, 33.3, 2.0, 5.0, 3, 0, "roc_auc", None, None, [], [], "too few")}
    return {"at": 1_780_000_000.0, "versions": {k: h.to_dict() for k, h in v.items()}}


def test_controller_samples_say_phase_split_versions_drift_and_quality():
    state = ControllerState(champion="1")
    state.rollout = RolloutState.start("2", "1", [10.0, 50.0, 100.0], now=0.0)
    samples = controller_samples("churn", state, monitor_pass())
    by = {(n, tuple(sorted(t.items()))): v for n, t, v in samples}

    def get(name, **tags):
        return by[(name, tuple(sorted({"model": "churn", **tags}.items())))]

    assert get("raymlops_controller_phase", phase="canary") == 1.0
    assert get("raymlops_controller_phase", phase="idle") == 0.0 == get("raymlops_controller_phase", phase="promoting")
    assert get("raymlops_controller_weight_pct", version="2") == 10.0
    assert get("raymlops_controller_weight_pct", version="1") == 90.0
    assert get("raymlops_controller_version", role="champion") == 1.0 == get("raymlops_controller_version", role="canary") - 1
    tags = {"version": "1", "role": "champion", "feature": "monthly_charges", "metric": "psi"}
    assert get("raymlops_monitor_drift", **tags) == 0.31 and get("raymlops_monitor_drift_threshold", **tags) == 0.2
    assert get("raymlops_monitor_quality", version="1", role="champion", metric="roc_auc") == 0.81
    assert get("raymlops_monitor_labels", version="2", role="canary") == 0.0
    assert get("raymlops_monitor_last_pass_timestamp_s") == 1_780_000_000.0
    names = {n for n, _, _ in samples}
    assert not any(n == "raymlops_monitor_drift" and t["feature"] == "plan" for n, t, _ in samples)  # no value
    assert not any(n == "raymlops_monitor_quality" and t["version"] == "2" for n, t, _ in samples)  # no labels yet
    for name, tags, _ in samples:  # every sample fits its gauge's declared labels
        assert set(tags) == set(GAUGES[name][1]), name
    assert names == set(GAUGES)

    idle = controller_samples("churn", ControllerState(champion="1"), None)
    assert ("raymlops_controller_version", {"model": "churn", "role": "canary"}) not in [(n, t) for n, t, _ in idle]
    assert {n for n, _, _ in idle} == {"raymlops_controller_phase", "raymlops_controller_weight_pct",
                                        "raymlops_controller_version"}


def test_the_sampler_does_nothing_without_ray(monkeypatch):
    monkeypatch.delitem(sys.modules, "ray", raising=False)  # as in a process that never imported Ray
    calls = []
    sampler = GaugeSampler(GAUGES, lambda: calls.append(1) or []).start()
    assert sampler.record() == 0 and calls == [] and sampler._thread is None


def _queries(panels: list[dict]) -> list[str]:
    out = []
    for p in panels:
        out += [t["expr"] for t in p.get("targets", [])]
        out += _queries(p.get("panels", []))
    return out


def test_the_grafana_dashboard_queries_only_exported_metrics_by_their_labels():
    doc = json.loads(DASHBOARD.read_text())
    metrics = exported()
    queries = _queries(doc["panels"]) + [doc["templating"]["list"][1]["definition"]]
    used = set()
    for q in queries:
        names = re.findall(r"\bray_raymlops_\w+", q)
        assert names, q
        for name in names:
            assert name in metrics, f"{name} (in {q!r}) is not exported; exported: {sorted(metrics)}"
            used.add(name)
            for selector in re.findall(rf"{name}\{{([^}}]*)\}}", q):
                keys = set(re.findall(r"(\w+)\s*=~?", selector))
                assert keys <= metrics[name], f"{name} has no label {keys - metrics[name]} (in {q!r})"
        for group in re.findall(r"by \(([^)]*)\)", q):
            keys = {k.strip() for k in group.split(",")}
            assert all(keys <= metrics[n] | RAY_LABELS for n in names), f"grouping by {keys} in {q!r}"
    titles = " ".join(p["title"].lower() for p in doc["panels"])
    for panel in ("requests per second", "error rate", "p99", "weights", "drift", "quality", "canary phase",
                  "prediction log"):
        assert panel in titles, panel
    # Every gauge the controller or the replicas export is on the dashboard.
    assert {f"ray_{n}" for n in {**GAUGES, **_Metrics.GAUGES}} <= used


@pytest.mark.parametrize("bad", ["ray_raymlops_serve_weight", "ray_raymlops_monitor_drift{feature_name=\"x\"}"])
def test_the_dashboard_check_catches_a_wrong_name_or_label(bad):
    metrics = exported()
    name = re.findall(r"\bray_raymlops_\w+", bad)[0]
    selector = re.findall(r"\{([^}]*)\}", bad)
    assert name not in metrics or not set(re.findall(r"(\w+)\s*=", selector[0])) <= metrics[name]
