"""The standard protocols over real loopback HTTP, spoken by clients nobody here wrote: ``tritonclient.http``
(Open Inference Protocol V2) and MLflow's own ``ScoringServerClient`` / ``requests`` with MLflow's documented
payloads (``/invocations``, ``/ping``); plus the V1 version and alias pins. Every answer is compared with the
native ``:predict`` for the same rows, and the protocols' requests are logged, mirrored and split like native ones.

One app for the module: version 1 is the champion, version 2 is a shadow mirrored on every request (so a pin to
it and the shadow log can both be checked); the last test moves to a 50/50 split.
"""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import requests
import tritonclient.http as triton
from mlflow.pyfunc.scoring_server.client import ScoringServerClient
from tritonclient.utils import InferenceServerException

from raymlops import storage
from raymlops.serve.deploy import deploy, set_weights, undeploy
from raymlops.serve.predlog import read_log
from tests.serving_helpers import instances, register_versions, serving_config, wait_for

pytestmark = pytest.mark.slow

ROWS = instances(6, seed=21)
FEATURES = sorted(ROWS[0])


@pytest.fixture(scope="module")
def app(ray_session, _mlflow_template, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-protocols")
    shutil.copy(_mlflow_template, root / "mlflow.db")
    # The protocols are the replica's whatever the ingress; direct starts fastest when this module starts Serve
    # (a running Serve keeps the ingress it started with).
    cfg = serving_config(root, f"sqlite:///{root / 'mlflow.db'}")
    register_versions(cfg, root)
    info = deploy(cfg, weights={"1": 100}, shadow="2", shadow_pct=100)
    client = httpx.Client(base_url=info.url, timeout=30)
    triton_client = triton.InferenceServerClient(info.url.removeprefix("http://"), network_timeout=30)
    native = {v: _native(client, f"/v1/models/churn/versions/{v}:predict") for v in ("1", "2")}
    assert native["1"] != native["2"]  # the versions differ, so an answer shows which one served it
    yield SimpleNamespace(cfg=cfg, info=info, client=client, triton=triton_client, native=native)
    triton_client.close()
    client.close()
    undeploy(cfg)


def _native(client: httpx.Client, path: str, rows=ROWS, **kw) -> list[dict]:
    r = client.post(path, json={"instances": rows}, **kw)
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def _triton_inputs(meta: dict, rows=ROWS, *, binary: bool = True) -> list[triton.InferInput]:
    out = []
    for spec in meta["inputs"]:
        values = [r[spec["name"]] for r in rows]
        arr = np.array(values, dtype=object) if spec["datatype"] == "BYTES" else np.array(values)
        t = triton.InferInput(spec["name"], [len(rows)], spec["datatype"])
        t.set_data_from_numpy(arr.astype(np.int64) if spec["datatype"] == "INT64" else arr, binary_data=binary)
        out.append(t)
    return out


def _as_predictions(result) -> list[dict]:
    return [{"probability": float(p), "label": int(lab)}
            for p, lab in zip(result.as_numpy("probability"), result.as_numpy("label"), strict=True)]


# ------------------------------------------------------------------------------------------------ OIP V2
def test_tritonclient_health_and_metadata(app):
    c = app.triton
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("churn") and c.is_model_ready("churn", "2") and not c.is_model_ready("churn", "9")
    meta = c.get_model_metadata("churn")
    assert meta["name"] == "churn" and meta["versions"] == ["1", "2"]
    types = {i["name"]: i["datatype"] for i in meta["inputs"]}
    assert sorted(types) == FEATURES
    assert types["region"] == "BYTES" and types["tenure_months"] == "INT64" and types["usage_gb"] == "FP64"
    assert meta["outputs"] == [{"name": "probability", "datatype": "FP64", "shape": [-1]},
                               {"name": "label", "datatype": "INT64", "shape": [-1]}]
    assert c.get_model_metadata("churn", "2")["inputs"] == meta["inputs"]
    with pytest.raises(InferenceServerException) as err:
        c.get_model_metadata("fraud")
    assert err.value.status() == "404"


def test_tritonclient_infer_equals_native_predict(app):
    c = app.triton
    meta = c.get_model_metadata("churn")
    binary = c.infer("churn", _triton_inputs(meta), request_id="order-1")  # binary tensors: the client's default
    assert _as_predictions(binary) == app.native["1"]
    doc = binary.get_response()
    assert doc["model_name"] == "churn" and doc["model_version"] == "1" and doc["id"] == "order-1"
    as_json = c.infer("churn", _triton_inputs(meta, binary=False),
                      outputs=[triton.InferRequestedOutput("probability", binary_data=False)])
    assert [{"probability": float(p)} for p in as_json.as_numpy("probability")] == \
        [{"probability": p["probability"]} for p in app.native["1"]]
    assert as_json.as_numpy("label") is None  # only what was asked for
    pinned = c.infer("churn", _triton_inputs(meta), model_version="2")
    assert _as_predictions(pinned) == app.native["2"] and pinned.get_response()["model_version"] == "2"


def test_oip_mistakes_keep_the_error_contract(app):
    c = app.triton
    meta = c.get_model_metadata("churn")
    inputs = [i for i in _triton_inputs(meta) if i.name() != "region"]
    region = triton.InferInput("region", [len(ROWS)], "INT64")
    region.set_data_from_numpy(np.arange(len(ROWS), dtype=np.int64))
    with pytest.raises(InferenceServerException) as err:  # numbers for a string category: the validator's 422
        c.infer("churn", [*inputs, region])
    assert err.value.status() == "422" and "schema_violation" in str(err.value)  # the client can print our errors
    assert "row 0 'region'" in str(err.value)
    r = app.client.post("/v2/models/churn/infer", json={"inputs": [
        {"name": "region", "datatype": "BYTES", "shape": [2], "data": ["north", 7]}]})
    assert r.status_code == 400 and r.json()["details"][0]["field"] == "region"  # data not BYTES: OIP error shape
    r = app.client.post("/v2/models/churn/infer", json={"inputs": [
        {"name": "region", "datatype": "INT64", "shape": [1], "data": [7]},
        {"name": "colour", "datatype": "BYTES", "shape": [1], "data": ["red"]}]})
    assert r.status_code == 422
    fields = {(d["field"], d["code"]) for d in r.json()["details"]}
    assert {("region", "wrong_type"), ("colour", "unknown_feature"), ("plan", "missing_feature")} <= fields
    for path, status, code in [("/v2/models/churn/versions/9/infer", 404, "unknown_version"),
                               ("/v2/models/churn/config", 404, "unknown_route"), ("/v2/whatever", 404, "unknown_route"),
                               ("/v2/models/fraud/infer", 404, "unknown_model")]:
        r = app.client.post(path, json={"inputs": []})
        assert (r.status_code, r.json()["code"]) == (status, code)
    assert "['1', '2']" in app.client.post("/v2/models/churn/versions/9/infer", json={}).json()["error"]
    assert app.client.get("/v2/models/churn/infer").status_code == 405


# ------------------------------------------------------------------------------------------------ MLflow
def test_mlflow_scoring_client_equals_native_predict(app):
    client = ScoringServerClient("127.0.0.1", 0)
    client.url_prefix = app.info.url  # the app's address and route prefix
    client.wait_server_ready(timeout=10)  # GET /ping
    answer = client.invoke(pd.DataFrame(ROWS))  # sent as dataframe_split, as `mlflow models serve` clients do
    assert answer.get_predictions().to_dict(orient="records") == app.native["1"]


@pytest.mark.parametrize("payload", ["dataframe_split", "dataframe_records", "instances", "inputs"])
def test_mlflow_documented_payloads_equal_native_predict(app, payload):
    doc = {"dataframe_split": {"columns": FEATURES, "data": [[r[f] for f in FEATURES] for r in ROWS]},
           "dataframe_records": ROWS, "instances": ROWS,
           "inputs": {f: [r[f] for r in ROWS] for f in FEATURES}}[payload]
    r = requests.post(f"{app.info.url}/invocations", json={payload: doc}, timeout=30)
    assert r.status_code == 200 and r.json() == {"predictions": app.native["1"]}
    assert r.headers["x-model-version"] == "1"


def test_mlflow_mistakes_keep_the_error_contract(app):
    url = f"{app.info.url}/invocations"
    bad = requests.post(url, json={"dataframe_records": [{**ROWS[0], "usage_gb": "lots"}]}, timeout=30)
    assert bad.status_code == 422
    (detail,) = bad.json()["error"]["details"]
    assert (detail["row"], detail["field"], detail["code"]) == (0, "usage_gb", "wrong_type")
    csv = requests.post(url, data="a,b\n1,2", headers={"Content-Type": "text/csv"}, timeout=30)
    assert csv.status_code == 415 and csv.json()["error"]["code"] == "unsupported_media_type"
    assert requests.get(url, timeout=30).status_code == 405
    assert requests.get(f"{app.info.url}/ping", timeout=30).status_code == 200


# ------------------------------------------------------------------------------------------------ V1 pins
def test_version_and_alias_pins(app):
    c = app.client
    assert _native(c, "/v1/models/churn/aliases/champion:predict") == app.native["1"]
    assert _native(c, "/v1/models/churn/versions/v2:predict") == app.native["2"]
    for alias in ("shadow", "challenger"):
        assert _native(c, f"/v1/models/churn/aliases/{alias}:predict") == app.native["2"]
    missing = c.post("/v1/models/churn/versions/9:predict", json={"instances": ROWS})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_version"
    assert "['1', '2']" in missing.json()["error"]["message"]
    alias = c.post("/v1/models/churn/aliases/staging:predict", json={"instances": ROWS})
    assert alias.status_code == 404 and alias.json()["error"]["code"] == "unknown_alias"
    invalid = c.post("/v1/models/churn/versions/2:predict", json={"instances": [{"plan": 1}]})
    assert invalid.status_code == 422  # a pin validates like any request
    # a pinned request is logged as "pinned": the split did not choose it, so the canary never counts it
    rid = c.post("/v1/models/churn/versions/1:predict", json={"instances": ROWS}).headers["x-raymlops-request-id"]
    log_uri = storage.join(app.cfg.storage_uri, "predictions", "churn")

    def roles() -> set[str]:
        t = read_log(log_uri)
        return set(t.filter(pc.equal(t.column("request_id"), rid)).column("role").to_pylist())

    wait_for(lambda: "pinned" in roles(), 20, "the pinned request in the prediction log")
    assert "primary" not in roles()


def test_protocol_requests_are_logged_and_mirrored(app):
    meta = app.triton.get_model_metadata("churn")
    rid_infer = app.triton.infer("churn", _triton_inputs(meta)).get_response()["parameters"]["request_id"]
    rid_mlflow = requests.post(f"{app.info.url}/invocations", json={"dataframe_records": ROWS},
                               timeout=30).headers["x-raymlops-request-id"]  # the issued id, whatever the body
    log_uri = storage.join(app.cfg.storage_uri, "predictions", "churn")

    def logged() -> set[tuple[str, str, str]]:
        t = read_log(log_uri)
        t = t.filter(pc.is_in(t.column("request_id"), pa.array([rid_infer, rid_mlflow])))
        return set(zip(t.column("request_id").to_pylist(), t.column("model_version").to_pylist(),
                       t.column("role").to_pylist(), strict=True))

    want = {(rid, v, role) for rid in (rid_infer, rid_mlflow) for v, role in (("1", "primary"), ("2", "shadow"))}
    wait_for(lambda: logged() == want, 20, "the protocol requests in the prediction log")


def test_the_live_split_applies_to_every_protocol(app):
    set_weights(app.cfg, {"1": 50, "2": 50})
    meta = app.triton.get_model_metadata("churn")
    seen = set()
    for i in range(12):
        key = {"X-Routing-Key": f"user-{i}"}
        native = app.client.post("/v1/models/churn:predict", json={"instances": ROWS[:2]}, headers=key)
        oip = app.triton.infer("churn", _triton_inputs(meta, ROWS[:2]), headers=dict(key)).get_response()  # it adds to the dict
        mlflow = requests.post(f"{app.info.url}/invocations", json={"instances": ROWS[:2]}, headers=key, timeout=30)
        version = native.headers["x-model-version"]
        assert oip["model_version"] == mlflow.headers["x-model-version"] == version
        seen.add(version)
    assert seen == {"1", "2"}

