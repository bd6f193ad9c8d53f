"""Online serving throughput and latency: raymlops on Ray Serve against plain Serve and a raw uvicorn process.

Question: what do the live traffic split, request validation and the prediction log cost, and what does Serve
itself cost, against the fastest way to serve the same model package over HTTP on this machine?

Targets (same model package, same one-instance churn payload, concurrency 1, 16 and 64). Serve runs with its
HAProxy ingress (``serving.ingress: haproxy``, the default), which also keeps Serve's Python proxy as a fallback
on its own port: one Serve gives every path.

    raw                  one uvicorn + Starlette process (a subprocess of this script): load_package +
                         LoadedModel.predict in the handler, nothing else (the physical limit)
    plain-haproxy        a minimal ``@serve.deployment`` that loads the same package and predicts, through the one
                         ingress URL (HAProxy): the "same path" row that shows what raymlops itself costs
    plain-proxy          the same plain deployment through Serve's Python proxy
    plain-direct         the same plain deployment on its replica's own port
    raymlops-haproxy     ``deploy(cfg, weights={"1": 90, "2": 10})``: a live 90/10 split over two co-hosted versions,
                         validation against the frozen schema, prediction log and metrics on (auth with --auth);
                         one replica, through the one ingress URL (``DeployInfo.url``)
    raymlops-haproxy-2r  the same app with two replicas (``serving.num_replicas=2``), through its one URL
    raymlops-proxy       the one-replica app through Serve's Python proxy
    raymlops-direct      the one-replica app on its replica's own port (``DeployInfo.direct_urls``)

Goals (issue 14), through the single ingress: at c=16 QPS ≥ 0.6 × raw and p99 ≤ 2 × raw; at c=64 p99 ≤ 3 × raw;
against the plain deployment on the same path, raymlops costs ≤ 5% of QPS.

Method: one Ray (``ray.init(num_cpus=2)``), every server up for the whole run, one replica each with the same
``num_cpus`` and ``max_ongoing_requests`` (Serve's default of 5 would throttle the plain deployment); the raw
process gets the torch thread count a replica of that size gets. Load comes from ``wrk`` (preferred: one C
thread) or ``hey``, never from Python, which would take the servers' CPU on 2 cores. Repetitions are interleaved
(for each repetition, for each concurrency, every target in turn) so that a change in the background load of
this shared machine hits every target alike; each figure is the median over repetitions. CPU time per request of
each process (server, Serve proxy, the rest of Ray, load generator, whole machine) is read from /proc around each
run, which shows where the time goes; the handler and ``LoadedModel.predict`` are also timed in this process with
no HTTP (the floor under every target). QPS counts 2xx answers only; any other answer or socket error is reported.

    python benchmarks/bench_serve.py                         # 3 repetitions x 8 s per point (about 15 minutes)
    python benchmarks/bench_serve.py --reps 1 --duration 3 --warmup 1 --concurrency 16   # a quick look
    python benchmarks/bench_serve.py --auth                  # bearer-token auth on (the token in the wrk script)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from _common import actor_threads, machine  # benchmarks/_common.py, beside this script

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODEL = "churn"
PREDICT_PATH = f"/v1/models/{MODEL}:predict"
PLAIN_PREFIX = "/plain"
# Own app names: other sessions on this shared machine deploy (and stop) apps called "churn" and "plain".
APP, PLAIN_APP = "bench_serve_raymlops", "bench_serve_plain"
APP2, PREFIX2 = "bench_serve_raymlops_2r", "/r2"
TARGETS = ("raw", "plain-haproxy", "plain-proxy", "plain-direct", "raymlops-haproxy", "raymlops-haproxy-2r",
           "raymlops-proxy", "raymlops-direct")
SAME_PATH_PLAIN = {"raymlops-haproxy": "plain-haproxy", "raymlops-proxy": "plain-proxy",
                   "raymlops-direct": "plain-direct"}
INGRESS_TARGETS = ("raymlops-haproxy", "raymlops-haproxy-2r")  # judged against the goals
TOKEN = "bench-" + uuid.uuid4().hex  # --auth: this run's predict token (its hash is all the server sees)
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------------------- the handlers
def answer(model: Any, body: bytes) -> bytes:
    """What the raw and the plain Serve servers answer: predict the instances, same JSON as raymlops's answer."""
    rows = json.loads(body)["instances"]
    columns = {k: [r.get(k) for r in rows] for k in rows[0]}
    out = model.predict(columns)
    classes = list(model.transform.classes)
    predictions = [{"probability": p, "label": classes[i]}
                   for p, i in zip(out["probability"].tolist(), out["label"].tolist(), strict=True)]
    doc = {"predictions": predictions, "model_version": model.version, "request_id": str(uuid.uuid4())}
    return json.dumps(doc, separators=(",", ":")).encode()


