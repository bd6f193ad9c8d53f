"""Pre-exposure tests against a real local Serve over loopback HTTP, next to a live app they must not disturb.

The versions are registered outside a pipeline run (no lineage, so no test split): their expected inputs are the
champion's live inputs, written to the prediction log here as the live app would have.
"""

from __future__ import annotations

import shutil
import time
from types import SimpleNamespace

import httpx
import pytest

from raymlops.control.monitor import log_uris
from raymlops.control.preexposure import preview_config, run_pre_exposure
from raymlops.registry.models import ModelRegistry
from raymlops.serve.deploy import app_name, deploy, undeploy
from raymlops.serve.predlog import PREDICTION_SCHEMA, PredictionLog, read_log
from tests.serving_helpers import build_package, instances, register_versions, serving_config

pytestmark = pytest.mark.slow


def _write_live_inputs(cfg, version: str, n: int) -> None:
    log = PredictionLog(log_uris(cfg)[0], flush_rows=1000, flush_interval_s=60, buffer_rows=10_000,
                        writer_id="test-live")
    now = time.time()
    log.append([{"request_id": f"live-{i}", "row": 0, "ts": now - 60 + i, "model_version": version,
                 "role": "primary", "features": row, "outputs": {"probability": 0.5, "label": 0},
                 "latency_ms": 2.0, "status": "ok"} for i, row in enumerate(instances(n, seed=21))])
    log.close()


@pytest.fixture(scope="module")
def env(ray_session, _mlflow_template, tmp_path_factory):
    root = tmp_path_factory.mktemp("preexposure")
    shutil.copy(_mlflow_template, root / "mlflow.db")
    cfg = serving_config(
        root, f"sqlite:///{root / 'mlflow.db'}", "serving.max_body_bytes=65536",
        "pre_exposure.sample_rows=8", "pre_exposure.load_requests=40", "pre_exposure.load_concurrency=4",
        # The gate logic is unit-tested; here a generous limit keeps a noisy 2-core machine from deciding.
        "pre_exposure.max_p99_increase_pct=1000", "pre_exposure.timeout_s=120",
    )
    register_versions(cfg, root, n=2)  # 1 champion, 2 challenger
    # Version 3 needs a feature its clients do not send.
    broken = build_package(cfg, root / "packages" / "v3", seed=3, extra_feature="loyalty_score")
    ModelRegistry(cfg.tracking_uri).register(cfg.name, broken.uri, run_id=None, digest=broken.digest, tags={},
                                             alias=None)
    _write_live_inputs(cfg, "1", 12)
    live = deploy(cfg)
    client = httpx.Client(base_url=live.url, timeout=30)
    before = client.get(f"/v1/models/{cfg.name}").json()
    yield SimpleNamespace(cfg=cfg, live=live, client=client, before=before)
    client.close()
    undeploy(cfg)


def _with(cfg, **pre_exposure):
    out = cfg.model_copy(deep=True)
    for key, value in pre_exposure.items():
        setattr(out.pre_exposure, key, value)
    return out


def _check(result, name):
    return next(c for c in result.checks if c.name == name)


def _assert_preview_gone_and_live_untouched(env) -> None:
    from ray import serve

    apps = serve.status().applications
    assert app_name(preview_config(env.cfg)) not in apps and app_name(env.cfg) in apps
    now = env.client.get(f"/v1/models/{env.cfg.name}").json()
    assert now["replica"] == env.before["replica"] and now["revision"] == env.before["revision"]
    assert now["weights"] == {"1": 100.0}
    assert env.client.post(f"/v1/models/{env.cfg.name}:predict", json={"instances": instances(1)}).status_code == 200


def test_a_good_challenger_passes_all_three_checks_with_figures(env):
    result = run_pre_exposure(env.cfg, "2", champion="1")
    assert result.passed, result.reasons()
    assert [c.name for c in result.checks] == ["infrastructure", "contract", "load"]
    infra, contract, load = result.checks
    assert infra.figures["loads"] and infra.figures["peak_memory_mb"] > 0 and infra.figures["package_mb"] > 0
    assert contract.figures["expected_rows"] == 8 and "live inputs of champion 1" in contract.figures["inputs"]
    assert contract.figures["bad_input_cases"] >= 10 and contract.figures["problems"] == 0
    assert load.figures["requests"] == 40 and load.figures["errors"] == 0 and load.figures["qps"] > 0
    assert 0 < load.figures["p50_ms"] <= load.figures["p99_ms"]
    assert load.figures["champion_p99_ms"] > 0 and load.figures["champion"] == "1"
    assert "interleaved" in load.detail and load.figures["champion_qps"] > 0  # one load, both versions pinned
    # Each check says where its time went.
    assert all(c.figures["seconds"] > 0 for c in result.checks) and contract.figures["preview_deploy_s"] > 0
    _assert_preview_gone_and_live_untouched(env)
    # The preview's requests never reach the live prediction log (the canary analysis reads it).
    logged = read_log(log_uris(env.cfg)[0], PREDICTION_SCHEMA)
    assert "2" not in set(logged.column("model_version").to_pylist())


def test_a_challenger_needing_a_feature_its_clients_do_not_send_fails_the_contract(env):
    result = run_pre_exposure(_with(env.cfg, load_requests=0), "3", champion="1")
    assert not result.passed
    contract = _check(result, "contract")
    assert not contract.passed and "loyalty_score" in contract.detail and "missing_feature" in contract.detail
    assert _check(result, "infrastructure").passed and _check(result, "load").detail == "skipped"
    assert len(result.reasons()) == 1 and result.reasons()[0].startswith("contract: ")
    _assert_preview_gone_and_live_untouched(env)


def test_an_unreachable_qps_gate_fails_the_load(env):
    result = run_pre_exposure(_with(env.cfg, contract=False, min_qps=1e9), "2", champion="1")
    load = _check(result, "load")
    assert not result.passed and not load.passed and "min_qps" in load.detail
    assert load.figures["qps"] > 0 and load.figures["min_qps"] == 1e9
    assert _check(result, "contract").detail == "skipped"
    _assert_preview_gone_and_live_untouched(env)
