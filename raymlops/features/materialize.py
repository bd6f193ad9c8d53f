"""Materialisation: load the latest value of each online feature view per entity into the online store.

``full``: every source row with event time <= ``end`` replaces the view's contents. Incremental (default): rows
with ``watermark < event time <= end``, where the watermark is the ``end`` of the previous run, kept in the store
and committed with the data; the first incremental run has no watermark and covers ALL history (not "now - TTL":
the TTL is applied when values are read). Rows that arrive later with an event time at or before the watermark
are only picked up by a full run. Within a run, the latest event per key wins, ties by the created timestamp.

A range (``start`` given, Feast's ``materialize(start_date, end_date)``): rows with ``start <= event time <= end``
are upserted (nothing dropped; a stored newer event is kept). The watermark moves to ``end`` only when the range
starts at or before it, so an incremental run never skips rows between the watermark and a later range; before
any incremental or full run there is no watermark, and a range leaves none (the next incremental reads all
history).
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
                     end: dt.datetime | None = None, start: dt.datetime | None = None) -> MaterializeResult:
    """Materialise one view: incremental, ``full``, or the range ``start``..``end`` (see the module docstring)."""
    end_us = _end_us(end)
    watermark = store.watermark(view.name)
    if start is not None:
        if full:
            raise FeatureStoreError("a materialisation is either full or a range from start; pass one of them")
        start_us = _end_us(start)
        if start_us > end_us:
            raise FeatureStoreError(f"start_date {_iso(start_us)} is after end_date {_iso(end_us)}; swap them")
        mode = "range"
        lower_inclusive = True
        # Contiguous with the watermark: the store is complete up to `end`. After a gap: it is not.
        new_watermark = max(watermark, end_us) if watermark is not None and start_us <= watermark else watermark
    else:
        start_us = None if full else watermark
        mode = "full" if full else "incremental"
        lower_inclusive = False
        new_watermark = end_us
        if start_us is not None and start_us >= end_us:
            return MaterializeResult(view.name, "incremental", start_us, start_us, 0, 0)
    unit = time_unit(*source_time_types(view))
    scale = 1000 if unit == "ns" else 1
    rows = prepare_feature_rows(read_view_rows(view), join_keys=list(view.join_keys),
                                event_ts=view.event_timestamp, created_ts=view.created_timestamp,
                                features=list(view.features), unit=unit, view=view.name)
    keep = pl.col(TIME) <= end_us * scale
    if start_us is not None:
        keep &= (pl.col(TIME) >= start_us * scale) if lower_inclusive else (pl.col(TIME) > start_us * scale)
    rows = rows.filter(keep & pl.all_horizontal([pl.col(k).is_not_null() for k in view.join_keys]))
    # Sorted by (time, created): the last row per key is its latest value.
    latest = rows.unique(subset=list(view.join_keys), keep="last").select(
        encode_key_column(list(view.join_keys)).alias("key"),
        (pl.col(TIME) // scale).alias("event_us"),
        pl.struct(list(view.features)).struct.json_encode().alias("value"),
    )
    store.write(view.name, latest["key"].to_list(), latest["event_us"].to_list(), latest["value"].to_list(),
                watermark_us=new_watermark, replace=full)
    return MaterializeResult(view.name, mode, start_us, end_us, rows.height, latest.height)


def materialize(repo: FeatureRepo, *, views: Sequence[str] | None = None, full: bool = False,
                end: dt.datetime | None = None, start: dt.datetime | None = None,
                store: OnlineStore | None = None) -> list[MaterializeResult]:
    """Materialise ``views`` (default: every view with ``online: true``) into the repo's online store.

    Incremental by default, ``full``, or the range ``start``..``end`` (see the module docstring)."""
    names = list(views) if views else [n for n, v in repo.feature_views.items() if v.online]
    if not names:
        raise FeatureStoreError("no feature view is marked online; set `online: true` on a view or name views")
    owned = store is None
    store = store if store is not None else open_online_store(repo.online_store, repo.project)
    try:
        return [materialize_view(repo.view(n), store, full=full, end=end, start=start) for n in names]
    finally:
        if owned:
            store.close()