def raw_server(package: str, digest: str, port: int, threads: int) -> None:
    """(a) One uvicorn process with uvicorn's defaults (uvloop, httptools when installed), no access log."""
    import torch
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    from raymlops.model.package import load_package

    torch.set_num_threads(threads)
    model = load_package(package, digest, version="1")

    async def predict(request):
        return Response(answer(model, await request.body()), media_type="application/json")

    app = Starlette(routes=[Route(PREDICT_PATH, predict, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


class PlainModel:
    """(b) The minimal Serve deployment: load the package, predict in ``__call__``."""

    def __init__(self, package: str, digest: str):
        from raymlops.model.package import load_package

        self.model = load_package(package, digest, version="1")

    async def __call__(self, request):
        from starlette.responses import Response

        return Response(answer(self.model, await request.body()), media_type="application/json")


# ----------------------------------------------------------------------------------------- load generator
def load_tool() -> str:
    """``wrk`` or ``hey`` (installed with apt-get when running as root), or exit saying how to install one."""
    for tool in ("wrk", "hey"):
        if shutil.which(tool):
            return tool
    if os.geteuid() == 0 and shutil.which("apt-get"):
        for tool in ("wrk", "hey"):
            for cmd in (["apt-get", "install", "-y", "-q", tool], ["apt-get", "update", "-q"],
                        ["apt-get", "install", "-y", "-q", tool]):
                print(f"$ {' '.join(cmd)}", flush=True)
                subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
                if cmd[1] == "install" and shutil.which(tool):
                    return tool
    sys.exit("bench_serve needs an HTTP load generator written in a compiled language (a Python client would take "
             "the servers' CPU): install one with `sudo apt-get install wrk` (or `sudo apt-get install hey`), or put "
             "wrk or hey on PATH, then run this again")


def load_command(tool: str, url: str, concurrency: int, duration: int, body_file: Path, lua_file: Path,
                 headers: dict[str, str] | None = None) -> list:
    """``wrk`` (the POST body and ``headers`` in its Lua script) or ``hey`` loading ``url``."""
    if tool == "wrk":
        # One thread: the load generator must take as little of the 2 cores as possible.
        return ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--timeout", "10s", "--latency",
                "-s", str(lua_file), url]
    extra = [a for k, v in (headers or {}).items() for a in ("-H", f"{k}: {v}")]
    return ["hey", "-z", f"{duration}s", "-c", str(concurrency), "-t", "10", "-m", "POST",
            "-T", "application/json", "-D", str(body_file), *extra, url]


def wrk_script(body: bytes, headers: dict[str, str]) -> str:
    """A wrk Lua script that POSTs ``body`` with ``headers``."""
    lines = ['wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"']
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    return "\n".join([*lines, f"wrk.body = [==[{body.decode()}]==]", ""])


_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(text: str) -> dict[str, Any]:
    def latency(pct: str) -> float:
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
        if not m:
            raise RuntimeError(f"no {pct}% latency in wrk's output:\n{text}")
        return float(m.group(1)) * _UNIT_MS[m.group(2)]

    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise RuntimeError(f"cannot read wrk's output:\n{text}")
    requests, seconds = int(m.group(1)), float(m.group(2)) * _UNIT_MS[m.group(3)] / 1e3
    non2xx = int(re.search(r"Non-2xx or 3xx responses: (\d+)", text).group(1)) if "Non-2xx" in text else 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    socket_errors = sum(int(g) for g in sock.groups()) if sock else 0
    return {"requests": requests, "seconds": seconds, "ok": requests - non2xx, "non_2xx": non2xx,
            "socket_errors": socket_errors, "p50_ms": latency("50"), "p99_ms": latency("99")}


def parse_hey(text: str) -> dict[str, Any]:
    def latency(pct: str) -> float:
        m = re.search(rf"{pct}%+ in ([\d.]+) secs", text)
        if not m:
            raise RuntimeError(f"no {pct}% latency in hey's output:\n{text}")
        return float(m.group(1)) * 1e3

    total = re.search(r"Total:\s+([\d.]+) secs", text)
    if not total:
        raise RuntimeError(f"cannot read hey's output:\n{text}")
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", text)}
    errors_part = text.split("Error distribution:", 1)[1] if "Error distribution:" in text else ""
    socket_errors = sum(int(n) for n in re.findall(r"^\s*\[(\d+)\]", errors_part, re.M))
    ok = sum(n for c, n in codes.items() if 200 <= c < 300)
    return {"requests": sum(codes.values()), "seconds": float(total.group(1)), "ok": ok,
            "non_2xx": sum(codes.values()) - ok, "socket_errors": socket_errors,
            "p50_ms": latency("50"), "p99_ms": latency("99")}


# ----------------------------------------------------------------------------------------- CPU accounting
def _proc_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (ppid, title, CPU seconds) of every process visible in /proc."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            title = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[int(d)] = (int(fields[1]), title, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def _machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot (/proc/stat)."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = f[3] + f[4]
    steal = f[7] if len(f) > 7 else 0
    return (sum(f[:8]) - idle - steal) / CLK_TCK, steal / CLK_TCK


class CpuSnapshot:
    """CPU seconds of every process of this run, and of the machine, at one moment."""

    def __init__(self):
        self.procs = _proc_table()
        self.machine = _machine_cpu()
        self.children = resource.getrusage(resource.RUSAGE_CHILDREN)


def _descendants(procs: dict[int, tuple[int, str, float]], root: int) -> set[int]:
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = set(), [root]
    while todo:
        for k in kids.get(todo.pop(), []):
            if k not in out:
                out.add(k)
                todo.append(k)
    return out


def cpu_delta(before: CpuSnapshot, after: CpuSnapshot, servers: set[int], raw: int | None) -> dict[str, float]:
    """CPU seconds spent between two snapshots: the measured server, Serve's proxy, the rest of our Ray (this
    driver, GCS, raylet, controller, idle replicas), the load generator, and the whole machine (busy, steal)."""
    me = os.getpid()
    spent = {"server": 0.0, "proxy": 0.0, "ray_other": 0.0}
    for pid in _descendants(after.procs, me) | {me}:
        _, title, cpu = after.procs[pid]
        delta = cpu - (before.procs[pid][2] if pid in before.procs else 0.0)  # a new process: all of its CPU
        if pid in servers:
            spent["server"] += delta
        elif title.startswith("ray::ProxyActor") or "bin/haproxy" in title:
            spent["proxy"] += delta
        elif pid != raw:
            spent["ray_other"] += delta
    # wrk/hey has exited and been waited for: its CPU is in this process's children's rusage.
    spent["loadgen"] = (after.children.ru_utime + after.children.ru_stime
                        - before.children.ru_utime - before.children.ru_stime)
    spent["machine_busy"] = after.machine[0] - before.machine[0]
    spent["machine_steal"] = after.machine[1] - before.machine[1]
    ours = sum(spent[k] for k in ("server", "proxy", "ray_other", "loadgen"))
    if raw is not None and raw not in servers and raw in after.procs:
        ours += after.procs[raw][2] - before.procs.get(raw, after.procs[raw])[2]
    # Busy CPU of everything else on the machine (other sessions, the kernel's share of loopback traffic).
    spent["not_ours"] = max(0.0, spent["machine_busy"] - ours)
    return spent


# ----------------------------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: bytes, timeout: float = 30, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})},
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def get_json(url: str, headers: dict[str, str] | None = None) -> dict:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as r:
        return json.loads(r.read())


def wait_http(url: str, body: bytes, timeout_s: float = 60, headers: dict[str, str] | None = None) -> dict:
    """The first 200 answer of ``url`` (a server just started, or a route the proxy does not know yet)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status, doc = post(url, body, timeout=5, headers=headers)
            if status == 200:
                return doc
            last = f"HTTP {status}: {doc}"
        except (urllib.error.URLError, ConnectionError, ValueError) as err:
            last = f"{type(err).__name__}: {err}"
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} gave no 200 answer in {timeout_s:g} s; last: {last}")
        time.sleep(0.2)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def warn_if_busy(load: list[float]) -> None:
    """Say so when other work holds the machine: throughput figures then say more about it than about us."""
    cores = os.cpu_count() or 1
    if load[0] > 0.5 * cores:
        print(f"WARNING: load average {load[0]} on {cores} cores: the machine is busy with other work; absolute "
              "figures are not representative (targets are interleaved, so ratios suffer less)", flush=True)






def in_process_costs(package: str, digest: str, body: bytes, threads: int) -> dict[str, float]:
    """Milliseconds per call, in this process with no HTTP: the floor under every target's CPU per request."""
    import torch

    from raymlops.core.request_validation import RequestValidator
    from raymlops.core.schema import Schema
    from raymlops.model.package import load_package

    torch.set_num_threads(threads)
    model = load_package(package, digest, version="1")
    rows = json.loads(body)["instances"]
    columns = {k: [r.get(k) for r in rows] for k in rows[0]}
    validator = RequestValidator(Schema.from_yaml(model.schema_yaml, "schema"), max_body_bytes=1 << 20,
                                 max_instances=1000)
    calls = {"handler (parse + predict + JSON answer)": lambda: answer(model, body),
             "LoadedModel.predict": lambda: model.predict(columns),
             "RequestValidator.validate (raymlops only)": lambda: validator.validate(body)}
    laps: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(7):  # interleaved laps; the fastest is the least disturbed by the other sessions' load
        for name, fn in calls.items():
            t0 = time.perf_counter()
            for _ in range(200):
                fn()
            laps[name].append((time.perf_counter() - t0) / 200 * 1e3)
    return {name: round(min(v[1:]), 4) for name, v in laps.items()}  # lap 0 warms up


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# ----------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=8, help="seconds per measured run (whole seconds: wrk)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per (target, concurrency)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--warmup", type=int, default=3, help="seconds of unrecorded load per target first")
    ap.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS), help="a subset, for a quick look")
    ap.add_argument("--auth", action="store_true", help="bearer-token auth on in the raymlops apps (serving.auth)")
    ap.add_argument("--raw-server", nargs=4, metavar=("PACKAGE", "DIGEST", "PORT", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.raw_server:
        package, digest, port, threads = args.raw_server
        raw_server(package, digest, int(port), int(threads))
        return

    sys.path.insert(0, str(ROOT))  # tests.serving_helpers, raymlops from a checkout
    tool = load_tool()
    t_start = time.monotonic()
    load_start = loadavg()
    print(f"load generator: {tool}; load average at start {load_start} on {os.cpu_count()} cores", flush=True)
    warn_if_busy(load_start)

    import ray
    from ray import serve

    from raymlops.config import load_config
    from raymlops.serve.deploy import _direct_urls, deploy, undeploy
    from raymlops.serve.ingress import replica_env
    from tests.serving_helpers import instances, register_versions

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    raw_proc: subprocess.Popen | None = None
    cfg = cfg2 = None
    result: dict[str, Any] = {"benchmark": "bench_serve", "complete": False}
    try:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 * 1024, log_to_driver=False)
        base = [f"storage_uri={tmp / 'store'}", f"tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
                f"serving.port={free_port()}", "serving.ingress=haproxy"]
        headers: dict[str, str] = {}
        if args.auth:
            os.environ["RAYMLOPS_SERVING_TOKENS"] = f"bench:predict,admin:{TOKEN}"
            base.append("serving.auth.enabled=true")
            headers["Authorization"] = f"Bearer {TOKEN}"
        # Serve's Python proxy stays up beside HAProxy as its fallback: pinning its port gives the proxy rows.
        fallback_port = free_port()
        os.environ["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"] = str(fallback_port)
        cfg = load_config(None, [*base, f"serving.app_name={APP}"])
        cfg2 = load_config(None, [*base, f"serving.app_name={APP2}", f"serving.route_prefix={PREFIX2}",
                                  "serving.num_replicas=2"])
        s = cfg.serving
        threads = actor_threads(s.num_cpus)
        versions = register_versions(cfg, tmp, n=2)  # v1 champion, v2 challenger: two real packages
        v1 = versions[0]
        payload = {"instances": instances(1, seed=5, with_id=True)}
        body = json.dumps(payload, separators=(",", ":")).encode()
        body_file, lua_file, plain_lua = tmp / "body.json", tmp / "post.lua", tmp / "plain.lua"
        body_file.write_bytes(body)
        lua_file.write_text(wrk_script(body, headers))
        plain_lua.write_text(wrk_script(body, {}))

        # raymlops first: deploy() starts Serve with the HAProxy ingress.
        t0 = time.monotonic()
        info = deploy(cfg, weights={"1": 90, "2": 10})
        if info.ingress != "haproxy" or not info.direct_urls:
            raise RuntimeError(f"raymlops deployed with the {info.ingress!r} ingress and direct URLs "
                               f"{info.direct_urls}; this benchmark needs Serve's HAProxy ingress (is another Serve "
                               "already running in this Ray, or the HAProxy binary missing?)")
        deploy_s = time.monotonic() - t0
        info2 = deploy(cfg2, weights={"1": 90, "2": 10}) if "raymlops-haproxy-2r" in args.targets else None
        # The plain deployment beside it: same replica size, concurrency limit and ingress environment.
        plain = serve.deployment(PlainModel, name="PlainModel").options(
            num_replicas=1, max_ongoing_requests=s.max_ongoing_requests, max_queued_requests=s.max_queued_requests,
            ray_actor_options={"num_cpus": s.num_cpus, "runtime_env": {"env_vars": replica_env("haproxy")}},
        )
        serve.run(plain.bind(v1.package_uri, v1.digest), name=PLAIN_APP, route_prefix=PLAIN_PREFIX)
        plain_direct = _direct_urls(cfg, PLAIN_APP, "haproxy")
        ingress_root = re.match(r"http://[^/]+", info.url).group(0)
        proxy_root = f"http://127.0.0.1:{fallback_port}"
        # The raw process.
        raw_port = free_port()
        raw_proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--raw-server", v1.package_uri, v1.digest,
             str(raw_port), str(threads)],
            env={**os.environ, "OMP_NUM_THREADS": str(threads)}, cwd=str(ROOT),
        )
        urls = {
            "raw": f"http://127.0.0.1:{raw_port}{PREDICT_PATH}",
            "plain-haproxy": f"{ingress_root}{PLAIN_PREFIX}{PREDICT_PATH}",
            "plain-proxy": f"{proxy_root}{PLAIN_PREFIX}{PREDICT_PATH}",
            "raymlops-haproxy": info.predict_url,
            "raymlops-proxy": f"{proxy_root}{PREDICT_PATH}",
            "raymlops-direct": f"{info.direct_urls[0].rstrip('/')}{PREDICT_PATH}",
        }
        if info2 is not None:
            urls["raymlops-haproxy-2r"] = info2.predict_url
        if plain_direct:
            urls["plain-direct"] = f"{plain_direct[0].rstrip('/')}{PLAIN_PREFIX}{PREDICT_PATH}"
        targets = [t for t in TARGETS if t in urls and t in args.targets]
        for needed in ("raw", "plain-haproxy"):  # the ratios are against these
            if needed not in targets:
                targets.insert(0 if needed == "raw" else 1, needed)
        samples = {t: wait_http(urls[t], body, headers=headers if t.startswith("raymlops") else {})
                   for t in targets}
        for t, doc in samples.items():
            if len(doc.get("predictions", [])) != 1:
                raise RuntimeError(f"{t} answered {doc}, not one prediction")

        procs = _proc_table()
        ours = _descendants(procs, os.getpid())
        server_pids: dict[str, set[int]] = {"raw": {raw_proc.pid}}
        for pid in ours:
            title = procs[pid][1]
            for app, names in ((PLAIN_APP, ("plain-haproxy", "plain-proxy", "plain-direct")),
                               (APP, ("raymlops-haproxy", "raymlops-proxy", "raymlops-direct")),
                               (APP2, ("raymlops-haproxy-2r",))):
                if title.startswith(f"ray::ServeReplica:{app}:"):
                    for name in names:
                        server_pids.setdefault(name, set()).add(pid)
        missing = [t for t in targets if t not in server_pids]
        if missing:
            print(f"warning: no server process found for {missing}; their server CPU reads 0", file=sys.stderr)
        mach = machine(torch_threads_in_replica=threads)
        in_process = in_process_costs(v1.package_uri, v1.digest, body, threads)
        setup_s = time.monotonic() - t_start
        print(f"setup {setup_s:.0f} s (raymlops deploy {deploy_s:.1f} s); urls: {json.dumps(urls)}", flush=True)
        print(f"payload ({len(body)} bytes): {body.decode()}", flush=True)
        print(f"server pids {server_pids}; targets {targets}", flush=True)

        def run(target: str, conc: int, duration: int) -> dict[str, Any]:
            ours_ = target.startswith("raymlops")
            cmd = load_command(tool, urls[target], conc, duration, body_file, lua_file if ours_ else plain_lua,
                               headers if ours_ else None)
            before = CpuSnapshot()
            la = os.getloadavg()[0]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
            after = CpuSnapshot()
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
            r = (parse_wrk if tool == "wrk" else parse_hey)(proc.stdout)
            cpu = cpu_delta(before, after, server_pids.get(target, set()), raw_proc.pid)
            r.update(target=target, concurrency=conc, qps=r["ok"] / r["seconds"], loadavg_1m=round(la, 2),
                     cpu_s=cpu, not_ours_cores=cpu["not_ours"] / r["seconds"])
            return r

        for t in targets:  # warm every path (connections, first-call costs) before anything is recorded
            run(t, 16, args.warmup)
        runs: list[dict[str, Any]] = []
        for rep in range(args.reps):
            for conc in args.concurrency:
                for t in targets:  # interleaved: background load drifts alike over every target
                    r = run(t, conc, args.duration)
                    r["rep"] = rep
                    runs.append(r)
                    print(f"rep {rep + 1}/{args.reps} c={conc:<3} {t:<20} {r['qps']:8.0f} QPS  p50 {r['p50_ms']:7.2f} "
                          f"ms  p99 {r['p99_ms']:7.2f} ms  errors {r['non_2xx'] + r['socket_errors']}  "
                          f"load {r['loadavg_1m']}", flush=True)

        served = get_json(f"{info.url}/v1/models/{MODEL}", headers)
        summary = summarize(runs, targets, args.concurrency)
        load_end = loadavg()
        print(f"load average at end {load_end}", flush=True)
        warn_if_busy(load_end)
        result.update(
            complete=True, machine=mach, loadavg_start=load_start, loadavg_end=load_end, load_generator=tool,
            duration_s=args.duration, reps=args.reps, warmup_s=args.warmup, setup_s=round(setup_s, 1),
            raymlops_deploy_s=round(deploy_s, 1), payload=payload, urls=urls,
            server_pids={k: sorted(v) for k, v in server_pids.items()}, targets=targets, in_process_ms=in_process,
            auth=args.auth,
            serving={"num_replicas": 1, "num_cpus": s.num_cpus, "ingress": info.ingress, "max_ongoing_requests": s.max_ongoing_requests,
                     "max_queued_requests": s.max_queued_requests, "weights": info.weights,
                     "prediction_log": s.prediction_log.model_dump()},
            raymlops_after={"weights": served["weights"],
                            "versions": {v["version"]: v["requests"] for v in served["versions"]},
                            "prediction_log": served["prediction_log"],
                            "client_errors": served["client_errors"], "internal_errors": served["internal_errors"]},
            summary=summary, runs=runs,
        )
        report(result)
    finally:
        if raw_proc is not None:
            raw_proc.terminate()
            try:
                raw_proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                raw_proc.kill()
        if ray.is_initialized():
            try:
                for c in (cfg, cfg2):
                    if c is not None:
                        undeploy(c)  # the replicas drain their prediction logs
                if PLAIN_APP in serve.status().applications:
                    serve.delete(PLAIN_APP)
                serve.shutdown()
            except Exception as err:  # still shut Ray down below
                print(f"stopping Serve failed: {type(err).__name__}: {err}", file=sys.stderr)
            ray.shutdown()
        out = HERE / "results" / "bench_serve.json"
        out.parent.mkdir(exist_ok=True)
        result["total_s"] = round(time.monotonic() - t_start, 1)
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"wrote {out.relative_to(ROOT)} (total {result['total_s']:.0f} s)")


