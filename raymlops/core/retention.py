"""Retention decisions (pure): what may be deleted or compacted, given names, times, limits and a clock.

``raymlops.control.retention`` lists storage, asks these functions and deletes; here nothing touches storage, so
every rule is unit-tested with a fake clock.

Rules:

* a log partition ``date=D`` is deleted once the whole day D is older than ``keep_days`` days;
* a log partition is *closed* (and may be compacted) once its day ended ``grace_s`` seconds ago, so that writers
  still flushing the last rows of the day are not raced;
* a report or a run is deleted when it is past either limit: beyond the newest ``keep_count`` of its kind, or older
  than ``keep_days``; a protected item (a run a registered model version still points at) never is.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from raymlops.core.logparts import partition_date

__all__ = ["Item", "closed_partitions", "expired", "expired_partitions", "referenced_runs"]

_DAY_S = 86_400.0


@dataclass(frozen=True)
class Item:
    """Something retention may delete: its name and when it was made (epoch seconds)."""

    name: str
    at: float


def _day_end(day: dt.date) -> float:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp() + _DAY_S


def expired_partitions(names: Iterable[str], keep_days: float | None, now: float) -> list[str]:
    """``date=`` partitions whose whole day is older than ``keep_days`` days (None: keep forever)."""
    if keep_days is None:
        return []
    out = []
    for name in names:
        day = partition_date(name)
        if day is not None and _day_end(day) <= now - keep_days * _DAY_S:
            out.append(name)
    return sorted(out)


def closed_partitions(names: Iterable[str], now: float, grace_s: float) -> list[str]:
    """``date=`` partitions whose day ended at least ``grace_s`` seconds before ``now``."""
    out = []
    for name in names:
        day = partition_date(name)
        if day is not None and _day_end(day) + grace_s <= now:
            out.append(name)
    return sorted(out)


def expired(items: Sequence[Item], *, keep_count: int | None, keep_days: float | None, now: float,
            protected: Iterable[str] = ()) -> list[str]:
    """Names of ``items`` past either limit (see the module docstring), never a ``protected`` one.

    Protected items do not count toward ``keep_count``: keeping the champion's old run does not push a recent run
    out. Newest first by ``at`` (ties by name, so the answer does not depend on listing order).
    """
    keep = set(protected)
    ranked = sorted((i for i in items if i.name not in keep), key=lambda i: (i.at, i.name), reverse=True)
    out = []
    for rank, item in enumerate(ranked):
        too_many = keep_count is not None and rank >= keep_count
        too_old = keep_days is not None and item.at <= now - keep_days * _DAY_S
        if too_many or too_old:
            out.append(item.name)
    return sorted(out)


def referenced_runs(texts: Iterable[str], runs_root: str) -> set[str]:
    """Run ids named by paths under ``runs_root`` (``{runs_root}/{run_id}/...``) anywhere in ``texts``.

    ``texts`` are what points at runs: a registered version's package URI and tags, a kept run's record (a step
    cached from an earlier run points into that run's directory).
    """
    root = runs_root.rstrip("/")
    # Also match the path without a scheme, as records store what storage.resolve returned on some filesystems.
    roots = {root, root.split("://", 1)[1]} if "://" in root else {root}
    found: set[str] = set()
    for text in texts:
        for r in roots:
            for m in re.finditer(re.escape(r) + r"/([A-Za-z0-9][A-Za-z0-9._-]{0,127})(?=/|$|[\"'\s,}\]])", text):
                found.add(m.group(1))
    return found
