"""Point-in-time joins (raymlops.core.pit) against a brute-force reference on randomised data."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raymlops.core.pit import ROW, point_in_time_join, prepare_feature_rows, time_unit
from raymlops.errors import FeatureStoreError

BASE = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
ZONES = [None, "UTC", "Asia/Kolkata", "America/New_York"]


def _instant(value: dt.datetime | None) -> float | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).timestamp()


def brute_force(entity: list[dict], features: list[dict], ttl: dt.timedelta | None) -> list[float | None]:
    """For each entity row: the value of the latest (event, created, source position) row at or before it."""
    out = []
    for e in entity:
        t = _instant(e["ts"])
        best, best_rank = None, None
        for i, f in enumerate(features):
            ev = _instant(f["event_ts"])
            if e["k"] is None or t is None or ev is None or f["k"] != e["k"] or ev > t:
                continue
            if ttl and t - ev > ttl.total_seconds():
                continue
            created = _instant(f["created_ts"])
            rank = (ev, float("-inf") if created is None else created, i)
            if best_rank is None or rank > best_rank:
                best, best_rank = f["v"], rank
        out.append(best)
    return out


def run_join(entity: list[dict], features: list[dict], ttl, zone: str | None, created: bool = True) -> list:
    edf = pl.DataFrame({"k": [r["k"] for r in entity], "ts": [r["ts"] for r in entity],
                        "other": list(range(len(entity)))},
                       schema={"k": pl.Int64, "ts": pl.Datetime("us", zone), "other": pl.Int64})
    fdf = pl.DataFrame(features, schema={"k": pl.Int64, "event_ts": pl.Datetime("us", "UTC"),
                                         "created_ts": pl.Datetime("us", "UTC"), "v": pl.Float64})
    unit = time_unit(edf.schema["ts"], fdf.schema["event_ts"])
    prepared = prepare_feature_rows(fdf, join_keys=["k"], event_ts="event_ts",
                                    created_ts="created_ts" if created else None, features=["v"], unit=unit)
    out = point_in_time_join(edf.with_row_index(ROW), prepared, join_keys=["k"], timestamp="ts", features=["v"],
                             ttl=ttl, unit=unit)
    # Every entity row kept, in order, untouched (values, dtype and time zone).
    assert out.drop(ROW, "v").equals(edf)
    assert out.schema["ts"] == pl.Datetime("us", zone)
    return out["v"].to_list()


seconds = st.integers(min_value=0, max_value=40)
maybe_key = st.one_of(st.none(), st.integers(0, 3))
feature_row = st.fixed_dictionaries({
    "k": st.integers(0, 3),
    "event_ts": st.one_of(st.none(), seconds.map(lambda s: BASE + dt.timedelta(seconds=s))),
    "created_ts": st.one_of(st.none(), st.integers(0, 3).map(lambda s: BASE + dt.timedelta(hours=s))),
    "v": st.floats(allow_nan=False, allow_infinity=False, width=32),
})


@st.composite
def entity_rows(draw, zone):
    rows = draw(st.lists(st.fixed_dictionaries({"k": maybe_key, "s": st.one_of(st.none(), seconds)}), max_size=25))
    out = []
    for r in rows:
        if r["s"] is None:
            ts = None
        elif zone is None:
            ts = (BASE + dt.timedelta(seconds=r["s"])).replace(tzinfo=None)
        else:
            ts = BASE + dt.timedelta(seconds=r["s"])
        out.append({"k": r["k"], "ts": ts})
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), zone=st.sampled_from(ZONES), ttl_s=st.one_of(st.none(), st.integers(0, 15)),
       features=st.lists(feature_row, max_size=30))
def test_point_in_time_join_matches_brute_force(data, zone, ttl_s, features):
    entity = data.draw(entity_rows(zone))
    ttl = None if ttl_s is None else dt.timedelta(seconds=ttl_s)
    assert run_join(entity, features, ttl, zone) == brute_force(entity, features, ttl)


@settings(max_examples=100, deadline=None)
@given(features=st.lists(feature_row, max_size=20), data=st.data())
def test_without_created_timestamp_the_last_row_in_the_source_wins_ties(features, data):
    entity = data.draw(entity_rows("UTC"))
    stripped = [{**f, "created_ts": None} for f in features]
    assert run_join(entity, features, None, "UTC", created=False) == brute_force(entity, stripped, None)


def test_ttl_edge_is_inclusive_and_late_corrections_win():
    f = [{"k": 1, "event_ts": BASE, "created_ts": BASE + dt.timedelta(hours=2), "v": 2.0},  # correction, listed 1st
         {"k": 1, "event_ts": BASE, "created_ts": BASE, "v": 1.0}]
    e = [{"k": 1, "ts": BASE + dt.timedelta(seconds=10)}, {"k": 1, "ts": BASE + dt.timedelta(seconds=10, microseconds=1)},
         {"k": 2, "ts": BASE + dt.timedelta(seconds=5)}, {"k": 1, "ts": BASE - dt.timedelta(microseconds=1)}]
    assert run_join(e, f, dt.timedelta(seconds=10), "UTC") == [2.0, None, None, None]


def test_nanosecond_entity_times_are_not_truncated():
    edf = pl.DataFrame({"k": [1, 1], "ts": [1_000_000_000_000_000_499, 1_000_000_000_000_001_000]}).with_columns(
        pl.col("ts").cast(pl.Datetime("ns", "UTC")))
    fdf = pl.DataFrame({"k": [1], "event_ts": [1_000_000_000_000_000_500], "v": [7.0]}).with_columns(
        pl.col("event_ts").cast(pl.Datetime("ns", "UTC")))
    unit = time_unit(edf.schema["ts"], fdf.schema["event_ts"])
    assert unit == "ns"
    prepared = prepare_feature_rows(fdf, join_keys=["k"], event_ts="event_ts", created_ts=None, features=["v"],
                                    unit=unit)
    out = point_in_time_join(edf.with_row_index(ROW), prepared, join_keys=["k"], timestamp="ts", features=["v"],
                             ttl=None, unit=unit)
    assert out["v"].to_list() == [None, 7.0]  # 499 ns is before 500 ns, even though both are in the same us


def test_errors_name_the_column_and_the_fix():
    edf = pl.DataFrame({"k": ["a"], "ts": ["2026-01-01"], "v": [1.0]}).with_row_index(ROW)
    fdf = pl.DataFrame({"k": [1], "event_ts": [BASE], "v": [1.0]})
    prepared = prepare_feature_rows(fdf, join_keys=["k"], event_ts="event_ts", created_ts=None, features=["v"],
                                    unit="us")
    with pytest.raises(FeatureStoreError, match="already have column"):
        point_in_time_join(edf, prepared, join_keys=["k"], timestamp="ts", features=["v"], ttl=None, unit="us")
    with pytest.raises(FeatureStoreError, match="not a timestamp"):
        point_in_time_join(edf.drop("v"), prepared, join_keys=["k"], timestamp="ts", features=["v"], ttl=None,
                           unit="us")
    with pytest.raises(FeatureStoreError, match="not in its source"):
        prepare_feature_rows(fdf, join_keys=["k"], event_ts="when", created_ts=None, features=["v"], unit="us")
