"""Model package: atomic save, verified load, identical predictions, tamper detection, nothing pickled."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pyarrow as pa
import pytest
import torch
from safetensors import safe_open

from raymlops.core.transform import CategoricalColumn, NumericColumn, Transform, apply_transform
from raymlops.errors import PackageError
from raymlops.model import package as pkg
from raymlops.model.nets import build_model, predict_outputs

SPEC = {
    "model": "mlp",
    "n_numeric": 2,
    "cardinalities": [4],
    "embedding_dim": 3,
    "hidden_sizes": [8],
    "dropout": 0.0,
    "task": "binary",
    "n_classes": 2,
}
TRANSFORM = Transform(
    numeric=[
        NumericColumn("tenure_months", 12.0, 20.0, 10.0),
        NumericColumn("monthly_charges", 50.0, 60.0, 15.0),
    ],
    categorical=[CategoricalColumn("plan", ["basic", "standard", "premium"])],
    label="churned",
    task="binary",
    classes=[0, 1],
)
SCHEMA_YAML = "name: churn\nversion: 1\ntask: binary\ncolumns: []\n"


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model(SPEC).eval()


@pytest.fixture
def batch() -> pa.Table:
    return pa.table(
        {
            "tenure_months": [1, 24, None, 60],
            "monthly_charges": [20.5, 70.0, 99.9, None],
            "plan": ["basic", "premium", "unknown-plan", None],
            "region": ["north", "south", "east", "west"],
        }
    )


def _save(path, model, **over):
    args = dict(
        state_dict={k: v.numpy() for k, v in model.state_dict().items()},
        model_spec=SPEC,
        transform_json=TRANSFORM.to_json(),
        schema_yaml=SCHEMA_YAML,
        signature={
            "inputs": ["tenure_months", "monthly_charges", "plan"],
            "outputs": ["probability", "label"],
        },
        metrics={"roc_auc": np.float64(0.81), "slice_auc": {"north": float("nan")}},
        tags={"pipeline_run_id": "run-1", "data_fingerprint": "abc"},
    )
    args.update(over)
    return pkg.save_package(str(path), **args)


@pytest.fixture
def saved(tmp_path, model):
    return _save(tmp_path / "pkg", model)


def test_round_trip_gives_identical_predictions(saved, model, batch):
    loaded = pkg.load_package(saved.uri, saved.digest, version="3")

    arrays = apply_transform(TRANSFORM, batch)
    with torch.no_grad():
        expected = predict_outputs(
            "binary", model(torch.from_numpy(arrays["x_num"]), torch.from_numpy(arrays["x_cat"]))
        )
    got = loaded.predict(batch)
    assert set(got) == {"probability", "label"}
    np.testing.assert_array_equal(got["probability"], expected["probability"])
    np.testing.assert_array_equal(got["label"], expected["label"])
    # rows from an HTTP request (dict of lists) take the same path
    np.testing.assert_array_equal(loaded.predict(batch.to_pydict())["probability"], expected["probability"])

    assert loaded.transform == TRANSFORM
    assert loaded.digest == saved.digest and loaded.version == "3"
    assert loaded.model_spec == SPEC
    assert loaded.schema["name"] == "churn" and loaded.schema_yaml == SCHEMA_YAML
    assert loaded.signature["outputs"] == ["probability", "label"]
    assert loaded.metrics == {"roc_auc": 0.81, "slice_auc": {"north": None}}  # NaN is stored as null
    assert loaded.tags == {"pipeline_run_id": "run-1", "data_fingerprint": "abc"}
    assert not loaded.model.training


def test_digest_depends_on_content_only(tmp_path, saved, model):
    again = _save(tmp_path / "other", model, tags={"pipeline_run_id": "run-2"})
    assert again.digest == saved.digest
    assert pkg.verify_package(saved.uri).digest == saved.digest
    assert saved.size_bytes == sum(os.path.getsize(os.path.join(saved.uri, f)) for f in os.listdir(saved.uri))


def test_saving_again_is_idempotent_but_a_different_package_is_refused(saved, model):
    assert _save(saved.uri, model).digest == saved.digest
    with pytest.raises(PackageError, match="already holds a different package"):
        _save(saved.uri, model, metrics={"roc_auc": 0.5})


def test_torch_state_dict_is_accepted(tmp_path, model, batch):
    info = _save(tmp_path / "t", model, state_dict=model.state_dict())
    assert set(pkg.load_package(info.uri).predict(batch)) == {"probability", "label"}


@pytest.mark.parametrize("name", pkg.PACKAGE_FILES)
def test_a_tampered_file_is_refused_by_name(saved, name):
    path = os.path.join(saved.uri, name)
    data = bytearray(open(path, "rb").read())
    data[-2] ^= 0x01
    open(path, "wb").write(bytes(data))
    with pytest.raises(PackageError, match=rf"{name} has sha256 .*tampered with"):
        pkg.load_package(saved.uri)
    with pytest.raises(PackageError, match=name):
        pkg.verify_package(saved.uri)


def test_a_wrong_expected_digest_is_refused(saved):
    with pytest.raises(PackageError, match=f"has digest {saved.digest} but {'0' * 64} was expected"):
        pkg.verify_package(saved.uri, expected_digest="0" * 64)


def test_a_consistently_rewritten_package_is_caught_by_the_registry_digest(saved, model):
    # An attacker who rewrites a file and its manifest entry still changes the digest the registry recorded.
    path = os.path.join(saved.uri, "metrics.json")
    open(path, "w").write('{"roc_auc": 0.99}')
    manifest_path = os.path.join(saved.uri, pkg.MANIFEST)
    manifest = json.loads(open(manifest_path).read())
    import hashlib

    manifest["files"]["metrics.json"]["sha256"] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    open(manifest_path, "w").write(json.dumps(manifest))
    with pytest.raises(PackageError, match="manifest was edited"):
        pkg.verify_package(saved.uri)
    manifest["digest"] = pkg.package_digest({n: e["sha256"] for n, e in manifest["files"].items()})
    open(manifest_path, "w").write(json.dumps(manifest))
    pkg.verify_package(saved.uri)  # self-consistent again ...
    with pytest.raises(PackageError, match="tampered with after registration"):
        pkg.verify_package(saved.uri, expected_digest=saved.digest)  # ... but not what was registered


def test_a_package_without_manifest_is_incomplete(saved):
    os.remove(os.path.join(saved.uri, pkg.MANIFEST))
    with pytest.raises(PackageError, match="no manifest.json: the package is incomplete"):
        pkg.load_package(saved.uri)


def test_a_missing_file_is_named(saved):
    os.remove(os.path.join(saved.uri, "transform.json"))
    with pytest.raises(PackageError, match="transform.json is missing"):
        pkg.verify_package(saved.uri)


def test_an_interrupted_save_leaves_nothing_that_looks_like_a_package(tmp_path, model, monkeypatch):
    calls = []

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) == 3:
            raise OSError("disk full")

    monkeypatch.setattr(pkg.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path / "pkg", model)
    assert os.listdir(tmp_path) == []  # neither the package nor its temporary directory


def test_a_directory_that_is_not_a_package_is_not_overwritten(tmp_path, model):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "notes.txt").write_text("mine")
    with pytest.raises(PackageError, match="is not a model package"):
        _save(tmp_path / "pkg", model)
    assert (tmp_path / "pkg" / "notes.txt").read_text() == "mine"


def test_nothing_in_the_package_is_a_pickle(saved, batch, monkeypatch):
    for name in os.listdir(saved.uri):
        data = open(os.path.join(saved.uri, name), "rb").read()
        assert not data.startswith(b"\x80"), f"{name} starts with a pickle PROTO opcode"
        assert not data.startswith(b"PK\x03\x04"), f"{name} is a zip (torch.save format)"
        if name.endswith(".json"):
            json.loads(data)
    with safe_open(os.path.join(saved.uri, pkg.WEIGHTS), framework="numpy") as f:
        assert set(f.keys()) == set(build_model(SPEC).state_dict())

    def refuse(*args, **kwargs):
        raise AssertionError("load_package must not unpickle")

    for target, attr in [(pickle, "loads"), (pickle, "load"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(target, attr, refuse)
    assert len(pkg.load_package(saved.uri).predict(batch)["label"]) == batch.num_rows


def test_weights_that_do_not_fit_the_spec_are_refused(tmp_path, model):
    info = _save(tmp_path / "p", model, model_spec={**SPEC, "hidden_sizes": [16]})
    with pytest.raises(PackageError, match="cannot rebuild the model"):
        pkg.load_package(info.uri)
