"""Serving under failure: replicas killed under load, overload, and weight changes under load, all through the one
ingress URL (Serve's HAProxy).

Phases (durations are flags; the defaults are the issue's figures):

    replica chaos   2 replicas, ~50 QPS for 60 s from ``wrk`` (a Lua script paces each connection and retries a failed
                    request once); every 10 s one replica is killed by its pid (read from Serve's replica actor).
                    Goals: ≥ 99.9% of requests succeed with one client retry; the replicas are back within 30 s;
                    every answered request is in the prediction log or counted as lost (the rows a killed replica
                    still held, read from it just before the kill).
    overload        offered load at 4 x the measured capacity (``hey``, per-request CSV): only 200s and JSON
                    503/429, rejections answered within 100 ms p99, no other 5xx.
    weight change   the split changes every second under load (``hey``): 0 failed requests.

Load comes from wrk/hey, never Python (a few single probe requests check the rejection bodies). The load average is
printed before and after, with a warning when the machine is busy.

    python benchmarks/chaos_serve.py                                   # the issue's figures (about 3 minutes)
    python benchmarks/chaos_serve.py --chaos-s 12 --kill-every-s 6 --overload-s 5 --weights-s 5   # a quick look
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench_serve import free_port, loadavg, post, warn_if_busy  # benchmarks/, beside this script

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
APP = "chaos_serve"
MODEL = "churn"

# Each connection POSTs, waits `delay_ms`, and retries a failed request once (the next request is that retry).
CHAOS_LUA = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  ok_first, ok_retry, failed_first, lost, pending = 0, 0, 0, 0, false
  statuses = {}
end
function delay() return %(delay_ms)d end
function request() return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, [==[%(body)s]==]) end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 200 then
    if pending then ok_retry = ok_retry + 1 else ok_first = ok_first + 1 end
    pending = false
  elseif pending then
    lost, pending = lost + 1, false
  else
    failed_first, pending = failed_first + 1, true
  end
end
function done(summary, latency, requests)
  local t = {ok_first = 0, ok_retry = 0, failed_first = 0, lost = 0, statuses = {}}
  for _, th in ipairs(threads) do
    t.ok_first = t.ok_first + th:get("ok_first")
    t.ok_retry = t.ok_retry + th:get("ok_retry")
    t.failed_first = t.failed_first + th:get("failed_first")
    t.lost = t.lost + th:get("lost")
    for s, n in pairs(th:get("statuses")) do t.statuses[tostring(s)] = (t.statuses[tostring(s)] or 0) + n end
  end
  local e = summary.errors
  local parts = {}
  for s, n in pairs(t.statuses) do table.insert(parts, string.format('"%%s": %%d', s, n)) end
  io.write(string.format('CHAOS {"ok_first": %%d, "ok_retry": %%d, "failed_first": %%d, "lost": %%d, ' ..
    '"socket_errors": %%d, "socket_error_kinds": {"connect": %%d, "read": %%d, "write": %%d, "timeout": %%d}, ' ..
    '"p99_ms": %%.2f, "statuses": {%%s}}\\n', t.ok_first, t.ok_retry, t.failed_first, t.lost,
    e.connect + e.read + e.write + e.timeout, e.connect, e.read, e.write, e.timeout,
    latency:percentile(99) / 1000, table.concat(parts, ", ")))
end
"""


def chaos_summary(out: str, err: str) -> tuple[dict, int, int]:
    """wrk's CHAOS line (CHAOS_LUA's summary) with the logical requests (a retry is not a new one) and those
    answered, at the first try or on the retry."""
    line = next((ln for ln in out.splitlines() if ln.startswith("CHAOS ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no summary: {out}{err}")
    chaos = json.loads(line[6:])
    logical = chaos["ok_first"] + chaos["failed_first"] + chaos["socket_errors"]
    return chaos, logical, chaos["ok_first"] + chaos["ok_retry"]


def hey(url: str, body_file: Path, seconds: float, concurrency: int, qps_per_worker: float | None) -> list[dict]:
    """One ``hey`` run; its per-request CSV as rows of (status, seconds)."""
    cmd = ["hey", "-z", f"{seconds:g}s", "-c", str(concurrency), "-t", "10", "-m", "POST", "-T", "application/json",
           "-D", str(body_file), "-o", "csv"]
    if qps_per_worker:
        cmd += ["-q", f"{qps_per_worker:g}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 60).stdout
    return [{"status": int(r["status-code"]), "s": float(r["response-time"])}
            for r in csv.DictReader(io.StringIO(out)) if r.get("status-code", "").isdigit()]


def p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.99 * len(xs)))] if xs else float("nan")


