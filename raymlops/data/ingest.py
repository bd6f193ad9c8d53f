"""Ingestion: a file, glob, directory or pyarrow filesystem URI (file://, s3://, gs://) into a Ray Dataset.

Everything that can be checked cheaply is checked on the driver before Ray reads a row: the file list (resolved
with pyarrow.fs, so Ray gets explicit paths and never lists on its own), each parquet footer (corrupt files, row
counts, time statistics), each CSV header block, and the agreement of the files' schemas. Errors name the file
or column and say what to do.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raymlops.errors import ConfigError, DataError, SnapshotChangedError
from raymlops.storage import resolve

if TYPE_CHECKING:
    import ray.data

    from raymlops.data.local import LocalDataset

__all__ = ["IngestResult", "data_files", "filter_window", "identities_digest", "ingest", "ingest_data", "pin_snapshot",
           "pinned_identities", "read_dataset", "snapshot", "snapshot_identities", "verify_snapshot"]

SUFFIXES = MappingProxyType({"parquet": (".parquet", ".pq", ".parq"), "csv": (".csv", ".csv.gz")})
_GLOB = re.compile(r"[*?\[]")
_UTC = dt.timezone.utc
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=_UTC)
_TARGET_BLOCK_BYTES = 64 * 1024 * 1024
_IO_THREADS = 16
_HASH_CHUNK = 8 << 20


@dataclass(frozen=True)
class IngestResult:
    """A lazily read dataset (or, for small data read with ``local_max_rows``, a ``LocalDataset`` in memory),
    the files behind it (URIs, sorted), its row count (after the time window), its format and its (unified)
    Arrow schema."""

    dataset: ray.data.Dataset | LocalDataset
    files: list[str]
    rows: int
    format: str
    schema: pa.Schema


def ingest_data(data, source: str | None = None, *, local: bool = False) -> IngestResult:
    """`ingest` with a config's `data` section (format, timestamp, window); `source` overrides `data.source`.

    With `local`, a parquet source of at most `data.local_max_rows` rows is read in this process
    (a `LocalDataset`) instead of through Ray Data."""
    return ingest(source or data.source, fmt=data.format, timestamp=data.timestamp,
                  window_start=data.window.start, window_end=data.window.end,
                  local_max_rows=data.local_max_rows if local else 0)


def read_dataset(
    source: str,
    *,
    fmt: str = "auto",
    timestamp: str | None = None,
    window_start: str | None = None,
    window_end: str | None = None,
    columns: Sequence[str] | None = None,
) -> ray.data.Dataset:
    """The dataset of `ingest(...)` (same arguments and checks)."""
    return ingest(source, fmt=fmt, timestamp=timestamp, window_start=window_start, window_end=window_end,
                  columns=columns).dataset


def ingest(
    source: str,
    *,
    fmt: str = "auto",
    timestamp: str | None = None,
    window_start: str | None = None,
    window_end: str | None = None,
    columns: Sequence[str] | None = None,
    num_cpus: float = 0.5,
    local_max_rows: int = 0,
) -> IngestResult:
    """Read `source` lazily with Ray Data, after checking files, schemas and the time window up front.

    `fmt` is `auto` (from the suffix), `parquet` or `csv`. The window is on the `timestamp` column, ISO-8601 bounds,
    start inclusive, end exclusive, naive times read as UTC. Raises `DataError` for unreadable sources, no files,
    corrupt files, conflicting schemas, a missing column and an empty result; `ConfigError` for bad arguments.
    A parquet source whose footers count at most `local_max_rows` rows is read here, into a `LocalDataset`.
    """
    if fmt not in ("auto", *SUFFIXES):
        raise ConfigError(f"data format {fmt!r} is not supported; use auto, parquet or csv")
    start, end = _instant(window_start, "window start"), _instant(window_end, "window end")
    if start is not None and end is not None and start >= end:
        raise ConfigError(f"time window start {window_start} is not before its end {window_end}")
    windowed = start is not None or end is not None
    if windowed and not timestamp:
        raise ConfigError("a time window needs the timestamp column; set data.timestamp (e.g. event_ts)")

    fs, prefix, listed = _list(source, fmt)
    kind = _format(source, fmt, [p for p, _ in listed], prefix)
    sizes = dict(listed)
    paths = sorted(sizes)
    schemas = (_parquet_footers if kind == "parquet" else _csv_schemas)(fs, paths, prefix)
    if timestamp:
        _check_timestamp(schemas, timestamp, windowed, prefix)

    full_rows, partial, span = 0, [], None
    if kind == "parquet" and windowed:
        full_rows, partial, paths, span = _prune(schemas, timestamp, start, end)
    elif kind == "parquet":
        full_rows = sum(md.num_rows for _, md in schemas.values())
    if not paths:
        raise DataError(_empty(source, window_start, window_end, span))
    schema = _unify([(p, schemas[p][0]) for p in paths], prefix)
    missing = [c for c in columns or () if c not in schema.names]
    if missing:
        raise DataError(f"column(s) {missing} are not in {source}; its columns are {schema.names}")

    keep = None if columns is None else list(columns)

    def read_columns(keep: list[str] | None) -> list[str] | None:
        return None if keep is None else keep + ([timestamp] if windowed and timestamp not in keep else [])

    def build(subset: list[str], keep: list[str] | None) -> ray.data.Dataset:
        ds = _read(kind, fs, subset, schema, read_columns(keep), sum(sizes[p] for p in subset), num_cpus)
        if not windowed:
            return ds
        return ds.map_batches(
            filter_window,
            batch_format="pyarrow",
            batch_size=None,
            zero_copy_batch=True,
            num_cpus=num_cpus,  # same resources as the read, so Ray fuses the two into one task
            fn_kwargs={"column": timestamp, "start_us": _us(start), "end_us": _us(end), "keep": keep},
        )

    if kind == "parquet" and full_rows + sum(schemas[p][1].num_rows for p in partial) <= local_max_rows:
        from raymlops.data.local import LocalDataset

        table = pads.dataset(paths, schema=schema, format="parquet", filesystem=fs).to_table(
            columns=read_columns(keep))
        if windowed:
            table = filter_window(table, column=timestamp, start_us=_us(start), end_us=_us(end), keep=keep)
        dataset, rows = LocalDataset(table), table.num_rows
    else:
        dataset = build(paths, keep)
        rows = full_rows
        if kind == "csv":
            rows = dataset.count()
        elif partial:
            rows += build(partial, [timestamp]).count()
    if rows == 0:
        raise DataError(_empty(source, window_start, window_end, span))
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns])
    return IngestResult(dataset, [prefix + p for p in paths], rows, kind, schema)


def filter_window(batch: pa.Table, *, column: str, start_us: int | None, end_us: int | None,
                  keep: list[str] | None = None) -> pa.Table:
    """Rows of `batch` with `start_us <= column < end_us` (UTC epoch microseconds; None = unbounded)."""
    ts = batch.column(column)
    if pa.types.is_null(ts.type):  # a file whose timestamps are all null has no rows in any window
        batch = batch.slice(0, 0)
        return batch.select(keep) if keep is not None else batch
    if pa.types.is_date(ts.type):
        ts = ts.cast(pa.timestamp("us"))
    # Naive timestamps hold UTC wall-clock values, so their integers compare directly with UTC bounds.
    us = ts.cast(pa.timestamp("us", ts.type.tz), safe=False).cast(pa.int64())
    mask = None
    if start_us is not None:
        mask = pc.greater_equal(us, start_us)
    if end_us is not None:
        below = pc.less(us, end_us)
        mask = below if mask is None else pc.and_(mask, below)
    out = batch.filter(mask) if mask is not None else batch
    return out.select(keep) if keep is not None else out


# ------------------------------------------------------------------------------------------------ files
def data_files(source: str, fmt: str = "auto") -> list[str]:
    """The data files under `source` (URIs, sorted): a listing only, no file is opened (e.g. to watch for new files)."""
    fs, prefix, found = _list(source, fmt)
    return sorted(prefix + path for path, _ in found)


def snapshot(source: str, fmt: str = "auto") -> tuple[list[str], str]:
    """The data files under `source` and a digest of their contents: a changed, added or removed file changes it.

    A file is identified by its content, not its path, size and mtime (a file swapped for another with the same size
    and mtime changes the digest): a parquet file by its size and the exact bytes of its footer (schema, row counts,
    every column chunk's offsets, sizes and min/max/null statistics), which costs one small read however big the
    file; any other file by the sha256 of its bytes. See `snapshot_identities`.
    """
    identities = snapshot_identities(source, fmt)
    return sorted(identities), identities_digest(identities)


def snapshot_identities(source: str, fmt: str = "auto") -> dict[str, str]:
    """Each data file under `source` (URI) and its content identity (see `snapshot`); reads footers in parallel."""
    fs, prefix, found = _list(source, fmt)
    paths = sorted(path for path, _ in found)
    with ThreadPoolExecutor(min(_IO_THREADS, len(paths))) as pool:  # latency-bound on object stores
        ids = list(pool.map(lambda p: _identity(fs, p, prefix), paths))
    return {prefix + p: i for p, i in zip(paths, ids, strict=True)}


def identities_digest(identities: dict[str, str]) -> str:
    """The snapshot digest of per-file identities (what `snapshot` returns)."""
    h = hashlib.sha256(b"content-v1\n")
    for uri in sorted(identities):
        h.update(f"{uri}\0{identities[uri]}\n".encode())
    return h.hexdigest()


def verify_snapshot(source: str, fmt: str, digest: str, identities: dict[str, str] | None = None) -> None:
    """Refuse (`SnapshotChangedError`) when the data under `source` is no longer the snapshot `digest`.

    With the `identities` recorded when the snapshot was validated, the error names each added, removed or changed
    file; without them it names the source.
    """
    now = snapshot_identities(source, fmt)
    if identities_digest(now) == digest:
        return
    what = source
    if identities:
        changed = sorted(u for u in set(now) | set(identities) if now.get(u) != identities.get(u))
        if changed:
            def state(u: str) -> str:
                return "added" if u not in identities else "removed" if u not in now else "changed"

            what = ", ".join(f"{u} ({state(u)})" for u in changed[:5]) + (
                f" and {len(changed) - 5} more" if len(changed) > 5 else "")
    raise SnapshotChangedError(
        f"the data changed since it was validated: {what}; the validated snapshot is not what would be read. Re-run "
        "validate on the new data: start a new run (`raymlops run CONFIG`, without --resume), or restore the "
        "validated files")


def pin_snapshot(source: str, fmt: str, digest: str, uri: str) -> str:
    """Record the per-file identities of the snapshot `digest` at `uri` (JSON) for `verify_snapshot`; returns `uri`.

    Called when validation is done: raises `SnapshotChangedError` if the data already differs from `digest` (it
    changed while it was being validated). An empty `digest` pins whatever is there now.
    """
    identities = snapshot_identities(source, fmt)
    if digest and identities_digest(identities) != digest:
        raise SnapshotChangedError(
            f"the data under {source} changed while it was being validated; re-run validate on data that is no "
            "longer being written (start a new run: `raymlops run CONFIG`)")
    from raymlops import storage

    storage.atomic_write_text(uri, json.dumps({"source": source, "files": identities}, indent=1, sort_keys=True))
    return uri


def pinned_identities(uri: str | None) -> dict[str, str] | None:
    """The identities `pin_snapshot` recorded at `uri` (None when there is no record, e.g. an older run)."""
    from raymlops import storage

    if not uri or not storage.exists(uri):
        return None
    return dict(json.loads(storage.read_text(uri))["files"])


def _identity(fs, path: str, prefix: str) -> str:
    try:
        with fs.open_input_file(path) as f:
            size = f.size()
            if path.endswith(SUFFIXES["parquet"]) and size >= 12:
                tail = f.read_at(8, size - 8)
                if tail[4:] == b"PAR1":
                    footer_len = int.from_bytes(tail[:4], "little")
                    if 0 < footer_len <= size - 12:
                        footer = f.read_at(footer_len, size - 8 - footer_len)
                        return f"parquet:{size}:{hashlib.sha256(footer).hexdigest()}"
            h = hashlib.sha256()  # CSV, or a parquet file too damaged for a footer: hash every byte
            offset = 0
            while offset < size:
                chunk = f.read_at(min(_HASH_CHUNK, size - offset), offset)
                if not chunk:
                    break
                h.update(chunk)
                offset += len(chunk)
            return f"sha256:{size}:{h.hexdigest()}"
    except OSError as err:
        raise DataError(f"cannot read {prefix + path} to identify it: {err}; check permissions and that it was not "
                        "removed meanwhile") from None


def _list(source: str, fmt: str) -> tuple[pafs.FileSystem, str, list[tuple[str, int]]]:
    """Filesystem, display prefix (`s3://`, or '' for local paths) and the (path, size) of each data file."""
    prefix = source.split("://", 1)[0] + "://" if "://" in source else ""
    body, query = source, ""
    if prefix and "?" in source and "=" in source.rpartition("?")[2]:  # s3://b/k?region=x is a query, not a glob
        body, _, q = source.rpartition("?")
        query = "?" + q
    parts = body.split("/")
    glob_at = next((i for i, p in enumerate(parts) if i >= (3 if prefix else 0) and _GLOB.search(p)), None)
    base = body if glob_at is None else "/".join(parts[:glob_at]) or ("/" if body.startswith("/") else ".")
    fs, base_path = resolve(base + query)
    try:
        info = fs.get_file_info(base_path)
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"{source} does not exist; check the path (data.source) and that the data was written")
        if info.type == pafs.FileType.File and glob_at is None:
            return fs, prefix, [(info.path, info.size)]
        pattern = parts[glob_at:] if glob_at is not None else None
        recursive = pattern is None or len(pattern) > 1 or "**" in pattern
        infos = fs.get_file_info(pafs.FileSelector(base_path, recursive=recursive))
    except OSError as err:
        raise DataError(f"cannot read {source}: {err}; check the path, permissions and credentials") from err
    root = base_path.rstrip("/") + "/"
    found = []
    for fi in infos:
        rel = fi.path[len(root):].split("/") if fi.path.startswith(root) else [fi.base_name]
        if fi.type != pafs.FileType.File or _hidden(rel):
            continue
        if pattern is not None and not _match(rel, pattern):
            continue
        if pattern is None and not fi.base_name.endswith(_suffixes(fmt)):
            continue
        found.append((fi.path, fi.size))
    if not found:
        what = "files" if fmt == "auto" else f"{fmt} files"
        raise DataError(f"no {what} matched {source}; check the path or pattern (hidden, _ and temporary files "
                        "are skipped; directories are read by suffix: .parquet, .csv)")
    return fs, prefix, found


def _hidden(rel: list[str]) -> bool:
    name = rel[-1]
    return any(p.startswith((".", "_")) for p in rel) or ".tmp-" in name or name.endswith(".tmp")


def _match(parts: list[str], pattern: list[str]) -> bool:
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_match(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _match(parts[1:], pattern[1:])


def _suffixes(fmt: str) -> tuple[str, ...]:
    return SUFFIXES[fmt] if fmt in SUFFIXES else SUFFIXES["parquet"] + SUFFIXES["csv"]


def _format(source: str, fmt: str, paths: list[str], prefix: str) -> str:
    if fmt != "auto":
        return fmt
    by_kind: dict[str, str] = {}
    for p in paths:
        kind = next((k for k, sfx in SUFFIXES.items() if p.endswith(sfx)), None)
        if kind is None:
            raise DataError(f"cannot tell the format of {prefix + p} from its suffix; set data.format "
                            "(parquet or csv) or rename it to .parquet / .csv")
        by_kind.setdefault(kind, prefix + p)
    if len(by_kind) > 1:
        raise DataError(f"{source} mixes formats: {by_kind['parquet']} (parquet) and {by_kind['csv']} (csv); "
                        "point data.source at one format, or set data.format to read only those files")
    return next(iter(by_kind))


# ------------------------------------------------------------------------------------------ footers
def _parquet_footers(fs, paths: list[str], prefix: str) -> dict[str, tuple[pa.Schema, pq.FileMetaData]]:
    def one(path: str) -> tuple[pa.Schema, pq.FileMetaData]:
        try:
            with fs.open_input_file(path) as f:
                pf = pq.ParquetFile(f)
                return pf.schema_arrow.remove_metadata(), pf.metadata
        except (OSError, pa.ArrowException) as err:
            raise DataError(f"{prefix + path} is not a readable parquet file ({err}); re-write it, or delete it "
                            "or move it out of the source") from None

    with ThreadPoolExecutor(min(_IO_THREADS, len(paths))) as pool:  # footers are tiny: latency-bound on object stores
        return dict(zip(paths, pool.map(one, paths), strict=True))


def _csv_schemas(fs, paths: list[str], prefix: str) -> dict[str, tuple[pa.Schema, None]]:
    def one(path: str) -> tuple[pa.Schema, None]:
        try:
            with fs.open_input_stream(path) as f:  # compression detected from the suffix (.csv.gz)
                return pacsv.open_csv(f).schema, None
        except (OSError, pa.ArrowException) as err:
            raise DataError(f"{prefix + path} is not a readable CSV file ({err}); fix or remove it") from None

    with ThreadPoolExecutor(min(_IO_THREADS, len(paths))) as pool:
        return dict(zip(paths, pool.map(one, paths), strict=True))


def _check_timestamp(schemas: dict, column: str, windowed: bool, prefix: str) -> None:
    for path, (schema, _) in schemas.items():
        if column not in schema.names:
            raise DataError(f"timestamp column {column!r} is not in {prefix + path}; its columns are {schema.names}."
                            " Set data.timestamp to the event-time column, or to null if there is none")
        t = schema.field(column).type
        if windowed and not (pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_null(t)):
            raise DataError(f"timestamp column {column!r} in {prefix + path} is {t}, not a timestamp or date; "
                            "write it as a timestamp (ISO-8601 strings in CSV) to filter on a time window")


def _unify(schemas: list[tuple[str, pa.Schema]], prefix: str) -> pa.Schema:
    merged, first = schemas[0][1], schemas[0][0]
    for path, schema in schemas[1:]:
        if schema.equals(merged):
            continue
        try:
            # permissive: int64 + double -> double, null + x -> x, timestamp units widen; others conflict
            merged = pa.unify_schemas([merged, schema], promote_options="permissive")
        except (pa.ArrowTypeError, pa.ArrowInvalid):
            for f in schema:
                if f.name in merged.names:
                    try:
                        pa.unify_schemas([pa.schema([merged.field(f.name)]), pa.schema([f])],
                                         promote_options="permissive")
                    except (pa.ArrowTypeError, pa.ArrowInvalid):
                        raise DataError(
                            f"column {f.name!r} is {f.type} in {prefix + path} but {merged.field(f.name).type} in "
                            f"{prefix + first} (and files before it); re-write the files with one type, or read "
                            "them separately (narrower glob or time window)") from None
            raise
    return merged


# ------------------------------------------------------------------------------------------- time window
def _instant(text: str | None, what: str) -> dt.datetime | None:
    if text is None:
        return None
    try:
        value = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not ISO-8601; write e.g. 2026-01-03 or 2026-01-03T12:00:00Z") from None
    return value.replace(tzinfo=_UTC) if value.tzinfo is None else value.astimezone(_UTC)


def _us(value: dt.datetime | dt.date | None) -> int | None:
    if value is None:
        return None
    if not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    value = value.replace(tzinfo=_UTC) if value.tzinfo is None else value
    return (value - _EPOCH) // dt.timedelta(microseconds=1)


def _prune(schemas: dict, column: str, start, end) -> tuple[int, list[str], list[str], tuple | None]:
    """From row-group statistics: rows of files wholly inside the window, files that straddle it (to count by
    reading one column), the files to read, and the span of the data (for the empty-window message)."""
    lo_us, hi_us = _us(start), _us(end)
    full, partial, keep, spans = 0, [], [], []
    for path, (_, md) in schemas.items():
        idx = next((i for i in range(md.num_columns) if md.schema.column(i).path == column), None)
        inside, straddles = 0, False
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            st = rg.column(idx).statistics if idx is not None else None
            if rg.num_rows == 0:
                continue
            if st is None or not st.has_min_max:
                straddles = True
                continue
            lo, hi = _us(st.min), _us(st.max)
            spans.append((lo, hi))
            if (hi_us is not None and lo >= hi_us) or (lo_us is not None and hi < lo_us):
                continue
            if (lo_us is None or lo >= lo_us) and (hi_us is None or hi < hi_us) and st.null_count == 0:
                inside += rg.num_rows
            else:
                straddles = True
        if straddles:
            partial.append(path)
        elif inside:
            full += inside
        if straddles or inside:
            keep.append(path)
    span = (min(s[0] for s in spans), max(s[1] for s in spans)) if spans else None
    return full, partial, keep, span


def _empty(source: str, start: str | None, end: str | None, span: tuple[int, int] | None) -> str:
    if start is None and end is None:
        return f"{source} holds no rows; write data there first (e.g. `raymlops data generate --out DIR`)"
    where = ""
    if span:
        lo, hi = (_EPOCH + dt.timedelta(microseconds=v) for v in span)
        where = f" (the data spans {lo.isoformat()} .. {hi.isoformat()})"
    return (f"no rows of {source} fall in the time window [{start or '-inf'}, {end or '+inf'}){where}; "
            "widen data.window.start/end or check the timestamp column")


# ------------------------------------------------------------------------------------------------- read
def _read(kind: str, fs, paths: list[str], schema: pa.Schema, columns: list[str] | None, nbytes: int,
          num_cpus: float) -> ray.data.Dataset:
    import ray

    from raymlops._ray import ensure_ray

    ensure_ray()  # our settings (or --address), not Ray Data's default auto-start
    slots = (ray.cluster_resources().get("CPU", 1) if ray.is_initialized() else os.cpu_count() or 1) / num_cpus
    # Many small files: group them into a few read tasks (task overhead dominates); big data: ~64 MiB per block.
    blocks = max(1, min(len(paths), max(math.ceil(nbytes / _TARGET_BLOCK_BYTES), int(slots))))
    common = dict(filesystem=fs, partitioning=None, file_extensions=None, override_num_blocks=blocks,
                  num_cpus=num_cpus)
    if kind == "parquet":
        ds = ray.data.read_parquet(paths, schema=schema, **common)
        return ds if columns is None else ds.select_columns(columns)  # pushed down into the read by Ray
    projection = {} if columns is None else {"include_columns": columns, "include_missing_columns": True}
    convert = pacsv.ConvertOptions(column_types=schema, **projection)
    return ray.data.read_csv(paths, convert_options=convert, **common)
