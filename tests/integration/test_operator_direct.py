"""Without a controller, `raymlops promote` and `rollback` move the registry's aliases directly: who did it
(``--as``, else the OS user) is kept on the version's tags (issue 13, item 13). Real MLflow registry on SQLite."""

from __future__ import annotations

import getpass

import yaml
from typer.testing import CliRunner

from raymlops.cli import app
from raymlops.control.operations import OPERATOR_TAG
from raymlops.registry.models import ModelRegistry


def _operators(reg: ModelRegistry, version: int) -> list[str]:
    tags = reg.get("churn", version).tags
    return [v for k, v in sorted(tags.items()) if k.startswith(OPERATOR_TAG + ".")]


def test_direct_promote_and_rollback_record_the_operator(tracking_uri, tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # no cluster: no controller to go through
    reg = ModelRegistry(tracking_uri)
    for n in (1, 2):
        reg.register("churn", f"/store/packages/churn/{n}", run_id=f"run-{n}", digest=f"digest-{n}", tags={})
    config = tmp_path / "churn.yaml"
    config.write_text(yaml.safe_dump({"name": "churn", "storage_uri": str(tmp_path / "store"),
                                      "tracking_uri": tracking_uri}))
    cli = CliRunner()
    for argv in (["promote", str(config), "1"], ["promote", str(config), "2", "--as", "hal"],
                 ["rollback", str(config), "--as", "ida"]):
        result = cli.invoke(app, argv)
        assert result.exit_code == 0, result.output
    assert "rolled back by ida" in result.output
    first, back = _operators(reg, 1)
    assert first.endswith(f"promote by {getpass.getuser()}") and back.endswith("rollback by ida")
    assert [t.split(" ", 1)[1] for t in _operators(reg, 2)] == ["promote by hal"]
