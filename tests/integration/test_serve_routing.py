"""Traffic splitting over real HTTP: the weighted split, sticky keys, live weight changes under load, shadow.

One app for the module; every routing change is a live ``set_weights`` (a Serve reconfigure), so the module also
proves that the replica never restarts while its routing changes.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import httpx
import pyarrow as pa
import pytest

from raymlops.core.routing import RoutingTable, pick_version
from raymlops.errors import ServingError
from raymlops.model.package import load_package
from raymlops.registry.models import ModelRegistry
from raymlops.serve.deploy import deploy, set_weights, undeploy
from raymlops.serve.predlog import read_log
from tests.serving_helpers import (
    build_package,
    hammer,
    instances,
    register_versions,
    serving_config,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app(ray_session, _mlflow_template, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-routing")
    shutil.copy(_mlflow_template, root / "mlflow.db")
    cfg = serving_config(root, f"sqlite:///{root / 'mlflow.db'}", "serving.challenger_weight_pct=10")
    versions = register_versions(cfg, root, n=3)
    # Version 4 needs a feature the champion's schema does not have: as a shadow, every prediction of it fails.
    broken = build_package(cfg, root / "packages" / "v4", seed=4, extra_feature="loyalty_score")
    ModelRegistry(cfg.tracking_uri).register(cfg.name, broken.uri, run_id=None, digest=broken.digest, tags={},
                                             alias=None)
    info = deploy(cfg)
    client = httpx.Client(base_url=info.url, timeout=30)
    row = instances(1, seed=77)
    # What each version answers for `row`, computed outside Serve: a response proves which model served it.
    table = pa.Table.from_pylist(row)
    expected = {str(v.version): float(load_package(v.package_uri).predict(table)["probability"][0])
                for v in versions}
    assert len(set(expected.values())) == 3  # the versions really differ
    # Load goes to the replica's own port (direct ingress) when Serve runs with it: twice the proxy's throughput.
    base = (info.direct_urls or [info.url])[0]
    yield SimpleNamespace(cfg=cfg, info=info, client=client, root=root, row=row, expected=expected,
                          url=f"{base}/v1/models/churn:predict")
    client.close()
    undeploy(cfg)


def _info(app) -> dict:
    return app.client.get("/v1/models/churn").json()


def _probability(r: httpx.Response) -> float:
    return r.json()["predictions"][0]["probability"]


def test_deploy_puts_the_challenger_at_its_configured_weight(app):
    assert app.info.versions == {"1": "champion", "2": "canary"} and app.info.weights == {"1": 90.0, "2": 10.0}
    info = _info(app)
    assert [(v["version"], v["role"], v["weight"]) for v in info["versions"]] == [("1", "champion", 90.0),
                                                                                  ("2", "canary", 10.0)]


def test_a_90_10_split_over_5000_requests_lands_within_2_points(app):
    set_weights(app.cfg, {"1": 90, "2": 10})
    result = hammer(app.url, [{"instances": app.row}] * 5000, concurrency=16, extract=_probability)
    assert not result.failures and set(result.statuses) == {200}
    share = Counter(result.versions)["2"] / 5000 * 100
    assert 8.0 <= share <= 12.0, share
    # every answer came from the model its header names
    assert all(p == app.expected[v] for v, p in zip(result.versions, result.values, strict=True))


def test_sticky_keys_keep_their_version_and_a_rising_canary_only_gains_keys(app):
    keys = [f"user-{i}" for i in range(1000)]
    body = [{"instances": app.row}] * len(keys)

    def route(weights: dict[str, float]) -> list[str]:
        set_weights(app.cfg, weights)
        result = hammer(app.url, body, concurrency=16, headers=lambda i: {"X-Routing-Key": keys[i]})
        assert not result.failures and set(result.statuses) == {200}
        table = RoutingTable({k: float(v) for k, v in weights.items()})
        assert result.versions == [pick_version(table, k, 0.0) for k in keys]  # exactly the pure assignment
        return result.versions

    before = route({"1": 90, "2": 10})
    again = hammer(app.url, body, concurrency=16, headers=lambda i: {"X-Routing-Key": keys[i]}).versions
    assert again == before  # same key, same weights: same version
    after = route({"1": 70, "2": 30})
    moved = Counter((a, b) for a, b in zip(before, after, strict=True) if a != b)
    assert set(moved) == {("1", "2")}  # keys only move toward the canary, never away from it
    assert 25 <= after.count("2") / 10 <= 35


def test_live_weight_changes_under_load_fail_no_request_and_restart_no_replica(app):
    set_weights(app.cfg, {"1": 90, "2": 10})
    before = _info(app)
    load = _Load(app.url, {"instances": app.row})
    load.start()
    try:
        wait_for(lambda: len(load.statuses) > 50, what="load to start")
        for weights in ({"1": 50, "2": 50}, {"1": 20, "3": 80}, {"3": 100}, {"1": 100}):
            seen = len(load.statuses)
            info = set_weights(app.cfg, weights)
            assert info.weights == {k: float(v) for k, v in weights.items()}
            wait_for(lambda s=seen: len(load.statuses) > s + 50, what="requests after the change")
    finally:
        load.stop()
    assert not load.failures and set(load.statuses) == {200}, (load.failures[:3], Counter(load.statuses))
    assert {"1", "2", "3"} <= set(load.versions)  # version 3 was loaded live and served
    after = _info(app)
    assert after["replica"] == before["replica"]  # same replica id, same pid: reconfigured, not restarted
    assert after["generation"] == before["generation"] + 4
    assert after["weights"] == {"1": 100.0} and [v["version"] for v in after["versions"]] == ["1"]
    tail = hammer(app.url, [{"instances": app.row}] * 50, concurrency=8).versions
    assert set(tail) == {"1"}


def test_shadow_traffic_is_logged_and_never_returned(app):
    set_weights(app.cfg, {"1": 100}, shadow="2", shadow_pct=100)
    responses = [app.client.post("/v1/models/churn:predict", json={"instances": app.row}) for _ in range(20)]
    assert all(r.status_code == 200 and r.headers["x-model-version"] == "1" for r in responses)
    assert {_probability(r) for r in responses} == {app.expected["1"]}  # never the shadow's answer
    ids = {r.json()["request_id"] for r in responses}
    wait_for(lambda: _shadow_stats(app, "2")["shadow_requests"] >= 20, what="shadow predictions")
    set_weights(app.cfg, {"1": 100})  # drains the prediction log
    log = [r for r in read_log(str(Path(app.cfg.storage_uri) / "predictions" / "churn")).to_pylist()
           if r["request_id"] in ids]
    by_role = Counter((r["role"], r["model_version"]) for r in log)
    assert by_role == {("primary", "1"): 20, ("shadow", "2"): 20}
    shadow_p = {json.loads(r["outputs"])["probability"] for r in log if r["role"] == "shadow"}
    assert shadow_p == {app.expected["2"]}


def test_a_failing_shadow_is_counted_and_never_affects_the_client(app):
    set_weights(app.cfg, {"1": 100}, shadow="4", shadow_pct=100)
    assert _info(app)["shadow"] == {"version": "4", "pct": 100.0}
    statuses = [app.client.post("/v1/models/churn:predict", json={"instances": app.row}).status_code
                for _ in range(10)]
    assert statuses == [200] * 10
    wait_for(lambda: _shadow_stats(app, "4")["shadow_errors"] >= 10, what="shadow failures to be counted")
    info = _info(app)
    assert info["internal_errors"] == 0 and _shadow_stats(app, "4")["errors"] == 0
    set_weights(app.cfg, {"1": 100})


def test_bad_weights_are_refused_and_leave_the_routing_alone(app):
    set_weights(app.cfg, {"1": 90, "2": 10})
    for weights, match in [({"1": 90, "2": 20}, "sum to 110"), ({"1": 90, "9": 10}, "cannot route"),
                           ({"1": -10, "2": 110}, "finite and >= 0"), ({"1": 0}, "every weight is 0")]:
        with pytest.raises(ServingError, match=match):
            set_weights(app.cfg, weights)
    with pytest.raises(ServingError, match="shadow and also has weight"):
        set_weights(app.cfg, {"1": 90, "2": 10}, shadow="2", shadow_pct=5)
    assert _info(app)["weights"] == {"1": 90.0, "2": 10.0}


# ------------------------------------------------------------------------------------------------ helpers
def _shadow_stats(app, version: str) -> dict:
    return next(v for v in _info(app)["versions"] if v["version"] == version)


class _Load:
    """Continuous requests from a background thread (8 in flight) until stopped."""

    def __init__(self, url: str, body: dict, concurrency: int = 8):
        self.url, self.body, self.concurrency = url, body, concurrency
        self.statuses: list[int] = []
        self.versions: list[str | None] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    async def _main(self) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            await asyncio.gather(*(self._worker(client) for _ in range(self.concurrency)))

    async def _worker(self, client: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            try:
                r = await client.post(self.url, json=self.body)
            except httpx.HTTPError as err:
                self.failures.append(f"{type(err).__name__}: {err}")
                continue
            self.statuses.append(r.status_code)
            self.versions.append(r.headers.get("x-model-version"))
