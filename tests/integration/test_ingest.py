"""Ingestion on a local Ray: sources (file, glob, directory, URI, CSV), time window, and the errors users hit.

Checks that need no rows (file lists, row counts from parquet footers, errors raised up front) do not execute a
dataset; only a few tests run one, to keep this fast on a small machine.
"""

from __future__ import annotations

import datetime as dt
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from raymlops.data.ingest import ingest, read_dataset
from raymlops.data.synthetic import generate
from raymlops.errors import ConfigError, DataError

ROWS, DAYS = 200, 4


@pytest.fixture(scope="module")
def landing(tmp_path_factory):
    out = tmp_path_factory.mktemp("landing")
    generate(str(out), rows_per_day=ROWS, days=DAYS, seed=11)
    return out


@pytest.fixture
def copy(landing, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(landing, dst)
    return dst


def test_file_glob_directory_and_uri_sources(ray_session, copy):
    (copy / ".hidden").mkdir()
    (copy / ".hidden" / "churn-old.parquet").write_bytes(b"not parquet")
    (copy / "_SUCCESS").write_bytes(b"")
    (copy / "churn-2026-01-09.parquet.tmp-1a2b3c4d").write_bytes(b"half-written")
    (copy / "notes.txt").write_text("ignored: directories are read by suffix")
    (copy / "sub").mkdir()
    shutil.copy(copy / "churn-2026-01-01.parquet", copy / "sub" / "churn-2025-12-31.parquet")
    one = ingest(str(copy / "churn-2026-01-02.parquet"))
    assert (one.rows, one.files, one.format) == (ROWS, [str(copy / "churn-2026-01-02.parquet")], "parquet")
    globbed = ingest(str(copy / "churn-2026-01-0[23].parquet"))
    assert [f.rsplit("/", 1)[1] for f in globbed.files] == ["churn-2026-01-02.parquet", "churn-2026-01-03.parquet"]
    assert globbed.rows == 2 * ROWS
    assert ingest(str(copy / "*" / "*.parquet")).files == [str(copy / "sub" / "churn-2025-12-31.parquet")]
    directory = ingest(str(copy))  # recursive, skips hidden, _ and temporary files
    assert directory.rows == (DAYS + 1) * ROWS
    uri = ingest(f"file://{copy}/sub")
    assert uri.files == [f"file://{copy}/sub/churn-2025-12-31.parquet"]
    # Rows come from the footers; reading the data agrees.
    assert directory.dataset.count() == directory.rows
    assert directory.schema.names == uri.dataset.schema().names


def test_time_window_filters_rows_and_prunes_files(ray_session, landing):
    start, end = "2026-01-02T12:00:00", "2026-01-04T00:00:00+00:00"
    result = ingest(str(landing), timestamp="event_ts", window_start=start, window_end=end,
                    columns=["plan", "churned"])
    assert [f.rsplit("/", 1)[1] for f in result.files] == ["churn-2026-01-02.parquet", "churn-2026-01-03.parquet"]
    table = pq.read_table(landing)
    lo = pa.scalar(dt.datetime(2026, 1, 2, 12, tzinfo=dt.timezone.utc), pa.timestamp("us", tz="UTC"))
    hi = pa.scalar(dt.datetime(2026, 1, 4, tzinfo=dt.timezone.utc), pa.timestamp("us", tz="UTC"))
    ts = table["event_ts"]
    expected = table.filter(pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi)))
    assert ROWS < result.rows == expected.num_rows < 2 * ROWS
    rows = result.dataset.to_arrow_refs()  # one execution
    got = pa.concat_tables(ray_session.get(rows))
    assert got.column_names == ["plan", "churned"]
    assert sorted(got["plan"].to_pylist()) == sorted(expected["plan"].to_pylist())


def test_csv_with_time_window(ray_session, landing, tmp_path):
    for day in ("2026-01-01", "2026-01-02"):
        pacsv.write_csv(pq.read_table(landing / f"churn-{day}.parquet"), tmp_path / f"churn-{day}.csv")
    result = ingest(f"{tmp_path}/*.csv", timestamp="event_ts", window_start="2026-01-02")
    assert result.format == "csv"
    assert result.rows == ROWS  # counted by reading: CSV has no footer
    assert result.schema.field("event_ts").type == pa.timestamp("ns", tz="UTC")
    assert result.schema.field("tenure_months").type == pa.int64()
    assert read_dataset(str(tmp_path / "churn-2026-01-01.csv")).schema().names == result.schema.names


def test_files_with_extra_columns_are_read_with_the_union_schema(ray_session, tmp_path):
    generate(str(tmp_path), rows_per_day=50, days=2, schema_change=["add_column"], schema_change_from_day=1)
    result = ingest(str(tmp_path))
    assert result.schema.names[-1] == "discount_pct" and result.rows == 100


def test_corrupt_parquet_is_named(ray_session, copy):
    bad = copy / "churn-2026-01-03.parquet"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(DataError, match=f"{bad} is not a readable parquet file"):
        ingest(str(copy))


def test_conflicting_schemas_name_the_file_and_column(ray_session, tmp_path):
    generate(str(tmp_path), rows_per_day=50, days=3, schema_change=["change_type"], schema_change_from_day=2)
    with pytest.raises(DataError, match=r"column 'tenure_months' is string in .*churn-2026-01-03.parquet but int64"):
        ingest(str(tmp_path))
    # A window that leaves the changed day out reads fine: files outside it are pruned before the check.
    assert ingest(str(tmp_path), timestamp="event_ts", window_end="2026-01-03").rows == 100


def test_empty_results_are_errors(ray_session, landing, tmp_path):
    with pytest.raises(DataError, match=r"no rows .* time window.*the data spans 2026-01-01"):
        ingest(str(landing), timestamp="event_ts", window_start="2027-01-01")
    pq.write_table(pq.read_table(landing / "churn-2026-01-01.parquet").slice(0, 0), tmp_path / "empty.parquet")
    with pytest.raises(DataError, match="holds no rows"):
        ingest(str(tmp_path))


def test_missing_columns_are_named(ray_session, tmp_path, landing):
    pq.write_table(pq.read_table(landing / "churn-2026-01-01.parquet").drop_columns(["event_ts"]),
                   tmp_path / "no-ts.parquet")
    with pytest.raises(DataError, match=r"timestamp column 'event_ts' is not in .*no-ts.parquet"):
        ingest(str(tmp_path), timestamp="event_ts", window_start="2026-01-01")
    with pytest.raises(DataError, match=r"column\(s\) \['nope'\]"):
        ingest(str(landing), columns=["plan", "nope"])


def test_unreadable_sources(ray_session, tmp_path, landing):
    with pytest.raises(DataError, match="does not exist"):
        ingest(str(tmp_path / "missing"))
    with pytest.raises(DataError, match="cannot open nosuchfs://bucket/x"):
        ingest("nosuchfs://bucket/x")
    with pytest.raises(DataError, match=r"no files matched .*\*.parquet"):
        ingest(str(tmp_path / "*.parquet"))
    shutil.copy(landing / "churn-2026-01-01.parquet", tmp_path / "a.parquet")
    pacsv.write_csv(pa.table({"x": [1]}), tmp_path / "b.csv")
    with pytest.raises(DataError, match=r"mixes formats: .*a.parquet \(parquet\) and .*b.csv \(csv\)"):
        ingest(str(tmp_path))
    assert ingest(str(tmp_path), fmt="parquet").rows == ROWS
    with pytest.raises(ConfigError, match="not ISO-8601"):
        ingest(str(landing), timestamp="event_ts", window_start="yesterday")
