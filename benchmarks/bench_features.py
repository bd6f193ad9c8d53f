"""Feature store: point-in-time retrieval vs bare polars ``join_asof`` and vs Feast; online lookup vs Feast.

Questions:
1. What do raymlops' guarantees (every row kept in order, exact times and zones, created-time ties, declared
   types, TTL) cost over the fastest single-process join? 1M entity rows against 10M feature rows read from the
   same parquet file: ``get_historical_features`` (one process) vs ``pl.read_parquet`` + sort + ``join_asof``
   (backward, by key, tolerance = TTL). Goal: ratio <= 1.5. With ``--ray`` also the Ray path (partitions = 4).
2. The same job in Feast, measured in the same run on the same files: ``FeatureStore.get_historical_features``
   (local provider, its default file offline store on dask) on the same entity rows, ``materialize`` of the whole source into its
   SQLite online store, and ``get_online_features`` for 1 and 100 keys (the same key sequence). Feast pins
   pandas < 3, so it runs in its own virtualenv, which this script creates on first use (``python -m venv`` under
   ``~/.cache/raymlops-bench/``, then ``pip install feast==FEAST_VERSION``: minutes, once) and calls through
   ``benchmarks/_feast_side.py``. Feast's joined rows are compared with raymlops': Feast's file store leaves out
   an entity row whose entity has features but none within the TTL (raymlops keeps it, with nulls); the rows it
   returns should carry the same values.
3. Online lookup latency through ``OnlineFeatures`` on the SQLite store holding the materialised entities, for 1
   and 100 entity keys per call (one view, 3 features), median and p99 over many calls, beside Feast's. Goal: beat
   Feast with SQLite. Not the same in one respect: raymlops applies the TTL on online reads, Feast does not.

The load average before and after is printed, with the share of CPU other processes used meanwhile; a run on a
busy machine is marked as such (benchmarks/_common.py).

    python benchmarks/bench_features.py                     # 1M x 10M, 3 repetitions (quiet machine)
    python benchmarks/bench_features.py --entities 100000 --features 1000000 --reps 1 --ray
    python benchmarks/bench_features.py --no-feast          # without the Feast columns
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
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
# One timing loop for both sides: _feast_side runs in Feast's own virtualenv, so it imports nothing of ours.
from benchmarks._feast_side import _latency  # noqa: E402

T0_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
DAYS = 30
TTL_S = 7 * 86_400
FEATURES = ["f_float", "f_int", "f_str"]
FEAST_VERSION = "0.67.0"
END = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)  # materialisation end: after every feature row


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


def _feast_python(venv: Path, version: str) -> Path:
    """Feast's own virtualenv at ``venv`` (made once: Feast pins pandas < 3, raymlops' venv has pandas 3)."""
    python, ready = venv / "bin" / "python", venv / f".feast-{version}-installed"
    if not ready.exists():
        print(f"creating Feast's virtualenv {venv} (pip install feast=={version}; minutes, once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        log = venv / "pip.log"
        with log.open("w") as out:
            done = subprocess.run([str(python), "-m", "pip", "install", "-q", f"feast=={version}"], stdout=out,
                                  stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            raise SystemExit(f"pip install feast=={version} failed (log: {log}); rerun, or pass --no-feast")
        ready.touch()
    return python


def _feast(root: Path, rows: pa.Table, ids: list[int], a) -> dict:
    """Run benchmarks/_feast_side.py in Feast's venv on the same files; its figures, or why there are none."""
    python = _feast_python(Path(a.feast_venv).expanduser() / f"feast-{a.feast_version}", a.feast_version)
    pq.write_table(rows, root / "rows.parquet")
    np.save(root / "ids.npy", np.asarray(ids, dtype=np.int64))
    try:
        out = subprocess.run([str(python), str(HERE / "_feast_side.py"), str(root), str(TTL_S), END.isoformat(),
                              str(a.calls), str(a.reps)], capture_output=True, text=True, timeout=a.feast_timeout,
                             check=False, env={**os.environ, "FEAST_USAGE": "False"})  # no usage reporting
    except subprocess.TimeoutExpired:
        return {"error": f"Feast did not finish within {a.feast_timeout} s (--feast-timeout)"}
    if out.returncode != 0:
        return {"error": f"Feast failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _compare(ours: pa.Table, feast_file: Path) -> dict:
    """How Feast's joined rows compare with raymlops': rows it left out, and agreement on the rows it returned.

    Feast's file (dask) store drops an entity row whose entity has feature rows but none within the TTL before
    its time (its ``_filter_ttl``), where raymlops (and ``join_asof``) keep the row with null features.
    """
    key = ["entity_id", "event_ts", "label"]
    theirs = pl.read_parquet(feast_file).select(key + FEATURES).with_columns(
        pl.col("event_ts").cast(pl.Datetime("us", "UTC")), pl.col("f_int").cast(pl.Int64, strict=False),
        pl.col("f_float").cast(pl.Float64))
    both = pl.from_arrow(ours).select(key + FEATURES).join(theirs, on=key, how="inner", suffix="_feast")
    equal = pl.Series([True] * both.height)
    for c in FEATURES:
        equal = equal & both[c].eq_missing(both[f"{c}_feast"])
    return {"feast_rows": theirs.height, "rows_feast_left_out": ours.num_rows - both.height,
            "equal_share_of_returned": round(float(equal.mean()), 6) if both.height else None}


def _timed(fn, reps: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entities", type=int, default=1_000_000)
    p.add_argument("--features", type=int, default=10_000_000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--calls", type=int, default=5000, help="Online lookups per batch size.")
    p.add_argument("--ray", action="store_true", help="Also time the Ray path (partitions=4).")
    p.add_argument("--no-feast", action="store_true", help="Leave out the Feast columns.")
    p.add_argument("--feast-version", default=FEAST_VERSION)
    p.add_argument("--feast-venv", default=os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"),
                                                        "raymlops-bench"),
                   help="Directory holding Feast's virtualenv (feast-VERSION), made on first use.")
    p.add_argument("--feast-timeout", type=int, default=3600, help="Seconds Feast's side may take.")
    a = p.parse_args()

    from benchmarks._common import Watch, machine, print_load
    from raymlops.features.materialize import materialize
    from raymlops.features.offline import get_historical_features
    from raymlops.features.online import OnlineFeatures
    from raymlops.features.stores import SQLiteOnlineStore

    if not a.no_feast:  # made before the watch starts: installing is not part of the run
        _feast_python(Path(a.feast_venv).expanduser() / f"feast-{a.feast_version}", a.feast_version)
    root = Path(tempfile.mkdtemp(prefix="bench-features-"))
    src, rows = _data(root, a.entities, a.features)
    repo = _repo(root, src)
    rows_pl = pl.from_arrow(rows)
    rng = np.random.default_rng(1)
    ids = [int(i) for i in rng.integers(0, a.entities, 100 * a.calls)]

    with Watch(interval_s=1.0) as watch:
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
        (result,) = materialize(repo, full=True, end=END)
        materialize_s = time.perf_counter() - t0
        store = SQLiteOnlineStore(root / "online.sqlite")
        online = OnlineFeatures(store, repo.service("s"), clock=lambda: T0_US / 1e6 + DAYS * 86_400)
        it1, it100 = iter(ids), iter(range(a.calls * 2))
        one = _latency(lambda: online.get({"entity_id": [next(it1)]}), a.calls)
        hundred = _latency(lambda: online.get({"entity_id": ids[(next(it100) % a.calls) * 100:][:100]}), a.calls)
        feast = {"skipped": "--no-feast"} if a.no_feast else _feast(root, rows, ids, a)
    load = watch.report()
    if "historical_s" in feast:
        feast["answers"] = _compare(ours, root / "feast_joined.parquet")
    lookup = {"store": "sqlite", "entities_in_store": result.entities, "materialize_s": round(materialize_s, 2),
              "calls": a.calls, "1_entity": one, "100_entities": hundred}

    def f(path: str, digits: int = 3):
        v = feast
        for k in path.split("."):
            v = v.get(k) if isinstance(v, dict) else None
        return "n/a" if v is None else round(v, digits)

    print(f"\nbench_features — {a.entities:,} entity rows x {a.features:,} feature rows; median of {a.reps} "
          f"(retrieval), {a.calls} calls (lookup)\n")
    print("historical retrieval | seconds")
    print("--- | ---")
    print(f"raymlops get_historical_features (1 process) | {retrieval['raymlops_s']}")
    if "raymlops_ray_s" in retrieval:
        print(f"raymlops on Ray (4 partitions) | {retrieval['raymlops_ray_s']}")
    print(f"polars read + sort + join_asof | {retrieval['polars_join_asof_s']}")
    print(f"Feast {feast.get('feast', '')} get_historical_features (file/dask offline store) | {f('historical_s')}")
    print(f"ratio raymlops / polars (goal <= 1.5) | {retrieval['ratio']}  (same rows: {same})")
    print(f"rows Feast returned / left out (no feature within TTL) | {f('answers.feast_rows', 0)} / "
          f"{f('answers.rows_feast_left_out', 0)}")
    print(f"share of Feast's rows with raymlops' values | {f('answers.equal_share_of_returned', 6)}\n")
    print(f"materialise {result.entities:,} entities into SQLite | raymlops {lookup['materialize_s']} s | "
          f"Feast {f('materialize_s', 2)} s\n")
    print("online lookup (SQLite) | raymlops median ms | raymlops p99 ms | Feast median ms | Feast p99 ms")
    print("--- | --- | --- | --- | ---")
    for n in ("1_entity", "100_entities"):
        print(f"{n.replace('_', ' ')} | {lookup[n]['median_ms']} | {lookup[n]['p99_ms']} | "
              f"{f(n + '.median_ms', 4)} | {f(n + '.p99_ms', 4)}")
    if "error" in feast:
        print(f"\nFeast: {feast['error']}")
    print()
    print_load(load)
    out = HERE / "results" / "bench_features.json"
    out.parent.mkdir(exist_ok=True)
    load.pop("peak_pss_bytes")
    out.write_text(json.dumps({"machine": machine(), "reps": a.reps, "retrieval": retrieval, "lookup": lookup,
                               "feast": feast, "load": load}, indent=2))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
