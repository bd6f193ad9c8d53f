"""The monitor: one pass over the last ``monitoring.window_s`` of the prediction and feedback logs.

Per version: requests, errors and latency (``canary.window_stats``, plus p50), online quality on joined feedback,
and live input drift against the version's training reference, measured with data validation's own sketches,
policy and metrics (``core.live``). The champion's drift and quality are what the drift and degradation triggers
read. Each pass writes an HTML report and, when ``monitoring.log_to_mlflow``, logs its figures to the long-lived
``monitor`` run of the pipeline's experiment. Runs in whatever process calls it (the controller's Ray task). With
``retention.in_monitor`` a pass also applies retention (``raymlops.control.retention``) every
``retention.interval_s``.

Training reference of a version, best first (cached per version under ``{storage_uri}/monitor/{name}/references``):
the profile of the training split its pipeline run prepared (found through the lineage in MLflow), else the frozen
schema's reference statistics that data validation judges new data against.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from raymlops import storage
from raymlops.config import Config
from raymlops.control.canary import window_stats
from raymlops.control.retention import collect_garbage, gc_due
from raymlops.control.triggers import QualitySignal
from raymlops.core.drift import DriftResult
from raymlops.core.live import (
    ROLES,
    VersionHealth,
    features_table,
    latency_quantiles,
    live_drift,
    live_profile,
)
from raymlops.core.monitor_report import render_monitor_report
from raymlops.core.schema import Schema
from raymlops.core.sketches import DatasetProfile, merge_profiles
from raymlops.core.transform import Transform
from raymlops.core.validation import ValidationPolicy
from raymlops.data.validate import policy_from_config, schema_dir
from raymlops.errors import DataError, PackageError, RaymlopsError, RegistryError, SchemaError
from raymlops.registry.models import ModelRegistry, ModelVersionInfo
from raymlops.registry.tracking import MetadataStore
from raymlops.serve.predlog import FEEDBACK_SCHEMA, PREDICTION_SCHEMA, join_feedback, read_log

__all__ = ["MonitorResult", "VersionHealth", "log_uris", "monitor_status_lines", "read_window", "run_monitor"]

_TS = pa.timestamp("us", tz="UTC")
_ROLE_ORDER = {r: i for i, r in enumerate(ROLES)}
_METRIC_KEY = re.compile(r"[^A-Za-z0-9_\-./ ]")


@dataclass
class MonitorResult:
    """One monitor pass (JSON-safe via ``to_dict``/``from_dict``). ``drift``/``drift_reference``/``quality`` are
    the champion's, for ``TriggerContext``; ``notes`` say what could not be done (e.g. MLflow unreachable)."""

    at: float
    window_start: float
    window_end: float
    versions: dict[str, VersionHealth]
    champion: str | None
    drift: list[DriftResult]
    drift_reference: str
    quality: QualitySignal | None
    report_uri: str | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        q = self.quality
        return {
            "at": self.at, "window_start": self.window_start, "window_end": self.window_end,
            "versions": {v: h.to_dict() for v, h in self.versions.items()},
            "champion": self.champion,
            "drift": [d.to_dict() for d in self.drift],
            "drift_reference": self.drift_reference,
            "quality": None if q is None else {"version": q.version, "metric": q.metric, "online": q.online,
                                               "labels": q.labels, "offline": q.offline},
            "report_uri": self.report_uri,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MonitorResult:
        q = d.get("quality")
        return cls(
            at=float(d["at"]), window_start=float(d["window_start"]), window_end=float(d["window_end"]),
            versions={str(v): VersionHealth.from_dict(h) for v, h in d.get("versions", {}).items()},
            champion=None if d.get("champion") is None else str(d["champion"]),
            drift=[DriftResult.from_dict(x) for x in d.get("drift", [])],
            drift_reference=str(d.get("drift_reference", "")),
            quality=None if q is None else QualitySignal(str(q["version"]), str(q["metric"]), q.get("online"),
                                                         int(q.get("labels", 0)), q.get("offline")),
            report_uri=d.get("report_uri"),
            notes=list(d.get("notes", [])),
        )


# ------------------------------------------------------------------------------------------------ logs
def log_uris(cfg: Config) -> tuple[str, str]:
    """(prediction log, feedback log) URIs, as the serving app writes them."""
    return (storage.join(cfg.storage_uri, "predictions", cfg.name),
            storage.join(cfg.storage_uri, "feedback", cfg.name))


def read_window(uri: str, schema: pa.Schema, start: float, end: float) -> pa.Table:
    """Rows of the log at ``uri`` with ``start <= ts < end``, opening only the ``date=`` partitions and the files
    whose names say they overlap the window (``raymlops.serve.predlog.read_log``)."""
    return read_log(uri, schema, start, max(start, end))


# -------------------------------------------------------------------------------------- version context
@dataclass
class _VersionModel:
    schema: Schema | None = None
    classes: list[Any] | None = None
    offline: float | None = None
    reference: DatasetProfile | None = None
    reference_source: str = ""
    note: str = ""
    rolled_back: bool = False  # the controller's last decision on it (raymlops.decision.* tags) was a rollback


def _vkey(version: Any) -> str:
    return str(version).strip().lstrip("vV")


def _rolled_back(info: ModelVersionInfo) -> bool:
    # Tags are "raymlops.decision.{seq:06d}" = "{iso time} {kind}: {message}" (control.ports.RegistryPort).
    decisions = sorted((k, v) for k, v in info.tags.items() if k.startswith("raymlops.decision."))
    if not decisions:
        return False
    kind = decisions[-1][1].split(" ", 1)[-1].split(":", 1)[0]
    return kind in ("rolling_back", "rolled_back")


def _offline(info: ModelVersionInfo, metric: str) -> float | None:
    try:
        value = float(info.tags[f"test_{metric}"])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _profile_files(uri: str, schema: Schema, policy: ValidationPolicy) -> DatasetProfile | None:
    files = storage.list_files(uri, (".parquet",))
    if not files:
        return None
    fs, _ = storage.resolve(uri)
    dataset = ds.dataset([storage.resolve(f)[1] for f in files], format="parquet", filesystem=fs)
    names = [n for n in schema.feature_names if n in dataset.schema.names]
    # Batch by batch: bounded memory, and the merge of sketches is exact.
    return merge_profiles(live_profile(pa.Table.from_batches([b]), schema, None, policy)
                          for b in dataset.to_batches(columns=names))


def _train_split_reference(cfg: Config, info: ModelVersionInfo, schema: Schema,
                           policy: ValidationPolicy) -> tuple[DatasetProfile, str] | None:
    try:
        lineage = MetadataStore(cfg.tracking_uri).lineage(cfg.name, info.version)
    except RegistryError:
        return None
    for step in lineage.steps:
        uri = step.artifacts.get("prepared", {}).get("uri")
        if uri and storage.exists(storage.join(uri, "train")):
            profile = _profile_files(storage.join(uri, "train"), schema, policy)
            if profile is not None and profile.rows:
                return profile, f"training split {storage.join(uri, 'train')}"
    return None


def _frozen_reference(cfg: Config, package_tags: Mapping[str, str], schema: Schema) -> tuple[DatasetProfile, str] | None:
    candidates = []
    if package_tags.get("schema_uri"):
        candidates.append(re.sub(r"\.yaml$", ".reference.json", package_tags["schema_uri"]))
    candidates.append(storage.join(schema_dir(cfg), f"v{schema.version}.reference.json"))
    for uri in dict.fromkeys(candidates):
        if storage.exists(uri):
            try:
                return DatasetProfile.from_dict(json.loads(storage.read_text(uri))), f"frozen reference {uri}"
            except (ValueError, KeyError, TypeError) as err:
                raise SchemaError(f"reference statistics {uri} are unreadable ({err}); delete the file to "
                                  "re-freeze from the next accepted dataset") from None
    return None


def _reference(cfg: Config, info: ModelVersionInfo, package_tags: Mapping[str, str], schema: Schema,
               policy: ValidationPolicy) -> tuple[DatasetProfile | None, str]:
    cache = storage.join(cfg.storage_uri, "monitor", cfg.name, "references", f"v{info.version}.json")
    if storage.exists(cache):
        try:
            doc = json.loads(storage.read_text(cache))
            if doc.get("digest") == info.digest:  # a recreated registry may reuse version numbers
                return DatasetProfile.from_dict(doc["profile"]), str(doc["source"])
        except (ValueError, KeyError, TypeError):
            pass  # a damaged cache is rebuilt below
    found = _train_split_reference(cfg, info, schema, policy) or _frozen_reference(cfg, package_tags, schema)
    if found is None:
        return None, ""
    # Both sources are immutable for a version: resolve once (a lineage walk, maybe a read of the training
    # split), not on every pass.
    storage.atomic_write_text(cache, json.dumps({"digest": info.digest, "source": found[1],
                                                 "profile": found[0].to_dict()}))
    return found


def _version_model(cfg: Config, registry: ModelRegistry, version: str, metric: str,
                   policy: ValidationPolicy) -> _VersionModel:
    try:
        info = registry.get(cfg.name, version)
    except RegistryError as err:
        return _VersionModel(note=f"not in the registry ({err})")
    out = _VersionModel(offline=_offline(info, metric), rolled_back=_rolled_back(info))
    try:
        out.schema = Schema.from_yaml(storage.read_text(storage.join(info.package_uri, "schema.yaml")))
        out.classes = Transform.from_json(storage.read_text(storage.join(info.package_uri, "transform.json"))).classes or None
        manifest = json.loads(storage.read_text(storage.join(info.package_uri, "manifest.json")))
        out.reference, out.reference_source = _reference(cfg, info, manifest.get("tags") or {}, out.schema, policy)
    except (DataError, PackageError, SchemaError, ValueError) as err:
        out.note = f"package {info.package_uri} unreadable ({err})"
    if out.reference is None and not out.note:
        out.note = "no training reference (no prepared training split in its lineage, no frozen reference)"
    return out


# --------------------------------------------------------------------------------------------- figures
def _rows_of(table: pa.Table, version: str, log_roles: Sequence[str]) -> pa.Table:
    if table.num_rows == 0:
        return table
    return table.filter(pc.and_(pc.equal(table.column("model_version"), version),
                                pc.is_in(table.column("role"), pa.array(list(log_roles), pa.string()))))


def _roles(champion: str | None, roles: Mapping[str, str] | None, predictions: pa.Table) -> dict[str, str]:
    out = {_vkey(v): r for v, r in (roles or {}).items()}
    bad = {v: r for v, r in out.items() if r not in ROLES}
    if bad:
        raise RaymlopsError(f"unknown monitor roles {bad}; give each version one of {', '.join(ROLES)}")
    if champion is not None:
        out[champion] = "champion"
    if predictions.num_rows:
        logged = predictions.group_by(["model_version", "role"], use_threads=False).aggregate([]).to_pylist()
        primary = {r["model_version"] for r in logged if r["role"] != "shadow"}
        for r in logged:
            v = r["model_version"]
            if v is not None and v not in out:
                out[v] = "other" if v in primary else "shadow"
    return dict(sorted(out.items(), key=lambda kv: (_ROLE_ORDER[kv[1]], _sort_key(kv[0]))))


def _sort_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


def _health(cfg: Config, version: str, role: str, model: _VersionModel, predictions: pa.Table, joined: pa.Table,
            start: float, end: float, policy: ValidationPolicy) -> VersionHealth:
    metric, task = cfg.evaluation.primary_metric, cfg.data.task
    log_roles = ("shadow",) if role == "shadow" else ("primary",)
    stats = window_stats(predictions, joined, version, start, end, metric, task, classes=model.classes,
                         roles=log_roles)
    rows = _rows_of(predictions, version, log_roles)
    ok = rows.filter(pc.invert(pc.fill_null(pc.equal(rows.column("status"), "error"), False)))
    (p50,) = latency_quantiles(ok.column("latency_ms"), ok.column("request_id"), [0.5])
    drift: list[DriftResult] = []
    note = model.note
    if rows.num_rows < cfg.monitoring.min_rows:
        note = f"{rows.num_rows} rows of the {cfg.monitoring.min_rows} needed (monitoring.min_rows)"
    elif model.schema is not None and model.reference is not None:
        drift = live_drift(features_table(rows.column("features"), model.schema), model.schema, model.reference,
                           policy)
        note = f"against {model.reference_source}"
    return VersionHealth(
        version=version, role=role, requests=stats.requests, errors=stats.errors,
        error_rate_pct=stats.error_rate_pct if stats.requests else None, p50_ms=p50, p99_ms=stats.p99_ms,
        rows=rows.num_rows, labels=stats.labels, quality_metric=metric, quality=stats.quality,
        offline_quality=model.offline, drift=[d.to_dict() for d in drift],
        drifted_features=[d.feature for d in drift if d.drifted], drift_note=note,
    )


# ------------------------------------------------------------------------------------------- outputs
def _metrics(result: MonitorResult) -> dict[str, float]:
    out: dict[str, float] = {}
    for v, h in result.versions.items():
        figures = {"requests": h.requests, "errors": h.errors, "error_rate_pct": h.error_rate_pct,
                   "p50_ms": h.p50_ms, "p99_ms": h.p99_ms, "rows": h.rows, "labels": h.labels,
                   f"quality_{h.quality_metric}": h.quality, "drifted_features": len(h.drifted_features)}
        figures.update({f"drift.{d['feature']}": d.get("value") for d in h.drift})
        for name, value in figures.items():
            if value is not None and math.isfinite(float(value)):
                out[_METRIC_KEY.sub("_", f"v{v}.{name}")] = float(value)
    if result.champion is not None and result.champion.isdigit():
        out["champion_version"] = float(result.champion)
    return out


def _write_report(cfg: Config, passes: Sequence[MonitorResult], weights: Sequence[tuple[float, Mapping[str, float]]],
                  result: MonitorResult) -> str:
    refresh = cfg.monitoring.report_refresh_s
    page = functools.partial(render_monitor_report, passes, weights, title=f"{cfg.name}: monitor",
                             drift_reference=result.drift_reference, window=(result.window_start, result.window_end))
    base = storage.join(cfg.storage_uri, "reports", "monitor", cfg.name)
    stamp = dt.datetime.fromtimestamp(result.at, dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + \
        f"-{int(result.at * 1000) % 1000:03d}Z"
    storage.atomic_write_text(storage.join(base, f"{stamp}.html"), page())
    latest = storage.join(base, "latest.html")
    # Only latest.html reloads itself in an open browser tab: a stamped page records one pass.
    storage.atomic_write_text(latest, page(refresh_s=cfg.monitoring.interval_s if refresh is None else refresh))
    return latest


def run_monitor(
    cfg: Config,
    *,
    champion: str | None,
    roles: Mapping[str, str] | None = None,
    weights_timeline: Sequence[tuple[float, Mapping[str, float]]] = (),
    history: Sequence[MonitorResult | Mapping[str, Any]] = (),
    now: float | None = None,
) -> MonitorResult:
    """One monitor pass over ``[now - monitoring.window_s, now)`` (see the module docstring).

    ``champion`` is the serving champion's version; ``roles`` maps other versions to canary/shadow/other
    (versions seen in the log but not named are added as ``other``, or ``shadow`` when they only shadowed, or
    ``rolled_back`` when the controller's last decision on them, recorded in the registry, was a rollback).
    ``weights_timeline`` and ``history`` (earlier passes, objects or ``to_dict()`` dicts) feed the report's plots.
    Empty logs give zero counts and no drift; MLflow failures become ``notes`` rather than a lost pass.
    """
    now = time.time() if now is None else float(now)
    start = now - cfg.monitoring.window_s
    champion = None if champion is None else _vkey(champion)
    policy = policy_from_config(cfg)
    pred_uri, feedback_uri = log_uris(cfg)
    predictions = read_window(pred_uri, PREDICTION_SCHEMA, start, now)
    # Labels arrive after their predictions: any feedback since the window began may label a row in it.
    joined = join_feedback(predictions, read_window(feedback_uri, FEEDBACK_SCHEMA, start, now + 1.0))
    registry = ModelRegistry(cfg.tracking_uri)
    versions: dict[str, VersionHealth] = {}
    for version, role in _roles(champion, roles, predictions).items():
        model = _version_model(cfg, registry, version, cfg.evaluation.primary_metric, policy)
        if role == "other" and model.rolled_back:
            role = "rolled_back"
        versions[version] = _health(cfg, version, role, model, predictions, joined, start, now, policy)
    champ = versions.get(champion) if champion is not None else None
    result = MonitorResult(
        at=now, window_start=start, window_end=now, versions=versions, champion=champion,
        drift=champ.drift_results() if champ else [],
        drift_reference=f"v{champion}" if champion is not None else "",
        quality=None if champ is None else QualitySignal(champion, champ.quality_metric, champ.quality,
                                                         champ.labels, champ.offline_quality),
        report_uri=None,
    )
    if cfg.retention.in_monitor and gc_due(cfg, now):
        # Retention rides on the pass (at most every retention.interval_s); a failure is a note, never a lost pass.
        try:
            gc = collect_garbage(cfg, now=now, registry=registry)
            if gc.deleted_partitions or gc.deleted_reports or gc.deleted_runs or gc.compacted or gc.notes:
                result.notes.append(f"retention: {gc.summary()}")
        except (RaymlopsError, OSError) as err:
            result.notes.append(f"retention not applied: {err}; run `raymlops gc CONFIG` to see why")
    passes = [h if isinstance(h, MonitorResult) else MonitorResult.from_dict(h) for h in history]
    weights = [(float(t), {_vkey(v): float(w) for v, w in ws.items()}) for t, ws in weights_timeline]
    result.report_uri = _write_report(cfg, [*passes, result], weights, result)
    if cfg.monitoring.log_to_mlflow:
        try:
            MetadataStore(cfg.tracking_uri).log_monitor_pass(
                cfg.name, _metrics(result), at=now, tags={"raymlops.monitor.report": result.report_uri},
                # As the pipeline runner does: MLflow's default would be ./mlruns of whatever directory this runs in.
                artifact_location=storage.absolute(storage.join(cfg.storage_uri, "mlflow-artifacts")))
        except RegistryError as err:  # the figures still reach the controller and the report
            result.notes.append(f"monitor metrics not logged to MLflow: {err}")
    return result


def monitor_status_lines(result: MonitorResult | Mapping[str, Any]) -> list[str]:
    """A compact text table of a pass for ``raymlops status``."""
    r = result if isinstance(result, MonitorResult) else MonitorResult.from_dict(result)
    at = dt.datetime.fromtimestamp(r.at, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    lines = [f"monitor {at} UTC, window {r.window_end - r.window_start:g}s"
             + (f", report {r.report_uri}" if r.report_uri else "")]
    if not r.versions:
        return [*lines, "  no version serving or logged yet"]

    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    header = f"  {'version':<8} {'role':<9} {'requests':>8} {'err%':>6} {'p50ms':>7} {'p99ms':>7} " \
             f"{'labels':>6} {'quality':>8} {'offline':>8}  drift"
    lines.append(header)
    for v, h in r.versions.items():
        drift = ", ".join(h.drifted_features) if h.drifted_features else ("none" if h.drift else "n/a")
        lines.append(f"  {'v' + v:<8} {h.role:<9} {h.requests:>8} {num(h.error_rate_pct, '.2f'):>6} "
                     f"{num(h.p50_ms, '.1f'):>7} {num(h.p99_ms, '.1f'):>7} {h.labels:>6} "
                     f"{num(h.quality, '.4f'):>8} {num(h.offline_quality, '.4f'):>8}  {drift}")
    metric = next(iter(r.versions.values())).quality_metric
    lines.append(f"  quality = online {metric} on joined feedback; offline = test_{metric}")
    lines.extend(f"  note: {n}" for n in r.notes)
    return lines
