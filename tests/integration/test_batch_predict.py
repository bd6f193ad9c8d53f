"""Batch prediction on Ray Data with a real registered package: batch equals direct, versions, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymlops.config import load_config
from raymlops.data.synthetic import generate, make_day
from raymlops.errors import DataError, PackageError, RegistryError
from raymlops.model.package import load_package
from raymlops.registry.models import ModelRegistry
from raymlops.serve.batch import PredictPackage, predict_batch
from tests.data_helpers import build_package

IDS, TS = ["customer_id"], "event_ts"


@pytest.fixture
def cfg(tmp_path, tracking_uri):
    return load_config(None, [f"storage_uri={tmp_path / 'store'}", f"tracking_uri={tracking_uri}",
                              "train.hidden_sizes=[16]", "train.dropout=0"])


@pytest.fixture
def champion(cfg, tmp_path):
    info = build_package(cfg, tmp_path / "packages" / "v1")
    reg = ModelRegistry(cfg.tracking_uri)
    version = reg.register(cfg.name, info.uri, run_id=None, digest=info.digest, tags={})
    reg.promote(cfg.name, version.version)
    return info


@pytest.fixture
def landing(tmp_path) -> str:
    out = str(tmp_path / "input")
    generate(out, rows_per_day=1500, days=2, start_date="2026-02-01", seed=5)
    return out


def test_batch_equals_direct(ray_session, cfg, champion, landing, tmp_path):
    out = str(tmp_path / "scored")
    lines: list[str] = []
    result = predict_batch(cfg, landing, out, progress=lines.append)

    inputs = pq.read_table(landing)
    scored = pq.read_table(out)  # _SUCCESS is skipped by pyarrow's discovery
    assert result.rows == scored.num_rows == inputs.num_rows == 3000
    assert result.version == 1 and result.output_uri == out
    assert result.files and all(Path(f).is_file() for f in result.files)
    assert scored.column_names == [*inputs.column_names, "probability", "label", "model_version"]
    assert set(scored.column("model_version").to_pylist()) == {"1"}
    assert sorted(scored.column("customer_id").to_pylist()) == sorted(inputs.column("customer_id").to_pylist())
    marker = json.loads(Path(out, "_SUCCESS").read_text())
    assert marker["rows"] == 3000 and marker["digest"] == champion.digest and marker["version"] == 1
    assert not [p for p in Path(out).parent.iterdir() if p.name.startswith(".scored")]  # no staging left behind
    assert any("v1" in line for line in lines)

    # The same rows through LoadedModel.predict in this process give bit-identical outputs.
    direct = load_package(champion.uri, champion.digest).predict(scored.select(inputs.column_names))
    assert np.array_equal(scored.column("probability").to_numpy(), direct["probability"])
    assert np.array_equal(scored.column("label").to_numpy(), direct["label"])  # classes [0, 1]: value == index
    assert scored.schema.field("label").type == pa.int64()


def test_explicit_version_and_rerun_replaces_output(ray_session, cfg, champion, landing, tmp_path):
    other = build_package(cfg, tmp_path / "packages" / "v2", seed=1)
    reg = ModelRegistry(cfg.tracking_uri)
    assert reg.register(cfg.name, other.uri, run_id=None, digest=other.digest, tags={}).version == 2

    out = str(tmp_path / "scored")
    predict_batch(cfg, landing, out, progress=lambda _: None)  # champion: v1
    result = predict_batch(cfg, landing, out, version="challenger", progress=lambda _: None)
    scored = pq.read_table(out)
    assert result.version == 2 and set(scored.column("model_version").to_pylist()) == {"2"}
    assert scored.num_rows == 3000  # replaced, not appended
    direct = load_package(other.uri).predict(scored)
    assert np.array_equal(scored.column("probability").to_numpy(), direct["probability"])

    with pytest.raises(RegistryError, match="no version 7"):
        predict_batch(cfg, landing, str(tmp_path / "x"), version="7", progress=lambda _: None)


def test_package_replaced_after_registration_is_refused(ray_session, cfg, champion, landing, tmp_path):
    # A different, internally consistent package at the registered URI: only the registry's digest catches it.
    shutil.rmtree(champion.uri)
    build_package(cfg, Path(champion.uri), seed=99)
    out = tmp_path / "scored"
    with pytest.raises(PackageError, match="registry"):
        predict_batch(cfg, landing, str(out), progress=lambda _: None)
    assert not out.exists()


def test_tampered_weights_are_refused(ray_session, cfg, champion, landing, tmp_path):
    weights = Path(champion.uri, "weights.safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(PackageError, match="weights.safetensors"):
        predict_batch(cfg, landing, str(tmp_path / "scored"), progress=lambda _: None)


def test_bad_inputs_and_outputs_are_refused(ray_session, cfg, champion, landing, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    pq.write_table(pq.read_table(landing).drop_columns(["plan", "tenure_months"]), partial / "rows.parquet")
    with pytest.raises(DataError, match=r"lacks feature column\(s\) \['tenure_months', 'plan'\]"):
        predict_batch(cfg, str(partial), str(tmp_path / "o1"), progress=lambda _: None)

    with pytest.raises(DataError, match="holds input files"):
        predict_batch(cfg, landing, landing, progress=lambda _: None)

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a batch prediction output"):
        predict_batch(cfg, landing, str(occupied), progress=lambda _: None)
    assert (occupied / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(("task", "label", "columns"), [
    ("multiclass", "plan", ["probabilities", "label"]),
    ("regression", "monthly_charges", ["value"]),
])
def test_output_columns_per_task(cfg, tmp_path, task, label, columns):
    info = build_package(cfg, tmp_path / task, task=task, label=label)
    rows = make_day("2026-03-01", 50, seed=2)
    out = PredictPackage(info.uri, info.digest, "4")(rows)
    assert out.column_names == [*rows.column_names, *columns, "model_version"]
    direct = load_package(info.uri).predict(rows)
    if task == "multiclass":
        classes = load_package(info.uri).transform.classes
        assert out.column("label").to_pylist() == [classes[i] for i in direct["label"]]  # class values, not indexes
        assert np.array_equal(np.stack(out.column("probabilities").to_numpy(zero_copy_only=False)),
                              direct["probabilities"])
    else:
        assert np.array_equal(out.column("value").to_numpy(), direct["value"])
    assert set(out.column("model_version").to_pylist()) == {"4"}
