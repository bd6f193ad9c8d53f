"""The HTTP inference API over real loopback HTTP against a local Serve: answers, the error contract, logs, feedback.

One app is deployed for the module (Serve costs seconds per deploy); its prediction log flushes only when
drained (reconfigure or shutdown), so the tests also prove both drains.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from pathlib import Path
from types import SimpleNamespace

import httpx
import pyarrow as pa
import pytest
from starlette.requests import Request

from raymlops.errors import PackageError, ServingError
from raymlops.model.package import load_package
from raymlops.registry.models import ModelRegistry
from raymlops.serve.app import ModelServer
from raymlops.serve.batch import prediction_columns
from raymlops.serve.deploy import deploy, plan, set_weights, status, undeploy
from raymlops.serve.predlog import FEEDBACK_SCHEMA, join_feedback, read_log
from tests.serving_helpers import instances, register_versions, serving_config

pytestmark = pytest.mark.slow

MAX_INSTANCES = 50
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def app(ray_session, _mlflow_template, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-http")
    shutil.copy(_mlflow_template, root / "mlflow.db")
    cfg = serving_config(
        root, f"sqlite:///{root / 'mlflow.db'}", f"serving.max_instances={MAX_INSTANCES}",
        f"serving.max_body_bytes={MAX_BODY}", "serving.prediction_log.flush_interval_s=3600",
        "serving.prediction_log.flush_rows=100000",
    )
    versions = register_versions(cfg, root)
    info = deploy(cfg)
    client = httpx.Client(base_url=info.url, timeout=30)
    replica = client.get("/v1/models/churn").json()["replica"]
    yield SimpleNamespace(cfg=cfg, info=info, client=client, root=root, versions=versions, replica=replica)
    client.close()
    undeploy(cfg)


def _predict(app, rows, **kw) -> httpx.Response:
    return app.client.post("/v1/models/churn:predict", json={"instances": rows}, **kw)


def _drain(app) -> None:
    """A reconfigure with the same routing: replicas drain their logs before it returns."""
    set_weights(app.cfg, {"1": 100})


# ------------------------------------------------------------------------------------------------ answers
def test_deploy_serves_the_champion_alone_by_default(app):
    assert app.info.versions == {"1": "champion"} and app.info.weights == {"1": 100.0}
    assert app.info.url.startswith("http://127.0.0.1:")


def test_predict_answers_with_the_version_and_the_request_id(app):
    r = _predict(app, instances(3))
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["model_version"] == r.headers["x-model-version"] == "1"
    assert doc["request_id"] == r.headers["x-request-id"] and uuid.UUID(doc["request_id"])
    mine = _predict(app, instances(1), headers={"X-Request-Id": "order-17.a"})
    assert mine.json()["request_id"] == mine.headers["x-request-id"] == "order-17.a"  # a client's id is kept
    assert len(doc["predictions"]) == 3
    for p in doc["predictions"]:
        assert set(p) == {"probability", "label"} and 0 <= p["probability"] <= 1
        assert p["label"] == int(p["probability"] >= 0.5)  # label is the class value (0/1), not an index


def test_online_predictions_equal_batch_predictions(app):
    rows = instances(25, seed=9)
    online = _predict(app, rows).json()["predictions"]
    model = load_package(app.versions[0].package_uri, app.versions[0].digest)
    batch = prediction_columns(model, pa.Table.from_pylist(rows))
    assert [p["probability"] for p in online] == batch["probability"].to_pylist()
    assert [p["label"] for p in online] == batch["label"].to_pylist()


def test_direct_ingress_serves_the_same_api_on_the_replica_port(app):
    assert len(app.info.direct_urls) == 1  # on by default, one replica
    r = httpx.post(f"{app.info.direct_urls[0]}/v1/models/churn:predict", json={"instances": instances(2)})
    assert r.status_code == 200 and r.headers["x-model-version"] == "1"
    assert r.headers.get_list("x-request-id") == [r.json()["request_id"]]
    bad = httpx.post(f"{app.info.direct_urls[0]}/v1/models/churn:predict", json={"instances": []})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "empty_instances"


def test_healthz_and_model_info(app):
    r = app.client.get("/healthz")
    assert r.status_code == 200 and r.json()["versions"] == ["1"]
    info = app.client.get("/v1/models/churn").json()
    assert info["model"] == "churn" and info["champion"] == "1" and info["weights"] == {"1": 100.0}
    (v1,) = info["versions"]
    assert v1["version"] == "1" and v1["role"] == "champion" and v1["digest"] == app.versions[0].digest
    assert v1["requests"] >= 1 and v1["latency_ms"]["p50"] > 0 and v1["latency_ms"]["p99"] >= v1["latency_ms"]["p50"]
    assert info["replica"]["configured_replicas"] == 1 and info["prediction_log"]["dropped"] == 0
    assert info["metrics_exported"] is True  # ray.util.metrics counters and histogram exist in the replica
    st = status(app.cfg)
    assert st["status"] == "RUNNING" and st["deployments"]["ModelServer"]["replicas"] == {"RUNNING": 1}
    assert st["model"]["champion"] == "1"


def test_before_any_version_is_loaded_health_and_predict_answer_503_with_retry_after(app, tmp_path):
    """The class itself, driven in-process through ASGI (no Serve): the state before the first reconfigure."""
    server = ModelServer("churn", str(tmp_path), app.cfg.serving.prediction_log.model_dump())

    async def asgi(scope, receive, send):
        response = await server(Request(scope, receive))
        await response(scope, receive, send)

    async def calls():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://test") as c:
            before = [await c.get("/healthz"), await c.post("/v1/models/churn:predict", json={"instances": [_row()]})]
            await server.reconfigure(plan(app.cfg, ModelRegistry(app.cfg.tracking_uri)))
            after = [await c.get("/healthz"), await c.post("/v1/models/churn:predict", json={"instances": [_row()]})]
            return before, after

    try:
        before, after = asyncio.run(calls())
    finally:
        server.__del__()
    for r in before:
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "no_version"
    assert [r.status_code for r in after] == [200, 200]
    assert after[1].headers["x-request-id"] == after[1].json()["request_id"]  # outside Serve it sends the id itself


# ------------------------------------------------------------------------------------------------ errors
def _row(**changes):
    row = instances(1)[0]
    for k, v in changes.items():
        if v is _DROP:
            row.pop(k)
        else:
            row[k] = v
    return row


_DROP = object()
_RID = "0" * 32


def _raw(literal: str) -> bytes:
    """A one-instance body whose usage_gb is a literal JSON cannot express (NaN, Infinity, 1e400)."""
    return b'{"instances": [' + json.dumps(_row(usage_gb=_DROP))[:-1].encode() + f', "usage_gb": {literal}}}]}}'.encode()


# (id, method, path, body: dict | bytes | None, headers, status, code, detail codes or None)
BAD = [
    ("malformed-json", "POST", ":predict", b'{"instances": [', {}, 400, "malformed_json", None),
    ("not-utf8", "POST", ":predict", b"\xff\xfe\x00", {}, 400, "malformed_json", None),
    ("empty-body", "POST", ":predict", b"", {}, 400, "malformed_json", None),
    ("body-is-a-list", "POST", ":predict", [], {}, 400, "invalid_body", None),
    ("body-is-a-string", "POST", ":predict", "x", {}, 400, "invalid_body", None),
    ("no-instances", "POST", ":predict", {}, {}, 400, "invalid_body", None),
    ("instances-not-a-list", "POST", ":predict", {"instances": {}}, {}, 400, "invalid_body", None),
    ("extra-top-level-key", "POST", ":predict", {"instances": [_row()], "x": 1}, {}, 400, "invalid_body", None),
    ("empty-instances", "POST", ":predict", {"instances": []}, {}, 422, "empty_instances", None),
    ("too-many-instances", "POST", ":predict", {"instances": [_row()] * (MAX_INSTANCES + 1)}, {}, 422,
     "too_many_instances", None),
    ("instance-not-an-object", "POST", ":predict", {"instances": [1]}, {}, 422, "schema_violation",
     ["not_an_object"]),
    ("unknown-feature", "POST", ":predict", {"instances": [_row(colour="red")]}, {}, 422, "schema_violation",
     ["unknown_feature"]),
    ("label-sent", "POST", ":predict", {"instances": [_row(churned=1)]}, {}, 422, "schema_violation",
     ["label_not_allowed"]),
    ("missing-feature", "POST", ":predict", {"instances": [_row(tenure_months=_DROP)]}, {}, 422,
     "schema_violation", ["missing_feature"]),
    ("null-feature", "POST", ":predict", {"instances": [_row(monthly_charges=None)]}, {}, 422,
     "schema_violation", ["null_value"]),
    ("number-as-string", "POST", ":predict", {"instances": [_row(usage_gb="12.5")]}, {}, 422,
     "schema_violation", ["wrong_type"]),
    ("number-as-bool", "POST", ":predict", {"instances": [_row(support_calls=True)]}, {}, 422,
     "schema_violation", ["wrong_type"]),
    ("number-as-list", "POST", ":predict", {"instances": [_row(usage_gb=[1, 2])]}, {}, 422, "schema_violation",
     ["wrong_type"]),
    ("category-as-object", "POST", ":predict", {"instances": [_row(plan={"a": 1})]}, {}, 422, "schema_violation",
     ["wrong_type"]),
    ("category-as-number", "POST", ":predict", {"instances": [_row(region=7)]}, {}, 422, "schema_violation",
     ["wrong_type"]),
    ("nan", "POST", ":predict", _raw("NaN"), {}, 422, "schema_violation", ["non_finite"]),
    ("infinity", "POST", ":predict", _raw("Infinity"), {}, 422, "schema_violation", ["non_finite"]),
    ("minus-infinity", "POST", ":predict", _raw("-Infinity"), {}, 422, "schema_violation", ["non_finite"]),
    ("overflowing-number", "POST", ":predict", _raw("1e400"), {}, 422, "schema_violation", ["non_finite"]),
    ("timestamp-as-object", "POST", ":predict", {"instances": [_row(event_ts={"t": 1})]}, {}, 422,
     "schema_violation", ["wrong_type"]),
    ("two-bad-rows", "POST", ":predict", {"instances": [_row(colour=1), _row(), _row(plan=None)]}, {}, 422,
     "schema_violation", ["unknown_feature", "null_value"]),
    ("body-too-large", "POST", ":predict", {"instances": [_row(region="x" * 2000) for _ in range(40)]}, {}, 413,
     "body_too_large", None),
    ("routing-key-too-long", "POST", ":predict", {"instances": [_row()]}, {"X-Routing-Key": "k" * 300}, 400,
     "invalid_routing_key", None),
    ("request-id-header-invalid", "POST", ":predict", {"instances": [_row()]}, {"X-Request-Id": "a b"}, 400,
     "invalid_request_id", None),
    ("unknown-model", "POST", "/v1/models/fraud:predict", {"instances": [_row()]}, {}, 404, "unknown_model", None),
    ("unknown-route", "GET", "/v3/whatever", None, {}, 404, "unknown_route", None),  # /v2: OIP's error shape
    ("unknown-action", "POST", ":explain", {"instances": [_row()]}, {}, 404, "unknown_route", None),
    ("get-on-predict", "GET", ":predict", None, {}, 405, "method_not_allowed", None),
    ("put-on-model", "PUT", "", {}, {}, 405, "method_not_allowed", None),
    ("post-on-healthz", "POST", "/healthz", {}, {}, 405, "method_not_allowed", None),
    ("delete-on-feedback", "DELETE", ":feedback", None, {}, 405, "method_not_allowed", None),
    ("feedback-malformed", "POST", ":feedback", b"{", {}, 400, "malformed_json", None),
    ("feedback-extra-key", "POST", ":feedback", {"request_id": _RID, "labels": [1], "x": 1}, {}, 400,
     "invalid_body", None),
    ("feedback-bad-request-id", "POST", ":feedback", {"request_id": "not an id!", "labels": [1]}, {}, 422,
     "invalid_feedback", ["invalid_request_id"]),
    ("feedback-labels-not-a-list", "POST", ":feedback", {"request_id": _RID, "labels": 1}, {}, 422,
     "invalid_feedback", ["wrong_type"]),
    ("feedback-no-labels", "POST", ":feedback", {"request_id": _RID, "labels": []}, {}, 422, "invalid_feedback",
     ["wrong_type"]),
    ("feedback-unknown-class", "POST", ":feedback", {"request_id": _RID, "labels": [0, 7]}, {}, 422,
     "invalid_feedback", ["invalid_label"]),
    ("feedback-nan-label", "POST", ":feedback", b'{"request_id": "' + _RID.encode() + b'", "labels": [NaN]}', {},
     400, "malformed_json", None),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_a_bad_request_gets_its_4xx_and_a_json_error(app, case):
    _, method, path, body, headers, status_code, code, detail_codes = case
    url = path if path.startswith("/") else f"/v1/models/churn{path}"
    content = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    r = app.client.request(method, url, content=content, headers={"Content-Type": "application/json", **headers})
    assert r.status_code == status_code, r.text
    assert r.headers["content-type"] == "application/json" and r.headers["x-request-id"]
    err = r.json()["error"]
    assert err["code"] == code and isinstance(err["message"], str) and err["message"]
    assert isinstance(err["details"], list)
    if detail_codes is not None:
        assert [d["code"] for d in err["details"]] == detail_codes
    if status_code == 405:
        assert r.headers["allow"] in ("GET", "POST")


def test_bad_request_cases_are_at_least_30_kinds():
    assert len({c[0] for c in BAD}) >= 30 and {c[5] for c in BAD} == {400, 404, 405, 413, 422}


def test_bad_requests_never_restart_the_replica_nor_count_as_internal_errors(app):
    info = app.client.get("/v1/models/churn").json()
    assert info["replica"] == app.replica and info["internal_errors"] == 0
    assert sum(info["client_errors"].values()) >= len(BAD)
    assert _predict(app, instances(1)).status_code == 200


def test_a_chunked_body_over_the_limit_is_refused_while_streaming(app):
    def chunks():
        yield b'{"instances": ['
        for _ in range(MAX_BODY // 1000 + 5):
            yield b" " * 1000

    r = app.client.post("/v1/models/churn:predict", content=chunks())
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


# ------------------------------------------------------------------------------------------------ logs
def test_n_served_requests_give_n_log_rows_after_a_reconfigure_drain(app):
    rows = instances(40, seed=21)
    ids = []
    for row in rows[:30]:
        r = _predict(app, [row], headers={"X-Routing-Key": f"user-{len(ids)}"})
        assert r.status_code == 200
        ids.append(r.json()["request_id"])
    multi = _predict(app, rows[30:]).json()  # one request, ten instances: ten rows
    _drain(app)
    log = read_log(str(Path(app.cfg.storage_uri) / "predictions" / "churn")).to_pylist()
    mine = [r for r in log if r["request_id"] in set(ids)]
    assert len(mine) == 30 and {r["request_id"] for r in mine} == set(ids)
    assert all(r["role"] == "primary" and r["model_version"] == "1" and r["status"] == "ok" for r in mine)
    assert all(r["latency_ms"] > 0 and r["routing_key"].startswith("user-") for r in mine)
    first = next(r for r in mine if r["request_id"] == ids[0])
    assert json.loads(first["features"]) == rows[0] and set(json.loads(first["outputs"])) == {"probability", "label"}
    multi_rows = sorted((r for r in log if r["request_id"] == multi["request_id"]), key=lambda r: r["row"])
    assert [r["row"] for r in multi_rows] == list(range(10))
    assert [json.loads(r["outputs"]) for r in multi_rows] == multi["predictions"]


def test_feedback_is_accepted_and_joins_its_prediction(app):
    preds = [_predict(app, instances(2, seed=30 + i)).json() for i in range(3)]
    labels = {p["request_id"]: [1, 0] if i % 2 else [0, None] for i, p in enumerate(preds)}
    for rid, ls in labels.items():
        r = app.client.post("/v1/models/churn:feedback", json={"request_id": rid, "labels": ls})
        assert r.status_code == 202 and r.json() == {"request_id": rid, "accepted": 2}
    _drain(app)
    store = Path(app.cfg.storage_uri)
    joined = join_feedback(read_log(str(store / "predictions" / "churn")),
                           read_log(str(store / "feedback" / "churn"), FEEDBACK_SCHEMA)).to_pylist()
    got = {(r["request_id"], r["row"]): r["label"] for r in joined if r["request_id"] in labels}
    want = {(rid, i): v for rid, ls in labels.items() for i, v in enumerate(ls) if v is not None}
    assert got == want


def test_a_package_that_does_not_match_its_registry_digest_is_refused(app):
    reg = ModelRegistry(app.cfg.tracking_uri)
    forged = app.root / "packages" / "forged"
    shutil.copytree(app.versions[1].package_uri, forged)
    bad = reg.register("churn", str(forged), run_id=None, digest="f" * 64, tags={}, alias=None)
    with pytest.raises(PackageError, match=f"{forged}.*digest.*{'f' * 64}"):
        set_weights(app.cfg, {"1": 90, str(bad.version): 10})
    with pytest.raises(ServingError, match="unknown version|no version|cannot route"):
        set_weights(app.cfg, {"1": 90, "99": 10})
    info = app.client.get("/v1/models/churn").json()
    assert info["weights"] == {"1": 100.0} and info["replica"] == app.replica  # the running app is untouched


# ------------------------------------------------------------------------------------------------ overload
def test_overload_is_answered_with_503_and_retry_after_and_leaves_other_apps_alone(app):
    cfg = app.cfg.model_copy(deep=True)
    cfg.serving.app_name, cfg.serving.route_prefix = "churn-overload", "/overload"
    cfg.serving.max_ongoing_requests, cfg.serving.max_queued_requests = 1, 1
    info = deploy(cfg)
    url = f"{info.url}/v1/models/churn:predict"
    body = {"instances": instances(MAX_INSTANCES)}
    try:
        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as c:
                return await asyncio.gather(*(c.post(url, json=body) for _ in range(64)))

        responses = asyncio.run(burst())
        assert {r.status_code for r in responses} == {200, 503}  # bounded: excess is refused, never queued forever
        assert all(r.headers.get("retry-after") == "1" for r in responses if r.status_code == 503)
        # Serve's own rejection is plain text; raymlops.serve.json_errors makes it the app's JSON error body
        assert {r.json()["error"]["code"] for r in responses if r.status_code == 503} <= {"overloaded", "unavailable"}
        assert _predict(app, instances(1)).status_code == 200  # the module's app is unaffected
    finally:
        undeploy(cfg)
    gone = httpx.post(url, json=body)
    assert gone.status_code == 404 and "error" in gone.json()  # deleted: no route for its prefix any more


# ------------------------------------------------------------------------------------------------ shutdown
def test_undeploy_drains_the_log_on_shutdown(app):
    ids = [_predict(app, instances(1, seed=50 + i)).json()["request_id"] for i in range(7)]
    assert undeploy(app.cfg) is True
    log = read_log(str(Path(app.cfg.storage_uri) / "predictions" / "churn"))
    assert set(ids) <= set(log.column("request_id").to_pylist())
    assert undeploy(app.cfg) is False
