"""serving.auth and the request path's limits over real HTTP: one app deployed with auth on (tokens from a secret
file), checked per scope; signed request ids through :feedback; a slow body; a megabyte string."""

from __future__ import annotations

import json
import shutil
import socket
import time
from types import SimpleNamespace
from urllib.parse import urlsplit

import httpx
import pytest

from raymlops.core.auth import new_token
from raymlops.serve.auth import TOKENS_FILE_ENV
from raymlops.serve.deploy import deploy, undeploy
from tests.serving_helpers import instances, register_versions, serving_config

pytestmark = pytest.mark.slow

URL = "/v1/models/churn"


@pytest.fixture(scope="module")
def app(ray_session, _mlflow_template, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-auth")
    shutil.copy(_mlflow_template, root / "mlflow.db")
    tokens = {name: new_token() for name in ("app", "ops", "fb2", "reader")}
    secret = root / "tokens.txt"
    secret.write_text(f"app:predict,feedback:{tokens['app']}\nops:admin:{tokens['ops']}\n"
                      f"fb2:feedback:{tokens['fb2']}\nreader:predict:{tokens['reader']}\n")
    secret.chmod(0o600)
    cfg = serving_config(root, f"sqlite:///{root / 'mlflow.db'}", "serving.auth.enabled=true",
                         "serving.auth.feedback_burst=6", "serving.auth.feedback_rate_per_s=0.01",
                         "serving.body_timeout_s=1", f"serving.max_body_bytes={4 << 20}")
    register_versions(cfg, root, n=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(TOKENS_FILE_ENV, str(secret))  # read and hashed on the deploying side only
        info = deploy(cfg)
    client = httpx.Client(base_url=info.url, timeout=30)
    yield SimpleNamespace(cfg=cfg, url=info.url, client=client, tokens=tokens, root=root)
    client.close()
    undeploy(cfg)


def _auth(app, name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {app.tokens[name]}"}


def _predict(app, token: str | None, rows=None, **headers) -> httpx.Response:
    h = {**(_auth(app, token) if token else {}), **headers}
    return app.client.post(f"{URL}:predict", json={"instances": rows or instances(2, seed=3)}, headers=h)


def _error(r: httpx.Response) -> str:
    assert r.headers["content-type"].startswith("application/json"), r.text
    return r.json()["error"]["code"]


def test_tokens_and_scopes_decide_each_route(app):
    r = _predict(app, None)
    assert r.status_code == 401 and _error(r) == "unauthorized" and r.headers["www-authenticate"].startswith("Bearer")
    r = app.client.post(f"{URL}:predict", json={"instances": instances(1)}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
    r = _predict(app, "ops")  # admin only
    assert r.status_code == 403 and _error(r) == "forbidden" and "'predict'" in r.json()["error"]["message"]
    assert _predict(app, "reader").status_code == 200
    r = app.client.post(f"{URL}:feedback", json={"request_id": "x", "labels": [1]}, headers=_auth(app, "reader"))
    assert r.status_code == 403
    assert app.client.get("/healthz").status_code == 200  # probes need no token
    assert app.client.get(URL).status_code == 401


def test_model_info_shows_paths_and_pids_to_admin_only(app):
    plain = app.client.get(URL, headers=_auth(app, "reader")).json()
    assert plain["auth"] is True and "pid" not in plain["replica"]
    assert plain["versions"] and all("package_uri" not in v for v in plain["versions"])
    assert str(app.root) not in json.dumps(plain)
    full = app.client.get(URL, headers=_auth(app, "ops")).json()
    assert full["replica"]["pid"] > 0 and full["versions"][0]["package_uri"].startswith(str(app.root))


def test_feedback_takes_only_issued_ids_with_one_label_per_instance(app):
    r = _predict(app, "app", instances(2, seed=4), **{"X-Request-Id": "corr-1"})
    assert r.status_code == 200
    rid = r.json()["request_id"]
    assert rid != "corr-1" and rid.count(".") == 2 and r.headers["x-request-id"] == "corr-1"  # ours vs theirs

    def feedback(request_id: str, labels: list) -> httpx.Response:
        return app.client.post(f"{URL}:feedback", json={"request_id": request_id, "labels": labels},
                               headers=_auth(app, "app"))

    ident, n, mac = rid.split(".")
    for forged in ("corr-1", f"{ident}.3.{mac}", f"{ident}.{n}.{'0' * 32}"):
        r = feedback(forged, [1, 0, 1][: int(n)])
        assert r.status_code == 422 and _error(r) == "unknown_request_id", forged
    r = feedback(rid, [1])
    assert r.status_code == 422 and r.json()["error"]["details"][0]["code"] == "wrong_label_count"
    r = feedback(rid, [1, None])
    assert r.status_code == 202 and r.json() == {"request_id": rid, "accepted": 2}


def test_feedback_is_rate_limited_per_token(app):
    rid = _predict(app, "app").json()["request_id"]
    codes = [app.client.post(f"{URL}:feedback", json={"request_id": rid, "labels": [0, 0]},
                             headers=_auth(app, "fb2")).status_code for _ in range(7)]
    assert codes == [202] * 6 + [429]  # burst 6 (per token: "app" spent its own), then a near-empty bucket
    r = app.client.post(f"{URL}:feedback", json={"request_id": rid, "labels": [0, 0]}, headers=_auth(app, "fb2"))
    assert _error(r) == "rate_limited" and int(r.headers["retry-after"]) >= 1


def test_a_megabyte_string_is_refused_naming_the_field(app):
    row = {**instances(1, seed=5)[0], "plan": "p" * (1 << 20)}
    r = _predict(app, "app", [row])
    assert r.status_code == 422 and len(r.content) < 4096
    assert [(d["field"], d["code"]) for d in r.json()["error"]["details"]] == [("plan", "string_too_long")]


def test_a_slow_body_gets_408_json(app):
    host, port = urlsplit(app.url).hostname, urlsplit(app.url).port
    head = (f"POST {URL}:predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: 200\r\nAuthorization: Bearer {app.tokens['app']}\r\n\r\n")
    with socket.create_connection((host, port), timeout=20) as s:
        s.sendall(head.encode() + b'{"instances": [')  # then nothing: serving.body_timeout_s is 1 s
        data = b""
        deadline = time.monotonic() + 20
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk or time.monotonic() > deadline:
                break
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    assert b" 408 " in status_line, data[:300]
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "body_timeout"


def test_raymlops_own_clients_send_the_client_token(app, monkeypatch):
    from raymlops.serve.auth import CLIENT_TOKEN_ENV, CLIENT_TOKEN_FILE_ENV
    from raymlops.serve.deploy import status

    monkeypatch.delenv(CLIENT_TOKEN_ENV, raising=False)
    monkeypatch.delenv(CLIENT_TOKEN_FILE_ENV, raising=False)
    assert status(app.cfg)["model"] == {"http_status": 401}
    token_file = app.root / "ops-token"
    token_file.write_text(app.tokens["ops"] + "\n")
    monkeypatch.setenv(CLIENT_TOKEN_FILE_ENV, str(token_file))
    shown = status(app.cfg)["model"]
    assert shown["auth"] is True and "pid" in shown["replica"]  # the admin view
