"""A Ray cluster's faults under serving load: the worker node holding a Serve replica killed (its raylet and every
worker, by pid).

A head (no CPUs) and two worker nodes on this machine (``tests/cluster/ray_cluster.py``, the cluster tier's own),
the churn app deployed with 2 replicas (one on each worker node: Serve spreads them), ~50 QPS from ``wrk`` for
``--seconds`` (each connection retries a failed request once: ``chaos_serve.CHAOS_LUA``); at ``--kill-at-s`` the node
holding a replica is killed. Figures: success with one client retry (goal ≥ 99.9%), success at the first try, and the
seconds until two replicas run again (goal ≤ 30 s; the lost one is started on the surviving node).

    python benchmarks/chaos_cluster.py                  # about 2 minutes with the cluster start

Not here yet: a worker node killed during a Ray Train fit (tried: Ray Train V2 restored on the surviving node once
and failed the run once with "controller error: the actor's node was terminated unexpectedly").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_serve import free_port, loadavg, warn_if_busy  # benchmarks/, beside this script
from chaos_serve import CHAOS_LUA, chaos_summary

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _running_replicas() -> int:
    from ray import serve

    app = next(iter(serve.status().applications.values()))
    return sum(d.replica_states.get("RUNNING", 0) for d in app.deployments.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--kill-at-s", type=float, default=15.0)
    ap.add_argument("--qps", type=float, default=50.0)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("chaos_cluster needs wrk: sudo apt-get install wrk")
    sys.path.insert(0, str(ROOT))
    load_start = loadavg()
    print(f"load average at start {load_start} on {os.cpu_count()} cores", flush=True)
    warn_if_busy(load_start)

    from tests.cluster.ray_cluster import RayCluster

    tmp = Path(tempfile.mkdtemp(prefix="chaos-cluster-"))
    t_start = time.monotonic()
    cluster = RayCluster.start({})
    print(f"cluster of 3 nodes up in {time.monotonic() - t_start:.0f} s", flush=True)
    try:
        os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": cluster.env["RAY_AUTH_TOKEN"],
                           "RAY_ADDRESS": cluster.gcs})
        import ray
        from ray.util.state import list_actors

        from raymlops.config import load_config
        from raymlops.serve.deploy import deploy, undeploy
        from tests.serving_helpers import instances, register_versions

        ray.init(address=cluster.gcs, log_to_driver=False)
        cfg = load_config(None, [f"storage_uri={tmp / 'store'}", f"tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
                                 f"serving.port={free_port()}", "serving.ingress=proxy", "serving.num_replicas=2",
                                 "serving.max_ongoing_requests=8", "serving.max_queued_requests=64"])
        register_versions(cfg, tmp, n=1)
        info = deploy(cfg)
        node_names = {v: k for k, v in cluster.node_ids().items()}
        replicas = [a for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
                    if a.class_name.startswith("ServeReplica:")]
        placed = sorted(node_names.get(a.node_id, "?") for a in replicas)
        print(f"deployed at {info.predict_url}; replicas on nodes {placed}", flush=True)

        body = json.dumps({"instances": instances(1, seed=3, with_id=True)}, separators=(",", ":"))
        conns = 5
        lua = tmp / "chaos.lua"
        lua.write_text(CHAOS_LUA % {"delay_ms": max(1, int(conns * 1000 / args.qps)), "body": body})
        wrk = subprocess.Popen(["wrk", "-t1", f"-c{conns}", f"-d{args.seconds}s", "--timeout", "10s", "-s", str(lua),
                                info.predict_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(args.kill_at_s)
        victim = replicas[0]
        name = node_names[victim.node_id]
        killed_at = time.monotonic()
        cluster.kill(name, victim.node_id)
        print(f"killed node {name} (replica {victim.class_name}) at t={args.kill_at_s:.0f}s", flush=True)
        back_s = None

        def watch() -> None:
            """Capacity is back when Serve has 2 RUNNING replicas and Ray 2 alive replica actors, neither the killed
            one (right after the kill both still count it: the GCS marks a node dead after missed heartbeats)."""
            nonlocal back_s
            while time.monotonic() - killed_at < args.seconds:
                try:
                    alive = [a for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
                             if a.class_name.startswith("ServeReplica:") and a.actor_id != victim.actor_id]
                    if len(alive) >= 2 and _running_replicas() >= 2:
                        back_s = round(time.monotonic() - killed_at, 1)
                        return
                except Exception:  # noqa: BLE001 - the controller answering slowly right after the kill
                    pass
                time.sleep(0.5)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        out, err = wrk.communicate()
        watcher.join(timeout=30)
        chaos, logical, answered = chaos_summary(out, err)
        chaos.update(seconds=args.seconds, killed_node=name, replicas_before=placed, capacity_back_s=back_s,
                     success_with_one_retry=round(answered / max(logical, 1), 5),
                     success_first_try=round(chaos["ok_first"] / max(logical, 1), 5),
                     loadavg_end=loadavg())
        chaos["goals"] = {"success_met": chaos["success_with_one_retry"] >= 0.999,
                          "back_within_30s_met": back_s is not None and back_s <= 30}
        print(f"node kill under load: {json.dumps(chaos)}", flush=True)
        undeploy(cfg)
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
