"""prepare on local Ray: split files, one transform for every path, atomic output, refusing incomplete output."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymlops.config import config_from_dict
from raymlops.core.schema import infer_schema
from raymlops.core.sketches import profile_table
from raymlops.core.transform import apply_transform
from raymlops.data import prepare as prepare_mod
from raymlops.data.prepare import TransformBatch, load_prepared, prepare
from raymlops.data.profile import profile_dataset
from raymlops.errors import DataError

N = 3000
FEATURES = ["region", "plan", "tenure_months", "monthly_charges", "support_calls"]


def churn_rows(n: int = N, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    charges = rng.gamma(4.0, 20.0, n)
    charges[rng.random(n) < 0.05] = np.nan  # nulls reach the transform (NaN -> null below)
    region = rng.choice(["north", "south", "east", "west", "moon"], n, p=[0.3, 0.3, 0.2, 0.1995, 0.0005])
    return pa.table({
        "customer_id": [f"C{i:06d}" for i in range(n)],
        "event_ts": pa.array(1_700_000_000_000_000 + rng.integers(0, 20 * 86_400_000_000, n),
                             pa.timestamp("us", tz="UTC")),
        "region": pa.array(np.where(rng.random(n) < 0.03, None, region)),
        "plan": rng.choice(["basic", "standard", "premium"], n),
        "tenure_months": pa.array(rng.integers(0, 72, n), mask=rng.random(n) < 0.02),
        "monthly_charges": pa.array(charges, from_pandas=True),
        "support_calls": rng.poisson(1.0, n),
        "churned": (rng.random(n) < 0.25).astype(np.int64),
    })


def schema_of(table: pa.Table):
    cats = {"region", "plan"}
    profile = profile_table(table, categorical=cats, skip={"customer_id", "event_ts"})
    return infer_schema(profile, name="churn", task="binary", label="churned", timestamp="event_ts",
                        id_columns=["customer_id"], features=FEATURES, categorical=cats)


def config(**split):
    # min_category_count 5 makes the rare region 'moon' out-of-vocabulary: OOV rows reach every path.
    return config_from_dict({"data": {"split": split}, "prepare": {"min_category_count": 5}})


def blocks(table: pa.Table, size: int) -> list[pa.Table]:
    return [table.slice(i, size) for i in range(0, table.num_rows, size)]


def split_ids(prepared) -> dict[str, set[str]]:
    return {s: set(pq.read_table(u, columns=["customer_id"])["customer_id"].to_pylist())
            for s, u in prepared.split_uris.items()}


@pytest.fixture(scope="module")
def data() -> pa.Table:
    return churn_rows()


@pytest.fixture(scope="module")
def prepared(ray_session, data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("prep") / "prepared")
    return prepare(config(), ray_session.data.from_arrow(blocks(data, 700)), schema_of(data), out)


def test_prepare_writes_disjoint_stratified_splits(prepared, data):
    assert sorted(os.listdir(prepared.uri)) == ["_SUCCESS", "split_stats.json", "test", "train", "transform.json",
                                               "validation"]
    ids = split_ids(prepared)
    assert set().union(*ids.values()) == set(data["customer_id"].to_pylist())
    assert sum(len(v) for v in ids.values()) == N == sum(prepared.rows.values())
    assert {s: len(v) for s, v in ids.items()} == prepared.rows
    assert abs(prepared.rows["train"] / N - 0.7) < 0.01 and abs(prepared.rows["test"] / N - 0.15) < 0.01
    written = pq.read_table(prepared.split_uris["train"])
    assert written.schema.names == data.schema.names and written.schema.field("event_ts").type == pa.timestamp(
        "us", tz="UTC")  # raw rows, no split column
    stats = json.loads(open(os.path.join(prepared.uri, "split_stats.json")).read())["splits"]
    rates = [stats[s]["label_rate"] for s in ("train", "validation", "test")]
    assert max(rates) - min(rates) < 0.005
    assert load_prepared(prepared.uri) == prepared


def test_split_membership_does_not_depend_on_blocking(ray_session, prepared, data, tmp_path):
    shuffled = data.take(np.random.default_rng(1).permutation(N))
    again = prepare(config(), ray_session.data.from_arrow(blocks(shuffled, 333)), schema_of(data), str(tmp_path / "p"),
                    train_profile_fn=lambda ds, cats: profile_dataset(ds, categorical=cats))
    assert split_ids(again) == split_ids(prepared)
    a, b = again.transform, prepared.transform
    assert a.categorical == b.categorical and a.classes == b.classes
    for x, y in zip(a.numeric, b.numeric, strict=True):  # moments merged in another order: equal to rounding
        assert (x.name, x.impute) == (y.name, y.impute) and np.allclose([x.mean, x.std], [y.mean, y.std], rtol=1e-12)


def test_transform_outputs_are_identical_through_every_path(ray_session, prepared):
    ctx = ray_session.data.DataContext.get_current()
    rows = pa.concat_tables([pq.read_table(u) for u in prepared.split_uris.values()])
    rows = rows.sort_by("customer_id")
    t = prepared.transform
    assert rows["region"].null_count and rows["monthly_charges"].null_count  # nulls and OOV go every path
    assert not set(rows["region"].drop_null().to_pylist()) <= set(t.categorical[0].vocab + t.categorical[1].vocab)

    old, ctx.execution_options.preserve_order = ctx.execution_options.preserve_order, True
    try:
        ds = ray_session.data.from_arrow(blocks(rows, 450))
        batches = list(ds.map_batches(TransformBatch(t), batch_format="pyarrow", num_cpus=0.25)
                       .iter_batches(batch_format="numpy", batch_size=None))
    finally:
        ctx.execution_options.preserve_order = old
    via_ray = {k: np.concatenate([b[k] for b in batches]) for k in ("x_num", "x_cat", "y")}

    via_table = apply_transform(t, rows)

    columns = [*t.feature_names, t.label]
    request = json.loads(json.dumps(rows.select(columns).to_pylist()))
    via_http = apply_transform(t, {c: [r[c] for r in request] for c in columns})

    for key in ("x_num", "x_cat", "y"):
        assert via_ray[key].dtype == via_table[key].dtype == via_http[key].dtype
        assert np.array_equal(via_ray[key], via_table[key]) and np.array_equal(via_http[key], via_table[key]), key
    assert np.isfinite(via_table["x_num"]).all() and (via_table["x_cat"] == 0).any()


def test_time_split_puts_newest_rows_in_test(ray_session, data, tmp_path):
    out = prepare(config(method="time"), ray_session.data.from_arrow(blocks(data, 1000)), schema_of(data),
                  str(tmp_path / "t"))
    ts = {s: pq.read_table(u, columns=["event_ts"])["event_ts"].cast(pa.int64()).to_numpy()
          for s, u in out.split_uris.items()}
    assert ts["train"].max() < ts["validation"].min() and ts["validation"].max() < ts["test"].min()
    assert abs(out.rows["train"] / N - 0.7) < 0.01
    doc = json.loads(open(os.path.join(out.uri, "split_stats.json")).read())
    assert doc["plan"]["method"] == "time" and doc["time_cuts"][0].startswith("2023-")


def test_crash_while_writing_leaves_no_complete_looking_output(ray_session, prepared, data, tmp_path, monkeypatch):
    def crash(root, files):
        raise OSError("disk full")

    monkeypatch.setattr(prepare_mod, "_write_success", crash)
    ds = ray_session.data.from_arrow(blocks(data, 1000))
    fresh = tmp_path / "fresh"
    with pytest.raises(OSError, match="disk full"):
        prepare(config(), ds, schema_of(data), str(fresh))
    assert not fresh.exists() and os.listdir(tmp_path) == []  # staging directory removed too
    with pytest.raises(DataError, match="_SUCCESS"):
        load_prepared(str(fresh))

    previous = tmp_path / "previous"
    shutil.copytree(prepared.uri, previous)
    with pytest.raises(OSError, match="disk full"):
        prepare(config(validation_pct=20), ds, schema_of(data), str(previous))
    assert load_prepared(str(previous)).rows == prepared.rows  # the old, complete output is untouched


def test_in_place_output_is_complete_only_once_the_marker_is_written(ray_session, data, tmp_path, monkeypatch):
    # Object stores cannot rename directories: prepare writes in place there, and `_SUCCESS` comes last.
    monkeypatch.setattr(prepare_mod, "_renames_atomically", lambda uri: False)
    ds, out = ray_session.data.from_arrow(blocks(data, 1000)), str(tmp_path / "bucket" / "prepared")
    first = prepare(config(), ds, schema_of(data), out)
    assert load_prepared(out) == first

    def crash(root, files):
        raise OSError("connection reset")

    monkeypatch.setattr(prepare_mod, "_write_success", crash)
    with pytest.raises(OSError, match="connection reset"):
        prepare(config(), ds, schema_of(data), out)
    assert os.listdir(os.path.join(out, "train"))  # rows were written ...
    with pytest.raises(DataError, match="_SUCCESS is missing"):  # ... but the output is not trusted
        load_prepared(out)


def test_load_prepared_refuses_incomplete_output(prepared, tmp_path):
    def copy(name: str) -> str:
        return shutil.copytree(prepared.uri, tmp_path / name)

    no_marker = copy("no_marker")
    os.remove(os.path.join(no_marker, "_SUCCESS"))
    with pytest.raises(DataError, match="_SUCCESS is missing"):
        load_prepared(str(no_marker))

    lost_part = copy("lost_part")
    victim = sorted(os.listdir(os.path.join(lost_part, "validation")))[0]
    os.remove(os.path.join(lost_part, "validation", victim))
    with pytest.raises(DataError, match=f"validation/{victim}"):
        load_prepared(str(lost_part))

    truncated = copy("truncated")
    with open(os.path.join(truncated, "transform.json"), "r+") as f:
        f.truncate(10)
    with pytest.raises(DataError, match="transform.json"):
        load_prepared(str(truncated))

    with pytest.raises(DataError, match="_SUCCESS is missing"):
        load_prepared(str(tmp_path / "never_prepared"))


def test_schema_columns_missing_from_data_are_named(ray_session, data, tmp_path):
    ds = ray_session.data.from_arrow(data.drop_columns(["plan"]))
    with pytest.raises(DataError, match="'plan'"):
        prepare(config(), ds, schema_of(data), str(tmp_path / "x"))


def test_errors_raised_in_ray_tasks_reach_the_caller_typed(ray_session):
    def reject(batch):
        raise DataError("column 'x' is bad; fix it")

    ds = ray_session.data.from_arrow(pa.table({"x": [1, 2]})).map_batches(reject, batch_format="pyarrow")
    with pytest.raises(DataError, match=r"^column 'x' is bad; fix it$"):
        with prepare_mod._typed_errors():
            ds.take_all()


@pytest.mark.parametrize("method", ["random", "time"])
def test_small_data_prepared_in_process_equals_the_ray_data_path(ray_session, data, tmp_path, method):
    """`data.local_max_rows`: a small parquet source is read with pyarrow and run through the same callables in
    this process; the window, the splits, the transform and the written rows are those of the Ray Data path."""
    from raymlops.data.ingest import ingest
    from raymlops.data.local import LocalDataset

    src = tmp_path / "landing"
    src.mkdir()
    for i, part in enumerate(blocks(data, 1000)):
        pq.write_table(part, src / f"part-{i}.parquet")
    window = dict(timestamp="event_ts", window_start="2023-11-16T00:00:00Z", window_end="2023-12-01T00:00:00Z")
    local = ingest(str(src), local_max_rows=N, **window)
    remote = ingest(str(src), local_max_rows=N - 1, **window)
    assert isinstance(local.dataset, LocalDataset) and not isinstance(remote.dataset, LocalDataset)
    assert 0 < local.rows == remote.rows < N and local.schema == remote.schema
    via = {}
    for name, got in (("local", local), ("ray", remote)):
        via[name] = prepare(config(method=method), got.dataset, schema_of(data), str(tmp_path / name))
    assert split_ids(via["local"]) == split_ids(via["ray"])
    assert via["local"].rows == via["ray"].rows
    a, b = via["local"].transform, via["ray"].transform
    assert a.categorical == b.categorical and a.classes == b.classes
    for x, y in zip(a.numeric, b.numeric, strict=True):
        assert (x.name, x.impute) == (y.name, y.impute) and np.allclose([x.mean, x.std], [y.mean, y.std], rtol=1e-12)
    for split, uri in via["local"].split_uris.items():  # same columns, no partition column left in the files
        assert pq.read_table(uri).schema.names == pq.read_table(via["ray"].split_uris[split]).schema.names
