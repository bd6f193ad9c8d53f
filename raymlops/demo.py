"""`raymlops demo`: the whole closed loop on embedded defaults, narrated as a timeline.

Data lands → the controller runs the pipeline → v1 serves → simulated clients send traffic and labels → drifted
data lands → the controller retrains → v2 goes on canary and is promoted on live evidence → a partition whose
labels an upstream bug inverted lands → v3 looks better offline (its test split has the same bug) but is worse on
the clients' real labels → the canary rolls it back. Everything runs in a sandbox under ``{storage_uri}/demo``.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from raymlops import storage
from raymlops.config import Config
from raymlops.core.redact import redact
from raymlops.serve.urls import base_url, feedback_url, predict_url

__all__ = ["DEMO_OVERRIDES", "QUICK_OVERRIDES", "Clients", "EventPrinter", "Timeline", "demo_config", "free_port",
           "land", "run_demo"]

# The demo's policies, sized for a laptop's traffic (tens of requests per second) and a story of minutes.
DEMO_OVERRIDES = [
    "train.epochs=4", "train.hidden_sizes=[32,16]",
    "evaluation.min_delta_vs_champion=-0.02",  # non-inferiority: a retrained model may tie the champion
    "canary.steps=[25,100]", "canary.interval_s=12", "canary.min_requests=30", "canary.min_labels=200",
    # A model retrained after drift predicts differently on purpose: prediction shift only guards against wrecks
    # here; the quality on the clients' labels is what judges the canary.
    "canary.max_quality_drop=0.05", "canary.max_prediction_psi=3", "canary.max_p99_ratio=3",
    "triggers.new_data=true", "triggers.on_drift=false", "triggers.cooldown_s=0", "triggers.poll_interval_s=1",
    "controller.poll_interval_s=0.5", "monitoring.interval_s=10", "monitoring.window_s=600",
    "monitoring.min_rows=200", "serving.prediction_log.flush_interval_s=0.5",
]
QUICK_OVERRIDES = ["train.epochs=3", "train.learning_rate=0.01", "canary.interval_s=6", "canary.min_requests=15",
                   "canary.min_labels=100"]


class Timeline:
    """Prints each step with the time since the demo started."""

    def __init__(self, say: Callable[[str], None]):
        self.say = say
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        self.say(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}")


def demo_config(cfg: Config, port: int) -> Config:
    """``cfg`` moved into its demo sandbox: storage, tracking (when it is the default SQLite), landing, port."""
    root = storage.join(cfg.storage_uri, "demo")
    doc = cfg.model_dump(mode="json")
    doc.update(storage_uri=root)
    if doc["tracking_uri"].startswith("sqlite:"):
        doc["tracking_uri"] = f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"
    doc["data"]["source"] = storage.join(root, "landing")
    doc["triggers"]["landing_uri"] = None
    doc["serving"]["port"] = port
    return Config.model_validate(doc)


class Clients:
    """Simulated clients: batches of live rows, each answer followed by its true labels as feedback."""

    def __init__(self, base: str, model: str, batch: int = 8, rate_per_s: float = 15.0):
        self.base, self.model, self.batch, self.pause = base, model, batch, 1.0 / rate_per_s
        self.rows: list[dict] = []
        self.labels: list[int] = []
        self.sent = self.failed = 0
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-clients", daemon=True)

    def use(self, table, label: str, timestamp: str) -> None:
        rows = table.drop_columns([label]).to_pylist()
        rows = [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items() if k != timestamp}
                for r in rows]
        with self._lock:
            self.rows, self.labels = rows, table.column(label).to_pylist()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        import httpx

        i = 0
        from raymlops.serve.auth import client_headers

        with httpx.Client(timeout=10, headers=client_headers()) as client:
            while not self._stop.wait(self.pause):
                with self._lock:
                    n = len(self.rows)
                    idx = [(i + k) % n for k in range(self.batch)] if n else []
                    rows, labels = [self.rows[j] for j in idx], [self.labels[j] for j in idx]
                i += self.batch
                if not rows:
                    continue
                try:
                    r = client.post(predict_url(self.base, self.model), json={"instances": rows},
                                    headers={"X-Routing-Key": f"customer-{idx[0]}"})
                    if r.status_code != 200:
                        self.failed += 1
                        continue
                    client.post(feedback_url(self.base, self.model),
                                json={"request_id": r.json()["request_id"], "labels": labels})
                    self.sent += 1
                except httpx.HTTPError:
                    self.failed += 1


def land(uri: str, table) -> None:
    """Write ``table`` as one parquet file at ``uri`` atomically (a partition landing whole)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.atomic_write_bytes(uri, sink.getvalue())


