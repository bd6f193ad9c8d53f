"""Prediction / feedback log: size and time flushes, drain, counters, retries, atomic parts, feedback join."""

from __future__ import annotations

import datetime as dt
import json
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
    assert names == [
        "date=2024-05-01/part-replica-a.1-000000.parquet",
        "date=2024-05-01/part-replica-a.1-000002.parquet",
        "date=2024-05-02/part-replica-a.1-000001.parquet",
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

    def spy(uri, data):
        seen.append(uri)
        real(uri, data)

    monkeypatch.setattr(predlog.storage, "atomic_write_bytes", spy)
    log = make_log()
    log.append([record(i) for i in range(5)])
    log.drain()
    assert len(seen) == 1 and seen[0].endswith("part-w1-000000.parquet")  # written via temp name + rename
    partial = tmp_path / "log" / "date=2024-05-01" / "part-w1-000001.parquet.tmp-1234abcd"
    partial.write_bytes(b"PAR1 half a file")
    assert read_log(str(tmp_path / "log")).num_rows == 5
    assert all(re.fullmatch(r"part-w1-\d{6}\.parquet", p.name) for p in part_files(tmp_path) if p != partial)


def test_close_drains_is_idempotent_and_refuses_later_rows(make_log, tmp_path):
    log = make_log()
    log.append([record(0)])
    assert log.close() == 0 and log.written == 1
    assert log.close() == 0
    log.append([record(1)])
    assert log.dropped == 1 and read_log(str(tmp_path / "log")).num_rows == 1
    assert log.stats() == {"written": 1, "dropped": 1, "pending": 0, "flushes": 1, "errors": 0, "invalid": 0}


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
