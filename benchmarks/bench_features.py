"""Feature store: point-in-time retrieval vs bare polars ``join_asof``, and online lookup latency.

Questions:
1. What do raymlops' guarantees (every row kept in order, exact times and zones, created-time ties, declared
   types, TTL) cost over the fastest single-process join? 1M entity rows against 10M feature rows read from the
   same parquet file: ``get_historical_features`` (one process) vs ``pl.read_parquet`` + sort + ``join_asof``
   (backward, by key, tolerance = TTL). Goal: ratio <= 1.5. With ``--ray`` also the Ray path (partitions = 4).
2. Online lookup latency through ``OnlineFeatures`` on the SQLite store holding the 1M materialised entities,
   for 1 and 100 entity keys per call (one view, 3 features), median and p99 over many calls. Goal: beat Feast
   with SQLite measured on this stack (0.14 ms and 3.0 ms medians).

    python benchmarks/bench_features.py                     # 1M x 10M, 3 repetitions
    python benchmarks/bench_features.py --entities 100000 --features 1000000 --reps 1 --ray
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
T0_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
DAYS = 30
TTL_S = 7 * 86_400
FEATURES = ["f_float", "f_int", "f_str"]


def _data(root: Path, entities: int, feature_rows: int, seed: int = 0) -> tuple[Path, pa.Table]:
    rng = np.random.default_rng(seed)
    ts = pa.timestamp("us", tz="UTC")
    src = root / "source"
    src.mkdir(parents=True, exist_ok=True)
    feats = pa.table({
        "entity_id": rng.integers(0, entities, feature_rows),
        "event_ts": pa.array(T0_US + rng.integers(0, DAYS * 86_400_000_000, feature_rows), ts),
        "f_float": rng.normal(0, 1, feature_rows),
        "f_int": rng.integers(0, 1000, feature_rows),
        "f_str": pa.array(np.array(["a", "b", "c", "d"])[rng.integers(0, 4, feature_rows)]),
    })
    pq.write_table(feats, src / "part-0.parquet")
    rows = pa.table({
        "entity_id": rng.integers(0, int(entities * 1.05), entities),  # ~5% unknown entities
        "event_ts": pa.array(T0_US + rng.integers(0, (DAYS + 3) * 86_400_000_000, entities), ts),
        "label": rng.integers(0, 2, entities),
    })
    return src, rows


def _repo(root: Path, src: Path):
    from raymlops.features.definitions import parse_feature_repo

    return parse_feature_repo({
        "project": "bench",
        "online_store": {"type": "sqlite", "path": str(root / "online.sqlite")},
        "entities": {"e": {"join_keys": {"entity_id": "int64"}}},
        "feature_views": {"v": {"entity": "e", "source": {"uri": str(src), "format": "parquet"},
                                "event_timestamp": "event_ts", "ttl_s": TTL_S,
                                "features": {"f_float": {"type": "float64"}, "f_int": {"type": "int64"},
                                             "f_str": {"type": "string"}}}},
        "feature_services": {"s": {"features": ["v"]}},
    })


def _polars_baseline(src: Path, rows: pl.DataFrame) -> pl.DataFrame:
    feats = pl.read_parquet(src / "part-0.parquet").sort("event_ts")
    return rows.sort("event_ts").join_asof(feats, on="event_ts", by="entity_id", strategy="backward",
                                           tolerance=dt.timedelta(seconds=TTL_S), check_sortedness=False)


def _timed(fn, reps: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _latency(fn, calls: int) -> dict[str, float]:
    for _ in range(min(200, calls)):
        fn()
    samples = np.empty(calls)
    for i in range(calls):
        t0 = time.perf_counter()
        fn()
        samples[i] = time.perf_counter() - t0
    return {"median_ms": round(float(np.median(samples)) * 1e3, 4), "p99_ms": round(float(np.percentile(samples, 99)) * 1e3, 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entities", type=int, default=1_000_000)
    p.add_argument("--features", type=int, default=10_000_000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--calls", type=int, default=5000, help="Online lookups per batch size.")
    p.add_argument("--ray", action="store_true", help="Also time the Ray path (partitions=4).")
    a = p.parse_args()

    from benchmarks._common import machine
    from raymlops.features.materialize import materialize
    from raymlops.features.offline import get_historical_features
    from raymlops.features.online import OnlineFeatures
    from raymlops.features.stores import SQLiteOnlineStore

    root = Path(tempfile.mkdtemp(prefix="bench-features-"))
    src, rows = _data(root, a.entities, a.features)
    repo = _repo(root, src)
    rows_pl = pl.from_arrow(rows)

    polars_s, base = _timed(lambda: _polars_baseline(src, rows_pl), a.reps)
    ours_s, ours = _timed(lambda: get_historical_features(repo, "s", rows), a.reps)
    # Same answers (the baseline reorders rows; compare as sets of rows).
    key = ["entity_id", "event_ts", "label"]
    same = pl.from_arrow(ours).sort(key).equals(base.select([*key, *FEATURES]).sort(key))
    retrieval = {"entity_rows": a.entities, "feature_rows": a.features, "raymlops_s": round(ours_s, 3),
                 "polars_join_asof_s": round(polars_s, 3), "ratio": round(ours_s / polars_s, 2),
                 "same_rows": bool(same)}
    if a.ray:
        import ray

        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray_s, _ = _timed(lambda: get_historical_features(repo, "s", rows, partitions=4), a.reps)
        retrieval["raymlops_ray_s"] = round(ray_s, 3)
        ray.shutdown()

    t0 = time.perf_counter()
    (result,) = materialize(repo, full=True, end=dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc))
    materialize_s = time.perf_counter() - t0
    store = SQLiteOnlineStore(root / "online.sqlite")
    online = OnlineFeatures(store, repo.service("s"), clock=lambda: T0_US / 1e6 + DAYS * 86_400)
    rng = np.random.default_rng(1)
    ids = [int(i) for i in rng.integers(0, a.entities, 100 * a.calls)]
    it1, it100 = iter(ids), iter(range(a.calls * 2))
    one = _latency(lambda: online.get({"entity_id": [next(it1)]}), a.calls)
    hundred = _latency(lambda: online.get({"entity_id": ids[(next(it100) % a.calls) * 100:][:100]}), a.calls)
    lookup = {"store": "sqlite", "entities_in_store": result.entities, "materialize_s": round(materialize_s, 2),
              "calls": a.calls, "1_entity": one, "100_entities": hundred,
              "feast_sqlite_median_ms": {"1_entity": 0.14, "100_entities": 3.0}}

    print(f"\nbench_features — median of {a.reps} (retrieval), {a.calls} calls (lookup)\n")
    print("historical retrieval | seconds")
    print("--- | ---")
    print(f"raymlops get_historical_features (1 process) | {retrieval['raymlops_s']}")
    if "raymlops_ray_s" in retrieval:
        print(f"raymlops on Ray (4 partitions) | {retrieval['raymlops_ray_s']}")
    print(f"polars read + sort + join_asof | {retrieval['polars_join_asof_s']}")
    print(f"ratio (goal <= 1.5) | {retrieval['ratio']}  (same rows: {same})\n")
    print("online lookup (SQLite) | median ms | p99 ms | Feast+SQLite median ms")
    print("--- | --- | --- | ---")
    print(f"1 entity | {one['median_ms']} | {one['p99_ms']} | 0.14")
    print(f"100 entities | {hundred['median_ms']} | {hundred['p99_ms']} | 3.0")
    out = HERE / "results" / "bench_features.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "reps": a.reps, "retrieval": retrieval, "lookup": lookup},
                              indent=2))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