def run_demo(cfg: Config, say: Callable[[str], None] = print, *, quick: bool = False,
             bad_model: bool = True) -> dict[str, str]:
    """The controller's closed loop end to end (Ray must be initialised); returns where to look afterwards."""
    import pyarrow.compute as pc

    from raymlops.control.actor import call, start_controller, stop_controller
    from raymlops.data.synthetic import DriftSpec, generate, make_day
    from raymlops.data.validate import validate_data
    from raymlops.serve.deploy import undeploy

    tl = Timeline(say)
    root = cfg.storage_uri
    if storage.is_local(root) and Path(root).exists():
        shutil.rmtree(root)  # the demo's own sandbox: every demo starts from nothing
    landing, label, ts = cfg.data.source, cfg.data.label, cfg.data.timestamp
    rows = 1500 if quick else 2500
    tl(f"sandbox {root}; serving on 127.0.0.1:{cfg.serving.port}")

    # -- data lands, validation freezes the schema, a broken day is refused -----------------------------
    generate(landing, rows_per_day=rows, days=3, seed=0)
    out = validate_data(cfg, progress=lambda _m: None)
    tl(f"day 1-3 landed ({out.report.rows:,} rows): validation {out.decision}, schema v{out.schema.version} frozen")
    broken = storage.join(root, "scratch", "broken")
    generate(broken, rows_per_day=rows, days=1, start_date="2026-01-20", seed=8, schema_change=["rename_column"])
    bad = validate_data(cfg, data_uri=broken, progress=lambda _m: None)
    tl(f"a day with a renamed column would be refused: {bad.decision} ({len(bad.report.anomalies)} anomalies)")
    where = {"validation report": out.html_uri, "schema-skew report": bad.html_uri}

    # -- the controller: first run, v1 serves ---------------------------------------------------------------
    start_controller(cfg)
    tl(f"controller started (detached actor 'controller-{cfg.name}', namespace raymlops)")
    events = EventPrinter(cfg, tl)
    call(cfg, "trigger", "demo-first-run")
    events.wait(lambda s: s["champion"] is not None, 600, "the first model")
    base = base_url(cfg, "127.0.0.1")
    clients = Clients(base, cfg.name)
    clients.use(make_day("2026-01-04", 3000, seed=101), label, ts)
    clients.start()
    tl(f"simulated clients send traffic to {predict_url(base, cfg.name)} and their labels to :feedback")
    try:
        time.sleep(4)
        # -- drifted data lands: retrain, canary, promote -------------------------------------------------
        # A covariate shift big enough to leave the range inferred from days 1-3: recorded as a value anomaly
        # (drift), not schema skew, so the loop retrains on the new regime instead of stalling.
        drift = DriftSpec(features={"monthly_charges": (40.0, 1.5)}, categories={"plan": {"premium": 0.5}})
        generate(landing, rows_per_day=rows, days=2, start_date="2026-01-04", seed=3, drift=drift)
        clients.use(make_day("2026-01-06", 3000, seed=102, drift=drift), label, ts)
        tl("drifted data landed (day 4-5: monthly_charges ×1.5 + 40, beyond its inferred range; more premium "
           "plans); live traffic drifts too")
        events.wait(lambda s: s["champion"] == "2", 600, "v2 to be promoted",
                    fail_on=("rolled_back", "exposure_blocked"))
        if bad_model:
            # -- an upstream bug inverts the labels of a large partition: v3 is worse, and only live labels show it
            for day, seed in (("2026-01-06", 4), ("2026-01-07", 5), ("2026-01-08", 6)):
                table = make_day(day, rows * 3, seed=seed, drift=drift)
                i = table.schema.get_field_index(label)
                table = table.set_column(i, label, pc.subtract(1, table.column(label)))
                land(storage.join(landing, f"churn-{day}.parquet"), table)
            tl("a partition with inverted labels landed (day 6-8, an upstream bug); offline its test split "
               "has the same bug, so the retrained model looks fine there")
            events.wait(lambda s: any(e["kind"] == "rolled_back" for e in call(cfg, "events", 0)), 600,
                        "v3 to be judged on live labels", fail_on=("promoted", "exposure_blocked"))
        events.flush()
        time.sleep(min(cfg.monitoring.interval_s, 10) + 1)  # one more monitor pass over the whole story
    finally:
        clients.stop()
    tl(f"clients sent {clients.sent:,} requests ({clients.failed} failed)")
    from raymlops.control.status import gather_status, render_status

    status = gather_status(cfg)
    say("\n" + render_status(status))
    stop_controller(cfg)
    undeploy(cfg)
    where.update({
        "monitor report": status["where"]["monitor report"],
        "MLflow UI": status["where"]["mlflow ui"],
        "status": f"raymlops status CONFIG --set storage_uri={root} --set tracking_uri={cfg.tracking_uri}",
        "events": f"raymlops events CONFIG --set storage_uri={root}",
        "lineage": f"raymlops lineage CONFIG 2 --set tracking_uri={cfg.tracking_uri}",
    })
    return where


