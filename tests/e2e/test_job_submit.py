"""`ray job submit` of a small pipeline run against a `ray start --head` cluster started (and stopped) by the test."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """A head node in its own process group, so that stopping it touches no other Ray on the machine.

    One for the module: a start and a stop cost ~20 s here, and the tests use separate names and stores."""
    # Every port explicit: another Ray on this machine (the test session's own) holds the defaults.
    port, dash, agent_http, agent_grpc, metrics, runtime_env = (_free_port() for _ in range(6))
    temp = tempfile.mkdtemp(prefix="rmo-", dir="/tmp")  # short: Ray's socket paths have a length limit
    # PYTHONPATH: the cluster's workers import tests.controller_helpers (the controller test's fake pipeline).
    env = os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token", "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dash}",
         "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=2",
         f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
         "--object-store-memory=300000000", f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            probe = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=env,
                                   capture_output=True, text=True)
            if probe.returncode == 0:
                break
            time.sleep(2)
        else:
            pytest.fail("the Ray head did not come up within 90 s")
        yield address, env, f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-9", "-f", temp], check=False)  # stragglers of this cluster only


def test_ray_job_submit_runs_the_pipeline(ray_head, tmp_path):
    address, env, _ = ray_head
    store = tmp_path / "store"
    subprocess.run([str(BIN / "raymlops"), "data", "generate", "--out", str(store / "landing"),
                    "--rows", "1500", "--days", "3", "--seed", "3"], check=True, env=env, capture_output=True)
    runtime_env = json.dumps({"env_vars": {"RAYMLOPS_STORAGE": str(store)}})
    cmd = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".",
         "--runtime-env-json", runtime_env, "--",
         "raymlops", "run", "configs/churn.yaml", "--set", "train.epochs=3", "--set", "train.learning_rate=0.01",
         "--set", "train.batch_size=128", "--set", "evaluation.min_primary=0.55"]
    for _ in range(10):  # the job agent comes up a little after the dashboard answers
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent" not in r.stderr + r.stdout:
            break
        time.sleep(3)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "registered version 1 as challenger" in r.stdout
    assert "[train] epoch=" in r.stdout  # live progress reaches the submitting terminal
    run_records = list((store / "runs").glob("*/run.json"))
    assert len(run_records) == 1
    record = json.loads(run_records[0].read_text())
    assert record["status"] == "completed"


def test_the_controller_cli_on_a_cluster(ray_head, tmp_path):
    """Every controller command as a user types it, against a detached controller on a `ray start` cluster."""
    _, env, gcs = ray_head
    store = tmp_path / "store"
    sets = [f"storage_uri={store}", f"tracking_uri=sqlite:///{store}/mlflow.db", f"data.source={store}/landing",
            "name=cli", f"serving.port={_free_port()}", "controller.pipeline=tests.controller_helpers:fake_pipeline",
            "controller.allowed_pipelines=[tests.controller_helpers:fake_pipeline]",
            "canary.steps=[100]", "canary.interval_s=2", "triggers.new_data=false", "triggers.poll_interval_s=0.5",
            "controller.poll_interval_s=0.3", "monitoring.interval_s=3600", "pre_exposure.enabled=false"]
    args = [x for kv in sets for x in ("--set", kv)]

    def cli(*cmd: str, pos: tuple[str, ...] = (), address: bool = True) -> subprocess.CompletedProcess:
        extra = ["--address", gcs] if address else []
        return subprocess.run([str(BIN / "raymlops"), *cmd, "configs/churn.yaml", *pos, *args, *extra], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=300)

    def wait_event(kind: str, version: str) -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            r = cli("events", "--json", "--limit", "1000", address=False)
            events = [json.loads(x) for x in r.stdout.splitlines()]
            if any(e["kind"] == kind and e["data"].get("version") == version for e in events):
                return
            time.sleep(1)
        pytest.fail(f"no {kind} event for version {version}: {r.stdout[-2000:]}")

    r = cli("controller", "start")
    assert r.returncode == 0 and "started" in r.stdout, r.stdout + r.stderr
    r = cli("trigger", "--request-id", "first")
    assert r.returncode == 0 and "trigger first accepted" in r.stdout, r.stdout + r.stderr
    wait_event("promoted", "1")
    assert cli("trigger", "--request-id", "second").returncode == 0
    wait_event("canary_started", "2")  # no traffic: the canary holds at its step

    r = cli("approve")
    assert r.returncode == 2 and "nothing awaits approval" in r.stderr, r.stdout + r.stderr
    r = cli("promote", pos=("2",))
    assert r.returncode == 0 and "promoting" in r.stdout, r.stdout + r.stderr
    wait_event("promoted", "2")

    assert "controller paused" in cli("controller", "pause").stdout
    assert cli("trigger", "--request-id", "third").returncode == 0
    time.sleep(2)
    status = json.loads(cli("controller", "status").stdout)
    assert status["paused"] and status["run"] is None and [t["kind"] for t in status["queue"]] == ["on_demand"]
    assert "controller resumed" in cli("controller", "resume").stdout
    wait_event("canary_started", "3")
    r = cli("rollback")
    assert r.returncode == 0 and "rolling_back" in r.stdout, r.stdout + r.stderr
    wait_event("rolled_back", "3")

    r = cli("status", address=False)
    assert r.returncode == 0 and "v2    champion" in r.stdout and "v2 100%" in r.stdout, r.stdout + r.stderr
    assert "controller stopped" in cli("controller", "stop").stdout
    r = cli("trigger")
    assert r.returncode == 2 and "no controller is running" in r.stderr, r.stdout + r.stderr
