"""Data preparation on Ray Data: assign splits, write each split's raw rows, fit the transform on training rows.

Output layout under ``out_uri``::

    train/ validation/ test/   parquet files with the raw rows of each split
    transform.json             the Transform fitted on the training split
    split_stats.json           the split plan, rows and label statistics per split
    _SUCCESS                   written last; lists every file with its size

A local output is built in a hidden sibling directory and renamed into place, so a crash never leaves a
complete-looking ``out_uri``. On object stores (no directory rename) files are written in place and
``_SUCCESS`` comes last; ``load_prepared`` refuses any output whose ``_SUCCESS`` or listed files are missing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from raymlops import errors, storage
from raymlops.config import Config
from raymlops.core.sketches import DatasetProfile, as_category_strings, merge_profiles, profile_table
from raymlops.core.splits import (
    SPLITS,
    SplitPlan,
    SplitSpec,
    assign_split,
    fixed_plan,
    merge_histograms,
    plan_split,
    split_histogram,
    time_bounds,
)
from raymlops.core.transform import Transform, apply_transform, fit_transform
from raymlops.errors import ConfigError, DataError, RaymlopsError

__all__ = ["AssignSplit", "PreparedData", "TransformBatch", "load_prepared", "prepare", "split_spec"]

SPLIT_COLUMN = "__raymlops_split"
_NUM_CPUS = 0.25
_HASH_BATCH_ROWS = 65_536  # bounds the per-byte temporaries of string hashing; results do not depend on it
_SUCCESS = "_SUCCESS"


@dataclass(frozen=True)
class PreparedData:
    """A finished preparation: its root URI, one URI per split, the fitted transform and rows per split."""

    uri: str
    split_uris: dict[str, str]
    transform: Transform
    rows: dict[str, int]


class AssignSplit:
    """``map_batches`` callable (pyarrow batches): appends the split name of each row as ``SPLIT_COLUMN``."""

    def __init__(self, plan: SplitPlan):
        self.plan = plan

    def __call__(self, batch: pa.Table) -> pa.Table:
        names = np.asarray(SPLITS, dtype=object)[assign_split(batch, self.plan)]
        return batch.append_column(SPLIT_COLUMN, pa.array(names, pa.string()))


class TransformBatch:
    """``map_batches`` callable: raw rows in, ``{"x_num", "x_cat"[, "y"]}`` numpy batches out.

    Use ``ds.map_batches(TransformBatch(transform), batch_format="pyarrow")`` for training and batch
    prediction; it is ``apply_transform`` and nothing else, the same code online serving runs.
    """

    def __init__(self, transform: Transform, *, with_label: bool | None = None):
        self.transform = transform
        self.with_label = with_label

    def __call__(self, batch: pa.Table | dict[str, Any]) -> dict[str, np.ndarray]:
        return apply_transform(self.transform, batch, with_label=self.with_label)


class _TimeBounds:
    def __init__(self, column: str):
        self.column = column

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        lo, hi, nulls = time_bounds(batch, self.column)
        return {"lo": np.array([lo]), "hi": np.array([hi]), "nulls": np.array([nulls])}


class _SplitHistogram:
    def __init__(self, spec: SplitSpec, bounds: tuple[float, float] | None):
        self.spec, self.bounds = spec, bounds

    def __call__(self, batch: pa.Table) -> pa.Table:
        return split_histogram(batch, self.spec, self.bounds)


class _Summarise:
    """One JSON row per block: rows and label summary per split, and the profile of the block's training rows.

    Splits are a pure function of the plan, so this pass over the source sees exactly the rows the write pass
    writes; it replaces reading the written files back (one Ray Data execution instead of four).
    """

    def __init__(self, plan: SplitPlan, label: str, task: str, columns: list[str] | None, categorical: set[str]):
        self.plan, self.label, self.task = plan, label, task
        self.columns, self.categorical = columns, categorical

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        codes = assign_split(batch, self.plan)
        out: dict[str, Any] = {"splits": {}, "profile": None}
        for code, split in enumerate(SPLITS):
            mask = codes == code
            if not mask.any():
                continue
            part = batch.filter(pa.array(mask))
            out["splits"][split] = _label_summary(part.column(self.label), self.task)
            if split == "train" and self.columns is not None:
                out["profile"] = profile_table(part.select(self.columns), categorical=self.categorical).to_dict()
        return {"summary": np.array([json.dumps(out)], dtype=object)}


class _KeepSplit:
    def __init__(self, plan: SplitPlan, split: str):
        self.plan, self.code = plan, SPLITS.index(split)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch.filter(pa.array(assign_split(batch, self.plan) == self.code))


def _label_summary(column: pa.ChunkedArray, task: str) -> dict[str, Any]:
    summary: dict[str, Any] = {"rows": len(column), "nulls": column.null_count}
    if task == "regression":
        y = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
        ok = np.isfinite(y)
        summary.update(nulls=int((~ok).sum()), sum=float(y[ok].sum()), sumsq=float(np.square(y[ok]).sum()))
    else:
        vc = pc.value_counts(as_category_strings(column).drop_null())
        summary["counts"] = dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True))
    return summary


def _merge_summaries(parts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {s: {"rows": 0, "nulls": 0, "sum": 0.0, "sumsq": 0.0, "counts": {}}
                                         for s in SPLITS}
    for part in parts:
        for split, summary in part["splits"].items():
            m = merged[split]
            for key in ("rows", "nulls", "sum", "sumsq"):
                m[key] += summary.get(key, 0)
            for value, n in summary.get("counts", {}).items():
                m["counts"][value] = m["counts"].get(value, 0) + n
    return merged


def _split_stats(transform: Transform, split: str, m: dict[str, Any]) -> dict[str, Any]:
    """Rows and label statistics of one split, checked against the fitted classes."""
    label = transform.label
    if m["nulls"]:
        raise DataError(f"{m['nulls']} rows of the {split} split have no usable label '{label}' (null or "
                        "non-finite); drop them before preparing (validation.require_label stops such data)")
    n = m["rows"]
    if transform.task == "regression":
        mean = m["sum"] / n if n else None
        std = float(np.sqrt(max(m["sumsq"] / n - mean * mean, 0.0))) if n else None
        return {"rows": n, "label_mean": mean, "label_std": std}
    keys = list(m["counts"])
    try:
        y = apply_transform(Transform([], [], label, transform.task, transform.classes),
                            {label: pa.array(keys, pa.string())}, with_label=True)["y"].astype(np.int64)
    except DataError as err:
        raise DataError(f"{split} split: {err}") from None
    counts = np.zeros(max(2, len(transform.classes)), np.int64)
    np.add.at(counts, y, [m["counts"][k] for k in keys])
    stats: dict[str, Any] = {"rows": n, "class_counts": {str(c): int(k) for c, k in zip(transform.classes,
                                                                                         counts, strict=False)}}
    if transform.task == "binary":
        stats["label_rate"] = float(counts[1] / n) if n else None
    return stats


# ----------------------------------------------------------------------------------------------- helpers
def _name(item: Any) -> str:
    return item if isinstance(item, str) else item.name


_REMOTE_ERROR = re.compile(r"^raymlops\.errors\.(\w+): (.+)$", re.MULTILINE)


@contextmanager
def _typed_errors() -> Iterator[None]:
    """Re-raise the raymlops error behind a failed Ray task, so callers see DataError, not RayTaskError.

    Ray Data hands the driver only the worker's traceback text (``UserCodeException`` carries no cause), so
    the error is rebuilt from its last ``raymlops.errors.X: message`` line.
    """
    try:
        yield
    except RaymlopsError:
        raise
    except Exception as err:
        found = _REMOTE_ERROR.findall(str(err))
        cls = getattr(errors, found[-1][0], None) if found else None
        if isinstance(cls, type) and issubclass(cls, RaymlopsError):
            raise cls(found[-1][1]) from err
        raise


def split_spec(cfg: Config, columns: list[str], label: str) -> SplitSpec:
    """The ``SplitSpec`` for a config and dataset columns.

    Random splits hash ``data.id_columns`` + ``data.timestamp`` (those present; every column but the label
    when none is). Stratification applies to random splits of classification tasks.
    """
    s, d = cfg.data.split, cfg.data
    ts = d.timestamp if d.timestamp in columns else None
    if s.method == "time" and ts is None:
        if d.timestamp is None:
            raise ConfigError("data.split.method is 'time' but data.timestamp is null; set it or use method random")
        raise DataError(f"time split: column '{d.timestamp}' is not in the data (columns: {columns}); "
                        "fix data.timestamp or use data.split.method: random")
    keys = [c for c in d.id_columns if c in columns] + ([ts] if ts else [])
    if not keys:
        keys = [c for c in columns if c != label]
    stratify = s.stratify and s.method == "random" and d.task != "regression"
    return SplitSpec(
        method=s.method,
        validation_frac=s.validation_pct / 100.0,
        test_frac=s.test_pct / 100.0,
        seed=s.seed,
        key_columns=tuple(keys),
        stratify_by=label if stratify else None,
        timestamp=ts,
    )


def _fit_plan(ds: Any, spec: SplitSpec) -> SplitPlan:
    if spec.method == "random" and not spec.stratify_by:
        return fixed_plan(spec)
    bounds = None
    if spec.method == "time":
        rows = ds.select_columns([spec.timestamp]).map_batches(
            _TimeBounds(spec.timestamp), batch_format="pyarrow", batch_size=None, num_cpus=_NUM_CPUS
        ).take_all()
        nulls = sum(int(r["nulls"]) for r in rows)
        if nulls:
            raise DataError(f"time split: {nulls} rows have a null '{spec.timestamp}'; drop or fill them "
                            "before preparing, or use data.split.method: random")
        lows = [r["lo"] for r in rows if np.isfinite(r["lo"])]
        if not lows:
            raise DataError(f"time split: column '{spec.timestamp}' has no values; the dataset is empty")
        bounds = (float(min(lows)), float(max(r["hi"] for r in rows if np.isfinite(r["hi"]))))
    needed = list(dict.fromkeys([*spec.key_columns, *filter(None, [spec.stratify_by, spec.timestamp])]))
    parts = ds.select_columns(needed).map_batches(
        _SplitHistogram(spec, bounds), batch_format="pyarrow", batch_size=_HASH_BATCH_ROWS, num_cpus=_NUM_CPUS
    )
    hist = merge_histograms([])
    for part in parts.iter_batches(batch_format="pyarrow", batch_size=None):
        hist = merge_histograms([hist, part])
    return plan_split(spec, hist, bounds)


def _renames_atomically(uri: str) -> bool:
    return storage.is_local(uri)  # object stores have no directory rename (a "move" copies object by object)


def _staged(out_uri: str):
    return storage.staged_dir(out_uri, _SUCCESS, in_place=not _renames_atomically(out_uri))


def _write_splits(ds: Any, root: str) -> dict[str, list[str]]:
    """Write the rows of each split under ``root/<split>/``; returns the parquet files of each split."""
    ds.write_parquet(root, partition_cols=[SPLIT_COLUMN], ray_remote_args={"num_cpus": _NUM_CPUS})
    fs, base = storage.resolve(root)
    files = {}
    for split in SPLITS:
        target = f"{base}/{split}"
        hive = f"{base}/{SPLIT_COLUMN}={split}"
        if fs.get_file_info(hive).type == pafs.FileType.Directory:
            _move_dir(fs, hive, target)
        else:
            fs.create_dir(target, recursive=True)  # an empty split still gets its directory
        files[split] = storage.list_files(storage.join(root, split), suffixes=(".parquet",))
    return files


def _move_dir(fs: pafs.FileSystem, src: str, dst: str) -> None:
    """Rename directory ``src`` to ``dst``; on an object store, which has no directories (S3's CopyObject takes one
    key, so pyarrow's move of a "directory" fails), object by object."""
    if not storage.is_object_store(fs):
        fs.move(src, dst)
        return
    for info in fs.get_file_info(pafs.FileSelector(src, recursive=True)):
        if info.type == pafs.FileType.File:
            fs.move(info.path, dst + info.path[len(src):])


def _iso_cuts(plan: SplitPlan, ts_type: pa.DataType | None) -> list[str] | None:
    if plan.spec.method != "time" or ts_type is None or not (pa.types.is_timestamp(ts_type) or
                                                              pa.types.is_date(ts_type)):
        return None
    return [datetime.fromtimestamp(c / 1e6, tz=timezone.utc).isoformat() for c in plan.default]


# ------------------------------------------------------------------------------------------------ prepare
def _summarise(ds: Any, plan: SplitPlan, label: str, task: str, features: list[str], categorical: set[str],
               train_profile_fn: Callable[[Any, set[str]], DatasetProfile] | None,
               ) -> tuple[dict[str, dict[str, Any]], DatasetProfile]:
    spec = plan.spec
    profile_cols = [*features, label]
    needed = list(dict.fromkeys([*profile_cols, *spec.key_columns, *filter(None, [spec.timestamp])]))
    rows = ds.select_columns(needed).map_batches(
        _Summarise(plan, label, task, None if train_profile_fn else profile_cols, categorical),
        batch_format="pyarrow", batch_size=_HASH_BATCH_ROWS, num_cpus=_NUM_CPUS,
    ).take_all()
    parts = [json.loads(r["summary"]) for r in rows]
    if train_profile_fn is not None:
        train = ds.select_columns(needed).map_batches(
            _KeepSplit(plan, "train"), batch_format="pyarrow", batch_size=_HASH_BATCH_ROWS, num_cpus=_NUM_CPUS
        ).select_columns(profile_cols)
        profile = train_profile_fn(train, categorical)
    else:
        profile = merge_profiles(DatasetProfile.from_dict(p["profile"]) for p in parts if p["profile"])
    return _merge_summaries(parts), profile


def prepare(
    cfg: Config,
    dataset: Any,
    schema: Any,
    out_uri: str,
    train_profile_fn: Callable[[Any, set[str]], DatasetProfile] | None = None,
) -> PreparedData:
    """Split ``dataset`` (a ``ray.data.Dataset``), write each split's raw rows and fit the transform.

    ``schema`` gives the features (numeric / categorical), label and task; the transform is fitted on the
    profile of the training rows only. By default that profile comes from the same pass that counts rows and
    labels per split; ``train_profile_fn(train_ds, categorical) -> DatasetProfile`` replaces it (e.g.
    ``raymlops.data.profile.profile_dataset``). Returns what ``load_prepared(out_uri)`` returns.
    """
    arrow_schema = dataset.schema().base_schema
    columns = list(arrow_schema.names)
    label = _name(schema.label) if schema.label is not None else cfg.data.label
    categorical = [_name(c) for c in schema.categorical_features]
    features = [_name(c) for c in schema.numeric_features] + categorical
    missing = [c for c in [*features, label] if c not in columns]
    if missing:
        raise DataError(f"columns {missing} are in the schema but not in the data (columns: {columns}); "
                        "fix data.features / data.label or the data")
    label_type = arrow_schema.field(label).type
    if schema.task == "regression" and not (pa.types.is_integer(label_type) or pa.types.is_floating(label_type)
                                            or pa.types.is_decimal(label_type)):
        raise DataError(f"label '{label}' has type {label_type}; a regression label must be numeric "
                        "(fix the data or data.task)")
    spec = split_spec(cfg, columns, label)
    # Fail in the driver, not in a Ray task, on key or time columns of an unusable type.
    assign_split(arrow_schema.empty_table(), SplitPlan(spec, (0.0, 0.0)))
    cats = set(categorical) | ({label} if schema.task != "regression" else set())
    with _typed_errors():
        plan = _fit_plan(dataset, spec)
        summaries, profile = _summarise(dataset, plan, label, schema.task, features, cats, train_profile_fn)
        rows = {s: int(summaries[s]["rows"]) for s in SPLITS}
        _check_rows(rows, spec)
        transform = fit_transform(
            profile, schema,
            numeric_impute=cfg.prepare.numeric_impute, standardize=cfg.prepare.standardize,
            min_category_count=cfg.prepare.min_category_count, max_categories=cfg.prepare.max_categories,
        )
        ts_type = arrow_schema.field(spec.timestamp).type if spec.timestamp else None
        split_doc = {
            "plan": plan.to_dict(),
            "time_cuts": _iso_cuts(plan, ts_type),
            "splits": {s: _split_stats(transform, s, summaries[s]) for s in SPLITS},
        }
        with _staged(out_uri) as root:
            assigned = dataset.map_batches(
                AssignSplit(plan), batch_format="pyarrow", batch_size=_HASH_BATCH_ROWS, num_cpus=_NUM_CPUS
            )
            files = _write_splits(assigned, root)
            storage.atomic_write_text(storage.join(root, "transform.json"), transform.to_json())
            storage.atomic_write_text(storage.join(root, "split_stats.json"), json.dumps(split_doc, indent=1))
            _write_success(root, files)
    return PreparedData(out_uri, {s: storage.join(out_uri, s) for s in SPLITS}, transform, rows)


def _check_rows(rows: dict[str, int], spec: SplitSpec) -> None:
    total = sum(rows.values())
    wanted = {"train": spec.train_frac, "validation": spec.validation_frac, "test": spec.test_frac}
    empty = [s for s in SPLITS if rows[s] == 0 and wanted[s] > 0]
    if empty:
        raise DataError(f"splits {empty} got no rows out of {total}; the dataset is too small for fractions "
                        f"{wanted} (add data or change data.split)")


def _write_success(root: str, files: dict[str, list[str]]) -> None:
    fs, base = storage.resolve(root)
    # URIs, not ``base`` paths: resolving a scheme-less bucket path would make it a local one
    listed = [storage.join(root, "transform.json"), storage.join(root, "split_stats.json")]
    listed += [f for s in SPLITS for f in files[s]]
    paths = [storage.resolve(p)[1] for p in listed]
    sizes = {info.path[len(base) + 1:]: info.size for info in fs.get_file_info(paths)}
    storage.atomic_write_text(storage.join(root, _SUCCESS), json.dumps({"files": sizes}, indent=1, sort_keys=True))


# ------------------------------------------------------------------------------------------------ loading
def load_prepared(uri: str) -> PreparedData:
    """Read a finished preparation; ``DataError`` naming the missing or broken file if it is incomplete."""
    success = storage.join(uri, _SUCCESS)
    if not storage.exists(success):
        raise DataError(f"{success} is missing: the preparation at {uri} is incomplete or was never run; "
                        "run prepare again")
    try:
        listed = json.loads(storage.read_text(success))["files"]
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{success} is corrupt; run prepare again") from None
    fs, base = storage.resolve(uri)
    for rel, size in sorted(listed.items()):
        info = fs.get_file_info(f"{base}/{rel}")
        if info.type != pafs.FileType.File or info.size != size:
            raise DataError(f"{storage.join(uri, rel)} is missing or has changed since prepare finished; "
                            "run prepare again")
    transform_uri = storage.join(uri, "transform.json")
    try:
        transform = Transform.from_json(storage.read_text(transform_uri))
    except DataError as err:
        raise DataError(f"{transform_uri}: {err}") from None
    stats = json.loads(storage.read_text(storage.join(uri, "split_stats.json")))
    rows = {s: int(stats["splits"][s]["rows"]) for s in SPLITS}
    return PreparedData(uri, {s: storage.join(uri, s) for s in SPLITS}, transform, rows)
