"""Training path costs: Ray Train vs a plain PyTorch loop, Ray Tune's overhead per trial, the whole CT pipeline.

Questions and goals (2-core machine):
1. Ray Train (``train_model``: workers fed by Ray Data; 2 workers, and 1 worker to separate DDP's cost) against
   - the plain loop (``train_local``: the same ``fit_loop``, model and rows, in this process, no Ray) at 1 thread
     and at the Ray run's total thread count; 1 Ray Train worker against the faster plain run (on a shared 2-core
     machine two intra-op threads can be far slower than one): goal ≤ 1.2 per steady epoch;
   - native torch DDP with the same N processes (``torch.distributed`` with gloo, spawned by torch.multiprocessing,
     no Ray; the same ``fit_loop``, model, rows per rank, batches and a checkpoint per epoch): goal ≤ 1.10.
   Fixed start-up (time to the first epoch minus one steady epoch) is reported apart; goal ≤ 5 s for Ray Train.
   "Epoch wall" is the gap between epoch reports seen by the driver (checkpoint and report included); "in loop"
   is the loop's own epoch_time_s.
2. Tune overhead per trial = (tune wall time − sum of trial times) / trials, ``num_samples`` tiny trials run one at
   a time (so the trial times can be summed). Goal ≤ 0.3 s per trial.
3. The CT pipeline (``run_ct_pipeline``, tune off) on N rows: wall time and the per-step breakdown.

Each part prints the load average before and after it, the share of the CPU other processes used while it ran
(``_common.Watch``), and says when the machine was too busy (1-minute load above the core count, or one of Watch's
reasons) for its absolute seconds to be trusted; the ratios, measured side by side, suffer less.
``benchmarks/profile_train_startup.py`` breaks one Ray Train fit's start-up into its phases.

One process, one Ray (``ray.init(num_cpus=2)``), one run; medians over epochs. The CT pipeline runs first, and
its prepared splits feed 1 and 2, so every part trains on the same rows.

    python benchmarks/bench_train.py                  # 100k rows, 4 epochs, 4 trials
    python benchmarks/bench_train.py --rows 20000 --epochs 3 --trials 2   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import Watch, actor_threads, machine  # benchmarks/_common.py, beside this script

# Before anything imports ray.train: the loop is written for Train v2 (as the CLI and the tests run it).
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing


def busy(load: tuple[float, float, float] | list[float]) -> bool:
    """A 1-minute load average above the core count: other work shared the CPUs, the seconds are inflated."""
    return load[0] > (os.cpu_count() or 1)


def load_line(label: str, before, after, watch: dict | None = None) -> str:
    """The load average before and after a part, the CPU others used during it (``_common.Watch``), and the
    verdict: too busy when the load exceeded the core count or ``Watch`` found a reason."""
    reasons = list((watch or {}).get("busy") or [])
    share = (watch or {}).get("others_cpu_share")
    warn = " — MACHINE TOO BUSY to trust absolute seconds" if busy(before) or busy(after) or reasons else ""
    others = "" if share is None or reasons else f"; other processes used {share:.0%} of the CPU"
    why = f" ({'; '.join(reasons)})" if reasons else ""
    return (f"{label}: load average {before[0]:.2f} before, {after[0]:.2f} after ({os.cpu_count()} cores)"
            f"{others}{warn}{why}")


class EpochClock:
    """Driver-side arrival time of each epoch's report: the wall clock a user sees, checkpoints included."""

    def __init__(self):
        self.start = time.perf_counter()
        self.arrivals: list[float] = []
        self.in_loop: list[float] = []

    def __call__(self, metrics: dict) -> None:
        self.arrivals.append(time.perf_counter())
        self.in_loop.append(float(metrics.get("epoch_time_s", "nan")))

    def summary(self) -> dict:
        gaps = [b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)]
        steady = statistics.median(gaps) if gaps else float("nan")
        first = self.arrivals[0] - self.start if self.arrivals else float("nan")
        return {"epochs": len(self.arrivals), "time_to_first_epoch_s": first, "steady_epoch_s": steady,
                "startup_s": first - steady, "epoch_gaps_s": gaps,
                "in_loop_epoch_s": statistics.median(self.in_loop[1:] or self.in_loop or [float("nan")])}


