"""The monitor on real logs, real packages and a real MLflow (SQLite): figures, drift, report, metrics."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from mlflow import MlflowClient

from raymlops import storage
from raymlops.control.monitor import log_uris, monitor_status_lines, run_monitor
from raymlops.core.schema import Schema
from raymlops.core.sketches import profile_table
from raymlops.data.synthetic import DriftSpec, make_day
from raymlops.data.validate import freeze_schema
from raymlops.registry.models import ModelRegistry
from raymlops.registry.tracking import MetadataStore, StepRecord
from raymlops.serve.predlog import FeedbackLog, PredictionLog
from tests.serving_helpers import IDS, LABEL, TS, build_package, serving_config


def _features(n: int, seed: int, drift: DriftSpec | None = None) -> list[dict]:
    rows = make_day("2026-02-01", n, seed=seed, drift=drift).drop_columns([LABEL, TS, *IDS])
    return rows.to_pylist()


def _auc(y: list[int], p: list[float]) -> float:
    pos = [s for s, t in zip(p, y, strict=True) if t == 1]
    neg = [s for s, t in zip(p, y, strict=True) if t == 0]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def _pipeline_run_with_training_split(cfg, root: Path, train) -> str:
    """A pipeline run whose prepare step recorded its output, as the CT pipeline does (no Ray needed)."""
    prepared = root / "prepared"
    (prepared / "train").mkdir(parents=True)
    pq.write_table(train, prepared / "train" / "part-0.parquet")
    store = MetadataStore(cfg.tracking_uri)
    run_id = store.start_pipeline_run(cfg.name, pipeline=cfg.name, pipeline_run_id="run-1",
                                    artifact_location=str(Path(cfg.storage_uri) / "mlflow-artifacts"))
    now = time.time()
    store.log_step(run_id, StepRecord(
        pipeline_run_id="run-1", step="prepare", component="prepare", component_version="1", code_hash="c",
        fingerprint="f", status="completed", executor="driver", started_at=now, ended_at=now,
        artifacts={"prepared": {"uri": str(prepared), "kind": "dataset", "digest": "d"}}))
    return run_id


def test_run_monitor_figures_drift_report_and_mlflow(tmp_path, tracking_uri):
    cfg = serving_config(tmp_path, tracking_uri, "monitoring.min_rows=150", "monitoring.window_s=3600")
    reg = ModelRegistry(cfg.tracking_uri)
    train = make_day("2026-01-01", 2000, seed=11)  # what build_package fits its transform on
    p1 = build_package(cfg, tmp_path / "packages" / "v1", seed=1)
    p2 = build_package(cfg, tmp_path / "packages" / "v2", seed=2)
    v1 = reg.register(cfg.name, p1.uri, run_id=None, digest=p1.digest, tags={"test_roc_auc": 0.8})
    run_id = _pipeline_run_with_training_split(cfg, tmp_path, train)
    reg.register(cfg.name, p2.uri, run_id=run_id, digest=p2.digest, tags={"pipeline_run_id": "run-1"})
    reg.promote(cfg.name, v1.version)
    # v1 has no pipeline run: its reference is the frozen schema's, as data validation froze it.
    schema = Schema.from_yaml(storage.read_text(storage.join(p1.uri, "schema.yaml")))
    freeze_schema(cfg, schema, profile_table(train, categorical={LABEL}, skip={*IDS, TS}))

    now = time.time()
    rng = np.random.default_rng(0)
    pred_uri, feedback_uri = log_uris(cfg)
    log = PredictionLog(pred_uri, flush_rows=10_000, flush_interval_s=60, buffer_rows=10_000, writer_id="t1")
    feedback = FeedbackLog(feedback_uri, flush_rows=10_000, flush_interval_s=60, buffer_rows=10_000, writer_id="t1")
    expect = {"1": {"lat": [], "y": [], "p": []}, "2": {"lat": [], "y": [], "p": []}}
    traffic = [("1", f, "ok" if i % 100 else "error") for i, f in enumerate(_features(300, seed=5))]
    drift = DriftSpec(features={"monthly_charges": (40.0, 1.0)})
    traffic += [("2", f, "ok") for f in _features(200, seed=6, drift=drift)]
    for i, (version, instance, status) in enumerate(traffic):
        rid, p, lat = f"r{i}", float(rng.uniform()), float(rng.uniform(5, 50))
        log.append([{"request_id": rid, "row": 0, "ts": now - 1800 + i, "model_version": version,
                     "role": "primary", "routing_key": None, "features": instance,
                     "outputs": {"probability": p, "label": int(p >= 0.5)}, "latency_ms": lat, "status": status}])
        if status == "ok":
            expect[version]["lat"].append(lat)
            if i % 3 == 0:
                y = int(rng.uniform() < p)
                feedback.append([{"request_id": rid, "ts": now - 60, "labels": [y]}])
                expect[version]["y"].append(y)
                expect[version]["p"].append(p)
    # Outside the window (a day earlier): must not count.
    log.append([{"request_id": "old", "row": 0, "ts": now - 86400, "model_version": "1", "role": "primary",
                 "features": traffic[0][1], "outputs": {"probability": 0.5}, "latency_ms": 1.0, "status": "ok"}])
    assert log.close() == 0 and feedback.close() == 0

    result = run_monitor(cfg, champion="1", roles={"v2": "canary"}, now=now,
                         weights_timeline=[(now - 1900, {"1": 100.0}), (now - 1500, {"1": 90.0, "2": 10.0})])

    h1, h2 = result.versions["1"], result.versions["2"]
    assert (h1.role, h2.role) == ("champion", "canary")
    assert (h1.requests, h1.errors, h1.rows, h2.requests, h2.errors) == (300, 3, 300, 200, 0)
    assert h1.error_rate_pct == 1.0
    assert h1.p99_ms == float(np.quantile(expect["1"]["lat"], 0.99))
    assert h1.p50_ms == float(np.quantile(expect["1"]["lat"], 0.5))
    for h, v in ((h1, "1"), (h2, "2")):
        assert h.labels == len(expect[v]["y"])
        assert abs(h.quality - _auc(expect[v]["y"], expect[v]["p"])) < 1e-9
    assert h1.drifted_features == [] and len(h1.drift) == len(schema.features)
    assert "frozen reference" in h1.drift_note
    assert "monthly_charges" in h2.drifted_features and "region" not in h2.drifted_features
    assert "training split" in h2.drift_note  # found through the version's lineage
    assert result.drift == h1.drift_results() and result.drift_reference == "v1"
    q = result.quality
    assert (q.version, q.metric, q.labels, q.offline) == ("1", "roc_auc", h1.labels, 0.8)
    assert q.online == h1.quality and h1.offline_quality == 0.8 and result.notes == []

    html = Path(result.report_uri).read_text()
    assert result.report_uri.endswith("reports/monitor/churn/latest.html")
    assert html.count("<svg") == 6 and "monthly_charges" in html
    assert len(list(Path(result.report_uri).parent.glob("*Z.html"))) == 1

    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    exp = client.get_experiment_by_name(cfg.name)
    assert exp.artifact_location.startswith(("file://" + str(tmp_path), str(tmp_path)))  # never ./mlruns of the cwd
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`raymlops.kind` = 'monitor'")
    assert len(runs) == 1
    metrics = runs[0].data.metrics
    assert metrics["v1.requests"] == 300 and metrics["v2.errors"] == 0
    assert metrics["v2.drift.monthly_charges"] > 0.2 and metrics["v1.quality_roc_auc"] == h1.quality

    # A second pass with this one as history: the same run gets a second point, the report plots both.
    again = run_monitor(cfg, champion="1", roles={"2": "canary"}, now=now + 30, history=[result.to_dict()])
    assert again.versions["1"].requests == 300
    history = client.get_metric_history(runs[0].info.run_id, "v1.requests")
    assert len(history) == 2
    assert any("v2" in line and "monthly_charges" in line for line in monitor_status_lines(again))

    # The controller rolled v2 back (its decision is on the version's tags): a later pass calls it so, not "other";
    # only latest.html reloads itself in a browser.
    reg.tag_version(cfg.name, "2", "raymlops.decision.000009", "2026-01-01T00:00:00+00:00 rolled_back: canary 2 ...")
    third = run_monitor(cfg, champion="1", now=now + 60, history=[result.to_dict(), again.to_dict()])
    assert third.versions["2"].role == "rolled_back"
    latest = Path(third.report_uri).read_text()
    assert f'<meta http-equiv="refresh" content="{cfg.monitoring.interval_s:g}">' in latest
    assert "v2 (rolled back)" in latest
    assert all("http-equiv" not in p.read_text() for p in Path(third.report_uri).parent.glob("*Z.html"))


def test_run_monitor_with_no_traffic_and_no_registry(tmp_path, tracking_uri):
    cfg = serving_config(tmp_path, tracking_uri, "monitoring.log_to_mlflow=false")
    result = run_monitor(cfg, champion="7", roles={"8": "canary"})
    assert list(result.versions) == ["7", "8"]
    h = result.versions["7"]
    assert (h.requests, h.errors, h.rows, h.labels, h.quality, h.error_rate_pct) == (0, 0, 0, 0, None, None)
    assert h.drift == [] and result.drift == []
    assert result.quality is not None and result.quality.online is None
    assert Path(result.report_uri).exists()
