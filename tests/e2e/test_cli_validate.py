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


def test_schema_diff_accept_show_and_their_exit_codes(cli, tmp_path):
    land, changed = str(tmp_path / "landing"), str(tmp_path / "changed")
    assert cli("data", "generate", "--out", land, "--rows", "2000", "--days", "1", "--seed", "1").returncode == 0
    cli("data", "generate", "--out", changed, "--rows", "2000", "--days", "1", "--seed", "2",
        "--schema-change", "new_category", "--schema-change", "add_column")
    versions = tmp_path / "store" / "schemas" / "churn"
    assert cli("validate", "configs/churn.yaml", "--data", land).returncode == 0
    stop = cli("validate", "configs/churn.yaml", "--data", changed)
    assert stop.returncode == 3, stop.stderr
    report = next(ln for ln in stop.stdout.splitlines() if ln.startswith("report:")).split(":", 1)[1].strip()

    # Bad input: exit 2, a message naming the problem, and no new version.
    missing = cli("schema", "accept", "configs/churn.yaml", "--from-report", str(tmp_path / "no-report.json"))
    assert missing.returncode == 2 and "no-report.json does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    neither = cli("schema", "accept", "configs/churn.yaml")
    assert neither.returncode == 2 and "--from-report" in neither.stderr
    assert sorted(p.name for p in versions.glob("v*.yaml")) == ["v1.yaml"]

    proposal = tmp_path / "next.yaml"
    diff = cli("schema", "diff", "configs/churn.yaml", "--from-report", report, "--out", str(proposal))
    assert diff.returncode == 0, diff.stderr
    assert diff.stdout.startswith("--- v1.yaml\n+++ v2.yaml\n") and "+  - enterprise\n" in diff.stdout
    assert "discount_pct: new column" in diff.stderr and proposal.is_file()
    assert sorted(p.name for p in versions.glob("v*.yaml")) == ["v1.yaml"]  # diff writes no version

    # The user edits the proposal (keeps the new column as a feature) and accepts the file.
    proposal.write_text(proposal.read_text().replace("- name: discount_pct\n  role: ignored",
                                                     "- name: discount_pct\n  role: feature"))
    accepted = cli("schema", "accept", "configs/churn.yaml", "--file", str(proposal), "--from-report", report)
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.strip() == f"accepted schema v2: {versions / 'v2.yaml'}"
    assert sorted(p.name for p in versions.glob("v*.yaml")) == ["v1.yaml", "v2.yaml"]

    shown = cli("schema", "show", "configs/churn.yaml")
    assert shown.returncode == 0 and "version: 2\n" in shown.stdout and "versions kept: v1, v2" in shown.stderr
    assert "- name: discount_pct\n  role: feature" in shown.stdout
    assert "version: 1\n" in cli("schema", "show", "configs/churn.yaml", "--version", "1").stdout
    unknown = cli("schema", "show", "configs/churn.yaml", "--version", "7")
    assert unknown.returncode == 2 and "versions: v1, v2" in unknown.stderr
    history = cli("schema", "diff", "configs/churn.yaml")
    assert history.returncode == 0 and history.stdout.startswith("--- v1.yaml\n+++ v2.yaml\n")

    again = cli("validate", "configs/churn.yaml", "--data", changed)
    assert again.returncode == 0, again.stderr
    assert _report(again.stdout)["schema_version"] == 2