# ------------------------------------------------------------------------------------- native torch DDP
class _DDPIO:
    """fit_loop's io for a torch.distributed (gloo) rank spawned without Ray: DDP, all-reduce, rank 0 checkpoints
    each epoch (as the Ray Train run does) and posts the epoch's metrics with its arrival time."""

    def __init__(self, rank: int, world: int, checkpoint_dir: str, out):
        import torch

        self.device, self.rank, self.world = torch.device("cpu"), rank, world
        self.dir, self.out = checkpoint_dir, out

    def restore(self):
        return None

    def prepare(self, model):
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model) if self.world > 1 else model

    def all_reduce(self, values: list[float]) -> list[float]:
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def report(self, metrics: dict, save) -> None:
        import torch.distributed as dist

        if self.rank == 0:
            final = os.path.join(self.dir, f"epoch_{metrics['epoch']:04d}")
            tmp = tempfile.mkdtemp(prefix=".tmp-", dir=self.dir)
            save(tmp)
            os.replace(tmp, final)
            self.out.put((time.perf_counter(), dict(metrics)))
        dist.barrier()  # every rank waits for the checkpoint, as ray.train.report does


def _ddp_rank(rank: int, world: int, port: int, train: dict, spec: dict, arrays: dict, threads: int,
              checkpoint_dir: str, out) -> None:
    """One native DDP rank: the same fit_loop, model, rows (shard_arrays) and batches as a Ray Train worker."""
    import torch
    import torch.distributed as dist

    from raymlops.config import TrainConfig
    from raymlops.train.loop import fit_loop, in_memory_seed, numpy_batches, shard_arrays, skip_dynamo_import

    skip_dynamo_import()  # as a Ray Train worker does
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        tc = TrainConfig.model_validate(train)
        held = {s: shard_arrays([a], rank, world, equal=s == "train") for s, a in arrays.items()}

        def batches(split: str, epoch: int):
            return numpy_batches(held[split], tc.batch_size, split == "train", in_memory_seed(tc.seed, epoch, rank))

        fit_loop(tc, spec, batches, _DDPIO(rank, world, checkpoint_dir, out))
    finally:
        dist.destroy_process_group()


