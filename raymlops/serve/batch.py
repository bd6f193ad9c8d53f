"""Batch prediction: score a whole dataset with a registered model version on Ray Data.

input (any file, glob, directory or URI that ``ingest`` reads) → ``map_batches(PredictPackage)`` on an actor pool →
parquet under the output URI. Each actor loads the package once, verified against the registry's digest, and
predicts with ``LoadedModel.predict``: the code path of evaluation and online serving.

Output rows: the input columns, then the prediction columns (binary: ``probability``, ``label``; multiclass:
``probabilities``, ``label``; regression: ``value``; ``label`` holds the class value, not its index), then
``model_version`` (the version number as text, as in the HTTP API). A local output is built in a hidden sibling
directory and renamed into place; on an object store the ``_SUCCESS`` marker, written last, says it is complete.
Either way ``_SUCCESS`` records the rows, files, version and package digest.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raymlops import storage
from raymlops.config import Config
from raymlops.core.outputs import PREDICTION_FIELDS
from raymlops.errors import DataError, PackageError
from raymlops.model.package import LoadedModel, load_package
from raymlops.registry.models import CHAMPION, ModelRegistry

__all__ = ["OUTPUT_COLUMNS", "VERSION_COLUMN", "BatchResult", "PredictPackage", "predict_batch", "prediction_columns"]

OUTPUT_COLUMNS = PREDICTION_FIELDS
VERSION_COLUMN = "model_version"
SUCCESS = "_SUCCESS"

# Fractional CPUs so reading, predicting and writing share a small machine; two actors at most keep the
# model in memory twice at most.
_PREDICT_CPUS = 0.5
_WRITE_CPUS = 0.25
_POOL_SIZE = (1, 2)
_BATCH_ROWS = 4096
_STARTED = "_STARTED"


@dataclass(frozen=True)
class BatchResult:
    """Rows written, the model version that scored them, the output URI and its parquet files (URIs)."""

    rows: int
    version: int
    output_uri: str
    files: list[str]


def prediction_columns(model: LoadedModel, batch: Any) -> dict[str, pa.Array]:
    """``model.predict(batch)`` as Arrow columns named by ``OUTPUT_COLUMNS``, labels decoded to class values."""
    out = model.predict(batch)
    task = model.transform.task
    if task == "regression":
        return {"value": pa.array(out["value"], pa.float64())}
    label = pa.array(model.transform.classes).take(pa.array(out["label"], pa.int64()))
    if task == "binary":
        return {"probability": pa.array(out["probability"], pa.float64()), "label": label}
    p = np.ascontiguousarray(out["probabilities"], dtype=np.float64)
    probs = pa.FixedSizeListArray.from_arrays(pa.array(p.reshape(-1)), p.shape[1])
    return {"probabilities": probs, "label": label}


class PredictPackage:
    """``map_batches`` callable: a pyarrow batch in; the same batch plus prediction columns and the version out.

    The package is loaded once per actor and verified against ``expected_digest`` under ``policy`` (the config's
    ``model.policy()``; ``PackageError`` on a mismatch), so the weights never travel through task arguments.
    """

    def __init__(self, package_uri: str, expected_digest: str, version: str, policy: Any = None):
        self.model = load_package(package_uri, expected_digest, version=version, policy=policy)
        self.version = version

    def __call__(self, batch: pa.Table) -> pa.Table:
        for name, column in prediction_columns(self.model, batch).items():
            batch = batch.append_column(name, column)
        return batch.append_column(VERSION_COLUMN, pa.array([self.version] * batch.num_rows, pa.string()))


def predict_batch(
    cfg: Config,
    input_uri: str,
    output_uri: str,
    *,
    version: str | None = None,
    progress: Callable[[str], None] = print,
) -> BatchResult:
    """Score ``input_uri`` with version ``version`` (number, ``v3`` or alias; default ``champion``) of model
    ``cfg.name`` and write parquet to ``output_uri``. Ray must be initialised.

    Raises ``RegistryError`` for an unknown model/version, ``PackageError`` when the package does not match its
    registry digest, ``DataError`` for unreadable input, missing feature columns, input columns that clash with
    the output's, an output that overlaps the input, or an existing output that is not a batch prediction.
    """
    import ray.data

    from raymlops.data.ingest import ingest

    info = ModelRegistry(cfg.tracking_uri).resolve(cfg.name, version or CHAMPION)
    if not info.digest:
        raise PackageError(f"version {info.version} of model '{cfg.name}' has no package digest in the registry, so "
                           "its package cannot be verified; register the package again (raymlops run)")
    # Verify and load on the driver too: a tampered package fails here, before any data is read.
    model = load_package(info.package_uri, info.digest, version=str(info.version), policy=cfg.model.policy())
    progress(f"model {cfg.name} v{info.version} (digest {info.digest[:12]}, {info.package_uri})")
    data = ingest(input_uri, num_cpus=_PREDICT_CPUS)
    _check_columns(model, data.schema.names, input_uri, info.version)
    _check_no_overlap(data.files, input_uri, output_uri)
    progress(f"scoring {data.rows:,} rows from {len(data.files)} file(s) of {input_uri}")
    t0 = time.perf_counter()
    scored = data.dataset.map_batches(
        PredictPackage,
        fn_constructor_kwargs={"package_uri": info.package_uri, "expected_digest": info.digest,
                               "version": str(info.version), "policy": cfg.model.policy()},
        batch_format="pyarrow",
        batch_size=_BATCH_ROWS,
        num_cpus=_PREDICT_CPUS,
        compute=ray.data.ActorPoolStrategy(min_size=_POOL_SIZE[0], max_size=_POOL_SIZE[1]),
        udf_modifying_row_count=False,
    )
    with _staged(output_uri) as root:
        fs, path = storage.resolve(root)
        scored.write_parquet(path, filesystem=fs, ray_remote_args={"num_cpus": _WRITE_CPUS})
        sizes, rows = _written(fs, path)
        marker = {"rows": rows, "files": sizes, "model": cfg.name, "version": info.version, "digest": info.digest,
                  "input": input_uri}
        storage.atomic_write_text(storage.join(root, SUCCESS), json.dumps(marker, indent=1, sort_keys=True))
    files = [storage.join(output_uri, rel) for rel in sorted(sizes)]
    progress(f"wrote {rows:,} rows in {len(files)} file(s) to {output_uri} in {time.perf_counter() - t0:.1f}s")
    return BatchResult(rows=rows, version=info.version, output_uri=output_uri, files=files)


# ----------------------------------------------------------------------------------------------- checks
def _check_columns(model: LoadedModel, columns: list[str], input_uri: str, version: int) -> None:
    t = model.transform
    needed = [c.name for c in t.numeric] + [c.name for c in t.categorical]
    missing = [c for c in needed if c not in columns]
    if missing:
        raise DataError(f"{input_uri} lacks feature column(s) {missing} that model version {version} needs; its "
                        f"columns are {columns}. Point --input at data with the model's features")
    clash = [c for c in (*OUTPUT_COLUMNS[t.task], VERSION_COLUMN) if c in columns]
    if clash:
        raise DataError(f"{input_uri} already has column(s) {clash}, which batch prediction writes; drop or rename "
                        "them (is the input an earlier prediction output?)")


def _check_no_overlap(input_files: list[str], input_uri: str, output_uri: str) -> None:
    _, out = storage.resolve(output_uri)
    out = out.rstrip("/")
    inside = [f for f in input_files if storage.resolve(f)[1] == out or storage.resolve(f)[1].startswith(out + "/")]
    if inside:
        raise DataError(f"output {output_uri} holds input files of {input_uri} (e.g. {inside[0]}); writing there "
                        "would replace the data being read: choose another output URI")


# ---------------------------------------------------------------------------------------------- output
def _written(fs: pafs.FileSystem, path: str) -> tuple[dict[str, int], int]:
    """Sizes of the parquet files under ``path`` (relative names) and their total rows (from the footers)."""
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    files = [i for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")]
    rows = 0
    for info in files:
        with fs.open_input_file(info.path) as f:
            rows += pq.ParquetFile(f).metadata.num_rows
    return {i.path[len(path.rstrip("/")) + 1:]: i.size for i in files}, rows


@contextmanager
def _staged(output_uri: str) -> Iterator[str]:
    """Where to build the output. Refuses to replace anything but an earlier prediction output or an empty dir."""
    fs, final = storage.resolve(output_uri)
    kind = fs.get_file_info(final).type
    ours = any(storage.exists(storage.join(output_uri, m)) for m in (SUCCESS, _STARTED))
    if kind == pafs.FileType.File or (kind == pafs.FileType.Directory and not ours
                                      and fs.get_file_info(pafs.FileSelector(final))):
        raise DataError(f"{output_uri} exists and is not a batch prediction output (no {SUCCESS}); choose a new "
                        "output URI or delete it first")
    with storage.staged_dir(output_uri, SUCCESS) as where:
        if where == output_uri:
            # Written in place (object store): _STARTED claims the directory, so a failed run can be retried;
            # the new _SUCCESS, written last, publishes the result.
            storage.atomic_write_text(storage.join(output_uri, _STARTED), "")
        yield where
