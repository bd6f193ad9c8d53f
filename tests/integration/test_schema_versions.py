"""Schema versions and drift references on real files and the real MLflow registry (SQLite).

- a dataset this project did not design (scikit-learn's wine) with one feature scaled ×1.5 and shifted: DRIFT with
  the out-of-range share, not STOP, and the KS statistic agrees with scipy; an enforced range does STOP;
- a report's anomalies become the next schema version (kept beside the old one), after which the same data passes;
- with a champion, drift is measured against the statistics recorded with it, and a version that would drop one of
  its features is refused without writing anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import ks_2samp

from raymlops.config import load_config
from raymlops.core.sketches import profile_table
from raymlops.data.schemas import (
    accept_schema,
    latest_schema_version,
    load_report,
    plan_from_file,
    propose_from_report,
    schema_versions,
)
from raymlops.data.synthetic import DriftSpec, generate
from raymlops.data.validate import profile_columns, validate_data
from raymlops.errors import SchemaError
from raymlops.registry.models import ModelRegistry
from tests.data_helpers import build_package

SHIFTED = "color_intensity"


def _quiet(_message: str) -> None:
    pass


# --------------------------------------------------------------------------------------------- wine
@pytest.fixture(scope="module")
def wine(tmp_path_factory):
    """The wine data as parquet, and a copy with one feature scaled ×1.5 about its mean and shifted by +1."""
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame
    root = tmp_path_factory.mktemp("wine")
    (root / "reference").mkdir()
    (root / "shifted").mkdir()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), root / "reference" / "wine.parquet")
    moved = frame.copy()
    x = moved[SHIFTED]
    moved[SHIFTED] = (x - x.mean()) * 1.5 + x.mean() + 1.0
    pq.write_table(pa.Table.from_pandas(moved, preserve_index=False), root / "shifted" / "wine.parquet")
    return root, frame[SHIFTED].to_numpy(), moved[SHIFTED].to_numpy()


def _wine_cfg(root: Path, store: Path, *overrides: str):
    return load_config(None, [
        "name=wine", f"storage_uri={store}", f"tracking_uri=sqlite:///{store}/mlflow.db",
        f"data.source={root / 'reference'}", "data.format=parquet", "data.label=target", "data.task=multiclass",
        "data.timestamp=null", "data.id_columns=[]", "data.slices=[]",
        "validation.drift.numeric={metric: ks, threshold: 0.1}", *overrides,
    ])


def test_wine_shift_is_drift_not_stop_and_ks_agrees_with_scipy(wine, tmp_path):
    root, before, after = wine
    cfg = _wine_cfg(root, tmp_path / "store")
    first = validate_data(cfg, progress=_quiet)
    assert first.frozen_now and first.decision == "OK"
    recorded = first.schema.column(SHIFTED)
    assert not recorded.enforce_range and after.max() > recorded.max  # the shift leaves the inferred range

    shifted = validate_data(cfg, data_uri=str(root / "shifted"), progress=_quiet)
    report = shifted.report
    assert report.decision == "DRIFT" and report.anomalies == []
    (outside,) = report.value_anomalies
    exact = 100.0 * np.mean((after < recorded.min) | (after > recorded.max))
    assert outside.feature == SHIFTED and outside.observed["pct"] == pytest.approx(exact, abs=1e-4)  # exact
    assert [d.feature for d in report.drifted] == [SHIFTED]  # no other feature fires: they are unchanged
    ks = next(d for d in report.drift if d.feature == SHIFTED)
    # The KS statistic is read from mergeable sketches: within two rows' worth of the exact two-sample value.
    assert ks.value == pytest.approx(ks_2samp(before, after).statistic, abs=2 / len(before))
    assert report.reference is not None and report.reference.kind == "frozen" and report.reference.version == 1
    doc = json.loads(Path(shifted.report_uri).read_text())
    assert doc["reference"].startswith("frozen schema v1 (") and doc["value_anomalies"][0]["feature"] == SHIFTED
    assert "frozen schema v1" in Path(shifted.html_uri).read_text()

    # The same shift under an enforced range is schema skew.
    enforced = _wine_cfg(root, tmp_path / "store", f"validation.enforce_ranges=[{SHIFTED}]")
    stop = validate_data(enforced, data_uri=str(root / "shifted"), progress=_quiet).report
    assert stop.decision == "STOP" and [(a.feature, a.kind) for a in stop.anomalies] == [(SHIFTED, "out_of_range")]

    # Accepting the report records the new range; the shifted data is then in range and, against the new
    # version's reference (its own profile), shows no drift.
    accepted = accept_schema(cfg, propose_from_report(cfg, shifted.report_uri))
    assert accepted.version == 2 and latest_schema_version(cfg) == 2
    assert accepted.reference_uri == str(tmp_path / "store" / "schemas" / "wine" / "v2.reference.json")
    again = validate_data(cfg, data_uri=str(root / "shifted"), progress=_quiet).report
    assert again.decision == "OK" and again.value_anomalies == [] and again.schema_version == 2


# --------------------------------------------------------------------------------------------- churn
@pytest.fixture
def churn(tmp_path, tracking_uri):
    """Synthetic churn data: accepted days, a day with a new plan and column, a day with a renamed column."""
    generate(str(tmp_path / "landing"), rows_per_day=1500, days=2, seed=1)
    generate(str(tmp_path / "newcat"), rows_per_day=1500, days=1, seed=2, start_date="2026-02-01",
             schema_change=["new_category", "add_column"])
    generate(str(tmp_path / "renamed"), rows_per_day=1500, days=1, seed=3, start_date="2026-02-02",
             schema_change=["rename_column"])
    cfg = load_config(None, [f"storage_uri={tmp_path / 'store'}", f"tracking_uri={tracking_uri}",
                             f"data.source={tmp_path / 'landing'}"])
    assert validate_data(cfg, progress=_quiet).frozen_now
    return cfg, tmp_path


def test_report_anomalies_become_the_next_version_and_every_version_is_kept(churn):
    cfg, root = churn
    stop = validate_data(cfg, data_uri=str(root / "newcat"), progress=_quiet)
    assert stop.decision == "STOP"
    assert {(a.feature, a.kind) for a in stop.report.anomalies} == {
        ("discount_pct", "unexpected_column"), ("plan", "unseen_categories")}
    v1_text = Path(schema_versions(cfg)[1]).read_text()

    plan = propose_from_report(cfg, str(Path(stop.report_uri).parent))  # the report's directory works too
    assert {(c.column, c.change) for c in plan.proposal.changes} >= {("discount_pct", "added"), ("plan", "domain")}
    accepted = accept_schema(cfg, plan)
    assert accepted.version == 2 and sorted(schema_versions(cfg)) == [1, 2]
    assert Path(schema_versions(cfg)[1]).read_text() == v1_text  # earlier versions stay as they were
    assert "enterprise" in plan.schema.column("plan").domain and plan.schema.column("discount_pct").role == "ignored"

    ok = validate_data(cfg, data_uri=str(root / "newcat"), progress=_quiet)
    assert ok.report.anomalies == [] and ok.report.schema_version == 2

    # Accepting the same report again would change nothing: refused, nothing written.
    with pytest.raises(SchemaError, match="nothing to accept"):
        accept_schema(cfg, propose_from_report(cfg, stop.report_uri))
    assert sorted(schema_versions(cfg)) == [1, 2]


def test_bad_accepts_change_nothing(churn):
    cfg, root = churn
    with pytest.raises(SchemaError, match="does not exist") as err:
        propose_from_report(cfg, str(root / "no-such-report.json"))
    assert err.value.exit_code == 2
    with pytest.raises(SchemaError, match="does not exist"):
        plan_from_file(cfg, str(root / "edited.yaml"))
    stop = validate_data(cfg, data_uri=str(root / "newcat"), progress=_quiet)
    pinned = cfg.model_copy(update={"validation": cfg.validation.model_copy(
        update={"schema_uri": schema_versions(cfg)[1]})})
    with pytest.raises(SchemaError, match="validation.schema_uri pins"):
        accept_schema(pinned, propose_from_report(pinned, stop.report_uri))
    # An edited file of another pipeline is refused too.
    other = Path(schema_versions(cfg)[1]).read_text().replace("name: churn", "name: other", 1)
    (root / "edited.yaml").write_text(other)
    with pytest.raises(SchemaError, match="name/task"):
        plan_from_file(cfg, str(root / "edited.yaml"))
    assert sorted(schema_versions(cfg)) == [1]


def _register_champion(cfg, root: Path, reference: Path) -> int:
    pkg = build_package(cfg, root / "package")
    reg = ModelRegistry(cfg.tracking_uri)
    info = reg.register(cfg.name, pkg.uri, run_id=None, digest=pkg.digest, tags={"reference_uri": str(reference)})
    reg.promote(cfg.name, info.version)
    return info.version


def test_drift_is_measured_against_the_champion_and_its_features_cannot_be_dropped(churn):
    cfg, root = churn
    # The champion was trained on data where monthly charges were much higher than in the accepted landing data.
    generate(str(root / "champion-data"), rows_per_day=1500, days=1, seed=4,
             drift=DriftSpec(features={"monthly_charges": (40.0, 1.0)}))
    categorical, skip = profile_columns(cfg)
    table = pq.read_table(next((root / "champion-data").glob("*.parquet")))
    reference = root / "champion-reference.json"
    reference.write_text(json.dumps(profile_table(table, categorical=categorical, skip=skip).to_dict()))

    frozen_only = validate_data(cfg, progress=_quiet).report
    assert frozen_only.decision == "OK" and frozen_only.reference.kind == "frozen"

    version = _register_champion(cfg, root, reference)
    against_champion = validate_data(cfg, progress=_quiet)
    report = against_champion.report
    assert report.reference.kind == "champion" and report.reference.version == version
    assert report.reference.uri == str(reference)
    assert "monthly_charges" in [d.feature for d in report.drifted] and report.decision == "DRIFT"
    doc, _ = load_report(against_champion.report_uri)
    assert doc.reference == report.reference
    assert f"champion v{version}" in Path(against_champion.html_uri).read_text()

    # A renamed column: the proposal would drop 'support_calls', which the champion needs.
    stop = validate_data(cfg, data_uri=str(root / "renamed"), progress=_quiet)
    assert ("support_calls", "missing_column") in {(a.feature, a.kind) for a in stop.report.anomalies}
    with pytest.raises(SchemaError, match=r"drop features \['support_calls'\] that the champion \(model v1\)") as err:
        propose_from_report(cfg, stop.report_uri)
    assert err.value.exit_code == 2
    assert sorted(schema_versions(cfg)) == [1]  # nothing written


# --------------------------------------------------------------------------------------------- CT lineage
@pytest.mark.slow
def test_a_ct_run_records_its_schema_version_and_reference_and_a_champion_becomes_the_reference(
        ray_session, tmp_path, tracking_uri):
    from raymlops.ct import run_ct_pipeline
    from raymlops.data.schemas import read_profile
    from raymlops.data.validate import validation_params

    generate(str(tmp_path / "landing"), rows_per_day=1500, days=2, seed=3)
    cfg = load_config(None, [
        f"storage_uri={tmp_path / 'store'}", f"tracking_uri={tracking_uri}", f"data.source={tmp_path / 'landing'}",
        "train.epochs=3", "train.learning_rate=0.01", "train.batch_size=128", "evaluation.min_primary=0.55",
    ])
    first = validation_params(cfg)  # what the run will freeze: the same values once frozen, so reruns are cached
    result = run_ct_pipeline(cfg, progress=_quiet)
    assert result.status == "completed", result.error
    out = result.pipeline.outputs
    assert out["validate.schema"].metadata["version"] == 1
    assert result.pipeline.steps["validate"].status == "completed"

    reg = ModelRegistry(cfg.tracking_uri)
    info = reg.get(cfg.name, result.version)
    assert info.tags["schema_version"] == "1" and info.tags["schema_uri"] == out["validate.schema"].uri
    reference = read_profile(info.tags["reference_uri"])
    assert info.tags["reference_uri"] == out["prepare.reference"].uri
    assert reference.rows == out["prepare.prepared"].metadata["rows"]["train"]  # the training split's statistics
    assert {"monthly_charges", "plan", "churned"} <= set(reference.features)

    assert validation_params(cfg) == first == {
        "schema_version": "v1", "reference": f"frozen schema v1 ({tmp_path}/store/schemas/churn/v1.reference.json)"}
    reg.promote(cfg.name, info.version)
    after = validation_params(cfg)  # a new champion: the same data is a new validation, not a cache hit
    assert after["reference"] == f"champion v{info.version} ({info.tags['reference_uri']})"
    report = validate_data(cfg, progress=_quiet).report
    assert (report.reference.kind, report.reference.version) == ("champion", info.version)
    assert report.reference_rows == reference.rows
