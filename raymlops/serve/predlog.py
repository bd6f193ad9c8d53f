"""The prediction log and the feedback log: buffered, batched parquet writers that never slow a request.

``append`` only puts records in a bounded in-memory buffer (a lock held for a list extend). A daemon thread
turns the buffer into parquet parts ``{uri}/date=YYYY-MM-DD/part-{writer_id}-{seq:06d}.t{first_ms}-{last_ms}.parquet``
(the span of the part's ``ts`` in the name: see ``raymlops.core.logparts``) when it holds
``flush_rows`` rows or ``flush_interval_s`` has passed, each part written atomically (temporary name, then a
rename), so a reader never sees a partial file. JSON encoding of features and outputs happens on that thread,
not on the request path. A failed write keeps its rows for the next try (up to ``buffer_rows``) and counts an
error; a full buffer counts the rows it refuses in ``dropped``.

Durability: ``drain()`` (called on reconfigure and shutdown) writes everything synchronously; rows it still cannot
write are counted in ``lost`` and logged. A hard kill of the process loses everything not yet written: the rows
buffered since the last flush *and* the rows kept back after failed writes (the retry backlog), so the bound is
``buffer_rows`` rows, not one flush interval. While writes succeed that is about ``flush_interval_s`` of traffic (or
``flush_rows`` rows, whichever comes first); while storage refuses writes it grows to ``buffer_rows``, after which new
rows are refused and counted in ``dropped``. ``pending`` says how many rows a kill would lose at any moment; the
serving app reports it with the other counters (``GET /v1/models/{name}``), and every refusal and loss is logged
(``raymlops.predlog`` logger, at most one warning per ``_WARN_EVERY_S``).

Reading: ``read_log`` opens only the ``date=`` partitions and the files whose names say they overlap the asked
window, and honours compaction (``compact_partition``: a closed day's parts merged into few files, published
atomically by a manifest). Files are written 0600 and fsynced (``raymlops.storage``).

``writer_id`` must be unique per writer instance (e.g. the replica id plus a random suffix): two writers with
the same id would overwrite each other's parts.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raymlops import storage
from raymlops.core import logparts
from raymlops.errors import ConcurrentUpdateError, DataError, ServingError
from raymlops.storage import cas

__all__ = [
    "FEEDBACK_SCHEMA",
    "PREDICTION_SCHEMA",
    "Compaction",
    "FeedbackLog",
    "PredictionLog",
    "compact_partition",
    "join_feedback",
    "read_log",
]

_log = logging.getLogger("raymlops.predlog")
_WARN_EVERY_S = 60.0  # a storage outage must not turn the log writer into a log flood

_TS = pa.timestamp("us", tz="UTC")
PREDICTION_SCHEMA = pa.schema([
    pa.field("request_id", pa.string()),
    pa.field("row", pa.int32()),  # index of the instance within its request
    pa.field("ts", _TS),
    pa.field("model_version", pa.string()),
    pa.field("role", pa.string()),  # 'primary' | 'shadow'
    pa.field("routing_key", pa.string()),
    pa.field("features", pa.string()),  # JSON of the instance as sent
    pa.field("outputs", pa.string()),  # JSON of this row's prediction
    pa.field("latency_ms", pa.float64()),
    pa.field("status", pa.string()),  # 'ok' | 'error'
    pa.field("correlation_id", pa.string()),  # the client's X-Request-Id when the server issued request_id
])
FEEDBACK_SCHEMA = pa.schema([
    pa.field("request_id", pa.string()),
    pa.field("ts", _TS),
    pa.field("labels", pa.string()),  # JSON list, one label per instance of the request (null: unlabelled)
])
_JSON_FIELDS = frozenset(("features", "outputs", "labels"))
_TEXT_FIELDS = frozenset(("model_version", "role", "routing_key", "status", "correlation_id"))
_WRITER_ID = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


def _json_default(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays from LoadedModel.predict
    return tolist() if callable(tolist) else str(value)


def _timestamp(value: Any) -> dt.datetime:
    if value is None:  # not given: the flush time, a little late; pass ts at append time for accuracy
        return dt.datetime.now(dt.timezone.utc)
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    return dt.datetime.fromtimestamp(float(value), dt.timezone.utc)  # epoch seconds (time.time())


def _normalise(record: Mapping[str, Any], names: list[str]) -> dict[str, Any]:
    """A record as plain values of the schema's columns; raises on one that cannot be logged."""
    row = {name: record.get(name) for name in names}
    if not isinstance(row["request_id"], str) or not row["request_id"]:
        raise ValueError("request_id must be a non-empty string")
    row["ts"] = _timestamp(row["ts"])
    if "row" in row and row["row"] is None:
        row["row"] = 0  # a one-instance request
    for name in _JSON_FIELDS.intersection(row):
        value = row[name]
        if value is not None and not isinstance(value, str):
            row[name] = json.dumps(value, default=_json_default, separators=(",", ":"))
    for name in _TEXT_FIELDS.intersection(row):
        value = row[name]
        if value is not None and not isinstance(value, str):
            row[name] = str(value)  # model_version 3, status 200: log them rather than refuse the row
    return row


