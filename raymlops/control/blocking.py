"""Data that validation stopped (STOP), parked by the controller until it can pass: pure records and wording.

The shell gathers the facts of a STOP (``DataBlock``: the validation report's anomalies, the schema version the run
was judged against, the commands that fix it, the landing files at that moment); the state machine
(``raymlops.control.state``) keeps them as its ``blocked`` record and decides when the data is tried again.

The rule, in one place (``retry_reasons``): a block is retried once, automatically, when

* the schema version in force is not the one the run was judged against (``raymlops schema accept`` made a new
  version, or ``validation.schema_uri`` now pins another), or
* a file of the blocked data is gone from the landing listing (removed, renamed or quarantined: the data was fixed
  at the source).

Files that only *land* do not retry it: every run reads the whole landing URI, the bad files included, so it would
stop again; the new files stay pending and the retry reads them too. A file fixed in place (same name) is not
visible in a listing: ``raymlops trigger`` retries on demand, which an operator can always do. Automatic triggers
(new data, schedule, drift, degradation) start no run while data is blocked; they are logged as held.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["MAX_ANOMALIES", "BlockRecord", "DataBlock", "anomaly_text", "block_message", "retry_reasons"]

# Anomalies kept in the state and the event per block: the report holds them all; the event names the worst few.
MAX_ANOMALIES = 10
_SHOWN = 5
_VALUE_CHARS = 80


@dataclass(frozen=True)
class DataBlock:
    """What the shell knows of a run that data validation stopped.

    ``anomalies`` are the report's schema anomalies as dicts (feature, kind, observed, expected); ``schema_version``
    is the version the data was judged against (None: unknown); ``commands`` review and accept the report's
    anomalies as the next schema version; ``files`` is the landing listing when the block was recorded; ``note``
    says why the report could not be read, if it could not.
    """

    report_uri: str | None = None
    schema_version: int | None = None
    anomalies: tuple[Mapping[str, Any], ...] = ()
    commands: tuple[str, ...] = ()
    files: frozenset[str] | None = None
    note: str | None = None


@dataclass
class BlockRecord:
    """The data block the controller holds: set when a run stops on data validation, cleared when it is retried.

    ``attempts`` counts the runs of this data that stopped (a retry that stops again adds one, it does not loop);
    ``held`` lists the automatic trigger kinds that fired meanwhile and were served by no run.
    """

    run_id: str
    at: float
    report_uri: str | None
    schema_version: int | None
    anomalies: list[dict[str, Any]]
    anomaly_count: int
    commands: list[str]
    files: list[str] | None
    attempts: int = 1
    held: list[str] = field(default_factory=list)
    note: str | None = None

    @classmethod
    def of(cls, run_id: str, at: float, block: DataBlock, attempts: int) -> BlockRecord:
        shown = [_json_safe(dict(a)) for a in block.anomalies[:MAX_ANOMALIES]]
        return cls(run_id, at, block.report_uri, block.schema_version, shown, len(block.anomalies),
                   list(block.commands), None if block.files is None else sorted(block.files), attempts, [],
                   block.note)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BlockRecord:
        files = d.get("files")
        return cls(**{**d, "anomalies": [dict(a) for a in d.get("anomalies", [])],
                      "commands": list(d.get("commands", [])), "files": None if files is None else list(files),
                      "held": list(d.get("held", []))})


def _json_safe(value: Any) -> Any:
    # The record is persisted as strict JSON: anything else in a report (it is JSON already) becomes text.
    return json.loads(json.dumps(value, default=str, allow_nan=False))


def _compact(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, separators=(", ", ": "))
    return text if len(text) <= _VALUE_CHARS else text[:_VALUE_CHARS - 1] + "…"


def anomaly_text(a: Mapping[str, Any]) -> str:
    """One anomaly as ``'age' out_of_range: observed ... vs expected ...`` (ranges and categories in words)."""
    feature, kind = a.get("feature", "?"), a.get("kind", "?")
    obs, exp = a.get("observed"), a.get("expected")
    if kind == "out_of_range" and isinstance(obs, Mapping) and isinstance(exp, Mapping):
        return (f"'{feature}' out_of_range: {obs.get('pct')}% of values outside [{exp.get('min')}, {exp.get('max')}]"
                f" (observed [{obs.get('min')}, {obs.get('max')}], at most {exp.get('max_pct')}% allowed)")
    if kind == "unseen_categories" and isinstance(obs, Mapping) and isinstance(exp, Mapping):
        seen = ", ".join(map(str, list(obs.get("categories") or {})[:3]))
        domain = ", ".join(map(str, list(exp.get("domain") or [])[:5]))
        return (f"'{feature}' unseen_categories: {obs.get('pct')}% unseen (e.g. {seen}) vs domain [{domain}] "
                f"(at most {exp.get('max_pct')}% allowed)")
    return f"'{feature}' {kind}: observed {_compact(obs)} vs expected {_compact(exp)}"


def block_message(run_id: str, record: BlockRecord) -> str:
    """The ``blocked`` event's text: what stopped, that the data stays pending, and the commands that fix it."""
    version = "?" if record.schema_version is None else f"v{record.schema_version}"
    shown = "; ".join(anomaly_text(a) for a in record.anomalies[:_SHOWN])
    more = record.anomaly_count - min(len(record.anomalies), _SHOWN)
    if record.anomaly_count:
        found = f"{record.anomaly_count} schema anomal{'y' if record.anomaly_count == 1 else 'ies'}: {shown}" + (
            f" and {more} more (see the report)" if more > 0 else "")
    else:
        found = f"anomalies unknown ({record.note or 'no validation report'})"
    again = f" (attempt {record.attempts}: it stopped again)" if record.attempts > 1 else ""
    fix = " then ".join(f"`{c}`" for c in record.commands) if record.commands else (
        "`raymlops schema accept CONFIG --from-report REPORT` with the run's validation report")
    return (f"run {run_id} blocked by data validation against schema {version}{again}: {found}. The data stays "
            f"pending: no automatic run until it can pass. If the change is legitimate, review and accept it as the "
            f"next schema version: {fix} (the retry follows by itself); otherwise fix the data at the source "
            f"(removing the bad files retries it; after a fix in place, run `raymlops trigger CONFIG`).")


def retry_reasons(record: BlockRecord, schema_version: int | None, files: Sequence[str] | frozenset[str] | None
                  ) -> list[str]:
    """Why the blocked data should be tried again now (empty: keep it parked). ``None`` means not observed."""
    reasons = []
    if schema_version is not None and schema_version != record.schema_version:
        was = "an unknown version" if record.schema_version is None else f"v{record.schema_version}"
        reasons.append(f"schema v{schema_version} is in force (the data was blocked against {was})")
    if files is not None and record.files is not None:
        gone = sorted(set(record.files) - set(files))
        if gone:
            shown = ", ".join(gone[:3]) + (f" and {len(gone) - 3} more" if len(gone) > 3 else "")
            reasons.append(f"{len(gone)} file(s) of the blocked data left the landing area: {shown}")
    return reasons
