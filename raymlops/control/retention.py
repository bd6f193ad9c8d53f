"""Retention: delete what a pipeline no longer needs and compact its logs (``raymlops gc``, or the monitor pass).

What grows without it, and the rule for each (settings under ``retention:``; ``raymlops.core.retention`` decides):

* prediction and feedback logs (``{storage}/predictions|feedback/{name}/date=D``): a day's partition is deleted once
  older than ``prediction_log_days`` / ``feedback_log_days``; a closed day (ended ``compact_after_s`` ago) is
  compacted into few files (``raymlops.serve.predlog.compact_partition``: atomic for readers);
* monitor reports (``{storage}/reports/monitor/{name}/*.html``, ``latest.html`` always kept) and kept validation
  reports of blocked runs (``{storage}/reports/{name}/validation/*``): beyond ``reports_keep`` or older than
  ``reports_days``;
* pipeline runs (``{storage}/runs/{run_id}``: prepared splits, model package, evaluation): beyond ``runs_keep`` or
  older than ``runs_days`` — never a run a registered model version points at (its package, reference statistics,
  blessing, or a run its record reuses through the cache: lineage stays whole), never one still running; cache
  index entries of deleted runs go with them.

When the registry cannot be read no run is deleted (a version's run cannot be told from an orphan); the other kinds
are still collected, and ``GcReport.notes`` says so.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import pyarrow.fs as pafs

from raymlops import storage
from raymlops.config import Config
from raymlops.core.retention import Item, closed_partitions, expired, expired_partitions, referenced_runs
from raymlops.errors import RaymlopsError, RegistryError
from raymlops.registry.models import ModelVersionInfo
from raymlops.serve.predlog import FEEDBACK_SCHEMA, PREDICTION_SCHEMA, compact_partition

__all__ = ["GcReport", "VersionSource", "collect_garbage", "gc_due", "gc_marker_uri"]


class VersionSource(Protocol):
    """The slice of ``ModelRegistry`` retention reads: which versions exist and what they point at."""

    def find_aliases(self, name: str) -> dict[str, int] | None: ...

    def list_versions(self, name: str) -> list[ModelVersionInfo]: ...


@dataclass
class GcReport:
    """What one collection deleted (or, with ``dry_run``, would delete) and compacted."""

    at: float
    dry_run: bool
    deleted_partitions: list[str] = field(default_factory=list)
    compacted: list[dict[str, Any]] = field(default_factory=list)
    deleted_reports: list[str] = field(default_factory=list)
    deleted_runs: list[str] = field(default_factory=list)
    kept_runs: list[str] = field(default_factory=list)  # protected: referenced by registered versions
    deleted_cache_entries: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        parts = [f"{verb} {len(self.deleted_partitions)} log partitions, {len(self.deleted_reports)} reports, "
                 f"{len(self.deleted_runs)} runs ({len(self.kept_runs)} referenced runs kept)",
                 f"{'would compact' if self.dry_run else 'compacted'} {len(self.compacted)} partitions"]
        return "; ".join(parts) + "".join(f"\nnote: {n}" for n in self.notes)


def gc_marker_uri(cfg: Config) -> str:
    """Where the last collection's report is kept (``gc_due`` reads its time)."""
    return storage.join(cfg.storage_uri, "monitor", cfg.name, "gc.json")


def gc_due(cfg: Config, now: float) -> bool:
    """Whether the monitor pass should collect now (``retention.interval_s`` since the last collection)."""
    uri = gc_marker_uri(cfg)
    if not storage.exists(uri):
        return True
    try:
        last = float(json.loads(storage.read_text(uri))["at"])
    except (ValueError, KeyError, TypeError):
        return True  # unreadable marker: collecting again is harmless
    return now - last >= cfg.retention.interval_s


def collect_garbage(cfg: Config, *, now: float | None = None, dry_run: bool = False,
                    registry: VersionSource | None = None) -> GcReport:
    """Apply ``cfg.retention`` to the pipeline's logs, reports and runs (see the module docstring)."""
    now = time.time() if now is None else float(now)
    r = cfg.retention
    report = GcReport(at=now, dry_run=dry_run)
    for kind, schema, days in (("predictions", PREDICTION_SCHEMA, r.prediction_log_days),
                               ("feedback", FEEDBACK_SCHEMA, r.feedback_log_days)):
        _logs(storage.join(cfg.storage_uri, kind, cfg.name), schema, days, cfg, now, dry_run, report)
    _reports(cfg, now, dry_run, report)
    if registry is None:
        from raymlops.registry.models import ModelRegistry

        registry = ModelRegistry(cfg.tracking_uri)
    _runs(cfg, registry, now, dry_run, report)
    if not dry_run:
        storage.atomic_write_text(gc_marker_uri(cfg), json.dumps(report.to_dict(), indent=1, default=str))
    return report


# ------------------------------------------------------------------------------------------------- logs
def _logs(uri: str, schema, days: float | None, cfg: Config, now: float, dry_run: bool, report: GcReport) -> None:
    names = [i.base_name for i in storage.list_dir(uri) if i.type == pafs.FileType.Directory]
    gone = expired_partitions(names, days, now)
    for name in gone:
        report.deleted_partitions.append(storage.join(uri, name))
        if not dry_run:
            storage.delete_dir(storage.join(uri, name))
    if cfg.retention.compact_after_s is None:
        return
    for name in closed_partitions(set(names) - set(gone), now, cfg.retention.compact_after_s):
        part = storage.join(uri, name)
        if dry_run:
            continue  # what a compaction merges is known only by doing it; a dry run changes nothing
        done = compact_partition(part, schema, rows_per_file=cfg.retention.compact_rows_per_file)
        if done is not None:
            report.compacted.append({"partition": part, "files_in": done.inputs, "files_out": len(done.outputs),
                                     "rows": done.rows})