def summarize(runs: list[dict[str, Any]], targets: list[str], concurrencies: list[int]) -> dict[str, Any]:
    """Medians over repetitions per (target, concurrency), ratios against raw and plain, the goals at c=16."""
    points: dict[str, dict[str, Any]] = {}
    for t in targets:
        for c in concurrencies:
            rs = [r for r in runs if r["target"] == t and r["concurrency"] == c]
            ok = sum(r["ok"] for r in rs)
            cpu = {k: median([r["cpu_s"][k] * 1e3 / max(r["ok"], 1) for r in rs]) for k in rs[0]["cpu_s"]}
            points[f"{t}@{c}"] = {
                "target": t, "concurrency": c, "qps": median([r["qps"] for r in rs]),
                "p50_ms": median([r["p50_ms"] for r in rs]), "p99_ms": median([r["p99_ms"] for r in rs]),
                "qps_reps": [round(r["qps"], 1) for r in rs], "ok": ok,
                "errors": sum(r["non_2xx"] + r["socket_errors"] for r in rs),
                "cpu_ms_per_request": {k: round(v, 4) for k, v in cpu.items()},
                "not_ours_cores": median([r["not_ours_cores"] for r in rs]),
            }
    for p in points.values():
        raw, plain = points[f"raw@{p['concurrency']}"], points[f"plain-haproxy@{p['concurrency']}"]
        p["qps_vs_raw"] = p["qps"] / raw["qps"]
        p["qps_vs_plain"] = p["qps"] / plain["qps"]
        p["p99_vs_raw"] = p["p99_ms"] / raw["p99_ms"]
        pair = SAME_PATH_PLAIN.get(p["target"])  # the plain deployment on the same path, where there is one
        same = points.get(f"{pair}@{p['concurrency']}") if pair else None
        p["qps_vs_plain_same_path"] = p["qps"] / same["qps"] if same else None
    goals: dict[str, Any] = {}
    for t in INGRESS_TARGETS:
        g: dict[str, Any] = {}
        if f"{t}@16" in points:
            p = points[f"{t}@16"]
            g.update(qps_over_raw_c16=round(p["qps_vs_raw"], 3), qps_met=p["qps_vs_raw"] >= 0.6,
                     p99_over_raw_c16=round(p["p99_vs_raw"], 2), p99_c16_met=p["p99_vs_raw"] <= 2.0)
            same = p["qps_vs_plain_same_path"]
            if same is not None:
                g.update(qps_over_plain_same_path_c16=round(same, 3), same_path_met=same >= 0.95)
        if f"{t}@64" in points:
            p = points[f"{t}@64"]
            g.update(p99_over_raw_c64=round(p["p99_vs_raw"], 2), p99_c64_met=p["p99_vs_raw"] <= 3.0)
        if g:
            goals[t] = g
    return {"points": points, "goals": goals}


