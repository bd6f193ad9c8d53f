"""An in-process stand-in for a small ``ray.data.Dataset``: one pyarrow table, the same callables.

Every Ray Data execution costs 1-2 s of start-up here (more on a busy machine) whatever the size, and validation
plus preparation make five of them: on a few thousand rows that is all of their time. Datasets of at most
``data.local_max_rows`` rows are therefore read once with pyarrow and run through exactly the same ``map_batches``
callables in the step's own process (``LocalDataset`` has the slice of the Dataset API those steps use). The
results are the same rows, splits and statistics; ``tests/integration/test_prepare.py`` compares both paths.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raymlops import storage

__all__ = ["LocalDataset"]

# Rows per written file: Ray Data reads a file as (at least) one block, so a split written as several files lets
# the training workers' shards and the readers work in parallel, as with Ray Data's own write (a file per block).
_ROWS_PER_FILE = 16_384
_MAX_FILES = 8


@dataclass(frozen=True)
class _Schema:
    base_schema: pa.Schema  # what the steps read of a Ray Data schema


def _as_table(out: pa.Table | dict[str, Any]) -> pa.Table:
    if isinstance(out, pa.Table):
        return out
    return pa.table({k: pa.array(v.tolist() if isinstance(v, np.ndarray) and v.dtype == object else v)
                     for k, v in out.items()})


class LocalDataset:
    """The rows of one pyarrow table, with the ``ray.data.Dataset`` methods the data steps call."""

    def __init__(self, table: pa.Table):
        self._table = table.combine_chunks()

    def schema(self) -> _Schema:
        return _Schema(self._table.schema)

    def count(self) -> int:
        return self._table.num_rows

    def select_columns(self, cols: list[str]) -> LocalDataset:
        return LocalDataset(self._table.select(list(cols)))

    def map_batches(self, fn: Callable[..., Any], *, batch_format: str = "pyarrow", batch_size: int | None = None,
                    fn_kwargs: dict[str, Any] | None = None, **_ray_options: Any) -> LocalDataset:
        if batch_format != "pyarrow":
            raise ValueError(f"LocalDataset.map_batches supports batch_format='pyarrow', not {batch_format!r}")
        outs = [_as_table(fn(batch, **(fn_kwargs or {}))) for batch in self._batches(batch_size)]
        return LocalDataset(pa.concat_tables(outs) if outs else self._table.slice(0, 0))

    def _batches(self, batch_size: int | None) -> Iterator[pa.Table]:
        n = self._table.num_rows
        step = n if batch_size is None else batch_size
        if n == 0:
            yield self._table
            return
        for start in range(0, n, max(step, 1)):
            yield self._table.slice(start, step)

    def iter_batches(self, *, batch_format: str = "pyarrow", batch_size: int | None = None,
                     **_options: Any) -> Iterator[pa.Table]:
        if batch_format != "pyarrow":
            raise ValueError(f"LocalDataset.iter_batches supports batch_format='pyarrow', not {batch_format!r}")
        yield from self._batches(batch_size)

    def take_all(self) -> list[dict[str, Any]]:
        return self._table.to_pylist()

    def to_arrow(self) -> pa.Table:
        return self._table

    def write_parquet(self, path: str, *, partition_cols: list[str] | None = None, **_ray_options: Any) -> None:
        """Hive-style like Ray Data: ``path/<col>=<value>/`` without the partition column (one column only)."""
        if not partition_cols:
            self._write(self._table, path)
            return
        if len(partition_cols) != 1:
            raise ValueError("LocalDataset.write_parquet partitions by one column")
        col = partition_cols[0]
        values = self._table.column(col)
        for value in pc.unique(values).to_pylist():
            part = self._table.filter(pc.equal(values, value)).drop_columns([col])
            self._write(part, storage.join(path, f"{col}={value}"))

    @staticmethod
    def _write(table: pa.Table, directory: str) -> None:
        fs, target = storage.resolve(directory)
        fs.create_dir(target, recursive=True)
        files = max(1, min(_MAX_FILES, math.ceil(table.num_rows / _ROWS_PER_FILE)))
        size = math.ceil(table.num_rows / files)
        for i in range(files):
            pq.write_table(table.slice(i * size, size), f"{target}/part-{i:05d}.parquet", filesystem=fs)
