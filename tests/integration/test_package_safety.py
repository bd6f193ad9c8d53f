"""The fresh-process check (a real child Python, as a new replica meets a package): it never runs code the
package names, it is given the digest and the loading policy, and it gets a scrubbed environment. No Ray needed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from raymlops.core.package_trust import KEY_ENV, PackagePolicy
from raymlops.evaluation.infra_check import check_package_in_fresh_process
from raymlops.model import package as pkg
from raymlops.model.nets import build_model
from tests.data_helpers import TINY_SPEC as SPEC
from tests.data_helpers import TINY_TRANSFORM as TRANSFORM

ROWS = [{"tenure_months": 3, "monthly_charges": 20.0, "plan": "basic"},
        {"tenure_months": 40, "monthly_charges": 80.0, "plan": "premium"}]


@pytest.fixture(autouse=True)
def _no_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv("RAYMLOPS_SIGNING_KEY_FILE", raising=False)


def _save(path: Path, spec: dict, model: torch.nn.Module) -> pkg.PackageInfo:
    return pkg.save_package(str(path), state_dict={k: v.detach().numpy() for k, v in model.state_dict().items()},
                            model_spec=spec, transform_json=TRANSFORM.to_json(), schema_yaml="name: churn\n",
                            signature={}, metrics={}, tags={})


def test_the_fresh_process_refuses_a_package_that_names_a_stdlib_callable(tmp_path):
    torch.manual_seed(0)
    info = _save(tmp_path / "pkg", SPEC, build_model(SPEC))
    marker = tmp_path / "pwned"
    data = json.dumps({"model": "subprocess:getoutput", "cmd": f"touch {marker}"}).encode()
    (tmp_path / "pkg" / "model_spec.json").write_bytes(data)
    manifest = json.loads((tmp_path / "pkg" / pkg.MANIFEST).read_text())
    manifest["files"]["model_spec.json"]["sha256"] = hashlib.sha256(data).hexdigest()
    manifest["digest"] = pkg.package_digest({n: e["sha256"] for n, e in manifest["files"].items()})
    (tmp_path / "pkg" / pkg.MANIFEST).write_text(json.dumps(manifest))

    # The registry's digest edited too (the attacker can write there): the allow-list alone stops it. One child
    # process only (it imports torch): the digest and the allow-list in process are unit-tested.
    report = check_package_in_fresh_process(info.uri, ROWS, 2, expected_digest=manifest["digest"])
    assert not report["loaded"] and "model.allowed_factories" in report["error"]
    assert not marker.exists()


ENV_LOADER = '''
import json, os

class _Model:
    def predict(self, table):
        import numpy as np
        return {"value": np.zeros(table.num_rows)}

def load(uri, expected_digest, policy=None):
    with open(os.path.join(uri, "env.json"), "w") as f:
        json.dump({"env": sorted(os.environ), "digest": expected_digest, "policy": policy.to_dict()}, f)
    return _Model()
'''


def test_the_fresh_process_sees_only_the_scrubbed_environment_and_gets_the_digest(tmp_path, monkeypatch):
    (tmp_path / "env_loader.py").write_text(ENV_LOADER)
    (tmp_path / "pkg").mkdir()
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", "postgres://user:pw@db/x")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "secret-token")
    monkeypatch.setenv(KEY_ENV, "k" * 40)

    report = check_package_in_fresh_process(str(tmp_path / "pkg"), ROWS, 2, expected_digest="d" * 64,
                                            policy=PackagePolicy(("a.b:c",), True), loader="env_loader:load")
    assert report["loaded"] and report["predict_ok"], report["error"]
    seen = json.loads((tmp_path / "pkg" / "env.json").read_text())
    assert "DATABASE_URL" not in seen["env"] and "MLFLOW_TRACKING_TOKEN" not in seen["env"]
    assert {KEY_ENV, "PYTHONPATH", "PATH"} <= set(seen["env"])
    assert seen["digest"] == "d" * 64 and seen["policy"] == {"allowed_factories": ["a.b:c"], "require_signature": True}
