"""`raymlops validate` as a user runs it: clean data freezes the schema, drift is reported, schema change stops."""

import json

import pytest

pytestmark = pytest.mark.slow


def _report(stdout: str) -> dict:
    line = next(ln for ln in stdout.splitlines() if ln.startswith("report:"))
    with open(line.split(":", 1)[1].strip()) as f:
        return json.load(f)


def test_validate_clean_drift_and_schema_change(cli, tmp_path):
    land, drifted, broken = (str(tmp_path / d) for d in ("landing", "drifted", "broken"))
    r = cli("data", "generate", "--out", land, "--rows", "3000", "--days", "2", "--seed", "1")
    assert r.returncode == 0, r.stderr
    cli("data", "generate", "--out", drifted, "--rows", "3000", "--days", "1", "--seed", "2",
        "--drift", "monthly_charges:shift=15,scale=1.0")
    cli("data", "generate", "--out", broken, "--rows", "3000", "--days", "1", "--seed", "3",
        "--schema-change", "rename_column")

    first = cli("validate", "configs/churn.yaml", "--data", land)
    assert first.returncode == 0, first.stderr
    assert "froze schema v1" in first.stderr
    assert _report(first.stdout)["decision"] == "OK"

    drift = cli("validate", "configs/churn.yaml", "--data", drifted)
    assert drift.returncode == 0, drift.stderr
    rep = _report(drift.stdout)
    assert rep["decision"] == "DRIFT"
    by_feature = {d["feature"]: d for d in rep["drift"]}
    assert by_feature["monthly_charges"]["drifted"] is True
    assert by_feature["region"]["drifted"] is False  # every feature reported, drifted or not

    stop = cli("validate", "configs/churn.yaml", "--data", broken)
    assert stop.returncode == 3, stop.stderr
    rep = _report(stop.stdout)
    assert rep["decision"] == "STOP"
    kinds = {(a["feature"], a["kind"]) for a in rep["anomalies"]}
    assert ("support_calls", "missing_column") in kinds
    assert ("n_support_calls", "unexpected_column") in kinds
    html = open(stop.stdout.split("html:")[1].strip()).read()
    assert "<svg" in html and "support_calls" in html


def test_validate_bad_inputs_exit_nonzero_with_clear_message(cli, tmp_path):
    r = cli("validate", "configs/churn.yaml", "--data", str(tmp_path / "nowhere"))
    assert r.returncode == 1
    assert "nowhere" in r.stderr and "Traceback" not in r.stderr
    r = cli("validate", "configs/churn.yaml", "--set", "train.num_workers=0")
    assert r.returncode == 2 and "train.num_workers" in r.stderr
    r = cli("validate", "no-such.yaml")
    assert r.returncode == 2 and "no-such.yaml" in r.stderr
