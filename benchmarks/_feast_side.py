"""Feast's side of bench_features.py: run by the Python of Feast's own virtualenv (Feast pins pandas < 3).

Imports Feast, pandas, pyarrow and numpy only, never raymlops. Given the directory bench_features.py prepared
(``source/part-0.parquet`` feature rows, ``rows.parquet`` entity rows, ``ids.npy`` the lookup keys), it defines the
same entity and feature view (TTL, three features) on Feast's local provider (its default offline store, on
files with dask, and SQLite online store), then times the historical point-in-time join, a full materialisation and online reads of 1 and 100 keys,
writes the joined rows to ``feast_joined.parquet`` (bench_features compares them with raymlops' answer) and prints
one JSON line of figures.

    <feast venv>/bin/python benchmarks/_feast_side.py DIR TTL_S END_ISO CALLS REPS
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq


def _latency(fn, calls: int) -> dict[str, float]:
    # bench_features times raymlops with this same loop: 200 warm-up calls, then `calls` timed ones.
    for _ in range(min(200, calls)):
        fn()
    samples = np.empty(calls)
    for i in range(calls):
        t0 = time.perf_counter()
        fn()
        samples[i] = time.perf_counter() - t0
    return {"median_ms": round(float(np.median(samples)) * 1e3, 4),
            "p99_ms": round(float(np.percentile(samples, 99)) * 1e3, 4)}


def main() -> None:
    root, ttl_s, end, calls, reps = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    import feast
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.infra.offline_stores.dask import DaskOfflineStoreConfig
    from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig
    from feast.repo_config import RepoConfig
    from feast.types import Float64, Int64, String

    work = root / "feast"
    work.mkdir(exist_ok=True)
    store = FeatureStore(config=RepoConfig(
        project="bench", provider="local", registry=str(work / "registry.db"),
        online_store=SqliteOnlineStoreConfig(path=str(work / "online.db")),
        offline_store=DaskOfflineStoreConfig(), entity_key_serialization_version=3))
    entity = Entity(name="e", join_keys=["entity_id"], value_type=ValueType.INT64)
    view = FeatureView(
        name="v", entities=[entity], ttl=dt.timedelta(seconds=ttl_s), online=True,
        schema=[Field(name="f_float", dtype=Float64), Field(name="f_int", dtype=Int64),
                Field(name="f_str", dtype=String)],
        source=FileSource(path=str(root / "source" / "part-0.parquet"), timestamp_field="event_ts"))
    store.apply([entity, view])
    refs = ["v:f_float", "v:f_int", "v:f_str"]

    # Historical: entity rows handed over as pandas (Feast's input type); reading them is not timed on either side.
    rows = pq.read_table(root / "rows.parquet").to_pandas()
    times, joined = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        joined = store.get_historical_features(entity_df=rows, features=refs).to_df()
        times.append(time.perf_counter() - t0)
    pd.DataFrame(joined).to_parquet(root / "feast_joined.parquet")

    t0 = time.perf_counter()
    store.materialize(start_date=dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc),
                      end_date=dt.datetime.fromisoformat(end))
    materialize_s = time.perf_counter() - t0

    ids = [int(i) for i in np.load(root / "ids.npy")]
    it1, it100 = iter(ids), iter(range(calls * 2))
    one = _latency(lambda: store.get_online_features(features=refs, entity_rows=[{"entity_id": next(it1)}])
                   .to_dict(), calls)

    def hundred():
        start = (next(it100) % calls) * 100
        return store.get_online_features(features=refs,
                                         entity_rows=[{"entity_id": i} for i in ids[start:start + 100]]).to_dict()

    many = _latency(hundred, calls)
    print(json.dumps({"feast": feast.__version__, "pandas": pd.__version__, "historical_s": statistics.median(times),
                      "materialize_s": materialize_s, "1_entity": one, "100_entities": many}))


if __name__ == "__main__":
    main()