def report(result: dict[str, Any]) -> None:
    m, summary, targets = result["machine"], result["summary"], result["targets"]
    print()
    print(f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_mib']} MiB, {m['platform']}; Python {m['python']}, "
          f"Ray {m['ray']}, torch {m['torch']} ({m['torch_threads_in_replica']} torch thread per server)")
    print(f"Load average (1/5/15 min): start {result['loadavg_start']}, end {result['loadavg_end']}: the machine "
          "is shared with other sessions right now, so absolute figures are noisy; targets were interleaved")
    print(f"Load generator {result['load_generator']}; {result['reps']} x {result['duration_s']:g} s per point, "
          f"median shown; one replica each (two for -2r), num_cpus {result['serving']['num_cpus']}, max_ongoing_requests "
          f"{result['serving']['max_ongoing_requests']}; raymlops split {result['serving']['weights']}, validation, "
          f"prediction log and metrics on, auth {'on' if result['auth'] else 'off'}")
    print()
    print("| target | conc. | QPS | p50 ms | p99 ms | errors | QPS / raw | QPS / plain-haproxy | "
          "QPS / plain, same path | p99 / raw p99 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    conc = sorted({p["concurrency"] for p in summary["points"].values()})
    for c in conc:
        for t in targets:
            p = summary["points"][f"{t}@{c}"]
            same = p["qps_vs_plain_same_path"]
            print(f"| {t} | {c} | {p['qps']:,.0f} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {p['errors']} | "
                  f"{p['qps_vs_raw']:.3f} | {p['qps_vs_plain']:.2f} | {'' if same is None else f'{same:.2f}'} | "
                  f"{p['p99_vs_raw']:.2f} |")
    print()
    print("CPU ms per answered request (median over repetitions; 'whole machine' = all busy CPU, other sessions "
          "included; the last column is the CPU, in cores, that neither this benchmark nor its servers used):")
    print()
    print("| target | conc. | server process | Serve proxy | rest of our Ray | load generator | whole machine | "
          "steal | not ours, cores busy |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in conc:
        for t in targets:
            p = summary["points"][f"{t}@{c}"]
            cpu = p["cpu_ms_per_request"]
            print(f"| {t} | {c} | {cpu['server']:.3f} | {cpu['proxy']:.3f} | {cpu['ray_other']:.3f} | "
                  f"{cpu['loadgen']:.3f} | {cpu['machine_busy']:.3f} | {cpu['machine_steal']:.3f} | "
                  f"{p['not_ours_cores']:.2f} |")
    print()
    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    for t, g in summary["goals"].items():
        parts = []
        if "qps_met" in g:
            parts.append(f"c=16 QPS {g['qps_over_raw_c16']:.2f}x raw (≥ 0.6: {verdict(g['qps_met'])}), p99 "
                         f"{g['p99_over_raw_c16']:.2f}x raw (≤ 2: {verdict(g['p99_c16_met'])})")
        if "same_path_met" in g:
            parts.append(f"c=16 QPS {g['qps_over_plain_same_path_c16']:.2f}x plain on the same path "
                         f"(≥ 0.95: {verdict(g['same_path_met'])})")
        if "p99_c64_met" in g:
            parts.append(f"c=64 p99 {g['p99_over_raw_c64']:.2f}x raw (≤ 3: {verdict(g['p99_c64_met'])})")
        print(f"goals, {t}: " + "; ".join(parts))
    print("In this process, no HTTP (ms per call, fastest of 6 laps): " + ", ".join(
        f"{k} {v:.3f}" for k, v in result["in_process_ms"].items()))
    after = result["raymlops_after"]
    total = sum(after["versions"].values()) or 1
    split = ", ".join(f"v{v}: {n} ({100 * n / total:.1f}%)" for v, n in after["versions"].items())
    print(f"raymlops served {split}; prediction log {after['prediction_log']}; client errors "
          f"{after['client_errors']}, internal errors {after['internal_errors']}")


if __name__ == "__main__":
    main()
