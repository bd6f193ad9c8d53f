"""Your own pipeline in ~60 lines: three components, wired by name, cached, resumable and tracked in MLflow.

Run it::

    python examples/custom_pipeline.py --storage ./.raymlops --tracking sqlite:///./.raymlops/mlflow.db

Run it twice: the second run prints ``cached`` for every step and executes nothing. Change ``--rows`` and every
step runs again; change ``--quantile`` and only ``fit`` does (its inputs did not change).

How it works:

* ``@component`` turns a plain function ``fn(ctx, **inputs_and_params)`` into a pipeline step. ``ctx.path()`` is
  where it writes (``{storage}/runs/{run_id}/{step}/``); ``ctx.artifact()`` describes what it wrote (a pointer and
  a digest: data never moves through Ray or MLflow); ``ctx.progress()`` prints on your console even from a Ray
  task on another machine; ``ctx.log_metrics()`` and ``ctx.log_artifact()`` land in the step's MLflow run.
* Each step runs as a Ray task with the resources the decorator asks for (``num_cpus``, ``num_gpus``,
  ``runtime_env``); ``executor="driver"`` runs it in this process instead (use it for steps that start Ray Train or
  Ray Tune, which manage their own workers).
* ``Step(component, inputs={"arg": "other_step.output"}, params={...})`` wires steps; the order comes from the
  inputs. A step is skipped when its fingerprint (code, version, params, input digests) matches an earlier one.
* If a step fails, fix the cause and pass ``resume_run_id=result.run_id``: only unfinished steps run again.
* MLflow: one parent run per pipeline run (experiment = pipeline name), one child run per step.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics

from raymlops.pipeline import Pipeline, PipelineResult, Step, component, run_pipeline


@component(outputs=("data",), num_cpus=0.25)
def generate(ctx, rows: int, seed: int = 0):
    """Write a CSV of synthetic (amount, label) rows."""
    rng = random.Random(seed)
    with open(ctx.path("data.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["amount", "label"])
        for _ in range(rows):
            label = rng.random() < 0.3
            writer.writerow([round(rng.gauss(80 if label else 50, 10), 2), int(label)])
    ctx.progress(f"wrote {rows} rows")
    return {"data": ctx.artifact("data.csv", kind="dataset", metadata={"rows": rows})}


@component(outputs=("stats",), num_cpus=0.25, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
def profile(ctx, data):
    """Per-label statistics of `amount`, saved as JSON and copied into MLflow."""
    by_label: dict[str, list[float]] = {"0": [], "1": []}
    with open(data.uri) as f:
        for row in csv.DictReader(f):
            by_label[row["label"]].append(float(row["amount"]))
    stats = {
        k: {"n": len(v), "mean": statistics.fmean(v), "std": statistics.pstdev(v)}
        for k, v in by_label.items()
    }
    with open(ctx.path("stats.json"), "w") as f:
        json.dump(stats, f, indent=2)
    ctx.log_artifact("stats.json")
    return {"stats": ctx.artifact("stats.json", kind="statistics")}


@component(outputs=("threshold", "accuracy"), executor="driver")
def fit(ctx, data, stats, quantile: float = 0.5):
    """A one-parameter 'model': the amount threshold between the two label means."""
    with open(stats.uri) as f:
        s = json.load(f)
    threshold = s["0"]["mean"] + quantile * (s["1"]["mean"] - s["0"]["mean"])
    with open(data.uri) as f:
        rows = list(csv.DictReader(f))
    accuracy = sum((float(r["amount"]) > threshold) == (r["label"] == "1") for r in rows) / len(rows)
    ctx.log_metrics({"accuracy": accuracy, "threshold": threshold})
    ctx.progress(f"threshold {threshold:.2f}, accuracy {accuracy:.3f}")
    return {"threshold": threshold, "accuracy": accuracy}


def build(rows: int = 1000, quantile: float = 0.5) -> Pipeline:
    """The example pipeline: generate -> profile -> fit (fit also reads the raw data)."""
    return Pipeline(
        "custom-example",
        [
            Step(generate, params={"rows": rows}),
            Step(profile, inputs={"data": "generate.data"}),
            Step(fit, inputs={"data": "generate.data", "stats": "profile"}, params={"quantile": quantile}),
        ],
    )


def main(
    storage_uri: str, tracking_uri: str | None, rows: int = 1000, quantile: float = 0.5, progress=print
) -> PipelineResult:
    """Run the example once (Ray must be initialised) and return the result."""
    result = run_pipeline(
        build(rows, quantile), storage_uri=storage_uri, tracking_uri=tracking_uri, progress=progress
    )
    for name, step in result.steps.items():
        progress(f"  {name:<9} {step.status:<9} {step.duration_s:6.2f}s  fp {step.fingerprint[:12]}")
    return result


if __name__ == "__main__":
    import ray

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="./.raymlops")
    parser.add_argument("--tracking", default="sqlite:///./.raymlops/mlflow.db")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--quantile", type=float, default=0.5)
    args = parser.parse_args()
    os.makedirs(args.storage, exist_ok=True)  # the default SQLite tracking database lives there
    ray.init()
    res = main(args.storage, args.tracking, args.rows, args.quantile)
    print(f"threshold = {res.outputs.get('fit.threshold')}")
    raise SystemExit(0 if res.status == "completed" else 1)
