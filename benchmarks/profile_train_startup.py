"""Where the start-up of a Ray Train fit goes: a timeline of one ``train_model`` call, driver, controller and worker.

Timestamps (wall clock, one machine) are taken
- in the driver around ``train_model``'s parts (datasets, progress pump, trainer, fit, reading the checkpoint),
- in the Train controller by a callback (worker group starting / started / training started, each report),
- in the worker by wrapping the loop's phases (imports, io set-up, census, model prepare, each epoch, report).
Each phase is printed as seconds since ``train_model`` was called, with the load average, since the machine is
shared and absolute seconds move with it. So each mark also carries the CPU seconds its process had used by then
(``time.process_time``), and a sampler reads /proc for the CPU every process below the driver (Ray's GCS, raylet,
controller, workers, helper actors) used during the fit: CPU seconds do not grow with others' load, and on a
2-core machine they are what the start-up costs.

    python benchmarks/profile_train_startup.py --rows 14700 --epochs 3 --workers 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import _common  # benchmarks/_common.py, beside this script

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

TRACE = os.path.join(tempfile.gettempdir(), f"raymlops-train-trace-{os.getpid()}.jsonl")


def mark(event: str, trace: str = TRACE, **extra) -> None:
    """Append one timestamped event (any process on this machine)."""
    with open(trace, "a") as f:
        f.write(json.dumps({"t": time.time(), "cpu": time.process_time(), "pid": os.getpid(), "event": event,
                            **extra}) + "\n")


class CpuSampler(threading.Thread):
    """CPU seconds each process below the driver used while it ran, by process title (``ray::RayTrainWorker``)."""

    def __init__(self, interval_s: float = 0.2):
        super().__init__(daemon=True)
        self.interval_s, self.halt = interval_s, threading.Event()
        self.first: dict[int, int] = {}  # pid -> ticks at first sight (0 for a process started during the fit)
        self.last: dict[int, int] = {}
        self.names: dict[int, str] = {}

    def sample(self, start: bool = False) -> None:
        stats = _common._stats()
        for pid in _common.descendants(os.getpid(), stats):
            ticks = stats[pid][1]
            if pid not in self.names:
                self.first[pid] = ticks if start else 0
            if self.names.get(pid, "ray::IDLE") == "ray::IDLE" or not self.names[pid].startswith("ray::"):
                # a worker process takes its title when it becomes an actor (and keeps it after the actor ends)
                cmd = (_common._read(f"/proc/{pid}/cmdline") or "").split("\0")
                name = cmd[0] if cmd[0].startswith("ray::") else os.path.basename(" ".join(cmd[:2]))[:40]
                self.names[pid] = "driver" if pid == os.getpid() else name
            self.last[pid] = ticks

    def run(self) -> None:
        while not self.halt.wait(self.interval_s):
            self.sample()

    def stop(self) -> list[tuple[str, float, int]]:
        """(process title, CPU seconds used during the fit, processes) by title, most CPU first."""
        self.halt.set()
        self.join()
        self.sample()
        hz, by_name = os.sysconf("SC_CLK_TCK"), {}
        for pid, ticks in self.last.items():
            cpu, n = by_name.get(self.names[pid], (0.0, 0))
            by_name[self.names[pid]] = (cpu + (ticks - self.first[pid]) / hz, n + 1)
        return sorted(((k, c, n) for k, (c, n) in by_name.items()), key=lambda r: -r[1])


def traced_worker(config: dict) -> None:
    """The loop's worker function with its phases timed (patched here, in the worker process)."""
    trace = config.pop("_trace")
    mark("worker: train fn entered", trace)
    t0 = time.time()
    import torch  # noqa: F401

    import raymlops.train.loop as loop

    mark(f"worker: imports done ({loop.__file__})", trace, s=time.time() - t0)

    def wrap(owner, name, label):
        fn = getattr(owner, name)

        def timed(*a, **k):
            mark(f"worker: {label} start", trace)
            out = fn(*a, **k)
            mark(f"worker: {label} end", trace)
            return out

        setattr(owner, name, timed)

    wrap(loop, "take_census", "census")
    wrap(loop, "run_epoch", "train epoch")
    wrap(loop, "evaluate", "validation pass")
    for cls in ("_TrainIO", "_FastIO"):
        if hasattr(loop, cls):
            for meth in ("__init__", "prepare", "report", "restore"):
                if hasattr(getattr(loop, cls), meth):
                    wrap(getattr(loop, cls), meth, f"io.{meth}")
    loop._train_worker(config)  # in this process the module's own function (only the driver's copy is swapped)
    mark(f"worker: train fn returned (torch._dynamo imported: {'torch._dynamo' in sys.modules})", trace)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=14_700)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2, help="fits in one Ray (the first one pays cold imports)")
    a = ap.parse_args()

    import numpy as np  # noqa: F401
    import pyarrow.parquet as pq
    import ray
    import ray.train

    from raymlops._ray import apply_env_defaults, quiet_ray_data

    apply_env_defaults()
    from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback

    import raymlops.train.loop as loop
    from raymlops.config import config_from_dict
    from raymlops.core.schema import infer_schema
    from raymlops.core.sketches import profile_table
    from raymlops.core.transform import fit_transform
    from raymlops.data.prepare import PreparedData
    from raymlops.data.synthetic import make_day

    class Trace(ControllerCallback, WorkerGroupCallback):
        def __init__(self, trace):
            self.trace = trace

        def before_init_train_context(self, workers):
            mark("controller: worker actors created", self.trace)
            return {}

        def after_controller_start(self, ctx):
            mark("controller: started", self.trace)

        def before_worker_group_start(self, ctx):
            mark("controller: worker group starting (placement group, actors)", self.trace)

        def after_worker_group_start(self, wg):
            mark("controller: worker group started (backend + datasets set up)", self.trace)

        def after_worker_group_training_start(self, wg):
            mark("controller: training fn launched", self.trace)

        def after_report(self, *args, **kwargs):
            mark("controller: report collected", self.trace)

        def before_worker_group_shutdown(self, wg):
            mark("controller: worker group shutting down", self.trace)

        def after_worker_group_shutdown(self, ctx):
            mark("controller: worker group shut down", self.trace)

    root = Path(tempfile.mkdtemp(prefix="profile-train-"))
    features = ["region", "plan", "payment_method", "tenure_months", "monthly_charges", "support_calls", "usage_gb"]
    categorical = {"region", "plan", "payment_method"}
    rows = {"train": int(a.rows * 0.8), "validation": a.rows - int(a.rows * 0.8)}
    table = make_day("2026-01-01", a.rows, seed=3)
    profile = profile_table(table.slice(0, rows["train"]), categorical=categorical, skip={"customer_id", "event_ts"})
    schema = infer_schema(profile, name="churn", task="binary", label="churned", timestamp="event_ts",
                          id_columns=["customer_id"], features=features, categorical=categorical)
    uris, start = {}, 0
    for split, n in rows.items():
        os.makedirs(root / split)
        pq.write_table(table.slice(start, n), root / split / "part-0.parquet")
        uris[split], start = str(root / split), start + n
    prepared = PreparedData(str(root), uris, fit_transform(profile, schema), dict(rows))

    load0 = os.getloadavg()
    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 * 1024, log_to_driver=False,
             configure_logging=False)
    print(f"ray.init {time.perf_counter() - t:.1f} s", flush=True)
    quiet_ray_data()

    # The driver's parts of train_model, timed by wrapping them where train_model looks them up.
    def wrap(name):
        fn = getattr(loop, name)

        def timed(*args, **kw):
            mark(f"driver: {name} start")
            out = fn(*args, **kw)
            mark(f"driver: {name} end")
            return out

        setattr(loop, name, timed)

    for name in ("split_datasets", "progress_pump", "_make_trainer", "fit_trainer", "read_checkpoint"):
        wrap(name)
    make_trainer = loop._make_trainer

    def make_traced(tc, spec, datasets, **kw):
        kw["callbacks"] = [*kw.get("callbacks", []), Trace(TRACE)]
        trainer = make_trainer(tc, spec, datasets, **kw)
        trainer.train_loop_per_worker = traced_worker
        trainer.train_loop_config = {**trainer.train_loop_config, "_trace": TRACE}
        return trainer

    loop._make_trainer = make_traced
    cfg = config_from_dict({"train": {"num_workers": a.workers, "cpus_per_worker": 0.5, "epochs": a.epochs,
                                      "batch_size": 256, "early_stopping_patience": 0}})
    for i in range(a.repeat):
        open(TRACE, "w").close()
        load = os.getloadavg()
        sampler = CpuSampler()
        sampler.sample(start=True)
        sampler.start()
        mark("driver: train_model called")
        res = loop.train_model(cfg, prepared, storage_uri=str(root / "store"), run_name=f"profile-{i}",
                               progress=lambda m: mark(f"driver: progress epoch {m['epoch']}"))
        mark("driver: train_model returned")
        cpu = sampler.stop()
        events = [json.loads(line) for line in open(TRACE)]
        t0 = events[0]["t"]
        print(f"\nfit {i + 1}/{a.repeat}: {a.workers} worker(s), {rows['train']:,} train rows, {a.epochs} epochs; "
              f"load average {load[0]:.2f} before, {os.getloadavg()[0]:.2f} after (started {load0[0]:.2f}); "
              f"fit_time_s {res.fit_time_s:.2f}")
        prev = t0
        print("  wall s   (+gap)   process CPU s  event")
        for e in sorted(events, key=lambda e: e["t"]):
            print(f"  {e['t'] - t0:7.2f}  (+{e['t'] - prev:5.2f})  {e['cpu']:7.2f}  {e['event']}")
            prev = e["t"]
        epochs = [e["t"] for e in events if e["event"].startswith("driver: progress epoch")]
        gaps = [b - a for a, b in zip(epochs, epochs[1:], strict=False)]
        print(f"  first epoch at {epochs[0] - t0:.2f} s; epoch gaps {', '.join(f'{g:.2f}' for g in gaps)}")
        print(f"  CPU used during the fit, by process ({sum(c for _, c, _ in cpu):.1f} s in all):")
        for name, c, n in cpu:
            if c >= 0.05:
                print(f"    {c:6.2f} s  {name}" + (f" ({n} processes)" if n > 1 else ""))
    # Ray Train's own debug lines on its start-up ("[Worker Group Initialization] ... in N s"), from its log files.
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    for f in sorted(logs.rglob("ray-train-sys-controller-*.log")):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            if "Initialization" in rec.get("message", "") or "callback" in rec.get("message", ""):
                print(f"  [{f.name[:40]}] {rec['message']}")
    ray.shutdown()
    os.unlink(TRACE)


if __name__ == "__main__":
    main()
