"""Freshness: from a new data partition landing to the new challenger answering canary traffic.

The controller (detached actor, new-data trigger) retrains on everything that landed (``--rows`` rows after the new
partition, tuning off), runs the pre-exposure tests (contract, load, infrastructure on a preview app) and puts the
blessed challenger on canary while a client sends requests; the clock stops at the first response served by the
challenger. Every stage is the time between two recorded events, so the stages add up to the total:

    landing written (this script's clock, at the atomic rename)
    -> detect: the controller's `trigger` event
    -> launch: the run's first step starts (the pipeline's run record, as every step boundary below)
    -> each step, from the end of the one before it (gaps between steps are in the next step's figure)
    -> collect_result: the controller's `exposure_testing` event (run collected, challenger decided)
    -> pre_exposure_tests: its `canary_started` event
    -> deploy_to_first_answer: the client's first response carrying the challenger's version.
The controller's weights timeline says when ``set_weights`` returned; it is printed as a note, not a stage: the
split is live inside that call, and the client may be answered by the challenger before it returns.

Baseline, in the same run and on as many rows: the same job by hand, as a script would do it without the
controller. Another partition as large as the first lands; a loop lists the landing directory every
``triggers.poll_interval_s`` (the controller's interval) and notices it; ``run_ct_pipeline`` trains on a data
window holding the same number of rows (the oldest day left out); ``run_pre_exposure`` tests the new version
against the champion; ``set_weights`` puts it on canary with the controller's weights; the client's first answer
from it stops the clock. Same stages, same events (the run record's steps), so the ratio is what the controller's
closed loop costs over that script.

The load average before and after is printed, with the share of CPU other processes used meanwhile; a run on a
busy machine is marked as such (benchmarks/_common.py).

    python benchmarks/bench_freshness.py [--rows 100000] [--epochs 8]
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks._common import Watch, machine, print_load  # noqa: E402


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
    return {name: (s["started_at"], s["ended_at"]) for name, s in record["steps"].items()
            if s.get("started_at") is not None and s.get("ended_at") is not None}


def _cell(stages: dict[str, float], key: str) -> str:
    return f"{stages[key]:.2f}" if key in stages else "-"


def _wait(predicate, timeout_s: float, what: str):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def _stages(t_land: float, t_detect: float, steps: dict[str, tuple[float, float]], t_result: float,
            t_tested: float, t_first: float) -> dict[str, float]:
    """Stages between consecutive events: detect, launch, each step (from the previous end), collect, test, deploy."""
    ordered = sorted(steps.items(), key=lambda kv: kv[1][0])
    stages = {"detect": t_detect - t_land, "launch": ordered[0][1][0] - t_detect}
    prev = ordered[0][1][0]
    for name, (_, end) in ordered:
        stages[name] = end - prev
        prev = end
    stages["collect_result"] = t_result - prev
    stages["pre_exposure_tests"] = t_tested - t_result
    stages["deploy_to_first_answer"] = t_first - t_tested
    return stages


def _controller_loop(cfg, client: Client, rows: int, per_day: int) -> tuple[dict[str, float], float, float]:
    """A partition lands; the controller takes it to canary. (stages, total, set_weights returned after canary)."""
    from raymlops.control.actor import call
    from raymlops.control.ports import state_uri

    seen = call(cfg, "status")["last_event"]["seq"]
    t0 = _land(cfg.data.source, "2026-01-04", rows - 3 * per_day, seed=4)

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
    # The client may be answered by v2 before set_weights returns and the controller records it: wait for that.
    t_weights = _wait(lambda: next((t for t, w in json.loads(Path(state_uri(cfg)).read_text())["timeline"]
                                    if "2" in w), None), 60, "the controller recording the canary weights")
    t_result = at.get("exposure_testing", at["canary_started"])  # no exposure event: tests are off
    stages = _stages(t0, at["trigger"], _steps(cfg, run_id), t_result, at["canary_started"], t_first)
    return stages, t_first - t0, t_weights - at["canary_started"]


def _by_hand(cfg, client: Client, rows: int, canary_weight: float) -> tuple[dict[str, float], float, float]:
    """The same job as a script: notice the file, run the pipeline, test, set the weights. Same outputs."""
    from raymlops import storage
    from raymlops.control.preexposure import run_pre_exposure
    from raymlops.ct import run_ct_pipeline
    from raymlops.registry.models import ModelRegistry
    from raymlops.serve.deploy import set_weights

    def listing() -> set[str]:
        return set(storage.list_files(cfg.data.source))

    # A cron-like watcher ticking at the controller's polling interval, on its own schedule: its phase relative to
    # the landing is as arbitrary as the controller's (a check right after the landing would find it at once).
    before, interval, t_tick = listing(), cfg.triggers.poll_interval_s, time.time()
    time.sleep(random.uniform(0, interval))
    t0 = _land(cfg.data.source, "2026-01-05", rows, seed=5)
    while True:
        t_tick += interval
        time.sleep(max(0.0, t_tick - time.time()))
        if listing() - before:
            break
    t_detect = time.time()
    result = run_ct_pipeline(cfg, progress=lambda _m: None)
    if result.version is None:
        raise SystemExit(f"baseline run did not register a version: {result.summary()}")
    t_result = time.time()
    version = str(result.version)
    champion = str(ModelRegistry(cfg.tracking_uri).get_by_alias(cfg.name, "champion").version)
    tested = run_pre_exposure(cfg, version, champion=champion)
    if not tested.passed:
        raise SystemExit(f"baseline pre-exposure tests failed: {tested.reasons()}")
    t_tested = time.time()
    set_weights(cfg, {champion: 100.0 - canary_weight, version: canary_weight})
    t_weights = time.time()
    _wait(lambda: version in client.first_seen, 120, "the baseline challenger answering")
    t_first = client.first_seen[version]
    stages = _stages(t0, t_detect, _steps(cfg, result.run_id), t_result, t_tested, t_first)
    return stages, t_first - t0, t_weights - t_tested


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000, help="rows the retraining sees after the partition lands")
    ap.add_argument("--epochs", type=int, default=None, help="train.epochs (default: the config's)")
    a = ap.parse_args()

    from raymlops._ray import init_ray
    from raymlops.config import load_config
    from raymlops.control.actor import call, start_controller, stop_controller
    from raymlops.data.synthetic import generate, make_day
    from raymlops.serve.deploy import undeploy

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
    # The baseline's run sees as many rows as the controller's: a window leaving out the first day.
    cfg_hand = load_config(HERE.parent / "configs" / "churn.yaml", [*overrides, "data.window.start=2026-01-02"])
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

    with Watch(interval_s=1.0) as watch:
        loop, loop_total, loop_weights = _controller_loop(cfg, client, a.rows, per_day)
        canary_weight = next(e for e in reversed(call(cfg, "events", 0)) if e["kind"] == "canary_started")[
            "data"]["weights"]["2"]
        stop_controller(cfg)  # the split stays as it is; set_weights is refused while a controller runs
        hand, hand_total, hand_weights = _by_hand(cfg_hand, client, a.rows - 3 * per_day, float(canary_weight))
    client.stop()
    undeploy(cfg)
    load = watch.report()

    print(f"\nfreshness on {a.rows:,} rows (tuning off): landing -> first canary answer")
    print("| stage | controller s | by hand s |\n|---|---|---|")
    for k in dict.fromkeys([*loop, *hand]):
        print(f"| {k} | {_cell(loop, k)} | {_cell(hand, k)} |")
    print(f"| **total** | **{loop_total:.2f}** | **{hand_total:.2f}** |")
    print(f"| ratio controller / by hand | {loop_total / hand_total:.2f} | |")
    print(f"note: set_weights returned {loop_weights:.2f} s (controller) and {hand_weights:.2f} s (by hand) after "
          "the tests passed")
    print(f"goals: end to end <= 45 s: {'met' if loop_total <= 45 else 'missed'}; pre-exposure tests <= 5 s: "
          f"{'met' if loop['pre_exposure_tests'] <= 5 else 'missed'}; detection <= 2 s: "
          f"{'met' if loop['detect'] <= 2 else 'missed'}")
    print_load(load)
    load.pop("peak_pss_bytes")
    out = HERE / "results" / "bench_freshness.json"
    out.write_text(json.dumps({"machine": machine(), "rows": a.rows, "stages_s": loop, "by_hand_stages_s": hand,
                               "controller_total_s": loop_total, "manual_total_s": hand_total,
                               "ratio": loop_total / hand_total, "set_weights_returned_s": loop_weights,
                               "load": load}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
