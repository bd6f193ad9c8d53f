"""A stalled online store costs a request a bounded wait and a 503, never the replica.

Redis is a real redis-server started here and frozen with SIGSTOP (it keeps its socket open and answers nothing:
the worst case, worse than a refused connection); SQLite is a real file held under an exclusive lock by another
connection. The HTTP test drives the real ``ModelServer`` in-process over ASGI (no Serve needed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from starlette.requests import Request

from raymlops.config import load_config
from raymlops.errors import FeatureStoreError, FeatureStoreUnavailable
from raymlops.features.serving import serving_spec
from raymlops.features.stores import SQLiteOnlineStore, open_online_store
from raymlops.serve.app import ModelServer
from tests.serving_helpers import build_package, free_port

CONFIG = Path(__file__).parents[2] / "configs" / "features.yaml"


@contextlib.contextmanager
def _redis(workdir: Path, *args: str):
    """A redis-server started here (the tests pause it): ``(url, pid)``; ``args`` are extra server options."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: `sudo apt-get install redis-server` (make test installs it)")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not start on port {port}")
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", proc.pid
    finally:
        os.kill(proc.pid, signal.SIGCONT)  # a paused server ignores SIGTERM until it runs again
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with _redis(tmp_path_factory.mktemp("redis-timeouts")) as server:
        yield server


class _Paused:
    """SIGSTOP the redis-server this module started, SIGCONT on exit (even when the test fails)."""

    def __init__(self, pid: int):
        self.pid = pid

    def __enter__(self):
        os.kill(self.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc):
        os.kill(self.pid, signal.SIGCONT)


@pytest.mark.timeout(30)
def test_a_paused_redis_fails_a_serving_read_with_the_typed_error(redis_server):
    url, pid = redis_server
    definition = {"type": "redis", "url": url, "connect_timeout_s": 0.2, "read_timeout_s": 0.3}
    writer = open_online_store(definition, "t1")
    writer.write("v", ["a"], [1], ['{"x":1}'], watermark_us=1, replace=False)
    store = open_online_store(definition, "t1", serving=True)
    assert store.read("v", ["a"]) == [(1, '{"x":1}')]
    with _Paused(pid), pytest.raises(FeatureStoreUnavailable) as err:
        store.read("v", ["a"])
    assert "read_timeout_s" in str(err.value) and url.split("://")[1].split("/")[0] in str(err.value)
    assert store.read("v", ["a"]) == [(1, '{"x":1}')]  # the server is back: the same store reads again
    writer.close()
    store.close()


@pytest.mark.timeout(30)
def test_a_locked_sqlite_store_fails_a_serving_read_instead_of_waiting_30_s(tmp_path):
    path = tmp_path / "online.sqlite"
    writer = SQLiteOnlineStore(path)
    writer.write("v", ["a"], [1], ['{"x":1}'], watermark_us=1, replace=False)
    writer.close()
    store = open_online_store({"type": "sqlite", "path": str(path), "read_timeout_s": 0.2}, serving=True)
    store.close()  # the replica's thread connects after the lock is taken (a held reader would block the locker)
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("PRAGMA locking_mode=EXCLUSIVE")
    lock.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(FeatureStoreUnavailable) as err:
            store.read("v", ["a"])
        assert "online_store.read_timeout_s" in str(err.value)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert store.read("v", ["a"]) == [(1, '{"x":1}')]


@pytest.mark.timeout(60)
def test_a_paused_redis_is_answered_503_with_retry_after_and_health_is_not_held(redis_server, tmp_path):
    url, pid = redis_server
    doc = yaml.safe_load(CONFIG.read_text())
    doc["online_store"] = {"type": "redis", "url": url, "connect_timeout_s": 0.2, "read_timeout_s": 0.3}
    (tmp_path / "features.yaml").write_text(yaml.safe_dump(doc))
    cfg = load_config(None, [f"storage_uri={tmp_path / 'store'}", f"features.repo={tmp_path / 'features.yaml'}",
                             "features.service=churn_model"])
    package = build_package(cfg, tmp_path / "package", seed=1)
    user_config = {"revision": "t", "model": "churn", "champion": "1",
                   "versions": {"1": {"uri": package.uri, "digest": package.digest, "role": "champion"}},
                   "weights": {"1": 100.0}, "shadow": None, "shadow_pct": 0.0,
                   "limits": {"max_body_bytes": 100_000, "max_instances": 10}, "num_replicas": 1,
                   "features": serving_spec(cfg)}
    server = ModelServer("churn", str(tmp_path / "store"), cfg.serving.prediction_log.model_dump())

    async def asgi(scope, receive, send):
        response = await server(Request(scope, receive))
        await response(scope, receive, send)

    body = {"instances": [{"customer_id": "C000001"}]}
    finished: list[str] = []

    async def timed(name, call):
        r = await call
        finished.append(name)
        return r

    async def calls():
        await server.reconfigure(user_config)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://test") as c:
            ok = await c.post("/v1/models/churn:predict", json=body)
            with _Paused(pid):
                # The health check is sent after the prediction started: it must not wait for the store.
                predict = asyncio.ensure_future(timed("predict", c.post("/v1/models/churn:predict", json=body)))
                await asyncio.sleep(0.05)
                health = await timed("health", c.get("/healthz"))
                stalled = await predict
            return ok, stalled, health

    try:
        ok, stalled, health = asyncio.run(calls())
    finally:
        server.__del__()
    assert ok.status_code == 200, ok.text  # an unknown key: null features, imputed (not an error)
    assert stalled.status_code == 503 and stalled.headers["retry-after"] == "1"
    error = json.loads(stalled.text)["error"]
    assert error["code"] == "feature_store_unavailable" and "Traceback" not in stalled.text
    assert health.status_code == 200 and finished == ["health", "predict"]
    assert server.info()["internal_errors"] == 0


def test_a_redis_password_comes_from_the_replicas_environment_not_the_user_config(tmp_path, monkeypatch):
    with _redis(tmp_path, "--requirepass", "s3cret-from-env") as (url, _):
        doc = yaml.safe_load(CONFIG.read_text())
        doc["online_store"] = {"type": "redis", "url": url, "password_env": "TEST_REDIS_PASSWORD"}
        (tmp_path / "features.yaml").write_text(yaml.safe_dump(doc))
        cfg = load_config(None, [f"features.repo={tmp_path / 'features.yaml'}", "features.service=churn_model"])
        spec = serving_spec(cfg)  # what travels in user_config
        assert "s3cret-from-env" not in json.dumps(spec)
        monkeypatch.delenv("TEST_REDIS_PASSWORD", raising=False)
        with pytest.raises(FeatureStoreError, match="TEST_REDIS_PASSWORD"):
            open_online_store(spec["online_store"], spec["project"], serving=True)
        monkeypatch.setenv("TEST_REDIS_PASSWORD", "s3cret-from-env")  # the replica's environment
        store = open_online_store(spec["online_store"], spec["project"], serving=True)
        assert store.read("customer_usage", ["C000001"]) == [None]
        store.close()
