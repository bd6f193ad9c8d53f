"""Retention: the pure rules (fake clock), then `collect_garbage` on a real local storage tree."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from raymlops.config import Config
from raymlops.control.retention import collect_garbage, gc_due
from raymlops.core.logparts import (
    compaction_inputs,
    overlapping_dates,
    parse_name,
    part_name,
    superseded,
    visible,
)
from raymlops.core.retention import Item, closed_partitions, expired, expired_partitions, referenced_runs
from raymlops.registry.models import ModelVersionInfo
from raymlops.serve.predlog import PredictionLog, read_log

DAY = 86_400.0
NOW = dt.datetime(2024, 3, 10, 12, 0, tzinfo=dt.timezone.utc).timestamp()


# --------------------------------------------------------------------------------------------- pure rules
def test_a_partition_expires_once_its_whole_day_is_older_than_the_limit():
    names = ["date=2024-03-02", "date=2024-03-03", "date=2024-03-09", "date=2024-03-10", "other", "date=bad"]
    # 2024-03-03 ends 03-04 00:00, 6.5 days before NOW; 03-02 ends 7.5 days before.
    assert expired_partitions(names, 7, NOW) == ["date=2024-03-02"]
    assert expired_partitions(names, 6, NOW) == ["date=2024-03-02", "date=2024-03-03"]
    assert expired_partitions(names, None, NOW) == []


def test_a_partition_is_closed_only_after_its_day_and_the_grace():
    names = ["date=2024-03-09", "date=2024-03-10"]
    assert closed_partitions(names, NOW, 3600) == ["date=2024-03-09"]
    just_after_midnight = dt.datetime(2024, 3, 10, 0, 30, tzinfo=dt.timezone.utc).timestamp()
    assert closed_partitions(names, just_after_midnight, 3600) == []  # writers may still flush 03-09's last rows


def test_items_past_either_limit_expire_and_protected_ones_never_do():
    items = [Item(f"r{i}", NOW - i * DAY) for i in range(6)]  # r0 newest
    assert expired(items, keep_count=3, keep_days=None, now=NOW) == ["r3", "r4", "r5"]
    assert expired(items, keep_count=None, keep_days=2.5, now=NOW) == ["r3", "r4", "r5"]
    assert expired(items, keep_count=5, keep_days=1.5, now=NOW) == ["r2", "r3", "r4", "r5"]
    # a protected run is kept and does not use up the count
    assert expired(items, keep_count=2, keep_days=None, now=NOW, protected={"r0", "r5"}) == ["r3", "r4"]
    assert expired(items, keep_count=None, keep_days=None, now=NOW) == []


def test_referenced_runs_are_found_in_uris_and_records():
    root = "/store/runs"
    texts = ["/store/runs/churn-a/evaluate/package", '{"uri": "/store/runs/churn-b/prepare/prepared"}',
             "file:///elsewhere/runs/churn-c/x", "/store/runs/churn-d"]
    assert referenced_runs(texts, root) == {"churn-a", "churn-b", "churn-d"}
    assert referenced_runs(["s3://bucket/st/runs/r1/model"], "s3://bucket/st/runs") == {"r1"}


def test_part_names_round_trip_and_old_names_still_parse():
    f = parse_name(part_name("replica-12.a", 7, 1000, 2000))
    assert (f.kind, f.writer, f.seq, f.first_ms, f.last_ms) == ("part", "replica-12.a", 7, 1000, 2000)
    old = parse_name("part-replica-123456-000003.parquet")
    assert (old.writer, old.seq, old.first_ms) == ("replica-123456", 3, None)
    assert old.overlaps(0, 1) and not f.overlaps(2001, None) and not f.overlaps(None, 1000) and f.overlaps(2000, 2001)
    assert parse_name("_compacted.json") is None and parse_name("part-w-000001.parquet.tmp-1a2b") is None


def test_overlapping_dates_treat_the_end_as_exclusive():
    names = ["date=2024-03-08", "date=2024-03-09", "date=2024-03-10"]
    midnight = dt.datetime(2024, 3, 10, tzinfo=dt.timezone.utc).timestamp()
    assert overlapping_dates(names, midnight - 60, midnight) == ["date=2024-03-09"]
    assert overlapping_dates(names, None, None) == names


def test_the_manifest_hides_exactly_the_parts_it_covers():
    names = [part_name("a", 1, 0, 1), part_name("a", 2, 0, 1), part_name("b", 1, 0, 1), "compact-x000.t0-1.parquet"]
    inputs, covered = compaction_inputs(names[:3], None)
    assert inputs == sorted(names[:3]) and covered == {"a": 2, "b": 1}
    manifest = {"files": ["compact-x000.t0-1.parquet"], "covered": covered}
    late = part_name("a", 3, 0, 1)
    assert visible([*names, late], manifest) == ["compact-x000.t0-1.parquet", late]
    assert visible(names[:3], manifest) == ["compact-x000.t0-1.parquet"]  # listed before the file landed: still read
    assert superseded([*names, late], manifest) == sorted(names[:3])


# ------------------------------------------------------------------------------------- collect_garbage
class FakeVersions:
    """The registry as retention reads it (its real counterpart is tested in tests/integration/test_retention.py)."""

    def __init__(self, versions: list[ModelVersionInfo] | None):
        self.versions = versions

    def find_aliases(self, name):
        return None if self.versions is None else {"champion": self.versions[-1].version}

    def list_versions(self, name):
        return list(self.versions or [])


def make_run(store, run_id: str, age_days: float, *, status="completed", cached_from=None, pipeline="churn"):
    d = store / "runs" / run_id
    (d / "prepare" / "prepared" / "train").mkdir(parents=True)
    (d / "prepare" / "prepared" / "train" / "part-0.parquet").write_bytes(b"rows")
    steps = {"prepare": {"status": "cached" if cached_from else "completed", "cached_from": cached_from,
                         "outputs": {"prepared": {"uri": str(store / "runs" / (cached_from or run_id) / "prepare")}}}}
    (d / "run.json").write_text(json.dumps({"run_id": run_id, "pipeline": pipeline, "status": status,
                                            "created_at": NOW - age_days * DAY, "updated_at": NOW - age_days * DAY,
                                            "steps": steps}))


@pytest.fixture
def store(tmp_path):
    return tmp_path / "store"


@pytest.fixture
def cfg(store):
    return Config.model_validate({"storage_uri": str(store), "retention": {
        "prediction_log_days": 7, "feedback_log_days": 7, "compact_after_s": 3600, "reports_keep": 2,
        "reports_days": 30, "runs_keep": 1, "runs_days": 10}})


def write_log(store, days: list[dt.date], rows: int = 3):
    log = PredictionLog(str(store / "predictions" / "churn"), flush_rows=1000, flush_interval_s=60, buffer_rows=1000,
                        writer_id="w1")
    for day in days:
        for k in range(2):  # two parts per day
            t0 = dt.datetime(day.year, day.month, day.day, 10, tzinfo=dt.timezone.utc)
            log.append([{"request_id": f"{day}-{k}-{i}", "ts": t0 + dt.timedelta(seconds=k * 10 + i),
                         "model_version": "1", "role": "primary", "status": "ok", "features": {"x": i}}
                        for i in range(rows)])
            log.drain()
    log.close()


def test_gc_deletes_old_log_days_compacts_closed_ones_and_keeps_every_row(cfg, store):
    days = [dt.date(2024, 3, 1), dt.date(2024, 3, 9), dt.date(2024, 3, 10)]
    write_log(store, days)
    log = store / "predictions" / "churn"
    before = read_log(str(log), start=dt.datetime(2024, 3, 5, tzinfo=dt.timezone.utc).timestamp())
    report = collect_garbage(cfg, now=NOW, registry=FakeVersions(None))
    assert report.deleted_partitions == [str(log / "date=2024-03-01")]
    assert not (log / "date=2024-03-01").exists()
    assert [c["partition"] for c in report.compacted] == [str(log / "date=2024-03-09")]  # 03-10 is still open
    assert len(list((log / "date=2024-03-09").glob("*.parquet"))) == 1
    assert len(list((log / "date=2024-03-10").glob("*.parquet"))) == 2
    after = read_log(str(log))
    key = [("request_id", "ascending")]
    assert after.sort_by(key).to_pylist() == before.sort_by(key).to_pylist()


def test_gc_keeps_runs_registered_versions_reference_and_what_they_reuse(cfg, store):
    make_run(store, "churn-base", 60)  # its prepared splits are reused through the cache by churn-champ
    make_run(store, "churn-champ", 50, cached_from="churn-base")
    make_run(store, "churn-orphan", 40)
    make_run(store, "churn-old-2", 12)
    make_run(store, "churn-new", 1)
    make_run(store, "churn-newer", 0.5)
    make_run(store, "churn-crashed", 0.2, status="running")
    make_run(store, "other-pipeline", 90, pipeline="fraud")  # another pipeline's run on the same storage
    index = store / "cache" / "index"
    index.mkdir(parents=True)
    (index / "fp1.json").write_text(json.dumps({"run_id": "churn-orphan"}))
    (index / "fp2.json").write_text(json.dumps({"run_id": "churn-champ"}))
    champion = ModelVersionInfo("churn", 3, "d", str(store / "runs" / "churn-champ" / "evaluate" / "package"),
                                tags={"pipeline_run_id": "churn-champ"})

    dry = collect_garbage(cfg, now=NOW, dry_run=True, registry=FakeVersions([champion]))
    assert dry.deleted_runs == ["churn-new", "churn-old-2", "churn-orphan"]
    assert (store / "runs" / "churn-orphan").exists()  # a dry run changes nothing

    report = collect_garbage(cfg, now=NOW, registry=FakeVersions([champion]))
    assert report.deleted_runs == ["churn-new", "churn-old-2", "churn-orphan"]
    assert report.kept_runs == ["churn-base", "churn-champ"]
    left = sorted(p.name for p in (store / "runs").iterdir())
    assert left == ["churn-base", "churn-champ", "churn-crashed", "churn-newer", "other-pipeline"]
    assert (store / "runs" / "churn-base" / "prepare" / "prepared" / "train" / "part-0.parquet").exists()
    assert report.deleted_cache_entries == 1 and [p.name for p in index.iterdir()] == ["fp2.json"]


def test_no_run_is_deleted_when_the_registry_cannot_be_read(cfg, store):
    from raymlops.errors import RegistryError

    class Down(FakeVersions):
        def find_aliases(self, name):
            raise RegistryError("MLflow is unreachable; check tracking_uri")

    make_run(store, "churn-orphan", 40)
    report = collect_garbage(cfg, now=NOW, registry=Down(None))
    assert report.deleted_runs == [] and (store / "runs" / "churn-orphan").exists()
    assert "registry could not be read" in report.notes[0]


def test_gc_keeps_the_newest_reports_and_latest(cfg, store):
    reports = store / "reports" / "monitor" / "churn"
    reports.mkdir(parents=True)
    for stamp in ("20240301T000000-000Z", "20240309T000000-000Z", "20240310T000000-000Z", "20240310T010000-000Z"):
        (reports / f"{stamp}.html").write_text("<html/>")
    (reports / "latest.html").write_text("<html/>")
    report = collect_garbage(cfg, now=NOW, registry=FakeVersions(None))
    assert sorted(p.name for p in reports.iterdir()) == ["20240310T000000-000Z.html", "20240310T010000-000Z.html",
                                                         "latest.html"]
    assert len(report.deleted_reports) == 2
    assert not gc_due(cfg, NOW + 60) and gc_due(cfg, NOW + cfg.retention.interval_s)
