"""Names of prediction / feedback log files and which of them a reader must open (pure).

Layout of a log (``raymlops.serve.predlog`` writes it)::

    {log}/date=YYYY-MM-DD/part-{writer}-{seq:06d}.t{first_ms}-{last_ms}.parquet   one flush of one writer
    {log}/date=YYYY-MM-DD/compact-{id}.t{first_ms}-{last_ms}.parquet              a compaction of many parts
    {log}/date=YYYY-MM-DD/_compacted.json                                         which parts the compactions hold

``first_ms``/``last_ms`` are the smallest and largest ``ts`` in the file (UTC epoch milliseconds), so a window read
opens only the files whose span overlaps the window, without reading a footer. Parts written before timestamps were
in the name (``part-{writer}-{seq}.parquet``) have no span and are always opened.

Compaction is published by the manifest: ``files`` are the compacted files to read, ``covered`` maps each writer to
the highest sequence number a compacted file holds. A part is read only when the manifest does not cover it, so a
reader sees the old parts or the compacted file, never both and never neither, whichever moment it lists the
directory (see ``visible``).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "MANIFEST",
    "LogFile",
    "compacted_name",
    "overlapping_dates",
    "parse_name",
    "part_name",
    "partition_date",
    "visible",
]

MANIFEST = "_compacted.json"
_SPAN = r"(?:\.t(?P<first>\d+)-(?P<last>\d+))?"
_PART = re.compile(r"^part-(?P<writer>.+?)-(?P<seq>\d{6,})" + _SPAN + r"\.parquet$")
_COMPACT = re.compile(r"^compact-(?P<id>[A-Za-z0-9]+)" + _SPAN + r"\.parquet$")
_DATE = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")


@dataclass(frozen=True)
class LogFile:
    """One data file of a log partition, as its name describes it."""

    name: str
    kind: str  # 'part' | 'compact'
    writer: str | None  # parts only
    seq: int | None  # parts only
    first_ms: int | None  # None: written before spans were in names
    last_ms: int | None

    def overlaps(self, start_ms: int | None, end_ms: int | None) -> bool:
        """Whether rows with ``start_ms <= ts < end_ms`` may be in this file (always, when it has no span)."""
        if self.first_ms is None or self.last_ms is None:
            return True
        return (end_ms is None or self.first_ms < end_ms) and (start_ms is None or self.last_ms >= start_ms)


def _span(first_ms: int, last_ms: int) -> str:
    return f".t{int(first_ms)}-{int(last_ms)}"


def part_name(writer: str, seq: int, first_ms: int, last_ms: int) -> str:
    """The file name of one writer's flush holding rows from ``first_ms`` to ``last_ms`` (inclusive)."""
    return f"part-{writer}-{seq:06d}{_span(first_ms, last_ms)}.parquet"


def compacted_name(ident: str, first_ms: int, last_ms: int) -> str:
    """The file name of a compacted file (``ident``: letters and digits, unique per compaction)."""
    return f"compact-{ident}{_span(first_ms, last_ms)}.parquet"


def parse_name(name: str) -> LogFile | None:
    """A log file's description from its name; None for anything that is not a log data file."""
    m = _PART.match(name)
    if m:
        first, last = m.group("first"), m.group("last")
        return LogFile(name, "part", m.group("writer"), int(m.group("seq")),
                       None if first is None else int(first), None if last is None else int(last))
    m = _COMPACT.match(name)
    if m:
        first, last = m.group("first"), m.group("last")
        return LogFile(name, "compact", None, None, None if first is None else int(first),
                       None if last is None else int(last))
    return None


def partition_date(name: str) -> dt.date | None:
    """The date of a ``date=YYYY-MM-DD`` partition directory name (None for anything else)."""
    m = _DATE.match(name)
    if not m:
        return None
    try:
        return dt.date.fromisoformat(m.group(1))
    except ValueError:
        return None


def overlapping_dates(names: Iterable[str], start: float | None, end: float | None) -> list[str]:
    """The partition directory names whose UTC day overlaps ``[start, end)`` (epoch seconds; None: unbounded)."""
    lo = None if start is None else dt.datetime.fromtimestamp(start, dt.timezone.utc).date()
    # end is exclusive: a window ending exactly at midnight does not reach the next day
    hi = None if end is None else (dt.datetime.fromtimestamp(end, dt.timezone.utc)
                                   - dt.timedelta(microseconds=1)).date()
    out = []
    for name in names:
        day = partition_date(name)
        if day is not None and (lo is None or day >= lo) and (hi is None or day <= hi):
            out.append(name)
    return sorted(out)


def visible(names: Iterable[str], manifest: Mapping | None, start_ms: int | None = None,
            end_ms: int | None = None) -> list[str]:
    """The files of one partition a reader opens, given its listing and its compaction manifest (or None).

    The directory must be listed *before* the manifest is read: a compactor writes the compacted file, then the
    manifest, then deletes the parts, so a listing older than the manifest still holds every part the manifest does
    not cover, and the manifest's own ``files`` are read whether or not the listing saw them. A file deleted between
    the listing and the read (a later compaction) means: read the partition again.
    """
    files = [f for f in (parse_name(n) for n in names) if f is not None]
    covered: Mapping[str, int] = (manifest or {}).get("covered", {})
    chosen = []
    for f in files:
        if f.kind == "part" and (f.writer not in covered or f.seq > covered[f.writer]):
            chosen.append(f)
    for name in (manifest or {}).get("files", []):
        f = parse_name(str(name))
        if f is not None and f.kind == "compact":
            chosen.append(f)
    return sorted({f.name for f in chosen if f.overlaps(start_ms, end_ms)})


def compaction_inputs(names: Iterable[str], manifest: Mapping | None) -> tuple[list[str], dict[str, int]]:
    """What compacting a partition reads (every visible file) and the ``covered`` map once it is published."""
    inputs = visible(names, manifest)
    covered = {str(w): int(s) for w, s in (manifest or {}).get("covered", {}).items()}
    for f in (parse_name(n) for n in inputs):
        if f is not None and f.kind == "part":
            covered[f.writer] = max(covered.get(f.writer, -1), f.seq)
    return inputs, covered


def superseded(names: Iterable[str], manifest: Mapping | None) -> list[str]:
    """Data files of a partition that ``manifest`` makes invisible (covered parts, compactions it replaced):
    safe to delete once that manifest is published."""
    keep = set(visible(list(names), manifest))
    keep.update(str(n) for n in (manifest or {}).get("files", []))
    return sorted(n for n in names if parse_name(n) is not None and n not in keep)
