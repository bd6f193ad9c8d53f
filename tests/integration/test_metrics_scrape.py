"""Prometheus export for real: a deployed app and the controller's gauges, scraped over HTTP from the Ray node's
metrics endpoint and parsed with prometheus_client's own parser."""

from __future__ import annotations

import shutil
import time
import urllib.request
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from raymlops.control.canary import RolloutState
from raymlops.control.gauges import start_controller_gauges
from raymlops.control.state import ControllerState
from raymlops.core.drift import DriftResult
from raymlops.core.live import VersionHealth
from raymlops.serve.deploy import deploy, set_weights, undeploy
from tests.serving_helpers import instances, register_versions, serving_config

pytestmark = pytest.mark.slow

EXPECTED = ("ray_raymlops_serve_requests", "ray_raymlops_serve_errors", "ray_raymlops_serve_latency_ms",
            "ray_raymlops_serve_weight_pct", "ray_raymlops_serve_log", "ray_raymlops_controller_phase",
            "ray_raymlops_controller_weight_pct", "ray_raymlops_monitor_drift", "ray_raymlops_monitor_quality")


def _scrape(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {f.name: f for f in text_string_to_metric_families(text) if f.name.startswith("ray_raymlops_")}


def _series(family) -> list[tuple[str, dict, float]]:
    return [(s.name, s.labels, s.value) for s in family.samples]


@pytest.fixture(scope="module")
def scraped(ray_session, _mlflow_template, tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics")
    shutil.copy(_mlflow_template, root / "mlflow.db")
    cfg = serving_config(root, f"sqlite:///{root / 'mlflow.db'}")
    register_versions(cfg, root)
    info = deploy(cfg)
    set_weights(cfg, {"1": 80.0, "2": 20.0})
    with httpx.Client(base_url=info.url, timeout=30) as client:
        for _ in range(6):
            assert client.post("/v1/models/churn:predict", json={"instances": instances(2)}).status_code == 200
        assert client.post("/v1/models/churn:predict", json={"instances": []}).status_code == 422
    # The controller's gauges, from a Controller-shaped object in this process (the actor does the same).
    state = ControllerState(champion="1")
    state.rollout = RolloutState.start("2", "1", [20.0, 100.0], now=0.0)
    health = VersionHealth("1", "champion", 10, 0, 0.0, 2.0, 5.0, 10, 7, "roc_auc", 0.81, 0.8,
                           [DriftResult("monthly_charges", "psi", 0.31, 0.2, True).to_dict()], ["monthly_charges"], "")
    ctl = SimpleNamespace(state=state, monitor_history=[{"at": time.time(), "versions": {"1": health.to_dict()}}])
    sampler = start_controller_gauges("churn", ctl)
    port = next(n["MetricsExportPort"] for n in ray_session.nodes() if n["Alive"])
    deadline, families = time.monotonic() + 60, {}
    try:
        while time.monotonic() < deadline:  # exported every RAY_metrics_report_interval_ms (tests/conftest.py)
            families = _scrape(port)
            if all(name in families for name in EXPECTED):
                break
            time.sleep(0.5)
        # Gauges stay exported after several report intervals (the sampler re-records them).
        time.sleep(6)  # past the agent's 2-interval TTL (4 s here) for a value recorded only once
        later = _scrape(port)
    finally:
        sampler.stop()
        undeploy(cfg)
    return families, later


def test_serving_counters_latency_weights_and_log_counters_are_scraped(scraped):
    families, _ = scraped
    missing = [n for n in EXPECTED if n not in families]
    assert not missing, f"not exported: {missing}; got {sorted(families)}"
    requests = _series(families["ray_raymlops_serve_requests"])
    assert {s[0] for s in requests} == {"ray_raymlops_serve_requests_total"}  # a counter: the _total the dashboard uses
    ok = sum(v for _, labels, v in requests if labels["model"] == "churn" and labels["status"] == "200")
    # at least our 6: replicas of earlier apps named churn in this Ray session may still export their counts
    assert ok >= 6 and all({"model", "version", "status", "WorkerId"} <= labels.keys() for _, labels, _ in requests)
    assert any(labels["code"] for _, labels, _ in _series(families["ray_raymlops_serve_errors"]))
    latency = {name for name, _, _ in _series(families["ray_raymlops_serve_latency_ms"])}
    assert {"ray_raymlops_serve_latency_ms_bucket", "ray_raymlops_serve_latency_ms_count"} <= latency
    assert families["ray_raymlops_serve_weight_pct"].type == "gauge"
    weights = {labels["version"]: v for _, labels, v in _series(families["ray_raymlops_serve_weight_pct"])}
    assert weights == {"1": 80.0, "2": 20.0}
    counters = {(labels["log"], labels["counter"]) for _, labels, _ in _series(families["ray_raymlops_serve_log"])}
    assert {("predictions", "lost"), ("predictions", "dropped"), ("feedback", "lost")} <= counters


def test_controller_phase_weights_drift_and_quality_are_scraped_and_stay(scraped):
    families, later = scraped
    phases = {labels["phase"]: v for _, labels, v in _series(families["ray_raymlops_controller_phase"])}
    assert phases["canary"] == 1.0 and phases["idle"] == 0.0
    split = {labels["version"]: v for _, labels, v in _series(families["ray_raymlops_controller_weight_pct"])}
    assert split == {"1": 80.0, "2": 20.0}
    (drift,) = _series(families["ray_raymlops_monitor_drift"])
    assert drift[2] == 0.31 and {"model": "churn", "version": "1", "role": "champion", "feature": "monthly_charges",
                                 "metric": "psi"}.items() <= drift[1].items()
    (quality,) = _series(families["ray_raymlops_monitor_quality"])
    assert quality[2] == 0.81 and quality[1]["metric"] == "roc_auc"
    for name in ("ray_raymlops_serve_weight_pct", "ray_raymlops_controller_phase", "ray_raymlops_monitor_drift"):
        assert name in later, f"{name} aged out of the scrape (gauges must be re-recorded every interval)"