def replica_pids(app: str) -> dict[str, int]:
    """Replica actor name -> its process id, asked of each of ``app``'s replica actors."""
    import ray

    out = {}
    for a in ray.util.list_named_actors(all_namespaces=True):
        if a.get("namespace") == "serve" and a["name"].startswith(f"SERVE_REPLICA::{app}#"):
            try:
                handle = ray.get_actor(a["name"], namespace="serve")
                out[a["name"]] = ray.get(handle.__ray_call__.remote(lambda self: os.getpid()), timeout=10)
            except Exception:  # noqa: BLE001 - a replica dying right now
                continue
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chaos-s", type=int, default=60)
    ap.add_argument("--kill-every-s", type=float, default=10.0)
    ap.add_argument("--qps", type=float, default=50.0)
    ap.add_argument("--overload-s", type=float, default=15.0)
    ap.add_argument("--weights-s", type=float, default=15.0)
    args = ap.parse_args()
    for tool in ("wrk", "hey"):
        if not shutil.which(tool):
            sys.exit(f"chaos_serve needs {tool}: sudo apt-get install {tool}")
    sys.path.insert(0, str(ROOT))
    load_start = loadavg()
    print(f"load average at start {load_start} on {os.cpu_count()} cores", flush=True)
    warn_if_busy(load_start)

    import ray

    from raymlops.config import load_config
    from raymlops.serve.deploy import deploy, set_weights, status, undeploy
    from raymlops.serve.predlog import read_log
    from tests.serving_helpers import instances, register_versions

    tmp = Path(tempfile.mkdtemp(prefix="chaos-serve-"))
    result: dict[str, Any] = {"benchmark": "chaos_serve", "loadavg_start": load_start}
    cfg = None
    try:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 * 1024, log_to_driver=False)
        cfg = load_config(None, [f"storage_uri={tmp / 'store'}", f"tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
                                 f"serving.port={free_port()}", f"serving.app_name={APP}", "serving.ingress=haproxy",
                                 "serving.num_replicas=2", "serving.max_ongoing_requests=8",
                                 "serving.max_queued_requests=16", "serving.prediction_log.flush_interval_s=0.5"])
        register_versions(cfg, tmp, n=2)
        info = deploy(cfg)
        body = json.dumps({"instances": instances(1, seed=3, with_id=True)}, separators=(",", ":"))
        body_file = tmp / "body.json"
        body_file.write_text(body)
        url = info.predict_url
        print(f"deployed {info.app_name} at {url} ({info.ingress}, {len(info.direct_urls)} replicas)", flush=True)

        # -- replica chaos
        conns = 5
        delay_ms = max(1, int(conns * 1000 / args.qps))
        lua = tmp / "chaos.lua"
        lua.write_text(CHAOS_LUA % {"delay_ms": delay_ms, "body": body})
        t0 = time.time()
        wrk = subprocess.Popen(["wrk", "-t1", f"-c{conns}", f"-d{args.chaos_s}s", "--timeout", "10s", "-s", str(lua),
                                url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        kills: list[dict[str, Any]] = []
        next_kill = time.monotonic() + args.kill_every_s
        while wrk.poll() is None:
            if time.monotonic() >= next_kill and time.time() - t0 < args.chaos_s - 2:
                next_kill += args.kill_every_s
                pids = replica_pids(APP)
                if not pids:
                    continue
                name, pid = sorted(pids.items())[len(kills) % len(pids)]
                pending = _pending_rows(info)  # what a hard kill loses: read from the replicas just before
                os.kill(pid, signal.SIGKILL)
                kills.append({"at_s": round(time.time() - t0, 1), "replica": name, "pid": pid,
                              "pending_rows_before": pending, "back_s": None})
                threading.Thread(target=_time_recovery, args=(cfg, kills[-1], status), daemon=True).start()
                print(f"  t={kills[-1]['at_s']:5.1f}s killed {name} (pid {pid}); rows pending in the replicas "
                      f"{pending}", flush=True)
            time.sleep(0.2)
        out, err = wrk.communicate()
        t1 = time.time()
        chaos, logical, answered = chaos_summary(out, err)
        deadline = time.monotonic() + 40
        while any(k["back_s"] is None for k in kills) and time.monotonic() < deadline:
            time.sleep(0.5)
        undeploy(cfg)  # the surviving replicas flush their logs
        rows = read_log(f"{cfg.storage_uri}/predictions/{MODEL}", start=t0 - 1, end=t1 + 1).num_rows
        lost_bound = sum(sum(k["pending_rows_before"].values()) for k in kills)
        chaos.update(
            seconds=args.chaos_s, target_qps=args.qps, achieved_qps=round((answered + chaos["failed_first"]) /
                                                                          args.chaos_s, 1),
            success_with_one_retry=round(answered / max(logical, 1), 5),
            success_first_try=round(chaos["ok_first"] / max(logical, 1), 5),
            kills=kills, max_back_s=max((k["back_s"] or float("inf") for k in kills), default=None),
            answered=answered, logged_rows=rows, pending_at_kills=lost_bound,
            unaccounted=max(0, answered - rows - lost_bound))
        chaos["goals"] = {"success_met": chaos["success_with_one_retry"] >= 0.999,
                          "back_within_30s_met": all((k["back_s"] or 1e9) <= 30 for k in kills),
                          "log_accounted_met": chaos["unaccounted"] == 0}
        result["replica_chaos"] = chaos
        print(f"replica chaos: {json.dumps(chaos)}", flush=True)

        # -- overload and weight changes, on a fresh deployment of the same app
        info = deploy(cfg)
        url = info.predict_url
        for _ in range(3):
            post(url, body.encode())
        cap = hey(url, body_file, 3, 16, None)
        capacity = sum(1 for r in cap if r["status"] == 200) / 3
        per_worker = 4 * capacity / 64
        samples: list[tuple[int, str]] = []
        prober = threading.Thread(target=_probe_rejections, args=(url, body.encode(), args.overload_s, samples),
                                  daemon=True)
        prober.start()
        over = hey(url, body_file, args.overload_s, 64, per_worker)
        prober.join()
        codes: dict[str, int] = {}
        for r in over:
            codes[str(r["status"])] = codes.get(str(r["status"]), 0) + 1
        rejected = [r["s"] * 1e3 for r in over if r["status"] in (429, 503)]
        bad_bodies = [s for s in samples if s[0] in (429, 503) and not s[1].startswith("{")]
        overload = {"capacity_qps": round(capacity, 1), "offered_qps": round(4 * capacity, 1), "statuses": codes,
                    "rejection_p99_ms": round(p99(rejected), 1), "probes": len(samples),
                    "non_json_rejections": len(bad_bodies), "non_json_samples": bad_bodies[:3]}
        overload["goals"] = {"only_200_503_429_met": set(codes) <= {"200", "503", "429"},
                             "rejection_p99_met": not rejected or p99(rejected) <= 100,
                             "json_rejections_met": not bad_bodies}
        result["overload"] = overload
        print(f"overload: {json.dumps(overload)}", flush=True)

        stop = threading.Event()
        changes = threading.Thread(target=_change_weights, args=(cfg, set_weights, stop), daemon=True)
        changes.start()
        under = hey(url, body_file, args.weights_s, 8, 50 / 8)
        stop.set()
        changes.join()
        wcodes: dict[str, int] = {}
        for r in under:
            wcodes[str(r["status"])] = wcodes.get(str(r["status"]), 0) + 1
        weights = {"requests": len(under), "statuses": wcodes, "weight_changes": changes_done[0],
                   "goals": {"zero_failures_met": set(wcodes) == {"200"}}}
        result["weight_change"] = weights
        print(f"weight change under load: {json.dumps(weights)}", flush=True)
    finally:
        if ray.is_initialized():
            try:
                if cfg is not None:
                    undeploy(cfg)
                from ray import serve

                serve.shutdown()
            except Exception as err:  # noqa: BLE001 - still shut Ray down
                print(f"stopping Serve failed: {type(err).__name__}: {err}", file=sys.stderr)
            ray.shutdown()
        result["loadavg_end"] = loadavg()
        print(f"load average at end {result['loadavg_end']}", flush=True)
        warn_if_busy(result["loadavg_end"])
        out_file = HERE / "results" / "chaos_serve.json"
        out_file.parent.mkdir(exist_ok=True)
        out_file.write_text(json.dumps(result, indent=2, default=str) + "\n")
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"wrote {out_file.relative_to(ROOT)}")


def _pending_rows(info: Any) -> dict[str, int]:
    """Rows each replica holds unwritten (``prediction_log.pending`` of its own GET), by replica id."""
    import urllib.request

    out = {}
    for base in info.direct_urls:
        try:
            with urllib.request.urlopen(f"{base}/v1/models/{MODEL}", timeout=5) as r:
                doc = json.loads(r.read())
            out[doc["replica"]["id"]] = int(doc["prediction_log"]["pending"])
        except Exception:  # noqa: BLE001 - a replica restarting
            continue
    return out


def _time_recovery(cfg: Any, kill: dict[str, Any], status: Any) -> None:
    """Seconds until Serve runs two replicas again after ``kill`` (polling its status)."""
    start = time.monotonic()
    time.sleep(1.0)  # Serve notices the death first
    while time.monotonic() - start < 60:
        reps = status(cfg).get("replicas", {})
        if reps.get("running") == 2:
            kill["back_s"] = round(time.monotonic() - start, 1)
            return
        time.sleep(0.5)


def _probe_rejections(url: str, body: bytes, seconds: float, samples: list[tuple[int, str]]) -> None:
    """A few single requests during the overload: the status and body of what it answers (JSON or not)."""
    import urllib.error
    import urllib.request

    end = time.monotonic() + seconds
    time.sleep(min(1.0, seconds / 3))
    while time.monotonic() < end and len(samples) < 20:
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                samples.append((r.status, r.read(200).decode(errors="replace")))
        except urllib.error.HTTPError as err:
            samples.append((err.code, (err.read() or b"").decode(errors="replace")[:200]))
        except OSError:
            pass
        time.sleep(0.2)


changes_done = [0]


def _change_weights(cfg: Any, set_weights: Any, stop: threading.Event) -> None:
    splits = [{"1": 90, "2": 10}, {"1": 50, "2": 50}, {"1": 100}, {"2": 100}, {"1": 90, "2": 10}]
    i = 0
    while not stop.is_set():
        set_weights(cfg, splits[i % len(splits)])
        changes_done[0] += 1
        i += 1
        stop.wait(1.0)


if __name__ == "__main__":
    main()
