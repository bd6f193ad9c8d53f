"""Serve's plain-text error answers become the app's JSON error bodies (raymlops.serve.json_errors), and HAProxy's
own error file is JSON too (raymlops.serve.ingress)."""

from __future__ import annotations

import asyncio
import json

from raymlops.serve import ingress
from raymlops.serve.json_errors import JSONErrors, error_code


def _run(status: int, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> list[dict]:
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for i, chunk in enumerate(chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    asyncio.run(JSONErrors(app)({"type": "http"}, None, send))
    return sent


def test_serves_backpressure_text_becomes_json_with_its_status_and_retry_after():
    sent = _run(503, [(b"content-type", b"text/plain; charset=utf-8"), (b"retry-after", b"1")],
                [b"Request dropped due ", b"to backpressure"])
    start, body = sent
    headers = dict(start["headers"])
    assert start["status"] == 503 and headers[b"retry-after"] == b"1" and headers[b"content-type"] == b"application/json"
    doc = json.loads(body["body"])
    assert doc["error"]["code"] == "overloaded" and "backpressure" in doc["error"]["message"]
    assert int(headers[b"content-length"]) == len(body["body"]) and body["more_body"] is False


def test_json_and_successful_answers_pass_untouched_and_unbuffered():
    ok = _run(200, [(b"content-type", b"text/plain")], [b"a", b"b"])
    assert [m.get("body") for m in ok[1:]] == [b"a", b"b"] and ok[0]["status"] == 200
    ours = _run(422, [(b"content-type", b"application/json")], [b'{"error": {"code": "x"}}'])
    assert ours[1]["body"] == b'{"error": {"code": "x"}}'


def test_each_plain_text_status_gets_a_code():
    assert error_code(408, "Request timed out") == "request_timeout"
    assert error_code(503, "Deployment unavailable") == "unavailable"
    assert error_code(500, "Internal Server Error") == "internal_error"
    assert error_code(418, "teapot") == "http_error"
    assert json.loads(_run(404, [], [b"Path '/x' not found"])[1]["body"])["error"]["code"] == "unknown_route"


def test_haproxys_error_file_is_a_whole_json_503_and_its_files_live_in_a_private_dir(tmp_path, monkeypatch):
    head, body = ingress.json_error_response().split("\r\n\r\n", 1)
    assert head.startswith("HTTP/1.1 503") and "Retry-After: 1" in head and f"Content-Length: {len(body)}" in head
    assert json.loads(body)["error"]["code"] == "unavailable"
    for var in ("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", "RAY_SERVE_HAPROXY_SOCKET_PATH",
                "RAY_SERVE_HAPROXY_SERVER_STATE_BASE", "RAY_SERVE_HAPROXY_SERVER_STATE_FILE",
                "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"):
        monkeypatch.delenv(var, raising=False)
    env = ingress.controller_env("haproxy")
    assert env["RAY_SERVE_HAPROXY_SOCKET_PATH"].startswith(env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"] + "/")
    assert "/haproxy-serve/" not in env["RAY_SERVE_HAPROXY_SOCKET_PATH"]
    assert env["RAY_SERVE_HAPROXY_RETRY_ON"] == "conn-failure empty-response"
    # every HTTP server Serve runs: its proxies (the controller's env) and the replicas' own ports
    assert all(env_of(m)["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] == "raymlops.serve.json_errors.middlewares"
               for m in ("haproxy", "direct", "proxy") for env_of in (ingress.controller_env, ingress.replica_env))
    monkeypatch.setenv("RAY_SERVE_HAPROXY_SOCKET_PATH", str(tmp_path / "op" / "admin.sock"))
    assert ingress.controller_env("haproxy")["RAY_SERVE_HAPROXY_SOCKET_PATH"] == str(tmp_path / "op" / "admin.sock")


def test_haproxys_directory_is_made_private_and_a_link_or_foreign_one_is_refused(tmp_path, monkeypatch):
    import os
    import stat

    import pytest

    base = tmp_path / "ha"
    for var, value in ingress.haproxy_files_env(str(base)).items():
        monkeypatch.setenv(var, value)
    base.mkdir(mode=0o755)
    ingress._private_dirs()
    assert stat.S_IMODE(base.stat().st_mode) == 0o700
    base.rmdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", base)  # planted by someone else: the socket would land where they chose
    with pytest.raises(PermissionError, match="RAY_SERVE_HAPROXY_SOCKET_PATH"):
        ingress._private_dirs()