class EventPrinter:
    """Prints the controller's new events (and the run's progress lines) while waiting for a condition."""

    def __init__(self, cfg: Config, tl: Timeline):
        self.cfg, self.tl, self.seen = cfg, tl, 0
        self.run_lines: dict[str, int] = {}

    def flush(self) -> None:
        from raymlops.control.actor import call

        for e in call(self.cfg, "events", self.seen):
            self.seen = e["seq"]
            if e["kind"] not in ("canary_hold",):
                self.tl(redact(f"controller: {e['kind']}: {e['message']}"))
        self._run_progress()

    def _run_progress(self) -> None:
        from raymlops.control.statefile import controller_dir

        runs = storage.join(controller_dir(self.cfg), "runs")
        if not storage.is_local(runs) or not Path(runs).exists():
            return
        for log in sorted(Path(runs).glob("*.log")):
            lines = log.read_text(encoding="utf-8").splitlines()
            for line in lines[self.run_lines.get(log.name, 0):]:
                msg = line.split(" ", 1)[-1]
                if "epoch=" not in msg:  # the steps' own summaries; epochs would bury them
                    self.tl(redact(f"    {msg}"))
            self.run_lines[log.name] = len(lines)

    def wait(self, done: Callable[[dict], bool], timeout_s: float, what: str, fail_on: tuple[str, ...] = ()) -> None:
        from raymlops.control.actor import call
        from raymlops.errors import RaymlopsError

        deadline = time.monotonic() + timeout_s
        checked = self.seen
        while True:
            self.flush()
            if done(call(self.cfg, "status")):
                return
            wrong = [e for e in call(self.cfg, "events", checked) if e["kind"] in ("run_failed", *fail_on)]
            if wrong:  # the story cannot go on: say why instead of waiting for the timeout
                raise RaymlopsError(f"demo: while waiting for {what}: {wrong[-1]['kind']}: {wrong[-1]['message']}")
            checked = self.seen
            if time.monotonic() > deadline:
                raise RaymlopsError(f"demo: timed out after {timeout_s:g}s waiting for {what}; see "
                                    f"`raymlops events` and the run logs under {self.cfg.storage_uri}/controller")
            time.sleep(0.5)


def free_port(host: str, port: int) -> int:
    """``port`` when it is free on ``host``, else any free port (the demo must not fail on a busy 8000)."""
    import socket

    with socket.socket() as sock:
        try:
            sock.bind((host, port))
            return port
        except OSError:
            sock.bind((host, 0))
            return sock.getsockname()[1]
