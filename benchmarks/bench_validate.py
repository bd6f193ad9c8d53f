"""Profile + validate N generated rows: raymlops on Ray Data vs the same statistics in one polars process.

Question: what does distributing the statistics over Ray Data cost on one small machine, against the fastest
single-process tool doing the same job? Goal (2-core machine): ratio <= 1.5 at 1M and 10M rows, Ray's start-up
reported apart, peak memory <= 4 GiB.

The same job on both sides: per numeric column count, nulls, non-finite, min, max, mean, variance, 7 quantiles
and a histogram on the reference edges; per categorical column the category counts. raymlops' quantiles come from
a one-pass DDSketch-style sketch (1% relative error on the value). The polars baseline is timed twice, with
polars' own sketch (``approx_quantile(error=0.01)``: KLL, or REQ since the 0.01/0.99 tails are asked; 1% rank
error) and with its exact quantiles (which meet any error bound); the ratio is taken against the FASTER of the
two. At 1M-10M rows polars' exact quantiles are the faster (its docs: the sketch pays off past ~100M rows).

Peak memory is the same measure on both sides: the largest sum of PSS (/proc/PID/smaps_rollup) over the measuring
process and its descendants (raymlops: driver, GCS, raylet, every Ray worker), sampled every 0.25 s; PSS counts a
page shared by N processes (the object store, shared libraries) as 1/N in each, so it is counted once in the sum.
Each measurement runs in its own subprocess, so a measurement's memory is its own work's.

The load average before and after each size is printed, with the share of CPU that other processes used meanwhile;
a size measured on a busy machine is marked as such (see benchmarks/_common.py).

    python benchmarks/bench_validate.py                # 1M and 10M rows, 3 repetitions each (quiet machine)
    python benchmarks/bench_validate.py --rows 1000000 --reps 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import Watch, machine, print_load  # noqa: E402  (benchmarks/_common.py)

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


def _polars_worker(data: str, edges_json: str, exact: str = "approx") -> dict:
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
        if exact == "exact":
            exprs += [finite.quantile(q).alias(f"{c}:q{q}") for q in QUANTILES]
        else:  # one sketch per column, as raymlops keeps one per column
            exprs.append(finite.approx_quantile(QUANTILES, error=0.01).alias(f"{c}:quantiles"))
        # histogram on the reference edges, as raymlops computes it
        exprs.append(finite.cut(edges[c][1:-1]).value_counts().implode().alias(f"{c}:hist"))
    for c in CATEGORICAL:
        exprs.append(pl.col(c).cast(pl.String).value_counts().implode().alias(f"{c}:counts"))
    with Watch() as watch:
        lf.select(exprs).collect()
    elapsed = time.perf_counter() - t0
    return {"seconds": elapsed, "cpu_seconds": watch.our_cpu_s(), "peak_bytes": watch.peak_pss}


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
    with Watch() as watch:  # this process and the Ray it started: GCS, raylet, workers
        t1 = time.perf_counter()
        outcome = validate_data(cfg, progress=lambda m: None)
        elapsed = time.perf_counter() - t1
    ray.shutdown()
    return {"seconds": elapsed, "cpu_seconds": watch.our_cpu_s(), "startup_seconds": startup,
            "peak_bytes": watch.peak_pss,
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
    results, loads = [], []
    for rows in sizes:
        data = _data(rows, root)
        storage = root / f"store-{rows}"
        # Freeze schema + reference once (first accepted data), so every timed run is a validation against it.
        _spawn("ray", str(data), str(storage))
        from raymlops.core.sketches import DatasetProfile, reference_edges

        ref_file = next((storage / "schemas" / "churn").glob("v*.reference.json"))
        edges = reference_edges(DatasetProfile.from_dict(json.loads(ref_file.read_text())), 10)
        edges_json = json.dumps({c: edges[c] for c in NUMERIC})
        with Watch(interval_s=1.0) as watch:
            ray_runs = [_spawn("ray", str(data), str(storage)) for _ in range(a.reps)]
            pl_runs = [_spawn("polars", str(data), edges_json, "approx") for _ in range(a.reps)]
            exact_runs = [_spawn("polars", str(data), edges_json, "exact") for _ in range(a.reps)]
        load = watch.report()
        loads.append({"rows": rows, **{k: v for k, v in load.items() if k != "peak_pss_bytes"}})
        r_s = statistics.median(r["seconds"] for r in ray_runs)
        p_s = statistics.median(r["seconds"] for r in pl_runs)
        e_s = statistics.median(r["seconds"] for r in exact_runs)
        row = {
            "rows": rows,
            "raymlops_s": round(r_s, 3),
            "polars_approx_s": round(p_s, 3),
            "polars_exact_s": round(e_s, 3),
            "ratio": round(r_s / min(p_s, e_s), 2),
            # CPU seconds of the measured process tree: what the job costs, less distorted by others' load
            "raymlops_cpu_s": round(statistics.median(r["cpu_seconds"] for r in ray_runs), 2),
            "polars_approx_cpu_s": round(statistics.median(r["cpu_seconds"] for r in pl_runs), 2),
            "polars_exact_cpu_s": round(statistics.median(r["cpu_seconds"] for r in exact_runs), 2),
            "ray_startup_s": round(statistics.median(r["startup_seconds"] for r in ray_runs), 2),
            "raymlops_peak_gib": round(max(r["peak_bytes"] for r in ray_runs) / 2**30, 2),
            "polars_peak_gib": round(max(r["peak_bytes"] for r in pl_runs + exact_runs) / 2**30, 2),
            "decision": ray_runs[0]["decision"],
            "busy": "yes" if load["busy"] else "no",
        }
        results.append(row)
        print(f"{rows:,} rows: {row}", flush=True)

    print(f"\nbench_validate — profile + validate, median of {a.reps}; ratio against the faster polars variant\n")
    cols = list(results[0])
    print(" | ".join(cols))
    print(" | ".join("---" for _ in cols))
    for r in results:
        print(" | ".join(f"{r[c]:,}" if isinstance(r[c], int) else str(r[c]) for c in cols))
    print()
    for r, load in zip(results, loads, strict=True):
        print(f"{r['rows']:,} rows: ", end="")
        print_load(load)
    print("goals: ratio <= 1.5 " + ", ".join(f"{r['rows']:,}: {'met' if r['ratio'] <= 1.5 else 'missed'}"
                                             for r in results)
          + "; peak <= 4 GiB " + ", ".join(f"{r['rows']:,}: {'met' if r['raymlops_peak_gib'] <= 4 else 'missed'}"
                                           for r in results))
    out = HERE / "results" / "bench_validate.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "reps": a.reps, "ratio_against": "min(polars_approx_s, polars_exact_s)",
                               "results": results, "load": loads}, indent=2))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
