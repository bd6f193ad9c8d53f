"""Two replicas behind the one ingress URL (Serve's HAProxy by default): both answer, a routing key gets the same
version on either replica, ``status`` shows the replicas, HAProxy opens no stats page; and the Serve application
builder (``raymlops.serve:app``) builds the same app from a config file."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import stat
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from raymlops.core.routing import RoutingTable, pick_version
from raymlops.serve import app as build_from_args
from raymlops.serve.deploy import DEPLOYMENT_NAME, deploy, status, undeploy
from tests.serving_helpers import instances, register_versions, serving_config

pytestmark = pytest.mark.slow

_OVERRIDES = ("serving.num_replicas=2", "serving.challenger_weight_pct=10", "serving.num_cpus=0.1")


@pytest.fixture(scope="module")
def two(ray_session, _mlflow_template, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-replicas")
    shutil.copy(_mlflow_template, root / "mlflow.db")
    cfg = serving_config(root, f"sqlite:///{root / 'mlflow.db'}", *_OVERRIDES)
    register_versions(cfg, root, n=2)
    info = deploy(cfg)
    yield SimpleNamespace(cfg=cfg, info=info, root=root)
    undeploy(cfg)


def _model_info(url: str) -> dict:
    return httpx.get(f"{url}/v1/models/churn", timeout=30).json()


def test_one_url_balances_over_both_replicas(two):
    assert two.info.ingress == "haproxy"  # the default where ray[serve]'s HAProxy binary is installed
    assert len(two.info.direct_urls) == 2  # the replicas' own ports, behind the one URL
    before = {u: _model_info(u) for u in two.info.direct_urls}
    assert len({d["replica"]["id"] for d in before.values()}) == 2

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            rs = await asyncio.gather(*(client.post(two.info.predict_url, json={"instances": instances(1, seed=i)},
                                                    headers={"X-Routing-Key": f"k{i}"}) for i in range(60)))
        return [r.status_code for r in rs]

    def served(d: dict) -> int:
        return sum(v["requests"] for v in d["versions"])

    # HAProxy learns of a new replica a moment after Serve reports it running (a reload, then its health
    # checks): bursts until both replicas have answered some, each request answered exactly once.
    sent, grown = 0, [0, 0]
    while sent < 600 and min(grown) == 0:
        assert set(asyncio.run(burst())) == {200}
        sent += 60
        grown = [served(_model_info(u)) - served(before[u]) for u in two.info.direct_urls]
        assert sum(grown) == sent
    assert min(grown) > 0


def test_a_routing_key_gets_the_same_version_on_either_replica(two):
    # The split is decided in whichever replica answers, by a stable hash of the key: the pure pick is the answer.
    table = RoutingTable(two.info.weights, None, 0.0)
    keys = [f"customer-{i}" for i in range(200)]
    chosen = ([k for k in keys if pick_version(table, k, 0.0) == "2"][:3]
              + [k for k in keys if pick_version(table, k, 0.0) == "1"][:3])
    row = {"instances": instances(1, seed=5)}
    for key in chosen:
        served = {httpx.post(f"{url}/v1/models/churn:predict", json=row, headers={"X-Routing-Key": key},
                             timeout=30).headers["x-model-version"]
                  for url in [*two.info.direct_urls, two.info.url]}
        assert served == {pick_version(table, key, 0.0)}, key  # the same on both replicas and through the ingress


def test_status_shows_the_ingress_and_the_replicas(two):
    st = status(two.cfg)
    assert st["ingress"] == "haproxy" and st["url"] == two.info.url
    assert st["replicas"]["running"] == 2 and st["replicas"]["target"] == 2
    assert st["model"]["replica"]["configured_replicas"] == 2


def test_haproxy_keeps_its_files_private_opens_no_stats_page_and_answers_its_errors_in_json(two):
    import ray

    from raymlops.serve.ingress import haproxy_files_env

    base = Path(haproxy_files_env()["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]).parent
    cfg_file = base / ray.get_runtime_context().get_node_id() / "haproxy.cfg"
    text = cfg_file.read_text()
    # the frontend listens on the port the running Serve was started with (an earlier module's, in the suite)
    assert "frontend http_frontend" in text and f":{urlsplit(two.info.url).port}" in text
    assert "listen stats" not in text and "prometheus-exporter" not in text
    # the admin socket is mode 666: only a directory nobody else can enter keeps other local users off it
    assert stat.S_IMODE(base.stat().st_mode) == 0o700 and f"stats socket {base}/" in text
    head, body = Path(re.search(r"errorfile 503 (\S+)", text).group(1)).read_bytes().decode().split("\r\n\r\n", 1)
    assert head.startswith("HTTP/1.1 503") and "Retry-After: 1" in head and f"Content-Length: {len(body)}" in head
    assert json.loads(body)["error"]["code"] == "unavailable"


def test_the_serve_builder_builds_the_app_from_a_config_file(two, tmp_path):
    path = tmp_path / "serving.yaml"
    path.write_text(yaml.safe_dump({"storage_uri": two.cfg.storage_uri, "tracking_uri": two.cfg.tracking_uri,
                                    "serving": {"challenger_weight_pct": 10}}))
    built = build_from_args({"config": str(path), "serving.autoscaling.max_replicas": "3"})
    d = built._bound_deployment
    assert d.name == DEPLOYMENT_NAME and d._deployment_config.autoscaling_config.max_replicas == 3
    assert d.user_config["weights"] == {"1": 90.0, "2": 10.0}  # routed from the registry's aliases
    # The cluster's Serve decides the ingress: no ingress environment of ours on the replicas, only the callback
    # that makes Serve's own plain-text errors JSON should the replicas run an HTTP server.
    assert d.ray_actor_options["runtime_env"]["env_vars"] == {
        "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "raymlops.serve.json_errors.middlewares"}
    with pytest.raises(Exception, match="config=path/to/config.yaml"):
        build_from_args({})
    with pytest.raises(Exception, match="replicas"):
        build_from_args({"config": str(path), "replicas": "2"})
