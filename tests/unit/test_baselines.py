"""The reference model's feature matrix, and the decision threshold a package carries into every prediction."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from raymlops.core.baselines import MAX_NATIVE_CATEGORIES, describe_reference, reference_matrix
from raymlops.core.transform import CategoricalColumn, NumericColumn, Transform
from raymlops.errors import DataError

TRANSFORM = Transform(
    numeric=[NumericColumn("tenure", 10.0, 12.0, 5.0), NumericColumn("flag", 0.0, 0.5, 0.5)],
    categorical=[CategoricalColumn("plan", ["basic", "premium"]), CategoricalColumn("wide", [str(i) for i in range(300)])],
    label="churned", task="binary", classes=["no", "yes"],
)


def table(**overrides):
    cols = {
        "tenure": pa.array([1, None, 30], pa.int64()),
        "flag": pa.array([True, False, None]),
        "plan": pa.array(["premium", "gold", None]),
        "wide": pa.array([7, 299, 1000]),
        "churned": pa.array(["yes", "no", "no"]),
    }
    cols.update(overrides)
    return pa.table(cols)


def test_numbers_go_in_raw_with_nulls_as_nan():
    m = reference_matrix(TRANSFORM, table())
    assert m.names == ["tenure", "flag", "plan", "wide"]
    np.testing.assert_array_equal(m.X[:, 0], [1.0, np.nan, 30.0])  # not imputed, not standardized
    np.testing.assert_array_equal(m.X[:, 1], [1.0, 0.0, np.nan])


def test_categories_are_vocabulary_codes_unknown_and_null_as_nan():
    m = reference_matrix(TRANSFORM, table())
    np.testing.assert_array_equal(m.X[:, 2], [1.0, np.nan, np.nan])  # premium; gold is out of vocabulary
    np.testing.assert_array_equal(m.X[:, 3], [7.0, 299.0, np.nan])  # integers looked up as category strings
    # a vocabulary wider than HistGradientBoosting's bins goes in as ordinal codes, not a native category
    assert len(TRANSFORM.categorical[1].vocab) > MAX_NATIVE_CATEGORIES
    assert m.categorical == [False, False, True, False]


def test_labels_are_class_indices_and_optional():
    assert reference_matrix(TRANSFORM, table()).y.tolist() == [1.0, 0.0, 0.0]
    assert reference_matrix(TRANSFORM, table().drop_columns(["churned"])).y is None
    with pytest.raises(DataError, match="outside the training classes"):
        reference_matrix(TRANSFORM, table(churned=pa.array(["yes", "maybe", "no"])))


def test_infinities_are_unknown_and_missing_or_textual_numbers_are_errors():
    m = reference_matrix(TRANSFORM, table(tenure=pa.array([np.inf, 1.0, -np.inf])))
    assert np.isnan(m.X[[0, 2], 0]).all() and m.X[1, 0] == 1.0
    with pytest.raises(DataError, match="'tenure' is missing"):
        reference_matrix(TRANSFORM, table().drop_columns(["tenure"]))
    with pytest.raises(DataError, match="'tenure'"):
        reference_matrix(TRANSFORM, table(tenure=pa.array(["a", "b", "c"])))


def test_reference_phrase():
    doc = {"model": "HistGradientBoostingClassifier", "metrics": {"roc_auc": 0.8}}
    assert describe_reference(doc, "roc_auc", 0.78) == "reference HistGradientBoostingClassifier roc_auc 0.8000 (model -0.0200)"
    assert "skipped (too big)" in describe_reference({"skipped": "too big"}, "roc_auc", 0.7)
    assert "undefined" in describe_reference({"model": "m", "metrics": {"roc_auc": math.nan}}, "roc_auc", 0.7)
    assert describe_reference(None, "roc_auc", 0.7) == ""


# ------------------------------------------------------------------------------------ package threshold
def _package(tmp_path, signature):
    from raymlops.model.nets import build_model
    from raymlops.model.package import load_package, save_package

    spec = {"model": "mlp", "n_numeric": 2, "cardinalities": [3, 301], "embedding_dim": 2, "hidden_sizes": [4],
            "dropout": 0.0, "task": "binary", "n_classes": 2}
    model = build_model(spec)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.head.bias.fill_(math.log(0.3 / 0.7))  # probability 0.3 for every row
    info = save_package(str(tmp_path / f"pkg{len(signature)}"), state_dict=model.state_dict(), model_spec=spec,
                        transform_json=TRANSFORM.to_json(), schema_yaml="name: t\n", signature=signature,
                        metrics={}, tags={})
    return load_package(info.uri)


def test_a_package_decides_at_its_own_threshold_and_old_ones_at_half(tmp_path):
    rows = table().drop_columns(["churned"])
    tuned = _package(tmp_path, {"task": "binary", "threshold": 0.25}).predict(rows)
    assert np.allclose(tuned["probability"], 0.3) and tuned["label"].tolist() == [1, 1, 1]
    old = _package(tmp_path, {"task": "binary"}).predict(rows)
    assert old["label"].tolist() == [0, 0, 0]
