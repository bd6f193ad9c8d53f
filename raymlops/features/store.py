"""``FeatureStore``: the feature store behind one object, shaped like Feast's, for code that already speaks Feast.

```python
from raymlops.features import FeatureStore

fs = FeatureStore("configs/features.yaml")      # or a directory holding features.yaml / feature_store.yaml
training = fs.get_historical_features(entity_df, features=["customer_usage:usage_gb", "customer_profile:plan"])
training.to_df()                                # pandas; .to_arrow(), .to_polars()
fs.materialize_incremental(end_date=datetime.now(timezone.utc))
fs.get_online_features(["customer_usage:usage_gb"], entity_rows=[{"customer_id": "C000042"}]).to_dict()
```

Each method is a thin shell over the functions that the CLI, the CT pipeline and serving use
(``offline.get_historical_features``, ``materialize.materialize``, ``online.OnlineFeatures``), so the facade and
the rest of raymlops cannot disagree. Where raymlops differs from Feast, it says so here:

* ``features`` is a list of ``view:feature`` refs (a bare ``view`` takes all its features) or a feature service
  name. A feature name must be unique among the requested views (``full_feature_names=True`` only renames the
  output to ``view__feature``).
* The entity frame's time column is ``event_timestamp`` when present, else its only datetime column, else the one
  ``timestamp=`` names. Times compare as instants (naive = UTC), to the microsecond or nanosecond.
* ``materialize_incremental`` with nothing materialised before covers ALL history (Feast: now - TTL); TTLs are
  applied when values are read, against ``clock`` (default: the wall clock).
* A row of ``entity_rows`` without its join key, or with a key of the wrong type, raises ``FeatureStoreError``;
  an unknown key gives nulls, as in Feast.
* Paths in the feature repo are relative to the working directory, like every raymlops config.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from raymlops import storage
from raymlops.errors import ConfigError, FeatureStoreError
from raymlops.features.definitions import FeatureRepo, ResolvedView, load_feature_repo, parse_feature_repo
from raymlops.features.materialize import MaterializeResult, materialize
from raymlops.features.offline import entity_frame, get_historical_features
from raymlops.features.online import OnlineFeatures, encode_keys
from raymlops.features.stores import OnlineStore, open_online_store

__all__ = ["FeatureStore", "OnlineResponse", "RetrievalJob"]

# What a directory is searched for: ours first, then Feast's file name.
REPO_FILES = ("features.yaml", "feature_store.yaml")
_FEAST_TIMESTAMP = "event_timestamp"


class RetrievalJob:
    """The result of ``get_historical_features`` (computed already; Feast's RetrievalJob is lazy)."""

    def __init__(self, table: pa.Table):
        self._table = table

    def to_arrow(self) -> pa.Table:
        """The entity rows, in order and untouched, with the requested features appended."""
        return self._table

    def to_polars(self) -> pl.DataFrame:
        """``to_arrow()`` as a polars DataFrame."""
        return pl.from_arrow(self._table)

    def to_df(self) -> Any:
        """``to_arrow()`` as a pandas DataFrame (as Feast's ``RetrievalJob.to_df``)."""
        return self._table.to_pandas()


class OnlineResponse:
    """The result of ``get_online_features``: one column per join key and per feature, one value per entity row."""

    def __init__(self, columns: dict[str, list[Any]]):
        self._columns = columns

    def to_dict(self) -> dict[str, list[Any]]:
        """``{column: [value per entity row]}``; None where the store has no value (or it is older than its TTL)."""
        return {k: list(v) for k, v in self._columns.items()}

    def to_arrow(self) -> pa.Table:
        """``to_dict()`` as a pyarrow Table."""
        return pa.table(self._columns)

    def to_df(self) -> Any:
        """``to_dict()`` as a pandas DataFrame."""
        return self.to_arrow().to_pandas()


def _load(source: Any) -> FeatureRepo:
    if isinstance(source, FeatureRepo):
        return source
    if isinstance(source, Mapping):
        return parse_feature_repo(dict(source))
    repo = getattr(getattr(source, "features", None), "repo", None)
    if isinstance(repo, str):  # a pipeline config: its feature repo
        return load_feature_repo(repo)
    if not isinstance(source, str | Path):
        raise ConfigError(f"FeatureStore needs a feature repo: a YAML path, a directory holding one of {REPO_FILES}, "
                          f"a parsed document or a FeatureRepo, not {type(source).__name__}")
    path = str(source)
    fs, local = storage.resolve(path)
    if fs.get_file_info(local).type.name == "Directory":
        for name in REPO_FILES:
            candidate = storage.join(path, name)
            if storage.exists(candidate):
                return load_feature_repo(candidate)
        raise ConfigError(f"directory {path} holds none of {list(REPO_FILES)}; pass the feature repo YAML itself "
                          "(e.g. configs/features.yaml)")
    return load_feature_repo(path)


def _timestamp_column(entity: pl.DataFrame) -> str:
    if _FEAST_TIMESTAMP in entity.columns:
        return _FEAST_TIMESTAMP
    times = [c for c, t in entity.schema.items() if isinstance(t, pl.Datetime) or t == pl.Date]
    if len(times) == 1:
        return times[0]
    raise FeatureStoreError(f"cannot tell which column of the entity rows is their time (datetime columns: {times}); "
                            f"name it with timestamp=, or call it {_FEAST_TIMESTAMP}")


def _full_names(views: Sequence[ResolvedView]) -> dict[str, str]:
    return {f: f"{v.name}__{f}" for v in views for f in v.features}


class FeatureStore:
    """A feature repo with Feast's retrieval and materialisation methods (see the module docstring).

    ``repo``: a feature repo YAML path, a directory holding ``features.yaml`` (or Feast's ``feature_store.yaml``),
    a parsed document (dict), a ``FeatureRepo``, or a pipeline ``Config`` (its ``features.repo``). ``clock``
    (seconds since the epoch) decides TTL expiry in ``get_online_features``. The online store opens on first use;
    ``close()`` (or ``with FeatureStore(...) as fs:``) releases it.
    """

    def __init__(self, repo: Any = "configs/features.yaml", *, clock: Callable[[], float] = time.time):
        self.repo: FeatureRepo = _load(repo)
        self.clock = clock
        self._store: OnlineStore | None = None

    @property
    def project(self) -> str:
        """The repo's ``project`` (it namespaces the online store)."""
        return self.repo.project

    def _online_store(self) -> OnlineStore:
        if self._store is None:
            self._store = open_online_store(self.repo.online_store, self.repo.project)
        return self._store

    def close(self) -> None:
        """Release the online store's connections."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------------------------------------- offline
    def get_historical_features(self, entity_df: Any, features: str | Sequence[str], *,
                                full_feature_names: bool = False, timestamp: str | None = None,
                                partitions: int = 1) -> RetrievalJob:
        """``entity_df`` (pandas, polars, pyarrow, or a parquet/csv URI) with ``features`` as of each row's time.

        Point-in-time correct: the latest value at or before the row's time within the view's TTL, else null.
        ``partitions > 1`` runs the join on Ray (initialised by the caller)."""
        entity = entity_frame(entity_df)
        ts = timestamp or _timestamp_column(entity)
        table = get_historical_features(self.repo, features, entity, timestamp=ts, partitions=partitions)
        if full_feature_names:
            names = _full_names(self.repo.select(features))
            table = table.rename_columns([c if i < entity.width else names[c]
                                          for i, c in enumerate(table.column_names)])
        return RetrievalJob(table)

    # --------------------------------------------------------------------------------------------- online
    def materialize(self, start_date: dt.datetime, end_date: dt.datetime,
                    feature_views: Sequence[str] | None = None) -> list[MaterializeResult]:
        """Load each view's latest values with ``start_date <= event time <= end_date`` into the online store
        (default views: those marked ``online``). Naive datetimes are UTC."""
        return materialize(self.repo, views=feature_views, start=start_date, end=end_date,
                           store=self._online_store())

    def materialize_incremental(self, end_date: dt.datetime | None = None,
                                feature_views: Sequence[str] | None = None) -> list[MaterializeResult]:
        """Load what arrived since the last run (its ``end_date``) up to ``end_date`` (default: now); the first run
        covers all history."""
        return materialize(self.repo, views=feature_views, end=end_date, store=self._online_store())

    def get_online_features(self, features: str | Sequence[str], entity_rows: Sequence[Mapping[str, Any]], *,
                            full_feature_names: bool = False) -> OnlineResponse:
        """The latest materialised values of ``features`` for each of ``entity_rows`` (``[{join key: value}]``)."""
        views = self.repo.select(features)
        keys = {k: t for v in views for k, t in v.join_keys.items()}
        columns: dict[str, list[Any]] = {k: [] for k in keys}
        for i, row in enumerate(entity_rows):
            for key in keys:
                if key not in row:
                    raise FeatureStoreError(f"entity_rows[{i}] has no join key '{key}'; every row needs "
                                            f"{list(keys)}")
                columns[key].append(row[key])
        for key, kind in keys.items():  # encode_keys gives None for a value of the wrong type
            bad = [i for i, enc in enumerate(encode_keys({key: kind}, columns)) if enc is None]
            if bad:
                raise FeatureStoreError(f"entity_rows[{bad[0]}]: join key '{key}' must be "
                                        f"{'a str' if kind == 'string' else 'an int'} (declared {kind}), got "
                                        f"{columns[key][bad[0]]!r}")
        values = OnlineFeatures(self._online_store(), views, clock=self.clock).get(columns)
        names = _full_names(views) if full_feature_names else {f: f for f in values}
        return OnlineResponse({**columns, **{names[f]: v for f, v in values.items()}})
