"""One contract for every online store (memory, SQLite, and Redis against a real redis-server started here).

Redis is never skipped: `make test` installs redis-server (apt-get, as root) and a missing one fails the tests with
the command that installs it.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from raymlops.features.definitions import load_feature_repo
from raymlops.features.example import generate_example
from raymlops.features.materialize import materialize
from raymlops.features.online import OnlineFeatures
from raymlops.features.stores import MemoryOnlineStore, RedisOnlineStore, SQLiteOnlineStore
from tests.serving_helpers import free_port

CONFIG = Path(__file__).parents[2] / "configs" / "features.yaml"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run `make test` as root (it installs it) or "
                    "`sudo apt-get install redis-server`")
    import redis  # the dev extra installs the client

    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path_factory.mktemp("redis"))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not start on port {port}")
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "memory":
        s = MemoryOnlineStore()
    elif request.param == "sqlite":
        s = SQLiteOnlineStore(tmp_path / "s" / "online.sqlite")
    else:
        s = RedisOnlineStore(request.getfixturevalue("redis_url"), prefix=f"t-{tmp_path.name}")
    yield s
    s.close()


def test_store_keeps_newer_events_and_commits_the_watermark(store):
    assert store.watermark("v") is None and store.read("v", ["a"]) == [None]
    store.write("v", ["a", "b"], [10, 10], ['{"x":1}', '{"x":2}'], watermark_us=100, replace=False)
    store.write("v", ["a", "b"], [5, 11], ['{"x":9}', '{"x":3}'], watermark_us=200, replace=False)
    assert store.read("v", ["a", "b", "c"]) == [(10, '{"x":1}'), (11, '{"x":3}'), None]
    assert store.watermark("v") == 200
    store.write("v", ["c"], [1], ['{"x":4}'], watermark_us=300, replace=True)
    assert store.read("v", ["a", "c"]) == [None, (1, '{"x":4}')]
    store.write("v", ["d"], [2], ['{"x":5}'], watermark_us=None, replace=False)  # a range after a gap
    assert store.read("v", ["c", "d"]) == [(1, '{"x":4}'), (2, '{"x":5}')] and store.watermark("v") == 300


def test_redis_and_sqlite_serve_the_same_values(redis_url, tmp_path):
    generate_example(str(tmp_path / "data"), customers=40, days=6, seed=2)
    doc = yaml.safe_load(CONFIG.read_text())
    for view in doc["feature_views"].values():
        view["source"]["uri"] = str(tmp_path / "data" / Path(view["source"]["uri"]).name)
    doc["online_store"] = {"type": "redis", "url": redis_url}
    (tmp_path / "features.yaml").write_text(yaml.safe_dump(doc))
    repo = load_feature_repo(tmp_path / "features.yaml")
    end = dt.datetime(2026, 1, 4, tzinfo=dt.timezone.utc)
    materialize(repo, end=end)  # into Redis, through the repo's own online_store
    sqlite = SQLiteOnlineStore(tmp_path / "online.sqlite")
    materialize(repo, end=end, store=sqlite)
    keys = {"customer_id": [f"C{i:06d}" for i in range(40)] + ["nobody"]}
    views = repo.service("churn_model")
    redis_store = RedisOnlineStore(redis_url, prefix=f"raymlops:{repo.project}")
    got = OnlineFeatures(redis_store, views, clock=end.timestamp).get(keys)
    assert got == OnlineFeatures(sqlite, views, clock=end.timestamp).get(keys)
    assert got["plan"][0] is not None and got["plan"][-1] is None
    assert redis_store.watermark("customer_usage") == int(end.timestamp() * 1e6)
