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
        ranges: dict[str, tuple[float | None, float | None]] | None = None,
    ):
        self.categorical = categorical
        self.skip = skip
        self.edges = edges
        self.ranges = ranges

    def __call__(self, block: pa.Table) -> dict[str, np.ndarray]:
        profile = profile_table(block, categorical=self.categorical, edges=self.edges, skip=self.skip,
                                ranges=self.ranges)
        # JSON keeps the result plain data: nothing from a worker is unpickled into the driver's objects.
        return {"profile": np.array([json.dumps(profile.to_dict())], dtype=object)}


def profile_dataset(
    ds,
    *,
    categorical: set[str] | None = None,
    skip: set[str] | None = None,
    edges: dict[str, list[float]] | None = None,
    ranges: dict[str, tuple[float | None, float | None]] | None = None,
    num_cpus: float = 1.0,  # one block per core: 4.1 GiB peak at 10M rows vs 4.4 with 0.5, same speed
) -> DatasetProfile:
    """Profile a Ray Dataset in one pass; with `edges`, numeric histograms are exact on those bin edges, and with
    `ranges` (column -> (min, max), e.g. the schema's), the count of values outside is exact."""
    rows = ds.map_batches(
        ProfileBlock(categorical, skip, edges, ranges),
        batch_format="pyarrow",
        batch_size=None,  # whole blocks: sketches are vectorised, fewer and bigger calls are cheaper
        zero_copy_batch=True,
        num_cpus=num_cpus,
    ).take_all()
    if not rows:
        return DatasetProfile(rows=0, features={})
    return merge_profiles(DatasetProfile.from_dict(json.loads(r["profile"])) for r in rows)


class KeepProfile:
    """A ``train_profile_fn`` for ``raymlops.data.prepare.prepare``: profiles the training rows with
    ``profile_dataset`` and keeps the profile (``.profile``), so the caller can record it (the model's drift
    reference) without a second pass over the data."""

    def __init__(self) -> None:
        self.profile: DatasetProfile | None = None

    def __call__(self, ds, categorical: set[str]) -> DatasetProfile:
        self.profile = profile_dataset(ds, categorical=categorical)
        return self.profile
