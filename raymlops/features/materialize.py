"""Materialisation: load the latest value of each online feature view per entity into the online store.

``full``: every source row with event time <= ``end`` replaces the view's contents. Incremental (default): rows
with ``watermark < event time <= end``, where the watermark is the ``end`` of the previous run, kept in the store
and committed with the data; the first incremental run has no watermark and covers ALL history (not "now - TTL":
the TTL is applied when values are read). Rows that arrive later with an event time at or before the watermark
are only picked up by a full run. Within a run, the latest event per key wins, ties by the created timestamp.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import polars as pl

from raymlops.core.pit import TIME, prepare_feature_rows, time_unit
from raymlops.errors import FeatureStoreError
from raymlops.features.definitions import FeatureRepo, ResolvedView
from raymlops.features.offline import read_view_rows, source_time_types
from raymlops.features.online import encode_key_column
from raymlops.features.stores import OnlineStore, open_online_store

__all__ = ["MaterializeResult", "materialize", "materialize_view"]


@dataclass(frozen=True)
class MaterializeResult:
    """One view's run: the interval (epoch us; start None = all history), rows read and keys written."""

    view: str
    mode: str
    start_us: int | None
    end_us: int
    rows: int
    entities: int

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        start = "the beginning" if self.start_us is None else _iso(self.start_us)
        return (f"{self.view}: {self.mode} from {start} to {_iso(self.end_us)}: {self.rows:,} rows, "
                f"{self.entities:,} entities written")


def _iso(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, dt.timezone.utc).isoformat(timespec="seconds")


def _end_us(end: dt.datetime | None) -> int:
    if end is None:
        end = dt.datetime.now(dt.timezone.utc)
    elif end.tzinfo is None:
        end = end.replace(tzinfo=dt.timezone.utc)  # naive times are UTC, as everywhere in raymlops
    return int(end.timestamp() * 1_000_000)


def materialize_view(view: ResolvedView, store: OnlineStore, *, full: bool = False,
                     end: dt.datetime | None = None) -> MaterializeResult:
    """Materialise one view (see the module docstring)."""
    end_us = _end_us(end)
    start_us = None if full else store.watermark(view.name)
    if start_us is not None and start_us >= end_us:
        return MaterializeResult(view.name, "incremental", start_us, start_us, 0, 0)
    unit = time_unit(*source_time_types(view))
    scale = 1000 if unit == "ns" else 1
    rows = prepare_feature_rows(read_view_rows(view), join_keys=list(view.join_keys),
                                event_ts=view.event_timestamp, created_ts=view.created_timestamp,
                                features=list(view.features), unit=unit, view=view.name)
    keep = pl.col(TIME) <= end_us * scale
    if start_us is not None:
        keep &= pl.col(TIME) > start_us * scale
    rows = rows.filter(keep & pl.all_horizontal([pl.col(k).is_not_null() for k in view.join_keys]))
    # Sorted by (time, created): the last row per key is its latest value.
    latest = rows.unique(subset=list(view.join_keys), keep="last").select(
        encode_key_column(list(view.join_keys)).alias("key"),
        (pl.col(TIME) // scale).alias("event_us"),
        pl.struct(list(view.features)).struct.json_encode().alias("value"),
    )
    store.write(view.name, latest["key"].to_list(), latest["event_us"].to_list(), latest["value"].to_list(),
                watermark_us=end_us, replace=full)
    return MaterializeResult(view.name, "full" if full else "incremental", start_us, end_us, rows.height,
                             latest.height)


def materialize(repo: FeatureRepo, *, views: Sequence[str] | None = None, full: bool = False,
                end: dt.datetime | None = None, store: OnlineStore | None = None) -> list[MaterializeResult]:
    """Materialise ``views`` (default: every view with ``online: true``) into the repo's online store."""
    names = list(views) if views else [n for n, v in repo.feature_views.items() if v.online]
    if not names:
        raise FeatureStoreError("no feature view is marked online; set `online: true` on a view or name views")
    owned = store is None
    store = store if store is not None else open_online_store(repo.online_store, repo.project)
    try:
        return [materialize_view(repo.view(n), store, full=full, end=end) for n in names]
    finally:
        if owned:
            store.close()
