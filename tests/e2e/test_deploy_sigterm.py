"""`raymlops deploy` stopped with SIGTERM (what docker, systemd and Kubernetes send) drains like Ctrl-C: it
finishes what it answered, flushes the prediction log and exits 0 without a traceback."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
import yaml

from raymlops.serve.predlog import read_log
from tests.serving_helpers import instances, register_versions, serving_config

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_sigterm_drains_serving_and_exits_0(_mlflow_template, tmp_path):
    shutil.copy(_mlflow_template, tmp_path / "mlflow.db")
    cfg = serving_config(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
    register_versions(cfg, tmp_path, n=1)
    path = tmp_path / "serving.yaml"
    path.write_text(yaml.safe_dump({
        "storage_uri": cfg.storage_uri, "tracking_uri": cfg.tracking_uri,
        "serving": {"port": cfg.serving.port, "num_cpus": 0.1,
                    "prediction_log": {"flush_interval_s": 30.0}},  # nothing flushes on its own before the stop
    }))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own Ray, in its own process
    proc = subprocess.Popen([sys.executable, "-m", "raymlops.cli", "deploy", str(path)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    err_lines: list[str] = []
    reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not any("press Ctrl-C to stop" in ln for ln in err_lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(err_lines)
            time.sleep(0.2)
        url = f"http://127.0.0.1:{cfg.serving.port}/v1/models/churn:predict"
        answered = [httpx.post(url, json={"instances": instances(2, seed=i)}, timeout=30).json()["request_id"]
                    for i in range(20)]

        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=180)  # stderr is the reader's: communicate() would take its last lines
    finally:
        if proc.poll() is None:  # a failed test leaves nothing running: its process group is ours
            os.killpg(proc.pid, signal.SIGKILL)
    reader.join(timeout=10)
    stderr = "".join(err_lines)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "SIGTERM received" not in stderr, stderr
    assert "stopped" in stderr
    logged = set(read_log(f"{cfg.storage_uri}/predictions/churn").column("request_id").to_pylist())
    assert set(answered) <= logged  # every answered request is in the log, flushed by the drain
