"""Prediction / feedback log: size and time flushes, drain, counters, retries, atomic parts, feedback join."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from raymlops.errors import ServingError
from raymlops.serve import predlog
from raymlops.serve.predlog import (
    FEEDBACK_SCHEMA,
    PREDICTION_SCHEMA,
    FeedbackLog,
    PredictionLog,
    compact_partition,
    join_feedback,
    read_log,
)

T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


def record(i: int, *, rid: str | None = None, row: int = 0, role: str = "primary", ts=None) -> dict:
    return {
        "request_id": rid or f"r{i}", "row": row, "ts": ts or T0 + dt.timedelta(seconds=i),
        "model_version": "1", "role": role, "routing_key": None,
        "features": {"x": i}, "outputs": {"score": np.float32(0.25), "label": np.int64(1)},
        "latency_ms": 1.5, "status": "ok",
    }


@pytest.fixture
def make_log(tmp_path):
    logs = []

    def make(cls=PredictionLog, **kw):
        opts = {"flush_rows": 1000, "flush_interval_s": 60.0, "buffer_rows": 10_000, "writer_id": "w1"} | kw
        log = cls(str(tmp_path / "log"), **opts)
        logs.append(log)
        return log

    yield make
    for log in logs:
        log.close()


def wait_for(predicate, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def part_files(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "log").rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------------------- flushes
def test_flush_by_size_then_drain(make_log, tmp_path):
    log = make_log(flush_rows=10)
    log.append([record(i) for i in range(25)])
    assert wait_for(lambda: log.written == 25 or log.flushes >= 1)
    assert log.written >= 10  # the size trigger flushed without waiting for the 60 s interval
    assert log.drain() == 0
    assert log.written == 25 and log.pending == 0 and log.dropped == 0
    assert read_log(str(tmp_path / "log")).num_rows == 25


def test_flush_by_time(make_log, tmp_path):
    log = make_log(flush_rows=1000, flush_interval_s=0.05)
    log.append([record(i) for i in range(3)])
    assert wait_for(lambda: log.written == 3)
    assert log.pending == 0 and log.flushes >= 1
    log.append([record(3)])
    assert wait_for(lambda: log.written == 4)
    assert read_log(str(tmp_path / "log")).num_rows == 4


def test_n_appended_from_many_threads_gives_n_rows(make_log, tmp_path):
    log = make_log(flush_rows=50, flush_interval_s=0.02)

    def worker(t: int) -> None:
        for i in range(100):
            log.append([record(i, rid=f"t{t}-{i}", row=j) for j in range(3)])

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    table = read_log(str(tmp_path / "log"))
    assert table.num_rows == log.written == 1200 and log.dropped == 0
    keys = set(zip(table["request_id"].to_pylist(), table["row"].to_pylist(), strict=True))
    assert len(keys) == 1200


def test_records_round_trip_with_json_and_types(make_log, tmp_path):
    log = make_log()
    rec = record(0)
    rec.update(model_version=3, routing_key="user-9", ts=T0.timestamp(), status="error", row=None)
    log.append([rec, record(1) | {"features": '{"pre": "encoded"}'}])
    log.drain()
    table = read_log(str(tmp_path / "log"))
    assert table.schema == PREDICTION_SCHEMA
    first, second = table.sort_by("request_id").to_pylist()
    assert first["model_version"] == "3" and first["routing_key"] == "user-9" and first["row"] == 0
    assert first["ts"] == T0 and first["status"] == "error"
    assert json.loads(first["features"]) == {"x": 0}
    assert json.loads(first["outputs"]) == {"score": 0.25, "label": 1}
    assert second["features"] == '{"pre": "encoded"}'


def test_parts_are_partitioned_by_date_and_named(make_log, tmp_path):
    log = make_log(writer_id="replica-a.1")
    log.append([record(0), record(1, ts=T0 + dt.timedelta(days=1)), record(2)])
    log.drain()
    log.append([record(3)])
    log.drain()
    names = [str(p.relative_to(tmp_path / "log")) for p in part_files(tmp_path)]
    # The name carries the span of the part's ts (epoch ms), so window reads skip parts without opening them.
    ms = [int((T0 + dt.timedelta(days=d, seconds=s)).timestamp() * 1000) for d, s in ((0, 0), (0, 2), (0, 3), (1, 0))]
    assert names == [
        f"date=2024-05-01/part-replica-a.1-000000.t{ms[0]}-{ms[1]}.parquet",
        f"date=2024-05-01/part-replica-a.1-000002.t{ms[2]}-{ms[2]}.parquet",
        f"date=2024-05-02/part-replica-a.1-000001.t{ms[3]}-{ms[3]}.parquet",
    ]
    assert read_log(str(tmp_path / "log")).num_rows == 4


# ------------------------------------------------------------------------------------- limits and failures
def test_full_buffer_is_counted_not_silent(make_log, tmp_path):
    log = make_log(flush_rows=10, buffer_rows=10)
    log.append([record(i) for i in range(15)])
    assert log.dropped == 5
    log.drain()
    assert log.written == 10 and read_log(str(tmp_path / "log")).num_rows == 10


def test_failed_write_is_kept_retried_and_counted(make_log, tmp_path, monkeypatch):
    real = predlog.storage.atomic_write_bytes
    failures = {"left": 2}

    def flaky(uri, data):
        if failures["left"]:
            failures["left"] -= 1
            raise OSError("disk full")
        real(uri, data)

    monkeypatch.setattr(predlog.storage, "atomic_write_bytes", flaky)
    log = make_log(flush_rows=8, buffer_rows=8)
    log.append([record(i) for i in range(5)])
    assert log.drain() == 5 and log.errors == 1 and log.written == 0
    log.append([record(i) for i in range(5, 9)])  # 5 kept + 4 new > 8: one counted as dropped
    assert log.dropped == 1 and log.pending == 8
    assert log.drain() == 8 and log.errors == 2
    assert log.drain() == 0
    table = read_log(str(tmp_path / "log"))
    assert table.num_rows == log.written == 8
    assert sorted(table["request_id"].to_pylist()) == sorted(f"r{i}" for i in range(8))  # oldest kept, no dups


def test_background_retry_after_failure(make_log, tmp_path, monkeypatch):
    real = predlog.storage.atomic_write_bytes
    calls = []

    def fail_once(uri, data):
        calls.append(uri)
        if len(calls) == 1:
            raise OSError("throttled")
        real(uri, data)

    monkeypatch.setattr(predlog.storage, "atomic_write_bytes", fail_once)
    log = make_log(flush_interval_s=0.05)
    log.append([record(0), record(1)])
    assert wait_for(lambda: log.written == 2)
    assert log.errors == 1 and log.pending == 0 and read_log(str(tmp_path / "log")).num_rows == 2


def test_append_never_raises_and_bad_records_are_counted(make_log, tmp_path):
    log = make_log()
    log.append(None)  # type: ignore[arg-type]
    log.append([record(0), {"request_id": None}, {"request_id": "r9", "ts": "not a time"}, 42, record(1)])
    log.append([record(2) | {"latency_ms": "slow"}])  # arrow refuses this one row, not the batch
    assert log.drain() == 0
    assert log.written == 2 and log.invalid == 4 and log.dropped == 5
    assert read_log(str(tmp_path / "log")).num_rows == 2


def test_no_partial_file_is_ever_visible(make_log, tmp_path, monkeypatch):
    seen = []
    real = predlog.storage.atomic_write_bytes

    def spy(uri, data, **kw):
        seen.append(uri)
        real(uri, data, **kw)

    monkeypatch.setattr(predlog.storage, "atomic_write_bytes", spy)
    log = make_log()
    log.append([record(i) for i in range(5)])
    log.drain()
    assert len(seen) == 1 and re.search(r"part-w1-000000\.t\d+-\d+\.parquet$", seen[0])  # temp name + rename
    partial = tmp_path / "log" / "date=2024-05-01" / "part-w1-000001.parquet.tmp-1234abcd"
    partial.write_bytes(b"PAR1 half a file")
    assert read_log(str(tmp_path / "log")).num_rows == 5
    assert all(re.fullmatch(r"part-w1-\d{6}\.t\d+-\d+\.parquet", p.name) for p in part_files(tmp_path) if p != partial)


def test_close_drains_is_idempotent_and_refuses_later_rows(make_log, tmp_path):
    log = make_log()
    log.append([record(0)])
    assert log.close() == 0 and log.written == 1
    assert log.close() == 0
    log.append([record(1)])
    assert log.dropped == 1 and read_log(str(tmp_path / "log")).num_rows == 1
    assert log.stats() == {"written": 1, "dropped": 1, "pending": 0, "flushes": 1, "errors": 0, "invalid": 0,
                           "lost": 0, "dropped_over_bytes": 0, "buffered_bytes": 0, "buffer_bytes": 64 * 1024 * 1024}


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ServingError, match="writer_id"):
        PredictionLog(str(tmp_path), flush_rows=1, flush_interval_s=1, buffer_rows=1, writer_id="a/b")
    with pytest.raises(ServingError, match="must all be positive"):
        PredictionLog(str(tmp_path), flush_rows=10, flush_interval_s=0, buffer_rows=5, writer_id="a")
    log = PredictionLog(str(tmp_path), flush_rows=10, flush_interval_s=1, buffer_rows=5, writer_id="a")
    assert log.flush_rows == 5  # a flush never waits for more rows than the buffer holds
    log.close()


# ---------------------------------------------------------------------------------------- read and join
def test_read_log_of_nothing_is_an_empty_table(tmp_path):
    assert read_log(str(tmp_path / "none")).equals(PREDICTION_SCHEMA.empty_table())
    assert read_log(str(tmp_path / "none"), FEEDBACK_SCHEMA).schema == FEEDBACK_SCHEMA


def test_join_feedback_per_row(make_log, tmp_path):
    preds = make_log()
    preds.append([record(0, rid="a", row=j) for j in range(3)])
    preds.append([record(1, rid="b"), record(2, rid="c")])
    preds.append([record(3, rid="a", row=j, role="shadow") | {"model_version": "2"} for j in range(3)])
    preds.drain()
    fb = FeedbackLog(str(tmp_path / "feedback"), flush_rows=10, flush_interval_s=60, buffer_rows=100,
                     writer_id="fb")
    fb.append([
        {"request_id": "a", "ts": T0, "labels": [0, 0, 0]},
        {"request_id": "a", "ts": T0 + dt.timedelta(minutes=1), "labels": [1, None, 0]},  # later one wins
        {"request_id": "b", "ts": T0, "labels": 1},  # a bare label for a one-instance request
        {"request_id": "zz", "ts": T0, "labels": [1]},  # no such prediction
    ])
    fb.close()
    feedback = read_log(str(tmp_path / "feedback"), FEEDBACK_SCHEMA)
    assert feedback.num_rows == 4
    joined = join_feedback(read_log(str(tmp_path / "log")), feedback)
    got = sorted(zip(joined["request_id"].to_pylist(), joined["row"].to_pylist(), joined["role"].to_pylist(),
                     joined["label"].to_pylist(), strict=True))
    assert got == [("a", 0, "primary", 1), ("a", 0, "shadow", 1), ("a", 2, "primary", 0), ("a", 2, "shadow", 0),
                   ("b", 0, "primary", 1)]
    assert set(PREDICTION_SCHEMA.names) | {"label", "feedback_ts"} == set(joined.column_names)
    left = join_feedback(read_log(str(tmp_path / "log")), feedback, how="left")
    assert left.num_rows == 8 and left["label"].null_count == 3


def test_join_feedback_edge_cases():
    preds = pa.Table.from_pylist([predlog._normalise(record(0, rid="a"), PREDICTION_SCHEMA.names)],
                                 schema=PREDICTION_SCHEMA)
    none = join_feedback(preds, FEEDBACK_SCHEMA.empty_table())
    assert none.num_rows == 0 and "label" in none.column_names
    mixed = pa.Table.from_pylist([
        {"request_id": "a", "ts": T0, "labels": '["yes", 1]'},
    ], schema=FEEDBACK_SCHEMA)
    assert join_feedback(preds, mixed)["label"].to_pylist() == ['"yes"']  # mixed types come back as JSON
    with pytest.raises(ValueError, match="how="):
        join_feedback(preds, mixed, how="outer")


# --------------------------------------------------------------------------------- loss bound (issue 13, item 14)
def test_a_hard_kill_loses_the_retry_backlog_too_and_close_counts_what_is_lost(make_log, tmp_path, monkeypatch,
                                                                             caplog):
    def refuse(uri, data, **kw):
        raise OSError("storage is read-only")

    monkeypatch.setattr(predlog.storage, "atomic_write_bytes", refuse)
    log = make_log(flush_rows=5, buffer_rows=12)
    log.append([record(i) for i in range(5)])
    assert log.drain() == 5  # a failed flush keeps its rows: more than one flush is now at stake
    log.append([record(i) for i in range(5, 15)])
    # Everything not yet written is what a kill would lose: the backlog plus the new rows, capped at buffer_rows.
    assert log.pending == 12 and log.dropped == 3
    with caplog.at_level(logging.WARNING, logger="raymlops.predlog"):
        assert log.close() == 12
    assert log.lost == 12 and log.stats()["lost"] == 12
    assert log.close() == 0 and log.lost == 12  # counted once
    assert any("12 rows could not be written before close" in r.getMessage() for r in caplog.records)
    assert read_log(str(tmp_path / "log")).num_rows == 0


# ------------------------------------------------------------------------------ window reads and compaction (item 8)
def test_a_window_read_opens_only_parts_whose_names_overlap_it(make_log, tmp_path, monkeypatch):
    log = make_log()
    for hour in range(4):  # one part per hour of the day
        log.append([record(i, rid=f"h{hour}-{i}", ts=T0 + dt.timedelta(hours=hour, seconds=i)) for i in range(3)])
        log.drain()
    log.append([record(0, rid="next-day", ts=T0 + dt.timedelta(days=1))])
    log.drain()
    opened = []
    real = predlog.ds.dataset

    def spy(files, **kw):
        opened.extend(files)
        return real(files, **kw)

    monkeypatch.setattr(predlog.ds, "dataset", spy)
    start = (T0 + dt.timedelta(hours=1)).timestamp()
    table = read_log(str(tmp_path / "log"), start=start, end=start + 3600)
    assert sorted(table["request_id"].to_pylist()) == ["h1-0", "h1-1", "h1-2"]
    assert len(opened) == 1 and "date=2024-05-02" not in opened[0]


def _rows(table):
    return table.sort_by([("request_id", "ascending"), ("row", "ascending")]).to_pylist()


def test_compaction_keeps_every_row_exactly_and_publishes_atomically(make_log, tmp_path):
    log = make_log()
    for k in range(6):
        log.append([record(i, rid=f"k{k}-{i}", ts=T0 + dt.timedelta(minutes=k, seconds=i)) for i in range(4)])
        log.drain()
    day = tmp_path / "log" / "date=2024-05-01"
    before = read_log(str(tmp_path / "log"))
    parts_before = sorted(p.name for p in day.glob("part-*"))
    assert len(parts_before) == 6
    done = compact_partition(str(day), rows_per_file=10)  # a file closes at the part that reaches 10 rows: 12 + 12
    assert done is not None and done.rows == 24 and done.inputs == 6 and len(done.outputs) == 2
    assert done.deleted == 6 and not list(day.glob("part-*"))
    after = read_log(str(tmp_path / "log"))
    assert _rows(after) == _rows(before)  # every row, every value
    assert after.schema == PREDICTION_SCHEMA
    # A late part of the same writer lands after the compaction: read too, and folded into the next compaction.
    log.append([record(99, rid="late", ts=T0 + dt.timedelta(hours=2))])
    log.drain()
    assert read_log(str(tmp_path / "log")).num_rows == 25
    again = compact_partition(str(day), rows_per_file=1000)
    assert again is not None and again.inputs == 3 and len(again.outputs) == 1  # 2 compacted + the late part
    assert _rows(read_log(str(tmp_path / "log"))) == _rows(pa.concat_tables([before, read_log(
        str(tmp_path / "log"), start=(T0 + dt.timedelta(hours=2)).timestamp())]))
    assert [p.name for p in day.glob("*.parquet")] == again.outputs
    assert compact_partition(str(day)) is None  # one file: nothing to do


def test_a_reader_never_sees_both_or_neither_at_any_step_of_a_compaction(make_log, tmp_path, monkeypatch):
    log = make_log()
    for k in range(3):
        log.append([record(i, rid=f"k{k}-{i}", ts=T0 + dt.timedelta(minutes=k, seconds=i)) for i in range(2)])
        log.drain()
    day = tmp_path / "log" / "date=2024-05-01"
    expected = _rows(read_log(str(tmp_path / "log")))
    seen = []
    real_write, real_delete = predlog.storage.atomic_write_bytes, predlog.storage.delete_file

    def check():
        seen.append(_rows(read_log(str(tmp_path / "log"))) == expected)

    def write(uri, data, **kw):
        real_write(uri, data, **kw)
        check()

    def delete(uri):
        out = real_delete(uri)
        check()
        return out

    monkeypatch.setattr(predlog.storage, "atomic_write_bytes", write)
    monkeypatch.setattr(predlog.storage, "delete_file", delete)
    monkeypatch.setattr(predlog.cas.storage, "atomic_write_text",
                        lambda uri, text, **kw: (real_write(uri, text.encode(), **kw), check()))
    assert compact_partition(str(day), rows_per_file=4) is not None
    assert len(seen) == 2 + 1 + 3 and all(seen)  # after each compacted file, the manifest, each deletion


def test_a_compaction_that_fails_midway_leaves_the_parts_readable(make_log, tmp_path, monkeypatch):
    log = make_log()
    for k in range(3):
        log.append([record(k, rid=f"k{k}")])
        log.drain()
    day = tmp_path / "log" / "date=2024-05-01"
    expected = _rows(read_log(str(tmp_path / "log")))
    real = predlog.storage.atomic_write_bytes
    calls = []

    def fail_second(uri, data, **kw):
        calls.append(uri)
        if len(calls) == 2:
            raise OSError("disk full")
        real(uri, data, **kw)

    monkeypatch.setattr(predlog.storage, "atomic_write_bytes", fail_second)
    with pytest.raises(OSError):
        compact_partition(str(day), rows_per_file=1)
    assert sorted(p.name.split(".")[0] for p in day.iterdir()) == ["part-w1-000000", "part-w1-000001",
                                                                  "part-w1-000002"]
    assert _rows(read_log(str(tmp_path / "log"))) == expected
