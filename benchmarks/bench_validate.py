"""Profile + validate N generated rows: raymlops on Ray Data vs the same statistics in one polars process.

Question: what does distributing the statistics over Ray Data cost on one small machine, against the fastest
single-process tool computing the same statistics? Goal (2-core machine): ratio ≤ 1.5 at 10M rows, Ray's start-up
reported apart, peak memory ≤ 4 GiB.

Each measurement runs in its own subprocess so that peak memory is that of the measured work alone
(raymlops: driver + every Ray worker process, sampled; polars: the process's max RSS).

    python benchmarks/bench_validate.py                # 1M and 10M rows, 3 repetitions each
    python benchmarks/bench_validate.py --rows 1000000 --reps 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NUMERIC = ["tenure_months", "monthly_charges", "total_charges", "support_calls", "usage_gb"]
CATEGORICAL = ["region", "plan", "payment_method", "churned"]
QUANTILES = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]


def _data(rows: int, root: Path) -> Path:
    out = root / f"data-{rows}"
    if not out.exists():
        from raymlops.data.synthetic import generate

        days = max(1, rows // 500_000)
        generate(str(out), rows_per_day=rows // days, days=days, seed=1)
    return out


def _polars_worker(data: str, edges_json: str) -> dict:
    import polars as pl

    edges = json.loads(edges_json)
    t0 = time.perf_counter()
    lf = pl.scan_parquet(f"{data}/*.parquet")
    exprs = []
    for c in NUMERIC:
        col = pl.col(c).cast(pl.Float64)
        finite = col.filter(col.is_finite())
        exprs += [
            col.count().alias(f"{c}:count"),
            col.null_count().alias(f"{c}:nulls"),
            (~col.is_finite()).sum().alias(f"{c}:nonfinite"),
            finite.min().alias(f"{c}:min"),
            finite.max().alias(f"{c}:max"),
            finite.mean().alias(f"{c}:mean"),
            finite.var(ddof=0).alias(f"{c}:var"),
        ]
        exprs += [finite.quantile(q).alias(f"{c}:q{q}") for q in QUANTILES]
        # histogram on the reference edges, as raymlops computes it
        exprs.append(finite.cut(edges[c][1:-1]).value_counts().implode().alias(f"{c}:hist"))
    for c in CATEGORICAL:
        exprs.append(pl.col(c).cast(pl.String).value_counts().implode().alias(f"{c}:counts"))
    lf.select(exprs).collect()
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": elapsed, "peak_bytes": peak}


class _RaySampler(threading.Thread):
    """Samples the summed RSS of this process and its descendants: the Ray it started (GCS, raylet, workers).

    Other Ray instances on the machine are not ours and are not counted.
    """

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = 0
        self.stop = threading.Event()

    def run(self):
        import psutil

        me = psutil.Process()
        while not self.stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self.peak = max(self.peak, total)
            self.stop.wait(0.2)


def _ray_worker(data: str, storage: str) -> dict:
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False,
             object_store_memory=512 * 1024 * 1024)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    startup = time.perf_counter() - t0
    from raymlops.config import load_config
    from raymlops.data.validate import validate_data

    cfg = load_config(None, [f"storage_uri={storage}", f"data.source={data}"])
    sampler = _RaySampler()
    sampler.start()
    t1 = time.perf_counter()
    outcome = validate_data(cfg, progress=lambda m: None)
    elapsed = time.perf_counter() - t1
    sampler.stop.set()
    sampler.join()
    ray.shutdown()
    return {"seconds": elapsed, "startup_seconds": startup, "peak_bytes": sampler.peak,
            "decision": outcome.decision, "rows": outcome.report.rows}


def _spawn(kind: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", kind, *args], capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, action="append", help="rows (repeatable); default 1M and 10M")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="where generated data is kept (default: a temp dir)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker == "polars":
        print(json.dumps(_polars_worker(*a.args)))
        return
    if a.worker == "ray":
        print(json.dumps(_ray_worker(*a.args)))
        return

    sizes = a.rows or [1_000_000, 10_000_000]
    root = Path(a.workdir or tempfile.mkdtemp(prefix="bench-validate-"))
    results = []
    for rows in sizes:
        data = _data(rows, root)
        storage = root / f"store-{rows}"
        # Freeze schema + reference once (first accepted data), so every timed run is a validation against it.
        _spawn("ray", str(data), str(storage))
        from raymlops.core.sketches import DatasetProfile, reference_edges

        ref_file = next((storage / "schemas" / "churn").glob("v*.reference.json"))
        edges = reference_edges(DatasetProfile.from_dict(json.loads(ref_file.read_text())), 10)
        ray_runs = [_spawn("ray", str(data), str(storage)) for _ in range(a.reps)]
        pl_runs = [_spawn("polars", str(data), json.dumps({c: edges[c] for c in NUMERIC})) for _ in range(a.reps)]
        r_s = statistics.median(r["seconds"] for r in ray_runs)
        p_s = statistics.median(r["seconds"] for r in pl_runs)
        results.append({
            "rows": rows,
            "raymlops_s": round(r_s, 3),
            "polars_s": round(p_s, 3),
            "ratio": round(r_s / p_s, 2),
            "ray_startup_s": round(statistics.median(r["startup_seconds"] for r in ray_runs), 2),
            "raymlops_peak_gib": round(max(r["peak_bytes"] for r in ray_runs) / 2**30, 2),
            "polars_peak_gib": round(max(r["peak_bytes"] for r in pl_runs) / 2**30, 2),
            "decision": ray_runs[0]["decision"],
        })

    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"\nbench_validate — profile + validate, median of {a.reps}; machine: {machine}\n")
    cols = list(results[0])
    print(" | ".join(cols))
    print(" | ".join("---" for _ in cols))
    for r in results:
        print(" | ".join(f"{r[c]:,}" if isinstance(r[c], int) else str(r[c]) for c in cols))
    out = HERE / "results" / "bench_validate.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "reps": a.reps, "results": results}, indent=2))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
