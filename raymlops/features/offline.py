"""Historical (point-in-time-correct) retrieval: training sets as of each entity row's time.

``get_historical_features(repo, service, entity_rows)`` appends the service's features to ``entity_rows``
(join keys + a timestamp, plus anything else, e.g. labels) using ``raymlops.core.pit`` (polars ``join_asof``,
backward, tolerance = TTL). With ``partitions=1`` it runs in this process; with ``partitions=P > 1`` on Ray: each
source file group is read by a task that splits its rows by a hash of the entity key into P parts, and P join tasks
each join one part of the entity rows with the same part of every view — a hash shuffle on plain Ray tasks, so the
work spreads over the cluster and no task holds more than its share. Both paths give identical results.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads

from raymlops import storage
from raymlops.core.pit import ROW, point_in_time_join, prepare_feature_rows, time_unit
from raymlops.errors import FeatureStoreError
from raymlops.features.definitions import FeatureRepo, ResolvedView

__all__ = ["entity_frame", "get_historical_features", "read_view_rows", "source_files", "source_time_types"]

POLARS_TYPES = {"int64": pl.Int64, "float64": pl.Float64, "string": pl.Utf8, "bool": pl.Boolean}
_PART = "__raymlops_part"


# --------------------------------------------------------------------------------------------- sources
def source_files(view: ResolvedView) -> tuple[Any, list[str], str]:
    """Filesystem, data files (sorted; hidden and temporary files skipped) and format of a view's source."""
    fs, path = storage.resolve(view.source_uri)
    info = fs.get_file_info(path)
    if info.type.name == "NotFound":
        raise FeatureStoreError(f"feature view '{view.name}': source {view.source_uri} does not exist; write the "
                                "data first (e.g. `raymlops features generate`) or fix source.uri")
    if info.type.name == "File":
        files = [path]
    else:
        files = [p.removeprefix(view.source_uri.split("://")[0] + "://") if "://" in view.source_uri else p
                 for p in storage.list_files(view.source_uri, (".parquet", ".pq", ".csv"))]
    if not files:
        raise FeatureStoreError(f"feature view '{view.name}': no .parquet or .csv files under {view.source_uri}")
    fmt = view.source_format
    if fmt == "auto":
        fmt = "csv" if files[0].endswith(".csv") else "parquet"
    return fs, files, fmt


def _dataset(view: ResolvedView, files: list[str] | None = None) -> pads.Dataset:
    fs, all_files, fmt = source_files(view)
    try:
        return pads.dataset(files or all_files, filesystem=fs, format=fmt)
    except (pa.ArrowInvalid, OSError) as err:
        raise FeatureStoreError(f"feature view '{view.name}': cannot read {view.source_uri}: {err}") from None


def _columns(view: ResolvedView) -> list[str]:
    ts = [view.event_timestamp, *([view.created_timestamp] if view.created_timestamp else [])]
    return [*view.join_keys, *ts, *view.features]


def read_view_rows(view: ResolvedView, files: list[str] | None = None) -> pl.DataFrame:
    """The view's key, timestamp and feature columns, keys and features cast to their declared types."""
    ds = _dataset(view, files)
    missing = [c for c in _columns(view) if c not in ds.schema.names]
    if missing:
        raise FeatureStoreError(f"feature view '{view.name}': column(s) {missing} are not in {view.source_uri} "
                                f"(columns: {ds.schema.names}); fix the view or the source")
    rows = pl.from_arrow(ds.to_table(columns=_columns(view)))
    return cast_declared(rows, {**view.join_keys, **view.features}, f"feature view '{view.name}'")


def cast_declared(rows: pl.DataFrame, types: dict[str, str], what: str) -> pl.DataFrame:
    """``rows`` with each column of ``types`` cast (strictly) to its declared type."""
    casts = []
    for name, declared in types.items():
        target = POLARS_TYPES[declared]
        if rows.schema[name] == target:
            continue
        if declared == "string" and rows.schema[name] not in (pl.Utf8, pl.Categorical, pl.Null):
            raise FeatureStoreError(f"{what}: column '{name}' is {rows.schema[name]}, declared string; declare its "
                                    "real type or write it as text")
        casts.append(pl.col(name).cast(target, strict=True))
    try:
        return rows.with_columns(casts) if casts else rows
    except pl.exceptions.PolarsError as err:
        raise FeatureStoreError(f"{what}: a column does not fit its declared type ({err}); fix the declared type "
                                "or the data") from None