def bench_ddp(train_cfg, spec: dict, arrays: dict, world: int, threads: int, checkpoint_dir: str) -> dict:
    """Native torch DDP baseline: ``world`` processes spawned by torch.multiprocessing, gloo, no Ray."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.makedirs(checkpoint_dir, exist_ok=True)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    clock = EpochClock()  # from the spawn: process start and torch import count, as a Ray worker's start does
    procs = [ctx.Process(target=_ddp_rank, args=(rank, world, port, train_cfg.model_dump(mode="json"), spec, arrays,
                                                threads, checkpoint_dir, out)) for rank in range(world)]
    for proc in procs:
        proc.start()
    while len(clock.arrivals) < train_cfg.epochs:
        try:
            at, metrics = out.get(timeout=5)
        except Exception:  # queue.Empty: a rank that died ends the run
            if any(p.exitcode not in (None, 0) for p in procs):
                raise SystemExit(f"native DDP rank failed: exit codes {[p.exitcode for p in procs]}") from None
            continue
        clock.arrivals.append(at)
        clock.in_loop.append(float(metrics.get("epoch_time_s", "nan")))
    for proc in procs:
        proc.join()
    return clock.summary() | {"workers": world, "threads": world * threads}


# ------------------------------------------------------------------------------------------------- parts
def bench_ct(cfg) -> tuple[dict, str]:
    from raymlops.ct import run_ct_pipeline

    t0 = time.perf_counter()
    result = run_ct_pipeline(cfg, progress=lambda m: None)
    wall = time.perf_counter() - t0
    if result.status != "completed":
        raise SystemExit(f"CT pipeline {result.status}: {result.error}")
    steps = {name: round(s.duration_s, 2) for name, s in result.pipeline.steps.items()}
    return ({"wall_s": wall, "steps_s": steps, "outside_steps_s": wall - sum(steps.values()),
             "version": result.version}, result.pipeline.outputs["prepare.prepared"].uri)


def bench_train(cfg, prepared, store: str, workers: list[int]) -> dict:
    import torch

    from raymlops.train.loop import load_split, make_model_spec, split_datasets, train_local, train_model

    threads = actor_threads(cfg.train.cpus_per_worker)
    runs: dict[str, dict] = {}
    for n in workers:
        clock = EpochClock()
        train_model(cfg, prepared, storage_uri=store, run_name=f"bench-{n}w", params={"num_workers": n},
                    progress=clock)
        runs[f"ray_train_{n}w"] = clock.summary() | {"workers": n, "threads": n * threads}

    spec = make_model_spec(cfg.train, prepared.transform)
    t0 = time.perf_counter()
    arrays = {s: load_split(prepared, s) for s in ("train", "validation")}
    load_s = time.perf_counter() - t0
    before = torch.get_num_threads()
    try:
        for n in sorted({1, max(workers) * threads}):
            torch.set_num_threads(n)
            clock = EpochClock()
            train_local(cfg, spec, arrays["train"], arrays["validation"], progress=clock)
            summary = clock.summary()
            runs[f"plain_{n}t"] = summary | {"startup_s": summary["startup_s"] + load_s, "workers": 0, "threads": n}
    finally:
        torch.set_num_threads(before)
    for n in workers:
        if n > 1:
            runs[f"native_ddp_{n}p"] = bench_ddp(cfg.train, spec, arrays, n, threads, os.path.join(store, f"ddp-{n}"))
    # Apart, after the runs (so it does not warm them up): the driver's data part of Ray Train's start-up.
    t0 = time.perf_counter()
    split_datasets(prepared)
    datasets_s = time.perf_counter() - t0
    plain = {k: v for k, v in runs.items() if k.startswith("plain")}
    best = min(plain, key=lambda k: plain[k]["steady_epoch_s"])
    ray_main = runs[f"ray_train_{max(workers)}w"]
    ratios = {}
    for n in workers:
        ray_n, other = runs[f"ray_train_{n}w"], (plain[best] if n == 1 else runs[f"native_ddp_{n}p"])
        ratios[f"ray_train_{n}w"] = {
            "against": best if n == 1 else f"native_ddp_{n}p", "goal": 1.2 if n == 1 else 1.10,
            "wall": ray_n["steady_epoch_s"] / other["steady_epoch_s"],
            "in_loop": ray_n["in_loop_epoch_s"] / other["in_loop_epoch_s"]}
    return {"cpus_per_worker": cfg.train.cpus_per_worker, "threads_per_worker": threads, "epochs": cfg.train.epochs,
            "batch_size": cfg.train.batch_size, "rows": {k: len(v["y"]) for k, v in arrays.items()},
            "runs": runs, "baseline": best, "plain_load_s": load_s, "ray_data_materialize_s": datasets_s,
            "ratios": ratios,
            "steady_ratio": ray_main["steady_epoch_s"] / plain[best]["steady_epoch_s"],
            "in_loop_ratio": ray_main["in_loop_epoch_s"] / plain[best]["in_loop_epoch_s"]}


class TrialClock:
    """Driver-side arrival time of each trial's (single, one-epoch) result."""

    def __init__(self):
        self.arrivals: list[float] = []

    def __call__(self, metrics: dict) -> None:
        self.arrivals.append(time.perf_counter())


def _trial_time(trial: dict) -> float:
    # Tune's time_total_s: from the trial function's start to its last report.
    return float(trial["time_total_s"] if "time_total_s" in trial else trial["metrics"]["time_total_s"])


def bench_tune(cfg, prepared, store: str) -> dict:
    from raymlops.train.tune import tune_model

    clock = TrialClock()
    t0 = time.perf_counter()
    result = tune_model(cfg, prepared, storage_uri=store, run_name="bench-tune", progress=clock)
    end = time.perf_counter()
    trial_s = [_trial_time(t) for t in result.trials]
    cycles = [b - a for a, b in zip(clock.arrivals, clock.arrivals[1:], strict=False)]
    cycle = statistics.median(cycles) if cycles else float("nan")
    return {"trials": len(trial_s), "tune_wall_s": result.tune_time_s, "sum_trial_s": sum(trial_s),
            "trial_s": trial_s, "overhead_per_trial_s": (result.tune_time_s - sum(trial_s)) / len(trial_s),
            "trial_cycle_s": cycle, "steady_overhead_per_trial_s": cycle - statistics.median(trial_s),
            "to_first_result_s": clock.arrivals[0] - t0 if clock.arrivals else None,
            "after_last_result_s": end - clock.arrivals[-1] if clock.arrivals else None,
            "errors": [t["error"] for t in result.trials if t["error"]]}