class PredictionLog:
    """Buffered parquet log of predictions (see the module docstring).

    A record is a mapping with the ``PREDICTION_SCHEMA`` keys, one per instance: ``request_id``, ``row`` (index
    of the instance in its request, default 0), ``ts`` (aware datetime or epoch seconds; default: flush time),
    ``model_version``, ``role`` ('primary' | 'shadow'), ``routing_key``, ``features`` and ``outputs`` (JSON text,
    or any JSON-able value incl. numpy, encoded on the writer thread), ``latency_ms``, ``status`` ('ok' |
    'error'). Counters: ``written``, ``dropped`` (refused: buffer full, appended after close, or unusable),
    ``pending`` (not yet durable: what a hard kill would lose), ``flushes``, ``errors`` (failed writes),
    ``invalid`` (records that could not be logged, also counted in ``dropped``), ``lost`` (still unwritten when
    ``close`` gave up), ``dropped_over_bytes`` (refused because the buffer held ``buffer_bytes``, also counted in
    ``dropped``), ``buffered_bytes`` (about: what the caller said the pending rows weigh).
    """

    schema: pa.Schema = PREDICTION_SCHEMA

    def __init__(self, uri: str, *, flush_rows: int, flush_interval_s: float, buffer_rows: int, writer_id: str,
                 buffer_bytes: int = 64 * 1024 * 1024):
        if not _WRITER_ID.match(writer_id or ""):
            raise ServingError(f"writer_id {writer_id!r} must be 1-100 letters, digits, '.', '_' or '-'; use the "
                               "replica id")
        if flush_rows < 1 or buffer_rows < 1 or not flush_interval_s > 0:
            raise ServingError(f"prediction log limits flush_rows={flush_rows}, buffer_rows={buffer_rows}, "
                               f"flush_interval_s={flush_interval_s} must all be positive; fix "
                               "serving.prediction_log")
        self.uri = uri.rstrip("/")
        # A buffer smaller than a flush would never fill one: flush when the buffer is full instead.
        self.flush_rows = min(flush_rows, buffer_rows)
        self.flush_interval_s, self.buffer_rows = flush_interval_s, buffer_rows
        self.writer_id = writer_id
        self.written = self.dropped = self.flushes = self.errors = self.invalid = self.lost = 0  # see stats()
        # Rows are bounded in number and, as the caller weighs them (append's nbytes), in bytes: a few huge
        # requests must not hold the replica's memory while storage is slow.
        self.buffer_bytes, self.dropped_over_bytes = buffer_bytes, 0
        self._bytes = self._inflight_bytes = 0
        self._warned_at = -_WARN_EVERY_S
        self._reported = (0, 0)  # dropped, errors as of the last warning
        self._buffer: list[Mapping[str, Any]] = []
        self._inflight = 0
        self._seq = 0
        self._closed = False
        self._last_flush = time.monotonic()
        self._retry_at = 0.0
        self._lock = threading.Lock()  # guards the buffer and counters; never held during IO
        self._write_lock = threading.Lock()  # one flush at a time (background thread vs drain)
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"raymlops-log-{writer_id}", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Rows appended but not yet durable (buffered, being written, or kept back after a failed write)."""
        return len(self._buffer) + self._inflight

    def stats(self) -> dict[str, int]:
        """The counters as a dict (for status pages and metrics)."""
        return {"written": self.written, "dropped": self.dropped, "pending": self.pending,
                "flushes": self.flushes, "errors": self.errors, "invalid": self.invalid, "lost": self.lost,
                "dropped_over_bytes": self.dropped_over_bytes, "buffered_bytes": self._bytes + self._inflight_bytes,
                "buffer_bytes": self.buffer_bytes}

    def append(self, records: list[Mapping[str, Any]], nbytes: int = 0) -> None:
        """Buffer records for the next flush. Never blocks on IO and never raises; rows over the buffer limits
        (``buffer_rows``, and ``buffer_bytes`` with the records weighing ``nbytes`` together, e.g. the request
        body's size) or appended after ``close`` are counted in ``dropped``."""
        try:
            n = len(records)
            per_row = nbytes / n if n else 0.0
            with self._lock:
                room = 0 if self._closed else max(0, self.buffer_rows - len(self._buffer) - self._inflight)
                if per_row:
                    free = self.buffer_bytes - self._bytes - self._inflight_bytes
                    fits = max(0, int(free // per_row))
                    if fits < min(n, room):
                        self.dropped_over_bytes += min(n, room) - fits
                        room = fits
                if n > room:
                    self.dropped += n - room
                    records = records[:room]
                self._bytes += round(per_row * len(records))
                self._buffer.extend(records)
                due = len(self._buffer) >= self.flush_rows
            if due:
                self._wake.set()
        except Exception:  # a malformed argument must not fail the request that logs it
            self.dropped += 1

    def drain(self) -> int:
        """Write everything buffered now (synchronously); returns the rows still pending (0: all durable)."""
        self._flush()
        return self.pending

    def close(self) -> int:
        """Stop the background thread and drain; returns the rows that could not be written. Idempotent."""
        with self._lock:
            self._closed = True
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=max(5.0, 2 * self.flush_interval_s))
        left = self.drain()
        if left:
            with self._lock:
                self.lost += left
                self._buffer = []  # counted once: a second close does not count them again
                self._bytes = 0
            _log.warning("prediction log %s (writer %s): %d rows could not be written before close and are lost "
                         "(%d refused earlier); check that %s is writable", self.uri, self.writer_id, left,
                         self.dropped, self.uri)
        self._warn(force=True)
        return left

    def _warn(self, force: bool = False) -> None:
        """Log refused rows and failed writes since the last warning (rate-limited: see ``_WARN_EVERY_S``)."""
        now = time.monotonic()
        current = (self.dropped, self.errors)
        if current == self._reported or (not force and now - self._warned_at < _WARN_EVERY_S):
            return
        self._warned_at, (dropped, errors), self._reported = now, self._reported, current
        _log.warning("prediction log %s (writer %s): %d rows refused (buffer full or unusable) and %d failed writes "
                     "since the last warning; %d rows pending (lost on a hard kill); totals dropped=%d errors=%d",
                     self.uri, self.writer_id, current[0] - dropped, current[1] - errors, self.pending, *current)

    # ----------------------------------------------------------------------------------------------- writer
    def _run(self) -> None:
        while True:
            now = time.monotonic()
            wait = max(0.0, max(self._last_flush + self.flush_interval_s, self._retry_at) - now)
            self._wake.wait(timeout=wait)
            self._wake.clear()
            if self._closed:
                return
            now = time.monotonic()
            if now < self._retry_at:  # back off after a failed write instead of retrying on every append
                continue
            if len(self._buffer) >= self.flush_rows or now - self._last_flush >= self.flush_interval_s:
                self._flush()

    def _flush(self) -> None:
        with self._write_lock:
            with self._lock:
                batch, self._buffer = self._buffer, []
                self._inflight = len(batch)
                batch_bytes, self._bytes, self._inflight_bytes = self._bytes, 0, self._bytes
            self._last_flush = time.monotonic()
            written, invalid, failed = 0, 0, batch
            try:
                parts, invalid = self._parts(batch)
                failed = []
                for k, (date, table, _rows) in enumerate(parts):
                    try:
                        self._write_part(date, table)
                    except Exception:
                        # Parts already written stay written; only the rest is kept for the next try.
                        failed = [r for _, _, later in parts[k:] for r in later]
                        break
                    written += table.num_rows
            except Exception:  # building the parts failed: keep the whole batch and count the error
                pass
            with self._lock:
                self.written += written
                self.invalid += invalid
                self.dropped += invalid
                if failed:
                    self.errors += 1
                    # Failed rows go back in front of newer ones; whatever no longer fits is counted as dropped.
                    kept = failed + self._buffer
                    self.dropped += max(0, len(kept) - self.buffer_rows)
                    self._buffer = kept[: self.buffer_rows]
                    # Rows are not weighed one by one: the kept share of the batch keeps its share of the bytes.
                    self._bytes += round(batch_bytes * min(len(failed), self.buffer_rows) / max(1, len(batch)))
                    self._retry_at = time.monotonic() + self.flush_interval_s
                elif batch:
                    self.flushes += 1
                self._inflight = self._inflight_bytes = 0
        self._warn()

    def _parts(self, batch: list[Mapping[str, Any]]) -> tuple[list[tuple[str, pa.Table, list[dict]]], int]:
        """The batch as one table per UTC date, and how many records were unusable (and left out)."""
        names = self.schema.names
        by_date: dict[str, list[dict[str, Any]]] = {}
        invalid = 0
        for record in batch:
            try:
                row = _normalise(record, names)
            except Exception:  # one unusable record (bad ts, not a mapping) must not block the others forever
                invalid += 1
                continue
            by_date.setdefault(row["ts"].strftime("%Y-%m-%d"), []).append(row)
        parts = []
        for date, rows in sorted(by_date.items()):
            table, rows = self._table(rows)
            invalid += len(by_date[date]) - len(rows)
            if rows:
                parts.append((date, table, rows))
        return parts, invalid

    def _table(self, rows: list[dict[str, Any]]) -> tuple[pa.Table, list[dict[str, Any]]]:
        try:
            return pa.Table.from_pylist(rows, schema=self.schema), rows
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            pass
        good = []  # rare: find the rows arrow refuses (a wrong type) so they are counted, not retried forever
        for row in rows:
            try:
                pa.Table.from_pylist([row], schema=self.schema)
                good.append(row)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
                pass
        return pa.Table.from_pylist(good, schema=self.schema), good

    def _write_part(self, date: str, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        first, last = _span_ms(table)
        name = logparts.part_name(self.writer_id, self._seq, first, last)
        storage.atomic_write_bytes(storage.join(self.uri, f"date={date}", name), sink.getvalue().to_pybytes())
        self._seq += 1


class FeedbackLog(PredictionLog):
    """The same writer for feedback records: ``request_id``, ``ts`` and ``labels`` (a list, one per instance)."""

    schema = FEEDBACK_SCHEMA


# ----------------------------------------------------------------------------------------------- reading
def _span_ms(table: pa.Table) -> tuple[int, int]:
    """Smallest and largest ``ts`` of a non-empty log table, in epoch milliseconds (floor and ceiling)."""
    us = pc.cast(pc.cast(table.column("ts"), _TS), pa.int64())
    mm = pc.min_max(us).as_py()
    return mm["min"] // 1000, -(-mm["max"] // 1000)


def _ms(t: float | None, up: bool = False) -> int | None:
    if t is None:
        return None
    return int(-(-t * 1000 // 1)) if up else int(t * 1000 // 1)


def _manifest(fs: pafs.FileSystem, partition: str) -> dict | None:
    try:
        with fs.open_input_stream(f"{partition}/{logparts.MANIFEST}") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None


def _partition_files(fs: pafs.FileSystem, partition: str, start_ms: int | None, end_ms: int | None) -> list[str]:
    names = [i.base_name for i in fs.get_file_info(pafs.FileSelector(partition, allow_not_found=True))
             if i.type == pafs.FileType.File]
    # listed first, then the manifest: see logparts.visible
    return [f"{partition}/{n}" for n in logparts.visible(names, _manifest(fs, partition), start_ms, end_ms)]


def _partitions(fs: pafs.FileSystem, path: str, start: float | None, end: float | None) -> list[str]:
    if logparts.partition_date(path.rstrip("/").rsplit("/", 1)[-1]) is not None:
        return [path]  # the URI is one partition
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    dirs = [i.base_name for i in infos if i.type == pafs.FileType.Directory]
    loose = [path] if any(i.type == pafs.FileType.File for i in infos) else []  # parts outside any partition
    return loose + [f"{path}/{d}" for d in logparts.overlapping_dates(dirs, start, end)]


def read_log(uri: str, schema: pa.Schema = PREDICTION_SCHEMA, start: float | None = None,
             end: float | None = None) -> pa.Table:
    """Rows of the log at ``uri`` (a log or one ``date=`` partition of it) with ``start <= ts < end``.

    ``start``/``end`` are epoch seconds (None: unbounded). Only the partitions and files whose names overlap the
    window are opened; compacted partitions are read through their manifest. An empty table when nothing matches.
    """
    fs, path = storage.resolve(uri)
    start_ms, end_ms = _ms(start), _ms(end, up=True)
    tables = []
    try:
        for partition in _partitions(fs, path, start, end):
            tables.append(_read_partition(fs, partition, schema, start_ms, end_ms))
    except OSError as err:
        raise DataError(f"cannot read the log at {uri}: {err}; check the URI and credentials") from None
    tables = [t for t in tables if t.num_rows]
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    if table.num_rows == 0 or (start is None and end is None):
        return table
    ts = pc.cast(table.column("ts"), _TS)
    mask = None
    if start is not None:
        mask = pc.greater_equal(ts, pa.scalar(round(start * 1_000_000), _TS))
    if end is not None:
        below = pc.less(ts, pa.scalar(round(end * 1_000_000), _TS))
        mask = below if mask is None else pc.and_(mask, below)
    return table.filter(mask)


def _read_partition(fs: pafs.FileSystem, partition: str, schema: pa.Schema, start_ms: int | None,
                    end_ms: int | None, attempts: int = 5) -> pa.Table:
    for attempt in range(attempts):
        files = _partition_files(fs, partition, start_ms, end_ms)
        if not files:
            return schema.empty_table()
        try:
            # The schema is given, so the date= directories are not turned into a column and older parts missing a
            # newer column read as nulls.
            return ds.dataset(files, schema=schema, format="parquet", filesystem=fs).to_table()
        except FileNotFoundError:
            if attempt == attempts - 1:  # a compaction replaced files between the listing and the read: list again
                raise
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------- compaction
@dataclass(frozen=True)
class Compaction:
    """What ``compact_partition`` did: files read and written, files deleted, rows (equal in and out)."""

    partition: str
    inputs: int
    outputs: list[str]
    deleted: int
    rows: int


def compact_partition(uri: str, schema: pa.Schema = PREDICTION_SCHEMA, *, rows_per_file: int = 500_000,
                      ident: str | None = None) -> Compaction | None:
    """Merge the files of one closed ``date=`` partition into few files (a file is closed at the first input that
    brings it to ``rows_per_file`` rows; inputs are never split).

    Atomic for readers: the compacted files are written first (invisible: no manifest names them), then the
    manifest ``_compacted.json`` is swapped in by compare-and-swap (one compactor wins; a loser deletes its files),
    then the superseded parts are deleted. A reader sees either the old parts or the compacted files. Rows and their
    order are kept exactly. Returns None when there is nothing to merge (at most one file) or another compactor
    published first.
    """
    fs, partition = storage.resolve(uri)
    manifest_uri = storage.join(uri, logparts.MANIFEST)
    names = [i.base_name for i in fs.get_file_info(pafs.FileSelector(partition, allow_not_found=True))
             if i.type == pafs.FileType.File]
    found = cas.read(manifest_uri)
    inputs, covered = logparts.compaction_inputs(names, found.doc)
    if len(inputs) <= 1:  # one file (or none) is as compact as it gets
        return None
    ident = ident or uuid.uuid4().hex[:12]
    outputs: list[str] = []
    rows = 0
    try:
        chunk: list[pa.Table] = []
        chunk_rows = 0
        for name in inputs:
            table = pq.read_table(f"{partition}/{name}", filesystem=fs, schema=schema)
            chunk.append(table)
            chunk_rows += table.num_rows
            if chunk_rows >= rows_per_file:
                rows += _write_compacted(fs, uri, chunk, f"{ident}{len(outputs):03d}", outputs)
                chunk, chunk_rows = [], 0
        if chunk_rows or not outputs:
            rows += _write_compacted(fs, uri, chunk or [schema.empty_table()], f"{ident}{len(outputs):03d}",
                                     outputs)
        doc = {"files": outputs, "covered": covered, "rows": rows, "compacted_at": time.time(),
               "replaced": len(inputs)}
        cas.write(manifest_uri, doc, found.generation)
    except BaseException as err:
        for name in outputs:  # never published: nobody reads them
            storage.delete_file(storage.join(uri, name))
        if isinstance(err, ConcurrentUpdateError):
            return None  # another compactor published first; its result stands
        raise
    deleted = sum(storage.delete_file(storage.join(uri, n)) for n in logparts.superseded(names, doc))
    return Compaction(uri, len(inputs), outputs, deleted, rows)


def _write_compacted(fs: pafs.FileSystem, uri: str, tables: list[pa.Table], ident: str, outputs: list[str]) -> int:
    table = pa.concat_tables(tables)
    if table.num_rows:
        first, last = _span_ms(table)
    else:
        first = last = 0
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=64 * 1024)
    name = logparts.compacted_name(ident, first, last)
    storage.atomic_write_bytes(storage.join(uri, name), sink.getvalue().to_pybytes())
    outputs.append(name)
    return table.num_rows


def _labels(feedback: pa.Table) -> tuple[list[str], list[int], list[Any], list[Any]]:
    latest: dict[str, tuple[Any, Any]] = {}
    order = pc.sort_indices(feedback, [("ts", "ascending")])
    for rid, ts, labels in zip(*(pc.take(feedback.column(c), order).to_pylist()
                                 for c in ("request_id", "ts", "labels")), strict=True):
        latest[rid] = (ts, labels)  # a request labelled twice: the latest feedback wins
    rids, rows, values, times = [], [], [], []
    for rid, (ts, text) in latest.items():
        try:
            labels = json.loads(text) if isinstance(text, str) else None
        except ValueError:
            continue
        if not isinstance(labels, list):
            labels = [labels]  # a single label for a one-instance request
        for i, label in enumerate(labels):
            if label is not None:
                rids.append(rid)
                rows.append(i)
                values.append(label)
                times.append(ts)
    return rids, rows, values, times


def join_feedback(predictions: pa.Table, feedback: pa.Table, *, how: str = "inner") -> pa.Table:
    """Predictions with their labels: one row per (request_id, row) with ``label`` and ``feedback_ts`` added.

    ``labels[i]`` of the latest feedback for a request labels its instance ``i``. ``how='inner'`` keeps labelled
    rows only; ``'left'`` keeps every prediction (label null when none arrived). Shadow predictions join too,
    so a shadow version is judged on the same labels. ``label`` has the labels' JSON type (number, string,
    bool); labels of mixed types come back as JSON text.
    """
    if how not in ("inner", "left"):
        raise ValueError(f"how={how!r}; use 'inner' or 'left'")
    rids, rows, values, times = _labels(feedback)
    try:
        label = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        label = pa.array([json.dumps(v) for v in values], pa.string())
    right = pa.table({
        "request_id": pa.array(rids, pa.string()),
        "row": pa.array(rows, pa.int32()),
        "label": label if len(values) else pa.nulls(0, pa.float64()),
        "feedback_ts": pa.array(times, _TS),
    })
    joined = predictions.join(right, keys=["request_id", "row"], join_type=f"{how} outer" if how == "left"
                              else "inner")
    return joined.sort_by([("ts", "ascending"), ("request_id", "ascending"), ("row", "ascending")])
