"""Freshness: from a new data partition landing to the new challenger serving canary traffic.

The controller (detached actor, new-data trigger) retrains on everything that landed (100k rows after the new
partition, tuning off) and puts the blessed challenger on canary while a client sends requests; the clock stops
at the first response served by the challenger. Stages come from the controller's event log, the pipeline's run
record (step start/end times), the controller's weight timeline and the client's responses.

The pre-exposure tests (contract, load, infrastructure on a preview app) are part of the path and timed as a stage.

Baseline, in the same run: the same pipeline run and canary deploy done by hand (`run_ct_pipeline`, then
`set_weights`) after another partition lands: no detection, no controller. The ratio says what the closed loop
costs over a person running the two commands at the right moment.

    python benchmarks/bench_freshness.py [--rows 100000] [--epochs 8]
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks._common import machine  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """Sequential requests; remembers when each version first answered."""

    def __init__(self, url: str, rows: list[dict]):
        self.url, self.rows = url, rows
        self.first_seen: dict[str, float] = {}
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            i = 0
            while not self._stop.is_set():
                i += 1
                try:
                    r = client.post(f"{self.url}:predict", json={"instances": [self.rows[i % len(self.rows)]]},
                                    headers={"X-Routing-Key": f"k{i}"})
                    v = r.headers.get("x-model-version")
                    if r.status_code == 200 and v and v not in self.first_seen:
                        self.first_seen[v] = time.time()
                except httpx.HTTPError:
                    pass
                # A steady ~40 requests/s: enough to see the canary's first answer within tens of ms, without
                # the load client itself taking a core from training on a 2-core machine (5 ms pauses did).
                time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()


def _land(landing: str, day: str, rows: int, seed: int) -> float:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raymlops import storage
    from raymlops.data.synthetic import make_day

    sink = pa.BufferOutputStream()
    pq.write_table(make_day(day, rows, seed=seed), sink)
    data = sink.getvalue()
    t0 = time.time()
    storage.atomic_write_bytes(storage.join(landing, f"churn-{day}.parquet"), data)  # it lands now
    return t0


def _steps(cfg, run_id: str) -> dict[str, tuple[float, float]]:
    from raymlops import storage

    record = json.loads(storage.read_text(storage.join(cfg.storage_uri, "runs", run_id, "run.json")))
    return {name: (s["started_at"], s["ended_at"]) for name, s in record["steps"].items()}


def _wait(predicate, timeout_s: float, what: str):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000, help="rows after the new partition lands")
    ap.add_argument("--epochs", type=int, default=None, help="train.epochs (default: the config's)")
    a = ap.parse_args()

    from raymlops._ray import init_ray
    from raymlops.config import load_config
    from raymlops.control.actor import call, start_controller, stop_controller
    from raymlops.control.ports import state_uri
    from raymlops.ct import run_ct_pipeline
    from raymlops.data.synthetic import generate, make_day
    from raymlops.registry.models import ModelRegistry
    from raymlops.serve.deploy import set_weights, undeploy

    root = Path(tempfile.mkdtemp(prefix="bench-freshness-"))
    per_day = a.rows // 4
    overrides = [
        f"storage_uri={root}", f"tracking_uri=sqlite:///{root}/mlflow.db", f"data.source={root}/landing",
        f"serving.port={_free_port()}", "tune.enabled=false", "triggers.new_data=true", "triggers.on_drift=false",
        "triggers.cooldown_s=0", "triggers.poll_interval_s=0.5", "controller.poll_interval_s=0.25",
        "monitoring.interval_s=3600", "canary.interval_s=3600", "evaluation.min_delta_vs_champion=-1",
        "evaluation.max_slice_drop=1", *([f"train.epochs={a.epochs}"] if a.epochs else []),
    ]
    cfg = load_config(HERE.parent / "configs" / "churn.yaml", overrides)
    generate(cfg.data.source, rows_per_day=per_day, days=3, seed=0)
    init_ray()
    print(f"storage {root}; 3 x {per_day:,} rows landed; first run (not timed) ...", flush=True)
    start_controller(cfg)
    call(cfg, "trigger", "bench-first")
    _wait(lambda: call(cfg, "status")["champion"], 900, "the first champion")
    url = f"http://127.0.0.1:{cfg.serving.port}/v1/models/{cfg.name}"
    rows = [{k: v for k, v in r.items() if k not in ("churned", "event_ts")}
            for r in make_day("2026-02-01", 500, seed=9).to_pylist()]
    client = Client(url, rows)
    _wait(lambda: "1" in client.first_seen, 60, "v1 answering")

    # -- the closed loop: a partition lands; the clock stops at the challenger's first answer --------------
    seen = call(cfg, "status")["last_event"]["seq"]
    t0 = _land(cfg.data.source, "2026-01-04", a.rows - 3 * per_day, seed=4)
    def challenger_serving() -> bool:
        blocked = [e for e in call(cfg, "events", seen) if e["kind"] in ("exposure_blocked", "run_failed")]
        if blocked:
            raise SystemExit(f"the challenger never reached canary: {blocked[-1]['message']}")
        return "2" in client.first_seen

    _wait(challenger_serving, 900, "v2 serving canary traffic")
    t_first = client.first_seen["2"]
    events = call(cfg, "events", seen)
    at = {e["kind"]: e["at"] for e in reversed(events)}  # the first of each kind
    run_id = next(e["data"]["run_id"] for e in events if e["kind"] == "run_started")
    steps = _steps(cfg, run_id)
    timeline = json.loads(Path(state_uri(cfg)).read_text())["timeline"]
    t_weights = next(t for t, w in timeline if "2" in w)
    stages = {
        "detect": at["trigger"] - t0,
        "launch": steps["validate"][0] - at["trigger"],
        "ingest_validate": steps["validate"][1] - steps["validate"][0],
        "prepare": steps["prepare"][1] - steps["prepare"][0],
        "train": steps["train"][1] - steps["train"][0],
        "evaluate_bless": steps["bless"][1] - steps["evaluate"][0],
        "register": steps["register"][1] - steps["register"][0],
        "collect_result": at.get("exposure_testing", at["canary_started"]) - steps["register"][1],
        "pre_exposure_tests": at["canary_started"] - at.get("exposure_testing", at["canary_started"]),
        # The split is live once Serve has reconfigured; the client may see the canary before the controller
        # has recorded it, so the deploy ends at whichever came first.
        "deploy": min(t_weights, t_first) - at["canary_started"],
        "first_canary_request": t_first - min(t_weights, t_first),
    }
    loop_total = t_first - t0
    stop_controller(cfg)

    # -- baseline: the same two things by hand, no detection, no controller ---------------------------------
    t1 = _land(cfg.data.source, "2026-01-05", per_day // 4, seed=5)
    result = run_ct_pipeline(cfg, progress=lambda _m: None)
    if result.version is None:
        raise SystemExit(f"baseline run did not register a version: {result.summary()}")
    champion = str(ModelRegistry(cfg.tracking_uri).get_by_alias(cfg.name, "champion").version)
    set_weights(cfg, {champion: 95.0, str(result.version): 5.0})
    _wait(lambda: str(result.version) in client.first_seen, 120, "the baseline challenger answering")
    manual_total = client.first_seen[str(result.version)] - t1
    client.stop()
    undeploy(cfg)

    print(f"\nfreshness on {a.rows:,} rows (tuning off)")
    print("| stage | seconds |\n|---|---|")
    for k, v in stages.items():
        print(f"| {k} | {v:.2f} |")
    print(f"| **landing -> first canary answer (controller)** | **{loop_total:.2f}** |")
    print(f"| baseline: run + set_weights by hand, from landing | {manual_total:.2f} |")
    print(f"| ratio controller / by hand | {loop_total / manual_total:.2f} |")
    print(f"goals: end to end <= 60 s: {'met' if loop_total <= 60 else 'missed'}; "
          f"detection <= 2 s: {'met' if stages['detect'] <= 2 else 'missed'}")
    out = HERE / "results" / "bench_freshness.json"
    out.write_text(json.dumps({"machine": machine(), "rows": a.rows, "stages_s": stages,
                               "controller_total_s": loop_total, "manual_total_s": manual_total,
                               "ratio": loop_total / manual_total}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
