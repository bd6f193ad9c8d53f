"""Feature engineering: imputation, standardisation, vocabularies, labels, JSON round trip, input shapes."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from raymlops.core.schema import infer_schema
from raymlops.core.sketches import profile_table
from raymlops.core.transform import (
    CategoricalColumn,
    NumericColumn,
    Transform,
    apply_transform,
    fit_transform,
)
from raymlops.errors import DataError, SchemaError

F32_MAX = np.finfo(np.float32).max


def fit(table: pa.Table, task: str = "binary", label: str = "y", categorical: set[str] | None = None, **kw):
    cats = set(categorical or ()) | ({label} if task != "regression" else set())
    profile = profile_table(table, categorical=cats)
    schema = infer_schema(profile, name="t", task=task, label=label, timestamp=None, categorical=cats)
    return fit_transform(profile, schema, **kw)


def train_table() -> pa.Table:
    return pa.table({
        "age": [20.0, 30.0, None, 50.0, 40.0],
        "calls": pa.array([1, 2, 3, None, 4], pa.int64()),
        "plan": ["basic", "premium", "basic", None, "standard"],
        "flag": [True, False, True, True, None],
        "y": pa.array([0, 1, 0, 1, 1], pa.int64()),
    })


# -------------------------------------------------------------------------------------------------- numeric
@pytest.mark.parametrize(("impute", "expected"), [("mean", 35.0), ("median", 35.0), ("zero", 0.0)])
def test_numeric_nulls_take_the_fitted_impute_value(impute, expected):
    t = fit(train_table(), numeric_impute=impute, standardize=False)
    age = next(c for c in t.numeric if c.name == "age")
    assert age.impute == pytest.approx(expected, rel=0.02)  # the median comes from a 1%-accurate sketch
    x = apply_transform(t, {"age": [None, float("nan"), float("inf"), 7], "calls": [1, 1, 1, 1],
                            "plan": ["basic"] * 4, "flag": [True] * 4})["x_num"]
    j = [c.name for c in t.numeric].index("age")
    assert x[:, j].tolist() == pytest.approx([age.impute, age.impute, age.impute, 7.0])


def test_standardisation_centres_and_scales_the_training_data():
    rng = np.random.default_rng(0)
    table = pa.table({"a": rng.normal(50, 10, 5000), "b": rng.exponential(3, 5000), "y": rng.integers(0, 2, 5000)})
    out = apply_transform(fit(table), table)["x_num"]
    assert out.dtype == np.float32 and out.shape == (5000, 2)
    assert np.allclose(out.mean(axis=0), 0, atol=1e-4) and np.allclose(out.std(axis=0), 1, atol=1e-4)


def test_extreme_and_constant_columns_give_finite_outputs():
    table = pa.table({
        "huge": [1e300, -1e300, 5e299, None],
        "tiny": [1e-300, 2e-300, 3e-300, 4e-300],
        "const": [7.0, 7.0, 7.0, 7.0],
        "empty": pa.array([None] * 4, pa.float64()),
        "y": [0, 1, 0, 1],
    })
    t = fit(table)
    const = next(c for c in t.numeric if c.name == "const")
    assert (const.mean, const.std) == (7.0, 1.0)
    huge = next(c for c in t.numeric if c.name == "huge")
    assert 1e299 < huge.std < 1e301  # the variance overflows; the interquartile range gives the scale
    batch = {"huge": [1.7e308, -1.7e308, None, 0.0], "tiny": [1e308, -1e-320, 0.0, None],
             "const": [7.0, 1e308, None, -1e308], "empty": [1.0, None, 2.0, 3.0]}
    out = apply_transform(t, batch)["x_num"]
    assert np.isfinite(out).all() and np.abs(out).max() <= F32_MAX
    assert out[0, [c.name for c in t.numeric].index("const")] == 0.0
    assert all(np.isfinite([c.impute, c.mean, c.std]).all() and c.std > 0 for c in t.numeric)


def test_numeric_accepts_ints_floats_bools_and_nulls_from_any_container():
    t = Transform([NumericColumn("x", impute=-1.0)], [], "y", "binary", [0, 1])
    expected = np.array([[3.0], [2.5], [-1.0], [1.0]], dtype=np.float32)
    for batch in ({"x": [3, 2.5, None, True]}, {"x": np.array([3, 2.5, np.nan, 1.0])},
                  {"x": np.array([3, 2.5, None, 1], dtype=object)}, pa.table({"x": [3, 2.5, None, 1]})):
        assert np.array_equal(apply_transform(t, batch)["x_num"], expected)


# ---------------------------------------------------------------------------------------------- categorical
def test_vocabulary_is_sorted_by_frequency_then_name_and_capped():
    table = pa.table({"c": ["b", "a", "c", "c", "a", "d", "c", None], "y": [0] * 8})
    assert fit(table).categorical[0].vocab == ["c", "a", "b", "d"]
    assert fit(table, max_categories=2).categorical[0].vocab == ["c", "a"]
    assert fit(table, min_category_count=2).categorical[0].vocab == ["c", "a"]


def test_unseen_and_null_categories_go_to_index_zero():
    t = fit(train_table())
    plan = [c.name for c in t.categorical].index("plan")
    vocab = t.categorical[plan].vocab
    out = apply_transform(t, {"age": [1.0] * 4, "calls": [1] * 4, "flag": [True] * 4,
                              "plan": ["basic", "enterprise", None, "standard"]})["x_cat"][:, plan]
    assert out.tolist() == [vocab.index("basic") + 1, 0, 0, vocab.index("standard") + 1]
    assert t.cardinalities == [len(c.vocab) + 1 for c in t.categorical]


def test_bool_and_int_categories_match_however_they_arrive():
    table = pa.table({"flag": [True, False, True], "zone": pa.array([3, 12, 3], pa.int64()), "y": [0, 1, 0]})
    t = fit(table, categorical={"zone"})
    assert sorted(t.categorical[0].vocab + t.categorical[1].vocab) == ["12", "3", "false", "true"]
    from_table = apply_transform(t, table)["x_cat"]
    rows = json.loads(json.dumps([{"flag": True, "zone": 3}, {"flag": False, "zone": 12}, {"flag": True, "zone": 3}]))
    from_json = apply_transform(t, {k: [r[k] for r in rows] for k in ("flag", "zone")})["x_cat"]
    from_numpy = apply_transform(t, {"flag": np.array([True, False, True]), "zone": np.array([3.0, 12.0, 3.0])})
    assert np.array_equal(from_table, from_json) and np.array_equal(from_table, from_numpy["x_cat"])
    assert (from_table > 0).all()


def test_mixed_or_wrong_types_raise_data_error_naming_the_column():
    t = fit(train_table())
    good = {"age": [1.0, 2.0], "calls": [1, 2], "plan": ["basic", "basic"], "flag": [True, False]}
    with pytest.raises(DataError, match="'plan'"):
        apply_transform(t, {**good, "plan": ["basic", 3]})
    with pytest.raises(DataError, match="'age'"):
        apply_transform(t, {**good, "age": ["old", "young"]})
    with pytest.raises(DataError, match="'calls' is missing"):
        apply_transform(t, {k: v for k, v in good.items() if k != "calls"})
    with pytest.raises(DataError, match="different lengths"):
        apply_transform(t, {**good, "age": [1.0]})


# ---------------------------------------------------------------------------------------------------- labels
def test_binary_labels_from_ints_bools_and_two_strings():
    ints = fit(pa.table({"x": [1.0, 2.0, 3.0], "y": [0, 1, 1]}))
    assert ints.classes == [0, 1]
    assert apply_transform(ints, {"x": [1, 2], "y": [1, 0]})["y"].tolist() == [1, 0]
    assert apply_transform(ints, {"x": [1, 2], "y": [True, False]})["y"].tolist() == [1, 0]
    bools = fit(pa.table({"x": [1.0, 2.0], "y": [True, True]}))
    assert bools.classes == [False, True]
    assert apply_transform(bools, {"x": [1, 2], "y": [True, False]})["y"].dtype == np.float32
    words = fit(pa.table({"x": [1.0, 2.0, 3.0], "y": ["stay", "leave", "stay"]}))
    assert words.classes == ["leave", "stay"]
    assert apply_transform(words, {"x": [1, 2], "y": ["stay", "leave"]})["y"].tolist() == [1.0, 0.0]


def test_multiclass_and_regression_labels():
    mc = fit(pa.table({"x": [1.0, 2.0, 3.0, 4.0], "y": ["b", "c", "a", "b"]}), task="multiclass")
    y = apply_transform(mc, {"x": [1, 2, 3], "y": ["a", "c", "b"]})["y"]
    assert mc.classes == ["a", "b", "c"] and y.dtype == np.int64 and y.tolist() == [0, 2, 1]
    reg = fit(pa.table({"x": [1.0, 2.0], "y": [0.5, 1.5]}), task="regression")
    assert reg.classes == []
    assert apply_transform(reg, {"x": [1.0], "y": [2.25]})["y"].tolist() == [2.25]


def test_bad_labels_raise_with_the_label_named():
    t = fit(pa.table({"x": [1.0, 2.0], "y": ["no", "yes"]}))
    with pytest.raises(DataError, match="label 'y'.*'maybe'"):
        apply_transform(t, {"x": [1.0, 2.0], "y": ["yes", "maybe"]})
    with pytest.raises(DataError, match="label 'y'"):
        apply_transform(t, {"x": [1.0], "y": [None]})
    with pytest.raises(DataError, match="label column 'y' is missing"):
        apply_transform(t, {"x": [1.0]}, with_label=True)
    assert "y" not in apply_transform(t, {"x": [1.0], "y": ["yes"]}, with_label=False)
    reg = fit(pa.table({"x": [1.0, 2.0], "y": [0.5, 1.5]}), task="regression")
    with pytest.raises(DataError, match="label 'y'.*non-finite"):
        apply_transform(reg, {"x": [1.0], "y": [float("nan")]})


def test_unusable_label_classes_raise_schema_error():
    with pytest.raises(SchemaError, match="exactly two classes"):
        fit(pa.table({"x": [1.0, 2.0, 3.0], "y": ["a", "b", "c"]}))
    with pytest.raises(SchemaError, match="at least two classes"):
        fit(pa.table({"x": [1.0, 2.0], "y": ["a", "a"]}), task="multiclass")


# ------------------------------------------------------------------------------------------ fit from profiles
def test_fit_accepts_any_profile_following_the_contract():
    numeric = SimpleNamespace(count=4, mean=2.0, std=0.5, quantile=lambda q: 1.5)
    profile = SimpleNamespace(rows=4, features={
        "n": SimpleNamespace(name="n", kind="numeric", dtype="double", sketch=numeric),
        "c": SimpleNamespace(name="c", kind="categorical", dtype="string",
                             sketch=SimpleNamespace(counts={"x": 3, "y": 1})),
        "label": SimpleNamespace(name="label", kind="categorical", dtype="int64",
                                 sketch=SimpleNamespace(counts={"0": 2, "1": 2})),
    })
    schema = SimpleNamespace(label="label", task="binary", numeric_features=["n"], categorical_features=["c"])
    t = fit_transform(profile, schema)
    assert t == Transform([NumericColumn("n", 1.5, 2.0, 0.5)], [CategoricalColumn("c", ["x", "y"])],
                          "label", "binary", [0, 1])


def test_schema_and_profile_disagreeing_raise_schema_error():
    profile = profile_table(pa.table({"a": ["x", "y"], "y": [0, 1]}), categorical={"y"})
    schema = SimpleNamespace(label="y", task="binary", numeric_features=["a"], categorical_features=[])
    with pytest.raises(SchemaError, match="'a' is categorical"):
        fit_transform(profile, schema)
    schema = SimpleNamespace(label="y", task="binary", numeric_features=["missing"], categorical_features=[])
    with pytest.raises(SchemaError, match="'missing'"):
        fit_transform(profile, schema)


# ------------------------------------------------------------------------------------------------------ json
def test_json_round_trip_is_exact():
    t = Transform(
        [NumericColumn("a", 0.1 + 0.2, 1 / 3, 2.0**-1074), NumericColumn("b", -0.0, 1e308, 5e-324)],
        [CategoricalColumn("c", ["é", "", "1", "true"])], "y", "multiclass", ["a", "b", "c"],
    )
    back = Transform.from_json(t.to_json())
    assert back == t and back.to_json() == t.to_json()
    real = fit(train_table())
    assert Transform.from_json(real.to_json()) == real
    batch = {"age": [3.3, None], "calls": [1, 9], "plan": ["basic", "x"], "flag": [False, None], "y": [0, 1]}
    a, b = apply_transform(real, batch), apply_transform(Transform.from_json(real.to_json()), batch)
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("text", ["{", "[]", '{"format": 1}', '{"format": 99, "numeric": []}',
                                  json.dumps({"format": 1, "numeric": [], "categorical": [], "label": "y",
                                              "task": "ranking", "classes": []})])
def test_from_json_refuses_what_is_not_a_transform(text):
    with pytest.raises(DataError, match="not a valid transform"):
        Transform.from_json(text)


def test_empty_batch_keeps_the_shapes():
    t = fit(train_table())
    out = apply_transform(t, train_table().slice(0, 0))
    assert out["x_num"].shape == (0, 2) and out["x_cat"].shape == (0, 2) and out["y"].shape == (0,)