def source_time_types(view: ResolvedView) -> list[pl.DataType]:
    """Polars dtypes of the view's event (and created) timestamp columns, from the source schema alone."""
    schema = _dataset(view).schema
    cols = [view.event_timestamp, *([view.created_timestamp] if view.created_timestamp else [])]
    return [pl.from_arrow(pa.table({c: pa.array([], schema.field(c).type)})).schema[c]
            for c in cols if c in schema.names]


# ------------------------------------------------------------------------------------------- retrieval
def entity_frame(entity_rows: Any) -> pl.DataFrame:
    """Entity rows as a polars DataFrame: from pyarrow, polars, pandas, a Ray Dataset, or a parquet/csv URI."""
    if isinstance(entity_rows, pl.DataFrame):
        return entity_rows
    if isinstance(entity_rows, pa.Table | pa.RecordBatch):
        return pl.from_arrow(entity_rows)
    if isinstance(entity_rows, str):
        fs, path = storage.resolve(entity_rows)
        fmt = "csv" if path.endswith(".csv") else "parquet"
        return pl.from_arrow(pads.dataset(path, filesystem=fs, format=fmt).to_table())
    if hasattr(entity_rows, "to_arrow"):  # a Ray Dataset or similar
        return pl.from_arrow(entity_rows.to_arrow())
    try:
        return pl.from_pandas(entity_rows)
    except (TypeError, ValueError, ImportError):
        raise FeatureStoreError(f"entity rows of type {type(entity_rows).__name__} are not supported; pass a "
                                "pyarrow Table, polars or pandas DataFrame, or a parquet/csv URI") from None


def get_historical_features(
    repo: FeatureRepo,
    service: str | Sequence[str],
    entity_rows: Any,
    *,
    timestamp: str = "event_ts",
    partitions: int = 1,
) -> pa.Table:
    """``entity_rows`` with the features of ``service`` as of each row's ``timestamp`` (see the module docstring).

    ``service``: a feature service name, or a list of ``view:feature`` (or whole ``view``) refs. Every row is kept
    in order with its columns untouched; a feature with no value at or before the row's time within the view's TTL
    is null. ``partitions > 1`` runs on Ray (which must be initialised).
    """
    entity = entity_frame(entity_rows)
    views = repo.select(service)
    what = f"service '{service}'" if isinstance(service, str) else f"features {list(service)}"
    keys: dict[str, str] = {}
    for v in views:
        keys.update(v.join_keys)
    need = [*keys, timestamp]
    missing = [c for c in need if c not in entity.columns]
    if missing:
        raise FeatureStoreError(f"entity rows lack column(s) {missing}; {what} join(s) on {list(keys)} "
                                f"as of '{timestamp}' (pass timestamp= to name another column)")
    features = [f for v in views for f in v.features]
    clash = [f for f in features if f in entity.columns]
    if clash:
        raise FeatureStoreError(f"entity rows already have column(s) {clash} that {what} serve(s); "
                                "drop or rename them, so no value is silently replaced")
    work = cast_declared(entity.select(need), keys, "entity rows").with_row_index(ROW)
    unit = time_unit(entity.schema[timestamp], *[d for v in views for d in source_time_types(v)])
    if partitions <= 1:
        joined = join_partition(work, views, unit, [[read_view_rows(v)] for v in views])
    else:
        joined = _join_on_ray(work, views, unit, partitions)
    return entity.hstack(joined.sort(ROW).select(features)).to_arrow()


