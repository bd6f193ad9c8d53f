"""How the CT pipeline's cost grows with the data: one run per size, the time of every step and rows per second.

For each size the script generates that many rows of the churn data (7 daily files; not timed), then runs the whole
CT pipeline in this process (``run_ct_pipeline``: ingest + validate, prepare, train, evaluate with the naive and the
HistGradientBoosting baselines, check_package, bless, register), on its own fresh storage and MLflow database, with
the config's defaults except ``train.epochs`` (and tuning off). The table shows each step's seconds (the pipeline's own
step records), the total wall time from the call to its return (so start-up and the gaps between steps count), rows
per second over the whole run, and the peak memory of this process and every process below it (Ray's GCS, raylet
and workers), counted as PSS so pages shared between them count once (benchmarks/_common.Watch).

    python benchmarks/bench_ct.py [--rows 100000 1000000 10000000] [--epochs 3]

Goals (issue 15): 100k rows <= 15 s; 10M rows must stream, peak memory <= 6 GiB. The load average before and after
each size is printed, with the share of CPU other processes used meanwhile; a busy run is marked as such.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks._common import Watch, machine, print_load  # noqa: E402

STEPS = ("validate", "prepare", "train", "evaluate", "check_package", "bless", "register")
DAYS = 7
GOAL_100K_S = 15.0
GOAL_PEAK_GIB = 6.0


def _generate(landing: Path, rows: int) -> None:
    from raymlops.data.synthetic import generate

    generate(str(landing), rows_per_day=-(-rows // DAYS), days=DAYS, seed=7)


def run_one(rows: int, epochs: int, root: Path) -> dict:
    from raymlops.config import load_config
    from raymlops.ct import run_ct_pipeline

    landing = root / "landing"
    t = time.perf_counter()
    _generate(landing, rows)
    generate_s = time.perf_counter() - t
    cfg = load_config(None, [f"storage_uri={root / 'store'}", f"tracking_uri=sqlite:///{root / 'mlflow.db'}",
                             f"data.source={landing}", f"train.epochs={epochs}", "tune.enabled=false"])
    lines: list[str] = []
    with Watch() as watch:
        t = time.perf_counter()
        result = run_ct_pipeline(cfg, progress=lines.append)
        total_s = time.perf_counter() - t
    report = watch.report()
    steps = {name: round(s.duration_s, 2) for name, s in result.pipeline.steps.items()}
    return {"rows": rows, "status": result.status, "error": result.error, "generate_s": round(generate_s, 1),
            "total_s": round(total_s, 2), "rows_per_s": round(rows / total_s), "steps_s": steps,
            "peak_pss_gib": round(report["peak_pss_bytes"] / 2**30, 2), "load": report,
            "last_lines": lines[-3:]}


def _print_table(results: list[dict]) -> None:
    cols = [s for s in STEPS if any(s in r["steps_s"] for r in results)]
    print(f"\n{'rows':>11} {'status':>9} " + " ".join(f"{c[:9]:>9}" for c in cols)
          + f" {'total s':>8} {'rows/s':>9} {'peak GiB':>8}")
    for r in results:
        print(f"{r['rows']:>11,} {r['status']:>9} " + " ".join(f"{r['steps_s'].get(c, 0):>9.2f}" for c in cols)
              + f" {r['total_s']:>8.1f} {r['rows_per_s']:>9,} {r['peak_pss_gib']:>8.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000],
                        help="data sizes to run, one full pipeline each (default: 100k 1M 10M)")
    parser.add_argument("--epochs", type=int, default=3, help="train.epochs for every size (default 3)")
    parser.add_argument("--out", default=str(HERE / "results" / "bench_ct.json"), help="where the JSON goes")
    args = parser.parse_args(argv)

    import ray

    from raymlops._ray import init_ray

    init_ray()
    results = []
    try:
        for rows in args.rows:
            print(f"--- {rows:,} rows", flush=True)
            with tempfile.TemporaryDirectory(prefix="bench-ct-") as tmp:
                r = run_one(rows, args.epochs, Path(tmp))
            print(f"{r['status']} in {r['total_s']:.1f} s ({r['rows_per_s']:,} rows/s), peak {r['peak_pss_gib']} GiB;"
                  f" steps {r['steps_s']}" + (f"; error: {r['error']}" if r["error"] else ""))
            print_load(r["load"])
            results.append(r)
    finally:
        ray.shutdown()
    _print_table(results)
    for r in results:
        if r["rows"] == 100_000:
            print(f"goal 100k rows <= {GOAL_100K_S:g} s: {'met' if r['total_s'] <= GOAL_100K_S else 'MISSED'} "
                  f"({r['total_s']:.1f} s)")
        if r["rows"] >= 10_000_000:
            print(f"goal peak <= {GOAL_PEAK_GIB:g} GiB at {r['rows']:,} rows: "
                  f"{'met' if r['peak_pss_gib'] <= GOAL_PEAK_GIB else 'MISSED'} ({r['peak_pss_gib']} GiB)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine(), "epochs": args.epochs, "results": results}, indent=2))
    print(f"written {args.out}")
    return 0 if all(r["status"] == "completed" for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
