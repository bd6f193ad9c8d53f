"""`raymlops demo --quick` as CI runs it: the whole closed loop in a fresh process, then its records read back."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "churn.yaml")


def test_the_demo_promotes_v2_and_rolls_back_v3(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAYMLOPS_STORAGE")}
    r = subprocess.run([sys.executable, "-m", "raymlops.cli", "demo", "--quick"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    for line in ("controller: promoted: version 1 is the champion", "controller: canary_started: version 2",
                 "controller: promoted: version 2 is the champion", "controller: canary_started: version 3",
                 "controller: rolled_back: canary 3 rolled back"):
        assert line in out, f"{line!r} not in the timeline:\n{out[-4000:]}"
    # The models predict churners: every evaluate step's test line has F1 > 0 (it printed 0.0000 at threshold 0.5).
    f1s = [float(m) for m in re.findall(r"\[evaluate\] test: .*?\bf1 ([0-9.]+)", out)]
    assert len(f1s) >= 2 and all(f > 0 for f in f1s), f1s
    assert "DRIFT" in out and "beyond its inferred range" in out

    sandbox = tmp_path / ".raymlops" / "demo"  # no config given: the embedded defaults store under ./.raymlops
    state = json.loads((sandbox / "controller" / "churn" / "state.json").read_text())["state"]
    assert state["champion"] == "2" and state["previous"] == "1" and state["rollout"]["phase"] == "idle"
    kinds = [(e["kind"], e["data"].get("version")) for e in state["events"]]
    assert kinds.count(("promoted", "2")) == 1 and ("rolled_back", "3") in kinds
    rolled = next(e for e in state["events"] if e["kind"] == "rolling_back")
    assert any(c["name"] == "quality_drop" and c["verdict"] == "fail" for c in rolled["data"]["checks"])
    assert (sandbox / "reports" / "monitor" / "churn" / "latest.html").exists()

    # The records outlive the demo's Ray: events and status read them from storage.
    cli = [sys.executable, "-m", "raymlops.cli"]
    overrides = ["--set", f"storage_uri={sandbox}", "--set", f"tracking_uri=sqlite:///{sandbox / 'mlflow.db'}"]
    ev = subprocess.run([*cli, "events", CONFIG, "--json", "--limit", "100", *overrides], env=env, cwd=tmp_path,
                        capture_output=True, text=True, timeout=120)
    assert ev.returncode == 0, ev.stderr
    assert [json.loads(x)["kind"] for x in ev.stdout.splitlines()][-1] == "rolled_back"
    st = subprocess.run([*cli, "status", CONFIG, *overrides], env=env, cwd=tmp_path, capture_output=True, text=True,
                        timeout=120)
    assert st.returncode == 0, st.stderr
    assert "v2    champion" in st.stdout and "v1    previous" in st.stdout
    assert (sandbox / "mlflow.db").exists()