def join_partition(work: pl.DataFrame, views: Sequence[ResolvedView], unit: str,
                   parts: Sequence[Sequence[pl.DataFrame]]) -> pl.DataFrame:
    """Join one partition of entity rows with each view's rows (``parts[i]``: pieces of view i)."""
    ts = work.columns[-1]
    out = work
    for view, pieces in zip(views, parts, strict=True):
        rows = pl.concat(pieces, how="vertical_relaxed") if len(pieces) > 1 else pieces[0]
        prepared = prepare_feature_rows(rows, join_keys=list(view.join_keys), event_ts=view.event_timestamp,
                                        created_ts=view.created_timestamp, features=list(view.features), unit=unit,
                                        view=view.name)
        out = point_in_time_join(out, prepared, join_keys=list(view.join_keys), timestamp=ts,
                                 features=list(view.features), ttl=view.ttl, unit=unit)
    return out


# ----------------------------------------------------------------------------------------------- on Ray
def partition_ids(rows: pl.DataFrame, keys: Sequence[str], partitions: int) -> pl.Series:
    """Partition of each row by a hash of its keys (deterministic across processes for one polars version)."""
    return (rows.select(pl.struct(list(keys)).hash(seed=0))[:, 0] % partitions).alias(_PART)


def split_by_key(rows: pl.DataFrame, keys: Sequence[str], partitions: int) -> list[pa.Table]:
    """``rows`` split into ``partitions`` arrow tables by ``partition_ids`` (empty tables included)."""
    ids = partition_ids(rows, keys, partitions)
    return [rows.filter(ids == p).to_arrow() for p in range(partitions)]


def split_view_files(view_doc: dict[str, Any], files: list[str], partitions: int) -> list[pa.Table]:
    """Ray task body: read some of a view's files and split their rows by entity-key hash."""
    view = ResolvedView.from_dict(view_doc)
    return split_by_key(read_view_rows(view, files), list(view.join_keys), partitions)


def join_task(work: pa.Table, view_docs: list[dict[str, Any]], unit: str, counts: list[int],
              *pieces: pa.Table) -> pa.Table:
    """Ray task body: one partition's point-in-time join (``counts[i]`` pieces belong to view i)."""
    views = [ResolvedView.from_dict(d) for d in view_docs]
    parts, at = [], 0
    for n in counts:
        parts.append([pl.from_arrow(t) for t in pieces[at:at + n]])
        at += n
    out = join_partition(pl.from_arrow(work), views, unit, parts)
    return out.select([ROW, *[f for v in views for f in v.features]]).to_arrow()


def _join_on_ray(work: pl.DataFrame, views: Sequence[ResolvedView], unit: str, partitions: int) -> pl.DataFrame:
    import ray

    if not ray.is_initialized():
        raise FeatureStoreError("partitions > 1 runs on Ray, which is not initialised; call ray.init() (or use "
                                "the raymlops CLI), or pass partitions=1")
    split = ray.remote(split_view_files).options(num_returns=partitions, num_cpus=1)
    join = ray.remote(join_task).options(num_cpus=1)
    tasks = max(1, int(ray.cluster_resources().get("CPU", 1)))
    ts = work.columns[-1]
    by_keys: dict[tuple[str, ...], list[ResolvedView]] = {}
    for view in views:  # entity rows can be split by one key set at a time: one shuffle per entity
        by_keys.setdefault(tuple(view.join_keys), []).append(view)
    out = work.select(ROW)
    for keys, group in by_keys.items():
        pieces: list[list[Any]] = []
        for view in group:
            _, files, _ = source_files(view)
            refs = [split.remote(view.to_dict(), files[i::tasks], partitions) for i in range(min(tasks, len(files)))]
            pieces.append([r if partitions > 1 else [r] for r in refs])
        entity_parts = split_by_key(work.select([ROW, *keys, ts]), keys, partitions)
        docs, counts = [v.to_dict() for v in group], [len(p) for p in pieces]
        results = [join.remote(entity_parts[p], docs, unit, counts, *[refs[p] for vr in pieces for refs in vr])
                   for p in range(partitions)]
        joined = pl.concat([pl.from_arrow(t) for t in ray.get(results)], how="vertical_relaxed").sort(ROW)
        out = out.hstack(joined.drop(ROW))
    return out
