"""Synthetic churn generator: determinism, schema, and that every knob has its effect (no Ray)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from raymlops.data.synthetic import (
    DriftSpec,
    generate,
    make_day,
    parse_category_mix_option,
    parse_drift_option,
    parse_null_pct,
)
from raymlops.errors import ConfigError

EXPECTED_SCHEMA = pa.schema([
    ("customer_id", pa.string()), ("event_ts", pa.timestamp("us", tz="UTC")), ("region", pa.string()),
    ("plan", pa.string()), ("payment_method", pa.string()), ("tenure_months", pa.int64()),
    ("monthly_charges", pa.float64()), ("total_charges", pa.float64()), ("support_calls", pa.int64()),
    ("usage_gb", pa.float64()), ("churned", pa.int64()),
])


def _auc(score: np.ndarray, y: np.ndarray) -> float:
    ranks = np.argsort(np.argsort(score)) + 1.0
    pos = y == 1
    return (ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum())


def _design(t: pa.Table) -> np.ndarray:
    cols = [np.ones(t.num_rows)]
    for name in ("tenure_months", "monthly_charges", "support_calls", "usage_gb"):
        x = t[name].to_numpy().astype(float)
        cols.append((x - x.mean()) / x.std())
    for name in ("region", "plan", "payment_method"):
        values = np.asarray(t[name].to_pylist(), dtype=object)
        cols += [(values == c).astype(float) for c in sorted(set(values))[1:]]
    return np.column_stack(cols)


def _logistic_fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    w = np.zeros(x.shape[1])
    for _ in range(12):  # Newton steps
        p = 1 / (1 + np.exp(-x @ w))
        w += np.linalg.solve(x.T @ (x * (p * (1 - p))[:, None]) + 1e-6 * np.eye(x.shape[1]), x.T @ (y - p))
    return w


def test_files_and_schema_follow_the_contract(tmp_path):
    result = generate(str(tmp_path), rows_per_day=100, days=3, start_date="2026-01-30")
    names = ["churn-2026-01-30.parquet", "churn-2026-01-31.parquet", "churn-2026-02-01.parquet"]
    assert result.files == [str(tmp_path / n) for n in names]
    assert result.rows == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # no temporary files left behind
    table = pq.read_table(tmp_path / names[1])
    assert table.schema.equals(EXPECTED_SCHEMA)
    assert table.num_rows == 100
    assert len(table["customer_id"].unique()) == 100
    ts = table["event_ts"].to_pylist()
    assert ts == sorted(ts) and all(t.date().isoformat() == "2026-01-31" for t in ts)
    assert set(table["region"].to_pylist()) == {"north", "south", "east", "west"}
    assert set(table["plan"].to_pylist()) == {"basic", "standard", "premium"}
    assert set(table["payment_method"].to_pylist()) == {"card", "bank", "paypal", "cash"}
    assert set(table["churned"].to_pylist()) == {0, 1}
    assert table.column("monthly_charges").null_count == 0


def test_same_seed_gives_byte_identical_files_and_days_do_not_depend_on_the_run(tmp_path):
    a = generate(str(tmp_path / "a"), rows_per_day=500, days=3, seed=7)
    b = generate(str(tmp_path / "b"), rows_per_day=500, days=3, seed=7)
    c = generate(str(tmp_path / "c"), rows_per_day=500, days=1, seed=7, start_date="2026-01-03")
    d = generate(str(tmp_path / "d"), rows_per_day=500, days=1, seed=8)
    read = lambda p: open(p, "rb").read()  # noqa: E731
    assert [read(p) for p in a.files] == [read(p) for p in b.files]
    assert read(a.files[2]) == read(c.files[0])
    assert read(a.files[0]) != read(d.files[0])


def test_label_depends_on_the_features_so_a_model_can_learn_it():
    train, test = make_day("2026-01-01", 20_000, seed=3), make_day("2026-01-02", 20_000, seed=3)
    y = train["churned"].to_numpy()
    assert 0.15 < y.mean() < 0.40
    tenure = train["tenure_months"].to_numpy()
    assert y[tenure < 6].mean() > y[tenure > 36].mean() + 0.15
    plan = np.asarray(train["plan"].to_pylist())
    assert y[plan == "basic"].mean() > y[plan == "premium"].mean() + 0.03
    payment = np.asarray(train["payment_method"].to_pylist())
    assert y[payment == "cash"].mean() > y[payment == "bank"].mean() + 0.1
    w = _logistic_fit(_design(train), y.astype(float))
    assert 0.75 < _auc(_design(test) @ w, test["churned"].to_numpy()) < 0.9


def test_covariate_drift_moves_the_chosen_features_from_its_day_only(tmp_path):
    spec = DriftSpec(features={"monthly_charges": (20.0, 1.5)}, categories={"plan": {"premium": 0.6}}, from_day=1)
    base = generate(str(tmp_path / "base"), rows_per_day=5000, days=2, seed=1)
    drifted = generate(str(tmp_path / "drift"), rows_per_day=5000, days=2, seed=1, drift=spec)
    assert open(base.files[0], "rb").read() == open(drifted.files[0], "rb").read()
    before, after = pq.read_table(base.files[1]), pq.read_table(drifted.files[1])
    share = [np.mean(np.asarray(t["plan"].to_pylist()) == "premium") for t in (before, after)]
    assert share[1] > share[0] + 0.2
    assert after["monthly_charges"].to_numpy().mean() > before["monthly_charges"].to_numpy().mean() + 20
    assert before["tenure_months"].equals(after["tenure_months"])


def test_numeric_drift_shifts_the_mean_and_scales_the_spread():
    base = make_day("2026-01-05", 4000, seed=2)
    spec = DriftSpec(features={"usage_gb": (15.0, 1.0), "monthly_charges": (0.0, 0.5)})
    drifted = make_day("2026-01-05", 4000, seed=2, drift=spec)
    usage0, usage1 = base["usage_gb"].to_numpy(), drifted["usage_gb"].to_numpy()
    assert usage1.mean() - usage0.mean() == pytest.approx(15.0, abs=0.01)
    charges0, charges1 = base["monthly_charges"].to_numpy(), drifted["monthly_charges"].to_numpy()
    assert charges1.mean() == pytest.approx(charges0.mean(), abs=0.01)
    assert charges1.std() == pytest.approx(0.5 * charges0.std(), rel=0.01)


def test_concept_drift_changes_the_label_function_not_the_features():
    base = make_day("2026-01-03", 20_000, seed=4)
    flipped = make_day("2026-01-03", 20_000, seed=4, concept_drift=True)
    assert base.drop_columns(["churned"]).equals(flipped.drop_columns(["churned"]))
    tenure = base["tenure_months"].to_numpy()
    y0, y1 = base["churned"].to_numpy(), flipped["churned"].to_numpy()
    assert np.corrcoef(tenure, y0)[0, 1] < -0.1
    assert np.corrcoef(tenure, y1)[0, 1] > 0.1
    w = _logistic_fit(_design(base), y0.astype(float))  # a model of the old concept fails on the new one
    assert _auc(_design(flipped) @ w, y1) < 0.5


@pytest.mark.parametrize(
    ("change", "check"),
    [
        ("add_column", lambda t: "discount_pct" in t.column_names and t.schema.field("discount_pct").type == pa.float64()),
        ("remove_column", lambda t: "usage_gb" not in t.column_names),
        ("rename_column", lambda t: "n_support_calls" in t.column_names and "support_calls" not in t.column_names),
        ("change_type", lambda t: t.schema.field("tenure_months").type == pa.string()),
        ("new_category", lambda t: "enterprise" in t["plan"].to_pylist()),
    ],
)
def test_schema_changes_start_on_their_day(tmp_path, change, check):
    result = generate(str(tmp_path), rows_per_day=300, days=3, schema_change=[change], schema_change_from_day=2)
    tables = [pq.read_table(f) for f in result.files]
    assert [t.schema.equals(EXPECTED_SCHEMA) for t in tables] == [True, True, change == "new_category"]
    assert not check(tables[1])
    assert check(tables[2])


def test_nulls_appear_at_about_the_requested_rate_without_moving_values():
    base = make_day("2026-01-01", 20_000, seed=5)
    table = make_day("2026-01-01", 20_000, seed=5, null_pct=5.0)
    for name in ("region", "plan", "payment_method", "tenure_months", "monthly_charges", "total_charges",
                 "support_calls", "usage_gb"):
        assert table[name].null_count / table.num_rows == pytest.approx(0.05, abs=0.01), name
        valid = pc.is_valid(table[name])
        assert table[name].filter(valid).equals(base[name].filter(valid))
    for name in ("customer_id", "event_ts", "churned"):
        assert table[name].null_count == 0
    one = make_day("2026-01-01", 20_000, seed=5, null_pct={"usage_gb": 20.0})
    assert one["usage_gb"].null_count / one.num_rows == pytest.approx(0.2, abs=0.02)
    assert sum(one[c].null_count for c in one.column_names if c != "usage_gb") == 0


def test_corrupt_values_appear_at_about_the_requested_rate():
    table = make_day("2026-01-01", 50_000, seed=6, corrupt_pct=2.0)
    charges, total = table["monthly_charges"].to_numpy(), table["total_charges"].to_numpy()
    usage, tenure = table["usage_gb"].to_numpy(), table["tenure_months"].to_numpy()
    bad = (
        (charges < 0) | (total < 0) | ~np.isfinite(charges) | ~np.isfinite(total) | ~np.isfinite(usage)
        | (charges > 5_000) | (usage > 5_000) | (tenure > 1_000)
    )
    assert bad.mean() == pytest.approx(0.02, abs=0.003)
    assert np.isnan(usage).any() and np.isinf(charges).any() and (charges < 0).any() and (tenure > 1_000).any()
    assert not make_day("2026-01-01", 5_000, seed=6)["monthly_charges"].to_numpy().min() < 0


def test_invalid_arguments_raise_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown schema change"):
        generate(str(tmp_path), schema_change=["drop_table"])
    with pytest.raises(ConfigError, match="numeric columns"):
        generate(str(tmp_path), drift=DriftSpec(features={"plan": (1.0, 1.0)}))
    with pytest.raises(ConfigError, match="new_category"):
        generate(str(tmp_path), drift=DriftSpec(categories={"plan": {"enterprise": 0.5}}))
    with pytest.raises(ConfigError, match="unknown column 'nope'"):
        make_day("2026-01-01", 10, null_pct={"nope": 1.0})
    with pytest.raises(ConfigError, match="ISO date"):
        generate(str(tmp_path), start_date="01/02/2026")
    with pytest.raises(ConfigError, match="rows per day"):
        generate(str(tmp_path), rows_per_day=0)
    assert not any(tmp_path.iterdir())


def test_cli_option_parsers():
    assert parse_drift_option(["monthly_charges:shift=20,scale=1.5", "usage_gb:scale=2"]) == {
        "monthly_charges": (20.0, 1.5),
        "usage_gb": (0.0, 2.0),
    }
    for bad in ["monthly_charges", "monthly_charges:shift=abc", "monthly_charges:offset=2", ":shift=1"]:
        with pytest.raises(ConfigError, match=r"FEATURE:shift=NUMBER,scale=NUMBER"):
            parse_drift_option([bad])
    with pytest.raises(ConfigError, match="twice"):
        parse_drift_option(["usage_gb:shift=1", "usage_gb:shift=2"])
    assert parse_category_mix_option(["plan:premium=0.6,basic=0.2"]) == {"plan": {"premium": 0.6, "basic": 0.2}}
    assert parse_null_pct("2") == 2.0
    assert parse_null_pct("usage_gb=5, plan=1") == {"usage_gb": 5.0, "plan": 1.0}
    with pytest.raises(ConfigError, match="--null-pct"):
        parse_null_pct("lots")