# ------------------------------------------------------------------------------------------------ report
def _grid(head: tuple, rows: list[tuple]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    return [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]


def table(res: dict) -> str:
    tr, tu, ct = res["train"], res["tune"], res["ct"]
    out = [f"1. Ray Train vs plain PyTorch loop: {tr['rows']['train']:,} train + {tr['rows']['validation']:,} "
           f"validation rows per epoch, batch {tr['batch_size']}, {tr['epochs']} epochs, medians over epochs 2..n"]
    rows = []
    for name, r in tr["runs"].items():
        what = (f"Ray Train, {r['workers']} worker(s) × {tr['cpus_per_worker']} CPU × {tr['threads_per_worker']} thread"
                if name.startswith("ray_train") else
                f"native torch DDP (gloo, no Ray), {r['workers']} processes × {tr['threads_per_worker']} thread"
                if name.startswith("native_ddp") else f"plain loop, 1 process × {r['threads']} thread(s)")
        rows.append((what, f"{r['steady_epoch_s']:.2f}", f"{r['in_loop_epoch_s']:.2f}",
                     f"{r['time_to_first_epoch_s']:.2f}", f"{r['startup_s']:.2f}"))
    out += _grid(("run", "epoch wall (s)", "epoch in loop (s)", "first epoch at (s)", "fixed start-up (s)"), rows)
    for name, r in tr.get("ratios", {}).items():
        out.append(f"steady-state ratio {name} / {r['against']}: wall {r['wall']:.2f}, in loop {r['in_loop']:.2f} "
                   f"(goal ≤ {r['goal']:.2f})")
    out.append(f"the driver's part of Ray Train's start-up (splits read, transformed, put in the object store): "
               f"{tr['ray_data_materialize_s']:.1f} s")
    if "loadavg" in tr:
        out.append(load_line("part 1", *tr["loadavg"], tr.get("watch")))
    out += ["", f"2. Ray Tune: {tu['trials']} trials ({tu['trial_setup']})"]
    out += _grid(("tune wall (s)", "sum of trials (s)", "overhead per trial (s)", "trial cycle (s)",
                  "steady overhead per trial (s)", "first result at (s)", "after last result (s)"),
                 [(f"{tu['tune_wall_s']:.2f}", f"{tu['sum_trial_s']:.2f}", f"{tu['overhead_per_trial_s']:.2f}",
                   f"{tu['trial_cycle_s']:.2f}", f"{tu['steady_overhead_per_trial_s']:.2f}",
                   f"{tu['to_first_result_s']:.2f}", f"{tu['after_last_result_s']:.2f}")])
    out.append("overhead per trial = (wall − sum of trial times) / trials (goal ≤ 0.3 s); steady overhead = median gap "
               "between consecutive trial results − median trial time")
    if "loadavg" in tu:
        out.append(load_line("part 2", *tu["loadavg"], tu.get("watch")))
    out += ["", f"3. CT pipeline on {res['rows']:,} rows, tune off, train.epochs {ct['epochs']}: {ct['wall_s']:.1f} s wall"]
    steps = [(name, f"{s:.1f}", f"{100 * s / ct['wall_s']:.0f}%") for name, s in ct["steps_s"].items()]
    steps.append(("(outside the steps: run record, MLflow, DAG)", f"{ct['outside_steps_s']:.1f}",
                  f"{100 * ct['outside_steps_s'] / ct['wall_s']:.0f}%"))
    out += _grid(("step", "duration (s)", "share"), steps)
    if "loadavg" in ct:
        out.append(load_line("part 3", *ct["loadavg"], ct.get("watch")))
    return "\n".join(out)


def save(res: dict) -> Path:
    """Write the results so far (a part that fails later leaves the earlier ones; ``complete`` marks a full run)."""
    from raymlops.storage import atomic_write_text

    out = HERE / "results" / "bench_train.json"
    atomic_write_text(str(out), json.dumps({"complete": False} | res, indent=2, default=float))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000, help="rows generated (5 daily files)")
    ap.add_argument("--epochs", type=int, default=4, help="epochs of the Ray Train vs plain comparison")
    ap.add_argument("--workers", type=int, action="append", help="Ray Train workers (repeatable); default 2 and 1")
    ap.add_argument("--trials", type=int, default=4, help="Tune num_samples")
    ap.add_argument("--workdir", default=None, help="data and artifacts (default: a temp dir)")
    a = ap.parse_args()

    import ray

    from raymlops._ray import quiet_ray_data
    from raymlops.config import load_config
    from raymlops.data.prepare import load_prepared
    from raymlops.data.synthetic import generate

    load_start = os.getloadavg()
    root = Path(a.workdir or tempfile.mkdtemp(prefix="bench-train-"))
    days = 5
    generate(str(root / "landing"), rows_per_day=a.rows // days, days=days, seed=1)
    # As `raymlops` itself does: Train v2's 2 s report collection would otherwise floor every epoch at 2 s.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 * 1024, log_to_driver=False,
             configure_logging=False)
    ray_init_s = time.perf_counter() - t0
    quiet_ray_data()
    base = [f"storage_uri={root / 'store'}", f"tracking_uri=sqlite:///{root / 'mlflow.db'}",
            f"data.source={root / 'landing'}", "tune.enabled=false"]
    res: dict = {"rows": a.rows, "ray_init_s": ray_init_s, "loadavg_start": load_start}

    print(f"[1/3] CT pipeline on {a.rows:,} rows ...", flush=True)
    ct_cfg = load_config(None, base)
    before = os.getloadavg()
    with Watch(interval_s=1.0) as watch:  # this process and what it started (Ray's GCS, raylet, workers)
        res["ct"], prepared_uri = bench_ct(ct_cfg)
    res["ct"]["loadavg"], res["ct"]["watch"] = [before, os.getloadavg()], watch.report()
    res["ct"]["epochs"] = ct_cfg.train.epochs
    res["loadavg_after_ct"] = os.getloadavg()
    save(res)
    prepared = load_prepared(prepared_uri)

    print(f"[2/3] Ray Train vs plain loop, {a.epochs} epochs ...", flush=True)
    train_cfg = load_config(None, [*base, f"train.epochs={a.epochs}", "train.early_stopping_patience=0"])
    before = os.getloadavg()
    with Watch(interval_s=1.0) as watch:
        res["train"] = bench_train(train_cfg, prepared, str(root / "ckpt"), sorted(a.workers or [2, 1], reverse=True))
    res["train"]["loadavg"], res["train"]["watch"] = [before, os.getloadavg()], watch.report()
    print(load_line("  Ray Train vs plain vs native DDP", *res["train"]["loadavg"], res["train"]["watch"]),
          flush=True)
    res["loadavg_after_train"] = os.getloadavg()
    save(res)

    print(f"[3/3] Ray Tune, {a.trials} tiny trials, one at a time ...", flush=True)
    tune_cfg = load_config(None, [
        *base, "tune.enabled=true", f"tune.num_samples={a.trials}", "tune.max_concurrent_trials=1",
        "train.epochs=1", "tune.grace_period=1",
        'tune.search_space={"learning_rate": {"type": "loguniform", "low": 0.0001, "high": 0.01}}',
    ])
    before = os.getloadavg()
    with Watch(interval_s=1.0) as watch:
        res["tune"] = bench_tune(tune_cfg, prepared, str(root / "tune"))
    res["tune"]["loadavg"], res["tune"]["watch"] = [before, os.getloadavg()], watch.report()
    res["tune"]["trial_setup"] = (f"each {tune_cfg.train.cpus_per_worker} CPU, 1 epoch, learning_rate searched, "
                                  "max_concurrent_trials=1")
    res["loadavg_end"] = os.getloadavg()
    import torch

    res["machine"] = machine(torch_threads_driver=torch.get_num_threads())
    ray.shutdown()

    text = table(res)
    m = res["machine"]
    print(f"\nbench_train — one run; {m['cpu']}, {m['cores']} cores, {m['memory_mib']:,} MiB, torch {m['torch']}, "
          f"ray {m['ray']}; {load_line('whole run', res['loadavg_start'], res['loadavg_end'])}\n")
    print(text)
    res["table"] = text
    print(f"\nwritten to {save(res | {'complete': True})}")


if __name__ == "__main__":
    main()
