"""`raymlops gc` against a real MLflow registry: a run a registered version references survives retention."""

from __future__ import annotations

import json
import time

import yaml

from raymlops.cli import main
from raymlops.registry.models import ModelRegistry


def _run(store, run_id: str, age_days: float) -> None:
    d = store / "runs" / run_id
    (d / "evaluate" / "package").mkdir(parents=True)
    (d / "evaluate" / "package" / "manifest.json").write_text("{}")
    created = time.time() - age_days * 86_400
    (d / "run.json").write_text(json.dumps({"run_id": run_id, "pipeline": "churn", "status": "completed",
                                            "created_at": created, "updated_at": created, "steps": {}}))


def test_gc_keeps_the_registered_versions_run_and_deletes_the_rest(tmp_path, tracking_uri, capsys):
    store = tmp_path / "store"
    for run_id, age in (("churn-registered", 90), ("churn-orphan", 60), ("churn-recent", 0.1)):
        _run(store, run_id, age)
    ModelRegistry(tracking_uri, registry_uri=tracking_uri).register(
        "churn", str(store / "runs" / "churn-registered" / "evaluate" / "package"), run_id=None, digest="sha256:x",
        tags={"pipeline_run_id": "churn-registered"})
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"name": "churn", "storage_uri": str(store), "tracking_uri": tracking_uri,
                                      "retention": {"runs_keep": 5, "runs_days": 30}}))

    assert main(["gc", str(config), "--dry-run"]) == 0
    assert "would delete run churn-orphan" in capsys.readouterr().out
    assert (store / "runs" / "churn-orphan").exists()

    assert main(["gc", str(config), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["deleted_runs"] == ["churn-orphan"] and report["kept_runs"] == ["churn-registered"]
    assert sorted(p.name for p in (store / "runs").iterdir()) == ["churn-recent", "churn-registered"]
