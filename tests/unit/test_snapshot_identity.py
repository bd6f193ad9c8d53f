"""A data snapshot is identified by content: a file swapped between validate and prepare is refused."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymlops.data.ingest import (
    data_files,
    identities_digest,
    pin_snapshot,
    snapshot,
    snapshot_identities,
    verify_snapshot,
)
from raymlops.errors import DataError, SnapshotChangedError


def write(path, values, **kw):
    table = pa.table({"x": pa.array(values, pa.int64()), "label": pa.array([v % 2 for v in values], pa.int64())})
    pq.write_table(table, path, compression="none", use_dictionary=False, **kw)


def swap_keeping_size_and_mtime(path, values):
    """Replace `path` with different rows of exactly the same size and the same mtime (what a stat digest sees)."""
    before = os.stat(path)
    write(path, values)
    assert os.stat(path).st_size == before.st_size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == before.st_mtime_ns


@pytest.fixture
def landing(tmp_path):
    d = tmp_path / "landing"
    d.mkdir()
    write(d / "day1.parquet", [1, 2, 3])
    write(d / "day2.parquet", [4, 5, 6])
    (d / "extra.csv").write_text("x,label\n1,0\n")
    return d


def test_a_same_size_same_mtime_swap_changes_the_snapshot(landing):
    files, digest = snapshot(str(landing / "*.parquet"))
    assert [os.path.basename(f) for f in files] == ["day1.parquet", "day2.parquet"]
    swap_keeping_size_and_mtime(landing / "day2.parquet", [4, 5, 7])
    assert snapshot(str(landing / "*.parquet"))[1] != digest


def test_a_csv_is_identified_by_its_bytes(landing):
    before = snapshot(str(landing / "extra.csv"))[1]
    st = os.stat(landing / "extra.csv")
    (landing / "extra.csv").write_text("x,label\n1,1\n")
    os.utime(landing / "extra.csv", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert snapshot(str(landing / "extra.csv"))[1] != before


def test_verify_names_the_swapped_file_and_says_to_validate_again(landing):
    source = str(landing / "*.parquet")
    identities = snapshot_identities(source)
    digest = identities_digest(identities)
    verify_snapshot(source, "auto", digest, identities)  # unchanged: accepted
    swap_keeping_size_and_mtime(landing / "day1.parquet", [1, 2, 9])
    with pytest.raises(SnapshotChangedError) as err:
        verify_snapshot(source, "auto", digest, identities)
    message = str(err.value)
    assert f"{landing / 'day1.parquet'} (changed)" in message and "day2" not in message
    assert "validate" in message and "without --resume" in message
    assert isinstance(err.value, DataError)


def test_verify_names_added_and_removed_files(landing):
    source = str(landing / "*.parquet")
    identities = snapshot_identities(source)
    digest = identities_digest(identities)
    os.remove(landing / "day2.parquet")
    write(landing / "day3.parquet", [7])
    with pytest.raises(SnapshotChangedError, match=r"day2\.parquet \(removed\).*day3\.parquet \(added\)|"
                       r"day3\.parquet \(added\).*day2\.parquet \(removed\)"):
        verify_snapshot(source, "auto", digest, identities)


def test_data_files_lists_without_reading(landing, monkeypatch):
    import raymlops.data.ingest as ingest

    monkeypatch.setattr(ingest, "_identity", lambda *a: pytest.fail("data_files must not open files"))
    assert [os.path.basename(f) for f in data_files(str(landing))] == ["day1.parquet", "day2.parquet", "extra.csv"]


def test_prepare_refuses_data_swapped_after_validate(landing, tmp_path):
    """The CT pipeline's prepare step (`ct._ingest`) checks the snapshot its validate step recorded."""
    from raymlops import ct
    from raymlops.config import Config
    from raymlops.pipeline.component import Artifact

    source = str(landing / "*.parquet")
    cfg = Config.model_validate({"storage_uri": str(tmp_path / "store"),
                                 "data": {"source": source, "timestamp": None, "label": "label", "slices": []}})
    identities = snapshot_identities(source)
    uri = pin_snapshot(source, "auto", identities_digest(identities), str(tmp_path / "validate" / "snapshot.json"))
    validated = Artifact(uri=source, kind="dataset", digest=identities_digest(identities),
                         metadata={"identities_uri": uri})
    assert ct._ingest(cfg, validated).rows == 6  # unchanged: read
    swap_keeping_size_and_mtime(landing / "day2.parquet", [4, 5, 8])
    with pytest.raises(SnapshotChangedError, match=r"day2\.parquet \(changed\)"):
        ct._ingest(cfg, validated)


def test_pinning_refuses_data_that_changed_during_validation(landing, tmp_path):
    source = str(landing / "*.parquet")
    digest = snapshot(source)[1]  # taken when the run starts
    swap_keeping_size_and_mtime(landing / "day1.parquet", [1, 2, 8])
    with pytest.raises(SnapshotChangedError, match="changed while it was being validated"):
        pin_snapshot(source, "auto", digest, str(tmp_path / "snapshot.json"))
