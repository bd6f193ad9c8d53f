"""LocalDataset: the slice of the Ray Dataset API the data steps use, on one in-process table."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymlops.data.local import LocalDataset


def test_map_batches_runs_the_callable_per_batch_and_accepts_tables_and_numpy_dicts():
    ds = LocalDataset(pa.table({"x": list(range(10)), "y": ["a", "b"] * 5}))
    sizes = ds.map_batches(lambda b: {"n": np.array([b.num_rows]), "s": np.array(["j"], dtype=object)},
                           batch_format="pyarrow", batch_size=4, num_cpus=0.5)
    assert sizes.take_all() == [{"n": 4, "s": "j"}, {"n": 4, "s": "j"}, {"n": 2, "s": "j"}]
    doubled = ds.select_columns(["x"]).map_batches(lambda b: b.set_column(0, "x", pa.array([2 * v for v in
                                                   b["x"].to_pylist()])), batch_format="pyarrow", batch_size=None)
    assert doubled.schema().base_schema.names == ["x"] and doubled.to_arrow()["x"].to_pylist()[-1] == 18
    assert ds.count() == 10 and [b.num_rows for b in ds.iter_batches(batch_size=None)] == [10]
    with pytest.raises(ValueError, match="pyarrow"):
        ds.map_batches(lambda b: b, batch_format="numpy")


def test_write_parquet_partitions_like_ray_data_in_several_files(tmp_path):
    n = 40_000
    table = pa.table({"id": np.arange(n), "split": np.where(np.arange(n) % 4 == 0, "test", "train")})
    LocalDataset(table).write_parquet(str(tmp_path), partition_cols=["split"])
    train = sorted((tmp_path / "split=train").glob("*.parquet"))
    assert len(train) == 2 and len(list((tmp_path / "split=test").glob("*.parquet"))) == 1
    rows = pa.concat_tables([pq.read_table(f) for f in train])
    assert rows.schema.names == ["id"] and rows.num_rows == 30_000 and rows["id"].to_pylist()[:3] == [1, 2, 3]


def test_small_parquet_is_read_here_without_starting_ray_and_large_asks_for_ray(tmp_path, monkeypatch):
    # `raymlops validate` defers Ray (init_ray_later): only a read through Ray Data may start it.
    import raymlops._ray
    from raymlops.data.ingest import ingest

    started: list[bool] = []
    monkeypatch.setattr(raymlops._ray, "ensure_ray", lambda: started.append(True))
    monkeypatch.setattr("ray.data.read_parquet", lambda *a, **k: "a Ray dataset")  # stands in for the read only
    pq.write_table(pa.table({"x": list(range(100))}), tmp_path / "part.parquet")
    small = ingest(str(tmp_path), local_max_rows=1000)
    assert isinstance(small.dataset, LocalDataset) and small.rows == 100 and started == []
    assert ingest(str(tmp_path), local_max_rows=10).dataset == "a Ray dataset" and started == [True]
