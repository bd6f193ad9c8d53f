"""PredictionLog's byte bound: rows beyond ``buffer_bytes`` (as the caller weighs them) are refused and counted."""

from __future__ import annotations

from raymlops.serve.predlog import PredictionLog, read_log


def _rows(n: int, start: int = 0) -> list[dict]:
    return [{"request_id": f"r{start + i}", "row": 0, "ts": 1_714_564_800.0, "model_version": "1",
             "role": "primary", "features": {"x": 1}, "outputs": {"value": 1.0}} for i in range(n)]


def test_rows_over_the_byte_bound_are_counted_not_buffered(tmp_path):
    log = PredictionLog(str(tmp_path / "log"), flush_rows=10_000, flush_interval_s=3600, buffer_rows=10_000,
                        writer_id="w", buffer_bytes=1000)
    try:
        log.append(_rows(2), nbytes=600)  # 300 bytes a row: fits
        log.append(_rows(3, 2), nbytes=900)  # one more row fits (900 of 1000), two do not
        s = log.stats()
        assert (s["pending"], s["dropped"], s["dropped_over_bytes"], s["buffered_bytes"]) == (3, 2, 2, 900)
        log.append(_rows(1, 5), nbytes=2000)  # one row heavier than the whole bound
        assert log.stats()["dropped_over_bytes"] == 3
        log.append(_rows(1, 6))  # unweighed rows are bounded by buffer_rows only
        assert log.drain() == 0
        s = log.stats()
        assert (s["written"], s["buffered_bytes"], s["dropped"]) == (4, 0, 3)
        log.append(_rows(3, 7), nbytes=900)  # the bytes are free again once written
        assert log.stats()["pending"] == 3
    finally:
        log.close()
    assert sorted(read_log(str(tmp_path / "log")).column("request_id").to_pylist()) == \
        ["r0", "r1", "r2", "r6", "r7", "r8", "r9"]