# ---------------------------------------------------------------------------------------------- reports
def _stamp(name: str) -> float | None:
    try:
        return dt.datetime.strptime(name[:15], "%Y%m%dT%H%M%S").replace(tzinfo=dt.timezone.utc).timestamp()
    except ValueError:
        return None


def _reports(cfg: Config, now: float, dry_run: bool, report: GcReport) -> None:
    r = cfg.retention
    monitor = storage.join(cfg.storage_uri, "reports", "monitor", cfg.name)
    items = []
    for info in storage.list_dir(monitor):
        if info.type != pafs.FileType.File or not info.base_name.endswith(".html") or info.base_name == "latest.html":
            continue
        at = _stamp(info.base_name)
        items.append(Item(info.base_name, at if at is not None else info.mtime.timestamp()))
    validation = storage.join(cfg.storage_uri, "reports", cfg.name, "validation")
    kept = [Item(i.base_name, i.mtime.timestamp()) for i in storage.list_dir(validation)
            if i.type == pafs.FileType.Directory]
    for base, found, is_dir in ((monitor, items, False), (validation, kept, True)):
        for name in expired(found, keep_count=r.reports_keep, keep_days=r.reports_days, now=now):
            uri = storage.join(base, name)
            report.deleted_reports.append(uri)
            if not dry_run:
                (storage.delete_dir if is_dir else storage.delete_file)(uri)


# ------------------------------------------------------------------------------------------------- runs
def _versions_text(registry: VersionSource, name: str) -> list[str]:
    if registry.find_aliases(name) is None:
        return []  # the model was never registered: nothing points at any run
    texts = []
    for v in registry.list_versions(name):
        texts.append(v.package_uri)
        texts.extend(str(t) for t in v.tags.values())
    return texts


def _record(runs: str, run_id: str) -> tuple[dict[str, Any] | None, str]:
    uri = storage.join(runs, run_id, "run.json")
    try:
        text = storage.read_text(uri)
        return json.loads(text), text
    except (RaymlopsError, ValueError):
        return None, ""


def _runs(cfg: Config, registry: VersionSource, now: float, dry_run: bool, report: GcReport) -> None:
    r = cfg.retention
    if r.runs_keep is None and r.runs_days is None:
        return
    runs = storage.join(cfg.storage_uri, "runs")
    try:
        texts = _versions_text(registry, cfg.name)
    except (RegistryError, OSError) as err:
        report.notes.append(f"no run deleted: the registry could not be read ({err})")
        return
    records: dict[str, tuple[dict[str, Any], str]] = {}
    for info in storage.list_dir(runs):
        if info.type != pafs.FileType.Directory:
            continue
        doc, text = _record(runs, info.base_name)
        # Only this pipeline's runs, and only runs with a readable record: anything else is not ours to judge.
        if doc is not None and doc.get("pipeline") == cfg.name:
            records[info.base_name] = (doc, text)
    pinned = {t for t in texts if t in records}  # the pipeline_run_id tag names the run itself
    protected = _closure(referenced_runs(texts, runs) | pinned, records, runs)
    live = {rid for rid, (doc, _) in records.items() if doc.get("status") == "running"
            and float(doc.get("updated_at", doc.get("created_at", 0))) > now - (r.runs_days or 0) * 86_400.0}
    items = [Item(rid, float(doc.get("created_at", 0))) for rid, (doc, _) in records.items()]
    report.kept_runs = sorted(protected & set(records))
    gone = expired(items, keep_count=r.runs_keep, keep_days=r.runs_days, now=now, protected=protected | live)
    report.deleted_runs = gone
    if dry_run or not gone:
        return
    for rid in gone:
        storage.delete_dir(storage.join(runs, rid))
    report.deleted_cache_entries = _drop_cache_entries(cfg, set(gone))


def _closure(start: set[str], records: dict[str, tuple[dict[str, Any], str]], runs: str) -> set[str]:
    """``start`` and every run their records point into (a step cached from an earlier run), transitively."""
    seen, todo = set(), list(start)
    while todo:
        rid = todo.pop()
        if rid in seen:
            continue
        seen.add(rid)
        text = records.get(rid, (None, ""))[1]
        todo.extend(referenced_runs([text], runs) - seen)
        doc = records.get(rid, ({}, ""))[0] or {}
        todo.extend(str(s.get("cached_from")) for s in (doc.get("steps") or {}).values()
                    if isinstance(s, dict) and s.get("cached_from") and s.get("cached_from") not in seen)
    return seen


def _drop_cache_entries(cfg: Config, gone: Iterable[str]) -> int:
    """Delete cache index entries whose outputs lived in deleted runs (the runner would re-run them anyway)."""
    gone = set(gone)
    index = storage.join(cfg.storage_uri, "cache", "index")
    dropped = 0
    for info in storage.list_dir(index):
        if info.type != pafs.FileType.File or not info.base_name.endswith(".json"):
            continue
        uri = storage.join(index, info.base_name)
        try:
            entry = json.loads(storage.read_text(uri))
        except (RaymlopsError, ValueError):
            continue
        if entry.get("run_id") in gone:
            dropped += storage.delete_file(uri)
    return dropped
